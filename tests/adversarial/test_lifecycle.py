"""Containers never outlive their deadline, and a container the candidate did not end is never blamed on it (issue
16.4, 16.5), with the real engine.

16.4: a runner killed with SIGKILL in the middle of a never-ending trial leaves nothing running (its slot's
watchdog removes the slot at once, runner/sandbox/watchdog.py); a runner stopped with SIGSTOP still cannot keep
its train container past the deadline (the watchdog kills it at deadline + GRACE_S, and the runner, continued,
records over_budget); a run that ends normally leaves no watchdog process behind.
16.5: an operator's `docker kill` of the train or the eval container, or removing the holder mid-training, gives
`infra` naming the cause; a candidate that SIGKILLs itself, or exits 3 (the launcher's own hand-over failure
code), stays `crash`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker.errors
import pytest

from runner.ledger import Ledger
from runner.sandbox.spec import LABEL_ROLE, LABEL_RUN, LABEL_TRIAL
from runner.sandbox.watchdog import GRACE_S
from runner.workspace import init_repo
from tests.adversarial.conftest import run_tag
from tests.sandbox_kit import TEST_RUN_PREFIX, candidate, policy, real_candidate, trial

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
READY = "candidate: training"
NEVER_ENDS = f"""
import time
print({READY!r}, flush=True)
while True:
    time.sleep(0.1)
