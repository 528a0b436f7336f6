"""Outcome classification: how each container ended -> one trial status and a one-line reason. TRUSTED CODE.

Pure functions, no engine calls. Statuses: ok, crash, timeout, oom, export_failed, violation, infra.
`infra` means the machinery failed (engine, image, evaluator that could not run) and is never blamed on the
candidate; every other non-ok status is the candidate's.

train phase: killed at the hard timeout -> timeout; OOMKilled -> oom; exit 86 (the harness's EXPORT_FAILED) ->
export_failed; any other non-zero exit -> crash; exit 0 but no usable model.pt2 -> export_failed.
eval phase (trusted code on the candidate's exported model): timeout -> timeout; OOMKilled -> oom; killed by a
signal -> crash (the model crashed the loader); any other non-zero exit -> infra (the evaluator exits non-zero
only when it cannot run: missing data, a broken image); a result.json that fails validation -> infra; result
status invalid_model -> export_failed; violation -> violation; ok -> ok.
"""
from __future__ import annotations

from dataclasses import dataclass

EXPORT_FAILED = 86          # trainer.harness.EXPORT_FAILED (the image's harness exits with it)
STATUSES = ("ok", "crash", "timeout", "oom", "export_failed", "violation", "infra")


@dataclass(frozen=True)
class Verdict:
    status: str
    error: str = ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def train_verdict(exit, *, timeout_s: float, memory: str, log_tail: str = "", export_error: str = "") -> Verdict | None:
    """None when train.py ended with exit 0 (the model still has to be fetched and checked)."""
    if exit.timed_out:
        return Verdict("timeout", f"train.py ran past the hard timeout of {timeout_s:g} s and was killed; "
                                  "keep training inside the budget (run.progress) and export promptly")
    if exit.oom_killed:
        return Verdict("oom", f"train.py exceeded the memory limit of {memory} and was killed (OOM); "
                              "use a smaller model or batch")
    if exit.engine_error:
        return Verdict("infra", f"the engine could not run the train container: {exit.engine_error}")
    if exit.exit_code == EXPORT_FAILED:
        why = _last_line(export_error) if export_error.strip() else _last_line(log_tail)
        return Verdict("export_failed", f"train.py could not export the model (exit 86): {why}")
    if exit.exit_code != 0:
        return Verdict("crash", f"train.py exited with code {exit.exit_code}: {_last_line(log_tail)}")
    return None


def eval_verdict(exit, *, timeout_s: float, memory: str, log_tail: str = "", result: dict | None = None,
                 result_error: str = "") -> Verdict:
    if exit.timed_out:
        return Verdict("timeout", f"evaluating the exported model ran past {timeout_s:g} s and was killed")
    if exit.oom_killed:
        return Verdict("oom", f"evaluating the exported model exceeded the memory limit of {memory} (OOM)")
    if exit.engine_error:
        return Verdict("infra", f"the engine could not run the eval container: {exit.engine_error}")
    if exit.exit_code is not None and exit.exit_code >= 128:
        return Verdict("crash", f"the evaluator died from signal {exit.exit_code - 128} on the exported model: "
                                f"{_last_line(log_tail)}")
    if exit.exit_code != 0:
        return Verdict("infra", f"the evaluator could not run (exit {exit.exit_code}): {_last_line(log_tail)}; "
                                "check the data directory and rebuild the image")
    if result_error or result is None:
        return Verdict("infra", f"result.json rejected: {result_error or 'missing'}")
    status = result["status"]
    reason = str(result.get("error") or result.get("reason") or "").strip()[:300]
    if status == "ok":
        return Verdict("ok")
    if status == "invalid_model":
        return Verdict("export_failed", f"the exported model is invalid: {reason or 'see result.json'}")
    return Verdict("violation", f"the model failed a fairness probe: {reason or 'see result.json'}")
