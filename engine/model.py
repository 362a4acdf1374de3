"""A learned shape class (``ShapeModel``) and its self-contained model file.

A model file is a safetensors file (no pickle: loading never executes code)
holding the decoder weights, the training codes ``codes (n_shapes, code_length)``,
each training shape's normalisation, and JSON metadata: the file format and its
version, the decoder config, the shape names and free-form info (class name,
training recipe). ``load_model`` refuses wrong, truncated and foreign files with
a :class:`ModelFileError` naming the problem.

Frames: the decoder works in the *model frame* (normalised unit sphere, y up).
A training shape ``i`` maps its original coordinates ``x`` to the model frame by
``(x + offsets[i]) * scales[i]`` (the reference's NormalizationParameters).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .decoder import Decoder, DecoderConfig
from .device import resolve_device
from .errors import ModelFileError

FORMAT_NAME = "deepsdf-blender-model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".dsdf"
BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass
class ShapeModel:
    """A decoder plus the codes and metadata of the shapes it was trained on.

    Attributes
    ----------
    decoder
        The :class:`Decoder`, in eval mode.
    codes
        (n_shapes, code_length) float32 training codes, on the decoder's device.
    shape_names
        n_shapes names, e.g. ``"ShapeNetV2/03001627/1a2b"``.
    offsets, scales
        (n_shapes, 3) and (n_shapes,) float32: ``model = (original + offset) * scale``.
    info
        JSON-able free-form metadata (``class_name``, ``description``, ``source``…).
    identity
        Short hex digest of the weights and codes; names this model in results.
    """

    decoder: Decoder
    codes: torch.Tensor
    shape_names: list[str]
    offsets: np.ndarray
    scales: np.ndarray
    info: dict = field(default_factory=dict)
    identity: str = ""

    def __post_init__(self) -> None:
        n = len(self.codes)
        if self.codes.ndim != 2 or self.codes.shape[1] != self.config.code_length:
            raise ModelFileError(f"codes have shape {tuple(self.codes.shape)}, expected (n, {self.config.code_length})")
        if len(self.shape_names) != n:
            raise ModelFileError(f"{len(self.shape_names)} shape names for {n} codes")
        self.offsets = np.asarray(self.offsets, dtype=np.float32).reshape(n, 3)
        self.scales = np.asarray(self.scales, dtype=np.float32).reshape(n)
        self.decoder.eval()
        if not self.identity:
            self.identity = _identity(self.decoder.state_dict(), self.codes)

    @property
    def config(self) -> DecoderConfig:
        return self.decoder.config

    @property
    def code_length(self) -> int:
        return self.config.code_length

    @property
    def num_shapes(self) -> int:
        return len(self.codes)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def class_name(self) -> str:
        return str(self.info.get("class_name", "shapes"))

    def to(self, device: str | torch.device) -> ShapeModel:
        """Move decoder and codes to ``device`` (``"auto"`` allowed), in place; returns self."""
        dev = resolve_device(device)
        self.decoder.to(dev)
        self.codes = self.codes.to(dev)
        return self

    def code(self, index: int) -> torch.Tensor:
        """Training code ``index`` as (code_length,); raises ``IndexError`` with the valid range."""
        if not -self.num_shapes <= index < self.num_shapes:
            raise IndexError(f"shape index {index} out of range: the model has {self.num_shapes} shapes")
        return self.codes[index]

    def index_of(self, name: str) -> int:
        """Index of a training shape by full name or by its last path component."""
        for i, n in enumerate(self.shape_names):
            if n == name or n.rsplit("/", 1)[-1] == name:
                return i
        raise KeyError(f"no training shape named {name!r}")

    def summary(self) -> dict:
        """JSON-able description of what the model holds (``info`` command, Check engine)."""
        c = self.config
        return {
            "class_name": self.class_name,
            "identity": self.identity,
            "num_shapes": self.num_shapes,
            "code_length": c.code_length,
            "hidden_dims": list(c.hidden_dims),
            "skip_layers": list(c.skip_layers),
            "weight_norm": c.weight_norm,
            "parameters": self.decoder.num_parameters(),
            "flops_per_point": self.decoder.flops_per_point(),
            "shape_names_head": self.shape_names[:5],
            "info": self.info,
        }


def _identity(state: dict[str, torch.Tensor], codes: torch.Tensor) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    h.update(codes.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(model: ShapeModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically (temp file + rename); returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"decoder.{k}": v.detach().cpu().contiguous() for k, v in model.decoder.state_dict().items()}
    tensors["codes"] = model.codes.detach().cpu().float().contiguous()
    tensors["offsets"] = torch.from_numpy(np.ascontiguousarray(model.offsets, dtype=np.float32))
    tensors["scales"] = torch.from_numpy(np.ascontiguousarray(model.scales, dtype=np.float32))
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "decoder_config": json.dumps(model.config.to_dict()),
        "shape_names": json.dumps(list(model.shape_names)),
        "info": json.dumps(model.info),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ShapeModel:
    """Read a model file written by :func:`save_model`, without executing code.

    Raises :class:`ModelFileError` for a missing, truncated, corrupt, foreign or
    newer-format file, saying which.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"Model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(
            f"{path} is a directory; a reference DeepSDF experiment is opened with open_model() "
            "or imported with `python -m engine import-deepsdf`."
        )
    head = _read_head(path)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise ModelFileError(
            f"{path} is a PyTorch pickle checkpoint, not a model file; if it comes from the "
            "reference DeepSDF, import its experiment directory with `python -m engine import-deepsdf`."
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        size = path.stat().st_size
        raise ModelFileError(
            f"{path} is not a readable model file ({size} bytes; truncated or corrupt?): {exc}"
        ) from None
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path} is a safetensors file but not a DeepSDF model "
            f"(format field is {meta.get('format')!r}, expected {FORMAT_NAME!r})."
        )
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise ModelFileError(
            f"{path} has model format version {meta.get('format_version')!r}; this engine reads "
            f"version {FORMAT_VERSION}" + (" (update the engine)." if newer else ".")
        )
    try:
        config = DecoderConfig.from_dict(json.loads(meta["decoder_config"]))
        names = list(json.loads(meta["shape_names"]))
        info = dict(json.loads(meta.get("info", "{}")))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path} has damaged metadata: {exc}") from None
    state = {k[len("decoder.") :]: v for k, v in tensors.items() if k.startswith("decoder.")}
    for key in ("codes", "offsets", "scales"):
        if key not in tensors:
            raise ModelFileError(f"{path} lacks the {key!r} tensor.")
    decoder = build_decoder(config, state, source=str(path))
    model = ShapeModel(
        decoder=decoder,
        codes=tensors["codes"].float(),
        shape_names=names,
        offsets=tensors["offsets"].numpy(),
        scales=tensors["scales"].numpy(),
        info=info,
    )
    return model.to(device)


