"""A small PKI for the broker's TLS: ``continuum pki init`` (issue 12, item 9).

:func:`init_pki` writes into one directory:

* ``ca.pem`` / ``ca.key`` — a self-signed CA (ECDSA P-256; kept if already there, so an
  operator may put their own CA there first and only have the broker certificate issued);
* ``broker.pem`` / ``broker.key`` — the broker's server certificate for the given host
  names and IP addresses (subjectAltName), signed by that CA.

Private keys are written with mode 0600. Mosquitto uses ``broker.pem``/``broker.key``
(``certfile``/``keyfile``); the devices site's ``tlsCa`` is ``ca.pem``, which enrolment
hands to each device so that the agent verifies the broker.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class PkiFiles:
    """Paths written (or kept) by :func:`init_pki`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    ca_created: bool


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def init_pki(directory: Path, hosts: list[str], *, days: int = 825,
             force: bool = False) -> PkiFiles:
    """Create (or reuse) the CA in ``directory`` and issue the broker's certificate.

    Args:
        directory: created if missing (mode 0700).
        hosts: DNS names and IP addresses the broker is reached at (at least one); the
            first is also the certificate's common name.
        days: validity of the broker certificate (825 days, the longest most TLS clients
            accept); a new CA is valid ten years.
        force: replace an existing broker certificate and key.

    Raises:
        ValueError: no host given; a CA key that does not match ``ca.pem``; or the broker
            certificate exists and ``force`` is false.
    """
    if not hosts:
        raise ValueError("give at least one host name or IP address for the broker")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = PkiFiles(directory / "ca.pem", directory / "ca.key", directory / "broker.pem",
                     directory / "broker.key", ca_created=False)
    if files.server_cert.exists() and not force:
        raise ValueError(f"{files.server_cert} exists; pass --force to issue a new one")
    now = dt.datetime.now(dt.UTC)
    if files.ca_cert.exists() and files.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey | RSAPrivateKey) or \
                ca_key.public_key().public_bytes(*spki) != ca_cert.public_key().public_bytes(*spki):
            raise ValueError(f"{files.ca_key} is not the private key of {files.ca_cert}")
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Continuum broker CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, key_cert_sign=True, crl_sign=True,
                       content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, encipher_only=False,
                       decipher_only=False), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        _write_key(files.ca_key, ca_key)
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        files = PkiFiles(files.ca_cert, files.ca_key, files.server_cert, files.server_key,
                         ca_created=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(files.server_key, key)
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files
