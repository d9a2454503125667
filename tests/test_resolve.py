"""`resolver` and `server NAME:PORT resolve` (docs/traffic.md, "DNS"): the control
process asks a DNS server on loopback (tests/support/dns_server.py) and the workers
follow the answers with no reload: a changed address, two addresses, no address (the
server is unavailable: 502), TTL and valid=, and health checks of resolved peers.

The `resolve` parameter exists only in nginx >= 1.27 (1.22 is installed), so the module
is edge_only.
"""

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge import cycle as cycle_module
from edge.config import ConfigError, parse_string
from edge.control import dns
from support.client import Conn
from support.dns_server import DNSServer
from support.upstream import Upstream
from support.waiting import wait_for as wait_until

pytestmark = pytest.mark.edge_only


def admin_get(e, path):
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{e.ports['PORT2']}{path}",
                                        timeout=5) as r:
                return r.read().decode()
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def metric(e, name):
    out = {}
    for family in text_string_to_metric_families(admin_get(e, "/metrics")):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def wait_for(what, predicate, timeout):
    return wait_until(predicate, timeout, what, interval=0.05)


def served_by(e, path="/"):
    """The upstream that answered one request, or the status when it was not a 200."""
    with Conn(e.port) as c:
        r = c.request("GET", path)
    if r.status != 200:
        return r.status
    return json.loads(r.body)["server"]


def pair():
    """Two upstreams on one port: 127.0.0.1:P and 127.0.0.2:P."""
    for _ in range(20):
        one = Upstream("one", "127.0.0.1", 0)
        try:
            two = Upstream("two", "127.0.0.2", one.port)
        except OSError:
            one.stop()
            continue
        return one.start(), two.start()
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


CONF = """
worker_processes 2;
http {
    admin_listen 127.0.0.1:@PORT2@;
    resolver @DNS@ @VALID@;
    upstream named { server api.test:@P@ resolve; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://named; }
    }
}
"""


@pytest.fixture
def upstream_pair():
    one, two = pair()
    yield one, two
    one.stop()
    two.stop()


@pytest.mark.timeout(90)
def test_a_changed_name_is_followed_without_reload(edge, upstream_pair):
    one, two = upstream_pair
    with DNSServer({"api.test": ["127.0.0.1"]}, ttl=1) as server:
        e = edge(CONF, DNS=server.addr, VALID="", P=one.port)
        wait_for("the first answer", lambda: served_by(e) == "one", 10)
        workers = sorted(e.worker_pids())
        generation = metric(e, "edge_config_generation")

        server.set("api.test", ["127.0.0.2"])
        wait_for("the new address", lambda: served_by(e) == "two", 10)
        for _ in range(10):
            assert served_by(e) == "two"
        assert f'upstream "named": api.test:{one.port} resolves to 127.0.0.2:{one.port}' in e.error_log

        server.set("api.test", ["127.0.0.1", "127.0.0.2"])
        wait_for("both addresses", lambda: {served_by(e) for _ in range(8)} == {"one", "two"}, 10)
        ups = metric(e, "edge_upstream_peer_up")
        assert ups == {(("peer", f"127.0.0.1:{one.port}"), ("upstream", "named")): 1,
                       (("peer", f"127.0.0.2:{one.port}"), ("upstream", "named")): 1}

        server.remove("api.test")                       # NXDOMAIN: nothing to use
        wait_for("no address", lambda: served_by(e) == 502, 10)
        assert "no live upstreams" in e.error_log
        status = json.loads(admin_get(e, "/status"))["upstreams"]["named"]
        assert status["resolve"][0]["addresses"] == [] and status["peers"] == []
        assert metric(e, "edge_upstream_peer_up") == {}

        server.set("api.test", ["127.0.0.1"])
        wait_for("back", lambda: served_by(e) == "one", 10)

        # no reload, no new worker: the same processes followed every answer
        assert sorted(e.worker_pids()) == workers
        assert metric(e, "edge_config_generation") == generation
        # both families asked (ipv6=on by default), the name re-asked as the TTL ran out
        assert ("api.test", dns.TYPE_AAAA) in server.queries
        assert server.count("api.test") >= 8


def test_valid_overrides_the_ttl(edge, upstream_pair):
    one, two = upstream_pair
    with DNSServer({"api.test": ["127.0.0.1"]}, ttl=3600) as server:
        e = edge(CONF, DNS=server.addr, VALID="valid=1s ipv6=off", P=one.port)
        wait_for("the first answer", lambda: served_by(e) == "one", 10)
        server.set("api.test", ["127.0.0.2"])
        wait_for("the new address within valid=", lambda: served_by(e) == "two", 10)
        assert ("api.test", dns.TYPE_AAAA) not in server.queries


