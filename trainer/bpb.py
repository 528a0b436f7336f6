"""The metric: how validation tokens are laid out for scoring, and how summed losses become bits per byte.

TRUSTED CODE (baked into the trial image; used only by the evaluator).

Eval layout. The val split is cut into documents at their BOS tokens (every document starts with BOS). Rows hold
seq_len + 1 tokens; a row's inputs are row[:-1] and its targets row[1:]. A document longer than a row (more than
seq_len + 1 tokens) is first cut into pieces doc[0:R], doc[R-1:2R-1], ... (R = seq_len + 1) that overlap by one
token: a piece's first token is context only, so every token after the document's BOS is a target exactly once. A
continuation piece sees only that one token of its document's earlier text (plus whatever precedes it in its row).
Whole pieces are then packed into as few rows as it takes (best fit decreasing: longest first, each into the row it
fills most tightly), and within a row they keep their order in the split. What is left of a row is BOS padding AT
THE END (padding never precedes, and so never conditions, a real target). A piece is never cut, so each document
is scored with its own full context, preceded in its row by other whole documents only. Packing tightly rather
than in order matters for speed alone: on the default data (500 stories of about 100 tokens, rows of 257) rows
filled in order were 77% tokens and 23% padding, 260 rows; packed, 201. The score differs only by which other
documents precede a document in its row.

Which targets count. Each row carries a mask of scored target positions: the tokens of a piece after its first
one. A scored target weighs its byte length (tokenizer/token_bytes.json); special tokens (BOS) have 0 bytes and are
left out of both sums, so padding, document starts and cross-document boundaries cost nothing.

Batches. Rows are grouped into the fixed (eval_batch_size, seq_len) shape the model was exported with; the last
batch is filled with all-BOS rows whose mask is empty. Given the batch size, `pack` also orders the rows so that no
batch holds two pieces of one document (`separate`): a row's continuation is then never in its batch, so a model
that reads other rows cannot read its own document's future there (the probes check the rest, trainer/probes.py).
Rows stay in their order when no document is split (every document fits a row); otherwise a row that would
share a batch with another piece of its document moves to a later batch and the rows after it take its place.
A batch that cannot be filled that way (a document with more pieces than there are batches) is completed with
all-BOS rows, which weigh nothing.

Arithmetic. For each scored target, nll = logsumexp(logits) - logits[target] from the model's float32 logits, as
(max - logits[target]) in float64 plus log(sum(exp(logits - max))) in float32 (see token_nll: within ~1e-6 nats of
the float64 value at any logit scale), summed in float64; rows are processed in chunks to bound memory.
val_loss = sum(nll) / eval_tokens in nats per token; val_bpb = sum(nll) / (ln 2 * eval_bytes). A model with
uniform logits scores log2(vocab_size) * eval_tokens / eval_bytes (to float32's precision of log(vocab_size)).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .shards import DataError, split_documents

LN2 = math.log(2.0)
_CHUNK_ELEMENTS = 1 << 25  # logits per log-sum-exp chunk (128 MiB of float32 temporaries)


@dataclass(frozen=True)
class EvalLayout:
    """Packed eval rows. rows: (n, seq_len + 1) token ids; mask: (n, seq_len) True where row[:, 1:] is scored."""
    rows: np.ndarray
    mask: np.ndarray
    bos_id: int

    @property
    def seq_len(self) -> int:
        return self.rows.shape[1] - 1

    @property
    def n_rows(self) -> int:
        return self.rows.shape[0]

    def weights(self, token_bytes: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Byte weight of each target in rows[start:stop]: its byte length if scored, else 0."""
        targets = self.rows[start:stop, 1:].astype(np.int64)
        return np.where(self.mask[start:stop], token_bytes[targets], 0)

    def totals(self, token_bytes: np.ndarray) -> tuple[int, int]:
        """(eval_tokens, eval_bytes): how many targets are scored and their total byte length."""
        w = self.weights(token_bytes)
        return int((w > 0).sum()), int(w.sum())

    def n_batches(self, batch_size: int) -> int:
        return -(-self.n_rows // batch_size)

    def batch(self, i: int, batch_size: int, token_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batch i: (inputs (B, T) int64, targets (B, T) int64, weights (B, T) int64), padded with BOS rows."""
        start = i * batch_size
        stop = min(start + batch_size, self.n_rows)
        rows = self.rows[start:stop].astype(np.int64)
        w = self.weights(token_bytes, start, stop)
        if stop - start < batch_size:
            pad = batch_size - (stop - start)
            rows = np.concatenate([rows, np.full((pad, rows.shape[1]), self.bos_id, np.int64)])
            w = np.concatenate([w, np.zeros((pad, w.shape[1]), w.dtype)])
        return rows[:, :-1], rows[:, 1:], w

    def batches(self, batch_size: int, token_bytes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every batch in order (see `batch`); the last one padded with BOS rows."""
        for i in range(self.n_batches(batch_size)):
            yield self.batch(i, batch_size, token_bytes)


def pieces(doc: np.ndarray, row_len: int) -> list[np.ndarray]:
    """Cut one document into pieces of at most row_len tokens, consecutive pieces overlapping by one token."""
    if len(doc) <= row_len:
        return [doc]
    return [doc[s:s + row_len] for s in range(0, len(doc) - 1, row_len - 1)]


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Assign items to bins of `capacity`: the longest first (ties in index order), each into the bin with the least
    room that still fits it (of those, the one filled last), a new bin when none has room. Returns each bin's item
    indices, bins in the order they were opened. Deterministic; O(n log n) plus a move of at most `capacity`
    entries per item."""
    if any(not 0 < n <= capacity for n in lengths):
        raise ValueError(f"every length must be in 1..{capacity}")
    bins: list[list[int]] = []
    rooms: list[int] = []                  # the distinct free room of bins that still have some, sorted
    by_room: dict[int, list[int]] = {}     # free room -> the bins with exactly that much
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        k = bisect.bisect_left(rooms, n)
        if k == len(rooms):
            b, room = len(bins), capacity
            bins.append([])
        else:
            room = rooms[k]
            b = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(k)
        bins[b].append(i)
        room -= n
        if room:
            if room not in by_room:
                by_room[room] = []
                bisect.insort(rooms, room)
            by_room[room].append(b)
    return bins


def separate(docs_of_row: list[set[int]], batch_size: int) -> list[int | None]:
    """An order of rows (None: an all-BOS row) in which no batch of `batch_size` holds two rows sharing a document.

    docs_of_row: for each row, the documents that have pieces in other rows too. Rows are taken in order, each into
    the first batch with room that comes after every batch holding one of its documents (a new batch at the end
    when there is none), so rows keep their order when no two of them share a document, and a row that moves
    leaves its place to the rows after it. Deterministic; a batch left with room before the last one is filled
    with all-BOS rows.
    """
    batches: list[list[int]] = []
    with_room: list[int] = []             # the batches that are not full, ascending
    latest: dict[int, int] = {}           # document -> the last batch that holds a piece of it
    for r, docs in enumerate(docs_of_row):
        after = max((latest[d] + 1 for d in docs if d in latest), default=0)
        k = bisect.bisect_left(with_room, after)
        if k == len(with_room):
            batches.append([])
            with_room.append(len(batches) - 1)
        b = with_room[k]
        batches[b].append(r)
        if len(batches[b]) == batch_size:
            with_room.pop(k)
        for d in docs:
            latest[d] = max(latest.get(d, -1), b)
    out: list[int | None] = []
    for i, members in enumerate(batches):
        out.extend(members)
        if i < len(batches) - 1:
            out.extend([None] * (batch_size - len(members)))
    return out


def pack(tokens: np.ndarray, bos_id: int, seq_len: int, batch_size: int | None = None) -> EvalLayout:
    """Lay out a val token stream as eval rows (see the module docstring); with `batch_size`, rows are ordered so
    that no batch holds two pieces of one document (`separate`)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    row_len = seq_len + 1
    items, doc_of = [], []
    for d, doc in enumerate(split_documents(np.asarray(tokens), bos_id)):
        for piece in pieces(doc, row_len):
            items.append(piece)
            doc_of.append(d)
    if not items:
        raise DataError("the val split holds no tokens; run `autoresearch prepare` again")
    placed = best_fit_decreasing([len(p) for p in items], row_len)
    if batch_size is not None:
        split = {d for d, n in zip(*np.unique(doc_of, return_counts=True)) if n > 1}
        order = separate([{doc_of[i] for i in members} & split for members in placed], batch_size)
        placed = [placed[r] if r is not None else [] for r in order]
    top = max(int(p.max()) for p in items)
    rows = np.full((len(placed), row_len), bos_id, np.uint16 if top < 2**16 else np.int64)
    mask = np.zeros((len(placed), seq_len), bool)
    for r, members in enumerate(placed):
        fill = 0
        for i in sorted(members):                       # the split's order within a row
            n = len(items[i])
            rows[r, fill:fill + n] = items[i]
            mask[r, fill:fill + n - 1] = True
            fill += n
    return EvalLayout(rows, mask, bos_id)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood in nats, as float64: (max - logits[target]) + log(sum(exp(logits - max))).

    The max and the target's logit are the model's own float32 values, and their difference is taken in float64
    (exactly). The log-sum-exp of the shifted logits (each term in [0, 1], the sum in [1, vocab]) is computed in
    float32: its error stays near 1e-7 nats whatever the scale of the logits, at an eighth of the cost of doing it
    in float64. A plain float32 logsumexp would not do: with logits near 1e7 it rounds by up to 0.5 nats per
    token, in a direction the model could choose.
    """
    b, t, v = logits.shape
    flat = logits.reshape(b * t, v).float()
    tgt = targets.reshape(b * t).to(logits.device)
    out = torch.empty(b * t, dtype=torch.float64, device=logits.device)
    step = max(1, _CHUNK_ELEMENTS // max(v, 1))
    for s in range(0, b * t, step):
        chunk = flat[s:s + step]
        top = chunk.amax(dim=1, keepdim=True)
        spread = torch.exp(chunk - top).sum(dim=1).log()
        picked = chunk.gather(1, tgt[s:s + step, None]).squeeze(1)
        out[s:s + step] = (top.squeeze(1).double() - picked.double()) + spread.double()
    return out.reshape(b, t)


@dataclass
class Tally:
    """Running sums over scored targets."""
    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def add(self, logits: torch.Tensor, targets: np.ndarray, weights: np.ndarray) -> None:
        self.add_nll(token_nll(logits, torch.as_tensor(targets)), weights)

    def add_nll(self, nll: torch.Tensor, weights: np.ndarray) -> None:
        """Add a batch whose per-position nll (token_nll) is already computed."""
        w = torch.as_tensor(weights, device=nll.device)
        scored = w > 0
        self.nats += float(nll[scored].sum())
        self.tokens += int(scored.sum())
        self.bytes += int(w.sum())

    @property
    def loss(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")

    @property
    def bpb(self) -> float:
        return self.nats / (LN2 * self.bytes) if self.bytes else float("nan")


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Summed nats over summed target bytes -> bits per byte."""
    return nats / (LN2 * n_bytes)
