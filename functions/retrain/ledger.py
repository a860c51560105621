"""The ledger: the product's state on GCS, kept with preconditions instead of a database.

Layout under `state_uri` (many small objects; never one hot object per event, since GCS
allows about one write per second to a single object name):

    pending/<pipeline>/<object name>@<generation>   one per recorded object (quiet, marker);
                                                    its atomic create is the dedup claim
    runs/<pipeline>/<run_id>.json                   one run record; its atomic create is the
                                                    claim that makes a submission exactly-once
    open/<pipeline>/<run_id>                        a run not yet submitted (waiting, or a
                                                    claim a tick must check); removed once
                                                    the job exists
    pipelines/<pipeline>/last-submit.json           for cooldowns
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from retrain.planner import Pending, RunPlan
from retrain.ports import StateStore, Stored

CLAIMED, WAITING, SUBMITTED, SUBMIT_FAILED = "claimed", "waiting", "submitted", "submit_failed"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def run_key(pipeline: str, run_id: str) -> str:
    return f"runs/{pipeline}/{run_id}.json"


class Ledger:
    def __init__(self, store: StateStore):
        self.store = store

    # pending objects -------------------------------------------------------------------
    def record_pending(self, pipeline: str, object_key: str, event_id: str, now: datetime) -> bool:
        """True if this delivery recorded the object, False if a duplicate already had."""
        doc = {"object": object_key, "event_id": event_id, "recorded_at": iso(now)}
        return self.store.create(f"pending/{pipeline}/{object_key}", doc) is not None

    def list_pending(self, pipeline: str, folder: str = "") -> list[Pending]:
        prefix = f"pending/{pipeline}/"
        return [
            Pending(object_key=item.key[len(prefix) :], recorded_at=item.updated)
            for item in self.store.list(prefix + folder)
        ]

    def drop_pending(self, pipeline: str, object_keys: Iterable[str]) -> None:
        keys = [f"pending/{pipeline}/{key}" for key in object_keys]
        if len(keys) <= 1:
            for key in keys:
                self.store.delete(key)
            return
        # A quiet batch can hold thousands of objects: delete them concurrently.
        with ThreadPoolExecutor(max_workers=min(16, len(keys))) as pool:
            list(pool.map(self.store.delete, keys))

    # runs ------------------------------------------------------------------------------
    def claim_run(self, run: RunPlan, now: datetime) -> Stored | None:
        """The new run record, or None if it existed. Creating the record is the claim: of
        any number of concurrent deliveries of one batch, exactly one gets it."""
        doc: dict[str, Any] = {
            **asdict(run),
            "status": CLAIMED,
            "claimed_at": iso(now),
            "created_at": iso(now),
        }
        doc["hyperparameters"] = dict(run.hyperparameters)
        key = run_key(run.pipeline, run.run_id)
        generation = self.store.create(key, doc)
        return Stored(doc, generation, now) if generation is not None else None

    def read_run(self, pipeline: str, run_id: str) -> Stored | None:
        return self.store.read(run_key(pipeline, run_id))

    def update_run(
        self, pipeline: str, run_id: str, current: Stored, changes: Mapping[str, Any]
    ) -> Stored | None:
        """Compare-and-swap: None when another delivery changed the record first."""
        doc = {**current.doc, **changes}
        generation = self.store.replace(
            run_key(pipeline, run_id), doc, generation=current.generation
        )
        if generation is None:
            return None
        return Stored(doc, generation, current.updated)

    def list_runs(self, pipeline: str) -> list[str]:
        prefix = f"runs/{pipeline}/"
        return [i.key[len(prefix) : -len(".json")] for i in self.store.list(prefix)]

    # open runs -------------------------------------------------------------------------
    def open(self, pipeline: str, run_id: str) -> None:
        self.store.create(f"open/{pipeline}/{run_id}", {"run_id": run_id})

    def close(self, pipeline: str, run_id: str) -> None:
        self.store.delete(f"open/{pipeline}/{run_id}")

    def open_runs(self, pipeline: str) -> list[str]:
        prefix = f"open/{pipeline}/"
        return [item.key[len(prefix) :] for item in self.store.list(prefix)]

    # cooldown --------------------------------------------------------------------------
    def last_submit(self, pipeline: str) -> datetime | None:
        stored = self.store.read(f"pipelines/{pipeline}/last-submit.json")
        return parse_iso(stored.doc.get("at")) if stored else None

    def set_last_submit(self, pipeline: str, run_id: str, now: datetime) -> None:
        key = f"pipelines/{pipeline}/last-submit.json"
        doc = {"at": iso(now), "run_id": run_id}
        current = self.store.read(key)
        if current is None and self.store.create(key, doc) is None:
            current = self.store.read(key)
        if current is not None:
            self.store.replace(key, doc, generation=current.generation)
