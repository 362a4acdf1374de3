"""The extension inside real Blender: install, every operator through the real worker, bad inputs, uninstall."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

from tests.blender.conftest import PKG, bpy

MODEL_TO_BLENDER = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)


def _mesh_object(name, verts, faces=None, location=(0, 0, 0)):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(v) for v in verts], [], [tuple(f) for f in faces] if faces is not None else [])
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    bpy.context.collection.objects.link(obj)
    bpy.context.view_layer.update()  # matrix_world follows location
    return obj


def _world_vertices(obj):
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    m = np.array(obj.matrix_world)
    return co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]


def _box_scan(scale=1.0, offset=(0, 0, 0)):
    """A box mesh in Blender axes, like the tiny model's 'box' training shape."""
    from tests.analytic import SHAPES, analytic_mesh

    v, f = analytic_mesh(SHAPES["box"], 40)
    return (v @ MODEL_TO_BLENDER.T) * scale + np.array(offset), f


def _snapshot():
    return sorted(o.name for o in bpy.data.objects), sorted(m.name for m in bpy.data.meshes)


def _run(op, **kw):
    """Call an operator; returns (result, error message or '')."""
    try:
        return op("EXEC_DEFAULT", **kw), ""
    except RuntimeError as exc:
        return {"CANCELLED"}, str(exc)


def _select(*objs):
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    for o in objs:
        o.select_set(True)
    if objs:
        bpy.context.view_layer.objects.active = objs[-1]


def test_generate_lays_out_upright_shapes_at_the_cursor(scene):
    scene.cursor.location = (1.0, 2.0, 0.5)
    result, err = _run(bpy.ops.deepsdf.generate, count=4, seed=3, temperature=0.3, resolution=32)
    assert result == {"FINISHED"}, err
    objs = sorted((o for o in bpy.data.objects if o.get("deepsdf_kind") == "generated"), key=lambda o: o.name)
    assert [o.name for o in objs] == [f"DeepSDF seed3 #{k}" for k in range(4)]
    for k, obj in enumerate(objs):
        assert len(obj.data.vertices) > 100 and len(obj.data.polygons) > 100
        assert len(obj["deepsdf_code"]) == 8 and obj["deepsdf_model"]
        row, col = divmod(k, 2)
        np.testing.assert_allclose(obj.location, (1.0 + 2.4 * col, 2.0 - 2.4 * row, 0.5), atol=1e-5)
        world = _world_vertices(obj)
        assert world[:, 2].min() == pytest.approx(0.5, abs=1e-4)  # standing on the cursor's plane
        assert all(p.use_smooth for p in obj.data.polygons[:10])
    # same seed, same codes
    codes = [list(o["deepsdf_code"]) for o in objs]
    bpy.ops.wm.read_homefile(use_empty=True)
    _run(bpy.ops.deepsdf.generate, count=4, seed=3, temperature=0.3, resolution=32)
    again = sorted((o for o in bpy.data.objects), key=lambda o: o.name)
    assert [list(o["deepsdf_code"]) for o in again] == codes


def test_complete_lands_on_the_scan_and_leaves_it_alone(scene):
    verts, faces = _box_scan(scale=2.0)
    scan = _mesh_object("Scan", verts, faces, location=(3.0, -1.0, 0.5))
    scan.rotation_euler = (0, 0, 0)
    before = _world_vertices(scan).copy()
    matrix = np.array(scan.matrix_world).copy()
    _select(scan)
    result, err = _run(bpy.ops.deepsdf.complete, resolution=40, quality="fast", placement="reference")
    assert result == {"FINISHED"}, err
    done = bpy.data.objects["Scan completed"]
    assert done.users_collection[0] == scan.users_collection[0]
    np.testing.assert_array_equal(_world_vertices(scan), before)  # source untouched
    np.testing.assert_array_equal(np.array(scan.matrix_world), matrix)
    world = _world_vertices(done)
    lo, hi = world.min(0), world.max(0)
    np.testing.assert_allclose(lo, before.min(0), atol=0.12)  # 2 m box, within a few cm
    np.testing.assert_allclose(hi, before.max(0), atol=0.12)
    settings = json.loads(done["deepsdf_settings"])
    assert settings["scans"] == ["Scan"] and done["deepsdf_kind"] == "completed"


