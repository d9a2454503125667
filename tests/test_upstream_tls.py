"""TLS to upstreams: `proxy_pass https://...` with nginx's proxy_ssl_* directives.

The upstreams are real HTTPS servers started here (Python's ssl module on a thread per
connection), with certificates from `trustme`. Each records, per TCP connection, the SNI
the client sent, whether the TLS session was resumed and the client certificate, and
answers every request with that record as JSON, so a test reads what the upstream saw.

nginx is the oracle: EDGE_TEST_IMPL=nginx runs the same table (its upstream keep-alive
needs `proxy_http_version 1.1` and an empty Connection header, which edge does anyway).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
import trustme
from support import IMPL, Conn, get

NGINX_KEEPALIVE = 'proxy_http_version 1.1; proxy_set_header Connection "";' if IMPL == "nginx" else ""

NAME = "upstream.test"          # the name in the upstream's certificate


class TlsUpstream:
    """An HTTP/1.1 keep-alive server over TLS.

    mode: "keepalive" (answer every request), "close" (Connection: close after each),
    "notify" (answer one request with keep-alive, then send close_notify and close),
    "drop_next" (answer one request with keep-alive; on the next one, close without an
    answer)."""

    def __init__(self, cert, client_ca=None, mode="keepalive"):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.ctx)
        self.ctx.sni_callback = self._sni
        if client_ca is not None:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            client_ca.configure_trust(self.ctx)
        self.mode = mode
        self.payload = None         # bytes: answered instead of the JSON record
        self.lock = threading.Lock()
        self.conns = []             # one dict per TCP connection accepted
        self.failed_handshakes = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.running = True
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _sni(self, sslobj, server_name, ctx):
        sslobj.edge_test_sni = server_name

    def stop(self):
        self.running = False
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self):
        while self.running:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                record = {"index": len(self.conns), "sni": None, "reused": None, "client": None,
                          "requests": 0}
                self.conns.append(record)
            t = threading.Thread(target=self._serve, args=(raw, record), daemon=True)
            t.start()

    def _serve(self, raw, record):
        raw.settimeout(10)
        tls = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.failed_handshakes.append(str(e))
                record["handshake_error"] = str(e)
            raw.close()
            return
        record["sni"] = getattr(tls, "edge_test_sni", None)
        record["reused"] = tls.session_reused
        record["version"] = tls.version()
        peer = tls.getpeercert()
        if peer:
            record["client"] = dict(x[0] for x in peer.get("subject", ()))
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = tls.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    data = tls.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                record["requests"] += 1
                record["last_body"] = len(body)
                if "upgrade" in headers:
                    # 101, then a byte echo over TLS until the client ends it
                    tls.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\n\r\n" + buf)
                    while True:
                        data = tls.recv(65536)
                        if not data:
                            return
                        tls.sendall(data)
                if self.mode == "drop_next" and record["requests"] > 1:
                    raw.close()     # no answer, no close_notify: as a server that died
                    return
                closing = self.mode == "close" or headers.get("connection", "").lower() == "close"
                answer = self.payload if self.payload is not None else json.dumps(
                    {**record, "path": target, "method": method, "host": headers.get("host"),
                     "body": len(body), "conn": record["index"]}).encode()
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\nConnection: %s\r\n\r\n%s"
                            % (len(answer), b"close" if closing else b"keep-alive", answer))
                if closing or self.mode == "notify":
                    if not closing:
                        time.sleep(0.05)    # then close an idle keep-alive connection
                    # our close_notify; then wait for the client's: its close_notify, or a
                    # bare close
                    try:
                        tls.unwrap()
                        record["after_notify"] = "close_notify"
                    except TimeoutError:
                        record["after_notify"] = "timeout"
                    except (ssl.SSLError, OSError):
                        record["after_notify"] = "eof"
                    return
        except (ssl.SSLError, OSError):
            return
        finally:
            try:
                raw.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca, tmp_path_factory):
    """Files: the CA, a wrong CA, the upstream's certificate, and a client certificate
    (from a CA of its own, which the upstream trusts)."""
    d = tmp_path_factory.mktemp("certs")
    other = trustme.CA()
    client_ca = trustme.CA()
    client = client_ca.issue_cert("edge-client@example.test", common_name="edge-client")
    leaf = ca.issue_cert(NAME, "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    (d / "garbage.pem").write_bytes(b"this is not a certificate\n")
    return {"dir": d, "ca": d / "ca.pem", "other": d / "other-ca.pem", "client": d / "client.pem",
            "client_key": d / "client.key", "garbage": d / "garbage.pem", "leaf": leaf,
            "client_ca": client_ca}


@pytest.fixture
def tls_upstream(certs):
    servers = []

    def make(mode="keepalive", client_ca=None, cert=None):
        s = TlsUpstream(cert or certs["leaf"], client_ca=client_ca, mode=mode)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


CONF = """
http {
    upstream backend {
        server @UP@;
        @KEEPALIVE@
    }
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            proxy_pass https://backend;
            proxy_connect_timeout 5s;
            proxy_read_timeout 5s;
            @EXTRA@
        }
        location /direct/ {
            proxy_pass https://@UP@/;
            @EXTRA@
        }
    }
}
"""


def start(edge, up, extra="", keepalive=""):
    return edge(CONF, UP=up.addr, EXTRA=extra, KEEPALIVE=keepalive)


def seen(r):
    assert r.status == 200, r
    return r.json()


# -- basics ----------------------------------------------------------------------------------

def test_https_upstream_without_verification(edge, tls_upstream):
    up = tls_upstream()
    e = start(edge, up)
    a = seen(get(e.port, "/a?x=1"))
    assert a["path"] == "/a?x=1"
    b = seen(get(e.port, "/direct/b"))
    assert b["path"] == "/b"
    assert len(up.conns) == 2


def test_post_body_goes_over_tls(edge, tls_upstream):
    up = tls_upstream()
    e = start(edge, up, "proxy_request_buffering off;")
    body = os.urandom(300000)
    with Conn(e.port) as c:
        r = c.request("POST", "/upload", body=body)
    assert seen(r)["body"] == len(body)


def test_large_response_over_tls(edge, tls_upstream):
    """A response larger than a TLS record and the proxy's read chunk: every byte arrives."""
    up = tls_upstream()
    up.payload = os.urandom(1 << 20)
    e = start(edge, up)
    r = get(e.port, "/big")
    assert r.status == 200
    assert r.body == up.payload


