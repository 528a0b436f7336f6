"""The `autoresearch` command line. TRUSTED CODE.

    autoresearch init DIR                       a new experiment repository (train.py, program.md, .gitignore)
    autoresearch prepare SOURCE --out DATA ...  trusted data preparation (trainer.prepare)
    autoresearch build [--flavour cpu|cuda]     the trial image
    autoresearch baseline [--tag T]             a run of the unchanged train.py only (continue it with run --resume)
    autoresearch run [--tag T] [--max-trials N] [--hours H] [--max-tokens N] [--max-cost D] [--proposer ...]
                     [--policy P] [--resume]
    autoresearch status [--tag T]               a run's counts, best and latest trials (or the list of runs)
    autoresearch report [--tag T]               runs/<tag>/report.html, report.md, progress.png, loss_curves.png
    autoresearch reproduce TRIAL [--tag T]      run a trial again from its commit, seed and image digest
    autoresearch doctor                         engine, image, data, GPU runtime, endpoint: each with a fix

User errors print one line and exit 1; argparse usage errors exit 2; Ctrl-C exits 130. A run stopped by SIGINT,
SIGTERM or SIGHUP removes its containers first and exits 128 + the signal's number (130, 143, 129; runner.signals).
Text that may come from a candidate or an LLM (descriptions, reasons, errors, an endpoint's answers) is printed
through runner.text.one_line: control and format characters escaped.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
from importlib import resources
from pathlib import Path

from trainer.shards import DataError

from .errors import AutoresearchError, UserError
from .policy import load_policy
from .signals import StopSignals, describe, exit_code
from .text import one_line

DATA_ENV = "AUTORESEARCH_DATA"


def _default_data() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "autoresearch" / "data")


def _policy(args, required: bool = True):
    """--policy, else <repo>/policy.yaml, else the default policy (None on --resume: the run keeps its own)."""
    if getattr(args, "policy", None):
        return load_policy(args.policy)
    repo_policy = Path(getattr(args, "repo", ".")) / "policy.yaml"
    if repo_policy.is_file():
        return load_policy(repo_policy)
    return load_policy() if required else None


def _runs(repo: Path) -> list[dict]:
    out = []
    for meta in sorted((Path(repo) / "runs").glob("*/run.json")):
        try:
            out.append(json.loads(meta.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda m: m.get("created_at", 0))


def _counts(counts: dict[str, int]) -> str:
    """Trials by status, for a person: "keep 2, discard 5, crash 1" (keep and discard first, the rest by name)."""
    order = ["keep", "discard"] + sorted(k for k in counts if k not in ("keep", "discard"))
    return ", ".join(f"{k} {counts[k]}" for k in order if counts.get(k)) or "no trials"


def _kept(records) -> str:
    """The candidates' outcomes, for a person: "kept 2 of 9 candidates (discard 5, crash 2)". The baseline is the
    start commit, not a candidate: it is never counted as a keep."""
    counts: dict[str, int] = {}
    for r in records:
        if r.kind == "candidate":
            counts[r.status] = counts.get(r.status, 0) + 1
    n, kept = sum(counts.values()), counts.pop("keep", 0)
    return f"kept {kept} of {n} candidate{'' if n == 1 else 's'}" + (f" ({_counts(counts)})" if counts else "")


def _change(base: float | None, best: float | None) -> str:
    """The best against the baseline, in words: "val_bpb down 27.96% from baseline 1.234567" (lower is better)."""
    from .report import improvement_text
    text = improvement_text(base, best)
    return "" if text == "-" else f"{text} from baseline {base:.6f}"


def _llm(run_dir: Path, records, policy=None) -> str:
    """The run's LLM usage, its cost with proposer.prices in its policy, and its caps (runner.usage.run_line)."""
    from .report import run_policy
    from .usage import run_line
    policy = policy or run_policy(run_dir)
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return run_line(records, policy.proposer.prices if policy is not None else None, meta)


def _tag(args) -> str:
    """--tag, else the most recent run of the repository."""
    if args.tag:
        return args.tag
    runs = _runs(args.repo)
    if not runs:
        raise UserError(f"no runs in {Path(args.repo).resolve() / 'runs'}; start one with `autoresearch run` "
                        "(or pass --repo DIR)")
    return runs[-1]["tag"]


# --------------------------------------------------------------------------- commands

def cmd_init(args) -> int:
    from .workspace import init_repo
    train = resources.files("trainer").joinpath("train.py").read_text()
    program = resources.files("runner").joinpath("program.md").read_text()
    commit = init_repo(args.dir, {"train.py": train, "program.md": program, ".gitignore": "runs/\n"})
    print(f"created experiment repository {args.dir} at {commit[:12]}: edit program.md and commit it "
          f"(a run trains the committed files), then `cd {args.dir} && autoresearch run`")
    return 0


