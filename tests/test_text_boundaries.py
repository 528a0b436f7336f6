"""Every output a person reads shows a candidate's or an LLM's text with its control and format characters escaped:
the live view (rendered to a string console), --plain, status, reproduce and doctor, the one-line error, report.md,
results.tsv, train.log, reply.txt and diff.patch; the ledger is JSON and holds no raw byte of them either. The
real-engine version (a candidate's own output through the container's log stream) is
tests/adversarial/test_terminal.py."""
import io
import re

import pytest
from rich.console import Console

from runner.cli import main
from runner.ledger import Ledger, TrialRecord, results_tsv
from runner.live import LiveView, PlainView
from runner.ledger import summarize
from runner.loop import Loop
from runner.runs import RunConfig
from runner.policy import Policy
from runner.proposers.base import Proposal
from runner.report import markdown
from runner.executor import TrialOutcome
from runner.workspace import init_repo
from trainer.shards import atomic_write_json

from tests.loop_fakes import TRAIN, FakeExecutor, Scripted, set_score
from tests.test_text import raw_controls

# What a hostile candidate or reply carries: a clipboard write, a screen clear, a hyperlink, a C1 CSI, a bidi
# override and isolate, backspaces, a bell, a carriage return with a fake verdict, rich markup and an emoji code,
# Markdown/HTML that would link, embed or break a table.
PAYLOAD = ("\x1b]52;c;ZXZpbA==\x07 \x1b[2J \x1b]8;;https://evil.example/\x1b\\here\x1b]8;;\x1b\\ \x9b31m "
           "\u202egnp.exe\u202c \u2066iso\u2069 ab\x08\x08 [bold red]keep[/] [link=https://evil.example]x[/link] "
           ":warning: ![t](https://evil.example/t.png) <img src=x> &#x202e; a|b \rkeep 0.1234")
# Each raw piece must be gone; its escaped form must be there.
RAW = ["\x1b", "\x07", "\x08", "\x9b", "\u202e", "\u202c", "\u2066", "\u2069", "\r"]
SHOWN = ["\\x1b]52;c;ZXZpbA==\\x07", "\\x1b[2J", "\\x9b31m", "\\u202egnp.exe", "\\rkeep 0.1234"]


def hostile_record(trial=3, status="crash", **kw) -> TrialRecord:
    return TrialRecord(trial=trial, kind="candidate", status=status, description=kw.pop("description", PAYLOAD),
                       reason=kw.pop("reason", f"train.py exited with code 1: {PAYLOAD}"),
                       commit=kw.pop("commit", "c" * 40), log_tail=f"Traceback\n{PAYLOAD}", **kw)


def assert_shown_not_run(text: str, keep: str = "\n"):
    assert not [c for c in raw_controls(text) if c not in keep], [c for c in raw_controls(text) if c not in keep]
    assert not [r for r in RAW if r in text]


# --------------------------------------------------------------------------- terminal: the live view and --plain

def rich_console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=1000, color_system="truecolor" if terminal else None,
                   legacy_windows=False), buf


def drive(view):
    summary = summarize("t", None, [hostile_record()])
    view.run_started({"tag": "t", "branch": "autoresearch/t", "proposer": "openai", "image": "img"})
    view.trial_started(3, "candidate")
    view.phase("checking", PAYLOAD)
    view.line("step=7\x1b[2J loss=[bold]9[/bold]\x07 progress=0.5 remaining_s=\u202e5\x9b")
    return summary


def test_the_live_view_shows_escapes_and_renders_no_markup_of_a_candidate():
    console, buf = rich_console(terminal=True)
    view = LiveView(console)
    summary = drive(view)
    console.print(view._render())                   # the live panel, as Live draws it
    view.trial_finished(hostile_record(), summary)  # the line printed above the panel
    out = buf.getvalue()
    # rich writes its own colour codes on a terminal; none of the candidate's sequences may be among them
    for raw in ["\x1b]52", "\x1b[2J", "\x07", "\x08", "\x9b", "\u202e", "\u2066", "\r", "\x1b]8;"]:
        assert raw not in out, repr(raw)
    assert "\x1b[1;31m" not in out and "\u26a0" not in out            # no [bold red], no :warning: emoji
    assert "[bold red]keep[/]" in out and "[link=https://evil.example]x[/link]" in out and ":warning:" in out
    assert "step 7\\x1b[2J  loss [bold]9[/bold]\\x07" in out and "remaining \\u202e5\\x9b s" in out
    assert "\\x1b]52;c;ZXZpbA==\\x07" in out and "\\rkeep 0.1234" in out


