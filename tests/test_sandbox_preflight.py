"""Preflight: a missing engine, image or GPU runtime is a clear one-line error before any trial starts."""
from __future__ import annotations

import os
import time
import uuid

import pytest

from runner.errors import InfraError, UserError
from runner.sandbox import preflight
from tests.sandbox_kit import TEST_RUN_PREFIX, candidate, policy, trial


def test_an_unreachable_engine_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(InfraError) as e:
        preflight.connect(timeout=5)
    assert "cannot reach the Docker engine" in str(e.value) and "\n" not in str(e.value)
    checks = preflight.checks(policy())
    assert [(c.name, c.ok) for c in checks] == [("engine", False)] and checks[0].fix


@pytest.mark.docker
def test_the_real_engine_passes_with_the_built_image(docker_client, trial_image):
    checks = {c.name: c for c in preflight.checks(policy(), trial_image.tag, docker_client)}
    assert checks["engine"].ok and checks["api"].ok and checks["image"].ok
    assert trial_image.id[:19] in checks["image"].detail
    preflight.preflight(policy(), trial_image.tag, docker_client)          # raises nothing


@pytest.mark.docker
def test_a_missing_image_says_how_to_build_it(docker_client):
    with pytest.raises(UserError, match=r"autoresearch build --flavour cuda"):
        preflight.preflight(policy(), "autoresearch-trial:cuda-000000000000", docker_client)


@pytest.mark.docker
def test_a_gpu_policy_on_an_engine_without_the_nvidia_runtime_fails_before_any_container(
        tmp_path, docker_client, trial_image, sandbox_data):
    gpu = policy(flavour="cuda", gpu="all")
    assert "nvidia" not in (docker_client.info().get("Runtimes") or {})     # true on these machines
    with pytest.raises(UserError) as e:
        preflight.preflight(gpu, trial_image.tag, docker_client)
    msg = str(e.value)
    assert "NVIDIA Container Toolkit" in msg and "runc" in msg and "\n" not in msg
    since = int(time.time()) - 1
    trial_id = f"gpu-preflight-{uuid.uuid4().hex[:8]}"        # this trial's own label: earlier tests' events differ
    with pytest.raises(UserError, match="gpu check failed"):
        trial(tmp_path, trial_image.tag, candidate(tmp_path, "pass\n"), sandbox_data, pol=gpu, trial_id=trial_id)
    labels = [f"autoresearch.run={TEST_RUN_PREFIX}-{os.getpid()}", f"autoresearch.trial={trial_id}"]
    created = list(docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                        filters={"type": ["container", "volume"], "event": "create",
                                                 "label": labels}))
    assert created == []                         # the engine saw no container or volume of this trial


class _FakeEngine:
    """Unit-test double for docker.info()/version(): only the GPU decision is under test here."""
    def __init__(self, runtimes):
        self.runtimes = runtimes
        self.api = type("api", (), {"base_url": "http+docker://fake"})()

    def version(self):
        return {"Version": "24.0.0", "ApiVersion": "1.43"}

    def info(self):
        return {"Runtimes": {name: {} for name in self.runtimes}}


def test_the_gpu_check_follows_the_engines_runtimes():
    gpu = policy(flavour="cuda", gpu=["0"])
    with_nvidia = {c.name: c.ok for c in preflight.checks(gpu, None, _FakeEngine(["runc", "nvidia"]))}
    without = {c.name: c.ok for c in preflight.checks(gpu, None, _FakeEngine(["runc"]))}
    assert with_nvidia == {"engine": True, "api": True, "gpu": True}
    assert without == {"engine": True, "api": True, "gpu": False}
    assert "gpu" not in {c.name for c in preflight.checks(policy(), None, _FakeEngine(["runc"]))}


def test_an_old_engine_api_fails_the_api_check():
    class Old(_FakeEngine):
        def version(self):
            return {"Version": "18.09", "ApiVersion": "1.39"}
    checks = {c.name: c for c in preflight.checks(policy(), None, Old(["runc"]))}
    assert not checks["api"].ok and "1.40" in checks["api"].detail
