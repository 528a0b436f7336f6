"""The whole loop for real: the `autoresearch` command, real git repositories, real containers, the real openai
client against a scripted server on 127.0.0.1. A known-good change is kept, a known-bad one discarded, a crashing
one recorded as crash; ledger, results.tsv, branch history and report agree. A runner killed with SIGKILL in the
middle of a trial resumes: no orphan container (its slots' watchdogs remove them), a ledger that parses, the branch
at the best commit, every trial run exactly once."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runner.ledger import Ledger
from runner.sandbox.cleanup import leftovers
from runner.workspace import Workspace, init_repo
from tests.llm_server import MODEL, search_replace

pytestmark = pytest.mark.docker

REAL_TRAIN = (Path(__file__).resolve().parent.parent / "trainer" / "train.py").read_text()
LRS = {"MATRIX_LR": 0.04, "EMBEDDING_LR": 0.3, "UNEMBEDDING_LR": 0.004, "SCALAR_LR": 0.5}


def line_of(text: str, name: str) -> str:
    return re.search(rf"^{name} = .*\n", text, re.M).group(0)


def with_lrs(text: str, scale: float) -> str:
    for name, value in LRS.items():
        text = text.replace(line_of(text, name), f"{name} = {value * scale:.3g}  # scaled for the test\n")
    return text


def lr_reply(current: str, scale: float, description: str) -> str:
    """Search/replace blocks that set every learning rate to scale x its default."""
    target = with_lrs(current, scale)
    blocks = [search_replace("train.py", line_of(current, n), line_of(target, n), description) for n in LRS]
    return blocks[0] + "".join(b.split("\n", 2)[2] for b in blocks[1:])  # one DESCRIPTION line


def policy_file(path: Path, **proposer) -> Path:
    lines = ["preset: tiny", "flavour: cpu",
             "train: {budget_seconds: 60, allowance_seconds: 90, max_steps: 8}",
             "eval: {timeout_seconds: 150}", "limits: {memory: 2g, cpus: 2.0, pids: 128}",
             "decision: {min_delta: 0.0}"]
    lines.append("proposer: {" + ", ".join(f"{k}: {v}" for k, v in proposer.items()) + "}")
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args, cwd=None, timeout=600):
    return subprocess.run(["autoresearch", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def labelled(client, tag, trial=None):
    return leftovers(tag, trial, client)[0]        # tolerates containers removed while they are listed


def test_a_real_run_keeps_the_good_discards_the_bad_and_records_the_crash(tmp_path, llm_server, trial_image,
                                                                          sandbox_data, docker_client):
    repo = tmp_path / "exp"
    handicapped = with_lrs(REAL_TRAIN, 0.02)   # the start: learning rates 50x too small
    init_repo(repo, {"train.py": handicapped, "program.md": "Lower val_bpb.\n", ".gitignore": "runs/\n"})
    restored = with_lrs(handicapped, 1.0)
    crash_line = line_of(restored, "run")
    llm_server.push(
        {"reply": lr_reply(handicapped, 1.0, "restore the default learning rates")},          # known good
        {"reply": lr_reply(restored, 1e-4, "learning rates 10000x smaller")},                 # known bad
        {"reply": search_replace("train.py", crash_line, crash_line + "raise RuntimeError('deliberate crash')\n",
                                 "a change that crashes")})                                   # crashes
    tag = f"e2e-{os.getpid()}"
    policy = policy_file(tmp_path / "policy.yaml", kind="openai", base_url=llm_server.base_url, model=MODEL,
                         api_key_env="AUTORESEARCH_TEST_NO_SUCH_KEY", timeout_seconds=10, max_retries=1,
                         ahead=0)   # on demand: each scripted reply is written for the result before it
    p = cli("run", "--repo", repo, "--tag", tag, "--policy", policy, "--data", sandbox_data, "--image",
            trial_image.tag, "--max-trials", 3, "--plain")
    assert p.returncode == 0, p.stdout + p.stderr

    run_dir = repo / "runs" / tag
    recs = Ledger(run_dir).records()
    assert [(r.trial, r.status) for r in recs] == [(0, "keep"), (1, "keep"), (2, "discard"), (3, "crash")], \
        [(r.trial, r.status, r.val_bpb, r.reason) for r in recs]
    base, good, bad, crashed = recs
    assert good.val_bpb < base.val_bpb and bad.val_bpb > good.val_bpb
    assert "deliberate crash" in crashed.log_tail and crashed.val_bpb is None
    assert all(r.image_digest == trial_image.id for r in recs)
    assert good.llm_usage["calls"] == 1 and good.llm_usage["total_tokens"] > 0
    # git: the branch holds only the kept change; every trial has its ref; the crash did not move the branch
    ws = Workspace(repo)
    assert ws.history(tag, base.commit) == [good.commit]
    assert git(repo, "rev-parse", f"autoresearch/{tag}") == good.commit
    assert bad.parent == crashed.parent == good.commit
    assert ws.trial_refs(tag) == {0: base.commit, 1: good.commit, 2: bad.commit, 3: crashed.commit}
    assert ws.read_file(good.commit, "train.py") == restored
    assert git(repo, "status", "--porcelain") == "" and (repo / "train.py").read_text() == handicapped
    # results.tsv and the report say the same
    tsv = [line.split("\t") for line in (run_dir / "results.tsv").read_text().splitlines()[1:]]
    assert [(row[0], row[3]) for row in tsv] == [(r.commit[:7], r.status) for r in recs]
    assert float(tsv[1][1]) == pytest.approx(good.val_bpb, abs=1e-6)
    report = (run_dir / "report.md").read_text()
    assert "| keep | 2 |" in report and "| discard | 1 |" in report and "| crash | 1 |" in report
    assert "restore the default learning rates" in report and (run_dir / "progress.png").stat().st_size > 1000
    assert not labelled(docker_client, tag)

    # reproduce the kept trial from its commit, seed and image digest: both BPBs shown, and they agree
    p = cli("reproduce", 1, "--repo", repo, "--tag", tag)
    assert p.returncode == 0, p.stdout + p.stderr
    again = float(re.search(r"reproduced: ok\s+val_bpb (\S+)", p.stdout).group(1))
    assert f"{good.val_bpb:.6f}" in p.stdout and again == pytest.approx(good.val_bpb, abs=0.01)
    assert "steps:      ledger 8, reproduced 8 (train.max_steps 8: a step-for-step repeat)" in p.stdout
    assert not labelled(docker_client, f"{tag}-reproduce")


def test_a_runner_killed_mid_trial_resumes_cleanly(tmp_path, trial_image, sandbox_data, docker_client):
    repo = tmp_path / "exp"
    init_repo(repo, {"train.py": REAL_TRAIN, "program.md": "p\n", ".gitignore": "runs/\n"})
    tag = f"kill-{os.getpid()}"
    policy = policy_file(tmp_path / "policy.yaml", kind="mutate")
    args = ["run", "--repo", repo, "--tag", tag, "--policy", policy, "--data", sandbox_data, "--plain"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(["autoresearch", *map(str, args), "--max-trials", "1"], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not [c for c in labelled(docker_client, tag) if c.status == "running"    # named after the trial
                       and c.name == f"autoresearch-{tag}-1-train"]:                      # that took its slot
                assert proc.poll() is None, (tmp_path / "first.log").read_text()
                assert time.monotonic() < deadline, "trial 1 never started training"
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    t0 = time.monotonic()                  # the slots' watchdogs remove what the killed runner left, at once
    while labelled(docker_client, tag) and time.monotonic() - t0 < 15:
        time.sleep(0.2)
    assert not labelled(docker_client, tag), "the killed runner's containers outlived it"
    assert [r.trial for r in Ledger(repo / "runs" / tag).records()] == [0]

    p = cli("run", "--repo", repo, "--tag", tag, "--resume", "--plain")
    assert p.returncode == 0, p.stdout + p.stderr
    assert not labelled(docker_client, tag), "orphans of the killed run were not cleaned up"
    recs = Ledger(repo / "runs" / tag).records()
    assert [r.trial for r in recs] == [0, 1] and all(r.status in ("keep", "discard") for r in recs)
    best = [r for r in recs if r.status == "keep"][-1]
    assert git(repo, "rev-parse", f"autoresearch/{tag}") == best.commit
    lines = (repo / "runs" / tag / "trials.jsonl").read_text().splitlines()
    assert all(json.loads(line)["trial"] == i for i, line in enumerate(lines))
    assert "resumed after 1 trials" in p.stdout
    assert all(r.image == trial_image.tag for r in recs)  # no --image: the tag `autoresearch build` made


class CpusetWatch:
    """Samples the run's train containers that hold a trial (not those started ahead, still waiting): their
    cpusets, and how many ran at once."""

    def __init__(self, client, tag):
        import threading
        self.client, self.tag, self.seen, self.most, self.stop = client, tag, set(), 0, threading.Event()
        self.names = set()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        import docker.errors
        while not self.stop.is_set():
            running = []
            for c in labelled(self.client, self.tag):
                try:
                    attrs = self.client.api.inspect_container(c.id)
                except docker.errors.NotFound:
                    continue
                if re.fullmatch(rf"autoresearch-{self.tag}-\d+(-\w+)?-train", c.name) and attrs["State"]["Running"]:
                    running.append(attrs["HostConfig"]["CpusetCpus"])
                    self.names.add((c.name, attrs["HostConfig"]["CpusetCpus"], attrs["HostConfig"]["NanoCpus"]))
            self.seen |= set(running)
            self.most = max(self.most, len(running))
            self.stop.wait(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def edit(old: str, new: str, description: str):
    """A scripted proposer's edit of the real train.py."""
    from runner.proposers.base import Proposal

    def propose(ctx):
        return Proposal({"train.py": ctx.files["train.py"].replace(old, new)}, description)
    return propose


