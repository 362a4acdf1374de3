"""Architecture rules: the engine never imports bpy and imports its own modules relatively."""

import ast
import subprocess
import sys

import pytest
import torch

from engine.device import resolve_device
from engine.errors import DeviceError
from tests.conftest import REPO


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, 0) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


def test_engine_never_imports_bpy_and_is_relative():
    files = sorted((REPO / "engine").rglob("*.py"))
    assert files
    for path in files:
        for name, level in _imports(path):
            assert name.split(".")[0] not in ("bpy", "bmesh", "mathutils"), path
            assert not (level == 0 and name.split(".")[0] == "engine"), f"{path}: use relative imports"


def test_importing_engine_is_light():
    code = "import sys, engine, engine.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_device_selection():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu")
