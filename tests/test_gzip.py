"""Response compression (issue 15, item 4): nginx's gzip module, against a real edge, a
scripted upstream and real files.

nginx 1.22 is the oracle: `EDGE_TEST_IMPL=nginx python3 -m pytest tests/test_gzip.py`
runs the same configs and expectations under nginx.

Covered: compressed or not by type (gzip_types, `*`, text/html always, parameters),
size (gzip_min_length against Content-Length; unknown lengths always), Accept-Encoding
(nginx's parser: case, q values, q=0, identity, `*`, "gzip" inside another token),
status (200/403/404 only), HEAD, Content-Encoding already set, HTTP/1.0 and
gzip_http_version, gzip_proxied with Via, gzip_disable (regex and msie6), gzip_vary,
the head (no Content-Length, Content-Encoding, weak ETag, no Accept-Ranges, chunked or
close-delimited); bodies decompress to the original (length, chunked and
close-delimited upstreams, proxy_buffering on and off, comp levels); a streamed body
arrives compressed before the upstream has sent the rest; static files small and large
(ranges not applied), keep-alive and pipelining after compressed responses; TLS;
gzip_static (on, always, Vary, the twin's own length and ETag, ranges, HEAD); zlib's
memory released after client aborts, upstream cuts and complete responses; config
errors.
"""

import json
import os
import re
import socket
import struct
import threading
import zlib

import pytest

from support import IMPL, Conn, build_request
from support.recording import ScriptedUpstream

MTIME = 1700000000


def gunzip(data: bytes) -> bytes:
    return zlib.decompress(data, 31)


def json_body(n: int) -> bytes:
    """About n bytes of JSON, compressible as real API answers are."""
    items = []
    size = 2
    i = 0
    while size < n:
        item = json.dumps({"id": i, "name": f"item-{i}", "tags": ["a", "b", str(i % 7)],
                           "price": i * 3 % 1000 / 10})
        items.append(item)
        size += len(item) + 1
        i += 1
    return ("[" + ",".join(items) + "]").encode()[:max(n, 2)]


BIG = json_body(100 * 1024)
HTML = b"<html><body>" + b"<p>hello gzip</p>" * 200 + b"</body></html>"


def _head(status=200, ctype=b"text/html", length=None, extra=b"", reason=b"OK"):
    h = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s" % (status, reason, ctype, extra)
    if length is not None:
        h += b"Content-Length: %d\r\n" % length
    return h + b"Connection: close\r\n\r\n"


class Routes(dict):
    """ScriptedUpstream's script, looked up by the last path segment (nginx and edge
    pass the whole URI), so every location can reach every answer."""

    def get(self, path, default=None):
        return dict.get(self, path.rsplit("/", 1)[-1], default)


def _answer(head, body=b""):
    def act(sock, req_head):
        if req_head.startswith(b"HEAD "):
            sock.sendall(head)
        else:
            sock.sendall(head + body)
        return False
    return act


def _chunked(pieces, ctype=b"text/html"):
    def act(sock, req_head):
        out = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n" \
              b"Connection: close\r\n\r\n" % ctype
        for p in pieces:
            out += b"%x\r\n%s\r\n" % (len(p), p)
        sock.sendall(out + b"0\r\n\r\n")
        return False
    return act


def _close_delimited(body, ctype=b"text/html"):
    def act(sock, req_head):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: close\r\n\r\n" % ctype
                     + body)
        return False
    return act


