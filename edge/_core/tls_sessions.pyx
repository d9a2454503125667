# TLS session resumption across workers: nginx's ssl_session_cache (shared:NAME:SIZE in
# shared memory), ssl_session_timeout, ssl_session_tickets and ssl_session_ticket_key.
# The Python half is edge/modules/ssl_session.py; docs/tls.md, "Session resumption", has
# the operator's view.
#
# Shared session cache. A zone is a file-backed shared mapping made by the master
# (`<state file>.ssl.cache.NAME`), kept across a reload that keeps its name and size, and
# mapped by each worker the first time one of its handshakes needs it. Layout:
#
#   header   one page: the lock, the ring's head and tail, counters
#   index    buckets of SC_BUCKET entries (hash of the session id, ring position)
#   ring     the sessions, DER (i2d_SSL_SESSION), as records appended at the head
#
# The ring is a log: a new session is appended at the head, and when the ring is full the
# oldest records (at the tail) are overwritten, so the oldest sessions are evicted first.
# Positions are absolute byte counts that only grow; the record at position p lives at
# ring[p % ring_size] and is intact while p >= tail. A record never wraps: when it does not
# fit before the end of the ring, a gap marker (a record length of 0) ends that lap and
# the record starts the next. An index entry whose position fell behind the tail is stale
# and free for reuse; a full bucket gives up its oldest entry.
#
# Every operation holds the zone's lock (a compare-and-swap on one word holding the
# holder's pid) for a copy of at most SC_MAX_DER bytes and a few index probes; it never
# calls out. A worker that finds the lock busy spins, then yields, and after SC_LOCK_TRIES
# attempts gives up (counted as `busy`): the handshake goes on without the cache, it never
# waits. A lock whose holder died is taken over, and the cache is emptied then, since the
# dead holder may have left a record half written.
#
# Ticket keys. One small zone per master (`<state file>.ssl.tickets`) holds up to TK_MAX
# keys: keys[0] encrypts, all of them decrypt. The master makes it, with one random key,
# when it first prepares a config that uses tickets without ssl_session_ticket_key; the
# control process rotates it (edge/control/tickets.py): a new current key every `interval`
# seconds, and a key that stopped encrypting is dropped once `grace` seconds have passed
# (the longest ssl_session_timeout, the longest a ticket it encrypted may live). Readers
# take a consistent copy under a sequence lock; the single writer (the control process,
# or the master when it makes the zone) bumps the sequence to odd, writes, bumps to even.
#
# Servers with ssl_session_ticket_key files use those keys instead (the first encrypts,
# all decrypt), copied into the context's settings; they never rotate (as in nginx).
#
# Each server context carries its settings (SessConf) as SSL_CTX ex_data, freed with the
# context. The callbacks use those of the listen's default server, whichever server SNI
# chose (see conf_of), as nginx uses OpenSSL's session_ctx.

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<signal.h>" nogil:
    int edge_kill "kill"(int pid, int sig)

cdef extern from "<errno.h>" nogil:
    enum:
        ESRCH

DEF SC_MAGIC = 0x65646765_7373636e      # "edgesscn"
DEF TK_MAGIC = 0x65646765_746b6579      # "edgetkey"
DEF SC_HEADER_SIZE = 4096
DEF SC_BUCKET = 16
DEF SC_MAX_DER = 4096                   # larger sessions are not cached (as nginx)
DEF SC_MAX_ID = 32
DEF SC_LOCK_TRIES = 2000
DEF SC_MIN_SIZE = 32768                 # nginx's minimum: 8 pages
DEF TK_MAX = 8

cdef struct SessCacheHeader:
    uint64_t magic
    int64_t size                # bytes of the whole zone
    int64_t index_off
    int64_t nbuckets
    int64_t ring_off
    int64_t ring_size
    int64_t lock                # 0, or the pid of the process holding the zone
    int64_t head                # absolute position of the next record
    int64_t tail                # absolute position of the oldest record
    int64_t stored
    int64_t hits
    int64_t misses
    int64_t evicted             # live sessions overwritten or dropped from a full bucket
    int64_t expired             # found, but past ssl_session_timeout
    int64_t removed             # removed by OpenSSL (a session gone bad)
    int64_t too_big             # sessions larger than SC_MAX_DER, not stored
    int64_t busy                # operations skipped because the lock stayed busy
    int64_t takeovers           # locks taken from a process that died holding one
    int64_t reserved[494]

cdef struct SessIndexEntry:
    uint64_t hash               # 0: free
    int64_t pos

cdef struct SessRecord:
    int32_t len                 # bytes of the record, header included, a multiple of 8
    int32_t der_len
    int32_t id_len
    int32_t pad
    int64_t expire              # unix seconds; 0: removed
    unsigned char id[SC_MAX_ID]

cdef struct TicketKey:
    unsigned char name[16]
    unsigned char hmac[32]
    unsigned char aes[32]
    int64_t size                # 48 (AES-128, 16-byte HMAC key) or 80 (AES-256, 32-byte HMAC key)
    int64_t created             # unix seconds it was made
    int64_t retired             # unix seconds it stopped encrypting; 0: it encrypts

