"""
TLS material for the gateway (and for instances that serve HTTPS
themselves): loading PEM files, making a self-signed pair on first start, the
server options (TLS 1.2 and 1.3 with forward-secret AEAD ciphers only, the
whole chain served, optional client certificates) and L{ReloadingServerTLS},
which swaps in a renewed certificate without a restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

__all__ = [
    "MODERN_TLS12_CIPHERS",
    "PemPair",
    "ReloadingServerTLS",
    "TLSMaterialError",
    "ensure_self_signed",
    "load_certificates",
    "load_pem_pair",
    "server_options",
]

#: The TLS 1.2 cipher suites the gateway accepts: ECDHE key exchange with
#: AES-GCM or ChaCha20-Poly1305 only (no CBC, no RSA key exchange, no DHE).
#: TLS 1.3's own suites are all of that kind and stay as OpenSSL offers them.
MODERN_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


class TLSMaterialError(ValueError):
    """
    A certificate or key file cannot be used; the message names the file and
    says what is wrong.
    """


@attrs.frozen
class PemPair:
    """
    A certificate chain and its private key, checked to belong together.

    :ivar chain: the certificates, the server's own first.
    :ivar key: the private key.
    :ivar certificate_path: where the chain was read from.
    :ivar key_path: where the key was read from.
    """

    chain: tuple[x509.Certificate, ...]
    key: rsa.RSAPrivateKey | object
    certificate_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        """
        The SHA-256 fingerprint of the server's certificate, as colon-separated
        hex pairs (the form browsers and C{openssl x509 -fingerprint} show).
        """
        digest = self.chain[0].fingerprint(hashes.SHA256())
        return ":".join(f"{b:02X}" for b in digest)


def load_pem_pair(certificate_path: Path, key_path: Path) -> PemPair:
    """
    Read a PEM certificate chain and its private key.

    :raises TLSMaterialError: when a file is missing or unreadable, holds no
        PEM certificate or key, or the key does not match the certificate.
    """
    try:
        chain_bytes = certificate_path.read_bytes()
    except OSError as e:
        raise TLSMaterialError(
            f"the certificate file {str(certificate_path)!r} cannot be read "
            f"({e.strerror}); check the path and its permissions."
        ) from None
    try:
        key_bytes = key_path.read_bytes()
    except OSError as e:
        raise TLSMaterialError(
            f"the private key file {str(key_path)!r} cannot be read "
            f"({e.strerror}); check the path and its permissions."
        ) from None
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_bytes))
    except ValueError:
        raise TLSMaterialError(
            f"the certificate file {str(certificate_path)!r} holds no PEM "
            "certificate; give a file that starts with "
            "'-----BEGIN CERTIFICATE-----'."
        ) from None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError):
        raise TLSMaterialError(
            f"the private key file {str(key_path)!r} holds no unencrypted PEM "
            "private key; give the key without a passphrase."
        ) from None
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = (
        chain[0]
        .public_key()
        .public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    if ours != theirs:
        raise TLSMaterialError(
            f"the private key {str(key_path)!r} does not belong to the first "
            f"certificate in {str(certificate_path)!r}; the server's own "
            "certificate must come first, followed by its chain."
        )
    return PemPair(chain, key, certificate_path, key_path)


def load_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    """
    Read a PEM file of one or more certificates, such as the authorities
    that sign client certificates.

    :raises TLSMaterialError: when the file is unreadable or holds none.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TLSMaterialError(
            f"the certificate file {str(path)!r} cannot be read ({e.strerror}); "
            "check the path and its permissions."
        ) from None
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise TLSMaterialError(
            f"the certificate file {str(path)!r} holds no PEM certificate; give "
            "a file that starts with '-----BEGIN CERTIFICATE-----'."
        ) from None


def ensure_self_signed(
    directory: Path, now: datetime.datetime | None = None
) -> tuple[PemPair, bool]:
    """
    Load the gateway's self-signed pair from C{directory}, making it first if
    it does not exist yet.

    :returns: the pair, and whether it was made just now.
    """
    certificate_path = directory / "gateway.pem"
    key_path = directory / "gateway.key"
    if certificate_path.exists() and key_path.exists():
        return load_pem_pair(certificate_path, key_path), False

    directory.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    hostname = socket.gethostname()
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostname or "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xsoar-lr self-signed"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )

    # The key is written with owner-only permissions from the start, and both
    # files are renamed into place so a crash never leaves half a pair.
    key_tmp = key_path.with_suffix(".key.tmp")
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    certificate_tmp = certificate_path.with_suffix(".pem.tmp")
    certificate_tmp.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    os.replace(key_tmp, key_path)
    os.replace(certificate_tmp, certificate_path)
    return load_pem_pair(certificate_path, key_path), True


