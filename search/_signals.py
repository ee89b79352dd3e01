"""SIGTERM (what `kill`, systemd and container runtimes send) handled as Ctrl-C: the trial in flight is failed and
re-queued, worker processes are stopped, and the command exits with one line."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Terminated", "exit_with_parent", "terminate_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled wherever Ctrl-C is, reported as 'terminated' (exit code 143)."""


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second signal must not cut the clean-up short
    raise Terminated


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """In the block, SIGTERM raises Terminated in the main thread; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread can set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """Send this process SIGTERM once ``parent`` is no longer its parent (the launcher died, even by kill -9)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="frandi-parent-watch", daemon=True).start()
