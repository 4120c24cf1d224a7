"""Which heads a knockout uses: ``all``, the top K of a head-attribution run, or a file.

:func:`resolve_heads` turns the ``--heads`` / ``--from-run`` options of ``headflow flow`` into a bool
``[layer, head]`` tensor (or None for all heads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import HeadflowError

if TYPE_CHECKING:  # numpy/torch load inside the functions
    import numpy as np
    import torch

SCORE_FILES = ("attribution.npy", "attribution_mean.npy", "head_scores.npy")


def load_heads_file(path: Path, n_layers: int, n_heads: int) -> torch.Tensor:
    """Heads from a file: ``.npy`` (``[layer, head]`` array, nonzero = selected), ``.json`` (a list of
    ``[layer, head]`` or ``{"heads": [...]}``), or text with one ``layer head`` (or ``layer,head``) per line."""
    import numpy as np
    import torch

    if not path.exists():
        raise HeadflowError(f"Heads file {path} does not exist. Use --heads all, top:K (with --from-run) or a file.")
    form = ("a [layer, head] .npy array, a .json list of [layer, head] pairs (or {\"heads\": [...]}), or text "
            "lines 'layer head'")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.shape != (n_layers, n_heads):
                raise HeadflowError(f"Heads array {path} must have shape ({n_layers}, {n_heads}). "
                                    f"Got {array.shape} instead.")
            return torch.from_numpy(array != 0)
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            pairs = data["heads"] if isinstance(data, dict) else data
        else:
            pairs = [line.replace(",", " ").split() for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.startswith("#")]
        pairs = [(int(pair[0]), int(pair[1])) for pair in pairs if len(pair) == 2] if all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in pairs) else None
    except HeadflowError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OSError, UnicodeDecodeError) as exc:
        raise HeadflowError(f"Heads file {path} cannot be read ({type(exc).__name__}: {exc}); it must be {form}.") \
            from None
    if pairs is None:
        raise HeadflowError(f"Heads file {path} holds something other than (layer, head) pairs; it must be {form}.")
    out = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for layer, head in pairs:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise HeadflowError(f"Head ({layer}, {head}) in {path} is out of range: the model has {n_layers} layers "
                                f"and {n_heads} heads per layer.")
        out[layer, head] = True
    return out


def head_scores(run_dir: Path, n_layers: int, n_heads: int) -> np.ndarray:
    """Mean head attribution ``[layer, head]`` of an attribution run directory."""
    import numpy as np

    if (run_dir / "summary.json").exists() and (run_dir / "attributions.npy").exists():
        from ..attribution import AttributionResult  # a finished `headflow attribute` run

        scores = np.asarray(AttributionResult.load(run_dir).mean_attribution, dtype=float)
        if scores.shape != (n_layers, n_heads):
            raise HeadflowError(f"The attribution run {run_dir} has heads of shape {scores.shape}, but the model has "
                                f"({n_layers}, {n_heads}); use a run of the same model.")
        return scores
    for name in SCORE_FILES:
        if (run_dir / name).exists():
            scores = np.load(run_dir / name)
            if scores.ndim == 3:  # per image
                scores = scores.mean(0)
            if scores.shape == (n_layers, n_heads):
                return scores
            raise HeadflowError(f"{run_dir / name} has shape {scores.shape}; expected ({n_layers}, {n_heads}) or "
                                f"(images, {n_layers}, {n_heads}).")
    raise HeadflowError(f"No head attribution found in {run_dir} (looked for summary.json + attributions.npy of "
                        f"'headflow attribute', then {', '.join(SCORE_FILES)}). "
                        "Pass the directory of a head-attribution run with --from-run.")


def resolve_heads(spec: str, from_run: Optional[Path], n_layers: int, n_heads: int) -> torch.Tensor | None:
    """``all`` → None; ``top:K`` → the K heads of highest mean attribution in ``from_run``; else a file."""
    import numpy as np
    import torch

    if spec == "all":
        return None
    if spec.startswith("top:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if not 1 <= k <= n_layers * n_heads:
            raise HeadflowError(f"The '--heads' option must be all, top:K with K in [1, {n_layers * n_heads}], or a "
                                f"file. Got {spec!r} instead.")
        if from_run is None:
            raise HeadflowError("--heads top:K needs --from-run DIR, the directory of a head-attribution run.")
        scores = head_scores(Path(from_run), n_layers, n_heads)
        top = np.argsort(-scores.ravel(), kind="stable")[:k]
        out = torch.zeros(n_layers * n_heads, dtype=torch.bool)
        out[torch.from_numpy(top)] = True
        return out.view(n_layers, n_heads)
    return load_heads_file(Path(spec), n_layers, n_heads)