cdef struct TicketZone:
    uint64_t magic
    int64_t seq                 # sequence lock: odd while being written
    int64_t nkeys
    int64_t interval            # seconds between rotations (written by the master)
    int64_t grace               # seconds a retired key still decrypts (the master)
    int64_t rotated_at          # unix seconds of the last rotation (or of the making)
    int64_t rotations
    int64_t reserved[9]
    TicketKey keys[TK_MAX]

# A server context's resumption settings (SSL_CTX ex_data).
cdef struct SessConf:
    char cache_name[64]         # ssl_session_cache shared:NAME, "" without one
    SessCacheHeader *cache      # mapped on first use in this process
    int cache_state             # 0 not mapped yet, 1 mapped, -1 could not be mapped
    int nkeys                   # ticket keys from ssl_session_ticket_key files
    TicketKey keys[TK_MAX]


cdef inline int64_t wall_seconds() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec


cdef inline uint64_t session_hash(const unsigned char *id, size_t n) noexcept nogil:
    cdef uint64_t h = 14695981039346656037ULL
    cdef size_t i
    for i in range(n):
        h = (h ^ id[i]) * 1099511628211ULL
    return h if h != 0 else 1   # never 0: 0 marks a free index entry


# ---- the session cache zone --------------------------------------------------------------

cdef inline SessRecord *rec_at(SessCacheHeader *hd, int64_t pos) noexcept nogil:
    return <SessRecord *>(<char *>hd + hd.ring_off + pos % hd.ring_size)


cdef inline SessIndexEntry *bucket_at(SessCacheHeader *hd, uint64_t h) noexcept nogil:
    return <SessIndexEntry *>(<char *>hd + hd.index_off) + (h % <uint64_t>hd.nbuckets) * SC_BUCKET


cdef void sc_reset(SessCacheHeader *hd) noexcept nogil:
    """Empty the cache (the lock held)."""
    memset(<char *>hd + hd.index_off, 0, hd.nbuckets * SC_BUCKET * sizeof(SessIndexEntry))
    hd.head = 0
    hd.tail = 0


cdef bint sc_lock(SessCacheHeader *hd) noexcept nogil:
    cdef int64_t me = getpid()
    cdef int64_t holder
    cdef int i
    for i in range(SC_LOCK_TRIES):
        if edge_cas64(&hd.lock, 0, me):
            return True
        if i >= 64:
            sched_yield()
    holder = edge_load64(&hd.lock)
    if holder != 0 and (holder == me or (edge_kill(<int>holder, 0) != 0 and errno == ESRCH)):
        # the holder died inside its few instructions (or a previous process of ours with
        # this pid did): take the lock over and start from an empty cache
        if edge_cas64(&hd.lock, holder, me):
            edge_fetch_add64(&hd.takeovers, 1)
            sc_reset(hd)
            return True
    edge_fetch_add64(&hd.busy, 1)
    return False


cdef inline void sc_unlock(SessCacheHeader *hd) noexcept nogil:
    edge_store64(&hd.lock, 0)


cdef int64_t sc_find(SessCacheHeader *hd, uint64_t h, const unsigned char *id, int id_len) noexcept nogil:
    """The position of the newest intact record of this id, -1 when none."""
    cdef SessIndexEntry *b = bucket_at(hd, h)
    cdef int k
    cdef int64_t best = -1
    cdef SessRecord *r
    for k in range(SC_BUCKET):
        if b[k].hash == h and b[k].pos >= hd.tail and b[k].pos < hd.head and b[k].pos > best:
            r = rec_at(hd, b[k].pos)
            if r.id_len == id_len and memcmp(r.id, id, id_len) == 0:
                best = b[k].pos
    return best


cdef void sc_unindex(SessCacheHeader *hd, uint64_t h, int64_t pos) noexcept nogil:
    cdef SessIndexEntry *b = bucket_at(hd, h)
    cdef int k
    for k in range(SC_BUCKET):
        if b[k].hash == h and b[k].pos == pos:
            b[k].hash = 0
            b[k].pos = 0


cdef void sc_index(SessCacheHeader *hd, uint64_t h, int64_t pos, int64_t now) noexcept nogil:
    """Index a record: a free or stale entry of its bucket, else the bucket's oldest."""
    cdef SessIndexEntry *b = bucket_at(hd, h)
    cdef int k, victim = -1
    cdef SessRecord *r
    for k in range(SC_BUCKET):
        if b[k].hash == 0 or b[k].pos < hd.tail or b[k].pos >= pos:
            victim = k
            break
        if victim < 0 or b[k].pos < b[victim].pos:
            victim = k
    if b[victim].hash != 0 and b[victim].pos >= hd.tail and b[victim].pos < pos:
        r = rec_at(hd, b[victim].pos)
        if r.expire > now:
            hd.evicted += 1
        r.expire = 0            # unreachable from now on
    b[victim].hash = h
    b[victim].pos = pos


cdef bint sc_drop_tail(SessCacheHeader *hd, int64_t now) noexcept nogil:
    """Evict the oldest record (or skip the gap that ends a lap). False when the ring
    does not read as records (then the caller empties it)."""
    cdef int64_t t = hd.tail
    cdef int64_t off = t % hd.ring_size
    cdef SessRecord *r = rec_at(hd, t)
    if hd.ring_size - off < 8:
        return False
    if r.len == 0:
        hd.tail = t + (hd.ring_size - off)
        return True
    if r.len < <int32_t>sizeof(SessRecord) or r.len % 8 or off + r.len > hd.ring_size \
            or r.id_len < 0 or r.id_len > SC_MAX_ID:
        return False
    if r.expire > now:
        hd.evicted += 1
    sc_unindex(hd, session_hash(r.id, r.id_len), t)
    hd.tail = t + r.len
    return True


