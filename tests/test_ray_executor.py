"""The Ray executor (runner/ray_executor.py, runner/ray_node.py) on a real local Ray cluster: a head and two worker
nodes as separate processes, in a network namespace of the test's own (tests/raykit.py), each trial in the real
hardened containers of this machine's engine. One driver run (about 2-3 minutes on 2 cores) serves every test
below; the docker_client fixture checks that no container or volume of these runs is left.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.executor import TrialSpec, make
from runner.ray_executor import NODE_RESOURCE, node_capacity, trial_resources
from tests.raykit import in_netns, ray_policy, unshare_problem
from tests.sandbox_kit import policy, real_candidate

MAX_STEPS = 10
DRIVER_TIMEOUT_S = 420
GIB = 1 << 30


# --------------------------------------------------------------------------- without a cluster

def test_one_trial_asks_for_its_slot():
    assert trial_resources(ray_policy()) == {"num_cpus": 1.0, "memory": 2 * GIB, "resources": {NODE_RESOURCE: 0.001}}
    gpu = trial_resources(policy(flavour="cuda", gpu="all"))
    assert gpu["num_gpus"] == 1 and gpu["num_cpus"] == 2.0


def test_slots_are_whole_trials_per_node():
    want = trial_resources(ray_policy())
    assert node_capacity({"CPU": 4, "memory": 16 * GIB, NODE_RESOURCE: 1}, want) == 4
    assert node_capacity({"CPU": 4, "memory": 5 * GIB, NODE_RESOURCE: 1}, want) == 2      # memory binds
    assert node_capacity({"CPU": 4, "memory": 16 * GIB}, want) == 0                       # no Docker engine
    gpu = trial_resources(policy(flavour="cuda", gpu="all", limits={"cpus": 1}))
    assert node_capacity({"CPU": 16, "GPU": 2, "memory": 64 * GIB, NODE_RESOURCE: 1}, gpu) == 2


def test_without_ray_a_one_line_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"^the ray executor needs Ray: pip install \.\[ray\]$"):
        make("ray", "127.0.0.1:6379")


def _free_port() -> int:
    """A loopback port that was free a moment ago (nobody listens on it)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cluster_address_nobody_listens_on_is_a_one_line_user_error_at_once():
    """Without the check, ray.init retried such an address for minutes (it hung here for over 200 s)."""
    pytest.importorskip("ray", reason="Ray is optional: pip install .[ray]")
    import time
    port = _free_port()
    ex = make("ray", f"127.0.0.1:{port}")
    t = time.monotonic()
    with pytest.raises(UserError, match=rf"^cannot reach the Ray cluster at 127\.0\.0\.1:{port}: .*; start it ") as e:
        ex.remove_leftovers("x")
    assert time.monotonic() - t < 10 and "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"^executor\.address 'nowhere' is not HOST:PORT; start it"):
        make("ray", "nowhere").remove_leftovers("x")


def test_doctor_names_a_cluster_nobody_listens_on_and_the_fix():
    pytest.importorskip("ray", reason="Ray is optional: pip install .[ray]")
    from runner.doctor import check_cluster
    port = _free_port()
    c = check_cluster(policy(executor={"kind": "ray", "address": f"127.0.0.1:{port}"}))
    assert c.name == "cluster" and not c.ok
    assert c.detail.startswith(f"cannot reach the Ray cluster at 127.0.0.1:{port}") and "ray start --head" in c.detail


# --------------------------------------------------------------------------- on a real cluster

