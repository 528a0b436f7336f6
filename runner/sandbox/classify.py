"""Outcome classification: how each container ended -> one trial status and a one-line reason. TRUSTED CODE.

Pure functions, no engine calls. Statuses: ok, crash, timeout, over_budget, oom, export_failed, violation, infra.
`infra` means the machinery failed (engine, image, evaluator that could not run) and is never blamed on the
candidate; every other non-ok status is the candidate's.

train time (`train_time_verdict`, judged first): the train phase's time is measured outside the candidate's
process, from the hand-over of its train.py to the container's exit, by the host's monotonic clock (`host_s`)
and by the engine's FinishedAt (`engine_s`), and its CPU time by the container's cgroup (`cpu_s`, under a CFS
quota of `cpu_quota_cores`). Killed at the deadline (budget + allowance), or either clock over it (the engine's
with ENGINE_SLACK_S for its own lag), or CPU time over quota x budget + the CPU allowance -> over_budget: the
candidate trained longer than everyone else may, whatever its own process believed its budget was. It is never
kept. A measure that could not be taken (None) decides nothing; the host's clock is always there.
train phase: killed at the deadline -> over_budget; OOMKilled -> oom; exit EXPORT_FAILED (86, trainer.contract) ->
export_failed; any other non-zero exit -> crash; exit 0 but no usable model.pt2 -> export_failed.
eval phase (trusted code on the candidate's exported model): timeout -> timeout; OOMKilled -> oom; killed by a
signal -> crash (the model crashed the loader); any other non-zero exit -> infra (the evaluator exits non-zero
only when it cannot run: missing data, a broken image); a result.json that fails validation -> infra; result
status invalid_model -> export_failed; violation -> violation; ok -> ok.
from outside (`outside_verdict`, `holder_verdict`, `launch_verdict`, judged last): a container that the engine
says was killed, stopped or removed by an API call the host did not make (an operator's `docker kill`, the
engine's own), or paused while its time ran out, or a holder that no longer runs (it only sleeps: nothing of the
candidate's can end it), or a launcher that exited NO_CANDIDATE (3, trainer.contract) without ever printing
LAUNCHED_LINE (the host's hand-over failed) -> infra, naming the cause. A candidate that kills itself makes no
such event (crash); OOM stays oom; the host's own deadline kill (the runner's or its watchdog's) stays
over_budget / timeout.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.contract import EXPORT_FAILED, NO_CANDIDATE  # noqa: F401 - also read here by runner.sandbox.trial
from trainer.contract import last_line as _last_line

STATUSES = ("ok", "crash", "timeout", "over_budget", "oom", "export_failed", "violation", "infra")
ENGINE_SLACK_S = 1.0        # the engine's FinishedAt may trail the exit (and the host's hand-over stamp) by this
NOT_BLAMED = ("ok", "oom")  # statuses an outside event does not change (nor a clean train exit's None verdict)
TIME_STATUSES = ("timeout", "over_budget")   # what a pause from outside can cause


@dataclass(frozen=True)
class Failure:
    """A phase's outcome: a trial status and its one-line reason (status "ok" comes only from eval_verdict)."""
    status: str
    error: str = ""




@dataclass(frozen=True)
class TrainTime:
    """The train phase's time, measured outside the candidate (runner.trial records each in the timings)."""
    host_s: float | None                 # hand-over -> exit seen, the host's monotonic clock
    engine_s: float | None = None        # hand-over -> the engine's FinishedAt (the host's wall clock at hand-over)
    cpu_s: float | None = None           # CPU seconds of the container's cgroup since the hand-over
    cpu_quota_cores: float | None = None  # the CFS quota it ran under
    killed: bool = False                 # still running at the deadline, killed by the host


def train_time_verdict(t: TrainTime, *, budget_s: float, allowance_s: float,
                       cpu_allowance_s: float | None = None) -> Failure | None:
    """over_budget when the train phase outlived budget + allowance by either clock, or used more CPU time than
    quota x budget + cpu_allowance_s (when given and measured); None otherwise."""
    deadline = budget_s + allowance_s
    rule = (f"the budget of {budget_s:g} s plus the start-up and export allowance of {allowance_s:g} s; stop "
            "when run.progress reaches 1 and export promptly")
    if t.killed:
        return Failure("over_budget", f"train.py was still running {deadline:g} s after its hand-over and was "
                                      f"killed: over {rule}")
    if t.host_s is not None and t.host_s > deadline:
        return Failure("over_budget", f"the train phase took {t.host_s:.1f} s on the host's clock, over {rule}")
    if t.engine_s is not None and t.engine_s > deadline + ENGINE_SLACK_S:
        return Failure("over_budget", f"the train phase took {t.engine_s:.1f} s on the engine's clock, over {rule}")
    if cpu_allowance_s is not None and t.cpu_s is not None and t.cpu_quota_cores:
        cpu_max = t.cpu_quota_cores * budget_s + cpu_allowance_s
        if t.cpu_s > cpu_max:
            return Failure("over_budget", f"the train container used {t.cpu_s:.1f} CPU seconds, over {cpu_max:g} "
                                          f"({t.cpu_quota_cores:g} cores x the budget of {budget_s:g} s plus the "
                                          f"CPU allowance of {cpu_allowance_s:g} s); stop when run.progress "
                                          "reaches 1 and export promptly")
    return None