@pytest.fixture
def up():
    u = ScriptedUpstream()
    u.script = Routes()
    s = u.script
    s["big.json"] = _answer(_head(ctype=b"application/json", length=len(BIG)), BIG)
    s["page"] = _answer(_head(length=len(HTML)), HTML)
    s["param"] = _answer(_head(ctype=b"application/json; charset=utf-8", length=len(BIG)), BIG)
    s["upper"] = _answer(_head(ctype=b"Application/JSON", length=len(BIG)), BIG)
    s["png"] = _answer(_head(ctype=b"image/png", length=len(HTML)), HTML)
    s["plain"] = _answer(_head(ctype=b"text/plain", length=len(HTML)), HTML)
    s["tiny"] = _answer(_head(length=19), b"x" * 19)
    s["twenty"] = _answer(_head(length=20), b"y" * 20)
    s["empty"] = _answer(_head(length=0), b"")
    for code, reason in ((403, b"Forbidden"), (404, b"Not Found"), (500, b"Internal Server Error"),
                         (201, b"Created"), (410, b"Gone")):
        s[f"st{code}"] = _answer(_head(code, length=len(HTML), reason=reason), HTML)
    s["encoded"] = _answer(_head(length=len(HTML), extra=b"Content-Encoding: br\r\n"), HTML)
    s["emptyenc"] = _answer(_head(length=len(HTML), extra=b"Content-Encoding: \r\n"), HTML)
    s["etag"] = _answer(_head(length=len(HTML), extra=b'ETag: "abc"\r\nAccept-Ranges: bytes\r\n'), HTML)
    s["wetag"] = _answer(_head(length=len(HTML), extra=b'ETag: W/"abc"\r\n'), HTML)
    s["chunked"] = _chunked([HTML[:1], HTML[1:5000], HTML[5000:]])
    s["tinychunked"] = _chunked([b"ab"])
    s["close"] = _close_delimited(HTML)
    s["expires-past"] = _answer(_head(length=len(HTML), extra=b"Expires: Thu, 01 Jan 1970 00:00:01 GMT\r\n"), HTML)
    s["expires-future"] = _answer(_head(length=len(HTML), extra=b"Expires: Thu, 01 Jan 2099 00:00:01 GMT\r\n"), HTML)
    s["no-cache"] = _answer(_head(length=len(HTML), extra=b"Cache-Control: max-age=0, no-cache\r\n"), HTML)
    s["private"] = _answer(_head(length=len(HTML), extra=b"Cache-Control: private\r\n"), HTML)
    s["lm"] = _answer(_head(length=len(HTML), extra=b"Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n"), HTML)
    u.start()
    yield u
    u.stop()


CONF = """
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    gzip on;
    gzip_types application/json text/css;
    gzip_vary on;
    sendfile on;

    server {
        listen 127.0.0.1:@PORT@;
        root @ROOT@;

        location / { proxy_pass http://@UP@; }
        location /nb/ { proxy_pass http://@UP@; proxy_buffering off; }
        location /off/ { gzip off; proxy_pass http://@UP@; }
        location /novary/ { gzip_vary off; proxy_pass http://@UP@; }
        location /any/ { gzip_types *; proxy_pass http://@UP@; }
        location /min0/ { gzip_min_length 0; proxy_pass http://@UP@; }
        location /min1k/ { gzip_min_length 1k; proxy_pass http://@UP@; }
        location /l9/ { gzip_comp_level 9; proxy_pass http://@UP@; }
        location /v10/ { gzip_http_version 1.0; proxy_pass http://@UP@; }
        location /pany/ { gzip_proxied any; proxy_pass http://@UP@; }
        location /pexp/ { gzip_proxied expired; proxy_pass http://@UP@; }
        location /pcache/ { gzip_proxied no-cache private; proxy_pass http://@UP@; }
        location /pauth/ { gzip_proxied auth; proxy_pass http://@UP@; }
        location /plm/ { gzip_proxied no_last_modified; proxy_pass http://@UP@; }
        location /dis/ { gzip_disable "^curl/" msie6; proxy_pass http://@UP@; }
        location /buf/ { gzip_buffers 16 8k; gzip_window 4k; gzip_hash 16k; proxy_pass http://@UP@; }
        location /files/ { }
        location /files10/ { gzip_http_version 1.0; alias @ROOT@/files/; }
        location /pre/ { gzip off; gzip_static on; }
        location /prealways/ { gzip off; gzip_static always; alias @ROOT@/pre/; }
        location /prenovary/ { gzip off; gzip_static on; gzip_vary off; alias @ROOT@/pre/; }
    }
}
"""

