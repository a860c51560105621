# Job endings reach the job-events function through a log sink whose filter is the shared
# file that localcloud's log router evaluates too: one text, read by both. It lives in the
# localcloud package, so the installed `retrain` carries it.

resource "google_logging_project_sink" "job_events" {
  name                   = "retrain-job-events"
  description            = "Vertex AI CustomJob lifecycle endings, to the job-events topic."
  destination            = "pubsub.googleapis.com/${google_pubsub_topic.this["job-events"].id}"
  filter                 = trimspace(file("${path.module}/../localcloud/job-events-filter.txt"))
  unique_writer_identity = true

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "sink_publishes_job_events" {
  topic  = google_pubsub_topic.this["job-events"].name
  role   = "roles/pubsub.publisher"
  member = google_logging_project_sink.job_events.writer_identity
}

# Paging humans. A log-based alert notifies at most once per rate-limit period and 20 times
# a day, so it never drives deployments; the sink and the reconcile tick do that.
resource "google_monitoring_notification_channel" "email" {
  display_name = "retrain: on-call email"
  type         = "email"

  labels = {
    email_address = var.alert_email
  }

  depends_on = [google_project_service.apis]
}

# Optional second path for failures: the incident JSON goes to job-events, where the
# function reads the job id from the incident's resource labels.
resource "google_monitoring_notification_channel" "job_events" {
  count = var.alert_to_job_events ? 1 : 0

  display_name = "retrain: job-events topic"
  type         = "pubsub"

  labels = {
    topic = google_pubsub_topic.this["job-events"].id
  }
}

resource "google_pubsub_topic_iam_member" "monitoring_publishes_job_events" {
  count = var.alert_to_job_events ? 1 : 0

  topic  = google_pubsub_topic.this["job-events"].name
  role   = "roles/pubsub.publisher"
  member = local.monitoring_agent

  # The notification service agent exists once the project has a Pub/Sub channel.
  depends_on = [google_monitoring_notification_channel.job_events]
}

resource "google_monitoring_alert_policy" "job_failed" {
  display_name = "retrain: training job failed"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "ml_job failed"

    condition_matched_log {
      filter = <<-EOT
        resource.type="ml_job"
        AND resource.labels.task_name="service"
        AND (textPayload=~"^Job failed" OR jsonPayload.message=~"^Job failed")
      EOT
    }
  }

  alert_strategy {
    notification_rate_limit {
      period = "300s"
    }
    auto_close = "1800s"
  }

  notification_channels = concat(
    [google_monitoring_notification_channel.email.id],
    google_monitoring_notification_channel.job_events[*].id,
  )

  documentation {
    # The job-events function reads the job id from the incident's resource labels, or from
    # this text.
    content   = "Job $${resource.labels.job_id} failed."
    subject   = "[retrain] job $${resource.labels.job_id} failed"
    mime_type = "text/markdown"
  }
}

# Ticks flush quiet batches and reconcile jobs whose ending was never seen.
resource "google_cloud_scheduler_job" "tick" {
  name        = "retrain-tick"
  description = "Publishes {\"tick\": true} to retrain-ticks."
  region      = var.region
  schedule    = "* * * * *"
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.this["retrain-ticks"].id
    data       = "eyJ0aWNrIjogdHJ1ZX0=" # base64 of {"tick": true}
  }

  depends_on = [google_project_service.apis]
}
