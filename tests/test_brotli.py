"""Brotli response compression (issue 15, item 4, last bullet): ngx_brotli's directives
(brotli, brotli_types, brotli_min_length, brotli_comp_level, brotli_window) on gzip's
compiled half, against a real edge, a scripted upstream and real files.

edge_only: the nginx 1.22 here has no brotli module. The table mirrors tests/test_gzip.py
where it applies: types (brotli_types, `*`, text/html always), sizes (brotli_min_length;
unknown lengths always), Accept-Encoding (br as a token, q values, q=0, "br" inside
another token) and the choice between br and gzip with both on, status (200/403/404),
Content-Encoding already set, HEAD, the head (no Content-Length, weak ETag, no
Accept-Ranges, Vary with gzip_vary, chunked or close-delimited), HTTP/1.0, bodies that
decode to the original (length, chunked and close-delimited upstreams, proxy_buffering
on and off, levels, windows), a streamed body decoded before the upstream sends the
rest, static files (small and large, ranges not applied, keep-alive and pipelining),
TLS, the encoder's memory released after client aborts, upstream cuts and complete
responses, config errors.
"""

import os
import re
import socket
import struct
import threading
import zlib

import pytest

from support import Conn, build_request
from support.recording import ScriptedUpstream
from test_gzip import (BIG, HTML, MTIME, Routes, _chunked, root, up)  # noqa: F401 (fixtures)

brotli = pytest.importorskip("brotli")

pytestmark = pytest.mark.edge_only


def unbr(data: bytes) -> bytes:
    return brotli.decompress(data)


CONF = """
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    gzip on;
    gzip_types application/json text/css;
    gzip_vary on;
    brotli on;
    brotli_types application/json text/css;
    sendfile on;

    server {
        listen 127.0.0.1:@PORT@;
        root @ROOT@;

        location / { proxy_pass http://@UP@; }
        location /nb/ { proxy_pass http://@UP@; proxy_buffering off; }
        location /off/ { brotli off; proxy_pass http://@UP@; }
        location /none/ { brotli off; gzip off; proxy_pass http://@UP@; }
        location /bronly/ { gzip off; gzip_vary off; proxy_pass http://@UP@; }
        location /novary/ { gzip_vary off; proxy_pass http://@UP@; }
        location /any/ { brotli_types *; proxy_pass http://@UP@; }
        location /min0/ { brotli_min_length 0; proxy_pass http://@UP@; }
        location /min1k/ { brotli_min_length 1k; gzip off; proxy_pass http://@UP@; }
        location /l0/ { brotli_comp_level 0; proxy_pass http://@UP@; }
        location /l11/ { brotli_comp_level 11; proxy_pass http://@UP@; }
        location /w1k/ { brotli_window 1k; proxy_pass http://@UP@; }
        location /w16m/ { brotli_window 16m; proxy_pass http://@UP@; }
        location /pany/ { gzip_proxied any; proxy_pass http://@UP@; }
        location /files/ { }
        location /filesbr/ { gzip off; alias @ROOT@/files/; }
        location /pre/ { gzip off; brotli off; brotli_static on; gzip_static on; }
        location /prealways/ { gzip off; brotli_static always; alias @ROOT@/pre/; }
        location /prenovary/ { brotli_static on; gzip_vary off; alias @ROOT@/pre/; }
    }
}
"""

BR = [("Accept-Encoding", "gzip, deflate, br")]
GZ = [("Accept-Encoding", "gzip")]


PRE_PLAIN = b"console.log('plain file');\n" * 20
PRE_GZ = zlib.compress(b"console.log('gzip twin');\n" * 20, wbits=31)
PRE_BR = brotli.compress(b"console.log('brotli twin');\n" * 20)


@pytest.fixture
def srv(edge, up, root):
    for name, data in (("app.js", PRE_PLAIN), ("app.js.gz", PRE_GZ), ("app.js.br", PRE_BR),
                       ("bronly.js", PRE_PLAIN), ("bronly.js.br", PRE_BR),
                       ("gzonly.js", PRE_PLAIN), ("gzonly.js.gz", PRE_GZ),
                       ("only.js", PRE_PLAIN)):
        p = root / "pre" / name
        p.write_bytes(data)
        os.utime(p, (MTIME, MTIME))
    return edge(CONF, UP=up, ROOT=root)


def fetch(srv, target, headers=BR, method="GET", version="HTTP/1.1"):
    with Conn(srv.port) as c:
        return c.request(method, target, headers=list(headers), version=version)


def coding(r):
    return r.header("Content-Encoding")


# -- what is compressed ------------------------------------------------------------------------

