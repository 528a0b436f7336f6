"""Benchmark: what the sandbox costs. The same train.py, preset, seed and budget run directly on the host
(trainer.direct, unsandboxed) and as a sandboxed trial (runner.executor.make: the Docker executor), side by side in one run; plus
the trial image's build time (cold and cached) and sizes. Prints a markdown table.

    python benchmarks/sandbox_overhead.py [--budget 60] [--preset tiny] [--data DIR] [--no-build]

Fixed cost = container create -> first training step (train), and the eval container's wall time against the
host evaluator's. Ratio = sandboxed trial wall time / direct trial wall time. Goals (issue 4, on the 2-core CI
machine): fixed cost under 5 s, ratio under 1.05 at a 60 s budget. Needs a running Docker engine; the cold build
uses a throw-away tag (autoresearch-bench:cold, removed afterwards) so the real trial tag keeps its image id.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_data import prepare_synthetic  # noqa: E402
from runner.executor import TrialSpec, make  # noqa: E402
from runner.policy import load_policy  # noqa: E402
from runner.sandbox.preflight import connect  # noqa: E402
from runner.sandbox import images  # noqa: E402 - builds the image

BENCH_TAG = "autoresearch-bench:cold"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def direct(data: Path, preset: str, budget: float, seed: int, out: Path) -> dict:
    """trainer.direct: train.py then the evaluator as plain subprocesses; phases timed from its output lines."""
    from trainer.direct import direct_trial
    marks = {"summary": {}}
    t0 = time.monotonic()

    def on_line(line: str) -> None:
        now = time.monotonic() - t0
        if line.startswith("step=") and "first" not in marks:
            marks["first"] = now
        key, sep, value = line.partition(": ")
        if sep and key in ("num_steps", "tokens_per_second"):
            marks["summary"][key] = value
        marks["last"] = now                    # train.py's last line: its process ends right after
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    result = direct_trial(train_py=REPO / "trainer" / "train.py", data=data, preset=preset, budget=budget,
                          seed=seed, out=out, device="cpu", on_line=on_line)
    total = time.monotonic() - t0
    return {"total_s": total, "first_step_s": marks.get("first"), "train_s": marks["last"],
            "eval_s": total - marks["last"], "val_bpb": result["val_bpb"],
            "steps": marks["summary"].get("num_steps"), "tok_s": marks["summary"].get("tokens_per_second")}


def sandboxed(data: Path, preset: str, budget: float, seed: int, image: str, work: Path) -> dict:
    base = load_policy("default")
    pol = base.model_validate({**base.model_dump(), "preset": preset,
                               "train": {"budget_seconds": budget, "allowance_seconds": 120},
                               "eval": {"timeout_seconds": 600}})
    cand = work / "candidate"
    cand.mkdir(parents=True)
    shutil.copy(REPO / "trainer" / "train.py", cand / "train.py")
    spec = TrialSpec(run_tag=f"bench-{os.getpid()}", trial_id="1", candidate_dir=cand, data_dir=data, policy=pol,
                     image=image, seed=seed, work_dir=work / "trial")
    t0 = time.monotonic()
    out = make().run(spec)
    total = time.monotonic() - t0
    if out.status != "ok":
        raise SystemExit(f"the sandboxed trial failed: {out.status}: {out.error}\n{out.log_tail}")
    t = out.timings
    slot = t.get("slot_s") or 0.0                  # making the trial's containers (started before the hand-over)
    train = slot + t["train_host_s"]
    return {"total_s": total, "first_step_s": slot + (t.get("train_startup_s") or 0.0), "val_bpb": out.val_bpb,
            "train_s": train, "eval_s": t["eval_host_s"], "train_engine_s": t["train_wall_s"],
            "eval_engine_s": t["eval_wall_s"], "other_s": total - train - t["eval_host_s"],
            "steps": out.train_summary.get("num_steps"), "tok_s": out.train_summary.get("tokens_per_second")}


def build_times(client) -> dict:
    """Cold (no cache, throw-away tag), cached (same recipe again), and reuse (the real tag exists)."""
    flavour = "cpu"
    base = images.base_image(flavour, None, client)
    out = {"base": base}
    dangling_before = {i.id for i in client.images.list(filters={"dangling": True})}
    have_wheels = bool(images.wheels(flavour))
    for label, nocache in (("cached_s", False), ("cold_s", True)):   # cached first: the cold build's
                                                                      # layers must not be what "cached" reuses
        ctx = images._context(flavour, have_wheels)
        t0 = time.monotonic()
        for chunk in client.api.build(fileobj=ctx, custom_context=True, tag=BENCH_TAG, rm=True, forcerm=True,
                                      nocache=nocache, decode=True, buildargs={"BASE_IMAGE": base, "FLAVOUR": flavour},
                                      labels={"autoresearch.bench": "1"}):
            if "error" in chunk:
                raise SystemExit(f"bench build failed: {chunk['error']}")
        out[label] = time.monotonic() - t0
        ctx.close()
    t0 = time.monotonic()
    img = images.build(flavour, client=client)
    out["reuse_s"] = time.monotonic() - t0
    out["image"], out["size"] = img.tag, img.size_bytes
    try:
        out["base_size"] = client.images.get(base).attrs["Size"]
    except Exception:  # noqa: BLE001
        out["base_size"] = None
    out["wheelhouse"] = sum(w.stat().st_size for w in images.wheels(flavour))
    client.images.remove(BENCH_TAG, force=True, noprune=False)
    # the cold build's untagged first stage (deps) is left dangling; remove what this benchmark made
    for i in client.images.list(filters={"dangling": True}):
        if i.id not in dangling_before:
            try:
                client.images.remove(i.id, noprune=False)
            except Exception:  # noqa: BLE001 - in use by another build: leave it
                pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=60)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--data", type=Path, help="prepared data dir (default: a fresh synthetic one in a temp dir)")
    ap.add_argument("--repeats", type=int, default=2, help="direct/sandboxed pairs, interleaved (default 2)")
    ap.add_argument("--no-build", action="store_true", help="skip the image build timings")
    args = ap.parse_args()
    client = connect()
    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-bench-"))
    os.chmod(tmp, 0o755)
    try:
        img = images.build("cpu", client=client)
        data = args.data or prepare_synthetic(tmp, "--train-docs", "4000", "--val-docs", "100")
        print(f"image {img.tag}; data {data}; preset {args.preset}; budget {args.budget:g} s", file=sys.stderr)
        ds, ss = [], []
        for i in range(args.repeats):                    # interleaved, so load changes hit both alike
            ds.append(direct(data, args.preset, args.budget, args.seed, tmp / f"direct-{i}"))
            ss.append(sandboxed(data, args.preset, args.budget, args.seed, img.tag, tmp / f"sandbox-{i}"))
        b = None if args.no_build else build_times(client)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def f(x):
        return "n/a" if x is None else f"{x:.2f} s"

    def avg(runs, key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None
    print(f"\n### Sandbox overhead ({args.preset} preset, {args.budget:g} s budget, seed {args.seed}, "
          f"{os.cpu_count()} CPUs, mean of {args.repeats} run(s) each, interleaved)\n")
    print("| phase | direct (host, no sandbox) | sandboxed trial | sandbox - direct |")
    print("|---|---|---|---|")
    rows = [("start -> first training step", "first_step_s"), ("training phase (process / container)", "train_s"),
            ("evaluation phase (process / container)", "eval_s"), ("whole trial", "total_s")]
    for label, key in rows:
        dv, sv = avg(ds, key), avg(ss, key)
        diff = None if dv is None or sv is None else sv - dv
        print(f"| {label} | {f(dv)} | {f(sv)} | {'n/a' if diff is None else f'{diff:+.2f} s'} |")
    print(f"| sandbox bookkeeping (stage, volumes, holder, copy-out, cleanup) | | {f(avg(ss, 'other_s'))} | |")
    print(f"| steps / tokens per second | {ds[-1]['steps']} / {ds[-1]['tok_s']} | "
          f"{ss[-1]['steps']:g} / {ss[-1]['tok_s']:g} | |")
    print(f"| val_bpb | {ds[-1]['val_bpb']:.4f} | {ss[-1]['val_bpb']:.4f} | |")
    ratio = avg(ss, "total_s") / avg(ds, "total_s")
    print(f"\n**ratio** sandboxed / direct whole trial = {ratio:.3f} (goal < 1.05); **fixed cost** "
          f"{avg(ss, 'total_s') - avg(ds, 'total_s'):+.1f} s per trial (goal < 5 s)")
    if b:
        print(f"\n### Trial image ({b['image']}, base {b['base']})\n")
        print("| build | seconds |\n|---|---|")
        print(f"| cold (no layer cache) | {b['cold_s']:.1f} |\n| cached (all layers cached) | {b['cached_s']:.1f} |\n"
              f"| reuse (tag exists) | {b['reuse_s']:.2f} |")
        print("\n| size | |\n|---|---|")
        print(f"| trial image | {_mb(b['size'])} |")
        if b["base_size"]:
            print(f"| base image | {_mb(b['base_size'])} |")
        print(f"| wheelhouse | {_mb(b['wheelhouse'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
