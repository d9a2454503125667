"""Static files beside proxy routes (issue 15, items 2 and 3), against a real edge and
real files in a temporary directory.

nginx 1.22 is the oracle: `EDGE_TEST_IMPL=nginx python3 -m pytest tests/test_static.py`
runs the same configs and expectations under nginx. Tests of edge's deliberate
differences are marked `edge_only`, with the reason next to them.

Covered: `include /etc/nginx/mime.types` (Debian's file as it is), types by extension
(lowercased), default_type, charset / charset_types; HEAD; index, the directory
redirect, 403 for a directory without index, 404, 405; try_files falling through to a
named proxy location (a real upstream), to a URI and to =404; single, suffix, open,
multiple (multipart/byteranges) and unsatisfiable ranges, If-Range by ETag and by
date; If-Modified-Since (exact, before, off), If-None-Match, If-Match,
If-Unmodified-Since, with etag on and off; expires (time, negative, 0, epoch, max,
modified); path traversal (`..`, encoded, double encoded, NUL, alias with and without a
trailing slash, regex alias); a 20 MiB file to a slow reader over keep-alive followed by
a pipelined request, with bounded worker memory, over plain TCP (sendfile on and off)
and TLS; the access log's status and byte counts; config errors.
"""

import email.utils
import os
import re
import socket
import time

import pytest

from support import IMPL, Conn, build_request, get
from support.recording import RssSampler

MTIME = 1700000000                      # Tue, 14 Nov 2023 22:13:20 GMT
MTIME_HTTP = "Tue, 14 Nov 2023 22:13:20 GMT"
A_TXT = b"0123456789abcdefghijklmnopqrstuvwxyz\n"   # 37 bytes
A_ETAG = '"6553f100-25"'
MiB = 1 << 20

CONF = """
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    log_format st '$request_method $uri $status $body_bytes_sent';

    server {
        listen 127.0.0.1:@PORT@;
        root @ROOT@/www;
        access_log @ROOT@/access.log st;

        location / { }
        location /cs/ { charset utf-8; }
        location /noetag/ { etag off; }
        location /before/ { if_modified_since before; }
        location /imsoff/ { if_modified_since off; }
        location /exp/time/ { expires 1h; }
        location /exp/neg/ { expires -1; }
        location /exp/zero/ { expires 0; }
        location /exp/epoch/ { expires epoch; }
        location /exp/max/ { expires max; }
        location /exp/mod/ { expires modified 2h; }
        location /nosf/ { sendfile off; }
        location /quiet/ { log_not_found off; }
        location /types/ {
            types { text/x-custom foo FOO2; }
            types { image/x-two two; }
            default_type text/x-default;
        }

        location /app/ { try_files $uri $uri/ @backend; }
        location @backend { proxy_pass http://@UP@; }
        location /strict/ { try_files $uri =404; }
        location /spa/ { try_files $uri /spa/index.html; }
        location /fall/ { try_files $uri /api/fallback?from=fall; }

        location /img/ { alias @ROOT@/data/images/; }
        location /pic { alias @ROOT@/data/images; }
        location ~ ^/re/(.+\\.txt)$ { alias @ROOT@/data/images/$1; }
        location /api/ { proxy_pass http://@UP@; }
        location /ret/ { charset utf-8; default_type text/plain; return 200 "text"; }
        location /retjson/ { charset utf-8; default_type application/json; return 200 "{}"; }
    }
}
"""


def _write(path, data, mtime=MTIME):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "files"
    w = r / "www"
    _write(w / "index.html", b"<h1>home</h1>\n")
    _write(w / "a.txt", A_TXT)
    _write(w / "style.CSS", b"body{}\n")
    _write(w / "app.js", b"x=1;\n")
    _write(w / "noext", b"raw\n")
    _write(w / "page.unknownext", b"?\n")
    _write(w / "dir" / "index.html", b"dir index\n")
    (w / "empty").mkdir()
    _write(w / "%2e%2e" / "x.txt", b"literal percent name\n")
    for d in ("cs", "quiet", "noetag", "before", "imsoff", "exp/time", "exp/neg", "exp/zero",
              "exp/epoch", "exp/max", "exp/mod"):
        _write(w / d / "a.txt", A_TXT)
    for name in ("a.foo", "a.FOO", "b.foo2", "c.two", "d.html"):
        _write(w / "types" / name, b"t\n")
    _write(w / "cs" / "page.html", b"<p>x</p>\n")
    _write(w / "cs" / "img.png", b"\x89PNG\r\n")
    _write(w / "cs" / "data.json", b"{}\n")
    _write(w / "app" / "here.txt", b"from disk\n")
    _write(w / "app" / "sub" / "index.html", b"sub index\n")
    _write(w / "spa" / "index.html", b"spa shell\n")
    _write(w / "strict" / "a.txt", A_TXT)
    _write(r / "data" / "images" / "cat.txt", b"meow\n")
    _write(r / "data" / "secret.txt", b"SECRET outside the alias\n")
    _write(r / "secret.txt", b"SECRET outside the root\n")
    _write(r / "data" / "images.." / "sibling.txt", b"SECRET sibling of the alias\n")
    return r


