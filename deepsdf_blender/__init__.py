"""DeepSDF for Blender: complete scans, generate and morph shapes of a learned class.

The heavy work runs in a separate engine process (see ``jobs.py`` and the bundled
``engine`` package); this package holds only Blender-side code. Heavy imports
happen inside operators, so enabling the add-on is instant.
"""

from __future__ import annotations

import bpy

from . import jobs
from .operators import (
    DEEPSDF_OT_cancel_job,
    DEEPSDF_OT_check_engine,
    DEEPSDF_OT_complete,
    DEEPSDF_OT_generate,
    DEEPSDF_OT_interpolate,
    DEEPSDF_OT_next_alternative,
    DEEPSDF_OT_remesh,
)
from .panel import VIEW3D_MT_deepsdf, VIEW3D_PT_deepsdf, menu_entry
from .preferences import DeepSDFPreferences

classes = (
    DeepSDFPreferences,
    jobs.DeepSDFJobState,
    DEEPSDF_OT_complete,
    DEEPSDF_OT_generate,
    DEEPSDF_OT_interpolate,
    DEEPSDF_OT_remesh,
    DEEPSDF_OT_next_alternative,
    DEEPSDF_OT_check_engine,
    DEEPSDF_OT_cancel_job,
    VIEW3D_MT_deepsdf,
    VIEW3D_PT_deepsdf,
)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.WindowManager.deepsdf_job = bpy.props.PointerProperty(type=jobs.DeepSDFJobState)
    bpy.types.VIEW3D_MT_object.append(menu_entry)


def unregister():
    jobs.shutdown()
    bpy.types.VIEW3D_MT_object.remove(menu_entry)
    del bpy.types.WindowManager.deepsdf_job
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
