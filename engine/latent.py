"""Code space: a Gaussian prior fitted to the training codes, sampling, and interpolation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass
class CodePrior:
    """Gaussian N(mean, cov) fitted to training codes.

    mean: (L,) float64. factor: (L, L) float64 with ``factor @ factor.T = cov``.
    """

    mean: np.ndarray
    factor: np.ndarray

    @classmethod
    def fit(cls, codes: np.ndarray, shrinkage: float = 0.1) -> CodePrior:
        """Fit to codes (n, L). The covariance is shrunk towards its mean variance
        (``(1 - s) * cov + s * trace(cov)/L * I``) so it stays positive definite
        when there are fewer shapes than code dimensions."""
        codes = np.asarray(codes, np.float64)
        if codes.ndim != 2 or len(codes) == 0:
            raise InputError("need a (n, L) array of at least one code to fit a prior")
        mean = codes.mean(axis=0)
        L = codes.shape[1]
        if len(codes) > 1:
            cov = np.cov(codes, rowvar=False).reshape(L, L)
        else:
            cov = np.zeros((L, L))
        avg = np.trace(cov) / L if np.trace(cov) > 0 else 1e-4
        cov = (1 - shrinkage) * cov + shrinkage * avg * np.eye(L)
        vals, vecs = np.linalg.eigh(cov)
        factor = vecs * np.sqrt(np.clip(vals, 0, None))
        return cls(mean, factor)

    def sample(self, count: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        """``count`` codes ``mean + temperature * factor @ eps``, eps ~ N(0, I) from ``seed``.

        Returns (count, L) float32. Temperature 0 gives the mean; below 1, shapes
        stay closer to the training set; above 1, more varied and more often broken.
        """
        if count < 0:
            raise InputError("count must be >= 0")
        if temperature < 0:
            raise InputError("temperature must be >= 0")
        eps = np.random.default_rng(seed).standard_normal((count, len(self.mean)))
        return (self.mean + temperature * eps @ self.factor.T).astype(np.float32)


def interpolate_codes(a: np.ndarray, b: np.ndarray, steps: int, mode: str = "linear") -> np.ndarray:
    """``steps`` codes from ``a`` to ``b`` inclusive; the first is exactly ``a``, the last exactly ``b``.

    a, b: (L,). mode: ``linear`` or ``spherical`` (slerp of the direction with the
    norm interpolated linearly, so the path keeps a typical code magnitude instead
    of shrinking through the middle). Returns (steps, L) float32.
    """
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise InputError(f"codes differ in length: {a.shape[0]} and {b.shape[0]}")
    if steps < 2:
        raise InputError("interpolation needs at least 2 steps (the two endpoints)")
    t = np.linspace(0.0, 1.0, steps)[:, None]
    if mode == "linear":
        out = (1 - t) * a + t * b
    elif mode == "spherical":
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na < 1e-12 or nb < 1e-12:
            out = (1 - t) * a + t * b
        else:
            ua, ub = a / na, b / nb
            omega = np.arccos(np.clip(ua @ ub, -1.0, 1.0))
            if omega < 1e-6:
                direction = (1 - t) * ua + t * ub
            else:
                direction = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / np.sin(omega)
            out = direction * ((1 - t) * na + t * nb)
    else:
        raise InputError(f"unknown interpolation mode {mode!r}; choose linear or spherical")
    out = out.astype(np.float32)
    out[0], out[-1] = a, b
    return out
