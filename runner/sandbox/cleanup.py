"""Cleanup: remove a trial's containers and volumes, and leftovers of earlier runs found by label. TRUSTED CODE.

Every container and volume a trial creates carries `autoresearch.run=<run tag>` and `autoresearch.trial=<id>`.
Removal is forced (a running container is killed first) and quiet about things already gone; it never touches
anything without those labels.
"""
from __future__ import annotations

from .spec import LABEL_RUN, LABEL_TRIAL


def _filters(run_tag: str | None, trial_id: str | None) -> dict:
    labels = [f"{LABEL_RUN}={run_tag}" if run_tag is not None else LABEL_RUN]
    if trial_id is not None:
        labels.append(f"{LABEL_TRIAL}={trial_id}")
    return {"label": labels}


def remove_containers(containers) -> list[str]:
    """Force-remove each container (kill + remove + its anonymous volumes); returns the errors, if any."""
    import docker.errors
    errors = []
    for c in containers:
        if c is None:
            continue
        try:
            c.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in str(e):
                errors.append(f"container {getattr(c, 'name', c)}: {e.explanation or e}")
    return errors


def remove_volumes(client, names) -> list[str]:
    import docker.errors
    errors = []
    for name in names:
        if not name:
            continue
        try:
            client.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            errors.append(f"volume {name}: {e.explanation or e}")
    return errors


def leftovers(run_tag: str | None = None, trial_id: str | None = None, client=None) -> tuple[list, list[str]]:
    """(containers, volume names) labelled for this run (and trial); run_tag=None: every autoresearch run."""
    if client is None:
        from .preflight import connect
        client = connect()
    import docker.errors
    flt = _filters(run_tag, trial_id)
    containers = []
    for row in client.api.containers(all=True, filters=flt):
        try:
            containers.append(client.containers.get(row["Id"]))
        except docker.errors.NotFound:
            pass                                   # removed since it was listed (a slot's background removal)
    volumes = [v["Name"] for v in (client.api.volumes(filters=flt).get("Volumes") or [])]
    return containers, volumes


def remove_leftovers(run_tag: str | None = None, trial_id: str | None = None, client=None) -> int:
    """Remove what an earlier (crashed or killed) run left; returns how many things were removed.

    Call it with the run's own tag at start-up and on --resume. run_tag=None removes every autoresearch
    container on the engine, including those of runs still going: only for an explicit user clean-up."""
    if client is None:
        from .preflight import connect
        client = connect()
    containers, volumes = leftovers(run_tag, trial_id, client)
    remove_containers(containers)
    remove_volumes(client, volumes)
    return len(containers) + len(volumes)