@pytest.fixture
def srv(edge, root, upstream):
    return edge(CONF, ROOT=root, UP=upstream)


def _get(srv, target, method="GET", headers=()):
    with Conn(srv.port) as c:
        return c.request(method, target, headers=list(headers))


# -- types, charset, HEAD ------------------------------------------------------------------

@pytest.mark.parametrize("target,ctype", [
    ("/index.html", "text/html"),
    ("/a.txt", "text/plain"),
    ("/style.CSS", "text/css"),                 # the extension is lowercased, as nginx
    ("/app.js", "application/javascript"),
    ("/noext", "application/octet-stream"),     # default_type
    ("/page.unknownext", "application/octet-stream"),
    ("/cs/page.html", "text/html; charset=utf-8"),
    ("/cs/a.txt", "text/plain; charset=utf-8"),
    ("/cs/img.png", "image/png"),               # not in charset_types
    ("/cs/data.json", "application/json"),
    ("/types/a.foo", "text/x-custom"),        # a location's types replace the inherited
    ("/types/a.FOO", "text/x-custom"),
    ("/types/b.foo2", "text/x-custom"),       # extensions in the block are lowercased too
    ("/types/c.two", "image/x-two"),          # two blocks in one context add up
    ("/types/d.html", "text/x-default"),
])
def test_content_type_from_debian_mime_types(srv, target, ctype):
    r = _get(srv, target)
    assert r.status == 200, r
    assert r.header("Content-Type") == ctype


def test_charset_on_return_text(srv):
    assert _get(srv, "/ret/").header("Content-Type") == "text/plain; charset=utf-8"
    assert _get(srv, "/retjson/").header("Content-Type") == "application/json"


def test_file_headers_and_head(srv):
    r = _get(srv, "/a.txt")
    assert r.status == 200
    assert r.body == A_TXT
    assert r.header("Content-Length") == "37"
    assert r.header("Last-Modified") == MTIME_HTTP
    assert r.header("ETag") == A_ETAG
    assert r.header("Accept-Ranges") == "bytes"
    assert not r.has("Expires") and not r.has("Cache-Control")
    h = _get(srv, "/a.txt", "HEAD")
    assert h.status == 200 and h.body == b""
    for name in ("Content-Type", "Content-Length", "Last-Modified", "ETag", "Accept-Ranges"):
        assert h.header(name) == r.header(name), name


# -- index, directories, errors, methods -------------------------------------------------------

def test_index_and_directory_redirect(srv):
    assert _get(srv, "/").body == b"<h1>home</h1>\n"
    assert _get(srv, "/dir/").body == b"dir index\n"
    r = _get(srv, "/dir")
    assert r.status == 301
    assert r.header("Location") == f"http://localhost:{srv.port}/dir/"
    r = _get(srv, "/dir?x=1&y")
    assert r.status == 301
    assert r.header("Location") == f"http://localhost:{srv.port}/dir/?x=1&y"
    assert _get(srv, "/empty/").status == 403          # autoindex off
    assert _get(srv, "/missing/").status == 404
    assert _get(srv, "/missing.txt").status == 404
    assert _get(srv, "/a.txt/").status == 404
    assert _get(srv, "/a.txt/x").status == 404


def test_methods(srv):
    assert _get(srv, "/a.txt", "POST").status == 405
    assert _get(srv, "/a.txt", "DELETE").status == 405
    assert _get(srv, "/a.txt", "PUT").status == 405
    assert _get(srv, "/nothing.txt", "POST").status == 404     # nginx: the file first
    assert _get(srv, "/dir/", "DELETE").status == 405


