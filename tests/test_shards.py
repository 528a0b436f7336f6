"""The data format (trainer/shards.py) on a really prepared directory: hashes verify, damage of any kind is caught."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from trainer import shards
from trainer.prepare import prepare


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "data"
    prepare("synthetic", out, train_docs=400, val_docs=60, vocab_size=500, shard_tokens=4096, log=lambda s: None)
    return out


@pytest.fixture()
def data(prepared, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(prepared, copy)
    return copy


def test_a_prepared_directory_verifies_and_lists_every_file(data):
    m = shards.verify(data)
    on_disk = {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(m["files"]) == on_disk
    assert {"tokenizer/tokenizer.json", "tokenizer/tokenizer.tiktoken", "tokenizer/token_bytes.json"} <= on_disk
    assert m["schema"] == shards.MANIFEST_SCHEMA
    assert m["splits"]["train"]["shards"] > 1  # small shard_tokens: documents spread over several shards


@pytest.mark.parametrize("rel", ["val/shard_00000.bin", "train/shard_00001.bin", "tokenizer/token_bytes.json"])
def test_a_flipped_byte_is_caught(data, rel):
    path = data / rel
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(shards.DataError, match="does not match its sha256") as e:
        shards.verify(data)
    assert rel.split("/")[-1] in str(e.value) and "\n" not in str(e.value)
    other = "train/" if rel.startswith("val/") else "val/"
    shards.verify(data, prefixes=(other,))  # the evaluator checks only what it mounts


def test_a_truncated_shard_is_caught_by_its_header_and_by_the_manifest(data):
    path = data / "val" / "shard_00000.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:-6])
    with pytest.raises(shards.DataError, match="truncated: header says"):
        shards.read_shard(path)
    with pytest.raises(shards.DataError, match="does not match its sha256"):
        shards.verify(data)
    path.write_bytes(b"garbage!" * 4)
    with pytest.raises(shards.DataError, match="bad header"):
        shards.read_shard(path)


def test_a_missing_file_or_manifest_is_caught(data):
    (data / "train" / "shard_00000.bin").unlink()
    with pytest.raises(shards.DataError, match="is missing"):
        shards.verify(data)
    (data / "manifest.json").unlink()
    with pytest.raises(shards.DataError, match="never prepared"):
        shards.verify(data)


def test_every_document_starts_with_bos_and_shards_hold_whole_documents(data):
    meta = shards.load_tokenizer_meta(data)
    m = shards.load_manifest(data)
    n_docs = 0
    for path in shards.shard_paths(data, "train"):
        tokens = np.asarray(shards.read_shard(path))
        assert tokens[0] == meta["bos_id"] and tokens.max() < meta["vocab_size"]
        n_docs += len(shards.split_documents(tokens, meta["bos_id"]))
    assert n_docs == m["splits"]["train"]["docs"]
    assert shards.load_split(data, "train").size == m["splits"]["train"]["tokens"]


def test_write_and_read_shard_round_trip_and_range_checks(tmp_path):
    tokens = np.array([0, 1, 65535, 42], dtype=np.int64)
    shards.write_shard(tmp_path / "s.bin", tokens)
    assert (tmp_path / "s.bin").stat().st_size == shards.HEADER_BYTES + 2 * tokens.size
    assert np.array_equal(shards.read_shard(tmp_path / "s.bin"), tokens)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file
    with pytest.raises(ValueError):
        shards.write_shard(tmp_path / "bad.bin", [65536])
    with pytest.raises(ValueError):
        shards.write_shard(tmp_path / "bad.bin", [-1])


def test_manifest_hash_is_stable_and_changes_with_content(data):
    h = shards.manifest_sha256(data)
    assert h == shards.manifest_sha256(data)
    m = json.loads((data / "manifest.json").read_text())
    m["bpb_floor"] = 0.0
    shards.atomic_write_json(data / "manifest.json", m)
    assert shards.manifest_sha256(data) != h
