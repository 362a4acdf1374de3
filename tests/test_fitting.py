"""Code fitting and the API on a tiny model overfit to analytic shapes."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.api import evaluate_sdf, extract_mesh, reconstruct, sample_codes, training_normalization
from engine.errors import CancelledError, InputError
from engine.fitting import FitConfig, Observations, code_losses, fit_code, fit_preset
from engine.meshing import MeshConfig
from engine.metrics import compare_meshes
from tests.analytic import AMBIGUOUS_STARTS, SHAPES, ambiguous_patch, analytic_mesh, sdf_samples

NAMES = list(SHAPES)

MECHANICS_ONLY = {"refit_pose_lr": 0.0, "box_anchor": False}
"""Placement settings for the tests of other placement mechanics (the polish, the refit's
batch): poses held in the refits and no anchored refit after them. Both are on by default
and have their own tests (``-k "pose_refinement or box_anchor"``)."""


def test_training_codes_mesh_to_their_shapes(tiny_model):
    for i, name in enumerate(NAMES):
        mesh = extract_mesh(tiny_model, i, MeshConfig(resolution=64))
        m = compare_meshes((mesh.vertices, mesh.faces), analytic_mesh(SHAPES[name]), samples=10000)
        assert m.chamfer < 1.5e-3, (name, m)


@pytest.mark.parametrize("index", [0, 2])
def test_fit_recovers_a_training_shape(tiny_model, index):
    name = NAMES[index]
    pts, sdf = sdf_samples(SHAPES[name], 8000, seed=123)
    result = fit_code(tiny_model, Observations(pts, sdf), FitConfig(iterations=150, restarts=2))
    mesh = extract_mesh(tiny_model, result.code, MeshConfig(resolution=64))
    m = compare_meshes((mesh.vertices, mesh.faces), analytic_mesh(SHAPES[name]), samples=10000)
    assert m.chamfer < 2e-3, m
    # the other training shapes explain the samples worse than the fitted code
    others = code_losses(tiny_model, tiny_model.codes, Observations(pts, sdf)).numpy()
    assert result.loss <= others[index] * 1.5 and result.loss < np.delete(others, index).min()
    # two restarts and the best-screened nearest training code
    assert len(result.restart_losses) == 3 and result.loss == result.restart_losses.min()


def test_fit_changes_only_the_code(tiny_model):
    tiny_model.decoder.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in tiny_model.decoder.state_dict().items()}
    flags = [p.requires_grad for p in tiny_model.decoder.parameters()]
    pts, sdf = sdf_samples(SHAPES["box"], 2000, seed=5)
    fit_code(tiny_model, Observations(pts, sdf), FitConfig(iterations=20))
    for k, v in tiny_model.decoder.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in tiny_model.decoder.parameters())
    assert [p.requires_grad for p in tiny_model.decoder.parameters()] == flags


def test_fit_is_deterministic_and_cancellable(tiny_model):
    pts, sdf = sdf_samples(SHAPES["sphere"], 3000, seed=9)
    obs = Observations(pts, sdf)
    a = fit_code(tiny_model, obs, FitConfig(iterations=30, seed=4))
    b = fit_code(tiny_model, obs, FitConfig(iterations=30, seed=4))
    assert np.array_equal(a.code, b.code)
    calls = []

    def stop_after_two(done, total, message):
        calls.append(done)
        return len(calls) < 2

    with pytest.raises(CancelledError):
        fit_code(tiny_model, obs, FitConfig(iterations=100), stop_after_two)
    assert len(calls) == 2


def test_reference_preset_is_the_reference():
    ref = fit_preset("reference")
    assert (ref.iterations, ref.lr, ref.schedule, ref.decay_at, ref.decay_factor) == (800, 5e-3, "step", 0.5, 0.1)
    assert (ref.samples_per_iteration, ref.prior_weight, ref.init, ref.init_std) == (8000, 1e-4, "normal", 0.01)
    assert fit_preset("reference", iterations=10).iterations == 10
    with pytest.raises(InputError):
        fit_preset("nope")
    # auto: the default where fits take seconds (a GPU), fast on a CPU
    assert fit_preset("auto", "cpu") == fit_preset("fast") and fit_preset("auto") == fit_preset("fast")
    assert fit_preset("auto", "cuda", iterations=5) == fit_preset("default", iterations=5)


def test_lower_bound_observations_only_push_outward(tiny_model):
    pts = np.array([[1.02, 0.0, 0.0]], np.float32)  # ~0.05 outside the sphere
    sdf_there = evaluate_sdf(tiny_model, 0, pts)[0]
    obs_ok = Observations(pts, [sdf_there - 0.03], lower_bound=[True])
    obs_bad = Observations(pts, [sdf_there + 0.03], lower_bound=[True])
    code = tiny_model.codes[:1]
    cfg = FitConfig(prior_weight=0.0)
    assert code_losses(tiny_model, code, obs_ok, cfg).item() == 0.0
    assert code_losses(tiny_model, code, obs_bad, cfg).item() > 0.0


def test_bad_observations_are_refused():
    with pytest.raises(InputError, match="NaN"):
        Observations([[0, 0, np.nan]], [0.0])
    with pytest.raises(InputError, match="no observations"):
        Observations(np.zeros((0, 3)), [])
    with pytest.raises(InputError, match="3 points but 2"):
        Observations(np.zeros((3, 3)), [0, 0])


def test_reconstruct_maps_back_to_the_input_frame(tiny_model):
    """A translated and scaled sphere mesh is normalised, fitted, and returned where it was."""
    verts, faces = analytic_mesh(SHAPES["sphere"], 48)
    # the training sphere has radius 1/1.03 in the model frame (reference normalisation)
    offset = np.array([3.0, -1.0, 2.0], np.float32)
    moved = verts * 2.0 + offset
    rec = reconstruct(
        tiny_model, verts, faces, known_frame=True, fit=FitConfig(iterations=100), mesh=MeshConfig(resolution=48)
    )
    assert np.linalg.norm(rec.mesh.vertices, axis=1).mean() == pytest.approx(1 / 1.03, abs=0.02)
    rec2 = reconstruct(
        tiny_model, moved, faces, fit=FitConfig(iterations=100), mesh=MeshConfig(resolution=48), placement=None
    )
    assert rec2.mode == "reference"
    centre = rec2.mesh.vertices.mean(axis=0)
    np.testing.assert_allclose(centre, offset, atol=0.05)
    assert np.linalg.norm(rec2.mesh.vertices - offset, axis=1).mean() == pytest.approx(2 / 1.03, abs=0.04)
    assert rec2.scale == pytest.approx(1 / (1.03 * 2 / 1.03), rel=0.02)
    with pytest.raises(InputError, match="NaN"):
        reconstruct(tiny_model, np.array([[0, 0, np.inf]] * 4, np.float32))


def test_point_cloud_reconstruction(tiny_model):
    verts, faces = analytic_mesh(SHAPES["box"], 48)
    from engine.metrics import sample_surface

    cloud, _ = sample_surface(verts, faces, 4000, seed=2)
    rec = reconstruct(tiny_model, cloud, None, known_frame=True, fit=FitConfig(iterations=150), mesh=MeshConfig(64))
    m = compare_meshes((rec.mesh.vertices, rec.mesh.faces), (verts, faces), samples=10000)
    assert m.chamfer < 3e-3, m


def test_generation_and_training_normalization(tiny_model):
    codes = sample_codes(tiny_model, 3, seed=7, temperature=0.5)
    assert codes.shape == (3, tiny_model.code_length)
    assert np.array_equal(codes, sample_codes(tiny_model, 3, seed=7, temperature=0.5))
    mesh = extract_mesh(tiny_model, sample_codes(tiny_model, 1, seed=0, temperature=0.0)[0], MeshConfig(48))
    assert len(mesh.faces) > 100
    off, scale = training_normalization(tiny_model, 1)
    assert off.shape == (3,) and scale == 1.0
    with pytest.raises(IndexError):
        training_normalization(tiny_model, 99)


def test_partial_scan_in_unknown_placement(tiny_model):
    """A one-view scan of a training shape, turned 60 degrees, scaled x2.5 and moved, is completed in place."""
    from engine.frames import rotation_y
    from engine.placement import PlacementConfig
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["capsule_pair"], 64)
    cam = orbit_camera(30, 25, 2.5)
    scan = simulate_scan(v, f, cam, noise=0.002, outliers=0.05, seed=0)
    rot, s, t = rotation_y(np.radians(60)), 2.5, np.array([3.0, 1.0, -2.0])
    pts = (scan.points @ rot.T) * s + t
    sensor = (np.asarray(cam.position) @ rot.T) * s + t
    rec = reconstruct(
        tiny_model, pts, None, sensor=sensor, mesh=MeshConfig(resolution=64), placement=PlacementConfig(iterations=200)
    )
    assert rec.mode == "placement" and np.isfinite(rec.loss)
    assert rec.scale == pytest.approx(1 / s, rel=0.1)
    truth = (v @ rot.T) * s + t
    m = compare_meshes((rec.mesh.vertices, rec.mesh.faces), (truth, f), samples=10000)
    assert m.chamfer / s**2 < 3e-3, m  # in model units, like the known-pose fits above
    conf = rec.mesh.vertex_values["confidence"]
    seen = np.linalg.norm(rec.mesh.vertices[:, None] - pts[None, ::50], axis=2).min(axis=1) < 0.01 * s
    assert conf[seen].mean() > 0.8 and conf[~seen].mean() < conf[seen].mean() - 0.3  # the back was invented
    # the completion covers the unseen back: its extent matches the whole shape's
    np.testing.assert_allclose(rec.mesh.vertices.min(0), truth.min(0), atol=0.1 * s)
    np.testing.assert_allclose(rec.mesh.vertices.max(0), truth.max(0), atol=0.1 * s)


def test_up_turns_take_each_direction_up():
    from engine.errors import InputError
    from engine.placement import up_turns

    turns = up_turns(14)
    dirs = [(0, 1, 0), (0, -1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, 0, -1)]
    dirs += [(x, y, z) for x in (1, -1) for y in (1, -1) for z in (1, -1)]
    for turn, d in zip(turns, dirs, strict=True):
        np.testing.assert_allclose(turn @ turn.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(turn) == pytest.approx(1.0)
        np.testing.assert_allclose(turn @ (np.asarray(d) / np.linalg.norm(d)), [0, 1, 0], atol=1e-12)
    np.testing.assert_array_equal(up_turns(1)[0], np.eye(3))
    with pytest.raises(InputError, match="up_directions"):
        up_turns(5)


def test_full_rotation_keeps_the_best_of_every_up_direction():
    import torch

    from engine.placement import PlacementConfig, _kept

    # 3 up directions x 4 yaws: the overall best two are both in the first group
    losses = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.7, 0.5, 0.6, 0.9, 0.4, 0.45, 0.3, 0.95])
    assert _kept(losses, 3, PlacementConfig()).tolist() == [0, 1]  # yaw only: the keep lowest
    assert _kept(losses, 3, PlacementConfig(full_rotation=True)).tolist() == [0, 10, 5]
    assert _kept(losses, 3, PlacementConfig(full_rotation=True, keep_per_up=2)).tolist() == [0, 1, 10, 8, 5, 6]


def test_partial_scan_in_any_orientation(tiny_model):
    """A one-view scan of the capsule pair stood on end and tilted (a rotation no yaw
    reaches), scaled x2 and moved: the full-rotation search completes it in place; the
    yaw-only search cannot stand the pair up."""
    from scipy.spatial.transform import Rotation

    from engine.frames import rotation_y
    from engine.placement import PlacementConfig
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["capsule_pair"], 64)
    cam = orbit_camera(30, 25, 2.5)
    scan = simulate_scan(v, f, cam, noise=0.002, seed=0)
    tilt = Rotation.from_euler("xz", [25, 80], degrees=True).as_matrix()
    rot, s, t = rotation_y(np.radians(40)) @ tilt, 2.0, np.array([1.0, -2.0, 0.5])
    pts = (scan.points @ rot.T) * s + t
    sensor = (np.asarray(cam.position) @ rot.T) * s + t
    truth = (v @ rot.T) * s + t
    chamfer = {}
    for full in (True, False):
        placement = PlacementConfig(full_rotation=full)
        rec = reconstruct(tiny_model, pts, None, sensor=sensor, mesh=MeshConfig(resolution=48), placement=placement)
        m = compare_meshes((rec.mesh.vertices, rec.mesh.faces), (truth, f), samples=10000)
        chamfer[full] = m.chamfer / s**2  # model units
        if full:
            assert rec.scale == pytest.approx(1 / s, rel=0.1)
            np.testing.assert_allclose(rec.mesh.vertices.min(0), truth.min(0), atol=0.1 * s)
            np.testing.assert_allclose(rec.mesh.vertices.max(0), truth.max(0), atol=0.1 * s)
    assert chamfer[True] < 3e-3, chamfer
    assert chamfer[False] > 3 * chamfer[True], chamfer


def test_alternatives_are_other_shapes_that_fit(tiny_model):
    """A small flat patch that the box's top and a capsule's top both explain: the fit
    returns the best shape and the other distinct ones, worse fitted, in the input's frame;
    asking for them does not change the result. (A cloud with one sensor position, in the
    known frame: that path once refused a (3,) sensor.)"""
    pts = ambiguous_patch()
    fit = FitConfig(iterations=100, **AMBIGUOUS_STARTS)
    sensor = np.array([0.5, 3.0, 0.0], np.float32)  # above the patch
    kwargs = dict(known_frame=True, fit=fit, mesh=MeshConfig(resolution=40), sensor=sensor)
    rec = reconstruct(tiny_model, pts, None, alternatives=2, **kwargs)
    plain = reconstruct(tiny_model, pts, None, **kwargs)
    assert 1 <= len(rec.alternatives) <= 2
    np.testing.assert_array_equal(rec.code, plain.code)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    solids = [evaluate_sdf(tiny_model, r.code, grid) < 0 for r in (rec, *rec.alternatives)]
    for j, alt in enumerate(rec.alternatives, 1):
        assert alt.loss >= rec.loss and alt.mode == "known" and not alt.alternatives
        assert "confidence" in alt.mesh.vertex_values and len(alt.mesh.faces) > 100
        for k in range(j):  # differs from the result and from the alternatives before it
            iou = (solids[j] & solids[k]).sum() / (solids[j] | solids[k]).sum()
            assert iou <= 0.85, iou
    assert plain.alternatives == []
    with pytest.raises(InputError, match="alternatives"):
        reconstruct(tiny_model, pts, None, alternatives=-1, **kwargs)


def test_an_alternative_without_surface_is_left_out(tiny_model, monkeypatch):
    """Only the result's own meshing failure fails the call; an alternative that meshes
    to nothing at the grid's resolution is dropped."""
    import engine.api
    from engine.errors import NoSurfaceError

    real, calls = engine.api.extract_mesh, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise NoSurfaceError("nothing at this resolution", "empty")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.api, "extract_mesh", second_fails)
    pts = ambiguous_patch()
    fit = FitConfig(iterations=100, **AMBIGUOUS_STARTS)
    kwargs = dict(known_frame=True, fit=fit, mesh=MeshConfig(resolution=32), alternatives=2)
    rec = reconstruct(tiny_model, pts, None, **kwargs)
    assert len(calls) >= 2 and len(rec.alternatives) == len(calls) - 2  # the first alternative was dropped
    calls.clear()
    calls.append(1)  # now the result's own meshing is the failing second call
    with pytest.raises(NoSurfaceError):
        reconstruct(tiny_model, pts, None, **kwargs)


