"""The bar crosses the real hand-over (issue 17's cheaper evaluation, issue 16's probes): a trial given
every_batch_below gets probes.json beside its model in the eval container, and the trusted evaluator probes one
batch when the score is not below it, every batch when it is. Real engine, real image, the real train.py."""
from __future__ import annotations

import json

import pytest

from runner.result import read_result
from tests.sandbox_kit import policy, real_candidate, trial

pytestmark = pytest.mark.docker

QUICK = policy(train={"max_steps": 5}, eval={"timeout_seconds": 600})


@pytest.mark.parametrize("bar, scope", [(1e-9, "one_batch"), (64.0, "every_batch")])
def test_a_trial_is_probed_on_every_batch_only_when_its_score_is_below_the_bar_it_was_given(
        bar, scope, tmp_path, trial_image, sandbox_data):
    out, spec = trial(tmp_path, trial_image.tag, real_candidate(tmp_path), sandbox_data, pol=QUICK,
                      every_batch_below=bar)
    assert out.status == "ok", (out.error, out.log_tail[-800:])
    assert out.probe_scope == scope
    result = read_result(spec.work_dir)
    assert result["probes"]["every_batch_below"] == bar and result["probes"]["scope"] == scope
    assert json.loads(json.dumps(out.result)) == result                      # the outcome carries the same result
    counts = {name: result["probes"][name]["batches"] for name in ("causality", "batch_independence")}
    assert (counts == {"causality": 1, "batch_independence": 1}) == (scope == "one_batch")
