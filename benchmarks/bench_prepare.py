"""Measure `prepare` on real meshes: seconds per mesh, wrong-sign rates, and a picture.

    bash scripts/fetch_data.sh            # real meshes into ~/.cache/deepsdf-data
    python benchmarks/bench_prepare.py --data ~/.cache/deepsdf-data --json bench_out/prepare.json \
        --picture docs/images/prepare_signs.png

1. Seconds to sample 500,000 SDF points (reference defaults) on CC0 furniture meshes.
2. Wrong-sign rates where the truth is known:
   * the CGAL elephant with holes (1,353 boundary edges), against the watertight elephant;
   * watertight meshes corrupted on purpose: 30 % of faces flipped, a triangle soup,
     an inner face, an intersecting duplicate, a hole;
   for our winding-number sign and, for comparison, libigl's pseudo-normal sign.
3. A picture: each CC0 chair next to the zero level set of the SDF that prepare computes for it.
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

from engine.frames import reference_normalization, to_model_frame  # noqa: E402
from engine.prepare import (  # noqa: E402
    SamplingConfig,
    load_mesh_for_sampling,
    repair_winding,
    sample_points,
    sdf_samples,
    signed_distance,
)

CHAIRS = ["oakChair", "plasticChair", "chair", "chair2", "antiqueChair", "designChair", "thonet", "sillaBlanca",
          "foldingChair", "stool", "bench", "armchair"]  # fmt: skip


def furniture_paths(data: Path) -> list[Path]:
    root = data / "furniture" / "blendswap-cc-0"
    return [root / name / f"{name}.obj" for name in CHAIRS if (root / name / f"{name}.obj").is_file()]


def pseudonormal_sign(v, f, q):
    import igl

    s, *_ = igl.signed_distance(
        np.ascontiguousarray(q, np.float64),
        np.ascontiguousarray(v, np.float64),
        np.ascontiguousarray(f, np.int64),
        igl.SignedDistanceType.SIGNED_DISTANCE_TYPE_PSEUDONORMAL,
    )
    return s


def rates(truth: np.ndarray, v, f, q, repair: bool = True) -> dict:
    ours_v, ours_f = repair_winding(v, f) if repair else (v, f)
    ours = signed_distance(ours_v, ours_f, q)
    pn = pseudonormal_sign(v, f, q)
    decided = np.abs(truth) > 1e-4
    far = np.abs(truth) > 0.01
    out = {}
    for name, s in (("winding", ours), ("pseudonormal", pn)):
        wrong = (s < 0) != (truth < 0)
        out[name] = {"wrong_all": float(wrong[decided].mean()), "wrong_beyond_1pct": float(wrong[far].mean())}
    return out


def corruptions(v, f, rng):
    import trimesh

    yield "clean", v, f
    flipped = f.copy()
    idx = rng.random(len(f)) < 0.3
    flipped[idx] = flipped[idx][:, ::-1]
    yield "30% faces flipped", v, flipped
    soup_v = v[flipped].reshape(-1, 3)
    yield "triangle soup, flipped", soup_v, np.arange(len(soup_v)).reshape(-1, 3)
    centre = v.mean(0)
    inner = trimesh.creation.box(extents=(0.2, 0.002, 0.2))
    yield "inner face", np.concatenate([v, inner.vertices + centre]), np.concatenate([f, inner.faces[:2] + len(v)])
    mesh = trimesh.Trimesh(v, f, process=False)
    c = mesh.triangles_center
    hole = np.linalg.norm(c - c[0], axis=1) < 0.08
    yield f"hole ({hole.sum()} faces removed)", v, f[~hole]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path.home() / ".cache" / "deepsdf-data"))
    p.add_argument("--json", default="bench_out/prepare.json")
    p.add_argument("--picture", default="")
    p.add_argument("--timing-meshes", type=int, default=4)
    p.add_argument("--samples", type=int, default=500_000)
    args = p.parse_args()
    data = Path(args.data)
    results: dict = {"timing": {}, "signs": {}}
    rng = np.random.default_rng(0)

    chairs = furniture_paths(data)
    for path in chairs[: args.timing_meshes]:
        v, f = load_mesh_for_sampling(path)
        t0 = time.perf_counter()
        sdf_samples(v, f, SamplingConfig(samples=args.samples))
        dt = time.perf_counter() - t0
        results["timing"][path.stem] = {"seconds": dt, "faces": len(f)}
        print(f"prepare {path.stem:14s} {len(f):7,d} faces: {dt:5.2f} s for {args.samples:,} samples", flush=True)

    # the elephant with holes against the watertight elephant
    cgal = data / "cgal" / "data" / "meshes"
    if (cgal / "elephant.off").is_file():
        full_v, full_f = load_mesh_for_sampling(cgal / "elephant.off")
        hole_v, hole_f = load_mesh_for_sampling(cgal / "elephant-with-holes.off")
        off, sc = reference_normalization(full_v)
        full_v, hole_v = to_model_frame(full_v, off, sc), to_model_frame(hole_v, off, sc)
        q = sample_points(full_v.astype(float), full_f, SamplingConfig(samples=200_000), rng)
        truth = signed_distance(full_v, full_f, q)
        results["signs"]["elephant with holes"] = rates(truth, hole_v, hole_f, q)
    for name in ("bunny00.off", "cow.off", "bull.off"):
        if not (cgal / name).is_file():
            continue
        v, f = load_mesh_for_sampling(cgal / name)
        off, sc = reference_normalization(v)
        v = to_model_frame(v, off, sc).astype(np.float64)
        q = sample_points(v, f, SamplingConfig(samples=100_000), rng)
        truth = signed_distance(v, f, q)
        for label, cv, cf in corruptions(v, f, rng):
            results["signs"][f"{name[:-4]}: {label}"] = rates(truth, cv, cf, q)
    print(f"\n{'wrong-sign rate':42s} {'winding (ours)':>16s} {'pseudo-normal':>16s}   (all / beyond 1 %)")
    for name, r in results["signs"].items():
        w, pn = r["winding"], r["pseudonormal"]
        print(
            f"{name:42s} {w['wrong_all']:7.4%}/{w['wrong_beyond_1pct']:7.4%} {pn['wrong_all']:7.4%}/{pn['wrong_beyond_1pct']:7.4%}"
        )

    if args.picture and chairs:
        from engine.meshing import MeshConfig, mesh_sdf
        from engine.render import image_grid, render_mesh, save_png

        tiles = []
        for path in chairs[:6]:
            v, f = load_mesh_for_sampling(path)
            off, sc = reference_normalization(v)
            v = to_model_frame(v, off, sc).astype(np.float64)
            rv, rf = repair_winding(v, f)

            def sdf_fn(x, rv=rv, rf=rf):
                import torch

                sdf = signed_distance(rv, rf, x.numpy(), SamplingConfig().sheet_thickness)
                return torch.from_numpy(sdf.astype(np.float32))

            level = mesh_sdf(sdf_fn, MeshConfig(resolution=128, method="dense", chunk_points=1 << 20))
            tiles += [render_mesh(v, f, 220), render_mesh(level.vertices, level.faces, 220, color=(0.55, 0.75, 0.55))]
        Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
        save_png(args.picture, image_grid(tiles, 4))
        print(f"wrote {args.picture} (pairs: the artist mesh, grey; the zero level set of prepare's SDF, green)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
