"""Test helpers for the evaluator: tiny prepared data directories and small exported models with known behaviour.

Real parts only: data written with trainer.shards, models exported with torch.export.export + torch.export.save.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.shards import atomic_write_json, write_manifest, write_shard

BOS = 0


def make_data(root: Path, docs: list[list[int]], vocab: int, token_bytes: list[int] | None = None,
              bpb_floor: float | None = None, baselines: dict | None = None, shards: int = 1) -> Path:
    """A prepared data directory whose val split is exactly `docs` (each starts with BOS=0)."""
    root = Path(root)
    if token_bytes is None:
        token_bytes = [0] + [1 + (i % 3) for i in range(1, vocab)]
    atomic_write_json(root / "tokenizer" / "tokenizer.json",
                      {"vocab_size": vocab, "bos_id": BOS, "special_tokens": {"<|bos|>": BOS}, "pattern": ""})
    atomic_write_json(root / "tokenizer" / "token_bytes.json", list(token_bytes))
    flat = np.concatenate([np.asarray(d, np.int64) for d in docs])
    cuts = np.array_split(np.arange(len(docs)), shards)
    for i, idx in enumerate(cuts):
        write_shard(root / "val" / f"shard_{i:05d}.bin", np.concatenate([np.asarray(docs[j]) for j in idx]))
    write_shard(root / "train" / "shard_00000.bin", flat[: max(2, len(flat) // 2)])
    manifest = {"source": "test", "params": {}, "tokenizer": {"vocab_size": vocab},
                "splits": {"val": {"docs": len(docs), "tokens": int(flat.size), "bytes": 0}},
                "bpb_floor": bpb_floor}
    if baselines is not None:
        manifest["baselines"] = baselines
    write_manifest(root, manifest)
    return root


def random_docs(rng: np.random.Generator, n: int, vocab: int, lo: int = 2, hi: int = 40) -> list[list[int]]:
    return [[BOS] + rng.integers(1, vocab, size=int(rng.integers(lo, hi))).tolist() for _ in range(n)]


def export(model: nn.Module, path: Path, batch: int, seq_len: int) -> Path:
    model.eval()
    ep = torch.export.export(model, (torch.zeros(batch, seq_len, dtype=torch.long),))
    torch.export.save(ep, str(path))
    return Path(path)


# --------------------------------------------------------------------------- honest models

class Uniform(nn.Module):
    """The same logits everywhere: every token has probability 1/vocab."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab, dtype=torch.float32) + 0.0 * idx[..., None].float()


class Bigram(nn.Module):
    """logits[t] = table[idx[t]]: a causal, row-independent model."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.float())

    def forward(self, idx):
        return F.embedding(idx, self.table)


class Unigram(nn.Module):
    """logits = log p for a fixed distribution: the oracle for i.i.d. tokens."""

    def __init__(self, logp: torch.Tensor):
        super().__init__()
        self.register_buffer("logp", logp.float())

    def forward(self, idx):
        return self.logp.expand(*idx.shape, -1) + 0.0 * idx[..., None].float()


class CausalConv(nn.Module):
    """A depthwise causal convolution over token embeddings (left padding only)."""

    def __init__(self, vocab: int, dim: int = 16, width: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.conv = nn.Conv1d(dim, dim, width, groups=dim)
        self.head = nn.Linear(dim, vocab)
        self.width = width

    def forward(self, idx):
        x = self.emb(idx).transpose(1, 2)
        x = self.conv(F.pad(x, (self.width - 1, 0)))
        return self.head(torch.tanh(x.transpose(1, 2)))


class CausalAttention(nn.Module):
    """One causal self-attention layer with rotary-free learned positions, via scaled_dot_product_attention."""

    def __init__(self, vocab: int, seq_len: int, dim: int = 32, heads: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.1)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)
        self.heads = heads

    def forward(self, idx):
        b, t = idx.shape
        x = self.emb(idx) + self.pos[:t]
        q, k, v = self.qkv(F.rms_norm(x, (x.shape[-1],))).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        return self.head(x + y)


class InPlaceAttention(CausalAttention):
    """CausalAttention with in-place ops on intermediates (allowed: the loader functionalizes such a graph)."""

    def forward(self, idx):
        b, t = idx.shape
        x = self.emb(idx)
        x.add_(self.pos[:t])
        q, k, v = self.qkv(F.rms_norm(x, (x.shape[-1],))).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        return self.head(x.add_(y).mul_(1.0))


# --------------------------------------------------------------------------- cheating and broken models

class PeekNext(nn.Module):
    """Cheats: position t's logits come from token t+1 (the target itself)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.eye(vocab) * 10.0)

    def forward(self, idx):
        ahead = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        return F.embedding(ahead, self.table)


