"""A candidate's bytes never reach the operator's terminal (issue 16.6), with the real engine.

The candidate prints escape sequences (a clipboard write, a screen clear, a hyperlink), a carriage return with a
fake verdict, bells, backspaces, C1 controls (as characters and as a raw byte), bidi overrides and rich markup on
stdout and in a progress line, then crashes with them in its exception. It is the start commit of a run, so the
baseline trial runs it in a real container through the real log stream and the loop ends with an error naming its
crash line. Every output a person reads must show all of it escaped: `--plain` output and the one-line error,
`status`, `report` and report.md, results.tsv, train.log, `reproduce`, and the live view on a real pseudo-terminal;
the ledger (JSON) holds no raw byte of it either.
"""
from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time

import pytest

from runner.ledger import Ledger
from runner.workspace import init_repo
from tests.adversarial.conftest import run_tag

pytestmark = pytest.mark.docker

HOSTILE_TRAIN = r'''
import sys, time
print("step=1\x1b]52;c;ZXZpbA==\x07 loss=[bold]9[/bold]\x1b[2J progress=0.5 remaining_s=\u202e5", flush=True)
time.sleep(2.5)  # long enough for the live view to draw the progress line
print("crash\rkeep 0.1234")
print("bell\x07 bs\x08\x08 c1\x9b31m bidi\u202egnp.exe\u202c iso\u2066x\u2069 clear\x1b[2J "
      "link\x1b]8;;https://evil.example/\x1b\\here\x1b]8;;\x1b\\ [bold red]keep[/] :warning:", flush=True)
sys.stdout.buffer.write(b"rawbyte\x9b[2J\n")
sys.stdout.flush()
raise RuntimeError("boom \x1b]52;c;ZXZpbA==\x07 \x1b[2J \x9b31m \u202egnp.exe [bold red]keep[/] :warning:")
'''
# the candidate's own sequences: none may reach any output as raw characters
HOSTILE = ["\x1b]52", "\x1b[2J", "\x1b]8;;https://evil", "\x07", "\x08", "\x9b", "\u202e", "\u202c", "\u2066",
           "\u2069", "\rkeep", "\u26a0"]
REASON_SHOWN = "boom \\x1b]52;c;ZXZpbA==\\x07 \\x1b[2J \\x9b31m \\u202egnp.exe [bold red]keep[/] :warning:"
LOG_SHOWN = ["crash\\rkeep 0.1234", "bell\\x07 bs\\x08\\x08 c1\\x9b31m bidi\\u202egnp.exe\\u202c iso\\u2066x\\u2069",
             "link\\x1b]8;;https://evil.example/\\x1b\\here", "rawbyte\ufffd[2J", REASON_SHOWN]
PTY_COLUMNS = 400            # wide enough that rich never wraps the crash line
CLI_TIMEOUT_S = 300


def raw_controls(text: str, keep: str = "\n") -> list[str]:
    return [c for c in text if not c.isprintable() and c not in keep]


def assert_clean(name: str, text: str, keep: str = "\n") -> None:
    assert not raw_controls(text, keep), f"{name}: raw {sorted(set(raw_controls(text, keep)))!r}"
    assert not [h for h in HOSTILE if h in text], f"{name}: {[h for h in HOSTILE if h in text]!r}"


def cli(*args):
    return subprocess.run(["autoresearch", *map(str, args)], capture_output=True, text=True, errors="strict",
                          timeout=CLI_TIMEOUT_S)


def hostile_repo(tmp_path, name):
    repo = tmp_path / name
    init_repo(repo, {"train.py": HOSTILE_TRAIN.lstrip(), "program.md": "p\n", ".gitignore": "runs/\n"})
    return repo


def test_a_crashing_candidates_escape_codes_are_shown_escaped_in_every_output(tmp_path, trial_image,
                                                                              sandbox_data):
    repo, tag = hostile_repo(tmp_path, "exp"), run_tag("terminal")
    common = ["--repo", repo, "--tag", tag]
    p = cli("baseline", *common, "--policy", "tiny", "--data", sandbox_data, "--image", trial_image.tag, "--plain")
    assert p.returncode == 1, p.stdout + p.stderr
    assert_clean("--plain stdout", p.stdout)
    assert_clean("error line", p.stderr)
    assert p.stderr.startswith("autoresearch: error: ") and REASON_SHOWN in p.stderr, p.stderr
    assert "trial   0 crash" in p.stdout and REASON_SHOWN in p.stdout, p.stdout

    run_dir = repo / "runs" / tag
    (rec,) = Ledger(run_dir).records()
    assert rec.status == "crash" and "\x1b]52;c;ZXZpbA==\x07" in rec.reason   # the ledger keeps the exact text
    raw = (run_dir / "trials.jsonl").read_bytes()
    assert raw.isascii() and not [b for b in raw if b < 0x20 and b != 0x0a]

    log = (run_dir / "trials" / "0" / "train.log").read_text()
    assert_clean("train.log", log)
    assert all(s in log for s in LOG_SHOWN), log
    tsv = (run_dir / "results.tsv").read_text()
    assert_clean("results.tsv", tsv, keep="\n\t")

    for args in (["status"], ["report"], ["reproduce", 0, "--verbose"]):
        q = cli(*args, *common)
        assert q.returncode == 0, q.stdout + q.stderr
        assert_clean(f"{args[0]} stdout", q.stdout)
        assert_clean(f"{args[0]} stderr", q.stderr)
    assert "reproduced: crash" in q.stdout and REASON_SHOWN in q.stdout, q.stdout
    report = (run_dir / "report.md").read_text()
    assert_clean("report.md", report)
    assert "boom \\\\x1b\\]52;c;ZXZpbA==\\\\x07" in report, report


def run_on_a_pty(args: list, timeout: float) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as its stdin, stdout and stderr; returns (exit code, what it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, PTY_COLUMNS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(PTY_COLUMNS)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(["autoresearch", *map(str, args)], stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:          # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, out.decode("utf-8", "strict")


def test_the_live_view_on_a_real_terminal_shows_a_candidates_escape_codes_escaped(tmp_path, trial_image,
                                                                                  sandbox_data):
    repo, tag = hostile_repo(tmp_path, "live"), run_tag("terminal-live")
    code, out = run_on_a_pty(["baseline", "--repo", repo, "--tag", tag, "--policy", "tiny", "--data",
                              sandbox_data, "--image", trial_image.tag], CLI_TIMEOUT_S)
    assert code == 1, out
    # rich draws with its own escape sequences, and the terminal ends lines with CR LF: only the candidate's own
    # sequences may not be there
    assert not [h for h in HOSTILE if h in out], [h for h in HOSTILE if h in out]
    assert "\x1b[1;31m" not in out                              # its [bold red] was not rendered as markup
    assert "step 1\\x1b]52;c;ZXZpbA==\\x07  loss [bold]9[/bold]\\x1b[2J" in out, out   # the live panel
    assert "remaining \\u202e5 s" in out
    assert REASON_SHOWN in out                                  # the finished trial's line and the error
