"""IP rules: `allow` / `deny` against a real edge and a recording upstream.

The client always connects from 127.0.0.1 (or ::1); the table names other client
addresses through realip (`set_real_ip_from 127.0.0.1` and X-Real-IP at http level), which
runs before the access phase in nginx and in edge, so the rules see the address
`$remote_addr` shows. Expectations are nginx's access module (EDGE_TEST_IMPL=nginx runs
the same configs under nginx 1.22):

- the rules of a level are tried in the order written, allow and deny mixed; the first
  that matches decides; none matches: allowed;
- IPv4 rules never match IPv6 clients and the reverse, except that an IPv4-mapped IPv6
  client (::ffff:a.b.c.d) is matched against the IPv4 rules;
- a level with any allow/deny of its own inherits none; a level with none inherits the
  nearest enclosing level's rules;
- denied: 403, an error-log line "access forbidden by rule, client: ...", nothing sent
  upstream, the connection kept alive.
"""

import time

import pytest

from support import IMPL, Conn, EdgeProcess, Upstream, closed_port, get

# name -> rules (one location each, /<name>/)
RULES = {
    "a": "allow 10.0.0.0/8; deny all;",
    "b": "deny 10.1.2.3; allow 10.0.0.0/8; deny all;",
    "c": "allow 10.1.2.3; deny 10.0.0.0/8;",
    "d": "deny 2001:db8::/32; allow all;",
    "e": "allow 2001:db8:1::/48; deny 2001:db8::/32; allow 192.0.2.0/24; deny all;",
    "f": "deny 192.0.2.1; allow all;",
    "g": "allow 192.0.2.0/24; allow 198.51.100.7; deny all;",
    "h": "deny 0.0.0.0/0;",
    "i": "allow ::/0; deny all;",
    "j": "allow 203.0.113.5/32; deny all;",
    "k": "deny 10.9.9.9/8; allow all;",          # low bits ignored (nginx warns)
    "l": "allow 2001:db8::1; deny all;",
    "m": "deny 192.0.2.128/25; allow 192.0.2.0/24; deny all;",
    "n": "allow 172.16.0.0/12; deny all; allow 203.0.113.0/24;",    # after `deny all`: never reached
    "o": "deny fe80::/10; allow ::/0; deny all;",
    "p": "allow all; deny 10.0.0.0/8;",
}

# (id, rules, client address, expected status)
CASES = [
    ("a-in", "a", "10.200.1.1", 200),
    ("a-out", "a", "11.0.0.1", 403),
    ("a-edge-low", "a", "10.0.0.0", 200),
    ("a-edge-high", "a", "10.255.255.255", 200),
    ("a-below", "a", "9.255.255.255", 403),
    ("a-v6-denied-by-all", "a", "2001:db8::1", 403),
    ("b-deny-first", "b", "10.1.2.3", 403),
    ("b-neighbour", "b", "10.1.2.4", 200),
    ("b-outside", "b", "192.0.2.1", 403),
    ("c-allow-first", "c", "10.1.2.3", 200),
    ("c-denied", "c", "10.1.2.4", 403),
    ("c-no-rule-matches", "c", "192.0.2.1", 200),
    ("d-v6-denied", "d", "2001:db8:abcd::1", 403),
    ("d-v6-other", "d", "2001:db9::1", 200),
    ("d-v4-not-in-v6-rule", "d", "10.0.0.1", 200),
    ("e-v6-allowed-first", "e", "2001:db8:1:2::3", 200),
    ("e-v6-denied", "e", "2001:db8:2::1", 403),
    ("e-v4-allowed", "e", "192.0.2.200", 200),
    ("e-v4-denied", "e", "198.51.100.1", 403),
    ("e-v6-outside", "e", "2001:db9::1", 403),
    ("f-single-denied", "f", "192.0.2.1", 403),
    ("f-next-allowed", "f", "192.0.2.2", 200),
    ("g-net", "g", "192.0.2.77", 200),
    ("g-single", "g", "198.51.100.7", 200),
    ("g-single-neighbour", "g", "198.51.100.8", 403),
    ("h-v4-all-denied", "h", "203.0.113.1", 403),
    ("h-v6-no-rule", "h", "2001:db8::1", 200),
    ("i-v6-allowed", "i", "2001:db8::1", 200),
    ("i-v4-denied", "i", "203.0.113.1", 403),
    ("i-v4-mapped-uses-v4-rules", "i", "::ffff:203.0.113.1", 403),
    ("a-v4-mapped-allowed", "a", "::ffff:10.1.1.1", 200),
    ("j-exact", "j", "203.0.113.5", 200),
    ("j-next", "j", "203.0.113.6", 403),
    ("k-low-bits-ignored", "k", "10.1.1.1", 403),
    ("k-outside", "k", "11.1.1.1", 200),
    ("l-v6-exact", "l", "2001:db8::1", 200),
    ("l-v6-next", "l", "2001:db8::2", 403),
    ("l-v6-long-form", "l", "2001:0db8:0000:0000:0000:0000:0000:0001", 200),
    ("m-upper-half-denied", "m", "192.0.2.200", 403),
    ("m-lower-half-allowed", "m", "192.0.2.100", 200),
    ("m-boundary", "m", "192.0.2.128", 403),
    ("m-boundary-below", "m", "192.0.2.127", 200),
    ("n-after-deny-all", "n", "203.0.113.1", 403),
    ("n-12-in", "n", "172.31.255.255", 200),
    ("n-12-out", "n", "172.32.0.0", 403),
    ("o-link-local-denied", "o", "fe80::1", 403),
    ("o-global-allowed", "o", "2001:db8::1", 200),
    ("o-v4-denied", "o", "192.0.2.1", 403),
    ("p-allow-all-first", "p", "10.0.0.1", 200),
]

