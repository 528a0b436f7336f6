"""One real research loop over many hostile LLM replies: the adversarial suite's loop-level harness.

`run_hostile_loop` builds an experiment repository (the real trainer/train.py, committed), starts the scripted
OpenAI-compatible server of tests/llm_server.py on 127.0.0.1 with one reply per attack, and runs the real loop
(`runner.loop.Loop`: the `openai` proposer with the real client, the patch policy, git, the real trial in the
real engine) for exactly one trial per attack after one baseline. Attack k is trial k (trial 0 is the baseline).

One baseline serves every attack, so the whole list costs one real training plus a few seconds of container per
hostile candidate (most import nothing heavy and exit at once; the slot of the next trial starts while one runs).
The result records what an attack test needs to show the run is intact afterwards: every ledger row, the raw
ledger lines, the branch, the trial refs, the data directory's file hashes before and after, the requests the
model server saw, the runner's open fds and RSS before and after, and anything the loop raised.

A reply replaces train.py as a whole (`replace_train`), creates a file (`new_file`), or is any text at all
(malformed replies). The policy is `tiny` with a step limit and one core, so a
CPU-quota attack can see a limit below the machine's cores.
"""
from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from runner.ledger import Ledger, TrialRecord
from runner.loop import Loop
from runner.runs import RunConfig
from runner.workspace import Workspace, init_repo
from tests.llm_server import MODEL, LLMServer, search_replace
from tests.sandbox_kit import REAL_TRAIN_PY, policy

START_TRAIN = REAL_TRAIN_PY.read_text()
PROGRAM = "Lower val_bpb.\n"
# secrets in the runner's environment that no candidate may see (the env-leak attack looks for them everywhere)
SECRETS = {"OPENAI_API_KEY": "sk-adversarial-0f1e2d3c4b5a", "AUTORESEARCH_TEST_SECRET": "s3cr3t-b7a6c5d4e3f2",
           "AWS_SECRET_ACCESS_KEY": "aws-adversarial-9a8b7c6d"}
LINKED = "model.py"                       # an allowed file that is a symlink in the start commit ...
VICTIM, VICTIM_TEXT = "victim.txt", "victim\n"  # ... to this file beside the repository

# the loop's policy: the tiny preset, a few steps, one core, small output and /tmp caps, room for whole-file edits
LOOP_LIMITS = {"memory": "1g", "cpus": 1.0, "pids": 64, "output_mb": 32, "tmpfs_mb": 32, "shm_mb": 32}
LOOP_STEPS = 3
CHILDREN_EXIT_S = 10                      # how long the run's helper processes may take to exit after it


@dataclass
class Attack:
    name: str                    # what it tries (the test id)
    reply: str | Callable        # the LLM's reply text, or a function of the run's facts -> text
                                 # ({"data_dir": the run's data, "port": the LLM server's port})
    status: str                  # the exact ledger status it must end with


@dataclass
class LoopResult:
    repo: Path
    tag: str
    run_dir: Path
    start: str                                   # the start commit
    records: list[TrialRecord]
    lines: list[str]                             # trials.jsonl, raw
    branch: str | None                           # where autoresearch/<tag> points
    trial_refs: dict[int, str]
    data_before: dict[str, str]                  # data dir: relative path -> sha256
    data_after: dict[str, str]
    requests: list[dict]                         # what the model server was asked, in order
    fds: tuple[int, int]                         # the runner's open fds before and after
    rss_mb: tuple[float, float]                  # the runner's resident memory before and after
    children: tuple[int, int] = (0, 0)           # the runner's live child processes before and after
    error: BaseException | None = None           # what the loop raised, if anything
    by_name: dict[str, TrialRecord] = field(default_factory=dict)
    attacks: list[Attack] = field(default_factory=list)

    def row(self, name: str) -> TrialRecord:
        assert name in self.by_name, f"no ledger row for {name}; the loop stopped early: {self.error!r}"
        return self.by_name[name]

    def trial_dir(self, name: str) -> Path:
        return self.run_dir / "trials" / str(self.row(name).trial)

    def prompt_after(self, name: str) -> str:
        """The user message of the request for the trial after `name` (what the model saw of it)."""
        n = self.row(name).trial                 # the request for trial n+1 is request number n (0-based)
        assert len(self.requests) > n, f"no request after trial {n}"
        return self.requests[n]["messages"][-1]["content"]


# --------------------------------------------------------------------------- reply builders