def test_distinct_candidates_skip_the_same_shape(tiny_model):
    """Candidates are kept lowest loss first when their solids, placed in the input frame,
    overlap the winner's and each other's by an IoU of at most 0.8."""
    from engine.api import Candidate, distinct_candidates

    codes = tiny_model.codes.detach().numpy()
    sphere, box, capsules = (codes[NAMES.index(n)] for n in ("sphere", "box", "capsule_pair"))
    eye, nudged, half = np.eye(4), np.eye(4), 2.0 * np.eye(4)
    nudged[:3, 3] = 0.01
    half[3, 3] = 1.0  # the sphere half as large in the input frame: an eighth of the volume (IoU 0.125)
    winner = Candidate(sphere, eye, 1.0)
    candidates = [
        Candidate(sphere, eye, 1.0),  # the winner itself
        Candidate(sphere, nudged, 1.1),  # the same sphere a hundredth off
        Candidate(capsules, eye, 1.5),
        Candidate(box, eye, 1.2),
        Candidate(sphere, half, 1.3),  # the same code at another scale is another shape here
    ]
    kept = distinct_candidates(tiny_model, winner, candidates, count=5)
    assert [c.loss for c in kept] == [1.2, 1.3, 1.5]
    assert distinct_candidates(tiny_model, winner, candidates, count=1)[0].loss == 1.2
    assert distinct_candidates(tiny_model, winner, candidates[:2], count=3) == []


