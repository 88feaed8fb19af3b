"""The HTTPS serving context: our certificate, and which client certificates we accept.

Called once by `__main__.py`. Without `--tls-cert-file` a self-signed certificate is made at
start: the kube-apiserver reaches the server through an APIService with a `caBundle` or
`insecureSkipTLSVerify`, so a throwaway certificate is as good as any when the chart does not
mount one. Client certificates are optional (tokens are fine too) and must come from the
CAs the authentication ConfigMap names; `auth.py` decides whom they identify.
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


def serving_context(client_ca_pem: str, cert_file: Path | None = None,
                    key_file: Path | None = None,
                    hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> ssl.SSLContext:
    """A TLS server context; client certificates optional, verified against `client_ca_pem`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
    else:
        cert_pem, key_pem = self_signed(hosts)
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
