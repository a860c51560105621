"""The ledger: the product's state on GCS, kept with preconditions instead of a database.

Longer than most modules (~490 lines) on purpose: it is the one place that knows the
state layout below and the one place that writes the claim/lease/takeover protocol
(`claim`, `swap`, `LeaseTerms`, `take_over`, `Lease`, `take_lease`) that both functions
use, the trigger around a run's claim and job-events around a job end.

Layout under `state_uri` (many small objects; never one hot object per event, since GCS
allows about one write per second to a single object name):

    pending/<pipeline>/<object name>@<generation>   one per recorded object (quiet, marker);
                                                    its atomic create is the dedup claim
    runs/<pipeline>/<run_id>.json                   one run record; its atomic create is the
                                                    claim that makes a submission exactly-once
    open/<pipeline>/<run_id>                        a run not yet submitted (waiting, or a
                                                    claim a tick must check); removed once
                                                    the job exists
    batches/<pipeline>.json                         quiet mode: names the run that took the
                                                    last batch; the next run's id derives
                                                    from it (written once per batch)
    pipelines/<pipeline>/last-submit.json           for cooldowns: the run that took the
                                                    window, reserved (compare-and-swap)
                                                    before its job is submitted
    slots/<pipeline>/<index>                        max_concurrent_jobs: one per running
                                                    job (see slots.py)

Kept by the job-events function:

    handled/<pipeline>/<job_id>.json                handling of one job end: its atomic create
                                                    is the claim (a lease that a redelivery may
                                                    take over once expired); the step reached
    done/<pipeline>/<job_id>                        the job end was fully handled (a tick's
                                                    reconcile lists these against the jobs)
    notified/<pipeline>/<run_id>/<kind>/<channel>   one per notification: a lease while it is
                                                    being sent, then `sent` (once per run and kind)
    canary/<pipeline>/<run_id>.json                 a canary deployment a tick will promote
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from retrain.errors import PermanentError, TransientError
from retrain.planner import Pending, RunPlan
from retrain.ports import StateStore, Stored

CLAIMED, WAITING, SUBMITTED, SUBMIT_FAILED = "claimed", "waiting", "submitted", "submit_failed"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def run_key(pipeline: str, run_id: str) -> str:
    return f"runs/{pipeline}/{run_id}.json"


# Every claim and compare-and-swap carries a fresh token (`write_id`). When the reply to a
# write is lost after GCS applied it, the client's retry fails its precondition (the
# object exists, or has moved on): reading the object back and finding our token tells
# "another delivery won" from "we won and did not hear it". Without it, a lost reply to a
# run's claim stalled the run for the claim's lease, and a lost reply to a notification's
# claim lost the notification.
WRITE_ID = "write_id"


def claim(store: StateStore, key: str, doc: Mapping[str, Any], now: datetime) -> Stored | None:
    """Create `key` (`if_generation_match=0`): the new document, or None if another
    delivery's claim was there first."""
    mine = {**doc, WRITE_ID: uuid.uuid4().hex}
    generation = store.create(key, mine)
    if generation is not None:
        return Stored(mine, generation, now)
    stored = store.read(key)
    if stored is not None and stored.doc.get(WRITE_ID) == mine[WRITE_ID]:
        return stored
    return None


def swap(store: StateStore, key: str, current: Stored, changes: Mapping[str, Any]) -> Stored | None:
    """Compare-and-swap `changes` into the document read as `current`: None when another
    delivery changed it first."""
    doc = {**current.doc, **changes, WRITE_ID: uuid.uuid4().hex}
    generation = store.replace(key, doc, generation=current.generation)
    if generation is not None:
        return Stored(doc, generation, current.updated)
    stored = store.read(key)
    if stored is not None and stored.doc.get(WRITE_ID) == doc[WRITE_ID]:
        return Stored(doc, stored.generation, current.updated)
    return None


@dataclass(frozen=True)
class LeaseTerms:
    """How a record says it is held, and for how long. The one definition of a live lease
    for both functions: a run's claim is dated by when it was taken (`claimed_at`, live
    for `duration` after), a job end's by when it runs out (`lease_until`). A field set to
    None is a lease given up: the next delivery takes it over at once."""

    field: str
    duration: timedelta
    dated_by_start: bool = False

    def stamp(self, now: datetime) -> dict[str, Any]:
        """The change that takes or renews the lease at `now`."""
        return {self.field: iso(now if self.dated_by_start else now + self.duration)}

    def released(self) -> dict[str, Any]:
        return {self.field: None}

    def live(self, doc: Mapping[str, Any], now: datetime) -> bool:
        moment = parse_iso(doc.get(self.field))
        if moment is None:
            return False
        return now - moment < self.duration if self.dated_by_start else moment > now