@pytest.mark.parametrize("target,expect,plain", [
    ("/page", "br", HTML),                  # text/html always
    ("/big.json", "br", BIG),               # in brotli_types
    ("/param", "br", BIG),                  # "application/json; charset=utf-8"
    ("/upper", "br", BIG),                  # types compare case-insensitively
    ("/png", None, HTML),                   # not listed
    ("/plain", None, HTML),
    ("/any/png", "br", HTML),               # brotli_types * (gzip_types does not list it)
    ("/off/page", "gzip", HTML),            # brotli off: gzip
    ("/none/page", None, HTML),
    ("/bronly/big.json", "br", BIG),        # gzip off
    ("/tiny", None, b"x" * 19),             # Content-Length 19 < brotli_min_length 20
    ("/twenty", "br", b"y" * 20),
    ("/min1k/page", "br", HTML),
    ("/min1k/twenty", None, b"y" * 20),
    ("/empty", None, b""),
    ("/min0/empty", "br", b""),
    ("/tinychunked", "br", b"ab"),          # unknown length: compressed whatever its size
    ("/st403", "br", HTML),
    ("/st404", "br", HTML),
    ("/st500", None, HTML),                 # only 200, 403 and 404
    ("/st201", None, HTML),
    ("/chunked", "br", HTML),
    ("/close", "br", HTML),
    ("/nb/big.json", "br", BIG),            # proxy_buffering off
    ("/nb/chunked", "br", HTML),
    ("/nb/close", "br", HTML),
    ("/l0/big.json", "br", BIG),
    ("/l11/big.json", "br", BIG),
    ("/w1k/big.json", "br", BIG),
    ("/w16m/big.json", "br", BIG),
], ids=lambda v: v if isinstance(v, str) else ("" if not isinstance(v, bytes) else "-"))
def test_compressed_or_not(srv, target, expect, plain):
    r = fetch(srv, target)
    assert coding(r) == expect, r
    if expect == "br":
        assert unbr(r.body) == plain
        assert not r.has("Content-Length")
        assert r.header("Transfer-Encoding") == "chunked"
    elif expect == "gzip":
        assert zlib.decompress(r.body, 31) == plain
    else:
        assert r.body == plain


def window_bits(stream: bytes) -> int:
    """WBITS from a Brotli stream's header (RFC 7932, 9.1)."""
    bits = int.from_bytes(stream[:2], "little")
    if not bits & 1:
        return 16
    n = (bits >> 1) & 7
    if n:
        return 17 + n
    m = (bits >> 4) & 7
    return 8 + m if m > 1 else 17


def test_levels_differ(srv):
    fast = fetch(srv, "/l0/big.json")
    default = fetch(srv, "/big.json")
    best = fetch(srv, "/l11/big.json")
    for r in (fast, default, best):
        assert unbr(r.body) == BIG
    assert len(best.body) < len(default.body) < len(fast.body) < len(BIG) // 3


@pytest.mark.parametrize("target,bits", [
    ("/chunked", 19),               # unknown length: brotli_window (512k by default)
    ("/w16m/chunked", 24),
    ("/w1k/chunked", 10),
    ("/big.json", 17),              # Content-Length 100 KiB: the window no larger than that
    ("/w16m/big.json", 17),
    ("/w1k/big.json", 10),
    ("/page", 12),                  # 3.4 KB
    ("/twenty", 10),                # the smallest window
])
def test_window_sized_to_the_body(srv, target, bits):
    """The encoder's window (most of its memory) is brotli_window, or less when a
    Content-Length says the body needs less."""
    r = fetch(srv, target)
    assert coding(r) == "br" and window_bits(r.body) == bits
    assert len(unbr(r.body)) > 0


@pytest.mark.parametrize("ae,expect", [
    ("br", "br"),
    ("BR", "br"),
    ("gzip, deflate, br", "br"),            # br preferred whatever the order
    ("br, gzip", "br"),
    ("gzip;q=1, br;q=0.1", "br"),           # ... and whatever the q values (ngx_brotli)
    ("deflate,br", "br"),
    ("br;q=0.5", "br"),
    ("br; q=1", "br"),
    ("br;q=0.001", "br"),
    ("br;q=0", None),                       # q=0: not acceptable
    ("br;q=0.000", None),
    ("br;q=0, gzip", "gzip"),               # then gzip decides
    ("gzip, br;q=0", "gzip"),
    ("brotli", None),                       # "br" must be a whole token
    ("brotli, gzip", "gzip"),
    ("xbr", None),
    ("brotli, br", "br"),                   # the search goes on past "brotli"
    ("identity", None),
    ("*", None),
    ("gzip", "gzip"),
    ("", None),
])
def test_accept_encoding(srv, ae, expect):
    r = fetch(srv, "/page", [("Accept-Encoding", ae)])
    assert coding(r) == expect, r
    assert r.header("Vary") == "Accept-Encoding"       # gzip_vary: whatever the client takes
    if expect == "br":
        assert unbr(r.body) == HTML
    elif expect == "gzip":
        assert zlib.decompress(r.body, 31) == HTML
    else:
        assert r.body == HTML and r.header("Content-Length") == str(len(HTML))


