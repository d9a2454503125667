# Access logs: records formatted in C from a compiled log_format, written to files through
# a per-worker buffer, or pushed into the worker's ring in shared memory for the control
# process to ship (syslog, HTTP, Redis, Kafka). A request never waits on a remote sink:
# the ring drops its oldest records when full, and counts them.
#
# Escaping (log_format ... escape=):
#   default  `"`, `\`, bytes below 0x20 and from 0x7f up become \xHH (nginx's rule);
#            a variable with no value is written as "-"
#   json     JSON string escaping (nginx's), plus: bytes that are not valid UTF-8 become
#            \u00HH, so a record is always valid JSON whatever a client sent; a variable
#            with no value is written as nothing
#   none     bytes as they are

DEF ESC_DEFAULT = 0
DEF ESC_JSON = 1
DEF ESC_NONE = 2

ESCAPES = {"default": ESC_DEFAULT, "json": ESC_JSON, "none": ESC_NONE}

cdef Buf g_record          # the record being formatted
cdef Buf g_value           # one variable's value, before escaping
cdef bint g_log_bufs_ready = False
cdef int g_pid = 0
cdef uint64_t g_rng[2]     # xorshift128+ state for $request_id, seeded per worker
cdef char g_time_local[64]
cdef size_t g_time_local_len = 0
cdef char g_time_iso[64]
cdef size_t g_time_iso_len = 0
cdef time_t g_log_time_second = 0


cdef int log_buffers_init() except -1:
    global g_log_bufs_ready
    if not g_log_bufs_ready:
        buf_init(&g_record, 4096)
        buf_init(&g_value, 1024)
        g_log_bufs_ready = True
    return 0


def seed_worker():
    """Per-process state: the pid for $pid, and a fresh random seed for $request_id
    (called in each worker after fork, so no two workers make the same IDs)."""
    global g_pid
    import os
    g_pid = os.getpid()
    seed = os.urandom(16)
    g_rng[0] = int.from_bytes(seed[:8], "little") | 1
    g_rng[1] = int.from_bytes(seed[8:], "little") | 2
    log_buffers_init()


cdef inline uint64_t rng_next() noexcept nogil:
    cdef uint64_t s1 = g_rng[0]
    cdef uint64_t s0 = g_rng[1]
    g_rng[0] = s0
    s1 ^= s1 << 23
    g_rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
    return g_rng[1] + s0


cdef void update_log_times(time_t sec) noexcept nogil:
    """$time_local and $time_iso8601, rebuilt once a second."""
    global g_log_time_second, g_time_local_len, g_time_iso_len
    cdef tm t
    cdef char zone[8]
    if sec == g_log_time_second:
        return
    g_log_time_second = sec
    localtime_r(&sec, &t)
    g_time_local_len = strftime(g_time_local, 64, "%d/%b/%Y:%H:%M:%S %z", &t)
    g_time_iso_len = strftime(g_time_iso, 64, "%Y-%m-%dT%H:%M:%S", &t)
    strftime(zone, 8, "%z", &t)        # +hhmm; ISO 8601 wants +hh:mm
    g_time_iso[g_time_iso_len] = zone[0]
    g_time_iso[g_time_iso_len + 1] = zone[1]
    g_time_iso[g_time_iso_len + 2] = zone[2]
    g_time_iso[g_time_iso_len + 3] = 58
    g_time_iso[g_time_iso_len + 4] = zone[3]
    g_time_iso[g_time_iso_len + 5] = zone[4]
    g_time_iso_len += 6


# ---- files -----------------------------------------------------------------------------------

