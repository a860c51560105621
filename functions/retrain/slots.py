"""Concurrency slots: `guards.max_concurrent_jobs` enforced with GCS preconditions.

Counting a pipeline's active jobs and then submitting is a race: two deliveries both count
0 and both submit. Instead a run must hold one of N slot objects before its job is
created:

    slots/<pipeline>/<index>      index in 0..N-1; its atomic create is the claim

* claim: `slots/<pipeline>/<index>` is created with `if_generation_match=0` by the delivery
  that owns the run (it holds the run's claim); of any number of concurrent claimants one
  gets each slot. The index goes into the run record with the job name (or with the
  released claim when the submit failed), so a retried submit keeps its slot.
* release: when the run's job ends (the job-events function, on the job's end or on the
  reconcile tick for an end nobody saw). First a compare-and-swap on the generation that
  was read turns the claim into a tombstone (`run_id` null), so of two deliveries that
  free one claim exactly one wins and a slot re-claimed in between is never freed by
  mistake; then the winner deletes the tombstone (nobody else writes a tombstone, and a
  create cannot overwrite it), making the slot free for the next `if_generation_match=0`.
* a slot whose run never got a job (the claimant crashed before CreateCustomJob) is freed
  by the trigger once the claim is older than the run claim's lease; so is a tombstone
  left behind by a delivery that died between its two steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from retrain.ports import StateStore, Stored


@dataclass(frozen=True)
class Holder:
    """A held slot, as read."""

    index: int
    run_id: str
    claimed_at: datetime | None
    stored: Stored


def slot_key(pipeline: str, index: int) -> str:
    return f"slots/{pipeline}/{index}"


class Slots:
    def __init__(self, store: StateStore):
        self.store = store

    def taken(self, pipeline: str) -> dict[int, datetime]:
        """The slots that exist (are held) now, by index, with when each was last written:
        one list request."""
        prefix = f"slots/{pipeline}/"
        found = {}
        for item in self.store.list(prefix):
            tail = item.key[len(prefix) :]
            if tail.isdigit():
                found[int(tail)] = item.updated
        return found

    def renew(self, pipeline: str, index: int, run_id: str, now: datetime) -> bool:
        """Whether `run_id` still holds slot `index`; a compare-and-swap stamps it anew, so
        a delivery that judged the old claim stale cannot free it from under this one."""
        key = slot_key(pipeline, index)
        stored = self.store.read(key)
        if stored is None or stored.doc.get("run_id") != run_id:
            return False
        doc = {"run_id": run_id, "claimed_at": now.isoformat(timespec="milliseconds")}
        return self.store.replace(key, doc, generation=stored.generation) is not None

    def create(self, pipeline: str, index: int, run_id: str, now: datetime) -> bool:
        """The atomic claim of one slot: False when another run holds it. A create whose
        reply was lost and whose retry then found the object reads it back as ours."""
        doc = {"run_id": run_id, "claimed_at": now.isoformat(timespec="milliseconds")}
        if self.store.create(slot_key(pipeline, index), doc) is not None:
            return True
        stored = self.store.read(slot_key(pipeline, index))
        return stored is not None and stored.doc.get("run_id") == run_id

    def holders(self, pipeline: str, written_before: datetime | None = None) -> list[Holder]:
        """The slots held, read; with `written_before`, only those not written since."""
        found = []
        for index, updated in sorted(self.taken(pipeline).items()):
            if written_before is not None and updated >= written_before:
                continue
            stored = self.store.read(slot_key(pipeline, index))
            if stored is None:
                continue
            claimed = stored.doc.get("claimed_at")
            found.append(
                Holder(
                    index,
                    str(stored.doc.get("run_id") or ""),
                    datetime.fromisoformat(claimed) if claimed else None,
                    stored,
                )
            )
        return found

    def held_by(self, pipeline: str, run_id: str) -> int | None:
        """The slot `run_id` holds, searched (for a run whose record does not name it)."""
        for holder in self.holders(pipeline):
            if holder.run_id == run_id:
                return holder.index
        return None

    def free(self, pipeline: str, holder: Holder, now: datetime) -> bool:
        """Free a slot as it was read; False when it changed meanwhile."""
        return self._vacate(pipeline, holder.index, holder.stored, now)

    def _vacate(self, pipeline: str, index: int, stored: Stored, now: datetime) -> bool:
        key = slot_key(pipeline, index)
        if stored.doc.get("run_id") is not None:
            # Stamped now: only a tombstone older than a claim's lease is abandoned.
            tombstone = {"run_id": None, "claimed_at": now.isoformat(timespec="milliseconds")}
            generation = self.store.replace(key, tombstone, generation=stored.generation)
            if generation is None:
                return False
        else:
            generation = stored.generation
        self.store.delete(key, generation=generation)
        return True

    def release(self, pipeline: str, index: int | None, run_id: str, now: datetime) -> bool:
        """Free the slot `run_id` holds at `index` (from its run record; searched when the
        record names none); True when this call freed it. Idempotent: a slot no longer
        held by the run is left alone."""
        if index is None:
            index = self.held_by(pipeline, run_id)
            if index is None:
                return False
        stored = self.store.read(slot_key(pipeline, index))
        if stored is None or stored.doc.get("run_id") != run_id:
            return False
        return self._vacate(pipeline, index, stored, now)
