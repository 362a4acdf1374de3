"""Exception types the engine raises: each carries a sentence a user can act on."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose.

    Front ends (CLI, Blender add-on, worker) catch this one type and show
    ``str(error)`` to the user; anything else is a bug.
    """


class ModelFileError(EngineError):
    """A model file (or reference experiment) is missing, corrupt, truncated or foreign."""


class InputError(EngineError):
    """User input (a mesh, points, a code file, an argument) cannot be used."""


class NoSurfaceError(EngineError):
    """The zero level set of a code is empty inside the meshing box.

    ``kind`` is ``"empty"`` when the SDF is positive everywhere (nothing inside)
    and ``"full"`` when it is negative everywhere (the shape fills the box).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class DeviceError(EngineError):
    """The requested compute device is not available on this machine."""


class CancelledError(EngineError):
    """A progress callback asked a long call to stop."""
