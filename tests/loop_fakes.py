"""Fakes for loop tests without Docker: a scripted proposer and a trial function whose 'bpb' is a constant of
the candidate train.py. They stand in for the real parts only in addition to the real end-to-end tests
(test_loop_docker.py)."""
import re
from pathlib import Path

from runner.proposers.base import Proposal
from runner.trial import TrialOutcome

TRAIN = "SCORE = 1.000  # the fake trial's bpb\nLR = 0.04  # lr\n"


def set_score(value, description=None):
    def edit(ctx):
        text = re.sub(r"^SCORE = \S+", f"SCORE = {value}", ctx.files["train.py"], flags=re.M)
        return Proposal({"train.py": text}, description or f"SCORE -> {value}")
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


class FakeTrial:
    """Stands in for run_trial: the 'bpb' is the SCORE constant of the candidate (+ a per-seed offset)."""

    def __init__(self, seed_offsets=None, interrupt_at=None):
        self.specs = []
        self.seed_offsets = seed_offsets or {}
        self.interrupt_at = interrupt_at

    def __call__(self, spec, on_line=None, on_phase=None):
        if spec.trial_id == self.interrupt_at:
            raise KeyboardInterrupt
        self.specs.append(spec)
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
        return TrialOutcome("ok", val_bpb=score, image_digest="sha256:fake",
                            timings={"total_s": 0.01, "train_host_s": 2.5},
                            train_summary={"training_seconds": 2.0, "peak_memory_mb": 512.0,
                                           "num_steps": 5 if "SLOW" in text else 10,
                                           "tokens_per_second": 100.0})


def unusable(ctx):
    return Proposal({}, "(no usable reply)", usage={"calls": 4}, raw_reply="I cannot",
                    error="reply unusable after 4 tries: the reply holds no '<<<<<<< SEARCH <path>' block")
