"""Sending notifications exactly once, whoever sends them.

Key (see ledger.py): `notified/<pipeline>/<run_id>/<kind>/<channel>`, a lease taken
before the send and marked `sent` after it. A duplicate delivery finds it sent and sends
nothing; a transient failure gives the lease up and raises, so the redelivery sends it; a
permanent refusal (a webhook answering 4xx) marks it `refused`, since no retry can help; a
delivery that died while sending leaves a lease that lapses, and the next one sends it.
Only a crash between a send and its mark repeats a notification; the repeat carries the
same notification id (notify.notification_id: the webhook's `Idempotency-Key` header, the
Pub/Sub message's `notification_id` attribute), so a receiver of its own can drop it;
Slack and Chat ignore the header. A rejected retrain request has no run: its key uses the
run id the request would have had, derived from its message id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from retrain import notify
from retrain import trials as tuning_trials
from retrain.config import Config, Pipeline
from retrain.errors import ConfigError, PermanentError, TransientError
from retrain.events import MalformedRequest, RetrainRequested
from retrain.jobend import JobEnd
from retrain.ledger import REFUSED, SENT, JobLedger
from retrain.logs import Logger
from retrain.notify import Notification
from retrain.planner import Reject, request_run_id
from retrain.ports import Notifier


def send_once(
    message: Notification,
    channels: Sequence[Notifier],
    claims: JobLedger,
    log: Logger,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Send `message` to each channel that has not had it yet."""
    document, body = notify.document(message), notify.text(message)
    for channel in channels:
        key = (message.pipeline, message.run_id, message.kind, channel.channel)
        lease = claims.claim_notification(*key, clock=clock)
        if lease is None:
            continue  # already sent by an earlier delivery
        try:
            channel.send(document, body)
        except TransientError:
            lease.release()  # so that the redelivery sends it at once
            raise
        except PermanentError as err:
            lease.finish({"state": REFUSED, "error": str(err)})
            log.error(
                "notification refused", kind=message.kind, channel=channel.channel, error=str(err)
            )
            continue
        lease.finish({"state": SENT})
        log.info("notification sent", kind=message.kind, channel=channel.channel)


class Announcer:
    """The job-events function's notifications: built from the job end, filtered by what
    the pipeline's config wants, and sent once per channel."""

    def __init__(
        self,
        notifiers: Callable[[Pipeline], list[Notifier]],
        claims: Callable[[], JobLedger],
        project: Callable[[], str],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self._notifiers = notifiers
        self._claims = claims
        self._project = project
        self._clock = clock

    def about(self, end: JobEnd, kind: str, **fields: Any) -> Notification:
        """A notification of `kind` about the job end."""
        return Notification(
            kind=kind,
            pipeline=end.pipeline.name,
            run_id=end.run_id,
            job=end.job.name,
            state=end.job.state,
            project=self._project(),
            region=end.config.defaults.region,
            data_uri=end.data_uri,
            duration_seconds=notify.duration(end.job.start_time, end.job.end_time),
            trials=tuning_trials.summary(end.job) if end.job.is_tuning else (),
            **fields,
        )

    def project(self) -> str:
        return self._project()

    def announce(self, pipeline: Pipeline, message: Notification, log: Logger) -> None:
        if not notify.wanted(pipeline.notify, message.kind):
            log.info("notification not wanted by config", kind=message.kind)
            return
        channels = self._notifiers(pipeline)
        if channels:
            send_once(message, channels, self._claims(), log, self._clock)


def announce_rejection(
    event: RetrainRequested | MalformedRequest,
    decision: Reject,
    config: Config,
    notifiers: Callable[[Pipeline], list[Notifier]],
    claims: Callable[[], JobLedger],
    log: Logger,
) -> None:
    """Tell the pipeline's channels that a request was refused, when its config asks for
    `request_rejected`. A request for an unknown pipeline has nobody to tell."""
    pipeline = config.pipeline(event.pipeline)
    if pipeline is None or not notify.wanted(pipeline.notify, notify.REQUEST_REJECTED):
        return
    try:
        channels = notifiers(pipeline)
    except ConfigError as err:
        # The request stays refused and acknowledged: a retry storm of a bad request
        # cannot fix a channel; the operator reads this line instead.
        log.error(f"rejection not sent: {err}", pipeline=pipeline.name, event_id=event.event_id)
        return
    message = notify.request_rejection(
        pipeline.name,
        request_run_id(pipeline.name, event.event_id),
        event.event_id,
        decision.field or "request",
        decision.reason,
        requester=event.requester,
        project=config.defaults.project or "",
        region=config.defaults.region,
    )
    send_once(message, channels, claims(), log)
