"""Recording, scripted and streaming upstreams for the hostile-input suites.

- `RecordingUpstream`: the strict `Upstream` (support/upstream.py), plus a log of the raw
  bytes of every connection (also written to `log_path` when given) and helpers that
  list every request line that ever reached it, even one hidden where a strict parser
  would have stopped. The smuggling suite asserts on these.
- `ScriptedUpstream`: reads one request head (and a Content-Length body), then answers
  with raw bytes chosen by the test for that path (a callable or bytes), so a test can
  send invalid or tricky responses. Records raw bytes per connection.
- `StreamUpstream`: bulk data without holding it in memory. `GET /stream/N` sends N
  bytes of the pattern with Content-Length; `POST /sink` reads a Content-Length body,
  checks the pattern, and answers JSON {"received": n, "ok": bool}. `pause_reading` /
  `pause_sending` events stop it (for backpressure tests); `sent` / `received` count bytes.
- `NonReader`: accepts and never reads (the upstream's receive buffer fills up).
- `TunnelUpstream`: answers `Upgrade` requests with 101 and then echoes bytes (or, for
  `/source/N`, pushes N bytes and counts what the peer reads; `/sink` counts).
  Plain requests get a small 200. Counts connections.

`pattern_check(offset, data)` checks bytes at a stream offset against the pattern of
`support.upstream.body_pattern` without building the whole stream.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

from .upstream import Upstream, _Server, body_pattern

_P = 251
BLOCK = body_pattern(_P * 4177)  # ~1 MiB, a whole number of pattern cycles
_BLOCK2 = BLOCK + BLOCK


def pattern_slice(offset: int, n: int) -> bytes:
    """Bytes [offset, offset+n) of the infinite pattern; n <= len(BLOCK)."""
    o = offset % _P
    return _BLOCK2[o:o + n]


def pattern_check(offset: int, data) -> bool:
    mv = memoryview(data)
    pos = 0
    while pos < len(mv):
        n = min(len(mv) - pos, len(BLOCK))
        if mv[pos:pos + n] != pattern_slice(offset + pos, n):
            return False
        pos += n
    return True


def pattern_stream(total: int, piece: int = 1 << 20):
    """Yield the first `total` bytes of the pattern in pieces (generated, not stored)."""
    off = 0
    while off < total:
        n = min(piece, total - off, len(BLOCK))
        yield pattern_slice(off, n)
        off += n


_REQ_LINE = re.compile(rb"(?:^|\n)([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/\d\.\d\r?(?=\n)")


class RecordingUpstream(Upstream):
    kind = "recording"

    def __init__(self, name="rec", log_path=None, **kw):
        super().__init__(name, **kw)
        self.log_path = log_path

    def raw(self) -> list[bytes]:
        with self._lock:
            return [bytes(c.received) for c in self.conns]

    def total_bytes(self) -> int:
        return sum(len(r) for r in self.raw())

    def request_lines(self) -> list[tuple[bytes, bytes]]:
        """(method, target) of every line that looks like a request line, anywhere in
        what the upstream received (including inside bodies): a smuggled request shows
        up here even when the strict parser stopped before it."""
        out = []
        for data in self.raw():
            out += [(m.group(1), m.group(2)) for m in _REQ_LINE.finditer(data)]
        return out

    def dump(self) -> str:
        text = "\n".join(f"--- conn {i + 1}: {r!r}" for i, r in enumerate(self.raw()))
        if self.log_path:
            with open(self.log_path, "w") as f:
                f.write(text)
        return text


class ScriptedUpstream(_Server):
    """Answers each request with test-chosen raw bytes: `script[path]` is bytes or a
    callable (sock, head) -> bool (True = keep the connection for another request).
    A path with no script gets a small 200."""

    kind = "scripted"

    def __init__(self, name="scripted", **kw):
        super().__init__(name, **kw)
        self.script: dict = {}
        self.heads: list[bytes] = []

    def handle(self, sock, rec):
        sock.settimeout(30)
        buf = bytearray()
        while not self._stop.is_set():
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                rec.received += data
                buf += data
            i = buf.index(b"\r\n\r\n") + 4
            head = bytes(buf[:i])
            del buf[:i]
            m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
            need = int(m.group(1)) if m else 0
            while len(buf) < need:
                data = sock.recv(65536)
                if not data:
                    return
                rec.received += data
                buf += data
            del buf[:need]
            with self._lock:
                self.heads.append(head)
            path = head.split(b" ", 2)[1].decode("latin-1").split("?", 1)[0]
            action = self.script.get(path)
            if action is None:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Conn: %d\r\n\r\nok\n" % rec.conn_id)
                continue
            if callable(action):
                if not action(sock, head):
                    return
                continue
            sock.sendall(action)
            # after a scripted answer, close: the test decides what followed
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            # linger until the peer closes, so the bytes are not lost to a RST
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass
            return


class StreamUpstream(_Server):
    kind = "stream"

    def __init__(self, name="stream", **kw):
        super().__init__(name, **kw)
        self.sent = 0
        self.received = 0
        self.pause_reading = threading.Event()
        self.pause_sending = threading.Event()
        self.done = threading.Event()
        self.results: list[dict] = []

    def handle(self, sock, rec):
        sock.settimeout(120)
        buf = bytearray()
        while not self._stop.is_set():
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            i = buf.index(b"\r\n\r\n") + 4
            head = bytes(buf[:i])
            del buf[:i]
            line = head.split(b"\r\n", 1)[0].split(b" ")
            method, path = line[0], line[1].split(b"?", 1)[0]
            m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
            need = int(m.group(1)) if m else 0
            if method == b"POST" and path.endswith(b"/sink"):
                got, ok = 0, True
                if buf:
                    take = bytes(buf[:need])
                    del buf[:len(take)]
                    ok = ok and pattern_check(0, take)
                    got += len(take)
                    self.received += len(take)
                rb = bytearray(1 << 20)
                mv = memoryview(rb)
                while got < need:
                    while self.pause_reading.is_set() and not self._stop.is_set():
                        time.sleep(0.02)
                    n = sock.recv_into(mv, min(len(rb), need - got))
                    if not n:
                        return
                    if ok and not pattern_check(got, mv[:n]):
                        ok = False
                    got += n
                    self.received += n
                res = {"received": got, "ok": ok}
                self.results.append(res)
                body = json.dumps(res).encode()
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
                self.done.set()
                continue
            m = re.search(rb"/stream/(\d+)$", path)
            if m:
                total = int(m.group(1))
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % total)
                for piece in pattern_stream(total, 256 * 1024):
                    while self.pause_sending.is_set() and not self._stop.is_set():
                        time.sleep(0.02)
                    sock.sendall(piece)
                    self.sent += len(piece)
                self.done.set()
                continue
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


class NonReader(_Server):
    """Accepts connections and never reads from them (nor answers)."""

    kind = "nonreader"

    def handle(self, sock, rec):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._stop.wait(60)


class TunnelUpstream(_Server):
    """HTTP/1.1 server that accepts any Upgrade with 101, then:
    path /source/N: sends N pattern bytes (counting in `sent`), then closes;
    path /sink: reads and counts bytes into `received`;
    any other path: echoes bytes back until EOF.
    A request without Upgrade gets 200 with a JSON echo of the request head."""

    kind = "tunnel"

    def __init__(self, name="tunnel", **kw):
        super().__init__(name, **kw)
        self.sent = 0
        self.received = 0
        self.heads: list[bytes] = []
        self.tunnels_closed = 0

    def handle(self, sock, rec):
        sock.settimeout(60)
        buf = bytearray()
        while not self._stop.is_set():
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                rec.received += data
                buf += data
            i = buf.index(b"\r\n\r\n") + 4
            head = bytes(buf[:i])
            del buf[:i]
            with self._lock:
                self.heads.append(head)
            path = head.split(b" ", 2)[1]
            up = re.search(rb"(?im)^upgrade:\s*([^\r\n]*?)\s*$", head)
            if not up:
                body = json.dumps({"head": head.decode("latin-1"), "conn": rec.conn_id}).encode()
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
                continue
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n"
                         b"X-Tunnel-Conn: %d\r\n\r\n" % (up.group(1), rec.conn_id))
            try:
                m = re.search(rb"/source/(\d+)$", path)
                if m:
                    for piece in pattern_stream(int(m.group(1)), 256 * 1024):
                        sock.sendall(piece)
                        self.sent += len(piece)
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):
                        pass
                    return
                if path.endswith(b"/sink"):
                    self.received += len(buf)
                    while True:
                        data = sock.recv(1 << 20)
                        if not data:
                            return
                        self.received += len(data)
                if buf:
                    sock.sendall(bytes(buf))
                while True:
                    data = sock.recv(1 << 20)
                    if not data:
                        return
                    self.received += len(data)
                    sock.sendall(data)
            finally:
                with self._lock:
                    self.tunnels_closed += 1


def vmrss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; `.peak` in KiB."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.start_kib = vmrss_kib(pid)
        self.peak = self.start_kib
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, vmrss_kib(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(2)
        try:
            self.peak = max(self.peak, vmrss_kib(self.pid))
        except (OSError, RuntimeError):
            pass

    @property
    def growth_kib(self) -> int:
        return self.peak - self.start_kib


class Mark:
    """A point in a RecordingUpstream's history: what came after it."""

    def __init__(self, up: RecordingUpstream):
        self.up = up
        with up._lock:
            self.lengths = [len(c.received) for c in up.conns]
            self.nreq = len(up.requests)
            self.nerr = len(up.errors)

    def raw(self) -> list[bytes]:
        with self.up._lock:
            out = []
            for i, c in enumerate(self.up.conns):
                start = self.lengths[i] if i < len(self.lengths) else 0
                if len(c.received) > start:
                    out.append(bytes(c.received[start:]))
            return out

    def requests(self):
        with self.up._lock:
            return list(self.up.requests[self.nreq:])

    def errors(self):
        with self.up._lock:
            return list(self.up.errors[self.nerr:])

    def request_lines(self):
        out = []
        for data in self.raw():
            out += [(m.group(1), m.group(2)) for m in _REQ_LINE.finditer(data)]
        return out
