"""harness.setup(), the budget clock and the log/report lines: the environment contract of docs/design.md."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness_fixtures import BOS, VOCAB, make_data
from trainer import harness, process
from trainer.harness.budget import Budget


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"), n_docs=100)


BUDGET_S = 10          # what the runner passes from the policy (the harness has no budget of its own)


def env_for(data, tmp_path, **extra):
    env = {"AUTORESEARCH_DATA": str(data), "AUTORESEARCH_OUT": str(tmp_path / "out"), "AUTORESEARCH_PRESET": "tiny",
           "AUTORESEARCH_BUDGET_S": str(BUDGET_S)}
    env.update({f"AUTORESEARCH_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def test_progress_is_zero_until_the_first_batch_then_elapsed_over_budget():
    clock = FakeClock()
    b = Budget(10, clock=clock)
    clock.t += 50                       # time before the first batch is free
    assert b.progress(0) == 0.0 and b.remaining() == 10
    b.start()
    clock.t += 2.5
    b.start()                           # a second start does not reset the clock
    assert b.progress(3) == pytest.approx(0.25)
    clock.t += 100
    assert b.progress(4) == 1.0, "progress is capped at 1 once the budget is spent"
    assert b.remaining() == 0


def test_max_steps_drives_progress_and_the_time_budget_still_caps(capsys):
    clock = FakeClock()
    b = Budget(10, max_steps=40, clock=clock)
    b.start()
    clock.t += 9
    assert b.progress(10) == 0.25       # steps, not time
    assert b.progress(40) == 1.0
    clock.t += 2
    assert b.progress(12) == 1.0
    assert "ran out at step 12 before max_steps=40" in capsys.readouterr().err


def test_setup_reads_the_environment_the_preset_and_the_tokenizer(data, tmp_path):
    run = harness.setup(env_for(data, tmp_path, budget_s=3.5, seed=42, max_steps=7))
    preset = harness.load_presets()["tiny"]
    assert (run.preset_name, run.seq_len, run.eval_batch_size) == ("tiny", preset["seq_len"], preset["eval_batch_size"])
    assert run.preset["depth"] == preset["depth"]
    assert (run.vocab_size, run.bos_id, run.seed, run.max_steps) == (VOCAB, BOS, 42, 7)
    assert run.budget_seconds == 3.5 and run.device == "cpu"
    assert run.out_dir.is_dir()
    assert harness.setup(env_for(data, tmp_path)).budget_seconds == BUDGET_S
    assert "budget_seconds" not in preset, "the policy alone owns the training budget"
    assert harness.setup(env_for(data, tmp_path)).seed == harness.DEFAULT_SEED


def test_setup_seeds_torch_so_initialisation_repeats(data, tmp_path):
    harness.setup(env_for(data, tmp_path, seed=5))
    a = torch.randn(4)
    harness.setup(env_for(data, tmp_path, seed=5))
    b = torch.randn(4)
    harness.setup(env_for(data, tmp_path, seed=6))
    c = torch.randn(4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("change, message", [
    ({"AUTORESEARCH_DATA": ""}, "AUTORESEARCH_DATA is not set"),
    ({"AUTORESEARCH_OUT": ""}, "AUTORESEARCH_OUT is not set"),
    ({"AUTORESEARCH_BUDGET_S": ""}, "AUTORESEARCH_BUDGET_S is not set; the runner passes the policy's"),
    ({"AUTORESEARCH_DATA": "/nonexistent/data"}, "is not a directory"),
    ({"AUTORESEARCH_PRESET": "huge"}, "AUTORESEARCH_PRESET='huge' is not one of"),
    ({"AUTORESEARCH_BUDGET_S": "soon"}, "AUTORESEARCH_BUDGET_S='soon' is not a valid float"),
    ({"AUTORESEARCH_BUDGET_S": "-1"}, "AUTORESEARCH_BUDGET_S='-1'"),
    ({"AUTORESEARCH_MAX_STEPS": "0"}, "AUTORESEARCH_MAX_STEPS='0'"),
    ({"AUTORESEARCH_DEVICE": "tpu"}, "AUTORESEARCH_DEVICE='tpu' is not one of cpu, cuda"),
])
def test_a_bad_environment_is_a_one_line_error_naming_the_variable(data, tmp_path, change, message):
    env = env_for(data, tmp_path)
    env.update(change)
    with pytest.raises(harness.HarnessError, match=message) as e:
        harness.setup(env)
    assert "\n" not in str(e.value)


def test_data_without_a_tokenizer_is_a_data_error(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    with pytest.raises(harness.DataError, match="tokenizer.json"):
        harness.setup(env_for(tmp_path / "data", tmp_path))


def test_log_step_prints_one_progress_line(data, tmp_path, capsys):
    run = harness.setup(env_for(data, tmp_path, budget_s=20))
    run.log_step(12, 3.21012, lr_mult=0.5, tok_s=900)
    out = capsys.readouterr().out
    assert out == "step=12 loss=3.2101 progress=0.000 remaining_s=20.0 lr_mult=0.5 tok_s=900\n"


def test_report_prints_the_summary_block_and_drops_a_self_reported_score(data, tmp_path, capsys):
    run = harness.setup(env_for(data, tmp_path))
    run.report(training_seconds=12.25, num_steps=30, mfu_percent=None, val_bpb=0.001, note="two\nlines")
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["---", "training_seconds: 12.25", "num_steps: 30", "mfu_percent: n/a",
                                         "note: two lines"]
    assert "dropped 'val_bpb'" in captured.err


HEAP_SCRIPT = """
import ctypes, json, sys
import torch
from trainer import harness, process

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "setup":
    harness.setup(json.loads(sys.argv[2]))
elif sys.argv[1] == "keep":
    assert process.keep_freed_memory()
x = torch.empty(50 * 2**20)                          # 200 MiB: one tensor, one malloc block
during = mallinfo2()
del x
after = mallinfo2()
print(json.dumps({"own_mapping": during.hblkhd >= 200 * 2**20, "kept_free": after.fordblks >= 200 * 2**20}))
"""


def _heap(*args: str) -> dict:
    """Run HEAP_SCRIPT in a fresh process (malloc's settings are per process)."""
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", HEAP_SCRIPT, *args], cwd=repo, capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)})
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's")
def test_freed_tensor_memory_is_kept_for_the_next_pass_instead_of_returned_to_the_kernel(data, tmp_path):
    assert _heap("plain") == {"own_mapping": True, "kept_free": False}, "glibc's default: map, then unmap"
    assert _heap("keep") == {"own_mapping": False, "kept_free": True}
    assert _heap("setup", json.dumps(env_for(data, tmp_path))) == {"own_mapping": False, "kept_free": True}, \
        "harness.setup() on the CPU keeps freed memory for train.py"


def test_setup_makes_the_first_call_of_every_mkl_math_function_on_the_cpu_before_train_py_runs(data, tmp_path,
                                                                                              monkeypatch):
    # a parallel first call of tanh or log could give one thread's half of a tensor another result (the evaluator's
    # determinism probe failed honest models on it, docs/benchmarks.md); setup() makes those calls alone first
    calls = []
    monkeypatch.setattr(harness, "first_math_calls", lambda: calls.append("first") or [])
    harness.setup(env_for(data, tmp_path))
    assert calls == ["first"]


def test_first_math_calls_calls_every_listed_function_on_this_torch():
    assert process.first_math_calls() == list(process.VML_FUNCTIONS)
    assert {"tanh", "log", "exp"} <= set(process.VML_FUNCTIONS)     # the ones the model and the metric use
