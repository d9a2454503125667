"""rewrite / set / return ordering, add_header, proxy_redirect, proxy_hide_header,
proxy_pass_header and proxy_method, against a real edge process and real upstreams.

Expectations are nginx's: run with EDGE_TEST_IMPL=nginx to check them against nginx.
"""

import json
import time

import pytest

from support import Conn, Upstream, get

CONF = r"""
http {
    upstream pool_a { server @UPA@; }
    server {
        listen 127.0.0.1:@PORT@;
        rewrite ^/srv/(.*)$ /s2/$1;
        rewrite ^/srvlast/(.*)$ /s2/last-$1 last;
        rewrite ^/srvperm/(.*)$ /s2/$1 permanent;
        location /s2/ { return 200 "s2:$uri:$args"; }
        location /b/ { return 200 "b:$uri:$args"; }

        location /a/ { rewrite ^/a/(.*)$ /b/$1 last; }
        location /brk/ { rewrite ^/brk/(.*)$ /real/$1 break; proxy_pass http://pool_a; }
        location /bu/ { rewrite ^/bu/(.*)$ /changed/$1 break; proxy_pass http://pool_a/base/; }
        location /lp/ { rewrite ^/lp/(.*)$ /pfx/$1 last; }
        location /pfx/ { proxy_pass http://pool_a/inner/; }
        location /nf/ { rewrite ^/nf/(.*)$ /nf2/$1; rewrite ^/nf2/(.*)$ /b/$1; }
        location /r/ { rewrite ^/r/(.*)$ /target/$1 redirect; }
        location /p/ { rewrite ^/p/(.*)$ /target/$1 permanent; }
        location /pq/ { rewrite ^/pq/(.*)$ /target/$1? permanent; }
        location /ext/ { rewrite ^/ext/(.*)$ http://example.com/$1; }
        location /sch/ { rewrite ^/sch/(.*)$ $scheme://example.com/$1 permanent; }
        location /args/ { rewrite ^/args/(.*)$ /b/$1?new=1 last; }
        location /args2/ { rewrite ^/args2/(.*)$ /args/$1?new=1; rewrite ^/args/(.*)$ /b/$1?second=2 last; }
        location /same/ { rewrite ^/same/old/(.*)$ /same/new/$1; proxy_pass http://pool_a/base/; }
        location /dropargs/ { rewrite ^/dropargs/(.*)$ /b/$1? last; }
        location /loop/ { rewrite ^/loop/(.*)$ /loop/$1 last; }
        location = /c0 { rewrite ^ /c1 last; }
        location = /c1 { rewrite ^ /c2 last; }
        location = /c2 { rewrite ^ /c3 last; }
        location = /c3 { rewrite ^ /c4 last; }
        location = /c4 { rewrite ^ /c5 last; }
        location = /c5 { rewrite ^ /c6 last; }
        location = /c6 { rewrite ^ /c7 last; }
        location = /c7 { rewrite ^ /c8 last; }
        location = /c8 { rewrite ^ /c9 last; }
        location = /c9 { rewrite ^ /c10 last; }
        location = /c10 { rewrite ^ /c11 last; }
        location = /c11 { return 200 "end"; }
        location /set/ { set $who "w-$arg_n"; rewrite ^/set/(.*)$ /b/$1-$who last; }
        location /ord1/ { return 200 "first"; rewrite ^ /b/ last; }
        location /ord2/ { rewrite ^/ord2/(.*)$ /b/$1 last; return 200 "second"; }
        location /ord3/ { rewrite ^/ord3/(.*)$ /z/$1; return 200 "ret:$uri"; }
        location /cap2/ { rewrite ^/cap2/(.*)$ /z/$1; return 200 "c:$1"; }
        location ~ ^/rx/(\d+)$ { rewrite ^ /b/n$1 last; }
        location ~ ^/keep/([a-z]+)$ { rewrite ^/zzz/(.*)$ /b/$1 last; return 200 "k:$1"; }
        location /nomatch/ { rewrite ^/other/ /b/ last; return 200 "kept:$uri"; }
        location /d/ { rewrite ^/d/(\d+)/(\d+)$ /b/$2/$1 last; return 200 "no-digits"; }
    }
}
"""

