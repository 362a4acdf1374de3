"""Reading and writing the reference DeepSDF experiment layout (facebookresearch/DeepSDF).

An experiment directory holds ``specs.json``, ``ModelParameters/<epoch|latest>.pth``
(``{"epoch", "model_state_dict"}``, keys with a ``module.`` prefix and old-style
weight norm ``weight_g``/``weight_v``) and ``LatentCodes/<epoch|latest>.pth``
(``{"epoch", "latent_codes": {"weight": (n, L)}}`` or an older (n, 1, L) tensor).
Shape names come from the train split file, normalisation from
``<DataSource>/NormalizationParameters`` when present. ``.pth`` files are read
with ``torch.load(weights_only=True)``: a checkpoint never executes code.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch

from .decoder import DecoderConfig
from .errors import ModelFileError
from .model import ShapeModel, build_decoder

_WN_OURS = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def specs_to_config(specs: dict) -> DecoderConfig:
    """Decoder config from a reference ``specs.json`` dict."""
    try:
        arch = specs.get("NetworkArch", "deep_sdf_decoder")
        if arch != "deep_sdf_decoder":
            raise ModelFileError(f"NetworkArch {arch!r} is not supported (only deep_sdf_decoder).")
        net = specs["NetworkSpecs"]
        dims = tuple(int(d) for d in net["dims"])
        return DecoderConfig(
            code_length=int(specs["CodeLength"]),
            hidden_dims=dims,
            skip_layers=tuple(int(i) for i in net.get("latent_in", ())),
            norm_layers=tuple(int(i) for i in net.get("norm_layers", ())),
            weight_norm=bool(net.get("weight_norm", False)),
            dropout_layers=tuple(int(i) for i in (net.get("dropout") or ())),
            dropout_prob=float(net.get("dropout_prob", 0.0)),
            xyz_in_all=bool(net.get("xyz_in_all", False)),
            latent_dropout=bool(net.get("latent_dropout", False)),
            inner_tanh=bool(net.get("use_tanh", False)),
        )
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"specs.json does not describe a DeepSDF decoder: {exc}") from None


def config_to_specs(config: DecoderConfig) -> dict:
    """The ``NetworkSpecs`` + ``CodeLength`` part of a reference ``specs.json``."""
    return {
        "NetworkArch": "deep_sdf_decoder",
        "CodeLength": config.code_length,
        "NetworkSpecs": {
            "dims": list(config.hidden_dims),
            "dropout": list(config.dropout_layers),
            "dropout_prob": config.dropout_prob,
            "norm_layers": list(config.norm_layers),
            "latent_in": list(config.skip_layers),
            "xyz_in_all": config.xyz_in_all,
            "use_tanh": config.inner_tanh,
            "latent_dropout": config.latent_dropout,
            "weight_norm": config.weight_norm,
        },
    }


def reference_to_state(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map reference decoder keys (``module.lin0.weight_g``, ``bn0``) to ours."""
    out = {}
    for key, value in ref.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        layer, _, leaf = k.partition(".")
        if layer.startswith("bn"):
            layer = "ln" + layer[2:]
        leaf = _WN_OURS.get(leaf, leaf)
        out[f"{layer}.{leaf}"] = value
    return out


