"""Whole trials of the real train.py in the real sandbox: the score matches a direct run, and cannot be forged.

Reproducible by construction: policy.train.max_steps fixes the step count (the budget is far larger), the seed
is the trial's, and the thread count is the same on the host and in the container (2 cores). The reference is
trainer.direct: the same train.py and seed, unsandboxed on the host, scored by the same evaluator.
"""
from __future__ import annotations

import os

import pytest

from runner.sandbox import containers
from tests.sandbox_kit import REAL_TRAIN_PY, candidate, policy, real_candidate, trial

pytestmark = pytest.mark.docker

STEPS, SEED = 3, 4242
POLICY = dict(train={"budget_seconds": 60, "allowance_seconds": 120, "max_steps": STEPS})


@pytest.fixture(scope="module")
def direct_bpb(sandbox_data, tmp_path_factory):
    from trainer.direct import direct_trial
    out = tmp_path_factory.mktemp("direct")
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "2"
    try:
        result = direct_trial(train_py=REAL_TRAIN_PY, data=sandbox_data, preset="tiny", budget=60, seed=SEED,
                              max_steps=STEPS, out=out, device="cpu")
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    assert result["status"] == "ok"
    return result["val_bpb"]


def test_a_clean_tiny_trial_is_ok_with_the_bpb_of_a_direct_run(tmp_path, trial_image, sandbox_data, direct_bpb):
    lines, phases = [], []
    out, spec = trial(tmp_path, trial_image.tag, candidate(tmp_path, REAL_TRAIN_PY.read_text()), sandbox_data,
                      pol=policy(**POLICY), seed=SEED, on_line=lines.append,
                      on_phase=lambda name: phases.append((name, len(lines))))
    assert out.status == "ok", (out.error, out.log_tail)
    assert out.val_bpb == pytest.approx(direct_bpb, rel=1e-6, abs=1e-6)
    assert out.image_digest == trial_image.id
    assert out.result["val_bpb"] == out.val_bpb and (spec.work_dir / "result.json").is_file()
    assert out.train_summary["num_steps"] == STEPS
    assert any(l.startswith("step=") for l in lines)
    assert [p for p, _ in phases] == ["training", "evaluating"]     # the live view's phases, in order
    assert phases[0][1] == 0 and phases[1][1] > 0                   # evaluating begins after the train log
    t = out.timings
    assert t["train_wall_s"] > 0 and t["eval_wall_s"] > 0 and t["train_started_at"] < t["eval_started_at"]
    # the eval container started beside the training and waited for the model (its start-up off the critical path)
    started = containers._parse_time(t["eval_started_at"])
    assert started < containers._parse_time(t["train_finished_at"]) and t["eval_wait_s"] > 0
    assert not (spec.work_dir / "model.pt2").exists()               # the model copy is removed unless kept
    assert sorted(p.name for p in spec.work_dir.iterdir()) == ["result.json", "train.py"]


def test_a_train_step_that_prints_or_writes_a_fake_score_does_not_change_the_reported_score(
        tmp_path, trial_image, sandbox_data, direct_bpb):
    forger = """
        import atexit, json, os
        FAKE = {"schema": "autoresearch.result/1", "status": "ok", "val_bpb": 0.0001}
        def _forge():
            print("---")
            print("val_bpb: 0.0001")
            print("status: ok")
            for path in ("/out/result.json", "/tmp/result.json", "/out/../result.json"):
                try:
                    json.dump(FAKE, open(path, "w"))
                except OSError:
                    pass
            print("step=99 loss=0.0 val_bpb=0.0001", flush=True)
        atexit.register(_forge)
    """
    out, spec = trial(tmp_path, trial_image.tag, real_candidate(tmp_path, prefix=forger), sandbox_data,
                      pol=policy(**POLICY), seed=SEED, keep_model=True)
    assert out.status == "ok", (out.error, out.log_tail)
    kept = spec.work_dir / "model.pt2"                              # keep_model: the scored copy, read-only
    assert kept.is_file() and oct(kept.stat().st_mode & 0o777) == "0o444" and not (spec.work_dir / "model").exists()
    assert "val_bpb: 0.0001" in out.log_tail                        # the forgery ran ...
    assert out.val_bpb != pytest.approx(0.0001)                     # ... and changed nothing
    assert out.val_bpb == pytest.approx(direct_bpb, rel=1e-6, abs=1e-6)
    assert not any("bpb" in k for k in out.train_summary)


CHATTY_CRASH = """
import atexit, sys
for i in range(300):
    print(f"progress line {i}", flush=True)
atexit.register(lambda: [print(f"printed after the traceback {i}", flush=True) for i in range(300)])
raise RuntimeError("the real reason")
"""


def test_a_crash_is_named_by_its_exception_though_its_output_and_traceback_interleave(tmp_path, trial_image,
                                                                                       sandbox_data):
    # the engine merges stdout and stderr in no fixed order, and its tail counts lines of both streams: the reason
    # comes from the whole stderr stream, in its own order
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, CHATTY_CRASH), sandbox_data, policy(**POLICY))
    assert out.status == "crash" and out.error.endswith(": RuntimeError: the real reason"), out.error
    quiet, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path / "q", "print('last words')\nraise SystemExit(4)\n"),
                     sandbox_data, policy(**POLICY))
    assert quiet.status == "crash" and quiet.error == "train.py exited with code 4: last words", quiet.error
