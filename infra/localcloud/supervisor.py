"""The supervisor: a piece of localcloud that dies is started again, on the same port, as
a cloud replaces a lost instance, so the loop goes on without a `down`/`up`.

Restarts back off (0.5 s, 1 s, 2 s ... up to 30 s while a piece keeps dying), each one is
reported with the piece's name, and a piece that dies more than `max_per_minute` times in
a minute is left down until the minute has passed, with one line that says it is crash-
looping: a crash loop stays visible instead of hiding behind endless restarts."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

_log = logging.getLogger(__name__)

WINDOW_S = 60.0


@dataclass(eq=False)
class _Piece:
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], None]
    restarts: deque[float] = field(default_factory=deque)  # times of recent restarts
    down_since: float | None = None
    retry_at: float = 0.0
    looping: bool = False


class Supervisor:
    """Watches pieces (`watch(name, alive, restart)`) from one thread."""

    def __init__(
        self,
        report: Callable[[str], None] | None = None,
        *,
        interval: float = 0.2,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_per_minute: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._report = report or _log.warning
        self._interval, self._min, self._max = interval, min_backoff, max_backoff
        self._max_per_minute, self._clock = max_per_minute, clock
        self._pieces: dict[str, _Piece] = {}
        # Held while a piece is checked or restarted: forget() waits for a restart in
        # progress, so that whoever stops the piece afterwards stops the new process.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, name: str, alive: Callable[[], bool], restart: Callable[[], None]) -> None:
        with self._lock:
            self._pieces[name] = _Piece(name, alive, restart)

    def forget(self, name: str) -> None:
        with self._lock:
            self._pieces.pop(name, None)

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="localcloud-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def check(self) -> None:
        """One round over every piece (the thread's work; tests may call it directly)."""
        with self._lock:
            pieces = list(self._pieces.values())
        for piece in pieces:
            if self._stop.is_set():
                return
            with self._lock:
                if self._pieces.get(piece.name) is piece:
                    self._check(piece)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # a bug here must not end supervision of the others
                _log.exception("localcloud supervisor: a check failed")

    def _check(self, piece: _Piece) -> None:
        now = self._clock()
        if now < piece.retry_at:
            return
        if piece.alive():
            piece.down_since = None
            piece.looping = False
            return
        while piece.restarts and now - piece.restarts[0] > WINDOW_S:
            piece.restarts.popleft()
        if piece.down_since is None:
            piece.down_since = now
            # Back off by how often it died lately: at once the first time, then longer.
            piece.retry_at = now + self._backoff(len(piece.restarts))
            self._report(f"localcloud: {piece.name} died; restarting it")
            if piece.retry_at > now:
                return
        if len(piece.restarts) >= self._max_per_minute:
            piece.retry_at = piece.restarts[0] + WINDOW_S
            if not piece.looping:
                piece.looping = True
                self._report(
                    f"localcloud: {piece.name} is crash-looping ({len(piece.restarts)} restarts"
                    f" in the last {WINDOW_S:.0f}s): left down for {piece.retry_at - now:.0f}s;"
                    " see its log"
                )
            return
        piece.restarts.append(now)
        try:
            piece.restart()
        except Exception as err:
            piece.retry_at = self._clock() + self._backoff(len(piece.restarts))
            self._report(f"localcloud: {piece.name} could not be restarted: {err}")
            return
        piece.down_since = None
        self._report(
            f"localcloud: {piece.name} restarted ({len(piece.restarts)} in the last minute)"
        )

    def _backoff(self, recent_restarts: int) -> float:
        if recent_restarts == 0:
            return 0.0
        return float(min(self._max, self._min * 2 ** (recent_restarts - 1)))
