# Limits in shared memory: request rate (GCRA), request counts per window (fixed or
# sliding), concurrent requests. docs/limits.md has the algorithms and their bounds.
#
# A zone is a file-backed shared mapping made by the master (`<state file>.limit.NAME`),
# mapped by every worker and by the control process, kept across a reload that keeps its
# name, kind and size. It is a header page and a table of 128-byte entries, one per key,
# found by the key's 64-bit FNV-1a hash with linear probing over a short window. An entry
# is changed under its own spin lock (a compare-and-swap on one word; the critical section
# is a few dozen instructions and never calls out), so all workers of a node share one
# state per key.
#
# When a new key finds no free entry in its probe window, an expired entry is reused
# first (GCRA: its theoretical arrival time has passed; windows: nothing in the current or
# previous window; concurrency: no request in flight), else the least recently used one.
# Concurrency entries with requests in flight are never evicted: when the whole window is
# busy, the new key is refused, as nginx's limit_conn refuses when its zone is full.
#
# Cluster scope: the control process moves each key's admissions out (`collect`) and
# feeds back what the other nodes admitted (`set_others` / `add_others`), through Redis,
# every limit_sync_interval. Workers never wait for it: they decide from this table.

DEF LIMIT_MAGIC = 0x65646765_6c696d74     # "edgelimt"
DEF ENTRY_WORDS = 16
DEF PROBE = 8
DEF LOCK_SPINS = 1000000

cdef enum LimitKind:
    LK_REQ = 1
    LK_COUNT = 2
    LK_CONN = 3

cdef enum LimitMode:
    LM_CLUSTER = 0          # normal (also for node scope)
    LM_LOCAL = 1            # Redis unreachable: limit / live nodes, own counts only
    LM_ALLOW = 2
    LM_DENY = 3

# entry words
DEF E_HASH = 0
DEF E_LOCK = 1
DEF E_LAST = 2              # last use, wall clock ms (eviction)
DEF E_A = 3                 # req: TAT (µs, monotonic); count: window index; conn: in flight
DEF E_B = 4                 # count: own admissions in window A
DEF E_C = 5                 # count: own admissions in window A - 1
DEF E_D = 6                 # count: other nodes' admissions in window A
DEF E_E = 7                 # count: other nodes' admissions in window A - 1
DEF E_PENDING = 8           # own admissions not yet collected (cluster)
DEF E_PENDING_WIN = 9       # count: the window E_PENDING belongs to
DEF E_PENDING_PREV = 10     # count: uncollected admissions of the window before it

cdef struct LimitHeader:
    uint64_t magic
    int64_t kind
    int64_t capacity            # entries
    int64_t cluster             # scope=cluster
    int64_t mode                # LimitMode, written by the control process
    int64_t live_nodes
    int64_t limit_milli         # req: rate × 1000 per second; count, conn: N × 1000
    int64_t window_ms           # count
    int64_t sliding
    int64_t entries             # in use
    int64_t evicted
    int64_t admitted
    int64_t rejected
    int64_t delayed
    int64_t local_decisions
    int64_t full                # new keys refused: no entry could be freed
    int64_t reserved[496]


cdef inline int64_t *entry_at(LimitHeader *h, int64_t i) noexcept nogil:
    return (<int64_t *>(<char *>h + sizeof(LimitHeader))) + i * ENTRY_WORDS


cdef inline void entry_lock(int64_t *e) noexcept nogil:
    cdef int64_t spins = 0
    while not edge_cas64(&e[E_LOCK], 0, 1):
        spins += 1
        if spins > LOCK_SPINS:
            # the holder died inside its few instructions: take the lock over
            edge_store64(&e[E_LOCK], 1)
            return


cdef inline void entry_unlock(int64_t *e) noexcept nogil:
    edge_store64(&e[E_LOCK], 0)


cdef uint64_t key_hash(const char *p, size_t n) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL
    cdef size_t i
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 1099511628211ULL
    return h if h > 1 else 2       # 0 marks a free entry


cdef bint entry_expired(LimitHeader *hd, int64_t *e, int64_t now_us, int64_t real_ms) noexcept nogil:
    if hd.kind == LK_REQ:
        return e[E_A] <= now_us and e[E_PENDING] == 0
    if hd.kind == LK_COUNT:
        return e[E_A] < real_ms // hd.window_ms - 1 and e[E_PENDING] == 0 and e[E_PENDING_PREV] == 0
    return e[E_A] <= 0


