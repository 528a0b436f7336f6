"""Reproduce a trial: run a ledger trial again from its commit, seed and image digest. TRUSTED CODE.

`autoresearch reproduce N` exports the trial's commit (read-only, as the loop does), runs it with the seed and
the image id (sha256:...) the ledger recorded, on the run's own policy and data (refused if the data manifest
changed), under runs/<tag>/reproduce/<N>-<time>/. The ledger is never written: a reproduction is a check, not
a trial of the run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from trainer.shards import manifest_sha256

from .errors import UserError
from .ledger import Ledger
from .executor import Executor, TrialOutcome, TrialSpec, make
from .policy import Policy
from .runs import existing_run_dir, resolve_data_dir
from .workspace import Workspace


def reproduce(repo: Path, tag: str, trial_id: int, *, executor: Executor | None = None,
              on_line: Callable[[str], None] | None = None) -> tuple:
    """Returns (the ledger record, the new TrialOutcome, the run's policy). on_line hears the train log's lines."""
    ws = Workspace(repo)
    run_dir = existing_run_dir(ws.root, tag)
    meta = json.loads((run_dir / "run.json").read_text())
    recs = [r for r in Ledger(run_dir).records() if r.trial == trial_id]
    if not recs:
        raise UserError(f"run {tag} has no trial {trial_id} in its ledger; `autoresearch status --tag {tag}` "
                        "lists them")
    rec = recs[-1]
    if rec.commit is None:
        raise UserError(f"trial {trial_id} was {rec.status} ({rec.reason}); it never ran, so there is nothing "
                        "to reproduce")
    policy = Policy.model_validate(meta["policy"])
    data = resolve_data_dir(meta["data_dir"])
    if manifest_sha256(data) != rec.data_manifest_sha256:
        raise UserError(f"the data in {data} is not the data trial {trial_id} ran on (manifest hash differs); "
                        "prepare the same data again or point run.json's data_dir at it")
    work = run_dir / "reproduce" / f"{trial_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    allowed = list(policy.patch.allowed_files)
    candidate = ws.export(rec.commit, allowed, work / "candidate")
    spec = TrialSpec(run_tag=f"{tag}-reproduce", trial_id=str(trial_id), candidate_dir=candidate, data_dir=data,
                     policy=policy, image=rec.image_digest or rec.image, seed=rec.seed, work_dir=work)
    own = executor is None
    executor = executor or make(policy.executor.kind, policy.executor.address)
    try:
        outcome: TrialOutcome = executor.run(spec, on_line)
    finally:
        if own:
            executor.close()
    return rec, outcome, policy
