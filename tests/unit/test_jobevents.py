"""The job-events handler over fakes of its ports: deploy the good model, tell people
about the rest, exactly once however often a job end arrives."""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retrain.config import parse_config
from retrain.errors import InvalidEvent, PermanentError, TransientError
from retrain.events import JobEnded, RetrainRequested, Tick
from retrain.jobevents import JobEvents, is_stockout, resource_id
from retrain.ledger import Ledger
from retrain.logs import Logger
from retrain.planner import RunPlan
from retrain.ports import (
    Deployed,
    DeployFailed,
    EndpointState,
    JobInfo,
    ModelVersion,
    Prediction,
    VersionSpec,
)
from tests.fakes import SAMPLE_CONFIG, FakeTraining, MemoryStateStore, fake_ports

CONFIG = (
    SAMPLE_CONFIG
    + """
[pipelines.churn.deploy]
model = "churn"
endpoint = "churn"
serving_image_uri = "us-docker.pkg.dev/acme-ml/retrain/serving:latest"
service_account = "serving@acme-ml.iam.gserviceaccount.com"
metric = "val_accuracy"
min_value = 0.8
must_beat_champion = true
canary_percent = @CANARY@
canary_seconds = 600

[pipelines.churn.notify]
webhook_env = "CHURN_WEBHOOK_URL"
on = ["failed", "cancelled", "rejected", "rolled_back", "deployed"]
"""
)
MODEL_DIR = "gs://acme-artifacts/runs/churn/{run}/model/"


class FakeRegistry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.versions: list[ModelVersion] = []
        self.uploads: list[VersionSpec] = []

    def find_version(self, model_id: str, labels: Mapping[str, str]) -> ModelVersion | None:
        with self.lock:
            for v in self.versions:
                if all(v.labels.get(k) == val for k, val in labels.items()):
                    return v
        return None

    def by_alias(self, model_id: str, alias: str) -> ModelVersion | None:
        with self.lock:
            return next((v for v in self.versions if alias in v.aliases), None)

    def upload(self, spec: VersionSpec) -> ModelVersion:
        with self.lock:
            self.uploads.append(spec)
            version = ModelVersion(
                model=f"projects/acme-ml/locations/us-central1/models/{spec.model_id}",
                version_id=str(len(self.versions) + 1),
                labels=dict(spec.labels),
                metric=spec.metric_value,
                artifact_uri=spec.artifact_uri,
            )
            self.versions.append(version)
            return version

    def set_alias(self, version: ModelVersion, alias: str) -> None:
        with self.lock:
            self.versions = [
                replace(
                    v,
                    aliases=tuple(a for a in v.aliases if a != alias)
                    + ((alias,) if v.name == version.name else ()),
                )
                for v in self.versions
            ]