# a start commit whose Muon and embedding learning rates are cut a thousandfold: restoring either one beats it for
# certain (doubling them on the real train.py once scored worse than the baseline on a loaded CI machine)
CUT = REAL_TRAIN.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.04e-3").replace("EMBEDDING_LR = 0.6", "EMBEDDING_LR = 0.6e-3")
BOTH = CUT[CUT.index("MATRIX_LR = 0.04e-3"):CUT.index("\n", CUT.index("EMBEDDING_LR = 0.6e-3"))]


def test_two_cpu_slots_train_two_candidates_at_once_each_on_its_own_core(tmp_path, trial_image, sandbox_data,
                                                                         docker_client):
    from runner.loop import Loop
    from runner.policy import load_policy
    from runner.runs import RunConfig
    from tests.loop_fakes import Scripted
    repo = tmp_path / "exp"
    init_repo(repo, {"train.py": CUT, "program.md": "p\n", ".gitignore": "runs/\n"})
    raw = load_policy("tiny").model_dump()
    raw.update(slots=2, limits={**raw["limits"], "cpus": 1.0}, proposer={**raw["proposer"], "ahead": 2})
    policy = type(load_policy("tiny")).model_validate(raw)
    # two changes that each beat the baseline (each restores a learning rate; different lines: they merge), and a
    # third that edits both lines: proposed on the baseline, it conflicts with whichever was kept first, so it is
    # stale untrained
    proposer = Scripted(edit("MATRIX_LR = 0.04e-3", "MATRIX_LR = 0.04", "matrix lr restored"),
                        edit("EMBEDDING_LR = 0.6e-3", "EMBEDDING_LR = 0.6", "embedding lr restored"),
                        edit(BOTH, BOTH.replace("= 0.04e-3", "= 0.05e-3").replace("= 0.6e-3", "= 0.7e-3"), "both"))
    tag = f"slots-{os.getpid()}"
    with CpusetWatch(docker_client, tag) as watch:
        summary = Loop(RunConfig(repo=repo, tag=tag, data_dir=sandbox_data, policy=policy, max_trials=3,
                                 image=trial_image.tag), proposer=proposer).run()
    recs = Ledger(repo / "runs" / tag).records()
    by_id = {r.trial: r for r in recs}
    assert sorted(by_id) == [0, 1, 2, 3] and len(recs) == 4                    # each id once
    assert watch.most == 2 and watch.seen == {"0", "1"}, (watch.most, watch.names)   # both at once, own cores
    assert by_id[1].slot in ("0", "1") and by_id[2].slot in ("0", "1")      # the slot of its last run
    first = min((by_id[1], by_id[2]), key=lambda r: r.finished_at)
    assert first.status == "keep", first.reason
    assert by_id[3].status == "stale" and by_id[3].outcome is None, by_id[3].reason   # never trained
    kept = [r for r in recs if r.status == "keep"]
    assert git(repo, "rev-parse", f"autoresearch/{tag}") == summary.best_commit == kept[-1].commit
    assert git(repo, "rev-list", "--reverse", f"{recs[0].commit}..autoresearch/{tag}").split() == \
        [r.commit for r in kept if r.kind == "candidate"]
    assert not labelled(docker_client, tag)


