"""The model frame and the reference normalisation that maps a shape into it.

Model frame: the shape centred on its bounding-box centre and scaled so its
farthest vertex lies at radius 1/1.03 (~0.971), y up, as the reference's
preprocessing does. ``model = (original + offset) * scale``.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

RADIUS_MARGIN = 1.03
"""The reference divides by 1.03 x the largest vertex radius (shape within r ~ 0.971)."""


def bounding_extent(points: np.ndarray, quantile: float = 1.0) -> tuple[np.ndarray, float]:
    """``(centre (3,) float64, radius)``: the bounding box centre of ``points`` (n, 3), any
    frame, and the largest distance of a point from it. quantile < 1: the box from that
    quantile of the points per axis, the radius that quantile of the distances (a few
    noisy or stray points then do not stretch the extent); 0.5 <= quantile <= 1.
    """
    v = np.asarray(points, np.float64).reshape(-1, 3)
    if len(v) == 0:
        raise InputError("cannot normalise an empty point set")
    if not np.isfinite(v).all():
        raise InputError("the input has NaN or infinite coordinates")
    q = float(quantile)
    if not 0.5 <= q <= 1.0:
        raise InputError(f"the extent quantile must be between 0.5 and 1, got {quantile}")
    if q == 1.0:  # min / max: three times faster than the quantiles (large meshes)
        centre = 0.5 * (v.min(axis=0) + v.max(axis=0))
        return centre, float(np.linalg.norm(v - centre, axis=1).max())
    centre = 0.5 * (np.quantile(v, 1.0 - q, axis=0) + np.quantile(v, q, axis=0))
    return centre, float(np.quantile(np.linalg.norm(v - centre, axis=1), q))


def reference_normalization(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """``(offset (3,), scale)`` centring the bounding box and fitting radius 1/1.03.

    vertices: (n, 3) float, original frame.
    """
    centre, radius = bounding_extent(vertices)
    if radius <= 0:
        raise InputError("the input has no extent (all points coincide)")
    return (-centre).astype(np.float32), float(1.0 / (RADIUS_MARGIN * radius))


def to_model_frame(points: np.ndarray, offset: np.ndarray, scale: float) -> np.ndarray:
    """points (n, 3) original frame -> (n, 3) float32 model frame."""
    return ((np.asarray(points, np.float64) + offset) * scale).astype(np.float32)


def from_model_frame(points: np.ndarray, offset: np.ndarray, scale: float) -> np.ndarray:
    """points (n, 3) model frame -> (n, 3) float32 original frame."""
    return (np.asarray(points, np.float64) / scale - offset).astype(np.float32)


def rotation_y(angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about the up axis (y)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points (n, 3) mapped by a 4 x 4 affine ``matrix`` (in float64): (n, 3) float32."""
    m = np.asarray(matrix, np.float64)
    return (np.asarray(points, np.float64).reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
