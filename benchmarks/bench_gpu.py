"""GPU benchmark: accuracy of each precision, meshing, fitting and training, measured in one run.

    python benchmarks/bench_gpu.py --model PATH_TO_PAPER_MODEL --samples CHAIR.npz --json out.json

Runs on whatever device it finds (CUDA first); on a CPU it is the same code at
smaller sizes (``--quick``), which is how the tests keep it working. Every ratio
is measured in this run against a reference-equivalent loop on the same device
(``benchmarks/reference_loops.py``: rows ``[code, xyz]``, weight norm per call,
fp32, frozen weights still requiring gradients). Sections that fail are
recorded with their error and the others still run.

What it prints last:
* the decoder's error in fp32 / tf32 / bf16 against float64 (relative, and the
  largest absolute error within 0.02 of the surface);
* meshing at 128^3 and 256^3: ours in each precision against the dense
  reference-equivalent grid (time, points evaluated, identical faces or the
  vertex Hausdorff distance);
* fitting: the reference loop (800 steps x 8000 samples) against our presets in
  each precision, with and without the CUDA graph (time, Chamfer to the
  training shape);
* fitting plus meshing at 256^3, the issue's H100 target;
* training samples per second against the reference-equivalent loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engine  # noqa: E402
from engine.device import compute_precision, describe_device, resolve_device  # noqa: E402
from engine.fitting import code_losses  # noqa: E402
from engine.meshing import marching_cubes  # noqa: E402
from engine.metrics import compare_meshes  # noqa: E402

FIXTURE = REPO.parent / "shared" / "fixtures" / "deepsdf_reference"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 3):
    """(median seconds over ``repeat`` runs after one warm-up, last result)."""
    result = fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    return float(max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max()))


def accuracy(model, index: int, device: torch.device, resolution: int = 128) -> dict:
    """Decoder error of each precision against float64 on random and near-surface points."""
    dec = model.decoder
    code = model.code(index).detach().reshape(1, -1)
    mesh = engine.extract_mesh(model, index, engine.MeshConfig(resolution=resolution, precision="fp32"))
    gen = torch.Generator().manual_seed(0)
    near = torch.from_numpy(mesh.vertices) + 0.01 * torch.randn(len(mesh.vertices), 3, generator=gen)
    points = torch.cat([torch.rand(100_000, 3, generator=gen) * 2 - 1, near]).to(device)
    import copy

    ref_dec = copy.deepcopy(dec).double()
    with torch.no_grad():
        ref = ref_dec.forward_codes(code.double(), points.double()[None])[0]
        out = {}
        for precision in ("fp32", "tf32", "bf16"):
            with compute_precision(device, precision):
                got = dec.forward_codes(code, points[None])[0].double()
            err = got - ref
            band = ref.abs() < 0.02
            out[precision] = {
                "relative": float(err.norm() / ref.norm()),
                "max_abs_near_surface": float(err[band].abs().max()),
                "finite": bool(torch.isfinite(got).all()),
            }
    return out


def meshing(model, index: int, device: torch.device, resolutions: list[int], precisions: list[str]) -> dict:
    from benchmarks.reference_loops import dense_grid_reference

    out: dict = {}
    code = model.code(index).detach()
    for res in resolutions:
        t_ref, values = timed(lambda res=res: dense_grid_reference(model.decoder, code, res), device, repeat=1)
        v_ref, f_ref = marching_cubes(values)
        out[f"reference_dense_{res}"] = {"seconds_grid": t_ref, "points": res**3, "faces": len(f_ref)}
        # (finest level, coarse levels): the default on CUDA is fp32 / bf16
        pairs = [("fp32", "fp32")] + [("fp32", p) for p in precisions[2:]] + [(p, p) for p in precisions[1:]]
        for precision, coarse in pairs:
            cfg = engine.MeshConfig(resolution=res, precision=precision, coarse_precision=coarse)
            t, mesh = timed(lambda cfg=cfg: engine.extract_mesh(model, index, cfg), device)
            same = mesh.faces.shape == f_ref.shape and np.array_equal(mesh.faces, f_ref)
            out[f"ours_{precision}_coarse_{coarse}_{res}"] = {
                "seconds": t,
                "seconds_sdf": mesh.stats["seconds_sdf"],
                "seconds_surface": mesh.stats["seconds_surface"],
                "points": mesh.stats["points_evaluated"],
                "faces": len(mesh.faces),
                "identical_faces_to_reference": bool(same),
                "vertex_hausdorff_to_reference": hausdorff(mesh.vertices, v_ref),
                "speedup_vs_reference_grid": t_ref / t,
            }
    return out


def fitting(model, index: int, samples: str, device: torch.device, precisions: list[str], quick: bool) -> dict:
    from benchmarks.reference_loops import fit_reference

    obs = engine.observations_from_sdf_samples(samples)
    truth = engine.extract_mesh(model, index, engine.MeshConfig(resolution=128, precision="fp32"))

    def chamfer(code: np.ndarray) -> float:
        mesh = engine.extract_mesh(model, code, engine.MeshConfig(resolution=128, precision="fp32"))
        return compare_meshes((mesh.vertices, mesh.faces), (truth.vertices, truth.faces)).chamfer

    out: dict = {}
    its = 40 if quick else 800
    t_ref, code = timed(lambda: fit_reference(model.decoder, obs, model.code_length, iterations=its), device, repeat=1)
    loss = float(code_losses(model, torch.from_numpy(code)[None].to(device), obs)[0])
    out["reference_loop"] = {"seconds": t_ref, "iterations": its, "loss": loss, "chamfer": chamfer(code)}
    runs = [("default", p, True) for p in precisions] + [("default", "fp32", False), ("fast", precisions[-1], True)]
    for preset, precision, graph in runs:
        cfg = engine.fit_preset(preset, precision=precision, cuda_graph=graph)
        if quick:
            cfg = engine.fit_preset(preset, precision=precision, cuda_graph=graph, iterations=10)
        t, result = timed(lambda cfg=cfg: engine.fit_code(model, obs, cfg), device)
        key = f"{preset}_{precision}" + ("_graph" if graph and device.type == "cuda" else "_eager")
        out[key] = {
            "seconds": t,
            "iterations": cfg.iterations,
            "loss": result.loss,
            "chamfer": chamfer(result.code),
            "speedup_vs_reference_loop": t_ref / t,
            "ran_as_cuda_graph": result.cuda_graph,
        }
    return out


def fit_and_mesh(model, samples: str, device: torch.device, resolution: int, quick: bool) -> dict:
    """The issue's H100 target: one code fitted and meshed at 256^3, default settings."""
    obs = engine.observations_from_sdf_samples(samples)
    out = {}
    for preset in ("default", "fast"):
        cfg = engine.fit_preset(preset, iterations=10) if quick else engine.fit_preset(preset)

        def run(cfg=cfg):
            code = engine.fit_code(model, obs, cfg).code
            return engine.extract_mesh(model, code, engine.MeshConfig(resolution=resolution))

        t, mesh = timed(run, device)
        out[preset] = {"seconds": t, "faces": len(mesh.faces), "resolution": resolution}
    return out


