"""`retrain local demo`: the whole loop on localcloud, with a real data set.

Starts localcloud with the demo config, drops scikit-learn's handwritten digits as CSV
parts plus a `_SUCCESS` marker, follows the run live (job state, epoch lines, routing,
deployment), predicts held-out rows through the endpoint, then does the same for the tuned
pipeline (a hyperparameter tuning job: its trials live, then the trial table and the trial
the product chose), prints a summary, stops everything, and exits 0 only if both pipelines'
models were deployed and answered correctly."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from localcloud.demo.trials import TrialRow, table_lines, trial_rows, value_text
from localcloud.errors import LocalCloudError

LANDING = "demo-landing"
PIPELINE = "digits"
TUNED_PIPELINE = "digits-tuned"  # a tuning job per batch; see pipelines.toml
TUNING_JOBS = "/hyperparameterTuningJobs/"
RECORD_WAIT_S = 10.0  # for job-events to record the chosen trial after it notified
MIN_HELD_OUT_ACCURACY = 0.8
TERMINAL_KINDS = ("deployed", "rejected", "rolled_back", "failed", "cancelled")


@dataclass
class Batch:
    name: str
    parts: list[list[dict[str, Any]]]
    pipeline: str = PIPELINE  # its prefix in the landing bucket is "<pipeline>/"

    @property
    def uri(self) -> str:
        return f"gs://{LANDING}/{self.pipeline}/{self.name}/"


@dataclass
class RunResult:
    batch: str
    pipeline: str = PIPELINE
    run_id: str = "-"
    job: str = "-"
    state: str = "-"
    kind: str = "-"
    metric: Any = None
    champion_metric: Any = None
    version: Any = None
    endpoint: Any = None
    detail: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    trials: list[TrialRow] = field(default_factory=list)  # a tuning job's
    chosen: dict[str, Any] | None = None  # the trial job-events judged: id, parameters, metric


def make_data(seed: int = 7) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Digits as rows {p00..p63, digit}; 10% held out for predictions."""
    import random

    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = [
        {**{f"p{i:02d}": int(v) for i, v in enumerate(image)}, "digit": f"d{int(target)}"}
        for image, target in zip(digits.data, digits.target, strict=True)
    ]
    random.Random(seed).shuffle(rows)
    cut = len(rows) // 10
    return rows[cut:], rows[:cut]


