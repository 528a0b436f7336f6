"""The experiment repository in git: the run's branch, candidate commits, trial refs, read-only exports. TRUSTED CODE.

Layout of a run with tag T:
    refs/heads/autoresearch/T            the best commit so far; advances only when a candidate is kept
    refs/autoresearch/T/trials/N         every trial's commit, kept or not (baselines point at the start commit)

Candidates are built with plumbing only, never in the user's working tree or index: blobs are written with
`hash-object -w --no-filters`, trees in a throw-away index (GIT_INDEX_FILE in a temp dir) with `read-tree`,
`update-index --cacheinfo`, `write-tree`, commits with `commit-tree`, refs with `update-ref` (compare-and-swap
where it matters). Files are read back with `cat-file blob` (no filters, no textconv).

What is disabled on every git call, and why (the candidate controls file contents; nothing it writes may run):
    core.hooksPath=/dev/null    no hook runs (update-ref alone would run `reference-transaction`)
    core.fsmonitor=false        no fsmonitor command runs when an index is touched
    commit.gpgSign=false        no gpg program runs on commit-tree
    gc.auto=0, maintenance.auto=false   no background maintenance spawned
    --no-filters, cat-file blob no clean/smudge filter, no textconv, no .gitattributes effect on our bytes
    GIT_NO_REPLACE_OBJECTS=1    content read back is the content the hash names
    GIT_TERMINAL_PROMPT=0, GIT_PAGER=cat, GIT_DIR set explicitly   no prompt, no pager, no repository discovery
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

import git
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from .errors import InfraError, UserError

SAFE_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "commit.gpgSign=false", "gc.auto=0",
               "maintenance.auto=false", "core.splitIndex=false")
IDENTITY = {"GIT_AUTHOR_NAME": "autoresearch", "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
            "GIT_COMMITTER_NAME": "autoresearch", "GIT_COMMITTER_EMAIL": "autoresearch@localhost"}
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REGULAR = ("100644", "100755")


def check_tag(tag: str) -> str:
    if not TAG.match(tag or "") or ".." in tag or tag.endswith((".lock", ".")):
        raise UserError(f"run tag {tag!r} is not usable; use letters, digits, '.', '_' or '-' (at most 64), "
                        "e.g. --tag mar5")
    return tag


class Workspace:
    """One experiment repository, driven through GitPython with hooks, filters and configured commands off."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        try:
            self.repo = git.Repo(path)
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise UserError(f"{path} is not a git repository; create an experiment with "
                            f"`autoresearch init {path}` or pass --repo DIR") from None
        if self.repo.bare or self.repo.working_tree_dir is None:
            raise UserError(f"{path} is a bare repository; pass the experiment's working directory")
        self.root = Path(self.repo.working_tree_dir)
        self.git_dir = Path(self.repo.git_dir)

    # ----------------------------------------------------------------------- the one way to run git
    def git(self, *args: str, input: bytes | None = None, index: str | None = None, strip: bool = True) -> str:
        env = {"GIT_DIR": str(self.git_dir), "GIT_NO_REPLACE_OBJECTS": "1", "GIT_TERMINAL_PROMPT": "0",
               "GIT_PAGER": "cat", **IDENTITY}
        if index:
            env["GIT_INDEX_FILE"] = index
        cmd = ["git"]
        for c in SAFE_CONFIG:
            cmd += ["-c", c]
        cmd += list(args)
        try:
            if input is None:
                return self.repo.git.execute(cmd, env=env, strip_newline_in_stdout=strip)
            with tempfile.TemporaryFile() as f:
                f.write(input)
                f.seek(0)
                return self.repo.git.execute(cmd, istream=f, env=env, strip_newline_in_stdout=strip)
        except GitCommandError as e:
            detail = " ".join(str(e.stderr or "").split())[:300]
            raise InfraError(f"git {args[0]} failed in {self.root}: {detail}; check the repository "
                             "(git fsck) and disk space") from None

    def rev(self, ref: str) -> str | None:
        """The commit a ref names, or None."""
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}") or None
        except InfraError:
            return None

    # ----------------------------------------------------------------------- reading commits
    def tree(self, commit: str) -> dict[str, str]:
        """{path: mode} of every entry (files, links, submodules and directories) of a commit."""
        out = self.git("ls-tree", "-r", "-t", "-z", "--full-tree", commit, strip=False)
        entries = {}
        for rec in out.split("\0"):
            if rec:
                meta, path = rec.split("\t", 1)
                entries[path] = meta.split(" ")[0]
        return entries

    def commit_info(self, commit: str) -> tuple[str | None, str]:
        """(first parent or None, subject line) of a commit."""
        parents, _, subject = self.git("show", "-s", "--no-show-signature", "--format=%P%n%s", commit).partition("\n")
        return (parents.split() or [None])[0], subject

    def read_file(self, commit: str, path: str) -> str:
        return self.git("cat-file", "blob", f"{commit}:{path}", strip=False)

    def read_files(self, commit: str, paths: list[str]) -> dict[str, str]:
        """The texts of those paths that are regular files in the commit (links and others are skipped)."""
        tree = self.tree(commit)
        return {p: self.read_file(commit, p) for p in paths if tree.get(p) in REGULAR}

    def merge(self, base: str, ours: str, theirs: str, paths: list[str]) -> dict[str, str] | None:
        """The three-way merge of `theirs` (a candidate built on `base`) onto `ours` (the best now), file by file
        for `paths`, with `git merge-file` (no hooks, no attributes, no checkout): the merged texts of the files
        `theirs` changed, or None when a change conflicts (or deletes a file, which a candidate never does)."""
        files = {}
        with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as tmp:
            for path in paths:
                texts = [self.read_files(c, [path]).get(path) for c in (base, ours, theirs)]
                b, o, t = texts
                if t == b:
                    continue                                     # the candidate did not change it
                if t is None or o is None or b is None:
                    return None
                names = []
                for label, text in zip(("base", "ours", "theirs"), (b, o, t)):
                    names.append(os.path.join(tmp, label))
                    Path(names[-1]).write_text(text)
                try:
                    files[path] = self.git("merge-file", "-p", "-q", names[1], names[0], names[2], strip=False)
                except InfraError:                                # exit status = the number of conflicts
                    return None
        return files

    def uncommitted(self, commit: str, paths: list[str]) -> list[str]:
        """Those of `paths` whose file in the working tree differs from `commit` (edited, new or deleted),
        compared by blob hash without filters: what a run that trains `commit` would silently not use."""
        tree, out = self.tree(commit), []
        for path in sorted(set(paths)):
            f = self.root / path
            if f.is_symlink():                                   # committed links: the same target is clean
                if tree.get(path) != "120000" or self.git("cat-file", "blob", f"{commit}:{path}") != os.readlink(f):
                    out.append(path)
                continue
            if not f.is_file():
                if path in tree:
                    out.append(path)                             # deleted (or replaced by a directory)
                continue
            blob = self.git("hash-object", "--no-filters", "--", str(f))
            if tree.get(path) not in REGULAR or self.git("rev-parse", f"{commit}:{path}") != blob:
                out.append(path)
        return out

    def commit_worktree(self, paths: list[str], message: str) -> str:
        """Commit the working-tree files `paths` on top of HEAD (its branch moves, compare-and-swap) and set their
        index entries to the new commit, so `git status` is clean for them. Returns the new commit."""
        head = self.head_commit()
        gone = [p for p in paths if not (self.root / p).is_file() or (self.root / p).is_symlink()]
        if gone:
            raise UserError(f"{', '.join(gone)} is deleted (or not a regular file) in {self.root}; restore it or "
                            "commit the deletion yourself (git rm), then run again")
        files = {p: (self.root / p).read_text(encoding="utf-8") for p in paths}
        new = self.commit_files(head, files, message)
        self.git("update-ref", "-m", "autoresearch: commit changes", "HEAD", new, head)
        self.git("reset", "-q", new, "--", *paths)
        return new

    def export(self, commit: str, paths: list[str], dest: str | os.PathLike) -> Path:
        """Write a commit's regular files among `paths` under dest, read-only (0444). Never a checkout."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for path, text in self.read_files(commit, paths).items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.chmod(stat.S_IWUSR | stat.S_IRUSR)
            target.write_text(text)
            target.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return dest

    # ----------------------------------------------------------------------- the run's branch and refs
    def branch_ref(self, tag: str) -> str:
        return f"refs/heads/autoresearch/{check_tag(tag)}"

    def trial_ref(self, tag: str, trial_id: int) -> str:
        return f"refs/autoresearch/{check_tag(tag)}/trials/{int(trial_id)}"

    def head_commit(self) -> str:
        head = self.rev("HEAD")
        if head is None:
            raise UserError(f"{self.root} has no commit yet; commit train.py and program.md first "
                            "(or create an experiment with `autoresearch init DIR`)")
        return head

    def create_branch(self, tag: str, start: str) -> None:
        """Create autoresearch/<tag> at start; refuse if it exists (the caller offers --resume)."""
        ref = self.branch_ref(tag)
        if self.rev(ref):
            raise UserError(f"branch autoresearch/{tag} exists already; pass --resume to continue that run, "
                            f"choose another --tag, or delete it (git branch -D autoresearch/{tag})")
        self.git("update-ref", ref, start, "0" * 40)

    def advance(self, tag: str, new: str, old: str) -> None:
        """Move the branch from old to new, only if it still points at old (compare-and-swap)."""
        try:
            self.git("update-ref", self.branch_ref(tag), new, old)
        except InfraError:
            raise UserError(f"branch autoresearch/{tag} moved away from {old[:12]} while the run held it; "
                            "do not commit to a run's branch; resume with --resume") from None

    def set_branch(self, tag: str, commit: str) -> None:
        self.git("update-ref", self.branch_ref(tag), commit)

    def set_trial_ref(self, tag: str, trial_id: int, commit: str) -> None:
        self.git("update-ref", self.trial_ref(tag, trial_id), commit)

    def rebased_ref(self, tag: str, trial_id: int) -> str:
        """Where a candidate re-applied onto a newer best (trials in flight) keeps its re-applied commit."""
        return f"refs/autoresearch/{check_tag(tag)}/rebased/{int(trial_id)}"

    def trial_refs(self, tag: str, kind: str = "trials") -> dict[int, str]:
        """{trial id: commit} of the run's trial refs (kind "rebased": its re-applied commits)."""
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)",
                       f"refs/autoresearch/{check_tag(tag)}/{kind}/")
        refs = {}
        for line in out.splitlines():
            name, sha = line.split(" ")
            refs[int(name.rsplit("/", 1)[1])] = sha
        return refs

    def history(self, tag: str, start: str) -> list[str]:
        """Commits on the run's branch after start, oldest first."""
        out = self.git("rev-list", "--reverse", f"{start}..{self.branch_ref(tag)}")
        return out.split()

    # ----------------------------------------------------------------------- building commits
    def commit_files(self, parent: str | None, files: dict[str, str], message: str) -> str:
        """A new commit = parent's tree with `files` replaced (regular files, mode kept or 100644)."""
        tree_modes = self.tree(parent) if parent else {}
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as tmp:
            index = os.path.join(tmp, "index")
            if parent:
                self.git("read-tree", parent, index=index)
            else:
                self.git("read-tree", "--empty", index=index)
            for path, text in sorted(files.items()):
                blob = self.git("hash-object", "-w", "--no-filters", "--stdin", input=text.encode())
                mode = tree_modes.get(path) if tree_modes.get(path) in REGULAR else "100644"
                self.git("update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", index=index)
            tree = self.git("write-tree", index=index)
        args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
        return self.git(*args)


def init_repo(path: str | os.PathLike, files: dict[str, str]) -> str:
    """Create a new experiment repository holding `files` as its first commit. Returns the commit."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} exists and is not an empty directory; choose a new directory for the experiment")
    path.mkdir(parents=True, exist_ok=True)
    git.Repo.init(path)
    ws = Workspace(path)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    commit = ws.commit_files(None, files, "autoresearch init: train.py and program.md")
    branch = ws.git("symbolic-ref", "HEAD")
    ws.git("update-ref", branch, commit, "0" * 40)
    ws.git("read-tree", commit)  # the real index matches the commit, so `git status` is clean
    return commit
