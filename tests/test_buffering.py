"""Request and response buffering (issue 10), through a real edge and real upstreams.

What is covered (each a behaviour seen on real sockets; no mocks):

- request buffering on (the default): an invalid chunked body (bad size, a size that
  overflows 64 bits, chunk data not followed by CRLF), sent whole or byte by byte, is
  refused with 400 and the upstream gets no connection and no byte; a chunked body over
  client_max_body_size is a 413 the same way; a slow upload reaches the upstream only
  once complete, as one request with `Content-Length` (a chunked one too, and a small
  one whose chunk size has leading zeros); a buffered body, in memory or in a temp file,
  is sent again to the next peer when the first refuses the connection, or on a new
  connection when the pooled one turns out closed; `Expect: 100-continue` is answered
  by the proxy and not passed on;
- request buffering off: the head and the first body bytes reach the upstream before
  the client has sent the rest, and a chunked body stays chunked;
- response buffering on (the default): the upstream sends a whole 50 MB response while
  the client reads nothing, and its connection serves another client's request (the
  keep-alive pool) before the first client has read its response; the same for 20 MiB
  framed by Content-Length, chunked or the upstream's close; the read-ahead stops at
  proxy_max_temp_file_size (0: no temp file); `X-Accel-Buffering: no` (and, edge only,
  `text/event-stream`) streams piece by piece and reads no further than the client;
  `X-Accel-Buffering: yes` buffers under `proxy_buffering off`; the header never reaches
  the client; `proxy_buffering off` streams;
- 1 GiB up and 1 GiB down with buffering on: the worker's RSS grows < 16 MiB, the data
  is checked at every offset, and the temp dirs stay empty (temp files are unlinked at
  once; an open fd into the dir, marked "(deleted)", shows the spooling); a client that
  aborts leaves no temp file open;
- a response head larger than `proxy_buffer_size` is a 502 ("upstream sent too big
  header"), a smaller one passes;
- config errors (`proxy_busy_buffers_size` too small or too large, too few buffers, bad
  sizes, bad on/off) stop the start-up naming the file and the line; configs nginx
  accepts (`proxy_buffers 4 16k`, ...) start.

nginx is the oracle: `EDGE_TEST_IMPL=nginx python3 -m pytest tests/test_buffering.py`
runs the same configs under nginx 1.22, whose defaults (proxy_request_buffering on,
proxy_buffering on) are the ones edge adopts. Where a test needs nginx to be told what
edge does by default (HTTP/1.1 keep-alive upstream), the config adds `NGINX_KEEPALIVE`
under nginx only. Tests of edge's deliberate differences are marked `edge_only`, with
the reason next to them.
"""

import json
import os
import select
import socket
import threading
import time

import pytest

from support import IMPL, Conn, EdgeProcess, body_pattern, build_request, closed_port, sha256
from support.recording import (RecordingUpstream, RssSampler, ScriptedUpstream, StreamUpstream, pattern_check,
                               pattern_stream)
from support.waiting import wait_for

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# edge always speaks HTTP/1.1 with keep-alive to its upstreams (its documented default);
# nginx speaks HTTP/1.0 with `Connection: close` unless told. Tests that need pooled
# connections, or a chunked body streamed upstream, tell nginx (edge has no such
# directive, so the line is added under nginx only).
NGINX_KEEPALIVE = 'proxy_http_version 1.1; proxy_set_header Connection "";' if IMPL == "nginx" else ""


# -- fixtures and helpers ----------------------------------------------------------------

@pytest.fixture
def rec():
    """A strict upstream that keeps every byte it received, per TCP connection."""
    up = RecordingUpstream("rec").start()
    yield up
    up.stop()
    if not up.allow_errors:
        assert not up.errors, "upstream saw bad input:\n" + "\n".join(up.errors)


@pytest.fixture
def stream_up():
    s = StreamUpstream().start()
    yield s
    s.stop()
    assert not s.errors, s.errors


@pytest.fixture
def scripted():
    s = ScriptedUpstream().start()
    yield s
    s.stop()
    assert not s.errors, s.errors


def send_bytewise(c: Conn, data: bytes):
    """Send one byte per write (TCP_NODELAY, a pause between writes, so each byte is its
    own segment and the proxy reads them one by one). Stops as soon as the server answers
    or closes: writing on would make the kernel reset the connection and could discard
    the answer before the client reads it."""
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        r, _, _ = select.select([c.sock], [], [], 0.002)
        if r:
            return
        try:
            c.sock.send(data[i:i + 1])
        except OSError:
            return


def read_until(c: Conn, needle: bytes, timeout: float, what: str):
    """Read into c.buf until it contains `needle` (fails after `timeout` seconds)."""
    _read_while(c, lambda: needle not in c.buf, timeout,
                lambda: f"{what}: {needle!r} did not arrive within {timeout}s; got {bytes(c.buf[-300:])!r}",
                lambda: f"{what}: connection closed before {needle!r}; got {bytes(c.buf[-300:])!r}")


def read_at_least(c: Conn, n: int, timeout: float, what: str):
    """Read into c.buf until it holds at least `n` bytes (fails after `timeout` s)."""
    _read_while(c, lambda: len(c.buf) < n, timeout,
                lambda: f"{what}: only {len(c.buf)} bytes arrived within {timeout}s",
                lambda: f"{what}: connection closed after {len(c.buf)} bytes")


