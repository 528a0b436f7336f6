"""The command line of data preparation: `python -m trainer.prepare SOURCE --out DIR [options]` (TRUSTED, host only).

`main(argv)` returns an exit code instead of raising: 0 when the directory is prepared, 2 on bad input or a
failed step (one line on stderr, no traceback), 130 when interrupted. `autoresearch prepare` calls it.
"""
from __future__ import annotations

import argparse
import sys

from trainer.shards import DataError

from .errors import PrepareError
from .pipeline import DEFAULT_SHARD_TOKENS, DEFAULT_TOKENIZER_CHARS, prepare
from .sources import CACHE_ENV, DATA_URL_ENV, DEFAULT_SYNTHETIC_TRAIN_DOCS, DEFAULT_SYNTHETIC_VAL_DOCS
from .tokenizer import DEFAULT_VOCAB

EPILOG = f"""sources:
  synthetic          embedded stories with a known entropy (the manifest records the BPB floor)
  files:PATH         local .txt (blank-line separated documents), .jsonl ("text" field), .parquet ("text" column);
                     PATH is a file or a directory; the last --val-docs documents are validation
  tinystories        TinyStories parquet files (downloaded, cached, resumable)
  climbmix           climbmix-400b-shuffle parquet shards (downloaded; the last shard is validation)
environment: {DATA_URL_ENV} (default base URL of downloads), {CACHE_ENV} (download cache, default ~/.cache/autoresearch)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise PrepareError(f"{message}; see `{self.prog} --help`")


def build_parser(prog: str = "python -m trainer.prepare") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Prepare a data directory: tokenizer, token shards, manifest.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="synthetic | files:PATH | tinystories | climbmix")
    p.add_argument("--out", required=True, help="data directory to create")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB, help="BPE vocabulary incl. special tokens")
    p.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
    p.add_argument("--train-docs", type=int, help=f"train documents (synthetic default {DEFAULT_SYNTHETIC_TRAIN_DOCS}; "
                   "others: a cap, default all)")
    p.add_argument("--val-docs", type=int, help=f"validation documents (synthetic default {DEFAULT_SYNTHETIC_VAL_DOCS}; "
                   "files: default a tenth, at most 1000; downloads: default 1000)")
    p.add_argument("--base-url", help=f"downloads: base URL of the parquet files (or ${DATA_URL_ENV})")
    p.add_argument("--shards", type=int, help="downloads: number of training shards (default 1)")
    p.add_argument("--cache-dir", help=f"downloads: cache directory (or ${CACHE_ENV})")
    p.add_argument("--retries", type=int, default=5, help="downloads: retries per file (default 5)")
    p.add_argument("--backoff", type=float, default=1.0, help="downloads: first retry delay in s, doubling")
    p.add_argument("--timeout", type=float, default=60.0, help="downloads: socket timeout in s")
    p.add_argument("--tokenizer-chars", type=int, default=DEFAULT_TOKENIZER_CHARS,
                   help="characters of training text used to train the BPE")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="max tokens per shard file")
    p.add_argument("--force", action="store_true", help="replace an existing prepared directory")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m trainer.prepare") -> int:
    try:
        args = build_parser(prog).parse_args(argv)
        if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
            raise PrepareError("--retries and --backoff must be >= 0 and --timeout > 0")
        prepare(args.source, args.out, vocab_size=args.vocab_size, seed=args.seed, train_docs=args.train_docs,
                val_docs=args.val_docs, base_url=args.base_url, shards=args.shards, cache_dir=args.cache_dir,
                tokenizer_chars=args.tokenizer_chars, shard_tokens=args.shard_tokens, force=args.force,
                retries=args.retries, backoff=args.backoff, timeout=args.timeout,
                log=lambda line: print(line, flush=True))
    except (PrepareError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an unwritable cache directory
        print(f"error: {e.strerror or e}: {e.filename or ''}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was installed, run the same command again", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    return 0
