"""The one-command demo runs headless and leaves a .blend and a non-blank PNG."""

import subprocess
import sys

import numpy as np

from tests.blender.conftest import REPO


def test_demo_produces_blend_and_png(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--resolution", "40", "--out", str(out),
         "--render-size", "480", "270"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for step in ("completed the scan", "generated 6 variants", "interpolated 5 steps", "rendered"):
        assert step in proc.stdout, proc.stdout
    assert (out / "demo.blend").stat().st_size > 100_000
    from PIL import Image

    image = np.asarray(Image.open(out / "demo.png").convert("RGB"), float)
    assert image.shape == (270, 480, 3)
    assert image.std() > 10  # not blank: objects on the background
