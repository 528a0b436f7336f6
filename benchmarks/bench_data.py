"""The benchmarks' data: the synthetic corpus prepared into a directory (not timed), readable by the trial uid."""
from __future__ import annotations

import sys
from pathlib import Path


def prepare_synthetic(root: Path, *options: str) -> Path:
    """`prepare synthetic` into root/data with extra CLI options; exits with its one-line error if it fails.

    The files are made world-readable (pytest-style temp dirs are 0700) so that sandboxed trials, which run as
    a non-root uid, can read them.
    """
    from trainer.prepare.cli import main as prepare_main
    data = Path(root) / "data"
    print(f"preparing synthetic data in {data} ...", file=sys.stderr, flush=True)
    rc = prepare_main(["synthetic", "--out", str(data), *options])
    if rc != 0:
        raise SystemExit(f"prepare synthetic failed (exit {rc}); see the error above")
    for p in [data, *data.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    return data