AE = [("Accept-Encoding", "gzip")]
PRE_PLAIN = b"console.log('plain file');\n" * 20
PRE_GZ = zlib.compress(b"console.log('precompressed twin');\n" * 20, wbits=31)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "www"
    (r / "files").mkdir(parents=True)
    for name, data in (("small.css", b"body { color: red; }\n" * 3),
                       ("page.html", HTML),
                       ("data.json", BIG),
                       ("big.css", b"".join(b".c%d { margin: %dpx; }\n" % (i, i % 40) for i in range(120000))),
                       ("tiny.css", b"a{}\n"),
                       ("img.png", HTML)):
        p = r / "files" / name
        p.write_bytes(data)
        os.utime(p, (MTIME, MTIME))
    (r / "pre").mkdir()
    for name, data in (("app.js", PRE_PLAIN), ("app.js.gz", PRE_GZ), ("only.js", PRE_PLAIN)):
        p = r / "pre" / name
        p.write_bytes(data)
        os.utime(p, (MTIME, MTIME))
    return r


@pytest.fixture
def srv(edge, up, root):
    return edge(CONF, UP=up, ROOT=root)


def fetch(srv, target, headers=AE, method="GET", version="HTTP/1.1"):
    with Conn(srv.port) as c:
        return c.request(method, target, headers=list(headers), version=version)


def compressed(r) -> bool:
    return r.header("Content-Encoding") == "gzip"


# -- what is compressed ------------------------------------------------------------------------

@pytest.mark.parametrize("target,expect,plain", [
    ("/page", True, HTML),                  # text/html always
    ("/big.json", True, BIG),               # in gzip_types
    ("/param", True, BIG),                  # "application/json; charset=utf-8"
    ("/upper", True, BIG),                  # types compare case-insensitively
    ("/png", False, HTML),                  # not listed
    ("/plain", False, HTML),
    ("/any/png", True, HTML),               # gzip_types *
    ("/off/page", False, HTML),             # gzip off in the location
    ("/tiny", False, b"x" * 19),            # Content-Length 19 < gzip_min_length 20
    ("/twenty", True, b"y" * 20),
    ("/min1k/page", True, HTML),
    ("/min1k/twenty", False, b"y" * 20),
    ("/empty", False, b""),
    ("/min0/empty", True, b""),
    ("/tinychunked", True, b"ab"),          # unknown length: compressed whatever its size
    ("/st403", True, HTML),
    ("/st404", True, HTML),
    ("/st500", False, HTML),                # only 200, 403 and 404
    ("/st201", False, HTML),
    ("/st410", False, HTML),
    ("/encoded", False, HTML),              # Content-Encoding already set
    ("/chunked", True, HTML),
    ("/close", True, HTML),
    ("/nb/big.json", True, BIG),            # proxy_buffering off
    ("/nb/chunked", True, HTML),
    ("/nb/close", True, HTML),
    ("/l9/big.json", True, BIG),
    ("/buf/big.json", True, BIG),
], ids=lambda v: v if isinstance(v, str) else ("" if not isinstance(v, bytes) else "-"))
def test_compressed_or_not(srv, target, expect, plain):
    r = fetch(srv, target)
    assert compressed(r) == expect, r
    if expect:
        assert gunzip(r.body) == plain
        assert not r.has("Content-Length")
        assert r.header("Transfer-Encoding") == "chunked"
    else:
        assert r.body == plain


def test_compression_levels_differ(srv):
    fast = fetch(srv, "/big.json")
    best = fetch(srv, "/l9/big.json")
    assert gunzip(fast.body) == gunzip(best.body) == BIG
    assert len(best.body) < len(fast.body) < len(BIG) // 3


