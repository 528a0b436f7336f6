"""result.json is hostile input: only a small, strict, finite, schema-valid regular file yields a score."""
from __future__ import annotations

import copy
import json
import os

import pytest

from runner.result import MAX_RESULT_BYTES, ResultError, parse_result, parse_summary, read_result

GOOD = {
    "schema": "autoresearch.result/1", "status": "ok", "val_bpb": 2.0722, "val_loss": 3.7104,
    "eval_tokens": 26118, "eval_bytes": 67466, "preset": "tiny", "seq_len": 64, "eval_batch_size": 8,
    "vocab_size": 512, "device": "cpu", "error": None,
    "probes": {
        "seed": 4529179631042123616, "tolerance": 0.0001, "causality_passes": 2, "miss_bound": 1.3e-07,
        "scope": "every_batch", "every_batch_below": None,
        "causality": {"passed": True, "max_abs_diff": 0.0, "evidence": "", "positions": [1, 5], "rows": [],
                      "batches": 3},
        "batch_independence": {"passed": True, "max_abs_diff": 0.0, "evidence": "", "positions": [], "rows": [7, 3],
                               "batches": 3},
        "determinism": {"passed": True, "max_abs_diff": 0.0, "evidence": "", "positions": [], "rows": [],
                        "batches": 1},
    },
    "data": {"manifest_sha256": "58" * 32, "bpb_floor": 0.47, "source": "synthetic",
             "baselines": {"unigram_token_bpb": 2.78}},
    "model": {"sha256": "83" * 32, "bytes": 974206, "num_params": 196676},
    "timings": {"data_s": 0.01, "load_s": 4.3, "probe_s": 4.3, "eval_s": 18.1, "total_s": 26.8},
    "versions": {"torch": "2.13.0+cpu", "python": "3.11.2", "evaluator": "1+5a46993c6f85"},
}


def _bytes(doc) -> bytes:
    return json.dumps(doc).encode()


def test_a_valid_result_is_accepted_with_its_score():
    assert parse_result(_bytes(GOOD))["val_bpb"] == pytest.approx(2.0722)


@pytest.mark.parametrize("text, needle", [
    ('{"val_bpb": NaN}', "non-finite"),
    ('{"val_bpb": Infinity}', "non-finite"),
    ('{"val_bpb": -Infinity}', "non-finite"),
])
def test_non_finite_constants_are_refused(text, needle):
    with pytest.raises(ResultError, match=needle):
        parse_result(text.encode())


def test_a_number_that_overflows_to_infinity_is_refused():
    raw = _bytes(GOOD).replace(b'"val_loss": 3.7104', b'"val_loss": 1e400')
    with pytest.raises(ResultError, match="non-finite number at result.val_loss"):
        parse_result(raw)


def test_an_oversized_result_is_refused_before_parsing():
    doc = copy.deepcopy(GOOD)
    doc["error"] = None
    raw = _bytes(doc)[:-1] + b"," + b'"pad": "' + b"x" * MAX_RESULT_BYTES + b'"}'
    with pytest.raises(ResultError, match="over the cap"):
        parse_result(raw)


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(schema="autoresearch.result/0"), "schema"),
    (lambda d: d.update(status="great"), "status"),
    (lambda d: d.update(val_bpb="0.5"), "val_bpb"),
    (lambda d: d.update(val_bpb=True), "val_bpb"),
    (lambda d: d.update(val_bpb=0.0), "val_bpb"),
    (lambda d: d.update(val_bpb=1000.0), "val_bpb"),
    (lambda d: d.update(status="violation"), "val_bpb"),                    # a score with a non-ok status
    (lambda d: d.pop("probes"), "breaks schema"),                         # the evaluator's own schema check
    (lambda d: d["probes"]["causality"].update(passed=False), "breaks schema"),
    (lambda d: d.update(extra_key=1), "breaks schema"),
])
def test_results_that_break_the_schema_are_refused(mutate, needle):
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    with pytest.raises(ResultError, match=needle):
        parse_result(_bytes(doc))