cdef class LogFile:
    """One access log file in this worker, shared by every access_log naming its path.
    Records are written whole with O_APPEND, so workers never interleave inside a line."""
    cdef readonly str path
    cdef int fd
    cdef Buf buf
    cdef readonly size_t buffer_size    # 0: one write() per record, as nginx without buffer=
    cdef int64_t flush_ms
    cdef int64_t first_ms               # when the oldest buffered record came
    cdef readonly int64_t write_errors

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        buf_free(&self.buf)

    def open(self):
        import os
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if self.buffer_size and self.buf.data == NULL:
            buf_init(&self.buf, self.buffer_size + 4096)

    def reopen(self):
        """USR1 (`edge -s reopen`): write what is buffered, then start a new file at the
        path (after a log rotation renamed the old one)."""
        import os
        self.flush()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if self.fd >= 0:
            close(self.fd)
        self.fd = fd

    cdef void write_record(self, const char *p, size_t n) noexcept:
        if self.buffer_size == 0:
            self.write_out(p, n)
            return
        if buf_len(&self.buf) + n > self.buffer_size:
            self.flush()
            if n > self.buffer_size:
                self.write_out(p, n)
                return
        if buf_len(&self.buf) == 0:
            self.first_ms = g_now
        buf_append(&self.buf, p, n)

    cdef void write_out(self, const char *p, size_t n) noexcept:
        cdef ssize_t r
        while n > 0 and self.fd >= 0:
            r = write(self.fd, p, n)
            if r < 0:
                if errno == EINTR:
                    continue
                self.write_errors += 1      # a full disk loses records, never the worker
                return
            p += r
            n -= <size_t>r

    cpdef flush(self):
        if buf_len(&self.buf):
            self.write_out(self.buf.data + self.buf.start, buf_len(&self.buf))
            buf_reset(&self.buf)

    cdef void flush_if_due(self) noexcept:
        if buf_len(&self.buf) and g_now - self.first_ms >= self.flush_ms:
            self.flush()


cdef dict g_log_files = {}      # path -> LogFile, in this process
cdef list g_buffered_files = []


def log_file(str path, size_t buffer_size=0, double flush=1.0):
    """The LogFile for `path` in this process (the largest buffer asked for wins)."""
    cdef LogFile f = g_log_files.get(path)
    if f is None:
        f = LogFile.__new__(LogFile)
        f.path = path
        f.flush_ms = <int64_t>(flush * 1000)
        g_log_files[path] = f
    if buffer_size > f.buffer_size:
        f.flush()
        buf_free(&f.buf)
        f.buffer_size = buffer_size
        f.flush_ms = <int64_t>(flush * 1000)
        if f not in g_buffered_files:
            g_buffered_files.append(f)
    return f


cdef void flush_due_logs() noexcept:
    cdef LogFile f
    for f in g_buffered_files:
        f.flush_if_due()


def flush_logs():
    for f in g_log_files.values():
        (<LogFile>f).flush()


def reopen_logs():
    errors = []
    for f in g_log_files.values():
        try:
            (<LogFile>f).reopen()
        except OSError as e:
            errors.append('reopen() "%s" failed (%d: %s)' % ((<LogFile>f).path, e.errno, e.strerror))
    return errors


# ---- the log handler -------------------------------------------------------------------------

cdef class AccessLog(LogHandler):
    """One `access_log` directive: a format, and a file or a remote sink."""
    cdef readonly Template fmt
    cdef readonly int escape
    cdef readonly LogFile file
    cdef readonly str sink
    cdef int64_t sink_series
    cdef readonly Template condition

    def __init__(self, Template fmt, str escape="default", LogFile file=None, str sink=None,
                 Template condition=None):
        self.name = "access_log"
        self.fmt = fmt
        self.escape = ESCAPES[escape]
        self.file = file
        self.sink = sink
        self.sink_series = -1
        self.condition = condition

    def attach(self):
        log_buffers_init()
        if self.file is not None:
            self.file.open()
        if self.sink is not None:
            self.sink_series = series_for(SK_SINK, [self.sink])

    cdef int log(self, Client c) except -1:
        cdef size_t i
        if self.condition is not None:
            buf_reset(&g_value)
            eval_template(self.condition, c, &g_value)
            if buf_len(&g_value) == 0 or (buf_len(&g_value) == 1 and g_value.data[g_value.start] == 48):
                return 0        # if=$var: no record when the value is empty or "0"
        buf_reset(&g_record)
        eval_log_template(self.fmt, self.escape, c, &g_record)
        if self.file is not None:
            buf_append_str(&g_record, "\n")
            self.file.write_record(g_record.data, buf_len(&g_record))
        else:
            ring_push(g_record.data, buf_len(&g_record), self.sink_series)
        return 0

    def __repr__(self):
        return "AccessLog(%r)" % (self.file.path if self.file is not None else self.sink)


