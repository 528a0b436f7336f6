"""The live view: picks step/loss/remaining time out of progress lines, shows trial, phase, best and counts."""
import io
from pathlib import Path

from rich.console import Console

from runner.ledger import TrialRecord
from runner.live import LiveView, PlainView, parse_progress
from runner.ledger import RunSummary


def test_progress_lines_are_parsed_and_other_lines_ignored():
    p = parse_progress("step=12 loss=3.2101 progress=0.123 remaining_s=201.2 tok_s=900")
    assert p["step"] == "12" and p["loss"] == "3.2101" and p["remaining_s"] == "201.2"
    assert parse_progress("val_bpb=0.1 step=3") == {}
    assert parse_progress("---") == {}
    assert len(parse_progress("step=" + "9" * 10_000)["step"]) <= 32


def summary(**counts):
    return RunSummary(tag="t", run_dir=None, best_bpb=0.95, baseline_bpb=1.0, counts=counts)


def test_the_live_view_shows_the_current_state():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    view = LiveView(console)
    view.run_started({"tag": "t", "branch": "autoresearch/t", "proposer": "mutate", "image": "img"})
    view.trial_finished(TrialRecord(1, "candidate", "keep", "LR 0.04 -> 0.06", val_bpb=0.95, best_bpb_before=1.0),
                        summary(keep=2, discard=1, crash=1))
    view.trial_started(2, "candidate")
    view.phase("training", "seed 1337")
    view.line("step=7 loss=2.5000 progress=0.5 remaining_s=4.0")
    panel = io.StringIO()
    Console(file=panel, width=120, color_system=None).print(view._render())
    shown = panel.getvalue()
    assert "trial" in shown and "2 (candidate)" in shown and "training seed 1337" in shown
    assert "step 7  loss 2.5000  remaining 4.0 s" in shown
    assert "0.950000  (baseline 1.000000)" in shown and "keep 2  discard 1  failed 1  rejected" in shown
    assert "trial   1 keep          0.950000 (-0.050000)  LR 0.04 -> 0.06" in out.getvalue()


def test_the_plain_view_prints_one_line_per_trial():
    out = io.StringIO()
    view = PlainView(out)
    view.trial_finished(TrialRecord(3, "candidate", "crash", "big model", reason="train.py exited with 1"),
                        summary(keep=1, crash=1))
    line = out.getvalue().strip()
    assert line.startswith("trial   3 crash") and "train.py exited with 1" in line and "best 0.950000" in line


def test_the_counts_name_engine_failures_and_overruns_instead_of_calling_them_crashes():
    from runner.live import _counts
    from runner.ledger import RunSummary
    summary = RunSummary(tag="t", run_dir=Path("."), counts={"keep": 1, "crash": 1, "infra": 3, "over_budget": 1})
    assert _counts(summary) == "keep 1  discard 0  failed 5 (crash 1, infra 3, over_budget 1)  rejected 0"
    assert _counts(RunSummary(tag="t", run_dir=Path("."), counts={"crash": 2})) == \
        "keep 0  discard 0  failed 2  rejected 0"


def test_the_live_view_shows_every_trial_in_flight_with_its_own_phase_and_progress():
    view = LiveView(Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None))
    view.run_started({"tag": "t", "branch": "autoresearch/t", "proposer": "openai", "image": "img"})
    view.trial_started(4, "candidate")
    view.trial_started(5, "candidate")
    view.trial_phase(4, "training", "seed 1337")
    view.trial_line(4, "step=9 loss=2.1000 progress=0.5 remaining_s=30.0")
    view.trial_phase(5, "evaluating", "seed 1337")
    view.phase("proposing", "openai")                       # the run's own phase, beside both
    panel = io.StringIO()
    Console(file=panel, width=120, color_system=None).print(view._render())
    shown = panel.getvalue()
    assert "4 (candidate)" in shown and "5 (candidate)" in shown and "step 9  loss 2.1000  remaining 30.0 s" in shown
    assert "training seed 1337" in shown and "evaluating seed 1337" in shown and "proposing openai" in shown
    view.trial_finished(TrialRecord(4, "candidate", "discard", "x", val_bpb=1.0, best_bpb_before=0.9),
                        summary(keep=1, discard=1))
    panel = io.StringIO()
    Console(file=panel, width=120, color_system=None).print(view._render())
    assert "4 (candidate)" not in panel.getvalue() and "5 (candidate)" in panel.getvalue()
