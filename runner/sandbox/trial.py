"""One trial: the candidate's train.py in a locked-down train container, then the trusted evaluator in an eval
container, from one pinned image -> a TrialOutcome. TRUSTED CODE (host side); the candidate is untrusted.

    run_trial(spec, on_line, on_phase=...) reads top to bottom as the data flow (on_phase hears "training" and
    "evaluating" as those phases start, for the live view):
      1. stage     copy the candidate's train.py into the trial's work dir (a regular file, read-only)
      2. slot      the trial's containers (runner/sandbox/slot.py): a holder that keeps two size-capped tmpfs
                   output volumes mounted, a train and an eval container, all started and waiting for their
                   inputs. A run starts them while the previous trial trains (`standby`); otherwise now
      3. train     hand train.py over (the trial starts here); the train container runs it until the deadline
                   (policy.train.deadline_seconds: budget + start-up and export allowance) counted from the
                   hand-over, its log lines streaming to on_line. Its time is measured outside it (host clock,
                   engine clock, cgroup CPU time): a train phase over the deadline is `over_budget`
                   (classify.train_time_verdict), whatever the candidate's own process believed its budget
                   was. The compute it got is measured there too: the trusted launcher's calibration line
                   (read from stderr before its hand-over line: runner.sandbox.calibration), the container's
                   CPU share of its quota and its throttled time (cgroup), for runner.decision to compare
                   trials by. As its export starts, the run's next slot starts on a background thread. The eval
                   container never sees anything but the validation data and, later, the model
      4. model     copy out /out/model.pt2 as hostile input (a single regular file under the cap), then rename
                   it into the eval container's read-only model directory: the hand-over
      5. eval      the evaluator scores that copy (hard timeout counted from the hand-over)
      6. result    copy out result.json, validate it (runner.result), classify (runner.sandbox.classify)
      finally      remove the slot's containers, volumes and directory (the model is kept if spec.keep_model);
                   a run's standby does it later, on the thread that starts the slot after next

Engine and image failures give status `infra` (never blamed on the candidate), and so does a container that the
engine's events say was killed, stopped or removed from outside (an operator, the engine), a holder that was, and
a launcher that never started train.py (classify.outside_verdict, holder_verdict, launch_verdict); a bad data
directory is the user's to fix and raises UserError before anything starts. Each slot's watchdog
(runner/sandbox/watchdog.py) enforces the deadlines when this process cannot.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..errors import InfraError, UserError
from ..executor import TrialOutcome, TrialSpec
from ..result import MAX_RESULT_BYTES, ResultError, parse_result, parse_summary
from . import calibration, cgroup, classify, cleanup, containers, preflight
from .slot import HOLD_EVAL, HOLD_TRAIN, Slot, Standby, open_slot

EXPORT_ERROR_BYTES = 64 * 1024
MAX_TRAIN_PY_BYTES = 4 << 20           # a candidate train.py larger than this is refused (crash)
LOG_TAIL_LINES = 60


def run_trial(spec: TrialSpec, on_line: Callable[[str], None] | None = None, client=None,
              on_phase: Callable[[str], None] | None = None, standby: Standby | None = None) -> TrialOutcome:
    """One trial (the module docstring); `standby`: a run's slot started ahead, which this trial takes (else it
    starts its own) and whose next slot it starts as its export starts."""
    import docker.errors
    import requests

    policy, t0 = spec.policy, time.monotonic()
    out = TrialOutcome(status="infra")
    work = Path(spec.work_dir)
    _check_data(Path(spec.data_dir), policy.limits.uid)
    work.mkdir(parents=True, exist_ok=True)
    slot: Slot | None = None
    meter: cgroup.CpuMeter | None = None
    try:
        # 0. engine + image (infra on failure); a re-run of the same trial id replaces its leftovers
        client = client or preflight.connect()
        if policy.wants_gpu:
            preflight.preflight(policy, None, client)
        try:
            out.image_digest = client.images.get(spec.image).id
        except docker.errors.ImageNotFound:
            return _finish(out, "infra", f"trial image {spec.image} is not in the engine; run `autoresearch build "
                                         f"--flavour {policy.flavour}`", t0)
        cleanup.remove_leftovers(spec.run_tag, spec.trial_id, client)

        # 1. stage the candidate
        for old in ("result.json", "model.pt2"):           # left by an earlier run of this trial id
            (work / old).unlink(missing_ok=True)
        train_py = _stage_candidate(Path(spec.candidate_dir), work)
        if train_py is None:
            return _finish(out, "crash", "the candidate has no regular file train.py (deleted or a link)", t0)
        if train_py.stat().st_size > MAX_TRAIN_PY_BYTES:
            return _finish(out, "crash", f"the candidate's train.py is {train_py.stat().st_size:,} bytes, over "
                                         f"the cap of {MAX_TRAIN_PY_BYTES:,}", t0)

        # 2. the slot: started ahead by the run and waiting, or started now
        t_slot = time.monotonic()
        slot = standby.take(policy, spec.image, spec.data_dir) if standby else None
        out.timings["slot_prestarted"] = slot is not None
        if slot is None:
            slot = open_slot(client, policy, image=spec.image, data_dir=Path(spec.data_dir), run_tag=spec.run_tag,
                             slot_id=spec.trial_id, dir=work / "slot")
        out.timings["slot_s"] = round(time.monotonic() - t_slot, 3)

        # 3. train (untrusted): the hand-over starts it; the next trial's slot starts as its export starts (a
        #    core idles then), or when it ends if it never says so
        if on_phase:
            on_phase("training")
        next_slot = (lambda: standby.prepare_soon(client)) if standby else None
        meter = cgroup.CpuMeter(slot.train).start()
        startup = calibration.StartupReader(slot.train).start()   # the launcher's stderr up to its hand-over line
        meter.mark()
        t_handed = slot.hand_over_candidate(train_py, spec.seed)
        handed_wall = time.time()
        training = containers.follow(slot.train, on_line, since=t_handed, on_exporting=next_slot)
        slot.name_after(spec.run_tag, spec.trial_id)
        t_exit, pump = containers.wait_to_end(training, policy.train.deadline_seconds)
        t_exit = _own_kill(slot, "train", t_exit)
        if next_slot:
            next_slot()
        _record(out.timings, "train", t_exit)
        cpu = meter.stop()
        train_time = _train_time(out.timings, t_exit, handed_wall, cpu)
        out.calibration_s = calibration.seconds(startup.result())     # compute this trial got: runner.decision
        out.cpu_share = cgroup.cpu_share(cpu.seconds, t_exit.host_wall_s, cpu.quota_cores)
        out.throttled_s = cpu.throttled_s
        if pump and pump.launched_at is not None:         # the launcher's part of the start-up (calibration)
            out.timings["train_launched_s"] = round(pump.launched_at - t_handed, 3)
        if pump and pump.first_step_at is not None:
            out.timings["train_startup_s"] = round(pump.first_step_at - t_handed, 3)
        if pump and pump.exporting_at is not None:
            out.timings["train_exporting_s"] = round(pump.exporting_at - t_handed, 3)
        tail = containers.log_tail(slot.train, 400)
        out.train_summary = parse_summary(tail.splitlines())
        out.log_tail = _tail(tail)
        # why it failed: the end of stderr alone (a traceback ends it). The engine's tail counts lines of both
        # streams before it filters one, so stderr is read whole (the engine caps the log at spec.LOG_MAX_SIZE)
        err = containers.log_tail(slot.train, "all", stdout=False) if t_exit.exit_code else ""
        lines = err.splitlines()
        handed = next((i for i, line in enumerate(lines) if line.strip() == containers.LAUNCHED_LINE), None)
        own = lines if handed is None else lines[handed + 1:]     # before the hand-over: the launcher's lines
        why_tail = "\n".join(line for line in own if line.strip() != containers.LAUNCHED_LINE).strip() or tail
        export_error = ""
        if t_exit.exit_code == classify.EXPORT_FAILED:
            try:
                export_error = containers.fetch_file(slot.holder, f"{HOLD_TRAIN}/export_error.txt",
                                                     EXPORT_ERROR_BYTES).decode("utf-8", "replace")
            except containers.RefusedFile:
                pass
        verdict = classify.train_time_verdict(train_time, budget_s=policy.train.budget_seconds,
                                              allowance_s=policy.train.allowance_seconds,
                                              cpu_allowance_s=policy.train.cpu_allowance_seconds)
        verdict = verdict or classify.train_verdict(t_exit, deadline_s=policy.train.deadline_seconds,
                                                    memory=policy.limits.memory, log_tail=why_tail,
                                                    export_error=export_error)
        verdict = (classify.launch_verdict(t_exit, launched=bool(pump and pump.launched_at), log_tail=why_tail)
                   or _from_outside(slot, "train", t_exit, verdict))
        if verdict is not None:
            return _finish(out, verdict.status, verdict.error, t0)

        # 4. the model, copied out as hostile input, then handed over (an atomic rename: never seen half-written)
        try:
            t_copy = time.monotonic()
            containers.fetch_file(slot.holder, f"{HOLD_TRAIN}/model.pt2", policy.limits.output_mb << 20,
                                  dest=slot.model_part)
            out.timings["copy_model_s"] = round(time.monotonic() - t_copy, 3)
        except containers.RefusedFile as e:
            verdict = _holder_gone(slot) or classify.Failure("export_failed", f"train.py exited 0 but its model is "
                                                                              f"unusable: {e}")
            return _finish(out, verdict.status, verdict.error, t0)

        # 5. eval (trusted code, hostile model)
        t_model = slot.hand_over_model(spec.every_batch_below)
        if on_phase:
            on_phase("evaluating")
        e_exit, _ = containers.wait_to_end(containers.follow(slot.evaluator, None, since=t_model, pump=False),
                                           policy.eval.timeout_seconds)
        e_exit = _own_kill(slot, "eval", e_exit)
        _record(out.timings, "eval", e_exit)
        out.timings["eval_wait_s"] = round(t_model - slot.started_at, 3)   # started early, waiting for the model
        eval_tail = containers.log_tail(slot.evaluator, 100)

        # 6. the score: result.json only, validated
        result, result_error = None, ""
        if e_exit.exit_code == 0 and not e_exit.timed_out:
            try:
                raw = containers.fetch_file(slot.holder, f"{HOLD_EVAL}/result.json", MAX_RESULT_BYTES)
                result = parse_result(raw)
                (work / "result.json").write_bytes(raw)
                result_error = _probe_bar_error(result, spec.every_batch_below)
            except (containers.RefusedFile, ResultError) as e:
                result_error = str(e)
        verdict = classify.eval_verdict(e_exit, timeout_s=policy.eval.timeout_seconds, memory=policy.limits.memory,
                                        log_tail=eval_tail, result=result, result_error=result_error)
        verdict = (result_error and _holder_gone(slot)) or _from_outside(slot, "eval", e_exit, verdict)
        if verdict.status != "ok":
            out.log_tail = _tail(out.log_tail + "\n--- eval ---\n" + eval_tail)
        out.result = result
        out.val_bpb = float(result["val_bpb"]) if verdict.status == "ok" else None
        out.probe_scope = result["probes"].get("scope") if result else None
        return _finish(out, verdict.status, verdict.error, t0)
    except (docker.errors.DockerException, requests.exceptions.RequestException, InfraError) as e:
        return _finish(out, "infra", f"the Docker engine failed during the trial: {_one_line(e)}", t0)
    finally:
        if meter is not None:
            meter.stop()
        if slot is not None:
            if spec.keep_model and slot.model.is_file():
                os.replace(slot.model, work / "model.pt2")
            if standby:                                      # removed on the next slot's thread, or at close
                standby.discard(slot, client)
            else:
                errors = slot.remove(client)
                if errors and out.status != "infra":
                    out.error = (out.error + "; " if out.error else "") + "cleanup: " + errors[0]


# --------------------------------------------------------------------------- helpers

def _finish(out: TrialOutcome, status: str, error: str, t0: float) -> TrialOutcome:
    out.status, out.error = status, ("" if status == "ok" else error)
    out.timings["total_s"] = round(time.monotonic() - t0, 3)
    return out


def _record(timings: dict, phase: str, ex: containers.Exit) -> None:
    """The engine's start/finish of the container (it started before its input arrived) and its wall time, and
    the host's seconds from the hand-over of its input to its exit (`_host_s`: the phase's own time)."""
    timings[f"{phase}_started_at"] = ex.started_at
    timings[f"{phase}_finished_at"] = ex.finished_at
    timings[f"{phase}_wall_s"] = None if ex.wall_s is None else round(ex.wall_s, 3)
    timings[f"{phase}_host_s"] = round(ex.host_wall_s, 3)
    timings[f"{phase}_exit_code"] = ex.exit_code


def _train_time(timings: dict, ex: containers.Exit, handed_wall: float, cpu: cgroup.CpuTime) -> classify.TrainTime:
    """The train phase's time by the outside measures (classify.train_time_verdict judges it), into timings:
    train_host_s (already there), train_engine_s (the engine's FinishedAt - the hand-over), train_cpu_s and
    train_cpu_quota_cores (the container's cgroup; None where the host cannot read it)."""
    handed = datetime.fromtimestamp(handed_wall, timezone.utc).isoformat().replace("+00:00", "Z")
    engine_s = containers.engine_wall({"StartedAt": handed, "FinishedAt": ex.finished_at})
    engine_s = None if engine_s is None else round(engine_s, 3)
    timings["train_engine_s"] = engine_s
    timings["train_cpu_s"] = cpu.seconds
    timings["train_cpu_quota_cores"] = cpu.quota_cores
    return classify.TrainTime(host_s=ex.host_wall_s, engine_s=engine_s, cpu_s=cpu.seconds,
                              cpu_quota_cores=cpu.quota_cores, killed=ex.timed_out)


def _own_kill(slot: Slot, role: str, ex: containers.Exit) -> containers.Exit:
    """The slot's watchdog kills at the deadline when the runner did not (runner/sandbox/watchdog.py): that kill
    is the host's own, as the runner's would have been."""
    return dataclasses.replace(ex, timed_out=True) if not ex.timed_out and slot.killed_by_watchdog(role) else ex


def _from_outside(slot: Slot, role: str, ex: containers.Exit, verdict):
    """The verdict, or infra when the engine's events say the container was ended from outside (asked only when
    the verdict would blame the candidate: a clean exit costs no engine call)."""
    if verdict is None or verdict.status in classify.NOT_BLAMED:
        return verdict
    return classify.outside_verdict(verdict, slot.outside_events(role), role=role, host_killed=ex.timed_out,
                                    removed=ex.removed or slot.being_removed(role))


def _probe_bar_error(result: dict, below: float | None) -> str:
    """"" when the result was probed as this trial asked (the bar it was given, and the scope that bar allows);
    else one line (an infra failure: the trusted evaluator or the hand-over broke its contract)."""
    probes = result["probes"]
    if probes.get("every_batch_below") != below:
        return (f"it names the probe bar {probes.get('every_batch_below')!r}, the trial handed over {below!r}; "
                "rebuild the trial image (`autoresearch build`)")
    if probes.get("scope") == "one_batch" and (below is None or result["status"] == "ok"
                                               and result["val_bpb"] < below):
        return f"it probed {probes.get('scope')!r} with a score below the bar {below!r}; rebuild the trial image"
    return ""


def _holder_gone(slot: Slot):
    """infra when a file could not be copied out because the holder (it keeps the outputs) was ended from outside."""
    running, removed = slot.holder_running()
    return classify.holder_verdict(running, [] if running else slot.outside_events("holder"), removed=removed)


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _one_line(e: BaseException) -> str:
    text = " ".join(str(getattr(e, "explanation", None) or e).split())
    return (text or type(e).__name__)[:300]


def _stage_candidate(candidate_dir: Path, work: Path) -> Path | None:
    """A private, read-only regular-file copy of candidate_dir/train.py (None if it is missing or not a file)."""
    src = candidate_dir / "train.py"
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    dest = work / "train.py"
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f_in, open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    os.chmod(dest, 0o444)
    return dest


def _check_data(data_dir: Path, uid: int) -> None:
    """The mounts must exist and be readable by the trial's uid, or the trial would fail for the user's reason."""
    for rel, is_dir in (("train", True), ("val", True), ("tokenizer", True), ("manifest.json", False)):
        p = data_dir / rel
        if (p.is_dir() if is_dir else p.is_file()) is False or p.is_symlink():
            raise UserError(f"data directory {data_dir} has no {rel}{'/' if is_dir else ''} (or it is a link); "
                            f"run `autoresearch prepare synthetic --out {data_dir}`")
        for q in [p, *(sorted(p.iterdir()) if is_dir else [])]:
            st = q.stat()
            need = (stat.S_IROTH | stat.S_IXOTH) if q.is_dir() else stat.S_IROTH
            if st.st_uid != uid and (st.st_mode & need) != need:
                raise UserError(f"{q} is not readable by the trial user (uid {uid}; mode {stat.filemode(st.st_mode)}); "
                                f"run `chmod -R a+rX {data_dir}`")
