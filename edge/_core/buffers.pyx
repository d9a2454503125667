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


cdef int buf_init(Buf *b, size_t cap) except -1:
    b.data = <char *>malloc(cap)
    if b.data == NULL:
        raise MemoryError()
    b.cap = cap
    b.start = 0
    b.end = 0
    return 0


cdef void buf_free(Buf *b) noexcept nogil:
    if b.data != NULL:
        free(b.data)
    b.data = NULL
    b.cap = 0
    b.start = 0
    b.end = 0


cdef int buf_reserve(Buf *b, size_t need) noexcept nogil:
    """Make room for `need` more bytes at the end. Returns 0, or -1 when out of memory."""
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
    newcap = b.cap * 2 if b.cap else 4096
    while newcap - used < need:
        newcap *= 2
    p = <char *>realloc(b.data, newcap)
    if p == NULL:
        return -1
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
                      const char **suf, size_t *suf_len, bint *wrote) noexcept:
    """Send a connection's queued output with writev: the bytes in wb, then the window
    (bytes in someone else's buffer), then a constant suffix. Returns 1 when all is sent,
    0 when the socket is full (EAGAIN), -1 on error. *wrote is set when bytes went out."""
    cdef iovec iov[3]
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
    """One read() into b, which may then hold at most `limit` bytes, reading at most
    `chunk` bytes at once. RD_* (RD_FULL when b already holds `limit`).
    A short read means the socket was drained: more data raises a new edge-triggered
    event, so *readable is cleared and the read that would say EAGAIN is skipped (as nginx
    does); that also serves one request per connection per wake-up, so busy connections
    do not starve the others. Not after RDHUP: a pending end of stream raises no event."""
    cdef ssize_t r
    cdef size_t room
    cdef int full = read_room(b, limit, chunk, &room)
    if full != RD_DATA:
        return full
    while True:
        r = read(fd, b.data + b.end, room)
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
