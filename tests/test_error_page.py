"""error_page, recursive_error_pages and proxy_intercept_errors (issue 15), against a real
edge, real files and a real upstream.

nginx 1.22 is the oracle: `EDGE_TEST_IMPL=nginx python3 -m pytest tests/test_error_page.py`
runs the same configs and expectations under nginx. Tests of edge's deliberate
differences are marked `edge_only`, with the reason next to them.

Covered: pages for 404 (static), 403 (`deny`, `return 403`), 413
(client_max_body_size), 502 (an unreachable upstream), upstream statuses with
proxy_intercept_errors on and off; targets: a URI (GET for POST, HEAD kept, arguments,
variables), a named location, a URL (302, =301); `=code` and `=` alone; inheritance (a
level with its own error_page replaces the inherited ones); recursive_error_pages off
and on; `return 403 "text"` never goes through a page; $status and $uri in the access
log; keep-alive across pages; config errors.
"""

import os
import re

import pytest

from support import IMPL, Conn, build_request
from support.ports import closed_port

CONF = """
http {
    log_format st '$request_method $uri $status';
    error_page 404 /errors/404.html;

    server {
        listen 127.0.0.1:@PORT@;
        root @ROOT@/www;
        access_log @ROOT@/access.log st;

        location / { }
        location /errors/ { }
        location /own/ { error_page 404 /errors/own.html; }
        location /other/ { error_page 500 /errors/5xx.html; }
        location /eq/ { error_page 404 = /errors/ok.html; }
        location /code/ { error_page 404 =410 /errors/404.html; }
        location /url/ { error_page 404 http://example.com/nf; }
        location /url301/ { error_page 404 =301 http://example.com/nf; }
        location /named/ { error_page 404 @fallback; }
        location @fallback { proxy_pass http://@UP@; }
        location /ret/ { return 403; }
        location /ret403/ { error_page 403 /errors/403.html; return 403; }
        location /rettext/ { error_page 403 /errors/403.html; return 403 "text"; }
        location /deny/ { error_page 403 /errors/403.html; deny all; }
        location /loop/ { error_page 404 /nothing/here.html; }
        location /rec/ { recursive_error_pages on; error_page 404 /rec2/x; }
        location /rec2/ { }
        location /norec/ { error_page 404 /rec2/x; }
        location /cyc/ { recursive_error_pages on; error_page 404 /cyc/missing; }
        location /method/ { error_page 404 /api/echo; }
        location /args/ { error_page 404 /api/echo?from=err; }
        location /var/ { error_page 404 /api/echo?u=$uri; }
        location /api/ { proxy_pass http://@UP@; }
        location /icpt/ {
            proxy_pass http://@UP@;
            proxy_intercept_errors on;
            error_page 500 502 /errors/5xx.html;
            error_page 404 = /api/echo;
        }
        location /noicpt/ { proxy_pass http://@UP@; error_page 500 /errors/5xx.html; }
        location /dead/ { proxy_pass http://127.0.0.1:@DEAD@; error_page 502 /errors/5xx.html; }
        location /big/ { client_max_body_size 10; error_page 413 /errors/413.html; }
        location /hidden/ { internal; }
        location /toint/ { error_page 404 /hidden/404.html; }
    }
}
"""

PAGES = {"404.html": b"custom 404\n", "own.html": b"own 404\n", "ok.html": b"ok page\n",
         "403.html": b"custom 403\n", "5xx.html": b"custom 5xx\n", "413.html": b"too big\n"}


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "files"
    for name, body in PAGES.items():
        p = r / "www" / "errors" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    (r / "www" / "own").mkdir()
    (r / "www" / "hidden").mkdir()
    (r / "www" / "hidden" / "404.html").write_bytes(b"internal 404\n")
    (r / "www" / "a.txt").write_bytes(b"a file\n")
    return r


@pytest.fixture
def srv(edge, root, upstream):
    return edge(CONF, ROOT=root, UP=upstream, DEAD=closed_port())


def _req(srv, target, method="GET", headers=(), body=None):
    with Conn(srv.port) as c:
        return c.request(method, target, headers=list(headers), body=body)


def _builtin(r, status):
    return re.search(rb"<center><h1>%d [^<]+</h1></center>" % status, r.body) is not None


