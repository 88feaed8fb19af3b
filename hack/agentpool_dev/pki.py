"""Certificates and keys for the loopback test control plane.

Called by `cluster.py` once per cluster start. ECDSA P-256 keys keep generation fast (a few
milliseconds each); every certificate lives for a day because a test cluster never outlives that.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=1)
# Names the serving certificate must carry: loopback for us, the in-cluster names for clients
# that follow the `kubernetes.default.svc` convention (kube-root-ca.crt consumers).
_APISERVER_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
_APISERVER_IPS = ("127.0.0.1", "10.96.0.1")


@dataclass(frozen=True)
class Pki:
    """Paths of every PEM file the control plane components read."""

    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def ca_crt(self) -> Path:
        return self.path("ca.crt")

    @property
    def ca_key(self) -> Path:
        return self.path("ca.key")

    @property
    def apiserver_crt(self) -> Path:
        return self.path("apiserver.crt")

    @property
    def apiserver_key(self) -> Path:
        return self.path("apiserver.key")

    @property
    def admin_crt(self) -> Path:
        return self.path("admin.crt")

    @property
    def admin_key(self) -> Path:
        return self.path("admin.key")

    @property
    def sa_key(self) -> Path:
        return self.path("sa.key")

    @property
    def sa_pub(self) -> Path:
        return self.path("sa.pub")

    @property
    def front_proxy_ca_crt(self) -> Path:
        return self.path("front-proxy-ca.crt")

    @property
    def front_proxy_client_crt(self) -> Path:
        return self.path("front-proxy-client.crt")

    @property
    def front_proxy_client_key(self) -> Path:
        return self.path("front-proxy-client.key")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
             ) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    subject: x509.Name,
    *,
    server: bool,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = _builder(subject, ca_cert.subject, key.public_key()).add_extension(
        x509.ExtendedKeyUsage([usage]), critical=False
    )
    if dns or ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the test CA key is not an EC key")
    return cert, key


def issue_client(pki: Pki, user: str, groups: tuple[str, ...]) -> tuple[Path, Path]:
    """A client certificate for `user` in `groups`; returns (certificate, key) paths."""
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, user)]
        + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    )
    cert, key = _issue(_load_ca(pki), subject, server=False)
    cert_path, key_path = pki.path(f"user-{user}.crt"), pki.path(f"user-{user}.key")
    _write_cert(cert_path, cert)
    _write_key(key_path, key)
    return cert_path, key_path


def generate(directory: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Write a fresh CA, serving/client certificates and the service-account key pair.

    `extra_ips`: further addresses the API server serves on (the real nodes' bridge)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)

    ca = _make_ca("agentpool-test-ca")
    _write_cert(pki.ca_crt, ca[0])
    _write_key(pki.ca_key, ca[1])

    serving = _issue(ca, _name("kube-apiserver"), server=True, dns=_APISERVER_DNS,
                     ips=_APISERVER_IPS + extra_ips)
    _write_cert(pki.apiserver_crt, serving[0])
    _write_key(pki.apiserver_key, serving[1])

    # system:masters makes the admin identity a cluster-admin without any RBAC objects.
    admin = _issue(ca, _name("admin", "system:masters"), server=False)
    _write_cert(pki.admin_crt, admin[0])
    _write_key(pki.admin_key, admin[1])

    sa_key = _key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    # The aggregation layer authenticates itself to extension API servers with this pair.
    front_ca = _make_ca("agentpool-test-front-proxy-ca")
    _write_cert(pki.front_proxy_ca_crt, front_ca[0])
    front_client = _issue(front_ca, _name("front-proxy-client"), server=False)
    _write_cert(pki.front_proxy_client_crt, front_client[0])
    _write_key(pki.front_proxy_client_key, front_client[1])
    return pki
