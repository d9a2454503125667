"""Limits with nginx's directive names: head buffers (414 / 431), header count (431),
client_max_body_size (413, Content-Length and chunked), worker_connections (503 when
full), and that each rejection is logged once, at info, with its reason.
"""

import re
import socket
import threading
import time

import pytest

from support import Conn, body_pattern, build_request, chunked_encode, get

RET = """
http {
    @EXTRA@
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "root"; }
    }
}
"""

PROXY = """
http {
    @EXTRA@
    upstream backend { server @UP@; keepalive 8; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://backend; }
        location /small/ { client_max_body_size 1k; proxy_pass http://backend; }
        location /unlimited/ { client_max_body_size 0; proxy_pass http://backend; }
    }
}
"""


def rejected(c: Conn, status: int, what: str):
    r = c.read_response()
    assert r.status == status, f"{what}: wanted {status}, got {r!r}"
    assert "close" in r.connection_tokens(), f"{what}: {status} without Connection: close"
    assert c.wait_closed(3), f"{what}: connection still open after {status}"
    return r


# -- head size ---------------------------------------------------------------------------

def test_default_request_line_limit_is_8k(edge):
    e = edge(RET, EXTRA="")
    target = "/" + "a" * (8192 - len("GET / HTTP/1.1\r\n") - 100)
    assert get(e.port, target).status == 200
    with Conn(e.port) as c:
        c.send_request("GET", "/" + "a" * 8200)
        rejected(c, 414, "8k request line")


def test_small_buffers_414_and_431(edge):
    e = edge(RET, EXTRA="large_client_header_buffers 2 1k; client_header_buffer_size 256;")
    # request line alone longer than one buffer
    with Conn(e.port) as c:
        c.send_request("GET", "/" + "a" * 1100)
        rejected(c, 414, "request line over 1k")
    # one header line longer than one buffer
    with Conn(e.port) as c:
        c.send_request("GET", "/", headers=[("X-Big", "v" * 1100)])
        rejected(c, 431, "header line over 1k")
    # every line fits, the whole head (2.4k) does not fit 2 x 1k
    with Conn(e.port) as c:
        c.send_request("GET", "/", headers=[(f"X-H{i}", "v" * 700) for i in range(3)])
        rejected(c, 431, "head over 2 x 1k")
    # lines under 1k, head under 2k: fine, and the connection is kept
    with Conn(e.port) as c:
        r = c.request("GET", "/", headers=[("X-A", "v" * 800), ("X-B", "v" * 600)])
        assert r.status == 200
        assert c.request("GET", "/").status == 200


def test_head_limit_is_not_dodged_by_slow_sending(edge):
    """The limit holds when the head arrives in small pieces."""
    e = edge(RET, EXTRA="large_client_header_buffers 2 1k;")
    with Conn(e.port) as c:
        raw = build_request("GET", "/", headers=[(f"X-H{i}", "v" * 500) for i in range(8)])
        for i in range(0, len(raw), 300):
            try:
                c.send(raw[i:i + 300])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)
        rejected(c, 431, "head sent in pieces")


def test_max_request_headers_default_100(edge):
    e = edge(RET, EXTRA="")
    with Conn(e.port) as c:  # Host + 99 = 100 headers: accepted
        r = c.request("GET", "/", headers=[(f"X-H{i}", "v") for i in range(99)])
        assert r.status == 200, "100 headers are within the default max_request_headers 100"
    with Conn(e.port) as c:
        c.send_request("GET", "/", headers=[(f"X-H{i}", "v") for i in range(100)])
        rejected(c, 431, "101 headers")
    with Conn(e.port) as c:
        c.send_request("GET", "/", headers=[("X-H", "v")] * 1000)
        rejected(c, 431, "1001 headers")


