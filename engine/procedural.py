"""Procedural shape families with exact SDFs: chairs and tables, seeded, aligned and watertight.

Each shape is a union of primitives (boxes, optionally tilted and rounded, and capped
cylinders), so its SDF is computed exactly from the primitives without a mesh: the
minimum of exact primitive distances, which is exact outside the shape and has the
right sign everywhere (inside, where parts overlap, its magnitude can be smaller
than the true distance). Meshes come from marching cubes of that SDF and are
watertight by construction, so the mesh path (`prepare`) works on them too.

Canonical frame (before normalisation): metres, **y up**, the floor at y = 0, the
**front facing +z** (a sitter faces +z; a chair's back is at -z), centred on x = z = 0.
``normalization`` gives the reference's map to the model frame (bounding-box centre,
farthest point at radius 1/1.03).

Chair kinds: ``four_legs``, ``sled``, ``swivel``, ``armchair``, ``stool``, ``bench``;
backs ``solid``, ``slats``, ``open``; optional stretchers; thin to thick parts; all
proportions continuous. Table kinds: ``four_legs``, ``pedestal``, ``trestle``; rectangular
or round tops, optional apron and shelf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .frames import rotation_y

CHAIR_KINDS = ("four_legs", "sled", "swivel", "armchair", "stool", "bench")
BACK_KINDS = ("solid", "slats", "open")
TABLE_KINDS = ("four_legs", "pedestal", "trestle")
FAMILIES = ("chairs", "tables")


@dataclass
class Box:
    """Box with half extents ``half`` at ``center``, rotated by ``rotation`` (3 x 3), edges rounded by ``round``."""

    center: np.ndarray
    half: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    round: float = 0.0

    def sdf(self, p: np.ndarray) -> np.ndarray:
        local = (p - self.center) @ self.rotation  # rows: R^T (p - c)
        q = np.abs(local) - (self.half - self.round)
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        inside = np.minimum(q.max(axis=1), 0.0)
        return outside + inside - self.round

    def extent(self) -> np.ndarray:
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * self.half
        return corners @ self.rotation.T + self.center


@dataclass
class Cylinder:
    """Capped cylinder of ``radius`` from point ``a`` to point ``b``."""

    a: np.ndarray
    b: np.ndarray
    radius: float

    def sdf(self, p: np.ndarray) -> np.ndarray:
        ba = self.b - self.a
        pa = p - self.a
        baba = float(ba @ ba)
        paba = pa @ ba
        x = np.linalg.norm(pa * baba - np.outer(paba, ba), axis=1) - self.radius * baba
        y = np.abs(paba - baba * 0.5) - baba * 0.5
        x2, y2 = x * x, y * y * baba
        d = np.where(np.maximum(x, y) < 0.0, -np.minimum(x2, y2), np.where(x > 0, x2, 0.0) + np.where(y > 0, y2, 0.0))
        return np.sign(d) * np.sqrt(np.abs(d)) / baba

    def extent(self) -> np.ndarray:
        r = self.radius
        return np.concatenate(
            [self.a + o for o in ((-r, -r, -r), (r, r, r))] + [self.b + o for o in ((-r, -r, -r), (r, r, r))]
        ).reshape(-1, 3)


@dataclass
class ProceduralShape:
    """One generated shape: its family, kind, parameters and primitives (canonical frame, metres)."""

    family: str
    kind: str
    params: dict
    parts: list

    def sdf(self, points: np.ndarray, chunk: int = 200_000) -> np.ndarray:
        """Exact SDF (see module doc) at points (n, 3), canonical frame. Returns (n,) float64."""
        pts = np.asarray(points, np.float64).reshape(-1, 3)
        out = np.empty(len(pts))
        for s in range(0, len(pts), chunk):
            p = pts[s : s + chunk]
            out[s : s + chunk] = np.min([part.sdf(p) for part in self.parts], axis=0)
        return out

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        pts = np.concatenate([p.extent() for p in self.parts])
        return pts.min(axis=0), pts.max(axis=0)

    @property
    def name(self) -> str:
        return f"{self.family}_{self.kind}_{self.params.get('index', 0):04d}"


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _box(cx, cy, cz, hx, hy, hz, rot=None, rnd=0.0) -> Box:
    half = np.array([hx, hy, hz], float)
    return Box(np.array([cx, cy, cz], float), half, np.eye(3) if rot is None else rot, min(rnd, 0.9 * half.min()))


def _cyl(a, b, r) -> Cylinder:
    return Cylinder(np.asarray(a, float), np.asarray(b, float), float(r))


# -- chairs -------------------------------------------------------------------


def _back(parts, rng, kind, x0, x1, z, y0, height, tilt, thick, post):
    """A backrest between x0 and x1 at depth z, from y0 up ``height``, leaning back by ``tilt``."""
    rot = _rot_x(-tilt)  # top leans towards -z
    up = np.array([0.0, math.cos(tilt), -math.sin(tilt)])

    def at(x, t):  # point on the back's plane: x across, t up from the seat
        return np.array([x, y0, z]) + up * t

    width = (x1 - x0) / 2
    xc = (x0 + x1) / 2
    if kind == "solid":
        c = at(xc, height / 2)
        parts.append(Box(c, np.array([width, height / 2, thick]), rot, min(0.3 * thick, 0.01)))
        return
    for x in (x0 + post, x1 - post):  # two posts
        c = at(x, height / 2)
        parts.append(Box(c, np.array([post, height / 2, post]), rot))
    rail = float(rng.uniform(0.03, 0.08))
    parts.append(Box(at(xc, height - rail / 2), np.array([width, rail / 2, max(thick, post * 0.8)]), rot))
    if kind == "slats":
        n = int(rng.integers(3, 7))
        slat = float(rng.uniform(0.008, 0.02))
        inner0, inner1 = x0 + 2 * post, x1 - 2 * post
        for k in range(n):
            x = inner0 + (k + 0.5) * (inner1 - inner0) / n
            parts.append(Box(at(x, (height - rail) / 2), np.array([slat, (height - rail) / 2, thick * 0.6]), rot))
    elif rng.random() < 0.5:  # open back with a middle rail
        parts.append(Box(at(xc, height * 0.45), np.array([width, rail / 3, thick * 0.7]), rot))


def chair(rng: np.random.Generator, kind: str | None = None) -> ProceduralShape:
    """One random chair (see the module doc for the kinds and the frame)."""
    kind = kind or CHAIR_KINDS[int(rng.integers(len(CHAIR_KINDS)))]
    if kind not in CHAIR_KINDS:
        raise InputError(f"unknown chair kind {kind!r}; choose from {CHAIR_KINDS}")
    thick_parts = rng.random() < 0.35
    width = float(rng.uniform(0.40, 0.58)) if kind != "bench" else float(rng.uniform(1.0, 1.6))
    depth = float(rng.uniform(0.38, 0.52)) if kind != "bench" else float(rng.uniform(0.35, 0.5))
    height = float(rng.uniform(0.40, 0.50)) if kind != "stool" else float(rng.uniform(0.45, 0.78))
    seat_t = float(rng.uniform(0.02, 0.045)) * (1.8 if thick_parts else 1.0)
    leg = float(rng.uniform(0.012, 0.025)) * (1.7 if thick_parts else 1.0)
    if kind == "armchair":
        width, depth, seat_t, leg = width * 1.2, depth * 1.1, seat_t * 1.8, leg * 1.4
    back_kind = BACK_KINDS[int(rng.integers(len(BACK_KINDS)))]
    has_back = kind != "stool" and not (kind == "bench" and rng.random() < 0.4)
    stretchers = rng.random() < 0.5
    round_seat = kind in ("stool", "swivel") and rng.random() < 0.5
    parts: list = []
    seat_y = height - seat_t / 2
    if round_seat:
        r = min(width, depth) / 2
        parts.append(_cyl((0, height - seat_t, 0), (0, height, 0), r))
    else:
        parts.append(_box(0, seat_y, 0, width / 2, seat_t / 2, depth / 2, rnd=seat_t * 0.3))
    x_in, z_in = width / 2 - leg * 1.5, depth / 2 - leg * 1.5
    leg_top = height - seat_t
    if kind in ("four_legs", "armchair", "bench"):
        xs = [-x_in, x_in] if kind != "bench" or width < 1.3 else [-x_in, 0.0, x_in]
        round_legs = rng.random() < 0.4
        for x in xs:
            for z in (-z_in, z_in):
                if round_legs:
                    parts.append(_cyl((x, 0, z), (x, leg_top, z), leg))
                else:
                    parts.append(_box(x, leg_top / 2, z, leg, leg_top / 2, leg))
        if stretchers:
            y = float(rng.uniform(0.08, 0.2))
            for x in xs:
                parts.append(_box(x, y, 0, leg * 0.6, leg * 0.6, z_in))
            parts.append(_box(0, y + 0.03, 0, x_in, leg * 0.6, leg * 0.6))
    elif kind == "sled":
        tube = leg * 0.8
        for x in (-x_in, x_in):
            parts.append(_cyl((x, tube, -z_in - 0.03), (x, tube, z_in + 0.03), tube))
            parts.append(_cyl((x, tube, z_in), (x, leg_top, z_in * 0.8), tube))
            parts.append(_cyl((x, tube, -z_in), (x, leg_top, -z_in * 0.8), tube))
    elif kind == "swivel":
        col = float(rng.uniform(0.025, 0.04))
        hub = float(rng.uniform(0.06, 0.1))
        parts.append(_cyl((0, 0.06, 0), (0, leg_top, 0), col))
        n_feet = 5 if rng.random() < 0.7 else 4
        reach = float(rng.uniform(0.25, 0.33))
        for k in range(n_feet):
            ang = 2 * math.pi * k / n_feet
            rot = rotation_y(ang)
            c = rot @ np.array([0, 0, reach / 2])
            parts.append(Box(np.array([c[0], 0.045, c[2]]), np.array([leg, 0.02, reach / 2]), rot))
            tip = rot @ np.array([0, 0, reach])
            parts.append(_cyl((tip[0], 0.0, tip[2]), (tip[0], 0.04, tip[2]), 0.025))
        parts.append(_cyl((0, 0.03, 0), (0, 0.07, 0), hub))
    elif kind == "stool":
        n = 3 if rng.random() < 0.4 else 4
        splay = float(rng.uniform(0.0, 0.08))
        r_top = min(width, depth) / 2 - leg * 2
        for k in range(n):
            ang = 2 * math.pi * (k + 0.5) / n
            d = np.array([math.sin(ang), 0, math.cos(ang)])
            parts.append(_cyl(d * (r_top + splay), d * r_top + np.array([0, leg_top, 0]), leg))
        if stretchers:
            y = leg_top * float(rng.uniform(0.25, 0.4))
            r_mid = r_top + splay * (1 - y / leg_top)
            for k in range(n):
                a1, a2 = 2 * math.pi * (k + 0.5) / n, 2 * math.pi * (k + 1.5) / n
                p1 = np.array([math.sin(a1) * r_mid, y, math.cos(a1) * r_mid])
                p2 = np.array([math.sin(a2) * r_mid, y, math.cos(a2) * r_mid])
                parts.append(_cyl(p1, p2, leg * 0.6))
    if has_back:
        back_h = float(rng.uniform(0.3, 0.55))
        tilt = math.radians(float(rng.uniform(0, 16)))
        post = max(leg, 0.015)
        thick = float(rng.uniform(0.012, 0.03)) * (1.6 if thick_parts else 1.0)
        half_w = (min(width, depth) / 2 if round_seat else width / 2) - 0.01
        back_z = -(min(width, depth) / 2 if round_seat else depth / 2) + thick
        _back(parts, rng, back_kind, -half_w, half_w, back_z, height, back_h, tilt, thick, post)
    if kind == "armchair" or (kind in ("four_legs", "swivel") and rng.random() < 0.15):
        arm_h = float(rng.uniform(0.18, 0.26))
        arm_w = float(rng.uniform(0.03, 0.07))
        for x in (-width / 2 - arm_w / 2, width / 2 + arm_w / 2):
            parts.append(_box(x, height + arm_h, -0.02, arm_w / 2, 0.02, depth / 2, rnd=0.01))
            if kind == "armchair" and rng.random() < 0.5:  # solid sides down to the floor
                parts.append(_box(x, (height + arm_h) / 2, -0.02, arm_w / 2, (height + arm_h) / 2, depth / 2))
            else:
                parts.append(_box(x, height + arm_h / 2, depth / 2 - 0.05, arm_w / 3, arm_h / 2, arm_w / 3))
    params = {
        "width": width, "depth": depth, "height": height, "seat_thickness": seat_t, "leg": leg,
        "back": back_kind if has_back else "none", "stretchers": bool(stretchers), "round_seat": bool(round_seat),
    }  # fmt: skip
    return ProceduralShape("chairs", kind, params, parts)


# -- tables -------------------------------------------------------------------


def table(rng: np.random.Generator, kind: str | None = None) -> ProceduralShape:
    """One random table (see the module doc)."""
    kind = kind or TABLE_KINDS[int(rng.integers(len(TABLE_KINDS)))]
    if kind not in TABLE_KINDS:
        raise InputError(f"unknown table kind {kind!r}; choose from {TABLE_KINDS}")
    height = float(rng.uniform(0.45, 0.78))
    round_top = rng.random() < (0.6 if kind == "pedestal" else 0.25)
    width = float(rng.uniform(0.6, 1.8))
    depth = width if round_top else float(rng.uniform(0.5, min(1.0, width)))
    top_t = float(rng.uniform(0.02, 0.06))
    leg = float(rng.uniform(0.015, 0.04))
    parts: list = []
    if round_top:
        parts.append(_cyl((0, height - top_t, 0), (0, height, 0), width / 2))
    else:
        parts.append(_box(0, height - top_t / 2, 0, width / 2, top_t / 2, depth / 2, rnd=top_t * 0.3))
    leg_top = height - top_t
    apron = rng.random() < 0.5 and kind == "four_legs"
    if kind == "four_legs":
        inset = leg * 2 if not round_top else width / 2 * 0.55
        xs = [-(width / 2 - inset), width / 2 - inset] if not round_top else [-inset, inset]
        zs = [-(depth / 2 - inset), depth / 2 - inset] if not round_top else [-inset, inset]
        for x in xs:
            for z in zs:
                parts.append(_box(x, leg_top / 2, z, leg, leg_top / 2, leg))
        if apron:
            ah = float(rng.uniform(0.04, 0.1))
            parts.append(_box(0, leg_top - ah / 2, zs[0], abs(xs[0]), ah / 2, leg * 0.5))
            parts.append(_box(0, leg_top - ah / 2, zs[1], abs(xs[0]), ah / 2, leg * 0.5))
            parts.append(_box(xs[0], leg_top - ah / 2, 0, leg * 0.5, ah / 2, abs(zs[0])))
            parts.append(_box(xs[1], leg_top - ah / 2, 0, leg * 0.5, ah / 2, abs(zs[0])))
        if rng.random() < 0.3:  # lower shelf
            parts.append(_box(0, leg_top * 0.25, 0, abs(xs[0]), 0.012, abs(zs[0])))
    elif kind == "pedestal":
        col = float(rng.uniform(0.04, 0.1))
        parts.append(_cyl((0, 0.02, 0), (0, leg_top, 0), col))
        if rng.random() < 0.5:
            parts.append(_cyl((0, 0, 0), (0, 0.03, 0), min(width, depth) * float(rng.uniform(0.25, 0.4))))
        else:
            reach = min(width, depth) * 0.38
            for ang in (0.0, math.pi / 2):
                rot = rotation_y(ang)
                parts.append(Box(np.array([0, 0.025, 0]), np.array([leg * 1.2, 0.025, reach]), rot))
    else:  # trestle
        x = width / 2 - float(rng.uniform(0.08, 0.2))
        foot = depth / 2 * 0.9
        for sx in (-x, x):
            parts.append(_box(sx, 0.025, 0, leg * 1.2, 0.025, foot))
            parts.append(_box(sx, leg_top / 2, 0, leg * 1.2, leg_top / 2, leg * 2.5))
            parts.append(_box(sx, leg_top - 0.02, 0, leg * 1.2, 0.02, foot * 0.9))
        parts.append(_box(0, leg_top * float(rng.uniform(0.3, 0.6)), 0, x, leg, leg))
    params = {"width": width, "depth": depth, "height": height, "top": "round" if round_top else "rect",
              "apron": bool(apron), "leg": leg}  # fmt: skip
    return ProceduralShape("tables", kind, params, parts)


# -- collections ----------------------------------------------------------------


def generate(family: str, count: int, seed: int = 0) -> list[ProceduralShape]:
    """``count`` shapes of ``family`` (``chairs`` or ``tables``); shape i depends only on (seed, i).

    Kinds cycle so every kind is represented evenly.
    """
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; choose from {FAMILIES}")
    kinds = CHAIR_KINDS if family == "chairs" else TABLE_KINDS
    make = chair if family == "chairs" else table
    shapes = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        shape = make(rng, kinds[i % len(kinds)])
        shape.params["index"] = i
        shape.params["seed"] = seed
        shapes.append(shape)
    return shapes


def normalization(shape: ProceduralShape, resolution: int = 128) -> tuple[np.ndarray, float]:
    """The reference normalisation ``(offset, scale)`` of the shape's mesh (model = (x + offset) * scale)."""
    from .frames import reference_normalization

    vertices, _ = shape_mesh(shape, resolution)
    return reference_normalization(vertices)