LOCATIONS = "\n".join(
    f"        location /{name}/ {{ {rules} proxy_pass http://@UP@; }}" for name, rules in RULES.items())

# PORT: the table (realip from 127.0.0.1 via X-Real-IP)
# PORT1: inheritance (http-level rules, server-level rules, locations with and without own)
# PORT2: an IPv6 listener, rules on the real peer ::1
# PORT3: X-Forwarded-For, recursive, trusted chain
CONF = f"""
http {{
    set_real_ip_from 127.0.0.1;
    deny 203.0.113.66;
    allow all;
    server {{
        listen 127.0.0.1:@PORT@;
        location /none/ {{ proxy_pass http://@UP@; }}
{LOCATIONS}
    }}
    server {{
        listen 127.0.0.1:@PORT1@;
        location /http-level/ {{ proxy_pass http://@UP@; }}
    }}
    server {{
        listen 127.0.0.1:@PORT4@;
        allow 192.0.2.0/24;
        deny all;
        location /inherit/ {{ proxy_pass http://@UP@; }}
        location /own/ {{
            allow 198.51.100.0/24;
            deny all;
            proxy_pass http://@UP@;
        }}
        location /open/ {{ allow all; proxy_pass http://@UP@; }}
        location /outer/ {{
            deny 192.0.2.9;
            allow all;
            proxy_pass http://@UP@;
            location /outer/inner/ {{ proxy_pass http://@UP@; }}
            location /outer/own/ {{ deny 192.0.2.10; proxy_pass http://@UP@; }}
        }}
    }}
    server {{
        listen [::1]:@PORT2@;
        location /deny-peer/ {{ deny ::1; allow all; proxy_pass http://@UP@; }}
        location /allow-peer/ {{ allow ::1; deny all; proxy_pass http://@UP@; }}
    }}
    server {{
        listen 127.0.0.1:@PORT3@;
        set_real_ip_from 127.0.0.1;         # a level's own list replaces http's (nginx)
        set_real_ip_from 10.0.0.0/8;
        real_ip_header X-Forwarded-For;
        real_ip_recursive on;
        location / {{ deny 198.51.100.0/24; allow all; proxy_pass http://@UP@; }}
        location /peer/ {{ deny 127.0.0.1; allow all; proxy_pass http://@UP@; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def up():
    s = Upstream("up").start()
    yield s
    s.stop()
    assert not s.errors, s.errors


@pytest.fixture(scope="module")
def srv(tmp_path_factory, up):
    e = EdgeProcess(tmp_path_factory.mktemp("ip_rules"), CONF, {"UP": up.addr}).start()
    try:
        yield e
    finally:
        try:
            e.stop()
        finally:
            e.kill_group()
        assert not e.problems, e.problems


def check(port, target, expect, up, headers=(), addr="127.0.0.1"):
    """One request; a 403 must leave the upstream untouched, a 200 must reach it."""
    before = len(up.requests)
    r = get(port, target, headers=headers, addr=addr)
    assert r.status == expect, (target, headers, r)
    if expect == 403:
        time.sleep(0.02)
        assert len(up.requests) == before, f"{target}: a denied request reached the upstream"
    else:
        assert up.last().path == target.split("?")[0], up.last().path
    return r


@pytest.mark.parametrize("name,rules,client,expect", CASES, ids=[c[0] for c in CASES])
def test_ip_rules_table(srv, up, name, rules, client, expect):
    check(srv.port, f"/{rules}/echo", expect, up, headers=[("X-Real-IP", client)])


def test_no_rules_location_and_real_peer(srv, up):
    """No rules in the location: it inherits http's `deny 203.0.113.66; allow all;`;
    without X-Real-IP the client is the peer 127.0.0.1."""
    check(srv.port, "/none/echo", 200, up)
    check(srv.port, "/none/echo", 200, up, headers=[("X-Real-IP", "203.0.113.67")])
    check(srv.port, "/none/echo", 403, up, headers=[("X-Real-IP", "203.0.113.66")])
    check(srv.port, "/a/echo", 403, up)                     # 127.0.0.1 is not in 10/8


def test_inherit_from_http(srv, up):
    port = srv.ports["PORT1"]
    check(port, "/http-level/echo", 403, up, headers=[("X-Real-IP", "203.0.113.66")])
    check(port, "/http-level/echo", 200, up, headers=[("X-Real-IP", "203.0.113.65")])


@pytest.mark.parametrize("target,client,expect", [
    ("/inherit/echo", "192.0.2.1", 200),        # the server's rules
    ("/inherit/echo", "198.51.100.1", 403),
    ("/inherit/echo", "203.0.113.66", 403),     # http's are not added to the server's
    ("/own/echo", "198.51.100.1", 200),         # its own rules only ...
    ("/own/echo", "192.0.2.1", 403),            # ... so the server's allow is gone
    ("/open/echo", "203.0.113.66", 200),        # allow all overrides http's deny too
    ("/outer/echo", "192.0.2.9", 403),
    ("/outer/echo", "198.51.100.1", 200),       # the outer location's own: allow all
    ("/outer/inner/echo", "192.0.2.9", 403),    # a nested location inherits its parent's
    ("/outer/inner/echo", "198.51.100.1", 200),
    ("/outer/own/echo", "192.0.2.10", 403),
    ("/outer/own/echo", "192.0.2.9", 200),      # own rules: the parent's deny is not inherited
])
def test_inheritance(srv, up, target, client, expect):
    check(srv.ports["PORT4"], target, expect, up, headers=[("X-Real-IP", client)])


def test_ipv6_peer(srv, up):
    port = srv.ports["PORT2"]
    check(port, "/deny-peer/echo", 403, up, addr="::1")
    check(port, "/allow-peer/echo", 200, up, addr="::1")


@pytest.mark.parametrize("xff,expect", [
    ("198.51.100.7, 10.0.0.1", 403),            # the client behind a trusted proxy
    ("203.0.113.1, 10.0.0.1", 200),
    ("198.51.100.7, 203.0.113.1, 10.0.0.1", 200),   # a spoofed left part is not the client
    ("203.0.113.1, 198.51.100.7", 403),
    (None, 200),                                # the peer 127.0.0.1
])
def test_behind_realip_x_forwarded_for(srv, up, xff, expect):
    headers = [("X-Forwarded-For", xff)] if xff else []
    check(srv.ports["PORT3"], "/echo", expect, up, headers=headers)


def test_realip_replaces_the_peer_for_the_rules(srv, up):
    """`deny 127.0.0.1` concerns the peer only when realip named no other client."""
    port = srv.ports["PORT3"]
    check(port, "/peer/echo", 403, up)
    check(port, "/peer/echo", 200, up, headers=[("X-Forwarded-For", "203.0.113.1")])


def test_denied_keeps_the_connection_and_logs(srv, up):
    with Conn(srv.port) as c:
        r = c.request("GET", "/a/echo", headers=[("X-Real-IP", "11.2.3.4")])
        assert r.status == 403
        assert "keep-alive" in r.connection_tokens() or "close" not in r.connection_tokens()
        r = c.request("GET", "/a/echo", headers=[("X-Real-IP", "10.2.3.4")])
        assert r.status == 200
    deadline = time.monotonic() + 5
    while "client: 11.2.3.4" not in srv.error_log and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [l for l in srv.error_log.splitlines() if "client: 11.2.3.4" in l]
    assert lines and "access forbidden by rule, client: 11.2.3.4" in lines[0], srv.error_log[-2000:]
    assert '"GET /a/echo HTTP/1.1"' in lines[0] and "[error]" in lines[0], lines[0]


def test_post_body_denied(srv, up):
    """A denied request with a body: 403, the body never reaches the upstream."""
    before = len(up.requests)
    with Conn(srv.port) as c:
        r = c.request("POST", "/a/echo", headers=[("X-Real-IP", "11.2.3.4")], body=b"x" * 5000)
        assert r.status == 403
        r = c.request("GET", "/a/echo", headers=[("X-Real-IP", "10.2.3.4")])
        assert r.status == 200
    assert len(up.requests) == before + 1 and up.last().method == "GET"


# -- PROXY protocol --------------------------------------------------------------------

PP_CONF = """
http {
    server {
        listen 127.0.0.1:@PORT@ proxy_protocol;
        set_real_ip_from 127.0.0.1;
        real_ip_header proxy_protocol;
        location / { allow 192.0.2.0/24; allow 2001:db8::/32; deny all; proxy_pass http://@UP@; }
    }
    server {
        listen 127.0.0.1:@PORT1@ proxy_protocol;
        location / { deny 127.0.0.1; allow all; proxy_pass http://@UP@; }
        location /pp/ { deny 192.0.2.0/24; proxy_pass http://@UP@; }
    }
}
"""


def pp_request(port, header: bytes, target="/echo"):
    with Conn(port) as c:
        c.send(header + f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        return c.read_response()


@pytest.mark.parametrize("header,expect", [
    (b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n", 200),
    (b"PROXY TCP4 198.51.100.7 198.51.100.1 40000 443\r\n", 403),
    (b"PROXY TCP6 2001:db8::9 2001:db8::1 40000 443\r\n", 200),
    (b"PROXY TCP6 2001:db9::9 2001:db8::1 40000 443\r\n", 403),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x0a\xc6\x33\x64\x01\x9c\x40\x01\xbb", 200),  # v2 192.0.2.10
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xcb\x00\x71\x01\xc6\x33\x64\x01\x9c\x40\x01\xbb", 403),  # v2 203.0.113.1
], ids=["v1-allowed", "v1-denied", "v1-v6-allowed", "v1-v6-denied", "v2-allowed", "v2-denied"])
def test_behind_proxy_protocol(edge, upstream, header, expect):
    e = edge(PP_CONF, UP=upstream)
    r = pp_request(e.port, header)
    assert r.status == expect, r
    assert len(upstream.requests) == (1 if expect == 200 else 0)


def test_proxy_protocol_without_realip_uses_the_peer(edge, upstream):
    """Without `real_ip_header proxy_protocol`, $remote_addr (and so the rules) is the TCP
    peer, as in nginx; the PROXY address is only $proxy_protocol_addr."""
    e = edge(PP_CONF, UP=upstream)
    port = e.ports["PORT1"]
    assert pp_request(port, b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n").status == 403
    assert pp_request(port, b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n", "/pp/echo").status == 200
    assert len(upstream.requests) == 1


# -- config errors and edge's own choices ----------------------------------------------

@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-ip", "2001:db8::/129", "10.0.0.256"])
def test_bad_rule_is_a_config_error(edge, bad):
    e = edge.create(f"""http {{ server {{ listen 127.0.0.1:@PORT@;
        location / {{
            deny {bad};
            return 200;
        }} }} }}""", PORT=closed_port())
    e.spawn()
    assert e.wait_exit(10) == 1
    out = e.output()
    assert f'invalid parameter "{bad}"' in out and f"{e.conf_path}:{e.line_of(f'deny {bad};')}" in out, out


@pytest.mark.edge_only
def test_rules_run_before_return(edge):
    """edge's `return` is the content phase, after the access checks: a denied client
    gets 403 (nginx's `return` runs in its rewrite phase, before allow/deny)."""
    e = edge("""http { server { listen 127.0.0.1:@PORT@;
        location / { deny all; return 200 "hi"; } } }""")
    assert get(e.port, "/").status == 403


@pytest.mark.edge_only
def test_location_without_rules_has_no_handler():
    from edge.config import build, parse_string
    from edge.cycle import Runtime, _compile_location, all_directives
    root = build(parse_string("""http { server {
        location /plain/ { return 200; }
        location /ruled/ { allow 10.0.0.0/8; deny all; return 200; } } }"""), all_directives())
    plain, ruled = root.blocks("http")[0].blocks("server")[0].blocks("location")
    assert list(_compile_location(plain, Runtime()).phases.access) == []
    (handler,) = _compile_location(ruled, Runtime()).phases.access
    assert handler.texts == ["allow 10.0.0.0/8", "deny all"]


MATCH = [
    ("10.0.0.1", "allow"), ("10.1.2.3", "deny"), ("10.255.0.1", "allow"), ("11.0.0.1", "deny"),
    ("2001:db8::1", "allow"), ("2001:db8:ffff::1", "allow"), ("2001:db9::1", "deny"),
    ("::ffff:10.0.0.1", "allow"), ("::ffff:10.1.2.3", "deny"), ("::1", "deny"), ("0.0.0.0", "deny"),
]


@pytest.mark.edge_only
@pytest.mark.parametrize("addr,verdict", MATCH, ids=[m[0] for m in MATCH])
def test_compiled_matcher(addr, verdict):
    from edge._core.reactor import IPRules
    r = IPRules([(True, "net", "10.1.2.3"), (False, "net", "10.0.0.0/8"),
                 (False, "net", "2001:db8::/32"), (True, "unix", "unix:"), (True, "all", "all")])
    assert r.check(addr) == verdict


@pytest.mark.edge_only
def test_no_rule_matches_is_allowed():
    from edge._core.reactor import IPRules
    assert IPRules([(True, "net", "10.0.0.0/8")]).check("192.0.2.1") == "allow"
    assert IPRules([]).check("192.0.2.1") == "allow"
