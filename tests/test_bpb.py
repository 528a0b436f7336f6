"""The metric: the eval layout (every token scored once, in its own context) and BPB arithmetic on known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evalkit as K
from trainer import bpb
from trainer.evaluate import evaluate
from trainer.shards import DataError

SEQ = 16          # row = 17 tokens


def unique_docs(lengths: list[int]) -> list[np.ndarray]:
    """Documents whose non-BOS tokens are all distinct, so every scored target can be traced to its source."""
    docs, nxt = [], 1
    for n in lengths:
        docs.append(np.array([K.BOS] + list(range(nxt, nxt + n - 1)), np.int64))
        nxt += n - 1
    return docs


def scored_targets(layout: bpb.EvalLayout) -> list[int]:
    return [int(layout.rows[r, i + 1]) for r, i in zip(*np.nonzero(layout.mask))]


def test_every_non_bos_val_token_is_a_target_exactly_once_even_in_documents_longer_than_a_row():
    lengths = [1, 2, 5, 17, 18, 40, 3, 16, 60, 9, 34, 35, 33]     # around and across the 17-token row
    docs = unique_docs(lengths)
    layout = bpb.pack(np.concatenate(docs), K.BOS, SEQ)
    targets = scored_targets(layout)
    expected = [int(t) for d in docs for t in d[1:]]
    assert sorted(targets) == sorted(expected)
    assert len(targets) == len(set(targets))                       # exactly once
    assert layout.rows.shape[1] == SEQ + 1 and layout.mask.shape == (layout.n_rows, SEQ)


def test_a_document_that_fits_sits_whole_in_one_row_after_its_own_bos_and_padding_only_ends_rows():
    docs = unique_docs([5, 12, 9, 17, 2, 8, 30])
    layout = bpb.pack(np.concatenate(docs), K.BOS, SEQ)
    for d in docs:
        if len(d) > SEQ + 1:
            continue
        hits = [(r, c) for r in range(layout.n_rows) for c in range(SEQ + 1)
                if layout.rows[r, c] == d[1]] if len(d) > 1 else []
        if hits:
            r, c = hits[0]
            assert np.array_equal(layout.rows[r, c - 1:c - 1 + len(d)], d)   # BOS + the whole doc, contiguous
    for r in range(layout.n_rows):
        scored = np.nonzero(layout.mask[r])[0]
        last = scored.max() + 1 if scored.size else 0
        tail = layout.rows[r, last + 1:]
        assert (tail == K.BOS).all(), "only BOS padding may follow the last scored target"
        # no padding before a scored target: every BOS before `last` starts a document (is followed by a real token)
        for c in np.nonzero(layout.rows[r, :last + 1] == K.BOS)[0]:
            assert layout.rows[r, c + 1] != K.BOS


def test_documents_fill_rows_best_fit_not_in_order_and_keep_the_split_order_within_a_row():
    # rows of 17: in order, 10 | 10 + 7 | 7 would take 3 rows (a third of the slots padding); best fit needs 2, full
    docs = unique_docs([10, 10, 7, 7])
    layout = bpb.pack(np.concatenate(docs), K.BOS, SEQ)
    assert layout.n_rows == 2 and layout.mask.sum(axis=1).tolist() == [9 + 6, 9 + 6]    # no slot is padding
    assert np.array_equal(layout.rows[0], np.concatenate([docs[0], docs[3]]))
    assert np.array_equal(layout.rows[1], np.concatenate([docs[1], docs[2]]))


def test_best_fit_decreasing_places_every_item_once_within_capacity_in_no_more_bins_than_in_order():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = [int(n) for n in rng.integers(1, 18, size=int(rng.integers(1, 80)))]
        bins = bpb.best_fit_decreasing(lengths, 17)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= 17 for b in bins)
        in_order, fill = 1, 0
        for n in lengths:
            in_order, fill = (in_order, fill + n) if fill + n <= 17 else (in_order + 1, n)
        assert len(bins) <= in_order
        assert bins == bpb.best_fit_decreasing(lengths, 17)         # deterministic
    with pytest.raises(ValueError):
        bpb.best_fit_decreasing([5, 18], 17)


def test_a_long_document_is_split_into_pieces_that_overlap_by_exactly_one_token():
    doc = unique_docs([50])[0]
    parts = bpb.pieces(doc, SEQ + 1)
    assert parts[0][0] == K.BOS and all(len(p) <= SEQ + 1 for p in parts)
    for a, b in zip(parts, parts[1:]):
        assert a[-1] == b[0]
    assert np.array_equal(np.concatenate([parts[0]] + [p[1:] for p in parts[1:]]), doc)


def test_batches_have_the_fixed_shape_and_the_padding_rows_weigh_nothing():
    docs = unique_docs([10] * 7)
    layout = bpb.pack(np.concatenate(docs), K.BOS, SEQ)
    tb = np.ones(100, np.int64)
    tb[K.BOS] = 0
    batches = list(layout.batches(4, tb))
    assert all(x.shape == (4, SEQ) and y.shape == (4, SEQ) and w.shape == (4, SEQ) for x, y, w in batches)
    total = sum(int(w.sum()) for _, _, w in batches)
    assert total == sum(len(d) - 1 for d in docs) == layout.totals(tb)[1]
    x, y, w = batches[-1]
    pad_rows = 4 * len(batches) - layout.n_rows
    assert pad_rows > 0 and (x[-pad_rows:] == K.BOS).all() and (w[-pad_rows:] == 0).all()


def docs_per_row(layout: bpb.EvalLayout, docs: list[np.ndarray]) -> list[set[int]]:
    """The documents each row holds tokens of (unique_docs: every non-BOS token names its document)."""
    owner = {int(t): d for d, doc in enumerate(docs) for t in doc[1:]}
    return [{owner[int(t)] for t in row if t != K.BOS} for row in layout.rows]


def test_no_eval_batch_holds_two_pieces_of_one_document_so_no_row_has_its_future_in_its_batch():
    rng = np.random.default_rng(1)
    tb = np.ones(5_000, np.int64)
    tb[K.BOS] = 0
    moved = 0
    for _ in range(40):
        docs = unique_docs([int(n) for n in rng.integers(2, 70, size=int(rng.integers(3, 40)))])
        plain = bpb.pack(np.concatenate(docs), K.BOS, SEQ)
        layout = bpb.pack(np.concatenate(docs), K.BOS, SEQ, batch_size=4)
        rows = docs_per_row(layout, docs)
        for i in range(0, layout.n_rows, 4):
            batch = rows[i:i + 4]
            assert sum(len(r) for r in batch) == len(set().union(*batch)), "a document in two rows of one batch"
        assert sorted(scored_targets(layout)) == sorted(scored_targets(plain))       # the same targets, once each
        assert layout.totals(tb) == plain.totals(tb)
        assert sorted(map(tuple, layout.rows[layout.mask.any(axis=1)])) == sorted(map(tuple, plain.rows))
        moved += not np.array_equal(layout.rows, plain.rows)
    assert moved > 10                                      # the random layouts did need rows moved


def test_rows_keep_their_order_when_every_document_fits_a_row():
    docs = unique_docs([5, 12, 9, 17, 2, 8, 16, 3, 11])
    plain = bpb.pack(np.concatenate(docs), K.BOS, SEQ)
    assert np.array_equal(bpb.pack(np.concatenate(docs), K.BOS, SEQ, batch_size=2).rows, plain.rows)


def test_a_document_with_more_pieces_than_batches_gets_batches_of_its_own():
    docs = unique_docs([200, 5])                            # 13 pieces (rows of 17 tokens), and a short document
    layout = bpb.pack(np.concatenate(docs), K.BOS, SEQ, batch_size=4)
    rows = docs_per_row(layout, docs)
    assert layout.n_batches(4) == 13 and all(sum(0 in r for r in rows[i:i + 4]) == 1 for i in range(0, 52, 4))
    tb = np.ones(300, np.int64)
    tb[K.BOS] = 0
    assert layout.totals(tb) == bpb.pack(np.concatenate(docs), K.BOS, SEQ).totals(tb) == (203, 203)


def test_special_tokens_have_zero_bytes_and_are_left_out_of_both_sums():
    docs = [np.array([K.BOS, 1, 2, 3]), np.array([K.BOS, 4])]
    layout = bpb.pack(np.concatenate(docs), K.BOS, SEQ)
    tb = np.array([0, 1, 2, 3, 4])
    assert layout.totals(tb) == (4, 10)
    tb_special = np.array([0, 1, 0, 3, 4])         # token 2 is special: no bytes, not a scored token
    assert layout.totals(tb_special) == (3, 8)


def test_a_stream_that_does_not_start_with_bos_or_is_empty_is_a_data_error():
    with pytest.raises(DataError):
        bpb.pack(np.array([3, 4, K.BOS, 5]), K.BOS, SEQ)
    with pytest.raises(DataError):
        bpb.pack(np.zeros(0, np.int64), K.BOS, SEQ)


def test_token_nll_matches_cross_entropy_in_float64():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11) * 5
    targets = torch.randint(0, 11, (3, 7))
    want = F.cross_entropy(logits.double().reshape(-1, 11), targets.reshape(-1), reduction="none").reshape(3, 7)
    got = bpb.token_nll(logits, targets)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("offset", [1e4, 3e6, 1e7, -1e7])
def test_a_model_cannot_gain_from_rounding_by_scaling_its_logits(offset):
    # float32 resolution near 1e7 is 1.0: a plain float32 logsumexp would round the nll by up to 0.5 nats
    torch.manual_seed(1)
    logits = (torch.randn(4, 64, 300) * 3 + offset).float()
    targets = torch.randint(0, 300, (4, 64))
    want = F.cross_entropy(logits.double().reshape(-1, 300), targets.reshape(-1), reduction="none").reshape(4, 64)
    got = bpb.token_nll(logits, targets)
    assert (got - want).abs().max().item() < 1e-5
    assert abs(got.sum().item() - want.sum().item()) < 1e-4


def test_a_uniform_model_scores_exactly_log2_vocab_bits_per_token_over_mean_bytes_per_token(tmp_path):
    vocab = 50
    rng = np.random.default_rng(1)
    docs = K.random_docs(rng, 60, vocab, hi=150)
    token_bytes = [0] + [int(b) for b in rng.integers(1, 6, size=vocab - 1)]
    data = K.make_data(tmp_path / "data", docs, vocab, token_bytes)
    model = K.export(K.Uniform(vocab), tmp_path / "u.pt2", 8, 64)
    res = evaluate(model, data, "tiny", probe_seed=0)
    assert res["status"] == "ok", res["error"]
    n_tok = sum(len(d) - 1 for d in docs)
    n_bytes = sum(token_bytes[t] for d in docs for t in d[1:])
    assert (res["eval_tokens"], res["eval_bytes"]) == (n_tok, n_bytes)
    assert res["val_bpb"] == pytest.approx(math.log2(vocab) * n_tok / n_bytes, rel=1e-7)    # float32's log(vocab)
    assert res["val_loss"] == pytest.approx(math.log(vocab), rel=1e-7)


def test_an_oracle_for_a_known_distribution_lands_on_its_entropy_floor(tmp_path):
    vocab = 6
    p = np.array([0.0, 0.5, 0.25, 0.125, 0.0625, 0.0625])     # BOS (0) never a scored target
    rng = np.random.default_rng(2)
    docs = [[K.BOS] + rng.choice(vocab, size=int(rng.integers(5, 90)), p=p).tolist() for _ in range(80)]
    token_bytes = [0, 1, 2, 1, 3, 2]
    bits = sum(-math.log2(p[t]) for d in docs for t in d[1:])
    n_bytes = sum(token_bytes[t] for d in docs for t in d[1:])
    floor = bits / n_bytes
    data = K.make_data(tmp_path / "data", docs, vocab, token_bytes, bpb_floor=floor)
    logp = torch.tensor(np.log(np.where(p > 0, p, 1e-30)))
    logp[0] = -1e4                                                # finite, and the mass stays on real tokens
    model = K.export(K.Unigram(logp), tmp_path / "oracle.pt2", 8, 64)
    res = evaluate(model, data, "tiny", probe_seed=0)
    assert res["status"] == "ok", res["error"]
    assert res["data"]["bpb_floor"] == floor
    assert res["val_bpb"] == pytest.approx(floor, rel=1e-7)                 # float32 log-sum-exp (bpb.token_nll)
    # the entropy of p per byte is close to this finite sample's floor
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum() / (p * np.array(token_bytes)).sum() * 1.0
    assert res["val_bpb"] == pytest.approx(entropy, rel=0.1)


def test_bits_per_byte_converts_nats():
    assert bpb.bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
