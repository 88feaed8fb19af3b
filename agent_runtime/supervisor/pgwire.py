"""A minimal PostgreSQL wire client for PgBouncer's admin console: log in, run one simple query,
return its rows as text.

Why not asyncpg: the admin console (database `pgbouncer`) speaks only the simple query protocol,
and asyncpg reads rows only through the extended one (its simple-protocol `execute` discards
them). What is implemented is what the console needs: protocol 3.0 start-up, SCRAM-SHA-256 (the
pods' PgBouncer uses `auth_type = scram-sha-256`), MD5 and clear-text passwords, `Query`, and
the row, error and ready messages; no TLS (loopback inside the pod), no COPY, no parameters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PROTOCOL_3 = 196608
_AUTH_OK, _AUTH_CLEARTEXT, _AUTH_MD5 = 0, 3, 5
_AUTH_SASL, _AUTH_SASL_CONTINUE, _AUTH_SASL_FINAL = 10, 11, 12


class PgWireError(Exception):
    """The server refused (its message) or the conversation broke off."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def from_url(cls, url: str) -> Target:
        """`postgresql://user:password@host:port/database` (query options are ignored)."""
        parts = urlsplit(url)
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                   user=unquote(parts.username or ""), password=unquote(parts.password or ""),
                   database=parts.path.lstrip("/") or "pgbouncer")


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _cstring(value: str) -> bytes:
    return value.encode() + b"\0"


def _error_text(body: bytes) -> str:
    fields = {part[:1]: part[1:].decode(errors="replace") for part in body.split(b"\0") if part}
    return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', 'unknown error')}"


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self) -> tuple[bytes, bytes]:
        header = await self._reader.readexactly(5)
        kind, length = header[:1], struct.unpack("!I", header[1:])[0]
        body = await self._reader.readexactly(length - 4)
        if kind == b"E":
            raise PgWireError(_error_text(body))
        return kind, body

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def login(self, target: Target) -> None:
        params = _cstring("user") + _cstring(target.user) + _cstring("database")
        params += _cstring(target.database) + b"\0"
        body = struct.pack("!I", PROTOCOL_3) + params
        await self.send(struct.pack("!I", len(body) + 4) + body)
        scram: _Scram | None = None
        while True:
            kind, body = await self.receive()
            if kind == b"Z":
                return
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, notices
            code = struct.unpack("!I", body[:4])[0]
            if code == _AUTH_CLEARTEXT:
                await self.send(_message(b"p", _cstring(target.password)))
            elif code == _AUTH_MD5:
                await self.send(_message(b"p", _cstring(_md5(target, body[4:8]))))
            elif code == _AUTH_SASL:
                if b"SCRAM-SHA-256" not in body[4:].split(b"\0"):
                    raise PgWireError("the server offers no SCRAM-SHA-256")
                scram = _Scram(target.password)
                first = scram.client_first()
                await self.send(_message(b"p", _cstring("SCRAM-SHA-256")
                                         + struct.pack("!I", len(first)) + first))
            elif code == _AUTH_SASL_CONTINUE and scram is not None:
                await self.send(_message(b"p", scram.client_final(body[4:])))
            elif code == _AUTH_SASL_FINAL and scram is not None:
                scram.verify(body[4:])
            elif code != _AUTH_OK:
                raise PgWireError(f"unsupported authentication request {code}")

    async def query(self, sql: str) -> list[dict[str, str | None]]:
        await self.send(_message(b"Q", _cstring(sql)))
        columns: list[str] = []
        rows: list[dict[str, str | None]] = []
        failure: PgWireError | None = None
        while True:
            try:
                kind, body = await self.receive()
            except PgWireError as error:
                failure = error  # the server still ends the query with ReadyForQuery
                continue
            if kind == b"T":
                columns = _columns(body)
            elif kind == b"D":
                rows.append(dict(zip(columns, _values(body), strict=True)))
            elif kind == b"Z":
                if failure is not None:
                    raise failure
                return rows

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.send(_message(b"X", b""))
        self._writer.close()


def _columns(body: bytes) -> list[str]:
    count = struct.unpack("!H", body[:2])[0]
    names, offset = [], 2
    for _ in range(count):
        end = body.index(b"\0", offset)
        names.append(body[offset:end].decode())
        offset = end + 1 + 18  # table oid, attnum, type oid, typlen, typmod, format
    return names


def _values(body: bytes) -> list[str | None]:
    count = struct.unpack("!H", body[:2])[0]
    values: list[str | None] = []
    offset = 2
    for _ in range(count):
        length = struct.unpack("!i", body[offset:offset + 4])[0]
        offset += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[offset:offset + length].decode())
            offset += length
    return values


def _md5(target: Target, salt: bytes) -> str:
    inner = hashlib.md5((target.password + target.user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


class _Scram:
    """SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses it: the user name comes from the
    start-up message, so the client's `n=` is empty; no channel binding (`biws` = "n,,")."""

    def __init__(self, password: str) -> None:
        self._password = password.encode()
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._auth_message = b""
        self._salted = b""

    def client_first(self) -> bytes:
        return f"n,,{self._first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        fields = dict(item.split("=", 1) for item in server_first.decode().split(","))
        nonce = fields["r"]
        if not nonce.startswith(self._nonce):
            raise PgWireError("SCRAM: the server's nonce does not extend ours")
        self._salted = hashlib.pbkdf2_hmac("sha256", self._password,
                                           base64.b64decode(fields["s"]), int(fields["i"]))
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = ",".join(
            [self._first_bare, server_first.decode(), without_proof]).encode()
        client_key = _hmac(self._salted, b"Client Key")
        signature = _hmac(hashlib.sha256(client_key).digest(), self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        expected = _hmac(_hmac(self._salted, b"Server Key"), self._auth_message)
        got = server_final.decode().removeprefix("v=")
        if not hmac.compare_digest(base64.b64decode(got), expected):
            raise PgWireError("SCRAM: the server's signature is wrong")


async def simple_queries(url: str, queries: list[str], within: float = 5.0
                         ) -> list[list[dict[str, str | None]]]:
    """Log in to `url` and run each query with the simple protocol; rows as column -> text.
    Everything, from connecting to the last row, must be done `within` seconds."""
    target = Target.from_url(url)

    async def run() -> list[list[dict[str, str | None]]]:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        session = _Session(reader, writer)
        try:
            await session.login(target)
            return [await session.query(sql) for sql in queries]
        finally:
            await session.close()

    try:
        return await asyncio.wait_for(run(), within)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        raise PgWireError(f"{target.host}:{target.port}: {error!r}") from error
