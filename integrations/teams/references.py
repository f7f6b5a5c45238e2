"""
Conversation references: what the bot has learnt about where it can post.

The Bot Connector only lets a bot post where it has been: a team it was
added to, a channel of such a team, a chat it was in, or a one-to-one
conversation with a user of a tenant it is installed in. Every activity tells
the bot a little (the service URL, the tenant, the team and channel, who
wrote); L{ConversationReferences} keeps it in one JSON file in the
instance's state folder, so that it survives restarts and so that the
C{xsoar-lr teams send} command, which runs in another process, can use it.

Each change re-reads the file under an exclusive lock, applies the change
and replaces the file atomically (write a temporary file, flush it to disk,
rename it over the old one), so two processes never lose each other's
changes and a crash never leaves half a file.

The document::

    {
      "version": 1,
      "service_url": "https://smba.trafficmanager.net/emea/",
      "tenant_id": "...",
      "bot": {"id": "28:...", "name": "..."},
      "teams": {TEAM_ID: {"name", "aad_group_id", "tenant_id", "service_url",
                          "channels": {CHANNEL_ID: NAME}}},
      "users": {USER_ID: {"name", "email", "upn", "aad_object_id",
                          "tenant_id", "service_url", "conversation_id"}},
      "conversations": {CONVERSATION_ID: {"type", "tenant_id", "service_url",
                                          "team_id"}}
    }
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from twisted.logger import Logger

__all__ = [
    "FILE_NAME",
    "ConversationReferences",
    "ReferencesError",
    "empty_document",
]

#: The file's name inside the instance's state folder.
FILE_NAME = "teams-conversations.json"

#: The name the General channel goes by; the Bot Connector gives it none.
GENERAL = "General"

T = TypeVar("T")


class ReferencesError(Exception):
    """
    The conversation references file cannot be read; the message names it.
    """


def empty_document() -> dict[str, Any]:
    """
    Return the document of a bot that has not heard from Teams yet.
    """
    return {
        "version": 1,
        "service_url": None,
        "tenant_id": None,
        "bot": {},
        "teams": {},
        "users": {},
        "conversations": {},
    }


class ConversationReferences:
    """
    The conversation references of one instance, kept in C{state_dir}.

    :param state_dir: the instance's state folder; created when missing.
    """

    log = Logger()

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self._lock_path = Path(state_dir) / (FILE_NAME + ".lock")

    def load(self) -> dict[str, Any]:
        """
        Read the document; a missing file is an empty document.

        :raises ReferencesError: when the file is not a document of ours.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return empty_document()
        except OSError as e:
            raise ReferencesError(f"Cannot read {self.path}: {e.strerror}.") from None
        try:
            document = json.loads(text)
        except ValueError as e:
            raise ReferencesError(
                f"{self.path} is not valid JSON ({e}). Move it away to start with "
                "no conversation references; the bot learns them again as "
                "activities arrive."
            ) from None
        if not isinstance(document, dict) or document.get("version") != 1:
            raise ReferencesError(
                f"{self.path} is not a version 1 conversation references "
                "document. Move it away to start with no conversation references."
            )
        base = empty_document()
        base.update(document)
        return base

    def update(self, change: Callable[[dict[str, Any]], T]) -> T:
        """
        Apply C{change} to the stored document and save the result.

        C{change} mutates the document it is given and returns anything; the
        file is written only when the document changed. A document that
        cannot be read is moved aside to C{<file>.corrupt} (and the problem
        logged), and the change applies to an empty document.

        :returns: what C{change} returned.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            try:
                document = self.load()
            except ReferencesError as e:
                aside = self.path.with_name(self.path.name + ".corrupt")
                os.replace(self.path, aside)
                self.log.error(
                    "{problem} It was moved to {aside}.", problem=str(e), aside=aside
                )
                document = empty_document()
            before = copy.deepcopy(document)
            result = change(document)
            if document != before:
                self._write(document)
            return result

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, document: dict[str, Any]) -> None:
        data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
        handle, temporary = tempfile.mkstemp(
            prefix=FILE_NAME + ".", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def channel_names(team: dict[str, Any]) -> dict[str, str]:
    """
    Return a team's channels as id to name, the General channel included.
    """
    channels: dict[str, str] = dict(team.get("channels") or {})
    return channels


def find_channel(
    document: dict[str, Any], channel: str, team: str | None
) -> tuple[str, dict[str, Any]]:
    """
    Find a channel by name, in the team named C{team} or, when that is
    C{None}, in any team the bot is in.

    :returns: the channel's conversation id and its team's record.
    :raises LookupError: with a sentence that says what is known instead.
    """
    teams = document.get("teams") or {}
    if team is not None:
        chosen = {
            tid: t
            for tid, t in teams.items()
            if str(t.get("name", "")).casefold() == team.casefold()
        }
        if not chosen:
            known = ", ".join(sorted(str(t.get("name")) for t in teams.values()))
            raise LookupError(
                f"The bot knows no team named {team!r}; the teams it is in are: "
                f"{known or 'none yet (add the bot to a team in Microsoft Teams)'}."
            )
    else:
        chosen = dict(teams)
    matches = [
        (cid, t)
        for t in chosen.values()
        for cid, name in channel_names(t).items()
        if str(name).casefold() == channel.casefold()
    ]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(sorted(str(t.get("name")) for _, t in matches))
        raise LookupError(
            f"Several teams have a channel named {channel!r} ({names}); set the "
            "instance's team parameter to the one to post in."
        )
    known_channels = sorted(
        {str(name) for t in chosen.values() for name in channel_names(t).values()}
    )
    raise LookupError(
        f"The bot knows no channel named {channel!r}"
        + (f" in team {team!r}" if team else "")
        + "; the channels it knows are: "
        + (", ".join(known_channels) or "none yet (add the bot to a team)")
        + "."
    )


def find_user(document: dict[str, Any], who: str) -> tuple[str, dict[str, Any]] | None:
    """
    Find a user by email address, user principal name or Azure AD object id,
    ignoring case.

    :returns: the user's Bot Framework id and record, or C{None}.
    """
    wanted = who.casefold()
    for user_id, user in (document.get("users") or {}).items():
        for key in ("email", "upn", "aad_object_id"):
            value = user.get(key)
            if isinstance(value, str) and value.casefold() == wanted:
                return user_id, user
    return None
