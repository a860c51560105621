# Both Cloud Functions (gen2), built from one archive of functions/.

data "archive_file" "functions" {
  type        = "zip"
  source_dir  = "${path.module}/../../functions"
  output_path = "${path.module}/.build/functions.zip"
  excludes    = ["**/__pycache__/**", "**/*.pyc"]
}

# Named by content, so a code change makes a new object and a new deployment.
resource "google_storage_bucket_object" "functions_source" {
  bucket = google_storage_bucket.artifacts.name
  name   = "functions-source/${local.function_source_md5}.zip"
  source = data.archive_file.functions.output_path
}

# Plans a run for each object finalized in the landing bucket, each retrain request and each
# tick; submits the Vertex AI CustomJob exactly once.
resource "google_cloudfunctions2_function" "trigger" {
  name        = "retrain-trigger"
  location    = var.region
  description = "Turns new data and retrain requests into Vertex AI training jobs."

  build_config {
    runtime           = "python312"
    entry_point       = "trigger"
    service_account   = google_service_account.builder.id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.artifacts.name
        object = google_storage_bucket_object.functions_source.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.trigger.email
    available_memory                 = "512Mi"
    available_cpu                    = "1"
    timeout_seconds                  = 300
    max_instance_request_concurrency = 1
    min_instance_count               = 0
    max_instance_count               = var.function_max_instances
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    environment_variables            = local.function_env
  }

  # Storage events through Eventarc; Pub/Sub topics through push subscriptions (pubsub.tf).
  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.delivery.email

    event_filters {
      attribute = "bucket"
      value     = google_storage_bucket.landing.name
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.delivery_event_receiver,
    google_project_iam_member.storage_agent_publisher,
    google_artifact_registry_repository_iam_member.builder_writer,
    google_storage_bucket_iam_member.builder_reads_source,
    google_project_iam_member.builder_log_writer,
  ]
}

# Follows each job to its end: reads its state, gates the model, registers and deploys it, or
# notifies people. Fed by job-events (log sink, alert incidents) and ticks.
resource "google_cloudfunctions2_function" "job_events" {
  name        = "retrain-job-events"
  location    = var.region
  description = "Gates, registers and deploys the model of each ended training job."

  build_config {
    runtime           = "python312"
    entry_point       = "on_job_event"
    service_account   = google_service_account.builder.id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.artifacts.name
        object = google_storage_bucket_object.functions_source.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.job_events.email
    # The Vertex AI clients are the heaviest import of the package.
    available_memory                 = "1Gi"
    available_cpu                    = "1"
    timeout_seconds                  = 540
    max_instance_request_concurrency = 1
    min_instance_count               = 0
    max_instance_count               = var.function_max_instances
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    environment_variables            = local.function_env

    dynamic "secret_environment_variables" {
      for_each = var.webhook_secrets
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.job_events_webhooks,
    google_artifact_registry_repository_iam_member.builder_writer,
    google_storage_bucket_iam_member.builder_reads_source,
    google_project_iam_member.builder_log_writer,
  ]
}

# The delivery identity (Eventarc and the push subscriptions) may invoke both functions;
# nothing else can, and the functions accept internal traffic only.
resource "google_cloud_run_v2_service_iam_member" "delivery_invoker" {
  for_each = {
    trigger      = google_cloudfunctions2_function.trigger.name
    on_job_event = google_cloudfunctions2_function.job_events.name
  }

  project  = var.project_id
  location = var.region
  name     = each.value
  role     = "roles/run.invoker"
  member   = google_service_account.delivery.member
}
