"""Topics, and a dead-letter policy on every subscription a function consumes."""

from __future__ import annotations

import pytest

from tests.infra.terraform import Module, block, expression, reference

TOPICS = {"retrain-requests", "job-events", "retrain-ticks", "retrain-notifications"}


def topic_name(module: Module, ref: str) -> str:
    name, key = reference(ref, "google_pubsub_topic")
    found: str = module.instances(f"google_pubsub_topic.{name}")[key]["name"]
    return found


def push_subscriptions(module: Module) -> dict[str, dict]:
    found = {}
    for name in module.of_type("google_pubsub_subscription"):
        for key, sub in module.instances(f"google_pubsub_subscription.{name}").items():
            if "push_config" in sub:
                found[sub["name"]] = sub | {"_address": (name, key)}
    return found


def test_the_product_topics_exist(module: Module) -> None:
    names = {
        topic["name"]
        for name in module.of_type("google_pubsub_topic")
        for topic in module.instances(f"google_pubsub_topic.{name}").values()
    }
    assert names >= TOPICS


def test_functions_consume_pubsub_only_through_push_subscriptions(module: Module) -> None:
    subs = push_subscriptions(module)
    assert {topic_name(module, sub["topic"]) for sub in subs.values()} == TOPICS - {
        "retrain-notifications"
    }


@pytest.mark.parametrize(
    "subscription",
    [
        "trigger-retrain-requests",
        "trigger-retrain-ticks",
        "on-job-event-job-events",
        "on-job-event-retrain-ticks",
    ],
)
def test_consumer_has_dead_letter_and_retry(module: Module, subscription: str) -> None:
    sub = push_subscriptions(module)[subscription]
    source = topic_name(module, sub["topic"])
    policy = block(sub, "dead_letter_policy")
    dead_letter = topic_name(module, policy["dead_letter_topic"])
    assert dead_letter != source
    assert dead_letter not in TOPICS, "a dead-letter topic of its own, not a product topic"
    assert policy.get("max_delivery_attempts") not in (None, "")
    attempts = module.variables["delivery_attempts"]["default"]
    assert 5 <= attempts <= 100, "Pub/Sub accepts 5 to 100 delivery attempts"

    retry = block(sub, "retry_policy")
    assert retry["minimum_backoff"] and retry["maximum_backoff"]
    assert block(sub, "expiration_policy")["ttl"] == "", "must never expire when idle"

    # Pub/Sub forwards dead letters as its service agent: publisher on the dead-letter topic,
    # subscriber on the source subscription.
    dl_name, dl_key = reference(policy["dead_letter_topic"], "google_pubsub_topic")
    publishers = module.instances("google_pubsub_topic_iam_member.dead_letter_publisher")
    assert any(
        grant["role"] == "roles/pubsub.publisher"
        and grant["member"] == "${local.pubsub_agent}"
        and reference(grant["topic"], "google_pubsub_topic") == (dl_name, dl_key)
        for grant in publishers.values()
    )
    subscribers = module.instances("google_pubsub_subscription_iam_member.dead_letter_subscriber")
    assert any(
        grant["role"] == "roles/pubsub.subscriber"
        and grant["member"] == "${local.pubsub_agent}"
        and reference(grant["subscription"], "google_pubsub_subscription") == sub["_address"]
        for grant in subscribers.values()
    )

    # Something keeps what lands on the dead-letter topic.
    keepers = [
        kept
        for name in module.of_type("google_pubsub_subscription")
        for kept in module.instances(f"google_pubsub_subscription.{name}").values()
        if reference(kept["topic"], "google_pubsub_topic") == (dl_name, dl_key)
    ]
    assert keepers, f"nothing subscribes to {dead_letter}"


def test_pushes_are_authenticated_as_the_delivery_account(module: Module) -> None:
    invokers = module.resource("google_cloud_run_v2_service_iam_member.delivery_invoker")
    assert invokers["role"] == "roles/run.invoker"
    assert invokers["member"] == "${google_service_account.delivery.member}"
    for sub in push_subscriptions(module).values():
        token = block(block(sub, "push_config"), "oidc_token")
        assert token["service_account_email"] == "${google_service_account.delivery.email}"
        assert expression(token["audience"]), "the audience is the function's URL"
