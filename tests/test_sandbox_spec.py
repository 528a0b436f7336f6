"""The container specs, as exact docker-py kwargs: the whole hardening of a trial in one place, no engine needed."""
from __future__ import annotations

from pathlib import Path

import pytest
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from runner.sandbox import spec
from tests.sandbox_kit import policy

LABELS = {"autoresearch.run": "r1", "autoresearch.trial": "7", "autoresearch.role": "train"}


def _hardening(image="img:tag", name="n", labels=LABELS, memory="2g", pids=128, cpus=2.0, tmpfs=256, shm=256):
    return {
        "image": image, "name": name, "labels": labels, "detach": True,
        "network_mode": "none", "read_only": True,
        "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={tmpfs}m,mode=1777"},
        "ipc_mode": "private", "shm_size": f"{shm}m",
        "cap_drop": ["ALL"], "privileged": False,
        "security_opt": ["no-new-privileges", f"seccomp={spec.seccomp_profile()}"],
        "user": "65534:65534", "pids_limit": pids, "mem_limit": memory, "memswap_limit": memory,
        "nano_cpus": int(cpus * 1e9), "init": True,
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
        "ulimits": [Ulimit(name="core", soft=0, hard=0)],
        "hostname": "trial", "working_dir": "/work",
    }


def test_train_container_spec_is_exactly_the_hardened_one(tmp_path):
    pol = policy(train={"budget_seconds": 8, "allowance_seconds": 82, "max_steps": 20})
    data = tmp_path / "data"
    got = spec.train(pol, image="img:tag", name="n", labels=LABELS, train_dir=tmp_path / "slot" / "train",
                     data_dir=data, out_volume="vol-out")
    want = _hardening() | {
        "command": ["python", "-m", "trainer.harness.launch", "--wait", "7200"],
        "entrypoint": [],
        "cpu_shares": 16,                                  # waiting, above the evaluator: the hand-over raises it
        "environment": {                                   # the seed comes with the candidate (trial.json)
            "AUTORESEARCH_DATA": "/data", "AUTORESEARCH_OUT": "/out", "AUTORESEARCH_PRESET": "tiny",
            "AUTORESEARCH_BUDGET_S": "8", "AUTORESEARCH_DEVICE": "cpu",
            "AUTORESEARCH_MAX_STEPS": "20", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
        },
        "mounts": [
            Mount("/work", str((tmp_path / "slot" / "train").resolve()), type="bind", read_only=True),
            Mount("/data/train", str((data / "train").resolve()), type="bind", read_only=True),
            Mount("/data/tokenizer", str((data / "tokenizer").resolve()), type="bind", read_only=True),
            Mount("/out", "vol-out", type="volume", read_only=False, no_copy=True),
        ],
    }
    assert got == want


def test_train_container_never_sees_validation_data(tmp_path):
    got = spec.train(policy(), image="i", name="n", labels=LABELS, train_dir=tmp_path / "train",
                     data_dir=tmp_path / "data", out_volume="v")
    sources = [m["Source"] for m in got["mounts"]]
    targets = [m["Target"] for m in got["mounts"]]
    assert not any("val" in Path(s).name or s.endswith("manifest.json") for s in sources)
    assert not any(t.startswith("/data/val") or t == "/data/manifest.json" for t in targets)


def test_eval_container_spec_mounts_val_and_the_host_model_directory_read_only(tmp_path):
    pol = policy()
    data = tmp_path / "data"
    got = spec.evaluate(pol, image="img:tag", name="n", labels=LABELS, model_dir=tmp_path / "model",
                        data_dir=data, out_volume="vol-eval")
    wait = spec.STANDBY_MAX_S + pol.train.deadline_seconds + pol.eval.timeout_seconds
    want = _hardening() | {
        "command": ["python", "-m", "trainer.evaluate", "--model", "/in/model.pt2", "--data", "/data",
                    "--preset", "tiny", "--out", "/out/result.json", "--device", "cpu",
                    "--wait-for-model", f"{wait:g}"],
        "entrypoint": [],
        "cpu_shares": 2,
        "environment": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
        "mounts": [
            Mount("/in", str((tmp_path / "model").resolve()), type="bind", read_only=True),
            Mount("/data/val", str((data / "val").resolve()), type="bind", read_only=True),
            Mount("/data/tokenizer", str((data / "tokenizer").resolve()), type="bind", read_only=True),
            Mount("/data/manifest.json", str((data / "manifest.json").resolve()), type="bind", read_only=True),
            Mount("/out", "vol-eval", type="volume", read_only=False, no_copy=True),
        ],
    }
    assert got == want


def test_limits_come_from_the_policy():
    pol = policy(limits={"memory": "768m", "cpus": 1.5, "pids": 40, "tmpfs_mb": 32, "shm_mb": 64, "uid": 4242})
    got = spec.hardening(pol, image="i", name="n", labels={})
    assert (got["mem_limit"], got["memswap_limit"]) == ("768m", "768m")
    assert got["nano_cpus"] == 1_500_000_000 and got["pids_limit"] == 40
    assert got["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=32m,mode=1777"} and got["shm_size"] == "64m"
    assert got["user"] == "4242:4242"
    assert spec.train_env(pol)["OMP_NUM_THREADS"] == "1"          # floor of 1.5 cores


