"""Every exit of a run leaves nothing behind (runner/signals.py, runner/sandbox/cleanup.py): a real `autoresearch
run` stopped mid-training by SIGTERM, by SIGINT and SIGTERM together (the second one while it stops), or by its
terminal closing (SIGHUP to its process group, under a pseudo-terminal and the live view) leaves no container,
volume or watchdog of the run, and `--resume` finishes the run whole; the next run of another tag removes what a
run whose runner and watchdogs were all killed left, and never a live run's; a failed command leaves no run
directory, and a run removes those that runners killed before run.json left. The runs use faultkit's tiny
step-limited policy and the offline `mutate` proposer."""
from __future__ import annotations

import fcntl
import os
import queue
import select
import signal
import subprocess
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import signals
from runner.cli import main
from runner.ledger import Ledger
from runner.proposals import Proposals
from runner.proposers import Proposal
from runner.sandbox import cleanup, spec
from runner.sandbox.cleanup import leftovers
from runner.signals import StopSignals, Stopped, exit_code
from tests.adversarial.faultkit import (assert_intact, cli, experiment, ledger_trials, policy_file, start, training,
                                        wait_for)
from tests.sandbox_kit import policy

LEFTOVER_S = 20             # the watchdogs of a runner that exited at once remove its slots (4.9 s at load 15)


def run_tag(name: str) -> str:
    """A tag the session's leak check counts as this session's (tests/conftest.py: it carries the process id)."""
    return f"sig-{name}-{os.getpid()}"


def _watchdogs(tag: str) -> list[int]:
    """Pids of the watchdog processes of run `tag` (runner/sandbox/watchdog.py: `--run TAG` on the command line)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0") if d.name.isdigit() else []
        except OSError:
            continue
        if b"--run" in argv[:-1] and argv[argv.index(b"--run") + 1] == tag.encode() and b"--slot" in argv:
            pids.append(int(d.name))
    return pids


def _nothing_left(client, tag: str) -> bool:
    return leftovers(tag, None, client) == ([], []) and not _watchdogs(tag)


class Terminal:
    """`autoresearch ARGS` as the leader of its own session on a pseudo-terminal (its controlling terminal, so the
    live view runs), whose output is drained until the terminal is closed."""

    def __init__(self, args: list):
        self.master, slave = os.openpty()

        def controlling_terminal():
            signal.signal(signal.SIGHUP, signal.SIG_DFL)          # as a terminal's shell would start it
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        self.proc = subprocess.Popen(["autoresearch", *map(str, args)], stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=controlling_terminal)
        os.close(slave)
        self.output, self._stop = bytearray(), threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        while not self._stop.is_set():
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:                                  # the runner closed its side
                    return

    def close(self):
        """The terminal window closes: SIGHUP to the runner's process group, and the terminal hangs up."""
        os.killpg(self.proc.pid, signal.SIGHUP)
        self._stop.set()
        self._reader.join()
        os.close(self.master)


def _late(repo: Path, tag: str, signalled: float, exited: float, log: Path) -> str:
    """Why a trial was recorded after the signals that should have stopped it: when, against the signals."""
    times = [f"trial {r.trial}: started {r.started_at - signalled:+.2f} s, recorded "
             f"{r.finished_at - signalled:+.2f} s, timings {r.trial_timings}"
             for r in Ledger(Path(repo) / "runs" / tag).records()]
    return (f"relative to the signals (the runner exited {exited - signalled:+.2f} s after them): "
            + "; ".join(times) + "\n" + log.read_text()[-2000:])