def test_refit_at_a_found_pose_recovers_the_shape(tiny_model):
    """The refit after the placement search: the scan mapped by a pose, fitted with the
    known-pose observations from a start code, lands on the shape."""
    from engine.api import refit_at_pose
    from engine.frames import rotation_y
    from engine.observations import ObservationConfig
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["box"], 64)
    cam = orbit_camera(200, 25, 2.5)
    scan = simulate_scan(v, f, cam, noise=0.0, seed=1)
    m2i = np.eye(4)
    m2i[:3, :3] = 1.7 * rotation_y(np.radians(-35))
    m2i[:3, 3] = [0.5, -1.0, 2.0]
    pts = scan.points @ m2i[:3, :3].T + m2i[:3, 3]
    sensor = np.broadcast_to(np.asarray(cam.position) @ m2i[:3, :3].T + m2i[:3, 3], pts.shape)
    start = tiny_model.codes.detach().mean(0).numpy()
    result = refit_at_pose(
        tiny_model, start, np.linalg.inv(m2i), pts, None, sensor, FitConfig(iterations=150), ObservationConfig()
    )
    mesh = extract_mesh(tiny_model, result.code, MeshConfig(resolution=64))
    m = compare_meshes((mesh.vertices, mesh.faces), analytic_mesh(SHAPES["box"]), samples=10000)
    assert m.chamfer < 3e-3, m