def server_options(
    pair: PemPair, client_ca: tuple[x509.Certificate, ...] | None = None
) -> object:
    """
    Twisted TLS server options for C{pair}: TLS 1.2 and 1.3 only, ECDHE
    with AEAD ciphers only, the whole chain served.

    :param client_ca: the authorities whose client certificates are
        accepted. Clients are asked for a certificate but not made to give
        one: the gateway decides per route (an invalid certificate still
        fails the handshake).
    """
    from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

    # pyOpenSSL takes cryptography's objects directly (its own wrappers are
    # deprecated).
    verify: dict[str, Any] = {}
    if client_ca:
        from twisted.internet.ssl import Certificate

        # The trust store takes pyOpenSSL's certificate objects only.
        verify = {
            "verify": True,
            "caCerts": [
                Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)).original
                for c in client_ca
            ],
            "requireCertificate": False,
        }
    return CertificateOptions(
        privateKey=pair.key,  # type: ignore[arg-type]
        certificate=pair.chain[0],  # type: ignore[arg-type]
        extraCertChain=list(pair.chain[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(
            MODERN_TLS12_CIPHERS
        ),
        **verify,
    )


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    result = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            result.append((0, 0, 0))
        else:
            result.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingServerTLS:
    """
    The gateway's TLS: each new connection gets the context made from the
    certificate, key and client authorities as they were last read, so a
    renewed certificate is served without a restart. Connections already
    open keep the certificate they started with.

    :ivar pair: the certificate and key being served.
    """

    log = Logger()

    def __init__(
        self,
        load_pair: Any,
        client_ca_path: Path | None = None,
        watched: tuple[Path, ...] = (),
    ) -> None:
        """
        :param load_pair: a callable that reads the certificate and key and
            returns a L{PemPair} (or raises L{TLSMaterialError}).
        :param client_ca_path: the PEM file of client certificate
            authorities, if clients may present certificates.
        :param watched: the files whose change L{reload_if_changed} notices.
        :raises TLSMaterialError: when the material cannot be loaded at first.
        """
        self._load_pair = load_pair
        self.client_ca_path = client_ca_path
        self.watched = watched + ((client_ca_path,) if client_ca_path else ())
        self._signature = _signature(self.watched)
        self.pair: PemPair = load_pair()
        self._context = self._make_context(self.pair)

    def _make_context(self, pair: PemPair) -> Any:
        client_ca = (
            load_certificates(self.client_ca_path) if self.client_ca_path else None
        )
        return server_options(pair, client_ca).getContext()  # type: ignore[attr-defined]

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        """
        A TLS connection for a new client, on the current context.
        """
        from OpenSSL import SSL

        return SSL.Connection(self._context, None)

    def reload(self) -> bool:
        """
        Read the files again and serve them to new connections. A file that
        cannot be used is logged and the current material kept.

        :returns: whether the new material is now served.
        """
        self._signature = _signature(self.watched)
        try:
            pair = self._load_pair()
            context = self._make_context(pair)
        except TLSMaterialError as e:
            self.log.error(
                "Gateway certificate not reloaded, the current one stays in "
                "use: {error}",
                error=str(e),
            )
            return False
        except Exception as e:
            # OpenSSL refusing the material (an unsupported key, say) must
            # not take the gateway down either.
            self.log.error(
                "Gateway certificate not reloaded, the current one stays in "
                "use: OpenSSL refused it ({error})",
                error=str(e),
            )
            return False
        self.pair, self._context = pair, context
        self.log.info(
            "Gateway certificate reloaded; SHA-256 fingerprint {fingerprint}",
            fingerprint=pair.fingerprint,
        )
        return True

    def reload_if_changed(self) -> bool:
        """
        Reload when a watched file changed (modification time, size or inode)
        since the last load.

        :returns: whether new material is now served.
        """
        if _signature(self.watched) == self._signature:
            return False
        return self.reload()
