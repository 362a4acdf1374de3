"""Compute-device selection: ``"auto"`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    Parameters
    ----------
    device
        ``"auto"`` (or ``None``): CUDA if available, else Apple MPS, else CPU.
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``: that device, or a
        :class:`DeviceError` saying it is not available here.
    """
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"Device {name!r} was requested but this PyTorch ({torch.__version__}) "
                "sees no CUDA GPU; use --device cpu or auto."
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"Device {name!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
        return dev
    if name in ("mps", "apple"):
        if not _mps_available():
            raise DeviceError("Device 'mps' (Apple GPU) was requested but is not available here.")
        return torch.device("mps")
    raise DeviceError(f"Unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}.")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe_device(device: torch.device) -> str:
    """A short human-readable name for ``device`` (e.g. ``"cuda:0 (NVIDIA H100)"``)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


PRECISIONS = ("auto", "fp32", "tf32", "bf16")


def resolve_precision(precision: str, device: torch.device, auto: str = "fp32") -> str:
    """The arithmetic a call will really use on ``device``.

    ``fp32`` everywhere; ``tf32`` (float32 matrix products on tensor cores) and
    ``bf16`` (autocast) only on CUDA: on the CPU, bf16 measured slower than fp32
    here and TF32 does not exist, so both fall back to ``fp32``. ``auto`` is
    ``auto`` on CUDA (each caller's measured choice) and ``fp32`` elsewhere.
    """
    if precision not in PRECISIONS:
        raise DeviceError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if device.type != "cuda":
        return "fp32"
    return auto if precision == "auto" else precision


@contextmanager
def compute_precision(device: torch.device, precision: str) -> Iterator[None]:
    """Run the block's matrix products in ``precision`` (``fp32``, ``tf32`` or ``bf16``,
    as returned by :func:`resolve_precision`); restores the process's settings after."""
    if device.type != "cuda" or precision == "fp32":
        yield
        return
    if precision == "tf32":
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
        return
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        yield
