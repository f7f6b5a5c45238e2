"""
The commands the bot answers, and the adaptive cards it answers with.

A message to the bot (in a one-to-one chat, or mentioning it in a channel or
group chat) is a command over this project:

 - C{help};
 - C{lookup VALUE}: what the indicator store knows about an indicator;
 - C{block VALUE [reason]}: add the indicator with the instance's block tag,
   so that every list (EDL) serving that tag picks it up;
 - C{unblock VALUE}: take the block tag off the indicator and withdraw the
   bot's own contribution to it;
 - C{status}: the host's instances and whether each is up.

C{block} and C{unblock} are allowed only to the users named in the
instance's C{allowed_users}. The same commands arrive as adaptive card
actions (C{Action.Submit} and C{Action.Execute}), from the buttons of the
cards the bot sends.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

import attrs
from twisted.logger import Logger

from xsoar_lr.indicators import Indicator, IndicatorType, Score

__all__ = [
    "SOURCE",
    "CommandProcessor",
    "Reply",
    "Sender",
    "guess_indicator_type",
]

#: The source name of the indicators the bot adds.
SOURCE = "teams"

#: The content type of an adaptive card attachment.
ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"

#: The longest indicator value the bot accepts, in characters.
MAX_VALUE_LENGTH = 2048

T = TypeVar("T")


class IndicatorStoreLike(Protocol):
    """
    The part of L{xsoar_lr.store.IndicatorStore} the commands use.
    """

    def get(self, value: str) -> Indicator | None: ...

    def add(self, indicators: Any, *, source: str) -> Any: ...

    def remove(self, value: str, *, source: str | None = None) -> bool: ...

    def remove_tag(self, value: str, tag: str) -> bool: ...


@attrs.frozen
class Sender:
    """
    Who sent a command, and from where.

    :ivar id: the user's Bot Framework id (C{29:...}).
    :ivar name: the user's display name.
    :ivar aad_object_id: the user's Azure AD object id, when Teams gave it.
    :ivar conversation_id: the conversation the command came from.
    :ivar service_url: the Bot Connector URL of that conversation.
    """

    id: str
    name: str
    aad_object_id: str | None
    conversation_id: str
    service_url: str


@attrs.frozen
class Reply:
    """
    The bot's answer to a command: a text, an adaptive card, or both.
    """

    text: str | None = None
    card: Mapping[str, Any] | None = None

    def as_activity(self) -> dict[str, Any]:
        """
        Return the reply as a Bot Framework message activity.
        """
        activity: dict[str, Any] = {"type": "message"}
        if self.text is not None:
            activity["text"] = self.text
            activity["textFormat"] = "markdown"
        if self.card is not None:
            activity["attachments"] = [
                {"contentType": ADAPTIVE_CARD, "content": dict(self.card)}
            ]
        return activity

    def as_invoke_response(self) -> dict[str, Any]:
        """
        Return the reply as the body of an C{adaptiveCard/action} invoke
        response: a card replaces the card that was clicked, a text is shown
        as a message.
        """
        if self.card is not None:
            return {"statusCode": 200, "type": ADAPTIVE_CARD, "value": dict(self.card)}
        return {
            "statusCode": 200,
            "type": "application/vnd.microsoft.activity.message",
            "value": self.text or "",
        }


_HASH = re.compile(
    r"^(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64}|[0-9a-fA-F]{128})$"
)
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(?:{_LABEL}\.)+[A-Za-z][A-Za-z0-9-]{{0,62}}\.?$")
_EMAIL = re.compile(rf"^[^@\s]+@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")


def guess_indicator_type(value: str) -> IndicatorType | None:
    """
    Tell what kind of indicator C{value} is.

    :returns: the type, or C{None} when C{value} is none of the kinds the
        bot can block.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return IndicatorType.IP if address.version == 4 else IndicatorType.IPV6
    if "/" in value and "://" not in value:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
        else:
            if network.version == 4:
                return IndicatorType.CIDR
            return IndicatorType.IPV6_CIDR
    if _URL.match(value):
        return IndicatorType.URL
    if _EMAIL.match(value):
        return IndicatorType.EMAIL
    if _HASH.match(value):
        return IndicatorType.FILE
    if value.startswith("*.") and _DOMAIN.match(value[2:]):
        return IndicatorType.DOMAIN_GLOB
    if _DOMAIN.match(value):
        return IndicatorType.DOMAIN
    return None


def clean_value(raw: str) -> str:
    """
    Tidy an indicator value as typed in Teams: surrounding blanks, quotes,
    backticks and angle brackets (which Teams puts around links) go.
    """
    value = raw.strip()
    while len(value) >= 2 and (value[0], value[-1]) in (
        ("<", ">"),
        ("`", "`"),
        ('"', '"'),
        ("'", "'"),
    ):
        value = value[1:-1].strip()
    return value


