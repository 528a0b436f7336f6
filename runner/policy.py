"""The policy: every limit a trial runs under and every rule the loop decides by, from one YAML file.

Loaded with `yaml.safe_load` into pydantic models with `extra="forbid"`: an unknown key, a wrong type or an
out-of-range value is a one-line `UserError` naming the file and the key. The policy's hash is recorded with
every trial, so a result can always be tied to the rules it ran under.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
_SIZE = re.compile(r"^\d+(\.\d+)?[kmg]?$", re.IGNORECASE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class TrainPhase(_Strict):
    """The train phase's time. `budget_seconds` is what train.py is told it may train; `allowance_seconds` is the
    start-up and export allowance: the seconds beyond the budget a train container may live after its candidate's
    hand-over. The host kills the container at `deadline_seconds` (budget + allowance) after the hand-over, and a
    train phase whose host-measured time exceeds it is `over_budget` (runner.sandbox.classify), so a candidate
    that raises its own budget buys at most the allowance minus the honest start-up and export time. The wall
    clock needs room for a loaded machine (start-up then takes several times longer); the CPU time does not
    (the work is the same), so `cpu_allowance_seconds` bounds the container's cgroup CPU time since the
    hand-over to cpus x budget + that allowance: on an idle machine, where extra seconds buy the most, that is
    the tighter bound. docs/design.md states what each buys a cheater.

    Older policies and run.json files name the deadline `train.timeout_seconds` instead: it still loads, as
    allowance_seconds = timeout_seconds - budget_seconds, so `--resume` of an old run keeps its limits.
    """
    budget_seconds: float = Field(240, gt=0, description="training budget handed to train.py")
    allowance_seconds: float = Field(60, gt=0, description="start-up and export allowance: seconds beyond the "
                                     "budget a train container may live after its candidate hand-over")
    cpu_allowance_seconds: float = Field(20, gt=0, description="CPU seconds beyond limits.cpus x budget_seconds "
                                         "the train container may use after its candidate hand-over")
    max_steps: int | None = Field(None, ge=1, description="fixed step count (reproducible tests); budget still caps")

    @model_validator(mode="before")
    @classmethod
    def _from_timeout(cls, raw):
        """The old key: train.timeout_seconds (the whole deadline) -> allowance_seconds = timeout - budget."""
        if not isinstance(raw, dict) or "timeout_seconds" not in raw:
            return raw
        raw = dict(raw)
        timeout = raw.pop("timeout_seconds")
        if "allowance_seconds" in raw:
            raise ValueError("give train.allowance_seconds or the old train.timeout_seconds, not both")
        budget = raw.get("budget_seconds", cls.model_fields["budget_seconds"].default)
        try:
            allowance = float(timeout) - float(budget)
        except (TypeError, ValueError):
            raise ValueError(f"train.timeout_seconds must be a number, got {timeout!r}") from None
        if allowance <= 0:
            raise ValueError(f"train.timeout_seconds ({timeout}) must be above train.budget_seconds ({budget}): "
                             "start-up and export need time; use train.allowance_seconds instead")
        raw["allowance_seconds"] = allowance
        return raw

    @property
    def deadline_seconds(self) -> float:
        """Seconds from the candidate's hand-over at which the train container is killed: budget + allowance."""
        return self.budget_seconds + self.allowance_seconds


class EvalPhase(_Strict):
    timeout_seconds: float = Field(180, gt=0, description="hard limit on the eval container's whole life")


class Limits(_Strict):
    memory: str = Field("4g", description="mem_limit == memswap_limit (docker size string)")
    cpus: float = Field(2.0, gt=0, description="CPU quota in cores")
    pids: int = Field(256, ge=16, description="pids_limit")
    tmpfs_mb: int = Field(256, ge=16, description="size of the /tmp tmpfs (and of a GPU train container's /compile)")
    output_mb: int = Field(512, ge=1, description="size of the writable output tmpfs/volume")
    shm_mb: int = Field(256, ge=16, description="/dev/shm size (torch dataloaders use it)")
    uid: int = Field(65534, ge=1, description="non-root uid:gid the trial runs as")
    cpuset: str | None = Field(None, pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$",
                               description="pin trials to these cores (cpuset_cpus, e.g. 0-3); with slots > 1 on "
                               "the CPU each slot gets its own share of the cores instead")

    @field_validator("memory")
    @classmethod
    def _size(cls, v: str) -> str:
        if not _SIZE.match(v):
            raise ValueError(f"memory must look like 512m or 4g, got {v!r}")
        return v.lower()


class PatchRules(_Strict):
    allowed_files: list[str] = Field(default_factory=lambda: ["train.py"], min_length=1)
    max_diff_lines: int = Field(400, ge=1, description="added + removed lines")


