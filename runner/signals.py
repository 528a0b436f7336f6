"""Stopping a run on a signal: SIGINT (Ctrl-C), SIGTERM (`kill`, a service manager) and SIGHUP (the terminal
closed) stop it alike, leaving nothing on the engine and the ledger and branch resumable. TRUSTED CODE.

    with StopSignals() as stop:        # on the main thread, around the run
        ...                            # the first signal raises Stopped (a KeyboardInterrupt) here
    exit_code(exc)                     # 128 + the signal's number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP)

- The first signal raises Stopped on the main thread (Python runs signal handlers there), so the run unwinds as
  for Ctrl-C: the loop's cleanup, the executor's close (it removes every container and volume of the run: the
  trials in flight and the slots started ahead; runner/sandbox/executor.py), the lock's release.
- A second SIGINT or SIGTERM during that cleanup ends the process at once, after one line on stderr. Nothing is
  left: every slot has a watchdog in its own session (runner/sandbox/watchdog.py) that removes the slot when the
  runner's end of its pipe closes, and a slot's removal tells its watchdog `done` only once it is complete. A
  second SIGHUP is ignored (a closing terminal can send two: the shell's and the kernel's).
- On SIGHUP the terminal is gone: standard output and error, where they are that terminal, are pointed at
  /dev/null first (writing to a hung-up terminal fails with EIO, which would cut the cleanup short). A SIGHUP
  ignored when the command started (`nohup`) stays ignored, and the run goes on.
- A signal to the runner's whole process group (Ctrl-C, a closed terminal) does not reach the watchdogs.
- The kernel may hand a process's signal to any of its threads; Python then runs the handler on the main thread
  only when that thread next runs Python code, and a main thread blocked in a plain `queue.get()`, `cond.wait()`
  or `thread.join()` is not woken (measured: SIGINT + SIGTERM to a process with busy threads went unseen until
  the item came in 19 times out of 40; CI saw a run finish and record its trial 5 s after both). So every wait on
  the main thread goes through get() / result() / join() here, or waits in slices of POLL_S itself.
The handlers stay in place after a stop until the process exits (its last threads are joined then).
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_S = 0.2                # the longest a wait on the main thread leaves a signal that another thread took unseen


class Stopped(KeyboardInterrupt):
    """A stop signal, raised on the main thread: every `except KeyboardInterrupt` and `finally` cleans up for it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """The shell's convention, 128 + the signal's number (a plain KeyboardInterrupt counts as SIGINT)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def describe(exc: BaseException) -> str:
    """"interrupted" for Ctrl-C, else what stopped it: "stopped by SIGTERM"."""
    signum = getattr(exc, "signum", signal.SIGINT)
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


class StopSignals:
    """Installs the handlers for STOP_SIGNALS (main thread only); restores the old ones on a normal exit."""

    def __init__(self):
        self.first: int | None = None
        self._old: dict[int, object] = {}
        self._terminal: list[int] = []                   # stdout / stderr where they are a terminal

    def __enter__(self) -> "StopSignals":
        self._terminal = [fd for fd in (1, 2) if os.isatty(fd)]     # now: a hung-up terminal is no tty any more
        for signum in STOP_SIGNALS:
            old = signal.getsignal(signum)
            if signum == signal.SIGHUP and old == signal.SIG_IGN:
                continue                                  # nohup: the run outlives its terminal
            self._old[signum] = old
            signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if self.first is None:
            for signum, old in self._old.items():
                signal.signal(signum, old)

    def _on_signal(self, signum: int, frame) -> None:
        if self.first is None:
            self.first = signum
            if signum == signal.SIGHUP:
                _away_from(self._terminal)
            raise Stopped(signum)
        if signum == signal.SIGHUP:
            return
        _say(f"autoresearch: {signal.Signals(signum).name} while stopping: exiting now; the slots' watchdogs "
             "remove what is left of the run's containers\n")
        os._exit(128 + self.first)


def get(q: queue.Queue):
    """q.get(), waiting in slices of POLL_S so that a stop signal taken by another thread is seen on time."""
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue


def result(future: concurrent.futures.Future):
    """future.result(), in slices of POLL_S (as get())."""
    while not future.done():                 # (not result(timeout): the call's own TimeoutError would look alike)
        concurrent.futures.wait([future], timeout=POLL_S)
    return future.result()


def join(thread: threading.Thread) -> None:
    """thread.join(), in slices of POLL_S (as get())."""
    while thread.is_alive():
        thread.join(POLL_S)


def _away_from(terminal: list[int]) -> None:
    """Point these descriptors (standard output and error that were a terminal, which hung up) at /dev/null."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in terminal:
        os.dup2(null, fd)
    os.close(null)


def _say(text: str) -> None:
    """One line on stderr from a signal handler: a raw write, never Python's buffered stream (it may be mid-write)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass
