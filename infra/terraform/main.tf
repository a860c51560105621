# The whole retraining loop on Google Cloud: buckets, topics, both functions, the log sink
# that routes job endings, the alert that pages humans, the scheduler tick, and the
# service accounts with the narrowest roles each part needs (see iam.tf).

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  prefix = coalesce(var.name_prefix, var.project_id)

  # Google-managed service agents that act on our resources.
  pubsub_agent        = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  monitoring_agent    = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
  config_object       = "config/pipelines.toml"
  config_uri          = "gs://${google_storage_bucket.state.name}/${local.config_object}"
  image_registry      = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
  function_source_md5 = data.archive_file.functions.output_md5

  # Every variable in REQUIRED_ENV of functions/retrain/settings.py, plus LOG_LEVEL.
  function_env = {
    RETRAIN_CONFIG       = local.config_uri
    GOOGLE_CLOUD_PROJECT = var.project_id
    LOG_LEVEL            = var.log_level
  }
}

resource "google_project_service" "apis" {
  for_each = toset([
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])

  project = var.project_id
  service = each.value
  # Other workloads in the project may use the same APIs.
  disable_on_destroy = false
}
