"""The patch policy: whether a proposal may become a commit at all. TRUSTED CODE; every proposal is untrusted.

`check` takes any proposer's `Proposal` (full new texts of the files it changes) and refuses it unless it writes
only the policy's allowed files, with no `..`, no absolute paths, nothing under `.git`, no git metadata files
(.gitattributes, .gitmodules, ...), no symlinks or submodules, no file mode changes, no control or bidi characters
(they disguise code in git, editors and terminals), no NUL bytes, at most MAX_FILE_BYTES per file and at most
`max_diff_lines` changed lines. A refusal is final: the trial is logged as `rejected` with the reason and never
reaches a container. `clean_description` makes any proposal's description one printable line (it becomes a
commit message and a TSV cell).

This module imports no proposer: the reply format of the `openai` proposer lives in `runner.proposers.reply`,
which depends on this module, never the other way round.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .policy import PatchRules

if TYPE_CHECKING:                 # for annotations only: the policy reads a Proposal, it imports no proposer
    from .proposers.base import Proposal

MAX_DESCRIPTION = 200             # characters of a description (a commit message's subject, a TSV cell)
MAX_FILE_BYTES = 1 << 20          # a candidate file larger than 1 MiB is refused
# bidi controls: the Trojan Source characters that make code read differently than it runs
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_description(text: str) -> str:
    """One printable line of at most MAX_DESCRIPTION characters (it becomes a commit message and a TSV cell)."""
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text[:MAX_DESCRIPTION]


@dataclass
class PatchCheck:
    """The patch policy's verdict on one proposal."""
    ok: bool
    reason: str = ""          # why it was refused (one line), empty when ok
    diff_lines: int = 0       # added + removed lines over all files
    diff: str = ""            # unified diff of the accepted change (for the ledger directory and the prompt)


def path_refusal(path: object, rules: PatchRules, tree: dict[str, str]) -> str:
    """Why a path may not be written ('' if it may). `tree` maps the parent commit's paths to git modes."""
    if not isinstance(path, str) or not path or any(not c.isprintable() for c in path):
        return f"path {path!r} is empty or holds control characters"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return f"absolute path {path!r}; paths are relative to the repository root"
    if "\\" in path:
        return f"path {path!r} holds a backslash; use '/'"
    parts = path.split("/")
    if ".." in parts:
        return f"path {path!r} climbs out with '..'"
    if any(p in ("", ".") for p in parts):
        return f"path {path!r} is not canonical (empty or '.' component)"
    for p in parts:
        bare = p.rstrip(". ").casefold()
        if bare == ".git" or bare == "git~1":
            return f"path {path!r} is under .git"
    if parts[-1].casefold().startswith(".git"):
        return f"path {path!r} is git metadata ({parts[-1]}); attributes, submodules and ignores are not editable"
    for k in range(1, len(parts) + 1):
        mode = tree.get("/".join(parts[:k]))
        if mode == "120000":
            return f"path {path!r} goes through the symlink {'/'.join(parts[:k])}; links are refused"
        if mode == "160000":
            return f"path {path!r} is inside the submodule {'/'.join(parts[:k])}; submodules are refused"
        if mode == "040000" and k == len(parts):
            return f"path {path!r} is a directory in the repository"
    if path not in rules.allowed_files:
        return f"{path} is not an allowed file (allowed: {', '.join(rules.allowed_files)})"
    return ""


def hidden_control(text: str) -> str:
    """'' when text holds no control character but tab, newline, CR and form feed, and no bidi control (the
    Trojan Source characters); else which one and on which line, e.g. 'U+202E on line 12'."""
    for i, ch in enumerate(text):
        code = ord(ch)
        if (code < 0x20 and ch not in "\t\n\r\f") or 0x7F <= code <= 0x9F or ch in BIDI_CONTROLS:
            return f"U+{code:04X} on line {text.count(chr(10), 0, i) + 1}"
    return ""


def check(proposal: Proposal, rules: PatchRules, tree: dict[str, str], current: dict[str, str]) -> PatchCheck:
    """Apply the patch policy. `tree`: {path: mode} of the parent commit; `current`: its allowed files' texts."""
    if not proposal.files:
        return PatchCheck(False, "the proposal changes no file")
    for path in proposal.files:
        if reason := path_refusal(path, rules, tree):
            return PatchCheck(False, reason)
    for path, mode in proposal.modes.items():
        if mode == "120000":
            return PatchCheck(False, f"{path}: a symlink (mode 120000) was requested; links are refused")
        if mode == "160000":
            return PatchCheck(False, f"{path}: a submodule (mode 160000) was requested; submodules are refused")
        if mode != tree.get(path, "100644"):
            return PatchCheck(False, f"{path}: file mode change {tree.get(path, 'new file')} -> {mode} is refused")
        if path not in proposal.files:
            return PatchCheck(False, f"{path}: a mode was requested for a file the proposal does not change")
    diff_parts: list[str] = []
    changed = 0
    for path, text in sorted(proposal.files.items()):
        if not isinstance(text, str):
            return PatchCheck(False, f"{path}: new content is not text")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
            return PatchCheck(False, f"{path}: new content is over {MAX_FILE_BYTES} bytes")
        if "\0" in text:
            return PatchCheck(False, f"{path}: new content holds NUL bytes; only text files are accepted")
        if hidden := hidden_control(text):
            return PatchCheck(False, f"{path}: new content holds {hidden}; control and bidi characters are refused "
                                "(they disguise code in git, editors and terminals); write them as escapes")
        old = current.get(path, "")
        if text == old and path in current:
            continue
        diff = list(difflib.unified_diff(old.splitlines(keepends=True), text.splitlines(keepends=True),
                                         f"a/{path}", f"b/{path}", n=3))
        changed += sum(1 for d in diff if d[:1] in "+-" and not d.startswith(("+++", "---")))
        diff_parts.extend(d if d.endswith("\n") else d + "\n\\ No newline at end of file\n" for d in diff)
    if changed == 0:
        return PatchCheck(False, "the proposal changes nothing (the new text equals the current one)")
    if changed > rules.max_diff_lines:
        return PatchCheck(False, f"the diff has {changed} changed lines, over the policy's max_diff_lines "
                            f"{rules.max_diff_lines}", diff_lines=changed)
    return PatchCheck(True, diff_lines=changed, diff="".join(diff_parts))

