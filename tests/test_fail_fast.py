"""Fail fast: what would fail a run late (an endpoint that does not answer or lacks the model, a policy the engine
cannot honour, a corrupt data file) stops `run` in seconds, as one line, before it makes anything: no branch, no
run directory, no trial, no container; on --resume before run.json changes. And --resume accepts a policy whose
changes only let a trial run (recorded in run.json), refusing one that changes what a trial is scored on.

Real parts: the real openai client against tests/llm_server.py on loopback, real git, a real prepared data
directory, the real engine and the installed `autoresearch` command. The fake executor stands in for the trials
only where the subject is the loop's order (it records every call, so "no trial ran" is checked, not assumed)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from runner.errors import UserError
from runner.ledger import Ledger
from runner.loop import Loop
from runner.policy import Policy
from runner.runs import RunConfig
from runner.workspace import init_repo
from tests.llm_server import MODEL, LLMServer
from tests.loop_fakes import TRAIN, FakeExecutor, Scripted, make_exp, set_score
from trainer.prepare import prepare

MUTATE = Policy(proposer={"ahead": 0})


def refused_url() -> str:
    """An endpoint on loopback where nothing listens (a port just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def openai_policy(base_url: str, model: str = MODEL) -> Policy:
    return Policy(proposer={"kind": "openai", "base_url": base_url, "model": model, "ahead": 0,
                            "api_key_env": "AUTORESEARCH_TEST_NO_SUCH_KEY", "timeout_seconds": 5})


def start(repo, data, policy, executor, *, tag="t", resume=False, max_trials=0, proposer=None):
    cfg = RunConfig(repo=repo, tag=tag, data_dir=data, policy=policy, max_trials=max_trials, resume=resume,
                    image="autoresearch-trial:test")
    return Loop(cfg, executor=executor, proposer=proposer).run()


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False).stdout.strip()


def assert_nothing_made(repo, executor, tag="t"):
    assert git(repo, "branch", "--list", f"autoresearch/{tag}") == ""
    assert not (repo / "runs" / tag).exists()
    assert executor.calls == [] and executor.specs == []


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- 1. the endpoint, before the baseline

def test_a_refused_endpoint_stops_a_new_run_before_any_branch_or_trial(tmp_path):
    repo, data = make_exp(tmp_path)
    url, executor = refused_url(), FakeExecutor()
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        start(repo, data, openai_policy(url), executor)
    msg = one_line(e)
    assert url in msg and "connection refused" in msg.lower(), msg
    assert "start the server or fix proposer.base_url" in msg
    assert time.monotonic() - t0 < 30
    assert_nothing_made(repo, executor)


def test_a_model_the_endpoint_does_not_list_stops_a_new_run_naming_the_model(tmp_path, llm_server):
    repo, data = make_exp(tmp_path)
    executor = FakeExecutor()
    with pytest.raises(UserError) as e:
        start(repo, data, openai_policy(llm_server.base_url, model="no-such-model"), executor)
    msg = one_line(e)
    assert llm_server.base_url in msg and "'no-such-model' is not in its list (has: test-model)" in msg, msg
    assert "set proposer.model" in msg
    assert_nothing_made(repo, executor)
    assert llm_server.requests == []                   # not one chat completion was asked for


def test_resume_checks_the_endpoint_before_it_changes_run_json(tmp_path):
    repo, data = make_exp(tmp_path)
    with LLMServer() as server:                        # the run starts while the endpoint answers
        start(repo, data, openai_policy(server.base_url), FakeExecutor())
        url = server.base_url
    run_json = (repo / "runs" / "t" / "run.json").read_bytes()
    ledger = Ledger(repo / "runs" / "t").records()
    assert [r.kind for r in ledger] == ["baseline"]
    executor = FakeExecutor()
    with pytest.raises(UserError) as e:                # the server is gone: resume fails at once
        start(repo, data, None, executor, resume=True, max_trials=1)
    msg = one_line(e)
    assert url in msg and "connection refused" in msg.lower(), msg
    assert executor.specs == [] and len(Ledger(repo / "runs" / "t").records()) == 1
    assert (repo / "runs" / "t" / "run.json").read_bytes() == run_json


