"""The launcher (trainer/harness/launch.py): a train container started before its candidate runs the train.py the
host hands over exactly as `python train.py` would, with the trial's seed, and ends the way Python would."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner.sandbox import containers
from runner.sandbox.slot import _place
from trainer.harness import launch

REPO = Path(__file__).resolve().parent.parent


def _launcher(work: Path, wait: float = 60) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer.harness.launch", "--dir", str(work), "--wait", str(wait),
                             "--no-warm-up"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _hand_over(work: Path, body: str, seed: int = 7) -> None:
    _place(work, "trial.json", f'{{"seed": {seed}}}'.encode())
    _place(work, "train.py", textwrap.dedent(body).encode())


def _run_handed_over(tmp_path: Path, body: str, seed: int = 7, delay: float = 0.0) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir()
    proc = _launcher(work)
    if delay:
        time.sleep(delay)
    _hand_over(work, body, seed)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_train_py_handed_over_later_runs_as_main_with_the_trial_seed(tmp_path):
    got = _run_handed_over(tmp_path, """
        import os, sys
        from trainer import harness
        print("NAME", __name__, "FILE", __file__, "ARGV", sys.argv, "PATH0", sys.path[0])
        print("SEED", os.environ["AUTORESEARCH_SEED"], "HARNESS", hasattr(harness, "setup"))
    """, seed=4242, delay=0.5)
    work = tmp_path / "work"
    assert got.returncode == 0, got.stderr
    assert f"NAME __main__ FILE {work / 'train.py'} ARGV ['{work / 'train.py'}'] PATH0 {work}" in got.stdout
    assert "SEED 4242 HARNESS True" in got.stdout


@pytest.mark.parametrize("body", [
    "print('ok')",
    "import sys; sys.exit(5)",
    "import sys; sys.exit(256 + 7)",
    "import sys; sys.exit(None)",
    "import sys; sys.exit('training diverged at step 3')",
    "raise ValueError('boom')",
    "import os\nprint('unflushed', end='')\nos.environ['X'] = '1'",
])
def test_the_exit_status_and_output_are_what_python_itself_gives(tmp_path, body):
    script = tmp_path / "plain" / "train.py"
    script.parent.mkdir()
    script.write_text(body + "\n")
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=60,
                           env={"PYTHONPATH": str(REPO)})
    got = _run_handed_over(tmp_path, body + "\n")
    assert got.returncode == plain.returncode
    assert got.stdout == plain.stdout
    assert got.stderr.splitlines()[0] == launch.RUNNING_LINE          # the launcher's own line, then train.py's
    assert got.stderr.strip().splitlines()[1:][-1:] == plain.stderr.strip().splitlines()[-1:]


def test_the_running_line_comes_before_anything_of_train_py_and_only_once_it_runs(tmp_path):
    got = _run_handed_over(tmp_path, "import sys; print('first', file=sys.stderr); sys.exit(3)\n")
    assert got.returncode == launch.NO_CANDIDATE                    # train.py's own exit 3 ...
    assert got.stderr.splitlines()[:2] == [launch.RUNNING_LINE, "first"]   # ... after the line: not the launcher's
    assert launch.RUNNING_LINE == containers.LAUNCHED_LINE          # the line the host looks for


def test_atexit_handlers_and_unfinished_threads_still_run_before_the_fast_exit(tmp_path):
    got = _run_handed_over(tmp_path, """
        import atexit, threading, time
        atexit.register(lambda: print("atexit ran"))
        def late():
            time.sleep(0.3)
            print("thread done")
        threading.Thread(target=late).start()
        print("main done")
    """)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split("\n")[:3] == ["main done", "thread done", "atexit ran"]


def test_a_candidate_that_never_comes_ends_the_launcher_with_one_line(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    t0 = time.monotonic()
    proc = _launcher(work, wait=1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == launch.NO_CANDIDATE and out == ""
    assert len(err.strip().splitlines()) == 1 and "no train.py was handed over" in err
    assert launch.RUNNING_LINE not in err
    assert time.monotonic() - t0 < 30


def test_a_bad_seed_file_is_refused_with_one_line(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = _launcher(work)
    _place(work, "trial.json", b'{"seed": "x"}')
    _place(work, "train.py", b"print('never')\n")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == launch.NO_CANDIDATE and "never" not in out
    assert "cannot read the trial's seed" in err and len(err.strip().splitlines()) == 1
    assert launch.RUNNING_LINE not in err


def test_getting_ready_imports_what_train_py_needs():
    code = ("import sys; from trainer.harness import launch; launch.get_ready(); "
            "print(all(m in sys.modules for m in ('torch', 'torch._dynamo', 'torch.export', 'trainer.harness')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.stdout.strip() == "True", p.stderr
