"""The tokenizer: rustbpe-trained byte-level BPE, used through tiktoken, stored in formats others can read."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tiktoken.load

from trainer import shards
from trainer.prepare import PrepareError, load_encoding, prepare, synthetic
from trainer.prepare import tokenizer as tok

UNICODE_DOCS = ["Grüße aus Köln! Ça va? 日本語のテキスト, emoji 🙂🚀 and tabs\tand  double  spaces.",
                "Numbers 1234567 and 3.14159; code: def f(x): return x**2  # done",
                "A line\nand another\r\nline with CRLF, and <|bos|> written as plain text."]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    docs = UNICODE_DOCS * 20 + [t for t, _ in synthetic.generate(1, 300, "tok")]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = root / "data"
    prepare(f"files:{root / 'corpus.jsonl'}", out, vocab_size=600, val_docs=30, log=lambda s: None)
    return out


def test_round_trip_of_unicode_and_synthetic_text(data):
    enc = load_encoding(data)
    for text in UNICODE_DOCS + [t for t, _ in synthetic.generate(2, 50, "rt")]:
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_a_document_cannot_forge_a_bos_token(data):
    enc = load_encoding(data)
    meta = shards.load_tokenizer_meta(data)
    ids = enc.encode_ordinary("before <|bos|> after")
    assert meta["bos_id"] not in ids
    # and in the shards, BOS appears exactly once per document
    tokens = np.asarray(shards.load_split(data, "val"))
    assert (tokens == meta["bos_id"]).sum() == json.loads((data / "manifest.json").read_text())["splits"]["val"]["docs"]


def test_the_rank_file_is_what_tiktoken_load_reads(data, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache: read the file itself
    ranks = tiktoken.load.load_tiktoken_bpe(str(data / "tokenizer" / "tokenizer.tiktoken"))
    assert ranks == load_encoding(data)._mergeable_ranks
    assert sorted(ranks.values()) == list(range(len(ranks)))


def test_tokenizer_json_and_token_bytes_describe_the_vocabulary(data):
    meta = shards.load_tokenizer_meta(data)
    enc = load_encoding(data)
    assert meta["vocab_size"] == enc.n_vocab == 600 and meta["requested_vocab_size"] == 600
    assert meta["saturated"] is False and meta["n_merges"] == 600 - 256 - len(tok.SPECIAL_TOKENS)
    assert meta["special_tokens"]["<|bos|>"] == meta["bos_id"] == enc.encode_single_token("<|bos|>")
    assert meta["pattern"] == tok.SPLIT_PATTERN
    lengths = shards.load_token_bytes(data)
    assert len(lengths) == meta["vocab_size"]
    for i in range(meta["vocab_size"]):
        expected = 0 if i in meta["special_tokens"].values() else len(enc.decode_single_token_bytes(i))
        assert lengths[i] == expected


def test_vocab_size_bounds_are_one_line_errors():
    for bad in (259, 100, 65537):
        with pytest.raises(PrepareError) as e:
            tok.check_vocab_size(bad)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)
    tok.check_vocab_size(260)
    tok.check_vocab_size(65536)


def test_a_damaged_tokenizer_is_refused(data, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    lines = (copy / "tokenizer" / "tokenizer.tiktoken").read_text().splitlines()
    (copy / "tokenizer" / "tokenizer.tiktoken").write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(shards.DataError, match="does not match"):
        load_encoding(copy)
    with pytest.raises(shards.DataError, match="run `autoresearch prepare`"):
        load_encoding(tmp_path / "nothing")
    (copy / "tokenizer" / "tokenizer.tiktoken").write_text("not base64 at all\n")
    with pytest.raises(shards.DataError, match="cannot read the tokenizer"):
        load_encoding(copy)
