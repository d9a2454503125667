"""Idle keep-alive connections at rest (edge/_core/idle.pyx, docs/connections.md).

Between requests a connection gives its buffers back to the worker's pool, and once a
second the worker swaps each idle Client for a small IdleConn. These tests wait until a
connection is really parked (the `edge_connections_at_rest` gauge says so), then check
that nothing the connection carries is lost when bytes arrive and a Client takes it back:
$connection and $connection_requests, the peer and PROXY protocol addresses, the TLS
session and its server name, the keep-alive timeout, graceful shutdown, and
worker_connections reuse. Real edge processes, raw sockets and TLS clients.
"""

import signal
import socket
import ssl
import struct

import pytest
import trustme

from support.client import Conn
from support.waiting import wait_for
from test_metrics import scrape, value

pytestmark = pytest.mark.edge_only

VARS = ('c=$connection n=$connection_requests ra=$remote_addr rp=$remote_port '
        'ppa=$proxy_protocol_addr ppp=$proxy_protocol_port ssl=$ssl_server_name\\n')


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert = ca.issue_cert("a.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "a.pem"))
    cert.private_key_pem.write_to_path(str(d / "a.key"))
    return d


def config(pki, keepalive="75s", worker_connections=1024):
    return f"""
    worker_processes 1;
    events {{ worker_connections {worker_connections}; }}
    http {{
        admin_listen 127.0.0.1:@PORT3@;
        keepalive_timeout {keepalive};
        server {{
            listen 127.0.0.1:@PORT@;
            location / {{ return 200 "{VARS}"; }}
            location /up/ {{ proxy_pass http://@UP@; }}
        }}
        server {{
            listen 127.0.0.1:@PORT1@ proxy_protocol;
            location / {{ return 200 "{VARS}"; }}
        }}
        server {{
            listen 127.0.0.1:@PORT2@ ssl;
            server_name a.test;
            ssl_certificate {pki}/a.pem;
            ssl_certificate_key {pki}/a.key;
            location / {{ return 200 "{VARS}"; }}
        }}
    }}"""


def at_rest(e):
    return value(scrape(e.ports["PORT3"]), "edge_connections_at_rest")


def wait_parked(e, n=1):
    wait_for(lambda: at_rest(e) >= n, timeout=10, what=f"{n} connection(s) at rest")


def fields(body):
    return dict(kv.split("=", 1) for kv in body.decode().split())


def proxy_v2(src="192.0.2.10", sport=56324):
    body = socket.inet_aton(src) + socket.inet_aton("198.51.100.1") + struct.pack("!HH", sport, 443)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def test_a_parked_connection_goes_on_as_it_was(edge, upstream, pki):
    e = edge(config(pki), UP=upstream)
    with Conn(e.port) as c:
        first = fields(c.request("GET", "/a").body)
        wait_parked(e)
        second = c.request("GET", "/b")
        assert second.status == 200
        second = fields(second.body)
        assert second["c"] == first["c"]            # the same connection...
        assert (first["n"], second["n"]) == ("1", "2")   # ...counting its requests
        assert (second["ra"], second["rp"]) == (first["ra"], first["rp"])
        # a proxied request after rest, then rest again, then one more
        r = c.request("GET", "/up/x")
        assert r.status == 200
        wait_parked(e)
        assert fields(c.request("GET", "/c").body)["n"] == "4"


def test_proxy_protocol_addresses_survive_rest(edge, upstream, pki):
    e = edge(config(pki), UP=upstream)
    with Conn(e.ports["PORT1"]) as c:
        c.sock.sendall(proxy_v2())
        first = fields(c.request("GET", "/").body)
        assert (first["ra"], first["ppa"], first["ppp"]) == ("127.0.0.1", "192.0.2.10", "56324")
        wait_parked(e)
        second = fields(c.request("GET", "/").body)
        assert (second["ra"], second["rp"]) == (first["ra"], first["rp"])
        assert (second["ppa"], second["ppp"]) == ("192.0.2.10", "56324")
        assert second["n"] == "2"


def test_a_tls_session_survives_rest(edge, upstream, pki):
    e = edge(config(pki), UP=upstream)
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with Conn(e.ports["PORT2"], tls=ctx, sni="a.test") as c:
        first = fields(c.request("GET", "/", host="a.test").body)
        assert first["ssl"] == "a.test"
        wait_parked(e)
        for n in ("2", "3"):
            r = c.request("GET", "/", host="a.test")
            assert r.status == 200
            got = fields(r.body)
            assert (got["c"], got["n"], got["ssl"]) == (first["c"], n, "a.test")
            wait_parked(e)


def test_the_keepalive_timeout_runs_on_at_rest(edge, upstream, pki):
    e = edge(config(pki, keepalive="3s"), UP=upstream)
    with Conn(e.port) as c:
        assert c.request("GET", "/").status == 200
        wait_parked(e)
        c.sock.settimeout(15)
        assert c.sock.recv(1) == b""        # closed by edge at the timeout, without a word
    wait_for(lambda: at_rest(e) == 0, timeout=10, what="no connection at rest")


def test_graceful_stop_closes_connections_at_rest(edge, upstream, pki):
    e = edge(config(pki), UP=upstream)
    conns = [Conn(e.port) for _ in range(3)]
    for c in conns:
        assert c.request("GET", "/").status == 200
    wait_parked(e, 3)
    e.send_signal(signal.SIGQUIT)
    for c in conns:
        c.sock.settimeout(10)
        assert c.sock.recv(1) == b""
        c.close()
    assert e.wait_exit(15) == 0


def test_connections_at_rest_are_reused_when_worker_connections_run_out(edge, upstream, pki):
    e = edge(config(pki, worker_connections=16), UP=upstream)
    resting = [Conn(e.port) for _ in range(8)]
    for c in resting:
        assert c.request("GET", "/").status == 200
    wait_parked(e, 8)
    # more clients than free slots: each is served, and edge closes the oldest
    # connections at rest to make room for them (nginx's reusable connections)
    fresh = []
    for _ in range(20):
        c = Conn(e.port)
        fresh.append(c)
        assert c.request("GET", "/").status == 200
    resting[0].sock.settimeout(10)
    assert resting[0].sock.recv(1) == b""
    for c in resting + fresh:
        c.close()
