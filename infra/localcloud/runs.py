"""Reading the product's state for people: the runs table and predictions through an
endpoint, with the official clients (localcloud or Google Cloud alike)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from localcloud.errors import LocalCloudError

if TYPE_CHECKING:
    from retrain.adapters.clients import VertexConnection


def load_config(env: Mapping[str, str]) -> Any:
    from retrain.config import parse_config
    from retrain.errors import ConfigError

    uri = env.get("RETRAIN_CONFIG")
    if not uri:
        raise LocalCloudError("RETRAIN_CONFIG is not set (and no localcloud runs in --dir)")
    try:
        if uri.startswith("gs://"):
            bucket, _, name = uri.removeprefix("gs://").partition("/")
            text = storage(env).bucket(bucket).blob(name).download_as_text()
        else:
            with open(uri, encoding="utf-8") as handle:
                text = handle.read()
        return parse_config(text, uri)
    except (OSError, ConfigError) as err:
        raise LocalCloudError(f"config invalid: {err}") from err


def storage(env: Mapping[str, str]) -> Any:
    from google.cloud import storage as gcs  # type: ignore[attr-defined]

    if env.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(
            project=env.get("GOOGLE_CLOUD_PROJECT") or "localcloud",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]},
        )
    return gcs.Client(project=env.get("GOOGLE_CLOUD_PROJECT") or None)


def vertex(env: Mapping[str, str], region: str) -> VertexConnection:
    """The connection the functions use under this environment (gRPC to an emulator host,
    REST to an http:// endpoint, or Google Cloud)."""
    from retrain.adapters.clients import vertex_connection
    from retrain.settings import Settings

    settings = Settings(
        config_uri=env.get("RETRAIN_CONFIG", ""),
        project=env.get("GOOGLE_CLOUD_PROJECT", ""),
        vertex_endpoint=env.get("VERTEX_API_ENDPOINT") or None,
        vertex_emulator=env.get("VERTEX_EMULATOR_HOST") or None,
    )
    return vertex_connection(settings, region)


def run_records(
    env: Mapping[str, str], config: Any, pipeline: str | None = None
) -> list[dict[str, Any]]:
    bucket, _, prefix = config.defaults.state_uri.removeprefix("gs://").partition("/")
    base = f"{prefix.strip('/')}/runs/" if prefix.strip("/") else "runs/"
    if pipeline:
        base += f"{pipeline}/"
    client = storage(env)
    records = []
    for blob in client.list_blobs(bucket, prefix=base):
        if blob.name.endswith(".json"):
            records.append(json.loads(blob.download_as_bytes()))
    return sorted(records, key=lambda r: r.get("created_at") or "")


def list_runs(env: Mapping[str, str], pipeline: str | None = None) -> list[dict[str, Any]]:

    config = load_config(env)
    if pipeline and pipeline not in config.pipelines:
        raise LocalCloudError(
            f"unknown pipeline {pipeline!r} (configured: {', '.join(config.pipelines)})"
        )
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


def rerun_problem(env: Mapping[str, str], config: Any, pipeline: str, run_id: str) -> str | None:
    """Why `run_id` cannot be rerun on exactly its inputs, checked with the storage client
    before anything is published (the trigger checks again): unknown run, no manifest, or a
    pinned generation that is gone."""
    from retrain.adapters.gcs import GcsDataObjects, GcsStateStore
    from retrain.inputs import gone, parse_manifest
    from retrain.ledger import Ledger

    if pipeline not in config.pipelines:
        return f"unknown pipeline {pipeline!r} (configured: {', '.join(config.pipelines)})"
    client = storage(env)
    stored = Ledger(GcsStateStore(client, config.defaults.state_uri)).read_run(pipeline, run_id)
    if stored is None:
        return f"pipeline {pipeline} has no run {run_id}"
    manifest = stored.doc.get("data_manifest")
    if not manifest:
        return f"run {run_id} has no input manifest: it predates pinned inputs"
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


def runs_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="runs")
    columns = [
        "pipeline",
        "run",
        "trigger",
        "created",
        "job",
        "state",
        "metric",
        "judged",
        "version",
        "outcome",
    ]
    for column in columns:
        table.add_column(column, overflow="fold")  # wrapped, never cut to "…"
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


def print_runs(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        # Piped or captured output has no width to fit: print whole cells on one line.
        console = Console(width=250)
    console.print(runs_table(rows) if rows else "no runs yet")


def watch_runs(env: Mapping[str, str], pipeline: str | None, interval_s: float = 2.0) -> None:
    """The runs table, redrawn in place until Ctrl-C: a live view of runs as they go from
    claimed to submitted, running, and their outcome."""
    import time

    from rich.live import Live

    with Live(runs_table(list_runs(env, pipeline)), refresh_per_second=4) as live:
        while True:
            time.sleep(interval_s)
            live.update(runs_table(list_runs(env, pipeline)))


def endpoint_name(env: Mapping[str, str], config: Any, pipeline: str) -> str:

    spec = config.pipelines.get(pipeline)
    if spec is None:
        raise LocalCloudError(
            f"unknown pipeline {pipeline!r} (configured: {', '.join(config.pipelines)})"
        )
    if spec.deploy is None:
        raise LocalCloudError(f"pipeline {pipeline!r} has no [deploy] table: nothing serves it")
    project = config.defaults.project or env.get("GOOGLE_CLOUD_PROJECT")
    client = vertex(env, config.defaults.region).client("EndpointServiceClient")
    parent = f"projects/{project}/locations/{config.defaults.region}"
    found = list(
        client.list_endpoints(
            request={"parent": parent, "filter": f'display_name="{spec.deploy.endpoint}"'}
        )
    )
    if not found:
        raise LocalCloudError(
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