def test_keepalive_across_static_answers(srv):
    """Every kind of answer keeps the connection, and a pipelined batch is answered in
    order."""
    targets = ["/a.txt", "/dir", "/empty/", "/missing", "/", "/a.txt"]
    with Conn(srv.port) as c:
        c.send(b"".join(build_request("GET", t) for t in targets)
               + build_request("HEAD", "/a.txt"))
        got = [c.read_response().status for _ in targets]
        head = c.read_response("HEAD")
        assert got == [200, 301, 403, 404, 200, 200]
        assert head.status == 200 and head.body == b""
        assert c.request("GET", "/a.txt", headers=[("Range", "bytes=1-2")]).body == b"12"


# -- try_files ------------------------------------------------------------------------------

def test_try_files_to_named_proxy_location(srv, upstream):
    r = _get(srv, "/app/here.txt")
    assert r.status == 200 and r.body == b"from disk\n"
    r = _get(srv, "/app/sub")       # $uri/ is a directory: redirected to the name with "/"
    assert r.status == 301
    assert r.header("Location") == f"http://localhost:{srv.port}/app/sub/"
    r = _get(srv, "/app/sub/")                      # $uri/ then the index
    assert r.status == 200 and r.body == b"sub index\n"
    r = _get(srv, "/app/nothing?q=1")
    assert r.status == 200
    echo = r.json()
    assert echo["target"] == "/app/nothing?q=1"     # the request as it came
    assert echo["method"] == "GET"


def test_try_files_uri_to_proxy_location(srv, upstream):
    """The fallback URI is searched again; the proxy sends it, with its own arguments."""
    r = _get(srv, "/fall/nothing?orig=1")
    assert r.status == 200
    assert r.json()["target"] == "/api/fallback?from=fall"


def test_try_files_code_and_uri(srv):
    assert _get(srv, "/strict/a.txt").body == A_TXT
    assert _get(srv, "/strict/nothing").status == 404
    r = _get(srv, "/spa/deep/link")
    assert r.status == 200 and r.body == b"spa shell\n"
    assert r.header("Content-Type") == "text/html"


# -- ranges -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,body,crange", [
    ("bytes=0-9", A_TXT[0:10], "bytes 0-9/37"),
    ("bytes=-5", A_TXT[-5:], "bytes 32-36/37"),
    ("bytes=30-", A_TXT[30:], "bytes 30-36/37"),
    ("bytes=30-1000", A_TXT[30:], "bytes 30-36/37"),
    ("bytes=-100", A_TXT, "bytes 0-36/37"),
    ("bytes=5-5", A_TXT[5:6], "bytes 5-5/37"),
    ("bytes=0-3,100-200", A_TXT[0:4], "bytes 0-3/37"),
])
def test_single_range(srv, spec, body, crange):
    r = _get(srv, "/a.txt", headers=[("Range", spec)])
    assert r.status == 206, r
    assert r.body == body
    assert r.header("Content-Range") == crange
    assert r.header("Content-Length") == str(len(body))
    assert r.header("Content-Type") == "text/plain"
    assert not r.has("Accept-Ranges")