def replace_train(source: str, description: str) -> str:
    """A well-formed reply that replaces all of train.py with `source` (dedented)."""
    return search_replace("train.py", START_TRAIN, textwrap.dedent(source).lstrip("\n"), description)


def new_file(path: str, text: str, description: str) -> str:
    """A reply that creates `path` (an empty SEARCH)."""
    return f"DESCRIPTION: {description}\n\n<<<<<<< SEARCH {path}\n=======\n{text}>>>>>>> REPLACE\n"


# --------------------------------------------------------------------------- measurements

def file_hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def children() -> int:
    """Live processes whose parent is this process (the slots' watchdogs, any helper the runner started)."""
    n, me = 0, str(os.getpid())
    for p in Path("/proc").iterdir():
        try:
            state, ppid = (p / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        n += ppid == me and state != "Z"
    return n


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the run

def loop_policy(base_url: str, **overrides):
    sections = {
        "train": {"budget_seconds": 8, "max_steps": LOOP_STEPS},
        "limits": LOOP_LIMITS,
        "patch": {"max_diff_lines": 2000, "allowed_files": ["train.py", LINKED]},
        "decision": {"min_delta": 0.0},
        "proposer": {"kind": "openai", "base_url": base_url, "model": MODEL, "api_key_env": "OPENAI_API_KEY",
                     "timeout_seconds": 30, "max_retries": 0, "max_backoff_retries": 0, "history": 10,
                     "ahead": 0},           # on demand: each prompt holds the previous trial's result
    }
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    return policy(**sections)


def make_repo(repo: Path) -> str:
    """The experiment: the real train.py and program.md, plus an allowed file that is a symlink to a file
    outside the repository."""
    init_repo(repo, {"train.py": START_TRAIN, "program.md": PROGRAM, ".gitignore": "runs/\n"})
    (repo.parent / VICTIM).write_text(VICTIM_TEXT)
    os.symlink(f"../{VICTIM}", repo / LINKED)
    git = ["git", "-C", str(repo), "-c", "core.hooksPath=/dev/null", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", LINKED], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "an allowed file that is a link"], check=True, capture_output=True)
    return Workspace(repo).head_commit()


def run_hostile_loop(root: Path, attacks: list[Attack], *, image: str, data_dir: Path, tag: str,
                     policy_overrides: dict | None = None) -> LoopResult:
    """Run the baseline and one trial per attack through the real loop; never raises (see LoopResult.error)."""
    root = Path(root)
    repo = root / "exp"
    start = make_repo(repo)
    data_before = file_hashes(data_dir)
    saved = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    error = None
    try:
        with LLMServer() as server:
            info = {"data_dir": Path(data_dir), "port": int(server.base_url.split(":")[2].split("/")[0])}
            server.push(*[{"reply": a.reply(info) if callable(a.reply) else a.reply} for a in attacks])
            pol = loop_policy(server.base_url, **(policy_overrides or {}))
            fds0, rss0, kids0 = open_fds(), rss_mb(), children()
            try:
                Loop(RunConfig(repo=repo, tag=tag, data_dir=Path(data_dir), policy=pol, proposer="openai",
                               max_trials=len(attacks), image=image)).run()
            except Exception as e:  # noqa: BLE001 - recorded; each test asserts on what it needs
                error = e
            deadline = time.monotonic() + CHILDREN_EXIT_S
            while children() > kids0 and time.monotonic() < deadline:
                time.sleep(0.2)
            fds1, rss1, kids1 = open_fds(), rss_mb(), children()
            requests = list(server.requests)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ws = Workspace(repo)
    run_dir = repo / "runs" / tag
    ledger = Ledger(run_dir)
    records = ledger.records() if ledger.exists() else []
    lines = (run_dir / "trials.jsonl").read_text().splitlines() if (run_dir / "trials.jsonl").exists() else []
    res = LoopResult(repo=repo, tag=tag, run_dir=run_dir, start=start, records=records, lines=lines,
                     branch=ws.rev(ws.branch_ref(tag)), trial_refs=ws.trial_refs(tag),
                     data_before=data_before, data_after=file_hashes(data_dir), requests=requests,
                     fds=(fds0, fds1), rss_mb=(rss0, rss1), children=(kids0, kids1), error=error,
                     attacks=list(attacks))
    for k, attack in enumerate(attacks, 1):
        rec = next((r for r in records if r.trial == k), None)
        if rec is not None:
            res.by_name[attack.name] = rec
    return res
