"""A virtual depth camera: what a single-view (or few-view) scan of a mesh would give.

The camera looks from ``position`` towards ``target`` with a vertical field of view
and ``width x height`` pixels. Visibility is resolved with a z-buffer over dense
surface samples of the mesh (each pixel keeps its nearest sample), so every returned
point lies on the surface and was visible from the camera. Noise is added along the
viewing ray (as depth sensors err), in the mesh's units; outliers are scattered
uniformly in the scan's bounding box. ``partial_mesh`` triangulates the depth image
like a scanner's mesh export, dropping triangles across depth jumps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class DepthCamera:
    """A pinhole depth camera. Positions are in the scanned mesh's frame."""

    position: tuple[float, float, float]
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fov_degrees: float = 45.0
    width: int = 160
    height: int = 120

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit right, up and forward vectors (forward points from the camera to the target)."""
        forward = np.asarray(self.target, float) - np.asarray(self.position, float)
        if np.linalg.norm(forward) == 0:
            raise InputError("the camera's position and target coincide")
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.asarray(self.up, float))
        if np.linalg.norm(right) < 1e-9:
            right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
        right /= np.linalg.norm(right)
        return right, np.cross(right, forward), forward


def orbit_camera(
    azimuth_degrees: float,
    elevation_degrees: float = 20.0,
    distance: float = 2.5,
    target: tuple[float, float, float] = (0.0, 0.0, 0.0),
    **kwargs,
) -> DepthCamera:
    """A camera on a sphere around ``target`` (y up; azimuth 0 looks from +z, the front)."""
    a, e = math.radians(azimuth_degrees), math.radians(elevation_degrees)
    offset = distance * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    return DepthCamera(tuple(np.asarray(target) + offset), target, **kwargs)


@dataclass
class Scan:
    """Result of :func:`simulate_scan`.

    points: (n, 3) float32 scanned points. sensors: (n, 3) float32 the position of the
    camera that saw each point. depth: per camera a (height, width) float32 image
    (inf where nothing was hit). pixel_index: per camera, (height, width) int index
    into ``points`` or -1. outlier: (n,) bool, True for injected outliers.
    """

    points: np.ndarray
    sensors: np.ndarray
    depth: list[np.ndarray]
    pixel_index: list[np.ndarray]
    outlier: np.ndarray


def simulate_scan(
    vertices: np.ndarray,
    faces: np.ndarray,
    cameras: list[DepthCamera] | DepthCamera,
    noise: float = 0.0,
    outliers: float = 0.0,
    seed: int = 0,
    samples_per_pixel: float = 12.0,
) -> Scan:
    """Scan a mesh (vertices (n, 3), faces (m, 3)) with one or more depth cameras.

    noise: std of the depth error along each ray (mesh units). outliers: fraction of
    extra points scattered uniformly in the scan's bounding box.
    """
    from .metrics import sample_surface

    cams = [cameras] if isinstance(cameras, DepthCamera) else list(cameras)
    if not cams:
        raise InputError("at least one camera is needed")
    rng = np.random.default_rng(seed)
    pixels = max(c.width * c.height for c in cams)
    surf, _ = sample_surface(vertices, faces, int(samples_per_pixel * pixels), seed=seed)
    all_pts, all_sensors, depths, indices = [], [], [], []
    count = 0
    for cam in cams:
        right, up, forward = cam.basis()
        rel = surf - np.asarray(cam.position, float)
        z = rel @ forward
        front = z > 1e-6
        f = 0.5 * cam.height / math.tan(math.radians(cam.fov_degrees) / 2)
        u = (rel @ right) / np.where(front, z, 1) * f + cam.width / 2
        v = -(rel @ up) / np.where(front, z, 1) * f + cam.height / 2
        px, py = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        ok = front & (px >= 0) & (px < cam.width) & (py >= 0) & (py < cam.height)
        flat = py[ok] * cam.width + px[ok]
        dist = np.linalg.norm(rel[ok], axis=1)
        cand = np.flatnonzero(ok)
        order = np.lexsort((dist, flat))
        flat_s, first = flat[order], np.ones(len(order), bool)
        first[1:] = flat_s[1:] != flat_s[:-1]
        chosen = cand[order[first]]
        hit_pixels = flat_s[first]
        depth = np.full(cam.height * cam.width, np.inf, np.float32)
        depth[hit_pixels] = dist[order[first]]
        index = np.full(cam.height * cam.width, -1, np.int64)
        index[hit_pixels] = count + np.arange(len(chosen))
        pts = surf[chosen]
        if noise > 0:
            rays = pts - np.asarray(cam.position, float)
            rays /= np.linalg.norm(rays, axis=1, keepdims=True)
            pts = pts + rays * rng.normal(0, noise, (len(pts), 1))
        all_pts.append(pts)
        all_sensors.append(np.repeat(np.asarray(cam.position, float)[None], len(pts), axis=0))
        depths.append(depth.reshape(cam.height, cam.width))
        indices.append(index.reshape(cam.height, cam.width))
        count += len(pts)
    points = np.concatenate(all_pts)
    sensors = np.concatenate(all_sensors)
    is_outlier = np.zeros(len(points), bool)
    if outliers > 0 and len(points):
        n_out = round(outliers * len(points))
        lo, hi = points.min(axis=0), points.max(axis=0)
        extra = rng.uniform(lo, hi, (n_out, 3))
        points = np.concatenate([points, extra])
        sensors = np.concatenate([sensors, sensors[rng.integers(len(sensors), size=n_out)]])
        is_outlier = np.concatenate([is_outlier, np.ones(n_out, bool)])
    return Scan(points.astype(np.float32), sensors.astype(np.float32), depths, indices, is_outlier)


def partial_mesh(scan: Scan, camera: int = 0, max_jump: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate one camera's depth image: vertices (n, 3) float32, faces (m, 3) int32.

    Neighbouring pixels form two triangles per 2 x 2 block when all exist and their
    depths differ by less than ``max_jump`` (mesh units), like a scanner's mesh export.
    """
    index = scan.pixel_index[camera]
    depth = scan.depth[camera]
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    da, db, dc, dd = depth[:-1, :-1], depth[:-1, 1:], depth[1:, :-1], depth[1:, 1:]
    valid = (a >= 0) & (b >= 0) & (c >= 0) & (d >= 0)
    stack = np.where(valid, np.stack([da, db, dc, dd]), 0.0)  # valid blocks have four finite depths
    smooth = valid & (stack.max(axis=0) - stack.min(axis=0) < max_jump)
    tri1 = np.stack([a[smooth], c[smooth], b[smooth]], axis=1)
    tri2 = np.stack([b[smooth], c[smooth], d[smooth]], axis=1)
    faces = np.concatenate([tri1, tri2])
    used = np.unique(faces)
    remap = -np.ones(len(scan.points), np.int64)
    remap[used] = np.arange(len(used))
    return scan.points[used].astype(np.float32), remap[faces].astype(np.int32)
