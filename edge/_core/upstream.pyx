# Upstream groups: peers, smooth weighted round robin, passive health (max_fails /
# fail_timeout), and the per-worker pool of idle keep-alive connections.
#
# Smooth weighted round robin (the algorithm nginx documents): every pick adds each live
# peer's weight to its current weight, picks the largest, and subtracts the total from the
# winner. Weights 5,1,1 give a a b a c a a: spread out, not bursty.

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

    def __dealloc__(self):
        if self.peers != NULL:
            free(self.peers)
        if self.peer_series != NULL:
            free(self.peer_series)

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
                 double fail_timeout=10.0):
        """Resolve host now (as nginx does at startup) and add one peer per address."""
        import socket as pysocket
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

    cdef void finalize(self):
        self.t_idle = timer_list(self.keepalive_timeout_ms)

    cdef inline bint peer_available(self, int i, int64_t now) noexcept:
        """May peer i take a request now? The one place every balancer asks: False while
        the peer is out after max_fails failures within fail_timeout."""
        return self.peers[i].down_until_ms <= now

    cdef int pick(self, int64_t now, uint64_t tried) noexcept:
        """Index of the next peer, skipping peers already tried for this request (bit set
        in `tried`) and peers marked down; -1 when none is left. When every untried peer
        is down, the least recently failed one is used anyway, as nginx does, so a group
        never refuses all traffic on stale failure counts."""
        cdef int i
        cdef int best = -1
        cdef int total = 0
        cdef Peer *p
        for i in range(self.npeers):
            if i < 64 and (tried >> i) & 1:
                continue
            if not self.peer_available(i, now):
                continue
            p = &self.peers[i]
            p.current_weight += p.weight
            total += p.weight
            if best < 0 or p.current_weight > self.peers[best].current_weight:
                best = i
        if best >= 0:
            self.peers[best].current_weight -= total
            return best
        for i in range(self.npeers):
            if i < 64 and (tried >> i) & 1:
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
        p.down_until_ms = 0
