"""
Tests of a webhook instance in memory, through the xsoar-lr testing kit.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from xsoar_lr_webhook import events as events_module
from xsoar_lr_webhook.events import EventLog, NewEvent

from xsoar_lr.testing import InstanceHarness, build_instance, wait_until

BASIC = {"identifier": "alice", "password": "correct horse"}
TOKEN = {"identifier": "_header:X-Webhook-Token", "password": "t0ken-Secret"}


def webhook(tmp_path: Path, **params: Any) -> InstanceHarness:
    return build_instance("generic-webhook", params, name="hook", root=tmp_path)


@pytest_twisted.ensureDeferred
async def test_a_posted_event_is_stored_and_listed(tmp_path: Path) -> None:
    async with webhook(tmp_path, credentials=BASIC, incidentType="Phishing") as hook:
        answer = await hook.post(
            "/",
            json={"name": "Suspicious mail", "occurred": "2024-05-01T12:00:00Z"},
            auth=("alice", "correct horse"),
            headers={"X-Source": "mail-gw"},
        )
        assert answer.code == 200
        (summary,) = answer.json()
        assert summary["id"] == 1
        assert (summary["name"], summary["type"]) == ("Suspicious mail", "Phishing")

        listing = await hook.get("/events", auth=("alice", "correct horse"))
        assert listing.code == 200
        page = listing.json()
        assert (page["total"], page["next"]) == (1, None)
        (event,) = page["events"]
        assert event["rawJSON"] == {
            "name": "Suspicious mail",
            "occurred": "2024-05-01T12:00:00Z",
        }
        assert event["headers"]["X-Source"] == ["mail-gw"]
        assert "Authorization" not in event["headers"]

        one = await hook.get("/events/1", auth=("alice", "correct horse"))
        assert one.json() == event
        assert (tmp_path / "instances" / "hook" / "events.sqlite3").exists()
        assert hook.leaked_secrets() == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"bob:correct horse").decode()},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer correct horse"},
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_basic_credentials_are_refused(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async with webhook(tmp_path, credentials=BASIC) as hook:
        answer = await hook.post("/", json={"name": "x"}, headers=headers)
        assert answer.code == 401
        assert answer.json() == {"error": "Authorization failed."}
        assert answer.header("www-authenticate") == (
            'Basic realm="webhook", charset="UTF-8"'
        )
        assert (await hook.get("/events", headers=headers)).code == 401
        assert EventLog(hook.state_dir / "events.sqlite3").count() == 0
        assert hook.leaked_secrets() == []


@pytest_twisted.ensureDeferred
async def test_a_header_token_is_accepted_and_never_stored(tmp_path: Path) -> None:
    async with webhook(tmp_path, credentials=TOKEN) as hook:
        good = {"X-Webhook-Token": "t0ken-Secret"}
        assert (await hook.post("/", json={}, headers=good)).code == 200
        for bad in ({}, {"X-Webhook-Token": "t0ken-secret"}, {"Authorization": "x"}):
            answer = await hook.post("/", json={}, headers=bad)
            assert answer.code == 401
            assert answer.header("www-authenticate") is None
        listing = (await hook.get("/events", headers=good)).json()
        assert listing["total"] == 1
        assert "X-Webhook-Token" not in listing["events"][0]["headers"]
        assert "t0ken-Secret" not in str(listing)
        assert hook.leaked_secrets() == []


@pytest_twisted.ensureDeferred
async def test_without_credentials_anyone_posts_and_nobody_lists(
    tmp_path: Path,
) -> None:
    async with webhook(tmp_path) as hook:
        assert (await hook.post("/", json=[{}, {}])).code == 200
        answer = await hook.get("/events")
        assert answer.code == 403
        assert "set the instance's 'credentials' parameter" in answer.json()["error"]
        assert "no credentials" in hook.messages()[0]


@pytest_twisted.ensureDeferred
async def test_the_listing_pages_with_absolute_next_urls(tmp_path: Path) -> None:
    auth = ("alice", "correct horse")
    async with webhook(tmp_path, credentials=BASIC) as hook:
        await hook.post("/", json=[{"name": str(n)} for n in range(5)], auth=auth)
        names, url = [], hook.url("/events?limit=2")
        while url is not None:
            page = (await hook.get(url, auth=auth)).json()
            names += [e["name"] for e in page["events"]]
            url = page["next"]
            assert page["total"] == 5
        assert names == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("GET", "/", "POST"),
        ("PUT", "/", "POST"),
        ("DELETE", "/events", "GET, HEAD"),
        ("POST", "/events/1", "GET, HEAD"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_other_methods_get_405_with_allow(
    tmp_path: Path, method: str, path: str, allow: str
) -> None:
    async with webhook(tmp_path, credentials=BASIC) as hook:
        answer = await hook.request(method, path, auth=("alice", "correct horse"))
        assert answer.code == 405
        assert answer.header("allow") == allow
        assert f"use {allow.replace(', ', ' or ')}" in answer.json()["error"]


@pytest.mark.parametrize(
    "path, query_error",
    [
        ("/events?limit=0", "'limit' must be a whole number from 1 to 1000, not '0'"),
        ("/events?after=-1", "'after' must be a whole number from 0, not '-1'"),
        ("/events?page=2", "Unknown query parameter(s) 'page'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_listing_queries_are_400(
    tmp_path: Path, path: str, query_error: str
) -> None:
    async with webhook(tmp_path, credentials=BASIC) as hook:
        answer = await hook.get(path, auth=("alice", "correct horse"))
        assert answer.code == 400
        assert query_error in answer.json()["error"]


@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_ids_are_404(tmp_path: Path) -> None:
    async with webhook(tmp_path, credentials=BASIC) as hook:
        auth = ("alice", "correct horse")
        assert (await hook.get("/nothing", auth=auth)).code == 404
        answer = await hook.get("/events/7", auth=auth)
        assert answer.code == 404
        assert answer.json()["error"].startswith("No event has id 7;")
        assert (await hook.get("/events/x", auth=auth)).code == 404


@pytest_twisted.ensureDeferred
async def test_bodies_over_the_limits_are_413(tmp_path: Path) -> None:
    async with webhook(tmp_path, max_body_size=100, max_events_per_request=2) as hook:
        answer = await hook.post("/", data=b"[" + b"{}," * 60 + b"{}]")
        assert answer.code == 413
        assert answer.json()["error"] == (
            "The body is 184 bytes; this instance accepts at most 100 bytes per "
            "request (parameter 'max_body_size')."
        )
        answer = await hook.post("/", json=[{}, {}, {}])
        assert answer.code == 413
        assert "at most 2 per request" in answer.json()["error"]
        assert (await hook.post("/", json=[{}, {}])).code == 200


@pytest_twisted.ensureDeferred
async def test_a_bad_body_is_400_and_stores_nothing(tmp_path: Path) -> None:
    async with webhook(tmp_path) as hook:
        answer = await hook.post("/", json=[{"name": "ok"}, {"name": ["no"]}])
        assert answer.code == 400
        assert answer.json() == {
            "error": "Event 2: 'name' must be a string, not a list."
        }
        assert EventLog(hook.state_dir / "events.sqlite3").count() == 0


@pytest_twisted.ensureDeferred
async def test_events_survive_a_restart(tmp_path: Path) -> None:
    async with webhook(tmp_path, credentials=TOKEN) as hook:
        await hook.post(
            "/", json={"name": "before"}, headers={"X-Webhook-Token": "t0ken-Secret"}
        )
    async with webhook(tmp_path, credentials=TOKEN) as hook:
        await hook.post(
            "/", json={"name": "after"}, headers={"X-Webhook-Token": "t0ken-Secret"}
        )
        listing = await hook.get("/events", headers={"X-Webhook-Token": "t0ken-Secret"})
        assert [e["name"] for e in listing.json()["events"]] == ["before", "after"]


@pytest_twisted.ensureDeferred
async def test_a_store_that_cannot_be_written_is_503_and_unhealthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_module, "BUSY_TIMEOUT", 0.05)
    async with webhook(tmp_path) as hook:
        blocker = sqlite3.connect(
            hook.state_dir / "events.sqlite3", isolation_level=None
        )
        blocker.execute("BEGIN IMMEDIATE")
        try:
            answer = await hook.post("/", json={})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert answer.code == 503
        assert answer.header("retry-after") == "30"
        assert hook.health[-1].startswith("Events cannot be stored in ")
        assert "database is locked" in hook.health[-1]

        assert (await hook.post("/", json={})).code == 200
        assert hook.healthy


@pytest_twisted.ensureDeferred
async def test_the_service_drops_events_past_their_retention(tmp_path: Path) -> None:
    path = tmp_path / "instances" / "hook" / "events.sqlite3"
    log = EventLog.open(path)
    log.add([NewEvent("ancient", "", None, {})], 1_000.0, {}, None)
    async with webhook(tmp_path, retention_days=1) as hook:
        assert hook.service is not None and hook.service.running
        await hook.post("/", json={"name": "fresh"})
        dropped = "Dropped 1 event(s) older than 1 day(s)"
        await wait_until(lambda: dropped in hook.messages(), what="the pruning")
        assert log.count() == 1


def test_bad_credentials_are_refused_at_configuration(tmp_path: Path) -> None:
    from xsoar_lr.api import ParameterError

    for credentials, expected in [
        ({"identifier": "_header:Bad Name", "password": "x"}, "not a valid header"),
        ({"identifier": "", "password": "x"}, "no identifier"),
        ({"identifier": "a:b", "password": "x"}, "cannot contain ':'"),
        ({"identifier": "alice"}, "has no password"),
    ]:
        with pytest.raises(ParameterError, match=expected) as caught:
            webhook(tmp_path, credentials=credentials)
        assert str(caught.value).startswith("Instance 'hook': Parameter credentials")
