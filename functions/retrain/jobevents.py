"""The job-events function: a training job ended, so deploy the good model or tell people
what went wrong. This module takes the event in, finds the job and routes its end; the
parts do the work and return what they did:

    deployer.py   succeeded: gate, register, deploy, smoke test, roll back or promote
    failures.py   failed or cancelled: the report with the log tail; capacity fallback
    ticks.py      reconcile lost job ends, promote canaries
    notifying.py  each notification sent exactly once per channel

The event only says that a job *may* have ended; its state always comes from
GetCustomJob. Jobs without the product's labels, and jobs that are not terminal, are
ignored.

Idempotency, step by step (keys in parentheses, see ledger.py):
* handling (`handled/<pipeline>/<job_id>.json`): the ledger's lease (`take_lease`): its
  atomic create is the claim and the duplicate check in one request: a record at step
  "done" makes every later delivery a duplicate; while the lease is fresh a duplicate
  raises TransientError (it is redelivered and then finds the job done); an expired lease
  is taken over with compare-and-swap.
* a handled job end (`done/<pipeline>/<job_id>`): what a tick's reconcile lists to find the
  ends nobody handled.
* every step checks the world first, so a takeover repeats nothing (see deployer.py).
* notifications (`notified/<pipeline>/<run_id>/<kind>/<channel>`): created before sending,
  removed again when sending failed transiently, so each is sent exactly once per channel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from retrain import notify
from retrain import trials as tuning_trials
from retrain.bundle import Lazy, Ports
from retrain.config import Config, Pipeline
from retrain.deployer import Deployer
from retrain.errors import ConfigError, InvalidEvent, PermanentError, TransientError
from retrain.events import Event, JobEnded, Tick, Unhandled
from retrain.failures import FailureReports, fallback_attempt, is_stockout
from retrain.heartbeat import Heartbeat
from retrain.jobend import CANCELLED, CHAMPION, SUCCEEDED, Handled, JobEnd, Outcome, resource_id
from retrain.jobspec import PIPELINE_LABEL, RUN_LABEL, label_value
from retrain.ledger import Lease, LeaseTerms, Ledger, iso
from retrain.logs import Logger
from retrain.notifying import Announcer
from retrain.ports import JobInfo, JobNotFound, job_name
from retrain.rollout import Rollout
from retrain.slots import Slots
from retrain.ticks import Ticks

# Names other modules and tests know this function by.
__all__ = ["CHAMPION", "HEARTBEAT_S", "LEASE", "JobEnded", "JobEvents", "Outcome",
           "is_stockout", "resource_id"]  # fmt: skip

# How long one delivery holds a job end without a sign of life: a heartbeat renews it every
# HEARTBEAT_S while the work goes on (a deploy can take many minutes), so a crashed
# delivery's job end is taken over within a minute and a slow one keeps its own.
LEASE = timedelta(seconds=45)
HEARTBEAT_S = 15.0
T = TypeVar("T")
JOB_END_LEASE = LeaseTerms("lease_until", LEASE)  # dated by when it runs out


class JobEvents:
    def __init__(
        self,
        ports: Callable[[], Ports],
        log: Logger,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self._ports = ports  # the current config's bundle (see bundle.py)
        self._heartbeat = Heartbeat(heartbeat_s)
        self._log = log
        self._clock = clock
        self._sleep = sleep

    def handle(self, event: Event) -> list[Outcome]:
        if isinstance(event, Unhandled):
            self._log.info("event ignored", event_id=event.event_id, reason=event.reason)
            return [Outcome("ignored", event.reason)]
        if not isinstance(event, JobEnded | Tick):
            # A data event or a retrain request sent to the job-events topic by mistake.
            raise InvalidEvent(
                f"{type(event).__name__} {event.event_id} is not a job event: "
                "the job-events function takes job log entries, incidents and ticks"
            )
        ports = self._ports()
        if isinstance(event, Tick):
            return self._ticks(ports, event.event_id).run(event.event_id)
        job = self._read_job(ports, event.job_id)
        return [self._on_job(ports, job, event.event_id)]

    def _ticks(self, ports: Ports, event_id: str) -> Ticks:
        return Ticks(
            ports.config,
            ports.training(),
            ports.claims(),
            lambda: self._rollout(ports),
            _announcer(ports, self._clock),
            lambda job: self._on_job(ports, job, event_id),
            self._log,
            self._clock,
        )

    def _read_job(self, ports: Ports, job_id: str) -> JobInfo:
        """The job a log entry names: its id alone does not say which kind it is, so a
        CustomJob (the usual case) is looked up first, then a HyperparameterTuningJob."""
        training = ports.training()
        project, region = ports.project(), ports.config.defaults.region
        custom = job_name(project, region, job_id)
        try:
            return training.get(custom)
        except JobNotFound:
            pass
        try:
            return training.get(job_name(project, region, job_id, tuning=True))
        except JobNotFound as err:
            raise JobNotFound(
                f"{custom} not found (nor a HyperparameterTuningJob with id {job_id})"
            ) from err

    # one job end -----------------------------------------------------------------------
    def _on_job(self, ports: Ports, job: JobInfo, event_id: str) -> Outcome:
        config = ports.config
        log = self._log.bind(event_id=event_id, job_name=job.name)
        pipeline = _pipeline_of(config, job)
        run_id = job.labels.get(RUN_LABEL)
        if pipeline is None or not run_id:
            reason = "not a job of this product's pipelines (no matching retrain labels)"
            log.info("job ignored", reason=reason, labels=dict(job.labels))
            return Outcome("ignored", reason, job_name=job.name)
        log = log.bind(pipeline=pipeline.name, run_id=run_id)
        if not job.terminal:
            log.info("job ignored", reason=f"job is {job.state}")
            return Outcome("ignored", f"job is {job.state}", run_id, job.name)
        if pipeline.tuning and not job.is_tuning and self._is_trial(ports, pipeline, run_id):
            reason = "a trial's CustomJob: the run ends with its HyperparameterTuningJob"
            log.info("job ignored", reason=reason)
            return Outcome("ignored", reason, run_id, job.name)
        jobs = ports.claims()
        # The lease's atomic create is also the duplicate check: a done record stops it.
        claim = {"job": job.name, "run_id": run_id, "state": job.state, "step": "claimed",
                 "claimed_at": iso(self._clock())}  # fmt: skip
        lease = jobs.lease_handling(
            pipeline.name,
            job.job_id,
            claim,
            JOB_END_LEASE,
            self._clock,
            takeover={"state": job.state},
        )
        if lease is None:
            log.info("duplicate delivery: job end already handled")
            return Outcome("duplicate", "already handled", run_id, job.name)
        record = ports.ledger().read_run(pipeline.name, run_id)
        # A tuning job's model is its best trial's.
        trial = tuning_trials.best(job) if job.state == SUCCEEDED and job.is_tuning else None
        end = JobEnd(config, pipeline, job, run_id, record, log, trial)
        if record is None or fallback_attempt(end) is None:
            # The job's GPUs are free: so is its run's concurrency slot (see slots.py).
            # Before "done", so that a crash in between leaves it to the redelivery.
            slot = record.doc.get("slot") if record else None
            if Slots(jobs.store).release(pipeline.name, slot, run_id, self._clock()):
                log.info("concurrency slot released", slot=slot)
        renew_failed = lambda err: log.warning("lease not renewed", error=str(err))  # noqa: E731
        with self._heartbeat.keep(lambda: lease.renew(renew_failed)):
            try:
                announcer = _announcer(ports, self._clock)
                handled = self._dispatch(ports, end, lease, announcer)
                # The run record holds the outcome before anyone hears of it, so that
                # `retrain runs` already shows what a notification announces.
                self._record_outcome(ports.ledger(), end, handled)
                if handled.notification is not None:
                    announcer.announce(pipeline, handled.notification, log)
            except (TransientError, ConfigError):
                lease.release()  # so that the redelivery may take over at once
                raise
            except PermanentError as err:
                # Kept leased: a tick retries after the lease, not in a storm.
                lease.step({"error": str(err)}, strict=False)
                raise
        outcome = handled.outcome
        # The done marker first: a crash between the two leaves a lease that the
        # redelivery takes over and finishes; the other way round, every later delivery
        # saw "done" and no one wrote the marker, so each tick reconciled the job again.
        jobs.mark_done(pipeline.name, job.job_id, outcome.action)
        lease.finish({"step": "done", "outcome": outcome.action, "error": None})
        log.info(f"job end handled: {outcome.action}", detail=outcome.detail)
        return outcome

    def _is_trial(self, ports: Ports, pipeline: Pipeline, run_id: str) -> bool:
        """Whether a CustomJob carrying a run's labels is a trial of that run's tuning job
        (should Vertex copy the labels onto trials): the run record names the tuning job."""
        stored = ports.ledger().read_run(pipeline.name, run_id)
        recorded = (stored.doc.get("job_name") or "") if stored else ""
        return "/hyperparameterTuningJobs/" in recorded

    def _dispatch(self, ports: Ports, end: JobEnd, lease: Lease, announcer: Announcer) -> Handled:
        """Route the job end to the part that handles it."""
        failures = FailureReports(_need(ports.job_logs, "job_logs"), announcer)
        job = end.job
        if job.state == SUCCEEDED and job.is_tuning and end.trial is None:
            metric = job.objective.metric if job.objective else "the study's metric"
            error = f"no trial succeeded with a value of {metric}"
            return failures.ended_badly(end, notify.FAILED, error=error)
        if job.state == SUCCEEDED:
            return self._deployer(ports, announcer).succeeded(end, lease)
        if job.state == CANCELLED:
            return failures.ended_badly(end, notify.CANCELLED)
        attempt = fallback_attempt(end)
        if attempt is not None:
            return failures.fall_back(end, attempt, ports.training())
        return failures.ended_badly(end, notify.FAILED)

    def _deployer(self, ports: Ports, announcer: Announcer) -> Deployer:
        return Deployer(_need(ports.registry, "registry"), lambda: self._rollout(ports),
                        _need(ports.blobs, "blobs")(), ports.claims(), announcer,
                        self._clock)  # fmt: skip

    def _rollout(self, ports: Ports) -> Rollout:
        return Rollout(_need(ports.endpoints, "endpoints")(), _need(ports.blobs, "blobs")(),
                       self._sleep)  # fmt: skip

    def _record_outcome(self, ledger: Ledger, end: JobEnd, handled: Handled) -> None:
        """The run record keeps the lineage: outcome, model version, endpoint, new job."""
        outcome = handled.outcome
        changes: dict[str, Any] = {"outcome": outcome.action, "outcome_detail": outcome.detail,
                                   **handled.run_changes}  # fmt: skip
        if end.trial is not None:
            changes["trial"] = {"id": end.trial.id, "parameters": dict(end.trial.parameters),
                                "metric": end.trial.metric}  # fmt: skip
        current = end.record  # read when the handling began: usually still current
        for _ in range(3):
            if current is None:
                return
            if ledger.update_run(end.pipeline.name, end.run_id, current, changes) is not None:
                return
            current = ledger.read_run(end.pipeline.name, end.run_id)
        end.log.warning("run record not updated: it kept changing", changes=changes)


def _announcer(ports: Ports, clock: Callable[[], datetime]) -> Announcer:
    return Announcer(ports.notifiers, ports.claims, ports.project, clock)


def _need(port: Lazy[T] | None, name: str) -> Lazy[T]:
    """A port the job-events function cannot do without (the bundle makes it optional
    for the trigger's sake)."""
    if port is None:
        raise ConfigError(f"the job-events function needs the {name} port")
    return port


def _pipeline_of(config: Config, job: JobInfo) -> Pipeline | None:
    wanted = job.labels.get(PIPELINE_LABEL)
    if not wanted:
        return None
    for pipeline in config.pipelines.values():
        if label_value(pipeline.name) == wanted:
            return pipeline
    return None
