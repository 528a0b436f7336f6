"""report.html is one self-contained page (figures inlined, no script, no network) with the trial table and, per
trial, its result, diff, log tail and loss curve; a candidate's or an LLM's text on it stays text. Checked in a
real headless Chromium: the DOM it builds, after any script would have run."""
import html
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from runner.ledger import TrialRecord
from runner.report import write
from tests.test_report import make_run, train_log

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get "
                                    "install -y chromium); the page is checked in a real browser")

# What a hostile description, reason, log line or diff line tries: close the element it sits in and add one of
# its own (script, image, iframe, svg), a terminal clipboard write (OSC 52), a hyperlink (OSC 8), a screen clear,
# a bidi override, a bell.
INJECT = ("</td></tr></table></h3><script>document.body.insertAdjacentHTML('beforeend','<div id=\"pwned\"></div>')"
          "</script><img id=pwned-img src=x>")
OSC = "\x1b]52;c;aGVsbG8=\x07 \x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\ \x1b[2J \u202eevil\u202c"
DESCRIPTION = f"tune LR {INJECT} {OSC}"
REASON = "</pre><iframe id=pwned-frame src=\"http://evil.example/\"></iframe> &amp; &lt;b&gt;"
LOG_LINE = "</pre><script>document.title='pwned'</script><b id=pwned-b>bold</b> \x1b[31mred\x1b[0m\r\x08"
DIFF = ("--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-LR = 0.04\n"
        "+LR = 0.06  # </pre><svg id=pwned-svg onload=alert(1)></svg>\n")


class Dom(HTMLParser):
    """The elements (tag, attrs) and the text of a page, as a browser's DOM serialisation gives them."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.chunks = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def ids(self) -> set:
        return {a["id"] for _, a in self.elements if a.get("id")}

    def tags(self, name: str) -> list[dict]:
        return [a for t, a in self.elements if t == name]


def browser_dom(page: Path, tmp_path: Path) -> str:
    """The DOM headless Chromium builds from the page (scripts, if any were allowed, have run)."""
    profile = tmp_path / "chromium-profile"
    out = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


def hostile_run(tmp_path) -> Path:
    recs = [TrialRecord(0, "baseline", "keep", "baseline", commit="a" * 40, val_bpb=1.0, num_steps=20),
            TrialRecord(1, "candidate", "keep", DESCRIPTION, commit="b" * 40, parent="a" * 40, val_bpb=0.9,
                        best_bpb_before=1.0, threshold=0.01, reason="0.9 beats 1.0 by 0.1 (> 0.01)",
                        recheck="the baseline ran again <script>document.title='pwned'</script>"),
            TrialRecord(2, "candidate", "crash", "a change that crashes", commit="c" * 40, parent="b" * 40,
                        reason=REASON, log_tail="Traceback\nRuntimeError: boom"),
            TrialRecord(3, "candidate", "rejected", "touch .git", reason="path '.git/config' is under .git")]
    logs = {0: train_log([5.0, 4.0, 3.5]), 1: train_log([5.0, 3.0, 2.0]) + LOG_LINE + "\n",
            2: "launch: running train.py\n" + LOG_LINE + "\nTraceback\nRuntimeError: boom\n"}
    run_dir = make_run(tmp_path, recs, logs=logs, floor=0.5)
    (run_dir / "trials" / "1" / "diff.patch").write_text(DIFF)
    return run_dir


def test_the_page_is_self_contained_and_forbids_scripts_by_its_own_policy(tmp_path):
    page = write(hostile_run(tmp_path), "t").html
    dom = Dom(page.read_text())
    csp = [a["content"] for a in dom.tags("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"]
    links = [a.get(k) for _, a in dom.elements for k in ("src", "href") if a.get(k)]
    assert links and all(x.startswith(("data:image/png;base64,", "#")) for x in links)
    assert not dom.tags("script") and not dom.tags("link") and not dom.tags("iframe")


@needs_chromium
def test_a_browser_shows_every_trial_and_hostile_text_as_text_with_nothing_injected(tmp_path):
    page = write(hostile_run(tmp_path), "t").html
    raw = browser_dom(page, tmp_path)
    dom = Dom(raw)
    # nothing ran and nothing broke out: no element of the hostile text exists, the title is the page's own
    assert not dom.ids() & {"pwned", "pwned-img", "pwned-frame", "pwned-b", "pwned-svg"}
    assert not dom.tags("script") and not dom.tags("iframe") and not dom.tags("svg")[0].get("onload")
    assert [a["id"] for a in dom.tags("img")] == ["img-progress", "img-loss"]
    assert all(a["src"].startswith("data:image/png;base64,") for a in dom.tags("img"))
    assert "<title>autoresearch run t</title>" in raw
    assert not set(raw) & {"\x1b", "\x07", "\x08", "\r", "\u202e"}
    # the hostile text is there, as text, escaped for a person
    text = dom.text
    assert "tune LR </td></tr></table></h3><script>document.body.insertAdjacentHTML" in text
    assert "\\x1b]52;c;aGVsbG8=\\x07" in text and "\\u202eevil" in text
    assert "</pre><iframe id=pwned-frame" in text and "&amp; &lt;b&gt;" in text
    assert "</pre><script>document.title='pwned'</script><b id=pwned-b>bold</b> \\x1b[31mred" in text
    assert '+LR = 0.06  # </pre><svg id=pwned-svg onload=alert(1)></svg>' in text
    # every trial: a table row, a section with its result, the curve where its log has progress lines
    rows = [a["id"] for a in dom.tags("tr") if a.get("id")]
    assert rows == ["row-0", "row-1", "row-2", "row-3"]
    assert {"trial-0", "trial-1", "trial-2", "trial-3"} <= dom.ids()
    assert len(dom.tags("polyline")) == 2                                  # trials 0 and 1 logged progress
    assert "RuntimeError: boom" in text and "path '.git/config' is under .git" in text
    assert "recheck: the baseline ran again <script>document.title='pwned'</script>" in text
    assert "3 experiments, 1 kept" in text and "val_bpb down 10.00%" in text and "data floor 0.5000" in text


@needs_chromium
def test_the_browser_check_sees_a_script_that_runs(tmp_path):
    """The check above can fail: in a page that does not escape, Chromium runs the injected script."""
    page = tmp_path / "unsafe.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>t</title></head><body><p>{DESCRIPTION}</p></body></html>")
    dom = Dom(browser_dom(page, tmp_path))
    assert "pwned" in dom.ids() and dom.tags("script")


def test_without_a_diff_file_the_diff_comes_from_git(tmp_path):
    from runner.workspace import Workspace, init_repo
    repo = tmp_path / "exp"
    start = init_repo(repo, {"train.py": "LR = 0.04\n"})
    ws = Workspace(repo)
    commit = ws.commit_files(start, {"train.py": "LR = 0.06  # <b>\n"}, "trial 1")
    recs = [TrialRecord(0, "baseline", "keep", "baseline", commit=start, val_bpb=1.0),
            TrialRecord(1, "candidate", "discard", "LR", commit=commit, parent=start, val_bpb=1.1,
                        best_bpb_before=1.0)]
    run_dir = make_run(tmp_path, recs, meta={"repo": str(repo)})
    page = write(run_dir, "t").html.read_text()
    assert "-LR = 0.04" in Dom(page).text and "+LR = 0.06  # <b>" in Dom(page).text
    assert f"# {html.escape('<b>')}</span>" in page
