"""Outcome classification: each way a container can end maps to one status; infra is never the candidate's."""
from __future__ import annotations

import pytest

from runner.sandbox.classify import ENGINE_SLACK_S, TrainTime, eval_verdict, train_time_verdict, train_verdict
from runner.sandbox.containers import Exit, engine_wall


def ex(code=0, oom=False, timed_out=False, engine_error=""):
    return Exit(exit_code=code, oom_killed=oom, timed_out=timed_out, started_at=None, finished_at=None,
                wall_s=None, host_wall_s=1.0, engine_error=engine_error)


T = dict(timeout_s=60, memory="2g")
TRAIN = dict(deadline_s=60, memory="2g")


@pytest.mark.parametrize("exit, status", [
    (ex(137, timed_out=True), "over_budget"),      # killed at the deadline: the candidate's, and never kept
    (ex(137, oom=True), "oom"),
    (ex(137, oom=True, timed_out=True), "over_budget"),
    (ex(86), "export_failed"),
    (ex(1), "crash"),
    (ex(137), "crash"),                  # killed by itself, not by the OOM killer
    (ex(127, engine_error="exec: not found"), "infra"),
])
def test_train_exits_map_to_statuses(exit, status):
    assert train_verdict(exit, **TRAIN, log_tail="boom\nlast words").status == status


def test_a_clean_train_exit_needs_no_verdict():
    assert train_verdict(ex(0), **TRAIN) is None


def test_export_failure_quotes_export_error_txt_and_crash_quotes_the_log():
    v = train_verdict(ex(86), **TRAIN, export_error="torch.export failed: data-dependent shape\n")
    assert v.error.endswith("torch.export failed: data-dependent shape")
    v = train_verdict(ex(3), **TRAIN, log_tail="Traceback...\nValueError: bad lr\n")
    assert v.error == "train.py exited with code 3: ValueError: bad lr"


BUDGET = dict(budget_s=8, allowance_s=12, cpu_allowance_s=4)   # deadline 20 s; CPU 2 cores x 8 s + 4 = 20 s


@pytest.mark.parametrize("t, status", [
    (TrainTime(host_s=19.9, engine_s=19.8, cpu_s=19.9, cpu_quota_cores=2.0), None),     # inside: no verdict
    (TrainTime(host_s=20.0), None),                                                      # at the deadline exactly
    (TrainTime(host_s=20.01), "over_budget"),                                            # the host's clock
    (TrainTime(host_s=19.0, engine_s=20.0 + ENGINE_SLACK_S + 0.01), "over_budget"),     # the engine's clock
    (TrainTime(host_s=19.0, engine_s=20.0 + ENGINE_SLACK_S), None),                     # its lag is allowed
    (TrainTime(host_s=10.0, cpu_s=20.01, cpu_quota_cores=2.0), "over_budget"),          # CPU: quick but too much
    (TrainTime(host_s=10.0, cpu_s=20.0, cpu_quota_cores=2.0), None),                    # CPU exactly at the bound
    (TrainTime(host_s=10.0, cpu_s=28.0, cpu_quota_cores=3.0), None),                    # the bound follows the quota
    (TrainTime(host_s=10.0, cpu_s=45.0, cpu_quota_cores=None), None),                   # no quota: no CPU bound
    (TrainTime(host_s=10.0, cpu_s=None, cpu_quota_cores=2.0), None),                    # cgroup unreadable
    (TrainTime(host_s=5.0, killed=True), "over_budget"),                                 # killed by the host
    (TrainTime(host_s=None, engine_s=None), None),                                       # nothing measured
])
def test_the_train_phase_over_budget_plus_allowance_by_any_outside_measure_is_over_budget(t, status):
    v = train_time_verdict(t, **BUDGET)
    assert (v.status if v else None) == status


def test_without_a_cpu_allowance_the_cpu_time_decides_nothing():
    assert train_time_verdict(TrainTime(host_s=10.0, cpu_s=99.0, cpu_quota_cores=2.0), budget_s=8,
                              allowance_s=12) is None


def test_the_over_budget_reason_names_the_budget_the_allowance_and_the_measure():
    v = train_time_verdict(TrainTime(host_s=31.25), **BUDGET)
    assert v.error.startswith("the train phase took 31.2 s on the host's clock")
    assert "budget of 8 s" in v.error and "allowance of 12 s" in v.error and "\n" not in v.error
    assert "still running 20 s after its hand-over" in train_time_verdict(TrainTime(20.5, killed=True), **BUDGET).error
    v = train_time_verdict(TrainTime(host_s=10.0, cpu_s=25.0, cpu_quota_cores=2.0), **BUDGET)
    assert v.error.startswith("the train container used 25.0 CPU seconds, over 20 (2 cores x the budget of 8 s")


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