def test_brotli_types_and_gzip_types_apart(srv):
    """/any/ lists every type for brotli only: a gzip-only client gets image/png plain."""
    assert coding(fetch(srv, "/any/png")) == "br"
    r = fetch(srv, "/any/png", GZ)
    assert coding(r) is None and r.body == HTML
    assert r.header("Vary") == "Accept-Encoding"        # brotli could have compressed it


def test_vary(srv):
    assert fetch(srv, "/novary/page").header("Vary") is None
    assert coding(fetch(srv, "/novary/page")) == "br"
    assert fetch(srv, "/bronly/page", []).header("Vary") is None
    assert fetch(srv, "/png").header("Vary") is None        # not a candidate: no Vary
    assert fetch(srv, "/st500").header("Vary") is None


def test_head_gets_the_head_of_a_compressed_get(srv):
    for target in ("/page", "/files/page.html"):
        r = fetch(srv, target, method="HEAD")
        assert coding(r) == "br" and r.body == b""
        assert not r.has("Content-Length") and not r.has("Transfer-Encoding")
        r = fetch(srv, target, [], method="HEAD")
        assert coding(r) is None and r.header("Content-Length") == str(len(HTML))
    with Conn(srv.port) as c:
        assert coding(c.request("HEAD", "/page", headers=BR)) == "br"
        assert unbr(c.request("GET", "/page", headers=BR).body) == HTML
        assert zlib.decompress(c.request("GET", "/page", headers=GZ).body, 31) == HTML


def test_headers_of_a_compressed_response(srv):
    r = fetch(srv, "/etag")
    assert coding(r) == "br"
    assert r.header("ETag") == 'W/"abc"'
    assert not r.has("Accept-Ranges")
    assert not r.has("Content-Length")
    assert r.header("Content-Type") == "text/html"
    r = fetch(srv, "/encoded")              # Content-Encoding already set: passed as it is
    assert [v for k, v in r.headers if k == "Content-Encoding"] == ["br"] and r.body == HTML
    r = fetch(srv, "/emptyenc")
    assert r.headers.count(("Content-Encoding", "br")) == 1 and unbr(r.body) == HTML
    r = fetch(srv, "/etag", [])
    assert r.header("ETag") == '"abc"' and r.header("Accept-Ranges") == "bytes"


def test_http10(srv):
    """ngx_brotli has no http_version test: an HTTP/1.0 client that takes br gets it,
    close-delimited; gzip keeps gzip_http_version 1.1."""
    r = fetch(srv, "/page", version="HTTP/1.0")
    assert coding(r) == "br"
    assert not r.has("Content-Length") and not r.has("Transfer-Encoding")
    assert unbr(r.body) == HTML
    r = fetch(srv, "/chunked", version="HTTP/1.0")
    assert coding(r) == "br" and unbr(r.body) == HTML
    r = fetch(srv, "/page", GZ, version="HTTP/1.0")
    assert coding(r) is None and r.body == HTML


def test_via_does_not_stop_brotli(srv):
    """gzip_proxied is gzip's: ngx_brotli compresses for proxies (Via) too."""
    assert coding(fetch(srv, "/page", BR + [("Via", "1.1 cache")])) == "br"
    assert coding(fetch(srv, "/page", GZ + [("Via", "1.1 cache")])) is None
    assert coding(fetch(srv, "/pany/page", GZ + [("Via", "1.1 cache")])) == "gzip"


