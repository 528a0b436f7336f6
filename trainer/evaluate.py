"""The trusted evaluator: score an exported model on the validation split, in bits per byte, after proving it fair.

TRUSTED CODE (baked into the trial image, run in its own container). It never imports or unpickles agent-written
Python: the model arrives as a torch.export archive that the safe .pt2 loader (trainer/safe_pt2.py) checks,
rebuilds and loads without running any pickle, generated guard code or non-torch callable (see that module's
docstring for what torch.export.load itself would execute, and docs/result-schema.md). Imports: torch, numpy,
pyyaml, stdlib.

    python -m trainer.evaluate --model M.pt2 --data DATA --preset P --out RESULT.json [--device cpu|cuda]
                               [--probe-seed N] [--wait-for-model S]

With --wait-for-model the model file need not exist yet: the evaluator reads the data, warms its loader up on a
tiny trusted model, and waits for the file (the runner starts the eval container while training runs, so the
torch import and warm-up are off the critical path; see `wait_for_model`).

Steps:
1. verify DATA/val and DATA/tokenizer against DATA/manifest.json; lay out the val tokens (trainer/bpb.py);
2. (--wait-for-model) wait for the model; then read the bar, `<dir of --model>/probes.json` (`read_probe_bar`:
   {"every_batch_below": float}, written by the host before the model is renamed in; absent: no bar);
3. load and check the model against the TRUSTED shapes (seq_len and eval_batch_size from trainer/presets.yaml,
   vocab_size from tokenizer.json, never from the model);
4. score and probe (trainer/probes.py; a failed probe ends the evaluation with status "violation"):
   - no bar: every batch, each probed right after its scoring pass against its logits (scope "every_batch");
   - a bar: every batch scored first, keeping each batch's per-position nll; then, if val_bpb < the bar, every
     batch is run again, its nll must match the scoring pass's (determinism) and the probes run against it
     (scope "every_batch"); else the same on one batch drawn from the probe seed, with one causality pass, not K
     (scope "one_batch": a score that cannot be kept is not worth the sweep or the bound; the host keeps only
     results probed on every batch; a model that peeks at every position still fails that one pass);
5. write ONE result.json atomically, checked against its schema first (trainer.contract.check_result,
   docs/result-schema.md).

Exit status (trainer.contract): EVAL_OK (0) whenever a result was written, whatever its status (ok, violation,
invalid_model); EVAL_USAGE (2) for a usage error (unknown preset); EVAL_CANNOT_RUN (3) when it could not run at
all (missing or corrupt val data, no CUDA device): a one-line message on stderr, no result, and the runner
reports an infrastructure failure (a malformed probes.json too: the host wrote it).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import platform
import secrets
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from . import bpb, probes
from .contract import (EVAL_CANNOT_RUN, EVAL_OK, EVAL_USAGE, PROBE_BAR_FILE, PROBE_NAMES, SCHEMA,  # noqa: F401
                       STATUSES, check_result)
from .contract import read_probe_bar as read_bar_file
from .process import cpu_threads, exit_now, first_math_calls, keep_freed_memory, wait_for
from .safe_pt2 import InvalidModel, load_program, warm_up
from .shards import (DataError, atomic_write_json, load_split, load_token_bytes, load_tokenizer_meta,
                     manifest_sha256, sha256_file, shard_paths, verify)

EVALUATOR_VERSION = "1"
PRESETS_FILE = Path(__file__).resolve().parent / "presets.yaml"
EXIT_OK, EXIT_USAGE, EXIT_CANNOT_RUN = EVAL_OK, EVAL_USAGE, EVAL_CANNOT_RUN
# every file that can change a score, hashed into evaluator_version (relative to trainer/)
SCORING_FILES = ("evaluate.py", "contract.py", "process.py", "safe_pt2.py", "safe_pt2_archive.py",
                 "safe_pt2_graph.py", "graph_ops.py", "probes.py", "bpb.py", "shards.py", "presets.yaml")


class SetupError(Exception):
    """The evaluator cannot run here (no such device, a malformed probes.json). One line."""


class UsageError(SetupError):
    """The evaluator was called wrongly (an unknown preset): exit EVAL_USAGE. One line."""


def evaluator_version() -> str:
    """'1+<sha256 of SCORING_FILES, 12 hex>': ties a result to the exact scoring code and shapes."""
    h = hashlib.sha256()
    for name in SCORING_FILES:
        h.update((Path(__file__).resolve().parent / name).read_bytes())
    return f"{EVALUATOR_VERSION}+{h.hexdigest()[:12]}"


def load_preset(name: str, path: Path = PRESETS_FILE) -> dict:
    presets = yaml.safe_load(path.read_text())
    if name not in presets:
        raise UsageError(f"unknown preset {name!r}; use one of {', '.join(presets)} (trainer/presets.yaml)")
    p = presets[name]
    for key in ("seq_len", "eval_batch_size"):
        if not isinstance(p.get(key), int) or p[key] < 1:
            raise SetupError(f"preset {name!r} in {path} needs a positive integer {key}")
    return p


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


def _finite(v) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _numbers(d) -> dict:
    """The finite numbers of a mapping (the manifest's baselines), as floats."""
    if not isinstance(d, dict):
        return {}
    return {str(k): _finite(v) for k, v in d.items() if _finite(v) is not None}


def _skeleton(preset: str, p: dict, device: str) -> dict:
    return {
        "schema": SCHEMA, "status": "invalid_model", "val_bpb": None, "val_loss": None,
        "eval_tokens": None, "eval_bytes": None, "preset": preset, "seq_len": p["seq_len"],
        "eval_batch_size": p["eval_batch_size"], "vocab_size": None, "device": device,
        "probes": {"seed": None, "tolerance": probes.TOLERANCE, "causality_passes": None, "miss_bound": None,
                   "scope": None, "every_batch_below": None, **{n: None for n in PROBE_NAMES}},
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


def read_val(data: Path, seq_len: int, batch_size: int | None = None):
    """(manifest, vocab_size, bos_id, token_bytes, layout): the val split, verified against the manifest first.
    With batch_size, no eval batch of the layout holds two pieces of one document (trainer/bpb.py).

    Raises DataError (one line) when anything is missing, corrupt, unlisted or inconsistent.
    """
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
    layout = bpb.pack(tokens, bos, seq_len, batch_size)
    if not layout.totals(token_bytes)[1]:
        raise DataError(f"the val split in {data} has no scorable bytes; run `autoresearch prepare` again")
    return manifest, vocab, bos, token_bytes, layout


def wait_for_model(path: Path, wait_s: float, poll_s: float = 0.02) -> float:
    """Warm the loader up while waiting for `path` to appear; seconds waited. Raises SetupError after wait_s.

    The runner starts the eval container while the model is still training, with the lowest CPU weight (so this
    never slows the training), and renames the model into a directory mounted read-only here once training is
    over. The warm-up (safe_pt2.warm_up: a tiny trusted model through the loader) runs on a thread while the main
    thread watches for the file.
    """
    t0 = time.perf_counter()
    errors: list[BaseException] = []

    def warm() -> None:
        try:
            warm_up()
        except BaseException as e:  # noqa: BLE001 - reported below; a failed warm-up only costs time
            errors.append(e)

    thread = threading.Thread(target=warm, name="warm-up", daemon=True)
    thread.start()
    if not wait_for(path, wait_s, poll_s):
        raise SetupError(f"no model appeared at {path} within {wait_s:g} s; the runner hands it over when "
                         "training ends")
    thread.join()
    if errors:
        print(f"evaluate: warm-up failed ({_one_line(errors[0])}); loading without it", file=sys.stderr)
    return time.perf_counter() - t0


def read_probe_bar(model_path: str | Path) -> float | None:
    """The bar from `<dir of model_path>/probes.json` (trainer.contract.read_probe_bar), None without one; read it
    once the model is there. A malformed file is SetupError (one line): the host wrote it, never the model."""
    try:
        return read_bar_file(Path(model_path).parent / PROBE_BAR_FILE)
    except ValueError as e:
        raise SetupError(f"{_one_line(e).removeprefix('ValueError: ')} (written by the host: an infrastructure "
                         "fault, not the model's)") from None


def evaluate(model: str | Path, data: str | Path, preset: str, device: str = "cpu",
             probe_seed: int | None = None, wait_s: float = 0.0, every_batch_below: float | None = None,
             bar_file: bool = False) -> dict:
    """Score one exported model; returns the result dict. Raises DataError / SetupError when it cannot run.

    With wait_s > 0 the model may not exist yet: the data is read first, then `wait_for_model`. The timings
    leave the wait out (total_s is the evaluator's own work). every_batch_below: the bar (a finite number > 0):
    every batch is scored first and probed only if val_bpb is below it, else one batch is (module docstring,
    step 4); None: every batch probed as it is scored. bar_file: take the bar from `read_probe_bar` once the model
    is there instead (main() does; every_batch_below must then be None).
    """
    t0 = time.perf_counter()
    p = load_preset(preset)
    if device not in ("cpu", "cuda"):
        raise SetupError(f"unknown device {device!r}; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda was given but torch sees no CUDA device; run on a GPU host or use "
                         "--device cpu")
    if every_batch_below is not None and (_finite(every_batch_below) is None or every_batch_below <= 0 or bar_file):
        raise SetupError(f"every_batch_below must be a finite number > 0, got {every_batch_below!r}" if not bar_file
                         else "give every_batch_below or bar_file, not both")
    res = _skeleton(preset, p, device)
    seq_len, batch = p["seq_len"], p["eval_batch_size"]

    data = Path(data)
    manifest, vocab, bos, token_bytes, layout = read_val(data, seq_len, batch)
    res["eval_tokens"], res["eval_bytes"] = layout.totals(token_bytes)
    res["vocab_size"] = vocab
    res["data"] = {"manifest_sha256": manifest_sha256(data),
                   "bpb_floor": _finite(manifest.get("bpb_floor")),
                   "source": manifest.get("source") if isinstance(manifest.get("source"), str) else None,
                   "baselines": _numbers(manifest.get("baselines"))}
    t1 = time.perf_counter()
    res["timings"]["data_s"] = round(t1 - t0, 4)
    if wait_s > 0:
        waited = wait_for_model(Path(model), wait_s)
        t0 += waited
        t1 += waited
    bar = read_probe_bar(model) if bar_file else every_batch_below
    res["probes"]["every_batch_below"] = None if bar is None else float(bar)

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

    # the probes' plan: K causality passes per batch from the layout, random choices from a recorded seed
    seed = probe_seed if probe_seed is not None else secrets.randbits(63)
    n_batches = layout.n_batches(batch)
    n_cands = np.array([len(c) for c in probes.candidates(layout.weights(token_bytes))])
    passes = probes.causality_passes(n_cands)
    res["probes"].update(seed=seed, causality_passes=passes, miss_bound=probes.miss_bound(passes, n_cands))
    run = _Run(program, layout, token_bytes, batch, device)
    run.prober = probes.Prober(lambda x: run.forward(x, "a probe pass"), layout.rows[:, :-1], layout.mask.any(axis=1),
                               batch, n_batches, vocab, bos, seed, passes, rescored=bar is not None)
    try:
        if bar is None:
            res["probes"]["scope"] = "every_batch"
            failed = run.score(probe_each=True)
        else:
            run.score(probe_each=False)
            every = run.tally.bpb < bar
            res["probes"]["scope"] = "every_batch" if every else "one_batch"
            if not every:                               # no bound on a peek in the batches not probed, so
                run.prober.passes = 1                   # one causality pass catches only a peek everywhere
                res["probes"].update(miss_bound=None, causality_passes=1)
            failed = run.probe_again(range(n_batches) if every else [run.prober.picked])
    except InvalidModel as e:
        failed = e
    # probe_s: the probe passes (the passes run again after scoring included); eval_s: the scoring passes
    res["timings"]["probe_s"] = round(run.probe_s, 4)
    res["timings"]["eval_s"] = round(time.perf_counter() - t2 - run.probe_s, 4)
    if isinstance(failed, InvalidModel):
        return finish("invalid_model", str(failed))
    for name, r in run.prober.results().items():
        res["probes"][name] = r.to_json()
    if failed is not None:
        return finish("violation", f"{failed.name} probe failed: {failed.evidence}")
    tally = run.tally
    if (tally.tokens, tally.bytes) != (res["eval_tokens"], res["eval_bytes"]):
        raise RuntimeError(f"evaluator bug: scored {tally.tokens} tokens / {tally.bytes} bytes, layout has "
                           f"{res['eval_tokens']} / {res['eval_bytes']}")
    res["val_loss"], res["val_bpb"] = tally.loss, tally.bpb
    return finish("ok")


class _Run:
    """The forward passes of one evaluation, their time split into probing (probe_s) and scoring (the rest)."""

    def __init__(self, program, layout: bpb.EvalLayout, token_bytes: np.ndarray, batch: int, device: str):
        self.program, self.layout, self.token_bytes, self.b, self.device = program, layout, token_bytes, batch, device
        self.n_batches = layout.n_batches(batch)
        self.tally, self.nll, self.probe_s = bpb.Tally(), [], 0.0     # nll: per batch, kept for `probe_again`
        self.prober: probes.Prober | None = None

    def forward(self, x: torch.Tensor, what: str) -> torch.Tensor:
        try:
            return self.program(x)
        except InvalidModel:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the untrusted graph raises is the model's fault
            raise InvalidModel(f"model failed on {what}: {_one_line(e)}") from None

    def _batch(self, i: int):
        x, y, w = self.layout.batch(i, self.b, self.token_bytes)
        return torch.as_tensor(x).to(self.device), torch.as_tensor(y), w

    def score(self, probe_each: bool) -> probes.ProbeResult | None:
        """Every batch scored in order (finite logits or InvalidModel). probe_each (no bar): each batch probed
        against its scoring pass's logits at once; else (a bar) none, each batch's nll kept for `probe_again`.
        The failed probe or None."""
        for i in range(self.n_batches):
            x, y, w = self._batch(i)
            where = f"eval batch {i + 1}/{self.n_batches}"
            logits = self.forward(x, where)
            nll = bpb.token_nll(logits, y)      # NaN or +inf anywhere in a row makes it non-finite
            if not torch.isfinite(nll).all():
                raise InvalidModel(f"model gives non-finite logits (NaN, inf, or -inf at a target) in {where}")
            if not torch.isfinite(logits).all():
                raise InvalidModel(f"model gives non-finite logits (NaN or inf) in {where}")
            self.tally.add_nll(nll, w)
            if not probe_each:
                self.nll.append(nll)
            elif (failed := self._probe(i, x, logits, w)) is not None:
                return failed
            del logits
        return None

    def probe_again(self, batches) -> probes.ProbeResult | None:
        """After `score(False)`: each of `batches` run again (a probe pass) and its nll checked against the scoring
        pass's (`Prober.rescore`), then probed against these logits. The failed probe or None."""
        for i in batches:
            x, y, w = self._batch(i)
            tp = time.perf_counter()
            try:
                logits = self.forward(x, f"eval batch {i + 1}/{self.n_batches} scored again")
                failed = self.prober.rescore(i, logits, bpb.token_nll(logits, y), self.nll[i])
            finally:
                self.probe_s += time.perf_counter() - tp
            failed = self._probe(i, x, logits, w) if failed is None else failed
            del logits
            if failed is not None:
                return failed
        return None

    def _probe(self, i: int, x: torch.Tensor, logits: torch.Tensor, w: np.ndarray) -> probes.ProbeResult | None:
        tp = time.perf_counter()
        try:
            return self.prober.batch(i, x, logits, w)
        finally:
            self.probe_s += time.perf_counter() - tp


# --------------------------------------------------------------------------- CLI

def _summary(res: dict) -> str:
    if res["status"] == "ok":
        floor = res["data"]["bpb_floor"]
        ratio = f" ratio_to_floor={res['val_bpb'] / floor:.4f}" if floor else ""
        return (f"status=ok val_bpb={res['val_bpb']:.6f}{ratio} eval_tokens={res['eval_tokens']} "
                f"eval_bytes={res['eval_bytes']} probed={res['probes']['scope']} "
                f"total_s={res['timings']['total_s']:.2f}")
    return f"status={res['status']} error={res['error']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the exported program (model.pt2)")
    ap.add_argument("--data", required=True, help="prepared data directory (needs val/, tokenizer/, manifest.json)")
    ap.add_argument("--preset", required=True, help="tiny | cpu | h100: fixes seq_len and eval_batch_size")
    ap.add_argument("--out", required=True, help="where to write result.json")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--probe-seed", type=int, default=None, help="fix the probes' random choices (default: random)")
    ap.add_argument("--wait-for-model", type=float, default=0.0, metavar="S",
                    help="the model may not exist yet: read the data, warm up, and wait up to S seconds for it")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(cpu_threads())   # the container's CPU quota, not the host's core count
        keep_freed_memory()                     # each forward pass reuses the last one's pages
    first_math_calls()                          # before any parallel op (trainer/process.py)
    try:
        res = evaluate(args.model, args.data, args.preset, args.device, args.probe_seed, args.wait_for_model,
                       bar_file=True)
    except SetupError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_CANNOT_RUN
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
    exit_now(main())        # no teardown of torch (0.3-0.7 s the runner would wait for); the result is written
