"""The whole product in one run, headless: build the extension, install it in Blender (the bpy
module), complete a scan, generate variants, interpolate, save a .blend and render a PNG.

    python scripts/demo.py [--model MODEL] [--scan SCAN.ply] [--resolution 128] [--out out]

MODEL defaults to the bundled chair model when the engine ships one, else the
reference fixture. SCAN defaults to the bundled example scan (examples/), else a
simulated partial scan of the model's first training shape. Prints each step and
its time (the "click to object" time of each operator).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def log(step: str, seconds: float | None = None) -> None:
    print(f"[demo] {step}" + (f"  ({seconds:.2f} s)" if seconds is not None else ""), flush=True)


def default_model() -> str:
    bundled = REPO / "engine" / "models" / "chairs.dsdf"
    if bundled.is_file():
        return str(bundled)
    return str(REPO.parent / "shared" / "fixtures" / "deepsdf_reference" / "experiment")


def default_scan(model: str, workdir: Path) -> Path:
    """The bundled example scan, or a one-view scan of the model's first training shape."""
    bundled = REPO / "examples" / "scan_chair.ply"
    if bundled.is_file():
        return bundled
    import subprocess

    path = workdir / "scan.ply"
    code = (
        "import sys, numpy as np, trimesh\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import engine\n"
        f"m = engine.open_model({model!r}, 'cpu')\n"
        "mesh = engine.extract_mesh(m, m.num_shapes - 1, engine.MeshConfig(resolution=96))\n"
        "t = trimesh.Trimesh(mesh.vertices, mesh.faces)\n"
        "view = np.array([0.4, 0.3, 1.0]); view /= np.linalg.norm(view)\n"
        "keep = t.face_normals @ view > 0.1\n"  # faces seen from the front-right: a one-view scan
        "part = trimesh.Trimesh(t.vertices, t.faces[keep]); part.remove_unreferenced_vertices()\n"
        "part.apply_scale(1.5); part.apply_translation([0.0, 0.0, 0.0])\n"
        f"part.export({str(path)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--scan", default=None)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument(
        "--quality", default="auto", help="completion fit: auto (default on a GPU, fast on a CPU), fast, default"
    )
    p.add_argument("--out", default="out")
    p.add_argument("--render-size", type=int, nargs=2, default=[1600, 900])
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="deepsdf-demo-"))
    model = args.model or default_model()
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    import build

    zip_path = build.main(["--no-validate"])
    log(f"built the extension {zip_path.name}", time.perf_counter() - t0)

    t0 = time.perf_counter()
    scan_path = Path(args.scan) if args.scan else default_scan(model, workdir)
    log(f"scan: {scan_path}", time.perf_counter() - t0)

    os.environ["BLENDER_USER_RESOURCES"] = str(workdir / "blender-user")
    t0 = time.perf_counter()
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.ops.extensions.package_install_files(
        filepath=str(zip_path), repo="user_default", enable_on_install=True
    ) == {"FINISHED"}
    prefs = bpy.context.preferences.addons["bl_ext.user_default.deepsdf_blender"].preferences
    if Path(model).is_dir():
        prefs.model_source, prefs.experiment_dir = "EXPERIMENT", model
    else:
        prefs.model_source, prefs.model_file = "FILE", model
    prefs.device = "auto"
    log(f"started Blender {bpy.app.version_string} headless and installed the extension", time.perf_counter() - t0)

    t0 = time.perf_counter()
    bpy.ops.deepsdf.check_engine()
    log(f"engine: {prefs.last_check.replace(chr(10), ' | ')}", time.perf_counter() - t0)

    import numpy as np
    import trimesh

    scan_mesh = trimesh.load(scan_path, process=False)
    mesh = bpy.data.meshes.new("Scan")
    faces = getattr(scan_mesh, "faces", np.zeros((0, 3), int))
    # the scan file is y-up like the engine (glTF/PLY convention): stand it up in Blender's z-up
    verts = np.asarray(scan_mesh.vertices)[:, [0, 2, 1]] * np.array([1, -1, 1])
    mesh.from_pydata(verts.tolist(), [], np.asarray(faces).tolist())
    scan = bpy.data.objects.new("Scan", mesh)
    bpy.context.collection.objects.link(scan)
    scan.location = (-3.0, 0.0, -float(verts[:, 2].min()))
    scan.color = (0.9, 0.35, 0.25, 1.0)
    bpy.context.view_layer.update()
    for o in bpy.context.view_layer.objects:
        o.select_set(o is scan)
    bpy.context.view_layer.objects.active = scan

    t0 = time.perf_counter()
    assert bpy.ops.deepsdf.complete(resolution=args.resolution, quality=args.quality) == {"FINISHED"}
    completed = bpy.data.objects["Scan completed"]
    completed.location.x += 2.6  # beside the scan; it was made exactly over it
    completed.color = (0.8, 0.8, 0.82, 1.0)
    log(
        f"completed the scan at {args.resolution}^3, {args.quality} fit ({len(completed.data.vertices):,} vertices)",
        time.perf_counter() - t0,
    )

    bpy.context.scene.cursor.location = (3.5, 0.0, 0.0)
    t0 = time.perf_counter()
    assert bpy.ops.deepsdf.generate(count=6, seed=7, temperature=0.8, resolution=args.resolution) == {"FINISHED"}
    variants = [o for o in bpy.data.objects if o.get("deepsdf_kind") == "generated"]
    for o in variants:
        o.color = (0.35, 0.55, 0.9, 1.0)
    log(f"generated {len(variants)} variants at {args.resolution}^3", time.perf_counter() - t0)

    a, b = sorted(variants, key=lambda o: o.name)[:2]
    for o in bpy.context.view_layer.objects:
        o.select_set(o in (a, b))
    bpy.context.view_layer.objects.active = a
    t0 = time.perf_counter()
    assert bpy.ops.deepsdf.interpolate(steps=5, resolution=max(48, args.resolution // 2)) == {"FINISHED"}
    steps = [o for o in bpy.data.objects if o.get("deepsdf_kind") == "interpolated"]
    for k, o in enumerate(sorted(steps, key=lambda o: o.name)):
        o.location = (-3.0 + 2.4 * k, -7.0, o.location.z)
        o.color = (0.4, 0.75, 0.45, 1.0)
    log(f"interpolated {len(steps)} steps between '{a.name}' and '{b.name}'", time.perf_counter() - t0)

    t0 = time.perf_counter()
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location = (2.5, -20.0, 12.0)
    from mathutils import Vector

    cam.rotation_euler = (Vector((2.5, -2.5, 0.5)) - cam.location).to_track_quat("-Z", "Y").to_euler()
    cam.data.lens = 32
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "OBJECT"
    scene.display.shading.show_shadows = True
    scene.render.resolution_x, scene.render.resolution_y = args.render_size
    scene.render.film_transparent = False
    scene.render.filepath = str(out / "demo.png")
    bpy.ops.render.render(write_still=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "demo.blend"))
    log(f"saved {out / 'demo.blend'} and rendered {out / 'demo.png'}", time.perf_counter() - t0)
    log("done", time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
