"""The two functions: entry points, triggers, runtime settings and environment."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.infra.terraform import (
    FUNCTIONS_DIR,
    TERRAFORM_DIR,
    Module,
    block,
    dynamic_block,
    expression,
    load_hcl,
    reference,
    string_tuple,
)

SETTINGS = FUNCTIONS_DIR / "retrain" / "settings.py"

# What each entry point must consume (DESIGN.md): topics via push subscriptions, plus the
# landing bucket's finalize events for the trigger.
EXPECTED_TOPICS = {
    "trigger": {"retrain-requests", "retrain-ticks"},
    "on_job_event": {"job-events", "retrain-ticks"},
}


def functions_by_entry_point(module: Module) -> dict[str, dict[str, Any]]:
    deployed: dict[str, dict[str, Any]] = {}
    for body in module.of_type("google_cloudfunctions2_function").values():
        entry_point = block(body, "build_config")["entry_point"]
        assert entry_point not in deployed, f"{entry_point} deployed twice"
        deployed[entry_point] = body
    return deployed


def function_entry_point(module: Module, uri_expression: str) -> str:
    """The entry point behind `local.function_uri["KEY"]` (a function's service URI)."""
    match = re.match(r'^\$\{local\.function_uri\["(\w+)"\]\}', uri_expression)
    assert match, f"{uri_expression!r} does not start with a function's URI"
    target = module.locals["function_uri"][match.group(1)]
    name, _ = reference(target, "google_cloudfunctions2_function")
    assert expression(target) == f"google_cloudfunctions2_function.{name}.service_config[0].uri"
    entry_point: str = block(
        module.of_type("google_cloudfunctions2_function")[name], "build_config"
    )["entry_point"]
    return entry_point


def consumed_topics(module: Module) -> dict[str, set[str]]:
    """Entry point → topics pushed to it by a subscription of this module."""
    consumed: dict[str, set[str]] = {}
    for name in module.of_type("google_pubsub_subscription"):
        for sub in module.instances(f"google_pubsub_subscription.{name}").values():
            if "push_config" not in sub:
                continue
            topic_name, topic_key = reference(sub["topic"], "google_pubsub_topic")
            topic = module.instances(f"google_pubsub_topic.{topic_name}")[topic_key]["name"]
            endpoint = block(sub, "push_config")["push_endpoint"]
            # The topic in the path becomes the CloudEvent's source (functions-framework).
            assert endpoint.endswith(f"/projects/${{var.project_id}}/topics/{topic}"), endpoint
            entry_point = function_entry_point(module, endpoint)
            consumed.setdefault(entry_point, set()).add(topic)
    return consumed


@pytest.mark.parametrize("entry_point", sorted(EXPECTED_TOPICS))
def test_entry_point_consumes_its_topics(module: Module, entry_point: str) -> None:
    assert consumed_topics(module).get(entry_point) == EXPECTED_TOPICS[entry_point]


def test_trigger_receives_landing_bucket_finalize_events_with_retry(module: Module) -> None:
    trigger = functions_by_entry_point(module)["trigger"]
    event = block(trigger, "event_trigger")
    assert event["event_type"] == "google.cloud.storage.object.v1.finalized"
    assert event["retry_policy"] == "RETRY_POLICY_RETRY"
    assert event["event_filters"] == [
        {"attribute": "bucket", "value": "${google_storage_bucket.landing.name}"}
    ]


def test_no_function_has_a_pubsub_event_trigger(module: Module) -> None:
    # Pub/Sub goes through our own subscriptions, which carry the dead-letter policy.
    for name, body in module.of_type("google_cloudfunctions2_function").items():
        for event in body.get("event_trigger", []):
            assert "pubsub" not in event["event_type"], name
    assert not module.of_type("google_eventarc_trigger")


@pytest.mark.parametrize("entry_point", sorted(EXPECTED_TOPICS))
def test_function_build_and_runtime(module: Module, entry_point: str) -> None:
    function = functions_by_entry_point(module)[entry_point]
    build = block(function, "build_config")
    assert build["runtime"] == "python312"
    source = block(block(build, "source"), "storage_source")
    assert source["object"] == "${google_storage_bucket_object.functions_source.name}"

    service = block(function, "service_config")
    for setting in (
        "available_memory",
        "timeout_seconds",
        "max_instance_request_concurrency",
        "max_instance_count",
    ):
        assert service.get(setting) not in (None, ""), f"{entry_point}: {setting} is not set"
    assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    assert service["service_account_email"].startswith("${google_service_account.")


def test_functions_are_zipped_from_the_functions_directory(module: Module) -> None:
    archive = module.data["archive_file"]["functions"]
    assert archive["type"] == "zip"
    source_dir = archive["source_dir"].replace("${path.module}", str(TERRAFORM_DIR))
    assert Path(source_dir).resolve() == FUNCTIONS_DIR
    uploaded = module.resource("google_storage_bucket_object.functions_source")
    assert uploaded["source"] == "${data.archive_file.functions.output_path}"


def test_functions_run_as_separate_service_accounts(module: Module) -> None:
    accounts = [
        block(function, "service_config")["service_account_email"]
        for function in functions_by_entry_point(module).values()
    ]
    assert len(set(accounts)) == len(accounts) == 2


@pytest.mark.parametrize("entry_point", sorted(EXPECTED_TOPICS))
def test_required_environment_is_set(module: Module, entry_point: str) -> None:
    required = string_tuple(SETTINGS, "REQUIRED_ENV")
    service = block(functions_by_entry_point(module)[entry_point], "service_config")
    env = module.resolve(service["environment_variables"])
    assert isinstance(env, dict), f"{entry_point}: environment_variables is not a map"
    assert set(required) - set(env) == set(), f"{entry_point} lacks required variables"
    config_uri = module.resolve(env["RETRAIN_CONFIG"])
    assert config_uri == "gs://${google_storage_bucket.state.name}/${local.config_object}"
    assert module.locals["config_object"] == "config/pipelines.toml"


def test_functions_read_only_declared_environment_variables() -> None:
    """Env reads by literal name anywhere in functions/ are declared in settings.py, whose
    required names the deployment sets (above); webhook variables come from config."""
    declared = set(string_tuple(SETTINGS, "REQUIRED_ENV")) | set(
        string_tuple(SETTINGS, "OPTIONAL_ENV")
    )
    read: dict[str, str] = {}
    for path in sorted(FUNCTIONS_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = _env_name_read(node)
            if name is not None:
                read[name] = str(path.relative_to(FUNCTIONS_DIR))
    undeclared = {name: where for name, where in read.items() if name not in declared}
    assert undeclared == {}, "environment variables read but not declared in settings.py"


def _env_name_read(node: ast.AST) -> str | None:
    """NAME for `os.environ["NAME"]`, `os.environ.get("NAME")`, `os.getenv("NAME")`."""
    key: ast.expr | None
    if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
        key = node.slice
    elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
        "os.environ.get",
        "environ.get",
        "os.getenv",
        "getenv",
    ):
        key = node.args[0] if node.args else None
    else:
        return None
    return key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None


def test_every_webhook_env_of_the_example_config_is_mounted_from_secret_manager(
    module: Module,
) -> None:
    config = tomllib.loads((TERRAFORM_DIR / "pipelines.example.toml").read_text(encoding="utf-8"))
    webhook_envs = {
        pipeline["notify"]["webhook_env"]
        for pipeline in config["pipelines"].values()
        if "webhook_env" in pipeline.get("notify", {})
    }
    assert webhook_envs, "the example config names no webhook_env"

    example_vars = load_hcl(TERRAFORM_DIR / "terraform.tfvars.example")
    assert webhook_envs - set(example_vars["webhook_secrets"]) == set()

    service = block(functions_by_entry_point(module)["on_job_event"], "service_config")
    secrets = dynamic_block(service, "secret_environment_variables")
    assert secrets["for_each"] == "${var.webhook_secrets}"
    content = block(secrets, "content")
    assert content["key"] == "${secret_environment_variables.key}"
    assert content["secret"] == "${secret_environment_variables.value}"

    access = module.resource("google_secret_manager_secret_iam_member.job_events_webhooks")
    assert access["for_each"] == "${var.webhook_secrets}"
    assert access["role"] == "roles/secretmanager.secretAccessor"
    assert access["member"] == service["service_account_email"].replace(".email}", ".member}")
