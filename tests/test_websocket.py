"""Connection upgrade: WebSocket (the `websockets` library on both ends) and raw
byte tunnels through edge after a 101.

(Written as tests/test_upgrade.py; that name now holds the binary-upgrade suite, so the
connection-upgrade suite lives here.)

- echo of small and 8 MiB messages; a slow peer (backpressure, bounded worker memory);
- `proxy_tunnel_timeout` closes an idle tunnel, traffic keeps it open;
- `proxy_upgrade off` strips Upgrade/Connection (a normal request); a protocol that is
  not allowed is a normal request too; `proxy_upgrade foo;` allows `Upgrade: foo`;
- an upgrade to an `upstream` group with keepalive works and its connection is never
  pooled; an unsolicited 101 is a 502; the upstream may refuse the upgrade.
"""

import hashlib
import os
import re
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve

from support import Conn
from support.recording import RssSampler, ScriptedUpstream, TunnelUpstream, pattern_check


class WsEcho:
    """A websockets echo server in a thread; path /refuse answers 403, path /slow reads
    slowly (see slow_reader)."""

    def __init__(self):
        self.connections = 0
        self.closed = 0
        self.received = 0

        def handler(ws):
            self.connections += 1
            if ws.request.path.startswith("/slow"):
                return self.slow_reader(ws)
            try:
                for msg in ws:
                    self.received += len(msg)
                    ws.send(msg)
            except ConnectionClosed:
                pass
            finally:
                self.closed += 1

        def process_request(conn, request):
            if request.path.startswith("/refuse"):
                return conn.respond(403, "refused\n")
            return None

        self.server = serve(handler, "127.0.0.1", 0, max_size=None, process_request=process_request,
                            compression=None)
        self.port = self.server.socket.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def slow_reader(self, ws):
        """Reads one message every 50 ms until "done", then answers with how many
        binary messages came and the sha256 of their concatenation."""
        h = hashlib.sha256()
        n = 0
        try:
            for msg in ws:
                if msg == "done":
                    ws.send(f"{n} {h.hexdigest()}")
                    continue
                h.update(msg)
                n += 1
                time.sleep(0.05)
        except ConnectionClosed:
            pass
        finally:
            self.closed += 1

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def ws_up():
    s = WsEcho()
    yield s
    s.stop()


@pytest.fixture
def tunnel():
    s = TunnelUpstream().start()
    yield s
    s.stop()


CONF = """
http {
    upstream wsgroup { server @UP@; keepalive 8; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://@UP@; @EXTRA@ }
        location /group/ { proxy_pass http://wsgroup; @EXTRA@ }
    }
}
"""


def ws(port, path="/ws", **kw):
    return connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=5, close_timeout=3,
                   compression=None, **kw)


