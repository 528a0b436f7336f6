"""The training data loader: BOS-aligned best-fit packing of documents into rows, in an order fixed by the seed.

TRUSTED CODE, part of the harness baked into the trial image; not the agent's to edit.

Reads DATA/train/shard_*.bin through trainer.shards (memory-mapped, never copied whole). A document is the run of
tokens from one BOS to the next. Each row holds seq_len + 1 tokens (inputs are row[:-1], targets row[1:]) and is
filled like nanochat's best-fit loader:

    the row starts empty; a buffer holds the next `buffer_docs` documents of the shuffled stream;
    while the row has room: put in the LONGEST buffered document that fits whole;
                            if none fits, put in the SHORTEST one cropped to the room left (its rest is dropped).

So every row starts with BOS (it starts with a document), no slot is padding, and a cropped document is at most
one per row. Documents are visited in a permutation drawn from (seed, epoch); when the stream runs out a new epoch
starts with a fresh permutation, so the loader never ends. The same seed and batch size give the same batches.
"""
from __future__ import annotations

import bisect
import math
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from trainer.shards import DataError, read_shard, shard_paths

DEFAULT_BUFFER_DOCS = 1000


class DocumentIndex:
    """Where every training document lives: (shard, start, length), for all train shards."""

    def __init__(self, data_dir: str | Path, bos_id: int):
        self.shards: list[np.ndarray] = []
        shard_ids, starts, lengths = [], [], []
        for i, path in enumerate(shard_paths(data_dir, "train")):
            tokens = read_shard(path)
            if tokens.size == 0:
                continue
            s = np.flatnonzero(tokens == bos_id)
            if s.size == 0 or s[0] != 0:
                raise DataError(f"{path} does not start with the BOS token {bos_id}; the shard was not written "
                                "by `prepare` (or the tokenizer does not match): run `autoresearch prepare` again")
            self.shards.append(tokens)
            shard_ids.append(np.full(s.size, len(self.shards) - 1, dtype=np.int32))
            starts.append(s.astype(np.int64))
            lengths.append(np.diff(np.append(s, tokens.size)).astype(np.int64))
        if not self.shards:
            raise DataError(f"the train shards in {Path(data_dir) / 'train'} hold no tokens; "
                            "run `autoresearch prepare` again")
        self.shard_of = np.concatenate(shard_ids)
        self.start = np.concatenate(starts)
        self.length = np.concatenate(lengths)

    def __len__(self) -> int:
        return int(self.length.size)

    @property
    def num_tokens(self) -> int:
        return int(self.length.sum())

    def tokens(self, doc: int, n: int) -> np.ndarray:
        """The first n tokens of document `doc` (a view into the memory map)."""
        s = int(self.start[doc])
        return self.shards[int(self.shard_of[doc])][s:s + n]


class PackedRows:
    """Yields rows of seq_len + 1 token ids (numpy int64) by best-fit packing; infinite and seed-determined."""

    def __init__(self, index: DocumentIndex, seq_len: int, seed: int, buffer_docs: int = DEFAULT_BUFFER_DOCS):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.index = index
        self.row_len = seq_len + 1
        self.seed = seed
        self.buffer_docs = max(1, buffer_docs)
        self.epoch = -1
        self._order = np.zeros(0, dtype=np.int64)
        self._next = 0
        self._serial = 0
        self._buf: list[tuple[int, int, int]] = []  # (length, serial, doc id), kept sorted

    def _next_doc(self) -> int:
        if self._next >= self._order.size:
            self.epoch += 1
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(len(self.index))
            self._next = 0
        doc = int(self._order[self._next])
        self._next += 1
        return doc

    def _refill(self) -> None:
        while len(self._buf) < self.buffer_docs:
            doc = self._next_doc()
            bisect.insort(self._buf, (int(self.index.length[doc]), self._serial, doc))
            self._serial += 1

    def fill(self, row: np.ndarray) -> None:
        """Fill one row (length seq_len + 1) in place."""
        pos = 0
        while pos < self.row_len:
            self._refill()
            room = self.row_len - pos
            i = bisect.bisect_right(self._buf, (room, math.inf)) - 1
            if i >= 0:                       # the longest document that fits whole
                n, _, doc = self._buf.pop(i)
            else:                            # none fits: crop the shortest to the room left
                _, _, doc = self._buf.pop(0)
                n = room
            row[pos:pos + n] = self.index.tokens(doc, n)
            pos += n

    def batch(self, batch_size: int) -> np.ndarray:
        rows = np.empty((batch_size, self.row_len), dtype=np.int64)
        for r in range(batch_size):
            self.fill(rows[r])
        return rows


class TrainLoader:
    """Iterator of (x, y) int64 tensors of shape (batch_size, seq_len) on `device`. Never ends.

    With prefetch > 0 (the default on CUDA) a background thread packs the next batches into pinned memory while
    the GPU trains; it is the only producer, so the batches and their order are exactly those without it.
    """

    def __init__(self, rows: PackedRows, batch_size: int, device: str,
                 on_first_batch: Callable[[], None] | None = None, prefetch: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows = rows
        self.batch_size = batch_size
        self.device = device
        self._on_first_batch = on_first_batch
        self._queue: queue.Queue | None = None
        if prefetch is None:
            prefetch = 2 if device == "cuda" else 0
        if prefetch > 0:
            self._queue = queue.Queue(maxsize=prefetch)
            threading.Thread(target=self._produce, name="harness-loader", daemon=True).start()

    def _host_batch(self) -> torch.Tensor:
        batch = torch.from_numpy(self.rows.batch(self.batch_size))
        return batch.pin_memory() if self.device == "cuda" else batch

    def _produce(self) -> None:
        while True:
            try:
                item = self._host_batch()
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
                self._queue.put(e)
                return
            self._queue.put(item)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._queue is None:
            batch = self._host_batch()
        else:
            batch = self._queue.get()
            if isinstance(batch, BaseException):
                self._queue.put(batch)                   # every later call fails the same way
                raise batch
        if self.device == "cuda":                        # untested here (no GPU on the dev machines)
            batch = batch.to("cuda", non_blocking=True)
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        if self._on_first_batch is not None:
            self._on_first_batch()
            self._on_first_batch = None
        return x, y
