"""Fitting a shape code to SDF observations (MAP, decoder frozen): reconstruction and completion.

Minimises, for each of ``restarts`` codes run as one batch,

    mean_k w_k * |clamp(f(z, x_k)) - clamp(s_k)|  +  prior_weight * mean(z^2)

where clamp is to ``[-clamp, clamp]`` (the training loss) and, for observations
marked ``lower_bound`` (known free space), only ``clamp(s_k) > clamp(f)`` is
penalised. Only the codes receive gradients; the decoder's weight norm is
computed once per call, and the code's contribution to the first and skip layers
is folded into a per-code bias. The restart with the lowest loss on all
observations is returned.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.nn.utils import parametrize

from .device import PRECISIONS, compute_precision, resolve_precision
from .errors import InputError
from .frames import rotation_y
from .model import ShapeModel
from .progress import ProgressCallback, report, scaled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Settings of one code fit. See ``FIT_PRESETS`` for the named sets."""

    iterations: int = 200
    """Adam steps. The reference uses 800; measured, 200 from the mean code reaches its quality."""
    lr: float = 1e-2
    """Initial learning rate (reference 5e-3)."""
    schedule: str = "cosine"
    """``step`` (x ``decay_factor`` at ``decay_at``, the reference) or ``cosine`` (to 1 % at the end)."""
    decay_at: float = 0.5
    """Fraction of iterations where the step schedule decays (reference: 400 of 800)."""
    decay_factor: float = 0.1
    """Step schedule factor (reference: /10)."""
    samples_per_iteration: int = 8000
    """Observations per step (0: all). Reference 8000."""
    balance_signs: bool = True
    """Draw half the samples from sdf > 0 and half from sdf <= 0 (reference), when both exist."""
    clamp: float = 0.1
    """Clamping distance delta, as in training."""
    prior_weight: float = 1e-4
    """Weight of mean(z^2), the code prior (reference 1e-4)."""
    init: str = "mean"
    """Start codes: ``normal`` (N(0, init_std^2), reference), ``mean`` (mean training code
    plus that noise for restarts after the first) or ``nearest`` (the training codes
    that best explain the observations)."""
    init_std: float = 0.01
    """Std of the random start (reference 0.01)."""
    restarts: int = 1
    """Codes fitted at once from different starts; the best is kept."""
    nearest_starts: int = 8
    """Also start from the training shape nearest the observations: the training codes
    with the lowest objective on a subset of the observations, this many, are each fitted
    ``screen_iterations`` steps (one batch) and the best of them is fitted with the other
    starts; the lowest final loss wins (0: off). Measured on 16 held-out chairs (1 %
    noise, ``evaluate-completion``, H100): known-pose mean Chamfer 13.7e-3 -> 7.7e-3 from
    one view and 13.5e-3 -> 8.5e-3 from three; unknown pose (with the variants of
    :func:`engine.api.refit_placement`) 13.8e-3 -> 10.3e-3 and 19.1e-3 -> 10.1e-3. A
    nearest code fitted without the mean-code start (``init="nearest"``) was worse on the
    complete fixture scan, hence both."""
    screen_iterations: int = 100
    """Steps of a screening fit (nearest starts here, pose variants in
    :func:`engine.api.refit_placement`): enough to rank starts, not to finish them."""
    screen_samples: int = 1024
    """Observations per screening step."""
    screen_rows: int = 16384
    """Observations the screened codes are ranked on."""
    seed: int = 0
    """Seeds the starts and the sampling: the same inputs give the same code."""
    precision: str = "auto"
    """Arithmetic on CUDA: ``fp32``, ``tf32`` or ``bf16`` (``auto``: see ``CUDA_FIT_PRECISION``).
    The CPU always fits in fp32."""
    cuda_graph: bool = True
    """On CUDA, capture one step as a CUDA graph and replay it (no launch or host
    overhead per step); falls back to plain steps if capture fails."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.restarts < 1:
            raise InputError("iterations must be >= 0 and restarts >= 1")
        if self.nearest_starts < 0 or self.screen_iterations < 0:
            raise InputError("nearest_starts and screen_iterations must be >= 0")
        if self.schedule not in ("step", "cosine", "constant"):
            raise InputError(f"unknown schedule {self.schedule!r}")
        if self.init not in ("normal", "mean", "nearest"):
            raise InputError(f"unknown init {self.init!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}")


CUDA_FIT_PRECISION = "bf16"
"""What ``precision="auto"`` fits in on CUDA. Measured on an H100 (``benchmarks/bench_gpu.py``,
paper decoder, 200 steps): bf16 0.15 s and Chamfer 2.21e-3, TF32 0.25 s / 2.29e-3,
fp32 0.37 s / 2.26e-3: the same quality, so the fastest."""

FIT_PRESETS: dict[str, FitConfig] = {
    # The reference's reconstruct.py: 800 its, lr 5e-3 /10 at 400, 8000 samples, N(0, 0.01^2).
    "reference": FitConfig(
        iterations=800,
        lr=5e-3,
        schedule="step",
        init="normal",
        samples_per_iteration=8000,
        restarts=1,
        nearest_starts=0,
    ),
    # Our default: see FitConfig field docs; chosen by benchmarks/bench_fit.py.
    "default": FitConfig(),
    # A quarter of the samples per step, half the nearest starts and half the screening
    # samples. Measured on the paper decoder (fixture chair, benchmarks/bench_engine.py):
    # 2048 samples gave the same Chamfer as `default` (2.29e-3 against 2.28e-3). On 16
    # held-out chairs (evaluate-completion, fp32 on an H100, 1 % noise, docs/quality/
    # completion.md) its completions were level with `default` (mean Chamfer of the
    # unknown-pose cells 11.5e-3 against 14.5e-3, known pose 9.4e-3 against 8.9e-3),
    # at about a third of the CPU time.
    "fast": FitConfig(samples_per_iteration=2048, nearest_starts=4, screen_samples=512),
}


AUTO_PRESET = "auto"
"""Not in ``FIT_PRESETS``: ``default`` on a GPU, ``fast`` on a CPU (where ``default`` takes
several minutes per scan completion and ``fast`` about a minute; docs/performance.md)."""


def fit_preset(name: str, device: torch.device | str | None = None, **overrides: object) -> FitConfig:
    """A named :class:`FitConfig` (``reference``, ``default``, ``fast``, or ``auto``: ``default``
    when ``device`` is a GPU, else ``fast``) with fields overridden."""
    if name == AUTO_PRESET:
        name = "default" if device is not None and torch.device(device).type == "cuda" else "fast"
    try:
        base = FIT_PRESETS[name]
    except KeyError:
        raise InputError(f"unknown fit preset {name!r}; choose {sorted(FIT_PRESETS)} or {AUTO_PRESET!r}") from None
    return replace(base, **overrides) if overrides else base


@dataclass
class Observations:
    """SDF observations of one shape, in the model frame.

    points: (n, 3) float32. sdf: (n,) float32 (negative inside). weights: (n,)
    float32 or None (all 1). lower_bound: (n,) bool or None: where True the value
    is only a lower bound (free space known to be outside by at least ``sdf``).
    fixed: (n,) bool or None: rows that hold in the model frame whatever the scan's
    placement (the far shell); the others move with the scan (:func:`fit_codes_posed`).
    """

    points: np.ndarray
    sdf: np.ndarray
    weights: np.ndarray | None = None
    lower_bound: np.ndarray | None = None
    fixed: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, np.float32).reshape(-1, 3)
        self.sdf = np.asarray(self.sdf, np.float32).reshape(-1)
        n = len(self.points)
        if len(self.sdf) != n:
            raise InputError(f"{n} points but {len(self.sdf)} SDF values")
        if n == 0:
            raise InputError("no observations to fit a code to")
        if not (np.isfinite(self.points).all() and np.isfinite(self.sdf).all()):
            raise InputError("observations contain NaN or infinite values")
        if self.weights is not None:
            self.weights = np.asarray(self.weights, np.float32).reshape(n)
        if self.lower_bound is not None:
            self.lower_bound = np.asarray(self.lower_bound, bool).reshape(n)
        if self.fixed is not None:
            self.fixed = np.asarray(self.fixed, bool).reshape(n)

    def __len__(self) -> int:
        return len(self.points)

    def subset(self, rows: np.ndarray) -> Observations:
        """The observations at ``rows`` (indices or a boolean mask), every field kept."""
        return Observations(
            self.points[rows],
            self.sdf[rows],
            None if self.weights is None else self.weights[rows],
            None if self.lower_bound is None else self.lower_bound[rows],
            None if self.fixed is None else self.fixed[rows],
        )


@dataclass
class FitResult:
    """Outcome of :func:`fit_code`.

    code: (code_length,) float32 numpy, the best restart. loss: its loss on all
    observations. restart_losses: (restarts,) the same for every restart.
    codes: (restarts, code_length) all final codes. history: mean batch loss per step.
    """

    code: np.ndarray
    loss: float
    restart_losses: np.ndarray
    codes: np.ndarray
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cuda_graph: bool = False
    """Whether the steps ran as a replayed CUDA graph."""
    poses: np.ndarray | None = None
    """(b, 4, 4) from :func:`fit_codes_posed` with ``pose_lr``: each pose with its fitted
    correction (:func:`pose_correction` ``@ poses[j]``); None: the poses were held."""


def _learning_rate(config: FitConfig, step: int) -> float:
    if config.schedule == "step":
        every = max(1, int(config.iterations * config.decay_at))
        return config.lr * config.decay_factor ** (step // every)
    if config.schedule == "cosine":
        t = step / max(1, config.iterations)
        return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
    return config.lr


def _per_point_loss(pred: torch.Tensor, target: torch.Tensor, lower: torch.Tensor | None, clamp: float) -> torch.Tensor:
    p = pred.clamp(-clamp, clamp)
    t = target.clamp(-clamp, clamp)
    err = (p - t).abs()
    if lower is not None:
        err = torch.where(lower, (t - p).clamp(min=0), err)
    return err


def _draw_samples(
    sdf: np.ndarray, count: int, balance: bool, steps: int, generator: torch.Generator
) -> torch.Tensor | None:
    """Indices of the observations each step uses: (steps, count) int64, or None for all.

    Half from sdf > 0 and half from sdf <= 0 like the reference, when both exist.
    Drawn up front so a step reads its row on the device without the host.
    """
    n = len(sdf)
    if not 0 < count < n or steps == 0:
        return None
    pos = torch.from_numpy(np.flatnonzero(sdf > 0))
    neg = torch.from_numpy(np.flatnonzero(sdf <= 0))
    if not (balance and len(pos) and len(neg)):
        return torch.randint(n, (steps, count), generator=generator)
    half = count // 2
    a = pos[torch.randint(len(pos), (steps, half), generator=generator)]
    b = neg[torch.randint(len(neg), (steps, count - half), generator=generator)]
    return torch.cat([a, b], dim=1)


@torch.no_grad()
def code_losses(
    model: ShapeModel,
    codes: torch.Tensor,
    obs: Observations,
    config: FitConfig = FitConfig(),
    chunk: int = 32768,
    precision: str = "fp32",
) -> torch.Tensor:
    """Objective of each code on all observations. codes: (b, L). Returns (b,).

    precision: the decoder's arithmetic on CUDA (as :func:`engine.device.resolve_precision` returns)."""
    return _code_losses(model, codes, obs, torch.from_numpy(obs.points), config, chunk, precision)