def test_nearest_training_codes_and_screened_starts(tiny_model):
    """The training code of the shape observed ranks first, also when the observations
    reach the model frame only through a pose; the nearest start joins the mean start
    (same samples, so the result is never worse than the mean start alone)."""
    from engine.fitting import rank_training_codes, screen_nearest

    for index, name in enumerate(NAMES):
        pts, sdf = sdf_samples(SHAPES[name], 3000, seed=40 + index)
        assert rank_training_codes(tiny_model, Observations(pts, sdf), 2)[0, 0] == index
    pose = np.eye(4)
    pose[:3, :3] *= 1.5
    pose[:3, 3] = [0.3, -0.2, 0.1]
    pts, sdf = sdf_samples(SHAPES["box"], 3000, seed=7)
    scan = Observations((pts - pose[:3, 3]) / 1.5, sdf)  # the box seen in another frame
    order = rank_training_codes(tiny_model, scan, 3, poses=np.stack([np.eye(4), pose]))
    assert order.shape == (2, 3) and order[1, 0] == NAMES.index("box")
    screened = screen_nearest(tiny_model, scan, np.stack([np.eye(4), pose]), FitConfig(screen_iterations=20))
    assert (
        screened.codes.shape == (2, tiny_model.code_length) and screened.restart_losses[1] < screened.restart_losses[0]
    )

    half = pts[:, 0] > 0  # one side of the box only
    obs = Observations(pts[half], sdf[half])
    alone = fit_code(tiny_model, obs, FitConfig(iterations=60, nearest_starts=0))
    both = fit_code(tiny_model, obs, FitConfig(iterations=60, nearest_starts=2, screen_iterations=20))
    assert len(both.restart_losses) == 2
    assert both.restart_losses[0] == pytest.approx(alone.loss, rel=1e-4)
    assert both.loss <= alone.loss * (1 + 1e-4)


def test_device_loop_is_adam_on_the_same_samples(tiny_model):
    """The loop that a CUDA graph replays (Adam written out, step read from a device
    counter) gives the codes that torch.optim.Adam gives on the same samples."""
    from torch.nn.utils import parametrize

    from engine.fitting import _draw_samples, _FitLoop, _learning_rate, _per_point_loss

    pts, sdf = sdf_samples(SHAPES["capsule_pair"], 3000, seed=2)
    obs = Observations(pts, sdf)
    config = FitConfig(iterations=25, samples_per_iteration=512, restarts=3, schedule="step")
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, tiny_model.code_length, generator=gen) * 0.05
    indices = _draw_samples(obs.sdf, 512, True, 25, gen)
    assert indices.shape == (25, 512)
    # balanced like the reference: half of each step's rows outside, half inside
    assert np.all(obs.sdf[indices[:, :256].numpy()] > 0) and np.all(obs.sdf[indices[:, 256:].numpy()] <= 0)
    dec = tiny_model.decoder
    for p in dec.parameters():
        p.requires_grad_(False)
    try:
        with parametrize.cached():
            loop = _FitLoop(tiny_model, obs, config, start.clone(), indices, "fp32")
            loop.run(None, use_graph=False)
            codes = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([codes], lr=config.lr)
            x_all, t_all = torch.from_numpy(obs.points), torch.from_numpy(obs.sdf)
            for k in range(25):
                opt.param_groups[0]["lr"] = _learning_rate(config, k)
                x, t = x_all[indices[k]], t_all[indices[k]]
                pred = dec.forward_codes(codes, x.unsqueeze(0).expand(3, -1, -1))
                loss = _per_point_loss(pred, t, None, 0.1).mean(1) + config.prior_weight * codes.pow(2).mean(1)
                opt.zero_grad()
                loss.sum().backward()
                opt.step()
    finally:
        for p in dec.parameters():
            p.requires_grad_(True)
    assert int(loop.step_index) == 25
    np.testing.assert_allclose(loop.codes.detach().numpy(), codes.detach().numpy(), atol=1e-5)
    assert torch.all(loop.history > 0)


def test_posed_fit_at_the_identity_is_the_plain_fit(tiny_model):
    """One pose, the identity: the batched posed fit gives the plain fit's code; moved
    rows move with a pose and the far shell (``fixed``) does not."""
    from engine.fitting import _posed_points, fit_codes_posed
    from engine.observations import observations_from_points

    v, f = analytic_mesh(SHAPES["box"], 48)
    from engine.metrics import sample_surface

    cloud, normals = sample_surface(v, f, 3000, seed=4)
    obs = observations_from_points(cloud, normals)
    assert obs.fixed is not None and obs.fixed.sum() == 2000  # the far shell
    start = tiny_model.codes.detach().mean(0).numpy()
    config = FitConfig(iterations=30, samples_per_iteration=1024)
    plain = fit_code(tiny_model, obs, config, initial_code=start)
    posed = fit_codes_posed(tiny_model, obs, np.eye(4)[None], start[None], config)
    np.testing.assert_allclose(posed.codes[0], plain.code, atol=1e-5)
    assert posed.loss == pytest.approx(plain.loss, rel=1e-4)
    shift = np.eye(4)
    shift[:3, :3] *= 2.0
    shift[:3, 3] = [1.0, 0.0, 0.0]
    moved = _posed_points(obs, np.stack([np.eye(4), shift])).numpy()
    np.testing.assert_allclose(moved[0], obs.points, atol=1e-6)
    np.testing.assert_allclose(moved[1][obs.fixed], obs.points[obs.fixed], atol=1e-6)
    np.testing.assert_allclose(moved[1][~obs.fixed], 2.0 * obs.points[~obs.fixed] + [1.0, 0.0, 0.0], atol=1e-5)


