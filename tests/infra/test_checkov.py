"""checkov (its own virtualenv, built by the Makefile) scans the module and finds nothing.

Skipped checks live in one place, infra/terraform/.checkov.yaml, each under its reason."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.infra.terraform import REPO_ROOT, TERRAFORM_DIR

CHECKOV = REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
CONFIG = TERRAFORM_DIR / ".checkov.yaml"


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    assert CHECKOV.exists(), f"{CHECKOV.relative_to(REPO_ROOT)} missing: run `make test`"
    completed = subprocess.run(
        [
            str(CHECKOV),
            "--config-file",
            str(CONFIG),
            "--directory",
            str(TERRAFORM_DIR),
            "--framework",
            "terraform",
            "--output",
            "json",
            "--compact",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )
    # 0: all passed; 1: some check failed. Anything else is checkov itself failing.
    assert completed.returncode in (0, 1), completed.stderr[-3000:]
    parsed = json.loads(completed.stdout)
    reports = parsed if isinstance(parsed, list) else [parsed]
    (terraform,) = [r for r in reports if r.get("check_type") == "terraform"]
    return dict(terraform)


def test_checkov_scanned_the_module(report: dict[str, Any]) -> None:
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 0
    assert summary["passed"] > 0


def test_checkov_finds_no_failed_check(report: dict[str, Any]) -> None:
    failures = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for check in report["results"]["failed_checks"]
    ]
    assert failures == [], "checkov failed checks:\n" + "\n".join(failures)


def test_skips_are_listed_once_each_with_a_reason() -> None:
    lines = CONFIG.read_text(encoding="utf-8").splitlines()
    start = lines.index("skip-check:")
    entries = []
    for index in range(start + 1, len(lines)):
        line = lines[index]
        if not line.startswith(" "):
            break
        match = re.fullmatch(r"\s+- (CKV\w+)", line)
        if match:
            assert lines[index - 1].strip().startswith("#"), f"{match.group(1)} has no reason"
            entries.append(match.group(1))
    assert entries, "no skip-check entries parsed"
    assert len(entries) == len(set(entries))

    # Nowhere else: no inline suppressions in the Terraform.
    for path in TERRAFORM_DIR.glob("*.tf"):
        assert "checkov:skip" not in path.read_text(encoding="utf-8"), path.name
