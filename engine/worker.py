"""The engine worker: ``python -m engine.worker`` serves protocol requests (see ``protocol.py``).

Runs in its own process so a crash or out-of-memory never takes the front end
(Blender and the user's unsaved work) down. Keeps loaded models between jobs.

Operations (``params``; arrays are ``{"npy": path}`` references, meshes are
returned in the **model frame** with ``offset``/``scale`` where they belong to an input)::

    check        {model, device}                     -> {python, torch, device, model: summary}
    complete     {model, device, scans: [{vertices, faces|null, sensor?}], resolution, preset,
                  iterations?, placement: estimate|estimate_any|reference|known, normals}
                                                      -> {shapes: [{mesh, code, model_to_input (4x4), loss}]}
    generate     {model, device, count, seed, temperature, resolution, normals}
                                                      -> {shapes: [{mesh|null, code, error?}]}
    interpolate  {model, device, codes: [a, b] | indices: [i, j], steps, mode, resolution, normals}
                                                      -> {shapes: [...]}
    remesh       {model, device, code, resolution, normals} -> {shapes: [{mesh, code}]}
    sleep        {seconds}                            (tests: a cancellable wait)

``mesh`` is ``{vertices (n,3) f32, faces (m,3) i32, normals (n,3) f32 | null}``.
"""

from __future__ import annotations

import os
import platform
import queue
import sys
import threading
import time
import traceback
from typing import Any

from .protocol import PROTOCOL_VERSION, decode, encode, load_array, save_array


