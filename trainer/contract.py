"""The trial contract between the host (runner/) and the trial image (trainer/), written once and imported by both.

TRUSTED CODE, standard library only: the host imports it to check a result.json without importing torch, and the
image's launcher, harness and evaluator import it for the same names. What it fixes:

- the mount points inside the containers, and the files the host and the containers hand each other there;
- the environment the train container gets (trainer.harness reads it; runner.sandbox.spec and trainer.direct
  set it);
- the exit codes the host tells apart (the launcher's NO_CANDIDATE, the harness's EXPORT_FAILED, the evaluator's);
- the lines the host watches for in the train container's output (LAUNCHED_LINE, EXPORTING_LINE, the
  launcher's calibration line) and the progress line's format, each with its one parser;
- the pattern of summary keys that look like a score (never taken from train.py);
- the result.json document: SCHEMA, STATUSES, PROBE_NAMES, SCOPES and `check_result`, the schema's one definition
  (docs/result-schema.md);
- the bar the host hands the evaluator beside the model (PROBE_BAR_FILE; `probe_bar_json` writes it,
  `read_probe_bar` reads it).

Every line and number printed inside a container is untrusted text: the lines here are hints for scheduling and
display, never a score.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat

# --------------------------------------------------------------------------- mounts and files
WORK_DIR = "/work"                  # train: the host's hand-over directory (train.py, trial.json), read-only
MODEL_DIR = "/in"                   # eval: the host's model directory, read-only, empty until the hand-over
DATA_DIR = "/data"                  # train: train/ and tokenizer/; eval: val/, tokenizer/, manifest.json
OUT_DIR = "/out"                    # each container's own capped, writable output volume
TRAIN_FILE = "train.py"             # the candidate, renamed into WORK_DIR last
TRIAL_FILE = "trial.json"           # {"seed": int}, renamed into WORK_DIR before TRAIN_FILE
MODEL_FILE = "model.pt2"            # the exported model: OUT_DIR of train, then MODEL_DIR of eval
EXPORT_ERROR_FILE = "export_error.txt"   # one line, in OUT_DIR of train, when the export failed
RESULT_FILE = "result.json"         # the evaluator's document, in OUT_DIR of eval
MODEL_IN = f"{MODEL_DIR}/{MODEL_FILE}"
PROBE_BAR_FILE = "probes.json"      # beside MODEL_FILE in MODEL_DIR, optional: {"every_batch_below": x}, written
                                    # by the host before it renames MODEL_FILE in (`probe_bar_json`)
PROBE_BAR_KEY = "every_batch_below"
MAX_PROBE_BAR_BYTES = 4096

# --------------------------------------------------------------------------- the train container's environment
ENV_DATA = "AUTORESEARCH_DATA"           # the prepared data directory (required)
ENV_OUT = "AUTORESEARCH_OUT"             # where model.pt2 goes (required)
ENV_PRESET = "AUTORESEARCH_PRESET"       # tiny | cpu | h100 (trainer/presets.yaml)
ENV_BUDGET_S = "AUTORESEARCH_BUDGET_S"   # training seconds: the policy's train.budget_seconds (required)
ENV_SEED = "AUTORESEARCH_SEED"           # the trial's seed (the launcher sets it from trial.json)
ENV_MAX_STEPS = "AUTORESEARCH_MAX_STEPS"  # optional fixed step count (progress by steps)
ENV_DEVICE = "AUTORESEARCH_DEVICE"       # cpu | cuda
DEVICES = ("cpu", "cuda")

# --------------------------------------------------------------------------- exit codes
NO_CANDIDATE = 3            # the launcher: no train.py (or no valid seed) was handed over; train.py never ran
EXPORT_FAILED = 86          # the harness: the model could not be exported (export_error.txt says why)
EVAL_OK = 0                 # the evaluator wrote a result.json, whatever its status
EVAL_USAGE = 2              # the evaluator was called wrongly (unknown preset)
EVAL_CANNOT_RUN = 3         # the evaluator cannot run here (missing or corrupt data, no CUDA device)

# --------------------------------------------------------------------------- lines in the train container's output
LAUNCHED_LINE = "launch: running train.py"      # stderr, by the launcher just before train.py runs: nothing of the
                                                # candidate's runs before it, so its absence means the hand-over
                                                # failed
EXPORTING_LINE = "harness: exporting model.pt2"  # stdout, by the harness as its export starts (a scheduling hint:
                                                 # train.py can print it too, or never)
CALIBRATION_PREFIX = "launch: calibration "   # stderr, by the launcher after the hand-over and before
                                                # LAUNCHED_LINE: the seconds its fixed kernel took (lower = faster)
MAX_CALIBRATION_S = 3600.0  # a calibration value above this (or not finite and positive) is not one
MAX_PRELAUNCH_LINES = 200   # stderr lines read before LAUNCHED_LINE at most (the launcher prints a few)
STEP_PREFIX = "step="
MAX_STEP_FIELD = 32         # characters kept of one value of a progress line
MAX_STEP_LINE = 1000        # characters of a progress line that are parsed
_PAIR = re.compile(r"(\w+)=(\S+)")

# summary keys that look like a score: train.py's own report never carries one (the harness drops them, the host
# ignores them)
SCORE_KEY = re.compile(r"bpb|val_loss|score", re.IGNORECASE)


def step_line(step: int, loss: float, progress: float, remaining_s: float, extra: dict[str, str] | None = None) -> str:
    """The harness's progress line: "step=12 loss=3.2101 progress=0.123 remaining_s=201.2 key=value ..."."""
    parts = [f"{STEP_PREFIX}{int(step)}", f"loss={float(loss):.4f}", f"progress={progress:.3f}",
             f"remaining_s={remaining_s:.1f}"]
    return " ".join(parts + [f"{k}={v}" for k, v in (extra or {}).items()])


