"""How well scans complete under realistic conditions: a grid of simulated scans, scored.

For each shape (a watertight mesh in any frame, y up) the shape is put in the model
frame with the reference normalisation, scanned by the scan simulator under every
condition of the grid, the scan is moved into an *input* frame by the condition's
pose, completed there, and the completion is mapped back and scored against the
whole shape in the model frame (unit sphere):

* views: 1 or 3 depth cameras (160 x 120, 25 degrees above, 2.5 units away; the first
  at a seeded random azimuth per shape, the others 120 degrees apart);
* noise: depth noise as a fraction of the object's size (bounding-box diagonal);
* outliers: fraction of extra points scattered in the scan's bounding box;
* pose: ``known`` (the input is the model frame), ``yaw`` (a random turn about the
  vertical), ``similarity`` (random yaw, scale x0.7-1.3 and an offset up to 2 units);
* sensor: whether the sensor positions are given (free space, normal orientation).

Known poses are fitted with :func:`api.reconstruct` ``known_frame=True``; others
with the placement search. Next to them, the **reference-style fit** on the same
scans: known pose, observations only at the surface and +-eta along normals (no free
space, no far shell), the reference preset (800 steps, 8,000 samples, N(0, 0.01^2)
start) — what DeepSDF's paper describes for its shape completion experiment.

Scores: Chamfer (the reference definition: 30,000 samples, squared distances, both
means summed), F-score at 0.01 and 0.02 (1 % and 2 % of the unit sphere's radius),
all in the model frame.

Repeats: each shape can be scanned several times per condition (``repeats``), each
repeat with its own camera azimuth, noise, outliers, pose and fit seed (repeat 0 is
the scan every earlier run used). Single completions of one shape move by several
times with a percent of scale or a different noise draw, so a comparison of two
methods needs many cases: the summary's ``vs_known_pose`` pairs each estimated-pose
completion with the known-pose completion of the same scan, and gives a 95 %
bootstrap interval that resamples shapes (with all their repeats).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .errors import InputError
from .fitting import FitConfig, fit_code, fit_preset
from .frames import apply_matrix, reference_normalization, rotation_y, to_model_frame
from .meshing import Mesh, MeshConfig
from .model import ShapeModel
from .observations import ObservationConfig, estimate_normals
from .placement import PlacementConfig
from .progress import ProgressCallback, report

POSES = ("known", "yaw", "similarity", "rotation")
"""Pose conditions: the model frame; a random yaw; a random yaw, scale and offset; a random
rotation in any direction, scale and offset (completed with ``PlacementConfig.full_rotation``).
New ones go at the end: a condition's index seeds its random pose."""


@dataclass(frozen=True)
class Condition:
    """One cell of the grid. method: ``ours`` or ``reference`` (the reference-style fit)."""

    views: int
    noise: float
    outliers: float
    pose: str
    sensor: bool
    method: str = "ours"

    @property
    def label(self) -> str:
        if self.method == "reference":
            return f"reference-style  views={self.views} noise={self.noise:g} outliers={self.outliers:g}"
        return (
            f"ours  views={self.views} noise={self.noise:g} outliers={self.outliers:g} "
            f"pose={self.pose} sensor={'yes' if self.sensor else 'no'}"
        )


@dataclass(frozen=True)
class CompletionEvalConfig:
    """The grid and the settings every completion uses."""

    views: tuple[int, ...] = (1, 3)
    noise: tuple[float, ...] = (0.0, 0.005, 0.01)
    outliers: tuple[float, ...] = (0.0,)
    poses: tuple[str, ...] = ("known", "yaw", "similarity")
    sensor: tuple[bool, ...] = (True, False)
    reference: bool = True
    """Also run the reference-style fit on every (views, noise, outliers) scan."""
    resolution: int = 64
    """Marching-cubes grid of the completions (scores barely move above 64: see the note)."""
    fit: FitConfig = field(default_factory=FitConfig)
    """Known-pose fits (ours)."""
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    observation: ObservationConfig = field(default_factory=ObservationConfig)
    reference_fit: FitConfig = field(default_factory=lambda: fit_preset("reference"))
    camera_width: int = 160
    camera_height: int = 120
    elevation: float = 25.0
    distance: float = 2.5
    scale_range: float = 0.3
    offset_range: float = 2.0
    samples: int = 30_000
    seed: int = 0
    repeats: int = 1
    """Scans per shape and condition (see the module's note on repeats)."""
    alternatives: int = 0
    """Also mesh and score this many distinct alternative completions per scan
    (``reconstruct(..., alternatives=k)``): rows get ``alternatives_chamfer`` and
    ``chamfer_best`` (the best of the completion and its alternatives, what a person
    choosing among them could get)."""

    def __post_init__(self) -> None:
        bad = set(self.poses) - set(POSES)
        if bad:
            raise InputError(f"unknown pose condition(s) {sorted(bad)}; choose from {POSES}")
        if not self.views or min(self.views) < 1:
            raise InputError("views must be at least 1")
        if any(n < 0 for n in self.noise) or any(not 0 <= o < 1 for o in self.outliers):
            raise InputError("noise must be >= 0 and outliers in [0, 1)")
        if self.repeats < 1:
            raise InputError("repeats must be at least 1")
        if self.alternatives < 0:
            raise InputError("alternatives must be 0 or more")

    def conditions(self) -> list[Condition]:
        """Every condition of the grid, reference-style rows included."""
        out = []
        for views, noise, outliers in itertools.product(self.views, self.noise, self.outliers):
            if self.reference:
                out.append(Condition(views, noise, outliers, "known", False, "reference"))
            for pose, sensor in itertools.product(self.poses, self.sensor):
                out.append(Condition(views, noise, outliers, pose, sensor))
        return out