cdef int sc_store(SessCacheHeader *hd, const unsigned char *id, int id_len,
                  const unsigned char *der, int der_len, int64_t expire, int64_t now) noexcept nogil:
    """Store a session; 1 stored, 0 not (too big, lock busy)."""
    cdef int64_t need = (<int64_t>sizeof(SessRecord) + der_len + 7) & ~7
    cdef int64_t rs = hd.ring_size
    cdef int64_t head, off, p
    cdef uint64_t h
    cdef SessRecord *r
    if id_len <= 0 or id_len > SC_MAX_ID or der_len <= 0:
        return 0
    if der_len > SC_MAX_DER or need > rs // 4:
        edge_fetch_add64(&hd.too_big, 1)
        return 0
    h = session_hash(id, id_len)
    if not sc_lock(hd):
        return 0
    head = hd.head
    off = head % rs
    p = head + (rs - off) if off + need > rs else head
    while p + need - hd.tail > rs:
        if hd.tail >= head:
            hd.tail = p         # nothing left to evict: the ring goes on from p
            break
        if not sc_drop_tail(hd, now):
            sc_reset(hd)        # the ring does not read as records: start it afresh
            head = 0
            p = 0
            break
    if p != head:
        (<int32_t *>(<char *>hd + hd.ring_off + head % rs))[0] = 0     # a gap ends this lap
    r = rec_at(hd, p)
    r.len = <int32_t>need
    r.der_len = der_len
    r.id_len = id_len
    r.pad = 0
    r.expire = expire
    memset(r.id, 0, SC_MAX_ID)
    memcpy(r.id, id, id_len)
    memcpy(<char *>r + sizeof(SessRecord), der, der_len)
    hd.head = p + need
    sc_index(hd, h, p, now)
    hd.stored += 1
    sc_unlock(hd)
    return 1


cdef int sc_lookup(SessCacheHeader *hd, const unsigned char *id, int id_len,
                   unsigned char *out, int64_t now) noexcept nogil:
    """Copy the DER of a live session into out (SC_MAX_DER bytes); its length, 0 on a miss."""
    cdef uint64_t h
    cdef int64_t pos
    cdef SessRecord *r
    cdef int n
    if id_len <= 0 or id_len > SC_MAX_ID:
        return 0
    h = session_hash(id, id_len)
    if not sc_lock(hd):
        return 0
    pos = sc_find(hd, h, id, id_len)
    if pos < 0:
        hd.misses += 1
        sc_unlock(hd)
        return 0
    r = rec_at(hd, pos)
    if r.expire <= now:
        if r.expire != 0:
            hd.expired += 1
        hd.misses += 1
        r.expire = 0
        sc_unindex(hd, h, pos)
        sc_unlock(hd)
        return 0
    n = r.der_len
    if n <= 0 or n > SC_MAX_DER or n > r.len - <int32_t>sizeof(SessRecord):
        sc_unlock(hd)
        return 0
    memcpy(out, <char *>r + sizeof(SessRecord), n)
    hd.hits += 1
    sc_unlock(hd)
    return n


cdef void sc_remove(SessCacheHeader *hd, const unsigned char *id, int id_len) noexcept nogil:
    cdef uint64_t h
    cdef int64_t pos
    if id_len <= 0 or id_len > SC_MAX_ID:
        return
    h = session_hash(id, id_len)
    if not sc_lock(hd):
        return
    pos = sc_find(hd, h, id, id_len)
    if pos >= 0:
        rec_at(hd, pos).expire = 0
        sc_unindex(hd, h, pos)
        hd.removed += 1
    sc_unlock(hd)


# ---- zone files --------------------------------------------------------------------------

cdef str g_ssl_prefix = None        # "<state file>.ssl.": set by the master before forking
cdef dict g_cache_maps = {}         # zone name -> MappedFile (this process)
cdef object g_ticket_map = None     # MappedFile of the ticket key zone (this process)
cdef TicketZone *g_tickets = NULL
cdef int g_tickets_state = 0        # 0 not mapped yet, 1 mapped, -1 could not be mapped
cdef int64_t g_tickets_failed_at = 0    # when mapping last failed (tried again a second later)


def set_ssl_zone_prefix(str prefix):
    global g_ssl_prefix, g_tickets, g_tickets_state, g_ticket_map
    g_ssl_prefix = prefix
    g_cache_maps.clear()
    g_ticket_map = None
    g_tickets = NULL
    g_tickets_state = 0


def ssl_zone_prefix():
    return g_ssl_prefix


def session_cache_path(str name):
    """The file of shared session cache `name` in a process the master prepared, else None."""
    return None if g_ssl_prefix is None else g_ssl_prefix + "cache." + name


def ticket_keys_path():
    return None if g_ssl_prefix is None else g_ssl_prefix + "tickets"


