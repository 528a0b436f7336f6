"""The live view and the plain lines: progress picked out of untrusted lines; every trial in flight with its
description, its phase and the time in it; the proposer's retries as they happen; the best, the bar and the counts
(on --resume before any trial ends); under a real pseudo-terminal, a clock that moves between events."""
import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from rich.console import Console

from runner.ledger import RunSummary, TrialRecord
from runner.live import LiveView, PlainView, parse_progress
from runner.loop import Loop
from runner.policy import Policy, ProposerSettings
from runner.proposers.openai_llm import OpenAIProposer
from runner.runs import RunConfig
from tests.llm_server import MODEL, search_replace
from tests.loop_fakes import FakeExecutor, Scripted, make_exp, set_score


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


# --------------------------------------------------------------------------- issue 18.3: what the views show
ROOT = Path(__file__).resolve().parents[1]
ON_DEMAND = Policy(proposer={"ahead": 0})
REPEATS = Policy(proposer={"ahead": 0}, decision={"baseline_repeats": 2, "noise_sigmas": 2.0})


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def render(view) -> str:
    panel = io.StringIO()
    Console(file=panel, width=200, color_system=None).print(view._render())
    return panel.getvalue()


def run_loop(tmp_path, proposer, events, *, policy=ON_DEMAND, max_trials=1, resume=False, executor=None, exp=None):
    repo, data = exp or make_exp(tmp_path)
    cfg = RunConfig(repo=repo, tag="t", data_dir=None if resume else data, policy=None if resume else policy,
                    max_trials=max_trials, image="img:test", resume=resume)
    return Loop(cfg, executor=executor or FakeExecutor(), proposer=proposer, events=events).run()


def test_the_live_view_shows_each_trials_time_in_its_phase_its_description_and_the_bar():
    clock = Clock()
    view = LiveView(Console(file=io.StringIO(), width=200, color_system=None), clock=clock)
    view.run_started({"tag": "t", "summary": summary(keep=1), "threshold": 0.002})
    view.trial_started(4, "candidate")
    view.trial_described(4, "raise the LR\x1b[2J [bold]x[/bold]")
    clock.t += 30
    view.trial_phase(4, "training", "seed 1337")
    clock.t += 12
    shown = render(view)
    assert "4 (candidate)  42 s  raise the LR\\x1b[2J [bold]x[/bold]" in shown       # escaped, not markup
    assert "training seed 1337 for 12 s" in shown
    assert "0.950000  (baseline 1.000000)  a keep needs val_bpb < 0.948000 (best - 0.002000)" in shown
    view.trial_phase(4, "training", "seed 1337")                      # the same phase again: its clock goes on
    clock.t += 60
    assert "training seed 1337 for 1 min 12 s" in render(view) and "4 (candidate)  1 min 42 s" in render(view)
    view.trial_phase(4, "confirming", "seed 5341")                    # another run of the same trial
    view.trial_phase(4, "training", "seed 5341")
    clock.t += 3
    assert "confirming seed 5341: training seed 5341 for 3 s" in render(view)


def test_the_live_view_takes_the_threshold_from_finished_trials():
    view = LiveView(Console(file=io.StringIO(), width=200, color_system=None))
    view.run_started({"tag": "t"})
    assert "a keep needs" not in render(view)                       # no best yet: no bar
    view.trial_finished(TrialRecord(0, "baseline", "keep", "baseline", val_bpb=1.0, threshold=0.01),
                        RunSummary(tag="t", run_dir=None, best_bpb=1.0, baseline_bpb=1.0, counts={"keep": 1}))
    assert "a keep needs val_bpb < 0.990000 (best - 0.010000)" in render(view)


def test_the_plain_view_prints_each_phase_change_and_one_training_line_a_minute_per_trial():
    out, clock = io.StringIO(), Clock()
    view = PlainView(out, clock=clock)
    view.trial_started(4, "candidate")
    view.trial_described(4, "raise the LR")
    view.trial_phase(4, "checking", "raise the LR")
    view.trial_started(5, "candidate")
    view.trial_phase(4, "training", "seed 1337")
    view.trial_phase(5, "training", "seed 1337")
    for second in range(0, 150, 5):                     # two slots training side by side for 150 s
        clock.t = 100.0 + second
        view.trial_line(4, f"step={second} loss=3.{second:03d} progress=0.1 remaining_s={300 - second}")
        view.trial_line(5, f"step={2 * second} loss=2.5 progress=0.1 remaining_s={300 - second}")
        view.trial_line(4, "some other line")
    view.trial_phase(4, "training", "seed 1337")        # repeated: no new line
    view.trial_phase(4, "evaluating", "seed 1337")
    lines = out.getvalue().splitlines()
    assert lines == ["trial 4 (candidate) started", "trial 4: raise the LR", "trial 4 checking",
                     "trial 5 (candidate) started", "trial 4 training seed 1337", "trial 5 training seed 1337",
                     "trial 4 step 0 loss 3.000 remaining 300 s", "trial 5 step 0 loss 2.5 remaining 300 s",
                     "trial 4 step 60 loss 3.060 remaining 240 s", "trial 5 step 120 loss 2.5 remaining 240 s",
                     "trial 4 step 120 loss 3.120 remaining 180 s", "trial 5 step 240 loss 2.5 remaining 180 s",
                     "trial 4 evaluating seed 1337"]


