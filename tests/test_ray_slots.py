"""The head's pool of Ray slots (runner/ray_slots.py), its contracts pinned down with a fake Ray: which slot is
handed out when, what close() does to idle and busy slots, and that a waiting trial wakes at once on close. The
real thing (actors on a real local cluster, their containers started ahead) is tests/test_ray_executor.py."""
from __future__ import annotations

import threading
import time

import runner.ray_node as ray_node
from runner.ray_node import Log
from runner.ray_slots import Live, SlotPool


class _Ref:
    def __init__(self, value=None, gate: threading.Event | None = None):
        self.value, self.gate = value, gate


class _Method:
    def __init__(self, actor, name):
        self.actor, self.name = actor, name

    def remote(self, *args):
        self.actor.calls.append(self.name)
        return _Ref(self.actor.name, self.actor.placed if self.name == "ready" else None)


class _Actor:
    def __init__(self, ray, job):
        self.ray, self.job, self.name = ray, job, f"slot{len(ray.actors)}"
        self.placed = threading.Event()
        if ray.place_at_once:
            self.placed.set()
        self.calls: list[str] = []
        self.killed = False
        self.ready, self.close = _Method(self, "ready"), _Method(self, "close")


class _FakeRay:
    """ray.remote(cls).options(...).remote(job) -> an actor; get waits for a ready() ref until the actor is placed
    (or killed: then it raises, as Ray does)."""

    def __init__(self, place_at_once=True):
        self.place_at_once, self.actors, self.options_seen = place_at_once, [], None

    def remote(self, cls):
        ray = self

        class _Cls:
            def options(self, **kw):
                ray.options_seen = kw
                return self

            def remote(self, job):
                ray.actors.append(_Actor(ray, job))
                return ray.actors[-1]
        return _Cls()

    def get(self, ref):
        actor = next(a for a in self.actors if a.name == ref.value)
        while ref.gate is not None and not ref.gate.wait(0.05):
            if actor.killed:
                raise RuntimeError("ActorDiedError")
        if actor.killed:
            raise RuntimeError("ActorDiedError")
        return ref.value

    def wait(self, refs, num_returns, timeout):
        return refs, []

    def kill(self, actor, no_restart=True):
        actor.killed = True


def _pool(ray, n=2):
    return SlotPool(ray, {"run_tag": "t"}, n, {"num_cpus": 1.0})


def _until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_each_slot_asks_ray_for_one_trial_s_resources_no_restart_and_a_second_thread_for_progress():
    ray = _FakeRay()
    _pool(ray)
    assert ray.options_seen == {"max_restarts": 0, "max_task_retries": 0, "max_concurrency": 2, "num_cpus": 1.0}
    assert len(ray.actors) == 2


def test_a_slot_ray_has_not_placed_is_never_handed_out():
    """A full cluster: the actor exists but does not run; a trial must wait, not be sent to it."""
    ray = _FakeRay(place_at_once=False)
    pool = _pool(ray, n=1)
    assert pool.take(0.4) is None
    assert pool.wait_placed(0.2) == 0
    t = time.monotonic()
    assert pool.wait_placed(60, want=0) == 0 and time.monotonic() - t < 1   # start() waits for no more than the
                                                                             # cluster holds
    ray.actors[0].placed.set()
    assert pool.take(5) is ray.actors[0]
    assert pool.placed() == 1
    pool.close()


def test_one_trial_at_a_time_per_slot():
    ray = _FakeRay()
    pool = _pool(ray, n=1)
    a = pool.take(5)
    assert pool.take(0.3) is None                  # busy
    pool.give_back(a)
    assert pool.take(1) is a
    pool.close()


def test_close_wakes_a_trial_waiting_for_a_slot_at_once():
    ray = _FakeRay()
    pool = _pool(ray, n=1)
    pool.take(5)                                   # the only slot is busy
    got, t = [], time.monotonic()
    th = threading.Thread(target=lambda: got.append((pool.take(600), time.monotonic())))
    th.start()
    time.sleep(0.3)
    closed_at = time.monotonic()
    pool.close()
    th.join(5)
    assert got and got[0][0] is None and got[0][1] - closed_at < 1.0, (got, t)


def test_close_lets_idle_slots_remove_their_containers_and_kills_every_slot():
    ray = _FakeRay()
    pool = _pool(ray, n=2)
    assert _until(lambda: pool.placed() == 2)
    busy = pool.take(5)
    idle = next(a for a in ray.actors if a is not busy)
    pool.close()
    assert "close" in idle.calls and "close" not in busy.calls     # a busy slot is killed, not asked
    assert busy.killed and idle.killed
    pool.give_back(busy)                                            # its trial ends after the close
    assert pool.take(0.3) is None


def test_a_lost_slot_is_killed_and_a_new_one_asked_for():
    ray = _FakeRay()
    pool = _pool(ray, n=1)
    a = pool.take(5)
    pool.lose(a)
    assert a.killed and len(ray.actors) == 2
    b = pool.take(5)
    assert b is ray.actors[1] and b is not a
    pool.give_back(a)                                               # a late give_back of the lost one is ignored
    pool.give_back(b)
    assert pool.take(1) is b and pool.take(0.3) is None
    pool.close()
    pool.lose(b)                                                    # after close: nothing new is asked for
    assert len(ray.actors) == 2


def test_a_trial_s_lines_reach_the_head_once_each_in_order_whether_polled_or_in_the_answer():
    log, got, phases = Log(), [], []
    live = Live(got.append, phases.append)
    log.begin("7")
    live.feed(log.since("7", live.n_lines, live.n_phases))          # a poll before anything came
    log.phase("training")
    for i in range(5):
        log.line(f"a{i}")
    live.feed(log.since("7", live.n_lines, live.n_phases))
    live.feed(log.since("7", live.n_lines, live.n_phases))          # a poll with nothing new
    log.line("b")
    log.phase("evaluating")
    live.feed(log.since("7", 0, 0), whole=True)                     # the answer: everything, the rest handed over
    assert got == ["a0", "a1", "a2", "a3", "a4", "b"] and phases == ["training", "evaluating"]
    assert log.since("8", 3, 1) == {"lines": [], "lines_total": 3, "phases": []}   # another trial's poll: nothing


def test_a_flood_of_lines_keeps_the_newest_and_counts_the_rest(monkeypatch):
    monkeypatch.setattr(ray_node, "MAX_LOG_LINES", 3)
    log, got = Log(), []
    live = Live(got.append, None)
    log.begin("7")
    for i in range(9):
        log.line(str(i))
    assert log.dropped == 3 and log.lines == [str(i) for i in range(3, 9)]
    live.feed(log.since("7", 0, 0), whole=True)
    assert got == ["6", "7", "8"] and live.n_lines == 9                 # at most MAX_LOG_LINES a message