def _placed_box_scan():
    """A clean three-view scan of the box, placed at 1.7 x, turned -35 degrees and moved:
    (v, f) the box in the model frame, the scan (model frame), m2i (4, 4) the placement,
    pts and sensors (n, 3) the scan in its placed frame."""
    from engine.frames import rotation_y
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["box"], 64)
    cams = [orbit_camera(a, 25, 2.5) for a in (20, 140, 260)]
    scan = simulate_scan(v, f, cams, noise=0.0, seed=1)
    m2i = np.eye(4)
    m2i[:3, :3] = 1.7 * rotation_y(np.radians(-35))
    m2i[:3, 3] = [0.5, -1.0, 2.0]
    return v, f, scan, m2i, scan.points @ m2i[:3, :3].T + m2i[:3, 3], scan.sensors @ m2i[:3, :3].T + m2i[:3, 3]


def test_refit_placement_finds_a_turned_and_scaled_pose(tiny_model):
    """A search result 90 degrees and 4 % off: the screened variants of it contain the
    true pose, and the refit's loss picks it (the box is not square, so turned it fits worse)."""
    from engine.api import pose_variants, refit_placement
    from engine.frames import rotation_y
    from engine.observations import ObservationConfig
    from engine.placement import PlacementConfig

    v, f, _, m2i, pts, sensors = _placed_box_scan()
    wrong = np.eye(4)
    wrong[:3, :3] = 1.04 * rotation_y(np.radians(90))
    found = wrong @ np.linalg.inv(m2i)
    variants = pose_variants(found, (0, 270), (1 / 1.04, 1.0))
    assert variants.shape == (4, 4, 4)
    np.testing.assert_allclose(variants[2], np.linalg.inv(m2i), atol=1e-9)  # turn 270, scale 1/1.04
    start = tiny_model.codes.detach().mean(0).numpy()
    placement = PlacementConfig(
        variant_turns=(0, 90, 180, 270), variant_scales=(1 / 1.04, 1.0), refit_variants=1, offset_rounds=1
    )
    fit = FitConfig(iterations=100, screen_iterations=60)
    code, i2m, loss, candidates = refit_placement(
        tiny_model, start, found, [], pts, None, sensors, placement, fit, ObservationConfig()
    )
    assert np.isfinite(loss)
    # every refitted candidate comes back, lowest loss first (the alternatives a user can pick)
    losses = [c.loss for c in candidates]
    assert (
        len(candidates) >= 2 and losses == sorted(losses) and all(c.input_to_model.shape == (4, 4) for c in candidates)
    )
    rel = i2m[:3, :3] @ m2i[:3, :3]  # the identity up to scale when the turn is right
    rel /= np.cbrt(np.linalg.det(rel))
    np.testing.assert_allclose(rel, np.eye(3), atol=0.02)
    # the completion lands on the box in the scan's frame (the code may absorb a scale step)
    mesh = extract_mesh(tiny_model, code, MeshConfig(resolution=64)).apply_matrix(np.linalg.inv(i2m))
    m = compare_meshes((mesh.vertices, mesh.faces), (v @ m2i[:3, :3].T + m2i[:3, 3], f), samples=10000)
    assert m.chamfer / 1.7**2 < 3e-3, m


def test_offset_polish_recovers_a_shifted_pose(tiny_model):
    """A placement right but for a sideways offset of one grid step: screening the offset
    grid from the winner's code and refitting finds the true translation."""
    from engine.api import _scan_observations, offset_grid, polish_offset
    from engine.frames import rotation_y
    from engine.observations import ObservationConfig
    from engine.placement import PlacementConfig
    from engine.scan import orbit_camera, simulate_scan

    grid = offset_grid(0.03, 1)
    assert grid.shape == (27, 3) and not grid[0].any() and len(np.unique(grid, axis=0)) == 27
    np.testing.assert_allclose(np.abs(grid).max(), 0.03)

    name = "box"
    v, f = analytic_mesh(SHAPES[name], 64)
    cams = [orbit_camera(a, 25, 2.5) for a in (20, 140)]
    scan = simulate_scan(v, f, cams, noise=0.0, seed=2)
    m2i = np.eye(4)
    m2i[:3, :3] = 1.3 * rotation_y(np.radians(50))
    m2i[:3, 3] = [-1.0, 0.2, 0.7]
    pts = scan.points @ m2i[:3, :3].T + m2i[:3, 3]
    sensors = scan.sensors @ m2i[:3, :3].T + m2i[:3, 3]
    true_i2m = np.linalg.inv(m2i)
    shift = np.eye(4)
    shift[:3, 3] = [0.03, 0.0, -0.03]
    found = shift @ true_i2m
    obs = _scan_observations(found, pts, None, sensors, ObservationConfig(), 0)
    code = tiny_model.codes.detach()[NAMES.index(name)].numpy()
    placement = PlacementConfig(offset_step=0.03, offset_grid=1, offset_keep=2, refit_iterations=100, **MECHANICS_ONLY)
    fit = FitConfig(iterations=100, screen_iterations=60, samples_per_iteration=4000)
    new_code, i2m, loss = polish_offset(tiny_model, obs, np.linalg.inv(found), code, found, placement, fit)
    assert np.isfinite(loss) and new_code.shape == code.shape
    # rotation and scale untouched, the translation back at the truth (a step was 0.03)
    np.testing.assert_allclose(i2m[:3, :3], true_i2m[:3, :3], atol=1e-9)
    np.testing.assert_allclose(i2m[:3, 3], true_i2m[:3, 3], atol=1e-6)


