"""The report: progress.png shows every scored trial, the kept ones and the running best, marks failures;
report.md gives best vs baseline, the improvement, the trials by status and the kept changes in order."""
import json

import matplotlib.image
import pytest

from runner.ledger import Ledger, TrialRecord
from runner.report import figure, improvement_pct, markdown, running_best, write

RECS = [
    TrialRecord(0, "baseline", "keep", "baseline", commit="a" * 40, val_bpb=1.0),
    TrialRecord(1, "candidate", "keep", "MATRIX_LR 0.04 -> 0.06", commit="b" * 40, val_bpb=0.95,
                best_bpb_before=1.0),
    TrialRecord(2, "candidate", "discard", "DEPTH 4 -> 5", commit="c" * 40, val_bpb=0.97, best_bpb_before=0.95),
    TrialRecord(3, "candidate", "crash", "huge model", commit="d" * 40, reason="train.py exited with 1"),
    TrialRecord(4, "candidate", "rejected", "touch .git", reason="path '.git/config' is under .git"),
    TrialRecord(5, "candidate", "keep", "WARMDOWN_FRAC 0.5 -> 0.6", commit="e" * 40, val_bpb=0.9,
                best_bpb_before=0.95),
]


def test_the_running_best_steps_down_at_each_kept_trial():
    assert running_best(RECS) == [(0, 1.0), (1, 0.95), (5, 0.9)]
    assert improvement_pct(1.0, 0.9) == pytest.approx(10.0)
    assert improvement_pct(None, 0.9) is None


def test_the_figure_holds_every_series():
    fig = figure(RECS)
    ax = fig.axes[0]
    series = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert series["kept"] == [[0, 1.0], [1, 0.95], [5, 0.9]]
    assert series["discarded"] == [[2, 0.97]]
    assert [x for x, _ in series["crash / timeout / oom / ..."]] == [3]
    assert [x for x, _ in series["rejected patch"]] == [4]
    line = [ln for ln in ax.lines if ln.get_label() == "best so far"][0]
    assert list(line.get_xdata()) == [0, 1, 5, 5] and list(line.get_ydata()) == [1.0, 0.95, 0.9, 0.9]


def test_report_md_and_progress_png_are_written_from_the_ledger(tmp_path):
    led = Ledger(tmp_path / "runs" / "t")
    for r in RECS:
        led.append(r)
    png, md = write(led.dir, "t")
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 600
    text = md.read_text()
    assert "baseline val_bpb: 1.000000" in text and "best val_bpb: 0.900000" in text
    assert "improvement: 10.00%" in text
    assert "| keep | 3 |" in text and "| crash | 1 |" in text and "| rejected | 1 |" in text
    kept = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 5 |")]
    assert "MATRIX_LR 0.04 -> 0.06" in kept[0] and "+0.050000" in kept[0] and "WARMDOWN_FRAC" in kept[1]
    assert text.index("MATRIX_LR") < text.index("WARMDOWN_FRAC")
    assert "train.py exited with 1" in text and "under .git" in text


def test_a_report_of_a_run_without_scores_still_renders():
    md = markdown("t", [TrialRecord(0, "baseline", "crash", "baseline", reason="boom")])
    assert "best val_bpb: -" in md and "improvement: -" in md
    figure([TrialRecord(0, "baseline", "crash", "baseline")])


