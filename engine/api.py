"""The engine's public API: the one seam the CLI, the Blender worker and pipelines use.

Arrays in, arrays out. Frames: "model frame" is the normalised unit sphere, y up
(see ``frames.py``); results that belong to a user's input are returned in the
input's own frame.

Example::

    import engine
    model = engine.open_model("chairs")                 # or a .dsdf file / experiment dir
    codes = engine.sample_codes(model, count=4, seed=1)
    mesh = engine.extract_mesh(model, codes[0], engine.MeshConfig(resolution=128))
    mesh.vertices, mesh.faces                           # (n, 3) float32, (m, 3) int32
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch

from .errors import InputError, NoSurfaceError
from .fitting import (
    FitConfig,
    FitResult,
    Observations,
    fit_code,
    fit_codes_posed,
    rank_training_codes,
    screen_codes_posed,
    screen_nearest,
)
from .frames import apply_matrix, bounding_extent, from_model_frame, reference_normalization, rotation_y, to_model_frame
from .latent import CodePrior
from .meshing import Mesh, MeshConfig, mesh_sdf
from .metrics import sample_surface
from .model import ShapeModel
from .observations import ObservationConfig, observations_from_mesh, observations_from_points, outlier_mask
from .placement import PlacementConfig, PlacementResult, fit_placement
from .progress import ProgressCallback, scaled


def _code_tensor(model: ShapeModel, code: np.ndarray | torch.Tensor | int) -> torch.Tensor:
    if isinstance(code, (int, np.integer)):
        return model.code(int(code)).detach()
    t = torch.as_tensor(np.asarray(code, np.float32) if not isinstance(code, torch.Tensor) else code)
    t = t.detach().float().reshape(-1).to(model.device)
    if t.numel() != model.code_length:
        raise InputError(f"code has length {t.numel()}; the model needs {model.code_length}")
    if not torch.isfinite(t).all():
        raise InputError("code has NaN or infinite values")
    return t


def evaluate_sdf(model: ShapeModel, code: np.ndarray | int, points: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """SDF of the shape ``code`` (a (L,) array or a training index) at points (n, 3), model frame. Returns (n,) float32."""
    z = _code_tensor(model, code)
    pts = torch.from_numpy(np.ascontiguousarray(points, np.float32).reshape(-1, 3)).to(model.device)
    return model.decoder.sdf(z, pts, chunk).cpu().numpy()


def extract_mesh(
    model: ShapeModel,
    code: np.ndarray | int,
    config: MeshConfig = MeshConfig(),
    normalization: tuple[np.ndarray, float] | None = None,
    on_progress: ProgressCallback | None = None,
) -> Mesh:
    """Mesh the zero level set of ``code`` (a (L,) array or a training index).

    Vertices are in the model frame, or mapped with ``normalization = (offset, scale)``
    to the frame where ``model = (x + offset) * scale``. Raises NoSurfaceError when
    the level set is empty in the box.
    """
    z = _code_tensor(model, code)
    dec = model.decoder
    codes = z.reshape(1, -1)
    from torch.nn.utils import parametrize

    from .device import compute_precision, resolve_precision
    from .meshing import CUDA_COARSE_PRECISION, CUDA_MESH_PRECISION, PRECISION_ERROR

    precision = resolve_precision(config.precision, model.device, CUDA_MESH_PRECISION)
    coarse = resolve_precision(config.coarse_precision, model.device, CUDA_COARSE_PRECISION)
    with parametrize.cached():
        biases = {k: v.detach() for k, v in dec.code_biases(codes).items()}

        def sdf_in(arithmetic: str):
            def sdf_fn(xyz: torch.Tensor) -> torch.Tensor:
                with torch.no_grad(), compute_precision(model.device, arithmetic):
                    return dec.forward_codes(codes, xyz.unsqueeze(0), biases)[0].float()

            return sdf_fn

        def grad_fn(xyz: torch.Tensor) -> torch.Tensor:
            return dec.forward_codes(codes, xyz.unsqueeze(0), biases)[0]

        mesh = mesh_sdf(
            sdf_in(precision),
            config,
            model.device,
            max(model.config.hidden_dims),
            grad_fn,
            on_progress=on_progress,
            coarse_sdf_fn=sdf_in(coarse) if coarse != precision else None,
            coarse_error=PRECISION_ERROR[coarse] if coarse != precision else 0.0,
        )
    if normalization is not None:
        mesh = mesh.transformed(*normalization)
    return mesh


def training_normalization(model: ShapeModel, index: int) -> tuple[np.ndarray, float]:
    """``(offset (3,), scale)`` of training shape ``index`` (to mesh it in its original frame)."""
    model.code(index)
    return model.offsets[index].copy(), float(model.scales[index])


def sample_codes(model: ShapeModel, count: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """``count`` new codes from a Gaussian fitted to the training codes. Returns (count, L) float32."""
    prior = CodePrior.fit(model.codes.detach().cpu().numpy())
    return prior.sample(count, seed, temperature)


@dataclass
class Reconstruction:
    """Result of :func:`reconstruct`.

    mesh: in the input's own frame. code: (L,) float32. model_to_input: (4, 4) the
    similarity from the model frame to the input's frame (its inverse maps the input
    into the model frame). loss: the fit's final loss. mode: ``placement``,
    ``reference`` or ``known``.
    """

    mesh: Mesh
    code: np.ndarray
    model_to_input: np.ndarray
    loss: float
    mode: str
    alternatives: list[Reconstruction] = field(default_factory=list)
    """The next-best *distinct* completions (``reconstruct(..., alternatives=k)``), lowest
    loss first, each a :class:`Reconstruction` in the input's frame like this one. A
    partial scan is often explained about equally well by several shapes (the unobserved
    part is invented); these are the other shapes the fit found, for a person to choose
    from (docs/quality/completion.md: the loss picks a worse invention in some scans)."""

    @property
    def scale(self) -> float:
        """Model units per input unit."""
        return float(1.0 / np.cbrt(abs(np.linalg.det(self.model_to_input[:3, :3]))))


class Candidate(NamedTuple):
    """One fitted candidate of a scan: code (L,) float32, input_to_model (4, 4), loss."""

    code: np.ndarray
    input_to_model: np.ndarray
    loss: float


def reconstruct(
    model: ShapeModel,
    vertices: np.ndarray,
    faces: np.ndarray | None = None,
    known_frame: bool = False,
    fit: FitConfig = FitConfig(),
    mesh: MeshConfig = MeshConfig(),
    observation: ObservationConfig = ObservationConfig(),
    sensor: np.ndarray | None = None,
    placement: PlacementConfig | None = PlacementConfig(),
    on_progress: ProgressCallback | None = None,
    alternatives: int = 0,
) -> Reconstruction:
    """Fit a code to a mesh or point cloud (a scan) and mesh it, in the input's frame.

    vertices: (n, 3) float, the input's frame, **y up**; faces: (m, 3) int or None for a
    point cloud. sensor: (3,) scanner position in the input's frame, or (n, 3) one per
    point of a cloud scanned from several places (orients cloud normals and adds
    free-space observations). The input's placement is found by:

    * ``known_frame=True``: the input is already in the model frame;
    * ``placement`` (default): scale, yaw and translation fitted jointly with the code
      from several yaw hypotheses (:mod:`placement`) — for partial scans anywhere;
    * ``placement=None``: the reference's normalisation of the input (bounding-box
      centre, radius 1/1.03) — for complete, upright inputs.

    alternatives: also mesh up to this many of the other fitted candidates whose shapes
    differ from the winner's and from each other (:func:`distinct_candidates`), in
    ``Reconstruction.alternatives``; fewer when the fit found fewer distinct shapes.
    """
    vertices = np.asarray(vertices, np.float32).reshape(-1, 3)
    if len(vertices) == 0:
        raise InputError("the input has no vertices")
    if not np.isfinite(vertices).all():
        raise InputError("the input has NaN or infinite coordinates")
    if alternatives < 0:
        raise InputError(f"alternatives must be 0 or more, got {alternatives}")
    is_mesh = faces is not None and len(faces) > 0
    sensors = _sensors(sensor, len(vertices), is_mesh)
    total = 1000
    if not known_frame and placement is not None:
        placement = replace(placement, eta=placement.eta_for(observation))  # the refit's +-eta unless set
        if is_mesh:
            pts, normals = sample_surface(vertices, faces, observation.surface_points, fit.seed)
            point_sensors = None if sensors is None else np.broadcast_to(sensors, pts.shape)
        else:
            rng = np.random.default_rng(fit.seed)
            keep = (
                np.arange(len(vertices))
                if len(vertices) <= observation.max_points
                else rng.choice(len(vertices), observation.max_points, replace=False)
            )
            pts, normals = vertices[keep], None
            point_sensors = None if sensors is None else np.broadcast_to(sensors, vertices.shape)[keep]
        result = fit_placement(model, pts, normals, point_sensors, placement, scaled(on_progress, 0, 400, total))
        code, i2m, loss = renormalize(
            model,
            result.code,
            result.input_to_model,
            pts,
            normals,
            point_sensors,
            placement,
            fit,
            observation,
            scaled(on_progress, 400, 50, total),
            loss=result.loss,
        )
        candidates = [Candidate(code, i2m, loss)]
        if placement.refit_iterations > 0:
            code, i2m, loss, candidates = refit_placement(
                model,
                code,
                i2m,
                [] if placement.renormalize_rounds else result.alternatives,
                pts,
                normals,
                point_sensors,
                placement,
                fit,
                observation,
                scaled(on_progress, 450, 400, total),
            )
        return _meshed(
            model, Candidate(code, i2m, loss), candidates, alternatives, "placement", mesh, pts, on_progress, 850
        )
    if known_frame:
        offset, scale = np.zeros(3, np.float32), 1.0
    else:
        offset, scale = reference_normalization(vertices)
    local = to_model_frame(vertices, offset, scale)
    sensor_local = None if sensors is None else to_model_frame(sensors.reshape(-1, 3), offset, scale)
    if is_mesh:
        obs = observations_from_mesh(
            local, faces, observation, seed=fit.seed, sensor=None if sensor_local is None else sensor_local[0]
        )
    else:
        one = sensor_local is not None and sensors.ndim == 1  # one scanner for the whole cloud
        obs = observations_from_points(
            local, sensor=sensor_local[0] if one else sensor_local, config=observation, seed=fit.seed
        )
    result = fit_code(model, obs, fit, scaled(on_progress, 0, 600, total))
    i2m = np.eye(4)
    i2m[:3, :3] *= scale
    i2m[:3, 3] = np.asarray(offset, np.float64) * scale
    candidates = [Candidate(c, i2m, float(v)) for c, v in zip(result.codes, result.restart_losses, strict=True)]
    return _meshed(
        model,
        Candidate(result.code, i2m, result.loss),
        candidates,
        alternatives,
        "known" if known_frame else "reference",
        mesh,
        vertices,
        on_progress,
        600,
    )


def _meshed(
    model: ShapeModel,
    winner: Candidate,
    candidates: Sequence[Candidate],
    alternatives: int,
    mode: str,
    mesh: MeshConfig,
    observed: np.ndarray,
    on_progress: ProgressCallback | None,
    start: int,
) -> Reconstruction:
    """The winner (and up to ``alternatives`` distinct other candidates) meshed in the
    input's frame with per-vertex confidence; progress from ``start`` of 1000 to the end.
    observed: (n, 3) the scan's points, input frame."""
    others = distinct_candidates(model, winner, candidates, alternatives) if alternatives else []
    share = (1000 - start) // (1 + len(others))
    out = []
    for j, cand in enumerate([winner, *others]):
        m2i = np.linalg.inv(np.asarray(cand.input_to_model, np.float64))
        try:
            placed = extract_mesh(model, cand.code, mesh, None, scaled(on_progress, start + j * share, share, 1000))
        except NoSurfaceError:
            if j == 0:
                raise
            continue  # an alternative too thin for this grid is left out, not the whole result
        placed = placed.apply_matrix(m2i)
        unit = float(np.cbrt(abs(np.linalg.det(m2i[:3, :3]))))
        placed.vertex_values["confidence"] = observation_confidence(placed.vertices, observed, unit)
        out.append(Reconstruction(placed, np.asarray(cand.code, np.float32), m2i, float(cand.loss), mode))
    out[0].alternatives = out[1:]
    return out[0]