# -- verification -------------------------------------------------------------------------------

VERIFY = "proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_name {name};"


def test_verification_succeeds_with_the_right_ca_and_name(edge, tls_upstream, certs):
    up = tls_upstream()
    e = start(edge, up, VERIFY.format(ca=certs["ca"], name=NAME) + " proxy_ssl_verify_depth 2;")
    assert seen(get(e.port, "/v"))["path"] == "/v"


def test_verification_fails_with_a_wrong_ca(edge, tls_upstream, certs):
    up = tls_upstream()
    e = start(edge, up, VERIFY.format(ca=certs["other"], name=NAME))
    r = get(e.port, "/v")
    assert r.status == 502
    assert "upstream SSL certificate verify error" in e.error_log


def test_verification_fails_with_a_wrong_name(edge, tls_upstream, certs):
    up = tls_upstream()
    e = start(edge, up, VERIFY.format(ca=certs["ca"], name="other.test"))
    r = get(e.port, "/v")
    assert r.status == 502
    assert 'upstream SSL certificate does not match "other.test"' in e.error_log


def test_default_name_is_the_proxy_pass_host(edge, tls_upstream, certs):
    """Without proxy_ssl_name the name verified is the host of proxy_pass: "backend" is not
    in the certificate, so verification fails; a group named as the certificate passes."""
    up = tls_upstream()
    conf = """
    http {
        upstream backend { server @UP@; }
        upstream upstream.test { server @UP@; }
        server {
            listen 127.0.0.1:@PORT@;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate @CA@;
            location /wrong { proxy_pass https://backend; }
            location /right { proxy_pass https://upstream.test; }
        }
    }
    """
    e = edge(conf, UP=up.addr, CA=str(certs["ca"]))
    assert get(e.port, "/wrong").status == 502
    assert seen(get(e.port, "/right"))["path"] == "/right"