cdef class MappedFile:
    """A whole file mapped shared, read and write."""
    cdef char *addr
    cdef readonly int64_t size
    cdef readonly str path
    cdef readonly uint64_t inode

    def __dealloc__(self):
        self.close()

    @staticmethod
    def open(str path, int64_t min_size=0):
        import os
        cdef MappedFile m = MappedFile.__new__(MappedFile)
        cdef void *p
        fd = os.open(path, os.O_RDWR)
        try:
            st = os.fstat(fd)
            if st.st_size < max(min_size, 8):
                raise ValueError("%s is too small to be an edge zone" % path)
            p = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            if p == MAP_FAILED:
                raise OSError(errno, "mmap of %s failed" % path)
        finally:
            os.close(fd)
        m.addr = <char *>p
        m.size = st.st_size
        m.path = path
        m.inode = st.st_ino
        return m

    def close(self):
        if self.addr != NULL:
            munmap(self.addr, self.size)
            self.addr = NULL


cdef void make_file(str path, int64_t size) except *:
    """A new zero-filled file put in place atomically (the users of an old file keep
    their mapping of it)."""
    import os
    tmp = path + ".new"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def prepare_session_cache(str path, int64_t size):
    """In the master, for a config about to be served: keep the zone file when its size
    is unchanged (its sessions survive the reload), else make it anew. True when kept."""
    cdef MappedFile m
    cdef SessCacheHeader *hd
    cdef int64_t space
    kept = False
    try:
        m = MappedFile.open(path, sizeof(SessCacheHeader))
        hd = <SessCacheHeader *>m.addr
        kept = hd.magic == SC_MAGIC and hd.size == size and m.size == size
        m.close()
    except (OSError, ValueError):
        pass
    if kept:
        return True
    make_file(path, size)
    m = MappedFile.open(path, sizeof(SessCacheHeader))
    hd = <SessCacheHeader *>m.addr
    space = size - SC_HEADER_SIZE
    # one index entry (16 bytes) per 128 bytes of ring: more entries than the ring holds
    # sessions (a session takes 200 bytes and more)
    hd.nbuckets = max(1, space // (9 * SC_BUCKET * 16))
    hd.index_off = SC_HEADER_SIZE
    hd.ring_off = SC_HEADER_SIZE + hd.nbuckets * SC_BUCKET * sizeof(SessIndexEntry)
    hd.ring_size = (size - hd.ring_off) & ~(<int64_t>7)
    hd.size = size
    hd.magic = SC_MAGIC
    m.close()
    return False


cdef fill_random_key(TicketKey *k, int64_t now):
    cdef unsigned char buf[80]
    if RAND_bytes(buf, 80) != 1:
        raise MemoryError(openssl_error_text("RAND_bytes() failed: "))
    memcpy(k.name, buf, 16)
    memcpy(k.hmac, buf + 16, 32)
    memcpy(k.aes, buf + 48, 32)
    OPENSSL_cleanse(buf, 80)
    k.size = 80
    k.created = now
    k.retired = 0


cdef bint tk_write_begin(TicketZone *z) noexcept nogil:
    cdef int64_t s
    cdef int i
    for i in range(100000):
        s = edge_load64(&z.seq)
        if not (s & 1) and edge_cas64(&z.seq, s, s + 1):
            return True
        sched_yield()
    # a writer died inside its write: take over
    edge_store64(&z.seq, (edge_load64(&z.seq) | 1))
    return True


cdef inline void tk_write_end(TicketZone *z) noexcept nogil:
    edge_store64(&z.seq, edge_load64(&z.seq) + 1)


cdef int tk_snapshot(TicketZone *z, TicketKey *out) noexcept nogil:
    """A consistent copy of the keys (the current one first); their count, 0 when none."""
    cdef int64_t s1, s2, n
    cdef int i
    for i in range(10000):
        s1 = edge_load64(&z.seq)
        if s1 & 1:
            if i > 64:
                sched_yield()
            continue
        n = z.nkeys
        if n < 0:
            n = 0
        elif n > TK_MAX:
            n = TK_MAX
        memcpy(out, z.keys, n * sizeof(TicketKey))
        edge_fence_acquire()
        s2 = edge_load64(&z.seq)
        if s1 == s2:
            return <int>n
    return 0


def prepare_ticket_keys(str path, int64_t interval, int64_t grace):
    """In the master: make the ticket key zone with one random key, or keep the one there
    (a reload or a binary upgrade keeps the keys); set the rotation interval and the grace
    period of retired keys. True when kept."""
    cdef MappedFile m
    cdef TicketZone *z
    kept = False
    try:
        m = MappedFile.open(path, sizeof(TicketZone))
        z = <TicketZone *>m.addr
        kept = z.magic == TK_MAGIC and m.size == sizeof(TicketZone) and 0 < z.nkeys <= TK_MAX
        if not kept:
            m.close()
    except (OSError, ValueError):
        pass
    if not kept:
        make_file(path, sizeof(TicketZone))
        m = MappedFile.open(path, sizeof(TicketZone))
        z = <TicketZone *>m.addr
        now = wall_seconds()
        fill_random_key(&z.keys[0], now)
        z.nkeys = 1
        z.rotated_at = now
        z.magic = TK_MAGIC
    tk_write_begin(z)
    z.interval = interval
    z.grace = grace
    tk_write_end(z)
    m.close()
    return kept


cdef class TicketKeyZone:
    """The ticket key zone, as the control process (rotation) and the tests see it."""
    cdef MappedFile m
    cdef TicketZone *z

    @staticmethod
    def open(str path):
        cdef TicketKeyZone t = TicketKeyZone.__new__(TicketKeyZone)
        t.m = MappedFile.open(path, sizeof(TicketZone))
        t.z = <TicketZone *>t.m.addr
        if t.z.magic != TK_MAGIC:
            t.m.close()
            raise ValueError("%s is not an edge ticket key zone" % path)
        return t

    def close(self):
        self.m.close()
        self.z = NULL

    property interval:
        def __get__(self): return self.z.interval

    property grace:
        def __get__(self): return self.z.grace

    property rotated_at:
        def __get__(self): return self.z.rotated_at

    property rotations:
        def __get__(self): return self.z.rotations

    def names(self):
        """The key names, the current key's first (hex)."""
        cdef TicketKey keys[TK_MAX]
        cdef int i, n = tk_snapshot(self.z, keys)
        out = []
        for i in range(n):
            out.append((<char *>keys[i].name)[:16].hex())
        return out

    def due(self, int64_t now=0):
        """Seconds until the next rotation is due (0 or less: due now)."""
        if now == 0:
            now = wall_seconds()
        return self.z.rotated_at + self.z.interval - now

    def rotate(self, int64_t now=0):
        """A new current key; the old current one goes on decrypting for `grace` seconds;
        keys retired longer ago than that are dropped (and the oldest beyond TK_MAX)."""
        cdef TicketKey fresh
        cdef TicketKey kept[TK_MAX]
        cdef int i, n = 0
        if now == 0:
            now = wall_seconds()
        fill_random_key(&fresh, now)
        tk_write_begin(self.z)
        kept[0] = fresh
        n = 1
        for i in range(min(self.z.nkeys, TK_MAX)):
            if n == TK_MAX:
                break
            if self.z.keys[i].retired == 0:
                self.z.keys[i].retired = now
            if self.z.keys[i].retired + self.z.grace <= now:
                continue
            kept[n] = self.z.keys[i]
            n += 1
        memcpy(self.z.keys, kept, n * sizeof(TicketKey))
        if n < TK_MAX:
            memset(&self.z.keys[n], 0, (TK_MAX - n) * sizeof(TicketKey))
        self.z.nkeys = n
        self.z.rotated_at = now
        self.z.rotations += 1
        tk_write_end(self.z)
        OPENSSL_cleanse(&fresh, sizeof(TicketKey))
        OPENSSL_cleanse(kept, sizeof(kept))


cdef class SessionCacheZone:
    """A shared session cache zone, as the tests and the status pages see it (the data
    plane uses the C functions above)."""
    cdef MappedFile m
    cdef SessCacheHeader *hd

    @staticmethod
    def open(str path):
        cdef SessionCacheZone c = SessionCacheZone.__new__(SessionCacheZone)
        c.m = MappedFile.open(path, sizeof(SessCacheHeader))
        c.hd = <SessCacheHeader *>c.m.addr
        if c.hd.magic != SC_MAGIC or c.hd.size != c.m.size:
            c.m.close()
            raise ValueError("%s is not an edge session cache" % path)
        return c

    def close(self):
        self.m.close()
        self.hd = NULL

    def stats(self):
        cdef SessCacheHeader *hd = self.hd
        return {"size": hd.size, "ring_size": hd.ring_size, "index_entries": hd.nbuckets * SC_BUCKET,
                "stored": hd.stored, "hits": hd.hits, "misses": hd.misses,
                "evicted": hd.evicted, "expired": hd.expired, "removed": hd.removed,
                "too_big": hd.too_big, "busy": hd.busy, "takeovers": hd.takeovers,
                "bytes_used": hd.head - hd.tail}

    def store(self, bytes session_id, bytes der, int64_t expire):
        """Store raw bytes under an id (the unit tests' way in; workers store DER)."""
        return sc_store(self.hd, <const unsigned char *>session_id, len(session_id),
                        <const unsigned char *>der, len(der), expire, wall_seconds()) == 1

    def lookup(self, bytes session_id):
        cdef unsigned char out[SC_MAX_DER]
        cdef int n = sc_lookup(self.hd, <const unsigned char *>session_id, len(session_id),
                               out, wall_seconds())
        return None if n == 0 else (<char *>out)[:n]

    def remove(self, bytes session_id):
        sc_remove(self.hd, <const unsigned char *>session_id, len(session_id))

    def hold_lock(self, int64_t pid):
        """Tests: mark the lock as held by `pid` (as if that process were inside an
        operation)."""
        edge_store64(&self.hd.lock, pid)


# ---- the callbacks -----------------------------------------------------------------------

cdef int g_sess_conf_index = -1

# the callbacks run inside OpenSSL calls that the worker makes holding the GIL
ctypedef int (*sess_new_cb_t)(SSL *, SSL_SESSION *) noexcept nogil
ctypedef SSL_SESSION *(*sess_get_cb_t)(SSL *, const unsigned char *, int, int *) noexcept nogil
ctypedef void (*sess_remove_cb_t)(SSL_CTX *, SSL_SESSION *) noexcept nogil
ctypedef int (*ticket_cb_t)(SSL *, unsigned char *, unsigned char *, EVP_CIPHER_CTX *,
                            EVP_MAC_CTX *, int) noexcept nogil


cdef void sess_conf_free(void *parent, void *ptr, void *ad, int idx, long argl, void *argp) noexcept nogil:
    if ptr != NULL:
        OPENSSL_cleanse(ptr, sizeof(SessConf))
        free(ptr)


cdef int sess_conf_index() except -2:
    global g_sess_conf_index
    if g_sess_conf_index < 0:
        g_sess_conf_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, <void *>sess_conf_free)
        if g_sess_conf_index < 0:
            raise MemoryError(openssl_error_text("SSL_CTX_get_ex_new_index() failed: "))
    return g_sess_conf_index