class Worker:
    def __init__(self, out) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.requests: queue.Queue = queue.Queue()
        self.cancelled: set[int] = set()
        self.models: dict[tuple[str, str], Any] = {}

    # -- io -----------------------------------------------------------------
    def emit(self, message: dict) -> None:
        with self.lock:
            self.out.write(encode(message))
            self.out.flush()

    def read_stdin(self) -> None:
        for line in sys.stdin.buffer:
            if not line.strip():
                continue
            try:
                msg = decode(line)
            except ValueError as exc:
                print(f"worker: bad request line: {exc}", file=sys.stderr)
                continue
            if msg.get("op") == "cancel":
                self.cancelled.add(int(msg.get("id", -1)))
            else:
                self.requests.put(msg)
        self.requests.put({"op": "shutdown"})

    def progress(self, job_id: int):
        last = [0.0]

        def callback(done: int, total: int, message: str) -> bool:
            if job_id in self.cancelled:
                return False
            now = time.monotonic()
            if now - last[0] > 0.1 or done >= total:
                last[0] = now
                self.emit(
                    {"id": job_id, "event": "progress", "done": int(done), "total": int(total), "message": message}
                )
            return True

        return callback

    # -- main loop ------------------------------------------------------------
    def serve(self) -> None:
        threading.Thread(target=self.read_stdin, daemon=True).start()
        self.emit({"event": "ready", "protocol": PROTOCOL_VERSION, "pid": os.getpid()})
        while True:
            req = self.requests.get()
            op = req.get("op")
            if op == "shutdown":
                return
            job_id = int(req.get("id", 0))
            try:
                handler = getattr(self, f"op_{op}", None)
                if handler is None:
                    raise _error("InputError", f"unknown operation {op!r}")
                data = handler(req.get("params", {}), req.get("workdir"), self.progress(job_id))
                self.emit({"id": job_id, "event": "result", "data": data})
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error event
                kind, message = _describe(exc)
                if kind == "InternalError":
                    traceback.print_exc(file=sys.stderr)
                self.emit({"id": job_id, "event": "error", "type": kind, "message": message})
            finally:
                self.cancelled.discard(job_id)

    # -- helpers --------------------------------------------------------------
    def model(self, params: dict):
        from .model import open_model

        spec = str(params.get("model") or "")
        if not spec:
            raise _error("ModelFileError", "No model is set: choose one in the add-on preferences.")
        key = (spec, str(params.get("device", "auto")))
        if key not in self.models:
            self.models.clear()  # one model at a time keeps memory bounded
            self.models[key] = open_model(spec, key[1])
        return self.models[key]

    def mesh_ref(self, workdir: str, name: str, mesh) -> dict:
        return {
            "vertices": save_array(workdir, f"{name}_v", mesh.vertices),
            "faces": save_array(workdir, f"{name}_f", mesh.faces),
            "normals": save_array(workdir, f"{name}_n", mesh.normals) if mesh.normals is not None else None,
        }

    def mesh_codes(self, params, workdir, codes, progress) -> dict:
        from .api import extract_mesh
        from .errors import NoSurfaceError
        from .meshing import MeshConfig
        from .progress import scaled

        model = self.model(params)
        config = MeshConfig(resolution=int(params.get("resolution", 128)), normals=bool(params.get("normals", False)))
        shapes = []
        for k, code in enumerate(codes):
            entry: dict[str, Any] = {"code": [float(x) for x in code]}
            try:
                mesh = extract_mesh(model, code, config, None, scaled(progress, k * 100, 100, len(codes) * 100))
                entry["mesh"] = self.mesh_ref(workdir, f"shape{k}", mesh)
            except NoSurfaceError as exc:
                entry["mesh"] = None
                entry["error"] = str(exc)
            shapes.append(entry)
        return {"shapes": shapes, "model_identity": model.identity}

    # -- operations -------------------------------------------------------------
    def op_check(self, params, workdir, progress) -> dict:
        try:
            import torch
        except ImportError:
            raise _error(
                "EngineSetupError",
                f"The engine Python ({sys.executable}) has no PyTorch; install torch there or choose another Python.",
            ) from None
        from .device import describe_device, resolve_device

        out = {
            "python": platform.python_version(),
            "executable": sys.executable,
            "torch": torch.__version__,
            "device": describe_device(resolve_device(params.get("device", "auto"))),
        }
        if params.get("model"):
            out["model"] = self.model(params).summary()
        return out

    def op_complete(self, params, workdir, progress) -> dict:
        import numpy as np

        from .api import reconstruct
        from .fitting import fit_preset
        from .meshing import MeshConfig
        from .placement import PlacementConfig
        from .progress import scaled

        model = self.model(params)
        overrides = {"iterations": int(params["iterations"])} if params.get("iterations") else {}
        fit = fit_preset(str(params.get("preset", "auto")), model.device, **overrides)
        mode = str(params.get("placement", "estimate"))
        if mode not in ("estimate", "estimate_any", "reference", "known"):
            raise _error("InputError", f"unknown placement {mode!r} (estimate, estimate_any, reference or known)")
        placement = PlacementConfig(full_rotation=mode == "estimate_any", **overrides)
        mesh_cfg = MeshConfig(resolution=int(params.get("resolution", 128)), normals=bool(params.get("normals", False)))
        scans = params.get("scans") or []
        alternatives = int(params.get("alternatives", 0))
        shapes = []
        for k, scan in enumerate(scans):
            rec = reconstruct(
                model,
                load_array(scan["vertices"]),
                load_array(scan.get("faces")),
                known_frame=mode == "known",
                fit=fit,
                mesh=mesh_cfg,
                sensor=None if scan.get("sensor") is None else np.asarray(scan["sensor"], np.float32),
                placement=placement if mode.startswith("estimate") else None,
                on_progress=scaled(progress, k * 100, 100, len(scans) * 100),
                alternatives=alternatives,
            )
            shape = self.placed_shape(workdir, f"shape{k}", rec)
            shape["alternatives"] = [
                self.placed_shape(workdir, f"shape{k}_alt{j}", alt) for j, alt in enumerate(rec.alternatives)
            ]
            shapes.append(shape)
        return {"shapes": shapes, "model_identity": model.identity}

    def placed_shape(self, workdir: str, name: str, rec) -> dict:
        """A reconstruction for the front end: its mesh back in the model frame (the front
        end composes its own frame maps), confidence, code, placement and loss."""
        import numpy as np

        local = rec.mesh.apply_matrix(np.linalg.inv(rec.model_to_input))
        mesh_ref = self.mesh_ref(workdir, name, local)
        mesh_ref["confidence"] = save_array(workdir, f"{name}_c", rec.mesh.vertex_values["confidence"])
        return {
            "mesh": mesh_ref,
            "code": [float(x) for x in rec.code],
            "model_to_input": rec.model_to_input.tolist(),
            "loss": float(rec.loss),
        }

    def op_generate(self, params, workdir, progress) -> dict:
        from .api import sample_codes

        model = self.model(params)
        codes = sample_codes(
            model, int(params.get("count", 1)), int(params.get("seed", 0)), float(params.get("temperature", 1.0))
        )
        return self.mesh_codes(params, workdir, codes, progress)

    def op_interpolate(self, params, workdir, progress) -> dict:
        import numpy as np

        from .latent import interpolate_codes

        model = self.model(params)
        if params.get("indices"):
            i, j = (int(x) for x in params["indices"])
            a, b = (model.code(x).detach().cpu().numpy() for x in (i, j))
        else:
            a, b = (np.asarray(c, np.float32) for c in params["codes"])
        codes = interpolate_codes(a, b, int(params.get("steps", 5)), str(params.get("mode", "linear")))
        return self.mesh_codes(params, workdir, codes, progress)

    def op_remesh(self, params, workdir, progress) -> dict:
        import numpy as np

        return self.mesh_codes(params, workdir, [np.asarray(params["code"], np.float32)], progress)

    def op_sleep(self, params, workdir, progress) -> dict:
        from .progress import report

        steps = max(1, int(float(params.get("seconds", 1.0)) / 0.05))
        for k in range(steps):
            time.sleep(0.05)
            report(progress, k + 1, steps, "sleeping")
        return {"slept": steps * 0.05}


class _ProtocolError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _error(kind: str, message: str) -> _ProtocolError:
    return _ProtocolError(kind, message)


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, _ProtocolError):
        return exc.kind, str(exc)
    from .errors import EngineError

    if isinstance(exc, EngineError):
        return type(exc).__name__, str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "OutOfMemory", "The engine ran out of memory; lower the resolution or use the CPU."
    if isinstance(exc, ImportError):
        return "EngineSetupError", f"The engine Python ({sys.executable}) lacks a package: {exc}"
    if isinstance(exc, (KeyError, ValueError, TypeError, IndexError)):
        return "InputError", f"Bad request: {exc}"
    return "InternalError", f"{type(exc).__name__}: {exc}"


def main() -> None:
    # Keep the protocol stream clean: anything a library prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    Worker(out).serve()


if __name__ == "__main__":
    main()