def is_step_line(line: str) -> bool:
    return line.lstrip().startswith(STEP_PREFIX)


def parse_step_line(line: str) -> dict[str, str]:
    """The key=value pairs of a progress line, each value cut to MAX_STEP_FIELD ({} for any other line)."""
    if not is_step_line(line):
        return {}
    return {k: v[:MAX_STEP_FIELD] for k, v in _PAIR.findall(line[:MAX_STEP_LINE])}


def calibration_line(seconds: float, kernel: str, threads: int, device: str) -> str:
    """The launcher's calibration line: "launch: calibration seconds=0.3412 kernel=matmul512f32x96 threads=2
    device=cpu"."""
    return f"{CALIBRATION_PREFIX}seconds={seconds:.4f} kernel={kernel} threads={int(threads)} device={device}"


def parse_calibration(stderr_lines) -> dict[str, str] | None:
    """The launcher's calibration, from the train container's stderr lines in their own order: the fields of the
    last calibration line before the first LAUNCHED_LINE ({"seconds": ..., "kernel": ..., ...}). None when there
    is no LAUNCHED_LINE among the first MAX_PRELAUNCH_LINES lines, or no valid calibration line before it.

    Only lines before the hand-over marker count: everything after it may be the candidate's, and the candidate
    cannot print before it (it has not run yet), so a calibration line it prints is never read."""
    found = None
    for n, line in enumerate(stderr_lines):
        line = line.rstrip("\r\n")
        if line == LAUNCHED_LINE:
            return found
        if n >= MAX_PRELAUNCH_LINES:
            return None
        if line.startswith(CALIBRATION_PREFIX):
            fields = {k: v[:MAX_STEP_FIELD] for k, v in _PAIR.findall(line[len(CALIBRATION_PREFIX):MAX_STEP_LINE])}
            try:
                seconds = float(fields.get("seconds", ""))
            except ValueError:
                continue
            if math.isfinite(seconds) and 0 < seconds <= MAX_CALIBRATION_S:
                found = fields
    return None


def last_line(text: str | None, limit: int = 300) -> str:
    """The last non-blank line of a log, stripped and cut to `limit` characters: a failure's one-line reason."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else "(no output)"


def probe_bar_json(every_batch_below: float) -> bytes:
    """PROBE_BAR_FILE's bytes for a bar (what the host writes): the evaluator probes every batch when val_bpb is
    below it, else one batch. Raises ValueError unless it is a finite number > 0."""
    data = json.dumps({PROBE_BAR_KEY: every_batch_below}).encode()
    parse_probe_bar(data)
    return data


def parse_probe_bar(data: bytes) -> float:
    """The bar in PROBE_BAR_FILE's bytes. Raises ValueError (one line: what is wrong, the value found) unless they
    are at most MAX_PROBE_BAR_BYTES of JSON, an object with exactly PROBE_BAR_KEY, a finite number > 0."""
    if len(data) > MAX_PROBE_BAR_BYTES:
        raise ValueError(f"over {MAX_PROBE_BAR_BYTES} bytes")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=lambda c: c)   # NaN/Infinity stay strings: refused
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"not JSON ({' '.join(str(e).split())[:80]})") from None
    if not isinstance(obj, dict) or set(obj) != {PROBE_BAR_KEY}:
        got = sorted(str(k)[:40] for k in obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"must be an object with exactly the key {PROBE_BAR_KEY!r}, got {got}")
    bar = obj[PROBE_BAR_KEY]
    try:
        ok = _is(bar, "num") and math.isfinite(float(bar)) and bar > 0
    except OverflowError:                   # an integer too big for a float
        ok = False
    if not ok:
        raise ValueError(f"{PROBE_BAR_KEY} must be a finite number > 0, got {_short(bar)}")
    return float(bar)


def read_probe_bar(path) -> float | None:
    """The bar in the file at `path` (parse_probe_bar), None when there is none. Raises ValueError (one line) when
    it is a link or not a regular file, or its bytes are not a bar."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{path} cannot be opened without following a link: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = os.read(fd, MAX_PROBE_BAR_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return parse_probe_bar(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- result.json
