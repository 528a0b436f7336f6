"""`autoresearch doctor`: everything a run needs, checked one by one, each failure with its fix. TRUSTED CODE.

Checks: the experiment repository (a commit holding the allowed files), the Docker engine and its API, the trial
image, the NVIDIA runtime when the policy wants a GPU (these three from runner.sandbox.preflight), for the ray
executor the cluster (it answers, and its nodes with a Docker engine hold a trial), the prepared data (manifest
present, every file's sha256 verified), and, for the openai proposer, the endpoint (answers /models within a few
seconds, and lists the policy's model when it offers a list).

`before_run` is what `run` checks before it makes anything (a branch, run.json, a container) and on --resume
before it continues: the endpoint (openai proposer only), the engine against the policy (the Docker executor
only), then the data (every file's sha256: the slowest, so last). The first failure is one line: UserError for
what the user fixes, InfraError for an engine that does not answer.
"""
from __future__ import annotations

import re
from pathlib import Path

from trainer.shards import DataError, load_manifest, verify

from .errors import AutoresearchError, UserError
from .policy import Policy
from .sandbox.preflight import PreflightCheck

ENDPOINT_TIMEOUT_S = 5.0
ENDPOINT_REASON_CHARS = 120     # of a connection error's cause, in a check's detail
MODELS_SHOWN = 5                # of the endpoint's model list, when the policy's model is not in it


def check_repo(repo: Path, policy: Policy) -> PreflightCheck:
    from .workspace import Workspace
    try:
        ws = Workspace(repo)
        head = ws.head_commit()
        tree = ws.tree(head)
    except AutoresearchError as e:
        return PreflightCheck("repo", False, str(e), f"create one with `autoresearch init {repo}`")
    missing = [p for p in policy.patch.allowed_files if p not in tree]
    if len(missing) == len(policy.patch.allowed_files):
        return PreflightCheck("repo", False, f"commit {head[:12]} of {ws.root} has none of {', '.join(missing)}",
                     "commit train.py (and program.md) to the experiment repository")
    note = "" if "program.md" in tree else " (no program.md: the LLM gets no research instructions)"
    return PreflightCheck("repo", True, f"{ws.root} at {head[:12]}{note}")


def check_data(data: Path | None) -> PreflightCheck:
    if data is None:
        return PreflightCheck("data", False, "no data directory given", "pass --data DIR (or set AUTORESEARCH_DATA)")
    try:
        manifest = verify(data)
    except DataError as e:
        return PreflightCheck("data", False, str(e), _remake(data))  # a DataError names its own fix; this the command
    floor = manifest.get("bpb_floor")
    return PreflightCheck("data", True, f"{data}: {len(manifest['files'])} files verified ({manifest.get('source')}"
                               + (f", bpb floor {floor:.4f})" if isinstance(floor, (int, float)) else ")")
                               + _older_grammar(data, manifest))


def _remake(data: Path) -> str:
    """The command that makes `data` again, when its manifest still says from what ("" otherwise)."""
    try:
        source = load_manifest(data).get("source")
    except DataError:
        return ""
    if not isinstance(source, str) or not source:
        return ""
    return f"remake it: `autoresearch prepare {source} --out {data} --force` (with the options it was made with)"


def _older_grammar(data: Path, manifest: dict) -> str:
    """A note when synthetic data was made by another grammar version (valid, but not the numbers in the docs)."""
    from trainer.prepare.synthetic import GRAMMAR_VERSION
    params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
    made = params.get("grammar")
    if manifest.get("source") != "synthetic" or made == GRAMMAR_VERSION:
        return ""
    return (f"; note: made by grammar {made}, this version makes {GRAMMAR_VERSION} (to match docs/benchmarks.md: "
            f"autoresearch prepare synthetic --out {data} --force)")


