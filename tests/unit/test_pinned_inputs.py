"""Pinned inputs: data windows, the manifest the trigger writes before submitting, the
arguments the job gets (manifest, champion, eval set) and reruns on exactly the same
inputs. The trigger runs over fakes of its ports."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from retrain.config import DataWindow, parse_config
from retrain.errors import ConfigError, InvalidRequest, TransientError
from retrain.events import ObjectFinalized, RetrainRequested, Tick
from retrain.inputs import covered_objects, in_window, parse_manifest
from retrain.jobspec import build_job
from retrain.ledger import Ledger
from retrain.logs import Logger
from retrain.planner import RunPlan
from retrain.ports import ModelVersion, ObjectVersion
from retrain.trigger import Trigger
from tests.fakes import FakeTraining, MemoryStateStore, fake_ports

CONFIG = """
[defaults]
project = "acme-ml"
state_uri = "gs://acme-state/state"
output_uri = "gs://acme-artifacts/runs"

[guards]
allowed_buckets = ["acme-landing"]

[pipelines.churn]
bucket = "acme-landing"
prefix = "churn/"
include = ["*.csv"]
trigger = "marker"

[pipelines.churn.training]
image_uri = "trainer:latest"
machine_type = "n1-standard-8"
args = ["--label=churned"]
{data}

[pipelines.churn.training.hyperparameters]
lr = 0.001

