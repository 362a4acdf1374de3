"""Command line: ``python -m engine <command>`` (or ``deepsdf <command>``).

Each command prints progress on stderr (tqdm), results on stdout, and on failure
one line ``error: ...`` with a non-zero exit status (1 for engine errors, 2 for
usage errors, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import EngineError, InputError, NoSurfaceError

log = logging.getLogger("engine")


class TqdmProgress:
    """A progress callback drawing one tqdm bar per phase (message) on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None
        self.phase = ""

    def __call__(self, done: int, total: int, message: str) -> bool:
        if not self.enabled:
            return True
        from tqdm import tqdm

        phase, _, detail = message.partition(" (")  # "training (loss 0.01)": the bar is "training"
        if self.bar is None or phase != self.phase or total != self.bar.total:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total, desc=phase, file=sys.stderr, leave=False, dynamic_ncols=True)
        if detail:
            self.bar.set_postfix_str(detail.rstrip(")"), refresh=False)
        self.bar.n = min(done, total)
        self.bar.refresh()
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _parse_vec3(text: str) -> np.ndarray:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z, got {text!r}")
    return np.array(vals, np.float32)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model file, reference experiment directory, or bundled model name")
    p.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N, mps")


def _add_mesh_args(p: argparse.ArgumentParser, default_res: int = 128) -> None:
    p.add_argument("--resolution", type=int, default=default_res, help=f"grid points per axis (default {default_res})")
    p.add_argument("--normals", action="store_true", help="write vertex normals from the SDF gradient")
    p.add_argument(
        "--mesh-method", choices=["auto", "dense", "sparse"], default="auto", help="grid evaluation (default auto)"
    )


def _mesh_config(args: argparse.Namespace):
    from .meshing import MeshConfig

    return MeshConfig(resolution=args.resolution, normals=args.normals, method=args.mesh_method)


_NEAREST_HELP = "nearest training codes screened as extra starts (override the preset's; 0: off, faster)"
_EXTENT_HELP = (
    "quantile of the scan's points that sets its extent, the start of the scale search (default 1: the "
    "largest; 0.999 helped three-view scans and hurt one-view scans, docs/quality/completion.md)"
)
_POLISH_HELP = (
    "rounds of translation polish after an estimated placement (0: off; default: one round when the "
    "scan was taken from one sensor position, else off: it helped one-view scans and hurt three-view "
    "scans with outliers, docs/quality/completion.md)"
)


def _add_placement_args(p: argparse.ArgumentParser) -> None:
    """Options of the unknown-placement fit shared by ``reconstruct`` and ``evaluate-completion``."""
    p.add_argument("--nearest-starts", type=int, help=_NEAREST_HELP)
    p.add_argument("--offset-polish", type=int, metavar="ROUNDS", help=_POLISH_HELP)
    p.add_argument("--extent-quantile", type=float, default=1.0, metavar="Q", help=_EXTENT_HELP)
    p.add_argument(
        "--eta",
        type=float,
        help="offset of the +-eta observations along the scan's normals, model units, in the fit and "
        "the placement search (default: ObservationConfig.eta; measured in docs/quality/completion.md)",
    )
    p.add_argument(
        "--silhouette",
        type=int,
        metavar="N",
        help="with a sensor: N points around the scan that the sensor saw past (outside its outline) are "
        "known empty (default 0: off). Only for scans where every surface in view returned points; "
        "docs/quality/completion.md",
    )
    p.add_argument(
        "--full-rotation",
        action="store_true",
        help="the scan may lie in any orientation (on its side, upside down): its up direction is searched "
        "too (6 candidate ups x the yaws), not only the yaw about y",
    )
    p.add_argument(
        "--pose-refine",
        type=float,
        metavar="LR",
        help="fit a small correction of each candidate placement (translation, scale, yaw) with the code "
        "in the refits, at this Adam learning rate (default 3e-3; 0: poses held; measured in "
        "docs/quality/completion.md)",
    )
    p.add_argument(
        "--box-anchor",
        action=argparse.BooleanOptionalAction,
        help="with a sensor: after the fit, centre the scan's bounding box on the model origin along the axes "
        "the scan spans (both ends in view) and refit there (default on; --no-box-anchor: off; measured in "
        "docs/quality/completion.md)",
    )
    p.add_argument(
        "--offset-candidates",
        type=int,
        metavar="N",
        help="polish the N lowest-loss refit candidates' translations and keep the lowest polished loss (default 2)",
    )


