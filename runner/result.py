"""What a trial yields, read as HOSTILE input: the score (result.json) and the train summary (informational).

TRUSTED CODE (host side). The score comes only from the eval container's result.json, which is written by the
trusted evaluator but about a model the agent built, inside a container; it is validated here as if an attacker
wrote it: at most MAX_RESULT_BYTES, strict JSON (NaN/Infinity rejected, nesting bounded), every number finite,
the schema "autoresearch.result/1" (trainer.contract.check_result, the one definition the evaluator checks its
own output against, plus the host's checks here), and, when read from disk, a regular file inside the output
directory reached without following any link. A valid result may have been probed on one batch only
(`probes.scope` "one_batch": its val_bpb did not beat the bar the host gave, and check_result refuses one that
did); such a score can discard a candidate but must never keep one.

The train summary is the `key: value` block after the last `---` line of train.py's stdout. It is the agent's
own account: bounded, numbers only, never the score (keys that look like a score, trainer.contract.SCORE_KEY,
are dropped). This module imports no torch: trainer.contract is standard library only.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

from trainer.contract import RESULT_FILE, SCHEMA, STATUSES, check_result
from trainer.contract import SCORE_KEY as _SCORE_KEY

MAX_RESULT_BYTES = 256 * 1024
MAX_DEPTH = 8
MAX_BPB = 64.0                       # bits per byte above this is not a measurement (8 = uniform over bytes)
SUMMARY_MAX_KEYS = 32
_SUMMARY_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


class ResultError(Exception):
    """result.json is not acceptable. str() is one line: what is wrong with it."""


def _reject_constant(name: str):
    raise ResultError(f"result.json holds the non-finite number {name}")


def _check_tree(obj, depth: int = 0, where: str = "result") -> None:
    if depth > MAX_DEPTH:
        raise ResultError(f"result.json nests deeper than {MAX_DEPTH} levels at {where}")
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ResultError(f"result.json holds a non-finite number at {where}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_tree(v, depth + 1, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_tree(v, depth + 1, f"{where}[{i}]")


def parse_result(data: bytes) -> dict:
    """Validate result.json's bytes; returns the document or raises ResultError (one line)."""
    if len(data) > MAX_RESULT_BYTES:
        raise ResultError(f"result.json is {len(data):,} bytes, over the cap of {MAX_RESULT_BYTES:,}")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ResultError("result.json is not UTF-8") from None
    except RecursionError:
        raise ResultError(f"result.json nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise ResultError(f"result.json is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(obj, dict):
        raise ResultError(f"result.json must be a JSON object, got {type(obj).__name__}")
    _check_tree(obj)
    if obj.get("schema") != SCHEMA:
        raise ResultError(f"result.json schema is {str(obj.get('schema'))[:60]!r}, expected {SCHEMA!r}")
    if obj.get("status") not in STATUSES:
        raise ResultError(f"result.json status is {str(obj.get('status'))[:60]!r}, expected one of {STATUSES}")
    bpb = obj.get("val_bpb")
    if obj["status"] == "ok":
        if isinstance(bpb, bool) or not isinstance(bpb, (int, float)) or not 0 < bpb <= MAX_BPB:
            raise ResultError(f"result.json val_bpb is {str(bpb)[:40]}, expected a number in (0, {MAX_BPB:g}] "
                              "when status is ok")
    elif bpb is not None:
        raise ResultError(f"result.json carries val_bpb {str(bpb)[:40]} with status {obj['status']}")
    problems = check_result(obj)
    if problems:
        raise ResultError(f"result.json breaks schema {SCHEMA}: {problems[0][:200]}")
    return obj


def read_result(out_dir: str | os.PathLike, name: str = RESULT_FILE) -> dict:
    """Read and validate OUT_DIR/NAME from disk without following links (for results written to a host dir)."""
    out_dir = Path(out_dir)
    if "/" in name or name in (".", ".."):
        raise ResultError(f"result file name {name!r} must be a plain name inside {out_dir}")
    try:
        dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise ResultError(f"output directory {out_dir} cannot be opened without following a link: "
                          f"{e.strerror}") from None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ResultError(f"no {name} in {out_dir}") from None
        except OSError as e:
            raise ResultError(f"{out_dir / name} cannot be opened without following a link: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ResultError(f"{out_dir / name} is not a regular file")
            if st.st_size > MAX_RESULT_BYTES:
                raise ResultError(f"result.json is {st.st_size:,} bytes, over the cap of {MAX_RESULT_BYTES:,}")
            data = f.read(MAX_RESULT_BYTES + 1)
    finally:
        os.close(dir_fd)
    return parse_result(data)


def parse_summary(lines) -> dict[str, float]:
    """The `key: value` lines after the last `---` line: numbers only, at most SUMMARY_MAX_KEYS, never a score."""
    lines = [str(line).rstrip() for line in lines]
    try:
        start = len(lines) - 1 - lines[::-1].index("---")
    except ValueError:
        return {}
    out: dict[str, float] = {}
    for line in lines[start + 1:]:
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not _SUMMARY_KEY.match(key) or _SCORE_KEY.search(key) or key in out:
            continue
        try:
            number = float(value.strip()[:40])
        except ValueError:
            continue
        if math.isfinite(number):
            out[key] = number
        if len(out) >= SUMMARY_MAX_KEYS:
            break
    return out
