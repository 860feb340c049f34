"""iCaRL herding (Rebuffi et al., CVPR 2017, Alg. 4), as MEMO uses it to pick exemplars.

Rows are L2-normalised; at step k the sample that keeps the mean of the k picked samples closest to
the class mean is taken. The returned order matters: every prefix of it is itself the herding choice
for that size, so shrinking a class to m exemplars keeps its first m (MEMO reference, "Exemplars").
"""

from __future__ import annotations


import numpy as np

from memo_edge.utils.checks import check_int

__all__ = ["herding_order", "l2_normalize"]

# Rows shorter than this are left as (near) zero instead of being blown up to unit length.
_EPS = 1e-12


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float64; all-zero rows stay zero."""
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPS)


def herding_order(features: np.ndarray, m: int) -> np.ndarray:
    """Indices of ``min(m, n)`` rows of ``features`` [n, d] in herding order (int64).

    Step k (1-based) picks the unpicked i minimising ``|| mu - (S + f_i) / k ||`` where S is the sum
    of the k-1 rows already picked and mu the mean of all normalised rows. Ties go to the lowest
    index.
    """
    m = check_int("m", m)
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [n, d], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinity")
    n = x.shape[0]
    steps = min(m, n)
    if steps == 0:
        return np.zeros(0, dtype=np.int64)

    f = l2_normalize(x)
    mu = f.mean(axis=0)
    sq_norms = np.einsum("ij,ij->i", f, f)
    # k^2 * ||mu - (S + f_i)/k||^2 = ||k*mu - S||^2 - 2 (k*mu - S).f_i + ||f_i||^2; the first term
    # is the same for every candidate, so one matrix-vector product per step ranks them all.
    picked = np.empty(steps, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    running_sum = np.zeros(f.shape[1], dtype=np.float64)
    for k in range(1, steps + 1):
        residual = k * mu - running_sum
        scores = sq_norms - 2.0 * (f @ residual)
        scores[taken] = np.inf
        i = int(np.argmin(scores))
        picked[k - 1] = i
        taken[i] = True
        running_sum += f[i]
    return picked