def test_a_mutate_run_never_asks_an_endpoint(tmp_path):
    repo, data = make_exp(tmp_path)                    # the openai settings point nowhere; the proposer is mutate
    start(repo, data, Policy(proposer={"kind": "mutate", "base_url": refused_url(), "ahead": 0}), FakeExecutor())
    assert [r.status for r in Ledger(repo / "runs" / "t").records()] == ["keep"]


# --------------------------------------------------------------------------- 3. --resume and a changed policy

def test_resume_accepts_a_changed_memory_limit_and_records_the_change(tmp_path):
    repo, data = make_exp(tmp_path)
    start(repo, data, MUTATE, FakeExecutor(), max_trials=1, proposer=Scripted(set_score(0.9)))
    bigger = MUTATE.model_copy(update={"limits": MUTATE.limits.model_copy(update={"memory": "8g"})})
    start(repo, data, bigger, FakeExecutor(), resume=True, max_trials=2, proposer=Scripted(set_score(0.8)))
    meta = json.loads((repo / "runs" / "t" / "run.json").read_text())
    assert meta["policy_sha256"] == bigger.sha256() and meta["policy"]["limits"]["memory"] == "8g"
    [change] = meta["policy_changes"]
    assert change["changes"] == {"limits.memory": ["4g", "8g"]} and change["trials"] == 2
    assert change["policy_sha256"] == bigger.sha256()
    recs = Ledger(repo / "runs" / "t").records()
    assert [r.policy_sha256 for r in recs] == [MUTATE.sha256()] * 2 + [bigger.sha256()]


def test_resume_refuses_a_changed_budget_naming_the_field_and_changes_nothing(tmp_path):
    repo, data = make_exp(tmp_path)
    start(repo, data, MUTATE, FakeExecutor())
    run_json = (repo / "runs" / "t" / "run.json").read_bytes()
    shorter = MUTATE.model_copy(update={"train": MUTATE.train.model_copy(update={"budget_seconds": 120.0})})
    with pytest.raises(UserError) as e:
        start(repo, data, shorter, FakeExecutor(), resume=True)
    msg = one_line(e)
    assert "train.budget_seconds 240.0 -> 120.0 changes what a trial is scored on" in msg, msg
    assert "start a new tag" in msg
    assert (repo / "runs" / "t" / "run.json").read_bytes() == run_json


def test_resume_accepts_fewer_cpus_only_while_no_baseline_was_kept(tmp_path):
    repo = tmp_path / "exp"                             # a baseline that fails (as one the engine could not run)
    init_repo(repo, {"train.py": TRAIN + "CRASH = 1\n", "program.md": "p\n", ".gitignore": "runs/\n"})
    _, data = make_exp(tmp_path / "d")
    with pytest.raises(UserError, match="the baseline"):
        start(repo, data, MUTATE, FakeExecutor())
    fewer = MUTATE.model_copy(update={"limits": MUTATE.limits.model_copy(update={"cpus": 1.0})})
    with pytest.raises(UserError, match="the baseline"):   # accepted: the baseline runs again, under 1 core
        start(repo, data, fewer, FakeExecutor(), resume=True)
    meta = json.loads((repo / "runs" / "t" / "run.json").read_text())
    assert [c["changes"] for c in meta["policy_changes"]] == [{"limits.cpus": [2.0, 1.0]}]
    assert [r.policy_sha256 for r in Ledger(repo / "runs" / "t").records()] == [MUTATE.sha256(), fewer.sha256()]

    repo2, data2 = make_exp(tmp_path / "kept")          # with a kept baseline the same change is refused
    start(repo2, data2, MUTATE, FakeExecutor())
    with pytest.raises(UserError) as e:
        start(repo2, data2, fewer, FakeExecutor(), resume=True)
    assert "limits.cpus 2.0 -> 1.0 changes the compute a trial gets" in one_line(e)


