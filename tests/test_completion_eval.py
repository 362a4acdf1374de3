"""Completion under realistic conditions: free space, denoising, per-view sensors, the evaluation grid."""

import json

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from engine.cli import main
from engine.completion_eval import (
    CompletionEvalConfig,
    case_seeds,
    evaluate_completion,
    paired_ratio,
    placement_chamfer,
    random_pose,
)
from engine.errors import InputError
from engine.observations import ObservationConfig, denoise_points, observations_from_points
from tests.analytic import SHAPES, analytic_mesh


def test_free_space_lies_on_the_sensor_rays():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (200, 3)).astype(np.float32)
    sensors = np.where(np.arange(200)[:, None] < 100, [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]).astype(np.float32)
    normals = np.tile([0.0, 0.0, 1.0], (200, 1)).astype(np.float32)
    cfg = ObservationConfig(far_points=0, denoise=False)
    obs = observations_from_points(pts, normals, sensors, cfg)
    free = obs.points[obs.lower_bound]
    assert len(free) == 200 and np.all(obs.sdf[obs.lower_bound] == 0)
    # each free point is on the segment from its surface point's own sensor to that point, 50-95 % of the way
    d_ray = sensors - pts
    u = np.sum((free - sensors) * (pts - sensors), axis=1) / np.sum(d_ray**2, axis=1)
    off_ray = np.linalg.norm(sensors + u[:, None] * (pts - sensors) - free, axis=1)
    assert off_ray.max() < 1e-5 and u.min() >= 0.5 - 1e-6 and u.max() <= 0.95 + 1e-6
    # no sensor: no free space
    none = observations_from_points(pts, normals, None, cfg)
    assert not none.lower_bound.any()
    with pytest.raises(InputError, match="sensor"):
        observations_from_points(pts, normals, sensors[:10], cfg)


def test_silhouette_free_space_lies_outside_the_shape_and_its_outline():
    import torch

    from engine.scan import orbit_camera, simulate_scan

    sdf = SHAPES["capsule_pair"]
    v, f = analytic_mesh(sdf, 64)
    cam = orbit_camera(30, 25, 2.5)
    scan = simulate_scan(v, f, cam, noise=0.005, seed=3)
    cfg = ObservationConfig(far_points=0, free_space_per_point=0, silhouette_points=3000)
    obs = observations_from_points(scan.points, None, scan.sensors, cfg)
    carved = obs.points[obs.lower_bound]
    assert 2000 <= len(carved) <= 3000
    # every carved point is outside the shape, by more than the scan's noise
    assert sdf(torch.from_numpy(carved)).min().item() > 0.01
    # and seen from the sensor, none lies behind the scanned surface (in the outline's shadow)
    sensor = scan.sensors[0]
    rays = (scan.points - sensor) / np.linalg.norm(scan.points - sensor, axis=1, keepdims=True)
    look = (carved - sensor) / np.linalg.norm(carved - sensor, axis=1, keepdims=True)
    assert cKDTree(rays).query(look)[0].min() > cKDTree(rays).query(rays, k=2)[0][:, 1].max()
    # they come only with a sensor; a margin of 0 is refused
    assert not observations_from_points(scan.points, None, None, cfg).lower_bound.any()
    with pytest.raises(InputError, match="silhouette"):
        ObservationConfig(silhouette_margin=0)


def test_denoise_projects_onto_the_surface():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-1, 1, (4000, 2))
    noisy = np.column_stack([xy, rng.normal(0, 0.01, 4000)])
    clean = denoise_points(noisy, 16)
    assert np.std(clean[:, 2]) < np.std(noisy[:, 2]) / 3
    # points move (almost) only along the normal: tangential positions kept
    shift = np.linalg.norm(clean[:, :2] - noisy[:, :2], axis=1)
    assert np.median(shift) < 1e-3 and shift.max() < 2e-2


