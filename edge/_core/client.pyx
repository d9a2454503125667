# Client connections: read and parse request heads, route, answer `return` locations
# directly, hand proxied requests to an upstream connection, keep-alive and pipelining.
#
# Theory of operation
# - Every socket is registered once, edge-triggered, for IN|OUT|RDHUP. An event only sets
#   `readable` / `writable`; the state machine then reads until EAGAIN or until it
#   chooses to stop (backpressure), and remembers the flag so it can resume later.
# - Output is `wb` (bytes we built: heads, error pages, chunk sizes), then an optional
#   window `win` into another buffer (a proxied body), then a constant suffix `suf`. It
#   goes out with one writev. Nobody appends to `wb` while a window is queued, and the
#   buffer a window points into is not read into until the window is sent: that is the
#   whole backpressure rule.
# - Pipelined requests are answered in order: the next head is parsed only when the
#   current response has been produced (for `return`) or fully sent (for proxy).

DEF MAX_HEADERS = 128      # array capacity; max_request_headers (<= this) is the limit
DEF HOST_MAX = 255
DEF READ_CHUNK = 16384
DEF OUTPUT_HIGH_WATER = 65536
DEF LINGER_MS = 5000
DEF PP_READ_LIMIT = 4096     # a PROXY header larger than this is refused
DEF REQUEST_ID_MAX = 128   # the longest incoming request ID kept
DEF MAX_TRIES = 8           # upstream tries remembered for $upstream_* and the log
DEF MAX_CHARGES = 8         # limits one request is charged by (rolled back on a rejection)

cdef struct UpTry:
    int peer
    int status
    int64_t connect_us      # -1: never connected
    int64_t header_us       # -1: no response head
    int64_t response_us

cdef enum ClientState:
    CS_HEAD = 0         # idle, or reading a request head
    CS_PROXY = 1        # the request belongs to an upstream connection
    CS_CLOSING = 2      # send what is queued, then close
    CS_LINGER = 3       # response sent, write side shut: drain input briefly, then close
    CS_DISCARD = 5      # response queued; dropping the rest of the request body
    CS_PP_HEADER = 6    # waiting for the PROXY protocol header
    CS_DELAY = 7        # limit_req without nodelay: the request waits for its turn
    CS_BODY = 8         # reading the whole request body before a peer (buffering.pyx)
    CS_HANDSHAKE = 9    # a TLS listener: the handshake, before any request (tls.pyx)
    CS_FREE = 4

cdef enum BodyKind:
    BODY_NONE = 0
    BODY_LENGTH = 1
    BODY_CHUNKED = 2
    BODY_TUNNEL = 3     # after a 101: raw bytes until either side closes

cdef const char *HOP_BY_HOP = "connection\0keep-alive\0proxy-connection\0te\0trailer\0transfer-encoding\0upgrade\0content-length\0expect\0\0"
cdef const char *RESPONSE_DROP = "connection\0keep-alive\0proxy-connection\0te\0trailer\0transfer-encoding\0upgrade\0content-length\0server\0date\0\0"

cdef TimerList t_linger = timer_list(LINGER_MS)
cdef TimerList t_delay = sorted_timer_list()        # limit_req delays, each its own length

# error-log hooks, set by the Loop: the Python log function and whether info is on
cdef object g_log_fn = None
cdef bint g_log_info = False


cdef void log_connection(str level, Client c, const char *reason, int status):
    """One error-log line about a client connection, nginx style."""
    if g_log_fn is None:
        return
    try:
        g_log_fn(level, "%s%s, client: %s, server: %s" % (
            reason.decode("latin-1"), " (%d)" % status if status else "",
            c.remote[:c.remote_len].decode("latin-1"),
            c.binding.key if c.binding is not None else "-"))
    except Exception:
        pass


cdef inline size_t format_uint(char *out, unsigned int v) noexcept nogil:
    """v in decimal at out (no NUL); its length."""
    cdef char tmp[12]
    cdef size_t n = 0
    cdef size_t i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef inline const char *rebase(const char *p, const char *base, const char *end,
                               const char *new_base) noexcept nogil:
    if p != NULL and p >= base and p <= end:
        return new_base + (p - base)
    return p


cdef void log_refused(Listener lst, sockaddr_storage *sa, int status, size_t sent):
    """A connection refused at accept (worker_connections full) still gets its log
    record and its count, through a spare client object that never owns a socket."""
    cdef Client c = g_loop.spare_client
    if c is None:
        c = g_loop.spare_client = Client.__new__(Client)
    c.listener = lst
    c.binding = lst.binding
    c.fd = -1
    c.out_written = 0
    c.conn_serial = next_connection_serial()
    c.requests = 0
    c.take_peer(sa)
    c.begin_request()
    c.status = status
    c.head_end_mark = 0
    c.out_written = <int64_t>sent
    c.log_request(False)
    c.binding = None
    c.listener = None


cdef bint host_value_valid(const char *p, size_t n) noexcept nogil:
    """A Host field value: uri-host [":" port] (RFC 9112 3.2, RFC 3986 3.2.2-3.2.3): a
    bracketed IP literal, or a name of letters, digits and "-._~%!$&'()*+,;=", then
    digits after the colon. Empty is refused (the field lines are trimmed already)."""
    cdef size_t i = 0
    cdef unsigned char ch
    if n == 0:
        return False
    if p[0] == 91:                                  # [IPv6 or IPvFuture]
        i = 1
        while i < n and p[i] != 93:
            ch = <unsigned char>p[i]
            if not ((ch >= 48 and ch <= 58) or (ch >= 65 and ch <= 70) or (ch >= 97 and ch <= 102)
                    or ch == 46 or ch == 118 or ch == 86):
                return False
            i += 1
        if i == n or i == 1:
            return False
        i += 1
    else:
        while i < n and p[i] != 58:
            ch = <unsigned char>p[i]
            if not ((ch >= 97 and ch <= 122) or (ch >= 65 and ch <= 90) or (ch >= 48 and ch <= 57)
                    or ch == 45 or ch == 46 or ch == 95 or ch == 126 or ch == 37 or ch == 33
                    or ch == 36 or ch == 38 or ch == 39 or ch == 40 or ch == 41 or ch == 42
                    or ch == 43 or ch == 44 or ch == 59 or ch == 61):
                return False
            i += 1
        if i == 0:
            return False                            # ":80" names no host
    if i == n:
        return True
    if p[i] != 58:
        return False
    i += 1
    while i < n:
        if p[i] < 48 or p[i] > 57:
            return False
        i += 1
    return True


cdef int host_normalize(const char *p, size_t n, char *out, size_t *out_len) noexcept nogil:
    """A host name as nginx validates it (a Host header, an SNI name): lowercased, without
    a port and one trailing dot; refused (-1) when it has an empty label ("a..b", a second
    trailing dot) or characters no host name has (RFC 3986 reg-name / IP-literal). `out`
    holds HOST_MAX + 1 bytes and is NUL terminated. An empty name gives length 0."""
    cdef size_t i
    cdef size_t end = n
    cdef unsigned char ch
    if n == 0:
        out[0] = 0
        out_len[0] = 0
        return 0
    if p[0] == 91:      # [IPv6]
        while end > 0 and p[end - 1] != 93:
            end -= 1
        if end == 0:
            return -1
    else:
        for i in range(n):
            if p[i] == 58:
                end = i
                break
    if end > 0 and p[end - 1] == 46:
        end -= 1
        if end > 0 and p[end - 1] == 46:
            return -1           # "name..": an empty last label
    if end > HOST_MAX:
        return -1
    for i in range(end):
        ch = <unsigned char>p[i]
        if ch >= 65 and ch <= 90:
            ch += 32
        elif ch == 46:
            if i == 0 or p[i - 1] == 46:
                return -1       # an empty label
        elif not ((ch >= 97 and ch <= 122) or (ch >= 48 and ch <= 57) or ch == 45 or
                  ch == 95 or ch == 91 or ch == 93 or ch == 58):
            return -1
        out[i] = <char>ch
    out[end] = 0
    out_len[0] = end
    return 0


cdef inline bint name_is(const char *name, size_t n, const char *lower, size_t ln) noexcept nogil:
    return n == ln and strncasecmp(name, lower, n) == 0


cdef bint name_in_list(const char *name, size_t n, const char *lst) noexcept nogil:
    """lst: lowercase names separated by NUL, ended by an empty name."""
    cdef size_t ln
    while lst[0] != 0:
        ln = strlen(lst)
        if ln == n and strncasecmp(name, lst, n) == 0:
            return True
        lst += ln + 1
    return False


cdef bint token_listed(const char *value, size_t vn, const char *name, size_t n) noexcept nogil:
    """Is `name` one of the comma-separated tokens of a Connection header value?"""
    cdef size_t i = 0
    cdef size_t s, e
    while i < vn:
        while i < vn and (value[i] == 32 or value[i] == 9 or value[i] == 44):
            i += 1
        s = i
        while i < vn and value[i] != 44:
            i += 1
        e = i
        while e > s and (value[e - 1] == 32 or value[e - 1] == 9):
            e -= 1
        if e - s == n and n > 0 and strncasecmp(value + s, name, n) == 0:
            return True
    return False


cdef const char *find_text(const char *p, size_t n, const char *needle, size_t nn) noexcept nogil:
    """The first place of `needle` in p[0:n] (case-sensitive, as nginx's ngx_strstrn)."""
    cdef size_t i
    if nn == 0 or n < nn:
        return NULL
    for i in range(n - nn + 1):
        if p[i] == needle[0] and memcmp(p + i, needle, nn) == 0:
            return p + i
    return NULL


DEF KEEPALIVE_DISABLE_MSIE6 = 1
DEF KEEPALIVE_DISABLE_SAFARI = 2


