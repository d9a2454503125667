"""Complete nginx configs, written in the style of real deployments (issue 15, Tests):
each is a directory under tests/configs/nginx/, run unchanged but for the @TOKENS@ the
harness fills in (ports and paths), and each must pass `edge -t` and answer a table of
requests as nginx 1.22 does. `EDGE_TEST_IMPL=nginx python3 -m pytest
tests/test_nginx_configs.py` runs the same configs and tables under nginx.

- app/: a Node/Django application behind the proxy, with the usual
  `map $http_upgrade $connection_upgrade` WebSocket block (a real websockets client and
  server), static assets by `alias` with `expires 30d`, uploads under /media/,
  `proxy_cache_bypass $http_upgrade` from the Node guides;
- api/: a JSON API whose clients are named by a `map` on X-Api-Key and limited by
  `limit_req` (burst/nodelay, a stricter zone for writes, 429 and 503 as configured,
  internal keys not counted because their mapped key is empty);
- debian/: Debian's stock /etc/nginx/nginx.conf and sites-available/default (copied from
  the nginx package; only the pid, log, include paths, listen ports and root differ:
  `test_debian_files_are_the_stock_ones` checks that against this machine's copy), with
  /etc/nginx/mime.types as it is, `user www-data` and `gzip on`;
- multisite/: several sites on port 80 redirected to https, a default_server on each
  port, www. to the bare name, error_page, TLS certificates from the tests' CA.
"""

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect
from websockets.sync.server import serve

from support import IMPL, Conn, EdgeProcess
from support.edge import children_of, control_of
from support.ports import free_port
from support.tls import TlsFiles, https_request, served_cert

REPO = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs" / "nginx"


def edge_knows(name):
    """True when edge declares the directive (the gzip and error_page branches add theirs)."""
    from edge.cycle import all_directives
    return any(d.name == name for d in all_directives())


def render_tree(name, dest: Path, values: dict) -> str:
    """Copy tests/configs/nginx/NAME into dest, filling the @TOKENS@ of every file but
    nginx.conf (returned as the template for EdgeProcess, which fills its own)."""
    src = CONFIGS / name
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
            continue
        text = path.read_text()
        if rel == Path("nginx.conf"):
            main = text
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(re.sub(r"@([A-Z][A-Z0-9_]*)@", lambda m: str(values[m.group(1)]), text))
    return main


