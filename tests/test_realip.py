"""realip: `set_real_ip_from`, `real_ip_header`, `real_ip_recursive`, against a real edge.

The client always connects from 127.0.0.1 (or ::1), so which locations trust it is
set by each location's `set_real_ip_from`. The response body shows $remote_addr,
$remote_port and $realip_remote_addr; a proxied location shows what the upstream got in
X-Forwarded-For and X-Real-IP. Expectations are nginx's realip module (run with
EDGE_TEST_IMPL=nginx to check them):

- non-recursive: the last address of the header (X-Forwarded-For or X-Real-IP or any
  named header), when the peer is trusted;
- recursive: from the right, skip trusted addresses, the first untrusted one is the
  client; all trusted: the leftmost; an unparsable entry stops the walk at the last
  good address (none yet: nothing changes);
- several X-Forwarded-For headers form one list, in order;
- an untrusted peer's headers change nothing;
- $realip_remote_addr keeps the TCP peer; X-Forwarded-For upstream appends the real
  address.
"""

import pytest

from support import Conn, closed_port, get

VARS = 'ra=$remote_addr rp=$remote_port rra=$realip_remote_addr'

# nginx applies a location's realip settings in its preaccess phase, after `return`
# (rewrite phase) has run; so the table reads the variables where both nginx and edge
# have applied them: in a header sent upstream.
SHOW = f"""
            proxy_set_header X-Vars "{VARS}";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_pass http://@UP@;"""

TRUSTED = """
            set_real_ip_from 127.0.0.1;
            set_real_ip_from 10.0.0.0/8;
            set_real_ip_from 192.168.0.0/16;
            set_real_ip_from 2001:db8::/32;"""

CONF = f"""
http {{
    server {{
        listen 127.0.0.1:@PORT@;
        location /none {{ {SHOW} }}
        location /xri {{ set_real_ip_from 127.0.0.1; {SHOW} }}
        location /xff {{
            set_real_ip_from 127.0.0.1;
            real_ip_header X-Forwarded-For;
            {SHOW}
        }}
        location /xffr {{
            {TRUSTED}
            real_ip_header X-Forwarded-For;
            real_ip_recursive on;
            {SHOW}
        }}
        location /xrir {{
            {TRUSTED}
            real_ip_recursive on;
            {SHOW}
        }}
        location /custom {{
            set_real_ip_from 127.0.0.0/8;
            real_ip_header X-Client-IP;
            {SHOW}
        }}
        location /untrusted {{
            set_real_ip_from 10.0.0.0/8;
            set_real_ip_from ::1;
            real_ip_header X-Forwarded-For;
            {SHOW}
        }}
    }}
    server {{
        listen 127.0.0.1:@PORT1@;
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Forwarded-For;
        location /inherit {{ return 200 "{VARS}\\n"; }}
        location /other-header {{ real_ip_header X-Real-IP; {SHOW} }}
    }}
    server {{
        listen [::1]:@PORT2@;
        set_real_ip_from ::1;
        real_ip_header X-Forwarded-For;
        location / {{ return 200 "{VARS}\\n"; }}
    }}
}}
"""

PEER = "127.0.0.1"