def test_a_runner_killed_with_two_trials_in_flight_resumes_each_once(tmp_path, trial_image, sandbox_data,
                                                                     docker_client):
    repo = tmp_path / "exp"
    init_repo(repo, {"train.py": REAL_TRAIN, "program.md": "p\n", ".gitignore": "runs/\n"})
    tag = f"kill2-{os.getpid()}"
    policy = policy_file(tmp_path / "policy.yaml", kind="mutate")
    policy.write_text(policy.read_text().replace("cpus: 2.0", "cpus: 1.0") + "slots: 2\n")
    args = ["run", "--repo", repo, "--tag", tag, "--policy", policy, "--data", sandbox_data, "--plain"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(["autoresearch", *map(str, args), "--max-trials", "2"], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            want = {f"autoresearch-{tag}-{n}-train" for n in (1, 2)}
            while not want <= {c.name for c in labelled(docker_client, tag) if c.status == "running"}:
                assert proc.poll() is None, (tmp_path / "first.log").read_text()
                assert time.monotonic() < deadline, "trials 1 and 2 never trained at once"
                time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    t0 = time.monotonic()
    while labelled(docker_client, tag) and time.monotonic() - t0 < 15:
        time.sleep(0.2)
    assert not labelled(docker_client, tag), "the killed runner's containers outlived it"
    refs = Workspace(repo).trial_refs(tag)
    assert sorted(refs) == [0, 1, 2] and [r.trial for r in Ledger(repo / "runs" / tag).records()] == [0]

    p = cli("run", "--repo", repo, "--tag", tag, "--resume", "--plain")
    assert p.returncode == 0, p.stdout + p.stderr
    recs = Ledger(repo / "runs" / tag).records()
    assert sorted(r.trial for r in recs) == [0, 1, 2], [(r.trial, r.status) for r in recs]   # none lost, none twice
    assert all(r.status in ("keep", "discard", "stale") for r in recs)
    for r in recs[1:]:                                          # the same code that was in flight ran again
        assert (r.rebased or {}).get("from_commit", r.commit) == refs[r.trial]
    best = [r for r in recs if r.status == "keep"][-1]
    assert git(repo, "rev-parse", f"autoresearch/{tag}") == best.commit
    assert not labelled(docker_client, tag)