class FakeEndpoints:
    NAME = "projects/acme-ml/locations/us-central1/endpoints/churn"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: EndpointState | None = None
        self.deploys: list[tuple[str, dict[str, int]]] = []
        self.service_accounts: list[str | None] = []
        self.ids = itertools.count(100)
        self.broken: set[str] = set()  # version names whose smoke test fails
        self.undeployable: set[str] = set()  # version names whose deploy fails
        self.answers: list[str] = []  # deployed ids that answered predictions

    def ensure(self, endpoint_id: str, display_name: str) -> EndpointState:
        with self.lock:
            if self.state is None:
                self.state = EndpointState(self.NAME)
            return self.state

    def get(self, name: str) -> EndpointState:
        assert self.state is not None
        return self.state

    def deploy(self, endpoint, version, machine_type, traffic, service_account=None) -> str:
        with self.lock:
            self.service_accounts.append(service_account)
            self.deploys.append((version.name, dict(traffic)))
            if version.name in self.undeployable:
                raise DeployFailed("serving container exited with code 1")
            assert self.state is not None
            new_id = str(next(self.ids))
            split = {(new_id if k == "0" else k): v for k, v in traffic.items()}
            deployed = (*self.state.deployed, Deployed(new_id, version.model, version.version_id))
            self.state = EndpointState(self.NAME, deployed, split)
            return new_id

    def undeploy(self, endpoint, deployed_id, traffic) -> None:
        with self.lock:
            assert self.state is not None
            remaining = tuple(d for d in self.state.deployed if d.id != deployed_id)
            assert set(traffic) == {d.id for d in remaining}
            self.state = EndpointState(self.NAME, remaining, dict(traffic))

    def set_traffic(self, endpoint, traffic) -> None:
        with self.lock:
            assert self.state is not None
            self.state = EndpointState(self.NAME, self.state.deployed, dict(traffic))

    def predict(self, endpoint, instances) -> Prediction:
        assert self.state is not None
        live = [k for k, v in self.state.traffic.items() if v > 0]
        chosen = max(live, key=lambda k: self.state.traffic[k])  # type: ignore[union-attr]
        if self.answers:
            chosen = self.answers.pop(0)
        model = next(d for d in self.state.deployed if d.id == chosen)
        if f"{model.model}@{model.version_id}" in self.broken:
            raise PermanentError("DeployedModel refused the request: bad input")
        return Prediction(chosen, tuple({"label": 1} for _ in instances))

    def serving(self) -> dict[str, int]:
        assert self.state is not None
        return {k: v for k, v in self.state.traffic.items() if v}


class FakeBlobs:
    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def read_text(self, uri: str) -> tuple[str, int]:
        if uri not in self.files:
            raise PermanentError(f"read {uri}: 404 No such object")
        return self.files[uri], 1

    def generation(self, uri: str) -> int | None:
        return 1 if uri in self.files else None


class FakeLogs:
    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {}

    def tail(self, job_id: str, lines: int) -> list[str]:
        return self.lines.get(job_id, [])[-lines:]


class FakeNotifier:
    channel = "webhook"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.texts: list[str] = []
        self.fail: list[Exception] = []
        self.lock = threading.Lock()

    def send(self, document: Mapping[str, Any], text: str) -> None:
        with self.lock:
            if self.fail:
                raise self.fail.pop(0)
            self.sent.append(dict(document))
            self.texts.append(text)

    def kinds(self) -> list[str]:
        return [d["kind"] for d in self.sent]


class World:
    def __init__(self, canary: int = 0):
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        self.config = parse_config(CONFIG.replace("@CANARY@", str(canary)), "pipelines.toml")
        self.store = MemoryStateStore(clock=lambda: self.now)
        self.ledger = Ledger(self.store)
        self.training = FakeTraining()
        self.registry = FakeRegistry()
        self.endpoints = FakeEndpoints()
        self.blobs = FakeBlobs()
        self.logs = FakeLogs()
        self.notifier = FakeNotifier()
        self.stream = io.StringIO()
        self.handler = JobEvents(
            lambda: fake_ports(
                self.config,
                self.ledger,
                self.training,
                notifiers=lambda _p: [self.notifier],
                registry=self.registry,
                endpoints=self.endpoints,
                blobs=self.blobs,
                job_logs=self.logs,
            ),
            Logger(self.stream),
            clock=lambda: self.now,
            sleep=lambda _s: None,
        )
        self.runs = itertools.count(1)

    def job(self, state: str, metric: float | None = 0.9, error: str | None = None) -> JobInfo:
        """A submitted run of `churn` whose job is now in `state`, with its model dir."""
        run_id = f"run-{next(self.runs)}"
        plan = RunPlan("churn", run_id, "marker", "gs://acme-landing/churn/d1/")
        stored = self.ledger.claim_run(plan, self.now)
        assert stored is not None
        from retrain.jobspec import build_job

        spec = build_job(self.config.pipelines["churn"], plan, "gs://acme-artifacts/runs")
        job = self.training.submit(spec)
        self.ledger.update_run(
            "churn", run_id, stored, {"status": "submitted", "job_name": job.name}
        )
        self.training.set_state(job.name, state, error)
        directory = MODEL_DIR.format(run=run_id)
        if metric is not None:
            self.blobs.files[directory + "metrics.json"] = json.dumps({"val_accuracy": metric})
        self.blobs.files[directory + "smoke.json"] = json.dumps({"instances": [{"a": 1}]})
        return self.training.get(job.name)

    def end(self, job: JobInfo, source: str = "log", event_id: str = "ev-1"):
        return self.handler.handle(JobEnded(event_id, job.job_id, source))

    def run_record(self, job: JobInfo) -> dict[str, Any]:
        return self.store.doc(f"runs/churn/{job.labels['retrain-run']}.json")