cdef int64_t *zone_entry(LimitHeader *hd, uint64_t h, int64_t now_us, int64_t real_ms) noexcept nogil:
    """The locked entry for hash h, created (or made by eviction) when new; NULL when the
    zone has no entry to give (concurrency entries all busy).

    Entries are never freed, only reused, so a key lives before the first free entry of
    its probe window: the scan stops there. A new key takes that first free entry (two
    workers inserting the same key meet on its lock), else an expired one, else the
    least recently used."""
    cdef int64_t cap = hd.capacity
    cdef int64_t start = <int64_t>(h % <uint64_t>cap)
    cdef int64_t i, k, victim, expired, lru, lru_time
    cdef int64_t *e
    cdef int64_t *v
    cdef uint64_t seen, victim_hash = 0, expired_hash = 0, lru_hash = 0
    cdef int attempt
    for attempt in range(4):
        victim = -1
        expired = -1
        lru = -1
        lru_time = 0
        for k in range(PROBE):
            i = (start + k) % cap
            e = entry_at(hd, i)
            seen = <uint64_t>edge_load64(&e[E_HASH])
            if seen == h or seen == 0:
                victim = i
                victim_hash = seen
                break
            if hd.kind == LK_CONN and e[E_A] > 0:
                continue                    # requests in flight: never evicted
            if expired < 0 and entry_expired(hd, e, now_us, real_ms):
                expired = i
                expired_hash = seen
            elif lru < 0 or e[E_LAST] < lru_time:
                lru = i
                lru_hash = seen
                lru_time = e[E_LAST]
        if victim < 0:
            victim = expired if expired >= 0 else lru
            victim_hash = expired_hash if expired >= 0 else lru_hash
        if victim < 0:
            edge_fetch_add64(&hd.full, 1)
            return NULL
        v = entry_at(hd, victim)
        entry_lock(v)
        if <uint64_t>v[E_HASH] == h:
            v[E_LAST] = real_ms
            return v
        # what was chosen must still be what was seen: free, or the same evictable key
        if <uint64_t>v[E_HASH] == victim_hash and not (hd.kind == LK_CONN and v[E_A] > 0):
            if v[E_HASH] == 0:
                edge_fetch_add64(&hd.entries, 1)
            else:
                edge_fetch_add64(&hd.evicted, 1)
            memset(&v[E_LAST], 0, sizeof(int64_t) * (ENTRY_WORDS - E_LAST))
            v[E_LAST] = real_ms
            edge_store64(&v[E_HASH], <int64_t>h)
            return v
        entry_unlock(v)         # changed under us: look again
    edge_fetch_add64(&hd.full, 1)
    return NULL


cdef inline int64_t mode_limit_milli(LimitHeader *hd) noexcept nogil:
    """The limit in force: in local mode, this node's share of the cluster's."""
    if hd.cluster and hd.mode == LM_LOCAL and hd.live_nodes > 1:
        return hd.limit_milli // hd.live_nodes
    return hd.limit_milli


# ---- decisions ------------------------------------------------------------------------------

cdef struct Decision:
    int verdict             # 0 passed, 1 rejected, 2 no key (not limited)
    int64_t delay_us        # limit_req without nodelay: wait this long first
    int64_t limit           # for the rate-limit headers
    int64_t remaining
    int64_t reset_s         # seconds until the limit resets (window end / bucket refilled)
    int64_t excess_milli    # limit_req: the excess, for the error log (nginx's "excess: 1.250")
    bint local              # decided under the failure policy


cdef void decide_req(LimitHeader *hd, int64_t *e, int64_t burst, int64_t delay_n, bint nodelay,
                     int64_t now_us, Decision *d) noexcept nogil:
    """GCRA: emission interval T = 1/rate, tolerance burst × T. A request is admitted
    when its theoretical arrival time is at most tolerance ahead of now."""
    cdef int64_t limit_milli = mode_limit_milli(hd)
    cdef int64_t T = 1000000000 // (limit_milli if limit_milli > 0 else 1)
    cdef int64_t tat = e[E_A] if e[E_A] > now_us else now_us
    cdef int64_t wait = tat - now_us
    cdef int64_t tau = burst * T
    d.limit = limit_milli // 1000 if limit_milli >= 1000 else 1
    d.excess_milli = wait * 1000 // T
    if wait > tau:
        d.verdict = 1
        d.remaining = 0
        d.reset_s = (wait - tau + 999999) // 1000000
        return          # a rejected request leaves the state as it was
    d.verdict = 0
    e[E_A] = tat + T
    d.remaining = (tau - wait) // T
    d.reset_s = (e[E_A] - now_us + 999999) // 1000000
    if not nodelay and wait > delay_n * T:
        d.delay_us = wait - delay_n * T
    if hd.cluster:
        e[E_PENDING] += 1


