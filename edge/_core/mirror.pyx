# Mirroring: copies of a location's requests sent to the location named by `mirror URI`
# (nginx's mirror module), which proxies them to its own upstream.
#
# Unlike nginx, where the main request waits for its mirror subrequests, a copy here is a
# fire-and-forget job: its head is built while the request's fields are valid, its body
# (with mirror_request_body on) is taken once the request body is whole, and a per-worker
# pool of MirrorConn sends it and reads the answer only to throw it away. At most
# MIRROR_CONNS_MAX copies are in flight and MIRROR_QUEUE_MAX wait; beyond that a copy is
# dropped and counted. A dead or stalled mirror costs the main request nothing: its
# connections end on the mirror location's own proxy timeouts.

from collections import deque

DEF MIRROR_CONNS_MAX = 64       # mirror connections one worker keeps open at once
DEF MIRROR_QUEUE_MAX = 1024     # copies waiting for one of them
DEF MIRROR_READ_CHUNK = 16384

cdef enum MirrorResult:
    MR_SENT = 0         # the copy was sent and answered
    MR_FAILED = 1       # no peer, refused, reset or timed out
    MR_DROPPED = 2      # the queue was full: never sent

cdef enum MirrorState:
    MS_CONNECTING = 0
    MS_SENDING = 1
    MS_READING = 2
    MS_CLOSED = 3
    MS_HANDSHAKE = 4    # an https mirror: the TLS handshake (upstream_tls.pyx)

cdef object g_mirror_queue = deque()
cdef int g_mirror_conns = 0
cdef Buf g_mirror_scratch
cdef bint g_mirror_scratch_ready = False
cdef uint64_t g_mirror_rng = 0x9E3779B97F4A7C15


cdef class MirrorTarget:
    """One `mirror URI` of a location: the location it names (which proxies), the share
    of requests copied (mirror_sample) and the counters."""
    cdef readonly Location loc
    cdef readonly bytes uri
    cdef double sample
    cdef int64_t series[3]          # MirrorResult -> metrics series

    def __init__(self, Location loc, bytes uri, double sample):
        self.loc = loc
        self.uri = uri
        self.sample = sample
        self.series[0] = self.series[1] = self.series[2] = -1

    def attach(self):
        """In the worker: this target's counters in the shared zone."""
        for i, result in enumerate(("sent", "failed", "dropped")):
            self.series[i] = series_for(SK_MIRROR, [self.uri.decode("latin-1"), result])

    cdef inline void count(self, int result) noexcept:
        cdef int64_t *row = my_row(self.series[result])
        if row != NULL:
            row[0] += 1


cdef class MirrorCopy:
    cdef MirrorTarget target
    cdef bytes head
    cdef bytes body                 # an in-memory body, or None
    cdef int body_fd                # a dup of the body's temp file, or -1
    cdef int64_t body_size

    def __cinit__(self):
        self.body_fd = -1

    def __dealloc__(self):
        if self.body_fd >= 0:
            close(self.body_fd)


cdef inline bint sampled(double share) noexcept:
    """True for about `share` of calls (xorshift64: cheap, per worker, good enough to
    pick a share of the traffic)."""
    global g_mirror_rng
    if share >= 1.0:
        return True
    g_mirror_rng ^= g_mirror_rng << 13
    g_mirror_rng ^= g_mirror_rng >> 7
    g_mirror_rng ^= g_mirror_rng << 17
    return <double>(g_mirror_rng >> 11) * (1.0 / 9007199254740992.0) < share


cdef void prepare_mirrors(Client c):
    """At the start of proxying, while the request's fields point into a valid rb: the
    head of each copy this request gets (none when sampling says so)."""
    global g_mirror_scratch_ready
    cdef MirrorTarget t
    cdef list heads = None
    if not g_mirror_scratch_ready:
        buf_init(&g_mirror_scratch, 2048)
        g_mirror_scratch_ready = True
    for t in c.loc.mirrors:
        if not sampled(t.sample):
            continue
        build_upstream_head(c, t.loc, &g_mirror_scratch)
        if heads is None:
            heads = []
        heads.append((t, g_mirror_scratch.data[g_mirror_scratch.start:g_mirror_scratch.end]))
    c.mirror_heads = heads


