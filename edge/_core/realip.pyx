# The real client address behind trusted proxies (nginx's realip module semantics).
#
# When the connection comes from a trusted address (set_real_ip_from), the address named
# by real_ip_header replaces $remote_addr. For X-Forwarded-For without recursion the last
# address in the list is used; with real_ip_recursive the list is walked from the right,
# skipping trusted addresses, and the first untrusted one is the client (if every one is
# trusted, the leftmost). `proxy_protocol` takes the address from the PROXY header.

cdef struct Cidr:
    int family
    unsigned char addr[16]
    int prefix


cdef enum RealIPSource:
    REALIP_HEADER = 0
    REALIP_PROXY_PROTOCOL = 1


cdef bint cidr_match(Cidr *c, int family, const unsigned char *addr) noexcept:
    cdef int full = c.prefix >> 3
    cdef int rest = c.prefix & 7
    cdef unsigned char mask
    if c.family != family:
        return False
    if full and memcmp(c.addr, addr, full) != 0:
        return False
    if rest:
        mask = <unsigned char>(0xff << (8 - rest))
        if (c.addr[full] & mask) != (addr[full] & mask):
            return False
    return True


cdef class RealIP:
    """Compiled realip settings: RealIP(["10.0.0.0/8", ...], "X-Forwarded-For", True)."""
    cdef Cidr *cidrs
    cdef int ncidrs
    cdef readonly bytes header
    cdef int source
    cdef readonly bint recursive

    def __init__(self, list cidrs, str header, bint recursive):
        import ipaddress
        self.cidrs = <Cidr *>malloc(sizeof(Cidr) * (len(cidrs) or 1))
        self.ncidrs = 0
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=False)
            c = &self.cidrs[self.ncidrs]
            memset(c, 0, sizeof(Cidr))
            c.family = AF_INET if net.version == 4 else AF_INET6
            packed = net.network_address.packed
            memcpy(c.addr, <const char *>packed, len(packed))
            c.prefix = net.prefixlen
            self.ncidrs += 1
        if header.lower() == "proxy_protocol":
            self.source = REALIP_PROXY_PROTOCOL
            self.header = b""
        else:
            self.source = REALIP_HEADER
            self.header = header.encode("latin-1")
        self.recursive = recursive

    def __dealloc__(self):
        if self.cidrs != NULL:
            free(self.cidrs)

    cdef bint trusted(self, int family, const unsigned char *addr) noexcept:
        cdef int i
        cdef unsigned char mapped[16]
        for i in range(self.ncidrs):
            if cidr_match(&self.cidrs[i], family, addr):
                return True
        # an IPv4-mapped IPv6 peer (::ffff:a.b.c.d) matches IPv4 ranges
        if family == AF_INET6 and memcmp(addr, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0:
            for i in range(self.ncidrs):
                if cidr_match(&self.cidrs[i], AF_INET, addr + 12):
                    return True
        return False

    def is_trusted(self, str address):
        """Python entry for tests."""
        import ipaddress
        ip = ipaddress.ip_address(address)
        packed = ip.packed
        return self.trusted(AF_INET if ip.version == 4 else AF_INET6, packed)


cdef int parse_ip(const char *p, size_t n, int *family, unsigned char *out, int *port) noexcept:
    """A textual IPv4/IPv6 address (optionally [bracketed], optionally with :port) into
    binary; *port is the port or -1. Returns 0 or -1."""
    cdef char tmp[64]
    cdef size_t i, k
    cdef int v
    port[0] = -1
    while n and (p[0] == 32 or p[0] == 9):
        p += 1
        n -= 1
    while n and (p[n - 1] == 32 or p[n - 1] == 9):
        n -= 1
    if n == 0 or n >= 64:
        return -1
    if p[0] == 91:                      # [v6] or [v6]:port
        i = 1
        while i < n and p[i] != 93:
            i += 1
        if i >= n:
            return -1
        memcpy(tmp, p + 1, i - 1)
        tmp[i - 1] = 0
        if inet_pton(AF_INET6, tmp, out) != 1:
            return -1
        family[0] = AF_INET6
        if i + 1 < n and p[i + 1] == 58:
            return parse_port_text(p + i + 2, n - i - 2, port)
        return 0 if i + 1 == n else -1
    memcpy(tmp, p, n)
    tmp[n] = 0
    if inet_pton(AF_INET, tmp, out) == 1:
        family[0] = AF_INET
        return 0
    if inet_pton(AF_INET6, tmp, out) == 1:
        family[0] = AF_INET6
        return 0
    for i in range(n):                  # a.b.c.d:port
        if tmp[i] == 58:
            tmp[i] = 0
            if inet_pton(AF_INET, tmp, out) == 1:
                family[0] = AF_INET
                return parse_port_text(p + i + 1, n - i - 1, port)
            break
    return -1


cdef int parse_port_text(const char *p, size_t n, int *port) noexcept:
    cdef size_t i
    cdef int v = 0
    if n == 0 or n > 5:
        return -1
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -1
        v = v * 10 + (p[i] - 48)
    if v > 65535:
        return -1
    port[0] = v
    return 0
