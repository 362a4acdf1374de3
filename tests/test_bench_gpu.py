"""The GPU benchmark runs (on the CPU, at small sizes) and its checks hold there too."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "deepsdf_reference"


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="needs the reference fixture in ../shared/fixtures")
def test_bench_gpu_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(REPO / "benchmarks/bench_gpu.py"), "--quick", "--device", "cpu"]
    cmd += ["--sections", "accuracy", "mesh", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    # on the CPU every precision falls back to fp32: the decoder matches float64
    assert data["accuracy"]["fp32"]["relative"] < 1e-5
    # the narrow band meshes the reference-equivalent dense grid's surface, with fewer points
    mesh = data["mesh"]
    ours = mesh["ours_fp32_coarse_fp32_64"]
    assert ours["identical_faces_to_reference"] and ours["faces"] == mesh["reference_dense_64"]["faces"]
    assert ours["points"] < 0.5 * mesh["reference_dense_64"]["points"]
    assert "== cpu" in proc.stdout