class DecisionRules(_Strict):
    """The policy's `decision` section: the bar a candidate must clear (runner.decision applies it)."""
    min_delta: float = Field(0.0, ge=0, description="keep only if best - val_bpb > min_delta")
    baseline_repeats: int = Field(1, ge=1, description="baseline runs (different seeds) to measure noise")
    confirm_wins: bool = Field(False, description="re-run an apparent win with another seed before keeping it")
    noise_sigmas: float = Field(2.0, ge=0, description="with repeats: a gain must exceed this many std devs")
    max_speed_drift: float | None = Field(0.10, gt=0, description="a would-be keep that got more compute than the "
                                          "best by more than this fraction (calibration faster, or a higher CPU "
                                          "share) is judged against a re-run of the best instead; None: never")
    max_seconds_over_best: float | None = Field(None, gt=0, description="a would-be keep whose train phase on the "
                                                "host's clock took more than this many seconds longer than the "
                                                "best's is over_budget (a GPU, where no CPU-time bound holds); "
                                                "None: off")


class Prices(_Strict):
    """The policy's `proposer.prices`: what the endpoint charges, in dollars per million tokens (runner.usage)."""
    input_per_million: float = Field(ge=0, allow_inf_nan=False, description="dollars per million prompt tokens")
    output_per_million: float = Field(ge=0, allow_inf_nan=False,
                                      description="dollars per million completion tokens")


class ProposerSettings(_Strict):
    """The policy's `proposer` section: which proposer, and the `openai` one's endpoint and retries. Not to be
    confused with the `Proposer` protocol of runner.proposers, which these settings configure."""
    kind: Literal["mutate", "openai"] = "mutate"
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; None = the client's default")
    model: str = "gpt-4o-mini"
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key")
    timeout_seconds: float = Field(120, gt=0)
    max_retries: int = Field(3, ge=0, description="re-asks when a reply does not parse or apply")
    max_backoff_retries: int = Field(5, ge=0, description="retries on 429 / 5xx / timeouts")
    temperature: float = Field(0.7, ge=0, le=2)
    history: int = Field(10, ge=0, description="recent ledger rows shown to the model")
    ahead: int = Field(1, ge=0, description="proposals made ahead while trials train, so a freed slot never waits "
                       "for the proposer; 0: on demand, each proposal sees every result before it")
    prices: Prices | None = Field(None, description="dollars per million tokens, for the cost in status, the "
                                  "report and run --max-cost; None: cost unknown")


class Executor(_Strict):
    """The policy's `executor` section: what runs the trials (runner.executor.make)."""
    kind: Literal["docker", "ray"] = Field("docker", description="docker: this host's engine; ray: a Ray cluster "
                                           "whose nodes each have a Docker engine (pip install .[ray])")
    address: str | None = Field(None, description="ray: the cluster's address (host:port, or 'auto')")


class Policy(_Strict):
    preset: Literal["tiny", "cpu", "h100"] = "cpu"
    flavour: Literal["cpu", "cuda"] = "cpu"
    image: str | None = Field(None, description="trial image tag; None = the tag `autoresearch build` made")
    gpu: Literal["none", "all"] | list[str] = Field("none", description="'all', or a list of device ids")
    slots: int = Field(1, ge=1, description="trials at once: on the CPU each slot gets its own limits.cpus cores "
                       "(cpuset); with a GPU list, one slot per GPU; on ray, trials in flight")
    seed: int = Field(1337, ge=0)
    train: TrainPhase = TrainPhase()
    eval: EvalPhase = EvalPhase()
    limits: Limits = Limits()
    patch: PatchRules = PatchRules()
    decision: DecisionRules = DecisionRules()
    proposer: ProposerSettings = ProposerSettings()
    executor: Executor = Executor()

    @model_validator(mode="after")
    def _check(self) -> "Policy":
        if self.gpu != "none" and self.flavour != "cuda":
            raise ValueError("gpu is set but flavour is 'cpu': set flavour: cuda to run on a GPU")
        if self.slots > 1 and self.executor.kind == "docker" and self.gpu == "all":
            raise ValueError("slots > 1 with gpu: all; list the GPU ids instead (gpu: [0, 1]): one slot per GPU")
        if isinstance(self.gpu, list) and self.slots not in (1, len(self.gpu)):
            raise ValueError(f"slots {self.slots} with {len(self.gpu)} GPUs listed: one slot per GPU; drop slots")
        return self

    @property
    def slot_count(self) -> int:
        """Trials at once: one per listed GPU, else `slots`."""
        return len(self.gpu) if isinstance(self.gpu, list) else self.slots

    @property
    def wants_gpu(self) -> bool:
        return self.gpu != "none"

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()




def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    return f"{where}: {err['msg']}"


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy file (a path, or a name under policies/ such as 'tiny'). None gives policies/default.yaml."""
    if path is None:
        path = POLICY_DIR / "default.yaml"
    p = Path(path)
    if not p.exists() and not p.suffix and (POLICY_DIR / f"{p}.yaml").exists():
        p = POLICY_DIR / f"{p}.yaml"
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise UserError(f"policy {p} not found; pass a YAML file or one of: "
                        f"{', '.join(sorted(x.stem for x in POLICY_DIR.glob('*.yaml')))}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"policy {p} is not valid YAML{at}; fix the file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"policy {p} must be a YAML mapping of keys, got {type(raw).__name__}")
    try:
        return Policy.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise UserError(f"policy {p}: {_describe(first)}{more}; see policies/default.yaml for the keys") from None
