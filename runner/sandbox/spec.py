"""Container specs: the docker-py keyword arguments of every container a trial starts. TRUSTED CODE (host side).

Pure functions of the policy and a few paths: no engine calls, so the whole hardening is unit-tested as exact
kwargs. Three containers per trial, all from the pinned trial image, all hardened the same way:

    holder   `sleep infinity`, mounts the two output volumes read-only. Docker unmounts a tmpfs volume when its
             last container stops, so the holder keeps the outputs alive until the host has copied them out.
    train    UNTRUSTED code: the trusted launcher (trainer/harness/launch.py) imports torch, then waits for the
             host to hand over the candidate's train.py into /work (a host directory, read-only here) and runs
             it. /data/train and /data/tokenizer read-only, /out = a size-capped tmpfs volume. No validation data.
    eval     trusted code (the evaluator in the image) on a hostile input: /in/model.pt2 (a regular-file copy the
             host made), /data/val, /data/tokenizer, /data/manifest.json read-only, /out = its own capped tmpfs
             volume. Validation data is mounted here and nowhere else. /in is the host's model directory,
             read-only here and empty until the host renames its checked copy of the model into it
             (`--wait-for-model`).

The mount points, file names and environment names are trainer.contract's, shared with the image's code.

Both the train and the eval container start before their input exists (runner/sandbox/slot.py: the next
trial's containers start while the current one trains), so their imports and warm-up are off the critical path.
While they wait they have a very low CPU weight (WAITING_EVAL_CPU_SHARES, WAITING_TRAIN_CPU_SHARES, against
RUNNING_CPU_SHARES for a running trial), so they take next to no CPU from a training or an evaluation; the host
raises the weight to the default when it hands their input over. The launcher's is the higher of the two
because its train.py is needed first (docs/benchmarks.md). Exactly one train and one eval container per trial.

Every container: network none, read-only root, a noexec tmpfs /tmp (a GPU train container also has an exec one,
COMPILE_DIR, for torch.compile's kernels), private IPC with a sized /dev/shm, cap_drop ALL,
no-new-privileges, a non-root uid:gid, pids/memory(=memory+swap)/CPU limits, init, capped json-file logs, no core
dumps, autoresearch.* labels, the project's seccomp profile; never privileged, never a host namespace, never the
Docker socket.

The seccomp profile (seccomp.json, next to this module; the engine takes its text, not a path, through the API) is
the engine's default profile less what a training run never needs, refused with EPERM (SECCOMP_REMOVED below says
what and why). The default already refuses most of these to a container without capabilities (mount, bpf, perf,
unshare, modules, ...); the profile refuses them whatever capabilities a container has, and also those the default
allows any container: on Docker 20.10.24 (measured by tests/adversarial/test_kernel.py) io_uring, ptrace of a
same-uid process (PTRACE_SEIZE of the container's init succeeded), memfd_secret, modify_ldt, vmsplice,
remap_file_pages, fanotify_mark, process_mrelease, adjtimex and clock_adjtime; newer defaults also allow
process_vm_readv/writev and name_to_handle_at. Kept as the default has them: clone without namespace flags, clone3
answering ENOSYS (glibc then falls back to clone, whose flags seccomp can check), personality's five harmless
values, sockets of every family but AF_VSOCK. Only the native 64-bit system call table is allowed (no x86, x32 or
arm compat entry points).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from trainer.contract import (DATA_DIR, ENV_BUDGET_S, ENV_DATA, ENV_DEVICE, ENV_MAX_STEPS, ENV_OUT, ENV_PRESET,
                              MODEL_DIR, MODEL_IN, OUT_DIR, RESULT_FILE, WORK_DIR)

LABEL_RUN = "autoresearch.run"
LABEL_TRIAL = "autoresearch.trial"
LABEL_ROLE = "autoresearch.role"
LABEL_LOCK = "autoresearch.lock"  # the absolute path of the run's lock (runs/<tag>/.lock: an flock held while its
                                  # runner lives), so any run can tell a dead run's leftovers (runner.sandbox.cleanup)
LABEL_HOST = "autoresearch.host"  # where that path means that file: the host's boot id and the runner's mount namespace
LOG_MAX_SIZE = "10m"
OUT_INODES = 4096                 # files the output tmpfs may hold
HOLDER_MEMORY = "64m"
HOLDER_PIDS = 16
WAITING_EVAL_CPU_SHARES = 2       # the lowest CPU weight: the waiting evaluator never competes
WAITING_TRAIN_CPU_SHARES = 16     # the waiting launcher: still ~1/64 of a running trial, but 8x the waiting
                                  # evaluator, so it gets the idle CPU first (its train.py is needed first)
RUNNING_CPU_SHARES = 1024         # the engine's default weight, given at the hand-over
STANDBY_MAX_S = 7200              # the longest a started container waits for its input (its own backstop)
COMPILE_DIR = "/compile"          # a GPU train container's tmpfs that may hold executable files: torch.compile's
COMPILE_ENV = {                   # kernels are built and loaded (dlopen) there; /tmp is noexec
    "TORCHINDUCTOR_CACHE_DIR": f"{COMPILE_DIR}/inductor",
    "TRITON_CACHE_DIR": f"{COMPILE_DIR}/triton",
}

SECCOMP_FILE = Path(__file__).with_name("seccomp.json")
# What the profile refuses on top of the default, by why (each name is in seccomp.json's EPERM rule, none in an
# allow rule: tests/adversarial/test_kernel.py checks both, and probes each call in a real trial container)
SECCOMP_REMOVED = {
    # io_uring: a second, asynchronous path into most of the kernel, with a long record of privilege escalations
    "async_io_ring": ["io_uring_setup", "io_uring_enter", "io_uring_register"],
    # reading, writing or steering another process (same uid: the container's init, the launcher's threads)
    "other_processes": ["ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease",
                        "kcmp", "pidfd_getfd"],
    "keyrings": ["keyctl", "add_key", "request_key"],             # kernel keyrings are not namespaced
    # page-fault handling, secret and remapped memory, pipe page gifting: exploit primitives, not training needs
    "memory_tricks": ["userfaultfd", "memfd_secret", "remap_file_pages", "vmsplice", "modify_ldt"],
    "kernel_instrumentation": ["perf_event_open", "bpf", "syslog", "lookup_dcookie", "fanotify_init",
                               "fanotify_mark"],
    "mounts": ["mount", "umount", "umount2", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
               "mount_setattr", "pivot_root", "chroot"],
    "namespaces": ["unshare", "setns"],                           # clone's namespace flags are refused by its rule
    "kernel_and_machine": ["kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
                           "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "iopl", "ioperm", "vhangup"],
    # file handles bypass path permission checks (open_by_handle_at is the "shocker" container escape)
    "file_handles": ["name_to_handle_at", "open_by_handle_at"],
    "host_identity_and_time": ["sethostname", "setdomainname", "adjtimex", "clock_adjtime", "clock_adjtime64",
                               "settimeofday", "stime", "clock_settime", "clock_settime64"],
}

TRAIN_DIR = WORK_DIR                # the contract's mount points, under the names this module has always used
DATA = DATA_DIR
OUT = OUT_DIR


def labels(run_tag: str, trial_id: str, role: str, owner: dict[str, str] | None = None) -> dict[str, str]:
    """owner: the run's LABEL_LOCK and LABEL_HOST (runner.sandbox.cleanup.owner_labels), where it has a lock."""
    return {LABEL_RUN: str(run_tag), LABEL_TRIAL: str(trial_id), LABEL_ROLE: role, **(owner or {})}


