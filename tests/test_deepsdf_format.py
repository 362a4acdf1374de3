"""Reference DeepSDF experiments: import parity with the reference decoder, export and round trip."""

import json

import numpy as np
import pytest
import torch

from engine.deepsdf_format import export_experiment, import_experiment
from engine.errors import ModelFileError


def test_import_reproduces_reference_outputs(reference_fixture):
    model = import_experiment(reference_fixture / "experiment")
    queries = np.load(reference_fixture / "queries.npz")
    assert list(queries["names"]) == [n.rsplit("/", 1)[-1] for n in model.shape_names]
    xyz = torch.from_numpy(queries["xyz"])
    for i in range(model.num_shapes):
        got = model.decoder.sdf(model.codes[i], xyz).numpy()
        np.testing.assert_allclose(got, queries["sdf"][i], atol=1e-5)
    assert model.config.code_length == 256 and model.decoder.num_parameters() == 1_843_195
    assert model.info["epoch"] == 120


def test_export_round_trips_and_uses_reference_layout(reference_fixture, tmp_path):
    model = import_experiment(reference_fixture / "experiment")
    out = export_experiment(model, tmp_path / "exp")
    params = torch.load(out / "ModelParameters" / "latest.pth", weights_only=True)
    state = params["model_state_dict"]
    original = torch.load(reference_fixture / "experiment" / "ModelParameters" / "latest.pth", weights_only=True)
    assert set(state) == set(original["model_state_dict"])  # same keys: module.lin0.weight_g, ...
    for key, value in original["model_state_dict"].items():
        assert torch.equal(state[key], value), key
    codes = torch.load(out / "LatentCodes" / "latest.pth", weights_only=True)["latent_codes"]["weight"]
    assert torch.equal(codes, model.codes)
    specs = json.loads((out / "specs.json").read_text())
    assert specs["NetworkSpecs"]["latent_in"] == [4] and specs["CodeLength"] == 256
    back = import_experiment(out)
    assert back.shape_names == model.shape_names
    assert back.identity == model.identity
    np.testing.assert_array_equal(back.scales, model.scales)


def test_old_latent_layout_and_missing_split(reference_fixture, tmp_path):
    model = import_experiment(reference_fixture / "experiment")
    out = export_experiment(model, tmp_path / "exp")
    torch.save({"epoch": 5, "latent_codes": model.codes[:, None, :].clone()}, out / "LatentCodes" / "latest.pth")
    (out / "split.json").unlink()
    back = import_experiment(out)
    assert torch.equal(back.codes, model.codes)
    assert back.shape_names == ["shape_0000", "shape_0001", "shape_0002"]


def test_bad_experiments_are_refused(reference_fixture, tmp_path):
    with pytest.raises(ModelFileError, match="no specs.json"):
        import_experiment(tmp_path)
    model = import_experiment(reference_fixture / "experiment")
    out = export_experiment(model, tmp_path / "exp")
    with pytest.raises(ModelFileError, match="Missing reference checkpoint"):
        import_experiment(out, checkpoint="2000")
    # a pickle that would run code is refused, not executed
    (out / "LatentCodes" / "latest.pth").write_bytes(
        b"\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x04true\x94\x85\x94R\x94."
    )
    with pytest.raises(ModelFileError, match="refused|not a readable"):
        import_experiment(out)
    (out / "ModelParameters" / "latest.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelFileError, match="not a readable PyTorch checkpoint"):
        import_experiment(out)
