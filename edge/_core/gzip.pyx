# Response compression, as nginx's gzip filter (ngx_http_gzip_filter_module) with the
# request checks of ngx_http_gzip_ok; edge/modules/gzip.py holds the directives and
# docs/gzip.md the rules.
#
# A location with gzip has a GzipConf (Location.gzip); every other location pays one
# pointer test where a response head is built and one where a body piece is queued.
#
#   request    gzip_request() reads the request's side once, while its head is valid:
#              Accept-Encoding (nginx's parser: "gzip" as a token, q=0 refuses), MSIE 4-6,
#              gzip_http_version, Via (then gzip_proxied decides on the response) and
#              Authorization, gzip_disable on User-Agent. Result: c.gz_req.
#   head       gzip_decide(): status 200/403/404, no Content-Encoding, Content-Length (when
#              known) >= gzip_min_length, a type in gzip_types, not HEAD -> Vary may be
#              added; then the request's answer and gzip_proxied -> compress. A compressed
#              head loses Content-Length and Accept-Ranges, gets Content-Encoding: gzip and
#              a weak ETag, and is chunked to HTTP/1.1 clients or close-delimited to 1.0.
#   body       GzipState (c.gz) holds the z_stream and one output buffer. Proxied bodies
#              go through gzip_window() per upstream read: the window of plain bytes the
#              proxy made becomes a window of deflate output (Z_NO_FLUSH with
#              proxy_buffering, Z_SYNC_FLUSH per read without it, as nginx's flush
#              buffers do). Static files go through gzip_file_piece(): one bounded pread,
#              compressed into the response spool, when the spool has sent the last one.
#   end        Z_FINISH on the last piece, then deflateEnd at once; log_request frees the
#              stream whatever ended the request (client abort, upstream error), and the
#              output buffer goes when the request is reset or the connection closes.
#
# zlib's memory (about 256 KiB at windowBits 15, memLevel 8) is sized down to a known
# Content-Length as nginx does: the window halves (and memLevel drops) while the body
# fits in half of it.
#
# Brotli (edge/modules/brotli.py, ngx_brotli's directives) rides the same hooks: the
# request side sets GZR_BR when Accept-Encoding takes br, gzip_decide tries brotli's
# rules first (as ngx_brotli's filter runs before gzip's) and marks GZR_USE_BR, and
# GzipState then holds a BrotliEncoderState instead of a z_stream (one coder per
# response), its window sized down to a known length and destroyed as deflateEnd is.
# brotli_static's "file.br" is tried before gzip_static's "file.gz" (PRE_BR).

cdef extern from "zlib.h" nogil:
    ctypedef struct z_stream:
        unsigned char *next_in
        unsigned int avail_in
        unsigned long total_in
        unsigned char *next_out
        unsigned int avail_out
        unsigned long total_out
    int deflateInit2(z_stream *strm, int level, int method, int windowBits, int memLevel,
                     int strategy)
    int deflate(z_stream *strm, int flush)
    int deflateEnd(z_stream *strm)
    enum:
        Z_OK
        Z_STREAM_END
        Z_BUF_ERROR
        Z_STREAM_ERROR
        Z_NO_FLUSH
        Z_SYNC_FLUSH
        Z_FINISH
        Z_DEFLATED
        Z_DEFAULT_STRATEGY

cdef extern from "brotli/encode.h" nogil:
    ctypedef struct BrotliEncoderState:
        pass
    ctypedef enum BrotliEncoderOperation:
        BROTLI_OPERATION_PROCESS
        BROTLI_OPERATION_FLUSH
        BROTLI_OPERATION_FINISH
    ctypedef enum BrotliEncoderParameter:
        BROTLI_PARAM_QUALITY
        BROTLI_PARAM_LGWIN
        BROTLI_PARAM_SIZE_HINT
    BrotliEncoderState *BrotliEncoderCreateInstance(void *alloc, void *free_, void *opaque)
    int BrotliEncoderSetParameter(BrotliEncoderState *s, BrotliEncoderParameter p, uint32_t v)
    int BrotliEncoderCompressStream(BrotliEncoderState *s, BrotliEncoderOperation op,
                                    size_t *available_in, const uint8_t **next_in,
                                    size_t *available_out, uint8_t **next_out,
                                    size_t *total_out)
    int BrotliEncoderIsFinished(BrotliEncoderState *s)
    int BrotliEncoderHasMoreOutput(BrotliEncoderState *s)
    void BrotliEncoderDestroyInstance(BrotliEncoderState *s)

