"""Fairness probes: evidence that an exported model scores each token from its own past only, row by row, in every
eval batch of a score that can be kept.

TRUSTED CODE (baked into the trial image; used only by the evaluator). The model under test is untrusted.

All probes compare log-probabilities (log_softmax of the float32 logits, computed in float32), the quantity that is
scored: a change that shifts every logit at a position equally is not a difference. A difference counts when it is
larger than TOLERANCE = 1e-4 nats. With identical inputs the same kernels run in the same order, so an honest model
shows differences of exactly 0 on CPU; the tolerance only absorbs non-deterministic GPU reductions. A model that
leaked future tokens through differences below the tolerance could gain at most about 1e-4 nats per token.

Where. Two flows (trainer/evaluate.py picks one; result.json's probes.scope says which ran):

- interleaved (no bar given, scope "every_batch"): every eval batch, the BOS-padded last one included, is probed
  right after its scoring pass, against that pass's logits (`Prober.batch` with the determinism pass).
- scored first (a bar given, `rescored=True`): every batch is scored first, keeping each batch's per-position nll
  (bpb.token_nll). Then the probed batches, every batch when the score is below the bar (scope "every_batch"),
  else the one batch `picked` from the seed (scope "one_batch", uniform over all batches, the padded one included),
  are run again: `Prober.rescore` is their determinism probe (the nll must match the scoring pass's, exactly 0 on
  CPU), and that pass's logits are the reference of `Prober.batch`, which then leaves the determinism pass out.

Either way the probes see a batch in the content and shape it is scored in, and each probe pass costs one forward
pass. The model sees one batch per call and keeps no state (trainer/safe_pt2.py), so it cannot tell a probe pass
from a scoring pass except by the tokens a probe changed. Per probed batch, in order (`Prober.batch`):

1. determinism (interleaved: one batch per evaluation, `picked`; scored first: every probed batch, by `rescore`):
   the batch again -> the same log-probs (interleaved: the whole vector at every position; `rescore`: every
   position's nll, the scored quantity), to within TOLERANCE (an honest model on CPU: exactly).
2. batch_independence (one pass): each row is replaced, with probability 1/2, by a real row of another batch
   (random tokens after a BOS when there is none), at least one row replaced and one kept -> the kept rows'
   log-probs must not change at any position.
3. causality (K passes, `causality_passes`; 1 in scope "one_batch", which claims no bound): every row gets its
   own cut t, drawn afresh each pass, uniformly over its candidate positions (`candidates`: scored positions
   except the row's last, whose next token is in no row of the batch, see trainer/bpb.py); the tokens after t
   are replaced by random tokens, each different from the one it replaces -> the log-probs at positions 0..t
   must not change. Rows with no candidate (BOS padding) are left as they are and must not change at all.
A difference found by 2 or 3 is checked once more by running the unchanged batch again: if that differs too, the
model fails determinism instead. A failure stops the probes: the result gets status "violation", the failing
probe and its evidence.

The bound (docs/result-schema.md has it with the numbers per preset). Say the model reads ahead at position t of a
row if a pass that cuts the row at t changes its log-probs at t, whatever the pass does to the other rows (a model
that peeks only in batches that look unprobed qualifies: a pass changes every row with a candidate). Let row r
have n_r candidate positions, m_r of which read ahead, g_r = m_r / n_r. A pass's cut in row r is uniform and
independent of everything else, so it lands on one of them with probability g_r, independently across rows and
passes; the model is deterministic, so a pass whose cut lands there shows the change. Over K passes of every batch
(scope "every_batch"; with "one_batch" there is no bound on a peek outside the probed batch, and the host keeps no
such result: only a score that cannot be kept is probed on one batch)

    P(miss) = prod_r (1 - g_r)^K <= exp(-K sum_r g_r) <= exp(-K M / n_max)

with M = sum_r m_r the positions that read ahead and n_max = max_r n_r. A model that reads ahead at a share phi of
all N = sum_r n_r candidate positions (M = phi N), however it picks them (by content, row or batch), passes with
probability at most exp(-K phi N / n_max). K is the least number of passes that makes this MISS_TARGET at
phi = PEEK_SHARE: K = ceil(ln(1 / MISS_TARGET) n_max / (PEEK_SHARE N)). A row that reads ahead at every candidate
(g_r = 1: a peek on a share of rows, or only in one batch) is caught with certainty by the first pass. Fewer,
scattered positions are caught with the probability above (1 - exp(-K M / n_max)), no better: to see that the
log-probs at t depend on the token at t + 1 takes an input that agrees with the scored row up to t and differs at
t + 1, so one forward pass can test one position per row, and K passes test K positions of each row.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

TOLERANCE = 1e-4
MISS_TARGET = 1e-6           # the causality probe misses a peek at PEEK_SHARE of the positions at most this often
PEEK_SHARE = 0.01
MAX_CAUSALITY_PASSES = 256   # per batch; only a val split of under ~5 full rows wants more (miss_bound then says so)
LISTED = 512                 # cut positions and replaced rows listed in a result, at most (the seed reproduces all)

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ProbeResult:
    """One probe's outcome. max_abs_diff: the largest log-prob difference (nats) where none is allowed."""
    name: str
    passed: bool
    max_abs_diff: float
    evidence: str = ""
    positions: list[int] = field(default_factory=list)   # causality: cut positions t that were checked
    rows: list[int] = field(default_factory=list)        # batch_independence: rows (in eval order) replaced
    batches: int = 0                                     # eval batches this probe checked

    def to_json(self) -> dict:
        """JSON-ready; a non-finite difference (NaN or inf logits in a probe batch) becomes null."""
        d = asdict(self)
        d.pop("name")
        d["max_abs_diff"] = d["max_abs_diff"] if math.isfinite(d["max_abs_diff"]) else None
        return d

    def note(self, diff: float, positions=(), rows=()) -> None:
        self.max_abs_diff = max(self.max_abs_diff, diff) if math.isfinite(diff) else diff
        self.positions.extend(int(p) for p in positions[:max(0, LISTED - len(self.positions))])
        self.rows.extend(int(r) for r in rows[:max(0, LISTED - len(self.rows))])

    def fail(self, diff: float, evidence: str) -> ProbeResult:
        self.passed, self.max_abs_diff, self.evidence = False, diff, evidence
        return self


