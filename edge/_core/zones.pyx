# Shared-memory zones for metrics and log shipping (DESIGN.md §1).
#
# One anonymous MAP_SHARED mapping, created by the master before it forks, so every worker
# and the control process see the same pages. It survives reloads (the master keeps it),
# so counters stay exact across in-place reloads and worker respawns.
#
# Layout:
#   header            sizes, the shared connection counter, overflow counters
#   series table      `series_cap` entries; an entry is one label set (an HTTP route, a
#                     (route, status code) pair, an upstream, a peer, a log sink), found
#                     by hash with linear probing and inserted with compare-and-swap, so
#                     every process (a worker compiling a reload, the control process)
#                     agrees on the index of a label set without talking to the others
#   worker blocks     per worker: connection gauges and its log ring's head and tail
#   rows              per worker, per series: 16 counters. A worker writes only its own
#                     rows (plain stores, no lock, no atomic); the control process sums
#                     the rows of all workers on a scrape. One more row set, after the
#                     workers', belongs to the control process (its own drop counts, so
#                     they outlive a respawn of it)
#   rings             per worker: a byte ring of access-log records for remote sinks
#   resolve slots     one per series index, used by SK_RESOLVE series only: the addresses
#                     the control process resolved for one `server NAME resolve` of an
#                     upstream, behind a sequence lock (docs/traffic.md, "DNS")
#
# Upstream peer health: the control process's row of an SK_PEER series holds, in word
# R_PEER_HEALTH, the active health check's verdict on that peer: 0 not checked yet (up),
# odd up, even down; it goes up by one on each transition. Keyed like every series by
# (upstream, peer), so a reload that keeps the group and the peer keeps the verdict.
#
# Labels are bounded by the config, never by traffic: the only series made at run time
# are (route, status code) pairs, at most one per status code a route answers with.

cdef extern from *:
    """
    #include <stdint.h>
    static inline int edge_cas64(int64_t *p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n((volatile int64_t *)p, &expected, desired, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline int64_t edge_load64(int64_t *p) {
        return __atomic_load_n((volatile int64_t *)p, __ATOMIC_ACQUIRE);
    }
    static inline void edge_store64(int64_t *p, int64_t v) {
        __atomic_store_n((volatile int64_t *)p, v, __ATOMIC_RELEASE);
    }
    static inline int64_t edge_fetch_add64(int64_t *p, int64_t v) {
        return __atomic_fetch_add((volatile int64_t *)p, v, __ATOMIC_RELAXED);
    }
    static inline void edge_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline void edge_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    """
    bint edge_cas64(int64_t *p, int64_t expected, int64_t desired) nogil
    int64_t edge_load64(int64_t *p) nogil
    void edge_store64(int64_t *p, int64_t v) nogil
    int64_t edge_fetch_add64(int64_t *p, int64_t v) nogil
    void edge_fence_acquire() nogil
    void edge_fence_release() nogil

cdef extern from "<sys/mman.h>" nogil:
    int MAP_ANONYMOUS
    int MAP_NORESERVE

DEF ZONES_MAGIC = 0x65646765_7a6f6e65     # "edgezone"
DEF LABELS_MAX = 224
DEF ROW_WORDS = 16
DEF NBUCKETS = 11                         # finite histogram buckets; +Inf is the count
DEF RING_ALIGN = 8
DEF RECORD_HEADER = 8

cdef enum SeriesKind:
    SK_ROUTE = 1        # (server, route): duration histogram, bytes in and out
    SK_CODE = 2         # (server, route, code): requests answered with that status
    SK_UPSTREAM = 3     # (upstream): response time histogram
    SK_PEER = 4         # (upstream, peer): failures, down-until
    SK_SINK = 5         # (sink target): records dropped from full rings
    SK_LIMIT = 6        # (zone, decision): limit decisions
    SK_MIRROR = 7       # (mirror uri, result): mirror copies sent, failed, dropped
    SK_RESOLVE = 8      # (upstream, host, port): a resolve slot (addresses of a name)