HC_CONF = """
http {
    admin_listen 127.0.0.1:@PORT2@;
    upstream named {
        resolver @DNS@ valid=1s ipv6=off;
        server api.test:@P@ resolve;
        health_check type=tcp interval=300ms;
    }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://named; }
    }
}
"""


def test_resolved_peers_are_health_checked(edge, upstream_pair):
    one, two = upstream_pair
    port = one.port
    two.stop()          # 127.0.0.2:P answers nothing: the check holds it down
    with DNSServer({"api.test": ["127.0.0.1", "127.0.0.2"]}, ttl=1) as server:
        e = edge(HC_CONF, DNS=server.addr, P=port)
        wait_for("both checked", lambda: metric(e, "edge_upstream_peer_up") == {
            (("peer", f"127.0.0.1:{port}"), ("upstream", "named")): 1,
            (("peer", f"127.0.0.2:{port}"), ("upstream", "named")): 0}, 10)
        assert f'upstream "named" peer 127.0.0.2:{port} is down (health check: connect refused)' \
            in e.error_log
        for _ in range(10):             # never the peer held down
            assert served_by(e) == "one"
        assert server.count("api.test") >= 1


def config_error(text):
    with pytest.raises(ConfigError) as info:
        cycle_module.from_parsed("t.conf", parse_string(text, "t.conf"))
    return str(info.value)


def test_resolve_config():
    assert "no resolver defined to resolve api.test" in config_error(
        "http {\n upstream u {\n  server api.test:80 resolve;\n }\n}")
    assert "t.conf:3" in config_error(
        "http {\n upstream u {\n  server api.test:80 resolve;\n }\n}")
    assert 'invalid parameter "ipv6=maybe"' in config_error(
        "http { resolver 127.0.0.1 ipv6=maybe; upstream u { server 127.0.0.1; } }")
    assert 'invalid valid "0"' in config_error(
        "http { resolver 127.0.0.1 valid=0; upstream u { server 127.0.0.1; } }")
    # an upstream's own resolver wins over the http one; an address is not resolved
    c = cycle_module.from_parsed("t.conf", parse_string(
        "http { resolver 127.0.0.1 valid=30s; resolver_timeout 5s;\n"
        " upstream u { resolver [::1]:5353 ipv6=off; server api.test:8080 resolve; }\n"
        " upstream v { server api.test:81 resolve; server 127.0.0.1:82 resolve; } }", "t.conf"))
    u, v = c.runtime.upstreams["u"], c.runtime.upstreams["v"]
    assert u.resolver.addresses == ((socket.AF_INET6, "::1", 5353),)
    assert (u.resolver.valid, u.resolver.ipv6, u.resolver.timeout) == (None, False, 5.0)
    assert v.resolver.addresses == ((socket.AF_INET, "127.0.0.1", 53),)
    assert (v.resolver.valid, v.resolver.ipv6) == (30.0, True)
    assert u.resolve_names == [("api.test", 8080)]
    assert v.resolve_names == [("api.test", 81)]
    assert v.static_peers == [(socket.AF_INET, "127.0.0.1", 82)]


def test_dns_client_parses_compressed_answers_and_rejects_strangers():
    query = dns.build_query(0x1234, "api.test", dns.TYPE_A)
    assert query[12:] == b"\x03api\x04test\x00\x00\x01\x00\x01"
    # a reply: the question, a CNAME pointing elsewhere, then two A records of its target
    head = bytes.fromhex("1234 8180 0001 0003 0000 0000".replace(" ", ""))
    question = query[12:]
    cname = b"\xc0\x0c" + bytes.fromhex("0005 0001 0000003c 0006") + b"\x03web\xc0\x10"
    a1 = b"\xc0\x26" + bytes.fromhex("0001 0001 0000001e 0004") + bytes([10, 0, 0, 1])
    a2 = b"\xc0\x26" + bytes.fromhex("0001 0001 0000000a 0004") + bytes([10, 0, 0, 2])
    reply = head + question + cname + a1 + a2
    assert dns.parse_response(reply, 0x1234, "api.test", dns.TYPE_A) == (
        0, [(socket.AF_INET, "10.0.0.1"), (socket.AF_INET, "10.0.0.2")], 10)
    assert dns.parse_response(reply, 0x4321, "api.test", dns.TYPE_A) is None      # wrong id
    assert dns.parse_response(reply, 0x1234, "other.test", dns.TYPE_A) is None    # wrong question
    assert dns.parse_response(query, 0x1234, "api.test", dns.TYPE_A) is None      # not a reply
    nx = bytes.fromhex("1234 8183 0001 0000 0000 0000".replace(" ", "")) + question
    assert dns.parse_response(nx, 0x1234, "api.test", dns.TYPE_A) == (3, [], None)
