"""A container's CPU time and CPU quota, read from the host's cgroup filesystem. TRUSTED CODE (host side).

What a candidate reports about its own time is its claim; the kernel's accounting of its container's cgroup is
not: nothing inside the container can lower `cpuacct.usage` (cgroup v1) or `usage_usec` in `cpu.stat` (v2), nor
raise `cpu.cfs_quota_us` / `cpu.max`. The container's cgroup is found from its init process
(/proc/<State.Pid>/cgroup), so any cgroup driver works (cgroupfs: docker/<id>, systemd:
system.slice/docker-<id>.scope), with the cgroupfs paths as a fallback.

    meter = CpuMeter(container).start()   # a daemon thread samples the usage every SAMPLE_S seconds
    meter.mark()                          # the hand-over: CPU time counts from the sample taken here
    meter.stop()                          # -> CpuTime(seconds since mark, quota in cores, samples, throttled)
    cpu_share(cpu.seconds, host_s, cpu.quota_cores)   # 1.0: the container got its whole quota

How much compute a trial got, for comparing trials (runner.decision): `cpu_share` is the CPU time the container
used over what its quota allowed in the same host seconds (below 1: the machine was busy, or the candidate left
cores idle); `throttled_s` is the time the kernel held the container back because it wanted more than its quota
(`throttled_usec` in cpu.stat on v2, `throttled_time` ns in the cpu controller's cpu.stat on v1), a sign that it
was not the machine that slowed it.

The cgroup disappears when the container exits, so the last sample is kept: the reading under-counts by at most
SAMPLE_S seconds of the quota. Where the runner cannot see the engine's cgroups (a remote DOCKER_HOST, a
rootless engine in another namespace) the meter reads nothing and reports None: the host and engine clocks still
bound the train phase, the CPU time is then not recorded.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SAMPLE_S = 0.25                      # seconds between samples of the usage (the most the last sample can miss)
V1_CONTROLLERS = ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")   # mount names of the v1 cpuacct hierarchy
V1_CPU_CONTROLLERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")   # ... and of the v1 cpu (quota) hierarchy


@dataclass(frozen=True)
class CgroupFiles:
    usage: Path                      # cpuacct.usage (ns) or cpu.stat (usage_usec)
    quota: Path | None               # cpu.cfs_quota_us (v1; cpu.cfs_period_us next to it) or cpu.max (v2)
    version: int
    throttling: Path | None = None   # cpu.stat with throttled_usec (v2: the usage file) or throttled_time (v1)


@dataclass(frozen=True)
class CpuTime:
    seconds: float | None            # CPU seconds used between mark() and the last sample; None if unreadable
    quota_cores: float | None        # the CFS quota the container ran under, in cores; None if none or unreadable
    samples: int                     # readings taken
    throttled_s: float | None = None  # seconds the CFS quota held it back between mark() and the last sample


def read_usage_s(files: CgroupFiles) -> float | None:
    """The cgroup's total CPU time in seconds, or None when it is gone (the container exited) or unreadable."""
    try:
        text = files.usage.read_text()
    except OSError:
        return None
    if files.version == 1:
        try:
            return int(text.strip()) / 1e9
        except ValueError:
            return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value) / 1e6
            except ValueError:
                return None
    return None


def read_throttled_s(files: CgroupFiles) -> float | None:
    """The cgroup's total throttled time in seconds (CFS quota), or None when gone or unreadable."""
    if files.throttling is None:
        return None
    try:
        text = files.throttling.read_text()
    except OSError:
        return None
    key, scale = ("throttled_time", 1e9) if files.version == 1 else ("throttled_usec", 1e6)
    for line in text.splitlines():
        k, _, value = line.partition(" ")
        if k == key:
            try:
                return int(value) / scale
            except ValueError:
                return None
    return None


def cpu_share(cpu_s: float | None, host_s: float | None, quota_cores: float | None) -> float | None:
    """CPU seconds used over what the quota allowed in host_s seconds (1.0: all of it); None if any is unknown."""
    if cpu_s is None or not host_s or not quota_cores or host_s <= 0:
        return None
    return round(cpu_s / (host_s * quota_cores), 4)