"""
LATE_S = 1.5                 # what the test's own polling and the engine's removal may add to a bound
FIND_S = 240                 # how long a trial may take to reach its candidate's first line (image build aside)
WATCHDOG_CODE = b"from runner.sandbox import watchdog"   # in every watchdog's command line


# --------------------------------------------------------------------------- helpers

def _role(client, *, trial_id=None, tag=None, role: str):
    """The container of that role, by its labels (a sandbox_kit trial's run tag unless `tag` is given)."""
    tag = tag or f"{TEST_RUN_PREFIX}-{os.getpid()}"
    labels = [f"{LABEL_ROLE}={role}", f"{LABEL_RUN}={tag}"] + ([f"{LABEL_TRIAL}={trial_id}"] if trial_id else [])
    found = client.containers.list(all=True, filters={"label": labels})
    return found[0] if found else None


def _on_ready(client, trial_id: str, act):
    """An on_line callback that runs act(client, trial_id) once, on its own thread, at the candidate's READY line."""
    done = threading.Event()

    def on_line(line: str) -> None:
        if line == READY and not done.is_set():
            done.set()
            threading.Thread(target=act, args=(client, trial_id), daemon=True).start()
    return on_line, done


def _watchdogs(tag: str) -> list[int]:
    """Pids of live (not zombie) watchdog processes of the run `tag`."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(WATCHDOG_CODE in a for a in argv) and tag.encode() in argv:
            pids.append(int(p.name))
    return pids


def _labelled(client, tag) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={tag}"})


def _repo(tmp_path, source: str) -> Path:
    repo = tmp_path / "exp"
    init_repo(repo, {"train.py": source.lstrip(), "program.md": "p\n", ".gitignore": "runs/\n"})
    return repo


def _policy_file(tmp_path, budget: float, allowance: float, max_steps: int | None = None) -> Path:
    steps = f", max_steps: {max_steps}" if max_steps else ""
    path = tmp_path / "policy.yaml"
    path.write_text("preset: tiny\nflavour: cpu\n"
                    f"train: {{budget_seconds: {budget}, allowance_seconds: {allowance}{steps}}}\n"
                    "eval: {timeout_seconds: 120}\nlimits: {memory: 2g, cpus: 2.0, pids: 128}\n"
                    "decision: {min_delta: 0.0}\nproposer: {kind: mutate}\n")
    return path


def _baseline(tmp_path, repo, tag, pol, image, data) -> subprocess.Popen:
    """`autoresearch baseline` as its own process (python -m runner.cli: the pid is the runner's own)."""
    log = open(tmp_path / "runner.log", "w")
    return subprocess.Popen([sys.executable, "-m", "runner.cli", "baseline", "--repo", str(repo), "--tag", tag,
                             "--policy", str(pol), "--data", str(data), "--image", image, "--plain"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_for_candidate(client, proc, tmp_path, tag):
    """The running train container of the run once its candidate printed READY, and the hand-over's wall time
    (the mtime of the train.py the host renamed into the slot: the deadline counts from there)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < FIND_S:
        assert proc.poll() is None, (tmp_path / "runner.log").read_text()
        c = _role(client, tag=tag, role="train")
        if c is not None and c.status == "running" and READY.encode() in _logs(c):
            handed = [p.stat().st_mtime for p in (tmp_path / "exp" / "runs" / tag).rglob("train/train.py")]
            assert len(handed) == 1, handed
            return c, handed[0]
        time.sleep(0.3)
    raise AssertionError("the candidate never started training")


def _logs(c) -> bytes:
    try:
        return c.logs()
    except docker.errors.APIError:                 # being removed
        return b""


def _running(client, c) -> bool:
    try:
        return client.containers.get(c.id).status == "running"
    except docker.errors.NotFound:
        return False


# --------------------------------------------------------------------------- 16.5: who ended it

def test_an_operators_docker_kill_of_the_train_container_mid_training_is_infra(tmp_path, trial_image, sandbox_data,
                                                                               docker_client):
    on_line, seen = _on_ready(docker_client, "kill-train", lambda c, t: _role(c, trial_id=t, role="train").kill())
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, NEVER_ENDS), sandbox_data, trial_id="kill-train",
                   on_line=on_line)
    assert seen.is_set()
    assert out.status == "infra", (out.status, out.error)
    assert out.error == "the train container was killed from outside (docker kill, signal 9), not by the candidate"


def test_an_operators_docker_stop_of_the_train_container_is_infra(tmp_path, trial_image, sandbox_data,
                                                                  docker_client):
    on_line, _ = _on_ready(docker_client, "stop-train",
                           lambda c, t: _role(c, trial_id=t, role="train").stop(timeout=1))
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, NEVER_ENDS), sandbox_data, trial_id="stop-train",
                   on_line=on_line)
    assert (out.status, out.error) == ("infra", "the train container was stopped from outside (docker stop), not "
                                                "by the candidate")


def test_an_operators_docker_rm_of_the_train_container_mid_training_is_infra(tmp_path, trial_image, sandbox_data,
                                                                             docker_client):
    on_line, _ = _on_ready(docker_client, "rm-train",
                           lambda c, t: _role(c, trial_id=t, role="train").remove(force=True))
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, NEVER_ENDS), sandbox_data, trial_id="rm-train",
                   on_line=on_line)
    assert (out.status, out.error) == ("infra", "the train container was removed from outside (docker rm), not by "
                                                "the candidate")


def test_an_operators_docker_kill_of_the_eval_container_mid_evaluation_is_infra(tmp_path, trial_image,
                                                                                sandbox_data, docker_client):
    killed = []

    def on_phase(phase: str) -> None:
        if phase == "evaluating":
            c = _role(docker_client, trial_id="kill-eval", role="eval")
            c.kill()
            killed.append(c.id)
    pol = policy(train={"budget_seconds": 30, "allowance_seconds": 60, "max_steps": 2})
    out, _ = trial(tmp_path, trial_image.tag, real_candidate(tmp_path), sandbox_data, pol=pol, trial_id="kill-eval",
                   on_phase=on_phase)
    assert killed
    assert (out.status, out.error) == ("infra", "the eval container was killed from outside (docker kill, signal "
                                                "9), not by the candidate")


def test_removing_the_holder_mid_training_is_infra_not_export_failed(tmp_path, trial_image, sandbox_data,
                                                                    docker_client):
    source = f"""
        import os, time
        print({READY!r}, flush=True)
        time.sleep(2)
        with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.pt2"), "wb") as f:
            f.write(b"a model")
    """
    on_line, seen = _on_ready(docker_client, "rm-holder",
                              lambda c, t: _role(c, trial_id=t, role="holder").remove(force=True))
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, source), sandbox_data, trial_id="rm-holder",
                   on_line=on_line)
    assert seen.is_set()
    assert (out.status, out.error) == ("infra", "the holder container, which keeps the trial's outputs, was removed "
                                                "from outside (docker rm), not by the candidate")


def test_a_candidate_that_sigkills_itself_is_a_crash(tmp_path, trial_image, sandbox_data):
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, """
        import os, signal
        print("going", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """), sandbox_data)
    assert out.status == "crash" and "code 137" in out.error, (out.status, out.error)


def test_a_candidate_that_exits_3_like_the_launchers_hand_over_failure_is_a_crash(tmp_path, trial_image,
                                                                                   sandbox_data):
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, """
        import sys
        print("launch: no train.py was handed over at /work/train.py within 7200 s", file=sys.stderr)
        sys.exit(3)
    """), sandbox_data)
    assert out.status == "crash" and "code 3" in out.error, (out.status, out.error)


# --------------------------------------------------------------------------- 16.4: deadlines without a runner

def test_a_runner_killed_mid_trial_leaves_no_container_past_its_deadline(tmp_path, trial_image, sandbox_data,
                                                                         docker_client):
    tag, budget, allowance = run_tag("killed"), 2, 40
    proc = _baseline(tmp_path, _repo(tmp_path, NEVER_ENDS), tag, _policy_file(tmp_path, budget, allowance),
                     trial_image.tag, sandbox_data)
    try:
        _, handed = _wait_for_candidate(docker_client, proc, tmp_path, tag)
        assert _watchdogs(tag), "no watchdog process found for the run (the search itself is broken)"
        proc.send_signal(signal.SIGKILL)
        killed = time.time()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bound = handed + budget + allowance + GRACE_S + LATE_S
    while _labelled(docker_client, tag) and time.time() < bound:
        time.sleep(0.2)
    assert not _labelled(docker_client, tag), f"left running past the deadline: {_labelled(docker_client, tag)}"
    print(f"the dead runner's slot was gone {time.time() - killed:.1f} s after the kill, "
          f"{time.time() - handed:.1f} s after the hand-over (deadline {budget + allowance} s)")
    assert not docker_client.volumes.list(filters={"label": f"{LABEL_RUN}={tag}"})
    t0 = time.monotonic()
    while _watchdogs(tag) and time.monotonic() - t0 < 10:
        time.sleep(0.2)
    assert not _watchdogs(tag), "a watchdog outlived the slot it guarded"


def test_a_stopped_runner_cannot_keep_its_train_container_past_the_deadline(tmp_path, trial_image, sandbox_data,
                                                                            docker_client):
    tag, budget, allowance = run_tag("stopped"), 2, 30
    repo = _repo(tmp_path, NEVER_ENDS)
    proc = _baseline(tmp_path, repo, tag, _policy_file(tmp_path, budget, allowance), trial_image.tag, sandbox_data)
    try:
        train, handed = _wait_for_candidate(docker_client, proc, tmp_path, tag)
        proc.send_signal(signal.SIGSTOP)                         # alive, but enforcing nothing
        deadline = handed + budget + allowance
        while _running(docker_client, train) and time.time() < deadline + GRACE_S + LATE_S:
            time.sleep(0.2)
        ended = time.time()
        assert not _running(docker_client, train), "the train container ran on past its deadline"
        assert ended >= deadline, "killed before its deadline"
        print(f"killed {ended - deadline:.1f} s after its deadline (grace {GRACE_S} s)")
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(120) == 1                               # the baseline failed: the run stops, normally
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    rec = Ledger(repo / "runs" / tag).records()[0]
    assert rec.status == "over_budget", (rec.status, rec.reason)
    assert not _watchdogs(tag) and not _labelled(docker_client, tag)


def test_a_run_that_ends_normally_leaves_no_watchdog_process(tmp_path, trial_image, sandbox_data, docker_client):
    """Both hand-overs, the next trial's slot started ahead, and the run's own end (the baseline's model is
    refused, so the run stops with its one-line error: quick, whatever the evaluator's speed)."""
    tag = run_tag("normal")
    repo = _repo(tmp_path, """
import os
print("harness: exporting model.pt2", flush=True)
with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.pt2"), "wb") as f:
    f.write(b"not a model")
""")
    proc = _baseline(tmp_path, repo, tag, _policy_file(tmp_path, 30, 60), trial_image.tag, sandbox_data)
    seen = []
    try:
        while proc.poll() is None:
            seen += [p for p in _watchdogs(tag) if p not in seen]
            time.sleep(0.1)
        log = (tmp_path / "runner.log").read_text()
        assert proc.returncode == 1 and log.strip().splitlines()[-1].startswith("autoresearch: error: "), log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rec = Ledger(repo / "runs" / tag).records()[0]
    assert rec.status == "export_failed" and "the exported model is invalid" in rec.reason, (rec.status, rec.reason)
    assert len(seen) >= 2, f"watchdogs seen: {seen} (one per slot: the trial's and the next one's)"
    assert not _watchdogs(tag), "a watchdog process outlived a run that ended normally"
    assert not any(Path(f"/proc/{p}").exists() for p in seen), "a watchdog was left, if only as a zombie"
    assert not _labelled(docker_client, tag)
