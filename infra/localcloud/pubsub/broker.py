"""The state and delivery rules of the local Pub/Sub server, free of any transport.

Each subscription keeps a backlog of its unacknowledged messages (see backlog.py).
Delivering an entry leases it under a new ack id and counts an attempt; an ack with the
current ack id removes it. Seek rewrites a backlog from what retention.py kept. All methods
take one lock, and the lock's condition wakes whoever waits for messages (Pull,
StreamingPull, push delivery).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

from localcloud.pubsub.backlog import Backlog, Entry
from localcloud.pubsub.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServerClosed,
)
from localcloud.pubsub.resources import (
    DELETED_TOPIC,
    MAX_ACK_DEADLINE_S,
    Pb,
    PubsubMessage,
    ReceivedMessage,
    Subscription,
    Topic,
    apply_update_mask,
    backoff_s,
    check_subscription_name,
    check_topic_name,
    counts_attempts,
    dead_letter_copy,
    validate_subscription,
    validate_topic,
)
from localcloud.pubsub.retention import Retention
from localcloud.pubsub.store import PendingRow, RetainedRow, Store

log = logging.getLogger(__name__)

__all__ = ["MAX_ACK_DEADLINE_S", "Broker", "Pb"]


class Broker:
    """Topics, subscriptions, snapshots and pending messages, persisted in `store`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._closed = False
        self._changes = 0
        self._topics: dict[str, Pb] = {}
        self._subs: dict[str, Backlog] = {}
        self._retention = Retention(store)
        self._seq = itertools.count()
        # A fresh state starts ids at the clock (in microseconds), so ids stay unique across
        # state dirs that are wiped: subscribers use them as idempotency keys.
        first_id = str(time.time_ns() // 1000)
        self._next_id = int(store.get_meta("next_message_id", first_id))
        # Ack ids name one lease; counting from the clock keeps them unique across restarts.
        self._leases = itertools.count(time.time_ns() // 1000)
        self._load()

    def _load(self) -> None:
        for name, raw in self._store.topics():
            self._topics[name] = Topic.FromString(raw)
        origins = self._store.origins()
        for name, raw in self._store.subscriptions():
            self._subs[name] = Backlog.of(Subscription.FromString(raw), origins.get(name, 0))
        now = time.monotonic()
        for row in self._store.pending():
            backlog = self._subs.get(row.subscription)
            if backlog is not None:  # messages in flight at shutdown are deliverable again
                backlog.put(Entry(row.message_id, next(self._seq), row.pb, row.attempts, now))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._notify()
            self._store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- topics ---------------------------------------------------------------------------

    def create_topic(self, topic: Pb) -> Pb:
        name = check_topic_name(topic.name)
        validate_topic(topic)
        with self._cond:
            self._check_open()
            if name in self._topics:
                raise AlreadyExists("Topic already exists")
            self._topics[name] = topic
            self._store.put_topic(name, topic.SerializeToString())
            return topic

    def get_topic(self, name: str) -> Pb:
        with self._cond:
            return self._topic(name)

    def list_topics(self, project: str) -> list[Pb]:
        prefix = f"{project}/topics/"
        with self._cond:
            return [t for n, t in sorted(self._topics.items()) if n.startswith(prefix)]

    def update_topic(self, topic: Pb, mask: Pb) -> Pb:
        """Apply the fields named by the update mask (the real UpdateTopic)."""
        with self._cond:
            current = self._topic(topic.name)
            updated = apply_update_mask(current, topic, mask, "UpdateTopicRequest")
            validate_topic(updated)
            self._topics[updated.name] = updated
            self._store.put_topic(updated.name, updated.SerializeToString())
            return updated

    def delete_topic(self, name: str) -> None:
        with self._cond:
            self._topic(name)
            del self._topics[name]
            self._store.delete_topic(name)
            # As on the real service, subscriptions outlive their topic, detached from it.
            for sub_name, backlog in self._subs.items():
                if backlog.pb.topic == name:
                    backlog.pb.topic = DELETED_TOPIC
                    self._store.put_subscription(sub_name, backlog.pb.SerializeToString())
            self._retention.prune(name, None, [], force=True)

    def list_topic_subscriptions(self, topic: str) -> list[str]:
        with self._cond:
            self._topic(topic)
            return sorted(n for n, b in self._subs.items() if b.pb.topic == topic)

    def list_topic_snapshots(self, topic: str) -> list[str]:
        with self._cond:
            self._topic(topic)
            return self._retention.topic_snapshots(topic)

    def _topic(self, name: str) -> Pb:
        self._check_open()
        check_topic_name(name)
        try:
            return self._topics[name]
        except KeyError:
            raise NotFound(f"Topic not found: {name}") from None

    # -- publishing -----------------------------------------------------------------------

    def publish(self, topic: str, messages: list[Pb]) -> list[str]:
        """Stamp id and publish time on each message and copy it to every subscription
        whose filter it passes."""
        if not messages:
            raise InvalidArgument("The request contains no messages")
        for message in messages:
            if not message.data and not message.attributes:
                raise InvalidArgument("Some messages contain neither data nor attributes")
        with self._cond:
            self._check_open()
            self._topic(topic)
            ids = self._publish_locked(topic, messages)
            self._notify()
            return ids

    def _publish_locked(self, topic: str, messages: list[Pb]) -> list[str]:
        targets = [(n, b) for n, b in self._subs.items() if b.pb.topic == topic]
        topic_pb = self._topics[topic]
        subscriptions = [b.pb for _, b in targets]
        keep = self._retention.keeps(topic, topic_pb, subscriptions)
        now = time.monotonic()
        ids: list[str] = []
        rows: list[PendingRow] = []
        retained: list[RetainedRow] = []
        for message in messages:
            stamped = PubsubMessage()
            stamped.CopyFrom(message)
            stamped.message_id = str(self._next_id)
            stamped.publish_time.GetCurrentTime()
            self._next_id += 1
            ids.append(stamped.message_id)
            raw = stamped.SerializeToString()
            if keep:
                publish_us = stamped.publish_time.ToMicroseconds()
                retained.append(RetainedRow(topic, int(stamped.message_id), publish_us, raw))
            for name, backlog in targets:
                if backlog.wants(stamped):
                    entry = Entry(stamped.message_id, next(self._seq), raw, 0, now)
                    backlog.put(entry)
                    rows.append(PendingRow(name, entry.message_id, entry.seq, raw, 0))
        self._store.add_pending(rows, self._next_id, retained)
        self._retention.prune(topic, topic_pb, subscriptions)
        return ids

    # -- subscriptions --------------------------------------------------------------------

    def create_subscription(self, subscription: Pb) -> Pb:
        sub_pb = subscription
        name = check_subscription_name(sub_pb.name)
        with self._cond:
            self._check_open()
            if name in self._subs:
                raise AlreadyExists("Subscription already exists")
            self._topic(sub_pb.topic)
            self._validate_subscription(sub_pb)
            # Only messages published from now on reach it (or a Seek of it, unless the
            # topic retains older ones).
            self._subs[name] = Backlog.of(sub_pb, self._next_id)
            self._store.put_subscription(name, sub_pb.SerializeToString())
            self._store.put_origin(name, self._next_id)
            self._notify()
            return sub_pb

    def _validate_subscription(self, sub_pb: Pb) -> None:
        validate_subscription(sub_pb)
        if sub_pb.HasField("dead_letter_policy") and sub_pb.dead_letter_policy.dead_letter_topic:
            self._topic(sub_pb.dead_letter_policy.dead_letter_topic)

    def get_subscription(self, name: str) -> Pb:
        with self._cond:
            return self._sub(name).pb

    def list_subscriptions(self, project: str) -> list[Pb]:
        prefix = f"{project}/subscriptions/"
        with self._cond:
            return [b.pb for n, b in sorted(self._subs.items()) if n.startswith(prefix)]

    def delete_subscription(self, name: str) -> None:
        with self._cond:
            self._sub(name)
            del self._subs[name]
            self._store.delete_subscription(name)
            self._notify()

    def update_subscription(self, subscription: Pb, mask: Pb) -> Pb:
        """Apply the fields named by the update mask (the real UpdateSubscription)."""
        with self._cond:
            current = self._sub(subscription.name)
            updated = apply_update_mask(current.pb, subscription, mask, "UpdateSubscriptionRequest")
            self._validate_subscription(updated)
            current.pb = updated
            self._store.put_subscription(updated.name, updated.SerializeToString())
            self._notify()
            return updated

    def modify_push_config(self, name: str, push_config: Pb) -> None:
        with self._cond:
            backlog = self._sub(name)
            backlog.pb.push_config.CopyFrom(push_config)
            self._store.put_subscription(name, backlog.pb.SerializeToString())
            self._notify()

    def push_subscriptions(self) -> list[tuple[str, Pb]]:
        """Copies, taken under the lock: deliveries read them while the config may change."""
        with self._cond:
            found = []
            for name, backlog in self._subs.items():
                if backlog.pb.push_config.push_endpoint:
                    copy = Subscription()
                    copy.CopyFrom(backlog.pb)
                    found.append((name, copy))
            return found

    def _sub(self, name: str) -> Backlog:
        self._check_open()
        check_subscription_name(name)
        try:
            return self._subs[name]
        except KeyError:
            raise NotFound(f"Subscription does not exist: {name}") from None

    # -- snapshots and seek ---------------------------------------------------------------

    def create_snapshot(self, name: str, subscription: str, labels: dict[str, str]) -> Pb:
        with self._cond:
            backlog = self._sub(subscription)
            if backlog.pb.topic == DELETED_TOPIC:
                raise FailedPrecondition(f"The topic of {subscription} has been deleted")
            return self._retention.create_snapshot(
                name,
                subscription,
                backlog.pb.topic,
                list(backlog.entries.values()),
                self._next_id,
                labels,
            )

    def get_snapshot(self, name: str) -> Pb:
        with self._cond:
            self._check_open()
            return self._retention.snapshot(name).pb

    def list_snapshots(self, project: str) -> list[Pb]:
        with self._cond:
            self._check_open()
            return self._retention.list_snapshots(project)

    def update_snapshot(self, snapshot: Pb, mask: Pb) -> Pb:
        with self._cond:
            self._check_open()
            return self._retention.update_snapshot(snapshot, mask)

    def delete_snapshot(self, name: str) -> None:
        with self._cond:
            self._check_open()
            topic = self._retention.delete_snapshot(name)
            subscriptions = [b.pb for b in self._subs.values() if b.pb.topic == topic]
            self._retention.prune(topic, self._topics.get(topic), subscriptions, force=True)

    def seek_to_time(self, subscription: str, time_us: int) -> None:
        """Mark what the subscription retains as acknowledged when published before
        `time_us` and unacknowledged from then on."""
        with self._cond:
            backlog = self._sub(subscription)
            topic = backlog.pb.topic
            rows = self._retention.replay_for_time(
                topic, self._topics.get(topic), backlog.pb, backlog.origin, time_us
            )
            self._reset_backlog(subscription, backlog, lambda e: e.publish_us() >= time_us, rows)

    def seek_to_snapshot(self, subscription: str, snapshot: str) -> None:
        """Make the subscription's backlog what the snapshot holds."""
        with self._cond:
            backlog = self._sub(subscription)
            record = self._retention.snapshot(snapshot)
            if record.pb.topic != backlog.pb.topic:
                raise FailedPrecondition(
                    f"The snapshot {snapshot} is of topic {record.pb.topic}, not of the "
                    f"subscription's topic {backlog.pb.topic}"
                )

            def held(entry: Entry) -> bool:
                first_after = int(entry.message_id) >= record.first_after_id
                return first_after or entry.message_id in record.message_ids

            rows = self._retention.replay_for_snapshot(record)
            self._reset_backlog(subscription, backlog, held, rows)

    def _reset_backlog(
        self,
        name: str,
        backlog: Backlog,
        keep: Callable[[Entry], bool],
        replayed: list[RetainedRow],
    ) -> None:
        """Rewind the backlog (see Backlog.rewind) and store the change."""
        removed, added = backlog.rewind(
            keep, [(str(r.message_id), r.pb) for r in replayed], self._seq, time.monotonic()
        )
        rows = [PendingRow(name, e.message_id, e.seq, e.message, e.attempts) for e in added]
        self._store.rewrite_backlog(name, removed, rows)
        self._notify()

    # -- delivery -------------------------------------------------------------------------

    def lease(self, subscription: str, max_messages: int, deadline_s: float) -> list[Pb]:
        """Deliver up to `max_messages` deliverable messages, leased for `deadline_s`."""
        with self._cond:
            self._check_open()
            backlog = self._sub(subscription)
            counted_attempts = counts_attempts(backlog.pb)
            now = time.monotonic()
            out: list[Pb] = []
            counted: list[tuple[str, int]] = []
            while len(out) < max_messages:
                entry = backlog.pop_available(now)
                if entry is None:
                    break
                if self._exhausted(backlog, entry):
                    self._dead_letter(subscription, backlog, entry)
                    continue
                entry.attempts += 1
                entry.ack_id = f"{entry.message_id}-{next(self._leases)}"
                backlog.reschedule(entry, now + deadline_s)
                counted.append((entry.message_id, entry.attempts))
                received = ReceivedMessage(
                    ack_id=entry.ack_id,
                    delivery_attempt=entry.attempts if counted_attempts else 0,
                )
                received.message.ParseFromString(entry.message)
                out.append(received)
            if counted:
                self._store.set_attempts(subscription, counted)
            return out

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> list[str]:
        """Remove the messages the ack ids lease. Returns the ack ids that name no current
        lease when the subscription has exactly-once delivery (where an expired lease no
        longer counts), and [] otherwise: elsewhere acks are best effort."""
        with self._cond:
            backlog = self._sub(subscription)
            exactly_once = backlog.pb.enable_exactly_once_delivery
            found = backlog.current(ack_ids, time.monotonic() if exactly_once else None)
            invalid = self._invalid(exactly_once, ack_ids, found)
            done = sorted({e.message_id for e in found})
            backlog.remove(done)
            if done:
                self._store.remove_pending(subscription, done)
            return invalid

    def modify_ack_deadline(
        self, subscription: str, ack_ids: list[str], seconds: float
    ) -> list[str]:
        """Extend leases, or with 0 s nack them (redelivered after the retry policy's backoff
        when the subscription has one, at once otherwise). Returns the invalid ack ids as
        `acknowledge` does."""
        if not 0 <= seconds <= MAX_ACK_DEADLINE_S:
            raise InvalidArgument(f"Invalid ack deadline: {seconds} s (0..600)")
        with self._cond:
            backlog = self._sub(subscription)
            exactly_once = backlog.pb.enable_exactly_once_delivery
            has_policy = backlog.pb.HasField("retry_policy")
            now = time.monotonic()
            found = backlog.current(ack_ids, now if exactly_once else None)
            invalid = self._invalid(exactly_once, ack_ids, found)
            for entry in found:
                if seconds == 0 and has_policy:
                    seconds_now = backoff_s(backlog.pb, entry.attempts)
                else:
                    seconds_now = seconds
                backlog.reschedule(entry, time.monotonic() + seconds_now)
                if seconds_now == 0:
                    entry.ack_id = None
            self._notify()
            return invalid

    @staticmethod
    def _invalid(exactly_once: bool, ack_ids: list[str], found: list[Entry]) -> list[str]:
        if not exactly_once:
            return []
        valid = {e.ack_id for e in found}
        return sorted({a for a in ack_ids if a not in valid})

    def nack_push(self, subscription: str, ack_id: str) -> None:
        """A failed push: dead-letter when attempts are used up, else back off."""
        with self._cond:
            if self._closed or subscription not in self._subs:
                return
            backlog = self._subs[subscription]
            for entry in backlog.current([ack_id]):
                entry.ack_id = None
                if self._exhausted(backlog, entry):
                    self._dead_letter(subscription, backlog, entry)
                else:
                    delay = backoff_s(backlog.pb, entry.attempts)
                    backlog.reschedule(entry, time.monotonic() + delay)
            self._notify()

    def ack_push(self, subscription: str, ack_id: str) -> None:
        with self._cond:
            if not self._closed and subscription in self._subs:
                self.acknowledge(subscription, [ack_id])
                self._notify()

    def still_leased(self, subscription: str, ack_ids: set[str]) -> set[str]:
        """The ack ids whose lease is current and has not expired."""
        with self._cond:
            backlog = self._subs.get(subscription)
            if backlog is None:
                return set()
            live = backlog.current(list(ack_ids), time.monotonic())
            return {entry.ack_id for entry in live if entry.ack_id is not None}

    def next_deliverable_at(self, subscription: str) -> float | None:
        """When the subscription's earliest message becomes deliverable (monotonic time)."""
        with self._cond:
            backlog = self._subs.get(subscription)
            return None if backlog is None else backlog.next_available_at()

    @property
    def changes(self) -> int:
        """A counter bumped by every change a waiter may care about."""
        return self._changes

    def wait(self, timeout: float, since: int) -> None:
        """Sleep until something changed after `since` (a value of `changes`) or `timeout`.

        Passing the counter read before looking closes the race with a change that lands
        between looking and waiting."""
        with self._cond:
            if not self._closed and self._changes == since:
                self._cond.wait(timeout)

    def wake(self) -> None:
        """Wake every waiter, e.g. because a stream it serves has ended."""
        with self._cond:
            self._notify()

    def _notify(self) -> None:
        self._changes += 1
        self._cond.notify_all()

    @staticmethod
    def _exhausted(backlog: Backlog, entry: Entry) -> bool:
        if not counts_attempts(backlog.pb):
            return False
        return entry.attempts >= backlog.pb.dead_letter_policy.max_delivery_attempts

    def _dead_letter(self, name: str, backlog: Backlog, entry: Entry) -> None:
        """Forward to the dead-letter topic with the attributes the real service adds."""
        backlog.remove([entry.message_id])
        self._store.remove_pending(name, [entry.message_id])
        dead_letter_topic = backlog.pb.dead_letter_policy.dead_letter_topic
        if dead_letter_topic not in self._topics:
            log.warning(
                "dead-letter topic %s is gone; dropping message %s",
                dead_letter_topic,
                entry.message_id,
            )
            return
        forwarded = dead_letter_copy(entry.message, name, entry.attempts)
        self._publish_locked(dead_letter_topic, [forwarded])

    def _check_open(self) -> None:
        if self._closed:
            raise ServerClosed("the Pub/Sub server is shutting down")