cdef void eval_log_template(Template t, int escape, Client c, Buf *out) noexcept:
    cdef int k
    cdef Segment *s
    cdef bint found
    for k in range(t.nsegs):
        s = &t.segs[k]
        if s.var == 0:
            buf_append(out, s.text, s.len)
            continue
        buf_reset(&g_value)
        found = append_variable(s, c, &g_value)
        if not found:
            if escape != ESC_JSON:
                buf_append_str(out, "-")
            continue
        if escape == ESC_NONE:
            buf_append(out, g_value.data, buf_len(&g_value))
        elif escape == ESC_JSON:
            append_json_escaped(out, g_value.data, buf_len(&g_value))
        else:
            append_log_escaped(out, g_value.data, buf_len(&g_value))


cdef const char *HEX_UPPER = "0123456789ABCDEF"
cdef const char *HEX_LOWER = "0123456789abcdef"


cdef void append_log_escaped(Buf *out, const char *p, size_t n) noexcept:
    cdef size_t i, start = 0
    cdef unsigned char ch
    cdef char esc[4]
    for i in range(n):
        ch = <unsigned char>p[i]
        if ch < 0x20 or ch >= 0x7f or ch == 34 or ch == 92:
            buf_append(out, p + start, i - start)
            esc[0] = 92
            esc[1] = 120
            esc[2] = HEX_UPPER[ch >> 4]
            esc[3] = HEX_UPPER[ch & 15]
            buf_append(out, esc, 4)
            start = i + 1
    buf_append(out, p + start, n - start)


cdef inline int utf8_sequence(const unsigned char *p, size_t n) noexcept nogil:
    """Length of the valid UTF-8 sequence at p (2..4), or 0 (RFC 3629: no overlongs,
    no surrogates, nothing above U+10FFFF)."""
    cdef unsigned char c = p[0]
    if c >= 0xc2 and c <= 0xdf:
        if n >= 2 and (p[1] & 0xc0) == 0x80:
            return 2
        return 0
    if c >= 0xe0 and c <= 0xef:
        if n < 3 or (p[1] & 0xc0) != 0x80 or (p[2] & 0xc0) != 0x80:
            return 0
        if c == 0xe0 and p[1] < 0xa0:
            return 0
        if c == 0xed and p[1] >= 0xa0:
            return 0
        return 3
    if c >= 0xf0 and c <= 0xf4:
        if n < 4 or (p[1] & 0xc0) != 0x80 or (p[2] & 0xc0) != 0x80 or (p[3] & 0xc0) != 0x80:
            return 0
        if c == 0xf0 and p[1] < 0x90:
            return 0
        if c == 0xf4 and p[1] >= 0x90:
            return 0
        return 4
    return 0


cdef void append_json_escaped(Buf *out, const char *p, size_t n) noexcept:
    cdef size_t i = 0, start = 0
    cdef unsigned char ch
    cdef int seq
    cdef char esc[6]
    while i < n:
        ch = <unsigned char>p[i]
        if ch >= 0x20 and ch != 34 and ch != 92 and ch < 0x80:
            i += 1
            continue
        if ch >= 0x80:
            seq = utf8_sequence(<const unsigned char *>p + i, n - i)
            if seq:
                i += seq
                continue
        buf_append(out, p + start, i - start)
        if ch == 34:
            buf_append(out, "\\\"", 2)
        elif ch == 92:
            buf_append(out, "\\\\", 2)
        elif ch == 10:
            buf_append(out, "\\n", 2)
        elif ch == 13:
            buf_append(out, "\\r", 2)
        elif ch == 9:
            buf_append(out, "\\t", 2)
        elif ch == 8:
            buf_append(out, "\\b", 2)
        elif ch == 12:
            buf_append(out, "\\f", 2)
        else:
            esc[0] = 92
            esc[1] = 117
            esc[2] = 48
            esc[3] = 48
            esc[4] = HEX_LOWER[ch >> 4]
            esc[5] = HEX_LOWER[ch & 15]
            buf_append(out, esc, 6)
        i += 1
        start = i
    buf_append(out, p + start, n - start)