def shape_mesh(shape: ProceduralShape, resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Watertight mesh of the shape (canonical frame): marching cubes of the exact SDF.

    ``resolution`` points along the longest side of the padded bounding box.
    Returns vertices (n, 3) float32 and faces (m, 3) int32.
    """
    from skimage import measure

    lo, hi = shape.bounds()
    pad = 0.02
    lo, hi = lo - pad, hi + pad
    step = float((hi - lo).max()) / (resolution - 1)
    counts = np.maximum(np.ceil((hi - lo) / step).astype(int) + 1, 3)
    axes = [lo[k] + step * np.arange(counts[k]) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    values = shape.sdf(grid).reshape(*counts).astype(np.float32)
    verts, faces, _, _ = measure.marching_cubes(values, 0.0, spacing=(step, step, step))
    return (verts + lo).astype(np.float32), faces.astype(np.int32)


def exact_samples(
    shape: ProceduralShape,
    samples: int = 500_000,
    variance: float = 0.005,
    uniform_fraction: float = 3 / 50,
    seed: int = 0,
    mesh: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Reference-style SDF samples with exact values, in the model frame.

    mesh: the shape's mesh if already made by :func:`shape_mesh`.

    Returns ``(points (n, 3) float32, sdf (n,) float32, offset (3,), scale)``.
    """
    from .frames import reference_normalization, to_model_frame
    from .metrics import sample_surface

    rng = np.random.default_rng(seed)
    verts, faces = mesh if mesh is not None else shape_mesh(shape)
    offset, scale = reference_normalization(verts)
    local = to_model_frame(verts, offset, scale)
    n_uniform = round(samples * uniform_fraction)
    n_surface = (samples - n_uniform) // 2
    surf, _ = sample_surface(local, faces, n_surface, int(rng.integers(2**31)))
    std = math.sqrt(variance)
    pts = np.concatenate(
        [
            surf + rng.normal(0, std, surf.shape),
            surf + rng.normal(0, std / math.sqrt(10), surf.shape),
            rng.uniform(-1, 1, (samples - 2 * n_surface, 3)),
        ]
    )
    original = pts / scale - offset
    sdf = shape.sdf(original) * scale
    return pts.astype(np.float32), sdf.astype(np.float32), offset, scale


def write_dataset(
    family: str,
    count: int,
    out_dir,
    seed: int = 0,
    samples: int = 500_000,
    test_fraction: float = 0.0,
    mesh_dir=None,
    on_progress=None,
) -> list[str]:
    """Generate ``count`` shapes and write them in the reference data layout with exact SDF samples.

    Writes ``SdfSamples``, ``NormalizationParameters``, ``SurfaceSamples`` (30,000 points
    with normals, original frame) and ``splits/{train,test}.json`` under ``out_dir``
    (dataset ``Procedural``, class = family); with ``mesh_dir`` also each shape's
    watertight mesh as OBJ (for `prepare`, Blender or the scan simulator). Shapes
    already written are skipped. Returns the shape ids.
    """
    import json
    from pathlib import Path

    from .meshio import write_bytes_atomic
    from .metrics import sample_surface
    from .prepare import _save_npz_atomic, point_cloud_ply
    from .progress import report

    out = Path(out_dir)
    shapes = generate(family, count, seed)
    ids = [s.name for s in shapes]
    rel = Path("Procedural") / family
    for k, shape in enumerate(shapes):
        target = out / "SdfSamples" / rel / f"{shape.name}.npz"
        if not target.is_file():
            verts, faces = shape_mesh(shape)
            pts, sdf, offset, scale = exact_samples(shape, samples, seed=seed * 100_003 + k, mesh=(verts, faces))
            _save_npz_atomic(
                out / "NormalizationParameters" / rel / f"{shape.name}.npz",
                offset=offset.astype(np.float64),
                scale=np.array([scale]),
            )
            surf, normals = sample_surface(verts, faces, 30_000, seed=k)
            write_bytes_atomic(out / "SurfaceSamples" / rel / f"{shape.name}.ply", point_cloud_ply(surf, normals))
            if mesh_dir is not None:
                import trimesh

                mesh_path = Path(mesh_dir) / f"{shape.name}.obj"
                mesh_path.parent.mkdir(parents=True, exist_ok=True)
                trimesh.Trimesh(verts, faces, process=False).export(mesh_path)
            rows = np.concatenate([pts, sdf[:, None]], axis=1)
            _save_npz_atomic(target, pos=rows[rows[:, 3] > 0], neg=rows[rows[:, 3] <= 0])
        report(on_progress, k + 1, count, f"generating {family}")
    order = np.random.default_rng(seed).permutation(count)
    test = {ids[i] for i in order[: round(test_fraction * count)]}
    for split, members in (("train", [i for i in ids if i not in test]), ("test", [i for i in ids if i in test])):
        write_bytes_atomic(
            out / "splits" / f"{split}.json", json.dumps({"Procedural": {family: members}}, indent=1).encode()
        )
    (out / "shapes.json").write_text(
        json.dumps([{"id": s.name, "kind": s.kind, **{k: v for k, v in s.params.items()}} for s in shapes], indent=1)
    )
    return ids
