"""Training data: meshes to SDF samples in the reference DeepSDF layout, no OpenGL needed.

For each mesh: normalise like the reference (bounding-box centre, radius 1/1.03),
sample points (near the surface at two noise scales plus uniform in the box) and
give each its signed distance: the distance to the nearest triangle (libigl's AABB
tree) with the sign of the generalised winding number (libigl's fast winding
number). The winding number stays right on real-world meshes — holes, open parts,
intersecting pieces, inner faces — where a ray or normal test breaks; inconsistent
face winding is repaired first (trimesh) so the winding number can be trusted.

Writes, under ``out_dir``:

* ``SdfSamples/<dataset>/<class>/<id>.npz``: ``pos``/``neg`` (n, 4) float32 rows x, y, z, sdf (model frame);
* ``NormalizationParameters/<dataset>/<class>/<id>.npz``: ``offset`` (3,), ``scale`` (1,);
* ``SurfaceSamples/<dataset>/<class>/<id>.ply``: 30,000 surface points, original frame (evaluation);
* ``splits/train.json``, ``splits/test.json``: ``{dataset: {class: [ids]}}``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .frames import reference_normalization, to_model_frame
from .meshio import MESH_SUFFIXES, write_bytes_atomic
from .progress import ProgressCallback, report


@dataclass(frozen=True)
class SamplingConfig:
    """How many SDF samples of which kind each mesh gets. Defaults are the reference's."""

    samples: int = 500_000
    """Samples per shape (reference 500,000)."""
    uniform_fraction: float = 3 / 50
    """Share sampled uniformly in [-1, 1]^3; the rest is near the surface (reference 3/50)."""
    variance: float = 0.005
    """Each surface point is perturbed once with N(0, variance) and once with N(0, variance / 10)."""
    surface_samples: int = 30_000
    """Points written to SurfaceSamples for evaluation (reference 30,000)."""
    repair_winding: bool = True
    """Make face winding consistent per connected piece before the winding number."""
    sheet_thickness: float = 0.02
    """Open single sheets (cloth, thin panels) become solids this thick (model frame, 2 % of the
    radius, about a voxel at 128^3): with no thickness they enclose nothing and would vanish."""
    seed: int = 0
    """Sampling seed; each shape's stream is derived from it and the shape's id."""


@dataclass
class PrepareReport:
    """What :func:`prepare_dataset` did: ids written, skipped as done, and failed with the reason."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds_per_mesh: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def load_mesh_for_sampling(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (n, 3) float64 and faces (m, 3) int64 of a mesh file, scenes merged.

    Raises InputError for unreadable files, point clouds and meshes without area.
    """
    import trimesh

    path = Path(path)
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for bad files
        raise InputError(f"cannot read {path.name}: {exc}") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InputError(f"{path.name} has no triangles")
    verts = np.asarray(loaded.vertices, np.float64)
    faces = np.asarray(loaded.faces, np.int64)
    if not np.isfinite(verts).all():
        raise InputError(f"{path.name} has NaN or infinite coordinates")
    if loaded.area <= 1e-12:
        raise InputError(f"{path.name} has no surface area")
    return verts, faces