DEF GZ_PIECE = 32768            # one read of a static file (nginx's output_buffers)
DEF GZ_OUT_MIN = 16384

# c.gz_req bits (the request's side)
DEF GZR_OK = 1                  # the client takes gzip and nothing on the request refuses it
DEF GZR_VIA = 2                 # a proxy asked: gzip_proxied decides on the response
DEF GZR_AUTH = 4                # ... and the request has Authorization
DEF GZR_BR = 8                  # the client takes br (brotli on in the location)
DEF GZR_USE_BR = 16             # this response is compressed with brotli, not gzip

# gzip_proxied flags (nginx's names)
DEF GZP_OFF = 0x0002
DEF GZP_EXPIRED = 0x0004
DEF GZP_NO_CACHE = 0x0008
DEF GZP_NO_STORE = 0x0010
DEF GZP_PRIVATE = 0x0020
DEF GZP_NO_LM = 0x0040
DEF GZP_NO_ETAG = 0x0080
DEF GZP_AUTH = 0x0100
DEF GZP_ANY = 0x0200

# gzip_decide results (GZ_NONE, GZ_VARY: Vary only, GZ_ON) are DEFs in reactor.pyx


cdef class GzipConf:
    """The gzip settings of one location (edge/modules/gzip.py builds it)."""
    cdef public bint enable
    cdef public bint any_type
    cdef bytes types_b              # lowercase types, NUL separated, final NUL
    cdef public int64_t min_length
    cdef public int level
    cdef public int wbits
    cdef public int memlevel
    cdef public int proxied
    cdef public bint vary
    cdef public bint msie6
    cdef public list disable        # Regex (rewrite.pyx), case-insensitive
    cdef public int http_minor      # gzip_http_version 1.0 -> 0, 1.1 -> 1
    cdef public int static          # gzip_static: 0 off, 1 on, 2 always
    # brotli (edge/modules/brotli.py): its own switch, types and length, the same hooks
    cdef public bint br_enable
    cdef public bint br_any_type
    cdef bytes br_types_b
    cdef public int64_t br_min_length
    cdef public int br_level
    cdef public int br_lgwin
    cdef public int br_static       # brotli_static: 0 off, 1 on, 2 always

    def __init__(self):
        self.types_b = b"text/html\0\0"
        self.min_length = 20
        self.level = 1
        self.wbits = 15
        self.memlevel = 8
        self.http_minor = 1
        self.disable = []
        self.br_types_b = b"text/html\0\0"
        self.br_min_length = 20
        self.br_level = 6
        self.br_lgwin = 19

    def set_types(self, list types):
        self.any_type, self.types_b = _types_list(types)

    def set_br_types(self, list types):
        self.br_any_type, self.br_types_b = _types_list(types)

    @property
    def types(self):
        return ["*"] if self.any_type else self.types_b.decode("latin-1").split("\0")[:-2]

    @property
    def br_types(self):
        return ["*"] if self.br_any_type else self.br_types_b.decode("latin-1").split("\0")[:-2]


def _types_list(list types):
    """(any, lowercase types NUL separated with a final NUL): text/html always."""
    cdef list low = ["text/html"]
    any_type = False
    for t in types:
        if t == "*":
            any_type = True
        elif t.lower() not in low:
            low.append(t.lower())
    return any_type, "".join(t + "\0" for t in low).encode("latin-1") + b"\0"