def state_to_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`reference_to_state`, with the ``module.`` prefix DataParallel adds."""
    back = {v: k for k, v in _WN_OURS.items()}
    out = {}
    for key, value in state.items():
        layer, _, leaf = key.partition(".")
        if layer.startswith("ln"):
            layer = "bn" + layer[2:]
        out[f"module.{layer}.{back.get(leaf, leaf)}"] = value.detach().cpu()
    return out


def _torch_load(path: Path) -> object:
    if not path.is_file():
        raise ModelFileError(f"Missing reference checkpoint file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"{path} holds more than weights and is refused (it would need to run code to load): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable PyTorch checkpoint (truncated?): {exc}") from None


def _codes_from(obj: object, path: Path) -> torch.Tensor:
    codes = obj.get("latent_codes") if isinstance(obj, dict) else obj
    if isinstance(codes, dict):
        codes = codes.get("weight")
    if not isinstance(codes, torch.Tensor):
        raise ModelFileError(f"{path} has no latent codes (expected 'latent_codes' -> 'weight').")
    if codes.ndim == 3 and codes.shape[1] == 1:  # older layout: (n, 1, L)
        codes = codes[:, 0, :]
    if codes.ndim != 2:
        raise ModelFileError(f"{path}: latent codes have shape {tuple(codes.shape)}, expected (n, L).")
    return codes.float()


def _resolve(exp_dir: Path, rel: str | None) -> Path | None:
    if not rel:
        return None
    for base in (exp_dir, Path.cwd()):
        candidate = (base / rel).resolve()
        if candidate.exists():
            return candidate
    return None


def _split_names(split: dict) -> list[tuple[str, str, str]]:
    return [(ds, cls, inst) for ds in split for cls in split[ds] for inst in split[ds][cls]]


def import_experiment(exp_dir: str | os.PathLike, checkpoint: str = "latest") -> ShapeModel:
    """Read a reference DeepSDF experiment directory into a :class:`ShapeModel`.

    checkpoint: ``"latest"`` or an epoch number (``ModelParameters/<checkpoint>.pth``).
    Shape names are ``dataset/class/instance`` from ``TrainSplit`` (resolved against
    the experiment directory, then the working directory); when the split is not
    found they are ``shape_0000``…, and the normalisation is identity where the
    data directory is not found.
    """
    exp = Path(exp_dir)
    specs_path = exp / "specs.json"
    if not specs_path.is_file():
        raise ModelFileError(f"{exp} is not a DeepSDF experiment directory (no specs.json).")
    try:
        specs = json.loads(specs_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{specs_path} is not valid JSON: {exc}") from None
    config = specs_to_config(specs)
    params = _torch_load(exp / "ModelParameters" / f"{checkpoint}.pth")
    state_ref = params.get("model_state_dict") if isinstance(params, dict) else None
    if not isinstance(state_ref, dict):
        raise ModelFileError(f"{exp}/ModelParameters/{checkpoint}.pth has no 'model_state_dict'.")
    decoder = build_decoder(config, reference_to_state(state_ref), source=str(exp))
    codes_path = exp / "LatentCodes" / f"{checkpoint}.pth"
    codes = _codes_from(_torch_load(codes_path), codes_path)
    if codes.shape[1] != config.code_length:
        raise ModelFileError(f"{codes_path}: codes of length {codes.shape[1]}, CodeLength is {config.code_length}.")
    n = len(codes)

    names = [f"shape_{i:04d}" for i in range(n)]
    offsets = np.zeros((n, 3), np.float32)
    scales = np.ones(n, np.float32)
    split_path = _resolve(exp, specs.get("TrainSplit"))
    if split_path is not None:
        try:
            entries = _split_names(json.loads(split_path.read_text()))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{split_path} is not a DeepSDF split file: {exc}") from None
        if len(entries) == n:
            names = ["/".join(e) for e in entries]
            data = _resolve(exp, specs.get("DataSource"))
            if data is not None:
                for i, (ds, cls, inst) in enumerate(entries):
                    npz = data / "NormalizationParameters" / ds / cls / f"{inst}.npz"
                    if npz.is_file():
                        with np.load(npz) as norm:
                            offsets[i] = norm["offset"].reshape(3)
                            scales[i] = float(np.asarray(norm["scale"]).reshape(-1)[0])
    epoch = params.get("epoch") if isinstance(params, dict) else None
    description = specs.get("Description", "")
    if isinstance(description, list):
        description = " ".join(str(d) for d in description)
    info = {
        "class_name": exp.name,
        "description": description,
        "source": "reference DeepSDF experiment",
        "source_path": str(exp.resolve()),
        "checkpoint": checkpoint,
        "epoch": epoch,
    }
    return ShapeModel(decoder=decoder, codes=codes, shape_names=names, offsets=offsets, scales=scales, info=info)


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_experiment(model: ShapeModel, out_dir: str | os.PathLike, epoch: int | None = None) -> Path:
    """Write ``model`` as a reference experiment directory that the reference code reads.

    Writes ``specs.json``, ``ModelParameters/latest.pth``, ``LatentCodes/latest.pth``,
    ``split.json`` (the shape names) and ``data/NormalizationParameters/...``.
    Names without ``dataset/class/`` go under ``Exported/shapes/``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    epoch = int(epoch if epoch is not None else model.info.get("epoch") or 0)
    entries = []
    for name in model.shape_names:
        parts = name.split("/")
        entries.append(tuple(parts) if len(parts) == 3 else ("Exported", "shapes", name.replace("/", "_")))
    split: dict[str, dict[str, list[str]]] = {}
    for ds, cls, inst in entries:
        split.setdefault(ds, {}).setdefault(cls, []).append(inst)
    if _split_names(split) != entries:
        raise ModelFileError("shape names are not grouped by dataset/class; cannot write a split file in order.")
    specs = {
        "Description": model.info.get("description") or f"Exported from deepsdf-blender model {model.identity}",
        "DataSource": "data",
        "TrainSplit": "split.json",
        "TestSplit": "split.json",
        **config_to_specs(model.config),
        "ClampingDistance": 0.1,
        "CodeBound": 1.0,
    }
    (out / "specs.json").write_text(json.dumps(specs, indent=2))
    (out / "split.json").write_text(json.dumps(split, indent=1))
    state = state_to_reference(model.decoder.state_dict())
    atomic_torch_save({"epoch": epoch, "model_state_dict": state}, out / "ModelParameters" / "latest.pth")
    codes = model.codes.detach().cpu().float().clone()
    atomic_torch_save({"epoch": epoch, "latent_codes": {"weight": codes}}, out / "LatentCodes" / "latest.pth")
    for i, (ds, cls, inst) in enumerate(entries):
        npz = out / "data" / "NormalizationParameters" / ds / cls / f"{inst}.npz"
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz, offset=model.offsets[i].astype(np.float64), scale=np.array([model.scales[i]], np.float64))
    return out