def test_complete_uses_modifiers_and_vertex_only_scans(scene):
    verts, faces = _box_scan()
    half = verts[:, 0] >= -1e-6
    keep = np.flatnonzero(half)
    remap = -np.ones(len(verts), int)
    remap[keep] = np.arange(len(keep))
    tri = faces[half[faces].all(axis=1)]
    scan = _mesh_object("Half", verts[keep], remap[tri])
    mod = scan.modifiers.new("mirror", "MIRROR")
    mod.use_axis[0] = True
    cloud = _mesh_object("Cloud", verts[::3], None, location=(0, 4.0, 0))
    _select(scan, cloud)
    result, err = _run(bpy.ops.deepsdf.complete, resolution=32, quality="fast", placement="reference")
    assert result == {"FINISHED"}, err
    full = _world_vertices(bpy.data.objects["Half completed"])
    assert full[:, 0].min() < -0.35  # the mirrored half was part of the input
    pts = _world_vertices(bpy.data.objects["Cloud completed"])
    np.testing.assert_allclose(pts.mean(0), (0, 4.0, 0), atol=0.1)
    assert len(scan.data.vertices) == len(keep)  # the modifier was not applied to the source


def test_interpolate_remesh_chain_and_animation(scene):
    _run(bpy.ops.deepsdf.generate, count=2, seed=1, temperature=0.3, resolution=32)
    a, b = bpy.data.objects["DeepSDF seed1 #0"], bpy.data.objects["DeepSDF seed1 #1"]
    _select(b, a)  # a is active: it is the start
    result, err = _run(bpy.ops.deepsdf.interpolate, steps=3, resolution=32)
    assert result == {"FINISHED"}, err
    steps = [bpy.data.objects[f"DeepSDF morph {k}/2"] for k in range(3)]
    np.testing.assert_allclose(list(steps[0]["deepsdf_code"]), list(a["deepsdf_code"]), atol=1e-6)
    np.testing.assert_allclose(list(steps[2]["deepsdf_code"]), list(b["deepsdf_code"]), atol=1e-6)
    xs = [o.location.x for o in steps]
    assert xs[1] - xs[0] == pytest.approx(2.4) and xs[2] - xs[1] == pytest.approx(2.4)

    _select(steps[1])
    code = list(steps[1]["deepsdf_code"])
    n_before = len(steps[1].data.vertices)
    result, err = _run(bpy.ops.deepsdf.remesh, resolution=64, normals=True)
    assert result == {"FINISHED"}, err
    assert len(steps[1].data.vertices) > 2 * n_before and list(steps[1]["deepsdf_code"]) == code
    assert json.loads(steps[1]["deepsdf_settings"])["resolution"] == 64

    _select()
    result, err = _run(bpy.ops.deepsdf.interpolate, steps=3, index_a=0, index_b=2, animate=True, resolution=24)
    assert result == {"FINISHED"}, err
    anim = [o for o in bpy.data.objects if o.get("deepsdf_kind") == "interpolated" and o.animation_data]
    assert len(anim) == 3
    start = bpy.context.scene.frame_current
    for k in range(3):
        bpy.context.scene.frame_set(start + k)
        visible = [o.name for o in anim if not o.hide_render]
        assert visible == [anim[k].name]
    bpy.context.scene.frame_set(start)


def test_complete_then_remesh_keeps_the_frame(scene):
    verts, faces = _box_scan(scale=0.5)
    scan = _mesh_object("Small", verts, faces, location=(-2, 0, 1))
    _select(scan)
    _run(bpy.ops.deepsdf.complete, resolution=32, quality="fast", placement="reference")
    done = bpy.data.objects["Small completed"]
    box_before = _world_vertices(done)
    _select(done)
    result, err = _run(bpy.ops.deepsdf.remesh, resolution=48, normals=False)
    assert result == {"FINISHED"}, err
    box_after = _world_vertices(done)
    np.testing.assert_allclose(box_after.min(0), box_before.min(0), atol=0.03)
    np.testing.assert_allclose(box_after.max(0), box_before.max(0), atol=0.03)


