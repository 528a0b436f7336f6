"""A slot's watchdog: a host process, not the runner, that keeps the slot's containers inside their deadlines.
TRUSTED CODE (host side).

It enforces the slot's deadlines, and removes the slot, when the runner cannot: when it died (kill -9, the OOM
killer, a closed terminal) or stopped (SIGSTOP, a hung engine call) while its trial's container runs. The runner
kills a container at its deadline itself, but only while it is alive and responsive. The watchdog is a separate
host process in its own session, with no terminal: nothing in a container can see, signal or trace it, and a ^C,
a closed terminal's SIGHUP or a kill of the runner's process group does not reach it (runner/signals.py). It
uses the standard library only (HTTP over the engine's socket) and takes no CPU while it waits. Its place among
the sandbox's defences: runner.sandbox (covered / not covered).

    wd = Watchdog.start(run_tag=..., slot_id=..., volumes=[...], marker_dir=slot.dir, max_life_s=...)
    wd.containers(holder=id, train=id, eval=id)   # the slot's containers, once created
    wd.deadline("train", t)                       # kill the train container at t + GRACE_S (CLOCK_MONOTONIC)
    wd.deadline("eval", t)
    wd.close()                                    # the runner removed the slot itself: the watchdog exits at once
    wd.abandon()                                  # or: its removal failed or was cut short; the watchdog does it

One watchdog per slot, started before the slot's first volume or container exists. The runner talks to it over a
pipe (the watchdog's stdin; its stdout and stderr are /dev/null), one line per message:
    `ids ROLE=ID ...`   the slot's containers
    `train T`, `eval T` that container's deadline, T in CLOCK_MONOTONIC seconds (one clock for every process)
    `done`              exit now, doing nothing
and it acts on three things:
    a deadline + GRACE_S  it writes MARKER (`watchdog-killed-<role>`) into marker_dir, then kills that container if
                          it still runs (removing the marker if it did not). The runner's own kill comes GRACE_S
                          earlier; the marker tells the runner that a kill it did not issue was the deadline's
                          (runner.sandbox.slot.Slot.killed_by_watchdog), not an operator's.
    end of file without `done`  the runner is gone (the kernel closed its end of the pipe), or it handed the
                          removal over (abandon): nothing will ever hand over to, read from or remove this slot, so
                          it removes the slot's containers (holder included) and volumes, at once, and exits.
    max_life_s            the longest a slot can be in use (a waiting container's own backstop, spec.STANDBY_MAX_S,
                          plus the train deadline, the eval timeout and a margin): it removes the slot and exits.
                          The holder (`sleep infinity`) has no other backstop while a runner lives but hangs.
A normal end costs one process start and a few bytes: `done` makes it exit without a single engine call, and the
runner reaps it (Slot.remove), so no process of ours is left when a run ends. A runner that dies leaves it for
as long as removing the slot takes.

It imports only os, select, sys and time up front (its start-up is most of its cost), the rest where needed.
Engine: $DOCKER_HOST as docker-py reads it: unix://PATH (default /var/run/docker.sock) or tcp://HOST:PORT
without TLS over HTTP; any other (ssh://, TLS) through the `docker` command line.
"""
from __future__ import annotations

import os
import select
import sys
import time

GRACE_S = 2.0              # after a deadline: the runner kills first; the watchdog only if the runner did not
MAX_LIFE_MARGIN_S = 600    # on top of the longest a slot can legitimately be in use
SWEEP_AGAIN_S = 1.0        # a container the dead runner was creating may appear this late: a second sweep
ENGINE_TIMEOUT_S = 30      # one engine request
MARKER = "watchdog-killed-{role}"
DEFAULT_SOCKET = "/var/run/docker.sock"
# the watchdog's command: this module from its compiled cache (a script's source is compiled on every start), with
# no site-packages (-S) and no environment or user paths (-I)
LAUNCH = ("import sys; sys.path.insert(0, {root!r}); from runner.sandbox import watchdog; "
          "sys.exit(watchdog.main(sys.argv[1:]))")
# DETACH: start each watchdog as a grandchild (the child forks it and exits), never a child of this process. For a
# process whose end kills its children: a Ray worker (Ray's kill_child_processes_on_worker_exit, on by default)
# would take its trial's watchdog with it when it dies or its task is cancelled, leaving the trial's containers
# running. runner/ray_node.py sets it; the local runner keeps its watchdogs as children and reaps them.
DETACH = False
_FORK_AWAY = "import os; os.fork() and os._exit(0); "


# --------------------------------------------------------------------------- the runner's side

