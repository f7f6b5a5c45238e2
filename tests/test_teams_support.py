"""
Fixtures for the Teams tests: a local stand-in for Microsoft (OpenID
metadata, key set, token endpoint and Bot Connector) on 127.0.0.1, signing
keys made here, tokens signed with them, and the bot served on a real port.

This module holds no tests; the other C{test_teams_*} modules import it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import attrs
import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from integrations.teams import PARAMETERS, check, make_bot
from integrations.teams.resource import TeamsResource
from xsoar_lr.api import InstanceContext, validate_parameters
from xsoar_lr.status import read_status
from xsoar_lr.store import IndicatorStore, store_path

APP_ID = "11111111-2222-3333-4444-555555555555"
BOT_ID = f"28:{APP_ID}"
TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ISSUER = "https://api.botframework.com"
TEAM_ID = "19:team-general@thread.tacv2"
SECRET = "s3cr3t-client-password-value"


@attrs.define
class SigningKeyPair:
    """
    An RSA key pair with the JWK Microsoft would publish for it.
    """

    kid: str
    private: Any
    endorsements: list[str]

    @classmethod
    def make(cls, kid: str, endorsements: list[str] | None = None) -> SigningKeyPair:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid, private, ["msteams"] if endorsements is None else endorsements)

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = RSAAlgorithm.to_jwk(
            self.private.public_key(), as_dict=True
        )
        data.update(kid=self.kid, use="sig", endorsements=self.endorsements)
        return data


# Key generation is slow; tests share these.
KEY_A = SigningKeyPair.make("key-a")
KEY_B = SigningKeyPair.make("key-b")
KEY_OTHER = SigningKeyPair.make("key-other")


class FakeMicrosoft(Resource):
    """
    Microsoft's endpoints the bot talks to, recording what it is asked:

     - C{GET /openid}: the OpenID metadata, naming C{/keys};
     - C{GET /keys}: the published keys;
     - C{POST /<tenant>/oauth2/v2.0/token}: client-credentials tokens;
     - C{/connector/v3/...}: the Bot Connector.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.base = ""
        self.keys: list[SigningKeyPair] = [KEY_A]
        self.key_fetches = 0
        self.metadata_status = 200
        self.token_requests: list[dict[str, Any]] = []
        self.token_lifetime = 3600
        self.token_refusal: dict[str, Any] | None = None
        self.connector_requests: list[dict[str, Any]] = []
        #: (status, headers, body) answers given before the default one.
        self.connector_script: list[tuple[int, dict[str, str], Any]] = []
        #: When set, connector POSTs wait for it before answering.
        self.connector_gate: Deferred[None] | None = None
        self.members: dict[str, list[dict[str, Any]]] = {}
        self.channels: dict[str, list[dict[str, Any]]] = {}
        self.created: list[dict[str, Any]] = []

    @property
    def service_url(self) -> str:
        return self.base + "/connector/"

    def render(self, request: Request) -> bytes | int:
        path = unquote(request.path.decode())
        if path == "/openid":
            request.setResponseCode(self.metadata_status)
            return json.dumps(
                {
                    "issuer": ISSUER,
                    "jwks_uri": self.base + "/keys",
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            ).encode()
        if path == "/keys":
            self.key_fetches += 1
            return json.dumps({"keys": [k.jwk() for k in self.keys]}).encode()
        if path.endswith("/oauth2/v2.0/token"):
            return self._token(request, path)
        if path.startswith("/connector/v3/"):
            return self._connector(request, path[len("/connector/v3/") :])
        request.setResponseCode(404)
        return b"no such thing"

    def _token(self, request: Request, path: str) -> bytes:
        assert request.content is not None
        form = {
            k.decode(): v[0].decode()
            for k, v in parse_qs(request.content.read()).items()
        }
        self.token_requests.append({"path": path, "form": form})
        if self.token_refusal is not None:
            request.setResponseCode(401)
            return json.dumps(self.token_refusal).encode()
        return json.dumps(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "access_token": f"access-{len(self.token_requests)}",
            }
        ).encode()

    def _connector(self, request: Request, path: str) -> bytes | int:
        assert request.content is not None
        raw = request.content.read()
        record = {
            "method": request.method.decode(),
            "path": path,
            "authorization": (request.getHeader(b"authorization") or b"").decode(),
            "body": json.loads(raw) if raw else None,
        }
        self.connector_requests.append(record)
        if self.connector_script:
            code, headers, body = self.connector_script.pop(0)
            request.setResponseCode(code)
            for name, value in headers.items():
                request.setHeader(name, value)
            return json.dumps(body).encode()
        parts = path.split("/")
        if request.method == b"GET":
            return json.dumps(self._read(parts)).encode()
        if path == "conversations":
            self.created.append(record["body"])
            return json.dumps({"id": f"a:personal-{len(self.created)}"}).encode()
        answer = json.dumps({"id": f"activity-{len(self.connector_requests)}"}).encode()
        if self.connector_gate is not None:
            gate = self.connector_gate

            def release(_: object) -> None:
                request.setResponseCode(201)
                request.write(answer)
                request.finish()

            gate.addCallback(release)
            return NOT_DONE_YET
        request.setResponseCode(201)
        return answer

    def _read(self, parts: list[str]) -> Any:
        if parts[0] == "teams" and parts[-1] == "conversations":
            return {"conversations": self.channels.get(parts[1], [])}
        if parts[0] == "conversations" and parts[-1] == "members":
            return self.members.get(parts[1], [])
        if parts[0] == "conversations" and parts[-2] == "members":
            for member in self.members.get(parts[1], []):
                if member["id"] == parts[-1]:
                    return member
        return {}

    def sent(self) -> list[dict[str, Any]]:
        """
        The activities the bot posted to conversations.
        """
        return [
            r
            for r in self.connector_requests
            if r["method"] == "POST" and r["path"].endswith("/activities")
        ]


