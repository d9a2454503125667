"""Timeouts, each cut at its time with the right status: client_header_timeout (408,
slowloris included), client_body_timeout (408), keepalive_timeout (silent close),
send_timeout (a reader that stalls), proxy_connect_timeout / proxy_read_timeout /
proxy_send_timeout (504). Memory held by many slow clients stays bounded.

Timeouts are 1 s in the configs; the checks allow generous slack (they prove a cut
happens near the timeout, not precise timing).
"""

import socket
import threading
import time

import pytest

from support import Conn, build_request
from support.recording import NonReader, RssSampler


def read_until_close(c: Conn, limit: float) -> tuple[bytes, float]:
    """All bytes until the server closes; fails if it does not within `limit` s."""
    t0 = time.monotonic()
    c.sock.settimeout(limit)
    data = bytearray(c.buf)
    try:
        while True:
            chunk = c.sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"connection not closed within {limit}s; got {bytes(data)[:200]!r}")
    return bytes(data), time.monotonic() - t0


def closed_now(c: Conn) -> bool:
    """True once the server has closed (EOF or reset), reading whatever it sent first
    (a 408) into c.buf; never blocks."""
    if c.eof:
        return True
    c.sock.setblocking(False)
    try:
        while True:
            try:
                d = c.sock.recv(65536)
            except BlockingIOError:
                return False
            except ConnectionResetError:
                c.eof = True
                return True
            if not d:
                c.eof = True
                return True
            c.buf += d
    finally:
        c.sock.settimeout(c.timeout)


RET = """
http {
    client_header_timeout 1s;
    client_body_timeout 1s;
    keepalive_timeout 1s;
    server { listen 127.0.0.1:@PORT@; location / { return 200 "ok"; } }
}
"""


