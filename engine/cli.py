"""Command line: ``python -m engine <command>`` (or ``deepsdf <command>``).

Each command prints progress on stderr (tqdm), results on stdout, and on failure
one line ``error: ...`` with a non-zero exit status (1 for engine errors, 2 for
usage errors, 130 when interrupted).
"""

from __future__ import annotations

import argparse
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

        if self.bar is None or message != self.phase or total != self.bar.total:
            self.close()
            self.phase = message
            self.bar = tqdm(total=total, desc=message, file=sys.stderr, leave=False, dynamic_ncols=True)
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
    overrides = {k: v for k, v in (("iterations", args.iterations), ("restarts", args.restarts)) if v is not None}
    fit = fit_preset(args.preset, seed=args.seed, **overrides)
    progress = TqdmProgress(not args.quiet)
    t0 = time.perf_counter()
    try:
        if Path(args.input).suffix.lower() == ".npz":
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
                on_progress=progress,
            )
            mesh, code, loss = rec.mesh, rec.code, rec.fit.loss
    finally:
        progress.close()
    out = Path(args.out)
    save_mesh(out, mesh)
    np.save(out.with_suffix(".npy"), code)
    print(
        f"{out}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces; code -> {out.with_suffix('.npy')} "
        f"(fit loss {loss:.5f}, {time.perf_counter() - t0:.2f} s)"
    )
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
    p.add_argument("--sensor", type=_parse_vec3, help="scanner position X,Y,Z in the input's frame")
    p.add_argument("--preset", default="default", help="fit preset: default, fast or reference")
    p.add_argument("--iterations", type=int, help="override the preset's iterations")
    p.add_argument("--restarts", type=int, help="override the preset's restarts")
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

    for extra in _EXTRA_COMMANDS:
        extra(add)
    return parser


_EXTRA_COMMANDS: list[Callable] = []
"""Hooks for commands defined in other modules (training, preparation, bench)."""


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
