"""Active health checks (`health_check` in `upstream`), run by the control process, the
verdicts read by the workers from shared memory (docs/traffic.md, "Health checks").

- a peer killed under load is ejected (no request fails: a refused connect is retried on
  the other peer), logged, reported in /metrics and /status, and restored by the checks
  within passes x interval (plus the time to notice) after it comes back;
- http checks: uri, host, the default 2xx/3xx rule and status=LIST; tcp checks;
- until its first completed check (or `fails` failures) a peer counts as up;
- a reload that drops `health_check` releases the peers it held down;
- config errors name file:line.

nginx OSS has no active health checks (nginx plus's health_check is what this follows),
so the module is edge_only.
"""

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import ConfigError, parse_string
from edge import cycle as cycle_module
from support.client import Conn
from support.load import Load
from support.upstream import Blackhole, Upstream
from support.waiting import wait_for as wait_until

pytestmark = pytest.mark.edge_only

INTERVAL = 0.3          # seconds, the interval= of these tests


def admin_get(e, path):
    deadline = time.monotonic() + 10
    while True:     # the control process may still be starting its listener
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{e.ports['PORT2']}{path}",
                                        timeout=5) as r:
                return r.read().decode()
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def peer_up(e):
    """{(upstream, peer): value} of edge_upstream_peer_up."""
    out = {}
    for family in text_string_to_metric_families(admin_get(e, "/metrics")):
        for s in family.samples:
            if s.name == "edge_upstream_peer_up":
                out[(s.labels["upstream"], s.labels["peer"])] = s.value
    return out


def peer_status(e, group, peer):
    doc = json.loads(admin_get(e, "/status"))
    for entry in doc["upstreams"].get(group, {}).get("peers", []):
        if entry["peer"] == peer:
            return entry
    return None


def wait_for(what, predicate, timeout):
    return wait_until(predicate, timeout, what, interval=0.05)


def reload(e, applied, **subst):
    """Rewrite the config with new token values, HUP, and wait until the control process
    applied it (`applied(/status document)` true)."""
    e.subst.update({k: str(v) for k, v in subst.items()})
    e.conf_text = e.render()
    tmp = e.conf_path.with_suffix(".tmp")
    tmp.write_text(e.conf_text)
    os.replace(tmp, e.conf_path)
    e.send_signal(signal.SIGHUP)
    wait_for("the control process to apply the reload",
             lambda: applied(json.loads(admin_get(e, "/status"))), 15)


def health_of(e, group, peer):
    entry = peer_status(e, group, peer)
    return entry and entry["health"]


KILL_CONF = """
worker_processes 2;
http {
    admin_listen 127.0.0.1:@PORT2@;
    upstream backend {
        @BALANCER@
        server @A@;
        server @B@;
        health_check interval=300ms fails=1 passes=2;
    }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://backend; }
    }
}
"""


# every balancer asks the same peer_available(), which reads the check's verdict
@pytest.mark.timeout(120)
@pytest.mark.parametrize("balancer", ["", "least_conn;", "random two;", "ewma;"])
def test_peer_killed_under_load_is_ejected_then_restored_by_the_check(edge, upstream_factory,
                                                                      balancer):
    a = upstream_factory("a")
    b = upstream_factory("b")
    e = edge(KILL_CONF, A=a.addr, B=b.addr, BALANCER=balancer)
    wait_for("both peers checked up", lambda: health_of(e, "backend", a.addr) == "up"
             and health_of(e, "backend", b.addr) == "up", 10)
    assert peer_up(e) == {("backend", a.addr): 1, ("backend", b.addr): 1}

    with Load(e.port) as load:
        assert load.wait_ok(100)
        b.stop()                                    # killed under load
        wait_for("b marked down", lambda: health_of(e, "backend", b.addr) == "down", 10)
        assert peer_up(e)[("backend", b.addr)] == 0
        assert peer_up(e)[("backend", a.addr)] == 1
        entry = peer_status(e, "backend", b.addr)
        assert entry["last_error"] == "connect refused"
        assert load.wait_ok(200)                    # served by a alone meanwhile

        b2 = Upstream("b", port=b.port).start()     # comes back on the same address
        try:
            # passes=2: two rounds of checks, each INTERVAL apart; the bound adds the
            # round already under way and slack for a loaded machine
            wait_for("b checked up", lambda: health_of(e, "backend", b.addr) == "up",
                     2 * INTERVAL + INTERVAL + 3.0)
            assert peer_status(e, "backend", b.addr)["consecutive_passes"] >= 2
            # the metric also sums the workers' passive state, which the first pick after
            # the new verdict clears (the load keeps picking)
            wait_for("b up in /metrics", lambda: peer_up(e).get(("backend", b.addr)) == 1, 5)
            # and traffic goes back to it (the passive ejection ends with the new verdict)
            wait_for("b serves again", lambda: len(b2.requests) > 0, 10)
        finally:
            b2.stop()
    stats = load.stats
    assert stats.failures == [], stats.summary()
    assert stats.ok > 300

    log = e.error_log
    assert f'upstream "backend" peer {b.addr} is down (health check: connect refused)' in log
    assert f'upstream "backend" peer {b.addr} is up (health check)' in log
    assert log.count(f'upstream "backend" peer {b.addr} is down') == 1