cdef SessConf *conf_of(SSL *ssl) noexcept:
    """The resumption settings that govern a connection: those of the context it started
    with, its listen's default server (OpenSSL's session_ctx, which nginx uses too), even
    after SNI moved it to another server's certificates. OpenSSL looks sessions up before
    the SNI callback runs and stores them after, so one set of settings must serve both."""
    cdef void *owner
    cdef Client c
    cdef SSL_CTX *ctx = NULL
    if g_sess_conf_index < 0:
        return NULL
    owner = SSL_get_ex_data(ssl, 0)
    if owner != NULL:
        c = <Client>owner
        if c.binding is not None and c.binding.default is not None and c.binding.default.tls is not None:
            ctx = (<TlsContext>c.binding.default.tls).ctx
    if ctx == NULL:
        ctx = SSL_get_SSL_CTX(ssl)
    return <SessConf *>SSL_CTX_get_ex_data(ctx, g_sess_conf_index)


cdef SessCacheHeader *cache_of(SessConf *sc) noexcept:
    """The conf's shared cache, mapped in this process on first use."""
    cdef MappedFile m
    if sc.cache_state == 1:
        return sc.cache
    if sc.cache_state < 0 or sc.cache_name[0] == 0:
        return NULL
    sc.cache_state = -1
    try:
        name = (<bytes>sc.cache_name).decode()
        path = session_cache_path(name)
        if path is None:
            return NULL
        m = g_cache_maps.get(name)
        if m is None or m.addr == NULL or m.inode != _inode(path):
            # a reload that resized the zone made a new file: map it, and leave the old
            # mapping to the contexts of the previous generation still in use
            m = MappedFile.open(path, sizeof(SessCacheHeader))
            if (<SessCacheHeader *>m.addr).magic != SC_MAGIC:
                return NULL
            g_cache_maps[name] = m
        sc.cache = <SessCacheHeader *>m.addr
        sc.cache_state = 1
        return sc.cache
    except Exception as e:
        try:
            log_tls_error("ssl_session_cache: cannot map the shared session cache: %s" % e)
        except Exception:
            pass
        return NULL


