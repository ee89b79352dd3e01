"""Ctrl-C and SIGTERM (what `kill`, systemd and container runtimes send) stop a search the same way: the trial in
flight is failed and re-queued, worker processes are stopped, and the command exits with one line.

A signal is first *recorded*, then raised (as Terminated or KeyboardInterrupt) in the main thread. The record is
what decides the exit: ``stop_code()`` turns any recorded signal into exit 143 / 130, so a command that was
signalled never exits 0, even where the raise went astray. The raise can go astray wherever Python swallows
exceptions (a weakref callback such as importlib's module-lock one, ``__del__``, some C callbacks): Python hands
such an exception to ``sys.unraisablehook``, where ours re-sends the signal to the main thread so that it is raised
again at its next bytecode. ``check()`` raises a recorded stop at the safe points of the trial loop (claim, tell).

One signal is raised once: a second Ctrl-C or SIGTERM while the first is being handled is recorded only, so it
never cuts the clean-up short (re-queueing the trial, stopping workers). Some steps must not be cut in two
(claiming a trial, telling its result): inside ``deferred_interrupts()`` a signal is held and raised as soon as
the step is done.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_CODES",
    "DeadlinePassed",
    "Terminated",
    "check",
    "deferred_interrupts",
    "exit_with_parent",
    "hard_deadline",
    "interrupts_raise",
    "raise_held",
    "received",
    "stop_code",
    "wait",
]

EXIT_CODES: dict[int, int] = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal's number, as shells report it
LINES: dict[int, str] = {  # after ^C a terminal has no newline yet
    signal.SIGTERM: "frandi: terminated; run the same command again to resume",
    signal.SIGINT: "\nfrandi: interrupted; run the same command again to resume",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled wherever Ctrl-C is, reported as 'terminated' (exit code 143)."""


class DeadlinePassed(KeyboardInterrupt):
    """The hard deadline passed (SIGALRM, see ``hard_deadline``): the trial in flight is re-queued as a stopped one
    is, and the worker ends its run normally."""


@dataclass
class _Stop:
    """What this process knows about a stop signal (the main thread writes it, in its signal handler)."""

    signum: int | None = None  # the first stop signal received: it decides the exit code
    retry: bool = False  # that raise was swallowed: raise it again
    depth: int = 0  # nesting of deferred_interrupts()
    deadline: bool = False  # the hard deadline passed: raised as DeadlinePassed, after any stop
    event: threading.Event = field(default_factory=threading.Event)  # set when a stop is recorded


_stop = _Stop()
_previous_hook = sys.unraisablehook


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _stop.signum is None:
        _stop.signum = signum
        _stop.event.set()
    elif not _stop.retry:
        return  # a stop is already under way: this one must not cut its clean-up short
    _stop.retry = False
    if _stop.depth:
        return  # held: raised when the deferred block ends
    raise _interrupt(_stop.signum)


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    _stop.deadline = True
    if not _stop.depth and _stop.signum is None:
        raise DeadlinePassed()


def _on_unraisable(unraisable: Any) -> None:
    """A stop raised where Python swallows exceptions: send the signal again, to be raised at the next bytecode."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and (_stop.signum is not None or _stop.deadline):
        _stop.retry = True
        # sent from another thread: sent from this one, Python would run the handler at once, inside this hook,
        # which swallows its exception too
        target = threading.main_thread().ident or 0
        signum = _stop.signum or signal.SIGALRM
        threading.Thread(target=signal.pthread_kill, args=(target, signum), name="frandi-resend", daemon=True).start()
        return
    _previous_hook(unraisable)


class _AfterStop(logging.Filter):
    """Drops what SQLAlchemy logs (with a traceback) when a stop cut a query in two and closing that connection
    fails: expected once a stop is recorded, and the connection is discarded anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(_QUIET) or (_stop.signum is None and not _stop.deadline)


_QUIET = ("sqlalchemy.pool", "sqlalchemy.engine")  # the loggers of SQLAlchemy's failed clean-ups


def received() -> int | None:
    """The stop signal this command received (SIGTERM or SIGINT), or None."""
    return _stop.signum


def check() -> None:
    """A safe point: raise the recorded stop (again), unless inside deferred_interrupts(). Once a stop is
    recorded, no new work starts: every safe point raises it."""
    if _stop.depth:
        return
    if _stop.signum is not None:
        raise _interrupt(_stop.signum)
    if _stop.deadline:
        raise DeadlinePassed()


def wait(seconds: float) -> bool:
    """Sleep up to ``seconds``, waking at once when a stop is recorded; True if one is."""
    return _stop.event.wait(seconds)


def stop_code(code: int, interrupt: KeyboardInterrupt | None = None) -> int:
    """The command's exit code: ``code``, or 143 / 130 with its one line when a stop signal was recorded (or,
    unrecorded, ``interrupt`` was raised). From here on a signal is recorded only."""
    _stop.depth += 1
    signum = _stop.signum
    if signum is None and interrupt is not None:
        signum = signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT
    if signum is None:
        return code
    print(LINES[signum], file=sys.stderr)
    return EXIT_CODES[signum]


@contextmanager
def interrupts_raise(*, sigint: bool = True) -> Iterator[None]:
    """In the block, SIGTERM raises Terminated (and, with ``sigint``, Ctrl-C KeyboardInterrupt) in the main thread,
    unless deferred; the previous handlers (and unraisable hook) are restored after. The record of an earlier
    stop is cleared on entry. Elsewhere than the main thread it does nothing."""
    global _stop, _previous_hook
    if threading.current_thread() is not threading.main_thread():  # only the main thread can set handlers
        yield
        return
    _stop = _Stop()
    signals = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    _previous_hook, previous_hook = sys.unraisablehook, sys.unraisablehook
    sys.unraisablehook = _on_unraisable
    previous = {s: signal.signal(s, _on_signal) for s in signals}
    quiet = _AfterStop()
    # on the handlers that print (a logger's filter would not see its children's records)
    printers = [h for h in (*logging.getLogger().handlers, logging.lastResort) if h is not None]
    for printer in printers:
        printer.addFilter(quiet)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = previous_hook
        for printer in printers:
            printer.removeFilter(quiet)


@contextmanager
def hard_deadline(at: float | None) -> Iterator[None]:
    """In the block, from ``at`` (time.time()) on, DeadlinePassed is raised in the main thread, unless deferred
    (then when the deferred block ends) and at every safe point after. None, or elsewhere than the main thread:
    no deadline."""
    if at is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(at - time.time(), 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _stop.deadline = False


@contextmanager
def deferred_interrupts(*, release: bool = True) -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM while the block runs, so it is never cut in two; raise the held one after it, or
    (``release=False``) keep it held until ``raise_held()``, so the caller can first put its work in a safe state."""
    _stop.depth += 1
    try:
        yield
    finally:
        _stop.depth -= 1
        if release:
            raise_held()


def raise_held() -> None:
    """Raise the recorded Ctrl-C / SIGTERM, if any, outside any deferred block (a safe point)."""
    check()


def exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """Send this process SIGTERM once ``parent`` is no longer its parent (the launcher died, even by kill -9)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="frandi-parent-watch", daemon=True).start()
