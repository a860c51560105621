"""Local Cloud Logging: the query language, the log sink router and the tick scheduler.
The API itself, through the official clients on both transports, is test_logging_api.py."""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from localcloud.errors import LocalCloudError
from localcloud.logfilter import FilterSyntaxError, compile_filter
from localcloud.logstore import LogStore, job_log_entry
from localcloud.router import SHARED_FILTER_PATH, LogRouter, pubsub_publisher
from localcloud.scheduler import TICK, Scheduler

# --- fixtures: LogEntries as a sink delivers them ------------------------------------------

SUCCEEDED_LINE: dict[str, Any] = {
    "insertId": "1q2w3e4r5t6y",
    "jsonPayload": {"message": "Job completed successfully.", "levelname": "INFO"},
    "labels": {"ml.googleapis.com/endpoint": "", "ml.googleapis.com/job_state": "SUCCEEDED"},
    "logName": "projects/acme-ml/logs/ml.googleapis.com%2F5823194417368121344",
    "receiveTimestamp": "2026-11-26T10:02:44.910348271Z",
    "resource": {
        "type": "ml_job",
        "labels": {
            "job_id": "5823194417368121344",
            "project_id": "acme-ml",
            "task_name": "service",
        },
    },
    "severity": "INFO",
    "timestamp": "2026-11-26T10:02:44.512881Z",
}

FAILED_LINE: dict[str, Any] = {
    "insertId": "9o8i7u6y5t4r",
    "textPayload": "Job failed.",
    "labels": {"ml.googleapis.com/endpoint": ""},
    "logName": "projects/acme-ml/logs/ml.googleapis.com%2F2208815734829776896",
    "receiveTimestamp": "2026-11-26T11:40:02.401112093Z",
    "resource": {
        "type": "ml_job",
        "labels": {
            "job_id": "2208815734829776896",
            "project_id": "acme-ml",
            "task_name": "service",
        },
    },
    "severity": "INFO",
    "timestamp": "2026-11-26T11:40:01.997301Z",
}

REPLICA_ERROR_LINE: dict[str, Any] = {
    "insertId": "a1s2d3f4g5h6",
    "jsonPayload": {
        "message": "error: data file gs://acme-landing/churn/2026-11-26/part-0003.csv "
        "has no column 'churned'",
        "levelname": "ERROR",
    },
    "logName": "projects/acme-ml/logs/workerpool0-0",
    "resource": {
        "type": "ml_job",
        "labels": {
            "job_id": "2208815734829776896",
            "project_id": "acme-ml",
            "task_name": "workerpool0-0",
        },
    },
    "severity": "ERROR",
    "timestamp": "2026-11-26T11:39:40.113000Z",
}


def cancelled_line() -> dict[str, Any]:
    return job_log_entry(
        project="acme-ml", job_id="77", task_name="service", message="Job was cancelled."
    )


def unrelated_line() -> dict[str, Any]:
    """Same text and labels as a job ending, but from another resource type."""
    entry = copy.deepcopy(SUCCEEDED_LINE)
    entry["resource"] = {"type": "gce_instance", "labels": {"instance_id": "1", "zone": "a"}}
    return entry


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "logs" / "entries.jsonl")