def _multipart(r):
    ctype = r.header("Content-Type")
    m = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", ctype)
    assert m, ctype
    boundary = m.group(1).encode()
    assert int(r.header("Content-Length")) == len(r.body)
    parts = r.body.split(b"\r\n--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n", r.body
    out = []
    for p in parts[1:-1]:
        head, _, data = p.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b""
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        out.append((fields[b"Content-Type"], fields[b"Content-Range"], data))
    return out


def test_multiple_ranges_multipart(srv):
    r = _get(srv, "/a.txt", headers=[("Range", "bytes=0-1,5-6,-3")])
    assert r.status == 206
    assert _multipart(r) == [
        (b"text/plain", b"bytes 0-1/37", b"01"),
        (b"text/plain", b"bytes 5-6/37", b"56"),
        (b"text/plain", b"bytes 34-36/37", b"yz\n"),
    ]
    r = _get(srv, "/cs/a.txt", headers=[("Range", "bytes=0-0,2-2")])
    assert [p[0] for p in _multipart(r)] == [b"text/plain; charset=utf-8"] * 2


@pytest.mark.parametrize("spec", ["bytes=37-", "bytes=100-200", "bytes=x", "bytes=5-1", "bytes=-0"])
def test_unsatisfiable_range(srv, spec):
    with Conn(srv.port) as c:
        r = c.request("GET", "/a.txt", headers=[("Range", spec)])
        assert r.status == 416, r
        assert r.header("Content-Range") == "bytes */37"
        assert c.request("GET", "/a.txt").status == 200     # the connection goes on


def test_range_ignored_when_not_bytes_or_overlapping(srv):
    assert _get(srv, "/a.txt", headers=[("Range", "items=0-1")]).status == 200
    r = _get(srv, "/a.txt", headers=[("Range", "bytes=0-30,0-30")])   # more than the file
    assert r.status == 200 and r.body == A_TXT


@pytest.mark.parametrize("if_range,status", [
    (A_ETAG, 206),
    ('"other"', 200),
    (MTIME_HTTP, 206),
    ("Tue, 14 Nov 2023 22:13:19 GMT", 200),
])
def test_if_range(srv, if_range, status):
    r = _get(srv, "/a.txt", headers=[("Range", "bytes=0-1"), ("If-Range", if_range)])
    assert r.status == status
    assert r.body == (b"01" if status == 206 else A_TXT)


def test_range_on_head(srv):
    r = _get(srv, "/a.txt", "HEAD", headers=[("Range", "bytes=0-1")])
    assert r.status == 206 and r.body == b""
    assert r.header("Content-Range") == "bytes 0-1/37"


# -- conditional requests -----------------------------------------------------------------------

LATER = "Wed, 15 Nov 2023 00:00:00 GMT"
EARLIER = "Mon, 13 Nov 2023 00:00:00 GMT"


@pytest.mark.parametrize("path,headers,status", [
    ("/a.txt", [("If-Modified-Since", MTIME_HTTP)], 304),
    ("/a.txt", [("If-Modified-Since", "Tuesday, 14-Nov-23 22:13:20 GMT")], 304),   # RFC 850
    ("/a.txt", [("If-Modified-Since", "Tue Nov 14 22:13:20 2023")], 304),          # asctime
    ("/a.txt", [("If-Modified-Since", LATER)], 200),          # exact: only the same time
    ("/a.txt", [("If-Modified-Since", EARLIER)], 200),
    ("/a.txt", [("If-Modified-Since", "garbage")], 200),
    ("/before/a.txt", [("If-Modified-Since", LATER)], 304),
    ("/before/a.txt", [("If-Modified-Since", EARLIER)], 200),
    ("/imsoff/a.txt", [("If-Modified-Since", MTIME_HTTP)], 200),
    ("/a.txt", [("If-None-Match", A_ETAG)], 304),
    ("/a.txt", [("If-None-Match", f'"x", W/{A_ETAG}')], 304),
    ("/a.txt", [("If-None-Match", "*")], 304),
    ("/a.txt", [("If-None-Match", '"x"')], 200),
    ("/a.txt", [("If-None-Match", A_ETAG), ("If-Modified-Since", EARLIER)], 200),
    ("/a.txt", [("If-None-Match", A_ETAG), ("If-Modified-Since", MTIME_HTTP)], 304),
    ("/noetag/a.txt", [("If-None-Match", A_ETAG)], 200),
    ("/noetag/a.txt", [("If-None-Match", "*")], 304),
    ("/noetag/a.txt", [("If-Match", "*")], 200),
    ("/noetag/a.txt", [("If-Match", A_ETAG)], 412),
    ("/noetag/a.txt", [("If-Modified-Since", MTIME_HTTP)], 304),
    ("/a.txt", [("If-Match", A_ETAG)], 200),
    ("/a.txt", [("If-Match", '"x"')], 412),
    ("/a.txt", [("If-Match", "*")], 200),
    ("/a.txt", [("If-Unmodified-Since", LATER)], 200),
    ("/a.txt", [("If-Unmodified-Since", EARLIER)], 412),
])
def test_conditional_requests(srv, path, headers, status):
    r = _get(srv, path, headers=headers)
    assert r.status == status, r
    if status == 304:
        assert r.body == b""
        assert r.header("Last-Modified") == MTIME_HTTP
        assert not r.has("Content-Length")
        if not path.startswith("/noetag"):
            assert r.header("ETag") == A_ETAG
    if path.startswith("/noetag"):
        assert not r.has("ETag")


# -- expires --------------------------------------------------------------------------------------

def _http_time(text):
    return email.utils.parsedate_to_datetime(text).timestamp()


@pytest.mark.parametrize("path,cc,offset", [
    ("/exp/time/a.txt", "max-age=3600", 3600),
    ("/exp/neg/a.txt", "no-cache", -1),
    ("/exp/zero/a.txt", "max-age=0", 0),
    ("/exp/epoch/a.txt", "no-cache", None),
    ("/exp/max/a.txt", "max-age=315360000", None),
])
def test_expires(srv, path, cc, offset):
    r = _get(srv, path)
    assert r.status == 200
    assert r.header("Cache-Control") == cc
    expires = r.header("Expires")
    if path.endswith("epoch/a.txt"):
        assert expires == "Thu, 01 Jan 1970 00:00:01 GMT"
    elif path.startswith("/exp/max"):
        assert expires == "Thu, 31 Dec 2037 23:55:55 GMT"
    else:
        assert _http_time(expires) - _http_time(r.header("Date")) == offset
    # a 304 carries them too
    r = _get(srv, path, headers=[("If-None-Match", A_ETAG)])
    assert r.status == 304 and r.header("Cache-Control") == cc


def test_expires_modified(srv):
    r = _get(srv, "/exp/mod/a.txt")
    assert _http_time(r.header("Expires")) == MTIME + 7200
    assert r.header("Cache-Control") == "no-cache"      # that moment is long past


# -- path safety ----------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/dir/..%2f..%2fsecret.txt",
    "/dir/%2e%2e/%2e%2e/secret.txt",
    "/img/../../secret.txt",
    "/img/..%2f..%2fsecret.txt",
    "/img/%2e%2e/secret.txt",
    "/a.txt%00.html",
])
def test_traversal_refused(srv, target):
    r = _get(srv, target)
    assert r.status in (400, 404), r
    assert b"SECRET" not in r.body