def test_max_request_headers_directive(edge):
    e = edge(RET, EXTRA="max_request_headers 10;")
    with Conn(e.port) as c:
        assert c.request("GET", "/", headers=[(f"X-H{i}", "v") for i in range(9)]).status == 200
    with Conn(e.port) as c:
        c.send_request("GET", "/", headers=[(f"X-H{i}", "v") for i in range(10)])
        rejected(c, 431, "11 headers with max_request_headers 10")


# -- body size ---------------------------------------------------------------------------

def test_content_length_over_limit_413_before_body(edge, upstream):
    e = edge(PROXY, UP=upstream, EXTRA="")
    with Conn(e.port) as c:
        c.send_request("POST", "/small/echo", headers=[("Content-Length", "1025")])
        rejected(c, 413, "CL 1025 over 1k")
    with Conn(e.port) as c:
        r = c.request("POST", "/small/echo", body=b"x" * 1024)
        assert r.status == 200 and r.json()["body_len"] == 1024, "exactly the limit is accepted"
    assert len(upstream.requests) == 1


def test_413_is_delivered_while_the_client_is_sending(edge, upstream):
    """A body refused before it was read: the client, still sending its body, reads the
    whole 413 (no reset that destroys it), then the connection closes."""
    e = edge(PROXY, UP=upstream, EXTRA="client_max_body_size 64k;")
    body = body_pattern(4 * 1024 * 1024)
    with Conn(e.port, timeout=10) as c:
        def sender():
            try:
                c.sock.sendall(build_request("POST", "/echo", body=body))
            except OSError:
                pass
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        r = c.read_response()
        assert r.status == 413, r
        assert "close" in r.connection_tokens()
        t.join(10)
    assert upstream.requests == []


def test_chunked_body_over_limit_413(edge, upstream):
    upstream.allow_errors = True  # a streamed body is cut at the upstream
    e = edge(PROXY, UP=upstream, EXTRA="")
    with Conn(e.port, timeout=10) as c:
        c.send_request("POST", "/small/echo", headers=[("Transfer-Encoding", "chunked")],
                       body=chunked_encode(b"y" * 2000, sizes=(300,)))
        rejected(c, 413, "chunked body over 1k")
    assert all(len(q.body) <= 1024 for q in upstream.requests), "a body over the limit reached the upstream whole"
    assert upstream.requests == [], "a chunked body over the limit was forwarded as a complete request"
    with Conn(e.port) as c:  # exactly at the limit, chunked
        r = c.request("POST", "/small/echo", headers=[("Transfer-Encoding", "chunked")],
                      body=chunked_encode(b"y" * 1024, sizes=(100,)))
        assert r.status == 200 and r.json()["body_len"] == 1024


def test_chunked_limit_crossed_on_default_1m(edge, upstream):
    upstream.allow_errors = True
    e = edge(PROXY, UP=upstream, EXTRA="")
    with Conn(e.port, timeout=10) as c:
        def sender():
            try:
                c.sock.sendall(build_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")],
                                             body=chunked_encode(body_pattern(3 * 1024 * 1024))))
            except OSError:
                pass
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        r = c.read_response()
        assert r.status == 413, r
        assert c.wait_closed(5)
        t.join(10)
    assert upstream.requests == []


def test_client_max_body_size_0_is_unlimited(edge, upstream):
    e = edge(PROXY, UP=upstream, EXTRA="")
    body = body_pattern(3 * 1024 * 1024)
    with Conn(e.port, timeout=20) as c:
        r = c.request("POST", "/unlimited/echo", body=body)
        assert r.status == 200 and r.json()["body_len"] == len(body)
        r = c.request("POST", "/unlimited/echo", headers=[("Transfer-Encoding", "chunked")],
                      body=chunked_encode(body))
        assert r.status == 200 and r.json()["body_len"] == len(body)


# -- worker_connections --------------------------------------------------------------------

