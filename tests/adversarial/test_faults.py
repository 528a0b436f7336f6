"""Fault injection against a real `autoresearch run`: the runner killed with SIGKILL mid-trial, and the host disk
under the run directory filled up mid-run. After each, `--resume` finishes the run with nothing lost, no trial in
the ledger twice, every status a real outcome, the branch at the best and nothing left on the engine.
(The engine restarted mid-trial is in test_engine_restart.py, which runs last.)
"""
from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from runner.ledger import Ledger
from tests.adversarial.conftest import run_tag
from tests.adversarial.faultkit import (assert_intact, cli, experiment, ledger_trials, policy_file, start,
                                        training, wait_for, wait_gone)

pytestmark = pytest.mark.docker

OUTCOMES = ("keep", "discard", "crash", "export_failed", "violation")   # what mutate's honest edits may end as
RUNS_TMPFS_MB = 48                       # the run directory's own small disk in the disk-full test


def frozen(rec) -> tuple:
    return rec.trial, rec.commit, rec.status, rec.val_bpb, rec.started_at


def test_a_runner_killed_with_sigkill_mid_trial_resumes_with_no_trial_lost_or_run_twice(
        tmp_path, trial_image, sandbox_data, docker_client):
    repo, tag, log = experiment(tmp_path), run_tag("kill9"), tmp_path / "run.log"
    proc = start(repo, tag, "--policy", policy_file(tmp_path), "--data", sandbox_data, "--image", trial_image.tag,
                 "--max-trials", 3, log=log)
    try:
        wait_for("trial 2 to start training", lambda: training(docker_client, tag, 2), proc, log)
    finally:
        proc.kill()                                        # SIGKILL: no handler, no clean-up of its own
        proc.wait()
    assert ledger_trials(repo, tag) == [0, 1], log.read_text()[-2000:]
    done = [frozen(r) for r in Ledger(repo / "runs" / tag).records()]
    wait_gone(docker_client, tag)                          # the slots' watchdogs removed them: no runner needed

    p = cli("run", "--repo", repo, "--tag", tag, "--resume", "--plain")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resumed after 2 trials" in p.stdout
    recs = assert_intact(repo, tag, docker_client, trials=3)
    assert [frozen(r) for r in recs[:2]] == done           # the finished trials were not run again
    assert all(r.status in OUTCOMES for r in recs), [(r.trial, r.status, r.reason) for r in recs]
    assert (repo / "runs" / tag / "trials" / "2" / "train.log").stat().st_size > 0   # trial 2 ran, once, anew


def fill(path) -> int:
    """Write zeros into `path` until the disk is full; returns the bytes written."""
    n, chunk = 0, b"\0" * (1 << 20)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
                n += len(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return n


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs for the run directory needs root")
def test_a_full_disk_under_the_run_directory_stops_the_run_with_one_line_and_resume_continues(
        tmp_path, trial_image, sandbox_data, docker_client):
    repo, tag, log = experiment(tmp_path), run_tag("diskfull"), tmp_path / "run.log"
    runs = repo / "runs"
    runs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={RUNS_TMPFS_MB}m,mode=0755", "tmpfs", str(runs)],
                   check=True)
    try:
        proc = start(repo, tag, "--policy", policy_file(tmp_path), "--data", sandbox_data, "--image",
                     trial_image.tag, "--max-trials", 2, log=log)
        try:
            wait_for("the baseline's ledger line", lambda: ledger_trials(repo, tag) == [0], proc, log)
            filler = runs / "filler"
            assert fill(filler) > 0
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out = log.read_text()
        assert rc != 0, out[-3000:]
        last = out.strip().splitlines()[-1]
        assert last.startswith("autoresearch: error: ") and "no space left" in last.lower(), out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        rows = [json.loads(line) for line in (runs / tag / "trials.jsonl").read_text().splitlines()
                if line.strip()]                            # parseable (a torn last line is cut on --resume)
        assert [r["trial"] for r in rows][:1] == [0] and len(rows) <= 2
        wait_gone(docker_client, tag)

        filler.unlink()                                      # space freed: the run continues
        p = cli("run", "--repo", repo, "--tag", tag, "--resume", "--plain")
        assert p.returncode == 0, p.stdout + p.stderr
        recs = assert_intact(repo, tag, docker_client, trials=2)
        assert all(r.status in OUTCOMES for r in recs), [(r.trial, r.status, r.reason) for r in recs]
    finally:
        subprocess.run(["umount", "-l", str(runs)], check=False)
