"""Location and server selection, against a real edge process; nginx's rules.

Run with EDGE_TEST_IMPL=nginx to check the expectations against nginx itself.
"""

import pytest

from support import Conn, get

LOCATIONS = r"""
http {
    server {
        listen 127.0.0.1:@PORT@;
        location = / { return 200 "exact-root"; }
        location / { return 200 "root"; }
        location = /exact { return 200 "exact"; }
        location /exact { return 200 "prefix-exact"; }
        location /images/ { return 200 "images"; }
        location ~ \.(gif|jpg)$ { return 200 "regex-img"; }
        location ~* \.png$ { return 200 "regex-png-ci"; }
        location ^~ /static/ { return 200 "static-noregex"; }
        location /documents/ { return 200 "documents"; }
        location ~ ^/documents/.*\.pdf$ { return 200 "regex-pdf"; }
        location ~ /order/a { return 200 "first-regex"; }
        location ~ /order/a/b { return 200 "second-regex"; }
        location /longer/ { return 200 "longer"; }
        location /longer/prefix/ { return 200 "longer-prefix"; }
        location ^~ /st/ { return 200 "st-noregex"; }
        location /st/deep/ { return 200 "st-deep"; }
        location ~ \.css$ { return 200 "regex-css"; }
        location ~ ^/CaSe/ { return 200 "case-sensitive"; }
        location ~* ^/ci/(a|b)/ { return 200 "ci-group"; }
    }
}
"""

CASES = [
    ("/", "exact-root"),                      # = beats the prefix "/"
    ("/x", "root"),
    ("/exact", "exact"),                      # = beats the prefix of the same text
    ("/exact/more", "prefix-exact"),
    ("/exactly", "prefix-exact"),             # prefixes match on characters, not segments
    ("/exact?q=1", "exact"),                  # the query string is not part of the match
    ("/images/x", "images"),
    ("/images/a.gif", "regex-img"),           # a regex beats a plain prefix
    ("/images/a.GIF", "images"),              # ~ is case-sensitive
    ("/a.jpg", "regex-img"),
    ("/x/a.png", "regex-png-ci"),
    ("/x/a.PNG", "regex-png-ci"),             # ~* is case-insensitive
    ("/static/a.gif", "static-noregex"),      # ^~ on the longest prefix stops the regex search
    ("/static/a.png", "static-noregex"),
    ("/documents/a.txt", "documents"),
    ("/documents/a.pdf", "regex-pdf"),
    ("/order/a/b", "first-regex"),            # regexes in config order, first match wins
    ("/order/a/b/c", "first-regex"),
    ("/longer/x", "longer"),
    ("/longer/prefix/x", "longer-prefix"),    # the longest prefix
    ("/longer/prefix", "longer"),             # "/longer/prefix/" does not match without the slash
    ("/st/a.css", "st-noregex"),              # ^~ is the longest prefix: no regex
    ("/st/deep/a.css", "regex-css"),          # longest prefix is /st/deep/ (no ^~): regex wins
    ("/st/deep/a.txt", "st-deep"),
    ("/CaSe/x", "case-sensitive"),
    ("/case/x", "root"),
    ("/CI/A/x", "ci-group"),
    ("/ci/b/x", "ci-group"),
]


@pytest.fixture(scope="module")
def loc_server(tmp_path_factory):
    from support import EdgeProcess
    e = EdgeProcess(tmp_path_factory.mktemp("router"), LOCATIONS).start()
    yield e
    e.stop()
    assert not e.problems, e.problems


@pytest.mark.parametrize("uri,expected", CASES, ids=[c[0] for c in CASES])
def test_location_precedence(loc_server, uri, expected):
    r = get(loc_server.port, uri)
    assert r.status == 200
    assert r.text == expected, f"{uri} routed to {r.text!r}, nginx routes it to {expected!r}"