def wait_port(port, host="127.0.0.1", timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def write(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def request(port, method="GET", target="/", host="localhost", headers=(), body=None, addr="127.0.0.1"):
    with Conn(port, addr) as c:
        return c.request(method, target, host=host, headers=list(headers), body=body)


def upstream_headers(r):
    """The request head the recording upstream saw (support/upstream.py's JSON echo)."""
    seen = json.loads(r.body)
    h = {}
    for k, v in seen["headers"]:
        h.setdefault(k.lower(), []).append(v)
    return seen, {k: ", ".join(v) for k, v in h.items()}


@pytest.fixture
def world_dir():
    """A directory every user can traverse (pytest's own tmp_path is root's alone), for
    configs whose workers run as another user."""
    d = Path(tempfile.mkdtemp(prefix="edge-configs-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.edge_only
def test_each_config_passes_edge_t(tmp_path):
    """`edge -t` on each config as shipped (tokens filled with free ports and paths that
    exist); debian and multisite are checked by their own classes below."""
    for name in ("app", "api"):
        d = tmp_path / name
        d.mkdir()
        vals = {"PORT": free_port(), "APP": "127.0.0.1:9", "WS": "127.0.0.1:9", "UP": "127.0.0.1:9",
                "LOGS": d, "SITE": d}
        text = render_tree(name, d, vals)
        text = re.sub(r"@([A-Z][A-Z0-9_]*)@", lambda m: str(vals[m.group(1)]), text)
        (d / "nginx.conf").write_text(text)
        p = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(d / "nginx.conf")], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "test is successful" in p.stderr


# ---------------------------------------------------------------- app/: Node/Django + WebSocket

class WsApp:
    """The application's WebSocket side (websockets' server in a thread): echoes, and
    records the Host and Upgrade/Connection headers of each handshake."""

    def __init__(self):
        self.handshakes = []

        def handler(ws):
            self.handshakes.append({k.lower(): v for k, v in ws.request.headers.raw_items()}
                                   | {":path": ws.request.path})
            for msg in ws:
                ws.send(msg)

        self.server = serve(handler, "127.0.0.1", 0, compression=None)
        self.addr = f"127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def ws_app():
    s = WsApp()
    yield s
    s.stop()


CSS = b"body { margin: 0 }\n" * 20
JS = b"console.log('app');\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
ICO = b"\x00\x00\x01\x00icon"


@pytest.fixture
def app(edge, tmp_path, upstream, ws_app):
    site = tmp_path / "site"
    write(site / "collected_static" / "css" / "site.css", CSS)
    write(site / "collected_static" / "js" / "app.js", JS)
    write(site / "collected_static" / "favicon.ico", ICO)
    write(site / "media" / "uploads" / "photo.png", PNG)
    write(tmp_path / "settings.py", b"SECRET_KEY = 'x'\n")
    template = render_tree("app", tmp_path, {})
    return edge(template, LOGS=tmp_path, SITE=site, APP=upstream, WS=ws_app)


@pytest.mark.parametrize("target,status,ctype,body", [
    ("/static/css/site.css", 200, "text/css", CSS),
    ("/static/js/app.js", 200, "application/javascript", JS),
    ("/media/uploads/photo.png", 200, "image/png", PNG),
    ("/favicon.ico", 200, "image/x-icon", ICO),
    ("/static/missing.css", 404, "text/html", None),
    ("/static/../../settings.py", 400, "text/html", None),       # above the root: refused
    ("/static/%2e%2e/%2e%2e/settings.py", 400, "text/html", None),
])
def test_app_static(app, target, status, ctype, body):
    r = request(app.port, "GET", target, host="app.example.com")
    assert r.status == status, r
    assert r.header("Content-Type").split(";")[0] == ctype
    if body is not None:
        assert r.body == body
    if target.startswith("/static/") and status == 200:
        # expires 30d: both headers, the max-age exact and Expires 30 days from now
        assert r.header("Cache-Control") == "max-age=2592000"
        import email.utils
        exp = email.utils.parsedate_to_datetime(r.header("Expires")).timestamp()
        assert abs(exp - (time.time() + 2592000)) < 120
    elif status == 200:
        assert not r.has("Cache-Control") and not r.has("Expires")


def test_app_server_tokens_off(app):
    r = request(app.port, "GET", "/static/js/app.js", host="app.example.com")
    # server_tokens off: the product name alone, no version
    assert r.header("Server") in ("nginx", "edge")


def test_app_proxied_get_headers(app, upstream):
    r = request(app.port, "GET", "/api/items?page=2", host="app.example.com",
                headers=[("X-Forwarded-For", "203.0.113.7")])
    assert r.status == 200
    seen, h = upstream_headers(r)
    assert seen["target"] == "/api/items?page=2"
    assert seen["version"] == "HTTP/1.1"                     # proxy_http_version 1.1
    assert h["host"] == "app.example.com"                    # $http_host
    assert h["x-real-ip"] == "127.0.0.1"
    assert h["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["connection"] == "close"                        # no Upgrade: $connection_upgrade
    assert "upgrade" not in h                                # an empty value is not sent


def test_app_proxied_post_and_static_prefix_without_slash(app, upstream):
    body = os.urandom(100_000)
    r = request(app.port, "POST", "/api/upload", host="app.example.com", body=body,
                headers=[("Content-Type", "application/octet-stream")])
    assert r.status == 200
    seen, _ = upstream_headers(r)
    assert seen["method"] == "POST" and seen["body_len"] == len(body)
    # "/static" is not under "location /static/": it goes to the application
    r = request(app.port, "GET", "/static", host="app.example.com")
    assert r.status == 200 and upstream_headers(r)[0]["target"] == "/static"


def test_app_upgrade_header_sent_on_upgrade(app, upstream):
    """An Upgrade request to the HTTP app: Upgrade and Connection: upgrade go to the
    upstream (which answers a plain 200: the connection stays HTTP)."""
    r = request(app.port, "GET", "/api/live", host="app.example.com",
                headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                         ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")])
    assert r.status == 200
    _, h = upstream_headers(r)
    assert h["upgrade"] == "websocket"
    assert h["connection"] == "upgrade"


def test_app_websocket(app, ws_app):
    with connect(f"ws://localhost:{app.port}/ws/chat?room=1", open_timeout=5, close_timeout=3,
                 compression=None) as c:
        for i in range(10):
            c.send(f"message {i}")
            assert c.recv(timeout=5) == f"message {i}"
        c.send(b"\x00binary\xff" * 1000)
        assert c.recv(timeout=5) == b"\x00binary\xff" * 1000
    hs = ws_app.handshakes[-1]
    assert hs[":path"] == "/ws/chat?room=1"
    assert hs["host"] == "localhost"                         # $host: without the port
    assert hs["upgrade"].lower() == "websocket"
    assert hs["connection"].lower() == "upgrade"


def test_app_access_log(app):
    request(app.port, "GET", "/api/logged", host="app.example.com", headers=[("User-Agent", "probe/1")])
    request(app.port, "GET", "/static/js/app.js", host="app.example.com")     # access_log off there
    log = Path(app.subst["LOGS"]) / "access.log"
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "/api/logged" in text:
            break
        time.sleep(0.05)
    line = next(l for l in text.splitlines() if "/api/logged" in l)
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /api/logged HTTP/1\.1" 200 \d+ "-" "probe/1"', line), line
    assert "/static/" not in text


# ---------------------------------------------------------------- api/: map + limit_req

@pytest.fixture
def api(edge, tmp_path, upstream):
    template = render_tree("api", tmp_path, {})
    return edge(template, LOGS=tmp_path, UP=upstream)


def _key(prefix=""):
    return prefix + uuid.uuid4().hex[:12]


def api_get(api, target, key=None, method="GET", body=None):
    headers = [("X-Api-Key", key)] if key is not None else []
    return request(api.port, method, target, host="api.example.com", headers=headers, body=body)


def test_api_fixed_answers(api):
    r = api_get(api, "/health")
    assert (r.status, r.header("Content-Type"), r.body) == (200, "application/json", b'{"status":"ok"}')
    r = api_get(api, "/nope")
    assert (r.status, r.header("Content-Type"), r.body) == (404, "application/json", b'{"error":"not found"}')


def test_api_burst_then_429(api, upstream):
    key = _key()
    statuses = [api_get(api, "/v1/items", key).status for _ in range(5)]
    # rate 1r/m: the first, then burst=2 at once (nodelay), then 429 (limit_req_status)
    assert statuses == [200, 200, 200, 429, 429]
    assert len([q for q in upstream.requests if q.header("X-Api-Key") == key]) == 3


def test_api_tier_header_and_map(api, upstream):
    r = api_get(api, "/v1/items", _key("pro-"))
    assert r.status == 200 and r.header("X-Api-Tier") == "pro"
    assert upstream_headers(r)[1]["x-api-tier"] == "pro"
    _, h = upstream_headers(r)
    assert "connection" not in h                          # proxy_set_header Connection ""
    r = api_get(api, "/v1/items", _key())
    assert r.header("X-Api-Tier") == "free"
    r = api_get(api, "/v1/items")
    assert r.header("X-Api-Tier") == "anonymous"


def test_api_429_keeps_always_headers(api):
    key = _key("pro-")
    rs = [api_get(api, "/v1/items", key) for _ in range(4)]
    assert [r.status for r in rs] == [200, 200, 200, 429]
    assert rs[-1].header("X-Api-Tier") == "pro"            # add_header ... always


@pytest.mark.parametrize("key", [None, "internal-batch", "internal-reports"])
def test_api_empty_key_not_limited(api, key):
    # no X-Api-Key (an empty key) and the internal ones (mapped to "") are not counted
    statuses = [api_get(api, "/v1/items", key).status for _ in range(6)]
    assert statuses == [200] * 6


def test_api_writes_zone(api):
    key = _key()
    assert api_get(api, "/v1/items", key, "POST", b"{}").status == 200
    # the writes zone has no burst: the next write is rejected at once
    assert api_get(api, "/v1/items", key, "POST", b"{}").status == 429


def test_api_v2_answers_503(api):
    key = _key()
    statuses = [api_get(api, "/v2/items", key).status for _ in range(4)]
    assert statuses == [200, 200, 503, 503]                 # burst=1, limit_req_status 503


def test_api_zones_are_per_key(api):
    a, b = _key(), _key()
    assert [api_get(api, "/v1/x", a).status for _ in range(4)] == [200, 200, 200, 429]
    assert [api_get(api, "/v1/x", b).status for _ in range(3)] == [200, 200, 200]


# ---------------------------------------------------------------- debian/: the stock files

INDEX = Path("/usr/share/nginx/html/index.html")


def test_debian_files_are_the_stock_ones():
    """The copies differ from the package's files only on the lines the harness needs
    (paths and ports, written as @TOKENS@)."""
    pairs = [(Path("/etc/nginx/nginx.conf"), CONFIGS / "debian" / "nginx.conf"),
             (Path("/etc/nginx/sites-available/default"), CONFIGS / "debian" / "sites-available" / "default")]
    for stock, ours in pairs:
        if not stock.exists():
            pytest.skip(f"{stock} is not on this machine")
        a, b = stock.read_text().splitlines(), ours.read_text().splitlines()
        assert len(a) == len(b), f"{stock} is not the file copied to {ours} (another nginx-common?)"
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert changed and all("@" in y for _, y in changed), changed
        assert len(changed) <= 6


def _has_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def debian(edge, world_dir):
    if not _has_ipv6():
        pytest.skip("no IPv6 here: Debian's default site listens on [::]:80 too")
    conf = world_dir / "etc-nginx"
    www = world_dir / "www"
    write(www / "index.nginx-debian.html", INDEX.read_bytes() if INDEX.exists() else b"<h1>Welcome</h1>\n" * 10)
    write(www / "about" / "index.htm", b"<p>about</p>\n")
    write(www / "style.css", CSS)
    write(www / "notes.txt", b"notes\n")
    for d in ("modules-enabled", "conf.d", "sites-available"):
        (conf / d).mkdir(parents=True, exist_ok=True)
    port = free_port()
    template = render_tree("debian", conf, {"PORT": port, "WWW": www})
    (conf / "sites-enabled").mkdir()
    os.symlink("../sites-available/default", conf / "sites-enabled" / "default")
    for p in world_dir.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    e = EdgeProcess(world_dir / "run", template, {"LOGS": world_dir / "run", "CONF": conf})
    os.chmod(world_dir / "run", 0o755)
    edge.procs.append(e)
    e.start()
    wait_port(port)
    wait_port(port, "::1")
    e.site_port = port
    e.www = www
    return e


@pytest.mark.skipif(not edge_knows("gzip") and IMPL != "nginx",
                    reason="Debian's nginx.conf has `gzip on;`: edge learns gzip on the gzip branch")
class TestDebianDefault:
    def test_edge_t(self, debian):
        if IMPL == "nginx":
            pytest.skip("edge -t")
        p = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(debian.conf_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        # the one no-op of the stock file warns, naming its line
        assert re.search(r'"types_hash_max_size" directive does nothing in edge.*edge\.conf:20$', p.stderr, re.M)

    @pytest.mark.parametrize("target,status,ctype,location", [
        ("/", 200, "text/html", None),
        ("/index.nginx-debian.html", 200, "text/html", None),
        ("/about/", 200, "text/html", None),               # index.htm, the second index
        ("/about", 301, "text/html", "http://localhost:{port}/about/"),
        ("/style.css", 200, "text/css", None),
        ("/notes.txt", 200, "text/plain", None),
        ("/missing", 404, "text/html", None),              # try_files ... =404
        ("/.htaccess", 404, "text/html", None),
    ])
    def test_requests(self, debian, target, status, ctype, location):
        for addr in ("127.0.0.1", "::1"):
            r = request(debian.site_port, "GET", target, host="localhost", addr=addr)
            assert r.status == status, r
            assert r.header("Content-Type").split(";")[0] == ctype
            if location:
                assert r.header("Location") == location.format(port=debian.site_port)
            if status == 200 and target.endswith((".css", ".txt")):
                assert r.body == (debian.www / target.lstrip("/")).read_bytes()

    def test_head_and_gzip(self, debian):
        body = (debian.www / "index.nginx-debian.html").read_bytes()
        r = request(debian.site_port, "HEAD", "/")
        assert r.status == 200 and r.body == b"" and int(r.header("Content-Length")) == len(body)
        # gzip on; gzip_types defaults to text/html: the page is compressed, CSS is not
        r = request(debian.site_port, "GET", "/", headers=[("Accept-Encoding", "gzip")])
        assert r.header("Content-Encoding") == "gzip"
        assert gzip.decompress(r.body) == body
        r = request(debian.site_port, "GET", "/style.css", headers=[("Accept-Encoding", "gzip")])
        assert not r.has("Content-Encoding") and r.body == CSS

    def test_workers_run_as_www_data(self, debian):
        import pwd
        uid = pwd.getpwnam("www-data").pw_uid
        workers = children_of(debian.pid)
        assert workers
        procs = workers + (control_of(debian.pid) if IMPL == "edge" else [])
        for pid in procs:
            with open(f"/proc/{pid}/status") as f:
                uids = next(l for l in f if l.startswith("Uid:")).split()[1:]
            assert set(map(int, uids)) == {uid}, (pid, uids)

    def test_access_log(self, debian):
        request(debian.site_port, "GET", "/notes.txt", headers=[("User-Agent", "deb/1")])
        log = debian.workdir / "access.log"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "/notes.txt" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        line = next(l for l in log.read_text().splitlines() if "/notes.txt" in l)
        assert re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /notes\.txt HTTP/1\.1" 200 6 "-" "deb/1"', line)


# ---------------------------------------------------------------- multisite/: https, error_page

@pytest.fixture
def multisite(edge, tmp_path, upstream):
    site = tmp_path / "site"
    write(site / "example" / "index.html", b"<h1>example.com</h1>\n")
    write(site / "example" / "404.html", b"<h1>our 404 page</h1>\n")
    write(site / "example" / "docs" / "index.html", b"docs\n")
    write(site / "errors" / "50x.html", b"<h1>we will be back</h1>\n")
    write(site / "acme" / ".well-known" / "acme-challenge" / "tok123", b"tok123.thumbprint")
    files = TlsFiles(tmp_path / "certs")
    files.server("example.com", "www.example.com", label="example")
    files.server("shop.example.com", label="shop")
    files.server("invalid.test", label="default")
    template = render_tree("multisite", tmp_path, {})
    down = free_port()                 # nothing listens there: a 502
    e = edge(template, LOGS=tmp_path, SITE=site, CERTS=files.dir, UP=upstream, DOWN=f"127.0.0.1:{down}")
    e.tls_files = files
    e.http_port, e.https_port = e.ports["PORT"], e.ports["PORT1"]
    return e


def https(e, target, host, sni=None, **kw):
    return https_request(e.https_port, "GET", target, host=host, sni=sni or host, ca=e.tls_files.ca_pem, **kw)


_needs_error_page = pytest.mark.skipif(
    not edge_knows("error_page") and IMPL != "nginx",
    reason="the multisite config has error_page: edge learns it on the errpage branch")


@_needs_error_page
class TestMultisite:
    @pytest.mark.parametrize("host,target,location", [
        ("example.com", "/pricing?plan=pro", "https://example.com/pricing?plan=pro"),
        ("www.example.com", "/", "https://www.example.com/"),
        ("shop.example.com", "/cart/1%202", "https://shop.example.com/cart/1%202"),
    ])
    def test_port_80_redirects(self, multisite, host, target, location):
        r = request(multisite.http_port, "GET", target, host=host)
        assert r.status == 301 and r.header("Location") == location

    def test_port_80_default_server_and_acme(self, multisite):
        assert request(multisite.http_port, "GET", "/", host="unknown.test").status == 404
        with Conn(multisite.http_port) as c:
            c.send(b"GET / HTTP/1.0\r\n\r\n")
            assert c.read_response().status == 404
        r = request(multisite.http_port, "GET", "/.well-known/acme-challenge/tok123", host="example.com")
        assert r.status == 200 and r.body == b"tok123.thumbprint"

    def test_certificates_by_sni(self, multisite):
        assert served_cert(multisite.https_port, sni="example.com").label == "example"
        assert served_cert(multisite.https_port, sni="www.example.com").label == "example"
        assert served_cert(multisite.https_port, sni="shop.example.com").label == "shop"
        assert served_cert(multisite.https_port, sni="other.test").label == "default"
        assert served_cert(multisite.https_port).label == "default"

    def test_https_site(self, multisite):
        r = https(multisite, "/", "example.com")
        assert r.status == 200 and r.body == b"<h1>example.com</h1>\n"
        assert r.header("Strict-Transport-Security") == "max-age=63072000"
        r = https(multisite, "/docs/", "example.com")
        assert r.status == 200 and r.body == b"docs\n"
        r = https(multisite, "/docs", "example.com")
        assert r.status == 301
        assert r.header("Location") == f"https://example.com:{multisite.https_port}/docs/"
        r = https(multisite, "/old-blog/2020/post?x=1", "example.com")
        assert r.status == 301
        assert r.header("Location") == f"https://example.com:{multisite.https_port}/blog/2020/post?x=1"

    def test_https_www_and_unknown(self, multisite):
        r = https(multisite, "/a?b=c", "www.example.com")
        assert r.status == 301 and r.header("Location") == "https://example.com/a?b=c"
        r = https_request(multisite.https_port, "GET", "/", host="other.test", sni="other.test",
                          ca=multisite.tls_files.ca_pem, verify=False)
        assert r.status == 421

    def test_https_proxied_site(self, multisite, upstream):
        r = https(multisite, "/cart?id=3", "shop.example.com")
        assert r.status == 200
        seen, h = upstream_headers(r)
        assert seen["target"] == "/cart?id=3"
        assert h["host"] == "shop.example.com" and h["x-forwarded-proto"] == "https"
        r = https(multisite, "/app/login", "example.com", headers=[("X-Forwarded-For", "198.51.100.1")])
        _, h = upstream_headers(r)
        assert h["x-forwarded-for"] == "198.51.100.1, 127.0.0.1"

    def test_error_pages(self, multisite):
        r = https(multisite, "/missing", "example.com")
        assert r.status == 404 and r.body == b"<h1>our 404 page</h1>\n"
        assert r.header("Strict-Transport-Security") == "max-age=63072000"
        r = https(multisite, "/404.html", "example.com")       # internal: not served as itself
        assert r.status == 404 and r.body == b"<h1>our 404 page</h1>\n"
        r = https(multisite, "/down/x", "example.com")
        assert r.status == 502 and r.body == b"<h1>we will be back</h1>\n"
