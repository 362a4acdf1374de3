"""Add-on preferences: engine Python, device, model, default resolutions; the Check engine button."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

ENGINE_DIR = Path(__file__).resolve().parent / "engine"


def bundled_models() -> list[str]:
    """Names of the models shipped in the bundled engine (``engine/models/*.dsdf``), without importing it."""
    folder = ENGINE_DIR / "models"
    return sorted(p.stem for p in folder.glob("*.dsdf")) if folder.is_dir() else []


def _bundled_items(self, context):
    names = bundled_models()
    if not names:
        return [("", "(none bundled)", "This build ships no model: choose a model file or experiment")]
    return [(n, n, f"The bundled '{n}' model") for n in names]


class DeepSDFPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_python: StringProperty(
        name="Engine Python",
        description="Python that runs the engine (needs PyTorch). Empty: Blender's own Python with the bundled wheels",
        subtype="FILE_PATH",
        default="",
    )
    device: EnumProperty(
        name="Device",
        items=[
            ("auto", "Auto", "CUDA if available, then Apple GPU, then CPU"),
            ("cuda", "CUDA", "An NVIDIA GPU"),
            ("mps", "Apple", "Apple GPU (Metal)"),
            ("cpu", "CPU", "The processor; always works"),
        ],
        default="auto",
    )
    model_source: EnumProperty(
        name="Model",
        items=[
            ("BUNDLED", "Bundled", "A model shipped with the add-on"),
            ("FILE", "Model File", "A .dsdf model file"),
            ("EXPERIMENT", "DeepSDF Experiment", "A reference DeepSDF experiment directory (specs.json)"),
        ],
        default="BUNDLED",
    )
    bundled_model: EnumProperty(name="Bundled Model", items=_bundled_items)
    model_file: StringProperty(name="Model File", subtype="FILE_PATH", default="")
    experiment_dir: StringProperty(name="Experiment", subtype="DIR_PATH", default="")
    resolution: IntProperty(
        name="Resolution", description="Default marching-cubes grid size", default=128, min=16, max=512
    )
    preview_resolution: IntProperty(
        name="Preview Resolution", description="Grid size for interpolation steps", default=64, min=16, max=512
    )
    last_check: StringProperty(name="Last Check", default="")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "engine_python")
        col.label(text=f"Using: {python_executable(self)}", icon="CONSOLE")
        col.prop(self, "device")
        col.separator()
        col.prop(self, "model_source")
        if self.model_source == "BUNDLED":
            col.prop(self, "bundled_model")
        elif self.model_source == "FILE":
            col.prop(self, "model_file")
        else:
            col.prop(self, "experiment_dir")
        row = col.row()
        row.prop(self, "resolution")
        row.prop(self, "preview_resolution")
        col.operator("deepsdf.check_engine", icon="CHECKMARK")
        for line in self.last_check.split("\n"):
            if line:
                col.label(text=line)


def get_prefs(context=None) -> DeepSDFPreferences:
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def python_executable(prefs) -> str:
    path = bpy.path.abspath(prefs.engine_python) if prefs.engine_python else ""
    return path or sys.executable


def model_spec(prefs) -> str:
    """The model as the engine's ``open_model`` takes it (file, directory or bundled name)."""
    if prefs.model_source == "FILE":
        return bpy.path.abspath(prefs.model_file)
    if prefs.model_source == "EXPERIMENT":
        return bpy.path.abspath(prefs.experiment_dir).rstrip(os.sep)
    return prefs.bundled_model
