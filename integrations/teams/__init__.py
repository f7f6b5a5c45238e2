"""
The Microsoft Teams integration: a Bot Framework messaging endpoint.

An instance is the messaging endpoint of one Azure bot. Published by the
gateway at C{https://HOST/instance/execute/<name>} (no trailing slash), it
verifies every activity Microsoft's Bot Connector posts, remembers the teams,
channels and chats it hears of in its state folder, answers commands over the
indicator store and the host (C{help}, C{lookup}, C{block}, C{unblock},
C{status}), and lets C{xsoar-lr teams send} post notifications.

The parts:

 - L{integrations.teams.auth}: request verification (Bot Framework tokens);
 - L{integrations.teams.connector}: tokens and the Bot Connector REST API;
 - L{integrations.teams.references}: conversation references on disk;
 - L{integrations.teams.commands}: the commands and their adaptive cards;
 - L{integrations.teams.notify}: proactive messages;
 - L{integrations.teams.bot}: what each activity does;
 - L{integrations.teams.resource}: the HTTP side.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from integrations.teams.auth import DEFAULT_OPENID_METADATA_URL
from integrations.teams.connector import DEFAULT_TOKEN_URL
from xsoar_lr.api import InstanceContext, Parameter, ParameterProblem

__all__ = [
    "PARAMETERS",
    "check",
    "make_notifier",
    "make_resource",
]


#: Microsoft's global Bot Connector URL for Teams, used until an activity
#: tells the bot the URL of its own region.
DEFAULT_SERVICE_URL = "https://smba.trafficmanager.net/teams/"

PARAMETERS = (
    Parameter(
        "bot_id",
        required=True,
        description="The bot's Microsoft App ID (a GUID), from the Azure bot's "
        "Configuration page. Tokens from Microsoft must be issued to it.",
    ),
    Parameter(
        "bot_password",
        required=True,
        secret=True,
        description="A client secret of the bot's app registration "
        "(Certificates & secrets), used to get tokens for replies.",
    ),
    Parameter(
        "is_single_tenant_bot_type",
        kind="bool",
        default=False,
        description="The bot is single-tenant: get tokens from its own tenant "
        "(tenant_id) rather than from the multi-tenant endpoint.",
    ),
    Parameter(
        "tenant_id",
        description="The Azure AD tenant (directory) id of a single-tenant bot.",
    ),
    Parameter(
        "team",
        description="The team whose channels 'xsoar-lr teams send --channel' "
        "looks in; unset means every team the bot is in.",
    ),
    Parameter(
        "allowed_users",
        kind="list",
        default=[],
        description="Who may block and unblock: email addresses, user "
        "principal names or Azure AD object ids. Nobody when empty.",
    ),
    Parameter(
        "block_tag",
        default="teams-blocked",
        description="The tag 'block' adds and 'unblock' removes; have an EDL "
        "serve it (for example with the query tags:teams-blocked).",
    ),
    Parameter(
        "openid_metadata_url",
        default=DEFAULT_OPENID_METADATA_URL,
        description="The OpenID metadata document that names the Bot "
        "Connector's signing keys.",
    ),
    Parameter(
        "token_url",
        default=DEFAULT_TOKEN_URL,
        description="The Azure AD token endpoint; {tenant} becomes "
        "botframework.com, or tenant_id for a single-tenant bot.",
    ),
    Parameter(
        "service_url",
        default=DEFAULT_SERVICE_URL,
        description="The Bot Connector URL used until Teams has sent the bot "
        "an activity (which carries the URL of the tenant's region).",
    ),
)

_GUID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def check(params: dict[str, Any]) -> list[ParameterProblem]:
    """
    Check the rules that span parameters or that a kind cannot express.
    """
    problems: list[ParameterProblem] = []
    bot_id = params.get("bot_id") or ""
    if bot_id and not _GUID.match(bot_id):
        problems.append(
            ParameterProblem(
                "bot_id",
                f"Parameter 'bot_id' is {bot_id!r}, which is not an app id; give "
                "the Microsoft App ID (a GUID such as "
                "00000000-0000-0000-0000-000000000000) from the Azure bot's "
                "Configuration page.",
            )
        )
    tenant_id = params.get("tenant_id")
    if params.get("is_single_tenant_bot_type") and not tenant_id:
        problems.append(
            ParameterProblem(
                "tenant_id",
                "Parameter 'tenant_id' is required when "
                "'is_single_tenant_bot_type' is true; give the Directory (tenant) "
                "ID of the bot's app registration.",
            )
        )
    if tenant_id and not re.match(r"^[A-Za-z0-9.-]+$", tenant_id):
        problems.append(
            ParameterProblem(
                "tenant_id",
                f"Parameter 'tenant_id' is {tenant_id!r}; give a tenant GUID or "
                "domain name.",
            )
        )
    for name in ("openid_metadata_url", "token_url", "service_url"):
        value = params.get(name) or ""
        parts = urlsplit(value.replace("{tenant}", "tenant"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(
                ParameterProblem(
                    name,
                    f"Parameter {name!r} is {value!r}, which is not an http or "
                    "https URL; leave it unset to use Microsoft's.",
                )
            )
    tag = params.get("block_tag") or ""
    if not tag.strip():
        problems.append(
            ParameterProblem(
                "block_tag", "Parameter 'block_tag' is empty; give a tag name."
            )
        )
    if any(not user.strip() for user in params.get("allowed_users") or []):
        problems.append(
            ParameterProblem(
                "allowed_users",
                "Parameter 'allowed_users' holds an empty entry; remove it.",
            )
        )
    return problems


def make_connector(params: dict[str, Any], reactor: Any, http: Any = None) -> Any:
    """
    Build the Bot Connector client of an instance with parameters C{params}.
    """
    from integrations.teams.connector import BotConnector, TokenSource, make_http_client

    http = http if http is not None else make_http_client(reactor)
    tokens = TokenSource(
        http,
        reactor,
        app_id=params["bot_id"],
        app_password=params["bot_password"],
        token_url=params["token_url"],
        tenant_id=params["tenant_id"] if params["is_single_tenant_bot_type"] else None,
        reactor=reactor,
    )
    return BotConnector(http, tokens, reactor, reactor=reactor)


def make_notifier(
    params: dict[str, Any], state_dir: Path, reactor: Any, http: Any = None
) -> Any:
    """
    Build what posts proactive messages for an instance, given its
    parameters and state folder; C{xsoar-lr teams send} uses it.
    """
    from integrations.teams.notify import Notifier
    from integrations.teams.references import ConversationReferences

    return Notifier(
        app_id=params["bot_id"],
        references=ConversationReferences(state_dir),
        connector=make_connector(params, reactor, http),
        default_team=params["team"],
        default_service_url=params["service_url"],
    )


def make_bot(context: InstanceContext, http: Any = None) -> Any:
    """
    Build the bot of an instance.
    """
    from twisted.internet.threads import deferToThreadPool

    from integrations.teams.auth import BotAuthenticator, OpenIDKeys
    from integrations.teams.bot import TeamsBot
    from integrations.teams.commands import CommandProcessor
    from integrations.teams.connector import make_http_client

    params = context.params
    reactor = context.reactor
    http = http if http is not None else make_http_client(reactor)
    notifier = make_notifier(params, context.state_dir, reactor, http)
    keys = OpenIDKeys(params["openid_metadata_url"], http, reactor, reactor=reactor)
    opening = threading.Lock()

    def store() -> Any:
        # The store opens on first use, which may be in two threads at once.
        with opening:
            return context.store

    def run_blocking(function: Any) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function)

    def commands(bot: TeamsBot) -> CommandProcessor:
        return CommandProcessor(
            instance_name=context.name,
            store=store,
            run_blocking=run_blocking,
            block_tag=params["block_tag"],
            is_allowed=bot.is_allowed,
            read_status=context.host_status,
        )

    return TeamsBot(
        instance_name=context.name,
        app_id=params["bot_id"],
        authenticator=BotAuthenticator(params["bot_id"], keys),
        connector=notifier.connector,
        references=notifier.references,
        notifier=notifier,
        commands=commands,
        allowed_users=params["allowed_users"],
    )


def make_resource(context: InstanceContext) -> Any:
    """
    Build the web resource of a Teams instance.
    """
    from integrations.teams.resource import TeamsResource

    context.state_dir.mkdir(parents=True, exist_ok=True)
    context.log.info(
        "Teams bot {app_id} ready; its messaging endpoint is {route}",
        app_id=context.params["bot_id"],
        route=context.route or "not routed through the gateway",
    )
    return TeamsResource(make_bot(context))
