"""Outcome classification: each way a container can end maps to one status; infra is never the candidate's."""
from __future__ import annotations

import pytest

from runner.sandbox.classify import eval_verdict, train_verdict
from runner.sandbox.containers import Exit, engine_wall


def ex(code=0, oom=False, timed_out=False, engine_error=""):
    return Exit(exit_code=code, oom_killed=oom, timed_out=timed_out, started_at=None, finished_at=None,
                wall_s=None, host_wall_s=1.0, engine_error=engine_error)


T = dict(timeout_s=60, memory="2g")


@pytest.mark.parametrize("exit, status", [
    (ex(137, timed_out=True), "timeout"),
    (ex(137, oom=True), "oom"),
    (ex(137, oom=True, timed_out=True), "timeout"),
    (ex(86), "export_failed"),
    (ex(1), "crash"),
    (ex(137), "crash"),                  # killed by itself, not by the OOM killer
    (ex(127, engine_error="exec: not found"), "infra"),
])
def test_train_exits_map_to_statuses(exit, status):
    assert train_verdict(exit, **T, log_tail="boom\nlast words").status == status


def test_a_clean_train_exit_needs_no_verdict():
    assert train_verdict(ex(0), **T) is None


def test_export_failure_quotes_export_error_txt_and_crash_quotes_the_log():
    v = train_verdict(ex(86), **T, export_error="torch.export failed: data-dependent shape\n")
    assert v.error.endswith("torch.export failed: data-dependent shape")
    v = train_verdict(ex(3), **T, log_tail="Traceback...\nValueError: bad lr\n")
    assert v.error == "train.py exited with code 3: ValueError: bad lr"


OK = {"status": "ok", "val_bpb": 1.5}


@pytest.mark.parametrize("exit, result, result_error, status", [
    (ex(0), OK, "", "ok"),
    (ex(0), {"status": "invalid_model", "error": "wrong output shape"}, "", "export_failed"),
    (ex(0), {"status": "violation", "error": "causality"}, "", "violation"),
    (ex(0), None, "result.json is not valid JSON", "infra"),
    (ex(0), None, "", "infra"),
    (ex(2), None, "", "infra"),                    # the evaluator could not run: not the candidate's fault
    (ex(139), None, "", "crash"),                  # SIGSEGV while loading the candidate's model
    (ex(137, oom=True), None, "", "oom"),
    (ex(137, timed_out=True), None, "", "timeout"),
])
def test_eval_exits_and_results_map_to_statuses(exit, result, result_error, status):
    assert eval_verdict(exit, **T, result=result, result_error=result_error).status == status


def test_eval_verdicts_carry_the_reason():
    assert "wrong output shape" in eval_verdict(ex(0), **T, result={"status": "invalid_model",
                                                                    "error": "wrong output shape"}).error
    assert eval_verdict(ex(0), **T, result=OK).error == ""


def test_engine_wall_time_comes_from_started_and_finished_at():
    state = {"StartedAt": "2026-11-25T03:29:53.857813624Z", "FinishedAt": "2026-11-25T03:30:09.505743413Z"}
    assert engine_wall(state) == pytest.approx(15.64793, abs=1e-5)
    assert engine_wall({"StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}) is None
