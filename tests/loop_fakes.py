"""Fakes for loop tests without Docker: a scripted proposer and an executor whose trials' 'bpb' is a constant of
the candidate train.py. They stand in for the real parts only in addition to the real end-to-end tests
(test_loop_docker.py)."""
import re
import threading
import time
from pathlib import Path

from runner.proposers.base import Proposal
from runner.workspace import init_repo
from trainer.shards import atomic_write_json
from runner.executor import TrialOutcome

TRAIN = "SCORE = 1.000  # the fake trial's bpb\nLR = 0.04  # lr\n"


def make_exp(tmp_path):
    """(repo, data): an experiment repository holding TRAIN, and a data directory with an (empty) manifest."""
    repo = tmp_path / "exp"
    init_repo(repo, {"train.py": TRAIN, "program.md": "lower SCORE\n", ".gitignore": "runs/\n"})
    data = tmp_path / "data"
    atomic_write_json(data / "manifest.json", {"schema": "autoresearch.data/1", "files": {}})
    return repo, data


def set_score(value, description=None):
    def edit(ctx):
        text = re.sub(r"^SCORE = \S+", f"SCORE = {value}", ctx.files["train.py"], flags=re.M)
        return Proposal({"train.py": text}, description or f"SCORE -> {value}")
    return edit


def bonus(k):
    """An idea that touches no line SCORE edits (appended at the end): it merges onto another kept change."""
    def edit(ctx):
        return Proposal({"train.py": ctx.files["train.py"] + f"BONUS{k} = 1  # idea {k}\n"}, f"idea {k}")
    return edit


def crash(ctx):
    return Proposal({"train.py": ctx.files["train.py"] + "CRASH = 1  # boom\n"}, "a change that crashes")


def overtrain(ctx):
    """A candidate that trains past its budget + allowance (the fake trial ends it over_budget, as the host would)."""
    text = re.sub(r"^SCORE = \S+", "SCORE = 0.5", ctx.files["train.py"], flags=re.M)
    return Proposal({"train.py": text + "OVERTRAIN = 1  # trains on after the budget\n"}, "train longer")


def slow(ctx):
    """A candidate that the time budget stops before train.max_steps (the fake trial reports 5 steps, not 10)."""
    text = re.sub(r"^SCORE = \S+", "SCORE = 0.5", ctx.files["train.py"], flags=re.M)
    return Proposal({"train.py": text + "SLOW = 1  # a step takes longer\n"}, "a slower step")


def escape(ctx):
    return Proposal({"../outside.py": "import os\n"}, "write outside the repository")


class Scripted:
    name = "scripted"

    def __init__(self, *edits):
        self.edits = list(edits)
        self.contexts = []

    def propose(self, ctx):
        self.contexts.append(ctx)
        return self.edits.pop(0)(ctx)


class FakeExecutor:
    """Stands in for the Docker executor (runner.executor.Executor): a trial's 'bpb' is the SCORE constant of the
    candidate (+ a per-seed offset). Records what the loop asked of it in `calls`."""
    name = "fake"

    def __init__(self, seed_offsets=None, interrupt_at=None, slots=1, seconds=0.0, gates=None):
        self.slots = slots
        self.seconds = seconds            # each trial takes this long
        self.gates = gates or {}          # trial id -> threading.Event the trial waits for before it ends
        self.running, self.most_at_once, self.log = 0, 0, []   # log: ("start"|"end", trial id, monotonic time)
        self.mutex = threading.Lock()
        self.on_start = None              # called with each trial id as it starts
        self.specs = []
        self.calls = []
        self.seed_offsets = seed_offsets or {}
        self.interrupt_at = interrupt_at

    def resolve_image(self, policy):
        self.calls.append("resolve_image")
        return "img:fake"

    def remove_leftovers(self, run_tag):
        self.calls.append(f"remove_leftovers {run_tag}")
        return 0

    def start(self, policy, *, image, data_dir, run_tag, work_dir):
        self.calls.append(f"start {image}")

    def close(self):
        self.calls.append("close")

    def run(self, spec, on_line=None, on_phase=None):
        if spec.trial_id == self.interrupt_at:
            raise KeyboardInterrupt
        with self.mutex:
            self.specs.append(spec)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.log.append(("start", spec.trial_id, time.monotonic()))
        if self.on_start:
            self.on_start(spec.trial_id)
        try:
            time.sleep(self.seconds)
            if spec.trial_id in self.gates:
                assert self.gates[spec.trial_id].wait(10), f"trial {spec.trial_id} was never let through"
            out = self._outcome(spec, on_line, on_phase)     # (a subclass may move its score)
            if out.status == "ok" and out.probe_scope is None:  # the probe scope as trainer/evaluate.py picks it
                below = spec.every_batch_below
                out.probe_scope = "one_batch" if below is not None and out.val_bpb >= below else "every_batch"
            return out
        finally:
            with self.mutex:
                self.running -= 1
                self.log.append(("end", spec.trial_id, time.monotonic()))

    def _outcome(self, spec, on_line, on_phase):
        if on_phase:
            on_phase("training")
        text = (Path(spec.candidate_dir) / "train.py").read_text()
        if on_line:
            on_line("step=1 loss=3.0 progress=0.5 remaining_s=1.0")
        if "CRASH" in text:
            return TrialOutcome("crash", log_tail="Traceback\nRuntimeError: boom", error="train.py exited with 1",
                                image_digest="sha256:fake")
        if "OVERTRAIN" in text:
            return TrialOutcome("over_budget", error="the train phase took 31.0 s on the host's clock, over the budget "
                                "of 8 s plus the start-up and export allowance of 12 s", image_digest="sha256:fake",
                                timings={"train_host_s": 31.0}, train_summary={"training_seconds": 7.9},
                                log_tail="step=90 loss=2.0")
        if on_phase:
            on_phase("evaluating")
        score = float(re.search(r"^SCORE = (\S+)", text, re.M).group(1)) + self.seed_offsets.get(spec.seed, 0.0)
        score -= 0.2 * len(re.findall(r"^BONUS\d* = 1", text, re.M))          # each independent idea helps
        scope = "one_batch" if "UNPROBED" in text else None       # UNPROBED: one batch whatever the score
        host_s = re.search(r"^TRAIN_S = (\S+)", text, re.M)                # the train phase on the host's clock
        return TrialOutcome("ok", val_bpb=score, image_digest="sha256:fake", probe_scope=scope,
                            timings={"total_s": 0.01, "train_host_s": float(host_s.group(1)) if host_s else 2.5},
                            train_summary={"training_seconds": 2.0, "peak_memory_mb": 512.0,
                                           "num_steps": 5 if "SLOW" in text else 10,
                                           "tokens_per_second": 100.0})


def unusable(ctx):
    return Proposal({}, "(no usable reply)", usage={"calls": 4}, raw_reply="I cannot",
                    error="reply unusable after 4 tries: the reply holds no '<<<<<<< SEARCH <path>' block")


def with_usage(edit, tokens, completion=10):
    """`edit`, reporting the LLM usage of one call of `tokens` tokens (`completion` of them the reply's)."""
    def propose(ctx):
        p = edit(ctx)
        p.usage = {"calls": 1, "prompt_tokens": tokens - completion, "completion_tokens": completion,
                   "total_tokens": tokens}
        return p
    return propose
