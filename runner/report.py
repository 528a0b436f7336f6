"""The report of a run: progress.png and report.md, both made from the ledger alone. TRUSTED CODE.

progress.png: every trial's val_bpb in trial order (discarded ones grey, kept ones green), the other seeds' runs of
a baseline or confirmation as hollow circles, the running best as a step line and the bar a keep had to pass
(best - threshold) as a dashed one, failed trials marked with a red x at the bottom edge, rejected ones with a grey
tick.
report.md: best vs baseline and the improvement in %, the trials by status, the kept changes in order, and the
failed trials with their reasons. Descriptions and reasons (an LLM's and a candidate's text) go into table cells
through runner.text.markdown_cell: control and format characters escaped, no Markdown link, image, HTML or entity.
Its header carries the policy's warning when the policy can keep a change that does nothing
(runner.decision.noop_warning; the policy is run.json's).
"""
from __future__ import annotations

import json
from pathlib import Path

from .decision import noop_warning
from .ledger import FAILED, Ledger, TrialRecord
from .ledger import baseline_of, best_of, summarize
from .text import markdown_cell


def running_best(records: list[TrialRecord]) -> list[tuple[int, float]]:
    """(trial, best val_bpb after it) at every kept trial, in order."""
    return [(r.trial, r.val_bpb) for r in records if r.status == "keep" and r.val_bpb is not None]


def other_runs(r: TrialRecord) -> list[float]:
    """The val_bpb of a trial's further ok runs of its commit, with other seeds: a baseline's repeats after the
    first, a confirmation. They show the noise a kept change had to beat."""
    runs = [x.get("val_bpb") for x in (r.repeats or [])[1:] if x.get("status") == "ok"]
    if r.confirm and r.confirm.get("status") == "ok":
        runs.append(r.confirm.get("val_bpb"))
    return [b for b in runs if isinstance(b, (int, float))]


def improvement_pct(baseline: float | None, best: float | None) -> float | None:
    if baseline is None or best is None or baseline <= 0:
        return None
    return 100.0 * (baseline - best) / baseline


