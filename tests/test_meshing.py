"""Meshing: grid arithmetic, analytic surfaces, sparse = dense, empty level sets, normals, frames."""

import numpy as np
import pytest
import torch
import trimesh

from engine.errors import NoSurfaceError
from engine.meshing import MeshConfig, grid_axis, level_resolutions, marching_cubes, mesh_sdf
from engine.metrics import compare_meshes
from tests.analytic import box, sphere, table


def test_grid_axis_is_exact():
    for n in (8, 64, 256, 257):
        a = grid_axis(n)
        assert a[0] == -1.0 and a[-1] == 1.0 and len(a) == n
        np.testing.assert_allclose(np.diff(a), 2.0 / (n - 1), rtol=1e-5)


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_sphere_meshes_to_its_radius(method):
    r = 0.6
    f = sphere(r, (0.1, -0.05, 0.0))
    mesh = mesh_sdf(f, MeshConfig(resolution=96, method=method, normals=True), grad_fn=f)
    dist = np.linalg.norm(mesh.vertices - np.array([0.1, -0.05, 0.0]), axis=1)
    assert abs(dist.mean() - r) < 2e-3 and dist.max() - dist.min() < 0.01
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight
    assert tm.volume == pytest.approx(4 / 3 * np.pi * r**3, rel=0.01)  # positive: faces wound outward
    radial = (mesh.vertices - np.array([0.1, -0.05, 0.0])) / dist[:, None]
    assert np.sum(mesh.normals * radial, axis=1).min() > 0.999
    assert mesh.faces.dtype == np.int32 and mesh.vertices.dtype == np.float32


def test_box_surface_is_where_the_sdf_says():
    f = box((0.5, 0.2, 0.3))
    mesh = mesh_sdf(f, MeshConfig(resolution=80, method="dense"))
    residual = f(torch.from_numpy(mesh.vertices)).abs()
    assert residual.max() < 2.0 / 79  # within a voxel of the true surface
    np.testing.assert_allclose(mesh.vertices.max(axis=0), [0.5, 0.2, 0.3], atol=0.02)


def test_sparse_matches_dense_on_thin_parts():
    """Thin legs (0.03 thick, under one coarse cell) must survive the coarse-to-fine band."""
    f = table(leg=0.015, gap=0.06)
    dense = mesh_sdf(f, MeshConfig(resolution=128, method="dense"))
    sparse = mesh_sdf(f, MeshConfig(resolution=128, method="sparse"))
    assert sparse.stats["points_evaluated"] < 0.3 * dense.stats["points_evaluated"]
    parts_d = trimesh.Trimesh(dense.vertices, dense.faces).split(only_watertight=False)
    parts_s = trimesh.Trimesh(sparse.vertices, sparse.faces).split(only_watertight=False)
    assert len(parts_s) == len(parts_d) == 5  # top + four legs, none lost
    metrics = compare_meshes((sparse.vertices, sparse.faces), (dense.vertices, dense.faces), samples=20000)
    assert metrics.chamfer < 1e-6 or np.array_equal(sparse.faces, dense.faces)


def test_level_resolutions():
    assert level_resolutions(256, 32) == [32, 64, 128, 256]
    assert level_resolutions(40, 32) == [40]
    assert level_resolutions(257, 32)[-1] == 257


def test_empty_and_full_level_sets_are_reported():
    with pytest.raises(NoSurfaceError, match="positive everywhere") as info:
        mesh_sdf(lambda x: x[:, 0] * 0 + 0.5, MeshConfig(resolution=16))
    assert info.value.kind == "empty"
    with pytest.raises(NoSurfaceError, match="negative everywhere") as info:
        mesh_sdf(lambda x: x[:, 0] * 0 - 0.5, MeshConfig(resolution=16))
    assert info.value.kind == "full"
    with pytest.raises(NoSurfaceError):
        marching_cubes(np.full((8, 8, 8), np.nan, np.float32))


def test_transform_to_original_frame():
    f = sphere(0.5)
    mesh = mesh_sdf(f, MeshConfig(resolution=48))
    offset, scale = np.array([1.0, -2.0, 0.5], np.float32), 0.25
    moved = mesh.transformed(offset, scale)
    # model = (x + offset) * scale  =>  x = model / scale - offset
    np.testing.assert_allclose((moved.vertices + offset) * scale, mesh.vertices, atol=1e-5)
    assert np.linalg.norm(moved.vertices + offset, axis=1).mean() == pytest.approx(2.0, abs=0.01)


def test_cheaper_coarse_levels_leave_the_surface_alone():
    """Coarse levels computed by a function off by up to 0.004 (as a lower precision is)
    with that error given as slack: the same faces as the exact dense grid."""
    f = table(leg=0.015, gap=0.06)

    def rough(x: torch.Tensor) -> torch.Tensor:
        return f(x) + 0.004 * torch.sin(37.0 * x[:, 0] + 11.0 * x[:, 1]) * torch.cos(23.0 * x[:, 2])

    dense = mesh_sdf(f, MeshConfig(resolution=128, method="dense"))
    calls = []

    def fine(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return f(x)

    mixed = mesh_sdf(fine, MeshConfig(resolution=128, method="sparse"), coarse_sdf_fn=rough, coarse_error=0.005)
    assert np.array_equal(mixed.faces, dense.faces)
    np.testing.assert_allclose(mixed.vertices, dense.vertices, atol=1e-6)
    # the exact function ran only at the finest level
    assert 0 < sum(calls) < mixed.stats["points_evaluated"]


def test_sparse_matches_dense_on_procedural_furniture():
    """The narrow band (thin final band, traced) gives the dense grid's faces on chairs
    and tables with slats, thin legs and stretchers (exact SDFs)."""
    from engine import procedural

    shapes = procedural.generate("chairs", 3, seed=3) + procedural.generate("tables", 2, seed=5)
    for shape in shapes:
        offset, scale = procedural.normalization(shape)

        def f(x: torch.Tensor, offset=offset, scale=scale, shape=shape) -> torch.Tensor:
            return torch.from_numpy(
                (shape.sdf(x.numpy().astype(np.float64) / scale - offset) * scale).astype(np.float32)
            )

        dense = mesh_sdf(f, MeshConfig(resolution=96, method="dense"))
        sparse = mesh_sdf(f, MeshConfig(resolution=96, method="sparse"))
        assert sparse.stats["points_evaluated"] < 0.35 * dense.stats["points_evaluated"], shape.name
        assert np.array_equal(sparse.faces, dense.faces), shape.name
        np.testing.assert_allclose(sparse.vertices, dense.vertices, atol=1e-6)
