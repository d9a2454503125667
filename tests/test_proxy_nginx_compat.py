"""proxy_http_version, proxy_pass_request_headers, proxy_ignore_headers and tcp_nodelay
(issue 15, nginx.conf compatibility).

A recording upstream (tests/support/upstream.py echoes what it got: version, headers,
body length and hash) behind a real edge; nginx is the oracle for the proxy directives:
`EDGE_TEST_IMPL=nginx python3 -m pytest tests/test_proxy_nginx_compat.py`. tcp_nodelay is
read from the worker's own socket (pidfd_getfd), edge only.
"""

import ctypes
import hashlib
import os
import re
import socket
import subprocess
import sys

import pytest

from support import Conn, Upstream
from support.client import chunked_encode
from support.edge import children_of

CONFIG = """
http {
    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      close;
    }
    upstream g {
        server @UP@;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:@PORT@;
        location /v10/ {
            proxy_http_version 1.0;
            proxy_request_buffering off;
            proxy_pass http://g;
        }
        location /v11/ {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://g;
        }
        location /noheaders/ {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_headers off;
            proxy_set_header X-Set "from-config";
            proxy_pass http://g;
        }
        location /nobody/ {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass http://g;
        }
        location /nobody-edge/ {
            proxy_pass_request_body off;
            proxy_pass http://g;
        }
        location /ws/ {
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_pass http://g;
        }
        location /ignore/ {
            proxy_ignore_headers X-Accel-Buffering X-Accel-Expires Expires Cache-Control;
            proxy_pass http://g;
        }
    }
}
"""


@pytest.fixture
def up():
    u = Upstream("up").start()
    yield u
    u.stop()
    assert not u.errors, u.errors


def echo(r):
    assert r.status == 200, r
    return r.json()


def test_http_1_0_upstream_requests(edge, up):
    e = edge(CONFIG, UP=up)
    with Conn(e.port) as c:
        got = [echo(c.request("GET", f"/v10/echo{i}", headers=[("X-Client", "yes")]))
               for i in range(3)]
        assert c.is_open()          # the client keeps its connection
    for g in got:
        assert g["version"] == "HTTP/1.0"
        headers = {k.lower(): v for k, v in g["headers"]}
        assert headers["connection"].lower() == "close"
        assert headers["x-client"] == "yes"
    # no keep-alive to the upstream: three requests, three connections
    assert len({g["conn"] for g in got}) == 3
    # while HTTP/1.1 reuses one (the same group, the same client connection)
    with Conn(e.port) as c:
        got = [echo(c.request("GET", f"/v11/echo{i}")) for i in range(3)]
    assert {g["version"] for g in got} == {"HTTP/1.1"}
    assert len({g["conn"] for g in got}) == 1


def _all(g, name):
    return [v for k, v in g["headers"] if k.lower() == name]


@pytest.mark.parametrize("upgrade", [False, True], ids=["plain", "upgrade"])
def test_set_connection_and_upgrade_replace_the_proxys_own(edge, up, upgrade):
    """proxy_set_header Connection/Upgrade are sent instead of the proxy's own fields,
    never beside them (the WebSocket recipe with `map $http_upgrade
    $connection_upgrade`), and `Connection ""` sends none."""
    e = edge(CONFIG, UP=up)
    extra = [("Upgrade", "websocket"), ("Connection", "Upgrade")] if upgrade else []
    with Conn(e.port) as c:
        g = echo(c.request("GET", "/ws/echo", headers=extra))
    assert _all(g, "connection") == (["upgrade"] if upgrade else ["close"])
    assert _all(g, "upgrade") == (["websocket"] if upgrade else [])
    with Conn(e.port) as c:
        g = echo(c.request("GET", "/v11/echo"))
    assert _all(g, "connection") == []
    with Conn(e.port) as c:
        g = echo(c.request("GET", "/v10/echo"))
    assert [v.lower() for v in _all(g, "connection")] == ["close"]


def test_http_1_0_response_read_to_close(edge, up):
    e = edge(CONFIG, UP=up)
    with Conn(e.port) as c:
        r = c.request("GET", "/v10/nolength/70000")
        assert r.status == 200
        assert len(r.body) == 70000
        r = c.request("GET", "/v10/chunked/50000")     # a 1.1 upstream may still chunk
        assert r.status == 200
        assert len(r.body) == 50000


