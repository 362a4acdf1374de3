"""SDF grids and marching cubes: a code (or any SDF function) in, ``vertices, faces`` out.

The grid covers exactly ``[-box, box]^3`` with ``resolution`` points per axis:
point ``(i, j, k)`` sits at ``-box + (i, j, k) * 2 * box / (resolution - 1)``,
computed from integer indices (the reference's integer ``/`` skewed its grid).
Arrays are indexed ``[i, j, k] = (x, y, z)``.

Two ways to fill the grid, giving the same surface:

* ``dense``: every grid point, in chunks sized from free memory;
* ``sparse`` (coarse-to-fine narrow band): a dense coarse grid, then at each finer
  level only the corners of cells that every coarser level found within
  ``band_safety`` half cell diagonals of the surface (or with a sign change); the
  rest are interpolated from the coarser level, which keeps their sign.

Marching cubes is scikit-image's. Vertices come out in the model frame (or mapped
to a shape's original frame with its normalisation).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .device import PRECISIONS
from .errors import InputError, NoSurfaceError
from .progress import ProgressCallback, report

SdfFunction = Callable[[torch.Tensor], torch.Tensor]
"""Maps (n, 3) float32 points (model frame) to (n,) SDF values, without autograd."""


@dataclass(frozen=True)
class MeshConfig:
    """How to turn an SDF into a mesh."""

    resolution: int = 128
    """Grid points per axis over the box. 128 is interactive; 256 is the paper's."""
    method: str = "auto"
    """``dense``, ``sparse`` (narrow band) or ``auto`` (sparse from 64 up, where it pays)."""
    coarse_resolution: int = 32
    """First, dense level of the sparse scheme (cell 0.065: finer than any part we model)."""
    band_safety: float = 1.5
    """Refine cells whose nearest corner is within this many half cell diagonals of
    the surface. 1.0 suffices for an exact distance; 1.5 covers a learned SDF whose
    gradient norm reaches 1.5 (checked against dense meshing in the tests and bench)."""
    final_band_safety: float = 0.5
    """The same for the finest level, whose values are interpolated from the level
    before and whose band is then *traced* (every cell with a sign change gets exact
    corners, repeatedly), so a thinner start suffices. Measured: 0.5 and 0.25 gave the
    dense grid's faces on 9 procedural chairs and tables (128^3) and the paper chair
    (256^3: 734 k points at 0.5 against 1.12 M at 1.5)."""
    box: float = 1.0
    """Half-size of the meshing box in the model frame (the reference's [-1, 1]^3)."""
    chunk_points: int = 0
    """Points per decoder call; 0 chooses from free memory and layer width."""
    normals: bool = False
    """Vertex normals from the SDF gradient (autograd) instead of none."""
    precision: str = "auto"
    """Decoder arithmetic on CUDA for the finest level, whose values marching cubes
    reads: ``fp32``, ``tf32`` or ``bf16`` (``auto``: ``CUDA_MESH_PRECISION``).
    The CPU always meshes in fp32."""
    coarse_precision: str = "auto"
    """The same for the coarser levels of the sparse scheme, which only choose where
    to look (``auto``: ``CUDA_COARSE_PRECISION``); their measured error is added to
    the band, so the surface does not change."""

    def __post_init__(self) -> None:
        if not 8 <= self.resolution <= 1024:
            raise InputError(f"resolution must be between 8 and 1024, got {self.resolution}")
        if self.method not in ("auto", "dense", "sparse"):
            raise InputError(f"meshing method must be auto, dense or sparse, got {self.method!r}")
        for value in (self.precision, self.coarse_precision):
            if value not in PRECISIONS:
                raise InputError(f"unknown precision {value!r}; choose {', '.join(PRECISIONS)}")


CUDA_MESH_PRECISION = "fp32"
"""What ``precision="auto"`` meshes in on CUDA. Measured on an H100
(``benchmarks/bench_gpu.py``): TF32 and bf16 change faces of the 256^3 mesh
(vertex Hausdorff 3e-3 and 5e-3 against fp32's 8e-6), so the surface stays fp32."""
CUDA_COARSE_PRECISION = "fp32"
"""What ``coarse_precision="auto"`` uses on CUDA. Measured on an H100: bf16 coarse
levels keep the faces identical, but their error slack widens the band (1.35 M
points against 0.73 M at 256^3), so the whole mesh took longer (0.143 s against 0.118 s)."""
PRECISION_ERROR = {"fp32": 0.0, "tf32": 1e-3, "bf16": 1e-2}
"""Slack added to the band for values computed in each precision: several times the
largest error measured within 0.02 of the surface (tf32 3.4e-5, bf16 1.5e-3, H100)."""


