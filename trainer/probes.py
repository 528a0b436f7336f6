"""Fairness probes: evidence that an exported model scores each token from its own past only, row by row.

TRUSTED CODE (baked into the trial image; used only by the evaluator). The model under test is untrusted.

All probes compare log-probabilities (log_softmax of the float32 logits, computed in float32), the quantity that is
scored: a change that shifts every logit at a position equally is not a difference. A difference counts when it is
larger than TOLERANCE = 1e-4 nats. With identical inputs the same kernels run in the same order, so an honest model
shows differences of exactly 0 on CPU; the tolerance only absorbs non-deterministic GPU reductions. A model that
leaked future tokens through differences below the tolerance could gain at most about 1e-4 nats per token.

The probes run on a base batch: one real eval batch, picked at random with an unpredictable seed (recorded in
the result), so a model cannot tell probe rows from scored rows. In order:

1. determinism: the base batch twice -> identical log-probs. A stateful or random program could otherwise pass the
   other probes by chance or by design.
2. batch_independence: replace a random subset of rows (1 to B-1 of them) with other real rows (random tokens
   when the val split has no others) -> the untouched rows' log-probs must not change at any position. Twice.
3. causality: each probe batch gives every row its own cut position t (random; no position repeats before all
   have been used), keeps tokens 0..t and replaces every token after t with a different one -> log-probs at
   positions 0..t must not change. Rows are perturbed independently of each other (probe 2 established that
   they do not interact), so one forward pass checks eval_batch_size cut positions. A model that peeks at the
   next token is caught at any t; one that peeks only at some positions is caught when a cut lands there.
A failure stops the probes: the result gets status "violation", the failing probe and its evidence.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

TOLERANCE = 1e-4
CAUSALITY_BATCHES = 4
BATCH_INDEPENDENCE_BATCHES = 2

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ProbeResult:
    """One probe's outcome. max_abs_diff: the largest log-prob difference (nats) where none is allowed."""
    name: str
    passed: bool
    max_abs_diff: float
    evidence: str = ""
    positions: list[int] = field(default_factory=list)   # causality: cut positions t that were checked
    rows: list[int] = field(default_factory=list)        # batch_independence: rows that were replaced

    def to_json(self) -> dict:
        """JSON-ready; a non-finite difference (NaN or inf logits in a probe batch) becomes null."""
        d = asdict(self)
        d.pop("name")
        d["max_abs_diff"] = d["max_abs_diff"] if math.isfinite(d["max_abs_diff"]) else None
        return d


