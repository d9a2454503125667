"""proxy_pass against a real upstream (tests/support/upstream.py), through a real edge.

What the upstream received is checked from the bytes it read; keep-alive reuse is
counted on the upstream side (TCP connections it accepted). Expectations are nginx's,
except where edge documents a different default (marked `edge_only`): the client's
Host is passed through, X-Forwarded-For / X-Real-IP / X-Forwarded-Proto are set,
upstream connections are HTTP/1.1 keep-alive, and headers named in Connection are
dropped. Buffering is on by default, as in nginx (issue 10; test_buffering.py); the
tests that check streaming turn it off (STREAMING), and those that hold in both modes
run in both (`mode`).
"""

import http.client
import json
import socket
import threading
import time

import pytest

from support import (Conn, body_pattern, build_request, chunked_encode, closed_port, curl, get, request,
                     sha256)

BASIC = """
http {
    client_max_body_size 64m;
    upstream backend { server @UP@; keepalive 16; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://backend; }
    }
}
"""


# bodies stream both ways: buffering off
STREAMING = BASIC.replace("location / { proxy_pass http://backend; }",
                          "location / { proxy_pass http://backend; proxy_request_buffering off; proxy_buffering off; }")

# both modes, for checks that must hold whether edge buffers or streams
MODES = {"buffered": "", "streaming": "proxy_request_buffering off; proxy_buffering off;"}


@pytest.fixture
def px(edge, upstream):
    return edge(BASIC, UP=upstream)


@pytest.fixture
def streaming(edge, upstream):
    return edge(STREAMING, UP=upstream)


def test_get_is_forwarded(px, upstream):
    r = get(px.port, "/echo?a=1&b=%20x", headers=[("X-Custom", "hello"), ("Accept", "*/*")])
    assert r.status == 200
    assert r.header("X-Upstream") == "up"
    assert r.header("Content-Type") == "application/json"
    j = r.json()
    assert j["method"] == "GET"
    assert j["target"] == "/echo?a=1&b=%20x"
    assert j["body_len"] == 0
    got = upstream.last()
    assert got.header("X-Custom") == "hello"
    assert got.header("Accept") == "*/*"
    assert got.header("Content-Length") in (None, "0") and got.header("Transfer-Encoding") is None
    assert got.header("Host") is not None  # exactly one Host (header() raises on duplicates)


@pytest.mark.edge_only
def test_upstream_request_is_http11_keepalive(px, upstream):
    get(px.port, "/echo")
    got = upstream.last()
    assert got.version == "HTTP/1.1"
    assert "close" not in (got.header("Connection") or "").lower()


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods_and_small_bodies(px, upstream, method):
    body = f"body for {method}".encode()
    r = request(px.port, method, "/echo", body=body)
    assert r.status == 200
    j = r.json()
    assert (j["method"], j["body_len"], j["body_sha256"]) == (method, len(body), sha256(body))


def test_client_max_body_size_default_is_1m(edge, upstream):
    e = edge(BASIC.replace("client_max_body_size 64m;", ""), UP=upstream)
    with Conn(e.port) as c:
        r = c.request("POST", "/echo", body=body_pattern(1024 * 1024))
        assert r.status == 200 and r.json()["body_len"] == 1024 * 1024
    with Conn(e.port) as c:
        c.send_request("POST", "/echo", headers=[("Content-Length", str(1024 * 1024 + 1))])
        r = c.read_response()  # answered from the Content-Length alone, before any body byte
        assert r.status == 413
    assert len(upstream.requests) == 1, "the oversized request was not forwarded"


def test_request_body_content_length_4mb(px, upstream):
    body = body_pattern(4_000_000)
    c = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
    c.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    j = json.loads(r.read())
    c.close()
    assert r.status == 200
    assert (j["body_len"], j["body_sha256"]) == (len(body), sha256(body))


def test_request_body_chunked_3mb(px, upstream):
    body = body_pattern(3_000_000)
    with Conn(px.port, timeout=30) as c:
        c.send_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")], body=chunked_encode(body))
        r = c.read_response()
        assert r.status == 200
        j = r.json()
        assert (j["body_len"], j["body_sha256"]) == (len(body), sha256(body))
        # the connection is still in sync for the next request
        r = c.request("GET", "/echo?after")
        assert r.json()["target"] == "/echo?after"


