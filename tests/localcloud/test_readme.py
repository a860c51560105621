"""The README's "Point your own code at localcloud" blocks, run as written against a real
localcloud with the environment `retrain local up` writes (what `set -a; . .localcloud/env`
gives a shell)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud.stack import DEMO_CONFIG, Options, Stack

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Point your own code at localcloud"


def readme_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_section_has_a_block_for_each_client():
    joined = "\n".join(readme_blocks())
    for client in ("aiplatform.init", "aiplatform_v1", "pubsub_v1", "storage.Client", "logging"):
        assert client in joined


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    directory = tmp_path_factory.mktemp("localcloud")
    stack = Stack(Options(dir=directory, config=DEMO_CONFIG, tick_seconds=60.0))
    stack.up()
    try:
        lines = (directory / "env").read_text().splitlines()
        yield dict(line.split("=", 1) for line in lines if "=" in line)
    finally:
        stack.down()


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_block_runs_against_localcloud(env_file: dict[str, str], index: int, tmp_path):
    block = readme_blocks()[index]
    done = subprocess.run(
        [sys.executable, "-c", block],
        env={**os.environ, **env_file},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"README block {index} failed:\n{block}\n{done.stderr[-3000:]}"
    if "upload_from_string" in block:
        assert "['notes/hello.txt']" in done.stdout
    if "log_text" in block:
        assert "['hello from my code']" in done.stdout
