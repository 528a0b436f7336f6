"""benchmarks/loss_by_part.py: its tagged re-generation is the prepared val split, token for token, and every bit
of the floor and of a model's loss lands in exactly one part."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from evalkit import Uniform, export
from trainer import shards
from trainer.evaluate import load_preset
from trainer.prepare import prepare

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import loss_by_part  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("lbp") / "data"
    manifest = prepare("synthetic", out, seed=5, train_docs=300, val_docs=30, log=lambda s: None)
    return out, manifest


def test_the_tagged_stories_are_the_prepared_val_split_and_their_parts_hold_the_whole_floor(data):
    out, manifest = data
    stories, floor = loss_by_part.tagged_stories(out)
    meta = shards.load_tokenizer_meta(out)
    docs = shards.split_documents(np.asarray(shards.load_split(out, "val")), meta["bos_id"])
    assert [list(map(int, d[1:])) for d in docs] == [ids for ids, _ in stories]
    assert all(len(parts) == len(ids) and all(parts) for ids, parts in stories)
    assert sum(floor.values()) == pytest.approx(manifest["val_bits"], rel=1e-9)
    seen = {p for _, parts in stories for p in parts}
    assert {"mention:name", "count:result", "surname"} <= seen


def test_a_uniform_model_pays_log2_vocab_on_every_token_of_every_part(data, tmp_path):
    out, _ = data
    stories, _ = loss_by_part.tagged_stories(out)
    meta = shards.load_tokenizer_meta(out)
    vocab, preset = meta["vocab_size"], load_preset("cpu")
    model = export(Uniform(vocab), tmp_path / "uniform.pt2", preset["eval_batch_size"], preset["seq_len"])
    bits = loss_by_part.bits_by_part(model, stories, preset, vocab, meta["bos_id"])
    count = {}
    for _, parts in stories:
        for p in parts:
            count[p] = count.get(p, 0) + 1
    assert set(bits) == set(count)
    for part, n in count.items():
        assert bits[part] == pytest.approx(n * math.log2(vocab), rel=1e-7), part   # float32 log-sum-exp


def test_it_refuses_data_of_another_grammar(data, tmp_path):
    out, _ = data
    other = tmp_path / "other"
    other.mkdir()
    text = (out / "manifest.json").read_text().replace('"grammar": "stories/', '"grammar": "old/')
    (other / "manifest.json").write_text(text)
    with pytest.raises(SystemExit, match="not synthetic data of grammar"):
        loss_by_part.tagged_stories(other)
