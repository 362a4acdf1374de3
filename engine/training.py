"""Auto-decoder training: one decoder and one code per shape, optimised jointly.

By default this is the reference DeepSDF recipe (``TRAIN_PRESETS["reference"]``):
clamped L1 loss (delta 0.1) summed over rows and divided by their number, plus
``lambda * min(1, epoch / 100) * mean ||z||`` over the rows' codes; one Adam with
two parameter groups (decoder 5e-4, codes 1e-3, both x0.5 every 500 epochs);
codes initialised N(0, (1/sqrt(L))^2) and kept within norm ``code_bound``; each
epoch visits every shape once, in batches of ``scenes_per_batch`` shapes x
``samples_per_scene`` rows (half from sdf > 0, half from sdf <= 0, drawn with
replacement).

Determinism: the shape order, each shape's rows and the dropout masks are drawn
from generators seeded by ``(seed, epoch)``, so a run resumed from a snapshot
ends with the same weights as one that was never stopped, and a run over K
processes (``torchrun``, DistributedDataParallel) sees the same global batches
as a single process: each rank takes its share of every batch's shapes, gradients
are averaged, and every rank applies the same update to all codes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .decoder import Decoder, DecoderConfig, decoder_preset
from .device import resolve_device
from .errors import InputError, ModelFileError
from .model import ShapeModel, save_model
from .progress import ProgressCallback, report

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "deepsdf-blender-training-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. Defaults are the reference's (``specs.json`` of its examples)."""

    decoder: str = "paper"
    """Decoder preset name (``paper``, ``small``) or a JSON decoder config."""
    epochs: int = 2001
    """Passes over all shapes (reference NumEpochs 2001)."""
    scenes_per_batch: int = 64
    """Shapes per optimiser step (reference ScenesPerBatch 64)."""
    samples_per_scene: int = 16384
    """SDF rows per shape per step (reference SamplesPerScene 16384)."""
    lr_decoder: float = 5e-4
    """Decoder learning rate (reference 5e-4)."""
    lr_codes: float = 1e-3
    """Code learning rate (reference 1e-3)."""
    lr_interval: int = 500
    """Epochs between learning-rate decays (reference Step schedule, 500)."""
    lr_factor: float = 0.5
    """Decay factor (reference 0.5)."""
    clamp: float = 0.1
    """Clamping distance delta (reference ClampingDistance 0.1)."""
    code_regularization: bool = True
    """Code prior on (reference CodeRegularization true)."""
    code_reg_lambda: float = 1e-4
    """Prior weight (reference CodeRegularizationLambda 1e-4), ramped in over 100 epochs."""
    code_bound: float = 1.0
    """Maximum code norm (reference CodeBound 1.0); 0 disables."""
    code_init_std: float = 1.0
    """Codes start N(0, (code_init_std / sqrt(L))^2) (reference CodeInitStdDev 1.0)."""
    grad_clip: float = 0.0
    """Clip the decoder's gradient norm to this (reference GradientClipNorm, off)."""
    seed: int = 0
    """Seeds initialisation, shape order, rows and dropout."""
    snapshot_every: int = 100
    """Epochs between resumable snapshots (and at the end)."""
    log_every: int = 10
    """Epochs between TensorBoard scalars."""
    image_every: int = 0
    """Epochs between TensorBoard pictures of a few meshed training shapes (0: never)."""
    amp: bool = False
    """bf16 autocast on CUDA (ignored on CPU, which trains in fp32)."""
    compile: bool = False
    """``torch.compile`` the decoder and codes on CUDA (ignored on CPU): fused
    element-wise work, at the cost of a compilation on the first steps."""

    def decoder_config(self) -> DecoderConfig:
        text = self.decoder.strip()
        if text.startswith("{"):
            return DecoderConfig.from_dict(json.loads(text))
        return decoder_preset(text)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "reference": TrainConfig(),
    # The bundled models' recipe scale: smaller decoder, fewer samples per step.
    "small": TrainConfig(decoder="small", epochs=1000, scenes_per_batch=32, samples_per_scene=8192, lr_interval=250),
}


