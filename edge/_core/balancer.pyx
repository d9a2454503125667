# The load balancing methods besides round robin (upstream.pyx): least_conn, hash (plain
# and consistent), random (one, or two and the less loaded), and ewma. Each one asks
# Upstream.peer_available() about every peer it considers, skips the peers already tried
# for this request, and uses the backups only when no primary is left (hash and random
# refuse `backup` in the config, as nginx does; see modules/upstream.py).
#
# The hashes are nginx's, so a group keeps nginx's key -> server mapping:
# - hash KEY: crc32 of the key, then of "N" + key for the N-th rehash when the chosen
#   server is out, summed, modulo the primaries' total weight (Cache::Memcached's scheme);
# - hash KEY consistent: a ketama ring of 160 points per weight unit per server, each the
#   crc32 of "host\0port" + the previous point; a key goes to the first point at or
#   after crc32(key), and to the next points while that server is out.
# Both give up after 20 steps and fall back to round robin, as nginx does.
#
# ewma: peak-EWMA of each peer's latency (time to the response head), per worker, in the
# manner of APISIX's `ewma` balancer (itself after Finagle's PeakEwma): a sample above the
# average replaces it at once, a lower one pulls it down with a weight that grows with the
# time since the last sample (decay constant EWMA_DECAY_US). A peer's score is its average
# decayed toward zero by the time since it was last measured, times (tries in progress +
# 1), divided by its weight; two peers are drawn at random and the lower score wins.

from libc.math cimport exp

DEF HASH_MAX_STEPS = 20
DEF CHASH_POINTS_PER_WEIGHT = 160
DEF EWMA_DECAY_US = 10000000.0      # 10 s, as APISIX's DECAY_TIME
DEF EWMA_PENALTY_US = 1e12          # the score of a busy peer not measured yet

cdef uint32_t g_crc32_table[256]


cdef void crc32_table_init() noexcept:
    cdef uint32_t c
    cdef int n, k
    for n in range(256):
        c = <uint32_t>n
        for k in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if (c & 1) else (c >> 1)
        g_crc32_table[n] = c


crc32_table_init()


cdef inline uint32_t crc32_update(uint32_t crc, const char *p, size_t n) noexcept nogil:
    """CRC-32 (IEEE, zlib's), from a running value started at 0xffffffff; the final
    value is the running one xor 0xffffffff."""
    cdef size_t i
    for i in range(n):
        crc = g_crc32_table[(crc ^ <uint8_t>p[i]) & 0xff] ^ (crc >> 8)
    return crc


def crc32(bytes data):
    """CRC-32 of data (for tests: it must equal zlib.crc32)."""
    return crc32_update(0xffffffff, data, len(data)) ^ 0xffffffff


# ---- config time ------------------------------------------------------------------------

cdef void build_ring(Upstream u) except *:
    """The ketama ring of `hash ... consistent`: 160 points per weight unit of every
    primary `server` line, sorted, duplicates dropped (nginx's construction)."""
    cdef list points = []
    cdef uint32_t base, h, prev
    cdef int i, j, sid, weight
    cdef bytes host, port, prev_b
    seen = set()
    for i in range(u.npeers):
        sid = u.peers[i].server
        if sid in seen or u.peers[i].backup:
            continue
        seen.add(sid)
        weight = u.peers[i].weight
        host, port = _split_server(u.server_texts[sid])
        base = crc32_update(0xffffffff, host, len(host))
        base = crc32_update(base, b"\0", 1)
        base = crc32_update(base, port, len(port))
        prev = 0
        for j in range(weight * CHASH_POINTS_PER_WEIGHT):
            prev_b = prev.to_bytes(4, "little")
            h = crc32_update(base, prev_b, 4) ^ 0xffffffff
            points.append((h, sid))
            prev = h
    points.sort()
    kept = []
    for h, sid in points:
        if kept and kept[len(kept) - 1][0] == h:
            continue
        kept.append((h, sid))
    if u.ring_hash != NULL:
        free(u.ring_hash)
    if u.ring_server != NULL:
        free(u.ring_server)
    u.ring_hash = <uint32_t *>malloc(sizeof(uint32_t) * (len(kept) or 1))
    u.ring_server = <int *>malloc(sizeof(int) * (len(kept) or 1))
    if u.ring_hash == NULL or u.ring_server == NULL:
        raise MemoryError()
    for i, (h, sid) in enumerate(kept):
        u.ring_hash[i] = h
        u.ring_server[i] = sid
    u.nring = len(kept)


def _split_server(str text):
    """nginx's split of a `server` address for the ring: the digits after the last ":"
    are the port (absent: an empty port), the rest the host, both as written."""
    cdef int j = len(text) - 1
    while j >= 0 and text[j].isdigit():
        j -= 1
    if j >= 0 and text[j] == ":" and j < len(text) - 1:
        return text[:j].encode("latin-1"), text[j + 1:].encode("latin-1")
    if j >= 0 and text[j] == ":":
        return text[:j].encode("latin-1"), b""
    return text.encode("latin-1"), b""


