"""Python binding of edge's C HTTP/1.x parser (edge/_core/http_parser.c).

The reactor calls the C functions directly; this module is for tests, the
fuzzer and Python-level tools.  It copies nothing on the way in (the parser
reads the caller's bytes) and returns bytes slices of the input.

    >>> r = parse_request(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
    >>> r.method, r.path, r.minor_version, r.headers, r.consumed
    (b'GET', b'/', 1, [(b'Host', b'a')], 27)
    >>> parse_request(b"GET / HTTP/1.1\\r\\n") == INCOMPLETE
    True

Return codes, as in the C API: ``ERROR`` (-1), ``INCOMPLETE`` (-2),
``TOO_MANY_HEADERS`` (-3).
"""
from edge._http_cffi import ffi, lib

__all__ = [
    "ERROR",
    "INCOMPLETE",
    "TOO_MANY_HEADERS",
    "MAX_HEADERS",
    "Request",
    "Response",
    "ChunkedDecoder",
    "parse_request",
    "parse_response",
    "parse_request_spans",
    "parse_response_spans",
    "request_http_version",
    "parse_content_length",
    "set_simd",
    "simd_enabled",
]

ERROR = lib.EDGE_PARSE_ERROR
INCOMPLETE = lib.EDGE_PARSE_INCOMPLETE
TOO_MANY_HEADERS = lib.EDGE_PARSE_TOO_MANY_HEADERS
MAX_HEADERS = 100


class Request:
    __slots__ = ("method", "path", "minor_version", "headers", "consumed")

    def __init__(self, method, path, minor_version, headers, consumed):
        self.method = method
        self.path = path
        self.minor_version = minor_version
        self.headers = headers
        self.consumed = consumed

    def __repr__(self):
        return (
            f"Request(method={self.method!r}, path={self.path!r}, "
            f"minor_version={self.minor_version}, headers={self.headers!r}, "
            f"consumed={self.consumed})"
        )


class Response:
    __slots__ = ("minor_version", "status", "reason", "headers", "consumed")

    def __init__(self, minor_version, status, reason, headers, consumed):
        self.minor_version = minor_version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.consumed = consumed

    def __repr__(self):
        return (
            f"Response(minor_version={self.minor_version}, status={self.status}, "
            f"reason={self.reason!r}, headers={self.headers!r}, consumed={self.consumed})"
        )


def _as_bytes(data):
    return data if type(data) is bytes else bytes(data)


def _span(base, ptr, length):
    """(offset, length) of a pointer the parser returned into our buffer."""
    return (int(ffi.cast("uintptr_t", ptr)) - base, int(length))


def parse_request_spans(data, max_headers=MAX_HEADERS, last_len=0):
    """Low-level parse: the C return code and the fields as (offset, length).

    Returns ``(ret, fields)``; ``fields`` is None unless ``ret > 0``, else
    ``(method_span, path_span, minor_version, [(name_span, value_span), ...])``.
    Offsets are relative to the start of `data`.  Used by parse_request and
    by the fuzzer, which checks that every span lies inside the head.
    """
    data = _as_bytes(data)
    buf = ffi.from_buffer("char[]", data)
    method = ffi.new("const char **")
    method_len = ffi.new("size_t *")
    path = ffi.new("const char **")
    path_len = ffi.new("size_t *")
    minor = ffi.new("int *")
    headers = ffi.new("struct edge_header[]", max_headers)
    num = ffi.new("size_t *", max_headers)
    ret = lib.edge_parse_request(
        buf, len(data), method, method_len, path, path_len, minor, headers, num, last_len
    )
    if ret <= 0:
        return ret, None
    base = int(ffi.cast("uintptr_t", buf))
    hdrs = []
    for i in range(num[0]):
        h = headers[i]
        hdrs.append((_span(base, h.name, h.name_len), _span(base, h.value, h.value_len)))
    return ret, (
        _span(base, method[0], method_len[0]),
        _span(base, path[0], path_len[0]),
        minor[0],
        hdrs,
    )


