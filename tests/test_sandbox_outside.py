"""Who ended a container: the engine's events (runner/sandbox/containers.engine_events) and the pure rules that
turn an outside end into `infra` (runner/sandbox/classify.outside_verdict, holder_verdict, launch_verdict).
The event lists below are what Docker 20.10 reports (recorded with engine_events) for: docker kill, docker stop,
docker rm -f, docker pause + the runner's deadline kill, and a process that SIGKILLs itself."""
from __future__ import annotations

import time

import pytest

from runner.sandbox import classify, containers
from runner.sandbox.classify import Failure
from trainer.harness import launch

KILL = [{"action": "kill", "signal": "9", "exit_code": None}, {"action": "die", "signal": None, "exit_code": "137"}]
STOP = [{"action": "kill", "signal": "15", "exit_code": None}, {"action": "die", "signal": None, "exit_code": "143"},
        {"action": "stop", "signal": None, "exit_code": None}]
RM_F = [{"action": "kill", "signal": "9", "exit_code": None}, {"action": "die", "signal": None, "exit_code": "137"},
        {"action": "destroy", "signal": None, "exit_code": None}]
PAUSE_THEN_DEADLINE = [{"action": "pause", "signal": None, "exit_code": None},
                       {"action": "kill", "signal": "9", "exit_code": None},
                       {"action": "die", "signal": None, "exit_code": "137"}]
SELF_KILL = [{"action": "die", "signal": None, "exit_code": "137"}]
OOM = [{"action": "oom", "signal": None, "exit_code": None}, {"action": "die", "signal": None, "exit_code": "137"}]

CRASH = Failure("crash", "train.py exited with code 137: (no output)")
OVER = Failure("over_budget", "train.py was still running 90 s after its hand-over and was killed")


@pytest.mark.parametrize("events, verdict, host_killed, removed, want", [
    (KILL, CRASH, False, False, Failure("infra", "the train container was killed from outside (docker kill, "
                                                 "signal 9), not by the candidate")),
    (STOP, CRASH, False, False, Failure("infra", "the train container was stopped from outside (docker stop), "
                                                 "not by the candidate")),
    (RM_F, CRASH, False, False, Failure("infra", "the train container was removed from outside (docker rm), not "
                                                 "by the candidate")),
    ([], CRASH, False, True, Failure("infra", "the train container was removed from outside (docker rm), not by "
                                              "the candidate")),          # gone, its events already evicted
    (SELF_KILL, CRASH, False, False, CRASH),              # the candidate's own SIGKILL: no API call, stays a crash
    (OOM, Failure("oom", "x"), False, False, Failure("oom", "x")),        # OOM stays oom
    (KILL[:1] + OOM, Failure("oom", "x"), False, False, Failure("oom", "x")),
    (KILL, OVER, True, False, OVER),                      # the host's own deadline kill stays over_budget
    (PAUSE_THEN_DEADLINE, OVER, True, False, Failure("infra", "the train container was paused from outside "
                                                              "(docker pause), not by the candidate")),
    (PAUSE_THEN_DEADLINE[:1], Failure("export_failed", "x"), False, False, Failure("export_failed", "x")),  # a pause
    (KILL, None, False, False, None),                     # a clean exit (a kill it ignored) needs no verdict
    (KILL, Failure("ok"), False, False, Failure("ok")),
])
def test_the_train_phase_ended_from_outside_is_infra(events, verdict, host_killed, removed, want):
    assert classify.outside_verdict(verdict, events, role="train", host_killed=host_killed, removed=removed) == want


def test_an_eval_container_killed_from_outside_is_infra_and_one_killed_by_its_model_a_crash():
    crash = Failure("crash", "the evaluator died from signal 9 on the exported model: (no output)")
    assert classify.outside_verdict(crash, KILL, role="eval") == Failure(
        "infra", "the eval container was killed from outside (docker kill, signal 9), not by the candidate")
    assert classify.outside_verdict(crash, SELF_KILL, role="eval") == crash
    timeout = Failure("timeout", "evaluating the exported model ran past 90 s and was killed")
    assert classify.outside_verdict(timeout, KILL, role="eval", host_killed=True) == timeout


def test_a_holder_that_no_longer_runs_is_infra_with_its_cause():
    assert classify.holder_verdict(True, []) is None
    assert classify.holder_verdict(False, RM_F) == Failure(
        "infra", "the holder container, which keeps the trial's outputs, was removed from outside (docker rm), not "
                 "by the candidate")
    assert classify.holder_verdict(False, [], removed=True).error.startswith(
        "the holder container, which keeps the trial's outputs, was removed from outside (docker rm)")
    assert classify.holder_verdict(False, [{"action": "die", "signal": None, "exit_code": "137"}]) == Failure(
        "infra", "the holder container, which keeps the trial's outputs, was ended from outside, not by the candidate")


def _exit(code, timed_out=False):
    return containers.Exit(exit_code=code, oom_killed=False, timed_out=timed_out, started_at=None, finished_at=None,
                           wall_s=None, host_wall_s=1.0)


def test_the_launchers_exit_3_is_infra_only_when_train_py_never_started():
    tail = "launch: no train.py was handed over at /work/train.py within 7200 s; the runner hands it over when ..."
    assert classify.launch_verdict(_exit(3), launched=False, log_tail=tail) == Failure(
        "infra", f"the launcher never started train.py (exit 3, the host's hand-over failed): {tail}")
    assert classify.launch_verdict(_exit(3), launched=True, log_tail=tail) is None     # train.py's own exit 3
    assert classify.launch_verdict(_exit(1), launched=False) is None
    assert classify.launch_verdict(_exit(None, timed_out=True), launched=False) is None
    assert classify.NO_CANDIDATE == launch.NO_CANDIDATE


@pytest.mark.docker
def test_the_engine_tells_an_outside_kill_from_a_self_kill_and_a_removal(docker_client, trial_image):
    """engine_events on real containers: what the rules above are fed."""
    def run(cmd):
        return docker_client.containers.run(trial_image.tag, cmd, entrypoint=[], detach=True, init=True,
                                            user="65534:65534", network_mode="none")
    t0 = time.time()
    outside, itself, removed = run(["sleep", "60"]), run(["python", "-c", "import os; os.kill(os.getpid(), 9)"]), \
        run(["sleep", "60"])
    try:
        time.sleep(0.5)
        outside.kill()
        removed.remove(force=True)
        for c in (outside, itself):
            c.wait(timeout=60)
        got = {name: [(e["action"], e["signal"], e["exit_code"]) for e in containers.engine_events(c, since=t0 - 1)]
               for name, c in (("outside", outside), ("itself", itself), ("removed", removed))}
        assert got == {"outside": [("kill", "9", None), ("die", None, "137")],
                       "itself": [("die", None, "137")],
                       "removed": [("kill", "9", None), ("die", None, "137"), ("destroy", None, None)]}
        # and wait_to_end on a container removed while it is waited for says so instead of failing
        gone = run(["sleep", "60"])
        started = containers.follow(gone, pump=False)
        time.sleep(0.3)
        gone.remove(force=True)
        ex, _ = containers.wait_to_end(started, 60)
        assert ex.removed and ex.exit_code is None and not ex.timed_out
    finally:
        for c in (outside, itself):
            c.remove(force=True)