@pytest.fixture(scope="module")
def scratch_image(docker_client):
    """A tiny image under two test tags: `ship` (removed and shipped back by a scenario) and `keep`."""
    pid = os.getpid()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY hello /hello\n"), ("hello", f"{pid}\n".encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    img, _ = docker_client.images.build(fileobj=buf, custom_context=True, tag=f"autoresearch-raytest:keep-{pid}",
                                        rm=True)
    tags = {"keep": f"autoresearch-raytest:keep-{pid}", "ship": f"autoresearch-raytest:ship-{pid}",
            "mismatch": f"autoresearch-raytest:mismatch-{pid}"}
    img.tag("autoresearch-raytest", f"ship-{pid}")
    yield img.id, tags
    for tag in tags.values():
        with contextlib.suppress(Exception):          # already gone
            docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, docker_client, trial_image, sandbox_data, scratch_image):
    """The local Docker executor's score for the candidate, then the driver's scenarios on a Ray cluster."""
    pytest.importorskip("ray", reason="Ray is optional: pip install .[ray]")
    if (why := unshare_problem()) is not None:
        pytest.skip(why)
    from runner.sandbox.executor import DockerExecutor
    root = tmp_path_factory.mktemp("ray")
    cand = real_candidate(root)
    run_tag = f"pytest-ray-{os.getpid()}"
    local = DockerExecutor().run(TrialSpec(run_tag=run_tag, trial_id="local", candidate_dir=cand,
                                           data_dir=sandbox_data, policy=ray_policy(MAX_STEPS),
                                           image=trial_image.tag, seed=1337, work_dir=root / "local"))
    assert local.status == "ok", local.error
    ship_id, tags = scratch_image
    docker_client.images.get(trial_image.id).tag(*tags["mismatch"].rsplit(":", 1))
    out, ns_file = root / "results.json", root / "netns"
    proc = in_netns([sys.executable, "-m", "tests.raykit", "drive", "--root", str(root / "cluster"),
                     "--image", trial_image.tag, "--data", str(sandbox_data), "--candidate", str(cand),
                     "--run-tag", run_tag, "--ship-tag", tags["ship"], "--mismatch-tag", tags["mismatch"],
                     "--out", str(out), "--ns-file", str(ns_file), "--max-steps", str(MAX_STEPS)],
                    DRIVER_TIMEOUT_S, ns_file)
    assert proc.returncode == 0 and out.is_file(), f"the Ray driver failed:\n{proc.stdout[-6000:]}"
    return {**json.loads(out.read_text()), "local": local, "root": root, "ship_id": ship_id}


def _node(slot: str) -> str:
    return slot.split("/")[0].removeprefix("node-")


@pytest.mark.docker
def test_start_ships_the_data_to_each_node_cache(ray_run, sandbox_data):
    from trainer.shards import manifest_sha256
    sha = manifest_sha256(sandbox_data)
    assert ray_run["start"]["slots"] == 2                         # two workers, one 1-core trial each
    prepared = ray_run["start"]["prepared"]
    assert len(prepared) == 2 and all(p.get("data") == "shipped" and p.get("image") == "present" for p in prepared)
    for worker in ray_run["workers"]:
        cached = Path(worker["cache"]) / "data" / sha
        assert manifest_sha256(cached) == sha
        assert all(p.stat().st_mode & stat.S_IROTH for p in cached.rglob("*"))   # readable by the trial uid


@pytest.mark.docker
def test_trials_spread_over_both_workers_with_the_local_score(ray_run):
    pair, local = ray_run["pair"], ray_run["local"]
    assert [t["status"] for t in pair] == ["ok", "ok"], [t["error"] for t in pair]
    workers = {w["node_id"][:6] for w in ray_run["workers"]}
    assert {_node(t["slot"]) for t in pair} == workers              # one trial on each worker
    # and pinned: the two workers share this machine's engine, so their slots claimed disjoint cores
    assert sorted(t["slot"].split("/")[1] for t in pair) == ["cpu0", "cpu1"], [t["slot"] for t in pair]
    assert all(t["val_bpb"] == local.val_bpb for t in pair)         # bit for bit the local executor's score
    assert all(t["attempts"] == 1 and t["lines"] > 0 for t in pair)
    assert all({"result.json", "train.py"} <= set(t["files"]) for t in pair)


@pytest.mark.docker
def test_each_ray_slot_starts_its_trial_s_containers_ahead_and_close_removes_them(ray_run):
    """The run's slots are actors on the nodes: each trial takes containers its slot started before the trial
    came (as on one host), and close() leaves none of the run's containers, the ones waiting for a trial included."""
    assert all(t["timings"]["slot_prestarted"] for t in ray_run["pair"]), [t["timings"] for t in ray_run["pair"]]
    assert ray_run["killed"]["timings"]["slot_prestarted"]            # its second attempt, in the other slot
    assert ray_run["killed"]["killed_cpuset"] in ("0", "1")           # the first attempt's container: its slot's core
    assert ray_run["closed_left"] == []


@pytest.mark.docker
def test_a_ray_trial_s_log_lines_reach_the_head_while_it_runs_each_once_in_order(ray_run):
    for t in ray_run["pair"]:
        assert t["returned_after_first_line_s"] > 1.0, t             # polled live, not replayed at the end
        steps = t["steps"]                                              # train.py logs every LOG_EVERY steps
        assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == MAX_STEPS, steps   # once, in order


@pytest.mark.docker
def test_gpu_trials_get_one_gpu_each_on_different_workers(ray_run):
    gpu = ray_run["gpu"]
    workers = {w["node_id"][:6] for w in ray_run["workers"]}
    assert {_node(t["slot"]) for t in gpu} == workers
    assert all(t["slot"].endswith("/gpu0") for t in gpu)            # the CUDA_VISIBLE_DEVICES Ray assigned
    # no nvidia runtime here: the node's GPU check fails, naming exactly that device, and it is not the candidate's
    assert all(t["status"] == "infra" and "['0']" in t["error"] for t in gpu), [t["error"] for t in gpu]


