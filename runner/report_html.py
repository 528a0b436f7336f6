"""report.html: one self-contained page for a run. TRUSTED CODE; every description, reason, diff and log is hostile.

    document(run_dir, tag, records, policy, meta, floor, images) -> str

The page needs nothing but itself: the figures are inlined as data: URIs (base64 PNG), the CSS is inline, the
per-trial loss curves are inline SVG built from numbers only, and there is no script. A Content-Security-Policy
meta tag (default-src 'none'; images from data: only; inline style) makes a browser refuse any script, frame,
font, fetch or remote image even if one were injected.

What it shows: report.md's header facts (runner.report.facts), progress.png and loss_curves.png, the trial table
(each row links to its trial), and per trial its result (status, val_bpb, the best before it, reason), its loss
curve as the candidate reported it, its diff (trials/<n>/diff.patch, else `git diff parent commit` in the
experiment repository) and the last LOG_TAIL_LINES lines of its train.log.

Escaping contract: every string that is not the runner's own formatting of a number passes through
runner.text (one_line for a single-line field, printable for a diff or log) and then html.escape (quotes too),
so no text can open a tag, close a <pre>, start an entity that means something else, or carry a control or
terminal sequence. Lines of a diff are classed by their first character only.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from .decision import noop_warning
from .errors import InfraError, UserError
from .ledger import TrialRecord
from .report import CLAIMS_NOTE, COLUMNS, facts, row
from .report_figures import read_curve
from .text import one_line, printable

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
LOG_TAIL_LINES = 40             # of a trial's train.log shown on the page
LOG_TAIL_BYTES = 64 << 10       # read from the end of train.log to find them
MAX_DIFF_CHARS = 40_000         # of one trial's diff shown on the page
SVG_W, SVG_H, SVG_PAD = 360, 120, 28   # a trial's loss curve, pixels

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
ul.facts{list-style:none;padding:0}ul.facts li{margin:.15em 0}ul.facts b{display:inline-block;min-width:9em}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em .8em;font-weight:bold}
img{max-width:100%;border:1px solid #eee}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #ddd;padding:2px 6px;vertical-align:top}
th{background:#f4f4f4;position:sticky;top:0}td.num{text-align:right;font-family:monospace;white-space:nowrap}
tr.keep td{background:#eaf7ea}tr.failed td{background:#fbeaea}tr.rejected td,tr.stale td{color:#777}
td.text{max-width:28em;overflow-wrap:anywhere}
section.trial{border:1px solid #ddd;border-radius:4px;margin:1em 0;padding:.3em 1em .8em}
section.trial h3{margin:.4em 0;font-size:1.05em;overflow-wrap:anywhere}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:12px;max-height:30em;white-space:pre}
pre.diff .add{color:#116611;background:#eaffea}pre.diff .del{color:#991111;background:#ffecec}
pre.diff .hunk{color:#555}
.status{font-weight:bold}.status.keep{color:#1a7a1a}.status.failed{color:#b22}
.note{color:#666;font-size:12px}
"""


def esc(text: object) -> str:
    """A single-line field for the page: one line, escaped for HTML (attributes included)."""
    return html.escape(one_line(" ".join(str(text).split())))


def esc_block(text: object) -> str:
    """Multi-line text (a log, a diff) for a <pre>: control characters escaped, then HTML."""
    return html.escape(printable(text))


