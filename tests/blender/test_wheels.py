"""The default engine path: Blender's own Python plus the wheels that build.py bundles.

Builds the zip with --with-wheels, installs it with Blender's extension API (Blender
unpacks the wheels into its extensions site-packages), then runs the engine worker
in a Python that has nothing but those wheels and a numpy (Blender ships numpy).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from tests.blender.conftest import PKG, REPO, bpy


@pytest.fixture(scope="module")
def wheels_addon(tmp_path_factory):
    sys.path.insert(0, str(REPO))
    import build

    if PKG in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=PKG)
    path = build.main(["--with-wheels", "--no-validate"])
    bpy.ops.wm.read_homefile(use_empty=True)
    assert bpy.ops.extensions.package_install_files(
        filepath=str(path), repo="user_default", enable_on_install=True
    ) == {"FINISHED"}
    yield sys.modules[PKG], path
    bpy.ops.preferences.addon_disable(module=PKG)


def test_engine_runs_on_bundled_wheels_alone(wheels_addon, tiny_model_path, tmp_path):
    addon, zip_path = wheels_addon
    extra = addon.jobs._extra_paths(sys.executable)
    wheel_sites = [p for p in extra if "extensions" in p]
    assert wheel_sites, extra
    assert (Path(wheel_sites[0]) / "torch").is_dir()
    # a Python with no packages at all, plus only numpy (which Blender ships)
    venv = tmp_path / "blender_like"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    shipped = tmp_path / "shipped"
    np_dir = Path(numpy.__file__).parent
    shutil.copytree(np_dir, shipped / "numpy")
    if (np_dir.parent / "numpy.libs").is_dir():
        shutil.copytree(np_dir.parent / "numpy.libs", shipped / "numpy.libs")
    client = addon.engine.worker_client.WorkerClient(
        str(venv / "bin" / "python"), Path(addon.__file__).parent, [*wheel_sites, str(shipped)]
    )
    try:
        info = client.wait(client.submit("check", {"model": str(tiny_model_path), "device": "cpu"}), timeout=300)
        assert info["torch"].startswith("2.13.0") and info["model"]["code_length"] == 8
        assert info["executable"].startswith(str(venv))
        result = client.wait(
            client.submit("generate", {"model": str(tiny_model_path), "device": "cpu", "count": 1, "resolution": 32}),
            timeout=300,
        )
        assert result["shapes"][0]["mesh"] is not None
    finally:
        client.close()
    print(f"zip with wheels: {zip_path.stat().st_size / 1e6:.1f} MB")
