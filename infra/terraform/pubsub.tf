# Topics, and how the functions consume them.
#
# Pub/Sub reaches the functions through push subscriptions that this module owns, not through
# Eventarc Pub/Sub triggers: an Eventarc trigger creates and manages its own subscription
# (output only in the API), so no dead-letter policy can be set on it from here. Our own push
# subscription carries the retry policy and the dead-letter topic. It pushes the standard
# wrapped body ({"message": ..., "subscription": ...}) with an OIDC token; functions-framework
# turns that body into the same `google.cloud.pubsub.topic.v1.messagePublished` CloudEvent
# Eventarc would send, and the topic in the push URL path becomes the event's source.
# Storage events still arrive through Eventarc (functions.tf), retried for up to 24 hours.

locals {
  topics = ["retrain-requests", "job-events", "retrain-ticks", "retrain-notifications"]

  # subscription name => the topic it reads and the entry point (functions/main.py) it feeds.
  consumers = {
    "trigger-retrain-requests"   = { topic = "retrain-requests", function = "trigger" }
    "trigger-retrain-ticks"      = { topic = "retrain-ticks", function = "trigger" }
    "on-job-event-job-events"    = { topic = "job-events", function = "on_job_event" }
    "on-job-event-retrain-ticks" = { topic = "retrain-ticks", function = "on_job_event" }
  }

  function_uri = {
    trigger      = google_cloudfunctions2_function.trigger.service_config[0].uri
    on_job_event = google_cloudfunctions2_function.job_events.service_config[0].uri
  }

  # A push is acknowledged when the function answers, so the deadline covers its timeout.
  function_timeout = {
    trigger      = google_cloudfunctions2_function.trigger.service_config[0].timeout_seconds
    on_job_event = google_cloudfunctions2_function.job_events.service_config[0].timeout_seconds
  }
}

resource "google_pubsub_topic" "this" {
  for_each = toset(local.topics)

  name                       = each.key
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

# One dead-letter topic per consumer, each with a pull subscription that keeps what lands
# there for a week (a topic without subscriptions drops messages).
resource "google_pubsub_topic" "dead_letter" {
  for_each = local.consumers

  name                       = "${each.key}-dead-letter"
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "dead_letter" {
  for_each = local.consumers

  name                       = "${each.key}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "push" {
  for_each = local.consumers

  name                       = each.key
  topic                      = google_pubsub_topic.this[each.value.topic].id
  ack_deadline_seconds       = min(600, local.function_timeout[each.value.function] + 30)
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = "${local.function_uri[each.value.function]}/projects/${var.project_id}/topics/${each.value.topic}"

    oidc_token {
      service_account_email = google_service_account.delivery.email
      audience              = local.function_uri[each.value.function]
    }
  }

  # Transient failures (the function raised) are retried with backoff; after
  # `delivery_attempts` tries the message moves to the consumer's dead-letter topic.
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.delivery_attempts
  }

  # Quiet topics must not make the subscription expire (the default is 31 days idle).
  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_pubsub_topic_iam_member.dead_letter_publisher,
    google_cloud_run_v2_service_iam_member.delivery_invoker,
  ]
}

# Pub/Sub forwards to a dead-letter topic as its own service agent: it must be able to
# publish there and to acknowledge on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.consumers

  topic  = google_pubsub_topic.dead_letter[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.consumers

  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
