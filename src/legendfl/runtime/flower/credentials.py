"""Certificates for TLS and key pairs for SuperNode authentication, made with ``cryptography``.

What Flower 1.41 expects:

* the SuperLink serves TLS with ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``;
  SuperNodes and the ``flwr`` CLI trust ``ca.crt`` (``--root-certificates`` / ``root-certificates``);
* with ``--enable-supernode-auth`` the SuperLink admits only SuperNodes whose public key was registered
  (``flwr supernode register node-0.pub <connection>``); a SuperNode signs with its private key
  (``--auth-supernode-private-key node-0.key``). Keys are EC on NIST P-384, in OpenSSH format.

``legendfl flower credentials --out DIR --hosts HOST... --nodes N`` writes all of them. The server
certificate names every host a SuperNode will dial (an IP address or a DNS name); keep ``ca.key`` offline.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: list[tuple[Path, Path]]  # (private key, public key) per node


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_tls_certificates(out: Path, hosts: list[str], days: int = 365) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for ``hosts``; returns (ca.crt, server.pem, server.key)."""
    if not hosts:
        raise ValueError("hosts must name at least one address or DNS name of the SuperLink")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legendfl federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    raw = serialization.PrivateFormat.TraditionalOpenSSL
    _write(out / "ca.key", ca_key.private_bytes(pem, raw, serialization.NoEncryption()), private=True)
    return (_write(out / "ca.crt", ca.public_bytes(pem)), _write(out / "server.pem", cert.public_bytes(pem)),
            _write(out / "server.key", key.private_bytes(pem, raw, serialization.NoEncryption()), private=True))


def make_node_keys(out: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format for one SuperNode: (``<name>.key``, ``<name>.pub``)."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _write(out / f"{name}.key", private, private=True), _write(out / f"{name}.pub", public)


def make_credentials(out: Path, hosts: list[str], nodes: int) -> Credentials:
    """Everything a TLS federation with ``nodes`` authenticated SuperNodes needs, under ``out``."""
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    ca, cert, key = make_tls_certificates(out, hosts)
    return Credentials(ca, cert, key, [make_node_keys(out, f"node-{i}") for i in range(nodes)])