def test_request_body_curl_expect_100_continue(px, upstream, tmp_path):
    body = body_pattern(2_500_000)
    f = tmp_path / "body.bin"
    f.write_bytes(body)
    r = curl(f"http://127.0.0.1:{px.port}/echo", "--data-binary", f"@{f}",
             "-H", "Content-Type: application/octet-stream")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    j = json.loads(r.body)
    assert (j["body_len"], j["body_sha256"]) == (len(body), sha256(body))


def test_response_content_length_8mb(px):
    with Conn(px.port, timeout=30) as c:
        r = c.request("GET", "/bytes/8000000")
        assert r.status == 200
        assert r.header("Content-Length") == "8000000"
        assert r.body == body_pattern(8_000_000)
        r = c.request("HEAD", "/bytes/8000000")
        assert r.status == 200 and r.header("Content-Length") == "8000000" and r.body == b""
        r = c.request("GET", "/bytes/10")
        assert r.body == body_pattern(10)


def test_response_chunked_5mb(px):
    with Conn(px.port, timeout=30) as c:
        r = c.request("GET", "/chunked/5000000")
        assert r.status == 200
        assert r.body == body_pattern(5_000_000)
        assert r.framing == "chunked", "an HTTP/1.1 client gets a chunked body and keeps its connection"
        r = c.request("GET", "/chunked/0")
        assert (r.status, r.body) == (200, b"")
        r = c.request("GET", "/bytes/3")
        assert r.body == body_pattern(3)


def test_chunked_response_to_http10_client(px):
    with Conn(px.port, timeout=30) as c:
        r = c.request("GET", "/chunked/300000", version="HTTP/1.0")
        assert r.status == 200
        assert r.header("Transfer-Encoding") is None, "HTTP/1.0 clients do not get chunked"
        assert r.body == body_pattern(300_000)


def test_response_without_length(px):
    with Conn(px.port, timeout=30) as c:
        r = c.request("GET", "/nolength/300000")
        assert r.status == 200
        assert r.body == body_pattern(300_000)
        if r.framing != "close":
            r = c.request("GET", "/bytes/5")  # re-framed: the connection is still usable
            assert r.body == body_pattern(5)


def test_request_body_is_streamed(streaming, upstream):
    """With proxy_request_buffering off, the upstream receives body bytes before the
    client has sent all of them."""
    total = 8_000_000
    body = body_pattern(total)
    with Conn(streaming.port, timeout=30) as c:
        c.send(build_request("POST", "/echo", headers=[("Content-Length", str(total))]) + body[:1_000_000])
        deadline = time.monotonic() + 5
        while upstream.body_bytes_received == 0:
            assert time.monotonic() < deadline, "no body byte reached the upstream while the client was sending"
            time.sleep(0.01)
        assert upstream.body_bytes_received < total
        c.send(body[1_000_000:])
        r = c.read_response()
        j = r.json()
        assert (r.status, j["body_len"], j["body_sha256"]) == (200, total, sha256(body))


def test_response_body_is_streamed(streaming, upstream):
    """With proxy_buffering off, the client gets the first part of a response while the
    upstream still holds the rest."""
    n = 300_000
    gate = upstream.gate("g")
    with Conn(streaming.port, timeout=30) as c:
        c.send_request("GET", "/gated/g/%d" % n)
        version, status, reason, headers, raw = c.read_head()
        assert status == 200
        deadline = time.monotonic() + 5
        while len(c.buf) < n:
            assert time.monotonic() < deadline, f"only {len(c.buf)} of the first {n} body bytes arrived"
            c.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                assert c._fill(), "connection closed"
            except socket.timeout:
                pass
        c.sock.settimeout(30)
        gate.set()
        rest = c._read_exact(2 * n)
        assert rest == body_pattern(2 * n)


@pytest.mark.edge_only
def test_host_passed_through_by_default(px, upstream):
    get(px.port, "/echo", host="Client.Example:8443")
    assert upstream.last().header("Host") == "Client.Example:8443"