def test_a_plain_run_prints_the_baseline_repeats_phases_training_and_the_bar(tmp_path):
    out = io.StringIO()
    run_loop(tmp_path, Scripted(set_score(0.5, "SCORE -> 0.5")), PlainView(out), policy=REPEATS,
             executor=FakeExecutor(seed_offsets={1338: 0.01}))
    text = out.getvalue()
    for want in ["trial 0 (baseline) started", "trial 0 starting seed 1337 (baseline repeat 1 of 2)",
                 "trial 0 training seed 1338 (baseline repeat 2 of 2)",
                 "trial 0 evaluating seed 1337 (baseline repeat 1 of 2)",
                 "trial 1 (candidate) started", "trial 1: SCORE -> 0.5", "trial 1 starting seed 1337",
                 "trial 1 training seed 1337", "trial 1 step 1 loss 3.0 remaining 1.0 s",
                 "trial 1 evaluating seed 1337",
                 "a keep needs val_bpb < 0.985858 (best - 0.014142)"]:
        assert want in text, (want, text)
    assert "repeat" not in text.split("trial 1 (candidate) started")[1]     # a candidate's run is not a repeat
    last = text.splitlines()[-1]
    assert last.startswith("trial   1 keep") and "best 0.500000  (baseline 1.000000)  a keep needs val_bpb < " \
        "0.485858 (best - 0.014142)  keep 2  discard 0" in last


def resumed(tmp_path, events):
    """A run of one kept candidate (best 0.9), resumed for one more trial with `events` listening."""
    exp = make_exp(tmp_path)
    run_loop(tmp_path, Scripted(set_score(0.9)), None, exp=exp, max_trials=1)
    run_loop(tmp_path, Scripted(set_score(0.95)), events, exp=exp, max_trials=2, resume=True)


def test_a_resumed_run_shows_the_best_the_bar_and_the_counts_before_any_trial_ends(tmp_path):
    panels = []

    class Snapshot(LiveView):
        def trial_started(self, trial_id, kind):
            super().trial_started(trial_id, kind)
            panels.append(render(self))

    resumed(tmp_path / "live", Snapshot(Console(file=io.StringIO(), width=200, color_system=None)))
    assert "2 (candidate)" in panels[0]
    assert "0.900000  (baseline 1.000000)  a keep needs val_bpb < 0.900000 (best - 0.000000)" in panels[0]
    assert "keep 2  discard 0  failed 0  rejected 0" in panels[0]

    out = io.StringIO()
    resumed(tmp_path / "plain", PlainView(out))
    before = out.getvalue().split("trial 2 (candidate) started")[0]
    assert "resumed after 2 trials" in before
    assert "best 0.900000  (baseline 1.000000)  a keep needs val_bpb < 0.900000 (best - 0.000000)  keep 2  " \
        "discard 0" in before


GOOD = search_replace("train.py", "SCORE = 1.000  # the fake trial's bpb\n", "SCORE = 0.900  # the fake trial's bpb\n",
                      "lower the score")
MISSES = search_replace("train.py", "SCORE = 7  # nowhere\n", "SCORE = 0\n", "typo")


def openai_proposer(server, sleep):
    cfg = ProposerSettings(kind="openai", base_url=server.base_url, model=MODEL, max_retries=2,
                           api_key_env="AUTORESEARCH_TEST_NO_SUCH_KEY", timeout_seconds=5, ahead=0)
    return OpenAIProposer(cfg, backoff_base=0.01, sleep=sleep)


def run_openai(tmp_path, server, sleep, events):
    """A run of one candidate proposed by the real openai client against the loopback server."""
    proposer = openai_proposer(server, sleep)
    return run_loop(tmp_path, proposer, events, policy=Policy(proposer=proposer.cfg.model_dump()))


