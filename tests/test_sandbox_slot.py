"""Slots: a run starts the next trial's containers as the current one's export starts (runner/sandbox/slot.py), on
the real engine. The next trial runs in them exactly as in containers made for it, with its own seed; a slot that
waits takes no CPU weight from a training; a candidate that never exports still gets its successor a slot;
nothing outlives the run."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from runner.sandbox import cleanup, spec
from runner.sandbox.slot import Standby
from runner.executor import TrialSpec
from runner.sandbox.trial import run_trial
from tests.sandbox_kit import REAL_TRAIN_PY, TEST_RUN_PREFIX, candidate, policy

pytestmark = pytest.mark.docker

STEPS = 3
POLICY = dict(train={"budget_seconds": 60, "allowance_seconds": 120, "max_steps": STEPS})


def _run_tag() -> str:
    return f"{TEST_RUN_PREFIX}-{os.getpid()}-slot{uuid.uuid4().hex[:4]}"


def _trial(tmp_path, image, data, pol, tag, standby, seed, on_phase=None, trial_id=None, on_line=None,
           source=None):
    spec_ = TrialSpec(run_tag=tag, trial_id=trial_id or uuid.uuid4().hex[:8],
                      candidate_dir=candidate(tmp_path, source or REAL_TRAIN_PY.read_text()),
                      data_dir=data, policy=pol, image=image, seed=seed,
                      work_dir=Path(tmp_path) / f"work-{uuid.uuid4().hex[:6]}")
    return run_trial(spec_, on_line=on_line, on_phase=on_phase, standby=standby)


def _shares(client, container) -> int:
    return client.containers.get(container.id).attrs["HostConfig"]["CpuShares"]


def test_the_next_trial_runs_in_the_slot_started_during_this_one_with_its_own_seed(tmp_path, docker_client,
                                                                                  trial_image, sandbox_data):
    pol, tag = policy(**POLICY), _run_tag()
    standby = Standby(pol, image=trial_image.tag, data_dir=sandbox_data, run_tag=tag, base_dir=tmp_path / "slots")
    try:
        last_step_seen = []
        first = _trial(tmp_path, trial_image.tag, sandbox_data, pol, tag, standby, seed=11, trial_id="1st",
                       on_line=lambda line: line.startswith("step=") and last_step_seen.append(time.monotonic()))
        assert first.status == "ok", (first.error, first.log_tail)
        assert first.timings["slot_prestarted"] is False
        assert first.timings["train_exporting_s"] > first.timings["train_startup_s"] > first.timings["train_launched_s"]
        standby.wait()
        waiting = standby.slot                                   # started as the first trial's export started:
        assert waiting is not None and waiting.alive()
        assert waiting.started_at > last_step_seen[-1]           # not beside its training
        assert _shares(docker_client, waiting.train) == spec.WAITING_TRAIN_CPU_SHARES
        assert _shares(docker_client, waiting.evaluator) == spec.WAITING_EVAL_CPU_SHARES

        seen_while_scoring = []
        second = _trial(tmp_path, trial_image.tag, sandbox_data, pol, tag, standby, seed=11, trial_id="2nd",
                        on_phase=lambda p: p == "evaluating" and seen_while_scoring.extend(
                            [_shares(docker_client, waiting.train), _shares(docker_client, waiting.evaluator),
                             docker_client.containers.get(waiting.train.id).name]))
        assert second.status == "ok", (second.error, second.log_tail)
        assert second.timings["slot_prestarted"] is True
        assert seen_while_scoring == [spec.RUNNING_CPU_SHARES, spec.RUNNING_CPU_SHARES,    # raised at the hand-overs
                                      spec.name(tag, "2nd", "train")]                     # named after the trial
        assert second.val_bpb == first.val_bpb                   # same candidate, same seed, same steps: same score
        standby.wait()                                           # the first trial's slot went with the third's start
        assert cleanup.leftovers(tag, "1st", docker_client) == ([], [])
        assert cleanup.leftovers(tag, waiting.id, docker_client) != ([], [])  # used by the second: still there

        third = _trial(tmp_path, trial_image.tag, sandbox_data, pol, tag, standby, seed=12)
        assert third.status == "ok" and third.timings["slot_prestarted"] is True
        assert third.val_bpb != first.val_bpb                    # the handed-over seed reached train.py
        standby.wait()
        assert cleanup.leftovers(tag, waiting.id, docker_client) == ([], [])  # removed as the third exported
    finally:
        assert standby.close() == []
    assert cleanup.leftovers(tag, None, docker_client) == ([], [])
    assert not any((tmp_path / "slots").iterdir())


def test_a_candidate_that_crashes_before_its_export_still_gets_the_next_trial_a_slot(tmp_path, docker_client,
                                                                                     trial_image, sandbox_data):
    pol, tag = policy(**POLICY), _run_tag()
    standby = Standby(pol, image=trial_image.tag, data_dir=sandbox_data, run_tag=tag, base_dir=tmp_path / "slots")
    try:
        crashed = _trial(tmp_path, trial_image.tag, sandbox_data, pol, tag, standby, seed=11,
                         source="raise SystemExit(3)\n")
        assert crashed.status == "crash" and "train_exporting_s" not in crashed.timings
        standby.wait()
        assert standby.slot is not None and standby.slot.alive()
        after = _trial(tmp_path, trial_image.tag, sandbox_data, pol, tag, standby, seed=11)
        assert after.status == "ok" and after.timings["slot_prestarted"] is True
    finally:
        assert standby.close() == []
    assert cleanup.leftovers(tag, None, docker_client) == ([], [])


def test_a_waiting_slot_that_died_or_was_made_for_another_policy_is_not_taken(tmp_path, docker_client, trial_image,
                                                                             sandbox_data):
    pol, tag = policy(**POLICY), _run_tag()
    standby = Standby(pol, image=trial_image.tag, data_dir=sandbox_data, run_tag=tag, base_dir=tmp_path / "slots")
    try:
        standby.prepare(docker_client)
        dead = standby.slot
        dead.train.kill()
        assert standby.take(pol, trial_image.tag, sandbox_data) is None
        assert cleanup.leftovers(tag, dead.id, docker_client) == ([], [])   # removed, not leaked

        standby.prepare(docker_client)
        other = policy(train={**POLICY["train"], "budget_seconds": 61})
        assert standby.take(other, trial_image.tag, sandbox_data) is None
        assert cleanup.leftovers(tag, None, docker_client) == ([], [])
    finally:
        standby.close()