def train_preset(name: str, **overrides: object) -> TrainConfig:
    try:
        base = TRAIN_PRESETS[name]
    except KeyError:
        raise InputError(f"unknown training preset {name!r}; choose {sorted(TRAIN_PRESETS)}") from None
    return dataclasses.replace(base, **overrides) if overrides else base


# -- data ---------------------------------------------------------------------


@dataclass
class ShapeSamples:
    """SDF samples of the training shapes, held in memory.

    pos[i], neg[i]: (n_i, 4) float32 rows of shape i (sdf > 0 and sdf <= 0), model frame.
    """

    names: list[str]
    pos: list[torch.Tensor]
    neg: list[torch.Tensor]
    offsets: np.ndarray
    scales: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def read_split(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Entries ``(dataset, class, instance)`` of a reference split file, in order."""
    try:
        split = json.loads(Path(path).read_text())
        return [(ds, cls, inst) for ds in split for cls in split[ds] for inst in split[ds][cls]]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path} is not a DeepSDF split file: {exc}") from None


def load_samples(data_dir: str | os.PathLike, split: str | os.PathLike = "train") -> ShapeSamples:
    """Read the samples named by a split (``train``/``test`` under ``splits/``, or a split file path)."""
    data = Path(data_dir)
    split_path = Path(split)
    if not split_path.is_file():
        split_path = data / "splits" / f"{split}.json"
    if not split_path.is_file():
        raise InputError(f"no split {split!r}: neither a file nor {data / 'splits' / f'{split}.json'}")
    entries = read_split(split_path)
    if not entries:
        raise InputError(f"split {split_path} lists no shapes")
    names, pos, neg = [], [], []
    offsets = np.zeros((len(entries), 3), np.float32)
    scales = np.ones(len(entries), np.float32)
    for i, (ds, cls, inst) in enumerate(entries):
        path = data / "SdfSamples" / ds / cls / f"{inst}.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                p, n = npz["pos"], npz["neg"]
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"cannot read samples of {ds}/{cls}/{inst}: {exc}") from None
        if len(p) == 0 or len(n) == 0:
            raise InputError(f"{path.name} needs samples both inside and outside the shape")
        names.append(f"{ds}/{cls}/{inst}")
        pos.append(torch.from_numpy(np.ascontiguousarray(p, np.float32)))
        neg.append(torch.from_numpy(np.ascontiguousarray(n, np.float32)))
        norm = data / "NormalizationParameters" / ds / cls / f"{inst}.npz"
        if norm.is_file():
            with np.load(norm) as npz:
                offsets[i] = npz["offset"].reshape(3)
                scales[i] = float(np.asarray(npz["scale"]).reshape(-1)[0])
    return ShapeSamples(names, pos, neg, offsets, scales)


class _RowSampler:
    """Every shape's rows in two flat tensors, where the batches are drawn.

    On CUDA the rows live on the GPU when they take under half its free memory
    (else in pinned host memory), so a batch is drawn and gathered without the
    host. ``draw`` returns (b, count, 4) rows on ``device``: half from sdf > 0 and
    half from sdf <= 0 of each shape, with replacement.
    """

    def __init__(self, samples: ShapeSamples, device: torch.device) -> None:
        nbytes = sum(t.numel() * 4 for t in (*samples.pos, *samples.neg))
        store = torch.device("cpu")
        if device.type == "cuda" and nbytes < torch.cuda.mem_get_info(device)[0] // 2:
            store = device
        self.device, self.store = device, store
        self.pin = device.type == "cuda" and store.type == "cpu"
        self.parts = []
        for group in (samples.pos, samples.neg):
            counts = torch.tensor([len(t) for t in group], dtype=torch.int64)
            starts = torch.cumsum(counts, 0) - counts
            # gathered batches are new tensors, so only they are pinned (in draw), not the store
            self.parts.append((torch.cat(list(group)).to(store), starts.to(store), counts.to(store)))

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.store).manual_seed(seed)

    def draw(self, shapes: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
        shapes = shapes.to(self.store)
        out = []
        for (rows, starts, counts), k in zip(self.parts, (count // 2, count - count // 2), strict=True):
            u = torch.rand((len(shapes), k), generator=gen, device=self.store)
            n = counts[shapes, None]
            pick = torch.minimum((u * n).long(), n - 1) + starts[shapes, None]
            out.append(rows[pick])
        batch = torch.cat(out, dim=1)
        if self.store != self.device:
            batch = (batch.pin_memory() if self.pin else batch).to(self.device, non_blocking=True)
        return batch


# -- model ----------------------------------------------------------------------


class AutoDecoder(nn.Module):
    """Decoder plus the training codes (n_shapes, L) as one module (what DDP wraps)."""

    def __init__(self, decoder: Decoder, n_shapes: int, init_std: float, gen: torch.Generator) -> None:
        super().__init__()
        self.decoder = decoder
        L = decoder.config.code_length
        self.codes = nn.Parameter(torch.randn(n_shapes, L, generator=gen) * (init_std / math.sqrt(max(L, 1))))

    def forward(self, indices: torch.Tensor, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """indices: (b,) shapes; xyz: (b, n, 3). Returns predictions (b, n) and the codes (b, L)."""
        codes = self.codes[indices]
        if self.decoder.config.latent_dropout:
            rows = torch.cat([codes[:, None].expand(-1, xyz.shape[1], -1), xyz], dim=-1)
            return self.decoder(rows).squeeze(-1), codes
        return self.decoder.forward_codes(codes, xyz), codes


@dataclass
class TrainState:
    """Where a run is: the epoch to run next and the per-epoch log."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)


def _lr(base: float, config: TrainConfig, epoch: int) -> float:
    return base * config.lr_factor ** (epoch // config.lr_interval)


# -- checkpoints ----------------------------------------------------------------


def save_checkpoint(
    path: Path,
    module: AutoDecoder,
    opt: torch.optim.Optimizer,
    state: TrainState,
    config: TrainConfig,
    samples: ShapeSamples,
) -> None:
    """Write a resumable snapshot atomically (plain tensors and JSON: loads with weights_only)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": json.dumps(config.to_dict()),
        "decoder_config": json.dumps(module.decoder.config.to_dict()),
        "names": json.dumps(samples.names),
        "epoch": state.epoch,
        "history": json.dumps(state.history),
        "model": module.state_dict(),
        "optimizer": opt.state_dict(),
    }
    from .deepsdf_format import atomic_torch_save

    atomic_torch_save(payload, path)


def load_checkpoint(path: Path) -> dict:
    """Read a snapshot written by :func:`save_checkpoint` (never executes code)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise ModelFileError(f"cannot resume from {path}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not a training snapshot of this engine")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"{path} has snapshot version {payload.get('version')}, expected {CHECKPOINT_VERSION}")
    return payload


def snapshot_path(model_path: str | os.PathLike) -> Path:
    """Where a run writing ``model_path`` keeps its resumable snapshot."""
    p = Path(model_path)
    return p.with_name(p.name + ".snapshot.pt")


# -- the loop -------------------------------------------------------------------


@dataclass
class TrainResult:
    model: ShapeModel
    history: list[dict]
    seconds: float
    samples_per_second: float


def train(
    samples: ShapeSamples,
    config: TrainConfig = TrainConfig(),
    out_path: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    on_epoch: Callable[[int, dict, AutoDecoder], None] | None = None,
    stop_after_epoch: int | None = None,
    info: dict | None = None,
) -> TrainResult:
    """Train an auto-decoder on ``samples``.

    out_path: model file to write at the end (and ``<out_path>.snapshot.pt``
    every ``snapshot_every`` epochs). resume: continue from that snapshot.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is joined here and
    only rank 0 writes files. on_epoch(epoch, scalars, module): called on rank 0
    after each epoch (TensorBoard hooks). stop_after_epoch: end early after that
    epoch, as if killed right after its snapshot (tests).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    joined_here = distributed and not dist.is_initialized()
    if joined_here:
        backend = "nccl" if torch.cuda.is_available() and str(device) != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if distributed else 0
    if distributed and torch.cuda.is_available() and str(device) in ("auto", "cuda"):
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = resolve_device(device)

    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        decoder = Decoder(config.decoder_config())
    module = AutoDecoder(decoder, len(samples), config.code_init_std, gen).to(dev)
    opt = torch.optim.Adam(
        [
            {"params": module.decoder.parameters(), "lr": config.lr_decoder},
            {"params": [module.codes], "lr": config.lr_codes},
        ]
    )
    state = TrainState()
    snap = snapshot_path(out_path) if out_path is not None else None
    if resume:
        if snap is None or not snap.is_file():
            raise InputError(f"nothing to resume: {snap} does not exist")
        payload = load_checkpoint(snap)
        if json.loads(payload["names"]) != samples.names:
            raise InputError("the snapshot was trained on other shapes than this data directory's split")
        saved = TrainConfig(**json.loads(payload["config"]))
        if dataclasses.replace(saved, epochs=config.epochs) != dataclasses.replace(config, epochs=config.epochs):
            log.warning("resuming with a different config than the snapshot's; using the new one")
        module.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        state = TrainState(epoch=int(payload["epoch"]), history=json.loads(payload["history"]))
    wrapped: nn.Module = module
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)
    if config.compile and dev.type == "cuda":
        wrapped = torch.compile(wrapped)

    n = len(samples)
    rows_of = _RowSampler(samples, dev)
    batches_per_epoch = math.ceil(n / config.scenes_per_batch)
    use_amp = config.amp and dev.type == "cuda"
    t0 = time.perf_counter()
    rows_done = 0
    epoch_stop = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch + 1)
    module.train()
    for epoch in range(state.epoch, epoch_stop):
        for group, base in zip(opt.param_groups, (config.lr_decoder, config.lr_codes), strict=True):
            group["lr"] = _lr(base, config, epoch)
        egen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        torch.manual_seed(config.seed * 7_919 + epoch * 104_729 + rank)
        order = torch.randperm(n, generator=egen)
        rgen = rows_of.generator(config.seed * 1_000_003 + epoch)
        total_loss = torch.zeros((), device=dev)
        total_rows = 0
        for b in range(batches_per_epoch):
            batch = order[b * config.scenes_per_batch : (b + 1) * config.scenes_per_batch]
            # every rank draws every scene's rows (same stream), then keeps its share
            rows = rows_of.draw(batch, config.samples_per_scene, rgen)
            mine = slice(rank, None, world) if distributed else slice(None)
            idx, rows_mine = batch[mine], rows[mine]
            # the global batch has len(batch) scenes; this rank's mean is scaled so DDP's average is global
            share = len(idx) / len(batch) * world
            if len(idx) == 0:  # a short last batch: take part in the all-reduce with zero weight
                idx, rows_mine, share = batch[:1], rows[:1], 0.0
            idx, rows = idx.to(dev), rows_mine
            xyz, sdf = rows[..., :3], rows[..., 3].clamp(-config.clamp, config.clamp)
            with torch.no_grad():
                if config.code_bound > 0:
                    norms = module.codes.norm(dim=1, keepdim=True)
                    module.codes.mul_(torch.where(norms > config.code_bound, config.code_bound / norms, 1.0))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                pred, codes = wrapped(idx, xyz)
            pred = pred.float().clamp(-config.clamp, config.clamp)
            data_loss = (pred - sdf).abs().mean()
            loss = data_loss
            if config.code_regularization:
                ramp = min(1.0, epoch / 100)
                loss = loss + config.code_reg_lambda * ramp * codes.norm(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            (loss * share).backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(module.decoder.parameters(), config.grad_clip)
            opt.step()
            if share > 0:
                total_loss += data_loss.detach() * len(idx)
                total_rows += len(idx)
                rows_done += len(idx) * config.samples_per_scene
        scalars = {
            "epoch": epoch,
            "loss": float(total_loss) / max(total_rows, 1),
            "lr_decoder": opt.param_groups[0]["lr"],
            "lr_codes": opt.param_groups[1]["lr"],
            "code_magnitude": float(module.codes.detach().norm(dim=1).mean()),
        }
        state.history.append(scalars)
        state.epoch = epoch + 1
        if rank == 0 and on_epoch is not None:
            on_epoch(epoch, scalars, module)
        if rank == 0 and snap is not None and (state.epoch % config.snapshot_every == 0 or state.epoch == epoch_stop):
            save_checkpoint(snap, module, opt, state, config, samples)
        report(on_progress, state.epoch, config.epochs, f"training (loss {scalars['loss']:.4f})")
    seconds = time.perf_counter() - t0
    module.eval()
    model = ShapeModel(
        decoder=module.decoder.cpu(),
        codes=module.codes.detach().cpu().clone(),
        shape_names=list(samples.names),
        offsets=samples.offsets,
        scales=samples.scales,
        info={
            **(info or {}),
            "source": "trained with python -m engine train",
            "train_config": config.to_dict(),
            "epochs_done": state.epoch,
            "final_loss": state.history[-1]["loss"] if state.history else None,
        },
    )
    if rank == 0 and out_path is not None and state.epoch >= config.epochs:
        save_model(model, out_path)
    if distributed:
        dist.barrier()
    if joined_here:
        # leave the group before the interpreter exits: gloo's threads torn down at exit
        # instead abort a rank now and then ("terminate called without an active exception")
        dist.destroy_process_group()
    return TrainResult(model, state.history, seconds, rows_done * world / max(seconds, 1e-9))


class TensorBoardLogger:
    """An ``on_epoch`` hook writing scalars and, every ``image_every`` epochs, a picture
    of the first few training shapes meshed at low resolution."""

    def __init__(self, log_dir: str | os.PathLike, config: TrainConfig, shapes: int = 4, resolution: int = 40) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InputError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(log_dir))
        self.config = config
        self.shapes = shapes
        self.resolution = resolution

    def __call__(self, epoch: int, scalars: dict, module: AutoDecoder) -> None:
        if epoch % max(1, self.config.log_every) == 0 or epoch == self.config.epochs - 1:
            for key in ("loss", "lr_decoder", "lr_codes", "code_magnitude"):
                self.writer.add_scalar(f"train/{key}", scalars[key], epoch)
        every = self.config.image_every
        if every and (epoch + 1) % every == 0:
            self.writer.add_image(
                "train/shapes", preview_image(module, self.shapes, self.resolution), epoch, dataformats="HWC"
            )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def preview_image(module: AutoDecoder, shapes: int = 4, resolution: int = 40, size: int = 160) -> np.ndarray:
    """The first ``shapes`` training codes meshed and rendered side by side: (h, w, 3) uint8."""
    from .errors import NoSurfaceError
    from .meshing import MeshConfig, mesh_sdf
    from .render import image_grid, render_mesh

    dec = module.decoder
    was_training = dec.training
    dec.eval()
    images = []
    try:
        for i in range(min(shapes, len(module.codes))):
            code = module.codes[i : i + 1].detach()

            def sdf_fn(xyz: torch.Tensor, code: torch.Tensor = code) -> torch.Tensor:
                with torch.no_grad():
                    return dec.forward_codes(code, xyz.unsqueeze(0))[0]

            try:
                mesh = mesh_sdf(sdf_fn, MeshConfig(resolution=resolution, method="dense"), code.device)
                images.append(render_mesh(mesh.vertices, mesh.faces, size))
            except NoSurfaceError:
                images.append(np.full((size, size, 3), 235, np.uint8))
    finally:
        dec.train(was_training)
    return image_grid(images, len(images))
