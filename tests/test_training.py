"""Training: the loss falls and codes mesh to their shapes; resume and 2-process DDP match a plain run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from engine.api import extract_mesh
from engine.meshing import MeshConfig
from engine.metrics import compare_meshes
from engine.model import load_model
from engine.prepare import SamplingConfig, prepare_dataset
from engine.training import TrainConfig, load_samples, snapshot_path, train
from tests.analytic import SHAPES, analytic_mesh
from tests.conftest import REPO

TEARDOWN_ABORT = "terminate called without an active exception"

TINY = json.dumps(
    {"code_length": 8, "hidden_dims": [96, 96, 96, 96], "skip_layers": [2], "dropout_prob": 0.0, "dropout_layers": []}
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The three analytic shapes as meshes, prepared with the real `prepare` path."""
    root = tmp_path_factory.mktemp("train")
    for name, fn in SHAPES.items():
        v, f = analytic_mesh(fn, 64)
        trimesh.Trimesh(v, f).export(root / f"{name}.ply")
    out = root / "data"
    prepare_dataset([root], out, "Analytic", "test", SamplingConfig(samples=30000, surface_samples=3000), workers=1)
    return out


def _config(**kw):
    base = {
        "decoder": TINY,
        "scenes_per_batch": 3,
        "samples_per_scene": 2048,
        "lr_decoder": 2e-3,
        "lr_codes": 5e-3,
        "code_init_std": 0.3,
        "snapshot_every": 2,
        "epochs": 6,
    }
    return TrainConfig(**{**base, **kw})


def test_training_fits_the_shapes(data_dir, tmp_path):
    samples = load_samples(data_dir, "train")
    out = tmp_path / "m.dsdf"
    result = train(samples, _config(epochs=500, snapshot_every=500), out, "cpu")
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:5])
    model = load_model(out)
    assert model.shape_names == ["Analytic/test/box", "Analytic/test/capsule_pair", "Analytic/test/sphere"]
    assert model.info["train_config"]["epochs"] == 500
    for i, name in enumerate(n.rsplit("/", 1)[1] for n in model.shape_names):
        # the training shapes were normalised by prepare: mesh them back in their original frame
        mesh = extract_mesh(model, i, MeshConfig(resolution=64), (model.offsets[i], float(model.scales[i])))
        m = compare_meshes((mesh.vertices, mesh.faces), analytic_mesh(SHAPES[name], 64), samples=10000)
        assert m.chamfer < 3e-3, (name, m.chamfer)
    assert result.samples_per_second > 0


def test_resume_ends_with_the_same_weights(data_dir, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        samples = load_samples(data_dir, "train")
        straight = train(samples, _config(), tmp_path / "a.dsdf", "cpu").model
        out = tmp_path / "b.dsdf"
        train(samples, _config(), out, "cpu", stop_after_epoch=2)  # "killed" after epoch 2's snapshot
        assert snapshot_path(out).is_file() and not out.exists()
        resumed = train(samples, _config(), out, "cpu", resume=True).model
    finally:
        torch.use_deterministic_algorithms(False)
    for key, value in straight.decoder.state_dict().items():
        assert torch.equal(value, resumed.decoder.state_dict()[key]), key
    assert torch.equal(straight.codes, resumed.codes)


def test_two_process_ddp_matches_one_process(data_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo) trains to the same weights as 1 process."""
    samples = load_samples(data_dir, "train")
    cfg = _config(epochs=4, scenes_per_batch=2)  # 3 shapes: a full batch split 1+1, then a short batch of 1
    single = train(samples, cfg, tmp_path / "one.dsdf", "cpu").model
    out = tmp_path / "two.dsdf"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "engine",
        "train",
        str(data_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
        "-q",
        "--config",
        json.dumps(cfg.to_dict()),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and TEARDOWN_ABORT in proc.stderr:
        # seen once in ~20 runs, on a loaded 2-core machine: a rank aborts in gloo's thread
        # teardown at interpreter exit (after destroy_process_group). Run the job once more;
        # any other failure, or the same one twice, fails the test.
        out.unlink(missing_ok=True)
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = load_model(out)
    for key, value in single.decoder.state_dict().items():
        torch.testing.assert_close(double.decoder.state_dict()[key], value, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(double.codes, single.codes, atol=2e-5, rtol=1e-4)


def test_evaluate_model_and_tensorboard(data_dir, tmp_path):
    """evaluate-model reconstructs held-out shapes from their samples and scores them; TensorBoard gets
    scalars and pictures while training."""
    import shutil

    from engine.cli import main

    split = data_dir / "splits" / "heldout.json"
    shutil.copy(data_dir / "splits" / "train.json", split)
    out = tmp_path / "m.dsdf"
    tb = tmp_path / "tb"
    cfg = _config(epochs=400, snapshot_every=400, image_every=200, log_every=50)
    assert (
        main(
            [
                "train",
                str(data_dir),
                "--out",
                str(out),
                "--config",
                json.dumps(cfg.to_dict()),
                "--device",
                "cpu",
                "--tensorboard",
                str(tb),
                "-q",
            ]
        )
        == 0
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"train/loss", "train/lr_decoder", "train/lr_codes", "train/code_magnitude"} <= set(events.Tags()["scalars"])
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses[-1] < losses[0]
    assert len(events.Images("train/shapes")) == 2

    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate-model",
                str(out),
                str(data_dir),
                "--split",
                "heldout",
                "--resolution",
                "48",
                "--iterations",
                "100",
                "--json",
                str(report),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    result = json.loads(report.read_text())
    assert result["summary"]["evaluated"] == 3 and result["summary"]["failed"] == 0
    for shape in result["shapes"]:
        assert shape["chamfer"] < 5e-3, shape  # original frame: the meshes were scaled by prepare
        assert shape["f_score"]["0.02"] > 0.25 and shape["normal_consistency"] > 0.8
