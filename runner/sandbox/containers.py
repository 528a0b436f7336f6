"""Container lifecycle: start, stream logs, wait with a hard timeout, kill, ask the engine who ended a container, copy a
file out. TRUSTED CODE (host side).

Everything a container prints or writes is hostile input here: log lines are cut to a fixed length and delivered
at a bounded rate on a daemon thread (a slow or hanging callback cannot stall the runner), and a file is copied
out only if the engine's archive holds exactly one regular file under the size cap (no links, no devices, no
directories). Wall times are the engine's own State.StartedAt / State.FinishedAt. The lines the pump watches for
are trainer.contract's: LAUNCHED_LINE comes before any candidate code, so it cannot be withheld (its absence
means the hand-over failed); EXPORTING_LINE and progress lines are hints a candidate can fake or withhold, used
for scheduling and benchmarks only.

Who ended a container: the engine's events (`engine_events`). A kill, stop, pause or removal is an API call, which
nothing inside a container can make (no container gets the engine's socket), so such an event that the host did
not issue itself was an operator's or the engine's doing, never the candidate's (runner.sandbox.classify
.outside_verdict). The engine keeps its last 256 events only: they are read as soon as the phase ends.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from trainer.contract import EXPORTING_LINE, LAUNCHED_LINE, is_step_line

from . import archive

MAX_LINE = 2000             # characters kept of one log line
LINES_PER_SECOND = 50       # on_line callbacks per second at most; the rest are counted as dropped
TAIL_LINES = 200            # lines the pump keeps for the log tail
KILL_GRACE_S = 10           # how long to wait for the engine to confirm a kill
ENGINE_EVENTS = ("kill", "stop", "pause", "destroy", "die", "oom")   # what engine_events asks for
MAX_EVENTS = 100            # events read for one container at most


RefusedFile = archive.RefusedFile   # a copied-out file that is not a single regular file under the cap


@dataclass
class Exit:
    """How a container ended, from the engine's own state."""
    exit_code: int | None
    oom_killed: bool
    timed_out: bool
    started_at: str | None
    finished_at: str | None
    wall_s: float | None            # FinishedAt - StartedAt (the engine's clocks)
    host_wall_s: float              # start() -> exit seen, on the host's monotonic clock
    engine_error: str = ""          # State.Error (the engine could not run it)
    removed: bool = False           # the container was gone (removed from outside) when its end was read


def _parse_time(ts: str | None) -> datetime | None:
    """Docker's RFC 3339 with nanoseconds -> datetime (microseconds)."""
    if not ts or ts.startswith("0001-"):
        return None
    head, _, frac = ts.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
    except ValueError:
        return None


def engine_wall(state: dict) -> float | None:
    start, end = _parse_time(state.get("StartedAt")), _parse_time(state.get("FinishedAt"))
    return (end - start).total_seconds() if start and end and end >= start else None