def test_the_live_view_without_a_terminal_writes_no_control_character_at_all():
    console, buf = rich_console(terminal=False)
    view = LiveView(console)
    summary = drive(view)
    console.print(view._render())
    view.trial_finished(hostile_record(), summary)
    assert_shown_not_run(buf.getvalue())
    assert all(s in buf.getvalue() for s in SHOWN)


def test_plain_output_shows_a_hostile_crash_line_escaped():
    stream = io.StringIO()
    view = PlainView(stream)
    summary = drive(view)
    view.trial_finished(hostile_record(), summary)
    out = stream.getvalue()
    assert_shown_not_run(out)
    last = out.splitlines()[-1]
    assert last.startswith("trial   3 crash") and "\\u202egnp.exe" in last and "\\x1b]52;c;" in last


# --------------------------------------------------------------------------- files: report.md, results.tsv, ledger

def test_report_md_escapes_controls_and_cannot_link_embed_or_break_its_tables():
    recs = [TrialRecord(trial=0, kind="baseline", status="keep", description="baseline", commit="a" * 40,
                        val_bpb=1.0, reason="the start commit"),
            hostile_record(trial=1, status="keep", val_bpb=0.9, best_bpb_before=1.0),
            hostile_record(trial=2, status="crash"), hostile_record(trial=3, status="rejected")]
    text = markdown("t", recs)
    assert_shown_not_run(text)
    # a cell is one line (whitespace, the CR included, collapsed to a space), escaped for Markdown on top
    assert "\\\\x1b\\]52;c;ZXZpbA==\\\\x07 \\\\x1b\\[2J" in text and "\\\\x9b31m \\\\u202egnp.exe" in text
    assert "!\\[t\\](https://evil.example/t.png)" in text and "\\<img src=x>" in text and "\\&#x202e;" in text
    assert "\\[link=https://evil.example\\]x\\[/link\\]" in text
    for line in text.splitlines():                           # every table row has exactly its columns
        if line.startswith("| 1 |"):
            assert len(re.split(r"(?<!\\)\|", line)) == 7, line   # trial, commit, val_bpb, gain, description
        if line.startswith(("| 2 |", "| 3 |")):
            assert len(re.split(r"(?<!\\)\|", line)) == 6, line   # trial, status, description, reason