def check_endpoint(policy: Policy) -> PreflightCheck:
    """The openai proposer's endpoint answers (a GET of /models with a short timeout)."""
    import openai

    from .proposers.openai_llm import make_client
    cfg = policy.proposer
    try:
        client = make_client(cfg).with_options(timeout=ENDPOINT_TIMEOUT_S, max_retries=0)
    except UserError as e:
        return PreflightCheck("endpoint", False, str(e))  # it names its own fix
    where = str(client.base_url)
    try:
        models = [m.id for m in client.models.list()]
    except openai.AuthenticationError:
        return PreflightCheck("endpoint", False, f"{where} refused the key in ${cfg.api_key_env} (401)",
                     f"export a valid key in {cfg.api_key_env}")
    except openai.APIStatusError as e:
        return PreflightCheck("endpoint", True, f"{where} answers (HTTP {e.status_code} on /models; the model list is "
                                       "not offered)")
    except openai.APITimeoutError:
        return PreflightCheck("endpoint", False, f"{where} did not answer within {ENDPOINT_TIMEOUT_S:g} s",
                     "start the server or fix proposer.base_url in the policy")
    except openai.APIConnectionError as e:
        return PreflightCheck("endpoint", False, f"{where} did not answer ({_cause(e)})",
                     "start the server or fix proposer.base_url in the policy")
    if models and cfg.model not in models and f"{cfg.model}:latest" not in models:   # Ollama lists "name:latest"
        return PreflightCheck("endpoint", False, f"{where} answers but model {cfg.model!r} is not in its list "
                                        f"(has: {', '.join(map(str, models[:MODELS_SHOWN]))})",
                                        "set proposer.model in the policy to one it has")
    return PreflightCheck("endpoint", True, f"{where} answers; model {cfg.model!r}")


def check_cluster(policy: Policy) -> PreflightCheck:
    """The ray executor's cluster: Ray installed, the address answers, and its nodes with a Docker engine hold at
    least one trial of the policy's size."""
    from .ray_executor import NODE_RESOURCE, RayExecutor, node_capacity, trial_resources
    where = policy.executor.address or "auto"
    try:
        nodes = RayExecutor(policy.executor.address).docker_nodes()
    except UserError as e:
        return PreflightCheck("cluster", False, str(e))  # it names its own fix
    want = trial_resources(policy)
    held = sum(node_capacity(n["Resources"], want) for n in nodes)
    if not held:
        why = f"none of its nodes advertises {NODE_RESOURCE}" if not nodes else \
            f"its {len(nodes)} node(s) with a Docker engine cannot hold one trial ({want['num_cpus']:g} CPUs" + \
            (", 1 GPU" if want.get("num_gpus") else "") + ")"
        start = f"ray start --address HEAD:PORT --resources '{{\"{NODE_RESOURCE}\": 1}}'"
        return PreflightCheck("cluster", False, f"Ray cluster at {where}: {why}",
                              f"start nodes with `{start}` (docs/scaling.md), or lower limits.cpus")
    return PreflightCheck("cluster", True, f"Ray cluster at {where}: {len(nodes)} node(s) with a Docker engine hold "
                                           f"{held} trial(s) at once")


def _cause(e: BaseException) -> str:
    """The innermost cause of a connection error, as a person reads it: "connection refused" rather than the
    client's "Connection error."."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", " ".join(str(e).split()))[:ENDPOINT_REASON_CHARS]
    return (text[:1].lower() + text[1:]) or type(e).__name__


def checks(repo: Path, policy: Policy, data: Path | None, image: str | None, proposer: str) -> list[PreflightCheck]:
    from .sandbox import preflight
    out = [check_repo(repo, policy)]
    engine = preflight.checks(policy, image or policy.image)
    out += engine
    if image is None and policy.image is None and all(c.ok for c in engine if c.name in ("engine", "api")):
        out.append(_built_image(policy))
    if policy.executor.kind == "ray":
        out.append(check_cluster(policy))
    out.append(check_data(data))
    if proposer == "openai":
        out.append(check_endpoint(policy))
    return out


def before_run(policy: Policy, data: Path, proposer: str, executor) -> None:
    """Raise the first check a run would otherwise fail late, as one line (module docstring): the endpoint when
    `proposer` is openai, the engine against the policy when `executor` is the Docker executor, the data."""
    from .sandbox import preflight
    found = [check_endpoint(policy)] if proposer == "openai" else []
    if getattr(executor, "name", "") == "docker":
        found += preflight.checks(policy, None, getattr(executor, "client", None))
    for c in found:
        if not c.ok:
            raise UserError(_line(c)) if c.name == "endpoint" else preflight.error(c)
    c = check_data(data)
    if not c.ok:
        raise UserError(_line(c))


def _line(c: PreflightCheck) -> str:
    return f"{c.name} check failed: {c.detail}" + (f"; {c.fix}" if c.fix else "")


def _built_image(policy: Policy) -> PreflightCheck:
    from .errors import InfraError
    from .sandbox.images import find
    try:
        img = find(policy.flavour)
    except InfraError as e:
        return PreflightCheck("image", False, str(e), "check the engine with `docker info`")
    if img is None:
        return PreflightCheck("image", False, f"no trial image for flavour {policy.flavour} has been built",
                     f"run `autoresearch build --flavour {policy.flavour}`")
    return PreflightCheck("image", True, f"{img.tag} = {img.id[:19]}")