def _observation_config(args: argparse.Namespace):
    from .observations import ObservationConfig

    given = {"eta": args.eta, "silhouette_points": args.silhouette}
    return ObservationConfig(**{k: v for k, v in given.items() if v is not None})


def _placement_config(args: argparse.Namespace, **fields: object):
    from .placement import PlacementConfig

    given = {
        "offset_rounds": args.offset_polish,
        "offset_candidates": args.offset_candidates,
        "refit_pose_lr": args.pose_refine,
        "box_anchor": args.box_anchor,
    }
    return PlacementConfig(
        extent_quantile=args.extent_quantile,
        full_rotation=args.full_rotation,
        **{k: v for k, v in given.items() if v is not None},
        **fields,
    )


def _open(args: argparse.Namespace):
    from .model import open_model

    return open_model(args.model, args.device)


def _code_arg(model, text: str) -> tuple[np.ndarray, str]:
    """A code from a training index, a training shape name, or a .npy file."""
    from .meshio import load_code

    if text.lstrip("-").isdigit():
        i = int(text)
        try:
            return model.code(i).detach().cpu().numpy(), f"shape{i}"
        except IndexError as exc:
            raise InputError(str(exc)) from None
    if Path(text).suffix == ".npy":
        return load_code(text, model.code_length), Path(text).stem
    try:
        i = model.index_of(text)
    except KeyError:
        raise InputError(f"{text!r} is neither a training index, a training shape name nor a .npy code file") from None
    return model.code(i).detach().cpu().numpy(), text.rsplit("/", 1)[-1]