def test_results_tsv_is_one_escaped_line_of_five_columns_per_trial(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(hostile_record(trial=1, description=PAYLOAD + "\ttab\nnewline\u2028sep\x85nel"))
    text = ledger.tsv.read_text()
    assert text == results_tsv(ledger.records())
    assert_shown_not_run(text, keep="\n\t")
    rows = text.splitlines()
    assert len(rows) == 2 and all(len(r.split("\t")) == 5 for r in rows)
    assert "\\x1b]52;c;ZXZpbA==\\x07" in rows[1] and "\\u202egnp.exe" in rows[1]


def test_the_ledger_is_json_that_holds_the_exact_text_and_no_raw_byte_of_it(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(hostile_record(trial=1))
    raw = ledger.path.read_bytes()
    assert raw.isascii() and not [b for b in raw if b < 0x20 and b != 0x0a] and b"\x7f" not in raw
    assert ledger.records()[0].description == PAYLOAD    # display escapes; the stored text is exact


# --------------------------------------------------------------------------- the loop's files and the CLI

def hostile_proposal(ctx):
    # raw control characters in train.py itself are refused by the patch policy (tests/test_patch_policy.py);
    # the payload reaches the outputs through the description, the reply and the crashing candidate's log
    return Proposal({"train.py": ctx.files["train.py"] + f"HOSTILE = {PAYLOAD!r}\n" "CRASH = 1\n"},
                    "[bold red]keep[/] :warning: <img src=x> \u202eevil\x1b[2J",
                    raw_reply=f"DESCRIPTION: {PAYLOAD}\r\n<<<<<<< SEARCH train.py\r\n...")


def hostile_refusal(ctx):
    return Proposal({}, "(no usable reply)", raw_reply=PAYLOAD, error=f"reply unusable: {PAYLOAD}")


class HostileExecutor(FakeExecutor):
    """The fake executor of tests/loop_fakes, but a crashing candidate prints PAYLOAD and fails with it."""

    def run(self, spec, on_line=None, on_phase=None):
        if "HOSTILE" not in (spec.candidate_dir / "train.py").read_text():
            return super().run(spec, on_line, on_phase)
        for line in (f"step=1\x1b[2J loss={PAYLOAD}", PAYLOAD, "tab\there"):
            on_line(line)
        return TrialOutcome("crash", log_tail=f"Traceback\n{PAYLOAD}", image_digest="sha256:fake",
                            error=f"train.py exited with code 1: {PAYLOAD}")


@pytest.fixture
def hostile_run(tmp_path):
    repo = tmp_path / "exp"
    init_repo(repo, {"train.py": TRAIN, "program.md": "p\n", ".gitignore": "runs/\n"})
    data = tmp_path / "data"
    atomic_write_json(data / "manifest.json", {"schema": "autoresearch.data/1", "files": {}})
    stream = io.StringIO()
    cfg = RunConfig(repo=repo, tag="t", data_dir=data, policy=Policy(), max_trials=3, image="img:test")
    Loop(cfg, executor=HostileExecutor(), proposer=Scripted(set_score(0.9), hostile_proposal, hostile_refusal),
        events=PlainView(stream)).run()
    return repo, repo / "runs" / "t", stream.getvalue()


def test_the_loop_writes_train_log_reply_and_diff_escaped_and_plain_output_clean(hostile_run):
    repo, run_dir, plain = hostile_run
    assert [r.status for r in Ledger(run_dir).records()] == ["keep", "keep", "crash", "rejected"]
    log = (run_dir / "trials" / "2" / "train.log").read_text()
    assert_shown_not_run(log, keep="\n\t")
    assert log.splitlines()[1].startswith("\\x1b]52;c;ZXZpbA==\\x07 \\x1b[2J") and "tab\there" in log
    for name in ("2/reply.txt", "2/diff.patch", "3/reply.txt"):
        text = (run_dir / "trials" / name).read_text()
        assert_shown_not_run(text, keep="\n\t") and "\\x1b" in text, name
    assert (run_dir / "trials" / "2" / "reply.txt").read_text().startswith("DESCRIPTION: \\x1b]52;c;")  # CRLF: \n
    assert_shown_not_run(plain)
    assert "\\x1b]52;c;ZXZpbA==\\x07" in plain and "trial   3 rejected" in plain


def test_status_reproduce_and_report_show_a_hostile_ledger_escaped(hostile_run, capsys):
    repo, run_dir, _ = hostile_run
    Ledger(run_dir).append(hostile_record(trial=4, status="rejected", commit=None))  # a raw description as well
    assert main(["status", "--repo", str(repo), "--tag", "t"]) == 0
    assert main(["report", "--repo", str(repo), "--tag", "t"]) == 0
    assert main(["reproduce", "3", "--repo", str(repo), "--tag", "t"]) == 1      # rejected: its reason in the error
    out, err = capsys.readouterr()
    assert_shown_not_run(out) and assert_shown_not_run(err)
    assert "\\x1b]52;c;ZXZpbA==\\x07" in out and "\\u202egnp.exe" in out
    assert err.startswith("autoresearch: error: trial 3 was rejected (reply unusable: \\x1b]52;c;")
    assert len(err.strip().splitlines()) == 1 and "a|b keep 0.1234); it never ran" in err   # the CR: a space
    report = (run_dir / "report.md").read_text()
    assert_shown_not_run(report) and "\\\\x1b\\]52;c;ZXZpbA==\\\\x07" in report


def test_doctor_shows_an_endpoints_hostile_model_names_escaped(tmp_path, llm_server, monkeypatch, capsys):
    import tests.llm_server
    monkeypatch.setattr(tests.llm_server, "MODEL", "m\x1b]52;c;ZXZpbA==\x07\u202e[bold]x")
    policy = tmp_path / "p.yaml"
    policy.write_text(f"proposer:\n  kind: openai\n  base_url: {llm_server.base_url}\n  model: test-model\n"
                      "  api_key_env: AUTORESEARCH_TEST_NO_SUCH_KEY\n")
    main(["doctor", "--repo", str(tmp_path / "no\x1b[2Jrepo"), "--data", str(tmp_path / "d\u202e"),
          "--policy", str(policy)])
    out = capsys.readouterr().out
    assert_shown_not_run(out)
    endpoint = next(line for line in out.splitlines() if line.startswith("FAIL endpoint"))
    assert "(has: m\\x1b]52;c;ZXZpbA==\\x07\\u202e[bold]x)" in endpoint
    assert "no\\x1b[2Jrepo" in out and "d\\u202e" in out