cdef void send_mirrors(Client c):
    """The request body is whole (or there is none): queue a copy for each prepared head."""
    cdef MirrorTarget t
    cdef MirrorCopy copy
    cdef bytes head
    cdef bint with_body = c.loc.mirror_request_body and c.body_buffered and c.body_size > 0
    for t, head in c.mirror_heads:
        copy = MirrorCopy.__new__(MirrorCopy)
        copy.target = t
        if with_body:
            copy.head = head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % c.body_size
            copy.body_size = c.body_size
            if c.body_fd >= 0:
                copy.body_fd = dup(c.body_fd)   # the copy may outlive the request
                if copy.body_fd < 0:
                    t.count(MR_FAILED)
                    continue
            else:
                copy.body = c.body_mem[:c.body_size]
        else:
            copy.head = head + b"Connection: close\r\n\r\n"
        if g_mirror_conns < MIRROR_CONNS_MAX:
            start_mirror(copy)
        elif len(g_mirror_queue) < MIRROR_QUEUE_MAX:
            g_mirror_queue.append(copy)
        else:
            t.count(MR_DROPPED)
    c.mirror_heads = None


cdef void start_mirror(MirrorCopy copy):
    global g_mirror_conns
    cdef MirrorTarget t = copy.target
    cdef Upstream ups = t.loc.upstream
    cdef int peer
    cdef int fd
    cdef int one = 1
    cdef Peer *p
    cdef MirrorConn m
    ups.sync_resolved()         # `server NAME resolve`: addresses the control process found
    peer = ups.pick(None, g_now, 0)     # no client: a hash balancer falls back to round robin
    if peer < 0:
        t.count(MR_FAILED)
        return
    p = &ups.peers[peer]
    fd = socket(p.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        t.count(MR_FAILED)
        return
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))
    if connect(fd, <sockaddr *>&p.addr, p.addrlen) < 0 and errno != EINPROGRESS:
        close(fd)
        ups.peer_failed(peer, g_now)
        t.count(MR_FAILED)
        return
    m = MirrorConn.__new__(MirrorConn)
    m.fd = fd
    m.kind = K_MIRROR
    m.copy = copy
    m.peer = peer
    m.state = MS_CONNECTING
    m.sent = 0
    g_loop.register(m)
    g_mirror_conns += 1
    timer_arm(m, t.loc.t_connect, g_now)