# -- commands -------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    model = _open(args)
    summary = model.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>16}: {value}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .deepsdf_format import import_experiment
    from .model import save_model

    model = import_experiment(args.experiment, args.checkpoint)
    path = save_model(model, args.out)
    print(f"imported {model.num_shapes} shapes, code length {model.code_length} -> {path} ({model.identity})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .deepsdf_format import export_experiment

    model = _open_path(args.model)
    out = export_experiment(model, args.out)
    print(f"exported {model.num_shapes} shapes -> {out}")
    return 0


def _open_path(spec: str):
    from .model import open_model

    return open_model(spec, "cpu")


def cmd_mesh(args: argparse.Namespace) -> int:
    from .api import extract_mesh, training_normalization
    from .meshio import save_mesh

    model = _open(args)
    if args.index is not None:
        code = model.code(args.index) if -model.num_shapes <= args.index < model.num_shapes else None
        if code is None:
            raise InputError(f"--index {args.index} out of range: the model has {model.num_shapes} shapes")
        code = code.detach().cpu().numpy()
    else:
        from .meshio import load_code

        code = load_code(args.code, model.code_length)
    norm = training_normalization(model, args.index) if (args.original_frame and args.index is not None) else None
    progress = TqdmProgress(not args.quiet)
    t0 = time.perf_counter()
    try:
        mesh = extract_mesh(model, code, _mesh_config(args), norm, progress)
    finally:
        progress.close()
    save_mesh(args.out, mesh)
    print(
        f"{args.out}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces "
        f"({mesh.stats['points_evaluated']} SDF points, {time.perf_counter() - t0:.2f} s)"
    )
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .api import extract_mesh, reconstruct
    from .fitting import fit_code, fit_preset
    from .meshio import load_geometry, save_mesh
    from .observations import observations_from_sdf_samples

    model = _open(args)
    overrides = {
        k: v
        for k, v in (
            ("iterations", args.iterations),
            ("restarts", args.restarts),
            ("nearest_starts", args.nearest_starts),
        )
        if v is not None
    }
    fit = fit_preset(args.preset, model.device, seed=args.seed, **overrides)
    progress = TqdmProgress(not args.quiet)
    t0 = time.perf_counter()
    alternatives = []
    try:
        if Path(args.input).suffix.lower() == ".npz":
            if args.alternatives:
                raise InputError("--alternatives needs a mesh or point cloud, not SDF samples")
            obs = observations_from_sdf_samples(args.input)
            result = fit_code(model, obs, fit, progress)
            code, loss = result.code, result.loss
            mesh = extract_mesh(model, code, _mesh_config(args), None, progress)
        else:
            vertices, faces = load_geometry(args.input)

            rec = reconstruct(
                model,
                vertices,
                faces,
                known_frame=args.known_frame,
                fit=fit,
                mesh=_mesh_config(args),
                sensor=args.sensor,
                observation=_observation_config(args),
                placement=None if args.reference_normalization else _placement_config(args, seed=args.seed),
                on_progress=progress,
                alternatives=args.alternatives,
            )
            mesh, code, loss = rec.mesh, rec.code, rec.loss
            alternatives = rec.alternatives
    finally:
        progress.close()
    out = Path(args.out)
    save_mesh(out, mesh)
    np.save(out.with_suffix(".npy"), code)
    print(
        f"{out}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces; code -> {out.with_suffix('.npy')} "
        f"(fit loss {loss:.5f}, {time.perf_counter() - t0:.2f} s)"
    )
    for j, alt in enumerate(alternatives, 1):
        path = out.with_name(f"{out.stem}.alt{j}{out.suffix}")
        save_mesh(path, alt.mesh)
        np.save(path.with_suffix(".npy"), alt.code)
        print(f"alternative {j}: {path} (fit loss {alt.loss:.5f}, {alt.loss / loss - 1:+.1%} against the result)")
    if args.alternatives and len(alternatives) < args.alternatives:
        print(f"{len(alternatives)} of {args.alternatives} alternatives: the fit found no more distinct shapes")
    return 0


def _mesh_many(model, codes: np.ndarray, names: list[str], out_dir: Path, args: argparse.Namespace, label: str) -> int:
    from .api import extract_mesh
    from .meshio import save_mesh

    out_dir.mkdir(parents=True, exist_ok=True)
    written, failed = 0, []
    progress = TqdmProgress(not args.quiet)
    try:
        for code, name in zip(codes, names, strict=True):
            try:
                mesh = extract_mesh(model, code, _mesh_config(args), None, progress)
            except NoSurfaceError as exc:
                failed.append(f"{name}: {exc}")
                continue
            save_mesh(out_dir / f"{name}.{args.format}", mesh)
            np.save(out_dir / f"{name}.npy", code)
            written += 1
    finally:
        progress.close()
    for line in failed:
        print(f"warning: {line}", file=sys.stderr)
    print(
        f"{label}: wrote {written} meshes and codes to {out_dir}"
        + (f"; {len(failed)} had no surface" if failed else "")
    )
    if written == 0:
        raise NoSurfaceError("none of the codes produced a surface", "empty")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .api import sample_codes

    model = _open(args)
    codes = sample_codes(model, args.count, args.seed, args.temperature)
    names = [f"sample_{args.seed}_{i:03d}" for i in range(args.count)]
    return _mesh_many(model, codes, names, Path(args.out), args, "generate")


def cmd_interpolate(args: argparse.Namespace) -> int:
    from .latent import interpolate_codes

    model = _open(args)
    a, name_a = _code_arg(model, args.from_)
    b, name_b = _code_arg(model, args.to)
    codes = interpolate_codes(a, b, args.steps, args.mode)
    names = [f"interp_{i:03d}" for i in range(args.steps)]
    return _mesh_many(model, codes, names, Path(args.out), args, f"interpolate {name_a} -> {name_b}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .meshio import load_geometry
    from .metrics import compare_meshes

    meshes = []
    for path in (args.mesh_a, args.mesh_b):
        v, f = load_geometry(path)
        if f is None:
            raise InputError(f"{path} has no faces; evaluate compares two meshes")
        meshes.append((v, f))
    m = compare_meshes(meshes[0], meshes[1], samples=args.samples, thresholds=tuple(args.thresholds), seed=args.seed)
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))
    else:
        print(f"chamfer (ref. definition): {m.chamfer:.6g}  (x1e3: {m.chamfer * 1e3:.4f})")
        for t, f in m.f_score.items():
            print(f"f-score@{t}: {f:.4f}")
        print(f"normal consistency: {m.normal_consistency:.4f}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import SamplingConfig, prepare_dataset

    config = SamplingConfig(samples=args.samples, surface_samples=args.surface_samples, seed=args.seed)
    progress = TqdmProgress(not args.quiet)
    t0 = time.perf_counter()
    try:
        rep = prepare_dataset(
            args.meshes, args.out, args.dataset, args.class_name, config, args.workers, args.test_fraction, progress
        )
    finally:
        progress.close()
    for name, reason in sorted(rep.failed.items()):
        print(f"warning: skipped {name}: {reason}", file=sys.stderr)
    per = sorted(rep.seconds_per_mesh.values())
    timing = f", {np.median(per):.2f} s per mesh (median, per worker)" if per else ""
    print(
        f"prepared {len(rep.written)} shapes, {len(rep.skipped)} already done, {len(rep.failed)} failed "
        f"-> {args.out} ({time.perf_counter() - t0:.1f} s{timing})"
    )
    if not rep.written and not rep.skipped:
        raise InputError("no mesh could be prepared")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TensorBoardLogger, load_samples, train, train_preset

    overrides = {
        k: v
        for k, v in {
            "decoder": args.decoder,
            "epochs": args.epochs,
            "scenes_per_batch": args.scenes_per_batch,
            "samples_per_scene": args.samples_per_scene,
            "seed": args.seed,
            "snapshot_every": args.snapshot_every,
            "image_every": args.image_every,
            "amp": args.amp or None,
            "compile": args.compile or None,
        }.items()
        if v is not None
    }
    if args.config:
        from .training import TrainConfig

        try:
            text = args.config if args.config.lstrip().startswith("{") else Path(args.config).read_text()
            config = dataclasses.replace(TrainConfig(**json.loads(text)), **overrides)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"--config is not a training config: {exc}") from None
    else:
        config = train_preset(args.preset, **overrides)
    if args.deterministic:
        import torch

        torch.use_deterministic_algorithms(True)
    samples = load_samples(args.data, args.split)
    logger = TensorBoardLogger(args.tensorboard, config) if args.tensorboard else None
    progress = TqdmProgress(not args.quiet)
    try:
        result = train(
            samples,
            config,
            args.out,
            args.device,
            resume=args.resume,
            on_progress=progress,
            on_epoch=logger,
            info={"class_name": args.class_name or Path(args.data).name},
        )
    finally:
        progress.close()
        if logger is not None:
            logger.close()
    print(
        f"trained {len(samples)} shapes for {config.epochs} epochs -> {args.out} "
        f"(final loss {result.history[-1]['loss']:.5f}, {result.seconds:.0f} s, "
        f"{result.samples_per_second:,.0f} samples/s)"
    )
    return 0


