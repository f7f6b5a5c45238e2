"""
Tests of the gateway's TLS over real sockets: the whole chain served (a CA,
an intermediate and a leaf made here), TLS 1.2 and 1.3 only with modern
ciphers, the certificate reloaded without a restart, and client
certificates required per route.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_support import (
    GatewayHarness,
    log_capture,
    raw_connect,
    status_of,
    wait_until,
)
from twisted.internet import reactor, threads
from twisted.internet.ssl import PrivateCertificate
from twisted.web.server import Site

from integrations.echo import EchoResource
from xsoar_lr.config import GatewayConfig, RouteConfig, load_config
from xsoar_lr.service import GatewayService
from xsoar_lr.supervisor import InstanceSupervisor
from xsoar_lr.tls import load_certificates, load_pem_pair

NOW = datetime.datetime.now(datetime.timezone.utc)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificate(
    subject: str,
    issuer: tuple[x509.Certificate, Any] | None,
    ca: bool,
    path_length: int | None = None,
    client: bool = False,
) -> tuple[x509.Certificate, Any]:
    """
    A certificate and its EC key, signed by C{issuer} (or self-signed).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    elif client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            False,
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class PKI:
    """
    A root CA, an intermediate, server leaves and a client CA, on disk.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = make_certificate("Test Root", None, ca=True)
        self.intermediate = make_certificate(
            "Test Intermediate", self.root, ca=True, path_length=0
        )
        self.root_path = folder / "root.pem"
        self.root_path.write_bytes(pem(self.root[0]))
        self.certificate_path = folder / "gateway.pem"
        self.key_path = folder / "gateway.key"
        self.leaf = self.issue_leaf()
        self.client_ca = make_certificate("Client CA", None, ca=True)
        self.client_ca_path = folder / "clients.pem"
        self.client_ca_path.write_bytes(pem(self.client_ca[0]))

    def issue_leaf(self) -> x509.Certificate:
        """
        Write a new leaf (and the intermediate after it) and its key.
        """
        leaf, key = make_certificate("localhost", self.intermediate, ca=False)
        self.key_path.write_bytes(key_pem(key))
        self.certificate_path.write_bytes(pem(leaf, self.intermediate[0]))
        return leaf

    def client(
        self, ca: tuple[x509.Certificate, Any] | None = None
    ) -> PrivateCertificate:
        certificate, key = make_certificate(
            "a client", ca or self.client_ca, ca=False, client=True
        )
        return PrivateCertificate.loadPEM(pem(certificate) + key_pem(key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest_twisted.async_yield_fixture
async def gw(pki: PKI) -> AsyncIterator[GatewayHarness]:
    pair = load_pem_pair(pki.certificate_path, pki.key_path)
    g = GatewayHarness(
        pair,
        GatewayConfig(client_ca=pki.client_ca_path),
        client_ca=load_certificates(pki.client_ca_path),
    )
    await g.add("open", Site(EchoResource("open", 200)))
    await g.add(
        "mtls",
        Site(EchoResource("mtls", 200)),
        RouteConfig(require_client_certificate=True),
    )
    await g.start()
    yield g
    await g.stop()


def handshake(
    port: int,
    cafile: Path,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ciphers: str | None = None,
) -> tuple[str, str, bytes]:
    """
    A blocking TLS handshake that trusts only C{cafile}; returns the
    version, the cipher and the server certificate (DER). Run in a thread.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    context.minimum_version = minimum
    context.maximum_version = maximum
    if ciphers:
        context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return str(tls.version()), tls.cipher()[0], der


def in_thread(*args: Any, **kwargs: Any) -> Any:
    return threads.deferToThread(handshake, *args, **kwargs)


@pytest_twisted.ensureDeferred
async def test_the_whole_chain_is_served(gw: GatewayHarness, pki: PKI) -> None:
    # The client knows only the root: it succeeds only if the gateway sends
    # the intermediate along with its own certificate.
    version, _, der = await in_thread(gw.port, pki.root_path)
    assert version == "TLSv1.3"
    assert x509.load_der_x509_certificate(der).subject == _name("localhost")


