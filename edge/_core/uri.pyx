# Request-target handling: split the path from the query, percent-decode, merge slashes,
# resolve "." and ".." (nginx's $uri), and re-escape a path for the upstream.
# Routing always sees the normalized path, so "/%61dmin/../admin" cannot dodge a location.

cdef inline int hexval(char c) noexcept nogil:
    if c >= 48 and c <= 57:
        return c - 48
    if c >= 97 and c <= 102:
        return c - 87
    if c >= 65 and c <= 70:
        return c - 55
    return -1


cdef int normalize_path(const char *p, size_t n, Buf *out) noexcept nogil:
    """Write the normalized form of path p[0:n] (which starts with '/') into out, NUL
    terminated (POSIX regexec needs it). Returns its length, or -1 for a path that must be
    refused: a bad %XX escape, an encoded NUL, or ".." above the root."""
    cdef size_t i = 0
    cdef size_t m = 0
    cdef size_t j = 0
    cdef char *d
    cdef int hi, lo
    buf_reset(out)
    if buf_reserve(out, n + 2) < 0:
        return -1
    d = out.data
    # pass 1: percent-decoding
    while i < n:
        if p[i] == 37:  # '%'
            if i + 2 >= n:
                return -1
            hi = hexval(p[i + 1])
            lo = hexval(p[i + 2])
            if hi < 0 or lo < 0 or (hi == 0 and lo == 0):
                return -1
            d[m] = <char>(hi * 16 + lo)
            i += 3
        else:
            d[m] = p[i]
            i += 1
        m += 1
    # pass 2, in place: merge slashes, drop "/." and resolve "/.."
    i = 0
    while i < m:
        if d[i] != 47:  # not '/'
            d[j] = d[i]
            j += 1
            i += 1
            continue
        if j > 0 and d[j - 1] == 47:
            i += 1
            continue
        if i + 1 < m and d[i + 1] == 46:  # '.'
            if i + 2 == m or d[i + 2] == 47:
                i += 2
                if i == m:
                    d[j] = 47
                    j += 1
                continue
            if d[i + 2] == 46 and (i + 3 == m or d[i + 3] == 47):
                if j <= 1:
                    return -1
                j -= 1
                while j > 0 and d[j] != 47:
                    j -= 1
                i += 3
                if i == m:
                    d[j] = 47
                    j += 1
                continue
        d[j] = 47
        j += 1
        i += 1
    if j == 0:
        d[0] = 47
        j = 1
    d[j] = 0
    out.end = j
    return <int>j


cdef int append_escaped_path(Buf *out, const char *p, size_t n) noexcept nogil:
    """Escape what may not stand raw in a request-target path (RFC 3986 pchar + '/')."""
    cdef size_t i
    cdef unsigned char ch
    cdef char esc[3]
    cdef const char *digits = "0123456789ABCDEF"
    if buf_reserve(out, n * 3) < 0:
        return -1
    for i in range(n):
        ch = <unsigned char>p[i]
        if ch <= 0x20 or ch >= 0x7f or ch == 37 or ch == 63 or ch == 35 or ch == 34:
            esc[0] = 37
            esc[1] = digits[ch >> 4]
            esc[2] = digits[ch & 15]
            buf_append(out, esc, 3)
        else:
            out.data[out.end] = <char>ch
            out.end += 1
    return 0


def normalize(bytes path):
    """Python entry for tests: the normalized path, or None when it is refused."""
    cdef Buf b
    buf_init(&b, 64)
    try:
        r = normalize_path(path, len(path), &b)
        if r < 0:
            return None
        return b.data[:r]
    finally:
        buf_free(&b)