cdef void roll_window(LimitHeader *hd, int64_t *e, int64_t w) noexcept nogil:
    """Move an entry's counts to window w (the previous window keeps the counts of w - 1)."""
    if e[E_A] == w:
        return
    if e[E_PENDING] and e[E_PENDING_WIN] != w:
        # uncollected admissions of an older window: keep those of w - 1 for the push
        e[E_PENDING_PREV] = e[E_PENDING] if e[E_PENDING_WIN] == w - 1 else e[E_PENDING_PREV]
        e[E_PENDING] = 0
    if e[E_A] == w - 1:
        e[E_C] = e[E_B]
        e[E_E] = e[E_D]
    else:
        e[E_C] = 0
        e[E_E] = 0
    e[E_A] = w
    e[E_B] = 0
    e[E_D] = 0
    e[E_PENDING_WIN] = w


cdef void decide_count(LimitHeader *hd, int64_t *e, int64_t real_ms, Decision *d) noexcept nogil:
    """N per window. Fixed: the count of the current window. Sliding: the current count
    plus the previous window's weighted by the part of it still inside the sliding window
    (previous × (1 - elapsed / window))."""
    cdef int64_t W = hd.window_ms
    cdef int64_t w = real_ms // W
    cdef int64_t elapsed = real_ms - w * W
    cdef int64_t limit_milli = mode_limit_milli(hd)
    cdef bint local = hd.cluster and hd.mode == LM_LOCAL
    cdef int64_t used_milli
    roll_window(hd, e, w)
    used_milli = (e[E_B] + (0 if local else e[E_D])) * 1000
    if hd.sliding:
        used_milli += (e[E_C] + (0 if local else e[E_E])) * (W - elapsed) * 1000 // W
    d.limit = limit_milli // 1000
    d.reset_s = (W - elapsed + 999) // 1000
    if used_milli + 1000 > limit_milli:
        d.verdict = 1
        d.remaining = 0
        return
    d.verdict = 0
    e[E_B] += 1
    if hd.cluster:
        e[E_PENDING] += 1
        e[E_PENDING_WIN] = w
    d.remaining = (limit_milli - used_milli - 1000) // 1000


cdef void decide_conn(LimitHeader *hd, int64_t *e, int64_t limit, Decision *d) noexcept nogil:
    d.limit = limit
    d.reset_s = 0
    if e[E_A] >= limit:
        d.verdict = 1
        d.remaining = 0
        return
    d.verdict = 0
    e[E_A] += 1
    d.remaining = limit - e[E_A]


cdef void conn_release(LimitHeader *hd, uint64_t h) noexcept nogil:
    cdef int64_t cap = hd.capacity
    cdef int64_t start = <int64_t>(h % <uint64_t>cap)
    cdef int64_t k
    cdef int64_t *e
    for k in range(PROBE):
        e = entry_at(hd, (start + k) % cap)
        if <uint64_t>edge_load64(&e[E_HASH]) == h:
            entry_lock(e)
            if <uint64_t>e[E_HASH] == h and e[E_A] > 0:
                e[E_A] -= 1
            entry_unlock(e)
            return


# ---- zone files -------------------------------------------------------------------------------

cdef str g_limit_prefix = None      # "<state file>.limit.": set by the master before forking


def set_limit_zone_prefix(str prefix):
    global g_limit_prefix
    g_limit_prefix = prefix


def limit_zone_path(str name):
    if g_limit_prefix is None:
        return None
    return g_limit_prefix + name


KIND_NAMES = {LK_REQ: "req", LK_COUNT: "count", LK_CONN: "conn"}
KIND_CODES = {"req": LK_REQ, "count": LK_COUNT, "conn": LK_CONN}
MODE_NAMES = {LM_CLUSTER: "cluster", LM_LOCAL: "local", LM_ALLOW: "allow", LM_DENY: "deny"}
MODE_CODES = {v: k for k, v in MODE_NAMES.items()}
ENTRY_BYTES = ENTRY_WORDS * 8