def train_verdict(exit, *, deadline_s: float, memory: str, log_tail: str = "",
                  export_error: str = "") -> Failure | None:
    """None when train.py ended with exit 0 (the model still has to be fetched and checked). A run past the
    deadline is judged by train_time_verdict first; a kill at the deadline is over_budget here too."""
    if exit.timed_out:
        return Failure("over_budget", f"train.py was still running {deadline_s:g} s after its hand-over and was "
                                      "killed; stop when run.progress reaches 1 and export promptly")
    if exit.oom_killed:
        return Failure("oom", f"train.py exceeded the memory limit of {memory} and was killed (OOM); "
                              "use a smaller model or batch")
    if exit.engine_error:
        return Failure("infra", f"the engine could not run the train container: {exit.engine_error}")
    if exit.exit_code == EXPORT_FAILED:
        why = _last_line(export_error) if export_error.strip() else _last_line(log_tail)
        return Failure("export_failed", f"train.py could not export the model (exit {EXPORT_FAILED}): {why}")
    if exit.exit_code != 0:
        return Failure("crash", f"train.py exited with code {exit.exit_code}: {_last_line(log_tail)}")
    return None


def eval_verdict(exit, *, timeout_s: float, memory: str, log_tail: str = "", result: dict | None = None,
                 result_error: str = "") -> Failure:
    if exit.timed_out:
        return Failure("timeout", f"evaluating the exported model ran past {timeout_s:g} s and was killed")
    if exit.oom_killed:
        return Failure("oom", f"evaluating the exported model exceeded the memory limit of {memory} (OOM)")
    if exit.engine_error:
        return Failure("infra", f"the engine could not run the eval container: {exit.engine_error}")
    if exit.exit_code is not None and exit.exit_code >= 128:
        return Failure("crash", f"the evaluator died from signal {exit.exit_code - 128} on the exported model: "
                                f"{_last_line(log_tail)}")
    if exit.exit_code != 0:
        return Failure("infra", f"the evaluator could not run (exit {exit.exit_code}): {_last_line(log_tail)}; "
                                "check the data directory and rebuild the image")
    if result_error or result is None:
        return Failure("infra", f"result.json rejected: {result_error or 'missing'}")
    status = result["status"]
    reason = str(result.get("error") or result.get("reason") or "").strip()[:300]
    if status == "ok":
        return Failure("ok")
    if status == "invalid_model":
        return Failure("export_failed", f"the exported model is invalid: {reason or 'see result.json'}")
    return Failure("violation", f"the model failed a fairness probe: {reason or 'see result.json'}")


def _outside_cause(events: list[dict], *, host_killed: bool, removed: bool, paused_counts: bool) -> str:
    actions = [e.get("action") for e in events]
    if removed or "destroy" in actions:
        return "removed from outside (docker rm)"
    if "stop" in actions:
        return "stopped from outside (docker stop)"
    kills = [e for e in events if e.get("action") == "kill"]
    if kills and not host_killed:
        return f"killed from outside (docker kill, signal {kills[0].get('signal') or '?'})"
    if paused_counts and "pause" in actions:
        return "paused from outside (docker pause)"
    return ""


def outside_verdict(verdict: Failure | None, events: list[dict], *, role: str, host_killed: bool = False,
                    removed: bool = False) -> Failure | None:
    """`verdict` (a phase's verdict, None for a clean train exit), or infra when the engine's events for the
    `role` container (runner.sandbox.containers.engine_events: dicts with "action", "signal") show it was ended
    from outside. host_killed: the host killed it at its deadline, so the kill events are the host's own.
    removed: the container was gone when its end was read (the host never removes one mid-phase)."""
    if verdict is None or verdict.status in NOT_BLAMED:
        return verdict
    cause = _outside_cause(events, host_killed=host_killed, removed=removed,
                           paused_counts=verdict.status in TIME_STATUSES)
    if not cause:
        return verdict
    return Failure("infra", f"the {role} container was {cause}, not by the candidate")


def holder_verdict(running: bool, events: list[dict], *, removed: bool = False) -> Failure | None:
    """infra when the slot's holder (it keeps the output volumes mounted and only sleeps) no longer runs, naming
    the cause from its events; None while it runs."""
    if running:
        return None
    cause = _outside_cause(events, host_killed=False, removed=removed, paused_counts=False) or "ended from outside"
    return Failure("infra", f"the holder container, which keeps the trial's outputs, was {cause}, not by the "
                            "candidate")


def launch_verdict(exit, *, launched: bool, log_tail: str = "") -> Failure | None:
    """infra when the launcher exited NO_CANDIDATE without ever starting train.py (its LAUNCHED_LINE, printed
    before any candidate code, never came): the host's hand-over failed. A train.py that exits 3 itself ran after
    that line, so it stays a crash."""
    if launched or exit.timed_out or exit.exit_code != NO_CANDIDATE:
        return None
    return Failure("infra", f"the launcher never started train.py (exit {NO_CANDIDATE}, the host's hand-over "
                            f"failed): {_last_line(log_tail)}")
