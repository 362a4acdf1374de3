"""Turning a scan (mesh or point cloud, model frame) into SDF observations for fitting.

A surface point gets SDF 0; the points ``eta`` along its outward normal get
``+eta`` and ``-eta``; points on a shell just outside the unit sphere are known
to be outside (a lower bound, since every shape lies within radius ~0.971).
When the sensor position is known, points on each ray between the sensor and the
surface point it saw are free space: known to be outside (SDF >= 0), drawn on the
part ``free_space_range`` of the way from the sensor to the surface; optionally
(``silhouette_points``) so are points the sensor saw past, outside the scan's
outline. Normals come from faces, or are estimated from the k nearest neighbours of
a point cloud (PCA) and oriented towards the sensor when its position is known, else
away from the cloud's centre.
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
    eta: float = 0.02
    """Offset along the normal, model frame (the unit sphere): 2 % of the radius.
    Measured (session 13; known-pose ``fast`` fits of the 16 held-out chairs' simulated
    scans, 1 % noise, sensor known; mean / median Chamfer x 1e3, F@1 %): one view 0.005
    11.85 / 3.43, 0.304; 0.01 9.10 / 5.08, 0.431; **0.02 7.68 / 2.80, 0.450**; 0.03 7.56
    / 4.07, 0.415. Three views 0.005 11.86 / 7.93; 0.01 9.69 / 3.02, 0.451; **0.02 7.75 /
    2.42, 0.486** (11 of 16 chairs better than 0.01 in both; docs/quality/completion.md).
    The placement search uses the same unless ``PlacementConfig.eta`` is set."""
    far_points: int = 2_000
    """Points on a shell of radius 1.0-1.2, known outside by at least r - 1/1.03."""
    normal_neighbours: int = 16
    """Neighbours for PCA normals of a point cloud."""
    max_points: int = 200_000
    """Larger clouds are subsampled (seeded) before anything else, so huge scans do not hang."""
    denoise: bool = True
    """Project cloud points onto their neighbourhood's plane first (:func:`denoise_points`)."""
    remove_outliers: bool = True
    """Drop isolated cloud points first (:func:`outlier_mask`): stray points would claim
    surface in empty space and their sensor rays would carve through the object."""
    free_space_per_point: int = 1
    """Free-space points per surface point on its sensor ray (only when a sensor is known)."""
    free_space_range: tuple[float, float] = (0.5, 0.95)
    """Where on the ray from the sensor (0) to the surface point (1) free space is drawn."""
    silhouette_points: int = 0
    """Points around the scan that its sensor would have seen past the object's outline
    (:func:`silhouette_free_points`), known to be outside; only with a sensor. 0 turns
    them off. They assume every surface in view returned points: a part the scanner
    missed (dark or shiny material, cut off by the frame, hidden by something cropped
    away) would be carved. Measured (session 14; one-view scans of the 16 held-out
    chairs, 1 % noise, ``fast``): 2,000 points lowered the known-pose Chamfer to 0.92x
    (32 scans, 19 better), gained nothing with an unknown pose (1.03x, 16 scans), and
    5,000 collapsed two chairs whose scans had 1.8-3.3k points (docs/quality/completion.md)."""
    silhouette_margin: float = 2.0
    """How far outside the outline (in the scan's angular point spacing seen from the
    sensor, :func:`silhouette_free_points`) a direction must be to count as empty."""

    def __post_init__(self) -> None:
        if not 0 < self.eta < 0.5:
            raise InputError(f"eta must be in (0, 0.5) model units, got {self.eta}")
        if self.silhouette_points < 0:
            raise InputError(f"silhouette points must be 0 (off) or more, got {self.silhouette_points}")
        if self.silhouette_margin <= 0:
            raise InputError(f"silhouette margin must be positive, got {self.silhouette_margin}")


