"""A fault-injecting HTTP/1.1 proxy between an S3 client and a real server (real sockets, seeded faults)."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import BinaryIO, Final
from urllib.parse import urlsplit

FAULT_KINDS: Final[tuple[str, ...]] = ("500", "503", "reset", "stall", "truncate")
RULE_KINDS: Final[tuple[str, ...]] = (*FAULT_KINDS, "404")  # a rule may also make an object vanish
_S3_ERRORS: Final = {
    "404": (b"404 Not Found", "NoSuchKey", "The specified key does not exist."),
    "500": (b"500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "503": (b"503 Slow Down", "SlowDown", "Please reduce your request rate."),
}
_MAX_LINE: Final = 64 * 1024
_CLIENT_IDLE_SECONDS: Final = 60.0
_UPSTREAM_TIMEOUT: Final = 60.0


class _PeerError(Exception):
    """A peer (client or upstream) closed early or sent something that is not HTTP/1.1."""


Headers = list[tuple[str, str]]
# (method, target, headers) -> the fault for this request or None; decides instead of the seeded draw
Rule = Callable[[str, str, Headers], str | None]


def _header(headers: Headers, name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _read_line(rfile: BinaryIO) -> bytes:
    line = rfile.readline(_MAX_LINE)
    if not line.endswith(b"\n"):
        raise _PeerError("connection closed inside a line")
    return line


def _read_head(rfile: BinaryIO) -> tuple[bytes, Headers, bytes] | None:
    """Start line, parsed headers and the raw head; None on EOF between messages."""
    first = rfile.readline(_MAX_LINE)
    while first in (b"\r\n", b"\n"):
        first = rfile.readline(_MAX_LINE)
    if not first:
        return None
    if not first.endswith(b"\n"):
        raise _PeerError("connection closed inside the start line")
    raw, headers = bytearray(first), []
    while (line := _read_line(rfile)) not in (b"\r\n", b"\n"):
        raw += line
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _PeerError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    raw += line
    return first.rstrip(b"\r\n"), headers, bytes(raw)


def _read_exact(rfile: BinaryIO, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) != size:
        raise _PeerError(f"connection closed after {len(data)} of {size} body bytes")
    return data


def _read_chunked(rfile: BinaryIO) -> bytes:
    """The raw chunked body, framing and trailers included, so it can be forwarded verbatim."""
    raw = bytearray()
    while True:
        line = _read_line(rfile)
        raw += line
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        raw += _read_exact(rfile, size + 2)
    while (line := _read_line(rfile)) not in (b"\r\n", b"\n"):
        raw += line
    return bytes(raw + line)


def _read_body(rfile: BinaryIO, headers: Headers, *, until_eof: bool) -> bytes:
    if "chunked" in (_header(headers, "transfer-encoding") or "").lower():
        return _read_chunked(rfile)
    length = _header(headers, "content-length")
    if length is not None:
        return _read_exact(rfile, int(length))
    return rfile.read() if until_eof else b""


class FaultProxy:
    """Relays HTTP/1.1 to ``upstream`` and injects a seeded fault into a fraction ``rate`` of requests."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.25,
        seed: int = 1,
        kinds: Iterable[str] = FAULT_KINDS,
        stall_seconds: float = 3.0,
        rule: Rule | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._kinds = tuple(kinds)
        if not self._kinds or set(self._kinds) - set(FAULT_KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {FAULT_KINDS}, got {self._kinds}")
        self._rate = rate
        self._rule = rule
        self._rng = random.Random(seed)
        self._stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._conns: set[socket.socket] = set()
        self.history: list[tuple[str, str | None]] = []  # (method and target, fault) of each request, in order
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._acceptor.start()

    @property
    def stats(self) -> dict[str, int]:
        """Counts: requests, forwarded, connections, one per fault kind, client_aborts, upstream_errors."""
        keys = ("requests", "forwarded", "connections", *FAULT_KINDS, "client_aborts", "upstream_errors")
        with self._lock:
            return {key: self._counts[key] for key in keys}

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._rate = rate

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(_CLIENT_IDLE_SECONDS)
            with self._lock:
                self._conns.add(conn)
                self._counts["connections"] += 1
            threading.Thread(target=self._serve, args=(conn,), name="faultproxy-conn", daemon=True).start()

    def _draw(self, start: bytes, headers: Headers) -> str | None:
        with self._lock:
            self._counts["requests"] += 1
            if self._rule is not None:
                method, _, target = start.decode("latin-1").partition(" ")
                kind = self._rule(method, target.rsplit(" ", 1)[0], headers)
                if kind is not None and kind not in RULE_KINDS:
                    raise ValueError(f"a rule returned {kind!r}, not one of {RULE_KINDS}")
            else:
                kind = self._rng.choice(self._kinds) if self._rng.random() < self._rate else None
            if kind:
                self._counts[kind] += 1
            self.history.append((start.decode("latin-1").rsplit(" ", 1)[0], kind))
            return kind

    def _serve(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        try:
            while not self._stopping.is_set() and self._serve_one(conn, rfile):
                pass
        except (_PeerError, OSError, ValueError):
            if not self._stopping.is_set():
                self._count("client_aborts")
        finally:
            with self._lock:
                self._conns.discard(conn)
            rfile.close()
            conn.close()

    def _serve_one(self, conn: socket.socket, rfile: BinaryIO) -> bool:
        """Handle one request; False when the client connection is to be closed."""
        try:
            message = _read_head(rfile)
        except TimeoutError:  # an idle keep-alive connection, not an abort
            return False
        if message is None:
            return False
        start, headers, _ = message
        method, _, rest = start.partition(b" ")
        if (_header(headers, "expect") or "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            headers = [(k, v) for k, v in headers if k.lower() != "expect"]
        body = _read_body(rfile, headers, until_eof=False)
        keep_alive = rest.endswith(b"HTTP/1.1") and (_header(headers, "connection") or "").lower() != "close"

        fault = self._draw(start, headers)
        if fault in _S3_ERRORS:
            status, code, text = _S3_ERRORS[fault]
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{text}</Message><RequestId>faultproxy</RequestId></Error>"
            ).encode()
            payload = b"" if method == b"HEAD" else xml
            conn.sendall(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\n"
                b"Content-Length: %d\r\n\r\n" % len(payload) + payload
            )
            return keep_alive
        if fault == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if fault == "stall":
            self._stopping.wait(self._stall_seconds)
            return False

        try:
            head, response_body, reusable = self._forward(method, start, headers, body)
        except (_PeerError, OSError, ValueError, IndexError):
            self._count("upstream_errors")
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        if fault == "truncate":
            # The server has acted; the client loses part of the answer. Without a body, cut inside the status
            # line: http.client takes EOF among the headers for their end and would report a bodiless success.
            conn.sendall(head + response_body[: len(response_body) // 2] if response_body else head[:6])  # "HTTP/1"
            return False
        conn.sendall(head + response_body)
        return keep_alive and reusable

    def _forward(self, method: bytes, start: bytes, headers: Headers, body: bytes) -> tuple[bytes, bytes, bool]:
        """Send the request on a fresh upstream connection: raw response head, raw body, keep-alive allowed."""
        self._count("forwarded")
        request = start + b"\r\n" + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n"
        with (
            socket.create_connection(self._upstream, timeout=_UPSTREAM_TIMEOUT) as upstream,
            upstream.makefile("rb") as ufile,
        ):
            upstream.sendall(request + body)
            status = 100
            while 100 <= status < 200:  # interim responses are not relayed: the client's Expect was answered here
                message = _read_head(ufile)
                if message is None:
                    raise _PeerError("upstream closed without a response")
                status_line, response_headers, head = message
                status = int(status_line.split(b" ", 2)[1])
            reusable = (_header(response_headers, "connection") or "").lower() != "close"
            if method == b"HEAD" or status in (204, 304):
                return head, b"", reusable
            framed = (
                _header(response_headers, "content-length") is not None
                or "chunked" in (_header(response_headers, "transfer-encoding") or "").lower()
            )
            return head, _read_body(ufile, response_headers, until_eof=True), reusable and framed