def test_double_encoding_is_a_file_name(srv):
    """%252e%252e is the name "%2e%2e" on disk, never a parent directory."""
    r = _get(srv, "/%252e%252e/x.txt")
    assert r.status == 200 and r.body == b"literal percent name\n"
    r = _get(srv, "/%252e%252e/%252e%252e/secret.txt")
    assert r.status == 404 and b"SECRET" not in r.body


def test_alias(srv):
    assert _get(srv, "/img/cat.txt").body == b"meow\n"
    assert _get(srv, "/pic/cat.txt").body == b"meow\n"
    assert _get(srv, "/re/cat.txt").body == b"meow\n"
    assert _get(srv, "/img/").status == 403
    assert _get(srv, "/pic").status == 301


@pytest.mark.edge_only   # nginx maps /pic../x to <alias>../x, a sibling of the alias
def test_alias_without_trailing_slash_pitfall(srv):
    for target in ("/pic../sibling.txt", "/pic../secret.txt", "/pic..", "/pic%2e%2e/sibling.txt"):
        r = _get(srv, target)
        assert r.status == 404, (target, r)
        assert b"SECRET" not in r.body


@pytest.mark.edge_only   # nginx: /re/../secret.txt is normalized first; edge too, but a
def test_regex_alias_cannot_climb(srv):  # capture may never hold a ".." segment either
    for target in ("/re/../secret.txt", "/re/..%2fsecret.txt", "/re/x/../../secret.txt"):
        r = _get(srv, target)
        assert r.status in (400, 404), (target, r)
        assert b"SECRET" not in r.body


# -- a large file, a slow reader, keep-alive and pipelining -------------------------------------------

def _read_body_slowly(c, n):
    got = bytearray()
    while len(got) < n:
        chunk = c.buf[: min(len(c.buf), n - len(got))]
        if chunk:
            got += chunk
            del c.buf[: len(chunk)]
            continue
        assert c._fill(), "connection closed in the middle of the file"
    return bytes(got)


