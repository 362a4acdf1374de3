"""Progress reporting and cooperative cancellation for long engine calls.

Every long call takes ``on_progress(done, total, message) -> bool``; returning
``False`` asks the call to stop, and it raises :class:`CancelledError` at the
next safe point. The CLI turns this into a tqdm bar, the Blender worker into
protocol messages.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import CancelledError

ProgressCallback = Callable[[int, int, str], bool]


def report(on_progress: ProgressCallback | None, done: int, total: int, message: str) -> None:
    """Call ``on_progress`` if given; raise :class:`CancelledError` if it returns False."""
    if on_progress is None:
        return
    if on_progress(done, total, message) is False:
        raise CancelledError(f"Cancelled during {message or 'work'} ({done}/{total}).")


def scaled(on_progress: ProgressCallback | None, start: int, span: int, total: int) -> ProgressCallback | None:
    """A callback that maps a sub-task's ``(done, total)`` into ``[start, start+span]`` of ``total``."""
    if on_progress is None:
        return None

    def sub(done: int, sub_total: int, message: str) -> bool:
        fraction = done / sub_total if sub_total else 1.0
        return on_progress(start + round(span * fraction), total, message)

    return sub