def candidates(weights: np.ndarray) -> list[np.ndarray]:
    """Per row of a (B, T) weight map (> 0 where the target is scored): the positions t a causality cut may take,
    every scored position but the last one of the row (t <= T - 2)."""
    return [np.flatnonzero(w[:-1] > 0) for w in np.asarray(weights)]


def causality_passes(n_candidates: np.ndarray) -> int:
    """K: the causality passes per batch that bound a miss of a PEEK_SHARE peek by MISS_TARGET (module docstring).
    n_candidates: every row's number of candidate positions, over the whole evaluation."""
    n = np.asarray(n_candidates, dtype=np.int64)
    if not n.size or n.max() == 0:
        return 1
    k = math.ceil(math.log(1 / MISS_TARGET) * int(n.max()) / (PEEK_SHARE * int(n.sum())))
    return max(1, min(MAX_CAUSALITY_PASSES, k))


def miss_bound(passes: int, n_candidates: np.ndarray, share: float = PEEK_SHARE) -> float:
    """The bound on P(a model reading ahead at `share` of the candidate positions passes `passes` causality passes
    of every batch): exp(-passes * share * N / n_max); 0.0 when no row has a candidate (no row has a future)."""
    n = np.asarray(n_candidates, dtype=np.int64)
    if not n.size or n.max() == 0:
        return 0.0
    return math.exp(-passes * share * int(n.sum()) / int(n.max()))


def _logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x).float()


def _compare(out: torch.Tensor, ref: torch.Tensor, check: torch.Tensor) -> torch.Tensor:
    """(B, T) largest log-prob difference between two (B, T, V) logit tensors at the `check`ed positions (0 elsewhere).

    Log-softmax is taken only where the logits are not bitwise equal (an honest model on CPU: nowhere), which gives
    the same numbers as taking it everywhere, at a fraction of the cost. NaN stays NaN (`_worst` counts it).
    """
    diff = torch.zeros(check.shape, device=out.device)
    differs = check & ~(out == ref).all(dim=-1)
    if bool(differs.any()):
        diff[differs] = (torch.log_softmax(out[differs], dim=-1)
                         - torch.log_softmax(ref[differs], dim=-1)).abs().amax(dim=-1)
    return diff