def test_a_good_model_is_registered_deployed_made_champion_and_announced():
    world = World()
    job = world.job("JOB_STATE_SUCCEEDED", metric=0.93)
    (outcome,) = world.end(job)
    assert outcome.action == "deployed"
    (spec,) = world.registry.uploads
    assert spec.artifact_uri == MODEL_DIR.format(run="run-1")
    assert spec.labels["retrain-run"] == "run-1" and spec.metric_value == 0.93
    (version,) = world.registry.versions
    assert version.aliases == ("champion",)
    assert world.endpoints.serving() == {"100": 100}
    assert world.endpoints.service_accounts == ["serving@acme-ml.iam.gserviceaccount.com"]
    (note,) = world.notifier.sent
    assert note["kind"] == "deployed" and note["metric"] == 0.93
    assert note["model_version"] == version.name and note["endpoint"] == FakeEndpoints.NAME
    assert note["data_uri"] == "gs://acme-landing/churn/d1/"
    record = world.run_record(job)
    assert record["outcome"] == "deployed" and record["model_version"] == version.name
    # The next, better run replaces it: the old deployment is undeployed.
    better = world.job("JOB_STATE_SUCCEEDED", metric=0.95)
    assert world.end(better)[0].action == "deployed"
    assert world.endpoints.serving() == {"101": 100}
    assert [d.id for d in world.endpoints.state.deployed] == ["101"]
    assert world.registry.by_alias("churn", "champion").version_id == "2"


def test_below_threshold_or_not_better_than_the_champion_is_rejected():
    world = World()
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))
    before = world.endpoints.state
    low = world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.5))[0]
    assert low.action == "rejected" and "does not reach the threshold" in low.detail
    worse = world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.85))[0]
    assert worse.action == "rejected" and "not better than the champion's 0.9" in worse.detail
    assert len(world.registry.versions) == 1 and world.endpoints.state == before
    assert world.notifier.kinds() == ["deployed", "rejected", "rejected"]
    assert world.notifier.sent[2]["champion_metric"] == 0.9


def test_missing_metrics_reject_the_run_instead_of_crashing():
    world = World()
    outcome = world.end(world.job("JOB_STATE_SUCCEEDED", metric=None))[0]
    assert outcome.action == "rejected" and "metrics.json is missing" in outcome.detail
    assert world.registry.uploads == [] and world.endpoints.state is None


def test_smoke_failure_rolls_back_and_the_previous_version_keeps_serving():
    world = World()
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))
    world.endpoints.broken.add("projects/acme-ml/locations/us-central1/models/churn@2")
    outcome = world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.95))[0]
    assert outcome.action == "rolled_back" and "bad input" in outcome.detail
    assert world.endpoints.serving() == {"100": 100}
    assert [d.id for d in world.endpoints.state.deployed] == ["100"]
    assert world.registry.by_alias("churn", "champion").version_id == "1"
    assert world.notifier.kinds() == ["deployed", "rolled_back"]


def test_a_model_that_cannot_be_deployed_is_rolled_back():
    world = World()
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))
    world.endpoints.undeployable.add("projects/acme-ml/locations/us-central1/models/churn@2")
    outcome = world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.95))[0]
    assert outcome.action == "rolled_back" and "exited with code 1" in outcome.detail
    assert world.endpoints.serving() == {"100": 100}