@pytest.mark.parametrize("depth,status", [(0, 502), (1, 200)])
def test_verify_depth(edge, tls_upstream, ca, certs, depth, status):
    """The upstream's certificate comes from an intermediate CA: depth 0 refuses the chain,
    depth 1 (the default) accepts it."""
    up = tls_upstream(cert=ca.create_child_ca().issue_cert(NAME))
    e = start(edge, up, VERIFY.format(ca=certs["ca"], name=NAME) + f" proxy_ssl_verify_depth {depth};")
    assert get(e.port, "/v").status == status
    if status == 502:
        assert "upstream SSL certificate verify error" in e.error_log


def test_failed_verification_counts_for_next_upstream(edge, tls_upstream, certs):
    """A handshake whose verification fails is an `error` for proxy_next_upstream: the
    request goes to the next peer, which verifies."""
    bad = tls_upstream(cert=trustme.CA().issue_cert(NAME))      # same name, unknown CA
    good = tls_upstream()
    conf = """
    http {
        upstream backend { server @BAD@ weight=100; server @GOOD@; }
        server {
            listen 127.0.0.1:@PORT@;
            location / {
                proxy_pass https://backend;
                proxy_ssl_verify on;
                proxy_ssl_trusted_certificate @CA@;
                proxy_ssl_name upstream.test;
            }
        }
    }
    """
    e = edge(conf, BAD=bad.addr, GOOD=good.addr, CA=str(certs["ca"]))
    r = get(e.port, "/n")
    assert seen(r)["path"] == "/n"
    assert len(bad.conns) == 1 and len(good.conns) == 1
    assert "upstream SSL certificate verify error" in e.error_log


def test_peer_closing_during_the_handshake_is_a_502(edge, slammer):
    conf = """
    http { server { listen 127.0.0.1:@PORT@;
        location / { proxy_pass https://@UP@; proxy_connect_timeout 3s; } } }
    """
    e = edge(conf, UP=slammer)
    assert get(e.port, "/").status == 502
    assert "while SSL handshaking to upstream" in e.error_log


def test_stalled_handshake_times_out_at_proxy_connect_timeout(edge, blackhole):
    """A peer that accepts and never answers the ClientHello: the connect timeout bounds the
    handshake (504), as in nginx."""
    conf = """
    http { server { listen 127.0.0.1:@PORT@;
        location / { proxy_pass https://@UP@; proxy_connect_timeout 1s; proxy_read_timeout 30s; } } }
    """
    e = edge(conf, UP=blackhole)
    assert get(e.port, "/").status == 504
    assert "timed out" in e.error_log and "SSL handshaking to upstream" in e.error_log


# -- SNI -------------------------------------------------------------------------------------

def test_no_sni_by_default(edge, tls_upstream):
    up = tls_upstream()
    e = start(edge, up, f"proxy_ssl_name {NAME};")
    assert seen(get(e.port, "/"))["sni"] is None


def test_sni_is_proxy_ssl_name(edge, tls_upstream):
    up = tls_upstream()
    e = start(edge, up, f"proxy_ssl_server_name on; proxy_ssl_name {NAME};")
    assert seen(get(e.port, "/"))["sni"] == NAME