def test_location_precedence_on_one_connection(loc_server):
    """The same decisions, pipelined on one keep-alive connection."""
    with Conn(loc_server.port) as c:
        c.send(b"".join(f"GET {u} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for u, _ in CASES))
        got = [c.read_response().text for _ in CASES]
    assert got == [want for _, want in CASES]


@pytest.mark.parametrize("uri,expected", [
    ("/%65xact", "exact"),                 # percent-decoded before matching
    ("/images/%61.gif", "regex-img"),
    ("/x/../exact", "exact"),              # dot segments resolved
    ("/exact/./", "prefix-exact"),
    ("//exact", "exact"),                  # merge_slashes on (nginx default)
    ("/static/../images/a.gif", "regex-img"),
])
def test_location_matches_normalized_uri(loc_server, uri, expected):
    """nginx matches locations on the decoded, normalized URI: `/%61dmin` or
    `/x/../admin` must not slip past `location /admin`."""
    r = get(loc_server.port, uri)
    assert r.status == 200
    assert r.text == expected, f"{uri} routed to {r.text!r}, nginx routes it to {expected!r}"


def test_uri_escaping_above_root_is_400(loc_server):
    r = get(loc_server.port, "/../x")
    assert r.status == 400


SERVERS = """
http {
    server {
        listen 127.0.0.1:@PORT@;
        server_name first.test;
        location / { return 200 "first"; }
    }
    server {
        listen 127.0.0.1:@PORT@;
        server_name a.example.com;
        location / { return 200 "exact-a"; }
    }
    server {
        listen 127.0.0.1:@PORT@;
        server_name *.example.com;
        location / { return 200 "wildcard"; }
    }
    server {
        listen 127.0.0.1:@PORT@ default_server;
        server_name dflt.test;
        location / { return 200 "default"; }
    }
    server {
        listen 127.0.0.1:@PORT@;
        server_name www.example.org other.test;
        location / { return 200 "org"; }
    }

    server {
        listen 127.0.0.1:@PORT2@;
        server_name p2-first.test;
        location / { return 200 "p2-first"; }
    }
    server {
        listen 127.0.0.1:@PORT2@;
        server_name a.example.com same.test;
        location / { return 200 "p2-a"; }
    }
}
"""

HOST_CASES = [
    (1, "first.test", "first"),
    (1, "a.example.com", "exact-a"),         # an exact name beats a wildcard
    (1, "b.example.com", "wildcard"),
    (1, "x.y.example.com", "wildcard"),      # *.example.com covers deeper names too
    (1, "example.com", "default"),           # *.example.com does not match example.com
    (1, "www.example.org", "org"),
    (1, "other.test", "org"),                # any name of the list
    (1, "unknown.test", "default"),          # default_server, not the first server
    (1, "A.EXAMPLE.COM", "exact-a"),         # names are case-insensitive
    (1, "a.example.com:8080", "exact-a"),    # the port in Host is ignored
    (1, "a.example.com.", "exact-a"),        # a trailing dot is ignored
    (1, "dflt.test", "default"),
    (2, "unknown.test", "p2-first"),         # no default_server: the first server of the listen
    (2, "a.example.com", "p2-a"),            # same name, other port: dispatch by address:port
    (2, "same.test", "p2-a"),
    (2, "b.example.com", "p2-first"),        # the wildcard server is not on this port
    (1, "same.test", "default"),
]


@pytest.fixture(scope="module")
def name_server(tmp_path_factory):
    from support import EdgeProcess
    e = EdgeProcess(tmp_path_factory.mktemp("names"), SERVERS).start()
    yield e
    e.stop()
    assert not e.problems, e.problems


@pytest.mark.parametrize("which,host,expected", HOST_CASES, ids=[f"{c[0]}-{c[1]}" for c in HOST_CASES])
def test_server_selection_by_host(name_server, which, host, expected):
    port = name_server.ports["PORT" if which == 1 else "PORT2"]
    r = get(port, "/", host=host)
    assert r.status == 200
    assert r.text == expected, f"Host {host!r} on port {which} went to {r.text!r}; nginx picks {expected!r}"


def test_http10_without_host_goes_to_default_server(name_server):
    r = get(name_server.ports["PORT"], "/", host=None, version="HTTP/1.0")
    assert (r.status, r.text) == (200, "default")
    r = get(name_server.ports["PORT2"], "/", host=None, version="HTTP/1.0")
    assert (r.status, r.text) == (200, "p2-first")


def test_absolute_uri_request_target_host_wins(name_server):
    """RFC 9112 3.2.2: with an absolute-form target, its host replaces the Host header."""
    r = get(name_server.ports["PORT"], "http://a.example.com/x", host="unknown.test")
    assert (r.status, r.text) == (200, "exact-a")


def test_dispatch_on_listen_address(edge):
    """Same port, two loopback addresses: the server is chosen by the address that was hit."""
    e = edge("""
http {
    server { listen 127.0.0.1:@PORT@; server_name same.test; location / { return 200 "on-127.0.0.1"; } }
    server { listen 127.0.0.2:@PORT@; server_name same.test; location / { return 200 "on-127.0.0.2"; } }
}
""")
    assert get(e.port, "/", host="same.test", addr="127.0.0.1").text == "on-127.0.0.1"
    assert get(e.port, "/", host="same.test", addr="127.0.0.2").text == "on-127.0.0.2"
    assert get(e.port, "/", host="other.test", addr="127.0.0.2").text == "on-127.0.0.2"


def test_location_per_server(edge):
    """Locations belong to their server: the same URI routes differently per Host."""
    e = edge(r"""
http {
    server {
        listen 127.0.0.1:@PORT@;
        server_name one.test;
        location /api/ { return 200 "one-api"; }
        location / { return 200 "one-root"; }
    }
    server {
        listen 127.0.0.1:@PORT@;
        server_name two.test;
        location ~ ^/api/ { return 200 "two-api-regex"; }
        location / { return 200 "two-root"; }
    }
}
""")
    assert get(e.port, "/api/x", host="one.test").text == "one-api"
    assert get(e.port, "/api/x", host="two.test").text == "two-api-regex"
    assert get(e.port, "/other", host="two.test").text == "two-root"
    with Conn(e.port) as c:  # the Host of each request on one connection counts
        assert c.request("GET", "/api/x", host="two.test").text == "two-api-regex"
        assert c.request("GET", "/api/x", host="one.test").text == "one-api"


@pytest.mark.edge_only
def test_no_matching_location_is_404(edge):
    """nginx would fall through to its static file handler (root html); edge has none,
    so a URI no location matches is a 404."""
    e = edge("""
http {
    server { listen 127.0.0.1:@PORT@; location /only/ { return 200 "only"; } }
}
""")
    assert get(e.port, "/only/x").text == "only"
    r = get(e.port, "/elsewhere")
    assert r.status == 404


NESTED = """
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "root"; }
        location /static/ {
            return 200 "static";
            location /static/img/ { return 200 "img"; }
            location ~ \\.css$ { return 200 "css-in-static"; }
        }
        location ^~ /assets/ {
            return 200 "assets";
            location ~ \\.js$ { return 200 "js-in-assets"; }
        }
        location ~ \\.css$ { return 200 "css-top"; }
        location ~ \\.js$ { return 200 "js-top"; }
        location = /exact { return 200 "exact"; }
    }
}
"""


@pytest.mark.parametrize("path, expected", [
    ("/", "root"),
    ("/static/a", "static"),
    ("/static/img/a.png", "img"),                 # the nested prefix
    ("/static/a.css", "css-in-static"),           # a nested regex beats the outer ones
    ("/static/img/a.css", "css-in-static"),       # the parent's nested regexes still apply
    ("/static/x.js", "js-top"),                   # nothing nested matched: outer regexes
    ("/assets/x", "assets"),
    ("/assets/x.js", "js-in-assets"),             # ^~ stops the outer regexes, not the nested
    ("/other.css", "css-top"),
    ("/exact", "exact"),
])
def test_nested_locations(edge, path, expected):
    """nginx's ngx_http_core_find_location, level by level."""
    e = edge(NESTED)
    r = get(e.port, path)
    assert (r.status, r.body.decode()) == (200, expected), path


def test_nested_location_rules_are_config_errors(tmp_path):
    import subprocess
    import sys
    for body, message in [
        ("location /a/ { location /b/ { return 200; } }", 'location "/b/" is outside location "/a/"'),
        ("location = /a { location /a/b { return 200; } }",
         'location "/a/b" cannot be inside the exact location "/a"'),
    ]:
        conf = tmp_path / "edge.conf"
        conf.write_text("http { server { listen 127.0.0.1:1;\n" + body + "\n} }\n")
        r = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], capture_output=True, text=True)
        assert r.returncode == 1 and message in r.stderr and f"{conf}:2" in r.stderr, r.stderr