class Watchdog:
    """The runner's handle on one slot's watchdog process."""

    def __init__(self, proc, fd: int):
        self.proc, self._fd = proc, fd

    @classmethod
    def start(cls, *, run_tag: str, slot_id: str, volumes: list[str], marker_dir, max_life_s: float) -> "Watchdog":
        """Start the watchdog in its own session; OSError if it cannot be started."""
        import subprocess
        r, w = os.pipe()                                   # both non-inheritable: only the watchdog gets r
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        launch = (_FORK_AWAY if DETACH else "") + LAUNCH.format(root=root)
        args = [sys.executable, "-I", "-S", "-c", launch, "--run", run_tag, "--slot", slot_id,
                "--dir", str(marker_dir), "--max-life", f"{max_life_s:g}"]
        for v in volumes:
            args += ["--volume", v]
        try:
            proc = subprocess.Popen(args, stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        if DETACH:
            proc.wait()                                    # the forking child; the watchdog is its orphan
        return cls(proc, w)

    def _send(self, line: str) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, (line + "\n").encode())
        except OSError:                                   # it is gone (its max life, or killed): nothing to tell
            pass

    def containers(self, **ids: str) -> None:
        self._send("ids " + " ".join(f"{role}={cid}" for role, cid in ids.items() if cid))

    def deadline(self, role: str, at_monotonic: float) -> None:
        self._send(f"{role} {at_monotonic:.6f}")

    def close(self, wait_s: float = 5.0) -> None:
        """Tell it the slot is removed (it exits at once), and reap it. Only once the slot is gone: see abandon."""
        import subprocess
        if self._fd < 0:
            return
        self._send("done")
        os.close(self._fd)
        self._fd = -1
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:                 # cannot happen short of a stopped watchdog
            self.proc.kill()
            self.proc.wait()

    def abandon(self, wait_s: float = 0.0) -> None:
        """Hand the slot's removal over: close the pipe without `done`, as the kernel does when the runner dies, so
        the watchdog removes the slot (containers, holder and volumes) and exits. For a removal that failed or was
        interrupted (a second Ctrl-C): nothing is left half-removed. Waits up to wait_s for it; a daemon thread
        reaps it after that, so no zombie is left while the runner lives."""
        import subprocess
        import threading
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            threading.Thread(target=self.proc.wait, name="watchdog-reaper", daemon=True).start()


# --------------------------------------------------------------------------- the engine, stdlib only

