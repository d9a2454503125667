"""A real HTTP/1.1 upstream for the integration tests, written on raw sockets.

Nothing here hides bytes: the server reads the request head and body itself, keeps the
exact bytes it received for every request, counts every TCP connection it accepted,
and writes every response byte by hand. It is strict: a malformed request, a request
with both Content-Length and Transfer-Encoding, or a bad chunk is answered with 400,
the connection is closed, and the problem is recorded in `errors` (the test fixtures
fail a test whose upstream saw an error).

Routes (matched on the end of the path, so `proxy_pass http://up/prefix/` still hits
them; the query string is ignored for routing):

  .../bytes/N            N bytes of `body_pattern(N)`, with Content-Length
  .../chunked/N          the same N bytes, Transfer-Encoding: chunked, uneven chunk sizes
  .../status/N           status N, body "status N\\n" (none for 1xx/204/304)
  .../slow/SECONDS       sleeps, then 200 "slow ok\\n"
  .../close              200 "closing\\n" with Connection: close, then closes
  .../nolength[/N]       200 without Content-Length or chunked, body ends at close (N=100000)
  .../gated/NAME/N       Content-Length 2N: sends N bytes, waits for gate(NAME).set(), sends N more
  .../hop                200 carrying hop-by-hop response headers (and X-End-To-End: yes)
  .../cookies            200 with two Set-Cookie headers
  anything else          echo: JSON of server name, connection id, method, target,
                         version, headers (in order, as received), body length and sha256
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field

_PATTERN = bytes(range(251))  # a prime-length cycle, so any shifted byte is noticed


def body_pattern(n: int) -> bytes:
    reps = n // len(_PATTERN) + 1
    return (_PATTERN * reps)[:n]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BadRequest(Exception):
    pass


@dataclass
class Request:
    conn_id: int
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes
    raw_body: bytes
    chunked: bool

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header_all(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name: str) -> str | None:
        vals = self.header_all(name)
        if not vals:
            return None
        if len(vals) > 1:
            raise AssertionError(f"header {name!r} sent {len(vals)} times to upstream: {vals!r}")
        return vals[0]

    @property
    def raw(self) -> bytes:
        return self.raw_head + self.raw_body


@dataclass
class ConnRecord:
    conn_id: int
    peer: tuple
    received: bytearray = field(default_factory=bytearray)
    requests: int = 0
    closed: bool = False


class _Server:
    """Threaded accept loop; one thread per connection."""

    kind = "server"

    def __init__(self, name: str = "up", host: str = "127.0.0.1", port: int = 0):
        self.name = name
        self.host = host
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((host, port))
        self._lsock.listen(1024)
        self._lsock.settimeout(0.1)
        self.port = self._lsock.getsockname()[1]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.conns: list[ConnRecord] = []
        self.errors: list[str] = []
        self.allow_errors = False  # set by tests that cut requests on purpose
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"{self.kind}-{name}-accept",
                                               daemon=True)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Number of TCP connections accepted so far."""
        with self._lock:
            return len(self.conns)

    def start(self):
        self._accept_thread.start()
        return self

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                sock, peer = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with self._lock:
                rec = ConnRecord(conn_id=len(self.conns) + 1, peer=peer)
                self.conns.append(rec)
                self._socks.add(sock)
            t = threading.Thread(target=self._run_conn, args=(sock, rec), daemon=True,
                                 name=f"{self.kind}-{self.name}-conn{rec.conn_id}")
            self._threads.append(t)
            t.start()

    def _run_conn(self, sock, rec):
        try:
            self.handle(sock, rec)
        except OSError:
            pass
        except Exception as e:  # a bug in the test server is a test failure, not silence
            with self._lock:
                self.errors.append(f"conn {rec.conn_id}: {type(e).__name__}: {e}")
        finally:
            rec.closed = True
            with self._lock:
                self._socks.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def handle(self, sock, rec):
        raise NotImplementedError

    def drop_connections(self) -> int:
        """Close every open connection from the server side; returns how many."""
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks)

    def stop(self):
        self._stop.set()
        try:
            self._lsock.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._accept_thread.join(timeout=2)
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Blackhole(_Server):
    """Accepts connections, reads and discards what comes, never answers."""

    kind = "blackhole"

    def handle(self, sock, rec):
        sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return
            rec.received += data


class Slammer(_Server):
    """Accepts connections and closes them at once, without reading or answering."""

    kind = "slammer"

    def handle(self, sock, rec):
        return


