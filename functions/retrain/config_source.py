"""Where the config comes from: a path or a gs:// URI, re-read when it changes.

A `gs://` config is checked for a new generation at most every `check_every_s`, so a
burst of events costs one metadata read, not one per event."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from retrain.config import Config, parse_config
from retrain.errors import ConfigError, TransientError
from retrain.ports import Blobs


class ConfigSource:
    def __init__(
        self,
        uri: str,
        blobs: Blobs,
        *,
        check_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.uri = uri
        self._blobs = blobs
        self._check_every_s = check_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._config: Config | None = None
        self._generation: int | None = None
        self._checked_at = float("-inf")

    def get(self) -> Config:
        with self._lock:
            now = self._clock()
            if self._config is not None and now - self._checked_at < self._check_every_s:
                return self._config
            self._checked_at = now
            try:
                generation = self._blobs.generation(self.uri)
            except TransientError:
                if self._config is not None:
                    return self._config  # keep serving the last good config
                raise
            if generation is None:
                raise ConfigError(f"{self.uri}: config file not found (RETRAIN_CONFIG)")
            if self._config is None or generation != self._generation:
                text, _ = self._blobs.read_text(self.uri)
                self._config = parse_config(text, self.uri)
                self._generation = generation
            return self._config