def name(run_tag: str, trial_id: str, role: str) -> str:
    """A readable, engine-safe container/volume name: autoresearch-<run>-<trial>-<role>."""
    raw = f"autoresearch-{run_tag}-{trial_id}-{role}"
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw)[:200]


@functools.lru_cache(maxsize=1)
def seccomp_profile() -> str:
    """The project's seccomp profile as the engine takes it (`security_opt: seccomp=<JSON text>`), compact."""
    return json.dumps(json.loads(SECCOMP_FILE.read_text()), separators=(",", ":"))


def threads(policy) -> int:
    """Intra-op threads for torch/OpenMP: the CPU quota, rounded down, at least 1."""
    return max(1, int(policy.limits.cpus))


def device_requests(policy) -> list[DeviceRequest]:
    """GPUs the way the NVIDIA Container Toolkit takes them: 'all' -> every GPU, a list -> those device ids."""
    if policy.gpu == "none":
        return []
    if policy.gpu == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=[str(d) for d in policy.gpu], capabilities=[["gpu"]])]


def hardening(policy, *, image: str, name: str, labels: dict[str, str]) -> dict:
    """The kwargs every trial container shares (docker-py `containers.create`)."""
    lim = policy.limits
    kwargs = {
        "image": image,
        "name": name,
        "labels": dict(labels),
        "detach": True,
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": tmpfs_options(lim.tmpfs_mb, exec_=False)},
        "ipc_mode": "private",
        "shm_size": f"{lim.shm_mb}m",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges", f"seccomp={seccomp_profile()}"],
        "privileged": False,
        "user": f"{lim.uid}:{lim.uid}",
        "pids_limit": lim.pids,
        "mem_limit": lim.memory,
        "memswap_limit": lim.memory,
        "nano_cpus": int(round(lim.cpus * 1e9)),
        "init": True,
        "log_config": LogConfig(type=LogConfig.types.JSON, config={"max-size": LOG_MAX_SIZE, "max-file": "1"}),
        "ulimits": [Ulimit(name="core", soft=0, hard=0)],
        "hostname": "trial",
        "working_dir": TRAIN_DIR,
    }
    if lim.cpuset:
        kwargs["cpuset_cpus"] = lim.cpuset
    if policy.wants_gpu:
        kwargs["device_requests"] = device_requests(policy)
    return kwargs