def take_over(
    store: StateStore,
    key: str,
    stored: Stored,
    terms: LeaseTerms,
    now: datetime,
    *,
    busy: str,
    lost: str,
    changes: Mapping[str, Any] | None = None,
) -> Stored:
    """Take the lease on a claimed record away from a delivery that let it lapse: a
    compare-and-swap, so of several deliveries that found it expired exactly one wins.
    TransientError (`busy`) while the lease is live, or (`lost`) when another won."""
    if terms.live(stored.doc, now):
        raise TransientError(busy)
    taken = swap(store, key, stored, {**(changes or {}), **terms.stamp(now)})
    if taken is None:
        raise TransientError(lost)
    return taken


class Lease:
    """A held lease on one record: taken by `take_lease`, renewed by every step and by a
    heartbeat, and lost to another delivery only once it lapsed without a sign of life.

    Steps and the heartbeat both compare-and-swap the record: one at a time. Losing a swap
    means another delivery took the record over (this one outlived its lease)."""

    def __init__(
        self,
        store: StateStore,
        key: str,
        held: Stored,
        terms: LeaseTerms,
        clock: Callable[[], datetime],
        what: str,
    ):
        self._store, self._key, self._held = store, key, held
        self._terms, self._clock, self._what = terms, clock, what
        self._lock = threading.Lock()
        self._finished = False

    @property
    def doc(self) -> Mapping[str, Any]:
        return self._held.doc

    def step(self, changes: Mapping[str, Any], *, strict: bool = True) -> None:
        """Record progress (renewing the lease); a lost swap raises TransientError when
        `strict`, so the delivery stops and leaves the record to its new holder."""
        with self._lock:
            renewed = {**self._terms.stamp(self._clock()), **changes}
            updated = swap(self._store, self._key, self._held, renewed)
            if updated is not None:
                self._held = updated
        if updated is None and strict:
            raise TransientError(f"{self._what}: handling was taken over")

    def release(self) -> None:
        """Give the lease up so that the redelivery may take over at once."""
        self.step(self._terms.released(), strict=False)

    def finish(self, changes: Mapping[str, Any]) -> None:
        """The last step: a beat still in flight leaves the record alone afterwards."""
        self.step(changes)
        self._finished = True

    def renew(self, on_error: Callable[[Exception], None]) -> None:
        """The heartbeat's renewal; a failed one is retried at the next beat."""
        with self._lock:
            if self._finished:
                return
            try:
                stamp = self._terms.stamp(self._clock())
                updated = swap(self._store, self._key, self._held, stamp)
            except (TransientError, PermanentError) as err:
                on_error(err)
                return
            if updated is not None:  # else taken over: the next step finds out and stops
                self._held = updated


def take_lease(
    store: StateStore,
    key: str,
    doc: Mapping[str, Any],
    terms: LeaseTerms,
    clock: Callable[[], datetime],
    *,
    what: str,
    finished: Callable[[Mapping[str, Any]], bool],
    takeover: Mapping[str, Any] | None = None,
) -> Lease | None:
    """The claim/lease/takeover protocol: the record's atomic create is the claim and the
    duplicate check in one request. None when the record says the work is `finished`;
    TransientError while another delivery's lease is live (the redelivery finds the work
    finished, or the lease lapsed); a lapsed lease is taken over (`take_over`, adding
    `takeover`)."""
    now = clock()
    created = claim(store, key, {**doc, **terms.stamp(now)}, now)
    if created is not None:
        return Lease(store, key, created, terms, clock, what)
    stored = store.read(key)
    if stored is None:
        raise TransientError(f"{what}: handling record vanished while being read")
    if finished(stored.doc):
        return None
    taken = take_over(store, key, stored, terms, now, changes=takeover,
                      busy=f"{what} is being handled by another delivery",
                      lost=f"{what} was taken over by another delivery")  # fmt: skip
    return Lease(store, key, taken, terms, clock, what)


