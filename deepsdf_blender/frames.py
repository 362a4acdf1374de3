"""The one place where the engine's frame meets Blender's.

The engine's model frame is y up with the front facing +z; Blender is z up with
the front facing -y (what the Front view looks at). ``MODEL_TO_BLENDER`` turns
one into the other; everything else in the add-on goes through these helpers.
"""

from __future__ import annotations

import numpy as np

MODEL_TO_BLENDER = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""(x, y, z) model -> (x, -z, y) Blender: up y -> z, front +z -> -y. A proper rotation."""

BLENDER_TO_MODEL = MODEL_TO_BLENDER.T


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points (n, 3) -> (n, 3) float32 through a 4 x 4 affine matrix."""
    pts = np.asarray(points, np.float64)
    return (pts @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)


def translation(t) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m
