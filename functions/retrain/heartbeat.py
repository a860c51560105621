"""A heartbeat for leases: one daemon thread renews every lease registered with it.

A lease must be short so that the work of a crashed delivery is taken over quickly, yet a
single call can outlast it (a Vertex deploy takes minutes). While a delivery works, the
heartbeat renews its lease; when the process dies, the renewals stop and the lease runs
out. One thread per process, started with its owner, so registering a lease costs no
thread start on the delivery's own path.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Heartbeat:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._renewals: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._wake = threading.Event()
        # The thread holds the heartbeat weakly: it ends once its owner is gone.
        thread = threading.Thread(
            target=_beat, args=(weakref.ref(self), interval_s), daemon=True, name="heartbeat"
        )
        thread.start()

    @contextmanager
    def keep(self, renew: Callable[[], None]) -> Iterator[None]:
        """Call `renew` every interval while the block runs. `renew` handles its own
        errors: a failed renewal is retried at the next beat."""
        key = next(self._ids)
        with self._lock:
            self._renewals[key] = renew
        try:
            yield
        finally:
            with self._lock:
                self._renewals.pop(key, None)

    def beat(self) -> None:
        with self._lock:
            renewals = list(self._renewals.values())
        for renew in renewals:
            renew()


def _beat(ref: weakref.ref[Heartbeat], interval_s: float) -> None:
    stop = threading.Event()  # never set: a plain wait that a test's clock cannot skip
    while not stop.wait(interval_s):
        heartbeat = ref()
        if heartbeat is None:
            return
        heartbeat.beat()
        del heartbeat
