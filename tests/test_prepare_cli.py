"""The prepare command: one-line errors, exit codes, and a data directory that is complete or absent, never half."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import shards
from trainer.prepare import main

SMALL = ["--train-docs", "300", "--val-docs", "50", "--vocab-size", "400"]


def run_main(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_an_existing_prepared_directory_is_replaced_only_with_force(tmp_path, capsys):
    out = str(tmp_path / "data")
    assert run_main(["synthetic", "--out", out, "--seed", "1", *SMALL], capsys)[0] == 0
    first = shards.manifest_sha256(out)
    code, _, err = run_main(["synthetic", "--out", out, "--seed", "2", *SMALL], capsys)
    assert code == 2 and "already holds prepared data" in err and "--force" in err and err.count("\n") == 1
    assert shards.manifest_sha256(out) == first
    assert run_main(["synthetic", "--out", out, "--seed", "2", "--force", *SMALL], capsys)[0] == 0
    assert shards.manifest_sha256(out) != first
    assert shards.load_manifest(out)["params"]["seed"] == 2
    shards.verify(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no tmp or old directories left behind


def test_an_unfinished_directory_needs_force_and_a_foreign_one_is_never_replaced(tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    (unfinished / "train").mkdir(parents=True)
    (unfinished / "train" / "shard_00000.bin").write_bytes(b"partial")
    code, _, err = run_main(["synthetic", "--out", str(unfinished), *SMALL], capsys)
    assert code == 2 and "unfinished" in err
    assert run_main(["synthetic", "--out", str(unfinished), "--force", *SMALL], capsys)[0] == 0
    shards.verify(unfinished)

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    code, _, err = run_main(["synthetic", "--out", str(foreign), "--force", *SMALL], capsys)
    assert code == 2 and "thesis.tex" in err and "not prepared data" in err
    assert (foreign / "thesis.tex").read_text() == "precious" and len(list(foreign.iterdir())) == 1

    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = run_main(["synthetic", "--out", str(a_file), *SMALL], capsys)
    assert code == 2 and "not a directory" in err


def test_unknown_source_and_bad_numbers_are_one_line_errors(tmp_path, capsys):
    for argv, expect in ((["wikipedia"], "unknown source 'wikipedia'"),
                         (["synthetic", "--vocab-size", "259"], "need 260"),
                         (["synthetic", "--vocab-size", "70000"], "65536"),
                         (["synthetic", "--train-docs", "0"], "--train-docs 0"),
                         (["synthetic", "--vocab-size", "big"], "invalid int value"),
                         (["synthetic", "--retries", "-1"], "--retries")):
        code, _, err = run_main(argv + ["--out", str(tmp_path / "d")], capsys)
        assert code == 2 and expect in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "d").exists()


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "files:PATH" in capsys.readouterr().out


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and a child inherits that; Python then installs no
    # KeyboardInterrupt handler. Give prepare the SIGINT a user's Ctrl-C would reach, however pytest was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer.prepare", "synthetic", "--out", str(out),
                             "--train-docs", "150000", "--val-docs", "100", "--tokenizer-chars", "200000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _wait_for_shards(proc: subprocess.Popen, out: Path) -> None:
    """Until the tokenizer is written into the tmp directory (prepare is then encoding the train split)."""
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(f"{out.name}.tmp-*/tokenizer/token_bytes.json")):
        assert proc.poll() is None, "prepare finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_an_interrupted_prepare_leaves_no_manifest(tmp_path, sig):
    out = tmp_path / "data"
    proc = _start(out)
    try:
        _wait_for_shards(proc, out)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(shards.DataError, match="never prepared, or preparation did not finish"):
        shards.verify(out)
    if sig == signal.SIGINT:  # a Python-level interruption cleans up after itself and says so on one line
        assert proc.returncode == 130
        assert "interrupted" in proc.stderr.read() and not list(tmp_path.glob("data.tmp-*"))
    else:  # a killed one leaves its tmp directory, which the next prepare removes
        assert len(list(tmp_path.glob("data.tmp-*"))) == 1
        assert main(["synthetic", "--out", str(out), *SMALL]) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
        shards.verify(out)
    proc.stderr.close()