@pytest.mark.parametrize("ae,expect", [
    ("gzip", True),
    ("GZIP", True),
    ("gzip, deflate, br", True),
    ("deflate, gzip", True),
    ("br,gzip", True),
    ("deflate,gzip", True),                 # after ',' without a space
    ("gzip;q=0.5", True),
    ("gzip; q=1", True),
    ("gzip;q=1.000", True),
    ("gzip;q=0.001", True),
    ("gzip;q=0", False),                    # q=0: not acceptable
    ("gzip;q=0.000", False),
    ("gzip;q=0.0001", False),               # more than three decimals: invalid
    ("gzip;q=1.1", False),
    ("identity", False),
    ("*", False),                           # nginx does not read * as gzip
    ("deflate", False),
    ("xgzip", False),                       # "gzip" must start a token
    ("gzipx", False),
    ("", False),
])
def test_accept_encoding(srv, ae, expect):
    r = fetch(srv, "/page", [("Accept-Encoding", ae)])
    assert compressed(r) == expect, r
    assert r.header("Vary") == "Accept-Encoding"       # gzip_vary: whatever the client takes
    assert (gunzip(r.body) if expect else r.body) == HTML


def test_no_accept_encoding(srv):
    r = fetch(srv, "/page", [])
    assert not compressed(r) and r.body == HTML
    assert r.header("Content-Length") == str(len(HTML))
    assert r.header("Vary") == "Accept-Encoding"


def test_head_gets_the_head_of_a_compressed_get(srv):
    """nginx decides HEAD as GET and sends the head alone: Content-Encoding, no length."""
    for target in ("/page", "/files/page.html"):
        r = fetch(srv, target, method="HEAD")
        assert compressed(r) and r.body == b""
        assert not r.has("Content-Length") and not r.has("Transfer-Encoding")
        assert r.header("Vary") == "Accept-Encoding"
        r = fetch(srv, target, [], method="HEAD")
        assert not compressed(r) and r.header("Content-Length") == str(len(HTML))
    # the connection goes on after a compressed HEAD
    with Conn(srv.port) as c:
        assert compressed(c.request("HEAD", "/page", headers=AE))
        assert gunzip(c.request("GET", "/page", headers=AE).body) == HTML


@pytest.mark.edge_only
def test_empty_content_encoding(srv):
    """An empty Content-Encoding counts as none (nginx's rule), and edge drops it from the
    compressed response (nginx sends it and its own: two Content-Encoding lines)."""
    r = fetch(srv, "/emptyenc")
    assert compressed(r) and gunzip(r.body) == HTML


def test_vary(srv):
    assert fetch(srv, "/novary/page").header("Vary") is None
    assert compressed(fetch(srv, "/novary/page"))
    assert fetch(srv, "/png").header("Vary") is None        # not a candidate: no Vary
    assert fetch(srv, "/st500").header("Vary") is None


def test_headers_of_a_compressed_response(srv):
    r = fetch(srv, "/etag")
    assert compressed(r)
    assert r.header("ETag") == 'W/"abc"'    # nginx 1.7.3+: made weak
    assert not r.has("Accept-Ranges")
    assert not r.has("Content-Length")
    assert r.header("Content-Type") == "text/html"
    r = fetch(srv, "/wetag")
    assert r.header("ETag") == 'W/"abc"'
    r = fetch(srv, "/etag", [])
    assert r.header("ETag") == '"abc"' and r.header("Accept-Ranges") == "bytes"


# -- HTTP versions, proxies, user agents --------------------------------------------------------

def test_http10(srv):
    r = fetch(srv, "/page", version="HTTP/1.0")
    assert not compressed(r) and r.body == HTML            # gzip_http_version 1.1
    r = fetch(srv, "/v10/page", version="HTTP/1.0")
    assert compressed(r)
    assert not r.has("Content-Length") and not r.has("Transfer-Encoding")
    assert "close" in r.connection_tokens() or r.header("Connection") is None
    assert gunzip(r.body) == HTML                          # close-delimited
    r = fetch(srv, "/v10/chunked", version="HTTP/1.0")
    assert compressed(r) and gunzip(r.body) == HTML