def free_space_points(
    surface: np.ndarray,
    sensors: np.ndarray,
    per_point: int,
    fraction: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Points known to be empty: on the segment from each point's sensor to the point.

    surface: (n, 3); sensors: (n, 3) or (3,), same frame. Each point lies a uniform
    ``fraction`` of the way from the sensor (0) to the surface (1). Returns
    (n * per_point, 3) float32.
    """
    pts = np.asarray(surface, np.float64)
    sens = np.broadcast_to(np.asarray(sensors, np.float64), pts.shape)
    out = []
    for _ in range(per_point):
        u = rng.uniform(fraction[0], fraction[1], (len(pts), 1))
        out.append(sens + u * (pts - sens))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 3), np.float32)


def silhouette_free_points(
    surface: np.ndarray,
    sensors: np.ndarray,
    count: int,
    margin: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Points known to be empty because the sensor saw past them: outside the scan's outline.

    surface: (n, 3) scan points; sensors: (n, 3) each point's sensor position, same frame.
    Candidates are drawn uniformly in the ball 1.5 times the scan's bounding sphere; one is
    kept when, seen from some sensor, its direction is more than ``margin`` times that
    sensor's angular point spacing (the median angle to a ray's 8th nearest ray) from
    every direction in which the sensor got a return: a surface there would have
    returned points, so the ray through it met nothing. Returns (m, 3) float32, m <= count.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(surface, np.float64)
    sens = np.asarray(sensors, np.float64)
    if count <= 0 or len(pts) < 8:
        return np.zeros((0, 3), np.float32)
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    radius = 1.5 * float(np.linalg.norm(pts - centre, axis=1).max())
    draw = 4 * count
    cand = rng.standard_normal((draw, 3))
    cand *= (radius * rng.uniform(0, 1, draw) ** (1 / 3) / np.linalg.norm(cand, axis=1))[:, None]
    cand += centre
    empty = np.zeros(draw, bool)
    positions, which = np.unique(np.round(sens, 9), axis=0, return_inverse=True)
    which = which.reshape(-1)
    for j, s in enumerate(positions):
        rays = pts[which == j] - s
        if len(rays) < 8:
            continue
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        tree = cKDTree(rays)
        spacing = float(np.median(tree.query(rays, k=9, workers=-1)[0][:, -1]))
        look = cand - s
        look /= np.maximum(np.linalg.norm(look, axis=1, keepdims=True), 1e-12)
        gap = tree.query(look, workers=-1)[0]
        empty |= gap > margin * max(spacing, 1e-9)
    return cand[empty][:count].astype(np.float32)


def estimate_normals(points: np.ndarray, neighbours: int = 16, sensor: np.ndarray | None = None) -> np.ndarray:
    """Unit normals of a point cloud by PCA of each point's neighbourhood.

    points: (n, 3). sensor: (3,) position or (n, 3) one per point, same frame, or None.
    Normals point towards the sensor if given, else away from the cloud's centroid.
    Returns (n, 3) float32.
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


def outlier_mask(points: np.ndarray, neighbours: int = 8, ratio: float = 4.0) -> np.ndarray:
    """(n,) bool, True for points to keep: those whose mean distance to their
    ``neighbours`` nearest points is at most ``ratio`` times the cloud's median.

    points: (n, 3). A scan samples surfaces densely, so stray points (flying pixels,
    dust, reflections) stand far from any other; clouds under 20 points are kept whole.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64)
    if len(pts) < 20:
        return np.ones(len(pts), bool)
    k = min(neighbours, len(pts) - 1)
    dist, _ = cKDTree(pts).query(pts, k=k + 1, workers=-1)
    spread = dist[:, 1:].mean(axis=1)
    return spread <= ratio * max(float(np.median(spread)), 1e-12)


def denoise_points(points: np.ndarray, neighbours: int = 16) -> np.ndarray:
    """Project each point onto the plane fitted (PCA) to its ``neighbours`` nearest points.

    points: (n, 3). Returns (n, 3) float32. Depth noise scatters a scan's points across
    the surface; fitted as they are, the clamped loss prefers a fattened shape and the
    placement search a smaller scale (measured: 8 % at 1 % noise), so clouds are
    projected first.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64)
    k = int(min(max(3, neighbours), len(pts)))
    if len(pts) < 4:
        return pts.astype(np.float32)
    _, idx = cKDTree(pts).query(pts, k=k, workers=-1)
    centre = pts[idx].mean(axis=1)
    nb = pts[idx] - centre[:, None]
    _, vecs = np.linalg.eigh(np.einsum("nki,nkj->nij", nb, nb))
    normal = vecs[:, :, 0]
    offset = np.sum((pts - centre) * normal, axis=1, keepdims=True)
    return (pts - offset * normal).astype(np.float32)