def _worst(diff: torch.Tensor) -> tuple[float, tuple[int, ...]]:
    """(max, index) of a (rows, positions) map of differences; NaN counts as an infinite difference."""
    diff = torch.nan_to_num(diff, nan=float("inf"))
    flat = int(torch.argmax(diff).item())
    idx = np.unravel_index(flat, tuple(diff.shape))
    return float(diff.max().item()), tuple(int(i) for i in idx)


class Prober:
    """The probes over one evaluation: `batch` for each probed batch (after `rescore` when rescored), `results` at
    the end.

    model: the program (a failing call raises, as in scoring); pool: every eval row's inputs (n_rows, T), where
    batch i holds rows i*B .. i*B+B-1; real: which of them hold a scored target (donors for batch independence are
    real rows of the other batches); n_batches: how many batches there are; passes: causality passes per batch (K);
    rescored: the caller runs each probed batch again after scoring and checks it with `rescore` (the scored-first
    flow), so `batch` runs no determinism pass of its own. `picked`: one batch drawn from the seed first, uniform
    over all n_batches: the determinism pass's batch when interleaved, the only batch probed in scope "one_batch".
    """

    def __init__(self, model: Model, pool: np.ndarray, real: np.ndarray, batch_size: int, n_batches: int,
                 vocab_size: int, bos_id: int, seed: int, passes: int, rescored: bool = False):
        self.model, self.pool, self.b = model, np.asarray(pool), batch_size
        self.donors = np.flatnonzero(np.asarray(real))    # ascending
        self.n_batches, self.vocab, self.bos, self.passes = n_batches, vocab_size, bos_id, passes
        self.rescored = rescored
        self.rng = np.random.default_rng(seed)
        self.picked = int(self.rng.integers(max(1, n_batches)))
        self.ran = {"determinism": ProbeResult("determinism", True, 0.0),
                    "batch_independence": ProbeResult("batch_independence", True, 0.0),
                    "causality": ProbeResult("causality", True, 0.0)}

    def results(self) -> dict[str, ProbeResult]:
        """{name: result} of the probes that ran (all three once every batch passed)."""
        return {n: r for n, r in self.ran.items() if r.batches or not r.passed}

    def rescore(self, i: int, logits: torch.Tensor, nll: torch.Tensor, scored: torch.Tensor) -> ProbeResult | None:
        """The determinism probe of a rescored eval batch i: this pass's logits and their per-position nll
        (bpb.token_nll) against the nll its scoring pass gave (`scored`). The failed determinism probe, or None.

        Every position counts, scored or not; a difference above TOLERANCE (an honest model on CPU: none at all)
        or a non-finite logit (the scoring pass had none) fails."""
        r = self.ran["determinism"]
        r.batches += 1
        where = f"eval batch {i + 1}/{self.n_batches}"
        finite = torch.isfinite(logits).all(dim=-1)
        if not bool(finite.all()):
            row, pos = (int(v) for v in torch.nonzero(~finite)[0])
            r.fail(float("inf"), f"the same batch ({where}) gave non-finite logits on a second run (row {row}, "
                                 f"position {pos}); its scoring pass gave finite ones")
            return r
        worst, (row, pos) = _worst((nll.double() - scored.double()).abs())
        r.note(worst)
        if worst > TOLERANCE:
            r.fail(worst, f"the same batch ({where}) gave a different nll on a second run than on its scoring pass "
                          f"(row {row}, position {pos}) by {worst:.3g} nats")
            return r
        return None

    def batch(self, i: int, x: torch.Tensor, logits: torch.Tensor, weights: np.ndarray) -> ProbeResult | None:
        """Probe eval batch i (inputs x, the reference logits: its scoring pass's, or when rescored the pass that
        `rescore` checked; its target weights): the failed probe or None."""
        ref = logits.float()
        where = f"eval batch {i + 1}/{self.n_batches}"
        if not self.rescored and i == self.picked and not self._determinism(x, ref, where):
            return self.ran["determinism"]
        for name, run in (("batch_independence", lambda: self._batch_independence(i, x, ref, where)),
                          ("causality", lambda: self._causality(x, ref, candidates(weights), where))):
            failure = run()
            if failure is not None:
                diff, evidence = failure
                if not self._determinism(x, ref, where):   # the unchanged batch differs too: not a leak
                    del self.ran[name]
                    return self.ran["determinism"]
                return self.ran[name].fail(diff, evidence)
            self.ran[name].batches += 1
        return None

    def _determinism(self, x: torch.Tensor, ref: torch.Tensor, where: str) -> bool:
        diff = _compare(_logits(self.model, x), ref, torch.ones(x.shape, dtype=torch.bool, device=x.device))
        worst, (row, pos) = _worst(diff)
        r = self.ran["determinism"]
        r.batches += 1
        r.note(worst)
        if worst > TOLERANCE:
            r.fail(worst, f"the same batch ({where}) gave different log-probs on a second run (row {row}, position "
                          f"{pos}) by {worst:.3g} nats")
        return r.passed

    def _donor(self, i: int, t: int) -> np.ndarray:
        """A real row of another batch (its first t inputs), or BOS + random tokens when there is none."""
        lo, hi = np.searchsorted(self.donors, [i * self.b, (i + 1) * self.b])
        others = len(self.donors) - (hi - lo)
        if others <= 0:
            new = self.rng.integers(0, self.vocab, size=t)
            new[0] = self.bos
            return new
        j = int(self.rng.integers(others))
        return self.pool[self.donors[j if j < lo else j + (hi - lo)], :t].astype(np.int64)

    def _batch_independence(self, i: int, x: torch.Tensor, ref: torch.Tensor, where: str):
        b, t = x.shape
        if b < 2:
            return None
        while True:
            replaced = self.rng.random(b) < 0.5
            if 0 < replaced.sum() < b:
                break
        base = x.cpu().numpy()
        probe = base.copy()
        for r in np.flatnonzero(replaced):
            new = self._donor(i, t)
            probe[r] = new if not np.array_equal(new, base[r]) else (new + 1) % self.vocab
        kept = np.flatnonzero(~replaced)
        check = torch.as_tensor(~replaced, device=x.device)[:, None].expand(b, t)
        diff = _compare(_logits(self.model, torch.as_tensor(probe).to(x.device)), ref, check)[kept]
        worst, (k, pos) = _worst(diff)
        self.ran["batch_independence"].note(worst, rows=(np.flatnonzero(replaced) + i * self.b).tolist())
        if worst > TOLERANCE:
            return worst, (f"replacing rows {np.flatnonzero(replaced).tolist()} of {where} changed row {kept[k]} "
                           f"(untouched) at position {pos} by {worst:.3g} nats: rows are mixed")
        return None

    def _causality(self, x: torch.Tensor, ref: torch.Tensor, cands: list[np.ndarray], where: str):
        b, t = x.shape
        base = x.cpu().numpy()
        pos = torch.arange(t, device=x.device)
        for _ in range(self.passes):
            cuts = np.full(b, t - 1)                     # t - 1: the row is left as it is and checked whole
            probe = base.copy()
            for r, c in enumerate(cands):
                if not len(c):
                    continue
                cut = int(c[self.rng.integers(len(c))])
                tail = self.rng.integers(0, self.vocab, size=t - cut - 1)
                probe[r, cut + 1:] = np.where(tail == base[r, cut + 1:], (tail + 1) % self.vocab, tail)
                cuts[r] = cut
            check = pos[None, :] <= torch.as_tensor(cuts, device=x.device)[:, None]
            diff = _compare(_logits(self.model, torch.as_tensor(probe).to(x.device)), ref, check)
            worst, (r, p) = _worst(diff)
            self.ran["causality"].note(worst, positions=[int(cuts[r]) for r, c in enumerate(cands) if len(c)])
            if worst > TOLERANCE:
                if not len(cands[r]):
                    return worst, (f"changing other rows of {where} changed row {r}, which the probe left as it "
                                   f"was, at position {p} by {worst:.3g} nats: rows are mixed")
                return worst, (f"changing the tokens after position {int(cuts[r])} of row {r} in {where} changed "
                               f"its log-probs at position {p} by {worst:.3g} nats: the model sees future tokens")
        return None