CASES = [
    # (target, status, body or None, Location or None)
    ("/a/x?q=1", 200, "b:/b/x:q=1", None),
    ("/nf/x", 200, "b:/b/x:", None),
    ("/args/x?q=1", 200, "b:/b/x:new=1&q=1", None),
    ("/args/x", 200, "b:/b/x:new=1", None),
    ("/a/x%3Fy?q=1", 200, "b:/b/x?y:q=1", None),      # a "?" from a capture is part of the path
    ("/args2/x?q=1", 200, "b:/b/x:second=2&new=1&q=1", None),
    ("/same/old/x?q=1", 200, None, None),
    ("/dropargs/x?q=1", 200, "b:/b/x:", None),
    ("/r/x?q=1", 302, None, "http://localhost:@PORT@/target/x?q=1"),
    ("/p/x", 301, None, "http://localhost:@PORT@/target/x"),
    ("/pq/x?q=1", 301, None, "http://localhost:@PORT@/target/x"),
    ("/ext/x?q=1", 302, None, "http://example.com/x?q=1"),
    ("/sch/x", 301, None, "http://example.com/x"),
    ("/loop/x", 500, None, None),
    ("/c1", 200, "end", None),          # ten location searches after the first: allowed
    ("/c0", 500, None, None),           # eleven: nginx's "rewrite or internal redirection cycle"
    ("/set/x?n=7", 200, "b:/b/x-w-7:n=7", None),
    ("/ord1/x", 200, "first", None),
    ("/ord2/x", 200, "b:/b/x:", None),
    ("/ord3/x", 200, "ret:/z/x", None),
    ("/cap2/x", 200, "c:x", None),
    ("/rx/42", 200, "b:/b/n:", None),   # $1 is the rewrite's own (empty) capture
    ("/nomatch/x", 200, "kept:/nomatch/x", None),
    ("/keep/abc", 200, "k:", None),     # nginx: a rewrite regex that did not match clears $1
    ("/d/12/34", 200, "b:/b/34/12:", None),
    ("/d/a/b", 200, "no-digits", None),
    ("/srv/x?k=v", 200, "s2:/s2/x:k=v", None),
    ("/srvlast/x", 200, "s2:/s2/last-x:", None),
    ("/srvperm/x", 301, None, "http://localhost:@PORT@/s2/x"),
]


@pytest.fixture(scope="module")
def ups():
    a = Upstream("pool_a").start()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory, ups):
    from support import EdgeProcess
    e = EdgeProcess(tmp_path_factory.mktemp("rewrite"), CONF,
                    {"UPA": ups.addr}).start()
    yield e
    e.stop()
    assert not e.problems, e.problems


@pytest.mark.parametrize("target,status,body,location", CASES, ids=[c[0] for c in CASES])
def test_rewrite_table(srv, target, status, body, location):
    r = get(srv.port, target)
    assert r.status == status, (r.status, r.body[:200])
    if body is not None:
        assert r.body.decode() == body
    if location is not None:
        assert r.header("Location") == location.replace("@PORT@", str(srv.port))


@pytest.mark.parametrize("target,upstream_target", [
    ("/brk/x?q=1", "/real/x?q=1"),
    ("/brk/a%20b", "/real/a%20b"),
    ("/bu/x?q=1", "/changed/x?q=1"),    # break: proxy_pass's URI part is not applied
    ("/lp/x?q=1", "/inner/x?q=1"),      # last: the new location replaces its prefix
    ("/same/old/x?q=1", "/base/new/x?q=1"),  # no flag: searched again, same location, prefix replaced
    ("/brk/x%3Fy?q=1", "/real/x%3Fy?q=1"),
])
def test_rewrite_then_proxy(srv, ups, target, upstream_target):
    r = get(srv.port, target)
    assert r.status == 200, r.body[:200]
    assert json.loads(r.body)["target"] == upstream_target


def test_loop_is_logged(srv):
    assert get(srv.port, "/loop/y").status == 500
    deadline = time.monotonic() + 5
    while "rewrite or internal redirection cycle" not in srv.error_log_path.read_text():
        assert time.monotonic() < deadline, "no cycle line in the error log"
        time.sleep(0.05)


HEADERS = r"""
http {
    upstream pool_a { server @UPA@; }
    add_header X-Http h;
    server {
        listen 127.0.0.1:@PORT@;
        add_header X-Server s;
        location /h1/ { return 200 "h1"; }
        location /h2/ { add_header X-Loc l; return 200 "h2"; }
        location /h3/ { add_header X-Loc l; return 404; }
        location /h4/ { add_header X-Loc l always; return 404; }
        location /h5/ { add_header X-Var "v=$uri"; add_header X-Empty "$arg_none"; proxy_pass http://pool_a; }
        location /h6/ { add_header X-A a; proxy_pass http://pool_a; }
        location /h7/ { add_header X-A a always; proxy_pass http://pool_a; }
        location /h8/ {
            add_header X-Outer o;
            location /h8/in/ { return 200 "in"; }
            location /h8/own/ { add_header X-Inner i; return 200 "own"; }
        }
        location /h9/ { add_header X-A a always; proxy_pass http://127.0.0.1:1; }
        location /h10/ { add_header X-R r; return 302 /elsewhere; }
        location /h11/ { add_header X-R r; rewrite ^ /elsewhere redirect; }
    }
    server {
        listen 127.0.0.1:@PORT2@;
        location / { return 200 "inherits http"; }
    }
    server {
        listen 127.0.0.1:@PORT3@;
        add_header X-S3 s3 always;
        rewrite ^/go$ /there redirect;
        location /only/ { return 200 "only"; }
    }
}
"""