def _big_file_test(srv, root, path, tls=False):
    data = os.urandom(64 * 1024) * 320      # 20 MiB
    _write(root / "www" / path.lstrip("/"), data)
    worker = srv.wait_workers(1)[0] if IMPL == "edge" else None
    with Conn(srv.port) as c:
        assert c.request("GET", "/a.txt").status == 200     # warm: baseline buffers exist
    with Conn(srv.port, timeout=60) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.send(build_request("GET", path) + build_request("GET", "/a.txt"))
        sampler = RssSampler(worker) if worker else None
        if sampler:
            sampler.__enter__()
        try:
            time.sleep(0.3)     # the socket fills up: the worker must wait for writability
            head = c.read_head()
            assert head[1] == 200, head
            assert dict((k.lower(), v) for k, v in head[3])["content-length"] == str(len(data))
            body = _read_body_slowly(c, len(data))
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
        assert body == data
        second = c.read_response()
        assert second.status == 200 and second.body == A_TXT
        assert c.request("GET", "/a.txt", headers=[("Range", "bytes=3-4")]).body == b"34"
    if sampler:
        assert sampler.growth_kib < 8 * 1024, f"worker RSS grew {sampler.growth_kib} KiB for a 20 MiB file"


@pytest.mark.timeout(90)
def test_large_file_slow_reader_pipelined(srv, root):
    _big_file_test(srv, root, "/big.bin")


@pytest.mark.timeout(90)
def test_large_file_sendfile_off(srv, root):
    _big_file_test(srv, root, "/nosf/big.bin")


@pytest.mark.timeout(90)
def test_large_file_over_tls(edge, root, upstream):
    e = edge.create(CONF, ROOT=root, UP=upstream)
    e.tls = True
    e.start()
    _big_file_test(e, root, "/big.bin", tls=True)
    _big_file_test(e, root, "/nosf/big2.bin", tls=True)


def test_large_range_of_large_file(srv, root):
    data = os.urandom(1 << 16) * 48         # 3 MiB
    _write(root / "www" / "mid.bin", data)
    r = _get(srv, "/mid.bin", headers=[("Range", f"bytes=1000-{2 * MiB},-10")])
    parts = _multipart(r)
    assert parts[0][2] == data[1000:2 * MiB + 1]
    assert parts[1][2] == data[-10:]


# -- logs ------------------------------------------------------------------------------------------

def test_log_not_found(srv):
    """A missing file is logged (open() failed, with its path) unless `log_not_found
    off`; either way the answer is 404."""
    assert _get(srv, "/absent-logged.txt").status == 404
    assert _get(srv, "/quiet/absent-quiet.txt").status == 404
    assert _get(srv, "/quiet/a.txt/under-a-file").status == 404          # ENOTDIR too
    deadline = time.monotonic() + 5
    while "absent-logged.txt" not in srv.error_log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(r'open\(\) "[^"]*/www/absent-logged\.txt" failed \(2: No such file or directory\)',
                     srv.error_log), srv.error_log
    assert "absent-quiet" not in srv.error_log and "under-a-file" not in srv.error_log


def test_access_log_counts_static_responses(srv, root):
    _get(srv, "/a.txt")
    _get(srv, "/a.txt", headers=[("Range", "bytes=0-4")])
    _get(srv, "/missing")
    _get(srv, "/a.txt", "HEAD")
    log = root / "access.log"
    deadline = time.monotonic() + 5
    want = ["GET /a.txt 200 37", "GET /a.txt 206 5", "GET /missing 404 ", "HEAD /a.txt 200 0"]
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 4:
            break
        time.sleep(0.05)
    assert lines[0] == want[0] and lines[1] == want[1] and lines[3] == want[3]
    assert lines[2].startswith(want[2])


# -- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("snippet,message", [
    ("autoindex on;", "autoindex"),
    ("source_charset koi8-r;", "source_charset"),
    ("location /t/ { try_files $uri @nowhere; }", "@nowhere"),
    ("location /t/ { alias /tmp; proxy_pass http://127.0.0.1:9; }", "alias"),
    ("location /t/ { expires @15h; }", "expires"),
])
@pytest.mark.edge_only   # edge's refusals (nginx would list directories or convert charsets)
def test_config_refusals(edge, snippet, message):
    e = edge.create("http { server { listen 127.0.0.1:@PORT@; root /tmp; %s } }" % snippet)
    with pytest.raises(Exception):
        e.start()
    assert message in e.output()


# -- charset and expires on proxied and `return` responses (nginx's filters) ----------------

