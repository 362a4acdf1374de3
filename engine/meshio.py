"""Reading and writing meshes, point clouds and codes (trimesh does the formats).

Only the edges of the program (CLI, worker) call these; compute functions take
and return arrays.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .meshing import Mesh

MESH_SUFFIXES = (".ply", ".obj", ".stl", ".glb", ".gltf", ".off")
POINT_SUFFIXES = (".xyz", ".npy", ".pts", ".txt")


def load_geometry(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Vertices (n, 3) float32 and faces (m, 3) int32, or None for a point cloud.

    Meshes: PLY, OBJ, STL, GLB/glTF, OFF (scenes are merged in world space).
    Point clouds: PLY without faces, ``.xyz``/``.pts``/``.txt`` (x y z per line,
    extra columns ignored) or ``.npy`` (n, >=3).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Input file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            return _points(arr, path), None
        if suffix in (".xyz", ".pts", ".txt"):
            return _points(np.loadtxt(path, ndmin=2), path), None
        import trimesh

        loaded = trimesh.load(path, process=False)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for bad files
        raise InputError(f"Cannot read {path.name}: {exc}") from None
    import trimesh

    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.dump(concatenate=False)) if loaded.geometry else []
        meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh)]
        clouds = [g for g in geoms if isinstance(g, trimesh.PointCloud)]
        if meshes:
            loaded = trimesh.util.concatenate(meshes)
        elif clouds:
            loaded = trimesh.PointCloud(np.concatenate([c.vertices for c in clouds]))
        else:
            raise InputError(f"{path.name} holds no mesh or points.")
    if isinstance(loaded, trimesh.PointCloud):
        return _points(loaded.vertices, path), None
    if not isinstance(loaded, trimesh.Trimesh):
        raise InputError(f"{path.name} is not a triangle mesh or point cloud ({type(loaded).__name__}).")
    verts = _points(loaded.vertices, path)
    faces = np.asarray(loaded.faces, np.int32).reshape(-1, 3)
    return verts, (faces if len(faces) else None)


def _points(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise InputError(f"{path.name}: expected n x 3 coordinates, got shape {arr.shape}")
    pts = arr[:, :3].astype(np.float32)
    if len(pts) == 0:
        raise InputError(f"{path.name} has no vertices.")
    if not np.isfinite(pts).all():
        raise InputError(f"{path.name} has NaN or infinite coordinates.")
    return pts


def save_mesh(path: str | os.PathLike, mesh: Mesh) -> Path:
    """Write ``mesh`` as PLY, OBJ, STL or GLB by extension, atomically.

    Vertex normals are written where the format carries them; a ``confidence``
    vertex value becomes a grey vertex colour in PLY/GLB.
    """
    import trimesh

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ply", ".obj", ".stl", ".glb", ".off"):
        raise InputError(f"Unsupported mesh format {suffix!r}; use .ply, .obj, .stl, .glb or .off")
    tm = trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        vertex_normals=mesh.normals if mesh.normals is not None else None,
        process=False,
    )
    if "confidence" in mesh.vertex_values and suffix in (".ply", ".glb"):
        c = np.clip(mesh.vertex_values["confidence"], 0, 1)
        grey = (c * 255).astype(np.uint8)
        tm.visual.vertex_colors = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=1)
    data = tm.export(file_type=suffix[1:])
    write_bytes_atomic(path, data if isinstance(data, bytes) else data.encode())
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_code(path: str | os.PathLike, code_length: int) -> np.ndarray:
    """A code from ``.npy`` (L,) or (1, L); checks its length. Never unpickles."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read code file {path}: {exc}") from None
    arr = np.asarray(arr, np.float32).reshape(-1)
    if arr.shape[0] != code_length:
        raise InputError(f"{path.name} holds a code of length {arr.shape[0]}; the model needs {code_length}.")
    if not np.isfinite(arr).all():
        raise InputError(f"{path.name} has NaN or infinite values.")
    return arr