# ---- per request -------------------------------------------------------------------------

cdef inline bint untried(uint64_t tried, int i) noexcept:
    return i >= 64 or not (tried >> i) & 1


cdef inline uint64_t random_below(uint64_t n) noexcept:
    return rng_next() % n if n else 0


cdef int pick_balanced(Upstream u, Client c, int64_t now, uint64_t tried) noexcept:
    """Upstream.pick for every method but round robin; -1 when no peer is available."""
    cdef int m = u.method
    cdef int best
    if m == LB_LEAST_CONN:
        best = pick_least_conn(u, now, tried, False)
        if best < 0 and u.has_backup:
            best = pick_least_conn(u, now, tried, True)
        return best
    if m == LB_EWMA:
        best = pick_ewma(u, now, tried, False)
        if best < 0 and u.has_backup:
            best = pick_ewma(u, now, tried, True)
        return best
    if m == LB_HASH or m == LB_CHASH:
        best = pick_hash(u, c, now, tried)
    elif m == LB_IP_HASH:
        best = pick_ip_hash(u, c, now, tried)
    else:
        best = pick_random(u, now, tried, m == LB_RANDOM_TWO)
    if best == -2:
        # nginx's fallback after 20 steps (or an empty key, or a lone peer): round robin
        best = u.pick_round_robin(now, tried, False)
        if best < 0 and u.has_backup:
            best = u.pick_round_robin(now, tried, True)
    return best


cdef int pick_least_conn(Upstream u, int64_t now, uint64_t tried, bint backup) noexcept:
    """The available peer with the fewest tries in progress relative to its weight;
    ties go by smooth weighted round robin among the tied (nginx's least_conn)."""
    cdef int i, first
    cdef int best = -1
    cdef bint many = False
    cdef int total = 0
    cdef Peer *p
    cdef Peer *b
    for i in range(u.npeers):
        p = &u.peers[i]
        if p.backup != backup or not untried(tried, i) or not u.peer_available(i, now):
            continue
        if best < 0:
            best = i
            many = False
            continue
        b = &u.peers[best]
        if <int64_t>p.conns * b.weight < <int64_t>b.conns * p.weight:
            best = i
            many = False
        elif <int64_t>p.conns * b.weight == <int64_t>b.conns * p.weight:
            many = True
    if best < 0 or not many:
        return best
    first = best
    for i in range(first, u.npeers):
        p = &u.peers[i]
        if p.backup != backup or not untried(tried, i) or not u.peer_available(i, now):
            continue
        if <int64_t>p.conns * u.peers[first].weight != <int64_t>u.peers[first].conns * p.weight:
            continue
        p.current_weight += p.weight
        total += p.weight
        if i == first or p.current_weight > u.peers[best].current_weight:
            best = i
    u.peers[best].current_weight -= total
    return best


cdef int peer_by_weight(Upstream u, uint64_t x) noexcept:
    """The primary whose share of the primaries' total weight holds x (x < total)."""
    cdef int i
    cdef int last = -1
    for i in range(u.npeers):
        if u.peers[i].backup:
            continue
        last = i
        if x < <uint64_t>u.peers[i].weight:
            return i
        x -= <uint64_t>u.peers[i].weight
    return last


cdef int pick_hash(Upstream u, Client c, int64_t now, uint64_t tried) noexcept:
    """hash KEY [consistent]: the key's server; -2 to fall back to round robin."""
    cdef Buf *key = &u.key_buf
    cdef uint32_t h, acc
    cdef int step, i, best, lo, hi, mid
    cdef char num[24]
    cdef int numlen
    buf_reset(key)
    if c is not None and u.hash_key is not None:
        eval_template(u.hash_key, c, key)
    if buf_len(key) == 0 or u.primary_weight == 0:
        return -2
    if u.method == LB_HASH:
        if u.nprimary < 2:
            return -2
        acc = 0
        for step in range(HASH_MAX_STEPS + 1):
            h = 0xffffffff
            if step > 0:
                numlen = snprintf(num, 24, "%d", step)
                h = crc32_update(h, num, <size_t>numlen)
            h = crc32_update(h, key.data + key.start, buf_len(key)) ^ 0xffffffff
            acc += (h >> 16) & 0x7fff
            i = peer_by_weight(u, acc % <uint32_t>u.primary_weight)
            if i >= 0 and untried(tried, i) and u.peer_available(i, now):
                return i
        return -2
    # consistent: the first point at or after the key's hash, then the next ones
    if u.nring == 0 or u.nprimary < 2:
        return -2
    h = crc32_update(0xffffffff, key.data + key.start, buf_len(key)) ^ 0xffffffff
    lo = 0
    hi = u.nring
    while lo < hi:
        mid = (lo + hi) // 2
        if u.ring_hash[mid] < h:
            lo = mid + 1
        else:
            hi = mid
    for step in range(HASH_MAX_STEPS + 1):
        # the server's peers (one per address of its name): smooth WRR among them (a
        # hash group has no backups)
        best = u.pick_round_robin(now, tried, False, u.ring_server[(lo + step) % u.nring])
        if best >= 0:
            return best
    return -2