def test_proxy_set_header_host_override(edge, upstream):
    e = edge("""
http {
    upstream backend { server @UP@; keepalive 16; }
    server {
        listen 127.0.0.1:@PORT@;
        location /fixed/ { proxy_pass http://backend; proxy_set_header Host upstream.internal; }
        location /var/ { proxy_pass http://backend; proxy_set_header Host $host; }
    }
}
""", UP=upstream)
    get(e.port, "/fixed/echo", host="client.example:8443")
    assert upstream.last().header("Host") == "upstream.internal"
    get(e.port, "/var/echo", host="Client.Example:8443")
    assert upstream.last().header("Host") == "client.example"  # $host: lowercased, no port


@pytest.mark.edge_only
def test_forwarding_headers_set_by_default(px, upstream):
    get(px.port, "/echo")
    got = upstream.last()
    assert got.header("X-Forwarded-For") == "127.0.0.1"
    assert got.header("X-Real-IP") == "127.0.0.1"
    assert got.header("X-Forwarded-Proto") == "http"
    get(px.port, "/echo", headers=[("X-Forwarded-For", "1.2.3.4, 5.6.7.8"), ("X-Real-IP", "6.6.6.6"),
                                   ("X-Forwarded-Proto", "https")])
    got = upstream.last()
    assert got.header("X-Forwarded-For") == "1.2.3.4, 5.6.7.8, 127.0.0.1"
    assert got.header("X-Real-IP") == "127.0.0.1", "a client cannot spoof X-Real-IP"
    assert got.header("X-Forwarded-Proto") == "http", "a client cannot spoof X-Forwarded-Proto"


def test_proxy_set_header_variables(edge, upstream):
    e = edge("""
http {
    upstream backend { server @UP@; keepalive 16; }
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            proxy_pass http://backend;
            proxy_set_header X-Req-Uri $request_uri;
            proxy_set_header X-Remote $remote_addr;
            proxy_set_header X-Custom-Copy $http_x_custom;
            proxy_set_header X-Scheme $scheme;
            proxy_set_header X-Host $host;
            proxy_set_header X-Paxf $proxy_add_x_forwarded_for;
            proxy_set_header X-Static "static value";
            proxy_set_header X-Mixed "pre-$host-post";
            proxy_set_header X-Missing $http_x_not_sent;
            proxy_set_header X-Drop "";
        }
    }
}
""", UP=upstream)
    get(e.port, "/echo/p?x=%2F1", host="Foo.Test:99",
        headers=[("X-Custom", "cv"), ("X-Forwarded-For", "9.9.9.9"), ("X-Drop", "client value")])
    got = upstream.last()
    assert got.header("X-Req-Uri") == "/echo/p?x=%2F1"
    assert got.header("X-Remote") == "127.0.0.1"
    assert got.header("X-Custom-Copy") == "cv"
    assert got.header("X-Custom") == "cv"
    assert got.header("X-Scheme") == "http"
    assert got.header("X-Host") == "foo.test"
    assert got.header("X-Paxf") == "9.9.9.9, 127.0.0.1"
    assert got.header("X-Static") == "static value"
    assert got.header("X-Mixed") == "pre-foo.test-post"
    assert got.header_all("X-Missing") == [], "a header whose value is empty is not sent (nginx)"
    assert got.header_all("X-Drop") == [], 'proxy_set_header X "" removes the client\'s header'


HOP_REQUEST = ["Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade", "X-Secret-Hop"]