def tmpfs_options(size_mb: int, *, exec_: bool) -> str:
    """A container tmpfs's mount options. noexec is spelled out: the engine adds it to /tmp by default, and a
    file there cannot be mapped executable ("failed to map segment from shared object")."""
    return f"rw,{'exec' if exec_ else 'noexec'},nosuid,nodev,size={size_mb}m,mode=1777"


def output_volume(policy, *, name: str, labels: dict[str, str], size_mb: int | None = None) -> dict:
    """kwargs of `volumes.create` for one capped, writable output dir (a tmpfs owned by the trial uid)."""
    uid = policy.limits.uid
    size = size_mb if size_mb is not None else policy.limits.output_mb
    return {
        "name": name,
        "driver": "local",
        "driver_opts": {"type": "tmpfs", "device": "tmpfs",
                        "o": f"size={size}m,nr_inodes={OUT_INODES},uid={uid},gid={uid},mode=0700,nosuid,nodev"},
        "labels": dict(labels),
    }


def _out_mount(volume: str, read_only: bool = False, target: str = OUT) -> Mount:
    return Mount(target=target, source=volume, type="volume", read_only=read_only, no_copy=True)


def _ro_bind(source: Path, target: str) -> Mount:
    return Mount(target=target, source=str(Path(source).resolve()), type="bind", read_only=True)


def holder(policy, *, image: str, name: str, labels: dict[str, str], volumes: dict[str, str]) -> dict:
    """A do-nothing container that keeps the output volumes mounted; volumes = {mount point: volume name}."""
    kwargs = hardening(policy, image=image, name=name, labels=labels)
    kwargs.pop("device_requests", None)
    kwargs.update(command=["sleep", "infinity"], mem_limit=HOLDER_MEMORY, memswap_limit=HOLDER_MEMORY,
                  pids_limit=HOLDER_PIDS, nano_cpus=int(0.1e9), network_mode="none", entrypoint=[],
                  mounts=[_out_mount(vol, read_only=True, target=target) for target, vol in sorted(volumes.items())])
    return kwargs