# --- the filter language -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sink_filter() -> Any:
    return compile_filter(SHARED_FILTER_PATH.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (SUCCEEDED_LINE, True),
        (FAILED_LINE, True),
        (cancelled_line(), True),
        (REPLICA_ERROR_LINE, False),
        (unrelated_line(), False),
        (
            job_log_entry(project="p", job_id="1", task_name="service", message="Job is running."),
            False,
        ),
        (
            job_log_entry(
                project="p", job_id="1", task_name="workerpool0-0", message="Job failed."
            ),
            False,
        ),
    ],
    ids=["succeeded", "failed", "cancelled", "replica", "other-resource", "running", "not-service"],
)
def test_shared_sink_filter_selects_job_endings(
    sink_filter: Any, entry: dict[str, Any], expected: bool
) -> None:
    assert sink_filter.matches(entry) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('resource.type = "ml_job"', True),
        ("resource.type=ml_job", True),
        ('resource.type = "ML_JOB"', True),  # string comparisons ignore case
        ('resource.type != "ml_job"', False),
        ('resource.type != "gce_instance"', True),
        ('jsonPayload.message =~ "^Job completed"', True),
        ('jsonPayload.message =~ "^completed"', False),
        ('jsonPayload.message !~ "failed"', True),
        ('jsonPayload.message : "COMPLETED"', True),
        ('jsonPayload : "successfully"', True),  # has on a struct searches its values
        ("jsonPayload.message:*", True),
        ("textPayload:*", False),
        ('labels."ml.googleapis.com/job_state" = "SUCCEEDED"', True),
        ('labels."ml.googleapis.com/job_state" = FAILED', False),
        ("severity >= INFO", True),
        ('severity > "INFO"', False),
        ("severity < WARNING", True),
        ("severity <= DEBUG", False),
        ("severity = info", True),
        ('timestamp >= "2026-11-26T10:02:44.512881Z"', True),
        ('timestamp > "2026-11-26T10:02:44.512881Z"', False),
        ('timestamp = "2026-11-26T11:02:44.512881+01:00"', True),  # same instant
        ('timestamp < "2026-11-26T10:02:44.512881001Z"', True),  # nanoseconds count
        ('timestamp >= "2026-11-25T10:00:00.000000+0000"', True),  # the client's format
        ('timestamp <= "2026-11-26"', False),
        ('resource.labels.job_id > "5"', True),
        ('resource.type="ml_job" severity=INFO', True),  # implicit AND
        ('resource.type="ml_job" AND severity=ERROR', False),
        ('severity=ERROR OR resource.type="ml_job"', True),
        ("NOT severity=ERROR", True),
        ("-severity=INFO", False),
        ('-(severity=ERROR OR textPayload:"x")', True),
        ('resource.type="ml_job"\nAND\n  (severity=ERROR\n   OR severity=INFO)', True),
    ],
)
def test_comparisons_and_operators(query: str, expected: bool) -> None:
    assert compile_filter(query).matches(SUCCEEDED_LINE) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # value lists: the comparison with each value, under the list's own AND/OR/NOT
        ("severity=(WARNING OR INFO)", True),
        ("severity=(WARNING OR ERROR)", False),
        ("severity>=(ERROR OR DEBUG)", True),
        ('jsonPayload.message:("failed" OR "completed")', True),
        ('jsonPayload.message:("job" AND "failed")', False),
        ('jsonPayload.message:("job" "completed")', True),  # implicit AND inside too
        ("resource.labels.task_name=(NOT service)", False),
        ('resource.type=("gce_instance" OR ("ml_job" AND "ML_JOB"))', True),
        # global restrictions: text alone, found in any field, ignoring case
        ('"completed successfully"', True),
        ("SUCCESSFULLY", True),
        ("5823194417368121344", True),  # the job id in resource.labels and logName
        ("completed failed", False),  # two restrictions, ANDed
        ("completed OR failed", True),
        ('-"completed"', False),
        ("and", False),  # lower case: a word to search for, not the operator
        ("ml.googleapis.com", True),
        # SEARCH: whole tokens, case aside; backticks keep a phrase together
        ('SEARCH("job SUCCESSFULLY")', True),
        ('SEARCH("complete")', False),
        ('SEARCH("`completed successfully`")', True),
        ('SEARCH("`successfully completed`")', False),
        ('SEARCH("`pleted succ`")', False),
        ('SEARCH(jsonPayload, "completed")', True),
        ('SEARCH(jsonPayload.levelname, "completed")', False),
        ('SEARCH(labels."ml.googleapis.com/job_state", "succeeded")', True),
        ('SEARCH("acme ml googleapis")', True),  # logName's tokens: split at '/', '-', '.'
        # log_id: the decoded log ID, whatever the project
        ('log_id("ml.googleapis.com/5823194417368121344")', True),
        ('log_id("ml.googleapis.com%2F5823194417368121344")', False),
        ('log_id("5823194417368121344")', False),
        ('log_id("ml.googleapis.com/5823194417368121344") severity>=WARNING', False),
    ],
)
def test_value_lists_global_text_and_functions(query: str, expected: bool) -> None:
    assert compile_filter(query).matches(SUCCEEDED_LINE) is expected


def test_search_reads_repeated_fields_and_numbers() -> None:
    entry = {"jsonPayload": {"steps": [{"name": "load"}, {"name": "fit", "seconds": 12.0}]}}
    assert compile_filter('SEARCH(jsonPayload.steps.name, "fit")').matches(entry)
    assert compile_filter('SEARCH("12")').matches(entry)
    assert not compile_filter('SEARCH(jsonPayload.steps.seconds, "fit")').matches(entry)
    assert not compile_filter('SEARCH(jsonPayload.missing, "fit")').matches(entry)


