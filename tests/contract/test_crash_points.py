"""Crash points: each function killed with -9 right after each step of its protocol
(tests/reliability/crashpoints/injector.py), restarted on the same URL, and every
delivery the crash cut off redelivered until acknowledged. The batch must end exactly as
the same batch ends without a crash: jobs, run records and outcomes, input manifests,
model versions, deployments, traffic, champion alias, notifications, nothing left
pending, open, held or leased."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from localcloud.storage import StorageServer
from tests.contract.jobevents_fixtures import trained_model_fixture  # noqa: F401 - by name
from tests.reliability.crashpoints import scenario
from tests.reliability.crashpoints.injector import POINTS, function_env


@pytest.fixture(scope="module", name="report")
def report_fixture(
    gcs: StorageServer, tmp_path_factory: pytest.TempPathFactory, trained_model: Path
) -> scenario.Report:
    """Every point in one loop (one batch each), with a crash-free baseline per pipeline."""
    report = scenario.run(gcs, tmp_path_factory.mktemp("crash"), trained_model)
    print(scenario.markdown(report))
    return report


@pytest.mark.parametrize("point", list(POINTS))
def test_every_point_names_a_method_of_the_product(point: str):
    found = POINTS[point]
    owner, method = found.attribute.split(".")
    assert callable(getattr(getattr(importlib.import_module(found.module), owner), method))
    assert function_env(point, None, None)["RETRAIN_CRASH_AT"] == point
    with pytest.raises(ValueError, match="unknown crash point"):
        function_env("trigger.nowhere", None, None)


@pytest.mark.slow
def test_baselines_end_as_the_batch_calls_for(report: scenario.Report):
    trigger = report.baselines["batches"].state
    assert trigger["jobs added"] == 1 and trigger["job states"] == ["JOB_STATE_SUCCEEDED"]
    assert [r["outcome"] for r in trigger["run records"]] == ["succeeded"]
    parts = [f"gs://<landing>/<batch>/part-{i}.csv size=8" for i in range(scenario.PARTS)]
    assert [line for line in trigger["manifests"][0] if "/part-" in line] == parts
    deploying = report.baselines["churn"].state
    assert [r["outcome"] for r in deploying["run records"]] == ["deployed"]
    assert deploying["versions added"] == deploying["deployments added"] == 1
    assert deploying["deployed (version, traffic %)"] == [("this run's version", 100)]
    assert deploying["champion"] == ["this run's version"]
    assert deploying["notifications (run, kind)"] == [(("<run>", "deployed"), 1)]
    for state in (trigger, deploying):
        for leftover in ("pending/ left", "open/ left", "slots held", "job ends not done"):
            assert state[leftover] == [], leftover
    assert all(case.settled for case in report.baselines.values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        pytest.param(p, marks=pytest.mark.xfail(reason=scenario.KNOWN[p], strict=True))
        if p in scenario.KNOWN
        else p
        for p in POINTS
    ],
)
def test_a_crash_right_after_the_step_ends_as_without_it(report: scenario.Report, point: str):
    case = next(c for c in report.cases if c.point == point)
    assert case.crashed, f"{point}: the process never reached the point"
    assert case.settled, f"{point}: the batch did not settle: {report.differences(case)}"
    assert report.differences(case) == {}


@pytest.mark.slow
def test_nothing_escaped_unhandled_and_every_delivery_was_acknowledged(
    report: scenario.Report,
):
    assert report.unhandled == [] and report.never_acked == []
