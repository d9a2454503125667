# Growable byte buffers owned by connections. A Buf is a plain C struct so the hot path
# never touches a Python object to read or write bytes.
#
# Layout: data[start:end] is the unread (or unsent) part. Compaction moves it to 0 and is
# only done by buf_reserve, which callers use only when no pointer into the buffer is live
# (the reactor never reads into a buffer whose bytes are still queued for writing).

cdef struct Buf:
    char *data
    size_t cap
    size_t start
    size_t end


cdef inline size_t buf_len(Buf *b) noexcept nogil:
    return b.end - b.start


cdef inline void buf_reset(Buf *b) noexcept nogil:
    b.start = 0
    b.end = 0


# ---- the per-worker buffer pool ------------------------------------------------------------
# A connection holds buffers only while bytes are in flight: it takes them here when data
# arrives and gives them back when it goes idle, so an idle keep-alive connection holds
# none (nginx frees an idle connection's buffers the same way). Buffers come in power-of-two
# classes from 1 KiB to 64 KiB; a free buffer of a class is kept on that class's list (the
# link lives in the buffer's own first bytes), up to a bound, and `pool_shrink` (once a
# second) frees what a class did not need during the last second, so the pool follows the
# load down after a burst. Larger buffers (a big body held in memory) go back to malloc.

DEF POOL_MIN_SHIFT = 10                 # 1 KiB
DEF POOL_CLASSES = 7                    # 1, 2, 4, 8, 16, 32, 64 KiB
DEF POOL_CLASS_BYTES = 8 * 1024 * 1024  # the most one class keeps free

cdef struct PoolClass:
    void *head              # free buffers, linked through their first bytes
    size_t nfree
    size_t low              # the fewest free since the last shrink: never needed
    size_t limit            # the most kept free

cdef PoolClass g_pool[POOL_CLASSES]
cdef size_t g_pool_trimmed = 0          # bytes freed since the last malloc_trim


cdef inline int pool_class(size_t cap) noexcept nogil:
    """The class of a capacity, or -1 when the pool does not keep that size."""
    cdef int k = 0
    cdef size_t size = 1 << POOL_MIN_SHIFT
    while k < POOL_CLASSES:
        if cap == size:
            return k
        size <<= 1
        k += 1
    return -1


cdef inline size_t pool_size_for(size_t need) noexcept nogil:
    """The capacity to allocate for `need` bytes: a class size, or `need` above them."""
    cdef size_t size = 1 << POOL_MIN_SHIFT
    cdef int k = 0
    while size < need and k < POOL_CLASSES - 1:
        size <<= 1
        k += 1
    return size if size >= need else need


cdef inline char *pool_take(size_t cap) noexcept nogil:
    cdef int k = pool_class(cap)
    cdef PoolClass *pc
    cdef void *p
    if k >= 0:
        pc = &g_pool[k]
        if pc.head != NULL:
            p = pc.head
            pc.head = (<void **>p)[0]
            pc.nfree -= 1
            if pc.nfree < pc.low:
                pc.low = pc.nfree
            return <char *>p
    return <char *>malloc(cap)


cdef inline void pool_give(char *data, size_t cap) noexcept nogil:
    cdef int k = pool_class(cap)
    cdef PoolClass *pc
    if k >= 0:
        pc = &g_pool[k]
        if pc.limit == 0:
            pc.limit = POOL_CLASS_BYTES >> (POOL_MIN_SHIFT + k)
        if pc.nfree < pc.limit:
            (<void **>data)[0] = pc.head
            pc.head = data
            pc.nfree += 1
            return
    free(data)


cdef size_t pool_shrink() noexcept nogil:
    """Free what each class kept without needing it since the last call: three quarters of
    its low mark, so a steady load keeps its buffers and a burst's leftovers go within
    seconds (4,096 spare buffers are down to one in six sweeps).
    Returns the bytes freed (pool_trim_if_due gives them back to the system)."""
    cdef int k
    cdef size_t n, size, freed = 0
    cdef PoolClass *pc
    cdef void *p
    for k in range(POOL_CLASSES):
        pc = &g_pool[k]
        size = (<size_t>1) << (POOL_MIN_SHIFT + k)
        n = pc.low - pc.low // 4
        while n > 0 and pc.head != NULL:
            p = pc.head
            pc.head = (<void **>p)[0]
            pc.nfree -= 1
            free(p)
            freed += size
            n -= 1
        pc.low = pc.nfree
    return freed


