"""One error type and one message template for everything a user can trigger."""

from __future__ import annotations


class HeadflowError(ValueError):
    """A user-facing error: one line saying what is wrong and, where possible, how to fix it."""


def param_error(param: str, owner: str, expected: str, got: object, fix: str | None = None) -> HeadflowError:
    """Build the standard message, e.g.

    "The 'n_masks' parameter of HeadAttribution must be an int in [1, inf). Got 0 instead."
    """
    message = f"The {param!r} parameter of {owner} must be {expected}. Got {got!r} instead."
    if fix:
        message += f" {fix}"
    return HeadflowError(message)
