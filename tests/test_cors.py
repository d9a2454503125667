"""CORS at the edge: preflights answered by edge (the upstream sees nothing), the headers
of actual responses (upstream answers and edge's own errors alike), origins exact / `*` /
regex, credentials, max age, requested headers, inheritance and the config errors.

nginx has no CORS module: everything here is edge's (marked edge_only). The behaviour is
the Fetch standard's CORS protocol as the cors plugins of APISIX and Kong implement it;
docs/auth-ip-cors.md lists where edge differs from them.
"""

import time

import pytest

from support import Conn, EdgeProcess, Upstream, closed_port, request

pytestmark = pytest.mark.edge_only

APP = "https://app.example.com"
EVIL = "https://evil.example.net"

CONF = r"""
http {
    server {
        listen 127.0.0.1:@PORT@;
        location /exact/ {
            cors_allow_origins https://app.example.com http://localhost:3000;
            cors_expose_headers X-Request-Id X-Total-Count;
            proxy_pass http://@UP@;
        }
        location /any/ {
            cors_allow_origins *;
            cors_expose_headers X-Total-Count;
            proxy_pass http://@UP@;
        }
        location /regex/ {
            cors_allow_origins ~^https://[a-z0-9-]+\.example\.com$ https://exact.example.org;
            proxy_pass http://@UP@;
        }
        location /creds/ {
            cors_allow_origins https://app.example.com;
            cors_allow_credentials on;
            cors_allow_methods GET POST;
            cors_allow_headers Authorization Content-Type;
            cors_max_age 10m;
            proxy_pass http://@UP@;
        }
        location /echo-methods/ {
            cors_allow_origins https://app.example.com;
            cors_allow_methods *;
            proxy_pass http://@UP@;
        }
        location /denied-ip/ {
            deny all;
            cors_allow_origins https://app.example.com;
            proxy_pass http://@UP@;
        }
        location /plain/ { proxy_pass http://@UP@; }
    }
    server {
        listen 127.0.0.1:@PORT1@;
        cors_allow_origins https://app.example.com;
        cors_allow_credentials on;
        location /inherit/ { proxy_pass http://@UP@; }
        location /off/ { cors_allow_origins off; proxy_pass http://@UP@; }
        location /other/ { cors_allow_origins https://other.example.com; proxy_pass http://@UP@; }
        location /return/ { return 200 "hi\n"; }
    }
}
"""


@pytest.fixture(scope="module")
def up():
    s = Upstream("up").start()
    yield s
    s.stop()
    assert not s.errors, s.errors


@pytest.fixture(scope="module")
def srv(tmp_path_factory, up):
    e = EdgeProcess(tmp_path_factory.mktemp("cors"), CONF, {"UP": up.addr}).start()
    try:
        yield e
    finally:
        try:
            e.stop()
        finally:
            e.kill_group()
        assert not e.problems, e.problems


def preflight(port, path, origin, method="PUT", req_headers=None, extra=()):
    headers = [("Origin", origin)] if origin else []
    headers.append(("Access-Control-Request-Method", method))
    if req_headers:
        headers.append(("Access-Control-Request-Headers", req_headers))
    return request(port, "OPTIONS", path, headers=headers + list(extra))


def unseen(up, before):
    time.sleep(0.02)
    assert len(up.requests) == before, "the upstream saw a request edge should have answered"


def vary(r):
    return [t.strip() for v in r.header_all("Vary") for t in v.split(",")]


# -- preflights ---------------------------------------------------------------------------

def test_preflight_allowed_exact_origin(srv, up):
    before = len(up.requests)
    r = preflight(srv.port, "/exact/items", APP, "DELETE", "X-Api-Key, Content-Type")
    assert r.status == 204, r
    assert r.header("Access-Control-Allow-Origin") == APP
    assert r.header("Access-Control-Allow-Methods") == "GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS"
    assert r.header("Access-Control-Allow-Headers") == "X-Api-Key, Content-Type"    # echoed
    assert not r.has("Access-Control-Allow-Credentials")
    assert not r.has("Access-Control-Max-Age")
    assert not r.has("Access-Control-Expose-Headers")       # actual responses only
    assert "Origin" in vary(r)
    assert r.body == b"" and not r.has("Content-Length")
    unseen(up, before)


def test_preflight_second_exact_origin_and_case(srv, up):
    r = preflight(srv.port, "/exact/", "http://localhost:3000")
    assert r.header("Access-Control-Allow-Origin") == "http://localhost:3000"
    r = preflight(srv.port, "/exact/", "HTTPS://APP.Example.com")
    assert r.header("Access-Control-Allow-Origin") == "HTTPS://APP.Example.com"