def test_outliers_are_found_in_a_simulated_scan():
    from engine.observations import outlier_mask
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["capsule_pair"], 64)
    clean = simulate_scan(v, f, orbit_camera(30, 25, 2.5), noise=0.005, seed=3).points
    dirty = simulate_scan(v, f, orbit_camera(30, 25, 2.5), noise=0.005, outliers=0.05, seed=3).points
    extra = len(dirty) - len(clean)
    assert extra > 20
    keep = outlier_mask(dirty)
    # the stray points are those far from the clean scan's surface
    stray = cKDTree(clean).query(dirty)[0] > 0.05
    assert stray.sum() > 0.8 * extra
    assert (~keep[stray]).mean() > 0.9  # nearly all strays dropped
    assert keep[~stray].mean() > 0.99  # nearly no surface point lost
    assert outlier_mask(clean).mean() > 0.99


def test_random_poses_are_similarities():
    rng = np.random.default_rng(2)
    assert np.array_equal(random_pose("known", rng, 0.3, 2.0), np.eye(4))
    yaw = random_pose("yaw", rng, 0.3, 2.0)
    np.testing.assert_allclose(yaw[:3, :3] @ yaw[:3, :3].T, np.eye(3), atol=1e-12)
    assert yaw[1, 1] == 1.0 and np.all(yaw[:3, 3] == 0)
    sim = random_pose("similarity", rng, 0.3, 2.0)
    s = np.cbrt(np.linalg.det(sim[:3, :3]))
    assert 0.7 <= s <= 1.3 and np.abs(sim[:3, 3]).max() <= 2.0
    turned = [random_pose("rotation", rng, 0.3, 2.0) for _ in range(200)]
    for m in turned:
        s = np.cbrt(np.linalg.det(m[:3, :3]))
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T / s**2, np.eye(3), atol=1e-9)
        assert 0.7 <= s <= 1.3 and np.abs(m[:3, 3]).max() <= 2.0
    # any direction: where the model's up goes is spread over the sphere, not kept vertical
    ups = np.array([m[:3, 1] / np.linalg.norm(m[:3, 1]) for m in turned])
    assert np.abs(ups.mean(0)).max() < 0.15 and (ups[:, 1] < 0).mean() > 0.35
    with pytest.raises(InputError, match="pose"):
        CompletionEvalConfig(poses=("tilted",))


def test_placement_chamfer_sees_symmetric_turns_as_right():
    from engine.frames import rotation_y

    def samples(extents):
        return trimesh.sample.sample_surface(trimesh.creation.box(extents), 30_000, seed=1)[0]

    square, oblong = samples((1.0, 0.5, 1.0)), samples((1.6, 0.5, 0.6))
    true = np.eye(4)
    true[:3, :3] = 1.2 * rotation_y(0.7)
    true[:3, 3] = [3.0, -1.0, 2.0]

    def moved(turn=0.0, shift=(0.0, 0.0, 0.0), scale=1.0):
        """The true placement with the model frame turned, shifted and scaled first."""
        error = np.eye(4)
        error[:3, :3] = scale * rotation_y(np.radians(turn))
        error[:3, 3] = shift
        return true @ error

    assert placement_chamfer(square, true, true) < 1e-10
    # a square footprint turned by 90 degrees is the same shape (the yaw error says 90)
    assert placement_chamfer(square, true, moved(90)) < 2e-4
    assert placement_chamfer(oblong, true, moved(90)) > 2e-2
    assert placement_chamfer(oblong, true, moved(180)) < 2e-4
    # a shift d moves the faces across it by d: between 0 and 2 d^2
    d = 0.05
    shifted = placement_chamfer(square, true, moved(shift=(d, 0, 0)))
    assert 0.2 * d**2 < shifted < 2 * d**2
    assert placement_chamfer(square, true, moved(scale=1.1)) > 1e-3


def test_rotation_condition_completes_with_the_full_rotation_search(tiny_model, monkeypatch):
    """The 'rotation' pose cell fits with PlacementConfig.full_rotation; the others do not."""
    import engine.api
    from engine.errors import NoSurfaceError

    seen = []

    def spy(model, vertices, faces=None, known_frame=False, placement=None, **kwargs):
        seen.append((known_frame, placement.full_rotation))
        raise NoSurfaceError("spied", "empty")

    monkeypatch.setattr(engine.api, "reconstruct", spy)
    v, f = analytic_mesh(SHAPES["box"], 32)
    cfg = CompletionEvalConfig(
        views=(1,), noise=(0.0,), poses=("known", "similarity", "rotation"), sensor=(True,), reference=False
    )
    rows = evaluate_completion(tiny_model, [("box", v, f)], cfg).rows
    assert [r["pose"] for r in rows] == ["known", "similarity", "rotation"] and all(r["failed"] for r in rows)
    assert seen == [(True, False), (False, False), (False, True)]