SCHEMA = "autoresearch.result/1"
STATUSES = ("ok", "violation", "invalid_model")
PROBE_NAMES = ("determinism", "batch_independence", "causality")
SCOPES = ("every_batch", "one_batch")   # probes.scope: which eval batches were probed
PROBE_KEYS = frozenset({"passed", "max_abs_diff", "evidence", "positions", "rows", "batches"})
PROBES_SECTION = frozenset({"seed", "tolerance", "causality_passes", "miss_bound", "scope", "every_batch_below",
                            *PROBE_NAMES})
TOP_KEYS = frozenset({"schema", "status", "val_bpb", "val_loss", "eval_tokens", "eval_bytes", "preset", "seq_len",
                      "eval_batch_size", "vocab_size", "device", "probes", "data", "model", "timings", "versions",
                      "error"})
SECTIONS = {  # section -> {field: (kind, nullable)}; kind: "str", "int", "num" (finite int or float), "nums"
    "data": {"manifest_sha256": ("str", True), "bpb_floor": ("num", True), "source": ("str", True),
             "baselines": ("nums", False)},
    "model": {"sha256": ("str", True), "bytes": ("int", True), "num_params": ("int", True)},
    "timings": {k: ("num", True) for k in ("data_s", "load_s", "probe_s", "eval_s", "total_s")},
    "versions": {"torch": ("str", False), "python": ("str", False), "evaluator": ("str", False)},
}


def _short(v) -> str:
    return type(v).__name__ if isinstance(v, (dict, list)) else str(v)[:40]


def _is(v, kind: str) -> bool:
    if isinstance(v, bool):
        return False
    if kind == "str":
        return isinstance(v, str)
    if kind == "int":
        return isinstance(v, int)
    if kind == "num":
        return isinstance(v, int) or isinstance(v, float) and math.isfinite(v)
    if kind == "ints":
        return isinstance(v, list) and all(_is(x, "int") for x in v)
    if kind == "nums":
        return isinstance(v, dict) and all(_is(x, "num") for x in v.values())
    raise ValueError(kind)


def check_result(obj) -> list[str]:
    """Problems with a result object against schema autoresearch.result/1 (empty list: valid). Never raises."""
    errs: list[str] = []

    def field(where: str, v, kind: str, nullable: bool = False) -> None:
        if not (v is None and nullable) and not _is(v, kind):
            errs.append(f"{where} must be {kind}{' or null' if nullable else ''}, got {_short(v)}")

    if not isinstance(obj, dict):
        return ["result must be a JSON object"]
    if set(obj) != TOP_KEYS:
        return [f"keys differ from the schema: missing {sorted(TOP_KEYS - set(obj))}, "
                f"extra {sorted(str(k)[:40] for k in set(obj) - TOP_KEYS)}"]
    if obj["schema"] != SCHEMA:
        errs.append(f"schema must be {SCHEMA!r}, got {_short(obj['schema'])}")
    if not isinstance(obj["status"], str) or obj["status"] not in STATUSES:
        errs.append(f"status must be one of {STATUSES}, got {_short(obj['status'])}")
    ok = obj["status"] == "ok"
    for key in ("val_bpb", "val_loss"):
        if ok and not (_is(obj[key], "num") and obj[key] > 0):
            errs.append(f"{key} must be a positive number when status is ok, got {_short(obj[key])}")
        if not ok and obj[key] is not None:
            errs.append(f"{key} must be null unless status is ok, got {_short(obj[key])}")
    for key in ("eval_tokens", "eval_bytes", "vocab_size"):
        field(key, obj[key], "int", nullable=not ok)
    for key in ("seq_len", "eval_batch_size"):
        field(key, obj[key], "int")
    field("preset", obj["preset"], "str")
    if obj["device"] not in DEVICES or not isinstance(obj["device"], str):
        errs.append(f"device must be cpu or cuda, got {_short(obj['device'])}")
    if ok and obj["error"] is not None:
        errs.append("error must be null when status is ok")
    field("error", obj["error"], "str", nullable=ok)
    _check_probes(obj["probes"], obj["status"], obj["val_bpb"], field, errs)
    for section, fields in SECTIONS.items():
        sec = obj[section]
        if not isinstance(sec, dict) or set(sec) != set(fields):
            errs.append(f"{section} must hold exactly {', '.join(sorted(fields))}")
            continue
        for k, (kind, nullable) in fields.items():
            field(f"{section}.{k}", sec[k], kind, nullable)
            if section == "timings" and _is(sec[k], "num") and sec[k] < 0:
                errs.append(f"timings.{k} must not be negative")
    return errs