def test_sni_defaults_to_the_proxy_pass_host(edge, tls_upstream):
    up = tls_upstream()
    e = start(edge, up, "proxy_ssl_server_name on;")
    assert seen(get(e.port, "/"))["sni"] == "backend"
    # an address is never sent as SNI (RFC 6066)
    assert seen(get(e.port, "/direct/"))["sni"] is None


def test_sni_from_a_variable(edge, tls_upstream):
    up = tls_upstream()
    e = start(edge, up, "proxy_ssl_server_name on; proxy_ssl_name $http_x_name; "
                        "proxy_ssl_session_reuse off;")
    assert seen(get(e.port, "/", headers=[("X-Name", "a.test")]))["sni"] == "a.test"
    # after a request body read whole first (proxy_request_buffering on), on a new
    # connection (no keepalive): the header is still there to name it
    with Conn(e.port) as c:
        r = c.request("POST", "/", headers=[("X-Name", "b.test")], body=os.urandom(200000))
    assert seen(r)["sni"] == "b.test"


@pytest.mark.edge_only
def test_sessions_are_kept_per_name(edge, tls_upstream):
    """With a variable proxy_ssl_name, a session is offered only to a connection for the
    same name. nginx keeps one session per peer whatever the name, so its connection for
    b.test resumes a.test's session (and the upstream sees a.test's name)."""
    up = tls_upstream(mode="close")
    e = start(edge, up, "proxy_ssl_server_name on; proxy_ssl_name $http_x_name;")
    a = seen(get(e.port, "/", headers=[("X-Name", "a.test")]))
    b = seen(get(e.port, "/", headers=[("X-Name", "b.test")]))
    a2 = seen(get(e.port, "/", headers=[("X-Name", "a.test")]))
    assert (a["sni"], a["reused"]) == ("a.test", False)
    assert (b["sni"], b["reused"]) == ("b.test", False)
    assert (a2["sni"], a2["reused"]) == ("a.test", True)


# -- client certificates ---------------------------------------------------------------------

def test_client_certificate_is_presented(edge, tls_upstream, certs):
    up = tls_upstream(client_ca=certs["client_ca"])
    e = start(edge, up, f"proxy_ssl_certificate {certs['client']}; "
                        f"proxy_ssl_certificate_key {certs['client_key']};")
    assert seen(get(e.port, "/"))["client"]["commonName"] == "edge-client"


def test_missing_client_certificate_is_a_502(edge, tls_upstream, certs):
    up = tls_upstream(client_ca=certs["client_ca"])
    e = start(edge, up)
    assert get(e.port, "/").status == 502


def test_encrypted_client_key_with_password_file(edge, tls_upstream, certs, tmp_path):
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(certs["client_key"].read_bytes(), None)
    (tmp_path / "enc.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret")))
    (tmp_path / "passwords").write_text("wrong\ns3cret\n")
    up = tls_upstream(client_ca=certs["client_ca"])
    e = start(edge, up, f"proxy_ssl_certificate {certs['client']}; "
                        f"proxy_ssl_certificate_key {tmp_path / 'enc.key'}; "
                        f"proxy_ssl_password_file {tmp_path / 'passwords'};")
    assert seen(get(e.port, "/"))["client"]["commonName"] == "edge-client"


# -- sessions --------------------------------------------------------------------------------

@pytest.mark.parametrize("verify", [False, True])
def test_session_is_resumed_on_the_next_connection(edge, tls_upstream, certs, verify):
    """A resumed session passes verification too (its certificate comes with it)."""
    up = tls_upstream(mode="close")
    e = start(edge, up, VERIFY.format(ca=certs["ca"], name=NAME) if verify else "")
    first = seen(get(e.port, "/1"))
    second = seen(get(e.port, "/2"))
    assert first["conn"] == 0 and second["conn"] == 1     # two TCP connections
    assert first["reused"] is False
    assert second["reused"] is True


