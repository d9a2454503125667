"""Real clients for the integration tests: a raw-socket HTTP/1.x client with a strict
response reader (for keep-alive, pipelining and byte-level checks), and curl.

The raw reader checks what it reads: a status line `HTTP/1.x NNN reason`, CRLF line
ends, header names that are tokens, and exactly one body framing (Content-Length, or
chunked, or close-delimited). A response with both Content-Length and
Transfer-Encoding fails the test.
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass

CURL = "/usr/bin/curl"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class ProtocolError(AssertionError):
    pass


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes
    framing: str  # "length", "chunked", "close" or "none"

    def header_all(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name: str) -> str | None:
        vals = self.header_all(name)
        if not vals:
            return None
        if len(vals) > 1:
            raise AssertionError(f"response header {name!r} appears {len(vals)} times: {vals!r}")
        return vals[0]

    def has(self, name: str) -> bool:
        return bool(self.header_all(name))

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def connection_tokens(self) -> set[str]:
        return {t.strip().lower() for v in self.header_all("Connection") for t in v.split(",") if t.strip()}

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} body[{len(self.body)}]={self.body[:200]!r}>"


class Conn:
    """One client TCP connection with a buffered, strict response reader.

    Over TLS when `tls` (an ssl.SSLContext) is given, or when (host, port) belongs to a
    server started in TLS mode (support/tls.py TLS_PORTS: EDGE_TEST_TLS and the "tls"
    transport of the suites that run both ways); the handshake is done here. `self.tls`
    tells which it is."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, tls=None,
                 sni: str | None = None):
        from .tls import wrap_client_socket
        self.host = host
        self.port = port
        self.timeout = timeout
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock = wrap_client_socket(raw, host, port, sni=sni, ctx=tls)
        except BaseException:
            raw.close()
            raise
        self.tls = isinstance(self.sock, ssl.SSLSocket)
        self.buf = bytearray()
        self.eof = False

    def peek(self, n: int) -> bytes:
        """Up to n bytes the server sent, left unread (like recv(n, MSG_PEEK), which a
        TLS socket does not offer): they stay in the reader's buffer."""
        while len(self.buf) < n and self._fill():
            pass
        return bytes(self.buf[:n])

    def _readable(self, timeout: float) -> bool:
        if self.tls and self.sock.pending():
            return True
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def send_request(self, method="GET", target="/", host="localhost", headers=(), body=None,
                     version="HTTP/1.1"):
        self.send(build_request(method, target, host, headers, body, version))

    def request(self, method="GET", target="/", host="localhost", headers=(), body=None,
                version="HTTP/1.1") -> Response:
        self.send_request(method, target, host, headers, body, version)
        return self.read_response(method)

    # -- reading ---------------------------------------------------------------------

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_line(self, limit=65536) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                if not line.endswith(b"\r\n"):
                    raise ProtocolError(f"line not ended by CRLF: {line!r}")
                return line[:-2]
            if len(self.buf) > limit:
                raise ProtocolError("line too long")
            if not self._fill():
                raise ProtocolError(f"connection closed by server inside a line; got {bytes(self.buf)!r}")

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ProtocolError(f"connection closed by server inside a body: {len(self.buf)} of {n} bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_head(self):
        """Read a status line and headers. Returns (version, status, reason, headers, raw)."""
        if not self.buf and not self._fill():
            raise ProtocolError("connection closed by server before a response")
        raw = bytearray()
        line = self._read_line()
        raw += line + b"\r\n"
        m = re.fullmatch(rb"(HTTP/1\.[01]) (\d{3}) ?(.*)", line)
        if not m:
            raise ProtocolError(f"bad status line {line!r}")
        version, status, reason = m.group(1).decode(), int(m.group(2)), m.group(3).decode("latin-1")
        headers = []
        while True:
            line = self._read_line()
            raw += line + b"\r\n"
            if not line:
                break
            if b":" not in line:
                raise ProtocolError(f"bad header line {line!r}")
            name, value = line.split(b":", 1)
            name_s = name.decode("latin-1")
            if not _TOKEN.match(name_s):
                raise ProtocolError(f"bad header name {name!r}")
            headers.append((name_s, value.strip(b" \t").decode("latin-1")))
        return version, status, reason, headers, bytes(raw)

    def read_response(self, method: str = "GET") -> Response:
        """Read one full response; 1xx interim responses are skipped."""
        while True:
            version, status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and status != 101:
                continue
            break
        lower = [(k.lower(), v) for k, v in headers]
        te = [v for k, v in lower if k == "transfer-encoding"]
        cl = [v for k, v in lower if k == "content-length"]
        if te and cl:
            raise ProtocolError(f"response has both Transfer-Encoding and Content-Length: {headers!r}")
        if len(cl) > 1 and len(set(cl)) > 1:
            raise ProtocolError(f"conflicting Content-Length headers {cl!r}")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(version, status, reason, headers, b"", raw, "none")
        if te:
            if [c.strip().lower() for v in te for c in v.split(",")][-1] != "chunked":
                raise ProtocolError(f"unexpected Transfer-Encoding {te!r}")
            body = bytearray()
            while True:
                line = self._read_line()
                size_s = line.split(b";", 1)[0].strip()
                if not re.fullmatch(rb"[0-9A-Fa-f]+", size_s):
                    raise ProtocolError(f"bad chunk size line {line!r}")
                size = int(size_s, 16)
                if size == 0:
                    while self._read_line():
                        pass
                    return Response(version, status, reason, headers, bytes(body), raw, "chunked")
                body += self._read_exact(size)
                if self._read_exact(2) != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
        if cl:
            if not cl[0].isdigit():
                raise ProtocolError(f"bad Content-Length {cl[0]!r}")
            body = self._read_exact(int(cl[0]))
            return Response(version, status, reason, headers, body, raw, "length")
        # close-delimited
        while self._fill():
            pass
        body = bytes(self.buf)
        self.buf.clear()
        return Response(version, status, reason, headers, body, raw, "close")

    def _recv_ready(self):
        """recv once the socket is readable: the bytes, b"" at EOF or reset, or None when
        TLS had only a record without application data (it never blocks for more)."""
        if not self.tls:
            try:
                return self.sock.recv(65536)
            except ConnectionResetError:
                return b""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(65536)
        except ssl.SSLWantReadError:
            return None
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return b""
        finally:
            self.sock.settimeout(self.timeout)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (EOF or reset) within `timeout`,
        with no unread bytes left over (extra bytes fail the test)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._readable(left):
                data = self._recv_ready()
                if data is None:  # over TLS: a record that carried no data (a ticket)
                    continue
                if not data:
                    return True
                self.buf += data
                raise ProtocolError(f"unexpected bytes from server while waiting for close: {bytes(self.buf)!r}")

    def is_open(self, wait: float = 0.2) -> bool:
        """True if nothing (no EOF, no data) arrives within `wait` seconds."""
        if not self._readable(wait):
            return True
        if self.tls:
            # no MSG_PEEK over TLS: what arrives is kept in the reader's buffer
            data = self._recv_ready()
            if data is None:
                return True
            self.buf += data
            return bool(data)
        try:
            data = self.sock.recv(65536, socket.MSG_PEEK)
        except ConnectionResetError:
            return False
        return bool(data)


def build_request(method="GET", target="/", host="localhost", headers=(), body=None,
                  version="HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"]
    names = {k.lower() for k, _ in headers}
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def chunked_encode(data: bytes, sizes=(1000, 1, 65536, 17, 300000)) -> bytes:
    out = bytearray()
    off = i = 0
    while off < len(data):
        n = min(sizes[i % len(sizes)], len(data) - off)
        out += b"%x\r\n" % n + data[off:off + n] + b"\r\n"
        off += n
        i += 1
    out += b"0\r\n\r\n"
    return bytes(out)


def request(port: int, method="GET", target="/", host="localhost", headers=(), body=None,
            version="HTTP/1.1", addr="127.0.0.1", timeout=10.0) -> Response:
    """One request on a new connection."""
    with Conn(port, addr, timeout) as c:
        return c.request(method, target, host, headers, body, version)


def get(port: int, target="/", host="localhost", **kw) -> Response:
    return request(port, "GET", target, host, **kw)


# -- curl --------------------------------------------------------------------------

@dataclass
class CurlResult:
    returncode: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: str

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return vals[-1] if vals else None


def curl(url: str, *args: str, timeout: float = 30.0) -> CurlResult:
    """Run curl; parse the last response head it printed (-D -) and return the body."""
    import os
    import tempfile
    fd, body_path = tempfile.mkstemp(prefix="edge-curl-")
    os.close(fd)
    try:
        p = subprocess.run([CURL, "-sS", "--max-time", str(int(timeout)), "-D", "-", "-o", body_path,
                            *args, url], capture_output=True, timeout=timeout + 10)
        with open(body_path, "rb") as f:
            body = f.read()
    finally:
        os.unlink(body_path)
    heads = [h for h in p.stdout.split(b"\r\n\r\n") if h.startswith(b"HTTP/")]
    status, headers = 0, []
    if heads:
        lines = heads[-1].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:] if ":" in l]
    return CurlResult(p.returncode, status, headers, body, p.stderr.decode("latin-1"))
