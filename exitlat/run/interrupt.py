"""Stop requests during a bench: Ctrl-C (SIGINT), SIGTERM (timeout, systemd, Ansible) and SIGHUP
(a closed terminal) all take one path: the first one raises `Interrupted` where the run is, so the
VM is stopped, the container removed and an incomplete bundle written; every later one only says
that cleanup is under way, so that a second signal never cuts the cleanup short.

Cleanup that runs when no signal came yet sits in `deferred()`: a signal arriving there is held
and raised by the next `check()`, between VM runs or after the bundle is written."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop request; str() is the one line the user sees (without "error: ")."""

    def __init__(self, signame: str = "SIGINT"):
        super().__init__(signame)
        self.signame = signame
        self.kept = None            # what was kept, once the bundle is written

    @property
    def reason(self) -> str:
        return "interrupted (Ctrl-C)" if self.signame == "SIGINT" else f"interrupted ({self.signame})"

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signame, signal.SIGINT))

    def __str__(self) -> str:
        return self.reason + (f"; {self.kept}" if self.kept else "")


def reason_of(err: BaseException) -> str:
    """The bundle's reason for an interruption (a plain KeyboardInterrupt is Ctrl-C)."""
    return err.reason if isinstance(err, Interrupted) else "interrupted (Ctrl-C)"


class _State:
    def __init__(self):
        self.deferring = 0
        self.pending: str | None = None     # a signal held by deferred()
        self.raised: str | None = None      # the signal that started the stop
        self.say = lambda msg: print(msg, file=sys.stderr, flush=True)


_state = _State()


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _state.raised or _state.pending:
        _state.say(f"{name} again: still stopping (stopping QEMU, removing the container, writing the "
                   "incomplete bundle); SIGKILL abandons that and `invoke cleanup` removes what is left")
        return
    if _state.deferring:
        _state.pending = name
        return
    _state.raised = name
    raise Interrupted(name)


@contextmanager
def stop_on_signals(say=None):
    """Route SIGINT, SIGTERM and SIGHUP to `Interrupted` for the duration (main thread only:
    elsewhere Python cannot install handlers, and Ctrl-C keeps its default)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _state
    outer, _state = _state, _State()
    if say is not None:
        _state.say = say
    old = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state = outer


@contextmanager
def deferred():
    """Cleanup that a first signal must not cut short: the signal is held for check()."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


@contextmanager
def interruptible():
    """Inside deferred(): a part that a signal may interrupt at once (the VM runs)."""
    saved, _state.deferring = _state.deferring, 0
    try:
        yield
    finally:
        _state.deferring = saved


def check() -> None:
    """Raise the signal deferred() held, if any."""
    if _state.pending and not _state.raised and not _state.deferring:
        _state.raised, _state.pending = _state.pending, None
        raise Interrupted(_state.raised)


def stopping() -> bool:
    """Whether a signal asked this run to stop (raised or held)."""
    return bool(_state.raised or _state.pending)