[pipelines.churn.deploy]
model = "churn"
endpoint = "churn"
serving_image_uri = "serving:latest"
{eval}
"""
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def config(data: str = "", eval_uri: str = "") -> str:
    return CONFIG.format(data=data, eval=eval_uri)


class MemoryObjects:
    """The DataObjects port over a dict: a bucket with object versioning keeps every
    generation, one without keeps only the live one (as GCS does)."""

    def __init__(self, versioned: bool = True):
        self.versioned = versioned
        self.generations: dict[tuple[str, str], list[ObjectVersion]] = {}
        self.texts: dict[str, str] = {}
        self._next = 1000

    def put(self, uri: str, size: int = 10, created: datetime = NOW) -> ObjectVersion:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        self._next += 1
        version = ObjectVersion(bucket, name, self._next, size, created)
        kept = self.generations.setdefault((bucket, name), [])
        if not self.versioned:
            kept.clear()
        kept.append(version)
        return version

    def list(self, bucket: str, prefix: str) -> list[ObjectVersion]:
        return [
            versions[-1]
            for (b, name), versions in sorted(self.generations.items())
            if b == bucket and name.startswith(prefix) and versions
        ]

    def stat(self, bucket: str, name: str, generation: int) -> ObjectVersion | None:
        for version in self.generations.get((bucket, name), []):
            if version.generation == generation:
                return version
        return None

    def read_text(self, uri: str) -> str | None:
        return self.texts.get(uri)

    def create_text(self, uri: str, text: str) -> bool:
        if uri in self.texts:
            return False
        self.texts[uri] = text
        return True


class FakeRegistry:
    def __init__(self, champion: ModelVersion | None = None):
        self.champion = champion
        self.lookups = 0

    def by_alias(self, model_id: str, alias: str) -> ModelVersion | None:
        self.lookups += 1
        return self.champion if alias == "champion" and model_id == "churn" else None


class World:
    def __init__(self, text: str, champion: ModelVersion | None = None, versioned: bool = True):
        self.now = NOW
        self.config = parse_config(text, "pipelines.toml")
        self.store = MemoryStateStore(clock=lambda: self.now)
        self.training = FakeTraining()
        self.objects = MemoryObjects(versioned)
        self.registry = FakeRegistry(champion)
        self.stream = io.StringIO()
        self.trigger = Trigger(
            lambda: fake_ports(
                self.config,
                Ledger(self.store),
                self.training,
                objects=self.objects,
                registry=self.registry,  # type: ignore[arg-type]
            ),
            Logger(self.stream),
            clock=lambda: self.now,
            sleep=lambda _s: None,
        )

    def drop(self, name: str, size: int = 10) -> ObjectFinalized:
        version = self.objects.put(f"gs://acme-landing/{name}", size, self.now)
        event = ObjectFinalized(f"ev-{name}-{version.generation}", "acme-landing", name,
                                version.generation, size)  # fmt: skip
        self.trigger.handle(event)
        return event

    def runs(self) -> list[dict]:
        docs = [self.store.doc(key) for key in self.store.keys("runs/churn/")]
        return sorted(docs, key=lambda d: d["created_at"])

    def manifest(self, run: dict) -> list[dict]:
        return [json.loads(line) for line in self.objects.texts[run["data_manifest"]].splitlines()]


def args_of(world: World, run: dict) -> tuple[str, ...]:
    spec = world.training.specs[run["job_name"]]
    return spec.worker_pools[0].args


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "window"),
    [
        ("", DataWindow("batch")),
        ('data = "batch"', DataWindow("batch")),
        ('data = "all"', DataWindow("all")),
        ("data = { days = 30 }", DataWindow("days", 30)),
    ],
)
def test_data_windows_parse(line, window):
    assert parse_config(config(line), "p.toml").pipelines["churn"].training.data == window


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('data = "weekly"', "pipelines.churn.training.data:", "not 'weekly'"),
        ("data = 7", "pipelines.churn.training.data:", "not 7"),
        ("data = { days = 0 }", "pipelines.churn.training.data.days:", "at least 1"),
        ("data = { days = 1.5 }", "pipelines.churn.training.data.days:", "integer"),
        ("data = {}", "pipelines.churn.training.data.days:", "is required"),
        ("data = { weeks = 2 }", "pipelines.churn.training.data.weeks:", "unknown key"),
    ],
)
def test_bad_data_windows_name_the_key(line, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(config(line), "p.toml")
    assert key in str(err.value) and problem in str(err.value)


# --- which objects a window covers --------------------------------------------------------


def test_windows_select_matching_objects_created_up_to_the_run():
    pipeline = parse_config(config("data = { days = 30 }"), "p.toml").pipelines["churn"]
    objects = MemoryObjects()
    old = objects.put("gs://acme-landing/churn/2026-09/a.csv", created=NOW - timedelta(days=60))
    recent = objects.put("gs://acme-landing/churn/2026-11/b.csv", created=NOW - timedelta(days=3))
    objects.put("gs://acme-landing/churn/2026-11/_SUCCESS", size=0, created=NOW)
    objects.put("gs://acme-landing/churn/2026-11/notes.txt", created=NOW)
    objects.put("gs://acme-landing/churn/2026-11/empty.csv", size=0, created=NOW)
    later = objects.put("gs://acme-landing/churn/2026-11/c.csv", created=NOW + timedelta(hours=1))
    objects.put("gs://acme-landing/other/d.csv", created=NOW)
    run = RunPlan("churn", "r1", "marker", "gs://acme-landing/churn/2026-11/")

    days = covered_objects(pipeline, run, objects, NOW)
    assert days == [recent]
    everything = replace(pipeline, training=replace(pipeline.training, data=DataWindow("all")))
    assert covered_objects(everything, run, objects, NOW) == [old, recent]
    assert not in_window(everything, later, NOW)  # arrived after the run was created


def test_batch_covers_the_generations_the_run_record_names_even_once_overwritten():
    pipeline = parse_config(config(), "p.toml").pipelines["churn"]
    objects = MemoryObjects()
    first = objects.put("gs://acme-landing/churn/d1/a.csv", size=5)
    b = objects.put("gs://acme-landing/churn/d1/b.csv", size=7)
    objects.put("gs://acme-landing/churn/d1/a.csv", size=99)  # overwritten since
    keys = (f"churn/d1/a.csv@{first.generation}", f"churn/d1/b.csv@{b.generation}")
    run = RunPlan("churn", "r1", "marker", "gs://acme-landing/churn/d1/", objects=keys)
    assert covered_objects(pipeline, run, objects, NOW) == [first, b]


# --- the job's arguments ------------------------------------------------------------------


def test_container_args_carry_manifest_champion_and_eval_set_before_hyperparameters():
    text = config(eval_uri='eval_uri = "gs://acme-landing/churn-eval/golden.csv"')
    pipeline = parse_config(text, "p.toml").pipelines["churn"]
    run = RunPlan(
        "churn", "r1", "marker", "gs://acme-landing/churn/d1/", hyperparameters={"lr": 0.01},
        data_manifest="gs://acme-artifacts/runs/churn/r1/inputs.jsonl",
        champion_model_dir="gs://acme-artifacts/runs/churn/r0/model/",
    )  # fmt: skip
    spec = build_job(pipeline, run, "gs://acme-artifacts/runs")
    assert spec.worker_pools[0].args == (
        "--label=churned",
        "--data-uri=gs://acme-landing/churn/d1/",
        "--data-manifest=gs://acme-artifacts/runs/churn/r1/inputs.jsonl",
        "--champion-model-dir=gs://acme-artifacts/runs/churn/r0/model/",
        "--eval-uri=gs://acme-landing/churn-eval/golden.csv",
        "--lr=0.01",
    )
    pipeline = parse_config(config(), "p.toml").pipelines["churn"]
    bare = build_job(pipeline, RunPlan("churn", "r2", "each", "gs://acme-landing/churn/x.csv"),
                     "gs://acme-artifacts/runs")  # fmt: skip
    assert bare.worker_pools[0].args == (
        "--label=churned",
        "--data-uri=gs://acme-landing/churn/x.csv",
    )


# --- the trigger pins a run's inputs ------------------------------------------------------


CHAMPION = ModelVersion("projects/acme-ml/locations/us-central1/models/churn", "3",
                        aliases=("champion",), artifact_uri="gs://acme-artifacts/runs/churn/r0/model/")  # fmt: skip


def test_the_manifest_is_written_before_submission_and_the_champion_passed():
    world = World(config(), champion=CHAMPION)
    a = world.drop("churn/d1/a.csv", size=5)
    world.drop("churn/d1/b.csv", size=7)
    marker = world.drop("churn/d1/_SUCCESS", size=0)
    (run,) = world.runs()
    assert run["data_manifest"] == f"gs://acme-artifacts/runs/churn/{run['run_id']}/inputs.jsonl"
    assert world.manifest(run) == [
        {"uri": "gs://acme-landing/churn/d1/_SUCCESS", "generation": str(marker.generation), "size": 0},
        {"uri": "gs://acme-landing/churn/d1/a.csv", "generation": str(a.generation), "size": 5},
        {"uri": "gs://acme-landing/churn/d1/b.csv", "generation": str(a.generation + 1), "size": 7},
    ]  # fmt: skip
    args = args_of(world, run)
    assert f"--data-manifest={run['data_manifest']}" in args
    assert f"--champion-model-dir={CHAMPION.artifact_uri}" in args
    assert run["champion_model_dir"] == CHAMPION.artifact_uri


def test_a_job_adopted_after_a_crash_is_recorded_with_the_inputs_it_was_given(monkeypatch):
    world = World(config(), champion=CHAMPION)
    world.drop("churn/d1/a.csv")
    submit = world.training.submit

    def submit_then_die(spec):
        submit(spec)
        raise SystemExit("killed after CreateCustomJob")

    monkeypatch.setattr(world.training, "submit", submit_then_die)
    with pytest.raises(SystemExit):
        world.drop("churn/d1/_SUCCESS", size=0)
    monkeypatch.setattr(world.training, "submit", submit)
    world.now += timedelta(seconds=121)  # the dead delivery's claim goes stale
    world.trigger.handle(Tick("t1"))  # a tick finds the open run and adopts its job
    (run,) = world.runs()
    assert run["status"] == "submitted" and len(world.training.jobs) == 1
    args = args_of(world, run)
    assert f"--data-manifest={run['data_manifest']}" in args
    assert run["champion_model_dir"] == CHAMPION.artifact_uri


def test_no_champion_no_champion_argument():
    world = World(config())
    world.drop("churn/d1/a.csv")
    world.drop("churn/d1/_SUCCESS", size=0)
    (run,) = world.runs()
    assert not any(arg.startswith("--champion-model-dir") for arg in args_of(world, run))
    assert run["champion_model_dir"] is None


def test_ignored_events_never_look_the_champion_up():
    world = World(config(), champion=CHAMPION)
    world.drop("churn/d1/a.csv")  # recorded, not submitted
    world.drop("elsewhere/x.csv")  # routed nowhere
    assert world.registry.lookups == 0


def test_a_retried_submission_keeps_the_manifest_it_wrote_first():
    world = World(config('data = "all"'))
    world.drop("churn/d0/old.csv")
    world.drop("churn/d1/a.csv")
    world.training.fail_submit.append(TransientError("503 from Vertex"))
    with pytest.raises(TransientError):
        world.drop("churn/d1/_SUCCESS", size=0)
    (run,) = world.runs()
    assert run["status"] == "claimed" and world.training.jobs == {}
    first = world.objects.texts[f"gs://acme-artifacts/runs/churn/{run['run_id']}/inputs.jsonl"]
    world.now += timedelta(minutes=5)
    world.objects.put("gs://acme-landing/churn/d2/new.csv", created=world.now)  # after the run
    marker = next(iter(world.objects.generations[("acme-landing", "churn/d1/_SUCCESS")]))
    world.trigger.handle(ObjectFinalized("redelivery", "acme-landing", "churn/d1/_SUCCESS",
                                         marker.generation, 0))  # fmt: skip
    (run,) = world.runs()
    assert run["status"] == "submitted"
    assert world.objects.texts[run["data_manifest"]] == first
    assert [line["uri"] for line in world.manifest(run)] == [
        "gs://acme-landing/churn/d0/old.csv",
        "gs://acme-landing/churn/d1/a.csv",
    ]


# --- reruns -------------------------------------------------------------------------------


def _first_run(world: World) -> dict:
    world.drop("churn/d1/a.csv")
    world.drop("churn/d1/b.csv")
    world.drop("churn/d1/_SUCCESS", size=0)
    (run,) = world.runs()
    return run


def test_a_rerun_trains_on_exactly_the_same_inputs_under_a_new_run_id():
    world = World(config())
    original = _first_run(world)
    world.now += timedelta(hours=1)
    world.objects.put("gs://acme-landing/churn/d1/a.csv", size=500)  # overwritten since
    request = RetrainRequested("m-rerun", "churn", rerun_of=original["run_id"])
    (outcome,) = world.trigger.handle(request)
    assert outcome.action == "submitted"
    world.trigger.handle(request)  # a redelivery: still one rerun
    rerun = world.runs()[1]
    assert len(world.runs()) == 2 and len(world.training.jobs) == 2
    assert rerun["run_id"] != original["run_id"]
    assert rerun["rerun_of"] == original["run_id"] and rerun["trigger"] == "rerun"
    assert rerun["data_uri"] == original["data_uri"]
    assert rerun["hyperparameters"] == original["hyperparameters"]
    assert world.manifest(rerun) == world.manifest(original)
    new_args = [a.replace(rerun["run_id"], "RUN") for a in args_of(world, rerun)]
    old_args = [a.replace(original["run_id"], "RUN") for a in args_of(world, original)]
    assert new_args == old_args


def test_a_rerun_whose_pinned_generation_is_gone_fails_before_any_job():
    world = World(config(), versioned=False)
    original = _first_run(world)
    pinned = world.manifest(original)[1]
    world.objects.put("gs://acme-landing/churn/d1/a.csv", size=500)  # the old one is gone
    with pytest.raises(InvalidRequest) as err:
        world.trigger.handle(RetrainRequested("m-rerun", "churn", rerun_of=original["run_id"]))
    assert err.value.field == "rerun_of"
    assert f"gs://acme-landing/churn/d1/a.csv#{pinned['generation']}" in str(err.value)
    assert len(world.training.jobs) == 1 and len(world.runs()) == 1


@pytest.mark.parametrize(
    ("request_fields", "problem"),
    [
        ({"rerun_of": "0123456789abcdef"}, "has no run 0123456789abcdef"),
        ({"rerun_of": "not-a-run"}, "16 hex digits"),
        ({"rerun_of": "RUN", "data_uri": "gs://acme-landing/churn/x/"}, "takes no data_uri"),
        ({"rerun_of": "RUN", "hyperparameters": {"lr": 0.1}}, "takes no data_uri"),
    ],
)
def test_bad_reruns_are_rejected_naming_rerun_of(request_fields, problem):
    world = World(config())
    original = _first_run(world)
    fields = {k: (original["run_id"] if v == "RUN" else v) for k, v in request_fields.items()}
    with pytest.raises(InvalidRequest) as err:
        world.trigger.handle(RetrainRequested("m-bad", "churn", **fields))
    assert err.value.field == "rerun_of" and problem in str(err.value)
    assert len(world.training.jobs) == 1


def test_manifest_lines_parse_back():
    text = '{"uri": "gs://b/o.csv", "generation": "123", "size": 4}\n\n'
    (pinned,) = parse_manifest(text, "gs://x/inputs.jsonl")
    assert (pinned.bucket, pinned.name, pinned.generation, pinned.size) == ("b", "o.csv", 123, 4)
    with pytest.raises(ValueError, match="line 1"):
        parse_manifest('{"uri": "b/o", "generation": "1"}', "gs://x/inputs.jsonl")