class Ledger:
    def __init__(self, store: StateStore):
        self.store = store

    # pending objects -------------------------------------------------------------------
    def record_pending(self, pipeline: str, object_key: str, event_id: str, now: datetime) -> bool:
        """True if this delivery recorded the object, False if a duplicate already had.

        The pending record alone cannot tell a late duplicate from new data once a flush
        has taken the object into a run and removed its record: a delivery whose answer
        was lost, redelivered after the flush, would put the object into a second batch.
        So each recorded object also leaves a `seen/` marker that outlives the flush (the
        state bucket deletes them after the longest redelivery window), naming the
        generation of the pending record it belongs to: concurrent duplicates of one
        event write the same marker, a late duplicate finds a marker of an earlier record.
        The marker is written after the pending record: a crash between the two leaves a
        pending record whose redelivery writes the marker, never a marker alone."""
        doc = {"object": object_key, "event_id": event_id, "recorded_at": iso(now)}
        pending, seen = f"pending/{pipeline}/{object_key}", f"seen/{pipeline}/{object_key}"
        generation = self.store.create(pending, doc)
        if generation is None:
            current = self.store.read(pending)
            if current is not None:  # a no-op unless a crash came between the two
                self.store.create(seen, {**doc, "pending_generation": current.generation})
            return False
        if self.store.create(seen, {**doc, "pending_generation": generation}) is not None:
            return True
        marker = self.store.read(seen)
        if marker is None or marker.doc.get("pending_generation") == generation:
            return True  # a concurrent duplicate wrote this record's marker first
        # Recorded before and taken into a run since: a late duplicate. A fresh record
        # restarts the quiet period, so no flush lists it before it is gone.
        self.store.delete(pending, generation=generation)
        return False

    def list_pending(self, pipeline: str, folder: str = "") -> list[Pending]:
        prefix = f"pending/{pipeline}/"
        return [
            Pending(object_key=item.key[len(prefix) :], recorded_at=item.updated)
            for item in self.store.list(prefix + folder)
        ]

    def drop_pending(self, pipeline: str, object_keys: Iterable[str]) -> None:
        # A quiet batch can hold 100,000 objects: the store deletes them in bulk.
        self.store.delete_many([f"pending/{pipeline}/{key}" for key in object_keys])

    # quiet batches ---------------------------------------------------------------------
    def quiet_batch(self, pipeline: str) -> tuple[str, Stored | None]:
        """The key of the quiet batch being collected ("" before the first flush) and the
        record it comes from. Read before listing the pending objects: the record moves on
        only after a run's objects have left the pending set, so a listing taken after it
        never misses objects that the batch's run still has to cover."""
        stored = self.store.read(f"batches/{pipeline}.json")
        return (str(stored.doc.get("last_run_id") or "") if stored else ""), stored

    def close_quiet_batch(
        self, pipeline: str, read: Stored | None, run_id: str, now: datetime
    ) -> bool:
        """Start the next batch once `run_id` covered this one. A compare-and-swap on the
        record as read before planning: a second close of the same batch changes nothing
        (False)."""
        key = f"batches/{pipeline}.json"
        doc = {"last_run_id": run_id, "closed_at": iso(now)}
        if read is None:
            return self.store.create(key, doc) is not None
        return self.store.replace(key, doc, generation=read.generation) is not None

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
        return claim(self.store, run_key(run.pipeline, run.run_id), doc, now)

    def read_run(self, pipeline: str, run_id: str) -> Stored | None:
        return self.store.read(run_key(pipeline, run_id))

    def update_run(
        self, pipeline: str, run_id: str, current: Stored, changes: Mapping[str, Any]
    ) -> Stored | None:
        """Compare-and-swap: None when another delivery changed the record first."""
        return swap(self.store, run_key(pipeline, run_id), current, changes)

    def take_over_run(
        self, pipeline: str, run_id: str, stored: Stored, terms: LeaseTerms, now: datetime
    ) -> Stored:
        """Take over a run claim whose lease lapsed or was released (see `take_over`)."""
        return take_over(self.store, run_key(pipeline, run_id), stored, terms, now,
                         changes={"status": CLAIMED},
                         busy=f"run {run_id} is being submitted by another delivery",
                         lost=f"run {run_id} was taken over by another delivery")  # fmt: skip

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

    def last_submit_of(self, pipeline: str) -> tuple[datetime | None, str | None]:
        """When the pipeline's last run was submitted (or reserved its window), and which."""
        stored = self.store.read(f"pipelines/{pipeline}/last-submit.json")
        if stored is None:
            return None, None
        return parse_iso(stored.doc.get("at")), stored.doc.get("run_id")

    def reserve_cooldown(
        self, pipeline: str, run_id: str, now: datetime, cooldown: timedelta
    ) -> bool:
        """Take the pipeline's cooldown window for `run_id` before its job is submitted: a
        compare-and-swap on the last-submit record, so of concurrent runs that all found
        the cooldown over, one submits and the others wait. True when `run_id` holds it."""
        key = f"pipelines/{pipeline}/last-submit.json"
        doc = {"at": iso(now), "run_id": run_id}
        stored = self.store.read(key)
        if stored is None:
            return self.store.create(key, doc) is not None
        if stored.doc.get("run_id") == run_id:
            return True
        at = parse_iso(stored.doc.get("at"))
        if at is not None and now - at < cooldown:
            return False
        return self.store.replace(key, doc, generation=stored.generation) is not None

    def set_last_submit(self, pipeline: str, run_id: str, now: datetime) -> None:
        key = f"pipelines/{pipeline}/last-submit.json"
        doc = {"at": iso(now), "run_id": run_id}
        current = self.store.read(key)
        if current is None and self.store.create(key, doc) is None:
            current = self.store.read(key)
        if current is not None:
            self.store.replace(key, doc, generation=current.generation)


