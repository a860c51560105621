"""The job-events function: a training job ended, so deploy the good model or tell people
what went wrong.

The event only says that a job *may* have ended; its state always comes from
GetCustomJob. Jobs without the product's labels, and jobs that are not terminal, are
ignored. Ticks reconcile: terminal jobs whose end was never handled are handled then, and
canaries old enough are promoted.

Idempotency, step by step (keys in parentheses, see ledger.py):
* handling (`handled/<pipeline>/<job_id>.json`): its atomic create is a lease and the
  duplicate check in one request: a record at step "done" makes every later delivery a
  duplicate; while the lease is fresh a duplicate raises TransientError (it is redelivered
  and then finds the job done); an expired lease is taken over with compare-and-swap.
* a handled job end (`done/<pipeline>/<job_id>`): what a tick's reconcile lists to find the
  ends nobody handled.
* every step checks the world first, so a takeover repeats nothing: the model version
  carrying `retrain-run=<run_id>` is reused, a version already deployed on the endpoint is
  not deployed again, aliases and traffic are set to a target rather than changed by a delta.
* notifications (`notified/<pipeline>/<run_id>/<kind>/<channel>`): created before sending,
  removed again when sending failed transiently, so each is sent exactly once per channel.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from retrain import notify
from retrain import trials as tuning_trials
from retrain.config import Config, Pipeline
from retrain.errors import ConfigError, InvalidEvent, PermanentError, TransientError
from retrain.events import Event, JobEnded, Tick, Unhandled
from retrain.gate import deploy_split, judge, read_metric, without
from retrain.heartbeat import Heartbeat
from retrain.jobspec import PIPELINE_LABEL, RUN_LABEL, build_job, label_value
from retrain.ledger import JobLedger, Ledger, iso, parse_iso, plan_from_record
from retrain.logs import Logger
from retrain.notify import Notification
from retrain.notifying import send_once
from retrain.ports import (
    Blobs,
    DeployFailed,
    Endpoints,
    JobInfo,
    JobLogs,
    JobNotFound,
    ModelRegistry,
    ModelVersion,
    Notifier,
    Stored,
    TrainingService,
    Trial,
    VersionSpec,
    job_name,
)
from retrain.slots import Slots

CHAMPION = "champion"
ATTEMPT_LABEL = "retrain-attempt"  # 1, 2, … on jobs resubmitted with a fallback machine
# How long one delivery holds a job end without a sign of life: a heartbeat renews it every
# HEARTBEAT_S while the work goes on (a deploy can take many minutes), so a crashed
# delivery's job end is taken over within a minute and a slow one keeps its own.
LEASE = timedelta(seconds=45)
HEARTBEAT_S = 15.0
RECONCILE_WINDOW = timedelta(days=7)  # ticks look at jobs that ended this recently
LOG_TAIL_LINES = 20
SMOKE_TRIES_PER_PERCENT = 500  # a canary's smoke test: ~500/percent predictions at most
TRANSIENT_SMOKE_RETRIES = 3

SUCCEEDED = "JOB_STATE_SUCCEEDED"
CANCELLED = "JOB_STATE_CANCELLED"
# Vertex's words for a zone or region without the requested machines (a stockout).
_STOCKOUT_MARKERS = (
    "resource_exhausted",
    "resources are insufficient",
    "does not have enough resources",
    "zone_resource_pool_exhausted",
    "stockout",
    "insufficient capacity",
)


@dataclass(frozen=True)
class Outcome:
    """What one job end (or one tick's piece of work) came to, for logs and tests."""

    action: str  # ignored | duplicate | deployed | rejected | rolled_back | failed | cancelled
    #             | resubmitted | succeeded | promoted | waiting | error
    detail: str = ""
    run_id: str | None = None
    job_name: str | None = None


@dataclass
class _Handling:
    """One delivery's hold on one job end."""

    config: Config
    pipeline: Pipeline
    job: JobInfo
    run_id: str
    record: Stored | None
    claim: Stored
    log: Logger
    changes: dict[str, Any] = field(default_factory=dict)
    trial: Trial | None = None  # a tuning job's best trial, whose model is judged
    # Steps and the heartbeat both compare-and-swap the claim: one at a time.
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: bool = False

    @property
    def data_uri(self) -> str | None:
        return self.record.doc.get("data_uri") if self.record else None


def is_stockout(error_message: str | None) -> bool:
    text = (error_message or "").lower()
    return any(marker in text for marker in _STOCKOUT_MARKERS)


def resource_id(name: str) -> str:
    """A Vertex model or endpoint id from a config name: lower case letters, digits and
    dashes, starting with a letter (fixed ids make `ensure` race-free)."""
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"r-{cleaned}"
    return cleaned[:63].rstrip("-")


def model_dir(job: JobInfo) -> str | None:
    """AIP_MODEL_DIR of the job: `<base_output_directory>/model/`."""
    base = job.base_output_directory
    return f"{base.rstrip('/')}/model/" if base else None


class JobEvents:
    def __init__(
        self,
        config: Callable[[], Config],
        ledger: Callable[[Config], Ledger],
        training: Callable[[Config], TrainingService],
        registry: Callable[[Config], ModelRegistry],
        endpoints: Callable[[Config], Endpoints],
        blobs: Blobs,
        job_logs: Callable[[Config], JobLogs],
        notifiers: Callable[[Pipeline], list[Notifier]],
        project: Callable[[Config], str],
        log: Logger,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self._config = config
        self._ledger = ledger
        self._training = training
        self._heartbeat = Heartbeat(heartbeat_s)
        self._registry = registry
        self._endpoints = endpoints
        self._blobs = blobs
        self._job_logs = job_logs
        self._notifiers = notifiers
        self._project = project
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
        config = self._config()
        if isinstance(event, Tick):
            return self._on_tick(config, event.event_id)
        job = self._read_job(config, event.job_id)
        return [self._on_job(config, job, event.event_id)]

    def _read_job(self, config: Config, job_id: str) -> JobInfo:
        """The job a log entry names: its id alone does not say which kind it is, so a
        CustomJob (the usual case) is looked up first, then a HyperparameterTuningJob."""
        training = self._training(config)
        project, region = self._project(config), config.defaults.region
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
    def _on_job(self, config: Config, job: JobInfo, event_id: str) -> Outcome:
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
        if pipeline.tuning and not job.is_tuning and self._is_trial(config, pipeline, run_id):
            reason = "a trial's CustomJob: the run ends with its HyperparameterTuningJob"
            log.info("job ignored", reason=reason)
            return Outcome("ignored", reason, run_id, job.name)
        jobs = self._jobs(config)
        # The claim's atomic create is also the duplicate check: a done record stops it.
        claim = self._claim(jobs, pipeline.name, run_id, job)
        if claim is None:
            log.info("duplicate delivery: job end already handled")
            return Outcome("duplicate", "already handled", run_id, job.name)
        record = self._ledger(config).read_run(pipeline.name, run_id)
        handling = _Handling(config, pipeline, job, run_id, record, claim, log)
        if not self._continues(handling):
            # The job's GPUs are free: so is its run's concurrency slot (see slots.py).
            # Before "done", so that a crash in between leaves it to the redelivery.
            slot = record.doc.get("slot") if record else None
            if Slots(jobs.store).release(pipeline.name, slot, run_id, self._clock()):
                log.info("concurrency slot released", slot=slot)
        with self._heartbeat.keep(lambda: self._renew(handling)):
            try:
                outcome = self._dispatch(handling)
            except (TransientError, ConfigError):
                # Release the lease so that the redelivery may take over at once.
                self._step(handling, {"lease_until": None}, strict=False)
                raise
            except PermanentError as err:
                # Kept leased: a tick retries after the lease, not in a storm.
                self._step(handling, {"error": str(err)}, strict=False)
                raise
        self._step(handling, {"step": "done", "outcome": outcome.action, "error": None})
        handling.finished = True  # a beat still in flight leaves the record alone
        jobs.mark_done(pipeline.name, job.job_id, outcome.action)
        self._record_outcome(handling, outcome)
        log.info(f"job end handled: {outcome.action}", detail=outcome.detail)
        return outcome

    def _claim(self, jobs: JobLedger, pipeline: str, run_id: str, job: JobInfo) -> Stored | None:
        now = self._clock()
        doc = {"job": job.name, "run_id": run_id, "state": job.state, "step": "claimed",
               "lease_until": iso(now + LEASE), "claimed_at": iso(now)}  # fmt: skip
        created = jobs.claim_handling(pipeline, job.job_id, doc)
        if created is not None:
            return created
        stored = jobs.read_handling(pipeline, job.job_id)
        if stored is None:
            raise TransientError(f"job {job.job_id}: handling record vanished while being read")
        if stored.doc.get("step") == "done":
            return None
        lease = parse_iso(stored.doc.get("lease_until"))
        if lease is not None and lease > now:
            raise TransientError(f"job {job.job_id} is being handled by another delivery")
        taken = jobs.update_handling(
            pipeline, job.job_id, stored, {"lease_until": iso(now + LEASE), "state": job.state}
        )
        if taken is None:
            raise TransientError(f"job {job.job_id} was taken over by another delivery")
        return taken

    def _step(self, h: _Handling, changes: Mapping[str, Any], *, strict: bool = True) -> None:
        """Record progress in the handling record (renewing the lease); losing it means
        another delivery took the job over (this one outlived its lease), so stop."""
        jobs = self._jobs(h.config)
        with h.lock:
            renewed = {"lease_until": iso(self._clock() + LEASE), **changes}
            updated = jobs.update_handling(h.pipeline.name, h.job.job_id, h.claim, renewed)
            if updated is not None:
                h.claim = updated
        if updated is None and strict:
            raise TransientError(f"job {h.job.job_id}: handling was taken over")

    def _renew(self, h: _Handling) -> None:
        """The heartbeat's renewal of the lease while this delivery works on the job end."""
        with h.lock:
            if h.finished:
                return
            lease = {"lease_until": iso(self._clock() + LEASE)}
            try:
                updated = self._jobs(h.config).update_handling(
                    h.pipeline.name, h.job.job_id, h.claim, lease
                )
            except (TransientError, PermanentError) as err:
                h.log.warning("lease not renewed", error=str(err))
                return
            if updated is not None:  # else taken over: the next step finds out and stops
                h.claim = updated

    def _continues(self, h: _Handling) -> bool:
        """Whether the run goes on with a new job (out of capacity, a fallback machine
        left): it keeps its concurrency slot then."""
        if h.job.state in (SUCCEEDED, CANCELLED) or h.record is None:
            return False
        attempt = int(h.job.labels.get(ATTEMPT_LABEL, "0") or 0)
        return is_stockout(h.job.error_message) and attempt < len(h.pipeline.training.fallback)

    def _is_trial(self, config: Config, pipeline: Pipeline, run_id: str) -> bool:
        """Whether a CustomJob carrying a run's labels is a trial of that run's tuning job
        (should Vertex copy the labels onto trials): the run record names the tuning job."""
        stored = self._ledger(config).read_run(pipeline.name, run_id)
        recorded = (stored.doc.get("job_name") or "") if stored else ""
        return "/hyperparameterTuningJobs/" in recorded

    def _dispatch(self, h: _Handling) -> Outcome:
        if h.job.state == SUCCEEDED and h.job.is_tuning:
            h.trial = tuning_trials.best(h.job)
            if h.trial is None:
                metric = h.job.objective.metric if h.job.objective else "the study's metric"
                error = f"no trial succeeded with a value of {metric}"
                return self._on_ended_badly(h, notify.FAILED, error=error)
        if h.job.state == SUCCEEDED:
            return self._on_succeeded(h)
        if h.job.state == CANCELLED:
            return self._on_ended_badly(h, notify.CANCELLED)
        attempt = int(h.job.labels.get(ATTEMPT_LABEL, "0") or 0)
        if is_stockout(h.job.error_message) and attempt < len(h.pipeline.training.fallback):
            return self._fall_back(h, attempt)
        return self._on_ended_badly(h, notify.FAILED)

    # failed, cancelled ------------------------------------------------------------------
    def _on_ended_badly(self, h: _Handling, kind: str, error: str | None = None) -> Outcome:
        error = error or h.job.error_message
        tail: list[str] = []
        if kind == notify.FAILED and notify.wanted(h.pipeline.notify, kind):
            tail = self._log_tail(h)
        message = self._notification(h, kind, error=error, log_tail=tuple(tail))
        self._notify(h.pipeline, message, h.log)
        return Outcome(kind, error or h.job.state, h.run_id, h.job.name)

    def _log_tail(self, h: _Handling) -> list[str]:
        # Best effort: a notification without its log tail beats no notification.
        try:
            return self._job_logs(h.config).tail(h.job.job_id, LOG_TAIL_LINES)
        except (TransientError, PermanentError) as err:
            h.log.warning("log tail unavailable", error=str(err))
            return [f"(log tail unavailable: {err})"]

    def _fall_back(self, h: _Handling, attempt: int) -> Outcome:
        if h.record is None:
            h.log.warning("no run record: cannot resubmit on a fallback machine")
            return self._on_ended_badly(h, notify.FAILED)
        machine = h.pipeline.training.fallback[attempt]
        training = self._training(h.config)
        labels = {RUN_LABEL: label_value(h.run_id), ATTEMPT_LABEL: str(attempt + 1)}
        existing = training.find(labels)
        if existing:
            job = sorted(existing, key=lambda j: j.name)[0]
        else:
            plan = plan_from_record(h.record.doc)
            spec = build_job(h.pipeline, plan, h.config.defaults.output_uri, machine=machine)
            job = training.submit(replace(spec, labels={**spec.labels, **labels}))
        h.changes = {"job_name": job.name, "fallback_attempt": attempt + 1}
        detail = f"out of capacity; resubmitted on {machine.machine_type}"
        if machine.accelerator_type:
            detail += f" with {machine.accelerator_count} x {machine.accelerator_type}"
        h.log.warning(detail, new_job=job.name, error=h.job.error_message)
        return Outcome("resubmitted", detail, h.run_id, job.name)

    # succeeded: gate, register, deploy --------------------------------------------------
    def _on_succeeded(self, h: _Handling) -> Outcome:
        deploy = h.pipeline.deploy
        if deploy is None:
            return Outcome("succeeded", "no deploy configured", h.run_id, h.job.name)
        directory = model_dir(h.job)
        if h.trial is not None and h.job.base_output_directory:
            directory = tuning_trials.model_dir(h.job.base_output_directory, h.trial)
        if directory is None:
            return self._reject(h, "the job has no base_output_directory: no model to read")
        registry = self._registry(h.config)
        model_id = resource_id(deploy.model)
        version = registry.find_version(model_id, {RUN_LABEL: label_value(h.run_id)})
        if version is None:
            champion = registry.by_alias(model_id, CHAMPION)
            champion_metric = champion.metric if champion else None
            try:
                metrics = self._read_json(directory + "metrics.json")
                value = read_metric(metrics, deploy.metric)
            except ValueError as err:
                return self._reject(h, str(err), champion_metric=champion_metric)
            verdict = judge(
                deploy, metrics, champion_metric, champion.artifact_uri if champion else None
            )
            if not verdict.passed:
                return self._reject(h, verdict.reason, verdict.metric, verdict.champion_metric,
                                    verdict.basis, verdict.rows)  # fmt: skip
            version = registry.upload(self._version_spec(h, model_id, directory, value))
            # The figures the gate compared, and on what basis, for records and messages.
            self._step(h, {"step": "registered", "model_version": version.name,
                           "metric": verdict.metric, "champion_metric": verdict.champion_metric,
                           "basis": verdict.basis, "basis_rows": verdict.rows})  # fmt: skip
            h.log.info("model version registered", model_version=version.name, metric=value)
        return self._deploy(h, version, directory)

    def _version_spec(self, h: _Handling, model_id: str, directory: str, value: float) -> Any:
        deploy = h.pipeline.deploy
        assert deploy is not None
        return VersionSpec(
            model_id=model_id,
            display_name=deploy.model,
            artifact_uri=directory,
            image_uri=deploy.serving_image_uri,
            health_route=deploy.health_route,
            predict_route=deploy.predict_route,
            port=deploy.port,
            labels={
                PIPELINE_LABEL: label_value(h.pipeline.name),
                RUN_LABEL: label_value(h.run_id),
                "retrain-job": label_value(h.job.job_id),
                # A tuning job's version comes from its best trial.
                **({"retrain-trial": label_value(h.trial.id)} if h.trial else {}),
            },
            metric_name=deploy.metric,
            metric_value=value,
            description=f"retrain {h.pipeline.name} run {h.run_id}: {deploy.metric}={value:g}"
            + (
                f"; trial {h.trial.id} of {h.job.job_id} ({tuning_trials.parameters_text(h.trial)})"
                if h.trial
                else ""
            ),
        )

    def _deploy(self, h: _Handling, version: ModelVersion, directory: str) -> Outcome:
        deploy = h.pipeline.deploy
        assert deploy is not None
        endpoints = self._endpoints(h.config)
        endpoint = endpoints.ensure(resource_id(deploy.endpoint), deploy.endpoint)
        mine = endpoint.deployment_of(version)
        if mine is None and h.claim.doc.get("step") == "rolled_back":
            return self._rolled_back(h, version, endpoint.name, h.claim.doc.get("reason", ""))
        others_live = any(share > 0 for share in endpoint.traffic.values())
        canary = deploy.canary_percent if 0 < deploy.canary_percent < 100 and others_live else 0
        if mine is None:
            previous = dict(endpoint.traffic)
            self._step(h, {"step": "deploying", "previous_traffic": previous, "canary": canary})
            try:
                deployed_id = endpoints.deploy(
                    endpoint.name,
                    version,
                    deploy.machine_type,
                    deploy_split(previous, canary or 100),
                    deploy.service_account,
                )
            except DeployFailed as err:
                return self._rolled_back(h, version, endpoint.name, f"deploy failed: {err}")
            self._step(h, {"step": "deployed", "deployed_model_id": deployed_id})
            h.log.info("model version deployed", deployed_model_id=deployed_id, canary=canary)
        else:
            deployed_id = mine.id
            previous = dict(h.claim.doc.get("previous_traffic") or {})
            canary = int(h.claim.doc.get("canary", canary))
        if not h.claim.doc.get("smoke_passed"):
            problem = self._smoke(endpoints, endpoint.name, deployed_id, directory, canary)
            if problem is not None:
                self._undeploy(endpoints, endpoint.name, deployed_id, previous)
                return self._rolled_back(h, version, endpoint.name, problem)
            self._step(h, {"smoke_passed": True})
        self._registry(h.config).set_alias(version, CHAMPION)
        if canary:
            self._jobs(h.config).open_canary(h.pipeline.name, h.run_id, {
                "run_id": h.run_id, "job": h.job.name, "endpoint": endpoint.name,
                "deployed_model_id": deployed_id, "model_version": version.name,
                "model_dir": directory, "percent": canary, "deployed_at": iso(self._clock()),
                "data_uri": h.data_uri,
            })  # fmt: skip
        else:
            self._promote(endpoints, endpoint.name, deployed_id)
        gate = {key: h.claim.doc.get(key) for key in ("champion_metric", "basis", "basis_rows")}
        gate["metric"] = h.claim.doc.get("metric", version.metric)
        h.changes = {"model_version": version.name, "endpoint": endpoint.name, **gate}
        message = self._notification(
            h,
            notify.DEPLOYED,
            metric_name=deploy.metric,
            **gate,
            model_version=version.name,
            endpoint=endpoint.name,
            canary_percent=canary or None,
        )
        self._notify(h.pipeline, message, h.log)
        detail = f"{version.name} on {endpoint.name}" + (f" ({canary}% canary)" if canary else "")
        return Outcome(notify.DEPLOYED, detail, h.run_id, h.job.name)

    def _smoke(
        self, endpoints: Endpoints, endpoint: str, deployed_id: str, directory: str, canary: int
    ) -> str | None:
        """None when the deployed model answered the trainer's smoke.json, else what went
        wrong. Predictions follow the traffic split: a canary is asked until it answers."""
        try:
            instances = self._read_json(directory + "smoke.json").get("instances")
        except ValueError as err:
            return f"no smoke test: {err}"
        if not isinstance(instances, list) or not instances:
            return "smoke.json has no 'instances' list"
        tries = math.ceil(SMOKE_TRIES_PER_PERCENT / canary) if canary else 1
        transient_left = TRANSIENT_SMOKE_RETRIES
        while tries > 0:
            try:
                answer = endpoints.predict(endpoint, instances)
            except PermanentError as err:
                return f"smoke test prediction failed: {err}"
            except TransientError as err:
                transient_left -= 1
                if transient_left <= 0:
                    return f"smoke test prediction failed: {err}"
                self._sleep(0.5)
                continue
            tries -= 1
            if answer.deployed_model_id == deployed_id:
                if len(answer.predictions) != len(instances):
                    return (
                        f"smoke test: {len(answer.predictions)} predictions "
                        f"for {len(instances)} instances"
                    )
                return None
        return f"the new deployment {deployed_id} answered none of the smoke predictions"

    def _undeploy(
        self, endpoints: Endpoints, endpoint: str, deployed_id: str, previous: Mapping[str, int]
    ) -> None:
        state = endpoints.get(endpoint)
        remaining = {d.id for d in state.deployed if d.id != deployed_id}
        if previous and set(previous) <= remaining and sum(previous.values()) == 100:
            traffic = {key: previous.get(key, 0) for key in remaining}
        else:
            traffic = without(state.traffic, deployed_id)
        endpoints.undeploy(endpoint, deployed_id, traffic)

    def _promote(self, endpoints: Endpoints, endpoint: str, deployed_id: str) -> None:
        """All traffic to `deployed_id`, then every other deployment undeployed."""
        state = endpoints.get(endpoint)
        target = {d.id: (100 if d.id == deployed_id else 0) for d in state.deployed}
        if {k: v for k, v in state.traffic.items() if v} != {deployed_id: 100}:
            endpoints.set_traffic(endpoint, target)
        remaining = set(target)
        for other in state.deployed:
            if other.id != deployed_id:
                remaining.discard(other.id)
                endpoints.undeploy(
                    endpoint, other.id, {key: target[key] for key in sorted(remaining)}
                )

    def _reject(
        self,
        h: _Handling,
        reason: str,
        metric: float | None = None,
        champion_metric: float | None = None,
        basis: str | None = None,
        basis_rows: int | None = None,
    ) -> Outcome:
        deploy = h.pipeline.deploy
        gate: dict[str, Any] = {"metric": metric, "champion_metric": champion_metric,
                                "basis": basis, "basis_rows": basis_rows}  # fmt: skip
        h.changes = dict(gate)
        message = self._notification(
            h,
            notify.REJECTED,
            reason=reason,
            metric_name=deploy.metric if deploy else None,
            **gate,
        )
        self._notify(h.pipeline, message, h.log)
        return Outcome(notify.REJECTED, reason, h.run_id, h.job.name)

    def _rolled_back(
        self, h: _Handling, version: ModelVersion, endpoint: str, reason: str
    ) -> Outcome:
        self._step(h, {"step": "rolled_back", "reason": reason})
        h.log.warning("deployment rolled back", reason=reason, model_version=version.name)
        deploy = h.pipeline.deploy
        message = self._notification(
            h,
            notify.ROLLED_BACK,
            reason=reason,
            metric_name=deploy.metric if deploy else None,
            metric=version.metric,
            model_version=version.name,
            endpoint=endpoint,
        )
        self._notify(h.pipeline, message, h.log)
        h.changes = {"model_version": version.name}
        return Outcome(notify.ROLLED_BACK, reason, h.run_id, h.job.name)

    # ticks -----------------------------------------------------------------------------
    def _on_tick(self, config: Config, event_id: str) -> list[Outcome]:
        outcomes: list[Outcome] = []
        jobs = self._jobs(config)
        training = self._training(config)
        horizon = self._clock() - RECONCILE_WINDOW
        for pipeline in config.pipelines.values():
            done = jobs.done_jobs(pipeline.name)
            for job in training.find({PIPELINE_LABEL: label_value(pipeline.name)}):
                if not job.terminal or job.job_id in done:
                    continue
                if job.end_time is not None and job.end_time < horizon:
                    continue
                outcomes.append(self._reconcile(config, job, event_id))
            outcomes += self._promote_canaries(config, pipeline)
        return outcomes

    def _reconcile(self, config: Config, job: JobInfo, event_id: str) -> Outcome:
        """A terminal job whose end was never handled: a lost log entry or alert."""
        try:
            return self._on_job(config, job, event_id)
        except TransientError as err:  # another delivery holds it, or a dependency hiccup
            return Outcome("waiting", str(err), job.labels.get(RUN_LABEL), job.name)
        except PermanentError as err:
            self._log.error(str(err), event_id=event_id, job_name=job.name)
            return Outcome("error", str(err), job.labels.get(RUN_LABEL), job.name)

    def _promote_canaries(self, config: Config, pipeline: Pipeline) -> list[Outcome]:
        deploy = pipeline.deploy
        if deploy is None:
            return []
        jobs = self._jobs(config)
        outcomes = []
        for stored in jobs.canaries(pipeline.name):
            doc = stored.doc
            since = parse_iso(doc.get("deployed_at"))
            if since is not None and self._clock() - since < timedelta(
                seconds=deploy.canary_seconds
            ):
                continue
            outcomes.append(self._settle_canary(config, pipeline, doc))
            jobs.close_canary(pipeline.name, doc["run_id"])
        return outcomes

    def _settle_canary(self, config: Config, pipeline: Pipeline, doc: Mapping[str, Any]) -> Outcome:
        endpoints = self._endpoints(config)
        endpoint, deployed_id = doc["endpoint"], doc["deployed_model_id"]
        log = self._log.bind(pipeline=pipeline.name, run_id=doc["run_id"], endpoint=endpoint)
        state = endpoints.get(endpoint)
        if deployed_id not in {d.id for d in state.deployed}:
            log.info("canary no longer deployed: nothing to promote", deployed_model_id=deployed_id)
            return Outcome("ignored", "canary no longer deployed", doc["run_id"], doc["job"])
        problem = self._smoke(
            endpoints, endpoint, deployed_id, doc["model_dir"], int(doc.get("percent") or 0)
        )
        if problem is None:
            self._promote(endpoints, endpoint, deployed_id)
            log.info("canary promoted", deployed_model_id=deployed_id)
            return Outcome("promoted", doc["model_version"], doc["run_id"], doc["job"])
        self._undeploy(endpoints, endpoint, deployed_id, {})
        message = Notification(
            kind=notify.ROLLED_BACK, pipeline=pipeline.name, run_id=doc["run_id"], job=doc["job"],
            state=SUCCEEDED, project=self._project(config), region=config.defaults.region,
            data_uri=doc.get("data_uri"), model_version=doc["model_version"], endpoint=endpoint,
            reason=f"canary failed its check before promotion: {problem}",
        )  # fmt: skip
        self._notify(pipeline, message, log)
        return Outcome(notify.ROLLED_BACK, problem, doc["run_id"], doc["job"])

    # helpers ---------------------------------------------------------------------------
    def _jobs(self, config: Config) -> JobLedger:
        return JobLedger(self._ledger(config).store)

    def _read_json(self, uri: str) -> dict[str, Any]:
        """A JSON object from the model directory; ValueError says why it is unusable."""
        name = uri.rsplit("/", 1)[-1]
        try:
            text, _ = self._blobs.read_text(uri)
        except (PermanentError, OSError) as err:
            raise ValueError(f"{name} is missing or unreadable: {err}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{name} is not a JSON object")
        return data

    def _notification(self, h: _Handling, kind: str, **fields: Any) -> Notification:
        return Notification(
            kind=kind,
            pipeline=h.pipeline.name,
            run_id=h.run_id,
            job=h.job.name,
            state=h.job.state,
            project=self._project(h.config),
            region=h.config.defaults.region,
            data_uri=h.data_uri,
            duration_seconds=notify.duration(h.job.start_time, h.job.end_time),
            trials=tuning_trials.summary(h.job) if h.job.is_tuning else (),
            **fields,
        )

    def _notify(self, pipeline: Pipeline, message: Notification, log: Logger) -> None:
        if not notify.wanted(pipeline.notify, message.kind):
            log.info("notification not wanted by config", kind=message.kind)
            return
        channels = self._notifiers(pipeline)
        if channels:
            send_once(message, channels, self._jobs(self._config()), log)

    def _record_outcome(self, h: _Handling, outcome: Outcome) -> None:
        """The run record keeps the lineage: outcome, model version, endpoint, new job."""
        ledger = self._ledger(h.config)
        changes = {"outcome": outcome.action, "outcome_detail": outcome.detail, **h.changes}
        if h.trial is not None:
            changes["trial"] = {"id": h.trial.id, "parameters": dict(h.trial.parameters),
                                "metric": h.trial.metric}  # fmt: skip
        current = h.record  # read when the handling began: usually still current
        for _ in range(3):
            if current is None:
                return
            if ledger.update_run(h.pipeline.name, h.run_id, current, changes) is not None:
                return
            current = ledger.read_run(h.pipeline.name, h.run_id)
        h.log.warning("run record not updated: it kept changing", changes=changes)


def _pipeline_of(config: Config, job: JobInfo) -> Pipeline | None:
    wanted = job.labels.get(PIPELINE_LABEL)
    if not wanted:
        return None
    for pipeline in config.pipelines.values():
        if label_value(pipeline.name) == wanted:
            return pipeline
    return None