def test_failed_job_notifies_with_error_log_tail_and_links():
    world = World()
    job = world.job("JOB_STATE_FAILED", error="replica workerpool0-0 exited with code 1")
    world.logs.lines[job.job_id] = [f"workerpool0-0: line {i}" for i in range(30)]
    assert world.end(job)[0].action == "failed"
    (note,) = world.notifier.sent
    assert note["error"] == "replica workerpool0-0 exited with code 1"
    assert note["log_tail"][-1] == "workerpool0-0: line 29" and len(note["log_tail"]) == 20
    assert job.job_id in note["links"]["job"] and "logs" in note["links"]
    assert "line 29" in world.notifier.texts[0]
    cancelled = world.job("JOB_STATE_CANCELLED")
    assert world.end(cancelled)[0].action == "cancelled"
    assert world.notifier.kinds() == ["failed", "cancelled"]


def test_stockout_resubmits_on_each_fallback_before_notifying():
    world = World()
    job = world.job("JOB_STATE_FAILED", error="RESOURCE_EXHAUSTED: resources are insufficient")
    outcome = world.end(job)[0]
    assert outcome.action == "resubmitted" and "n1-standard-8" in outcome.detail
    assert world.notifier.sent == []
    retry = world.training.get(outcome.job_name)
    assert retry.labels["retrain-attempt"] == "1"
    spec = world.training.specs[retry.name]
    assert spec.worker_pools[0].machine.accelerator_type == "NVIDIA_TESLA_T4"
    assert world.run_record(job)["job_name"] == retry.name
    assert world.end(job, event_id="ev-dup")[0].action == "duplicate"
    assert len(world.training.jobs) == 2
    world.training.set_state(retry.name, "JOB_STATE_FAILED", "RESOURCE_EXHAUSTED again")
    assert world.end(world.training.get(retry.name))[0].action == "failed"  # no more fallbacks
    assert world.notifier.kinds() == ["failed"]


def test_concurrent_duplicates_from_every_source_do_everything_once():
    world = World()
    job = world.job("JOB_STATE_SUCCEEDED", metric=0.93)
    events = [JobEnded(f"ev-{i}", job.job_id, ("log", "incident")[i % 2]) for i in range(40)]
    events += [Tick(f"tick-{i}") for i in range(10)]

    def deliver(event):
        for _ in range(100):
            try:
                return world.handler.handle(event)
            except TransientError:
                continue
        raise AssertionError("never acknowledged")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(deliver, events))
    assert len(world.registry.uploads) == 1
    assert len(world.endpoints.deploys) == 1
    assert world.notifier.kinds() == ["deployed"]


def test_a_tick_handles_job_ends_that_were_never_delivered_and_ignores_running_jobs():
    world = World()
    ended = world.job("JOB_STATE_FAILED", error="boom")
    running = world.job("JOB_STATE_RUNNING")
    outcomes = world.handler.handle(Tick("tick-1"))
    assert [o.action for o in outcomes] == ["failed"]
    assert world.notifier.kinds() == ["failed"]
    assert world.handler.handle(Tick("tick-2")) == []
    assert world.end(running)[0].action == "ignored"
    assert world.end(ended)[0].action == "duplicate"


def test_a_canary_takes_its_share_and_a_later_tick_promotes_it():
    world = World(canary=10)
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))  # first: all traffic
    assert world.endpoints.serving() == {"100": 100}
    world.endpoints.answers = ["100", "100", "101"]  # the canary answers the third request
    outcome = world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.95))[0]
    assert outcome.action == "deployed" and "10% canary" in outcome.detail
    assert world.endpoints.serving() == {"101": 10, "100": 90}
    assert world.registry.by_alias("churn", "champion").version_id == "2"
    assert world.notifier.sent[-1]["canary_percent"] == 10
    world.now += timedelta(seconds=599)
    assert world.handler.handle(Tick("t1")) == []
    world.now += timedelta(seconds=2)
    world.endpoints.answers = ["101"]
    (promoted,) = world.handler.handle(Tick("t2"))
    assert promoted.action == "promoted"
    assert world.endpoints.serving() == {"101": 100}
    assert [d.id for d in world.endpoints.state.deployed] == ["101"]
    assert world.handler.handle(Tick("t3")) == []