def build_decoder(config: DecoderConfig, state: dict[str, torch.Tensor], source: str) -> Decoder:
    """A decoder of ``config`` with weights ``state``; a clear error on any mismatch."""
    decoder = Decoder(config)
    expected = decoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"{source}: weights do not match the decoder config (missing {missing[:4]}, unexpected {unexpected[:4]})."
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ModelFileError(
                f"{source}: weight {key} has shape {tuple(value.shape)}, the config needs {tuple(expected[key].shape)}."
            )
        if not torch.isfinite(value).all():
            raise ModelFileError(f"{source}: weight {key} contains NaN or infinite values.")
    decoder.load_state_dict({k: v.float() for k, v in state.items()})
    decoder.eval()
    return decoder


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def bundled_model_names() -> list[str]:
    """Names of the models shipped inside the engine (``engine/models/<name>.dsdf``)."""
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name[: -len(MODEL_SUFFIX)] for p in BUNDLED_MODELS_DIR.glob(f"*{MODEL_SUFFIX}"))


def open_model(spec: str | os.PathLike, device: str | torch.device = "auto") -> ShapeModel:
    """Open a model by path or by name, on ``device``.

    ``spec`` may be a model file, a reference DeepSDF experiment directory (read
    in place, see :func:`deepsdf_format.import_experiment`) or the name of a
    bundled model (``"chairs"``).
    """
    path = Path(spec)
    if path.is_dir():
        from .deepsdf_format import import_experiment

        return import_experiment(path).to(device)
    if path.exists():
        return load_model(path, device)
    name = str(spec)
    if os.sep in name or "/" in name or path.suffix:
        raise ModelFileError(f"Model file not found: {name}")
    if name in bundled_model_names():
        return load_model(BUNDLED_MODELS_DIR / f"{name}{MODEL_SUFFIX}", device)
    known = bundled_model_names()
    hint = f" Bundled models: {', '.join(known)}." if known else ""
    raise ModelFileError(f"No model file, experiment directory or bundled model named {name!r}.{hint}")
