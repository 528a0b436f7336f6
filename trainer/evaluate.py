"""The trusted evaluator: score an exported model on the validation split, in bits per byte, after proving it fair.

TRUSTED CODE (baked into the trial image, run in its own container). It never imports or unpickles agent-written
Python: the model arrives as a torch.export archive that trainer/program.py checks, rebuilds and loads without
running any pickle, generated guard code or non-torch callable (see that module's docstring for what
torch.export.load itself would execute, and docs/result-schema.md). Imports: torch, numpy, pyyaml, stdlib.

    python -m trainer.evaluate --model M.pt2 --data DATA --preset P --out RESULT.json [--device cpu|cuda]
                               [--probe-seed N]

Steps: verify DATA/val and DATA/tokenizer against DATA/manifest.json; lay out the val tokens (trainer/bpb.py);
load and check the model against the TRUSTED shapes (seq_len and eval_batch_size from trainer/presets.yaml,
vocab_size from tokenizer.json, never from the model); run the fairness probes (trainer/probes.py); score every
batch; write ONE result.json (schema "autoresearch.result/1", docs/result-schema.md) atomically.

Exit status: 0 whenever a result was written, whatever its status (ok, violation, invalid_model); 2 for a usage
error (unknown preset); 3 when it could not run at all (missing or corrupt val data, no CUDA device): a one-line
message on stderr, no result, and the runner reports an infrastructure failure.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import platform
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from . import bpb, probes
from .program import InvalidModel, load_program
from .shards import (DataError, atomic_write_json, load_split, load_token_bytes, load_tokenizer_meta,
                     manifest_sha256, sha256_file, shard_paths, verify)

SCHEMA = "autoresearch.result/1"
STATUSES = ("ok", "violation", "invalid_model")
EVALUATOR_VERSION = "1"
PRESETS_FILE = Path(__file__).resolve().parent / "presets.yaml"
PROBE_NAMES = ("determinism", "batch_independence", "causality")
EXIT_OK, EXIT_USAGE, EXIT_CANNOT_RUN = 0, 2, 3


class SetupError(Exception):
    """The evaluator cannot run here (bad preset, no such device). One line."""


def evaluator_version() -> str:
    """'1+<sha256 of the evaluator's sources, 12 hex>': ties a result to the exact scoring code."""
    h = hashlib.sha256()
    for name in ("evaluate.py", "program.py", "probes.py", "bpb.py", "shards.py"):
        h.update((Path(__file__).resolve().parent / name).read_bytes())
    return f"{EVALUATOR_VERSION}+{h.hexdigest()[:12]}"


def load_preset(name: str, path: Path = PRESETS_FILE) -> dict:
    presets = yaml.safe_load(path.read_text())
    if name not in presets:
        raise SetupError(f"unknown preset {name!r}; use one of {', '.join(presets)} (trainer/presets.yaml)")
    p = presets[name]
    for key in ("seq_len", "eval_batch_size"):
        if not isinstance(p.get(key), int) or p[key] < 1:
            raise SetupError(f"preset {name!r} in {path} needs a positive integer {key}")
    return p


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


def _numbers(d) -> dict:
    if not isinstance(d, dict):
        return {}
    return {str(k): float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _skeleton(preset: str, p: dict, device: str) -> dict:
    return {
        "schema": SCHEMA, "status": "invalid_model", "val_bpb": None, "val_loss": None,
        "eval_tokens": None, "eval_bytes": None, "preset": preset, "seq_len": p["seq_len"],
        "eval_batch_size": p["eval_batch_size"], "vocab_size": None, "device": device,
        "probes": {"seed": None, "tolerance": probes.TOLERANCE, **{n: None for n in PROBE_NAMES}},
        "data": {"manifest_sha256": None, "bpb_floor": None, "source": None, "baselines": {}},
        "model": {"sha256": None, "bytes": None, "num_params": None},
        "timings": {"data_s": None, "load_s": None, "probe_s": None, "eval_s": None, "total_s": None},
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "evaluator": evaluator_version()},
        "error": None,
    }


