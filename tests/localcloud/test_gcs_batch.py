"""localcloud's Cloud Storage serves JSON API batch requests, which fake-gcs-server lacks:
the official client's `client.batch()` deletes and patches many objects in one request,
each call with the proxy's full semantics (a versioned bucket keeps what a batched delete
drops) and its own status in the answer."""

from __future__ import annotations

import email
import uuid
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]

from localcloud.gcs_batch import MAX_PARTS
from localcloud.storage import StorageServer

PROJECT = "localcloud"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with StorageServer(root=tmp_path_factory.mktemp("gcs") / "gcs", keep_versions=True) as server:
        yield server


@pytest.fixture
def client(gcs: StorageServer) -> storage.Client:
    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs.url},
    )


def new_bucket(client: storage.Client, *, versioning: bool = False) -> Any:
    bucket = client.bucket(f"b-{uuid.uuid4().hex[:12]}")
    bucket.versioning_enabled = versioning
    return client.create_bucket(bucket)


def upload(bucket: Any, name: str, data: bytes = b"a,b\n1,2\n") -> int:
    blob = bucket.blob(name)
    blob.upload_from_string(data, content_type="text/csv")
    return int(blob.generation)


def names(client: storage.Client, bucket: Any) -> list[str]:
    return [blob.name for blob in client.list_blobs(bucket.name)]


def statuses(batch: Any) -> list[int]:
    return [response.status_code for response in batch._responses]


def test_a_batch_of_deletes_removes_the_objects_each_answered_204(client: storage.Client) -> None:
    bucket = new_bucket(client)
    for name in ("in/a.csv", "in/b c.csv", "in/ü/c.csv", "keep.csv"):
        upload(bucket, name)

    with client.batch(raise_exception=False) as batch:
        for name in ("in/a.csv", "in/b c.csv", "in/ü/c.csv"):
            bucket.delete_blob(name)

    assert statuses(batch) == [204, 204, 204]
    assert names(client, bucket) == ["keep.csv"]


def test_a_missing_object_fails_its_own_part_only(client: storage.Client) -> None:
    bucket = new_bucket(client)
    upload(bucket, "a.csv")
    upload(bucket, "c.csv")

    with client.batch(raise_exception=False) as batch:
        bucket.delete_blob("a.csv")
        bucket.delete_blob("missing.csv")
        bucket.delete_blob("c.csv")

    assert statuses(batch) == [204, 404, 204]
    assert batch._responses[1].json()["error"]["code"] == 404
    assert names(client, bucket) == []


def test_a_generation_precondition_that_fails_fails_its_own_part_only(
    client: storage.Client,
) -> None:
    bucket = new_bucket(client)
    a = upload(bucket, "a.csv")
    b = upload(bucket, "b.csv")

    with client.batch(raise_exception=False) as batch:
        bucket.delete_blob("a.csv", if_generation_match=a)
        bucket.delete_blob("b.csv", if_generation_match=b + 1)

    assert statuses(batch) == [204, 412]
    assert names(client, bucket) == ["b.csv"]
    with pytest.raises(exceptions.PreconditionFailed):  # as a plain delete
        bucket.delete_blob("b.csv", if_generation_match=b + 1)
    assert names(client, bucket) == ["b.csv"]


def test_without_raise_exception_false_a_failed_part_raises_after_the_others_ran(
    client: storage.Client,
) -> None:
    bucket = new_bucket(client)
    upload(bucket, "a.csv")

    with pytest.raises(exceptions.NotFound), client.batch():
        bucket.delete_blob("missing.csv")
        bucket.delete_blob("a.csv")

    assert names(client, bucket) == []


def test_a_batch_of_metadata_patches(client: storage.Client) -> None:
    bucket = new_bucket(client)
    upload(bucket, "a.csv")
    upload(bucket, "b.csv")
    blobs = [bucket.blob("a.csv"), bucket.blob("b.csv")]

    with client.batch(raise_exception=False) as batch:
        for number, blob in enumerate(blobs):
            blob.metadata = {"state": f"done-{number}"}
            blob.patch()

    assert statuses(batch) == [200, 200]
    # The client fills each blob from its part of the answer.
    assert [blob.metadata for blob in blobs] == [{"state": "done-0"}, {"state": "done-1"}]
    assert bucket.get_blob("a.csv").metadata == {"state": "done-0"}
    assert bucket.get_blob("b.csv").metadata == {"state": "done-1"}


