"""Completion of real (artist-made, CC0) chairs and stools with the bundled chairs model.

    bash scripts/fetch_data.sh                       # CC0 furniture into ~/.cache/deepsdf-data
    python benchmarks/real_chairs.py --furniture ~/.cache/deepsdf-data/furniture/blendswap-cc-0 \
        --out docs/quality --name real_chairs

The bundled model learned procedural chairs only. Each real seat (BlendSwap CC0
models from Debian's sweethome3d-furniture, y up, mostly not watertight) is put in
the model frame with the reference normalisation, scanned once by the virtual
depth camera (160 x 120, 35 degrees round, 25 above, 0.5 % depth noise), moved
into a random pose (yaw, scale x0.7-1.3, offset up to 2 units: what a user's scene
looks like) and completed the way ``reconstruct`` does (placement search, refit,
sensor position known). Scores in the model frame against the whole real mesh:
Chamfer (reference definition), F-score at 1 % and 2 %. Writes a picture grid
(real mesh / scan / completion), JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engine  # noqa: E402
from engine.completion_eval import random_pose  # noqa: E402
from engine.frames import apply_matrix, reference_normalization, to_model_frame  # noqa: E402
from engine.metrics import chamfer_distance, f_score, sample_surface  # noqa: E402
from engine.render import image_grid, render_mesh, render_points, save_png  # noqa: E402
from engine.scan import orbit_camera, simulate_scan  # noqa: E402

SEATS = ["oakChair", "plasticChair", "chair", "chair2", "antiqueChair", "designChair", "foldingChair",
         "osakaChair", "chairWithCushion", "armchair", "modernArmchair", "winchesterArmchair", "relaxChair",
         "stool", "stool2", "bench", "pianoBench", "deckChair"]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--furniture", required=True, help="folder with <name>/<name>.obj (BlendSwap CC0)")
    p.add_argument("--model", default="chairs")
    p.add_argument("--out", default="docs/quality")
    p.add_argument("--name", default="real_chairs")
    p.add_argument("--resolution", type=int, default=96)
    p.add_argument("--noise", type=float, default=0.005, help="depth noise, fraction of the object's size")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="auto", help="fit preset (auto: default on a GPU, fast on a CPU)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    root = Path(args.furniture)
    names = [n for n in SEATS if (root / n / f"{n}.obj").is_file()]
    if args.limit:
        names = names[: args.limit]
    if not names:
        print(f"no CC0 seats under {root}", file=sys.stderr)
        return 1
    model = engine.open_model(args.model, args.device)
    fit = engine.fit_preset(args.preset, model.device)
    rows, tiles = [], []
    for k, name in enumerate(names):
        v, f = engine.load_geometry(root / name / f"{name}.obj")
        offset, scale = reference_normalization(v)
        local = to_model_frame(v, offset, scale)
        truth, _ = sample_surface(local, f, 30_000, seed=k)
        size = float(np.linalg.norm(local.max(0) - local.min(0)))
        cam = orbit_camera(35, 25, 2.5, width=160, height=120)
        scan = simulate_scan(local, f, cam, args.noise * size, seed=args.seed + k)
        m2i = random_pose("similarity", np.random.default_rng([args.seed, k]), 0.3, 2.0)
        t0 = time.perf_counter()
        rec = engine.reconstruct(
            model,
            apply_matrix(m2i, scan.points),
            None,
            sensor=apply_matrix(m2i, np.asarray(cam.position)[None])[0],
            fit=fit,
            mesh=engine.MeshConfig(resolution=args.resolution),
        )
        seconds = time.perf_counter() - t0
        done = rec.mesh.apply_matrix(np.linalg.inv(m2i))
        pts, _ = sample_surface(done.vertices, done.faces, 30_000, seed=k)
        row = {
            "name": name,
            "chamfer": chamfer_distance(pts, truth),
            "f_0.01": f_score(pts, truth, 0.01),
            "f_0.02": f_score(pts, truth, 0.02),
            "scan_points": len(scan.points),
            "scale_error": rec.scale * float(np.cbrt(np.linalg.det(m2i[:3, :3]))) - 1.0,
            "seconds": seconds,
        }
        rows.append(row)
        print(
            f"{name:20s} Chamfer x1e3 {row['chamfer'] * 1e3:6.2f}  F@1% {row['f_0.01']:.3f}  "
            f"F@2% {row['f_0.02']:.3f}  scale error {row['scale_error']:+.3f}  {seconds:.1f} s",
            flush=True,
        )
        tiles += [
            render_mesh(local, f, 180),
            render_points(scan.points, 180),
            render_mesh(done.vertices, done.faces, 180),
        ]
    cd = np.array([r["chamfer"] for r in rows])
    summary = {
        "shapes": len(rows),
        "chamfer_mean_x1e3": float(cd.mean() * 1e3),
        "chamfer_median_x1e3": float(np.median(cd) * 1e3),
        "f_0.01": float(np.mean([r["f_0.01"] for r in rows])),
        "f_0.02": float(np.mean([r["f_0.02"] for r in rows])),
        "seconds_mean": float(np.mean([r["seconds"] for r in rows])),
        "preset": args.preset,
        "device": str(model.device),
    }
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    save_png(out / "images" / f"{args.name}.png", image_grid(tiles, columns=6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
