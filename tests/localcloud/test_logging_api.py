"""Local Cloud Logging API through the official google-cloud-logging 3.17 client, over
both fronts of one LoggingServer: REST (`_use_grpc=False`, an `http://` endpoint) and
plaintext gRPC (the GAPIC LoggingServiceV2Client on an insecure channel).

The high-level `google.cloud.logging.Client` has no supported way to use a plaintext gRPC
channel: over gRPC it builds its own LoggingServiceV2Client from credentials and client
options, which always means TLS. Its one seam is the private `_logging_api` attribute
that `make_logging_api` would fill; `grpc_logging_client` sets it to the library's own
wrapper (`_gapic._LoggingAPI`) around a GAPIC client on our channel, so everything above
it (loggers, entry parsing, paging) is the library's code."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.api_core.exceptions import BadRequest, InvalidArgument, MethodNotImplemented, NotFound
from google.auth.credentials import AnonymousCredentials
from google.cloud import logging as gcl
from google.cloud.logging import Resource
from google.cloud.logging_v2 import _gapic
from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
from google.cloud.logging_v2.services.logging_service_v2.transports import (
    LoggingServiceV2GrpcTransport,
)
from google.cloud.logging_v2.types import LogEntry
from google.logging.type import log_severity_pb2

from localcloud.errors import LocalCloudError
from localcloud.logging_api import LoggingServer
from localcloud.logstore import LogStore, job_log_entry
from localcloud.procs import port_is_open

TRANSPORTS = ["rest", "grpc"]
# The client writes a one-off diagnostic entry of its own with the first write of the
# process; queries that read back what a test wrote leave it out.
NOT_DIAGNOSTIC = '-jsonPayload."logging.googleapis.com/diagnostic":*'


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs" / "entries.jsonl")


@pytest.fixture
def server(store: LogStore) -> Iterator[LoggingServer]:
    running = LoggingServer(store).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def channel(server: LoggingServer) -> Iterator[grpc.Channel]:
    opened = grpc.insecure_channel(server.grpc_host)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def gapic(channel: grpc.Channel) -> LoggingServiceV2Client:
    return LoggingServiceV2Client(transport=LoggingServiceV2GrpcTransport(channel=channel))


def rest_logging_client(server: LoggingServer, project: str = "p") -> gcl.Client:
    return gcl.Client(
        project=project,
        credentials=AnonymousCredentials(),
        _use_grpc=False,
        client_options={"api_endpoint": server.url},
    )


def grpc_logging_client(gapic: LoggingServiceV2Client, project: str = "p") -> gcl.Client:
    client = gcl.Client(project=project, credentials=AnonymousCredentials(), _use_grpc=True)
    client._logging_api = _gapic._LoggingAPI(gapic, client)  # the private seam, see above
    return client


@pytest.fixture(params=TRANSPORTS)
def client(
    request: pytest.FixtureRequest, server: LoggingServer, gapic: LoggingServiceV2Client
) -> gcl.Client:
    if request.param == "rest":
        return rest_logging_client(server)
    return grpc_logging_client(gapic)


def add_job_lines(store: LogStore, project: str, job_id: str, severities: list[str]) -> None:
    for index, severity in enumerate(severities):
        store.append(
            job_log_entry(
                project=project,
                job_id=job_id,
                task_name="workerpool0-0",
                message=f"{job_id} line {index}",
                severity=severity,
            )
        )


def messages(entries: list[Any]) -> list[str]:
    return [entry.payload["message"] for entry in entries]


# --- reading -------------------------------------------------------------------------------


def test_list_by_job_and_severity_newest_first(store: LogStore, client: gcl.Client) -> None:
    add_job_lines(store, "p", "job-a", ["INFO", "ERROR", "WARNING", "CRITICAL", "ERROR"])
    add_job_lines(store, "p", "job-b", ["ERROR"])
    add_job_lines(store, "other-project", "job-a", ["ERROR"])

    found = list(
        client.list_entries(
            filter_='resource.labels.job_id="job-a" AND severity>=ERROR',
            order_by=gcl.DESCENDING,
            max_results=20,
        )
    )

    assert messages(found) == ["job-a line 4", "job-a line 3", "job-a line 1"]
    assert [entry.severity for entry in found] == ["ERROR", "CRITICAL", "ERROR"]
    assert all(entry.resource.labels["job_id"] == "job-a" for entry in found)


def test_max_results_and_paging(store: LogStore, client: gcl.Client) -> None:
    add_job_lines(store, "p", "job-a", ["INFO"] * 5)

    newest_two = list(
        client.list_entries(filter_="resource.type=ml_job", order_by=gcl.DESCENDING, max_results=2)
    )
    every_page = list(client.list_entries(filter_="resource.type=ml_job", page_size=2))

    assert messages(newest_two) == ["job-a line 4", "job-a line 3"]
    assert messages(every_page) == [f"job-a line {i}" for i in range(5)]


def test_the_clients_default_time_window_is_applied(store: LogStore, client: gcl.Client) -> None:
    old = job_log_entry(project="p", job_id="old", task_name="service", message="two days ago")
    old["timestamp"] = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    store.append(old)
    add_job_lines(store, "p", "new", ["INFO"])

    # Without a timestamp in the filter the client adds `timestamp>=` (last 24 h) itself.
    recent = list(client.list_entries(filter_="resource.type=ml_job"))
    everything = list(client.list_entries(filter_='timestamp>="2000-01-01T00:00:00Z"'))

    assert messages(recent) == ["new line 0"]
    assert messages(everything) == ["two days ago", "new line 0"]


def test_severities_are_read_back_by_name(store: LogStore, client: gcl.Client) -> None:
    logger = client.logger("levels", resource=Resource(type="global", labels={}))
    logger.log_text("as a number", severity=500)  # the stdlib handler's LogSeverity ints
    logger.log_text("as a name", severity="warning")  # the client upper-cases names
    logger.log_text("without one")
    numeric = job_log_entry(project="p", job_id="j", task_name="service", message="stored 600")
    store.append({**numeric, "severity": 600})  # appended past the API, as a number

    found = list(
        client.list_entries(
            filter_=f'(log_id("levels") OR resource.labels.job_id=j) {NOT_DIAGNOSTIC}'
        )
    )

    assert [(entry.payload, entry.severity) for entry in found] == [
        ("as a number", "ERROR"),
        ("as a name", "WARNING"),
        ("without one", None),  # DEFAULT is the default value: left out, as the API does
        ({"message": "stored 600", "levelname": "INFO"}, "CRITICAL"),
    ]


def test_rest_gives_numeric_severities_when_asked(store: LogStore, server: LoggingServer) -> None:
    add_job_lines(store, "p", "job-a", ["ERROR"])
    body = {"resourceNames": ["projects/p"], "filter": "severity=ERROR"}

    by_name = requests.post(f"{server.url}/v2/entries:list", json=body, timeout=5).json()
    by_number = requests.post(
        f"{server.url}/v2/entries:list?$alt=json;enum-encoding=int", json=body, timeout=5
    ).json()

    assert [entry["severity"] for entry in by_name["entries"]] == ["ERROR"]
    assert [entry["severity"] for entry in by_number["entries"]] == [500]
    assert by_number["entries"][0]["jsonPayload"] == {
        "message": "job-a line 0",
        "levelname": "ERROR",
    }


# --- the query language, end to end ----------------------------------------------------------


def add_query_corpus(store: LogStore) -> None:
    lines = [
        ("trainer", "INFO", {"message": "epoch 1 loss=0.5", "phase": "train"}),
        ("trainer", "WARNING", {"message": "Learning rate decayed", "phase": "train"}),
        ("trainer", "ERROR", {"message": "CUDA out of memory at step 12", "phase": "train"}),
        ("ml.googleapis.com%2F77", "NOTICE", {"message": "Job failed.", "phase": "service"}),
        ("serving", "CRITICAL", {"message": "model.pkl not found", "phase": "deploy"}),
    ]
    for log_id, severity, payload in lines:
        entry = job_log_entry(
            project="p", job_id="77", task_name="workerpool0-0", message="", severity=severity
        )
        entry["logName"] = f"projects/p/logs/{log_id}"
        entry["jsonPayload"] = payload
        store.append(entry)


QUERIES = [
    ("severity=(WARNING OR ERROR)", ["Learning rate decayed", "CUDA out of memory at step 12"]),
    (
        "severity>=WARNING",
        ["Learning rate decayed", "CUDA out of memory at step 12", "model.pkl not found"],
    ),
    ('jsonPayload.phase:("serv" OR "depl")', ["Job failed.", "model.pkl not found"]),
    ('"out of memory"', ["CUDA out of memory at step 12"]),
    ("decayed", ["Learning rate decayed"]),
    ("memory step", ["CUDA out of memory at step 12"]),  # two restrictions, ANDed
    ('SEARCH("model pkl")', ["model.pkl not found"]),
    ('SEARCH("mem")', []),  # whole tokens only
    ('SEARCH("`out of memory`")', ["CUDA out of memory at step 12"]),
    (
        'SEARCH(jsonPayload.phase, "train") severity>INFO',
        ["Learning rate decayed", "CUDA out of memory at step 12"],
    ),
    ('log_id("ml.googleapis.com/77")', ["Job failed."]),
    (
        'log_id("trainer") AND NOT "epoch"',
        ["Learning rate decayed", "CUDA out of memory at step 12"],
    ),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES, ids=[q for q, _ in QUERIES])
def test_queries_through_the_client(
    store: LogStore, client: gcl.Client, query: str, expected: list[str]
) -> None:
    add_query_corpus(store)

    found = list(client.list_entries(filter_=query))

    assert messages(found) == expected


def test_a_bad_filter_is_invalid_argument_naming_the_position(client: gcl.Client) -> None:
    # The client appends its own `AND timestamp>=…`, after the error's position.
    with pytest.raises(BadRequest, match="position 10") as caught:
        list(client.list_entries(filter_="severity>=LOUD"))
    assert "severity" in str(caught.value)


# --- writing and deleting ------------------------------------------------------------------


def test_write_then_read_back(store: LogStore, client: gcl.Client) -> None:
    logger = client.logger("retrain", resource=Resource(type="global", labels={}))

    logger.log_struct(
        {"message": "run started", "run_id": "r1", "attempt": 2},
        severity="WARNING",
        labels={"k": "v"},
    )
    logger.log_text("plain text line")

    found = list(client.list_entries(filter_=f'logName="projects/p/logs/retrain" {NOT_DIAGNOSTIC}'))
    assert [entry.payload for entry in found] == [
        {"message": "run started", "run_id": "r1", "attempt": 2},
        "plain text line",
    ]
    assert [entry.severity for entry in found] == ["WARNING", None]
    assert found[0].labels == {"k": "v"}
    stored = next(e for e in store.entries() if e.get("jsonPayload", {}).get("run_id") == "r1")
    assert stored["insertId"] and stored["receiveTimestamp"]
    by_field = list(client.list_entries(filter_='jsonPayload.run_id="r1" severity>=WARNING'))
    assert [entry.insert_id for entry in by_field] == [stored["insertId"]]


def test_logger_delete_removes_one_log(store: LogStore, client: gcl.Client) -> None:
    resource = Resource(type="global", labels={})
    doomed = client.logger("doomed", resource=resource)
    kept = client.logger("kept", resource=resource)
    doomed.log_text("first")
    doomed.log_text("second")
    kept.log_text("stays")

    doomed.delete()

    remaining = list(client.list_entries(filter_='log_id("doomed") OR log_id("kept")'))
    assert [entry.payload for entry in remaining] == ["stays"]
    with pytest.raises(NotFound, match="projects/p/logs/doomed"):
        doomed.delete()  # a log without entries does not exist


def test_delete_takes_the_url_encoded_log_id(store: LogStore, client: gcl.Client) -> None:
    add_job_lines(store, "p", "77", ["INFO"])
    store.append(job_log_entry(project="p", job_id="77", task_name="service", message="ended"))

    client.logger("ml.googleapis.com%2F77").delete()

    left = list(client.list_entries(filter_="resource.labels.job_id=77"))
    assert messages(left) == ["77 line 0"]


# --- the GAPIC client and gRPC status codes ------------------------------------------------


def test_gapic_write_list_delete(gapic: LoggingServiceV2Client) -> None:
    gapic.write_log_entries(
        log_name="projects/p/logs/gapic",
        resource={"type": "global"},
        labels={"from": "request"},
        entries=[
            LogEntry(text_payload="one", severity=log_severity_pb2.ERROR),
            LogEntry(json_payload={"message": "two"}, labels={"own": "label"}),
        ],
    )

    pager = gapic.list_log_entries(
        request={"resource_names": ["projects/p"], "filter": 'log_id("gapic")', "page_size": 1}
    )
    found = list(pager)
    gapic.delete_log(log_name="projects/p/logs/gapic")

    assert [entry.text_payload or entry.json_payload["message"] for entry in found] == [
        "one",
        "two",
    ]
    assert [entry.severity for entry in found] == [log_severity_pb2.ERROR, log_severity_pb2.DEFAULT]
    assert dict(found[1].labels) == {"from": "request", "own": "label"}
    assert all(entry.insert_id and entry.receive_timestamp for entry in found)
    after = gapic.list_log_entries(
        request={"resource_names": ["projects/p"], "filter": 'log_id("gapic")'}
    )
    assert list(after) == []


def test_gapic_errors_carry_googles_status_codes(gapic: LoggingServiceV2Client) -> None:
    with pytest.raises(InvalidArgument, match="position 9"):
        list(
            gapic.list_log_entries(
                request={"resource_names": ["projects/p"], "filter": "severity="}
            )
        )
    with pytest.raises(InvalidArgument, match="resourceNames"):
        list(gapic.list_log_entries(request={"filter": "severity=ERROR"}))
    with pytest.raises(InvalidArgument, match=r"entries\[0\].logName"):
        gapic.write_log_entries(entries=[LogEntry(text_payload="x")], resource={"type": "global"})
    with pytest.raises(NotFound, match="projects/p/logs/never"):
        gapic.delete_log(log_name="projects/p/logs/never")
    with pytest.raises(InvalidArgument, match="logName"):
        gapic.delete_log(log_name="projects/p")
    with pytest.raises(MethodNotImplemented):
        list(gapic.list_logs(parent="projects/p"))


# --- REST specifics ------------------------------------------------------------------------


def test_google_error_shape_and_unsupported_requests(server: LoggingServer) -> None:
    bad_filter = requests.post(
        f"{server.url}/v2/entries:list",
        json={"resourceNames": ["projects/p"], "filter": "severity>=LOUD"},
        timeout=5,
    )
    no_parent = requests.post(f"{server.url}/v2/entries:list", json={}, timeout=5)
    bad_order = requests.post(
        f"{server.url}/v2/entries:list",
        json={"resourceNames": ["projects/p"], "orderBy": "severity desc"},
        timeout=5,
    )
    bad_write = requests.post(
        f"{server.url}/v2/entries:write",
        json={"entries": [{"textPayload": "x"}]},
        timeout=5,
    )
    unknown = requests.post(f"{server.url}/v2/entries:tail", json={}, timeout=5)
    no_log = requests.delete(f"{server.url}/v2/projects/p/logs/never", timeout=5)

    assert bad_filter.status_code == 400
    error = bad_filter.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert "position 10" in error["message"] and "severity" in error["message"]
    assert no_parent.status_code == 400 and "resourceNames" in no_parent.json()["error"]["message"]
    assert bad_order.status_code == 400 and "orderBy" in bad_order.json()["error"]["message"]
    assert bad_write.status_code == 400 and "logName" in bad_write.json()["error"]["message"]
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
    assert no_log.status_code == 404 and no_log.json()["error"]["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"textPayload": "x", "severity": "LOUD"}, "entries[1].severity"),
        ({"textPayload": "x", "severity": 450}, "entries[1].severity"),
        (
            {"textPayload": "x", "colour": "red"},
            'entries[1]: Message type "google.logging.v2.LogEntry" has no field named "colour"',
        ),
        ({"textPayload": 3}, "entries[1]: Failed to parse textPayload field"),
        ({"textPayload": "x", "timestamp": "yesterday"}, "entries[1].timestamp"),
    ],
)
def test_rest_write_refuses_what_a_log_entry_cannot_hold(
    store: LogStore, server: LoggingServer, entry: dict[str, Any], field: str
) -> None:
    body = {
        "logName": "projects/p/logs/x",
        "resource": {"type": "global"},
        "entries": [{"textPayload": "fine"}, entry],
    }

    answer = requests.post(f"{server.url}/v2/entries:write", json=body, timeout=5)

    assert answer.status_code == 400
    assert field in answer.json()["error"]["message"]
    assert store.entries() == []  # nothing of a refused batch is stored


# --- the server ----------------------------------------------------------------------------


def test_start_serves_both_fronts_and_stop_closes_both(store: LogStore) -> None:
    server = LoggingServer(store).start()
    rest_port = int(server.url.rsplit(":", 1)[1])
    grpc_port = int(server.grpc_host.rsplit(":", 1)[1])
    assert port_is_open("127.0.0.1", rest_port) and port_is_open("127.0.0.1", grpc_port)

    server.stop()

    assert not port_is_open("127.0.0.1", rest_port)
    assert not port_is_open("127.0.0.1", grpc_port)
    with pytest.raises(LocalCloudError, match="start"):
        _ = server.grpc_host
    server.stop()  # a second stop is harmless
