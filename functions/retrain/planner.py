"""The planner: pure policy, no I/O.

Given an event, the config and (for admission) a snapshot of state, it decides what
should happen: `Ignore`, `Record` a pending object, `Submit` a run, or `Reject` the
event. Routing, zero-byte objects, the product's own prefixes, trigger modes, cooldown,
concurrency caps and request guards all live here, and nowhere else.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from retrain.config import Config, Pipeline
from retrain.errors import shown
from retrain.events import MalformedRequest, ObjectFinalized, RetrainRequested
from retrain.request_rules import Refused, check, object_name_problem


@dataclass(frozen=True)
class RunPlan:
    """A run to submit: everything the job and the run record need."""

    pipeline: str
    run_id: str
    trigger: str  # each | marker | quiet | request
    data_uri: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    objects: tuple[str, ...] = ()  # "name@generation" the run covers (lineage)
    covers_folder: str | None = None  # marker: pending records under this folder
    events: tuple[str, ...] = ()
    reason: str | None = None
    rerun_of: str | None = None  # a rerun: the run whose pinned inputs it trains on again
    # Pinned on submission (and kept in the run record, so a capacity fallback passes the
    # same arguments): the input manifest, and the champion's model directory.
    data_manifest: str | None = None
    champion_model_dir: str | None = None


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Reject:
    reason: str
    field: str | None = None  # the request field at fault


@dataclass(frozen=True)
class Record:
    pipeline: str
    object_key: str  # "name@generation"


@dataclass(frozen=True)
class Submit:
    run: RunPlan


Decision = Ignore | Reject | Record | Submit


@dataclass(frozen=True)
class Admit:
    pass


@dataclass(frozen=True)
class Wait:
    reason: str


def run_id_for(*parts: str) -> str:
    """A deterministic run id: every duplicate delivery of one batch computes the same id.
    16 hex characters fit Vertex label values ([a-z0-9_-], at most 63)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def object_key(name: str, generation: int) -> str:
    return f"{name}@{generation}"


def plan_object(event: ObjectFinalized, config: Config) -> list[Decision]:
    """One decision per pipeline the object routes to (usually one), or a single Ignore."""
    if _is_own_output(event, config):
        return [Ignore(f"{event.uri} is under the product's own state or output prefix")]
    problem = object_name_problem(event.name)
    if problem:
        return [Ignore(f"gs://{event.bucket}/{shown(event.name)}: {problem}")]
    routed = [
        p
        for p in config.pipelines.values()
        if p.bucket == event.bucket and event.name.startswith(p.prefix)
    ]
    if not routed:
        return [Ignore(f"no pipeline watches {event.uri}")]
    return [_plan_for_pipeline(event, pipeline) for pipeline in routed]


def _plan_for_pipeline(event: ObjectFinalized, pipeline: Pipeline) -> Decision:
    relative = event.name[len(pipeline.prefix) :]
    is_marker = pipeline.trigger == "marker" and posixpath.basename(relative) == pipeline.marker
    if is_marker:
        folder = posixpath.dirname(event.name)
        folder = f"{folder}/" if folder else ""
        return Submit(
            RunPlan(
                pipeline=pipeline.name,
                run_id=run_id_for(pipeline.name, "marker", event.key),
                trigger="marker",
                data_uri=f"gs://{event.bucket}/{folder}",
                hyperparameters=dict(pipeline.training.hyperparameters),
                objects=(object_key(event.name, event.generation),),
                covers_folder=folder,
                events=(event.event_id,),
            )
        )
    if event.size == 0:
        return Ignore(f"{event.uri} is a zero-byte object")
    if not any(fnmatchcase(relative, glob) for glob in pipeline.include):
        return Ignore(f"{event.uri} matches none of include {list(pipeline.include)}")
    if pipeline.trigger == "each":
        return Submit(
            RunPlan(
                pipeline=pipeline.name,
                run_id=run_id_for(pipeline.name, "each", event.key),
                trigger="each",
                data_uri=event.uri,
                hyperparameters=dict(pipeline.training.hyperparameters),
                objects=(object_key(event.name, event.generation),),
                events=(event.event_id,),
            )
        )
    return Record(pipeline.name, object_key(event.name, event.generation))