def upgrade_request(path="/t", proto="websocket", version="HTTP/1.1", extra=b""):
    return (f"GET {path} {version}\r\nHost: x\r\nUpgrade: {proto}\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode() + extra


def read_101(c: Conn):
    version, status, reason, headers, raw = c.read_head()
    return status, {k.lower(): v for k, v in headers}, raw


def recv_exact(sock, n, timeout=10):
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        d = sock.recv(min(1 << 20, n - len(out)))
        if not d:
            raise AssertionError(f"tunnel closed after {len(out)} of {n} bytes")
        out += d
    return bytes(out)


# -- WebSocket ------------------------------------------------------------------------------

def test_websocket_echo(edge, ws_up):
    e = edge(CONF, UP=ws_up, EXTRA="")
    with ws(e.port) as c:
        for i in range(20):
            c.send(f"hello {i}")
            assert c.recv(timeout=5) == f"hello {i}"
        c.send(b"\x00\x01binary\xff")
        assert c.recv(timeout=5) == b"\x00\x01binary\xff"
        c.ping().wait(5)
    assert ws_up.connections == 1


@pytest.mark.timeout(60)
def test_websocket_large_frames(edge, ws_up):
    e = edge(CONF, UP=ws_up, EXTRA="")
    with ws(e.port) as c:
        for size in (8 * 1024 * 1024, 65536, 8 * 1024 * 1024 + 17):
            data = os.urandom(size)
            c.send(data)
            got = c.recv(timeout=30)
            assert len(got) == size and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


@pytest.mark.timeout(60)
def test_websocket_slow_peer_backpressure(edge, ws_up):
    """The client sends 48 x 1 MiB as fast as it can; the upstream peer reads one
    message every 50 ms. Everything arrives intact and in order, and the worker does not
    buffer what the slow peer has not read (its RSS grows < 16 MiB)."""
    e = edge(CONF, UP=ws_up, EXTRA="")
    worker = e.wait_workers(1)[0]
    msgs = [bytes([i]) * (1 << 20) for i in range(48)]
    want = hashlib.sha256(b"".join(msgs)).hexdigest()
    with RssSampler(worker) as rss:
        with ws(e.port, "/slow") as c:
            for m in msgs:
                c.send(m)
            c.send("done")
            assert c.recv(timeout=30) == f"48 {want}"
    assert rss.growth_kib < 16 * 1024, f"the worker grew {rss.growth_kib} KiB for a slow WebSocket peer"


def test_websocket_through_keepalive_group_not_pooled(edge, ws_up):
    e = edge(CONF, UP=ws_up, EXTRA="")
    for i in range(3):
        with ws(e.port, "/group/ws") as c:
            c.send(f"m{i}")
            assert c.recv(timeout=5) == f"m{i}"
    deadline = time.monotonic() + 5
    while ws_up.closed < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ws_up.connections == 3
    assert ws_up.closed == 3, "upstream WebSocket connections left open after the clients closed"


def test_websocket_refused_by_upstream(edge, ws_up):
    e = edge(CONF, UP=ws_up, EXTRA="")
    with Conn(e.port) as c:
        c.send(upgrade_request("/refuse"))
        r = c.read_response()
        assert r.status == 403 and r.body == b"refused\n"


# -- raw tunnels -----------------------------------------------------------------------------

def test_tunnel_101_and_echo(edge, tunnel):
    e = edge(CONF, UP=tunnel, EXTRA="")
    with Conn(e.port) as c:
        c.send(upgrade_request("/echo", extra=b"early bytes"))  # sent with the head
        status, h, raw = read_101(c)
        assert status == 101, raw
        assert h.get("upgrade", "").lower() == "websocket", raw
        assert "upgrade" in h.get("connection", "").lower(), raw
        c.sock.sendall(b"more")
        got = bytes(c.buf) + recv_exact(c.sock, len(b"early bytesmore") - len(c.buf))
        assert got == b"early bytesmore"
        for n in (1, 100, 1 << 20):
            data = os.urandom(n)
            c.sock.sendall(data)
            assert recv_exact(c.sock, n) == data
    head = tunnel.heads[0]
    assert re.search(rb"(?im)^upgrade: websocket\r$", head), head
    assert re.search(rb"(?im)^connection:[^\r]*upgrade", head), head


@pytest.mark.timeout(60)
def test_tunnel_backpressure_bounded(edge, tunnel):
    """The upstream pushes 256 MiB into the tunnel; the client does not read for 2 s:
    edge stops reading from the upstream (a bounded amount is in flight), then delivers
    every byte in order."""
    e = edge(CONF, UP=tunnel, EXTRA="")
    worker = e.wait_workers(1)[0]
    total = 256 * 1024 * 1024
    with RssSampler(worker) as rss, Conn(e.port, timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        c.send(upgrade_request(f"/source/{total}"))
        status, _, raw = read_101(c)
        assert status == 101, raw
        time.sleep(2)
        in_flight = tunnel.sent
        assert in_flight < 48 * 1024 * 1024, f"{in_flight} bytes left the upstream while the client read nothing"
        got = len(c.buf)
        assert pattern_check(0, bytes(c.buf))
        buf = bytearray(1 << 20)
        while got < total:
            n = c.sock.recv_into(buf)
            if not n:
                break
            assert pattern_check(got, memoryview(buf)[:n]), f"tunnel bytes differ near offset {got}"
            got += n
        assert got == total
    assert rss.growth_kib < 16 * 1024, f"worker grew {rss.growth_kib} KiB for a stalled tunnel reader"


@pytest.mark.timeout(30)
def test_tunnel_idle_timeout(edge, tunnel):
    e = edge(CONF, UP=tunnel, EXTRA="proxy_tunnel_timeout 1s;")
    # traffic every 0.4 s keeps it open past the timeout
    with Conn(e.port) as c:
        c.send(upgrade_request("/echo"))
        assert read_101(c)[0] == 101
        for i in range(6):
            time.sleep(0.4)
            c.sock.sendall(b"ping%d" % i)
            assert recv_exact(c.sock, 5) == b"ping%d" % i, "tunnel closed although it was not idle"
        # then idle: closed at ~1 s
        t0 = time.monotonic()
        assert c.wait_closed(5), "idle tunnel not closed after proxy_tunnel_timeout 1s"
        assert time.monotonic() - t0 < 4
    deadline = time.monotonic() + 3
    while tunnel.tunnels_closed < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tunnel.tunnels_closed == 1, "the upstream side of the idle tunnel was not closed"


def test_tunnel_default_timeout_is_long(edge, tunnel):
    """With the default (1h), an idle tunnel outlives the other timeouts (1 s here)."""
    e = edge(CONF.replace("http {", "http { keepalive_timeout 1s; send_timeout 1s; client_body_timeout 1s;"),
             UP=tunnel, EXTRA="proxy_read_timeout 1s; proxy_send_timeout 1s;")
    with Conn(e.port) as c:
        c.send(upgrade_request("/echo"))
        assert read_101(c)[0] == 101
        time.sleep(2.5)
        c.sock.sendall(b"still")
        assert recv_exact(c.sock, 5) == b"still", "an idle tunnel was cut by a non-tunnel timeout"


def test_client_close_closes_upstream_side(edge, tunnel):
    e = edge(CONF, UP=tunnel, EXTRA="")
    with Conn(e.port) as c:
        c.send(upgrade_request("/echo"))
        assert read_101(c)[0] == 101
    deadline = time.monotonic() + 5
    while tunnel.tunnels_closed < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tunnel.tunnels_closed == 1


def test_upstream_close_closes_client_side(edge, tunnel):
    e = edge(CONF, UP=tunnel, EXTRA="")
    with Conn(e.port) as c:
        c.send(upgrade_request("/source/1000"))
        assert read_101(c)[0] == 101
        got = bytes(c.buf) + recv_exact(c.sock, 1000 - len(c.buf))
        c.buf.clear()
        assert pattern_check(0, got)
        assert c.wait_closed(5), "client side of the tunnel left open after the upstream closed"


def test_proxy_upgrade_off_is_a_normal_request(edge, tunnel):
    e = edge(CONF, UP=tunnel, EXTRA="proxy_upgrade off;")
    with Conn(e.port) as c:
        c.send(upgrade_request("/plain"))
        r = c.read_response()
        assert r.status == 200, r
        head = r.json()["head"].lower()
        assert "upgrade:" not in head, head
        assert "connection: upgrade" not in head, head
        assert c.request("GET", "/again").status == 200, "the connection is a normal HTTP one"


def test_protocol_not_allowed_is_a_normal_request(edge, tunnel):
    e = edge(CONF, UP=tunnel, EXTRA="")
    with Conn(e.port) as c:
        c.send(upgrade_request("/plain", proto="h2c"))
        r = c.read_response()
        assert r.status == 200, r
        assert "upgrade:" not in r.json()["head"].lower()


def test_proxy_upgrade_custom_protocol(edge, tunnel):
    e = edge(CONF, UP=tunnel, EXTRA="proxy_upgrade websocket foo;")
    with Conn(e.port) as c:
        c.send(upgrade_request("/echo", proto="FOO"))
        status, h, raw = read_101(c)
        assert status == 101, raw
        c.sock.sendall(b"custom")
        assert recv_exact(c.sock, 6) == b"custom"


def test_upgrade_ignored_on_http10(edge, tunnel):
    # RFC 9110 7.8: a server MUST ignore Upgrade received in an HTTP/1.0 request
    e = edge(CONF, UP=tunnel, EXTRA="")
    with Conn(e.port) as c:
        c.send(upgrade_request("/plain", version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200, r
        assert "upgrade:" not in r.json()["head"].lower()


def test_tunnel_via_keepalive_group_not_pooled(edge, tunnel):
    e = edge(CONF, UP=tunnel, EXTRA="")
    with Conn(e.port) as c:
        c.send(upgrade_request("/group/echo"))
        status, h, raw = read_101(c)
        assert status == 101
        tconn = int(h["x-tunnel-conn"])
        # while the tunnel is open, normal requests through the group use other connections
        for i in range(3):
            r = Conn(e.port).request("GET", f"/group/plain{i}")
            assert r.status == 200 and r.json()["conn"] != tconn
        c.sock.sendall(b"abc")
        assert recv_exact(c.sock, 3) == b"abc"
    time.sleep(0.3)
    for i in range(3):
        r = Conn(e.port).request("GET", f"/group/after{i}")
        assert r.status == 200 and r.json()["conn"] != tconn, "the tunnel's connection went back to the pool"


def test_unsolicited_101_is_502(edge):
    s = ScriptedUpstream().start()
    try:
        s.script["/x"] = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                          b"tunnel bytes")
        e = edge(CONF, UP=s, EXTRA="")
        with Conn(e.port) as c:
            r = c.request("GET", "/x")
            assert r.status == 502, r
    finally:
        s.stop()