def _read_while(c: Conn, more, timeout: float, late, closed):
    """Fill c.buf while more() holds; late() / closed() say why it failed."""
    deadline = time.monotonic() + timeout
    while more():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(late())
        c.sock.settimeout(left)
        try:
            if not c._fill():
                raise AssertionError(closed())
        except socket.timeout:
            pass
    c.sock.settimeout(c.timeout)


def read_pattern_body(c: Conn, total: int) -> int:
    """Read `total` body bytes after the head, checking the pattern at every offset."""
    got = len(c.buf)
    assert pattern_check(0, bytes(c.buf)), "body bytes differ at the start"
    c.buf.clear()
    buf = bytearray(4 * MiB)
    mv = memoryview(buf)
    while got < total:
        n = c.sock.recv_into(buf)
        if not n:
            raise AssertionError(f"response ended after {got} of {total} bytes")
        if not pattern_check(got, mv[:n]):
            raise AssertionError(f"body bytes differ near offset {got}")
        got += n
    return got


def deleted_links_into(pid: int, directory) -> list[str]:
    """The targets of `pid`'s open fds that point into `directory` (a spooled temp file
    shows as "DIR/NAME (deleted)": open, already unlinked)."""
    out = []
    d = str(directory).rstrip("/") + "/"
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith(d):
            out.append(link)
    return out


def files_under(directory) -> list[str]:
    """Every file (not directory) below `directory`: nginx may create level dirs, never
    a file that stays."""
    return [os.path.join(root, f) for root, _, files in os.walk(directory) for f in files]


# -- 1. request buffering on: an invalid chunked body never reaches the upstream ----------

PROXY = """
http {
    client_max_body_size 16m;
    upstream backend { server @UP@; keepalive 4; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://backend; @EXTRA@ }
    }
}
"""

CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

