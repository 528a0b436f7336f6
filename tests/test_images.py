"""The trial image: tagged by a content hash of exactly what goes in, built once, trusted code only, no root."""
from __future__ import annotations

import shutil
import tarfile
import time
from pathlib import Path

import pytest

from runner.sandbox import images
from runner.sandbox import cleanup, containers, spec
from tests.sandbox_kit import TEST_RUN_PREFIX, policy

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    """A copy of the image recipe (Dockerfile, pins, trainer/) that images.py reads instead of the repo's."""
    root = tmp_path / "repo"
    (root / "images").mkdir(parents=True)
    shutil.copy(REPO / "Dockerfile", root / "Dockerfile")
    for f in images.FLAVOURS:
        shutil.copy(REPO / "images" / f"requirements-{f}.txt", root / "images")
    shutil.copytree(REPO / "trainer", root / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(images, "REPO_ROOT", root)
    monkeypatch.setattr(images, "IMAGES_DIR", root / "images")
    monkeypatch.delenv(images.BASE_ENV, raising=False)
    return root


def test_the_tag_is_a_hash_of_the_trusted_recipe_and_ignores_train_py(recipe):
    base = "python:3.11-slim"
    tag = images.tag_for("cpu", base)
    assert tag.startswith("autoresearch-trial:cpu-") and len(tag.split("-")[-1]) == 12
    # the candidate and host-only code are not in the image, so they cannot change its tag
    (recipe / "trainer" / "train.py").write_text("# an agent's edit\n")
    (recipe / "trainer" / "prepare" / "extra.py").write_text("x = 1\n")
    assert images.tag_for("cpu", base) == tag
    # anything that does go in does
    changes = [
        lambda: (recipe / "trainer" / "harness" / "budget.py").open("a").write("\n# changed\n"),
        lambda: (recipe / "trainer" / "presets.yaml").open("a").write("\n# changed\n"),
        lambda: (recipe / "images" / "requirements-cpu.txt").open("a").write("\n# changed\n"),
        lambda: (recipe / "Dockerfile").open("a").write("\n# changed\n"),
    ]
    seen = {tag}
    for change in changes:
        change()
        seen.add(images.tag_for("cpu", base))
    assert len(seen) == 1 + len(changes)
    assert images.tag_for("cpu", "autoresearch-base:bookworm") not in seen      # the base is an input too
    assert images.tag_for("cuda", base).startswith("autoresearch-trial:cuda-")


def test_the_build_context_holds_exactly_the_trusted_files(recipe):
    with images._context("cpu", with_wheels=False) as ctx:
        with tarfile.open(fileobj=ctx) as tar:
            members = tar.getmembers()
    names = {m.name for m in members}
    assert {"Dockerfile", "images/requirements-cpu.txt", "trainer/evaluate.py", "trainer/shards.py",
            "trainer/presets.yaml", "trainer/harness/__init__.py"} <= names
    assert not [n for n in names if n in ("trainer/train.py", "trainer/direct.py") or n.startswith("trainer/prepare")
                or "__pycache__" in n]
    assert all(m.isreg() and m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)   # reproducible


def test_dockerignore_excludes_what_the_context_builder_excludes():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    for excluded in ("trainer/train.py", "trainer/direct.py", "trainer/prepare/"):
        assert excluded in lines


def test_unknown_flavour_is_a_user_error():
    from runner.errors import UserError
    with pytest.raises(UserError, match="unknown image flavour 'rocm'"):
        images.tag_for("rocm", "x")


@pytest.mark.docker
def test_building_again_reuses_the_tag(docker_client, trial_image):
    t0 = time.monotonic()
    again = images.build("cpu", airgapped=None, client=docker_client)
    assert again.reused and again.tag == trial_image.tag and again.id == trial_image.id
    assert time.monotonic() - t0 < 5
    found = images.find("cpu", docker_client)
    assert found is not None and found.id == trial_image.id
    labels = docker_client.images.get(trial_image.tag).labels
    assert labels[images.LABEL_CONTENT].startswith(trial_image.tag.split("-")[-1])


def _inspect_in_image(client, image: str, code: str) -> str:
    labels = spec.labels(f"{TEST_RUN_PREFIX}-{__import__('os').getpid()}", "image-check", "check")
    kwargs = spec.hardening(policy(), image=image, name=spec.name(labels[spec.LABEL_RUN], "image-check",
                                                                   str(time.time_ns())), labels=labels)
    kwargs.update(command=["python", "-c", code], entrypoint=[])
    c = client.containers.create(**kwargs)
    try:
        ex, _ = containers.run_to_end(c, 60, pump=False)
        out = containers.log_tail(c, 50)
        assert ex.exit_code == 0, out
        return out
    finally:
        cleanup.remove_containers([c])


@pytest.mark.docker
def test_the_image_runs_as_non_root_with_trusted_code_only_and_no_compiler(docker_client, trial_image):
    out = _inspect_in_image(docker_client, trial_image.tag, """
import os, shutil, sys, torch, numpy, yaml
import trainer.evaluate, trainer.harness, trainer.probes, trainer.shards
print("uid", os.getuid())
print("compilers", [c for c in ("cc", "gcc", "g++", "clang", "tcc", "ld", "as", "pip", "pip3") if shutil.which(c)])
print("train_py", os.path.exists("/app/trainer/train.py"), os.path.exists("/app/trainer/prepare"),
      os.path.exists("/app/trainer/direct.py"))
print("app_writable", os.access("/app/trainer", os.W_OK), os.access("/opt/venv", os.W_OK))
print("versions", sys.version_info[:2], torch.__version__, numpy.__version__, yaml.__version__)
""")
    lines = out.splitlines()
    assert "uid 65534" in lines
    assert "compilers []" in lines
    assert "train_py False False False" in lines
    assert "app_writable False False" in lines
    pins = dict(l.split("==") for l in (REPO / "images" / "requirements-cpu.txt").read_text().splitlines()
                if "==" in l and not l.startswith("#"))
    assert f"versions (3, 11) {pins['torch']} {pins['numpy']} {pins['pyyaml']}" in lines


@pytest.mark.docker
def test_the_image_default_user_is_not_root(docker_client, trial_image):
    cfg = docker_client.images.get(trial_image.tag).attrs["Config"]
    assert cfg["User"] == "65534:65534"
    assert "PYTHONPATH=/app" in cfg["Env"]
