"""Fault injection: the Docker engine stopped and started again (dockerd, by its pid) in the middle of a trial.

The trial the engine dropped is `infra` (never the candidate's fault), and so is any trial started while the
engine is still down; the run either carries on once the engine answers again or stops with one line after
MAX_INFRA_IN_A_ROW `infra` trials in a row, and `--resume` then finishes it: every trial in the ledger exactly
once, the later trials real outcomes, the branch at the best, nothing of the run left on the engine.

Stopping the engine stops every container on it, so this module is marked `engine_restart` and runs after every
other test of the session (tests/adversarial/conftest.py), and it always leaves an engine running: the one it
started, with the stopped daemon's own command line and environment, the way .ci/setup-docker.sh starts one.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runner.loop import MAX_INFRA_IN_A_ROW
from tests.adversarial.conftest import run_tag
from tests.adversarial.faultkit import (assert_intact, cli, experiment, ledger_trials, policy_file, start,
                                        training, wait_for)

pytestmark = [pytest.mark.docker, pytest.mark.engine_restart,
              pytest.mark.skipif(os.geteuid() != 0, reason="stopping and starting dockerd needs root")]

TRIALS = 5                  # candidates: room for the run to go on after the infra trials of the restart
ENGINE_STOP_S = 60          # how long dockerd may take to stop its containers and exit
ENGINE_START_S = 90         # how long a new dockerd may take to answer `docker info`
DOCKERD_LOG = Path("/var/log/dockerd.log")


def dockerd() -> tuple[int, list[str], dict] | None:
    """(pid, argv, environment) of the running dockerd, or None."""
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "comm").read_text().strip() == "dockerd":
                argv = [a.decode() for a in (p / "cmdline").read_bytes().split(b"\0") if a]
                env = dict(kv.decode().split("=", 1) for kv in (p / "environ").read_bytes().split(b"\0") if b"=" in kv)
                return int(p.name), argv, env
        except (OSError, ValueError):
            continue
    return None


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def stop_engine() -> tuple[list[str], dict]:
    pid, argv, env = dockerd()
    os.kill(pid, signal.SIGTERM)
    wait_for("dockerd to exit", lambda: gone(pid), timeout=ENGINE_STOP_S)
    return argv, env


def gone(pid: int) -> bool:
    """The process has exited (a zombie its parent has not reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def start_engine(argv: list[str], env: dict) -> None:
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                         stdin=subprocess.DEVNULL)
    wait_for("the restarted engine to answer `docker info`", engine_answers, timeout=ENGINE_START_S, every=1)


@pytest.fixture
def engine_left_running():
    """Whatever happens in the test, an engine is running afterwards."""
    found = dockerd()
    assert found is not None and engine_answers(), "no running dockerd to restart"
    yield found
    if dockerd() is None:
        start_engine(found[1], found[2])
    wait_for("the engine to answer", engine_answers, timeout=ENGINE_START_S, every=1)


def test_the_engine_restarted_mid_trial_makes_that_trial_infra_and_the_run_resumes(
        tmp_path, trial_image, sandbox_data, docker_client, engine_left_running):
    repo, tag, log = experiment(tmp_path), run_tag("engine"), tmp_path / "run.log"
    proc = start(repo, tag, "--policy", policy_file(tmp_path), "--data", sandbox_data, "--image", trial_image.tag,
                 "--max-trials", TRIALS, log=log)
    try:
        wait_for("trial 1 to start training", lambda: training(docker_client, tag, 1), proc, log)
        argv, env = stop_engine()
        time.sleep(2)                                  # the runner sees the engine gone
        start_engine(argv, env)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert "Traceback" not in out, out[-3000:]
    trials = ledger_trials(repo, tag)
    assert trials[:2] == [0, 1], out[-3000:]
    if rc != 0:                                        # stopped after infra trials in a row: one line, then resume
        assert out.strip().splitlines()[-1].startswith("autoresearch: error: "), out[-3000:]
        p = cli("run", "--repo", repo, "--tag", tag, "--resume", "--plain")
        assert p.returncode == 0, p.stdout + p.stderr
    recs = assert_intact(repo, tag, docker_client, trials=TRIALS)
    statuses = [(r.trial, r.status, r.reason) for r in recs]
    assert recs[1].status == "infra", statuses                     # the trial the engine dropped
    infra = [r for r in recs if r.status == "infra"]
    assert all("engine" in r.reason.lower() for r in infra), statuses   # each blamed on the engine, by name
    assert len(infra) <= MAX_INFRA_IN_A_ROW and recs[-1].status != "infra", statuses   # and the run went on
