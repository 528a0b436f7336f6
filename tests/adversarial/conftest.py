"""The adversarial suite's shared check: after every Docker test, the host is intact.

Each test marked `docker` in tests/adversarial/ runs with a private TMPDIR (so any `autoresearch-*` temp dir the
runner or a subprocess makes during the test is found there, whatever else runs on the machine), and afterwards
asserts that no container or volume of this test session's runs is left on the engine and that no `autoresearch-*`
temp dir was left behind. Several sessions may share one engine (helpers, a developer's other shells): outside CI
only runs whose tag carries this process id as a dash-separated part count, as in tests/conftest.py. Something
already reported is not reported again by the next test, so one leak fails one test, the one that caused it
(or the first test after a module fixture that leaked). An engine too busy to answer within the grace period
gives a warning, not a failure: the session-end check in tests/conftest.py still looks again.

Tests marked `engine_restart` (they stop dockerd) are moved after every other test of the session.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import docker.errors
import pytest
import requests

from tests.conftest import _autoresearch_leftovers

LEFTOVER_GRACE_S = 15        # how long the engine may take to finish removing a trial's containers and volumes
SESSION_START = time.time()  # leftovers created before this are another session's business
_REPORTED: set[str] = set()  # leftovers already blamed on an earlier test
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
_REAL_TMP = tempfile.gettempdir()  # the machine's temp dir, read before any test swaps it for a private one


def pytest_configure(config):
    config.addinivalue_line("markers", "engine_restart: stops and starts the Docker engine; runs after every other "
                                       "test of the session")


def pytest_collection_modifyitems(config, items):
    """Tests that restart the engine go last: stopping it stops every container of every other test."""
    last = [item for item in items if item.get_closest_marker("engine_restart")]
    if last:
        items[:] = [item for item in items if not item.get_closest_marker("engine_restart")] + last


def run_tag(name: str) -> str:
    """A run tag for this suite that the host check counts as this session's (it carries the process id)."""
    return f"adv-{name}-{os.getpid()}"


def _mine(tag: str) -> bool:
    return os.environ.get("CI") == "true" or str(os.getpid()) in tag.split("-")


def _leaks(client, private_tmp: Path) -> list[str]:
    left = [x for x in _autoresearch_leftovers(client, SESSION_START, _mine) if x not in _REPORTED]
    tmp = [str(p) for p in private_tmp.glob("autoresearch-*")]
    tmp += [str(p) for p in Path(_REAL_TMP).glob("autoresearch-*")
            if str(os.getpid()) in p.name.split("-") and str(p) not in _REPORTED]
    return left + tmp


@pytest.fixture(autouse=True)
def host_intact(request):
    """Fail the test if its run left a container, volume or autoresearch-* temp dir (Docker tests only)."""
    if request.node.get_closest_marker("docker") is None or os.environ.get("AUTORESEARCH_SKIP_DOCKER") == "1":
        yield
        return
    client = request.getfixturevalue("docker_client")
    private = Path(tempfile.mkdtemp(prefix="adv-tmp-", dir=_REAL_TMP))
    private.chmod(0o755)  # trials run as a non-root uid; a dir under here may be bind-mounted
    mp = pytest.MonkeyPatch()
    mp.setenv("TMPDIR", str(private))
    mp.setattr(tempfile, "tempdir", str(private))
    try:
        yield
    finally:
        mp.undo()
    try:
        deadline, left, unanswered = time.time() + LEFTOVER_GRACE_S, [], None
        while time.time() < deadline:
            try:
                left, unanswered = _leaks(client, private), None
            except ENGINE_ERRORS as e:         # a busy engine: ask again until the deadline
                unanswered = e
            if not left and unanswered is None:
                break
            time.sleep(0.5)
        _REPORTED.update(left)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if unanswered is not None and not left:
        warnings.warn(f"{request.node.name}: the engine did not answer the leftover check: {unanswered}")
    assert not left, f"{request.node.name} left behind: {', '.join(left)}"


@pytest.fixture(scope="session")
def hostile_loop(tmp_path_factory, docker_client, trial_image, sandbox_data):
    """One real loop over every attack in tests/adversarial/hostile.py (tests/adversarial/loopkit.py)."""
    from tests.adversarial.hostile import ATTACKS
    from tests.adversarial.loopkit import run_hostile_loop
    root = tmp_path_factory.mktemp("hostile-loop")
    return run_hostile_loop(root, ATTACKS, image=trial_image.tag, data_dir=sandbox_data, tag=run_tag("loop"))