def _logprobs(model: Model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(model(x).float(), dim=-1)


def _worst(diff: torch.Tensor) -> tuple[float, tuple[int, ...]]:
    """(max, index) of a (rows, positions) map of differences; NaN counts as an infinite difference."""
    diff = torch.nan_to_num(diff, nan=float("inf"))
    flat = int(torch.argmax(diff).item())
    idx = np.unravel_index(flat, tuple(diff.shape))
    return float(diff.max().item()), tuple(int(i) for i in idx)


def determinism(model: Model, base: torch.Tensor, ref: torch.Tensor) -> ProbeResult:
    again = _logprobs(model, base)
    diff = (again - ref).abs().amax(dim=-1)
    worst, (row, pos) = _worst(diff)
    ok = worst <= TOLERANCE
    ev = "" if ok else f"the same batch gave different log-probs on a second run (row {row}, position {pos})"
    return ProbeResult("determinism", ok, worst, ev)


def batch_independence(model: Model, base: torch.Tensor, ref: torch.Tensor, donors: np.ndarray,
                       rng: np.random.Generator, vocab_size: int, bos_id: int,
                       batches: int = BATCH_INDEPENDENCE_BATCHES) -> ProbeResult:
    b, t = base.shape
    if b < 2:
        return ProbeResult("batch_independence", True, 0.0, "batch of one row: nothing to mix")
    worst_all, changed_all = 0.0, []
    for _ in range(batches):
        k = int(rng.integers(1, b))                      # 1 .. b-1 rows replaced, at least one row untouched
        changed = np.sort(rng.choice(b, size=k, replace=False))
        probe = base.clone()
        for r in changed:
            if len(donors):
                new = torch.as_tensor(donors[int(rng.integers(len(donors)))][:t].astype(np.int64))
            else:
                new = torch.as_tensor(rng.integers(0, vocab_size, size=t))
                new[0] = bos_id
            if torch.equal(new.to(base.device), base[r]):
                new = (new + 1) % vocab_size
            probe[r] = new.to(base.device)
        kept = [r for r in range(b) if r not in set(changed.tolist())]
        diff = (_logprobs(model, probe)[kept] - ref[kept]).abs().amax(dim=-1)
        worst, (i, pos) = _worst(diff)
        changed_all.extend(int(r) for r in changed)
        worst_all = max(worst_all, worst)
        if worst > TOLERANCE:
            ev = (f"replacing rows {changed.tolist()} changed row {kept[i]} (untouched) at position {pos} by "
                  f"{worst:.3g} nats: rows are mixed")
            return ProbeResult("batch_independence", False, worst, ev, rows=changed.tolist())
    return ProbeResult("batch_independence", True, worst_all, rows=changed_all)


def causality(model: Model, base: torch.Tensor, ref: torch.Tensor, rng: np.random.Generator, vocab_size: int,
              batches: int = CAUSALITY_BATCHES) -> ProbeResult:
    b, t = base.shape
    if t < 2:
        return ProbeResult("causality", True, 0.0, "sequence of one token: no future to change")
    n = batches * b
    rounds = -(-n // (t - 1))                             # every position once before any repeats
    cuts = np.concatenate([rng.permutation(t - 1) for _ in range(rounds)])[:n].reshape(batches, b)
    worst_all, checked = 0.0, []
    pos = torch.arange(t, device=base.device)
    for k in range(batches):
        probe = base.clone()
        for r in range(b):
            c = int(cuts[k, r])
            tail = torch.as_tensor(rng.integers(0, vocab_size, size=t - c - 1), device=base.device)
            same = tail == base[r, c + 1:]
            probe[r, c + 1:] = torch.where(same, (tail + 1) % vocab_size, tail)
        diff = (_logprobs(model, probe) - ref).abs().amax(dim=-1)              # (b, t)
        keep = pos[None, :] <= torch.as_tensor(cuts[k], device=base.device)[:, None]
        diff = torch.where(keep, diff, torch.zeros_like(diff))
        worst, (r, p) = _worst(diff)
        checked.extend(int(c) for c in cuts[k])
        worst_all = max(worst_all, worst)
        if worst > TOLERANCE:
            ev = (f"changing tokens after position {int(cuts[k, r])} of row {r} changed the log-probs at position "
                  f"{p} by {worst:.3g} nats: the model sees future tokens")
            return ProbeResult("causality", False, worst, ev, positions=checked)
    return ProbeResult("causality", True, worst_all, positions=checked)


def run_probes(model: Model, base: torch.Tensor, donors: np.ndarray, vocab_size: int, bos_id: int,
               seed: int, base_logits: torch.Tensor | None = None) -> dict[str, ProbeResult]:
    """Run the probes in order and stop at the first failure. Returns {name: result} for the probes that ran.

    base_logits: the model's output on `base` if the caller already has it (saves one forward pass).
    """
    rng = np.random.default_rng(seed)
    if base_logits is None:
        ref = _logprobs(model, base)
    else:
        ref = torch.log_softmax(base_logits.float(), dim=-1)
    results: dict[str, ProbeResult] = {}
    for name, run in (("determinism", lambda: determinism(model, base, ref)),
                      ("batch_independence",
                       lambda: batch_independence(model, base, ref, donors, rng, vocab_size, bos_id)),
                      ("causality", lambda: causality(model, base, ref, rng, vocab_size))):
        results[name] = run()
        if not results[name].passed:
            break
    return results
