"""The report: progress.png shows every scored trial, the kept ones labelled, the running best, the bar and the data
floor, with failures in their own band under the scores and "N experiments, M kept" over candidates only;
loss_curves.png draws the candidate-reported training loss of the baseline, the best and the latest candidates;
report.md gives every trial (steps, tokens/s, threshold, reason, wall time), best vs baseline as "val_bpb down X%",
proposer, model, LLM tokens and cost, and the command that shows the best train.py."""
import json

import matplotlib.image
import pytest

from runner.ledger import Ledger, TrialRecord
from runner.report import data_floor, improvement_pct, improvement_text, markdown, write
from runner.report_figures import curve_trials, figure, loss_figure, loss_series, parse_loss, running_best
from trainer.contract import step_line
from trainer.shards import atomic_write_json, manifest_sha256

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


def series_of(fig) -> dict:
    """label -> points of every scatter series, over all the figure's axes."""
    return {c.get_label(): c.get_offsets().tolist() for ax in fig.axes for c in ax.collections}


def train_log(losses, start: float = 0.0) -> str:
    """A train.log as the runner writes it: the launcher's line, the harness's progress lines, the summary."""
    lines = ["launch: running train.py", "preset=tiny device=cpu params=0.20M depth=2 dim=64 seq_len=64"]
    for i, loss in enumerate(losses, 1):
        lines.append(step_line(i, loss, i / len(losses), 60.0 - i, {"tok_s": "3299"}))
    return "\n".join(lines + ["harness: exporting model.pt2", "---", f"num_steps: {len(losses)}", ""])


def make_run(tmp_path, records, logs=None, meta=None, floor=None):
    """A run directory: the ledger, run.json, trials/<n>/train.log (and diff.patch) and a data manifest."""
    led = Ledger(tmp_path / "runs" / "t")
    for r in records:
        led.append(r)
    data = tmp_path / "data"
    atomic_write_json(data / "manifest.json", {"schema": "autoresearch.data/1", "files": {}, "bpb_floor": floor})
    run = {"tag": "t", "branch": "autoresearch/t", "start_commit": "a" * 40, "data_dir": str(data),
           "data_manifest_sha256": manifest_sha256(data), "proposer": "mutate", "created_at": 1796308663.0}
    (led.dir / "run.json").write_text(json.dumps({**run, **(meta or {})}))
    for n, text in (logs or {}).items():
        (led.dir / "trials" / str(n)).mkdir(parents=True, exist_ok=True)
        (led.dir / "trials" / str(n) / "train.log").write_text(text)
    return led.dir


def test_the_running_best_steps_down_at_each_kept_trial():
    assert running_best(RECS) == [(0, 1.0), (1, 0.95), (5, 0.9)]
    assert improvement_pct(1.0, 0.9) == pytest.approx(10.0)
    assert improvement_pct(None, 0.9) is None


def test_the_improvement_is_said_as_val_bpb_down_or_up_never_as_a_signed_gain():
    assert improvement_text(1.0, 0.7204) == "val_bpb down 27.96%"
    assert improvement_text(1.0, 1.012) == "val_bpb up 1.20%"
    assert improvement_text(1.0, 1.0) == "no improvement" and improvement_text(None, 0.9) == "-"


def test_the_figure_holds_every_series_and_counts_candidates_only_in_its_title():
    fig = figure(RECS, "run t")
    ax = fig.axes[0]
    series = series_of(fig)
    assert series["kept"] == [[0, 1.0], [1, 0.95], [5, 0.9]]
    assert series["discarded"] == [[2, 0.97]]
    assert [x for x, _ in series["crash / timeout / oom / ..."]] == [3]
    assert [x for x, _ in series["rejected patch"]] == [4]
    line = [ln for ln in ax.lines if ln.get_label() == "best so far"][0]
    assert list(line.get_xdata()) == [0, 1, 5, 5] and list(line.get_ydata()) == [1.0, 0.95, 0.9, 0.9]
    assert ax.get_title() == "run t: 5 experiments, 2 kept"          # the baseline is neither


def test_a_failure_is_drawn_in_its_own_band_under_the_scores_never_on_the_val_bpb_axis():
    fig = figure(RECS)
    ax, band = fig.axes
    assert band.get_position().y1 < ax.get_position().y0                  # the band lies under the score axes
    assert {c.get_label() for c in ax.collections} == {"kept", "discarded"}   # no failure among the scores
    assert [t.get_text() for t in band.get_yticklabels()] == ["rejected", "failed"]
    assert [t.get_text() for t in band.texts] == ["crash"]                 # each failure named under its mark
    assert len(figure(RECS[:3]).axes) == 1                                 # no failure: no band


