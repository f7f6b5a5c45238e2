"""
Tests of a webhook instance published through a real xsoar-lr gateway (TLS
on 127.0.0.1), as XSOAR's clients reach it.
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from xsoar_lr.testing import build_instance, serve_behind_gateway

TOKEN = {"identifier": "_header:X-Webhook-Token", "password": "gw-t0ken"}
GOOD = {"X-Webhook-Token": "gw-t0ken"}


@pytest_twisted.ensureDeferred
async def test_events_posted_through_the_gateway_are_stored_and_listed(
    tmp_path: Path,
) -> None:
    async with build_instance(
        "generic-webhook", {"credentials": TOKEN}, name="My Hook", root=tmp_path
    ) as hook:
        gateway = await serve_behind_gateway(hook)

        answer = await gateway.post(
            "", json=[{"name": "one"}, {"name": "two"}], headers=GOOD
        )
        assert answer.code == 200
        assert [e["id"] for e in answer.json()] == [1, 2]

        listing = await gateway.get("/events?limit=1", headers=GOOD)
        page = listing.json()
        assert page["next"] == gateway.url("/events?after=1&limit=1")
        assert page["events"][0]["client"] == "127.0.0.1"
        assert page["events"][0]["headers"]["X-Forwarded-Prefix"] == [
            "/instance/execute/My%20Hook"
        ]
        following = (await gateway.get(page["next"], headers=GOOD)).json()
        assert [e["name"] for e in following["events"]] == ["two"]
        assert following["next"] is None


@pytest_twisted.ensureDeferred
async def test_the_gateway_relays_refusals_unchanged(tmp_path: Path) -> None:
    async with build_instance(
        "generic-webhook", {"credentials": TOKEN}, root=tmp_path
    ) as hook:
        gateway = await serve_behind_gateway(hook)
        refused = await gateway.post("/", json={}, headers={"X-Webhook-Token": "no"})
        assert (refused.code, refused.json()) == (
            401,
            {"error": "Authorization failed."},
        )
        not_allowed = await gateway.get("", headers=GOOD)
        assert (not_allowed.code, not_allowed.header("allow")) == (405, "POST")
        assert hook.leaked_secrets() == []
