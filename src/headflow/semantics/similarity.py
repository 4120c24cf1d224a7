"""Image-by-image similarity of head-attribution vectors (docs/method.md F8).

Every function here is pure: arrays in, arrays out, no state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata


__all__ = ["SimilaritySpec", "parse_similarity", "similarity_matrix", "standardise", "top_k_membership"]



@dataclass(frozen=True)
class SimilaritySpec:
    """A parsed ``similarity`` parameter.

    Attributes
    ----------
    kind : str
        ``"cosine"``, ``"spearman"`` or ``"jaccard"``.
    k : int or None
        Size of the top-``k`` head sets for ``"jaccard"``; ``None`` otherwise.
    """

    kind: str
    k: int | None = None

    def __str__(self) -> str:
        return self.kind if self.k is None else f"{self.kind}:{self.k}"


def parse_similarity(value: object) -> SimilaritySpec | None:
    """Parse ``"cosine"``, ``"spearman"`` or ``"jaccard:K"`` (``K`` an int >= 1).

    Returns ``None`` for anything else, so that the caller can raise its own standard error.

    Examples
    --------
    >>> parse_similarity("jaccard:10")
    SimilaritySpec(kind='jaccard', k=10)
    >>> parse_similarity("euclid") is None
    True
    """
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in ("cosine", "spearman"):
        return SimilaritySpec(text)
    name, sep, k = text.partition(":")
    if name == "jaccard" and sep and k.isdigit() and int(k) >= 1:
        return SimilaritySpec("jaccard", int(k))
    return None


def standardise(vectors: NDArray[np.floating]) -> NDArray[np.float64]:
    """Z-score each column (head) across rows (images); constant columns become 0.

    Parameters
    ----------
    vectors : ndarray of shape (n_images, n_heads_total)

    Returns
    -------
    ndarray of shape (n_images, n_heads_total), float64
    """
    x = np.asarray(vectors, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    sd = centred.std(axis=0, keepdims=True)
    return np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 1e-12 * (1.0 + np.abs(x).max()))


def _cosine(x: NDArray[np.float64]) -> NDArray[np.float64]:
    norms = np.linalg.norm(x, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = x / safe[:, None]
    sim = unit @ unit.T
    sim[norms == 0, :] = 0.0
    sim[:, norms == 0] = 0.0
    return np.clip(sim, -1.0, 1.0)


def top_k_membership(vectors: NDArray[np.floating], k: int) -> NDArray[np.bool_]:
    """Boolean mask of each row's ``k`` largest entries (ties broken by the lower index).

    Parameters
    ----------
    vectors : ndarray of shape (n_rows, n_heads_total)
    k : int
        Set size, ``1 <= k <= n_heads_total``.

    Returns
    -------
    ndarray of shape (n_rows, n_heads_total), bool, with exactly ``k`` True per row.
    """
    x = np.asarray(vectors, dtype=np.float64)
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    mask = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def jaccard_matrix(membership: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Pairwise Jaccard index of the rows of a boolean membership matrix, shape (n_rows, n_rows)."""
    b = membership.astype(np.float64)
    inter = b @ b.T
    sizes = b.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def similarity_matrix(vectors: NDArray[np.floating], spec: SimilaritySpec) -> NDArray[np.float64]:
    """Similarity between every pair of per-image attribution vectors.

    Parameters
    ----------
    vectors : ndarray of shape (n_images, n_heads_total)
        One flattened ``layer x head`` attribution vector per image.
    spec : SimilaritySpec
        ``cosine``: cosine of the head-standardised vectors (each head z-scored across images);
        ``spearman``: Spearman rank correlation of the raw vectors;
        ``jaccard:K``: Jaccard index of the top-``K`` head sets (``K`` clipped to the number of heads).

    Returns
    -------
    ndarray of shape (n_images, n_images), symmetric, float64.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if spec.kind == "cosine":
        return _cosine(standardise(x))
    if spec.kind == "spearman":
        ranks = rankdata(x, axis=1)
        return _cosine(ranks - ranks.mean(axis=1, keepdims=True))
    if spec.kind == "jaccard":
        k = min(int(spec.k or 1), x.shape[1])
        return jaccard_matrix(top_k_membership(x, k))
    raise ValueError(f"unknown similarity kind {spec.kind!r}")  # unreachable: specs come from parse_similarity
