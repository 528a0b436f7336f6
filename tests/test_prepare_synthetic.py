"""The synthetic corpus: its entropy is exact (every decision readable from the text), so its BPB floor is true."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from trainer import shards
from trainer.prepare import prepare, synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    logs = []
    out = tmp_path_factory.mktemp("syn") / "data"
    manifest = prepare("synthetic", out, seed=3, train_docs=3000, val_docs=400, log=logs.append)
    return out, manifest, logs


def test_every_generated_story_reads_back_into_exactly_one_decision_sequence():
    # parse() searches ALL decision sequences that could produce the text; one answer = the map is injective here
    for text, bits, trace in synthetic.generate(11, 40, "parse", with_trace=True):
        found = synthetic.parse(text)
        assert len(found) == 1, f"{len(found)} readings of: {text}"
        assert found[0][0] == trace
        assert found[0][1] == pytest.approx(bits, abs=1e-9)


def test_distinct_decision_sequences_never_produce_the_same_text():
    seen: dict[str, tuple] = {}
    repeats = 0
    for text, bits, trace in synthetic.generate(5, 30_000, "collide", with_trace=True):
        t = tuple(trace)
        if text in seen:
            repeats += 1
            assert seen[text] == t, f"two decision sequences give the same story: {text}"
        seen[text] = t
    assert len(seen) > 25_000


def test_parse_finds_no_reading_for_text_the_grammar_cannot_produce():
    text, _ = next(synthetic.generate(1, 1, "x"))
    assert synthetic.parse(text.replace("In the end,", "At the end,")) == []
    assert synthetic.parse(text + " In the end, he smiled.") == []


def test_generation_is_deterministic_in_seed_and_stream():
    a = list(synthetic.generate(7, 50, "train"))
    assert a == list(synthetic.generate(7, 50, "train"))
    assert a != list(synthetic.generate(8, 50, "train"))
    assert a != list(synthetic.generate(7, 50, "val"))


def test_the_stop_is_paid_inside_the_text_every_story_ends_with_one_closing_sentence():
    for text, _ in synthetic.generate(2, 2000, "end"):
        assert text.count("In the end,") == 1
        closing = text[text.index("In the end,"):]
        assert closing.endswith(".") and closing.count(".") == 1, text


def test_arithmetic_in_the_stories_is_right():
    pat = re.compile(r"had (\d+) (\w+)\. (?:He|She) (\w+) (\d+) (more|of them)\. Now (?:he|she) had (\d+) (\w+)\.")
    checked = 0
    for text, _ in synthetic.generate(4, 2000, "sum"):
        for a, _, _, b, kind, c, _ in pat.findall(text):
            assert int(c) == (int(a) + int(b) if kind == "more" else int(a) - int(b)), text
            checked += 1
    assert checked > 500


def test_pronouns_follow_the_gender_of_the_name():
    pat = re.compile(r"named (\w+) \w+\. (He|She) had a friend")
    checked = 0
    for text, _ in synthetic.generate(6, 1000, "gender"):
        for name, pron in pat.findall(text):
            assert synthetic.PRONOUN[name] == pron.lower()
            checked += 1
    assert checked > 500


def test_a_character_is_always_named_in_full_so_later_mentions_are_copies_of_the_introduction():
    # The family name is paid for once, at the introduction; every later mention repeats it for free: structure
    # that rewards a model which copies from earlier in the story (the floor charges nothing for the repeat).
    intro = re.compile(r"named (\w+) (\w+)\.")
    mentions = 0
    for text, _ in synthetic.generate(8, 1000, "names"):
        full = {first: f"{first} {sur}" for first, sur in intro.findall(text)}
        assert full and all(sur in synthetic.SURNAMES.words for sur in (f.split()[1] for f in full.values()))
        body = text[text.index(".") + 1:]
        for first, name in full.items():
            for m in re.finditer(rf"\b{first}\b", body):
                assert body.startswith(name, m.start()), text
                mentions += 1
    assert mentions > 3000


def test_same_seed_gives_identical_manifest_hashes(data, tmp_path):
    out, manifest, _ = data
    again = prepare("synthetic", tmp_path / "again", seed=3, train_docs=3000, val_docs=400, log=lambda s: None)
    assert again["files"] == manifest["files"]
    assert shards.manifest_sha256(tmp_path / "again") == shards.manifest_sha256(out)
    other = prepare("synthetic", tmp_path / "other", seed=4, train_docs=3000, val_docs=400, log=lambda s: None)
    assert other["files"]["val/shard_00000.bin"] != manifest["files"]["val/shard_00000.bin"]


def test_floor_is_the_recorded_bits_of_the_val_docs_over_their_bytes(data):
    out, manifest, _ = data
    val = list(synthetic.generate(3, 400, "val"))
    bits = sum(b for _, b in val)
    nbytes = sum(len(t.encode()) for t, _ in val)
    assert manifest["splits"]["val"]["bytes"] == nbytes
    assert manifest["bpb_floor"] == pytest.approx(bits / nbytes, rel=1e-12)
    # the evaluator counts bytes through token_bytes.json: the same total, BOS weighing nothing
    tokens = shards.load_split(out, "val")
    assert int(shards.load_token_bytes(out)[np.asarray(tokens, dtype=np.int64)].sum()) == nbytes


def test_floor_and_baselines_meet_the_targets(data):
    _, m, _ = data
    floor, base = m["bpb_floor"], m["baselines"]
    assert 0.3 <= floor <= 1.0
    assert floor < base["unigram_token_bpb"]
    assert base["unigram_byte_bpb"] >= 5 * floor


def test_docs_fit_the_cpu_sequence_length(data):
    _, m, _ = data
    assert m["splits"]["val"]["max_doc_tokens"] < 256
    assert m["splits"]["val"]["tokens"] / m["splits"]["val"]["docs"] < 150


def test_saturated_bpe_is_announced_and_the_real_vocabulary_recorded(data):
    out, m, logs = data
    meta = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert meta["requested_vocab_size"] == 8192
    assert meta["saturated"] is True and meta["vocab_size"] < 8192
    assert meta["vocab_size"] == 256 + meta["n_merges"] + len(meta["special_tokens"])
    assert len(json.loads((out / "tokenizer" / "token_bytes.json").read_text())) == meta["vocab_size"]
    assert m["tokenizer"] == meta
    assert any(line.startswith("notice: BPE saturated") for line in logs)
    assert int(np.asarray(shards.load_split(out, "train")).max()) < meta["vocab_size"]


def test_a_model_with_the_true_document_probabilities_would_score_exactly_the_floor(data):
    # The floor charges -log2 p(doc) per doc; per-doc costs average to it over bytes (a sanity check on units).
    _, m, _ = data
    assert m["val_bits"] / m["splits"]["val"]["bytes"] == pytest.approx(m["bpb_floor"])
    assert m["val_bits"] / m["splits"]["val"]["docs"] > 50  # bits per story: not a trivial corpus
    assert math.isfinite(m["baselines"]["unigram_byte_bpb"])
