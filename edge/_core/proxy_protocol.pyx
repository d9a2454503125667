# The PROXY protocol (HAProxy's spec, versions 1 and 2), as an L4 load balancer in front
# of edge sends it: the first bytes of a connection name the original client.
#
# v1: "PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\r\n", at most 107 bytes.
# v2: a 12-byte signature, version/command, family/transport, a 16-bit length, then the
#     addresses and optional TLVs (skipped). The LOCAL command (health checks from the
#     balancer itself) carries no client: the connection's own address stays.

DEF PP_V1_MAX = 107
DEF PP_V2_HEADER = 16

cdef const char *PP_V2_SIGNATURE = "\r\n\r\n\x00\r\nQUIT\n"

cdef enum PPResult:
    PP_INCOMPLETE = 0
    PP_INVALID = -1


cdef struct ProxyHeader:
    int family          # AF_INET / AF_INET6, or 0 for LOCAL / UNKNOWN
    unsigned char src[16]
    uint16_t src_port


cdef int pp_parse_v1_addr(const char *p, size_t n, int family, unsigned char *out) noexcept:
    cdef char tmp[64]
    if n == 0 or n >= 64:
        return -1
    memcpy(tmp, p, n)
    tmp[n] = 0
    return 0 if inet_pton(family, tmp, out) == 1 else -1


cdef int pp_parse_port(const char *p, size_t n, uint16_t *out) noexcept:
    cdef size_t i
    cdef uint32_t v = 0
    if n == 0 or n > 5 or (n > 1 and p[0] == 48):
        return -1
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -1
        v = v * 10 + <uint32_t>(p[i] - 48)
    if v > 65535:
        return -1
    out[0] = <uint16_t>v
    return 0


cdef int pp_parse(const char *buf, size_t len, ProxyHeader *h) noexcept:
    """Bytes of the PROXY header at buf (> 0), PP_INCOMPLETE, or PP_INVALID."""
    cdef size_t i, n, start, k
    cdef const char *fields[6]
    cdef size_t lens[6]
    cdef int nf = 0
    cdef int family
    cdef unsigned char dst[16]
    cdef uint16_t dport
    cdef unsigned char vercmd, fam
    cdef size_t body
    h.family = 0
    h.src_port = 0
    if len == 0:
        return PP_INCOMPLETE
    if buf[0] == 13:                                    # v2 starts with "\r\n\r\n\0..."
        n = len if len < 12 else 12
        if memcmp(buf, PP_V2_SIGNATURE, n) != 0:
            return PP_INVALID
        if len < PP_V2_HEADER:
            return PP_INCOMPLETE
        vercmd = <unsigned char>buf[12]
        fam = <unsigned char>buf[13]
        body = (<size_t>(<unsigned char>buf[14]) << 8) | <unsigned char>buf[15]
        if (vercmd >> 4) != 2 or (vercmd & 15) > 1:
            return PP_INVALID
        if len < PP_V2_HEADER + body:
            return PP_INCOMPLETE
        if (vercmd & 15) == 0:                          # LOCAL
            return <int>(PP_V2_HEADER + body)
        if fam == 0x11:                                 # TCP over IPv4
            if body < 12:
                return PP_INVALID
            h.family = AF_INET
            memcpy(h.src, buf + 16, 4)
            h.src_port = ((<uint16_t>(<unsigned char>buf[24])) << 8) | <unsigned char>buf[25]
        elif fam == 0x21:                               # TCP over IPv6
            if body < 36:
                return PP_INVALID
            h.family = AF_INET6
            memcpy(h.src, buf + 16, 16)
            h.src_port = ((<uint16_t>(<unsigned char>buf[48])) << 8) | <unsigned char>buf[49]
        elif fam == 0x00:                               # UNSPEC: keep the real address
            h.family = 0
        else:
            return PP_INVALID                           # UDP or unix sockets: not for HTTP
        return <int>(PP_V2_HEADER + body)
    # v1
    n = len if len < 6 else 6
    if memcmp(buf, "PROXY ", n) != 0:
        return PP_INVALID
    i = 0
    while i < len and i < PP_V1_MAX and buf[i] != 10:
        i += 1
    if i >= len:
        return PP_INCOMPLETE if len < PP_V1_MAX else PP_INVALID
    if buf[i] != 10 or i == 0 or buf[i - 1] != 13:
        return PP_INVALID
    # split "PROXY a b c d e" on single spaces (the spec allows exactly one)
    start = 6
    k = 6
    while k <= i - 1:
        if k == i - 1 or buf[k] == 32:
            if nf == 6 or k == start:
                return PP_INVALID
            fields[nf] = buf + start
            lens[nf] = k - start
            nf += 1
            start = k + 1
        k += 1
    if nf >= 1 and lens[0] == 7 and memcmp(fields[0], "UNKNOWN", 7) == 0:
        return <int>(i + 1)                             # the sender does not know: keep ours
    if nf != 5 or lens[0] != 4:
        return PP_INVALID
    if memcmp(fields[0], "TCP4", 4) == 0:
        family = AF_INET
    elif memcmp(fields[0], "TCP6", 4) == 0:
        family = AF_INET6
    else:
        return PP_INVALID
    if pp_parse_v1_addr(fields[1], lens[1], family, h.src) < 0 or \
       pp_parse_v1_addr(fields[2], lens[2], family, dst) < 0 or \
       pp_parse_port(fields[3], lens[3], &h.src_port) < 0 or \
       pp_parse_port(fields[4], lens[4], &dport) < 0:
        return PP_INVALID
    h.family = family
    return <int>(i + 1)


def parse_proxy_header(bytes data):
    """Python entry for tests: (consumed, family, address, port), 0 incomplete, -1 invalid."""
    cdef ProxyHeader h
    cdef char text[64]
    cdef int r = pp_parse(data, len(data), &h)
    if r <= 0:
        return r
    if h.family == 0:
        return (r, 0, None, 0)
    inet_ntop(h.family, h.src, text, 64)
    return (r, h.family, text.decode(), h.src_port)