def test_the_proposers_retries_and_backoffs_are_printed_as_they_happen(tmp_path, llm_server):
    llm_server.push({"status": 500}, {"status": 429, "retry_after": "0.05"}, {"reply": MISSES}, {"reply": GOOD})
    out = io.StringIO()
    rec_summary = run_openai(tmp_path, llm_server, time.sleep, PlainView(out))
    assert rec_summary.counts == {"keep": 2}
    lines = out.getvalue().splitlines()
    notes = [ln for ln in lines if ln.startswith("trial 1 proposing: ")]
    assert notes == ["trial 1 proposing: retry 1/5 after HTTP 500, waiting 0.01 s",
                     "trial 1 proposing: retry 2/5 after HTTP 429, waiting 0.05 s",
                     "trial 1 proposing: reply unusable (block 1: SEARCH text not found in train.py), re-asking (2/3)"
                     ], lines
    assert lines.index(notes[-1]) < lines.index("trial 1 (candidate) started")


def test_the_live_view_shows_a_backoff_while_it_waits(tmp_path, llm_server):
    llm_server.push({"status": 503}, {"reply": GOOD})
    clock = Clock()
    view = LiveView(Console(file=io.StringIO(), width=200, color_system=None), clock=clock)
    during = []

    def sleep(seconds):                    # what a person sees while the proposer waits
        clock.t += 2
        during.append(render(view))

    run_openai(tmp_path, llm_server, sleep, view)
    assert len(during) == 1 and "proposer  trial 1: retry 1/5 after HTTP 503, waiting 0.01 s  (2 s ago)" in during[0]
    assert "retry" not in render(view)     # gone once the proposal is made


def test_the_live_view_escapes_what_the_proposer_reports():
    view = LiveView(Console(file=io.StringIO(), width=200, color_system=None))
    view.proposer_note(3, "reply unusable (no block in '\x1b]52;c;eA==\x07 [red]x[/red]'), re-asking (2/3)")
    shown = render(view)
    assert "\x1b" not in shown and "\\x1b]52;c;eA==\\x07 [red]x[/red]" in shown
    view.proposer_note(2, "")              # another trial's proposal ended: this one's note stays
    assert "trial 3: reply unusable" in render(view)
    view.proposer_note(3, "")
    assert "reply unusable" not in render(view)


PTY_SCRIPT = r'''
import sys
from pathlib import Path
from runner.live import LiveView
from runner.loop import Loop
from runner.policy import Policy
from runner.runs import RunConfig
from tests.loop_fakes import FakeExecutor, Scripted, make_exp, set_score

repo, data = make_exp(Path(sys.argv[1]))
cfg = RunConfig(repo=repo, tag="t", data_dir=data, policy=Policy(proposer={"ahead": 0}), max_trials=1,
                image="img:test")
view = LiveView()
with view:
    Loop(cfg, executor=FakeExecutor(seconds=3.0), proposer=Scripted(set_score(0.9, "SCORE -> 0.9")),
         events=view).run()
'''
PTY_COLUMNS = 200


def test_the_live_view_on_a_real_terminal_ticks_the_phase_clock_and_shows_the_bar(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, PTY_COLUMNS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(PTY_COLUMNS), "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-c", PTY_SCRIPT, str(tmp_path)], stdin=slave, stdout=slave,
                            stderr=slave, env=env, cwd=ROOT, close_fds=True)
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = out.decode("utf-8", "strict")
    assert code == 0, text
    # the baseline and the candidate each wait 3 s in `starting` (the fake trial sleeps): the panel is redrawn
    # meanwhile, the phase's own clock moving although no event came
    shown = {int(s) for s in re.findall(r"starting seed 1337 for (\d) s", text)}
    assert {0, 1, 2} <= shown, text
    assert re.search(r"1 \(candidate\)  [1-3] s  SCORE -> 0\.9", text), text
    assert "a keep needs val_bpb < 1.000000 (best - 0.000000)" in text, text


def test_a_finished_trial_shows_its_claimed_steps_and_tokens_and_the_compute_it_got():
    rec = TrialRecord(7, "candidate", "discard", "wider MLP", val_bpb=1.01, best_bpb_before=1.0, num_steps=279,
                      train_tokens=2_400_000, claimed_training_seconds=240.0)
    rec.calibration_s, rec.cpu_share = 0.4213, 0.97
    out = io.StringIO()
    PlainView(out).trial_finished(rec, summary(keep=1, discard=1))
    assert "trial   7 discard       1.010000 (+0.010000)  [279 steps, 10,000 tok/s claimed; calibration 0.421 s, " \
           "cpu 97%]  wider MLP" in out.getvalue()
    view = PlainView(out := io.StringIO())
    view.trial_line(7, "step=9 loss=2.0 progress=0.5 remaining_s=3 tok_s=\x1b[2J900")
    assert out.getvalue() == "trial 7 step 9 loss 2.0 remaining 3 s \\x1b[2J900 tok/s claimed\n"
