"""Mirroring: `mirror URI`, `mirror_request_body`, `mirror_sample`, `internal`.

The mirror location proxies the copies: the mirror upstream receives each request, its
method, target, headers and body, while the client gets the main upstream's answer. The
configs are nginx's own idiom (an `internal` location with `proxy_pass
http://group$request_uri`), so EDGE_TEST_IMPL=nginx runs the same table; the tests about a
dead or stalled mirror are edge only, because nginx's main request waits for its mirror
subrequests and edge's never does.
"""

import json
import time

import pytest

from support import Conn, Upstream, closed_port, request
from support.recording import NonReader
from support.waiting import wait_for

CONF = """
http {
    upstream main_up { server @MAIN@; }
    upstream mirror_up { server @MIRROR@; }
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            mirror /mirror;
            @EXTRA@
            proxy_pass http://main_up;
        }
        location = /mirror {
            internal;
            proxy_pass http://mirror_up$request_uri;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }
    }
}
"""


@pytest.fixture
def main_up():
    s = Upstream("main").start()
    yield s
    s.stop()


@pytest.fixture
def mirror_up():
    s = Upstream("mirror").start()
    yield s
    s.stop()


def get_many(port, n, prefix, **kw):
    """n requests over keep-alive connections (a connection serves at most 1000)."""
    for start in range(0, n, 500):
        with Conn(port, timeout=5) as c:
            for i in range(start, min(n, start + 500)):
                r = c.request(kw.get("method", "GET"), f"/{prefix}{i}", body=kw.get("body"))
                assert r.status == 200, r


def test_mirror_receives_copies_with_bodies(edge, main_up, mirror_up):
    e = edge(CONF, MAIN=main_up, MIRROR=mirror_up, EXTRA="")
    r = request(e.port, "GET", "/a/b?x=1", headers=[("X-Trace", "t1")])
    assert r.status == 200 and json.loads(r.body)["server"] == "main"
    body = b"payload " * 5000         # larger than client_body_buffer_size: a temp file
    r = request(e.port, "POST", "/upload", body=body)
    assert r.status == 200 and json.loads(r.body)["body_len"] == len(body)
    wait_for(lambda: len(mirror_up.requests) == 2)
    get, post = sorted(mirror_up.requests, key=lambda q: q.method)
    assert (get.method, get.target) == ("GET", "/a/b?x=1")
    assert get.header("X-Trace") == "t1"
    assert (post.method, post.target) == ("POST", "/upload")
    assert post.body == body


def test_small_body_copied(edge, main_up, mirror_up):
    e = edge(CONF, MAIN=main_up, MIRROR=mirror_up, EXTRA="")
    assert request(e.port, "PUT", "/k", body=b"small").status == 200
    wait_for(lambda: len(mirror_up.requests) == 1)
    assert mirror_up.requests[0].body == b"small"
    assert main_up.requests[0].body == b"small"


@pytest.mark.edge_only
def test_mirror_request_body_off(edge, main_up, mirror_up):
    """The copy has no body and no Content-Length. nginx keeps the client's
    Content-Length on a copy without its body (hence the usual `proxy_pass_request_body
    off; proxy_set_header Content-Length "";` in nginx mirror locations), which leaves a
    strict upstream waiting for a body that never comes."""
    e = edge(CONF, MAIN=main_up, MIRROR=mirror_up, EXTRA="mirror_request_body off;")
    assert request(e.port, "POST", "/k", body=b"not copied").status == 200
    wait_for(lambda: len(mirror_up.requests) == 1)
    assert mirror_up.requests[0].body == b""
    assert main_up.requests[0].body == b"not copied"


def test_internal_location_is_404_to_clients(edge, main_up, mirror_up):
    e = edge(CONF, MAIN=main_up, MIRROR=mirror_up, EXTRA="")
    assert request(e.port, "GET", "/mirror").status == 404
    time.sleep(0.3)
    assert len(main_up.requests) == 0 and len(mirror_up.requests) == 0


@pytest.mark.edge_only
def test_mirror_sample(edge, main_up, mirror_up):
    e = edge(CONF, MAIN=main_up, MIRROR=mirror_up, EXTRA="mirror_sample 25%;")
    get_many(e.port, 2000, "s")
    time.sleep(0.5)
    assert 400 <= len(mirror_up.requests) <= 600, len(mirror_up.requests)


@pytest.mark.edge_only
def test_dead_mirror_costs_the_main_route_nothing(edge, main_up):
    e = edge(CONF, MAIN=main_up, MIRROR=f"127.0.0.1:{closed_port()}", EXTRA="")
    get_many(e.port, 300, "d", method="POST", body=b"x" * 100)
    assert len(main_up.requests) == 300


@pytest.mark.edge_only
@pytest.mark.timeout(60)
def test_stalled_mirror_never_holds_the_main_request(edge, main_up):
    """The mirror accepts and never answers: every main request still completes at
    once (nginx's would wait for the subrequest), and once the worker's mirror
    connections and queue are full, further copies are dropped and counted."""
    stalled = NonReader("stalled").start()
    try:
        conf = CONF.replace("http {", "http { admin_listen 127.0.0.1:@PORT2@;", 1)
        e = edge(conf, MAIN=main_up, MIRROR=stalled, EXTRA="")
        get_many(e.port, 1300, "m")
        from test_metrics import scrape, value
        deadline = time.monotonic() + 5
        while True:
            samples = scrape(e.ports["PORT2"])
            dropped = value(samples, "edge_mirror_requests_total", mirror="/mirror", result="dropped")
            if dropped > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # 64 in flight and 1024 waiting per worker: the rest of 1300 dropped
        assert dropped >= 1300 - (64 + 1024), samples     # worker_processes 1
    finally:
        stalled.stop()


@pytest.mark.edge_only
def test_mirror_to_a_location_without_proxy_is_refused(tmp_path):
    from support.edge import EdgeProcess
    conf = CONF.replace("proxy_pass http://mirror_up$request_uri;", "return 204;")
    e = EdgeProcess(tmp_path, conf, {"MAIN": "127.0.0.1:1", "MIRROR": "127.0.0.1:2", "EXTRA": "",
                                     "PORT": closed_port()})
    e.spawn()
    try:
        assert e.wait_exit(10) == 1, e.report()
        out = e.output() + e.error_log
        assert 'mirror "/mirror" selects no location with "proxy_pass"' in out, out
        assert f"{e.conf_path}:{e.line_of('mirror /mirror')}" in out, out
    finally:
        e.kill_group()
