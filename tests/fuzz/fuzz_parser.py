#!/usr/bin/env python3
"""atheris fuzz target for edge's HTTP/1.x parser (edge/_core/http_parser.c).

    python tests/fuzz/fuzz_parser.py -max_total_time=60

See tests/fuzz/README.md for long runs and the environment switches.  Without
corpus directories on the command line, new inputs go to a temporary
directory and tests/corpus/ seeds the run.

Every input goes through all of:
- edge_parse_request / edge_parse_response, with SSE4.2 and scalar scanners
  (must agree), against a regex reference of the same grammar that decides
  ERROR / INCOMPLETE / TOO_MANY_HEADERS and the fields exactly
  (`reference_request`, `reference_response`), and the invariants: consumed
  <= len, every reported field inside the head, values trimmed;
- the `last_len` resume shortcut against a plain reparse;
- the chunked decoder, whole and split at an input-chosen point (must agree):
  decoded + leftover never longer than the input, leftover a suffix of the
  input, and every body it accepts is decoded the same by h11;
- edge_parse_content_length against int().

Coverage of the C code: when clang is available (or EDGE_FUZZ_NATIVE=1), the
extension is rebuilt with -fsanitize=fuzzer-no-link into a cache directory and
loaded instead of the in-tree one, so libFuzzer sees the C branches.  With
EDGE_FUZZ_SANITIZE=1 that build also gets ASan and UBSan (the script re-runs
itself with the ASan runtime preloaded).  Otherwise only the Python here is
instrumented, and the reference model's branches are the feedback.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import h11  # noqa: E402

# The C return codes (edge.http is imported late in native mode, see load()).
ERROR, INCOMPLETE, TOO_MANY = -1, -2, -3
CAPS = (100, 3)  # header capacities tried on every input

eh = None  # edge.http, once loaded


# ---------------------------------------------------------------------------
# The extension under test
# ---------------------------------------------------------------------------


def find_clang():
    cc = os.environ.get("EDGE_FUZZ_CC")
    if cc:
        return cc
    for name in ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14"):
        if shutil.which(name):
            return name
    return None


def native_flags():
    flags = "-g -fsanitize=fuzzer-no-link"
    if os.environ.get("EDGE_FUZZ_SANITIZE") == "1":
        flags += ",address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    return flags


def build_native(cc):
    """Build edge._http_cffi with SanitizerCoverage; return the .so path.
    Cached by the hash of the sources and flags."""
    from edge._http_build import make_builder

    flags = native_flags()
    h = hashlib.sha256((cc + flags).encode())
    for rel in ("edge/_core/http_parser.c", "edge/_core/http_parser.h", "edge/_http_build.py"):
        with open(os.path.join(ROOT, rel), "rb") as f:
            h.update(f.read())
    outdir = os.path.join(tempfile.gettempdir(), "edge-fuzz-native-" + h.hexdigest()[:16])
    for dirpath, _, files in os.walk(outdir):
        for f in files:
            if f.startswith("_http_cffi") and f.endswith(".so"):
                return os.path.join(dirpath, f)
    saved = {k: os.environ.get(k) for k in ("CC", "CFLAGS", "LDSHARED")}
    os.environ.update(CC=cc, CFLAGS=flags, LDSHARED=cc + " -shared")
    try:
        return make_builder(ROOT).compile(tmpdir=outdir, verbose=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def choose_extension():
    """Path of a coverage-instrumented extension, or None for the in-tree one."""
    mode = os.environ.get("EDGE_FUZZ_NATIVE", "auto")
    if mode == "0":
        return None
    cc = find_clang()
    if cc is None:
        if mode == "1":
            sys.exit("EDGE_FUZZ_NATIVE=1 but no clang found (set EDGE_FUZZ_CC)")
        return None
    try:
        return build_native(cc)
    except Exception as e:  # auto mode: fall back to the plain build
        if mode == "1":
            raise
        sys.stderr.write("edge fuzz: native build failed (%s), using the plain build\n" % e)
        return None


def maybe_reexec_with_asan():
    """ASan must be in the process before Python starts: re-run with it
    preloaded."""
    if os.environ.get("EDGE_FUZZ_SANITIZE") != "1" or "asan" in os.environ.get("LD_PRELOAD", ""):
        return
    cc = find_clang()
    if cc is None:
        sys.exit("EDGE_FUZZ_SANITIZE=1 needs clang")
    runtime = subprocess.run(
        [cc, "-print-file-name=libclang_rt.asan-x86_64.so"], capture_output=True, text=True
    ).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=runtime)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


NATIVE_SO = None  # set in main()


def load():
    """Import edge.http.  A native build is loaded as edge._http_cffi; this has
    to wait until the fuzzer runs, when atheris has loaded libFuzzer, whose
    coverage symbols the instrumented extension needs (made global here)."""
    global eh
    if NATIVE_SO:
        import ctypes
        import importlib.util

        adir = os.path.dirname(atheris.__file__)
        core = [f for f in os.listdir(adir) if f.startswith("core_with_libfuzzer")][0]
        ctypes.CDLL(os.path.join(adir, core), mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)
        import edge

        spec = importlib.util.spec_from_file_location("edge._http_cffi", NATIVE_SO)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["edge._http_cffi"] = mod
        spec.loader.exec_module(mod)
        edge._http_cffi = mod
    else:
        try:
            import edge._http_cffi  # noqa: F401
        except ImportError:  # not built yet: build in place
            from edge._http_build import build_inplace

            build_inplace()
    with atheris.instrument_imports():
        import edge.http
    eh = edge.http


# ---------------------------------------------------------------------------
# Reference model: the grammar of http_parser.c as regular expressions
# ---------------------------------------------------------------------------

TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TARGET = rb"[\x21-\x7e\x80-\xff]"
FIELD = rb"[\t\x20-\x7e\x80-\xff]"
FIELDS = rb"((?:" + TCHAR + rb"+:" + FIELD + rb"*\r\n)*)\r\n"

REQUEST_HEAD = re.compile(
    rb"(?:\r\n)*(" + TCHAR + rb"+) (" + TARGET + rb"+) HTTP/1\.([0-9])\r\n" + FIELDS
)
RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.([0-9]) ([1-9][0-9][0-9])(?: (" + FIELD + rb"*))?\r\n" + FIELDS
)
FIELD_LINE = re.compile(rb"(" + TCHAR + rb"+):[ \t]*(" + FIELD + rb"*?)[ \t]*\r\n")
LEADING_CRLF = re.compile(rb"(?:\r\n)*")

# A prefix is "viable" (INCOMPLETE rather than ERROR) when some completion
# makes it a valid head.  Each parser state has one of these completions.
_TAILS = [b"", b"\n", b"\n\r\n", b"\r\n", b"\r\n\r\n", b":\r\n\r\n"]
REQUEST_COMPLETIONS = _TAILS + [
    b" / HTTP/1.1\r\n\r\n",
    b"/ HTTP/1.1\r\n\r\n",
    b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"\nGET / HTTP/1.1\r\n\r\n",
] + [b"HTTP/1.1"[k:] + b"\r\n\r\n" for k in range(8)]
_STATUS_LINE = b"HTTP/1.1 200 OK\r\n\r\n"
RESPONSE_COMPLETIONS = _TAILS + [_STATUS_LINE[k:] for k in range(len(_STATUS_LINE))]


def viable_length(data, head_re, completions):
    """Length of the longest prefix of data that some completion turns into a
    valid head (viability is prefix-closed, so binary search)."""

    def viable(n):
        p = data[:n]
        return any(head_re.match(p + c) for c in completions)

    lo, hi = 0, len(data)  # viable(lo) holds: the empty prefix is viable
    if viable(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if viable(mid):
            lo = mid
        else:
            hi = mid
    return lo


def field_lines_started(prefix, skip_crlf):
    """Field lines begun in a viable prefix (where TOO_MANY_HEADERS triggers)."""
    start = LEADING_CRLF.match(prefix).end() if skip_crlf else 0
    eol = prefix.find(b"\r\n", start)
    if eol < 0:
        return 0
    segments = prefix[eol + 2 :].split(b"\r\n")
    return sum(1 for s in segments if s and not s.startswith(b"\r"))


def headers_of(block):
    return [(m.group(1), m.group(2)) for m in FIELD_LINE.finditer(block)]


def reference_request(data, cap):
    m = REQUEST_HEAD.match(data)
    if m:
        headers = headers_of(m.group(4))
        if len(headers) > cap:
            return TOO_MANY
        return (m.group(1), m.group(2), min(int(m.group(3)), 1), headers, m.end())
    v = viable_length(data, REQUEST_HEAD, REQUEST_COMPLETIONS)
    if field_lines_started(data[:v], True) > cap:
        return TOO_MANY
    return INCOMPLETE if v == len(data) else ERROR


def reference_response(data, cap):
    m = RESPONSE_HEAD.match(data)
    if m:
        headers = headers_of(m.group(4))
        if len(headers) > cap:
            return TOO_MANY
        return (min(int(m.group(1)), 1), int(m.group(2)), m.group(3) or b"", headers, m.end())
    v = viable_length(data, RESPONSE_HEAD, RESPONSE_COMPLETIONS)
    if field_lines_started(data[:v], False) > cap:
        return TOO_MANY
    return INCOMPLETE if v == len(data) else ERROR


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

OWS = b" \t"


def check_spans(data, ret, spans):
    for off, n in spans:
        assert 0 <= off and off + n <= ret <= len(data), (off, n, ret, len(data))


def as_request(data, ret, f):
    (mo, ml), (po, pl), minor, hdrs = f
    check_spans(data, ret, [(mo, ml), (po, pl)] + [s for h in hdrs for s in h])
    assert ml > 0 and pl > 0 and minor in (0, 1)
    headers = [(data[a : a + b], data[c : c + d]) for (a, b), (c, d) in hdrs]
    for name, value in headers:
        assert name and (not value or (value[:1] not in OWS and value[-1:] not in OWS))
    return (data[mo : mo + ml], data[po : po + pl], minor, headers, ret)


def as_response(data, ret, f):
    minor, status, (ro, rl), hdrs = f
    check_spans(data, ret, [(ro, rl)] + [s for h in hdrs for s in h])
    assert minor in (0, 1) and 100 <= status <= 999
    headers = [(data[a : a + b], data[c : c + d]) for (a, b), (c, d) in hdrs]
    return (minor, status, data[ro : ro + rl], headers, ret)


def parse_both_ways(fn, data, cap, last_len=0):
    """Parse with SSE4.2 (when available) and scalar; they must agree."""
    results = []
    for mode in (1, 0):
        if eh.set_simd(mode) != mode:
            continue
        results.append(fn(data, max_headers=cap, last_len=last_len))
    eh.set_simd(-1)
    assert all(r == results[0] for r in results), results
    return results[0]


def check_head(data, spans_fn, convert, reference, split):
    for cap in CAPS:
        ret, f = parse_both_ways(spans_fn, data, cap)
        assert ret in (ERROR, INCOMPLETE, TOO_MANY) or 0 < ret <= len(data), ret
        ours = convert(data, ret, f) if ret > 0 else ret
        want = reference(data, cap)
        assert ours == want, (data, cap, ours, want)

    # last_len: resuming after an INCOMPLETE prefix must give the full parse,
    # or INCOMPLETE while no LF has arrived since.
    k = split % (len(data) + 1)
    if spans_fn(data[:k])[0] == INCOMPLETE:
        full = spans_fn(data)
        resumed = parse_both_ways(spans_fn, data, CAPS[0], last_len=k)
        if k and b"\n" not in data[k:]:
            assert resumed[0] == INCOMPLETE, (data, k, resumed)
        else:
            assert resumed == full, (data, k, resumed, full)


def chunked(pieces):
    d = eh.ChunkedDecoder()
    out, rest, done = [], b"", False
    try:
        for p in pieces:
            if done:
                _, still, more = d.feed(p)
                assert still
                rest += more
                continue
            got, done, rest = d.feed(p)
            out.append(got)
    except ValueError:
        return "error"
    return b"".join(out), done, rest


def h11_chunked(encoded):
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded)
    out = []
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as e:
            return "h11 error: %s" % e
        if isinstance(ev, h11.Data):
            out.append(bytes(ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            return b"".join(out)
        elif ev is h11.NEED_DATA:
            return "h11 incomplete"


H11_SEMANTIC = ("Content-Length", "Transfer-Encoding")


def without_long_zero_runs(encoded):
    """h11 refuses a chunk size of more than 20 hex digits; edge, like nginx,
    counts the value, so `000...04e` is 0x4e (a deliberate difference, see
    docs/http.md).  Give h11 the same sizes with their leading zeros cut, so
    it still judges everything else.  Only a line that starts a chunk (at the
    start, or after a chunk's data and its CRLF) is a size line, so walk the
    chunks rather than rewrite every run of zeros."""
    out = bytearray()
    pos = 0
    while True:
        m = re.compile(rb"(0*)([0-9A-Fa-f]+)").match(encoded, pos)
        if m is None:
            break
        digits = m.group(2)
        if len(m.group(1)) + len(digits) > 20:
            # keep one zero when the size is zero, drop the rest
            out += digits if digits.strip(b"0") else b"0"
        else:
            out += m.group(0)
        pos = m.end()
        line_end = encoded.find(b"\r\n", pos)
        if line_end < 0:
            break
        size = int(digits, 16)
        out += encoded[pos : line_end + 2]
        pos = line_end + 2
        if size == 0:
            break  # the trailers and the final CRLF follow as they are
        out += encoded[pos : pos + size + 2]
        pos += size + 2
    out += encoded[pos:]
    return bytes(out)


def check_chunked(data, split):
    whole = chunked([data])
    k = split % (len(data) + 1)
    assert chunked([data[:k], data[k:]]) == whole, (data, k)
    if whole == "error":
        return
    decoded, done, rest = whole
    assert len(decoded) + len(rest) <= len(data)
    if not done:
        assert rest == b""
        return
    assert data.endswith(rest)
    encoded = data[: len(data) - len(rest)]
    theirs = h11_chunked(without_long_zero_runs(encoded))
    if isinstance(theirs, str) and any(w in theirs for w in H11_SEMANTIC):
        return  # h11 validates trailer fields such as Content-Length; we don't
    assert theirs == decoded, (encoded, decoded, theirs)


def check_content_length(data):
    value = data[:24]
    want = int(value) if re.fullmatch(rb"[0-9]+", value) and int(value) < 2**63 else -1
    assert eh.parse_content_length(value) == want, value


def TestOneInput(data):
    if eh is None:
        load()
    split = data[0] * 7 + 3 if data else 0
    check_head(data, eh.parse_request_spans, as_request, reference_request, split)
    check_head(data, eh.parse_response_spans, as_response, reference_response, split)
    check_chunked(data, split)
    check_content_length(data)


# Python-level coverage of the reference model and the checks: the grammar's
# branches in the reference are feedback even without C coverage.
for _f in (
    viable_length, field_lines_started, headers_of, reference_request, reference_response,
    check_spans, as_request, as_response, check_head, chunked, check_chunked,
):
    globals()[_f.__name__] = atheris.instrument_func(_f)


# ---------------------------------------------------------------------------
# --c: the same C code under libFuzzer directly, with ASan and UBSan
# ---------------------------------------------------------------------------

# A plain libFuzzer target for the C API (no Python), built with
# clang -fsanitize=fuzzer,address,undefined: full C coverage and memory
# checking at once, which the Python target can't have together (see
# README.md).  It checks the invariants that need no reference model.
C_HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "http_parser.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "edge fuzz: check failed: %s (line %d)\n", #c, __LINE__); abort(); } } while (0)
#define MAXH 100

struct req { int ret, minor; size_t mo, ml, po, pl, n; size_t h[MAXH][4]; };

/* Parse a request into offsets, so results of different calls compare. */
static struct req request(const char *buf, size_t len, size_t cap, size_t last_len)
{
    struct req r; struct edge_header h[MAXH]; const char *m = 0, *p = 0; size_t i;
    memset(&r, 0, sizeof r);
    r.n = cap;
    r.ret = edge_parse_request(buf, len, &m, &r.ml, &p, &r.pl, &r.minor, h, &r.n, last_len);
    if (r.ret <= 0) { int ret = r.ret; CHECK(r.n == cap); memset(&r, 0, sizeof r); r.ret = ret; return r; }
    CHECK((size_t)r.ret <= len && r.n <= cap && (r.minor == 0 || r.minor == 1));
    CHECK(m >= buf && m + r.ml <= buf + r.ret && r.ml > 0);
    CHECK(p >= buf && p + r.pl <= buf + r.ret && r.pl > 0);
    r.mo = (size_t)(m - buf); r.po = (size_t)(p - buf);
    for (i = 0; i < r.n; i++) {
        CHECK(h[i].name >= buf && h[i].name + h[i].name_len <= buf + r.ret && h[i].name_len > 0);
        CHECK(h[i].value >= buf && h[i].value + h[i].value_len <= buf + r.ret);
        r.h[i][0] = (size_t)(h[i].name - buf); r.h[i][1] = h[i].name_len;
        r.h[i][2] = (size_t)(h[i].value - buf); r.h[i][3] = h[i].value_len;
    }
    return r;
}

struct resp { int ret, minor, status; size_t ro, rl, n; size_t h[MAXH][4]; };

static struct resp response(const char *buf, size_t len, size_t cap, size_t last_len)
{
    struct resp r; struct edge_header h[MAXH]; const char *msg = 0; size_t i;
    memset(&r, 0, sizeof r);
    r.n = cap;
    r.ret = edge_parse_response(buf, len, &r.minor, &r.status, &msg, &r.rl, h, &r.n, last_len);
    if (r.ret <= 0) { int ret = r.ret; CHECK(r.n == cap); memset(&r, 0, sizeof r); r.ret = ret; return r; }
    CHECK((size_t)r.ret <= len && r.n <= cap && r.status >= 100 && r.status <= 999);
    CHECK(msg >= buf && msg + r.rl <= buf + r.ret);
    r.ro = (size_t)(msg - buf);
    for (i = 0; i < r.n; i++) {
        CHECK(h[i].name >= buf && h[i].name + h[i].name_len <= buf + r.ret && h[i].name_len > 0);
        CHECK(h[i].value >= buf && h[i].value + h[i].value_len <= buf + r.ret);
        r.h[i][0] = (size_t)(h[i].name - buf); r.h[i][1] = h[i].name_len;
        r.h[i][2] = (size_t)(h[i].value - buf); r.h[i][3] = h[i].value_len;
    }
    return r;
}

/* Decode data in two pieces cut at k; out gets decoded bytes then leftover. */
static ssize_t chunked(const uint8_t *data, size_t size, size_t k, char *out, size_t *outlen, size_t *restlen)
{
    struct edge_chunked_decoder d; char *piece; size_t n, parts[2][2] = {{0, k}, {k, size}}; int i;
    ssize_t ret = -2;
    memset(&d, 0, sizeof d);
    *outlen = 0; *restlen = 0;
    for (i = 0; i < 2; i++) {
        size_t len = parts[i][1] - parts[i][0];
        piece = malloc(len ? len : 1);  /* exact size: ASan sees overruns */
        memcpy(piece, data + parts[i][0], len);
        n = len;
        if (ret >= 0) {  /* already done: all of it is leftover */
            ssize_t again = edge_decode_chunked(&d, piece, &n);
            CHECK(again == (ssize_t)len && n == 0);
            memcpy(out + *outlen + *restlen, piece, len); *restlen += len;
            free(piece);
            continue;
        }
        ret = edge_decode_chunked(&d, piece, &n);
        CHECK(ret >= -2 && n <= len && (ret < 0 || n + (size_t)ret <= len));
        if (ret == -1) { free(piece); return -1; }
        memcpy(out + *outlen, piece, n); *outlen += n;
        if (ret >= 0) { memcpy(out + *outlen, piece + n, (size_t)ret); *restlen = (size_t)ret; }
        free(piece);
    }
    return ret >= 0 ? 0 : ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    size_t caps[2] = {MAXH, 3}, c, k = size ? (size_t)data[0] * 7 % (size + 1) : 0;
    memcpy(buf, data, size);

    for (c = 0; c < 2; c++) {
        struct req a, b; struct resp x, y;
        edge_parser_set_simd(1);
        a = request(buf, size, caps[c], 0);
        x = response(buf, size, caps[c], 0);
        edge_parser_set_simd(0);
        b = request(buf, size, caps[c], 0);
        y = response(buf, size, caps[c], 0);
        CHECK(memcmp(&a, &b, sizeof a) == 0 && memcmp(&x, &y, sizeof x) == 0);
        CHECK(a.ret >= -3 && x.ret >= -3);
        if (a.ret > 0) CHECK(request(buf, (size_t)a.ret - 1, caps[c], 0).ret == -2);
        if (x.ret > 0) CHECK(response(buf, (size_t)x.ret - 1, caps[c], 0).ret == -2);
        /* resuming after an incomplete prefix of length k */
        if (k && request(buf, k, caps[c], 0).ret == -2) {
            struct req r = request(buf, size, caps[c], k);
            if (memchr(buf + k, '\n', size - k)) CHECK(memcmp(&r, &a, sizeof r) == 0);
            else CHECK(r.ret == -2);
        }
        if (k && response(buf, k, caps[c], 0).ret == -2) {
            struct resp r = response(buf, size, caps[c], k);
            if (memchr(buf + k, '\n', size - k)) CHECK(memcmp(&r, &x, sizeof r) == 0);
            else CHECK(r.ret == -2);
        }
    }
    edge_parser_set_simd(-1);

    {   /* chunked: whole and split must agree */
        char *o1 = malloc(size + 1), *o2 = malloc(size + 1);
        size_t l1, r1, l2, r2;
        ssize_t s1 = chunked(data, size, size, o1, &l1, &r1);
        ssize_t s2 = chunked(data, size, k, o2, &l2, &r2);
        CHECK(s1 == s2);
        if (s1 != -1) {
            CHECK(l1 == l2 && r1 == r2 && memcmp(o1, o2, l1 + r1) == 0);
            CHECK(l1 + r1 <= size);
            if (s1 == 0) CHECK(memcmp(o1 + l1, data + size - r1, r1) == 0);  /* leftover is the tail */
        }
        free(o1); free(o2);
    }

    {   /* Content-Length against a plain loop */
        size_t n = size < 24 ? size : 24, i;
        int64_t want = n ? 0 : -1;
        for (i = 0; i < n && want >= 0; i++) {
            unsigned dgt = (unsigned)data[i] - '0';
            if (dgt > 9 || want > (INT64_MAX - (int64_t)dgt) / 10) want = -1;
            else want = want * 10 + (int64_t)dgt;
        }
        CHECK(edge_parse_content_length(buf, n) == want);
    }
    free(buf);
    return 0;
}
"""


def run_c_harness(args):
    """Build the C harness with clang (fuzzer + ASan + UBSan) and exec it."""
    cc = find_clang()
    if cc is None:
        sys.exit("--c needs clang (apt-get install clang, or set EDGE_FUZZ_CC)")
    core = os.path.join(ROOT, "edge", "_core")
    h = hashlib.sha256((cc + C_HARNESS).encode())
    for name in ("http_parser.c", "http_parser.h"):
        with open(os.path.join(core, name), "rb") as f:
            h.update(f.read())
    outdir = os.path.join(tempfile.gettempdir(), "edge-fuzz-c-" + h.hexdigest()[:16])
    exe = os.path.join(outdir, "fuzz_http_parser")
    if not os.path.exists(exe):
        os.makedirs(outdir, exist_ok=True)
        src = os.path.join(outdir, "harness.c")
        with open(src, "w") as f:
            f.write(C_HARNESS)
        subprocess.run(
            [cc, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined",
             "-I", core, src, os.path.join(core, "http_parser.c"), "-o", exe + ".tmp"],
            check=True,
        )
        os.replace(exe + ".tmp", exe)
    sys.stderr.write("edge fuzz: C harness %s\n" % exe)
    os.execv(exe, [exe] + args)


def with_default_corpus(args):
    if not any(not a.startswith("-") for a in args):
        # libFuzzer writes new inputs into the first directory: a scratch one,
        # with the checked-in corpus as read-only seeds.
        args = args + [tempfile.mkdtemp(prefix="edge-fuzz-"), os.path.join(ROOT, "tests", "corpus")]
    return args


def main(argv):
    global NATIVE_SO
    if "--c" in argv[1:]:
        run_c_harness(with_default_corpus([a for a in argv[1:] if a != "--c"]))
    maybe_reexec_with_asan()
    NATIVE_SO = choose_extension()
    sys.stderr.write("edge fuzz: extension %s\n" % (NATIVE_SO or "in-tree (no C coverage)"))
    if not NATIVE_SO:
        load()
    atheris.Setup([argv[0]] + with_default_corpus(argv[1:]), TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
