"""Reading the product's state for people: the runs table, reruns and predictions through
an endpoint, through the core (the config source, the ledger, the adapters' clients), on
localcloud or Google Cloud alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retrain.cli.env import NOT_SET, storage, vertex
from retrain.cli.errors import CliError
from retrain.config import Config


def load_config(env: Mapping[str, str]) -> Config:
    """The config RETRAIN_CONFIG names, read as the functions read it."""
    from retrain.adapters.gcs import GcsBlobs
    from retrain.config_source import ConfigSource
    from retrain.errors import RetrainError

    uri = env.get("RETRAIN_CONFIG")
    if not uri:
        raise CliError(NOT_SET.format("RETRAIN_CONFIG"))
    try:
        return ConfigSource(uri, GcsBlobs(lambda: storage(env))).get()
    except (OSError, RetrainError) as err:
        raise CliError(f"config invalid: {err}") from err


def ledger(env: Mapping[str, str], config: Config) -> Any:
    from retrain.adapters.gcs import GcsStateStore
    from retrain.ledger import Ledger

    return Ledger(GcsStateStore(storage(env), config.defaults.state_uri))


def run_records(
    env: Mapping[str, str], config: Config, pipeline: str | None = None
) -> list[dict[str, Any]]:
    """The run records of `pipeline` (of every configured pipeline when None), oldest
    first."""
    runs = ledger(env, config)
    records = []
    for name in [pipeline] if pipeline else list(config.pipelines):
        for run_id in runs.list_runs(name):
            stored = runs.read_run(name, run_id)
            if stored is not None:
                records.append(dict(stored.doc))
    return sorted(records, key=lambda r: r.get("created_at") or "")


def _unknown(pipeline: str, config: Config) -> CliError:
    return CliError(f"unknown pipeline {pipeline!r} (configured: {', '.join(config.pipelines)})")


def list_runs(env: Mapping[str, str], pipeline: str | None = None) -> list[dict[str, Any]]:
    config = load_config(env)
    if pipeline and pipeline not in config.pipelines:
        raise _unknown(pipeline, config)
    jobs = vertex(env, config.defaults.region).client("JobServiceClient")
    rows = []
    for record in run_records(env, config, pipeline):
        state, metric = "-", "-"
        if record.get("job_name"):
            try:
                job = jobs.get_custom_job(name=record["job_name"], timeout=10)
                state = job.state.name.removeprefix("JOB_STATE_")
            except Exception as err:  # a row must still print when one job cannot be read
                state = f"? ({type(err).__name__})"
        if isinstance(record.get("metric"), int | float):
            metric = f"{record['metric']:.4f}"
        trigger = record.get("trigger", "?")
        if record.get("rerun_of"):
            trigger = f"rerun of {record['rerun_of']}"
        rows.append(
            {
                "pipeline": record.get("pipeline", "?"),
                "run": record.get("run_id", "?"),
                "trigger": trigger,
                "created": (record.get("created_at") or "")[:19],
                "job": (record.get("job_name") or "-").rsplit("/", 1)[-1],
                "state": state if record.get("job_name") else record.get("status", "?"),
                "metric": metric,
                "judged": judged(record),
                "version": str(record.get("model_version") or "-").rsplit("/", 1)[-1],
                "outcome": str(record.get("outcome") or record.get("deployed") or "-"),
            }
        )
    return rows


def judged(record: Mapping[str, Any]) -> str:
    """The comparison the gate made: both figures, and the rows they come from (same rows,
    eval set, or the champion's recorded metric)."""
    from retrain.gate import basis_text

    new, champion = record.get("metric"), record.get("champion_metric")
    where = basis_text(record.get("basis"), record.get("basis_rows"))
    if not isinstance(new, int | float) or not isinstance(champion, int | float) or not where:
        return "-" if record.get("basis") in (None, "none") else str(record.get("basis"))
    return f"{new:.4f} vs champion {champion:.4f} ({where})"


def rerun_problem(env: Mapping[str, str], config: Config, pipeline: str, run_id: str) -> str | None:
    """Why `run_id` cannot be rerun on exactly its inputs, checked with the storage client
    before anything is published (the trigger checks again): unknown run, no manifest, or a
    pinned generation that is gone."""
    from retrain.adapters.gcs import GcsDataObjects
    from retrain.inputs import gone, parse_manifest

    if pipeline not in config.pipelines:
        return f"unknown pipeline {pipeline!r} (configured: {', '.join(config.pipelines)})"
    stored = ledger(env, config).read_run(pipeline, run_id)
    if stored is None:
        return f"pipeline {pipeline} has no run {run_id}"
    manifest = stored.doc.get("data_manifest")
    if not manifest:
        return f"run {run_id} has no input manifest: it predates pinned inputs"
    client = storage(env)
    objects = GcsDataObjects(lambda: client)
    text = objects.read_text(manifest)
    if text is None:
        return f"run {run_id}: its input manifest {manifest} is gone"
    missing = gone(parse_manifest(text, manifest), objects)
    if missing:
        return (
            f"run {run_id}: pinned input {', '.join(str(p) for p in missing)} is gone "
            "(overwritten or deleted, and not kept as a noncurrent version)"
        )
    return None


def endpoint_name(env: Mapping[str, str], config: Config, pipeline: str) -> str:
    spec = config.pipelines.get(pipeline)
    if spec is None:
        raise _unknown(pipeline, config)
    if spec.deploy is None:
        raise CliError(f"pipeline {pipeline!r} has no [deploy] table: nothing serves it")
    project = config.defaults.project or env.get("GOOGLE_CLOUD_PROJECT")
    client = vertex(env, config.defaults.region).client("EndpointServiceClient")
    parent = f"projects/{project}/locations/{config.defaults.region}"
    found = list(
        client.list_endpoints(
            request={"parent": parent, "filter": f'display_name="{spec.deploy.endpoint}"'}
        )
    )
    if not found:
        raise CliError(
            f"endpoint {spec.deploy.endpoint!r} does not exist yet: no model was deployed"
        )
    return str(found[0].name)


def predict(env: Mapping[str, str], pipeline: str, instances: list[Any]) -> dict[str, Any]:
    from google.protobuf import json_format, struct_pb2

    config = load_config(env)
    name = endpoint_name(env, config, pipeline)
    client = vertex(env, config.defaults.region).client("PredictionServiceClient")
    values = [json_format.ParseDict(instance, struct_pb2.Value()) for instance in instances]
    response = client.predict(endpoint=name, instances=values, timeout=60)
    return {
        "predictions": [json_format.MessageToDict(p) for p in response._pb.predictions],
        "deployed_model_id": response.deployed_model_id,
        "model_version_id": response.model_version_id,
    }
