"""Running engine jobs from Blender: one worker process per session, one job at a time.

Interactive use is asynchronous: an operator's ``invoke`` submits the job and a
modal timer polls the worker, updating the progress bar; results are applied on
the main thread when they arrive. In background mode (``blender -b``) and from
``execute`` the same job runs to completion synchronously.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import bpy

from .engine.worker_client import Job, WorkerClient, WorkerError
from .preferences import get_prefs, python_executable

_client: WorkerClient | None = None
_client_python: str | None = None
_active: Job | None = None


def _extra_paths(python: str) -> list[str]:
    # With Blender's own Python the worker must see what Blender installed for this
    # extension (its wheels) and Blender's bundled packages; another Python brings its own.
    if python != sys.executable:
        return []
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]


def _log_path() -> Path:
    try:
        folder = Path(bpy.utils.extension_path_user(__package__, path="logs", create=True))
    except (ValueError, RuntimeError, AttributeError):  # not installed as an extension
        folder = Path(tempfile.gettempdir())
    return folder / "engine-worker.log"


def client(context=None) -> WorkerClient:
    """The session's worker client (restarted when the engine Python preference changes)."""
    global _client, _client_python
    python = python_executable(get_prefs(context))
    if _client is not None and _client_python != python:
        shutdown()
    if _client is None:
        package_dir = Path(__file__).resolve().parent
        _client = WorkerClient(python, package_dir, _extra_paths(python), log_path=_log_path())
        _client_python = python
    return _client


def job_state() -> DeepSDFJobState:
    """The window manager's job state (registered by the add-on at run time)."""
    return getattr(bpy.context.window_manager, "deepsdf_job")  # noqa: B009 - added by register()


def busy() -> bool:
    return _active is not None and not _active.finished


def start(op: str, params: dict, workdir: str | None, context=None) -> Job:
    """Submit a job; raises WorkerError when another job is running or the engine cannot start."""
    global _active
    if busy():
        raise WorkerError("Busy", "A DeepSDF job is already running; wait for it or cancel it.")
    _active = client(context).submit(op, params, workdir)
    state = job_state()
    state.running, state.progress, state.message, state.cancel_requested = True, 0.0, op, False
    return _active


def run_sync(
    op: str, params: dict, workdir: str | None, context=None, timeout: float | None = None
) -> tuple[Job, dict]:
    job = start(op, params, workdir, context)
    try:
        return job, client(context).wait(job, timeout=timeout, on_progress=_show_progress)
    finally:
        finish()


def poll() -> Job | None:
    """Read the worker's events; returns the active job with its progress updated."""
    if _client is None or _active is None:
        return _active
    _client.poll()
    _show_progress(_active)
    return _active


def _show_progress(job: Job) -> None:
    state = job_state()
    state.progress = job.fraction
    state.message = job.message or job.op


def cancel() -> None:
    if _client is not None and _active is not None:
        _client.cancel(_active)


def finish() -> None:
    global _active
    state = job_state()
    state.running, state.progress, state.message, state.cancel_requested = False, 0.0, "", False
    _active = None


def shutdown() -> None:
    global _client, _client_python, _active
    if _client is not None:
        _client.close()
    _client, _client_python, _active = None, None, None


class DeepSDFJobState(bpy.types.PropertyGroup):
    """What the panel shows about the running job (on the window manager: never saved)."""

    running: bpy.props.BoolProperty(default=False)
    progress: bpy.props.FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    message: bpy.props.StringProperty(default="")
    cancel_requested: bpy.props.BoolProperty(default=False)