def _far_shell(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d = rng.standard_normal((count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = rng.uniform(1.0, 1.2, count)
    return (d * r[:, None]).astype(np.float32), (r - 1.0 / RADIUS_MARGIN).astype(np.float32)


def _assemble(
    surface: np.ndarray,
    normals: np.ndarray,
    config: ObservationConfig,
    rng: np.random.Generator,
    sensors: np.ndarray | None = None,
    outline: tuple[np.ndarray, np.ndarray] | None = None,
) -> Observations:
    """outline: (points (m, 3), sensors (m, 3)) the whole scan for the silhouette's
    free space (denser than ``surface``); default ``(surface, sensors)``."""
    eta = config.eta
    far, far_sdf = _far_shell(config.far_points, rng)
    free = np.zeros((0, 3), np.float32)
    if sensors is not None and config.free_space_per_point > 0:
        free = free_space_points(surface, sensors, config.free_space_per_point, config.free_space_range, rng)
    if sensors is not None and config.silhouette_points > 0:
        src, src_sensors = outline if outline is not None else (surface, sensors)
        carved = silhouette_free_points(src, src_sensors, config.silhouette_points, config.silhouette_margin, rng)
        free = np.concatenate([free, carved])
    pts = np.concatenate([surface, surface + eta * normals, surface - eta * normals, far, free])
    n = len(surface)
    sdf = np.concatenate([np.zeros(n), np.full(n, eta), np.full(n, -eta), far_sdf, np.zeros(len(free))])
    lower = np.zeros(len(pts), bool)
    lower[3 * n :] = True
    fixed = np.zeros(len(pts), bool)
    fixed[3 * n : 3 * n + len(far)] = True
    return Observations(pts, sdf.astype(np.float32), lower_bound=lower, fixed=fixed)


def _sensor_array(sensor: np.ndarray | None, n: int) -> np.ndarray | None:
    """A (3,) position or (n, 3) per-point positions as (n, 3) float64, or None."""
    if sensor is None:
        return None
    arr = np.asarray(sensor, np.float64)
    if arr.shape == (3,):
        return np.broadcast_to(arr, (n, 3)).copy()
    if arr.shape == (n, 3):
        return arr
    raise InputError(f"sensor must be one position (3,) or one per point ({n}, 3), got {arr.shape}")


def observations_from_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    config: ObservationConfig = ObservationConfig(),
    seed: int = 0,
    sensor: np.ndarray | None = None,
) -> Observations:
    """Observations of a (possibly partial) mesh in the model frame. vertices (n, 3), faces (m, 3).

    sensor: (3,) scanner position (model frame) or None; adds free-space observations.
    """
    from .metrics import sample_surface

    surface, normals = sample_surface(vertices, faces, config.surface_points, seed)
    return _assemble(
        surface.astype(np.float32),
        normals.astype(np.float32),
        config,
        np.random.default_rng(seed),
        _sensor_array(sensor, len(surface)),
    )


def observations_from_points(
    points: np.ndarray,
    normals: np.ndarray | None = None,
    sensor: np.ndarray | None = None,
    config: ObservationConfig = ObservationConfig(),
    seed: int = 0,
) -> Observations:
    """Observations of a point cloud (n, 3), model frame; normals estimated when not given.

    sensor: (3,) scanner position or (n, 3) one per point (model frame), or None. It
    orients estimated normals and adds free-space observations on the rays.
    """
    rng = np.random.default_rng(seed)
    pts = np.asarray(points, np.float32)
    sensors = _sensor_array(sensor, len(pts))
    if len(pts) > config.max_points:
        keep = rng.choice(len(pts), config.max_points, replace=False)
        pts = pts[keep]
        normals = None if normals is None else np.asarray(normals)[keep]
        sensors = None if sensors is None else sensors[keep]
    if normals is None:
        if config.remove_outliers:
            keep = outlier_mask(pts)
            pts = pts[keep]
            sensors = None if sensors is None else sensors[keep]
        if config.denoise:
            pts = denoise_points(pts, config.normal_neighbours)
        normals = estimate_normals(pts, config.normal_neighbours, sensors)
    outline = None if sensors is None else (pts, sensors)
    if len(pts) > config.surface_points:
        keep = rng.choice(len(pts), config.surface_points, replace=False)
        pts, normals = pts[keep], normals[keep]
        sensors = None if sensors is None else sensors[keep]
    return _assemble(pts, np.asarray(normals, np.float32), config, rng, sensors, outline)


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
