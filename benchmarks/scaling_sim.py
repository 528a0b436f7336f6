"""A seeded discrete-event simulation of one run with 1 to 64 GPU slots: where scaling out stops paying.

Plain Python, no Docker, no GPU. It models what a run does per trial, with the per-trial costs measured on this
project (docs/scaling.md, "Scaling limits (simulated)", lists each number and where it comes from):

    slot      a trial holds its slot (one GPU) for start + budget + rest + eval + other seconds, the overheads
              jittered (lognormal, coefficient of variation `jitter`); the budget is exact
    head      ONE server, first come first served, for the runner's own git and ledger work (it is one process
              that owns the repository and the ledger): `context` before a proposal is asked for (the best's
              files and the prompt's history, growing with the ledger), `commit` when a reply comes (patch check,
              commit, trial ref, export), `record` when a trial ends (the ledger's fsynced append, growing with
              the ledger, and the branch's compare-and-swap on a keep)
    proposer  an LLM endpoint with `llm_concurrency` requests served at once (first come first served) and at most
              `llm_rpm` request starts a minute (0: no limit); each takes a lognormal latency (median
              `llm_median_s`, log-sd `llm_sigma`)
    modes     on-demand  a slot asks for its next proposal when its trial has ended and been recorded: it idles
                         for the head's work and the LLM's latency (the loop before issue 17)
              pipelined  a proposal is asked for as each candidate trial starts (one ahead per slot); a free
                         slot takes the oldest ready proposal
              jit        a proposal is asked for `lead_s` seconds before the slot's trial is due to end (trial
                         lengths are known: the budget is fixed), so it is ready in time but younger
    decision  at a candidate's end it beats the bar with probability `p_keep`. A candidate is STALE when the best
              moved between its proposal (the prompt built on the best of that moment) and its decision. A
              stale winner is re-applied onto the new best (with probability `p_conflict` it does not apply:
              recorded `stale`) and run again as a confirmation trial, which takes a slot before any new
              proposal. A confirmation wins again with probability `p_confirm_keep`: kept if the best did not
              move meanwhile, else re-applied again (at most `max_confirmations` runs, then `stale`).
              `confirm_wins` (the h100 policy's setting) also re-runs every fresh winner once.

Per slot count and mode it reports trials (candidates and confirmations) per hour, the GPU idle share (slot time
with no trial in it), the share inside training budgets, the stale share of the candidates decided, the re-runs
and lost winners per hour, and the head's and the endpoint's utilisation.

    python benchmarks/scaling_sim.py [--slots 1,2,4,8,16,32,64] [--modes on-demand,pipelined,jit] [--seed 17]
                                     [--hours 8] [--llm-concurrency 16] [... every Params field as --flag]

Invariants (tests/test_scaling_sim.py): one slot with no overheads and an instant proposer gives 3600/budget
trials an hour; the same seed gives the same table; pipelining lowers the idle share; the stale share grows with
the slots; the endpoint's capacity bounds the trials an hour.

Columns: `stale` is the share of decided candidates whose best moved (whatever their score); `stale` rows are
winners recorded with the ledger status stale; `age s` is a candidate's mean proposal -> decision time.
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, field

MODES = ("on-demand", "pipelined", "jit")


@dataclass
class Params:
    slots: int = 1
    mode: str = "pipelined"
    hours: float = 8.0                    # simulated wall time of the run
    seed: int = 17
    # one trial's slot time (seconds): measured on the CPU, docs/benchmarks.md ("Loop duty cycle", 20 trials;
    # "Probing every batch": the evaluator with every batch probed)
    budget_s: float = 300.0               # the h100 policy's train.budget_seconds
    start_s: float = 1.9                  # hand-over of train.py -> first training step (slot started ahead)
    rest_s: float = 0.9                   # the train phase after the budget: export, exit
    eval_s: float = 24.1                  # model copy + the evaluator (cpu preset, every batch probed)
    other_s: float = 0.2                  # the rest of a trial's wall time
    jitter: float = 0.1                   # coefficient of variation of the overheads above
    # the head, one server (seconds; benchmarks/head_cost.py on this 2-core machine)
    head_context_s: float = 0.0075        # read the best's files
    head_context_per_record_s: float = 0.186e-3   # the prompt's history: every record so far (asdict)
    head_commit_s: float = 0.050          # patch check + commit_files + set_trial_ref + export
    head_record_s: float = 0.004          # Ledger.append's write + fsync
    head_record_per_record_s: float = 0.11e-3     # ... and results.tsv rewritten from the whole ledger
    head_advance_s: float = 0.005         # the branch's compare-and-swap on a keep
    # the proposer
    llm_median_s: float = 20.0
    llm_sigma: float = 0.5                # log-sd: the middle 90% of latencies is 0.44x-2.3x the median
    llm_concurrency: int = 16
    llm_rpm: float = 0.0                  # request starts per minute; 0 = no limit
    lead_s: float = 90.0                  # jit: ask this long before the trial's expected end
    # the decision
    p_keep: float = 0.05                  # a candidate beats the bar
    p_conflict: float = 0.1               # a stale winner does not re-apply onto the new best
    p_confirm_keep: float = 0.5           # a confirmation run (stale or confirm_wins) wins again
    max_confirmations: int = 3            # re-applications of one candidate before it is recorded stale
    confirm_wins: bool = False


@dataclass
class Result:
    params: Params
    trials: int = 0                       # trials that ended within the horizon (candidates + confirmations)
    candidates: int = 0                   # candidates decided within the horizon
    confirmations: int = 0
    keeps: int = 0
    stale: int = 0                        # candidates whose best moved between proposal and decision
    lost: int = 0                         # winners recorded `stale`: did not re-apply, or overtaken too often
    busy_s: float = 0.0                   # slot-seconds with a trial in the slot
    train_s: float = 0.0                  # slot-seconds inside training budgets
    head_busy_s: float = 0.0
    llm_busy_s: float = 0.0
    age_s: list = field(default_factory=list)   # a candidate's proposal -> decision

    def row(self) -> dict:
        p, hours = self.params, self.params.hours
        slot_s = p.slots * hours * 3600
        return {
            "slots": p.slots, "mode": p.mode,
            "trials_h": self.trials / hours,
            "candidates_h": self.candidates / hours,
            "idle": 1 - self.busy_s / slot_s,
            "in_budget": self.train_s / slot_s,
            "stale": self.stale / self.candidates if self.candidates else 0.0,
            "reruns_h": self.confirmations / hours,
            "lost_h": self.lost / hours,
            "keeps_h": self.keeps / hours,
            "head": self.head_busy_s / (hours * 3600),
            "llm": self.llm_busy_s / (p.llm_concurrency * hours * 3600),
            "age_s": sum(self.age_s) / len(self.age_s) if self.age_s else 0.0,
        }


class Sim:
    def __init__(self, p: Params):
        if p.mode not in MODES:
            raise ValueError(f"mode {p.mode!r} is not one of {MODES}")
        self.p, self.r = p, Result(params=p)
        self.horizon = p.hours * 3600
        self.events: list = []
        self.seq = 0
        self.rng_llm, self.rng_trial, self.rng_decide = (random.Random(f"{p.seed}/{k}") for k in ("llm", "trial",
                                                                                                 "decide"))
        self.head_free = 0.0
        self.llm_free = [0.0] * max(1, p.llm_concurrency)
        self.llm_last_start = -math.inf
        self.best = 0                     # the best's version: +1 on every keep
        self.records = 0                  # ledger lines so far
        self.free = p.slots
        self.ready: deque = deque()       # proposals ready to train: (parent version, asked at)
        self.confirms: deque = deque()    # confirmation runs ready: (parent version, asked at)

    # ------------------------------------------------------------------------------------------ machinery
    def at(self, t: float, fn) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, fn))

    def head(self, t: float, cost: float, fn) -> None:
        """The head's FIFO: a job arriving at t runs after every earlier one."""
        start = max(t, self.head_free)
        self.head_free = start + cost
        self.r.head_busy_s += max(0.0, min(self.head_free, self.horizon) - min(start, self.horizon))
        self.at(self.head_free, fn)

    def jittered(self, x: float) -> float:
        if x <= 0 or self.p.jitter <= 0:
            return x
        s = math.sqrt(math.log(1 + self.p.jitter ** 2))
        return x * self.rng_trial.lognormvariate(-s * s / 2, s)      # mean x

    def trial_s(self) -> tuple[float, float]:
        """(slot seconds, seconds from its start to the start of training)."""
        p = self.p
        start = self.jittered(p.start_s)
        return start + p.budget_s + self.jittered(p.rest_s) + self.jittered(p.eval_s) + self.jittered(p.other_s), start

    def expected_trial_s(self) -> float:
        p = self.p
        return p.start_s + p.budget_s + p.rest_s + p.eval_s + p.other_s

    # ------------------------------------------------------------------------------------------ the proposer
    def ask(self, t: float) -> None:
        """Build the prompt on the head (the parent is the best of that moment), then ask the endpoint."""
        p = self.p
        cost = p.head_context_s + p.head_context_per_record_s * self.records
        self.head(t, cost, lambda t1: self._request(t1))

    def _request(self, t: float) -> None:
        p, parent = self.p, self.best
        free = heapq.heappop(self.llm_free)
        gap = 60.0 / p.llm_rpm if p.llm_rpm > 0 else 0.0
        start = max(t, free, self.llm_last_start + gap)
        self.llm_last_start = start
        latency = p.llm_median_s * self.rng_llm.lognormvariate(0, p.llm_sigma) if p.llm_median_s > 0 else 0.0
        heapq.heappush(self.llm_free, start + latency)
        self.r.llm_busy_s += max(0.0, min(start + latency, self.horizon) - min(start, self.horizon))
        self.at(start + latency, lambda t1: self.head(t1, p.head_commit_s,
                                                      lambda t2: self._ready(t2, parent, t)))

    def _ready(self, t: float, parent: int, asked: float) -> None:
        self.ready.append((parent, asked))
        self.try_start(t)

    # ------------------------------------------------------------------------------------------ slots
    def try_start(self, t: float) -> None:
        while self.free > 0 and t < self.horizon and (self.confirms or self.ready):
            if self.confirms:
                parent, asked, n_conf = self.confirms.popleft()
                kind = "confirm"
            else:
                parent, asked = self.ready.popleft()
                kind, n_conf = "candidate", 0
            self.free -= 1
            dur, start = self.trial_s()
            end = t + dur
            self.r.busy_s += min(end, self.horizon) - t
            t0, t1 = t + start, t + start + self.p.budget_s
            self.r.train_s += max(0.0, min(t1, self.horizon) - min(t0, self.horizon))
            if self.p.mode == "pipelined" and kind == "candidate":
                self.ask(t)
            elif self.p.mode == "jit" and kind == "candidate":
                self.at(max(t, t + self.expected_trial_s() - self.p.lead_s), self.ask)
            self.at(end, lambda t2, k=kind, pv=parent, a=asked, c=n_conf: self.end(t2, k, pv, a, c))

    def end(self, t: float, kind: str, parent: int, asked: float, n_conf: int) -> None:
        p, r = self.p, self.r
        self.free += 1
        r.trials += 1
        moved = self.best != parent
        confirm = False
        keep = False
        if kind == "candidate":
            r.candidates += 1
            r.age_s.append(t - asked)
            r.stale += moved
            if self.rng_decide.random() < p.p_keep:
                if moved:
                    if self.rng_decide.random() < p.p_conflict:
                        r.lost += 1
                    else:
                        confirm = True
                elif p.confirm_wins:
                    confirm = True
                else:
                    keep = True
        else:
            r.confirmations += 1
            if self.rng_decide.random() < p.p_confirm_keep:           # it wins again
                if not moved:
                    keep = True
                elif n_conf >= p.max_confirmations or self.rng_decide.random() < p.p_conflict:
                    r.lost += 1
                else:
                    confirm = True
        if keep:
            self.best += 1
            r.keeps += 1
        cost = p.head_record_s + p.head_record_per_record_s * self.records + (p.head_advance_s if keep else 0.0)
        self.records += kind == "candidate"
        self.head(t, cost, lambda t1: self._recorded(t1, confirm, n_conf + 1))
        if p.mode != "on-demand":
            self.try_start(t)

    def _recorded(self, t: float, confirm: bool, n_conf: int) -> None:
        if confirm:                                   # re-applied onto the best of now: a commit on the head
            parent = self.best
            self.head(t, self.p.head_commit_s, lambda t1: self._confirm_ready(t1, parent, n_conf))
        elif self.p.mode == "on-demand":
            self.ask(t)

    def _confirm_ready(self, t: float, parent: int, n_conf: int) -> None:
        self.confirms.append((parent, t, n_conf))
        self.try_start(t)

    # ------------------------------------------------------------------------------------------ a run
    def run(self) -> Result:
        for _ in range(self.p.slots):
            self.ask(0.0)
        while self.events:
            t, _, fn = heapq.heappop(self.events)
            if t > self.horizon:
                break
            fn(t)
        return self.r


