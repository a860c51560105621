"""localcloud's stack: what `down` does when a piece fails to stop."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from localcloud.stack import Options, Stack


class Piece:
    def __init__(self, stopped: list[str], name: str) -> None:
        self.stopped, self.name = stopped, name

    def stop(self) -> None:
        self.stopped.append(self.name)


class StuckBridge:
    def stop(self) -> None:
        raise RuntimeError("the port would not close")


def test_down_names_a_piece_that_fails_to_stop_and_still_stops_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = Stack(Options(dir=tmp_path, config=tmp_path / "pipelines.toml"))
    stopped: list[str] = []
    # Pieces register their stop as they start; down stops them in reverse.
    stack._stop.extend(
        [Piece(stopped, "first").stop, StuckBridge().stop, Piece(stopped, "last").stop]
    )

    with caplog.at_level(logging.ERROR, logger="localcloud.stack"):
        stack.down()

    assert stopped == ["last", "first"]
    (record,) = caplog.records
    assert "stopping StuckBridge.stop failed" in record.getMessage()
    assert record.exc_info is not None and "would not close" in str(record.exc_info[1])