def _print_report(report, json_path: str | None) -> None:
    """Print a report's table and, when asked, write its full JSON."""
    print(report.table())
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {json_path}")


def cmd_evaluate_model(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_model
    from .fitting import fit_preset

    model = _open(args)
    fit = fit_preset(args.preset, model.device, **({"iterations": args.iterations} if args.iterations else {}))
    progress = TqdmProgress(not args.quiet)
    try:
        rep = evaluate_model(
            model, args.data, args.split, fit, _mesh_config(args), tuple(args.thresholds), args.limit, progress
        )
    finally:
        progress.close()
    _print_report(rep, args.json)
    return 0 if rep.summary().get("evaluated") else 1


def _mesh_files(paths: list[str]) -> list[Path]:
    """Files named, and the meshes (.obj .ply .off .stl .glb) inside directories named, sorted."""
    out: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".obj", ".ply", ".off", ".stl", ".glb"))
            if not found:
                raise InputError(f"no meshes (.obj .ply .off .stl .glb) under {path}")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise InputError(f"shape file not found: {path}")
    return out


def cmd_evaluate_completion(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .completion_eval import CompletionEvalConfig, evaluate_completion
    from .fitting import fit_preset
    from .meshio import load_geometry

    model = _open(args)
    files = _mesh_files(args.shapes)
    if args.limit:
        files = files[: args.limit]
    shapes = []
    for f in files:
        vertices, faces = load_geometry(f)
        if faces is None or not len(faces):
            raise InputError(f"{f.name} is a point cloud; evaluation needs whole meshes")
        shapes.append((f.stem, vertices, faces))
    reference_fit = fit_preset("reference")
    if args.reference_iterations:
        reference_fit = replace(reference_fit, iterations=args.reference_iterations)
    config = CompletionEvalConfig(
        views=tuple(args.views),
        noise=tuple(args.noise),
        outliers=tuple(args.outliers),
        poses=tuple(args.poses),
        sensor=tuple(s == "yes" for s in args.sensor),
        reference=not args.no_reference,
        resolution=args.resolution,
        fit=fit_preset(
            args.preset,
            model.device,
            **({"nearest_starts": args.nearest_starts} if args.nearest_starts is not None else {}),
        ),
        placement=_placement_config(
            args, **({"iterations": args.placement_iterations} if args.placement_iterations else {})
        ),
        reference_fit=reference_fit,
        observation=_observation_config(args),
        seed=args.seed,
        repeats=args.repeats,
        alternatives=args.alternatives,
    )
    progress = TqdmProgress(not args.quiet)
    try:
        result = evaluate_completion(model, shapes, config, progress)
    finally:
        progress.close()
    _print_report(result, args.json)
    return 0


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from .procedural import write_dataset

    progress = TqdmProgress(not args.quiet)
    t0 = time.perf_counter()
    try:
        ids = write_dataset(
            args.family, args.count, args.out, args.seed, args.samples, args.test_fraction, args.meshes, progress
        )
    finally:
        progress.close()
    print(f"{len(ids)} {args.family} -> {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from .meshing import Mesh
    from .meshio import load_geometry, save_mesh
    from .scan import orbit_camera, partial_mesh, simulate_scan

    vertices, faces = load_geometry(args.mesh)
    if faces is None:
        raise InputError(f"{args.mesh} has no faces; the scanner needs a surface")
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre, size = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
    cams = [
        orbit_camera(a, args.elevation, args.distance * size, tuple(centre), width=args.width, height=args.height)
        for a in args.azimuth
    ]
    scan = simulate_scan(vertices, faces, cams, args.noise * size, args.outliers, args.seed)
    out = Path(args.out)
    if args.as_mesh:
        v, f = partial_mesh(scan)
        save_mesh(out, Mesh(v, f))
    else:
        import trimesh

        from .meshio import write_bytes_atomic

        write_bytes_atomic(out, trimesh.PointCloud(scan.points).export(file_type=out.suffix[1:] or "ply"))
    sensors = ";".join(",".join(f"{x:.6g}" for x in c.position) for c in cams)
    print(f"{out}: {len(scan.points)} points from {len(cams)} view(s); sensor position(s) {sensors}")
    return 0


# -- parser ---------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="DeepSDF engine: learned shape classes.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(func=fn)
        return p

    p = add("info", cmd_info, "Show what a model holds.")
    p.add_argument("model", help="model file, experiment directory or bundled name")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")

    p = add("import-deepsdf", cmd_import, "Import a reference DeepSDF experiment directory into a model file.")
    p.add_argument("experiment", help="directory with specs.json, ModelParameters/, LatentCodes/")
    p.add_argument("--out", required=True, help="model file to write (.dsdf)")
    p.add_argument("--checkpoint", default="latest", help="'latest' or an epoch number (default latest)")

    p = add("export-deepsdf", cmd_export, "Write a model as a reference DeepSDF experiment directory.")
    p.add_argument("model")
    p.add_argument("--out", required=True, help="experiment directory to write")

    p = add("mesh", cmd_mesh, "Mesh a training shape or a code file.")
    _add_model_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--index", type=int, help="training shape index")
    g.add_argument("--code", help=".npy file holding a code")
    _add_mesh_args(p)
    p.add_argument("--original-frame", action="store_true", help="map a training shape back to its original frame")
    p.add_argument("--out", required=True, help="mesh file (.ply, .obj, .glb, .stl, .off)")

    p = add("reconstruct", cmd_reconstruct, "Fit a code to a mesh, point cloud or SDF samples and mesh it.")
    _add_model_args(p)
    p.add_argument("--input", required=True, help="mesh, point cloud (.ply/.xyz/.npy) or SdfSamples .npz")
    p.add_argument("--out", required=True, help="mesh file; the code goes beside it as .npy")
    _add_mesh_args(p)
    p.add_argument("--known-frame", action="store_true", help="the input is already in the model's normalised frame")
    p.add_argument(
        "--reference-normalization",
        action="store_true",
        help="normalise the input like the reference (bounding box) instead of estimating its placement",
    )
    p.add_argument("--sensor", type=_parse_vec3, help="scanner position X,Y,Z in the input's frame")
    p.add_argument(
        "--preset", default="auto", help="fit preset: auto (default on a GPU, fast on a CPU), default, fast, reference"
    )
    p.add_argument("--iterations", type=int, help="override the preset's iterations")
    p.add_argument("--restarts", type=int, help="override the preset's restarts")
    _add_placement_args(p)
    p.add_argument(
        "--alternatives",
        type=int,
        default=0,
        help="also write up to N other completions whose shapes differ (OUT.alt1.ply, ...): a partial scan "
        "often fits several shapes about equally well",
    )
    p.add_argument("--seed", type=int, default=0)

    p = add("generate", cmd_generate, "Sample new shapes from the model's code prior.")
    _add_model_args(p)
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="spread around the mean code (default 1)")
    _add_mesh_args(p)
    p.add_argument("--format", default="ply", choices=["ply", "obj", "glb", "stl", "off"])
    p.add_argument("--out", required=True, help="output directory")

    p = add("interpolate", cmd_interpolate, "Morph between two codes.")
    _add_model_args(p)
    p.add_argument("--from", dest="from_", required=True, help="training index, shape name or .npy code")
    p.add_argument("--to", required=True, help="training index, shape name or .npy code")
    p.add_argument("--steps", type=int, default=5, help="number of shapes including both ends")
    p.add_argument("--mode", choices=["linear", "spherical"], default="linear")
    _add_mesh_args(p)
    p.add_argument("--format", default="ply", choices=["ply", "obj", "glb", "stl", "off"])
    p.add_argument("--out", required=True, help="output directory")

    p = add("evaluate", cmd_evaluate, "Compare two meshes: Chamfer (reference definition), F-score, normals.")
    p.add_argument("mesh_a", help="predicted mesh")
    p.add_argument("mesh_b", help="ground-truth mesh")
    p.add_argument("--samples", type=int, default=30000)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.02])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")

    p = add("prepare", cmd_prepare, "Turn meshes into SDF training samples (reference DeepSDF layout).")
    p.add_argument("meshes", nargs="+", help="mesh files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="data directory to write")
    p.add_argument("--dataset", default="Meshes", help="dataset name in the layout (default Meshes)")
    p.add_argument("--class-name", default="shapes", help="class name in the layout (default shapes)")
    p.add_argument("--samples", type=int, default=500_000, help="SDF samples per shape (reference 500000)")
    p.add_argument("--surface-samples", type=int, default=30_000, help="evaluation surface points (30000)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="share held out in splits/test.json")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU core)")
    p.add_argument("--seed", type=int, default=0)

    p = add("make-shapes", cmd_make_shapes, "Generate procedural chairs or tables as training data (exact SDF).")
    p.add_argument("family", choices=["chairs", "tables"])
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=500_000, help="SDF samples per shape")
    p.add_argument("--test-fraction", type=float, default=0.0, help="share held out in splits/test.json")
    p.add_argument("--meshes", help="also write each shape's watertight mesh (OBJ) here")
    p.add_argument("--out", required=True, help="data directory (reference layout)")

    p = add("scan", cmd_scan, "Simulate a depth-camera scan of a mesh (a partial point cloud or mesh).")
    p.add_argument("mesh")
    p.add_argument("--out", required=True, help="output .ply (points, or a partial mesh with --as-mesh)")
    p.add_argument(
        "--azimuth", type=float, nargs="+", default=[30.0], help="view azimuths in degrees (y up; 0 = front)"
    )
    p.add_argument("--elevation", type=float, default=20.0)
    p.add_argument("--distance", type=float, default=1.5, help="camera distance in object diagonals")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--noise", type=float, default=0.0, help="depth noise std as a fraction of the object diagonal")
    p.add_argument("--outliers", type=float, default=0.0, help="fraction of outlier points")
    p.add_argument("--as-mesh", action="store_true", help="triangulate the depth image")
    p.add_argument("--seed", type=int, default=0)

    p = add("train", cmd_train, "Train an auto-decoder on prepared data.")
    p.add_argument("data", help="data directory written by prepare (or the reference layout)")
    p.add_argument("--out", required=True, help="model file to write (.dsdf); snapshots go beside it")
    p.add_argument("--preset", default="reference", help="training preset: reference (default) or small")
    p.add_argument("--config", help="a training config as a JSON file or string (all knobs; options below override)")
    p.add_argument("--decoder", help="decoder preset (paper, small) or a JSON config")
    p.add_argument("--epochs", type=int)
    p.add_argument("--scenes-per-batch", type=int)
    p.add_argument("--samples-per-scene", type=int)
    p.add_argument("--snapshot-every", type=int)
    p.add_argument("--image-every", type=int, help="epochs between TensorBoard pictures (0: never)")
    p.add_argument("--seed", type=int)
    p.add_argument("--split", default="train", help="split name under splits/ or a split file (default train)")
    p.add_argument("--class-name", help="class name stored in the model (default: the data folder's name)")
    p.add_argument("--resume", action="store_true", help="continue from the snapshot beside --out")
    p.add_argument("--tensorboard", help="TensorBoard log directory")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model on CUDA (faster after warm-up)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact resume)")
    p.add_argument("--device", default="auto")

    p = add("evaluate-model", cmd_evaluate_model, "Reconstruct held-out shapes and report Chamfer, F-score, NC.")
    p.add_argument("model", help="model file, experiment directory or bundled name")
    p.add_argument("data", help="data directory written by prepare")
    p.add_argument("--split", default="test")
    p.add_argument("--preset", default="default", help="fit preset")
    p.add_argument("--iterations", type=int)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.01, 0.02], help="F-score thresholds (x size)")
    p.add_argument("--limit", type=int, default=0, help="only the first N shapes")
    p.add_argument("--json", help="write the full report here")
    p.add_argument("--device", default="auto")
    _add_mesh_args(p)

    p = add(
        "evaluate-completion",
        cmd_evaluate_completion,
        "Complete simulated scans of shapes under a grid of conditions and score them.",
    )
    p.add_argument("model", help="model file, experiment directory or bundled name")
    p.add_argument("shapes", nargs="+", help="watertight meshes (files or directories), any frame, y up")
    p.add_argument("--views", type=int, nargs="+", default=[1, 3], help="cameras per scan (default 1 3)")
    p.add_argument(
        "--noise", type=float, nargs="+", default=[0.0, 0.005, 0.01], help="depth noise, fraction of object size"
    )
    p.add_argument("--outliers", type=float, nargs="+", default=[0.0], help="outlier fraction (default 0)")
    p.add_argument(
        "--poses",
        nargs="+",
        default=["known", "yaw", "similarity"],
        choices=["known", "yaw", "similarity", "rotation"],
        help="known: the model frame; yaw: a random turn about the vertical; similarity: that, scale +-30 %% and an "
        "offset; rotation: a random rotation in any direction, scale and offset (fitted with --full-rotation's "
        "search)",
    )
    p.add_argument("--sensor", nargs="+", default=["yes", "no"], choices=["yes", "no"], help="sensor position given")
    p.add_argument("--no-reference", action="store_true", help="skip the reference-style fit")
    p.add_argument("--reference-iterations", type=int, help="steps of the reference-style fit (default 800)")
    p.add_argument("--preset", default="default", help="fit preset for our fits (default default)")
    _add_placement_args(p)
    p.add_argument("--placement-iterations", type=int, help="steps of the placement search (default 200)")
    p.add_argument("--limit", type=int, default=0, help="only the first N shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="scans per shape and condition, each with its own view, noise and pose (default 1)",
    )
    p.add_argument(
        "--alternatives",
        type=int,
        default=0,
        help="also score up to N distinct alternative completions per scan (the best shown; default 0)",
    )
    p.add_argument("--resolution", type=int, default=64, help="marching-cubes resolution (default 64)")
    p.add_argument("--json", help="write summary and per-case rows here")
    p.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