@dataclass
class Mesh:
    """A triangle mesh as flat arrays.

    vertices: (n, 3) float32; faces: (m, 3) int32 (counter-clockwise seen from
    outside); normals: (n, 3) float32 unit vectors or None; vertex_values:
    optional named per-vertex (n,) float32 arrays (e.g. confidence).
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    vertex_values: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def apply_matrix(self, matrix: np.ndarray) -> Mesh:
        """This mesh mapped by a 4 x 4 similarity (normals rotated, not scaled)."""
        m = np.asarray(matrix, np.float64)
        verts = (self.vertices.astype(np.float64) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
        normals = None
        if self.normals is not None:
            n = self.normals @ m[:3, :3].T
            normals = (n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
        return Mesh(verts, self.faces, normals, dict(self.vertex_values), dict(self.stats))

    def transformed(self, offset: np.ndarray, scale: float) -> Mesh:
        """Map from the model frame to an original frame: ``x / scale - offset``."""
        verts = (self.vertices / np.float32(scale) - np.asarray(offset, np.float32)).astype(np.float32)
        return Mesh(verts, self.faces, self.normals, dict(self.vertex_values), dict(self.stats))


def grid_axis(resolution: int, box: float = 1.0) -> np.ndarray:
    """(resolution,) float32 coordinates ``-box + i * 2 * box / (resolution - 1)``; ends exact."""
    i = np.arange(resolution, dtype=np.float64)
    return (-box + i * (2.0 * box / (resolution - 1))).astype(np.float32)


def auto_chunk(width: int, device: torch.device) -> int:
    """Points per decoder call so a few activations of ``width`` fit in 1/8 of free memory."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 2 << 30
    per_point = max(width, 64) * 4 * 6  # a handful of live fp32 activations
    budget = min(free // 8, 4 << 30 if device.type == "cuda" else 512 << 20)
    return int(max(4096, min(1 << 20, budget // per_point)))


def _eval_into(
    sdf_fn: SdfFunction,
    values: torch.Tensor,
    mask: torch.Tensor,
    axis: torch.Tensor,
    chunk: int,
    on_progress: ProgressCallback | None,
    done: int,
    total: int,
) -> int:
    """Evaluate ``sdf_fn`` at the grid points where ``mask`` is set and write them into
    ``values`` (both (n, n, n), on the compute device). Returns the number of points."""
    idx = torch.nonzero(mask)
    if len(idx) == 0:
        return 0
    out = torch.empty(len(idx), dtype=torch.float32, device=values.device)
    for s in range(0, len(idx), chunk):
        out[s : s + chunk] = sdf_fn(axis[idx[s : s + chunk]]).float()  # exact grid coordinates
        report(on_progress, done + min(s + chunk, len(idx)), max(total, done + len(idx)), "meshing")
    values[mask] = out
    return len(idx)


def dense_grid(
    sdf_fn: SdfFunction,
    resolution: int,
    box: float = 1.0,
    device: torch.device | str = "cpu",
    chunk: int = 65536,
    on_progress: ProgressCallback | None = None,
) -> np.ndarray:
    """SDF at every grid point. Returns (N, N, N) float32 indexed [i, j, k] = (x, y, z)."""
    return _dense_grid(sdf_fn, resolution, box, torch.device(device), chunk, on_progress).cpu().numpy()


def _dense_grid(
    sdf_fn: SdfFunction,
    resolution: int,
    box: float,
    device: torch.device,
    chunk: int,
    on_progress: ProgressCallback | None,
) -> torch.Tensor:
    """:func:`dense_grid` kept on ``device``: (N, N, N) float32 tensor."""
    n = resolution
    total = n**3
    axis = torch.from_numpy(grid_axis(n, box)).to(device)
    out = torch.empty(total, dtype=torch.float32, device=device)
    for s in range(0, total, chunk):
        idx = torch.arange(s, min(s + chunk, total), device=device)
        pts = torch.stack([axis[idx // (n * n)], axis[(idx // n) % n], axis[idx % n]], dim=1)
        out[s : s + len(idx)] = sdf_fn(pts).float()
        report(on_progress, s + len(idx), total, "meshing")
    return out.reshape(n, n, n)


def level_resolutions(resolution: int, coarse: int) -> list[int]:
    """Grid sizes of the coarse-to-fine levels, ending at ``resolution`` (each about twice the last)."""
    levels = [resolution]
    while (levels[-1] + 1) // 2 >= coarse:
        levels.append((levels[-1] + 1) // 2)
    return levels[::-1]


def _corners(v: torch.Tensor) -> list[torch.Tensor]:
    """The eight (i-1, j-1, k-1) views of an (i, j, k) grid, one per cell corner."""
    i, j, k = (n - 1 for n in v.shape)
    return [v[a : a + i, b : b + j, c : c + k] for a in (0, 1) for b in (0, 1) for c in (0, 1)]


def _cell_near_surface(values: torch.Tensor, margin: float) -> torch.Tensor:
    """(n-1)^3 bool: cells with a sign change or a corner within ``margin`` of zero."""
    corners = _corners(values)
    lo, hi = corners[0], corners[0]
    for c in corners[1:]:
        lo = torch.minimum(lo, c)
        hi = torch.maximum(hi, c)
    nearest = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))
    return nearest <= margin


def _all_corners(flags: torch.Tensor) -> torch.Tensor:
    """(n-1)^3 bool: cells whose eight corners are all flagged. flags: (n)^3 bool."""
    corners = _corners(flags)
    out = corners[0].clone()
    for c in corners[1:]:
        out &= c
    return out


def _refine_cells(cells: torch.Tensor, n_fine: int) -> torch.Tensor:
    """Fine cells that overlap a flagged coarse cell (grids need not nest).

    cells: (n-1)^3 bool over the coarse grid. Returns (n_fine-1)^3 bool.
    """
    out = cells
    m_c = cells.shape[0]  # coarse cells per axis
    m_f = n_fine - 1
    i = torch.arange(m_f, device=cells.device)
    lo = (i * m_c) // m_f
    hi = torch.clamp(((i + 1) * m_c - 1) // m_f, max=m_c - 1)
    for axis in range(3):
        out = out.index_select(axis, lo) | out.index_select(axis, hi)
    return out


def _cell_corners(cells: torch.Tensor) -> torch.Tensor:
    """(i+1, j+1, k+1) bool: grid points that are a corner of a flagged cell. cells: (i, j, k) bool."""
    i, j, k = cells.shape
    mask = torch.zeros((i + 1, j + 1, k + 1), dtype=torch.bool, device=cells.device)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                mask[a : a + i, b : b + j, c : c + k] |= cells
    return mask


def sparse_grid(
    sdf_fn: SdfFunction,
    resolution: int,
    box: float = 1.0,
    device: torch.device | str = "cpu",
    chunk: int = 65536,
    coarse_resolution: int = 32,
    band_safety: float = 1.5,
    on_progress: ProgressCallback | None = None,
    trace_final: bool = True,
    final_band_safety: float | None = None,
) -> tuple[np.ndarray, int]:
    """Coarse-to-fine narrow-band SDF grid (an octree-like refinement on plain arrays).

    A cell is *active* when every coarser cell containing it was active and its own
    corners show a sign change or come within ``band_safety`` half-diagonals of zero
    (any point of a cell is within half a diagonal of a corner, so for a 1-Lipschitz
    SDF a cell without such a corner holds no surface). Only the corners of active
    cells are evaluated at the next level; every other point is interpolated from
    the coarser level and keeps the sign of the inactive cell it lies in, so
    marching cubes sees the same surface as on the dense grid.

    trace_final: at the last level, evaluate only the cells that the interpolated
    field puts within ``final_band_safety`` half-diagonals (None: ``band_safety``)
    of zero, then *trace*: any cell with a sign change that still
    has an interpolated corner gets its corners evaluated, until none is left. A
    surface that crosses a cell face shows a sign change on that face's (exact)
    corners, so every surface component that the band touches is followed to its
    end, and every cell marching cubes triangulates has exact corners.

    All grids stay on ``device`` (a GPU does the bookkeeping too). Returns
    ``(values, evaluated)``: (N, N, N) float32 with decoder values at the corners of
    active cells and sign-preserving interpolated values elsewhere, and the number
    of points the decoder evaluated.
    """
    values, evaluated = _sparse_grid(
        sdf_fn,
        resolution,
        box,
        torch.device(device),
        chunk,
        coarse_resolution,
        band_safety,
        on_progress,
        trace_final,
        final_band_safety=final_band_safety,
    )
    return values.cpu().numpy(), evaluated


def _sparse_grid(
    sdf_fn: SdfFunction,
    resolution: int,
    box: float,
    device: torch.device,
    chunk: int,
    coarse_resolution: int,
    band_safety: float,
    on_progress: ProgressCallback | None,
    trace_final: bool,
    coarse_sdf_fn: SdfFunction | None = None,
    coarse_error: float = 0.0,
    final_band_safety: float | None = None,
) -> tuple[torch.Tensor, int]:
    """:func:`sparse_grid` kept on ``device``: ((N, N, N) float32 tensor, points evaluated).

    coarse_sdf_fn: a cheaper version of ``sdf_fn`` (lower precision) for every level
    but the last, off by at most ``coarse_error``; that error widens the band."""
    levels = level_resolutions(resolution, coarse_resolution)
    coarse_fn = coarse_sdf_fn or sdf_fn
    # progress: the coarse level plus an estimate of each finer level's band
    total = levels[0] ** 3 + sum(int(0.03 * n**3) for n in levels[1:])
    values = _dense_grid(coarse_fn if len(levels) > 1 else sdf_fn, levels[0], box, device, chunk, None)
    evaluated = values.numel()
    report(on_progress, evaluated, total, "meshing")
    active = torch.ones((levels[0] - 1,) * 3, dtype=torch.bool, device=device)
    for step, n_fine in enumerate(levels[1:], start=2):
        n_coarse = values.shape[0]
        half_diag = 0.5 * math.sqrt(3.0) * 2.0 * box / (n_coarse - 1)
        active &= _cell_near_surface(values, band_safety * half_diag + coarse_error)
        active = _refine_cells(active, n_fine)
        fine = F.interpolate(values[None, None], size=(n_fine,) * 3, mode="trilinear", align_corners=True)[0, 0]
        axis = torch.from_numpy(grid_axis(n_fine, box)).to(device)
        last = step == len(levels)
        if last and trace_final:
            final_safety = band_safety if final_band_safety is None else final_band_safety
            evaluated += _trace_final_level(
                sdf_fn, fine, active, final_safety, box, axis, chunk, on_progress, evaluated, total, coarse_error
            )
        else:
            fn = sdf_fn if last else coarse_fn
            evaluated += _eval_into(fn, fine, _cell_corners(active), axis, chunk, on_progress, evaluated, total)
        values = fine
    return values, evaluated


def _trace_final_level(
    sdf_fn: SdfFunction,
    fine: torch.Tensor,
    active: torch.Tensor,
    band_safety: float,
    box: float,
    axis: torch.Tensor,
    chunk: int,
    on_progress: ProgressCallback | None,
    done: int,
    total: int,
    coarse_error: float = 0.0,
) -> int:
    """Fill ``fine`` (interpolated, (n)^3, modified in place) with exact values where the
    surface is; ``active``: (n-1)^3 candidate cells. Returns the points evaluated."""
    n = fine.shape[0]
    half_diag = 0.5 * math.sqrt(3.0) * 2.0 * box / (n - 1)
    cells = active & _cell_near_surface(fine, band_safety * half_diag + coarse_error)
    exact = torch.zeros(fine.shape, dtype=torch.bool, device=fine.device)
    count = 0
    while True:
        want = _cell_corners(cells) & ~exact
        got = _eval_into(sdf_fn, fine, want, axis, chunk, on_progress, done + count, total)
        if got == 0:
            break
        exact |= want
        count += got
        cells = _cell_near_surface(fine, 0.0) & ~_all_corners(exact)
    return count


def _surface_crop(values: torch.Tensor) -> tuple[slice, slice, slice]:
    """The index box holding every cell with an inside (or zero) corner, one point of margin
    (all of the level set; the rest of the grid is outside)."""
    inside = values <= 0
    out = []
    n = values.shape[0]
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = torch.nonzero(inside.any(dim=other[1]).any(dim=other[0])).flatten()
        lo = int(hit.min()) if len(hit) else 0
        hi = int(hit.max()) if len(hit) else n - 1
        out.append(slice(max(lo - 1, 0), min(hi + 2, n)))
    return out[0], out[1], out[2]


def marching_cubes(values: np.ndarray | torch.Tensor, box: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of a grid over ``[-box, box]^3``.

    values: (N, N, N) float32 (numpy, or a tensor on any device), negative inside.
    Returns vertices (n, 3) float32 in the grid's frame and faces (m, 3) int32,
    wound so normals point outside and closed where the shape reaches the box
    (watertight). Only the index box around the inside points goes to
    scikit-image (and, from a GPU, to the host): the same triangles, less work.
    Raises :class:`NoSurfaceError` when the grid has no sign change.
    """
    from skimage import measure

    grid = torch.as_tensor(values)
    if not bool(torch.isfinite(grid).all()):
        raise NoSurfaceError("The SDF has NaN or infinite values; the code is unusable.", "invalid")
    lo, hi = float(grid.min()), float(grid.max())
    if lo > 0:
        raise NoSurfaceError(
            "No surface: the SDF is positive everywhere in the box (the shape is empty). "
            "Try a code closer to the training codes (lower temperature).",
            "empty",
        )
    if hi < 0:
        raise NoSurfaceError(
            "No surface: the SDF is negative everywhere in the box (the shape fills it). "
            "Try a code closer to the training codes (lower temperature).",
            "full",
        )
    n = grid.shape[0]
    spacing = 2.0 * box / (n - 1)
    crop = _surface_crop(grid)
    start = np.array([sl.start for sl in crop], np.float32)
    # a shape that reaches the box's faces is closed there, so every mesh is watertight;
    # inside the box the pad only borders outside points, which hold no surface
    padded = F.pad(grid[crop], (1, 1, 1, 1, 1, 1), value=max(hi, spacing))
    # only cells with a sign change (or a zero corner) hold triangles: scikit-image skips the rest
    mask = _cell_corners(_cell_near_surface(padded, 0.0))
    verts, faces, _, _ = measure.marching_cubes(
        padded.cpu().numpy(), level=0.0, spacing=(spacing,) * 3, mask=mask.cpu().numpy()
    )
    verts = (verts + (start - 1.0) * spacing - box).astype(np.float32)
    return verts, faces.astype(np.int32)


def sdf_gradient_normals(
    grad_fn: Callable[[torch.Tensor], torch.Tensor],
    vertices: np.ndarray,
    device: torch.device,
    chunk: int = 65536,
) -> np.ndarray:
    """Unit normals from the SDF gradient. grad_fn: (n, 3) -> (n,) SDF *with* autograd."""
    out = np.empty_like(vertices)
    for s in range(0, len(vertices), chunk):
        xyz = torch.from_numpy(vertices[s : s + chunk]).to(device).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(grad_fn(xyz).sum(), xyz)
        out[s : s + chunk] = F.normalize(g, dim=1).cpu().numpy()
    return out


def mesh_sdf(
    sdf_fn: SdfFunction,
    config: MeshConfig = MeshConfig(),
    device: torch.device | str = "cpu",
    width: int = 512,
    grad_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_progress: ProgressCallback | None = None,
    coarse_sdf_fn: SdfFunction | None = None,
    coarse_error: float = 0.0,
) -> Mesh:
    """Mesh any SDF function (decoder or analytic) on the grid of ``config``.

    width: widest layer behind ``sdf_fn`` (sizes chunks). grad_fn: an autograd
    version of ``sdf_fn``, needed when ``config.normals``. coarse_sdf_fn: a cheaper
    ``sdf_fn`` within ``coarse_error`` of it, for the sparse scheme's coarse levels.
    """
    device = torch.device(device)
    t0 = time.perf_counter()
    chunk = config.chunk_points or auto_chunk(width, device)
    method = config.method
    if method == "auto":
        method = "sparse" if config.resolution >= 2 * config.coarse_resolution else "dense"
    if method == "dense":
        values = _dense_grid(sdf_fn, config.resolution, config.box, device, chunk, on_progress)
        evaluated = values.numel()
    else:
        values, evaluated = _sparse_grid(
            sdf_fn,
            config.resolution,
            config.box,
            device,
            chunk,
            config.coarse_resolution,
            config.band_safety,
            on_progress,
            True,
            coarse_sdf_fn,
            coarse_error,
            config.final_band_safety,
        )
    t1 = time.perf_counter()
    verts, faces = marching_cubes(values, config.box)
    normals = None
    if config.normals:
        if grad_fn is None:
            raise InputError("normals were asked for but no differentiable SDF was given")
        normals = sdf_gradient_normals(grad_fn, verts, device, chunk)
    t2 = time.perf_counter()
    stats = {
        "method": method,
        "resolution": config.resolution,
        "points_evaluated": int(evaluated),
        "dense_points": config.resolution**3,
        "seconds_sdf": t1 - t0,
        "seconds_surface": t2 - t1,
    }
    return Mesh(verts, faces, normals, stats=stats)
