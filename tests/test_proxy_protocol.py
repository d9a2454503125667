"""PROXY protocol v1 and v2 on `listen ... proxy_protocol`, against a real edge process.

The parser is checked on a table of headers twice: through the Python entry
`parse_proxy_header` (what it consumed, which address) and end to end, where a raw
client sends the header and a request and the response body shows the variables
edge computed: $remote_addr, $remote_port, $proxy_protocol_addr, $proxy_protocol_port
and $realip_remote_addr. A malformed or missing header closes the connection without
a response. Expectations are nginx's (run with EDGE_TEST_IMPL=nginx to check them);
where edge differs, the test is marked `edge_only`: the spec's exact v1 grammar (one
space, family and address must agree, addresses valid, ports without leading zeros,
CRLF), v2 commands other than LOCAL/PROXY and UDP/unix families refused, a header split
across reads reassembled (nginx wants it whole in its first read), source port 0
accepted, `proxy_protocol_timeout`, and `set_real_ip_from` on a proxy_protocol listener
naming the only peers that may connect.
"""

import socket
import struct
import time

import pytest

from support import Conn, build_request

VARS = ('ra=$remote_addr rp=$remote_port ppa=$proxy_protocol_addr ppp=$proxy_protocol_port '
        'rra=$realip_remote_addr\\n')

# PORT: plain proxy_protocol listener (variables only, no realip)
# PORT1: realip from the PROXY header, trusted sender 127.0.0.1
# PORT2: a plain listener without proxy_protocol (a PROXY line there is just a bad request)
CONF = f"""
http {{
    server {{
        listen 127.0.0.1:@PORT@ proxy_protocol;
        location / {{ return 200 "{VARS}"; }}
    }}
    server {{
        listen 127.0.0.1:@PORT1@ proxy_protocol;
        set_real_ip_from 127.0.0.1;
        real_ip_header proxy_protocol;
        location / {{ return 200 "{VARS}"; }}
        location /up/ {{
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_pass http://@UP@;
        }}
    }}
    server {{
        listen 127.0.0.1:@PORT2@;
        location / {{ return 200 "{VARS}"; }}
    }}
}}
"""

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd=1, fam=0x11, src="192.0.2.10", dst="198.51.100.1", sport=56324, dport=443, tlvs=b"",
       version=2, body=None):
    """A PROXY protocol v2 header. fam: 0x11 TCP4, 0x21 TCP6, 0x00 UNSPEC, 0x12 UDP4, 0x31 unix."""
    if body is None:
        if fam >> 4 == 1:
            body = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst) + \
                struct.pack("!HH", sport, dport)
        elif fam >> 4 == 2:
            body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + \
                struct.pack("!HH", sport, dport)
        elif fam >> 4 == 3:
            body = b"/tmp/src".ljust(108, b"\0") + b"/tmp/dst".ljust(108, b"\0")
        else:
            body = b""
        body += tlvs
    return SIG + bytes([(version << 4) | cmd, fam]) + struct.pack("!H", len(body)) + body


def tlv(kind, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


V1_MAX_TCP6 = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
               b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
V1_MAX_UNKNOWN = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                  b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
assert len(V1_MAX_TCP6) == 104 and len(V1_MAX_UNKNOWN) == 107  # the spec's worst cases

TLVS = (tlv(0x01, b"http/1.1") + tlv(0x02, b"api.example.com") + tlv(0x04, b"") +
        tlv(0x20, b"\x07\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3")))

