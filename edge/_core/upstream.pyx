# Upstream groups: peers, smooth weighted round robin, passive health (max_fails /
# fail_timeout, passive_fail_status), and the per-worker pool of idle keep-alive
# connections. The other balancers (least_conn, hash, random, ewma) are in balancer.pyx.
#
# Smooth weighted round robin (the algorithm nginx documents): every pick adds each live
# peer's weight to its current weight, picks the largest, and subtracts the total from the
# winner. Weights 5,1,1 give a a b a c a a: spread out, not bursty.
#
# `backup` peers are used only when no primary is available; `down` peers never. All the
# state here (failures, active connections, latency averages) is per worker, as nginx's
# without a `zone`.

# load balancing methods (Upstream.method)
cdef enum:
    LB_ROUND_ROBIN = 0
    LB_LEAST_CONN = 1
    LB_HASH = 2
    LB_CHASH = 3            # hash ... consistent
    LB_RANDOM = 4
    LB_RANDOM_TWO = 5       # random two [least_conn]
    LB_EWMA = 6

cdef struct Peer:
    sockaddr_storage addr
    socklen_t addrlen
    int weight
    int current_weight
    int max_fails
    int64_t fail_timeout_ms
    int fails
    int64_t checked_ms      # when the current failure window started
    int64_t down_until_ms
    bint down               # `down`: never used
    bint backup             # `backup`: used only when no primary is available
    int server              # ordinal of its `server` line (a name may give several peers)
    int conns               # tries in progress on this peer, this worker (least_conn)
    double ewma_us          # peak-EWMA of its latency, microseconds (ewma)
    int64_t ewma_stamp_us   # when ewma_us was last updated

cimport cython


