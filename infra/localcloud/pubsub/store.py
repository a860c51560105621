"""Durable state of the local Pub/Sub server: one sqlite file under the state dir.

Topics and subscriptions are kept as serialized protos; every message a subscription has
not acknowledged yet is a row, so a restart redelivers whatever was pending or in flight.
"""

from __future__ import annotations

import sqlite3
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
"""


@dataclass(frozen=True)
class PendingRow:
    subscription: str
    message_id: str
    seq: int
    pb: bytes
    attempts: int


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

    def pending(self) -> list[PendingRow]:
        rows = self._db.execute(
            "SELECT subscription, message_id, seq, pb, attempts FROM pending ORDER BY seq"
        )
        return [PendingRow(str(s), str(m), int(q), bytes(p), int(a)) for s, m, q, p, a in rows]

    def add_pending(self, rows: list[PendingRow], next_message_id: int) -> None:
        """Store a published batch and the id counter in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?)",
                [(r.subscription, r.message_id, r.seq, r.pb, r.attempts) for r in rows],
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('next_message_id', ?)", (str(next_message_id),)
            )

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
