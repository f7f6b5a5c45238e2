"""
TLS material for the gateway (and for instances that serve HTTPS
themselves): loading PEM files, making a self-signed pair on first start, and
the server options (TLS 1.2 or later).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "PemPair",
    "TLSMaterialError",
    "ensure_self_signed",
    "load_pem_pair",
    "server_options",
]


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
    theirs = chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if ours != theirs:
        raise TLSMaterialError(
            f"the private key {str(key_path)!r} does not belong to the first "
            f"certificate in {str(certificate_path)!r}; the server's own "
            "certificate must come first, followed by its chain."
        )
    return PemPair(chain, key, certificate_path, key_path)


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


def server_options(pair: PemPair) -> object:
    """
    Twisted TLS server options for C{pair}: TLS 1.2 or later, the whole chain
    served, Twisted's modern cipher list.
    """
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    # pyOpenSSL takes cryptography's objects directly (its own wrappers are
    # deprecated).
    return CertificateOptions(
        privateKey=pair.key,  # type: ignore[arg-type]
        certificate=pair.chain[0],  # type: ignore[arg-type]
        extraCertChain=list(pair.chain[1:]),  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
