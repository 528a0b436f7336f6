"""The launcher's calibration (trainer/harness/launch.py): after the hand-over and before train.py runs, a fixed
kernel is timed and printed as trainer.contract's calibration line, just before the hand-over line; train.py
finds torch's thread count as it was and no random generator moved."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from runner.sandbox.slot import _place
from trainer import contract

REPO = Path(__file__).resolve().parent.parent


def test_the_calibration_line_comes_just_before_the_hand_over_line_and_leaves_torch_as_it_was(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _place(work, "trial.json", b'{"seed": 7}')
    _place(work, "train.py", textwrap.dedent("""
        import torch
        print("THREADS", torch.get_num_threads())
    """).encode())
    got = subprocess.run([sys.executable, "-m", "trainer.harness.launch", "--dir", str(work), "--wait", "5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    lines = got.stderr.splitlines()
    at = lines.index(contract.LAUNCHED_LINE)
    assert lines[at - 1].startswith(contract.CALIBRATION_PREFIX + "seconds=")
    cal = contract.parse_calibration(lines)
    assert cal["kernel"] == "matmul512f32x96" and cal["device"] == "cpu" and 0 < float(cal["seconds"]) < 120
    plain = subprocess.run([sys.executable, "-c", "import torch; print('THREADS', torch.get_num_threads())"],
                           capture_output=True, text=True, timeout=120)
    assert got.stdout.split() == plain.stdout.split()      # the thread count train.py would have had without it


def test_the_calibration_moves_no_random_generator_and_restores_the_thread_count():
    import torch

    from trainer.harness.launch import calibrate
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.set_num_threads(1)
    seconds, kernel, used, device = calibrate("cpu")
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    assert seconds > 0 and kernel == "matmul512f32x96" and used >= 1 and device == "cpu"