@pytest.mark.parametrize("origin", [EVIL, "https://app.example.com.evil.net", "http://app.example.com",
                                    "https://app.example.com:8443", "null", "https://app.example.co"])
def test_preflight_origin_not_allowed(srv, up, origin):
    """204 without any Access-Control-Allow-* header: the browser blocks the request."""
    before = len(up.requests)
    r = preflight(srv.port, "/exact/items", origin, "PUT", "X-Api-Key")
    assert r.status == 204, r
    assert not [h for h, _ in r.headers if h.lower().startswith("access-control-")], r.headers
    assert vary(r) == ["Origin"]
    unseen(up, before)


def test_preflight_any_origin(srv, up):
    before = len(up.requests)
    r = preflight(srv.port, "/any/x", EVIL, "PATCH")
    assert r.status == 204
    assert r.header("Access-Control-Allow-Origin") == "*"
    assert "Origin" not in vary(r)
    unseen(up, before)


@pytest.mark.parametrize("origin,allowed", [
    ("https://app.example.com", True),
    ("https://a-b-1.example.com", True),
    ("HTTPS://SHOP.EXAMPLE.COM", True),         # case-insensitive
    ("https://exact.example.org", True),        # an exact origin next to the regex
    ("https://example.com", False),
    ("https://x.example.com.evil.net", False),  # anchored by the operator's $
    ("http://app.example.com", False),
    ("https://a.b.example.com", False),
])
def test_preflight_regex_origin(srv, up, origin, allowed):
    r = preflight(srv.port, "/regex/", origin)
    assert r.status == 204
    assert r.header("Access-Control-Allow-Origin") == (origin if allowed else None)


def test_preflight_with_credentials_methods_headers_max_age(srv, up):
    before = len(up.requests)
    r = preflight(srv.port, "/creds/", APP, "POST", "Authorization, X-Other")
    assert r.status == 204
    assert r.header("Access-Control-Allow-Origin") == APP
    assert r.header("Access-Control-Allow-Credentials") == "true"
    assert r.header("Access-Control-Allow-Methods") == "GET, POST"
    assert r.header("Access-Control-Allow-Headers") == "Authorization, Content-Type"   # configured, not echoed
    assert r.header("Access-Control-Max-Age") == "600"
    unseen(up, before)


def test_preflight_echoes_the_requested_method(srv, up):
    r = preflight(srv.port, "/echo-methods/", APP, "PURGE")
    assert r.header("Access-Control-Allow-Methods") == "PURGE"
    assert "Access-Control-Request-Method" in vary(r)


def test_preflight_without_requested_headers(srv, up):
    r = preflight(srv.port, "/exact/", APP, "PUT")
    assert not r.has("Access-Control-Allow-Headers")


def test_options_without_request_method_is_not_a_preflight(srv, up):
    """OPTIONS with Origin but no Access-Control-Request-Method is an actual request."""
    before = len(up.requests)
    r = request(srv.port, "OPTIONS", "/exact/opt", headers=[("Origin", APP)])
    assert r.status == 200
    assert len(up.requests) == before + 1 and up.last().method == "OPTIONS"
    assert r.header("Access-Control-Allow-Origin") == APP


def test_preflight_without_origin_is_proxied(srv, up):
    before = len(up.requests)
    r = preflight(srv.port, "/exact/noorigin", None)
    assert r.status == 200 and len(up.requests) == before + 1
    assert not r.has("Access-Control-Allow-Origin")


def test_preflight_then_actual_request_on_one_connection(srv, up):
    before = len(up.requests)
    with Conn(srv.port) as c:
        r = c.request("OPTIONS", "/creds/a", headers=[("Origin", APP), ("Access-Control-Request-Method", "POST")])
        assert r.status == 204 and "close" not in r.connection_tokens()
        r = c.request("POST", "/creds/a", headers=[("Origin", APP)], body=b'{"a":1}')
        assert r.status == 200
        assert r.header("Access-Control-Allow-Origin") == APP
        r = c.request("GET", "/creds/b")        # no Origin: no CORS headers
        assert r.status == 200 and not r.has("Access-Control-Allow-Origin")
        assert "Origin" in vary(r)
    assert [q.method for q in up.requests[before:]] == ["POST", "GET"]


# -- actual requests ------------------------------------------------------------------------

@pytest.mark.parametrize("path,status", [("/exact/echo", 200), ("/exact/status/500", 500),
                                         ("/exact/status/404", 404)])
