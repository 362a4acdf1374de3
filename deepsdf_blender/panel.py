"""The "DeepSDF" tab in the 3D view's sidebar, and the menu that makes the operators searchable (F3)."""

from __future__ import annotations

import bpy

from . import jobs
from .meshes import PROP_KIND, completion_choices, is_deepsdf
from .preferences import get_prefs, model_spec


class VIEW3D_PT_deepsdf(bpy.types.Panel):
    bl_label = "DeepSDF"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DeepSDF"

    def draw(self, context):
        layout = self.layout
        state = jobs.job_state()
        prefs = get_prefs(context)
        spec = model_spec(prefs) or "(no model set)"
        layout.label(text=f"Model: {bpy.path.basename(spec.rstrip('/')) or spec}", icon="MESH_MONKEY")
        if state.running:
            layout.progress(factor=state.progress, text=f"{state.message} {state.progress:.0%}")
            layout.operator("deepsdf.cancel_job", icon="CANCEL")
            return
        col = layout.column(align=True)
        col.operator("deepsdf.complete", icon="MOD_REMESH")
        col.operator("deepsdf.generate", icon="ADD")
        col.operator("deepsdf.interpolate", icon="IPO_EASE_IN_OUT")
        col.operator("deepsdf.remesh", icon="MOD_DECIM")
        obj = context.active_object
        if is_deepsdf(obj):
            box = layout.box()
            box.label(text=f"{obj.name}: {obj.get(PROP_KIND, 'DeepSDF')} shape", icon="INFO")
            box.label(text=f"code length {len(obj['deepsdf_code'])}, model {obj.get('deepsdf_model', '?')}")
            if "deepsdf_fit_loss" in obj:  # completions and their alternatives: lower fits the scan better
                box.label(text=f"fit loss {obj['deepsdf_fit_loss']:.3g}")
            choices = completion_choices(obj)
            if len(choices) > 1:
                row = box.row()
                row.label(text=f"shape {choices.index(obj) + 1} of {len(choices)} found for the scan")
                row.operator("deepsdf.next_alternative", text="Next", icon="FORWARD")


class VIEW3D_MT_deepsdf(bpy.types.Menu):
    bl_label = "DeepSDF"
    bl_idname = "VIEW3D_MT_deepsdf"

    def draw(self, context):
        layout = self.layout
        layout.operator("deepsdf.complete")
        layout.operator("deepsdf.generate")
        layout.operator("deepsdf.interpolate")
        layout.operator("deepsdf.remesh")
        layout.operator("deepsdf.next_alternative")
        layout.separator()
        layout.operator("deepsdf.check_engine")


def menu_entry(self, context):
    self.layout.menu(VIEW3D_MT_deepsdf.bl_idname)