def test_each_kept_point_is_labelled_with_its_trial_and_description():
    texts = [t.get_text() for t in figure(RECS).axes[0].texts]
    assert texts == ["#0 baseline", "#1 MATRIX_LR 0.04 -> 0.06", "#5 WARMDOWN_FRAC 0.5 -> 0.6"]


def test_every_kept_label_stays_inside_the_figure_the_last_keep_and_the_top_one_included():
    recs = [TrialRecord(0, "baseline", "keep", "the baseline, the highest kept point", val_bpb=1.1)]
    recs += [TrialRecord(i, "candidate", "discard", "d", val_bpb=1.2) for i in range(1, 29)]
    recs += [TrialRecord(29, "candidate", "keep", "the very last trial of the run is kept", val_bpb=0.9,
                         best_bpb_before=1.1)]
    fig = figure(recs)
    fig.canvas.draw()
    inside = fig.bbox
    for t in fig.axes[0].texts:
        box = t.get_window_extent()
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, \
            (t.get_text(), box, inside)


def test_a_hostile_description_is_one_escaped_line_in_the_figure_and_never_mathtext(tmp_path):
    recs = [TrialRecord(0, "baseline", "keep", "baseline", val_bpb=1.0),
            TrialRecord(1, "candidate", "keep", "cost $5 \\frac{$ \x1b]52;c;aGk=\x07\nnext", val_bpb=0.9,
                        best_bpb_before=1.0)]
    fig = figure(recs)
    label = fig.axes[0].texts[1].get_text()
    assert label.startswith("#1 cost \\$5 \\frac{\\$ \\x1b]52;c;") and "\x1b" not in label and "\n" not in label
    fig.savefig(tmp_path / "p.png")                                        # an unbalanced "$" would raise here


def test_the_data_floor_is_a_line_near_the_scores_and_a_note_when_far_below():
    near = figure(RECS, floor=0.87).axes[0]
    assert [ln.get_ydata()[0] for ln in near.lines if ln.get_label() == "data floor 0.8700"] == [0.87]
    far = figure(RECS, floor=0.4).axes[0]
    assert not [ln for ln in far.lines if ln.get_label().startswith("data floor")]
    notes = [t.get_text() for t in far.figure.texts]
    assert notes == ["\u25bc data floor 0.4000: 0.5000 below the best score (off the axis)"]


def test_the_floor_is_read_from_the_runs_own_data_manifest_and_only_while_it_is_unchanged(tmp_path):
    run_dir = make_run(tmp_path, RECS, floor=0.6123)
    meta = json.loads((run_dir / "run.json").read_text())
    assert data_floor(meta) == pytest.approx(0.6123)
    atomic_write_json(tmp_path / "data" / "manifest.json", {"schema": "autoresearch.data/1", "files": {},
                                                            "bpb_floor": 0.1})
    assert data_floor(meta) is None                                       # the data changed since the run began
    assert data_floor({}) is None and data_floor({"data_dir": str(tmp_path / "gone")}) is None


def test_report_md_and_the_figures_are_written_from_the_ledger(tmp_path):
    run_dir = make_run(tmp_path, RECS, logs={0: train_log([4.0, 3.0, 2.5]), 5: train_log([4.0, 2.0, 1.5])})
    rep = write(run_dir, "t")
    img = matplotlib.image.imread(rep.progress)
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert matplotlib.image.imread(rep.loss_curves).shape[1] > 600 and rep.html.read_text().startswith("<!DOCTYPE")
    text = rep.markdown.read_text()
    assert "baseline val_bpb: 1.000000" in text and "best val_bpb: 0.900000" in text
    assert "- improvement: val_bpb down 10.00%" in text and "- 5 experiments, 2 kept" in text
    assert "| keep | 3 |" in text and "| crash | 1 |" in text and "| rejected | 1 |" in text
    kept = [line for line in text.splitlines() if line.startswith("| 1 | `") or line.startswith("| 5 | `")]
    assert "MATRIX_LR 0.04 -> 0.06" in kept[0] and "+0.050000" in kept[0] and "WARMDOWN_FRAC" in kept[1]
    assert text.index("MATRIX_LR") < text.index("WARMDOWN_FRAC")
    assert "train.py exited with 1" in text and "under .git" in text
    assert f"- best train.py: `git diff {'a' * 12}..autoresearch/t -- train.py`" in text


