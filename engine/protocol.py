"""The worker protocol: how a front end (the Blender add-on) drives the engine in another process.

Pure Python plus numpy: importable inside Blender without PyTorch.

Transport: the worker's stdin and stdout, one JSON object per line (UTF-8).
Arrays never travel as JSON: the sender writes ``.npy`` files into the job's
work directory and sends ``{"npy": "<path>"}`` references. The worker's stderr
is a free-form log.

Requests (front end -> worker)::

    {"id": 7, "op": "generate", "params": {...}, "workdir": "/tmp/..."}
    {"op": "cancel", "id": 7}        # cooperative: the job stops at its next progress point
    {"op": "shutdown"}

Events (worker -> front end)::

    {"event": "ready", "protocol": 1, "pid": 1234}
    {"id": 7, "event": "progress", "done": 40, "total": 100, "message": "meshing"}
    {"id": 7, "event": "result", "data": {...}}
    {"id": 7, "event": "error", "type": "ModelFileError", "message": "one sentence"}

Operations and their parameters are documented in ``worker.py``. Jobs run one at
a time in request order.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1


def _finite(value: Any) -> Any:
    """NaN and infinities (which JSON cannot carry) become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode(message: dict[str, Any]) -> bytes:
    """One protocol line. Non-finite floats are sent as null."""
    return (json.dumps(_finite(message), separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


def decode(line: bytes | str) -> dict[str, Any]:
    """Parse one protocol line; raises ValueError on anything but a JSON object."""
    text = line.decode("utf-8") if isinstance(line, bytes) else line
    message = json.loads(text)
    if not isinstance(message, dict):
        raise ValueError("protocol message is not a JSON object")
    return message


def save_array(workdir: str | os.PathLike, name: str, array: Any) -> dict[str, str]:
    """Write ``array`` as ``<workdir>/<name>.npy`` and return its reference."""
    import numpy as np

    path = Path(workdir) / f"{name}.npy"
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    return {"npy": str(path)}


def load_array(ref: dict[str, str] | None) -> Any:
    """The array behind a reference (None stays None). Never unpickles."""
    import numpy as np

    if ref is None:
        return None
    return np.load(ref["npy"], allow_pickle=False)