def read_quota_cores(files: CgroupFiles) -> float | None:
    """The CFS quota in cores (quota / period), None with no quota or when unreadable."""
    if files.quota is None:
        return None
    try:
        if files.version == 1:
            quota = int(files.quota.read_text().strip())
            period = int((files.quota.parent / "cpu.cfs_period_us").read_text().strip())
        else:
            q, _, p = files.quota.read_text().strip().partition(" ")
            if q == "max":
                return None
            quota, period = int(q), int(p or 100_000)
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {controller list: path}; cgroup v2's line is under ''."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def find_files(container_id: str, pid: int | None, root: Path = CGROUP_ROOT) -> CgroupFiles | None:
    """The container's usage and quota files: from its init process's cgroup, else the cgroupfs driver's paths."""
    tried: list[tuple[str, str]] = []
    if pid:
        try:
            groups = parse_proc_cgroup(Path(f"/proc/{int(pid)}/cgroup").read_text())
        except OSError:
            groups = {}
        for ctl, path in groups.items():
            if ctl and set(ctl.split(",")) >= {"cpuacct"}:
                tried.append(("v1", path))
            elif ctl == "":
                tried.append(("v2", path))
    tried += [("v1", f"/docker/{container_id}"), ("v1", f"/system.slice/docker-{container_id}.scope"),
              ("v2", f"/docker/{container_id}"), ("v2", f"/system.slice/docker-{container_id}.scope")]
    for version, rel in tried:
        rel = rel.lstrip("/")
        if version == "v1":
            for ctl in V1_CONTROLLERS:
                usage = root / ctl / rel / "cpuacct.usage"
                if usage.is_file():
                    quotas = (root / c / rel / "cpu.cfs_quota_us" for c in V1_CPU_CONTROLLERS)
                    quota = next((q for q in quotas if q.is_file()), None)
                    stat = quota.parent / "cpu.stat" if quota is not None else None
                    return CgroupFiles(usage, quota, 1, stat if stat is not None and stat.is_file() else None)
        else:
            stat = root / rel / "cpu.stat"
            if rel and stat.is_file() and (root / "cgroup.controllers").is_file():
                quota = root / rel / "cpu.max"
                return CgroupFiles(stat, quota if quota.is_file() else None, 2, stat)
    return None


class CpuMeter:
    """Samples a running container's cgroup CPU usage on a daemon thread; keeps the last sample."""

    def __init__(self, container, sample_s: float = SAMPLE_S, root: Path = CGROUP_ROOT):
        self.container, self.sample_s, self.root = container, sample_s, root
        self.files: CgroupFiles | None = None
        self.quota_cores: float | None = None
        self.base: float | None = None
        self.last: float | None = None
        self.throttled_base: float | None = None
        self.throttled_last: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "CpuMeter":
        try:
            self.container.reload()
            pid = (self.container.attrs.get("State") or {}).get("Pid")
            self.files = find_files(self.container.id, pid, self.root)
        except Exception:  # noqa: BLE001 - a measurement; without it the clocks still decide
            self.files = None
        if self.files is not None:
            self.quota_cores = read_quota_cores(self.files)
            self._sample()
            self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        value = read_usage_s(self.files) if self.files is not None else None
        throttled = read_throttled_s(self.files) if value is not None else None
        if value is not None:
            with self._lock:
                self.last = value
                self.throttled_last = throttled if throttled is not None else self.throttled_last
                self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.sample_s):
            self._sample()

    def mark(self) -> None:
        """CPU time counts from here (the hand-over): what the waiting container used before is not the candidate's."""
        self._sample()
        with self._lock:
            self.base, self.throttled_base = self.last, self.throttled_last

    def stop(self) -> CpuTime:
        """Take a last sample (if the cgroup is still there), stop the thread, return the CPU time since mark()."""
        self._sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        with self._lock:
            used = None if self.last is None else self.last - (self.base if self.base is not None else 0.0)
            held = (None if self.throttled_last is None
                    else self.throttled_last - (self.throttled_base if self.throttled_base is not None else 0.0))
            return CpuTime(None if used is None else round(max(used, 0.0), 3), self.quota_cores, self.samples,
                           None if held is None else round(max(held, 0.0), 3))
