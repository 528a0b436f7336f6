"""The report's figures, made from the ledger and the trials' train logs. TRUSTED CODE; the logs are hostile.

progress.png (`figure`): every scored trial's val_bpb in trial order (discarded ones grey, kept ones green and
labelled "#trial description"), the other seeds' runs of a baseline or confirmation as hollow circles, the running
best as a step line, the bar a keep had to pass (best - threshold) as a dashed one, and the data's BPB floor (the
manifest's) as a dotted line when it lies near the scores (else a note in the bottom corner says how far below it
is). Failed and rejected trials sit in their own band of axes under the scores, so no failure reads as a score.
Its title counts the experiments and the kept ones: candidates only, the baseline is not an experiment.

loss_curves.png (`loss_figure`): training loss against step for the baseline, the best and the latest candidates,
parsed from each trial's train.log with trainer.contract.parse_step_line. Those lines are printed inside the
candidate's container: only the parsed numbers are drawn (finite, steps >= 0), and the figure says the loss is the
candidate's own report, never a score.

Text from a candidate or an LLM (descriptions) reaches matplotlib through runner.text.one_line with "$" escaped,
so mathtext never parses it (an unbalanced "$" would make saving raise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from trainer.contract import parse_step_line

from .ledger import FAILED, TrialRecord, baseline_of, best_of
from .text import one_line

LABEL_CHARS = 32            # of a description in a kept point's label or a curve's legend entry
RIGHT_FROM = 0.6            # a kept point past this share of the trials gets its label to its left
TOP_FROM = 0.85             # ... and one above this share of the score axis gets it below
FLOOR_NEAR = 3.0            # the floor line is drawn when it lies within this many score spans below the scores
MAX_CURVE_POINTS = 2000     # per loss curve (evenly thinned beyond it)
LATEST_CURVES = 3           # the latest candidates drawn besides the baseline and the best
MAX_STATUS_NOTES = 30       # failures named under their mark in the band (more would overlap)
KEPT = "#2ca02c"            # kept points, the best line and the best's curve
OTHER_COLORS = ("#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


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


def experiments(records: list[TrialRecord]) -> tuple[int, int]:
    """(candidate trials, kept candidates): "N experiments, M kept" (the baseline is neither)."""
    cands = [r for r in records if r.kind == "candidate"]
    return len(cands), sum(1 for r in cands if r.status == "keep")


def mpl_text(text: object, limit: int | None = LABEL_CHARS) -> str:
    """A candidate's or an LLM's text for matplotlib: one line, cut with "...", "$" escaped (no mathtext)."""
    s = one_line(" ".join(str(text).split()))
    if limit is not None and len(s) > limit:
        s = s[:limit - 3] + "..."
    return s.replace("$", r"\$")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure(records: list[TrialRecord], title: str = "", floor: float | None = None):
    """The progress figure (matplotlib, Agg). Each series carries a label the tests and the legend use; the
    failure band, when there is one, is the figure's second axes."""
    plt = _pyplot()
    failed = [r for r in records if r.status in FAILED]
    rejected = [r for r in records if r.status == "rejected"]
    if failed or rejected:
        fig, (ax, band) = plt.subplots(2, 1, figsize=(10, 5.6), dpi=120, sharex=True,
                                       gridspec_kw={"height_ratios": [6, 1], "hspace": 0.08})
    else:
        fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
        band = None
    scored = [r for r in records if r.val_bpb is not None]
    disc = [r for r in scored if r.status != "keep"]
    kept = [r for r in scored if r.status == "keep"]
    ax.scatter([r.trial for r in disc], [r.val_bpb for r in disc], s=18, color="#999999", label="discarded",
               zorder=2)
    ax.scatter([r.trial for r in kept], [r.val_bpb for r in kept], s=40, color=KEPT, label="kept",
               zorder=3, edgecolors="black", linewidths=0.5)
    extra = [(r.trial, b) for r in records for b in other_runs(r)]
    if extra:
        ax.scatter([t for t, _ in extra], [b for _, b in extra], s=18, facecolors="none", edgecolors="#555555",
                   linewidths=0.8, label="other runs of the commit (seeds)", zorder=2)
    steps = sorted(running_best(records))       # in trial order: with slots the ledger is in decision order
    last = max((r.trial for r in records), default=0)
    if steps:
        xs = [t for t, _ in steps] + [last]
        ys = [b for _, b in steps] + [steps[-1][1]]
        ax.step(xs, ys, where="post", color=KEPT, linewidth=1.5, label="best so far", zorder=1)
    bars = sorted((r.trial, r.best_bpb_before - r.threshold) for r in records   # slots record out of order
                  if r.kind == "candidate" and r.best_bpb_before is not None and r.threshold)   # 0: the best line
    if bars:
        ax.step([t for t, _ in bars], [b for _, b in bars], where="mid", color=KEPT, linewidth=1,
                linestyle="--", label="a keep needs below this (best - threshold)", zorder=1)
    _floor(ax, [r.val_bpb for r in scored] + [b for _, b in extra], floor)
    _label_kept(ax, sorted(kept, key=lambda r: r.trial), last)
    if band is not None:
        _failure_band(band, failed, rejected)
    bottom = band if band is not None else ax
    from matplotlib.ticker import MaxNLocator
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("trial")
    ax.set_ylabel("val_bpb (lower is better)")
    n, m = experiments(records)
    ax.set_title(f"{mpl_text(title, None) + ': ' if title else ''}{n} experiments, {m} kept")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=0.1)
    return fig


