"""Attacks from a hostile train.py against the real Docker engine: each one must be contained and classified.

Each candidate here is a small stand-in train.py; most import nothing heavy and exit quickly with a marker line
that the test reads back from the trial's log tail.
"""
from __future__ import annotations

import time

import pytest

from runner.sandbox import containers
from tests.sandbox_kit import candidate, policy, trial

pytestmark = pytest.mark.docker


def test_the_train_container_has_no_network(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        import os, socket
        results = []
        for host, port in (("1.1.1.1", 53), ("8.8.8.8", 443), ("172.17.0.1", 2375), ("10.0.0.1", 80)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            try:
                s.connect((host, port))
                results.append(f"CONNECTED {host}")
            except OSError as e:
                results.append(f"{host}:errno={e.errno}")
        try:
            socket.getaddrinfo("pypi.org", 443)
            results.append("DNS_RESOLVED")
        except OSError:
            results.append("dns=failed")
        ifaces = sorted(os.listdir("/sys/class/net"))
        print("NET", " ".join(results), "ifaces=" + ",".join(ifaces), flush=True)
        raise SystemExit(3)
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "crash", out.error
    line = next(l for l in out.log_tail.splitlines() if l.startswith("NET "))
    assert "CONNECTED" not in line and "DNS_RESOLVED" not in line
    assert line.count("errno=101") == 4                         # ENETUNREACH: there is no route at all
    assert line.endswith("ifaces=lo")


def test_mounts_and_root_fs_are_read_only_and_the_user_is_unprivileged(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        import os
        def attempt(path):
            try:
                with open(path, "a") as f:
                    f.write("x")
                return "WROTE"
            except OSError as e:
                return f"errno={e.errno}"
        targets = ["/data/train/shard_00000.bin", "/data/train/new.bin", "/data/tokenizer/tokenizer.json",
                   "/work/train.py", "/work/other.py", "/app/trainer/harness/__init__.py", "/usr/lib/x", "/x",
                   "/etc/passwd"]
        for t in targets:
            print("WRITE", t, attempt(t), flush=True)
        print("WRITE /tmp/ok", attempt("/tmp/ok"), flush=True)
        print("WRITE /out/ok", attempt("/out/ok"), flush=True)
        status = open("/proc/self/status").read()
        caps = [l.split()[1] for l in status.splitlines() if l.startswith(("CapEff", "CapPrm", "CapBnd"))]
        nnp = [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")]
        print("ID", os.getuid(), os.getgid(), "caps=" + ",".join(caps), "nnp=" + ",".join(nnp), flush=True)
        print("SOCKET", os.path.exists("/var/run/docker.sock") or os.path.exists("/run/docker.sock"), flush=True)
        import resource
        print("CORE", resource.getrlimit(resource.RLIMIT_CORE), flush=True)
        raise SystemExit(3)
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "crash", out.error
    lines = out.log_tail.splitlines()
    writes = dict(l.split()[1:3] for l in lines if l.startswith("WRITE "))
    for target, result in writes.items():
        if target in ("/tmp/ok", "/out/ok"):
            assert result == "WROTE", target
        else:
            assert result in ("errno=30", "errno=13"), (target, result)  # EROFS / EACCES
    ident = next(l for l in lines if l.startswith("ID "))
    assert ident.startswith("ID 65534 65534 ")
    assert "caps=0000000000000000,0000000000000000,0000000000000000" in ident and ident.endswith("nnp=1")
    assert "SOCKET False" in lines
    assert "CORE (0, 0)" in lines


def test_the_train_container_cannot_see_any_validation_file(tmp_path, trial_image, sandbox_data):
    from trainer.shards import sha256_file
    val_hashes = sorted(sha256_file(p) for p in (sandbox_data / "val").glob("*.bin"))
    cand = candidate(tmp_path, f"""
        import hashlib, os
        VAL = {val_hashes!r}
        print("DATA", sorted(os.listdir("/data")), flush=True)
        found, seen = [], 0
        # every writable or mounted place (the image's own /usr and /opt/venv were built without any data)
        for top in ("/data", "/work", "/tmp", "/out", "/in", "/app", "/home", "/root", "/srv", "/mnt", "/media",
                    "/var", "/run", "/etc", "/dev/shm", "/hold"):
            for root, dirs, files in os.walk(top):
                for f in files:
                    p = os.path.join(root, f)
                    try:
                        if os.path.islink(p) or os.path.getsize(p) > 50_000_000:
                            continue
                        with open(p, "rb") as fh:
                            seen += 1
                            if hashlib.sha256(fh.read()).hexdigest() in VAL:
                                found.append(p)
                    except OSError:
                        pass
        mounts = [l.split()[4] for l in open("/proc/self/mountinfo")]
        print("SEEN", seen, "FOUND", found, flush=True)
        print("MOUNTS", [m for m in mounts if "val" in m or "manifest" in m], flush=True)
        raise SystemExit(3)
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    lines = out.log_tail.splitlines()
    assert "DATA ['tokenizer', 'train']" in lines
    seen = next(l for l in lines if l.startswith("SEEN "))
    assert int(seen.split()[1]) > 100 and seen.endswith("FOUND []")     # it looked, and found nothing
    assert "MOUNTS []" in lines


def test_a_trial_sleeping_past_the_hard_timeout_is_killed_and_reported_timeout(tmp_path, trial_image,
                                                                                sandbox_data):
    cand = candidate(tmp_path, """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)       # ignoring the polite signal changes nothing
        if os.fork() == 0:
            os.setsid()                                     # a detached child must die with the container too
            time.sleep(3600)
        print("sleeping", flush=True)
        time.sleep(3600)
    """)
    timeout = 6
    t0 = time.monotonic()
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data,
                   pol=policy(train={"budget_seconds": 2, "timeout_seconds": timeout}))
    elapsed = time.monotonic() - t0
    assert out.status == "timeout", out.error
    assert "hard timeout of 6 s" in out.error
    assert timeout - 0.5 <= out.timings["train_host_s"] <= timeout + 3
    assert out.timings["train_wall_s"] <= timeout + 3                   # the engine's own clock agrees
    assert elapsed < timeout + 10
    assert out.val_bpb is None


def test_a_memory_bomb_gives_oom(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        hog = []
        while True:
            hog.append(bytearray(32 << 20))                 # touched pages: 32 MiB at a time
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data, pol=policy(limits={"memory": "256m"}))
    assert out.status == "oom", (out.status, out.error)
    assert "256m" in out.error and out.timings["train_exit_code"] == 137


def test_a_fork_bomb_is_stopped_by_the_pids_limit(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        import os, time
        children = 0
        while True:
            try:
                pid = os.fork()
            except OSError as e:
                print("FORK_STOPPED", children, "errno", e.errno, flush=True)
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children += 1
            if children > 10000:
                print("FORK_UNLIMITED", flush=True)
                break
        raise SystemExit(4)
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data, pol=policy(limits={"pids": 32}))
    assert out.status == "crash", out.error
    line = next(l for l in out.log_tail.splitlines() if l.startswith("FORK_"))
    assert line.startswith("FORK_STOPPED") and line.endswith("errno 11")  # EAGAIN
    assert int(line.split()[1]) < 32


def test_a_model_that_is_a_link_is_refused_as_export_failed(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        import os
        os.symlink("/data/train/shard_00000.bin", "/out/model.pt2")
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "export_failed" and "link" in out.error, out.error
    assert "eval_started_at" not in out.timings                  # never reached the evaluator


def test_exit_86_is_export_failed_with_the_reason_from_export_error_txt(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        open("/out/export_error.txt", "w").write("torch.export failed: guard on a data-dependent shape\\n")
        raise SystemExit(86)
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "export_failed"
    assert out.error.endswith("guard on a data-dependent shape")


def test_a_clean_exit_without_a_model_is_export_failed(tmp_path, trial_image, sandbox_data):
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, "print('done')\n"), sandbox_data)
    assert out.status == "export_failed" and "does not exist" in out.error


def test_a_garbage_model_reaches_the_evaluator_and_is_export_failed(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        open("/out/model.pt2", "wb").write(b"PK\\x03\\x04 this is not an exported program" * 100)
        print("---")
        print("val_bpb: 0.0001")
    """)
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data)
    assert out.status == "export_failed", (out.status, out.error)
    assert out.error.startswith("the exported model is invalid")
    assert out.val_bpb is None and out.train_summary == {}
    assert out.result is not None and out.result["status"] == "invalid_model"


def test_a_candidate_without_train_py_is_a_crash_not_infra(tmp_path, trial_image, sandbox_data):
    empty = tmp_path / "empty-candidate"
    empty.mkdir()
    out, _ = trial(tmp_path, trial_image.tag, empty, sandbox_data)
    assert out.status == "crash" and "no regular file train.py" in out.error


def test_a_missing_image_is_infra_never_the_candidates_fault(tmp_path, sandbox_data, docker_client):
    out, _ = trial(tmp_path, "autoresearch-trial:cpu-000000000000", candidate(tmp_path, "pass\n"), sandbox_data)
    assert out.status == "infra" and "autoresearch build" in out.error


def test_log_lines_stream_to_the_callback_bounded(tmp_path, trial_image, sandbox_data):
    cand = candidate(tmp_path, """
        import sys
        print("step=1 loss=3.0 progress=0.1 remaining_s=5", flush=True)
        sys.stdout.write("A" * 100_000 + "\\n")
        for i in range(2000):
            print(f"line {i}")
        sys.stdout.flush()
    """)
    got = []
    out, _ = trial(tmp_path, trial_image.tag, cand, sandbox_data, on_line=got.append)
    assert got[0].startswith("step=1 ")
    assert max(len(l) for l in got) <= containers.MAX_LINE
    assert len(got) < 2002                                   # rate-bounded: the flood was cut
    assert out.log_tail.splitlines()[-1] == "line 1999"      # the tail comes from the engine's log


def test_a_hanging_callback_cannot_hang_the_trial(tmp_path, trial_image, sandbox_data):
    def stuck(line):
        time.sleep(3600)
    t0 = time.monotonic()
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, "print('hello')\n"), sandbox_data,
                   on_line=stuck)
    assert out.status == "export_failed"
    assert time.monotonic() - t0 < 30