def cmd_prepare(args) -> int:
    from trainer.prepare import main as prepare_main
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return prepare_main(rest, prog="autoresearch prepare") or 0


def cmd_build(args) -> int:
    from .sandbox.images import build
    flavour = args.flavour or _policy(args).flavour
    img = build(flavour, args.airgapped, on_progress=None if args.quiet else (lambda line: print(line, flush=True)))
    print(f"{img.tag} {img.id}")
    return 0


def _run(args, max_trials, resume) -> int:
    from .live import LiveView, PlainView
    from .decision import noop_warning
    from .ledger import Ledger
    from .loop import Loop
    from .runs import RunConfig, run_dir_of
    from .report import run_policy, write
    policy = _policy(args, required=not resume)
    tag = args.tag or (_tag(args) if resume else time.strftime("%b%d-%H%M").lower())
    rules = policy if policy is not None else run_policy(run_dir_of(Path(args.repo), tag))
    max_cost = getattr(args, "max_cost", None)
    if max_cost is not None and rules is not None and rules.proposer.prices is None:
        target = Path(args.policy or Path(args.repo) / "policy.yaml")
        where = (f"run {tag}'s policy" if policy is None else f"policy {target}" if args.policy or target.is_file()
                 else "the default policy")
        raise UserError(f"--max-cost {max_cost:g} needs prices, but {where} has no proposer.prices; add `proposer: "
                        "{prices: {input_per_million: X, output_per_million: Y}}` (dollars per million tokens) to "
                        f"{target}, or use --max-tokens")
    if rules is not None and (warning := noop_warning(rules)):
        print(f"autoresearch: {warning}", file=sys.stderr, flush=True)
    data = args.data or (None if resume else _default_data())
    cfg = RunConfig(repo=Path(args.repo), tag=tag, data_dir=data, policy=policy,
                    proposer=getattr(args, "proposer", None), max_trials=max_trials,
                    hours=getattr(args, "hours", None), resume=resume, image=args.image,
                    commit_changes=args.commit_changes, max_tokens=getattr(args, "max_tokens", None),
                    max_cost=max_cost)
    live = sys.stdout.isatty() and not args.plain
    view = LiveView() if live else PlainView()
    runner = Loop(cfg, events=view)
    try:               # SIGINT, SIGTERM, SIGHUP: the run's containers are removed, then it exits (runner.signals)
        with StopSignals():
            if live:
                with view:
                    summary = runner.run()
            else:
                summary = runner.run()
    except KeyboardInterrupt as e:
        print(f"autoresearch: {describe(e)}; continue with `autoresearch run --tag {tag} --resume`",
              file=sys.stderr)
        return exit_code(e)
    rep = write(summary.run_dir, tag)
    records = Ledger(summary.run_dir).records()
    change = _change(summary.baseline_bpb, summary.best_bpb)
    llm = _llm(summary.run_dir, records, runner.policy)
    print(f"run {tag}: {summary.stopped}; best val_bpb {summary.best_bpb:.6f}{f' ({change})' if change else ''} "
          f"at {summary.best_commit[:12]} on branch autoresearch/{tag}; {_kept(records)}"
          + (f"; {llm}" if llm else ""))
    print(f"ledger {summary.run_dir / 'trials.jsonl'}, report {rep.html} ({rep.markdown}), plots {rep.progress}, "
          f"{rep.loss_curves}")
    return 0


