"""
The bot: what it does with each activity the Bot Connector posts.

L{TeamsBot.receive} verifies a request, remembers what the activity tells
about teams, channels, users and conversations, and then:

 - C{conversationUpdate}: keeps the conversation references up to date
   (bot or members added or removed, team renamed or deleted, channels made,
   renamed or deleted), and reads a team's channels and members when the bot
   joins it;
 - C{message}: runs the command in its text (with the bot's own mention
   taken out), or the command of an adaptive card's C{Action.Submit}
   (a message with a C{value}), and replies through the Bot Connector;
 - C{invoke} named C{adaptiveCard/action}: runs the command of an
   C{Action.Execute} and answers with an invoke response;
 - anything else: acknowledged and ignored, as Teams requires.

Replies to messages are sent after the request has been answered, so a slow
or failing Bot Connector never holds up the messaging endpoint.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger

from integrations.teams.auth import AuthenticationError, BotAuthenticator
from integrations.teams.commands import CommandProcessor, Reply, Sender
from integrations.teams.connector import BotConnector, ConnectorError
from integrations.teams.notify import Notifier, member_record
from integrations.teams.references import GENERAL, ConversationReferences

__all__ = ["Answer", "TeamsBot", "strip_bot_mention"]

#: The answer when a command fails unexpectedly; the log has the details.
FAILED = Reply(
    text="Something went wrong running that command; the instance's log has "
    "the details."
)

#: The C{conversationUpdate} events that remove a team from the references.
TEAM_GONE = frozenset({"teamDeleted", "teamHardDeleted"})


@attrs.frozen
class Answer:
    """
    The HTTP answer to one request to the messaging endpoint.

    :ivar code: the status code.
    :ivar body: a JSON body, or C{None} for none.
    :ivar reason: why a request was refused, for the log.
    """

    code: int
    body: Mapping[str, Any] | None = None
    reason: str | None = None


def strip_bot_mention(activity: Mapping[str, Any]) -> str:
    """
    Return a message's text without the mentions of the bot itself.

    Teams writes a mention as C{<at>Name</at>} in the text and lists it in
    C{entities}; mentions of other people are kept.
    """
    text = str(activity.get("text") or "")
    recipient = activity.get("recipient") or {}
    bot_id = recipient.get("id") if isinstance(recipient, dict) else None
    for entity in activity.get("entities") or []:
        if not isinstance(entity, dict) or entity.get("type") != "mention":
            continue
        mentioned = entity.get("mentioned") or {}
        if isinstance(mentioned, dict) and mentioned.get("id") == bot_id:
            mention_text = entity.get("text")
            if isinstance(mention_text, str) and mention_text:
                text = text.replace(mention_text, " ")
    bot_name = recipient.get("name") if isinstance(recipient, dict) else None
    if isinstance(bot_name, str) and bot_name:
        text = re.sub(
            r"<at>\s*" + re.escape(bot_name) + r"\s*</at>", " ", text, flags=re.I
        )
    return " ".join(html.unescape(text).split())


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


class TeamsBot:
    """
    One Teams bot instance.

    :param instance_name: the instance's name, for messages and logs.
    :param app_id: the bot's Microsoft App ID.
    :param authenticator: checks the requests.
    :param connector: the Bot Connector client.
    :param references: the conversation references.
    :param notifier: proactive posting, and reading teams' members.
    :param commands: runs the commands.
    :param allowed_users: who may block and unblock: email addresses, user
        principal names or Azure AD object ids.
    """

    log = Logger()

    def __init__(
        self,
        *,
        instance_name: str,
        app_id: str,
        authenticator: BotAuthenticator,
        connector: BotConnector,
        references: ConversationReferences,
        notifier: Notifier,
        commands: Callable[[TeamsBot], CommandProcessor],
        allowed_users: list[str],
    ) -> None:
        self.instance_name = instance_name
        self.app_id = app_id
        self.authenticator = authenticator
        self.connector = connector
        self.references = references
        self.notifier = notifier
        self.allowed_users = frozenset(u.strip().casefold() for u in allowed_users)
        self.commands = commands(self)
        self._pending: set[Deferred[None]] = set()

    async def receive(
        self, authorization: str | None, activity: Mapping[str, Any] | None
    ) -> Answer:
        """
        Verify and handle one request to the messaging endpoint.
        """
        try:
            await self.authenticator.verify(authorization, activity)
        except AuthenticationError as e:
            return Answer(401, reason=str(e))
        assert activity is not None
        kind = activity.get("type")
        self._learn(activity)
        if kind == "conversationUpdate":
            self._conversation_update(activity)
            return Answer(200)
        if kind == "message":
            self._message(activity)
            return Answer(200)
        if kind == "invoke" and activity.get("name") == "adaptiveCard/action":
            return await self._card_action(activity)
        self.log.debug(
            "Ignored a {kind} activity ({name})", kind=kind, name=activity.get("name")
        )
        return Answer(200)

    def background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """
        Run C{work} after the request has been answered; a failure is
        logged with C{what}.
        """
        d = ensureDeferred(work)

        def failed(failure: Any) -> None:
            if failure.check(ConnectorError):
                self.log.error(
                    "Could not {what}: {error}", what=what, error=failure.value
                )
            else:
                self.log.failure("Could not {what}", failure, what=what)

        d.addErrback(failed)
        self._pending.add(d)
        d.addBoth(lambda _: self._pending.discard(d))

    def idle(self) -> Deferred[Any]:
        """
        Return a Deferred that fires when the work in the background that has
        been started so far has finished.
        """
        return DeferredList(list(self._pending))

    def _learn(self, activity: Mapping[str, Any]) -> None:
        """
        Remember the service URL, tenant, bot, team, channel, conversation
        and sender an activity names.
        """
        service_url = activity.get("serviceUrl")
        if not isinstance(service_url, str) or not service_url:
            return
        tenant_id = _get(activity, "channelData", "tenant", "id") or _get(
            activity, "conversation", "tenantId"
        )
        conversation = activity.get("conversation") or {}
        conversation_id = _get(activity, "conversation", "id")
        team = _get(activity, "channelData", "team")
        channel = _get(activity, "channelData", "channel")
        sender = activity.get("from") or {}
        recipient = activity.get("recipient") or {}

        def learn(doc: dict[str, Any]) -> None:
            doc["service_url"] = service_url
            if tenant_id:
                doc["tenant_id"] = tenant_id
            if isinstance(recipient, dict) and recipient.get("id"):
                doc["bot"] = {
                    "id": recipient["id"],
                    "name": recipient.get("name") or doc["bot"].get("name"),
                }
            if isinstance(team, dict) and isinstance(team.get("id"), str):
                record = doc["teams"].setdefault(team["id"], {"channels": {}})
                record["service_url"] = service_url
                record.setdefault("channels", {}).setdefault(team["id"], GENERAL)
                if team.get("name"):
                    record["name"] = team["name"]
                if team.get("aadGroupId"):
                    record["aad_group_id"] = team["aadGroupId"]
                if tenant_id:
                    record["tenant_id"] = tenant_id
                if isinstance(channel, dict) and isinstance(channel.get("id"), str):
                    channels = record["channels"]
                    if channel.get("name"):
                        channels[channel["id"]] = channel["name"]
                    else:
                        channels.setdefault(channel["id"], GENERAL)
            if isinstance(conversation_id, str) and conversation_id:
                # A channel thread's id carries ';messageid=...'; keep the
                # conversation itself.
                key = conversation_id.split(";", 1)[0]
                entry = doc["conversations"].setdefault(key, {})
                entry["type"] = conversation.get("conversationType") or entry.get(
                    "type", "personal"
                )
                entry["service_url"] = service_url
                if tenant_id:
                    entry["tenant_id"] = tenant_id
                if isinstance(team, dict) and team.get("id"):
                    entry["team_id"] = team["id"]
                personal = entry["type"] == "personal"
                if personal and isinstance(sender, dict) and sender.get("id"):
                    if sender["id"] != (recipient or {}).get("id"):
                        user = doc["users"].setdefault(sender["id"], {})
                        user["conversation_id"] = key
                        user["service_url"] = service_url
                        if sender.get("name"):
                            user["name"] = sender["name"]
                        if sender.get("aadObjectId"):
                            user["aad_object_id"] = sender["aadObjectId"]
                        if tenant_id:
                            user["tenant_id"] = tenant_id

        self.references.update(learn)

    def _conversation_update(self, activity: Mapping[str, Any]) -> None:
        event = _get(activity, "channelData", "eventType")
        team = _get(activity, "channelData", "team") or {}
        team_id = team.get("id") if isinstance(team, dict) else None
        channel = _get(activity, "channelData", "channel") or {}
        bot_id = _get(activity, "recipient", "id")
        added = [
            m.get("id")
            for m in activity.get("membersAdded") or []
            if isinstance(m, dict)
        ]
        removed = [
            m.get("id")
            for m in activity.get("membersRemoved") or []
            if isinstance(m, dict)
        ]
        conversation_id = str(_get(activity, "conversation", "id") or "").split(";")[0]

        def change(doc: dict[str, Any]) -> None:
            if team_id and (event in TEAM_GONE or bot_id in removed):
                doc["teams"].pop(team_id, None)
                return
            if not team_id and bot_id in removed and conversation_id:
                doc["conversations"].pop(conversation_id, None)
                for user in doc["users"].values():
                    if user.get("conversation_id") == conversation_id:
                        user.pop("conversation_id")
                return
            record = doc["teams"].get(team_id) if team_id else None
            if record is None:
                return
            if event in ("channelCreated", "channelRenamed", "channelRestored"):
                if isinstance(channel, dict) and channel.get("id"):
                    record["channels"][channel["id"]] = channel.get("name") or GENERAL
            elif event == "channelDeleted":
                if isinstance(channel, dict):
                    record["channels"].pop(channel.get("id"), None)
            for member_id in removed:
                user = doc["users"].get(member_id)
                if user is not None and not user.get("conversation_id"):
                    doc["users"].pop(member_id)

        self.references.update(change)
        self.log.info(
            "Conversation update {event} in {where}",
            event=event or ("members added" if added else "members removed"),
            where=team.get("name") or team_id or conversation_id,
        )
        # Who the team's members are and what its channels are called is
        # read when the bot or a member joins, for 'teams send'.
        if team_id and added and event not in TEAM_GONE and bot_id not in removed:
            self.background(
                self.notifier.refresh_team(team_id),
                f"read the channels and members of team {team_id}",
            )

    def _sender(self, activity: Mapping[str, Any]) -> Sender:
        sender = activity.get("from") or {}
        return Sender(
            id=str(sender.get("id") or ""),
            name=str(sender.get("name") or sender.get("id") or "someone"),
            aad_object_id=sender.get("aadObjectId"),
            conversation_id=str(_get(activity, "conversation", "id") or ""),
            service_url=str(activity.get("serviceUrl") or ""),
        )

    def _message(self, activity: Mapping[str, Any]) -> None:
        sender = self._sender(activity)
        value = activity.get("value")
        if isinstance(value, dict) and value:
            command = value.get("command")
            if not isinstance(command, str):
                self.log.debug("Ignored a card submission that is not ours")
                return
            work = self.commands.run_action(
                command,
                str(value.get("value") or ""),
                sender,
                reason=str(value.get("reason") or ""),
            )
        else:
            text = strip_bot_mention(activity)
            work = self.commands.run(text, sender)
        self.background(
            self._reply(activity, work),
            f"answer {sender.name} in {sender.conversation_id}",
        )

    async def _reply(self, activity: Mapping[str, Any], work: Any) -> None:
        try:
            reply: Reply = await work
        except Exception:
            self.log.failure("A command failed")
            reply = FAILED
        outgoing = reply.as_activity()
        if activity.get("id"):
            outgoing["replyToId"] = activity["id"]
        await self.connector.send_activity(
            str(activity["serviceUrl"]),
            str(_get(activity, "conversation", "id")),
            outgoing,
        )

    async def _card_action(self, activity: Mapping[str, Any]) -> Answer:
        action = _get(activity, "value", "action") or {}
        data = action.get("data") if isinstance(action, dict) else None
        data = data if isinstance(data, dict) else {}
        verb = action.get("verb") if isinstance(action, dict) else None
        if not isinstance(verb, str) or not verb:
            verb = data.get("command")
        if not isinstance(verb, str) or not verb:
            return Answer(
                200,
                {
                    "statusCode": 400,
                    "type": "application/vnd.microsoft.error",
                    "value": {
                        "code": "BadRequest",
                        "message": "The action has no verb.",
                    },
                },
            )
        try:
            reply = await self.commands.run_action(
                verb,
                str(data.get("value") or ""),
                self._sender(activity),
                reason=str(data.get("reason") or ""),
            )
        except Exception:
            self.log.failure("A card action failed")
            reply = FAILED
        return Answer(200, reply.as_invoke_response())

    async def is_allowed(self, sender: Sender) -> bool:
        """
        Whether C{sender} is one of the instance's C{allowed_users}, by
        Azure AD object id, email address or user principal name. The
        address is read from the Bot Connector the first time.
        """
        if not self.allowed_users:
            return False
        if (sender.aad_object_id or "").casefold() in self.allowed_users:
            return True
        user = (self.references.load().get("users") or {}).get(sender.id) or {}
        if not (user.get("email") or user.get("upn")):
            try:
                member = await self.connector.get_member(
                    sender.service_url, sender.conversation_id.split(";")[0], sender.id
                )
            except ConnectorError as e:
                self.log.error(
                    "Could not read who {name} is, so refused them: {error}",
                    name=sender.name,
                    error=e,
                )
                return False
            user = member_record(member, sender.service_url)

            def remember(doc: dict[str, Any]) -> None:
                doc["users"].setdefault(sender.id, {}).update(user)

            self.references.update(remember)
        return any(
            isinstance(user.get(key), str)
            and user[key].casefold() in self.allowed_users
            for key in ("email", "upn", "aad_object_id")
        )