def test_bad_inputs_change_nothing(scene, tmp_path):
    prefs = bpy.context.preferences.addons[PKG].preferences
    # no selection / only non-mesh objects: the operator is unavailable
    empty = bpy.data.objects.new("Empty", None)
    bpy.context.collection.objects.link(empty)
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    bpy.context.collection.objects.link(cam)
    curve = bpy.data.objects.new("Curve", bpy.data.curves.new("Curve", "CURVE"))
    bpy.context.collection.objects.link(curve)
    _select()
    assert not bpy.ops.deepsdf.complete.poll()
    _select(empty, cam, curve)
    assert not bpy.ops.deepsdf.complete.poll()

    no_verts = _mesh_object("Nothing", np.zeros((0, 3)))
    nan = _mesh_object("NaN", np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]]), np.array([[0, 1, 2]]))
    co = np.array([0, 0, 0, 1, 0, 0, np.nan, 1, 0], np.float32)
    nan.data.vertices.foreach_set("co", co)
    for bad, message in ((no_verts, "no vertices"), (nan, "NaN")):
        _select(bad)
        before = _snapshot()
        result, err = _run(bpy.ops.deepsdf.complete, resolution=24, quality="fast")
        assert result == {"CANCELLED"} and message in err, err
        assert _snapshot() == before

    verts, faces = _box_scan()
    good = _mesh_object("Good", verts, faces)
    _select(good)
    corrupt = tmp_path / "corrupt.dsdf"
    corrupt.write_bytes(b"\x00" * 100)
    for path, message in ((tmp_path / "missing.dsdf", "not found"), (corrupt, "not a readable model file")):
        prefs.model_file = str(path)
        before = _snapshot()
        result, err = _run(bpy.ops.deepsdf.complete, resolution=24, quality="fast")
        assert result == {"CANCELLED"} and message in err, err
        assert _snapshot() == before
    prefs.model_file = os.environ.get("DEEPSDF_TINY", prefs.model_file)


def test_engine_python_problems_are_reported(scene, tmp_path, tiny_model_path):
    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.model_file = str(tiny_model_path)
    prefs.engine_python = str(tmp_path / "nope" / "python3")
    before = _snapshot()
    result, err = _run(bpy.ops.deepsdf.generate, count=1, resolution=24)
    assert result == {"CANCELLED"} and "does not exist" in err
    assert _snapshot() == before
    import subprocess
    import sys

    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    prefs.engine_python = str(venv / "bin" / "python")
    result, err = _run(bpy.ops.deepsdf.check_engine)
    assert result == {"CANCELLED"} and "no PyTorch" in err
    assert "no PyTorch" in prefs.last_check
    prefs.engine_python = ""
    result, err = _run(bpy.ops.deepsdf.check_engine)
    assert result == {"FINISHED"}, err
    assert "code length 8" in prefs.last_check


def test_worker_killed_mid_job_and_second_job(scene, addon):
    jobs = addon.jobs
    client = jobs.client()
    client.start()
    before = _snapshot()

    def kill_soon():
        time.sleep(1.0)
        client.proc.kill()

    threading.Thread(target=kill_soon, daemon=True).start()
    result, err = _run(bpy.ops.deepsdf.generate, count=30, resolution=160)
    assert result == {"CANCELLED"} and "stopped unexpectedly" in err, err
    assert _snapshot() == before
    assert not jobs.busy()

    job = jobs.start("sleep", {"seconds": 5}, None)
    try:
        result, err = _run(bpy.ops.deepsdf.generate, count=1, resolution=24)
        assert result == {"CANCELLED"} and "already running" in err
        assert _snapshot() == before
    finally:
        jobs.client().cancel(job)
        with pytest.raises(addon.engine.worker_client.WorkerError):
            jobs.client().wait(job, timeout=10)
        jobs.finish()


def test_huge_point_cloud_is_thinned_not_hung(scene, addon):
    import importlib

    meshes = importlib.import_module(f"{PKG}.meshes")
    rng = np.random.default_rng(0)
    d = rng.standard_normal((1_100_000, 3))
    pts = 0.55 * d / np.linalg.norm(d, axis=1, keepdims=True)
    mesh = bpy.data.meshes.new("Huge")
    mesh.vertices.add(len(pts))
    mesh.vertices.foreach_set("co", pts.astype(np.float32).ravel())
    obj = bpy.data.objects.new("Huge", mesh)
    bpy.context.collection.objects.link(obj)
    obj.location = (2.0, 0.0, 0.0)
    bpy.context.view_layer.update()
    # what is sent: a random million of the object's own points, in world space
    co, faces, note = meshes.read_world_geometry(obj, bpy.context.evaluated_depsgraph_get())
    assert co.shape == (meshes.MAX_VERTICES, 3) and faces is None and "1,000,000" in note
    np.testing.assert_allclose(np.linalg.norm(co - [2.0, 0.0, 0.0], axis=1), 0.55, atol=1e-5)
    _select(obj)
    t0 = time.perf_counter()
    result, err = _run(bpy.ops.deepsdf.complete, resolution=32, quality="fast")
    assert result == {"FINISHED"}, err
    # a guard against a hang, not a speed test (machines here are noisy: 156 s once on
    # two cores busy with another completion)
    assert time.perf_counter() - t0 < 900
    assert len(bpy.data.objects["Huge completed"].data.vertices) > 100
    assert len(obj.data.vertices) == 1_100_000  # the source is untouched


