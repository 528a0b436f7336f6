"""The node side of the Ray executor (runner/ray_executor.py states the contracts): what one Ray task does on a
node with a Docker engine. TRUSTED CODE, run by Ray worker processes; the candidate's train.py is only ever bytes
here, written to a scratch dir and handed to the node's hardened train container by runner.sandbox.trial.run_trial.

    node_trial(job)    ensure image + data, run the trial, send back the outcome, result.json, log lines, phases
    node_prepare(job)  ensure image + data only (the head calls it on every node at start)
    node_cleanup(tag)  remove a dead run's containers and volumes on this node's engine
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import uuid
from dataclasses import asdict
from pathlib import Path

from .executor import TrialOutcome, TrialSpec

CACHE_ENV = "AUTORESEARCH_RAY_CACHE"       # a node's cache root (data per sha, trial scratch dirs)
DEFAULT_CACHE = "/var/tmp/autoresearch-ray"
MAX_LOG_LINES = 20_000                     # train log lines a node sends back (the last ones)


def node_trial(job: dict) -> dict:
    """On the node: ensure image and data, run the hardened trial, send back what the head writes."""
    from .policy import Policy
    from .sandbox import preflight, watchdog
    from .sandbox.trial import run_trial
    watchdog.DETACH = True          # this worker's death (a lost node, a cancel) must not take the watchdogs along
    slot = _slot_name()
    try:
        client = preflight.connect()
        ready = _ensure(client, job)
        if ready.get("need") or ready.get("error"):
            return {**(_infra(ready["error"]) if ready.get("error") else ready), "slot": slot}
        work = _cache() / "trials" / f"{job['run_tag']}-{job['trial_id']}-{uuid.uuid4().hex[:6]}"
        cand = work / "candidate"
        cand.mkdir(parents=True)
        if job["train_py"] is not None:
            _write(cand / "train.py", job["train_py"], 0o644)
        policy = Policy.model_validate(job["policy"])
        gpus = _gpu_ids()
        if policy.wants_gpu and gpus:
            policy = policy.model_copy(update={"gpu": gpus})   # exactly the device Ray assigned this task
        lines, phases = [], []

        def on_line(line):
            lines.append(line)
            if len(lines) > 2 * MAX_LOG_LINES:
                del lines[:-MAX_LOG_LINES]
        spec = TrialSpec(run_tag=job["run_tag"], trial_id=job["trial_id"], candidate_dir=cand,
                         data_dir=Path(ready["data_dir"]), policy=policy, image=job["image"], seed=job["seed"],
                         work_dir=work / "trial", keep_model=job["keep_model"],
                         every_batch_below=job.get("every_batch_below"))
        try:
            out = run_trial(spec, on_line, client=client, on_phase=phases.append)
            result = work / "trial" / "result.json"
            model = work / "trial" / "model.pt2"
            return {"outcome": asdict(out), "slot": slot, "lines": lines[-MAX_LOG_LINES:], "phases": phases,
                    "result_json": result.read_bytes() if result.is_file() else None,
                    "model": model.read_bytes() if job["keep_model"] and model.is_file() else None}
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except Exception as e:  # noqa: BLE001 - the node's own failure (engine, disk, cache): never the candidate's
        return {**_infra(f"on Ray node {slot}: {_one_line(e)}"), "slot": slot}


def node_prepare(job: dict) -> dict:
    from .sandbox import preflight
    try:
        return {"node": _slot_name(), **_ensure(preflight.connect(), job)}
    except Exception as e:  # noqa: BLE001 - reported per node; the trial path checks again
        return {"node": _slot_name(), "error": _one_line(e)}


def node_cleanup(run_tag: str) -> int:
    from .sandbox import cleanup
    return cleanup.remove_leftovers(run_tag=run_tag)


def _ensure(client, job: dict) -> dict:
    """{"need": [...]} when the image or data must be shipped; {"error"} on a digest/data mismatch; else
    {"data_dir", "image": present|loaded, "data": cached|shipped}."""
    import docker.errors

    from trainer.shards import manifest_sha256, verify
    report, need = {}, []
    ref, digest = job["image"], job["digest"]
    try:
        have = client.images.get(ref).id
        report["image"] = "present"
    except docker.errors.ImageNotFound:
        have = None
        if job.get("image_ref") is None:
            need.append("image")
        else:
            import ray
            client.images.load(ray.get(job["image_ref"]))        # saved by digest: loads untagged
            if not ref.startswith("sha256:"):
                client.images.get(digest).tag(*ref.rsplit(":", 1))
            have = client.images.get(ref).id
            report["image"] = "loaded"
    if have is not None and have != digest:
        return {"error": f"image digest mismatch on this node: {ref} is {have[:19]}, the run pins {digest[:19]}"}
    data = _cache() / "data" / job["sha"]
    if data.is_dir():
        report["data"] = "cached"
    elif job.get("data_ref") is None:
        need.append("data")
    else:
        import ray
        tmp = data.parent / f".incoming-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(ray.get(job["data_ref"]))) as tar:
                tar.extractall(tmp, filter="data")
            verify(tmp)
            if manifest_sha256(tmp) != job["sha"]:
                return {"error": f"the data shipped from the head does not match the run's manifest {job['sha'][:12]}"}
            for p in [tmp, *tmp.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
            try:
                tmp.rename(data)
            except OSError:                       # another task of this node put it there first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        report["data"] = "shipped"
    if need:
        return {"need": need}
    if manifest_sha256(data) != job["sha"]:
        return {"error": f"the node's data cache {data} does not match the run's manifest"}
    return {**report, "data_dir": str(data)}


def _cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _gpu_ids() -> list[str]:
    import ray
    return [str(g) for g in ray.get_gpu_ids()]


def _slot_name() -> str:
    import ray
    gpus = _gpu_ids()
    node = f"node-{ray.get_runtime_context().get_node_id()[:6]}"
    return f"{node}/gpu{','.join(gpus)}" if gpus else node


def _infra(error: str) -> dict:
    return {"outcome": asdict(TrialOutcome(status="infra", error=error))}


def _write(path: Path, data: bytes, mode: int) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data)
    path.chmod(mode)


def _one_line(e: BaseException) -> str:
    return (" ".join(str(e).split()) or type(e).__name__)[:300]