# -- streaming ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["/nb/", "/"])
def test_streamed_body_arrives_before_the_upstream_ends(edge, root, prefix):
    """The upstream sends a first part and holds the rest until the client has decoded
    compressed bytes of it. Without proxy_buffering every read is flushed
    (BROTLI_OPERATION_FLUSH) and all of it decodes; with it, the encoder emits its
    meta-blocks as its input fills them, so a large incompressible first part is used."""
    u = ScriptedUpstream()
    seen = threading.Event()
    # (with buffering the encoder merges its input into meta-blocks of up to twice the
    # window, 1 MiB here, as ngx_brotli's does: the first part is larger than that)
    first = os.urandom(1536 * 1024) if prefix == "/" else b"<p>first part</p>" * 20
    need = 100000 if prefix == "/" else len(first)
    rest = b"<p>rest</p>" * 1000

    def act(sock, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n%x\r\n%s\r\n" % (len(first), first))
        ok = seen.wait(20)
        if ok:
            sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        return False
    u.script = Routes(stream=act)
    u.start()
    try:
        e = edge(CONF, UP=u, ROOT=root)
        with Conn(e.port) as c:
            c.send(build_request("GET", prefix + "stream", headers=BR))
            version, status, reason, headers, raw = c.read_head()
            assert status == 200
            assert ("Content-Encoding", "br") in headers
            d = brotli.Decompressor()
            got = b""
            for _ in range(10000):
                size = int(c._read_line(), 16)
                assert size > 0, "the body ended before the upstream sent the rest"
                got += d.process(c._read_exact(size))
                assert c._read_exact(2) == b"\r\n"
                if len(got) >= need:
                    break
            assert got == first[:len(got)]
            seen.set()
            while True:
                size = int(c._read_line(), 16)
                if size == 0:
                    c._read_line()
                    break
                got += d.process(c._read_exact(size))
                c._read_exact(2)
            assert d.is_finished()
            assert got == first + rest
    finally:
        seen.set()
        u.stop()


@pytest.mark.timeout(120)
def test_encoder_memory_released_however_the_response_ends(edge, root):
    """A Brotli encoder at quality 6 with a 4 MiB window holds MiBs (a chunked body has no
    length to size it down by). Hundreds of responses that end by a client abort, by the
    upstream cutting its body, or normally must leave the worker's memory where it was:
    the encoder is destroyed on every path."""
    from support.recording import vmrss_kib
    u = ScriptedUpstream()
    piece = os.urandom(4096).hex().encode()

    def hang(sock, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
        return False

    def cut(sock, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n1000\r\nabc" % (len(piece), piece))
        return False
    u.script = Routes(hang=hang, cut=cut, whole=_chunked([piece] * 4))
    u.start()
    conf = CONF.replace("location /nb/ {", "location /nb/ { brotli_window 4m;")
    try:
        e = edge(conf, UP=u, ROOT=root)
        worker = e.wait_workers(1)[0]

        def round_(n):
            for i in range(n):
                kind = ("hang", "cut", "whole")[i % 3]
                with Conn(e.port) as c:
                    c.send(build_request("GET", "/nb/" + kind, headers=BR))
                    head = c.read_head()
                    assert ("Content-Encoding", "br") in head[3]
                    if kind == "hang":
                        assert int(c._read_line(), 16) > 0
                        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    elif kind == "cut":
                        while c._fill():
                            pass
                    else:
                        body = bytearray()
                        while True:
                            size = int(c._read_line(), 16)
                            if size == 0:
                                break
                            body += c._read_exact(size)
                            c._read_exact(2)
                        assert unbr(bytes(body)) == piece * 4
        round_(60)
        before = vmrss_kib(worker)
        round_(300)
        growth = vmrss_kib(worker) - before
        # a leaked encoder per response would be hundreds of MiB
        assert growth < 16 * 1024, f"worker RSS grew {growth} KiB over 300 compressed responses"
    finally:
        u.stop()


# -- static files ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expect", [
    ("small.css", True),
    ("page.html", True),
    ("data.json", True),
    ("big.css", True),                      # 2.6 MB: read and compressed piece by piece
    ("tiny.css", False),                    # 4 bytes < brotli_min_length
    ("img.png", False),
])
@pytest.mark.parametrize("loc", ["/files/", "/filesbr/"])
def test_static_files(srv, root, name, expect, loc):
    data = (root / "files" / name).read_bytes()
    r = fetch(srv, loc + name)
    assert r.status == 200
    assert coding(r) == ("br" if expect else None)
    if expect:
        assert unbr(r.body) == data
        assert not r.has("Content-Length") and not r.has("Accept-Ranges")
        assert r.header("ETag") == 'W/"%x-%x"' % (MTIME, len(data))
        assert r.header("Last-Modified") == "Tue, 14 Nov 2023 22:13:20 GMT"
    else:
        assert r.body == data
        assert r.header("Content-Length") == str(len(data))
    plain = fetch(srv, loc + name, [])
    assert plain.body == data and coding(plain) is None


def test_static_ranges_not_applied_when_compressed(srv, root):
    data = (root / "files" / "page.html").read_bytes()
    r = fetch(srv, "/files/page.html", BR + [("Range", "bytes=0-9")])
    assert r.status == 200 and coding(r) == "br"
    assert unbr(r.body) == data
    r = fetch(srv, "/files/page.html", [("Range", "bytes=0-9")])
    assert r.status == 206 and r.body == data[:10]


def test_static_http10(srv, root):
    data = (root / "files" / "big.css").read_bytes()
    r = fetch(srv, "/files/big.css", version="HTTP/1.0")
    assert coding(r) == "br" and not r.has("Transfer-Encoding") and not r.has("Content-Length")
    assert unbr(r.body) == data


def test_keepalive_and_pipelining_after_compressed_responses(srv, root):
    targets = ["/files/page.html", "/page", "/files/big.css", "/chunked", "/files/tiny.css",
               "/off/page"]
    with Conn(srv.port) as c:
        c.send(b"".join(build_request("GET", t, headers=BR) for t in targets))
        got = [c.read_response() for _ in targets]
    assert [r.status for r in got] == [200] * 6
    assert unbr(got[0].body) == HTML
    assert unbr(got[1].body) == HTML
    assert unbr(got[2].body) == (root / "files" / "big.css").read_bytes()
    assert unbr(got[3].body) == HTML
    assert got[4].body == b"a{}\n"
    assert coding(got[5]) == "gzip" and zlib.decompress(got[5].body, 31) == HTML


@pytest.mark.parametrize("target,headers,twin,vary", [
    ("/pre/app.js", BR, PRE_BR, True),                  # .br first when br is taken
    ("/pre/app.js", GZ, PRE_GZ, True),                  # then gzip_static
    ("/pre/app.js", [("Accept-Encoding", "br;q=0, gzip")], PRE_GZ, True),
    ("/pre/app.js", [], None, True),                    # twins exist: Vary all the same
    ("/pre/bronly.js", BR, PRE_BR, True),
    ("/pre/bronly.js", GZ, None, True),
    ("/pre/gzonly.js", BR, PRE_GZ, True),
    ("/pre/only.js", BR, None, False),
    ("/prealways/app.js", [], PRE_BR, False),           # always: to everyone, no Vary
    ("/prealways/app.js", GZ, PRE_BR, False),
    ("/prenovary/app.js", BR, PRE_BR, False),
])
def test_brotli_static(srv, target, headers, twin, vary):
    r = fetch(srv, target, headers)
    assert r.status == 200
    assert r.header("Content-Type") == "application/javascript"
    assert (r.header("Vary") == "Accept-Encoding") == vary, r.headers
    if twin is None:
        assert coding(r) is None and r.body == PRE_PLAIN
        return
    assert coding(r) == ("br" if twin == PRE_BR else "gzip")
    assert r.body == twin                                   # the file on disk, as it is
    assert r.header("Content-Length") == str(len(twin))
    assert r.header("ETag") == '"%x-%x"' % (MTIME, len(twin))   # the twin's own


def test_brotli_static_head_and_ranges(srv):
    r = fetch(srv, "/pre/app.js", BR, method="HEAD")
    assert coding(r) == "br" and r.header("Content-Length") == str(len(PRE_BR)) and r.body == b""
    r = fetch(srv, "/pre/app.js", BR + [("Range", "bytes=0-1")])
    assert r.status == 206 and coding(r) == "br" and r.body == PRE_BR[:2]


# -- TLS -------------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_over_tls(edge, up, root):
    e = edge.create(CONF, UP=up, ROOT=root)
    e.tls = True
    e.start()
    big = (root / "files" / "big.css").read_bytes()
    with Conn(e.port) as c:
        assert c.tls
        for target, plain in (("/big.json", BIG), ("/nb/chunked", HTML), ("/close", HTML),
                              ("/files/big.css", big), ("/files/page.html", HTML)):
            r = c.request("GET", target, headers=BR)
            assert coding(r) == "br", target
            assert unbr(r.body) == plain, target
        r = c.request("GET", "/files/big.css")
        assert r.body == big and coding(r) is None


# -- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line,msg", [
    ("brotli_comp_level 12;", "between 0 and 11"),
    ("brotli_window 3k;", "brotli_window"),
    ("brotli_window 32m;", "brotli_window"),
    ("brotli maybe;", "invalid value"),
    ("brotli_min_length x;", "brotli_min_length"),
    ("brotli_static sometimes;", "invalid value"),
])
def test_config_errors(tmp_path, line, msg):
    from edge.config import ConfigError
    import edge.cycle
    p = tmp_path / "e.conf"
    p.write_text("http { %s server { listen 127.0.0.1:1; } }" % line)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        edge.cycle.load(str(p))