def test_or_binds_tighter_than_and() -> None:
    # Cloud Logging reads `a OR NOT b AND NOT c OR d` as `(a OR NOT b) AND (NOT c OR d)`.
    query = compile_filter("a=1 OR NOT b=1 AND NOT c=1 OR d=1")
    # (false OR true) AND (false OR false): the SQL-like reading would be true.
    entry = {"a": "0", "b": "0", "c": "1", "d": "0"}
    assert query.matches(entry) is False
    assert query.matches({**entry, "d": "1"}) is True


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('jsonPayload.missing = "x"', False),
        ('jsonPayload.missing != "x"', False),
        ('jsonPayload.missing =~ "."', False),
        ('jsonPayload.missing !~ "x"', False),
        ('jsonPayload.missing : "x"', False),
        ('jsonPayload.missing >= "a"', False),
        ('textPayload.deeper = "x"', False),
        ('NOT jsonPayload.missing = "x"', True),
        ('-jsonPayload.missing = "x"', True),
    ],
)
def test_a_missing_field_never_matches_except_under_not(query: str, expected: bool) -> None:
    assert compile_filter(query).matches(SUCCEEDED_LINE) is expected


def test_repeated_fields_match_when_any_element_does() -> None:
    entry = {"jsonPayload": {"items": [{"name": "a"}, {"name": "b"}]}}
    assert compile_filter('jsonPayload.items.name = "b"').matches(entry)
    assert not compile_filter('jsonPayload.items.name = "c"').matches(entry)


def test_an_entry_without_severity_has_default_severity() -> None:
    entry = {"textPayload": "x"}
    assert compile_filter("severity = DEFAULT").matches(entry)
    assert not compile_filter("severity >= DEBUG").matches(entry)


def test_blank_filter_matches_everything() -> None:
    assert compile_filter("  \n").matches(REPLICA_ERROR_LINE)


@pytest.mark.parametrize(
    ("query", "position", "expected"),
    [
        ("resource.type =", 15, "a value"),
        ('resource.type = "ml_job', 16, "closing"),
        ('(resource.type = "ml_job"', 25, "')'"),
        ('resource.type = "ml_job" AND', 28, "a restriction"),
        ('resource.type = "ml_job" )', 25, "AND, OR or the end"),
        ("= ml_job", 0, "a restriction"),
        ("severity >= LOUD", 12, "a severity"),
        ("timestamp >= yesterday", 13, "RFC3339"),
        ('textPayload =~ "(unclosed"', 15, "regular expression"),
        ("resource.type = *", 14, "presence"),
        ("a=1 AND OR b=2", 8, "not the keyword OR"),
        ("()", 1, "an expression"),
        ("a=1\nAND b=", 10, "line 2, column 7"),
        ("severity=(WARNING OR)", 20, "a value"),
        ("severity=(WARNING ERROR", 23, "')' to close the list of values"),
        ("severity=()", 10, "a value inside the parentheses"),
        ("severity=(WARNING OR LOUD)", 21, "a severity"),
        ("labels.k:(a OR AND)", 15, "a value, not the keyword AND"),
        ("sample(insertId, 0.1)", 0, "a supported function (SEARCH, log_id)"),
        ("SEARCH()", 7, "a quoted search text"),
        ('SEARCH("x"', 10, "')' to close the arguments of SEARCH"),
        ('SEARCH(textPayload "x")', 19, "',' between the field and the search text"),
        ('SEARCH("...")', 8, "at least one word"),
        ('SEARCH("a `b c")', 10, "a closing '`'"),
        ("log_id(trainer)", 7, "a quoted string argument"),
    ],
)
def test_syntax_errors_name_the_position_and_what_was_expected(
    query: str, position: int, expected: str
) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        compile_filter(query)
    assert caught.value.position == position
    assert expected in str(caught.value)
    assert isinstance(caught.value, LocalCloudError)


def test_an_empty_filter_is_not_an_error_but_a_missing_comparison_is() -> None:
    compile_filter("")  # the API treats an empty filter as "everything"
    with pytest.raises(FilterSyntaxError, match="position 3"):
        compile_filter("NOT")


# --- the log router ------------------------------------------------------------------------


class FakePublisher:
    def __init__(self, failures: int = 0) -> None:
        self.messages: list[tuple[bytes, dict[str, str]]] = []
        self.calls = 0
        self._failures = failures

    def __call__(self, data: bytes, attributes: dict[str, str]) -> None:
        self.calls += 1
        if self.calls <= self._failures:
            raise ConnectionError("pubsub unavailable")
        self.messages.append((data, dict(attributes)))

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(data) for data, _ in self.messages]


@pytest.fixture
def router_log() -> io.StringIO:
    return io.StringIO()


