"""Turning a scan (mesh or point cloud, model frame) into SDF observations for fitting.

A surface point gets SDF 0; the points ``eta`` along its outward normal get
``+eta`` and ``-eta``; points on a shell just outside the unit sphere are known
to be outside (a lower bound, since every shape lies within radius ~0.971).
Normals come from faces, or are estimated from the k nearest neighbours of a
point cloud (PCA) and oriented towards the sensor when its position is known,
else away from the cloud's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .fitting import Observations
from .frames import RADIUS_MARGIN


@dataclass(frozen=True)
class ObservationConfig:
    """How many observations of which kind a scan yields."""

    surface_points: int = 20_000
    """Surface samples (a mesh is sampled area-weighted; a cloud is subsampled to this)."""
    eta: float = 0.01
    """Offset along the normal, model frame (the unit sphere): 1 % of the radius."""
    far_points: int = 2_000
    """Points on a shell of radius 1.0-1.2, known outside by at least r - 1/1.03."""
    normal_neighbours: int = 16
    """Neighbours for PCA normals of a point cloud."""
    max_points: int = 200_000
    """Larger clouds are subsampled (seeded) before anything else, so huge scans do not hang."""


def estimate_normals(points: np.ndarray, neighbours: int = 16, sensor: np.ndarray | None = None) -> np.ndarray:
    """Unit normals of a point cloud by PCA of each point's neighbourhood.

    points: (n, 3). sensor: (3,) position, same frame, or None. Normals point
    towards the sensor if given, else away from the cloud's centroid. Returns (n, 3) float32.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64)
    k = int(min(max(3, neighbours), len(pts)))
    if len(pts) < 3:
        raise InputError("need at least 3 points to estimate normals")
    _, idx = cKDTree(pts).query(pts, k=k, workers=-1)
    nb = pts[idx] - pts[idx].mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", nb, nb)
    _, vecs = np.linalg.eigh(cov)
    normals = vecs[:, :, 0]
    towards = (sensor - pts) if sensor is not None else (pts - pts.mean(axis=0))
    flip = np.sum(normals * towards, axis=1) < 0
    normals[flip] *= -1
    return normals.astype(np.float32)


def _far_shell(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d = rng.standard_normal((count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = rng.uniform(1.0, 1.2, count)
    return (d * r[:, None]).astype(np.float32), (r - 1.0 / RADIUS_MARGIN).astype(np.float32)


def _assemble(
    surface: np.ndarray, normals: np.ndarray, config: ObservationConfig, rng: np.random.Generator
) -> Observations:
    eta = config.eta
    far, far_sdf = _far_shell(config.far_points, rng)
    pts = np.concatenate([surface, surface + eta * normals, surface - eta * normals, far])
    n = len(surface)
    sdf = np.concatenate([np.zeros(n), np.full(n, eta), np.full(n, -eta), far_sdf]).astype(np.float32)
    lower = np.zeros(len(pts), bool)
    lower[3 * n :] = True
    return Observations(pts, sdf, lower_bound=lower)


def observations_from_mesh(
    vertices: np.ndarray, faces: np.ndarray, config: ObservationConfig = ObservationConfig(), seed: int = 0
) -> Observations:
    """Observations of a (possibly partial) mesh in the model frame. vertices (n, 3), faces (m, 3)."""
    from .metrics import sample_surface

    surface, normals = sample_surface(vertices, faces, config.surface_points, seed)
    return _assemble(surface.astype(np.float32), normals.astype(np.float32), config, np.random.default_rng(seed))


def observations_from_points(
    points: np.ndarray,
    normals: np.ndarray | None = None,
    sensor: np.ndarray | None = None,
    config: ObservationConfig = ObservationConfig(),
    seed: int = 0,
) -> Observations:
    """Observations of a point cloud (n, 3), model frame; normals estimated when not given."""
    rng = np.random.default_rng(seed)
    pts = np.asarray(points, np.float32)
    if len(pts) > config.max_points:
        keep = rng.choice(len(pts), config.max_points, replace=False)
        pts = pts[keep]
        normals = None if normals is None else np.asarray(normals)[keep]
    if normals is None:
        normals = estimate_normals(pts, config.normal_neighbours, sensor)
    if len(pts) > config.surface_points:
        keep = rng.choice(len(pts), config.surface_points, replace=False)
        pts, normals = pts[keep], normals[keep]
    return _assemble(pts, np.asarray(normals, np.float32), config, rng)


def observations_from_sdf_samples(path: str | Path) -> Observations:
    """Reference training samples (``SdfSamples/.../<id>.npz`` with ``pos``/``neg`` (n, 4))."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            rows = np.concatenate([data["pos"], data["neg"]])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path.name} is not a DeepSDF SdfSamples file (pos/neg arrays): {exc}") from None
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise InputError(f"{path.name}: SDF samples must be (n, 4) rows x, y, z, sdf")
    return Observations(rows[:, :3], rows[:, 3])
