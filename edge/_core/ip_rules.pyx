# IP rules: nginx's `allow` / `deny` (ngx_http_access_module), an access-phase handler.
#
# The rules of a location are a flat array of pre-parsed networks (realip.pyx's Cidr and
# cidr_match), tried in order; the first that matches the client decides. No rule matches:
# the request goes on. The client is the address `$remote_addr` shows: the TCP peer, or
# what realip put in its place (an address from a header, or the PROXY protocol's source
# with `real_ip_header proxy_protocol`). An IPv4-mapped IPv6 client (::ffff:a.b.c.d) is
# matched against the IPv4 rules, as nginx does. `all` matches every client; `unix:`
# matches clients of unix-domain listeners (edge has none, so it never matches).
# A location without rules has no handler: it pays nothing.

cdef struct IPRule:
    Cidr net            # family AF_UNIX (prefix 0) for `unix:`
    bint all
    bint deny


cdef class IPRules(PhaseHandler):
    """IPRules([(deny, kind, network_text), ...]): kind is "all", "unix" or "net"."""
    cdef IPRule *rules
    cdef int nrules
    cdef readonly list texts

    def __init__(self, list rules):
        import ipaddress
        cdef IPRule *r
        self.name = "ip_rules"
        self.rules = <IPRule *>malloc(sizeof(IPRule) * (len(rules) or 1))
        self.nrules = 0
        self.texts = []
        for deny, kind, text in rules:
            r = &self.rules[self.nrules]
            memset(r, 0, sizeof(IPRule))
            r.deny = bool(deny)
            if kind == "all":
                r.all = True
            elif kind == "unix":
                r.net.family = AF_UNIX
            else:
                net = ipaddress.ip_network(text, strict=False)
                r.net.family = AF_INET if net.version == 4 else AF_INET6
                packed = net.network_address.packed
                memcpy(r.net.addr, <const char *>packed, len(packed))
                r.net.prefix = net.prefixlen
            self.nrules += 1
            self.texts.append(("deny " if deny else "allow ") + text)

    def __dealloc__(self):
        if self.rules != NULL:
            free(self.rules)

    cdef int decide(self, int family, const unsigned char *addr) noexcept:
        """1 denied, 0 allowed or no rule matched."""
        cdef int i
        cdef IPRule *r
        if family == AF_INET6 and memcmp(addr, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0:
            family = AF_INET
            addr = addr + 12
        for i in range(self.nrules):
            r = &self.rules[i]
            if r.all or cidr_match(&r.net, family, addr):
                return 1 if r.deny else 0
        return 0

    cdef int run(self, Client c) except -1:
        cdef int family
        cdef const unsigned char *addr
        addr = c.remote_address(&family)       # what $remote_addr shows
        if self.decide(family, addr):
            log_forbidden(c)
            return 403
        return PH_CONTINUE

    def check(self, str address):
        """Python entry for tests: "deny" or "allow" (no rule, or an allow rule)."""
        import ipaddress
        ip = ipaddress.ip_address(address)
        packed = ip.packed
        return "deny" if self.decide(AF_INET if ip.version == 4 else AF_INET6, packed) else "allow"

    def __repr__(self):
        return "IPRules(%r)" % (self.texts,)


cdef void log_forbidden(Client c):
    """nginx's line: access forbidden by rule, client: ..., server: ..., request: "...", host: "..." """
    if g_log_fn is None:
        return
    try:
        g_log_fn("error", 'access forbidden by rule, client: %s, server: %s, request: "%s %s HTTP/1.%d", host: "%s"' % (
            c.remote[:c.remote_len].decode("latin-1"),
            c.server.first_name.decode("latin-1") if c.server is not None else "",
            c.method[:c.method_len].decode("latin-1"), c.target[:c.target_len].decode("latin-1"),
            c.minor, c.host[:c.host_len].decode("latin-1")))
    except Exception:
        pass