@pytest_twisted.ensureDeferred
async def test_tls_1_2_with_an_aead_cipher_is_accepted(
    gw: GatewayHarness, pki: PKI
) -> None:
    version, cipher, _ = await in_thread(
        gw.port, pki.root_path, maximum=ssl.TLSVersion.TLSv1_2
    )
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


@pytest.mark.parametrize(
    "options",
    [
        {
            "minimum": ssl.TLSVersion.TLSv1,
            "maximum": ssl.TLSVersion.TLSv1_1,
            "ciphers": "DEFAULT:@SECLEVEL=0",
        },
        {"maximum": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-ECDSA-AES128-SHA"},
        {"maximum": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-ECDSA-AES256-SHA384"},
    ],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_old_versions_and_cbc_ciphers_are_refused(
    gw: GatewayHarness, pki: PKI, options: dict[str, Any]
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await in_thread(gw.port, pki.root_path, **options)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_a_route_can_require_a_client_certificate(
    gw: GatewayHarness, pki: PKI
) -> None:
    request = (
        b"GET /instance/execute/mtls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    events, stop = log_capture()
    try:
        protocol, done = await raw_connect(gw.port, pki.root_path)
        protocol.transport.write(request)
        raw = await done
    finally:
        stop()
    assert status_of(raw) == 403
    assert b"requires a client certificate" in raw
    assert any(
        e.get("client") == "127.0.0.1" and e.get("instance") == "mtls" for e in events
    )

    protocol, done = await raw_connect(gw.port, pki.root_path, client=pki.client())
    protocol.transport.write(request)
    assert status_of(await done) == 200

    # Other routes need none.
    protocol, done = await raw_connect(gw.port, pki.root_path)
    protocol.transport.write(request.replace(b"mtls", b"open"))
    assert status_of(await done) == 200


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_a_client_certificate_from_another_authority_fails_the_handshake(
    gw: GatewayHarness, pki: PKI
) -> None:
    stranger = make_certificate("Stranger CA", None, ca=True)
    protocol, done = await raw_connect(
        gw.port, pki.root_path, client=pki.client(stranger)
    )
    protocol.transport.write(b"GET /instance/execute/open HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await done == b""


@pytest_twisted.ensureDeferred
async def test_the_gateway_serves_a_renewed_certificate_without_a_restart(
    tmp_path: Path,
) -> None:
    pki = PKI(tmp_path)
    config_path = tmp_path / "xsoar-lr.yaml"
    config_path.write_text(
        "state_dir: state\n"
        "gateway:\n"
        '  listen: "ssl:0:interface=127.0.0.1"\n'
        f"  certificate: {pki.certificate_path}\n"
        f"  private_key: {pki.key_path}\n"
    )
    config = load_config(config_path)
    service = GatewayService(config, reactor, InstanceSupervisor(reactor))
    service.tls_check_interval = 0.05
    service.privilegedStartService()
    service.startService()
    events, stop = log_capture()
    try:
        port = service.port
        assert port is not None
        _, _, first = await in_thread(port, pki.root_path)
        assert x509.load_der_x509_certificate(first) == pki.leaf

        # A file that cannot be used is refused and the old certificate kept.
        pki.certificate_path.write_text("not a certificate")
        await wait_until(
            lambda: any("not reloaded" in str(e.get("log_format")) for e in events),
            what="the refusal",
        )
        _, _, still = await in_thread(port, pki.root_path)
        assert still == first

        renewed = pki.issue_leaf()
        await wait_until(
            lambda: service.tls is not None and service.tls.pair.chain[0] == renewed,
            what="the reload",
        )
        _, _, second = await in_thread(port, pki.root_path)
        assert x509.load_der_x509_certificate(second) == renewed

        # A reload on demand (what SIGHUP does through the host) works too.
        again = pki.issue_leaf()
        assert service.reload_tls()
        _, _, third = await in_thread(port, pki.root_path)
        assert x509.load_der_x509_certificate(third) == again
    finally:
        stop()
        await service.stopService()