def train_env(policy) -> dict[str, str]:
    """The train container's environment; the seed is the trial's and comes with the candidate (launch.py)."""
    env = {
        ENV_DATA: DATA,
        ENV_OUT: OUT,
        ENV_PRESET: policy.preset,
        ENV_BUDGET_S: f"{policy.train.budget_seconds:g}",
        ENV_DEVICE: "cuda" if policy.wants_gpu else "cpu",
        "OMP_NUM_THREADS": str(threads(policy)),
        "MKL_NUM_THREADS": str(threads(policy)),
    }
    if policy.train.max_steps is not None:
        env[ENV_MAX_STEPS] = str(policy.train.max_steps)
    if policy.wants_gpu:
        env.update(COMPILE_ENV)
    return env


def train_command() -> list[str]:
    return ["python", "-m", "trainer.harness.launch", "--wait", f"{STANDBY_MAX_S:g}"]


def train(policy, *, image: str, name: str, labels: dict[str, str], train_dir: Path, data_dir: Path,
          out_volume: str) -> dict:
    """The untrusted phase: the launcher, waiting for the host to put train.py (and trial.json) into train_dir
    (mounted read-only at /work), with the train split only. On a GPU also COMPILE_DIR, the one place it may
    execute files from: train.py compiles on CUDA, and inductor and Triton load the kernels they build as shared
    objects from their cache dirs; with those on the noexec /tmp the first compiled step fails (InductorError,
    seen on an H200: docs/benchmarks.md, "A trial on a GPU"). The candidate could already run any code in its own
    process; what this adds is execve of a file it wrote, still without network, capabilities or a new privilege.
    The CPU image has no C compiler, so inductor cannot build kernels there and a CPU container gets no such dir."""
    data_dir = Path(data_dir)
    kwargs = hardening(policy, image=image, name=name, labels=labels)
    if policy.wants_gpu:
        kwargs["tmpfs"] = {**kwargs["tmpfs"], COMPILE_DIR: tmpfs_options(policy.limits.tmpfs_mb, exec_=True)}
    kwargs.update(
        command=train_command(),
        entrypoint=[],
        cpu_shares=WAITING_TRAIN_CPU_SHARES,
        environment=train_env(policy),
        mounts=[
            _ro_bind(train_dir, TRAIN_DIR),
            _ro_bind(data_dir / "train", f"{DATA}/train"),
            _ro_bind(data_dir / "tokenizer", f"{DATA}/tokenizer"),
            _out_mount(out_volume),
        ],
    )
    return kwargs


def eval_command(policy) -> list[str]:
    wait = STANDBY_MAX_S + policy.train.deadline_seconds + policy.eval.timeout_seconds   # a backstop only
    return ["python", "-m", "trainer.evaluate", "--model", MODEL_IN, "--data", DATA, "--preset", policy.preset,
            "--out", f"{OUT}/{RESULT_FILE}", "--device", "cuda" if policy.wants_gpu else "cpu",
            "--wait-for-model", f"{wait:g}"]


def evaluate(policy, *, image: str, name: str, labels: dict[str, str], model_dir: Path, data_dir: Path,
             out_volume: str) -> dict:
    """The trusted phase: the image's evaluator, waiting for the host's copy of model.pt2 to appear in model_dir
    (mounted read-only at /in), with the validation split."""
    data_dir = Path(data_dir)
    kwargs = hardening(policy, image=image, name=name, labels=labels)
    kwargs.update(
        command=eval_command(policy),
        entrypoint=[],
        cpu_shares=WAITING_EVAL_CPU_SHARES,
        environment={"OMP_NUM_THREADS": str(threads(policy)), "MKL_NUM_THREADS": str(threads(policy))},
        mounts=[
            _ro_bind(model_dir, MODEL_DIR),
            _ro_bind(data_dir / "val", f"{DATA}/val"),
            _ro_bind(data_dir / "tokenizer", f"{DATA}/tokenizer"),
            _ro_bind(data_dir / "manifest.json", f"{DATA}/manifest.json"),
            _out_mount(out_volume),
        ],
    )
    return kwargs