@pytest.mark.docker
def test_the_image_is_shipped_to_a_node_that_lacks_the_tag(ray_run):
    ship = ray_run["ship"]
    assert all(p.get("image") == "present" and not p.get("error") for p in ship["first"]), ship["first"]
    assert not any(p.get("error") for p in ship["again"]), ship["again"]
    assert "loaded" in {p.get("image") for p in ship["again"]}       # docker save -> object store -> docker load
    assert ship["id_after"] == ray_run["ship_id"]                    # the tag is back, on the same digest


@pytest.mark.docker
def test_a_digest_mismatch_is_infra_not_a_run(ray_run):
    mis = ray_run["mismatch"]
    assert mis["status"] == "infra" and mis["val_bpb"] is None
    assert "digest mismatch" in mis["error"]


@pytest.mark.docker
def test_a_worker_killed_mid_trial_runs_the_trial_again_elsewhere(ray_run):
    killed = ray_run["killed"]
    assert killed["killed_worker"] is not None, "the trial never started training"
    assert killed["status"] == "ok", killed["error"]
    assert killed["attempts"] == 2
    assert _node(killed["slot"]) != killed["killed_node"][:6]
    assert killed["val_bpb"] == ray_run["local"].val_bpb
    assert "result.json" in killed["files"]
    # the lost attempt's containers went with its watchdog (detached from the dead Ray worker), not at the end
    assert ray_run["leftovers_removed"] == 0
    assert not ray_run["planted_dir_left"]          # remove_leftovers also clears the run's dirs in a node's cache


@pytest.mark.docker
def test_a_stop_cancels_the_trial_in_flight_and_leaves_no_container(ray_run):
    """A stop signal unwinds the loop, which closes the executor: the trial's Ray task must not run on, on a node
    the head no longer listens to, with its containers holding the node's cores."""
    stopped = ray_run["stopped"]
    assert stopped["training_seen"], "the trial never started training"
    assert stopped["status"] == "infra" and "the run stopped" in stopped["error"], stopped
    assert stopped["returned_s"] < 30, f"run() returned {stopped['returned_s']} s after close()"
    assert stopped["gone_s"] is not None and stopped["gone_s"] < 60, \
        f"the stopped trial's containers were still there {stopped['gone_s']} s after close()"


@pytest.mark.docker
def test_a_head_killed_mid_trial_leaves_no_container_on_the_nodes(ray_run):
    """kill -9 of the runner: Ray ends the slots the dead driver owned, and each slot's watchdog (detached from the
    actor) removes its containers: the trial's and the ones started ahead."""
    killed = ray_run["head_killed"]
    assert killed["training_seen"], "the head's trial never started training"
    assert killed["gone_s"] is not None and killed["gone_s"] < 60, \
        f"the dead head's containers were still there {killed['gone_s']} s after kill -9"


@pytest.mark.docker
def test_doctor_says_what_the_cluster_holds_and_when_a_trial_cannot_fit(ray_run):
    fits, too_big = ray_run["doctor"]
    assert fits["ok"] and fits["detail"].endswith("2 node(s) with a Docker engine hold 2 trial(s) at once"), fits
    assert not too_big["ok"] and "cannot hold one trial (4 CPUs)" in too_big["detail"], too_big
    assert "ray start --address" in too_big["fix"]


@pytest.mark.docker
def test_the_research_loop_runs_on_the_cluster_in_slots_started_ahead(ray_run):
    """`executor: {kind: ray}` in a run's policy: the baseline and two candidates, each recorded once, each that
    trained in a node's slot pinned to a core and started ahead, with its train.log (the lines came live), nothing
    left. The two candidates are in flight at once, so one may go `stale` when the other is kept (CI saw it)."""
    loop = ray_run["loop"]
    trials = loop["trials"]
    assert sorted(t["trial"] for t in trials) == [0, 1, 2], trials
    assert all(t["status"] in ("keep", "discard", "stale") for t in trials), trials
    ran = [t for t in trials if t["slot"]]                # a candidate stale before it trained has no slot
    assert len(ran) >= 2 and trials[0] in ran, trials
    assert all(t["slot"].startswith("node-") and t["slot"].split("/")[1] in ("cpu0", "cpu1") for t in ran), trials
    assert all(t["ahead"] for t in ran), trials
    assert all(t["log_bytes"] > 0 for t in ran), trials
    assert loop["left"] == []