def test_every_trial_has_a_row_with_its_claims_host_seconds_threshold_reason_and_wall_time():
    rec = TrialRecord(1, "candidate", "discard", "DEPTH 4 -> 5", val_bpb=0.97, best_bpb_before=0.95,
                      threshold=0.004, num_steps=279, training_seconds=61.25, reason="0.97 vs best 0.95: no gain",
                      train_summary={"tokens_per_second": 12345.6}, started_at=100.0, finished_at=190.5)
    rec.calibration_s, rec.cpu_share = 1.2345, 0.87          # the ledger's calibration fields (read with getattr)
    rec.recheck = "the baseline ran again: calibration 1.23 s vs 0.80 s"
    text = markdown("t", [RECS[0], rec])
    assert ("| #1 | discard | 0.970000 | +0.020000 | 279 | 12,346 | 61.2 | 1.234 | 0.87 | 0.004000 | 90.5 | "
            "DEPTH 4 -> 5 | 0.97 vs best 0.95: no gain (recheck: the baseline ran again: calibration 1.23 s vs "
            "0.80 s) |") in text
    assert "| #0 (baseline) | keep | 1.000000 | - | - | - | - | - | - | - | - | baseline |" in text
    assert "steps (claimed) | tokens/s (claimed) | train s (host)" in text


def test_the_header_names_proposer_model_wall_time_and_the_llm_tokens_and_their_cost():
    from runner.policy import Policy
    policy = Policy.model_validate({"proposer": {"kind": "openai", "model": "gpt-x", "base_url": "http://h/v1",
                                                 "prices": {"input_per_million": 2.0, "output_per_million": 8.0}}})
    usage = {"calls": 2, "prompt_tokens": 500_000, "completion_tokens": 100_000, "total_tokens": 600_000,
             "seconds": 3.5, "retries": 1, "backoffs": 2, "model": "gpt-x"}
    recs = [TrialRecord(0, "baseline", "keep", "baseline", val_bpb=1.0, started_at=1000.0, finished_at=1100.0),
            TrialRecord(1, "candidate", "keep", "x", val_bpb=0.9, best_bpb_before=1.0, llm_usage=usage,
                        started_at=1100.0, finished_at=4725.0)]
    text = markdown("t", recs, policy, {"proposer": "openai", "start_commit": "f" * 40, "created_at": 990.0})
    assert "- proposer: openai, model gpt-x" in text
    assert "- wall time: 1 h 2 min (first trial's start to the last one's end" in text
    assert ("- LLM usage: 2 calls, 600,000 tokens (500,000 in / 100,000 out), $1.80, 1 retries, 2 backoffs; "
            "3.5 s in LLM calls") in text
    capped = markdown("t", recs, policy, {"max_tokens": 1_000_000, "max_cost": 5.0})
    assert "2 backoffs; caps --max-tokens 1000000 (600,000 used), --max-cost $5.00 ($1.80 spent); 3.5 s" in capped
    assert "cost unknown (no proposer.prices in the policy)" in markdown("t", recs, Policy())
    assert "- LLM usage: no LLM calls" in markdown("t", recs[:1])


def test_a_report_of_a_run_without_scores_still_renders(tmp_path):
    md = markdown("t", [TrialRecord(0, "baseline", "crash", "baseline", reason="boom")])
    assert "best val_bpb: - at commit" in md and "improvement: -" in md and "- 0 experiments, 0 kept" in md
    figure([TrialRecord(0, "baseline", "crash", "baseline")]).savefig(tmp_path / "p.png")
    loss_figure([]).savefig(tmp_path / "l.png")


def test_the_other_seeds_of_a_baseline_and_a_confirmation_are_drawn_and_listed_beside_their_run():
    runs = [{"seed": 1337, "status": "ok", "val_bpb": 0.97}, {"seed": 1338, "status": "ok", "val_bpb": 1.02},
            {"seed": 1339, "status": "crash", "val_bpb": None}]
    recs = [TrialRecord(0, "baseline", "keep", "baseline", commit="a" * 40, val_bpb=0.97, seed=1337, repeats=runs),
            TrialRecord(1, "candidate", "keep", "X 1 -> 2", commit="b" * 40, val_bpb=0.95, seed=1337,
                        best_bpb_before=0.97, confirm={"seed": 11338, "status": "ok", "val_bpb": 0.955})]
    series = series_of(figure(recs))
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
    assert series_of(figure(recs))["crash / timeout / oom / ..."] == [[3, 1]]    # the red x, in the band
    assert "WARNING" not in md and "WARNING" not in markdown("t", recs, load_policy("default"))
    noisy = Policy.model_validate({"decision": {"min_delta": 0.0, "baseline_repeats": 1}})
    header = markdown("t", recs, noisy).splitlines()[:4]
    assert header[2].startswith("> **WARNING: this policy can keep a change that does nothing")
    run_dir = make_run(tmp_path, recs, meta={"policy": noisy.model_dump()})
    assert "can keep a change that does nothing" in write(run_dir, "t").markdown.read_text().splitlines()[2]