def zone_capacity(int64_t size):
    """Entries in a zone of `size` bytes (one page of header)."""
    return (size - <int64_t>sizeof(LimitHeader)) // (ENTRY_WORDS * 8)


def prepare_zone_file(str path, str kind, int64_t size, bint cluster, double limit,
                      int64_t window_ms, bint sliding):
    """In the master, when a config is loaded: keep the file when kind and size match
    (its state survives the reload), else make it anew (empty). Returns True when kept."""
    import os
    cdef LimitZone z
    kept = False
    try:
        z = LimitZone.open(path)
        kept = z.hd.kind == KIND_CODES[kind] and z.size == size
        z.close()
    except (OSError, ValueError):
        pass
    if not kept:
        tmp = path + ".new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        os.replace(tmp, path)       # mappings of the old file stay valid for its users
    z = LimitZone.open(path, check_magic=kept)
    if not kept:
        z.hd.kind = KIND_CODES[kind]
        z.hd.capacity = zone_capacity(size)
        z.hd.live_nodes = 1
        z.hd.magic = LIMIT_MAGIC
    z.hd.cluster = cluster
    z.hd.limit_milli = <int64_t>(limit * 1000)
    z.hd.window_ms = window_ms if window_ms > 0 else 1000
    z.hd.sliding = sliding
    z.close()
    return kept


cdef class LimitZone:
    """A mapped zone file: the workers' limiter state (and the control process's view)."""
    cdef LimitHeader *hd
    cdef readonly int64_t size
    cdef readonly str path

    def __dealloc__(self):
        self.close()

    @staticmethod
    def open(str path, bint check_magic=True):
        import os
        cdef LimitZone z = LimitZone.__new__(LimitZone)
        cdef void *p
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < <long>sizeof(LimitHeader) + ENTRY_WORDS * 8:
                raise ValueError("%s is not a limit zone" % path)
            p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            if p == MAP_FAILED:
                raise OSError(errno, "mmap of %s failed" % path)
        finally:
            os.close(fd)
        z.hd = <LimitHeader *>p
        z.size = size
        z.path = path
        if check_magic and z.hd.magic != LIMIT_MAGIC:
            z.close()
            raise ValueError("%s is not a limit zone" % path)
        return z

    def close(self):
        if self.hd != NULL:
            munmap(self.hd, self.size)
            self.hd = NULL

    property name:
        def __get__(self):
            import os
            base = os.path.basename(self.path)
            return base.rsplit(".limit.", 1)[-1]

    property kind:
        def __get__(self): return KIND_NAMES.get(self.hd.kind, "?")

    property scope:
        def __get__(self): return "cluster" if self.hd.cluster else "node"

    property limit:
        def __get__(self):
            return self.hd.limit_milli / 1000.0 if self.hd.kind == LK_REQ else self.hd.limit_milli // 1000

    property window_ms:
        def __get__(self): return self.hd.window_ms

    property sliding:
        def __get__(self): return bool(self.hd.sliding)

    def collect(self):
        """This node's admissions since the last collect, moved out: [(hash, window, n)]."""
        cdef int64_t i
        cdef int64_t *e
        cdef list out = []
        cdef int64_t n, prev, win
        cdef uint64_t h
        for i in range(self.hd.capacity):
            e = entry_at(self.hd, i)
            if e[E_HASH] == 0 or (e[E_PENDING] == 0 and e[E_PENDING_PREV] == 0):
                continue
            entry_lock(e)
            h = <uint64_t>e[E_HASH]
            n = e[E_PENDING]
            prev = e[E_PENDING_PREV]
            win = e[E_PENDING_WIN]
            e[E_PENDING] = 0
            e[E_PENDING_PREV] = 0
            entry_unlock(e)
            if self.hd.kind == LK_REQ:
                if n:
                    out.append((h, 0, n))
                continue
            if prev:
                out.append((h, win - 1, prev))
            if n:
                out.append((h, win, n))
        return out

    def set_others(self, uint64_t h, int64_t window, int64_t count):
        """count zones: what the other nodes admitted for this key in this window."""
        cdef int64_t *e = self._entry(h)
        if e == NULL:
            return
        if window > e[E_A]:
            roll_window(self.hd, e, window)
        if window == e[E_A]:
            e[E_D] = count if count > 0 else 0
        elif window == e[E_A] - 1:
            e[E_E] = count if count > 0 else 0
        entry_unlock(e)

    def add_others(self, uint64_t h, int64_t n):
        """req zones: the other nodes admitted n more requests for this key."""
        cdef int64_t *e
        cdef int64_t T, now
        cdef timespec ts
        if n <= 0 or self.hd.limit_milli <= 0:
            return
        e = self._entry(h)
        if e == NULL:
            return
        clock_gettime(CLOCK_MONOTONIC, &ts)
        now = <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000
        T = 1000000000 // self.hd.limit_milli
        e[E_A] = (e[E_A] if e[E_A] > now else now) + n * T
        entry_unlock(e)

    cdef int64_t *_entry(self, uint64_t h):
        cdef timespec ts
        cdef int64_t now_us, real_ms
        clock_gettime(CLOCK_MONOTONIC, &ts)
        now_us = <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000
        clock_gettime(CLOCK_REALTIME, &ts)
        real_ms = <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000
        return zone_entry(self.hd, h, now_us, real_ms)

    def set_mode(self, str mode, int64_t live_nodes=1):
        self.hd.live_nodes = live_nodes if live_nodes > 0 else 1
        self.hd.mode = MODE_CODES[mode]

    def stats(self):
        return {"entries": self.hd.entries, "capacity": self.hd.capacity,
                "evicted": self.hd.evicted, "admitted": self.hd.admitted,
                "rejected": self.hd.rejected, "delayed": self.hd.delayed,
                "local_decisions": self.hd.local_decisions, "full": self.hd.full,
                "mode": MODE_NAMES.get(self.hd.mode, "?"), "live_nodes": self.hd.live_nodes}

    def peek(self, bytes key):
        """The entry of a key, for tests and `edge` tools: a dict, or None."""
        cdef uint64_t h = key_hash(key, len(key))
        cdef int64_t cap = self.hd.capacity
        cdef int64_t k
        cdef int64_t *e
        for k in range(PROBE):
            e = entry_at(self.hd, (<int64_t>(h % <uint64_t>cap) + k) % cap)
            if <uint64_t>e[E_HASH] == h:
                return {"a": e[E_A], "own": e[E_B], "own_prev": e[E_C], "others": e[E_D],
                        "others_prev": e[E_E], "pending": e[E_PENDING], "last_ms": e[E_LAST]}
        return None

    @staticmethod
    def hash_key(bytes key):
        return key_hash(key, len(key))