def _format_time(when: datetime | None) -> str:
    if when is None:
        return "never"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _card(
    body: list[dict[str, Any]], actions: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": body,
    }
    if actions:
        card["actions"] = actions
    return card


def _action(title: str, verb: str, value: str) -> dict[str, Any]:
    """
    A button that runs a command: C{Action.Execute} where Teams supports
    universal actions, C{Action.Submit} where it does not.
    """
    data = {"command": verb, "value": value}
    return {
        "type": "Action.Execute",
        "title": title,
        "verb": verb,
        "data": data,
        "fallback": {"type": "Action.Submit", "title": title, "data": data},
    }


def indicator_card(indicator: Indicator, block_tag: str) -> dict[str, Any]:
    """
    An adaptive card with everything the store knows about one indicator,
    and a button to block or unblock it.
    """
    facts = [
        {"title": "Type", "value": indicator.type.value},
        {"title": "Verdict", "value": indicator.score.verdict},
        {"title": "Tags", "value": ", ".join(indicator.tags) or "none"},
        {"title": "Sources", "value": ", ".join(indicator.sources) or "none"},
        {"title": "First seen", "value": _format_time(indicator.first_seen)},
        {"title": "Last seen", "value": _format_time(indicator.last_seen)},
        {"title": "Expires", "value": _format_time(indicator.expiration)},
    ]
    for name, field_value in sorted(indicator.custom_fields.items()):
        facts.append({"title": str(name), "value": str(field_value)})
    blocked = block_tag in indicator.tags
    button = (
        _action("Unblock", "unblock", indicator.value)
        if blocked
        else _action("Block", "block", indicator.value)
    )
    return _card(
        [
            {
                "type": "TextBlock",
                "text": indicator.value,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
            },
            {"type": "FactSet", "facts": facts},
        ],
        [button],
    )