def test_the_report_shows_every_slot_and_lists_stale_trials_with_their_reason():
    recs = [TrialRecord(0, "baseline", "keep", "baseline", val_bpb=1.0, commit="a" * 40, slot="0",
                        training_seconds=30.0),
            TrialRecord(1, "candidate", "keep", "x", val_bpb=0.9, best_bpb_before=1.0, commit="b" * 40, slot="1",
                        training_seconds=31.0),
            TrialRecord(2, "candidate", "stale", "y", val_bpb=0.95, best_bpb_before=0.9, commit="c" * 40, slot="0",
                        training_seconds=29.0, reason="beat the best but its change does not apply onto the newer best")]
    md = markdown("t", recs)
    assert "| 0 | 2 | 59 |" in md and "| 1 | 1 | 31 |" in md
    assert "| 2 | stale | y | beat the best but its change does not apply onto the newer best |" in md


def test_only_the_parsed_numbers_of_a_candidates_progress_lines_make_its_loss_curve():
    log = "\n".join([step_line(1, 5.0, 0.1, 9), "step=2 loss=nan progress=0.2", "step=x loss=4.0",
                     "  step=3 loss=4.5 <script>", "loss=1.0 step=4", "noise step=5 loss=0.1",
                     "step=-1 loss=0.5", "step=6 loss=1e999", step_line(7, 3.25, 0.7, 3)])
    assert parse_loss(log) == [(1, 5.0), (3, 4.5), (7, 3.25)]
    many = parse_loss("\n".join(step_line(i, 1.0, 0.0, 0.0) for i in range(10_001)))
    assert len(many) <= 2001 and many[0] == (0, 1.0) and many[-1] == (10_000, 1.0)


def test_the_loss_figure_draws_the_baseline_the_best_and_the_latest_candidates(tmp_path):
    recs = RECS + [TrialRecord(6, "candidate", "discard", "DEPTH 5 -> 6", val_bpb=0.95, best_bpb_before=0.9),
                   TrialRecord(7, "candidate", "timeout", "slow", reason="killed at the deadline")]
    assert [(r.trial, role) for r, role in curve_trials(recs)] == [(0, "baseline"), (5, "best"), (3, "crash"),
                                                                 (6, "discard"), (7, "timeout")]
    logs = {n: train_log([5.0 - 0.1 * n, 4.0 - 0.1 * n]) for n in (0, 5, 6)}
    run_dir = make_run(tmp_path, recs, logs=logs)
    curves = loss_series(run_dir, recs)                                    # 3 and 7 left no log
    assert [(c.trial, c.label) for c in curves] == [(0, "#0 baseline"), (5, "#5 best WARMDOWN_FRAC 0.5 -> 0.6"),
                                                    (6, "#6 discard DEPTH 5 -> 6")]
    ax = loss_figure(curves, "run t").axes[0]
    assert [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines][1] == \
        ("#5 best WARMDOWN_FRAC 0.5 -> 0.6", [1, 2], [4.5, 3.5])
    assert "candidate-reported" in ax.get_ylabel() and "untrusted" in ax.get_title()


def test_a_hostile_description_or_reason_cannot_break_the_full_trial_table():
    import re

    from runner.report import COLUMNS
    rec = TrialRecord(1, "candidate", "crash", "a | b\n| 9 | keep | 0.1 |", reason="x | y\r\n[l](http://e) <b>")
    rows = [line for line in markdown("t", [RECS[0], rec]).splitlines() if line.startswith("| #1 |")]
    assert len(rows) == 1 and len(re.split(r"(?<!\\)\|", rows[0])) == len(COLUMNS) + 2
    assert "a \\| b \\| 9 \\| keep" in rows[0] and "\\[l\\](http://e) \\<b>" in rows[0]


def test_with_slots_the_tables_and_the_figure_go_in_trial_order_though_the_ledger_is_in_decision_order():
    recs = [RECS[0], TrialRecord(2, "candidate", "keep", "b", val_bpb=0.9, best_bpb_before=1.0, threshold=0.01),
            TrialRecord(1, "candidate", "discard", "a", val_bpb=0.95, best_bpb_before=0.9, threshold=0.01)]
    rows = [line.split(" | ")[0] for line in markdown("t", recs).splitlines() if line.startswith("| #")]
    assert rows == ["| #0 (baseline)", "| #1", "| #2"]
    bar = [ln for ln in figure(recs).axes[0].lines if ln.get_label().startswith("a keep needs")][0]
    assert list(bar.get_xdata()) == [1, 2] and list(bar.get_ydata()) == pytest.approx([0.89, 0.99])


def test_a_policy_change_accepted_on_resume_is_listed_with_the_trial_count_it_came_after():
    meta = {"policy_changes": [{"at": 1.0, "trials": 3, "changes": {"limits.memory": ["4g", "8g"]}, "sha256": "x"}]}
    text = markdown("t", RECS, None, meta)
    assert "## Policy changes on --resume" in text
    assert "| 3 | limits.memory 4g -> 8g |" in text
    assert "Policy changes" not in markdown("t", RECS, None, {})