def test_the_other_seeds_of_a_baseline_and_a_confirmation_are_drawn_and_listed_beside_their_run():
    runs = [{"seed": 1337, "status": "ok", "val_bpb": 0.97}, {"seed": 1338, "status": "ok", "val_bpb": 1.02},
            {"seed": 1339, "status": "crash", "val_bpb": None}]
    recs = [TrialRecord(0, "baseline", "keep", "baseline", commit="a" * 40, val_bpb=0.97, seed=1337, repeats=runs),
            TrialRecord(1, "candidate", "keep", "X 1 -> 2", commit="b" * 40, val_bpb=0.95, seed=1337,
                        best_bpb_before=0.97, confirm={"seed": 11338, "status": "ok", "val_bpb": 0.955})]
    series = {c.get_label(): c.get_offsets().tolist() for c in figure(recs).axes[0].collections}
    assert series["kept"] == [[0, 0.97], [1, 0.95]]
    assert series["other runs of the commit (seeds)"] == [[0, 1.02], [1, 0.955]]
    text = markdown("t", recs)
    assert "baseline val_bpb: 0.970000 (seed 1337; other seeds: 1.020000)" in text
    assert "best val_bpb: 0.950000 (seed 1337; other seeds: 0.955000) at commit" in text
    assert "best val_bpb: 0.970000 at commit" in markdown("t", recs[:1])     # the same runs are not said twice


def test_the_figure_draws_the_bar_each_candidate_had_to_pass():
    recs = [TrialRecord(0, "baseline", "keep", "baseline", val_bpb=1.0),
            TrialRecord(1, "candidate", "discard", "a", val_bpb=0.99, best_bpb_before=1.0, threshold=0.02),
            TrialRecord(2, "candidate", "keep", "b", val_bpb=0.95, best_bpb_before=1.0, threshold=0.02),
            TrialRecord(3, "candidate", "discard", "c", val_bpb=0.94, best_bpb_before=0.95, threshold=0.02)]
    ax = figure(recs).axes[0]
    bar = [ln for ln in ax.lines if ln.get_label().startswith("a keep needs below this")][0]
    assert list(bar.get_xdata()) == [1, 2, 3] and list(bar.get_ydata()) == pytest.approx([0.98, 0.98, 0.93])


def test_an_over_budget_trial_is_a_failure_in_the_report_and_a_noisy_policy_is_named_in_its_header(tmp_path):
    from runner.policy import Policy, load_policy
    recs = RECS[:3] + [TrialRecord(3, "candidate", "over_budget", "train longer", commit="f" * 40,
                                   reason="the train phase took 31.0 s on the host's clock, over the budget")]
    md = markdown("t", recs)
    assert "| over_budget | 1 |" in md and "took 31.0 s on the host's clock" in md
    assert [x for x, _ in figure(recs).axes[0].collections[-1].get_offsets().tolist()] == [3]   # the red x
    assert "WARNING" not in md and "WARNING" not in markdown("t", recs, load_policy("default"))
    noisy = Policy.model_validate({"decision": {"min_delta": 0.0, "baseline_repeats": 1}})
    header = markdown("t", recs, noisy).splitlines()[:4]
    assert header[2].startswith("> **WARNING: this policy can keep a change that does nothing")
    led = Ledger(tmp_path / "runs" / "t")
    for r in recs:
        led.append(r)
    (led.dir / "run.json").write_text(json.dumps({"policy": noisy.model_dump()}))
    _, path = write(led.dir, "t")
    assert "can keep a change that does nothing" in path.read_text().splitlines()[2]


def test_the_report_shows_every_slot_and_lists_stale_trials_with_their_reason():
    from runner.ledger import TrialRecord
    from runner.report import markdown
    recs = [TrialRecord(0, "baseline", "keep", "baseline", val_bpb=1.0, commit="a" * 40, slot="0",
                        training_seconds=30.0),
            TrialRecord(1, "candidate", "keep", "x", val_bpb=0.9, best_bpb_before=1.0, commit="b" * 40, slot="1",
                        training_seconds=31.0),
            TrialRecord(2, "candidate", "stale", "y", val_bpb=0.95, best_bpb_before=0.9, commit="c" * 40, slot="0",
                        training_seconds=29.0, reason="beat the best but its change does not apply onto the newer best")]
    md = markdown("t", recs)
    assert "| 0 | 2 | 59 |" in md and "| 1 | 1 | 31 |" in md
    assert "| 2 | stale | y | beat the best but its change does not apply onto the newer best |" in md