@pytest.mark.parametrize("target,status,body", [
    ("/missing", 404, PAGES["404.html"]),           # http-level page, inherited
    ("/own/missing", 404, PAGES["own.html"]),        # the location's own
    ("/eq/missing", 200, PAGES["ok.html"]),          # `=`: the page's own status
    ("/code/missing", 410, PAGES["404.html"]),       # `=410`
    ("/ret403/", 403, PAGES["403.html"]),           # a bare `return 403`
    ("/deny/x", 403, PAGES["403.html"]),            # the access phase's 403
    ("/rec/missing", 404, PAGES["404.html"]),        # recursive: /rec2/x's own 404 page
    ("/toint/missing", 404, b"internal 404\n"),     # an `internal` location serves pages
    ("/hidden/404.html", 404, PAGES["404.html"]),    # ... but not to clients directly
])
def test_pages(srv, target, status, body):
    r = _req(srv, target)
    assert r.status == status, r
    assert r.body == body
    assert r.header("Content-Type") == "text/html"


@pytest.mark.parametrize("target,status", [
    ("/other/missing", 404),        # its own error_page replaces the inherited 404 page
    ("/ret/", 403),                 # no page for 403 in force
    ("/loop/missing", 404),         # the page is missing too: recursive_error_pages off
    ("/norec/missing", 404),        # the same, through a location that has a page
    ("/cyc/x", 500),                # recursive pages that never end: a redirection cycle
])
def test_builtin_pages(srv, target, status):
    r = _req(srv, target)
    assert r.status == status
    assert _builtin(r, status), r.body


def test_return_text_is_not_an_error_page(srv):
    r = _req(srv, "/rettext/")
    assert r.status == 403 and r.body == b"text"


def test_head_keeps_head(srv):
    r = _req(srv, "/own/missing", "HEAD")
    assert r.status == 404 and r.body == b""
    assert r.header("Content-Length") == str(len(PAGES["own.html"]))


@pytest.mark.parametrize("target,status", [("/url/x", 302), ("/url301/x", 301)])
def test_url_redirect(srv, target, status):
    r = _req(srv, target)
    assert r.status == status
    assert r.header("Location") == "http://example.com/nf"
    assert _builtin(r, status)


def test_named_location_keeps_method_and_uri(srv, upstream):
    r = _req(srv, "/named/missing?a=1", "POST", body=b"")
    assert r.status == 404
    echo = r.json()
    assert echo["method"] == "POST"
    assert echo["target"] == "/named/missing?a=1"


def test_uri_page_is_a_get(srv, upstream):
    r = _req(srv, "/method/missing", "POST", body=b"")
    assert r.status == 404
    echo = r.json()
    assert echo["method"] == "GET"
    assert echo["target"] == "/api/echo"


def test_uri_page_arguments_and_variables(srv, upstream):
    r = _req(srv, "/args/missing?orig=1")
    assert r.status == 404 and r.json()["target"] == "/api/echo?from=err"
    r = _req(srv, "/method/missing?orig=1")         # a page without arguments has none
    assert r.status == 404 and r.json()["target"] == "/api/echo"
    r = _req(srv, "/var/missing")
    assert r.status == 404 and r.json()["target"] == "/api/echo?u=/var/missing"


@pytest.mark.parametrize("target,status,body", [
    ("/icpt/status/500", 500, PAGES["5xx.html"]),
    ("/icpt/status/502", 502, PAGES["5xx.html"]),
    ("/icpt/status/503", 503, b"status 503\n"),     # no page for 503: passed on
    ("/icpt/status/302", 302, b"status 302\n"),
    ("/icpt/status/200", 200, b"status 200\n"),
    ("/noicpt/status/500", 500, b"status 500\n"),   # proxy_intercept_errors off
])
def test_intercept_errors(srv, upstream, target, status, body):
    r = _req(srv, target)
    assert r.status == status
    assert r.body == body


def test_intercepted_404_to_proxied_page_with_its_status(srv, upstream):
    r = _req(srv, "/icpt/status/404")
    assert r.status == 200              # `=`: the page's status
    assert r.json()["target"] == "/api/echo"
    assert r.json()["method"] == "GET"


def test_unreachable_upstream_page(srv):
    r = _req(srv, "/dead/x")
    assert r.status == 502 and r.body == PAGES["5xx.html"]


def test_body_too_large_page(srv):
    r = _req(srv, "/big/x", "POST", body=b"x" * 100)
    assert r.status == 413 and r.body == PAGES["413.html"]
    assert r.header("Connection") == "close"


def test_keepalive_and_pipelining_across_pages(srv, upstream):
    targets = ["/missing", "/own/missing", "/url/x", "/icpt/status/502", "/a.txt", "/eq/x"]
    with Conn(srv.port) as c:
        c.send(b"".join(build_request("GET", t) for t in targets))
        got = [c.read_response() for _ in targets]
    assert [r.status for r in got] == [404, 404, 302, 502, 200, 200]
    assert [r.body for r in got][:2] == [PAGES["404.html"], PAGES["own.html"]]
    assert got[3].body == PAGES["5xx.html"] and got[4].body == b"a file\n"