BAD_CHUNKED = [
    # a chunk size that is not hex, after a valid chunk and as the first chunk
    ("bad_size", b"5\r\nabcde\r\nzz\r\nabc\r\n0\r\n\r\n"),
    ("bad_first_size", b"5g\r\nabcde\r\n0\r\n\r\n"),
    # 2^64: one more than 64 bits hold; and a long run of f's
    ("size_overflows_64_bits", b"10000000000000000\r\nabcde\r\n0\r\n\r\n"),
    ("size_overflows_long", b"f" * 40 + b"\r\nabcde\r\n0\r\n\r\n"),
    # chunk data not followed by CRLF (the size says 5, 7 bytes come)
    ("bad_terminator", b"5\r\nabcdeXY\r\n0\r\n\r\n"),
    ("bad_terminator_later_chunk", b"3\r\nabc\r\n2\r\nxyz\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("how", ["whole", "bytewise"])
@pytest.mark.parametrize("name,body", BAD_CHUNKED, ids=[b[0] for b in BAD_CHUNKED])
def test_invalid_chunked_body_never_reaches_the_upstream(edge, rec, name, body, how):
    e = edge(PROXY, UP=rec, EXTRA="")
    with Conn(e.port, timeout=10) as c:
        if how == "whole":
            c.send(CHUNKED_HEAD + body)
        else:
            send_bytewise(c, CHUNKED_HEAD + body)
        r = c.read_response()
        assert r.status == 400, f"{name}/{how}: {r!r}"
        assert c.wait_closed(5), f"{name}/{how}: connection left open after the 400"
    time.sleep(0.2)  # a late connect would show up here
    assert rec.connections == 0, f"{name}/{how}: the upstream got a connection:\n{rec.dump()}"
    assert rec.total_bytes() == 0, f"{name}/{how}: the upstream got bytes:\n{rec.dump()}"
    # the upstream was reachable all along: a valid body goes through (not a vacuous pass)
    with Conn(e.port, timeout=10) as c:
        c.send(CHUNKED_HEAD + b"5\r\nabcde\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == 5, r
    assert [q.body for q in rec.requests] == [b"abcde"]


# -- 2. a slow upload reaches the upstream once complete, with Content-Length -------------

def check_one_buffered_request(rec, body: bytes):
    """Exactly one request reached the upstream, framed by Content-Length (never chunked),
    with the whole body."""
    assert len(rec.requests) == 1, [q.raw_head for q in rec.requests]
    got = rec.requests[0]
    assert got.header("Content-Length") == str(len(body)), got.raw_head
    assert got.header_all("Transfer-Encoding") == [], got.raw_head
    assert not got.chunked
    assert len(got.body) == len(body) and got.body == body, "the body arrived altered"
    assert rec.connections == 1


@pytest.mark.timeout(40)
def test_slow_upload_content_length_reaches_upstream_complete(edge, rec):
    """10 MB over ~10 s (100 pieces, 0.1 s apart): no upstream connection until the last
    byte is in; then one request with Content-Length."""
    e = edge(PROXY, UP=rec, EXTRA="")
    total, pieces = 10_000_000, 100
    body = body_pattern(total)
    step = total // pieces
    with Conn(e.port, timeout=30) as c:
        c.send(build_request("POST", "/echo", headers=[("Content-Length", str(total))]))
        for i in range(pieces):
            assert rec.connections == 0, f"the upstream was connected after {i * step} of {total} bytes"
            c.send(body[i * step:(i + 1) * step])
            time.sleep(0.1)  # the slow client: ~10 s in all
        r = c.read_response()
        assert r.status == 200, r
        j = r.json()
        assert (j["body_len"], j["body_sha256"]) == (total, sha256(body))
    check_one_buffered_request(rec, body)


@pytest.mark.timeout(30)
def test_slow_chunked_upload_reaches_upstream_with_content_length(edge, rec):
    """2 MB in 20 chunks over ~2 s: nothing upstream until the last chunk; then one
    request with Content-Length, not chunked."""
    e = edge(PROXY, UP=rec, EXTRA="")
    total, pieces = 2_000_000, 20
    body = body_pattern(total)
    step = total // pieces
    with Conn(e.port, timeout=30) as c:
        c.send(CHUNKED_HEAD)
        for i in range(pieces):
            c.send(b"%x\r\n" % step + body[i * step:(i + 1) * step] + b"\r\n")
            time.sleep(0.1)
            assert rec.connections == 0, f"the upstream was connected after chunk {i + 1} of {pieces}"
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["body_len"] == total
    check_one_buffered_request(rec, body)


def test_small_chunked_body_arrives_with_content_length(edge, rec):
    """A small chunked body (kept in memory), with a chunk size written with many leading
    zeros (its value counts, not its digits: 0x4e) and a chunk extension: the upstream
    gets Content-Length and the decoded body."""
    e = edge(PROXY, UP=rec, EXTRA="")
    first = body_pattern(0x4e)
    with Conn(e.port) as c:
        c.send(CHUNKED_HEAD + b"000000000000000000000000000000004e\r\n" + first + b"\r\n"
               b"5;ext=1\r\nabcde\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        # the connection is in sync: a second request on it is answered as itself
        assert c.request("GET", "/echo?next").json()["target"] == "/echo?next"
    got = rec.requests[0]
    assert got.header("Content-Length") == str(0x4e + 5), got.raw_head
    assert got.header_all("Transfer-Encoding") == [] and not got.chunked
    assert got.body == first + b"abcde"


# -- 3. a slow reader does not hold the upstream connection -------------------------------

@pytest.mark.timeout(60)
def test_slow_reader_frees_the_upstream_connection(edge, stream_up):
    """Client 1 asks for 50 MB and reads nothing. The upstream still sends all of it (the
    proxy takes it into its buffers and temp file), and its connection goes back to the
    keep-alive pool: client 2's request is served on that same TCP connection while
    client 1 has read (almost) nothing. Then client 1 gets all 50 MB, intact."""
    e = edge(f"""
http {{
    upstream backend {{ server @UP@; keepalive 4; }}
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{ proxy_pass http://backend; {NGINX_KEEPALIVE} }}
    }}
}}
""", UP=stream_up)
    total = 50 * MiB
    with Conn(e.port, timeout=30) as c1:
        # a small receive window: client 1 can only hold a little of the response
        c1.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        c1.send_request("GET", f"/stream/{total}")
        assert stream_up.done.wait(20), \
            f"the upstream could send only {stream_up.sent >> 20} MiB to a client that reads nothing"
        assert stream_up.connections == 1
        # the upstream's last bytes were handed to its kernel: give the proxy a moment to
        # read them from its socket and to pool the connection (not a timing assertion)
        time.sleep(0.5)
        with Conn(e.port, timeout=10) as c2:
            r = c2.request("GET", "/other")
            assert (r.status, r.body) == (200, b"ok\n"), r
        assert stream_up.connections == 1, \
            "client 2's request went on a new upstream connection: the first one was not back in the pool"
        # client 1 has not read yet: all 50 MB still has to come, and does, intact
        assert read_pattern_body_after_head(c1, total) == total


@pytest.mark.timeout(40)
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_read_ahead_of_every_response_framing(edge, scripted, framing):
    """A 20 MiB response framed by Content-Length, chunked, or the upstream's close: the
    upstream sends all of it to a client that reads nothing; a kept connection serves
    the next request (ScriptedUpstream numbers its connections in X-Conn), a closed one
    is replaced; then the client gets the whole body, intact."""
    total = 20 * MiB
    sent_all = threading.Event()

    def act(sock, head):
        h = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        if framing == "length":
            sock.sendall(h + b"Content-Length: %d\r\n\r\n" % total)
        elif framing == "chunked":
            sock.sendall(h + b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            sock.sendall(h + b"Connection: close\r\n\r\n")
        for piece in pattern_stream(total, 256 * KiB):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
        if framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
        sent_all.set()
        return framing != "close"  # False: the server closes the connection
    scripted.script["/big"] = act
    e = edge(PROXY, UP=scripted, EXTRA=NGINX_KEEPALIVE)
    with Conn(e.port, timeout=30) as c1:
        c1.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        c1.send_request("GET", "/big")
        assert sent_all.wait(15), "the upstream could not send its whole response to a client that reads nothing"
        time.sleep(0.5)  # for the proxy to read the last bytes and pool the connection
        with Conn(e.port, timeout=10) as c2:
            r = c2.request("GET", "/other")
            assert r.status == 200, r
            assert r.header("X-Conn") == ("2" if framing == "close" else "1"), r
        r = c1.read_response()
        assert r.status == 200 and len(r.body) == total and pattern_check(0, r.body), \
            f"{len(r.body)} of {total} bytes, intact: {pattern_check(0, r.body)}"


def read_pattern_body_after_head(c: Conn, total: int) -> int:
    _, status, _, headers, raw = c.read_head()
    assert status == 200, raw
    assert int(dict((k.lower(), v) for k, v in headers)["content-length"]) == total, raw
    return read_pattern_body(c, total)


# -- 4. a buffered body is replayed on the next peer --------------------------------------

RETRY = """
http {
    client_max_body_size 8m;
    client_body_buffer_size 16k;
    upstream backend {
        # the refusing peer is picked first most of the time (weight), and never marked down
        server 127.0.0.1:@DEAD@ weight=10 max_fails=0;
        server @UP@ max_fails=0;
    }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://backend; } }
}
"""


@pytest.mark.parametrize("size,chunked", [(1000, False), (1_000_000, False), (1_000_000, True)],
                         ids=["small-in-memory", "large-temp-file", "large-chunked"])
def test_buffered_body_goes_to_the_next_peer_when_connect_is_refused(edge, rec, size, chunked):
    """A body up to client_body_buffer_size (16k here) is kept in memory, a larger one in
    a temp file; either is sent whole to the next peer after the first refuses."""
    e = edge(RETRY, UP=rec, DEAD=closed_port())
    body = body_pattern(size)
    for i in range(4):
        with Conn(e.port, timeout=15) as c:
            if chunked:
                c.send(build_request("POST", f"/echo?{i}", headers=[("Transfer-Encoding", "chunked")])
                       + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            else:
                c.send(build_request("POST", f"/echo?{i}", body=body))
            r = c.read_response()
        assert r.status == 200, f"request {i}: {r!r}"
        j = r.json()
        assert (j["target"], j["body_len"], j["body_sha256"]) == (f"/echo?{i}", size, sha256(body)), j
    assert len(rec.requests) == 4, "each request reached the working peer exactly once"
    for q in rec.requests:
        assert q.header("Content-Length") == str(size) and not q.chunked, q.raw_head


def test_buffered_body_is_resent_when_a_pooled_connection_turns_out_closed(edge, upstream):
    """The upstream closes its idle keep-alive connection (as on its own idle timeout):
    the next POST, whose body is buffered, goes whole on a new connection."""
    e = edge(PROXY.replace("client_max_body_size 16m;", "client_max_body_size 16m; client_body_buffer_size 16k;"),
             UP=upstream, EXTRA=NGINX_KEEPALIVE)
    with Conn(e.port) as c:
        assert c.request("GET", "/echo?first").status == 200
    for size in (100, 100_000, 3_000_000):  # in memory, and in a temp file
        assert upstream.drop_connections() >= 1, "no pooled connection to drop"
        time.sleep(0.1)  # the proxy's side sees the close (FIN) before the next request
        body = body_pattern(size)
        with Conn(e.port, timeout=15) as c:
            r = c.request("POST", f"/echo?{size}", body=body)
        assert r.status == 200, f"{size}: {r!r}"
        j = r.json()
        assert (j["body_len"], j["body_sha256"]) == (size, sha256(body))


# -- 5. 1 GiB each way with buffering on ----------------------------------------------------

BIG = """
http {
    client_max_body_size 0;
    upstream backend { server @UP@; keepalive 4; }
    server {
        listen 127.0.0.1:@PORT@;
        # set at server level: the harness sets nginx's at http level (so both may run it)
        client_body_temp_path @BODYTMP@;
        proxy_temp_path @PROXYTMP@;
        location / { proxy_pass http://backend; proxy_read_timeout 60s; proxy_send_timeout 60s; }
    }
}
"""


def big_edge(edge, tmp_path, stream_up):
    body_tmp, proxy_tmp = tmp_path / "body-tmp", tmp_path / "proxy-tmp"
    body_tmp.mkdir()
    proxy_tmp.mkdir()
    e = edge(BIG, UP=stream_up, BODYTMP=body_tmp, PROXYTMP=proxy_tmp)
    with Conn(e.port) as c:  # warm up: buffers and pools that exist anyway are baseline
        assert c.request("GET", "/warm").status == 200
    return e, e.wait_workers(1)[0], body_tmp, proxy_tmp


@pytest.mark.timeout(120)
def test_upload_1gib_buffered_bounded_rss_no_temp_file_left(edge, stream_up, tmp_path):
    e, worker, body_tmp, _ = big_edge(edge, tmp_path, stream_up)
    spooling = []
    with RssSampler(worker) as rss, Conn(e.port, timeout=60) as c:
        c.send(build_request("POST", "/sink", headers=[("Content-Length", str(GiB))]))
        sent, next_check = 0, 64 * MiB
        for piece in pattern_stream(GiB, 4 * MiB):  # ~1 MiB pieces (the pattern's block)
            c.sock.sendall(piece)
            sent += len(piece)
            if sent >= next_check:
                next_check += 64 * MiB
                # the spool file is unlinked as soon as it is opened: never a name in the dir
                assert files_under(body_tmp) == [], f"a temp file has a name after {sent >> 20} MiB"
                assert stream_up.received == 0, "the upstream got body bytes before the body was complete"
                if sent >= 512 * MiB and not spooling:
                    spooling = deleted_links_into(worker, body_tmp)
        r = c.read_response()
        assert r.status == 200, r
        assert json.loads(r.body) == {"received": GiB, "ok": True}
    assert rss.growth_kib < 16 * 1024, f"worker RSS grew {rss.growth_kib} KiB during a buffered 1 GiB upload"
    assert files_under(body_tmp) == []
    # half way through, the worker held the body in a temp file in client_body_temp_path,
    # already unlinked ("(deleted)")
    assert spooling and all(link.endswith(" (deleted)") for link in spooling), spooling
    assert deleted_links_into(worker, body_tmp) == [], "the temp file stays open after the request"


@pytest.mark.timeout(120)
def test_download_1gib_buffered_bounded_rss_no_temp_file_left(edge, stream_up, tmp_path):
    e, worker, _, proxy_tmp = big_edge(edge, tmp_path, stream_up)
    with RssSampler(worker) as rss, Conn(e.port, timeout=60) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * KiB)
        c.send_request("GET", f"/stream/{GiB}")
        # the client reads nothing until the upstream has sent far more than any socket
        # buffer holds: the proxy is spooling it
        wait_for(lambda: stream_up.sent >= 96 * MiB, 20, "the upstream to send 96 MiB to a stalled client")
        spooling = deleted_links_into(worker, proxy_tmp)
        assert files_under(proxy_tmp) == [], "a response temp file has a name"
        assert read_pattern_body_after_head(c, GiB) == GiB
        assert c.request("GET", "/after").status == 200, "connection out of sync after 1 GiB"
    assert rss.growth_kib < 16 * 1024, f"worker RSS grew {rss.growth_kib} KiB during a buffered 1 GiB download"
    assert spooling and all(link.endswith(" (deleted)") for link in spooling), spooling
    assert files_under(proxy_tmp) == []
    assert deleted_links_into(worker, proxy_tmp) == [], "the temp file stays open after the response"


# -- limits and aborts ----------------------------------------------------------------------

@pytest.mark.timeout(40)
@pytest.mark.parametrize("max_temp", ["0", "16m"])
def test_proxy_max_temp_file_size_bounds_the_read_ahead(edge, stream_up, tmp_path, max_temp):
    """Past proxy_max_temp_file_size (0: no temp file at all) the proxy reads the upstream
    only as fast as the client takes: a stalled client stops the upstream after that
    much plus socket buffers. The client then gets all of it, intact."""
    proxy_tmp = tmp_path / "proxy-tmp"
    proxy_tmp.mkdir()
    e = edge(PROXY.replace("server {", f"server {{ proxy_temp_path {proxy_tmp};"), UP=stream_up,
             EXTRA=f"proxy_max_temp_file_size {max_temp};")
    worker = e.wait_workers(1)[0]
    # socket buffers alone hold ~10 MiB here (upstream send, proxy receive and send, client
    # receive); a 16m temp file adds 16 MiB to that
    total, limit = 128 * MiB, (24 if max_temp == "0" else 48) * MiB
    with Conn(e.port, timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * KiB)
        c.send_request("GET", f"/stream/{total}")
        time.sleep(1)  # the stalled client (not a timing assertion)
        first = stream_up.sent
        assert first < limit, f"{first >> 20} MiB left the upstream with proxy_max_temp_file_size {max_temp}"
        time.sleep(0.5)
        assert stream_up.sent - first < 4 * MiB, "the proxy kept reading the upstream past its temp file limit"
        if max_temp == "0":
            assert deleted_links_into(worker, proxy_tmp) == [], "a temp file with proxy_max_temp_file_size 0"
        else:
            assert first > 18 * MiB, f"only {first >> 20} MiB read ahead: the 16m temp file was not used"
        assert read_pattern_body_after_head(c, total) == total


def test_chunked_body_over_client_max_body_size_is_413_without_upstream(edge, rec):
    """A chunked body is counted as it is read: past client_max_body_size, 413, and the
    upstream is never contacted."""
    e = edge(PROXY.replace("client_max_body_size 16m;", "client_max_body_size 10k;"), UP=rec, EXTRA="")
    with Conn(e.port, timeout=10) as c:
        c.send(CHUNKED_HEAD)
        for _ in range(3):
            c.send(b"1000\r\n" + b"x" * 0x1000 + b"\r\n")  # 3 x 4 KiB: 12 KiB > 10k
        r = c.read_response()
        assert r.status == 413, r
    time.sleep(0.2)
    assert rec.connections == 0 and rec.total_bytes() == 0, rec.dump()


@pytest.mark.timeout(40)
def test_temp_files_closed_when_the_client_aborts(edge, stream_up, tmp_path):
    """A client that goes away mid-upload, and one that goes away mid-download while the
    response is spooled: the worker closes the temp files (no fd left open into the temp
    dirs) and serves the next request."""
    e, worker, body_tmp, proxy_tmp = big_edge(edge, tmp_path, stream_up)
    # upload: 64 MiB of a 256 MiB body, then a reset
    c = Conn(e.port, timeout=30)
    c.send(build_request("POST", "/sink", headers=[("Content-Length", str(256 * MiB))]))
    for piece in pattern_stream(64 * MiB, 4 * MiB):
        c.sock.sendall(piece)
    wait_for(lambda: deleted_links_into(worker, body_tmp), 5, "the request body's temp file")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # RST
    wait_for(lambda: not deleted_links_into(worker, body_tmp), 5, "the request body's temp file to be closed")
    assert stream_up.received == 0, "a part of an aborted buffered body reached the upstream"
    # download: the response is being spooled (the client reads nothing), then a reset
    c = Conn(e.port, timeout=30)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * KiB)
    c.send_request("GET", f"/stream/{256 * MiB}")
    wait_for(lambda: deleted_links_into(worker, proxy_tmp), 10, "the response's temp file")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    wait_for(lambda: not deleted_links_into(worker, proxy_tmp), 10, "the response's temp file to be closed")
    with Conn(e.port) as c:
        assert c.request("GET", "/after").status == 200
    assert e.worker_pids() == [worker]
    assert files_under(body_tmp) == [] and files_under(proxy_tmp) == []


# -- 6. responses that are streamed as they come --------------------------------------------

PIECES = [b"data: piece %d\n\n" % i for i in range(3)]


def piecewise(extra_headers: bytes, received: list[threading.Event], errors: list):
    """A scripted answer: the head and the first piece, then each next piece only once
    the test says the client has the previous one."""
    total = sum(map(len, PIECES))

    def act(sock, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\n" + extra_headers + b"Content-Length: %d\r\n\r\n" % total)
        for i, piece in enumerate(PIECES):
            sock.sendall(piece)
            if i + 1 < len(PIECES) and not received[i].wait(10):
                errors.append(f"the client never got piece {i} before piece {i + 1} was due")
                return False
        return True
    return act


def check_streamed(e, scripted, path, extra_headers):
    received = [threading.Event() for _ in PIECES]
    errors = []
    scripted.script[path] = piecewise(extra_headers, received, errors)
    with Conn(e.port, timeout=10) as c:
        c.send_request("GET", path)
        c.sock.settimeout(5)
        try:
            version, status, reason, headers, raw = c.read_head()
        except socket.timeout:
            raise AssertionError(f"{path}: no response head within 5 s: the proxy holds the response back") from None
        assert status == 200, raw
        assert b"x-accel-buffering" not in raw.lower(), f"X-Accel-Buffering reached the client: {raw!r}"
        for i, piece in enumerate(PIECES):
            # the upstream waits for this before it sends the next piece: a proxy that
            # held the piece back would never see it arrive here
            read_until(c, piece, 5, f"piece {i} of {path}")
            received[i].set()
        assert bytes(c.buf) == b"".join(PIECES)
    assert not errors, errors
    return headers


def test_x_accel_buffering_no_streams(edge, scripted):
    e = edge(PROXY, UP=scripted, EXTRA="")
    check_streamed(e, scripted, "/xab", b"Content-Type: text/plain\r\nX-Accel-Buffering: no\r\n")


@pytest.mark.edge_only  # nginx buffers text/event-stream like any other type (it needs
#                         X-Accel-Buffering: no or proxy_buffering off); edge never holds SSE back
def test_event_stream_streams(edge, scripted):
    e = edge(PROXY, UP=scripted, EXTRA="")
    headers = check_streamed(e, scripted, "/sse", b"Content-Type: text/event-stream\r\n")
    assert dict(headers)["Content-Type"] == "text/event-stream"


def counting_big_response(extra_headers: bytes, total: int, sent: list):
    """A scripted answer of `total` pattern bytes; sent[0] counts what left the upstream."""
    def act(sock, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\n" + extra_headers + b"Content-Length: %d\r\n\r\n" % total)
        for piece in pattern_stream(total, 256 * KiB):
            sock.sendall(piece)
            sent[0] += len(piece)
        return True
    return act


def check_backpressure(e, scripted, path, extra_headers):
    """The client reads nothing for 1 s: with no read-ahead, only what socket buffers and
    the proxy's own small buffer hold leaves the upstream (the limits are
    test_streaming.py's). Then the client gets everything, intact."""
    total, sent = 128 * MiB, [0]
    scripted.script[path] = counting_big_response(extra_headers, total, sent)
    with Conn(e.port, timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * KiB)
        c.send_request("GET", path)
        time.sleep(1)  # the stalled client (not a timing assertion)
        first = sent[0]
        assert first < 48 * MiB, f"{first >> 20} MiB left the upstream while the client read nothing: read ahead"
        time.sleep(0.5)
        assert sent[0] - first < 4 * MiB, "the proxy kept reading the upstream for a stalled client"
        _, status, _, _, raw = c.read_head()
        assert status == 200 and b"x-accel-buffering" not in raw.lower(), raw
        assert read_pattern_body(c, total) == total


@pytest.mark.timeout(40)
def test_x_accel_buffering_no_reads_no_further_than_the_client(edge, scripted):
    """`X-Accel-Buffering: no` turns buffering off for that response: a slow client slows
    the upstream (no read-ahead into a temp file)."""
    e = edge(PROXY, UP=scripted, EXTRA="")
    check_backpressure(e, scripted, "/xab-big", b"Content-Type: application/octet-stream\r\nX-Accel-Buffering: no\r\n")


@pytest.mark.edge_only  # nginx reads text/event-stream ahead like any other type
@pytest.mark.timeout(40)
def test_event_stream_reads_no_further_than_the_client(edge, scripted):
    e = edge(PROXY, UP=scripted, EXTRA="")
    check_backpressure(e, scripted, "/sse-big", b"Content-Type: text/event-stream\r\n")


def test_x_accel_buffering_yes_buffers_when_buffering_is_off(edge, scripted):
    """With proxy_buffering off, `X-Accel-Buffering: yes` turns buffering on for that
    response: the upstream sends all of 20 MB while the client reads nothing. The header
    is not passed to the client."""
    total = 20 * MiB
    sent_all = threading.Event()

    def act(sock, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Accel-Buffering: yes\r\n"
                     b"Content-Length: %d\r\n\r\n" % total)
        for piece in pattern_stream(total, 256 * KiB):
            sock.sendall(piece)
        sent_all.set()
        return True
    scripted.script["/big"] = act
    e = edge(PROXY, UP=scripted, EXTRA="proxy_buffering off;")
    with Conn(e.port, timeout=20) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        c.send_request("GET", "/big")
        assert sent_all.wait(15), "the upstream could not send its response to a client that reads nothing"
        _, status, _, headers, raw = c.read_head()
        assert status == 200 and b"x-accel-buffering" not in raw.lower(), raw
        assert read_pattern_body(c, total) == total


# -- 7. buffering off keeps streaming -----------------------------------------------------

def wait_upstream_head(rec, timeout=5.0) -> bytes:
    """The first request head the upstream received (raw), waiting for it."""
    def has_head():
        raw = rec.raw()
        return raw and b"\r\n\r\n" in raw[0]
    wait_for(has_head, timeout, "the request head at the upstream")
    return rec.raw()[0].split(b"\r\n\r\n", 1)[0]


def test_request_buffering_off_streams_content_length_body(edge, rec):
    e = edge(PROXY, UP=rec, EXTRA=f"proxy_request_buffering off; {NGINX_KEEPALIVE}")
    total = 4_000_000
    body = body_pattern(total)
    with Conn(e.port, timeout=30) as c:
        c.send(build_request("POST", "/echo", headers=[("Content-Length", str(total))]) + body[:100_000])
        head = wait_upstream_head(rec)
        wait_for(lambda: rec.body_bytes_received > 0, 5, "first body bytes at the upstream")
        assert rec.body_bytes_received < total
        assert b"content-length: %d" % total in head.lower(), head
        c.send(body[100_000:])
        r = c.read_response()
        j = r.json()
        assert (r.status, j["body_len"], j["body_sha256"]) == (200, total, sha256(body))


def test_request_buffering_off_chunked_stays_chunked(edge, rec):
    e = edge(PROXY, UP=rec, EXTRA=f"proxy_request_buffering off; {NGINX_KEEPALIVE}")
    parts = [body_pattern(70_000)[i * 7000:(i + 1) * 7000] for i in range(10)]
    with Conn(e.port, timeout=30) as c:
        c.send(CHUNKED_HEAD + b"%x\r\n" % len(parts[0]) + parts[0] + b"\r\n")
        head = wait_upstream_head(rec).lower()
        # the head went before the body was complete, and it says chunked
        assert b"transfer-encoding: chunked" in head and b"content-length" not in head, head
        for p in parts[1:]:
            c.send(b"%x\r\n" % len(p) + p + b"\r\n")
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == 70_000, r
    got = rec.requests[0]
    assert got.chunked and got.body == b"".join(parts)


def test_proxy_buffering_off_streams_the_response(edge, upstream):
    """The client gets the first part of the response while the upstream holds the rest
    (until the test opens the gate)."""
    e = edge(PROXY, UP=upstream, EXTRA="proxy_buffering off;")
    n = 300_000
    gate = upstream.gate("g")
    with Conn(e.port, timeout=30) as c:
        c.send_request("GET", f"/gated/g/{n}")
        _, status, _, _, raw = c.read_head()
        assert status == 200, raw
        read_at_least(c, n, 5, f"the first {n} body bytes before the gate opens")
        gate.set()
        assert c._read_exact(2 * n) == body_pattern(2 * n)


# -- 8. config errors --------------------------------------------------------------------

# nginx says `"NAME" directive invalid value`; edge may also say `invalid value "ARG" in
# "NAME" directive` (its wording for other directives' bad arguments): either names the
# directive and says what is wrong, which is what a user needs with the file:line.
INVALID = object()

# (directive, nginx's message, checked when nginx merges: see below)
CONFIG_ERRORS = [
    ("proxy_busy_buffers_size 1k;", '"proxy_busy_buffers_size" must be equal to or greater than the maximum of '
                                    'the value of "proxy_buffer_size" and one of the "proxy_buffers"', True),
    ("proxy_busy_buffers_size 64k;", '"proxy_busy_buffers_size" must be less than the size of all '
                                     '"proxy_buffers" minus one buffer', True),
    ("proxy_buffer_size 64k;", '"proxy_busy_buffers_size" must be less than the size of all "proxy_buffers" '
                               'minus one buffer', True),
    # the default busy size (2 x 4k) is more than all buffers but one (1 x 4k)
    ("proxy_buffers 2 4k;", '"proxy_busy_buffers_size" must be less than the size of all "proxy_buffers" '
                            'minus one buffer', True),
    ("proxy_buffers 1 4k;", 'there must be at least 2 "proxy_buffers"', True),
    ("proxy_buffers 8 x;", INVALID, False),
    ("proxy_buffers x 4k;", INVALID, False),
    ("proxy_buffer_size 12q;", INVALID, False),
    ("client_body_buffer_size abc;", INVALID, False),
    ("proxy_request_buffering maybe;", 'invalid value "maybe" in "proxy_request_buffering" directive, '
                                       'it must be "on" or "off"', False),
    ("proxy_buffering maybe;", 'invalid value "maybe" in "proxy_buffering" directive, it must be "on" or "off"',
     False),
]


@pytest.mark.parametrize("directive,message,merged", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors_name_file_and_line(tmp_path, directive, message, merged):
    e = EdgeProcess(tmp_path, f"""http {{
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            proxy_pass http://127.0.0.1:9;
            {directive}
        }}
    }}
}}
""", {"PORT": closed_port()})
    e.spawn()
    try:
        assert e.wait_exit(10) == 1, e.report()
        out = e.output() + e.error_log
        if message is INVALID:
            name, arg = directive.rstrip(";").split(" ", 1)
            bad = [a for a in arg.split() if not a.rstrip("k").isdigit()][0]
            assert (f'"{name}" directive invalid value' in out
                    or f'invalid value "{bad}" in "{name}" directive' in out), out
        else:
            assert message in out, out
        # nginx checks the buffer sizes against each other when it merges the levels, and
        # then names the line where the http block ends; edge names the directive's line
        line = e.line_of(directive)
        if merged and IMPL == "nginx":
            line = len(e.conf_text.rstrip("\n").splitlines())
        assert f"{e.conf_path}:{line}" in out, out
    finally:
        e.kill_group()


# Configs nginx accepts start: the default proxy_busy_buffers_size follows the buffer
# sizes (nginx: twice the larger of proxy_buffer_size and one buffer), so common settings
# such as `proxy_buffers 4 16k` need no busy size of their own; and the busy size may
# equal all buffers but one (nginx refuses only more than that).
VALID_CONFIGS = [
    "proxy_buffers 4 16k;",
    "proxy_buffer_size 12k;",
    "proxy_buffer_size 16k; proxy_buffers 16 8k;",
    "proxy_buffers 3 4k;",
    "proxy_buffers 3 4k; proxy_busy_buffers_size 8k;",
    "proxy_busy_buffers_size 24k;",
    "proxy_buffers 8 4k; proxy_buffer_size 4k; proxy_busy_buffers_size 4k;",
    "proxy_max_temp_file_size 0;",
    "proxy_max_temp_file_size 10m; proxy_temp_path /tmp;",
    "client_body_buffer_size 1m; client_body_temp_path /tmp 1 2;",
    "proxy_request_buffering off; proxy_buffering off;",
]


@pytest.mark.parametrize("directives", VALID_CONFIGS)
def test_valid_buffer_configs_start(edge, upstream, directives):
    e = edge(PROXY, UP=upstream, EXTRA=directives)
    with Conn(e.port) as c:
        assert c.request("POST", "/echo", body=b"abc").json()["body_len"] == 3
        assert c.request("GET", "/bytes/100000").body == body_pattern(100_000)


# -- 9. Expect: 100-continue with buffering on ----------------------------------------------

def test_expect_100_continue_buffered(edge, rec):
    e = edge(PROXY, UP=rec, EXTRA="")
    body = body_pattern(300_000)
    with Conn(e.port, timeout=10) as c:
        c.send(build_request("POST", "/echo", headers=[("Expect", "100-continue"),
                                                      ("Content-Length", str(len(body)))]))
        c.sock.settimeout(5)
        interim = c.sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", f"no 100 Continue before the body: {interim!r}"
        assert rec.connections == 0, "the upstream was contacted before the body was read"
        c.sock.settimeout(10)
        c.send(body)
        r = c.read_response()
        assert r.status == 200, r
        assert b"100 Continue" not in r.raw_head, "a second 100 Continue (the upstream's?) reached the client"
    got = rec.requests[0]
    assert got.header_all("Expect") == [], f"Expect was passed upstream: {got.raw_head!r}"
    assert got.header("Content-Length") == str(len(body)) and got.body == body


# -- 10. proxy_buffer_size bounds the upstream's response head -----------------------------

def head_of(size: int) -> bytes:
    """A response head of exactly `size` bytes (an X-Fill header fills it; not X-Pad, which nginx hides by default)."""
    base = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fill: \r\n\r\n"
    return base.replace(b"X-Fill: ", b"X-Fill: " + b"a" * (size - len(base))) + b"ok"


@pytest.mark.parametrize("where,head_size,status", [
    ("/default/", 3000, 200),     # proxy_buffer_size 4k (the default) holds a 3000-byte head
    ("/default/", 6000, 502),     # not a 6000-byte one
    ("/eightk/", 6000, 200),      # proxy_buffer_size 8k does
    ("/eightk/", 9000, 502),
])
def test_response_head_larger_than_proxy_buffer_size_is_502(edge, scripted, where, head_size, status):
    scripted.script[f"{where}h"] = head_of(head_size)
    e = edge("""
http {
    upstream backend { server @UP@; }
    server {
        listen 127.0.0.1:@PORT@;
        location /default/ { proxy_pass http://backend; }
        location /eightk/ { proxy_pass http://backend; proxy_buffer_size 8k; proxy_busy_buffers_size 8k; }
    }
}
""", UP=scripted)
    with Conn(e.port, timeout=10) as c:
        r = c.request("GET", f"{where}h")
    assert r.status == status, r
    if status == 200:
        assert r.body == b"ok" and len(r.header("X-Fill")) > head_size - 100
    else:
        wait_for(lambda: "upstream sent too big header" in e.error_log, 3, "the error log line")
