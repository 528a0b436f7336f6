"""The pipeline: source -> tokenizer -> token shards -> baselines -> manifest, into a data directory, atomically.

TRUSTED CODE (host only). Everything is written into a sibling `DIR.tmp-<pid>-<n>` and renamed to DIR only
after `manifest.json` (written last, with the sha256 of every file) is in place, so an interrupted or failed
prepare never leaves a DIR that looks prepared. An existing prepared DIR is replaced only with `force=True`,
and a directory holding anything else is never replaced.
"""
from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from trainer.shards import MANIFEST, SPLITS, load_manifest, write_manifest, write_shard

from . import tokenizer as tok
from .errors import PrepareError
from .sources import open_source

DEFAULT_TOKENIZER_CHARS = 200_000_000   # text used to train the BPE (enough for any source here)
DEFAULT_SHARD_TOKENS = 1 << 24          # at most this many tokens per shard file (32 MiB); documents stay whole
ENCODE_BATCH = 2048
_OURS = {MANIFEST, "tokenizer", *SPLITS}
_counter = itertools.count()


def prepare(source: str, out, *, vocab_size: int = tok.DEFAULT_VOCAB, seed: int = 0, train_docs: int | None = None,
            val_docs: int | None = None, base_url: str | None = None, shards: int | None = None,
            cache_dir: str | None = None, tokenizer_chars: int = DEFAULT_TOKENIZER_CHARS,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, force: bool = False, retries: int = 5,
            backoff: float = 1.0, timeout: float = 60.0, log: Callable[[str], None] = print) -> dict:
    """Prepare the data directory `out` from `source`; returns its manifest. Raises PrepareError (one line)."""
    t0 = time.monotonic()
    tok.check_vocab_size(vocab_size)
    for flag, value, low in (("--train-docs", train_docs, 1), ("--val-docs", val_docs, 1),
                             ("--tokenizer-chars", tokenizer_chars, 1), ("--shard-tokens", shard_tokens, 256)):
        if value is not None and value < low:
            raise PrepareError(f"{flag} {value} is too small: need at least {low}")
    out = Path(out).expanduser().absolute()
    _check_out(out, force)
    corpus = open_source(source, seed=seed, train_docs=train_docs, val_docs=val_docs, base_url=base_url,
                         shards=shards, cache_dir=cache_dir, retries=retries, backoff=backoff, timeout=timeout,
                         log=log)
    for note in corpus.notes:
        log(f"notice: {note}")
    _remove_stale_tmp(out, log)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{next(_counter)}")
    try:
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise PrepareError(f"cannot create {tmp}: {e.strerror}; choose an --out on a writable disk") from None
        manifest = _build(corpus, tmp, vocab_size, tokenizer_chars, shard_tokens, log)
        manifest["params"].update(vocab_size=vocab_size, tokenizer_chars=tokenizer_chars,
                                  shard_tokens=shard_tokens)
        write_manifest(tmp, manifest)
        _install(tmp, out)
    except OSError as e:
        raise PrepareError(f"writing {out} failed: {e.strerror or e}; free disk space or choose another --out"
                           ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = load_manifest(out)
    _summary(out, manifest, time.monotonic() - t0, log)
    return manifest


# --------------------------------------------------------------------------- the output directory

def _check_out(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise PrepareError(f"--out {out} exists and is not a directory; choose another --out")
    entries = {p.name for p in out.iterdir()}
    foreign = sorted(entries - _OURS)
    if foreign:
        raise PrepareError(f"--out {out} holds files that are not prepared data (e.g. {foreign[0]!r}); "
                           "choose an empty or new directory")
    if (out / MANIFEST).exists() and not force:
        raise PrepareError(f"--out {out} already holds prepared data (manifest.json); use --force to replace it "
                           "or choose another --out")
    if entries and not force:
        raise PrepareError(f"--out {out} holds an unfinished preparation (no manifest.json); use --force to "
                           "replace it")


def _remove_stale_tmp(out: Path, log) -> None:
    """Delete `OUT.tmp-<pid>-<n>` directories left by a prepare that was killed (its pid no longer runs)."""
    for p in out.parent.glob(f"{out.name}.tmp-*-*"):
        try:
            pid = int(p.name[len(out.name) + 5:].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            log(f"removing {p}, left by an interrupted prepare")
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished tmp dir to out (an old out, already vetted by _check_out, is moved aside first)."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}-{next(_counter)}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- building

def _build(corpus, root: Path, vocab_size: int, tokenizer_chars: int, shard_tokens: int, log) -> dict:
    t = time.monotonic()
    for split, docs in (("train", corpus.train_docs), ("val", corpus.val_docs)):
        if next(iter(docs()), None) is None:
            raise PrepareError(f"source {corpus.source} has no {split} documents (empty corpus); add text or "
                               f"check --{split}-docs")
    enc, meta, rust = tok.train(_capped(corpus.train_docs(), tokenizer_chars), vocab_size)
    if meta["saturated"]:
        log(f"notice: BPE saturated after {meta['n_merges']} merges (no pair of tokens left to merge in this "
            f"corpus): the vocabulary has {meta['vocab_size']} tokens, not the requested {vocab_size}; "
            "tokenizer.json records both")
    samples = list(itertools.islice(corpus.train_docs(), 50)) + list(itertools.islice(corpus.val_docs(), 50))
    tok.check_round_trip(enc, samples, reference=rust)
    tok.save(enc, meta, root)
    log(f"tokenizer: {meta['vocab_size']} tokens ({meta['n_merges']} merges) in {time.monotonic() - t:.1f}s")

    splits, counts = {}, {}
    for split in SPLITS:
        t = time.monotonic()
        docs = corpus.train_docs() if split == "train" else corpus.val_docs()
        splits[split], counts[split] = _write_split(enc, meta["bos_id"], docs, root / split, shard_tokens)
        log(f"{split}: {splits[split]['docs']} docs, {splits[split]['tokens']} tokens, "
            f"{splits[split]['bytes']} bytes in {time.monotonic() - t:.1f}s")
    token_bytes = np.asarray(tok.token_byte_lengths(enc), dtype=np.int64)
    for split in SPLITS:  # the evaluator's byte count (from token_bytes) must equal the UTF-8 byte count
        if int(counts[split]["tokens"] @ token_bytes) != splits[split]["bytes"]:
            raise PrepareError(f"{split} bytes by token_bytes differ from the text's UTF-8 bytes; this is a bug")
    val_bytes = splits["val"]["bytes"]
    floor = None if corpus.val_bits is None else corpus.val_bits / val_bytes
    return {
        "source": corpus.source,
        "params": dict(corpus.params),
        "tokenizer": meta,
        "splits": splits,
        "bpb_floor": floor,
        "val_bits": corpus.val_bits,
        "baselines": baselines(counts, meta, val_bytes),
        "created_by": "trainer.prepare",
    }


def _capped(docs: Iterable[str], max_chars: int) -> Iterator[str]:
    used = 0
    for d in docs:
        if used >= max_chars:
            return
        d = d[: max_chars - used]
        used += len(d)
        yield d


def _write_split(enc, bos: int, docs: Iterable[str], folder: Path, shard_tokens: int):
    """Encode documents (each preceded by BOS) into shards; returns (stats, token and byte counts)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = enc.n_vocab
    tok_counts = np.zeros(n_vocab, dtype=np.int64)
    byte_counts = np.zeros(256, dtype=np.int64)
    stats = {"docs": 0, "tokens": 0, "bytes": 0, "shards": 0, "max_doc_tokens": 0}
    pending, pending_n = [], 0

    def flush():
        nonlocal pending, pending_n
        if pending:
            arr = np.concatenate(pending)
            write_shard(folder / f"shard_{stats['shards']:05d}.bin", arr)
            tok_counts[:] += np.bincount(arr, minlength=n_vocab)
            stats["shards"] += 1
            pending, pending_n = [], 0

    docs = iter(docs)
    while batch := list(itertools.islice(docs, ENCODE_BATCH)):
        raw = [d.encode("utf-8") for d in batch]
        byte_counts += np.bincount(np.frombuffer(b"".join(raw), dtype=np.uint8), minlength=256)
        stats["bytes"] += sum(map(len, raw))
        for ids in enc.encode_ordinary_batch(batch, num_threads=2):
            arr = np.empty(len(ids) + 1, dtype=np.uint16)
            arr[0] = bos
            arr[1:] = ids
            if pending_n and pending_n + arr.size > shard_tokens:
                flush()
            pending.append(arr)
            pending_n += arr.size
            stats["docs"] += 1
            stats["tokens"] += arr.size
            stats["max_doc_tokens"] = max(stats["max_doc_tokens"], arr.size)
    flush()
    tok_counts[bos] = 0  # BOS is never a scored target
    return stats, {"tokens": tok_counts, "bytes": byte_counts}


def baselines(counts: dict, meta: dict, val_bytes: int) -> dict:
    """Unigram models fit on train with add-one smoothing, scored on val in bits per byte (BOS not scored)."""
    special = set(meta["special_tokens"].values())
    keep = np.array([i not in special for i in range(meta["vocab_size"])])
    train_t, val_t = counts["train"]["tokens"][keep], counts["val"]["tokens"][keep]
    p_tok = (train_t + 1) / (train_t.sum() + keep.sum())
    train_b, val_b = counts["train"]["bytes"], counts["val"]["bytes"]
    p_byte = (train_b + 1) / (train_b.sum() + 256)
    return {"unigram_token_bpb": float(-(val_t * np.log2(p_tok)).sum() / val_bytes),
            "unigram_byte_bpb": float(-(val_b * np.log2(p_byte)).sum() / val_bytes)}


def _summary(out: Path, m: dict, seconds: float, log) -> None:
    tr, va = m["splits"]["train"], m["splits"]["val"]
    floor = "n/a" if m["bpb_floor"] is None else f"{m['bpb_floor']:.4f}"
    b = m["baselines"]
    log(f"prepared {out} in {seconds:.1f}s: train {tr['docs']} docs / {tr['tokens']} tokens, val {va['docs']} docs "
        f"/ {va['tokens']} tokens ({va['tokens'] / va['docs']:.0f} per doc, max {va['max_doc_tokens']}), vocab "
        f"{m['tokenizer']['vocab_size']}; bpb floor {floor}, unigram token {b['unigram_token_bpb']:.4f}, "
        f"unigram byte {b['unigram_byte_bpb']:.4f}")