def test_500_page_closes_the_connection(srv, upstream):
    """nginx ends keep-alive after a 400, 413, 414, 500 or 501, with a page or not."""
    with Conn(srv.port) as c:
        r = c.request("GET", "/icpt/status/500")
        assert r.status == 500 and r.body == PAGES["5xx.html"]
        assert r.header("Connection") == "close"


def test_access_log_status_and_uri(srv, root):
    for t in ("/code/missing", "/own/missing", "/eq/missing"):
        _req(srv, t)
    srv.stop()
    lines = (root / "access.log").read_text().splitlines()
    assert lines[-3:] == ["GET /errors/404.html 410", "GET /errors/own.html 404",
                          "GET /errors/ok.html 200"]


@pytest.mark.edge_only   # nginx 1.22 closes an upstream connection whose response it intercepted
def test_intercepted_upstream_connection_is_kept(edge, upstream):
    e = edge("""http { upstream u { server @UP@; keepalive 4; }
        server { listen 127.0.0.1:@PORT@;
            location / { proxy_pass http://u; proxy_http_version 1.1;
                         proxy_set_header Connection ""; proxy_intercept_errors on;
                         error_page 500 = /ok; }
            location = /ok { return 200 "page"; } } }""", UP=upstream)
    for _ in range(3):
        r = _req(e, "/status/500")
        assert r.status == 200 and r.body == b"page"
    assert upstream.connections == 1


@pytest.mark.parametrize("snippet,message", [
    ("error_page 404;", "invalid number of arguments"),
    ("error_page 200 /x;", 'value "200" must be between 300 and 599'),
    ("error_page 499 /x;", 'invalid value "499"'),
    ("error_page =404 /x;", 'invalid value "=404"'),
    ("error_page 404 =abc /x;", 'invalid value "=abc"'),
    ("error_page 404 /$nonexistent_var;", "nonexistent_var"),
])
def test_config_errors(edge, snippet, message):
    e = edge.create("http { server { listen 127.0.0.1:@PORT@; %s } }" % snippet)
    with pytest.raises(Exception):
        e.start()
    assert message in e.output()


# -- errors before a server is chosen: the default server's pages, as nginx --------------

UNROUTED = """
http {
    log_format st '$status $request';
    large_client_header_buffers 2 1k;
    server {
        listen 127.0.0.1:@PORT@;
        server_name other.example;
        root @ROOT@/www;
        location / { }
    }
    server {
        listen 127.0.0.1:@PORT@ default_server;
        root @ROOT@/www;
        access_log @ROOT@/unrouted.log st;
        error_page 400 414 /errors/400.html;
        location / { }
    }
}
"""


@pytest.mark.parametrize("raw,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET /" + b"a" * 1400 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
])
def test_default_server_page_before_routing(edge, root, raw, status):
    (root / "www" / "errors" / "400.html").write_bytes(b"custom 400\n")
    srv = edge(UNROUTED, ROOT=root)
    with Conn(srv.port) as c:
        c.send(raw)
        r = c.read_response()
    assert r.status == status
    assert r.body == b"custom 400\n"


def test_unrouted_page_is_logged(edge, root):
    (root / "www" / "errors" / "400.html").write_bytes(b"custom 400\n")
    srv = edge(UNROUTED, ROOT=root)
    with Conn(srv.port) as c:
        c.send(b"GARBAGE\r\n\r\n")
        assert c.read_response().status == 400
    srv.stop()
    assert (root / "unrouted.log").read_text().splitlines()[-1] == "400 GARBAGE"


def test_limit_req_rejection_page(edge, root):
    (root / "www" / "errors" / "429.html").write_bytes(b"slow down\n")
    (root / "www" / "lim").mkdir()
    (root / "www" / "lim" / "a.txt").write_bytes(b"ok")
    srv = edge("""http {
        limit_req_zone $remote_addr zone=one:1m rate=1r/m;
        server { listen 127.0.0.1:@PORT@; root @ROOT@/www;
            location /errors/ { }
            location /lim/ { limit_req zone=one; limit_req_status 429;
                             error_page 429 /errors/429.html; } } }""",
               ROOT=root)
    with Conn(srv.port) as c:
        assert c.request("GET", "/lim/a.txt").body == b"ok"
        r = c.request("GET", "/lim/a.txt")
        assert r.status == 429 and r.body == b"slow down\n"
        assert c.request("GET", "/lim/a.txt").status == 429     # the connection stays open
