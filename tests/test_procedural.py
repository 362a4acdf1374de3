"""Procedural chairs and tables, and the scan simulator."""

import numpy as np
import pytest
import trimesh

from engine.frames import reference_normalization, to_model_frame
from engine.prepare import signed_distance
from engine.procedural import CHAIR_KINDS, TABLE_KINDS, exact_samples, generate, shape_mesh
from engine.scan import DepthCamera, orbit_camera, partial_mesh, simulate_scan


def test_generator_is_deterministic_and_varied():
    a, b = generate("chairs", 6, seed=5), generate("chairs", 6, seed=5)
    pts = np.random.default_rng(0).uniform(-1, 1, (500, 3))
    for x, y in zip(a, b, strict=True):
        assert x.params == y.params
        np.testing.assert_array_equal(x.sdf(pts), y.sdf(pts))
    assert {s.kind for s in a} == set(CHAIR_KINDS)
    assert a[0].params != generate("chairs", 1, seed=6)[0].params
    assert {s.kind for s in generate("tables", 3)} == set(TABLE_KINDS)
    backs = {s.params["back"] for s in generate("chairs", 30, seed=1)}
    assert {"solid", "slats", "open", "none"} <= backs


@pytest.mark.parametrize("family", ["chairs", "tables"])
def test_shapes_are_watertight_upright_and_fit_the_unit_sphere(family):
    for shape in generate(family, 6 if family == "chairs" else 3, seed=2):
        v, f = shape_mesh(shape, 96)
        mesh = trimesh.Trimesh(v, f)
        assert mesh.is_watertight and mesh.volume > 0, shape.name
        assert v[:, 1].min() == pytest.approx(0.0, abs=0.01)  # standing on the floor, y up
        offset, scale = reference_normalization(v)
        local = to_model_frame(v, offset, scale)
        assert np.linalg.norm(local, axis=1).max() <= 1 / 1.03 + 1e-5
        # the exact SDF vanishes on the marching-cubes surface (within a voxel)
        step = float(np.ptp(v, axis=0).max()) / 95
        assert np.abs(shape.sdf(v)).max() < step


def test_exact_samples_agree_with_the_mesh_path():
    shape = generate("chairs", 1, seed=4)[0]
    pts, sdf, offset, scale = exact_samples(shape, samples=20000, seed=1)
    v, f = shape_mesh(shape, 160)
    local = to_model_frame(v, offset, scale)
    mesh_sdf = signed_distance(local, f, pts)  # what `prepare` computes from the mesh
    decided = np.abs(sdf) > 0.005
    assert np.mean((mesh_sdf[decided] < 0) == (sdf[decided] < 0)) > 0.995
    assert np.median(np.abs(mesh_sdf - sdf)) < 0.005
    assert (sdf < 0).mean() > 0.05  # near-surface sampling puts many points inside


def test_scan_sees_only_the_front_and_lies_on_the_surface():
    sphere = trimesh.creation.icosphere(4, radius=0.5)
    cam = DepthCamera(position=(0, 0, 2.0), width=80, height=60, fov_degrees=40)
    scan = simulate_scan(sphere.vertices, sphere.faces, cam)
    r = np.linalg.norm(scan.points, axis=1)
    assert np.abs(r - 0.5).max() < 0.01
    assert scan.points[:, 2].min() > -0.02  # nothing from the back half
    assert len(scan.points) == int(np.isfinite(scan.depth[0]).sum()) > 500
    v, f = partial_mesh(scan)
    assert len(f) > 500 and np.abs(np.linalg.norm(v, axis=1) - 0.5).max() < 0.01

    noisy = simulate_scan(sphere.vertices, sphere.faces, cam, noise=0.01, outliers=0.05, seed=3)
    inl = noisy.points[~noisy.outlier].astype(float)
    c = np.array([0, 0, 2.0])
    d = (inl - c) / np.linalg.norm(inl - c, axis=1, keepdims=True)
    b = d @ c  # the true hit along each ray: |c + t d| = 0.5
    t_true = -b - np.sqrt(np.maximum(b * b - (c @ c - 0.25), 0))
    along = np.linalg.norm(inl - c, axis=1) - t_true
    assert np.std(along) == pytest.approx(0.01, rel=0.2)  # depth noise along the ray
    assert noisy.outlier.mean() == pytest.approx(0.05 / 1.05, rel=0.05)

    views = simulate_scan(sphere.vertices, sphere.faces, [orbit_camera(a, 0, 2.0) for a in (0, 120, 240)])
    assert views.points[:, 2].min() < -0.3 and len(np.unique(views.sensors, axis=0)) == 3