PROXIED = """
http {
    server {
        listen 127.0.0.1:@PORT2@;
        default_type text/plain;
        location /cc {
            add_header Cache-Control "no-store";
            add_header Expires "Thu, 01 Jan 2004 00:00:00 GMT";
            add_header Last-Modified "Tue, 14 Nov 2023 22:13:20 GMT";
            return 200 "cc";
        }
        location /cc404 { add_header Cache-Control "no-store" always; return 404 "nf"; }
        location /plain { return 200 "p"; }
        location /html { default_type text/html; return 200 "h"; }
        location /koi { default_type "text/html; charset=koi8-r"; return 200 "k"; }
        location /param { default_type "text/plain; format=flowed"; return 200 "f"; }
        location /json { default_type application/json; return 200 "{}"; }
        location /moved { return 302 /elsewhere; }
    }
    server {
        listen 127.0.0.1:@PORT@;
        location /cs/ { charset utf-8; proxy_pass http://127.0.0.1:@PORT2@/; }
        location /csall/ { charset utf-8; charset_types *; proxy_pass http://127.0.0.1:@PORT2@/; }
        location /exp/ { expires 1h; proxy_pass http://127.0.0.1:@PORT2@/; }
        location /expmod/ { expires modified 1h; proxy_pass http://127.0.0.1:@PORT2@/; }
        location /expepoch/ { expires epoch; proxy_pass http://127.0.0.1:@PORT2@/; }
        location /plainproxy/ { proxy_pass http://127.0.0.1:@PORT2@/; }
        location /ret/ { expires max; return 200 "r"; }
        location /ret404/ { expires max; return 404; }
        location /retredir/ { expires 30s; return 301 http://example.com/; }
    }
}
"""


@pytest.fixture
def proxied(edge):
    return edge(PROXIED)


@pytest.mark.parametrize("target,ctype", [
    ("/cs/plain", "text/plain; charset=utf-8"),
    ("/cs/html", "text/html; charset=utf-8"),
    ("/cs/koi", "text/html; charset=koi8-r"),           # a charset of its own is kept
    ("/cs/param", "text/plain; format=flowed"),         # the whole value is not in the types
    ("/cs/json", "application/json"),                   # not in charset_types
    ("/csall/json", "application/json; charset=utf-8"),
    ("/csall/param", "text/plain; format=flowed; charset=utf-8"),
    ("/plainproxy/plain", "text/plain"),
])
def test_charset_on_proxied_responses(proxied, target, ctype):
    r = _get(proxied, target)
    assert r.status == 200
    assert r.header("Content-Type") == ctype


def test_charset_not_on_proxied_redirects(proxied):
    r = _get(proxied, "/csall/moved")
    assert r.status == 302
    assert "charset" not in (r.header("Content-Type") or "")


def _max_age(r):
    m = re.fullmatch(r"max-age=(\d+)", r.header("Cache-Control") or "")
    return int(m.group(1)) if m else None


def test_expires_on_proxied_responses(proxied):
    r = _get(proxied, "/exp/cc")
    assert r.header_all("Cache-Control") == ["max-age=3600"]    # the upstream's replaced
    assert len(r.header_all("Expires")) == 1
    exp = email.utils.parsedate_to_datetime(r.header("Expires")).timestamp()
    assert abs(exp - (time.time() + 3600)) < 5
    r = _get(proxied, "/exp/cc404")                  # not a status expires touches
    assert r.status == 404
    assert r.header_all("Cache-Control") == ["no-store"] and not r.has("Expires")
    r = _get(proxied, "/expmod/cc")                  # from the upstream's Last-Modified
    assert r.header("Expires") == "Tue, 14 Nov 2023 23:13:20 GMT"
    assert r.header("Cache-Control") == "no-cache"   # in the past
    r = _get(proxied, "/expmod/plain")               # no Last-Modified: from now
    assert 3590 <= _max_age(r) <= 3600
    r = _get(proxied, "/expepoch/plain")
    assert r.header("Expires") == "Thu, 01 Jan 1970 00:00:01 GMT"
    assert r.header("Cache-Control") == "no-cache"


def test_expires_on_return(proxied):
    r = _get(proxied, "/ret/")
    assert r.header("Expires") == "Thu, 31 Dec 2037 23:55:55 GMT"
    assert r.header("Cache-Control") == "max-age=315360000"
    r = _get(proxied, "/ret404/")
    assert r.status == 404 and not r.has("Expires") and not r.has("Cache-Control")
    r = _get(proxied, "/retredir/")
    assert r.status == 301 and _max_age(r) == 30


# -- $document_root and $request_filename ------------------------------------------------------

