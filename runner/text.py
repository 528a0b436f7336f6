"""Text from a candidate or an LLM, made safe to show to a person. TRUSTED CODE; the text is hostile.

A candidate's log lines, crash reasons and log tails, an LLM's descriptions and replies, and anything else the
runner did not write itself can carry bytes that a terminal, an editor or a browser acts on instead of showing:
escape sequences (ESC: a clipboard write `ESC ] 52 ; c ; ... BEL`, a screen clear `ESC [ 2 J`, a hyperlink
`ESC ] 8 ; ; URL`), the single-byte C1 forms of the same (U+009B CSI, U+009D OSC), a carriage return or backspaces
that overwrite what came before ("crash\\rkeep 0.1234" shows as a fake verdict), bells, and Unicode format
characters that reorder or hide text (bidi overrides and isolates U+202A-U+202E, U+2066-U+2069, zero-width
characters, tag characters, a soft hyphen), line and paragraph separators, lone surrogates (which would make
printing raise), and the invisible Hangul fillers.

Contract: every character that `str.isprintable()` refuses (categories Cc, Cf, Cs, Co, Cn, Zl, Zp and every space
but " "), and each of INVISIBLE, is replaced by a visible escape in Python's notation: `\\t`, `\\n`, `\\r`, else
`\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`. The result holds only printable characters and " " (plus "\\n" and "\\t" where
`printable` keeps them), so it can be written to a terminal, a file or, after html.escape, a web page.

    printable(text)      multi-line text (a log, a reply): "\\n" and "\\t" kept, "\\r\\n" taken as a line end
    one_line(text)       a single-line field (a reason, a description, a table cell): nothing kept, so the result
                         never spans two lines
    markdown_cell(text)  one_line, then the characters that make Markdown links, images, raw HTML, entities and
                         code spans, and the table cell separator, escaped with a backslash (report.md)

The escapes are for reading, not for decoding: a backslash in the text is left as it is, so a literal "\\x1b" in
the text looks like an escaped ESC. The ledger (JSON) keeps the exact text. Rich renders markup in a plain str
(`[link=...]`, `:emoji:`): show these strings in rich as `rich.text.Text`, never as markup.
"""
from __future__ import annotations

import re

# Printable by Python's rules but invisible: letters that render as blank space and can pose as one.
INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")
# Short escapes for the common controls, as Python writes them.
SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# In Markdown: backslash (so an escape cannot be undone), code spans, links and images, raw HTML and autolinks
# (both open with "<"; a lone ">" quotes only at a line's start), entities (&#x202e; would render the bidi
# override), the table cell separator.
MARKDOWN_ACTIVE = re.compile(r"([\\`\[\]<&|])")


def escape_char(c: str) -> str:
    """One character in Python's escape notation: \\t, \\n, \\r, \\xNN, \\uNNNN or \\UNNNNNNNN."""
    if c in SHORT:
        return SHORT[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _safe(c: str, keep: str) -> bool:
    return (c.isprintable() and c not in INVISIBLE) or c in keep


def _escape(text: str, keep: str) -> str:
    if text.isprintable() and INVISIBLE.isdisjoint(text):    # the common case, at C speed
        return text
    return "".join(c if _safe(c, keep) else escape_char(c) for c in text)


def printable(text: object) -> str:
    """Multi-line text with every control and format character escaped; "\\n" and "\\t" are kept."""
    lines = str(text).replace("\r\n", "\n").split("\n")
    return "\n".join(_escape(line, "\t") for line in lines)


def one_line(text: object, limit: int | None = None) -> str:
    """A single line with every control and format character escaped ("\\n" and "\\t" included), cut to `limit`
    characters (after escaping, so the cut never brings back a raw character)."""
    out = _escape(str(text), "")
    return out if limit is None else out[:limit]


def markdown_cell(text: object, limit: int | None = None) -> str:
    """one_line for a Markdown table cell: also no link, image, HTML, entity, code span or cell break."""
    return MARKDOWN_ACTIVE.sub(r"\\\1", one_line(text, limit))
