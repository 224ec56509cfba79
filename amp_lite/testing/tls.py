"""Certificates for local HTTPS tests: a throwaway CA and a server certificate it signed.

`make_tls_files(folder)` writes them as PEM files; serve with `FakeAmplitude(tls=files)` and
trust with `Amplitude(..., ca_certs=files.ca_cert)` (or `SSL_CERT_FILE`). It needs the
`cryptography` package, which is imported only when it is called (invariant I6).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import ConfigError

if TYPE_CHECKING:  # cryptography loads only inside make_tls_files (I6)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    Window = tuple[datetime.datetime, datetime.datetime]

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_CA_NAME = "amp-lite test CA"
DEFAULT_VALID_DAYS = 7  # long enough for any test run, short enough to be useless if it leaks


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """PEM files: `ca_cert` is what clients trust, `cert` and `key` are what the server serves."""

    ca_cert: str
    cert: str
    key: str

    def server_context(self) -> ssl.SSLContext:
        """A server-side context serving `cert` with `key`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_tls_files(folder: str | os.PathLike[str], *, hosts: Sequence[str] = DEFAULT_HOSTS,
                   ca_name: str = DEFAULT_CA_NAME,
                   valid_days: int = DEFAULT_VALID_DAYS) -> TlsFiles:
    """Write a new CA (`ca.pem`, that CA only) and a certificate for `hosts` signed by it
    (`server.pem`, `server.key`) into `folder`. IP addresses in `hosts` become IP SANs, other
    names DNS SANs."""
    if isinstance(hosts, str) or not hosts:
        raise ConfigError(f"make_tls_files hosts: a non-empty sequence of names, got {hosts!r}")
    try:
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as exc:
        raise ConfigError("make_tls_files needs the cryptography package: "
                          "pip install cryptography") from exc
    now = datetime.datetime.now(datetime.timezone.utc)
    window = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=valid_days))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, ca_name, window)
    cert = _server_certificate(key, ca_key, ca_cert, hosts, window)
    return _write(Path(folder), ca_cert, cert, key)


def _ca_certificate(ca_key: EllipticCurvePrivateKey, ca_name: str,
                    window: Window) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(window[0]).not_valid_after(window[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        # key identifiers: required by OpenSSL's strict verification (Python 3.13's default)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _server_certificate(key: EllipticCurvePrivateKey, ca_key: EllipticCurvePrivateKey,
                        ca_cert: x509.Certificate, hosts: Sequence[str],
                        window: Window) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0]).not_valid_after(window[1])
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _write(folder: Path, ca_cert: x509.Certificate, cert: x509.Certificate,
           key: EllipticCurvePrivateKey) -> TlsFiles:
    from cryptography.hazmat.primitives import serialization

    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca_cert=str(folder / "ca.pem"), cert=str(folder / "server.pem"),
                     key=str(folder / "server.key"))
    Path(files.ca_cert).write_bytes(ca_cert.public_bytes(pem))
    Path(files.cert).write_bytes(cert.public_bytes(pem))
    Path(files.key).write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


__all__ = ["TlsFiles", "make_tls_files"]
