"""The metrics API's certificates when the operator manages them (pure: no I/O, the clock is
an argument).

A CA (ten years) signs the metrics API's serving certificate (`validity`, renewed once two
thirds of it have passed); the APIService trusts the CA bundle: the current CA and, after a
CA rotation, the previous one until it expires, so a certificate from either is trusted while
the kubelet brings the new one to the pods. The CA is rotated once two thirds of its life have
passed. `certkeeper.py` stores them in two Secrets and keeps the APIService's caBundle equal
to `bundle()`; nothing here is random except new keys and serial numbers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
RENEW_AFTER = 2 / 3
"""Share of a certificate's lifetime after which it is replaced."""
BACKDATE = dt.timedelta(minutes=5)
"""Clock skew tolerated between the operator and the API server."""
COMMON_NAME_MAX = 64
"""X.509's limit; clients go by the subject alternative names anyway."""


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class Authority:
    """The current CA (with its key) and the previous one's certificate, if any."""

    current: KeyPair
    previous_pem: bytes = b""

    def bundle(self, now: dt.datetime) -> bytes:
        """What the APIService trusts: the current CA, and the previous one while it is
        valid."""
        previous = b""
        if self.previous_pem:
            try:
                old = x509.load_pem_x509_certificate(self.previous_pem)
            except ValueError:
                old = None
            if old is not None and old.not_valid_after_utc > now:
                previous = self.previous_pem
        return self.current.cert_pem + previous


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_authority(common_name: str, now: dt.datetime, previous: Authority | None = None
                  ) -> Authority:
    """A fresh CA; `previous`'s current CA stays trusted next to it (a rotation)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         common_name[:COMMON_NAME_MAX])])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
    return Authority(pair, previous.current.cert_pem if previous else b"")


def issue(authority: Authority, hosts: Sequence[str], validity: dt.timedelta,
          now: dt.datetime) -> KeyPair:
    """A serving certificate for `hosts` (DNS names), signed by the current CA."""
    ca_cert = authority.current.cert
    ca_key = serialization.load_pem_private_key(authority.current.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    key = _key()
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                    hosts[0][:COMMON_NAME_MAX])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def due(cert: x509.Certificate, now: dt.datetime) -> bool:
    """Whether two thirds of the certificate's life since it was issued have passed (its
    validity starts BACKDATE earlier, for clock skew), or it is not valid yet."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    issued = min(start + BACKDATE, end)
    return now < start or now >= issued + (end - issued) * RENEW_AFTER


def serves(pair: KeyPair, authority: Authority, hosts: Sequence[str], now: dt.datetime,
           validity: dt.timedelta | None = None) -> bool:
    """Whether `pair` can keep serving: its key matches, the current CA signed it, it names
    every host, it is not due for renewal, and (with `validity`) it was not issued for longer
    (a lowered validity takes effect at once)."""
    try:
        cert = pair.cert
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
    except ValueError:
        return False
    if key.public_key() != cert.public_key():
        return False
    ca = authority.current.cert
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if validity is not None and lifetime > validity + BACKDATE + dt.timedelta(minutes=1):
        return False
    return set(hosts) <= set(names.get_values_for_type(x509.DNSName)) and not due(cert, now)


def authority_usable(authority: Authority, now: dt.datetime) -> bool:
    """Whether the CA parses, its key matches it, and it is not due for rotation."""
    try:
        cert = authority.current.cert
        key = serialization.load_pem_private_key(authority.current.key_pem, password=None)
    except ValueError:
        return False
    return key.public_key() == cert.public_key() and not due(cert, now)
