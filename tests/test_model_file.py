"""Model files: round trip, atomic write, and clear refusals of bad files."""

import json

import numpy as np
import pytest
import torch

from engine.errors import ModelFileError
from engine.model import FORMAT_NAME, load_model, open_model, save_model


def test_round_trip_preserves_everything(tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "m.dsdf")
    back = load_model(path)
    assert back.shape_names == tiny_model.shape_names
    assert back.config == tiny_model.config
    assert back.identity == tiny_model.identity
    assert torch.equal(back.codes, tiny_model.codes)
    np.testing.assert_array_equal(back.offsets, tiny_model.offsets)
    xyz = torch.rand(500, 3) * 2 - 1
    for i in range(tiny_model.num_shapes):
        assert torch.equal(back.decoder.sdf(back.codes[i], xyz), tiny_model.decoder.sdf(tiny_model.codes[i], xyz))
    assert [p.name for p in tmp_path.iterdir()] == ["m.dsdf"]  # no temp files left


def test_truncated_file_is_refused(tiny_model_file, tmp_path):
    data = tiny_model_file.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut{cut}.dsdf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated or corrupt"):
            load_model(bad)


def test_garbage_and_pickles_are_refused(tmp_path):
    junk = tmp_path / "junk.dsdf"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(junk)
    pth = tmp_path / "latest.pth"
    torch.save({"model_state_dict": {}}, pth)
    with pytest.raises(ModelFileError, match="pickle checkpoint"):
        load_model(pth)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.dsdf")
    with pytest.raises(ModelFileError, match="No model file"):
        open_model("no-such-model-name")


def test_foreign_and_future_safetensors_are_refused(tiny_model, tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a DeepSDF model"):
        load_model(foreign)

    path = save_model(tiny_model, tmp_path / "m.dsdf")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    future = tmp_path / "future.dsdf"
    save_file(tensors, str(future), metadata={**meta, "format_version": "99"})
    with pytest.raises(ModelFileError, match="version '99'.*update the engine"):
        load_model(future)

    wrong_shape = tmp_path / "wrong.dsdf"
    cfg = json.loads(meta["decoder_config"])
    cfg["hidden_dims"] = [64] * 4
    save_file(tensors, str(wrong_shape), metadata={**meta, "decoder_config": json.dumps(cfg), "format": FORMAT_NAME})
    with pytest.raises(ModelFileError, match="shape"):
        load_model(wrong_shape)

    nan = tmp_path / "nan.dsdf"
    bad = dict(tensors)
    bad["decoder.lin0.bias"] = torch.full_like(bad["decoder.lin0.bias"], float("nan"))
    save_file(bad, str(nan), metadata=meta)
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(nan)


def test_failed_save_keeps_previous_file(tiny_model, tmp_path, monkeypatch):
    path = save_model(tiny_model, tmp_path / "m.dsdf")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError):
        save_model(tiny_model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.dsdf"]