@pytest.mark.parametrize("raw, needle", [
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"schema": ', "not valid JSON"),
    (b'{"a":' * 50 + b"1" + b"}" * 50, "nests deeper"),
])
def test_malformed_documents_are_refused(raw, needle):
    with pytest.raises(ResultError, match=needle):
        parse_result(raw)


def test_reading_from_disk_never_follows_a_link(tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(_bytes(GOOD))
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "result.json")
    with pytest.raises(ResultError, match="without following a link"):
        read_result(out)
    # nor a linked output directory
    os.symlink(tmp_path / "real-out", tmp_path / "linked-out")
    (tmp_path / "real-out").mkdir()
    (tmp_path / "real-out" / "result.json").write_bytes(_bytes(GOOD))
    with pytest.raises(ResultError, match="without following a link"):
        read_result(tmp_path / "linked-out")
    assert read_result(tmp_path / "real-out")["val_bpb"] == pytest.approx(2.0722)


def test_reading_from_disk_refuses_fifos_and_huge_files(tmp_path):
    os.mkfifo(tmp_path / "result.json")
    with pytest.raises(ResultError, match="not a regular file"):
        read_result(tmp_path)                                   # and does not block on the FIFO
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "result.json", "wb") as f:
        f.truncate(MAX_RESULT_BYTES + 1)
    with pytest.raises(ResultError, match="over the cap"):
        read_result(big)
    with pytest.raises(ResultError, match="plain name"):
        read_result(tmp_path, "../result.json")


def test_the_train_summary_is_bounded_numbers_and_never_a_score():
    lines = ["step=1 loss=3.0", "---", "training_seconds: 8.7", "val_bpb: 0.0001", "score: 1", "VAL_BPB_x: 2",
             "num_steps: 10", "note: hello", "mfu_percent: n/a", "bad key: 3", "peak_memory_mb: nan",
             "depth: 2", "num_steps: 999"]
    assert parse_summary(lines) == {"training_seconds": 8.7, "num_steps": 10.0, "depth": 2.0}
    assert parse_summary(["no block here"]) == {}
    many = ["---"] + [f"k{i}: {i}" for i in range(100)]
    assert len(parse_summary(many)) == 32
    # only the LAST block counts: an early fake block is superseded
    assert parse_summary(["---", "depth: 99", "---", "depth: 2"]) == {"depth": 2.0}


def test_the_host_refuses_a_result_probed_otherwise_than_the_bar_it_handed_over_allows():
    """runner.sandbox.trial._probe_bar_error: the bar must be the one given; one batch only with a bar and a score
    not below it; a result without a scope (an invalid model) or probed on every batch is always fine."""
    from runner.sandbox.trial import _probe_bar_error

    def result(status="ok", val=2.0, scope="every_batch", below=None):
        return {"status": status, "val_bpb": val, "probes": {"scope": scope, "every_batch_below": below}}
    assert _probe_bar_error(result(), None) == ""
    assert _probe_bar_error(result(below=1.5), 1.5) == ""                                 # every batch: always fine
    assert _probe_bar_error(result(scope="one_batch", below=1.5), 1.5) == ""              # above the bar
    assert _probe_bar_error(result("invalid_model", None, None), None) == ""              # no scope: nothing scored
    assert _probe_bar_error(result("invalid_model", None, None, 1.5), 1.5) == ""
    assert "names the probe bar 1.4" in _probe_bar_error(result(below=1.4), 1.5)
    assert "names the probe bar 1.5" in _probe_bar_error(result(below=1.5), None)
    assert "probed 'one_batch' with a score below the bar" in _probe_bar_error(
        result(val=1.0, scope="one_batch", below=1.5), 1.5)
    assert _probe_bar_error(result(scope="one_batch"), None) != ""                       # one batch without a bar