def test_http_1_0_chunked_request_body_sent_with_length(edge, up):
    e = edge(CONFIG, UP=up)
    body = os.urandom(100_000)
    with Conn(e.port) as c:
        r = c.request("POST", "/v10/echo", headers=[("Transfer-Encoding", "chunked")],
                      body=chunked_encode(body))
    g = echo(r)
    headers = {k.lower(): v for k, v in g["headers"]}
    assert g["version"] == "HTTP/1.0"
    assert "transfer-encoding" not in headers
    assert headers["content-length"] == str(len(body))
    assert g["body_len"] == len(body)
    assert g["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_pass_request_headers_off(edge, up):
    e = edge(CONFIG, UP=up)
    with Conn(e.port) as c:
        off = echo(c.request("GET", "/noheaders/echo", headers=[("X-Client", "yes"),
                                                                 ("Accept", "text/x-test")]))
        on = echo(c.request("GET", "/v11/echo", headers=[("X-Client", "yes"),
                                                         ("Accept", "text/x-test")]))
    off_names = {k.lower() for k, _ in off["headers"]}
    on_names = {k.lower() for k, _ in on["headers"]}
    assert "x-client" not in off_names and "accept" not in off_names
    assert "x-client" in on_names and "accept" in on_names
    assert dict((k.lower(), v) for k, v in off["headers"])["x-set"] == "from-config"
    assert "host" in off_names


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_pass_request_body_off(edge, up, chunked):
    """The body is read (the client's connection goes on) but not sent upstream. With
    `proxy_set_header Content-Length ""`, as nginx's docs pair them, nginx sends the
    same; edge sends no length even without it (nginx would send the client's)."""
    e = edge(CONFIG, UP=up)
    body = os.urandom(50_000)
    if chunked:
        send = dict(headers=[("Transfer-Encoding", "chunked")], body=chunked_encode(body))
    else:
        send = dict(body=body)
    with Conn(e.port) as c:
        got = echo(c.request("POST", "/nobody/echo", **send))
        again = echo(c.request("POST", "/v11/echo", **send))    # same connection
    names = {k.lower() for k, _ in got["headers"]}
    assert got["method"] == "POST" and got["body_len"] == 0
    assert "content-length" not in names and "transfer-encoding" not in names
    assert again["body_len"] == len(body)
    assert again["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.edge_only
def test_pass_request_body_off_sends_no_length(edge, up):
    e = edge(CONFIG, UP=up)
    with Conn(e.port) as c:
        got = echo(c.request("POST", "/nobody-edge/echo", body=b"x" * 3000))
        assert c.request("GET", "/v11/echo").status == 200
    names = {k.lower() for k, _ in got["headers"]}
    assert got["body_len"] == 0 and "content-length" not in names


def test_ignore_headers_accepted(edge, up):
    e = edge(CONFIG, UP=up)
    with Conn(e.port) as c:
        assert echo(c.request("GET", "/ignore/echo"))["target"] == "/ignore/echo"


@pytest.mark.edge_only
@pytest.mark.parametrize("text, message", [
    ("proxy_http_version 2.0;", 'invalid value "2.0" in "proxy_http_version" directive'),
    ("proxy_ignore_headers X-Nothing;", 'invalid value "X-Nothing" in "proxy_ignore_headers"'),
    ("proxy_pass_request_headers maybe;", 'invalid value "maybe" in "proxy_pass_request_headers"'),
])
def test_proxy_directive_errors(tmp_path, text, message):
    conf = tmp_path / "edge.conf"
    conf.write_text("events { }\nhttp {\n" + text + "\n}\n")
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo
    r = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert message in r.stderr and f"{conf}:3" in r.stderr, r.stderr


# -- tcp_nodelay ----------------------------------------------------------------------

SYS_pidfd_getfd = 438


def server_side_nodelay(worker_pids, edge_port, client_port):
    """TCP_NODELAY of the worker's end of the connection from client_port: the socket
    is found by inode (/proc/net/tcp) and duplicated out of the worker (pidfd_getfd)."""
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local_port = int(parts[1].split(":")[1], 16)
            remote_port = int(parts[2].split(":")[1], 16)
            if local_port == edge_port and remote_port == client_port:
                inode = parts[9]
    assert inode is not None
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in worker_pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target != f"socket:[{inode}]":
                continue
            pidfd = os.pidfd_open(pid)
            try:
                dup = libc.syscall(SYS_pidfd_getfd, pidfd, int(fd), 0)
                assert dup >= 0, os.strerror(ctypes.get_errno())
            finally:
                os.close(pidfd)
            s = socket.socket(fileno=dup)
            try:
                return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            finally:
                s.close()
    raise AssertionError(f"no worker holds socket:[{inode}]")


NODELAY = """
http {
    %s
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "ok"; }
    }
}
"""


@pytest.mark.edge_only
@pytest.mark.skipif(os.geteuid() != 0, reason="pidfd_getfd of another process needs root")
@pytest.mark.parametrize("directive, want", [("", True), ("tcp_nodelay on;", True),
                                             ("tcp_nodelay off;", False)])
def test_tcp_nodelay(edge, directive, want):
    e = edge(NODELAY % directive)
    with Conn(e.port) as c:
        assert c.request("GET", "/").status == 200       # accepted and served
        client_port = c.sock.getsockname()[1]
        assert server_side_nodelay(children_of(e.pid), e.port, client_port) is want


@pytest.mark.edge_only
def test_tcp_nodelay_not_in_location(tmp_path):
    conf = tmp_path / "edge.conf"
    conf.write_text("events { }\nhttp {\n server {\n  location / {\n   tcp_nodelay off;\n  }\n }\n}\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], cwd=repo,
                       env={**os.environ, "PYTHONPATH": repo}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert f'"tcp_nodelay" directive is not allowed here in {conf}:5' in r.stderr


# -- server_tokens --------------------------------------------------------------------

TOKENS = """
http {
    %s
    server {
        listen 127.0.0.1:@PORT@;
        location = /fixed { return 200 "fixed"; }
        location = /missing { return 404; }
        location / { proxy_pass http://@UP@; }
    }
}
"""


@pytest.mark.parametrize("directive", ["", "server_tokens on;", "server_tokens off;",
                                       "server_tokens build;"])
def test_server_tokens(edge, up, directive):
    from support import IMPL
    name = "nginx" if IMPL == "nginx" else "edge"
    e = edge(TOKENS % directive, UP=up)
    with Conn(e.port) as c:
        responses = [c.request("GET", "/fixed"), c.request("GET", "/missing"),
                     c.request("GET", "/echo")]
    assert [r.status for r in responses] == [200, 404, 200]
    for r in responses:
        server = r.header_all("Server")
        assert len(server) == 1, r           # the upstream's own Server is replaced
        if "off" in directive:
            assert server[0] == name
        else:
            assert re.fullmatch(re.escape(name) + r"/\d+\.\d+\.\d+", server[0]), server
    foot = re.search(rb"<hr><center>([^<]*)</center>", responses[1].body)
    assert foot is not None and foot.group(1).decode() == responses[1].header("Server")


def test_server_tokens_only_in_http(tmp_path):
    from support import IMPL
    if IMPL == "nginx":
        pytest.skip("nginx takes it per server and location too")
    conf = tmp_path / "edge.conf"
    conf.write_text("events { }\nhttp {\n server {\n  server_tokens off;\n }\n}\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], cwd=repo,
                       env={**os.environ, "PYTHONPATH": repo}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert f'"server_tokens" directive is not allowed here in {conf}:4' in r.stderr


@pytest.mark.edge_only
def test_server_tokens_follow_a_reload(edge, up):
    import time
    e = edge(TOKENS % "server_tokens off;", UP=up)
    assert Conn(e.port).request("GET", "/missing").header("Server") == "edge"
    e.conf_path.write_text(e.conf_text.replace("server_tokens off;", "server_tokens on;"))
    workers = set(e.worker_pids())
    e.send_signal(__import__("signal").SIGHUP)
    deadline = time.monotonic() + 10
    while "generation 2 is in force" not in e.error_log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "generation 2 is in force" in e.error_log
    assert set(e.worker_pids()) == workers          # in place
    with Conn(e.port) as c:
        for target in ("/missing", "/fixed", "/echo"):
            assert c.request("GET", target).header("Server").startswith("edge/"), target
