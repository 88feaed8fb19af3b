"""Delegated authentication and authorisation, as every aggregated API server performs them.

Called by `server.py` for each request. It follows k8s.io/apiserver's delegated options:
the `extension-apiserver-authentication` ConfigMap in kube-system says whom to trust.

Authentication, in order:
1. A client certificate issued by the requestheader CA with an allowed common name is the
   kube-apiserver's aggregator (front proxy): the user it has already authenticated is taken
   from the X-Remote-User / X-Remote-Group / X-Remote-Extra-* headers. The headers are ignored
   on any other request, so nobody can claim an identity by sending them.
2. A client certificate issued by the cluster's client CA: the user is its CN, groups its Os.
3. `Authorization: Bearer <token>`: a TokenReview asks the API server whose token it is.
Anything else is anonymous, which this server refuses (401).

Authorisation is a SubjectAccessReview for the request's attributes; denied -> 403.
Decisions are cached for a few seconds (as the upstream delegating authenticator and
authorizer do), so an HPA polling every 15 s costs one review per period, not per request.

Limitation: client certificates must be issued directly by a CA of the bundle (the usual
front-proxy set-up); Python 3.11's ssl module does not expose the verified chain.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from lightkube.models.authorization_v1 import ResourceAttributes
from multidict import CIMultiDictProxy

from agentpool_operator.metrics_api.apiserver import ApiServer

AUTH_CONFIGMAP_NAMESPACE = "kube-system"
AUTH_CONFIGMAP_NAME = "extension-apiserver-authentication"
CACHE_SECONDS = 10.0
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class UserInfo:
    """An authenticated identity, as the API server's SubjectAccessReview wants it."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def cache_key(self) -> tuple[object, ...]:
        return (self.name, self.uid, self.groups, tuple(sorted(self.extra.items())))


@dataclass(frozen=True)
class AuthConfig:
    """The trust settings of the ConfigMap (see `parse_auth_config`)."""

    client_cas: tuple[x509.Certificate, ...] = ()
    requestheader_cas: tuple[x509.Certificate, ...] = ()
    allowed_names: frozenset[str] = frozenset()
    username_headers: tuple[str, ...] = ()
    uid_headers: tuple[str, ...] = ()
    group_headers: tuple[str, ...] = ()
    extra_prefixes: tuple[str, ...] = ()

    def trust_bundle(self) -> str:
        """Every CA a client certificate may come from, PEM, for the TLS handshake."""
        certs = self.client_cas + self.requestheader_cas
        return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


def _json_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    parsed = json.loads(value)
    return tuple(str(item) for item in parsed or [])


def _certificates(pem: str | None) -> tuple[x509.Certificate, ...]:
    if not pem or not pem.strip():
        return ()
    return tuple(x509.load_pem_x509_certificates(pem.encode()))


def parse_auth_config(data: Mapping[str, str]) -> AuthConfig:
    """The ConfigMap's data, as the kube-apiserver writes it (lists are JSON arrays)."""
    return AuthConfig(
        client_cas=_certificates(data.get("client-ca-file")),
        requestheader_cas=_certificates(data.get("requestheader-client-ca-file")),
        allowed_names=frozenset(_json_list(data.get("requestheader-allowed-names"))),
        username_headers=_json_list(data.get("requestheader-username-headers")),
        uid_headers=_json_list(data.get("requestheader-uid-headers")),
        group_headers=_json_list(data.get("requestheader-group-headers")),
        extra_prefixes=_json_list(data.get("requestheader-extra-headers-prefix")),
    )