# (id, header, (address, port) the PROXY header names, or None for "keep the peer")
VALID = [
    ("v1-tcp4", b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n", ("192.0.2.10", 56324)),
    ("v1-tcp4-port65535", b"PROXY TCP4 192.0.2.10 198.51.100.1 65535 443\r\n", ("192.0.2.10", 65535)),
    ("v1-tcp6", b"PROXY TCP6 2001:db8::10 2001:db8::1 40000 443\r\n", ("2001:db8::10", 40000)),
    ("v1-tcp6-max-length", V1_MAX_TCP6, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    ("v1-unknown", b"PROXY UNKNOWN\r\n", None),
    ("v1-unknown-max-length", V1_MAX_UNKNOWN, None),
    ("v2-tcp4", v2(), ("192.0.2.10", 56324)),
    ("v2-tcp6", v2(fam=0x21, src="2001:db8::77", dst="2001:db8::1", sport=1234), ("2001:db8::77", 1234)),
    ("v2-tcp4-tlvs", v2(tlvs=TLVS), ("192.0.2.10", 56324)),
    ("v2-tcp6-tlvs", v2(fam=0x21, src="2001:db8::77", dst="2001:db8::1", sport=1234, tlvs=TLVS),
     ("2001:db8::77", 1234)),
    ("v2-local-empty", v2(cmd=0, fam=0x00), None),
    ("v2-local-with-addresses", v2(cmd=0, fam=0x11, src="203.0.113.99"), None),
    ("v2-proxy-unspec", v2(cmd=1, fam=0x00), None),
    ("v2-proxy-unspec-with-tlvs", v2(cmd=1, fam=0x00, body=TLVS), None),
]
# valid by the spec; nginx refuses a source port 0
VALID_EDGE_ONLY = [
    ("v1-tcp4-port0", b"PROXY TCP4 192.0.2.10 198.51.100.1 0 443\r\n", ("192.0.2.10", 0)),
    ("v2-tcp4-port0", v2(sport=0), ("192.0.2.10", 0)),
]
ALL_VALID = [pytest.param(*v, id=v[0]) for v in VALID] + \
    [pytest.param(*v, id=v[0], marks=pytest.mark.edge_only) for v in VALID_EDGE_ONLY]

# (id, bytes): edge must close the connection without answering
INVALID = [
    ("no-header", build_request("GET", "/")),
    ("v1-too-few-fields", b"PROXY TCP4 192.0.2.10 198.51.100.1 56324\r\n"),
    ("v1-bad-protocol", b"PROXY TCP5 192.0.2.10 198.51.100.1 56324 443\r\n"),
    ("v1-port-out-of-range", b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 443\r\n"),
    ("v1-port-not-a-number", b"PROXY TCP4 192.0.2.10 198.51.100.1 5x 443\r\n"),
    ("v1-lowercase", b"proxy tcp4 192.0.2.10 198.51.100.1 56324 443\r\n"),
    ("v1-no-crlf-too-long", b"PROXY TCP4 " + b"1" * 200),
    ("v2-bad-signature", b"\r\n\r\n\x00\r\nQUIX\n" + v2()[12:]),
    ("v2-version-1", v2(version=1)),
    ("v2-version-3", v2(version=3)),
    ("v2-tcp4-short-body", v2(body=b"\xc0\x00\x02\x0a\xc6\x33\x64\x01")),
    ("v2-tcp6-short-body", v2(fam=0x21, body=b"\x20\x01" * 8 + b"\x00" * 10)),
    ("http-then-garbage", b"GARBAGE\r\n\r\n"),
]

# edge's stricter reading of the spec; nginx accepts these
INVALID_EDGE_ONLY = [
    ("v1-bad-address", b"PROXY TCP4 192.0.2.300 198.51.100.1 56324 443\r\n"),
    ("v1-unknown-too-long", b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n"),
    ("v2-command-2", v2(cmd=2)),   # nginx treats every command but PROXY as LOCAL
    ("v1-two-spaces", b"PROXY TCP4  192.0.2.10 198.51.100.1 56324 443\r\n"),
    ("v1-tcp4-with-ipv6", b"PROXY TCP4 2001:db8::10 2001:db8::1 56324 443\r\n"),
    ("v1-tcp6-with-ipv4", b"PROXY TCP6 192.0.2.10 198.51.100.1 56324 443\r\n"),
    ("v1-port-leading-zero", b"PROXY TCP4 192.0.2.10 198.51.100.1 056324 443\r\n"),
    ("v1-lf-only", b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\n"),
    ("v2-udp4", v2(fam=0x12)),
    ("v2-unix-stream", v2(fam=0x31)),
]


@pytest.fixture
def pp(edge, upstream):
    return edge(CONF, UP=upstream)


def parse_vars(body: bytes) -> dict:
    out = {}
    for item in body.decode().split():
        k, _, v = item.partition("=")
        out[k] = v
    return out


def send_and_read(port, data: bytes, target="/", headers=(), split=False):
    with Conn(port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = data + build_request("GET", target, headers=headers)
        if split:
            for i in range(len(data)):
                c.send(data[i:i + 1])
                time.sleep(0.003)
            c.send(payload[len(data):])
        else:
            c.send(payload)
        r = c.read_response()
        return r, c.sock.getsockname()[1]


# -- the parser, through its Python entry ----------------------------------------------

@pytest.mark.edge_only
@pytest.mark.parametrize("name,header,expect", ALL_VALID)
def test_parser_valid(name, header, expect):
    from edge._core.reactor import parse_proxy_header
    tail = b"GET / HTTP/1.1\r\n\r\n"
    got = parse_proxy_header(header + tail)
    assert got != 0 and got != -1, got
    consumed, family, addr, port = got
    assert consumed == len(header)
    if expect is None:
        assert (family, addr, port) == (0, None, 0)
    else:
        assert family == (socket.AF_INET6 if ":" in expect[0] else socket.AF_INET)
        assert (addr, port) == expect
    # every proper prefix is "incomplete", never a wrong answer
    for n in range(len(header)):
        assert parse_proxy_header(header[:n]) == 0, (n, header[:n])


@pytest.mark.edge_only
@pytest.mark.parametrize("name,data", INVALID + INVALID_EDGE_ONLY,
                         ids=[v[0] for v in INVALID + INVALID_EDGE_ONLY])
def test_parser_invalid(name, data):
    from edge._core.reactor import parse_proxy_header
    if name == "v1-no-crlf-too-long":
        assert parse_proxy_header(data[:50]) == 0   # could still become a header
    assert parse_proxy_header(data) == -1


# -- end to end ------------------------------------------------------------------------

# nginx needs the whole PROXY header in its first read; edge reassembles it
SPLITS = [pytest.param(False, id="one-write"), pytest.param(True, id="byte-by-byte", marks=pytest.mark.edge_only)]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name,header,expect", ALL_VALID)
def test_valid_header_variables(pp, name, header, expect, split):
    r, myport = send_and_read(pp.port, header, split=split)
    assert r.status == 200, r
    v = parse_vars(r.body)
    # without realip, $remote_addr stays the TCP peer
    assert v["ra"] == "127.0.0.1" and v["rp"] == str(myport), v
    assert v["rra"] == "127.0.0.1", v
    if expect is None:
        assert v["ppa"] == "" and v["ppp"] == "", v
    else:
        assert v["ppa"] == expect[0] and v["ppp"] == str(expect[1]), v


@pytest.mark.parametrize("name,header,expect", ALL_VALID)
def test_valid_header_with_realip(pp, name, header, expect):
    """real_ip_header proxy_protocol from a trusted sender: $remote_addr/$remote_port are
    the PROXY header's source; LOCAL/UNKNOWN/UNSPEC keep the TCP peer."""
    r, myport = send_and_read(pp.ports["PORT1"], header)
    assert r.status == 200, r
    v = parse_vars(r.body)
    assert v["rra"] == "127.0.0.1", v
    if expect is None:
        assert (v["ra"], v["rp"], v["ppa"]) == ("127.0.0.1", str(myport), ""), v
    else:
        assert (v["ra"], v["rp"]) == (expect[0], str(expect[1])), v
        assert (v["ppa"], v["ppp"]) == (expect[0], str(expect[1])), v


def _assert_closed_without_response(port, data, split=False):
    with Conn(port, timeout=5) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if split:
                for i in range(len(data)):
                    c.send(data[i:i + 1])
                    time.sleep(0.002)
            else:
                c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            return   # closed before we finished sending: closed, and nothing was answered
        # wait_closed fails the test if any byte (a response) arrives
        assert c.wait_closed(5), f"connection still open after {data!r}"


@pytest.mark.parametrize("name,data", INVALID, ids=[v[0] for v in INVALID])
def test_invalid_header_closes(pp, name, data):
    _assert_closed_without_response(pp.port, data)


@pytest.mark.edge_only
@pytest.mark.parametrize("name,data", INVALID_EDGE_ONLY, ids=[v[0] for v in INVALID_EDGE_ONLY])
def test_invalid_header_closes_edge_only(pp, name, data):
    _assert_closed_without_response(pp.port, data + build_request("GET", "/"))


@pytest.mark.edge_only
@pytest.mark.parametrize("name", ["v1-bad-protocol", "v2-version-1", "v1-too-few-fields"])
def test_invalid_header_split_closes(pp, name):
    data = dict(INVALID)[name]
    _assert_closed_without_response(pp.port, data, split=True)


def test_invalid_after_valid_prefix_closes_even_when_trusted(pp):
    """The trusted realip listener is no laxer about the header itself."""
    _assert_closed_without_response(pp.ports["PORT1"], build_request("GET", "/"))
    _assert_closed_without_response(pp.ports["PORT1"], b"PROXY TCP4 1.2.3.4\r\n\r\n")


@pytest.mark.edge_only
def test_header_and_request_in_several_segments(pp):
    """The header split at awkward places, then the request split too."""
    header = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n"
    req = build_request("GET", "/x")
    for cut in (1, 6, 11, len(header) - 2, len(header) - 1, len(header), len(header) + 3):
        data = header + req
        with Conn(pp.port) as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.send(data[:cut])
            time.sleep(0.05)
            c.send(data[cut:])
            r = c.read_response()
        assert r.status == 200 and parse_vars(r.body)["ppa"] == "192.0.2.10", (cut, r)


@pytest.mark.edge_only
def test_v2_split_inside_signature_and_tlvs(pp):
    header = v2(fam=0x21, src="2001:db8::77", dst="2001:db8::1", sport=1234, tlvs=TLVS)
    for cut in (1, 5, 12, 13, 15, 16, 30, len(header) - 1):
        with Conn(pp.port) as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.send(header[:cut])
            time.sleep(0.05)
            c.send(header[cut:] + build_request("GET", "/"))
            r = c.read_response()
        v = parse_vars(r.body)
        assert r.status == 200 and (v["ppa"], v["ppp"]) == ("2001:db8::77", "1234"), (cut, r)


def test_keepalive_requests_keep_the_proxy_address(pp):
    with Conn(pp.ports["PORT1"]) as c:
        c.send(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n")
        for _ in range(3):
            r = c.request("GET", "/")
            assert r.status == 200
            v = parse_vars(r.body)
            assert (v["ra"], v["rp"], v["ppa"]) == ("192.0.2.10", "56324", "192.0.2.10"), v
        # pipelined requests after the header, in one write
        c.send(build_request("GET", "/a") + build_request("GET", "/b"))
        for _ in range(2):
            r = c.read_response()
            assert r.status == 200 and parse_vars(r.body)["ra"] == "192.0.2.10"


def test_second_proxy_header_is_a_bad_request(pp):
    """Only the first bytes of a connection may be a PROXY header; later it is a
    malformed request line."""
    with Conn(pp.port) as c:
        c.send(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n")
        assert c.request("GET", "/").status == 200
        c.send(b"PROXY TCP4 203.0.113.1 198.51.100.1 1 443\r\n" + build_request("GET", "/"))
        r = c.read_response()
        assert r.status == 400
        assert c.wait_closed(5)


def test_proxy_line_on_plain_listener_is_a_bad_request(pp):
    with Conn(pp.ports["PORT2"]) as c:
        c.send(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n" + build_request("GET", "/"))
        r = c.read_response()
        assert r.status == 400


def test_real_address_goes_upstream(pp, upstream):
    """X-Forwarded-For = the client's list + the real (PROXY) address; X-Real-IP = it."""
    r, _ = send_and_read(pp.ports["PORT1"], v2(src="192.0.2.44", sport=777), target="/up/echo",
                         headers=[("X-Forwarded-For", "203.0.113.50")])
    assert r.status == 200
    got = upstream.last()
    assert got.header("X-Forwarded-For") == "203.0.113.50, 192.0.2.44"
    assert got.header("X-Real-IP") == "192.0.2.44"
    r, _ = send_and_read(pp.ports["PORT1"], b"PROXY TCP6 2001:db8::9 2001:db8::1 5 443\r\n",
                         target="/up/echo")
    assert r.status == 200
    got = upstream.last()
    assert got.header("X-Forwarded-For") == "2001:db8::9"
    assert got.header("X-Real-IP") == "2001:db8::9"
    # LOCAL: the balancer's own connection, the TCP peer is the client
    r, _ = send_and_read(pp.ports["PORT1"], v2(cmd=0, fam=0x00), target="/up/echo")
    assert r.status == 200
    assert upstream.last().header("X-Real-IP") == "127.0.0.1"


# -- edge's own: header timeout and trusted senders -----------------------------------

TIMEOUT_CONF = f"""
http {{
    server {{
        listen 127.0.0.1:@PORT@ proxy_protocol;
        proxy_protocol_timeout 1s;
        client_header_timeout 10s;
        location / {{ return 200 "{VARS}"; }}
    }}
    server {{
        listen 127.0.0.1:@PORT1@ proxy_protocol;
        set_real_ip_from 192.0.2.0/24;
        set_real_ip_from 2001:db8::/32;
        real_ip_header proxy_protocol;
        location / {{ return 200 "{VARS}"; }}
    }}
    server {{
        listen 127.0.0.1:@PORT2@ proxy_protocol;
        set_real_ip_from 127.0.0.0/8;
        location / {{ return 200 "{VARS}"; }}
    }}
}}
"""


@pytest.fixture
def ppt(edge):
    return edge(TIMEOUT_CONF)


@pytest.mark.edge_only
@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 192.0.2", SIG[:7], v2()[:20]],
                         ids=["nothing", "v1-partial", "v2-partial-signature", "v2-partial-body"])
def test_header_timeout_closes(ppt, sent):
    with Conn(ppt.port) as c:
        t0 = time.monotonic()
        if sent:
            c.send(sent)
        assert c.is_open(0.6), "closed well before proxy_protocol_timeout"
        assert c.wait_closed(4), "not closed after proxy_protocol_timeout 1s"
        took = time.monotonic() - t0
    assert 0.8 <= took <= 3.5, took


@pytest.mark.edge_only
def test_header_in_time_then_client_header_timeout_applies(ppt):
    """Once the PROXY header is in, the 1 s header timer is replaced by
    client_header_timeout (10 s): a slow request head is not cut at 1 s."""
    with Conn(ppt.port) as c:
        c.send(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n")
        time.sleep(0.3)
        c.send(b"GET / HTTP/1.1\r\n")
        assert c.is_open(1.5), "request head cut by the PROXY header timeout"
        c.send(b"Host: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and parse_vars(r.body)["ppa"] == "192.0.2.10"


@pytest.mark.edge_only
@pytest.mark.parametrize("header", [b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n", v2(), b""],
                         ids=["v1", "v2", "nothing"])
def test_untrusted_sender_is_closed(ppt, header):
    """set_real_ip_from on a proxy_protocol listener names who may send PROXY headers:
    127.0.0.1 is not in 192.0.2.0/24 or 2001:db8::/32, so even a valid header gets no
    answer and the connection is closed at once (not after a timeout)."""
    with Conn(ppt.ports["PORT1"]) as c:
        t0 = time.monotonic()
        try:
            c.send(header + build_request("GET", "/"))
        except (BrokenPipeError, ConnectionResetError):
            return
        assert c.wait_closed(3)
        assert time.monotonic() - t0 < 0.9, "untrusted sender was not closed at accept"


@pytest.mark.edge_only
def test_trusted_sender_without_realip_header_directive(ppt):
    """Trusted by 127.0.0.0/8, real_ip_header left at its default (X-Real-IP): the PROXY
    header is accepted and exposed as $proxy_protocol_addr; X-Real-IP from the trusted
    peer sets $remote_addr."""
    r, _ = send_and_read(ppt.ports["PORT2"], v2(src="192.0.2.10"), headers=[("X-Real-IP", "198.51.100.7")])
    v = parse_vars(r.body)
    assert r.status == 200
    assert (v["ppa"], v["ra"], v["rra"]) == ("192.0.2.10", "198.51.100.7", "127.0.0.1"), v


@pytest.mark.edge_only
def test_many_bad_headers_do_not_hurt_the_worker(ppt):
    """A burst of broken and abandoned connections, then a good request is served."""
    socks = []
    for i in range(50):
        s = socket.create_connection(("127.0.0.1", ppt.port))
        if i % 3 == 0:
            s.sendall(b"PROXY TCP9 junk\r\n")
        elif i % 3 == 1:
            s.sendall(SIG[:5])
        socks.append(s)
    for s in socks[::2]:
        s.close()
    r, _ = send_and_read(ppt.port, v2(src="192.0.2.99"))
    assert r.status == 200 and parse_vars(r.body)["ppa"] == "192.0.2.99"
    for s in socks[1::2]:
        s.close()

