variable "project_id" {
  description = "Google Cloud project that runs the whole loop."
  type        = string
}

variable "region" {
  description = "Region of the buckets, functions, Vertex AI jobs, Artifact Registry and scheduler."
  type        = string
  default     = "us-central1"
}

variable "name_prefix" {
  description = "Prefix of every bucket name (bucket names are global). Defaults to the project id."
  type        = string
  default     = null
}

variable "alert_email" {
  description = "Address the job-failure alert pages."
  type        = string
}

variable "alert_to_job_events" {
  description = "Also deliver job-failure incidents to the job-events topic (a second path besides the log sink)."
  type        = bool
  default     = false
}

variable "webhook_secrets" {
  description = <<-EOT
    Webhook environment variables of the job-events function: variable name (a `webhook_env`
    of the pipelines config) → id of an existing Secret Manager secret holding the URL.
    The secrets are created outside Terraform so their values never enter the state.
  EOT
  type        = map(string)
  default     = {}
}

variable "pipelines_config" {
  description = "Local path of the pipelines TOML to upload to the state bucket; null leaves the upload to you."
  type        = string
  default     = null
}

variable "trainer_package" {
  description = "Local path of the trainer package `make trainer-package` builds (dist/retrain_trainer-<version>.tar.gz), uploaded to gs://<artifacts bucket>/packages/ for the config's training.package_uris; null leaves the upload to you."
  type        = string
  default     = null
}

variable "log_level" {
  description = "LOG_LEVEL of both functions."
  type        = string
  default     = "INFO"
}

variable "function_max_instances" {
  description = "Upper bound on instances per function (caps parallel Vertex submissions and cost)."
  type        = number
  default     = 10
}

variable "run_retention_days" {
  description = "Age after which run outputs under <artifacts>/runs/ are deleted. Keep it longer than the oldest version you may roll back to."
  type        = number
  default     = 90
}

variable "noncurrent_retention_days" {
  description = "Age after which overwritten or deleted object versions are removed from every bucket."
  type        = number
  default     = 30
}

variable "landing_noncurrent_retention_days" {
  description = "Days an overwritten or deleted data object stays readable in the landing bucket as a noncurrent version: how long a run can be rerun on exactly its inputs (`retrain rerun`)."
  type        = number
  default     = 90

  validation {
    condition     = var.landing_noncurrent_retention_days >= 1
    error_message = "landing_noncurrent_retention_days must be at least 1."
  }
}

variable "state_prefix" {
  description = "The path inside the state bucket that the pipelines config's `state_uri` names (\"\" when it names the bucket itself, else ending in /): lifecycle rules match state objects under it."
  type        = string
  default     = ""

  validation {
    condition     = var.state_prefix == "" || endswith(var.state_prefix, "/")
    error_message = "state_prefix must be empty or end with /."
  }
}

variable "seen_marker_days" {
  description = "Days the trigger's `seen/` markers (one per recorded data object) are kept: longer than any redelivery of a storage event (Pub/Sub keeps an unacknowledged message at most 7 days)."
  type        = number
  default     = 8

  validation {
    condition     = var.seen_marker_days >= 8
    error_message = "seen_marker_days must be at least 8: a marker must outlive every redelivery of its event."
  }
}

variable "delivery_attempts" {
  description = "Pub/Sub deliveries of one message to a function before it goes to the dead-letter topic (5-100)."
  type        = number
  default     = 10
}

variable "try_pipeline" {
  description = "Pipeline used in the example commands of the outputs."
  type        = string
  default     = "churn"
}

variable "try_prefix" {
  description = "Landing prefix of try_pipeline, used in the example commands of the outputs."
  type        = string
  default     = "churn/"
}