def test_evaluate_completion_command_on_tiny_model(tiny_model_file, tmp_path, capsys):
    files = []
    for name in ("capsule_pair", "box"):
        v, f = analytic_mesh(SHAPES[name], 64)
        path = tmp_path / f"{name}.ply"
        trimesh.Trimesh(v, f, process=False).export(path)
        files.append(path)
    out = tmp_path / "eval.json"
    args = [
        "evaluate-completion",
        tiny_model_file,
        *files,
        "--views", "3",
        "--noise", "0.01",
        "--poses", "known", "similarity",
        "--sensor", "yes",
        "--reference-iterations", "150",
        "--placement-iterations", "120",
        "--resolution", "40",
        "--alternatives", "2",
        "--json", out,
        "-q",
    ]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    table = capsys.readouterr().out
    assert "reference" in table and "similarity" in table
    data = json.loads(out.read_text())
    rows = data["rows"]
    # 2 shapes x (reference-style + known + similarity)
    assert len(rows) == 6 and len(data["summary"]) == 3
    assert not any(r.get("failed") for r in rows)
    known = [r for r in rows if r["method"] == "ours" and r["pose"] == "known"]
    placed = [r for r in rows if r["pose"] == "similarity"]
    # training shapes of the tiny model complete well at known pose (model units, squared),
    # at least as well as the reference-style fit (surface and +-eta only, 800 steps) does
    assert max(r["chamfer"] for r in known) < 5e-3
    reference = [r for r in rows if r["method"] == "reference"]
    assert np.mean([r["chamfer"] for r in known]) <= 1.2 * np.mean([r["chamfer"] for r in reference])
    # unknown yaw, scale x0.7-1.3 and offset: the pose is found and the shape lands in place
    assert all(abs(r["scale_error"]) < 0.1 for r in placed)
    # both shapes look the same turned by 180 degrees, so that turn is as right as none
    assert all(min(abs(r["yaw_error_degrees"]), 180 - abs(r["yaw_error_degrees"])) < 10 for r in placed)
    assert all(r["offset_error"] < 0.1 for r in placed)
    # what the placement error alone costs: small against the shapes' own fit
    assert all(0 <= r["placement_chamfer"] < 5e-3 for r in placed), [r["placement_chamfer"] for r in placed]
    assert max(r["chamfer"] for r in placed) < 1e-2
    for e in data["summary"]:
        if e["method"] == "ours" and e["pose"] == "similarity":
            assert np.isfinite(e["vs_known_pose"]) and np.isfinite(e["vs_reference"])
            assert e["placement_chamfer_mean"] == pytest.approx(np.mean([r["placement_chamfer"] for r in placed]))
            assert e["best_vs_known_pose"] <= e["vs_known_pose"]
        else:
            assert "placement_chamfer_mean" not in e
    # alternatives: scored for our fits, the best shown never worse than the result
    for r in rows:
        if r["method"] == "ours":
            assert len(r["alternatives_chamfer"]) <= 2
            assert r["chamfer_best"] == min([r["chamfer"], *r["alternatives_chamfer"]])
        else:
            assert "alternatives_chamfer" not in r
    assert "best shown" in table


def test_evaluate_completion_reports_bad_input(tiny_model_file, tmp_path, capsys):
    cloud = tmp_path / "cloud.xyz"
    np.savetxt(cloud, np.random.default_rng(0).uniform(-1, 1, (50, 3)))
    assert main(["evaluate-completion", str(tiny_model_file), str(cloud), "-q"]) == 1
    assert "point cloud" in capsys.readouterr().err
    assert main(["evaluate-completion", str(tiny_model_file), str(tmp_path / "missing.obj"), "-q"]) == 1
    assert "not found" in capsys.readouterr().err