# (id, location, headers, expected $remote_addr)
CASES = [
    # no realip configured
    ("none-ignores-xff", "/none", [("X-Forwarded-For", "203.0.113.7")], PEER),
    ("none-ignores-xri", "/none", [("X-Real-IP", "203.0.113.7")], PEER),
    # X-Real-IP (the default header), not recursive
    ("xri-v4", "/xri", [("X-Real-IP", "203.0.113.7")], "203.0.113.7"),
    ("xri-v6", "/xri", [("X-Real-IP", "2001:db8::7")], "2001:db8::7"),
    ("xri-with-port", "/xri", [("X-Real-IP", "203.0.113.7:9000")], "203.0.113.7"),
    ("xri-list-takes-last", "/xri", [("X-Real-IP", "203.0.113.7, 198.51.100.2")], "198.51.100.2"),
    ("xri-garbage", "/xri", [("X-Real-IP", "not-an-ip")], PEER),
    ("xri-empty", "/xri", [("X-Real-IP", "")], PEER),
    ("xri-absent", "/xri", [], PEER),
    ("xri-ignores-xff", "/xri", [("X-Forwarded-For", "203.0.113.7")], PEER),
    # X-Forwarded-For, not recursive: the last address, trusted or not
    ("xff-one", "/xff", [("X-Forwarded-For", "203.0.113.7")], "203.0.113.7"),
    ("xff-last-of-two", "/xff", [("X-Forwarded-For", "203.0.113.7, 10.0.0.1")], "10.0.0.1"),
    ("xff-last-untrusted", "/xff", [("X-Forwarded-For", "10.0.0.1, 203.0.113.7")], "203.0.113.7"),
    ("xff-no-space", "/xff", [("X-Forwarded-For", "198.51.100.1,203.0.113.7")], "203.0.113.7"),
    ("xff-v6", "/xff", [("X-Forwarded-For", "203.0.113.7, 2001:db8::1")], "2001:db8::1"),
    ("xff-garbage-last", "/xff", [("X-Forwarded-For", "203.0.113.7, unknown")], PEER),
    ("xff-garbage-only", "/xff", [("X-Forwarded-For", "unknown")], PEER),
    ("xff-two-headers-last-wins", "/xff",
     [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.2")], "198.51.100.2"),
    # X-Forwarded-For, recursive: trusted chain 127.0.0.1, 10/8, 192.168/16, 2001:db8::/32
    ("xffr-absent", "/xffr", [], PEER),
    ("xffr-one", "/xffr", [("X-Forwarded-For", "203.0.113.7")], "203.0.113.7"),
    ("xffr-one-trusted-hop", "/xffr", [("X-Forwarded-For", "203.0.113.7, 10.0.0.1")], "203.0.113.7"),
    ("xffr-two-trusted-hops", "/xffr",
     [("X-Forwarded-For", "198.51.100.1, 203.0.113.7, 10.0.0.1, 192.168.1.1")], "203.0.113.7"),
    ("xffr-spoofed-left-is-ignored", "/xffr",
     [("X-Forwarded-For", "1.1.1.1, 8.8.8.8, 203.0.113.7, 192.168.9.9")], "203.0.113.7"),
    ("xffr-all-trusted-leftmost", "/xffr", [("X-Forwarded-For", "10.0.0.2, 192.168.0.5, 10.0.0.1")], "10.0.0.2"),
    ("xffr-single-trusted", "/xffr", [("X-Forwarded-For", "10.0.0.9")], "10.0.0.9"),
    ("xffr-garbage-left-of-trusted", "/xffr", [("X-Forwarded-For", "unknown, 10.0.0.1")], "10.0.0.1"),
    ("xffr-garbage-right", "/xffr", [("X-Forwarded-For", "203.0.113.7, unknown")], PEER),
    ("xffr-garbage-between", "/xffr",
     [("X-Forwarded-For", "198.51.100.1, junk, 10.0.0.2, 10.0.0.1")], "10.0.0.2"),
    ("xffr-v6-client-v4-proxy", "/xffr", [("X-Forwarded-For", "2001:db9::1, 10.0.0.1")], "2001:db9::1"),
    ("xffr-v4-client-v6-proxy", "/xffr", [("X-Forwarded-For", "203.0.113.9, 2001:db8::5")], "203.0.113.9"),
    ("xffr-v6-all-trusted", "/xffr", [("X-Forwarded-For", "2001:db8::99, 2001:db8:ffff::5")], "2001:db8::99"),
    ("xffr-v6-outside-prefix", "/xffr", [("X-Forwarded-For", "2001:db9::1, 2001:db8::5")], "2001:db9::1"),
    ("xffr-no-spaces", "/xffr", [("X-Forwarded-For", "203.0.113.7,10.0.0.1,192.168.1.1")], "203.0.113.7"),
    ("xffr-extra-spaces", "/xffr", [("X-Forwarded-For", "203.0.113.7 ,  10.0.0.1")], "203.0.113.7"),
    ("xffr-with-ports", "/xffr", [("X-Forwarded-For", "203.0.113.7:8080, 10.0.0.1:443")], "203.0.113.7"),
    ("xffr-v6-bracketed-port", "/xffr", [("X-Forwarded-For", "[2001:db9::1]:443, 10.0.0.1")], "2001:db9::1"),
    ("xffr-prefix-edge-in", "/xffr", [("X-Forwarded-For", "203.0.113.7, 10.255.255.255")], "203.0.113.7"),
    ("xffr-prefix-edge-out", "/xffr", [("X-Forwarded-For", "203.0.113.7, 11.0.0.0")], "11.0.0.0"),
    ("xffr-192-169-is-not-trusted", "/xffr", [("X-Forwarded-For", "203.0.113.7, 192.169.0.1")], "192.169.0.1"),
    ("xffr-two-headers-one-list", "/xffr",
     [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "10.0.0.1")], "203.0.113.7"),
    ("xffr-two-headers-three-hops", "/xffr",
     [("X-Forwarded-For", "198.51.100.1, 203.0.113.7"), ("X-Forwarded-For", "10.0.0.1, 192.168.1.1")],
     "203.0.113.7"),
    ("xffr-two-headers-untrusted-in-last", "/xffr",
     [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.7, 10.0.0.1")], "203.0.113.7"),
    # trailing separators are skipped (nginx walks back over "," and " ")
    ("xffr-trailing-comma", "/xffr", [("X-Forwarded-For", "203.0.113.7, 10.0.0.1,")], "203.0.113.7"),
    ("xff-trailing-comma-space", "/xff", [("X-Forwarded-For", "203.0.113.7, 198.51.100.2, ")], "198.51.100.2"),
    # X-Real-IP with recursion walks its list the same way
    ("xrir-list", "/xrir", [("X-Real-IP", "203.0.113.7, 10.0.0.1")], "203.0.113.7"),
    # any header name
    ("custom", "/custom", [("X-Client-IP", "198.51.100.3")], "198.51.100.3"),
    ("custom-case-insensitive", "/custom", [("x-client-ip", "198.51.100.3")], "198.51.100.3"),
    ("custom-ignores-xri", "/custom", [("X-Real-IP", "198.51.100.3")], PEER),
    # the peer is not trusted: nothing changes
    ("untrusted-xff", "/untrusted", [("X-Forwarded-For", "203.0.113.7")], PEER),
    ("untrusted-xff-trusted-list", "/untrusted", [("X-Forwarded-For", "10.0.0.1")], PEER),
]

# edge accepts more than nginx here
CASES_EDGE_ONLY = [
    ("xri-v6-brackets", "/xri", [("X-Real-IP", "[2001:db8::7]")], "2001:db8::7"),
]


@pytest.fixture
def srv(edge, upstream):
    return edge(CONF, UP=upstream)


def parse_vars(body: bytes) -> dict:
    out = {}
    for item in body.decode().split():
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _check(srv, location, headers, expect, upstream):
    r = get(srv.port, location + "/echo", headers=headers)
    assert r.status == 200, r
    v = parse_vars(upstream.last().header("X-Vars").encode())
    assert v["ra"] == expect, (headers, v)
    assert v["rra"] == PEER, v
    if expect == PEER:
        assert v["rp"].isdigit() and int(v["rp"]) > 0, v   # still the TCP peer's port
    return v


@pytest.mark.parametrize("name,location,headers,expect", CASES, ids=[c[0] for c in CASES])
def test_realip_table(srv, upstream, name, location, headers, expect):
    _check(srv, location, headers, expect, upstream)


@pytest.mark.edge_only
@pytest.mark.parametrize("name,location,headers,expect", CASES_EDGE_ONLY, ids=[c[0] for c in CASES_EDGE_ONLY])
def test_realip_table_edge_only(srv, upstream, name, location, headers, expect):
    _check(srv, location, headers, expect, upstream)


def test_remote_port_after_realip(srv, upstream):
    """The header's address has no port: $remote_port is empty, as in nginx; with a
    port (`a.b.c.d:port`), nginx takes it."""
    v = _check(srv, "/xri", [("X-Real-IP", "203.0.113.7")], "203.0.113.7", upstream)
    assert v["rp"] == "", v
    v = _check(srv, "/xri", [("X-Real-IP", "203.0.113.7:9000")], "203.0.113.7", upstream)
    assert v["rp"] == "9000", v


def test_realip_remote_port_is_the_peer(edge):
    e = edge("""http { server { listen 127.0.0.1:@PORT@; set_real_ip_from 127.0.0.1;
        location / { return 200 "ra=$remote_addr rrp=$realip_remote_port"; } } }""")
    with Conn(e.port) as c:
        r = c.request("GET", "/", headers=[("X-Real-IP", "203.0.113.7")])
        v = parse_vars(r.body)
        assert v == {"ra": "203.0.113.7", "rrp": str(c.sock.getsockname()[1])}, v


def test_multiple_x_real_ip_headers_first_wins(srv, upstream):
    """nginx reads the first X-Real-IP header when a request has several."""
    _check(srv, "/xri", [("X-Real-IP", "203.0.113.7"), ("X-Real-IP", "198.51.100.2")], "203.0.113.7",
           upstream)


def test_server_level_settings_are_inherited(srv, upstream):
    """Server-level realip applies to `return` too; a location may name another header
    (no X-Forwarded-For is sent here: nginx would apply the server's X-Forwarded-For
    before routing and then skip the location's settings)."""
    port = srv.ports["PORT1"]
    r = get(port, "/inherit", headers=[("X-Forwarded-For", "198.51.100.1, 203.0.113.7")])
    assert parse_vars(r.body)["ra"] == "203.0.113.7"
    r = get(port, "/other-header/echo", headers=[("X-Real-IP", "203.0.113.8")])
    assert r.status == 200
    assert parse_vars(upstream.last().header("X-Vars").encode())["ra"] == "203.0.113.8"


def test_ipv6_peer(srv):
    r = get(srv.ports["PORT2"], "/", addr="::1", headers=[("X-Forwarded-For", "203.0.113.7")])
    v = parse_vars(r.body)
    assert (v["ra"], v["rra"]) == ("203.0.113.7", "::1"), v
    r = get(srv.ports["PORT2"], "/", addr="::1", headers=[("X-Forwarded-For", "2001:db8::44")])
    assert parse_vars(r.body)["ra"] == "2001:db8::44"


def test_ipv4_peer_not_in_ipv6_ranges(srv, upstream):
    """/untrusted trusts 10.0.0.0/8 and ::1; a 127.0.0.1 peer is not ::1."""
    _check(srv, "/untrusted", [("X-Forwarded-For", "203.0.113.7")], PEER, upstream)


@pytest.mark.parametrize("xff,real", [
    ("198.51.100.1, 203.0.113.7, 10.0.0.1", "203.0.113.7"),
    ("203.0.113.7", "203.0.113.7"),
    (None, PEER),
    ("10.0.0.1, 192.168.0.1", "10.0.0.1"),
])
def test_upstream_sees_the_real_address(srv, upstream, xff, real):
    """X-Forwarded-For upstream = the client's header + ", " + the real $remote_addr,
    X-Real-IP = the real $remote_addr."""
    headers = [("X-Forwarded-For", xff)] if xff else []
    r = get(srv.port, "/xffr/echo", headers=headers)
    assert r.status == 200
    got = upstream.last()
    assert got.header("X-Real-IP") == real
    assert got.header("X-Forwarded-For") == (f"{xff}, {real}" if xff else real)


def test_upstream_without_realip_appends_the_peer(srv, upstream):
    get(srv.port, "/none/echo", headers=[("X-Forwarded-For", "203.0.113.7")])
    got = upstream.last()
    assert got.header("X-Forwarded-For") == "203.0.113.7, 127.0.0.1"
    assert got.header("X-Real-IP") == "127.0.0.1"


@pytest.mark.edge_only
def test_default_forwarding_headers_use_the_real_address(edge, upstream):
    """edge sets X-Forwarded-For and X-Real-IP without proxy_set_header."""
    e = edge(f"""http {{ server {{ listen 127.0.0.1:@PORT@; {TRUSTED}
        real_ip_header X-Forwarded-For; real_ip_recursive on;
        location / {{ proxy_pass http://@UP@; }} }} }}""", UP=upstream)
    get(e.port, "/echo", headers=[("X-Forwarded-For", "203.0.113.7, 10.0.0.1")])
    got = upstream.last()
    assert got.header("X-Forwarded-For") == "203.0.113.7, 10.0.0.1, 203.0.113.7"
    assert got.header("X-Real-IP") == "203.0.113.7"


# -- the compiled matcher --------------------------------------------------------------

MATCH = [
    ("10.0.0.0", True), ("10.255.255.255", True), ("9.255.255.255", False), ("11.0.0.0", False),
    ("192.168.1.0", True), ("192.168.1.255", True), ("192.168.2.1", False),
    ("172.16.0.1", True), ("172.31.255.255", True), ("172.32.0.0", False), ("172.15.255.255", False),
    ("127.0.0.1", True), ("127.0.0.2", False),
    ("100.64.0.1", True), ("100.64.0.0", True), ("100.64.0.2", False),   # a /31 holds 0 and 1
    ("2001:db8::1", True), ("2001:db8:ffff:ffff::1", True), ("2001:db9::1", False),
    ("2001:db7:ffff::1", False),
    ("fe80::1:2", True), ("fe80::1:3", True), ("fe80::1:4", False),      # a /126
    ("::1", False), ("::", False),
    ("::ffff:10.1.2.3", True),           # IPv4-mapped IPv6 peers match IPv4 ranges
    ("::ffff:11.1.2.3", False),
    ("0.0.0.0", False),
]


@pytest.mark.edge_only
@pytest.mark.parametrize("addr,trusted", MATCH, ids=[m[0] for m in MATCH])
def test_cidr_matcher(addr, trusted):
    from edge._core.reactor import RealIP
    r = RealIP(["10.0.0.0/8", "192.168.1.0/24", "172.16.0.0/12", "127.0.0.1", "100.64.0.1/31",
                "2001:db8::/32", "fe80::1:2/126"], "X-Forwarded-For", True)
    assert r.is_trusted(addr) is trusted


@pytest.mark.edge_only
def test_cidr_matcher_everything_and_nothing():
    from edge._core.reactor import RealIP
    everything = RealIP(["0.0.0.0/0", "::/0"], "X-Real-IP", False)
    for a in ("1.2.3.4", "255.255.255.255", "::1", "2001:db8::1"):
        assert everything.is_trusted(a)
    nothing = RealIP([], "X-Real-IP", False)
    for a in ("1.2.3.4", "::1"):
        assert not nothing.is_trusted(a)


@pytest.mark.edge_only
@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-ip", "2001:db8::/129", "unix:"])
def test_bad_set_real_ip_from_is_a_config_error(edge, bad):
    e = edge.create(f"""http {{ server {{ listen 127.0.0.1:@PORT@; set_real_ip_from {bad};
        location / {{ return 200; }} }} }}""", PORT=closed_port())
    e.spawn()
    assert e.wait_exit(10) == 1
    out = e.output()
    assert "set_real_ip_from" in out and f"{e.conf_path}:{e.line_of(f'set_real_ip_from {bad};')}" in out, out
