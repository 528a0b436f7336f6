"""The Docker sandbox: where a candidate's train.py runs and its model is scored. TRUSTED CODE (host side).

This docstring is the project's threat model, in one place: what the cage protects against and what it does not.
docs/security.md has, for each line, the test in tests/adversarial/ that proves it against a real engine; the
module named in brackets says how.

The threat: train.py is written by an agent that may be hostile (or an LLM talked into it), and the LLM's replies
are hostile input too. What must hold: the score (only the trusted evaluator's, on validation data the candidate
never sees, for a model that cannot cheat), the operator's machine, repository, data and terminal, and the run's
own records (ledger, branch).

What is covered:
- Every trial container (holder, train, eval): no network (`network_mode=none`: loopback only; no route to the
  internet, the host, the engine or the LLM server), a read-only root filesystem, size-capped tmpfs for /out,
  /tmp (noexec) and /dev/shm (and an inode cap on /out); a GPU train container also gets /compile, the one tmpfs
  it may execute files from, because torch.compile loads the kernels it builds from there; `cap_drop=ALL`,
  `no-new-privileges`, uid 65534, `pids_limit`, `mem_limit == memswap_limit`, a CPU quota, `init`, capped engine logs, no core dumps, an environment built from
  scratch (no secret of the runner's), its own pid namespace, the project's seccomp profile (the engine's default
  less io_uring, ptrace, process_vm_*, keyrings, userfaultfd, perf, bpf, the mount family, unshare/setns, kexec,
  modules; the native 64-bit system call table only); never privileged, never a host namespace, never the engine's
  socket. [spec, seccomp.json]
- Validation data: mounted only into the eval container, which runs trusted code only; the train container gets
  the train split and the tokenizer read-only, and no manifest. [spec]
- Writing the data, the repository or the image: read-only binds and root; the candidate is a read-only copy of
  its commit's files, handed over by rename, never a checkout. [spec, slot]
- Fork, thread, memory, disk and log floods: stop at their limits (`crash`, `oom`, ENOSPC); the runner's log pump
  is rate-limited and cuts long lines. [spec, containers]
- Running forever, or training longer than everyone else: the train container is killed at budget + allowance
  after the hand-over; over the host's clock, the engine's clock or the cgroup's CPU time bound the trial is
  `over_budget`, never kept, whatever the candidate's own process believed its budget was. [classify, cgroup]
- A runner that dies or stops mid-trial: a watchdog per slot, a host process nothing in a container can reach,
  kills a container at its deadline and removes the slot when the runner is gone. [watchdog]
- Forging the score: the score comes only from the evaluator's result.json, written in the eval container's own
  volume and read as hostile input (size cap, schema, finite numbers, no links); what train.py prints is
  informational and keys that look like a score are dropped. [runner/result.py]
- A model that cheats: the evaluator probes every eval batch (causality K times with fresh cuts, batch
  independence, determinism): a model reading ahead at 1% of positions passes with probability <= 1e-6; non-finite
  logits make it invalid. [trainer/probes.py, trainer/evaluate.py]
- A hostile .pt2: loaded without unpickling anything, no code in names, no native code, no I/O or random op, no
  symbolic expressions; only an allowlist of pure, deterministic ATen ops, so a graph cannot read memory it never
  wrote. [trainer/safe_pt2.py, trainer/graph_ops.py]
- The model's way out: copied only after the train container exited, as exactly one regular file under the cap
  (no link, FIFO, device, directory), streamed to disk with its holes kept and the engine stream always closed,
  then renamed into the eval container's read-only /in. [archive, containers, slot]
- Blame: the engine's events tell who ended a container; a kill, stop or removal the host did not make, or a
  hand-over that failed, is `infra`, never the candidate's. [classify, containers]
- In front of the sandbox, the patch policy: only the policy's allowed files; no `..`, absolute path, `.git` in any
  spelling, git metadata file, symlink, submodule or mode change; no control or bidi character; size caps. A
  refusal is `rejected` and never reaches a container; commits are built with git plumbing, hooks off.
  [runner/patch.py, runner/workspace.py]
- The operator's terminal and files: every candidate or LLM string is shown with its control and format
  characters escaped (terminal, live view, report.md, results.tsv, train.log). [runner/text.py]
- Prompt injection through a log: log tails reach the next prompt only as quoted data, in a fence longer than any
  backtick run in them. [runner/proposers/prompt.py]

What is not covered:
- A kernel or container-runtime escape: Docker shares the host kernel, and the seccomp profile narrows the kernel
  surface but is not a VM. No AppArmor profile on the development kernel. For stronger isolation run the trials
  under gVisor (runsc) or in a VM.
- Side and covert channels between trials on one machine or GPU (timing, caches, memory bandwidth, GPU memory).
- A candidate that wastes its own budget, or spends the start-up and export allowance its honest version would
  not (docs/design.md, "Training time"). On a GPU only the wall-clock allowance bounds the train phase: the CPU
  time does not measure GPU work.
- Sparse peeking: reading ahead at a few scattered positions is caught with probability 1 - exp(-K M / n_max),
  no better (one forward pass can test one position per row). [trainer/probes.py]
- The data source itself: train/val overlap in it; memorising the public train split is allowed.
- A bug in torch's own kernels on hostile shapes (the evaluator is itself in a container).
- An LLM persuaded by quoted text: the fence marks it as data, it cannot make a model ignore it; the patch policy
  and the sandbox bound what a persuaded model can do.
- The LLM endpoint: it is sent program.md, the best files and recent log tails; a hostile endpoint only ever gets
  replies that meet the patch policy and the sandbox.
- The engine's own faults: a full disk under its data root (/var/lib/docker), an engine with live-restore.
- Whoever controls the runner controls the machine: compose.yaml's runner service holds the host's Docker socket
  (root on the host); trial containers never get it. `python -m trainer.direct` runs train.py with no sandbox at
  all (development only).

One concern per module:
    executor    runner.executor.Executor over this package: image, leftovers, slots started ahead, run, close
    trial       one trial: train container, model copy, eval container -> a TrialOutcome
    images      the trial image: its content-hash tag, and building it
    preflight   engine reachable, API version, image present, NVIDIA runtime when the policy wants a GPU
    spec        container/volume kwargs from the policy (pure functions: the whole hardening in one place)
    containers  create/start, stream logs on a bounded thread, wait with a hard timeout, kill, the engine's events
                for a container, copy a file out
    archive     one file out of a container through the engine's archive API, as hostile input
    cgroup      a container's CPU time and quota from the host's cgroup filesystem
    classify    exit code / OOMKilled / timeout / export exit 86 / eval status / outside events -> a trial status
    cleanup     remove containers and volumes in `finally`, and leftovers of earlier runs by label
    slot        a trial's containers started ahead and the hand-overs that feed them
    watchdog    a host process per slot that enforces its deadlines and removes it when its runner is gone
"""