def test_session_reuse_off(edge, tls_upstream):
    up = tls_upstream(mode="close")
    e = start(edge, up, "proxy_ssl_session_reuse off;")
    seen(get(e.port, "/1"))
    assert seen(get(e.port, "/2"))["reused"] is False


# -- keepalive pools ---------------------------------------------------------------------------

def test_pooled_tls_connections_are_reused(edge, tls_upstream):
    up = tls_upstream()
    e = start(edge, up, NGINX_KEEPALIVE, keepalive="keepalive 4;")
    conns = set()
    for i in range(40):
        r = seen(get(e.port, f"/k{i}"))
        conns.add(r["conn"])
    assert len(up.conns) == 1, up.conns
    assert conns == {0}
    assert up.conns[0]["requests"] == 40


def test_closing_sends_close_notify(edge, tls_upstream):
    """The upstream ends the connection after its answer (Connection: close): edge's side
    of the connection ends with close_notify too."""
    up = tls_upstream(mode="close")
    e = start(edge, up)
    seen(get(e.port, "/"))
    for _ in range(100):
        if "after_notify" in up.conns[0]:
            break
        time.sleep(0.05)
    assert up.conns[0].get("after_notify") == "close_notify"


def test_without_keepalive_every_request_connects(edge, tls_upstream):
    up = tls_upstream()
    e = start(edge, up)
    for i in range(5):
        seen(get(e.port, f"/n{i}"))
    assert len(up.conns) == 5


def test_pooled_connection_closed_with_close_notify_is_not_reused(edge, tls_upstream):
    """The upstream sends close_notify on an idle pooled connection: the next request goes
    on a new connection and succeeds."""
    up = tls_upstream(mode="notify")
    e = start(edge, up, NGINX_KEEPALIVE, keepalive="keepalive 4;")
    for i in range(5):
        assert seen(get(e.port, f"/c{i}"))["requests"] == 1
        # the pooled connection sees the close_notify while idle, and closes at once
        for _ in range(100):
            if "after_notify" in up.conns[i]:
                break
            time.sleep(0.05)
        # edge answers with its own close_notify; nginx closes without one
        assert up.conns[i].get("after_notify") == ("eof" if IMPL == "nginx" else "close_notify")
    assert len(up.conns) == 5


def test_pooled_connection_dropped_on_reuse_is_retried(edge, tls_upstream):
    """The upstream drops a pooled connection when it gets the next request on it: the
    request is sent again on a fresh connection, and the client gets its answer."""
    up = tls_upstream(mode="drop_next")
    e = start(edge, up, NGINX_KEEPALIVE, keepalive="keepalive 4;")
    for i in range(5):
        assert seen(get(e.port, f"/d{i}"))["requests"] == 1
    assert len(up.conns) >= 5


# -- configuration -------------------------------------------------------------------------------

def config_test(edge, template, **subst):
    """Run `-t` on the rendered config: (exit code, output)."""
    e = edge.create(template, **subst)
    e._alloc_ports()
    e.conf_text = e.render()
    e.conf_path.write_text(e.conf_text)
    r = subprocess.run([*e.command(), "-t"], capture_output=True, text=True, timeout=30, check=False)
    return e, r.returncode, r.stdout + r.stderr