def test_a_batched_delete_in_a_versioned_bucket_keeps_the_generation_as_a_plain_one(
    client: storage.Client,
) -> None:
    bucket = new_bucket(client, versioning=True)
    plain = upload(bucket, "plain.csv", b"plain")
    batched = upload(bucket, "batched.csv", b"batched")

    bucket.delete_blob("plain.csv")
    with client.batch(raise_exception=False) as batch:
        bucket.delete_blob("batched.csv")

    assert statuses(batch) == [204]
    assert names(client, bucket) == []
    assert [(b.name, b.generation) for b in client.list_blobs(bucket.name, versions=True)] == [
        ("batched.csv", batched), ("plain.csv", plain)
    ]  # fmt: skip
    assert bucket.blob("plain.csv", generation=plain).download_as_bytes() == b"plain"
    assert bucket.blob("batched.csv", generation=batched).download_as_bytes() == b"batched"


def test_a_batch_of_more_than_100_calls_is_refused_whole(client: storage.Client) -> None:
    bucket = new_bucket(client)
    upload(bucket, "a.csv")

    too_many = pytest.raises(exceptions.BadRequest, match=f"at most {MAX_PARTS}")
    with too_many, client.batch(raise_exception=False):
        bucket.delete_blob("a.csv")
        for number in range(MAX_PARTS):
            bucket.delete_blob(f"missing-{number}.csv")

    assert names(client, bucket) == ["a.csv"]  # nothing was sent


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b"{}", "is multipart/mixed, not application/json"),
        ("multipart/mixed", b"--x\r\n\r\nGET /storage/v1/b HTTP/1.1\r\n\r\n--x--", "no boundary"),
        (
            "multipart/mixed; boundary=x",
            b"--x\r\nContent-Type: application/http\r\n\r\nGET /storage/v1/b HTTP/1.1\r\n\r\n",
            "closing boundary",
        ),
        ("multipart/mixed; boundary=x", b"--x--\r\n", "holds no calls"),
    ],
)
def test_a_malformed_batch_body_is_refused_whole(
    gcs: StorageServer, content_type: str, body: bytes, message: str
) -> None:
    response = requests.post(
        f"{gcs.url}/batch/storage/v1", data=body, headers={"Content-Type": content_type}
    )

    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert message in response.json()["error"]["message"]


def part(content_id: str, request: str) -> str:
    return (
        "--b0undary\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        f"Content-ID: <{content_id}>\r\n\r\n{request}\r\n"
    )


def parts_of(response: requests.Response) -> list[Message]:
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content)
    assert message.is_multipart()
    return list(message.get_payload())  # type: ignore[arg-type]


def test_calls_outside_the_json_api_are_refused_per_part_the_others_served(
    gcs: StorageServer, client: storage.Client
) -> None:
    bucket = new_bucket(client)
    upload(bucket, "a.csv", b"secret")
    body = "".join(
        [
            part("one", f"GET /storage/v1/b/{bucket.name}/o/a.csv HTTP/1.1"),
            part("two", f"GET /download/storage/v1/b/{bucket.name}/o/a.csv?alt=media HTTP/1.1"),
            part("three", f"GET {gcs.url}/storage/v1/b/{bucket.name}/o/a.csv?alt=media HTTP/1.1"),
            part(
                "four",
                "POST /batch/storage/v1 HTTP/1.1\r\nContent-Type: multipart/mixed; "
                "boundary=y\r\nContent-Length: 5\r\n\r\n--y--",
            ),
            part(
                "five",
                f"POST /upload/storage/v1/b/{bucket.name}/o?uploadType=media&name=n.csv "
                "HTTP/1.1\r\nContent-Type: text/csv\r\n\r\nx",
            ),
            part("six", f"DELETE {gcs.url}/storage/v1/b/{bucket.name}/o/a.csv HTTP/1.1"),
            "--b0undary--\r\n",
        ]
    )

    response = requests.post(
        f"{gcs.url}/batch/storage/v1",
        data=body.encode(),
        headers={"Content-Type": "multipart/mixed; boundary=b0undary"},
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("multipart/mixed; boundary=batch_")
    answers = parts_of(response)
    assert [p["Content-ID"] for p in answers] == [
        f"<response-{n}>" for n in ("one", "two", "three", "four", "five", "six")
    ]
    assert all(p.get_content_type() == "application/http" for p in answers)
    status_lines = [str(p.get_payload()).split("\r\n", 1)[0] for p in answers]
    assert status_lines == ["HTTP/1.1 200 OK", *["HTTP/1.1 400 Bad Request"] * 4,
                            "HTTP/1.1 204 No Content"]  # fmt: skip
    assert "batch cannot hold another batch" in str(answers[3].get_payload())
    assert "downloads cannot be batched" in str(answers[2].get_payload())
    assert names(client, bucket) == []  # the sixth ran; the upload did not
