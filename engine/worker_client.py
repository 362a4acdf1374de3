"""The front end's side of the worker protocol: start ``python -m engine.worker``, send jobs,
read events without blocking, cancel, and notice a worker that died.

Pure Python (no PyTorch, no bpy): the Blender add-on imports it in Blender's process.
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import decode, encode


class WorkerError(Exception):
    """A job failed. ``kind`` is the engine's error type (``ModelFileError``, ``WorkerDied``…)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Job:
    """One submitted request and what has come back for it."""

    id: int
    op: str
    workdir: str
    done: int = 0
    total: int = 0
    message: str = ""
    result: dict | None = None
    error: WorkerError | None = None
    finished: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def cleanup(self) -> None:
        """Delete the job's work directory (its arrays); call after reading the result."""
        shutil.rmtree(self.workdir, ignore_errors=True)


class WorkerClient:
    """Drives one worker process.

    python: the engine's Python executable. package_dir: the folder that holds the
    ``engine`` package (added to PYTHONPATH). extra_paths: more import paths for
    the worker (e.g. where Blender installed the extension's wheels).
    """

    def __init__(
        self,
        python: str,
        package_dir: str | os.PathLike,
        extra_paths: list[str] | None = None,
        log_path: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.python = python
        self.package_dir = str(package_dir)
        self.extra_paths = list(extra_paths or [])
        self.log_path = str(log_path) if log_path else None
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self.jobs: dict[int, Job] = {}
        self.ids = itertools.count(1)
        self.root = Path(tempfile.mkdtemp(prefix="deepsdf-jobs-"))
        self._log = None

    # -- process ----------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start the worker (if not running) and wait for its ``ready`` line."""
        if self.alive:
            return
        if not self.python or not (Path(self.python).is_file() or shutil.which(self.python)):
            raise WorkerError(
                "EngineSetupError", f"The engine Python {self.python!r} does not exist; fix it in the preferences."
            )
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join([self.package_dir, *self.extra_paths])
        env["PYTHONNOUSERSITE"] = "1"
        env.pop("PYTHONHOME", None)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [self.python, "-u", "-m", "engine.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                cwd=self.package_dir,
                env=env,
            )
        except OSError as exc:
            raise WorkerError("EngineSetupError", f"Cannot start the engine Python {self.python!r}: {exc}") from None
        self.events = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.events), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.events.get(timeout=0.1)
            except queue.Empty:
                if not self.alive:
                    break
                continue
            if msg.get("event") == "ready":
                return
        code = self.proc.poll()
        self.stop()
        raise WorkerError(
            "EngineSetupError",
            f"The engine did not start with {self.python!r} (exit code {code}); see the log"
            + (f" at {self.log_path}" if self.log_path else "")
            + ".",
        )

    @staticmethod
    def _read(proc: subprocess.Popen, events: queue.Queue) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                events.put(decode(line))
            except ValueError:
                continue
        events.put({"event": "exit", "code": proc.wait()})

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the worker to exit; kill it if it does not (frees its memory, GPU included)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self._send({"op": "shutdown"})
                    self.proc.wait(timeout=timeout)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None
        for job in self.jobs.values():
            if not job.finished:
                job.error = WorkerError("Cancelled", "The engine was stopped.")
                job.finished = True

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _send(self, message: dict) -> None:
        if self.proc is None or self.proc.stdin is None:
            raise WorkerError("WorkerDied", "The engine process is not running.")
        self.proc.stdin.write(encode(message))
        self.proc.stdin.flush()

    # -- jobs -----------------------------------------------------------------------
    def new_workdir(self) -> str:
        """A fresh directory for a job's input arrays (pass it to :meth:`submit`)."""
        return tempfile.mkdtemp(prefix="job-", dir=self.root)

    def submit(self, op: str, params: dict[str, Any], workdir: str | None = None) -> Job:
        self.start()
        job = Job(next(self.ids), op, workdir or self.new_workdir())
        self.jobs[job.id] = job
        try:
            self._send({"id": job.id, "op": op, "params": params, "workdir": job.workdir})
        except OSError as exc:
            raise WorkerError("WorkerDied", f"The engine process stopped accepting jobs: {exc}") from None
        return job

    def cancel(self, job: Job) -> None:
        """Ask the worker to stop ``job`` at its next progress point."""
        if not job.finished and self.alive:
            try:
                self._send({"op": "cancel", "id": job.id})
            except (OSError, WorkerError):
                pass

    def poll(self) -> None:
        """Apply every event that has arrived (never blocks)."""
        while True:
            try:
                msg = self.events.get_nowait()
            except queue.Empty:
                return
            self._apply(msg)

    def _apply(self, msg: dict) -> None:
        if msg.get("event") == "exit":
            for job in self.jobs.values():
                if not job.finished:
                    job.error = WorkerError(
                        "WorkerDied", f"The engine process stopped unexpectedly (exit code {msg.get('code')})."
                    )
                    job.finished = True
            self.proc = None
            return
        job = self.jobs.get(int(msg.get("id", -1)))
        if job is None:
            return
        kind = msg.get("event")
        if kind == "progress":
            job.done, job.total, job.message = int(msg["done"]), int(msg["total"]), str(msg.get("message", ""))
        elif kind == "result":
            job.result, job.finished = msg.get("data") or {}, True
        elif kind == "error":
            job.error = WorkerError(str(msg.get("type", "Error")), str(msg.get("message", "")))
            job.finished = True

    def wait(self, job: Job, timeout: float | None = None, on_progress=None) -> dict:
        """Block until ``job`` ends; returns its result or raises its WorkerError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.finished:
            try:
                msg = self.events.get(timeout=0.2)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    self.cancel(job)
                    raise WorkerError("Timeout", f"The engine did not finish {job.op} in {timeout:.0f} s.") from None
                continue
            self._apply(msg)
            if on_progress is not None and msg.get("event") == "progress":
                on_progress(job)
        if job.error is not None:
            raise job.error
        return job.result or {}