def open_and_probe(port: int):
    """Connect; if the server speaks first, read that; else send a request and read the
    answer. Returns (conn, status or None if the connection was closed silently)."""
    c = Conn(port, timeout=3)
    try:
        if not c.is_open(0.3):
            r = c.read_response()
            return c, r.status
        c.send_request("GET", "/")
        return c, c.read_response().status
    except (AssertionError, OSError):
        return c, None


@pytest.mark.edge_only      # nginx closes such a connection without an answer
@pytest.mark.timeout(60)
def test_worker_connections_full_is_503(edge):
    """Every slot busy (each connection is in the middle of a request head): the next
    connection gets a 503 and is closed; the busy ones go on."""
    n = 8
    e = edge("events { worker_connections %d; }\n" % n + RET, EXTRA="keepalive_timeout 30s;")
    held = []
    try:
        for i in range(n):
            c, st = open_and_probe(e.port)
            held.append(c)
            assert st == 200, f"connection {i + 1} of worker_connections {n} was not served ({st})"
            c.send(b"GET / HTTP/1.1\r\n")        # busy: a head has started
        time.sleep(0.2)
        c, st = open_and_probe(e.port)
        held.append(c)
        assert st == 503, f"connection {n + 1} with worker_connections {n} full: got {st}, wanted 503"
        assert c.wait_closed(3), "the refused connection was left open"
        # the held ones still work
        held[0].send(b"Host: x\r\n\r\n")
        assert held[0].read_response().status == 200
        # a slot freed is usable again
        held[1].close()
        time.sleep(0.3)
        c, st = open_and_probe(e.port)
        held.append(c)
        assert st == 200, f"a new connection after one closed got {st}"
    finally:
        for c in held:
            c.close()


@pytest.mark.timeout(60)
def test_worker_connections_full_of_idle_connections_reuses_the_oldest(edge):
    """Every slot held by an idle keep-alive connection: as nginx does, the oldest idle
    ones are closed to make room, and the new client is served."""
    n = 8
    e = edge("events { worker_connections %d; }\n" % n + RET, EXTRA="keepalive_timeout 30s;")
    held = []
    try:
        for i in range(n):
            c, st = open_and_probe(e.port)
            held.append(c)
            assert st == 200
            time.sleep(0.01)                    # an order of age for the server's timers
        c, st = open_and_probe(e.port)
        held.append(c)
        assert st == 200, f"a new client with every slot idle got {st}, wanted 200"
        assert held[0].wait_closed(3), "the oldest idle connection was not the one closed"
        assert held[-2].is_open(0.2)
    finally:
        for c in held:
            c.close()


# -- logging of rejections --------------------------------------------------------------------

LOG_CASES = [
    ("invalid_header", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400,
     r"client sent invalid header line.*while reading client request headers"),
    ("no_host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400, r"Host"),
    ("too_long_uri", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, r"(?i)too long|too large|URI"),
    ("unknown_te", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, r"Transfer-Encoding"),
    ("bad_version", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, r"(?i)version"),
    ("too_large_body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413,
     r"(?i)too large body|body.*too large"),
]


@pytest.mark.parametrize("name,raw,status,reason", LOG_CASES, ids=[x[0] for x in LOG_CASES])
def test_rejection_logged_once_at_info(edge, name, raw, status, reason):
    e = edge(RET, EXTRA="")
    time.sleep(0.2)
    before = e.error_log
    with Conn(e.port) as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == status, f"{name}: {r!r}"
        c.wait_closed(3)
    time.sleep(0.3)
    new = e.error_log[len(before):].splitlines()
    lines = [l for l in new if "client" in l or "request" in l]
    assert len(lines) == 1, f"{name}: wanted one log line for the rejection, got {new!r}"
    assert "[info]" in lines[0], f"{name}: not logged at info: {lines[0]!r}"
    assert re.search(reason, lines[0]), f"{name}: log line {lines[0]!r} does not say why ({reason})"
    assert "127.0.0.1" in lines[0], f"{name}: log line without the client address: {lines[0]!r}"