def test_undo_removes_the_result(scene, addon):
    ops = addon.operators
    for cls in (ops.DEEPSDF_OT_complete, ops.DEEPSDF_OT_generate, ops.DEEPSDF_OT_interpolate, ops.DEEPSDF_OT_remesh):
        assert {"REGISTER", "UNDO"} <= cls.bl_options
    bpy.ops.ed.undo_push(message="before")
    _run(bpy.ops.deepsdf.generate, count=1, resolution=24, temperature=0.2)
    assert "DeepSDF seed0 #0" in bpy.data.objects
    if not bpy.ops.ed.undo.poll():
        pytest.skip("the bpy module has no window, and ed.undo needs one; the operators' UNDO flags are checked above")
    bpy.ops.ed.undo()
    assert "DeepSDF seed0 #0" not in bpy.data.objects


def test_complete_a_partial_scan_with_the_camera_as_sensor(scene):
    """A one-view scan placed anywhere (turned, scaled, moved) is completed over itself."""
    import sys

    sys.path.insert(0, str(__import__("tests.conftest").conftest.REPO))
    from engine.scan import orbit_camera, partial_mesh, simulate_scan
    from tests.analytic import SHAPES, analytic_mesh

    v, f = analytic_mesh(SHAPES["capsule_pair"], 64)
    cam_model = orbit_camera(30, 25, 2.5)
    scan = simulate_scan(v, f, cam_model, seed=1)
    pv, pf = partial_mesh(scan)
    to_blender = MODEL_TO_BLENDER * 2.0  # y up -> z up, twice the size
    obj = _mesh_object("Partial", pv @ to_blender.T, pf, location=(1.0, -2.0, 0.3))
    obj.rotation_euler = (0, 0, 0.7)
    bpy.context.view_layer.update()
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    bpy.context.collection.objects.link(cam)
    cam.matrix_world = obj.matrix_world.copy()
    cam.location = tuple(np.array(obj.matrix_world) @ np.append(np.asarray(cam_model.position) @ to_blender.T, 1))[:3]
    bpy.context.scene.camera = cam
    bpy.context.view_layer.update()
    _select(obj)
    result, err = _run(bpy.ops.deepsdf.complete, resolution=48, placement="estimate", use_camera=True)
    assert result == {"FINISHED"}, err
    assert "deepsdf_confidence" in bpy.data.objects["Partial completed"].data.color_attributes
    done = _world_vertices(bpy.data.objects["Partial completed"])
    world = np.array(obj.matrix_world)
    truth = (v @ to_blender.T) @ world[:3, :3].T + world[:3, 3]
    np.testing.assert_allclose(done.min(0), truth.min(0), atol=0.25)
    np.testing.assert_allclose(done.max(0), truth.max(0), atol=0.25)


def test_complete_takes_the_sensor_from_a_chosen_empty(scene, addon, monkeypatch):
    """An empty where the scan was taken from is the sensor (in the model axes the worker
    gets, over the scene camera); a missing or scan sensor object is refused and changes
    nothing; the any-orientation placement reaches the worker."""
    import importlib

    jobs = importlib.import_module(f"{PKG}.jobs")
    v, f = _box_scan(0.5, (1.0, 0.0, 0.0))
    obj = _mesh_object("Scan", v, f)
    empty = bpy.data.objects.new("Scanner", None)
    bpy.context.collection.objects.link(empty)
    empty.location = (4.0, -3.0, 2.0)
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    bpy.context.collection.objects.link(cam)
    cam.location = (-5.0, 0.0, 1.0)
    bpy.context.scene.camera = cam
    bpy.context.view_layer.update()
    _select(obj)
    sent = []

    def capture(op, params, workdir, context=None, timeout=None):
        sent.append(params)
        raise addon.engine.worker_client.WorkerError("captured")

    monkeypatch.setattr(jobs, "run_sync", capture)
    before = _snapshot()
    result, err = _run(bpy.ops.deepsdf.complete, sensor_object="Scanner", use_camera=True)
    assert result == {"CANCELLED"} and "captured" in err
    # Blender (x, y, z) is (x, z, -y) in the model's y-up axes
    np.testing.assert_allclose(sent[-1]["scans"][0]["sensor"], [4.0, 2.0, 3.0], atol=1e-6)
    _run(bpy.ops.deepsdf.complete, use_camera=True)
    np.testing.assert_allclose(sent[-1]["scans"][0]["sensor"], [-5.0, 1.0, 0.0], atol=1e-6)
    _run(bpy.ops.deepsdf.complete, placement="estimate_any")
    assert "sensor" not in sent[-1]["scans"][0] and sent[-1]["placement"] == "estimate_any"
    count = len(sent)
    result, err = _run(bpy.ops.deepsdf.complete, sensor_object="Nowhere")
    assert result == {"CANCELLED"} and "Sensor object 'Nowhere' not found" in err
    result, err = _run(bpy.ops.deepsdf.complete, sensor_object="Scan")
    assert result == {"CANCELLED"} and "is one of the selected scans" in err
    assert len(sent) == count and _snapshot() == before
    assert tuple(empty.location) == (4.0, -3.0, 2.0)