def _inode(str path):
    import os
    return os.stat(path).st_ino


cdef TicketZone *shared_tickets() noexcept:
    global g_tickets, g_tickets_state, g_ticket_map
    cdef MappedFile m
    global g_tickets_failed_at
    if g_tickets_state == 1:
        return g_tickets
    if g_tickets_state < 0 and wall_seconds() <= g_tickets_failed_at:
        return NULL
    g_tickets_state = -1
    g_tickets_failed_at = wall_seconds()
    try:
        path = ticket_keys_path()
        if path is None:
            return NULL
        m = MappedFile.open(path, sizeof(TicketZone))
        if (<TicketZone *>m.addr).magic != TK_MAGIC:
            return NULL
        g_ticket_map = m
        g_tickets = <TicketZone *>m.addr
        g_tickets_state = 1
        return g_tickets
    except Exception as e:
        try:
            log_tls_error("ssl_session_tickets: cannot map the shared ticket keys: %s" % e)
        except Exception:
            pass
        return NULL


cdef void log_tls_error(str text):
    from edge import log
    log.error("alert", text)


cdef int sess_new_cb(SSL *ssl, SSL_SESSION *sess) noexcept:
    """A new session: into the shared cache. Returns 0 (OpenSSL keeps its reference)."""
    cdef SessConf *sc = conf_of(ssl)
    cdef SessCacheHeader *hd
    cdef unsigned char der[SC_MAX_DER]
    cdef unsigned char *p
    cdef const unsigned char *sid
    cdef unsigned int sid_len = 0
    cdef int n
    cdef int64_t expire
    if sc == NULL:
        return 0
    # OpenSSL reports TLS 1.3 sessions resumed by stateless tickets too ("some applications
    # just want to know"); only stateful ones (tickets off) belong in the cache
    if SSL_version(ssl) == TLS1_3_VERSION and (SSL_get_options(ssl) & SSL_OP_NO_TICKET) == 0:
        return 0
    hd = cache_of(sc)
    if hd == NULL:
        return 0
    n = i2d_SSL_SESSION(sess, NULL)
    if n <= 0 or n > SC_MAX_DER:
        if n > SC_MAX_DER:
            edge_fetch_add64(&hd.too_big, 1)
        return 0
    p = der
    i2d_SSL_SESSION(sess, &p)
    sid = SSL_SESSION_get_id(sess, &sid_len)
    expire = SSL_SESSION_get_time(sess) + SSL_SESSION_get_timeout(sess)
    sc_store(hd, sid, <int>sid_len, der, n, expire, wall_seconds())
    OPENSSL_cleanse(der, n)
    return 0


