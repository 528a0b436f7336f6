"""End to end on CPU: prepare synthetic (small) -> train.py, tiny preset -> export -> trusted evaluator.

The model must land clearly below the unigram baseline of the same data and above the data's BPB floor. Training
is capped by a step count (not only the clock), so the result does not depend on how busy the machine is.
"""
from __future__ import annotations

import pytest

from trainer.direct import direct_trial
from trainer.evaluate import check_result
from trainer.prepare.cli import main as prepare_main
from trainer.shards import load_manifest


@pytest.mark.e2e
def test_prepare_train_export_evaluate_lands_between_the_floor_and_the_unigram_baseline(tmp_path):
    data = tmp_path / "data"
    assert prepare_main(["synthetic", "--out", str(data), "--train-docs", "1000", "--val-docs", "40",
                         "--vocab-size", "512"]) in (0, None)
    manifest = load_manifest(data)
    res = direct_trial(data=data, preset="tiny", budget=120, max_steps=20, seed=1, out=tmp_path / "out")
    assert check_result(res) == [] and res["status"] == "ok", res["error"]
    assert all(res["probes"][p]["passed"] for p in ("determinism", "batch_independence", "causality"))
    assert res["probes"]["scope"] == "every_batch" and res["probes"]["every_batch_below"] is None   # no bar given
    floor, unigram = manifest["bpb_floor"], manifest["baselines"]["unigram_token_bpb"]
    assert res["data"]["bpb_floor"] == floor
    assert floor < res["val_bpb"] < 0.85 * unigram, (floor, res["val_bpb"], unigram)
    # the evaluator scores exactly the val text: every byte, every token but the documents' BOS
    val = manifest["splits"]["val"]
    assert res["eval_bytes"] == val["bytes"] and res["eval_tokens"] == val["tokens"] - val["docs"]
