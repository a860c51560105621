"""What a tick does for the job-events function: reconcile (terminal jobs whose end was
never handled, because a log entry or an alert got lost, are handled then) and promote
canaries that have served their time, smoke-testing them once more first."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from retrain import notify
from retrain.config import Config, Pipeline
from retrain.errors import PermanentError, TransientError
from retrain.jobend import SUCCEEDED, Outcome
from retrain.jobspec import PIPELINE_LABEL, RUN_LABEL, label_value
from retrain.ledger import JobLedger, parse_iso
from retrain.logs import Logger
from retrain.notify import Notification
from retrain.notifying import Announcer
from retrain.ports import JobInfo, TrainingService
from retrain.rollout import Rollout

RECONCILE_WINDOW = timedelta(days=7)  # ticks look at jobs that ended this recently


class Ticks:
    def __init__(
        self,
        config: Config,
        training: TrainingService,
        claims: JobLedger,
        rollout: Callable[[], Rollout],
        announcer: Announcer,
        handle_job: Callable[[JobInfo], Outcome],
        log: Logger,
        clock: Callable[[], datetime],
    ):
        self._config = config
        self._training = training
        self._claims = claims
        self._rollout = rollout  # built on use: most ticks have no canary to settle
        self._announcer = announcer
        self._handle_job = handle_job
        self._log = log
        self._clock = clock

    def run(self, event_id: str) -> list[Outcome]:
        outcomes: list[Outcome] = []
        horizon = self._clock() - RECONCILE_WINDOW
        for pipeline in self._config.pipelines.values():
            try:
                done = self._claims.done_jobs(pipeline.name)
                jobs = self._training.find({PIPELINE_LABEL: label_value(pipeline.name)})
            except TransientError as err:
                # One pipeline's failed listing must not keep the others from their tick;
                # the next tick lists this one again.
                self._log.warning("reconcile skipped", pipeline=pipeline.name, error=str(err))
                outcomes.append(Outcome("waiting", f"jobs not listed: {err}"))
                continue
            for job in jobs:
                if not job.terminal or job.job_id in done:
                    continue
                if job.end_time is not None and job.end_time < horizon:
                    continue
                outcomes.append(self._reconcile(job, event_id))
            try:
                outcomes += self._promote_canaries(pipeline)
            except TransientError as err:
                self._log.warning("canaries not settled", pipeline=pipeline.name, error=str(err))
                outcomes.append(Outcome("waiting", f"canaries not settled: {err}"))
        return outcomes

    def _reconcile(self, job: JobInfo, event_id: str) -> Outcome:
        """A terminal job whose end was never handled: a lost log entry or alert."""
        try:
            return self._handle_job(job)
        except TransientError as err:  # another delivery holds it, or a dependency hiccup
            return Outcome("waiting", str(err), job.labels.get(RUN_LABEL), job.name)
        except PermanentError as err:
            self._log.error(str(err), event_id=event_id, job_name=job.name)
            return Outcome("error", str(err), job.labels.get(RUN_LABEL), job.name)

    def _promote_canaries(self, pipeline: Pipeline) -> list[Outcome]:
        deploy = pipeline.deploy
        if deploy is None:
            return []
        outcomes = []
        for stored in self._claims.canaries(pipeline.name):
            doc = stored.doc
            since = parse_iso(doc.get("deployed_at"))
            if since is not None and self._clock() - since < timedelta(
                seconds=deploy.canary_seconds
            ):
                continue
            outcomes.append(self._settle_canary(pipeline, doc))
            self._claims.close_canary(pipeline.name, doc["run_id"])
        return outcomes

    def _settle_canary(self, pipeline: Pipeline, doc: Mapping[str, Any]) -> Outcome:
        rollout = self._rollout()
        endpoint, deployed_id = doc["endpoint"], doc["deployed_model_id"]
        log = self._log.bind(pipeline=pipeline.name, run_id=doc["run_id"], endpoint=endpoint)
        state = rollout.endpoints.get(endpoint)
        if deployed_id not in {d.id for d in state.deployed}:
            log.info("canary no longer deployed: nothing to promote", deployed_model_id=deployed_id)
            return Outcome("ignored", "canary no longer deployed", doc["run_id"], doc["job"])
        problem = rollout.smoke(endpoint, deployed_id, doc["model_dir"],
                                int(doc.get("percent") or 0))  # fmt: skip
        if problem is None:
            rollout.promote(endpoint, deployed_id)
            log.info("canary promoted", deployed_model_id=deployed_id)
            return Outcome("promoted", doc["model_version"], doc["run_id"], doc["job"])
        rollout.undeploy(endpoint, deployed_id, {})
        config = self._config
        message = Notification(
            kind=notify.ROLLED_BACK, pipeline=pipeline.name, run_id=doc["run_id"], job=doc["job"],
            state=SUCCEEDED, project=self._announcer.project(),
            region=config.defaults.region, data_uri=doc.get("data_uri"),
            model_version=doc["model_version"], endpoint=endpoint,
            reason=f"canary failed its check before promotion: {problem}",
        )  # fmt: skip
        self._announcer.announce(pipeline, message, log)
        return Outcome(notify.ROLLED_BACK, problem, doc["run_id"], doc["job"])