def test_paired_ratio_pairs_cases_and_resamples_shapes():
    def rows(values):
        return [{"shape": s, "repeat": r, "chamfer": v} for (s, r), v in values.items()]

    known = rows({("a", 0): 1.0, ("a", 1): 3.0, ("b", 0): 2.0, ("b", 1): 2.0, ("c", 0): 4.0})
    # c's estimated-pose completion failed: it is left out on both sides
    placed = rows({("a", 0): 2.0, ("a", 1): 2.0, ("b", 0): 3.0, ("b", 1): 1.0, ("c", 0): float("nan")})
    ratio, (lo, hi) = paired_ratio(placed, known)
    assert ratio == pytest.approx(8.0 / 8.0)
    # resampling shapes: a alone gives 4/4, b alone 4/4, so every draw is 1
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    placed = rows({("a", 0): 2.0, ("a", 1): 6.0, ("b", 0): 2.0, ("b", 1): 2.0})
    ratio, (lo, hi) = paired_ratio(placed, known)
    assert ratio == pytest.approx(12.0 / 8.0)
    # a's draws give 2, b's 1: the interval spans what the shapes disagree on
    assert lo == pytest.approx(1.0) and hi == pytest.approx(2.0)
    assert np.isnan(paired_ratio(placed, rows({("z", 0): 1.0}))[0])


def test_summary_reports_the_best_shown_completion():
    """With alternatives scored, the summary gives the mean of each case's best shown
    completion and that mean against the known pose's own completions."""
    from engine.completion_eval import CompletionEvalResult

    cond = {"views": 1, "noise": 0.01, "outliers": 0.0, "sensor": True, "method": "ours"}
    rows = []
    for shape, known, placed, alts in (("a", 1.0, 4.0, [2.0, 5.0]), ("b", 3.0, 2.0, [])):
        for pose, chamfer, others in (("known", known, []), ("similarity", placed, alts)):
            rows.append(
                {**cond, "shape": shape, "repeat": 0, "pose": pose, "chamfer": chamfer, "f_0.01": 0.0, "f_0.02": 0.0}
                | {"seconds": 1.0, "alternatives_chamfer": others, "chamfer_best": min([chamfer, *others])}
            )
    result = CompletionEvalResult(rows, {})
    entry = next(e for e in result.summary() if e["pose"] == "similarity")
    assert entry["vs_known_pose"] == pytest.approx(6.0 / 4.0)
    assert entry["chamfer_best_mean"] == pytest.approx((2.0 + 2.0) / 2)
    assert entry["best_vs_known_pose"] == pytest.approx(4.0 / 4.0)
    table = result.table().splitlines()
    assert "best shown" in table[0] and table[0].count("|") == table[1].count("|") == table[2].count("|") == 15
    assert table[3].endswith("| 2000.00 (1.00) |") and table[2].endswith("| 2000.00 |")


def test_repeats_draw_new_scans_and_keep_the_first():
    # repeat 0 is the case every run before repeats used
    rng, seed = case_seeds(3, 5, 0)
    assert seed == 8 and rng.uniform() == np.random.default_rng([3, 5]).uniform()
    seeds = {case_seeds(3, 5, r)[1] for r in range(4)}
    assert len(seeds) == 4
    assert case_seeds(3, 5, 2)[0].uniform() != case_seeds(3, 5, 1)[0].uniform()
    with pytest.raises(InputError, match="repeats"):
        CompletionEvalConfig(repeats=0)


def test_evaluation_repeats_scan_each_shape_again(tiny_model):
    from engine.fitting import fit_preset

    v, f = analytic_mesh(SHAPES["capsule_pair"], 48)
    config = CompletionEvalConfig(
        views=(1,),
        noise=(0.01,),
        poses=("known",),
        sensor=(True,),
        reference=False,
        resolution=32,
        repeats=2,
        fit=fit_preset("fast", iterations=100, nearest_starts=0),
    )
    result = evaluate_completion(tiny_model, [("capsule_pair", v, f)], config)
    assert [r["repeat"] for r in result.rows] == [0, 1]
    a, b = (r["chamfer"] for r in result.rows)
    # two different scans of a training shape: both complete well, not identically
    assert max(a, b) < 5e-3 and a != b
    (entry,) = result.summary()
    assert (entry["shapes"], entry["cases"]) == (1, 2) and entry["chamfer_mean"] == pytest.approx((a + b) / 2)
    assert result.config["repeats"] == 2
    # the JSON says which eta the fit and the search used (the search's None means the fit's)
    assert result.config["observation"]["eta"] == result.config["placement"]["eta"] == config.observation.eta
