"""A succeeded job's model, from gate to traffic: judge it against the champion, register
the version, deploy it, smoke-test it, roll it back or promote it (or open a canary that a
tick promotes later), and say so.

Every step checks the world first, so a delivery that took a job end over repeats
nothing: the model version carrying `retrain-run=<run_id>` is reused, a version already
deployed on the endpoint is not deployed again, aliases and traffic are set to a target.
Progress is recorded in the job end's lease (see ledger.py), which also tells a takeover
where the first delivery got to."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from retrain import notify
from retrain import trials as tuning_trials
from retrain.gate import deploy_split, judge, read_metric
from retrain.jobend import CHAMPION, Handled, JobEnd, resource_id
from retrain.jobspec import PIPELINE_LABEL, RUN_LABEL, label_value
from retrain.ledger import JobLedger, Lease, iso
from retrain.notifying import Announcer
from retrain.ports import Blobs, DeployFailed, JobInfo, ModelRegistry, ModelVersion, VersionSpec
from retrain.rollout import Rollout, read_json


def model_dir(job: JobInfo) -> str | None:
    """AIP_MODEL_DIR of the job: `<base_output_directory>/model/`."""
    base = job.base_output_directory
    return f"{base.rstrip('/')}/model/" if base else None


class Deployer:
    def __init__(
        self,
        registry: Callable[[], ModelRegistry],
        rollout: Callable[[], Rollout],
        blobs: Blobs,
        canaries: JobLedger,
        announcer: Announcer,
        clock: Callable[[], datetime],
    ):
        # Built on use: a job end that has nothing to deploy builds neither.
        self._registry = registry
        self._rollout = rollout
        self._blobs = blobs
        self._canaries = canaries
        self._announcer = announcer
        self._clock = clock

    def succeeded(self, end: JobEnd, lease: Lease) -> Handled:
        deploy = end.pipeline.deploy
        if deploy is None:
            return Handled(end.outcome("succeeded", "no deploy configured"))
        directory = model_dir(end.job)
        if end.trial is not None and end.job.base_output_directory:
            directory = tuning_trials.model_dir(end.job.base_output_directory, end.trial)
        if directory is None:
            return self._reject(end, "the job has no base_output_directory: no model to read")
        model_id = resource_id(deploy.model)
        registry = self._registry()
        version = registry.find_version(model_id, {RUN_LABEL: label_value(end.run_id)})
        if version is None:
            champion = registry.by_alias(model_id, CHAMPION)
            champion_metric = champion.metric if champion else None
            try:
                metrics = read_json(self._blobs, directory + "metrics.json")
                value = read_metric(metrics, deploy.metric)
            except ValueError as err:
                return self._reject(end, str(err), champion_metric=champion_metric)
            verdict = judge(
                deploy, metrics, champion_metric, champion.artifact_uri if champion else None
            )
            if not verdict.passed:
                return self._reject(end, verdict.reason, verdict.metric, verdict.champion_metric,
                                    verdict.basis, verdict.rows)  # fmt: skip
            # The figures the gate compared, and on what basis, for records and messages:
            # kept before the upload, since a delivery that takes over after it finds the
            # version by its label and judges nothing again.
            lease.step({"step": "judged", "metric": verdict.metric,
                        "champion_metric": verdict.champion_metric,
                        "basis": verdict.basis, "basis_rows": verdict.rows})  # fmt: skip
            version = registry.upload(self._version_spec(end, model_id, directory, value))
            lease.step({"step": "registered", "model_version": version.name})
            end.log.info("model version registered", model_version=version.name, metric=value)
        return self._deploy(end, lease, registry, version, directory)

    def _version_spec(self, end: JobEnd, model_id: str, directory: str, value: float) -> Any:
        deploy = end.pipeline.deploy
        assert deploy is not None
        trial = end.trial
        return VersionSpec(
            model_id=model_id,
            display_name=deploy.model,
            artifact_uri=directory,
            image_uri=deploy.serving_image_uri,
            health_route=deploy.health_route,
            predict_route=deploy.predict_route,
            port=deploy.port,
            labels={
                PIPELINE_LABEL: label_value(end.pipeline.name),
                RUN_LABEL: label_value(end.run_id),
                "retrain-job": label_value(end.job.job_id),
                # A tuning job's version comes from its best trial.
                **({"retrain-trial": label_value(trial.id)} if trial else {}),
            },
            metric_name=deploy.metric,
            metric_value=value,
            description=f"retrain {end.pipeline.name} run {end.run_id}: {deploy.metric}={value:g}"
            + (
                f"; trial {trial.id} of {end.job.job_id} ({tuning_trials.parameters_text(trial)})"
                if trial
                else ""
            ),
        )

    def _deploy(
        self,
        end: JobEnd,
        lease: Lease,
        registry: ModelRegistry,
        version: ModelVersion,
        directory: str,
    ) -> Handled:
        deploy = end.pipeline.deploy
        assert deploy is not None
        rollout = self._rollout()
        endpoints = rollout.endpoints
        endpoint = endpoints.ensure(resource_id(deploy.endpoint), deploy.endpoint)
        mine = endpoint.deployment_of(version)
        if mine is None and lease.doc.get("step") == "rolled_back":
            return self._rolled_back(end, lease, version, endpoint.name,
                                     lease.doc.get("reason", ""))  # fmt: skip
        others_live = any(share > 0 for share in endpoint.traffic.values())
        canary = deploy.canary_percent if 0 < deploy.canary_percent < 100 and others_live else 0
        if mine is None:
            previous = dict(endpoint.traffic)
            lease.step({"step": "deploying", "previous_traffic": previous, "canary": canary})
            try:
                deployed_id = endpoints.deploy(
                    endpoint.name,
                    version,
                    deploy.machine_type,
                    deploy_split(previous, canary or 100),
                    deploy.service_account,
                )
            except DeployFailed as err:
                return self._rolled_back(
                    end, lease, version, endpoint.name, f"deploy failed: {err}"
                )
            lease.step({"step": "deployed", "deployed_model_id": deployed_id})
            end.log.info("model version deployed", deployed_model_id=deployed_id, canary=canary)
        else:
            deployed_id = mine.id
            previous = dict(lease.doc.get("previous_traffic") or {})
            canary = int(lease.doc.get("canary", canary))
            if lease.doc.get("step") == "deploying":
                # The deploy went through but its answer was lost: record it now.
                lease.step({"step": "deployed", "deployed_model_id": deployed_id})
                end.log.info("model version deployed", deployed_model_id=deployed_id,
                             canary=canary, found_on_retry=True)  # fmt: skip
        if not lease.doc.get("smoke_passed"):
            problem = rollout.smoke(endpoint.name, deployed_id, directory, canary)
            if problem is not None:
                rollout.undeploy(endpoint.name, deployed_id, previous)
                return self._rolled_back(end, lease, version, endpoint.name, problem)
            lease.step({"smoke_passed": True})
        registry.set_alias(version, CHAMPION)
        if canary:
            self._canaries.open_canary(end.pipeline.name, end.run_id, {
                "run_id": end.run_id, "job": end.job.name, "endpoint": endpoint.name,
                "deployed_model_id": deployed_id, "model_version": version.name,
                "model_dir": directory, "percent": canary, "deployed_at": iso(self._clock()),
                "data_uri": end.data_uri,
            })  # fmt: skip
        else:
            rollout.promote(endpoint.name, deployed_id)
        gate = {key: lease.doc.get(key) for key in ("champion_metric", "basis", "basis_rows")}
        gate["metric"] = lease.doc.get("metric", version.metric)
        message = self._announcer.about(
            end,
            notify.DEPLOYED,
            metric_name=deploy.metric,
            **gate,
            model_version=version.name,
            endpoint=endpoint.name,
            canary_percent=canary or None,
        )
        detail = f"{version.name} on {endpoint.name}" + (f" ({canary}% canary)" if canary else "")
        changes = {"model_version": version.name, "endpoint": endpoint.name, **gate}
        return Handled(end.outcome(notify.DEPLOYED, detail), changes, message)

    def _reject(
        self,
        end: JobEnd,
        reason: str,
        metric: float | None = None,
        champion_metric: float | None = None,
        basis: str | None = None,
        basis_rows: int | None = None,
    ) -> Handled:
        deploy = end.pipeline.deploy
        gate: dict[str, Any] = {"metric": metric, "champion_metric": champion_metric,
                                "basis": basis, "basis_rows": basis_rows}  # fmt: skip
        message = self._announcer.about(
            end,
            notify.REJECTED,
            reason=reason,
            metric_name=deploy.metric if deploy else None,
            **gate,
        )
        return Handled(end.outcome(notify.REJECTED, reason), gate, message)

    def _rolled_back(
        self, end: JobEnd, lease: Lease, version: ModelVersion, endpoint: str, reason: str
    ) -> Handled:
        lease.step({"step": "rolled_back", "reason": reason})
        end.log.warning("deployment rolled back", reason=reason, model_version=version.name)
        deploy = end.pipeline.deploy
        message = self._announcer.about(
            end,
            notify.ROLLED_BACK,
            reason=reason,
            metric_name=deploy.metric if deploy else None,
            metric=version.metric,
            model_version=version.name,
            endpoint=endpoint,
        )
        changes = {"model_version": version.name}
        return Handled(end.outcome(notify.ROLLED_BACK, reason), changes, message)
