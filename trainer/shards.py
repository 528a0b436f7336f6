"""The on-disk data format shared by `prepare`, the harness, the evaluator and the runner.

TRUSTED CODE. Baked into the trial image; the agent's train.py may import it but cannot change it.

A prepared data directory looks like this (see README, "Data"):

    DATA/
      manifest.json              sha256 of every file below, the tokenizer, split stats, the BPB floor
      tokenizer/tokenizer.json   vocab size, BOS id, special tokens, split pattern (mounted in train and eval)
      tokenizer/tokenizer.tiktoken   the BPE ranks, tiktoken's base64 format (never pickled)
      tokenizer/token_bytes.json     byte length of every token id; 0 for special tokens (the evaluator needs it)
      train/shard_00000.bin ...  training tokens (mounted read-only into the train container only)
      val/shard_00000.bin ...    validation tokens (mounted read-only into the eval container only)

A shard is a 16-byte header (8 magic bytes, then the token count as little-endian uint64) followed by the
tokens as little-endian uint16. Documents are concatenated; every document starts with the BOS token.
Every write goes to a temporary name and is renamed at the end, so a crash never leaves a file that looks
complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

MAGIC = b"ARSHRD01"
HEADER_BYTES = 16
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB = 2**16
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "autoresearch.data/1"
SPLITS = ("train", "val")


class DataError(Exception):
    """Prepared data is missing, partial or corrupt. The message is one line: what, where, and what to do."""


# --------------------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- shards

def write_shard(path: str | os.PathLike, tokens) -> None:
    """Write token ids (any int array < 65536) as one shard, atomically."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"shard tokens must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= MAX_VOCAB):
        raise ValueError(f"token ids must lie in [0, {MAX_VOCAB}), got [{arr.min()}, {arr.max()}]")
    header = MAGIC + np.uint64(arr.size).astype("<u8").tobytes()
    atomic_write_bytes(path, header + arr.astype(TOKEN_DTYPE).tobytes())


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-map one shard read-only. Raises DataError if the header or length is wrong."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror}; run `autoresearch prepare` again") from None
    if len(header) < HEADER_BYTES or header[:8] != MAGIC:
        raise DataError(f"{path} is not a token shard (bad header); run `autoresearch prepare` again")
    n = int(np.frombuffer(header[8:], dtype="<u8")[0])
    if size != HEADER_BYTES + 2 * n:
        raise DataError(f"{path} is truncated: header says {n} tokens, file holds {(size - HEADER_BYTES) // 2}; "
                        "run `autoresearch prepare` again")
    if n == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))


def shard_paths(root: str | os.PathLike, split: str) -> list[Path]:
    d = Path(root) / split
    paths = sorted(d.glob("shard_*.bin")) if d.is_dir() else []
    if not paths:
        raise DataError(f"no {split} shards in {d}; run `autoresearch prepare synthetic --out {root}` "
                        "(or check that the right data directory is mounted)")
    return paths


def load_split(root: str | os.PathLike, split: str) -> np.ndarray:
    """All tokens of one split, concatenated (in shard order)."""
    parts = [read_shard(p) for p in shard_paths(root, split)]
    return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])


def split_documents(tokens: np.ndarray, bos_id: int) -> list[np.ndarray]:
    """Cut a token stream at its BOS tokens: each document starts with BOS."""
    starts = np.flatnonzero(tokens == bos_id)
    if tokens.size and (starts.size == 0 or starts[0] != 0):
        raise DataError("token stream does not start with BOS; the shards were not written by `prepare`")
    ends = np.append(starts[1:], tokens.size)
    return [tokens[s:e] for s, e in zip(starts, ends)]


# --------------------------------------------------------------------------- tokenizer files

def load_tokenizer_meta(root: str | os.PathLike) -> dict:
    """tokenizer/tokenizer.json: {"vocab_size", "bos_id", "special_tokens", "pattern", ...}."""
    path = Path(root) / "tokenizer" / "tokenizer.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"missing {path}; run `autoresearch prepare` first") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}; run `autoresearch prepare` again") from None
    for key in ("vocab_size", "bos_id"):
        if not isinstance(meta.get(key), int):
            raise DataError(f"{path} lacks an integer {key!r}; run `autoresearch prepare` again")
    return meta


def load_token_bytes(root: str | os.PathLike) -> np.ndarray:
    """Byte length of each token id (int64 array of length vocab_size); special tokens have length 0."""
    path = Path(root) / "tokenizer" / "token_bytes.json"
    try:
        arr = np.asarray(json.loads(path.read_text()), dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"missing {path}; run `autoresearch prepare` first") from None
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"cannot read {path}: {e}; run `autoresearch prepare` again") from None
    if arr.ndim != 1 or (arr < 0).any():
        raise DataError(f"{path} must be a flat list of non-negative byte lengths")
    return arr


# --------------------------------------------------------------------------- manifest

def build_file_table(root: str | os.PathLike) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} for every data file under root (the manifest itself excluded)."""
    root = Path(root)
    table = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST and not p.name.startswith("."):
            table[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return table


def write_manifest(root: str | os.PathLike, manifest: dict) -> str:
    """Add the file table and write manifest.json atomically (last step of `prepare`). Returns its sha256."""
    manifest = dict(manifest, schema=MANIFEST_SCHEMA, files=build_file_table(root))
    atomic_write_json(Path(root) / MANIFEST, manifest)
    return manifest_sha256(root)


def manifest_sha256(root: str | os.PathLike) -> str:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {root}: the data was never prepared, or preparation did not finish; "
                        f"run `autoresearch prepare synthetic --out {root}`")
    return sha256_file(path)


def load_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST
    manifest_sha256(root)  # raises the friendly error when missing
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot parse {path}: {e}; run `autoresearch prepare` again") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise DataError(f"{path} is not an autoresearch data manifest (schema {MANIFEST_SCHEMA} expected)")
    if not isinstance(manifest.get("files"), dict):
        raise DataError(f"{path} has no file table; run `autoresearch prepare` again")
    return manifest


def verify(root: str | os.PathLike, prefixes: tuple[str, ...] | None = None) -> dict:
    """Check every file the manifest lists (optionally only those under the given prefixes, e.g. ("val/",)).

    Returns the manifest. Raises DataError naming the first missing or corrupt file.
    """
    root = Path(root)
    manifest = load_manifest(root)
    for rel, entry in manifest["files"].items():
        if prefixes and not rel.startswith(prefixes):
            continue
        p = root / rel
        if not p.is_file():
            raise DataError(f"data file {p} listed in the manifest is missing; run `autoresearch prepare` again")
        if p.stat().st_size != entry.get("bytes") or sha256_file(p) != entry.get("sha256"):
            raise DataError(f"data file {p} does not match its sha256 in {root / MANIFEST} (corrupt or changed); "
                            "run `autoresearch prepare` again")
    return manifest
