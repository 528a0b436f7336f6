"""`autoresearch doctor`: everything a run needs, checked one by one, each failure with its fix. TRUSTED CODE.

Checks: the experiment repository (a commit holding the allowed files), the Docker engine and its API, the
trial image, the NVIDIA runtime when the policy wants a GPU (these three from runner.sandbox.preflight), the
prepared data (manifest present, every file's sha256 verified), and, for the openai proposer, the endpoint
(answers /models within a few seconds).
"""
from __future__ import annotations

from pathlib import Path

from trainer.shards import DataError, verify

from .errors import AutoresearchError
from .policy import Policy
from .sandbox.preflight import PreflightCheck

ENDPOINT_TIMEOUT_S = 5.0


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
        return PreflightCheck("data", False, str(e))  # a DataError names its own fix
    floor = manifest.get("bpb_floor")
    return PreflightCheck("data", True, f"{data}: {len(manifest['files'])} files verified ({manifest.get('source')}"
                               + (f", bpb floor {floor:.4f})" if isinstance(floor, (int, float)) else ")")
                               + _older_grammar(data, manifest))


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

    from .errors import UserError
    from .proposers.openai_llm import make_client
    cfg = policy.proposer
    try:
        client = make_client(cfg).with_options(timeout=ENDPOINT_TIMEOUT_S, max_retries=0)
    except UserError as e:
        return PreflightCheck("endpoint", False, str(e), f"export {cfg.api_key_env}=... or set proposer.base_url")
    where = str(client.base_url)
    try:
        models = [m.id for m in client.models.list()]
    except openai.AuthenticationError:
        return PreflightCheck("endpoint", False, f"{where} refused the key in ${cfg.api_key_env} (401)",
                     f"export a valid key in {cfg.api_key_env}")
    except openai.APIStatusError as e:
        return PreflightCheck("endpoint", True, f"{where} answers (HTTP {e.status_code} on /models; the model list is "
                                       "not offered)")
    except openai.APIConnectionError as e:
        return PreflightCheck("endpoint", False, f"{where} did not answer: {' '.join(str(e).split())[:120]}",
                     "start the server or fix proposer.base_url in the policy")
    if models and cfg.model not in models:
        return PreflightCheck("endpoint", False, f"{where} answers but does not serve model {cfg.model!r} "
                                        f"(has: {', '.join(models[:5])})", "set proposer.model in the policy")
    return PreflightCheck("endpoint", True, f"{where} answers; model {cfg.model!r}")


def checks(repo: Path, policy: Policy, data: Path | None, image: str | None, proposer: str) -> list[PreflightCheck]:
    from .sandbox import preflight
    out = [check_repo(repo, policy)]
    engine = preflight.checks(policy, image or policy.image)
    out += engine
    if image is None and policy.image is None and all(c.ok for c in engine):
        out.append(_built_image(policy))
    out.append(check_data(data))
    if proposer == "openai":
        out.append(check_endpoint(policy))
    return out


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
