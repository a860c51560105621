# Three buckets, all private (uniform access, public access prevention) and versioned, so an
# overwrite or a deletion can be undone for `noncurrent_retention_days`.

resource "google_storage_bucket" "landing" {
  name     = "${local.prefix}-retrain-landing"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # A run's manifest pins the generations it read: an overwritten or deleted data object
  # stays readable as a noncurrent version, so `retrain rerun` can train on it again, for
  # `landing_noncurrent_retention_days`.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.landing_noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# Run outputs (<artifacts>/runs/<pipeline>/<run_id>/: model, metrics.json, checkpoints), the
# functions' source archive and the Cloud Build source uploads.
resource "google_storage_bucket" "artifacts" {
  name     = "${local.prefix}-retrain-artifacts"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age            = var.run_retention_days
      matches_prefix = ["runs/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age            = 7
      matches_prefix = ["cloudbuild-source/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# The product's state (idempotency claims, pending objects, run records) and the config.
# Versioning keeps the history of every run record and config edit.
resource "google_storage_bucket" "state" {
  name     = "${local.prefix}-retrain-state"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # A recorded object's marker only has to outlive the redeliveries of its event.
  lifecycle_rule {
    condition {
      age            = var.seen_marker_days
      matches_prefix = ["${var.state_prefix}seen/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# Optional: the pipelines config, re-read by the functions whenever its generation changes,
# so `gcloud storage cp` works just as well (see docs/deploy.md).
resource "google_storage_bucket_object" "pipelines_config" {
  count = var.pipelines_config == null ? 0 : 1

  bucket       = google_storage_bucket.state.name
  name         = local.config_object
  source       = var.pipelines_config
  content_type = "application/toml"
}

# Optional: the trainer as a Python package (`make trainer-package` builds
# dist/retrain_trainer-<version>.tar.gz), for pipelines that run it on Google's prebuilt
# PyTorch container (training.package_uris): a deployment without a trainer image build.
resource "google_storage_bucket_object" "trainer_package" {
  count = var.trainer_package == null ? 0 : 1

  bucket       = google_storage_bucket.artifacts.name
  name         = "packages/${basename(var.trainer_package)}"
  source       = var.trainer_package
  content_type = "application/gzip"
}

resource "google_artifact_registry_repository" "images" {
  repository_id = "retrain"
  location      = var.region
  format        = "DOCKER"
  description   = "Trainer and serving images (infra/cloudbuild.yaml) and the functions' build images."

  depends_on = [google_project_service.apis]
}
