"""Hostile LLM replies through the same real loop (tests/adversarial/hostile.py): git hooks, attributes and
config, paths that climb out, are absolute, hide `.git`, go through a symlink or carry escape codes, files that
are not the agent's, malformed, huge and binary replies. Each must be `rejected` with its reason, make no commit
and no trial ref, and leave the repository as it was. Also: a candidate's log that tries to break out of its
quoted block in the next prompt stays quoted there.
"""
from __future__ import annotations

import subprocess

import pytest

from tests.adversarial import hostile as H
from tests.adversarial.loopkit import LINKED, PROGRAM, VICTIM, VICTIM_TEXT

pytestmark = pytest.mark.docker

REASONS = {
    "reply_installs_a_git_hook": "is under .git",
    "reply_adds_a_gitattributes_filter": "is git metadata",
    "reply_rewrites_git_config_with_a_filter_driver": "is under .git",
    "reply_climbs_out_of_the_repository": "climbs out with '..'",
    "reply_writes_an_absolute_path": "absolute path",
    "reply_hides_dot_git_behind_case_and_dots": "is under .git",
    "reply_writes_through_a_symlinked_allowed_file": f"goes through the symlink {LINKED}",
    "reply_edits_the_research_instructions": "program.md is not an allowed file",
    "reply_puts_escape_codes_in_a_path": "control characters",
    "reply_adds_a_gitmodules_file": "is git metadata",
    "reply_is_prose_with_a_stray_marker": "reply unusable after 1 tries",
    "reply_ships_a_huge_file": "over 1048576 bytes",
    "reply_ships_nul_bytes": "NUL bytes",
}
REPLIES = [a for a in H.ATTACKS if a.status == "rejected"]


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("attack", REPLIES, ids=[a.name for a in REPLIES])
def test_a_hostile_reply_is_rejected_with_its_reason_and_never_committed(hostile_loop, attack):
    row = hostile_loop.row(attack.name)
    assert row.status == "rejected", (row.status, row.reason)
    assert REASONS[attack.name] in row.reason, row.reason
    assert row.commit is None and row.trial not in hostile_loop.trial_refs
    assert not (hostile_loop.trial_dir(attack.name) / "candidate").exists()     # never exported, never run


def test_every_reply_attack_has_its_reason():
    assert {a.name for a in REPLIES} == set(REASONS)


def test_no_reply_reached_the_repository_its_hooks_its_config_or_beyond(hostile_loop):
    repo = hostile_loop.repo
    hooks = {p.name for p in (repo / ".git" / "hooks").iterdir()}
    assert not [h for h in hooks if not h.endswith(".sample")], hooks
    assert "pwn" not in (repo / ".git" / "config").read_text()
    assert not (repo / ".gitattributes").exists() and not (repo / ".gitmodules").exists()
    assert not (repo.parent / "outside.py").exists()
    assert (repo.parent / VICTIM).read_text() == VICTIM_TEXT
    assert (repo / "program.md").read_text() == PROGRAM
    touched = git(repo, "log", "--all", "--format=%H", "--", ".gitattributes", ".gitmodules", "program.md",
                  LINKED, "outside.py").split()
    assert len(touched) == 2, touched        # only the two start commits (init, then the linked file)


def fenced(text: str) -> set[int]:
    """Indexes of the lines inside fenced code blocks, by CommonMark's rule: a block opened by a fence of n
    backticks is closed only by a line of at least n backticks and nothing else."""
    inside, fence = set(), None
    for i, line in enumerate(text.split("\n")):
        bare = line.strip()
        run = len(bare) - len(bare.lstrip("`"))
        if fence is None:
            if run >= 3 and "`" not in bare[run:] and len(line) - len(line.lstrip(" ")) <= 3:
                fence = run
        elif run >= fence and bare == "`" * run:
            fence = None
        else:
            inside.add(i)
    return inside


def test_a_log_that_closes_its_quote_stays_quoted_in_the_next_prompt(hostile_loop):
    name = "prompt_injection_through_the_log"
    row = hostile_loop.row(name)
    assert row.status == "crash" and H.INJECTED in row.log_tail
    prompt = hostile_loop.prompt_after(name)
    lines = prompt.split("\n")
    inside = fenced(prompt)
    injected = [i for i, line in enumerate(lines) if H.INJECTED in line]
    assert injected, "the log tail of the injection is not in the next prompt"
    assert all(i in inside for i in injected), "the log's fake instructions escaped their quoted block"
    for heading in ("# Research instructions (program.md)", "<<<<<<< SEARCH train.py"):
        outside = [i for i, line in enumerate(lines) if line == heading and i not in inside]
        assert len(outside) == (1 if heading.startswith("#") else 0), (heading, outside)
