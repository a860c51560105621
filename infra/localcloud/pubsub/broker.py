"""The state and delivery rules of the local Pub/Sub server, free of any transport.

Every subscription keeps its unacknowledged messages as entries ordered by the moment they
become deliverable: now for a fresh message, the lease expiry for a delivered one, the end
of the backoff for a nacked one. Delivering an entry leases it under a new ack id and counts
an attempt; an ack with the current ack id removes it. All methods take one lock, and the
lock's condition wakes whoever waits for messages (Pull, StreamingPull, push delivery).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import field_mask_pb2
from google.pubsub_v1.types import pubsub

from localcloud.pubsub.errors import AlreadyExists, InvalidArgument, NotFound, ServerClosed
from localcloud.pubsub.store import PendingRow, Store

log = logging.getLogger(__name__)

# Raw protobuf messages of google.pubsub.v1. Their classes are built at run time from the
# proto-plus wrappers, so the type checker cannot see their fields.
Pb = Any

Topic = pubsub.Topic.pb()
Subscription = pubsub.Subscription.pb()
PubsubMessage = pubsub.PubsubMessage.pb()
ReceivedMessage = pubsub.ReceivedMessage.pb()
PushConfig = pubsub.PushConfig.pb()

DELETED_TOPIC = "_deleted-topic_"
DEFAULT_ACK_DEADLINE_S = 10
MAX_ACK_DEADLINE_S = 600
DEFAULT_MIN_BACKOFF_S = 10.0
DEFAULT_MAX_BACKOFF_S = 600.0

# The real service's resource id rule (no "goog" prefix, 3-255 characters).
_ID = r"(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_TOPIC_NAME = re.compile(rf"^projects/([^/]+)/topics/({_ID})$")
_SUBSCRIPTION_NAME = re.compile(rf"^projects/([^/]+)/subscriptions/({_ID})$")


def check_topic_name(name: str) -> str:
    if not _TOPIC_NAME.match(name):
        raise InvalidArgument(f"Invalid [topics] name: ({name})")
    return name


def check_subscription_name(name: str) -> str:
    if not _SUBSCRIPTION_NAME.match(name):
        raise InvalidArgument(f"Invalid [subscriptions] name: ({name})")
    return name


def project_of(name: str) -> str:
    return name.split("/")[1]


@dataclass
class _Entry:
    message_id: str
    seq: int
    message: bytes  # a serialized PubsubMessage: parsed only when delivered
    attempts: int
    available_at: float
    ack_id: str | None = None
    version: int = 0


@dataclass
class _Sub:
    pb: Pb  # a Subscription
    entries: dict[str, _Entry] = field(default_factory=dict)
    # (available_at, seq, version, message_id); stale items are skipped when popped.
    heap: list[tuple[float, int, int, str]] = field(default_factory=list)


def backoff_s(subscription: Pb, attempts: int) -> float:
    """Exponential backoff after the `attempts`-th failed delivery, within the retry policy."""
    policy = subscription.retry_policy
    low = DEFAULT_MIN_BACKOFF_S
    high = DEFAULT_MAX_BACKOFF_S
    if subscription.HasField("retry_policy"):
        if policy.HasField("minimum_backoff"):
            low = policy.minimum_backoff.ToTimedelta().total_seconds()
        if policy.HasField("maximum_backoff"):
            high = policy.maximum_backoff.ToTimedelta().total_seconds()
    return float(min(high, low * 2 ** max(attempts - 1, 0)))


class Broker:
    """Topics, subscriptions and their pending messages, persisted in `store`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._closed = False
        self._changes = 0
        self._topics: dict[str, Pb] = {}
        self._subs: dict[str, _Sub] = {}
        self._seq = itertools.count()
        # A fresh state starts ids at the clock (in microseconds), so ids stay unique across
        # state dirs that are wiped: subscribers use them as idempotency keys.
        first_id = str(time.time_ns() // 1000)
        self._next_id = int(store.get_meta("next_message_id", first_id))
        self._load()

    def _load(self) -> None:
        for name, raw in self._store.topics():
            self._topics[name] = Topic.FromString(raw)
        for name, raw in self._store.subscriptions():
            self._subs[name] = _Sub(Subscription.FromString(raw))
        now = time.monotonic()
        for row in self._store.pending():
            sub = self._subs.get(row.subscription)
            if sub is not None:  # messages in flight at shutdown are deliverable again
                self._push_entry(
                    sub, _Entry(row.message_id, next(self._seq), row.pb, row.attempts, now)
                )

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

    def delete_topic(self, name: str) -> None:
        with self._cond:
            self._topic(name)
            del self._topics[name]
            self._store.delete_topic(name)
            # As on the real service, subscriptions outlive their topic, detached from it.
            for sub_name, sub in self._subs.items():
                if sub.pb.topic == name:
                    sub.pb.topic = DELETED_TOPIC
                    self._store.put_subscription(sub_name, sub.pb.SerializeToString())

    def list_topic_subscriptions(self, topic: str) -> list[str]:
        with self._cond:
            self._topic(topic)
            return sorted(n for n, s in self._subs.items() if s.pb.topic == topic)

    def _topic(self, name: str) -> Pb:
        self._check_open()
        check_topic_name(name)
        try:
            return self._topics[name]
        except KeyError:
            raise NotFound(f"Topic not found: {name}") from None

    # -- publishing -----------------------------------------------------------------------

    def publish(self, topic: str, messages: list[Pb]) -> list[str]:
        """Stamp id and publish time on each message and copy it to every subscription."""
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
        targets = [(n, s) for n, s in self._subs.items() if s.pb.topic == topic]
        now = time.monotonic()
        ids: list[str] = []
        rows: list[PendingRow] = []
        for message in messages:
            stamped = PubsubMessage()
            stamped.CopyFrom(message)
            stamped.message_id = str(self._next_id)
            stamped.publish_time.GetCurrentTime()
            self._next_id += 1
            ids.append(stamped.message_id)
            raw = stamped.SerializeToString()
            for name, sub in targets:
                entry = _Entry(stamped.message_id, next(self._seq), raw, 0, now)
                self._push_entry(sub, entry)
                rows.append(PendingRow(name, entry.message_id, entry.seq, raw, 0))
        self._store.add_pending(rows, self._next_id)
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
            self._subs[name] = _Sub(sub_pb)
            self._store.put_subscription(name, sub_pb.SerializeToString())
            self._notify()
            return sub_pb

    def _validate_subscription(self, sub_pb: Pb) -> None:
        deadline = sub_pb.ack_deadline_seconds
        if deadline == 0:
            sub_pb.ack_deadline_seconds = DEFAULT_ACK_DEADLINE_S
        # The real minimum is 10 s; localcloud allows less so that tests stay fast.
        elif not 1 <= deadline <= MAX_ACK_DEADLINE_S:
            raise InvalidArgument(f"Invalid ack_deadline_seconds: {deadline} (1..600)")
        if sub_pb.HasField("dead_letter_policy"):
            policy = sub_pb.dead_letter_policy
            if policy.dead_letter_topic:
                self._topic(policy.dead_letter_topic)
            if policy.max_delivery_attempts == 0:
                policy.max_delivery_attempts = 5
            # The real range is 5..100; localcloud allows fewer so that tests stay fast.
            elif not 1 <= policy.max_delivery_attempts <= 100:
                raise InvalidArgument("max_delivery_attempts must be within 1..100")

    def get_subscription(self, name: str) -> Pb:
        with self._cond:
            return self._sub(name).pb

    def list_subscriptions(self, project: str) -> list[Pb]:
        prefix = f"{project}/subscriptions/"
        with self._cond:
            return [s.pb for n, s in sorted(self._subs.items()) if n.startswith(prefix)]

    def delete_subscription(self, name: str) -> None:
        with self._cond:
            self._sub(name)
            del self._subs[name]
            self._store.delete_subscription(name)
            self._notify()

    def update_subscription(self, subscription: Pb, mask: Pb) -> Pb:
        """Apply the fields named by the update mask (the real UpdateSubscription)."""
        field_mask = field_mask_pb2.FieldMask()
        field_mask.CopyFrom(mask)
        paths = list(field_mask.paths)
        if not paths:
            raise InvalidArgument("update_mask must name at least one field")
        if {"name", "topic"} & set(paths):
            raise InvalidArgument("name and topic cannot be updated")
        with self._cond:
            current = self._sub(subscription.name)
            updated = Subscription()
            updated.CopyFrom(current.pb)
            try:
                field_mask.MergeMessage(
                    subscription,
                    updated,
                    replace_message_field=True,
                    replace_repeated_field=True,
                )
            except ValueError as err:
                raise InvalidArgument(f"Invalid update_mask: {err}") from err
            self._validate_subscription(updated)
            current.pb = updated
            self._store.put_subscription(updated.name, updated.SerializeToString())
            self._notify()
            return updated

    def modify_push_config(self, name: str, push_config: Pb) -> None:
        with self._cond:
            sub = self._sub(name)
            sub.pb.push_config.CopyFrom(push_config)
            self._store.put_subscription(name, sub.pb.SerializeToString())
            self._notify()

    def push_subscriptions(self) -> list[tuple[str, Pb]]:
        with self._cond:
            return [(n, s.pb) for n, s in self._subs.items() if s.pb.push_config.push_endpoint]

    def _sub(self, name: str) -> _Sub:
        self._check_open()
        check_subscription_name(name)
        try:
            return self._subs[name]
        except KeyError:
            raise NotFound(f"Subscription does not exist: {name}") from None

    # -- delivery -------------------------------------------------------------------------

    def lease(self, subscription: str, max_messages: int, deadline_s: float) -> list[Pb]:
        """Deliver up to `max_messages` deliverable messages, leased for `deadline_s`."""
        with self._cond:
            self._check_open()
            sub = self._sub(subscription)
            now = time.monotonic()
            out: list[Pb] = []
            counted: list[tuple[str, int]] = []
            while len(out) < max_messages:
                entry = self._pop_available(sub, now)
                if entry is None:
                    break
                if self._exhausted(sub, entry):
                    self._dead_letter(subscription, sub, entry)
                    continue
                entry.attempts += 1
                entry.ack_id = f"{entry.message_id}-{entry.attempts}"
                entry.available_at = now + deadline_s
                self._push_entry(sub, entry)
                counted.append((entry.message_id, entry.attempts))
                received = ReceivedMessage(ack_id=entry.ack_id, delivery_attempt=entry.attempts)
                received.message.ParseFromString(entry.message)
                out.append(received)
            if counted:
                self._store.set_attempts(subscription, counted)
            return out

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        with self._cond:
            sub = self._sub(subscription)
            done = [e.message_id for e in self._current(sub, ack_ids)]
            for message_id in done:
                del sub.entries[message_id]
            if done:
                self._store.remove_pending(subscription, done)

    def modify_ack_deadline(self, subscription: str, ack_ids: list[str], seconds: float) -> None:
        """Extend leases, or with 0 s nack them (redelivered after the retry policy's backoff
        when the subscription has one, at once otherwise)."""
        if not 0 <= seconds <= MAX_ACK_DEADLINE_S:
            raise InvalidArgument(f"Invalid ack deadline: {seconds} s (0..600)")
        with self._cond:
            sub = self._sub(subscription)
            has_policy = sub.pb.HasField("retry_policy")
            for entry in self._current(sub, ack_ids):
                if seconds == 0 and has_policy:
                    seconds_now = backoff_s(sub.pb, entry.attempts)
                else:
                    seconds_now = seconds
                self._reschedule(sub, entry, seconds_now)
                if seconds_now == 0:
                    entry.ack_id = None
            self._notify()

    def nack_push(self, subscription: str, ack_id: str) -> None:
        """A failed push: dead-letter when attempts are used up, else back off."""
        with self._cond:
            if self._closed or subscription not in self._subs:
                return
            sub = self._subs[subscription]
            for entry in self._current(sub, [ack_id]):
                entry.ack_id = None
                if self._exhausted(sub, entry):
                    del sub.entries[entry.message_id]
                    self._dead_letter(subscription, sub, entry)
                else:
                    self._reschedule(sub, entry, backoff_s(sub.pb, entry.attempts))
            self._notify()

    def ack_push(self, subscription: str, ack_id: str) -> None:
        with self._cond:
            if not self._closed and subscription in self._subs:
                self.acknowledge(subscription, [ack_id])
                self._notify()

    def still_leased(self, subscription: str, ack_ids: set[str]) -> set[str]:
        """The ack ids whose lease is current and has not expired."""
        with self._cond:
            sub = self._subs.get(subscription)
            if sub is None:
                return set()
            now = time.monotonic()
            return {
                entry.ack_id
                for entry in self._current(sub, list(ack_ids))
                if entry.ack_id is not None and entry.available_at > now
            }

    def next_deliverable_at(self, subscription: str) -> float | None:
        """When the subscription's earliest message becomes deliverable (monotonic time)."""
        with self._cond:
            sub = self._subs.get(subscription)
            if sub is None:
                return None
            self._drop_stale(sub)
            return sub.heap[0][0] if sub.heap else None

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

    def _current(self, sub: _Sub, ack_ids: list[str]) -> list[_Entry]:
        """Entries whose lease is still the one named by the ack id; others are ignored."""
        found = []
        for ack_id in ack_ids:
            entry = sub.entries.get(ack_id.rsplit("-", 1)[0])
            if entry is not None and entry.ack_id == ack_id:
                found.append(entry)
        return found

    def _reschedule(self, sub: _Sub, entry: _Entry, delay_s: float) -> None:
        entry.available_at = time.monotonic() + delay_s
        self._push_entry(sub, entry)

    def _push_entry(self, sub: _Sub, entry: _Entry) -> None:
        entry.version += 1
        sub.entries[entry.message_id] = entry
        heapq.heappush(sub.heap, (entry.available_at, entry.seq, entry.version, entry.message_id))

    def _drop_stale(self, sub: _Sub) -> None:
        while sub.heap:
            _, _, version, message_id = sub.heap[0]
            entry = sub.entries.get(message_id)
            if entry is not None and entry.version == version:
                return
            heapq.heappop(sub.heap)

    def _pop_available(self, sub: _Sub, now: float) -> _Entry | None:
        self._drop_stale(sub)
        if not sub.heap or sub.heap[0][0] > now:
            return None
        message_id = heapq.heappop(sub.heap)[3]
        return sub.entries[message_id]

    @staticmethod
    def _exhausted(sub: _Sub, entry: _Entry) -> bool:
        pb = sub.pb
        if not pb.HasField("dead_letter_policy"):
            return False
        policy = pb.dead_letter_policy
        return bool(policy.dead_letter_topic) and entry.attempts >= policy.max_delivery_attempts

    def _dead_letter(self, name: str, sub: _Sub, entry: _Entry) -> None:
        """Forward to the dead-letter topic with the attributes the real service adds."""
        sub.entries.pop(entry.message_id, None)
        self._store.remove_pending(name, [entry.message_id])
        dead_letter_topic = sub.pb.dead_letter_policy.dead_letter_topic
        if dead_letter_topic not in self._topics:
            log.warning(
                "dead-letter topic %s is gone; dropping message %s",
                dead_letter_topic,
                entry.message_id,
            )
            return
        original = PubsubMessage.FromString(entry.message)
        forwarded = PubsubMessage(data=original.data, ordering_key=original.ordering_key)
        forwarded.attributes.update(original.attributes)
        forwarded.attributes.update(
            {
                "CloudPubSubDeadLetterSourceDeliveryCount": str(entry.attempts),
                "CloudPubSubDeadLetterSourceSubscription": name.split("/")[-1],
                "CloudPubSubDeadLetterSourceSubscriptionProject": project_of(name),
                "CloudPubSubDeadLetterSourceTopicPublishTime": original.publish_time.ToJsonString(),
            }
        )
        self._publish_locked(dead_letter_topic, [forwarded])

    def _check_open(self) -> None:
        if self._closed:
            raise ServerClosed("the Pub/Sub server is shutting down")
