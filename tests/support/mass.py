"""Thousands of client connections from one thread, for the connection-scale tests and
perf/bench's `idle` row: non-blocking sockets and epoll, bounded in time.

    raise_nofile()                       # soft RLIMIT_NOFILE up to the hard limit
    settled_rss(worker_pid)              # VmRSS once it has stopped falling
    fleet = Fleet(port, b"GET /return HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    fleet.open(10000)                    # each sent one request and read its response
    fleet.open_count()                   # how many the server has not closed
    fleet.again()                        # one more request on each, all at once
    fleet.close()
    statuses = burst(port, [req_a, req_b] * 2500)   # all connected, then all sent at once

`Fleet.open` keeps at most `window` connections between connect() and their response,
so the listen queue never overflows (a dropped SYN costs a 1 s retransmission). Every
connection must get a complete response (Content-Length framing) with the expected
status, or `open` raises with the first errors.

This file does not import the rest of `support` (perf/bench loads it by path), and it
also runs as a small upstream server in its own process:

    python3 tests/support/mass.py upstream PORT

answers every request with `200 up` (Content-Length, keep-alive unless the request
asks to close or is HTTP/1.0), with asyncio: thousands of connections at once, unlike
the thread-per-connection test upstreams. `FastUpstream` starts and stops it.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import select
import socket
import subprocess
import sys
import time
from collections import Counter

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# -- process facts --------------------------------------------------------------------

def raise_nofile(want: int | None = None) -> int:
    """Raise the soft limit on open files toward the hard limit (or `want`, if lower);
    return the soft limit now in force. Child processes inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if want is not None:
        target = min(target, want)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss(pid: int, quiet: float = 3.0, max_wait: float = 20.0, step: float = 0.25) -> int:
    """VmRSS at rest, in bytes: the lowest reading, once it has not fallen (by more than
    128 KiB) for `quiet` seconds, or after `max_wait`. A worker that frees memory on a
    timer (edge parks idle connections and halves its free pools once a second) takes a
    few seconds to get there; one that frees nothing settles after `quiet`."""
    low = rss_bytes(pid)
    start = last_drop = time.monotonic()
    while True:
        now = time.monotonic()
        if now - last_drop >= quiet or now - start >= max_wait:
            return low
        time.sleep(step)
        r = rss_bytes(pid)
        if r < low - (128 << 10):
            last_drop = time.monotonic()
        low = min(low, r)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("latin-1").strip()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == pid and rest[0] not in ("Z", "X"):
            out.append(int(name))
    return sorted(out)


def worker_pids(master: int) -> list[int]:
    """The worker processes of an edge or nginx master: nginx's are the children named
    "nginx: worker process"; edge's are its children other than the control process
    (comm "edge-control")."""
    kids = _children(master)
    nginx = [p for p in kids if _cmdline(p).startswith("nginx: worker process")]
    if nginx:
        return nginx
    return [p for p in kids if _comm(p) != "edge-control" and not _cmdline(p).startswith("nginx:")]


def socket_fds(pid: int) -> int:
    """How many sockets a process holds open."""
    n = 0
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


# -- clients --------------------------------------------------------------------------

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.I)

CONNECTING, SENDING, READING, DONE = range(4)


class _Client:
    __slots__ = ("sock", "out", "inb", "state", "status", "need")

    def __init__(self, sock, request):
        self.sock = sock
        self.out = request
        self.inb = bytearray()
        self.state = CONNECTING
        self.status = 0
        self.need = -1          # total bytes of the response, once the head is parsed