class PeekSome(nn.Module):
    """Cheats on some rows only: in a chosen row, position t also sees token t + 1 (its target) and bets on it.

    The choice (`chosen`, a (B,) bool tensor from the whole batch) is what the subclasses vary: rows picked by their
    content, or every row of a batch that looks unlike the others. Elsewhere it is an honest bigram model.
    """

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab))
        self.register_buffer("bet", torch.eye(vocab) * 10.0)

    def chosen(self, idx):
        raise NotImplementedError

    def forward(self, idx):
        ahead = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        peek = F.embedding(ahead, self.bet) * self.chosen(idx).float()[:, None, None]
        return F.embedding(idx, self.table) + peek


class PeekOnContent(PeekSome):
    """Peeks in the rows that hold `tokens` ({position: token}) at the start: a share of rows chosen by content."""

    def __init__(self, vocab: int, tokens: dict[int, int]):
        super().__init__(vocab)
        self.tokens = sorted(tokens.items())

    def chosen(self, idx):
        hit = idx[:, 0] == idx[:, 0]
        for position, token in self.tokens:
            hit = hit & (idx[:, position] == token)
        return hit


class PeekOnRowSum(PeekSome):
    """Peeks in the rows whose token sum is `rem` modulo `mod`: chosen by the whole row, its future included."""

    def __init__(self, vocab: int, mod: int, rem: int):
        super().__init__(vocab)
        self.mod, self.rem = mod, rem

    def chosen(self, idx):
        return idx.sum(dim=1) % self.mod == self.rem


class PeekInPaddedBatch(PeekSome):
    """Peeks in every row, but only in a batch that holds an all-BOS row: the padded last eval batch."""

    def chosen(self, idx):
        padded = (idx == BOS).all(dim=1).any()
        return padded.expand(idx.shape[0])


class BatchMean(nn.Module):
    """Cheats: mixes rows by adding the batch mean of the embeddings."""

    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, idx):
        e = F.embedding(idx, self.table)
        return e + e.mean(dim=0, keepdim=True)


class Noisy(nn.Module):
    """Random output: differs from call to call."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        return torch.rand(*idx.shape, self.vocab) + 0.0 * idx[..., None].float()


class Counter(nn.Module):
    """Mutates a buffer on every call (state between calls)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))
        self.table = nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, idx):
        self.calls.add_(1)
        return F.embedding(idx, self.table) + self.calls


class WrongVocab(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab, vocab + 1))

    def forward(self, idx):
        return F.embedding(idx, self.table)


class NaNs(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, idx):
        return F.embedding(idx, self.table) / 0.0 * 0.0


class NaNOnPadding(nn.Module):
    """A bigram model whose logits are NaN for all-BOS rows: only the padding rows of the last eval batch."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, idx):
        pad = (idx == BOS).all(dim=1)
        return F.embedding(idx, self.table) + torch.where(pad, float("nan"), 0.0)[:, None, None]


def log2_uniform_bpb(vocab: int, tokens: int, n_bytes: int) -> float:
    return math.log2(vocab) * tokens / n_bytes


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def rebuild(src: Path, dst: Path, *, edit_model=None, edit_weights=None, replace: dict | None = None,
            add: dict | None = None, drop: tuple = ()) -> Path:
    """Copy a .pt2 archive entry by entry (as torch's own writer lays it out), tampering on the way.

    edit_model / edit_weights: functions that change the parsed models/model.json / weights config in place;
    replace / add: {relative name: bytes}; drop: relative names to leave out.
    """
    import zipfile
    from torch.export.pt2_archive._package import PT2ArchiveWriter
    replace, add = dict(replace or {}), dict(add or {})
    with zipfile.ZipFile(src) as zf, PT2ArchiveWriter(str(dst)) as w:
        for name in zf.namelist():
            rel = name.split("/", 1)[1]
            if rel.startswith(".data/") or rel in drop:
                continue
            data = replace.pop(rel, None)
            if data is None:
                data = zf.read(name)
                if rel == "models/model.json" and edit_model:
                    obj = json.loads(data)
                    edit_model(obj)
                    data = json.dumps(obj).encode()
                if rel == "data/weights/model_weights_config.json" and edit_weights:
                    obj = json.loads(data)
                    edit_weights(obj)
                    data = json.dumps(obj).encode()
            w.write_bytes(rel, data)
        for rel, data in add.items():
            w.write_bytes(rel, data)
    return Path(dst)


def pickle_payload(marker: Path) -> bytes:
    """A torch.save file whose unpickling creates `marker` (what a hostile train.py could plant in its .pt2)."""
    import io
    import os

    class Plant:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save(Plant(), buf)
    return buf.getvalue()


class MutatesInput(nn.Module):
    """Writes into its input tensor."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, idx):
        idx.clamp_(0, self.table.shape[0] - 1)
        return F.embedding(idx, self.table)


class HalfLogits(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, idx):
        return F.embedding(idx, self.table).to(torch.bfloat16)


class SmallTable(nn.Module):
    """Exports fine (the example input is all zeros) but indexes out of range on real tokens."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(2, vocab))

    def forward(self, idx):
        return F.embedding(idx, self.table)
