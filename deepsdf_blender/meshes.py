"""Blender meshes <-> numpy arrays, in bulk (foreach_get / foreach_set, no per-vertex Python)."""

from __future__ import annotations

import json
from typing import cast

import bpy
import numpy as np

PROP_CODE = "deepsdf_code"
PROP_MODEL = "deepsdf_model"
PROP_SOURCE = "deepsdf_model_source"
PROP_KIND = "deepsdf_kind"
PROP_SETTINGS = "deepsdf_settings"
PROP_MAP = "deepsdf_model_to_local"
PROP_GROUP = "deepsdf_completion_group"
"""The same value on a scan's completion and its alternatives (one Complete Scan run)."""
PROP_CHOICE = "deepsdf_choice"
"""0 for the completion, j for its alternative j."""


class InputProblem(Exception):
    """A selected object cannot be used; the message says why, in one sentence."""


MAX_VERTICES = 1_000_000
"""Larger inputs are sent as a random subset of this many vertices (a point cloud)."""


def read_world_geometry(obj: bpy.types.Object, depsgraph) -> tuple[np.ndarray, np.ndarray | None, str]:
    """World-space vertices (n, 3) float32 and triangles (m, 3) int32 or None of an object
    evaluated with its modifiers. Returns a note when the input was thinned. Never modifies ``obj``."""
    if obj.type != "MESH":
        raise InputProblem(f"'{obj.name}' is a {obj.type.lower()}, not a mesh.")
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        n = len(mesh.vertices)
        if n == 0:
            raise InputProblem(f"'{obj.name}' has no vertices.")
        co = np.empty(n * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        co = co.reshape(n, 3)
        faces = None
        if len(mesh.polygons):
            mesh.calc_loop_triangles()
            tris = np.empty(len(mesh.loop_triangles) * 3, np.int32)
            mesh.loop_triangles.foreach_get("vertices", tris)
            faces = tris.reshape(-1, 3)
    finally:
        evaluated.to_mesh_clear()
    if not np.isfinite(co).all():
        raise InputProblem(f"'{obj.name}' has NaN or infinite coordinates.")
    world = np.array(obj.matrix_world, dtype=np.float64)
    co = (co.astype(np.float64) @ world[:3, :3].T + world[:3, 3]).astype(np.float32)
    if not np.isfinite(co).all():
        raise InputProblem(f"'{obj.name}' has an invalid transform.")
    if np.ptp(co, axis=0).max() <= 0:
        raise InputProblem(f"'{obj.name}' has no extent (all vertices coincide).")
    note = ""
    if n > MAX_VERTICES:
        keep = np.random.default_rng(0).choice(n, MAX_VERTICES, replace=False)
        co, faces = co[keep], None
        note = f"'{obj.name}' has {n:,} vertices: used a random {MAX_VERTICES:,} as a point cloud."
    return co, faces, note


def new_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray | None = None) -> bpy.types.Mesh:
    """A smooth-shaded mesh datablock from vertices (n, 3) and triangles (m, 3)."""
    vertices = np.ascontiguousarray(vertices, np.float32)
    faces = np.ascontiguousarray(faces, np.int32)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), bool))
    mesh.update(calc_edges=True)
    if normals is not None and len(normals) == len(vertices):
        mesh.normals_split_custom_set_from_vertices(np.ascontiguousarray(normals, np.float32))
    mesh.validate(clean_customdata=False)
    return mesh


def set_confidence(mesh: bpy.types.Mesh, values: np.ndarray) -> None:
    """A per-vertex colour attribute 'deepsdf_confidence' (white = observed, red = invented)."""
    v = np.clip(np.asarray(values, np.float32), 0, 1)
    rgba = np.stack([np.ones_like(v), v, v, np.ones_like(v)], axis=1)
    attr = cast(bpy.types.FloatColorAttribute, mesh.color_attributes.new("deepsdf_confidence", "FLOAT_COLOR", "POINT"))
    attr.data.foreach_set("color", rgba.ravel())


def tag_object(
    obj: bpy.types.Object, code, identity: str, source: str, kind: str, model_to_local: np.ndarray, settings: dict
) -> None:
    """Store what the operators need to chain (complete -> interpolate -> remesh)."""
    obj[PROP_CODE] = [float(x) for x in code]
    obj[PROP_MODEL] = identity
    obj[PROP_SOURCE] = source
    obj[PROP_KIND] = kind
    obj[PROP_MAP] = [float(x) for x in np.asarray(model_to_local, np.float64).ravel()]
    obj[PROP_SETTINGS] = json.dumps(settings)


def is_deepsdf(obj) -> bool:
    return obj is not None and obj.type == "MESH" and PROP_CODE in obj


def stored_code(obj) -> np.ndarray:
    return np.asarray(list(obj[PROP_CODE]), np.float32)


def stored_map(obj) -> np.ndarray:
    return np.asarray(list(obj[PROP_MAP]), np.float64).reshape(4, 4)


def completion_choices(obj) -> list:
    """The completion ``obj`` belongs to and its alternatives (objects in the file with the
    same :data:`PROP_GROUP`), the completion first, then by alternative number; [] for an
    object that is not a completion."""
    if obj is None or PROP_GROUP not in obj:
        return []
    group = obj[PROP_GROUP]
    members = [o for o in bpy.data.objects if o.get(PROP_GROUP) == group and is_deepsdf(o)]
    return sorted(members, key=lambda o: (int(o.get(PROP_CHOICE, 0)), o.name))
