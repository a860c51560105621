"""The state store's bulk delete (`delete_many`, what a flush uses to free its pending
records) with the official client: batch requests where the server has them, single
deletes where it has not or where a batch fails, and every key gone either way."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localcloud.storage import StorageServer
from retrain.adapters.gcs import GcsStateStore
from tests.contract.faults import FaultProxy

_buckets = itertools.count(1)


@pytest.fixture(scope="module")
def batching_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    """localcloud's storage as the stack runs it: the proxy in front has batch requests."""
    with StorageServer(root=tmp_path_factory.mktemp("gcs"), keep_versions=True) as server:
        yield server


@pytest.fixture
def proxy(batching_gcs: StorageServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the batching storage, counting the requests it passes."""
    started = FaultProxy(batching_gcs.url).start()
    try:
        yield started
    finally:
        started.stop()


def _store(url: str, direct: str) -> tuple[GcsStateStore, storage.Bucket]:
    """A state store whose client goes to `url`, over a fresh bucket made at `direct`."""
    admin = storage.Client(project="acme-ml", credentials=AnonymousCredentials(),
                           client_options={"api_endpoint": direct})  # fmt: skip
    bucket = admin.create_bucket(f"bulk-{next(_buckets)}")
    client = storage.Client(project="acme-ml", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": url})  # fmt: skip
    return GcsStateStore(client, f"gs://{bucket.name}/state"), bucket


def _fill(store: GcsStateStore, n: int) -> list[str]:
    keys = [f"pending/p/part-{i:04d}.csv@1" for i in range(n)]
    for key in keys:
        assert store.create(key, {"object": key}) is not None
    return keys


def test_a_server_with_batches_deletes_100_per_request(
    proxy: FaultProxy, batching_gcs: StorageServer
) -> None:
    store, bucket = _store(proxy.url, batching_gcs.url)
    keys = _fill(store, 250)
    before = proxy.requests
    store.delete_many([*keys, "pending/p/never-there.csv@1"])  # a missing key is fine
    assert proxy.requests - before == 3  # 251 deletes in batches of 100
    assert list(bucket.list_blobs()) == []


def test_a_failed_batch_is_done_as_single_deletes(
    proxy: FaultProxy, batching_gcs: StorageServer
) -> None:
    store, bucket = _store(proxy.url, batching_gcs.url)
    keys = _fill(store, 120)
    batch = proxy.fail(lambda method, path, _b: path.startswith("/batch/"), 503, times=1)
    store.delete_many(keys)
    assert batch.hits == 1
    assert list(bucket.list_blobs()) == []
    # The server has batches: the next bulk delete uses them again.
    again = _fill(store, 100)
    before = proxy.requests
    store.delete_many(again)
    assert proxy.requests - before == 1 and list(bucket.list_blobs()) == []


def test_a_batch_applied_but_answered_503_loses_nothing(
    proxy: FaultProxy, batching_gcs: StorageServer
) -> None:
    store, bucket = _store(proxy.url, batching_gcs.url)
    keys = _fill(store, 50)
    proxy.fail(lambda method, path, _b: path.startswith("/batch/"), 503, after_upstream=True)
    store.delete_many(keys)  # the single deletes that follow find the keys gone
    assert list(bucket.list_blobs()) == []


def test_a_server_without_batches_gets_single_deletes(gcs: StorageServer, tmp_path: Path) -> None:
    proxy = FaultProxy(gcs.url).start()  # fake-gcs-server alone: no batch requests
    try:
        store, bucket = _store(proxy.url, gcs.url)
        keys = _fill(store, 150)
        before = proxy.requests
        store.delete_many(keys)
        assert list(bucket.list_blobs()) == []
        assert proxy.requests - before == 1 + 150  # one refused batch, then each alone
        more = _fill(store, 30)
        before = proxy.requests
        store.delete_many(more)
        assert proxy.requests - before == 30  # no batch tried again
        assert list(bucket.list_blobs()) == []
    finally:
        proxy.stop()