def distinct_candidates(
    model: ShapeModel,
    winner: Candidate,
    candidates: Sequence[Candidate],
    count: int,
    max_iou: float = 0.8,
    probes: int = 32_768,
    seed: int = 0,
) -> list[Candidate]:
    """Up to ``count`` of ``candidates``, lowest loss first, whose shapes differ from the
    winner's and from each other's: the intersection over union of their solids, placed in
    the input's frame, at most ``max_iou``.

    Solids are compared on ``probes`` seeded points uniform in the cube around the winner's
    model-frame unit sphere, mapped into the input frame and from there into each
    candidate's model frame (so candidates at different poses compare where they land).
    Candidates without inside probes (no surface) are skipped.
    """
    rng = np.random.default_rng(seed)
    cube = rng.uniform(-1.0, 1.0, (probes, 3))
    probes_input = apply_matrix(np.linalg.inv(np.asarray(winner.input_to_model, np.float64)), cube)

    def solid(cand: Candidate) -> np.ndarray:
        local = apply_matrix(np.asarray(cand.input_to_model, np.float64), probes_input)
        return evaluate_sdf(model, cand.code, local.astype(np.float32)) < 0

    kept: list[np.ndarray] = [solid(winner)]
    out: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: c.loss):
        if len(out) == count:
            break
        inside = solid(cand)
        if not inside.any():
            continue
        ious = [(inside & k).sum() / max((inside | k).sum(), 1) for k in kept]
        if max(ious) <= max_iou:
            kept.append(inside)
            out.append(cand)
    return out


