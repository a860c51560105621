"""Sustained faults (short form; `make reliability` runs the long one): a fifth and more of
the functions' calls to Cloud Storage, Vertex AI and the webhook fail while every kind of event
flows twice over; the counts at the end are exactly what the events call for."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcloud.storage import StorageServer
from tests.contract.jobevents_fixtures import trained_model_fixture  # noqa: F401 - by name
from tests.reliability import sustained

pytestmark = pytest.mark.slow  # ~60 real job processes and a model server


def test_every_kind_of_event_under_sustained_faults_gives_exact_counts(
    gcs: StorageServer, tmp_path: Path, trained_model: Path
):
    report = sustained.run(gcs, tmp_path, trained_model, sustained.SHORT, rate=0.22)
    print(sustained.markdown(report))
    assert report.actual() == report.expected()
    assert report.distinct_runs == report.jobs == report.run_records
    # Every object of the quiet batch is in exactly one run.
    assert len(report.quiet_objects) == sustained.SHORT.quiet
    assert set(report.quiet_objects.values()) == {1}
    for service in report.calls:
        assert report.fault_rate(service) >= 0.2, service
    assert report.unhandled == [] and report.never_acked == []
    # Only a message the webhook took and answered 503 is received twice.
    received_twice = report.notices_received - sum(report.notices.values())
    assert 0 <= received_twice <= report.faults["webhook"]["after"]
