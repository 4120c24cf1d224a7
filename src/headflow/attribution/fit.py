"""Linear models from ablation masks to targets, and the held-out check (LDS)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from ..errors import HeadflowError
from .params import FITS


def fit_linear(masks: np.ndarray, targets: np.ndarray, method: str = "ols", penalty: float = 1.0,
               device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Fit ``y_j ≈ b + Σ_c w_c M[j, c]`` for every image at once.

    Parameters
    ----------
    masks : Bool[ndarray, "mask head"]
    targets : Float[ndarray, "mask image"]
    method : {"ols", "ridge", "lasso"}
        ``ols`` is one multi-output least-squares solve (torch.linalg); ridge/lasso use scikit-learn.

    Returns
    -------
    bias : Float[ndarray, "image"]
    weights : Float[ndarray, "image head"]
    """
    x = masks.astype(np.float64)
    y = targets.astype(np.float64)
    if method == "ols":
        design = torch.from_numpy(np.hstack([np.ones((len(x), 1)), x])).to(device)
        # gelsd (SVD) gives the minimum-norm solution, deterministic also when the design is rank
        # deficient (too few masks, a head never ablated); CUDA only offers gels (full rank).
        driver = "gelsd" if design.device.type == "cpu" else "gels"
        solution = torch.linalg.lstsq(design, torch.from_numpy(y).to(device), driver=driver).solution.cpu().numpy()
        return solution[0], solution[1:].T
    if method in ("ridge", "lasso"):
        from sklearn.linear_model import Lasso, Ridge

        model = Ridge(alpha=penalty) if method == "ridge" else Lasso(alpha=penalty, max_iter=5000)
        model.fit(x, y)
        coef = np.atleast_2d(model.coef_)
        return np.atleast_1d(model.intercept_), coef
    raise HeadflowError(f"The 'fit' parameter of HeadAttribution must be one of {', '.join(FITS)}. "
                        f"Got {method!r} instead.")


def design_rank(masks: np.ndarray) -> int:
    """Rank of ``[1, M]``; below ``N + 1`` the attributions are not identified (add masks)."""
    return int(np.linalg.matrix_rank(np.hstack([np.ones((len(masks), 1)), masks.astype(np.float64)])))


def predict(bias: np.ndarray, weights: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Predicted targets ``[mask, image]``."""
    return bias[None, :] + masks.astype(np.float64) @ weights.T


def datamodeling_scores(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Pearson and Spearman correlation between predicted and actual targets (COAR's LDS)."""
    pearson = np.array([_corr(stats.pearsonr, predicted[:, i], actual[:, i]) for i in range(actual.shape[1])])
    spearman = np.array([_corr(stats.spearmanr, predicted[:, i], actual[:, i]) for i in range(actual.shape[1])])
    return pearson, spearman


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(fn(a, b)[0])