def test_actual_request_allowed(srv, up, path, status):
    r = request(srv.port, "GET", path, headers=[("Origin", APP)])
    assert r.status == status
    assert r.header("Access-Control-Allow-Origin") == APP
    assert r.header("Access-Control-Expose-Headers") == "X-Request-Id, X-Total-Count"
    assert not r.has("Access-Control-Allow-Credentials")
    assert not r.has("Access-Control-Allow-Methods")
    assert "Origin" in vary(r)
    assert len(r.header_all("Access-Control-Allow-Origin")) == 1


def test_actual_request_origin_not_allowed(srv, up):
    r = request(srv.port, "GET", "/exact/echo", headers=[("Origin", EVIL)])
    assert r.status == 200          # served: the browser keeps the response from the script
    assert not r.has("Access-Control-Allow-Origin") and not r.has("Access-Control-Expose-Headers")
    assert vary(r) == ["Origin"]


def test_actual_request_with_credentials(srv, up):
    for path in ("/creds/echo", "/creds/status/500"):
        r = request(srv.port, "GET", path, headers=[("Origin", APP), ("Cookie", "s=1")])
        assert r.header("Access-Control-Allow-Origin") == APP
        assert r.header("Access-Control-Allow-Credentials") == "true"


def test_actual_request_any_origin(srv, up):
    r = request(srv.port, "GET", "/any/status/500", headers=[("Origin", EVIL)])
    assert r.status == 500
    assert r.header("Access-Control-Allow-Origin") == "*"
    assert r.header("Access-Control-Expose-Headers") == "X-Total-Count"


def test_edge_errors_carry_the_headers(srv, up):
    """A rejection by edge itself (an IP rule here) carries the CORS headers, so the
    browser lets the script see the 403; the preflight of a denied client is denied too
    (the IP rules run before the preflight)."""
    before = len(up.requests)
    r = request(srv.port, "GET", "/denied-ip/", headers=[("Origin", APP)])
    assert r.status == 403
    assert r.header("Access-Control-Allow-Origin") == APP
    r = preflight(srv.port, "/denied-ip/", APP)
    assert r.status == 403
    unseen(up, before)


def test_limit_and_gateway_errors_carry_the_headers(edge, upstream):
    """429 from a limit (the preflight costs no token: it is answered before the limits)
    and 502 from a dead upstream carry the CORS headers too."""
    e = edge(f"""http {{
        limit_req_zone $remote_addr zone=one:1m rate=1r/m;
        server {{ listen 127.0.0.1:@PORT@;
            cors_allow_origins {APP};
            location /limited/ {{ limit_req zone=one; proxy_pass http://@UP@; }}
            location /dead/ {{ proxy_pass http://127.0.0.1:{closed_port()}; }}
        }} }}""", UP=upstream)
    for _ in range(3):
        assert preflight(e.port, "/limited/", APP).status == 204
    r = request(e.port, "GET", "/limited/echo", headers=[("Origin", APP)])
    assert r.status == 200 and r.header("Access-Control-Allow-Origin") == APP
    r = request(e.port, "GET", "/limited/echo", headers=[("Origin", APP)])
    assert r.status == 429 and r.header("Access-Control-Allow-Origin") == APP
    r = request(e.port, "GET", "/dead/", headers=[("Origin", APP)])
    assert r.status == 502 and r.header("Access-Control-Allow-Origin") == APP
    assert len(upstream.requests) == 1


def test_location_without_cors_is_untouched(srv, up):
    r = request(srv.port, "GET", "/plain/echo", headers=[("Origin", APP)])
    assert not [h for h, _ in r.headers if h.lower().startswith("access-control-") or h.lower() == "vary"]
    r = preflight(srv.port, "/plain/", APP)
    assert r.status == 200 and up.last().method == "OPTIONS"


def test_upstream_cors_headers_are_replaced(edge, srv):
    """The upstream's own Access-Control-Allow-Origin / -Credentials / -Expose-Headers are
    dropped, edge's are sent (here the upstream is another edge that allows `*`)."""
    inner = edge("""http { server { listen 127.0.0.1:@PORT@;
        location / { cors_allow_origins *; cors_expose_headers X-Inner; return 200 "inner\\n"; } } }""")
    outer = edge(f"""http {{ server {{ listen 127.0.0.1:@PORT@;
        location / {{ cors_allow_origins {APP}; proxy_pass http://127.0.0.1:{inner.port}; }} }} }}""")
    r = request(inner.port, "GET", "/", headers=[("Origin", EVIL)])
    assert r.header("Access-Control-Allow-Origin") == "*"
    r = request(outer.port, "GET", "/", headers=[("Origin", EVIL)])
    assert r.body == b"inner\n"
    assert not r.has("Access-Control-Allow-Origin") and not r.has("Access-Control-Expose-Headers")
    r = request(outer.port, "GET", "/", headers=[("Origin", APP)])
    assert r.header_all("Access-Control-Allow-Origin") == [APP]