# --------------------------------------------------------------------------- 4. the data, before a trial

@pytest.fixture(scope="module")
def corrupt_data(tmp_path_factory):
    """A real prepared data directory with one validation shard cut short after it was prepared."""
    d = tmp_path_factory.mktemp("data") / "d"
    prepare("synthetic", d, seed=1, train_docs=200, val_docs=10, log=lambda s: None)
    shard = min((d / "val").iterdir())
    shard.write_bytes(shard.read_bytes()[:-100])
    return d, shard


def test_a_corrupt_val_shard_stops_a_new_run_naming_the_file_and_the_command(tmp_path, corrupt_data):
    data, shard = corrupt_data
    repo, _ = make_exp(tmp_path)
    executor = FakeExecutor()
    with pytest.raises(UserError) as e:
        start(repo, data, MUTATE, executor)
    msg = one_line(e)
    assert "data check failed" in msg and str(shard) in msg and "does not match its sha256" in msg, msg
    assert f"autoresearch prepare synthetic --out {data} --force" in msg
    assert "image" not in msg
    assert_nothing_made(repo, executor)


def test_resume_verifies_the_data_before_it_changes_run_json(tmp_path):
    repo, _ = make_exp(tmp_path)
    data = tmp_path / "data-real"
    prepare("synthetic", data, seed=1, train_docs=200, val_docs=10, log=lambda s: None)
    start(repo, data, MUTATE, FakeExecutor())
    run_json = (repo / "runs" / "t" / "run.json").read_bytes()
    shard = min((data / "val").iterdir())
    shard.write_bytes(b"\0" * shard.stat().st_size)     # same size, other bytes
    executor = FakeExecutor()
    with pytest.raises(UserError) as e:
        start(repo, None, None, executor, resume=True, max_trials=1)
    assert str(shard) in one_line(e) and executor.specs == []
    assert (repo / "runs" / "t" / "run.json").read_bytes() == run_json


# --------------------------------------------------------------------------- 2. the engine, in doctor and run

def cli(*args, cwd=None):
    env = {**os.environ, "AUTORESEARCH_DATA": "/nonexistent-data"}
    return subprocess.run(["autoresearch", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env,
                          check=False, timeout=300)


@pytest.mark.docker
def test_cpus_the_engine_lacks_fail_doctor_and_run_before_any_container(tmp_path, docker_client):
    ncpu = int(docker_client.info()["NCPU"])
    repo, data = make_exp(tmp_path)
    policy = tmp_path / "p.yaml"
    policy.write_text("limits:\n  cpus: 64\ndecision:\n  min_delta: 0.002\n")   # (no no-op warning)
    p = cli("doctor", "--repo", repo, "--data", data, "--policy", policy)
    assert p.returncode == 1
    lines = p.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL cpus"))
    assert f"limits.cpus 64 but the engine has {ncpu} cores" in lines[at]
    assert f"set limits.cpus to {ncpu} or less" in lines[at + 1]

    tag = f"cpus64-{os.getpid()}"
    since = int(time.time()) - 1
    t0 = time.monotonic()
    p = cli("run", "--repo", repo, "--data", data, "--policy", policy, "--tag", tag, "--max-trials", 1, "--plain")
    assert p.returncode == 1, (p.stdout, p.stderr)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoresearch: error: cpus check failed: limits.cpus 64 but the "
                                               f"engine has {ncpu} cores; set limits.cpus to {ncpu} or less"), err
    assert time.monotonic() - t0 < 60
    assert git(repo, "branch", "--list", f"autoresearch/{tag}") == "" and not (repo / "runs" / tag).exists()
    created = list(docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                        filters={"type": ["container", "volume"], "event": "create",
                                                 "label": [f"autoresearch.run={tag}"]}))
    assert created == []
