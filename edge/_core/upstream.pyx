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
#
# Active health checks and DNS (docs/traffic.md): the control process checks the peers
# and resolves `server NAME resolve` names; the workers only read shared memory.
# - A peer's `health` points at its word in the shared zone (zones.pyx, R_PEER_HEALTH):
#   peer_available reads it with one load; even and nonzero means the check found it down.
# - A `resolve` server owns RESOLVE_MAX peer slots, `absent` while they hold no address.
#   sync_resolved, called before each pick, compares one shared counter (bumped by the
#   control process after any change) with the last one seen; only when it moved does
#   the worker copy the group's resolve slots into those peers. The peer array never
#   moves, so peer indexes held by connections in flight stay valid.

# load balancing methods (Upstream.method)
cdef enum:
    LB_ROUND_ROBIN = 0
    LB_LEAST_CONN = 1
    LB_HASH = 2
    LB_CHASH = 3            # hash ... consistent
    LB_RANDOM = 4
    LB_RANDOM_TWO = 5       # random two [least_conn]
    LB_EWMA = 6
    LB_IP_HASH = 7

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
    int64_t *health         # the active health check's word in the shared zone, or NULL
    int64_t health_seen     # that word when the passive check marked the peer down
    bint absent             # a resolve slot holding no address: never used