cdef class MirrorConn(Handle):
    """Sends one copy, then reads the answer to its end and forgets it."""
    cdef MirrorCopy copy
    cdef int peer
    cdef int state
    cdef int64_t sent               # bytes of head + body sent so far
    cdef SSL *ssl                   # an https mirror's TLS, else NULL
    cdef bytes tls_name

    cdef void on_events(self, uint32_t events):
        cdef int err = 0
        cdef socklen_t elen = sizeof(int)
        cdef UpstreamTls tls
        if self.state == MS_CONNECTING:
            if not (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)):
                return
            getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
            if err != 0 or (events & EPOLLERR):
                self.end(MR_FAILED, True)
                return
            tls = self.copy.target.loc.upstream_tls
            if tls is not None:
                self.state = MS_HANDSHAKE
                self.tls_name = mirror_tls_name(tls, self.copy.target.loc.upstream)
                self.ssl = tls_client_new(tls, self.fd, NULL, self.tls_name,
                                          session_slot(tls, self.copy.target.loc.upstream,
                                                       self.peer, self.tls_name)
                                          if tls.session_reuse else None)
                if self.ssl == NULL:
                    self.tls_failed()
                    return
            else:
                self.state = MS_SENDING
        if self.state == MS_HANDSHAKE:
            err = tls_client_handshake(self.ssl, self.copy.target.loc.upstream_tls, self.tls_name)
            if err == 0:
                return
            if err < 0:
                self.tls_failed()
                return
            self.state = MS_SENDING
        if self.state == MS_SENDING:
            self.send()
        if self.state == MS_READING:
            self.read_all()

    cdef void send(self):
        cdef MirrorCopy copy = self.copy
        cdef Location loc = copy.target.loc
        cdef int64_t head_len = len(copy.head)
        cdef ssize_t w
        cdef off_t off
        cdef const char *p
        cdef int64_t n
        while True:
            if self.sent < head_len:
                p = <const char *>copy.head + self.sent
                n = head_len - self.sent
            elif self.sent < head_len + copy.body_size:
                n = head_len + copy.body_size - self.sent
                if copy.body_fd >= 0:
                    off = <off_t>(self.sent - head_len)
                    if self.ssl != NULL:
                        w = self.tls_send_file(copy.body_fd, <int64_t>off,
                                               <int64_t>off + (n if n < SENDFILE_CHUNK else SENDFILE_CHUNK))
                    else:
                        w = sendfile(self.fd, copy.body_fd, &off, <size_t>(n if n < SENDFILE_CHUNK else SENDFILE_CHUNK))
                    if self.wrote(w):
                        continue
                    return
                p = <const char *>copy.body + (self.sent - head_len)
            else:
                self.state = MS_READING
                timer_arm(self, loc.t_read, g_now)
                return
            w = self.write_some(p, <size_t>n)
            if not self.wrote(w):
                return

    cdef ssize_t tls_send_file(self, int fd, int64_t start, int64_t end) noexcept:
        """sendfile() over TLS: bytes sent, or -1 (errno EAGAIN when the socket is full)."""
        cdef int64_t off = start
        cdef bint progress = False
        cdef int r = tls_send_file_range(self.ssl, fd, &off, end, &progress)
        if off > start:
            return <ssize_t>(off - start)
        (&errno)[0] = EAGAIN if r == 0 else ECONNRESET
        return -1

    cdef void tls_failed(self):
        try:
            g_log_fn("error", "%s, mirror: %s, upstream: %s (%s)" % (
                g_up_tls_error, self.copy.target.uri.decode("latin-1"),
                self.copy.target.loc.upstream.name,
                self.copy.target.loc.upstream.peer_names[self.peer]))
        except Exception:
            pass
        self.end(MR_FAILED, True)

    cdef ssize_t write_some(self, const char *p, size_t n) noexcept:
        """write() or, for an https mirror, one TLS write (-1 with EAGAIN when full)."""
        cdef ssize_t w
        if self.ssl == NULL:
            return write(self.fd, p, n)
        w = tls_write_some(self.ssl, p, n)
        if w == 0:
            (&errno)[0] = EAGAIN
            return -1
        if w < 0:
            (&errno)[0] = ECONNRESET
        return w

    cdef bint wrote(self, ssize_t w):
        """Account for a write; False when sending must stop (full socket, or failure)."""
        if w > 0:
            self.sent += w
            timer_arm(self, self.copy.target.loc.t_send, g_now)
            return True
        if w < 0 and errno == EINTR:
            return True
        if w < 0 and errno == EAGAIN:
            if self.tlist is not self.copy.target.loc.t_send:
                timer_arm(self, self.copy.target.loc.t_send, g_now)
            return False
        self.end(MR_FAILED, True)
        return False

    cdef void read_all(self):
        cdef char scratch[MIRROR_READ_CHUNK]
        cdef ssize_t r
        while True:
            if self.ssl != NULL:
                r = tls_read_discard(self.ssl, scratch, MIRROR_READ_CHUNK)
            else:
                r = recv(self.fd, scratch, MIRROR_READ_CHUNK, 0)
            if r > 0:
                timer_arm(self, self.copy.target.loc.t_read, g_now)
                continue
            if r == 0:
                self.end(MR_SENT, False)    # we asked for Connection: close
                return
            if errno == EINTR:
                continue
            if errno != EAGAIN:
                self.end(MR_FAILED, True)
            return

    cdef void on_timeout(self):
        self.end(MR_FAILED, True)

    cdef void end(self, int result, bint peer_failed):
        """Close, count, and start the next waiting copy."""
        global g_mirror_conns
        cdef MirrorCopy copy = self.copy
        cdef MirrorCopy next_copy
        if self.state == MS_CLOSED:
            return
        if peer_failed and (self.state == MS_CONNECTING or self.state == MS_HANDSHAKE):
            copy.target.loc.upstream.peer_failed(self.peer, g_now)
        self.state = MS_CLOSED
        timer_stop(self)
        g_loop.unregister(self)
        if self.ssl != NULL:
            tls_free(&self.ssl, result == MR_SENT)
        close(self.fd)
        self.fd = -1
        copy.target.count(result)
        self.copy = None
        g_mirror_conns -= 1
        while g_mirror_queue and g_mirror_conns < MIRROR_CONNS_MAX:
            next_copy = <MirrorCopy>g_mirror_queue.popleft()
            start_mirror(next_copy)


cdef class InternalOnly(PhaseHandler):
    """`internal`: a location for mirror copies and internal redirects (error_page,
    try_files, index, rewrite), as in nginx; a client request that selects it directly
    gets 404."""

    def __init__(self):
        self.name = "internal"

    cdef int run(self, Client c) except -1:
        if c.uri_changes < 10:      # the request was redirected here: an internal request
            return PH_CONTINUE
        return 404
