"""Quality report of a bundled model on held-out procedural shapes; writes Markdown, JSON and pictures.

    python benchmarks/quality_report.py --model engine/models/chairs.dsdf --data runs/chairs_data \
        --split recipes/chairs_heldout_split.json \
        --meshes runs/chairs_meshes --out docs/quality --name chairs

(a) reconstruction from the shape's full SDF samples (the reference's setting);
(b) completion from a simulated single-view depth scan (front-right, 25 deg above, 160 x 120,
    no noise), the scan normalised with the shape's own normalisation (known pose) and the
    sensor position known;
both scored against the held-out shape's surface samples in its original frame: Chamfer
(reference definition), F-score at 1 % and 2 % of the shape's radius, normal consistency.
Pictures: ground truth / scan / completion for a few held-out shapes, a latent
interpolation strip between two training shapes, and random samples from the code prior.
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
from engine.evaluation import evaluate_model  # noqa: E402
from engine.frames import to_model_frame  # noqa: E402
from engine.metrics import chamfer_distance, f_score, normal_consistency, sample_surface  # noqa: E402
from engine.prepare import read_point_cloud_ply  # noqa: E402
from engine.render import image_grid, render_mesh, render_points, save_png  # noqa: E402
from engine.scan import orbit_camera, simulate_scan  # noqa: E402
from engine.training import read_split  # noqa: E402


def completion_scores(model, data: Path, meshes: Path, entries, resolution: int, fit, pictures: int):
    rows, tiles = [], []
    for k, (ds, cls, inst) in enumerate(entries):
        with np.load(data / "NormalizationParameters" / ds / cls / f"{inst}.npz") as norm:
            offset, scale = norm["offset"].astype(np.float32), float(norm["scale"][0])
        v, f = engine.load_geometry(meshes / f"{inst}.obj")
        local = to_model_frame(v, offset, scale)
        cam = orbit_camera(35, 25, 2.5, width=160, height=120)
        scan = simulate_scan(local, f, cam, seed=k)
        t0 = time.perf_counter()
        obs = engine.observations_from_points(scan.points, sensor=np.asarray(cam.position, np.float32))
        result = engine.fit_code(model, obs, fit)
        mesh = engine.extract_mesh(model, result.code, engine.MeshConfig(resolution=resolution))
        seconds = time.perf_counter() - t0
        truth, truth_n = read_point_cloud_ply(data / "SurfaceSamples" / ds / cls / f"{inst}.ply")
        orig = mesh.transformed(offset, scale)
        pts, nrm = sample_surface(orig.vertices, orig.faces, 30_000, seed=k)
        size = 1.0 / (1.03 * scale)
        rows.append(
            {
                "name": inst,
                "chamfer": chamfer_distance(pts, truth),
                "f_score": {f"{t:g}": f_score(pts, truth, t * size) for t in (0.01, 0.02)},
                "normal_consistency": normal_consistency(pts, nrm, truth, truth_n),
                "scan_points": len(scan.points),
                "seconds": seconds,
            }
        )
        if k < pictures:
            tiles += [
                render_mesh(local, f, 200),
                render_points(scan.points, 200),
                render_mesh(mesh.vertices, mesh.faces, 200),
            ]
    return rows, tiles


def render_codes(model, codes, resolution: int = 96, size: int = 170) -> list[np.ndarray]:
    """Each code meshed and rendered; a grey tile where a code has no surface."""
    tiles = []
    for c in codes:
        try:
            m = engine.extract_mesh(model, c, engine.MeshConfig(resolution=resolution))
            tiles.append(render_mesh(m.vertices, m.faces, size))
        except engine.NoSurfaceError:
            tiles.append(np.full((size, size, 3), 235, np.uint8))
    return tiles


def summary(rows) -> dict:
    cd = np.array([r["chamfer"] for r in rows])
    return {
        "shapes": len(rows),
        "chamfer_mean_x1e3": float(cd.mean() * 1e3),
        "chamfer_median_x1e3": float(np.median(cd) * 1e3),
        "f_score@1%": float(np.mean([r["f_score"]["0.01"] for r in rows])),
        "f_score@2%": float(np.mean([r["f_score"]["0.02"] for r in rows])),
        "normal_consistency": float(np.mean([r["normal_consistency"] for r in rows])),
        "seconds_mean": float(np.mean([r["seconds"] for r in rows])),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--meshes", required=True)
    p.add_argument("--name", default="chairs")
    p.add_argument("--out", default="docs/quality")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument(
        "--split", default="test", help="held-out shapes: a split name under the data's splits/ or a split file"
    )
    args = p.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    model = engine.open_model(args.model, "cpu")
    data, meshes = Path(args.data), Path(args.meshes)
    split_path = Path(args.split) if Path(args.split).is_file() else data / "splits" / f"{args.split}.json"
    entries = read_split(split_path)
    if args.limit:
        entries = entries[: args.limit]
    fit = engine.fit_preset("default")

    rec = evaluate_model(
        model, data, str(split_path), fit, engine.MeshConfig(resolution=args.resolution), limit=args.limit
    )
    rec_rows = [
        {"name": s.name, "chamfer": s.chamfer, "f_score": s.f_score, "normal_consistency": s.normal_consistency,
         "seconds": s.seconds}
        for s in rec.shapes if s.error is None
    ]  # fmt: skip
    comp_rows, tiles = completion_scores(model, data, meshes, entries, args.resolution, fit, pictures=4)
    save_png(out / "images" / f"{args.name}_completion.png", image_grid(tiles, 3))

    # interpolation strip between two training shapes of different kinds, and prior samples
    codes = model.codes.cpu().numpy()
    path = engine.interpolate_codes(codes[0], codes[3], 6, "linear")
    save_png(out / "images" / f"{args.name}_interpolation.png", image_grid(render_codes(model, path), 6))
    samples = engine.sample_codes(model, 8, seed=1, temperature=0.8)
    save_png(out / "images" / f"{args.name}_samples.png", image_grid(render_codes(model, samples), 4))

    report = {
        "model": model.summary(),
        "reconstruction": {"summary": summary(rec_rows), "shapes": rec_rows},
        "completion_single_view": {"summary": summary(comp_rows), "shapes": comp_rows},
    }
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    for label, key in (
        ("reconstruction (full samples)", "reconstruction"),
        ("completion (one view)", "completion_single_view"),
    ):
        s = report[key]["summary"]
        print(f"{args.name} {label:30s}: CD x1e3 mean {s['chamfer_mean_x1e3']:.3f} median {s['chamfer_median_x1e3']:.3f}  "
              f"F@1% {s['f_score@1%']:.3f} F@2% {s['f_score@2%']:.3f}  NC {s['normal_consistency']:.3f}  "
              f"{s['seconds_mean']:.1f} s/shape")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
