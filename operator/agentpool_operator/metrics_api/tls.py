"""The HTTPS serving context: our certificate, and which client certificates we accept.

Called once by `__main__.py`; `CertificateFiles` then reloads a mounted certificate when its
files change (the operator or cert-manager renews it, the kubelet updates the mounted Secret),
so new connections get the new certificate without a restart. Without `--tls-cert-file` a
self-signed certificate is made at start: the kube-apiserver reaches the server through an
APIService with a `caBundle` or `insecureSkipTLSVerify`, so a throwaway certificate is as good
as any where no certificate is mounted (development clusters). Client certificates are
optional (tokens are fine too) and must come from the CAs the authentication ConfigMap names;
`auth.py` decides whom they identify.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALIDITY = dt.timedelta(days=365)


def self_signed(hosts: Sequence[str]) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for `hosts` (DNS names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            hosts[0] if hosts else "agentpool-metrics")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def serving_context(client_ca_pem: str, self_signed_hosts: Sequence[str] | None = None
                    ) -> ssl.SSLContext:
    """A TLS server context; client certificates optional, verified against `client_ca_pem`.
    With `self_signed_hosts` it serves a throwaway self-signed certificate for them; without,
    the caller loads one (`CertificateFiles`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if self_signed_hosts is not None:
        cert_pem, key_pem = self_signed(self_signed_hosts)
        # ssl only loads key material from files: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="agentpool-metrics-") as directory:
            cert_path, key_path = Path(directory, "tls.crt"), Path(directory, "tls.key")
            cert_path.write_bytes(cert_pem)
            key_path.touch(mode=0o600)
            key_path.write_bytes(key_pem)
            context.load_cert_chain(cert_path, key_path)
    if client_ca_pem.strip():
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=client_ca_pem)
    return context


class CertificateFiles:
    """A certificate and key on disk, loaded into `context` again whenever they change."""

    def __init__(self, context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
        self._context = context
        self._cert_file = cert_file
        self._key_file = key_file
        self._loaded: tuple[bytes, bytes] | None = None

    def _read(self) -> tuple[bytes, bytes] | None:
        try:
            return self._cert_file.read_bytes(), self._key_file.read_bytes()
        except OSError:
            return None

    def reload(self) -> bool:
        """Load the files if they changed since the last load; whether something new was
        loaded. Files that are missing, half-written or do not match keep the current
        certificate (the next call tries again)."""
        found = self._read()
        if found is None or not all(found) or found == self._loaded:
            return False
        try:
            self._context.load_cert_chain(self._cert_file, self._key_file)
        except (ssl.SSLError, OSError):
            return False
        if self._read() != found:  # changed while loading: load again next time
            return False
        self._loaded = found
        return True

    @property
    def loaded(self) -> bool:
        return self._loaded is not None