HEADER_CASES = [
    # (port token, target, status, headers present {name: value}, headers absent)
    ("PORT", "/h1/", 200, {"X-Server": "s"}, ["X-Http"]),
    ("PORT", "/h2/", 200, {"X-Loc": "l"}, ["X-Server", "X-Http"]),
    ("PORT", "/h3/", 404, {}, ["X-Loc", "X-Server"]),
    ("PORT", "/h4/", 404, {"X-Loc": "l"}, ["X-Server"]),
    ("PORT", "/h5/x", 200, {"X-Var": "v=/h5/x"}, ["X-Empty", "X-Server"]),
    ("PORT", "/h6/status/201", 201, {"X-A": "a"}, []),
    ("PORT", "/h6/status/500", 500, {}, ["X-A"]),
    ("PORT", "/h6/status/404", 404, {}, ["X-A"]),
    ("PORT", "/h7/status/503", 503, {"X-A": "a"}, []),
    ("PORT", "/h8/in/", 200, {"X-Outer": "o"}, ["X-Server"]),
    ("PORT", "/h8/own/", 200, {"X-Inner": "i"}, ["X-Outer", "X-Server"]),
    ("PORT", "/h9/", 502, {"X-A": "a"}, []),
    ("PORT", "/h10/", 302, {"X-R": "r"}, []),
    ("PORT", "/h11/", 302, {"X-R": "r"}, []),
    ("PORT2", "/", 200, {"X-Http": "h"}, []),
    ("PORT3", "/nothing", 404, {"X-S3": "s3"}, ["X-Http"]),     # no location took it
    ("PORT3", "/go", 302, {"X-S3": "s3"}, []),                  # a server-level redirect
    ("PORT3", "/only/", 200, {"X-S3": "s3"}, []),
]


@pytest.fixture(scope="module")
def hsrv(tmp_path_factory, ups):
    from support import EdgeProcess
    e = EdgeProcess(tmp_path_factory.mktemp("headers"), HEADERS, {"UPA": ups.addr}).start()
    yield e
    e.stop()


@pytest.mark.parametrize("port,target,status,present,absent", HEADER_CASES,
                         ids=[c[0] + c[1] for c in HEADER_CASES])
def test_add_header(hsrv, port, target, status, present, absent):
    r = get(hsrv.ports[port], target)
    assert r.status == status
    for name, value in present.items():
        assert r.header_all(name) == [value], (name, r)
    for name in absent:
        assert not r.has(name), (name, r)


class RedirectingUpstream(Upstream):
    """Answers .../redir with Location, Refresh, Server, Date and X-Secret headers."""

    def respond(self, sock, req, keep):
        if not req.path.endswith("/redir"):
            return super().respond(sock, req, keep)
        host = self.addr
        body = json.dumps({"method": req.method, "target": req.target}).encode()
        sock.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://%s/app/next\r\n"
                     b"Refresh: 3; url=http://%s/app/later\r\nServer: backend/1.0\r\n"
                     b"Date: Mon, 01 Jan 2001 00:00:00 GMT\r\nX-Secret: s3\r\nX-Other: o\r\n"
                     b"Content-Length: %d\r\nConnection: %s\r\n\r\n%s"
                     % (host.encode(), host.encode(), len(body), b"keep-alive" if keep else b"close", body))
        return keep


PROXY = r"""
http {
    server {
        listen 127.0.0.1:@PORT@;
        location /app/ { proxy_pass http://@UP@/app/; }
        location /noapp/ { proxy_pass http://@UP@; }
        location /pre/ { proxy_pass http://@UP@/app/; }
        location /off/ { proxy_pass http://@UP@/app/; proxy_redirect off; }
        location /own/ { proxy_pass http://@UP@/app/; proxy_redirect http://@UP@/app/ https://public.example/v2/; }
        location /hide/ { proxy_pass http://@UP@; proxy_hide_header X-Secret; }
        location /pass/ { proxy_pass http://@UP@; proxy_pass_header Server; proxy_pass_header Date; }
        location /meth/ { proxy_pass http://@UP@; proxy_method POST; }
    }
}
"""