def renormalize(
    model: ShapeModel,
    code: np.ndarray,
    input_to_model: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray | None,
    sensors: np.ndarray | None,
    placement: PlacementConfig,
    fit: FitConfig,
    observation: ObservationConfig,
    on_progress: ProgressCallback | None = None,
    loss: float = float("nan"),
) -> tuple[np.ndarray, np.ndarray, float]:
    """Put a placed fit into the training shapes' normalisation and refit the code there.

    Meshes ``code`` coarsely, maps the scan by the similarity that moves that shape's
    bounding-box centre to the origin and its radius to 1/1.03 (the reference
    normalisation every training shape had), refits the code with the pose fixed,
    ``placement.renormalize_rounds`` times. points, normals, sensors: (n, 3) the scan,
    input frame. input_to_model: (4, 4). loss: the placed fit's loss, returned unchanged
    when no round runs. Returns ``(code (L,), input_to_model (4, 4), loss)``.
    """
    i2m = np.asarray(input_to_model, np.float64)
    rounds = placement.renormalize_rounds
    for r in range(rounds):
        try:
            coarse = extract_mesh(model, code, MeshConfig(resolution=placement.renormalize_resolution, method="dense"))
        except NoSurfaceError:
            break
        offset, scale = reference_normalization(coarse.vertices)
        fix = np.eye(4)
        fix[:3, :3] *= scale
        fix[:3, 3] = np.asarray(offset, np.float64) * scale
        i2m = fix @ i2m
        result = refit_at_pose(
            model,
            code,
            i2m,
            points,
            normals,
            sensors,
            replace(fit, iterations=placement.refine_iterations, seed=fit.seed + r),
            observation,
            scaled(on_progress, r * 1000 // rounds, 1000 // rounds, 1000),
        )
        code, loss = result.code, result.loss
    return code, i2m, loss


def refit_at_pose(
    model: ShapeModel,
    code: np.ndarray,
    input_to_model: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray | None,
    sensors: np.ndarray | None,
    fit: FitConfig,
    observation: ObservationConfig,
    on_progress: ProgressCallback | None = None,
) -> FitResult:
    """Refit ``code`` with the scan mapped into the model frame by ``input_to_model`` (4, 4),
    using the observations a known-pose fit uses (surface, +-eta, free space along the
    sensor rays, the far shell). points, normals, sensors: (n, 3), input frame."""
    obs = _scan_observations(input_to_model, points, normals, sensors, observation, fit.seed)
    return fit_code(model, obs, fit, on_progress, initial_code=code)


def _scan_observations(
    input_to_model: np.ndarray,
    points: np.ndarray,
    normals: np.ndarray | None,
    sensors: np.ndarray | None,
    observation: ObservationConfig,
    seed: int,
) -> Observations:
    """A scan's observations in the model frame it reaches by ``input_to_model`` (4, 4).
    points, normals, sensors: (n, 3), input frame."""
    i2m = np.asarray(input_to_model, np.float64)
    local = apply_matrix(i2m, points)
    sens = None if sensors is None else apply_matrix(i2m, sensors)
    nrm = None
    if normals is not None:
        nrm = np.asarray(normals, np.float64) @ i2m[:3, :3].T
        nrm = (nrm / np.linalg.norm(nrm, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
    return observations_from_points(local, nrm, sens, observation, seed=seed)


def pose_variants(input_to_model: np.ndarray, turns: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """The pose ``input_to_model`` (4, 4) turned about the model frame's vertical axis by each
    of ``turns`` (degrees) and scaled about its origin by each of ``scales``: (len(turns) *
    len(scales), 4, 4), turns outer."""
    out = []
    for turn in turns:
        for factor in scales:
            m = np.eye(4)
            m[:3, :3] = factor * rotation_y(np.radians(turn))
            out.append(m @ np.asarray(input_to_model, np.float64))
    return np.stack(out)


def refit_placement(
    model: ShapeModel,
    code: np.ndarray,
    input_to_model: np.ndarray,
    alternatives: Sequence[PlacementResult],
    points: np.ndarray,
    normals: np.ndarray | None,
    sensors: np.ndarray | None,
    placement: PlacementConfig,
    fit: FitConfig,
    observation: ObservationConfig,
    on_progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray, float, list[Candidate]]:
    """Refit a placement search's result on the observations a known-pose fit uses.

    code (L,), input_to_model (4, 4): the best hypothesis; alternatives: the others that
    reached the end (their own code and pose). Candidates:

    * every hypothesis from its best nearest training code
      (:func:`engine.fitting.screen_nearest`, ``fit.nearest_starts`` screened), and from
      its own code when ``placement.refit_searched_codes`` (or without nearest starts);
    * :func:`pose_variants` of the best pose, each screened from the mean training code
      and from the ``fit.nearest_starts`` training codes nearest the scan at that turn
      (``fit.screen_iterations`` steps, all as one batch); the ``placement.refit_variants``
      variants with the lowest screened loss, each with its best start, passing over a
      variant that is already a candidate (the searched pose from the same start).

    Every candidate is refitted for ``placement.refit_iterations`` steps, all as one batch,
    and the lowest loss wins; then the ``placement.offset_candidates`` lowest-loss candidates'
    translations are each polished (:func:`polish_offset`, ``placement.offset_rounds``
    times; by default once for a single view, :func:`single_viewpoint`, else not) and the
    lowest polished loss wins. points,
    normals, sensors: (n, 3), input frame. Returns
    ``(code (L,), input_to_model (4, 4), loss, candidates)``, candidates: every refitted
    :class:`Candidate` (before the polish), lowest loss first.
    """
    anchoring = placement.box_anchor and sensors is not None
    whole = on_progress
    if anchoring:  # the last 5 % of the progress is the anchored refit's
        on_progress = scaled(whole, 0, 950, 1000)
    ref = np.asarray(input_to_model, np.float64)
    obs = _scan_observations(ref, points, normals, sensors, observation, fit.seed)
    to_ref = np.linalg.inv(ref)
    hypotheses = np.stack([ref] + [alt.input_to_model for alt in alternatives])
    starts: list[np.ndarray] = []
    poses: list[np.ndarray] = []

    def add(start: np.ndarray, pose: np.ndarray) -> bool:
        """Add a candidate unless the same start at the same pose is already there."""
        for s, p in zip(starts, poses, strict=True):
            if np.allclose(s, start, rtol=0, atol=1e-4) and np.allclose(p, pose, rtol=0, atol=1e-9):
                return False
        starts.append(np.asarray(start, np.float32))
        poses.append(np.asarray(pose, np.float64))
        return True

    near_hyp = fit.nearest_starts > 0 and fit.screen_iterations > 0
    if placement.refit_searched_codes or not near_hyp:
        for start, pose in zip(
            [np.asarray(code, np.float32)] + [alt.code for alt in alternatives], hypotheses, strict=True
        ):
            add(start, pose)
    if near_hyp:
        near = screen_nearest(model, obs, hypotheses @ to_ref, fit, scaled(on_progress, 0, 80, 1000))
        for start, pose in zip(near.codes, hypotheses, strict=True):
            add(start, pose)
    if fit.screen_iterations > 0 and placement.refit_variants > 0:
        variants = pose_variants(ref, placement.variant_turns, placement.variant_scales)
        all_codes = model.codes.detach().cpu().numpy()
        mean = all_codes.mean(0)
        k = min(fit.nearest_starts, model.num_shapes) if placement.nearest_at_variants else 0
        near_idx = None
        if k:
            # ranked once per turn (at scale 1): a few percent of scale does not reorder them
            turns = pose_variants(ref, placement.variant_turns, [1.0])
            near_idx = np.repeat(
                rank_training_codes(model, obs, k, fit, poses=turns @ to_ref), len(placement.variant_scales), axis=0
            )
        tried = [
            np.concatenate([mean[None], all_codes[near_idx[v]]]) if k else mean[None] for v in range(len(variants))
        ]
        screen = screen_codes_posed(
            model,
            obs,
            np.repeat(variants, k + 1, axis=0) @ to_ref,
            np.concatenate(tried),
            fit,
            scaled(on_progress, 80, 220, 1000),
        )
        losses = screen.restart_losses.reshape(len(variants), k + 1)
        best_start = np.argmin(losses, axis=1)
        added = 0
        for v in np.argsort(losses.min(axis=1)):
            if added == placement.refit_variants:
                break
            # a variant at a searched pose from the same screened start is a candidate already
            added += add(screen.codes[v * (k + 1) + best_start[v]], variants[v])
    stacked = np.stack(poses)
    rounds = placement.offset_rounds
    if rounds is None:  # polish single views only (measured: it helps them and hurts three views)
        rounds = 1 if single_viewpoint(sensors) else 0
    if placement.offset_grid <= 0 or fit.screen_iterations <= 0:
        rounds = 0
    final = fit_codes_posed(
        model,
        obs,
        stacked @ to_ref,
        np.stack(starts),
        replace(fit, iterations=placement.refit_iterations),
        on_progress=scaled(on_progress, 300, 400 if rounds else 700, 1000),
        pose_lr=placement.refit_pose_lr,
    )
    if final.poses is not None:
        stacked = final.poses @ ref
    order = np.argsort(final.restart_losses, kind="stable")
    candidates = [Candidate(final.codes[j], stacked[j], float(final.restart_losses[j])) for j in order]
    leaders = candidates[: placement.offset_candidates] if rounds else []  # 1 or more (PlacementConfig)
    span = 300 // max(rounds * len(leaders), 1)
    polished = []
    for j, (c, p, v) in enumerate(leaders):
        for r in range(rounds):
            at = 700 + (j * rounds + r) * span
            c, p, v = polish_offset(model, obs, to_ref, c, p, placement, fit, scaled(on_progress, at, span, 1000))
        polished.append((c, p, v))
    code, pose, loss = min(polished, key=lambda x: x[2]) if polished else candidates[0]
    if anchoring:
        code, pose, loss = anchor_to_box(
            model, obs, to_ref, code, pose, loss, points, sensors, placement, fit, scaled(whole, 950, 50, 1000)
        )
    return code, pose, loss, candidates


def spanned_axes(
    points: np.ndarray, sensors: np.ndarray, reach: float = 0.5, centre: np.ndarray | None = None
) -> np.ndarray:
    """Which model axes a scan spans: (3,) bool, True where both ends of the axis were in
    view — for each sign, some sensor's direction from the scan's box centre has a
    component of at least ``-reach`` along it. A sensor in front sees both ends of the
    axes across its view (silhouettes included) and not the far end of its depth axis;
    one up to 30 degrees above the horizon (``reach`` 0.5) still sees an upright object's
    lowest points, where its sides and legs end.

    points: (n, 3) the scan, model frame; sensors: (n, 3) or (3,) each point's sensor
    position, model frame; centre: (3,) the scan's box centre when the caller has it
    (:func:`engine.frames.bounding_extent`), else computed.
    """
    if centre is None:
        centre, _ = bounding_extent(points)
    views = np.unique(np.asarray(sensors, np.float64).reshape(-1, 3), axis=0) - centre
    views /= np.linalg.norm(views, axis=1, keepdims=True).clip(1e-12)
    return (views.max(axis=0) >= -reach) & ((-views).max(axis=0) >= -reach)


def box_anchor_shift(points: np.ndarray, sensors: np.ndarray, remove_outliers: bool = True) -> np.ndarray:
    """(3,) model units: the translation that centres the scan's bounding box on the model
    origin along the axes it spans (:func:`spanned_axes`), zero along the others.

    points: (n, 3) the scan, model frame (at a candidate placement); sensors: (n, 3) or
    (3,), model frame. Stray points are dropped first (``observations.outlier_mask``).
    """
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    sens = np.broadcast_to(np.asarray(sensors, np.float64).reshape(-1, 3), pts.shape)
    if remove_outliers:
        keep = outlier_mask(pts)
        pts, sens = pts[keep], sens[keep]
    centre, _ = bounding_extent(pts)
    return np.where(spanned_axes(pts, sens, centre=centre), -centre, 0.0)


def anchor_to_box(
    model: ShapeModel,
    obs: Observations,
    to_ref: np.ndarray,
    code: np.ndarray,
    input_to_model: np.ndarray,
    loss: float,
    points: np.ndarray,
    sensors: np.ndarray,
    placement: PlacementConfig,
    fit: FitConfig,
    on_progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Move a placement so the scan's box is centred on the model origin where it spans the
    object (:func:`box_anchor_shift`) and refit the code there, pose held
    (``placement.box_anchor``).

    obs: the scan's observations in the frame of the pose ``inv(to_ref)`` (4, 4); code (L,),
    input_to_model (4, 4), loss: the winner. points, sensors: (n, 3), input frame. Returns
    ``(code, input_to_model, loss)``: the anchored fit, or the winner unchanged when
    nothing moves or the anchored loss is over ``placement.box_anchor_tolerance`` higher.
    """
    i2m = np.asarray(input_to_model, np.float64)
    shift = box_anchor_shift(apply_matrix(i2m, points), apply_matrix(i2m, sensors), placement.remove_outliers)
    if not np.any(shift):
        return code, i2m, loss
    move = np.eye(4)
    move[:3, 3] = shift
    anchored = move @ i2m
    result = fit_codes_posed(
        model,
        obs,
        (anchored @ to_ref)[None],
        np.asarray(code, np.float32)[None],
        replace(fit, iterations=placement.refit_iterations),
        on_progress=on_progress,
    )
    if result.loss > (1.0 + placement.box_anchor_tolerance) * loss:
        return code, i2m, loss
    return result.code, anchored, float(result.loss)


def single_viewpoint(sensors: np.ndarray | None) -> bool:
    """Whether every scan point was seen from one sensor position. sensors: (n, 3) one per
    point (or (3,)), or None (unknown: False)."""
    if sensors is None:
        return False
    arr = np.asarray(sensors).reshape(-1, 3)
    return bool(len(arr) > 0 and (arr == arr[0]).all())


def offset_grid(step: float, n: int) -> np.ndarray:
    """Translations (k, 3), model units: ``step * (-n..n)`` along each axis, all combinations,
    the zero offset first."""
    axis = step * np.arange(-n, n + 1)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return grid[np.argsort(np.abs(grid).sum(axis=1), kind="stable")]


def polish_offset(
    model: ShapeModel,
    obs: Observations,
    to_ref: np.ndarray,
    code: np.ndarray,
    input_to_model: np.ndarray,
    placement: PlacementConfig,
    fit: FitConfig,
    on_progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Refine a placement's translation: screen the winner shifted over :func:`offset_grid`
    (model frame) from its code, refit the unshifted winner and the ``placement.offset_keep``
    best shifts as one batch and keep the lowest loss.

    obs: the scan's observations in the frame of the pose ``inv(to_ref)`` (4, 4);
    code (L,), input_to_model (4, 4): the winner. Returns ``(code, input_to_model, loss)``.
    """
    offsets = offset_grid(placement.offset_step, placement.offset_grid)
    shifts = np.repeat(np.eye(4)[None], len(offsets), 0)
    shifts[:, :3, 3] = offsets
    poses = shifts @ np.asarray(input_to_model, np.float64)
    screen = screen_codes_posed(
        model,
        obs,
        poses @ to_ref,
        np.repeat(np.asarray(code, np.float32)[None], len(poses), 0),
        fit,
        scaled(on_progress, 0, 400, 1000),
    )
    order = [int(i) for i in np.argsort(screen.restart_losses) if i != 0][: placement.offset_keep]
    chosen = [0, *order]  # the unshifted winner always competes
    final = fit_codes_posed(
        model,
        obs,
        poses[chosen] @ to_ref,
        screen.codes[chosen],
        replace(fit, iterations=placement.refit_iterations),
        on_progress=scaled(on_progress, 400, 600, 1000),
        pose_lr=placement.refit_pose_lr,
    )
    best = int(np.argmin(final.restart_losses))
    pose = poses[chosen[best]] if final.poses is None else final.poses[best] @ np.linalg.inv(to_ref)
    return final.codes[best], pose, float(final.restart_losses[best])


def _sensors(sensor: np.ndarray | None, n: int, is_mesh: bool) -> np.ndarray | None:
    """The scanner position(s) as (3,) for one sensor or (n, 3) per point; validated."""
    if sensor is None:
        return None
    arr = np.asarray(sensor, np.float64)
    if arr.size == 3:
        arr = arr.reshape(3)
    elif is_mesh or arr.shape != (n, 3):
        raise InputError(
            "sensor must be one position (3,)"
            + ("" if is_mesh else f" or one per point ({n}, 3)")
            + f"; got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InputError("the sensor position has NaN or infinite coordinates")
    return arr


def observation_confidence(vertices: np.ndarray, observed: np.ndarray, unit: float) -> np.ndarray:
    """Per-vertex confidence (n,) in [0, 1]: 1 where the surface was observed, falling to 0 at
    5 % of the shape's radius (``unit`` = one model unit in the input's frame) from any observation."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(np.asarray(observed, np.float64)).query(np.asarray(vertices, np.float64), k=1, workers=-1)
    return np.clip(1.0 - dist / (0.05 * unit), 0.0, 1.0).astype(np.float32)


def fit_observations(
    model: ShapeModel, obs: Observations, fit: FitConfig = FitConfig(), on_progress: ProgressCallback | None = None
) -> FitResult:
    """Fit a code to explicit SDF observations (model frame). Alias of :func:`fitting.fit_code`."""
    return fit_code(model, obs, fit, on_progress)


__all__ = [
    "Candidate",
    "Reconstruction",
    "distinct_candidates",
    "evaluate_sdf",
    "extract_mesh",
    "fit_observations",
    "from_model_frame",
    "reconstruct",
    "sample_codes",
    "training_normalization",
]
