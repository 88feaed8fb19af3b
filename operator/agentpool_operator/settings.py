"""The operator's settings, read once at start from the command line and environment."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentpool_operator import queuedir
from agentpool_operator.certkeeper import CertSettings
from agentpool_operator.queuedir import parse_reference

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class LeaderElection:
    """Where the Lease is, who this replica is, and client-go's three timings (seconds)."""

    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...]
    """Namespaces to watch; empty means the whole cluster."""
    resync_seconds: float
    """How often every pool is reconciled even without events (drift in unwatched children)."""
    health_port: int
    """Port of /healthz, /readyz and /metrics."""
    health_host: str
    workers: int
    """Pools reconciled concurrently."""
    stall_seconds: float
    """How long the watch may lag behind a fresh list before liveness fails."""
    log_level: str
    deletion_cost_seconds: float = 10.0
    """Period of the pod deletion-cost pass (`deletioncost.py`); 0 turns it off."""
    queue_directory: str = ""
    """`NAMESPACE/NAME` of the Secret to publish the queue directory in (`publisher.py`) for
    the metrics API server; empty: none."""
    queue_directory_key: str = queuedir.DATA_KEY
    """The key it publishes under (another release's directory: `queuedir.shared_key`)."""
    leader_election: LeaderElection | None = None
    """Elect one leader among replicas on a Lease (`leader.py`); None: run as the only one."""
    certs: CertSettings | None = None
    """Keep the metrics API's serving certificate (`certkeeper.py`); None: someone else does."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def parse(argv: Sequence[str] | None = None) -> Settings:
    env = os.environ
    parser = argparse.ArgumentParser(prog="agentpool-operator",
                                     description="Reconcile AgentPools into worker pools.")
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="watch only this namespace (repeatable); default: "
                             "$AGENTPOOL_WATCH_NAMESPACES (comma-separated) or all namespaces")
    parser.add_argument("--resync-seconds", type=float,
                        default=float(env.get("AGENTPOOL_RESYNC_SECONDS", "60")))
    parser.add_argument("--health-port", type=int,
                        default=int(env.get("AGENTPOOL_HEALTH_PORT", "8080")))
    parser.add_argument("--health-host", default=env.get("AGENTPOOL_HEALTH_HOST", "0.0.0.0"))
    parser.add_argument("--workers", type=int, default=int(env.get("AGENTPOOL_WORKERS", "8")))
    parser.add_argument("--stall-seconds", type=float,
                        default=float(env.get("AGENTPOOL_STALL_SECONDS", "180")))
    parser.add_argument("--log-level", default=env.get("AGENTPOOL_LOG_LEVEL", "INFO"))
    parser.add_argument("--deletion-cost-seconds", type=float,
                        default=float(env.get("AGENTPOOL_DELETION_COST_SECONDS", "10")),
                        help="period of the pod deletion-cost pass; 0: off")
    parser.add_argument("--queue-directory", default=env.get("AGENTPOOL_QUEUE_DIRECTORY", ""),
                        metavar="NAMESPACE/NAME",
                        help="publish each served pool's queue in this Secret for the metrics "
                             "API server (the chart creates it)")
    parser.add_argument("--queue-directory-key", default=queuedir.DATA_KEY, metavar="KEY",
                        help="the data key to publish under: another release's directory "
                             "takes queues.<namespace>.<name>.json.gz (metricsApi.shared)")
    _leader_election_arguments(parser, env)
    _cert_arguments(parser)
    args = parser.parse_args(argv)
    if args.queue_directory:
        try:
            parse_reference(args.queue_directory)
        except ValueError as error:
            parser.error(f"--queue-directory: {error}")
    if not queuedir.is_directory_key(args.queue_directory_key):
        parser.error("--queue-directory-key: want queues.json.gz or "
                     "queues.<namespace>.<name>.json.gz")
    namespaces = args.namespace or [
        n.strip() for n in env.get("AGENTPOOL_WATCH_NAMESPACES", "").split(",") if n.strip()]
    return Settings(
        namespaces=tuple(namespaces), resync_seconds=args.resync_seconds,
        health_port=args.health_port, health_host=args.health_host, workers=args.workers,
        stall_seconds=args.stall_seconds, log_level=args.log_level.upper(),
        deletion_cost_seconds=args.deletion_cost_seconds, queue_directory=args.queue_directory,
        queue_directory_key=args.queue_directory_key,
        leader_election=_leader_election(parser, args),
        certs=_certs(parser, args),
    )


def _cert_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "the metrics API's certificates (when the operator keeps them: the chart's default)")
    group.add_argument("--serving-cert", metavar="NAMESPACE/NAME", default="",
                       help="the Secret to keep the metrics API's serving certificate in "
                            "(tls.crt, tls.key, ca.crt); default: none")
    group.add_argument("--serving-cert-ca-secret", metavar="NAME", default="",
                       help="the Secret (same namespace) holding the CA that signs it")
    group.add_argument("--serving-cert-service", metavar="NAME", default="",
                       help="the metrics API's Service, whose DNS names the certificate "
                            "carries")
    group.add_argument("--serving-cert-apiservice", metavar="NAME", default="",
                       help="the APIService whose caBundle to keep equal to the CA bundle")
    group.add_argument("--serving-cert-validity-days", type=float, default=90.0,
                       help="lifetime of a serving certificate; renewed after two thirds")


def _certs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> CertSettings | None:
    if not args.serving_cert:
        return None
    try:
        namespace, name = parse_reference(args.serving_cert)
    except ValueError as error:
        parser.error(f"--serving-cert: {error}")
    if not args.serving_cert_ca_secret or not args.serving_cert_service:
        parser.error("--serving-cert needs --serving-cert-ca-secret and --serving-cert-service")
    if args.serving_cert_validity_days <= 0:
        parser.error("--serving-cert-validity-days must be positive")
    service = args.serving_cert_service
    return CertSettings(
        namespace=namespace, ca_secret=args.serving_cert_ca_secret, serving_secret=name,
        hosts=(service, f"{service}.{namespace}", f"{service}.{namespace}.svc"),
        apiservice=args.serving_cert_apiservice,
        validity=dt.timedelta(days=args.serving_cert_validity_days),
        check_seconds=min(args.resync_seconds, 60.0))


def _leader_election_arguments(parser: argparse.ArgumentParser,
                               env: Mapping[str, str]) -> None:
    group = parser.add_argument_group("leader election (several replicas, one reconciling)")
    group.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False,
                       help="reconcile only while holding the Lease below; default: off (run "
                            "a single replica)")
    group.add_argument("--leader-election-namespace",
                       default=env.get("POD_NAMESPACE") or _service_account_namespace(),
                       help="namespace of the Lease; default: $POD_NAMESPACE, or the pod's "
                            "own namespace")
    group.add_argument("--leader-election-name", default="agentpool-operator",
                       help="name of the Lease")
    group.add_argument("--leader-election-identity",
                       default=f"{env.get('POD_NAME') or socket.gethostname()}_"
                               f"{uuid.uuid4().hex[:8]}",
                       help="this replica's holderIdentity; default: $POD_NAME (or the host "
                            "name) and a random suffix")
    group.add_argument("--leader-election-lease-duration", type=float, default=15.0,
                       help="seconds a standby waits after the lease last changed before it "
                            "takes over a leader that stopped renewing")
    group.add_argument("--leader-election-renew-deadline", type=float, default=10.0,
                       help="seconds the leader keeps trying to renew before it stops")
    group.add_argument("--leader-election-retry-period", type=float, default=2.0,
                       help="seconds between tries to take or renew the lease")


def _service_account_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def _leader_election(parser: argparse.ArgumentParser,
                     args: argparse.Namespace) -> LeaderElection | None:
    if not args.leader_elect:
        return None
    election = LeaderElection(
        namespace=args.leader_election_namespace, name=args.leader_election_name,
        identity=args.leader_election_identity,
        lease_duration=args.leader_election_lease_duration,
        renew_deadline=args.leader_election_renew_deadline,
        retry_period=args.leader_election_retry_period)
    if not 0 < election.retry_period < election.renew_deadline < election.lease_duration:
        parser.error("leader election needs 0 < retry period < renew deadline < lease duration")
    return election
