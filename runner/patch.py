"""Patches: the LLM reply format (parsed strictly) and the patch policy. TRUSTED CODE; every patch is untrusted.

Reply format (the only one accepted; `runner.proposers.prompt` shows it to the model):

    DESCRIPTION: one line saying what changed and why

    <<<<<<< SEARCH train.py
    exact lines copied from the current file
    =======
    the lines that replace them
    >>>>>>> REPLACE

One DESCRIPTION line and one or more blocks. Marker lines must match exactly (the path follows `SEARCH ` on the
opening line). Text outside blocks (a ``` fence, a remark) is ignored; inside a block every line counts. Blocks are
applied in order; each SEARCH text must occur exactly once in the file as it stands after the blocks before it.
An empty SEARCH creates a file that does not exist yet. A reply that breaks any rule is a `PatchError`, whose
one-line message is fed back to the model.

The patch policy (`check`) then decides whether a proposal may become a commit at all: only the policy's allowed
files, no `..`, no absolute paths, nothing under `.git`, no git metadata files (.gitattributes, .gitmodules, ...),
no symlinks or submodules, no file mode changes, no control or bidi characters (they disguise code in git, editors
and terminals), at most `max_diff_lines` changed lines. A refusal is final: the trial is logged as `rejected` with the reason and never reaches a container.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from .policy import PatchRules
from .proposers.base import Proposal

OPEN = re.compile(r"^<<<<<<< SEARCH (\S.*?)\s*$")
MID = "======="
CLOSE = ">>>>>>> REPLACE"
DESCRIPTION = re.compile(r"^DESCRIPTION:\s*(.*?)\s*$")
MAX_DESCRIPTION = 200
MAX_FILE_BYTES = 1 << 20          # a candidate file larger than 1 MiB is refused
REGULAR_MODES = ("100644", "100755")
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class PatchError(Exception):
    """A reply that does not parse or does not apply. One line, meant to be fed back to the model."""


@dataclass
class Block:
    path: str
    search: str
    replace: str


@dataclass
class Reply:
    description: str
    blocks: list[Block]


# --------------------------------------------------------------------------- reply format

def parse_reply(text: str) -> Reply:
    """Parse a model reply into a description and search/replace blocks, or raise PatchError."""
    lines = text.replace("\r\n", "\n").split("\n")
    descriptions: list[str] = []
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := DESCRIPTION.match(line):
            descriptions.append(m.group(1))
        elif m := OPEN.match(line):
            block, i = _read_block(lines, i, m.group(1))
            blocks.append(block)
            continue
        elif line.strip() in (MID, CLOSE) or line.startswith("<<<<<<<"):
            raise PatchError(f"line {i + 1}: {line.strip()[:40]!r} outside a block; every block opens with "
                             "'<<<<<<< SEARCH <path>'")
        i += 1
    if not blocks:
        raise PatchError("the reply holds no '<<<<<<< SEARCH <path>' block; reply in the required format")
    if len(descriptions) != 1 or not descriptions[0]:
        raise PatchError(f"the reply needs exactly one non-empty 'DESCRIPTION: ...' line, found {len(descriptions)}")
    return Reply(description=clean_description(descriptions[0]), blocks=blocks)


def _read_block(lines: list[str], start: int, path: str) -> tuple[Block, int]:
    """Read the block opening at lines[start]; returns it and the index of the line after its end."""
    parts: list[list[str]] = [[]]
    for j in range(start + 1, len(lines)):
        line = lines[j]
        if OPEN.match(line):
            raise PatchError(f"line {j + 1}: a new SEARCH block opens before the block of line {start + 1} closed")
        if line == MID:
            if len(parts) == 2:
                raise PatchError(f"line {j + 1}: a second '=======' in the block of line {start + 1}")
            parts.append([])
        elif line == CLOSE:
            if len(parts) != 2:
                raise PatchError(f"line {j + 1}: '>>>>>>> REPLACE' before '=======' in the block of line {start + 1}")
            search, replace = ("".join(x + "\n" for x in p) for p in parts)
            return Block(path=path, search=search, replace=replace), j + 1
        else:
            parts[-1].append(line)
    raise PatchError(f"the block opened on line {start + 1} never closes with '>>>>>>> REPLACE'")


def clean_description(text: str) -> str:
    """One printable line of at most MAX_DESCRIPTION characters (it becomes a commit message and a TSV cell)."""
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text[:MAX_DESCRIPTION]


def apply_blocks(files: dict[str, str], blocks: list[Block], known: set[str] | None = None) -> dict[str, str]:
    """Apply blocks to the current files; returns {path: new text} for every path a block names.

    `files` holds the texts the blocks apply to. A path outside `files` and outside `known` is passed through
    unapplied (its REPLACE texts joined) so that the policy, not the parser, refuses it with the reason.
    """
    known = set(files) if known is None else known
    out: dict[str, str] = {}
    for n, b in enumerate(blocks, 1):
        if b.path not in files and b.path not in known:
            out[b.path] = out.get(b.path, "") + b.replace
            continue
        text = out.get(b.path, files.get(b.path))
        if text is None:
            if b.search:
                raise PatchError(f"block {n}: {b.path} does not exist, so its SEARCH part must be empty")
            out[b.path] = b.replace
            continue
        if not b.search:
            raise PatchError(f"block {n}: empty SEARCH for {b.path}, which exists; copy the lines to replace")
        count = text.count(b.search)
        if count != 1:
            what = "not found" if count == 0 else f"found {count} times"
            raise PatchError(f"block {n}: SEARCH text {what} in {b.path}; it must match exactly one place in the "
                             "current file, character for character (indentation included)")
        out[b.path] = text.replace(b.search, b.replace, 1)
    return out


# --------------------------------------------------------------------------- the policy

@dataclass
class Check:
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


def check(proposal: Proposal, rules: PatchRules, tree: dict[str, str], current: dict[str, str]) -> Check:
    """Apply the patch policy. `tree`: {path: mode} of the parent commit; `current`: its allowed files' texts."""
    if not proposal.files:
        return Check(False, "the proposal changes no file")
    for path in proposal.files:
        if reason := path_refusal(path, rules, tree):
            return Check(False, reason)
    for path, mode in proposal.modes.items():
        if mode == "120000":
            return Check(False, f"{path}: a symlink (mode 120000) was requested; links are refused")
        if mode == "160000":
            return Check(False, f"{path}: a submodule (mode 160000) was requested; submodules are refused")
        if mode != tree.get(path, "100644"):
            return Check(False, f"{path}: file mode change {tree.get(path, 'new file')} -> {mode} is refused")
        if path not in proposal.files:
            return Check(False, f"{path}: a mode was requested for a file the proposal does not change")
    diff_parts: list[str] = []
    changed = 0
    for path, text in sorted(proposal.files.items()):
        if not isinstance(text, str):
            return Check(False, f"{path}: new content is not text")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
            return Check(False, f"{path}: new content is over {MAX_FILE_BYTES} bytes")
        if "\0" in text:
            return Check(False, f"{path}: new content holds NUL bytes; only text files are accepted")
        if hidden := hidden_control(text):
            return Check(False, f"{path}: new content holds {hidden}; control and bidi characters are refused "
                                "(they disguise code in git, editors and terminals); write them as escapes")
        old = current.get(path, "")
        if text == old and path in current:
            continue
        diff = list(difflib.unified_diff(old.splitlines(keepends=True), text.splitlines(keepends=True),
                                         f"a/{path}", f"b/{path}", n=3))
        changed += sum(1 for d in diff if d[:1] in "+-" and not d.startswith(("+++", "---")))
        diff_parts.extend(d if d.endswith("\n") else d + "\n\\ No newline at end of file\n" for d in diff)
    if changed == 0:
        return Check(False, "the proposal changes nothing (the new text equals the current one)")
    if changed > rules.max_diff_lines:
        return Check(False, f"the diff has {changed} changed lines, over the policy's max_diff_lines "
                            f"{rules.max_diff_lines}", diff_lines=changed)
    return Check(True, diff_lines=changed, diff="".join(diff_parts))