@pytest.mark.parametrize("polished", [1, 2])
def test_offset_polish_of_several_candidates_keeps_the_lowest_polished_loss(tiny_model, monkeypatch, polished):
    """offset_candidates: that many lowest-loss refit candidates are each polished
    (offset_rounds times) and the lowest *polished* loss wins, even when it is not the
    candidate that led before the polish."""
    import engine.api as api
    from engine.frames import rotation_y
    from engine.observations import ObservationConfig
    from engine.placement import PlacementConfig
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["box"], 48)
    scan = simulate_scan(v, f, [orbit_camera(a, 25, 2.5) for a in (20, 140)], noise=0.0, seed=3)
    m2i = np.eye(4)
    m2i[:3, :3] = 1.2 * rotation_y(np.radians(30))
    pts = scan.points @ m2i[:3, :3].T
    sensors = scan.sensors @ m2i[:3, :3].T
    calls = []

    def fake_polish(model, obs, to_ref, code, pose, placement, fit, on_progress=None):
        calls.append(np.array(code))
        # the candidate that led before the polish ends worse after it
        return code + 1.0, pose, 1.0 if len(calls) % 2 == 1 else 0.5

    monkeypatch.setattr(api, "polish_offset", fake_polish)
    placement = PlacementConfig(
        variant_turns=(0, 90),
        variant_scales=(1.0,),
        refit_variants=2,
        offset_rounds=1,
        offset_candidates=polished,
        **MECHANICS_ONLY,
    )
    fit = FitConfig(iterations=30, screen_iterations=20, samples_per_iteration=2000)
    start = tiny_model.codes.detach().mean(0).numpy()
    code, _, loss, candidates = api.refit_placement(
        tiny_model, start, np.linalg.inv(m2i), [], pts, None, sensors, placement, fit, ObservationConfig()
    )
    assert len(candidates) >= 2
    assert len(calls) == polished  # one round each
    for got, cand in zip(calls, candidates, strict=False):
        np.testing.assert_array_equal(got, cand.code)  # lowest loss first
    expected = candidates[polished - 1].code + 1.0  # one candidate: its own polish; two: the second's
    np.testing.assert_allclose(code, expected)
    assert loss == (1.0 if polished == 1 else 0.5)


def test_single_viewpoint():
    from engine.api import single_viewpoint

    one = np.broadcast_to(np.array([0.0, 1.0, 3.0]), (50, 3))
    assert single_viewpoint(one) and single_viewpoint(np.array([0.0, 1.0, 3.0]))
    two = np.concatenate([one, one + np.array([0.0, 0.0, 1e-3])])
    assert not single_viewpoint(two) and not single_viewpoint(None)


@pytest.mark.parametrize("views", [1, 2])
def test_default_polish_runs_on_single_views_only(tiny_model, monkeypatch, views):
    """With the default placement (offset_rounds None) the two leading candidates are each
    polished once when the scan was taken from one sensor position, and none is when
    it was taken from several."""
    import engine.api as api
    from engine.observations import ObservationConfig
    from engine.placement import PlacementConfig
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["box"], 48)
    scan = simulate_scan(v, f, [orbit_camera(a, 25, 2.5) for a in (20, 140)[:views]], noise=0.0, seed=3)
    calls = []

    def spy(model, obs, to_ref, code, pose, placement, fit, on_progress=None):
        calls.append(placement.offset_rounds)
        return code, pose, 0.0

    monkeypatch.setattr(api, "polish_offset", spy)
    placement = PlacementConfig(variant_turns=(0, 90), variant_scales=(1.0,), refit_variants=2, **MECHANICS_ONLY)
    assert placement.offset_rounds is None and placement.offset_candidates == 2
    fit = FitConfig(iterations=20, screen_iterations=10, samples_per_iteration=1000)
    start = tiny_model.codes.detach().mean(0).numpy()
    _, _, loss, candidates = api.refit_placement(
        tiny_model, start, np.eye(4), [], scan.points, None, scan.sensors, placement, fit, ObservationConfig()
    )
    assert len(candidates) >= 2
    if views == 1:
        assert len(calls) == 2 and loss == 0.0  # one round on each of the two leaders
    else:
        assert calls == [] and loss == candidates[0].loss


def test_scan_extent_ignores_a_few_stray_points():
    from engine.frames import bounding_extent as scan_extent

    rng = np.random.default_rng(4)
    d = rng.standard_normal((20_000, 3))
    sphere = 2.0 * d / np.linalg.norm(d, axis=1, keepdims=True) + np.array([5.0, -1.0, 3.0])
    centre, radius = scan_extent(sphere)
    assert np.allclose(centre, [5.0, -1.0, 3.0], atol=0.02) and abs(radius - 2.0) < 0.02
    stray = np.concatenate([sphere, [[11.0, -1.0, 3.0], [5.0, 6.0, 3.0], [5.0, -1.0, -4.0]]])
    centre, radius = scan_extent(stray)  # the box and the largest distance: stretched
    assert radius > 4.0
    centre, radius = scan_extent(stray, 0.999)  # 3 points in 20,003 do not move the quantiles
    assert np.allclose(centre, [5.0, -1.0, 3.0], atol=0.05) and 1.95 < radius < 2.01
    with pytest.raises(InputError, match="quantile"):
        scan_extent(sphere, 1.5)


@pytest.mark.parametrize("searched_codes", [False, True])
def test_refit_batch_holds_each_candidate_once(tiny_model, monkeypatch, searched_codes):
    """The variant at the searched pose, screened from the same nearest code, is the
    hypothesis' own nearest-code candidate: it is refitted once, not twice, and the
    searched code joins the batch only when asked."""
    import engine.api as api_module
    from engine.api import refit_placement
    from engine.observations import ObservationConfig
    from engine.placement import PlacementConfig
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["box"], 48)
    scan = simulate_scan(v, f, [orbit_camera(30, 25, 2.5)], noise=0.0, seed=2)
    batches = []
    real = api_module.fit_codes_posed

    def spy(model, obs, poses, codes, config, *args, **kwargs):
        batches.append((np.array(poses), np.array(codes)))
        return real(model, obs, poses, codes, config, *args, **kwargs)

    monkeypatch.setattr(api_module, "fit_codes_posed", spy)
    searched = tiny_model.codes.detach().mean(0).numpy() + 0.05
    placement = PlacementConfig(
        variant_turns=(0.0, 180.0),
        variant_scales=(1.0,),
        refit_variants=2,
        refit_searched_codes=searched_codes,
        offset_rounds=0,  # the refit's batch alone (a one-view scan is polished by default)
        **MECHANICS_ONLY,  # and no anchored refit after it
    )
    fit = FitConfig(iterations=30, screen_iterations=30, nearest_starts=1)
    refit_placement(
        tiny_model, searched, np.eye(4), [], scan.points, None, scan.sensors, placement, fit, ObservationConfig()
    )
    ((poses, codes),) = batches
    pairs = [(i, j) for i in range(len(codes)) for j in range(i + 1, len(codes))]
    assert not [
        (i, j) for i, j in pairs if np.allclose(poses[i], poses[j]) and np.allclose(codes[i], codes[j], atol=1e-4)
    ]
    # the searched code (at the searched pose) is in the batch exactly when asked for
    has_searched = any(
        np.allclose(c, searched) and np.allclose(p, np.eye(4)) for p, c in zip(poses, codes, strict=True)
    )
    assert has_searched == searched_codes
    # the hypothesis' nearest code, and the turned variant: both there
    assert sum(np.allclose(p, np.eye(4)) for p in poses) >= 1
    assert any(np.allclose(p[:3, :3], np.diag([-1.0, 1.0, -1.0]), atol=1e-9) for p in poses)
    assert len(codes) <= 3 + searched_codes


