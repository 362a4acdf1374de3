"""Time a scan completion with an unknown placement under several placement settings, in one run.

    python benchmarks/bench_completion.py --device cpu --repeats 1 --json bench_out/completion.json

Completes the bundled example scan (``examples/scan_chair.ply``; its vertices as a point
cloud, the depth grid's faces left out, with its sensor position) with the bundled
chairs model, the way ``reconstruct`` does (``auto`` preset, 128^3 mesh), once per
repeat under each setting, in turns so that machine load drifts hit all alike:
``default`` (the shipped ``PlacementConfig``) and each named override (``alternatives-2``:
two alternatives meshed too). Prints seconds per setting, the ratio to ``default``, and each setting's refit
loss (the same loss means the same winner). A warm-up completion runs first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engine  # noqa: E402
from engine import api  # noqa: E402
from engine.fitting import fit_preset  # noqa: E402
from engine.meshing import MeshConfig  # noqa: E402
from engine.meshio import load_geometry  # noqa: E402
from engine.placement import PlacementConfig  # noqa: E402

SETTINGS: dict[str, dict] = {
    "default": {},
    # the refit pool before session 8: the searched codes refitted too
    "searched-codes": {"refit_searched_codes": True},
    # no translation polish (the default before session 13 polished nothing; now single views get one round)
    "no-polish": {"offset_rounds": 0},
    "offset-polish-2": {"offset_rounds": 2},
    # two alternatives meshed beside the result (an argument of reconstruct, not of the placement)
    "alternatives-2": {"alternatives": 2},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--settings", nargs="+", default=["default", "searched-codes"], choices=sorted(SETTINGS))
    p.add_argument("--json", help="write the timings here")
    args = p.parse_args()
    if "default" not in args.settings:
        args.settings.insert(0, "default")
    points, _ = load_geometry(REPO / "examples" / "scan_chair.ply")
    meta = json.loads((REPO / "examples" / "scan_chair.json").read_text())
    sensor = np.asarray(meta["sensor"], np.float64)
    model = engine.open_model("chairs", args.device)
    fit = fit_preset("auto", model.device)
    mesh = MeshConfig(resolution=args.resolution)

    def complete(name: str) -> tuple[float, float]:
        overrides = dict(SETTINGS[name])
        alternatives = overrides.pop("alternatives", 0)
        placement = replace(PlacementConfig(), **overrides)
        t0 = time.perf_counter()
        rec = api.reconstruct(
            model, points, None, sensor=sensor, fit=fit, mesh=mesh, placement=placement, alternatives=alternatives
        )
        if model.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        return time.perf_counter() - t0, rec.loss

    complete("default")  # warm-up: imports, allocator, first-call costs
    seconds: dict[str, list[float]] = {n: [] for n in args.settings}
    losses: dict[str, float] = {}
    for _ in range(args.repeats):
        for name in args.settings:
            dt, loss = complete(name)
            seconds[name].append(dt)
            losses[name] = loss
    base = float(np.mean(seconds["default"]))
    print(f"{len(points)} points, device {model.device}, preset auto, {args.repeats} repeat(s)")
    print(f"{'setting':18s} {'seconds':>9s} {'x default':>10s} {'refit loss':>12s}")
    report = {}
    for name in args.settings:
        mean = float(np.mean(seconds[name]))
        print(f"{name:18s} {mean:9.1f} {mean / base:10.2f} {losses[name]:12.6f}")
        report[name] = {"seconds": seconds[name], "ratio": mean / base, "loss": losses[name]}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": str(model.device), "settings": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
