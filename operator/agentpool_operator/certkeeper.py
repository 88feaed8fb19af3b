"""Keeps the metrics API's serving certificate, its CA and the APIService's trust in step.

Run by `__main__.py` on the leader when `--serving-cert` is given (the chart's default
`metricsApi.tls.mode: operator`). The chart renders the two Secrets empty and the APIService
without a caBundle, so what `helm template` prints holds no key material and is the same on
every run (GitOps tools apply it again and again without rotating anything); the operator
fills them in with server-side apply, and nobody else writes those fields:

- `<ca secret>`: `ca.crt`, `ca.key` and, after a CA rotation, `previous-ca.crt`. Read by the
  operator only (the metrics API's pods never see the CA key).
- `<serving secret>`: `tls.crt`, `tls.key` (the metrics API mounts it and reloads it when the
  kubelet updates the files) and `ca.crt` (the bundle).
- the APIService's `spec.caBundle`: the bundle (`certs.Authority.bundle`).

Every `check_seconds` it reads the three and writes only what is missing, broken or due
(`certs.py`: two thirds of a certificate's life), in the order that never leaves the
aggregator distrusting what the pods serve: the CA, then the bundle, then the serving
certificate. A steady state writes nothing. RBAC: get and patch on the two Secrets by name,
and on the APIService by name.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agentpool_operator import certs
from agentpool_operator.errors import OperatorError
from agentpool_operator.instrumentation import OperatorMetrics
from agentpool_operator.k8s import Kube

log = logging.getLogger(__name__)

CA_CERT, CA_KEY, PREVIOUS_CA = "ca.crt", "ca.key", "previous-ca.crt"
TLS_CERT, TLS_KEY = "tls.crt", "tls.key"


@dataclass(frozen=True)
class CertSettings:
    namespace: str
    ca_secret: str
    serving_secret: str
    hosts: tuple[str, ...]
    """DNS names the serving certificate must carry (the metrics API's Service's)."""
    apiservice: str = ""
    """The APIService whose caBundle to keep; "" for none."""
    validity: dt.timedelta = dt.timedelta(days=90)
    check_seconds: float = 60.0


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _encoded(data: dict[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in data.items()}


class CertKeeper:
    def __init__(self, kube: Kube, settings: CertSettings,
                 clock: Callable[[], dt.datetime] = _utcnow,
                 metrics: OperatorMetrics | None = None) -> None:
        self._kube = kube
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._failing: str | None = None
        self.writes = 0

    async def run(self) -> None:
        while True:
            writes = self.writes
            try:
                await self.once()
                if self._failing is not None:
                    log.info("the metrics API's certificates are in order again")
                self._failing = None
                self._count("written" if self.writes > writes else "ok")
            except OperatorError as error:
                if str(error) != self._failing:  # once per distinct failure
                    log.warning("cannot keep the metrics API's certificates (the chart "
                                "creates their Secrets; `helm upgrade` restores them): %s",
                                error)
                self._failing = str(error)
                self._count("failed")
            except Exception:
                # A bug must not end the task: the certificates would expire unnoticed.
                log.exception("keeping the metrics API's certificates failed")
                self._count("failed")
            await asyncio.sleep(self._settings.check_seconds)

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.certificate_checks.labels(result).inc()

    async def once(self) -> None:
        now = self._clock()
        authority = await self._authority(now)
        bundle = authority.bundle(now)
        if self._settings.apiservice:
            await self._trust(bundle)
        await self._serving(authority, bundle, now)

    async def _authority(self, now: dt.datetime) -> certs.Authority:
        s = self._settings
        data = await self._kube.read_secret(s.namespace, s.ca_secret) or {}
        found = certs.Authority(certs.KeyPair(data.get(CA_CERT, "").encode(),
                                              data.get(CA_KEY, "").encode()),
                                data.get(PREVIOUS_CA, "").encode())
        if certs.authority_usable(found, now):
            return found
        rotating = bool(data.get(CA_CERT))
        fresh = certs.new_authority(f"{s.serving_secret}-ca", now,
                                    previous=found if rotating else None)
        await self._write(s.ca_secret, {CA_CERT: fresh.current.cert_pem,
                                        CA_KEY: fresh.current.key_pem,
                                        **({PREVIOUS_CA: fresh.previous_pem}
                                           if fresh.previous_pem else {})})
        log.info("%s the metrics API's CA", "rotated" if rotating else "created",
                 extra={"secret": f"{s.namespace}/{s.ca_secret}"})
        return fresh

    async def _trust(self, bundle: bytes) -> None:
        name = self._settings.apiservice
        wanted = base64.b64encode(bundle).decode()
        current = await self._kube.apiservice_ca_bundle(name)
        if current is None:
            raise OperatorError(f"the APIService {name} does not exist")
        if current != wanted:
            await self._kube.set_apiservice_ca_bundle(name, wanted)
            self.writes += 1
            log.info("set the caBundle of APIService %s", name)

    async def _serving(self, authority: certs.Authority, bundle: bytes,
                       now: dt.datetime) -> None:
        s = self._settings
        data = await self._kube.read_secret(s.namespace, s.serving_secret) or {}
        pair = certs.KeyPair(data.get(TLS_CERT, "").encode(), data.get(TLS_KEY, "").encode())
        if certs.serves(pair, authority, s.hosts, now, s.validity):
            if data.get(CA_CERT, "").encode() != bundle:
                await self._write(s.serving_secret, {TLS_CERT: pair.cert_pem,
                                                     TLS_KEY: pair.key_pem, CA_CERT: bundle})
            return
        fresh = certs.issue(authority, s.hosts, s.validity, now)
        await self._write(s.serving_secret, {TLS_CERT: fresh.cert_pem, TLS_KEY: fresh.key_pem,
                                             CA_CERT: bundle})
        log.info("issued the metrics API's serving certificate", extra={
            "secret": f"{s.namespace}/{s.serving_secret}",
            "not_after": fresh.cert.not_valid_after_utc.isoformat()})

    async def _write(self, name: str, data: dict[str, bytes]) -> None:
        await self._kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                "metadata": {"name": name, "namespace": self._settings.namespace},
                                "data": _encoded(data)})
        self.writes += 1
