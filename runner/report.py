"""The report of a run: progress.png, loss_curves.png, report.md and report.html, made from the ledger, run.json,
the data manifest and each trial's files. TRUSTED CODE; descriptions, reasons and logs are hostile text.

    write(run_dir, tag) -> Report      writes all four into the run directory and returns their paths
    markdown(tag, records, policy, meta, floor)   report.md's text

report.md: a header (the policy's warning when it can keep a change that does nothing, runner.decision.noop_warning;
"N experiments, M kept" over candidates only; baseline and best val_bpb; the improvement as "val_bpb down 27.96%";
the data floor; the run's wall time; proposer and model; LLM token totals and cost through runner.usage; the git
command that shows the best train.py's diff), then every trial in a table (status, val_bpb, its difference from
the best before it, steps and tokens/s as the candidate claimed them, the host's training seconds, calibration
seconds and CPU share when the ledger has them, the threshold, the trial's wall time, description and reason
(with the recheck: why the best or the candidate ran again before the decision)),
the trials by status, the kept changes in order, the failed, rejected and stale trials, and the slots.
Descriptions and reasons go into table cells through runner.text.markdown_cell: control and format characters
escaped, no Markdown link, image, HTML or entity. report.html (runner.report_html) shows the same and more.
Steps and tokens/s are the candidate's own claims: shown, labelled as claimed, never decided on.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from . import usage as llm_usage
from .decision import noop_warning
from .ledger import FAILED, Ledger, TrialRecord, baseline_of, best_of, number, summarize
from .report_figures import experiments, other_runs, plot, plot_losses
from .text import markdown_cell, one_line

REASON_CHARS = 240          # of a reason (and recheck) in the full trial table (the failed trials' table keeps 200)
CLAIMS_NOTE = ("Steps and tokens/s are the candidate's own claims (shown, never decided on); train s is the host's "
               "clock; vs best before is val_bpb minus the best it was compared against (negative: better).")


@dataclass
class Report:
    """The files `write` made."""
    progress: Path
    loss_curves: Path
    markdown: Path
    html: Path


@dataclass
class Row:
    """One trial as the tables show it: numbers formatted, "-" where unknown; description and reason raw."""
    trial: int
    kind: str
    status: str
    val_bpb: str
    delta: str          # val_bpb - the best before it (negative: better)
    steps: str          # claimed by the candidate
    tokens_s: str       # claimed by the candidate
    train_s: str        # the host's clock
    calibration_s: str
    cpu_share: str
    threshold: str
    wall_s: str
    description: str
    reason: str
    recheck: str        # why the best (or the candidate) was re-run before deciding, and what that gave


COLUMNS = ("trial", "status", "val_bpb", "vs best before", "steps (claimed)", "tokens/s (claimed)",
           "train s (host)", "calibration s", "CPU share", "threshold", "wall s", "description", "reason")


def improvement_pct(baseline: float | None, best: float | None) -> float | None:
    if baseline is None or best is None or baseline <= 0:
        return None
    return 100.0 * (baseline - best) / baseline


def improvement_text(baseline: float | None, best: float | None) -> str:
    """"val_bpb down 27.96%" (lower is better), "val_bpb up 1.20%", "no improvement", or "-" without scores."""
    pct = improvement_pct(baseline, best)
    if pct is None:
        return "-"
    if f"{abs(pct):.2f}" == "0.00":
        return "no improvement"
    return f"val_bpb {'down' if pct > 0 else 'up'} {abs(pct):.2f}%"


def _fmt(x, spec: str) -> str:
    x = number(x)
    return format(x, spec) if x is not None and math.isfinite(x) else "-"


def row(r: TrialRecord) -> Row:
    delta = (r.val_bpb - r.best_bpb_before if r.val_bpb is not None and r.best_bpb_before is not None else None)
    tps = number((r.train_summary or {}).get("tokens_per_second")) if isinstance(r.train_summary, dict) else None
    wall = r.finished_at - r.started_at if r.started_at and r.finished_at else None
    return Row(trial=r.trial, kind=r.kind, status=r.status, val_bpb=_fmt(r.val_bpb, ".6f"), delta=_fmt(delta, "+.6f"),
               steps=_fmt(r.num_steps, ".0f"), tokens_s=_fmt(tps, ",.0f"), train_s=_fmt(r.training_seconds, ".1f"),
               calibration_s=_fmt(getattr(r, "calibration_s", None), ".3f"),
               cpu_share=_fmt(getattr(r, "cpu_share", None), ".2f"),
               threshold=_fmt(r.threshold, ".6f") if r.kind == "candidate" else "-",
               wall_s=_fmt(wall, ".1f"), description=str(r.description), reason=str(r.reason),
               recheck=str(getattr(r, "recheck", "") or ""))


def run_meta(run_dir: Path) -> dict:
    """run.json ({} when there is none or it is not a JSON object)."""
    try:
        meta = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def run_policy(run_dir: Path):
    """The policy run.json records (None when there is no run.json or it does not hold a valid policy)."""
    from pydantic import ValidationError

    from .policy import Policy
    try:
        return Policy.model_validate(run_meta(run_dir)["policy"])
    except (KeyError, TypeError, ValueError, ValidationError):
        return None


def data_floor(meta: dict) -> float | None:
    """The BPB floor in the manifest of the run's data directory, when that manifest is still the one the run
    started with (its sha256 is run.json's); None otherwise or when the data records none."""
    from trainer.shards import DataError, load_manifest, manifest_sha256
    data = meta.get("data_dir")
    if not isinstance(data, str) or not data:
        return None
    try:
        if manifest_sha256(data) != meta.get("data_manifest_sha256"):
            return None
        floor = number(load_manifest(data).get("bpb_floor"))
    except (DataError, OSError, ValueError):
        return None
    return floor if floor is not None and math.isfinite(floor) and floor > 0 else None


def duration(seconds: float | None) -> str:
    """"2 h 5 min", "3 min 7 s", "12.5 s" ("-" when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = round(seconds)
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s" if s >= 60 \
        else f"{seconds:.1f} s"


def run_wall_s(records: list[TrialRecord]) -> float | None:
    """The first trial's start to the last one's end (a resumed run's pause included)."""
    starts = [r.started_at for r in records if r.started_at]
    ends = [r.finished_at for r in records if r.finished_at]
    return max(ends) - min(starts) if starts and ends else None


def facts(tag: str, records: list[TrialRecord], policy=None, meta: dict | None = None,
          floor: float | None = None) -> list[tuple[str, str]]:
    """The header's (name, value) pairs, shared by report.md and report.html. Values are the runner's own text,
    except the model name (the policy's) which is made one line."""
    meta = meta or {}
    s = summarize(tag, Path("."), records)
    base, best = baseline_of(records), best_of(records)
    n, m = experiments(records)
    out = [("", f"{n} experiments, {m} kept ({len(records)} trials with the baseline)"),
           ("baseline val_bpb", f"{_fmt(s.baseline_bpb, '.6f')}{_runs_of(base)}"),
           ("best val_bpb", (f"{_fmt(s.best_bpb, '.6f')}{_runs_of(best) if best is not base else ''} at commit "
                             f"{(s.best_commit or '-')[:12]}")),
           ("improvement", improvement_text(s.baseline_bpb, s.best_bpb))]
    if floor is not None:
        gap = f"; the best is {s.best_bpb - floor:.4f} above it" if s.best_bpb is not None else ""
        out.append(("data floor", f"{floor:.4f} bpb (the validation text's own entropy: no model can beat it){gap}"))
    started = number(meta.get("created_at"))
    when = f", started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}" if started else ""
    wall = run_wall_s(records)
    out.append(("wall time", f"{duration(wall)} (first trial's start to the last one's end{when})" if wall else "-"))
    proposer = one_line(meta.get("proposer") or (policy.proposer.kind if policy is not None else "-"))
    if proposer == "openai" and policy is not None:
        proposer += f", model {one_line(policy.proposer.model)}"
    out.append(("proposer", proposer))
    out.append(("LLM usage", _usage(records, policy, meta)))
    start, branch = meta.get("start_commit"), meta.get("branch") or f"autoresearch/{tag}"
    files = " ".join(policy.patch.allowed_files) if policy is not None else "train.py"
    if isinstance(start, str) and start:
        out.append(("best train.py", f"git diff {start[:12]}..{one_line(branch)} -- {one_line(files)}"))
    return out


def _usage(records: list[TrialRecord], policy, meta: dict) -> str:
    """runner.usage's line for the run (tokens, cost, caps), with the seconds spent waiting on the endpoint and a
    note when the cost is unknown."""
    prices = policy.proposer.prices if policy is not None else None
    line = llm_usage.run_line(records, prices, meta).removeprefix("LLM: ")
    if not line:
        return "no LLM calls"
    total = llm_usage.totals(records)
    unknown = "; cost unknown (no proposer.prices in the policy)" if prices is None and total.calls else ""
    return f"{line}{unknown}; {total.seconds:.1f} s in LLM calls"


def markdown(tag: str, records: list[TrialRecord], policy=None, meta: dict | None = None,
             floor: float | None = None) -> str:
    warning = noop_warning(policy) if policy is not None else None
    lines = [f"# autoresearch run `{tag}`", "", *([f"> **{warning}**", ""] if warning else [])]
    for name, value in facts(tag, records, policy, meta, floor):
        value = f"`{value}`" if name == "best train.py" else value
        lines.append(f"- {name}: {value}" if name else f"- {value}")
    lines += ["", CLAIMS_NOTE, "", "## Trials", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in sorted(records, key=lambda r: r.trial):     # with slots the ledger is in decision order
        w = row(r)
        lines.append(f"| #{w.trial}{' (baseline)' if w.kind == 'baseline' else ''} | {w.status} | {w.val_bpb} | "
                     f"{w.delta} | {w.steps} | {w.tokens_s} | {w.train_s} | {w.calibration_s} | {w.cpu_share} | "
                     f"{w.threshold} | {w.wall_s} | {_cell(w.description)} | {_cell(_reason(w), REASON_CHARS)} |")
    s = summarize(tag, Path("."), records)
    lines += ["", "## Trials by status", "", "| status | trials |", "|---|---|"]
    for status, n in sorted(s.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {status} | {n} |")
    lines += ["", "## Kept changes, in order", "",
              "| trial | commit | val_bpb | gain | description |", "|---|---|---|---|---|"]
    for r in records:
        if r.status == "keep":
            gain = f"{r.best_bpb_before - r.val_bpb:+.6f}" if r.best_bpb_before is not None else "(baseline)"
            lines.append(f"| {r.trial} | `{(r.commit or '')[:7]}` | {_fmt(r.val_bpb, '.6f')} | {gain} | "
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
    changed = (meta or {}).get("policy_changes") or []
    if changed:                                          # accepted on --resume (runner.policy_change)
        lines += ["", "## Policy changes on --resume", "", "| after trials | changes |", "|---|---|"]
        for c in changed:
            what = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in (c.get("changes") or {}).items()
                             if isinstance(v, list) and len(v) == 2)
            lines.append(f"| {_cell(c.get('trials', '-'))} | {_cell(what)} |")
    lines += ["", "![progress](progress.png)", "", "![training loss](loss_curves.png)", ""]
    return "\n".join(lines)


def _reason(w: Row) -> str:
    return f"{w.reason} (recheck: {w.recheck})" if w.recheck else w.reason


def _runs_of(r: TrialRecord | None) -> str:
    """' (seed S; other seeds: a, b)' when the commit was run with other seeds too."""
    others = other_runs(r) if r is not None else []
    return f" (seed {r.seed}; other seeds: {', '.join(f'{b:.6f}' for b in others)})" if others else ""


def _cell(text: str, limit: int | None = None) -> str:
    return markdown_cell(" ".join(str(text).split()), limit)


def write(run_dir: str | Path, tag: str | None = None) -> Report:
    """Write progress.png, loss_curves.png, report.md and report.html into the run directory."""
    from .report_html import document
    run_dir = Path(run_dir)
    records = Ledger(run_dir).records()
    tag = tag or run_dir.name
    meta, policy = run_meta(run_dir), run_policy(run_dir)
    floor = data_floor(meta)
    title = f"autoresearch run {tag}"
    png = plot(records, run_dir / "progress.png", title, floor)
    losses = plot_losses(run_dir, records, run_dir / "loss_curves.png", title)
    md = run_dir / "report.md"
    md.write_text(markdown(tag, records, policy, meta, floor))
    page = run_dir / "report.html"
    page.write_text(document(run_dir, tag, records, policy, meta, floor, {"progress": png, "loss": losses}))
    return Report(progress=png, loss_curves=losses, markdown=md, html=page)
