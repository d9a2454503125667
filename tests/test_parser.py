"""Tests of edge's HTTP/1.x parser (edge/_core/http_parser.c), through edge.http.

Development build, in place, from the repository root:

    python edge/_http_build.py

(builds in build/cffi/ and copies edge/_http_cffi.*.so next to edge/http.py;
this module runs that build itself when the extension is missing).  Then:

    python -m pytest tests/test_parser.py

What is checked, each case through both the SSE4.2 and the scalar scanners:
- every head parsed whole, then every prefix of it (all INCOMPLETE before the
  end of the head, the same result after; for invalid input INCOMPLETE up to
  the first bad byte, ERROR from there on), then fed byte by byte with the
  `last_len` resume shortcut;
- differential against h11 on tests/corpus/ (Chrome, Firefox, Safari, curl,
  wrk, ab, python-requests, proxy and websocket requests; upstream responses)
  and on hypothesis-generated heads, valid and invalid;
- a hostile table, where each row states edge's result, whether h11 accepts,
  and why we differ when we do (the test checks h11 too, so the table can't
  go stale);
- the chunked decoder (every split point, extensions, trailers, limits,
  leftovers), Content-Length, the SIMD switch, and that the C file builds with
  plain ``gcc -O2`` and with the SSE4.2 code compiled out.

Deliberate differences from h11 (HOSTILE rows with edge != h11):
  edge refuses, h11 accepts:
    - bare LF line endings (RFC 9112 2.2 allows refusing; parsers disagree on
      them, a classic smuggling vector);
    - obs-fold continuation lines (RFC 9112 5.2: a server MAY reject; h11
      unfolds, and a back end may not);
    - CTLs other than HTAB, and DEL, in field values and reason phrases (h11
      only refuses NUL and whitespace CTLs; RFC 9110 5.5 says such values are
      invalid and some back ends cut at them);
    - HTTP versions other than 1.x (the reactor answers 505; 1.2 to 1.9 are read as 1.1, using
      edge_request_http_version; h11 passes any D.D through);
    - chunked: a chunk size above int64, whatever its leading zeros (h11: 20
      digits); whitespace after the size ("1 \r\n", h11 allows trailing OWS;
      "1 ;x" is refused by h11 too, though RFC 9112 7.1.1 allows that BWS);
      CTLs in chunk extensions (h11 accepts any byte but LF).
  edge accepts, h11 refuses:
    - obs-text (bytes >= 0x80) in the request-target, as nginx does (clients
      send raw UTF-8 paths; it is one token either way, not ambiguous);
    - empty lines (CRLF) before the request-line (RFC 9112 2.2: SHOULD be
      ignored).
  Semantics that h11 checks and a parser does not (the reactor's job, not a
  difference in reading): Host presence/count, Content-Length lists and
  conflicts, Transfer-Encoding values.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

try:
    import edge  # noqa: F401
except ImportError:  # run from a checkout without the repo root on sys.path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _build_if_stale():
    """(Re)build the in-tree extension when it is missing or older than its
    sources, so a C edit is never tested against a stale binary."""
    import edge

    pkg = pathlib.Path(edge.__file__).resolve().parent
    sources = [pkg / "_core" / "http_parser.c", pkg / "_core" / "http_parser.h", pkg / "_http_build.py"]
    if not all(s.exists() for s in sources):
        return  # an installed package: use what was installed
    # the file `import edge._http_cffi` would load (setup.py builds an abi3
    # one, the dev build a version-tagged one, which the import prefers)
    from importlib.machinery import EXTENSION_SUFFIXES

    candidates = [pkg / ("_http_cffi" + suffix) for suffix in EXTENSION_SUFFIXES]
    built = next((c for c in candidates if c.exists()), None)
    newest = max(s.stat().st_mtime for s in sources)
    if built is None or built.stat().st_mtime < newest:
        from edge._http_build import build_inplace

        build_inplace()


_build_if_stale()
from edge import http as eh  # noqa: E402

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
C_SOURCE = ROOT / "edge" / "_core" / "http_parser.c"

INCOMPLETE, ERROR, TOO_MANY = eh.INCOMPLETE, eh.ERROR, eh.TOO_MANY_HEADERS

ERR, OK = "err", "ok"


def cpu_has_sse42():
    try:
        return " sse4_2" in pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


class simd:
    """Context manager: run the parser with SSE4.2 (True) or scalar (False)."""

    def __init__(self, on):
        self.on = on

    def __enter__(self):
        got = eh.set_simd(1 if self.on else 0)
        if self.on and not got:
            pytest.skip("no SSE4.2 on this CPU / build")
        assert got == (1 if self.on else 0)

    def __exit__(self, *exc):
        eh.set_simd(-1)


MODES = pytest.mark.parametrize("use_simd", [True, False], ids=["sse42", "scalar"])


def summary(r):
    """A comparable form of a parse result."""
    if isinstance(r, int):
        return r
    if isinstance(r, eh.Request):
        return ("req", r.method, r.path, r.minor_version, tuple(r.headers), r.consumed)
    return ("resp", r.minor_version, r.status, r.reason, tuple(r.headers), r.consumed)


def check_prefixes(parse, data, **kw):
    """Parse `data` whole and every prefix of it, and resume byte by byte with
    last_len; check they agree; return the whole-input result."""
    full = parse(data, **kw)
    results = [summary(parse(data[:i], **kw)) for i in range(len(data) + 1)]
    assert results[-1] == summary(full)
    if isinstance(full, int):
        first = next((i for i, r in enumerate(results) if r != INCOMPLETE), None)
        if full == INCOMPLETE:
            assert first is None
        else:
            # once refused, every longer prefix is refused the same way
            assert all(r == full for r in results[first:]), results
    else:
        n = full.consumed
        assert 0 < n <= len(data)
        assert all(r == INCOMPLETE for r in results[:n]), "a prefix of the head was not INCOMPLETE"
        assert all(r == results[n] for r in results[n:])
        first = n

    # Resume: pass last_len = the previous incomplete length.  The parser
    # only rescans when an LF arrived, so the first result that is not
    # INCOMPLETE comes at the first LF at or after the point where the
    # whole-prefix parse stops being INCOMPLETE.
    last = 0
    got_at, got = None, None
    for i in range(1, len(data) + 1):
        r = summary(parse(data[:i], last_len=last, **kw))
        if r == INCOMPLETE:
            last = i
            continue
        got_at, got = i, r
        break
    if first is None:
        assert got_at is None
    else:
        want_at = next(
            (
                i
                for i in range(max(first, 1), len(data) + 1)
                if i == 1 or data[i - 1 : i] == b"\n"
            ),
            None,
        )
        assert got_at == want_at
        if want_at is not None:
            assert got == results[want_at]
    return full


def h11_request(data):
    """h11's reading of a request head: (OK, Request, consumed) or (ERR, msg, None)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError as e:
        return ERR, str(e), None
    if ev is h11.NEED_DATA:
        return ERR, "incomplete", None
    assert isinstance(ev, h11.Request)
    return OK, ev, len(data) - len(conn.trailing_data[0])