# Row words, by kind
DEF R_SUM = 11          # duration sum in microseconds (ROUTE, UPSTREAM)
DEF R_COUNT = 12
DEF R_RECEIVED = 13
DEF R_SENT = 14
DEF R_PEER_FAILURES = 0
DEF R_PEER_DOWN_UNTIL = 1
DEF R_PEER_HEALTH = 2               # in the control process's row: the health check's verdict
DEF R_PEER_ACTIVE = 3               # connections in progress (a gauge, published once a second)
DEF R_SINK_DROPPED = 0
DEF R_SINK_CONTROL_DROPPED = 1      # in the control process's row: lost after the ring

# Histogram bounds in microseconds, and as Prometheus prints them.
cdef int64_t BUCKET_US[NBUCKETS]
BUCKET_US[:] = [5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
                5000000, 10000000]
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

cdef struct ZoneHeader:
    uint64_t magic
    int64_t series_cap
    int64_t workers_cap
    int64_t ring_size
    int64_t series_overflow     # label sets that found the table full
    int64_t connection_counter  # $connection: one serial number per accepted connection
    int64_t workers_seen        # 1 + the highest worker index that attached
    int64_t resolve_generation  # bumped after any resolve slot changed
    int64_t reserved[56]

cdef struct SeriesEntry:
    int64_t state               # 0 empty, 1 being written, 2 ready
    uint64_t hash
    int32_t kind
    int32_t code
    int32_t labels_len
    int32_t pad
    char labels[LABELS_MAX]     # label values, each ended by NUL

cdef struct WorkerBlock:
    int64_t active
    int64_t reading
    int64_t writing
    int64_t idle
    int64_t at_rest             # idle connections parked in their small form (idle.pyx)
    int64_t pool_free_bytes     # free buffers kept by the worker's pool (buffers.pyx)
    int64_t pad1[2]
    int64_t ring_head           # written by the worker only
    int64_t pad2[7]
    int64_t ring_tail           # advanced by the control process, or by the worker dropping
    int64_t pad3[7]

DEF RESOLVE_MAX = 16                 # addresses kept per resolved name
DEF RESOLVE_SLOT_SIZE = 512

cdef struct ResolvedAddr:
    int32_t family              # AF_INET or AF_INET6
    int32_t pad
    unsigned char addr[16]

cdef struct ResolveSlot:
    int64_t seq                 # sequence lock: odd while the control process writes;
                                # 0: never written (nothing resolved yet)
    int64_t count
    ResolvedAddr addrs[RESOLVE_MAX]

cdef struct Zone:
    ZoneHeader *header
    SeriesEntry *series
    WorkerBlock *workers
    int64_t *rows
    char *rings
    char *resolve
    size_t size


cdef inline int64_t *zone_row(Zone *z, int64_t worker, int64_t series) noexcept nogil:
    return z.rows + (worker * z.header.series_cap + series) * ROW_WORDS


cdef uint64_t labels_hash(int kind, int code, const char *labels, size_t n) noexcept nogil:
    """FNV-1a over the kind, the code and the label bytes."""
    cdef uint64_t h = 14695981039346656037ULL
    cdef size_t i
    h = (h ^ <uint64_t>kind) * 1099511628211ULL
    h = (h ^ <uint64_t>code) * 1099511628211ULL
    for i in range(n):
        h = (h ^ <unsigned char>labels[i]) * 1099511628211ULL
    return h | 1        # never 0


