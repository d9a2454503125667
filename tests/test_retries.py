"""Retries on the next peer: `proxy_next_upstream` per condition (error, timeout,
invalid_header, http_NNN, non_idempotent, off), `proxy_next_upstream_tries` and
`proxy_next_upstream_timeout`, and a streamed body never sent twice.

Two peers: `first` (scripted to fail in the way a test needs) and `second` (a healthy
echo server). `first` has weight 100, so smooth weighted round robin tries it first on
every request of these short tests, in edge and in nginx alike. nginx is the oracle:
EDGE_TEST_IMPL=nginx runs the same table (its upstream keep-alive needs
`proxy_http_version 1.1`, which edge always speaks; the configs here use no keepalive).
"""

import json
import socket
import threading
import time

import pytest

from support import Conn, Upstream, build_request, closed_port, request
from support.edge import EdgeProcess
from support.recording import ScriptedUpstream

CONF = """
http {
    upstream backend {
        server @FIRST@ weight=100;
        server @SECOND@;
    }
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            proxy_pass http://backend;
            proxy_read_timeout 1s;
            @EXTRA@
        }
    }
}
"""

RESPONSE_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
RESPONSE_404 = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnone\n"
RESPONSE_429 = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 5\r\nConnection: close\r\n\r\nslow\n"
# a header line with no colon: nginx and edge both call it an invalid header (a status
# line that does not parse would be an HTTP/0.9 response to nginx, passed on as it is)
RESPONSE_BAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nno colon here\r\n\r\nok"


@pytest.fixture
def first():
    s = ScriptedUpstream("first").start()
    yield s
    s.stop()


@pytest.fixture
def second():
    s = Upstream("second").start()
    yield s
    s.stop()


def start(edge, first, second, extra=""):
    return edge(CONF, FIRST=first, SECOND=second, EXTRA=extra)


def served_by(r):
    """Which peer's answer the client got: the echo server says its name."""
    if r.status == 200 and r.body.startswith(b"{"):
        return json.loads(r.body)["server"]
    return "first"


def tries_at_first(first, path):
    return sum(1 for h in first.heads if h.split(b" ", 2)[1].split(b"?")[0] == path.encode())


# -- per condition ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST"])
def test_error_default_goes_to_the_next_peer(edge, second, method):
    """A refused connect sent nothing: any method goes on (`error` is in the default)."""
    e = edge(CONF, FIRST=f"127.0.0.1:{closed_port()}", SECOND=second, EXTRA="")
    r = request(e.port, method, "/x", body=b"abc" if method == "POST" else None)
    assert r.status == 200 and served_by(r) == "second", r


def test_off_answers_502_on_a_refused_connect(edge, second):
    e = edge(CONF, FIRST=f"127.0.0.1:{closed_port()}", SECOND=second, EXTRA="proxy_next_upstream off;")
    r = request(e.port, "GET", "/x")
    assert r.status == 502
    assert len(second.requests) == 0


def test_status_not_listed_is_passed_through(edge, first, second):
    first.script["/x"] = RESPONSE_503
    e = start(edge, first, second)
    r = request(e.port, "GET", "/x")
    assert r.status == 503 and r.body == b"busy\n"
    assert len(second.requests) == 0


@pytest.mark.parametrize("status,response", [(503, RESPONSE_503), (404, RESPONSE_404), (429, RESPONSE_429)])
def test_listed_status_goes_to_the_next_peer(edge, first, second, status, response):
    first.script["/x"] = response
    e = start(edge, first, second, f"proxy_next_upstream error timeout http_{status};")
    r = request(e.port, "GET", "/x")
    assert r.status == 200 and served_by(r) == "second", r
    assert tries_at_first(first, "/x") == 1


def test_listed_status_is_returned_when_no_peer_is_left(edge, first):
    """The last peer's own answer reaches the client, not a 502."""
    first.script["/x"] = RESPONSE_503
    e = edge("""
http {
    upstream backend { server @FIRST@; }
    server { listen 127.0.0.1:@PORT@;
             location / { proxy_pass http://backend; proxy_next_upstream error http_503; } }
}
""", FIRST=first)
    r = request(e.port, "GET", "/x")
    assert r.status == 503 and r.body == b"busy\n"


def test_post_with_listed_status_is_not_sent_again(edge, first, second):
    """The POST reached `first`: without non_idempotent it is not replayed."""
    first.script["/x"] = RESPONSE_503
    e = start(edge, first, second, "proxy_next_upstream error timeout http_503;")
    r = request(e.port, "POST", "/x", body=b"payload")
    assert r.status == 503
    assert len(second.requests) == 0


def test_post_with_non_idempotent_is_sent_again_with_its_body(edge, first, second):
    first.script["/x"] = RESPONSE_503
    e = start(edge, first, second, "proxy_next_upstream error timeout http_503 non_idempotent;")
    body = b"payload " * 1000
    r = request(e.port, "POST", "/x", body=body)
    assert r.status == 200 and served_by(r) == "second", r
    assert second.requests[0].body == body


def _hold(sock, head):
    """A peer that reads the request and never answers (proxy_read_timeout fires)."""
    time.sleep(3)
    return False


@pytest.mark.timeout(30)
def test_read_timeout_goes_to_the_next_peer_for_get(edge, first, second):
    first.script["/x"] = _hold
    e = start(edge, first, second)
    r = request(e.port, "GET", "/x")
    assert r.status == 200 and served_by(r) == "second", r


