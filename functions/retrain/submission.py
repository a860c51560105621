"""Submitting a run's training job: the one path by which the trigger submits a claimed
run and the job-events function resubmits a run that ran out of capacity on a fallback
machine. Idempotency stays with the callers (the run claim, the job end's lease); a
resubmission is looked up by its labels first, so a takeover finds the job it made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from retrain.config import Machine, Pipeline
from retrain.jobspec import JobSpec, build_job
from retrain.planner import RunPlan
from retrain.ports import JobInfo, TrainingService


def submit_run(
    training: TrainingService,
    pipeline: Pipeline,
    plan: RunPlan,
    output_uri: str,
    *,
    machine: Machine | None = None,
    labels: Mapping[str, str] | None = None,
) -> tuple[JobInfo, JobSpec]:
    """Create the run's job (on `machine` instead of the configured one, with `labels`
    added): the job and the spec it was made from."""
    spec = build_job(pipeline, plan, output_uri, machine=machine)
    if labels:
        spec = replace(spec, labels={**spec.labels, **labels})
    return training.submit(spec), spec


def resubmit_run(
    training: TrainingService,
    pipeline: Pipeline,
    plan: RunPlan,
    output_uri: str,
    *,
    machine: Machine,
    labels: Mapping[str, str],
) -> JobInfo:
    """The run's job on `machine`, labelled `labels`: the one an earlier delivery already
    created if any (found by those labels), else a new one."""
    existing = training.find(labels)
    if existing:
        return sorted(existing, key=lambda j: j.name)[0]
    job, _ = submit_run(training, pipeline, plan, output_uri, machine=machine, labels=labels)
    return job
