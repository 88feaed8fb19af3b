"""`agentpool-metrics-apiserver` / `python -m agentpool_operator.metrics_api`: run the server.

Reads the delegated-authentication ConfigMap once, then serves HTTPS (the external metrics
API) on `--secure-port` and plain HTTP (`/metrics`, `/healthz`, `/readyz`) on
`--metrics-port`, and refreshes the queue gauges, until SIGTERM or SIGINT. A certificate
from files (`--tls-cert-file`) is waited for when absent and reloaded when it changes;
`/readyz` succeeds once the API is served. Pools and their
queues come from the operator's queue directory Secret, `--queue-directory NAMESPACE/NAME`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from agent_runtime.queue.backlog import BacklogReader
from agentpool_operator import health, logs
from agentpool_operator.metrics_api.apiserver import ApiServer
from agentpool_operator.metrics_api.auth import (
    AUTH_CONFIGMAP_NAME,
    AUTH_CONFIGMAP_NAMESPACE,
    Authenticator,
    Authorizer,
    parse_auth_config,
)
from agentpool_operator.metrics_api.gauges import GaugeRefresher
from agentpool_operator.metrics_api.pools import PoolDirectory
from agentpool_operator.metrics_api.server import MetricsApi, build_app
from agentpool_operator.metrics_api.telemetry import Telemetry
from agentpool_operator.metrics_api.tls import CertificateFiles, serving_context
from agentpool_operator.queuedir import parse_reference

log = logging.getLogger("agentpool_operator.metrics_api")
RELOAD_SECONDS = 2.0
"""How often the certificate files are checked for a renewal (a read of two small files)."""


@dataclass(frozen=True)
class Settings:
    bind_address: str
    secure_port: int
    tls_cert_file: Path | None
    tls_key_file: Path | None
    tls_hosts: tuple[str, ...]
    metrics_address: str
    metrics_port: int
    """0 turns the plain-HTTP endpoint off."""
    queue_directory: tuple[str, str]
    """Namespace and name of the operator's queue directory Secret."""
    refresh_seconds: float
    """Period of the queue gauges' refresh."""
    redis_timeout: float
    log_level: str


def parse(argv: Sequence[str] | None = None) -> Settings:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="agentpool-metrics-apiserver",
        description="Serve external.metrics.k8s.io (agentpool_queue_backlog) for AgentPools "
                    "from the queue directory the operator publishes.")
    parser.add_argument("--bind-address", default="0.0.0.0")
    parser.add_argument("--secure-port", type=int, default=6443)
    parser.add_argument("--tls-cert-file", type=Path, default=None,
                        help="serving certificate; default: a self-signed one made at start")
    parser.add_argument("--tls-private-key-file", type=Path, default=None)
    parser.add_argument("--tls-host", action="append", default=None,
                        help="name or IP in the self-signed certificate (repeatable)")
    parser.add_argument("--metrics-address", default="0.0.0.0")
    parser.add_argument("--metrics-port", type=int, default=8080)
    parser.add_argument("--queue-directory", metavar="NAMESPACE/NAME",
                        default=env.get("AGENTPOOL_QUEUE_DIRECTORY", ""),
                        help="the Secret the operator publishes the served pools' queues in "
                             "(its --queue-directory); default: $AGENTPOOL_QUEUE_DIRECTORY")
    parser.add_argument("--refresh-seconds", type=float, default=10.0,
                        help="period of the queue gauges' refresh")
    parser.add_argument("--redis-timeout", type=float, default=2.0)
    parser.add_argument("--log-level", default=env.get("AGENTPOOL_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if (args.tls_cert_file is None) != (args.tls_private_key_file is None):
        parser.error("--tls-cert-file and --tls-private-key-file go together")
    try:
        directory = parse_reference(args.queue_directory)
    except ValueError as error:
        parser.error(f"--queue-directory is required: {error}")
    return Settings(
        bind_address=args.bind_address, secure_port=args.secure_port,
        tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_private_key_file,
        tls_hosts=tuple(args.tls_host or ("localhost", "127.0.0.1")),
        metrics_address=args.metrics_address, metrics_port=args.metrics_port,
        queue_directory=directory, refresh_seconds=args.refresh_seconds,
        redis_timeout=args.redis_timeout, log_level=args.log_level.upper())


async def run(settings: Settings) -> None:
    kube = ApiServer.from_environment()
    reader = BacklogReader(timeout=settings.redis_timeout)
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []
    serving = asyncio.Event()
    try:
        data = await kube.config_map(AUTH_CONFIGMAP_NAMESPACE, AUTH_CONFIGMAP_NAME)
        if data is None:
            log.warning("no %s/%s ConfigMap: only bearer tokens can authenticate",
                        AUTH_CONFIGMAP_NAMESPACE, AUTH_CONFIGMAP_NAME)
        auth_config = parse_auth_config(data or {})
        telemetry = Telemetry()
        directory = PoolDirectory(kube, *settings.queue_directory)
        api = MetricsApi(Authenticator(auth_config, kube), Authorizer(kube), directory,
                         reader, telemetry)
        if settings.metrics_port:
            # Ready once the API is served: the gauges are a side job that must not take the
            # APIService down when, say, one pool's Redis is unreachable.
            runners.append(await health.serve(
                health.build_app(telemetry.registry, live=lambda: True, ready=serving.is_set),
                settings.metrics_address, settings.metrics_port))
        context = serving_context(auth_config.trust_bundle(), None if settings.tls_cert_file
                                  else settings.tls_hosts)
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            files = CertificateFiles(context, settings.tls_cert_file, settings.tls_key_file)
            await _first_certificate(files)
            tasks.append(asyncio.create_task(_reload(files), name="certificate-reload"))
        runner = web.AppRunner(build_app(api), access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, settings.bind_address, settings.secure_port,
                          ssl_context=context).start()
        serving.set()
        gauges = GaugeRefresher(directory, reader, telemetry)
        tasks.append(asyncio.create_task(gauges.run(settings.refresh_seconds),
                                         name="queue-gauges"))
        log.info("serving external.metrics.k8s.io on %s:%d",
                 settings.bind_address, settings.secure_port)
        await _until_signalled()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in reversed(runners):
            await runner.cleanup()
        await reader.close()
        await kube.close()


async def _first_certificate(files: CertificateFiles) -> None:
    """Wait for the mounted certificate: its Secret may still be empty (the operator fills
    it seconds after it starts), and the kubelet then brings the files."""
    waited = False
    while not files.reload():
        if not waited:
            log.info("waiting for the serving certificate files")
            waited = True
        await asyncio.sleep(RELOAD_SECONDS)
    log.info("serving certificate loaded")


async def _reload(files: CertificateFiles) -> None:
    while True:
        await asyncio.sleep(RELOAD_SECONDS)
        if files.reload():
            log.info("serving certificate reloaded")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse(argv)
    logs.configure(settings.log_level)
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
