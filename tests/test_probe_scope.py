"""The probes' scope: with a bar (probes.json beside the model), every batch is probed whenever the score is below it
and one batch otherwise; without one, every batch. A score that could be kept is never probed on one batch only, a
one-batch result is one the host must not keep, and a malformed bar is the host's failure, never the model's."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch

import evalkit as K
import trainer.evaluate as E
from trainer import probes
from trainer.contract import PROBE_BAR_FILE, probe_bar_json
from trainer.evaluate import SetupError, check_result, evaluate, read_val

VOCAB = 40
B, T = 8, 64                    # the tiny preset's eval shape
PROBES = ("determinism", "batch_independence", "causality")


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """(data, n_batches): about 300 eval rows of random documents, the last batch padded with all-BOS rows."""
    for n_docs in range(560, 600):
        d = K.make_data(tmp_path_factory.mktemp(f"rows{n_docs}"),
                        K.random_docs(np.random.default_rng(n_docs), n_docs, VOCAB, hi=60), VOCAB)
        layout = read_val(d, T, B)[4]
        if layout.n_rows % B:
            return d, layout.n_batches(B)
    raise AssertionError("no data with a padded last batch")


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    torch.manual_seed(0)
    return K.export(K.Bigram(torch.randn(VOCAB, VOCAB)), tmp_path_factory.mktemp("honest") / "m.pt2", B, T)


@pytest.fixture(scope="module")
def padded_peeker(tmp_path_factory):
    """Peeks at every row of the padded last batch only: honest in every other batch."""
    return K.export(K.PeekInPaddedBatch(VOCAB), tmp_path_factory.mktemp("peeker") / "m.pt2", B, T)


def picked(seed: int, n_batches: int) -> int:
    """The batch a one-batch evaluation with this probe seed probes."""
    return probes.Prober(None, np.zeros((1, T), np.int64), np.ones(1, bool), B, n_batches, VOCAB, K.BOS, seed, 1).picked


def seed_picking(n_batches: int, want) -> int:
    return next(s for s in range(1000) if want(picked(s, n_batches)))


def batches(res: dict) -> list[int]:
    return [res["probes"][n]["batches"] for n in PROBES]


# ---- a score that could be kept is probed on every batch

def test_a_peek_below_the_bar_is_probed_on_every_batch_including_the_padded_last_one(padded, padded_peeker):
    data, n = padded
    seed = seed_picking(n, lambda b: b != n - 1)                 # a seed whose one batch is not the peeked one
    above = evaluate(padded_peeker, data, "tiny", probe_seed=seed, every_batch_below=1e-3)
    assert above["status"] == "ok" and above["probes"]["scope"] == "one_batch"
    res = evaluate(padded_peeker, data, "tiny", probe_seed=seed, every_batch_below=above["val_bpb"] * 1.001)
    assert res["status"] == "violation" and res["val_bpb"] is None and check_result(res) == []
    assert res["probes"]["scope"] == "every_batch" and res["probes"]["every_batch_below"] == above["val_bpb"] * 1.001
    assert f"eval batch {n}/{n}" in res["error"] and "future" in res["error"]
    assert res["probes"]["causality"]["passed"] is False
    # every batch scored again, the last one too, which is then run once more to tell a peek from noise
    assert res["probes"]["determinism"]["batches"] == n + 1
    assert res["probes"]["causality"]["batches"] == n - 1        # every batch before it was clean


def test_an_honest_model_below_the_bar_is_probed_on_every_batch_with_the_score_of_the_run_without_a_bar(padded,
                                                                                                       honest):
    data, n = padded
    plain = evaluate(honest, data, "tiny", probe_seed=4)
    res = evaluate(honest, data, "tiny", probe_seed=4, every_batch_below=plain["val_bpb"] * 1.5)
    assert res["status"] == "ok" and check_result(res) == []
    assert res["val_bpb"] == plain["val_bpb"] and res["val_loss"] == plain["val_loss"]
    assert res["probes"]["scope"] == plain["probes"]["scope"] == "every_batch"
    assert res["probes"]["miss_bound"] == plain["probes"]["miss_bound"] <= probes.MISS_TARGET
    assert batches(res) == [n, n, n] and batches(plain) == [1, n, n]
    assert all(res["probes"][p]["max_abs_diff"] == 0.0 for p in PROBES)
    # the sweep makes the same random choices as the probes interleaved with scoring
    for p in ("causality", "batch_independence"):
        assert (res["probes"][p]["positions"], res["probes"][p]["rows"]) == \
            (plain["probes"][p]["positions"], plain["probes"][p]["rows"])
    assert plain["probes"]["every_batch_below"] is None


# ---- a score that cannot be kept is probed on one batch, and says so

def test_an_honest_model_at_or_above_the_bar_is_probed_on_one_batch_with_the_same_score(padded, honest):
    data = padded[0]
    plain = evaluate(honest, data, "tiny", probe_seed=4)
    for bar in (plain["val_bpb"], plain["val_bpb"] * 0.5):      # equal to the score is not below it
        res = evaluate(honest, data, "tiny", probe_seed=4, every_batch_below=bar)
        assert res["status"] == "ok" and check_result(res) == [] and res["val_bpb"] == plain["val_bpb"]
        assert res["probes"]["scope"] == "one_batch" and res["probes"]["every_batch_below"] == bar
        assert res["probes"]["miss_bound"] is None and batches(res) == [1, 1, 1]
        assert res["timings"]["probe_s"] < plain["timings"]["probe_s"]
        # one causality pass, not K: one cut per row of the batch (K = plain's passes cut each row K times)
        assert res["probes"]["causality_passes"] == 1 < plain["probes"]["causality_passes"]
        assert len(res["probes"]["causality"]["positions"]) <= B


def test_a_peek_in_a_batch_the_one_batch_probe_did_not_draw_passes_so_the_host_must_not_keep_it(padded,
                                                                                                 padded_peeker):
    data, n = padded
    missed = evaluate(padded_peeker, data, "tiny", probe_seed=seed_picking(n, lambda b: b != n - 1),
                      every_batch_below=1e-3)
    assert missed["status"] == "ok" and missed["probes"]["scope"] == "one_batch" and check_result(missed) == []
    assert missed["val_bpb"] >= missed["probes"]["every_batch_below"]       # it can never beat the bar it got
    caught = evaluate(padded_peeker, data, "tiny", probe_seed=seed_picking(n, lambda b: b == n - 1),
                      every_batch_below=1e-3)
    assert caught["status"] == "violation" and f"eval batch {n}/{n}" in caught["error"]
    assert caught["probes"]["scope"] == "one_batch" and check_result(caught) == []


def test_the_one_batch_is_drawn_uniformly_over_every_batch_the_padded_last_one_included():
    n = 13
    counts = np.bincount([picked(s, n) for s in range(2600)], minlength=n)
    assert counts.min() > 0 and counts[n - 1] > 0
    assert ((counts - 200) ** 2 / 200).sum() < 40                   # chi-square, 12 degrees of freedom: p < 1e-4


def test_a_model_that_peeks_everywhere_is_a_violation_even_when_one_batch_is_probed(padded, tmp_path):
    data = padded[0]
    res = evaluate(K.export(K.PeekNext(VOCAB), tmp_path / "m.pt2", B, T), data, "tiny", probe_seed=1,
                   every_batch_below=1e-6)
    assert res["status"] == "violation" and res["probes"]["scope"] == "one_batch" and check_result(res) == []
    assert res["probes"]["causality"]["passed"] is False and res["probes"]["causality"]["batches"] == 0
    assert res["probes"]["determinism"]["batches"] == 2     # the batch run again, then once more: not noise
    assert res["probes"]["causality_passes"] == 1           # the one pass there is catches it


# ---- the sweep's determinism: the batch run again must give the scored nll

class Jitter:
    """A loaded program whose every call adds noise of `scale` to the logits (a non-deterministic kernel); with
    nan_on_second, the second call on the same input gives NaN logits instead."""

    def __init__(self, program, scale: float = 0.0, nan_on_second: bool = False):
        self.program, self.scale, self.nan_on_second = program, scale, nan_on_second
        self.num_params, self.seen, self.g = program.num_params, set(), torch.Generator().manual_seed(0)

    def __call__(self, x):
        out = self.program(x)
        key = x.numpy().tobytes()
        if self.nan_on_second and key in self.seen:
            return out / 0.0 * 0.0
        self.seen.add(key)
        return out + self.scale * torch.randn(out.shape, generator=self.g)


@pytest.fixture
def jitter(monkeypatch):
    def install(**kw):
        real = E.load_program
        monkeypatch.setattr(E, "load_program", lambda *a, **k: Jitter(real(*a, **k), **kw))
    return install


def test_a_model_that_differs_when_a_batch_is_run_again_fails_determinism_in_the_sweep(padded, honest, jitter):
    data = padded[0]
    jitter(scale=1e-2)
    res = evaluate(honest, data, "tiny", probe_seed=0, every_batch_below=100.0)
    assert res["status"] == "violation" and res["probes"]["scope"] == "every_batch" and check_result(res) == []
    assert res["probes"]["determinism"]["passed"] is False and res["probes"]["determinism"]["batches"] == 1
    assert "determinism probe failed" in res["error"] and "eval batch 1/" in res["error"] and "second run" in res["error"]


def test_non_finite_logits_when_a_batch_is_run_again_fail_determinism(padded, honest, jitter):
    jitter(nan_on_second=True)
    res = evaluate(honest, padded[0], "tiny", probe_seed=0, every_batch_below=100.0)
    assert res["status"] == "violation" and "non-finite logits on a second run" in res["error"]
    assert res["probes"]["determinism"]["max_abs_diff"] is None and check_result(res) == []


def test_a_difference_within_the_tolerance_is_not_a_failure_and_the_score_is_the_scoring_passes(padded, honest,
                                                                                                jitter):
    jitter(scale=1e-7)                                  # what a non-deterministic GPU reduction does
    res = evaluate(honest, padded[0], "tiny", probe_seed=0, every_batch_below=100.0)
    assert res["status"] == "ok" and res["probes"]["scope"] == "every_batch", res["error"]
    assert 0 < res["probes"]["determinism"]["max_abs_diff"] <= probes.TOLERANCE


# ---- the bar file: read once the model is there; malformed is the host's failure

def run_main(model, data, out, capsys) -> tuple[int, str]:
    threads = torch.get_num_threads()
    try:
        code = E.main(["--model", str(model), "--data", str(data), "--preset", "tiny", "--out", str(out),
                       "--probe-seed", "2"])
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err


def test_the_cli_reads_the_bar_beside_the_model_and_records_it(padded, honest, tmp_path, capsys):
    data = padded[0]
    model = tmp_path / "in" / "model.pt2"
    model.parent.mkdir()
    model.write_bytes(honest.read_bytes())
    (model.parent / PROBE_BAR_FILE).write_bytes(probe_bar_json(1e-3))
    code, _ = run_main(model, data, tmp_path / "result.json", capsys)
    res = json.loads((tmp_path / "result.json").read_text())
    assert code == 0 and res["status"] == "ok" and check_result(res) == []
    assert res["probes"]["every_batch_below"] == 1e-3 and res["probes"]["scope"] == "one_batch"


@pytest.mark.parametrize("content, needle", [
    (b"not json", "not JSON"),
    (b"[1.5]", "exactly the key"),
    (b'{"every_batch_below": 1.5, "x": 1}', "exactly the key"),
    (b'{"below": 1.5}', "exactly the key"),
    (b'{"every_batch_below": NaN}', "finite number > 0"),
    (b'{"every_batch_below": Infinity}', "finite number > 0"),
    (b'{"every_batch_below": 0}', "finite number > 0"),
    (b'{"every_batch_below": -2.0}', "finite number > 0"),
    (b'{"every_batch_below": true}', "finite number > 0"),
    (b'{"every_batch_below": "1.5"}', "finite number > 0"),
    (b'{"every_batch_below": 1' + b"0" * 400 + b"}", "finite number > 0"),
    (b'{"every_batch_below": 1.5}' + b" " * 4096, "over 4096 bytes"),
    ("link", "without following a link"),
    ("dir", "not a regular file"),
], ids=["not-json", "list", "extra-key", "wrong-key", "nan", "inf", "zero", "negative", "bool", "string", "huge-int",
        "too-big", "link", "dir"])
def test_a_malformed_bar_file_is_exit_3_with_one_line_and_no_result(padded, honest, tmp_path, capsys, content,
                                                                  needle):
    model = tmp_path / "in" / "model.pt2"
    model.parent.mkdir()
    model.write_bytes(honest.read_bytes())
    bar = model.parent / PROBE_BAR_FILE
    if content == "link":
        (tmp_path / "real.json").write_bytes(probe_bar_json(1.5))
        bar.symlink_to(tmp_path / "real.json")
    elif content == "dir":
        bar.mkdir()
    else:
        bar.write_bytes(content)
    out = tmp_path / "out" / "result.json"
    code, err = run_main(model, padded[0], out, capsys)
    assert code == E.EXIT_CANNOT_RUN and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate: ") and PROBE_BAR_FILE in lines[0], err
    assert needle in lines[0] and "written by the host" in lines[0]


def test_a_waiting_evaluator_reads_the_bar_the_host_wrote_before_handing_the_model_over(padded, honest, tmp_path):
    slot = tmp_path / "in" / "model.pt2"
    slot.parent.mkdir()

    def hand_over():                                    # the host: the bar first, then the model, each renamed in
        time.sleep(0.5)
        (tmp_path / "bar").write_bytes(probe_bar_json(123.0))
        os.replace(tmp_path / "bar", slot.parent / PROBE_BAR_FILE)
        (tmp_path / "part").write_bytes(honest.read_bytes())
        os.replace(tmp_path / "part", slot)
    threading.Thread(target=hand_over).start()
    res = evaluate(slot, padded[0], "tiny", probe_seed=5, wait_s=60, bar_file=True)
    assert res["status"] == "ok" and res["probes"]["every_batch_below"] == 123.0
    assert res["probes"]["scope"] == "every_batch" and check_result(res) == []


def test_a_direct_caller_gets_a_setup_error_for_a_bar_that_is_not_a_finite_positive_number(padded, honest):
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1.0"):
        with pytest.raises(SetupError, match="every_batch_below must be a finite number > 0"):
            evaluate(honest, padded[0], "tiny", every_batch_below=bad)
    with pytest.raises(SetupError, match="not both"):
        evaluate(honest, padded[0], "tiny", every_batch_below=1.0, bar_file=True)