def status_card(instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    An adaptive card listing the host's instances and their states.
    """
    facts = []
    for instance in instances:
        parts = [str(instance.get("state", "unknown"))]
        if instance.get("integration"):
            parts.append(str(instance["integration"]))
        if instance.get("port") is not None:
            parts.append(f"port {instance['port']}")
        if instance.get("routed") and instance.get("route"):
            parts.append(f"at {instance['route']}")
        restarts = instance.get("restarts") or 0
        if restarts:
            parts.append(f"{restarts} restarts")
        if instance.get("last_exit"):
            parts.append(f"last exit: {instance['last_exit']}")
        facts.append(
            {"title": str(instance.get("name", "?")), "value": ", ".join(parts)}
        )
    up = sum(1 for i in instances if i.get("state") == "running")
    return _card(
        [
            {
                "type": "TextBlock",
                "text": f"{up} of {len(instances)} instances running",
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
            },
            {"type": "FactSet", "facts": facts},
        ]
    )


class CommandProcessor:
    """
    Runs the bot's commands.

    :param instance_name: the instance's name, for messages.
    :param store: returns the indicator store (opened on first use).
    :param run_blocking: runs a blocking function away from the reactor
        thread and returns its result.
    :param block_tag: the tag C{block} adds and C{unblock} removes.
    :param is_allowed: whether a sender may block and unblock.
    :param read_status: returns the host's instances, as
        C{xsoar_lr.status.read_status} does; blocking.
    """

    log = Logger()

    def __init__(
        self,
        *,
        instance_name: str,
        store: Callable[[], IndicatorStoreLike],
        run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]],
        block_tag: str,
        is_allowed: Callable[[Sender], Awaitable[bool]],
        read_status: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.instance_name = instance_name
        self._store = store
        self._run_blocking = run_blocking
        self.block_tag = block_tag
        self._is_allowed = is_allowed
        self._read_status = read_status

    def help(self, prefix: str = "") -> Reply:
        """
        The list of commands.
        """
        tag = self.block_tag
        lines = [
            "Commands (write them to me in a chat, or mention me in a channel):",
            "",
            "- **help**: this list",
            "- **lookup** VALUE: what the indicator store knows about VALUE",
            f"- **block** VALUE [reason]: add VALUE with tag *{tag}*, so that "
            "the lists serving that tag block it",
            f"- **unblock** VALUE: take tag *{tag}* off VALUE",
            "- **status**: the host's instances and whether each is running",
        ]
        return Reply(text=prefix + "\n".join(lines))

    async def run(self, text: str, sender: Sender) -> Reply:
        """
        Run the command written in C{text}.
        """
        words = text.split(None, 1)
        if not words:
            return self.help()
        verb = words[0].casefold()
        rest = words[1] if len(words) > 1 else ""
        if verb == "block":
            value, _, reason = rest.strip().partition(" ")
            return await self.run_action("block", value, sender, reason=reason)
        if verb in ("help", "lookup", "unblock", "status"):
            return await self.run_action(verb, rest, sender)
        return self.help(f"I do not know the command *{words[0][:40]}*. ")

    async def run_action(
        self, verb: str, value: str, sender: Sender, *, reason: str = ""
    ) -> Reply:
        """
        Run command C{verb} on C{value}, as typed or from a card's button.
        """
        verb = verb.casefold()
        if verb == "help":
            return self.help()
        if verb == "status":
            return await self._status()
        if verb not in ("lookup", "block", "unblock"):
            return self.help(f"I do not know the command *{verb[:40]}*. ")
        value = clean_value(value)
        if not value:
            return Reply(text=f"Say which indicator: **{verb}** VALUE.")
        if len(value) > MAX_VALUE_LENGTH:
            return Reply(
                text=f"That value is {len(value)} characters long; indicators "
                f"of more than {MAX_VALUE_LENGTH} characters are not accepted."
            )
        if verb == "lookup":
            return await self._lookup(value)
        if not await self._is_allowed(sender):
            self.log.warn(
                "Refused {verb} of {value} to {user} ({user_id}): not in allowed_users",
                verb=verb,
                value=value,
                user=sender.name,
                user_id=sender.aad_object_id or sender.id,
            )
            return Reply(
                text=f"You may not {verb} indicators. Ask an administrator to "
                f"add your email address to allowed_users of instance "
                f"{self.instance_name}."
            )
        if verb == "block":
            return await self._block(value, reason.strip(), sender)
        return await self._unblock(value, sender)

    async def _lookup(self, value: str) -> Reply:
        store = self._store
        indicator = await self._run_blocking(lambda: store().get(value))
        if indicator is None:
            return Reply(text=f"`{value}` is not in the indicator store.")
        return Reply(card=indicator_card(indicator, self.block_tag))

    async def _block(self, value: str, reason: str, sender: Sender) -> Reply:
        kind = guess_indicator_type(value)
        if kind is None:
            return Reply(
                text=f"I cannot tell what kind of indicator `{value}` is. Give an "
                "IP address, CIDR range, domain (or *.domain), URL, email address "
                "or file hash."
            )
        now = datetime.now(timezone.utc)
        fields: dict[str, Any] = {"blockedby": sender.name}
        if reason:
            fields["blockreason"] = reason
        details: dict[str, Any] = {
            "tags": (self.block_tag,),
            "sources": (SOURCE,),
            "first_seen": now,
            "last_seen": now,
            "custom_fields": fields,
        }
        indicator = Indicator(value=value, type=kind, score=Score.BAD, **details)
        store = self._store
        await self._run_blocking(lambda: store().add([indicator], source=SOURCE))
        self.log.info(
            "{user} blocked {value} ({kind}) with tag {tag}: {reason}",
            user=sender.name,
            value=value,
            kind=kind.value,
            tag=self.block_tag,
            reason=reason or "no reason given",
        )
        because = f" Reason: {reason}" if reason else ""
        return Reply(
            text=f"Blocked `{value}` ({kind.value}): it now carries tag "
            f"*{self.block_tag}*, and the lists serving that tag pick it up on "
            f"their next refresh.{because}"
        )

    async def _unblock(self, value: str, sender: Sender) -> Reply:
        store = self._store
        tag = self.block_tag

        def unblock() -> tuple[bool, bool, Indicator | None]:
            opened = store()
            untagged = opened.remove_tag(value, tag)
            withdrawn = opened.remove(value, source=SOURCE)
            return untagged, withdrawn, opened.get(value)

        untagged, withdrawn, left = await self._run_blocking(unblock)
        if not (untagged or withdrawn):
            return Reply(text=f"`{value}` was not blocked (it has no tag *{tag}*).")
        self.log.info(
            "{user} unblocked {value} (tag {tag})",
            user=sender.name,
            value=value,
            tag=tag,
        )
        text = f"Unblocked `{value}`: it no longer carries tag *{tag}*."
        if left is not None and left.sources:
            text += (
                f" It stays in the indicator store from {', '.join(left.sources)}; "
                "a feed that tags it again blocks it again."
            )
        return Reply(text=text)

    async def _status(self) -> Reply:
        try:
            instances = await self._run_blocking(self._read_status)
        except Exception as e:
            self.log.failure("Could not read the host's status")
            return Reply(text=f"I could not read the host's status: {e}")
        if not instances:
            return Reply(text="The host runs no instances.")
        return Reply(card=status_card(instances))
