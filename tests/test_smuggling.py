"""Request smuggling defence, behind a recording upstream.

Every case sends one ambiguous (or merely unusual) request on a fresh client connection,
followed by a second request pipelined behind it. The upstream (support/recording.py)
keeps every raw byte it receives. For each case two things are checked:

1. the client gets the expected status (a rejection: `Connection: close`, a short body,
   and the connection closed; or, for the unambiguous variants, a normal 200);
2. the upstream never receives a request that the client did not send as a separate,
   unambiguous request: for a rejection nothing reaches the upstream (or, when the
   body is refused part way, no complete request and no request line hidden in the
   body); for an accepted case exactly the requests the client sent, with the bodies it
   sent, in order.

After every case a plain request on a new connection goes through the same keep-alive
upstream pool and must come back as itself (a desynchronised pool would answer it with
a smuggled request's response). One edge serves the whole module; its worker must not
change (a crash respawns it).
"""

import re
import socket
import ssl
import time

import pytest

from support import Conn, EdgeProcess
from support.recording import Mark, RecordingUpstream

CONF = """
http {
    client_max_body_size 10m;
    upstream backend { server @UP@; keepalive 8; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://backend; }
    }
}
"""

H = b"Host: x\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def rec():
    up = RecordingUpstream("rec").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def edge_mod(tmp_path_factory, rec, transport):
    e = EdgeProcess(tmp_path_factory.mktemp("smuggling"), CONF, {"UP": rec.addr}).start()
    e.initial_workers = e.wait_workers(1)
    yield e
    try:
        e.stop()
    finally:
        e.kill_group()
    assert not e.problems, "; ".join(e.problems) + "\n" + e.report()


@pytest.fixture
def px(edge_mod, rec):
    rec.allow_errors = False
    yield edge_mod
    assert alive_same_worker(edge_mod), f"the worker changed (crashed?)\n{edge_mod.report()}"


def alive_same_worker(e):
    return e.worker_pids() == e.initial_workers


def read_all(c: Conn, timeout=5.0) -> bytes:
    """Everything the server sends until it closes (or `timeout`)."""
    c.sock.settimeout(timeout)
    out = bytearray(c.buf)
    c.buf.clear()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = c.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            break
        except socket.timeout:
            raise AssertionError(f"connection not closed within {timeout}s; got {bytes(out)[:300]!r}")
        if not data:
            break
        out += data
    return bytes(out)


def check_after(px, rec, mark_before_after=None):
    """A plain request through the same pool still gets its own answer."""
    with Conn(px.port, timeout=5) as c:
        r = c.request("GET", "/echo?after")
        assert r.status == 200, r
        assert r.json()["target"] == "/echo?after", f"pool desynchronised: {r.json()!r}\n{rec.dump()}"


def assert_rejected(c: Conn, status, what):
    statuses = status if isinstance(status, tuple) else (status,)
    r = c.read_response()
    assert r.status in statuses, f"{what}: wanted {status}, got {r!r}"
    assert "close" in r.connection_tokens(), f"{what}: {r.status} without Connection: close: {r.headers!r}"
    assert len(r.body) < 1024, f"{what}: error body not short ({len(r.body)} bytes)"
    rest = read_all(c)
    assert rest == b"", f"{what}: bytes after the {r.status} (a second response?): {rest[:300]!r}"
    return r


# --------------------------------------------------------------------------------------
# Rejected before anything is forwarded: the upstream receives no byte of these.

def post(headers: bytes, body: bytes = b"", first=b"POST /echo HTTP/1.1\r\n") -> bytes:
    return first + headers + b"\r\n" + body