@pytest.fixture(scope="module")
def redir_up():
    u = RedirectingUpstream("redir").start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def psrv(tmp_path_factory, redir_up):
    from support import EdgeProcess
    e = EdgeProcess(tmp_path_factory.mktemp("proxyhdr"), PROXY, {"UP": redir_up.addr}).start()
    yield e
    e.stop()


def test_proxy_redirect_default(psrv, redir_up):
    r = get(psrv.port, "/pre/redir")
    assert r.status == 302
    # "http://UP/app/" (the proxy_pass URL) becomes the location's prefix, made absolute
    assert r.header("Location") == f"http://localhost:{psrv.port}/pre/next"
    assert r.header("Refresh") == "3; url=/pre/later"     # only Location is made absolute


def test_proxy_redirect_default_without_uri(psrv, redir_up):
    r = get(psrv.port, "/noapp/redir")
    assert r.header("Location") == f"http://localhost:{psrv.port}/app/next"


def test_proxy_redirect_off(psrv, redir_up):
    r = get(psrv.port, "/off/redir")
    assert r.header("Location") == f"http://{redir_up.addr}/app/next"


def test_proxy_redirect_explicit(psrv, redir_up):
    r = get(psrv.port, "/own/redir")
    assert r.header("Location") == "https://public.example/v2/next"
    assert r.header("Refresh") == "3; url=https://public.example/v2/later"


def test_server_and_date_hidden_by_default(psrv):
    r = get(psrv.port, "/app/redir")
    assert r.header("Server") != "backend/1.0"
    assert r.header("Date") != "Mon, 01 Jan 2001 00:00:00 GMT"
    assert r.header("X-Secret") == "s3"


def test_proxy_hide_header(psrv):
    r = get(psrv.port, "/hide/redir")
    assert not r.has("X-Secret")
    assert r.header("X-Other") == "o"


def test_proxy_pass_header(psrv):
    r = get(psrv.port, "/pass/redir")
    assert r.header_all("Server") == ["backend/1.0"]
    assert r.header_all("Date") == ["Mon, 01 Jan 2001 00:00:00 GMT"]


def test_proxy_method(psrv, redir_up):
    r = get(psrv.port, "/meth/redir")
    assert json.loads(r.body)["method"] == "POST"


REDIRECT_TLS = r"""
http {
    server {
        listen 127.0.0.1:@PORT@ ssl;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        location /p/ { rewrite ^/p/(.*)$ /target/$1 permanent; }
        location /r/ { rewrite ^/r/(.*)$ /target/$1?x=1 redirect; }
        location /ret/ { return 302 /there; }
    }
}
"""


@pytest.mark.parametrize("target,status,location", [
    ("/p/a?b=c", 301, "https://localhost:{port}/target/a?b=c"),
    ("/r/a", 302, "https://localhost:{port}/target/a?x=1"),
    ("/ret/", 302, "https://localhost:{port}/there"),
])
def test_redirects_made_absolute_over_tls(edge, target, status, location):
    """A redirect to a path, made absolute over TLS, gets the https scheme (and the port,
    which is not 443 here), as nginx's header filter builds it."""
    from support.tls import default_files, https_request
    files, cert = default_files()
    e = edge(REDIRECT_TLS, CERT=cert.cert, KEY=cert.key)
    r = https_request(e.port, "GET", target, host="localhost", sni="localhost", ca=files.ca_pem)
    assert r.status == status
    assert r.header("Location") == location.format(port=e.port)


PORT_IN_REDIRECT = r"""
http {
    server {
        listen 127.0.0.1:@PORT@;
        port_in_redirect off;
        root @ROOT@;
        location /p/ { rewrite ^/p/(.*)$ /target/$1 permanent; }
        location /ret/ { return 302 /there; }
        location /on/ { port_in_redirect on; return 302 /there; }
        location /d/ { }
    }
}
"""


@pytest.mark.parametrize("target,location", [
    ("/p/a?b=c", "http://localhost/target/a?b=c"),
    ("/ret/", "http://localhost/there"),
    ("/on/", "http://localhost:{port}/there"),
    ("/d/sub", "http://localhost/d/sub/"),          # the directory redirect of static files
])
def test_port_in_redirect(edge, tmp_path, target, location):
    (tmp_path / "www" / "d" / "sub").mkdir(parents=True)
    e = edge(PORT_IN_REDIRECT, ROOT=tmp_path / "www")
    r = get(e.port, target, host="localhost")
    assert r.status in (301, 302)
    assert r.header("Location") == location.format(port=e.port)
