"""Build the installable Blender extension zip: ``python build.py [--with-wheels] [--no-validate]``.

Assembles ``deepsdf_blender/`` with the ``engine`` package inside it and the
manifest into ``build/deepsdf_blender/``, zips it to ``dist/deepsdf_blender-<version>.zip``
and runs Blender's own validator on the zip (``bl_pkg/cli/blender_ext.py validate``,
shipped with the ``bpy`` module or Blender). ``--with-wheels`` downloads the
engine's dependencies as wheels for one platform (default: this one) and lists
them in the manifest, so Blender's own Python can run the engine with nothing
else installed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "deepsdf_blender"
ENGINE = ROOT / "engine"
MANIFEST = ROOT / "blender_manifest.toml"
# What the worker imports at run time (prepare/train extras are not needed inside Blender).
WORKER_REQUIREMENTS = ["torch==2.13.0", "scipy", "scikit-image", "trimesh", "safetensors"]
PLATFORM_TAGS = {"linux-x64": "manylinux_2_28_x86_64", "windows-x64": "win_amd64", "macos-arm64": "macosx_11_0_arm64"}
SKIP = re.compile(r"(__pycache__|\.pyc$|\.pytest_cache|\.egg-info)")


def _copy_tree(src: Path, dst: Path) -> None:
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if SKIP.search(str(rel)) or path.is_dir():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)


def version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', MANIFEST.read_text(), re.M).group(1)


def download_wheels(target: Path, platform: str | None) -> list[str]:
    """pip-download the worker's dependencies (and theirs) as wheels into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-d", str(target), *WORKER_REQUIREMENTS]
    if platform:
        cmd += ["--platform", PLATFORM_TAGS[platform], "--python-version", "3.11", "--implementation", "cp"]
    subprocess.run(cmd, check=True)
    # Blender ships numpy; bundling another copy would shadow it inside Blender's process.
    wheels = sorted(p.name for p in target.glob("*.whl") if not p.name.startswith("numpy-"))
    for p in target.glob("numpy-*.whl"):
        p.unlink()
    return wheels


def stage(with_wheels: bool, platform: str | None) -> Path:
    out = ROOT / "build" / "deepsdf_blender"
    shutil.rmtree(out, ignore_errors=True)
    _copy_tree(ADDON, out)
    _copy_tree(ENGINE, out / "engine")
    manifest = MANIFEST.read_text()
    if with_wheels:
        wheels = download_wheels(out / "wheels", platform)
        listing = ",\n".join(f'  "./wheels/{w}"' for w in wheels)
        manifest = manifest.replace("[permissions]", f"wheels = [\n{listing},\n]\n\n[permissions]")
        if platform:
            manifest = manifest.replace("[permissions]", f'platforms = ["{platform}"]\n\n[permissions]')
    (out / "blender_manifest.toml").write_text(manifest)
    return out


def make_zip(staged: Path, suffix: str) -> Path:
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    path = dist / f"deepsdf_blender-{version()}{suffix}.zip"
    path.unlink(missing_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(staged.rglob("*")):
            if file.is_file():
                compress = zipfile.ZIP_STORED if file.suffix == ".whl" else zipfile.ZIP_DEFLATED
                zf.write(file, file.relative_to(staged), compress_type=compress)
    return path


def validator() -> Path | None:
    """Blender's extension validator, from the bpy module or a Blender on PATH."""
    import importlib.util

    spec = importlib.util.find_spec("bpy")  # finds the module without starting Blender
    if spec is not None and spec.origin:
        found = sorted(Path(spec.origin).resolve().parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    blender = shutil.which("blender")
    if blender:
        found = sorted(Path(blender).resolve().parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    return None


def validate(zip_path: Path) -> None:
    script = validator()
    if script is None:
        raise SystemExit("Blender's validator was not found: pip install bpy==5.0.1, or pass --no-validate")
    proc = subprocess.run([sys.executable, str(script), "validate", str(zip_path)], capture_output=True, text=True)
    print(proc.stdout.strip() or proc.stderr.strip())
    if proc.returncode != 0:
        raise SystemExit(f"validation failed:\n{proc.stderr}")


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--with-wheels", action="store_true", help="bundle the engine's dependencies as wheels")
    p.add_argument("--platform", choices=sorted(PLATFORM_TAGS), help="wheel platform (default: this machine's)")
    p.add_argument("--no-validate", action="store_true", help="skip Blender's validator")
    args = p.parse_args(argv)
    staged = stage(args.with_wheels, args.platform)
    suffix = ("-" + (args.platform or "wheels")) if args.with_wheels else ""
    path = make_zip(staged, suffix)
    if not args.no_validate:
        validate(path)
    print(f"built {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path


if __name__ == "__main__":
    main()