def _model_facts(path: Path) -> dict:
    try:
        if path.is_file() and not path.is_symlink():
            return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    except OSError:
        pass
    return {"sha256": None, "bytes": None}


def evaluate(model: str | Path, data: str | Path, preset: str, device: str = "cpu",
             probe_seed: int | None = None) -> dict:
    """Score one exported model; returns the result dict. Raises DataError / SetupError when it cannot run."""
    t0 = time.perf_counter()
    p = load_preset(preset)
    if device not in ("cpu", "cuda"):
        raise SetupError(f"unknown device {device!r}; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda was given but torch sees no CUDA device; run on a GPU host or use --device cpu")
    res = _skeleton(preset, p, device)
    seq_len, batch = p["seq_len"], p["eval_batch_size"]

    # data: verified against the manifest before anything is scored
    data = Path(data)
    manifest = verify(data, prefixes=("val/", "tokenizer/"))
    listed = set(manifest["files"])
    for rel in ("tokenizer/tokenizer.json", "tokenizer/token_bytes.json"):
        if rel not in listed:
            raise DataError(f"{data}/manifest.json does not list {rel}; run `autoresearch prepare` again")
    for shard in shard_paths(data, "val"):
        if f"val/{shard.name}" not in listed:
            raise DataError(f"val shard {shard} is not listed in {data}/manifest.json (added after prepare?); "
                            "remove it or run `autoresearch prepare` again")
    meta = load_tokenizer_meta(data)
    token_bytes = load_token_bytes(data)
    vocab, bos = meta["vocab_size"], meta["bos_id"]
    if len(token_bytes) != vocab:
        raise DataError(f"{data}/tokenizer/token_bytes.json has {len(token_bytes)} entries, tokenizer.json says "
                        f"vocab_size {vocab}; run `autoresearch prepare` again")
    tokens = load_split(data, "val")
    if tokens.size and int(tokens.max()) >= vocab:
        raise DataError(f"val tokens reach id {int(tokens.max())}, outside vocab_size {vocab}; "
                        "run `autoresearch prepare` again")
    layout = bpb.pack(tokens, bos, seq_len)
    res["eval_tokens"], res["eval_bytes"] = layout.totals(token_bytes)
    if not res["eval_bytes"]:
        raise DataError(f"the val split in {data} has no scorable bytes; run `autoresearch prepare` again")
    floor = manifest.get("bpb_floor")
    res["vocab_size"] = vocab
    res["data"] = {"manifest_sha256": manifest_sha256(data),
                   "bpb_floor": float(floor) if isinstance(floor, (int, float)) else None,
                   "source": manifest.get("source") if isinstance(manifest.get("source"), str) else None,
                   "baselines": _numbers(manifest.get("baselines"))}
    t1 = time.perf_counter()
    res["timings"]["data_s"] = round(t1 - t0, 4)

    def finish(status: str, error: str | None = None) -> dict:
        res["status"], res["error"] = status, error
        res["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
        return res

    model = Path(model)
    res["model"].update(_model_facts(model))
    try:
        program = load_program(model, batch, seq_len, vocab, device)
    except InvalidModel as e:
        res["timings"]["load_s"] = round(time.perf_counter() - t1, 4)
        return finish("invalid_model", str(e))
    res["model"]["num_params"] = program.num_params
    t2 = time.perf_counter()
    res["timings"]["load_s"] = round(t2 - t1, 4)

    def forward(x: torch.Tensor, what: str) -> torch.Tensor:
        try:
            logits = program(x)
        except InvalidModel:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the untrusted graph raises is the model's fault
            raise InvalidModel(f"model failed on {what}: {_one_line(e)}") from None
        return logits

    # probes, on one real eval batch picked with an unpredictable (recorded) seed
    seed = probe_seed if probe_seed is not None else secrets.randbits(63)
    res["probes"]["seed"] = seed
    rng = np.random.default_rng(seed)
    n_batches = math.ceil(layout.n_rows / batch)
    full = layout.n_rows // batch
    k = int(rng.integers(full)) if full else 0
    base_rows = np.full((batch, seq_len + 1), bos, np.int64)
    chunk = layout.rows[k * batch:(k + 1) * batch]
    base_rows[:len(chunk)] = chunk
    base = torch.as_tensor(base_rows[:, :-1]).to(device)
    others = np.setdiff1d(np.arange(layout.n_rows), np.arange(k * batch, (k + 1) * batch))
    donors = layout.rows[np.sort(rng.choice(others, size=min(len(others), 4 * batch), replace=False))] \
        if len(others) else np.zeros((0, seq_len + 1), np.int64)
    try:
        first = forward(base, "a probe batch")
        if not torch.isfinite(first).all():
            raise InvalidModel("model gives non-finite logits (NaN or inf) on real val rows")
        del first
        ran = probes.run_probes(lambda x: forward(x, "a probe batch"), base, donors, vocab, bos,
                                int(rng.integers(2**63)))
    except InvalidModel as e:
        res["timings"]["probe_s"] = round(time.perf_counter() - t2, 4)
        return finish("invalid_model", str(e))
    for name, r in ran.items():
        res["probes"][name] = r.to_json()
    t3 = time.perf_counter()
    res["timings"]["probe_s"] = round(t3 - t2, 4)
    failed = next((r for r in ran.values() if not r.passed), None)
    if failed is not None:
        return finish("violation", f"{failed.name} probe failed: {failed.evidence}")

    # the score
    tally = bpb.Tally()
    try:
        for i, (x, y, w) in enumerate(layout.batches(batch, token_bytes)):
            logits = forward(torch.as_tensor(x).to(device), f"eval batch {i + 1}/{n_batches}")
            if not torch.isfinite(logits).all():
                raise InvalidModel(f"model gives non-finite logits (NaN or inf) in eval batch {i + 1}/{n_batches}")
            tally.add(logits, y, w)
    except InvalidModel as e:
        res["timings"]["eval_s"] = round(time.perf_counter() - t3, 4)
        return finish("invalid_model", str(e))
    res["timings"]["eval_s"] = round(time.perf_counter() - t3, 4)
    if (tally.tokens, tally.bytes) != (res["eval_tokens"], res["eval_bytes"]):
        raise RuntimeError(f"evaluator bug: scored {tally.tokens} tokens / {tally.bytes} bytes, layout has "
                           f"{res['eval_tokens']} / {res['eval_bytes']}")
    res["val_loss"], res["val_bpb"] = tally.loss, tally.bpb
    return finish("ok")


# --------------------------------------------------------------------------- the schema, checked

def check_result(obj) -> list[str]:
    """Problems with a result object against schema autoresearch.result/1 (empty list: valid)."""
    errs: list[str] = []

    def num(v, allow_none=True):
        return (v is None and allow_none) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v))

    def typed(where, v, types, allow_none=False):
        if v is None and allow_none:
            return
        if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
            errs.append(f"{where} must be {'/'.join(t.__name__ for t in types)}{' or null' if allow_none else ''}, "
                        f"got {v!r}")

    if not isinstance(obj, dict):
        return ["result must be a JSON object"]
    top = {"schema", "status", "val_bpb", "val_loss", "eval_tokens", "eval_bytes", "preset", "seq_len",
           "eval_batch_size", "vocab_size", "device", "probes", "data", "model", "timings", "versions", "error"}
    if set(obj) != top:
        errs.append(f"keys differ from the schema: missing {sorted(top - set(obj))}, extra {sorted(set(obj) - top)}")
        return errs
    if obj["schema"] != SCHEMA:
        errs.append(f"schema must be {SCHEMA!r}, got {obj['schema']!r}")
    if obj["status"] not in STATUSES:
        errs.append(f"status must be one of {STATUSES}, got {obj['status']!r}")
    ok = obj["status"] == "ok"
    for key in ("val_bpb", "val_loss"):
        if ok and not (num(obj[key], False) and obj[key] > 0):
            errs.append(f"{key} must be a positive number when status is ok, got {obj[key]!r}")
        if not ok and obj[key] is not None:
            errs.append(f"{key} must be null unless status is ok, got {obj[key]!r}")
    for key in ("eval_tokens", "eval_bytes", "seq_len", "eval_batch_size", "vocab_size"):
        typed(key, obj[key], (int,), allow_none=key not in ("seq_len", "eval_batch_size") and not ok)
    typed("preset", obj["preset"], (str,))
    if obj["device"] not in ("cpu", "cuda"):
        errs.append(f"device must be cpu or cuda, got {obj['device']!r}")
    typed("error", obj["error"], (str,), allow_none=ok)
    if ok and obj["error"] is not None:
        errs.append("error must be null when status is ok")
    pr = obj["probes"]
    if not isinstance(pr, dict) or set(pr) != {"seed", "tolerance", *PROBE_NAMES}:
        errs.append(f"probes must hold seed, tolerance and {PROBE_NAMES}")
    else:
        for name in PROBE_NAMES:
            r = pr[name]
            if r is None:
                if ok:
                    errs.append(f"probes.{name} must be present when status is ok")
                continue
            if not isinstance(r, dict) or set(r) != {"passed", "max_abs_diff", "evidence", "positions", "rows"}:
                errs.append(f"probes.{name} must hold passed, max_abs_diff, evidence, positions, rows")
                continue
            typed(f"probes.{name}.passed", r["passed"], (bool,))
            if not num(r["max_abs_diff"], allow_none=r["passed"] is False):
                errs.append(f"probes.{name}.max_abs_diff must be a number (null only for a failed probe)")
            if ok and r["passed"] is not True:
                errs.append(f"probes.{name} did not pass but status is ok")
        if obj["status"] == "violation" and not any(isinstance(pr[n], dict) and pr[n].get("passed") is False
                                                    for n in PROBE_NAMES):
            errs.append("status is violation but no probe failed")
    for section, keys in (("data", {"manifest_sha256", "bpb_floor", "source", "baselines"}),
                          ("model", {"sha256", "bytes", "num_params"}),
                          ("timings", {"data_s", "load_s", "probe_s", "eval_s", "total_s"}),
                          ("versions", {"torch", "python", "evaluator"})):
        if not isinstance(obj[section], dict) or set(obj[section]) != keys:
            errs.append(f"{section} must hold exactly {sorted(keys)}")
            continue
        if section == "timings":
            for k, v in obj[section].items():
                if not num(v) or (v is not None and v < 0) or (ok and v is None):
                    errs.append(f"timings.{k} must be a non-negative number{'' if not ok else ''}, got {v!r}")
    if isinstance(obj["data"], dict) and set(obj["data"]) >= {"bpb_floor"} and not num(obj["data"]["bpb_floor"]):
        errs.append("data.bpb_floor must be a number or null")
    return errs


