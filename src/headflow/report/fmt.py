"""Number formatting shared by every table of the report (one place, so tests can pin the text).

``None``, NaN and infinities read ``n/a``; integers print as they are; floats get three decimals
(scientific notation outside ``[0.001, 1000)``); p-values get two significant digits below 0.001.
"""

from __future__ import annotations

import math
from typing import Any

NA = "n/a"


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(x: Any, digits: int = 3) -> str:
    """A number as the report shows it: ``fmt(0.99931) == "0.999"``, ``fmt(7) == "7"``, ``fmt(None) == "n/a"``."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    v = _finite(x)
    if v is None:
        return NA if x is None or not isinstance(x, str) else x
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 10 ** (-digits):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}f}"


def fmt_pct(x: Any) -> str:
    """A fraction as a percentage with one decimal: ``fmt_pct(0.5) == "50.0%"``."""
    v = _finite(x)
    return NA if v is None else f"{v:.1%}"


def fmt_p(x: Any) -> str:
    """A p-value: three decimals, or two significant digits below 0.001 (``2.3e-10``)."""
    v = _finite(x)
    if v is None:
        return NA
    return f"{v:.2g}" if 0 < v < 1e-3 else f"{v:.3f}"


def fmt_layer(x: Any) -> str:
    """A layer index or mean layer: whole numbers as integers, others with two decimals (``2``, ``3.25``)."""
    v = _finite(x)
    if v is None:
        return NA
    return str(int(v)) if v == int(v) else f"{v:.2f}"


def fmt_ci(mean: Any, lo: Any, hi: Any, *, number=fmt) -> str:
    """``mean [lo, hi]`` with ``number`` formatting each; the bracket is left out where both ends are missing."""
    if _finite(lo) is None and _finite(hi) is None:
        return number(mean)
    return f"{number(mean)} [{number(lo)}, {number(hi)}]"


def fmt_head(layer: Any, head: Any) -> str:
    """``L3.H7``."""
    return f"L{layer}.H{head}"