def split(rows: list[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    return [rows[i::parts] for i in range(parts)]


def transport_line(env: dict[str, str]) -> str:
    """Which wire the functions use, as the environment they were given selects it."""
    vertex = env.get("VERTEX_EMULATOR_HOST")
    logging = env.get("LOGGING_EMULATOR_HOST")
    if vertex and logging:
        return f"the functions call Vertex AI ({vertex}) and Cloud Logging ({logging}) over gRPC"
    return (
        f"the functions call Vertex AI ({env.get('VERTEX_API_ENDPOINT')}) and Cloud Logging "
        f"({env.get('LOGGING_API_ENDPOINT')}) over REST"
    )


def _say(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)


def run_demo(directory: Path, *, twice: bool, epochs: int | None, timeout: float) -> int:
    from localcloud.stack import DEMO_CONFIG, Options, Stack

    started = time.monotonic()
    if directory.exists():
        shutil.rmtree(directory)  # the demo always starts from a clean slate
    config_path = DEMO_CONFIG
    if epochs is not None:
        directory.mkdir(parents=True)
        config_path = directory / "pipelines.toml"
        text = DEMO_CONFIG.read_text()
        # Every pipeline's epochs, the tuned pipeline's trials too.
        config_path.write_text(re.sub(r"(?m)^epochs = \d+$", f"epochs = {epochs}", text))
    print(
        "retrain demo: drop data in a bucket -> a training job runs -> the good model is deployed\n"
        f"then the tuned pipeline ({TUNED_PIPELINE}): a tuning job runs trials -> the best "
        "trial's model is deployed\n"
    )
    stack = Stack(
        Options(dir=directory, config=config_path, tick_seconds=2.0),
        progress=lambda m: _say(started, m),
    )
    stack.up()
    _say(started, f"localcloud is up (state in {directory})")
    _say(started, transport_line(stack.env))
    try:
        train, held_out = make_data()
        batches = [Batch("batch-1", split(train[: len(train) // 2] if twice else train, 3))]
        if twice:
            batches.append(Batch("batch-2", split(train, 4)))
        batches.append(Batch("batch-1", split(train, 3), TUNED_PIPELINE))
        demo = _Demo(stack, directory, started, timeout)
        results: list[RunResult] = []
        for batch in batches:
            result = demo.run_batch(batch)
            earlier = [r for r in results if r.pipeline == batch.pipeline]
            if result.kind == "deployed" or (earlier and result.kind == "rejected"):
                result.accuracy, result.stages["first predict"] = demo.predict_accuracy(
                    held_out, batch.pipeline
                )
            results.append(result)
        _summary(results, started)
        return 0 if _succeeded(results) else 1
    finally:
        _say(started, "stopping localcloud")
        stack.down()


def _succeeded(results: list[RunResult]) -> bool:
    """Each pipeline's first model deployed and right on the held-out rows; a second batch
    either deployed or rejected by the gate."""
    ok = True
    for pipeline in (PIPELINE, TUNED_PIPELINE):
        runs = [r for r in results if r.pipeline == pipeline]
        first = runs[0]
        ok = ok and first.kind == "deployed" and (first.accuracy or 0) >= MIN_HELD_OUT_ACCURACY
        ok = ok and all(r.kind in ("deployed", "rejected") for r in runs[1:])
    return ok


class _Demo:
    def __init__(self, stack: Any, directory: Path, started: float, timeout: float):
        from google.cloud import pubsub_v1

        from retrain.cli.runs import load_config, storage, vertex

        self.stack = stack
        self.env = stack.env
        self.dir = directory
        self.started = started
        self.timeout = timeout
        self.config = load_config(self.env)
        self.storage = storage(self.env)
        self.vertex = vertex(self.env, "us-central1")
        self.jobs = self.vertex.client("JobServiceClient")
        self.subscriber = pubsub_v1.SubscriberClient()
        project = stack.project
        self.subscriptions = {}
        for topic in ("retrain-notifications", "job-events"):
            name = self.subscriber.subscription_path(project, f"demo-{topic}")
            self.subscriber.create_subscription(
                request={"name": name, "topic": f"projects/{project}/topics/{topic}"}
            )
            self.subscriptions[topic] = name

    def say(self, message: str) -> None:
        _say(self.started, message)

    def drop(self, batch: Batch, work: Path) -> float:
        bucket = self.storage.bucket(LANDING)
        folder = work / batch.pipeline / batch.name
        folder.mkdir(parents=True, exist_ok=True)
        for index, rows in enumerate(batch.parts):
            path = folder / f"part-{index:04d}.csv"
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            blob = bucket.blob(f"{batch.pipeline}/{batch.name}/{path.name}")
            blob.upload_from_filename(str(path))
        count = sum(len(p) for p in batch.parts)
        self.say(f"dropped {len(batch.parts)} CSV parts ({count} rows) into {batch.uri}")
        bucket.blob(f"{batch.pipeline}/{batch.name}/_SUCCESS").upload_from_string(b"")
        self.say(f"dropped the marker {batch.uri}_SUCCESS")
        return time.time()

    def run_batch(self, batch: Batch) -> RunResult:
        from retrain.cli.runs import run_records

        result = RunResult(batch.name, batch.pipeline)
        dropped_at = self.drop(batch, self.dir / "data")
        deadline = time.monotonic() + self.timeout
        record: dict[str, Any] | None = None
        job: Any = None
        seen_lines: set[str] = set()
        state = ""
        routed_at: float | None = None
        while time.monotonic() < deadline:
            if record is None or not record.get("job_name"):
                matches = [
                    r
                    for r in run_records(self.env, self.config, batch.pipeline)
                    if r.get("data_uri") == batch.uri
                ]
                if matches:
                    if record is None:
                        self.say(
                            f"run {matches[0]['run_id']} claimed by the trigger ({matches[0]['trigger']})"
                        )
                    record = matches[0]
                    result.run_id = record["run_id"]
                    if record.get("job_name"):
                        result.job = record["job_name"]
                        submitted = _ts(record.get("submitted_at"))
                        result.stages["event -> submit"] = (submitted or time.time()) - dropped_at
                        self.say(f"job submitted: {record['job_name']}")
            if record and record.get("job_name"):
                job = self._get_job(record["job_name"])
                if job.state.name != state:
                    state = job.state.name
                    result.state = state.removeprefix("JOB_STATE_")
                    self.say(f"job state: {result.state}")
                self._print_job_lines(job.name.rsplit("/", 1)[-1], seen_lines)
            for message in self._pull("job-events"):
                entry = json.loads(message.data)
                if record and record.get("job_name", "").endswith(
                    entry["resource"]["labels"].get("job_id", "?")
                ):
                    routed_at = message.publish_time.timestamp()
                    self.say("job end routed by the log sink to job-events")
            for message in self._pull("retrain-notifications"):
                doc = json.loads(message.data)
                kind = doc.get("kind")
                if str(doc.get("run") or doc.get("run_id") or "") != result.run_id:
                    continue
                self.say(f"Pub/Sub notification: {kind}")
                self._show_webhook(result.run_id)
                if kind in TERMINAL_KINDS:
                    self._finish(
                        result, doc, job, dropped_at, routed_at, message.publish_time.timestamp()
                    )
                    if job is not None and TUNING_JOBS in job.name:
                        self._show_trials(result, self._get_job(job.name))
                    return result
            time.sleep(0.5)
        raise LocalCloudError(
            f"{batch.name}: no outcome within {self.timeout:.0f}s (last job state {state or 'none'})"
        )

    def _get_job(self, name: str) -> Any:
        """A CustomJob or a HyperparameterTuningJob, as the run record names it."""
        if TUNING_JOBS in name:
            return self.jobs.get_hyperparameter_tuning_job(name=name, timeout=10)
        return self.jobs.get_custom_job(name=name, timeout=10)

    def _show_trials(self, result: RunResult, job: Any) -> None:
        """The trial table, and the trial job-events chose (from the run record it updates
        once the outcome is known)."""
        from retrain.cli.runs import run_records

        result.trials = trial_rows(job)
        # Only a judged model has a chosen trial: a failed tuning job has none to wait for.
        judged = result.kind in ("deployed", "rejected", "rolled_back")
        deadline = time.monotonic() + (RECORD_WAIT_S if judged else 0.0)
        while result.chosen is None and time.monotonic() < deadline:
            for record in run_records(self.env, self.config, result.pipeline):
                if record.get("run_id") == result.run_id and record.get("trial"):
                    result.chosen = record["trial"]
            if result.chosen is None:
                time.sleep(0.2)
        metric = job.study_spec.metrics[0].metric_id
        chosen = str(result.chosen["id"]) if result.chosen else None
        table = "\n".join(
            f"           | {line}" for line in table_lines(result.trials, metric, chosen)
        )
        self.say(f"trials of {job.name.rsplit('/', 1)[-1]}:\n{table}")
        self.say(f"chosen: {_chosen_text(result.chosen, metric)}")

    def _finish(
        self,
        result: RunResult,
        doc: dict[str, Any],
        job: Any,
        dropped_at: float,
        routed_at: float | None,
        notified_at: float,
    ) -> None:
        result.kind = doc.get("kind", "-")
        result.metric = doc.get("metric")
        result.champion_metric = doc.get("champion_metric")
        result.version = doc.get("model_version")
        result.endpoint = doc.get("endpoint")
        result.detail = str(doc.get("reason") or doc.get("error") or "")
        if job is not None:
            created, began, ended = (
                _pb_ts(job.create_time),
                _pb_ts(job.start_time),
                _pb_ts(job.end_time),
            )
            if created and began:
                result.stages["submit -> running"] = began - created
            if began and ended:
                # A tuning job's time is all its trials', run parallel_trial_count at a time.
                stage = "trials" if TUNING_JOBS in job.name else "training"
                result.stages[stage] = ended - began
            if ended and routed_at:
                result.stages["end -> routed"] = routed_at - ended
        if routed_at:
            result.stages[f"routed -> {result.kind}"] = notified_at - routed_at
        result.stages["drop -> outcome"] = notified_at - dropped_at

    def _show_webhook(self, run_id: str) -> None:
        """What a Slack or Chat channel received for this run (localcloud's webhook sink)."""
        sink = self.stack.webhook
        if sink is None:
            return
        links = ("job: http", "logs: http", "model: http", "endpoint: http")
        deadline = time.monotonic() + 3  # both channels are sent by one delivery
        while time.monotonic() < deadline:
            for message in sink.received():
                text = str(message.get("text", "")) if isinstance(message, dict) else ""
                if run_id in text:
                    lines = [line for line in text.splitlines() if not line.startswith(links)]
                    body = "\n".join(f"           | {line}" for line in lines)
                    self.say(f"webhook message:\n{body}")
                    return
            time.sleep(0.1)

    def _print_job_lines(self, job_id: str, seen: set[str]) -> None:
        store = self.stack.log_store
        for entry in store.entries():
            labels = entry.get("resource", {}).get("labels", {})
            if labels.get("job_id") != job_id or entry["insertId"] in seen:
                continue
            seen.add(entry["insertId"])
            text = entry.get("textPayload") or entry.get("jsonPayload", {}).get("message", "")
            task = labels.get("task_name", "")
            if (
                task == "service"
                or text.startswith(("epoch", "error", "warning", "no GPU"))
                or entry.get("severity") in ("WARNING", "ERROR")
            ):
                self.say(f"  {task}: {text}")

    def _pull(self, topic: str) -> list[Any]:
        from google.api_core import exceptions

        try:
            response = self.subscriber.pull(
                request={
                    "subscription": self.subscriptions[topic],
                    "max_messages": 50,
                    "return_immediately": True,  # the follow loop polls; never block it
                },
                timeout=5,
            )
        except exceptions.DeadlineExceeded:
            return []
        if response.received_messages:
            self.subscriber.acknowledge(
                request={
                    "subscription": self.subscriptions[topic],
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )
        return [m.message for m in response.received_messages]

    def predict_accuracy(
        self, held_out: list[dict[str, Any]], pipeline: str = PIPELINE
    ) -> tuple[float, float]:
        """Held-out accuracy through the pipeline's endpoint, and the seconds the predict
        call took."""
        from retrain.cli.runs import predict

        instances = [{k: v for k, v in row.items() if k != "digit"} for row in held_out]
        began = time.monotonic()
        answer = predict(self.env, pipeline, instances)
        took = time.monotonic() - began
        labels = [p.get("label") for p in answer["predictions"]]
        correct = sum(
            1 for row, label in zip(held_out, labels, strict=True) if label == row["digit"]
        )
        accuracy = correct / len(held_out)
        self.say(
            f"predicted {len(held_out)} held-out rows through the {pipeline} endpoint in {took:.2f}s: "
            f"accuracy {accuracy:.3f} (model version {answer.get('model_version_id')})"
        )
        return accuracy, took


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def _pb_ts(value: Any) -> float | None:
    if not value or getattr(value, "year", 1970) <= 1970:
        return None
    return float(value.timestamp())


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value or "none")


def _chosen_text(chosen: dict[str, Any] | None, metric: str | None = None) -> str:
    """`trial 2 (hidden_units=128,64, lr=0.01873)`, with `, val_accuracy 0.9815` if asked."""
    if not chosen:
        return "no trial (the run record names none)"
    parameters = ", ".join(
        f"{name}={value_text(value)}" for name, value in sorted(chosen["parameters"].items())
    )
    value = f", {metric} {_num(chosen.get('metric'))}" if metric else ""
    return f"trial {chosen['id']} ({parameters}){value}"


def _summary(results: list[RunResult], started: float) -> None:
    print("\nsummary")
    for result in results:
        kind = "tuning job" if TUNING_JOBS in result.job else "job"
        print(
            f"  {result.pipeline} {result.batch}: run {result.run_id}, "
            f"{kind} {result.job.rsplit('/', 1)[-1]}, state {result.state}"
        )
        print(f"    outcome: {result.kind}" + (f" ({result.detail})" if result.detail else ""))
        metric, champion = _num(result.metric), _num(result.champion_metric)
        print(f"    validation metric: {metric}   champion before: {champion}")
        if result.trials:
            succeeded = sum(1 for t in result.trials if t.state == "SUCCEEDED")
            print(
                f"    trials: {len(result.trials)} ({succeeded} succeeded); chosen: "
                + _chosen_text(result.chosen)
            )
        print(f"    model version: {result.version}   endpoint: {result.endpoint}")
        if result.accuracy is not None:
            print(f"    accuracy on held-out rows through the endpoint: {result.accuracy:.3f}")
        for stage, seconds in result.stages.items():
            print(f"    {stage:<22} {seconds:7.2f}s")
    print(f"  total: {time.monotonic() - started:.1f}s")