def test_router_publishes_exactly_the_matching_entries(
    store: LogStore, router_log: io.StringIO
) -> None:
    publisher = FakePublisher()
    router = LogRouter.from_shared_filter(store, publisher, stream=router_log).start()
    try:
        cancelled = cancelled_line()
        for entry in (SUCCEEDED_LINE, REPLICA_ERROR_LINE, FAILED_LINE, unrelated_line()):
            store.append(entry)
        # Entries are published in order: once the last one is out, nothing else is coming.
        store.append(cancelled)
        wait_for(lambda: len(publisher.messages) >= 3, "three published entries")
    finally:
        router.stop()

    assert publisher.entries() == [SUCCEEDED_LINE, FAILED_LINE, cancelled]
    assert [attributes for _, attributes in publisher.messages] == [
        {"logging.googleapis.com/timestamp": "2026-11-26T10:02:44.512881Z"},
        {"logging.googleapis.com/timestamp": "2026-11-26T11:40:01.997301Z"},
        {"logging.googleapis.com/timestamp": cancelled["timestamp"]},
    ]
    assert router_log.getvalue() == ""


def test_router_retries_a_failed_publish(store: LogStore, router_log: io.StringIO) -> None:
    publisher = FakePublisher(failures=1)
    router = LogRouter(
        store,
        'resource.type="ml_job"',
        publisher,
        retry_interval_s=0.01,
        stream=router_log,
    ).start()
    try:
        store.append(FAILED_LINE)  # must not raise although the publish fails
        wait_for(lambda: len(publisher.messages) == 1, "the retried publish")
    finally:
        router.stop()

    assert publisher.calls == 2
    assert publisher.entries() == [FAILED_LINE]
    assert len(store.entries()) == 1
    records = [json.loads(line) for line in router_log.getvalue().splitlines()]
    assert [(r["severity"], r["insert_id"]) for r in records] == [("ERROR", "9o8i7u6y5t4r")]
    assert "pubsub unavailable" in records[0]["error"]


def test_router_ignores_entries_before_start_and_after_stop(store: LogStore) -> None:
    publisher = FakePublisher()
    router = LogRouter(store, 'resource.type="ml_job"', publisher)
    store.append(SUCCEEDED_LINE)
    router.start()
    store.append(FAILED_LINE)
    wait_for(lambda: len(publisher.messages) == 1, "one published entry")
    router.stop()
    store.append(cancelled_line())

    assert publisher.entries() == [FAILED_LINE]
    assert router.pending == 0


def test_router_rejects_a_bad_filter(store: LogStore) -> None:
    with pytest.raises(FilterSyntaxError, match="position 9"):
        LogRouter(store, "severity=", FakePublisher())


def test_pubsub_publisher_surfaces_an_unreachable_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 1 answers nothing: the publish must fail to the caller, not vanish in a future.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    publish = pubsub_publisher("p", "job-events", timeout_s=0.2)
    with pytest.raises(LocalCloudError, match="projects/p/topics/job-events"):
        publish(b"{}", {"logging.googleapis.com/timestamp": "2026-11-26T10:02:44Z"})


# --- the scheduler -------------------------------------------------------------------------


def test_scheduler_ticks_until_stopped() -> None:
    ticks: list[tuple[bytes, dict[str, str]]] = []
    scheduler = Scheduler(0.01, lambda data, attributes: ticks.append((data, attributes)))
    scheduler.start()
    try:
        wait_for(lambda: len(ticks) >= 3, "three ticks")
    finally:
        scheduler.stop()
    count = len(ticks)
    time.sleep(0.05)  # five intervals: a scheduler still running would have ticked again

    assert len(ticks) == count
    assert all(json.loads(data) == {"tick": True} for data, _ in ticks)
    assert ticks[0] == (TICK, {})


def test_scheduler_survives_publish_errors() -> None:
    calls: list[bytes] = []
    log = io.StringIO()

    def flaky(data: bytes, attributes: dict[str, str]) -> None:
        calls.append(data)
        if len(calls) == 1:
            raise ConnectionError("pubsub unavailable")

    scheduler = Scheduler(0.01, flaky, stream=log).start()
    try:
        wait_for(lambda: len(calls) >= 3, "ticks after a failed one")
    finally:
        scheduler.stop()

    record = json.loads(log.getvalue().splitlines()[0])
    assert record["severity"] == "ERROR" and "pubsub unavailable" in record["error"]


def test_scheduler_rejects_a_non_positive_interval() -> None:
    with pytest.raises(LocalCloudError, match="interval"):
        Scheduler(0, lambda data, attributes: None)
