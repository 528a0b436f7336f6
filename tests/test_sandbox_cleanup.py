"""Cleanup: nothing of a trial outlives it, even when interrupted, and leftovers of a dead run are found by label;
a run starting removes what runs whose runner is gone left, whatever their tag, and never a live run's (its lock)."""
from __future__ import annotations

import fcntl
import os

import pytest

from runner.sandbox import cleanup, containers, spec
from tests.sandbox_kit import TEST_RUN_PREFIX, candidate, policy, trial

pytestmark = pytest.mark.docker


def _labelled(client, run_tag):
    return cleanup.leftovers(run_tag, None, client)


def test_leftovers_of_a_dead_run_are_removed_by_its_tag_and_other_runs_are_untouched(docker_client, trial_image):
    dead, alive = f"{TEST_RUN_PREFIX}-{os.getpid()}-dead", f"{TEST_RUN_PREFIX}-{os.getpid()}-alive"
    made = []
    for run in (dead, alive):
        labels = spec.labels(run, "1", "train")
        vol = spec.output_volume(policy(), name=spec.name(run, "1", "train-out"), labels=labels)
        docker_client.volumes.create(**vol)
        kw = spec.hardening(policy(), image=trial_image.tag, name=spec.name(run, "1", "train"), labels=labels)
        c = docker_client.containers.create(**kw, command=["sleep", "600"], entrypoint=[])
        c.start()                                              # a running container, as after a SIGKILLed runner
        made.append((c, vol["name"]))
    try:
        assert cleanup.remove_leftovers(dead, client=docker_client) == 2
        assert _labelled(docker_client, dead) == ([], [])
        cs, vs = _labelled(docker_client, alive)
        assert [c.name for c in cs] == [spec.name(alive, "1", "train")] and vs == [spec.name(alive, "1", "train-out")]
    finally:
        cleanup.remove_containers([c for c, _ in made])
        cleanup.remove_volumes(docker_client, [v for _, v in made])


def test_an_interrupted_trial_leaves_no_container_or_volume(tmp_path, docker_client, trial_image, sandbox_data,
                                                            monkeypatch):
    real = containers.wait_to_end

    def interrupted(started, *a, **kw):
        real(started, 0.01)                                    # it runs, then Ctrl-C arrives
        raise KeyboardInterrupt
    monkeypatch.setattr(containers, "wait_to_end", interrupted)
    cand = candidate(tmp_path, "import time\ntime.sleep(600)\n")
    with pytest.raises(KeyboardInterrupt):
        trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert _labelled(docker_client, f"{TEST_RUN_PREFIX}-{os.getpid()}") == ([], [])


def test_a_trial_leaves_only_its_own_files_in_the_work_dir(tmp_path, trial_image, sandbox_data):
    out, spec_ = trial(tmp_path, trial_image.tag, candidate(tmp_path, "print('x')\n"), sandbox_data)
    assert sorted(p.name for p in spec_.work_dir.iterdir()) == ["train.py"]
    assert oct(spec_.work_dir.joinpath("train.py").stat().st_mode & 0o777) == "0o444"


def _lock(root, tag, held: bool):
    """runs/<tag>/.lock under root; held: an flock on it, as a live runner's (the fd, to close), else None."""
    path = root / tag / "exp" / "runs" / tag / ".lock"
    path.parent.mkdir(parents=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not held:
        os.close(fd)
        return path, None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def test_a_slot_under_a_run_directory_carries_that_run_s_lock_and_nothing_else_does(tmp_path):
    lock, _ = _lock(tmp_path, "t1", held=False)
    runs = lock.parent.parent
    assert cleanup.run_lock(runs / "t1" / "trials" / "3" / "repeat-1" / "slot", "t1") == lock.resolve()
    assert cleanup.run_lock(runs / "t1" / "slots" / "0" / "next-ab12", "t1") == lock.resolve()
    assert cleanup.run_lock(runs / "t1" / "reproduce" / "3-20261203" / "slot", "t1-reproduce") is None
    assert cleanup.run_lock(tmp_path / "work" / "slot", "t1") is None
    assert cleanup.owner_labels(lock) == {spec.LABEL_LOCK: str(lock), spec.LABEL_HOST: cleanup.host_id()}
    assert cleanup.owner_labels(None) == {}


def test_a_start_removes_what_dead_runs_left_whatever_their_tag_and_never_a_live_run_s(tmp_path, docker_client,
                                                                                        trial_image):
    tag = lambda name: f"{TEST_RUN_PREFIX}-{os.getpid()}-{name}"  # noqa: E731
    dead, live, own = _lock(tmp_path, tag("dead"), False), _lock(tmp_path, tag("live"), True), \
        _lock(tmp_path, tag("own"), True)
    elsewhere, _ = _lock(tmp_path, tag("elsewhere"), False)
    runs = {                                      # tag -> (its labels beyond the run's, removed?)
        tag("dead"): (cleanup.owner_labels(dead[0]), True),         # its runner is gone: whatever the tag
        tag("own"): (cleanup.owner_labels(own[0]), True),           # this process's own run
        tag("start"): ({}, True),                                   # no lock, but the starting run's tag
        tag("live"): (cleanup.owner_labels(live[0]), False),        # its lock is held: a live run
        tag("nolock"): ({}, False),                                 # no lock, another tag: never ours to judge
        tag("gone"): (cleanup.owner_labels(tmp_path / "gone" / "runs" / tag("gone") / ".lock"), False),
        tag("elsewhere"): ({spec.LABEL_LOCK: str(elsewhere), spec.LABEL_HOST: "another-boot/mnt:[1]"}, False),
    }
    made = {}
    try:
        for run, (owner, _) in runs.items():
            labels = spec.labels(run, "1", "train", owner)
            vol = docker_client.volumes.create(name=spec.name(run, "1", "train-out"), labels=labels)
            kw = spec.hardening(policy(), image=trial_image.tag, name=spec.name(run, "1", "train"), labels=labels)
            made[run] = (docker_client.containers.create(**kw, command=["sleep", "600"], entrypoint=[]), vol.name)
        made[tag("dead")][0].start()                  # running, as after a runner killed with its watchdogs

        sweep = cleanup.remove_dead(docker_client, run_tag=tag("start"), own_locks={str(own[0])})

        for run, (_, removed) in runs.items():
            assert _labelled(docker_client, run) == (([], []) if removed else
                                                     ([made[run][0]], [made[run][1]])), run
        assert sweep.unknown[tag("gone")] == f"its lock {tmp_path / 'gone' / 'runs' / tag('gone') / '.lock'} is gone"
        assert sweep.unknown[tag("elsewhere")] == "made on another host or in another mount namespace"
        assert not {tag("live"), tag("nolock")} & set(sweep.unknown)
        assert "cannot tell whether its runner lives" in sweep.note() and sweep.errors == []
        assert cleanup.lock_state(str(live[0]), cleanup.host_id()) == cleanup.HELD   # the test took nothing
    finally:
        for fd in (live[1], own[1]):
            os.close(fd)
        cleanup.remove_containers([c for c, _ in made.values()])
        cleanup.remove_volumes(docker_client, [v for _, v in made.values()])