def _issued_by(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue  # another issuer, or not its signature
        return True
    return False


def _attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def front_proxy_user(config: AuthConfig, cert: x509.Certificate,
                     headers: CIMultiDictProxy[str]) -> UserInfo | None:
    """The user the aggregator vouches for, if `cert` is the aggregator's proxy certificate."""
    if not config.requestheader_cas or not _issued_by(cert, config.requestheader_cas):
        return None
    common_names = _attribute(cert, NameOID.COMMON_NAME)
    if config.allowed_names and not set(common_names) & config.allowed_names:
        return None
    name = next((v for h in config.username_headers for v in headers.getall(h, []) if v), "")
    if not name:
        return None
    uid = next((v for h in config.uid_headers for v in headers.getall(h, []) if v), "")
    groups = tuple(v for h in config.group_headers for v in headers.getall(h, []) if v)
    extra: dict[str, list[str]] = {}
    for header, value in headers.items():
        for prefix in config.extra_prefixes:
            if header.lower().startswith(prefix.lower()):
                key = unquote(header[len(prefix):].lower())
                extra.setdefault(key, []).append(value)
    return UserInfo(name, uid, groups, {k: tuple(v) for k, v in extra.items()})


def client_cert_user(config: AuthConfig, cert: x509.Certificate) -> UserInfo | None:
    """The user of a certificate issued by the cluster's client CA."""
    if not config.client_cas or not _issued_by(cert, config.client_cas):
        return None
    names = _attribute(cert, NameOID.COMMON_NAME)
    if not names or not names[0]:
        return None
    return UserInfo(names[0], groups=tuple(_attribute(cert, NameOID.ORGANIZATION_NAME)))


K = TypeVar("K")
V = TypeVar("V")


class _TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl, self._clock = ttl, clock
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        found = self._items.get(key)
        if found is None or found[0] <= self._clock():
            return False, None
        return True, found[1]

    def put(self, key: K, value: V) -> None:
        if len(self._items) >= _CACHE_LIMIT:
            self._items.clear()  # crude but bounded; entries live seconds anyway
        self._items[key] = (self._clock() + self._ttl, value)


class Authenticator:
    """Who sent a request (see the module docstring for the order)."""

    def __init__(self, config: AuthConfig, kube: ApiServer, ttl: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._kube = kube
        self._tokens: _TtlCache[str, UserInfo | None] = _TtlCache(ttl, clock)

    async def authenticate(self, peer_cert_der: bytes | None,
                           headers: CIMultiDictProxy[str]) -> UserInfo | None:
        """The user, or None when the request is anonymous or its credentials are invalid.
        Raises `ApiServerError` when a TokenReview cannot be made."""
        if peer_cert_der:
            cert = x509.load_der_x509_certificate(peer_cert_der)
            user = front_proxy_user(self.config, cert, headers)
            if user is None:
                user = client_cert_user(self.config, cert)
            if user is not None:
                return user
        authorization = headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return await self._token_user(token.strip())
        return None

    async def _token_user(self, token: str) -> UserInfo | None:
        # Only a digest of the token is kept in memory.
        digest = hashlib.sha256(token.encode()).hexdigest()
        hit, cached = self._tokens.get(digest)
        if hit:
            return cached
        reviewed = await self._kube.token_review(token)
        user = None
        if reviewed is not None and reviewed.get("username"):
            extra = {k: tuple(v or []) for k, v in (reviewed.get("extra") or {}).items()}
            user = UserInfo(str(reviewed["username"]), str(reviewed.get("uid") or ""),
                            tuple(reviewed.get("groups") or []), extra)
        self._tokens.put(digest, user)
        return user


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class Authorizer:
    """Whether a user may make a request: a SubjectAccessReview, cached briefly."""

    def __init__(self, kube: ApiServer, ttl: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._decisions: _TtlCache[tuple[object, ...], Decision] = _TtlCache(ttl, clock)

    async def authorize(self, user: UserInfo, *, verb: str, group: str, version: str,
                        resource: str, namespace: str) -> Decision:
        """Raises `ApiServerError` when the review cannot be made."""
        key = (*user.cache_key(), verb, group, resource, namespace)
        hit, cached = self._decisions.get(key)
        if hit and cached is not None:
            return cached
        attributes = ResourceAttributes(verb=verb, group=group, version=version,
                                        resource=resource, namespace=namespace)
        allowed, reason = await self._kube.subject_access_review(
            user.name, list(user.groups), {k: list(v) for k, v in user.extra.items()},
            user.uid, attributes)
        decision = Decision(allowed, reason)
        self._decisions.put(key, decision)
        return decision