@dataclass
class LogPump:
    """Follows a container's stdout+stderr on a daemon thread: line-bounded, rate-bounded, keeps the tail."""
    container: object
    on_line: Callable[[str], None] | None = None
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    dropped: int = 0
    first_step_at: float | None = None    # host monotonic time of the first progress line (benchmarks)
    on_exporting: Callable[[], None] | None = None   # called once, on the pump's thread, at the first EXPORTING_LINE
    exporting_at: float | None = None     # host monotonic time of that line
    launched_at: float | None = None      # host monotonic time of the launcher's LAUNCHED_LINE
    _thread: threading.Thread | None = None

    def start(self) -> "LogPump":
        self._thread = threading.Thread(target=self._run, name=f"logs-{getattr(self.container, 'name', '?')}",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        window_start, sent, pending = time.monotonic(), 0, b""
        try:
            for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE * 4:            # a line with no end: cut it
                    lines.append(pending)
                    pending = b""
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE]
                    self.tail.append(line)
                    if self.first_step_at is None and is_step_line(line):
                        self.first_step_at = time.monotonic()
                    if self.launched_at is None and line == LAUNCHED_LINE:
                        self.launched_at = time.monotonic()
                    if self.exporting_at is None and line == EXPORTING_LINE:
                        self.exporting_at = time.monotonic()
                        self._exporting()
                    if self.on_line is None:
                        continue
                    now = time.monotonic()
                    if now - window_start >= 1.0:
                        window_start, sent = now, 0
                    if sent >= LINES_PER_SECOND:
                        self.dropped += 1
                        continue
                    sent += 1
                    try:
                        self.on_line(line)
                    except Exception:  # noqa: BLE001 - a broken display must not break the trial
                        self.on_line = None
            if pending:
                self.tail.append(pending.decode("utf-8", "replace")[:MAX_LINE])
        except Exception:  # noqa: BLE001 - the stream ends with an error when the container is removed
            pass

    def _exporting(self) -> None:
        if self.on_exporting is not None:
            try:
                self.on_exporting()
            except Exception:  # noqa: BLE001 - a scheduling hint; its failure must not stop the log stream
                pass

    def join(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


@dataclass
class Started:
    """A container started by `start`: when (host monotonic clock), and its log pump if any."""
    container: object
    t0: float
    logs: LogPump | None


def start(container, on_line: Callable[[str], None] | None = None, pump: bool = True) -> Started:
    """Start the container (and follow its logs); `wait_to_end` waits for it."""
    logs = LogPump(container, on_line) if pump else None
    t0 = time.monotonic()
    container.start()
    if logs:
        logs.start()
    return Started(container, t0, logs)


def follow(container, on_line: Callable[[str], None] | None = None, since: float | None = None,
           pump: bool = True, on_exporting: Callable[[], None] | None = None) -> Started:
    """Follow a container that is already running (started waiting for its input); `since` (host monotonic clock,
    default now) is when its input arrived, from which `wait_to_end` counts the timeout. The log pump replays
    what it printed while it waited, and calls on_exporting at the harness's EXPORTING_LINE (a hint the
    container can fake or withhold: use it only for scheduling)."""
    logs = LogPump(container, on_line, on_exporting=on_exporting).start() if pump else None
    return Started(container, time.monotonic() if since is None else since, logs)


def wait_to_end(started: Started, timeout_s: float) -> tuple[Exit, LogPump | None]:
    """Wait until the container exits, at most timeout_s after started.t0 (its start, or with `follow` the moment
    its input arrived); kill it after that. host_wall_s is measured from started.t0 too. A container removed
    meanwhile (from outside: the host never removes one mid-phase) gives an Exit with removed=True."""
    import docker.errors
    import requests
    container, logs = started.container, started.logs
    t0 = started.t0
    timed_out = False
    remaining = timeout_s - (time.monotonic() - t0)
    try:
        if remaining <= 0:
            raise requests.exceptions.ReadTimeout()
        container.wait(timeout=remaining)
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        if time.monotonic() - t0 < timeout_s - 1.0:
            raise                                           # the engine went away, not a timeout
        timed_out = True
        kill(container)
    except docker.errors.NotFound:
        pass                                                # removed: the reload below says so
    host_wall = time.monotonic() - t0
    try:
        container.reload()
        state, removed = container.attrs.get("State", {}), False
    except docker.errors.NotFound:
        state, removed = {}, True
    if logs:
        logs.join(2.0)
    return Exit(
        exit_code=state.get("ExitCode") if not state.get("Running") else None,
        oom_killed=bool(state.get("OOMKilled")),
        timed_out=timed_out,
        started_at=state.get("StartedAt"),
        finished_at=state.get("FinishedAt"),
        wall_s=engine_wall(state),
        host_wall_s=host_wall,
        engine_error=str(state.get("Error") or "")[:500],
        removed=removed,
    ), logs


def run_to_end(container, timeout_s: float, on_line: Callable[[str], None] | None = None,
               pump: bool = True) -> tuple[Exit, LogPump | None]:
    """Start the container and wait at most timeout_s for it (its whole life); kill it after that."""
    return wait_to_end(start(container, on_line, pump), timeout_s)


def kill(container) -> None:
    """SIGKILL and wait for the engine to see the end (bounded); quiet if it is already gone."""
    import docker.errors
    import requests
    try:
        container.kill()
    except docker.errors.APIError:
        pass                                                # not running any more (or already removed)
    try:
        container.wait(timeout=KILL_GRACE_S)
    except (requests.exceptions.RequestException, docker.errors.APIError):
        pass


def engine_events(container, since: float, until: float | None = None) -> list[dict]:
    """The engine's ENGINE_EVENTS for one container between since and until (unix seconds; until: now), oldest
    first, at most MAX_EVENTS, each as {"action", "signal", "exit_code", "time"} (strings or None; time in
    seconds). Works for a removed container too, while the engine still holds its events."""
    until = time.time() if until is None else until
    client = getattr(container, "client", None)
    if client is None:
        return []
    stream = client.events(since=f"{since:.6f}", until=f"{until:.6f}", decode=True,
                           filters={"type": "container", "container": [container.id], "event": list(ENGINE_EVENTS)})
    out = []
    try:
        for e in stream:
            attrs = (e.get("Actor") or {}).get("Attributes") or {}
            out.append({"action": e.get("Action") or e.get("status"), "signal": attrs.get("signal"),
                        "exit_code": attrs.get("exitCode"), "time": (e.get("timeNano") or 0) / 1e9})
            if len(out) >= MAX_EVENTS:
                break
    finally:
        stream.close()
    return out


def log_tail(container, lines: int | str = 100, max_chars: int = 20_000, *, stdout: bool = True) -> str:
    """The last lines the engine kept (its json-file log is capped), bounded, decoded leniently. stdout=False: the
    stderr stream alone, in its own order (the engine merges the two streams in no fixed order, so a line printed
    before a crash can land after its traceback in the merged log)."""
    try:
        raw = container.logs(stdout=stdout, stderr=True, tail=lines)
    except Exception:  # noqa: BLE001 - a missing log is not worth failing the trial over
        return ""
    text = raw.decode("utf-8", "replace")
    text = "\n".join(line[:MAX_LINE] for line in text.splitlines())
    return text[-max_chars:]


def fetch_file(container, path: str, max_bytes: int, dest: Path | None = None) -> bytes | None:
    """Copy one file out of a (running) container as hostile input: RefusedFile unless it is a single regular file
    of at most max_bytes. No link is ever followed. Returns the bytes, or with dest writes a new file there
    (never through an existing file or link) and returns None. Streamed: the host holds at most max_bytes for it,
    never a copy of the archive (runner/sandbox/archive.py)."""
    res, stat = archive.open_archive(container, path)
    try:
        archive.check_stat(stat, path, max_bytes)
        return archive.read_one_file(res.iter_content(archive.BLOCK), path, max_bytes, dest)
    finally:
        res.close()                     # an unread archive keeps the container locked in the engine
