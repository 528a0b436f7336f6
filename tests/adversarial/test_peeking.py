"""Partial peeking: a candidate whose exported model reads the next token only on a few rows chosen by their content,
or only in the BOS-padded last eval batch, is a `violation` through the real trial (tiny policy), because every
row of every batch is probed (trainer/probes.py; the bound is in docs/result-schema.md).

The candidates do not train: they export a bigram table through the real harness (`run.save_model`), with a peek
that bets 10 nats on the token after each position in the rows it picks. The test knows the validation split (it
is the attacker who guessed right) and picks the rows to peek on from it, the way a model could learn to
recognise rare content.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.sandbox_kit import candidate, policy, trial
from trainer.evaluate import load_preset, read_val

HEAD = """
import torch, torch.nn as nn, torch.nn.functional as F
from trainer import harness
run = harness.setup()
V, BOS = run.vocab_size, run.bos_id

class Peek(nn.Module):
    # an honest bigram table, plus a bet on the next token in the rows `chosen` picks
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(V, V) * 0.1)
        self.register_buffer("bet", torch.eye(V) * 10.0)
    def forward(self, idx):
        ahead = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        return F.embedding(idx, self.table) + F.embedding(ahead, self.bet) * chosen(idx).float()[:, None, None]
"""

ON_CONTENT = """
def chosen(idx):                       # the rows that start with these two tokens: 1 of the val split's rows
    return (idx[:, 1] == {a}) & (idx[:, 2] == {b})
run.save_model(Peek())
print("PEEK_ROWS", {count}, flush=True)
"""

IN_PADDED_BATCH = """
def chosen(idx):                       # every row, but only in a batch that holds an all-BOS row
    return (idx == BOS).all(dim=1).any().expand(idx.shape[0])
run.save_model(Peek())
print("PEEK_PADDED", flush=True)
"""


def layout(data):
    p = load_preset(policy().preset)
    return read_val(data, p["seq_len"], p["eval_batch_size"])[4], p["eval_batch_size"]


def rare_start(rows: np.ndarray, bos: int) -> tuple[int, int, int]:
    """(a, b, count): two tokens at positions 1 and 2 that start the fewest rows (at least one)."""
    pairs, counts = np.unique(rows[:, 1:3], axis=0, return_counts=True)
    count, (a, b) = min((int(c), tuple(map(int, p))) for p, c in zip(pairs, counts) if bos not in p)
    return a, b, count


@pytest.mark.docker
def test_a_candidate_that_peeks_on_a_few_rows_chosen_by_their_content_is_a_violation(tmp_path, trial_image,
                                                                                       sandbox_data):
    lay, _ = layout(sandbox_data)
    a, b, count = rare_start(lay.rows, lay.bos_id)
    assert count <= 0.05 * lay.n_rows, "the data has no rare row start to pick"
    cand = candidate(tmp_path, HEAD + ON_CONTENT.format(a=a, b=b, count=count))
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "violation", (out.status, out.error, out.log_tail)
    assert "PEEK_ROWS" in out.log_tail and out.val_bpb is None
    assert out.result["probes"]["causality"]["passed"] is False and "future" in out.error


@pytest.mark.docker
def test_a_candidate_that_peeks_only_in_the_padded_last_batch_is_a_violation(tmp_path, trial_image, sandbox_data):
    lay, batch = layout(sandbox_data)
    n = lay.n_batches(batch)
    assert lay.n_rows % batch, "the data's last eval batch is not padded: nothing to test"
    padding = np.flatnonzero((lay.rows[:, :-1] == lay.bos_id).all(axis=1))     # BOS rows before the last batch
    first = int(padding[0]) // batch + 1 if len(padding) else n                 # (a document split many ways)
    cand = candidate(tmp_path, HEAD + IN_PADDED_BATCH)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "violation", (out.status, out.error, out.log_tail)
    assert "PEEK_PADDED" in out.log_tail and f"eval batch {first}/{n}" in out.error
    assert out.result["probes"]["causality"]["batches"] == first - 1         # the batches before looked honest
    # (either probe may be the one: a pass that replaces every BOS row ends the peek, and the kept rows change)
