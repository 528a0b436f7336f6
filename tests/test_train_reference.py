"""benchmarks/reference_gpt2.py is a drop-in train.py: same harness, same summary block, an exportable model."""
from __future__ import annotations

from pathlib import Path

import torch

from harness_fixtures import VOCAB, make_data
from test_train_script import SUMMARY_KEYS, logged_losses, summary, train
from trainer import harness

REFERENCE = Path(__file__).resolve().parent.parent / "benchmarks" / "reference_gpt2.py"


def test_the_gpt2_reference_trains_through_the_same_harness_and_exports(tmp_path):
    data = make_data(tmp_path / "data", n_docs=400, seed=4)
    proc = train(REFERENCE, data, tmp_path / "out", max_steps=40, budget_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(summary(proc.stdout)) == SUMMARY_KEYS
    losses = logged_losses(proc.stdout)
    assert losses[-1] < losses[0], f"the reference must learn too: {losses}"
    preset = harness.load_presets()["tiny"]
    program = torch.export.load(tmp_path / "out" / "model.pt2")
    out = program.module()(torch.zeros(preset["eval_batch_size"], preset["seq_len"], dtype=torch.int64))
    assert out.shape == (preset["eval_batch_size"], preset["seq_len"], VOCAB)
