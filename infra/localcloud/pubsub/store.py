"""Durable state of the local Pub/Sub server: one sqlite file under the state dir.

Topics, subscriptions and snapshots are kept as serialized protos; every message a
subscription has not acknowledged yet is a row, so a restart redelivers whatever was pending
or in flight. Messages that Seek may replay after they were acknowledged are kept once per
topic in `retained`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, pb BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (name TEXT PRIMARY KEY, pb BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    subscription TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    pb BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (subscription, message_id)
);
CREATE TABLE IF NOT EXISTS origins (
    subscription TEXT PRIMARY KEY,
    first_message_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS retained (
    topic TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    publish_us INTEGER NOT NULL,
    pb BLOB NOT NULL,
    PRIMARY KEY (topic, message_id)
);
CREATE INDEX IF NOT EXISTS retained_by_time ON retained (topic, publish_us);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY,
    pb BLOB NOT NULL,
    first_after_id INTEGER NOT NULL,
    message_ids TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class PendingRow:
    subscription: str
    message_id: str
    seq: int
    pb: bytes
    attempts: int


@dataclass(frozen=True)
class RetainedRow:
    topic: str
    message_id: int
    publish_us: int
    pb: bytes


@dataclass(frozen=True)
class SnapshotRow:
    name: str
    pb: bytes
    first_after_id: int  # messages with this id or later were published after its creation
    message_ids: frozenset[str]  # the backlog it captured


class Store:
    """A thin sqlite wrapper. Callers serialize access (the broker holds its lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The broker calls in from gRPC and delivery threads, always under its own lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a commit is a write, not an fsync; a crash may lose the last
        # moments, which an emulator can afford.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def get_meta(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def put_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def topics(self) -> list[tuple[str, bytes]]:
        return [(str(n), bytes(pb)) for n, pb in self._db.execute("SELECT name, pb FROM topics")]

    def put_topic(self, name: str, pb: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO topics VALUES (?, ?)", (name, pb))

    def delete_topic(self, name: str) -> None:
        self._db.execute("DELETE FROM topics WHERE name = ?", (name,))

    def subscriptions(self) -> list[tuple[str, bytes]]:
        rows = self._db.execute("SELECT name, pb FROM subscriptions")
        return [(str(n), bytes(pb)) for n, pb in rows]

    def put_subscription(self, name: str, pb: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO subscriptions VALUES (?, ?)", (name, pb))

    def delete_subscription(self, name: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM subscriptions WHERE name = ?", (name,))
            self._db.execute("DELETE FROM pending WHERE subscription = ?", (name,))
            self._db.execute("DELETE FROM origins WHERE subscription = ?", (name,))

    def origins(self) -> dict[str, int]:
        rows = self._db.execute("SELECT subscription, first_message_id FROM origins")
        return {str(name): int(first) for name, first in rows}

    def put_origin(self, subscription: str, first_message_id: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO origins VALUES (?, ?)", (subscription, first_message_id)
        )

    def pending(self) -> list[PendingRow]:
        rows = self._db.execute(
            "SELECT subscription, message_id, seq, pb, attempts FROM pending ORDER BY seq"
        )
        return [PendingRow(str(s), str(m), int(q), bytes(p), int(a)) for s, m, q, p, a in rows]

    def add_pending(
        self,
        rows: list[PendingRow],
        next_message_id: int,
        retained: Iterable[RetainedRow] = (),
    ) -> None:
        """Store a published batch, its retained copies and the id counter in one
        transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._insert_pending(rows)
            self._insert_retained(retained)
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('next_message_id', ?)", (str(next_message_id),)
            )

    def _insert_pending(self, rows: Iterable[PendingRow]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?)",
            [(r.subscription, r.message_id, r.seq, r.pb, r.attempts) for r in rows],
        )

    def _insert_retained(self, rows: Iterable[RetainedRow]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO retained VALUES (?, ?, ?, ?)",
            [(r.topic, r.message_id, r.publish_us, r.pb) for r in rows],
        )

    def rewrite_backlog(
        self, subscription: str, removed: list[str], added: list[PendingRow]
    ) -> None:
        """What a Seek changes in one subscription's backlog, in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM pending WHERE subscription = ? AND message_id = ?",
                [(subscription, mid) for mid in removed],
            )
            self._insert_pending(added)

    def retained(self, topic: str, since_us: int = 0) -> list[RetainedRow]:
        rows = self._db.execute(
            "SELECT message_id, publish_us, pb FROM retained"
            " WHERE topic = ? AND publish_us >= ? ORDER BY message_id",
            (topic, since_us),
        )
        return [RetainedRow(topic, int(m), int(t), bytes(p)) for m, t, p in rows]

    def prune_retained(self, topic: str, before_us: int | None) -> None:
        """Forget the topic's retained messages published before `before_us` (all of them
        when None)."""
        if before_us is None:
            self._db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
        else:
            self._db.execute(
                "DELETE FROM retained WHERE topic = ? AND publish_us < ?", (topic, before_us)
            )

    def snapshots(self) -> list[SnapshotRow]:
        rows = self._db.execute("SELECT name, pb, first_after_id, message_ids FROM snapshots")
        return [
            SnapshotRow(str(n), bytes(p), int(f), frozenset(json.loads(m))) for n, p, f, m in rows
        ]

    def put_snapshot(self, row: SnapshotRow, backlog: Iterable[RetainedRow] = ()) -> None:
        """Store a snapshot with copies of the backlog it captured, in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?)",
                (row.name, row.pb, row.first_after_id, json.dumps(sorted(row.message_ids))),
            )
            self._insert_retained(backlog)

    def delete_snapshot(self, name: str) -> None:
        self._db.execute("DELETE FROM snapshots WHERE name = ?", (name,))

    def set_attempts(self, subscription: str, updates: list[tuple[str, int]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE pending SET attempts = ? WHERE subscription = ? AND message_id = ?",
                [(attempts, subscription, mid) for mid, attempts in updates],
            )

    def remove_pending(self, subscription: str, message_ids: list[str]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM pending WHERE subscription = ? AND message_id = ?",
                [(subscription, mid) for mid in message_ids],
            )
