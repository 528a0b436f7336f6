"""The sources: where the documents of a data directory come from (synthetic, local files, downloaded parquet).

TRUSTED CODE (host only). Every source becomes a `Corpus`: two re-iterable document streams (train, val) plus a
deterministic description for the manifest. Choices made here, documented in the README's data section:

- `synthetic`: `trainer.prepare.synthetic` stories; train and val are independent streams of the same seed.
- `files:PATH`: PATH is a file or a directory (searched recursively, in sorted path order) of
  `.txt` (each block of text between blank lines is one document), `.jsonl` (one JSON object per line with a
  string "text") and `.parquet` (a string column "text"). Empty documents are skipped. The LAST `--val-docs`
  documents (default: a tenth, at most 1000) are the validation split, so the split is deterministic.
- `tinystories`, `climbmix`: parquet shards downloaded over HTTP(S) into a cache (`download.fetch`); the
  validation split is a shard of its own (TinyStories' validation file; climbmix's last shard, as autoresearch).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import download, synthetic
from .errors import PrepareError

SUPPORTED = (".txt", ".jsonl", ".parquet")
DATA_URL_ENV = "AUTORESEARCH_DATA_URL"
CACHE_ENV = "AUTORESEARCH_CACHE"
DEFAULT_SYNTHETIC_TRAIN_DOCS = 80_000
DEFAULT_SYNTHETIC_VAL_DOCS = 500         # ~47k tokens: about 2 s to score on 2 CPU cores
MAX_CACHED_SYNTHETIC_DOCS = 400_000       # about 150 MB of text
DEFAULT_REMOTE_VAL_DOCS = 1_000
MAX_DEFAULT_FILE_VAL_DOCS = 1_000


@dataclass
class Corpus:
    source: str
    params: dict                                # deterministic, recorded in the manifest
    train_docs: Callable[[], Iterator[str]]     # each call starts the stream again
    val_docs: Callable[[], Iterator[str]]
    val_bits: float | None = None               # synthetic only: sum over val docs of -log2 p(doc)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- synthetic

def synthetic_corpus(seed: int, train_docs: int | None, val_docs: int | None) -> Corpus:
    n_train = DEFAULT_SYNTHETIC_TRAIN_DOCS if train_docs is None else train_docs
    n_val = DEFAULT_SYNTHETIC_VAL_DOCS if val_docs is None else val_docs
    if n_train < 1 or n_val < 1:
        raise PrepareError(f"synthetic needs at least 1 train and 1 val document, got --train-docs {n_train} "
                           f"--val-docs {n_val}; use positive counts")
    val = list(synthetic.generate(seed, n_val, "val"))
    texts = [t for t, _ in val]
    done: list[list[str]] = []  # train docs are read twice (tokenizer, shards): keep one complete pass

    def train_stream():
        if done:
            yield from done[0]
            return
        keep, texts_ = n_train <= MAX_CACHED_SYNTHETIC_DOCS, []
        for text, _ in synthetic.generate(seed, n_train, "train"):
            if keep:
                texts_.append(text)
            yield text
        if keep:
            done.append(texts_)

    return Corpus(
        source="synthetic",
        params={"grammar": synthetic.GRAMMAR_VERSION, "seed": seed, "train_docs": n_train, "val_docs": n_val},
        train_docs=train_stream,
        val_docs=lambda: iter(texts),
        val_bits=sum(b for _, b in val),
    )


# --------------------------------------------------------------------------- local files

def files_corpus(spec: str, val_docs: int | None, train_docs: int | None) -> Corpus:
    root = Path(spec).expanduser()
    if not root.exists():
        raise PrepareError(f"files:{spec} does not exist; give an existing .txt/.jsonl/.parquet file or a "
                           "directory of them")
    if root.is_file():
        if root.suffix.lower() not in SUPPORTED:
            raise PrepareError(f"files:{spec} has suffix {root.suffix or '(none)'!r}, need one of "
                               f"{', '.join(SUPPORTED)}; convert it or point at a directory")
        paths = [root]
    else:
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not paths:
            raise PrepareError(f"files:{spec} holds no {'/'.join(SUPPORTED)} files; add some or fix the path")
    docs = [d for p in paths for d in read_documents(p)]
    if len(docs) < 2:
        raise PrepareError(f"files:{spec} holds {len(docs)} non-empty document(s), need at least 2 (one to "
                           "train on, one to validate); add text or check the file format")
    n_val = max(1, min(MAX_DEFAULT_FILE_VAL_DOCS, len(docs) // 10)) if val_docs is None else val_docs
    if not 1 <= n_val < len(docs):
        raise PrepareError(f"--val-docs {n_val} does not fit files:{spec} with {len(docs)} documents; "
                           f"use 1 to {len(docs) - 1}")
    train, val = docs[:-n_val], docs[-n_val:]
    if train_docs is not None:
        train = train[:train_docs]
    base = root if root.is_dir() else root.parent
    return Corpus(
        source=f"files:{spec}",
        params={"files": {p.relative_to(base).as_posix(): download.sha256_of(p) for p in paths},
                "split": "last documents are val", "train_docs": len(train), "val_docs": len(val)},
        train_docs=lambda: iter(train),
        val_docs=lambda: iter(val),
    )


def read_documents(path: Path) -> list[str]:
    """The documents of one local file (format by suffix); PrepareError naming the file when it is unreadable."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return list(parquet_texts(path))
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PrepareError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); re-save it as UTF-8") from None
    if suffix == ".txt":
        return [b.strip() for b in re.split(r"\n[ \t\r\f\v]*\n", text) if b.strip()]
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrepareError(f"{path} line {n} is not JSON ({e.msg}); each line must be an object with a "
                               "\"text\" string") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise PrepareError(f"{path} line {n} has no string \"text\" field; each line must be an object with "
                               "a \"text\" string")
        if obj["text"].strip():
            docs.append(obj["text"])
    return docs


