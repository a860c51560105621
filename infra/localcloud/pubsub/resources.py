"""The resources of google.pubsub.v1 (topics, subscriptions, snapshots): their names, the
checks the real service applies when they are created or updated, and update masks.

Pure functions over the raw protobuf messages; the broker calls them under its lock.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import field_mask_pb2
from google.pubsub_v1.types import pubsub

from localcloud.pubsub import filtering
from localcloud.pubsub.errors import InvalidArgument

# Raw protobuf messages of google.pubsub.v1. Their classes are built at run time from the
# proto-plus wrappers, so the type checker cannot see their fields.
Pb = Any

Topic = pubsub.Topic.pb()
Subscription = pubsub.Subscription.pb()
Snapshot = pubsub.Snapshot.pb()
PubsubMessage = pubsub.PubsubMessage.pb()
ReceivedMessage = pubsub.ReceivedMessage.pb()

DELETED_TOPIC = "_deleted-topic_"
DEFAULT_ACK_DEADLINE_S = 10
MAX_ACK_DEADLINE_S = 600
DEFAULT_MIN_BACKOFF_S = 10.0
DEFAULT_MAX_BACKOFF_S = 600.0
DAY_S = 24 * 3600
# Both topics and subscriptions keep messages between 10 minutes and 31 days.
MIN_RETENTION_S = 600
MAX_RETENTION_S = 31 * DAY_S
DEFAULT_SUBSCRIPTION_RETENTION_S = 7 * DAY_S

# The real service's resource id rule (no "goog" prefix, 3-255 characters).
_ID = r"(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_NAMES = {
    kind: re.compile(rf"^projects/([^/]+)/{kind}/({_ID})$")
    for kind in ("topics", "subscriptions", "snapshots")
}
# Subscription fields the real service will not change after creation.
_FIXED_SUBSCRIPTION_FIELDS = frozenset({"name", "topic", "filter", "enable_message_ordering"})


def _check_name(kind: str, name: str) -> str:
    if not _NAMES[kind].match(name):
        raise InvalidArgument(f"Invalid [{kind}] name: ({name})")
    return name


def check_topic_name(name: str) -> str:
    return _check_name("topics", name)


def check_subscription_name(name: str) -> str:
    return _check_name("subscriptions", name)


def check_snapshot_name(name: str) -> str:
    return _check_name("snapshots", name)


def project_of(name: str) -> str:
    return name.split("/")[1]


def seconds(duration: Pb) -> float:
    return float(duration.ToTimedelta().total_seconds())


def backoff_s(subscription: Pb, attempts: int) -> float:
    """Exponential backoff after the `attempts`-th failed delivery, within the retry policy."""
    policy = subscription.retry_policy
    low = DEFAULT_MIN_BACKOFF_S
    high = DEFAULT_MAX_BACKOFF_S
    if subscription.HasField("retry_policy"):
        if policy.HasField("minimum_backoff"):
            low = seconds(policy.minimum_backoff)
        if policy.HasField("maximum_backoff"):
            high = seconds(policy.maximum_backoff)
    return float(min(high, low * 2 ** max(attempts - 1, 0)))


def counts_attempts(subscription: Pb) -> bool:
    """Whether deliveries are counted: only a subscription with a dead-letter policy has a
    `delivery_attempt` (0 otherwise, as the API defines it)."""
    return subscription.HasField("dead_letter_policy") and bool(
        subscription.dead_letter_policy.dead_letter_topic
    )


def dead_letter_copy(raw: bytes, subscription: str, attempts: int) -> Pb:
    """The message to publish on the dead-letter topic, with the attributes the real service
    adds to say where it came from."""
    original = PubsubMessage.FromString(raw)
    forwarded = PubsubMessage(data=original.data, ordering_key=original.ordering_key)
    forwarded.attributes.update(original.attributes)
    forwarded.attributes.update(
        {
            "CloudPubSubDeadLetterSourceDeliveryCount": str(attempts),
            "CloudPubSubDeadLetterSourceSubscription": subscription.split("/")[-1],
            "CloudPubSubDeadLetterSourceSubscriptionProject": project_of(subscription),
            "CloudPubSubDeadLetterSourceTopicPublishTime": original.publish_time.ToJsonString(),
        }
    )
    return forwarded


def subscription_retention_s(subscription: Pb) -> float:
    if subscription.HasField("message_retention_duration"):
        return seconds(subscription.message_retention_duration)
    return DEFAULT_SUBSCRIPTION_RETENTION_S


def _check_retention(message: Pb, field: str) -> None:
    if not message.HasField("message_retention_duration"):
        return
    value = seconds(message.message_retention_duration)
    if not MIN_RETENTION_S <= value <= MAX_RETENTION_S:
        raise InvalidArgument(
            f"Invalid {field}: {value:g}s; it must be between 10 minutes and 31 days"
        )


def validate_topic(topic: Pb) -> None:
    _check_retention(topic, "message_retention_duration")


def validate_subscription(sub_pb: Pb) -> None:
    """Fill in the defaults and refuse what the real service refuses. Checks that need
    other resources (the dead-letter topic) stay with the broker."""
    deadline = sub_pb.ack_deadline_seconds
    if deadline == 0:
        sub_pb.ack_deadline_seconds = DEFAULT_ACK_DEADLINE_S
    # The real minimum is 10 s; localcloud allows less so that tests stay fast.
    elif not 1 <= deadline <= MAX_ACK_DEADLINE_S:
        raise InvalidArgument(f"Invalid ack_deadline_seconds: {deadline} (1..600)")
    if sub_pb.HasField("dead_letter_policy"):
        policy = sub_pb.dead_letter_policy
        if policy.max_delivery_attempts == 0:
            policy.max_delivery_attempts = 5
        # The real range is 5..100; localcloud allows fewer so that tests stay fast.
        elif not 1 <= policy.max_delivery_attempts <= 100:
            raise InvalidArgument("max_delivery_attempts must be within 1..100")
    _check_retention(sub_pb, "message_retention_duration")
    filtering.parse(sub_pb.filter)


def apply_update_mask(current: Pb, patch: Pb, mask: Pb, request: str) -> Pb:
    """A copy of `current` with the fields named by `mask` taken from `patch`, the way the
    real Update* methods apply their update_mask."""
    field_mask = field_mask_pb2.FieldMask()
    field_mask.CopyFrom(mask)
    paths = list(field_mask.paths)
    if not paths:
        raise InvalidArgument(f"Invalid update_mask provided in the {request}: it is empty")
    descriptor = current.DESCRIPTOR
    for path in paths:
        if not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(descriptor):
            raise InvalidArgument(
                f"Invalid update_mask provided in the {request}: '{path}' is not a known "
                f"{descriptor.name} field"
            )
    fixed = _FIXED_SUBSCRIPTION_FIELDS if descriptor.name == "Subscription" else {"name"}
    for path in paths:
        if path.split(".")[0] in fixed:
            raise InvalidArgument(
                f"Invalid update_mask provided in the {request}: "
                f"'{path}' cannot be updated after creation"
            )
    updated = type(current)()
    updated.CopyFrom(current)
    field_mask.MergeMessage(patch, updated, replace_message_field=True, replace_repeated_field=True)
    return updated