def plan_from_record(record: Mapping[str, Any]) -> RunPlan:
    """The run as planned, from its record (to build a job again, e.g. on a fallback)."""
    return RunPlan(
        pipeline=record["pipeline"],
        run_id=record["run_id"],
        trigger=record["trigger"],
        data_uri=record["data_uri"],
        hyperparameters=dict(record.get("hyperparameters") or {}),
        objects=tuple(record.get("objects") or ()),
        covers_folder=record.get("covers_folder"),
        events=tuple(record.get("events") or ()),
        reason=record.get("reason"),
        rerun_of=record.get("rerun_of"),
        data_manifest=record.get("data_manifest"),
        champion_model_dir=record.get("champion_model_dir"),
    )


# A notification's record: `sending` while a delivery holds it, then `sent`, or `refused`
# when the channel refused it for good (a 4xx: no retry can help).
SENDING, SENT, REFUSED = "sending", "sent", "refused"
# Longer than one send may take (a Pub/Sub publish waits up to 30 s), so that a delivery
# still sending is never taken over; shorter than a job end's lease.
NOTIFICATION_SEND = LeaseTerms("sending_until", timedelta(seconds=40))


class JobLedger:
    """The job-events function's records (see the module docstring)."""

    def __init__(self, store: StateStore):
        self.store = store

    # handling of one job end -----------------------------------------------------------
    def lease_handling(
        self,
        pipeline: str,
        job_id: str,
        doc: Mapping[str, Any],
        terms: LeaseTerms,
        clock: Callable[[], datetime],
        takeover: Mapping[str, Any],
    ) -> Lease | None:
        """The lease on one job end (see `take_lease`); None once it was handled."""
        return take_lease(self.store, f"handled/{pipeline}/{job_id}.json", doc, terms, clock,
                          what=f"job {job_id}", finished=lambda d: d.get("step") == "done",
                          takeover=takeover)  # fmt: skip

    def mark_done(self, pipeline: str, job_id: str, outcome: str) -> None:
        self.store.create(f"done/{pipeline}/{job_id}", {"outcome": outcome})

    def done_jobs(self, pipeline: str) -> set[str]:
        prefix = f"done/{pipeline}/"
        return {item.key[len(prefix) :] for item in self.store.list(prefix)}

    # notifications ---------------------------------------------------------------------
    def claim_notification(
        self,
        pipeline: str,
        run_id: str,
        kind: str,
        channel: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> Lease | None:
        """The lease on sending one notification; None once it was sent (or refused for
        good). Its record says `sending` until the send returned, so a delivery that died
        in between is not taken for one that sent: once its lease lapses the next delivery
        sends it (again: a crash right after a send repeats it, where a claim alone lost
        it; both sends carry the same notification id for the receiver to drop the
        repeat). TransientError while another delivery may still be sending it."""
        key = f"notified/{pipeline}/{run_id}/{kind}/{channel}"
        doc = {"kind": kind, "channel": channel, "state": SENDING}
        return take_lease(self.store, key, doc, NOTIFICATION_SEND, clock,
                          what=f"notification {kind} of run {run_id} to {channel}",
                          # A record without a state predates the lease: it was sent.
                          finished=lambda d: d.get("state", SENT) != SENDING)  # fmt: skip

    # canaries --------------------------------------------------------------------------
    def open_canary(self, pipeline: str, run_id: str, doc: Mapping[str, Any]) -> None:
        self.store.create(f"canary/{pipeline}/{run_id}.json", doc)

    def canaries(self, pipeline: str) -> list[Stored]:
        found = []
        for item in self.store.list(f"canary/{pipeline}/"):
            stored = self.store.read(item.key)
            if stored is not None:
                found.append(stored)
        return found

    def close_canary(self, pipeline: str, run_id: str) -> None:
        self.store.delete(f"canary/{pipeline}/{run_id}.json")
