"""Cleanup: nothing of a trial outlives it, even when interrupted, and leftovers of a dead run are found by label."""
from __future__ import annotations

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