def simulate(p: Params) -> dict:
    return Sim(p).run().row()


HEADER = ("| slots | proposer | trials/h | per slot | speed-up | GPU idle | in budget | stale | re-runs/h | "
          "`stale` rows/h | keeps/h | head busy | LLM busy | age s |")


def table(rows: list[dict]) -> str:
    out = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    one = {r["mode"]: r["trials_h"] for r in rows if r["slots"] == 1}
    for r in rows:
        base = one.get(r["mode"])
        speedup = f"{r['trials_h'] / base:.1f}x" if base else "-"
        out.append(f"| {r['slots']} | {r['mode']} | {r['trials_h']:.1f} | {r['trials_h'] / r['slots']:.2f} | "
                   f"{speedup} | {100 * r['idle']:.1f}% | {100 * r['in_budget']:.1f}% | "
                   f"{100 * r['stale']:.0f}% | {r['reruns_h']:.1f} | {r['lost_h']:.1f} | {r['keeps_h']:.1f} | "
                   f"{100 * r['head']:.2f}% | {100 * r['llm']:.0f}% | {r['age_s']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", default="1,2,4,8,16,32,64", help="comma-separated slot counts")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    for f in dataclasses.fields(Params):
        if f.name in ("slots", "mode"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            ap.add_argument(flag, action="store_true", default=f.default)
        else:
            ap.add_argument(flag, type=type(f.default), default=f.default)
    args = ap.parse_args(argv)
    common = {f.name: getattr(args, f.name) for f in dataclasses.fields(Params) if f.name not in ("slots", "mode")}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; use {', '.join(MODES)}")
    rows = [simulate(Params(slots=int(s), mode=m, **common)) for s in args.slots.split(",") for m in modes]
    print(" ".join(["python", "benchmarks/scaling_sim.py", *(argv if argv is not None else sys.argv[1:])]).strip())
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
