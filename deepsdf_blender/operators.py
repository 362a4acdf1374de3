"""Operators: thin wrappers that gather inputs, run an engine job and add the results to the scene.

Each operator builds one job request (``build``), runs it in the worker, and on
success applies the result on the main thread (``apply``). Nothing in the scene
changes before the result is in, so a failed or cancelled job leaves it as it was.
"""

from __future__ import annotations

import json
import math
import uuid

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import jobs
from .engine.protocol import load_array, save_array
from .engine.worker_client import WorkerError
from .frames import BLENDER_TO_MODEL, MODEL_TO_BLENDER, apply, translation
from .meshes import (
    PROP_CHOICE,
    PROP_GROUP,
    PROP_MODEL,
    PROP_SOURCE,
    InputProblem,
    completion_choices,
    is_deepsdf,
    new_mesh,
    read_world_geometry,
    set_confidence,
    stored_code,
    stored_map,
    tag_object,
)
from .preferences import get_prefs, model_spec

GRID_SPACING = 2.4
"""Distance between generated objects: shapes fit in a radius-1 sphere."""


def _common(context) -> dict:
    prefs = get_prefs(context)
    return {"model": model_spec(prefs), "device": prefs.device}


def _link(context, obj, collection=None) -> None:
    (collection or context.collection).objects.link(obj)


