"""A slot's watchdog (runner/sandbox/watchdog.py), on the real engine: a host process that kills a container still
running at its deadline + GRACE_S and marks that kill as the deadline's, removes the whole slot when the pipe from
its runner ends without `done` (what the kernel does when a runner dies, and what a removal cut short does), removes
it at its maximum life, and on `done` exits at once without an engine call. A slot made by open_slot has one, and
remove() reaps it."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import docker.errors
import pytest

from runner.sandbox import cleanup, spec
from runner.sandbox.slot import max_life_s, open_slot
from runner.sandbox.watchdog import GRACE_S, MARKER, Watchdog
from tests.sandbox_kit import TEST_RUN_PREFIX, policy

pytestmark = pytest.mark.docker

SLACK_S = 5.0                 # a loaded 2-core machine: engine calls and process starts may lag this much


def _tag() -> str:
    return f"{TEST_RUN_PREFIX}-{os.getpid()}-wd{uuid.uuid4().hex[:4]}"


def _sleeper(client, image, tag, slot_id, role, command=("sleep", "infinity")):
    return client.containers.run(image, list(command), entrypoint=[], detach=True, init=True, user="65534:65534",
                                 network_mode="none", labels=spec.labels(tag, slot_id, role),
                                 name=spec.name(tag, slot_id, role))


def _gone(client, cid) -> bool:
    try:
        client.containers.get(cid)
    except docker.errors.NotFound:
        return True
    return False


def _running(client, cid) -> bool:
    try:
        return client.containers.get(cid).status == "running"
    except docker.errors.NotFound:
        return False


def _until(predicate, within_s: float) -> float | None:
    """Seconds until predicate() held, or None if it did not within within_s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def _start(tmp_path, tag, slot_id, volumes=(), max_life=600.0) -> Watchdog:
    marker_dir = tmp_path / slot_id
    marker_dir.mkdir()
    return Watchdog.start(run_tag=tag, slot_id=slot_id, volumes=list(volumes), marker_dir=marker_dir,
                          max_life_s=max_life)


def test_a_container_still_running_at_its_deadline_is_killed_and_the_kill_marked(tmp_path, docker_client, trial_image):
    tag, slot_id = _tag(), "s1"
    wd = _start(tmp_path, tag, slot_id)
    train = _sleeper(docker_client, trial_image.tag, tag, slot_id, "train")
    ended = _sleeper(docker_client, trial_image.tag, tag, slot_id, "eval", command=("true",))
    try:
        wd.containers(train=train.id, eval=ended.id)
        ended.wait(timeout=60)                                     # it ends before its deadline
        t0 = time.monotonic()
        wd.deadline("train", t0 + 1.0)
        wd.deadline("eval", t0 + 0.5)      # earlier: its (refused) kill and unmarking are over before train's
        took = _until(lambda: not _running(docker_client, train.id), 1.0 + GRACE_S + SLACK_S)
        assert took is not None, "the watchdog did not kill the container at its deadline"
        assert took >= 1.0 + GRACE_S - 0.2                         # not before the runner had its chance
        assert (tmp_path / slot_id / MARKER.format(role="train")).exists()
        assert not (tmp_path / slot_id / MARKER.format(role="eval")).exists()   # it had ended: no kill, no mark
        assert wd.proc.poll() is None                              # it goes on guarding the slot ...
        assert not _gone(docker_client, train.id)                  # ... whose removal is the runner's
    finally:
        wd.close()
        train.remove(force=True)
        ended.remove(force=True)
    assert wd.proc.returncode == 0


def test_when_its_runner_is_gone_the_slot_is_removed_at_once_holder_and_volumes_included(tmp_path, docker_client,
                                                                                        trial_image):
    tag, slot_id = _tag(), "s2"
    vol = docker_client.volumes.create(name=spec.name(tag, slot_id, "train-out"),
                                       labels=spec.labels(tag, slot_id, "train-out"))
    wd = _start(tmp_path, tag, slot_id, volumes=[vol.name])
    holder = _sleeper(docker_client, trial_image.tag, tag, slot_id, "holder")
    train = _sleeper(docker_client, trial_image.tag, tag, slot_id, "train")
    wd.containers(holder=holder.id, train=train.id)
    wd.deadline("train", time.monotonic() + 3600)
    os.close(wd._fd)                                   # what the kernel does to a runner killed with SIGKILL
    wd._fd = -1
    try:
        assert _until(lambda: _gone(docker_client, holder.id) and _gone(docker_client, train.id), SLACK_S), \
            "the watchdog of a dead runner did not remove its slot"
        assert _until(lambda: not docker_client.volumes.list(filters={"name": vol.name}), SLACK_S)
        assert wd.proc.wait(SLACK_S) == 0                          # and then it is gone too
    finally:
        for c in (holder, train):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


def test_a_runner_that_died_while_making_the_slot_leaves_nothing(tmp_path, docker_client, trial_image):
    tag, slot_id = _tag(), "s3"
    wd = _start(tmp_path, tag, slot_id)
    holder = _sleeper(docker_client, trial_image.tag, tag, slot_id, "holder")   # made, but never reported by id
    other = _sleeper(docker_client, trial_image.tag, tag, "another-slot", "holder")
    try:
        os.close(wd._fd)
        wd._fd = -1
        assert _until(lambda: _gone(docker_client, holder.id), SLACK_S + 2)      # found by its labels
        assert wd.proc.wait(SLACK_S) == 0
        assert _running(docker_client, other.id)                              # another slot's: untouched
    finally:
        for c in (holder, other):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


