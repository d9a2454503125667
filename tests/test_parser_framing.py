"""Framing differential, end to end: edge (through a real worker, to a recording
upstream) against h11, on hypothesis-generated pipelines of requests with bodies.

test_parser.py compares edge's C head parser and chunked decoder with h11 piece by
piece. What it leaves to "the reactor" (its docstring says so) is the framing decision
itself: Content-Length lists and duplicates, Transfer-Encoding values, CL with TE, where
one request ends and the next begins. This file closes that gap: for the same bytes,

- every request edge forwards is one h11 reads, with the same method, target and body,
  in the same order (edge never forwards a request h11 would not read, or reads a
  different body);
- when h11 reads the whole pipeline and it contains none of edge's documented
  deliberate refusals (CL together with TE; TE on HTTP/1.0: RFC 9112 6.1/6.3 allow
  refusing what h11 accepts), edge forwards all of it;
- when edge stops, the client gets an error status and the connection closes.
"""

import time

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import Conn, EdgeProcess
from support.recording import Mark, RecordingUpstream

CONF = """
http {
    client_max_body_size 10m;
    upstream backend { server @UP@; keepalive 4; }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory, transport):
    up = RecordingUpstream("rec").start()
    up.allow_errors = True
    e = EdgeProcess(tmp_path_factory.mktemp("framing"), CONF, {"UP": up.addr}).start()
    workers = e.wait_workers(1)
    yield e, up
    try:
        e.stop()
    finally:
        e.kill_group()
        up.stop()
    assert e.worker_pids() in ([], workers)
    assert not e.problems, "; ".join(e.problems)


TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6)


@st.composite
def chunked_body(draw, body):
    out = bytearray()
    pos = 0
    while pos < len(body):
        n = draw(st.integers(1, max(1, len(body) - pos)))
        size = b"%x" % n
        if draw(st.booleans()):
            size = size.upper()
        size = b"0" * draw(st.integers(0, 2)) + size
        ext = b""
        if draw(st.integers(0, 3)) == 0:
            ext = b";" + draw(TOKEN).encode() + (b"=" + draw(TOKEN).encode() if draw(st.booleans()) else b"")
        out += size + ext + b"\r\n" + body[pos:pos + n] + b"\r\n"
        pos += n
    out += b"0\r\n"
    if draw(st.integers(0, 3)) == 0:
        out += b"X-Trailer-" + draw(TOKEN).encode() + b": v\r\n"
    out += b"\r\n"
    return bytes(out)


@st.composite
def one_request(draw, i, last):
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    # h11 does no HTTP/1.0 keep-alive, so a 1.0 request only ends a pipeline
    version = draw(st.sampled_from(["HTTP/1.1"] * 5 + ["HTTP/1.0"])) if last else "HTTP/1.1"
    body = draw(st.binary(max_size=300))
    kind = draw(st.sampled_from([
        "none", "cl", "cl", "cl_dup_same", "cl_zeros", "cl_ows", "cl_dup_differ", "cl_plus", "cl_list",
        "chunked", "chunked", "te_upper", "te_gzip", "te_double", "te_gzip_chunked", "te_dup_header",
        "cl_and_te", "te_and_cl",
    ]))
    headers = [b"Host: x"]
    deliberate = False  # a documented edge refusal of something h11 reads
    if kind == "none":
        body_bytes = b""
        body = b""
    elif kind.startswith("cl"):
        n = len(body)
        headers += {
            "cl": [b"Content-Length: %d" % n],
            "cl_dup_same": [b"Content-Length: %d" % n, b"Content-Length: %d" % n],
            "cl_zeros": [b"Content-Length: 00%d" % n],
            "cl_ows": [b"Content-Length: \t%d " % n],
            "cl_dup_differ": [b"Content-Length: %d" % n, b"Content-Length: %d" % (n + 1)],
            "cl_plus": [b"Content-Length: +%d" % n],
            "cl_list": [b"Content-Length: %d, %d" % (n, n + 1)],
            "cl_and_te": [b"Content-Length: %d" % n, b"Transfer-Encoding: chunked"],
        }[kind]
        body_bytes = draw(chunked_body(body)) if kind == "cl_and_te" else body
        deliberate = kind == "cl_and_te"
    else:
        te = {"chunked": [b"Transfer-Encoding: chunked"], "te_upper": [b"Transfer-Encoding: Chunked"],
              "te_gzip": [b"Transfer-Encoding: gzip"], "te_double": [b"Transfer-Encoding: chunked, chunked"],
              "te_gzip_chunked": [b"Transfer-Encoding: gzip, chunked"],
              "te_dup_header": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
              "te_and_cl": [b"Transfer-Encoding: chunked", b"Content-Length: 3"]}[kind]
        headers += te
        body_bytes = draw(chunked_body(body))
        deliberate = kind == "te_and_cl" or version == "HTTP/1.0"
    order = draw(st.permutations(headers))
    raw = f"{method} /r{i} {version}\r\n".encode() + b"".join(h + b"\r\n" for h in order) + b"\r\n" + body_bytes
    return raw, deliberate


@st.composite
def pipelines(draw):
    n = draw(st.integers(1, 3))
    return [draw(one_request(i, i == n - 1)) for i in range(n)]


def h11_read(data: bytes):
    """The requests h11 reads from `data` as a server, in order: (method, target, body);
    and whether it read all of the data without an error."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    out = []
    cur = None
    body = bytearray()
    try:
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Request):
                cur = (ev.method.decode(), ev.target.decode())
                body = bytearray()
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                out.append((cur[0], cur[1], bytes(body)))
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return out, True  # HTTP/1.0: the last request h11 reads
                conn.start_next_cycle()
            elif ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                return out, (conn.their_state in (h11.IDLE, h11.DONE, h11.CLOSED)) and cur is not None
    except h11.RemoteProtocolError:
        return out, False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines())
def test_framing_matches_h11(rig, pipe):
    e, up = rig
    data = b"".join(raw for raw, _ in pipe)
    theirs, h11_all = h11_read(data)
    # what edge must forward: h11's reading, up to the first deliberate refusal
    expect = []
    refused = not h11_all
    for idx, (raw, deliberate) in enumerate(pipe):
        if deliberate:
            refused = True
            break
        if idx < len(theirs):
            expect.append(theirs[idx])
    mark = Mark(up)
    statuses = []
    with Conn(e.port, timeout=5) as c:
        c.send(data)
        while True:
            try:
                r = c.read_response(pipe[len(statuses)][0].split(b" ")[0].decode()
                                    if len(statuses) < len(pipe) else "GET")
            except AssertionError:
                break  # closed
            statuses.append(r.status)
            if r.status >= 400:
                assert "close" in r.connection_tokens(), r
                assert c.wait_closed(3), "connection left open after a framing error"
                break
            if len(statuses) == len(pipe):
                break
    time.sleep(0.02)
    got = [(q.method, q.target, q.body) for q in mark.requests()]
    # never more, never different
    assert got == theirs[:len(got)], f"edge forwarded {got!r}\nh11 read {theirs!r}\nraw {data!r}"
    if not refused:
        assert got == expect and statuses == [200] * len(pipe), \
            f"edge refused what h11 reads: statuses {statuses}, forwarded {got!r}\nraw {data!r}"
    else:
        assert len(got) <= len(expect) + (0 if not h11_all else 0), (got, expect)
        assert statuses[:len(got)] == [200] * len(got)
        assert len(statuses) == len(got) + 1 and statuses[-1] >= 400, \
            f"the first refused request got no error status: {statuses} for\n{data!r}"