cdef int64_t zone_series(Zone *z, int kind, int code, const char *labels, size_t n) noexcept nogil:
    """The index of a label set, inserted when new; -1 when the table is full (counted)."""
    cdef uint64_t h
    cdef int64_t cap, i, probe, state
    cdef SeriesEntry *e
    if z.header == NULL or n > LABELS_MAX:
        return -1
    cap = z.header.series_cap
    h = labels_hash(kind, code, labels, n)
    i = <int64_t>(h % <uint64_t>cap)
    for probe in range(cap):
        e = &z.series[i]
        state = edge_load64(&e.state)
        if state == 0 and edge_cas64(&e.state, 0, 1):
            e.hash = h
            e.kind = kind
            e.code = code
            e.labels_len = <int32_t>n
            memcpy(e.labels, labels, n)
            edge_store64(&e.state, 2)
            return i
        while state == 1:           # another process is writing this entry right now
            state = edge_load64(&e.state)
        if e.hash == h and e.kind == kind and e.code == code and e.labels_len == <int32_t>n \
                and memcmp(e.labels, labels, n) == 0:
            return i
        i += 1
        if i == cap:
            i = 0
    edge_fetch_add64(&z.header.series_overflow, 1)
    return -1


# The zone the reactor writes to (set in the worker by Zones.use_in_worker).
cdef Zone g_zone
cdef int64_t g_worker = -1          # this worker's index in the zone, -1: no metrics


cdef inline int64_t *my_row(int64_t series) noexcept nogil:
    if series < 0 or g_worker < 0:
        return NULL
    return zone_row(&g_zone, g_worker, series)


cdef inline int bucket_of(int64_t us) noexcept nogil:
    cdef int b
    for b in range(NBUCKETS):
        if us <= BUCKET_US[b]:
            return b
    return NBUCKETS     # only +Inf: counted by R_COUNT alone


cdef inline void observe(int64_t *row, int64_t us) noexcept nogil:
    cdef int b = bucket_of(us)
    if b < NBUCKETS:
        row[b] += 1
    row[R_SUM] += us
    row[R_COUNT] += 1


cdef bytes labels_bytes(list values):
    parts = []
    for v in values:
        b = v.encode("utf-8", "replace") if isinstance(v, str) else bytes(v)
        parts.append(b.replace(b"\0", b"") + b"\0")
    out = b"".join(parts)
    return out[:LABELS_MAX]


cdef int64_t series_for(int kind, list values, int code=0):
    """Python-side helper for config attach time."""
    cdef bytes key = labels_bytes(values)
    return zone_series(&g_zone, kind, code, key, len(key))


# ---- upstream health words and resolve slots -------------------------------------------

cdef inline int64_t *zone_peer_health(Zone *z, int64_t series) noexcept nogil:
    """The health word of an SK_PEER series: in the control process's row."""
    if series < 0 or z.header == NULL:
        return NULL
    return zone_row(z, z.header.workers_cap, series) + R_PEER_HEALTH


cdef inline ResolveSlot *zone_resolve_slot(Zone *z, int64_t series) noexcept nogil:
    if series < 0 or z.header == NULL:
        return NULL
    return <ResolveSlot *>(z.resolve + series * RESOLVE_SLOT_SIZE)


cdef int64_t resolve_read(ResolveSlot *slot, ResolvedAddr *out, int64_t *count) noexcept nogil:
    """Copy a slot's addresses into out[RESOLVE_MAX] (the reader side of the sequence
    lock; the control process is the only writer). Returns the sequence number read: 0
    when nothing was ever written."""
    cdef int64_t s1, s2, n
    while True:
        s1 = edge_load64(&slot.seq)
        if s1 & 1:
            continue
        n = slot.count
        if n < 0:
            n = 0
        elif n > RESOLVE_MAX:
            n = RESOLVE_MAX
        memcpy(out, slot.addrs, n * sizeof(ResolvedAddr))
        edge_fence_acquire()
        s2 = edge_load64(&slot.seq)
        if s1 == s2:
            count[0] = n
            return s1


cdef void resolve_write(Zone *z, ResolveSlot *slot, ResolvedAddr *src, int64_t n) noexcept nogil:
    cdef int64_t s = slot.seq
    edge_store64(&slot.seq, s + 1)
    edge_fence_release()
    slot.count = n
    memcpy(slot.addrs, src, n * sizeof(ResolvedAddr))
    edge_store64(&slot.seq, s + 2)
    edge_fetch_add64(&z.header.resolve_generation, 1)


