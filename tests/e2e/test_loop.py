"""End to end on localcloud: the demo pipeline (few epochs), every piece real — fake-gcs-
server notifications, the Pub/Sub server, the eventarc bridge, both functions under
functions-framework, the Vertex emulator running the real trainer and serving container,
the log router with the shared sink filter."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import aiplatform_v1, pubsub_v1

from localcloud.demo.run import make_data, split
from localcloud.stack import DEMO_CONFIG, Options, Stack
from localcloud.vertex.jobs import RERUN_MESSAGE
from localcloud.webhook import WebhookSink
from retrain.cli.runs import load_config, predict, run_records, storage, vertex

TIMEOUT_S = 240


class Loop:
    def __init__(self, directory: Path, webhook: WebhookSink):
        config = directory.parent / "pipelines.toml"
        config.write_text(
            DEMO_CONFIG.read_text()
            .replace("epochs = 30", "epochs = 8")
            .replace("must_beat_champion = true", "must_beat_champion = false")
        )
        self.stack = Stack(
            Options(dir=directory, config=config, tick_seconds=1.0,
                    extra_env={"RETRAIN_WEBHOOK_URL": webhook.url}),
        )  # fmt: skip
        self.directory = directory
        self.up()

    def up(self) -> None:
        self.env = self.stack.up()
        self.config = load_config(self.env)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.subscription = self.subscriber.subscription_path(
            self.stack.project, "e2e-notifications"
        )
        try:
            self.subscriber.create_subscription(
                request={"name": self.subscription,
                         "topic": f"projects/{self.stack.project}/topics/retrain-notifications"}
            )  # fmt: skip
        except Exception as err:  # kept across down/up: the subscription already exists
            if "exists" not in str(err).lower():
                raise
        self.notes: list[dict[str, Any]] = []

    def down(self) -> None:
        self.stack.down()

    def drop(self, folder: str, parts: list[list[dict[str, Any]]], marker: bool = True) -> str:
        bucket = storage(self.env).bucket("demo-landing")
        for index, rows in enumerate(parts):
            path = self.directory.parent / f"{folder}-{index}.csv"
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            bucket.blob(f"digits/{folder}/part-{index}.csv").upload_from_filename(str(path))
        if marker:
            bucket.blob(f"digits/{folder}/_SUCCESS").upload_from_string(b"")
        return f"gs://demo-landing/digits/{folder}/"

    def runs_for(self, data_uri: str) -> list[dict[str, Any]]:
        return [
            r for r in run_records(self.env, self.config, "digits") if r.get("data_uri") == data_uri
        ]

    def outcome(self, run_id_of: Any, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.subscriber.pull(
                request={"subscription": self.subscription, "max_messages": 20}, timeout=10
            )
            if response.received_messages:
                self.subscriber.acknowledge(
                    request={"subscription": self.subscription,
                             "ack_ids": [m.ack_id for m in response.received_messages]}
                )  # fmt: skip
                self.notes += [json.loads(m.message.data) for m in response.received_messages]
            run_id = run_id_of()
            for note in self.notes:
                if run_id and str(note.get("run") or note.get("run_id")) == run_id:
                    return note
            time.sleep(0.5)
        raise AssertionError(f"no notification within {timeout}s; received {self.notes}")

    def job(self, name: str) -> aiplatform_v1.CustomJob:
        client = vertex(self.env, "us-central1").client("JobServiceClient")
        return client.get_custom_job(name=name)


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookSink]:
    with WebhookSink(route="/hook") as receiver:
        yield receiver


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, webhook: WebhookSink) -> Iterator[Loop]:
    world = Loop(tmp_path_factory.mktemp("e2e") / "localcloud", webhook)
    yield world
    world.down()


@pytest.fixture(scope="module")
def data() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return make_data()


def _run_id(loop: Loop, uri: str) -> Any:
    def current() -> str | None:
        runs = loop.runs_for(uri)
        return runs[0]["run_id"] if runs else None

    return current


def test_drop_gives_one_job_that_is_deployed_and_predicts(loop: Loop, data: Any) -> None:
    train, held_out = data
    uri = loop.drop("batch-1", split(train, 3))
    note = loop.outcome(_run_id(loop, uri))
    assert note["kind"] == "deployed", note
    (record,) = loop.runs_for(uri)
    assert loop.job(record["job_name"]).state == aiplatform_v1.JobState.JOB_STATE_SUCCEEDED
    instances = [{k: v for k, v in row.items() if k != "digit"} for row in held_out[:60]]
    answer = predict(loop.env, "digits", instances)
    correct = sum(
        p["label"] == row["digit"] for p, row in zip(answer["predictions"], held_out, strict=False)
    )
    assert correct / len(instances) >= 0.8


def test_retrain_request_over_pubsub_does_the_same(loop: Loop) -> None:
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(loop.stack.project, "retrain-requests")
    uri = "gs://demo-landing/digits/batch-1/"
    message_id = publisher.publish(
        topic,
        json.dumps(
            {"pipeline": "digits", "data_uri": uri, "hyperparameters": {"lr": 0.005}}
        ).encode(),
    ).result(timeout=30)

    def run_id() -> str | None:
        runs = [r for r in loop.runs_for(uri) if r.get("trigger") == "request"]
        return runs[0]["run_id"] if runs else None

    note = loop.outcome(run_id)
    assert note["kind"] == "deployed", note
    (record,) = [r for r in loop.runs_for(uri) if r.get("trigger") == "request"]
    assert message_id in record["events"]
    assert (
        "--lr=0.005"
        in loop.job(record["job_name"]).job_spec.worker_pool_specs[0].container_spec.args
    )


def test_bad_csv_fails_the_job_and_the_webhook_carries_the_trainer_error(
    loop: Loop, webhook: WebhookSink
) -> None:
    broken = [{"p00": "1", "p01": "x", "digit": "d1"}, {"p00": "2", "p01": "3", "digit": "d2"}]
    uri = loop.drop("broken", [broken])
    note = loop.outcome(_run_id(loop, uri))
    assert note["kind"] == "failed", note
    texts = [json.dumps(body) for body in webhook.received()]
    assert any("error:" in text and "broken" in text and "failed" in text for text in texts), texts


def _job_lines(loop: Loop, job_name: str, task_name: str) -> list[str]:
    job_id = job_name.rsplit("/", 1)[1]
    assert loop.stack.log_store is not None
    return [
        str(e["jsonPayload"]["message"])
        for e in loop.stack.log_store.entries()
        if e["resource"]["labels"].get("job_id") == job_id
        and e["resource"]["labels"].get("task_name") == task_name
    ]


@pytest.mark.slow
def test_down_and_up_in_the_middle_of_training_rerun_the_job_once(loop: Loop) -> None:
    # Enough epochs that the job is still training when `down` stops it.
    uri = "gs://demo-landing/digits/batch-1/"
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(loop.stack.project, "retrain-requests")
    request = {"pipeline": "digits", "data_uri": uri, "hyperparameters": {"epochs": 200}}
    message_id = publisher.publish(topic, json.dumps(request).encode()).result(timeout=30)

    def record() -> dict[str, Any] | None:
        found = [r for r in loop.runs_for(uri) if message_id in r.get("events", [])]
        return found[0] if found and found[0].get("job_name") else None

    deadline = time.monotonic() + TIMEOUT_S
    while not (record() and "Job is running." in _job_lines(loop, record()["job_name"], "service")):
        assert time.monotonic() < deadline, "the job never started running"
        time.sleep(0.2)
    job_name = record()["job_name"]  # type: ignore[index]
    loop.down()
    loop.up()

    note = loop.outcome(lambda: (record() or {}).get("run_id"), timeout=2 * TIMEOUT_S)
    # The job in flight at `down` ran again from the start under its name after `up`, and
    # ended once: deployed, with one run record and one job.
    assert note["kind"] == "deployed", note
    assert record()["job_name"] == job_name  # type: ignore[index]
    assert loop.job(job_name).state == aiplatform_v1.JobState.JOB_STATE_SUCCEEDED
    service = _job_lines(loop, job_name, "service")
    assert service.count(RERUN_MESSAGE) == 1, service
    assert service.count("Job completed successfully.") == 1, service
    assert not [line for line in service if line.startswith("Job failed")], service
    assert len([r for r in loop.runs_for(uri) if message_id in r.get("events", [])]) == 1


def _child_pids(loop: Loop, what: str) -> list[int]:
    return [
        int(record["pid"])
        for record in (json.loads(p.read_text()) for p in loop.stack.children.directory.iterdir())
        if str(record["what"]).startswith(what)
    ]


@pytest.mark.slow
def test_a_killed_function_and_a_killed_model_server_are_restarted(loop: Loop, data: Any) -> None:
    train, held_out = data
    instances = [{k: v for k, v in row.items() if k != "digit"} for row in held_out[:5]]
    assert predict(loop.env, "digits", instances)["predictions"]
    (model_server,) = _child_pids(loop, "model server")
    os.killpg(model_server, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            if predict(loop.env, "digits", instances)["predictions"]:
                break
        except exceptions.GoogleAPICallError:
            pass  # UNAVAILABLE while its server restarts
        assert time.monotonic() < deadline, "the endpoint never answered again"
        time.sleep(0.5)
    assert _child_pids(loop, "model server") != [model_server]

    (trigger,) = _child_pids(loop, "function trigger")
    os.killpg(trigger, signal.SIGKILL)
    uri = loop.drop("after-a-crash", split(train[:400], 2))
    note = loop.outcome(_run_id(loop, uri))
    assert note["kind"] == "deployed", note
    assert len(loop.runs_for(uri)) == 1
    assert _child_pids(loop, "function trigger") != [trigger]
