"""Completing scans in an unknown placement: fit the code jointly with a similarity transform.

A scan sits anywhere, at any size and turned about the vertical. We look for a
code ``z`` and a map from the scan's frame to the model frame

    x = s * R_y(yaw) @ (p - c) + t

(uniform scale ``s``, yaw about the up axis, translation ``t``; ``c`` the scan's
bounding-box centre) such that the scan's surface points have SDF 0, the points
``eta`` along their normals have SDF ``+-eta`` (in model units), and, when the
sensor position is known, points on each ray between sensor and surface are
outside. Several yaw hypotheses (every 360/n degrees) with a scale from the scan's
extent start one batch; each hypothesis has its own code and transform, only those
get gradients (the decoder is frozen), and the hypothesis with the lowest loss on
all observations wins. The clamped L1 loss bounds what any one point (an outlier)
can cost.

With ``PlacementConfig.full_rotation`` the scan may lie in any orientation (on its
side, upside down): the map becomes ``x = s * R_y(yaw) @ T(tilt) @ U @ (p - c) + t``,
``U`` one of several fixed turns taking a candidate up direction of the scan to y
(one hypothesis per up direction and yaw) and ``T`` a tilt about the model's two
horizontal axes fitted with the yaw, so any rotation is reachable.

Frames: scan points in the scan's own frame with **y up** (the engine's axes) unless
``full_rotation``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.utils import parametrize

from .errors import InputError
from .fitting import yaw_rotations
from .frames import RADIUS_MARGIN, bounding_extent, rotation_y
from .model import ShapeModel
from .observations import ObservationConfig, denoise_points, estimate_normals, outlier_mask
from .progress import ProgressCallback, report


@dataclass(frozen=True)
class PlacementConfig:
    """Settings of the joint code + placement fit."""

    yaw_hypotheses: int = 8
    """Starting yaws, evenly spaced (8: every 45 degrees)."""
    keep: int = 2
    """Hypotheses kept after the coarse phase (the first ``coarse_fraction`` of the steps,
    with ``coarse_samples`` points) for the fine phase."""
    coarse_fraction: float = 0.3
    coarse_samples: int = 256
    estimate_scale: bool = True
    """Fit the scale (else keep the one from the scan's extent)."""
    estimate_yaw: bool = True
    """Fit the yaw (else keep each hypothesis' start; use 1 hypothesis for a known yaw)."""
    full_rotation: bool = False
    """The scan's up is unknown too (a scan lying on its side, upside down, tilted): each of
    ``up_directions`` is tried as the scan's up with every yaw (``up_directions`` x
    ``yaw_hypotheses`` hypotheses in one batch), and a tilt about the model's horizontal
    axes is fitted with the yaw. Off: the scan's y is up (the default; scans taken of
    objects standing on the floor)."""
    keep_per_up: int = 1
    """With ``full_rotation``: hypotheses kept after the coarse phase per up direction
    (instead of ``keep`` overall), so every up direction reaches the refit, whose
    observations (free space, the far shell) tell them apart better than the search's."""
    up_directions: int = 6
    """With ``full_rotation``: the scan's up directions tried: 6 (+-x, +-y, +-z of the
    scan's frame) or 14 (those and the 8 diagonals, for scans tilted by about 45 degrees;
    more than twice the search's cost)."""
    iterations: int = 200
    """Adam steps (both phases)."""
    lr_code: float = 1e-2
    lr_pose: float = 5e-3
    samples_per_iteration: int = 1024
    """Surface points per fine step (each gives three observations, plus free-space points).
    Measured on 6 held-out chairs (one view, 1 % noise, random similarity pose): 200 steps
    with 256 / 1024 points gave a mean Chamfer of 17.0e-3 in 10 s, the earlier 250 steps
    with 512 / 2048 gave 19.8e-3 in 28 s; 150 steps with 256 / 512 lost a yaw (31.5e-3)."""
    eta: float | None = None
    """Offset along normals in the search, model units; None: the observations' eta
    (``ObservationConfig.eta``, 0.02), which :func:`engine.api.reconstruct` passes in, so
    ``reconstruct --eta`` moves the search and the refit together. Measured on the 16
    held-out chairs (one view, 1 % noise, sensor known, ``fast``, CPU, 32 scans, refit at
    0.02; docs/quality/completion.md, session 15): the search at 0.01 -> 0.02 took the
    unknown-pose mean / median Chamfer from 8.95 / 3.06 to 8.19 / 2.81 (x 1e3; 0.91 x,
    95 % interval 0.79-1.08, 18 of 32 better), unknown / known 1.20 -> 1.09."""
    clamp: float = 0.1
    prior_weight: float = 1e-4
    free_space_per_point: int = 1
    """Points sampled on each sensor ray, known to be outside (see ``free_space_range``)."""
    free_space_range: tuple[float, float] = (0.5, 0.95)
    """Where on the ray from the sensor (0) to the surface point (1) free space is drawn.
    Nearer the surface carves harder but lets outliers' rays cut into the shape (measured
    with ``evaluate-completion``)."""
    scale_prior: float = 1.0
    """Weight pulling log-scale towards its start, the scan's extent. Measured on held-out
    chairs with 1 % noise: with a weak pull (1e-3) the search traded scale for part
    thickness (noise makes parts look thick) and ended 9-46 % off; with 1.0 every
    case was within 2 %."""
    extent_quantile: float = 1.0
    """The scan's extent (the start and anchor of the scale; :func:`engine.frames.bounding_extent`)
    is its bounding box centre and largest distance from it; below 1, that quantile of the
    points per axis and of the distances, so a few noisy or stray points do not stretch it.
    Measured on 29 training chairs' simulated scans (1 % noise, 5 % outliers): the largest
    distance makes the estimated object 1.3 % too large (std 1.7) from three views and
    0.5 % too small (std 1.8) from one; 0.999: -1.4 % (1.0) and -2.6 % (1.2). On the 16 held-out
    chairs (``fast``, CPU) 0.999 lowered three-view, 5 %-outlier completions from mean /
    median Chamfer 13.61 / 7.36 to 12.55 / 5.07 (x 1e3) and raised one-view clean ones
    (8 chairs: 4.21 -> 4.83 mean), so the default stays 1 (docs/quality/completion.md)."""
    denoise: bool = True
    """Project a cloud's points onto their neighbourhood's plane before fitting (noisy scans)."""
    remove_outliers: bool = True
    """Drop a cloud's isolated points first (``observations.outlier_mask``)."""
    renormalize_rounds: int = 0
    """After the search: mesh the fitted shape coarsely, re-centre and re-scale the scan so
    that shape sits like the training shapes (bounding-box centre at the origin, radius
    1/1.03), and refit the code in that frame — this many times. Off by default: measured
    on held-out chairs, the fitted shape's extent (invented parts included) is a worse
    scale reference than the scan's own (scale errors of 6-25 % with it, under 2 % without)."""
    renormalize_resolution: int = 40
    """Grid of the coarse mesh that measures the fitted shape's extent."""
    refine_iterations: int = 100
    """Code-fit steps after each re-normalisation (pose fixed)."""
    refit_iterations: int = 200
    """After the search, refit the code this many steps with the pose fixed, on the
    observations a known-pose fit uses (free space along every sensor ray, the far
    shell around the scan), 0: none. Measured on 6 held-out chairs (one view, 1 %
    noise): mean Chamfer 17.0e-3 without, 12.3e-3 with 200 steps, against 11.7e-3 for
    the known-pose fit of the same scans."""
    variant_turns: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
    """The best pose turned about the vertical (degrees) ..."""
    variant_scales: tuple[float, ...] = (0.97, 1.0, 1.03)
    """... and scaled by these factors (both about the model origin, the shape's centre)
    gives the pose variants that are screened, each from the mean training code and the
    nearest training codes (``nearest_at_variants``). The
    search holds the scale near the scan's extent, which is a few percent off on
    partial or noisy scans, and a square seat seen from three sides looks alike turned
    by 90 degrees. Measured (three views, 1 % noise): a four-legged chair refitted at
    the searched pose (1.7 % scale error) to Chamfer 17.5e-3 and at 3 % larger to
    1.6e-3; an armchair locked 90 degrees off (37.6e-3) refitted turned to 8.9e-3. The
    refit's loss picked both."""
    refit_variants: int = 2
    """Variants kept after screening them (``FitConfig.screen_iterations`` steps from the
    mean code and the nearest training codes; 0: no variants), each with its best start;
    a variant that is already a candidate (the searched pose from the same start) is
    passed over for the next. Full refits: every searched hypothesis that reached the end
    from its best nearest training code (``FitConfig.nearest_starts``; and from its own
    code, see ``refit_searched_codes``) and these variants; the lowest refit loss wins.
    Screened codes start behind a searched one, so the two kinds are not ranked against
    each other before the refit. Measured (three views): a sled whose search ended 90 degrees
    off had the right yaw in its second hypothesis (refit loss 4.09e-3, Chamfer 3.3e-3)
    and in its second-best variant (4.14e-3, 4.0e-3), against 4.35e-3 (57.6e-3) for the
    searched best; one variant alone was not enough."""
    offset_grid: int = 1
    """Offsets per side of the translation polish's grid (``offset_step`` * (-n..n) along
    each model axis, (2n+1)^3 offsets); the polish runs ``offset_rounds`` times."""
    offset_step: float = 0.015
    """Spacing of the offset grid, model units (the shape's bounding sphere has radius ~1)."""
    offset_keep: int = 2
    """Screened offsets refitted beside the unshifted winner."""
    offset_rounds: int | None = None
    """Translation polish after the refit (:func:`engine.api.polish_offset`), this many
    rounds, each around the previous round's winner; 0: off; None (the default): one
    round when every point of the scan was seen from one sensor position (a single
    view), none otherwise (several views, or no sensor given). Each of the
    ``offset_candidates`` lowest-loss refit candidates shifted over the offset grid is
    screened from its code (``FitConfig.screen_iterations`` steps), its ``offset_keep``
    best shifts are refitted beside it unshifted, and the lowest polished loss wins, so
    candidates are compared each at its best offset. Measured on the 16 held-out chairs
    (``fast``, fp32, CPU; mean Chamfer x 1e3; docs/quality/completion.md), one round on
    two candidates: one view with 5 % outliers (32 scans) 12.24 / 7.80 -> 10.25 / 5.12
    (mean / median), unknown / known 1.35 -> 1.13; one view without outliers (32 scans,
    session 13) level in the mean and better in the median (repeat 0 10.08 -> 9.96,
    repeat 1 9.00 / 4.18 -> 9.74 / 3.55, 9 of 16 better; unknown / known 1.12 over the
    32); three views with 5 % outliers (16 scans) 13.54 -> 14.78, worse (two rounds on
    the winner alone: 10 of 16 chairs worse), hence single views only."""
    refit_pose_lr: float = 3e-3
    """Above 0 (the default 3e-3): the refits (and the translation polish's) also fit a small
    correction of each candidate's pose — translation, scale and yaw
    (:func:`engine.fitting.pose_correction`) — by gradient descent with the code, at this Adam
    learning rate; 0: poses held. Default with :attr:`box_anchor` since session 21: the two
    together, with the bundled chairs model (304 training chairs), on the 16 held-out chairs,
    1 % noise, sensor known (``fast``, CPU; docs/quality/completion.md): three views with 5 %
    outliers (32 scans) took the unknown-pose mean / median Chamfer from 6.42 / 2.24 (poses
    held, no anchor) to 4.11 / 2.04 (x 1e3; alone: 5.04 / 2.16 with 3e-3, 5.34 / 2.08 with the
    anchor), unknown / known 1.00 -> 0.64 (0.97 without stool 0010, whose known-pose fit is
    poor); one view with 5 % outliers (32 scans) unknown / known 1.05 (the previous model
    with neither: 1.16); without outliers (session 22, 32 scans each) one view 1.07 and three
    views 0.81 (the previous model with neither: 1.09 and 1.03). 1e-2 was worse than 3e-3 on
    5 of 5 selected scans. With the previous bundled model (144 chairs) 3e-3 alone was
    1.04 x worse (16 scans), which is why it was off until then."""
    box_anchor: bool = True
    """After the refit (and the polish): where the scan spans the object along a model axis
    (both ends of that axis in view of a sensor, :func:`engine.api.spanned_axes`), move the
    placement so the scan's bounding box along that axis (model axes, stray points dropped)
    is centred on the model origin — the normalisation every training shape had (its
    bounding-box centre at the origin) — and refit the code there with the pose held; kept
    unless its loss is over ``box_anchor_tolerance`` above the winner's. Only with a known
    sensor (without one no axis counts as spanned). The loss barely tells a chair from the
    same chair shifted a few hundredths of the radius (the code moves its parts to follow),
    while the Chamfer distance to the true shape grows several times; the scan's own extent
    does tell them apart. On by default since session 21, with :attr:`refit_pose_lr` (the
    numbers there); alone, three views with 5 % outliers (32 scans): unknown-pose mean /
    median Chamfer 6.42 / 2.24 -> 5.34 / 2.08 (x 1e3; 0.83 x, 95 % interval 0.65-0.93, 19 of 32
    better), offset error median 0.030 -> 0.017, unknown / known on the 27 right-yaw scans
    1.46 -> 1.01. With the previous bundled model (144 chairs) it was level (1.01 x)."""
    box_anchor_tolerance: float = 0.05
    """Relative loss increase above which the box-anchored refit is refused (the scan's box
    is then taken to be wrong: clutter, a part missing from the scan)."""
    offset_candidates: int = 2
    """Refit candidates the polish runs on (the lowest losses); the lowest polished loss wins."""
    refit_searched_codes: bool = False
    """Also refit every searched hypothesis from the code the search gave it, besides its
    best nearest training code (always refitted when ``FitConfig.nearest_starts`` is on;
    without nearest starts the searched codes are always refitted). Off since session 8:
    on the 16 held-out chairs (``fast``, CPU, eight candidates per chair captured and
    scored) those candidates were the best of the pool for 2 of 32 scans; leaving
    them out changed no winner from one view and bettered two from three views with
    5 % outliers (3.06 -> 2.15, 62.3 -> 62.1 x 1e-3), with two refits fewer."""
    nearest_at_variants: bool = True
    """Screen the nearest training codes (``FitConfig.nearest_starts``) at every pose
    variant too, not only the mean code (the hypotheses always get them)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.yaw_hypotheses < 1 or self.keep < 1 or self.keep_per_up < 1:
            raise InputError("yaw_hypotheses, keep and keep_per_up must be 1 or more")
        if self.iterations < 0 or self.refit_iterations < 0 or self.refine_iterations < 0:
            raise InputError("iterations, refit_iterations and refine_iterations must be 0 or more")
        if not 0.5 <= self.extent_quantile <= 1.0:
            raise InputError(f"extent_quantile must be between 0.5 and 1, got {self.extent_quantile}")
        if not self.refit_pose_lr >= 0:
            raise InputError(f"refit_pose_lr must be 0 or more, got {self.refit_pose_lr}")
        if not self.box_anchor_tolerance >= 0:
            raise InputError(f"box_anchor_tolerance must be 0 or more, got {self.box_anchor_tolerance}")
        if self.offset_rounds is not None and self.offset_rounds < 0:
            raise InputError(f"offset_rounds must be 0 or more (or None), got {self.offset_rounds}")
        if self.offset_candidates < 1 or self.offset_keep < 0:
            raise InputError("offset_candidates must be 1 or more and offset_keep 0 or more")

    def eta_for(self, observation: ObservationConfig | None = None) -> float:
        """The search's eta: its own when set, else the observations' (``observation``, or
        the default :class:`ObservationConfig`)."""
        return (observation or ObservationConfig()).eta if self.eta is None else self.eta


@dataclass
class PlacementResult:
    """code: (L,) float32. scale, yaw (radians), translation (3,), centre (3,): the map
    ``x = scale * R_y(yaw) @ (p - centre) + translation``. model_to_input: its 4 x 4 inverse."""

    code: np.ndarray
    scale: float
    yaw: float
    translation: np.ndarray
    centre: np.ndarray
    loss: float
    hypothesis_losses: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0
    alternatives: list[PlacementResult] = field(default_factory=list)
    """The other hypotheses that reached the end, best first (each a full result)."""
    rotation: np.ndarray | None = None
    """(3, 3) the whole rotation when ``PlacementConfig.full_rotation`` (then it replaces
    ``R_y(yaw)`` in the map; ``yaw`` is only its part about y); None: ``R_y(yaw)``."""

    @property
    def input_to_model(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.scale * (rotation_y(self.yaw) if self.rotation is None else self.rotation)
        m[:3, 3] = self.translation - m[:3, :3] @ self.centre
        return m

    @property
    def model_to_input(self) -> np.ndarray:
        return np.linalg.inv(self.input_to_model)


def _tilt(tilt: torch.Tensor) -> torch.Tensor:
    """(b, 2) rotation-vector components about x and z -> (b, 3, 3) rotations."""
    a, b = tilt[:, 0], tilt[:, 1]
    zero = torch.zeros_like(a)
    skew = torch.stack(
        [torch.stack([zero, -b, zero], -1), torch.stack([b, zero, -a], -1), torch.stack([zero, a, zero], -1)], -2
    )
    return torch.linalg.matrix_exp(skew)


def up_turns(count: int) -> np.ndarray:
    """(k, 3, 3) rotations, each taking one candidate up direction of a scan to +y: the
    identity first, then -y, +-x, +-z (count 6), then the 8 diagonals (count 14)."""
    axes = [(0, 1, 0), (0, -1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, 0, -1)]
    diagonals = [(x, y, z) for x in (1, -1) for y in (1, -1) for z in (1, -1)]
    if count not in (1, 6, 14):
        raise InputError(f"up_directions must be 1, 6 or 14, got {count}")
    out = []
    for d in (axes + diagonals)[:count]:
        u = np.asarray(d, np.float64) / np.linalg.norm(d)
        y = np.array([0.0, 1.0, 0.0])
        axis = np.cross(u, y)
        sin, cos = np.linalg.norm(axis), float(u @ y)
        if sin < 1e-12:  # u = +-y: the identity, or half a turn about x
            out.append(np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0]))
            continue
        k = axis / sin
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        out.append(np.eye(3) + sin * K + (1 - cos) * K @ K)  # Rodrigues: u -> y
    return np.stack(out)


def _kept_count(ups: int, config: PlacementConfig) -> int:
    return config.keep_per_up * ups if config.full_rotation else config.keep


def _kept(losses: torch.Tensor, ups: int, config: PlacementConfig) -> torch.Tensor:
    """Indices of the hypotheses kept after the coarse phase, lowest loss first: the
    ``keep`` lowest, or with ``full_rotation`` the ``keep_per_up`` lowest of each up
    direction (hypotheses are grouped by up direction, ``len(losses) // ups`` each)."""
    if not config.full_rotation:
        return torch.argsort(losses)[: config.keep]
    per = len(losses) // ups
    best = [g * per + torch.argsort(losses[g * per : (g + 1) * per])[: config.keep_per_up] for g in range(ups)]
    kept = torch.cat(best)
    return kept[torch.argsort(losses[kept])]


def _optimizer(config: PlacementConfig, codes, trans, yaw, log_s, tilt) -> torch.optim.Adam:
    """One Adam over the hypotheses' codes and transforms (yaw, tilt and scale when estimated)."""
    groups = [{"params": [codes], "lr": config.lr_code}, {"params": [trans], "lr": config.lr_pose}]
    if config.estimate_yaw:
        groups.append({"params": [yaw], "lr": config.lr_pose * 4})
    if config.full_rotation:
        groups.append({"params": [tilt], "lr": config.lr_pose * 4})
    if config.estimate_scale:
        groups.append({"params": [log_s], "lr": config.lr_pose})
    return torch.optim.Adam(groups)


def fit_placement(
    model: ShapeModel,
    points: np.ndarray,
    normals: np.ndarray | None = None,
    sensors: np.ndarray | None = None,
    config: PlacementConfig = PlacementConfig(),
    on_progress: ProgressCallback | None = None,
) -> PlacementResult:
    """Fit code and placement to a scan. points, normals, sensors: (n, 3), the scan's frame, y up.

    Normals are estimated (and turned towards the sensors when given) when missing.
    """
    t_start = time.perf_counter()
    eta = config.eta_for()
    if not 0 < eta < 0.5:
        raise InputError(f"eta must be in (0, 0.5) model units, got {eta}")
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    if len(pts) < 10:
        raise InputError("a scan needs at least 10 points")
    if not np.isfinite(pts).all():
        raise InputError("the scan has NaN or infinite coordinates")
    if sensors is not None:
        sensors = np.broadcast_to(np.asarray(sensors, np.float64), pts.shape)
    if normals is None:
        if config.remove_outliers:
            keep = outlier_mask(pts)
            pts = pts[keep]
            sensors = None if sensors is None else sensors[keep]
        if config.denoise:
            pts = denoise_points(pts, 16).astype(np.float64)
        normals = estimate_normals(pts, 16, sensors)
    nrm = np.asarray(normals, np.float64).reshape(-1, 3)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True).clip(1e-12)
    centre, radius = bounding_extent(pts, config.extent_quantile)
    if radius <= 0:
        raise InputError("the scan has no extent")
    s0 = 1.0 / (RADIUS_MARGIN * radius)

    dev = model.device
    dec = model.decoder
    gen = torch.Generator().manual_seed(config.seed)
    yaws = max(1, config.yaw_hypotheses)
    turns = up_turns(config.up_directions if config.full_rotation else 1)
    H = len(turns) * yaws
    local = torch.tensor(pts - centre, dtype=torch.float32, device=dev)
    n_t = torch.tensor(nrm, dtype=torch.float32, device=dev)
    if sensors is not None and config.free_space_per_point > 0:
        sens = torch.tensor(np.asarray(sensors, np.float64).reshape(-1, 3) - centre, dtype=torch.float32, device=dev)
    yaw = torch.tensor(
        [2 * math.pi * k / yaws for _ in turns for k in range(yaws)], device=dev, requires_grad=config.estimate_yaw
    )
    up = torch.tensor(np.repeat(turns, yaws, axis=0), dtype=torch.float32, device=dev)  # (H, 3, 3) fixed
    tilt = torch.zeros(H, 2, device=dev, requires_grad=config.full_rotation)
    log_s = torch.full((H,), math.log(s0), device=dev, requires_grad=config.estimate_scale)
    trans = torch.zeros(H, 3, device=dev, requires_grad=True)
    codes = model.codes.detach().mean(dim=0, keepdim=True).repeat(H, 1).clone().requires_grad_(True)
    opt = _optimizer(config, codes, trans, yaw, log_s, tilt)
    base = [g["lr"] for g in opt.param_groups]
    log_s0 = math.log(s0)

    def rotation() -> torch.Tensor:
        """(H, 3, 3) each hypothesis' rotation, scan frame -> model frame."""
        return yaw_rotations(yaw) @ _tilt(tilt) @ up if config.full_rotation else yaw_rotations(yaw)

    def observe(idx: torch.Tensor | None):
        p = local if idx is None else local[idx]
        n = n_t if idx is None else n_t[idx]
        scale = log_s.exp()
        eta_in = eta / scale  # (H,) offsets in scan units giving eta in model units
        rot = rotation()
        groups = [p.expand(H, -1, -1), p + eta_in[:, None, None] * n, p - eta_in[:, None, None] * n]
        targets = [0.0, eta, -eta]
        lower = [False, False, False]
        if sensors is not None and config.free_space_per_point > 0:
            o = sens if idx is None else sens[idx]
            a, b = config.free_space_range
            for _ in range(config.free_space_per_point):
                u = torch.rand(len(p), 1, generator=gen).to(dev) * (b - a) + a
                groups.append((o + u * (p - o)).expand(H, -1, -1))
                targets.append(0.0)
                lower.append(True)
        xs = torch.cat(groups, dim=1)  # (H, m, 3) scan frame, centred
        model_pts = scale[:, None, None] * torch.einsum("hij,hmj->hmi", rot, xs) + trans[:, None, :]
        tgt = torch.cat([torch.full((len(p),), v, device=dev) for v in targets])
        low = torch.cat([torch.full((len(p),), b, device=dev, dtype=torch.bool) for b in lower])
        return model_pts, tgt, low

    def loss_of(model_pts, tgt, low):
        pred = dec.forward_codes(codes, model_pts)
        p = pred.clamp(-config.clamp, config.clamp)
        t = tgt.clamp(-config.clamp, config.clamp)
        err = torch.where(low, (t - p).clamp(min=0), (p - t).abs())
        return (
            err.mean(dim=1)
            + config.prior_weight * codes.pow(2).mean(dim=1)
            + config.scale_prior * (log_s - log_s0).pow(2)
        )

    grads = [p.requires_grad for p in dec.parameters()]
    was_training = dec.training
    dec.eval()
    try:
        for p in dec.parameters():
            p.requires_grad_(False)
        with parametrize.cached():
            coarse_steps = int(config.iterations * config.coarse_fraction) if H > _kept_count(len(turns), config) else 0
            for step in range(config.iterations):
                frac = 0.5 * (1 + math.cos(math.pi * step / max(1, config.iterations)))
                for g, b in zip(opt.param_groups, base, strict=True):
                    g["lr"] = b * (0.05 + 0.95 * frac)
                k = min(config.coarse_samples if step < coarse_steps else config.samples_per_iteration, len(pts))
                idx = torch.randint(len(pts), (k,), generator=gen).to(dev)
                loss = loss_of(*observe(idx))
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                if step == coarse_steps - 1:  # keep the most promising hypotheses, drop the rest
                    with torch.no_grad():
                        k = min(4096, len(pts))
                        probe = torch.randperm(len(pts), generator=gen)[:k].to(dev)
                        order = _kept(loss_of(*observe(probe)), len(turns), config)
                    H = len(order)
                    up = up[order]
                    yaw, log_s, trans, codes, tilt = (
                        x.detach()[order].clone().requires_grad_(x.requires_grad)
                        for x in (yaw, log_s, trans, codes, tilt)
                    )
                    opt = _optimizer(config, codes, trans, yaw, log_s, tilt)
                if step % 10 == 0 or step == config.iterations - 1:
                    report(on_progress, step + 1, config.iterations, "fitting code and placement")
            with torch.no_grad():
                k = min(20000, len(pts))
                idx = torch.randperm(len(pts), generator=gen)[:k].to(dev)
                final = loss_of(*observe(idx)).cpu().numpy()
                rotations = rotation().double().cpu().numpy() if config.full_rotation else None
    finally:
        for p, g in zip(dec.parameters(), grads, strict=True):
            p.requires_grad_(g)
        dec.train(was_training)
    results = [
        PlacementResult(
            code=codes[h].detach().cpu().numpy().astype(np.float32),
            scale=float(log_s[h].detach().exp()),
            yaw=float(yaw[h].detach()),
            translation=trans[h].detach().cpu().numpy().astype(np.float64),
            centre=centre,
            loss=float(final[h]),
            hypothesis_losses=final,
            seconds=time.perf_counter() - t_start,
            rotation=None if rotations is None else _orthonormal(rotations[h]),
        )
        for h in np.argsort(final)
    ]
    results[0].alternatives = results[1:]
    return results[0]


def _orthonormal(m: np.ndarray) -> np.ndarray:
    """The rotation nearest ``m`` (3, 3) (float32 products drift from orthonormal)."""
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r
