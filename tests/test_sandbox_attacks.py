"""Attacks from a hostile train.py against the real Docker engine: each one must be contained and classified.

Each candidate here is a small stand-in train.py; most import nothing heavy and exit quickly with a marker line
that the test reads back from the trial's log tail. The attacks that only have to be contained (network, writes,
validation-data hunts, fork and memory bombs, a model that is a link, and more) run through the real loop in
tests/adversarial/test_hostile_loop.py; these are the ones that pin down a classification or a timing.
"""
from __future__ import annotations

import time

import pytest

from runner.sandbox import containers
from tests.sandbox_kit import candidate, policy, trial

pytestmark = pytest.mark.docker


def test_a_trial_sleeping_past_its_deadline_is_killed_and_reported_over_budget(tmp_path, trial_image,
                                                                                 sandbox_data):
    cand = candidate(tmp_path, """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)       # ignoring the polite signal changes nothing
        if os.fork() == 0:
            os.setsid()                                     # a detached child must die with the container too
            time.sleep(3600)
        print("sleeping", flush=True)
        time.sleep(3600)
    """)
    timeout = 6
    t0 = time.monotonic()
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data,
                   pol=policy(train={"budget_seconds": 2, "allowance_seconds": timeout - 2}))
    elapsed = time.monotonic() - t0
    assert out.status == "over_budget", out.error
    assert "still running 6 s after its hand-over" in out.error
    assert timeout - 0.5 <= out.timings["train_host_s"] <= timeout + 3
    assert out.timings["train_wall_s"] <= timeout + 3                   # the engine's own clock agrees
    assert elapsed < timeout + 10
    assert out.val_bpb is None


def test_exit_86_is_export_failed_with_the_reason_from_export_error_txt(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        open("/out/export_error.txt", "w").write("torch.export failed: guard on a data-dependent shape\\n")
        raise SystemExit(86)
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "export_failed"
    assert out.error.endswith("guard on a data-dependent shape")


def test_a_clean_exit_without_a_model_is_export_failed(tmp_path, trial_image, sandbox_data):
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, "print('done')\n"), sandbox_data)
    assert out.status == "export_failed" and "does not exist" in out.error


def test_a_garbage_model_reaches_the_evaluator_and_is_export_failed(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        open("/out/model.pt2", "wb").write(b"PK\\x03\\x04 this is not an exported program" * 100)
        print("---")
        print("val_bpb: 0.0001")
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "export_failed", (out.status, out.error)
    assert out.error.startswith("the exported model is invalid")
    assert out.val_bpb is None and out.train_summary == {}
    assert out.result is not None and out.result["status"] == "invalid_model"


def test_a_candidate_without_train_py_is_a_crash_not_infra(tmp_path, trial_image, sandbox_data):
    empty = tmp_path / "empty-candidate"
    empty.mkdir()
    out, _ = trial(tmp_path, trial_image.tag, empty, sandbox_data)
    assert out.status == "crash" and "no regular file train.py" in out.error


def test_a_missing_image_is_infra_never_the_candidates_fault(tmp_path, sandbox_data, docker_client):
    out, _ = trial(tmp_path, "autoresearch-trial:cpu-000000000000", candidate(tmp_path, "pass\n"), sandbox_data)
    assert out.status == "infra" and "autoresearch build" in out.error


def test_log_lines_stream_to_the_callback_bounded(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        import sys
        print("step=1 loss=3.0 progress=0.1 remaining_s=5", flush=True)
        sys.stdout.write("A" * 100_000 + "\\n")
        for i in range(2000):
            print(f"line {i}")
        sys.stdout.flush()
    """)
    got = []
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data, on_line=got.append)
    # the trusted launcher's lines (stderr) in their order, then train.py's (stdout) in theirs; the engine logs
    # the two streams on separate readers, so under load a stdout line can come before an earlier stderr line
    launcher = [line for line in got if line.startswith("launch: ")]
    assert launcher[0].startswith("launch: calibration ") and launcher[1] == "launch: running train.py"
    assert [line for line in got if not line.startswith("launch: ")][0].startswith("step=1 ")
    assert max(len(l) for l in got) <= containers.MAX_LINE
    assert len(got) < 2002                                   # rate-bounded: the flood was cut
    assert out.log_tail.splitlines()[-1] == "line 1999"      # the tail comes from the engine's log


def test_a_hanging_callback_cannot_hang_the_trial(tmp_path, trial_image, sandbox_data):
    def stuck(line):
        time.sleep(3600)
    t0 = time.monotonic()
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, "print('hello')\n"), sandbox_data,
                   on_line=stuck)
    assert out.status == "export_failed"
    assert time.monotonic() - t0 < 30