@pytest.mark.parametrize("target,headers,expect", [
    ("/page", [], False),                                   # gzip_proxied off
    ("/pany/page", [], True),
    ("/pexp/page", [], True),           # no Expires, no Cache-Control: nginx compresses
    ("/pexp/expires-past", [], True),
    ("/pexp/expires-future", [], False),
    ("/pcache/no-cache", [], True),
    ("/pcache/private", [], True),
    ("/pcache/expires-past", [], False),                    # Expires decides first
    ("/pcache/page", [], True),
    ("/pcache/lm", [], True),
    ("/pauth/private", [("Authorization", "Basic eDp5")], True),
    ("/pauth/private", [], False),      # Cache-Control without a listed directive: no
    ("/pauth/page", [], True),
    ("/plm/page", [], True),
    ("/plm/lm", [], False),
])
def test_gzip_proxied(srv, target, headers, expect):
    r = fetch(srv, target, AE + [("Via", "1.1 cache")] + headers)
    assert compressed(r) == expect, r
    assert (gunzip(r.body) if expect else r.body) == HTML
    if not headers:
        assert compressed(fetch(srv, target))       # without Via gzip_proxied plays no part


@pytest.mark.parametrize("agent,expect", [
    ("curl/8.0", False),
    ("CURL/8.0", False),                    # case-insensitive
    ("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)", False),
    ("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)", True),
    ("Mozilla/4.0 (compatible; MSIE 5.5; Windows 98)", False),
    ("Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.0)", True),
    ("python", True),
])
def test_gzip_disable(srv, agent, expect):
    r = fetch(srv, "/dis/page", AE + [("User-Agent", agent)])
    assert compressed(r) == expect
    assert r.header("Vary") == "Accept-Encoding"


# -- streaming ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["/nb/", "/"])
def test_streamed_body_arrives_before_the_upstream_ends(edge, root, prefix):
    """The upstream sends a first part and holds the rest until the client has decoded
    compressed bytes of it: nothing waits for the whole body. With proxy_buffering on,
    nginx (and edge) flush deflate's output as its blocks fill, so the first part is
    large and incompressible there; without buffering every read is flushed."""
    u = ScriptedUpstream()
    seen = threading.Event()
    first = os.urandom(200000) if prefix == "/" else b"<p>first part</p>" * 20
    # with buffering, deflate keeps its last block until more comes (Z_NO_FLUSH, as
    # nginx); without, every read is flushed (Z_SYNC_FLUSH) and all of it arrives
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
            c.send(build_request("GET", prefix + "stream", headers=AE))
            version, status, reason, headers, raw = c.read_head()
            assert status == 200
            assert ("Content-Encoding", "gzip") in headers
            d = zlib.decompressobj(31)
            got = b""
            # read chunks until the first part has decoded (bounded: the body is finite)
            for _ in range(10000):
                line = c._read_line()
                size = int(line, 16)
                assert size > 0, "the body ended before the upstream sent the rest"
                got += d.decompress(c._read_exact(size))
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
                got += d.decompress(c._read_exact(size))
                c._read_exact(2)
            got += d.flush()
            assert d.eof
            assert got == first + rest
    finally:
        seen.set()
        u.stop()


