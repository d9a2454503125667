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
