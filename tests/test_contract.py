"""trainer.contract: the host and the image read the same names, the progress line has one format and one parser,
and the host checks a result.json without importing torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