def test_no_spec_ever_grants_the_socket_privileges_or_host_namespaces(tmp_path):
    pol = policy()
    specs = [
        spec.train(pol, image="i", name="n", labels=LABELS, train_dir=tmp_path / "t", data_dir=tmp_path,
                   out_volume="v"),
        spec.evaluate(pol, image="i", name="n", labels=LABELS, model_dir=tmp_path / "m", data_dir=tmp_path,
                      out_volume="v"),
        spec.holder(pol, image="i", name="n", labels=LABELS, volumes={"/hold/a": "va"}),
    ]
    for kw in specs:
        assert kw["privileged"] is False and kw["network_mode"] == "none" and kw["read_only"] is True
        assert kw["cap_drop"] == ["ALL"] and "no-new-privileges" in kw["security_opt"]
        assert not {"pid_mode", "userns_mode", "uts_mode", "cap_add", "devices", "volumes", "volumes_from",
                    "network", "ports", "sysctls"} & set(kw)
        assert kw["ipc_mode"] == "private" and not kw["user"].startswith("0")
        assert all("docker.sock" not in (m.get("Source") or "") for m in kw["mounts"])
        assert kw["mem_limit"] == kw["memswap_limit"]


def test_the_holder_mounts_outputs_read_only_and_runs_nothing_but_sleep():
    got = spec.holder(policy(), image="i", name="h", labels=LABELS, volumes={"/hold/train": "vt", "/hold/eval": "ve"})
    assert got["command"] == ["sleep", "infinity"]
    assert got["mounts"] == [Mount("/hold/eval", "ve", type="volume", read_only=True, no_copy=True),
                             Mount("/hold/train", "vt", type="volume", read_only=True, no_copy=True)]
    assert got["pids_limit"] == spec.HOLDER_PIDS and got["mem_limit"] == got["memswap_limit"] == spec.HOLDER_MEMORY


def test_output_volume_is_a_capped_tmpfs_owned_by_the_trial_uid():
    got = spec.output_volume(policy(limits={"output_mb": 64}), name="v", labels=LABELS)
    assert got == {"name": "v", "driver": "local", "labels": LABELS,
                   "driver_opts": {"type": "tmpfs", "device": "tmpfs",
                                   "o": "size=64m,nr_inodes=4096,uid=65534,gid=65534,mode=0700,nosuid,nodev"}}


@pytest.mark.parametrize("gpu, want", [
    ("all", [DeviceRequest(count=-1, capabilities=[["gpu"]])]),
    (["0", "2"], [DeviceRequest(device_ids=["0", "2"], capabilities=[["gpu"]])]),
])
def test_gpu_policy_becomes_device_requests_and_cuda_env(tmp_path, gpu, want):
    pol = policy(flavour="cuda", gpu=gpu)
    kw = spec.train(pol, image="i", name="n", labels=LABELS, train_dir=tmp_path / "t", data_dir=tmp_path,
                    out_volume="v")
    assert kw["device_requests"] == want
    assert kw["environment"]["AUTORESEARCH_DEVICE"] == "cuda"
    ev = spec.evaluate(pol, image="i", name="n", labels=LABELS, model_dir=tmp_path / "m", data_dir=tmp_path,
                       out_volume="v")
    assert ev["device_requests"] == want and ev["command"][-4:-2] == ["--device", "cuda"]
    assert "device_requests" not in spec.holder(pol, image="i", name="h", labels={}, volumes={})


def test_gpu_train_container_has_an_exec_tmpfs_for_compiled_kernels_and_nothing_else_does(tmp_path):
    # torch.compile on CUDA dlopens the kernels it builds from its cache dirs; on the noexec /tmp the first step
    # failed (InductorError) on an H200. Only a GPU train container gets the exec tmpfs, and the caches point there.
    pol = policy(flavour="cuda", gpu="all", limits={"tmpfs_mb": 64})
    kw = spec.train(pol, image="i", name="n", labels=LABELS, train_dir=tmp_path / "t", data_dir=tmp_path,
                    out_volume="v")
    assert kw["tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=64m,mode=1777",
                           "/compile": "rw,exec,nosuid,nodev,size=64m,mode=1777"}
    assert {k: kw["environment"][k] for k in spec.COMPILE_ENV} == {
        "TORCHINDUCTOR_CACHE_DIR": "/compile/inductor", "TRITON_CACHE_DIR": "/compile/triton"}
    ev = spec.evaluate(pol, image="i", name="n", labels=LABELS, model_dir=tmp_path / "m", data_dir=tmp_path,
                       out_volume="v")
    cpu = spec.train(policy(), image="i", name="n", labels=LABELS, train_dir=tmp_path / "t", data_dir=tmp_path,
                     out_volume="v")
    for other in (ev, cpu, spec.holder(pol, image="i", name="h", labels={}, volumes={})):
        assert list(other["tmpfs"]) == ["/tmp"] and "noexec" in other["tmpfs"]["/tmp"].split(",")
        assert not set(spec.COMPILE_ENV) & set(other.get("environment") or {})


def test_cpu_policy_asks_for_no_device():
    assert "device_requests" not in spec.hardening(policy(), image="i", name="n", labels={})


def test_names_are_engine_safe():
    assert spec.name("my run/1", 3, "train") == "autoresearch-my-run-1-3-train"
    assert spec.labels("r", 3, "eval") == {"autoresearch.run": "r", "autoresearch.trial": "3",
                                           "autoresearch.role": "eval"}
