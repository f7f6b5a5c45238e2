"""
The Teams bot end to end: a host runs the C{teams} integration in its own
process, and Microsoft's side (OpenID metadata, keys, token endpoint, Bot
Connector) is the local stand-in of L{test_teams_support}. Teams posts to
C{/instance/execute/<name>} with no trailing slash.
"""

from __future__ import annotations

import json

import pytest_twisted
from gateway_support import free_port, wait_until
from host_support import StartHost, start_host  # noqa: F401 (fixture)
from test_teams_support import (  # noqa: F401 (fixture)
    APP_ID,
    SECRET,
    FakeMicrosoft,
    activity,
    make_token,
    microsoft,
)


@pytest_twisted.ensureDeferred
async def test_teams_is_reached_through_the_gateway_without_a_trailing_slash(
    start_host: StartHost, microsoft: FakeMicrosoft
) -> None:
    host = await start_host(
        f"""
        server_params:
          instance.execute.external.Teams Bot: true
        instances:
          - name: Teams Bot
            integration: teams
            port: {free_port()}
            params:
              bot_id: "{APP_ID}"
              bot_password: "{SECRET}"
              openid_metadata_url: "{microsoft.base}/openid"
              token_url: "{microsoft.base}/{{tenant}}/oauth2/v2.0/token"
              service_url: "{microsoft.service_url}"
        """
    )
    act = activity(microsoft, text="help")
    token = make_token(service_url=act["serviceUrl"])
    code, _, _ = await host.get(
        "/instance/execute/Teams%20Bot",
        method="POST",
        data=json.dumps(act).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        },
    )
    assert code == 200
    await wait_until(lambda: bool(microsoft.sent()), what="the bot's reply")
    reply = microsoft.sent()[-1]
    assert reply["path"] == "conversations/a:personal-chat-1/activities"
    assert reply["body"]["replyToId"] == act["id"]

    # 'status' reads the host's own view of its instances.
    asked = activity(microsoft, text="status")
    code, _, _ = await host.get(
        "/instance/execute/Teams%20Bot",
        method="POST",
        data=json.dumps(asked).encode(),
        headers={
            "Authorization": f"Bearer {make_token(service_url=asked['serviceUrl'])}",
            "Content-Type": "application/json",
        },
    )
    assert code == 200
    await wait_until(
        lambda: microsoft.sent()[-1]["body"].get("replyToId") == asked["id"],
        what="the status reply",
    )
    assert "Teams Bot" in json.dumps(microsoft.sent()[-1]["body"])

    code, _, _ = await host.get(
        "/instance/execute/Teams%20Bot",
        method="POST",
        data=json.dumps(act).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert code == 401
    code, _, response = await host.get("/instance/execute/Teams%20Bot")
    assert code == 405
    assert response.headers.getRawHeaders("allow") == ["POST"]
