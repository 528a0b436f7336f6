"""trainer.contract: the host and the image read the same names, the progress line has one format and one parser,
and the host checks a result.json without importing torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer import contract

REPO = Path(__file__).resolve().parent.parent


def test_the_progress_line_the_harness_prints_is_the_line_the_host_parses():
    line = contract.step_line(12, 3.21012, 0.1234, 201.24, {"tok_s": "900"})
    assert line == "step=12 loss=3.2101 progress=0.123 remaining_s=201.2 tok_s=900"
    assert contract.is_step_line(line)
    assert contract.parse_step_line(line) == {"step": "12", "loss": "3.2101", "progress": "0.123",
                                              "remaining_s": "201.2", "tok_s": "900"}
    assert contract.parse_step_line("val_bpb=0.1 step=3") == {}
    assert len(contract.parse_step_line("step=" + "9" * 10_000)["step"]) == contract.MAX_STEP_FIELD


def test_last_line_is_the_last_non_blank_line_cut():
    assert contract.last_line("a\n  b  \n\n") == "b"
    assert contract.last_line("") == contract.last_line(None) == "(no output)"
    assert len(contract.last_line("x" * 1000)) == 300


def test_the_modules_on_both_sides_use_the_contracts_values():
    from runner import result
    from runner.sandbox import classify, containers, spec
    from trainer import direct, evaluate
    from trainer.harness import export, launch
    assert classify.EXPORT_FAILED == export.EXPORT_FAILED == direct.EXPORT_FAILED == contract.EXPORT_FAILED == 86
    assert classify.NO_CANDIDATE == launch.NO_CANDIDATE == contract.NO_CANDIDATE == 3
    assert containers.LAUNCHED_LINE == launch.RUNNING_LINE and containers.EXPORTING_LINE == export.EXPORTING_LINE
    assert (spec.TRAIN_DIR, spec.MODEL_DIR, spec.DATA, spec.OUT) == ("/work", "/in", "/data", "/out")
    assert spec.MODEL_IN == "/in/model.pt2" and str(launch.WORK) == "/work"
    assert result.SCHEMA == evaluate.SCHEMA and result.STATUSES == evaluate.STATUSES
    assert evaluate.check_result is contract.check_result
    assert evaluate.EXIT_CANNOT_RUN == contract.EVAL_CANNOT_RUN


def test_checking_a_result_on_the_host_imports_no_torch():
    code = "import sys, runner.result, trainer.contract; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_evaluator_version_covers_every_file_that_can_change_a_score():
    from trainer import evaluate
    here = REPO / "trainer"
    assert all((here / name).is_file() for name in evaluate.SCORING_FILES)
    assert {"contract.py", "process.py", "safe_pt2.py", "graph_ops.py", "presets.yaml"} <= set(evaluate.SCORING_FILES)
    loader_parts = {p.name for p in here.glob("safe_pt2*.py")}
    assert loader_parts <= set(evaluate.SCORING_FILES)


def test_the_calibration_is_read_only_before_the_launchers_hand_over_line():
    real = contract.calibration_line(0.41234, "matmul512f32x96", 2, "cpu")
    assert real == "launch: calibration seconds=0.4123 kernel=matmul512f32x96 threads=2 device=cpu"
    fake = contract.calibration_line(0.001, "matmul512f32x96", 2, "cpu")
    got = contract.parse_calibration(["torch warning", real, contract.LAUNCHED_LINE, fake])
    assert got == {"seconds": "0.4123", "kernel": "matmul512f32x96", "threads": "2", "device": "cpu"}
    # the candidate printed its own hand-over line and a calibration: everything after the first one is ignored
    assert contract.parse_calibration([real, contract.LAUNCHED_LINE, fake, contract.LAUNCHED_LINE]) == got
    assert contract.parse_calibration([contract.LAUNCHED_LINE, fake]) is None      # none before the hand-over
    assert contract.parse_calibration([real]) is None                              # no hand-over line at all
    assert contract.parse_calibration([real] + ["x"] * contract.MAX_PRELAUNCH_LINES + [contract.LAUNCHED_LINE]) is None


def test_a_calibration_line_that_is_not_a_finite_positive_number_is_none():
    for bad in ("seconds=nan", "seconds=-1", "seconds=0", "seconds=1e9", "seconds=fast", "kernel=x"):
        assert contract.parse_calibration([contract.CALIBRATION_PREFIX + bad, contract.LAUNCHED_LINE]) is None


# ---- result.json's probe scope (docs/result-schema.md): the host keeps only scores probed on every batch

def probed(scope: str = "every_batch", bar: float | None = None, val_bpb: float = 2.07, n: int = 3) -> dict:
    """A valid ok result whose probes checked `n` batches each with `scope` (one_batch: 1 each, no miss bound)."""
    one = scope == "one_batch"
    runs = {name: {"passed": True, "max_abs_diff": 0.0, "evidence": "", "positions": [], "rows": [],
                   "batches": 1 if one else n} for name in contract.PROBE_NAMES}
    if bar is None:
        runs["determinism"]["batches"] = 1
    return {
        "schema": contract.SCHEMA, "status": "ok", "val_bpb": val_bpb, "val_loss": 3.7, "eval_tokens": 26118,
        "eval_bytes": 67466, "preset": "tiny", "seq_len": 64, "eval_batch_size": 8, "vocab_size": 512,
        "device": "cpu", "error": None,
        "probes": {"seed": 1, "tolerance": 1e-4, "causality_passes": 2, "miss_bound": None if one else 1.3e-7,
                   "scope": scope, "every_batch_below": bar, **runs},
        "data": {"manifest_sha256": "58" * 32, "bpb_floor": None, "source": "synthetic", "baselines": {}},
        "model": {"sha256": "83" * 32, "bytes": 974206, "num_params": 196676},
        "timings": {"data_s": 0.01, "load_s": 4.3, "probe_s": 4.3, "eval_s": 18.1, "total_s": 26.8},
        "versions": {"torch": "2.13.0+cpu", "python": "3.11.2", "evaluator": "1+5a46993c6f85"},
    }


def test_a_one_batch_result_whose_score_beats_its_bar_is_refused_by_the_schema_and_by_the_host():
    import json

    from runner.result import ResultError, parse_result
    assert contract.check_result(probed("one_batch", bar=2.07, val_bpb=2.07)) == []      # not below: fine
    forged = probed("one_batch", bar=2.5, val_bpb=2.07)
    problems = contract.check_result(forged)
    assert problems and "must be probed on every batch" in problems[0]
    with pytest.raises(ResultError, match="scope is one_batch but val_bpb 2.07 is below every_batch_below 2.5"):
        parse_result(json.dumps(forged).encode())


def test_the_probe_scope_fields_follow_the_evaluators_rules():
    good = [probed(), probed(bar=9.0), probed(bar=1.0), probed("one_batch", bar=1.0)]
    assert [contract.check_result(r) for r in good] == [[]] * 4

    def broken(change, **kw) -> list[str]:
        r = probed(**kw)
        change(r["probes"])
        return contract.check_result(r)
    for change, kw, needle in [
        (lambda p: p.pop("scope"), {}, "probes must hold exactly"),
        (lambda p: p.update(scope="some_batches"), {}, "probes.scope must be one of"),
        (lambda p: p.update(scope=None), {}, "probes.scope must be one of"),
        (lambda p: p.update(every_batch_below=-1.0), {}, "every_batch_below must be a positive number"),
        (lambda p: p.update(every_batch_below="2"), {}, "every_batch_below must be a positive number"),
        (lambda p: p.update(every_batch_below=None), {"scope": "one_batch", "bar": 1.0}, "no every_batch_below"),
        (lambda p: p.update(miss_bound=1e-7), {"scope": "one_batch", "bar": 1.0}, "miss_bound must be null"),
        (lambda p: p.update(miss_bound=None), {}, "probes.miss_bound must be num"),
        (lambda p: p["causality"].update(batches=2), {"scope": "one_batch", "bar": 1.0}, "scope is one_batch"),
        (lambda p: p["causality"].update(batches=2), {}, "scope is every_batch"),
        (lambda p: p["determinism"].update(batches=1), {"bar": 9.0}, "scope is every_batch"),
    ]:
        problems = broken(change, **kw)
        assert problems and needle in problems[0], (needle, problems)


def test_a_violation_or_invalid_model_may_leave_the_scope_open_but_one_batch_still_needs_its_bar():
    for status in ("violation", "invalid_model"):
        r = probed()
        r.update(status=status, val_bpb=None, val_loss=None, error="x")
        r["probes"].update(scope=None, miss_bound=None)
        r["probes"]["causality"].update(passed=False)
        assert contract.check_result(r) == []
        r["probes"].update(scope="one_batch")
        assert any("no every_batch_below" in p for p in contract.check_result(r))


def test_the_bar_file_the_host_writes_is_the_bar_the_evaluator_reads(tmp_path):
    import os
    path = tmp_path / contract.PROBE_BAR_FILE
    assert contract.read_probe_bar(path) is None                                # no file: probe every batch
    path.write_bytes(contract.probe_bar_json(1.25))
    assert contract.read_probe_bar(path) == 1.25 and contract.parse_probe_bar(b'{"every_batch_below": 3}') == 3.0
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="finite number > 0"):
            contract.probe_bar_json(bad)
    os.replace(path, tmp_path / "real.json")
    path.symlink_to(tmp_path / "real.json")
    with pytest.raises(ValueError, match="without following a link"):
        contract.read_probe_bar(path)