# ---- request facts ---------------------------------------------------------------------------

cdef void append_seconds(Buf *out, int64_t us) noexcept:
    """Seconds with millisecond resolution, as nginx prints times ("0.004")."""
    cdef int64_t ms
    if us < 0:
        us = 0
    ms = us // 1000
    buf_append_uint(out, <uint64_t>(ms // 1000))
    buf_append_str(out, ".")
    ms = ms % 1000
    buf_append(out, "000" if ms == 0 else ("00" if ms < 10 else ("0" if ms < 100 else "")),
               3 if ms == 0 else (2 if ms < 10 else (1 if ms < 100 else 0)))
    if ms:
        buf_append_uint(out, <uint64_t>ms)


cdef const char *B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


cdef inline int b64_value(unsigned char ch) noexcept nogil:
    if ch >= 65 and ch <= 90:
        return ch - 65
    if ch >= 97 and ch <= 122:
        return ch - 71
    if ch >= 48 and ch <= 57:
        return ch + 4
    if ch == 43:
        return 62
    if ch == 47:
        return 63
    return -1


cdef bint append_remote_user(Client c, Buf *out) noexcept:
    """The user name of HTTP Basic authentication (the part before ':')."""
    cdef size_t i, j
    cdef edge_header *h
    cdef const char *v
    cdef size_t n
    cdef uint32_t acc = 0
    cdef int bits = 0, d
    cdef char ch
    cdef size_t mark = out.end
    for i in range(c.nheaders):
        h = &c.headers[i]
        if not name_is(h.name, h.name_len, "authorization", 13):
            continue
        v = h.value
        n = h.value_len
        if n < 6 or strncasecmp(v, "basic ", 6) != 0:
            return False
        for j in range(6, n):
            if v[j] == 61 or v[j] == 32:        # '=' padding, trailing space
                break
            d = b64_value(<unsigned char>v[j])
            if d < 0:
                out.end = mark
                return False
            acc = (acc << 6) | <uint32_t>d
            bits += 6
            if bits >= 8:
                bits -= 8
                ch = <char>((acc >> bits) & 0xff)
                if ch == 58:
                    return True
                buf_append(out, &ch, 1)
        out.end = mark
        return False        # no ':': not valid Basic credentials
    return False


cdef bint append_query_arg(Client c, const char *name, size_t nlen, Buf *out) noexcept:
    """$arg_NAME: the raw value of the first matching argument (names compare
    case-insensitively, as nginx's)."""
    cdef const char *p = c.args
    cdef const char *end = c.args + c.args_len
    cdef const char *amp
    cdef const char *eq
    if not c.has_args:
        return False
    while p < end:
        amp = <const char *>memchr(p, 38, <size_t>(end - p))
        if amp == NULL:
            amp = end
        eq = <const char *>memchr(p, 61, <size_t>(amp - p))
        if eq != NULL and <size_t>(eq - p) == nlen and strncasecmp(p, name, nlen) == 0:
            buf_append(out, eq + 1, <size_t>(amp - eq - 1))
            return True
        if eq == NULL and <size_t>(amp - p) == nlen and strncasecmp(p, name, nlen) == 0:
            return True
        p = amp + 1
    return False


cdef bint append_cookie(Client c, const char *name, size_t nlen, Buf *out) noexcept:
    cdef size_t i
    cdef edge_header *h
    cdef const char *p
    cdef const char *end
    cdef const char *semi
    cdef const char *eq
    for i in range(c.nheaders):
        h = &c.headers[i]
        if not name_is(h.name, h.name_len, "cookie", 6):
            continue
        p = h.value
        end = h.value + h.value_len
        while p < end:
            while p < end and (p[0] == 32 or p[0] == 59):
                p += 1
            semi = <const char *>memchr(p, 59, <size_t>(end - p))
            if semi == NULL:
                semi = end
            eq = <const char *>memchr(p, 61, <size_t>(semi - p))
            if eq != NULL and <size_t>(eq - p) == nlen and memcmp(p, name, nlen) == 0:
                buf_append(out, eq + 1, <size_t>(semi - eq - 1))
                return True
            p = semi + 1
    return False


cdef bint append_sent_header(Client c, const char *name, size_t nlen, Buf *out) noexcept:
    """$sent_http_NAME: from the copy of the response head edge wrote."""
    cdef const char *p = c.rh.data + c.rh.start
    cdef const char *end = p + buf_len(&c.rh)
    cdef const char *nl
    cdef const char *colon
    cdef const char *v
    cdef const char *ve
    cdef bint found = False
    if buf_len(&c.rh) == 0:
        return False
    nl = <const char *>memchr(p, 10, <size_t>(end - p))     # skip the status line
    if nl == NULL:
        return False
    p = nl + 1
    while p < end:
        nl = <const char *>memchr(p, 10, <size_t>(end - p))
        if nl == NULL:
            nl = end
        colon = <const char *>memchr(p, 58, <size_t>(nl - p))
        if colon != NULL and <size_t>(colon - p) == nlen and strncasecmp(p, name, nlen) == 0:
            v = colon + 1
            while v < nl and v[0] == 32:
                v += 1
            ve = nl
            while ve > v and (ve[-1] == 13 or ve[-1] == 32):
                ve -= 1
            if found:
                buf_append_str(out, ", ")
            buf_append(out, v, <size_t>(ve - v))
            found = True
        p = nl + 1
    return found


cdef void ensure_request_id(Client c) noexcept:
    """$request_id: 16 random bytes as 32 hex digits, made on first use."""
    cdef uint64_t a, b
    cdef int i
    if c.request_id_len:
        return
    a = rng_next()
    b = rng_next()
    for i in range(16):
        c.request_id[i] = HEX_LOWER[(a >> (60 - 4 * i)) & 15]
        c.request_id[16 + i] = HEX_LOWER[(b >> (60 - 4 * i)) & 15]
    c.request_id_len = 32


cdef bint append_fact(Segment *s, Client c, Buf *out) noexcept:
    """The variables added for logs (see values.pyx); False when the value does not
    exist for this request (logged as "-")."""
    cdef int v = s.var
    cdef int k
    cdef UpTry *t
    cdef Upstream ups
    if v == VAR_REMOTE_USER:
        return append_remote_user(c, out)
    elif v == VAR_TIME_LOCAL:
        buf_append(out, g_time_local, g_time_local_len)
    elif v == VAR_TIME_ISO8601:
        buf_append(out, g_time_iso, g_time_iso_len)
    elif v == VAR_MSEC:
        buf_append_uint(out, <uint64_t>(g_real_ms // 1000))
        buf_append_str(out, ".")
        k = <int>(g_real_ms % 1000)
        if k < 100:
            buf_append_str(out, "0")
        if k < 10:
            buf_append_str(out, "0")
        buf_append_uint(out, <uint64_t>k)
    elif v == VAR_REQUEST:
        if not c.parsed:
            if c.raw_line_len == 0:
                return False
            buf_append(out, c.raw_line, c.raw_line_len)
            return True
        buf_append(out, c.method, c.method_len)
        buf_append_str(out, " ")
        buf_append(out, c.raw_target, c.raw_target_len)
        buf_append_str(out, " HTTP/1.1" if c.minor == 1 else " HTTP/1.0")
    elif v == VAR_ARG:
        return append_query_arg(c, s.text, s.len, out)
    elif v == VAR_COOKIE:
        return append_cookie(c, s.text, s.len, out)
    elif v == VAR_SENT_HTTP:
        return append_sent_header(c, s.text, s.len, out)
    elif v == VAR_STATUS:
        if c.status < 100:
            buf_append_str(out, "000")
        else:
            buf_append_uint(out, <uint64_t>c.status)
    elif v == VAR_BODY_BYTES_SENT:
        buf_append_uint(out, <uint64_t>c.body_bytes_sent())
    elif v == VAR_BYTES_SENT:
        buf_append_uint(out, <uint64_t>c.bytes_sent())
    elif v == VAR_REQUEST_LENGTH:
        buf_append_uint(out, <uint64_t>(c.head_len + c.body_raw))
    elif v == VAR_REQUEST_TIME:
        append_seconds(out, g_now_us - c.start_us)
    elif v >= VAR_UPSTREAM_ADDR and v <= VAR_UPSTREAM_RESPONSE_TIME:
        if c.ntries == 0 or c.loc is None or c.ups is None:
            return False
        ups = c.ups
        for k in range(c.ntries):
            t = &c.tries_log[k]
            if k:
                buf_append_str(out, ", ")
            if v == VAR_UPSTREAM_ADDR:
                buf_append_bytes(out, <bytes>ups.peer_names_b[t.peer])
            elif v == VAR_UPSTREAM_STATUS:
                if t.status:
                    buf_append_uint(out, <uint64_t>t.status)
                else:
                    buf_append_str(out, "-")    # no response: the client left first
            elif v == VAR_UPSTREAM_CONNECT_TIME:
                if t.connect_us < 0:
                    buf_append_str(out, "-")
                else:
                    append_seconds(out, t.connect_us)
            elif v == VAR_UPSTREAM_HEADER_TIME:
                if t.header_us < 0:
                    buf_append_str(out, "-")
                else:
                    append_seconds(out, t.header_us)
            else:
                append_seconds(out, t.response_us)
    elif v == VAR_CONNECTION:
        buf_append_uint(out, <uint64_t>c.conn_serial)
    elif v == VAR_CONNECTION_REQUESTS:
        buf_append_uint(out, <uint64_t>c.req_number)
    elif v == VAR_PID:
        buf_append_uint(out, <uint64_t>g_pid)
    elif v == VAR_REQUEST_ID:
        ensure_request_id(c)
        buf_append(out, c.request_id, c.request_id_len)
    elif v >= VAR_SSL_PROTOCOL:
        return append_tls_variable(v, c, out)
    elif v >= VAR_CONSUMER:
        return append_consumer_variable(s, c, out)
    elif v == VAR_ROUTE:
        if c.loc is None:
            return False
        buf_append_bytes(out, c.loc.route_b)
    return True


# ---- request IDs -------------------------------------------------------------------------------

cdef bint sane_request_id(const char *p, size_t n) noexcept:
    """An incoming ID is kept when it is a plain token: 1..128 characters of letters,
    digits and - _ . : + / = (UUIDs, hex, base64, W3C trace IDs)."""
    cdef size_t i
    cdef unsigned char ch
    if n == 0 or n > REQUEST_ID_MAX:
        return False
    for i in range(n):
        ch = <unsigned char>p[i]
        if not ((ch >= 48 and ch <= 57) or (ch >= 65 and ch <= 90) or (ch >= 97 and ch <= 122)
                or ch == 45 or ch == 95 or ch == 46 or ch == 58 or ch == 43 or ch == 47 or ch == 61):
            return False
    return True


cdef class RequestIdFromHeader(PhaseHandler):
    """request_id_header NAME (rewrite phase): $request_id takes the client's value of
    that header when it is sane, else a fresh one."""
    cdef bytes header

    def __init__(self, bytes header):
        self.name = "request_id_header"
        self.header = header.lower()

    cdef int run(self, Client c) except -1:
        cdef size_t i
        cdef edge_header *h
        for i in range(c.nheaders):
            h = &c.headers[i]
            if name_is(h.name, h.name_len, self.header, len(self.header)):
                if sane_request_id(h.value, h.value_len):
                    memcpy(c.request_id, h.value, h.value_len)
                    c.request_id_len = h.value_len
                break
        ensure_request_id(c)
        return PH_CONTINUE


cdef class RequestIdResponseHeader(HeaderFilter):
    """request_id_header NAME (header filter): the ID goes back to the client."""
    cdef bytes header

    def __init__(self, bytes header):
        self.name = "request_id_header"
        self.header = header

    cdef int filter(self, Client c, Buf *out) except -1:
        ensure_request_id(c)
        buf_append_bytes(out, self.header)
        buf_append_str(out, ": ")
        buf_append(out, c.request_id, c.request_id_len)
        buf_append_str(out, "\r\n")
        return 0
