"""The command line end to end on a tiny model, through a real subprocess where it matters."""

import json
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from engine.cli import main
from tests.analytic import BOX_HALF, SHAPES, analytic_mesh
from tests.conftest import REPO


def run(*args: str) -> int:
    return main([*map(str, args), "-q"])


def test_import_info_export(reference_fixture, tmp_path, capsys):
    model_path = tmp_path / "ref.dsdf"
    assert run("import-deepsdf", reference_fixture / "experiment", "--out", model_path) == 0
    assert run("info", model_path, "--json") == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["num_shapes"] == 3 and info["code_length"] == 256 and info["parameters"] == 1_843_195
    assert run("export-deepsdf", model_path, "--out", tmp_path / "exp") == 0
    assert (tmp_path / "exp" / "ModelParameters" / "latest.pth").is_file()


def test_mesh_generate_interpolate_evaluate(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "box.ply"
    assert run("mesh", "--model", tiny_model_file, "--index", 1, "--resolution", 48, "--out", out, "--normals") == 0
    mesh = trimesh.load(out, process=False)
    assert mesh.is_watertight and len(mesh.faces) > 500
    np.testing.assert_allclose(mesh.bounds[1], BOX_HALF, atol=0.05)

    assert (
        run(
            "generate",
            "--model",
            tiny_model_file,
            "--count",
            2,
            "--seed",
            3,
            "--temperature",
            0.3,
            "--resolution",
            32,
            "--out",
            tmp_path / "gen",
            "--format",
            "obj",
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == [
        "sample_3_000.npy",
        "sample_3_000.obj",
        "sample_3_001.npy",
        "sample_3_001.obj",
    ]

    assert (
        run(
            "interpolate",
            "--model",
            tiny_model_file,
            "--from",
            0,
            "--to",
            "box",
            "--steps",
            3,
            "--resolution",
            32,
            "--out",
            tmp_path / "interp",
            "--mode",
            "spherical",
        )
        == 0
    )
    first = np.load(tmp_path / "interp" / "interp_000.npy")
    assert np.allclose(first, np.load(tmp_path / "gen" / "sample_3_000.npy")) is False
    code_path = tmp_path / "interp" / "interp_002.npy"
    assert (
        run("mesh", "--model", tiny_model_file, "--code", code_path, "--resolution", 48, "--out", tmp_path / "end.ply")
        == 0
    )
    capsys.readouterr()
    assert run("evaluate", tmp_path / "end.ply", out, "--json", "--samples", 5000) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["chamfer"] < 1e-3  # the interpolation's last step is the box itself


def test_reconstruct_writes_mesh_and_code(tiny_model_file, tmp_path):
    verts, faces = analytic_mesh(SHAPES["capsule_pair"], 48)
    src = tmp_path / "scan.obj"
    trimesh.Trimesh(verts, faces).export(src)
    before = src.read_bytes()
    out = tmp_path / "rec.ply"
    assert (
        run(
            "reconstruct",
            "--model",
            tiny_model_file,
            "--input",
            src,
            "--out",
            out,
            "--known-frame",
            "--resolution",
            48,
            "--iterations",
            100,
        )
        == 0
    )
    assert src.read_bytes() == before  # the input is never touched
    code = np.load(tmp_path / "rec.npy")
    assert code.shape == (8,)
    rec = trimesh.load(out)
    assert abs(rec.bounds[1][0] - verts[:, 0].max()) < 0.05


def test_reconstruct_writes_alternatives(tiny_model_file, tmp_path, capsys, monkeypatch):
    """The other distinct shapes the fit found go beside the result, each with its code
    (the patch and starts of test_alternatives_are_other_shapes_that_fit, which has several)."""
    from dataclasses import replace

    import engine.api
    from tests.analytic import AMBIGUOUS_STARTS, ambiguous_patch

    real = engine.api.reconstruct

    def many_starts(*args, **kwargs):
        kwargs["fit"] = replace(kwargs["fit"], **AMBIGUOUS_STARTS)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.api, "reconstruct", many_starts)
    src = tmp_path / "patch.npy"
    np.save(src, ambiguous_patch())
    out = tmp_path / "rec.ply"
    args = ["reconstruct", "--model", tiny_model_file, "--input", src, "--out", out, "--known-frame"]
    args += ["--sensor", "0.5,3,0", "--iterations", 100, "--resolution", 40]
    assert run(*args, "--alternatives", 2) == 0
    printed = capsys.readouterr().out
    alts = sorted(tmp_path.glob("rec.alt*.ply"))
    assert 1 <= len(alts) <= 2 and printed.count("alternative ") == len(alts)
    for path in alts:
        assert np.load(path.with_suffix(".npy")).shape == (8,)
        assert not np.array_equal(np.load(path.with_suffix(".npy")), np.load(tmp_path / "rec.npy"))
        assert len(trimesh.load(path).faces) > 100
    assert run(*args, "--alternatives", -1) == 1


def test_errors_are_one_line_and_nonzero(tiny_model_file, tmp_path):
    cases = [
        ["mesh", "--model", tmp_path / "missing.dsdf", "--index", 0, "--out", tmp_path / "x.ply"],
        ["mesh", "--model", tiny_model_file, "--index", 99, "--out", tmp_path / "x.ply"],
        ["reconstruct", "--model", tiny_model_file, "--input", tmp_path / "nope.ply", "--out", tmp_path / "x.ply"],
        ["mesh", "--model", tiny_model_file, "--index", 0, "--resolution", 48, "--out", tmp_path / "x.xyz"],
    ]
    for args in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "engine", *map(str, args), "-q"], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 1, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not (tmp_path / "x.ply").exists()


@pytest.mark.parametrize(
    "command",
    ["info", "import-deepsdf", "export-deepsdf", "mesh", "reconstruct", "generate", "interpolate", "evaluate"],
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_extent_quantile_option_reaches_the_placement():
    from engine.cli import build_parser

    base = ["--model", "m", "--input", "i.ply", "--out", "o.ply"]
    assert build_parser().parse_args(["reconstruct", *base]).extent_quantile == 1.0
    assert build_parser().parse_args(["reconstruct", *base, "--extent-quantile", "0.999"]).extent_quantile == 0.999
    args = build_parser().parse_args(["evaluate-completion", "m", "s.obj", "--extent-quantile", "0.998"])
    assert args.extent_quantile == 0.998
    assert args.repeats == 1
    assert build_parser().parse_args(["evaluate-completion", "m", "s.obj", "--repeats", "3"]).repeats == 3
    from engine.cli import _placement_config

    polish = build_parser().parse_args(["reconstruct", *base, "--offset-polish", "1", "--offset-candidates", "2"])
    placement = _placement_config(polish)
    assert (placement.offset_rounds, placement.offset_candidates) == (1, 2)
    default = _placement_config(build_parser().parse_args(["reconstruct", *base]))
    assert (default.offset_rounds, default.offset_candidates) == (None, 2)  # single views polished (auto)
    off = _placement_config(build_parser().parse_args(["reconstruct", *base, "--offset-polish", "0"]))
    assert off.offset_rounds == 0 and not off.full_rotation
    full = _placement_config(build_parser().parse_args(["evaluate-completion", "m", "s.obj", "--full-rotation"]))
    assert full.full_rotation
    assert default.refit_pose_lr == pytest.approx(3e-3)  # poses refined in the refits by default
    held = _placement_config(build_parser().parse_args(["reconstruct", *base, "--pose-refine", "0"]))
    assert held.refit_pose_lr == 0.0
    assert default.box_anchor  # anchored to the scan's box by default (where a sensor is given)
    unanchored = build_parser().parse_args(["evaluate-completion", "m", "s.obj", "--no-box-anchor"])
    assert not _placement_config(unanchored).box_anchor
    anchored = build_parser().parse_args(["evaluate-completion", "m", "s.obj", "--box-anchor"])
    assert _placement_config(anchored).box_anchor
    from engine.errors import InputError

    with pytest.raises(InputError, match="refit_pose_lr"):  # a clear error, before any fitting
        _placement_config(build_parser().parse_args(["reconstruct", *base, "--pose-refine", "-1"]))


def test_observation_options_reach_the_config():
    from engine.cli import _observation_config, build_parser
    from engine.errors import InputError
    from engine.observations import ObservationConfig

    base = ["--model", "m", "--input", "i.ply", "--out", "o.ply"]
    assert _observation_config(build_parser().parse_args(["reconstruct", *base])) == ObservationConfig()
    assert _observation_config(build_parser().parse_args(["reconstruct", *base, "--eta", "0.03"])).eta == 0.03
    with pytest.raises(InputError, match="eta"):
        _observation_config(build_parser().parse_args(["reconstruct", *base, "--eta", "-1"]))
    sil = _observation_config(build_parser().parse_args(["reconstruct", *base, "--silhouette", "2000"]))
    assert sil.silhouette_points == 2000 and sil.eta == ObservationConfig().eta
    with pytest.raises(InputError, match="silhouette"):
        _observation_config(build_parser().parse_args(["reconstruct", *base, "--silhouette", "-5"]))