@pytest.mark.timeout(30)
def test_read_timeout_on_a_post_is_504(edge, first, second):
    first.script["/x"] = _hold
    e = start(edge, first, second)
    r = request(e.port, "POST", "/x", body=b"abc")
    assert r.status == 504
    assert len(second.requests) == 0


@pytest.mark.timeout(30)
def test_timeout_not_listed_is_504(edge, first, second):
    first.script["/x"] = _hold
    e = start(edge, first, second, "proxy_next_upstream error;")
    r = request(e.port, "GET", "/x")
    assert r.status == 504
    assert len(second.requests) == 0


def test_invalid_header_only_when_listed(edge, first, second):
    first.script["/x"] = RESPONSE_BAD
    e = start(edge, first, second)
    assert request(e.port, "GET", "/x").status == 502      # not in the default
    e2 = start(edge, first, second, "proxy_next_upstream error timeout invalid_header;")
    r = request(e2.port, "GET", "/x")
    assert r.status == 200 and served_by(r) == "second", r


# -- limits -------------------------------------------------------------------------------

def test_tries_limit(edge):
    """Three peers answering 503, tries 2: two of them are asked, the client gets the
    second one's 503."""
    peers = [ScriptedUpstream(f"p{i}").start() for i in range(3)]
    try:
        for p in peers:
            p.script["/x"] = RESPONSE_503
        e = edge("""
http {
    upstream backend { server @P0@; server @P1@; server @P2@; }
    server { listen 127.0.0.1:@PORT@;
             location / { proxy_pass http://backend;
                          proxy_next_upstream http_503; proxy_next_upstream_tries 2; } }
}
""", P0=peers[0], P1=peers[1], P2=peers[2])
        r = request(e.port, "GET", "/x")
        assert r.status == 503
        assert sum(len(p.heads) for p in peers) == 2
    finally:
        for p in peers:
            p.stop()


@pytest.mark.timeout(30)
def test_timeout_limit(edge, first, second):
    """The first try takes the whole proxy_next_upstream_timeout: no second try."""
    first.script["/x"] = _hold
    e = start(edge, first, second, "proxy_next_upstream_timeout 500ms;")
    r = request(e.port, "GET", "/x")
    assert r.status == 504
    assert len(second.requests) == 0


# -- bodies -------------------------------------------------------------------------------

def test_streamed_body_is_never_sent_again(edge, first, second):
    """proxy_request_buffering off: the body goes to `first` as it comes, so even with
    non_idempotent it cannot be sent again; the client gets first's answer."""
    first.script["/x"] = RESPONSE_503
    e = start(edge, first, second,
              "proxy_request_buffering off; proxy_next_upstream error http_503 non_idempotent;")
    body = b"streamed body " * 1000
    with Conn(e.port, timeout=10) as c:
        c.send(build_request("POST", "/x", headers=[("Content-Length", str(len(body)))]) + body[:5000])
        deadline = time.monotonic() + 5
        while not (first.conns and first.conns[0].received) and time.monotonic() < deadline:
            time.sleep(0.02)        # `first` has the head and part of the body
        c.send(body[5000:])
        r = c.read_response()
    assert r.status == 503
    assert len(second.requests) == 0


def test_unbuffered_body_read_with_the_head_can_be_sent_again(edge, first, second):
    """With proxy_request_buffering off, a body that came whole with the head is held
    whole anyway (nginx does the same), so it can go to the next peer."""
    first.script["/x"] = RESPONSE_503
    e = start(edge, first, second,
              "proxy_request_buffering off; proxy_next_upstream error http_503 non_idempotent;")
    r = request(e.port, "POST", "/x", body=b"small body")
    assert r.status == 200 and served_by(r) == "second", r
    assert second.requests[0].body == b"small body"


def test_upstream_status_lists_every_try(edge, first, second, tmp_path):
    """$upstream_status and $upstream_addr show both tries, as nginx's "503, 200"."""
    first.script["/x"] = RESPONSE_503
    log = tmp_path / "access.log"
    e = edge(CONF.replace("http {", 'http { log_format t "$upstream_status|$upstream_addr";', 1),
             FIRST=first, SECOND=second, EXTRA=f"proxy_next_upstream error http_503; access_log {log} t;")
    assert request(e.port, "GET", "/x").status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    statuses, addrs = log.read_text().strip().splitlines()[-1].split("|")
    assert statuses == "503, 200"
    assert addrs == f"{first.addr}, {second.addr}"


# -- config -------------------------------------------------------------------------------

@pytest.mark.parametrize("args", ["bogus", "http_418", "error bogus"])
def test_bad_values_are_refused_with_file_and_line(tmp_path, args):
    e = EdgeProcess(tmp_path, CONF, {"FIRST": "127.0.0.1:1", "SECOND": "127.0.0.1:2",
                                     "PORT": closed_port(), "EXTRA": f"proxy_next_upstream {args};"})
    e.spawn()
    try:
        assert e.wait_exit(10) == 1, e.report()
        out = e.output() + e.error_log
        bad = [a for a in args.split() if a not in ("error",)][0]
        assert f'invalid value "{bad}"' in out, out
        assert f"{e.conf_path}:{e.line_of('proxy_next_upstream')}" in out, out
    finally:
        e.kill_group()


def test_off_wins_over_other_values(edge, second):
    """nginx accepts `off` with other values, and `off` wins."""
    e = edge(CONF, FIRST=f"127.0.0.1:{closed_port()}", SECOND=second,
             EXTRA="proxy_next_upstream off error;")
    assert request(e.port, "GET", "/x").status == 502
