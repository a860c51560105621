"""Crash points: kill a served function (the whole instance, `kill -9` of its process
group) right after one step of the product completes, once.

Test-only. `sitecustomize.py` next to this file runs `install()` when the directory is on
the function process's PYTHONPATH (see `function_env`). The environment says what to do:

    RETRAIN_CRASH_AT=<point>     the step after which the process dies (POINTS)
    RETRAIN_CRASH_MARK=<file>    created atomically before dying: a point fires only in
                                 the process that created it, so it fires once
    RETRAIN_CRASH_LEASE_S=<s>    the run claim's and the job end's lease, shortened (and
                                 the job end's heartbeat with it) so that a redelivery
                                 takes a dead delivery's work over within seconds instead
                                 of the production 120 s / 45 s; the product reads these
                                 leases from module constants and has no setting for them

Each point names the method whose return marks the step's boundary and a condition on
the call (its arguments and result), so that a method used by several steps fires only
for the one meant. The product's code is not changed: the method is wrapped when its
module is imported. Stdlib only at import: this module is imported at interpreter start.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

CRASH_AT = "RETRAIN_CRASH_AT"
CRASH_MARK = "RETRAIN_CRASH_MARK"
LEASE_S = "RETRAIN_CRASH_LEASE_S"
HERE = Path(__file__).resolve().parent

# (args without self, kwargs, result) -> whether this call is the step
When = Callable[[tuple[Any, ...], dict[str, Any], Any], bool]


def _always(_args: tuple[Any, ...], _kwargs: dict[str, Any], _result: Any) -> bool:
    return True


def _returned(_args: tuple[Any, ...], _kwargs: dict[str, Any], result: Any) -> bool:
    return result is not None and result is not False


def _changes(args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> dict[str, Any]:
    found = kwargs.get("changes", args[index] if len(args) > index else {})
    return dict(found or {})


def _run_update(key: str, value: Any = None) -> When:
    """`Ledger.update_run(pipeline, run_id, current, changes)` that wrote `key` (= value)."""

    def when(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> bool:
        changes = _changes(args, kwargs, 3)
        wanted = key in changes and (value is None or changes[key] == value)
        return wanted and result is not None

    return when


def _lease_step(key: str) -> When:
    """`Lease.step(changes)` that recorded `key`."""

    def when(args: tuple[Any, ...], kwargs: dict[str, Any], _result: Any) -> bool:
        return key in _changes(args, kwargs, 0)

    return when


@dataclass(frozen=True)
class Point:
    function: str  # "trigger" | "job-events": the function whose process dies
    module: str
    attribute: str  # Class.method
    when: When
    step: str  # what has just completed when the process dies


POINTS: dict[str, Point] = {
    # trigger: data event -> run claimed -> pending covered -> slot -> manifest -> job -> record
    "trigger.run_claimed": Point(
        "trigger", "retrain.ledger", "Ledger.claim_run", _returned,
        "run record created (the claim)",
    ),
    "trigger.pending_covered": Point(
        "trigger", "retrain.trigger", "Trigger._cover_pending", _always,
        "the batch covered: named in the run record, its pending records removed",
    ),
    "trigger.cover_recorded": Point(
        "trigger", "retrain.ledger", "Ledger.update_run", _run_update("objects"),
        "run record names the batch's objects (pending records not yet removed)",
    ),
    "trigger.slot_taken": Point(
        "trigger", "retrain.slots", "Slots.create", _returned,
        "a concurrency slot created for the run",
    ),
    "trigger.manifest_written": Point(
        "trigger", "retrain.trigger", "Trigger._pin_inputs", _always,
        "input manifest written",
    ),
    "trigger.job_created": Point(
        "trigger", "retrain.adapters.vertex", "VertexTraining.submit", _always,
        "CreateCustomJob returned",
    ),
    "trigger.job_recorded": Point(
        "trigger", "retrain.ledger", "Ledger.update_run", _run_update("status", "submitted"),
        "run record updated with the job",
    ),
    # job-events: job end leased -> version -> deploy -> smoke -> champion -> traffic ->
    # outcome -> notification -> done
    "job_events.end_leased": Point(
        "job-events", "retrain.ledger", "JobLedger.lease_handling", _returned,
        "lease on the job end taken",
    ),
    "job_events.version_uploaded": Point(
        "job-events", "retrain.adapters.registry", "VertexRegistry.upload", _always,
        "model version uploaded",
    ),
    "job_events.deployed": Point(
        "job-events", "retrain.adapters.registry", "VertexEndpoints.deploy", _always,
        "DeployModel returned",
    ),
    "job_events.smoke_recorded": Point(
        "job-events", "retrain.ledger", "Lease.step", _lease_step("smoke_passed"),
        "smoke test passed, recorded",
    ),
    "job_events.champion_moved": Point(
        "job-events", "retrain.adapters.registry", "VertexRegistry.set_alias", _always,
        "champion alias moved",
    ),
    "job_events.traffic_promoted": Point(
        "job-events", "retrain.rollout", "Rollout.promote", _always,
        "all traffic to the new deployment, the others undeployed",
    ),
    "job_events.outcome_recorded": Point(
        "job-events", "retrain.ledger", "Ledger.update_run", _run_update("outcome"),
        "run record updated with the outcome",
    ),
    "job_events.notification_claimed": Point(
        "job-events", "retrain.ledger", "JobLedger.claim_notification", _returned,
        "notification claimed, not yet sent",
    ),
    "job_events.notification_sent": Point(
        "job-events", "retrain.adapters.notifiers", "WebhookNotifier.send", _always,
        "webhook notification sent",
    ),
    "job_events.end_marked_done": Point(
        "job-events", "retrain.ledger", "JobLedger.mark_done", _always,
        "job end's done marker written",
    ),
    "job_events.end_finished": Point(
        "job-events", "retrain.ledger", "Lease.finish", _always,
        "job end's lease record marked done",
    ),
}  # fmt: skip


def function_env(point: str | None, mark: Path | None, lease_s: float | None) -> dict[str, str]:
    """The environment a function process needs for the injector: this directory on its
    PYTHONPATH (after whatever the caller's has), the point, its mark, the leases."""
    path = [str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(path)}
    if point is not None:
        if point not in POINTS:
            raise ValueError(f"{CRASH_AT}: unknown crash point {point!r}")
        env[CRASH_AT] = point
        if mark is not None:
            env[CRASH_MARK] = str(mark)
    if lease_s is not None:
        env[LEASE_S] = str(lease_s)
    return env


def _crash() -> None:
    """Die now, the whole instance (server and workers), without any cleanup."""
    mark = os.environ.get(CRASH_MARK)
    if mark:
        try:
            os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # fired once already
    sys.stdout.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _wrap(method: Callable[..., Any], point: Point) -> Callable[..., Any]:
    @functools.wraps(method)
    def crashing(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        if point.when(args, kwargs, result):
            _crash()
        return result

    return crashing


def _patch_point(module: ModuleType, point: Point) -> None:
    owner_name, method_name = point.attribute.split(".")
    owner = getattr(module, owner_name)
    setattr(owner, method_name, _wrap(getattr(owner, method_name), point))


def _shorten_leases(seconds: float) -> Sequence[tuple[str, Callable[[ModuleType], None]]]:
    lease = timedelta(seconds=seconds)

    def trigger(module: ModuleType) -> None:
        terms = module.LeaseTerms("claimed_at", lease, dated_by_start=True)
        vars(module).update(CLAIM_LEASE=lease, RUN_CLAIM=terms)

    def job_events(module: ModuleType) -> None:
        heartbeat_s = max(0.2, seconds / 5)
        terms = module.LeaseTerms("lease_until", lease)
        vars(module).update(LEASE=lease, JOB_END_LEASE=terms, HEARTBEAT_S=heartbeat_s)
        # The constructor's default was bound at definition.
        init = module.JobEvents.__init__
        init.__defaults__ = tuple(
            heartbeat_s if name == "heartbeat_s" else value
            for name, value in zip(_defaulted(init), init.__defaults__ or (), strict=True)
        )

    def ledger(module: ModuleType) -> None:
        # Shorter than the job end's lease, as in the product.
        terms = module.LeaseTerms("sending_until", lease * 0.6)
        vars(module).update(NOTIFICATION_SEND=terms)

    return [
        ("retrain.trigger", trigger),
        ("retrain.jobevents", job_events),
        ("retrain.ledger", ledger),
    ]


def _defaulted(function: Callable[..., Any]) -> list[str]:
    code = function.__code__
    names = code.co_varnames[: code.co_argcount]
    return list(names[len(names) - len(function.__defaults__ or ()) :])


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch once a module has been executed, whenever it is first imported."""

    def __init__(self, patches: dict[str, list[Callable[[ModuleType], None]]]):
        self._patches = patches

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self._patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, patches = spec.loader, self._patches.pop(name)
        original = loader.exec_module  # type: ignore[attr-defined]

        def exec_module(module: ModuleType) -> None:
            original(module)
            for patch in patches:
                patch(module)

        setattr(loader, "exec_module", exec_module)  # noqa: B010 - a method replaced
        return spec


def install(env: dict[str, str] | None = None) -> None:
    env = dict(os.environ if env is None else env)
    patches: dict[str, list[Callable[[ModuleType], None]]] = {}
    name = env.get(CRASH_AT)
    if name:
        point = POINTS[name]
        patches.setdefault(point.module, []).append(lambda m: _patch_point(m, point))
    if env.get(LEASE_S):
        for module, patch in _shorten_leases(float(env[LEASE_S])):
            patches.setdefault(module, []).append(patch)
    if not patches:
        return
    for module_name in [m for m in patches if m in sys.modules]:
        for patch in patches.pop(module_name):
            patch(sys.modules[module_name])
    sys.meta_path.insert(0, _AfterImport(patches))