def figure(records: list[TrialRecord], title: str = ""):
    """The progress figure (matplotlib, Agg). Each series carries a label the tests and the legend use."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    scored = [r for r in records if r.val_bpb is not None]
    disc = [r for r in scored if r.status != "keep"]
    kept = [r for r in scored if r.status == "keep"]
    ax.scatter([r.trial for r in disc], [r.val_bpb for r in disc], s=18, color="#999999", label="discarded",
               zorder=2)
    ax.scatter([r.trial for r in kept], [r.val_bpb for r in kept], s=40, color="#2ca02c", label="kept",
               zorder=3, edgecolors="black", linewidths=0.5)
    extra = [(r.trial, b) for r in records for b in other_runs(r)]
    if extra:
        ax.scatter([t for t, _ in extra], [b for _, b in extra], s=18, facecolors="none", edgecolors="#555555",
                   linewidths=0.8, label="other runs of the commit (seeds)", zorder=2)
    steps = running_best(records)
    if steps:
        last = max(r.trial for r in records)
        xs = [t for t, _ in steps] + [last]
        ys = [b for _, b in steps] + [steps[-1][1]]
        ax.step(xs, ys, where="post", color="#2ca02c", linewidth=1.5, label="best so far", zorder=1)
    bars = [(r.trial, r.best_bpb_before - r.threshold) for r in records
            if r.kind == "candidate" and r.best_bpb_before is not None and r.threshold]   # 0: it is the best line
    if bars:
        ax.step([t for t, _ in bars], [b for _, b in bars], where="mid", color="#2ca02c", linewidth=1,
                linestyle="--", label="a keep needs below this (best - threshold)", zorder=1)
    lo, hi = ax.get_ylim() if scored else (0.0, 1.0)
    failed = [r for r in records if r.status in FAILED]
    if failed:
        ax.scatter([r.trial for r in failed], [lo] * len(failed), marker="x", color="#d62728", s=40,
                   label="crash / timeout / oom / ...", zorder=4, clip_on=False)
    rejected = [r for r in records if r.status == "rejected"]
    if rejected:
        ax.scatter([r.trial for r in rejected], [lo] * len(rejected), marker="|", color="#7f7f7f", s=60,
                   label="rejected patch", zorder=4, clip_on=False)
    ax.set_ylim(lo, hi)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(title or "autoresearch progress")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot(records: list[TrialRecord], path: Path, title: str = "") -> Path:
    import matplotlib.pyplot as plt
    fig = figure(records, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown(tag: str, records: list[TrialRecord], policy=None) -> str:
    s = summarize(tag, Path("."), records)
    base, best = baseline_of(records), best_of(records)
    imp = improvement_pct(s.baseline_bpb, s.best_bpb)
    fmt = lambda x: f"{x:.6f}" if x is not None else "-"  # noqa: E731
    warning = noop_warning(policy) if policy is not None else None
    lines = [f"# autoresearch run `{tag}`", "", *([f"> **{warning}**", ""] if warning else []),
             f"- trials: {len(records)} ({sum(1 for r in records if r.kind == 'candidate')} candidates)",
             f"- baseline val_bpb: {fmt(s.baseline_bpb)}{_runs_of(base)}",
             f"- best val_bpb: {fmt(s.best_bpb)}{_runs_of(best) if best is not base else ''} at commit "
             f"`{(s.best_commit or '-')[:12]}`",
             f"- improvement: {imp:.2f}%" if imp is not None else "- improvement: -", "",
             "## Trials by status", "", "| status | trials |", "|---|---|"]
    for status, n in sorted(s.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {status} | {n} |")
    lines += ["", "## Kept changes, in order", "",
              "| trial | commit | val_bpb | gain | description |", "|---|---|---|---|---|"]
    for r in records:
        if r.status == "keep":
            gain = f"{r.best_bpb_before - r.val_bpb:+.6f}" if r.best_bpb_before is not None else "(baseline)"
            lines.append(f"| {r.trial} | `{(r.commit or '')[:7]}` | {fmt(r.val_bpb)} | {gain} | "
                         f"{_cell(r.description)} |")
    bad = [r for r in records if r.status in FAILED or r.status in ("rejected", "stale")]
    if bad:
        lines += ["", "## Failed and rejected trials", "", "| trial | status | description | reason |",
                  "|---|---|---|---|"]
        for r in bad:
            lines.append(f"| {r.trial} | {r.status} | {_cell(r.description)} | {_cell(r.reason, 200)} |")
    slots = sorted({r.slot for r in records if r.slot})
    if len(slots) > 1:
        lines += ["", "## Slots", "", "| slot | trials | training s |", "|---|---|---|"]
        for slot in slots:
            mine = [r for r in records if r.slot == slot]
            lines.append(f"| {_cell(slot)} | {len(mine)} | {sum(r.training_seconds or 0.0 for r in mine):.0f} |")
    lines += ["", "![progress](progress.png)", ""]
    return "\n".join(lines)


def run_policy(run_dir: Path):
    """The policy run.json records (None when there is no run.json or it does not hold a valid policy)."""
    from pydantic import ValidationError

    from .policy import Policy
    try:
        return Policy.model_validate(json.loads((Path(run_dir) / "run.json").read_text())["policy"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return None


def _runs_of(r: TrialRecord | None) -> str:
    """' (seed S; other seeds: a, b)' when the commit was run with other seeds too."""
    others = other_runs(r) if r is not None else []
    return f" (seed {r.seed}; other seeds: {', '.join(f'{b:.6f}' for b in others)})" if others else ""


def _cell(text: str, limit: int | None = None) -> str:
    return markdown_cell(" ".join(str(text).split()), limit)


def write(run_dir: str | Path, tag: str | None = None) -> tuple[Path, Path]:
    """Write progress.png and report.md into the run directory; returns their paths."""
    run_dir = Path(run_dir)
    records = Ledger(run_dir).records()
    tag = tag or run_dir.name
    png = plot(records, run_dir / "progress.png", f"autoresearch run {tag}")
    md = run_dir / "report.md"
    md.write_text(markdown(tag, records, run_policy(run_dir)))
    return png, md