@pytest.mark.edge_only
@pytest.mark.timeout(120)
def test_zlib_memory_released_however_the_response_ends(edge, root):
    """Each compressed response holds about 270 KiB of zlib state (a chunked body has no
    length to size it down by). Hundreds of responses that end by a client abort, by the
    upstream cutting its body, or normally must leave the worker's memory where it was:
    deflateEnd runs on every path."""
    from support.recording import vmrss_kib
    u = ScriptedUpstream()
    piece = os.urandom(4096).hex().encode()

    def hang(sock, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.settimeout(10)
        try:
            while sock.recv(4096):      # until edge closes this connection
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
    try:
        e = edge(CONF, UP=u, ROOT=root)
        worker = e.wait_workers(1)[0]

        def round_(n):
            for i in range(n):
                kind = ("hang", "cut", "whole")[i % 3]
                with Conn(e.port) as c:
                    c.send(build_request("GET", "/nb/" + kind, headers=AE))
                    head = c.read_head()
                    assert ("Content-Encoding", "gzip") in head[3]
                    if kind == "hang":
                        # compressed bytes of the first piece, then the client goes away
                        assert int(c._read_line(), 16) > 0
                        # a reset: edge sees the abort at once (the FIN of a plain close
                        # would end it too: proxy_ignore_client_abort is off)
                        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    elif kind == "cut":
                        while c._fill():
                            pass        # edge closes: the body could not be finished
                    else:
                        body = bytearray()      # the rest, then a clean end
                        while True:
                            size = int(c._read_line(), 16)
                            if size == 0:
                                break
                            body += c._read_exact(size)
                            c._read_exact(2)
                        assert gunzip(bytes(body)) == piece * 4
        round_(60)          # warm up: pools and allocator arenas at their working size
        before = vmrss_kib(worker)
        round_(300)
        growth = vmrss_kib(worker) - before
        # a leaked stream per response would be 300 x 270 KiB = 79 MiB
        assert growth < 16 * 1024, f"worker RSS grew {growth} KiB over 300 compressed responses"
    finally:
        u.stop()


# -- static files ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expect", [
    ("small.css", True),
    ("page.html", True),
    ("data.json", True),
    ("big.css", True),                      # 2.6 MB: read and compressed piece by piece
    ("tiny.css", False),                    # 4 bytes < gzip_min_length
    ("img.png", False),
])
def test_static_files(srv, root, name, expect):
    data = (root / "files" / name).read_bytes()
    r = fetch(srv, "/files/" + name)
    assert r.status == 200
    assert compressed(r) == expect
    if expect:
        assert gunzip(r.body) == data
        assert not r.has("Content-Length") and not r.has("Accept-Ranges")
        assert r.header("ETag") == 'W/"%x-%x"' % (MTIME, len(data))
        assert r.header("Vary") == "Accept-Encoding"
        assert r.header("Last-Modified") == "Tue, 14 Nov 2023 22:13:20 GMT"
    else:
        assert r.body == data
        assert r.header("Content-Length") == str(len(data))
    plain = fetch(srv, "/files/" + name, [])
    assert plain.body == data and not compressed(plain)


def test_static_ranges_not_applied_when_compressed(srv, root):
    data = (root / "files" / "page.html").read_bytes()
    r = fetch(srv, "/files/page.html", AE + [("Range", "bytes=0-9")])
    assert r.status == 200 and compressed(r)
    assert gunzip(r.body) == data
    r = fetch(srv, "/files/page.html", [("Range", "bytes=0-9")])
    assert r.status == 206 and r.body == data[:10]


def test_static_conditionals(srv, root):
    etag = fetch(srv, "/files/page.html", []).header("ETag")
    r = fetch(srv, "/files/page.html", AE + [("If-None-Match", etag)])
    assert r.status == 304


def test_static_http10(srv, root):
    data = (root / "files" / "big.css").read_bytes()
    r = fetch(srv, "/files10/big.css", version="HTTP/1.0")
    assert compressed(r) and not r.has("Transfer-Encoding") and not r.has("Content-Length")
    assert gunzip(r.body) == data