# -- inheritance ------------------------------------------------------------------------

def test_inheritance(srv, up):
    port = srv.ports["PORT1"]
    r = request(port, "GET", "/inherit/echo", headers=[("Origin", APP)])
    assert r.header("Access-Control-Allow-Origin") == APP
    assert r.header("Access-Control-Allow-Credentials") == "true"
    r = request(port, "GET", "/off/echo", headers=[("Origin", APP)])
    assert not r.has("Access-Control-Allow-Origin") and "Origin" not in vary(r)
    r = preflight(port, "/off/", APP)
    assert r.status == 200                      # proxied: no CORS here
    r = request(port, "GET", "/other/echo", headers=[("Origin", APP)])
    assert not r.has("Access-Control-Allow-Origin")
    r = request(port, "GET", "/other/echo", headers=[("Origin", "https://other.example.com")])
    assert r.header("Access-Control-Allow-Origin") == "https://other.example.com"
    assert r.header("Access-Control-Allow-Credentials") == "true"      # inherited
    r = request(port, "GET", "/return/", headers=[("Origin", APP)])
    assert r.status == 200 and r.body == b"hi\n"
    assert r.header("Access-Control-Allow-Origin") == APP


# -- config errors ------------------------------------------------------------------------

@pytest.mark.parametrize("conf,needle,message", [
    ("cors_allow_origins *;\n            cors_allow_credentials on;", "cors_allow_credentials on;",
     '"cors_allow_credentials on" cannot be used with "cors_allow_origins *"'),
    ("cors_allow_origins https://a.example;\n            cors_expose_headers *;\n"
     "            cors_allow_credentials on;", "cors_allow_credentials on;",
     '"cors_allow_credentials on" cannot be used with "cors_expose_headers *"'),
    ("cors_allow_origins example.com;", "cors_allow_origins example.com;", 'invalid origin "example.com"'),
    ("cors_allow_origins https://a.example/;", "cors_allow_origins", 'invalid origin "https://a.example/"'),
    ("cors_allow_origins ~^https://(a|b.example;", "cors_allow_origins", 'invalid regex'),
    ("cors_allow_origins https://a.example;\n            cors_allow_origins ~[z-a];", "~[z-a]",
     'invalid regex "[z-a]"'),
    ("cors_allow_origins * off;", "cors_allow_origins", '"off" must be the only parameter'),
    ("cors_allow_origins *;\n            cors_allow_methods GET *;", "cors_allow_methods", 'invalid method "*"'),
    ("cors_allow_origins *;\n            cors_max_age soon;", "cors_max_age", "cors_max_age"),
])
def test_config_errors(tmp_path, conf, needle, message):
    e = EdgeProcess(tmp_path, f"""http {{ server {{ listen 127.0.0.1:@PORT@;
        location / {{
            {conf}
            return 200;
        }} }} }}""", {"PORT": closed_port()})
    e.spawn()
    try:
        assert e.wait_exit(10) == 1
        out = e.output()
        assert message in out and f"{e.conf_path}:{e.line_of(needle)}" in out, out
    finally:
        e.kill_group()


def test_star_with_credentials_across_levels_names_both(tmp_path):
    e = EdgeProcess(tmp_path, """http {
    cors_allow_origins *;
    server { listen 127.0.0.1:@PORT@;
        location / {
            cors_allow_credentials on;
            return 200;
        } } }""", {"PORT": closed_port()})
    e.spawn()
    try:
        assert e.wait_exit(10) == 1
        out = e.output()
        assert f"{e.conf_path}:{e.line_of('cors_allow_credentials on;')}" in out, out
        assert f"(set in {e.conf_path}:{e.line_of('cors_allow_origins *;')})" in out, out
    finally:
        e.kill_group()


def test_compiled_policy():
    from edge._core.reactor import CorsPolicy
    p = CorsPolicy(["https://a.example", r"~^https://[a-z]+\.b\.example$", "null"], None, None, [], True, None)
    assert p.allows("https://a.example") and p.allows("HTTPS://A.EXAMPLE") and p.allows("null")
    assert p.allows("https://x.b.example") and not p.allows("https://x.b.example.evil")
    assert not p.allows("https://a.example.evil") and not p.allows("")
    with pytest.raises(ValueError):
        CorsPolicy(["*"], None, None, [], True, None)
