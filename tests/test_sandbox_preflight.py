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


# --------------------------------------------------------------------------- the policy's limits against the engine
ENGINE = {"NCPU": 2, "MemTotal": 8 << 30}          # an engine's /info: 2 cores, 8 GiB


def failing(pol, info=ENGINE) -> dict[str, preflight.PreflightCheck]:
    return {c.name: c for c in preflight.limit_checks(pol, info) if not c.ok}


def test_limits_the_engine_can_honour_pass_as_one_line_naming_what_it_has():
    [c] = preflight.limit_checks(policy(limits={"cpus": 2.0, "memory": "8g", "cpuset": "0-1"}), ENGINE)
    assert c.ok and c.name == "limits" and "2 cores, 8.0 GiB" in c.detail


def test_more_cpus_than_the_engine_has_fails_naming_both_and_the_fix():
    c = failing(policy(limits={"cpus": 64.0}))["cpus"]
    assert c.detail == "limits.cpus 64 but the engine has 2 cores"
    assert c.fix == "set limits.cpus to 2 or less in the policy"
    with pytest.raises(UserError, match=r"^cpus check failed: limits.cpus 64 but the engine has 2 cores; set"):
        raise preflight.error(c)


def test_more_memory_than_the_engine_has_fails():
    c = failing(policy(limits={"memory": "9g"}))["memory"]
    assert c.detail == "limits.memory 9g (9.0 GiB) but the engine has 8.0 GiB" and "8g or less" in c.fix
    assert failing(policy(limits={"memory": "8192m"})) == {}


def test_slots_times_cpus_over_the_engines_cores_fails_and_says_what_fits():
    c = failing(policy(slots=2, limits={"cpus": 2.0}))["slots"]
    assert "slots 2 x limits.cpus 2 needs 4 cores, the engine has 2" == c.detail and "limits.cpus to 1" in c.fix
    assert "set slots to 2 or fewer" in failing(policy(slots=3, limits={"cpus": 1.0}))["slots"].fix
    assert failing(policy(slots=2, limits={"cpus": 1.0})) == {}


def test_a_cpuset_naming_cores_the_engine_lacks_or_too_few_for_the_quota_fails():
    c = failing(policy(limits={"cpuset": "0,5", "cpus": 1.0}))["cpuset"]
    assert c.detail == "limits.cpuset 0,5 names core 5, the engine has cores 0-1"
    c = failing(policy(limits={"cpuset": "1", "cpus": 2.0}))["cpuset"]
    assert c.detail == "limits.cpus 2 on limits.cpuset 1, which has 1 cores"
    assert failing(policy(slots=2, limits={"cpuset": "0-7", "cpus": 1.0})) == {}   # CPU slots: each its own share


def test_the_limits_are_not_checked_against_this_engine_when_trials_run_elsewhere():
    assert "cpus" not in {c.name for c in preflight.checks(policy(limits={"cpus": 64.0}, executor={"kind": "ray"}),
                                                             None, _FakeEngine(["runc"]))}


def test_docker_size_strings_are_binary_units():
    assert [preflight.size_bytes(s) for s in ("512m", "4g", "1.5g", "1048576", "64k")] == [
        512 << 20, 4 << 30, 3 << 29, 1 << 20, 64 << 10]
    assert preflight.cores_of("0-3,6") == {0, 1, 2, 3, 6}


@pytest.mark.docker
def test_the_real_engine_refuses_a_policy_asking_for_more_cores_than_it_has(docker_client):
    ncpu = int(docker_client.info()["NCPU"])
    checks = {c.name: c for c in preflight.checks(policy(limits={"cpus": float(ncpu + 62)}), None, docker_client)}
    assert not checks["cpus"].ok and f"the engine has {ncpu} cores" in checks["cpus"].detail
    with pytest.raises(UserError, match="cpus check failed"):
        preflight.preflight(policy(limits={"cpus": float(ncpu + 62)}), None, docker_client)
    ok = {c.name: c.ok for c in preflight.checks(policy(limits={"cpus": 1.0, "memory": "1g"}), None, docker_client)}
    assert ok == {"engine": True, "api": True, "limits": True}