@pytest.mark.docker
def test_sigterm_sigint_with_sigterm_and_a_closed_terminal_each_leave_nothing_and_the_run_resumes_whole(
        tmp_path, trial_image, sandbox_data, docker_client):
    repo, tag, log = experiment(tmp_path), run_tag("signals"), tmp_path / "run.log"
    args = ["--policy", policy_file(tmp_path), "--data", sandbox_data, "--image", trial_image.tag]

    # SIGTERM during the baseline: the runner removes the trial's containers itself, then exits 143
    proc = start(repo, tag, *args, "--max-trials", 2, log=log)
    try:
        wait_for("the baseline to train", lambda: training(docker_client, tag, 0), proc, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        proc.kill()
    assert f"stopped by SIGTERM; continue with `autoresearch run --tag {tag} --resume`" in log.read_text()
    assert leftovers(tag, None, docker_client) == ([], []), "the runner exited before it removed its containers"
    assert wait_for("its watchdogs to end", lambda: not _watchdogs(tag), timeout=LEFTOVER_S)
    assert ledger_trials(repo, tag) == []

    # SIGINT and SIGTERM at once while trial 1 trains: the second one arrives as it stops, so it exits at once and
    # the slots' watchdogs remove what the runner had not
    proc = start(repo, tag, "--resume", log=log)
    try:
        wait_for("trial 1 to train", lambda: training(docker_client, tag, 1), proc, log)
        signalled = time.time()
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
        exited = time.time()
    finally:
        proc.kill()
    first, second = (signal.SIGINT, signal.SIGTERM) if rc == 130 else (signal.SIGTERM, signal.SIGINT)
    assert rc == 128 + first, log.read_text()[-3000:]
    assert f"autoresearch: {second.name} while stopping: exiting now" in log.read_text()
    wait_for("the watchdogs to remove the run's slots", lambda: _nothing_left(docker_client, tag),
             timeout=LEFTOVER_S, every=0.5)
    assert ledger_trials(repo, tag) == [0], _late(repo, tag, signalled, exited, log)

    # the terminal closes while trial 1 trains again (the live view on it): exit 129, nothing left
    term = Terminal(["run", "--repo", repo, "--tag", tag, "--resume"])
    try:
        wait_for("trial 1 to train again", lambda: training(docker_client, tag, 1), term.proc)
        term.close()
        assert term.proc.wait(120) == 128 + signal.SIGHUP, term.output.decode(errors="replace")[-3000:]
    finally:
        term.proc.kill()
    assert leftovers(tag, None, docker_client) == ([], []), "the runner exited before it removed its containers"
    assert wait_for("its watchdogs to end", lambda: not _watchdogs(tag), timeout=LEFTOVER_S)
    assert ledger_trials(repo, tag) == [0]

    p = cli("run", "--repo", repo, "--tag", tag, "--resume", "--plain")
    assert p.returncode == 0, p.stdout + p.stderr
    assert_intact(repo, tag, docker_client, trials=2)


@pytest.mark.docker
def test_a_run_removes_what_a_dead_run_of_another_tag_left_and_never_a_live_run_s(tmp_path, trial_image,
                                                                                  sandbox_data, docker_client):
    repo, dead, live, nxt = experiment(tmp_path), run_tag("dead"), run_tag("live"), run_tag("next")
    args = ["--policy", policy_file(tmp_path), "--data", sandbox_data, "--image", trial_image.tag]
    proc = start(repo, dead, *args, "--max-trials", 1, log=tmp_path / "dead.log")
    try:
        wait_for("the dead run's baseline to train", lambda: training(docker_client, dead, 0), proc,
                 tmp_path / "dead.log")
        proc.send_signal(signal.SIGSTOP)                 # frozen: it starts no slot while its watchdogs are killed
        for pid in _watchdogs(dead):
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    locks = [os.open(repo / "runs" / dead / ".lock", os.O_RDWR)]    # held here until the next run starts, so that no
    fcntl.flock(locks[0], fcntl.LOCK_EX | fcntl.LOCK_NB)            # run of another test session removes them first
    lock = tmp_path / "live" / "runs" / live / ".lock"              # a live run: its lock held (here, by this test)
    lock.parent.mkdir(parents=True)
    locks.append(os.open(lock, os.O_RDWR | os.O_CREAT, 0o644))
    fcntl.flock(locks[1], fcntl.LOCK_EX)
    labels = spec.labels(live, "1", "train", cleanup.owner_labels(lock))
    kept = docker_client.containers.create(**spec.hardening(policy(), image=trial_image.tag, labels=labels,
                                                            name=spec.name(live, "1", "train")),
                                           command=["sleep", "600"], entrypoint=[])
    kept_volume = docker_client.volumes.create(name=spec.name(live, "1", "train-out"), labels=labels)
    log = tmp_path / "next.log"
    try:
        containers, volumes = leftovers(dead, None, docker_client)
        assert containers and volumes, "nothing was left to remove: the test proves nothing"
        os.close(locks.pop(0))                           # the dead run's lock is free: its runner is gone
        proc = start(repo, nxt, *args, "--max-trials", 1, log=log)
        try:
            wait_for("the next run to remove the dead run's", lambda: leftovers(dead, None, docker_client) ==
                     ([], []), proc, log, timeout=120)
            assert leftovers(live, None, docker_client) == ([kept], [kept_volume.name])
            proc.send_signal(signal.SIGINT)
            assert proc.wait(120) == 130
        finally:
            proc.kill()
        assert live not in log.read_text() and dead not in log.read_text(), log.read_text()   # no "cannot tell"
        assert leftovers(nxt, None, docker_client) == ([], [])
    finally:
        for fd in locks:
            os.close(fd)
        cleanup.remove_containers([kept])
        cleanup.remove_volumes(docker_client, [kept_volume.name])
        cleanup.remove_leftovers(dead, client=docker_client)    # after a failure: one failed test, not two


def test_a_failed_command_leaves_no_run_directory_and_a_run_removes_those_killed_runners_left(tmp_path):
    repo = experiment(tmp_path)
    killed, busy = repo / "runs" / "killed", repo / "runs" / "busy"    # a runner killed before run.json; a live one
    for d in (killed, busy):
        d.mkdir(parents=True)
        (d / ".lock").touch()
    fd = os.open(busy / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for args in (["run", "--tag", "nodata", "--data", tmp_path / "missing"],    # a UserError as the run opens
                     ["run", "--tag", "nosuch", "--resume"], ["baseline", "--tag", "nodata", "--data", tmp_path],
                     ["status", "--tag", "nosuch"], ["report", "--tag", "nosuch"],
                     ["reproduce", "1", "--tag", "nosuch"]):
            assert main([*map(str, args), "--repo", str(repo)]) == 1, args
        assert [p.name for p in (repo / "runs").glob("*")] == ["busy"]
    finally:
        os.close(fd)


def test_stop_signals_raise_with_the_signal_s_exit_code_and_leave_an_ignored_sighup_ignored():
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    with StopSignals():
        pass                                                    # a run that ends: the old handlers come back
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == before
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)          # as under nohup
    try:
        with pytest.raises(Stopped) as stopped, StopSignals():
            os.kill(os.getpid(), signal.SIGHUP)                 # ignored: the run outlives its terminal
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert exit_code(stopped.value) == 143 and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert exit_code(KeyboardInterrupt()) == 130


class _Slow:
    """A proposer that answers after ITEM_S."""
    name = "slow"

    def propose(self, ctx):
        time.sleep(ITEM_S)
        return Proposal({}, "late")


ITEM_S = 3.0                  # when what the main thread waits for arrives


def _waits() -> dict:
    """Each wait the run's main thread makes, on something that arrives after ITEM_S."""
    def later(fn):
        threading.Timer(ITEM_S, fn).start()
    q, plain = queue.Queue(), queue.Queue()
    pool = ThreadPoolExecutor(1)
    thread = threading.Thread(target=time.sleep, args=(ITEM_S,))
    proposals = Proposals(_Slow(), lambda: SimpleNamespace(trial_id=1), ahead=0)
    return {"signals.get (the loop's finished trials)": (lambda: later(lambda: q.put(1)), lambda: signals.get(q)),
            "signals.result (the baseline's runs)": (lambda: None,
                                                      lambda: signals.result(pool.submit(time.sleep, ITEM_S))),
            "signals.join (a slot being made)": (thread.start, lambda: signals.join(thread)),
            "Proposals.get (a slow proposer)": (proposals.start, proposals.get),
            "cleanup's sweep (as a run stops)": (lambda: None,
                                                 lambda: cleanup._each(lambda i: time.sleep(ITEM_S) or "", [1, 2])),
            "plain queue.get (the control)": (lambda: later(lambda: plain.put(1)), plain.get)}


@pytest.mark.parametrize("name", list(_waits()))
def test_a_stop_signal_the_kernel_hands_to_another_thread_still_stops_the_main_thread_s_wait_on_time(name):
    """The kernel may deliver a process's signal to any thread, and Python runs its handler on the main thread
    only when that thread runs Python code: a run blocked in a plain wait for its trial finished it and recorded
    it 5 s after SIGINT and SIGTERM (CI). Here the signal goes to another thread on purpose (pthread_kill); the
    control shows a plain wait does not see it until its item arrives."""
    start_item, wait = _waits()[name]
    t0 = time.monotonic()

    def other_thread():
        time.sleep(0.2)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    try:
        with pytest.raises(Stopped), StopSignals():
            start_item()
            threading.Thread(target=other_thread).start()
            wait()
            time.sleep(5)                                     # a wait that ends without the signal seen fails
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    seconds = time.monotonic() - t0
    if name.startswith("plain"):
        assert seconds >= ITEM_S - 0.1, f"the plain wait saw the signal after {seconds:.2f} s"
    else:
        assert seconds < 1.5, f"{name} saw the signal after {seconds:.2f} s"