cdef SSL_SESSION *sess_get_cb(SSL *ssl, const unsigned char *sid, int sid_len, int *copy) noexcept:
    """A client offers a session id: the session from the shared cache, or NULL."""
    cdef SessConf *sc = conf_of(ssl)
    cdef SessCacheHeader *hd
    cdef unsigned char der[SC_MAX_DER]
    cdef const unsigned char *p = der
    cdef int n
    cdef SSL_SESSION *sess
    copy[0] = 0
    if sc == NULL:
        return NULL
    hd = cache_of(sc)
    if hd == NULL:
        return NULL
    n = sc_lookup(hd, sid, sid_len, der, wall_seconds())
    if n == 0:
        return NULL
    sess = d2i_SSL_SESSION(NULL, &p, n)
    OPENSSL_cleanse(der, n)
    if sess == NULL:
        ERR_clear_error()
    return sess


cdef void sess_remove_cb(SSL_CTX *ctx, SSL_SESSION *sess) noexcept:
    cdef SessConf *sc
    cdef SessCacheHeader *hd
    cdef const unsigned char *sid
    cdef unsigned int sid_len = 0
    if g_sess_conf_index < 0:
        return
    sc = <SessConf *>SSL_CTX_get_ex_data(ctx, g_sess_conf_index)
    if sc == NULL:
        return
    hd = cache_of(sc)
    if hd == NULL:
        return
    sid = SSL_SESSION_get_id(sess, &sid_len)
    sc_remove(hd, sid, <int>sid_len)


cdef int ticket_cb(SSL *ssl, unsigned char *key_name, unsigned char *iv, EVP_CIPHER_CTX *ectx,
                   EVP_MAC_CTX *hctx, int enc) noexcept:
    """Encrypt a ticket with the current key, or find the key a ticket names and decrypt
    with it: HMAC-SHA256, AES-256-CBC for 80-byte keys and AES-128-CBC for 48-byte keys, as
    nginx. 1: done; 2: decrypted with an older key, send a fresh ticket; 0: no ticket
    (encryption) or a full handshake (decryption: an unknown key, or any failure)."""
    cdef SessConf *sc = conf_of(ssl)
    cdef TicketZone *z
    cdef TicketKey keys[TK_MAX]
    cdef TicketKey *k
    cdef int n, i, r
    cdef const EVP_CIPHER *cipher
    cdef OSSL_PARAM params[2]
    # no key to use: no ticket is issued (0 on encryption), or a full handshake (0 on
    # decryption); a failure never ends the connection
    if sc == NULL:
        return 0
    if sc.nkeys > 0:
        n = sc.nkeys
        memcpy(keys, sc.keys, n * sizeof(TicketKey))
    else:
        z = shared_tickets()
        if z == NULL:
            return 0
        n = tk_snapshot(z, keys)
    if n == 0:
        return 0
    r = 0
    if enc:
        k = &keys[0]
        cipher = EVP_aes_128_cbc() if k.size == 48 else EVP_aes_256_cbc()
        if RAND_bytes(iv, EVP_CIPHER_get_iv_length(cipher)) == 1 \
                and EVP_EncryptInit_ex(ectx, cipher, NULL, k.aes, iv) == 1:
            params[0] = OSSL_PARAM_construct_utf8_string(b"digest", <char *>"SHA256", 0)
            params[1] = OSSL_PARAM_construct_end()
            if EVP_MAC_init(hctx, k.hmac, 16 if k.size == 48 else 32, params) == 1:
                memcpy(key_name, k.name, 16)
                r = 1
    else:
        r = 0
        for i in range(n):
            if memcmp(key_name, keys[i].name, 16) == 0:
                k = &keys[i]
                cipher = EVP_aes_128_cbc() if k.size == 48 else EVP_aes_256_cbc()
                params[0] = OSSL_PARAM_construct_utf8_string(b"digest", <char *>"SHA256", 0)
                params[1] = OSSL_PARAM_construct_end()
                if EVP_MAC_init(hctx, k.hmac, 16 if k.size == 48 else 32, params) == 1 \
                        and EVP_DecryptInit_ex(ectx, cipher, NULL, k.aes, iv) == 1:
                    r = 1 if i == 0 else 2
                break
    OPENSSL_cleanse(keys, n * sizeof(TicketKey))
    if r == 0:
        ERR_clear_error()
    return r


# ---- installing on a server context ------------------------------------------------------

def parse_ticket_key(bytes data):
    """An ssl_session_ticket_key file's bytes as (name, hmac key, aes key): nginx's layout,
    48 bytes (name 16, AES-128 key 16, HMAC key 16) or 80 bytes (name 16, HMAC key 32,
    AES-256 key 32). ValueError for any other size."""
    if len(data) == 48:
        return data[:16], data[32:48], data[16:32]
    if len(data) == 80:
        return data[:16], data[16:48], data[48:80]
    raise ValueError("must be 48 or 80 bytes")