cdef bint agent_disables_keepalive(Client c, int mask) noexcept:
    """keepalive_disable: nginx's User-Agent checks. msie6 (MSIE 4 and 5, 6 without SV1,
    not Opera) for POST requests only; safari (Safari/ with Mac OS X, and neither MSIE,
    Opera, Gecko/ nor Chrome/)."""
    cdef size_t i
    cdef edge_header *h = NULL
    cdef const char *ua
    cdef const char *end
    cdef const char *msie
    cdef size_t n
    cdef bint is_msie = False
    cdef bint msie6 = False
    cdef bint post = c.method_len == 4 and memcmp(c.method, "POST", 4) == 0
    if not (mask & KEEPALIVE_DISABLE_SAFARI) and not post:
        return False
    for i in range(c.nheaders):
        if name_is(c.headers[i].name, c.headers[i].name_len, "user-agent", 10):
            h = &c.headers[i]
            break
    if h == NULL:
        return False
    ua = h.value
    n = h.value_len
    end = ua + n
    msie = find_text(ua, n, "MSIE ", 5)
    if msie != NULL and msie + 7 < end:
        is_msie = True
        if msie[6] == 46:
            if msie[5] == 52 or msie[5] == 53:
                msie6 = True
            elif msie[5] == 54 and find_text(msie + 8, <size_t>(end - (msie + 8)), "SV1", 3) == NULL:
                msie6 = True
    if find_text(ua, n, "Opera", 5) != NULL:
        return False
    if msie6 and post and (mask & KEEPALIVE_DISABLE_MSIE6):
        return True
    if is_msie or not (mask & KEEPALIVE_DISABLE_SAFARI):
        return False
    if find_text(ua, n, "Gecko/", 6) != NULL or find_text(ua, n, "Chrome/", 7) != NULL:
        return False
    return (find_text(ua, n, "Safari/", 7) != NULL and
            find_text(ua, n, "Mac OS X", 8) != NULL)