# ---- the log ring (one producer: the worker; one consumer: the control process) ----------
#
# Positions are absolute byte counts that only grow; the byte at position p lives at
# ring[p % size]. A record is an 8-byte header (length, sink series) and its bytes, padded
# to 8. The worker owns `head`. `tail` moves forward by compare-and-swap, either by the
# control process (it consumed the record) or by the worker (the ring was full and it
# dropped the oldest record, counted against that record's sink). A consumer that loses
# that race discards its copy, which the worker may have been overwriting.

cdef inline void ring_copy_in(char *ring, int64_t size, int64_t pos, const char *src, int64_t n) noexcept nogil:
    cdef int64_t off = pos % size
    cdef int64_t first = size - off
    if first >= n:
        memcpy(ring + off, src, n)
    else:
        memcpy(ring + off, src, first)
        memcpy(ring, src + first, n - first)


cdef inline void ring_copy_out(char *ring, int64_t size, int64_t pos, char *dst, int64_t n) noexcept nogil:
    cdef int64_t off = pos % size
    cdef int64_t first = size - off
    if first >= n:
        memcpy(dst, ring + off, n)
    else:
        memcpy(dst, ring + off, first)
        memcpy(dst + first, ring, n - first)


cdef int ring_push(const char *data, size_t n, int64_t sink_series) noexcept nogil:
    """Append a record to this worker's ring, dropping the oldest records to make room.
    Returns 0, or -1 when there is no ring (this worker has no zone slot)."""
    cdef WorkerBlock *w
    cdef char *ring
    cdef int64_t size, head, tail, need, old_need
    cdef uint32_t hdr[2]
    cdef uint32_t old[2]
    cdef int64_t *row
    if g_worker < 0 or g_zone.header == NULL:
        return -1
    size = g_zone.header.ring_size
    need = (RECORD_HEADER + <int64_t>n + RING_ALIGN - 1) & ~(RING_ALIGN - 1)
    if need > size:
        row = my_row(sink_series)
        if row != NULL:
            row[R_SINK_DROPPED] += 1
        return 0
    w = &g_zone.workers[g_worker]
    ring = g_zone.rings + g_worker * size
    head = w.ring_head
    while True:
        tail = edge_load64(&w.ring_tail)
        if head + need - tail <= size:
            break
        ring_copy_out(ring, size, tail, <char *>old, RECORD_HEADER)
        old_need = (RECORD_HEADER + <int64_t>old[0] + RING_ALIGN - 1) & ~(RING_ALIGN - 1)
        if edge_cas64(&w.ring_tail, tail, tail + old_need):
            row = my_row(<int64_t>old[1])
            if row != NULL:
                row[R_SINK_DROPPED] += 1
    hdr[0] = <uint32_t>n
    hdr[1] = <uint32_t>sink_series
    ring_copy_in(ring, size, head, <const char *>hdr, RECORD_HEADER)
    ring_copy_in(ring, size, head + RECORD_HEADER, data, <int64_t>n)
    edge_store64(&w.ring_head, head + need)
    return 0


