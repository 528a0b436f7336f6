"""How much compute a real trial got, measured outside the candidate (real engine, real image): the trusted
launcher's calibration line, read only before its hand-over line, so a candidate's own calibration lines (on
either stream, even after a fake hand-over line of its own) change nothing; the train container's CPU share of
its quota and its throttled time from the cgroup, carried into the ledger record."""
from __future__ import annotations

import pytest

from runner.ledger import TrialRecord, fill
from tests.sandbox_kit import candidate, policy, real_candidate, trial
from trainer.contract import LAUNCHED_LINE, calibration_line

pytestmark = pytest.mark.docker

FAKE_S = 0.0001          # what the candidate claims: a machine 1000s of times faster than any here
FAKE = calibration_line(FAKE_S, "matmul512f32x96", 2, "cpu")


def test_the_launchers_calibration_is_recorded_and_a_candidates_fake_one_is_ignored(tmp_path, trial_image,
                                                                                    sandbox_data):
    prefix = f"""
        import sys
        for stream in (sys.stderr, sys.stdout):
            print({FAKE!r}, file=stream, flush=True)
            print({LAUNCHED_LINE!r}, file=stream, flush=True)
            print({FAKE!r}, file=stream, flush=True)
        """
    pol = policy(eval={"timeout_seconds": 600})             # the eval is not what this test is about
    out, _ = trial(tmp_path, trial_image.tag, real_candidate(tmp_path, prefix=prefix), sandbox_data, pol=pol)
    assert out.status == "ok", (out.error, out.log_tail[-800:])
    assert out.calibration_s is not None and 0.01 < out.calibration_s < 120, out.calibration_s
    assert out.calibration_s != FAKE_S
    assert 0 < out.cpu_share <= 1.2 and out.throttled_s is not None and out.throttled_s >= 0
    rec = TrialRecord(trial=1, kind="candidate", status="keep", description="fakes a calibration")
    fill(rec, out)
    assert (rec.calibration_s, rec.cpu_share, rec.throttled_s) == (out.calibration_s, out.cpu_share,
                                                                   out.throttled_s)


def test_a_candidate_flooding_stderr_cannot_replace_the_calibration(tmp_path, trial_image, sandbox_data):
    """Enough stderr to fill the engine's capped log (spec.LOG_MAX_SIZE) and have it rotated, then a fake
    calibration and hand-over line: the host read the launcher's lines before the candidate ran."""
    cand = candidate(tmp_path, f"""
        import sys
        line = "x" * 1000 + "\\n"
        for _ in range(12_000):
            sys.stderr.write(line)
        sys.stderr.write({FAKE!r} + "\\n" + {LAUNCHED_LINE!r} + "\\n")
        sys.stderr.flush()
        sys.exit(1)
        """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data, pol=policy())
    assert out.status == "crash", (out.status, out.error)
    assert out.calibration_s is not None and out.calibration_s != FAKE_S


def test_the_calibration_reader_frees_its_engine_connection_at_once(tmp_path, trial_image, sandbox_data):
    # its follow stream sits in a reference cycle: unless it closes the HTTP response, each trial would hold one
    # engine socket until a garbage collection (the hostile loop's runner held 50 more fds after 40 trials)
    import gc
    import os

    def sockets() -> int:
        n = 0
        for f in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{f}").startswith("socket:")
            except OSError:                                    # the listing's own fd, gone already
                pass
        return n
    quick = candidate(tmp_path, "raise SystemExit(3)\n")
    trial(tmp_path, trial_image.tag, quick, sandbox_data)          # the engine client's pool is made
    gc.disable()
    try:
        before = sockets()
        for _ in range(3):
            out, _ = trial(tmp_path, trial_image.tag, quick, sandbox_data)
            assert out.status == "crash" and out.calibration_s is not None
        assert sockets() - before <= 1, (before, sockets())
    finally:
        gc.enable()
