"""The research loop: propose -> check -> commit -> trial -> decide -> ledger + branch. TRUSTED CODE.

Reads top to bottom as the data flow of one run (`Loop.run`):
    open the run     checked first (runner.doctor.before_run: endpoint, engine vs policy, data), then
                     runs/<tag>/ (run.json, lock: runner.runs), the branch autoresearch/<tag>, the ledger; on
                     --resume reconcile the branch with the ledger; the executor removes what a dead run left
                     behind and gets the first trial ready
    baseline         the start commit, trained `baseline_repeats` times (seeds seed, seed+1, ...; side by side
                     when there are several slots): best + noise; the proposer is already at work on the first
                     candidate (it sees no score yet)
    each trial       proposal (mutate / openai; made ahead: runner.proposals) -> patch policy (refused:
                     `rejected`, no container) -> candidate commit on the best, ref refs/autoresearch/<tag>/trials/<n>
                     -> read-only export -> trial on the executor (runner.executor: train, then eval) -> decision
                     against the best at that moment (runner.candidate: confirmation, re-application) -> ledger line
                     (fsynced) -> branch advanced only on keep; `executor.slots` candidates in flight at once
Ordering makes a kill at any point safe: the ledger line is written before the branch moves, a trial without a
ledger line is run again on --resume, and a branch one step behind its ledger is moved forward.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from . import candidate, decision, doctor, runs, signals, usage
from .errors import InfraError, UserError
from .executor import Executor, TrialOutcome, TrialSpec, make as make_executor
from .ledger import Ledger, RunSummary, TrialRecord, baseline_of, best_of, fill, next_id, summarize
from .policy import Policy
from .proposals import Proposals
from .proposers import Context, Proposer, make
from .runs import Events, RunConfig
from .workspace import Workspace, check_tag

MAX_INFRA_IN_A_ROW = 3                   # infra trials in a row that stop the run (the engine is broken)


class Loop:
    """One run of the research loop; `run()` does it. The executor runs the trials (runner.executor: the Docker
    executor unless one is given), the proposer proposes (the run's, from its policy, unless one is given)."""

    def __init__(self, cfg: RunConfig, *, executor: Executor | None = None, proposer: Proposer | None = None,
                 events: Events | None = None):
        self.cfg = cfg
        self.tag = check_tag(cfg.tag)
        self.executor = executor
        self.proposer = proposer
        self.events = events or Events()
        self.ws = Workspace(cfg.repo)
        self.dir = runs.run_dir_of(self.ws.root, self.tag)
        self.ledger = Ledger(self.dir)
        self.lock = threading.RLock()       # the best, the records, the ledger and the branch (runner.candidate)
        self.ended = False

    # =========================================================================== the run, top to bottom
    def run(self) -> RunSummary:
        self.dir.mkdir(parents=True, exist_ok=True)
        with runs.RunLock(self.dir / ".lock", self.tag), contextlib.ExitStack() as stack:
            meta = self._open()                              # run.json + branch (+ reconcile on resume)
            self.executor.remove_leftovers(self.tag)         # what dead runs left: this tag's, any whose lock is free
            stack.callback(self.executor.close)
            self.executor.start(self.policy, image=self.image, data_dir=self.data, run_tag=self.tag,
                                work_dir=self.dir / "slots")  # the next trial is made ready ahead
            records = self.ledger.records()
            self.events.run_started({**meta, "resume": self.cfg.resume, "trials_done": len(records),
                                     "summary": self.summary(records),
                                     "threshold": getattr(baseline_of(records), "threshold", None)})
            self.records, self.best = records, best_of(records)
            baseline_n = next_id(records) if self.best is None else None
            proposals = self._proposals(baseline_n)         # the first proposal is made while the baseline trains
            stack.callback(proposals.close)
            if self.best is None:
                self.best = self._baseline(baseline_n)      # raises when the unchanged train.py fails
                self.records = self.ledger.records()
            self.thresh = decision.threshold(self.policy.decision, baseline_of(self.records).noise_std)
            stopped = self._keep_slots_busy(proposals)
            summary = self.summary(self.records)
            summary.stopped = stopped
            return summary

    # =========================================================================== the candidates, slots kept busy
    def _proposals(self, baseline_n: int | None) -> Proposals:
        """Plan the candidates (the trials a dead runner left unfinished run again first, under their ids; new
        ids follow them and the baseline's, if it is still to run) and start the proposer on its own thread, so
        that proposals are made ahead while trials, the baseline included, train (runner.proposals)."""
        done = {r.trial for r in self.records}
        self.unfinished = sorted((n, c) for n, c in self.ws.trial_refs(self.tag).items()
                                 if n not in done and n != baseline_n)
        self.next_n = max([next_id(self.records), *(n + 1 for n, _ in self.unfinished),
                           *([baseline_n + 1] if baseline_n is not None else [])])
        started = sum(1 for r in self.records if r.kind == "candidate") + len(self.unfinished)
        self.left = None if self.max_trials is None else max(0, self.max_trials - started)
        # an instant proposer (mutate) never keeps a slot waiting: asked on demand, each proposal sees every result
        ahead = 0 if getattr(self.proposer, "instant", False) else self.policy.proposer.ahead
        limit = 0 if self._over_cap({}) else self.left      # a run resumed at its LLM cap asks for nothing
        return Proposals(self.proposer, self._context, ahead=ahead, limit=limit,
                         on_note=self.events.proposer_note).start()

    def _keep_slots_busy(self, proposals: Proposals) -> str:
        """Candidates in flight on every slot of the executor, each on its own thread (runner.candidate), the
        next proposals made ahead (runner.proposals), until max_trials, --hours, --max-tokens or --max-cost; why
        it stopped."""
        slots = max(1, self.executor.slots)
        deadline = time.monotonic() + self.cfg.hours * 3600 if self.cfg.hours else None
        unfinished, left = self.unfinished, self.left
        finished: queue.Queue = queue.Queue()
        in_flight, taken, stopped, infra_in_a_row = 0, 0, "", 0
        taken_usage: dict[int, dict] = {}            # trial id -> its proposal's LLM usage (until it is recorded)
        try:
            while True:
                while in_flight < slots and not stopped:
                    if unfinished:
                        job = (candidate.rerun_candidate, *unfinished.pop(0))
                    elif left is not None and taken >= left:
                        stopped = f"max_trials {self.max_trials} reached"
                    elif deadline is not None and time.monotonic() >= deadline:
                        stopped = f"--hours {self.cfg.hours} spent"
                    elif capped := self._over_cap(taken_usage):
                        stopped = capped
                    else:
                        if not proposals.ready:
                            self.events.phase("proposing", self.proposer.name)   # a slot waits for it
                        t_ask = time.monotonic()
                        proposal, ctx, seconds = proposals.get()
                        waited = time.monotonic() - t_ask
                        taken_usage[ctx.trial_id] = proposal.usage
                        job, taken = (candidate.run_candidate, ctx.trial_id, proposal, ctx, seconds, waited), taken + 1
                    if not stopped:
                        threading.Thread(target=self._work, args=(finished, *job), daemon=True).start()
                        in_flight += 1
                if in_flight == 0:
                    return stopped
                rec, error = signals.get(finished)    # a stop signal is seen within 0.2 s
                in_flight -= 1
                if error is not None:
                    raise error
                infra_in_a_row = infra_in_a_row + 1 if rec.status == "infra" else 0
                if infra_in_a_row >= MAX_INFRA_IN_A_ROW:
                    raise InfraError(f"{infra_in_a_row} trials in a row failed in the sandbox machinery, last: "
                                     f"{rec.reason}; fix the engine (`autoresearch doctor`), then --resume")
        finally:
            proposals.close()
            with self.lock:
                self.ended = True                # a trial still in flight records nothing after this

    def _over_cap(self, taken_usage: dict[int, dict]) -> str:
        """Why the run's LLM caps stop it ("" while under them): the usage in the ledger plus that of the proposals
        taken but not yet recorded. Proposals made ahead and not taken are not counted: up to proposer.ahead
        proposals (and the one being made) can be spent beyond a cap, and their usage is in no record."""
        if self.max_tokens is None and self.max_cost is None:
            return ""
        prices = self.policy.proposer.prices
        if self.max_cost is not None and prices is None:
            raise UserError(f"--max-cost {self.max_cost:g} needs prices, but run {self.tag}'s policy has no "
                            "proposer.prices; add them to the policy, or use --max-tokens")
        with self.lock:
            recorded = {r.trial for r in self.records}
            spent = usage.totals(self.records)
        for n, raw in taken_usage.items():
            if n not in recorded:
                spent = usage.add(spent, raw)
        return usage.cap_reached(spent, prices, max_tokens=self.max_tokens, max_cost=self.max_cost)

    def _work(self, finished: queue.Queue, fn, *args) -> None:
        try:
            finished.put((fn(self, *args), None))
        except BaseException as e:  # noqa: BLE001 - raised on the run's own thread
            finished.put((None, e))

    def _context(self) -> Context:
        """What the proposer sees for the next trial: the best and the ledger now, and the trial's id."""
        with self.lock:
            n, self.next_n = self.next_n, self.next_n + 1
            best, history = self.best, [asdict(r) for r in self.records]
        parent = best.commit if best is not None else self.start      # None: the baseline (of start) is training
        return Context(trial_id=n, seed=self.policy.seed, files=self.ws.read_files(parent, self.allowed),
                       allowed_files=self.allowed, program=self.program, history=history,
                       best_bpb=best.val_bpb if best is not None else None, parent=parent)

    def record(self, rec: TrialRecord, status: str, reason: str) -> TrialRecord:
        """Decide a candidate: first the ledger (fsynced), then the branch on keep. Called holding self.lock."""
        if self.ended:
            raise InfraError(f"run {self.tag} ended while trial {rec.trial} was in flight; it runs again on --resume")
        rec.status, rec.reason, rec.finished_at = status, reason, time.time()
        self.ledger.append(rec)
        if status == decision.KEEP:
            self.ws.advance(self.tag, rec.commit, self.best.commit)
            self.best = rec
        self.records.append(rec)
        self.events.trial_finished(rec, self.summary(self.records))
        return rec

    # =========================================================================== opening and resuming
    def _open(self) -> dict:
        branch = self.ws.rev(self.ws.branch_ref(self.tag))
        if not self.cfg.resume:
            if (self.dir / "run.json").exists() or self.ledger.exists():
                raise UserError(f"run {self.tag} exists in {self.dir}; pass --resume to continue it or choose "
                                "another --tag")
            policy = self.cfg.policy or Policy()
            data = runs.resolve_data_dir(self.cfg.data_dir)
            self._check(policy, data, self.cfg.proposer or policy.proposer.kind)   # before anything is made
            start = runs.start_commit(self.ws, policy, self.tag, self.cfg.commit_changes)
            if not any(p in self.ws.tree(start) for p in policy.patch.allowed_files):
                raise UserError(f"commit {start[:12]} of {self.ws.root} has none of the allowed files "
                                f"({', '.join(policy.patch.allowed_files)}); commit train.py first")
            image = self.cfg.image or policy.image or self.executor.resolve_image(policy)
            if self.proposer is None:   # before the branch exists: a missing API key must not leave one behind
                self.proposer = make(self.cfg.proposer or policy.proposer.kind, policy)
            self.ws.create_branch(self.tag, start)
            meta = runs.new_meta(self.dir, tag=self.tag, repo=self.ws.root, start=start, policy=policy, data=data,
                                 proposer=self.cfg.proposer or policy.proposer.kind,
                                 max_trials=self.cfg.max_trials, image=image, max_tokens=self.cfg.max_tokens,
                                 max_cost=self.cfg.max_cost)
        else:
            opened = time.time()
            meta = runs.resumed_meta(self.dir, self.tag, policy=self.cfg.policy, data_dir=self.cfg.data_dir,
                                     check=self._check,
                                     overrides={"proposer": self.cfg.proposer, "max_trials": self.cfg.max_trials,
                                                "image": self.cfg.image, "max_tokens": self.cfg.max_tokens,
                                                "max_cost": self.cfg.max_cost})
            for change in [c for c in meta.get("policy_changes", []) if c["at"] >= opened]:   # runner.policy_change
                self.events.phase("resume", "policy changed: " + ", ".join(f"{f} {old} -> {new}" for f, (old, new)
                                                                          in change["changes"].items()))
            if self.ledger.repair():
                self.events.phase("resume", "cut a torn last ledger line")
            moved = runs.reconcile(self.ws, self.tag, meta["start_commit"], branch, best_of(self.ledger.records()))
            if moved:
                self.events.phase("resume", f"branch moved to the ledger's best {moved[:12]}")
        self.meta = meta
        self.policy = Policy.model_validate(meta["policy"])
        self.executor = self.executor or make_executor(self.policy.executor.kind, self.policy.executor.address)
        self.data = Path(meta["data_dir"])
        self.max_trials = meta["max_trials"]
        # the LLM caps of the whole run (runner.usage), kept in run.json like max_trials: --resume keeps them
        self.max_tokens, self.max_cost = meta.get("max_tokens"), meta.get("max_cost")
        # fixed when the run started: a resumed run stays on the same image even if the recipe changed since
        self.image = meta["image"] or self.executor.resolve_image(self.policy)
        self.start = meta["start_commit"]
        self.program = runs.program(self.ws, self.start)
        self.allowed = list(self.policy.patch.allowed_files)
        if self.proposer is None:
            self.proposer = make(meta["proposer"], self.policy)
        return meta

    def _check(self, policy: Policy, data: Path, proposer: str) -> None:
        """Before the run makes or changes anything: what would otherwise fail late (runner.doctor.before_run: the
        endpoint of an openai proposer, the engine against the policy, the data), as one line."""
        self.executor = self.executor or make_executor(policy.executor.kind, policy.executor.address)
        doctor.before_run(policy, data, self.proposer.name if self.proposer is not None else proposer, self.executor)

    # =========================================================================== the baseline
    def _baseline(self, n: int) -> TrialRecord:
        self.events.trial_started(n, "baseline")
        t0, wall0 = time.monotonic(), time.time()
        runs.fresh_dir(self.dir / "trials" / str(n))
        self.ws.set_trial_ref(self.tag, n, self.start)
        rec = TrialRecord(trial=n, kind="baseline", status="keep", description="baseline", run=self.tag,
                          commit=self.start, proposer="baseline", seed=self.policy.seed, started_at=wall0,
                          policy_sha256=self.policy.sha256(), data_manifest_sha256=self.meta["data_manifest_sha256"],
                          image=self.image)
        seeds = decision.repeat_seeds(self.policy.seed, self.policy.decision.baseline_repeats)
        subs = ["" if i == 0 else f"repeat-{i}" for i in range(len(seeds))]
        pool = ThreadPoolExecutor(min(len(seeds), max(1, self.executor.slots)))   # side by side on slots
        try:
            futures = [pool.submit(self.trial, n, self.start, seed, sub) for seed, sub in zip(seeds, subs)]
            outcomes = [signals.result(f) for f in futures]       # a stop signal is seen within 0.2 s
        finally:               # an interrupt does not wait for the trials in flight: the executor's close removes them
            pool.shutdown(wait=False, cancel_futures=True)
        main = outcomes[0]
        fill(rec, main)
        rec.repeats = [{"seed": s, "status": o.status, "val_bpb": o.val_bpb, "calibration_s": o.calibration_s,
                        "cpu_share": o.cpu_share} for s, o in zip(seeds, outcomes)]
        rec.noise_std = decision.noise_std([o.val_bpb for o in outcomes if o.status == "ok"])
        rec.threshold = decision.threshold(self.policy.decision, rec.noise_std)
        rec.status = "keep" if main.status == "ok" else main.status
        rec.reason = "the start commit, unchanged" if main.status == "ok" else main.error
        if main.status == "ok" and (short := decision.short_of_steps(self.policy.train.max_steps, rec.num_steps)):
            rec.status, rec.reason = "discard", short
        rec.timings = {"trial_s": round(time.monotonic() - t0, 3)}
        rec.finished_at = time.time()
        self.ledger.append(rec)
        self.events.trial_finished(rec, self.summary(self.ledger.records()))
        if rec.status != "keep":
            raise UserError(f"the baseline (unchanged train.py of {self.start[:12]}) ended {rec.status}: "
                            f"{rec.reason}; see {self.dir / 'trials' / str(n)}; fix it, then --resume")
        return rec

    def trial(self, n: int, commit: str, seed: int, sub: str, every_batch_below: float | None = None) -> TrialOutcome:
        """Run one trial of `commit` with `seed` in runs/<tag>/trials/<n>[/sub] on the executor; every_batch_below:
        the score under which its evaluation probes every batch (None: every batch whatever the score)."""
        work = self.dir / "trials" / str(n)
        if sub:
            work = runs.fresh_dir(work / sub)
        work.mkdir(parents=True, exist_ok=True)
        candidate = self.ws.export(commit, self.allowed, work / "candidate")
        repeats = self.policy.decision.baseline_repeats      # the baseline's runs are numbered for the views
        what = f"seed {seed}" + (f" (baseline repeat {int(sub[7:] or 0) + 1} of {repeats})" if commit == self.start
                                 and repeats > 1 and (sub == "" or sub.startswith("repeat-")) else "")
        self.events.trial_phase(n, "starting", what)
        spec = TrialSpec(run_tag=self.tag, trial_id=f"{n}-{sub}" if sub else str(n), candidate_dir=candidate,
                         data_dir=self.data, policy=self.policy, image=self.image, seed=seed, work_dir=work,
                         every_batch_below=every_batch_below)
        with runs.LogTee(work / "train.log", lambda text: self.events.trial_line(n, text)) as on_line:
            return self.executor.run(spec, on_line,
                                     on_phase=lambda name: self.events.trial_phase(n, name, what))

    # =========================================================================== summaries
    def summary(self, records: list[TrialRecord]) -> RunSummary:
        return summarize(self.tag, self.dir, records, self.start)