cdef void pool_trim_if_due(size_t freed_now) noexcept nogil:
    """Once a second, with the bytes that sweep freed: give freed heap pages back to the
    system (malloc_trim), because freed memory in the middle of the heap stays in RSS
    otherwise. At once when a megabyte has been freed, and on the first sweep that frees
    nothing after some were freed, so the tail of a burst goes too and a steady load,
    which frees nothing, never pays for a trim."""
    global g_pool_trimmed
    g_pool_trimmed += freed_now
    if g_pool_trimmed >= 1024 * 1024 or (freed_now == 0 and g_pool_trimmed > 0):
        g_pool_trimmed = 0
        malloc_trim(0)


cdef size_t pool_free_bytes() noexcept nogil:
    cdef size_t total = 0
    cdef int k
    for k in range(POOL_CLASSES):
        total += g_pool[k].nfree << (POOL_MIN_SHIFT + k)
    return total


def pool_stats():
    """For tests and the docs: (class size, free buffers) of each class."""
    return [((1 << (POOL_MIN_SHIFT + k)), g_pool[k].nfree) for k in range(POOL_CLASSES)]


cdef int buf_init(Buf *b, size_t cap) except -1:
    cap = pool_size_for(cap)
    b.data = pool_take(cap)
    if b.data == NULL:
        raise MemoryError()
    b.cap = cap
    b.start = 0
    b.end = 0
    return 0


cdef void buf_free(Buf *b) noexcept nogil:
    """Give the buffer's storage back (to the pool when it is a class size)."""
    if b.data != NULL:
        pool_give(b.data, b.cap)
    b.data = NULL
    b.cap = 0
    b.start = 0
    b.end = 0


cdef int buf_reserve(Buf *b, size_t need) noexcept nogil:
    """Make room for `need` more bytes at the end. Returns 0, or -1 when out of memory.
    A buffer without storage takes it from the pool here."""
    cdef size_t used
    cdef size_t newcap
    cdef char *p
    if b.cap - b.end >= need:
        return 0
    used = b.end - b.start
    if b.start > 0:
        if used:
            memmove(b.data, b.data + b.start, used)
        b.start = 0
        b.end = used
        if b.cap - b.end >= need:
            return 0
    newcap = pool_size_for(used + need)
    if newcap < b.cap * 2:
        newcap = b.cap * 2          # at least double, so a growing body is not copied often
    p = pool_take(newcap)
    if p == NULL:
        return -1
    if used:
        memcpy(p, b.data, used)
    if b.data != NULL:
        pool_give(b.data, b.cap)
    b.data = p
    b.cap = newcap
    return 0


cdef inline int buf_append(Buf *b, const char *p, size_t n) noexcept nogil:
    if b.cap - b.end < n:
        if buf_reserve(b, n) < 0:
            return -1
    memcpy(b.data + b.end, p, n)
    b.end += n
    return 0


cdef int buf_append_uint(Buf *b, uint64_t v) noexcept nogil:
    cdef char tmp[24]
    cdef int i = 24
    if v == 0:
        return buf_append(b, "0", 1)
    while v:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
    return buf_append(b, tmp + i, 24 - i)


cdef int buf_append_hex(Buf *b, uint64_t v) noexcept nogil:
    cdef char tmp[24]
    cdef int i = 24
    cdef const char *digits = "0123456789abcdef"
    if v == 0:
        return buf_append(b, "0", 1)
    while v:
        i -= 1
        tmp[i] = digits[v & 15]
        v >>= 4
    return buf_append(b, tmp + i, 24 - i)


cdef inline int buf_append_bytes(Buf *b, bytes s) except -1:
    return buf_append(b, <const char *>s, len(s))


cdef inline int buf_append_str(Buf *b, const char *s) noexcept nogil:
    """Append a NUL-terminated constant; strlen of a literal folds to a constant."""
    return buf_append(b, s, strlen(s))