STATUS_CONF = """
http {
    admin_listen 127.0.0.1:@PORT2@;
    upstream plain { server @A@; health_check uri=/status/503 interval=300ms; }
    upstream listed { server @A@; health_check uri=/status/503 status=500-502,503 host=svc.test interval=300ms; }
    upstream redirect { server @A@; health_check uri=/status/302 interval=300ms; }
    upstream notfound { server @A@; health_check uri=/status/404 interval=300ms; }
    server {
        listen 127.0.0.1:@PORT@;
        location /plain/ { proxy_pass http://plain; }
        location /listed/ { proxy_pass http://listed; }
    }
}
"""


def test_http_check_default_statuses_and_status_list(edge, upstream):
    e = edge(STATUS_CONF, A=upstream.addr)
    verdicts = wait_for("all four checked", lambda: (lambda v: v if None not in v.values()
                                                   and "unchecked" not in v.values() else None)(
        {g: health_of(e, g, upstream.addr) for g in ("plain", "listed", "redirect", "notfound")}), 10)
    # default: 2xx and 3xx pass; status= replaces that rule
    assert verdicts == {"plain": "down", "listed": "up", "redirect": "up", "notfound": "down"}
    assert peer_status(e, "plain", upstream.addr)["last_error"] == "status 503"
    ups = peer_up(e)
    assert ups[("plain", upstream.addr)] == 0 and ups[("listed", upstream.addr)] == 1

    # the check's request: GET uri, Host the group's name unless host= is given
    checks = [r for r in upstream.requests if r.header("User-Agent") == "edge-health-check"]
    hosts = {(r.method, r.target, r.header("Host")) for r in checks}
    assert ("GET", "/status/503", "plain") in hosts
    assert ("GET", "/status/503", "svc.test") in hosts

    # a group whose only peer the check holds down answers 502; the other one serves
    with Conn(e.port) as c:
        assert c.request("GET", "/plain/x").status == 502
    with Conn(e.port) as c:
        assert c.request("GET", "/listed/x").status == 200
    assert "no live upstreams" in e.error_log


TCP_CONF = """
http {
    admin_listen 127.0.0.1:@PORT2@;
    upstream tcp { server @HOLE@; health_check type=tcp interval=300ms; }
    upstream http { server @HOLE@; health_check interval=300ms timeout=300ms; }
    server { listen 127.0.0.1:@PORT@; location / { return 204; } }
}
"""


def test_tcp_check_needs_only_a_connect(edge, blackhole):
    # a server that accepts connections and never answers: up for a tcp check, down for
    # an http check that times out
    e = edge(TCP_CONF, HOLE=blackhole.addr)
    wait_for("tcp up", lambda: health_of(e, "tcp", blackhole.addr) == "up", 10)
    wait_for("http down", lambda: health_of(e, "http", blackhole.addr) == "down", 10)
    assert peer_status(e, "http", blackhole.addr)["last_error"] == "timed out waiting for the response"
    assert peer_up(e) == {("tcp", blackhole.addr): 1, ("http", blackhole.addr): 0}


FAILS_CONF = """
http {
    admin_listen 127.0.0.1:@PORT2@;
    upstream slow_to_judge { server @DEAD@ max_fails=0; health_check interval=1h fails=3; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://slow_to_judge; } }
}
"""


def test_a_peer_counts_up_until_fails_checks_failed(edge, upstream_factory):
    dead = upstream_factory("dead")
    dead.stop()                 # a port nobody listens on
    e = edge(FAILS_CONF, DEAD=dead.addr)
    entry = wait_for("the first check", lambda: (lambda s: s if s and s.get("checks") else None)(
        peer_status(e, "slow_to_judge", dead.addr)), 10)
    assert entry["consecutive_fails"] == 1 and entry["health"] == "unchecked"
    assert peer_up(e)[("slow_to_judge", dead.addr)] == 1
    # still tried by the workers (and refused there): not held down by the check
    with Conn(e.port) as c:
        assert c.request("GET", "/").status == 502
    assert "no live upstreams" not in e.error_log