def test_bad_trusted_certificate_fails_the_config_test(edge, tls_upstream, certs):
    up = tls_upstream()
    e, rc, out = config_test(edge, CONF, UP=up.addr, KEEPALIVE="",
                             EXTRA=f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {certs['garbage']};")
    assert rc != 0
    if IMPL != "nginx":
        line = e.line_of("proxy_ssl_trusted_certificate")
        assert f"{e.conf_path}:{line}" in out, out
        assert "proxy_ssl_trusted_certificate" in out


def test_missing_trusted_certificate_file_fails_the_config_test(edge, tls_upstream, certs):
    up = tls_upstream()
    e, rc, out = config_test(edge, CONF, UP=up.addr, KEEPALIVE="",
                             EXTRA=f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {certs['dir']}/nope.pem;")
    assert rc != 0
    if IMPL != "nginx":
        assert f"{e.conf_path}:{e.line_of('nope.pem')}" in out, out


def test_verify_without_trusted_certificate_fails(edge, tls_upstream):
    up = tls_upstream()
    _, rc, out = config_test(edge, CONF, UP=up.addr, KEEPALIVE="", EXTRA="proxy_ssl_verify on;")
    assert rc != 0
    assert "proxy_ssl_trusted_certificate" in out


def test_certificate_without_key_fails(edge, tls_upstream, certs):
    up = tls_upstream()
    _, rc, out = config_test(edge, CONF, UP=up.addr, KEEPALIVE="",
                             EXTRA=f"proxy_ssl_certificate {certs['client']};")
    assert rc != 0
    assert "proxy_ssl_certificate_key" in out


def test_good_config_passes_the_config_test(edge, tls_upstream, certs):
    up = tls_upstream()
    _, rc, out = config_test(edge, CONF, UP=up.addr, KEEPALIVE="",
                             EXTRA=VERIFY.format(ca=certs["ca"], name=NAME)
                             + " proxy_ssl_protocols TLSv1.3; proxy_ssl_ciphers HIGH;"
                             + " proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;")
    assert rc == 0, out


def test_mirror_to_https(edge, tls_upstream, certs):
    """Copies go to an https upstream too, verified like the main traffic (the copy's
    connection sends SNI and checks the name)."""
    main = tls_upstream()
    copies = tls_upstream()
    conf = """
    http {
        upstream mirrors { server @COPIES@; }
        client_max_body_size 10m;
        server { listen 127.0.0.1:@PORT@;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate @CA@;
            proxy_ssl_name upstream.test;
            proxy_ssl_server_name on;
            location / { mirror /m; proxy_pass https://@MAIN@; }
            location /m { internal; proxy_pass https://mirrors$request_uri; } }
    }
    """
    e = edge(conf, MAIN=main.addr, COPIES=copies.addr, CA=str(certs["ca"]))
    sizes = [5000, 300000, 2000000]     # in memory, then temp files (sent over TLS)
    for i, size in enumerate(sizes):
        with Conn(e.port) as c:
            assert seen(c.request("POST", f"/p{i}", body=os.urandom(size)))["path"] == f"/p{i}"
    for _ in range(200):
        if sum(r["requests"] for r in copies.conns) >= 3:
            break
        time.sleep(0.05)
    assert sum(r["requests"] for r in copies.conns) == 3
    assert sorted(r.get("last_body") for r in copies.conns) == sizes
    assert all(r["sni"] == NAME for r in copies.conns)


def test_mirror_to_an_unverified_https_mirror_fails_the_copy_only(edge, tls_upstream, certs):
    main = tls_upstream()
    copies = tls_upstream(cert=trustme.CA().issue_cert(NAME))      # an unknown CA
    conf = """
    http {
        server { listen 127.0.0.1:@PORT@;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate @CA@;
            proxy_ssl_name upstream.test;
            location / { mirror /m; proxy_pass https://@MAIN@; }
            location /m { internal; proxy_pass https://@COPIES@; } }
    }
    """
    e = edge(conf, MAIN=main.addr, COPIES=copies.addr, CA=str(certs["ca"]))
    assert seen(get(e.port, "/q"))["path"] == "/q"
    for _ in range(200):
        if copies.conns and "upstream SSL certificate verify error" in e.error_log:
            break
        time.sleep(0.05)
    assert "upstream SSL certificate verify error" in e.error_log
    assert all(r["requests"] == 0 for r in copies.conns)


@pytest.mark.edge_only
def test_mirror_with_a_variable_ssl_name_is_refused(edge, tls_upstream):
    up = tls_upstream()
    conf = """
    http { server { listen 127.0.0.1:@PORT@;
        location / { mirror /m; proxy_pass https://@UP@; }
        location /m { internal; proxy_pass https://@UP@; proxy_ssl_name $host; } } }
    """
    e, rc, out = config_test(edge, conf, UP=up.addr)
    assert rc != 0
    assert "proxy_ssl_name" in out and f"{e.conf_path}:{e.line_of('mirror /m')}" in out


def test_protocol_limit_is_applied(edge, tls_upstream):
    """proxy_ssl_protocols: the version the upstream negotiated is the one allowed."""
    up = tls_upstream()
    e = start(edge, up, "proxy_ssl_protocols TLSv1.2;")
    assert seen(get(e.port, "/"))["version"] == "TLSv1.2"
    e2 = start(edge, up, "proxy_ssl_protocols TLSv1.3;")
    assert seen(get(e2.port, "/"))["version"] == "TLSv1.3"


# -- names, variables, health ----------------------------------------------------------------

def test_proxy_host(edge, tls_upstream):
    """$proxy_host is the proxy_pass host as nginx has it: the group's name, or host:port
    for an address (the port only when it is not 443)."""
    up = tls_upstream()
    conf = """
    http {
        upstream backend { server @UP@; }
        server {
            listen 127.0.0.1:@PORT@;
            proxy_set_header Host $proxy_host;
            location /g { proxy_pass https://backend; }
            location /a { proxy_pass https://@UP@; }
        }
    }
    """
    e = edge(conf, UP=up.addr)
    assert seen(get(e.port, "/g"))["host"] == "backend"
    assert seen(get(e.port, "/a"))["host"] == up.addr


def test_proxy_pass_with_a_variable(edge, tls_upstream):
    up = tls_upstream()
    conf = """
    http {
        upstream backend { server @UP@; }
        server {
            listen 127.0.0.1:@PORT@;
            location / { set $group backend; proxy_pass https://$group; }
        }
    }
    """
    e = edge(conf, UP=up.addr)
    assert seen(get(e.port, "/var"))["path"] == "/var"


def test_proxy_redirect_default_maps_the_https_url(edge, tls_upstream):
    up = tls_upstream()
    conf = """
    http { server { listen 127.0.0.1:@PORT@;
        location /app/ { proxy_pass https://@UP@/inner/; } } }
    """
    e = edge(conf, UP=up.addr)

    def serve(raw, record):
        raw.settimeout(10)
        tls = up.ctx.wrap_socket(raw, server_side=True)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                data += chunk
            tls.sendall(b"HTTP/1.1 302 Found\r\nLocation: https://%s/inner/next\r\n"
                        b"Content-Length: 0\r\nConnection: close\r\n\r\n" % up.addr.encode())
        except (ssl.SSLError, OSError):
            pass
        finally:
            raw.close()

    up._serve = serve
    r = get(e.port, "/app/x")
    assert r.status == 302
    assert r.header("Location").endswith("/app/next"), r.header("Location")


def test_failed_handshakes_count_toward_max_fails(edge, tls_upstream, certs):
    """A peer whose certificate does not verify is marked down after max_fails failures:
    the following requests are not tried on it at all."""
    bad = tls_upstream(cert=trustme.CA().issue_cert(NAME))
    good = tls_upstream()
    conf = """
    http {
        upstream backend { server @BAD@ max_fails=1 fail_timeout=60s; server @GOOD@; }
        server {
            listen 127.0.0.1:@PORT@;
            location / {
                proxy_pass https://backend;
                proxy_ssl_verify on;
                proxy_ssl_trusted_certificate @CA@;
                proxy_ssl_name upstream.test;
            }
        }
    }
    """
    e = edge(conf, BAD=bad.addr, GOOD=good.addr, CA=str(certs["ca"]))
    for i in range(10):
        assert seen(get(e.port, f"/{i}"))["path"] == f"/{i}"
    assert len(bad.conns) == 1


NGINX_UPGRADE = ('proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; '
                 'proxy_set_header Connection "upgrade";') if IMPL == "nginx" else ""


def recv_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"closed after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def test_upgraded_connection_tunnels_over_tls(edge, tls_upstream):
    """A WebSocket-style upgrade to an https upstream: after the 101 the bytes go both
    ways through the TLS connection."""
    up = tls_upstream()
    e = start(edge, up, NGINX_UPGRADE)
    with Conn(e.port) as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        _, status, _, _, raw = c.read_head()
        assert status == 101, raw
        for n in (1, 100, 1 << 20):
            data = os.urandom(n)
            c.sock.sendall(data)
            got = bytes(c.buf[:n])
            del c.buf[:len(got)]
            assert got + recv_exact(c.sock, n - len(got)) == data


@pytest.mark.edge_only
def test_reload_rereads_the_files_and_a_bad_one_keeps_the_old(edge, tls_upstream, certs, tmp_path):
    """The trusted CA file changes under a running edge: garbage fails the reload (exit 1,
    file:line) and the old CA keeps verifying; another CA is applied by the next reload
    (the upstream no longer verifies)."""
    import sys

    from support.edge import REPO
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(certs["ca"].read_bytes())
    up = tls_upstream()
    e = start(edge, up, VERIFY.format(ca=trusted, name=NAME))
    assert get(e.port, "/1").status == 200

    def reload():
        return subprocess.run([sys.executable, "-m", "edge", "-s", "reload", "-c", str(e.conf_path)],
                              cwd=REPO, capture_output=True, text=True, timeout=30, check=False)

    trusted.write_bytes(b"garbage\n")
    r = reload()
    assert r.returncode == 1
    assert f"{e.conf_path}:{e.line_of('proxy_ssl_trusted_certificate')}" in r.stderr, r.stderr
    assert get(e.port, "/2").status == 200

    trusted.write_bytes(certs["other"].read_bytes())
    assert reload().returncode == 0
    for _ in range(200):
        if get(e.port, "/3").status == 502:
            break
        time.sleep(0.05)
    assert get(e.port, "/4").status == 502


def test_handshake_timeout_goes_to_the_next_peer(edge, blackhole, tls_upstream):
    """A peer that never answers the ClientHello: proxy_connect_timeout ends the try, and
    `timeout` (in the default proxy_next_upstream) sends the request to the next peer."""
    good = tls_upstream()
    conf = """
    http {
        upstream backend { server @BAD@ weight=100; server @GOOD@; }
        server { listen 127.0.0.1:@PORT@;
            location / { proxy_pass https://backend; proxy_connect_timeout 1s; } }
    }
    """
    e = edge(conf, BAD=blackhole, GOOD=good.addr)
    assert seen(get(e.port, "/t"))["path"] == "/t"
    assert "while SSL handshaking to upstream" in e.error_log


@pytest.mark.edge_only
def test_plain_and_tls_locations_do_not_share_pooled_connections(edge, tls_upstream):
    """Two locations proxy to the same group, one with https and one with http: a pooled
    TLS connection is never handed to the plain location (which then fails against a TLS
    peer, as it should). nginx's pool is per peer only: with upstream keep-alive on, its
    plain location reuses the TLS connection and gets an answer (checked with nginx 1.22)."""
    up = tls_upstream()
    conf = """
    http {
        upstream backend { server @UP@; keepalive 4; }
        server { listen 127.0.0.1:@PORT@;
            location /tls { proxy_pass https://backend; }
            location /plain { proxy_pass http://backend; proxy_next_upstream off; } }
    }
    """
    e = edge(conf, UP=up.addr)
    assert seen(get(e.port, "/tls"))["conn"] == 0
    assert get(e.port, "/plain").status == 502
    assert seen(get(e.port, "/tls"))["conn"] == 0     # the pooled TLS connection again
