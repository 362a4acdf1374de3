"""The worker process and its protocol, without Blender."""

import subprocess
import sys
import time

import numpy as np
import pytest

from engine.protocol import decode, encode, load_array, save_array
from engine.worker_client import WorkerClient, WorkerError
from tests.analytic import SHAPES, analytic_mesh
from tests.conftest import REPO


@pytest.fixture()
def client(tmp_path):
    c = WorkerClient(sys.executable, REPO, log_path=tmp_path / "worker.log")
    yield c
    c.close()


def test_protocol_round_trip(tmp_path):
    msg = {"id": 3, "op": "generate", "params": {"count": 2, "seed": 1}}
    assert decode(encode(msg)) == msg
    assert encode(msg).endswith(b"\n") and encode(msg).count(b"\n") == 1
    with pytest.raises(ValueError):
        decode(b"[1, 2]")
    # a NaN (e.g. a loss) must not make the message unsendable: it travels as null
    assert decode(encode({"loss": float("nan"), "xs": [1.0, float("inf")]})) == {"loss": None, "xs": [1.0, None]}
    ref = save_array(tmp_path, "a", np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(load_array(ref), [[0, 1, 2], [3, 4, 5]])


def test_jobs_through_the_worker(client, tiny_model_file):
    common = {"model": str(tiny_model_file), "device": "cpu", "resolution": 32}
    info = client.wait(client.submit("check", common))
    assert info["model"]["code_length"] == 8 and info["torch"] and info["device"].startswith("cpu")

    job = client.submit("generate", {**common, "count": 2, "seed": 4, "temperature": 0.2})
    progress = []
    result = client.wait(job, timeout=120, on_progress=lambda j: progress.append(j.fraction))
    assert len(result["shapes"]) == 2 and progress and max(progress) <= 1.0
    v = load_array(result["shapes"][0]["mesh"]["vertices"])
    f = load_array(result["shapes"][0]["mesh"]["faces"])
    assert v.dtype == np.float32 and v.shape[1] == 3 and f.dtype == np.int32 and len(f) > 50
    job.cleanup()

    inter = client.wait(client.submit("interpolate", {**common, "indices": [0, 2], "steps": 3}))
    codes = [s["code"] for s in inter["shapes"]]
    np.testing.assert_allclose(codes[0], load_model_codes(tiny_model_file)[0], atol=1e-6)

    again = client.wait(client.submit("remesh", {**common, "code": codes[1], "resolution": 40, "normals": True}))
    normals = load_array(again["shapes"][0]["mesh"]["normals"])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)


def load_model_codes(path):
    from engine.model import load_model

    return load_model(path).codes.numpy()


def test_complete_returns_model_frame_and_placement(client, tiny_model_file):
    verts, faces = analytic_mesh(SHAPES["box"], 40)
    moved = verts * 3.0 + np.array([5.0, 1.0, -2.0], np.float32)
    workdir = client.new_workdir()
    scan = {"vertices": save_array(workdir, "v", moved), "faces": save_array(workdir, "f", faces)}
    params = {"model": str(tiny_model_file), "device": "cpu", "resolution": 32, "iterations": 50, "scans": [scan]}
    params["placement"] = "reference"
    shape = client.wait(client.submit("complete", params, workdir), timeout=120)["shapes"][0]
    v = load_array(shape["mesh"]["vertices"])
    assert np.abs(v).max() < 1.0  # model frame
    m = np.asarray(shape["model_to_input"])
    back = v @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(back.mean(axis=0), moved.mean(axis=0), atol=0.15)
    assert len(shape["code"]) == 8

    # the box stood on its end (90 degrees about z), found with the any-orientation search
    on_end = moved @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float32).T
    scan["vertices"] = save_array(workdir, "v_end", on_end)
    params.update(placement="estimate_any", iterations=120, resolution=40)
    shape = client.wait(client.submit("complete", params, workdir), timeout=300)["shapes"][0]
    m = np.asarray(shape["model_to_input"])
    back = load_array(shape["mesh"]["vertices"]) @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(back.min(axis=0), on_end.min(axis=0), atol=0.25)
    np.testing.assert_allclose(back.max(axis=0), on_end.max(axis=0), atol=0.25)
    params["placement"] = "sideways"
    with pytest.raises(WorkerError) as info:
        client.wait(client.submit("complete", params, workdir), timeout=60)
    assert info.value.kind == "InputError" and "unknown placement 'sideways'" in str(info.value)


def test_errors_come_back_as_typed_events(client, tmp_path):
    bad = tmp_path / "bad.dsdf"
    bad.write_bytes(b"not a model")
    with pytest.raises(WorkerError) as info:
        client.wait(client.submit("check", {"model": str(bad), "device": "cpu"}))
    assert info.value.kind == "ModelFileError" and "bad.dsdf" in str(info.value)
    with pytest.raises(WorkerError) as info:
        client.wait(client.submit("frobnicate", {}))
    assert info.value.kind == "InputError"
    assert client.alive  # the worker survives failed jobs


def test_cancel_and_kill(client):
    job = client.submit("sleep", {"seconds": 30})
    time.sleep(0.5)
    client.cancel(job)
    with pytest.raises(WorkerError) as info:
        client.wait(job, timeout=10)
    assert info.value.kind == "CancelledError"
    assert client.alive

    job = client.submit("sleep", {"seconds": 30})
    time.sleep(0.3)
    client.proc.kill()
    with pytest.raises(WorkerError) as info:
        client.wait(job, timeout=10)
    assert info.value.kind == "WorkerDied" and "exit code" in str(info.value)
    result = client.wait(client.submit("sleep", {"seconds": 0.1}), timeout=30)  # restarts by itself
    assert result["slept"] > 0


def test_missing_python_and_python_without_torch(tmp_path):
    c = WorkerClient(str(tmp_path / "no" / "python"), REPO)
    with pytest.raises(WorkerError, match="does not exist") as info:
        c.submit("check", {})
    assert info.value.kind == "EngineSetupError"
    c.close()

    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bare = WorkerClient(str(venv / "bin" / "python"), REPO)
    try:
        with pytest.raises(WorkerError, match="no PyTorch") as info:
            bare.wait(bare.submit("check", {"device": "cpu"}), timeout=60)
        assert info.value.kind == "EngineSetupError"
    finally:
        bare.close()