cdef class GzipState:
    """One response being compressed by one coder: zlib's z_stream (gzip) or a Brotli
    encoder (br), and the buffer its output goes to."""
    cdef z_stream zs
    cdef BrotliEncoderState *bs  # brotli's encoder, or NULL (gzip, or ended)
    cdef bint br                # the coder is brotli
    cdef bint live              # the coder's memory is held (deflateEnd / Destroy not run)
    cdef bint finished          # the finish went through
    cdef bint chunked           # frame the output as chunks (HTTP/1.1 client)
    cdef Buf out

    def __dealloc__(self):
        self.end()
        buf_free(&self.out)

    cdef inline void end(self) noexcept:
        if self.live:
            if self.bs != NULL:
                BrotliEncoderDestroyInstance(self.bs)
                self.bs = NULL
            else:
                deflateEnd(&self.zs)
            self.live = False


cdef GzipState gzip_start(Client c, GzipConf g, int64_t length):
    """Begin compressing c's response (length: the plain body's length, or -1). None when
    zlib has no memory for it (the response then goes out plain)."""
    cdef GzipState s = GzipState.__new__(GzipState)
    cdef int wbits = g.wbits
    cdef int memlevel = g.memlevel
    if c.gz_req & GZR_USE_BR:
        return brotli_start(c, g, length, s)
    if length > 0:
        # nginx's sizing: the window need not be larger than the body (zlib's usable
        # window is 262 bytes short of its size)
        while wbits > 9 and length < ((1 << (wbits - 1)) - 262):
            wbits -= 1
            memlevel -= 1
        if memlevel < 1:
            memlevel = 1
    memset(&s.zs, 0, sizeof(z_stream))
    # windowBits + 16: a gzip header and trailer around the deflate stream
    if deflateInit2(&s.zs, g.level, Z_DEFLATED, wbits + 16, memlevel, Z_DEFAULT_STRATEGY) != Z_OK:
        return None
    s.live = True
    s.chunked = c.minor == 1
    return s


cdef GzipState brotli_start(Client c, GzipConf g, int64_t length, GzipState s):
    """gzip_start for brotli: an encoder at brotli_comp_level, its window (brotli_window)
    no larger than a known body needs (the ring buffer is most of its memory)."""
    cdef int lgwin = g.br_lgwin
    if length > 0:
        while lgwin > 10 and length <= (1 << (lgwin - 1)):
            lgwin -= 1
    s.bs = BrotliEncoderCreateInstance(NULL, NULL, NULL)
    if s.bs == NULL:
        return None
    s.live = True
    s.br = True
    if not BrotliEncoderSetParameter(s.bs, BROTLI_PARAM_QUALITY, <uint32_t>g.br_level) or \
            not BrotliEncoderSetParameter(s.bs, BROTLI_PARAM_LGWIN, <uint32_t>lgwin):
        s.end()
        return None
    if length > 0:
        BrotliEncoderSetParameter(s.bs, BROTLI_PARAM_SIZE_HINT,
                                  <uint32_t>(length if length < (1 << 30) else (1 << 30)))
    s.chunked = c.minor == 1
    return s


cdef int brotli_run(GzipState s, const char *p, size_t n, int mode) noexcept:
    """gzip_run for brotli: zlib's flush modes map to PROCESS, FLUSH and FINISH."""
    cdef BrotliEncoderOperation op
    cdef const uint8_t *next_in = <const uint8_t *>p
    cdef size_t avail_in = n
    cdef uint8_t *next_out
    cdef size_t avail_out, room
    if mode == Z_FINISH:
        op = BROTLI_OPERATION_FINISH
    elif mode == Z_SYNC_FLUSH:
        op = BROTLI_OPERATION_FLUSH
    else:
        op = BROTLI_OPERATION_PROCESS
    if s.bs == NULL:
        return -1
    while True:
        room = s.out.cap - s.out.end
        next_out = <uint8_t *>(s.out.data + s.out.end)
        avail_out = room
        if not BrotliEncoderCompressStream(s.bs, op, &avail_in, &next_in, &avail_out,
                                           &next_out, NULL):
            return -1
        s.out.end += room - avail_out
        if op == BROTLI_OPERATION_FINISH:
            if BrotliEncoderIsFinished(s.bs):
                s.finished = True
                s.end()         # the encoder's memory goes now, not at the request's end
                return 0
        elif avail_in == 0 and not BrotliEncoderHasMoreOutput(s.bs):
            return 0
        if avail_out == 0 and buf_reserve(&s.out, s.out.cap) < 0:
            return -1


