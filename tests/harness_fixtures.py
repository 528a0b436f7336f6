"""Small prepared data directories for the harness and train.py tests, built in tmp dirs with trainer.shards.

Documents are arithmetic progressions mod the vocabulary (BOS, a, a+d, a+2d, ...): learnable in seconds, with
lengths spread from a few tokens to several rows, so packing sees both short documents and ones it must crop.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.shards import atomic_write_json, write_manifest, write_shard

BOS = 0
VOCAB = 64


def make_docs(n_docs: int, seed: int, max_len: int = 150) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(2, max_len))
        a, d = int(rng.integers(1, VOCAB)), int(rng.integers(1, 6))
        body = 1 + (a + d * np.arange(n - 1)) % (VOCAB - 1)   # ids 1..VOCAB-1; 0 is BOS
        docs.append(np.concatenate([[BOS], body]).astype(np.int64))
    return docs


def make_data(root: Path, n_docs: int = 400, seed: int = 0, shards: int = 2, max_len: int = 150) -> Path:
    """Write a complete data directory (train + val shards, tokenizer files, manifest) under root."""
    root = Path(root)
    docs = make_docs(n_docs, seed, max_len)
    n_val = max(1, n_docs // 10)
    train, val = docs[n_val:], docs[:n_val]
    per = -(-len(train) // shards)
    for i in range(shards):
        part = train[i * per:(i + 1) * per]
        write_shard(root / "train" / f"shard_{i:05d}.bin", np.concatenate(part) if part else np.zeros(0))
    write_shard(root / "val" / "shard_00000.bin", np.concatenate(val))
    tok = root / "tokenizer"
    atomic_write_json(tok / "tokenizer.json", {"vocab_size": VOCAB, "bos_id": BOS,
                                               "special_tokens": {"<|bos|>": BOS}, "pattern": ""})
    (tok / "token_bytes.json").write_text(json.dumps([0] + [1] * (VOCAB - 1)))
    write_manifest(root, {"source": "test-progressions", "params": {"n_docs": n_docs, "seed": seed},
                          "tokenizer": {"vocab_size": VOCAB, "bos_id": BOS}, "splits": {}, "bpb_floor": None})
    return root


def train_docs(root: Path) -> list[np.ndarray]:
    from trainer.shards import load_split, split_documents
    return [np.asarray(d) for d in split_documents(load_split(root, "train"), BOS)]