REJECT_HEAD = [
    # CL.TE / TE.CL
    ("cl_te", post(H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG" + SMUGGLED), 400),
    ("te_cl", post(H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                   b"5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"), 400),
    ("cl_te_identity", post(H + b"Content-Length: 5\r\nTransfer-Encoding: identity\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_te_xchunked", post(H + b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_zero_te", post(H + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    # TE.TE obfuscations
    ("te_xchunked", post(H + b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED), 501),
    ("te_identity", post(H + b"Transfer-Encoding: identity\r\n", b"0\r\n\r\n" + SMUGGLED), 501),
    ("te_gzip", post(H + b"Transfer-Encoding: gzip\r\n", b"abc" + SMUGGLED), 501),
    ("te_chunked_identity", post(H + b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_gzip_chunked", post(H + b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_chunked_chunked", post(H + b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_duplicate", post(H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                          b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_duplicate_mixed", post(H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                                b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_duplicate_x", post(H + b"Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n",
                            b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_space_before_colon", post(H + b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_tab_before_colon", post(H + b"Transfer-Encoding\t: chunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_obs_fold", post(H + b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_obs_fold_after", post(H + b"Transfer-Encoding: x\r\n chunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_vtab", post(H + b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_formfeed", post(H + b"Transfer-Encoding: chunked\x0c\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_nul", post(H + b"Transfer-Encoding: chunked\x00\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_quoted", post(H + b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n" + SMUGGLED), (400, 501)),
    ("te_bare_lf_before", post(H + b"X-A: b\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    ("te_http10", b"POST /echo HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    ("te_bare_cr", post(H + b"Transfer-Encoding: chunked\rX: y\r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    # Content-Length tricks
    ("cl_double_differ", post(H + b"Content-Length: 5\r\nContent-Length: 6\r\n", b"abcdef" + SMUGGLED), 400),
    ("cl_double_differ_zero", post(H + b"Content-Length: 0\r\nContent-Length: 38\r\n", SMUGGLED), 400),
    ("cl_list_differ", post(H + b"Content-Length: 5, 6\r\n", b"abcdef" + SMUGGLED), 400),
    ("cl_plus", post(H + b"Content-Length: +5\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_minus", post(H + b"Content-Length: -1\r\n", b"a" + SMUGGLED), 400),
    ("cl_inner_space", post(H + b"Content-Length: 1 0\r\n", b"abcdefghij" + SMUGGLED), 400),
    ("cl_hex", post(H + b"Content-Length: 0x5\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_decimal", post(H + b"Content-Length: 5.0\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_empty", post(H + b"Content-Length: \r\n", b"abcde" + SMUGGLED), 400),
    ("cl_letters", post(H + b"Content-Length: 5a\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_overflow", post(H + b"Content-Length: 99999999999999999999999\r\n", b"abc" + SMUGGLED), 400),
    ("cl_int64_wrap", post(H + b"Content-Length: 18446744073709551621\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_space_before_colon", post(H + b"Content-Length : 5\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_nul", post(H + b"Content-Length: 5\x00\r\n", b"abcde" + SMUGGLED), 400),
    ("cl_obs_fold", post(H + b"Content-Length: 5\r\n 0\r\n", b"abcde" + SMUGGLED), 400),
    # malformed lines
    ("bare_lf_request", b"GET /echo HTTP/1.1\nHost: x\n\n" + SMUGGLED, 400),
    ("bare_lf_header", b"GET /echo HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n" + SMUGGLED, 400),
    ("bare_lf_end", b"GET /echo HTTP/1.1\r\nHost: x\r\n\n" + SMUGGLED, 400),
    ("bare_cr_value", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n" + SMUGGLED, 400),
    ("bare_cr_name", b"GET /echo HTTP/1.1\r\nHost: x\r\nX\rA: b\r\n\r\n" + SMUGGLED, 400),
    ("obs_fold", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n" + SMUGGLED, 400),
    ("obs_fold_tab", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n" + SMUGGLED, 400),
    ("space_in_name", b"GET /echo HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n" + SMUGGLED, 400),
    ("space_before_colon", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n" + SMUGGLED, 400),
    ("leading_space_first_header", b"GET /echo HTTP/1.1\r\n Host: x\r\n\r\n" + SMUGGLED, 400),
    ("no_colon", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A b\r\n\r\n" + SMUGGLED, 400),
    ("empty_name", b"GET /echo HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n" + SMUGGLED, 400),
    ("nul_value", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n" + SMUGGLED, 400),
    ("nul_name", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-\x00A: b\r\n\r\n" + SMUGGLED, 400),
    ("nul_target", b"GET /ec\x00ho HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("nul_method", b"G\x00ET /echo HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("ctl_value", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n" + SMUGGLED, 400),
    ("del_value", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n" + SMUGGLED, 400),
    ("request_line_two_spaces", b"GET  /echo HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("request_line_tab", b"GET\t/echo HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("request_line_trailing_space", b"GET /echo HTTP/1.1 \r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("request_line_space_in_target", b"GET /echo x HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("request_line_lower_version", b"GET /echo http/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("request_line_no_version", b"GET /echo\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("request_line_smuggled_in_target", b"GET /echo HTTP/1.1\rGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("host_missing", b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n" + SMUGGLED, 400),
    ("host_twice", b"GET /echo HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + SMUGGLED, 400),
    ("host_twice_same", b"GET /echo HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n" + SMUGGLED, 400),
    ("host_with_space", b"GET /echo HTTP/1.1\r\nHost: x y\r\n\r\n" + SMUGGLED, 400),
    ("host_with_slash", b"GET /echo HTTP/1.1\r\nHost: x/smuggled\r\n\r\n" + SMUGGLED, 400),
    ("expect_unknown", post(H + b"Expect: 200-ok\r\nContent-Length: 5\r\n", b"abcde" + SMUGGLED), 417),
]


@pytest.mark.parametrize("name,raw,status", REJECT_HEAD, ids=[c[0] for c in REJECT_HEAD])
def test_rejected_before_forwarding(px, rec, name, raw, status):
    mark = Mark(rec)
    with Conn(px.port, timeout=5) as c:
        c.send(raw)
        assert_rejected(c, status, name)
    time.sleep(0.05)
    assert mark.raw() == [], f"{name}: the upstream received bytes of a rejected request:\n{mark.raw()!r}"
    check_after(px, rec)
    lines = mark.request_lines()
    assert lines == [(b"GET", b"/echo?after")], f"{name}: the upstream saw {lines!r}"


# --------------------------------------------------------------------------------------
# Rejected while the body is read (the head may already have gone upstream): the client
# gets 400 and a closed connection; the upstream never gets a complete request, and no
# request line hidden in the body.

def chunked_post(chunks: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks


REJECT_BODY = [
    ("chunk_size_plus", chunked_post(b"+5\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_minus", chunked_post(b"-5\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_0x", chunked_post(b"0x5\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_trailing_space", chunked_post(b"5 \r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_leading_space", chunked_post(b" 5\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_empty", chunked_post(b"\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_not_hex", chunked_post(b"5g\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_overflow_17", chunked_post(b"10000000000000005\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_overflow_long", chunked_post(b"f" * 40 + b"\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_above_int64", chunked_post(b"8000000000000005\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_size_ffff16", chunked_post(b"ffffffffffffffff\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_bare_lf_size", chunked_post(b"5\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_bare_lf_data", chunked_post(b"5\r\nabcde\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_bare_cr_size", chunked_post(b"5\rabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_data_too_long", chunked_post(b"3\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_data_no_crlf", chunked_post(b"5\r\nabcdeXX0\r\n\r\n" + SMUGGLED)),
    ("chunk_ext_ctl", chunked_post(b"5;a=\x01\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_ext_nul", chunked_post(b"5;a\x00b\r\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("chunk_ext_bare_lf", chunked_post(b"5;a\nabcde\r\n0\r\n\r\n" + SMUGGLED)),
    ("last_chunk_bare_lf", chunked_post(b"5\r\nabcde\r\n0\n\n" + SMUGGLED)),
    ("trailer_bare_lf", chunked_post(b"5\r\nabcde\r\n0\r\nX-T: a\nX-U: b\r\n\r\n" + SMUGGLED)),
    ("trailer_obs_fold", chunked_post(b"5\r\nabcde\r\n0\r\nX-T: a\r\n b\r\n\r\n" + SMUGGLED)),
    ("trailer_nul", chunked_post(b"5\r\nabcde\r\n0\r\nX-T: a\x00\r\n\r\n" + SMUGGLED)),
    ("trailer_no_colon", chunked_post(b"5\r\nabcde\r\n0\r\nX-T a\r\n\r\n" + SMUGGLED)),
    ("chunk_smuggled_as_size", chunked_post(b"0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n")),
]


@pytest.mark.parametrize("name,raw", REJECT_BODY, ids=[c[0] for c in REJECT_BODY])
def test_rejected_in_body(px, rec, name, raw):
    rec.allow_errors = True  # a forwarded head whose body is then cut is an upstream error
    mark = Mark(rec)
    with Conn(px.port, timeout=5) as c:
        c.send(raw)
        assert_rejected(c, 400, name)
    time.sleep(0.1)
    got = mark.requests()
    assert got == [], f"{name}: the upstream got a complete request: {got[0].raw[:400]!r}\n{mark.raw()!r}"
    smuggled = [l for l in mark.request_lines() if b"smuggled" in l[1]]
    assert not smuggled, f"{name}: a smuggled request line reached the upstream:\n{mark.raw()!r}"
    check_after(px, rec)
    assert [r.target for r in mark.requests()] == ["/echo?after"], mark.raw()


def test_trailer_that_is_a_request(px, rec):
    """A trailer section cannot carry a request line: `0\\r\\nGET /smuggled ...` is a
    trailer field without a colon (400), never a second request."""
    rec.allow_errors = True
    mark = Mark(rec)
    with Conn(px.port, timeout=5) as c:
        c.send(chunked_post(b"5\r\nabcde\r\n0\r\n" + SMUGGLED))
        assert_rejected(c, 400, "trailer request line")
    assert mark.requests() == []
    assert not [l for l in mark.request_lines() if b"smuggled" in l[1]], mark.raw()


# --------------------------------------------------------------------------------------
# Unusual but unambiguous: forwarded exactly as sent, and the pipelined request that
# follows arrives separately, after it.

ACCEPT = [
    ("cl_identical_duplicate", post(H + b"Content-Length: 5\r\nContent-Length: 5\r\n", b"abcde"), b"abcde"),
    ("cl_leading_zeros", post(H + b"Content-Length: 005\r\n", b"abcde"), b"abcde"),
    ("cl_ows", post(H + b"Content-Length: \t 5 \t\r\n", b"abcde"), b"abcde"),
    ("cl_zero_body_is_next", post(H + b"Content-Length: 0\r\n"), b""),
    ("get_with_body", b"GET /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nabcde", b"abcde"),
    ("te_uppercase", post(H + b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nabcde\r\n0\r\n\r\n"), b"abcde"),
    ("te_tab_ows", post(H + b"Transfer-Encoding:\tchunked\t\r\n", b"5\r\nabcde\r\n0\r\n\r\n"), b"abcde"),
    ("chunk_ext", post(H + b"Transfer-Encoding: chunked\r\n",
                       b"5;name=value\r\nabcde\r\n3;a;b=\"q;x\"\r\nfgh\r\n0;last\r\n\r\n"), b"abcdefgh"),
    ("chunk_leading_zeros", post(H + b"Transfer-Encoding: chunked\r\n", b"0005\r\nabcde\r\n000\r\n\r\n"), b"abcde"),
    ("chunk_uppercase_hex", post(H + b"Transfer-Encoding: chunked\r\n", b"A\r\n0123456789\r\n0\r\n\r\n"),
     b"0123456789"),
    ("chunk_trailers", post(H + b"Transfer-Encoding: chunked\r\n",
                            b"5\r\nabcde\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n"), b"abcde"),
    ("chunk_body_contains_request", post(H + b"Transfer-Encoding: chunked\r\n",
                                         b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"), SMUGGLED),
    ("cl_body_contains_request", post(H + b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED), SMUGGLED),
    ("connection_lists_content_length", post(H + b"Connection: Content-Length\r\nContent-Length: 5\r\n", b"abcde"),
     b"abcde"),
    ("connection_lists_te", post(H + b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n",
                                 b"5\r\nabcde\r\n0\r\n\r\n"), b"abcde"),
    ("http10_keepalive_cl", b"POST /echo HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n"
                            b"abcde", b"abcde"),
]


@pytest.mark.parametrize("name,raw,body", ACCEPT, ids=[c[0] for c in ACCEPT])
def test_unambiguous_forwarded_exactly(px, rec, name, raw, body):
    mark = Mark(rec)
    with Conn(px.port, timeout=5) as c:
        c.send(raw + NEXT)
        r1 = c.read_response()
        assert r1.status == 200, f"{name}: {r1!r}"
        j = r1.json()
        assert (j["target"], j["body_len"]) == ("/echo", len(body)), f"{name}: upstream read {j!r}"
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["target"] == "/next", f"{name}: second answer {r2!r}"
    got = mark.requests()
    assert [(q.method, q.target) for q in got] == [(raw.split(b" ")[0].decode(), "/echo"), ("GET", "/next")], \
        f"{name}: upstream got {[(q.method, q.target) for q in got]}\n{mark.raw()!r}"
    assert got[0].body == body
    assert got[1].body == b""
    assert len(got[0].header_all("Content-Length")) + len(got[0].header_all("Transfer-Encoding")) <= 1, \
        f"{name}: upstream request framed twice: {got[0].raw_head!r}"
    assert not got[0].header_all("Expect")
    # the upstream's bytes are exactly these two requests, nothing before, between or after
    assert sum(map(len, mark.raw())) == len(got[0].raw) + len(got[1].raw), mark.raw()


def test_cl_te_pipeline_does_not_poison_other_clients(px, rec):
    """The classic attack: CL.TE from one client, then a victim's request on another
    connection. The victim must get its own answer."""
    mark = Mark(rec)
    attack = post(H + b"Content-Length: 44\r\nTransfer-Encoding: chunked\r\n",
                  b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nX-Ignore: X")
    for _ in range(3):
        with Conn(px.port, timeout=5) as c:
            c.send(attack)
            assert_rejected(c, 400, "cl_te attack")
        with Conn(px.port, timeout=5) as v:
            r = v.request("GET", "/echo?victim")
            assert r.status == 200 and r.json()["target"] == "/echo?victim", r
    assert [q.target for q in mark.requests()] == ["/echo?victim"] * 3
    assert not [l for l in mark.request_lines() if b"smuggled" in l[1]], mark.raw()


def test_pipelined_after_rejection_is_not_served(px, rec):
    """Bytes after a rejected request are never read as a request."""
    mark = Mark(rec)
    with Conn(px.port, timeout=5) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /echo2 HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n" + SMUGGLED)
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/echo"
        assert_rejected(c, 400, "second request obs-fold")
    assert [q.target for q in mark.requests()] == ["/echo"]
    assert not [l for l in mark.request_lines() if b"smuggled" in l[1] or b"echo2" in l[1]], mark.raw()


def test_upstream_sees_only_origin_form(px, rec):
    """An absolute-form target is forwarded in origin form, so the upstream cannot read
    a different host or path from the request line."""
    mark = Mark(rec)
    with Conn(px.port, timeout=5) as c:
        r = c.request("GET", "http://x/echo?abs")
        assert r.status == 200
    got = mark.requests()
    assert [q.target for q in got] == ["/echo?abs"], mark.raw()


def test_worker_survives_everything_at_once(px, rec):
    """All the hostile heads pipelined on many connections at once: the worker stays,
    and a normal request afterwards is fine."""
    rec.allow_errors = True
    conns = []
    for _, raw, _ in REJECT_HEAD:
        c = Conn(px.port, timeout=5)
        c.send(raw)
        conns.append(c)
    for _, raw in REJECT_BODY:
        c = Conn(px.port, timeout=5)
        c.send(raw)
        conns.append(c)
    for c in conns:
        try:
            read_all(c)
        finally:
            c.close()
    check_after(px, rec)
    assert re.search(r"\b(alert|crit|emerg)\b", px.error_log) is None, px.error_log[-3000:]