@pytest.mark.edge_only
def test_hop_by_hop_request_headers_removed(px, upstream):
    get(px.port, "/echo", headers=[
        ("Connection", "keep-alive, X-Secret-Hop"), ("Keep-Alive", "timeout=5"), ("X-Secret-Hop", "1"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-T"), ("Upgrade", "foo/1"),
        ("X-Normal", "kept")])
    got = upstream.last()
    for name in HOP_REQUEST:
        assert got.header_all(name) == [], f"hop-by-hop request header {name} reached the upstream"
    tokens = {t.strip().lower() for v in got.header_all("Connection") for t in v.split(",") if t.strip()}
    assert tokens <= {"keep-alive", "close"}, got.header_all("Connection")
    assert got.header("X-Normal") == "kept"


@pytest.mark.edge_only
def test_hop_by_hop_response_headers_removed(px):
    with Conn(px.port) as c:
        r = c.request("GET", "/hop")
        assert (r.status, r.body) == (200, b"hop\n")
        assert r.header("X-End-To-End") == "yes"
        for name in ["Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade", "X-Up-Hop"]:
            assert r.header_all(name) == [], f"hop-by-hop response header {name} reached the client: {r!r}"
        assert r.connection_tokens() <= {"keep-alive", "close"}, r.header_all("Connection")
        assert "close" not in r.connection_tokens()
        assert c.request("GET", "/bytes/4").body == body_pattern(4)


@pytest.mark.edge_only
def test_client_connection_close_does_not_close_upstream(px, upstream):
    for i in range(5):
        with Conn(px.port) as c:
            r = c.request("GET", f"/echo?{i}", headers=[("Connection", "close")])
            assert r.status == 200 and "close" in r.connection_tokens()
            assert c.wait_closed(5)
    for q in upstream.requests:
        assert "close" not in (q.header("Connection") or "").lower(), "the client's Connection: close was forwarded"
    assert upstream.connections == 1, "one worker, sequential requests: one pooled upstream connection"


def test_repeated_headers_pass_both_ways(px, upstream):
    with Conn(px.port) as c:
        c.send(b"GET /cookies HTTP/1.1\r\nHost: x\r\nX-Dup: one\r\nX-Dup: two\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert r.header_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert upstream.last().header_all("X-Dup") == ["one", "two"]


@pytest.mark.parametrize("status", [201, 301, 404, 500, 502, 503])
def test_upstream_status_passed_through(px, status):
    with Conn(px.port) as c:
        r = c.request("GET", f"/status/{status}")
        assert r.status == status
        assert r.body == b"status %d\n" % status
        assert r.header("X-Upstream") == "up", "the upstream's response, not one made by edge"
        r = c.request("GET", "/status/204")
        assert (r.status, r.body) == (204, b"")
        r = c.request("GET", "/bytes/7")
        assert r.body == body_pattern(7)


URI_CONF = """
http {
    upstream backend { server @UP@; keepalive 16; }
    server {
        listen 127.0.0.1:@PORT@;
        location /api/ { proxy_pass http://backend/v2/; }
        location /noslash { proxy_pass http://backend/echo; }
        location /keep/ { proxy_pass http://backend; }
        location /direct/ { proxy_pass http://@UP@/d/; }
        location /directkeep/ { proxy_pass http://@UP@; }
        location /rootrep/ { proxy_pass http://backend/; }
    }
}
"""


@pytest.mark.parametrize("uri,upstream_target", [
    ("/api/users?id=1", "/v2/users?id=1"),
    ("/api/", "/v2/"),
    ("/api/a/b/c", "/v2/a/b/c"),
    ("/noslash/x", "/echo/x"),
    ("/noslashy", "/echoy"),
    ("/keep/a/b?c=d", "/keep/a/b?c=d"),
    ("/keep/a%20b?x=%2F", "/keep/a%20b?x=%2F"),   # without a URI part: the request URI as sent
    ("/direct/z?q", "/d/z?q"),
    ("/directkeep/z", "/directkeep/z"),
    ("/rootrep/q/r", "/q/r"),
])
def test_proxy_pass_uri_replacement(edge, upstream, uri, upstream_target):
    e = edge(URI_CONF, UP=upstream)
    r = get(e.port, uri)
    assert r.status == 200
    assert upstream.last().target == upstream_target


@pytest.mark.edge_only
def test_upstream_keepalive_reuse_sequential(edge, upstream):
    e = edge(BASIC.replace("http {", "worker_processes 2;\nhttp {", 1), UP=upstream)
    e.wait_workers(2)
    n = 0
    for i in range(40):  # new client connection each time
        assert get(e.port, f"/echo?new-{i}").status == 200
        n += 1
    with Conn(e.port) as c:  # and many on one client connection
        for i in range(40):
            assert c.request("GET", f"/echo?same-{i}").status == 200
            n += 1
    assert len(upstream.requests) == n
    assert upstream.connections <= 2, \
        f"{n} sequential requests through 2 workers with keepalive 16 opened {upstream.connections} upstream connections"


def keepalive_clients(port: int, clients: int, requests: int) -> list:
    """`clients` keep-alive connections at once, each sending `requests` GETs one after
    the other; returns the failures (statuses other than 200, exceptions)."""
    errors = []

    def client(k):
        try:
            with Conn(port) as c:
                for i in range(requests):
                    r = c.request("GET", f"/echo?{k}-{i}")
                    if r.status != 200:
                        errors.append(r.status)
        except Exception as ex:  # noqa: BLE001 - reported by the caller
            errors.append(repr(ex))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


@pytest.mark.edge_only
def test_upstream_keepalive_reuse_concurrent(edge, upstream):
    e = edge(BASIC.replace("http {", "worker_processes 2;\nhttp {", 1), UP=upstream)
    e.wait_workers(2)
    assert keepalive_clients(e.port, clients=8, requests=25) == []
    assert len(upstream.requests) == 200
    assert upstream.connections <= 16, \
        f"200 requests, at most 8 in flight, 2 workers: {upstream.connections} upstream connections"


@pytest.mark.edge_only
def test_pool_over_keepalive_serves_the_next_requests_then_shrinks(edge, upstream):
    """`keepalive 2` and 6 clients, each sending 20 requests one after the other: the
    requests in flight hover between 0 and 6, above the bound. Connections that come back
    over it stay idle for about a second before they are closed (the least recently used
    first), so the next requests reuse them: the upstream sees at most 6 connections in
    all. nginx closes the least recently used one as soon as the cache exceeds the bound,
    and opens another for a later request (dozens here). Once the load stops, the pool
    shrinks back to `keepalive`: 2 connections stay open.

    Edge-only: the deliberate difference from nginx (docs/traffic.md)."""
    e = edge(BASIC.replace("keepalive 16;", "keepalive 2;"), UP=upstream)
    assert keepalive_clients(e.port, clients=6, requests=20) == []
    assert len(upstream.requests) == 120
    assert upstream.connections <= 6, \
        f"120 requests, at most 6 in flight: {upstream.connections} upstream connections were opened"

    def still_open():
        return sum(1 for rec in list(upstream.conns) if not rec.closed)

    deadline = time.monotonic() + 6
    while still_open() > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert still_open() == 2, f"{still_open()} upstream connections open after the load, keepalive is 2"
    assert get(e.port, "/echo?after").status == 200
    assert upstream.connections <= 6, "the pooled connections were not reused after the shrink"


def test_upstream_closing_connections(px, upstream):
    """An upstream that says Connection: close, or closes idle pooled connections, is
    handled: every request still gets its answer."""
    with Conn(px.port) as c:
        for i in range(10):
            target = "/close" if i % 2 else f"/echo?{i}"
            r = c.request("GET", target)
            assert r.status == 200, (i, r)
            if i % 2:
                assert r.body == b"closing\n"
            else:
                assert r.json()["target"] == target
    assert upstream.connections >= 5  # each /close really closed its connection


@pytest.mark.edge_only
def test_stale_pooled_connection_is_not_an_error(px, upstream):
    """A pooled upstream connection the upstream has closed is retried on a new one."""
    assert get(px.port, "/echo?1").status == 200
    for i in range(3):
        # the upstream drops its idle keep-alive connections (as on its own idle timeout)
        assert upstream.drop_connections() >= 1
        r = get(px.port, f"/echo?after-drop-{i}")
        assert r.status == 200, f"request after the upstream closed the pooled connection: {r!r}"


def test_weighted_round_robin(edge, upstream_factory):
    u1, u2 = upstream_factory("u1"), upstream_factory("u2")
    e = edge("""
http {
    upstream backend { server @U1@ weight=3; server @U2@ weight=1; keepalive 16; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
""", U1=u1, U2=u2)
    seen = [get(e.port, f"/echo?{i}").header("X-Upstream") for i in range(40)]
    c1, c2 = seen.count("u1"), seen.count("u2")
    assert c1 + c2 == 40
    assert 28 <= c1 <= 32 and 8 <= c2 <= 12, f"weight 3:1 over 40 requests gave u1={c1} u2={c2}"


def test_round_robin_equal_weights(edge, upstream_factory):
    ups = [upstream_factory(f"u{i}") for i in range(3)]
    e = edge("""
http {
    upstream backend { server @U0@; server @U1@; server @U2@; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
""", U0=ups[0], U1=ups[1], U2=ups[2])
    with Conn(e.port) as c:
        seen = [c.request("GET", f"/echo?{i}").header("X-Upstream") for i in range(30)]
    counts = [seen.count(f"u{i}") for i in range(3)]
    assert all(9 <= n <= 11 for n in counts), counts


def test_unreachable_upstream_is_502(edge):
    port = closed_port()
    e = edge("""
http {
    upstream dead { server 127.0.0.1:@DEAD@; }
    server {
        listen 127.0.0.1:@PORT@;
        location /group/ { proxy_pass http://dead; }
        location /direct/ { proxy_pass http://127.0.0.1:@DEAD@; }
    }
}
""", DEAD=port)
    with Conn(e.port) as c:
        r = c.request("GET", "/group/x")
        assert r.status == 502
        r = c.request("GET", "/direct/x")  # the client connection survives a 502
        assert r.status == 502
        assert int(r.header("Content-Length")) == len(r.body)


@pytest.mark.timeout(40)
def test_read_timeout_is_504(edge, blackhole):
    e = edge("""
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://@BH@; proxy_read_timeout 1s; }
    }
}
""", BH=blackhole)
    t0 = time.monotonic()
    with Conn(e.port, timeout=15) as c:
        r = c.request("GET", "/never")
        assert r.status == 504
        assert int(r.header("Content-Length")) == len(r.body)
    assert time.monotonic() - t0 < 10, "proxy_read_timeout 1s took far longer than 1s"
    assert blackhole.connections >= 1
    assert bytes(blackhole.conns[0].received).startswith(b"GET /never HTTP/1.")


def test_down_peer_is_skipped(edge, upstream):
    e = edge("""
http {
    upstream backend {
        server 127.0.0.1:@DEAD@ max_fails=1 fail_timeout=30s;
        server @UP@ max_fails=1 fail_timeout=30s;
        keepalive 16;
    }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
""", UP=upstream, DEAD=closed_port())
    for i in range(20):
        r = get(e.port, f"/echo?{i}")
        assert r.status == 200, f"request {i} failed although the other peer is up: {r!r}"
        assert r.header("X-Upstream") == "up"


def test_post_moves_to_the_next_peer_when_connect_fails(edge, upstream):
    """A refused connect sent nothing, so even a request with a body (a POST: not
    idempotent) goes to the next peer, as nginx's proxy_next_upstream error does; the
    body arrives whole, once."""
    e = edge("""
http {
    upstream backend {
        server 127.0.0.1:@DEAD@;
        server @UP@;
    }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
""", UP=upstream, DEAD=closed_port())
    body = body_pattern(50_000)
    for i in range(4):      # round robin: half of these try the dead peer first
        r = request(e.port, "POST", f"/echo?{i}", body=body)
        assert r.status == 200, f"request {i}: {r!r}"
        echo = json.loads(r.body)
        assert echo["body_len"] == len(body), echo


def test_failing_peer_marked_down(edge, upstream, slammer):
    """A peer that fails (accepts and closes) is tried again only after fail_timeout."""
    e = edge("""
http {
    upstream backend {
        server @SLAM@ max_fails=1 fail_timeout=30s;
        server @UP@;
        keepalive 16;
    }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
""", UP=upstream, SLAM=slammer)
    for i in range(20):
        r = get(e.port, f"/echo?{i}")
        assert r.status == 200, f"request {i}: {r!r}"
    assert slammer.connections >= 1, "the bad peer was never tried: the test proves nothing"
    assert slammer.connections <= 2, f"a peer down for 30s got {slammer.connections} attempts"


def test_pipelined_proxied_requests(px, upstream):
    reqs = [build_request("GET", f"/echo?i={i}") for i in range(8)]
    reqs.insert(3, build_request("POST", "/echo?i=post", body=body_pattern(50_000)))
    reqs.insert(6, build_request("HEAD", "/bytes/100"))
    with Conn(px.port, timeout=30) as c:
        c.send(b"".join(reqs))
        out = []
        for raw in reqs:
            method = raw.split(b" ", 1)[0].decode()
            out.append(c.read_response(method))
    assert [r.status for r in out] == [200] * 10
    assert out[3].json()["body_len"] == 50_000
    assert out[6].header("Content-Length") == "100" and out[6].body == b""
    got = [r.json()["target"] for i, r in enumerate(out) if i != 6]
    assert got == ["/echo?i=0", "/echo?i=1", "/echo?i=2", "/echo?i=post", "/echo?i=3", "/echo?i=4",
                   "/echo?i=5", "/echo?i=6", "/echo?i=7"]


def test_connection_close_lingers_over_unread_pipelined_bytes(px, upstream):
    """A `Connection: close` request followed by bytes the server does not read (a large
    pipelined tail), and a large response the client reads late: the server must
    half-close and drain the tail (lingering close), or its close would reset the
    connection and throw away the part of the response still in flight."""
    size = 3_000_000
    with Conn(px.port, timeout=30) as c:
        tail = build_request("POST", "/echo", body=b"p" * 300_000)
        c.send(build_request("GET", f"/bytes/{size}", headers=[("Connection", "close")]) + tail)
        time.sleep(0.5)             # the response fills the socket buffers meanwhile
        r = c.read_response()
        assert r.status == 200
        assert len(r.body) == size and r.body == body_pattern(size)
        assert "close" in r.connection_tokens()
        assert c.wait_closed(10)


def test_client_abort_mid_response(px, upstream):
    c = Conn(px.port, timeout=10)
    c.send_request("GET", "/bytes/50000000")
    got = 0
    while got < 200_000:
        got += len(c.sock.recv(65536))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # RST
    for i in range(5):
        r = get(px.port, f"/echo?after-abort-{i}")
        assert r.status == 200


ABORT = """
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://@UP@; @MODE@ @IGNORE@ }
    }
}
"""

GATED_N = 1000
GATED_HEAD_MAX = 400        # the test upstream's head, with either server's fields


def read_until_closed(c: Conn, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        c.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not c._fill():
                return bytes(c.buf)
        except socket.timeout:
            raise AssertionError(f"the connection is still open after {timeout}s ({len(c.buf)} bytes read)")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", ["default", "on"])
def test_client_fin_while_proxied(edge, upstream, mode, ignore):
    """The client closes its side (a FIN, as a close() sends it) after the upstream has
    sent the response head and the first part of the body, and before the rest. With
    proxy_ignore_client_abort off (the default) the request is abandoned: the connection
    closes without the rest (nginx buffered sends nothing at all, edge has sent the head
    and the first part). With it on, the client gets the whole response; it only
    half-closed, so it can still read."""
    e = edge(ABORT, UP=upstream, MODE=MODES[mode],
             IGNORE="proxy_ignore_client_abort on;" if ignore == "on" else "")
    gate = upstream.gate("fin")
    with Conn(e.port, timeout=10) as c:
        c.send_request("GET", f"/gated/fin/{GATED_N}")
        upstream.wait_requests(1)
        time.sleep(0.3)                     # the head and the first part reach the proxy
        c.sock.shutdown(socket.SHUT_WR)
        time.sleep(0.5)                     # the proxy sees the FIN
        gate.set()
        got = read_until_closed(c, 10)
    if ignore == "on":
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), got[:200]
        assert body == body_pattern(2 * GATED_N), f"{len(body)} body bytes"
    else:
        assert len(got) < GATED_HEAD_MAX + 2 * GATED_N, f"the whole response ({len(got)} bytes) reached a client that had closed"
        assert not got or got.startswith(b"HTTP/1.1 200"), got[:200]


@pytest.mark.parametrize("ignore", ["default", "on"])
def test_client_fin_before_the_response(edge, upstream, ignore):
    """The client closes its side while the upstream has not answered yet: abandoned
    (nothing sent, 499 in the log: test_access_log.py) by default; answered in full with
    proxy_ignore_client_abort on."""
    e = edge(ABORT, UP=upstream, MODE="", IGNORE="proxy_ignore_client_abort on;" if ignore == "on" else "")
    with Conn(e.port, timeout=10) as c:
        c.send_request("GET", "/slow/1")
        upstream.wait_requests(1)
        c.sock.shutdown(socket.SHUT_WR)
        got = read_until_closed(c, 10)
    if ignore == "on":
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"slow ok\n"), got
    else:
        assert got == b""


def test_concurrent_slow_requests(px, upstream):
    """One worker serves many slow upstream requests at once (it never blocks on one)."""
    results = []

    def one(i):
        try:
            results.append(get(px.port, "/slow/1", timeout=15).status)
        except Exception as ex:  # noqa: BLE001
            results.append(repr(ex))

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [200] * 20
    assert time.monotonic() - t0 < 8, "20 one-second upstream requests were served one after another"


@pytest.mark.timeout(40)
def test_connect_timeout_is_504(edge, tarpit, upstream):
    e = edge("""
http {
    server {
        listen 127.0.0.1:@PORT@;
        location /tarpit/ { proxy_pass http://@TP@; proxy_connect_timeout 1s; }
        location /ok/ { proxy_pass http://@UP@; }
    }
}
""", TP=tarpit, UP=upstream)
    t0 = time.monotonic()
    c = Conn(e.port, timeout=15)
    c.send_request("GET", "/tarpit/x")
    # the worker is not blocked by the pending connect
    assert get(e.port, "/ok/echo").status == 200
    r = c.read_response()
    c.close()
    assert r.status == 504
    assert time.monotonic() - t0 < 10, "proxy_connect_timeout 1s took far longer than 1s"


@pytest.mark.timeout(40)
def test_send_timeout_closes_a_client_that_does_not_read(edge, upstream):
    upstream.allow_errors = True  # the upstream's response is cut when edge gives up
    e = edge("""
http {
    send_timeout 1s;
    upstream backend { server @UP@; keepalive 16; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; proxy_read_timeout 30s; } }
}
""", UP=upstream)
    total = 200_000_000
    with Conn(e.port, timeout=15) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send_request("GET", f"/bytes/{total}")
        time.sleep(5)  # not a timing check: the client stalls well past send_timeout
        got = 0
        while True:
            try:
                data = c.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            got += len(data)
        assert got < total, "the whole response was delivered although the client stalled past send_timeout"


@pytest.mark.timeout(40)
@pytest.mark.parametrize("mode", MODES)
def test_client_body_timeout(edge, upstream, mode):
    upstream.allow_errors = True  # a streamed body is cut off at the upstream
    e = edge("""
http {
    client_body_timeout 1s;
    upstream backend { server @UP@; keepalive 16; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; @MODE@ } }
}
""", UP=upstream, MODE=MODES[mode])
    with Conn(e.port, timeout=15) as c:
        c.send(build_request("POST", "/echo", headers=[("Content-Length", "1000")]) + b"x" * 10)
        c.sock.settimeout(8)
        data = b""
        try:
            while True:
                chunk = c.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail("a stalled request body was not timed out by client_body_timeout 1s")
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert upstream.requests == [], "a request whose body stalled reached the upstream complete"
    if mode == "buffered":
        assert upstream.connections == 0, "a buffered request whose body stalled was sent upstream"


# -- hostile input: each gets a clear status, the connection is closed, and nothing
#    ambiguous reaches the upstream

SMUGGLING = [
    ("cl_and_te", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("two_lengths", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef", 400),
    ("signed_length", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nabcde", 400),
    ("unknown_coding", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 501),
    ("obs_fold", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("nul_in_header", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("space_in_target", b"GET /echo x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
]


@pytest.mark.parametrize("name,raw,status", SMUGGLING, ids=[s[0] for s in SMUGGLING])
def test_ambiguous_requests_rejected(px, upstream, name, raw, status):
    with Conn(px.port) as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == status, f"{name}: {r!r}"
        assert c.wait_closed(5), f"{name}: connection left open after {r.status}"
    assert upstream.requests == [], f"{name}: forwarded {upstream.requests[0].raw[:300]!r}"


@pytest.mark.parametrize("mode", MODES)
def test_bad_chunk_is_400(edge, upstream, mode):
    upstream.allow_errors = True  # a streamed body may be cut off at the upstream
    e = edge(BASIC.replace("proxy_pass http://backend;", "proxy_pass http://backend; " + MODES[mode]), UP=upstream)
    with Conn(e.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n")
        r = c.read_response()
        assert r.status == 400
        assert c.wait_closed(5)
    # a cut body must never reach the upstream as a complete request
    assert upstream.requests == [], upstream.requests[0].raw[:300]
    if mode == "buffered":
        # and a buffered one not even a connection (test_buffering.py has the full table)
        time.sleep(0.2)
        assert upstream.connections == 0 and upstream.body_bytes_received == 0
