"""Preflight: check the Docker engine before any trial starts. TRUSTED CODE (host side).

Each check gives a `PreflightCheck` (name, ok, detail, fix) so `autoresearch doctor` can print them all (its own
checks of the repository, data and endpoint use the same record); `preflight()` raises the first failure as one
line (InfraError for the engine, UserError for what the user must do).

Against a policy (executor `docker`: the trials run on this engine) the engine must be able to honour its limits:
`limits.cpus` at most the engine's cores (NCPU), `limits.memory` at most its memory (MemTotal), `slots` x `cpus`
at most NCPU (CPU slots each get their own cores), `limits.cpuset` naming only cores 0..NCPU-1 and at least
`cpus` of them (one slot only: with CPU slots each gets its own share instead), and a GPU policy the nvidia
runtime. Each failure names the value found, what the engine has, and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InfraError, UserError

MIN_API = (1, 40)            # device_requests (GPUs) need API 1.40 (Engine 19.03)
CONNECT_TIMEOUT_S = 10
LABEL_RUN = "autoresearch.run"
USER_CHECKS = ("image", "gpu", "cpus", "memory", "slots", "cpuset")   # failures the user fixes (policy, build)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}     # docker size strings are binary units
GIB = 1 << 30


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
    if policy is not None and policy.executor.kind == "docker":
        out += limit_checks(policy, info)
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


def size_bytes(size: str) -> int:
    """A docker size string of the policy (512m, 4g, 1.5g, 1048576) in bytes."""
    size = size.strip().lower()
    unit = size[-1] if size[-1:] in SIZE_UNITS else ""
    return int(float(size[:len(size) - len(unit)]) * SIZE_UNITS[unit])


def cores_of(cpuset: str) -> set[int]:
    """The core numbers a cpuset string names ("0-3,6" -> {0, 1, 2, 3, 6})."""
    out: set[int] = set()
    for part in cpuset.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def limit_checks(policy, info: dict) -> list[PreflightCheck]:
    """The policy's CPU, memory and core limits against what the engine has (info: the engine's /info); one
    failing check per limit it cannot honour, else one passing `limits` check."""
    ncpu, mem = int(info.get("NCPU") or 0), int(info.get("MemTotal") or 0)
    lim, bad = policy.limits, []
    if ncpu and lim.cpus > ncpu:
        bad.append(PreflightCheck("cpus", False, f"limits.cpus {lim.cpus:g} but the engine has {ncpu} cores",
                                  f"set limits.cpus to {ncpu} or less in the policy"))
    if mem and size_bytes(lim.memory) > mem:
        bad.append(PreflightCheck("memory", False, f"limits.memory {lim.memory} ({size_bytes(lim.memory) / GIB:.1f} "
                                  f"GiB) but the engine has {mem / GIB:.1f} GiB",
                                  f"set limits.memory to {int(mem / GIB)}g or less in the policy"))
    cpu_slots = policy.slot_count > 1 and not isinstance(policy.gpu, list)
    if ncpu and cpu_slots and policy.slots * lim.cpus > ncpu:
        per = ncpu // policy.slots
        bad.append(PreflightCheck("slots", False, f"slots {policy.slots} x limits.cpus {lim.cpus:g} needs "
                                  f"{policy.slots * lim.cpus:g} cores, the engine has {ncpu}",
                                  (f"set limits.cpus to {per} (or fewer slots) in the policy" if per >= 1
                                   else f"set slots to {ncpu} or fewer in the policy")))
    if lim.cpuset and not cpu_slots:
        cores = cores_of(lim.cpuset)
        if ncpu and max(cores) >= ncpu:
            bad.append(PreflightCheck("cpuset", False, f"limits.cpuset {lim.cpuset} names core {max(cores)}, the "
                                      f"engine has cores 0-{ncpu - 1}",
                                      f"set limits.cpuset to cores within 0-{ncpu - 1} (or drop it) in the policy"))
        elif lim.cpus > len(cores):
            bad.append(PreflightCheck("cpuset", False, f"limits.cpus {lim.cpus:g} on limits.cpuset {lim.cpuset}, "
                                      f"which has {len(cores)} cores",
                                      f"set limits.cpus to {len(cores)} or less, or name more cores in "
                                      "limits.cpuset"))
    if bad or not (ncpu and mem):
        return bad
    return [PreflightCheck("limits", True, f"limits.cpus {lim.cpus:g} x slots {policy.slot_count}, memory "
                           f"{lim.memory}: the engine has {ncpu} cores, {mem / GIB:.1f} GiB")]


def error(check: PreflightCheck) -> Exception:
    """A failed check as the one-line exception `preflight` raises: UserError for what the user fixes (policy,
    image), InfraError for the engine."""
    cls = UserError if check.name in USER_CHECKS else InfraError
    return cls(f"{check.name} check failed: {check.detail}; {check.fix}")


def preflight(policy=None, image: str | None = None, client=None) -> None:
    """Raise the first failed check as one line; return quietly when everything a trial needs is there."""
    for c in checks(policy, image, client):
        if not c.ok:
            raise error(c)
