"""Linear centred kernel alignment (CKA; Kornblith et al., ICML 2019) between two representations.

For features ``X`` [n, d1] and ``Y`` [n, d2] of the same n inputs, with every column centred:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
              = <K, L>_F / (||K||_F ||L||_F)     with K = X X^T, L = Y Y^T (centred Gram matrices)

It is 1 for identical representations, invariant to orthogonal transforms and isotropic scaling of
either side, and near 0 for unrelated ones. Everything is computed in float64; the feature-space form
(d x d products) is used while both widths are at most n, the Gram form (n x n) otherwise, so memory
stays O(n^2 + n d) for wide feature maps. ``centered_gram`` and ``cka_from_grams`` let a caller keep
one small normalised Gram matrix per representation instead of its features.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["linear_cka", "centered_gram", "cka_from_grams"]


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    """[n, ...] -> centred float64 [n, d] scaled to unit Frobenius norm (all zeros if it has no variance)."""
    a = np.asarray(x)
    if a.ndim < 2:
        raise ValueError(f"{name}: expected features [n, d] (or [n, ...] flattened per sample), got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name}: CKA needs at least 2 samples, got {a.shape[0]}")
    a = a.reshape(a.shape[0], -1).astype(np.float64)  # a copy: the caller's array is never changed
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: features contain NaN or infinity")
    a -= a.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(a)
    if norm > 0:
        a /= norm  # CKA is scale invariant; this keeps the products far from overflow
    return a


def centered_gram(x: np.ndarray) -> np.ndarray:
    """Linear Gram matrix of the column-centred features, scaled to unit Frobenius norm: float64 [n, n].

    All zeros when the features do not vary across samples (CKA with it is then undefined: NaN).
    """
    a = _as_features(x, "x")
    gram = a @ a.T
    norm = np.linalg.norm(gram)
    return gram / norm if norm > 0 else gram


def cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 - L is the paper's name
    """CKA from two centred Gram matrices of the same n samples (as ``centered_gram`` returns them)."""
    if k.shape != l.shape or k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"Gram matrices must be square and of the same size, got {k.shape} and {l.shape}")
    den = float(np.linalg.norm(k)) * float(np.linalg.norm(l))
    if den == 0.0:
        return math.nan
    return _clip(float(np.vdot(k, l)) / den)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in [0, 1] between features ``x`` [n, d1] and ``y`` [n, d2] of the same n samples.

    Samples with more dimensions are flattened. NaN when either side is constant across samples.
    """
    a, b = _as_features(x, "x"), _as_features(y, "y")
    n = a.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"x and y must hold the same samples: {n} rows vs {b.shape[0]}")
    if max(a.shape[1], b.shape[1]) > n:
        # Gram form: n x n matrices instead of d x d ones.
        k, l = a @ a.T, b @ b.T  # noqa: E741
        num = float(np.vdot(k, l))
        den = float(np.linalg.norm(k)) * float(np.linalg.norm(l))
    else:
        num = float(np.linalg.norm(b.T @ a) ** 2)
        den = float(np.linalg.norm(a.T @ a)) * float(np.linalg.norm(b.T @ b))
    if den == 0.0:
        return math.nan
    return _clip(num / den)


def _clip(value: float) -> float:
    # Exact arithmetic gives [0, 1]; rounding can step outside by a few ulps.
    return min(1.0, max(0.0, value))