cdef int gzip_run(GzipState s, const char *p, size_t n, int mode) noexcept:
    """Compress n bytes into s.out (emptied first) with the response's coder: deflate,
    or brotli_run. -1 on a coder error."""
    cdef int r
    cdef size_t room
    buf_reset(&s.out)
    if s.br:
        if buf_reserve(&s.out, GZ_OUT_MIN if n < GZ_OUT_MIN else n // 2 + 1024) < 0:
            return -1
        return brotli_run(s, p, n, mode)
    s.zs.next_in = <unsigned char *>p
    s.zs.avail_in = <unsigned int>n
    if buf_reserve(&s.out, GZ_OUT_MIN if n < GZ_OUT_MIN else n // 2 + 1024) < 0:
        return -1
    while True:
        room = s.out.cap - s.out.end
        s.zs.next_out = <unsigned char *>(s.out.data + s.out.end)
        s.zs.avail_out = <unsigned int>room
        r = deflate(&s.zs, mode)
        if r == Z_STREAM_ERROR:
            return -1
        s.out.end += room - s.zs.avail_out
        if mode == Z_FINISH:
            if r == Z_STREAM_END:
                s.finished = True
                s.end()         # the stream's memory goes now, not at the request's end
                return 0
            if r == Z_BUF_ERROR and s.zs.avail_out != 0:
                return -1
        elif s.zs.avail_out != 0:
            return 0            # all input taken (and flushed, for Z_SYNC_FLUSH)
        if buf_reserve(&s.out, s.out.cap) < 0:
            return -1


cdef int gzip_window(Client c, bint last, bint sync) noexcept:
    """Proxied bodies: c.win (plain bytes of this read, maybe none) becomes a window of
    compressed bytes, framed for the client; `last`: the body ended. -1 on error."""
    cdef GzipState s = c.gz
    cdef size_t n
    if s.finished:
        c.win_len = 0
        return 0
    if c.win_len == 0 and not last:
        return 0
    if gzip_run(s, c.win, c.win_len, Z_FINISH if last else (Z_SYNC_FLUSH if sync else Z_NO_FLUSH)) < 0:
        return -1
    n = buf_len(&s.out)
    c.win_len = 0
    if s.chunked:
        if n:
            buf_append_hex(&c.wb, n)
            buf_append_str(&c.wb, "\r\n")
            c.win = s.out.data + s.out.start
            c.win_len = n
            if last:
                c.suf = "\r\n0\r\n\r\n"
                c.suf_len = 7
            else:
                c.suf = "\r\n"
                c.suf_len = 2
        elif last:
            buf_append_str(&c.wb, "0\r\n\r\n")
    elif n:
        c.win = s.out.data + s.out.start
        c.win_len = n
    return 0


cdef int gzip_file_piece(Client c, ResponseSpool sp) noexcept:
    """Static files: read the next piece of the file (one bounded pread) and queue it
    compressed (and framed) in the spool's memory. -1 on error."""
    cdef GzipState s = c.gz
    cdef char piece[GZ_PIECE]
    cdef int64_t left = sp.file_write - sp.file_read
    cdef ssize_t got = 0
    cdef size_t n
    cdef bint last
    if left > 0:
        while True:
            got = pread(sp.fd, piece, <size_t>(left if left < GZ_PIECE else GZ_PIECE), sp.file_read)
            if got < 0 and errno == EINTR:
                continue
            break
        if got <= 0:
            return -1       # a read error, or the file was truncated under us
        sp.file_read += got
    last = sp.file_read >= sp.file_write
    if gzip_run(s, piece, <size_t>got, Z_FINISH if last else Z_NO_FLUSH) < 0:
        return -1
    n = buf_len(&s.out)
    if s.chunked:
        if n:
            buf_append_hex(&sp.mem, n)
            buf_append_str(&sp.mem, "\r\n")
            buf_append(&sp.mem, s.out.data + s.out.start, n)
            buf_append_str(&sp.mem, "\r\n")
        if last:
            buf_append_str(&sp.mem, "0\r\n\r\n")
    elif n:
        buf_append(&sp.mem, s.out.data + s.out.start, n)
    return 0


# ---- the request's side (ngx_http_gzip_ok) ----------------------------------------------

cdef bint accepts_gzip(const char *v, size_t n) noexcept:
    """nginx's Accept-Encoding test: a "gzip" token (case-insensitive, at the start or
    after ',' or ' '), optionally with ;q= between 0.001 and 1 (q=0 refuses)."""
    if n >= 5 and memcmp(v, "gzip,", 5) == 0:
        return True
    return accepts_coding(v, n, "gzip", 4, False)


cdef bint accepts_coding(const char *v, size_t n, const char *tok, size_t tn,
                         bint whole) noexcept:
    """The Accept-Encoding test of accepts_gzip for any coding name; `whole`: a match
    must also end the token (so "br" is not found in "brotli"), else the search goes on
    (ngx_brotli's test; nginx's gzip test gives up at "gzipx")."""
    cdef size_t i = 0
    cdef size_t p
    cdef int q, digits
    cdef char ch
    if n < tn:
        return False
    while True:
        while i + tn <= n and strncasecmp(v + i, tok, tn) != 0:
            i += 1
        if i + tn > n:
            return False
        if (i == 0 or v[i - 1] == 44 or v[i - 1] == 32) and (not whole or i + tn == n or
                v[i + tn] == 44 or v[i + tn] == 59 or v[i + tn] == 32 or v[i + tn] == 9):
            break
        i += tn
    p = i + tn
    while p < n:
        ch = v[p]
        p += 1
        if ch == 44:
            return True
        if ch == 59:        # ';'
            break
        if ch != 32:
            return False
    else:
        return True
    # the quantity
    while p < n:
        ch = v[p]
        p += 1
        if ch == 113 or ch == 81:       # q Q
            break
        if ch != 32:
            return False
    else:
        return True
    if p + 2 > n or v[p] != 61:         # '='
        return False
    p += 1
    ch = v[p]
    p += 1
    if ch != 48 and ch != 49:
        return False
    q = (ch - 48) * 100
    if p == n:
        return q != 0
    ch = v[p]
    p += 1
    if ch == 44 or ch == 32:
        return q != 0
    if ch != 46:
        return False
    digits = 0
    while p < n:
        ch = v[p]
        p += 1
        if ch == 44 or ch == 32:
            break
        if 48 <= ch <= 57:
            q += ch - 48
            digits += 1
            continue
        return False
    if q > 100 or digits > 3:
        return False
    return q != 0


cdef bint is_msie6(const char *v, size_t n) noexcept:
    """nginx's MSIE 4, 5 and 6 (without SV1) detection on User-Agent."""
    cdef size_t i = 0
    while i + 5 <= n and memcmp(v + i, "MSIE ", 5) != 0:
        i += 1
    if i + 5 > n or i + 7 >= n:
        return False
    if v[i + 6] != 46:
        return False
    if v[i + 5] == 52 or v[i + 5] == 53:
        return True
    if v[i + 5] == 54:
        return not contains(v + i + 8, n - i - 8, "SV1", 3)
    return False


cdef bint contains(const char *v, size_t n, const char *w, size_t wn) noexcept:
    cdef size_t i = 0
    while i + wn <= n:
        if memcmp(v + i, w, wn) == 0:
            return True
        i += 1
    return False


cdef int gzip_request(Client c, GzipConf g) noexcept:
    """The request's part of nginx's ngx_http_gzip_ok, read while the head is valid."""
    cdef edge_header *ae = NULL
    cdef edge_header *ua = NULL
    cdef edge_header *h
    cdef bint via = False
    cdef bint auth = False
    cdef size_t i
    cdef int r
    for i in range(c.nheaders):
        h = &c.headers[i]
        if ae == NULL and name_is(h.name, h.name_len, "accept-encoding", 15):
            ae = h
        elif ua == NULL and name_is(h.name, h.name_len, "user-agent", 10):
            ua = h
        elif name_is(h.name, h.name_len, "via", 3):
            via = True
        elif name_is(h.name, h.name_len, "authorization", 13):
            auth = True
    r = 0
    if g.br_enable and ae != NULL and accepts_coding(ae.value, ae.value_len, "br", 2, True):
        r = GZR_BR      # ngx_brotli asks nothing more of the request
    if ae == NULL or not accepts_gzip(ae.value, ae.value_len):
        return r
    r = r | gzip_request_rest(c, g, ua, via, auth)
    return r


cdef int gzip_request_rest(Client c, GzipConf g, edge_header *ua, bint via,
                           bint auth) noexcept:
    """gzip_request past Accept-Encoding: GZR_OK (| GZR_VIA | GZR_AUTH) or 0."""
    cdef Regex rx
    cdef int r
    cdef bytes agent
    if g.msie6 and ua != NULL and is_msie6(ua.value, ua.value_len):
        return 0
    if c.minor < g.http_minor:
        return 0
    if g.disable and ua != NULL:
        agent = ua.value[:ua.value_len]
        for rx in g.disable:
            if regexec(&rx.rx, agent, 0, NULL, 0) == 0:
                return 0
    r = GZR_OK
    if via:
        if g.proxied & GZP_OFF:
            return 0
        if not (g.proxied & GZP_ANY):
            r |= GZR_VIA
            if auth:
                r |= GZR_AUTH
    return r


# ---- the response's side -------------------------------------------------------------------

cdef bint type_listed(bint any_type, bytes types_b, const char *ct, size_t n) noexcept:
    """The type of a Content-Type value (before any parameter) in gzip_types (or
    brotli_types)."""
    cdef size_t i = 0
    if any_type:
        return True
    while i < n and ct[i] != 59:
        i += 1
    while i > 0 and (ct[i - 1] == 32 or ct[i - 1] == 9):
        i -= 1
    return name_in_list(ct, i, <const char *>types_b)


cdef bint cc_has(edge_header *hs, size_t nh, const char *token, size_t tn) noexcept:
    cdef size_t i
    for i in range(nh):
        if name_is(hs[i].name, hs[i].name_len, "cache-control", 13) and \
                token_listed(hs[i].value, hs[i].value_len, token, tn):
            return True
    return False


cdef bint proxied_ok(Client c, GzipConf g, edge_header *hs, size_t nh) noexcept:
    """gzip_proxied for a request that came through a proxy (Via), on the response's
    Expires, Cache-Control, Last-Modified and ETag, in nginx's order."""
    cdef int p = g.proxied
    cdef edge_header *e = NULL
    cdef edge_header *d = NULL
    cdef bint cc = False, lm = False, etag = False
    cdef int64_t expires, date
    cdef size_t i
    if (c.gz_req & GZR_AUTH) and (p & GZP_AUTH):
        return True
    for i in range(nh):
        if e == NULL and name_is(hs[i].name, hs[i].name_len, "expires", 7):
            e = &hs[i]
        elif d == NULL and name_is(hs[i].name, hs[i].name_len, "date", 4):
            d = &hs[i]
        elif name_is(hs[i].name, hs[i].name_len, "cache-control", 13):
            cc = True
        elif name_is(hs[i].name, hs[i].name_len, "last-modified", 13):
            lm = True
        elif name_is(hs[i].name, hs[i].name_len, "etag", 4):
            etag = True
    if e != NULL:
        if not (p & GZP_EXPIRED):
            return False
        expires = parse_http_date(e.value, e.value_len)
        if expires < 0:
            return False
        if d != NULL:
            date = parse_http_date(d.value, d.value_len)
            if date < 0:
                return False
        else:
            date = g_real_ms // 1000
        return expires < date
    if cc:
        if (p & GZP_NO_CACHE) and cc_has(hs, nh, "no-cache", 8):
            return True
        if (p & GZP_NO_STORE) and cc_has(hs, nh, "no-store", 8):
            return True
        if (p & GZP_PRIVATE) and cc_has(hs, nh, "private", 7):
            return True
        return False
    if (p & GZP_NO_LM) and lm:
        return False
    if (p & GZP_NO_ETAG) and etag:
        return False
    return True


cdef int gzip_decide(Client c, GzipConf g, int status, bint encoded, int64_t length,
                     const char *ct, size_t ct_len, edge_header *hs, size_t nh) noexcept:
    """nginx's gzip header filter, after ngx_brotli's (which runs first and, when it
    compresses, leaves gzip a Content-Encoding): GZ_NONE, GZ_VARY (Vary only) or GZ_ON,
    with GZR_USE_BR set in c.gz_req when the coder is brotli."""
    cdef int r = GZ_NONE
    c.gz_req &= ~GZR_USE_BR
    if (status != 200 and status != 403 and status != 404) or encoded or ct == NULL:
        return GZ_NONE      # (HEAD is decided as GET is: nginx marks it header-only later)
    if g.br_enable and (length < 0 or length >= g.br_min_length) \
            and type_listed(g.br_any_type, g.br_types_b, ct, ct_len):
        if c.gz_req & GZR_BR:
            c.gz_req |= GZR_USE_BR
            return GZ_ON
        r = GZ_VARY
    if not g.enable or (length >= 0 and length < g.min_length) \
            or not type_listed(g.any_type, g.types_b, ct, ct_len):
        return r
    if not (c.gz_req & GZR_OK):
        return GZ_VARY
    if (c.gz_req & GZR_VIA) and not proxied_ok(c, g, hs, nh):
        return GZ_VARY
    return GZ_ON


cdef int gzip_proxy_head(Client c, GzipConf g, int status, edge_header *hs, size_t nh,
                         int64_t length) noexcept:
    """proxy.pyx, at a response head: decide, and start the stream when compressing."""
    cdef size_t i
    cdef bint encoded = False
    cdef const char *ct = NULL
    cdef size_t ct_len = 0
    cdef int r
    for i in range(nh):
        if name_is(hs[i].name, hs[i].name_len, "content-encoding", 16):
            if hs[i].value_len:
                encoded = True
        elif ct == NULL and name_is(hs[i].name, hs[i].name_len, "content-type", 12):
            ct = hs[i].value
            ct_len = hs[i].value_len
    r = gzip_decide(c, g, status, encoded, length, ct, ct_len, hs, nh)
    if r == GZ_ON and not c.is_head:
        try:
            c.gz = gzip_start(c, g, length)
        except Exception:
            c.gz = None
        if c.gz is None:
            return GZ_VARY
    return r


cdef bint gzip_head_line(Client c, edge_header *h) noexcept:
    """A compressed response's upstream header line: handled here (True) when it is
    Accept-Ranges (dropped) or ETag (made weak; dropped when not an entity tag)."""
    if name_is(h.name, h.name_len, "accept-ranges", 13):
        return True
    if name_is(h.name, h.name_len, "content-encoding", 16):
        return True         # an empty one (a set one means no compression)
    if name_is(h.name, h.name_len, "etag", 4):
        if h.value_len >= 2 and h.value[0] == 87 and h.value[1] == 47:     # W/
            return False
        if h.value_len and h.value[0] == 34:
            buf_append_str(&c.wb, "ETag: W/")
            buf_append(&c.wb, h.value, h.value_len)
            buf_append_str(&c.wb, "\r\n")
        return True
    return False


cdef void gzip_head_end(Client c, GzipConf g, int r) noexcept:
    """The lines a decision adds to the head, and the framing of a compressed body."""
    if r == GZ_ON:
        if c.gz_req & GZR_USE_BR:
            buf_append_str(&c.wb, "Content-Encoding: br\r\n")
        else:
            buf_append_str(&c.wb, "Content-Encoding: gzip\r\n")
        if c.is_head:
            pass            # the head a GET would get, without its framing
        elif c.minor == 1:
            buf_append_str(&c.wb, "Transfer-Encoding: chunked\r\n")
        else:
            c.keepalive = False     # an HTTP/1.0 client learns the end from the close
    if r != GZ_NONE and g.vary:
        buf_append_str(&c.wb, "Vary: Accept-Encoding\r\n")


cdef int open_twin(Client c, StaticConf sc, Buf *path, const char *suffix, size_t sn,
                   edge_stat_t *st) noexcept:
    """Open "path" + suffix as a regular file (through open_file: disable_symlinks too),
    path left as it was. The fd, or -1."""
    cdef size_t mark = path.end
    cdef int fd
    if buf_append(path, suffix, sn + 1) < 0:     # with its NUL
        return -1
    path.end = mark + sn    # open_file() takes the length without the NUL
    fd = open_file(c, sc, path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    path.end = mark
    path.data[mark] = 0
    if fd < 0:
        return -1
    if edge_fstat(fd, st) != 0 or not S_ISREG(st.st_mode):
        close(fd)
        return -1
    return fd


cdef int gzip_static_open(Client c, GzipConf g, StaticConf sc, Buf *path, int *fdp,
                          edge_stat_t *st) noexcept:
    """brotli_static (ngx_brotli's static module, tried first) and gzip_static (nginx's
    ngx_http_gzip_static_module): open "path.br" when the client takes br, then "path.gz"
    when it takes gzip (`on`), or either always (`always`). Returns PRE_GZ (| PRE_BR for
    the .br twin) (| PRE_VARY) with *fdp open on the twin, PRE_VARY (serve the file
    itself, with Vary) or 0."""
    cdef bint ok
    cdef int fd
    cdef int pre = 0
    cdef edge_header *ae
    if g.br_static:
        if g.br_static == 2:
            ok = True
        else:
            ae = find_header(c, "accept-encoding", 15)
            ok = ae != NULL and accepts_coding(ae.value, ae.value_len, "br", 2, True)
        if ok or g.vary:
            fd = open_twin(c, sc, path, ".br", 3, st)
            if fd >= 0:
                if ok:
                    fdp[0] = fd
                    return PRE_GZ | PRE_BR | (PRE_VARY if g.br_static == 1 else 0)
                close(fd)
                pre = PRE_VARY
    if not g.static:
        return pre
    if g.static == 2:
        ok = True
    else:
        c.gz_req = gzip_request(c, g)
        # nginx tests gzip_proxied before any response header exists: only off, any and
        # auth can refuse here
        ok = (c.gz_req & GZR_OK) != 0 and (not (c.gz_req & GZR_VIA) or proxied_ok(c, g, NULL, 0))
    if not ok and not g.vary:
        return pre
    fd = open_twin(c, sc, path, ".gz", 3, st)
    if fd < 0:
        return pre
    if g.static == 2:
        fdp[0] = fd
        return PRE_GZ
    if not ok:
        close(fd)
        return PRE_VARY
    fdp[0] = fd
    return PRE_GZ | PRE_VARY


cdef void gzip_release(Client c) noexcept:
    """The request ended: zlib's memory goes now (the output buffer with the object, when
    the connection moves on or closes)."""
    cdef GzipState s = c.gz
    s.end()
