"""result.json: the CLI contract (exit codes, one result, one-line errors) and the documented schema."""
from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import evalkit as K
from trainer.evaluate import check_result, evaluate

VOCAB = 30
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(11)
    return K.make_data(tmp_path_factory.mktemp("result-data"), K.random_docs(rng, 50, VOCAB, hi=90), VOCAB,
                       bpb_floor=1.5, baselines={"unigram_token_bpb": 4.0, "note": "text is dropped"})


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    return K.export(K.Bigram(torch.randn(VOCAB, VOCAB)), tmp_path_factory.mktemp("good") / "m.pt2", 8, 64)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.evaluate", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_the_cli_writes_one_result_that_validates_against_the_schema(good, data, tmp_path):
    out = tmp_path / "out" / "result.json"
    p = cli("--model", str(good), "--data", str(data), "--preset", "tiny", "--out", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert check_result(res) == []
    assert res["status"] == "ok" and res["val_bpb"] > 0 and res["error"] is None
    assert res["data"]["manifest_sha256"] == hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()
    assert res["data"]["bpb_floor"] == 1.5 and res["data"]["baselines"] == {"unigram_token_bpb": 4.0}
    assert res["model"]["sha256"] and res["model"]["bytes"] == good.stat().st_size
    assert res["versions"]["torch"] == torch.__version__
    assert re.match(r"^1\+[0-9a-f]{12}$", res["versions"]["evaluator"])
    assert (res["seq_len"], res["eval_batch_size"], res["vocab_size"]) == (64, 8, VOCAB)
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.json"]         # atomic: no temp files left
    assert "status=ok val_bpb=" in p.stdout


def documented_fields() -> set[str]:
    text = (REPO / "docs" / "result-schema.md").read_text()
    section = text.split("## Fields", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_.*]+)` \|", section, flags=re.M))


def flatten(res: dict) -> set[str]:
    """Field names as the doc writes them: a.b for sections, probes.*.x for the fields of each probe."""
    keys = set()
    for k, v in res.items():
        keys.add(k)
        if not isinstance(v, dict):
            continue
        for k2, v2 in v.items():
            keys.add(f"{k}.{k2}")
            if k == "probes" and isinstance(v2, dict):
                keys.update(f"probes.*.{k3}" for k3 in v2)
    return keys


def test_the_documented_fields_are_exactly_the_fields_the_evaluator_writes(good, data):
    res = evaluate(good, data, "tiny", probe_seed=1)
    assert flatten(res) == documented_fields()


def test_the_schema_check_rejects_results_that_break_its_rules(good, data):
    res = evaluate(good, data, "tiny", probe_seed=1)
    assert check_result(res) == []
    broken = []
    for mutate in (lambda r: r.update(status="violation"),                       # a score with no failed probe
                   lambda r: r.update(val_bpb=None),
                   lambda r: r.update(val_bpb=True),
                   lambda r: r.update(val_bpb=float("nan")),
                   lambda r: r.update(error="oops"),
                   lambda r: r.pop("timings"),
                   lambda r: r.update(extra=1),
                   lambda r: r.update(schema="autoresearch.result/0"),
                   lambda r: r["probes"]["causality"].update(passed=False),
                   lambda r: r["probes"].update(causality=None),
                   lambda r: r["probes"].update(scope="some_batches"),
                   lambda r: r["probes"].update(scope="one_batch"),                # with no bar given
                   lambda r: r["probes"].update(every_batch_below=0.0),
                   lambda r: r.update(eval_tokens="12")):
        r = copy.deepcopy(res)
        mutate(r)
        broken.append(check_result(r))
    assert all(broken), broken
    assert check_result([]) and check_result(None)


@pytest.mark.parametrize("make, reason", [
    (lambda: K.Counter(VOCAB), "mutates its buffers"),
    (lambda: K.MutatesInput(VOCAB), "mutates its input"),
    (lambda: K.WrongVocab(VOCAB), "expected logits (8, 64, 30)"),
    (lambda: K.HalfLogits(VOCAB), "torch.float32"),
    (lambda: K.NaNs(VOCAB), "non-finite logits"),
    (lambda: K.SmallTable(VOCAB), "model failed on eval batch 1/"),
], ids=["buffer-mutation", "input-mutation", "wrong-vocab", "bf16-logits", "nan-logits", "raises-at-run-time"])
def test_broken_models_are_invalid_models_with_a_one_line_reason_and_no_score(make, reason, data, tmp_path):
    res = evaluate(K.export(make(), tmp_path / "m.pt2", 8, 64), data, "tiny", probe_seed=0)
    assert res["status"] == "invalid_model" and res["val_bpb"] is None
    assert reason in res["error"] and "\n" not in res["error"]
    assert check_result(res) == []


def test_a_model_exported_at_another_shape_than_the_trusted_preset_is_invalid(data, tmp_path):
    path = K.export(K.Bigram(torch.randn(VOCAB, VOCAB)), tmp_path / "m.pt2", 4, 32)
    res = evaluate(path, data, "tiny", probe_seed=0)
    assert res["status"] == "invalid_model" and "expected idx (8, 64)" in res["error"]


def test_non_finite_logits_in_a_scored_batch_that_no_probe_saw_make_an_invalid_model(tmp_path):
    from trainer.evaluate import read_val
    rng = np.random.default_rng(3)
    for n_docs in range(20, 60):                 # val data whose last eval batch is padded with all-BOS rows
        d = K.make_data(tmp_path / f"d{n_docs}", K.random_docs(rng, n_docs, VOCAB, hi=90), VOCAB)
        layout = read_val(d, 64, 8)[4]
        if layout.n_rows % 8:
            break
    res = evaluate(K.export(K.NaNOnPadding(VOCAB), tmp_path / "m.pt2", 8, 64), d, "tiny", probe_seed=0)
    assert res["status"] == "invalid_model" and res["val_bpb"] is None
    assert f"non-finite logits (NaN, inf, or -inf at a target) in eval batch {layout.n_batches(8)}/" in res["error"]


def test_an_invalid_or_corrupt_model_file_still_gets_a_result_and_exit_0_without_a_traceback(data, tmp_path):
    junk = tmp_path / "model.pt2"
    junk.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    out = tmp_path / "result.json"
    p = cli("--model", str(junk), "--data", str(data), "--preset", "tiny", "--out", str(out))
    assert p.returncode == 0 and "Traceback" not in p.stderr
    res = json.loads(out.read_text())
    assert res["status"] == "invalid_model" and "not a .pt2 archive" in res["error"] and check_result(res) == []
    assert res["eval_tokens"] > 0 and res["timings"]["probe_s"] is None


def test_missing_val_data_is_exit_3_with_one_line_and_no_result(good, tmp_path):
    out = tmp_path / "result.json"
    p = cli("--model", str(good), "--data", str(tmp_path / "nowhere"), "--preset", "tiny", "--out", str(out))
    assert p.returncode == 3 and not out.exists()
    assert len(p.stderr.strip().splitlines()) == 1 and "manifest.json" in p.stderr and "prepare" in p.stderr


def test_a_val_shard_that_differs_from_the_manifest_is_exit_3(good, tmp_path):
    rng = np.random.default_rng(3)
    data = K.make_data(tmp_path / "data", K.random_docs(rng, 30, VOCAB), VOCAB)
    shard = data / "val" / "shard_00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    out = tmp_path / "result.json"
    p = cli("--model", str(good), "--data", str(data), "--preset", "tiny", "--out", str(out))
    assert p.returncode == 3 and not out.exists() and "sha256" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_val_shard_the_manifest_does_not_list_is_refused(good, tmp_path):
    rng = np.random.default_rng(6)
    data = K.make_data(tmp_path / "data", K.random_docs(rng, 30, VOCAB), VOCAB)
    K.write_shard(data / "val" / "shard_00001.bin", [K.BOS, 1, 2, 3])
    out = tmp_path / "result.json"
    p = cli("--model", str(good), "--data", str(data), "--preset", "tiny", "--out", str(out))
    assert p.returncode == 3 and not out.exists() and "not listed" in p.stderr


def test_the_eval_container_view_without_train_data_is_enough(good, tmp_path):
    import shutil
    rng = np.random.default_rng(4)
    data = K.make_data(tmp_path / "data", K.random_docs(rng, 30, VOCAB), VOCAB)
    shutil.rmtree(data / "train")
    assert evaluate(good, data, "tiny", probe_seed=0)["status"] == "ok"


def test_an_unknown_preset_is_a_usage_error_and_cuda_without_a_gpu_cannot_run(good, data, tmp_path):
    p = cli("--model", str(good), "--data", str(data), "--preset", "huge", "--out", str(tmp_path / "r.json"))
    assert p.returncode == 2 and "unknown preset" in p.stderr
    if not torch.cuda.is_available():
        p = cli("--model", str(good), "--data", str(data), "--preset", "tiny", "--out", str(tmp_path / "r.json"),
                "--device", "cuda")
        assert p.returncode == 3 and "CUDA" in p.stderr and not (tmp_path / "r.json").exists()


def test_the_probe_seed_is_recorded_and_makes_the_probes_reproducible(good, data):
    a = evaluate(good, data, "tiny", probe_seed=42)
    b = evaluate(good, data, "tiny", probe_seed=42)
    c = evaluate(good, data, "tiny")
    assert a["probes"]["seed"] == 42
    assert a["probes"]["causality"]["positions"] == b["probes"]["causality"]["positions"]
    assert c["probes"]["seed"] != 42 and a["val_bpb"] == b["val_bpb"] == c["val_bpb"]


def test_the_probes_change_nothing_in_the_score_whatever_their_seed(good, data):
    # Each batch is probed right after its scoring pass, against that pass's logits: the score is that of plain
    # passes over the same batches, in the same order, whatever the probes do between them.
    from trainer import bpb
    from trainer.evaluate import read_val
    _, _, _, token_bytes, layout = read_val(data, 64, 8)
    program = torch.export.load(str(good)).module()
    plain = bpb.Tally()
    with torch.no_grad():
        for x, y, w in layout.batches(8, token_bytes):
            plain.add(program(torch.as_tensor(x)), y, w)
    for s in (1, 2, 3):
        assert evaluate(good, data, "tiny", probe_seed=s)["val_bpb"] == plain.bpb


def test_the_schema_check_never_raises_on_hostile_values_anywhere(good, data):
    res = evaluate(good, data, "tiny", probe_seed=1)
    rng = np.random.default_rng(0)
    hostile = [None, True, 0, -1, 10**400, 1e308, "x" * 10_000, [], [[[[1]]]], {}, {"a": {"b": None}}, [1, "a"],
               {1: 2}, float("nan"), float("inf")]
    paths = []

    def walk(obj, path):
        paths.append(path)
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, path + (k,))
    walk(res, ())
    for _ in range(400):
        r = copy.deepcopy(res)
        path = paths[int(rng.integers(1, len(paths)))]
        target = r
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = hostile[int(rng.integers(len(hostile)))]
        problems = check_result(r)                      # must not raise
        assert isinstance(problems, list) and all(isinstance(p, str) and len(p) < 400 for p in problems)
    assert check_result({"schema": 1}) and check_result({i: i for i in range(3)})


def test_a_waiting_evaluator_scores_the_model_handed_over_later_exactly_as_one_that_had_it(good, data, tmp_path):
    # The runner starts the eval container while training runs and renames the model in when training ends.
    slot = tmp_path / "in" / "model.pt2"
    slot.parent.mkdir()

    def hand_over():
        time.sleep(1.0)
        shutil.copy(good, tmp_path / "part")
        (tmp_path / "part").rename(slot)
    threading.Thread(target=hand_over).start()
    t0 = time.perf_counter()
    waited = evaluate(slot, data, "tiny", probe_seed=5, wait_s=60)
    wall = time.perf_counter() - t0
    direct = evaluate(good, data, "tiny", probe_seed=5)
    assert waited["status"] == "ok" and waited["val_bpb"] == direct["val_bpb"]
    assert waited["probes"] == direct["probes"] and waited["model"] == direct["model"]
    assert waited["timings"]["total_s"] <= wall - 0.9            # the wait is not the evaluator's work
    assert check_result(waited) == []


def test_a_model_that_never_arrives_ends_the_waiting_evaluator_with_one_line_and_no_result(data, tmp_path):
    out = tmp_path / "out" / "result.json"
    p = cli("--model", str(tmp_path / "in" / "model.pt2"), "--data", str(data), "--preset", "tiny",
            "--out", str(out), "--wait-for-model", "1")
    assert p.returncode == 3 and not out.exists()
    assert p.stderr.strip().splitlines()[-1].startswith("evaluate: no model appeared at ")
    assert "Traceback" not in p.stderr


def test_the_cpu_evaluator_keeps_freed_memory_and_makes_the_first_math_calls_alone_before_its_first_pass(good, tmp_path, monkeypatch):
    import trainer.evaluate as E
    calls = []

    def stop_at_evaluate(*args, **kwargs):
        calls.append("evaluate")
        raise E.DataError("stop here")

    monkeypatch.setattr(E, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(E, "first_math_calls", lambda: calls.append("first") or [])
    monkeypatch.setattr(E, "evaluate", stop_at_evaluate)
    assert E.main(["--model", str(good), "--data", str(tmp_path), "--preset", "tiny", "--out",
                   str(tmp_path / "r.json")]) == E.EXIT_CANNOT_RUN
    assert calls == ["keep", "first", "evaluate"], "trainer.process.keep_freed_memory and first_math_calls (tests/test_harness_setup.py) come first"