def parse_response_spans(data, max_headers=MAX_HEADERS, last_len=0):
    """Like parse_request_spans: ``(ret, (minor, status, reason_span, headers))``."""
    data = _as_bytes(data)
    buf = ffi.from_buffer("char[]", data)
    minor = ffi.new("int *")
    status = ffi.new("int *")
    msg = ffi.new("const char **")
    msg_len = ffi.new("size_t *")
    headers = ffi.new("struct edge_header[]", max_headers)
    num = ffi.new("size_t *", max_headers)
    ret = lib.edge_parse_response(
        buf, len(data), minor, status, msg, msg_len, headers, num, last_len
    )
    if ret <= 0:
        return ret, None
    base = int(ffi.cast("uintptr_t", buf))
    hdrs = []
    for i in range(num[0]):
        h = headers[i]
        hdrs.append((_span(base, h.name, h.name_len), _span(base, h.value, h.value_len)))
    return ret, (minor[0], status[0], _span(base, msg[0], msg_len[0]), hdrs)


def _cut(data, span):
    off, n = span
    return data[off : off + n]


def parse_request(data, max_headers=MAX_HEADERS, last_len=0):
    """Parse a request head.  Returns a Request, or ERROR / INCOMPLETE /
    TOO_MANY_HEADERS.  `max_headers` is the header capacity; `last_len` is
    the C API's (length of a previous incomplete attempt, 0 if none)."""
    data = _as_bytes(data)
    ret, f = parse_request_spans(data, max_headers, last_len)
    if ret <= 0:
        return ret
    method, path, minor, hdrs = f
    return Request(
        _cut(data, method),
        _cut(data, path),
        minor,
        [(_cut(data, n), _cut(data, v)) for n, v in hdrs],
        ret,
    )


def parse_response(data, max_headers=MAX_HEADERS, last_len=0):
    """Parse a response head.  Returns a Response, or a negative code."""
    data = _as_bytes(data)
    ret, f = parse_response_spans(data, max_headers, last_len)
    if ret <= 0:
        return ret
    minor, status, reason, hdrs = f
    return Response(
        minor,
        status,
        _cut(data, reason),
        [(_cut(data, n), _cut(data, v)) for n, v in hdrs],
        ret,
    )


def request_http_version(data):
    """(major, minor) of a request-line's version, minor -1 if not received,
    or None when the line does not get that far.  For telling 505 from 400
    after parse_request returned ERROR."""
    data = _as_bytes(data)
    major = ffi.new("int *")
    minor = ffi.new("int *")
    if lib.edge_request_http_version(ffi.from_buffer("char[]", data), len(data), major, minor):
        return None
    return (major[0], minor[0])


def parse_content_length(value):
    """Content-Length value as an int, or -1 when it is not 1*DIGIT in int64."""
    value = _as_bytes(value)
    return lib.edge_parse_content_length(ffi.from_buffer("char[]", value), len(value))


class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 section 7.1).

    ``feed(data)`` returns ``(decoded, done, rest)``: the chunk data decoded
    from `data`, whether the body (trailers included) has ended, and the
    bytes after its end (only when done).  Raises ValueError on invalid
    framing; the decoder stays failed.  After the end, feed returns
    ``(b"", True, data)``.
    """

    __slots__ = ("_d",)

    def __init__(self):
        self._d = ffi.new("struct edge_chunked_decoder *")  # zeroed = start

    def feed(self, data):
        work = bytearray(data)
        buf = ffi.from_buffer("char[]", work, require_writable=True)
        size = ffi.new("size_t *", len(work))
        ret = lib.edge_decode_chunked(self._d, buf, size)
        if ret == ERROR:
            raise ValueError("invalid chunked encoding")
        n = size[0]
        if ret == INCOMPLETE:
            return bytes(work[:n]), False, b""
        return bytes(work[:n]), True, bytes(work[n : n + ret])


def set_simd(enable):
    """Force the scalar scanners (0), ask for SSE4.2 (1) or re-detect (-1).
    Returns whether SIMD is in use afterwards."""
    return lib.edge_parser_set_simd(int(enable))


def simd_enabled():
    return bool(lib.edge_parser_simd_enabled())
