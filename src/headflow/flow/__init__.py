"""Token-level information flow (F9) and object/background image tokens (F10) by attention knockout.

>>> from headflow import load_model
>>> from headflow.data import load_dataset
>>> from headflow.flow import TokenFlow
>>> result = TokenFlow(load_model("tiny:llava"), keep_wrong=True, n_bootstrap=50, progress=False).run(
...     load_dataset("default", n=2))
>>> sorted(result.summary["pairs"])[:2]
['image->final', 'image->question']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# lazy, as the top-level package: `headflow --help` needs no torch
_EXPORTS = {"DEFAULT_PAIRS": "params", "FlowParams": "params", "FlowResult": "knockout", "TokenFlow": "knockout",
            "parse_pairs": "params"}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .knockout import FlowResult, TokenFlow
    from .params import DEFAULT_PAIRS, FlowParams, parse_pairs
