"""localcloud's Cloud Storage keeps noncurrent generations in buckets with object
versioning, as GCS does, behind the official client: fake-gcs-server on its filesystem
backend does the work, the versioning proxy in front of it keeps what an overwrite or a
delete would drop, across restarts. Buckets without versioning lose an overwritten
generation, as on GCS."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]

from localcloud.gcs_versions import byte_range
from localcloud.procs import wait_until
from localcloud.stack import DEMO_CONFIG, Options, Stack
from localcloud.storage import StorageServer

PROJECT = "localcloud"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    with StorageServer(root=tmp_path_factory.mktemp("gcs") / "gcs", keep_versions=True) as server:
        yield server


def client_of(server: StorageServer) -> storage.Client:
    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.url},
    )


@pytest.fixture
def client(gcs: StorageServer) -> storage.Client:
    return client_of(gcs)


def new_bucket(client: storage.Client, *, versioning: bool) -> Any:
    bucket = client.bucket(f"b-{uuid.uuid4().hex[:12]}")
    bucket.versioning_enabled = versioning
    return client.create_bucket(bucket)


def upload(bucket: Any, name: str, data: bytes, **kwargs: Any) -> int:
    blob = bucket.blob(name, **kwargs)
    blob.upload_from_string(data, content_type="text/csv")
    return int(blob.generation)


def versions(client: storage.Client, bucket: Any, **kwargs: Any) -> list[tuple[str, int]]:
    return [(b.name, b.generation) for b in client.list_blobs(bucket.name, versions=True, **kwargs)]


def test_an_overwritten_generation_stays_readable_bytes_and_metadata(
    client: storage.Client,
) -> None:
    bucket = new_bucket(client, versioning=True)
    first = upload(bucket, "data/part-0.csv", b"a,b\n1,2\n")
    second = upload(bucket, "data/part-0.csv", b"a,b\n3,4\n5,6\n")
    assert second != first

    old = bucket.blob("data/part-0.csv", generation=first)
    assert old.exists()
    assert old.download_as_bytes() == b"a,b\n1,2\n"  # the client checks the hash it is sent
    old.reload()
    assert (old.generation, old.size, old.content_type) == (first, 8, "text/csv")
    assert old.md5_hash and old.crc32c
    assert f"generation={first}" in old.media_link  # a loaded blob downloads from its link
    assert old.download_as_bytes() == b"a,b\n1,2\n"
    live = bucket.get_blob("data/part-0.csv")
    assert (live.generation, live.download_as_bytes()) == (second, b"a,b\n3,4\n5,6\n")


def test_a_ranged_download_of_a_noncurrent_generation(client: storage.Client) -> None:
    bucket = new_bucket(client, versioning=True)
    first = upload(bucket, "r.csv", b"0123456789")
    upload(bucket, "r.csv", b"overwritten")
    old = bucket.blob("r.csv", generation=first)

    assert old.download_as_bytes(start=2, end=5) == b"2345"
    assert old.download_as_bytes(start=7) == b"789"
    assert old.download_as_bytes(start=8, end=100) == b"89"


def test_a_listing_with_versions_shows_every_generation_a_plain_one_the_live(
    client: storage.Client,
) -> None:
    bucket = new_bucket(client, versioning=True)
    a1 = upload(bucket, "in/a.csv", b"1")
    a2 = upload(bucket, "in/a.csv", b"2")
    b1 = upload(bucket, "in/b.csv", b"3")
    c1 = upload(bucket, "in/sub/c.csv", b"4")
    c2 = upload(bucket, "in/sub/c.csv", b"5")
    upload(bucket, "other.csv", b"6")

    assert versions(client, bucket, prefix="in/") == [
        ("in/a.csv", a1), ("in/a.csv", a2), ("in/b.csv", b1),
        ("in/sub/c.csv", c1), ("in/sub/c.csv", c2),
    ]  # fmt: skip
    assert [(b.name, b.generation) for b in client.list_blobs(bucket.name, prefix="in/")] == [
        ("in/a.csv", a2), ("in/b.csv", b1), ("in/sub/c.csv", c2)
    ]  # fmt: skip
    listing = client.list_blobs(bucket.name, prefix="in/", delimiter="/", versions=True)
    assert [(b.name, b.generation) for b in listing] == [
        ("in/a.csv", a1), ("in/a.csv", a2), ("in/b.csv", b1)
    ]  # fmt: skip
    assert listing.prefixes == {"in/sub/"}


def test_deleting_one_generation_deletes_that_one_only(client: storage.Client) -> None:
    bucket = new_bucket(client, versioning=True)
    first = upload(bucket, "d.csv", b"first")
    second = upload(bucket, "d.csv", b"second")
    third = upload(bucket, "d.csv", b"third")

    bucket.blob("d.csv", generation=first).delete()

    assert not bucket.blob("d.csv", generation=first).exists()
    with pytest.raises(exceptions.NotFound):
        bucket.blob("d.csv", generation=first).download_as_bytes()
    with pytest.raises(exceptions.NotFound):  # GCS: 404 for a generation it does not have
        bucket.blob("d.csv", generation=first).delete()
    assert bucket.blob("d.csv", generation=second).download_as_bytes() == b"second"
    assert versions(client, bucket) == [("d.csv", second), ("d.csv", third)]

    bucket.blob("d.csv").delete()  # the live one becomes noncurrent

    assert bucket.get_blob("d.csv") is None
    assert bucket.blob("d.csv", generation=third).download_as_bytes() == b"third"
    assert versions(client, bucket) == [("d.csv", second), ("d.csv", third)]
    assert list(client.list_blobs(bucket.name)) == []


def test_deleting_the_live_generation_by_number_leaves_no_copy(client: storage.Client) -> None:
    bucket = new_bucket(client, versioning=True)
    first = upload(bucket, "x.csv", b"first")
    second = upload(bucket, "x.csv", b"second")

    bucket.blob("x.csv", generation=second).delete()

    assert bucket.get_blob("x.csv") is None
    assert not bucket.blob("x.csv", generation=second).exists()
    assert versions(client, bucket) == [("x.csv", first)]


def test_a_bucket_without_versioning_drops_an_overwritten_generation(
    client: storage.Client,
) -> None:
    bucket = new_bucket(client, versioning=False)
    first = upload(bucket, "p.csv", b"first")
    second = upload(bucket, "p.csv", b"second")

    assert client.get_bucket(bucket.name).versioning_enabled is False
    assert not bucket.blob("p.csv", generation=first).exists()
    with pytest.raises(exceptions.NotFound):
        bucket.blob("p.csv", generation=first).download_as_bytes()
    assert versions(client, bucket) == [("p.csv", second)]
    # Naming a generation it does not have deletes nothing (fake-gcs-server alone would
    # delete the live object).
    with pytest.raises(exceptions.NotFound):
        bucket.blob("p.csv", generation=first).delete()
    assert bucket.blob("p.csv", generation=second).download_as_bytes() == b"second"


def test_versioning_is_reported_after_create_and_after_patch_and_can_be_suspended(
    client: storage.Client,
) -> None:
    created = new_bucket(client, versioning=True)
    assert created.versioning_enabled is True
    assert client.get_bucket(created.name).versioning_enabled is True
    listed = {b.name: b.versioning_enabled for b in client.list_buckets()}
    assert listed[created.name] is True

    patched = new_bucket(client, versioning=False)
    lost = upload(patched, "q.csv", b"lost")
    before = upload(patched, "q.csv", b"before")  # live while versioning is turned on
    patched.versioning_enabled = True
    patched.patch()
    assert patched.versioning_enabled is True
    assert client.get_bucket(patched.name).versioning_enabled is True
    kept = upload(patched, "q.csv", b"kept")
    live = upload(patched, "q.csv", b"live")
    # As on GCS: the generation live when versioning was turned on is kept once
    # overwritten; the one overwritten before that is gone.
    assert patched.blob("q.csv", generation=before).download_as_bytes() == b"before"
    assert patched.blob("q.csv", generation=kept).download_as_bytes() == b"kept"
    assert not patched.blob("q.csv", generation=lost).exists()

    patched.versioning_enabled = False  # suspended: the noncurrent ones stay, no new ones
    patched.patch()
    assert client.get_bucket(patched.name).versioning_enabled is False
    after = upload(patched, "q.csv", b"after")
    assert not patched.blob("q.csv", generation=live).exists()
    assert versions(client, patched) == [
        ("q.csv", before), ("q.csv", kept), ("q.csv", after)
    ]  # fmt: skip


def test_resumable_uploads_copies_and_rewrites_are_kept(client: storage.Client) -> None:
    bucket = new_bucket(client, versioning=True)
    big = os.urandom(600 * 1024)  # three 256 KiB chunks: a resumable upload session
    first = upload(bucket, "big.bin", big, chunk_size=256 * 1024)
    upload(bucket, "big.bin", b"small now")
    assert bucket.blob("big.bin", generation=first).download_as_bytes() == big

    copied = bucket.copy_blob(bucket.blob("big.bin", generation=None), bucket, "copy.bin")
    rewritten = bucket.blob("rewritten.bin")
    rewritten.rewrite(bucket.blob("big.bin"))
    upload(bucket, "copy.bin", b"replaced")
    upload(bucket, "rewritten.bin", b"replaced")

    assert bucket.blob("copy.bin", generation=copied.generation).download_as_bytes() == (
        b"small now"
    )
    assert bucket.blob("rewritten.bin", generation=rewritten.generation).download_as_bytes() == (
        b"small now"
    )


def test_a_deleted_bucket_takes_its_kept_generations_along(client: storage.Client) -> None:
    bucket = new_bucket(client, versioning=True)
    first = upload(bucket, "z.csv", b"first")
    upload(bucket, "z.csv", b"second")
    bucket.blob("z.csv").delete()

    bucket.delete()
    again = client.bucket(bucket.name)
    again.versioning_enabled = True
    client.create_bucket(again)

    assert not again.blob("z.csv", generation=first).exists()
    assert versions(client, again) == []


def test_kept_generations_and_versioning_survive_a_stop_and_a_start(tmp_path: Path) -> None:
    server = StorageServer(root=tmp_path / "gcs", keep_versions=True).start()
    try:
        client = client_of(server)
        bucket = new_bucket(client, versioning=True)
        first = upload(bucket, "s.csv", b"first")
        second = upload(bucket, "s.csv", b"second")
        url = server.url
        server.stop()
        server.start()

        assert server.url == url  # clients keep their STORAGE_EMULATOR_HOST
        client = client_of(server)
        assert client.get_bucket(bucket.name).versioning_enabled is True
        again = client.bucket(bucket.name)
        assert again.blob("s.csv", generation=first).download_as_bytes() == b"first"
        assert versions(client, again) == [("s.csv", first), ("s.csv", second)]
        assert again.get_blob("s.csv").generation == second
    finally:
        server.stop()


def test_a_killed_fake_gcs_server_is_restarted_behind_the_same_address(tmp_path: Path) -> None:
    server = StorageServer(root=tmp_path / "gcs", keep_versions=True).start()
    try:
        client = client_of(server)
        bucket = new_bucket(client, versioning=True)
        first = upload(bucket, "k.csv", b"first")
        upload(bucket, "k.csv", b"second")
        url, pid = server.url, server.pid
        os.kill(pid, signal.SIGKILL)  # what the supervisor sees: the process died
        wait_until(lambda: not server.alive(), what="fake-gcs-server dead")

        server.restart()

        assert server.url == url and server.pid != pid and server.alive()
        assert bucket.blob("k.csv", generation=first).download_as_bytes() == b"first"
        assert upload(bucket, "k.csv", b"third") != first
    finally:
        server.stop()


def test_localcloud_versions_the_landing_and_state_buckets_as_terraform_does(
    tmp_path: Path, gcs: StorageServer, client: storage.Client
) -> None:
    from retrain.config import parse_config

    suffix = uuid.uuid4().hex[:8]
    renamed = {
        name: f"{name}-{suffix}" for name in ("demo-landing", "demo-state", "demo-artifacts")
    }
    text = DEMO_CONFIG.read_text()
    for name, new in renamed.items():
        text = text.replace(f'"{name}"', f'"{new}"').replace(f"gs://{name}/", f"gs://{new}/")
    config = parse_config(text, str(DEMO_CONFIG))
    landing = client.create_bucket(renamed["demo-landing"])  # an earlier localcloud's, unversioned
    before = upload(landing, "digits/b1/part-0.csv", b"before")
    stack = Stack(Options(dir=tmp_path, config=DEMO_CONFIG))
    stack.storage = gcs

    stack._create_buckets(config)

    assert {name: client.get_bucket(new).versioning_enabled for name, new in renamed.items()} == {
        "demo-landing": True, "demo-state": True, "demo-artifacts": False
    }  # fmt: skip
    upload(landing, "digits/b1/part-0.csv", b"after")
    assert landing.blob("digits/b1/part-0.csv", generation=before).download_as_bytes() == b"before"


@pytest.mark.parametrize(
    ("header", "window"),
    [
        (None, None),
        ("bytes=2-5", (2, 5)),
        ("bytes=7-", (7, 9)),
        ("bytes=8-100", (8, 9)),  # past the end: up to the end, as GCS does
        ("bytes=-3", (7, 9)),  # the last three
        ("bytes=-30", (0, 9)),
        ("bytes=0-1,4-5", None),  # several ranges: the whole object
    ],
)
def test_a_range_header_is_read_as_gcs_reads_it(
    header: str | None, window: tuple[int, int] | None
) -> None:
    assert byte_range(header, 10) == window


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=5-4", "bytes=-0"])
def test_an_unsatisfiable_range_is_refused(header: str) -> None:
    with pytest.raises(ValueError):
        byte_range(header, 10)
