"""Streaming with backpressure: 1 GiB up and 1 GiB down through the proxy with the
worker's RSS growing < 16 MiB (VmRSS sampled during the transfer), and a slow client /
slow upstream making edge stop reading from the other side rather than buffering.
The data is generated on the fly (support.recording.pattern_stream) and checked at
every offset on the receiving side; nothing holds the whole stream in memory.

Buffering is on by default (issue 10), so this module turns both off
(`proxy_request_buffering off; proxy_buffering off;`): what is tested here is the
streaming mode. The buffered mode has its own tests in test_buffering.py.
"""

import json
import socket
import threading
import time

import pytest

from support import Conn, build_request
from support.recording import RssSampler, StreamUpstream, pattern_check, pattern_stream

GiB = 1 << 30
MiB = 1 << 20

CONF = """
http {
    client_max_body_size 0;
    upstream backend { server @UP@; keepalive 4; }
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            proxy_pass http://backend; proxy_read_timeout 30s;
            proxy_request_buffering off; proxy_buffering off;
        }
    }
}
"""


@pytest.fixture
def stream_up():
    s = StreamUpstream().start()
    yield s
    s.stop()


def warm(e):
    """One request first, so buffers and pools that exist anyway are counted in the
    baseline, not as growth."""
    with Conn(e.port) as c:
        assert c.request("GET", "/warm").status == 200


def read_body(c: Conn, total: int, check=True, stall_after=None):
    """Read the response head, then `total` body bytes, checking the pattern."""
    _, status, _, headers, raw = c.read_head()
    assert status == 200, raw
    got = len(c.buf)
    if check:
        assert pattern_check(0, bytes(c.buf))
    c.buf.clear()
    buf = bytearray(4 * MiB)
    mv = memoryview(buf)
    while got < total:
        n = c.sock.recv_into(buf)
        if not n:
            raise AssertionError(f"response ended after {got} of {total} bytes")
        if check and not pattern_check(got, mv[:n]):
            raise AssertionError(f"body bytes differ near offset {got}")
        got += n
    return got


@pytest.mark.timeout(120)
def test_download_1gib_bounded_rss(edge, stream_up):
    e = edge(CONF, UP=stream_up)
    warm(e)
    worker = e.wait_workers(1)[0]
    t0 = time.monotonic()
    with RssSampler(worker) as rss, Conn(e.port, timeout=30) as c:
        c.send_request("GET", f"/stream/{GiB}")
        assert read_body(c, GiB) == GiB
        assert c.request("GET", "/after").status == 200, "connection out of sync after 1 GiB"
    took = time.monotonic() - t0
    assert rss.growth_kib < 16 * 1024, f"worker RSS grew {rss.growth_kib} KiB during a 1 GiB download"
    assert took < 90, f"1 GiB download took {took:.0f}s"


@pytest.mark.timeout(120)
def test_upload_1gib_bounded_rss(edge, stream_up):
    e = edge(CONF, UP=stream_up)
    warm(e)
    worker = e.wait_workers(1)[0]
    t0 = time.monotonic()
    with RssSampler(worker) as rss, Conn(e.port, timeout=30) as c:
        c.send(build_request("POST", "/sink", headers=[("Content-Length", str(GiB))]))
        for piece in pattern_stream(GiB, 4 * MiB):
            c.sock.sendall(piece)
        r = c.read_response()
        assert r.status == 200, r
        assert json.loads(r.body) == {"received": GiB, "ok": True}
    took = time.monotonic() - t0
    assert rss.growth_kib < 16 * 1024, f"worker RSS grew {rss.growth_kib} KiB during a 1 GiB upload"
    assert took < 90, f"1 GiB upload took {took:.0f}s"


@pytest.mark.timeout(60)
def test_slow_client_stops_upstream_reads(edge, stream_up):
    """The client reads nothing for 2 s: only what fits in socket buffers and edge's own
    bounded buffer leaves the upstream. Then the client reads everything, intact."""
    e = edge(CONF, UP=stream_up)
    warm(e)
    worker = e.wait_workers(1)[0]
    total = 256 * MiB
    with RssSampler(worker) as rss, Conn(e.port, timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        c.send_request("GET", f"/stream/{total}")
        time.sleep(2)
        sent = stream_up.sent
        assert sent < 48 * MiB, f"{sent >> 20} MiB left the upstream while the client read nothing"
        time.sleep(1)
        assert stream_up.sent - sent < 4 * MiB, "edge kept reading from the upstream for a stalled client"
        assert read_body(c, total) == total
    assert rss.growth_kib < 16 * 1024, f"worker RSS grew {rss.growth_kib} KiB for a stalled reader"


@pytest.mark.timeout(60)
def test_slow_upstream_stops_client_reads(edge, stream_up):
    """The upstream reads nothing for 2 s: the client can only push a bounded amount;
    then the upload completes intact."""
    e = edge(CONF, UP=stream_up)
    warm(e)
    worker = e.wait_workers(1)[0]
    total = 256 * MiB
    stream_up.pause_reading.set()
    pushed = [0]
    with RssSampler(worker) as rss, Conn(e.port, timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)

        def sender():
            c.sock.sendall(build_request("POST", "/sink", headers=[("Content-Length", str(total))]))
            for piece in pattern_stream(total, 256 * 1024):
                c.sock.sendall(piece)
                pushed[0] += len(piece)
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        time.sleep(2)
        first = pushed[0]
        assert first < 48 * MiB, f"the client pushed {first >> 20} MiB while the upstream read nothing"
        time.sleep(1)
        assert pushed[0] - first < 4 * MiB, "edge kept reading the body while the upstream was stalled"
        stream_up.pause_reading.clear()
        t.join(30)
        r = c.read_response()
        assert r.status == 200 and json.loads(r.body) == {"received": total, "ok": True}, r
    assert rss.growth_kib < 16 * 1024, f"worker RSS grew {rss.growth_kib} KiB for a stalled upstream"


@pytest.mark.timeout(60)
def test_many_stalled_readers_bounded(edge, stream_up):
    """40 clients each start a 64 MiB download and read nothing: the worker's memory
    stays bounded (per-connection buffers are bounded), and it still serves others."""
    e = edge(CONF, UP=stream_up)
    warm(e)
    worker = e.wait_workers(1)[0]
    conns = []
    with RssSampler(worker) as rss:
        try:
            for i in range(40):
                c = Conn(e.port, timeout=10)
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                c.send_request("GET", f"/stream/{64 * MiB}")
                conns.append(c)
            time.sleep(2)
            with Conn(e.port) as other:
                assert other.request("GET", "/other").status == 200
        finally:
            for c in conns:
                c.close()
    assert rss.growth_kib < 16 * 1024, f"40 stalled readers grew the worker by {rss.growth_kib} KiB"
