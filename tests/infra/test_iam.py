"""Least privilege: who holds which role, on what."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.infra.terraform import Module, expression, references

PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}

# The only project-wide grants, each because the role cannot be bound to a resource (the
# reasons are next to the grants in iam.tf).
PROJECT_GRANTS = {
    ("roles/aiplatform.user", "sa:trigger"),
    ("roles/aiplatform.user", "sa:job_events"),
    ("roles/logging.viewer", "sa:job_events"),
    ("roles/eventarc.eventReceiver", "sa:delivery"),
    ("roles/logging.logWriter", "sa:builder"),
    ("roles/pubsub.publisher", "gcs-agent"),
}

# What each account must be able to do (issue: trigger, job-events, trainer, serving).
REQUIRED_GRANTS = [
    ("project", "roles/aiplatform.user", "sa:trigger"),
    ("sa:trainer", "roles/iam.serviceAccountUser", "sa:trigger"),
    ("bucket:landing", "roles/storage.objectViewer", "sa:trigger"),
    ("bucket:state", "roles/storage.objectUser", "sa:trigger"),
    ("project", "roles/aiplatform.user", "sa:job_events"),
    ("sa:serving", "roles/iam.serviceAccountUser", "sa:job_events"),
    ("bucket:artifacts", "roles/storage.objectViewer", "sa:job_events"),
    ("bucket:state", "roles/storage.objectUser", "sa:job_events"),
    ("project", "roles/logging.viewer", "sa:job_events"),
    ("topic:retrain-notifications", "roles/pubsub.publisher", "sa:job_events"),
    ("bucket:landing", "roles/storage.objectViewer", "sa:trainer"),
    ("bucket:artifacts", "roles/storage.objectUser", "sa:trainer"),
    ("bucket:artifacts", "roles/storage.objectViewer", "sa:serving"),
    ("project", "roles/pubsub.publisher", "gcs-agent"),
    ("topic:job-events", "roles/pubsub.publisher", "sink-writer"),
]


def _member(member: str) -> str:
    inner = expression(member) or ""
    account = re.fullmatch(r"google_service_account\.(\w+)\.member", inner)
    if account:
        return f"sa:{account.group(1)}"
    if inner == "data.google_storage_project_service_account.gcs_agent.member":
        return "gcs-agent"
    if inner == "google_logging_project_sink.job_events.writer_identity":
        return "sink-writer"
    return member


def _scope(module: Module, type_: str, grant: dict[str, Any]) -> str:
    if type_.startswith("google_project_iam"):
        return "project"
    for field, kind, target in (
        ("bucket", "bucket", "google_storage_bucket"),
        ("service_account_id", "sa", "google_service_account"),
    ):
        if field in grant:
            (name, _), *_ = references(grant[field], target)
            return f"{kind}:{name}"
    if "topic" in grant:
        ((name, key),) = references(grant["topic"], "google_pubsub_topic")
        return f"topic:{module.instances(f'google_pubsub_topic.{name}')[key]['name']}"
    return type_


def grants(module: Module) -> Iterator[tuple[str, str, str, str]]:
    """(address, scope, role, member) of every IAM grant in the module."""
    for type_, name, _ in module.iter_resources():
        if not re.search(r"_iam_(member|binding|policy)$", type_):
            continue
        for key, grant in module.instances(f"{type_}.{name}", symbolic=True).items():
            address = f"{type_}.{name}" + (f"[{key}]" if key else "")
            scope = _scope(module, type_, grant)
            yield address, scope, grant["role"], _member(grant["member"])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_no_primitive_role_anywhere(module: Module) -> None:
    everything = [module.resources, module.data, module.locals, module.variables]
    roles = {role for text in _strings(everything) for role in re.findall(r"roles/[\w.]+", text)}
    assert roles, "no roles found: the scan is broken"
    assert roles & PRIMITIVE_ROLES == set()


def test_only_additive_grants(module: Module) -> None:
    # Authoritative bindings and policies would remove grants that others made.
    authoritative = [
        t for t, _, _ in module.iter_resources() if re.search(r"_iam_(binding|policy)$", t)
    ]
    assert authoritative == []


def test_no_project_wide_admin_role(module: Module) -> None:
    for address, scope, role, _ in grants(module):
        if scope == "project":
            assert "admin" not in role.lower(), address


def test_project_wide_grants_are_the_unscopable_ones(module: Module) -> None:
    project = {(role, member) for _, scope, role, member in grants(module) if scope == "project"}
    assert project == PROJECT_GRANTS


def test_every_role_is_a_literal(module: Module) -> None:
    for address, _, role, _ in grants(module):
        assert expression(role) is None and role.startswith("roles/"), address


@pytest.mark.parametrize("scope,role,member", REQUIRED_GRANTS)
def test_account_can_do_its_job(module: Module, scope: str, role: str, member: str) -> None:
    assert (scope, role, member) in {(s, r, m) for _, s, r, m in grants(module)}


def test_each_part_has_its_own_service_account(module: Module) -> None:
    accounts = module.of_type("google_service_account")
    assert set(accounts) >= {"trigger", "job_events", "trainer", "serving"}
    ids = [account["account_id"] for account in accounts.values()]
    assert len(set(ids)) == len(ids)
