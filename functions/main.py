"""Cloud Functions entry points (2nd gen, functions-framework): parse, hand to the core,
return or raise. No policy lives here."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from retrain import bootstrap, http_guard

# Deliveries the framework cannot parse get a 4xx before they reach it (see http_guard).
http_guard.install()


@functions_framework.cloud_event
@http_guard.entered
def trigger(cloud_event: CloudEvent) -> None:
    """New data in GCS, a retrain request or a tick → at most one job per batch."""
    app = bootstrap.app()
    bootstrap.deliver(
        app.trigger.handle, cloud_event.get_attributes(), cloud_event.get_data(), app.log
    )


@functions_framework.cloud_event
@http_guard.entered
def on_job_event(cloud_event: CloudEvent) -> None:
    """A training job ended (log sink, alert incident) or a tick → deploy or notify."""
    app = bootstrap.app()
    bootstrap.deliver(
        app.job_events.handle, cloud_event.get_attributes(), cloud_event.get_data(), app.log
    )