@pytest.mark.parametrize("target,headers,twin,vary", [
    ("/pre/app.js", AE, True, True),
    ("/pre/app.js", [], False, True),           # a twin exists: Vary even when not taken
    ("/pre/app.js", [("Accept-Encoding", "gzip;q=0")], False, True),
    ("/pre/only.js", AE, False, False),         # no twin: the file, no Vary (gzip off)
    ("/prealways/app.js", [], True, False),     # always: the twin to everyone, no Vary
    ("/prealways/app.js", AE, True, False),
    ("/prenovary/app.js", AE, True, False),
])
def test_gzip_static(srv, target, headers, twin, vary):
    r = fetch(srv, target, headers)
    assert r.status == 200
    assert r.header("Content-Type") == "application/javascript"
    assert (r.header("Vary") == "Accept-Encoding") == vary
    if twin:
        assert compressed(r)
        assert r.body == PRE_GZ                 # the file on disk, as it is
        assert r.header("Content-Length") == str(len(PRE_GZ))
        assert r.header("ETag") == '"%x-%x"' % (MTIME, len(PRE_GZ))     # the twin's own
    else:
        assert not compressed(r) and r.body == PRE_PLAIN


@pytest.mark.edge_only
def test_gzip_static_ranges(srv):
    """Ranges apply to the twin, as nginx does since 1.23.4 ("Gzip static: ranges
    support"); the 1.22 oracle answers 200 with the whole twin."""
    r = fetch(srv, "/pre/app.js", AE + [("Range", "bytes=0-1")])
    assert r.status == 206 and compressed(r) and r.body == PRE_GZ[:2], r.headers


def test_gzip_static_head(srv):
    r = fetch(srv, "/pre/app.js", AE, method="HEAD")
    assert compressed(r) and r.header("Content-Length") == str(len(PRE_GZ)) and r.body == b""
    assert fetch(srv, "/pre/app.js", AE, method="POST").status == 405


def test_keepalive_and_pipelining_after_compressed_responses(srv, root):
    targets = ["/files/page.html", "/page", "/files/big.css", "/chunked", "/files/tiny.css"]
    with Conn(srv.port) as c:
        c.send(b"".join(build_request("GET", t, headers=AE) for t in targets))
        got = [c.read_response() for _ in targets]
    assert [r.status for r in got] == [200] * 5
    assert gunzip(got[0].body) == HTML
    assert gunzip(got[1].body) == HTML
    assert gunzip(got[2].body) == (root / "files" / "big.css").read_bytes()
    assert gunzip(got[3].body) == HTML
    assert got[4].body == b"a{}\n"


def test_slow_reader_of_a_large_compressed_file(srv, root):
    """A client that reads slowly still gets the whole file, compressed piece by piece."""
    data = (root / "files" / "big.css").read_bytes()
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    s.sendall(build_request("GET", "/files/big.css", headers=AE + [("Connection", "close")]))
    s.settimeout(20)
    raw = bytearray()
    while True:
        b = s.recv(8192)
        if not b:
            break
        raw += b
    s.close()
    head, body = bytes(raw).split(b"\r\n\r\n", 1)
    assert b"Content-Encoding: gzip" in head
    out = bytearray()
    while True:
        line, body = body.split(b"\r\n", 1)
        n = int(line, 16)
        if n == 0:
            break
        out += body[:n]
        body = body[n + 2:]
    assert gunzip(bytes(out)) == data


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
            r = c.request("GET", target, headers=AE)
            assert compressed(r), target
            assert gunzip(r.body) == plain, target
        r = c.request("GET", "/files/big.css")
        assert r.body == big and not compressed(r)


# -- config ------------------------------------------------------------------------------------

@pytest.mark.edge_only
@pytest.mark.parametrize("line,msg", [
    ("gzip_comp_level 10;", "between 1 and 9"),
    ("gzip_proxied sometimes;", 'invalid value "sometimes"'),
    ("gzip_http_version 2.0;", "invalid value"),
    ("gzip_window 3k;", "gzip_window"),
    ("gzip_disable \"(\";", "gzip_disable"),
    ("gzip maybe;", "invalid value"),
])
def test_config_errors(tmp_path, line, msg):
    from edge.config import ConfigError
    import edge.cycle
    p = tmp_path / "e.conf"
    p.write_text("http { %s server { listen 127.0.0.1:1; } }" % line)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        edge.cycle.load(str(p))