cdef struct ResolveSource:
    int first               # its first peer slot (RESOLVE_MAX of them)
    int port
    int64_t series          # its SK_RESOLVE series in the shared zone, -1 before attach
    int64_t seq             # the slot's sequence number last applied

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
    cdef bint over_keepalive
    cdef public int64_t keepalive_timeout_ms
    cdef public int64_t keepalive_requests
    cdef list idle                            # UpConn, most recently used last
    cdef TimerList t_idle
    cdef readonly bytes host_header           # for $proxy_host
    cdef readonly list peer_names_b           # for $upstream_addr
    cdef int64_t series                       # metrics: response time histogram
    cdef int64_t *peer_series                 # metrics: per peer failures and state
    cdef ResolveSource *sources               # `server NAME resolve` entries
    cdef readonly int nsources
    cdef readonly int npresent                # peers with an address (npeers less empty resolve slots)
    cdef readonly list resolve_names          # [(host, port)], parallel to sources
    cdef int64_t resolve_generation_seen
    cdef public object health_check           # HealthCheck (modules/upstream.py) or None
    cdef public object resolver               # ResolverSettings (modules/upstream.py) or None
    cdef readonly list static_peers           # [(family, ip, port)], parallel to the non-resolve peers
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
        self.sources = NULL
        self.nsources = 0
        self.resolve_names = []
        self.resolve_generation_seen = -1
        self.health_check = None
        self.resolver = None
        self.static_peers = []
        self.method = LB_ROUND_ROBIN
        self.server_texts = []
        buf_init(&self.key_buf, 256)

    def __dealloc__(self):
        if self.peers != NULL:
            free(self.peers)
        if self.sources != NULL:
            free(self.sources)
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
            if self.peers[i].absent:
                self.peer_series[i] = -1
                continue
            self.peer_series[i] = series_for(SK_PEER, [self.name, self.peer_names[i]])
            if self.health_check is not None:   # else no load at all in peer_available
                self.peers[i].health = zone_peer_health(&g_zone, self.peer_series[i])
        for i in range(self.nsources):
            host, port = self.resolve_names[i]
            self.sources[i].series = series_for(SK_RESOLVE, [self.name, host, str(port)])
            self.sources[i].seq = 0
        self.resolve_generation_seen = -1
        self.sync_resolved()

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
            self.static_peers.append((family, sockaddr[0], sockaddr[1]))
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

    def add_resolve(self, str host, int port, int weight=1, int max_fails=1,
                    double fail_timeout=10.0, bint backup=False, bint down=False,
                    str server=None):
        """`server host:port resolve`: RESOLVE_MAX peer slots, empty until the control
        process publishes the addresses of `host`. For the balancers they are one
        `server` (a name that may give several peers), as a name with several addresses
        in a plain `server` is."""
        cdef int k
        self.sources = <ResolveSource *>realloc(self.sources, sizeof(ResolveSource) * (self.nsources + 1))
        if self.sources == NULL:
            raise MemoryError()
        self.sources[self.nsources].first = self.npeers
        self.sources[self.nsources].port = port
        self.sources[self.nsources].series = -1
        self.sources[self.nsources].seq = 0
        self.nsources += 1
        self.resolve_names.append((host, port))
        for k in range(RESOLVE_MAX):
            self._add_resolved(AF_INET, "0.0.0.0", port, weight, max_fails, fail_timeout)
            self.peers[self.npeers - 1].absent = True
            self.npresent -= 1
            self.peer_names[self.npeers - 1] = "%s:%d" % (host, port)
            self.peer_names_b[self.npeers - 1] = self.peer_names[self.npeers - 1].encode()
            self.peers[self.npeers - 1].backup = backup
            self.peers[self.npeers - 1].down = down
            self.peers[self.npeers - 1].server = len(self.server_texts)
        if backup:
            self.has_backup = True
        else:           # as add_peer: the sum of the primary peers' weights, slot by slot
            self.primary_weight += self.peers[self.npeers - 1].weight * RESOLVE_MAX
        self.server_texts.append(server if server is not None else "%s:%d" % (host, port))

    cdef void sync_resolved(self) noexcept:
        """Before a pick: apply what the control process resolved since the last look.
        One shared load when nothing changed (and nothing at all without `resolve`)."""
        cdef int64_t gen
        if self.nsources == 0 or g_zone.header == NULL:
            return
        gen = edge_load64(&g_zone.header.resolve_generation)
        if gen == self.resolve_generation_seen:
            return
        self.resolve_generation_seen = gen
        try:
            self._apply_resolved()
        except Exception:
            pass

    cdef int _apply_resolved(self) except -1:
        cdef ResolvedAddr buf[RESOLVE_MAX]
        cdef int64_t n = 0, seq
        cdef int s, k, idx
        cdef ResolveSource *src
        cdef ResolveSlot *slot
        cdef Peer *p
        cdef sockaddr_storage addr
        cdef socklen_t addrlen
        cdef sockaddr_in *sin
        cdef sockaddr_in6 *sin6
        for s in range(self.nsources):
            src = &self.sources[s]
            slot = zone_resolve_slot(&g_zone, src.series)
            if slot == NULL:
                continue
            seq = resolve_read(slot, buf, &n)
            if seq == src.seq:
                continue
            src.seq = seq
            for k in range(RESOLVE_MAX):
                idx = src.first + k
                p = &self.peers[idx]
                if k >= n:
                    if not p.absent:
                        p.absent = True
                        self.npresent -= 1
                        p.health = NULL
                        self._drop_idle(idx)
                    continue
                memset(&addr, 0, sizeof(addr))
                if buf[k].family == AF_INET6:
                    sin6 = <sockaddr_in6 *>&addr
                    sin6.sin6_family = AF_INET6
                    sin6.sin6_port = htons(src.port)
                    memcpy(&sin6.sin6_addr, buf[k].addr, 16)
                    addrlen = sizeof(sockaddr_in6)
                else:
                    sin = <sockaddr_in *>&addr
                    sin.sin_family = AF_INET
                    sin.sin_port = htons(src.port)
                    memcpy(&sin.sin_addr, buf[k].addr, 4)
                    addrlen = sizeof(sockaddr_in)
                if not p.absent and p.addrlen == addrlen and memcmp(&p.addr, &addr, addrlen) == 0:
                    continue
                if not p.absent:
                    self._drop_idle(idx)
                memcpy(&p.addr, &addr, sizeof(addr))
                p.addrlen = addrlen
                if p.absent:
                    self.npresent += 1
                p.absent = False
                p.fails = 0
                p.down_until_ms = 0
                p.current_weight = 0
                p.ewma_us = 0
                p.ewma_stamp_us = 0
                name = _sockaddr_text(&addr)
                self.peer_names[idx] = name
                self.peer_names_b[idx] = name.encode()
                if self.peer_series != NULL:
                    self.peer_series[idx] = series_for(SK_PEER, [self.name, name])
                    if self.health_check is not None:
                        p.health = zone_peer_health(&g_zone, self.peer_series[idx])
        return 0

    cdef void _drop_idle(self, int peer):
        """Close the pooled connections to a peer slot whose address went away."""
        for up in list(self.idle):
            if (<UpConn>up).peer == peer:
                (<UpConn>up).close()


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
        self.npresent += 1

    def set_balancer(self, str method, Template key=None):
        """Choose the load balancing method (config time, after every add_peer):
        "round_robin", "least_conn", "hash" or "hash_consistent" (with `key`), "random",
        "random_two" or "ewma"."""
        methods = {"round_robin": LB_ROUND_ROBIN, "least_conn": LB_LEAST_CONN, "hash": LB_HASH,
                   "hash_consistent": LB_CHASH, "random": LB_RANDOM, "random_two": LB_RANDOM_TWO,
                   "ewma": LB_EWMA, "ip_hash": LB_IP_HASH}
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

    def peers_info(self):
        """The peers as configured, for the admin API: one dict per peer that has an
        address now ({"peer", "server", "weight", "max_fails", "fail_timeout", "backup",
        "down"}), and one per `resolve` name ({"resolve": "host:port", ...}) whose
        addresses the control process knows (shared zone)."""
        cdef int i, s
        cdef Peer *p
        out = []
        resolve_first = {}
        for s in range(self.nsources):
            resolve_first[self.sources[s].first] = s
        for i in range(self.npeers):
            p = &self.peers[i]
            entry = {"peer": self.peer_names[i], "server": self.server_texts[p.server],
                     "weight": p.weight, "max_fails": p.max_fails,
                     "fail_timeout": p.fail_timeout_ms / 1000.0,
                     "backup": bool(p.backup), "down": bool(p.down)}
            if i in resolve_first:
                host, port = self.resolve_names[resolve_first[i]]
                entry["resolve"] = (host, port)
                out.append(entry)
            elif not p.absent:
                out.append(entry)
        return out

    @property
    def method_name(self):
        return {LB_ROUND_ROBIN: "round_robin", LB_LEAST_CONN: "least_conn", LB_HASH: "hash",
                LB_CHASH: "hash_consistent", LB_RANDOM: "random", LB_RANDOM_TWO: "random_two",
                LB_EWMA: "ewma", LB_IP_HASH: "ip_hash"}.get(self.method, "?")

    cdef void publish_conns(self) noexcept:
        """Once a second (Loop.publish_gauges): this worker's connections in progress
        per peer, into its row of the peer's series (R_PEER_ACTIVE), for the admin API."""
        cdef int i
        cdef int64_t *row
        if self.peer_series == NULL:
            return
        for i in range(self.npeers):
            if self.peer_series[i] < 0:
                continue
            row = my_row(self.peer_series[i])
            if row != NULL:
                row[R_PEER_ACTIVE] = self.peers[i].conns

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
        `down` peer, for an empty resolve slot (`server NAME resolve` with fewer
        addresses), while the active health check holds it down (one load of its word in
        the shared zone, only in groups with `health_check`), and while the peer is out
        after max_fails failures within fail_timeout. An active check that saw the peer
        come back up (a new up verdict since the passive check put it out) ends that."""
        cdef Peer *p = &self.peers[i]
        cdef int64_t h = 0
        if p.down or p.absent:
            return False
        if p.health != NULL:
            h = p.health[0]
            if h != 0 and (h & 1) == 0:
                return False
        if p.down_until_ms > now:
            if (h & 1) and h != p.health_seen:
                self._passive_cleared(i)
                return True
            return False
        return True

    cdef int pick(self, Client c, int64_t now, uint64_t tried) noexcept:
        """Index of the peer for c's next try, skipping peers already tried for this
        request (bit set in `tried`) and peers that are not available; the backups when
        no primary is left; -1 when none is left. When every untried peer is out on
        failures, the least recently failed one is used anyway, so a group never refuses
        all traffic on stale failure counts; never a `down` one, one the active health
        check holds down, or an empty resolve slot."""
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

    cdef int pick_round_robin(self, int64_t now, uint64_t tried, bint backup, int server=-1) noexcept:
        """Smooth weighted round robin over the available untried primaries (backup
        False) or backups, or only the peers of one `server` line (server >= 0: the
        addresses of a name); -1 when there is none."""
        cdef int i
        cdef int best = -1
        cdef int total = 0
        cdef Peer *p
        for i in range(self.npeers):
            if i < 64 and (tried >> i) & 1:
                continue
            p = &self.peers[i]
            if p.backup != backup or (server >= 0 and p.server != server) \
                    or not self.peer_available(i, now):
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
        cdef Peer *p
        cdef int best = -1
        for i in range(self.npeers):
            if i < 64 and (tried >> i) & 1:
                continue
            p = &self.peers[i]
            if p.down or p.absent or (p.health != NULL and p.health[0] != 0 and (p.health[0] & 1) == 0):
                continue        # `down`, no address, or the active check holds it down
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
            p.health_seen = p.health[0] if p.health != NULL else 0
            p.fails = 0
            if row != NULL:
                row[R_PEER_DOWN_UNTIL] = p.down_until_ms

    cdef void _passive_cleared(self, int i) noexcept:
        cdef Peer *p = &self.peers[i]
        cdef int64_t *row = self.peer_row(i)
        p.down_until_ms = 0
        p.fails = 0
        if row != NULL:
            row[R_PEER_DOWN_UNTIL] = 0

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

cdef str _sockaddr_text(sockaddr_storage *addr):
    """"ip:port" or "[ip6]:port", as peer names are written."""
    import socket as pysocket
    cdef sockaddr_in *sin
    cdef sockaddr_in6 *sin6
    if addr.ss_family == AF_INET6:
        sin6 = <sockaddr_in6 *>addr
        return "[%s]:%d" % (pysocket.inet_ntop(pysocket.AF_INET6, (<char *>&sin6.sin6_addr)[:16]),
                            ntohs(sin6.sin6_port))
    sin = <sockaddr_in *>addr
    return "%s:%d" % (pysocket.inet_ntop(pysocket.AF_INET, (<char *>&sin.sin_addr)[:4]),
                      ntohs(sin.sin_port))