def _is_own_output(event: ObjectFinalized, config: Config) -> bool:
    for uri in (config.defaults.state_uri, config.defaults.output_uri):
        bucket, _, prefix = uri.removeprefix("gs://").partition("/")
        if event.bucket == bucket and event.name.startswith(
            prefix.rstrip("/") + "/" if prefix else ""
        ):
            return True
    return False


def plan_request(event: RetrainRequested | MalformedRequest, config: Config) -> Decision:
    """A retrain request becomes one run, or a Reject naming the offending field."""
    verdict = check(event, config)
    if isinstance(verdict, Refused):
        return Reject(verdict.message, verdict.field)
    rerun_of = event.rerun_of if isinstance(event, RetrainRequested) else None
    return Submit(
        RunPlan(
            pipeline=verdict.pipeline.name,
            run_id=request_run_id(verdict.pipeline.name, event.event_id),
            # A rerun's data URI and hyperparameters are the original run's: the trigger
            # reads them from its record (`rerun_plan`).
            trigger="rerun" if rerun_of else "request",
            data_uri=verdict.data_uri,
            hyperparameters=verdict.hyperparameters,
            events=(event.event_id,),
            reason=event.reason if isinstance(event, RetrainRequested) else None,
            rerun_of=rerun_of,
        )
    )


def rerun_plan(request: RunPlan, original: Mapping[str, Any]) -> RunPlan | Reject:
    """The rerun `request` asks for, on the original run's data URI, hyperparameters and
    pinned inputs (its record), or a Reject naming `rerun_of`."""
    if not original.get("data_manifest"):
        return Reject(
            f"rerun_of: run {request.rerun_of} has no input manifest (it predates pinned "
            "inputs), so it cannot be rerun on exactly its inputs",
            "rerun_of",
        )
    return replace(
        request,
        data_uri=str(original["data_uri"]),
        hyperparameters=dict(original.get("hyperparameters") or {}),
        objects=tuple(original.get("objects") or ()),
    )


def request_run_id(pipeline: str, message_id: str) -> str:
    """The run id of a request: the message id is the idempotency key."""
    return run_id_for(pipeline, "request", message_id)


@dataclass(frozen=True)
class Pending:
    """A recorded object waiting for its batch (quiet mode), as listed from state."""

    object_key: str
    recorded_at: datetime


def plan_quiet_flush(
    pipeline: Pipeline, pending: Sequence[Pending], now: datetime, batch: str = ""
) -> Decision:
    """Quiet mode: one run for everything pending once nothing new arrived for a while.

    The run id derives from `batch`, the key of the batch being collected (the run that
    took the previous one), never from the pending objects listed: a tick that lists while
    another tick's flush is still removing them plans the same run, whose claim it loses."""
    if not pending:
        return Ignore("nothing pending")
    newest = max(p.recorded_at for p in pending)
    quiet_for = now - newest
    if quiet_for < timedelta(seconds=pipeline.quiet_seconds):
        return Ignore(
            f"{len(pending)} object(s) pending; last arrived {quiet_for.total_seconds():.0f}s ago, "
            f"waiting for {pipeline.quiet_seconds}s of quiet"
        )
    keys = tuple(sorted(p.object_key for p in pending))
    return Submit(
        RunPlan(
            pipeline=pipeline.name,
            run_id=run_id_for(pipeline.name, "quiet", batch),
            trigger="quiet",
            data_uri=pipeline.data_root,
            hyperparameters=dict(pipeline.training.hyperparameters),
            objects=keys,
        )
    )


def admit(
    pipeline: Pipeline,
    config: Config,
    *,
    active_jobs: int,
    last_submit_at: datetime | None,
    now: datetime,
) -> Admit | Wait:
    """May a run of `pipeline` be submitted now? If not, it waits for a later tick."""
    cap = config.guards.max_concurrent_jobs
    if cap is not None and active_jobs >= cap:
        return Wait(f"{active_jobs} job(s) active, guards.max_concurrent_jobs is {cap}")
    if pipeline.cooldown_seconds and last_submit_at is not None:
        ready_at = last_submit_at + timedelta(seconds=pipeline.cooldown_seconds)
        if now < ready_at:
            left = (ready_at - now).total_seconds()
            return Wait(f"cooldown: {left:.0f}s left of {pipeline.cooldown_seconds}s")
    return Admit()
