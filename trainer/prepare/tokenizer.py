"""The tokenizer: a byte-level BPE trained with rustbpe, used through tiktoken, saved in plain text formats.

TRUSTED CODE (host only). The harness and the evaluator never import this module: they read
`tokenizer/tokenizer.json` and `tokenizer/token_bytes.json` through `trainer.shards`.

Files written under DATA/tokenizer/:
- `tokenizer.tiktoken`: one line per mergeable token, "base64(bytes) rank" (the format `tiktoken.load` reads);
- `tokenizer.json`: vocab_size (what exists, specials included), requested_vocab_size, n_merges, bos_id,
  special_tokens {name: id}, pattern, saturated (BPE ran out of pairs before the requested size);
- `token_bytes.json`: the UTF-8 byte length of every id, 0 for special tokens.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterable

import tiktoken

from trainer.shards import MAX_VOCAB, DataError, atomic_write_bytes, atomic_write_json

from .errors import PrepareError

# GPT-4's split pattern (cl100k_base).
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
                 r"""\s*[\r\n]|\s+(?!\S)|\s+""")
BOS = "<|bos|>"
SPECIAL_TOKENS = [BOS, "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
DEFAULT_VOCAB = 8192
TOKENIZER_DIR = "tokenizer"


def check_vocab_size(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise PrepareError(f"--vocab-size {vocab_size} is out of range: need {MIN_VOCAB} (256 bytes + "
                           f"{len(SPECIAL_TOKENS)} special tokens) to {MAX_VOCAB} (uint16 shards); pick e.g. "
                           f"{DEFAULT_VOCAB}")


def train(texts: Iterable[str], vocab_size: int):
    """Train BPE on `texts`; returns (tiktoken encoding, tokenizer.json metadata, the rustbpe tokenizer).

    When the corpus runs out of pairs to merge (small synthetic vocabularies do), the result is smaller than
    asked: `meta["vocab_size"]` is what was built and `meta["saturated"]` is True.
    """
    import rustbpe

    check_vocab_size(vocab_size)
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
    enc = _encoding(ranks, tok.get_pattern())
    n_merges = len(ranks) - 256
    meta = {
        "vocab_size": enc.n_vocab,
        "requested_vocab_size": vocab_size,
        "n_merges": n_merges,
        "saturated": enc.n_vocab < vocab_size,
        "bos_id": enc.encode_single_token(BOS),
        "special_tokens": {s: enc.encode_single_token(s) for s in SPECIAL_TOKENS},
        "pattern": tok.get_pattern(),
    }
    return enc, meta, tok


def _encoding(ranks: dict[bytes, int], pattern: str) -> tiktoken.Encoding:
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)):
        raise PrepareError(f"BPE ranks are not 0..{n - 1}; the tokenizer file is damaged, run prepare again")
    specials = {s: n + i for i, s in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name="autoresearch", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def token_byte_lengths(enc: tiktoken.Encoding) -> list[int]:
    special_ids = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    return [0 if i in special_ids else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]


def check_round_trip(enc: tiktoken.Encoding, samples: list[str], reference=None) -> None:
    """Encode/decode sample docs; with `reference` (the rustbpe tokenizer) also compare the token ids."""
    for text in samples:
        ids = enc.encode_ordinary(text)
        if enc.decode(ids) != text:
            raise PrepareError(f"tokenizer round trip failed on a sample document ({text[:40]!r}...); "
                               "this is a bug in prepare, please report it")
        if reference is not None and list(reference.encode(text)) != ids:
            raise PrepareError("tiktoken and rustbpe disagree on a sample document; this is a bug in prepare")


def save(enc: tiktoken.Encoding, meta: dict, data_dir: Path) -> None:
    d = Path(data_dir) / TOKENIZER_DIR
    ranks = enc._mergeable_ranks  # bytes -> rank (public API exposes no other accessor)
    lines = [f"{base64.b64encode(b).decode()} {r}" for b, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    atomic_write_bytes(d / "tokenizer.tiktoken", ("\n".join(lines) + "\n").encode())
    atomic_write_json(d / "tokenizer.json", meta)
    atomic_write_json(d / "token_bytes.json", token_byte_lengths(enc))


def load_encoding(data_dir) -> tiktoken.Encoding:
    """The tiktoken.Encoding of a prepared data directory (for the runner, benchmarks and tests).

    Raises trainer.shards.DataError (one line) when the tokenizer files are missing or inconsistent.
    """
    d = Path(data_dir) / TOKENIZER_DIR
    try:
        meta = json.loads((d / "tokenizer.json").read_text())
        ranks = {}
        for line in (d / "tokenizer.tiktoken").read_text().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        pattern = meta["pattern"]
        enc = _encoding(ranks, pattern)
    except FileNotFoundError as e:
        raise DataError(f"missing {e.filename}; run `autoresearch prepare` first") from None
    except (OSError, ValueError, KeyError, TypeError, PrepareError) as e:
        raise DataError(f"cannot read the tokenizer in {d}: {e}; run `autoresearch prepare` again") from None
    if enc.n_vocab != meta.get("vocab_size") or enc.encode_single_token(BOS) != meta.get("bos_id"):
        raise DataError(f"{d / 'tokenizer.json'} does not match {d / 'tokenizer.tiktoken'}; "
                        "run `autoresearch prepare` again")
    return enc
