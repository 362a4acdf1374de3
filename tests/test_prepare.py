"""prepare: reference layout, signs right on broken meshes, bad files skipped, re-runs skip done shapes."""

import json

import numpy as np
import pytest
import torch
import trimesh

from engine.errors import InputError
from engine.prepare import SamplingConfig, prepare_dataset, read_point_cloud_ply, sample_points, signed_distance
from engine.prepare import repair_winding as repair
from tests.analytic import box as box_sdf


def _box_mesh():
    return trimesh.creation.box(extents=(0.8, 0.6, 0.7)).subdivide().subdivide()


def _wrong_sign_rate(vertices, faces, truth_fn, seed=0):
    rng = np.random.default_rng(seed)
    clean = _box_mesh()
    pts = sample_points(clean.vertices, clean.faces, SamplingConfig(samples=40000), rng)
    v, f = repair(np.asarray(vertices, float), np.asarray(faces))
    sdf = signed_distance(v, f, pts)
    truth = truth_fn(torch.from_numpy(pts).float()).numpy()
    decided = np.abs(truth) > 1e-4
    return float(np.mean((sdf[decided] < 0) != (truth[decided] < 0))), sdf, truth


def test_signed_distance_is_exact_on_a_clean_box():
    rate, sdf, truth = _wrong_sign_rate(_box_mesh().vertices, _box_mesh().faces, box_sdf((0.4, 0.3, 0.35)))
    assert rate == 0.0
    np.testing.assert_allclose(sdf, truth, atol=1e-5)


def test_signs_survive_a_hole_an_inner_face_flipped_faces_and_overlaps():
    b = _box_mesh()
    truth = box_sdf((0.4, 0.3, 0.35))
    centers = b.triangles_center
    hole = (centers[:, 0] > 0.39) & (np.abs(centers[:, 1]) < 0.15) & (np.abs(centers[:, 2]) < 0.15)
    assert hole.sum() > 0
    assert _wrong_sign_rate(b.vertices, b.faces[~hole], truth)[0] < 1e-3

    inner = trimesh.creation.box(extents=(0.5, 0.01, 0.5))
    with_inner = trimesh.util.concatenate([b, trimesh.Trimesh(inner.vertices, inner.faces[:2])])
    assert _wrong_sign_rate(with_inner.vertices, with_inner.faces, truth)[0] == 0.0

    faces = b.faces.copy()
    flip = np.random.default_rng(1).random(len(faces)) < 0.3
    faces[flip] = faces[flip][:, ::-1]
    soup = trimesh.Trimesh(b.vertices[faces].reshape(-1, 3), np.arange(len(faces) * 3).reshape(-1, 3), process=False)
    assert _wrong_sign_rate(soup.vertices, soup.faces, truth)[0] == 0.0
    assert _wrong_sign_rate(b.vertices, b.faces[:, ::-1], truth)[0] == 0.0  # inside-out as a whole

    post = trimesh.creation.box(extents=(0.3, 0.9, 0.3)).subdivide().subdivide()
    both = trimesh.util.concatenate([b, post])

    def union(x):
        return torch.minimum(truth(x), box_sdf((0.15, 0.45, 0.15))(x))

    assert _wrong_sign_rate(both.vertices, both.faces, union)[0] == 0.0


def test_prepare_writes_the_reference_layout_and_skips_bad_files(tmp_path):
    src = tmp_path / "meshes"
    (src / "sub").mkdir(parents=True)
    trimesh.creation.box(extents=(2.0, 1.0, 1.0)).export(src / "box.obj")
    trimesh.creation.icosphere(3, radius=5.0).apply_translation([10, 0, 0]).export(src / "sub" / "ball.ply")
    (src / "broken.stl").write_bytes(b"solid broken\n facet normal 0 0 1\n outer loop\n vertex 1 2")
    (src / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")  # no area
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}

    out = tmp_path / "data"
    rep = prepare_dataset([src], out, "Test", "things", SamplingConfig(samples=20000, surface_samples=2000), workers=2)
    assert sorted(rep.written) == ["ball", "box"]
    assert set(rep.failed) == {"broken", "flat"} and "flat" in rep.failed and rep.failed["flat"]
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # inputs untouched

    with np.load(out / "SdfSamples/Test/things/ball.npz") as npz:
        pos, neg = npz["pos"], npz["neg"]
    assert pos.dtype == np.float32 and pos.shape[1] == 4 and len(pos) + len(neg) == 20000
    assert (pos[:, 3] > 0).all() and (neg[:, 3] <= 0).all()
    # in the model frame the sphere has radius 1/1.03: samples' SDF is |x| - r (icosphere: within 1 %)
    rows = np.concatenate([pos, neg])
    np.testing.assert_allclose(rows[:, 3], np.linalg.norm(rows[:, :3], axis=1) - 1 / 1.03, atol=0.01)
    with np.load(out / "NormalizationParameters/Test/things/ball.npz") as npz:
        np.testing.assert_allclose(npz["offset"], [-10, 0, 0], atol=1e-6)
        assert float(npz["scale"][0]) == pytest.approx(1 / (1.03 * 5.0), rel=1e-3)
    points, normals = read_point_cloud_ply(out / "SurfaceSamples/Test/things/ball.ply")
    assert points.shape == (2000, 3) and normals.shape == (2000, 3)
    np.testing.assert_allclose(np.linalg.norm(points - [10, 0, 0], axis=1), 5.0, atol=0.1)  # original frame
    split = json.loads((out / "splits/train.json").read_text())
    assert split == {"Test": {"things": ["box", "ball"]}}

    again = prepare_dataset(
        [src], out, "Test", "things", SamplingConfig(samples=20000, surface_samples=2000), workers=1
    )
    assert sorted(again.skipped) == ["ball", "box"] and not again.written


def test_prepare_refuses_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        prepare_dataset([tmp_path / "nothing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no mesh files"):
        prepare_dataset([tmp_path / "empty"], tmp_path / "out")