@dataclass
class CompletionEvalResult:
    """rows: one dict per (shape, repeat, condition): the condition's fields, ``shape``,
    ``repeat``, ``chamfer``, ``f_0.01``, ``f_0.02``, ``seconds`` and, for estimated poses,
    ``scale_error`` (relative), ``yaw_error_degrees``, ``rotation_error_degrees`` (the angle of
    the rotation between the true and the estimated), ``offset_error`` (model units) and
    ``placement_chamfer`` (:func:`placement_chamfer`: what the pose error alone costs, near zero
    for a turn that maps the shape onto itself)."""

    rows: list[dict]
    config: dict

    def summary(self) -> list[dict]:
        """Per condition: shape and case counts (shapes x repeats), mean and median Chamfer, mean
        F-scores and seconds; for estimated poses the mean and median ``placement_chamfer``
        and ``vs_known_pose``, the mean Chamfer over the mean of the same scans' known-pose (ours, same sensor) completions, on the
        cases both completed, and ``vs_known_pose_ci`` its 95 % bootstrap interval
        (shapes resampled); ``vs_reference``, the mean Chamfer over the reference-style
        fit's mean on the same scans (no interval)."""
        groups: dict[tuple, list[dict]] = {}
        for r in self.rows:
            groups.setdefault(_key(r), []).append(r)
        known = {k: v for k, v in groups.items() if k[5] == "ours" and k[3] == "known"}
        out = []
        for k, rows in groups.items():
            ch = np.array([r["chamfer"] for r in rows])
            entry = dict(zip(("views", "noise", "outliers", "pose", "sensor", "method"), k, strict=True))
            ok = ch[np.isfinite(ch)]
            entry.update(
                shapes=len({r["shape"] for r in rows}),
                cases=len(rows),
                failed=int(len(ch) - len(ok)),
                chamfer_mean=float(ok.mean()) if len(ok) else float("nan"),
                chamfer_median=float(np.median(ok)) if len(ok) else float("nan"),
                f_0_01=float(np.mean([r["f_0.01"] for r in rows])),
                f_0_02=float(np.mean([r["f_0.02"] for r in rows])),
                seconds=float(np.mean([r["seconds"] for r in rows])),
            )
            placed = [r["placement_chamfer"] for r in rows if "placement_chamfer" in r]
            if placed:
                entry["placement_chamfer_mean"] = float(np.mean(placed))
                entry["placement_chamfer_median"] = float(np.median(placed))
            best = [r for r in rows if "chamfer_best" in r]
            if best:
                entry["chamfer_best_mean"] = float(np.nanmean([r["chamfer_best"] for r in best]))
            base = known.get((k[0], k[1], k[2], "known", k[4], "ours"))
            if base is not None and k[5] == "ours" and k[3] != "known":
                ratio, interval = paired_ratio(rows, base)
                entry["vs_known_pose"] = ratio
                entry["vs_known_pose_ci"] = interval
                if best:
                    # the best shown completion against the known pose's own completion
                    entry["best_vs_known_pose"] = paired_ratio(
                        [{**r, "chamfer": r["chamfer_best"]} for r in best], base
                    )[0]
            ref = [v for kk, v in groups.items() if kk[:3] == k[:3] and kk[5] == "reference"]
            if ref:
                entry["vs_reference"] = entry["chamfer_mean"] / float(np.nanmean([r["chamfer"] for r in ref[0]]))
            out.append(entry)
        return out

    def table(self) -> str:
        """The summary as a Markdown table (Chamfer x 10^3); with alternatives scored, a
        column for the best shown completion (its mean, and against the known pose)."""
        summary = self.summary()
        best = any("chamfer_best_mean" in e for e in summary)
        extra = " best shown x1e3 (vs known pose) |" if best else ""
        lines = [
            "| method | views | noise | outliers | pose | sensor | cases (failed) | Chamfer x1e3 mean / median "
            "| F@1 % | F@2 % | vs known pose (95 % CI) | vs reference-style | s |" + extra,
            "| --- " * (14 if best else 13) + "|",
        ]
        for e in summary:
            vk = ""
            if "vs_known_pose" in e:
                lo, hi = e["vs_known_pose_ci"]
                vk = f"{e['vs_known_pose']:.2f} ({lo:.2f}-{hi:.2f})"
            vr = f"{e['vs_reference']:.2f}" if "vs_reference" in e and e["method"] == "ours" else ""
            sensor = "" if e["method"] == "reference" else ("yes" if e["sensor"] else "no")
            line = (
                f"| {e['method']} | {e['views']} | {e['noise']:g} | {e['outliers']:g} | {e['pose']} | {sensor} "
                f"| {e['cases']} ({e['failed']}) | {1e3 * e['chamfer_mean']:.2f} / {1e3 * e['chamfer_median']:.2f} "
                f"| {e['f_0_01']:.3f} | {e['f_0_02']:.3f} | {vk} | {vr} | {e['seconds']:.1f} |"
            )
            if best:
                shown = f" {1e3 * e['chamfer_best_mean']:.2f}" if "chamfer_best_mean" in e else ""
                shown += f" ({e['best_vs_known_pose']:.2f})" if "best_vs_known_pose" in e else ""
                line += shown + " |"
            lines.append(line)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"config": self.config, "summary": self.summary(), "rows": self.rows}


