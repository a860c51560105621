"""One subscription's backlog: its unacknowledged messages, each ordered by the moment it
becomes deliverable — now for a fresh message, the lease expiry for a delivered one, the end
of the backoff for a nacked one. Not thread-safe: the broker holds its lock around every call.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from localcloud.pubsub import filtering
from localcloud.pubsub.resources import Pb, PubsubMessage


@dataclass
class Entry:
    message_id: str
    seq: int
    message: bytes  # a serialized PubsubMessage: parsed only when delivered
    attempts: int
    available_at: float
    ack_id: str | None = None
    version: int = 0

    def publish_us(self) -> int:
        """Publish time in microseconds since the epoch (read for Seek, which is rare)."""
        return int(PubsubMessage.FromString(self.message).publish_time.ToMicroseconds())


@dataclass
class Backlog:
    pb: Pb  # the Subscription
    # Messages with this id or a later one were published after the subscription existed.
    origin: int = 0
    matches: filtering.Predicate | None = None
    entries: dict[str, Entry] = field(default_factory=dict)
    # (available_at, seq, version, message_id); stale items are skipped when popped.
    _heap: list[tuple[float, int, int, str]] = field(default_factory=list)

    @classmethod
    def of(cls, pb: Pb, origin: int) -> Backlog:
        return cls(pb, origin, filtering.parse(pb.filter))

    def wants(self, message: Pb) -> bool:
        """Whether a published message reaches this subscription: those its filter rejects
        are acknowledged on arrival, so they never enter the backlog."""
        return self.matches is None or self.matches(message.attributes)

    def put(self, entry: Entry) -> None:
        """Add or re-queue `entry` at its `available_at`."""
        entry.version += 1
        self.entries[entry.message_id] = entry
        heapq.heappush(self._heap, (entry.available_at, entry.seq, entry.version, entry.message_id))

    def reschedule(self, entry: Entry, at: float) -> None:
        entry.available_at = at
        self.put(entry)

    def remove(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            self.entries.pop(message_id, None)

    def rewind(
        self,
        keep: Callable[[Entry], bool],
        replayed: Iterable[tuple[str, bytes]],
        seq: Iterator[int],
        now: float,
    ) -> tuple[list[str], list[Entry]]:
        """What a Seek does: acknowledge the entries `keep` rejects, end the leases of the
        others (deliverable at once), and add the replayed (message id, serialized message)
        that the backlog does not hold and its filter passes. Returns the message ids removed
        and the entries added."""
        removed = [mid for mid, entry in self.entries.items() if not keep(entry)]
        self.remove(removed)
        for entry in list(self.entries.values()):
            entry.ack_id = None
            self.reschedule(entry, now)
        added: list[Entry] = []
        for message_id, raw in replayed:
            if message_id in self.entries or not self.wants(PubsubMessage.FromString(raw)):
                continue
            entry = Entry(message_id, next(seq), raw, 0, now)
            self.put(entry)
            added.append(entry)
        return removed, added

    def pop_available(self, now: float) -> Entry | None:
        self._drop_stale()
        if not self._heap or self._heap[0][0] > now:
            return None
        return self.entries[heapq.heappop(self._heap)[3]]

    def next_available_at(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def current(self, ack_ids: Iterable[str], live_at: float | None = None) -> list[Entry]:
        """Entries whose lease is still the one named by the ack id (and, given `live_at`,
        has not expired by then); other ack ids name nothing."""
        found = []
        for ack_id in ack_ids:
            entry = self.entries.get(ack_id.rsplit("-", 1)[0])
            if entry is None or entry.ack_id != ack_id:
                continue
            if live_at is None or entry.available_at > live_at:
                found.append(entry)
        return found

    def _drop_stale(self) -> None:
        while self._heap:
            _, _, version, message_id = self._heap[0]
            entry = self.entries.get(message_id)
            if entry is not None and entry.version == version:
                return
            heapq.heappop(self._heap)