def test_an_expired_lease_is_taken_over_without_repeating_finished_steps():
    world = World()
    job = world.job("JOB_STATE_SUCCEEDED", metric=0.93)
    world.notifier.fail = [TransientError("webhook unreachable")]
    with pytest.raises(TransientError):
        world.end(job)
    assert len(world.endpoints.deploys) == 1 and world.notifier.sent == []
    assert world.end(job, event_id="ev-2")[0].action == "deployed"
    assert len(world.registry.uploads) == 1 and len(world.endpoints.deploys) == 1
    assert world.notifier.kinds() == ["deployed"]


def test_a_fresh_lease_held_by_another_delivery_asks_for_a_retry():
    world = World()
    job = world.job("JOB_STATE_SUCCEEDED", metric=0.93)
    world.store.create(
        f"handled/churn/{job.job_id}.json",
        {"step": "claimed", "lease_until": (world.now + timedelta(minutes=5)).isoformat()},
    )
    with pytest.raises(TransientError, match="being handled by another delivery"):
        world.end(job)
    world.now += timedelta(minutes=6)
    assert world.end(job)[0].action == "deployed"


def test_foreign_jobs_and_events_change_nothing():
    world = World()
    spec_job = world.training.submit(
        replace(
            next(iter(world.training.specs.values()), None) or _bare_spec(world),
            labels={"team": "other"},
        )
    )
    world.training.set_state(spec_job.name, "JOB_STATE_SUCCEEDED")
    assert world.end(world.training.get(spec_job.name))[0].action == "ignored"
    with pytest.raises(InvalidEvent, match="not a job event"):
        world.handler.handle(RetrainRequested("r1", "churn"))
    assert world.store.keys() == [] and world.notifier.sent == []


def _bare_spec(world: World):
    from retrain.jobspec import build_job

    plan = RunPlan("churn", "x", "marker", "gs://acme-landing/churn/")
    return build_job(world.config.pipelines["churn"], plan, "gs://acme-artifacts/runs")


def test_stockout_and_resource_id_helpers():
    assert is_stockout("The zone does not have enough resources available")
    assert is_stockout("RESOURCE_EXHAUSTED")
    assert not is_stockout("replica exited with code 1") and not is_stockout(None)
    assert resource_id("Churn_Model v2") == "churn-model-v2"
    assert resource_id("2fast") == "r-2fast"


@pytest.mark.parametrize(
    ("state", "metric", "kind"),
    [
        ("JOB_STATE_SUCCEEDED", 0.93, "deployed"),
        ("JOB_STATE_SUCCEEDED", 0.5, "rejected"),
        ("JOB_STATE_FAILED", None, "failed"),
        ("JOB_STATE_CANCELLED", None, "cancelled"),
    ],
)
def test_the_run_record_holds_the_outcome_before_the_notification_goes_out(
    state: str, metric: float | None, kind: str
):
    world = World()
    job = world.job(state, metric=metric, error="boom" if state == "JOB_STATE_FAILED" else None)
    seen_by_reader: list[Any] = []
    send = world.notifier.send

    def send_and_look(document: Mapping[str, Any], text: str) -> None:
        # What someone who reads the note and runs `retrain runs` at once would see.
        seen_by_reader.append(world.run_record(job).get("outcome"))
        send(document, text)

    world.notifier.send = send_and_look  # type: ignore[method-assign]
    world.end(job)
    assert world.notifier.kinds() == [kind] and seen_by_reader == [kind]