def test_at_its_maximum_life_the_slot_is_removed_even_with_a_live_runner(tmp_path, docker_client, trial_image):
    tag, slot_id = _tag(), "s4"
    wd = _start(tmp_path, tag, slot_id, max_life=1.0)
    holder = _sleeper(docker_client, trial_image.tag, tag, slot_id, "holder")
    try:
        wd.containers(holder=holder.id)
        assert _until(lambda: _gone(docker_client, holder.id), 1.0 + SLACK_S)
        assert wd.proc.wait(SLACK_S) == 0
    finally:
        wd.close()                                      # the runner's own close after that: quiet
        try:
            holder.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_done_ends_the_watchdog_at_once_and_it_touches_nothing(tmp_path, docker_client, trial_image):
    tag, slot_id = _tag(), "s5"
    wd = _start(tmp_path, tag, slot_id)
    train = _sleeper(docker_client, trial_image.tag, tag, slot_id, "train")
    try:
        wd.containers(train=train.id)
        wd.deadline("train", time.monotonic() + 0.5)
        t0 = time.monotonic()
        wd.close()
        assert wd.proc.returncode == 0 and time.monotonic() - t0 < 2.0
        time.sleep(0.5 + GRACE_S + 0.5)
        assert _running(docker_client, train.id)        # the runner's to remove, and to kill
    finally:
        train.remove(force=True)


def test_every_slot_has_a_watchdog_that_its_removal_reaps(tmp_path, docker_client, trial_image, sandbox_data):
    pol, tag = policy(), _tag()
    slot = open_slot(docker_client, pol, image=trial_image.tag, data_dir=sandbox_data, run_tag=tag, slot_id="s6",
                     dir=tmp_path / "slot")
    try:
        assert slot.watchdog.proc.poll() is None
        assert slot.deadlines == {"train": pol.train.deadline_seconds, "eval": pol.eval.timeout_seconds}
        assert max_life_s(pol) > spec.STANDBY_MAX_S + pol.train.deadline_seconds + pol.eval.timeout_seconds
        cmdline = Path(f"/proc/{slot.watchdog.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert tag.encode() in cmdline and os.getsid(slot.watchdog.proc.pid) == slot.watchdog.proc.pid
    finally:
        assert slot.remove(docker_client) == []
    assert slot.watchdog.proc.returncode == 0            # reaped: no process and no zombie left


def test_a_slot_removal_cut_short_by_a_second_signal_is_finished_by_the_watchdog(tmp_path, docker_client, trial_image,
                                                                                 sandbox_data, monkeypatch):
    tag = _tag()
    slot = open_slot(docker_client, policy(), image=trial_image.tag, data_dir=sandbox_data, run_tag=tag,
                     slot_id="s7", dir=tmp_path / "slot")
    real = cleanup.remove_containers

    def cut_short(containers):
        real(containers[:1])                            # the first goes, then a second Ctrl-C arrives
        raise KeyboardInterrupt
    monkeypatch.setattr(cleanup, "remove_containers", cut_short)
    with pytest.raises(KeyboardInterrupt):
        slot.remove(docker_client)
    try:
        assert _until(lambda: all(_gone(docker_client, c.id) for c in (slot.holder, slot.train, slot.evaluator))
                      and not docker_client.volumes.list(filters={"label": f"{spec.LABEL_RUN}={tag}"}),
                      SLACK_S + 2), "the watchdog did not finish a removal the runner handed over"
        assert slot.watchdog.proc.wait(SLACK_S) == 0
    finally:
        monkeypatch.undo()
        slot.remove(docker_client)


_PARENT = """
import sys, time
sys.path.insert(0, {root!r})
from runner.sandbox import watchdog
watchdog.DETACH = {detach!r}
wd = watchdog.Watchdog.start(run_tag={tag!r}, slot_id="s8", volumes=[], marker_dir={dir!r}, max_life_s=600)
wd.containers(train={cid!r})
print("ready", flush=True)
time.sleep(600)
"""


def _children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p))
        except (OSError, IndexError, ValueError):
            pass
    return out


@pytest.mark.parametrize("detach", [True, False])
def test_a_parent_whose_death_kills_its_children_takes_no_detached_watchdog_along(tmp_path, docker_client,
                                                                                  trial_image, detach):
    """A Ray worker kills its children when it ends (Ray's kill_child_processes_on_worker_exit): on a Ray node the
    watchdog is detached (a grandchild), so a lost or cancelled task's slot is still removed. Undetached, the same
    death takes the watchdog along and the container runs on (the control: what runner/ray_node.py must avoid)."""
    import signal
    import subprocess
    import sys
    tag = _tag()
    train = _sleeper(docker_client, trial_image.tag, tag, "s8", "train")
    root = str(Path(__file__).resolve().parent.parent)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(root=root, detach=detach, tag=tag,
                                                                    dir=str(tmp_path), cid=train.id)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        children = _children(parent.pid)
        assert (children == []) is detach            # detached: the watchdog is not the parent's child
        for pid in [*children, parent.pid]:          # as Ray does to a worker that ends: its children, then it
            os.kill(pid, signal.SIGKILL)
        parent.wait()
        took = _until(lambda: _gone(docker_client, train.id), SLACK_S)
        assert (took is not None) is detach, f"detach={detach}: the container {'stayed' if detach else 'went'}"
    finally:
        try:
            train.remove(force=True)
        except docker.errors.NotFound:
            pass
