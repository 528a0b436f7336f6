"""Preflight: check the Docker engine before any trial starts. TRUSTED CODE (host side).

Each check gives a `PreflightCheck` (name, ok, detail, fix) so `autoresearch doctor` can print them all (its own
checks of the repository, data and endpoint use the same record); `preflight()` raises the first failure as one
line (InfraError for the engine, UserError for what the user must do).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InfraError, UserError

MIN_API = (1, 40)            # device_requests (GPUs) need API 1.40 (Engine 19.03)
CONNECT_TIMEOUT_S = 10
LABEL_RUN = "autoresearch.run"


@dataclass(frozen=True)
class PreflightCheck:
    """One named readiness check: ok, what was found, and the fix when it failed."""
    name: str
    ok: bool
    detail: str
    fix: str = ""




def connect(timeout: float = 120):
    """A docker-py client for the engine at $DOCKER_HOST (default: the local socket), or InfraError."""
    import docker
    import docker.errors
    import requests
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InfraError(f"cannot reach the Docker engine ({reason}); start it (`dockerd &`, or .ci/setup-docker.sh) "
                         "or point DOCKER_HOST at it") from None


def _api_tuple(version: str) -> tuple[int, int]:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def checks(policy=None, image: str | None = None, client=None) -> list[PreflightCheck]:
    """Every check that applies; stops early when the engine cannot be reached."""
    out = []
    try:
        client = client or connect(CONNECT_TIMEOUT_S)
    except InfraError as e:
        return [PreflightCheck("engine", False, str(e), "start dockerd, or run .ci/setup-docker.sh")]
    try:
        version = client.version()
        info = client.info()
    except Exception as e:  # noqa: BLE001 - any engine failure is reported, not raised
        return [PreflightCheck("engine", False, f"the engine answered ping but not version/info: {e}",
                               "restart dockerd")]
    out.append(PreflightCheck("engine", True, f"Docker Engine {version.get('Version', '?')} at {client.api.base_url}"))
    api = version.get("ApiVersion", "0.0")
    need = ".".join(map(str, MIN_API))
    out.append(PreflightCheck("api", _api_tuple(api) >= MIN_API, f"API {api} (need >= {need})",
                              "upgrade Docker Engine to 19.03 or newer"))
    if image:
        import docker.errors
        try:
            img = client.images.get(image)
            out.append(PreflightCheck("image", True, f"{image} = {img.id[:19]}"))
        except docker.errors.ImageNotFound:
            flavour = "cuda" if ":cuda-" in image else "cpu"
            out.append(PreflightCheck("image", False, f"trial image {image} is not in the engine",
                                      f"run `autoresearch build --flavour {flavour}`"))
    if policy is not None and policy.wants_gpu:
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        ok = "nvidia" in runtimes
        have = ", ".join(runtimes) or "none"
        detail = (f"policy wants GPU {policy.gpu!r} but the engine's runtimes are: {have}" if not ok
                  else f"policy wants GPU {policy.gpu!r}; engine runtimes: {have}")
        out.append(PreflightCheck("gpu", ok, detail,
                                  "install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure "
                                  "--runtime=docker`, then restart dockerd (or set gpu: none in the policy)"))
    return out


def preflight(policy=None, image: str | None = None, client=None) -> None:
    """Raise the first failed check as one line; return quietly when everything a trial needs is there."""
    for c in checks(policy, image, client):
        if not c.ok:
            cls = UserError if c.name in ("image", "gpu") else InfraError
            raise cls(f"{c.name} check failed: {c.detail}; {c.fix}")
