"""
The Generic Webhook integration: what xsoar-lr calls.

An instance receives JSON events by HTTP POST, checks the sender's
credentials (HTTP basic auth, or a token in a header), keeps the events in
C{events.sqlite3} in its state folder, and lists them at C{GET /events}.
Configured like this (parameter names as XSOAR spells them)::

    instances:
      - name: webhook
        integration: generic-webhook
        port: 7010
        params:
          credentials: {identifier: "_header:X-Webhook-Token", password: "..."}
          incidentType: Phishing

Known limitation: Twisted reads a request body completely (spooling large
ones to a temporary file) before the resource sees it, so a body over
C{max_body_size} is refused with C{413} only after it arrived; memory stays
bounded, disk and bandwidth do not.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from xsoar_lr.api import InstanceContext, Parameter, ParameterProblem
from xsoar_lr_webhook.auth import credential_problems, make_authenticator
from xsoar_lr_webhook.events import EventLog
from xsoar_lr_webhook.resource import WebhookResource, WebhookSettings

__all__ = ["PARAMETERS", "check", "make_resource", "make_service"]

#: Seconds between two prunings of old events.
PRUNE_INTERVAL = 3600.0

#: The events' file in the instance's state folder.
EVENTS_FILE = "events.sqlite3"

PARAMETERS = (
    Parameter(
        "credentials",
        kind="credentials",
        display="Username",
        description="Who may post: a user name and password for HTTP basic auth, "
        "or the identifier _header:<Name> and a token sent in header <Name>. "
        "Unset: anyone who reaches the instance may post, and nobody may list.",
    ),
    Parameter(
        "incidentType",
        default="",
        display="Incident type",
        description="The type of events that give none.",
    ),
    Parameter(
        "max_body_size",
        kind="int",
        default=1024 * 1024,
        minimum=1,
        display="Largest request body (bytes)",
        description="Larger request bodies are refused with 413.",
    ),
    Parameter(
        "max_events_per_request",
        kind="int",
        default=100,
        minimum=1,
        display="Most events per request",
        description="A list of more events is refused with 413.",
    ),
    Parameter(
        "max_stored_events",
        kind="int",
        default=100_000,
        minimum=0,
        display="Most events kept",
        description="The oldest events are dropped beyond this many; 0 keeps all.",
    ),
    Parameter(
        "retention_days",
        kind="float",
        default=0,
        minimum=0,
        display="Days to keep events",
        description="Events older than this are dropped (checked hourly); 0 "
        "keeps them until max_stored_events drops them.",
    ),
    Parameter(
        "store_headers",
        kind="bool",
        default=True,
        display="Store request headers",
        description="Keep each request's headers with its events (never the "
        "one that carries the credentials).",
    ),
)


def check(params: dict[str, Any]) -> list[ParameterProblem]:
    """
    The rules that span the parts of the credentials.
    """
    return [
        ParameterProblem("credentials", f"Parameter {message}")
        for message in credential_problems(params["credentials"])
    ]


def open_events(context: InstanceContext) -> EventLog:
    """
    The instance's events, in its state folder.
    """
    path = context.state_dir / EVENTS_FILE
    try:
        return EventLog.open(path, context.params["max_stored_events"])
    except Exception as e:
        raise RuntimeError(
            f"Instance {context.name!r} cannot open its events file {str(path)!r} "
            f"({e}); check that the state folder is writable."
        ) from e


def make_resource(context: InstanceContext) -> IResource:
    """
    Build the web resource of one instance.
    """
    params = context.params
    authenticator = make_authenticator(params["credentials"])
    if authenticator is None:
        context.log.warn(
            "Instance {instance} has no credentials: anyone who reaches it may "
            "post events",
            instance=context.name,
        )
    resource: IResource = WebhookResource(  # type: ignore[assignment]
        context,
        open_events(context),
        authenticator,
        WebhookSettings(
            default_type=params["incidentType"],
            max_body_size=params["max_body_size"],
            max_events_per_request=params["max_events_per_request"],
            store_headers=params["store_headers"],
        ),
    )
    return resource


def make_service(context: InstanceContext) -> IService | None:
    """
    The hourly pruning of old events, when C{retention_days} is set.
    """
    days = context.params["retention_days"]
    if not days:
        return None
    events = open_events(context)

    def prune() -> Any:
        before = context.reactor.seconds() - days * 86400
        d = context.run_in_thread(events.prune, before)
        d.addCallback(pruned)
        # A failed pruning is logged, and the next one runs on time.
        d.addErrback(failed)
        return d

    def pruned(count: int) -> None:
        if count:
            context.log.info(
                "Dropped {count} event(s) older than {days:g} day(s)",
                count=count,
                days=days,
            )

    def failed(failure: Failure) -> None:
        context.log.failure("Cannot drop old events", failure)

    service = TimerService(PRUNE_INTERVAL, prune)
    service.clock = context.reactor
    return service  # type: ignore[return-value]
