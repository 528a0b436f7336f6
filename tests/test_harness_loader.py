"""The harness's train loader: best-fit packing with BOS first in every row, no padding, order fixed by the seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness_fixtures import BOS, make_data, train_docs
from trainer.harness.loader import DocumentIndex, PackedRows, TrainLoader
from trainer.shards import DataError, write_shard


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"), n_docs=300, seed=1)


def segments(row: np.ndarray) -> list[tuple[int, ...]]:
    starts = np.flatnonzero(row == BOS)
    return [tuple(row[s:e]) for s, e in zip(starts, np.append(starts[1:], row.size))]


def test_packing_puts_bos_first_in_every_row_and_wastes_no_slot(data):
    docs = {tuple(d) for d in train_docs(data)}
    prefixes = {d[:k] for d in docs for k in range(1, len(d) + 1)}
    rows = PackedRows(DocumentIndex(data, BOS), seq_len=64, seed=0)
    cropped = 0
    for _ in range(200):
        row = rows.batch(1)[0]
        assert row.shape == (65,)
        assert row[0] == BOS, "every row must start with a document"
        segs = segments(row)
        assert sum(map(len, segs)) == row.size
        # every slot holds real document tokens: whole documents, and at most the last one cropped
        for seg in segs[:-1]:
            assert seg in docs, "only the last document of a row may be cropped"
        assert segs[-1] in prefixes
        cropped += segs[-1] not in docs
    assert cropped > 0, "documents longer than a row must be cropped, not skipped"


def test_best_fit_takes_the_longest_document_that_fits(tmp_path):
    # documents of length 6, 3, 5, 4 (BOS included); a row of 10 tokens gets the 6 and then the 4
    lengths = [6, 3, 5, 4]
    tokens = np.concatenate([[BOS] + [10 * (i + 1)] * (n - 1) for i, n in enumerate(lengths)])
    write_shard(tmp_path / "train" / "shard_00000.bin", tokens)
    row = PackedRows(DocumentIndex(tmp_path, BOS), seq_len=9, seed=0, buffer_docs=4).batch(1)[0]
    assert [len(s) for s in segments(row)] == [6, 4]
    assert list(row) == [BOS, 10, 10, 10, 10, 10, BOS, 40, 40, 40]


def test_loader_is_deterministic_per_seed_and_differs_across_seeds(data):
    def first_batches(seed, n=5):
        loader = TrainLoader(PackedRows(DocumentIndex(data, BOS), 64, seed), batch_size=4, device="cpu")
        return [next(loader) for _ in range(n)]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_loader_yields_int64_inputs_and_targets_shifted_by_one(data):
    started = []
    loader = TrainLoader(PackedRows(DocumentIndex(data, BOS), 32, 0), batch_size=3, device="cpu",
                         on_first_batch=lambda: started.append(1))
    assert started == []
    x, y = next(loader)
    next(loader)
    assert started == [1], "the budget clock starts exactly once, at the first batch"
    assert x.shape == y.shape == (3, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert (x[:, 0] == BOS).all()


def test_loader_never_ends_and_reshuffles_each_epoch(tmp_path):
    data = make_data(tmp_path, n_docs=40, seed=3, shards=1)
    rows = PackedRows(DocumentIndex(data, BOS), 64, seed=0, buffer_docs=1)  # buffer 1: pure stream order
    orders = []
    for _ in range(400):
        rows.batch(1)
        if rows.epoch >= 2:
            break
        if rows.epoch >= len(orders):
            orders.append(rows._order.copy())
    assert rows.epoch >= 2, "the loader must run through several epochs without ending"
    assert sorted(orders[0]) == sorted(orders[1]) and not np.array_equal(orders[0], orders[1])


def test_a_shard_that_does_not_start_with_bos_is_a_data_error(tmp_path):
    write_shard(tmp_path / "train" / "shard_00000.bin", np.array([5, 6, BOS, 7]))
    with pytest.raises(DataError, match="does not start with the BOS token") as e:
        DocumentIndex(tmp_path, BOS)
    assert "\n" not in str(e.value)


def test_a_missing_train_split_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no train shards"):
        DocumentIndex(tmp_path, BOS)


def test_the_prefetching_loader_yields_exactly_the_same_batches(data):
    plain = TrainLoader(PackedRows(DocumentIndex(data, BOS), 64, 9), batch_size=4, device="cpu", prefetch=0)
    threaded = TrainLoader(PackedRows(DocumentIndex(data, BOS), 64, 9), batch_size=4, device="cpu", prefetch=2)
    for _ in range(20):
        (xa, ya), (xb, yb) = next(plain), next(threaded)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