def parquet_texts(path: Path) -> Iterator[str]:
    """The non-empty values of the "text" column, in row order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        if "text" not in f.schema_arrow.names:
            raise PrepareError(f"{path} has no \"text\" column (columns: {', '.join(f.schema_arrow.names)[:200]}); "
                               "rename the text column to \"text\"")
        for batch in f.iter_batches(columns=["text"], batch_size=1024):
            for value in batch.column(0).to_pylist():
                if isinstance(value, str) and value.strip():
                    yield value
    except PrepareError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise PrepareError(f"{path} is not a readable parquet file ({download._one_line(e)}); replace or remove "
                           "it (a partial download is re-fetched when you delete it)") from None


def check_parquet(path: Path) -> None:
    """Raises unless `path` opens as parquet with a "text" column (run on every download before it is kept)."""
    import pyarrow.parquet as pq

    names = pq.ParquetFile(path).schema_arrow.names
    if "text" not in names:
        raise ValueError(f"no \"text\" column (columns: {', '.join(names)[:200]})")


# --------------------------------------------------------------------------- downloaded datasets

@dataclass(frozen=True)
class Dataset:
    name: str
    base_url: str
    train_files: Callable[[int], list[str]]     # number of train shards -> file names
    max_train_shards: int
    default_train_shards: int
    val_file: str
    sha256: dict                                # file name -> sha256 (trusted only at the default base URL)


_TS_TRAIN = ["train-00000-of-00004-2d5a1467fff1081b.parquet", "train-00001-of-00004-5852b56a2bd28fd9.parquet",
             "train-00002-of-00004-a26307300439e943.parquet", "train-00003-of-00004-d243063613e5a057.parquet"]
DATASETS = {
    # roneneldan/TinyStories, pinned to a revision so that the file names and checksums cannot drift.
    "tinystories": Dataset(
        name="tinystories",
        base_url="https://huggingface.co/datasets/roneneldan/TinyStories/resolve/"
                 "7dfb18bd830e361f237a94bcdb466bc6e7b09050/data",
        train_files=lambda n: _TS_TRAIN[:n], max_train_shards=4, default_train_shards=1,
        val_file="validation-00000-of-00001-869c898b519ad725.parquet",
        sha256={_TS_TRAIN[0]: "77cf780cebe52b6e83e3a2ac84bc56d8059363113e41d17a023f1d8b2ed0fc0b",
                _TS_TRAIN[1]: "e2f173a6dcc2b5895183e8ad376e115bd5c06764eb0cfc01ce1add156b2d017f",
                _TS_TRAIN[2]: "cac73cd1a0973a7fccde022a5a5c78f8ba58ea6849541835c58e7c5fc747f2ef",
                _TS_TRAIN[3]: "862514ae75723ddd339337f1ef7617b88f82290dcddd57445e1d38d257ca7891"}),
    # karpathy/climbmix-400b-shuffle: shard_00000 ... shard_06542; the last one is validation (as autoresearch).
    "climbmix": Dataset(
        name="climbmix",
        base_url="https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main",
        train_files=lambda n: [f"shard_{i:05d}.parquet" for i in range(n)], max_train_shards=6542,
        default_train_shards=1, val_file="shard_06542.parquet", sha256={}),
}


def remote_corpus(name: str, *, base_url: str | None, shards: int | None, cache_dir: str | None,
                  train_docs: int | None, val_docs: int | None, retries: int = 5, backoff: float = 1.0,
                  timeout: float = 60.0, log=print) -> Corpus:
    ds = DATASETS[name]
    url = (base_url or os.environ.get(DATA_URL_ENV) or ds.base_url).rstrip("/")
    if not re.match(r"^https?://", url):
        raise PrepareError(f"base URL {url!r} must start with http:// or https://; fix --base-url or "
                           f"{DATA_URL_ENV}")
    n = ds.default_train_shards if shards is None else shards
    if not 1 <= n <= ds.max_train_shards:
        raise PrepareError(f"--shards {n} is out of range for {name}: use 1 to {ds.max_train_shards}")
    n_val = DEFAULT_REMOTE_VAL_DOCS if val_docs is None else val_docs
    if n_val < 1 or (train_docs is not None and train_docs < 1):
        raise PrepareError(f"--train-docs and --val-docs must be at least 1, got {train_docs} and {n_val}")
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autoresearch").expanduser()
    cache = cache / "downloads" / name
    trusted = url == ds.base_url
    files = {}
    for fname in [*ds.train_files(n), ds.val_file]:
        log(f"fetching {url}/{fname}")
        files[fname] = download.fetch(f"{url}/{fname}", cache / fname, ds.sha256.get(fname) if trusted else None,
                                      retries=retries, backoff=backoff, timeout=timeout, check=check_parquet,
                                      log=log)
    train_paths = [cache / f for f in ds.train_files(n)]

    def train_stream():
        count = 0
        for p in train_paths:
            for text in parquet_texts(p):
                if train_docs is not None and count >= train_docs:
                    return
                count += 1
                yield text

    def val_stream():
        for i, text in enumerate(parquet_texts(cache / ds.val_file)):
            if i >= n_val:
                return
            yield text

    return Corpus(
        source=name,
        params={"files": files, "train_shards": n, "val_file": ds.val_file, "train_docs": train_docs,
                "val_docs": n_val, "checksums_pinned": trusted and bool(ds.sha256)},
        train_docs=train_stream, val_docs=val_stream,
        notes=[] if trusted else [f"downloaded from {url}; checksums known only for the default location"],
    )


def open_source(spec: str, **opts) -> Corpus:
    """Dispatch on the SOURCE argument: synthetic, files:PATH, tinystories, climbmix."""
    if spec == "synthetic":
        return synthetic_corpus(opts.get("seed", 0), opts.get("train_docs"), opts.get("val_docs"))
    if spec.startswith("files:"):
        if not spec[len("files:"):]:
            raise PrepareError("files: needs a path, e.g. files:./my_corpus (a file or a directory)")
        return files_corpus(spec[len("files:"):], opts.get("val_docs"), opts.get("train_docs"))
    if spec in DATASETS:
        keys = ("base_url", "shards", "cache_dir", "train_docs", "val_docs", "retries", "backoff", "timeout", "log")
        return remote_corpus(spec, **{k: opts[k] for k in keys if k in opts})
    raise PrepareError(f"unknown source {spec!r}; use one of: synthetic, files:PATH, {', '.join(DATASETS)}")
