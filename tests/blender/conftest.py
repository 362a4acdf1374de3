"""Blender tier: the real ``bpy`` module (pip install bpy==5.0.1), run as its own pytest process.

BLENDER_USER_RESOURCES points at a temporary directory *before* bpy is imported,
so installing the extension never touches a real user's Blender.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_USER = tempfile.mkdtemp(prefix="deepsdf-blender-user-")
os.environ["BLENDER_USER_RESOURCES"] = _USER

bpy = pytest.importorskip("bpy", reason="the Blender tier needs the bpy module: pip install bpy==5.0.1")

REPO = Path(__file__).resolve().parents[2]
PKG = "bl_ext.user_default.deepsdf_blender"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """The tests' tiny analytic model, trained in a subprocess (no torch inside Blender's process)."""
    path = tmp_path_factory.mktemp("model") / "tiny.dsdf"
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.analytic import train_tiny_model\n"
        "from engine.model import save_model\n"
        f"save_model(train_tiny_model(), {str(path)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return path


@pytest.fixture(scope="session")
def extension_zip() -> Path:
    sys.path.insert(0, str(REPO))
    import build

    return build.main(["--no-validate"])


@pytest.fixture(scope="session")
def addon(extension_zip, tiny_model_path):
    """Install and enable the built zip through Blender's extension API; uninstall at the end."""
    bpy.ops.wm.read_homefile(use_empty=True)
    result = bpy.ops.extensions.package_install_files(
        filepath=str(extension_zip), repo="user_default", enable_on_install=True
    )
    assert result == {"FINISHED"}
    assert PKG in bpy.context.preferences.addons
    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.model_source = "FILE"
    prefs.model_file = str(tiny_model_path)
    prefs.device = "cpu"
    yield sys.modules[PKG]


@pytest.fixture()
def scene(addon):
    """An empty scene, and the add-on's preferences reset to the tiny model."""
    bpy.ops.wm.read_homefile(use_empty=True)
    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.engine_python = ""
    prefs.model_source = "FILE"
    prefs.device = "cpu"
    yield bpy.context.scene