def _floor(ax, scores: list[float], floor: float | None) -> None:
    """The data's BPB floor: a line when it lies near the scores, else a note in the figure's bottom corner."""
    if floor is None or not math.isfinite(floor):
        return
    if not scores:
        ax.axhline(floor, color="#1f77b4", linestyle=":", linewidth=1.2, label=f"data floor {floor:.4f}")
        return
    lo, hi = min(scores), max(scores)
    span = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
    if floor >= lo - FLOOR_NEAR * span:
        ax.axhline(floor, color="#1f77b4", linestyle=":", linewidth=1.2, label=f"data floor {floor:.4f}")
    else:
        ax.figure.text(0.01, 0.01, f"\u25bc data floor {floor:.4f}: {lo - floor:.4f} below the best score "
                       "(off the axis)", fontsize=8, color="#1f77b4", ha="left", va="bottom")


def _label_kept(ax, kept: list[TrialRecord], last: int) -> None:
    """"#trial description" beside each kept point, tilted; neighbours closer than a few trials alternate above
    and below their point so their labels do not run into each other. A point in the right part of the plot
    (past RIGHT_FROM of the trials) gets its label to its left, and one near the top (above TOP_FROM of the
    score axis) below it, so the label stays inside the figure."""
    near = max(1.0, (last + 1) / 25)
    lo, hi = ax.get_ylim()
    prev, up = None, True
    for r in kept:
        up = not up if prev is not None and r.trial - prev < near else True
        up = up and (r.val_bpb - lo) <= TOP_FROM * (hi - lo)
        prev = r.trial
        left = r.trial > RIGHT_FROM * last
        text = f"#{r.trial} {mpl_text(r.description)}"
        ax.annotate(text, (r.trial, r.val_bpb), xytext=(-5 if left else 5, 7 if up else -9),
                    textcoords="offset points", fontsize=7, rotation=(20 if up else -20) * (-1 if left else 1),
                    va="bottom" if up else "top", ha="right" if left else "left", rotation_mode="anchor",
                    color="#1a661a", annotation_clip=False)


def _failure_band(band, failed: list[TrialRecord], rejected: list[TrialRecord]) -> None:
    """Failures on their own row under the scores (y 1), rejected patches on another (y 0): no value axis."""
    if failed:
        band.scatter([r.trial for r in failed], [1] * len(failed), marker="x", color="#d62728", s=40,
                     label="crash / timeout / oom / ...", zorder=4)
        if len(failed) <= MAX_STATUS_NOTES:
            for r in failed:
                band.annotate(r.status, (r.trial, 1), xytext=(0, -5), textcoords="offset points", fontsize=6,
                              ha="center", va="top", color="#d62728")
    if rejected:
        band.scatter([r.trial for r in rejected], [0] * len(rejected), marker="|", color="#7f7f7f", s=60,
                     label="rejected patch", zorder=4)
    band.set_ylim(-0.7, 1.7)
    band.set_yticks([0, 1], ["rejected", "failed"], fontsize=8)
    band.grid(axis="x", alpha=0.3)
    band.set_facecolor("#fbf3f3")


