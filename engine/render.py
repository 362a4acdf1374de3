"""Small software renderer for previews: a mesh to a shaded RGB image, no OpenGL.

Dense surface points are splatted through a z-buffer (orthographic camera),
shaded by their face normal. Good for thumbnails in TensorBoard and picture grids
in reports; Blender renders the real thing.
"""

from __future__ import annotations

import numpy as np

DEFAULT_VIEW = (30.0, 25.0)
"""(azimuth about y, elevation) in degrees: a three-quarter view from the front-right, above."""


def view_rotation(azimuth: float, elevation: float) -> np.ndarray:
    """(3, 3) rotation taking model-frame points (y up, front +z) into camera space (looking down -z).

    Elevation > 0 looks from above.
    """
    a, e = np.radians(azimuth), np.radians(elevation)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    return rx @ ry


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    size: int = 256,
    view: tuple[float, float] = DEFAULT_VIEW,
    extent: float = 1.0,
    color: tuple[float, float, float] = (0.75, 0.78, 0.85),
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    points: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Render a mesh (vertices (n, 3), faces (m, 3), model frame) to (size, size, 3) uint8.

    extent: half-width of the visible square. points: splats (0: chosen from size).
    An empty mesh renders as the background.
    """
    img = np.empty((size, size, 3), np.float32)
    img[:] = background
    if len(faces) == 0:
        return (img * 255).astype(np.uint8)
    from .metrics import sample_surface

    count = points or size * size * 6
    pts, normals = sample_surface(vertices, faces, count, seed)
    return _splat(img, pts, normals, view, extent, color, None)


def render_points(
    points: np.ndarray,
    size: int = 256,
    view: tuple[float, float] = DEFAULT_VIEW,
    extent: float = 1.0,
    color: tuple[float, float, float] = (0.85, 0.35, 0.25),
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    radius: int = 1,
) -> np.ndarray:
    """Render a point cloud (n, 3), model frame, as flat dots of ``radius`` pixels. Returns uint8."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = background
    return _splat(img, np.asarray(points, np.float64), None, view, extent, color, radius)


def _splat(img, pts, normals, view, extent, color, radius):
    size = img.shape[0]
    rot = view_rotation(*view)
    cam = pts @ rot.T
    px = ((cam[:, 0] / extent + 1) * 0.5 * (size - 1)).round().astype(np.int64)
    py = ((1 - (cam[:, 1] / extent + 1) * 0.5) * (size - 1)).round().astype(np.int64)
    depth = -cam[:, 2]
    if normals is not None:
        n_cam = normals @ rot.T
        light = np.array([0.4, 0.6, 0.7])
        light /= np.linalg.norm(light)
        shade = 0.25 + 0.75 * np.abs(n_cam @ light)
        rgb = np.asarray(color)[None] * shade[:, None]
    else:
        shade_depth = (depth - depth.min()) / max(np.ptp(depth), 1e-9)
        rgb = np.asarray(color)[None] * (1.0 - 0.35 * shade_depth[:, None])
    offsets = (
        [(0, 0)] if not radius else [(dx, dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)]
    )
    xs = np.concatenate([px + dx for dx, _ in offsets])
    ys = np.concatenate([py + dy for _, dy in offsets])
    ds = np.tile(depth, len(offsets))
    cs = np.tile(rgb, (len(offsets), 1))
    ok = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
    xs, ys, ds, cs = xs[ok], ys[ok], ds[ok], cs[ok]
    flat = ys * size + xs
    order = np.lexsort((ds, flat))  # by pixel, nearest first
    flat, cs = flat[order], cs[order]
    first = np.ones(len(flat), bool)
    first[1:] = flat[1:] != flat[:-1]
    img.reshape(-1, 3)[flat[first]] = cs[first]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def image_grid(images: list[np.ndarray], columns: int, pad: int = 4) -> np.ndarray:
    """Tile equally sized (h, w, 3) uint8 images into rows of ``columns``, white padding."""
    if not images:
        raise ValueError("no images to tile")
    h, w, _ = images[0].shape
    rows = -(-len(images) // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return grid


def save_png(path, image: np.ndarray) -> None:
    """Write an (h, w, 3) uint8 image as PNG (Pillow)."""
    from PIL import Image

    Image.fromarray(image).save(path)
