"""Delegated authentication and authorisation, as an aggregated API server must do them."""

from __future__ import annotations

import json

from multidict import CIMultiDict, CIMultiDictProxy

from agentpool_operator.metrics_api.auth import (
    AuthConfig,
    Authenticator,
    Authorizer,
    UserInfo,
    client_cert_user,
    front_proxy_user,
    parse_auth_config,
)
from tests.unit.operator.metrics_api_fakes import Ca, FakeApiServer, der

CLUSTER_CA = Ca("kubernetes")
FRONT_PROXY_CA = Ca("front-proxy-ca")


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def config() -> AuthConfig:
    # The ConfigMap exactly as the kube-apiserver writes it (lists are JSON arrays).
    return parse_auth_config({
        "client-ca-file": CLUSTER_CA.pem(),
        "requestheader-client-ca-file": FRONT_PROXY_CA.pem(),
        "requestheader-allowed-names": json.dumps(["front-proxy-client"]),
        "requestheader-username-headers": json.dumps(["X-Remote-User"]),
        "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
        "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"]),
    })


def test_the_configmap_is_parsed() -> None:
    parsed = config()
    assert parsed.allowed_names == {"front-proxy-client"}
    assert parsed.username_headers == ("X-Remote-User",)
    assert [c.subject for c in parsed.requestheader_cas] == [FRONT_PROXY_CA.cert.subject]
    assert CLUSTER_CA.pem() in parsed.trust_bundle()
    assert FRONT_PROXY_CA.pem() in parsed.trust_bundle()
    assert parse_auth_config({}) == AuthConfig()


def test_the_aggregator_vouches_for_the_user_in_its_headers() -> None:
    proxy = FRONT_PROXY_CA.issue("front-proxy-client")
    user = front_proxy_user(config(), proxy, headers(
        ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        ("X-Remote-Group", "system:serviceaccounts"), ("X-Remote-Group", "system:authenticated"),
        ("X-Remote-Extra-Authentication.kubernetes.io%2fpod-name", "kcm-0"),
    ))
    assert user == UserInfo(
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        groups=("system:serviceaccounts", "system:authenticated"),
        extra={"authentication.kubernetes.io/pod-name": ("kcm-0",)})


def test_a_proxy_certificate_with_another_name_or_ca_is_not_the_aggregator() -> None:
    spoof = headers(("X-Remote-User", "system:admin"), ("X-Remote-Group", "system:masters"))
    assert front_proxy_user(config(), FRONT_PROXY_CA.issue("someone-else"), spoof) is None
    assert front_proxy_user(config(), CLUSTER_CA.issue("front-proxy-client"), spoof) is None
    # Without a user header the proxy vouches for nobody.
    assert front_proxy_user(config(), FRONT_PROXY_CA.issue("front-proxy-client"),
                            headers()) is None


def test_a_client_certificate_of_the_cluster_ca_names_its_user() -> None:
    user = client_cert_user(config(), CLUSTER_CA.issue("nobody", ("team-a", "team-b")))
    assert user == UserInfo("nobody", groups=("team-a", "team-b"))
    assert client_cert_user(config(), FRONT_PROXY_CA.issue("nobody")) is None
    assert client_cert_user(config(), Ca("stranger").issue("nobody")) is None


async def test_spoofed_headers_without_the_proxy_certificate_are_ignored() -> None:
    authenticator = Authenticator(config(), FakeApiServer().as_kube())
    spoof = headers(("X-Remote-User", "system:admin"), ("X-Remote-Group", "system:masters"))
    assert await authenticator.authenticate(None, spoof) is None
    user = await authenticator.authenticate(der(CLUSTER_CA.issue("nobody")), spoof)
    assert user == UserInfo("nobody")


async def test_bearer_tokens_are_reviewed_once_per_cache_period() -> None:
    now = [0.0]
    kube = FakeApiServer(tokens={"good": {"username": "system:serviceaccount:ns:reader",
                                     "uid": "u-1", "groups": ["system:serviceaccounts"]}})
    authenticator = Authenticator(config(), kube.as_kube(), ttl=10, clock=lambda: now[0])
    good = headers(("Authorization", "Bearer good"))
    user = await authenticator.authenticate(None, good)
    assert user == UserInfo("system:serviceaccount:ns:reader", "u-1",
                            ("system:serviceaccounts",))
    assert await authenticator.authenticate(None, good) == user
    assert await authenticator.authenticate(None, headers(("Authorization", "Bearer bad"))
                                            ) is None
    assert kube.token_reviews == 2
    now[0] = 11.0
    await authenticator.authenticate(None, good)
    assert kube.token_reviews == 3
    assert await authenticator.authenticate(None, headers(("Authorization", "Basic x"))) is None


async def test_authorisation_asks_the_api_server_and_caches_the_answer() -> None:
    now = [0.0]
    kube = FakeApiServer(allowed_users={"hpa"})
    authorizer = Authorizer(kube.as_kube(), ttl=10, clock=lambda: now[0])
    attrs = {"verb": "list", "group": "external.metrics.k8s.io", "version": "v1beta1",
             "resource": "agentpool_queue_backlog", "namespace": "agents"}
    assert (await authorizer.authorize(UserInfo("hpa"), **attrs)).allowed
    denied = await authorizer.authorize(UserInfo("nobody"), **attrs)
    assert not denied.allowed
    assert denied.reason == "no RBAC policy matched"
    await authorizer.authorize(UserInfo("hpa"), **attrs)
    assert kube.access_reviews == [("hpa", "list", "agentpool_queue_backlog", "agents"),
                                   ("nobody", "list", "agentpool_queue_backlog", "agents")]
    now[0] = 10.5
    await authorizer.authorize(UserInfo("hpa"), **attrs)
    assert len(kube.access_reviews) == 3
