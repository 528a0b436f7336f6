"""Reading a container's CPU time and quota from the cgroup filesystem: v1 and v2 layouts, found from the
container's init process or the cgroupfs driver's paths; a cgroup that is gone keeps the last sample. The layouts
are built in a temp dir as the kernel lays them out; the real engine's cgroups are read by the Docker tests
(tests/adversarial/test_budget.py records train_cpu_s and the quota of real trials)."""
from __future__ import annotations

import shutil
import time

import pytest

from runner.sandbox.cgroup import CpuMeter, find_files, parse_proc_cgroup, read_quota_cores, read_usage_s

CID = "ab" * 32


def v1(root, usage_ns=0, quota=200_000, period=100_000, acct="cpuacct", cpu="cpu"):
    d = root / acct / "docker" / CID
    d.mkdir(parents=True)
    (d / "cpuacct.usage").write_text(f"{usage_ns}\n")
    q = root / cpu / "docker" / CID
    q.mkdir(parents=True, exist_ok=True)
    (q / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (q / "cpu.cfs_period_us").write_text(f"{period}\n")
    return d


def v2(root, usage_us=0, cpu_max="150000 100000"):
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    d = root / "system.slice" / f"docker-{CID}.scope"
    d.mkdir(parents=True)
    (d / "cpu.stat").write_text(f"usage_usec {usage_us}\nuser_usec 1\nsystem_usec 2\n")
    (d / "cpu.max").write_text(cpu_max + "\n")
    return d


@pytest.mark.parametrize("acct, cpu", [("cpuacct", "cpu"), ("cpu,cpuacct", "cpu,cpuacct")])
def test_v1_usage_and_quota_are_read_from_the_cgroupfs_drivers_paths(tmp_path, acct, cpu):
    v1(tmp_path, usage_ns=2_500_000_000, acct=acct, cpu=cpu)
    files = find_files(CID, None, tmp_path)
    assert files.version == 1 and read_usage_s(files) == 2.5 and read_quota_cores(files) == 2.0


def test_v2_usage_and_quota_are_read_from_the_systemd_drivers_scope(tmp_path):
    v2(tmp_path, usage_us=1_250_000)
    files = find_files(CID, None, tmp_path)
    assert files.version == 2 and read_usage_s(files) == 1.25 and read_quota_cores(files) == 1.5
    (files.quota).write_text("max 100000\n")
    assert read_quota_cores(files) is None                      # no quota: nothing to bound by


def test_the_init_process_names_the_cgroup_whatever_the_driver(tmp_path):
    assert parse_proc_cgroup("12:cpu,cpuacct:/kubepods/x\n0::/ignored\n") == {"cpu,cpuacct": "/kubepods/x",
                                                                               "": "/ignored"}
    assert find_files("no-such-id", None, tmp_path) is None      # nothing readable: the meter reports None


def test_the_meter_counts_from_the_mark_and_keeps_the_last_sample_after_the_cgroup_is_gone(tmp_path):
    d = v1(tmp_path, usage_ns=3_000_000_000)                    # 3 s used before the hand-over: not counted

    class Container:                                            # what the meter asks of a docker-py container
        id, attrs = CID, {"State": {"Pid": 0}}

        def reload(self):
            pass

    meter = CpuMeter(Container(), sample_s=0.02, root=tmp_path).start()
    meter.mark()
    (d / "cpuacct.usage").write_text("7500000000\n")            # 4.5 s more while it runs
    deadline = time.monotonic() + 5
    while meter.last != 7.5 and time.monotonic() < deadline:
        time.sleep(0.01)
    shutil.rmtree(tmp_path / "cpuacct")                         # the container exited: its cgroup is removed
    time.sleep(0.1)
    cpu = meter.stop()
    assert (cpu.seconds, cpu.quota_cores) == (4.5, 2.0) and cpu.samples >= 2


def test_a_meter_without_a_cgroup_reports_none(tmp_path):
    class Container:
        id, attrs = CID, {"State": {}}

        def reload(self):
            pass

    cpu = CpuMeter(Container(), root=tmp_path).start().stop()
    assert (cpu.seconds, cpu.quota_cores, cpu.samples) == (None, None, 0)


def test_throttled_time_is_read_from_cpu_stat_on_v1_and_v2_and_counted_from_the_mark(tmp_path):
    from runner.sandbox.cgroup import read_throttled_s
    d1 = v1(tmp_path / "one", usage_ns=1_000_000_000)
    stat1 = tmp_path / "one" / "cpu" / "docker" / CID / "cpu.stat"
    stat1.write_text("nr_periods 40\nnr_throttled 12\nthrottled_time 1500000000\n")
    files = find_files(CID, None, tmp_path / "one")
    assert files.throttling == stat1 and read_throttled_s(files) == 1.5
    (tmp_path / "two").mkdir()
    d2 = v2(tmp_path / "two")
    (d2 / "cpu.stat").write_text("usage_usec 9\nnr_throttled 3\nthrottled_usec 250000\n")
    assert read_throttled_s(find_files(CID, None, tmp_path / "two")) == 0.25

    class Container:
        id, attrs = CID, {"State": {"Pid": 0}}

        def reload(self):
            pass

    meter = CpuMeter(Container(), sample_s=0.02, root=tmp_path / "one").start()
    meter.mark()                                                # 1.5 s throttled before the hand-over
    (d1 / "cpuacct.usage").write_text("3000000000\n")
    stat1.write_text("nr_periods 80\nnr_throttled 30\nthrottled_time 2250000000\n")
    deadline = time.monotonic() + 5
    while meter.throttled_last != 2.25 and time.monotonic() < deadline:
        time.sleep(0.01)
    cpu = meter.stop()
    assert (cpu.seconds, cpu.throttled_s) == (2.0, 0.75)


def test_the_cpu_share_is_the_cpu_time_used_over_what_the_quota_allowed():
    from runner.sandbox.cgroup import cpu_share
    assert cpu_share(8.0, 5.0, 2.0) == 0.8                      # 8 CPU s in 5 s under a quota of 2 cores
    assert cpu_share(None, 5.0, 2.0) is None and cpu_share(8.0, 5.0, None) is None and cpu_share(1, 0, 2) is None
