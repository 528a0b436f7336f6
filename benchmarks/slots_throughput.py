"""Benchmark: trials per hour with several slots, and the slot time lost to a slow proposer, side by side.

Real runs (real git, real containers, the `cpu` preset, the `mutate` proposer), one configuration after another in
one sitting:
    1x2          one slot of 2 cores (what a run did before issue 17)
    2x1          two slots of 1 core each, each pinned to its own core
    slow-demand  one slot of 2 cores, a proposer that takes --slow s, proposals on demand (proposer.ahead 0)
    slow-ahead   the same, the next proposal made while the trial trains (proposer.ahead 1)
The slow proposer is the real `openai` proposer and client against a stub OpenAI-compatible server on 127.0.0.1
(tests/llm_server.py) that answers each request after --slow s with a one-line edit of a hyperparameter, as the
mutate proposer makes (`SlowLLM`).

Per configuration, over its candidate trials (the baseline excluded): trials per hour, the share of slot time
in train phases (host-measured training seconds, hand-over to exit, start-up and export included / (slots x
elapsed)), the share inside the training budgets themselves (runs x budget / (slots x elapsed)), the share of
slot time a slot sat waiting for a proposal (the loop's `proposal_wait_s`), the mean evaluation phase, and how
many candidates were probed on one batch only (scored above the bar a keep needs). `-full` configurations give
no bar, as before it existed: every evaluation probes every batch.

    python benchmarks/slots_throughput.py                    # 3 trials each at a 30 s budget
    python benchmarks/slots_throughput.py --trials 10 --budget 60 --configs 1x2,2x1
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_data import prepare_synthetic  # noqa: E402
from runner import decision  # noqa: E402
from runner.ledger import Ledger  # noqa: E402
from runner.loop import Loop  # noqa: E402
from runner.policy import load_policy  # noqa: E402
from runner.proposers.mutate import MutateProposer  # noqa: E402
from runner.runs import RunConfig  # noqa: E402
from tests.llm_server import MODEL, LLMServer, search_replace  # noqa: E402 - the stub OpenAI-compatible server
from runner.sandbox import images  # noqa: E402 - builds the image the runs pin
from runner.workspace import init_repo  # noqa: E402

CONFIGS = {"1x2": dict(slots=1, cpus=2.0, ahead=1, slow=False), "2x1": dict(slots=2, cpus=1.0, ahead=2, slow=False),
           "slow-demand": dict(slots=1, cpus=2.0, ahead=0, slow=True),
           "slow-ahead": dict(slots=1, cpus=2.0, ahead=1, slow=True),
           # as before the probe bar: every candidate run's evaluation probes every batch, whatever it scores
           "1x2-full": dict(slots=1, cpus=2.0, ahead=1, slow=False, full=True),
           "2x1-full": dict(slots=2, cpus=1.0, ahead=2, slow=False, full=True)}


TUNED = ("MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR", "SCALAR_LR", "WARMDOWN_FRAC", "MUON_MOMENTUM")
SLOW_KEY_ENV = "SLOTS_BENCH_LLM_KEY"


class SlowLLM:
    """A stub LLM on the loopback: each chat request is answered after `seconds` with a reply that scales one of
    TUNED in the train.py the prompt shows (found there, so the edit applies to the current best)."""

    def __init__(self, seconds: float, seed: int = 0):
        self.seconds, self.rng, self.server = seconds, random.Random(seed), LLMServer()

    def __enter__(self) -> "SlowLLM":
        self.server.__enter__()
        self.server.push(*[self._answer] * 1000)
        os.environ[SLOW_KEY_ENV] = "sk-stub"
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    def _answer(self, req: dict) -> dict:
        time.sleep(self.seconds)
        prompt = "\n".join(str(m.get("content", "")) for m in req.get("messages", []))
        name = self.rng.choice(TUNED)
        line = re.search(rf"^{name} = ([0-9.]+)(.*)$", prompt, re.M)
        new = f"{float(line.group(1)) * self.rng.choice((0.8, 0.9, 1.1, 1.25)):.6g}"
        return {"reply": search_replace("train.py", line.group(0) + "\n", f"{name} = {new}{line.group(2)}\n",
                                        f"{name} {line.group(1)} -> {new}")}


def policy_for(args, slots: int, cpus: float, ahead: int, llm: SlowLLM | None = None):
    raw = load_policy(None).model_dump()
    raw["train"] = {**raw["train"], "budget_seconds": args.budget, "allowance_seconds": 120}
    raw["limits"] = {**raw["limits"], "cpus": cpus}
    raw["decision"] = {**raw["decision"], "baseline_repeats": 1}
    raw["proposer"] = {**raw["proposer"], "kind": "mutate", "ahead": ahead}
    if llm is not None:
        raw["proposer"].update(kind="openai", base_url=llm.server.base_url, model=MODEL, api_key_env=SLOW_KEY_ENV,
                               timeout_seconds=args.slow + 60)
    raw["slots"] = slots
    return type(load_policy(None)).model_validate(raw)


def one(name: str, args, data: Path, image: str, work: Path) -> dict:
    c = CONFIGS[name]
    repo = work / name
    init_repo(repo, {"train.py": resources.files("trainer").joinpath("train.py").read_text(),
                     "program.md": "Lower val_bpb.\n", ".gitignore": "runs/\n"})
    bar = decision.probe_bar
    if c.get("full"):
        decision.probe_bar = lambda best, thresh: None      # no bar: every batch probed (the loop reads it here)
    try:
        with (SlowLLM(args.slow) if c["slow"] else contextlib.nullcontext()) as llm:
            policy = policy_for(args, c["slots"], c["cpus"], c["ahead"], llm)
            Loop(RunConfig(repo=repo, tag="bench", data_dir=data, policy=policy, max_trials=args.trials,
                           image=image), proposer=None if llm else MutateProposer()).run()
    finally:
        decision.probe_bar = bar
    cands = [r for r in Ledger(repo / "runs" / "bench").records() if r.kind == "candidate"]
    t0 = min(r.started_at - r.timings.get("proposal_wait_s", 0.0) for r in cands)
    elapsed = max(r.finished_at for r in cands) - t0
    slot_s = c["slots"] * elapsed
    train = sum((r.training_seconds or 0.0) + ((r.confirm or {}).get("training_seconds") or 0.0)
                + ((r.rebased or {}).get("training_seconds") or 0.0) for r in cands)
    runs = sum(1 + bool(r.confirm) + bool(r.rebased) for r in cands if r.outcome is not None)
    waited = sum(r.timings.get("proposal_wait_s", 0.0) for r in cands)
    evals = [r.trial_timings["eval_host_s"] for r in cands if r.trial_timings.get("eval_host_s") is not None]
    return {"config": name, "trials": len(cands), "elapsed": elapsed, "per_hour": 3600 * len(cands) / elapsed,
            "in_budget": 100 * train / slot_s, "budgets": 100 * runs * args.budget / slot_s,
            "proposal_wait": 100 * waited / slot_s, "eval_s": sum(evals) / max(len(evals), 1),
            "one_batch": sum(r.probe_scope == "one_batch" for r in cands),
            "statuses": ", ".join(f"{s} {sum(r.status == s for r in cands)}" for s in
                                  sorted({r.status for r in cands}))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="candidate trials per configuration (default 3)")
    ap.add_argument("--budget", type=float, default=30.0, help="training budget in s (default 30)")
    ap.add_argument("--slow", type=float, default=20.0, help="the slow proposer's seconds (default 20)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--data", type=Path, help="prepared data (default: synthetic, prepared into a temp dir)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="slots-bench-"))
    data = args.data or prepare_synthetic(work)
    image = images.build("cpu").tag
    rows = []
    for name in args.configs.split(","):
        rows.append(one(name, args, data, image, work))
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(f"## Slots and proposer pipelining: `cpu` preset, {args.budget:.0f} s budget, {args.trials} candidate "
          f"trials per configuration, slow proposer {args.slow:.0f} s\n")
    print("| configuration | trials | elapsed s | trials/hour | slot time in train phases | slot time in budgets | "
          "slot time waiting for a proposal | mean eval s | probed on one batch | outcomes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['trials']} | {r['elapsed']:.0f} | {r['per_hour']:.1f} | {r['in_budget']:.1f}% | "
              f"{r['budgets']:.1f}% | {r['proposal_wait']:.1f}% | {r['eval_s']:.1f} | {r['one_batch']} | "
              f"{r['statuses']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