cdef int write_queued(int fd, Buf *wb, const char **win, size_t *win_len,
                      const char **suf, size_t *suf_len, bint *wrote, bint more=False) noexcept:
    """Send a connection's queued output with writev: the bytes in wb, then the window
    (bytes in someone else's buffer), then a constant suffix. Returns 1 when all is sent,
    0 when the socket is full (EAGAIN), -1 on error. *wrote is set when bytes went out.

    `more`: the caller closes the socket as soon as all is sent. The bytes go with
    sendmsg(MSG_MORE), which lets TCP hold the last, partial segment; close() then sends
    it with the FIN in one packet, where writev would send the data and the FIN apart. A
    `Connection: close` answer that fits in a segment is then one packet, and the client
    acknowledges it with one ACK. close() flushes what is held, so nothing waits on a
    timer."""
    cdef iovec iov[3]
    cdef msghdr msg
    cdef int n
    cdef ssize_t r
    cdef size_t w
    while True:
        n = 0
        if wb.end > wb.start:
            iov[n].iov_base = wb.data + wb.start
            iov[n].iov_len = wb.end - wb.start
            n += 1
        if win_len[0]:
            iov[n].iov_base = <void *>win[0]
            iov[n].iov_len = win_len[0]
            n += 1
        if suf_len[0]:
            iov[n].iov_base = <void *>suf[0]
            iov[n].iov_len = suf_len[0]
            n += 1
        if n == 0:
            buf_reset(wb)
            return 1
        if more:
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = n
            r = sendmsg(fd, &msg, MSG_MORE)
        else:
            r = writev(fd, iov, n)
        if r < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return 0
            return -1
        wrote[0] = True
        w = <size_t>r
        if w >= wb.end - wb.start:
            w -= wb.end - wb.start
            buf_reset(wb)
        else:
            wb.start += w
            continue
        if w >= win_len[0]:
            w -= win_len[0]
            win_len[0] = 0
        else:
            win[0] += w
            win_len[0] -= w
            continue
        if w >= suf_len[0]:
            suf_len[0] = 0
        else:
            suf[0] += w
            suf_len[0] -= w


cdef enum ReadResult:
    RD_DATA = 1
    RD_AGAIN = 0
    RD_EOF = -1
    RD_ERROR = -2
    RD_FULL = -3


cdef int read_room(Buf *b, size_t limit, size_t chunk, size_t *room) noexcept:
    """Make room in b for one read that leaves it holding at most `limit` bytes, at most
    `chunk` at once: RD_DATA with *room set, RD_FULL when b already holds `limit`, or
    RD_ERROR when memory runs out."""
    if buf_len(b) == 0:
        buf_reset(b)
    if buf_len(b) >= limit:
        return RD_FULL
    room[0] = limit - buf_len(b)
    if room[0] > chunk:
        room[0] = chunk
    if b.cap - b.end < room[0] and buf_reserve(b, room[0]) < 0:
        return RD_ERROR
    return RD_DATA


cdef int read_into(int fd, Buf *b, size_t limit, size_t chunk, bint *readable,
                   bint peer_closed) noexcept:
    """One recv() into b, which may then hold at most `limit` bytes, reading at most
    `chunk` bytes at once. RD_* (RD_FULL when b already holds `limit`).
    A short read means the socket was drained: more data raises a new edge-triggered
    event, so *readable is cleared and the read that would say EAGAIN is skipped (as nginx
    does); that also serves one request per connection per wake-up, so busy connections
    do not starve the others. Not after RDHUP: a pending end of stream raises no event.
    recv() rather than read(): on a socket, read() first goes through the VFS layer
    (file checks, fsnotify) before reaching the same socket code; nginx calls recv() too."""
    cdef ssize_t r
    cdef size_t room
    cdef int full = read_room(b, limit, chunk, &room)
    if full != RD_DATA:
        return full
    while True:
        r = recv(fd, b.data + b.end, room, 0)
        if r > 0:
            b.end += r
            if <size_t>r < room and not peer_closed:
                readable[0] = False
            return RD_DATA
        if r == 0:
            readable[0] = False
            return RD_EOF
        if errno == EINTR:
            continue
        if errno == EAGAIN:
            readable[0] = False
            return RD_AGAIN
        return RD_ERROR
