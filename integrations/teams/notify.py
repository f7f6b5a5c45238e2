"""
Proactive messages: posting to a channel or a user without being asked.

L{Notifier} finds where to post from the conversation references, asks the
Bot Connector for a team's channels or members when the references do not
know a name yet, opens one-to-one conversations when needed, and remembers
what it learnt. It serves both the running bot and the C{xsoar-lr teams send}
command.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from integrations.teams.connector import BotConnector
from integrations.teams.references import (
    GENERAL,
    ConversationReferences,
    find_channel,
    find_user,
)

__all__ = ["Notifier", "message"]

#: The longest text the bot sends in one message; Teams refuses about 28 KB.
MAX_TEXT = 20000


def message(text: str) -> dict[str, Any]:
    """
    Return a plain markdown message activity.
    """
    return {"type": "message", "text": text, "textFormat": "markdown"}


def member_record(member: dict[str, Any], service_url: str) -> dict[str, Any]:
    """
    Turn a Bot Connector C{TeamsChannelAccount} into a user record.
    """
    record: dict[str, Any] = {"service_url": service_url}
    for ours, theirs in (
        ("name", "name"),
        ("email", "email"),
        ("upn", "userPrincipalName"),
        ("aad_object_id", "aadObjectId"),
        ("tenant_id", "tenantId"),
    ):
        if isinstance(member.get(theirs), str) and member[theirs]:
            record[ours] = member[theirs]
    return record


class Notifier:
    """
    Posts messages where the bot has been.

    :param app_id: the bot's Microsoft App ID.
    :param references: the instance's conversation references.
    :param connector: the Bot Connector client.
    :param default_team: the team whose channels C{to_channel} looks in, or
        C{None} for every team the bot is in.
    :param default_service_url: the Bot Connector URL to use when no
        activity has told the bot its own yet.
    """

    log = Logger()

    def __init__(
        self,
        *,
        app_id: str,
        references: ConversationReferences,
        connector: BotConnector,
        default_team: str | None,
        default_service_url: str,
    ) -> None:
        self.app_id = app_id
        self.references = references
        self.connector = connector
        self.default_team = default_team
        self.default_service_url = default_service_url

    async def refresh_team(self, team_id: str) -> None:
        """
        Ask the Bot Connector for a team's channels and members and remember
        them.
        """
        document = self.references.load()
        team = (document.get("teams") or {}).get(team_id)
        if team is None:
            return
        service_url = team.get("service_url") or self._service_url(document)
        channels = await self.connector.get_channels(service_url, team_id)
        members = await self.connector.get_members(service_url, team_id)

        def learn(doc: dict[str, Any]) -> None:
            record = doc["teams"].get(team_id)
            if record is None:
                return
            names = {team_id: GENERAL}
            for channel in channels:
                if isinstance(channel.get("id"), str):
                    names[channel["id"]] = channel.get("name") or GENERAL
            record["channels"] = names
            for member in members:
                if isinstance(member.get("id"), str):
                    user = doc["users"].setdefault(member["id"], {})
                    user.update(member_record(member, service_url))

        self.references.update(learn)
        self.log.info(
            "Learnt {channels} channels and {members} members of team {team}",
            channels=len(channels) + 1,
            members=len(members),
            team=team.get("name") or team_id,
        )

    async def to_channel(self, channel: str, text: str) -> str:
        """
        Post C{text} to the channel named C{channel}.

        :returns: the new message's id.
        :raises LookupError: when no such channel is known, even after asking
            the Bot Connector.
        :raises integrations.teams.connector.ConnectorError: when posting
            fails.
        """
        _check_text(text)
        document = self.references.load()
        try:
            channel_id, team = find_channel(document, channel, self.default_team)
        except LookupError:
            if not document.get("teams"):
                raise
            # Channels made since the bot last looked are learnt here.
            for team_id in list(document["teams"]):
                await self.refresh_team(team_id)
            document = self.references.load()
            channel_id, team = find_channel(document, channel, self.default_team)
        service_url = team.get("service_url") or self._service_url(document)
        answer = await self.connector.send_activity(
            service_url, channel_id, message(text)
        )
        return str(answer.get("id", ""))

    async def to_user(self, who: str, text: str) -> str:
        """
        Post C{text} to a user in the user's one-to-one chat with the bot,
        opening that chat when needed.

        :param who: the user's email address, user principal name or Azure
            AD object id.
        :returns: the new message's id.
        :raises LookupError: when no such user is known, even after reading
            the members of every team the bot is in.
        """
        _check_text(text)
        document = self.references.load()
        found = find_user(document, who)
        if found is None and document.get("teams"):
            for team_id in list(document["teams"]):
                await self.refresh_team(team_id)
            document = self.references.load()
            found = find_user(document, who)
        if found is None:
            raise LookupError(
                f"The bot knows no user {who!r}. The user must be a member of a "
                "team the bot is in, or have written to the bot."
            )
        user_id, user = found
        service_url = user.get("service_url") or self._service_url(document)
        conversation_id = user.get("conversation_id")
        if not conversation_id:
            bot = document.get("bot") or {}
            conversation_id = await self.connector.create_personal_conversation(
                service_url,
                bot_id=bot.get("id") or f"28:{self.app_id}",
                user_id=user_id,
                tenant_id=user.get("tenant_id") or document.get("tenant_id"),
            )

            def remember(doc: dict[str, Any]) -> None:
                doc["users"].setdefault(user_id, {})["conversation_id"] = (
                    conversation_id
                )
                doc["conversations"][conversation_id] = {
                    "type": "personal",
                    "service_url": service_url,
                    "tenant_id": user.get("tenant_id") or doc.get("tenant_id"),
                }

            self.references.update(remember)
        answer = await self.connector.send_activity(
            service_url, conversation_id, message(text)
        )
        return str(answer.get("id", ""))

    def _service_url(self, document: dict[str, Any]) -> str:
        return str(document.get("service_url") or self.default_service_url)


def _check_text(text: str) -> None:
    if not text.strip():
        raise ValueError("The message is empty; give the text to send.")
    if len(text) > MAX_TEXT:
        raise ValueError(
            f"The message is {len(text)} characters long; Teams takes at most "
            f"{MAX_TEXT}."
        )
