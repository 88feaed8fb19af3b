"""Test doubles for the metrics API server's Kubernetes adapter and the Redis reader (shared
with the operator's deletion-cost pass), and a small PKI for the authentication tests."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from lightkube.models.authorization_v1 import ResourceAttributes

from agent_runtime.queue.backlog import Backlog, BacklogError, BacklogReader
from agent_runtime.queue.keys import Keys
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.metrics_api.apiserver import ApiServer
from agentpool_operator.queuedir import QueueEntry, encode
from agentpool_operator.queues import QueueRegistry


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]
                     + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs])


@dataclass
class Ca:
    """A CA that issues client certificates."""

    name: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(self.name)).issuer_name(_name(self.name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))

    def pem(self) -> str:
        return self.cert.public_bytes(Encoding.PEM).decode()

    def issue(self, cn: str, orgs: tuple[str, ...] = ()) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        return (x509.CertificateBuilder().subject_name(_name(cn, orgs))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .sign(self.key, hashes.SHA256()))


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


SPEC: dict[str, Any] = {"image": "registry.example/agents:1", "handler": "agents.tasks:handle",
                        "queue": {"redis": {"urlSecretRef": {"name": "q", "key": "url"}}}}


def queue_entry(namespace: str, name: str, url: str, **spec: Any) -> QueueEntry:
    """A pool's queue as the operator records it (keys, autoscaling target, lease)."""
    registry = QueueRegistry()
    registry.record((namespace, name), AgentPoolSpec.model_validate({**SPEC, **spec}), url)
    return registry.entries()[(namespace, name)]


@dataclass
class FakeApiServer:
    """Answers like the API server would; records the reviews it was asked for. `queues` is
    what the operator's queue directory holds (None: its Secret does not exist)."""

    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    allowed_users: set[str] = field(default_factory=set)
    queues: dict[tuple[str, str], QueueEntry] | None = field(default_factory=dict)
    directory_reads: list[tuple[str, str]] = field(default_factory=list)
    token_reviews: int = 0
    access_reviews: list[tuple[str, str, str, str]] = field(default_factory=list)

    def as_kube(self) -> ApiServer:
        return cast(ApiServer, self)

    async def token_review(self, token: str) -> dict[str, Any] | None:
        self.token_reviews += 1
        return self.tokens.get(token)

    async def subject_access_review(self, user: str, groups: list[str],
                                    extra: dict[str, list[str]], uid: str,
                                    attributes: ResourceAttributes) -> tuple[bool, str]:
        self.access_reviews.append((user, str(attributes.verb), str(attributes.resource),
                                    str(attributes.namespace)))
        allowed = user in self.allowed_users or "system:masters" in groups
        return allowed, "" if allowed else "no RBAC policy matched"

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        self.directory_reads.append((namespace, name))
        return None if self.queues is None else encode(self.queues.values())

    def add_pool(self, namespace: str, name: str, url: str, **spec: Any) -> None:
        assert self.queues is not None
        self.queues[(namespace, name)] = queue_entry(namespace, name, url, **spec)


@dataclass
class FakeReader:
    """A BacklogReader double: backlogs by stream key, or an error (for every stream, or by
    stream key: any exception)."""

    backlogs: dict[str, Backlog] = field(default_factory=dict)
    error: str | None = None
    failing: dict[str, Exception] = field(default_factory=dict)
    reads: list[tuple[str, str]] = field(default_factory=list)

    def as_reader(self) -> BacklogReader:
        return cast(BacklogReader, self)

    async def read(self, url: str, keys: Keys, pod_window_ms: int = 30_000) -> Backlog:
        self.reads.append((url, keys.stream))
        if self.error is not None:
            raise BacklogError(self.error)
        if keys.stream in self.failing:
            raise self.failing[keys.stream]
        return self.backlogs.get(keys.stream, Backlog(0, 0))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
