"""`small` versus `paper` decoder: training time, SDF accuracy and meshing/fitting speed, in one run.

    python benchmarks/bench_presets.py --epochs 150 --json bench_out/presets.json

Trains both presets with the same recipe on the reference fixture's data (three
shapes in the reference layout, including a chair), then reports for each: training
seconds, the mean clamped L1 error on all samples and the mean |SDF| error on
near-surface samples (|sdf| < 0.01), seconds to mesh a training shape at 128^3 and
to fit a code (default preset) to a shape's samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engine  # noqa: E402
from engine.training import TrainConfig, load_samples, train  # noqa: E402

FIXTURE = REPO.parent / "shared" / "fixtures" / "deepsdf_reference"


def sdf_errors(model, samples) -> tuple[float, float]:
    l1, near, n_near, n_all = 0.0, 0.0, 0, 0
    for i in range(len(samples)):
        rows = torch.cat([samples.pos[i], samples.neg[i]])
        pred = model.decoder.sdf(model.codes[i], rows[:, :3])
        truth = rows[:, 3]
        l1 += float((pred.clamp(-0.1, 0.1) - truth.clamp(-0.1, 0.1)).abs().sum())
        mask = truth.abs() < 0.01
        near += float((pred[mask] - truth[mask]).abs().sum())
        n_near += int(mask.sum())
        n_all += len(rows)
    return l1 / n_all, near / max(n_near, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(FIXTURE / "data"))
    p.add_argument("--split", default=str(FIXTURE / "split.json"))
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--json", default="bench_out/presets.json")
    args = p.parse_args()
    samples = load_samples(args.data, args.split)
    results = {}
    for name in ("small", "paper"):
        cfg = TrainConfig(decoder=name, epochs=args.epochs, scenes_per_batch=len(samples), samples_per_scene=8192,
                          lr_decoder=1e-3, lr_codes=2e-3, snapshot_every=10**9)  # fmt: skip
        res = train(samples, cfg, None, "cpu")
        model = res.model
        l1, near = sdf_errors(model, samples)
        t0 = time.perf_counter()
        mesh = engine.extract_mesh(model, len(samples) - 1, engine.MeshConfig(resolution=128))
        t_mesh = time.perf_counter() - t0
        obs = engine.Observations(
            torch.cat([samples.pos[-1], samples.neg[-1]])[:, :3].numpy(),
            torch.cat([samples.pos[-1], samples.neg[-1]])[:, 3].numpy(),
        )
        t0 = time.perf_counter()
        engine.fit_code(model, obs, engine.fit_preset("default"))
        t_fit = time.perf_counter() - t0
        results[name] = {
            "parameters": model.decoder.num_parameters(),
            "train_seconds": res.seconds,
            "train_samples_per_second": res.samples_per_second,
            "mean_clamped_l1": l1,
            "near_surface_abs_error": near,
            "mesh_128_seconds": t_mesh,
            "mesh_faces": len(mesh.faces),
            "fit_default_seconds": t_fit,
        }
        r = results[name]
        print(f"{name:6s} {r['parameters']:>9,d} params: train {r['train_seconds']:6.1f} s, L1 {l1:.5f}, "
              f"near-surface |err| {near:.5f}, mesh 128^3 {t_mesh:5.2f} s, fit {t_fit:5.2f} s", flush=True)  # fmt: skip
    s, pp = results["small"], results["paper"]
    print(f"small vs paper: {pp['mesh_128_seconds'] / s['mesh_128_seconds']:.1f}x faster meshing, "
          f"{pp['fit_default_seconds'] / s['fit_default_seconds']:.1f}x faster fitting, near-surface error "
          f"{s['near_surface_abs_error'] / pp['near_surface_abs_error']:.2f}x paper's")  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