RELOAD_CONF = """
http {
    admin_listen 127.0.0.1:@PORT2@;
    upstream backend { server @A@ max_fails=0; server @DEAD@ max_fails=0; @HC@ }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
"""


@pytest.mark.timeout(60)
def test_reload_keeps_the_verdict_and_dropping_the_check_releases_the_peer(edge, upstream_factory):
    a = upstream_factory("a")
    dead = upstream_factory("dead")
    dead.stop()
    e = edge(RELOAD_CONF, A=a.addr, DEAD=dead.addr, HC="health_check interval=300ms;")
    wait_for("dead held down", lambda: health_of(e, "backend", dead.addr) == "down", 10)
    for _ in range(20):     # every request to a: the workers skip the peer held down
        with Conn(e.port) as c:
            assert c.request("GET", "/").status == 200

    reload(e, lambda doc: doc["upstreams"]["backend"]["health_check"]["interval"] == 3600,
           HC="health_check interval=1h;")
    # the new check task starts from the verdict in shared memory
    assert health_of(e, "backend", dead.addr) == "down"

    refused_before = e.error_log.count("connect() failed")
    reload(e, lambda doc: "health_check" not in doc["upstreams"]["backend"], HC="")
    wait_for("dead released", lambda: health_of(e, "backend", dead.addr) == "unchecked", 10)
    assert peer_up(e)[("backend", dead.addr)] == 1
    for _ in range(20):     # round robin tries the dead peer again: refused, then a answers
        with Conn(e.port) as c:
            assert c.request("GET", "/").status == 200
    assert e.error_log.count("connect() failed") > refused_before


@pytest.mark.parametrize("directive, message", [
    ("health_check type=tcp uri=/x;", '"uri", "host" and "status" need type=http'),
    ("health_check fails=0;", 'invalid parameter "fails=0"'),
    ("health_check interval=0;", 'invalid interval "0"'),
    ("health_check status=99;", 'invalid status "99"'),
    ("health_check status=200-abc;", 'invalid status "200-abc"'),
    ("health_check uri=x;", 'invalid parameter "uri=x"'),
    ("health_check type=udp;", 'invalid parameter "type=udp"'),
])
def test_health_check_config_errors(directive, message):
    text = ("http {\n upstream u {\n  server 127.0.0.1:8080;\n  %s\n }\n}\n" % directive)
    with pytest.raises(ConfigError) as info:
        cycle_module.from_parsed("t.conf", parse_string(text, "t.conf"))
    assert message in str(info.value)
    assert "t.conf:4" in str(info.value)


def test_health_check_defaults():
    text = "http { upstream u { server 127.0.0.1:8080; health_check; } }"
    c = cycle_module.from_parsed("t.conf", parse_string(text, "t.conf"))
    hc = c.runtime.upstreams["u"].health_check
    assert (hc.type, hc.uri, hc.host, hc.interval, hc.timeout, hc.fails, hc.passes) == \
        ("http", "/", None, 5.0, 5.0, 1, 1)
    assert hc.status_ok(200) and hc.status_ok(399) and not hc.status_ok(404)


HASH_CONF = """
http {
    admin_listen 127.0.0.1:@PORT2@;
    upstream backend {
        hash $arg_k consistent;
        server @A@;
        server @B@;
        health_check interval=300ms;
    }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
"""


def test_consistent_hash_moves_only_the_keys_of_a_peer_held_down(edge, upstream_factory):
    a = upstream_factory("a")
    b = upstream_factory("b")
    e = edge(HASH_CONF, A=a.addr, B=b.addr)
    wait_for("both up", lambda: health_of(e, "backend", a.addr) == "up"
             and health_of(e, "backend", b.addr) == "up", 10)

    def server_of(k):
        with Conn(e.port) as c:
            r = c.request("GET", f"/?k={k}")
        assert r.status == 200
        return json.loads(r.body)["server"]

    before = {k: server_of(k) for k in range(40)}
    assert set(before.values()) == {"a", "b"}
    b.stop()
    wait_for("b down", lambda: health_of(e, "backend", b.addr) == "down", 10)
    after = {k: server_of(k) for k in range(40)}
    assert set(after.values()) == {"a"}
    b2 = Upstream("b", port=b.port).start()
    try:
        wait_for("b up", lambda: health_of(e, "backend", b.addr) == "up", 10)
        assert {k: server_of(k) for k in range(40)} == before   # every key back where it was
    finally:
        b2.stop()
