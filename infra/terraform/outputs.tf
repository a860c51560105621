output "buckets" {
  description = "Bucket names."
  value = {
    landing   = google_storage_bucket.landing.name
    artifacts = google_storage_bucket.artifacts.name
    state     = google_storage_bucket.state.name
  }
}

output "topics" {
  description = "Topic names: the four the product uses, then one dead-letter topic per consumer."
  value = {
    main        = { for name, topic in google_pubsub_topic.this : name => topic.name }
    dead_letter = { for name, topic in google_pubsub_topic.dead_letter : name => topic.name }
  }
}

output "function_urls" {
  description = "URLs of the two functions (internal ingress: reachable from Eventarc and Pub/Sub)."
  value       = local.function_uri
}

output "config_uri" {
  description = "Where the functions read the pipelines config (RETRAIN_CONFIG)."
  value       = local.config_uri
}

output "trainer_package_uri" {
  description = "Where Terraform uploaded the trainer package (training.package_uris); null without var.trainer_package."
  value       = var.trainer_package == null ? null : "gs://${google_storage_bucket.artifacts.name}/${google_storage_bucket_object.trainer_package[0].name}"
}

output "image_registry" {
  description = "Artifact Registry path of the trainer and serving images."
  value       = local.image_registry
}

output "service_accounts" {
  description = "Service account emails; the trainer's goes into the config's training.service_account."
  value = {
    trigger    = google_service_account.trigger.email
    job_events = google_service_account.job_events.email
    trainer    = google_service_account.trainer.email
    serving    = google_service_account.serving.email
    builder    = google_service_account.builder.email
  }
}

output "commands" {
  description = "Commands to try the loop (run from the repository root)."
  value = {
    build_images    = "gcloud builds submit trainer --project=${var.project_id} --region=${var.region} --config=infra/cloudbuild.yaml --service-account=${google_service_account.builder.id} --gcs-source-staging-dir=gs://${google_storage_bucket.artifacts.name}/cloudbuild-source --substitutions=_REGION=${var.region},_REPOSITORY=${google_artifact_registry_repository.images.repository_id},_TAG=latest"
    upload_config   = "gcloud storage cp pipelines.toml ${local.config_uri}"
    retrain_drop    = "GOOGLE_CLOUD_PROJECT=${var.project_id} retrain drop PATH... --to gs://${google_storage_bucket.landing.name}/${var.try_prefix}"
    retrain_request = "GOOGLE_CLOUD_PROJECT=${var.project_id} retrain request ${var.try_pipeline} --data-uri gs://${google_storage_bucket.landing.name}/${var.try_prefix}"
  }
}
