"""Benchmark the engine's meshing and fitting on this machine, printing ratios measured in one run.

Each measurement runs in its own child process so its peak memory (max RSS) is
its own. The model is the reference fixture (the `paper` decoder, 1.84 M params)
or any model given with --model.

    python benchmarks/bench_engine.py --resolutions 128 256 --fit-presets reference default \
        --dense 128 --json bench_out/engine.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_MODEL = REPO.parent / "shared" / "fixtures" / "deepsdf_reference" / "experiment"
# Reference DeepSDF on a 2-core CPU (../shared/DEEPSDF_REFERENCE.md): seconds.
REFERENCE_SECONDS = {"mesh_128": 91.0, "mesh_256": 688.0, "fit_reference": 610.0}


def _child(task: dict, queue: mp.Queue) -> None:
    import numpy as np
    import torch

    import engine
    from engine.metrics import compare_meshes

    torch.manual_seed(0)
    model = engine.open_model(task["model"], task["device"])
    out: dict = {}
    t0 = time.perf_counter()
    if task["kind"] == "mesh" and task["method"] == "reference":
        from benchmarks.reference_loops import dense_grid_reference
        from engine.meshing import marching_cubes

        values = dense_grid_reference(model.decoder, model.code(task["index"]).detach(), task["resolution"])
        verts, faces = marching_cubes(values)
        out.update(seconds=time.perf_counter() - t0, points=values.size, faces=len(faces))
        np.savez(task["save"], vertices=verts, faces=faces)
    elif task["kind"] == "mesh":
        cfg = engine.MeshConfig(resolution=task["resolution"], method=task["method"])
        mesh = engine.extract_mesh(model, task["index"], cfg)
        out.update(seconds=time.perf_counter() - t0, points=mesh.stats["points_evaluated"], faces=len(mesh.faces))
        np.savez(task["save"], vertices=mesh.vertices, faces=mesh.faces)
    else:
        obs = engine.observations_from_sdf_samples(task["samples"])
        if task["preset"] == "reference-loop":
            from benchmarks.reference_loops import fit_reference

            code = fit_reference(model.decoder, obs, model.code_length)
            t_fit = time.perf_counter() - t0
            from engine.fitting import code_losses

            loss = float(code_losses(model, torch.from_numpy(code)[None], obs)[0])
            result = engine.FitResult(code, loss, np.zeros(1), code[None])
            fit = engine.fit_preset("reference")
        else:
            fit = engine.fit_preset(task["preset"])
            result = engine.fit_code(model, obs, fit)
            t_fit = time.perf_counter() - t0
        mesh = engine.extract_mesh(model, result.code, engine.MeshConfig(resolution=task["eval_resolution"]))
        truth = engine.extract_mesh(model, task["index"], engine.MeshConfig(resolution=task["eval_resolution"]))
        m = compare_meshes((mesh.vertices, mesh.faces), (truth.vertices, truth.faces))
        out.update(seconds=t_fit, loss=result.loss, iterations=fit.iterations, chamfer_to_training_code=m.chamfer)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(out)


def run_child(task: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(task, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--index", type=int, default=2, help="training shape to mesh and refit (fixture: 2 = chair)")
    p.add_argument("--samples", default=None, help="SdfSamples npz to fit (default: the fixture's chair)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolutions", type=int, nargs="*", default=[128, 256])
    p.add_argument("--dense", type=int, nargs="*", default=[128], help="resolutions also meshed densely")
    p.add_argument(
        "--reference-dense",
        type=int,
        nargs="*",
        default=[128, 256],
        help="resolutions also meshed the reference's way (dense, code per row, fp32, batches of 32^3)",
    )
    p.add_argument(
        "--fit-presets",
        nargs="*",
        default=["reference-loop", "reference", "default", "fast"],
        help="reference-loop = the reference's own fitting loop re-run here; the others are our presets",
    )
    p.add_argument("--eval-resolution", type=int, default=128)
    p.add_argument("--json", default="bench_out/engine.json")
    args = p.parse_args()
    samples = args.samples or str(
        REPO.parent / "shared/fixtures/deepsdf_reference/data/SdfSamples/Analytic/shapes/chair.npz"
    )
    out_dir = Path(args.json).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch

    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "model": args.model,
        "mesh": {},
        "fit": {},
    }
    base = {"model": args.model, "device": args.device, "index": args.index}
    for res in sorted(set(args.resolutions) | set(args.dense) | set(args.reference_dense)):
        methods = [
            m
            for m, wanted in (
                ("sparse", res in args.resolutions),
                ("dense", res in args.dense),
                ("reference", res in args.reference_dense),
            )
            if wanted
        ]
        for method in methods:
            r = run_child(
                {
                    **base,
                    "kind": "mesh",
                    "resolution": res,
                    "method": method,
                    "save": str(out_dir / f"mesh_{method}_{res}.npz"),
                }
            )
            results["mesh"][f"{method}_{res}"] = r
            print(
                f"mesh {method:6s} {res:4d}^3: {r['seconds']:8.2f} s  {r['points']:>10,d} points  "
                f"peak {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        for other in [m for m in ("dense", "reference") if m in methods and "sparse" in methods]:
            import numpy as np
            from scipy.spatial import cKDTree

            from engine.metrics import chamfer_distance

            a, b = (np.load(out_dir / f"mesh_{m}_{res}.npz") for m in ("sparse", other))
            # on the vertices themselves: identical surfaces give exactly 0 (random
            # surface samples would show their own sampling noise instead)
            cd = chamfer_distance(a["vertices"], b["vertices"])
            hd = max(
                cKDTree(b["vertices"]).query(a["vertices"])[0].max(),
                cKDTree(a["vertices"]).query(b["vertices"])[0].max(),
            )
            s, d = results["mesh"][f"sparse_{res}"], results["mesh"][f"{other}_{res}"]
            results["mesh"][f"ratio_{other}_{res}"] = {
                "speedup": d["seconds"] / s["seconds"],
                "points_ratio": d["points"] / s["points"],
                "vertex_chamfer": cd,
                "vertex_hausdorff": float(hd),
                "identical": bool(
                    a["faces"].shape == b["faces"].shape
                    and np.array_equal(a["faces"], b["faces"])
                    and np.allclose(a["vertices"], b["vertices"], atol=1e-5)
                ),
                "faces_sparse_other": [len(a["faces"]), len(b["faces"])],
            }
            print(
                f"  sparse vs {other} dense at {res}^3: {d['seconds'] / s['seconds']:.1f}x faster "
                f"({d['points'] / s['points']:.1f}x fewer points), vertex Chamfer {cd:.2e}, "
                f"Hausdorff {hd:.2e}, faces {len(a['faces'])} / {len(b['faces'])}",
                flush=True,
            )
    for preset in args.fit_presets:
        r = run_child(
            {**base, "kind": "fit", "preset": preset, "samples": samples, "eval_resolution": args.eval_resolution}
        )
        results["fit"][preset] = r
        print(
            f"fit {preset:10s}: {r['seconds']:8.2f} s  {r['iterations']} its  loss {r['loss']:.5f}  "
            f"Chamfer to training code {r['chamfer_to_training_code']:.2e}  peak {r['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    print("\nagainst the reference DeepSDF's published timings on a 2-core CPU:")
    for key, ref in REFERENCE_SECONDS.items():
        kind, _, what = key.partition("_")
        ours = results["mesh"].get(f"sparse_{what}") if kind == "mesh" else results["fit"].get(what)
        if ours:
            print(f"  {key:14s}: reference {ref:6.0f} s, ours {ours['seconds']:7.2f} s -> {ref / ours['seconds']:.1f}x")
    base_fit = results["fit"].get("reference-loop")
    if base_fit:
        print("\nfitting against the reference's own loop re-run in this run:")
        for name, r in results["fit"].items():
            if name == "reference-loop":
                continue
            print(
                f"  {name:10s}: {base_fit['seconds'] / r['seconds']:5.1f}x faster, Chamfer "
                f"{r['chamfer_to_training_code']:.2e} vs {base_fit['chamfer_to_training_code']:.2e}"
            )
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