def _key(r: dict) -> tuple:
    return (r["views"], r["noise"], r["outliers"], r["pose"], r["sensor"], r["method"])


def paired_ratio(
    rows: Sequence[dict], base: Sequence[dict], resamples: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean Chamfer of ``rows`` over that of ``base`` on the cases (shape, repeat) both
    completed, and a 95 % bootstrap interval of that ratio that resamples shapes (each
    with all its repeats, since repeats of one shape are not independent). NaN when no
    case pairs."""
    ours = {(r["shape"], r.get("repeat", 0)): r["chamfer"] for r in rows}
    theirs = {(r["shape"], r.get("repeat", 0)): r["chamfer"] for r in base}
    cases = [c for c in ours if c in theirs and np.isfinite(ours[c]) and np.isfinite(theirs[c])]
    if not cases:
        return float("nan"), (float("nan"), float("nan"))
    a = np.array([ours[c] for c in cases])
    b = np.array([theirs[c] for c in cases])
    shapes = sorted({c[0] for c in cases})
    groups = [np.array([i for i, c in enumerate(cases) if c[0] == s]) for s in shapes]
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for j in range(resamples):
        idx = np.concatenate([groups[g] for g in rng.integers(len(groups), size=len(groups))])
        draws[j] = a[idx].sum() / max(b[idx].sum(), 1e-30)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(a.sum() / max(b.sum(), 1e-30)), (float(lo), float(hi))


def case_seeds(seed: int, shape: int, repeat: int) -> tuple[np.random.Generator, int]:
    """The azimuth generator and the integer seed (scan noise and outliers, the fits) of
    one case; repeat 0 keeps the seeds of runs before repeats existed."""
    if repeat == 0:
        return np.random.default_rng([seed, shape]), seed + shape
    state = np.random.SeedSequence([seed, shape, repeat]).generate_state(1)[0]
    return np.random.default_rng([seed, shape, repeat]), int(state)


def random_pose(pose: str, rng: np.random.Generator, scale_range: float, offset_range: float) -> np.ndarray:
    """4 x 4 similarity from the model frame to a condition's input frame."""
    m = np.eye(4)
    if pose == "known":
        return m
    if pose == "rotation":
        from scipy.spatial.transform import Rotation

        q = rng.standard_normal(4)  # a normalised 4-d Gaussian: a uniformly random rotation
        turn = Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()
    else:
        turn = rotation_y(rng.uniform(0, 2 * math.pi))
    scale = rng.uniform(1 - scale_range, 1 + scale_range) if pose in ("similarity", "rotation") else 1.0
    m[:3, :3] = scale * turn
    if pose in ("similarity", "rotation"):
        m[:3, 3] = rng.uniform(-offset_range, offset_range, 3)
    return m


def reference_style_fit(
    model: ShapeModel, points: np.ndarray, sensors: np.ndarray, config: CompletionEvalConfig
) -> np.ndarray:
    """The reference-style completion of a scan in the model frame: surface + +-eta only.

    points, sensors: (n, 3) model frame (sensors orient the estimated normals, as any
    scanner's normals are). Returns the (L,) code.
    """
    from .fitting import Observations

    obs_cfg = config.observation
    rng = np.random.default_rng(config.seed)
    pts = np.asarray(points, np.float32)
    normals = estimate_normals(pts, obs_cfg.normal_neighbours, sensors)
    if len(pts) > obs_cfg.surface_points:
        keep = rng.choice(len(pts), obs_cfg.surface_points, replace=False)
        pts, normals = pts[keep], normals[keep]
    eta = obs_cfg.eta
    n = len(pts)
    obs = Observations(
        np.concatenate([pts, pts + eta * normals, pts - eta * normals]),
        np.concatenate([np.zeros(n), np.full(n, eta), np.full(n, -eta)]).astype(np.float32),
    )
    return fit_code(model, obs, config.reference_fit).code


def _simulate(
    local: np.ndarray,
    faces: np.ndarray,
    cond: Condition,
    azimuth: float,
    noise: float,
    seed: int,
    config: CompletionEvalConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """A simulated scan of a shape (``local`` (n, 3), model frame) from ``cond.views``
    cameras 120 degrees apart from ``azimuth``: ``(points (m, 3), sensors (m, 3))``,
    model frame; ``noise`` in model units."""
    from .scan import orbit_camera, simulate_scan

    cams = [
        orbit_camera(
            azimuth + 120 * j, config.elevation, config.distance, width=config.camera_width, height=config.camera_height
        )
        for j in range(cond.views)
    ]
    scan = simulate_scan(local, faces, cams, noise, cond.outliers, seed=seed)
    return scan.points, scan.sensors


def evaluate_completion(
    model: ShapeModel,
    shapes: Sequence[tuple[str, np.ndarray, np.ndarray]],
    config: CompletionEvalConfig = CompletionEvalConfig(),
    on_progress: ProgressCallback | None = None,
) -> CompletionEvalResult:
    """Score completion of simulated scans of ``shapes`` under every condition of ``config``.

    shapes: ``(name, vertices (n, 3), faces (m, 3))`` watertight meshes, any frame, y up.
    """
    from .errors import NoSurfaceError
    from .metrics import sample_surface

    if not shapes:
        raise InputError("no shapes to evaluate")
    conditions = config.conditions()
    total = len(shapes) * config.repeats * len(conditions)
    done = 0
    rows: list[dict] = []
    mesh_cfg = MeshConfig(resolution=config.resolution)
    for k, (name, vertices, faces) in enumerate(shapes):
        offset, scale = reference_normalization(vertices)
        local = to_model_frame(vertices, offset, scale)
        truth, _ = sample_surface(local, faces, config.samples, seed=config.seed + k)
        size = float(np.linalg.norm(local.max(axis=0) - local.min(axis=0)))
        for repeat in range(config.repeats):
            rng, case_seed = case_seeds(config.seed, k, repeat)
            azimuth = rng.uniform(0, 360)
            scans: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
            for cond in conditions:
                skey = (cond.views, cond.noise, cond.outliers)
                if skey not in scans:  # one scan per (views, noise, outliers), shared by the poses
                    scans[skey] = _simulate(local, faces, cond, azimuth, cond.noise * size, case_seed, config)
                points, sensors = scans[skey]
                pose_rng = np.random.default_rng(
                    [config.seed, k, POSES.index(cond.pose), int(cond.sensor)] + ([repeat] if repeat else [])
                )
                m2i = random_pose(cond.pose, pose_rng, config.scale_range, config.offset_range)
                t0 = time.perf_counter()
                try:
                    mesh_model, extra, others = _complete(
                        model, cond, points, sensors, m2i, config, mesh_cfg, case_seed, truth
                    )
                    scores = _scores(mesh_model, truth, k)
                    if config.alternatives and cond.method == "ours":
                        extra["alternatives_chamfer"] = [_scores(m, truth, k)["chamfer"] for m in others]
                        extra["chamfer_best"] = min([scores["chamfer"], *extra["alternatives_chamfer"]])
                except NoSurfaceError:  # a failure: counted, kept out of the means
                    extra, scores = {}, {"chamfer": float("nan"), "f_0.01": 0.0, "f_0.02": 0.0, "failed": True}
                seconds = time.perf_counter() - t0
                rows.append({"shape": name, "repeat": repeat, **asdict(cond), **scores, "seconds": seconds, **extra})
                done += 1
                report(on_progress, done, total, f"{name}: {cond.label}")

    cfg = {
        "views": list(config.views),
        "noise": list(config.noise),
        "outliers": list(config.outliers),
        "poses": list(config.poses),
        "sensor": list(config.sensor),
        "resolution": config.resolution,
        "reference_fit": asdict(config.reference_fit),
        "fit": asdict(config.fit),
        "placement": asdict(config.placement) | {"eta": config.placement.eta_for(config.observation)},
        "observation": asdict(config.observation),
        "model": model.identity,
        "shapes": [s[0] for s in shapes],
        "repeats": config.repeats,
        "alternatives": config.alternatives,
        "seed": config.seed,
    }
    return CompletionEvalResult(rows, cfg)


def _complete(
    model: ShapeModel,
    cond: Condition,
    points: np.ndarray,
    sensors: np.ndarray,
    m2i: np.ndarray,
    config: CompletionEvalConfig,
    mesh_cfg: MeshConfig,
    seed: int,
    truth: np.ndarray,
) -> tuple[Mesh, dict, list[Mesh]]:
    """One completion (fits seeded with ``seed``); returns the mesh in the model frame,
    pose errors (estimated poses, the placement Chamfer against ``truth``, (n, 3) surface
    samples in the model frame) and the alternatives' meshes (model frame)."""
    from . import api

    if cond.method == "reference":
        code = reference_style_fit(model, points, sensors, config)
        return api.extract_mesh(model, code, mesh_cfg), {}, []
    inp, sens = apply_matrix(m2i, points), apply_matrix(m2i, sensors)
    rec = api.reconstruct(
        model,
        inp,
        None,
        known_frame=cond.pose == "known",
        fit=replace(config.fit, seed=seed),
        mesh=mesh_cfg,
        observation=config.observation,
        sensor=sens if cond.sensor else None,
        placement=replace(
            config.placement, seed=seed, full_rotation=config.placement.full_rotation or cond.pose == "rotation"
        ),
        alternatives=config.alternatives,
    )
    extra: dict = {}
    back = np.linalg.inv(m2i)
    if cond.pose != "known":
        est = rec.model_to_input
        true_scale = float(np.cbrt(np.linalg.det(m2i[:3, :3])))
        est_scale = float(np.cbrt(abs(np.linalg.det(est[:3, :3]))))
        rel = np.linalg.inv(m2i[:3, :3] / true_scale) @ (est[:3, :3] / est_scale)
        extra["scale_error"] = est_scale / true_scale - 1.0
        extra["yaw_error_degrees"] = float(math.degrees(math.atan2(rel[0, 2], rel[0, 0])))
        # the whole rotation's error: the angle of the relative rotation
        extra["rotation_error_degrees"] = float(math.degrees(math.acos(np.clip((np.trace(rel) - 1) / 2, -1, 1))))
        # where the estimate puts the model frame's origin, seen from the true model frame
        extra["offset_error"] = float(np.linalg.norm((back @ est)[:3, 3]))
        extra["placement_chamfer"] = placement_chamfer(truth, m2i, est)
    return rec.mesh.apply_matrix(back), extra, [alt.mesh.apply_matrix(back) for alt in rec.alternatives]


def placement_chamfer(truth: np.ndarray, true_model_to_input: np.ndarray, model_to_input: np.ndarray) -> float:
    """What a placement error alone costs: the reference Chamfer (squared, model units)
    between the true surface and the same surface where the estimated placement puts it,
    seen from the true model frame — the error a perfect shape fitted at that placement
    would have. Near zero for a turn that maps the shape onto itself (a three-legged stool
    turned by 120 degrees), where the yaw error is not.

    truth: (n, 3) surface samples, model frame; true_model_to_input, model_to_input:
    (4, 4) the true and the estimated model -> input similarities.
    """
    from .metrics import chamfer_distance

    error = np.linalg.inv(np.asarray(true_model_to_input, np.float64)) @ np.asarray(model_to_input, np.float64)
    return chamfer_distance(apply_matrix(error, truth), truth)


def _scores(mesh: Mesh, truth: np.ndarray, seed: int) -> dict:
    from .metrics import REFERENCE_SAMPLES, chamfer_distance, f_score, sample_surface

    pts, _ = sample_surface(mesh.vertices, mesh.faces, REFERENCE_SAMPLES, seed=seed)
    return {
        "chamfer": chamfer_distance(pts, truth),
        "f_0.01": f_score(pts, truth, 0.01),
        "f_0.02": f_score(pts, truth, 0.02),
    }