def cmd_run(args) -> int:
    if args.max_trials is not None and args.max_trials < 0:
        raise UserError(f"--max-trials must be 0 or more, got {args.max_trials}")
    if args.hours is not None and args.hours <= 0:
        raise UserError(f"--hours must be positive, got {args.hours}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError(f"--max-tokens must be 1 or more, got {args.max_tokens}")
    if args.max_cost is not None and not (args.max_cost > 0 and math.isfinite(args.max_cost)):
        raise UserError(f"--max-cost must be a positive number of dollars, got {args.max_cost}")
    capped = args.hours or args.max_tokens is not None or args.max_cost is not None
    max_trials = args.max_trials if args.max_trials is not None or args.resume or capped else 10
    return _run(args, max_trials, args.resume)


def cmd_baseline(args) -> int:
    return _run(args, 0, False)


def cmd_status(args) -> int:
    from .ledger import Ledger
    from .ledger import summarize
    from .runs import existing_run_dir, run_dir_of
    if not args.tag:
        runs = _runs(args.repo)
        if not runs:
            print(f"no runs in {Path(args.repo).resolve() / 'runs'}")
            return 0
        for m in runs:
            recs = Ledger(run_dir_of(Path(args.repo), m["tag"])).records()
            s = summarize(m["tag"], Path("."), recs)
            best = f"{s.best_bpb:.6f}" if s.best_bpb is not None else "-"
            print(one_line(f"{m['tag']:<24} trials {s.trials:>4}  best {best}  {m.get('proposer')}"))
        return 0
    run_dir = existing_run_dir(Path(args.repo), args.tag)
    recs = Ledger(run_dir).records()
    s = summarize(args.tag, run_dir, recs)
    fmt = lambda x: f"{x:.6f}" if x is not None else "-"  # noqa: E731
    change = _change(s.baseline_bpb, s.best_bpb)
    print(f"run {args.tag}: {s.trials} trials, best {fmt(s.best_bpb)} at {s.best_commit[:12] or '-'}, "
          f"baseline {fmt(s.baseline_bpb)}{f' ({change})' if change else ''}; {_kept(recs)}")
    if llm := _llm(run_dir, recs):
        print(f"  {llm}")
    for r in recs[-args.last:]:
        slot = f"  [slot {one_line(r.slot)}]" if r.slot else ""
        print(f"  {r.trial:>4}  {r.status:<13} {fmt(r.val_bpb)}  {(r.commit or '-')[:7]}  {_compute(r)}  "
              f"{one_line(r.description)}{slot}")
    return 0


def _compute(r) -> str:
    """A trial's steps and tokens/s (the candidate's claims, marked *) and the compute it got, measured outside it:
    the launcher's calibration (seconds; lower = a faster machine) and its CPU share of the quota."""
    steps, tokens, secs = r.num_steps, r.train_tokens, r.claimed_training_seconds
    cal, share = getattr(r, "calibration_s", None), getattr(r, "cpu_share", None)
    return (f"steps* {steps if steps is not None else '-':>5}  tok/s* "
            f"{f'{tokens / secs:,.0f}' if tokens is not None and secs else '-':>7}  "
            f"cal {f'{cal:.2f}s' if cal is not None else '-':>6}  cpu {f'{share:.0%}' if share is not None else '-':>4}")


def cmd_report(args) -> int:
    from .report import write
    from .runs import existing_run_dir
    tag = _tag(args)
    run_dir = existing_run_dir(Path(args.repo), tag)
    if not (run_dir / "trials.jsonl").exists():
        raise UserError(f"run {tag} has no ledger in {run_dir}; run some trials first")
    rep = write(run_dir, tag)
    print(f"wrote {rep.html}, {rep.markdown}, {rep.progress} and {rep.loss_curves}")
    return 0


def cmd_reproduce(args) -> int:
    from .live import PlainView
    from .reproduce import reproduce
    tag = _tag(args)
    rec, outcome, policy = reproduce(Path(args.repo), tag, args.trial,
                                     on_line=PlainView().line if args.verbose else None)
    fmt = lambda x: f"{x:.6f}" if x is not None else "-"  # noqa: E731
    diff = (f"{outcome.val_bpb - rec.val_bpb:+.6f}" if outcome.val_bpb is not None and rec.val_bpb is not None
            else "-")
    print(f"trial {rec.trial} of {tag} (commit {rec.commit[:12]}, seed {rec.seed}, image "
          f"{(rec.image_digest or rec.image or '-')[:19]})")
    print(f"  ledger:     {rec.status:<10} val_bpb {fmt(rec.val_bpb)}")
    print(f"  reproduced: {outcome.status:<10} val_bpb {fmt(outcome.val_bpb)}  difference {diff}"
          + (f"  ({one_line(outcome.error)})" if outcome.status != "ok" and outcome.error else ""))
    steps = outcome.train_summary.get("num_steps")
    if rec.num_steps is not None or steps is not None:
        why = (f"train.max_steps {policy.train.max_steps}: a step-for-step repeat" if policy.train.max_steps
               else "the budget is wall-clock time, so a repeat makes other steps and lands elsewhere; "
                    "train.max_steps in the policy makes it step for step")
        count = lambda n: "-" if n is None else f"{n:g}"  # noqa: E731 - train.py's own count (a float)
        print(f"  steps:      ledger {count(rec.num_steps)}, reproduced {count(steps)} ({why})")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import checks
    policy = _policy(args)
    proposer = args.proposer or policy.proposer.kind
    results = checks(Path(args.repo), policy, args.data or _default_data(), args.image, proposer)
    for c in results:
        mark = "ok  " if c.ok else "FAIL"
        print(f"{mark} {c.name:<9} {one_line(c.detail)}" + ("" if c.ok or not c.fix else
                                                             f"\n     fix: {one_line(c.fix)}"))
    bad = [c.name for c in results if not c.ok]
    print("all checks passed" if not bad else f"{len(bad)} check(s) failed: {', '.join(bad)}")
    return 1 if bad else 0


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="autoresearch", description="Autonomous ML research, caged: every trial "
                                 "sandboxed in Docker, kept in git only if val BPB improves.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help, repo=True):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if repo:
            p.add_argument("--repo", default=".", help="the experiment repository (default: .)")
        return p

    p = add("init", cmd_init, "create a new experiment repository (train.py, program.md)", repo=False)
    p.add_argument("dir", help="a new or empty directory")
    p = add("prepare", cmd_prepare, "prepare data (delegates to trainer.prepare; see `prepare --help`)", repo=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for trainer.prepare")
    p = add("build", cmd_build, "build (or reuse) the trial image")
    p.add_argument("--flavour", choices=["cpu", "cuda"], help="default: the policy's flavour")
    p.add_argument("--policy")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--airgapped", dest="airgapped", action="store_true", default=None,
                      help="local debootstrap base and wheelhouse, no network")
    mode.add_argument("--registry", dest="airgapped", action="store_false", help="python:3.11-slim from a registry")
    p.add_argument("--quiet", action="store_true")

    def run_args(p):
        p.add_argument("--tag", help="run name; branch autoresearch/<tag> (default: date-time; on --resume the "
                                     "latest run)")
        p.add_argument("--policy", help="policy YAML or name under policies/ (default: <repo>/policy.yaml or "
                                        "the default policy)")
        p.add_argument("--data", type=Path, help=f"prepared data directory (default: ${DATA_ENV} or "
                                                 "~/.cache/autoresearch/data)")
        p.add_argument("--image", help="trial image tag (default: the policy's, else the one `build` made)")
        p.add_argument("--plain", action="store_true",
                       help="lines instead of the live view (the default when stdout is not a terminal), for logs "
                            "and CI: each trial's phase changes and a training line a minute, prefixed with the "
                            "trial id, the proposer's retries, and each result with the best and the counts")
        p.add_argument("--commit-changes", action="store_true",
                       help="commit uncommitted edits of train.py and program.md before a new run starts "
                            "(without it, such edits stop the run with an error)")

    p = add("baseline", cmd_baseline, "run the unchanged train.py only (continue with `run --tag T --resume`)")
    run_args(p)
    p = add("run", cmd_run, "run the research loop")
    run_args(p)
    p.add_argument("--max-trials", type=int, help="candidate trials in the whole run (default 10 without "
                                                  "--hours or a cap; on --resume the run's own)")
    p.add_argument("--hours", type=float, help="stop starting trials after this many hours")
    p.add_argument("--max-tokens", type=int, help="stop starting trials once the run's LLM tokens reach this "
                                                  "(the whole run; on --resume the run's own unless given)")
    p.add_argument("--max-cost", type=float, help="the same in dollars, at the policy's proposer.prices")
    p.add_argument("--proposer", choices=["mutate", "openai"], help="default: the policy's")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (same tag)")
    p = add("status", cmd_status, "show a run (or list the runs)")
    p.add_argument("--tag")
    p.add_argument("--last", type=int, default=10, help="trials to list (default 10)")
    p = add("report", cmd_report, "write report.html, report.md, progress.png and loss_curves.png for a run")
    p.add_argument("--tag")
    p = add("reproduce", cmd_reproduce, "re-run a trial from its commit, seed and image digest")
    p.add_argument("trial", type=int)
    p.add_argument("--tag")
    p.add_argument("--verbose", action="store_true", help="show the trial's progress")
    p = add("doctor", cmd_doctor, "check the engine, image, data, GPU runtime, endpoint and Ray cluster")
    p.add_argument("--policy")
    p.add_argument("--data", type=Path)
    p.add_argument("--image")
    p.add_argument("--proposer", choices=["mutate", "openai"])
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prepare"]:  # every argument (--help included) belongs to trainer.prepare
        argv = ["prepare", "--", *argv[1:]] if len(argv) > 1 else argv
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (AutoresearchError, DataError) as e:
        print(f"autoresearch: error: {one_line(' '.join(str(e).split()))}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {one_line(str(e.filename))}" if e.filename else ""
        print(f"autoresearch: error: the disk is full{where} ({e.strerror}); free space on it, then run again "
              "(a run continues with --resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"autoresearch: {describe(e)}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