@torch.no_grad()
def _code_losses(
    model: ShapeModel,
    codes: torch.Tensor,
    obs: Observations,
    points: torch.Tensor,
    config: FitConfig,
    chunk: int = 262144,
    precision: str = "fp32",
) -> torch.Tensor:
    """:func:`code_losses` with the points given: (n, 3) shared or (b, n, 3) one set per code."""
    dev = model.device
    pts = points.to(dev)
    tgt = torch.from_numpy(obs.sdf).to(dev)
    w = torch.from_numpy(obs.weights).to(dev) if obs.weights is not None else None
    lo = torch.from_numpy(obs.lower_bound).to(dev) if obs.lower_bound is not None else None
    dec = model.decoder
    total = torch.zeros(len(codes), device=dev)
    n = pts.shape[-2]
    chunk = max(1024, chunk // max(len(codes), 1))  # rows per pass for all codes: bounded memory
    with parametrize.cached():
        biases = dec.code_biases(codes)
        for s in range(0, n, chunk):
            sl = slice(s, s + chunk)
            x = pts[:, sl] if pts.dim() == 3 else pts[sl].unsqueeze(0).expand(len(codes), -1, -1)
            with compute_precision(dev, precision):
                pred = dec.forward_codes(codes, x, biases)
            err = _per_point_loss(pred.float(), tgt[sl], None if lo is None else lo[sl], config.clamp)
            total += (err * w[sl] if w is not None else err).sum(dim=1)
    norm = float(obs.weights.sum()) if obs.weights is not None else float(len(obs))
    return total / max(norm, 1e-12) + config.prior_weight * codes.pow(2).mean(dim=1)


def _initial_codes(model: ShapeModel, obs: Observations, config: FitConfig, gen: torch.Generator) -> torch.Tensor:
    L, R = model.code_length, config.restarts
    noise = torch.randn(R, L, generator=gen) * config.init_std
    if config.init == "normal":
        return noise
    if config.init == "mean":
        noise[0] = 0
        return model.codes.detach().cpu().mean(dim=0, keepdim=True) + noise
    # nearest: the training codes that best explain a subsample of the observations.
    order = torch.from_numpy(rank_training_codes(model, obs, model.num_shapes, config, rows=2048)[0])
    base = model.codes.detach().cpu()[order[torch.arange(R) % len(order)]]
    return base + torch.where(torch.arange(R)[:, None] < len(order), 0.0, 1.0) * noise


_RANK_ROWS = 1024
"""Observations the training codes are ranked on for nearest starts (a seeded subset).
Measured on 6 held-out chairs (H100): identical completions to 4,096 rows in 7 of 8
evaluation cells (the 8th 16.35e-3 against 16.07e-3; the 16-chair results in
docs/quality/completion.md were taken with 1,024), at a quarter of the cost (ranking 144 codes at one pose: 0.5 s instead of 3.4 s on a 2-core CPU)."""


def rank_training_codes(
    model: ShapeModel,
    obs: Observations,
    count: int,
    config: FitConfig = FitConfig(),
    rows: int | None = None,
    poses: np.ndarray | None = None,
) -> np.ndarray:
    """The ``count`` training codes with the lowest objective on ``obs``, best first.

    Ranked on ``rows`` (default ``_RANK_ROWS``) observations drawn with ``config.seed``
    (all when there are fewer), moved by each of ``poses`` (b, 4, 4) as in :func:`fit_codes_posed` (None: as they
    are, b = 1). Returns (b, count) int indices into ``model.codes``.
    """
    n, rows = len(obs), _RANK_ROWS if rows is None else rows
    pick = np.arange(n) if n <= rows else np.sort(np.random.default_rng(config.seed).choice(n, rows, replace=False))
    sub = obs.subset(pick)
    poses = np.eye(4)[None] if poses is None else np.asarray(poses, np.float64).reshape(-1, 4, 4)
    points = _posed_points(sub, poses)
    codes = model.codes.detach()
    count = min(count, len(codes))
    out = []
    for j in range(len(poses)):
        losses = torch.cat(
            [_code_losses(model, codes[s : s + 16], sub, points[j], config) for s in range(0, len(codes), 16)]
        ).cpu()
        out.append(torch.argsort(losses)[:count].numpy())
    return np.stack(out)


def screen_nearest(
    model: ShapeModel,
    obs: Observations,
    poses: np.ndarray | None = None,
    config: FitConfig = FitConfig(),
    on_progress: ProgressCallback | None = None,
) -> FitResult:
    """The best nearest-training-code start at each pose.

    For each of ``poses`` (b, 4, 4; None: ``obs`` as it is, b = 1), ranks the training
    codes (:func:`rank_training_codes`), fits the ``config.nearest_starts`` best for
    ``config.screen_iterations`` steps of ``config.screen_samples`` observations (all
    poses and codes as one batch) and keeps the one with the lowest loss on
    ``config.screen_rows`` rows. Returns a :class:`FitResult` whose ``codes`` (b, L) and
    ``restart_losses`` (b,) are per pose.
    """
    t0 = time.perf_counter()
    poses = np.eye(4)[None] if poses is None else np.asarray(poses, np.float64).reshape(-1, 4, 4)
    b, k = len(poses), min(max(config.nearest_starts, 1), model.num_shapes)
    near = rank_training_codes(model, obs, k, config, poses=poses)
    screen = screen_codes_posed(
        model,
        obs,
        np.repeat(poses, k, axis=0),
        model.codes.detach().cpu().numpy()[near.reshape(-1)],
        config,
        on_progress,
    )
    losses = screen.restart_losses.reshape(b, k)
    best = np.argmin(losses, axis=1)
    codes = screen.codes.reshape(b, k, -1)[np.arange(b), best]
    kept = losses[np.arange(b), best]
    j = int(np.argmin(kept))
    return FitResult(codes[j], float(kept[j]), kept, codes, screen.history, time.perf_counter() - t0, screen.cuda_graph)


_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def yaw_rotations(yaw: torch.Tensor) -> torch.Tensor:
    """(b,) yaws, radians -> (b, 3, 3) rotations about y (as :func:`engine.frames.rotation_y`)."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack(
        [torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1), torch.stack([-s, zero, c], -1)], -2
    )


def pose_correction(params: np.ndarray) -> np.ndarray:
    """The similarity ``x -> exp(log_scale) * R_y(yaw) @ x + t`` of the model frame as (b, 4, 4),
    from params (b, 5) = (t (3,) model units, log_scale, yaw radians); what
    :func:`fit_codes_posed` fits with ``pose_lr``."""
    p = np.asarray(params, np.float64).reshape(-1, 5)
    out = np.repeat(np.eye(4)[None], len(p), axis=0)
    out[:, :3, :3] = [np.exp(row[3]) * rotation_y(row[4]) for row in p]
    out[:, :3, 3] = p[:, :3]
    return out


def _corrected(pose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x (b, m, 3) moved by each code's :func:`pose_correction` (pose (b, 5))."""
    linear = pose[:, 3].exp()[:, None, None] * yaw_rotations(pose[:, 4])
    return torch.einsum("bij,bmj->bmi", linear, x) + pose[:, None, :3]


def _adam(
    param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, k: torch.Tensor
) -> None:
    """One Adam step in place (as ``torch.optim.Adam``; ``k``: the 1-based step, a tensor)."""
    b1, b2 = _ADAM_BETAS
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    bias1 = 1 - torch.pow(b1, k)
    bias2 = 1 - torch.pow(b2, k)
    denom = (v.sqrt() / bias2.sqrt()).add_(_ADAM_EPS)
    param.sub_(lr / bias1 * m / denom)


class _FitLoop:
    """The fitting loop as tensors on the device: one :meth:`step` reads the step
    number from a device counter, so a CUDA graph of it replays every step (Adam as
    ``torch.optim.Adam``, written out so it runs inside the graph)."""

    def __init__(
        self,
        model: ShapeModel,
        obs: Observations,
        config: FitConfig,
        codes: torch.Tensor,
        indices: torch.Tensor | None,
        precision: str,
        points: torch.Tensor | None = None,
        pose_lr: float = 0.0,
    ) -> None:
        """points: (b, n, 3), one set per code, in place of ``obs.points`` (shared).
        pose_lr: above 0, a correction per code (:func:`pose_correction`) of the rows not
        marked ``obs.fixed`` is fitted with the codes (Adam, this learning rate on the
        same schedule)."""
        dev = model.device
        self.dec = model.decoder
        self.config = config
        self.precision = precision
        self.codes = codes.to(dev).requires_grad_(True)
        self.m = torch.zeros_like(self.codes)
        self.v = torch.zeros_like(self.codes)
        self.step_index = torch.zeros((), dtype=torch.int64, device=dev)
        steps = max(config.iterations, 1)
        self.lrs = torch.tensor([_learning_rate(config, k) for k in range(steps)], dtype=torch.float32, device=dev)
        self.history = torch.zeros(steps, dtype=torch.float32, device=dev)
        self.indices = None if indices is None else indices.to(dev)
        self.pts = (torch.from_numpy(obs.points) if points is None else points).to(dev)
        self.tgt = torch.from_numpy(obs.sdf).to(dev)
        self.w = torch.from_numpy(obs.weights).to(dev) if obs.weights is not None else None
        self.lo = torch.from_numpy(obs.lower_bound).to(dev) if obs.lower_bound is not None else None
        self.used_graph = False
        self.pose: torch.Tensor | None = None
        if pose_lr > 0:
            self.pose = torch.zeros(len(self.codes), 5, device=dev, requires_grad=True)
            self.pose_m = torch.zeros_like(self.pose)
            self.pose_v = torch.zeros_like(self.pose)
            scale = pose_lr / config.lr if config.lr > 0 else 0.0
            self.pose_lrs = self.lrs * scale
            moving = np.ones(len(obs), bool) if obs.fixed is None else ~obs.fixed
            self.moving = torch.from_numpy(moving).to(dev)

    def step(self) -> None:
        # indexing with a 0-d tensor would read it on the host: index_select keeps it on the device
        c, i = self.config, self.step_index.view(1)
        if self.indices is None:
            x, t, ww, ll = self.pts, self.tgt, self.w, self.lo
            moving = None if self.pose is None else self.moving
        else:
            idx = self.indices.index_select(0, i)[0]
            x, t = self.pts[..., idx, :], self.tgt[idx]
            ww = None if self.w is None else self.w[idx]
            ll = None if self.lo is None else self.lo[idx]
            moving = None if self.pose is None else self.moving[idx]
        codes = self.codes
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(len(codes), -1, -1)
        if self.pose is not None:
            x = torch.where(moving[None, :, None], _corrected(self.pose, x), x)
        with compute_precision(codes.device, self.precision):
            pred = self.dec.forward_codes(codes, x)
        err = _per_point_loss(pred.float(), t, ll, c.clamp)
        data = (err * ww).sum(1) / ww.sum().clamp(min=1e-12) if ww is not None else err.mean(1)
        loss = data + c.prior_weight * codes.pow(2).mean(dim=1)
        params = [codes] if self.pose is None else [codes, self.pose]
        grads = torch.autograd.grad(loss.sum(), params)
        with torch.no_grad():
            k = (i + 1).float()
            _adam(codes, grads[0], self.m, self.v, self.lrs.index_select(0, i), k)
            if self.pose is not None:
                _adam(self.pose, grads[1], self.pose_m, self.pose_v, self.pose_lrs.index_select(0, i), k)
            self.history.index_copy_(0, i, loss.detach().mean().view(1))
            self.step_index += 1

    def run(self, on_progress: ProgressCallback | None, use_graph: bool) -> None:
        total = self.config.iterations
        done = 0
        if use_graph:
            done = self._run_graph(on_progress)
        for k in range(done, total):
            self.step()
            if k % 10 == 0 or k == total - 1:
                report(on_progress, k + 1, total, "fitting code")

    def _run_graph(self, on_progress: ProgressCallback | None) -> int:
        """Warm up on a side stream, capture one step, replay it; returns the steps done."""
        total = self.config.iterations
        warm = min(3, total)
        side = torch.cuda.Stream(self.codes.device)
        side.wait_stream(torch.cuda.current_stream(self.codes.device))
        with torch.cuda.stream(side):
            for _ in range(warm):
                self.step()
        torch.cuda.current_stream(self.codes.device).wait_stream(side)
        if total - warm <= 0:
            return warm
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step()
        except RuntimeError as exc:
            # capture is not possible here (for example inside another capture): plain steps
            log.warning("CUDA graph capture failed (%s); fitting with plain steps", exc)
            return warm
        self.used_graph = True
        for k in range(warm, total):
            graph.replay()
            if k % 10 == 0 or k == total - 1:
                report(on_progress, k + 1, total, "fitting code")
        return total


def fit_code(
    model: ShapeModel,
    obs: Observations,
    config: FitConfig = FitConfig(),
    on_progress: ProgressCallback | None = None,
    initial_code: np.ndarray | None = None,
) -> FitResult:
    """Fit a code to ``obs`` with the decoder frozen; returns the best of ``config.restarts``
    starts and, with ``config.nearest_starts``, the best-screened nearest training code
    (:func:`screen_nearest`; not when ``initial_code`` is given).

    initial_code: (L,) start for the first restart instead of ``config.init`` (the
    others start from it plus ``init_std`` noise), e.g. to refine an earlier fit.
    On CUDA the step runs as a replayed CUDA graph in ``config.precision``; the
    host reads nothing from the device until the loop ends.
    """
    t0 = time.perf_counter()
    dev = model.device
    gen = torch.Generator().manual_seed(config.seed)
    if initial_code is not None:
        codes = torch.as_tensor(np.asarray(initial_code, np.float32).reshape(1, -1)).repeat(config.restarts, 1)
        if config.restarts > 1:
            noise = torch.randn(config.restarts, model.code_length, generator=gen) * config.init_std
            noise[0] = 0
            codes = codes + noise
    else:
        codes = _initial_codes(model, obs, config, gen)
        if config.nearest_starts > 0:
            near = screen_nearest(model, obs, None, config, scaled(on_progress, 0, 250, 1000))
            codes = torch.cat([codes, torch.from_numpy(near.codes)])
            on_progress = scaled(on_progress, 250, 750, 1000)
    indices = _draw_samples(obs.sdf, config.samples_per_iteration, config.balance_signs, config.iterations, gen)
    precision = resolve_precision(config.precision, dev, CUDA_FIT_PRECISION)
    loop = _run_frozen(model, _FitLoop(model, obs, config, codes, indices, precision), on_progress)
    # scored in fp32 whatever the fit ran in: starts a fraction of a percent apart are ranked
    losses = code_losses(model, loop.codes.detach(), obs, config, precision="fp32").cpu().numpy()
    return _result(loop, losses, t0)


def _run_frozen(model: ShapeModel, loop: _FitLoop, on_progress: ProgressCallback | None) -> _FitLoop:
    """Run ``loop`` with the decoder frozen (no parameter gradients, eval mode), then restore it."""
    dec = model.decoder
    was_training = dec.training
    grads = [p.requires_grad for p in dec.parameters()]
    dec.eval()
    try:
        for p in dec.parameters():
            p.requires_grad_(False)
        with parametrize.cached():
            loop.run(on_progress, use_graph=loop.config.cuda_graph and model.device.type == "cuda")
    finally:
        for p, g in zip(dec.parameters(), grads, strict=True):
            p.requires_grad_(g)
        dec.train(was_training)
    return loop


def _result(loop: _FitLoop, losses: np.ndarray, t0: float) -> FitResult:
    """The finished loop's codes as a :class:`FitResult` (``losses``: (b,) per code)."""
    final = loop.codes.detach()
    steps = loop.config.iterations
    history = loop.history[:steps].cpu().numpy()
    best = int(np.argmin(losses))
    return FitResult(
        code=final[best].cpu().numpy().astype(np.float32),
        loss=float(losses[best]),
        restart_losses=losses,
        codes=final.cpu().numpy().astype(np.float32),
        history=[float(history[k]) for k in range(steps) if k % 10 == 0 or k == steps - 1],
        seconds=time.perf_counter() - t0,
        cuda_graph=loop.used_graph,
    )


def _posed_points(obs: Observations, poses: np.ndarray) -> torch.Tensor:
    """``obs.points`` moved by each of ``poses`` (b, 4, 4), rows marked ``obs.fixed`` kept: (b, n, 3) float32."""
    base = np.asarray(obs.points, np.float64)
    moved = np.einsum("bij,nj->bni", poses[:, :3, :3], base) + poses[:, None, :3, 3]
    if obs.fixed is not None:
        moved[:, obs.fixed] = base[obs.fixed]
    return torch.from_numpy(moved.astype(np.float32))


def fit_codes_posed(
    model: ShapeModel,
    obs: Observations,
    poses: np.ndarray,
    initial_codes: np.ndarray,
    config: FitConfig = FitConfig(),
    loss_rows: int = 0,
    on_progress: ProgressCallback | None = None,
    pose_lr: float = 0.0,
) -> FitResult:
    """Fit one code per pose, all as one batch: code ``j`` sees ``obs`` moved by ``poses[j]``.

    obs: observations of one scan in the model frame. poses: (b, 4, 4) similarities of
    the model frame (each candidate placement of the scan, relative to the one ``obs``
    was built in; the offsets along normals scale with them, which is negligible for
    the few-percent scale differences of candidates). initial_codes: (b, L). Rows
    marked ``obs.fixed`` (the far shell) belong to the model frame and do not move.
    loss_rows: score the final codes on this many seeded rows (0: all).
    pose_lr: above 0, each pose is corrected too: a small similarity of the model frame
    (:func:`pose_correction`: translation, log scale, yaw about the vertical; Adam with this
    learning rate on ``config.schedule``) applied after ``poses[j]``, fitted with the code.
    Returns a :class:`FitResult` whose ``restart_losses`` (b,) and ``codes`` (b, L) are
    per pose; ``code`` / ``loss`` are the lowest; ``poses`` (b, 4, 4) the corrected poses
    when ``pose_lr`` (scored at them).
    """
    t0 = time.perf_counter()
    if not pose_lr >= 0:
        raise InputError(f"pose_lr must be 0 (poses held) or more, got {pose_lr}")
    dev = model.device
    poses = np.asarray(poses, np.float64).reshape(-1, 4, 4)
    # a copy: the loop updates its codes in place, the caller's array stays as it was
    codes = torch.tensor(np.asarray(initial_codes, np.float32).reshape(len(poses), model.code_length))
    points = _posed_points(obs, poses)
    gen = torch.Generator().manual_seed(config.seed)
    indices = _draw_samples(obs.sdf, config.samples_per_iteration, config.balance_signs, config.iterations, gen)
    precision = resolve_precision(config.precision, dev, CUDA_FIT_PRECISION)
    loop = _run_frozen(model, _FitLoop(model, obs, config, codes, indices, precision, points, pose_lr), on_progress)
    fitted = None
    if loop.pose is not None:
        fitted = pose_correction(loop.pose.detach().cpu().numpy()) @ poses
        points = _posed_points(obs, fitted)
    scored, rows = obs, points
    if 0 < loss_rows < len(obs):
        pick = np.sort(np.random.default_rng(config.seed).choice(len(obs), loss_rows, replace=False))
        scored = obs.subset(pick)
        rows = points[:, torch.from_numpy(pick)]
    # fp32 as in fit_code: candidates a fraction of a percent apart are ranked
    losses = _code_losses(model, loop.codes.detach(), scored, rows, config, precision="fp32").cpu().numpy()
    result = _result(loop, losses, t0)
    result.poses = fitted
    return result


def screen_codes_posed(
    model: ShapeModel,
    obs: Observations,
    poses: np.ndarray,
    initial_codes: np.ndarray,
    config: FitConfig = FitConfig(),
    on_progress: ProgressCallback | None = None,
) -> FitResult:
    """A screening fit: :func:`fit_codes_posed` for ``config.screen_iterations`` steps of
    ``config.screen_samples`` observations, scored on ``config.screen_rows`` rows; enough
    to rank candidate (pose, start) pairs, not to finish them. Shapes as there."""
    short = replace(config, iterations=config.screen_iterations, samples_per_iteration=config.screen_samples)
    return fit_codes_posed(model, obs, poses, initial_codes, short, config.screen_rows, on_progress)
