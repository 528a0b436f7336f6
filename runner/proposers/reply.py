"""The `openai` proposer's reply format, parsed strictly and applied exactly. TRUSTED CODE; every reply is untrusted.

The only format accepted (`runner.proposers.prompt` shows it to the model):

    DESCRIPTION: one line saying what changed and why

    <<<<<<< SEARCH train.py
    exact lines copied from the current file
    =======
    the lines that replace them
    >>>>>>> REPLACE

One DESCRIPTION line and one or more blocks. Marker lines must match exactly (the path follows `SEARCH ` on the
opening line). Text outside blocks (a ``` fence, a remark) is ignored; inside a block every line counts. Blocks are
applied in order; each SEARCH text must occur exactly once in the file as it stands after the blocks before it.
An empty SEARCH creates a file that does not exist yet. A reply that breaks any rule is a `ReplyError`, whose
one-line message is fed back to the model. What a parsed reply may change is not decided here: the files it
yields go through the patch policy (`runner.patch.check`) like any other proposal's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..patch import clean_description

OPEN = re.compile(r"^<<<<<<< SEARCH (\S.*?)\s*$")
MID = "======="
CLOSE = ">>>>>>> REPLACE"
DESCRIPTION = re.compile(r"^DESCRIPTION:\s*(.*?)\s*$")


class ReplyError(Exception):
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


def parse_reply(text: str) -> Reply:
    """Parse a model reply into a description and search/replace blocks, or raise ReplyError."""
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
            raise ReplyError(f"line {i + 1}: {line.strip()[:40]!r} outside a block; every block opens with "
                             "'<<<<<<< SEARCH <path>'")
        i += 1
    if not blocks:
        raise ReplyError("the reply holds no '<<<<<<< SEARCH <path>' block; reply in the required format")
    if len(descriptions) != 1 or not descriptions[0]:
        raise ReplyError(f"the reply needs exactly one non-empty 'DESCRIPTION: ...' line, found {len(descriptions)}")
    return Reply(description=clean_description(descriptions[0]), blocks=blocks)


def _read_block(lines: list[str], start: int, path: str) -> tuple[Block, int]:
    """Read the block opening at lines[start]; returns it and the index of the line after its end."""
    parts: list[list[str]] = [[]]
    for j in range(start + 1, len(lines)):
        line = lines[j]
        if OPEN.match(line):
            raise ReplyError(f"line {j + 1}: a new SEARCH block opens before the block of line {start + 1} closed")
        if line == MID:
            if len(parts) == 2:
                raise ReplyError(f"line {j + 1}: a second '=======' in the block of line {start + 1}")
            parts.append([])
        elif line == CLOSE:
            if len(parts) != 2:
                raise ReplyError(f"line {j + 1}: '>>>>>>> REPLACE' before '=======' in the block of line {start + 1}")
            search, replace = ("".join(x + "\n" for x in p) for p in parts)
            return Block(path=path, search=search, replace=replace), j + 1
        else:
            parts[-1].append(line)
    raise ReplyError(f"the block opened on line {start + 1} never closes with '>>>>>>> REPLACE'")


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
                raise ReplyError(f"block {n}: {b.path} does not exist, so its SEARCH part must be empty")
            out[b.path] = b.replace
            continue
        if not b.search:
            raise ReplyError(f"block {n}: empty SEARCH for {b.path}, which exists; copy the lines to replace")
        count = text.count(b.search)
        if count != 1:
            what = "not found" if count == 0 else f"found {count} times"
            raise ReplyError(f"block {n}: SEARCH text {what} in {b.path}; it must match exactly one place in the "
                             "current file, character for character (indentation included)")
        out[b.path] = text.replace(b.search, b.replace, 1)
    return out