def repair_winding(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces with winding made consistent across shared edges, piece by piece.

    Duplicate vertices are merged (so a triangle soup's pieces become connected),
    faces present twice (double-sided sheets) are kept once, and trimesh flips
    faces until neighbours agree. Pieces wound inside-out as a whole are left so:
    :func:`signed_distance` takes the winding number's magnitude.
    Returns (n', 3) float64 and (m', 3) int64.
    """
    import trimesh

    merged = trimesh.Trimesh(vertices, faces, process=True, validate=False)
    # double-sided sheets (each face twice, opposite windings) cancel in the winding
    # number and would vanish: keep one copy of each face
    _, first = np.unique(np.sort(merged.faces, axis=1), axis=0, return_index=True)
    if len(first) < len(merged.faces):
        merged = trimesh.Trimesh(merged.vertices, merged.faces[np.sort(first)], process=False)
    trimesh.repair.fix_winding(merged)
    return np.asarray(merged.vertices, np.float64), np.asarray(merged.faces, np.int64)


def signed_distance(
    vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, sheet_thickness: float = 0.0
) -> np.ndarray:
    """Signed distance of points (n, 3) to a mesh, negative inside; all in one frame.

    Distance: exact, to the nearest triangle (libigl AABB tree). Sign: the
    generalised winding number, taken **per connected piece**: a point is inside
    when it is inside any piece (|w| > 1/2). Per piece, a piece wound inside-out
    still counts as solid, overlapping pieces form their union, and coincident
    copies wound oppositely (double-sided sheets, shells) cannot cancel out.

    sheet_thickness: artist meshes model cloth, seats and panels as open single
    sheets that enclose nothing. Near such a piece its winding number sits between
    about 0.2 and 0.8; points there within ``sheet_thickness`` of the mesh get the
    SDF of the sheet thickened to ``sheet_thickness`` (``dist - sheet_thickness / 2``),
    so the part becomes a thin solid instead of vanishing.
    """
    import igl
    from scipy.sparse.csgraph import connected_components

    v = np.ascontiguousarray(vertices, np.float64)
    f = np.ascontiguousarray(faces, np.int64)
    q = np.ascontiguousarray(points, np.float64)
    sq, _, _ = igl.point_mesh_squared_distance(q, v, f)
    dist = np.sqrt(np.maximum(sq, 0.0))
    inside = np.zeros(len(q), bool)
    sheet = np.zeros(len(q), bool)
    n_parts, labels = connected_components(_vertex_adjacency(len(v), f), directed=False)
    face_part = labels[f[:, 0]]
    half = 0.5 * sheet_thickness
    for part in range(n_parts):
        pf = f[face_part == part]
        if len(pf) == 0:
            continue
        used = np.unique(pf)
        lo, hi = v[used].min(axis=0) - 2 * half - 1e-9, v[used].max(axis=0) + 2 * half + 1e-9
        near = np.flatnonzero(((q >= lo) & (q <= hi)).all(axis=1))  # outside its box a piece has |w| < 1/2
        if len(near) == 0:
            continue
        w = np.abs(igl.fast_winding_number(v, pf, q[near]))
        inside[near[w > 0.5]] = True
        if sheet_thickness > 0:
            sheet[near[(w > 0.2) & (w < 0.8)]] = True
    sdf = np.where(inside, -dist, dist)
    if sheet_thickness > 0:
        thin = sheet & ~inside & (dist < sheet_thickness)
        sdf = np.where(thin, dist - half, sdf)
    return sdf


def _vertex_adjacency(n: int, faces: np.ndarray):
    from scipy.sparse import coo_matrix

    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    return coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))


def sample_points(
    vertices: np.ndarray, faces: np.ndarray, config: SamplingConfig, rng: np.random.Generator
) -> np.ndarray:
    """Sample positions (model frame): perturbed surface points and uniform points. Returns (n, 3)."""
    import trimesh

    n_uniform = round(config.samples * config.uniform_fraction)
    n_surface = (config.samples - n_uniform) // 2
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    surf, _ = trimesh.sample.sample_surface(mesh, n_surface, seed=int(rng.integers(2**31)))
    std = np.sqrt(config.variance)
    near = np.concatenate([surf + rng.normal(0, std, surf.shape), surf + rng.normal(0, std / np.sqrt(10), surf.shape)])
    uniform = rng.uniform(-1.0, 1.0, (config.samples - len(near), 3))
    return np.concatenate([near, uniform])


def sdf_samples(
    vertices: np.ndarray, faces: np.ndarray, config: SamplingConfig = SamplingConfig(), seed: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Normalise a mesh and sample its SDF.

    Returns ``(points (n, 3) float32 model frame, sdf (n,) float32, offset (3,), scale)``.
    """
    rng = np.random.default_rng(config.seed if seed is None else seed)
    offset, scale = reference_normalization(vertices)
    local = to_model_frame(vertices, offset, scale).astype(np.float64)
    if config.repair_winding:
        local, faces = repair_winding(local, faces)
    points = sample_points(local, faces, config, rng)
    sdf = signed_distance(local, faces, points, config.sheet_thickness)
    return points.astype(np.float32), sdf.astype(np.float32), offset, scale


def point_cloud_ply(points: np.ndarray, normals: np.ndarray) -> bytes:
    """Binary little-endian PLY of points (n, 3) with normals (n, 3), as float32."""
    data = np.concatenate([points, normals], axis=1).astype("<f4")
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(data)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\nend_header\n"
    )
    return header.encode() + data.tobytes()


def read_point_cloud_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (n, 3) and normals (n, 3) or None from a PLY point cloud (any PLY trimesh reads)."""
    import trimesh

    cloud = trimesh.load(path, process=False)
    points = np.asarray(cloud.vertices, np.float64)
    props = getattr(cloud, "metadata", {}).get("_ply_raw", {}).get("vertex", {}).get("data")
    normals = None
    if props is not None and all(k in props.dtype.names for k in ("nx", "ny", "nz")):
        normals = np.stack([props["nx"], props["ny"], props["nz"]], axis=1).astype(np.float64)
    return points, normals


def _id_for(path: Path, taken: set[str]) -> str:
    base = path.stem.replace(" ", "_")
    name = base
    if name in taken:
        name = f"{path.parent.name}_{base}"
    k = 2
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def collect_meshes(inputs: list[str | os.PathLike]) -> list[Path]:
    """Mesh files named directly or found (recursively) in folders, sorted within each folder."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in MESH_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"input not found: {p}")
    if not found:
        raise InputError("no mesh files (.ply .obj .stl .glb .gltf .off) in the inputs")
    return found


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prepare_one(job: tuple[str, str, str, str, str, SamplingConfig, int]) -> tuple[str, str | None, float]:
    path, out_dir, dataset, class_name, shape_id, config, seed = job
    t0 = time.perf_counter()
    try:
        verts, faces = load_mesh_for_sampling(path)
        points, sdf, offset, scale = sdf_samples(verts, faces, config, seed)
        rows = np.concatenate([points, sdf[:, None]], axis=1)
        out = Path(out_dir)
        rel = Path(dataset) / class_name
        _save_npz_atomic(
            out / "NormalizationParameters" / rel / f"{shape_id}.npz",
            offset=offset.astype(np.float64),
            scale=np.array([scale]),
        )
        import trimesh

        mesh = trimesh.Trimesh(verts, faces, process=False)
        surf, face_index = trimesh.sample.sample_surface(mesh, config.surface_samples, seed=seed)
        write_bytes_atomic(
            out / "SurfaceSamples" / rel / f"{shape_id}.ply", point_cloud_ply(surf, mesh.face_normals[face_index])
        )
        # the samples file is written last: its presence marks the shape as done
        _save_npz_atomic(
            out / "SdfSamples" / rel / f"{shape_id}.npz", pos=rows[rows[:, 3] > 0], neg=rows[rows[:, 3] <= 0]
        )
    except InputError as exc:
        return shape_id, str(exc), time.perf_counter() - t0
    except (ValueError, RuntimeError, MemoryError, OSError) as exc:
        return shape_id, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0
    return shape_id, None, time.perf_counter() - t0


def prepare_dataset(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    dataset: str = "Meshes",
    class_name: str = "shapes",
    config: SamplingConfig = SamplingConfig(),
    workers: int = 0,
    test_fraction: float = 0.0,
    on_progress: ProgressCallback | None = None,
) -> PrepareReport:
    """Prepare every mesh in ``inputs`` (files or folders) into ``out_dir``.

    Shapes whose samples already exist are skipped; a mesh that cannot be read or
    has no area is reported in ``failed`` and the others go on. workers: processes
    (0 = one per CPU core). test_fraction: share of shapes held out in
    ``splits/test.json`` (seeded, stable across re-runs).
    """
    out = Path(out_dir)
    paths = collect_meshes(inputs)
    taken: set[str] = set()
    ids = [_id_for(p, taken) for p in paths]
    report_ = PrepareReport()
    jobs = []
    for i, (path, shape_id) in enumerate(zip(paths, ids, strict=True)):
        if (out / "SdfSamples" / dataset / class_name / f"{shape_id}.npz").is_file():
            report_.skipped.append(shape_id)
            continue
        jobs.append((str(path), str(out), dataset, class_name, shape_id, config, config.seed * 100_003 + i))
    total = len(jobs)
    report(on_progress, 0, total, "preparing meshes")
    workers = workers or os.cpu_count() or 1
    if workers > 1 and total > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, total)) as pool:
            results = pool.imap_unordered(_prepare_one, jobs)
            for k, (shape_id, error, seconds) in enumerate(results, 1):
                _record(report_, shape_id, error, seconds)
                report(on_progress, k, total, "preparing meshes")
    else:
        for k, job in enumerate(jobs, 1):
            _record(report_, *_prepare_one(job))
            report(on_progress, k, total, "preparing meshes")
    done = [s for s in ids if s not in report_.failed]
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(done))
    n_test = round(test_fraction * len(done))
    test_ids = {done[i] for i in order[:n_test]}
    for split_name, members in (
        ("train", [s for s in done if s not in test_ids]),
        ("test", [s for s in done if s in test_ids]),
    ):
        data = json.dumps({dataset: {class_name: members}}, indent=1).encode()
        write_bytes_atomic(out / "splits" / f"{split_name}.json", data)
    return report_


def _record(rep: PrepareReport, shape_id: str, error: str | None, seconds: float) -> None:
    if error is None:
        rep.written.append(shape_id)
        rep.seconds_per_mesh[shape_id] = seconds
    else:
        rep.failed[shape_id] = error