def test_complete_adds_distinct_alternatives_hidden(scene):
    """A small flat patch that the tiny model's box and capsules both explain (the engine's
    test_alternatives_are_other_shapes_that_fit): the best completion is shown and
    selected, the other distinct shapes are added hidden over it, fitted worse."""
    from tests.analytic import ambiguous_patch

    patch = ambiguous_patch()
    obj = _mesh_object("Patch", patch @ MODEL_TO_BLENDER[:3, :3].T, None)
    before = _world_vertices(obj).copy()
    _select(obj)
    result, err = _run(bpy.ops.deepsdf.complete, resolution=32, quality="fast", placement="known", alternatives=2)
    assert result == {"FINISHED"}, err
    done = bpy.data.objects["Patch completed"]
    alts = [o for o in bpy.data.objects if o.name.startswith("Patch completed (alternative ")]
    assert 1 <= len(alts) <= 2 and not done.hide_get() and done.select_get()
    for alt in alts:
        assert alt.hide_get() and not alt.select_get() and alt["deepsdf_kind"] == "completed"
        assert alt["deepsdf_fit_loss"] >= done["deepsdf_fit_loss"]
        assert list(alt["deepsdf_code"]) != list(done["deepsdf_code"]) and len(alt.data.polygons) > 100
        assert alt.users_collection[0] == obj.users_collection[0]
    np.testing.assert_array_equal(_world_vertices(obj), before)

    # Show Next Alternative walks the scan's shapes one at a time, back to the completion
    choices = [done, *sorted(alts, key=lambda o: o.name)]
    assert len({o["deepsdf_completion_group"] for o in choices}) == 1
    assert [o["deepsdf_choice"] for o in choices] == list(range(len(choices)))
    _select(done)
    for step in range(1, len(choices) + 1):
        assert _run(bpy.ops.deepsdf.next_alternative)[0] == {"FINISHED"}
        expected = choices[step % len(choices)]
        assert [o.name for o in choices if not o.hide_get()] == [expected.name]
        assert bpy.context.view_layer.objects.active == expected and expected.select_get()
    assert not obj.hide_get()  # the scan is not one of them
    np.testing.assert_array_equal(_world_vertices(obj), before)
    _select(obj)  # not a completion: nothing to walk
    assert not bpy.ops.deepsdf.next_alternative.poll()

    bpy.ops.wm.read_homefile(use_empty=True)
    obj = _mesh_object("Patch", patch @ MODEL_TO_BLENDER[:3, :3].T, None)
    _select(obj)
    _run(bpy.ops.deepsdf.complete, resolution=32, quality="fast", placement="known")
    assert [o.name for o in bpy.data.objects if o.name.startswith("Patch completed")] == ["Patch completed"]


def test_zz_disable_and_uninstall(addon):
    import addon_utils

    user_dir = os.path.dirname(os.path.dirname(addon.__file__))
    assert bpy.ops.preferences.addon_disable(module=PKG) == {"FINISHED"}
    assert PKG not in bpy.context.preferences.addons
    assert not addon_utils.check(PKG)[1]  # not loaded
    result = bpy.ops.extensions.package_uninstall(repo_directory=user_dir, pkg_id="deepsdf_blender")
    assert result == {"FINISHED"}
    assert not os.path.exists(os.path.join(user_dir, "deepsdf_blender"))
