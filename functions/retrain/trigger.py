"""The trigger: turns data events, retrain requests and ticks into exactly one job per batch.

Over ~300 lines (~640) because it is one protocol, a run's life from record to job
(claim, cover the pending objects, admit under slots and cooldown, pin the inputs,
submit, adopt or take over), whose steps pass the run record's generation from one
compare-and-swap to the next. What can stand alone already does: the decisions in
planner.py, slots in slots.py, input manifests in inputs.py, the job's submission in
submission.py, the claim's lease in ledger.py.

Idempotency, step by step (keys in parentheses):
* recording an object (`pending/<pipeline>/<name>@<generation>`): atomic create; a
  duplicate finds it and stops.
* a run (`runs/<pipeline>/<run_id>.json`, run id derived from the batch): atomic create is
  the claim; duplicates read the record instead. A claimed run without a job is adopted
  through the job's `retrain-run` label (a crash after CreateCustomJob), taken over when its
  claim was released or went stale, or retried later while another delivery holds it.
* waiting runs (`open/<pipeline>/<run_id>`) are submitted by ticks, never dropped.
* `guards.max_concurrent_jobs`: a run holds a slot (`slots/<pipeline>/<index>`, atomic
  create, see slots.py) before its job is created, and the job-events function frees it
  when the job ends; cooldown: the run takes the window on `last-submit.json` with a
  compare-and-swap before submitting. Counting active jobs and then submitting let two
  concurrent deliveries both count 0.
* a quiet batch (`batches/<pipeline>.json`): its run id derives from the run that took the
  previous batch, not from the pending objects a tick lists, so ticks that overlap a long
  flush plan the same run and lose its claim; the record moves on once the run's objects
  have left the pending set, by whichever delivery finished removing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from retrain.bundle import Ports
from retrain.config import Pipeline
from retrain.errors import InvalidRequest, TransientError
from retrain.events import Event, MalformedRequest, ObjectFinalized, RetrainRequested, Tick
from retrain.inputs import covered_objects, gone, manifest_text, manifest_uri, parse_manifest
from retrain.jobend import CHAMPION, resource_id
from retrain.jobspec import RUN_LABEL, base_output_directory, label_value
from retrain.ledger import (
    CLAIMED,
    SUBMITTED,
    WAITING,
    LeaseTerms,
    Ledger,
    iso,
    parse_iso,
    plan_from_record,
)
from retrain.logs import Logger
from retrain.notifying import announce_rejection
from retrain.planner import (
    Admit,
    Ignore,
    Record,
    Reject,
    RunPlan,
    Submit,
    Wait,
    admit,
    plan_object,
    plan_quiet_flush,
    plan_request,
    rerun_plan,
)
from retrain.ports import Stored
from retrain.slots import Slots
from retrain.submission import submit_run

CLAIM_LEASE = timedelta(seconds=120)  # a claim older than this without a job is abandoned
# The run claim's lease (see ledger.LeaseTerms): dated by when it was taken or renewed.
RUN_CLAIM = LeaseTerms("claimed_at", CLAIM_LEASE, dated_by_start=True)
CLAIM_RENEWAL = CLAIM_LEASE / 4  # how often a long flush renews its claim
COVER_CHUNK = 5000  # pending records removed between two looks at the claim's age
# How long an instance that found a pipeline's slots all held trusts that: runs of a burst
# arriving meanwhile wait without listing the slots again (a tick always looks).
FULL_MEMO = timedelta(seconds=2)
DUPLICATE_WAIT_S = (0.2, 0.4, 0.8)  # how a duplicate waits for the claimant to finish


@dataclass(frozen=True)
class Outcome:
    """What one delivery did, for logs and tests."""

    action: str  # ignored | recorded | duplicate | submitted | adopted | waiting | flushed
    detail: str = ""
    run_id: str | None = None
    job_name: str | None = None


class Trigger:
    def __init__(
        self,
        ports: Callable[[], Ports],
        log: Logger,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ):
        # The current config's bundle (see bundle.py). Its objects and registry are used
        # on submission only: the input manifest, and the champion to compare with.
        self._ports = ports
        self._log = log
        self._clock = clock
        self._sleep = sleep
        # When each pipeline's slots were last searched for stale holders, and last found
        # all held (see _take_slot).
        self._stale_checked: dict[str, datetime] = {}
        self._found_full: dict[str, datetime] = {}

    def handle(self, event: Event) -> list[Outcome]:
        ports = self._ports()
        if isinstance(event, ObjectFinalized):
            return self._on_object(event, ports)
        if isinstance(event, RetrainRequested | MalformedRequest):
            return [self._on_request(event, ports)]
        if isinstance(event, Tick):
            return self._on_tick(ports)
        reason = getattr(event, "reason", f"{type(event).__name__} is not for the trigger")
        self._log.info("event ignored", event_id=event.event_id, reason=reason)
        return [Outcome("ignored", reason)]

    # data events -----------------------------------------------------------------------
    def _on_object(self, event: ObjectFinalized, ports: Ports) -> list[Outcome]:
        outcomes = []
        log = self._log.bind(event_id=event.event_id, object=event.uri)
        for decision in plan_object(event, ports.config):
            if isinstance(decision, Ignore):
                log.info("object ignored", reason=decision.reason)
                outcomes.append(Outcome("ignored", decision.reason))
            elif isinstance(decision, Record):
                ledger = ports.ledger()
                fresh = ledger.record_pending(
                    decision.pipeline, decision.object_key, event.event_id, self._clock()
                )
                action = "recorded" if fresh else "duplicate"
                log.info(f"object {action}", pipeline=decision.pipeline)
                outcomes.append(Outcome(action, decision.object_key))
            elif isinstance(decision, Submit):
                outcomes.append(self._start(decision.run, ports))
            else:
                outcomes.append(Outcome("ignored", decision.reason))
        return outcomes

    def _on_request(self, event: RetrainRequested | MalformedRequest, ports: Ports) -> Outcome:
        decision = plan_request(event, ports.config)
        if isinstance(decision, Submit) and decision.run.rerun_of:
            decision = self._rerun(decision.run, ports)
        if isinstance(decision, Reject):
            # Permanent: no job, no run record; the channels hear of it, the delivery is acked.
            announce_rejection(event, decision, ports.config, ports.notifiers, ports.claims,
                               self._log)  # fmt: skip
            raise InvalidRequest(
                f"retrain request {event.event_id}: {decision.reason}",
                field=decision.field or "request",
                pipeline=event.pipeline,
            )
        assert isinstance(decision, Submit)
        return self._start(decision.run, ports)

    def _rerun(self, request: RunPlan, ports: Ports) -> Submit | Reject:
        """A rerun on the original run's inputs, or a Reject naming `rerun_of` before any
        job: the original run is unknown, has no manifest, or a generation it pinned is
        gone. A redelivery of a rerun already claimed goes on to the duplicate check."""
        ledger = ports.ledger()
        claimed = ledger.read_run(request.pipeline, request.run_id)
        if claimed is not None:
            return Submit(replace(request, **_lineage(claimed.doc)))
        assert request.rerun_of is not None
        original = ledger.read_run(request.pipeline, request.rerun_of)
        if original is None:
            return Reject(
                f"rerun_of: pipeline {request.pipeline} has no run {request.rerun_of}",
                "rerun_of",
            )
        plan = rerun_plan(request, original.doc)
        if isinstance(plan, Reject):
            return plan
        problem = self._pinned_problem(str(original.doc["data_manifest"]), ports)
        if problem:
            return Reject(f"rerun_of: run {request.rerun_of}: {problem}", "rerun_of")
        return Submit(plan)

    def _pinned_problem(self, manifest: str, ports: Ports) -> str | None:
        """Why the objects a manifest pins cannot be read again, or None."""
        if ports.objects is None:
            return None
        objects = ports.objects()
        text = objects.read_text(manifest)
        if text is None:
            return f"its input manifest {manifest} is gone"
        try:
            pinned = parse_manifest(text, manifest)
        except ValueError as err:
            return f"its input manifest is unreadable: {err}"
        missing = gone(pinned, objects)
        if missing:
            names = ", ".join(str(p) for p in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            return (
                f"pinned input {names}{more} is gone (overwritten or deleted, and not kept "
                "as a noncurrent version)"
            )
        return None

    # ticks -----------------------------------------------------------------------------
    def _on_tick(self, ports: Ports) -> list[Outcome]:
        ledger = ports.ledger()
        self._found_full.clear()  # a tick looks at the slots itself
        outcomes: list[Outcome] = []
        for pipeline in ports.config.pipelines.values():
            if pipeline.trigger == "quiet":
                flushed = self._flush_quiet(pipeline, ports)
                if flushed is not None:
                    outcomes.append(flushed)
            full = False  # once a waiting run found no free slot, the others would too
            for run_id in ledger.open_runs(pipeline.name):
                outcome = self._resume(pipeline, run_id, ports, skip_waiting=full)
                full = full or (
                    outcome.action == "waiting" and "max_concurrent_jobs" in outcome.detail
                )
                outcomes.append(outcome)
        return outcomes

    def _flush_quiet(self, pipeline: Pipeline, ports: Ports) -> Outcome | None:
        """One run per quiet batch, however long its flush takes and however many ticks
        overlap it (see the module docstring); None when nothing is due."""
        ledger = ports.ledger()
        batch, batch_record = ledger.quiet_batch(pipeline.name)  # before listing: see there
        pending = ledger.list_pending(pipeline.name)
        decision = plan_quiet_flush(pipeline, pending, self._clock(), batch)
        if isinstance(decision, Ignore):
            if decision.reason != "nothing pending":
                self._log.info(
                    "quiet batch not ready", pipeline=pipeline.name, reason=decision.reason
                )
            return None
        assert isinstance(decision, Submit)
        run = decision.run
        log = self._log.bind(pipeline=pipeline.name, run_id=run.run_id)
        claimed = ledger.claim_run(run, self._clock())
        if claimed is not None:
            outcome = self._submit_claimed(run, claimed, ports)
        else:
            stored = ledger.read_run(pipeline.name, run.run_id)
            if stored is None:
                raise TransientError(f"run {run.run_id}: record vanished while being read")
            if self._claim_is_live(stored.doc):
                log.info("quiet batch is being flushed by another delivery")
                return Outcome("duplicate", "batch being flushed", run.run_id)
            # The flush that claimed the batch ended or was interrupted: finish removing
            # its objects (deletes are idempotent); a waiting or abandoned run is resumed
            # below, through its open record.
            covered = set(stored.doc.get("objects") or ())
            ledger.drop_pending(
                pipeline.name, [p.object_key for p in pending if p.object_key in covered]
            )
            outcome = Outcome(
                "duplicate", "batch already flushed", run.run_id, stored.doc.get("job_name")
            )
        # Every object of the run left the pending set by this delivery's own hand.
        ledger.close_quiet_batch(pipeline.name, batch_record, run.run_id, self._clock())
        return outcome

    def _claim_is_live(self, record: dict[str, Any]) -> bool:
        return record.get("status") == CLAIMED and RUN_CLAIM.live(record, self._clock())

    # runs ------------------------------------------------------------------------------
    def _start(self, run: RunPlan, ports: Ports) -> Outcome:
        claimed = ports.ledger().claim_run(run, self._clock())
        if claimed is None:
            return self._duplicate(ports.config.pipelines[run.pipeline], run.run_id, ports)
        return self._submit_claimed(run, claimed, ports)

    def _submit_claimed(self, run: RunPlan, claimed: Stored, ports: Ports) -> Outcome:
        ledger = ports.ledger()
        pipeline = ports.config.pipelines[run.pipeline]
        log = self._log.bind(pipeline=run.pipeline, run_id=run.run_id)
        ledger.open(run.pipeline, run.run_id)
        if run.trigger in ("marker", "quiet"):
            covered = self._cover_pending(ledger, run, claimed)
            if covered is None:
                log.warning("claim taken over while the pending objects were being covered")
                return Outcome("duplicate", "claim taken over", run.run_id)
            claimed = covered
        log.info("run claimed", trigger=run.trigger, data_uri=run.data_uri)
        return self._admit_and_submit(pipeline, claimed.doc, claimed.generation, ports)

    def _cover_pending(self, ledger: Ledger, run: RunPlan, claimed: Stored) -> Stored | None:
        """The pending objects a run covers leave the pending set once the run is claimed.
        The run record names them first (its lineage), so that a crash while they are
        being removed loses none: whoever takes the run over removes the rest. Removing
        100,000 records outlasts CLAIM_LEASE, so the claim is renewed as it goes; None
        when another delivery took the claim over meanwhile (it owns the run then)."""
        if run.trigger == "marker":
            folder = run.covers_folder or ""
            pending = sorted(p.object_key for p in ledger.list_pending(run.pipeline, folder))
        else:
            pending = sorted(run.objects)
        objects = sorted(set(pending) | set(run.objects))
        stamp = RUN_CLAIM.stamp(self._clock())
        current = ledger.update_run(
            run.pipeline, run.run_id, claimed, {"objects": objects, **stamp}
        )
        renewed_at = self._clock()
        for start in range(0, len(pending), COVER_CHUNK):
            if current is None:
                return None
            ledger.drop_pending(run.pipeline, pending[start : start + COVER_CHUNK])
            if self._clock() - renewed_at > CLAIM_RENEWAL:
                stamp = RUN_CLAIM.stamp(self._clock())
                current = ledger.update_run(run.pipeline, run.run_id, current, stamp)
                renewed_at = self._clock()
        return current

    def _admit_and_submit(
        self, pipeline: Pipeline, record: dict[str, Any], generation: int, ports: Ports
    ) -> Outcome:
        ledger = ports.ledger()
        run_id = record["run_id"]
        log = self._log.bind(pipeline=pipeline.name, run_id=run_id)
        training = ports.training()
        current = Stored(record, generation, self._clock())
        cooldown = pipeline.cooldown_seconds > 0
        last_at, last_run = ledger.last_submit_of(pipeline.name) if cooldown else (None, None)
        decision = admit(
            pipeline,
            ports.config,
            active_jobs=0,
            # The window this run took itself (before a retried submit) does not hold it back.
            last_submit_at=last_at if last_run != run_id else None,
            now=self._clock(),
        )
        cap = ports.config.guards.max_concurrent_jobs
        slot: int | None = None
        if isinstance(decision, Admit) and cap is not None:
            slot, decision = self._take_slot(pipeline, record, cap, ports)
        if (
            isinstance(decision, Admit)
            and cooldown
            and not ledger.reserve_cooldown(
                pipeline.name,
                run_id,
                self._clock(),
                timedelta(seconds=pipeline.cooldown_seconds),
            )
        ):
            Slots(ledger.store).release(pipeline.name, slot, run_id, self._clock())
            decision = Wait("cooldown: another run of the pipeline has just taken the window")
        if isinstance(decision, Wait):
            if record.get("status") != WAITING or record.get("wait_reason") != decision.reason:
                ledger.update_run(
                    pipeline.name,
                    run_id,
                    current,
                    {"status": WAITING, "wait_reason": decision.reason},
                )
            log.info("run waiting", reason=decision.reason)
            return Outcome("waiting", decision.reason, run_id)
        if slot is not None and record.get("slot") != slot:
            # Named before the job exists: a delivery that adopts the job after a crash,
            # and the job-events function when the job ends, find the run's slot here.
            named = ledger.update_run(pipeline.name, run_id, current, {"slot": slot})
            if named is None:
                self._raise_lost_update(run_id)
            else:
                current = named
        plan = self._pin_inputs(pipeline, plan_from_record(record), record, ports)
        try:
            job, spec = submit_run(training, pipeline, plan, ports.config.defaults.output_uri)
        except TransientError:
            # Release the claim so that the redelivery may take over at once (it looks
            # the job up by label first, in case the failed call did create it).
            ledger.update_run(
                pipeline.name,
                run_id,
                current,
                {"status": CLAIMED, **RUN_CLAIM.released(), "slot": slot},
            )
            raise
        now = self._clock()
        recorded = ledger.update_run(
            pipeline.name,
            run_id,
            current,
            {
                "status": SUBMITTED,
                "job_name": job.name,
                "submitted_at": iso(now),
                "wait_reason": None,
                "slot": slot,  # the job-events function frees it when the job ends
                "data_manifest": plan.data_manifest,
                "champion_model_dir": plan.champion_model_dir,
            },
        )
        if recorded is None:
            # A duplicate that found this job by its label may have recorded it first:
            # then the run is submitted all the same; anything else is a lost update.
            again = ledger.read_run(pipeline.name, run_id)
            if again is None or again.doc.get("job_name") != job.name:
                self._raise_lost_update(run_id)
        if cooldown:
            ledger.set_last_submit(pipeline.name, run_id, now)
        ledger.close(pipeline.name, run_id)
        log.info("job submitted", job_name=job.name, display_name=spec.display_name)
        return Outcome("submitted", spec.display_name, run_id, job.name)

    def _take_slot(
        self, pipeline: Pipeline, record: dict[str, Any], cap: int, ports: Ports
    ) -> tuple[int | None, Admit | Wait]:
        """Hold one of the pipeline's `cap` slots for the run (see slots.py): the one its
        record names if it still holds it (a retried submit), else a free one."""
        slots = Slots(ports.ledger().store)
        run_id = record["run_id"]
        held = record.get("slot")
        if (
            isinstance(held, int)
            and held < cap
            and slots.renew(pipeline.name, held, run_id, self._clock())
        ):
            return held, Admit()
        if self._still_full(pipeline.name):
            return None, self._full(pipeline, cap, ports)
        taken = slots.taken(pipeline.name)
        full = len([i for i in taken if i < cap]) >= cap
        if (
            full
            and self._stale_check_due(pipeline.name)
            and self._free_stale(pipeline, slots, ports)
        ):
            taken = slots.taken(pipeline.name)
        for index in [i for i in range(cap) if i not in taken]:
            if slots.create(pipeline.name, index, run_id, self._clock()):
                return index, Admit()
        self._found_full[pipeline.name] = self._clock()
        return None, self._full(pipeline, cap, ports)

    def _full(self, pipeline: Pipeline, cap: int, ports: Ports) -> Admit | Wait:
        return admit(pipeline, ports.config, active_jobs=cap, last_submit_at=None,
                     now=self._clock())  # fmt: skip

    def _still_full(self, pipeline: str) -> bool:
        """Whether this instance found the pipeline's slots all held within FULL_MEMO. In a
        burst into a full pipeline every event would otherwise list the slots, once or
        twice: two list requests per event, and a listing costs more the more objects the
        state bucket holds on the local emulator. A slot freed meanwhile is taken by the
        next event after FULL_MEMO or by the next tick, whichever comes first."""
        found = self._found_full.get(pipeline)
        return found is not None and self._clock() - found < FULL_MEMO

    def _stale_check_due(self, pipeline: str) -> bool:
        """Searching a full pipeline's slots for stale holders reads every slot, its run
        and its job: with long jobs, every event of a burst that finds the pipeline full
        would pay that. A stale slot is rare (a claimant that crashed), so once per
        CLAIM_RENEWAL per instance finds it in time."""
        now = self._clock()
        last = self._stale_checked.get(pipeline)
        if last is not None and now - last < CLAIM_RENEWAL:
            return False
        self._stale_checked[pipeline] = now
        return True

    def _free_stale(self, pipeline: Pipeline, slots: Slots, ports: Ports) -> bool:
        """Free the slots claimed longer ago than the run claim's lease whose run never got
        a job (the claimant crashed before CreateCustomJob), or whose submitted run records
        another slot (it crashed between a claim and its record). A slot whose job exists
        is freed by the job-events function when the job ends."""
        freed = False
        training = ports.training()
        ledger = ports.ledger()
        # Only slots not written for a lease are read: a full pipeline costs one listing.
        for holder in slots.holders(pipeline.name, written_before=self._clock() - CLAIM_LEASE):
            claimed_at = holder.claimed_at
            if claimed_at is not None and self._clock() - claimed_at < CLAIM_LEASE:
                continue
            if holder.run_id and training.find({RUN_LABEL: label_value(holder.run_id)}):
                run = ledger.read_run(pipeline.name, holder.run_id)
                recorded = run.doc.get("slot") if run else None
                if run is None or run.doc.get("status") != SUBMITTED or recorded is None:
                    continue
                if recorded == holder.index:
                    continue
            if slots.free(pipeline.name, holder, self._clock()):
                self._log.warning(
                    "freed a concurrency slot whose run holds no job on it",
                    pipeline=pipeline.name,
                    run_id=holder.run_id,
                    slot=holder.index,
                )
                freed = True
        return freed

    def _pin_inputs(
        self, pipeline: Pipeline, plan: RunPlan, record: dict[str, Any], ports: Ports
    ) -> RunPlan:
        """The plan with its inputs pinned: the manifest written (once: a retry finds it and
        keeps it) and the champion's model directory, when the pipeline has a champion."""
        if plan.data_manifest is None and ports.objects is not None:
            objects = ports.objects()
            base = base_output_directory(
                ports.config.defaults.output_uri, pipeline.name, plan.run_id
            )
            uri = manifest_uri(base)
            if objects.read_text(uri) is None:
                objects.create_text(uri, self._manifest(pipeline, plan, record, ports))
            plan = replace(plan, data_manifest=uri)
        deploy = pipeline.deploy
        if plan.champion_model_dir is None and ports.registry is not None and deploy:
            champion = ports.registry().by_alias(resource_id(deploy.model), CHAMPION)
            if champion is not None and champion.artifact_uri:
                plan = replace(plan, champion_model_dir=champion.artifact_uri)
        return plan

    def _manifest(
        self, pipeline: Pipeline, plan: RunPlan, record: dict[str, Any], ports: Ports
    ) -> str:
        assert ports.objects is not None
        objects = ports.objects()
        if plan.rerun_of:
            original = ports.ledger().read_run(pipeline.name, plan.rerun_of)
            source = original.doc.get("data_manifest") if original else None
            text = objects.read_text(str(source)) if source else None
            if text is None:
                # Checked before the run was claimed; gone since: try again later.
                raise TransientError(f"run {plan.rerun_of}: input manifest {source} unreadable")
            return text
        # A window covers what existed when the run was created, so that a retry lists
        # the same objects.
        cutoff = parse_iso(record.get("created_at")) or self._clock()
        return manifest_text(covered_objects(pipeline, plan, objects, cutoff))

    @staticmethod
    def _raise_lost_update(run_id: str) -> Any:
        raise TransientError(f"run {run_id}: record changed while its job was being submitted")

    def _duplicate(self, pipeline: Pipeline, run_id: str, ports: Ports) -> Outcome:
        """Another delivery claimed this run. Finish its work if it was abandoned."""
        ledger = ports.ledger()
        log = self._log.bind(pipeline=pipeline.name, run_id=run_id)
        stored = ledger.read_run(pipeline.name, run_id)
        for delay in DUPLICATE_WAIT_S:
            if (
                stored is None
                or stored.doc.get("status") != CLAIMED
                or not stored.doc.get("claimed_at")
            ):
                break
            self._sleep(delay)
            stored = ledger.read_run(pipeline.name, run_id)
        if stored is None:
            raise TransientError(f"run {run_id}: record vanished while being read")
        status = stored.doc.get("status")
        if status == SUBMITTED:
            log.info(
                "duplicate delivery: job already submitted", job_name=stored.doc.get("job_name")
            )
            return Outcome("duplicate", "already submitted", run_id, stored.doc.get("job_name"))
        if status == WAITING:
            log.info("duplicate delivery: run is waiting", reason=stored.doc.get("wait_reason"))
            return Outcome("duplicate", "waiting", run_id)
        return self._recover(pipeline, stored, ports)

    def _resume(
        self, pipeline: Pipeline, run_id: str, ports: Ports, skip_waiting: bool = False
    ) -> Outcome:
        ledger = ports.ledger()
        stored = ledger.read_run(pipeline.name, run_id)
        if stored is None or stored.doc.get("status") == SUBMITTED:
            ledger.close(pipeline.name, run_id)
            return Outcome("duplicate", "already submitted", run_id)
        if stored.doc.get("status") == WAITING:
            if skip_waiting:
                return Outcome("waiting", str(stored.doc.get("wait_reason") or ""), run_id)
            # Ticks overlap (a slow one, a redelivered one): the one that takes the waiting
            # run's claim submits it, the others leave it. Without the claim two ticks
            # both submitted it.
            taken = ledger.update_run(
                pipeline.name, run_id, stored, {"status": CLAIMED, **RUN_CLAIM.stamp(self._clock())}
            )
            if taken is None:
                return Outcome("duplicate", "resumed by another delivery", run_id)
            return self._admit_and_submit(pipeline, taken.doc, taken.generation, ports)
        try:
            return self._recover(pipeline, stored, ports)
        except TransientError as err:
            return Outcome("waiting", str(err), run_id)

    def _recover(self, pipeline: Pipeline, stored: Any, ports: Ports) -> Outcome:
        """A claimed run without a recorded job: adopt the job if it exists, take over a
        released or stale claim, or ask for a retry while the claimant may still work."""
        ledger = ports.ledger()
        run_id = stored.doc["run_id"]
        log = self._log.bind(pipeline=pipeline.name, run_id=run_id)
        jobs = ports.training().find({RUN_LABEL: label_value(run_id)})
        if jobs:
            job = sorted(jobs, key=lambda j: j.name)[0]
            # The slot the interrupted delivery claimed, for the job-events function to free.
            slot = stored.doc.get("slot")
            if slot is None:
                slot = Slots(ledger.store).held_by(pipeline.name, run_id)
            ledger.update_run(
                pipeline.name,
                run_id,
                stored,
                {
                    "status": SUBMITTED,
                    "job_name": job.name,
                    "submitted_at": iso(self._clock()),
                    "slot": slot,
                    "wait_reason": None,
                    # What the job was given, so that the run can be rerun and judged.
                    **_pinned_inputs(job.args),
                },
            )
            if pipeline.cooldown_seconds:
                ledger.set_last_submit(pipeline.name, run_id, self._clock())
            ledger.close(pipeline.name, run_id)
            log.warning("adopted job created by an interrupted delivery", job_name=job.name)
            return Outcome("adopted", "found by label", run_id, job.name)
        taken = ledger.take_over_run(pipeline.name, run_id, stored, RUN_CLAIM, self._clock())
        log.warning("taking over an abandoned claim")
        if taken.doc.get("slot") is None and ports.config.guards.max_concurrent_jobs:
            # The claimant may have died between taking a slot and naming it in the run
            # record: the run holds that slot still, and must not take a second one.
            held = Slots(ledger.store).held_by(pipeline.name, run_id)
            if held is not None:
                named = ledger.update_run(pipeline.name, run_id, taken, {"slot": held})
                if named is None:
                    return Outcome("duplicate", "claim taken over", run_id)
                taken = named
        if taken.doc.get("trigger") in ("marker", "quiet"):
            # The claimant may have died before or while covering the batch: cover it
            # (again), so that the run names every object and no later batch takes one.
            covered = self._cover_pending(ledger, plan_from_record(taken.doc), taken)
            if covered is None:
                return Outcome("duplicate", "claim taken over", run_id)
            taken = covered
        return self._admit_and_submit(pipeline, taken.doc, taken.generation, ports)


def _pinned_inputs(args: tuple[str, ...]) -> dict[str, str | None]:
    """The pinned inputs a job was given (see jobspec.py), from its args."""
    flags = {"--data-manifest=": "data_manifest", "--champion-model-dir=": "champion_model_dir"}
    found: dict[str, str | None] = dict.fromkeys(flags.values())
    for arg in args:
        for flag, key in flags.items():
            if arg.startswith(flag):
                found[key] = arg[len(flag) :]
    return found


def _lineage(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a claimed rerun's record that its plan must carry again."""
    return {
        "data_uri": record.get("data_uri"),
        "hyperparameters": dict(record.get("hyperparameters") or {}),
        "objects": tuple(record.get("objects") or ()),
    }