def session_id_context(TlsContext tls):
    """What identifies a server for resumption, as nginx computes it: the digests of its
    certificates and of the CA names it asks client certificates of. A session made with
    one server does not resume on a server with other certificates or client CAs."""
    cdef SSL_CTX *ctx = tls.ctx
    cdef unsigned char md[64]
    cdef unsigned int mdlen = 0
    cdef X509 *cert
    cdef void *names
    cdef int i
    cdef X509 *current = SSL_CTX_get0_certificate(ctx)
    parts = [b"edge"]
    if SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_FIRST) == 1:
        while True:
            cert = SSL_CTX_get0_certificate(ctx)
            if cert != NULL and X509_digest(cert, EVP_sha256(), md, &mdlen) == 1:
                parts.append((<char *>md)[:mdlen])
            if SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_NEXT) != 1:
                break
        # leave the context's current certificate where it was
        if SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_FIRST) == 1:
            while SSL_CTX_get0_certificate(ctx) != current:
                if SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_NEXT) != 1:
                    break
    ERR_clear_error()
    names = SSL_CTX_get_client_CA_list(ctx)
    if names != NULL:
        for i in range(OPENSSL_sk_num(names)):
            if X509_NAME_digest(<X509_NAME *>OPENSSL_sk_value(names, i), EVP_sha256(), md, &mdlen) == 1:
                parts.append((<char *>md)[:mdlen])
    parts.append(str(SSL_CTX_get_verify_mode(ctx)).encode())
    import hashlib
    return hashlib.sha256(b"\0".join(parts)).digest()


def install_session_resumption(TlsContext tls, str cache, long builtin_size, str shared_name,
                               long timeout, bint tickets, list ticket_keys):
    """nginx's resumption settings on a server context.

    cache: "off" (no session reuse at all), "none" (the server says sessions may be reused
    but keeps none, nginx's default) or "cache"; builtin_size: -1 no builtin cache, 0
    OpenSSL's default size, else that many sessions; shared_name: the shared cache zone, or
    None; timeout: ssl_session_timeout in seconds; tickets: ssl_session_tickets;
    ticket_keys: the ssl_session_ticket_key files' bytes (empty: the shared rotated keys)."""
    cdef SSL_CTX *ctx = tls.ctx
    cdef SessConf *sc
    cdef long mode
    cdef int idx = sess_conf_index()
    cdef bytes name_b
    cdef bytes sid
    cdef int i
    if len(ticket_keys) > TK_MAX:
        raise ValueError("at most %d ssl_session_ticket_key files" % TK_MAX)
    if shared_name is not None and len(shared_name.encode()) >= 64:
        raise ValueError('session cache name "%s" is too long' % shared_name)
    SSL_CTX_set_timeout(ctx, timeout)
    sid = session_id_context(tls)
    SSL_CTX_set_session_id_context(ctx, <const unsigned char *>sid, len(sid))
    sc = <SessConf *>SSL_CTX_get_ex_data(ctx, idx)
    if sc == NULL:
        sc = <SessConf *>malloc(sizeof(SessConf))
        if sc == NULL:
            raise MemoryError()
        if SSL_CTX_set_ex_data(ctx, idx, sc) != 1:
            free(sc)
            raise MemoryError(openssl_error_text("SSL_CTX_set_ex_data() failed: "))
    memset(sc, 0, sizeof(SessConf))
    if cache == "off":
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)
    elif cache == "none":
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR
                                       | SSL_SESS_CACHE_NO_INTERNAL_STORE)
        SSL_CTX_sess_set_cache_size(ctx, 1)
    else:
        mode = SSL_SESS_CACHE_SERVER
        if shared_name is not None and builtin_size < 0:
            mode |= SSL_SESS_CACHE_NO_INTERNAL
        SSL_CTX_set_session_cache_mode(ctx, mode)
        if builtin_size > 0:
            SSL_CTX_sess_set_cache_size(ctx, builtin_size)
        if shared_name is not None:
            name_b = shared_name.encode()
            memcpy(sc.cache_name, <const char *>name_b, len(name_b))
            sc.cache_name[len(name_b)] = 0
            SSL_CTX_sess_set_new_cb(ctx, <sess_new_cb_t>sess_new_cb)
            SSL_CTX_sess_set_get_cb(ctx, <sess_get_cb_t>sess_get_cb)
            SSL_CTX_sess_set_remove_cb(ctx, <sess_remove_cb_t>sess_remove_cb)
    # The ticket callback goes on every server context, tickets on or off: when this
    # server is a listen's default, its callback and keys serve the tickets of the other
    # servers of the listen too (OpenSSL's session_ctx), and those may have them on.
    if tickets:
        SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET)
    else:
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET)
    for i, data in enumerate(ticket_keys):
        name, hmac_key, aes_key = parse_ticket_key(data)
        memcpy(sc.keys[i].name, <const char *>name, 16)
        memcpy(sc.keys[i].hmac, <const char *>hmac_key, len(hmac_key))
        memcpy(sc.keys[i].aes, <const char *>aes_key, len(aes_key))
        sc.keys[i].size = len(data)
    sc.nkeys = len(ticket_keys)     # none: the shared, rotated keys
    if SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, <ticket_cb_t>ticket_cb) != 1:
        raise ValueError(openssl_error_text("SSL_CTX_set_tlsext_ticket_key_evp_cb() failed: "))

