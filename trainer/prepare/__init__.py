"""Data preparation: `python -m trainer.prepare SOURCE --out DIR` writes a data directory (docs/design.md).

TRUSTED CODE that runs on the HOST only (it needs rustbpe, tiktoken and pyarrow, which the trial image lacks);
the harness and the evaluator never import it. The runner's `autoresearch prepare` calls `main(argv)`.

    prepare(source, out, **options) -> dict      the manifest of the finished directory
    main(argv) -> int                             the CLI: 0 ok, 2 bad input (one-line error, no traceback)
    load_encoding(data_dir) -> tiktoken.Encoding  the tokenizer of a prepared directory
"""
from .cli import main
from .errors import PrepareError
from .pipeline import prepare
from .tokenizer import load_encoding

__all__ = ["PrepareError", "load_encoding", "main", "prepare"]
