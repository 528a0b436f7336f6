"""Which policy changes `--resume` accepts, and the record of one. TRUSTED CODE.

A run's trials are compared with one another, so whatever decides what a trial is scored on stays fixed for the
run's whole life: the budget and every other train.* setting (what over_budget means), the preset, flavour, image,
seed, decision rules, patch policy, GPUs and executor (the data is checked by its manifest hash, runner.runs).
What --resume may change:
- `ANY_TIME` fields, at any point: limits that only let a trial run at all (memory, pids, tmpfs, output, shm, uid),
  the evaluation's time limit (a model's score does not depend on it), and the proposer's settings (how proposals
  are asked for: endpoint, model, retries, prices; each trial's record names its proposer and model).
- `COMPUTE` fields, only while the run has no kept baseline: the CPU quota, the cores and the slots decide how much
  compute a trial gets, which under a wall-clock budget is what it is scored on. Before a baseline is kept no
  comparison has been made under the old values (the case of a policy the engine could not honour).
`changes` raises a one-line UserError naming the first field it refuses. An accepted change is recorded by
`record` in run.json's `policy_changes` (time, trials in the ledger then, field: [old, new], the new policy's
sha256); every trial recorded after it carries the new policy_sha256.
"""
from __future__ import annotations

import json
import time

from .errors import UserError
from .policy import Policy

# dotted policy fields (or sections, ending in ".") that --resume may change at any time
ANY_TIME = ("limits.memory", "limits.pids", "limits.tmpfs_mb", "limits.output_mb", "limits.shm_mb", "limits.uid",
            "eval.timeout_seconds", "proposer.")
# fields that set a trial's compute: --resume may change them only while the run has no kept baseline
COMPUTE = ("limits.cpus", "limits.cpuset", "slots")


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(field: str, names: tuple[str, ...]) -> bool:
    return any(field == n or (n.endswith(".") and field.startswith(n)) for n in names)


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def changes(stored: Policy, given: Policy, *, scored: bool, tag: str) -> dict[str, list]:
    """{field: [old, new]} from the run's policy to the one given on --resume; a UserError naming the first field
    that may not change (every field when `scored`: the run has a kept baseline; see the module docstring)."""
    old, new = _flat(stored.model_dump()), _flat(given.model_dump())
    diff = {f: [old.get(f), new.get(f)] for f in sorted(old.keys() | new.keys()) if old.get(f) != new.get(f)}
    allowed = ANY_TIME if scored else ANY_TIME + COMPUTE
    refused = [f for f in diff if not _matches(f, allowed)]
    if not refused:
        return diff
    f, (was, now) = refused[0], diff[refused[0]]
    more = f" (and {len(refused) - 1} more field(s))" if len(refused) > 1 else ""
    if _matches(f, COMPUTE):
        why = (f"changes the compute a trial gets, and the run's baseline was scored with {_show(was)}; resume "
               f"with {f} {_show(was)}, or start a new tag")
    else:
        why = ("changes what a trial is scored on; resume with the run's policy (only resource limits, the eval "
               "timeout and the proposer settings may change), or start a new tag")
    raise UserError(f"run {tag} started under another policy: {f} {_show(was)} -> {_show(now)}{more} {why}")


def record(meta: dict, given: Policy, diff: dict[str, list], trials: int) -> None:
    """Put the accepted policy into run.json's meta, and the change into its `policy_changes` list."""
    meta["policy"], meta["policy_sha256"] = given.model_dump(), given.sha256()
    meta.setdefault("policy_changes", []).append({"at": time.time(), "trials": trials, "changes": diff,
                                                  "policy_sha256": given.sha256()})
