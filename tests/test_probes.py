"""Fairness probes: cheating models are caught (peeking, row mixing, randomness); honest models pass with zero diff."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import evalkit as K
from trainer import probes
from trainer.evaluate import evaluate

VOCAB = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(7)
    return K.make_data(tmp_path_factory.mktemp("probe-data"), K.random_docs(rng, 120, VOCAB, hi=120), VOCAB)


def run(model: nn.Module, data, tmp_path, seed=3) -> dict:
    return evaluate(K.export(model, tmp_path / "m.pt2", 8, 64), data, "tiny", probe_seed=seed)


@pytest.mark.parametrize("make", [
    lambda: K.Bigram(torch.randn(VOCAB, VOCAB)),
    lambda: K.CausalConv(VOCAB),
    lambda: K.CausalAttention(VOCAB, 64),
], ids=["bigram", "causal-conv", "causal-attention"])
def test_honest_models_pass_every_probe_with_zero_difference_on_cpu(make, data, tmp_path):
    res = run(make(), data, tmp_path)
    assert res["status"] == "ok", res["error"]
    for name in ("determinism", "batch_independence", "causality"):
        assert res["probes"][name]["passed"] is True
        assert res["probes"][name]["max_abs_diff"] == 0.0
    assert len(res["probes"]["causality"]["positions"]) == probes.CAUSALITY_BATCHES * 8


def test_a_model_that_peeks_at_the_next_input_token_is_a_causality_violation_with_no_score(data, tmp_path):
    res = run(K.PeekNext(VOCAB), data, tmp_path)
    assert res["status"] == "violation" and res["val_bpb"] is None and res["val_loss"] is None
    c = res["probes"]["causality"]
    assert c["passed"] is False and c["max_abs_diff"] > 1.0 and c["positions"]
    assert "causality probe failed" in res["error"] and "future" in res["error"]


def test_a_model_that_adds_the_batch_mean_is_a_batch_independence_violation(data, tmp_path):
    res = run(K.BatchMean(VOCAB), data, tmp_path)
    assert res["status"] == "violation" and res["val_bpb"] is None
    b = res["probes"]["batch_independence"]
    assert b["passed"] is False and b["max_abs_diff"] > 1e-3 and b["rows"]
    assert res["probes"]["causality"] is None          # probes stop at the first failure


class NextRowPeek(nn.Module):
    """Cheats across rows: row i reads the first tokens of row i+1 (a long document continues there)."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(VOCAB, VOCAB))

    def forward(self, idx):
        nxt = torch.roll(idx, shifts=-1, dims=0)[:, :1]
        return F.embedding(idx, self.table) + F.embedding(nxt, self.table)


def test_a_model_that_reads_the_next_row_is_caught_by_the_batch_probe(data, tmp_path):
    res = run(NextRowPeek(), data, tmp_path)
    assert res["status"] == "violation"
    assert res["probes"]["batch_independence"]["passed"] is False


def test_a_random_model_fails_the_determinism_probe(data, tmp_path):
    res = run(K.Noisy(VOCAB), data, tmp_path)
    assert res["status"] == "violation"
    assert res["probes"]["determinism"]["passed"] is False
    assert "determinism" in res["error"]


# ---- unit level (plain callables as models), in addition to the real exported models above

def table_model(peek_at: int | None = None):
    torch.manual_seed(0)
    table = torch.randn(VOCAB, VOCAB)

    def model(x):
        out = table[x].clone()
        if peek_at is not None:
            out[:, peek_at] += table[x[:, peek_at + 1]]
        return out
    return model


def test_a_model_peeking_at_one_position_only_is_caught_when_the_cuts_cover_every_position():
    base = torch.randint(1, VOCAB, (8, 64))
    rng = np.random.default_rng(0)
    model = table_model(peek_at=37)
    ref = probes._logprobs(model, base)
    r = probes.causality(model, base, ref, rng, VOCAB, batches=8)         # 8 x 8 cuts >= 63 positions
    assert not r.passed and "position 37" in r.evidence
    honest = table_model()
    assert probes.causality(honest, base, probes._logprobs(honest, base), rng, VOCAB, batches=8).passed


def test_causality_compares_log_probabilities_so_a_uniform_shift_is_not_a_difference():
    torch.manual_seed(0)
    table = torch.randn(VOCAB, VOCAB)

    def shifty(x):                                   # adds a future-dependent constant to every logit at t
        ahead = torch.cat([x[:, 1:], x[:, -1:]], 1).float()
        return table[x] + ahead[..., None]

    base = torch.randint(1, VOCAB, (4, 32))
    r = probes.causality(shifty, base, probes._logprobs(shifty, base), np.random.default_rng(0), VOCAB)
    assert r.passed and r.max_abs_diff <= probes.TOLERANCE


def test_probes_run_in_order_and_stop_at_the_first_failure():
    base = torch.randint(1, VOCAB, (4, 16))
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        return torch.full((*x.shape, VOCAB), float(calls["n"] % 2)) + torch.arange(VOCAB).float() * calls["n"]

    out = probes.run_probes(flaky, base, np.zeros((0, 17), np.int64), VOCAB, 0, seed=1)
    assert list(out) == ["determinism"] and not out["determinism"].passed
