"""Ctrl-C and SIGTERM (what `kill`, systemd and container runtimes send) stop a search the same way: the trial in
flight is failed and re-queued, worker processes are stopped, and the command exits with one line.

Some steps must not be cut in two (claiming a trial, telling its result): inside ``deferred_interrupts()`` a
signal is held and raised as soon as the step is done.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Terminated", "deferred_interrupts", "exit_with_parent", "interrupts_raise", "raise_held"]

_held: list[int] = []  # signals that arrived inside deferred_interrupts(), raised when it ends
_depth = 0


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled wherever Ctrl-C is, reported as 'terminated' (exit code 143)."""


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the clean-up short
    if _depth:
        _held.append(signum)
        return
    raise _interrupt(signum)


@contextmanager
def interrupts_raise(*, sigint: bool = True) -> Iterator[None]:
    """In the block, SIGTERM raises Terminated (and, with ``sigint``, Ctrl-C KeyboardInterrupt) in the main thread,
    unless deferred; the previous handlers are restored after. Elsewhere than the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread can set handlers
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    previous = {s: signal.signal(s, _on_signal) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred_interrupts(*, release: bool = True) -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM while the block runs, so it is never cut in two; raise the held one after it, or
    (``release=False``) keep it held until ``raise_held()``, so the caller can first put its work in a safe state."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if release:
            raise_held()


def raise_held() -> None:
    """Raise the Ctrl-C / SIGTERM held by deferred_interrupts(), if any (outside any deferred block)."""
    if not _depth and _held:
        signum = _held[0]
        _held.clear()
        raise _interrupt(signum)


def exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """Send this process SIGTERM once ``parent`` is no longer its parent (the launcher died, even by kill -9)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="frandi-parent-watch", daemon=True).start()