def h11_response(data):
    """h11's reading of a response head, after a GET that offers an upgrade
    (so that a 101 is acceptable)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(
            method="GET",
            target="/",
            headers=[("Host", "x"), ("Connection", "Upgrade"), ("Upgrade", "websocket")],
        )
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError as e:
        return ERR, str(e), None
    if ev is h11.NEED_DATA:
        return ERR, "incomplete", None
    assert isinstance(ev, (h11.Response, h11.InformationalResponse))
    return OK, ev, len(data) - len(conn.trailing_data[0])


def assert_same_request(ours, theirs, consumed):
    assert ours.method == theirs.method
    assert ours.path == theirs.target
    # a 1.x minor above 1 is read as 1.1 (RFC 9112 2.6); h11 keeps the number it saw
    assert b"1.%d" % ours.minor_version == min(theirs.http_version, b"1.1")
    assert ours.headers == theirs.headers.raw_items()
    assert ours.consumed == consumed


def assert_same_response(ours, theirs, consumed):
    assert ours.status == theirs.status_code
    assert ours.reason == theirs.reason
    # a 1.x minor above 1 is read as 1.1 (RFC 9112 2.6); h11 keeps the number it saw
    assert b"1.%d" % ours.minor_version == min(theirs.http_version, b"1.1")
    assert ours.headers == theirs.headers.raw_items()
    assert ours.consumed == consumed


# --------------------------------------------------------------------------
# corpus: real-world heads, differential against h11
# --------------------------------------------------------------------------

REQ_FILES = sorted(CORPUS.glob("req-*.http"))
RESP_FILES = sorted(CORPUS.glob("resp-*.http"))


def test_corpus_is_there():
    assert len(REQ_FILES) >= 20 and len(RESP_FILES) >= 10


@MODES
@pytest.mark.parametrize("path", REQ_FILES, ids=lambda p: p.name)
def test_corpus_request(path, use_simd):
    data = path.read_bytes()
    with simd(use_simd):
        ours = check_prefixes(eh.parse_request, data)
    assert isinstance(ours, eh.Request), ours
    kind, theirs, consumed = h11_request(data)
    assert kind == OK, theirs
    assert_same_request(ours, theirs, consumed)


@MODES
@pytest.mark.parametrize("path", RESP_FILES, ids=lambda p: p.name)
def test_corpus_response(path, use_simd):
    data = path.read_bytes()
    with simd(use_simd):
        ours = check_prefixes(eh.parse_response, data)
    assert isinstance(ours, eh.Response), ours
    kind, theirs, consumed = h11_response(data)
    assert kind == OK, theirs
    assert_same_response(ours, theirs, consumed)


def test_corpus_spot_checks():
    r = eh.parse_request((CORPUS / "req-chrome-navigate.http").read_bytes())
    assert r.method == b"GET" and r.path.startswith(b"/products/search?q=")
    assert len(r.headers) == 19 and r.headers[0] == (b"Host", b"shop.example.com")
    r = eh.parse_request((CORPUS / "req-pipelined.http").read_bytes())
    assert r.path == b"/a"
    rest = (CORPUS / "req-pipelined.http").read_bytes()[r.consumed :]
    assert eh.parse_request(rest).path == b"/b"
    r = eh.parse_request((CORPUS / "req-ows-and-empty.http").read_bytes())
    assert r.headers[1:] == [
        (b"X-Empty", b""),
        (b"X-Blank", b""),
        (b"X-Tabs", b"left\tinner"),
        (b"X-Spaces", b"a   b"),
    ]
    r = eh.parse_response((CORPUS / "resp-204-no-reason.http").read_bytes())
    assert (r.status, r.reason) == (204, b"")
    data = (CORPUS / "req-chrome-fetch-json-post.http").read_bytes()
    r = eh.parse_request(data)
    assert data[r.consumed :] == b'{"sku":"RUN-42-BLU","quantity":2,"coupon":null,"gift":false}'


# --------------------------------------------------------------------------
# hostile input: edge's answer, h11's, and why they differ
# --------------------------------------------------------------------------

H = b"GET / HTTP/1.1\r\nHost: a\r\n"  # a valid start; rows add to it

# (id, data, edge result: OK or a code, h11 accepts?, why edge differs from h11)
HOSTILE_REQUESTS = [
    ("valid", H + b"\r\n", OK, True, ""),
    ("obs-fold", H + b"X: a\r\n b\r\n\r\n", ERROR, True,
     "RFC 9112 5.2 lets a server reject obs-fold; h11 unfolds, a back end may not"),
    ("obs-fold-tab", H + b"X: a\r\n\tb\r\n\r\n", ERROR, True, "as obs-fold"),
    ("ws-before-first-field", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", ERROR, False, ""),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", ERROR, False, ""),
    ("tab-before-colon", b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", ERROR, False, ""),
    ("te-space-before-colon", H + b"Transfer-Encoding : chunked\r\n\r\n", ERROR, False, ""),
    ("empty-name", H + b": a\r\n\r\n", ERROR, False, ""),
    ("no-colon", H + b"X a\r\n\r\n", ERROR, False, ""),
    ("name-slash", H + b"X/Y: a\r\n\r\n", ERROR, False, ""),
    ("name-obs-text", H + b"X-\xe9: a\r\n\r\n", ERROR, False, ""),
    ("nul-in-value", H + b"X: a\x00b\r\n\r\n", ERROR, False, ""),
    ("ctl-in-value", H + b"X: a\x01b\r\n\r\n", ERROR, True,
     "RFC 9110 5.5: CTLs are not field-vchar; h11 only refuses NUL and whitespace"),
    ("esc-in-value", H + b"X: a\x1bb\r\n\r\n", ERROR, True, "as ctl-in-value"),
    ("del-in-value", H + b"X: a\x7fb\r\n\r\n", ERROR, True, "as ctl-in-value"),
    ("vt-in-value", H + b"X: a\x0bb\r\n\r\n", ERROR, False, ""),
    ("ff-in-value", H + b"X: \x0c\r\n\r\n", ERROR, False, ""),
    ("bare-cr-in-value", H + b"X: a\rb\r\n\r\n", ERROR, False, ""),
    ("bare-cr-eol", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", ERROR, False, ""),
    ("cr-cr-lf", H + b"X: a\r\r\n\r\n", ERROR, False, ""),
    ("bare-cr-final", H + b"\rX", ERROR, False, ""),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", ERROR, True,
     "bare LF: RFC 9112 2.2 allows refusing; readers disagree, a smuggling vector"),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", ERROR, True, "bare LF"),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", ERROR, True, "bare LF"),
    ("bare-lf-final", H + b"\n", ERROR, True, "bare LF"),
    ("lf-cr-lf-final", b"GET / HTTP/1.1\r\nHost: a\n\r\n", ERROR, True, "bare LF"),
    ("double-sp-after-method", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("double-sp-before-version", b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("leading-space", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("trailing-space-version", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("ctl-in-target", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("del-in-target", b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("nul-in-target", b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("obs-text-target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", OK, False,
     "raw UTF-8 paths are accepted as nginx does; still one token, not ambiguous"),
    ("bad-method-char", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("nul-in-method", b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("http-2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", ERROR, True,
     "only HTTP/1.0 and 1.1 are served; the reactor answers 505"),
    ("http-1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", OK, True, "RFC 9112 2.6: handled as HTTP/1.1, as nginx does"),
    ("http-0.9-version", b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", ERROR, True, "as http-2.0"),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ERROR, True, "as http-2.0"),
    ("lowercase-http", b"GET / http/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("http-1.10", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("http-1", b"GET / HTTP/1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("https-name", b"GET / HTTPS/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("http-0.9-request", b"GET /\r\n\r\n", ERROR, False, ""),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ERROR, False, ""),
    ("leading-crlf", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", OK, False,
     "RFC 9112 2.2: empty lines before a request-line SHOULD be ignored"),
    ("leading-bare-lf", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", ERROR, False, ""),
    ("101-headers", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"Host: a\r\n\r\n",
     TOO_MANY, True, "the header count is bounded (431); h11 bounds only the size"),
]


def hostile_ids(rows):
    return [r[0] for r in rows]


@MODES
@pytest.mark.parametrize("row", HOSTILE_REQUESTS, ids=hostile_ids(HOSTILE_REQUESTS))
def test_hostile_request(row, use_simd):
    name, data, want, h11_ok, why = row
    with simd(use_simd):
        got = check_prefixes(eh.parse_request, data)
    if want == OK:
        assert isinstance(got, eh.Request)
    else:
        assert got == want
    kind, theirs, consumed = h11_request(data)
    assert (kind == OK) == h11_ok, theirs
    if (want == OK) != h11_ok:
        assert why, "a difference from h11 needs its reason in the table"
    if want == OK and h11_ok:
        assert_same_request(got, theirs, consumed)


def test_exactly_capacity_headers():
    data = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 99 + b"Host: a\r\n\r\n"
    assert len(eh.parse_request(data).headers) == 100
    assert eh.parse_request(data, max_headers=99) == TOO_MANY
    assert eh.parse_request(b"GET / HTTP/1.1\r\n\r\n", max_headers=0).headers == []
    assert eh.parse_request(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", max_headers=0) == TOO_MANY
    # the count is only exceeded by a real field line, not by the final CRLF
    assert eh.parse_request(b"GET / HTTP/1.1\r\nA: b\r\n\r", max_headers=1) == INCOMPLETE


HR = b"HTTP/1.1 200 OK\r\n"
HOSTILE_RESPONSES = [
    ("valid", HR + b"\r\n", OK, True, ""),
    ("no-reason-no-sp", b"HTTP/1.1 200\r\n\r\n", OK, True, ""),
    ("no-reason-sp", b"HTTP/1.1 200 \r\n\r\n", OK, True, ""),
    ("reason-with-spaces", b"HTTP/1.1 404  Not  Found \r\n\r\n", OK, True, ""),
    ("bare-lf-status", b"HTTP/1.1 200 OK\nX: a\r\n\r\n", ERROR, True, "bare LF"),
    ("bare-lf-header", HR + b"X: a\n\r\n", ERROR, True, "bare LF"),
    ("obs-fold", HR + b"X: a\r\n b\r\n\r\n", ERROR, True, "obs-fold"),
    ("ctl-in-reason", b"HTTP/1.1 200 O\x01K\r\n\r\n", ERROR, True,
     "CTLs in a reason phrase, as in field values"),
    ("4-digit-status", b"HTTP/1.1 2000 OK\r\n\r\n", ERROR, False, ""),
    ("2-digit-status", b"HTTP/1.1 20 OK\r\n\r\n", ERROR, False, ""),
    ("status-000", b"HTTP/1.1 000 OK\r\n\r\n", ERROR, False, ""),
    ("status-099", b"HTTP/1.1 099 OK\r\n\r\n", ERROR, False, ""),
    ("status-999", b"HTTP/1.1 999 Whatever\r\n\r\n", OK, True, ""),
    ("alpha-status", b"HTTP/1.1 abc OK\r\n\r\n", ERROR, False, ""),
    ("double-space", b"HTTP/1.1  200 OK\r\n\r\n", ERROR, False, ""),
    ("no-space-reason", b"HTTP/1.1 200OK\r\n\r\n", ERROR, False, ""),
    ("http-2-no-minor", b"HTTP/2 200\r\n\r\n", ERROR, False, ""),
    ("http-2.0", b"HTTP/2.0 200 OK\r\n\r\n", ERROR, True, "only HTTP/1.x upstreams"),
    ("lowercase", b"http/1.1 200 OK\r\n\r\n", ERROR, False, ""),
    ("leading-crlf", b"\r\nHTTP/1.1 200 OK\r\n\r\n", ERROR, False, ""),
    ("space-before-colon", HR + b"Content-Length : 5\r\n\r\n", ERROR, False, ""),
    ("nul-in-value", HR + b"Location: /a\x00b\r\n\r\n", ERROR, False, ""),
]


@MODES
@pytest.mark.parametrize("row", HOSTILE_RESPONSES, ids=hostile_ids(HOSTILE_RESPONSES))
def test_hostile_response(row, use_simd):
    name, data, want, h11_ok, why = row
    with simd(use_simd):
        got = check_prefixes(eh.parse_response, data)
    if want == OK:
        assert isinstance(got, eh.Response)
    else:
        assert got == want
    kind, theirs, consumed = h11_response(data)
    assert (kind == OK) == h11_ok, theirs
    if (want == OK) != h11_ok:
        assert why
    if want == OK and h11_ok:
        assert_same_response(got, theirs, consumed)


def test_request_http_version_for_505():
    assert eh.request_http_version(b"GET / HTTP/2.0\r\n") == (2, 0)
    assert eh.request_http_version(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == (2, 0)
    assert eh.request_http_version(b"GET / HTTP/1.2\r\n") == (1, 2)
    assert eh.request_http_version(b"GET / HTTP/3") == (3, -1)
    assert eh.request_http_version(b"\r\nGET / HTTP/1.1\r\n") == (1, 1)
    assert eh.request_http_version(b"GET / http/1.1\r\n") is None
    assert eh.request_http_version(b"GET  / HTTP/2.0\r\n") is None
    assert eh.request_http_version(b"GET / HTTP/") is None
    assert eh.request_http_version(b"") is None


def test_fields_point_into_the_buffer():
    data = b"\r\nPOST /p?q HTTP/1.0\r\nA:  b c \r\nD:\r\n\r\nbody"
    ret, (method, path, minor, hdrs) = eh.parse_request_spans(data)
    assert ret == len(data) - 4
    assert method == (2, 4) and path == (7, 4) and minor == 0
    assert hdrs == [((22, 1), (26, 3)), ((32, 1), (34, 0))]
    ret, (minor, status, reason, hdrs) = eh.parse_response_spans(b"HTTP/1.1 200\r\n\r\n")
    assert (ret, minor, status, reason, hdrs) == (16, 1, 200, (12, 0), [])


def test_non_bytes_input():
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert eh.parse_request(bytearray(data)).path == b"/"
    assert eh.parse_request(memoryview(data)).consumed == len(data)
    assert eh.parse_request(b"") == INCOMPLETE
    assert eh.parse_response(b"") == INCOMPLETE


# --------------------------------------------------------------------------
# SIMD: both paths, block boundaries, selection
# --------------------------------------------------------------------------

BAD_VALUE_BYTES = [0x00, 0x01, 0x08, 0x0A, 0x0B, 0x0D, 0x1F, 0x7F]


@MODES
def test_value_block_boundaries(use_simd):
    """A bad byte at every offset of values 1..70 long (the SIMD scan works in
    16-byte blocks and finishes with a scalar tail)."""
    with simd(use_simd):
        for n in range(1, 71):
            value = bytes(0x21 + (i % 94) for i in range(n))
            good = b"GET / HTTP/1.1\r\nX: " + value + b"\r\n\r\n"
            assert eh.parse_request(good).headers == [(b"X", value)]
            for k in range(n):
                for bad in BAD_VALUE_BYTES:
                    v = value[:k] + bytes([bad]) + value[k + 1 :]
                    r = eh.parse_request(b"GET / HTTP/1.1\r\nX: " + v + b"\rZ\r\n\r\n")
                    assert r == ERROR, (n, k, bad)
                for ok in (0x09, 0x20, 0x80, 0xFF):
                    v = value[:k] + bytes([ok]) + value[k + 1 :] + b"!"
                    r = eh.parse_request(b"GET / HTTP/1.1\r\nX: " + v + b"\r\n\r\n")
                    assert r.headers == [(b"X", v.lstrip(b" \t"))], (n, k, ok)


@MODES
def test_token_block_boundaries(use_simd):
    """Names 1..40 long with a tchar that the SIMD ranges over-match ('*', '+',
    '|') or a non-tchar at every offset."""
    with simd(use_simd):
        for n in range(1, 41):
            name = bytes(b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"[:n])
            for k in range(n):
                for c in b"*+|!#~^`'-._":
                    nm = name[:k] + bytes([c]) + name[k + 1 :]
                    r = eh.parse_request(b"GET / HTTP/1.1\r\n" + nm + b": v\r\n\r\n" + b"x" * 20)
                    assert r.headers == [(nm, b"v")], (nm, use_simd)
                    r = eh.parse_request(nm + b" / HTTP/1.1\r\n\r\n" + b"x" * 20)
                    assert r.method == nm
                for c in b' "(),/;<=>?@[\\]{}\x7f\x80\x00\t':
                    nm = name[:k] + bytes([c]) + name[k + 1 :]
                    r = eh.parse_request(b"GET / HTTP/1.1\r\n" + nm + b": v\r\n\r\n" + b"x" * 20)
                    assert r == ERROR, (nm, use_simd)


@MODES
def test_target_block_boundaries(use_simd):
    with simd(use_simd):
        for n in range(1, 50):
            target = b"/" + bytes(0x21 + (i * 7 % 94) for i in range(n - 1))
            r = eh.parse_request(b"GET " + target + b" HTTP/1.1\r\n\r\n")
            assert r.path == target
            for k in range(1, n):
                for bad in (0x00, 0x09, 0x0D, 0x1F, 0x7F):
                    t = target[:k] + bytes([bad]) + target[k + 1 :]
                    assert eh.parse_request(b"GET " + t + b" HTTP/1.1\r\n\r\n") == ERROR


@settings(max_examples=400, deadline=None, database=None)
@given(
    prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: ", b"HTTP/1.1 200 "]),
    body=st.binary(max_size=120),
)
def test_simd_and_scalar_agree_on_any_bytes(prefix, body):
    data = prefix + body
    out = []
    for on in (True, False):
        if on and not cpu_has_sse42():
            continue
        with simd(on):
            out.append(
                (
                    eh.parse_request_spans(data),
                    eh.parse_response_spans(data),
                    eh.parse_request_spans(data, max_headers=2),
                )
            )
    assert all(o == out[0] for o in out)


@pytest.mark.skipif(not cpu_has_sse42(), reason="CPU without SSE4.2")
def test_simd_selection():
    try:
        assert eh.set_simd(0) == 0 and not eh.simd_enabled()
        assert eh.set_simd(1) == 1 and eh.simd_enabled()
    finally:
        eh.set_simd(-1)


@pytest.mark.skipif(not cpu_has_sse42(), reason="CPU without SSE4.2")
def test_env_no_simd():
    code = "import edge.http as h; print(h.simd_enabled())"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for value, want in (("1", "False"), ("0", "True"), ("", "True")):
        env["EDGE_NO_SIMD"] = value
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == want, value


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
@pytest.mark.parametrize(
    "flags",
    [
        ["-O2"],
        ["-O2", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Werror"],
        ["-O2", "-Wall", "-Wextra", "-Werror", "-DEDGE_DISABLE_SSE42"],
        ["-O2", "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Werror"],
    ],
    ids=["plain", "warnings", "no-sse42", "c99"],
)
def test_c_builds(flags, tmp_path):
    """Plain -O2 (no -msse4.2) must build, and so must the non-x86 code path."""
    out = tmp_path / "p.o"
    subprocess.run(["gcc", *flags, "-c", str(C_SOURCE), "-o", str(out)], check=True)
    assert out.stat().st_size > 0


# --------------------------------------------------------------------------
# hypothesis: generated heads, valid and invalid, against a model and h11
# --------------------------------------------------------------------------

# Each generated piece carries who should refuse it:
#   OK: nobody; BOTH: edge and h11; EDGE: edge only (documented stricter);
#   H11: h11 only (documented more lenient).
P_OK, P_BOTH, P_EDGE, P_H11 = "ok", "both", "edge", "h11"

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = [chr(c) for c in range(0x21, 0x7F)]
OBS_TEXT = [chr(c) for c in range(0x80, 0x100)]
H11_OK_CTL = [chr(c) for c in list(range(0x01, 0x09)) + list(range(0x0E, 0x20)) + [0x7F]]


def latin1(s):
    return s.encode("latin-1")


def tagged(strategy, kind):
    return strategy.map(lambda b: (b, kind))


token = st.text(TCHARS, min_size=1, max_size=12).map(latin1)
ows = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t "])
plain_value = st.text(VCHAR + OBS_TEXT + [" ", "\t"], max_size=30).map(latin1)


def with_inserted(kind, chars):
    """plain_value with one of `chars` inserted somewhere."""

    def build(t):
        v, i, c = t
        i = min(i, len(v))
        return v[:i] + latin1(c) + v[i:]

    return tagged(st.tuples(plain_value, st.integers(0, 30), st.sampled_from(chars)).map(build), kind)


# Each piece: (valid strategy, faulty strategy[, valid for edge only]); all
# yield (bytes, kind).
METHOD = (
    st.one_of(
        tagged(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"]), P_OK),
        tagged(token, P_OK),
    ),
    tagged(st.sampled_from([b"GE(T", b"G\x00T", b"G\xc3T", b"GET@", b"\x7fGET"]), P_BOTH),
)
SEP = (
    tagged(st.just(b" "), P_OK),
    tagged(st.sampled_from([b"  ", b"\t", b" \t"]), P_BOTH),
)
TARGET = (
    st.one_of(
        tagged(st.text(VCHAR, max_size=40).map(lambda s: b"/" + latin1(s)), P_OK),
        tagged(st.sampled_from([b"*", b"http://a.example:8080/x?y=1", b"a.example:443"]), P_OK),
    ),
    tagged(st.sampled_from([b"/a\x00", b"/a\x01b", b"/\x7f", b"/a\rb"]), P_BOTH),
    # valid for edge, refused by h11 (the third element: see Pieces)
    tagged(
        st.tuples(st.text(VCHAR, max_size=10), st.text(OBS_TEXT, min_size=1, max_size=4)).map(
            lambda t: b"/" + latin1(t[0]) + latin1(t[1])
        ),
        P_H11,
    ),
)
VERSION = (
    tagged(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), P_OK),
    st.one_of(
        tagged(st.sampled_from([b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.7"]), P_EDGE),
        tagged(st.sampled_from([b"http/1.1", b"HTTP/1.10", b"HTTP/11", b"HTTP/1", b"HTTP/1.1 ", b"HTTPS/1.1"]), P_BOTH),
    ),
)
EOL = (tagged(st.just(b"\r\n"), P_OK), tagged(st.just(b"\n"), P_EDGE))
LEAD = (
    tagged(st.just(b""), P_OK),
    tagged(st.just(b"\n"), P_BOTH),
    tagged(st.sampled_from([b"\r\n", b"\r\n\r\n"]), P_H11),
)
NAME = (
    st.one_of(
        tagged(
            st.sampled_from([b"Accept", b"User-Agent", b"Cookie", b"X-Forwarded-For", b"cache-control"]),
            P_OK,
        ),
        tagged(token.map(lambda t: b"X-" + t), P_OK),
    ),
    tagged(
        st.sampled_from([b"", b"X-Bad Name", b"X-Bad\x00", b"X-Caf\xe9", b"X-A/B", b"X-(a)", b"X-Name ", b"X-Name\t"]),
        P_BOTH,
    ),
)
VALUE = (
    tagged(plain_value, P_OK),
    st.one_of(
        with_inserted(P_EDGE, H11_OK_CTL),  # h11 lets these CTLs through
        with_inserted(P_BOTH, ["\x00", "\x0b", "\x0c", "\rx"]),
    ),
)
STATUS = (
    tagged(st.integers(100, 999).map(lambda n: b"%d" % n), P_OK),
    tagged(st.sampled_from([b"000", b"099", b"20", b"2000", b"2x0", b" 200"]), P_BOTH),
)
REASON = (
    st.one_of(tagged(st.sampled_from([b"", b" "]), P_OK), tagged(plain_value.map(lambda v: b" " + v), P_OK)),
    st.one_of(
        tagged(st.sampled_from([b" O\x01K", b" \x7f"]), P_EDGE),
        tagged(st.sampled_from([b"OK", b" O\x00K"]), P_BOTH),
    ),
)
RESP_VERSION = (
    tagged(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), P_OK),
    st.one_of(
        tagged(st.sampled_from([b"HTTP/2.0"]), P_EDGE),
        tagged(st.sampled_from([b"HTTP/2", b"http/1.1", b"HTTP/1.1 "]), P_BOTH),
    ),
)


class Pieces:
    """Draws pieces; per example, a fault rate: none (valid head), rare (about
    one fault) or frequent.  Records the kinds drawn."""

    def __init__(self, draw):
        self.draw = draw
        self.one_in = draw(st.sampled_from([0, 0, 20, 4]))
        self.kinds = []

    def faulty(self):
        return self.one_in and self.draw(st.integers(0, self.one_in - 1)) == 0

    def __call__(self, piece):
        good, bad = piece[:2]
        if self.faulty():
            good = bad
        elif len(piece) == 3 and self.draw(st.integers(0, 7)) == 0:
            good = piece[2]
        b, kind = self.draw(good)
        self.kinds.append(kind)
        return b


def header_lines(pc, max_lines):
    """Field lines and obs-fold continuation lines, as (raw, (name, value) or
    None for a continuation line)."""
    lines = []
    for _ in range(pc.draw(st.integers(0, max_lines))):
        if pc.faulty() and pc.draw(st.booleans()):
            lead = pc.draw(st.sampled_from([b" ", b"\t", b"  "]))
            lines.append((lead + pc.draw(plain_value) + pc(EOL), None))
            continue
        n, o1, v, o2 = pc(NAME), pc.draw(ows), pc(VALUE), pc.draw(ows)
        lines.append((n + b":" + o1 + v + o2 + pc(EOL), (n, (o1 + v + o2).strip(b" \t"))))
    return lines


def assemble(pc, lines):
    """Join the lines; return (raw, expected headers).  h11 unfolds a
    continuation line, but refuses one with nothing to continue."""
    for i, (_, field) in enumerate(lines):
        if field is None:
            pc.kinds.append(P_BOTH if i == 0 else P_EDGE)
    return b"".join(r for r, _ in lines), [f for _, f in lines if f is not None]


@st.composite
def requests(draw):
    pc = Pieces(draw)
    lead, method, s1, target, s2, version, eol = (
        pc(LEAD), pc(METHOD), pc(SEP), pc(TARGET), pc(SEP), pc(VERSION), pc(EOL),
    )
    lines = header_lines(pc, 12)
    # h11 wants exactly one Host in HTTP/1.1: put one somewhere among the fields
    lines.insert(draw(st.integers(0, len(lines))), (b"Host: example.com\r\n", (b"Host", b"example.com")))
    raw, headers = assemble(pc, lines)
    head = lead + method + s1 + target + s2 + version + eol + raw + pc(EOL)
    body = draw(st.binary(max_size=16))
    return head + body, pc.kinds, (method, target, version, headers, len(head))


@MODES
@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests())
def test_hypothesis_requests_vs_h11(req, use_simd):
    data, kinds, (method, target, version, headers, head_len) = req
    edge_should = not ({P_BOTH, P_EDGE} & set(kinds))
    h11_should = not ({P_BOTH, P_H11} & set(kinds))
    with simd(use_simd):
        ours = eh.parse_request(data)
    kind, theirs, consumed = h11_request(data)
    # h11 agrees with the model of it (so the strictness table is right) ...
    assert (kind == OK) == h11_should, (kinds, theirs)
    # ... and so does edge, field by field
    if edge_should:
        assert isinstance(ours, eh.Request), (kinds, ours)
        assert ours.method == method and ours.path == target
        assert b"HTTP/1.%d" % ours.minor_version == version
        assert ours.headers == headers
        assert ours.consumed == head_len
    else:
        assert ours == ERROR, kinds
    if edge_should and h11_should:
        assert_same_request(ours, theirs, consumed)


@st.composite
def responses(draw):
    pc = Pieces(draw)
    v, sp, status, reason, eol = pc(RESP_VERSION), pc(SEP), pc(STATUS), pc(REASON), pc(EOL)
    raw, headers = assemble(pc, header_lines(pc, 8))
    head = v + sp + status + reason + eol + raw + pc(EOL)
    reason = reason[1:] if reason.startswith(b" ") else reason
    return head + draw(st.binary(max_size=8)), pc.kinds, (v, status, reason, headers, len(head))


@MODES
@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(resp=responses())
def test_hypothesis_responses_vs_h11(resp, use_simd):
    data, kinds, (version, status, reason, headers, head_len) = resp
    edge_should = not ({P_BOTH, P_EDGE} & set(kinds))
    h11_should = not ({P_BOTH, P_H11} & set(kinds))
    with simd(use_simd):
        ours = eh.parse_response(data)
    kind, theirs, consumed = h11_response(data)
    assert (kind == OK) == h11_should, (kinds, theirs)
    if edge_should:
        assert isinstance(ours, eh.Response), (kinds, ours)
        assert b"HTTP/1.%d" % ours.minor_version == version
        assert b"%d" % ours.status == status and ours.reason == reason
        assert ours.headers == headers and ours.consumed == head_len
    else:
        assert ours == ERROR, kinds
    if edge_should and h11_should:
        assert_same_response(ours, theirs, consumed)


@settings(max_examples=150, deadline=None, database=None)
@given(req=requests())
def test_hypothesis_requests_prefixes(req):
    """The byte-by-byte and last_len properties on generated heads."""
    data, kinds, _ = req
    for on in (True, False):
        if on and not cpu_has_sse42():
            continue
        with simd(on):
            check_prefixes(eh.parse_request, data)


# --------------------------------------------------------------------------
# chunked decoder
# --------------------------------------------------------------------------


def decode(pieces):
    """Feed pieces to a fresh decoder: (decoded, done, rest) or ValueError."""
    d = eh.ChunkedDecoder()
    out, done, rest = [], False, b""
    for p in pieces:
        if done:
            _, still, more = d.feed(p)
            assert still
            rest += more
            continue
        data, done, rest = d.feed(p)
        out.append(data)
    return b"".join(out), done, rest


BODY = (
    b"5\r\nhello\r\n"
    b"1A;name=value;quoted=\"a b\"\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    b"3;ext ; more = \"x\"\t\r\n\x00\r\n\r\n"
    b"0;last\r\nTrailer-One: v1\r\nX-Checksum:\tabc def \r\n\r\n"
)
BODY_DATA = b"hello" + b"abcdefghijklmnopqrstuvwxyz" + b"\x00\r\n"


def test_chunked_whole_and_leftover():
    assert decode([BODY]) == (BODY_DATA, True, b"")
    assert decode([BODY + b"GET / HTTP/1.1\r\n"]) == (BODY_DATA, True, b"GET / HTTP/1.1\r\n")
    assert decode([b"0\r\n\r\n"]) == (b"", True, b"")
    assert decode([b"000\r\n\r\nX"]) == (b"", True, b"X")


def test_chunked_leftover_position_in_c_buffer():
    """The C contract: leftover bytes sit right after the decoded data."""
    from edge._http_cffi import ffi, lib

    raw = b"3\r\nabc\r\n0\r\n\r\nNEXT"
    buf = ffi.new("char[]", raw)
    size = ffi.new("size_t *", len(raw))
    dec = ffi.new("struct edge_chunked_decoder *")
    ret = lib.edge_decode_chunked(dec, buf, size)
    assert (ret, size[0]) == (4, 3)
    assert ffi.buffer(buf, 7)[:] == b"abcNEXT"


def test_chunked_every_split_point():
    data = BODY + b"rest"
    whole = decode([data])
    assert whole == (BODY_DATA, True, b"rest")
    for i in range(len(data) + 1):
        assert decode([data[:i], data[i:]]) == whole, i


def test_chunked_every_two_split_points():
    body = b"2;e=1\r\nab\r\n0\r\nT: v\r\n\r\nZZ"
    whole = decode([body])
    assert whole == (b"ab", True, b"ZZ")
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert decode([body[:i], body[i:j], body[j:]]) == whole, (i, j)


def test_chunked_byte_by_byte():
    data = BODY + b"tail"
    assert decode([data[i : i + 1] for i in range(len(data))]) == (BODY_DATA, True, b"tail")


def test_chunked_incomplete():
    d = eh.ChunkedDecoder()
    assert d.feed(b"5\r\nhel") == (b"hel", False, b"")
    assert d.feed(b"lo\r\n") == (b"lo", False, b"")
    assert d.feed(b"0\r\n") == (b"", False, b"")
    assert d.feed(b"\r\nafter") == (b"", True, b"after")
    assert d.feed(b"more") == (b"", True, b"more")  # after the end: all leftover


def test_chunked_sizes():
    assert decode([b"0000000000000001\r\nx\r\n0\r\n\r\n"])[0] == b"x"  # 16 digits
    # the value counts, not the number of digits (leading zeros), as nginx reads it
    body = bytes(range(0x4e))
    raw = b"000000000000000000000000000000004e\r\n" + body + b"\r\n0000000000000000000000\r\n\r\n"
    assert decode([raw])[0] == body
    assert decode([raw[i:i + 1] for i in range(len(raw))])[0] == body     # byte by byte
    d = eh.ChunkedDecoder()
    assert d.feed(b"7fffffffffffffff\r\nabc") == (b"abc", False, b"")  # INT64_MAX
    assert d.feed(b"AbCdEf")[0] == b"AbCdEf"


BAD_CHUNKED = [
    ("above-int64", b"8000000000000000\r\n"),
    ("above-int64-after-zeros", b"000000000000000000008000000000000000\r\n"),
    ("uint64-max", b"ffffffffffffffff\r\n"),
    ("bad-hex", b"g\r\n"),
    ("0x-prefix", b"0x10\r\n"),
    ("negative", b"-1\r\n"),
    ("plus", b"+1\r\n"),
    ("empty-size", b"\r\n"),
    ("leading-space", b" 1\r\nx\r\n0\r\n\r\n"),
    ("trailing-space", b"1 \r\nx\r\n0\r\n\r\n"),
    ("bare-lf-size", b"1\nx\r\n0\r\n\r\n"),
    ("bare-cr-size", b"1\rx\r\n0\r\n\r\n"),
    ("data-too-long", b"1\r\nxy\r\n0\r\n\r\n"),
    ("no-crlf-after-data", b"1\r\nx0\r\n\r\n"),
    ("bare-lf-after-data", b"1\r\nx\n0\r\n\r\n"),
    ("lf-lf-after-data", b"1\r\nx\n\n0\r\n\r\n"),
    ("data-too-long-lf", b"1\r\nxy\n0\r\n\r\n"),
    ("cr-cr-after-data", b"1\r\nx\r\r0\r\n\r\n"),
    ("ctl-in-ext", b"1;a=\x01\r\nx\r\n0\r\n\r\n"),
    ("nul-in-ext", b"1;a\x00\r\nx\r\n0\r\n\r\n"),
    ("del-in-ext", b"1;\x7f\r\nx\r\n0\r\n\r\n"),
    ("bare-lf-in-ext", b"1;a\nx\r\n0\r\n\r\n"),
    ("ext-too-long", b"1;" + b"a" * 4096 + b"\r\nx\r\n0\r\n\r\n"),
    ("bws-before-ext", b"1 ;a\r\nx\r\n0\r\n\r\n"),
    ("tab-before-ext", b"1\t;a\r\nx\r\n0\r\n\r\n"),
    ("trailer-obs-fold", b"0\r\nA: b\r\n c\r\n\r\n"),
    ("trailer-space-before-colon", b"0\r\nA : b\r\n\r\n"),
    ("trailer-no-colon", b"0\r\nA\r\n\r\n"),
    ("trailer-empty-name", b"0\r\n: b\r\n\r\n"),
    ("trailer-nul", b"0\r\nA: b\x00\r\n\r\n"),
    ("trailer-bare-lf", b"0\r\nA: b\n\r\n"),
    ("final-bare-lf", b"0\r\n\n"),
    ("final-bare-cr", b"0\r\n\rX"),
    ("trailer-too-big", b"0\r\n" + b"X: " + b"a" * 65536 + b"\r\n\r\n"),
]


@pytest.mark.parametrize("row", BAD_CHUNKED, ids=[r[0] for r in BAD_CHUNKED])
def test_chunked_invalid(row):
    _, data = row
    with pytest.raises(ValueError):
        decode([data])
    # and byte by byte: it fails at some byte, never succeeds
    d = eh.ChunkedDecoder()
    with pytest.raises(ValueError):
        for i in range(len(data)):
            _, done, _ = d.feed(data[i : i + 1])
            assert not done


def test_chunked_error_is_sticky():
    d = eh.ChunkedDecoder()
    with pytest.raises(ValueError):
        d.feed(b"z")
    with pytest.raises(ValueError):
        d.feed(b"0\r\n\r\n")


def test_chunked_limits_edges():
    # exactly at the limits is fine
    ext = b"1;" + b"a" * 4095 + b"\r\nx\r\n0\r\n\r\n"
    assert decode([ext]) == (b"x", True, b"")
    # the trailer section counts every byte after "0\r\n", final CRLF included
    name_value = b"X: " + b"a" * (65536 - 2 - 2 - 3)
    assert decode([b"0\r\n" + name_value + b"\r\n\r\n"]) == (b"", True, b"")
    with pytest.raises(ValueError):
        decode([b"0\r\n" + name_value + b"a\r\n\r\n"])


def h11_chunked(body):
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    out = []
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            out.append(bytes(ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            return b"".join(out), [tuple(h) for h in ev.headers.raw_items()]
        elif ev is h11.NEED_DATA:
            return None


ext_text = st.text(VCHAR + [" ", "\t"], max_size=12).map(latin1)


@st.composite
def chunked_bodies(draw):
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=6))
    parts = []
    for c in chunks:
        size = draw(st.sampled_from(["%x", "%X", "%04x"])) % len(c)
        ext = draw(st.one_of(st.just(b""), ext_text.map(lambda e: b";" + e)))
        parts.append(size.encode() + ext + b"\r\n" + c + b"\r\n")
    trailers = draw(st.lists(st.tuples(token, plain_value), max_size=3))
    last = b"0" + draw(st.sampled_from([b"", b";done"])) + b"\r\n"
    trailer = b"".join(n + b": " + v + b"\r\n" for n, v in trailers)
    return b"".join(parts) + last + trailer + b"\r\n", b"".join(chunks)


@settings(max_examples=300, deadline=None, database=None)
@given(body=chunked_bodies(), rest=st.binary(max_size=10), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_hypothesis_chunked(body, rest, cuts):
    encoded, plain = body
    data = encoded + rest
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    assert decode(pieces) == (plain, True, rest)
    theirs = h11_chunked(encoded)
    assert theirs is not None and theirs[0] == plain


# --------------------------------------------------------------------------
# Content-Length
# --------------------------------------------------------------------------

CONTENT_LENGTHS = [
    (b"0", 0),
    (b"1", 1),
    (b"1234567", 1234567),
    (b"007", 7),
    (b"9223372036854775807", 9223372036854775807),
    (b"00000000000000000000009223372036854775807", 9223372036854775807),
    (b"9223372036854775808", -1),
    (b"99999999999999999999", -1),
    (b"", -1),
    (b"+1", -1),
    (b"-1", -1),
    (b" 1", -1),
    (b"1 ", -1),
    (b"1,1", -1),
    (b"5, 5", -1),
    (b"1a", -1),
    (b"0x10", -1),
    (b"1\x00", -1),
    (b"\xd9\xa1", -1),  # Arabic-Indic digit one in UTF-8
]


@pytest.mark.parametrize("value,want", CONTENT_LENGTHS)
def test_content_length(value, want):
    assert eh.parse_content_length(value) == want


@settings(database=None)
@given(st.integers(0, 2**63 - 1))
def test_content_length_roundtrip(n):
    assert eh.parse_content_length(b"%d" % n) == n