@pytest.mark.parametrize(("observed", "searched", "expected"), [(0.03, None, 0.03), (0.03, 0.015, 0.015)])
def test_the_search_scores_poses_on_the_observations_eta(tiny_model, monkeypatch, observed, searched, expected):
    """The placement search takes the fit's eta unless its own is set, so ``--eta`` moves both."""
    import engine.api as api
    from engine.observations import ObservationConfig
    from engine.placement import PlacementConfig

    class Stop(Exception):
        pass

    seen = []

    def spy(model, pts, normals, sensors, config, on_progress=None):
        seen.append(config.eta)
        raise Stop

    monkeypatch.setattr(api, "fit_placement", spy)
    v, f = analytic_mesh(SHAPES["box"], 32)
    with pytest.raises(Stop):
        reconstruct(
            tiny_model, v, f, observation=ObservationConfig(eta=observed), placement=PlacementConfig(eta=searched)
        )
    assert seen == [expected]


def test_the_search_refuses_an_eta_out_of_range(tiny_model):
    from engine.placement import PlacementConfig, fit_placement

    pts = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(InputError, match="eta"):
        fit_placement(tiny_model, pts, None, None, PlacementConfig(eta=0.6))


def test_pose_correction_matches_the_fit_loops_transform():
    """pose_correction (numpy, 4 x 4) and the loop's tensor version move points alike."""
    from engine.fitting import _corrected, pose_correction

    params = np.array([[0.1, -0.2, 0.05, np.log(1.1), 0.3], [0.0, 0.0, 0.0, 0.0, 0.0]])
    x = np.random.default_rng(0).normal(size=(2, 50, 3))
    mats = pose_correction(params)
    np.testing.assert_allclose(mats[1], np.eye(4), atol=1e-12)
    expected = np.einsum("bij,bnj->bni", mats[:, :3, :3], x) + mats[:, None, :3, 3]
    got = _corrected(torch.tensor(params, dtype=torch.float64), torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # a rotation about +y by the yaw, scaled: (1, 0, 0) -> 1.1 * (cos, 0, -sin) + t
    np.testing.assert_allclose(mats[0, :3, 0], 1.1 * np.array([np.cos(0.3), 0.0, -np.sin(0.3)]))


def test_posed_fit_with_pose_lr_pulls_a_misplaced_scan_back(tiny_model):
    """A scan placed 4 % too large, 4 degrees turned and shifted by 0.05: fitting the pose's
    correction with the code brings the scan's points back towards the truth (held poses
    stay put and report no poses)."""
    from engine.api import _scan_observations
    from engine.fitting import fit_codes_posed
    from engine.frames import rotation_y
    from engine.observations import ObservationConfig
    from engine.scan import orbit_camera, simulate_scan

    name = "box"
    v, f = analytic_mesh(SHAPES[name], 64)
    cams = [orbit_camera(a, 25, 2.5) for a in (20, 140, 260)]
    scan = simulate_scan(v, f, cams, noise=0.0, seed=2)
    wrong = np.eye(4)
    wrong[:3, :3] = 1.04 * rotation_y(np.radians(4.0))
    wrong[:3, 3] = [0.03, -0.02, 0.03]
    obs = _scan_observations(np.eye(4), scan.points, None, scan.sensors, ObservationConfig(), 0)
    code = tiny_model.codes.detach()[NAMES.index(name)].numpy()
    fit = FitConfig(iterations=150, samples_per_iteration=4000)

    def misfit(pose: np.ndarray) -> float:
        """Mean distance of the scan's points from where the truth (the identity) puts them."""
        return float(np.linalg.norm(scan.points @ pose[:3, :3].T + pose[:3, 3] - scan.points, axis=1).mean())

    kept = code.copy()
    held = fit_codes_posed(tiny_model, obs, wrong[None], code[None], fit)
    assert held.poses is None
    np.testing.assert_array_equal(code, kept)  # the start (a view of the model's codes) is not written to
    with pytest.raises(InputError, match="pose_lr"):
        fit_codes_posed(tiny_model, obs, wrong[None], code[None], fit, pose_lr=-1e-3)
    moved = fit_codes_posed(tiny_model, obs, wrong[None], code[None], fit, pose_lr=3e-3)
    assert moved.poses.shape == (1, 4, 4)
    before, after = misfit(wrong), misfit(moved.poses[0])
    assert before > 0.04
    assert after < 0.4 * before, (before, after)
    assert moved.loss < held.loss


def test_refit_placement_with_pose_refinement_returns_the_corrected_pose(tiny_model):
    """refit_pose_lr: the refit's candidates come back at their corrected poses, and the
    winner's maps the scan nearer the truth than the searched pose did."""
    from engine.api import refit_placement
    from engine.observations import ObservationConfig
    from engine.placement import PlacementConfig

    *_, scan, m2i, pts, sensors = _placed_box_scan()
    wrong = np.eye(4)
    wrong[:3, :3] *= 1.03
    wrong[:3, 3] = [0.03, 0.02, -0.03]
    found = wrong @ np.linalg.inv(m2i)
    start = tiny_model.codes.detach().mean(0).numpy()
    fit = FitConfig(iterations=150, screen_iterations=60, samples_per_iteration=4000)

    def misfit(i2m: np.ndarray) -> float:
        """Mean distance (model units) of the scan's points from where the truth puts them."""
        return float(np.linalg.norm(pts @ i2m[:3, :3].T + i2m[:3, 3] - scan.points, axis=1).mean())

    placement = PlacementConfig(refit_variants=0, offset_rounds=0, refit_pose_lr=3e-3, box_anchor=False)
    code, i2m, loss, candidates = refit_placement(
        tiny_model, start, found, [], pts, None, sensors, placement, fit, ObservationConfig()
    )
    np.testing.assert_allclose(candidates[0].input_to_model, i2m, atol=1e-12)
    np.testing.assert_allclose(candidates[0].code, code)
    assert candidates[0].loss == pytest.approx(loss)
    assert misfit(found) > 0.04
    assert misfit(i2m) < 0.5 * misfit(found), (misfit(found), misfit(i2m))


def test_spanned_axes_and_box_anchor_shift():
    """One sensor in front spans the axes across its view, not its depth axis; three around
    span all three. The shift centres the scan's box on the origin along the spanned axes,
    stray points left out."""
    from engine.api import box_anchor_shift, spanned_axes
    from engine.scan import orbit_camera, simulate_scan

    v, f = analytic_mesh(SHAPES["box"], 64)
    centre = 0.5 * (v.min(axis=0) + v.max(axis=0))
    np.testing.assert_allclose(centre, 0.0, atol=1e-6)
    front = simulate_scan(v, f, [orbit_camera(0, 10, 2.5)], noise=0.0, seed=1)
    around = simulate_scan(v, f, [orbit_camera(a, 25, 2.5) for a in (20, 140, 260)], noise=0.0, seed=1)
    depth = np.argmax(np.abs(front.sensors[0, [0, 2]])) * 2  # the front camera's horizontal axis: x or z
    expected = np.ones(3, bool)
    expected[depth] = False
    np.testing.assert_array_equal(spanned_axes(front.points, front.sensors), expected)
    np.testing.assert_array_equal(spanned_axes(around.points, around.sensors), [True, True, True])

    moved = np.array([0.06, -0.04, 0.03])
    rng = np.random.default_rng(0)
    stray = rng.normal(size=(20, 3))
    stray *= 2.0 / np.linalg.norm(stray, axis=1, keepdims=True)  # isolated, well away from the box: dropped
    pts = np.concatenate([around.points + moved, stray])
    sens = np.concatenate([around.sensors + moved, np.repeat(around.sensors[:1] + moved, 20, 0)])
    np.testing.assert_allclose(box_anchor_shift(pts, sens), -moved, atol=0.01)
    one = box_anchor_shift(front.points + moved, front.sensors + moved)
    assert one[depth] == 0.0
    keep = [a for a in range(3) if a != depth]
    np.testing.assert_allclose(one[keep], -moved[keep], atol=0.01)


def test_refit_placement_box_anchor_recentres_a_shifted_pose(tiny_model):
    """A three-view scan placed right but 0.05 off: the box anchor moves it back to within
    0.01 and keeps it (its loss is not worse); without a sensor nothing moves."""
    from engine.api import refit_placement
    from engine.observations import ObservationConfig
    from engine.placement import PlacementConfig

    *_, scan, m2i, pts, sensors = _placed_box_scan()
    wrong = np.eye(4)
    wrong[:3, 3] = [0.03, -0.03, -0.03]
    found = wrong @ np.linalg.inv(m2i)
    start = tiny_model.codes.detach().mean(0).numpy()
    fit = FitConfig(iterations=150, screen_iterations=60, samples_per_iteration=4000)

    def offset(i2m: np.ndarray) -> float:
        """How far (model units) the placement puts the scan's points from where the truth does."""
        return float(np.linalg.norm(pts @ i2m[:3, :3].T + i2m[:3, 3] - scan.points, axis=1).mean())

    placement = PlacementConfig(refit_variants=0, offset_rounds=0, box_anchor=True, refit_pose_lr=0.0)
    seen: list[tuple[int, int]] = []
    code, i2m, loss, candidates = refit_placement(
        tiny_model,
        start,
        found,
        [],
        pts,
        None,
        sensors,
        placement,
        fit,
        ObservationConfig(),
        lambda done, total, message: seen.append((done, total)) or True,
    )
    # the progress runs forwards to its end, the anchored refit included
    assert seen and [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (1000, 1000)
    assert offset(found) == pytest.approx(np.linalg.norm(wrong[:3, 3]), rel=1e-6)
    assert offset(i2m) < 0.01, offset(i2m)
    assert np.isfinite(loss) and loss <= (1 + placement.box_anchor_tolerance) * candidates[0].loss
    # the anchored code, meshed at the anchored pose, lands on the box in the scan's frame
    v, f = analytic_mesh(SHAPES["box"], 64)
    mesh = extract_mesh(tiny_model, code, MeshConfig(resolution=64)).apply_matrix(np.linalg.inv(i2m))
    m = compare_meshes((mesh.vertices, mesh.faces), (v @ m2i[:3, :3].T + m2i[:3, 3], f), samples=10000)
    assert m.chamfer / 1.7**2 < 3e-3, m
    # the candidates (the alternatives offered) are the refit's, before the anchor
    np.testing.assert_allclose(candidates[0].input_to_model, found, atol=1e-12)
    # without a sensor the scan's coverage is unknown: the pose is left where the refit put it
    _, held, _, _ = refit_placement(tiny_model, start, found, [], pts, None, None, placement, fit, ObservationConfig())
    np.testing.assert_allclose(held, found, atol=1e-12)


@pytest.mark.parametrize(
    "field, value",
    [
        ("box_anchor_tolerance", -0.1),
        ("box_anchor_tolerance", float("nan")),
        ("refit_pose_lr", -1e-3),
        ("extent_quantile", 1.5),
        ("yaw_hypotheses", 0),
        ("keep", 0),
        ("refit_iterations", -1),
        ("offset_rounds", -1),
        ("offset_candidates", 0),
    ],
)
def test_placement_config_refuses_bad_settings(field, value):
    """A bad setting is refused where the settings are made, before any work, naming itself."""
    from engine.placement import PlacementConfig

    with pytest.raises(InputError, match=field):
        PlacementConfig(**{field: value})
    with pytest.raises(InputError, match=field):
        replace(PlacementConfig(), **{field: value})
    assert getattr(PlacementConfig(), field) != value  # the defaults pass
