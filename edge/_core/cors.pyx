# CORS: the Fetch standard's CORS protocol, answered at the edge (modules/cors.py).
#
# Three handlers share one compiled CorsPolicy:
#   CorsOrigin     (rewrite phase) reads Origin while the request head is at hand, decides
#                  whether the origin is allowed, copies it into the client (to echo it in
#                  Access-Control-Allow-Origin) and notes a preflight (OPTIONS with Origin and
#                  Access-Control-Request-Method). Nothing is answered here, so the
#                  decision is known to every response of the request, rejections included.
#   CorsPreflight  (access phase, after the IP rules, before authentication and limits):
#                  answers a preflight itself with 204, never proxied.
#   CorsHeaders    (header filter) adds Access-Control-Allow-Origin, -Allow-Credentials,
#                  -Expose-Headers and Vary: Origin to every other response of the location.
# The decision lives in the client's CORS block (client.pyx) and is stamped with the request
# it was made for (connection serial, request number, start time): a response for which
# no decision was made (an error before the rewrite phase) gets Vary: Origin only.
# No Python object is made for an actual request; a preflight builds its header bytes.

DEF CORS_ALLOWED = 1        # the Origin is allowed (echoed back)
DEF CORS_PREFLIGHT = 2      # OPTIONS + Origin + Access-Control-Request-Method
DEF CORS_ANSWERED = 4       # the preflight's own response is being written

DEFAULT_CORS_METHODS = "GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS"


cdef class CorsPolicy:
    """CorsPolicy(origins, methods, headers, expose, credentials, max_age).

    origins: exact origins ("https://a.example:8443"), "*", or "~regex" (POSIX ERE, case-
    insensitive, unanchored as nginx's `~*`); methods / headers: lists, or None to echo
    the preflight's Access-Control-Request-Method / -Headers; expose: a list; max_age:
    seconds or None (not sent)."""
    cdef readonly bint any_origin       # `*` with credentials off: Allow-Origin: *
    cdef bytes exact                    # lowercase exact origins, NUL separated, NUL ended
    cdef regex_t *regexes
    cdef int nregexes
    cdef readonly bint credentials
    cdef bytes methods_line             # None: echo Access-Control-Request-Method
    cdef bytes headers_line             # None: echo Access-Control-Request-Headers
    cdef bytes expose_line              # b"" when none
    cdef bytes max_age_line             # b"" when not sent
    cdef bytes actual_tail              # credentials + expose lines of actual responses
    cdef readonly list origins

    def __cinit__(self):
        self.regexes = NULL
        self.nregexes = 0

    def __init__(self, list origins, methods, headers, list expose, bint credentials, max_age):
        cdef list exact = []
        cdef list regexes = []
        cdef int rc
        cdef char err[256]
        self.origins = list(origins)
        self.credentials = credentials
        for o in origins:
            if o == "*":
                if credentials:
                    raise ValueError('"*" cannot be used with credentials')
                self.any_origin = True
            elif o.startswith("~"):
                regexes.append(o[1:])
            else:
                exact.append(o.lower().encode("latin-1"))
        self.exact = b"".join(e + b"\0" for e in exact) + b"\0"
        self.regexes = <regex_t *>malloc(sizeof(regex_t) * (len(regexes) or 1))
        for pattern in regexes:
            rc = regcomp(&self.regexes[self.nregexes], translate_regex(pattern.encode("latin-1")),
                         REG_EXTENDED | REG_NOSUB | REG_ICASE)
            if rc != 0:
                regerror(rc, &self.regexes[self.nregexes], err, sizeof(err))
                regfree(&self.regexes[self.nregexes])
                raise ValueError('invalid regex "%s": %s' % (pattern, err.decode("latin-1")))
            self.nregexes += 1
        self.methods_line = None if methods is None else \
            b"Access-Control-Allow-Methods: " + ", ".join(methods).encode("latin-1") + b"\r\n"
        self.headers_line = None if headers is None else \
            (b"Access-Control-Allow-Headers: " + ", ".join(headers).encode("latin-1") + b"\r\n"
             if headers else b"")
        self.expose_line = (b"Access-Control-Expose-Headers: " + ", ".join(expose).encode("latin-1")
                            + b"\r\n") if expose else b""
        self.max_age_line = b"" if max_age is None else b"Access-Control-Max-Age: %d\r\n" % max_age
        self.actual_tail = (b"Access-Control-Allow-Credentials: true\r\n" if credentials else b"") \
            + self.expose_line

    def __dealloc__(self):
        cdef int i
        if self.regexes != NULL:
            for i in range(self.nregexes):
                regfree(&self.regexes[i])
            free(self.regexes)

    cdef bint allowed(self, const char *origin, size_t n) noexcept:
        """origin: NUL terminated, n bytes."""
        cdef int i
        if self.any_origin:
            return True
        if name_in_list(origin, n, <const char *>self.exact):
            return True
        for i in range(self.nregexes):
            if regexec(&self.regexes[i], origin, 0, NULL, 0) == 0:
                return True
        return False

    def allows(self, str origin):
        """Python entry for tests."""
        cdef bytes b = origin.encode("latin-1")
        return self.allowed(b, len(b))