def make_token(
    key: SigningKeyPair | None = None,
    *,
    service_url: str | None,
    drop: tuple[str, ...] = (),
    algorithm: str = "RS256",
    kid: str | None = None,
    **changes: Any,
) -> str:
    """
    Sign a Bot Connector token like Microsoft's, with C{changes} to its
    claims and the claims in C{drop} left out.
    """
    key = key or KEY_A
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": APP_ID,
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "serviceurl": service_url,
    }
    claims.update(changes)
    for name in drop:
        claims.pop(name, None)
    headers = {"kid": kid if kid is not None else key.kid}
    return jwt.encode(claims, key.private, algorithm=algorithm, headers=headers)


def listen(resource: Resource) -> Any:
    """
    Serve C{resource} on a free port of 127.0.0.1.
    """
    from twisted.internet import reactor

    return reactor.listenTCP(0, Site(resource), interface="127.0.0.1")


def http_client() -> Any:
    """
    A treq client that keeps no connections open after each request.
    """
    from twisted.internet import reactor

    from integrations.teams.connector import make_http_client

    return make_http_client(reactor)


@pytest.fixture
def microsoft() -> Iterator[FakeMicrosoft]:
    """
    The fake Microsoft, listening.
    """
    fake = FakeMicrosoft()
    port = listen(fake)
    fake.base = f"http://127.0.0.1:{port.getHost().port}"
    yield fake
    if fake.connector_gate is not None and not fake.connector_gate.called:
        fake.connector_gate.callback(None)
    pytest_twisted.blockon(port.stopListening())


def teams_params(microsoft: FakeMicrosoft, **changes: Any) -> dict[str, Any]:
    """
    Validated parameters of an instance that talks to C{microsoft}.
    """
    raw: dict[str, Any] = {
        "bot_id": APP_ID,
        "bot_password": SECRET,
        "openid_metadata_url": microsoft.base + "/openid",
        "token_url": microsoft.base + "/{tenant}/oauth2/v2.0/token",
        "service_url": microsoft.service_url,
        "allowed_users": [
            "analyst@example.com",
            "00000000-aaaa-0000-0000-000000000001",
        ],
    }
    raw.update(changes)
    params = validate_parameters(PARAMETERS, raw)
    assert check(params) == []
    return params