cdef class Zones:
    """The shared zone. Zones.create(...) in the master before forking; the workers call
    use_in_worker(index); the control process calls snapshot() and drain()."""
    cdef Zone z
    cdef readonly int64_t series_cap
    cdef readonly int64_t workers_cap
    cdef readonly int64_t ring_size
    cdef dict sink_names        # series index -> target text (control process cache)

    BUCKETS = BUCKETS

    @staticmethod
    def create(int64_t series_cap=4096, int64_t workers_cap=16, int64_t ring_size=1 << 20):
        cdef Zones zs = Zones.__new__(Zones)
        cdef size_t size
        cdef void *p
        if ring_size < 4096:
            ring_size = 4096
        ring_size = (ring_size + 4095) & ~4095
        size = (4096 + sizeof(SeriesEntry) * series_cap + sizeof(WorkerBlock) * workers_cap
                + sizeof(int64_t) * ROW_WORDS * series_cap * (workers_cap + 1) + ring_size * workers_cap
                + RESOLVE_SLOT_SIZE * series_cap)
        size = (size + 4095) & ~(<size_t>4095)
        # untouched pages cost nothing: a worker touches the rows of the series it uses
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if p == MAP_FAILED:
            raise OSError(errno, "mmap of %d bytes for the shared zones failed" % size)
        zs.z.size = size
        zs.z.header = <ZoneHeader *>p
        zs.z.series = <SeriesEntry *>(<char *>p + 4096)
        zs.z.workers = <WorkerBlock *>(<char *>zs.z.series + sizeof(SeriesEntry) * series_cap)
        zs.z.rows = <int64_t *>(<char *>zs.z.workers + sizeof(WorkerBlock) * workers_cap)
        zs.z.rings = <char *>zs.z.rows + sizeof(int64_t) * ROW_WORDS * series_cap * (workers_cap + 1)
        zs.z.resolve = zs.z.rings + ring_size * workers_cap
        zs.z.header.magic = ZONES_MAGIC
        zs.z.header.series_cap = series_cap
        zs.z.header.workers_cap = workers_cap
        zs.z.header.ring_size = ring_size
        zs.series_cap = series_cap
        zs.workers_cap = workers_cap
        zs.ring_size = ring_size
        zs.sink_names = {}
        return zs

    def use_in_worker(self, int index):
        """Make this the zone the reactor writes to, as worker `index`. A worker whose
        index is beyond the zone's capacity runs without metrics and remote logs."""
        global g_zone, g_worker
        g_zone = self.z
        if 0 <= index < self.workers_cap:
            g_worker = index
            while True:
                seen = edge_load64(&self.z.header.workers_seen)
                if seen > index or edge_cas64(&self.z.header.workers_seen, seen, index + 1):
                    break
        else:
            g_worker = -1
        return g_worker >= 0

    # -- upstream health and resolved names (the control process's side) --------------

    def peer_health(self, str upstream, str peer):
        """The health word of (upstream, peer): 0 not checked, odd up, even down."""
        cdef bytes key = labels_bytes([upstream, peer])
        cdef int64_t *w = zone_peer_health(&self.z, zone_series(&self.z, SK_PEER, 0, key, len(key)))
        return edge_load64(w) if w != NULL else 0

    def set_peer_health(self, str upstream, str peer, int64_t value):
        cdef bytes key = labels_bytes([upstream, peer])
        cdef int64_t *w = zone_peer_health(&self.z, zone_series(&self.z, SK_PEER, 0, key, len(key)))
        if w != NULL:
            edge_store64(w, value)

    def publish_addresses(self, str upstream, str host, int port, list addrs):
        """Write the addresses of `server host:port resolve` of `upstream`: a list of
        (family, address text), at most RESOLVE_MAX used. The workers pick them up."""
        import socket as pysocket
        cdef ResolvedAddr buf[RESOLVE_MAX]
        cdef int64_t n = 0
        cdef bytes key = labels_bytes([upstream, host, str(port)])
        cdef ResolveSlot *slot = zone_resolve_slot(
            &self.z, zone_series(&self.z, SK_RESOLVE, 0, key, len(key)))
        cdef bytes packed
        if slot == NULL:
            return False
        memset(buf, 0, sizeof(buf))
        for family, ip in addrs[:RESOLVE_MAX]:
            packed = pysocket.inet_pton(family, ip)
            buf[n].family = family
            memcpy(buf[n].addr, <const char *>packed, len(packed))
            n += 1
        resolve_write(&self.z, slot, buf, n)
        return True

    def resolved_addresses(self, str upstream, str host, int port):
        """What publish_addresses last wrote, or None when nothing was ever written."""
        import socket as pysocket
        cdef ResolvedAddr buf[RESOLVE_MAX]
        cdef int64_t n = 0, i, seq
        cdef bytes key = labels_bytes([upstream, host, str(port)])
        cdef ResolveSlot *slot = zone_resolve_slot(
            &self.z, zone_series(&self.z, SK_RESOLVE, 0, key, len(key)))
        if slot == NULL:
            return None
        seq = resolve_read(slot, buf, &n)
        if seq == 0:
            return None
        out = []
        for i in range(n):
            size = 4 if buf[i].family == AF_INET else 16
            out.append((buf[i].family, pysocket.inet_ntop(buf[i].family, buf[i].addr[:size])))
        return out

    property series_overflow:
        def __get__(self): return self.z.header.series_overflow

    property series_used:
        """Series slots taken (of series_cap)."""
        def __get__(self):
            cdef int64_t i, n = 0
            for i in range(self.series_cap):
                if edge_load64(&self.z.series[i].state) != 0:
                    n += 1
            return n

    property size:
        def __get__(self): return self.z.size

    cdef list _labels(self, SeriesEntry *e):
        return [part.decode("utf-8", "replace")
                for part in e.labels[:e.labels_len].split(b"\0")[:-1]]

    def snapshot(self, now_ms=None):
        """Every series summed over the workers (see /work/issue7-spec.md)."""
        import time
        cdef int64_t nworkers = min(edge_load64(&self.z.header.workers_seen), self.workers_cap)
        cdef int64_t i, w, k
        cdef SeriesEntry *e
        cdef int64_t *row
        cdef int64_t sums[ROW_WORDS]
        cdef int64_t down_until
        cdef int64_t now = <int64_t>((time.monotonic() if now_ms is None else now_ms / 1000.0) * 1000)
        routes = {}
        http = []
        upstreams = []
        peers = []
        sinks = {}
        limits = []
        mirrors = []
        for i in range(self.series_cap):
            e = &self.z.series[i]
            if edge_load64(&e.state) != 2:
                continue
            memset(sums, 0, sizeof(sums))
            down_until = 0
            for w in range(nworkers):
                row = zone_row(&self.z, w, i)
                if e.kind == SK_PEER:
                    sums[R_PEER_FAILURES] += row[R_PEER_FAILURES]
                    sums[R_PEER_ACTIVE] += row[R_PEER_ACTIVE]
                    if row[R_PEER_DOWN_UNTIL] > down_until:
                        down_until = row[R_PEER_DOWN_UNTIL]
                    continue
                for k in range(ROW_WORDS):
                    sums[k] += row[k]
            labels = self._labels(e)
            if e.kind == SK_ROUTE or e.kind == SK_CODE:
                key = (labels[0], labels[1])
                entry = routes.get(key)
                if entry is None:
                    entry = routes[key] = {
                        "server": labels[0], "route": labels[1], "codes": {},
                        "duration_buckets": [0] * (NBUCKETS + 1), "duration_sum": 0.0,
                        "duration_count": 0, "received_bytes": 0, "sent_bytes": 0}
                    http.append(entry)
                if e.kind == SK_CODE:
                    if sums[0]:
                        entry["codes"][e.code] = entry["codes"].get(e.code, 0) + sums[0]
                else:
                    entry["duration_buckets"] = _cumulative(sums, sums[R_COUNT])
                    entry["duration_sum"] = sums[R_SUM] / 1e6
                    entry["duration_count"] = sums[R_COUNT]
                    entry["received_bytes"] = sums[R_RECEIVED]
                    entry["sent_bytes"] = sums[R_SENT]
            elif e.kind == SK_UPSTREAM:
                upstreams.append({"upstream": labels[0], "buckets": _cumulative(sums, sums[R_COUNT]),
                                  "sum": sums[R_SUM] / 1e6, "count": sums[R_COUNT]})
            elif e.kind == SK_PEER:
                health = zone_row(&self.z, self.workers_cap, i)[R_PEER_HEALTH]
                peers.append({"upstream": labels[0], "peer": labels[1],
                              "failures": sums[R_PEER_FAILURES], "health": health,
                              "active": sums[R_PEER_ACTIVE],
                              "up": down_until <= now and not (health and health % 2 == 0)})
            elif e.kind == SK_LIMIT:
                limits.append({"zone": labels[0], "decision": labels[1], "count": sums[0]})
            elif e.kind == SK_MIRROR:
                mirrors.append({"mirror": labels[0], "result": labels[1], "count": sums[0]})
            elif e.kind == SK_SINK:
                row = zone_row(&self.z, self.workers_cap, i)
                sinks[labels[0]] = {"ring_dropped": sums[R_SINK_DROPPED],
                                    "control_dropped": row[R_SINK_CONTROL_DROPPED]}
        conns = {"active": 0, "reading": 0, "writing": 0, "idle": 0, "at_rest": 0,
                 "pool_free_bytes": 0}
        for w in range(nworkers):
            conns["active"] += self.z.workers[w].active
            conns["reading"] += self.z.workers[w].reading
            conns["writing"] += self.z.workers[w].writing
            conns["idle"] += self.z.workers[w].idle
            conns["at_rest"] += self.z.workers[w].at_rest
            conns["pool_free_bytes"] += self.z.workers[w].pool_free_bytes
        return {"http": http, "upstreams": upstreams, "peers": peers,
                "connections": conns, "sinks": sinks, "limits": limits, "mirrors": mirrors}

    def drain(self, int max_records=1000):
        """Take up to `max_records` log records from the workers' rings, oldest first per
        worker: a list of (sink target text, record bytes)."""
        cdef int64_t nworkers = min(edge_load64(&self.z.header.workers_seen), self.workers_cap)
        cdef int64_t w, head, tail, need, size = self.ring_size
        cdef uint32_t hdr[2]
        cdef WorkerBlock *wb
        cdef char *ring
        cdef bytearray data
        cdef list out = []
        for w in range(nworkers):
            wb = &self.z.workers[w]
            ring = self.z.rings + w * size
            tail = edge_load64(&wb.ring_tail)
            while len(out) < max_records:
                head = edge_load64(&wb.ring_head)
                if tail >= head:
                    break
                ring_copy_out(ring, size, tail, <char *>hdr, RECORD_HEADER)
                need = (RECORD_HEADER + <int64_t>hdr[0] + RING_ALIGN - 1) & ~(RING_ALIGN - 1)
                if need > size or tail + need > head:
                    tail = edge_load64(&wb.ring_tail)     # overwritten under us: resync
                    continue
                data = bytearray(hdr[0])
                ring_copy_out(ring, size, tail + RECORD_HEADER, <char *>data, hdr[0])
                if not edge_cas64(&wb.ring_tail, tail, tail + need):
                    tail = edge_load64(&wb.ring_tail)     # the worker dropped it meanwhile
                    continue
                tail += need
                out.append((self._sink_name(hdr[1]), bytes(data)))
        return out

    cdef str _sink_name(self, uint32_t series):
        name = self.sink_names.get(series)
        if name is None:
            if series < <uint32_t>self.series_cap and self.z.series[series].kind == SK_SINK:
                name = self._labels(&self.z.series[series])[0]
            else:
                name = ""
            self.sink_names[series] = name
        return name

    def store_control_drops(self, dict totals):
        """The control process's own drop counts per sink (records lost after they left
        the rings), kept here so that a respawned control process goes on from them."""
        cdef bytes key
        cdef int64_t series
        for sink, total in totals.items():
            key = labels_bytes([sink])
            series = zone_series(&self.z, SK_SINK, 0, key, len(key))
            if series >= 0:
                zone_row(&self.z, self.workers_cap, series)[R_SINK_CONTROL_DROPPED] = total

    def control_drops(self):
        """What store_control_drops last kept, per sink."""
        return {sink: info["control_dropped"] for sink, info in self.snapshot()["sinks"].items()
                if info["control_dropped"]}


cdef list _cumulative(int64_t *sums, int64_t count):
    cdef list out = []
    cdef int64_t acc = 0
    cdef int b
    for b in range(NBUCKETS):
        acc += sums[b]
        out.append(acc)
    out.append(count)
    return out


cdef inline int64_t next_connection_serial() noexcept nogil:
    if g_zone.header == NULL:
        return 0
    return edge_fetch_add64(&g_zone.header.connection_counter, 1) + 1
