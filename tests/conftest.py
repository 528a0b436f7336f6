"""Shared pytest fixtures. Each section belongs to the module family named in its heading."""
from __future__ import annotations

import pytest


# --------------------------------------------------------------------------- loop, proposers, CLI (runner/)

@pytest.fixture
def llm_server():
    """A scripted OpenAI-compatible server on 127.0.0.1 (tests/llm_server.py); push steps, read requests."""
    from tests.llm_server import LLMServer
    with LLMServer() as server:
        yield server


# --------------------------------------------------------------------------- sandbox, images, trial (runner/sandbox)
# Tests marked `docker` use the real engine. They are skipped only when the user sets AUTORESEARCH_SKIP_DOCKER=1
# (never in CI: .ci/run unsets it); without an engine they fail, they are not silently skipped.

def pytest_collection_modifyitems(config, items):
    import os
    if os.environ.get("AUTORESEARCH_SKIP_DOCKER") == "1":
        skip = pytest.mark.skip(reason="AUTORESEARCH_SKIP_DOCKER=1: Docker tests skipped at the user's request")
        for item in items:
            if "docker" in item.keywords:
                item.add_marker(skip)


def _autoresearch_leftovers(client, since: float, mine=lambda run_tag: True):
    """Containers/volumes labelled autoresearch.run (with a run tag that `mine` accepts) and networks named
    autoresearch* created after `since`."""
    import datetime
    from runner.sandbox.spec import LABEL_RUN

    def created(ts: str) -> float:
        head = (ts or "").split(".")[0].rstrip("Z")
        try:
            return datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            return since
    out = []
    # the plain list (no inspect per container): a container another session removes meanwhile is no 404
    for c in client.api.containers(all=True, filters={"label": LABEL_RUN}):
        if c.get("Created", 0) >= since - 1 and mine((c.get("Labels") or {}).get(LABEL_RUN, "")):
            out.append(f"container {(c.get('Names') or ['?'])[0].lstrip('/')}")
    for v in client.api.volumes(filters={"label": LABEL_RUN}).get("Volumes") or []:
        if (created(v.get("CreatedAt", "").replace(" ", "T")[:19]) >= since - 1
                and mine((v.get("Labels") or {}).get(LABEL_RUN, ""))):
            out.append(f"volume {v['Name']}")
    for n in client.networks.list():
        if n.name.startswith("autoresearch") or LABEL_RUN in (n.attrs.get("Labels") or {}):
            out.append(f"network {n.name}")
    return out


@pytest.fixture(scope="session")
def docker_client():
    """The real engine. At the end of the session: no container, volume or network of a trial may be left, and
    no autoresearch-* temp dir made during the session. In CI (one test session per machine) every trial
    container created during the session counts; on a shared developer machine, where other sessions run trials
    at the same time, only runs whose tag carries this process id as a dash-separated part do."""
    import os
    import tempfile
    import time
    from pathlib import Path
    from runner.sandbox.preflight import connect
    start, pid = time.time(), str(os.getpid())
    mine = (lambda tag: True) if os.environ.get("CI") == "true" else (lambda tag: pid in tag.split("-"))
    client = connect()
    yield client
    deadline = time.time() + 30
    while (left := _autoresearch_leftovers(client, start, mine)) and time.time() < deadline:
        time.sleep(1)
    tmp = [p.name for p in Path(tempfile.gettempdir()).glob("autoresearch-*")
           if p.stat().st_mtime >= start and (os.environ.get("CI") == "true" or pid in p.name)]
    assert not left and not tmp, f"the test session left behind: {', '.join(left + tmp)}"


@pytest.fixture(scope="session")
def trial_image(docker_client):
    """The CPU trial image for the current recipe, built once per session (reused when its tag exists)."""
    from runner.sandbox import images
    return images.build("cpu", airgapped=None, client=docker_client)


@pytest.fixture(scope="session")
def sandbox_data(tmp_path_factory):
    """A small prepared synthetic data dir (trainer.prepare), readable by the trials' non-root uid."""
    from trainer.prepare.cli import main as prepare_main
    from tests.sandbox_kit import open_up
    root = tmp_path_factory.mktemp("sandbox-data") / "data"
    rc = prepare_main(["synthetic", "--out", str(root), "--train-docs", "600", "--val-docs", "12",
                       "--vocab-size", "512"])
    assert rc in (0, None), f"prepare synthetic failed with {rc}"
    return open_up(root)
