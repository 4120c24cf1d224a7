"""One error type and one message template for everything a user can trigger.

Every error a user can cause is a :class:`HeadflowError` (a ``ValueError``): one line saying what is
wrong, the value, and how to fix it. The CLI prints it and exits with code 2. Three subclasses carry
structured fields for callers that want them:

* :class:`RunIntegrityError` -- a file of a run directory is missing, truncated or changed next to
  the records that say it was complete (``path``, ``problem``, ``rebuild_hint``);
* :class:`WriteError` -- the operating system refused a write (``path``, ``errno``);
* :class:`MissingFileError` -- a file or folder the user named does not exist (also a
  ``FileNotFoundError``, so ``except FileNotFoundError`` keeps working).
"""

from __future__ import annotations

from pathlib import Path

RECOMPUTE = "delete the run directory or the file's stage to recompute"


class HeadflowError(ValueError):
    """A user-facing error: one line saying what is wrong and, where possible, how to fix it."""


class HeadflowWarning(UserWarning):
    """Something a result depends on that the user should know before trusting it (two labels sharing an answer
    token); one line, shown by the CLI as ``warning: ...``. Turn into errors with ``warnings.simplefilter``."""


class RunIntegrityError(HeadflowError):
    """A run directory's file disagrees with its integrity record (missing, truncated, changed, wrong shape).

    Parameters
    ----------
    path : str or Path
        The file.
    problem : str
        What is wrong, e.g. ``"is missing, but targets.done.npy marks 3 rows complete"``.
    rebuild_hint : str, optional
        The exact command that recomputes the file's stage (the analyses know it, the store does not),
        e.g. ``"rm -r runs/a && headflow attribute ... --out runs/a"``. Appended to the message.

    Examples
    --------
    >>> str(RunIntegrityError("run/targets.npy", "is missing", "headflow attribute --out run"))
    "run/targets.npy is missing. Delete the run directory or the file's stage to recompute: headflow attribute --out run."
    """

    def __init__(self, path: str | Path, problem: str, rebuild_hint: str | None = None) -> None:
        self.path, self.problem, self.rebuild_hint = Path(path), problem, rebuild_hint
        fix = RECOMPUTE[0].upper() + RECOMPUTE[1:]
        super().__init__(f"{path} {problem}. {fix}" + (f": {rebuild_hint}." if rebuild_hint else "."))


class WriteError(HeadflowError):
    """The operating system refused to write ``path`` (no space, read-only, no permission, ...)."""

    def __init__(self, message: str, path: str | Path, errno: int | None = None) -> None:
        self.path, self.errno = Path(path), errno
        super().__init__(message)


class MissingFileError(HeadflowError, FileNotFoundError):
    """A file or folder the user named does not exist (a ``HeadflowError`` and a ``FileNotFoundError``)."""

    def __str__(self) -> str:  # OSError would format "(errno) msg"; keep the one line as written
        return str(self.args[0]) if self.args else ""


def param_error(param: str, owner: str, expected: str, got: object, fix: str | None = None) -> HeadflowError:
    """Build the standard message, e.g.

    "The 'n_masks' parameter of HeadAttribution must be an int in [1, inf). Got 0 instead."
    """
    message = f"The {param!r} parameter of {owner} must be {expected}. Got {got!r} instead."
    if fix:
        message += f" {fix}"
    return HeadflowError(message)
