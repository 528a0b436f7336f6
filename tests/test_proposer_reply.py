"""The openai proposer's reply format: parsed strictly, applied exactly, every malformed reply a one-line ReplyError."""
import pytest

from runner.proposers.reply import ReplyError, apply_blocks, parse_reply
from tests.llm_server import search_replace

TRAIN = "import torch\n\nMATRIX_LR = 0.04  # Muon lr\nDEPTH = 4  # blocks\n\nprint('train')\n"


def test_a_well_formed_reply_parses_and_applies():
    reply = ("Sure, here is my change.\n```\n"
             + search_replace("train.py", "MATRIX_LR = 0.04  # Muon lr\n", "MATRIX_LR = 0.05  # Muon lr\n",
                              "raise the Muon learning rate")
             + "```\n")
    parsed = parse_reply(reply)
    assert parsed.description == "raise the Muon learning rate"
    new = apply_blocks({"train.py": TRAIN}, parsed.blocks)
    assert new == {"train.py": TRAIN.replace("0.04", "0.05")}


def test_several_blocks_apply_in_order_and_crlf_replies_are_normalized():
    reply = ("DESCRIPTION: two edits\r\n<<<<<<< SEARCH train.py\r\nDEPTH = 4  # blocks\r\n=======\r\n"
             "DEPTH = 5  # blocks\r\n>>>>>>> REPLACE\r\n<<<<<<< SEARCH train.py\r\nDEPTH = 5  # blocks\r\n"
             "=======\r\nDEPTH = 6  # blocks\r\n>>>>>>> REPLACE\r\n")
    new = apply_blocks({"train.py": TRAIN}, parse_reply(reply).blocks)
    assert "DEPTH = 6  # blocks\n" in new["train.py"] and "\r" not in new["train.py"]


def test_an_empty_replace_deletes_lines():
    reply = search_replace("train.py", "print('train')\n", "", "drop the print")
    assert "print" not in apply_blocks({"train.py": TRAIN}, parse_reply(reply).blocks)["train.py"]


@pytest.mark.parametrize("reply, needle", [
    ("I think we should raise the learning rate.", "no '<<<<<<< SEARCH"),
    ("<<<<<<< SEARCH train.py\nA\n=======\nB\n>>>>>>> REPLACE\n", "DESCRIPTION"),
    ("DESCRIPTION: a\nDESCRIPTION: b\n<<<<<<< SEARCH train.py\nA\n=======\nB\n>>>>>>> REPLACE\n", "exactly one"),
    ("DESCRIPTION: x\n<<<<<<< SEARCH train.py\nA\n=======\nB\n", "never closes"),
    ("DESCRIPTION: x\n<<<<<<< SEARCH train.py\nA\n>>>>>>> REPLACE\n", "before '======='"),
    ("DESCRIPTION: x\n<<<<<<< SEARCH train.py\nA\n=======\nB\n=======\nC\n>>>>>>> REPLACE\n", "second"),
    ("DESCRIPTION: x\n<<<<<<< SEARCH train.py\nA\n<<<<<<< SEARCH train.py\n", "before the block"),
    ("DESCRIPTION: x\n=======\nB\n>>>>>>> REPLACE\n", "outside a block"),
    ("DESCRIPTION: x\n<<<<<<< SEARCH\nA\n=======\nB\n>>>>>>> REPLACE\n", "outside a block"),
])
def test_a_malformed_reply_is_a_one_line_error(reply, needle):
    with pytest.raises(ReplyError) as e:
        parse_reply(reply)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_search_that_is_missing_or_ambiguous_does_not_apply():
    missing = parse_reply(search_replace("train.py", "DEPTH = 8  # blocks\n", "DEPTH = 9\n", "x"))
    with pytest.raises(ReplyError, match="not found"):
        apply_blocks({"train.py": TRAIN}, missing.blocks)
    twice = parse_reply(search_replace("train.py", "x = 1\n", "x = 2\n", "x"))
    with pytest.raises(ReplyError, match="found 2 times"):
        apply_blocks({"train.py": "x = 1\ny = 0\nx = 1\n"}, twice.blocks)


def test_whitespace_must_match_exactly():
    reply = parse_reply(search_replace("train.py", "MATRIX_LR = 0.04 # Muon lr\n", "MATRIX_LR = 0.05\n", "x"))
    with pytest.raises(ReplyError, match="character for character"):
        apply_blocks({"train.py": TRAIN}, reply.blocks)


def test_an_empty_search_creates_only_a_file_that_does_not_exist():
    create = parse_reply(search_replace("model.py", "", "X = 1\n", "new file"))
    assert apply_blocks({"train.py": TRAIN}, create.blocks, known={"train.py", "model.py"}) == {"model.py": "X = 1\n"}
    with pytest.raises(ReplyError, match="empty SEARCH"):
        apply_blocks({"train.py": TRAIN}, parse_reply(search_replace("train.py", "", "X\n", "x")).blocks)


def test_a_path_outside_the_known_files_is_passed_through_for_the_policy_to_refuse():
    blocks = parse_reply(search_replace("../evil.py", "whatever\n", "import os\n", "escape")).blocks
    assert apply_blocks({"train.py": TRAIN}, blocks, known={"train.py"}) == {"../evil.py": "import os\n"}


def test_descriptions_are_one_printable_line_of_bounded_length():
    parsed = parse_reply("DESCRIPTION: tab\there \x1b[31mred " + "x" * 500 + "\n"
                         + search_replace("train.py", "A\n", "B\n", "y").split("\n", 1)[1])
    assert "\t" not in parsed.description and "\x1b" not in parsed.description
    assert len(parsed.description) == 200