# ---- the access-phase handlers -------------------------------------------------------------

cdef Buf g_limit_key            # the key being evaluated
cdef bint g_limit_key_ready = False
cdef dict g_zone_refs = {}      # path -> LimitZone: mapped once per process, never unmapped
                                # while a request may hold a concurrency slot in it


cdef LimitZone zone_for(str name):
    """The mapped zone `name` of this master, or None when there is none (edge -t, or a
    process the master did not prepare)."""
    path = limit_zone_path(name)
    if path is None:
        return None
    z = g_zone_refs.get(path)
    if z is None or (<LimitZone>z).hd == NULL:
        z = LimitZone.open(path)
        g_zone_refs[path] = z
    return z


def forget_zone(str path):
    """The master replaced this zone's file (resized): the next attach maps the new one.
    The old mapping stays with the handlers of plans still in use."""
    g_zone_refs.pop(path, None)


LOG_LEVELS = {"info": 0, "notice": 1, "warn": 2, "error": 3}
LOG_LEVEL_NAMES = ("info", "notice", "warn", "error")


cdef class Limit(PhaseHandler):
    """One limit_req / limit_count / limit_conn directive of a location (access phase)."""
    cdef readonly str zone_name
    cdef readonly int kind
    cdef readonly Template key
    cdef LimitZone zone
    cdef LimitHeader *hd
    cdef int64_t burst
    cdef int64_t delay_n
    cdef bint nodelay
    cdef int64_t conn_limit
    cdef readonly int status
    cdef bint dry_run
    cdef bint log_reject            # the error log takes limit_*_log_level
    cdef bint log_delay             # ... and one level lower for delays (nginx)
    cdef str reject_level
    cdef str delay_level
    cdef int64_t series[6]          # passed, rejected, delayed, dry_run, passed_local, rejected_local

    def __init__(self, str kind, str zone_name, Template key, int64_t burst=0, bint nodelay=False,
                 int64_t delay_n=0, int64_t conn_limit=0, int status=429, bint dry_run=False,
                 str log_level="error", log_enabled=None):
        self.name = "limit_" + kind
        self.kind = KIND_CODES[kind]
        self.zone_name = zone_name
        self.key = key
        self.burst = burst
        self.nodelay = nodelay
        self.delay_n = burst if nodelay else delay_n
        self.conn_limit = conn_limit
        self.status = status
        self.dry_run = dry_run
        self.reject_level = log_level
        self.delay_level = LOG_LEVEL_NAMES[max(0, LOG_LEVELS[log_level] - 1)]
        self.log_reject = log_enabled is None or bool(log_enabled(log_level))
        self.log_delay = log_enabled is None or bool(log_enabled(self.delay_level))
        for i in range(6):
            self.series[i] = -1

    def attach(self):
        global g_limit_key_ready
        if not g_limit_key_ready:
            buf_init(&g_limit_key, 256)
            g_limit_key_ready = True
        self.zone = zone_for(self.zone_name)
        self.hd = self.zone.hd if self.zone is not None else NULL
        for i, decision in enumerate(("passed", "rejected", "delayed", "dry_run",
                                      "passed_local", "rejected_local")):
            self.series[i] = series_for(SK_LIMIT, [self.zone_name, decision])

    cdef inline void count(self, int which) noexcept:
        cdef int64_t *row = my_row(self.series[which])
        if row != NULL:
            row[0] += 1

    cdef int run(self, Client c) except -1:
        cdef LimitHeader *hd = self.hd
        cdef uint64_t h
        cdef int64_t *e
        cdef Decision d
        cdef bint local
        if hd == NULL:
            return PH_CONTINUE
        buf_reset(&g_limit_key)
        eval_template(self.key, c, &g_limit_key)
        if buf_len(&g_limit_key) == 0:
            return PH_CONTINUE          # an empty key is not limited (nginx)
        h = key_hash(g_limit_key.data, buf_len(&g_limit_key))
        memset(&d, 0, sizeof(Decision))
        local = hd.cluster and hd.mode != LM_CLUSTER
        if local:
            edge_fetch_add64(&hd.local_decisions, 1)
        if hd.cluster and hd.mode == LM_ALLOW:
            self.count(4)
            return PH_CONTINUE
        if hd.cluster and hd.mode == LM_DENY:
            d.verdict = 1
            d.reset_s = 1
        else:
            e = zone_entry(hd, h, g_now_us, g_real_ms)
            if e == NULL:
                d.verdict = 1           # the zone is full of busy keys
                d.reset_s = 1
            else:
                if self.kind == LK_REQ:
                    decide_req(hd, e, self.burst, self.delay_n, self.nodelay, g_now_us, &d)
                elif self.kind == LK_COUNT:
                    decide_count(hd, e, g_real_ms, &d)
                else:
                    decide_conn(hd, e, self.conn_limit, &d)
                    if d.verdict == 0:
                        # held until the request ends, however it ends (log_request)
                        if c.nconn_holds < MAX_CONN_HOLDS:
                            c.conn_holds[c.nconn_holds] = <void *>hd
                            c.conn_hashes[c.nconn_holds] = h
                            c.nconn_holds += 1
                        else:
                            e[E_A] -= 1     # more limit_conn than a request can hold: not counted
                entry_unlock(e)
        # the most restrictive limit is the one the client is told about
        if c.rl_limit < 0 or d.remaining < c.rl_remaining:
            c.rl_limit = d.limit
            c.rl_remaining = d.remaining
            c.rl_reset = d.reset_s
            c.rl_zone = self
        if d.verdict == 1:
            if self.dry_run:
                # limit_*_dry_run: counted and logged, served, and the state left as it was
                self.count(3)
                if self.log_reject:
                    self.log_limit(c, self.reject_level, "limiting (dry run)", d.excess_milli)
                return PH_CONTINUE
            edge_fetch_add64(&hd.rejected, 1)
            self.count(5 if local else 1)
            c.rl_rejected = True
            if c.rl_retry_after < d.reset_s:
                c.rl_retry_after = d.reset_s
            if self.log_reject:
                self.log_limit(c, self.reject_level, "limiting", d.excess_milli)
            return self.status
        edge_fetch_add64(&hd.admitted, 1)
        if d.delay_us > 0:
            edge_fetch_add64(&hd.delayed, 1)
            self.count(2)
            if c.limit_delay_us < d.delay_us:
                c.limit_delay_us = d.delay_us
            if self.log_delay:
                self.log_limit(c, self.delay_level, "delaying", d.excess_milli)
        else:
            self.count(4 if local else 0)
        return PH_CONTINUE

    cdef void log_limit(self, Client c, str level, str what, int64_t excess_milli):
        """nginx's wording: limiting requests, excess: 1.250 by zone "one", client: ..."""
        if g_log_fn is None:
            return
        try:
            if self.kind == LK_REQ:
                head = '%s requests, excess: %d.%03d by zone "%s"' % (
                    what, excess_milli // 1000, excess_milli % 1000, self.zone_name)
            elif self.kind == LK_COUNT:
                head = '%s requests by count zone "%s"' % (what, self.zone_name)
            else:
                head = '%s connections by zone "%s"' % (what, self.zone_name)
            g_log_fn(level, '%s, client: %s, server: %s, request: "%s %s"' % (
                head, c.remote[:c.remote_len].decode("latin-1"),
                c.server.first_name.decode("latin-1") if c.server is not None else "",
                c.method[:c.method_len].decode("latin-1"), c.target[:c.target_len].decode("latin-1")))
        except Exception:
            pass


cdef class LimitHeaders(HeaderFilter):
    """limit_headers legacy|ietf, and Retry-After on every rejection."""
    cdef int mode           # 0 off, 1 legacy, 2 ietf

    def __init__(self, str mode):
        self.name = "limit_headers"
        self.mode = {"off": 0, "legacy": 1, "ietf": 2}[mode]

    cdef int filter(self, Client c, Buf *out) except -1:
        cdef int64_t retry
        if c.rl_limit < 0:
            return 0
        if self.mode == 1:
            buf_append_str(out, "X-RateLimit-Limit: ")
            buf_append_uint(out, <uint64_t>c.rl_limit)
            buf_append_str(out, "\r\nX-RateLimit-Remaining: ")
            buf_append_uint(out, <uint64_t>c.rl_remaining)
            buf_append_str(out, "\r\nX-RateLimit-Reset: ")
            buf_append_uint(out, <uint64_t>c.rl_reset)
            buf_append_str(out, "\r\n")
        elif self.mode == 2 and c.rl_zone is not None:
            # draft-ietf-httpapi-ratelimit-headers: a policy (quota q over window w) and
            # the state of it (r remaining, t seconds until reset)
            buf_append_str(out, "RateLimit-Policy: \"")
            buf_append_bytes(out, (<Limit>c.rl_zone).zone_name.encode("latin-1"))
            buf_append_str(out, "\";q=")
            buf_append_uint(out, <uint64_t>c.rl_limit)
            if (<Limit>c.rl_zone).kind == LK_COUNT and (<Limit>c.rl_zone).hd != NULL:
                buf_append_str(out, ";w=")
                buf_append_uint(out, <uint64_t>(((<Limit>c.rl_zone).hd.window_ms + 999) // 1000))
            elif (<Limit>c.rl_zone).kind == LK_REQ:
                buf_append_str(out, ";w=1")
            buf_append_str(out, "\r\nRateLimit: \"")
            buf_append_bytes(out, (<Limit>c.rl_zone).zone_name.encode("latin-1"))
            buf_append_str(out, "\";r=")
            buf_append_uint(out, <uint64_t>c.rl_remaining)
            buf_append_str(out, ";t=")
            buf_append_uint(out, <uint64_t>c.rl_reset)
            buf_append_str(out, "\r\n")
        if c.rl_rejected:
            retry = c.rl_retry_after if c.rl_retry_after > 0 else 1
            buf_append_str(out, "Retry-After: ")
            buf_append_uint(out, <uint64_t>retry)
            buf_append_str(out, "\r\n")
        return 0


cdef inline void release_conn_holds(Client c) noexcept:
    cdef int i
    for i in range(c.nconn_holds):
        conn_release(<LimitHeader *>c.conn_holds[i], c.conn_hashes[i])
    c.nconn_holds = 0