class Tarpit:
    """A listening socket whose accept queue is full and never drained: a connect() to
    it gets no answer (the SYN is dropped), as with a host that does not respond."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.bind((host, 0))
        self._lsock.listen(0)
        self.port = self._lsock.getsockname()[1]
        self._fillers = []

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self):
        # fill the accept queue (backlog 0 holds one connection); probe until a connect hangs
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.3)
            try:
                s.connect((self.host, self.port))
            except (socket.timeout, BlockingIOError):
                s.close()
                return self
            self._fillers.append(s)
        raise RuntimeError("could not fill the accept queue of the tarpit")

    def stop(self):
        for s in self._fillers:
            s.close()
        self._lsock.close()


class _Reader:
    def __init__(self, sock, rec, server):
        self.sock = sock
        self.rec = rec
        self.server = server
        self.buf = bytearray()

    def fill(self) -> bool:
        data = self.sock.recv(262144)
        if not data:
            return False
        self.rec.received += data
        self.buf += data
        return True

    def read_head(self, limit=65536) -> bytes | None:
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[: i + 4])
                del self.buf[: i + 4]
                return head
            if len(self.buf) > limit:
                raise BadRequest("request head too large")
            if not self.fill():
                if self.buf:
                    raise BadRequest(f"connection closed inside a request head: {bytes(self.buf[:200])!r}")
                return None

    def read_exact(self, n: int, progress=None) -> bytes:
        out = bytearray()
        while len(out) < n:
            if not self.buf:
                if not self.fill():
                    raise BadRequest(f"connection closed inside a body: got {len(out)} of {n} bytes")
            take = min(n - len(out), len(self.buf))
            out += self.buf[:take]
            del self.buf[:take]
            if progress:
                progress(take)
        return bytes(out)

    def read_line(self, limit=4096) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[: i + 2])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > limit:
                raise BadRequest("chunk line too long")
            if not self.fill():
                raise BadRequest("connection closed inside a chunked body")


_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def parse_head(head: bytes):
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise BadRequest(f"bare CR or LF in head line {line!r}")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(f"bad request line {lines[0]!r}")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise BadRequest(f"bad method {method!r}")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(f"bad version {version!r}")
    headers = []
    for line in lines[1:]:
        if b":" not in line:
            raise BadRequest(f"bad header line {line!r}")
        name, value = line.split(b":", 1)
        if not _TOKEN.match(name):
            raise BadRequest(f"bad header name {name!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return method.decode(), target.decode("latin-1"), version.decode(), headers


class Upstream(_Server):
    """The HTTP/1.1 upstream (see the module docstring for the routes)."""

    kind = "upstream"

    def __init__(self, name: str = "up", host: str = "127.0.0.1", port: int = 0):
        super().__init__(name, host, port)
        self.requests: list[Request] = []
        self.body_bytes_received = 0  # request body bytes read so far, all requests
        self._gates: dict[str, threading.Event] = {}
        self._cond = threading.Condition(self._lock)

    # -- test-facing helpers --------------------------------------------------------

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def wait_requests(self, n: int, timeout: float = 10.0) -> list[Request]:
        """Wait until the upstream has fully read `n` requests; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"upstream {self.name} saw {len(self.requests)} requests, wanted {n}"
                                         f" within {timeout}s")
                self._cond.wait(left)
            return list(self.requests)

    def last(self) -> Request:
        with self._lock:
            assert self.requests, f"upstream {self.name} received no request"
            return self.requests[-1]

    # -- serving ---------------------------------------------------------------------

    def _progress(self, n):
        with self._lock:
            self.body_bytes_received += n

    def handle(self, sock, rec):
        sock.settimeout(60)
        r = _Reader(sock, rec, self)
        while not self._stop.is_set():
            try:
                head = r.read_head()
                if head is None:
                    return
                method, target, version, headers = parse_head(head)
                body, raw_body, chunked = self._read_body(r, headers)
            except BadRequest as e:
                with self._lock:
                    self.errors.append(f"conn {rec.conn_id}: {e}")
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            req = Request(rec.conn_id, method, target, version, headers, body, head, raw_body, chunked)
            rec.requests += 1
            with self._cond:
                self.requests.append(req)
                self._cond.notify_all()
            conn_hdr = ",".join(req.header_all("Connection")).lower()
            tokens = {t.strip() for t in conn_hdr.split(",") if t.strip()}
            if version == "HTTP/1.1":
                keep = "close" not in tokens
            else:
                keep = "keep-alive" in tokens
            keep = self.respond(sock, req, keep)
            if not keep:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return

    def _read_body(self, r: _Reader, headers):
        te = [v for k, v in headers if k.lower() == "transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == "content-length"]
        if te and cl:
            raise BadRequest(f"both Transfer-Encoding {te!r} and Content-Length {cl!r}")
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if codings != ["chunked"]:
                raise BadRequest(f"unsupported Transfer-Encoding {te!r}")
            raw = bytearray()
            body = bytearray()
            while True:
                line = r.read_line()
                raw += line
                size_s = line[:-2].split(b";", 1)[0].strip()
                if not size_s or not re.fullmatch(rb"[0-9A-Fa-f]+", size_s):
                    raise BadRequest(f"bad chunk size line {line!r}")
                size = int(size_s, 16)
                if size == 0:
                    while True:  # trailers
                        tl = r.read_line()
                        raw += tl
                        if tl == b"\r\n":
                            return bytes(body), bytes(raw), True
                data = r.read_exact(size, self._progress)
                raw += data
                body += data
                crlf = r.read_exact(2)
                raw += crlf
                if crlf != b"\r\n":
                    raise BadRequest(f"chunk data not followed by CRLF: {crlf!r}")
        if cl:
            if len(set(cl)) != 1 or not cl[0].isdigit():
                raise BadRequest(f"bad Content-Length {cl!r}")
            data = r.read_exact(int(cl[0]), self._progress)
            return data, data, False
        return b"", b"", False

    def respond(self, sock, req: Request, keep: bool) -> bool:
        path = req.path
        head_only = req.method == "HEAD"
        conn = b"keep-alive" if keep else b"close"

        def simple(status: int, body: bytes, ctype=b"text/plain", extra=b"", close=False, nobody=False):
            c = b"close" if close or not keep else conn
            h = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nX-Upstream: %s\r\n%sConnection: %s\r\n"
                 % (status, _reason(status), ctype, self.name.encode(), extra, c))
            if not nobody:
                h += b"Content-Length: %d\r\n" % len(body)
            h += b"\r\n"
            sock.sendall(h if head_only or nobody else h + body)
            return keep and not close

        m = re.search(r"(?:^|/)bytes/(\d+)$", path)
        if m:
            return simple(200, body_pattern(int(m.group(1))), b"application/octet-stream")
        m = re.search(r"(?:^|/)chunked/(\d+)$", path)
        if m:
            n = int(m.group(1))
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Upstream: %s\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: %s\r\n\r\n" % (self.name.encode(), conn))
            if head_only:
                return keep
            data = body_pattern(n)
            sizes = [1, 7, 100, 4096, 65536, 3, 250000]
            i = off = 0
            out = bytearray()
            while off < n:
                size = min(sizes[i % len(sizes)], n - off)
                out += b"%x\r\n" % size + data[off:off + size] + b"\r\n"
                off += size
                i += 1
                if len(out) > 1 << 20:
                    sock.sendall(out)
                    out = bytearray()
            out += b"0\r\n\r\n"
            sock.sendall(out)
            return keep
        m = re.search(r"(?:^|/)status/(\d+)$", path)
        if m:
            st = int(m.group(1))
            nobody = st < 200 or st in (204, 304)
            return simple(st, b"status %d\n" % st, nobody=nobody)
        m = re.search(r"(?:^|/)slow/([0-9.]+)$", path)
        if m:
            self._stop.wait(float(m.group(1)))
            return simple(200, b"slow ok\n")
        if re.search(r"(?:^|/)close$", path):
            return simple(200, b"closing\n", close=True)
        m = re.search(r"(?:^|/)nolength(?:/(\d+))?$", path)
        if m:
            n = int(m.group(1) or 100000)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Upstream: %s\r\n"
                         b"Connection: close\r\n\r\n" % self.name.encode())
            if not head_only:
                sock.sendall(body_pattern(n))
            return False
        m = re.search(r"(?:^|/)gated/(\w+)/(\d+)$", path)
        if m:
            gate = self.gate(m.group(1))
            n = int(m.group(2))
            data = body_pattern(2 * n)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Upstream: %s\r\n"
                         b"Content-Length: %d\r\nConnection: %s\r\n\r\n" % (self.name.encode(), 2 * n, conn)
                         + data[:n])
            if not gate.wait(15):
                with self._lock:
                    self.errors.append(f"gate {m.group(1)} was never opened")
                return False
            sock.sendall(data[n:])
            return keep
        if re.search(r"(?:^|/)hop$", path):
            body = b"hop\n"
            h = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Upstream: %s\r\n"
                 b"Connection: %s, X-Up-Hop\r\nKeep-Alive: timeout=30, max=100\r\nX-Up-Hop: secret\r\n"
                 b"Proxy-Connection: keep-alive\r\nUpgrade: foo/1\r\nTrailer: X-Trailer\r\nTE: trailers\r\n"
                 b"X-End-To-End: yes\r\nContent-Length: %d\r\n\r\n" % (self.name.encode(), conn, len(body)))
            sock.sendall(h if head_only else h + body)
            return keep
        if re.search(r"(?:^|/)cookies$", path):
            return simple(200, b"cookies\n", extra=b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/\r\n")
        body = json.dumps({
            "server": self.name,
            "conn": req.conn_id,
            "method": req.method,
            "target": req.target,
            "version": req.version,
            "headers": req.headers,
            "body_len": len(req.body),
            "body_sha256": sha256(req.body),
            "chunked": req.chunked,
        }).encode()
        return simple(200, body, b"application/json")


_REASONS = {200: b"OK", 201: b"Created", 204: b"No Content", 301: b"Moved Permanently", 302: b"Found",
            304: b"Not Modified", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found",
            500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
            504: b"Gateway Timeout"}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"Status")