class _EngineOperator:
    """Mixin: synchronous ``execute``, asynchronous ``invoke`` + ``modal`` (progress, Esc to cancel)."""

    _job = None
    _timer = None

    # subclasses: build(context) -> (op, params, workdir); apply(context, result) -> str summary
    def _run_checks(self, context) -> str | None:
        if jobs.busy():
            return "A DeepSDF job is already running; wait for it or cancel it."
        return None

    def execute(self, context):
        problem = self._run_checks(context)
        if problem:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        try:
            op, params, workdir = self.build(context)
            job, result = jobs.run_sync(op, params, workdir, context)
        except (InputProblem, WorkerError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        try:
            summary = self.apply(context, result)
        except InputProblem as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            job.cleanup()
        self.report({"INFO"}, summary)
        return {"FINISHED"}

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        problem = self._run_checks(context)
        if problem:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        try:
            op, params, workdir = self.build(context)
            self._job = jobs.start(op, params, workdir, context)
        except (InputProblem, WorkerError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 1000)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        wm = context.window_manager
        if event.type == "ESC" or jobs.job_state().cancel_requested:
            jobs.cancel()
            jobs.job_state().cancel_requested = False
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        job = jobs.poll()
        wm.progress_update(int(1000 * (job.fraction if job else 1.0)))
        if job is not None and context.workspace is not None:
            context.workspace.status_text_set(f"DeepSDF: {job.message or job.op} {job.fraction:.0%}  (Esc to cancel)")
        for area in context.screen.areas if context.screen else []:
            if area.type == "VIEW_3D":
                area.tag_redraw()
        if job is None or not job.finished:
            return {"RUNNING_MODAL"}
        self._end(context)
        try:
            if job.error is not None:
                level = {"WARNING"} if job.error.kind == "CancelledError" else {"ERROR"}
                self.report(level, "Cancelled; nothing was changed." if level == {"WARNING"} else str(job.error))
                return {"CANCELLED"}
            self.report({"INFO"}, self.apply(context, job.result or {}))
            return {"FINISHED"}
        except InputProblem as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            job.cleanup()

    def _end(self, context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        jobs.finish()


def _shape_objects(context, result, kind, settings, maps, names, placements):
    """Create one object per returned shape. maps[k]: model frame -> object local (4 x 4).
    placements[k]: world matrix (4 x 4). Shapes without a surface are skipped."""
    created = []
    identity = result.get("model_identity", "")
    source = _common(context)["model"]
    for k, shape in enumerate(result.get("shapes", [])):
        if shape.get("mesh") is None:
            continue
        v = apply(maps[k], load_array(shape["mesh"]["vertices"]))
        n = load_array(shape["mesh"].get("normals"))
        if n is not None:
            n = (n @ maps[k][:3, :3].T).astype(np.float32)
            n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
        mesh = new_mesh(names[k], v, load_array(shape["mesh"]["faces"]), n)
        confidence = load_array(shape["mesh"].get("confidence"))
        if confidence is not None:
            set_confidence(mesh, confidence)
        obj = bpy.data.objects.new(names[k], mesh)
        obj.matrix_world = _matrix(placements[k])
        tag_object(obj, shape["code"], identity, source, kind, maps[k], settings)
        created.append(obj)
    return created


def _matrix(m: np.ndarray):
    from mathutils import Matrix

    return Matrix([list(row) for row in m])


def _select_only(context, objects) -> None:
    for o in context.selected_objects:
        o.select_set(False)
    for o in objects:
        o.select_set(True)
    if objects:
        context.view_layer.objects.active = objects[-1]


def _upright_map(shape_vertices_model: np.ndarray) -> np.ndarray:
    """Model frame -> local: axes to Blender, lifted so the lowest point is at z = 0."""
    v = apply(MODEL_TO_BLENDER, shape_vertices_model)
    return translation([0, 0, -float(v[:, 2].min())]) @ MODEL_TO_BLENDER


class DEEPSDF_OT_complete(_EngineOperator, bpy.types.Operator):
    """Fit the learned shape class to each selected scan and add a completed, watertight mesh beside it"""

    bl_idname = "deepsdf.complete"
    bl_label = "Complete Scan"
    bl_options = {"REGISTER", "UNDO"}

    resolution: IntProperty(name="Resolution", description="Marching-cubes grid size", default=128, min=16, max=512)
    quality: EnumProperty(
        name="Fit",
        items=[
            ("auto", "Auto", "Default on a GPU, Fast on a CPU"),
            ("fast", "Fast", "2,048 samples per step, 4 nearest training shapes tried as starts: for a CPU"),
            ("default", "Default", "8,000 samples per step, 8 nearest training shapes tried as starts"),
            ("reference", "Reference", "The reference DeepSDF's 800 steps"),
        ],
        default="auto",
    )
    normals: BoolProperty(name="SDF Normals", description="Vertex normals from the SDF gradient", default=False)
    placement: EnumProperty(
        name="Placement",
        items=[
            (
                "estimate",
                "Estimate",
                "Find the scan's scale, turn about the vertical and position (partial scans anywhere)",
            ),
            (
                "estimate_any",
                "Estimate, Any Orientation",
                "Also find which way is up, for scans lying on their side or tilted: a slower search that often "
                "fails on one-view scans; turn the scan upright instead where you can",
            ),
            ("reference", "Bounding Box", "Normalise by the scan's bounding box (complete, upright scans)"),
            ("known", "Model Frame", "The scan is already in the model's normalised frame"),
        ],
        default="estimate",
    )
    use_camera: BoolProperty(
        name="Camera as Sensor",
        description="The scene's camera is where the scan was taken from: free space towards it is known to be empty",
        default=False,
    )
    sensor_object: StringProperty(
        name="Sensor Object",
        description="An object (an empty, a camera) standing where the scan was taken from: free space towards it "
        "is known to be empty. Used instead of the scene's camera when set",
        default="",
    )
    alternatives: IntProperty(
        name="Alternatives",
        description="Also add up to this many other completions whose shapes differ (hidden, over the scan): "
        "a partial scan often fits several shapes about equally well, and the unseen part is invented",
        default=0,
        min=0,
        max=5,
    )

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT" and any(o.type == "MESH" for o in context.selected_objects)

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        for name in ("resolution", "quality", "normals", "placement", "use_camera"):
            layout.prop(self, name)
        layout.prop_search(self, "sensor_object", bpy.data, "objects", icon="EMPTY_AXIS")
        layout.prop(self, "alternatives")

    def _sensor(self, context, scans) -> list[float] | None:
        """The sensor position in model axes (Blender world units), or None when none is given."""
        if self.sensor_object:
            obj = bpy.data.objects.get(self.sensor_object)
            if obj is None:
                raise InputProblem(f"Sensor object '{self.sensor_object}' not found.")
            if obj in scans:
                raise InputProblem(f"The sensor object '{obj.name}' is one of the selected scans; pick another object.")
        elif self.use_camera:
            obj = context.scene.camera
            if obj is None:
                raise InputProblem("'Camera as Sensor' is on but the scene has no camera.")
        else:
            return None
        pos = np.array(obj.matrix_world.translation, np.float64)[None]
        return apply(BLENDER_TO_MODEL, pos)[0].tolist()

    def invoke(self, context, event):
        self.resolution = get_prefs(context).resolution
        return super().invoke(context, event)

    def build(self, context):
        depsgraph = context.evaluated_depsgraph_get()
        meshes = [o for o in context.selected_objects if o.type == "MESH"]
        if not meshes:
            raise InputProblem("Select at least one mesh object (a scan) to complete.")
        sensor = self._sensor(context, meshes)
        workdir = jobs.client(context).new_workdir()
        scans, self._sources, self._notes = [], [], []
        for k, obj in enumerate(meshes):
            verts, faces, note = read_world_geometry(obj, depsgraph)
            if note:
                self._notes.append(note)
            model_axes = apply(BLENDER_TO_MODEL, verts)
            scan = {
                "vertices": save_array(workdir, f"scan{k}_v", model_axes),
                "faces": save_array(workdir, f"scan{k}_f", faces) if faces is not None else None,
            }
            if sensor is not None:
                scan["sensor"] = sensor
            scans.append(scan)
            self._sources.append(obj.name)
        skipped = [o.name for o in context.selected_objects if o.type != "MESH"]
        if skipped:
            self._notes.append(f"skipped non-mesh objects: {', '.join(skipped)}")
        params = {**_common(context), "scans": scans, "resolution": self.resolution, "preset": self.quality}
        params["placement"] = self.placement
        params["normals"] = self.normals
        params["alternatives"] = self.alternatives
        return "complete", params, workdir

    def apply(self, context, result):
        # every shape to add: the completions, then their alternatives (each with its own placement)
        shapes, maps, placements, names, collections, choices = [], [], [], [], [], []
        for name, shape in zip(self._sources, result["shapes"], strict=True):
            src = bpy.data.objects.get(name)
            if src is None:
                raise InputProblem(f"'{name}' was deleted while it was being completed.")
            world = np.array(src.matrix_world, np.float64)
            coll = src.users_collection[0] if src.users_collection else context.collection
            group = uuid.uuid4().hex  # ties this scan's completion to its alternatives
            for j, placed in enumerate([shape, *shape.get("alternatives", [])]):
                to_world = MODEL_TO_BLENDER @ np.asarray(placed["model_to_input"], np.float64)
                shapes.append(placed)
                maps.append(np.linalg.inv(world) @ to_world)
                placements.append(world)
                names.append(f"{name} completed" + (f" (alternative {j})" if j else ""))
                collections.append(coll)
                choices.append((group, j))
        settings = {"resolution": self.resolution, "fit": self.quality, "scans": self._sources}
        everything = {"shapes": shapes, "model_identity": result.get("model_identity", "")}
        objs = _shape_objects(context, everything, "completed", settings, maps, names, placements)
        shown, hidden = [], []
        for obj, coll, placed, (group, choice) in zip(objs, collections, shapes, choices, strict=True):
            _link(context, obj, coll)
            obj["deepsdf_fit_loss"] = float(placed.get("loss", float("nan")))
            obj[PROP_GROUP], obj[PROP_CHOICE] = group, choice
            alt = choice > 0
            if alt:
                obj.hide_set(True)  # over the scan like the result: shown one at a time from the outliner
            (hidden if alt else shown).append(obj)
        _select_only(context, shown)
        summary = f"Completed {len(shown)} scan(s)."
        if self.alternatives:
            fewer = len(hidden) < self.alternatives * len(shown)
            summary += f" {len(hidden)} alternative(s) added hidden" + (
                " (the fit found fewer distinct shapes)." if fewer else "."
            )
        return summary + (" " + "; ".join(self._notes) if self._notes else "")


class DEEPSDF_OT_next_alternative(bpy.types.Operator):
    """Hide this completion and show the next of the shapes found for the same scan (its alternatives)"""

    bl_idname = "deepsdf.next_alternative"
    bl_label = "Show Next Alternative"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT" and len(completion_choices(context.active_object)) > 1

    def execute(self, context):
        # poll has checked that the active object is a completion with alternatives
        in_layer = [o for o in completion_choices(context.active_object) if o.name in context.view_layer.objects]
        if len(in_layer) < 2:
            self.report({"ERROR"}, "The completion's alternatives are not in this view layer.")
            return {"CANCELLED"}
        current = context.active_object if context.active_object in in_layer else in_layer[0]
        shown = in_layer[(in_layer.index(current) + 1) % len(in_layer)]
        for obj in in_layer:
            obj.hide_set(obj != shown)
        _select_only(context, [shown])
        k, choice = in_layer.index(shown), int(shown.get(PROP_CHOICE, 0))
        which = f"alternative {choice}" if choice else "the completion"
        loss = shown.get("deepsdf_fit_loss")
        self.report(
            {"INFO"},
            f"Showing '{shown.name}' ({which}, {k + 1} of {len(in_layer)}"
            + (f", fit loss {loss:.3g})." if loss is not None else ")."),
        )
        return {"FINISHED"}


class DEEPSDF_OT_generate(_EngineOperator, bpy.types.Operator):
    """Generate new shapes of the learned class, laid out in a grid at the 3D cursor"""

    bl_idname = "deepsdf.generate"
    bl_label = "Generate Shapes"
    bl_options = {"REGISTER", "UNDO"}

    count: IntProperty(name="Count", default=6, min=1, max=100)
    seed: IntProperty(name="Seed", default=0, min=0)
    temperature: FloatProperty(
        name="Temperature",
        description="Spread around the mean shape (1: like the training set)",
        default=0.8,
        min=0.0,
        max=3.0,
    )
    resolution: IntProperty(name="Resolution", default=128, min=16, max=512)

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT"

    def invoke(self, context, event):
        self.resolution = get_prefs(context).resolution
        return super().invoke(context, event)

    def build(self, context):
        params = {**_common(context), "count": self.count, "seed": self.seed, "temperature": self.temperature}
        params["resolution"] = self.resolution
        return "generate", params, None

    def apply(self, context, result):
        shapes = result.get("shapes", [])
        cols = max(1, math.ceil(math.sqrt(len(shapes))))
        cursor = np.array(context.scene.cursor.location, np.float64)
        maps, placements, names = [], [], []
        for k, shape in enumerate(shapes):
            row, col = divmod(k, cols)
            if shape.get("mesh") is not None:
                maps.append(_upright_map(load_array(shape["mesh"]["vertices"])))
            else:
                maps.append(MODEL_TO_BLENDER)
            placements.append(translation(cursor + np.array([col * GRID_SPACING, -row * GRID_SPACING, 0.0])))
            names.append(f"DeepSDF seed{self.seed} #{k}")
        settings = {"seed": self.seed, "temperature": self.temperature, "resolution": self.resolution}
        objs = _shape_objects(context, result, "generated", settings, maps, placements=placements, names=names)
        for obj in objs:
            _link(context, obj)
        _select_only(context, objs)
        failed = len(shapes) - len(objs)
        if not objs:
            raise InputProblem("None of the sampled codes has a surface; lower the temperature.")
        return f"Generated {len(objs)} shape(s)" + (f"; {failed} had no surface." if failed else ".")


class DEEPSDF_OT_interpolate(_EngineOperator, bpy.types.Operator):
    """Morph between the two selected DeepSDF objects (or two training shapes) in a row of steps"""

    bl_idname = "deepsdf.interpolate"
    bl_label = "Interpolate Shapes"
    bl_options = {"REGISTER", "UNDO"}

    steps: IntProperty(name="Steps", description="Shapes including both ends", default=5, min=2, max=64)
    mode: EnumProperty(
        name="Mode",
        items=[
            ("linear", "Linear", "Straight line between codes"),
            ("spherical", "Spherical", "Slerp: keeps code magnitude"),
        ],
        default="linear",
    )
    resolution: IntProperty(name="Resolution", default=64, min=16, max=512)
    index_a: IntProperty(
        name="Training Shape A", description="Used when fewer than two DeepSDF objects are selected", default=0, min=0
    )
    index_b: IntProperty(name="Training Shape B", default=1, min=0)
    animate: BoolProperty(name="Animate", description="Stack the steps and show one per frame", default=False)

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT"

    def invoke(self, context, event):
        self.resolution = get_prefs(context).preview_resolution
        return super().invoke(context, event)

    def _ends(self, context):
        objs = [o for o in context.selected_objects if is_deepsdf(o)]
        if len(objs) >= 2:
            active = context.active_object
            a = active if active in objs else objs[0]
            b = next(o for o in objs if o is not a)
            if a[PROP_MODEL] != b[PROP_MODEL]:
                raise InputProblem(f"'{a.name}' and '{b.name}' come from different models; they cannot be morphed.")
            if a.get(PROP_SOURCE) != _common(context)["model"]:
                raise InputProblem(
                    f"'{a.name}' was made with another model ({a.get(PROP_SOURCE)}); select that model in the preferences."
                )
            return a, b
        if len([o for o in context.selected_objects if o.type == "MESH"]) >= 2:
            raise InputProblem("Select two objects made by DeepSDF (or none, to morph training shapes).")
        return None

    def build(self, context):
        params = {**_common(context), "steps": self.steps, "mode": self.mode, "resolution": self.resolution}
        ends = self._ends(context)
        if ends:
            params["codes"] = [stored_code(o).tolist() for o in ends]
            self._origin = np.array(ends[0].matrix_world, np.float64)
            self._names = (ends[0].name, ends[1].name)
        else:
            params["indices"] = [self.index_a, self.index_b]
            self._origin = translation(np.array(context.scene.cursor.location, np.float64))
            self._names = (f"training {self.index_a}", f"training {self.index_b}")
        return "interpolate", params, None

    def apply(self, context, result):
        shapes = result.get("shapes", [])
        base = self._origin.copy()
        maps, placements, names = [], [], []
        for k, shape in enumerate(shapes):
            v = load_array(shape["mesh"]["vertices"]) if shape.get("mesh") else np.zeros((1, 3), np.float32)
            maps.append(_upright_map(v))
            offset = 0.0 if self.animate else k * GRID_SPACING
            placements.append(translation(base[:3, 3] + [offset, 0.0, 0.0]))
            names.append(f"DeepSDF morph {k}/{len(shapes) - 1}")
        settings = {"from": self._names[0], "to": self._names[1], "steps": self.steps, "mode": self.mode}
        objs = _shape_objects(context, result, "interpolated", settings, maps, names, placements)
        for obj in objs:
            _link(context, obj)
        if self.animate:
            start = context.scene.frame_current
            for k, obj in enumerate(objs):
                for frame in (start + k - 1, start + k, start + k + 1):
                    hidden = frame != start + k
                    obj.hide_viewport = obj.hide_render = hidden
                    obj.keyframe_insert("hide_viewport", frame=frame)
                    obj.keyframe_insert("hide_render", frame=frame)
            context.scene.frame_end = max(context.scene.frame_end, start + len(objs) - 1)
            context.scene.frame_set(start)
        _select_only(context, objs)
        return f"Interpolated {len(objs)} steps from {self._names[0]} to {self._names[1]}."


class DEEPSDF_OT_remesh(_EngineOperator, bpy.types.Operator):
    """Rebuild the active DeepSDF object's mesh from its stored code at another resolution"""

    bl_idname = "deepsdf.remesh"
    bl_label = "Remesh DeepSDF Object"
    bl_options = {"REGISTER", "UNDO"}

    resolution: IntProperty(name="Resolution", default=256, min=16, max=1024)
    normals: BoolProperty(name="SDF Normals", default=True)

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT" and is_deepsdf(context.active_object)

    def build(self, context):
        obj = context.active_object
        if not is_deepsdf(obj):
            raise InputProblem("The active object was not made by DeepSDF (it has no stored code).")
        if obj.get(PROP_SOURCE) != _common(context)["model"]:
            raise InputProblem(
                f"'{obj.name}' was made with another model ({obj.get(PROP_SOURCE)}); select it in the preferences."
            )
        self._target = obj.name
        params = {
            **_common(context),
            "code": stored_code(obj).tolist(),
            "resolution": self.resolution,
            "normals": self.normals,
        }
        return "remesh", params, None

    def apply(self, context, result):
        obj = bpy.data.objects.get(self._target)
        shape = result["shapes"][0]
        if obj is None:
            raise InputProblem(f"'{self._target}' was deleted while it was being remeshed.")
        if shape.get("mesh") is None:
            raise InputProblem(shape.get("error", "The code has no surface."))
        m = stored_map(obj)
        n = load_array(shape["mesh"].get("normals"))
        if n is not None:
            n = (n @ m[:3, :3].T).astype(np.float32)
            n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
        old = obj.data
        obj.data = new_mesh(
            old.name, apply(m, load_array(shape["mesh"]["vertices"])), load_array(shape["mesh"]["faces"]), n
        )
        for mat in old.materials:
            obj.data.materials.append(mat)
        settings = json.loads(obj.get("deepsdf_settings", "{}"))
        settings["resolution"] = self.resolution
        obj["deepsdf_settings"] = json.dumps(settings)
        if old.users == 0:
            bpy.data.meshes.remove(old)
        return f"Remeshed '{obj.name}' at {self.resolution}^3 ({len(obj.data.vertices):,} vertices)."


class DEEPSDF_OT_check_engine(bpy.types.Operator):
    """Start the engine and report its Python, PyTorch, device and model"""

    bl_idname = "deepsdf.check_engine"
    bl_label = "Check Engine"

    def execute(self, context):
        prefs = get_prefs(context)
        if jobs.busy():
            self.report({"ERROR"}, "A DeepSDF job is running; check the engine when it ends.")
            return {"CANCELLED"}
        try:
            job, info = jobs.run_sync("check", _common(context), None, context, timeout=300)
            job.cleanup()
        except WorkerError as exc:
            prefs.last_check = f"Problem: {exc}"
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        model = info.get("model") or {}
        lines = [
            f"Python {info['python']}, PyTorch {info['torch']}, device {info['device']}",
            f"Model: {model.get('class_name', '?')} ({model.get('num_shapes', '?')} shapes, code length {model.get('code_length', '?')})",
        ]
        prefs.last_check = "\n".join(lines)
        self.report({"INFO"}, " | ".join(lines))
        return {"FINISHED"}


class DEEPSDF_OT_cancel_job(bpy.types.Operator):
    """Stop the running DeepSDF job; the scene stays as it was"""

    bl_idname = "deepsdf.cancel_job"
    bl_label = "Cancel DeepSDF Job"

    @classmethod
    def poll(cls, context):
        return jobs.busy()

    def execute(self, context):
        jobs.job_state().cancel_requested = True
        jobs.cancel()
        return {"FINISHED"}