# --------------------------------------------------------------------------- CLI

def _summary(res: dict) -> str:
    if res["status"] == "ok":
        floor = res["data"]["bpb_floor"]
        ratio = f" ratio_to_floor={res['val_bpb'] / floor:.4f}" if floor else ""
        return (f"status=ok val_bpb={res['val_bpb']:.6f}{ratio} eval_tokens={res['eval_tokens']} "
                f"eval_bytes={res['eval_bytes']} total_s={res['timings']['total_s']:.2f}")
    return f"status={res['status']} error={res['error']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the exported program (model.pt2)")
    ap.add_argument("--data", required=True, help="prepared data directory (needs val/, tokenizer/, manifest.json)")
    ap.add_argument("--preset", required=True, help="tiny | cpu | h100: fixes seq_len and eval_batch_size")
    ap.add_argument("--out", required=True, help="where to write result.json")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--probe-seed", type=int, default=None, help="fix the probes' random choices (default: random)")
    args = ap.parse_args(argv)
    try:
        res = evaluate(args.model, args.data, args.preset, args.device, args.probe_seed)
    except SetupError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return EXIT_USAGE if "preset" in str(e) else EXIT_CANNOT_RUN
    except DataError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    problems = check_result(res)
    if problems:
        raise RuntimeError(f"evaluator bug: result breaks its own schema: {problems[0]}")
    atomic_write_json(args.out, res)
    print(_summary(res), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
