"""The metrics API's certificates when the operator keeps them: issuance, renewal at two
thirds of a lifetime, CA rotation with the previous CA still trusted, and a keeper that writes
only what is missing or due, in the order that keeps the aggregator trusting what is served."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from agentpool_operator import certs
from agentpool_operator.certkeeper import CertKeeper, CertSettings
from agentpool_operator.metrics_api.tls import CertificateFiles, serving_context
from tests.unit.operator.kube_fakes import FakeOperatorKube

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOSTS = ("api", "api.ns", "api.ns.svc")
DAY = dt.timedelta(days=1)


def test_a_serving_certificate_names_the_service_and_chains_to_the_ca(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)  # the handshake checks validity against the real clock
    authority = certs.new_authority("test-ca", now)
    pair = certs.issue(authority, HOSTS, 90 * DAY, now)
    assert certs.serves(pair, authority, HOSTS, now)
    # What the aggregator does: verify the chain and the Service's DNS name.
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cadata=authority.bundle(now).decode())
    handshake(client, server, "api.ns.svc")
    other = ssl.create_default_context(cadata=certs.new_authority("x", now).bundle(now).decode())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(other, server, "api.ns.svc")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client, server, "elsewhere.ns.svc")
    names = pair.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == list(HOSTS)


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake in memory, as the aggregator would make it to `hostname`."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(to_client, to_server, server_hostname=hostname)
    s = server.wrap_bio(to_server, to_client, server_side=True)
    handshake_objects(c, s)


def handshake_objects(c: ssl.SSLObject, s: ssl.SSLObject) -> None:
    for _ in range(10):
        done = 0
        for side in (c, s):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


def test_long_service_names_fit_the_common_name_limit() -> None:
    long = "r" * 40 + "-agentpool-operator-metrics-api"
    hosts = (long, f"{long}.team-namespace", f"{long}.team-namespace.svc")
    authority = certs.new_authority(f"{long}-serving-cert-ca", T0)
    assert certs.serves(certs.issue(authority, hosts, 90 * DAY, T0), authority, hosts, T0)


def test_renewal_is_due_after_two_thirds_of_the_lifetime() -> None:
    authority = certs.new_authority("test-ca", T0)
    pair = certs.issue(authority, HOSTS, 90 * DAY, T0)
    assert certs.serves(pair, authority, HOSTS, T0 + 59 * DAY)
    assert not certs.serves(pair, authority, HOSTS, T0 + 61 * DAY)
    # Another CA, another name, a key that does not match: not usable either.
    assert not certs.serves(pair, certs.new_authority("other", T0), HOSTS, T0)
    assert not certs.serves(pair, authority, (*HOSTS, "extra"), T0)
    # A short-lived certificate too is renewed two thirds of its life after it was issued
    # (not counting the minutes it is backdated for clock skew).
    brief = certs.issue(authority, HOSTS, dt.timedelta(seconds=30), T0)
    assert certs.serves(brief, authority, HOSTS, T0 + dt.timedelta(seconds=19))
    assert not certs.serves(brief, authority, HOSTS, T0 + dt.timedelta(seconds=21))
    # A validity lowered since it was issued: replaced at once.
    assert certs.serves(pair, authority, HOSTS, T0, 90 * DAY)
    assert not certs.serves(pair, authority, HOSTS, T0, 30 * DAY)
    other = certs.issue(authority, HOSTS, 90 * DAY, T0)
    assert not certs.serves(certs.KeyPair(pair.cert_pem, other.key_pem), authority, HOSTS, T0)


def test_a_rotated_ca_keeps_the_previous_one_trusted_until_it_expires() -> None:
    old = certs.new_authority("ca", T0)
    later = T0 + 2500 * DAY
    assert not certs.authority_usable(old, later)  # past two thirds of ten years
    new = certs.new_authority("ca", later, previous=old)
    assert new.bundle(later) == new.current.cert_pem + old.current.cert_pem
    assert new.bundle(T0 + 3651 * DAY) == new.current.cert_pem


def settings(apiservice: str = "v1beta1.external.metrics.k8s.io") -> CertSettings:
    return CertSettings(namespace="ns", ca_secret="api-ca", serving_secret="api-cert",
                        hosts=HOSTS, apiservice=apiservice, validity=90 * DAY)


def decoded(kube: FakeOperatorKube, name: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in kube.secrets[("ns", name)]["data"].items()}


async def test_the_keeper_fills_empty_secrets_then_writes_nothing() -> None:
    kube = FakeOperatorKube()
    kube.apiservices["v1beta1.external.metrics.k8s.io"] = ""
    now = [T0]
    keeper = CertKeeper(kube.as_kube(), settings(), clock=lambda: now[0])
    await keeper.once()
    assert [m["kind"] for m in kube.applied] == ["Secret", "APIService", "Secret"]
    ca, served = decoded(kube, "api-ca"), decoded(kube, "api-cert")
    assert set(ca) == {"ca.crt", "ca.key"}
    assert "ca.key" not in served  # the metrics API's pods never see the CA key
    assert served["ca.crt"] == ca["ca.crt"]
    assert base64.b64decode(kube.apiservices["v1beta1.external.metrics.k8s.io"]) == ca["ca.crt"]
    writes = len(kube.applied)
    now[0] = T0 + 30 * DAY
    await keeper.once()
    assert len(kube.applied) == writes  # a steady state writes nothing


async def test_the_keeper_renews_the_serving_certificate_and_repairs_a_hand_edit() -> None:
    kube = FakeOperatorKube()
    kube.apiservices["v1beta1.external.metrics.k8s.io"] = "bm90IG91cnM="
    now = [T0]
    keeper = CertKeeper(kube.as_kube(), settings(), clock=lambda: now[0])
    await keeper.once()
    first = decoded(kube, "api-cert")["tls.crt"]
    now[0] = T0 + 61 * DAY
    await keeper.once()
    renewed = decoded(kube, "api-cert")["tls.crt"]
    assert renewed != first
    assert decoded(kube, "api-ca")["ca.crt"] in decoded(kube, "api-cert")["ca.crt"]
    kube.apiservices["v1beta1.external.metrics.k8s.io"] = "bm90IG91cnM="  # someone's edit
    await keeper.once()
    assert base64.b64decode(kube.apiservices["v1beta1.external.metrics.k8s.io"]) == \
        decoded(kube, "api-ca")["ca.crt"]
    assert decoded(kube, "api-cert")["tls.crt"] == renewed


async def test_a_ca_rotation_updates_the_bundle_before_the_serving_certificate() -> None:
    kube = FakeOperatorKube()
    kube.apiservices["v1beta1.external.metrics.k8s.io"] = ""
    now = [T0]
    keeper = CertKeeper(kube.as_kube(), settings(), clock=lambda: now[0])
    await keeper.once()
    old_ca = decoded(kube, "api-ca")["ca.crt"]
    kube.applied.clear()
    now[0] = T0 + 2500 * DAY
    await keeper.once()
    assert [m["kind"] for m in kube.applied] == ["Secret", "APIService", "Secret"]
    ca = decoded(kube, "api-ca")
    assert ca["previous-ca.crt"] == old_ca
    bundle = base64.b64decode(kube.apiservices["v1beta1.external.metrics.k8s.io"])
    assert bundle == ca["ca.crt"] + old_ca


async def test_without_an_apiservice_only_the_secrets_are_kept() -> None:
    kube = FakeOperatorKube()
    keeper = CertKeeper(kube.as_kube(), settings(apiservice=""), clock=lambda: T0)
    await keeper.once()
    assert [m["kind"] for m in kube.applied] == ["Secret", "Secret"]


def test_the_metrics_api_serves_a_renewed_certificate_without_a_restart(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    authority = certs.new_authority("ca", now)
    server = serving_context("")
    files = CertificateFiles(server, tmp_path / "tls.crt", tmp_path / "tls.key")
    assert not files.reload()  # nothing mounted yet
    assert not files.loaded
    first, second = (certs.issue(authority, HOSTS, 90 * DAY, now) for _ in range(2))
    for pair in (first, second):
        (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
        (tmp_path / "tls.key").write_bytes(pair.key_pem)
        assert files.reload()
        assert not files.reload()  # unchanged: nothing to do
        client = ssl.create_default_context(cadata=authority.bundle(now).decode())
        assert served_serial(client, server) == pair.cert.serial_number
    # A half-written renewal (a key that does not match) keeps the current certificate.
    (tmp_path / "tls.key").write_bytes(first.key_pem)
    assert not files.reload()
    client = ssl.create_default_context(cadata=authority.bundle(now).decode())
    assert served_serial(client, server) == second.cert.serial_number


def served_serial(client: ssl.SSLContext, server: ssl.SSLContext) -> int:
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(to_client, to_server, server_hostname="api.ns.svc")
    s = server.wrap_bio(to_server, to_client, server_side=True)
    handshake_objects(c, s)
    der = c.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
