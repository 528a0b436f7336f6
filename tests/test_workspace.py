"""Git: candidates are commits on the best, the branch moves only by compare-and-swap, every trial keeps a ref,
and nothing the repository configures (hooks, filters, fsmonitor, signing) ever runs; the user's tree is untouched."""
import os
import stat
import subprocess

import pytest

from runner.errors import UserError
from runner.workspace import Workspace, init_repo

TRAIN = "LR = 0.04  # lr\n"


def git(repo, *args, check=True):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=check, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "exp"
    init_repo(path, {"train.py": TRAIN, "program.md": "p\n", ".gitignore": "runs/\n"})
    return path


def test_init_commits_the_files_with_a_clean_status(repo):
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "show", "HEAD:train.py") == TRAIN.strip()
    assert (repo / "train.py").read_text() == TRAIN


def test_init_refuses_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(UserError, match="not an empty directory"):
        init_repo(tmp_path / "x", {"train.py": TRAIN})


def test_a_candidate_is_a_commit_whose_parent_is_the_best(repo):
    ws = Workspace(repo)
    start = ws.head_commit()
    ws.create_branch("t", start)
    c1 = ws.commit_files(start, {"train.py": "LR = 0.05  # lr\n"}, "trial 1: LR up")
    assert git(repo, "rev-parse", f"{c1}^") == start
    assert ws.read_file(c1, "train.py") == "LR = 0.05  # lr\n"
    assert ws.read_file(c1, "program.md") == "p\n"  # the rest of the tree is the parent's
    assert git(repo, "log", "-1", "--format=%s", c1) == "trial 1: LR up"


def test_the_branch_advances_only_from_the_expected_commit(repo):
    ws = Workspace(repo)
    start = ws.head_commit()
    ws.create_branch("t", start)
    c1 = ws.commit_files(start, {"train.py": "A = 1\n"}, "1")
    c2 = ws.commit_files(start, {"train.py": "A = 2\n"}, "2")
    ws.advance("t", c1, start)
    assert ws.rev("refs/heads/autoresearch/t") == c1
    with pytest.raises(UserError, match="moved away"):
        ws.advance("t", c2, start)  # c2 was built on start, but the branch is at c1 now
    assert ws.rev("refs/heads/autoresearch/t") == c1
    assert ws.history("t", start) == [c1]


def test_an_existing_branch_is_refused(repo):
    ws = Workspace(repo)
    ws.create_branch("t", ws.head_commit())
    with pytest.raises(UserError, match="--resume"):
        ws.create_branch("t", ws.head_commit())


def test_every_trial_keeps_a_ref(repo):
    ws = Workspace(repo)
    start = ws.head_commit()
    commits = {n: ws.commit_files(start, {"train.py": f"A = {n}\n"}, str(n)) for n in (1, 2, 3)}
    for n, c in commits.items():
        ws.set_trial_ref("t", n, c)
    assert ws.trial_refs("t") == commits
    assert git(repo, "rev-parse", "refs/autoresearch/t/trials/2") == commits[2]


def test_a_bad_tag_is_a_user_error(repo):
    for tag in ("", "-x", "a..b", "a/b", "x.lock", "a b"):
        with pytest.raises(UserError, match="run tag"):
            Workspace(repo).branch_ref(tag)


def test_a_directory_that_is_not_a_repository_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="autoresearch init"):
        Workspace(tmp_path)


def arm_repository(repo, marker):
    """Hooks, a clean filter, fsmonitor and gpg signing that each write to `marker` if anything runs them."""
    script = repo / ".git" / "evil.sh"
    script.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marker}\ncat\n")
    script.chmod(0o755)
    hooks = repo / ".git" / "hooks"
    for hook in ("pre-commit", "post-commit", "commit-msg", "reference-transaction", "post-checkout",
                 "post-index-change", "pre-auto-gc"):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        (hooks / hook).chmod(0o755)
    git(repo, "config", "filter.evil.clean", str(script))
    git(repo, "config", "filter.evil.smudge", str(script))
    git(repo, "config", "core.fsmonitor", str(script))
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "gpg.program", str(script))
    (repo / ".git" / "info" / "attributes").write_text("* filter=evil\n")


def test_no_hook_filter_fsmonitor_or_signing_program_ever_runs(repo, tmp_path):
    marker = tmp_path / "marker"
    arm_repository(repo, marker)
    ws = Workspace(repo)
    start = ws.head_commit()
    ws.create_branch("t", start)
    c1 = ws.commit_files(start, {"train.py": "A = 1\n"}, "trial 1")
    ws.set_trial_ref("t", 1, c1)
    ws.advance("t", c1, start)
    ws.export(c1, ["train.py"], tmp_path / "export")
    ws.read_files(c1, ["train.py"])
    assert not marker.exists(), marker.read_text()
    # the control: the same repository does run them for ordinary git commands, so the test can fail
    git(repo, "update-ref", "refs/heads/control", start)
    (repo / "train.py").write_text("A = 2\n")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "control", check=False)
    ran = marker.read_text()
    assert "reference-transaction" in ran and "pre-commit" in ran and "evil.sh" in ran


def test_the_users_working_tree_and_index_are_untouched(repo, tmp_path):
    (repo / "train.py").write_text("LR = 9  # my uncommitted edit\n")
    (repo / "notes.txt").write_text("untracked\n")
    (repo / "program.md").write_text("staged edit\n")
    git(repo, "add", "program.md")
    status = git(repo, "status", "--porcelain")
    index = (repo / ".git" / "index").read_bytes()
    head = git(repo, "rev-parse", "HEAD")
    ws = Workspace(repo)
    ws.create_branch("t", head)
    c1 = ws.commit_files(head, {"train.py": "A = 1\n"}, "trial 1")
    ws.advance("t", c1, head)
    out = ws.export(c1, ["train.py"], tmp_path / "export")
    assert (out / "train.py").read_text() == "A = 1\n"
    assert (repo / "train.py").read_text() == "LR = 9  # my uncommitted edit\n"
    assert git(repo, "status", "--porcelain") == status
    assert (repo / ".git" / "index").read_bytes() == index
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "symbolic-ref", "HEAD").endswith(("main", "master"))


def test_the_export_is_a_read_only_copy_of_the_commit_not_a_checkout(repo, tmp_path):
    ws = Workspace(repo)
    head = ws.head_commit()
    os.symlink("/etc/passwd", repo / "train.py.link")
    out = ws.export(head, ["train.py", "missing.py"], tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["train.py"]
    mode = stat.S_IMODE((out / "train.py").stat().st_mode)
    assert mode == 0o444


def test_uncommitted_names_edited_new_and_deleted_files_but_not_a_committed_link(tmp_path):
    repo = tmp_path / "r"
    init_repo(repo, {"train.py": "a = 1\n", "program.md": "p\n", "gone.py": "x\n"})
    os.symlink("train.py", repo / "link.py")
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "add", "link.py"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c",
                    "core.hooksPath=/dev/null", "commit", "-q", "-m", "link"], check=True)
    ws = Workspace(repo)
    head = ws.head_commit()
    paths = ["train.py", "program.md", "gone.py", "link.py", "new.py"]
    assert ws.uncommitted(head, paths) == []
    (repo / "train.py").write_text("a = 2\n")
    (repo / "gone.py").unlink()
    (repo / "new.py").write_text("n\n")
    (repo / "link.py").unlink()
    os.symlink("program.md", repo / "link.py")
    assert ws.uncommitted(head, paths) == ["gone.py", "link.py", "new.py", "train.py"]