class Engine:
    """The few engine calls the watchdog makes: list, kill and remove containers, remove volumes."""

    def __init__(self, host: str | None = None):
        host = host if host is not None else os.environ.get("DOCKER_HOST", "")
        self.socket = self.tcp = None
        if not host or host.startswith("unix://"):
            self.socket = host[len("unix://"):] if host else DEFAULT_SOCKET
        elif host.startswith("tcp://") and os.environ.get("DOCKER_TLS_VERIFY", "") in ("", "0"):
            self.tcp = host[len("tcp://"):]

    def _request(self, method: str, path: str) -> tuple[int, bytes]:
        import http.client
        import socket
        if self.socket is not None:
            conn = http.client.HTTPConnection("localhost", timeout=ENGINE_TIMEOUT_S)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(ENGINE_TIMEOUT_S)
            sock.connect(self.socket)
            conn.sock = sock
        else:
            conn = http.client.HTTPConnection(self.tcp, timeout=ENGINE_TIMEOUT_S)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _cli(self, *args: str) -> bool:
        import subprocess
        try:
            return subprocess.run(["docker", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=ENGINE_TIMEOUT_S).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def kill(self, cid: str) -> bool:
        """SIGKILL a running container; False if it was not running (or is gone)."""
        if self.socket is None and self.tcp is None:
            return self._cli("kill", cid)
        status, _ = self._request("POST", f"/containers/{_safe(cid)}/kill")
        return status == 204

    def remove(self, cid: str) -> None:
        if self.socket is None and self.tcp is None:
            self._cli("rm", "-f", "-v", cid)
            return
        self._request("DELETE", f"/containers/{_safe(cid)}?force=1&v=1")

    def remove_volume(self, name: str) -> None:
        if self.socket is None and self.tcp is None:
            self._cli("volume", "rm", "-f", name)
            return
        self._request("DELETE", f"/volumes/{_safe(name)}?force=1")

    def labelled(self, labels: list[str], created_before: float) -> list[str]:
        """Ids of containers carrying every label, created before the given unix time."""
        import json
        import urllib.parse
        if self.socket is None and self.tcp is None:
            return []                                     # the CLI path relies on the ids the runner sent
        query = urllib.parse.urlencode({"all": "1", "filters": json.dumps({"label": labels})})
        status, body = self._request("GET", f"/containers/json?{query}")
        if status != 200:
            return []
        return [c["Id"] for c in json.loads(body) if c.get("Created", 0) <= created_before]


def _safe(name: str) -> str:
    """A container id or volume name as one path segment (they are [A-Za-z0-9_.-]; anything else is escaped)."""
    import urllib.parse
    plain = name.replace("-", "").replace("_", "").replace(".", "")
    return name if plain.isascii() and plain.isalnum() else urllib.parse.quote(name, safe="")


# --------------------------------------------------------------------------- the watchdog process

class _Slot:
    def __init__(self, run_tag: str, slot_id: str, volumes: list[str], marker_dir: str, engine: Engine):
        self.run_tag, self.slot_id, self.volumes, self.dir, self.engine = run_tag, slot_id, volumes, marker_dir, engine
        self.ids: dict[str, str] = {}

    def kill(self, role: str) -> None:
        """The deadline of `role` has passed: kill its container if it still runs, leaving the marker if it did."""
        cid = self.ids.get(role)
        if cid is None:
            found = self.engine.labelled(self._labels() + [f"autoresearch.role={role}"], time.time())
            cid = found[0] if found else None
        if cid is None:
            return
        marker = os.path.join(self.dir, MARKER.format(role=role))
        try:                                              # first: the runner may see the exit before we return
            with open(marker, "w") as f:
                f.write(f"{time.time():.3f}\n")
        except OSError:
            pass                                          # the slot dir is gone: the slot is being removed
        if not self.engine.kill(cid):
            try:
                os.unlink(marker)                         # it had ended (or the runner's own kill came first)
            except OSError:
                pass

    def remove(self) -> None:
        """Remove the slot's containers (the holder too) and its volumes."""
        before = time.time()
        for sweep in range(2):
            ids = set(self.ids.values())
            if not self.ids:                              # the runner died while creating them
                ids |= set(self.engine.labelled(self._labels(), before))
            for cid in ids:
                self.engine.remove(cid)
            if self.ids or sweep:
                break
            time.sleep(SWEEP_AGAIN_S)
        for name in self.volumes:
            self.engine.remove_volume(name)

    def _labels(self) -> list[str]:
        return [f"autoresearch.run={self.run_tag}", f"autoresearch.trial={self.slot_id}"]


def _quietly(action, *args) -> None:
    """An engine that is down or answers oddly must not end the watch: the next deadline may still be enforceable."""
    try:
        action(*args)
    except Exception:  # noqa: BLE001 - stderr is /dev/null; nothing to report to
        pass


def watch(slot: _Slot, max_life_s: float, fd: int = 0) -> str:
    """Serve one slot until `done`, end of file, or max_life_s; returns which."""
    end_of_life = time.monotonic() + max_life_s
    deadlines: dict[str, float] = {}
    pending = b""
    while True:
        now = time.monotonic()
        for role in [r for r, t in deadlines.items() if t + GRACE_S <= now]:
            del deadlines[role]
            _quietly(slot.kill, role)
        if now >= end_of_life:
            _quietly(slot.remove)
            return "max life"
        wake = min([t + GRACE_S for t in deadlines.values()] + [end_of_life])
        ready, _, _ = select.select([fd], [], [], max(0.0, wake - now))
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            _quietly(slot.remove)
            return "runner gone"
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            word, _, rest = raw.decode("ascii", "replace").strip().partition(" ")
            if word == "done":
                return "done"
            if word == "ids":
                slot.ids.update(p.split("=", 1) for p in rest.split() if "=" in p)
            elif word in ("train", "eval"):
                try:
                    deadlines[word] = float(rest)
                except ValueError:
                    pass


def main(argv: list[str]) -> int:
    """watchdog.py --run TAG --slot ID --dir MARKER_DIR --max-life S [--volume NAME ...] (stdin: the runner's pipe).
    Its own parsing (argparse alone would double its start-up); 2 on a malformed command line."""
    opts: dict[str, list[str]] = {}
    if len(argv) % 2:
        return 2
    for key, value in zip(argv[::2], argv[1::2]):
        opts.setdefault(key, []).append(value)
    try:
        (run,), (slot_id,), (marker_dir,), (max_life,) = (opts[k] for k in ("--run", "--slot", "--dir", "--max-life"))
        max_life_s = float(max_life)
    except (KeyError, ValueError):
        return 2
    watch(_Slot(run, slot_id, opts.get("--volume", []), marker_dir, Engine()), max_life_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