def training(device: torch.device, decoders: list[str], scenes: int, samples: int, steps: int, compile: bool) -> dict:
    from benchmarks.bench_train import our_loop, reference_loop

    out = {}
    for name in decoders:
        ref = reference_loop(name, scenes, samples, steps, device)
        amp = device.type == "cuda"
        ours = our_loop(name, scenes, samples, steps, device, amp=amp)
        row = {"reference_equivalent": ref, "ours": ours, "ratio": ours / ref, "rows_per_step": scenes * samples}
        if compile and device.type == "cuda":
            comp = our_loop(name, scenes, samples, steps, device, amp=True, compile=True)
            row.update(ours_compiled=comp, ratio_compiled=comp / ref)
        out[name] = row
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(FIXTURE / "experiment"), help="a paper-config model (default: the fixture)")
    p.add_argument("--samples", default=str(FIXTURE / "data/SdfSamples/Analytic/shapes/chair.npz"))
    p.add_argument("--index", type=int, default=2, help="training shape the samples belong to (fixture: 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    p.add_argument("--sections", nargs="*", default=["accuracy", "mesh", "fit", "fit_mesh", "train"])
    p.add_argument("--compile", action="store_true", help="also train with torch.compile")
    p.add_argument("--json", default="bench_out/gpu.json")
    args = p.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = engine.open_model(args.model, device)
    quick = args.quick
    precisions = ["fp32", "tf32", "bf16"] if device.type == "cuda" else ["fp32"]
    res = [32, 64] if quick else [128, 256]
    results: dict = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "model": args.model,
        "quick": quick,
    }
    sections = {
        "accuracy": lambda: accuracy(model, args.index, device, 48 if quick else 128),
        "mesh": lambda: meshing(model, args.index, device, res, precisions),
        "fit": lambda: fitting(model, args.index, args.samples, device, precisions, quick),
        "fit_mesh": lambda: fit_and_mesh(model, args.samples, device, res[-1], quick),
        "train": lambda: training(
            device,
            ["small"] if quick else ["small", "paper"],
            2 if quick else 64,
            512 if quick else 16384,
            2 if quick else 10,
            args.compile,
        ),
    }
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            results[name] = sections[name]()
        except Exception as exc:  # noqa: BLE001  (one failing section must not hide the others)
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    print_summary(results)
    return 0


def print_summary(r: dict) -> None:
    print(f"\n== {r['device']}, torch {r['torch']} ==")
    for name in ("accuracy", "mesh", "fit", "fit_mesh", "train"):
        sec = r.get(name)
        if sec is None:
            continue
        if "error" in sec:
            print(f"{name}: FAILED {sec['error']}")
            continue
        print(f"-- {name}")
        for key, row in sec.items():
            cells = []
            for k, v in row.items():
                if isinstance(v, float):
                    cells.append(f"{k}={v:.4g}")
                else:
                    cells.append(f"{k}={v}")
            print(f"  {key}: " + ", ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
