"""The patch policy: only allowed files, small diffs, and a hard refusal for every way out of train.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.patch import check
from runner.policy import PatchRules
from runner.proposers.base import Proposal
from runner.workspace import Workspace, init_repo

TRAIN = "LR = 0.04  # lr\nDEPTH = 4  # depth\n"
RULES = PatchRules()
TREE = {"train.py": "100644", "program.md": "100644"}


def refused(files, rules=RULES, tree=TREE, modes=None):
    result = check(Proposal(files=files, description="x", modes=modes or {}), rules, tree, {"train.py": TRAIN})
    assert not result.ok
    assert "\n" not in result.reason
    return result.reason


def test_a_change_to_train_py_within_the_limits_is_accepted():
    result = check(Proposal({"train.py": TRAIN.replace("0.04", "0.05")}, "x"), RULES, TREE, {"train.py": TRAIN})
    assert result.ok and result.diff_lines == 2 and "+LR = 0.05" in result.diff


def test_another_file_in_the_repository_is_refused():
    assert "not an allowed file" in refused({"program.md": "be evil\n"})


def test_a_new_file_outside_the_allowed_list_is_refused():
    assert "not an allowed file" in refused({"helper.py": "import os\n"})


def test_a_path_with_dotdot_is_refused():
    assert "'..'" in refused({"../train.py": "x\n"})
    assert "'..'" in refused({"sub/../../etc/passwd": "x\n"})


def test_an_absolute_path_is_refused():
    assert "absolute path" in refused({"/etc/passwd": "x\n"})
    assert "absolute path" in refused({"C:/x.py": "x\n"})


def test_a_path_under_dot_git_is_refused_in_any_spelling():
    for path in (".git/hooks/pre-commit", ".GIT/config", "sub/.git/config", ".git./config"):
        assert "under .git" in refused({path: "#!/bin/sh\n"}), path


def test_git_attributes_and_submodule_files_are_refused():
    assert "git metadata" in refused({".gitattributes": "* filter=evil\n"})
    assert "git metadata" in refused({".gitmodules": "[submodule \"x\"]\n"})
    assert "git metadata" in refused({"sub/.gitattributes": "x\n"})


def test_a_non_canonical_or_control_character_path_is_refused():
    assert "not canonical" in refused({"./train.py": "x\n"})
    assert "not canonical" in refused({"a//train.py": "x\n"})
    assert "control characters" in refused({"train.py\n": "x\n"})
    assert "backslash" in refused({"sub\\train.py": "x\n"})


def test_a_symlink_request_is_refused():
    reason = refused({"train.py": TRAIN + "# x\n"}, modes={"train.py": "120000"})
    assert "symlink" in reason


def test_a_file_mode_change_is_refused():
    reason = refused({"train.py": TRAIN + "# x\n"}, modes={"train.py": "100755"})
    assert "mode change 100644 -> 100755" in reason


def test_a_submodule_request_is_refused():
    assert "submodule" in refused({"train.py": TRAIN + "# x\n"}, modes={"train.py": "160000"})


def test_a_diff_over_max_diff_lines_is_refused():
    big = TRAIN + "".join(f"X{i} = {i}  # filler\n" for i in range(20))
    reason = refused({"train.py": big}, rules=PatchRules(max_diff_lines=10))
    assert "20 changed lines" in reason and "max_diff_lines 10" in reason


def test_a_proposal_that_changes_nothing_is_refused():
    assert "changes nothing" in refused({"train.py": TRAIN})
    assert "changes no file" in refused({})


def test_binary_content_is_refused():
    assert "NUL" in refused({"train.py": TRAIN + "\0"})


@pytest.mark.parametrize("hidden, code", [
    ("x = 1  # \x1b[2J\x1b]52;c;ZWNobw==\x07", "U+001B"),       # screen clear + clipboard write for `git show`
    ("access = 'user\u202e \u2066# admin\u2069 \u2066'", "U+202E"),   # Trojan Source: bidi override
    ("y = 2\x9b31m", "U+009B"),                                  # C1 CSI
    ("z = 3\b\b\b# looks like a comment", "U+0008"),           # backspaces
])
def test_a_patch_must_not_hide_code_behind_control_or_bidi_characters(hidden, code):
    reason = refused({"train.py": TRAIN + hidden + "\n"})
    assert code in reason and "line" in reason, reason


def test_tabs_crlf_and_form_feeds_are_ordinary_text():
    text = TRAIN + "def f():\r\n\treturn 1\r\n\f\n"
    assert check(Proposal({"train.py": text}, "x"), RULES, TREE, {"train.py": TRAIN}).ok


@pytest.fixture
def linked_repo(tmp_path):
    """A real repository whose allowed files include a symlink and a submodule (gitlink)."""
    repo = tmp_path / "exp"
    commit = init_repo(repo, {"train.py": TRAIN, "program.md": "p\n"})
    os.symlink("train.py", repo / "link.py")
    sub = tmp_path / "sub"
    init_repo(sub, {"x.py": "x\n"})
    sub_head = Workspace(sub).head_commit()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "core.hooksPath=/dev/null", *a], check=True,
                                    capture_output=True)
    run("add", "link.py")
    run("update-index", "--add", "--cacheinfo", f"160000,{sub_head},vendored")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "links")
    ws = Workspace(repo)
    assert ws.head_commit() != commit
    return ws


def test_writing_through_a_symlink_in_the_repository_is_refused(linked_repo):
    tree = linked_repo.tree(linked_repo.head_commit())
    assert tree["link.py"] == "120000"
    rules = PatchRules(allowed_files=["train.py", "link.py"])
    assert "symlink link.py" in refused({"link.py": "import os\n"}, rules=rules, tree=tree)


def test_writing_into_a_submodule_is_refused(linked_repo):
    tree = linked_repo.tree(linked_repo.head_commit())
    assert tree["vendored"] == "160000"
    rules = PatchRules(allowed_files=["train.py", "vendored/x.py"])
    assert "submodule vendored" in refused({"vendored/x.py": "y\n"}, rules=rules, tree=tree)


def test_the_patch_policy_imports_no_proposer():
    """One way only: the openai proposer's reply format (runner.proposers.reply) uses the policy, never the reverse."""
    probe = "import sys, runner.patch; print(sorted(m for m in sys.modules if m.startswith('runner.proposers')))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
