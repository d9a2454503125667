"""Prometheus metrics from the workers' slots in shared memory, summed by the control
process: exact counts per server, route and status across workers and in-place reloads,
labels bounded by the config, histograms, bytes, connection gauges, peer state."""

import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.client import Conn, get

pytestmark = pytest.mark.edge_only

CONFIG = """
    worker_processes 2;
    http {
        admin_listen 127.0.0.1:@PORT2@;
        upstream api { server @UP@; keepalive 8; }
        upstream dead { server 127.0.0.1:1 max_fails=1 fail_timeout=30s; }
        server {
            listen 127.0.0.1:@PORT@;
            server_name shop.test;
            location /api/ { route_name api; proxy_pass http://api/; }
            location = /ping { return 200 "pong"; }
            location /dead/ { proxy_pass http://dead; }
            location ~ ^/v\\d/ { return 204; }
        }
    }"""


def scrape(admin_port):
    deadline = time.monotonic() + 10
    while True:     # the control process may still be starting its listener
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = r.read().decode()
            break
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def requests_by(samples, server="shop.test"):
    out = {}
    for (name, labels), v in samples.items():
        d = dict(labels)
        if name == "edge_http_requests_total" and d.get("server") == server and v:
            out[(d["route"], d["code"])] = out.get((d["route"], d["code"]), 0) + v
    return out


def spread(port, plan):
    """Send the requests of `plan` [(target, times)] over several fresh connections, so
    that both workers serve some (SO_REUSEPORT hashes connections)."""
    for target, times in plan:
        for i in range(times):
            with Conn(port) as c:
                r = c.request("GET", target, host="shop.test")
                assert r.status in (200, 204, 404, 502), (target, r.status)


@pytest.mark.timeout(90)
def test_known_mix_is_counted_exactly_across_workers_and_reload(edge, upstream, tmp_path):
    e = edge(CONFIG, UP=upstream)
    admin = e.ports["PORT2"]
    plan = [("/api/items", 30), ("/ping", 25), ("/nowhere", 12), ("/dead/x", 6), ("/v2/x", 9)]
    spread(e.port, plan)
    # a bad request, answered before routing: the default server's route ""
    with socket.create_connection(("127.0.0.1", e.port)) as s:
        s.sendall(b"BROKEN\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    # a client that gives up while the upstream works: 499
    with socket.create_connection(("127.0.0.1", e.port)) as s:
        s.sendall(b"GET /api/slow/2 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        deadline = time.monotonic() + 5
        while not any(r.path.endswith("/slow/2") for r in upstream.requests) and time.monotonic() < deadline:
            time.sleep(0.01)
    want = {("api", "200"): 30, ("= /ping", "200"): 25, ("", "404"): 12, ("/dead/", "502"): 6,
            ("~ ^/v\\d/", "204"): 9, ("", "400"): 1, ("api", "499"): 1}
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(admin)
        if requests_by(samples) == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert requests_by(samples) == want

    # both workers served: their slots are summed
    pids = e.worker_pids()
    assert len(pids) == 2

    # histogram and counters agree with the request counts
    for route, total in (("api", 31), ("= /ping", 25), ("/dead/", 6), ("", 13)):
        count = value(samples, "edge_http_request_duration_seconds_count", server="shop.test", route=route)
        inf = value(samples, "edge_http_request_duration_seconds_bucket", server="shop.test", route=route, le="+Inf")
        assert count == total and inf == total, (route, count, inf)
        assert value(samples, "edge_http_received_bytes_total", server="shop.test", route=route) > 0
        assert value(samples, "edge_http_sent_bytes_total", server="shop.test", route=route) > 0
    buckets = sorted((float(dict(l)["le"]), v) for (n, l), v in samples.items()
                     if n == "edge_http_request_duration_seconds_bucket" and dict(l)["route"] == "api")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)     # cumulative
    assert value(samples, "edge_upstream_response_duration_seconds_count", upstream="api") >= 31
    assert value(samples, "edge_upstream_peer_failures_total", upstream="dead", peer="127.0.0.1:1") == 6
    assert value(samples, "edge_upstream_peer_up", upstream="dead", peer="127.0.0.1:1") == 0
    assert value(samples, "edge_upstream_peer_up", upstream="api", peer=upstream.addr) == 1

    # an in-place reload (same workers): counts go on from where they were
    e.conf_path.write_text(e.conf_text.replace(
        "location = /ping", 'location = /new { return 200 "new"; }\n            location = /ping'))
    e.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while value(scrape(admin), "edge_config_generation") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert e.worker_pids() == pids
    spread(e.port, [("/api/items", 10), ("/ping", 5), ("/new", 4)])
    want[("api", "200")] += 10
    want[("= /ping", "200")] += 5
    want[("= /new", "200")] = 4
    deadline = time.monotonic() + 5
    while requests_by(scrape(admin)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    samples = scrape(admin)
    assert requests_by(samples) == want
    assert value(samples, "edge_config_reloads_total", result="ok") == 1


@pytest.mark.timeout(90)
def test_distinct_paths_add_no_series(edge, upstream):
    e = edge(CONFIG, UP=upstream)
    admin = e.ports["PORT2"]
    get(e.port, "/api/warm", host="shop.test")
    get(e.port, "/nothing", host="shop.test")
    before = scrape(admin)
    series_before = {k for k in before if k[0].startswith("edge_http")}

    def hammer(offset):
        for start in range(0, 2500, 500):       # under keepalive_requests per connection
            with Conn(e.port) as c:
                for i in range(start, start + 500):
                    path = "/api/p%d" % (offset + i) if i % 2 else "/nothing/%d" % (offset + i)
                    assert c.request("GET", path, host="shop.test").status in (200, 404)

    threads = [threading.Thread(target=hammer, args=(k * 10000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = scrape(admin)
    series_after = {k for k in after if k[0].startswith("edge_http")}
    assert series_after == series_before      # 10,000 distinct paths: not one new series
    total = requests_by(after)
    assert total[("api", "200")] == 1 + 5000 and total[("", "404")] == 1 + 5000


def test_connection_gauges(edge, upstream):
    e = edge(CONFIG, UP=upstream)
    admin = e.ports["PORT2"]
    idle = [Conn(e.port) for _ in range(5)]
    reading = [socket.create_connection(("127.0.0.1", e.port)) for _ in range(3)]
    try:
        for c in idle:
            assert c.request("GET", "/ping", host="shop.test").status == 200
        for s in reading:
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: sh")     # a head that has begun
        deadline = time.monotonic() + 5
        while True:
            samples = scrape(admin)
            got = {state: value(samples, "edge_connections", state=state)
                   for state in ("active", "reading", "writing", "idle")}
            if (got["idle"], got["reading"]) == (5, 3) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got["idle"] == 5 and got["reading"] == 3
        assert got["active"] == 8 and got["writing"] == 0
    finally:
        for c in idle:
            c.close()
        for s in reading:
            s.close()


def test_worker_restart_keeps_counts(edge, upstream):
    e = edge(CONFIG, UP=upstream)
    admin = e.ports["PORT2"]
    spread(e.port, [("/ping", 20)])
    victim = e.worker_pids()[0]
    import os
    os.kill(victim, signal.SIGKILL)
    e.wait_workers(2, exclude=[victim])
    spread(e.port, [("/ping", 7)])
    deadline = time.monotonic() + 5
    while requests_by(scrape(admin)).get(("= /ping", "200")) != 27 and time.monotonic() < deadline:
        time.sleep(0.05)
    samples = scrape(admin)
    assert requests_by(samples)[("= /ping", "200")] == 27
    assert value(samples, "edge_worker_restarts_total") == 1