def _new_socket(host, port, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    if source:
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
    err = s.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        s.close()
        raise OSError(err, f"connect to {host}:{port}: {os.strerror(err)}")
    return s


def _response_done(c: _Client) -> bool:
    """Parse what arrived; True once the whole response (head and body) is in."""
    if c.need < 0:
        end = c.inb.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(c.inb[:end + 2])
        m = _STATUS.match(head)
        if not m:
            raise ValueError(f"not an HTTP/1.x response: {head[:100]!r}")
        c.status = int(m.group(1))
        m = _CL.search(head)
        if not m:
            raise ValueError(f"response without Content-Length: {head[:300]!r}")
        c.need = end + 4 + int(m.group(1))
    if len(c.inb) > c.need:
        raise ValueError(f"extra bytes after the response: {bytes(c.inb[c.need:])[:100]!r}")
    return len(c.inb) == c.need


class Fleet:
    """Client connections that each sent one request, read its whole response, and stay
    open (idle keep-alive) until `close()`."""

    def __init__(self, port: int, request: bytes, host: str = "127.0.0.1", sources=(),
                 expect_status: int = 200):
        self.port = port
        self.host = host
        self.request = request
        self.sources = list(sources)        # client addresses to bind (127.0.0.x), in turn
        self.expect = expect_status
        self.open_socks: list[socket.socket] = []
        self.errors: list[str] = []
        self.statuses: Counter = Counter()

    def open(self, n: int, window: int = 256, timeout: float = 60.0):
        """Open `n` more connections, each with one complete request/response; raise
        AssertionError if any fails or the time runs out."""
        ep = select.epoll()
        clients: dict[int, _Client] = {}
        started = done = 0
        deadline = time.monotonic() + timeout
        try:
            while done < n:
                while started < n and len(clients) < window:
                    src = self.sources[started % len(self.sources)] if self.sources else None
                    try:
                        s = _new_socket(self.host, self.port, src)
                    except OSError as e:
                        raise AssertionError(f"after {done} connections: {e}") from None
                    clients[s.fileno()] = _Client(s, self.request)
                    ep.register(s.fileno(), select.EPOLLOUT)
                    started += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{done} of {n} connections done after {timeout}s "
                                         f"({len(clients)} in progress); errors: {self.errors[:5]}")
                for fd, ev in ep.poll(min(left, 1.0)):
                    c = clients[fd]
                    if self._step(c, ev, ep):
                        del clients[fd]
                        ep.unregister(fd)
                        if c.state == DONE:
                            self.open_socks.append(c.sock)
                        else:
                            c.sock.close()
                        done += 1
        finally:
            for c in clients.values():
                c.sock.close()
            ep.close()
        bad = sum(v for k, v in self.statuses.items() if k != self.expect)
        if self.errors or bad:
            raise AssertionError(f"{len(self.errors)} connections failed, statuses {dict(self.statuses)}: "
                                 f"{self.errors[:5]}")
        return self

    def _step(self, c: _Client, ev: int, ep) -> bool:
        """Advance one connection; True when it is finished (DONE, or failed)."""
        try:
            if c.state == CONNECTING:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
                c.state = SENDING
            if c.state == SENDING:
                sent = c.sock.send(c.out)
                c.out = c.out[sent:]
                if c.out:
                    return False
                c.state = READING
                ep.modify(c.sock.fileno(), select.EPOLLIN)
                return False
            data = c.sock.recv(65536)
            if not data:
                raise OSError(f"closed by the server after {len(c.inb)} bytes: {bytes(c.inb[:200])!r}")
            c.inb += data
            if _response_done(c):
                c.state = DONE
                self.statuses[c.status] += 1
                c.inb = b""
                return True
            return False
        except BlockingIOError:
            return False
        except (OSError, ValueError) as e:
            self.errors.append(str(e))
            return True

    def again(self, request: bytes | None = None, timeout: float = 60.0):
        """Send one more request on every open connection, all at once, and read every
        response; the connections stay open. Raises AssertionError on any failure."""
        request = request or self.request
        ep = select.epoll()
        clients: dict[int, _Client] = {}
        errors_before = len(self.errors)
        statuses: Counter = Counter()
        deadline = time.monotonic() + timeout
        try:
            for s in self.open_socks:
                c = _Client(s, request)
                c.state = SENDING
                clients[s.fileno()] = c
                ep.register(s.fileno(), select.EPOLLOUT)
            left_n = len(clients)
            while left_n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(clients) - left_n} of {len(clients)} answered again after "
                                         f"{timeout}s")
                for fd, ev in ep.poll(min(left, 1.0)):
                    c = clients[fd]
                    if self._step(c, ev, ep):
                        ep.unregister(fd)
                        left_n -= 1
                        if c.state == DONE:
                            statuses[c.status] += 1
        finally:
            ep.close()
        errors = self.errors[errors_before:]
        if errors or set(statuses) - {self.expect}:
            raise AssertionError(f"second requests: {len(errors)} failed, statuses {dict(statuses)}: {errors[:5]}")
        return statuses

    def open_count(self) -> int:
        """How many of the open connections the server still keeps: a socket with nothing
        to read and no hang-up. (A byte or an EOF from the server counts as closed.)"""
        ep = select.epoll()
        try:
            for s in self.open_socks:
                ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            closed = len(ep.poll(0, max(1, len(self.open_socks))))
        finally:
            ep.close()
        return len(self.open_socks) - closed

    def close(self):
        for s in self.open_socks:
            s.close()
        self.open_socks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def burst(port: int, requests: list[bytes], host: str = "127.0.0.1", window: int = 256,
          timeout: float = 60.0) -> Counter:
    """One connection per request: connect them all (at most `window` connects pending at
    a time), then send every request at once, read every response, and close them all.
    Returns the response statuses; raises AssertionError on any connection error."""
    n = len(requests)
    ep = select.epoll()
    socks: list[socket.socket] = []
    statuses: Counter = Counter()
    deadline = time.monotonic() + timeout
    try:
        # 1. connect all, without sending
        pending: dict[int, socket.socket] = {}
        connected = 0
        while connected < n:
            while len(socks) < n and len(pending) < window:
                s = _new_socket(host, port, None)
                socks.append(s)
                pending[s.fileno()] = s
                ep.register(s.fileno(), select.EPOLLOUT)
            if time.monotonic() > deadline:
                raise AssertionError(f"burst: {connected} of {n} connected after {timeout}s")
            for fd, ev in ep.poll(1.0):
                s = pending.pop(fd)
                ep.unregister(fd)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise AssertionError(f"burst: connect failed after {connected}: {os.strerror(err)}")
                connected += 1
        # 2. all requests at once
        clients: dict[int, _Client] = {}
        for s, req in zip(socks, requests):
            c = _Client(s, req)
            c.state = SENDING
            clients[s.fileno()] = c
            try:
                sent = s.send(req)
            except BlockingIOError:
                sent = 0
            c.out = req[sent:]
            if c.out:
                ep.register(s.fileno(), select.EPOLLOUT)
            else:
                c.state = READING
                ep.register(s.fileno(), select.EPOLLIN)
        # 3. every response
        left_n = n
        errors: list[str] = []
        fake = Fleet(port, b"")
        while left_n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"burst: {n - left_n} of {n} responses after {timeout}s; "
                                     f"statuses {dict(statuses)}")
            for fd, ev in ep.poll(min(left, 1.0)):
                c = clients[fd]
                if fake._step(c, ev, ep):
                    ep.unregister(fd)
                    left_n -= 1
                    if c.state == DONE:
                        statuses[c.status] += 1
            errors = fake.errors
            if errors:
                raise AssertionError(f"burst: {len(errors)} failed: {errors[:5]}")
    finally:
        for s in socks:
            s.close()
        ep.close()
    return statuses


# -- a fast upstream in its own process --------------------------------------------------

class FastUpstream:
    """`python3 mass.py upstream PORT` as a subprocess: `200 up` to every request."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0):
        s = socket.socket()
        s.bind((self.host, 0))
        self.port = s.getsockname()[1]
        s.close()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "upstream", str(self.port),
                                      self.host], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fast upstream exited with {self.proc.returncode}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fast upstream did not listen on {self.port} within {timeout}s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _serve_upstream(port: int, host: str):
    import asyncio

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = _CL.search(head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                first, _, rest = head.partition(b"\r\n")
                conn = re.search(rb"\r\nconnection:[^\r]*", b"\r\n" + rest, re.I)
                close = first.endswith(b"HTTP/1.0") or (conn is not None and b"close" in conn.group(0).lower())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                             + (b"Connection: close\r\n" if close else b"") + b"\r\nup")
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, host, port, backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "upstream":
        raise_nofile()
        _serve_upstream(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1")
    else:
        sys.exit("usage: mass.py upstream PORT [HOST]")
