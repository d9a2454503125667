"""A small, bounded-time load generator for the reload and upgrade tests.

    with Load(port, check=lambda body: body.startswith(b"v")) as load:
        ...reload, upgrade, kill...
    stats = load.stats          # after the with block: threads joined
    assert stats.failures == [], stats.summary()

Two kinds of client threads run until stopped (or `max_seconds`, a safety bound):

- keep-alive: `http.client.HTTPConnection`, many requests per connection;
- one-shot: a raw socket per request, `Connection: close`, read to EOF.

Every request must get a complete `200` whose body passes `check`. Anything else is a
failure, recorded with the client's local port (so a test can tell which server
process held that connection). Connection resets are also counted on their own.

One case is not a failure, and is counted as `stale`: a keep-alive connection that
already carried a request is closed by the server before any byte of the next
response arrives. That is the idle keep-alive close race every HTTP client meets (the
server closed an idle connection just as the client reused it); RFC 9110 §9.2.2 lets a
client retry an idempotent request then, and browsers and urllib3 do. The request is
retried once on a new connection; if the retry fails, that is a failure. Tests where
the server never closes idle connections assert `stale == 0` as well.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Failure:
    kind: str           # "keepalive" or "oneshot"
    local_port: int     # the client side of the connection (0 if connect failed)
    error: str
    when: float         # time.monotonic()


@dataclass
class Stats:
    ok: int = 0
    resets: int = 0                       # ECONNRESET seen on a request counted failed
    stale: int = 0                        # idle keep-alive close race, retried
    stale_events: list = field(default_factory=list)   # [(local_port, when)]
    failures: list = field(default_factory=list)       # [Failure]

    def summary(self) -> str:
        head = (f"ok={self.ok} failures={len(self.failures)} resets={self.resets} "
                f"stale={self.stale}")
        return head + "".join(f"\n  {f.kind} port {f.local_port}: {f.error}"
                              for f in self.failures[:20])


class _Stale(Exception):
    """The server closed a reused keep-alive connection before answering."""


class Load:
    def __init__(self, port: int, host: str = "127.0.0.1", path: str = "/",
                 keepalive: int = 2, oneshot: int = 2, check=None, timeout: float = 10.0,
                 pause: float = 0.0, max_seconds: float = 120.0):
        self.host, self.port, self.path = host, port, path
        self.check = check or (lambda body: True)
        self.timeout = timeout
        self.pause = pause          # sleep between requests, to leave CPU to the server
        self.deadline = time.monotonic() + max_seconds
        self.stats = Stats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._keepalive_loop, daemon=True)
                         for _ in range(keepalive)]
        self._threads += [threading.Thread(target=self._oneshot_loop, daemon=True)
                          for _ in range(oneshot)]
        self.current_ports: dict[int, int] = {}   # thread ident -> local port (keep-alive)

    # -- control ---------------------------------------------------------------------

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Stats:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.stats

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def ok_count(self) -> int:
        with self._lock:
            return self.stats.ok

    def wait_ok(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until `n` more requests have succeeded (the load is flowing)."""
        target = self.ok_count() + n
        end = time.monotonic() + timeout
        while self.ok_count() < target:
            if time.monotonic() > end:
                return False
            time.sleep(0.005)
        return True

    def keepalive_ports(self) -> set[int]:
        with self._lock:
            return set(self.current_ports.values())

    # -- recording -------------------------------------------------------------------

    def _ok(self):
        with self._lock:
            self.stats.ok += 1

    def _fail(self, kind, port, err):
        with self._lock:
            if isinstance(err, ConnectionResetError):
                self.stats.resets += 1
            self.stats.failures.append(Failure(kind, port, repr(err), time.monotonic()))

    def _stale(self, port):
        with self._lock:
            self.stats.stale += 1
            self.stats.stale_events.append((port, time.monotonic()))

    # -- keep-alive clients ------------------------------------------------------------

    def _keepalive_loop(self):
        me = threading.get_ident()
        conn, used, port = None, 0, 0
        while self.running():
            if conn is None:
                conn, used = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout), 0
                try:
                    conn.connect()
                    port = conn.sock.getsockname()[1]
                    with self._lock:
                        self.current_ports[me] = port
                except OSError as e:
                    self._fail("keepalive", 0, e)
                    conn = None
                    time.sleep(0.01)
                    continue
            try:
                self._one_keepalive(conn, used)
                used += 1
                self._ok()
                if conn.sock is None:      # the server said Connection: close
                    conn = None
            except _Stale:
                self._stale(port)
                conn.close()
                conn = None
                continue                    # the retry is the next request, on a new connection
            except Exception as e:  # noqa: BLE001 - every error is a failure to record
                self._fail("keepalive", port, e)
                conn.close()
                conn = None
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def _one_keepalive(self, conn, used):
        try:
            conn.request("GET", self.path, headers={"Host": "load"})
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            # Nothing of a response arrived. On a reused connection this is the idle
            # close race (see the module docstring); on a fresh one it is a failure.
            if used:
                raise _Stale() from e
            raise
        body = resp.read()
        if resp.status != 200 or not self.check(body):
            raise AssertionError(f"bad response {resp.status} {body[:100]!r}")

    # -- one-shot clients --------------------------------------------------------------

    def _oneshot_loop(self):
        request = (f"GET {self.path} HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n").encode()
        while self.running():
            port = 0
            try:
                with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                    port = s.getsockname()[1]
                    s.sendall(request)
                    data = bytearray()
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                head, sep, body = bytes(data).partition(b"\r\n\r\n")
                if not sep or not head.startswith(b"HTTP/1.1 200 "):
                    raise AssertionError(f"bad response {bytes(data[:200])!r}")
                length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) != length[0]:
                    raise AssertionError(f"short body: {len(body)} of {length[0]}")
                if not self.check(body):
                    raise AssertionError(f"unexpected body {body[:100]!r}")
                self._ok()
            except Exception as e:  # noqa: BLE001
                self._fail("oneshot", port, e)
                time.sleep(0.01)
            if self.pause:
                time.sleep(self.pause)


def check_clean(stats: Stats, graceful_windows=(), known_issue: str = ""):
    """Assert no request failed and no connection was reset, including inside
    `graceful_windows` (kept in the signature: the windows where workers stopped
    gracefully are named in the failure message, which helps reading one)."""
    inside = [f for f in stats.failures if any(a <= f.when <= b for a, b in graceful_windows)]
    assert stats.failures == [], (f"{len(inside)} of {len(stats.failures)} failures inside "
                                  f"graceful-stop windows: " + stats.summary())