def _check_probes(pr, status, val_bpb, field, errs: list[str]) -> None:
    ok = status == "ok"
    if not isinstance(pr, dict) or set(pr) != PROBES_SECTION:
        errs.append(f"probes must hold exactly seed, tolerance, causality_passes, miss_bound, scope, "
                    f"every_batch_below and {', '.join(PROBE_NAMES)}")
        return
    scope, bar = pr["scope"], pr["every_batch_below"]
    field("probes.seed", pr["seed"], "int", nullable=not ok)
    field("probes.tolerance", pr["tolerance"], "num")
    field("probes.causality_passes", pr["causality_passes"], "int", nullable=not ok)
    field("probes.miss_bound", pr["miss_bound"], "num", nullable=not ok or scope == "one_batch")
    if not (scope is None and not ok) and scope not in SCOPES:
        errs.append(f"probes.scope must be one of {SCOPES}{' or null' if not ok else ''}, got {_short(scope)}")
    if bar is not None and not (_is(bar, "num") and bar > 0):
        errs.append(f"probes.every_batch_below must be a positive number or null, got {_short(bar)}")
    if scope == "one_batch":
        # the evaluator's rule: one batch only when a bar was given and the score did not beat it
        if pr["miss_bound"] is not None:
            errs.append("probes.miss_bound must be null when scope is one_batch (no bound on the other batches)")
        if bar is None:
            errs.append("probes.scope is one_batch but no every_batch_below was given")
        elif ok and _is(val_bpb, "num") and _is(bar, "num") and val_bpb < bar:
            errs.append(f"probes.scope is one_batch but val_bpb {_short(val_bpb)} is below every_batch_below "
                        f"{_short(bar)}: a score that can be kept must be probed on every batch")
    _check_coverage(pr, scope, bar, ok, errs)
    for name in PROBE_NAMES:
        r = pr[name]
        if r is None:
            if ok:
                errs.append(f"probes.{name} must be present when status is ok")
            continue
        if not isinstance(r, dict) or set(r) != PROBE_KEYS:
            errs.append(f"probes.{name} must hold exactly {', '.join(sorted(PROBE_KEYS))}")
            continue
        if not isinstance(r["passed"], bool):
            errs.append(f"probes.{name}.passed must be true or false, got {_short(r['passed'])}")
        field(f"probes.{name}.max_abs_diff", r["max_abs_diff"], "num", nullable=r["passed"] is False)
        field(f"probes.{name}.evidence", r["evidence"], "str")
        field(f"probes.{name}.positions", r["positions"], "ints")
        field(f"probes.{name}.rows", r["rows"], "ints")
        field(f"probes.{name}.batches", r["batches"], "int")
        if ok and _is(r["batches"], "int") and r["batches"] < 1:
            errs.append(f"probes.{name}.batches must be at least 1 when status is ok")
        if ok and r["passed"] is not True:
            errs.append(f"probes.{name} did not pass but status is ok")
    if status == "violation" and not any(isinstance(pr[n], dict) and pr[n].get("passed") is False
                                         for n in PROBE_NAMES):
        errs.append("status is violation but no probe failed")


def _check_coverage(pr, scope, bar, ok: bool, errs: list[str]) -> None:
    """When ok, the probes' batch counts agree with the scope: one_batch, each probe 1; every_batch, batch
    independence and causality the same count (every eval batch: the result does not say how many there are), and
    with a bar determinism too (each batch was run again)."""
    counts = {n: pr[n]["batches"] for n in PROBE_NAMES if isinstance(pr[n], dict) and _is(pr[n].get("batches"), "int")}
    if not ok or len(counts) != len(PROBE_NAMES):
        return
    seen = ", ".join(f"{n} {_short(c)}" for n, c in counts.items())
    if scope == "one_batch" and set(counts.values()) != {1}:
        errs.append(f"probes checked {seen} batches but scope is one_batch (1 each)")
    if scope == "every_batch":
        want = {"batch_independence", "causality"} | ({"determinism"} if bar is not None else set())
        if len({counts[n] for n in want}) != 1:
            errs.append(f"probes checked {seen} batches but scope is every_batch (the same count for "
                        f"{', '.join(sorted(want))})")