@attrs.define
class BotServer:
    """
    A Teams instance served on a real port, and how to talk to it.
    """

    microsoft: FakeMicrosoft
    state_dir: Path
    store: IndicatorStore
    bot: Any
    port: Any
    url: str

    def post(self, activity: Any, token: str | None = "default", **headers: str) -> Any:
        """
        POST an activity with a valid token (or C{token}) and return the
        response Deferred.
        """
        if token == "default":
            token = make_token(service_url=activity.get("serviceUrl"))
        sent: dict[str, list[str]] = {"Content-Type": ["application/json"]}
        if token is not None:
            sent["Authorization"] = [f"Bearer {token}"]
        for name, value in headers.items():
            sent[name] = [value]
        body = (
            activity if isinstance(activity, bytes) else json.dumps(activity).encode()
        )
        return http_client().post(self.url + "/", data=body, headers=sent)


def start_bot(
    microsoft: FakeMicrosoft,
    state_dir: Path,
    store: IndicatorStore,
    name: str = "teams",
    **changes: Any,
) -> BotServer:
    """
    Build a Teams instance over C{state_dir} and serve it.
    """
    from twisted.internet import reactor

    context = InstanceContext(
        name=name,
        integration="teams",
        params=teams_params(microsoft, **changes),
        state_dir=state_dir,
        route=f"/instance/execute/{name}",
        reactor=reactor,
        log=Logger(namespace=f"test.{name}"),
        open_store=lambda: store,
        # The host's status, as the host lays out its state folder.
        host_status=lambda: read_status(state_dir.parent.parent),
    )
    bot = make_bot(context)
    port = listen(TeamsResource(bot))
    return BotServer(
        microsoft,
        state_dir,
        store,
        bot,
        port,
        f"http://127.0.0.1:{port.getHost().port}",
    )


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """
    A host state folder, laid out as the host lays it out.
    """
    return tmp_path / "state"


@pytest.fixture
def served(microsoft: FakeMicrosoft, host_dir: Path) -> Iterator[BotServer]:
    """
    A Teams instance named C{teams}, served; stopped after the test.
    """
    store = IndicatorStore.open(store_path(host_dir))
    server = start_bot(microsoft, host_dir / "instances" / "teams", store)
    yield server
    pytest_twisted.blockon(server.bot.idle())
    pytest_twisted.blockon(server.port.stopListening())
    store.close()


def activity(
    microsoft: FakeMicrosoft, kind: str = "message", **fields: Any
) -> dict[str, Any]:
    """
    An activity as Teams sends one, in a one-to-one chat unless C{fields}
    say otherwise.
    """
    base: dict[str, Any] = {
        "type": kind,
        "id": str(uuid.uuid4()),
        "channelId": "msteams",
        "serviceUrl": microsoft.service_url,
        "from": {
            "id": "29:user-1",
            "name": "Ann Analyst",
            "aadObjectId": "00000000-aaaa-0000-0000-000000000001",
        },
        "recipient": {"id": BOT_ID, "name": "LR Bot"},
        "conversation": {
            "id": "a:personal-chat-1",
            "conversationType": "personal",
            "tenantId": TENANT,
        },
        "channelData": {"tenant": {"id": TENANT}},
    }
    base.update(fields)
    return base


def channel_activity(
    microsoft: FakeMicrosoft, text: str, **fields: Any
) -> dict[str, Any]:
    """
    A message in the General channel of the test team, mentioning the bot.
    """
    return activity(
        microsoft,
        text=f"<at>LR Bot</at> {text}",
        entities=[
            {
                "type": "mention",
                "mentioned": {"id": BOT_ID, "name": "LR Bot"},
                "text": "<at>LR Bot</at>",
            }
        ],
        conversation={
            "id": f"{TEAM_ID};messageid=1700000000000",
            "conversationType": "channel",
            "tenantId": TENANT,
        },
        channelData={
            "tenant": {"id": TENANT},
            "team": {"id": TEAM_ID, "name": "SecOps"},
            "channel": {"id": TEAM_ID},
        },
        **fields,
    )