NAME_PRIORITY = """
http {
    server { listen 127.0.0.1:@PORT@ default_server; return 200 "default"; }
    server { listen 127.0.0.1:@PORT@; server_name ~^api[0-9]+\\.example\\.com$; return 200 "regex"; }
    server { listen 127.0.0.1:@PORT@; server_name *.example.com; return 200 "star-short"; }
    server { listen 127.0.0.1:@PORT@; server_name www.example.*; return 200 "trailing"; }
    server { listen 127.0.0.1:@PORT@; server_name *.api.example.com; return 200 "star-long"; }
    server { listen 127.0.0.1:@PORT@; server_name www.example.com; return 200 "exact"; }
    server { listen 127.0.0.1:@PORT@; server_name ~^www\\.; return 200 "regex-www"; }
}
"""


@pytest.mark.parametrize("host, expected", [
    ("www.example.com", "exact"),              # exact beats every wildcard declared before it
    ("a.api.example.com", "star-long"),        # the longest leading wildcard wins
    ("api7.example.com", "star-short"),        # a wildcard beats a regex declared before it
    ("www.example.org", "trailing"),           # trailing wildcard beats the www regex
    ("api7.example.net", "default"),
    ("www.other.net", "regex-www"),
    ("API7.EXAMPLE.COM", "star-short"),
])
def test_server_name_priority(edge, host, expected):
    """nginx: exact, longest *.x, longest x.*, first regex, then the default server."""
    e = edge(NAME_PRIORITY)
    r = get(e.port, "/", host=host)
    assert (r.status, r.body.decode()) == (200, expected), host


def test_server_name_regex_only_matches_its_pattern(edge):
    e = edge("""
http {
    server { listen 127.0.0.1:@PORT@; return 200 "default"; }
    server { listen 127.0.0.1:@PORT@; server_name ~^shop-[a-z]+\\.test$; return 200 "shop"; }
}
""")
    assert get(e.port, "/", host="shop-berlin.test").body == b"shop"
    assert get(e.port, "/", host="shop-.test").body == b"default"
    assert get(e.port, "/", host="xshop-berlin.test").body == b"default"