@pytest.mark.edge_only
def test_client_header_timeout_408_then_close(edge):
    # nginx closes silently; edge's documented rule sends 408 first.
    e = edge(RET)
    with Conn(e.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        data, took = read_until_close(c, 6)
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b"Connection: close" in data
        assert took < 4, f"client_header_timeout 1s cut after {took:.1f}s"


def test_client_header_timeout_idle_connection(edge):
    """A connection that sends nothing at all is closed at client_header_timeout."""
    e = edge(RET)
    with Conn(e.port) as c:
        data, took = read_until_close(c, 6)
        assert data in (b"",) or data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert took < 4


@pytest.mark.timeout(40)
def test_slowloris_is_cut_at_the_header_timeout(edge):
    """One byte every 0.3 s: each byte must not restart client_header_timeout (1 s); the
    whole head has to arrive within it."""
    e = edge(RET.replace("client_header_timeout 1s", "client_header_timeout 2s"))
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    with Conn(e.port) as c:
        t0 = time.monotonic()
        cut = None
        for b in raw:
            try:
                c.send(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                cut = time.monotonic() - t0
                break
            time.sleep(0.3)
            if closed_now(c):
                cut = time.monotonic() - t0
                break
            if time.monotonic() - t0 > 12:
                break
        assert cut is not None, "a slowloris client (1 byte / 0.3 s) was never cut off"
        assert cut < 5, f"client_header_timeout 2s cut the slowloris only after {cut:.1f}s"
        assert c.buf == b"" or bytes(c.buf).startswith(b"HTTP/1.1 408 "), bytes(c.buf)[:200]


@pytest.mark.timeout(60)
def test_many_slowloris_bounded_memory_and_all_cut(edge):
    e = edge(RET.replace("client_header_timeout 1s", "client_header_timeout 2s"))
    worker = e.wait_workers(1)[0]
    conns = []
    with RssSampler(worker) as rss:
        for i in range(300):
            c = Conn(e.port, timeout=10)
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 4000)
            conns.append(c)
        deadline = time.monotonic() + 8
        left = list(conns)
        while left and time.monotonic() < deadline:
            left = [c for c in left if not closed_now(c)]
            time.sleep(0.2)
    for c in conns:
        c.close()
    assert not left, f"{len(left)} of 300 slowloris connections still open 8 s after a 2 s header timeout"
    assert rss.growth_kib < 16 * 1024, f"300 slowloris connections grew the worker by {rss.growth_kib} KiB"
    assert e.worker_pids() == [worker]


@pytest.mark.edge_only
def test_client_body_timeout_408_then_close(edge, upstream):
    upstream.allow_errors = True
    e = edge("""
http {
    client_body_timeout 1s;
    upstream backend { server @UP@; keepalive 4; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
""", UP=upstream)
    with Conn(e.port) as c:
        c.send(build_request("POST", "/echo", headers=[("Content-Length", "1000")]) + b"x" * 10)
        data, took = read_until_close(c, 8)
        assert data.startswith(b"HTTP/1.1 408 "), f"stalled body: {data[:200]!r}"
        assert took < 5
    assert upstream.requests == [], "a request whose body stalled reached the upstream complete"


def test_client_body_timeout_on_return_location(edge):
    e = edge(RET)
    with Conn(e.port) as c:
        c.send(build_request("POST", "/", headers=[("Content-Length", "1000")]) + b"x" * 10)
        r = c.read_response()  # return answers without waiting for the body
        assert r.status == 200
        data, took = read_until_close(c, 8)
        assert took < 5, "a connection whose body to discard stalled was not closed"


def test_keepalive_timeout_silent_close(edge):
    e = edge(RET)
    with Conn(e.port) as c:
        assert c.request("GET", "/").status == 200
        t0 = time.monotonic()
        assert c.wait_closed(5), "idle keep-alive connection not closed"  # fails on any byte sent
        assert time.monotonic() - t0 < 4


@pytest.mark.timeout(40)
def test_send_timeout_cuts_a_stalled_reader(edge, upstream):
    upstream.allow_errors = True
    e = edge("""
http {
    send_timeout 1s;
    # without read-ahead the upstream waits on the stalled client, so cutting the client
    # must cut the upstream too (with it, the response would sit in a temp file and the
    # upstream connection would be back in its pool: tests/test_buffering.py)
    proxy_buffering off;
    upstream backend { server @UP@; keepalive 4; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; proxy_read_timeout 30s; } }
}
""", UP=upstream)
    c = Conn(e.port, timeout=10)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    c.send_request("GET", "/bytes/300000000")
    t0 = time.monotonic()
    # stall: read nothing; edge must give up after ~send_timeout and close both sides
    deadline = t0 + 10
    closed_at = None
    while time.monotonic() < deadline:
        conns = list(upstream.conns)
        if conns and all(rec.closed for rec in conns):
            closed_at = time.monotonic() - t0
            break
        time.sleep(0.1)
    assert closed_at is not None, "the upstream connection of a stalled client was not closed"
    assert closed_at < 6, f"send_timeout 1s took {closed_at:.1f}s"
    got = 0
    c.sock.settimeout(5)
    try:
        while True:
            d = c.sock.recv(1 << 20)
            if not d:
                break
            got += len(d)
    except ConnectionResetError:
        pass
    c.close()
    assert got < 300_000_000


@pytest.mark.timeout(40)
def test_proxy_connect_timeout_504(edge, tarpit):
    e = edge("""
http {
    server { listen 127.0.0.1:@PORT@;
             location / { proxy_pass http://@TP@; proxy_connect_timeout 1s; } }
}
""", TP=tarpit)
    t0 = time.monotonic()
    with Conn(e.port, timeout=10) as c:
        r = c.request("GET", "/x")
        assert r.status == 504, r
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(40)
def test_proxy_connect_timeout_next_peer(edge, tarpit, upstream):
    e = edge("""
http {
    upstream backend { server @TP@; server @UP@; }
    server { listen 127.0.0.1:@PORT@;
             location / { proxy_pass http://backend; proxy_connect_timeout 1s; } }
}
""", TP=tarpit, UP=upstream)
    for i in range(4):
        t0 = time.monotonic()
        r = Conn(e.port, timeout=10).request("GET", f"/echo?{i}")
        assert r.status == 200, f"request {i}: a connect timeout was not retried on the next peer: {r!r}"
        assert time.monotonic() - t0 < 5


@pytest.mark.timeout(40)
def test_proxy_read_timeout_504_before_head(edge, blackhole):
    e = edge("""
http { server { listen 127.0.0.1:@PORT@;
                location / { proxy_pass http://@BH@; proxy_read_timeout 1s; } } }
""", BH=blackhole)
    t0 = time.monotonic()
    with Conn(e.port, timeout=10) as c:
        r = c.request("GET", "/x")
        assert r.status == 504, r
        assert c.request("GET", "/y").status == 504, "the client connection should survive a 504"
    assert time.monotonic() - t0 < 6


@pytest.mark.timeout(40)
def test_proxy_read_timeout_mid_body_cuts_client(edge, upstream):
    """The upstream stops in the middle of the body: after proxy_read_timeout the client
    connection is closed, its response visibly incomplete."""
    upstream.allow_errors = True
    e = edge("""
http { upstream backend { server @UP@; keepalive 4; }
       server { listen 127.0.0.1:@PORT@;
                location / { proxy_pass http://backend; proxy_read_timeout 1s; } } }
""", UP=upstream)
    try:
        with Conn(e.port, timeout=10) as c:
            c.send_request("GET", "/gated/stall/100000")
            t0 = time.monotonic()
            data, took = read_until_close(c, 8)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            assert len(body) < 200000, "the body was completed although the upstream stalled"
            assert took < 5, f"proxy_read_timeout 1s took {took:.1f}s"
    finally:
        upstream.gate("stall").set()


@pytest.mark.timeout(40)
def test_proxy_send_timeout_504(edge):
    nr = NonReader("nonreader").start()
    try:
        e = edge("""
http { server { listen 127.0.0.1:@PORT@;
                location / { client_max_body_size 0; proxy_pass http://@NR@;
                             proxy_send_timeout 1s; proxy_read_timeout 30s; } } }
""", NR=nr)
        c = Conn(e.port, timeout=10)
        total = 256 * 1024 * 1024

        def sender():
            try:
                c.sock.sendall(build_request("POST", "/up", headers=[("Content-Length", str(total))]))
                piece = b"z" * (1 << 20)
                for _ in range(total >> 20):
                    c.sock.sendall(piece)
            except OSError:
                pass
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        t0 = time.monotonic()
        r = c.read_response()
        took = time.monotonic() - t0
        assert r.status == 504, r
        assert took < 6, f"proxy_send_timeout 1s took {took:.1f}s"
        c.close()
        t.join(5)
    finally:
        nr.stop()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("buffering", ["on", "off"])
def test_send_timeout_ends_when_the_client_catches_up(edge, upstream, buffering):
    """send_timeout runs only while output waits on the client: a client that was slow
    once, then caught up, is not cut while the upstream pauses longer than send_timeout."""
    e = edge("""
http {
    send_timeout 1s;
    proxy_buffering @BUF@;
    upstream backend { server @UP@; keepalive 4; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; proxy_read_timeout 30s; } }
}
""", UP=upstream, BUF=buffering)
    half = 16_000_000       # more than the socket buffers hold: the writes block
    c = Conn(e.port, timeout=10)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    c.send_request("GET", f"/gated/late/{half}")
    time.sleep(0.5)                 # not reading: edge's writes block, send_timeout starts
    _, status, _, _, _ = c.read_head()
    assert status == 200
    got = len(c.buf)
    while got < half:               # catch up with everything sent so far
        got += len(c.sock.recv(1 << 20))
    time.sleep(2.5)                 # the upstream pauses: nothing is queued for the client
    upstream.gate("late").set()
    while got < 2 * half:
        data = c.sock.recv(1 << 20)
        assert data, f"closed after {got} of {2 * half} bytes"
        got += len(data)
    assert got == 2 * half
    c.close()
