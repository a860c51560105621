# One service account per part, each with the narrowest grants its work needs. Roles are
# bound on the bucket, topic, secret, repository or service account they concern; the few
# project-level grants below say why the role cannot be scoped further.

resource "google_service_account" "trigger" {
  account_id   = "retrain-trigger"
  display_name = "retrain: trigger function"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "job_events" {
  account_id   = "retrain-job-events"
  display_name = "retrain: job-events function"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "trainer" {
  account_id   = "retrain-trainer"
  display_name = "retrain: Vertex AI training jobs"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "serving" {
  account_id   = "retrain-serving"
  display_name = "retrain: Vertex AI serving containers"

  depends_on = [google_project_service.apis]
}

# The identity Eventarc and the push subscriptions present when they call the functions.
# Kept apart from the functions' own accounts so that what Pub/Sub may mint tokens for can
# only invoke, never act on Vertex AI or the buckets.
resource "google_service_account" "delivery" {
  account_id   = "retrain-delivery"
  display_name = "retrain: event delivery to the functions"

  depends_on = [google_project_service.apis]
}

# Builds the functions' images and, through infra/cloudbuild.yaml, the trainer and serving images.
resource "google_service_account" "builder" {
  account_id   = "retrain-builder"
  display_name = "retrain: image builds"

  depends_on = [google_project_service.apis]
}

# --- trigger: create jobs, act as the trainer account, read landing, read/write state --------

# Vertex AI grants CustomJob creation on the project (or location) only; jobs have no IAM of
# their own. Same reason for every roles/aiplatform.user below.
resource "google_project_iam_member" "trigger_vertex" {
  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = google_service_account.trigger.member
}

resource "google_service_account_iam_member" "trigger_acts_as_trainer" {
  service_account_id = google_service_account.trainer.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.trigger.member
}

resource "google_storage_bucket_iam_member" "trigger_reads_landing" {
  bucket = google_storage_bucket.landing.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.trigger.member
}

resource "google_storage_bucket_iam_member" "trigger_state" {
  bucket = google_storage_bucket.state.name
  role   = "roles/storage.objectUser"
  member = google_service_account.trigger.member
}

# --- job-events: read jobs, upload models, deploy, read artifacts, read logs, notify -----------

resource "google_project_iam_member" "job_events_vertex" {
  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = google_service_account.job_events.member
}

# Deploying a model that runs as the serving account requires acting as it.
resource "google_service_account_iam_member" "job_events_acts_as_serving" {
  service_account_id = google_service_account.serving.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.job_events.member
}

resource "google_storage_bucket_iam_member" "job_events_reads_artifacts" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.job_events.member
}

# Run records and the config live in the state bucket.
resource "google_storage_bucket_iam_member" "job_events_state" {
  bucket = google_storage_bucket.state.name
  role   = "roles/storage.objectUser"
  member = google_service_account.job_events.member
}

# Log reading is granted on the project; Cloud Logging has no narrower grant for the
# _Default bucket's entries short of log views, which Vertex AI job logs do not get.
resource "google_project_iam_member" "job_events_log_reader" {
  project = var.project_id
  role    = "roles/logging.viewer"
  member  = google_service_account.job_events.member
}

resource "google_pubsub_topic_iam_member" "job_events_notifies" {
  topic  = google_pubsub_topic.this["retrain-notifications"].name
  role   = "roles/pubsub.publisher"
  member = google_service_account.job_events.member
}

resource "google_secret_manager_secret_iam_member" "job_events_webhooks" {
  for_each = var.webhook_secrets

  project   = var.project_id
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.job_events.member
}

# --- trainer: read landing, write artifacts ---------------------------------------------------

resource "google_storage_bucket_iam_member" "trainer_reads_landing" {
  bucket = google_storage_bucket.landing.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.trainer.member
}

# Read as well as write: a restarted job resumes from its checkpoints.
resource "google_storage_bucket_iam_member" "trainer_artifacts" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectUser"
  member = google_service_account.trainer.member
}

# --- serving: read artifacts ------------------------------------------------------------------

resource "google_storage_bucket_iam_member" "serving_reads_artifacts" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.serving.member
}

# --- delivery: receive events, invoke the functions (functions.tf) ----------------------------

# Eventarc checks this role on the trigger's identity at the project level; it has no
# resource to bind to.
resource "google_project_iam_member" "delivery_event_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.delivery.member
}

# Pub/Sub signs the push requests' OIDC tokens as the delivery account.
resource "google_service_account_iam_member" "pubsub_signs_as_delivery" {
  service_account_id = google_service_account.delivery.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent

  # The Pub/Sub service agent exists once the API is on.
  depends_on = [google_project_service.apis]
}

# --- builder: function images and the trainer/serving images ----------------------------------

resource "google_artifact_registry_repository_iam_member" "builder_writer" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.builder.member
}

# Function source archives and `gcloud builds submit` uploads are staged in artifacts.
resource "google_storage_bucket_iam_member" "builder_reads_source" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.builder.member
}

# Build logs: log writing is a project-level permission.
resource "google_project_iam_member" "builder_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.builder.member
}

# --- Google service agents --------------------------------------------------------------------

# Storage triggers: GCS publishes the bucket's notifications to a topic that Eventarc creates
# and names itself, so the grant cannot name the topic.
data "google_storage_project_service_account" "gcs_agent" {
  project = var.project_id
}

resource "google_project_iam_member" "storage_agent_publisher" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = data.google_storage_project_service_account.gcs_agent.member
}