def plot(records: list[TrialRecord], path: Path, title: str = "", floor: float | None = None) -> Path:
    return _save(figure(records, title, floor), path)


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- loss curves
def parse_loss(text: str) -> list[tuple[int, float]]:
    """(step, loss) of every progress line of a train log that parses (finite loss, step >= 0), thinned evenly to
    MAX_CURVE_POINTS. Everything else in the log is ignored."""
    points = []
    for line in text.splitlines():
        pairs = parse_step_line(line)
        try:
            step, loss = int(pairs["step"]), float(pairs["loss"])
        except (KeyError, ValueError):
            continue
        if step >= 0 and math.isfinite(loss):
            points.append((step, loss))
    if len(points) > MAX_CURVE_POINTS:
        stride = math.ceil(len(points) / MAX_CURVE_POINTS)
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    return points


def read_curve(run_dir: Path, trial: int) -> list[tuple[int, float]]:
    """The parsed loss curve of trials/<trial>/train.log ([] when there is no log)."""
    try:
        return parse_loss((Path(run_dir) / "trials" / str(trial) / "train.log").read_text(errors="replace"))
    except OSError:
        return []


def curve_trials(records: list[TrialRecord], latest: int = LATEST_CURVES) -> list[tuple[TrialRecord, str]]:
    """The trials whose curves are drawn, each with its role: the baseline, the best (when it is not the
    baseline), and the latest `latest` other candidates that were trained (rejected ones never were)."""
    base, best = baseline_of(records), best_of(records)
    out = [(base, "baseline")] if base else []
    if best is not None and best is not base:
        out.append((best, "best"))
    chosen = {r.trial for r, _ in out}
    trained = [r for r in records if r.kind == "candidate" and r.status != "rejected" and r.trial not in chosen]
    return out + [(r, r.status) for r in trained[-latest:]]


@dataclass
class Curve:
    trial: int
    role: str                           # baseline | best | the trial's status
    label: str                          # "#trial role description", ready for matplotlib
    points: list                        # [(step, loss)], parsed from the candidate's own log


def loss_series(run_dir: Path, records: list[TrialRecord], latest: int = LATEST_CURVES) -> list[Curve]:
    """The curves of the curve_trials that have one in their train.log."""
    out = []
    for r, role in curve_trials(records, latest):
        points = read_curve(run_dir, r.trial)
        if points:
            desc = "" if role == "baseline" else f" {mpl_text(r.description)}"
            out.append(Curve(r.trial, role, f"#{r.trial} {role}{desc}", points))
    return out


def loss_figure(series: list[Curve], title: str = ""):
    """Training loss vs step, one line per curve; a note when there is none."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
    colors = {"baseline": "#555555", "best": KEPT}
    others = iter(OTHER_COLORS * (1 + len(series) // len(OTHER_COLORS)))
    for c in series:
        color = colors.get(c.role) or next(others)
        ax.plot([s for s, _ in c.points], [v for _, v in c.points], label=c.label, color=color,
                linewidth=1.8 if c.role in colors else 1, marker="." if len(c.points) < 30 else None)
    if not series:
        ax.text(0.5, 0.5, "no progress lines in the trials' train logs", transform=ax.transAxes, ha="center",
                color="#777777")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (candidate-reported)")
    ax.set_title(f"{mpl_text(title, None) + ': ' if title else ''}training loss as each candidate reported it "
                 "(untrusted; the score is val_bpb)", fontsize=10)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot_losses(run_dir: Path, records: list[TrialRecord], path: Path, title: str = "") -> Path:
    return _save(loss_figure(loss_series(run_dir, records), title), path)