cdef int pick_ip_hash(Upstream u, Client c, int64_t now, uint64_t tried) noexcept:
    """ip_hash: nginx's hash of the client address ($remote_addr's: the TCP peer, or
    what realip put there): the first three octets of an IPv4 address, all sixteen of
    an IPv6 one, hash = (hash * 113 + octet) % 6271 from 89, the peer whose share of the
    primaries' weight holds hash % total; an unavailable or tried peer hashes on from
    there, up to 20 times, then round robin (-2). A retry starts the chain again and
    skips the peers tried, so it reaches the peer nginx's stored hash goes on to."""
    cdef const unsigned char *addr
    cdef unsigned char pseudo[3]
    cdef int family, n, k, step, i
    cdef uint32_t h = 89
    if c is None or u.nprimary < 2 or u.primary_weight == 0:
        return -2
    addr = c.remote_address(&family)
    if family == AF_INET:
        n = 3
    elif family == AF_INET6:
        n = 16
    else:                       # a unix socket: nginx hashes three zero octets
        pseudo[0] = pseudo[1] = pseudo[2] = 0
        addr = pseudo
        n = 3
    for step in range(HASH_MAX_STEPS + 1):
        for k in range(n):
            h = (h * 113 + addr[k]) % 6271
        i = peer_by_weight(u, h % <uint32_t>u.primary_weight)
        if i >= 0 and untried(tried, i) and u.peer_available(i, now):
            return i
    return -2


cdef int pick_random(Upstream u, int64_t now, uint64_t tried, bint two) noexcept:
    """random: a primary drawn by weight; with `two`, two distinct ones drawn by weight
    and the one with fewer tries in progress relative to its weight (nginx's random
    two least_conn). -2 to fall back to round robin after 20 draws."""
    cdef int draws, i
    cdef int first = -1
    if u.primary_weight == 0 or u.nprimary < 2:
        return -2
    for draws in range(HASH_MAX_STEPS + 1):
        i = peer_by_weight(u, random_below(<uint64_t>u.primary_weight))
        if i < 0 or i == first or not untried(tried, i) or not u.peer_available(i, now):
            continue
        if not two:
            return i
        if first < 0:
            first = i
            continue
        if <int64_t>u.peers[i].conns * u.peers[first].weight > \
                <int64_t>u.peers[first].conns * u.peers[i].weight:
            return first
        return i
    return -2


cdef inline double ewma_score(Peer *p, int64_t now_us) noexcept:
    """Lower is better: the latency average, faded toward 0 by the time since it was
    measured (so a peer that was slow a while ago gets tried again), times the tries in
    progress + 1, divided by the weight."""
    cdef double avg = p.ewma_us
    cdef int64_t td = now_us - p.ewma_stamp_us
    if avg == 0 and p.conns > 0:
        # never measured but busy: its first answer is slow in coming (Finagle's penalty)
        return EWMA_PENALTY_US * p.conns / p.weight
    if td > 0 and avg > 0:
        avg *= exp(-<double>td / EWMA_DECAY_US)
    return avg * (p.conns + 1) / p.weight


cdef int pick_ewma(Upstream u, int64_t now, uint64_t tried, bint backup) noexcept:
    """Power of two choices on the ewma score among the available untried peers."""
    cdef int i, n = 0
    cdef int a, b, ia = -1, ib = -1
    for i in range(u.npeers):
        if u.peers[i].backup == backup and untried(tried, i) and u.peer_available(i, now):
            n += 1
    if n == 0:
        return -1
    a = <int>random_below(<uint64_t>n)
    b = <int>random_below(<uint64_t>(n - 1)) if n > 1 else a
    if n > 1 and b >= a:
        b += 1
    n = 0
    for i in range(u.npeers):
        if u.peers[i].backup == backup and untried(tried, i) and u.peer_available(i, now):
            if n == a:
                ia = i
            if n == b:
                ib = i
            n += 1
    if ia == ib or ewma_score(&u.peers[ia], g_now_us) <= ewma_score(&u.peers[ib], g_now_us):
        return ia
    return ib


cdef void ewma_observe(Upstream u, int i, int64_t latency_us, bint peak_only) noexcept:
    """One try of peer i took latency_us to its response head; with peak_only, the try
    had no response head (it failed or was abandoned): it may raise the average only."""
    cdef Peer *p = &u.peers[i]
    cdef double rtt = <double>latency_us if latency_us > 0 else 0.0
    cdef int64_t td = g_now_us - p.ewma_stamp_us
    cdef double w
    if p.ewma_stamp_us == 0 or rtt > p.ewma_us:
        p.ewma_us = rtt             # the peak: a slower sample counts at once
    elif peak_only:
        return
    else:
        w = exp(-<double>(td if td > 0 else 0) / EWMA_DECAY_US)
        p.ewma_us = p.ewma_us * w + rtt * (1.0 - w)
    p.ewma_stamp_us = g_now_us