# final: calls to its cdef methods are direct C calls (no vtable), so the balancers' per
# peer peer_available() check inlines.
@cython.final
cdef class Upstream:
    cdef readonly str name
    cdef Peer *peers
    cdef readonly int npeers
    cdef readonly list peer_names
    cdef public int keepalive                 # max idle connections kept per worker
    cdef public int64_t keepalive_timeout_ms
    cdef public int64_t keepalive_requests
    cdef list idle                            # UpConn, most recently used last
    cdef TimerList t_idle
    cdef readonly bytes host_header           # for $proxy_host
    cdef readonly list peer_names_b           # for $upstream_addr
    cdef int64_t series                       # metrics: response time histogram
    cdef int64_t *peer_series                 # metrics: per peer failures and state
    cdef readonly int method                  # LB_*
    cdef bint has_backup
    cdef int primary_weight                   # the sum of the primaries' weights (hash, random)
    cdef int nprimary                         # peers that are not `backup`
    cdef Template hash_key                    # hash KEY
    cdef Buf key_buf                          # the key, evaluated per pick
    cdef uint32_t *ring_hash                  # hash ... consistent: the ring's points, sorted
    cdef int *ring_server                     # the `server` each point belongs to
    cdef readonly int nring
    cdef list server_texts                    # `server` addresses as written (ring points)
    cdef uint64_t fail_status[10]             # passive_fail_status: one bit per status 0..639
    cdef bint any_fail_status

    def __init__(self, str name, int keepalive=0):
        self.name = name
        self.peers = NULL
        self.npeers = 0
        self.peer_names = []
        self.keepalive = keepalive
        self.keepalive_timeout_ms = 60000
        self.keepalive_requests = 1000
        self.idle = []
        self.host_header = name.encode("latin-1")
        self.peer_names_b = []
        self.series = -1
        self.method = LB_ROUND_ROBIN
        self.server_texts = []
        buf_init(&self.key_buf, 256)

    def __dealloc__(self):
        if self.peers != NULL:
            free(self.peers)
        if self.peer_series != NULL:
            free(self.peer_series)
        if self.ring_hash != NULL:
            free(self.ring_hash)
        if self.ring_server != NULL:
            free(self.ring_server)
        buf_free(&self.key_buf)

    def attach(self):
        """In the worker: this group's series in the shared zone."""
        cdef int i
        self.series = series_for(SK_UPSTREAM, [self.name])
        if self.peer_series != NULL:
            free(self.peer_series)
        self.peer_series = <int64_t *>malloc(sizeof(int64_t) * (self.npeers or 1))
        for i in range(self.npeers):
            self.peer_series[i] = series_for(SK_PEER, [self.name, self.peer_names[i]])

    cdef inline int64_t *peer_row(self, int i) noexcept:
        if self.peer_series == NULL:
            return NULL
        return my_row(self.peer_series[i])

    def add_peer(self, str host, int port, int weight=1, int max_fails=1,
                 double fail_timeout=10.0, bint backup=False, bint down=False, str server=None):
        """Resolve host now (as nginx does at startup) and add one peer per address.
        `server` is the address as written in the config (the consistent hash ring is
        built from it, as nginx's is)."""
        import socket as pysocket
        cdef int first = self.npeers
        cdef int i
        try:
            infos = pysocket.getaddrinfo(host, port, type=pysocket.SOCK_STREAM)
        except pysocket.gaierror as e:
            raise ValueError('host not found in upstream "%s:%d"' % (host, port)) from e
        seen = []
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr[:2]) in seen:
                continue
            seen.append((family, sockaddr[:2]))
            self._add_resolved(family, sockaddr[0], sockaddr[1], weight, max_fails, fail_timeout)
        for i in range(first, self.npeers):
            self.peers[i].backup = backup
            self.peers[i].down = down
            self.peers[i].server = len(self.server_texts)
            if not backup:
                self.primary_weight += self.peers[i].weight
                self.nprimary += 1
        if backup:
            self.has_backup = True
        self.server_texts.append(server if server is not None else "%s:%d" % (host, port))

    cdef _add_resolved(self, int family, str ip, int port, int weight, int max_fails,
                       double fail_timeout):
        cdef Peer *p
        cdef sockaddr_in *sin
        cdef sockaddr_in6 *sin6
        cdef bytes ipb = ip.encode()
        self.peers = <Peer *>realloc(self.peers, sizeof(Peer) * (self.npeers + 1))
        if self.peers == NULL:
            raise MemoryError()
        p = &self.peers[self.npeers]
        memset(p, 0, sizeof(Peer))
        if family == AF_INET:
            sin = <sockaddr_in *>&p.addr
            sin.sin_family = AF_INET
            sin.sin_port = htons(port)
            inet_pton(AF_INET, ipb, &sin.sin_addr)
            p.addrlen = sizeof(sockaddr_in)
            name = "%s:%d" % (ip, port)
        else:
            sin6 = <sockaddr_in6 *>&p.addr
            sin6.sin6_family = AF_INET6
            sin6.sin6_port = htons(port)
            inet_pton(AF_INET6, ipb, &sin6.sin6_addr)
            p.addrlen = sizeof(sockaddr_in6)
            name = "[%s]:%d" % (ip, port)
        self.peer_names.append(name)
        self.peer_names_b.append(name.encode())     # no wraparound: no [-1] in this file
        p.weight = weight if weight > 0 else 1
        p.max_fails = max_fails
        p.fail_timeout_ms = <int64_t>(fail_timeout * 1000)
        self.npeers += 1

    def set_balancer(self, str method, Template key=None):
        """Choose the load balancing method (config time, after every add_peer):
        "round_robin", "least_conn", "hash" or "hash_consistent" (with `key`), "random",
        "random_two" or "ewma"."""
        methods = {"round_robin": LB_ROUND_ROBIN, "least_conn": LB_LEAST_CONN, "hash": LB_HASH,
                   "hash_consistent": LB_CHASH, "random": LB_RANDOM, "random_two": LB_RANDOM_TWO,
                   "ewma": LB_EWMA}
        self.method = methods[method]
        self.hash_key = key
        if self.method == LB_CHASH:
            build_ring(self)

    def set_passive_fail_status(self, statuses):
        """The response statuses that count as a failure of the peer (max_fails)."""
        cdef int code
        memset(self.fail_status, 0, sizeof(self.fail_status))
        self.any_fail_status = False
        for code in statuses:
            if 0 <= code < 640:
                self.fail_status[code >> 6] |= (<uint64_t>1) << (code & 63)
                self.any_fail_status = True

    @property
    def hash_key_uses_head(self):
        """The hash key reads the request head (which must then outlive body reads)."""
        return self.hash_key is not None and self.hash_key.uses_head

    cdef void finalize(self):
        self.t_idle = timer_list(self.keepalive_timeout_ms)

    cdef inline bint fails_on_status(self, int status) noexcept:
        """passive_fail_status lists this response status."""
        return self.any_fail_status and 0 <= status < 640 and \
            (self.fail_status[status >> 6] >> (status & 63)) & 1

    cdef inline bint peer_available(self, int i, int64_t now) noexcept:
        """May peer i take a request now? The one place every balancer asks: False for a
        `down` peer, and while the peer is out after max_fails failures within
        fail_timeout."""
        cdef Peer *p = &self.peers[i]
        return not p.down and p.down_until_ms <= now

    cdef int pick(self, Client c, int64_t now, uint64_t tried) noexcept:
        """Index of the peer for c's next try, skipping peers already tried for this
        request (bit set in `tried`) and peers that are not available; the backups when
        no primary is left; -1 when none is left. When every untried peer is out on
        failures, the least recently failed one (never a `down` one) is used anyway, so
        a group never refuses all traffic on stale failure counts."""
        cdef int best
        if self.method != LB_ROUND_ROBIN:
            best = pick_balanced(self, c, now, tried)      # balancer.pyx
        else:
            best = self.pick_round_robin(now, tried, False)
            if best < 0 and self.has_backup:
                best = self.pick_round_robin(now, tried, True)
        if best < 0:
            best = self.last_resort(tried)
        return best

    cdef int pick_round_robin(self, int64_t now, uint64_t tried, bint backup) noexcept:
        """Smooth weighted round robin over the available untried primaries (backup
        False) or backups; -1 when there is none."""
        cdef int i
        cdef int best = -1
        cdef int total = 0
        cdef Peer *p
        for i in range(self.npeers):
            if i < 64 and (tried >> i) & 1:
                continue
            p = &self.peers[i]
            if p.backup != backup or not self.peer_available(i, now):
                continue
            p.current_weight += p.weight
            total += p.weight
            if best < 0 or p.current_weight > self.peers[best].current_weight:
                best = i
        if best >= 0:
            self.peers[best].current_weight -= total
        return best

    cdef int last_resort(self, uint64_t tried) noexcept:
        """The untried peer, not `down`, whose failure ban ends first; -1 if none."""
        cdef int i
        cdef int best = -1
        for i in range(self.npeers):
            if i < 64 and (tried >> i) & 1:
                continue
            if self.peers[i].down:
                continue
            if best < 0 or self.peers[i].down_until_ms < self.peers[best].down_until_ms:
                best = i
        return best

    cdef void peer_failed(self, int i, int64_t now) noexcept:
        cdef Peer *p = &self.peers[i]
        cdef int64_t *row = self.peer_row(i)
        if row != NULL:
            row[R_PEER_FAILURES] += 1
        if p.max_fails == 0:
            return
        if now - p.checked_ms > p.fail_timeout_ms:
            p.fails = 0
            p.checked_ms = now
        p.fails += 1
        if p.fails >= p.max_fails:
            if p.down_until_ms <= now:
                self.log_peer(i, "warn", "upstream server temporarily disabled for %gs after %d "
                              "failure%s" % (p.fail_timeout_ms / 1000.0, p.fails,
                                             "" if p.fails == 1 else "s"))
            p.down_until_ms = now + p.fail_timeout_ms
            p.fails = 0
            if row != NULL:
                row[R_PEER_DOWN_UNTIL] = p.down_until_ms

    cdef void peer_ok(self, int i) noexcept:
        cdef Peer *p = &self.peers[i]
        cdef int64_t *row
        if p.fails and p.down_until_ms == 0:
            p.fails = 0
        if p.down_until_ms:
            row = self.peer_row(i)
            if row != NULL:
                row[R_PEER_DOWN_UNTIL] = 0
            self.log_peer(i, "notice", "upstream server is available again")
        p.down_until_ms = 0

    cdef void log_peer(self, int i, str level, str what) noexcept:
        """A peer state transition, in the error log (rare: not on the hot path)."""
        if g_log_fn is None:
            return
        try:
            g_log_fn(level, "%s, upstream: %s (%s)" % (what, self.name, self.peer_names[i]))
        except Exception:
            pass
