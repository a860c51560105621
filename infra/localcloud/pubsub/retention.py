"""What the server keeps beyond the subscriptions' backlogs, so that Seek can replay it.

A topic's published messages are kept (once, in the store's `retained` table) while anything
may ask for them again: the topic's own `message_retention_duration`, a subscription that
sets `retain_acked_messages` (for its `message_retention_duration`), or a snapshot — which
captures its subscription's backlog at creation and everything published after, and lives
for 7 days minus the age of the oldest message it captured. Not thread-safe: the broker holds
its lock around every call.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from localcloud.pubsub.backlog import Entry
from localcloud.pubsub.errors import AlreadyExists, FailedPrecondition, NotFound
from localcloud.pubsub.resources import (
    DAY_S,
    Pb,
    Snapshot,
    apply_update_mask,
    check_snapshot_name,
    project_of,
    seconds,
    subscription_retention_s,
)
from localcloud.pubsub.store import RetainedRow, SnapshotRow, Store

SNAPSHOT_LIFETIME_US = 7 * DAY_S * 1_000_000
# The real service refuses a snapshot that would expire within an hour of its creation.
MIN_SNAPSHOT_LIFETIME_US = 3600 * 1_000_000
# How often publishing forgets retained messages that nothing may ask for any more.
PRUNE_EVERY_S = 60.0


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class SnapshotRecord:
    pb: Pb  # the Snapshot
    first_after_id: int
    message_ids: frozenset[str]

    @property
    def floor_us(self) -> int:
        """Nothing the snapshot holds was published before this."""
        return int(self.pb.expire_time.ToMicroseconds()) - SNAPSHOT_LIFETIME_US

    def holds(self, row: RetainedRow) -> bool:
        return row.message_id >= self.first_after_id or str(row.message_id) in self.message_ids


class Retention:
    """The snapshots, and the rules for the retained messages of each topic."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._snapshots = {
            row.name: SnapshotRecord(
                Snapshot.FromString(row.pb), row.first_after_id, row.message_ids
            )
            for row in store.snapshots()
        }
        self._pruned_at: dict[str, float] = {}

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self, name: str) -> SnapshotRecord:
        check_snapshot_name(name)
        self._expire()
        try:
            return self._snapshots[name]
        except KeyError:
            raise NotFound(f"Snapshot does not exist: {name}") from None

    def list_snapshots(self, project: str) -> list[Pb]:
        self._expire()
        prefix = f"{project}/snapshots/"
        return [r.pb for n, r in sorted(self._snapshots.items()) if n.startswith(prefix)]

    def topic_snapshots(self, topic: str) -> list[str]:
        self._expire()
        return sorted(n for n, r in self._snapshots.items() if r.pb.topic == topic)

    def create_snapshot(
        self,
        name: str,
        subscription: str,
        topic: str,
        backlog: Iterable[Entry],
        first_after_id: int,
        labels: dict[str, str],
    ) -> Pb:
        """Capture `backlog` (the subscription's unacknowledged messages) and, through
        `first_after_id`, every message published to `topic` from now on."""
        if not name:  # the API names it when the request does not
            name = f"projects/{project_of(subscription)}/snapshots/snapshot-{secrets.token_hex(8)}"
        check_snapshot_name(name)
        self._expire()
        if name in self._snapshots:
            raise AlreadyExists("Snapshot already exists")
        captured = [
            RetainedRow(topic, int(e.message_id), e.publish_us(), e.message) for e in backlog
        ]
        now = now_us()
        oldest = min([row.publish_us for row in captured], default=now)
        expire_us = oldest + SNAPSHOT_LIFETIME_US
        if expire_us - now < MIN_SNAPSHOT_LIFETIME_US:
            raise FailedPrecondition(
                "The subscription's backlog is too old: the snapshot would expire in less "
                "than an hour"
            )
        pb = Snapshot(name=name, topic=topic)
        pb.labels.update(labels)
        pb.expire_time.FromMicroseconds(expire_us)
        record = SnapshotRecord(pb, first_after_id, frozenset(str(r.message_id) for r in captured))
        self._store.put_snapshot(
            SnapshotRow(name, pb.SerializeToString(), first_after_id, record.message_ids),
            captured,
        )
        self._snapshots[name] = record
        return pb

    def update_snapshot(self, patch: Pb, mask: Pb) -> Pb:
        record = self.snapshot(patch.name)
        updated = apply_update_mask(record.pb, patch, mask, "UpdateSnapshotRequest")
        if updated.topic != record.pb.topic:
            raise FailedPrecondition("The topic of a snapshot cannot be changed")
        new = SnapshotRecord(updated, record.first_after_id, record.message_ids)
        self._store.put_snapshot(
            SnapshotRow(
                updated.name, updated.SerializeToString(), new.first_after_id, new.message_ids
            )
        )
        self._snapshots[updated.name] = new
        return updated

    def delete_snapshot(self, name: str) -> str:
        """Delete the snapshot; returns its topic, whose retained messages may now go."""
        record = self.snapshot(name)
        del self._snapshots[name]
        self._store.delete_snapshot(name)
        return str(record.pb.topic)

    def _expire(self) -> None:
        now = now_us()
        for name, record in list(self._snapshots.items()):
            if record.pb.expire_time.ToMicroseconds() <= now:
                del self._snapshots[name]
                self._store.delete_snapshot(name)

    # -- retained messages ----------------------------------------------------------------

    def keeps(self, topic: str, topic_pb: Pb, subscriptions: Iterable[Pb]) -> bool:
        """Whether messages published to `topic` now must be retained."""
        return (
            topic_pb.HasField("message_retention_duration")
            or any(s.retain_acked_messages for s in subscriptions)
            or any(r.pb.topic == topic for r in self._snapshots.values())
        )

    def replay_for_time(
        self, topic: str, topic_pb: Pb | None, subscription: Pb, origin: int, time_us: int
    ) -> list[RetainedRow]:
        """The retained messages a Seek to `time_us` marks unacknowledged: those published
        since then within the subscription's retention when it retains acknowledged
        messages (and only since it exists), and within the topic's retention."""
        now = now_us()
        found: dict[int, RetainedRow] = {}
        if subscription.retain_acked_messages:
            window = int(subscription_retention_s(subscription) * 1_000_000)
            for row in self._store.retained(topic, max(time_us, now - window)):
                if row.message_id >= origin:
                    found[row.message_id] = row
        if topic_pb is not None and topic_pb.HasField("message_retention_duration"):
            window = int(seconds(topic_pb.message_retention_duration) * 1_000_000)
            for row in self._store.retained(topic, max(time_us, now - window)):
                found[row.message_id] = row
        return [found[k] for k in sorted(found)]

    def replay_for_snapshot(self, record: SnapshotRecord) -> list[RetainedRow]:
        return [
            r for r in self._store.retained(record.pb.topic, record.floor_us) if record.holds(r)
        ]

    def prune(
        self, topic: str, topic_pb: Pb | None, subscriptions: Iterable[Pb], force: bool = False
    ) -> None:
        """Forget the topic's retained messages that nothing may ask for any more; at most
        every PRUNE_EVERY_S unless forced."""
        clock = time.monotonic()
        if not force and clock - self._pruned_at.get(topic, 0.0) < PRUNE_EVERY_S:
            return
        self._pruned_at[topic] = clock
        self._expire()
        now = now_us()
        floors = [r.floor_us for r in self._snapshots.values() if r.pb.topic == topic]
        if topic_pb is not None and topic_pb.HasField("message_retention_duration"):
            floors.append(now - int(seconds(topic_pb.message_retention_duration) * 1_000_000))
        for sub in subscriptions:
            if sub.retain_acked_messages:
                floors.append(now - int(subscription_retention_s(sub) * 1_000_000))
        self._store.prune_retained(topic, min(floors) if floors else None)