cdef inline bint cors_current(Client c) noexcept:
    """The client's CORS decision was made for the request being answered."""
    return c.cors_conn == c.conn_serial and c.cors_req == c.req_number and c.cors_start == c.start_us


cdef class CorsOrigin(PhaseHandler):
    """Rewrite phase: the origin decision (see the top of this file)."""
    cdef readonly CorsPolicy policy

    def __init__(self, CorsPolicy policy):
        self.name = "cors"
        self.policy = policy

    cdef int run(self, Client c) except -1:
        cdef size_t i
        cdef edge_header *h
        cdef edge_header *origin = NULL
        cdef bint acrm = False
        cdef size_t cap = sizeof(c.cors_origin)
        c.cors_conn = c.conn_serial
        c.cors_req = c.req_number
        c.cors_start = c.start_us
        c.cors_state = 0
        c.cors_origin_len = 0
        for i in range(c.nheaders):
            h = &c.headers[i]
            if origin == NULL and name_is(h.name, h.name_len, "origin", 6):
                origin = h
            elif name_is(h.name, h.name_len, "access-control-request-method", 29):
                acrm = True
        if origin == NULL:
            return PH_CONTINUE
        if acrm and c.method_len == 7 and memcmp(c.method, "OPTIONS", 7) == 0:
            c.cors_state = CORS_PREFLIGHT
        if origin.value_len == 0 or origin.value_len >= cap:
            return PH_CONTINUE          # too long to be an origin edge would echo: not allowed
        memcpy(c.cors_origin, origin.value, origin.value_len)
        c.cors_origin[origin.value_len] = 0
        if self.policy.allowed(c.cors_origin, origin.value_len):
            c.cors_origin_len = origin.value_len
            c.cors_state |= CORS_ALLOWED
        return PH_CONTINUE


cdef bytes request_header_list(Client c, const char *lower, size_t ln):
    """The values of a request header, joined with ", " (b"" when absent)."""
    cdef size_t i
    cdef edge_header *h
    cdef list parts = []
    for i in range(c.nheaders):
        h = &c.headers[i]
        if name_is(h.name, h.name_len, lower, ln) and h.value_len:
            parts.append(h.value[:h.value_len])
    return b", ".join(parts)


cdef class CorsPreflight(PhaseHandler):
    """Access phase: a preflight gets its 204 here and goes no further."""
    cdef readonly CorsPolicy policy

    def __init__(self, CorsPolicy policy):
        self.name = "cors"
        self.policy = policy

    cdef int run(self, Client c) except -1:
        cdef CorsPolicy p = self.policy
        cdef list lines
        cdef list vary
        cdef bytes v
        if not cors_current(c) or not (c.cors_state & CORS_PREFLIGHT):
            return PH_CONTINUE
        lines = []
        vary = [] if p.any_origin else [b"Origin"]
        if c.cors_state & CORS_ALLOWED:
            if p.any_origin:
                lines.append(b"Access-Control-Allow-Origin: *\r\n")
            else:
                lines.append(b"Access-Control-Allow-Origin: " + c.cors_origin[:c.cors_origin_len] + b"\r\n")
            if p.credentials:
                lines.append(b"Access-Control-Allow-Credentials: true\r\n")
            if p.methods_line is not None:
                lines.append(p.methods_line)
            else:
                v = request_header_list(c, "access-control-request-method", 29)
                lines.append(b"Access-Control-Allow-Methods: " + v + b"\r\n")
                vary.append(b"Access-Control-Request-Method")
            if p.headers_line is not None:
                lines.append(p.headers_line)
            else:
                v = request_header_list(c, "access-control-request-headers", 30)
                if v:
                    lines.append(b"Access-Control-Allow-Headers: " + v + b"\r\n")
                vary.append(b"Access-Control-Request-Headers")
            lines.append(p.max_age_line)
        if vary:
            lines.append(b"Vary: " + b", ".join(vary) + b"\r\n")
        c.cors_state |= CORS_ANSWERED
        c.respond_simple(204, b"".join(lines), b"", b"")
        return PH_DONE


cdef class CorsHeaders(HeaderFilter):
    """Header filter: the CORS headers of actual responses, errors included."""
    cdef readonly CorsPolicy policy

    def __init__(self, CorsPolicy policy):
        self.name = "cors"
        self.policy = policy

    cdef int filter(self, Client c, Buf *out) except -1:
        cdef CorsPolicy p = self.policy
        cdef bint current = cors_current(c)
        if current and (c.cors_state & CORS_ANSWERED):
            return 0                    # the preflight wrote its own
        if p.any_origin:
            buf_append_str(out, "Access-Control-Allow-Origin: *\r\n")
            buf_append(out, <const char *>p.actual_tail, len(p.actual_tail))
            return 0
        buf_append_str(out, "Vary: Origin\r\n")
        if current and (c.cors_state & CORS_ALLOWED):
            buf_append_str(out, "Access-Control-Allow-Origin: ")
            buf_append(out, c.cors_origin, c.cors_origin_len)
            buf_append_str(out, "\r\n")
            buf_append(out, <const char *>p.actual_tail, len(p.actual_tail))
        return 0