def data_uri(path: Path) -> str:
    """A PNG file as a data: URI (the page loads nothing)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _status_class(status: str) -> str:
    if status == "keep":
        return "keep"
    if status in ("discard", "rejected", "stale"):
        return status
    return "failed"


def document(run_dir: Path, tag: str, records: list[TrialRecord], policy, meta: dict, floor: float | None,
             images: dict[str, Path]) -> str:
    """The page's text. images: {"progress": progress.png, "loss": loss_curves.png}, inlined when they exist."""
    run_dir = Path(run_dir)
    warning = noop_warning(policy) if policy is not None else None
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>autoresearch run {esc(tag)}</title><style>{STYLE}</style></head><body>",
             f"<h1>autoresearch run <code>{esc(tag)}</code></h1>"]
    if warning:
        parts.append(f'<p class="warn">{esc(warning)}</p>')
    parts.append('<ul class="facts" id="facts">')
    for name, value in facts(tag, records, policy, meta, floor):
        value = f"<code>{esc(value)}</code>" if name == "best train.py" else esc(value)
        parts.append(f"<li><b>{esc(name)}</b> {value}</li>" if name else f"<li>{value}</li>")
    parts.append("</ul>")
    parts.append("<h2>Progress</h2>")
    for key, alt in (("progress", "val_bpb of every trial"), ("loss", "training loss curves")):
        if key in images and Path(images[key]).is_file():
            parts.append(f'<p><img id="img-{key}" alt="{alt}" src="{data_uri(images[key])}"></p>')
    parts += ["<h2>Trials</h2>", f'<p class="note">{html.escape(CLAIMS_NOTE)}</p>', _table(records),
              "<h2>Each trial</h2>"]
    parts += [_trial(run_dir, r, meta, policy) for r in sorted(records, key=lambda r: r.trial)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _table(records: list[TrialRecord]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    out = [f'<table id="trials"><thead><tr>{head}</tr></thead><tbody>']
    for r in sorted(records, key=lambda r: r.trial):     # with slots the ledger is in decision order
        w = row(r)
        nums = (w.val_bpb, w.delta, w.steps, w.tokens_s, w.train_s, w.calibration_s, w.cpu_share, w.threshold,
                w.wall_s)
        base = " (baseline)" if w.kind == "baseline" else ""
        cells = [f'<td class="num"><a href="#trial-{w.trial}">{w.trial}</a>{base}</td>',
                 f'<td class="status {_status_class(w.status)}">{esc(w.status)}</td>',
                 *(f'<td class="num">{html.escape(x)}</td>' for x in nums),
                 f'<td class="text">{esc(w.description)}</td>',
                 f'<td class="text">{esc(w.reason)}{" (recheck: " + esc(w.recheck) + ")" if w.recheck else ""}</td>']
        out.append(f'<tr class="{_status_class(w.status)}" id="row-{w.trial}">{"".join(cells)}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _trial(run_dir: Path, r: TrialRecord, meta: dict, policy) -> str:
    w = row(r)
    cls = _status_class(r.status)
    before = f", best before {r.best_bpb_before:.6f}" if r.best_bpb_before is not None else ""
    result = (f'<p class="result"><span class="status {cls}">{esc(r.status)}</span> val_bpb {html.escape(w.val_bpb)}'
              f"{before}, vs best before {html.escape(w.delta)}, threshold {html.escape(w.threshold)}; "
              f"steps (claimed) {html.escape(w.steps)}, train s (host) {html.escape(w.train_s)}, "
              f"wall s {html.escape(w.wall_s)}</p>")
    reason = f'<p class="reason">{esc(r.reason)}</p>' if r.reason else ""
    if w.recheck:
        reason += f'<p class="reason recheck">recheck: {esc(w.recheck)}</p>'

    commit = f" <code>{esc((r.commit or '')[:12])}</code>" if r.commit else ""
    trained = r.status != "rejected"        # a rejected patch never reached a container
    curve = (f'<div class="curve"><span class="note">training loss, as the candidate reported it</span><br>'
             f"{svg_curve(read_curve(run_dir, r.trial))}</div>") if trained else ""
    diff = _diff(run_dir, r, meta, policy)
    no_diff = "the start commit, unchanged" if r.kind == "baseline" else "no diff recorded"
    log = _log_tail(run_dir / "trials" / str(r.trial) / "train.log") or r.log_tail
    return "\n".join([
        f'<section class="trial {cls}" id="trial-{r.trial}">',
        f"<h3>#{r.trial} {'baseline' if r.kind == 'baseline' else esc(r.description)}{commit}</h3>",
        result, reason, curve,
        f'<details class="diff"{" open" if r.status == "keep" else ""}><summary>diff</summary>'
        f'<pre class="diff">{_diff_html(diff)}</pre></details>' if diff else f'<p class="note">{no_diff}</p>',
        f'<details class="log"{" open" if cls == "failed" else ""}><summary>train.log, last {LOG_TAIL_LINES} '
        f'lines</summary><pre class="log">{esc_block(log)}</pre></details>' if log else
        ('<p class="note">no train log</p>' if trained else ""),
        "</section>"])


def _diff(run_dir: Path, r: TrialRecord, meta: dict, policy) -> str:
    """The trial's diff: trials/<n>/diff.patch, else git's diff of its commit against its parent ("" if none)."""
    try:
        return (run_dir / "trials" / str(r.trial) / "diff.patch").read_text(errors="replace")[:MAX_DIFF_CHARS]
    except OSError:
        pass
    if r.kind != "candidate" or not r.commit or not r.parent or not isinstance(meta.get("repo"), str):
        return ""
    from .workspace import Workspace
    files = list(policy.patch.allowed_files) if policy is not None else ["train.py"]
    try:
        return Workspace(meta["repo"]).git("diff", "--no-color", "--no-ext-diff", "--no-textconv", r.parent,
                                           r.commit, "--", *files, strip=False)[:MAX_DIFF_CHARS]
    except (InfraError, UserError):
        return ""


def _diff_html(diff: str) -> str:
    out = []
    for line in printable(diff).split("\n"):
        cls = ("add" if line.startswith("+") and not line.startswith("+++") else
               "del" if line.startswith("-") and not line.startswith("---") else
               "hunk" if line.startswith("@@") else "")
        text = html.escape(line)
        out.append(f'<span class="{cls}">{text}</span>' if cls else text)
    return "\n".join(out)


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def svg_curve(points: list[tuple[int, float]]) -> str:
    """A small inline SVG of (step, loss): numbers only, so nothing in it comes from the candidate as text."""
    if not points:
        return '<span class="note">(no progress lines in its train.log)</span>'
    xs, ys = [float(s) for s, _ in points], [float(v) for _, v in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (SVG_W - 2 * SVG_PAD) / ((x1 - x0) or 1.0)
    sy = (SVG_H - 2 * SVG_PAD) / ((y1 - y0) or 1.0)
    pts = " ".join(f"{SVG_PAD + (x - x0) * sx:.1f},{SVG_H - SVG_PAD - (y - y0) * sy:.1f}" for x, y in zip(xs, ys))
    mark = "".join(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2"/>' for p in pts.split()) \
        if len(points) < 30 else ""
    return (f'<svg class="loss" xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{SVG_H}" '
            f'viewBox="0 0 {SVG_W} {SVG_H}" role="img" aria-label="training loss curve">'
            f'<rect x="{SVG_PAD}" y="{SVG_PAD / 2:.0f}" width="{SVG_W - 2 * SVG_PAD}" '
            f'height="{SVG_H - 1.5 * SVG_PAD:.0f}" fill="#fafafa" stroke="#ddd"/>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/><g fill="#1f77b4">{mark}</g>'
            f'<text x="2" y="{SVG_PAD}" font-size="10">{y1:.3g}</text>'
            f'<text x="2" y="{SVG_H - SVG_PAD}" font-size="10">{y0:.3g}</text>'
            f'<text x="{SVG_PAD}" y="{SVG_H - 4}" font-size="10">step {x0:.0f}</text>'
            f'<text x="{SVG_W - SVG_PAD}" y="{SVG_H - 4}" font-size="10" text-anchor="end">step {x1:.0f}</text>'
            "</svg>")