VARS = """
http {
    server {
        listen 127.0.0.1:@PORT@;
        root @ROOT@/www/;
        location / { add_header X-Root $document_root; add_header X-File $request_filename; }
        location /img/ { alias @ROOT@/data/images/;
                         add_header X-Root $document_root; add_header X-File $request_filename; }
        location ~ ^/re/(.+)$ { alias @ROOT@/data/images/$1;
                         add_header X-Root $document_root; add_header X-File $request_filename; }
        location /ret/ { root /srv/other; return 200 "$document_root|$request_filename"; }
    }
}
"""


def test_document_root_and_request_filename(edge, root):
    srv = edge(VARS, ROOT=root)
    r = _get(srv, "/a.txt")
    assert r.status == 200
    assert r.header("X-Root") == f"{root}/www"          # one trailing slash dropped
    assert r.header("X-File") == f"{root}/www/a.txt"
    r = _get(srv, "/img/cat.txt")
    assert r.status == 200
    assert r.header("X-Root") == f"{root}/data/images/"  # an alias as written
    assert r.header("X-File") == f"{root}/data/images/cat.txt"
    r = _get(srv, "/re/cat.txt")
    assert r.status == 200
    assert r.header("X-Root") == f"{root}/data/images/cat.txt"
    assert r.header("X-File") == f"{root}/data/images/cat.txt"
    assert _get(srv, "/ret/x").body == b"/srv/other|/srv/other/ret/x"


# -- disable_symlinks --------------------------------------------------------------------------

SYMLINKS = """
http {
    server {
        listen 127.0.0.1:@PORT@;
        root @ROOT@/www;
        location /off/ { }
        location /on/ { disable_symlinks on; }
        location /owner/ { disable_symlinks if_not_owner; }
        location /from/ { disable_symlinks on from=$document_root; }
        location /tf/ { disable_symlinks on; try_files $uri /tf/fallback.txt; }
    }
}
"""


@pytest.fixture
def linked(edge, root):
    w = root / "www"
    for d in ("off", "on", "owner", "from", "tf"):
        _write(w / d / "real.txt", b"real\n")
        (w / d / "link.txt").symlink_to(w / d / "real.txt")
        (w / d / "sub").mkdir()
        _write(w / d / "sub" / "in.txt", b"in sub\n")
        (w / d / "dirlink").symlink_to(w / d / "sub")
        (w / d / "foreign.txt").symlink_to("/etc/hostname")
    _write(w / "tf" / "fallback.txt", b"fallback\n")
    # the root itself reached through a link: `from=` leaves it unchecked
    (root / "wwwlink").symlink_to(w)
    srv = edge(SYMLINKS.replace("@ROOT@/www", "@ROOT@/wwwlink"), ROOT=root)
    return srv


@pytest.mark.parametrize("target,status", [
    ("/off/link.txt", 200), ("/off/dirlink/in.txt", 200),
    # a link in place of a directory (wwwlink on the root's own path, dirlink): Linux
    # answers openat(O_DIRECTORY | O_NOFOLLOW) with ENOTDIR, so nginx says 404 there
    ("/on/real.txt", 404), ("/from/dirlink/in.txt", 404),
    ("/from/real.txt", 200), ("/from/link.txt", 403),
    ("/from/sub/in.txt", 200), ("/from/missing.txt", 404),
])
def test_disable_symlinks(linked, target, status):
    assert _get(linked, target).status == status


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner test needs files of two owners")
def test_disable_symlinks_if_not_owner(edge, root):
    w = root / "www" / "owner"
    _write(w / "mine.txt", b"mine\n")
    (w / "same.txt").symlink_to(w / "mine.txt")
    _write(w / "theirs.txt", b"theirs\n")
    os.chown(w / "theirs.txt", 65534, 65534)
    (w / "other.txt").symlink_to(w / "theirs.txt")
    srv = edge(SYMLINKS, ROOT=root)
    assert _get(srv, "/owner/same.txt").status == 200
    assert _get(srv, "/owner/other.txt").status == 403
    assert _get(srv, "/owner/theirs.txt").status == 200


def test_disable_symlinks_in_try_files(edge, root):
    w = root / "www" / "tf"
    _write(w / "real.txt", b"real\n")
    (w / "link.txt").symlink_to(w / "real.txt")
    _write(w / "fallback.txt", b"fallback\n")
    srv = edge(SYMLINKS, ROOT=root)
    assert _get(srv, "/tf/real.txt").body == b"real\n"
    assert _get(srv, "/tf/link.txt").body == b"fallback\n"     # a refused link is skipped