cdef class Client(Handle):
    cdef Buf rb             # bytes from the client
    cdef Buf wb             # bytes to the client
    cdef Buf uri            # the normalized path, NUL terminated
    cdef Buf pbuf           # the request head built for the upstream
    cdef const char *win
    cdef size_t win_len
    cdef const char *suf
    cdef size_t suf_len
    cdef bint readable
    cdef bint writable
    cdef bint peer_closed   # the client shut its write side (RDHUP)
    cdef bint pipelined     # a request came from bytes left after the previous one
    cdef bint nodelay       # TCP_NODELAY is set on the socket
    cdef int state
    cdef Listener listener
    cdef ListenBinding binding  # of the generation this request runs on
    # the TCP peer, and the PROXY protocol's client when the listener has it
    cdef int peer_family
    cdef unsigned char peer_addr[16]
    cdef uint16_t peer_port
    cdef char conn_remote[64]
    cdef size_t conn_remote_len
    cdef char conn_port[8]
    cdef size_t conn_port_len
    cdef bint has_pp
    cdef int pp_family
    cdef unsigned char pp_addr[16]
    cdef uint16_t pp_port_num
    cdef char pp_text[64]
    cdef size_t pp_text_len
    cdef char pp_port[8]
    cdef size_t pp_port_len
    cdef bint remote_replaced   # realip changed $remote_addr for this request
    cdef int realip_family      # the address realip found (0: none yet)
    cdef unsigned char realip_addr[16]
    cdef int realip_port
    # $remote_addr / $remote_port of the current request
    cdef char remote[64]
    cdef size_t remote_len
    cdef char remote_port[8]
    cdef size_t remote_port_len
    cdef int64_t requests
    # TLS (tls.pyx): the session when the listener has `ssl`, and the name the client sent
    cdef SSL *ssl
    cdef bint tls_read_wants_write  # SSL_read must send first: a writable event reads on
    cdef bint out_armed             # registered for EPOLLOUT (TLS always; plain once a write blocked)
    cdef bint plain_on_tls          # plain HTTP arrived on a TLS port: nginx's 400 follows
    cdef char sni[256]
    cdef size_t sni_len

    # the current request; pointers are into rb and valid only while its head is handled
    cdef edge_header headers[MAX_HEADERS]
    cdef size_t nheaders
    cdef const char *method
    cdef size_t method_len
    cdef const char *target
    cdef size_t target_len
    cdef const char *args
    cdef size_t args_len
    cdef const char *abs_host       # the authority of an absolute-form target, or NULL
    cdef size_t abs_host_len
    cdef bint has_args
    cdef int minor
    cdef char host[HOST_MAX + 1]
    cdef size_t host_len
    cdef int connection_header      # index of the Connection header or -1
    cdef int upgrade_index          # index of the Upgrade header or -1
    cdef bint upgrade               # this request asks the upstream for a tunnel
    cdef bint is_head
    cdef bint keepalive
    cdef bint expect_continue
    cdef regmatch_t caps[MAX_CAPTURES]
    cdef const char *cap_base       # the subject of caps when a rewrite or map set them, or NULL
    cdef int cap_n
    cdef Buf capsrc                 # the URI a rewrite matched, kept for $1..$9
    cdef Buf argbuf                 # the arguments a rewrite set
    cdef list uvals                 # user variable values of this request (rewrite.pyx), or None
    cdef bint rewritten             # a rewrite changed the URI: it goes upstream from uri
    cdef bint rw_break              # ... with `break`: proxy_pass's URI part is not applied
    cdef int uri_changes            # location searches left (nginx: 10 after the first)
    cdef Upstream ups               # the upstream group of this request
    cdef bint routed                # self.server is this request's (set by handle_request)
    cdef Server server
    cdef Location loc
    cdef int body_kind
    cdef int64_t body_left
    cdef int64_t body_received
    cdef bint body_done
    cdef bint body_started      # body bytes were handed to an upstream connection
    cdef edge_chunked_decoder body_dec
    cdef UpConn up
    cdef bint response_started
    # proxy_request_buffering (buffering.pyx): the body read whole before a peer is picked
    cdef bint body_buffered
    cdef size_t body_held       # CS_BODY: decoded body bytes held in rb after rb.start
    cdef const char *body_mem   # the buffered body in rb, or NULL when it is in body_fd
    cdef int body_fd            # the temp file holding the buffered body, or -1
    cdef int64_t body_size      # the buffered body's length
    cdef ResponseSpool spool    # what a slow client has not taken of the response, or None
    cdef GzipState gz           # the response is being compressed (gzip.pyx), or None
    cdef int gz_req             # the request's side of the gzip decision (gzip.pyx)
    cdef list mirror_heads      # (MirrorTarget, head) of the copies this request gets, or None
    cdef bint discarding        # a body we answered without reading is still arriving
    cdef bint aborted           # the connection ended before the response was complete
    cdef uint64_t tried_peers
    cdef int tries
    cdef int64_t first_try_us   # for proxy_next_upstream_timeout
    cdef bint idempotent        # the method may be replayed on another peer (retries.pyx)
    # error_page (error_page.pyx): the status the next response head gets (0: its own),
    # and whether an error page was chosen already (recursive_error_pages off)
    cdef int err_status
    cdef bint error_paged
    cdef int64_t resp_mtime     # a proxied response's Last-Modified (expires modified), or -1

    # the request as the log phase and metrics see it
    cdef bint logged            # nothing left to log: between requests
    cdef bint parsed            # the head parsed: method, target and headers are valid
    cdef int status             # the status of the response edge wrote (0: none yet)
    cdef int64_t start_us       # when the request's first byte was read
    cdef int64_t out_written    # bytes written to this connection so far
    cdef int64_t produced_mark  # output bytes produced before this response
    cdef int64_t head_end_mark  # output bytes produced at the end of its head (-1: none)
    cdef size_t head_begin      # buf_len(wb) when the response head began
    cdef size_t head_len
    cdef int64_t body_raw       # request body bytes as received (chunk framing included)
    cdef const char *raw_target # the request target as sent, for $request
    cdef size_t raw_target_len
    cdef const char *raw_line   # the first line of a head that did not parse, for $request
    cdef size_t raw_line_len
    cdef int64_t req_number     # $connection_requests
    cdef int64_t conn_serial    # $connection
    cdef Buf hb                 # a copy of the request head, when a log reads it at the end
    cdef Buf rh                 # a copy of the response head, for $sent_http_*
    cdef char request_id[REQUEST_ID_MAX + 1]
    cdef size_t request_id_len
    cdef int ntries
    cdef UpTry tries_log[MAX_TRIES]

    # limits (limiter.pyx): the delay to serve, what the request was charged (to roll back
    # when a later limit rejects it; limit_conn slots to release when it ends), the headers
    cdef int64_t limit_delay_us
    cdef void *charge_zone[MAX_CHARGES]
    cdef uint64_t charge_hash[MAX_CHARGES]
    cdef int64_t charge_window[MAX_CHARGES]
    cdef int ncharges
    cdef int64_t rl_limit           # -1: no limit applied to this request
    cdef int64_t rl_remaining
    cdef int64_t rl_reset
    cdef int64_t rl_retry_after
    cdef bint rl_rejected
    cdef object rl_zone             # the Limit whose numbers the headers show

    # authentication (auth.pyx)
    cdef object consumer            # ConsumerRef, or None
    cdef bytes credential_id
    cdef bytes auth_message         # why the last credential was refused

    # ---- CORS (cors.pyx) ------------------------------------------------------------------
    # the origin decision of the rewrite phase, valid for the request it was stamped with
    cdef int64_t cors_conn          # conn_serial, req_number and start_us of that request
    cdef int64_t cors_req
    cdef int64_t cors_start
    cdef int cors_state             # CORS_ALLOWED | CORS_PREFLIGHT | CORS_ANSWERED
    cdef char cors_origin[512]      # the request's Origin (NUL terminated), echoed when allowed
    cdef size_t cors_origin_len
    # ---- end CORS --------------------------------------------------------------------------

    # ---- life cycle -------------------------------------------------------------------

    cdef void begin_connection(self, int fd, Listener listener) noexcept:
        """The connection-wide state of a new connection, or of one resumed from rest
        (idle.pyx). Buffers are taken from the pool only when bytes arrive."""
        self.fd = fd
        self.kind = K_CLIENT
        self.listener = listener
        self.binding = listener.binding
        self.state = CS_HEAD
        self.readable = False
        self.writable = True
        self.peer_closed = False
        self.pipelined = False
        self.nodelay = False
        self.requests = 0
        self.win_len = 0
        self.suf_len = 0
        self.up = None
        self.loc = None
        self.server = None
        self.body_fd = -1
        self.spool = None
        self.logged = True
        self.parsed = False
        self.status = 0
        self.out_written = 0
        buf_reset(&self.rb)
        buf_reset(&self.wb)
        self.has_pp = False
        self.remote_replaced = False
        self.ssl = NULL
        self.plain_on_tls = False
        self.tls_read_wants_write = False
        self.sni_len = 0
        self.sni[0] = 0

    cdef int setup(self, int fd, Listener listener, sockaddr_storage *sa) except -1:
        """Take a new connection. Returns 0, or -2 when it must be refused at once."""
        cdef ListenBinding binding = listener.binding
        self.begin_connection(fd, listener)
        self.conn_serial = next_connection_serial()
        self.take_peer(sa)
        if binding.proxy_protocol:
            if binding.pp_trusted is not None and not binding.pp_trusted.trusted(self.peer_family, self.peer_addr):
                if g_log_info:
                    log_connection("info", self, "PROXY protocol from an untrusted address", 0)
                return -2       # refused: the caller closes it
            self.state = CS_PP_HEADER
            self.reset_request()
            timer_arm(self, binding.t_pp, g_now)
            return 0
        self.reset_request()
        if binding.ssl:
            client_tls_begin(self)
            return 0
        timer_arm(self, binding.t_header, g_now)
        return 0

    cdef void release_buffers(self) noexcept:
        """Give the connection's buffers back to the pool: between requests nothing is in
        flight (rb is empty; wb only once its bytes went out) and the next request takes
        them again (buffers.pyx)."""
        buf_free(&self.rb)
        if not self.output_pending():
            buf_free(&self.wb)
        buf_free(&self.uri)
        buf_free(&self.pbuf)
        buf_free(&self.hb)
        buf_free(&self.rh)
        buf_free(&self.capsrc)
        buf_free(&self.argbuf)

    cdef void take_peer(self, sockaddr_storage *sa) noexcept:
        """The TCP peer from accept(): its address, and $remote_addr until realip or the
        PROXY protocol say otherwise."""
        cdef uint16_t port = 0
        if sa.ss_family == AF_INET:
            self.peer_family = AF_INET
            memcpy(self.peer_addr, &(<sockaddr_in *>sa).sin_addr, 4)
            port = ntohs((<sockaddr_in *>sa).sin_port)
        elif sa.ss_family == AF_INET6:
            self.peer_family = AF_INET6
            memcpy(self.peer_addr, &(<sockaddr_in6 *>sa).sin6_addr, 16)
            port = ntohs((<sockaddr_in6 *>sa).sin6_port)
        else:
            self.peer_family = 0
        self.peer_port = port
        self.set_address(self.peer_family, self.peer_addr, port, self.conn_remote,
                         &self.conn_remote_len, self.conn_port, &self.conn_port_len)
        self.restore_remote()

    cdef void set_address(self, int family, const unsigned char *addr, uint16_t port,
                          char *text, size_t *text_len, char *port_text, size_t *port_len) noexcept:
        # once per connection: IPv4 and the port are written by hand (glibc's inet_ntop
        # formats IPv4 with sprintf, and snprintf costs more than the rest of accept)
        cdef size_t n = 0
        cdef int i
        if family == AF_INET:
            for i in range(4):
                if i:
                    text[n] = 46
                    n += 1
                n += format_uint(text + n, addr[i])
            text[n] = 0
            text_len[0] = n
        else:
            if family == AF_INET6:
                inet_ntop(family, addr, text, 64)
            else:
                text[0] = 0
            text_len[0] = strlen(text)
        n = format_uint(port_text, port)
        port_text[n] = 0
        port_len[0] = n

    cdef void restore_remote(self) noexcept:
        memcpy(self.remote, self.conn_remote, self.conn_remote_len + 1)
        self.remote_len = self.conn_remote_len
        memcpy(self.remote_port, self.conn_port, self.conn_port_len + 1)
        self.remote_port_len = self.conn_port_len
        self.remote_replaced = False

    cdef void read_proxy_header(self):
        """CS_PP_HEADER: the PROXY protocol header comes first; it may be split across
        reads. A missing or malformed header closes the connection."""
        cdef ProxyHeader h
        cdef int r, rd
        while True:
            if self.binding.ssl:
                # TLS follows the header and OpenSSL reads the socket itself: the header is
                # looked at in place and only its own bytes are taken from the socket
                rd = pp_peek(self.fd, &self.rb, PP_READ_LIMIT)
                if rd == RD_AGAIN:
                    self.readable = False
                    return
                if rd != RD_DATA:
                    self.close()
                    return
            r = pp_parse(self.rb.data + self.rb.start, buf_len(&self.rb), &h)
            if r > 0:
                if self.binding.ssl:
                    if pp_consume(self.fd, r) < 0:
                        self.close()
                        return
                    buf_reset(&self.rb)
                else:
                    self.rb.start += <size_t>r
                if h.family:
                    self.has_pp = True
                    self.pp_family = h.family
                    memcpy(self.pp_addr, h.src, 16)
                    self.pp_port_num = h.src_port
                    self.set_address(h.family, h.src, h.src_port, self.pp_text,
                                     &self.pp_text_len, self.pp_port, &self.pp_port_len)
                if self.binding.ssl:
                    client_tls_begin(self)
                    client_tls_step(self)
                    return
                self.state = CS_HEAD
                timer_arm(self, self.binding.t_header, g_now)
                self.serve_heads()
                return
            if r < 0:
                if g_log_info:
                    log_connection("info", self, "broken header while reading PROXY protocol", 0)
                self.close()
                return
            if self.binding.ssl:
                if buf_len(&self.rb) >= PP_READ_LIMIT:
                    self.close()
                    return
                self.readable = False       # peeked: the next bytes raise a new event
                return
            if not self.readable:
                return
            rd = self.read_more(PP_READ_LIMIT)
            if rd == RD_AGAIN:
                return
            if rd != RD_DATA:
                self.close()
                return

    cdef void apply_realip(self, RealIP realip):
        """nginx realip: replace $remote_addr when the connection comes from a trusted
        address and names the client (see realip.pyx)."""
        cdef size_t i
        cdef edge_header *h
        cdef bint is_xff
        if not realip.trusted(self.peer_family, self.peer_addr):
            return
        self.realip_family = 0
        if realip.source == REALIP_PROXY_PROTOCOL:
            if not self.has_pp:
                return
            memcpy(self.remote, self.pp_text, self.pp_text_len + 1)
            self.remote_len = self.pp_text_len
            memcpy(self.remote_port, self.pp_port, self.pp_port_len + 1)
            self.remote_port_len = self.pp_port_len
            self.remote_replaced = True
            return
        # X-Forwarded-For headers form one list, walked from the last one back; for any
        # other header the first one counts (nginx)
        is_xff = name_is(realip.header, len(realip.header), "x-forwarded-for", 15)
        if is_xff:
            i = self.nheaders
            while i > 0:
                i -= 1
                h = &self.headers[i]
                if name_is(h.name, h.name_len, realip.header, len(realip.header)):
                    if self.realip_walk(realip, h.value, h.value_len):
                        break
        else:
            for i in range(self.nheaders):
                h = &self.headers[i]
                if name_is(h.name, h.name_len, realip.header, len(realip.header)):
                    self.realip_walk(realip, h.value, h.value_len)
                    break
        if self.realip_family == 0:
            return
        inet_ntop(self.realip_family, self.realip_addr, self.remote, 64)
        self.remote_len = strlen(self.remote)
        if self.realip_port >= 0:
            self.remote_port_len = snprintf(self.remote_port, 8, "%d", self.realip_port)
        else:
            self.remote_port[0] = 0
            self.remote_port_len = 0
        self.remote_replaced = True

    cdef const unsigned char *remote_address(self, int *family) noexcept:
        """The binary address $remote_addr shows: what realip found, the PROXY
        protocol's client when realip took it from there, else the TCP peer."""
        if self.remote_replaced and self.realip_family:
            family[0] = self.realip_family
            return self.realip_addr
        if self.remote_replaced and self.has_pp:
            family[0] = self.pp_family
            return self.pp_addr
        family[0] = self.peer_family
        return self.peer_addr

    cdef bint realip_walk(self, RealIP realip, const char *value, size_t vlen) noexcept:
        """Walk one header value from the right (commas and spaces separate). Returns
        True when the client is found (or the walk must stop), False to go on with the
        previous header."""
        cdef size_t end = vlen
        cdef size_t start
        cdef int family = 0
        cdef int port = -1
        cdef unsigned char addr[16]
        while True:
            while end > 0 and (value[end - 1] == 44 or value[end - 1] == 32 or value[end - 1] == 9):
                end -= 1
            if end == 0:
                return False
            start = end
            while start > 0 and value[start - 1] != 44 and value[start - 1] != 32:
                start -= 1
            if parse_ip(value + start, end - start, &family, addr, &port) < 0:
                return True         # garbage: keep the last good address
            memcpy(self.realip_addr, addr, 16)
            self.realip_family = family
            self.realip_port = port
            if not realip.recursive or not realip.trusted(family, addr):
                return True
            end = start

    cdef void begin_request(self) noexcept:
        """The first bytes of a request head are here: what its log record and its
        metrics will say starts now."""
        self.logged = False
        self.parsed = False
        self.status = 0
        self.start_us = g_now_us
        self.produced_mark = self.out_written + self.pending_len()
        self.head_end_mark = -1
        self.head_len = 0
        self.body_raw = 0
        self.method_len = 0
        self.target_len = 0
        self.raw_target_len = 0
        self.nheaders = 0
        self.has_args = False
        self.request_id_len = 0
        self.ntries = 0
        self.req_number = self.requests + 1
        self.limit_delay_us = 0
        self.ncharges = 0
        self.rl_limit = -1
        self.rl_retry_after = 0
        self.rl_rejected = False
        self.rl_zone = None
        self.consumer = None
        self.credential_id = None
        self.raw_line_len = 0
        self.host_len = 0
        buf_reset(&self.uri)
        self.loc = None
        self.server = None
        buf_reset(&self.rh)

    cdef void keep_request_head(self, size_t head_len) noexcept:
        """Copy the request head out of rb and point the request at the copy, so that
        the log phase can still read it after the body went through rb."""
        cdef const char *base = self.rb.data + self.rb.start
        cdef const char *end = base + head_len
        cdef const char *nb
        cdef size_t i
        buf_reset(&self.hb)
        if buf_append(&self.hb, base, head_len) < 0:
            return
        nb = self.hb.data
        self.method = rebase(self.method, base, end, nb)
        self.target = rebase(self.target, base, end, nb)
        self.raw_target = rebase(self.raw_target, base, end, nb)
        self.args = rebase(self.args, base, end, nb)
        self.abs_host = rebase(self.abs_host, base, end, nb)
        for i in range(self.nheaders):
            self.headers[i].name = rebase(self.headers[i].name, base, end, nb)
            self.headers[i].value = rebase(self.headers[i].value, base, end, nb)

    cdef void keep_raw_line(self) noexcept:
        """$request of a head that does not parse is its first line as received, as
        nginx logs it (the log escapes what is not printable)."""
        cdef const char *p = self.rb.data + self.rb.start
        cdef size_t n = buf_len(&self.rb)
        cdef size_t i = 0
        if n > 8192:
            n = 8192
        while i < n and p[i] != 13 and p[i] != 10:
            i += 1
        self.raw_line = p
        self.raw_line_len = i

    cdef void log_request(self, bint aborted) noexcept:
        """The log phase: once per request, however it ended. Metrics always; the
        access logs of the location (or of the server, for requests no location took)."""
        cdef PhasePlan phases
        cdef int64_t *row
        cdef int64_t us
        if self.logged:
            return
        self.logged = True
        self.aborted = aborted
        if self.gz is not None:
            gzip_release(self)
        if self.ncharges:
            release_conn_charges(self)
        if aborted and self.head_end_mark < 0:
            # nginx: 499 when the client went away before the response head; a head
            # that never completed is a bad request
            self.status = 499 if self.parsed else 400
        if self.loc is not None:
            phases = self.loc.phases
        elif self.server is not None:
            phases = self.server.phases
        elif self.binding is not None and self.binding.default is not None:
            phases = self.binding.default.phases
        else:
            return
        us = g_now_us - self.start_us
        row = my_row(phases.route_series)
        if row != NULL:
            observe(row, us)
            row[R_RECEIVED] += <int64_t>self.head_len + self.body_raw
            row[R_SENT] += self.bytes_sent()
        row = my_row(phases.code_series(self.status))
        if row != NULL:
            row[0] += 1
        if phases.nlog:
            run_log_handlers(phases.log, self)

    cdef int64_t bytes_sent(self) noexcept:
        """$bytes_sent: the response as produced, or as far as it went out when the
        connection ended early."""
        cdef int64_t end = self.out_written if self.aborted else self.out_written + self.pending_len()
        return end - self.produced_mark if end > self.produced_mark else 0

    cdef int64_t body_bytes_sent(self) noexcept:
        cdef int64_t end = self.out_written if self.aborted else self.out_written + self.pending_len()
        if self.head_end_mark < 0 or end <= self.head_end_mark:
            return 0
        return end - self.head_end_mark

    cdef void record_try(self, int peer, int status, int64_t connect_us, int64_t header_us,
                         int64_t response_us) noexcept:
        """One upstream attempt ended: for $upstream_* and the upstream's histogram."""
        cdef UpTry *t
        cdef int64_t *row
        if self.ntries < MAX_TRIES:
            t = &self.tries_log[self.ntries]
            t.peer = peer
            t.status = status
            t.connect_us = connect_us
            t.header_us = header_us
            t.response_us = response_us
            self.ntries += 1
        if self.loc is not None and self.ups is not None:
            row = my_row(self.ups.series)
            if row != NULL:
                observe(row, response_us)

    cdef void reset_request(self) noexcept:
        # the next request runs on the newest config generation (reload in place)
        self.binding = self.listener.binding
        self.body_kind = BODY_NONE
        self.body_left = 0
        self.body_received = 0
        self.body_done = True
        self.body_started = False
        self.response_started = False
        self.is_head = False
        self.expect_continue = False
        self.discarding = False
        self.upgrade = False
        self.tried_peers = 0
        self.tries = 0
        self.routed = False
        self.mirror_heads = None
        self.uri_changes = 10           # internal redirects left (rewrite, index, try_files)
        self.err_status = 0
        self.error_paged = False
        self.resp_mtime = -1
        if self.uvals is not None:
            self.uvals = None           # user variables are per request
        if self.body_buffered or self.body_fd >= 0:
            release_request_body(self)
        if self.spool is not None:
            release_spool(self)
        self.gz = None

    cdef void close(self):
        """Close the connection now and return the object to the free list."""
        cdef UpConn up
        if self.state == CS_FREE:
            return
        if not self.logged:
            if self.up is not None and self.up.client is self:
                # a tunnel that ended, or a try abandoned while the upstream worked
                self.up.record_try(self, self.up.status if self.up.head_done else 0)
            self.log_request(True)
        timer_stop(self)
        if self.up is not None:
            up = self.up
            self.up = None
            up.client = None
            up.close()
        release_request_body(self)
        release_spool(self)
        self.gz = None
        g_loop.unregister(self)
        if self.ssl != NULL:
            tls_free(&self.ssl, self.state != CS_HANDSHAKE and not self.aborted)
        close(self.fd)
        self.fd = -1
        self.state = CS_FREE
        self.loc = None
        self.server = None
        self.binding = None
        self.listener = None
        g_loop.client_closed(self)

    # ---- events -----------------------------------------------------------------------

    cdef void on_events(self, uint32_t events):
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable = True
        if events & EPOLLRDHUP:
            self.peer_closed = True
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.writable = True
            if self.tls_read_wants_write:
                self.tls_read_wants_write = False
                self.readable = True
        if (events & (EPOLLHUP | EPOLLERR)) and self.state == CS_PROXY:
            # reset by the client while the upstream works for it: stop both
            self.close()
            return
        if self.state == CS_DELAY:
            if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                self.close()        # the client left while its request waited: 499
            return
        if (events & EPOLLRDHUP) and self.state == CS_PROXY and self.body_done \
                and buf_len(&self.rb) == 0 and not self.upgrade and not self.loc.ignore_client_abort:
            # the client closed its side while its request is proxied: as nginx with
            # proxy_ignore_client_abort off, the request is abandoned and the upstream
            # connection closed (499 when no response head went out; log_request). A FIN
            # cannot tell a client that half-closed from one that left, and a response to
            # one that left would only meet its RST at the next write, or hold the upstream
            # until then. Bytes after the request (pipelined) keep it going, unlike nginx.
            if g_log_info:
                log_connection("info", self, "client prematurely closed connection, so upstream connection is closed too", 0)
            self.close()
            return
        self.drive()

    cdef void drive(self):
        cdef int r
        if self.state == CS_HEAD:
            self.serve_heads()
        elif self.state == CS_PROXY:
            if self.writable and self.output_pending():
                r = self.flush()
                if r < 0:
                    self.close()
                    return
                if r == 0:
                    return
            if self.up is not None:
                self.up.drive()
            elif spool_pending(self):
                # the upstream is done and back in its pool: send the rest, then end
                r = spool_drain(self)
                if r < 0:
                    self.close()
                elif r == 1:
                    self.proxy_finished()
        elif self.state == CS_BODY:
            read_buffered_body(self)
        elif self.state == CS_CLOSING:
            # the last response of a plain connection that closes at once (no lingering):
            # its last segment leaves with close()'s FIN
            r = self.flush(self.ssl == NULL and not self.input_may_remain())
            if r != 0:
                self.start_linger(r)
        elif self.state == CS_LINGER:
            self.linger_read()
        elif self.state == CS_DISCARD:
            self.serve_heads()
        elif self.state == CS_PP_HEADER:
            self.read_proxy_header()
        elif self.state == CS_HANDSHAKE:
            client_tls_step(self)

    cdef void on_timeout(self):
        if self.state == CS_DELAY:
            self.state = CS_HEAD
            self.run_content()
            if self.state == CS_HEAD:
                self.serve_heads()      # send it, and go on with pipelined requests
            return
        if self.state == CS_HEAD:
            if buf_len(&self.rb) > 0:
                # a request started and stalled: client_header_timeout
                self.send_error(408, "client timed out while reading client request headers")
            else:
                self.close()    # idle keep-alive connection
        elif self.state == CS_BODY:
            self.send_error(408, "client timed out while reading client request body")  # client_body_timeout
        elif self.state == CS_HANDSHAKE:
            if g_log_info:
                log_connection("info", self, "client timed out in SSL handshake", 0)
            self.close()        # ssl_handshake_timeout
        elif self.state == CS_PROXY:
            if self.output_pending() or spool_pending(self):
                self.close()    # send_timeout: the client stopped reading
            elif not self.body_done and not self.response_started:
                self.send_error(408, "client timed out while reading client request body")  # client_body_timeout
            else:
                self.close()
        else:
            self.close()

    # ---- output -------------------------------------------------------------------------

    cdef bint reusable(self) noexcept:
        """Holding a slot while doing nothing: an idle keep-alive connection, or a new one
        that has not sent its first byte (plain, PROXY protocol or TLS). nginx closes
        these first when worker_connections run out."""
        if self.state == CS_HANDSHAKE:
            return self.ssl == NULL
        if self.state == CS_HEAD or self.state == CS_PP_HEADER:
            return (self.logged and buf_len(&self.rb) == 0 and not self.output_pending()
                    and self.up is None and self.spool is None)
        return False

    cdef inline bint output_pending(self) noexcept:
        return buf_len(&self.wb) > 0 or self.win_len > 0 or self.suf_len > 0

    cdef inline int64_t pending_len(self) noexcept:
        return <int64_t>(buf_len(&self.wb) + self.win_len + self.suf_len)

    cdef int flush(self, bint closing=False) noexcept:
        """Write queued output. 1: all sent; 0: the socket is full; -1: error. `closing`:
        close() follows as soon as all is sent (see write_queued's `more`)."""
        cdef bint wrote = False
        cdef int64_t before = self.pending_len()
        cdef int r
        if self.ssl != NULL:
            r = tls_write_queued(self.ssl, &self.wb, &self.win, &self.win_len,
                                 &self.suf, &self.suf_len, &wrote)
        else:
            r = write_queued(self.fd, &self.wb, &self.win, &self.win_len,
                             &self.suf, &self.suf_len, &wrote, closing)
        self.out_written += before - self.pending_len()
        if r == 0:
            self.writable = False
            self.wait_writable(wrote)
        elif r == 1 and self.state == CS_PROXY:
            self.output_caught_up()
        return r

    cdef inline void output_caught_up(self) noexcept:
        """All queued output is out: send_timeout no longer runs (a response that goes on
        later, from a slow upstream, must not be cut by it)."""
        if self.tlist is not None and self.loc is not None and self.tlist is self.loc.t_send_client:
            timer_stop(self)

    cdef void wait_writable(self, bint wrote) noexcept:
        """The socket is full: send_timeout runs between two writes that made progress,
        and the writable event is asked for if it was not yet."""
        cdef TimerList send_timer = self.loc.t_send_client if self.loc is not None else self.binding.t_header
        if not self.out_armed:
            self.arm_write_event()
        if wrote or self.tlist is not send_timer:
            timer_arm(self, send_timer, g_now)

    cdef void arm_write_event(self) noexcept:
        """A plain connection is registered for reading only (as nginx registers it): most
        responses go out in one write, and a registered EPOLLOUT would make the kernel
        queue an event for every ACK that frees socket space. The first write that meets
        a full socket adds EPOLLOUT; EPOLL_CTL_MOD reports it at once if the socket has
        room again already, so no wake-up is lost."""
        cdef epoll_event ev
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        ev.data.u64 = 0
        ev.data.fd = self.fd
        self.out_armed = True
        epoll_ctl(g_loop.epfd, EPOLL_CTL_MOD, self.fd, &ev)

    cdef void append_date(self) noexcept:
        buf_append(&self.wb, g_date, g_date_len)

    cdef void send_error(self, int status, const char *reason=NULL):
        """A built-in error page; the connection closes after it (framing may be in doubt).
        The reason goes to the error log once, at info level, as nginx logs client errors."""
        cdef bytes head = error_head(status)
        cdef bytes body = error_body(status)
        if reason != NULL and g_log_info:
            log_connection("info", self, reason, status)
        if (self.routed and self.parsed and self.up is None and not self.response_started
                and self.state != CS_CLOSING and self.state != CS_LINGER):
            # once a server is chosen, its error_page may answer (error_page.pyx)
            self.keepalive = False
            if run_error_page(self, status):
                return
        elif (not self.routed and status != 408 and self.state == CS_HEAD and self.up is None
                and self.binding is not None and self.binding.default is not None
                and self.binding.default.error_pages is not None):
            # a request refused before a server was chosen: nginx answers it with the
            # error_page of the address's default server
            if run_unrouted_error_page(self, status):
                return
        if self.up is not None:
            self.up.client = None
            self.up.close()
            self.up = None
        self.win_len = 0
        self.suf_len = 0
        self.keepalive = False
        if not self.parsed:
            self.keep_raw_line()
        self.begin_head(wire_status(status))
        buf_append_bytes(&self.wb, head)
        self.append_date()
        self.append_connection()
        if not self.is_head:
            buf_append_bytes(&self.wb, body)
        self.log_request(False)
        self.state = CS_CLOSING
        self.drive()

    cdef void start_linger(self, int flush_result):
        """Half-close and read what the client still sends for a moment, so our response
        is not destroyed by a reset when unread request bytes remain (nginx's lingering
        close). Like nginx's `lingering_close on`, only when such bytes may remain: else
        the connection closes at once (the client's FIN then meets an orphaned socket,
        which is not a reset)."""
        if flush_result < 0 or not self.input_may_remain():
            self.close()
            return
        if self.ssl != NULL:
            SSL_shutdown(self.ssl)      # close_notify before the TCP half-close
            ERR_clear_error()
        shutdown(self.fd, SHUT_WR)
        self.state = CS_LINGER
        timer_arm(self, t_linger, g_now)
        self.linger_read()

    cdef inline void set_nodelay(self) noexcept:
        """TCP_NODELAY, once per connection, where Nagle could hold back a write behind
        an unacknowledged small one (nginx's tcp_nodelay): a connection that goes
        keep-alive, a proxied response (written as the upstream sends it), TLS. A
        Connection: close response written in one go does not need it. `tcp_nodelay off`
        (of the listen address's default server) leaves Nagle on."""
        cdef int one = 1
        if not self.nodelay:
            self.nodelay = True
            if self.listener is not None and self.listener.binding.tcp_nodelay:
                setsockopt(self.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))

    cdef inline bint input_may_remain(self) noexcept:
        """After the last response: may client bytes we have not read still arrive or
        wait in the socket? A body not read to its end (or being discarded), bytes after
        the request in rb, a socket not known to be drained (the last read filled its
        room, or TLS, where a short read proves nothing), or a connection that pipelined
        before (more may be in flight). nginx lingers in the same cases."""
        return (not self.body_done or self.discarding or buf_len(&self.rb) > 0
                or self.readable or self.pipelined)

    cdef void linger_read(self):
        cdef char scratch[4096]
        cdef ssize_t r
        while True:
            if self.ssl != NULL:
                r = tls_read_discard(self.ssl, scratch, 4096)
            else:
                r = recv(self.fd, scratch, 4096, 0)
            if r > 0:
                continue
            if r < 0 and errno == EINTR:
                continue
            if r < 0 and errno == EAGAIN:
                return
            self.close()
            return

    # ---- input --------------------------------------------------------------------------

    cdef bint input_waiting(self) noexcept:
        """Bytes from the client wait in the kernel (read state may be stale)."""
        cdef char probe
        if self.ssl != NULL and SSL_pending(self.ssl) > 0:
            return True
        return recv(self.fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT) > 0

    cdef int read_more(self, size_t limit, size_t chunk=READ_CHUNK) noexcept:
        """Read once into rb, holding at most `limit` bytes, at most `chunk` at once.
        RD_* result."""
        cdef int r
        if self.ssl != NULL:
            r = tls_read_into(self.ssl, &self.rb, limit, chunk, &self.readable,
                              &self.tls_read_wants_write)
        else:
            r = read_into(self.fd, &self.rb, limit, chunk, &self.readable,
                          self.peer_closed)
        if r == RD_EOF:
            self.peer_closed = True
        return r

    cdef int read_head(self, size_t limit) noexcept:
        """Read for a request head, as nginx sizes its buffers: a new head is read into
        client_header_buffer_size (1k), and only a head that outgrows it gets room by
        large_client_header_buffers' size. A buffer that is larger already (pipelined
        requests, a body just read) is filled as it is."""
        cdef size_t chunk
        if buf_len(&self.rb) == 0:
            chunk = self.binding.client_header_buffer_size
        else:
            chunk = self.binding.large_header_buffer_size
        if self.rb.data != NULL and self.rb.cap - buf_len(&self.rb) > chunk:
            chunk = self.rb.cap - buf_len(&self.rb)
        return self.read_more(limit, chunk)

    cdef void serve_heads(self):
        """Read, parse and answer request heads until the input runs dry, output backs up,
        or a request goes to an upstream."""
        cdef int ret, rd
        cdef const char *method
        cdef size_t method_len
        cdef const char *path
        cdef size_t path_len
        cdef int minor
        cdef size_t nh
        cdef size_t limit = self.binding.large_header_buffer_size * self.binding.large_header_buffers
        cdef int flushed
        cdef bint fresh
        while True:
            if self.state == CS_DISCARD:
                self.discard_body()
            if self.state != CS_HEAD:
                return
            fresh = False
            if self.output_pending():
                flushed = self.flush()
                if flushed < 0:
                    self.close()
                    return
                if flushed == 0 and buf_len(&self.wb) > OUTPUT_HIGH_WATER:
                    return          # wait for the client to read
            if buf_len(&self.rb) == 0:
                if not self.readable:
                    self.go_idle()
                    return
                rd = self.read_head(limit)
                if rd == RD_AGAIN:
                    self.go_idle()
                    return
                if rd != RD_DATA:
                    if self.output_pending():
                        self.state = CS_CLOSING
                        self.drive()
                    else:
                        self.close()
                    return
                # a new request head starts: client_header_timeout runs from here and is
                # not restarted by each further byte, so a slowloris client is cut
                timer_arm(self, self.binding.t_header, g_now)
                fresh = True
            if self.logged:
                if not fresh and self.requests > 0:
                    self.pipelined = True   # its bytes came with the previous request
                self.begin_request()
            nh = self.binding.max_headers
            ret = edge_parse_request(self.rb.data + self.rb.start, buf_len(&self.rb),
                                     &method, &method_len, &path, &path_len, &minor,
                                     self.headers, &nh, 0)
            if ret == -2:
                if buf_len(&self.rb) >= limit:
                    self.send_error(self.oversize_status(), "client sent too large request head")
                    return
                if self.tlist is not self.binding.t_header:
                    timer_arm(self, self.binding.t_header, g_now)
                if not self.readable:
                    return
                rd = self.read_head(limit)
                if rd == RD_DATA:
                    continue
                if rd == RD_AGAIN:
                    return
                if rd == RD_FULL:
                    self.send_error(self.oversize_status(), "client sent too large request head")
                    return
                self.close()        # EOF or error in the middle of a head
                return
            if ret == -3:
                self.send_error(431, "client sent too many header lines")
                return
            if ret < 0:
                self.reject_unparsable()
                return
            self.method = method
            self.method_len = method_len
            self.target = path
            self.target_len = path_len
            self.minor = minor
            self.nheaders = nh
            self.handle_request(<size_t>ret)

    cdef void reject_unparsable(self):
        """The head does not parse: 505 for a well-formed request line with an HTTP
        version other than 1.0/1.1 (RFC 9110 15.6.6), else 400."""
        cdef int major = 0
        cdef int minor = 0
        if edge_request_http_version(self.rb.data + self.rb.start, buf_len(&self.rb),
                                     &major, &minor) == 0 and minor >= 0 \
                and not (major == 1 and minor in (0, 1)):
            self.send_error(505, "client sent unsupported HTTP version")
        elif self.request_line_valid():
            self.send_error(400, "client sent invalid header line while reading client request headers")
        else:
            self.send_error(400, "client sent invalid request while reading client request line")

    cdef bint request_line_valid(self) noexcept:
        """For the log: does the head's first line parse on its own?"""
        cdef const char *start = self.rb.data + self.rb.start
        cdef const char *nl = <const char *>memchr(start, 10, buf_len(&self.rb))
        cdef char line[8192 + 4]
        cdef size_t n
        cdef const char *method
        cdef size_t method_len
        cdef const char *path
        cdef size_t path_len
        cdef int minor
        cdef size_t nh = 0
        if nl == NULL:
            return False
        n = <size_t>(nl - start) + 1
        if n > 8192:
            return False
        memcpy(line, start, n)
        line[n] = 13
        line[n + 1] = 10
        return edge_parse_request(line, n + 2, &method, &method_len, &path, &path_len,
                                  &minor, NULL, &nh, 0) > 0

    cdef int oversize_status(self) noexcept:
        """Too large a head: 414 when the request line alone does not fit in one large
        buffer, else 431 (documented rule)."""
        cdef const char *nl = <const char *>memchr(self.rb.data + self.rb.start, 10,
                                                  buf_len(&self.rb))
        if nl == NULL or <size_t>(nl - (self.rb.data + self.rb.start)) >= self.binding.large_header_buffer_size:
            return 414
        return 431

    cdef void go_idle(self) noexcept:
        """No request in progress and no bytes to read: the keep-alive timeout (or, before
        the first request, client_header_timeout) runs, and the buffers go back to the
        pool until bytes arrive (idle.pyx parks the object itself a second later)."""
        if self.requests > 0 and self.loc is not None:
            timer_arm(self, self.loc.t_keepalive, g_now)
        else:
            timer_arm(self, self.binding.t_header, g_now)
        self.release_buffers()

    # ---- one request ----------------------------------------------------------------------

    cdef void handle_request(self, size_t head_len):
        cdef size_t i
        cdef edge_header *h
        cdef int host_index = -1
        cdef int cl_index = -1
        cdef int te_index = -1
        cdef int64_t content_length = -1
        cdef int64_t v
        cdef const char *hostp = NULL
        cdef size_t hostn = 0
        cdef const char *pathp
        cdef size_t pathn
        cdef const char *q
        cdef bint client_close = False
        cdef bint client_keepalive = False
        cdef Location loc
        cdef PhasePlan phases
        cdef int r
        cdef bint consumed = False

        self.reset_request()
        self.parsed = True
        self.head_len = head_len
        self.raw_target = self.target
        self.raw_target_len = self.target_len
        self.connection_header = -1
        self.upgrade_index = -1
        self.abs_host = NULL
        self.abs_host_len = 0
        if self.remote_replaced:
            self.restore_remote()
        self.is_head = self.method_len == 4 and memcmp(self.method, "HEAD", 4) == 0
        if head_len > self.binding.large_header_buffer_size * self.binding.large_header_buffers:
            self.send_error(431, "client sent too large request head")
            return
        # each line must fit in one large buffer: the request line (414), a header (431)
        if self.method_len + self.target_len + 11 > self.binding.large_header_buffer_size:
            self.send_error(414, "client sent too long URI")
            return
        for i in range(self.nheaders):
            h = &self.headers[i]
            if h.name_len + h.value_len + 4 > self.binding.large_header_buffer_size:
                self.send_error(431, "client sent too long header line")
                return

        # one pass over the headers for everything framing and routing depend on
        for i in range(self.nheaders):
            h = &self.headers[i]
            if name_is(h.name, h.name_len, "host", 4):
                if host_index >= 0:
                    self.send_error(400, "client sent duplicate host header")        # several Host headers (RFC 9112 3.2)
                    return
                host_index = <int>i
            elif name_is(h.name, h.name_len, "content-length", 14):
                v = edge_parse_content_length(h.value, h.value_len)
                if v < 0 or (content_length >= 0 and v != content_length):
                    self.send_error(400, "client sent invalid 'Content-Length' header")
                    return
                content_length = v
                cl_index = <int>i
            elif name_is(h.name, h.name_len, "transfer-encoding", 17):
                if te_index >= 0:
                    self.send_error(400, "client sent duplicate 'Transfer-Encoding' header")        # repeated TE: refuse rather than merge
                    return
                te_index = <int>i
            elif name_is(h.name, h.name_len, "connection", 10):
                self.connection_header = <int>i
                if token_listed(h.value, h.value_len, "close", 5):
                    client_close = True
                if token_listed(h.value, h.value_len, "keep-alive", 10):
                    client_keepalive = True
            elif name_is(h.name, h.name_len, "upgrade", 7):
                self.upgrade_index = <int>i
            elif name_is(h.name, h.name_len, "expect", 6):
                if h.value_len == 12 and strncasecmp(h.value, "100-continue", 12) == 0:
                    self.expect_continue = self.minor == 1
                else:
                    self.send_error(417, "client sent unknown 'Expect' value")
                    return

        # body framing (RFC 9112 6.1-6.3): TE with CL is refused, TE must be exactly chunked
        if te_index >= 0:
            if cl_index >= 0 or self.minor == 0:
                self.send_error(400, "client sent 'Transfer-Encoding' with 'Content-Length' or on HTTP/1.0")
                return
            h = &self.headers[te_index]
            if not (h.value_len == 7 and strncasecmp(h.value, "chunked", 7) == 0):
                self.send_error(501 if not token_listed(h.value, h.value_len, "chunked", 7) else 400, "client sent unsupported 'Transfer-Encoding'")
                return
            self.body_kind = BODY_CHUNKED
            self.body_done = False
            memset(&self.body_dec, 0, sizeof(edge_chunked_decoder))
        elif content_length > 0:
            self.body_kind = BODY_LENGTH
            self.body_left = content_length
            self.body_done = False

        # request target: origin-form, absolute-form (its host wins), or "*" for OPTIONS
        pathp = self.target
        pathn = self.target_len
        if pathn and pathp[0] != 47:
            if pathn == 1 and pathp[0] == 42:
                if not (self.method_len == 7 and memcmp(self.method, "OPTIONS", 7) == 0):
                    self.send_error(400, "client sent '*' request target without OPTIONS")
                    return
                pathp = "/"
                pathn = 1
            elif pathn > 7 and (strncasecmp(pathp, "http://", 7) == 0 or
                                (pathn > 8 and strncasecmp(pathp, "https://", 8) == 0)):
                i = 7 if pathp[4] == 58 else 8
                hostp = pathp + i
                while i < pathn and pathp[i] != 47 and pathp[i] != 63:
                    i += 1
                hostn = <size_t>((pathp + i) - hostp)
                self.abs_host = hostp       # RFC 9112 3.2.2: it replaces Host upstream
                self.abs_host_len = hostn
                pathp = pathp + i
                pathn = pathn - i
                self.target = pathp
                self.target_len = pathn
                if pathn == 0 or pathp[0] == 63:
                    pathp = "/"
                    pathn = 1
            elif self.method_len == 7 and memcmp(self.method, "CONNECT", 7) == 0:
                self.send_error(405, "client sent CONNECT request")
                return
            else:
                self.send_error(400, "client sent invalid request target")
                return
        if self.method_len == 7 and memcmp(self.method, "CONNECT", 7) == 0:
            self.send_error(405, "client sent CONNECT request")
            return

        q = <const char *>memchr(pathp, 63, pathn)   # '?'
        if q != NULL:
            self.has_args = True
            self.args = q + 1
            self.args_len = pathn - <size_t>(q + 1 - pathp)
            pathn = <size_t>(q - pathp)
        else:
            self.has_args = False
            self.args = NULL
            self.args_len = 0
        if normalize_path(pathp, pathn, &self.uri) < 0:
            self.send_error(400, "client sent invalid path")
            return

        if host_index >= 0 and not host_value_valid(self.headers[host_index].value,
                                                     self.headers[host_index].value_len):
            # empty, only whitespace, or not uri-host[:port]: refused even when an
            # absolute-form target names the host (RFC 9112 3.2, as nginx)
            self.send_error(400, "client sent invalid host header")
            return
        if hostp == NULL and host_index >= 0:
            hostp = self.headers[host_index].value
            hostn = self.headers[host_index].value_len
        elif hostp == NULL and self.minor == 1:
            self.send_error(400, "client sent HTTP/1.1 request without 'Host' header")                # HTTP/1.1 requires Host (RFC 9112 3.2)
            return
        if self.set_host(hostp, hostn) < 0:
            self.send_error(400, "client sent invalid host header")
            return

        if self.minor == 1:
            self.keepalive = not client_close
        else:
            self.keepalive = client_keepalive and not client_close

        # routing
        self.server = self.binding.find_server(self.host, self.host_len)
        self.routed = True
        if self.binding.ssl and client_tls_refuses(self):
            return
        self.cap_base = NULL
        self.rewritten = False
        self.rw_break = False
        if self.server.script is not None:
            # nginx's server rewrite phase, before any location is known
            self.loc = None
            self.rb.start += head_len
            self.requests += 1
            consumed = True
            r = run_handlers([self.server.script], self)
            if r != PH_CONTINUE:
                if r != PH_DONE:
                    self.finish_without_body(r)
                return
        loc = self.server.find_location(self.uri.data, buf_len(&self.uri), self.caps)
        if loc is None:
            self.loc = None
            if not consumed:
                self.rb.start += head_len
                self.requests += 1
            self.finish_without_body(404)
            return
        self.loc = loc
        if loc.realip is not None:
            self.apply_realip(loc.realip)
        if self.requests + (0 if consumed else 1) >= loc.keepalive_requests or g_loop.quitting:
            self.keepalive = False
        elif (loc.keepalive_disable and self.keepalive
              and (loc.keepalive_disable != KEEPALIVE_DISABLE_MSIE6 or self.method_len == 4)
              and agent_disables_keepalive(self, loc.keepalive_disable)):
            # the default (msie6) looks at POST requests only: a GET pays two tests
            self.keepalive = False
        if loc.client_max_body_size and content_length > loc.client_max_body_size:
            self.send_error(413, "client intended to send too large body")
            return
        phases = loc.phases
        if phases.keep_head and loc.content == CONTENT_PROXY:
            if consumed:
                self.rb.start -= head_len
            self.keep_request_head(head_len)    # its body will be read into rb
            if consumed:
                self.rb.start += head_len
        if not consumed:
            self.rb.start += head_len
            self.requests += 1

        if phases.nrewrite:
            r = run_handlers(phases.rewrite, self)
            if r == PH_RELOCATE:
                r = self.relocate(content_length)
            if r != PH_CONTINUE:
                if r != PH_DONE:
                    self.finish_without_body(r)
                return
            if self.loc is not loc:
                phases = self.loc.phases
                if phases.keep_head and self.loc.content == CONTENT_PROXY and not \
                        (loc.phases.keep_head and loc.content == CONTENT_PROXY):
                    self.rb.start -= head_len
                    self.keep_request_head(head_len)
                    self.rb.start += head_len
        self.access_then_content()

    cdef void access_then_content(self):
        """The access phase of self.loc, then its content phase (or, for limit_req
        without nodelay, the wait on a timer that runs the content phase after)."""
        cdef PhasePlan phases = self.loc.phases
        cdef int r
        if phases.naccess:
            r = run_handlers(phases.access, self)
            if r != PH_CONTINUE:
                if r != PH_DONE:
                    self.finish_without_body(r)
                return
            if self.limit_delay_us > 0:
                # limit_req without nodelay: wait for the request's turn on a timer
                self.state = CS_DELAY
                timer_arm_at(self, t_delay, g_now + (self.limit_delay_us + 999) // 1000)
                return
        self.run_content()

    cdef int relocate(self, int64_t content_length):
        """A rewrite changed the URI (nginx's post-rewrite phase): search the location
        again and run its rewrite phase, at most 10 times, then 500. PH_CONTINUE with
        self.loc set, PH_DONE when answered, or a status."""
        cdef Location loc
        cdef int r = PH_RELOCATE
        while r == PH_RELOCATE:
            if self.uri_changes == 0:
                if g_log_fn is not None:
                    g_log_fn("error", "rewrite or internal redirection cycle while processing \"%s\""
                             % self.uri.data[:buf_len(&self.uri)].decode("latin-1"))
                return 500
            self.uri_changes -= 1
            self.cap_base = NULL
            loc = self.server.find_location(self.uri.data, buf_len(&self.uri), self.caps)
            self.loc = loc
            if loc is None:
                return 404
            if loc.client_max_body_size and content_length > loc.client_max_body_size:
                self.send_error(413, "client intended to send too large body")
                return PH_DONE
            r = PH_CONTINUE
            if loc.phases.nrewrite:
                r = run_handlers(loc.phases.rewrite, self)
        return r

    cdef void run_content(self):
        """The content phase: exactly one of proxy_pass, return, health."""
        cdef Location loc = self.loc
        if loc.content == CONTENT_PROXY:
            self.start_proxy()
        elif loc.content == CONTENT_RETURN:
            self.respond_return(loc)
        elif loc.content == CONTENT_HEALTH:
            self.respond_health(loc)
        elif loc.content == CONTENT_STATIC:
            serve_static(self, <StaticConf>loc.static)
        else:
            self.finish_without_body(404)

    cdef int set_host(self, const char *p, size_t n) noexcept:
        """The request's host, as host_normalize() makes it; -1 for an invalid one."""
        if host_normalize(p, n, self.host, &self.host_len) < 0:
            return -1
        return 0

    cdef int skip_request_body(self) noexcept:
        """Drop the request body bytes buffered so far, for responses that do not read it
        (return, 404): 1 when the whole body is gone, 0 when more is to come, -1 when its
        framing is broken. nginx discards such bodies the same way to keep the connection."""
        cdef size_t n, sz
        cdef ssize_t ret
        if self.body_done:
            return 1
        if self.body_kind == BODY_LENGTH:
            n = buf_len(&self.rb)
            if <int64_t>n > self.body_left:
                n = <size_t>self.body_left
            self.rb.start += n
            self.body_left -= n
            self.body_raw += n
            self.body_done = self.body_left == 0
            return 1 if self.body_done else 0
        sz = buf_len(&self.rb)
        n = sz
        ret = edge_decode_chunked(&self.body_dec, self.rb.data + self.rb.start, &sz)
        if ret == -1:
            return -1
        self.body_raw += <int64_t>(n - <size_t>ret) if ret >= 0 else <int64_t>n
        if ret >= 0:
            self.rb.end = self.rb.start + sz + <size_t>ret
            self.rb.start += sz
            self.body_done = True
            return 1
        self.rb.start = self.rb.end
        return 0

    cdef void start_discard(self) noexcept:
        cdef int r = self.skip_request_body()
        if r < 0:
            self.keepalive = False
        self.discarding = r == 0

    cdef void discard_body(self):
        """CS_DISCARD: the response is queued; read and drop the rest of the body, then
        go on with the next request on this connection."""
        cdef int r, rd
        while True:
            if self.output_pending():
                if self.flush() < 0:
                    self.close()
                    return
            r = self.skip_request_body()
            if r < 0:
                self.state = CS_CLOSING
                self.drive()
                return
            if r == 1:
                self.discarding = False
                self.state = CS_HEAD
                self.reset_request()
                return
            if not self.readable:
                timer_arm(self, self.loc.t_body if self.loc is not None else self.binding.t_header, g_now)
                return
            rd = self.read_more(READ_CHUNK * 4)
            if rd == RD_AGAIN:
                continue
            if rd != RD_DATA:
                self.close()
                return

    cdef void finish_without_body(self, int status):
        """A built-in page (404 where no content handler applies) that keeps the
        connection alive when the request body allows it; or the error_page in force
        for that status (error_page.pyx)."""
        cdef bytes head
        if run_error_page(self, status):
            return
        head = error_head(status)
        self.start_discard()
        self.begin_head(status)
        buf_append_bytes(&self.wb, head)
        self.append_date()
        self.append_connection()
        if not self.is_head:
            buf_append_bytes(&self.wb, error_body(status))
        self.response_done()

    cdef inline void begin_head(self, int status) noexcept:
        """A response head starts in wb (every head edge writes ends in end_head)."""
        self.status = status
        self.head_begin = buf_len(&self.wb)

    cdef void end_head(self, const char *connection_line) noexcept:
        """The end of every response head: the header filters, the Connection line,
        then what the log phase keeps of it."""
        cdef PhasePlan phases = self.loc.phases if self.loc is not None else None
        cdef size_t n
        if self.err_status:
            patch_status_line(self)     # a response to an error_page: the error's status
        if phases is None and self.routed:
            phases = self.server.phases     # a server-level answer, or no location matched
        if phases is not None and phases.nheader_filter:
            run_header_filters(phases.header_filter, self, &self.wb)
        buf_append_str(&self.wb, connection_line)
        self.head_end_mark = self.out_written + self.pending_len()
        if phases is not None and phases.keep_response_head:
            n = buf_len(&self.wb) - self.head_begin
            buf_reset(&self.rh)
            buf_append(&self.rh, self.wb.data + self.wb.end - n, n)

    cdef inline void append_connection(self) noexcept:
        if self.keepalive:
            self.end_head("Connection: keep-alive\r\n\r\n")
        else:
            self.end_head("Connection: close\r\n\r\n")

    cdef void respond_return(self, Location loc):
        cdef int status = loc.return_status
        cdef size_t mark, body_start
        cdef bytes body
        if loc.return_body is None and (loc.return_location is not None or status >= 400):
            # nginx's special response: the error_page in force may answer it
            if run_error_page(self, status):
                return
        self.start_discard()
        self.begin_head(status)
        buf_append_bytes(&self.wb, loc.return_head)
        self.append_date()
        if loc.return_location is not None:
            buf_append_str(&self.wb, "Location: ")
            self.append_redirect_target(loc)
            buf_append_str(&self.wb, "\r\n")
        if loc.return_body is None:
            if loc.return_location is not None or status >= 400:
                # nginx answers a bare `return 404;` or a redirect with its own page
                body = error_body(status) if status >= 300 else b""
                buf_append_str(&self.wb, "Content-Type: text/html\r\nContent-Length: ")
                buf_append_uint(&self.wb, len(body))
                buf_append_str(&self.wb, "\r\n")
                self.append_connection()
                if not self.is_head:
                    buf_append_bytes(&self.wb, body)
            else:
                buf_append_str(&self.wb, "Content-Length: 0\r\n")
                self.append_connection()
            self.response_done()
            return
        buf_append_str(&self.wb, "Content-Type: ")
        buf_append_bytes(&self.wb, loc.default_type)
        buf_append_str(&self.wb, "\r\nContent-Length: ")
        if loc.return_body.is_literal:
            buf_append_uint(&self.wb, len(loc.return_body.literal))
            buf_append_str(&self.wb, "\r\n")
            self.append_connection()
            if not self.is_head:
                buf_append_bytes(&self.wb, loc.return_body.literal)
        else:
            # the length is known only after evaluation: render the body into the
            # scratch buffer first (the proxy head is not in use on this path)
            buf_reset(&self.pbuf)
            eval_template(loc.return_body, self, &self.pbuf)
            buf_append_uint(&self.wb, buf_len(&self.pbuf))
            buf_append_str(&self.wb, "\r\n")
            self.append_connection()
            if not self.is_head:
                buf_append(&self.wb, self.pbuf.data, buf_len(&self.pbuf))
        self.response_done()

    cdef void respond_simple(self, int status, bytes headers, bytes body, bytes content_type):
        """A short response edge makes itself for a phase handler (a CORS preflight, an
        authentication challenge): the status line, Date, `headers` (whole lines, each
        ending in CRLF), the body. The handler then returns PH_DONE."""
        self.start_discard()
        self.begin_head(status)
        buf_append_str(&self.wb, "HTTP/1.1 ")
        buf_append_uint(&self.wb, <uint64_t>status)
        buf_append_str(&self.wb, " ")
        buf_append_bytes(&self.wb, status_reason(status))
        buf_append_str(&self.wb, "\r\n")
        buf_append_bytes(&self.wb, g_server_line)
        self.append_date()
        if headers:
            buf_append_bytes(&self.wb, headers)
        if body or status >= 200 and status != 204 and status != 304:
            if content_type:
                buf_append_str(&self.wb, "Content-Type: ")
                buf_append_bytes(&self.wb, content_type)
                buf_append_str(&self.wb, "\r\n")
            buf_append_str(&self.wb, "Content-Length: ")
            buf_append_uint(&self.wb, len(body))
            buf_append_str(&self.wb, "\r\n")
        self.append_connection()
        if body and not self.is_head:
            buf_append_bytes(&self.wb, body)
        self.response_done()

    cdef void respond_health(self, Location loc):
        cdef int code = readiness_code(g_shared) if loc.return_status == 1 else 0
        cdef const char *body
        if g_loop.quitting and loc.return_status == 1:
            code = 4
        if code == 0:
            body = '{"status":"ok"}\n'
        elif code == 1:
            body = '{"status":"draining"}\n'
        elif code == 2:
            body = '{"status":"config failed"}\n'
        elif code == 3:
            body = '{"status":"starting"}\n'
        else:
            body = '{"status":"stopping"}\n'
        self.start_discard()
        self.begin_head(200 if code == 0 else 503)
        if code == 0:
            buf_append_str(&self.wb, "HTTP/1.1 200 OK\r\n")
        else:
            buf_append_str(&self.wb, "HTTP/1.1 503 Service Unavailable\r\n")
        buf_append_bytes(&self.wb, g_server_line)
        self.append_date()
        buf_append_str(&self.wb, "Content-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: ")
        buf_append_uint(&self.wb, strlen(body))
        buf_append_str(&self.wb, "\r\n")
        self.append_connection()
        if not self.is_head:
            buf_append_str(&self.wb, body)
        self.response_done()

    cdef void append_redirect_target(self, Location loc) noexcept:
        """The Location of a `return` redirect. A path is made absolute from the request's
        host and the listen port, as nginx does with absolute_redirect on (and
        server_name_in_redirect off, port_in_redirect on)."""
        buf_reset(&self.pbuf)       # scratch: the proxy head is not in use on this path
        eval_template(loc.return_location, self, &self.pbuf)
        if loc.absolute_redirect and buf_len(&self.pbuf) and self.pbuf.data[0] == 47:
            self.append_absolute_prefix_to(&self.wb)
        buf_append(&self.wb, self.pbuf.data, buf_len(&self.pbuf))

    cdef void append_absolute_prefix_to(self, Buf *out) noexcept:
        """"http://host[:port]" (or "https://" on a TLS connection, whose default port
        is 443) for a redirect to a path (absolute_redirect), as nginx's header filter."""
        buf_append_str(out, "https://" if self.ssl != NULL else "http://")
        if self.host_len:
            buf_append(out, self.host, self.host_len)
        elif self.server is not None and len(self.server.first_name):
            buf_append(out, self.server.first_name, len(self.server.first_name))
        else:
            buf_append(out, self.binding.server_addr, len(self.binding.server_addr))
        if self.binding.server_port != (b"443" if self.ssl != NULL else b"80") and \
                (self.loc is None or self.loc.port_in_redirect):
            buf_append_str(out, ":")
            buf_append(out, self.binding.server_port, len(self.binding.server_port))

    cdef void response_done(self):
        """The response is fully queued in wb. Keep the connection or close it after."""
        self.up = None
        self.log_request(False)
        if not self.keepalive or g_loop.quitting:
            self.state = CS_CLOSING
            self.drive()
            return
        self.set_nodelay()              # keep-alive: the next response may follow a small one
        if self.discarding:
            self.state = CS_DISCARD     # serve_heads drops the body, then goes on
            return
        self.state = CS_HEAD
        self.reset_request()

    # ---- proxy hand-off ---------------------------------------------------------------------

    cdef void start_proxy(self):
        cdef Location loc = self.loc
        cdef edge_header *h
        # an upgrade (WebSocket...) the route allows: Connection must name "upgrade"
        if (self.upgrade_index >= 0 and self.connection_header >= 0 and self.minor == 1
                and self.body_kind == BODY_NONE and loc.upgrade_allowed(
                    self.headers[self.upgrade_index].value, self.headers[self.upgrade_index].value_len)):
            h = &self.headers[self.connection_header]
            self.upgrade = token_listed(h.value, h.value_len, "upgrade", 7)
        if loc.gzip is not None:
            self.gz_req = gzip_request(self, loc.gzip)     # while the head is valid
        self.ups = loc.upstream
        if loc.dynamic is not None:
            self.ups = resolve_upstream(self, <DynamicUpstream>loc.dynamic)
            if self.ups is None:
                self.finish_without_body(502)
                return
        # read now: once a buffered body is read, rb may have moved the method's bytes
        self.idempotent = method_idempotent(self)
        if build_upstream_head(self, loc, &self.pbuf) < 0:
            self.send_error(500, "could not build the upstream request")
            return
        if self.expect_continue and self.body_kind != BODY_NONE and buf_len(&self.rb) == 0:
            # we answer 100-continue ourselves; the upstream never sees Expect
            buf_append_str(&self.wb, "HTTP/1.1 100 Continue\r\n\r\n")
        timer_stop(self)
        if loc.mirrors is not None and not self.upgrade:
            prepare_mirrors(self)       # the copies' heads, while the fields are valid
        if ((loc.request_buffering or (self.mirror_heads is not None and loc.mirror_request_body))
                and (self.body_kind == BODY_LENGTH or self.body_kind == BODY_CHUNKED)) or (
                # HTTP/1.0 upstreams take no chunked body: read it whole, send its length;
                # a body not passed (proxy_pass_request_body off) is read whole and kept
                (loc.proxy_http10 or not loc.pass_request_body)
                and (self.body_kind == BODY_CHUNKED or self.body_kind == BODY_LENGTH)) or (
                # a body that came whole with the head is held whole even when buffering
                # is off (as nginx does): it costs nothing and it can be sent again
                self.body_kind == BODY_LENGTH and <int64_t>buf_len(&self.rb) >= self.body_left
                and self.body_left <= loc.client_body_buffer_size):
            start_buffered_body(self)       # the body first, whole and valid; then a peer
            return
        finish_upstream_head(self, loc, &self.pbuf)
        if self.mirror_heads is not None:
            send_mirrors(self)
        self.state = CS_PROXY
        self.connect_next_peer()

    cdef void connect_next_peer(self):
        cdef Upstream ups = self.ups
        cdef int peer
        cdef UpConn up
        ups.sync_resolved()         # `server NAME resolve`: addresses the control process found
        peer = ups.pick(self, g_now, self.tried_peers)
        if peer < 0:
            self.send_error(502, "no live upstreams")
            return
        if peer < 64:
            self.tried_peers |= (<uint64_t>1) << peer
        if self.tries == 0:
            self.first_try_us = g_now_us
            self.set_nodelay()      # the response goes out as the upstream sends it
        self.tries += 1
        up = upstream_connection(ups, peer, self)
        if up is None:
            ups.peer_failed(peer, g_now)
            self.retry_or_fail(502, NU_ERROR, False)
            return
        self.up = up
        up.start_request(self)

    cdef void retry_or_fail(self, int status, int condition, bint request_sent):
        """A try failed before any response byte reached the client: the next peer when
        proxy_next_upstream allows it (retries.pyx), else `status`."""
        self.up = None
        if self.response_started:
            self.close()
            return
        if next_upstream_allowed(self, condition, request_sent):
            self.connect_next_peer()
            return
        if self.body_done:
            self.finish_error_keepalive(status)
        else:
            self.send_error(status)

    cdef bint body_replayable(self) noexcept:
        """No body byte has left the client's buffer for an upstream yet (a failed
        connect sends nothing), so the request can go to another peer as it is."""
        return self.body_kind == BODY_NONE or self.body_buffered or not self.body_started

    cdef void finish_error_keepalive(self, int status):
        """A 502/504 after the request was fully read: the connection may go on."""
        self.state = CS_HEAD
        self.finish_without_body(status)
        if self.state == CS_HEAD:
            self.serve_heads()

    cdef bint response_sent(self):
        """The whole response went out (proxied or static): log it, then close the
        connection, or keep it for the next request (True)."""
        self.up = None
        self.log_request(False)
        if not self.body_done or self.peer_closed or g_loop.quitting:
            self.keepalive = False
        if not self.keepalive:
            self.state = CS_CLOSING
            self.drive()
            return False
        self.state = CS_HEAD
        self.reset_request()
        return True

    cdef void proxy_finished(self):
        """Called by the upstream side once the whole response is queued and sent."""
        if self.response_sent():
            self.serve_heads()