def test_a_crash_between_the_recorded_outcome_and_the_notification_still_notifies_once():
    world = World()
    job = world.job("JOB_STATE_SUCCEEDED", metric=0.93)
    world.notifier.fail = [TransientError("webhook unreachable")]
    with pytest.raises(TransientError):
        world.end(job)
    assert world.run_record(job)["outcome"] == "deployed" and world.notifier.sent == []
    world.end(job, event_id="ev-2")  # the redelivery
    world.end(job, event_id="ev-3")  # and a late duplicate
    assert world.notifier.kinds() == ["deployed"] and len(world.endpoints.deploys) == 1


FIRST = """[pipelines.aaa-first]
bucket = "acme-landing"
prefix = "aaa/"
trigger = "each"

[pipelines.aaa-first.training]
image_uri = "us-docker.pkg.dev/acme-ml/retrain/trainer:latest"
machine_type = "n1-standard-8"

"""


def test_a_pipeline_whose_jobs_cannot_be_listed_keeps_no_other_from_its_tick():
    world = World()
    world.config = parse_config(
        CONFIG.replace("@CANARY@", "0").replace(
            "[pipelines.churn]", FIRST + "[pipelines.churn]", 1
        ),
        "pipelines.toml",
    )
    ended = world.job("JOB_STATE_FAILED", error="boom")
    find = world.training.find

    def find_or_fail(labels: Mapping[str, str], *, active_only: bool = False) -> list[JobInfo]:
        if labels.get("retrain-pipeline") == "aaa-first":
            raise TransientError("list CustomJobs: 503 unavailable")
        return find(labels, active_only=active_only)

    world.training.find = find_or_fail  # type: ignore[method-assign]
    outcomes = world.handler.handle(Tick("tick-1"))
    assert [o.action for o in outcomes] == ["waiting", "failed"]
    assert "503 unavailable" in outcomes[0].detail
    assert world.notifier.kinds() == ["failed"] and world.end(ended)[0].action == "duplicate"


def test_a_takeover_after_the_upload_keeps_the_figures_the_gate_compared(monkeypatch):
    world = World()
    world.end(world.job("JOB_STATE_SUCCEEDED", metric=0.9))  # the champion
    job = world.job("JOB_STATE_SUCCEEDED", metric=0.95)
    upload = world.registry.upload

    def upload_then_die(spec):
        upload(spec)
        raise SystemExit("killed after the upload")

    monkeypatch.setattr(world.registry, "upload", upload_then_die)
    with pytest.raises(SystemExit):
        world.end(job)
    monkeypatch.setattr(world.registry, "upload", upload)
    world.now += timedelta(minutes=2)  # the dead delivery's lease lapses
    assert world.end(job, event_id="ev-2")[0].action == "deployed"
    record = world.run_record(job)
    assert (record["metric"], record["champion_metric"]) == (0.95, 0.9)
    assert record["basis"] == "recorded"
    assert world.notifier.sent[-1]["champion_metric"] == 0.9
    assert len(world.registry.versions) == 2


def test_a_notification_whose_sender_died_before_sending_is_sent_by_the_next_delivery(
    monkeypatch,
):
    world = World()
    job = world.job("JOB_STATE_FAILED", error="boom")
    send = world.notifier.send

    def die_before_sending(document, text):
        raise SystemExit("killed before the webhook call")

    monkeypatch.setattr(world.notifier, "send", die_before_sending)
    with pytest.raises(SystemExit):
        world.end(job)
    monkeypatch.setattr(world.notifier, "send", send)
    assert world.notifier.sent == []
    with pytest.raises(TransientError):  # its claim may still be sending: not yet
        world.end(job, event_id="ev-2")
    world.now += timedelta(minutes=2)  # the dead delivery's leases lapse
    world.end(job, event_id="ev-3")
    world.end(job, event_id="ev-4")
    assert world.notifier.kinds() == ["failed"]
