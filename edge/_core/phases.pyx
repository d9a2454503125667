# The per-location phase plan (DESIGN.md §2): what a request runs besides its content.
#
# Each module compiles its directives into handlers at config time, and the plan is one
# flat list per phase, in nginx's order:
#   rewrite        before access checks (request IDs, rewrite / set / return scripts)
#   access         allow/deny, auth, limits (later issues)
#   content        exactly one of return / proxy_pass / health: Location.content, a switch
#                  in client.pyx, so the plain routes pay for no call
#   header_filter  headers added to the response head edge writes (request IDs,
#                  add_header, CORS, rate-limit headers)
#   log            the access logs, run once for every request however it ended; metrics
#                  are always counted there too (client.pyx, log_request)
#
# The contract: a handler is a cdef class whose C-level method returns
#   PH_CONTINUE  go on with the next handler, then the next phase;
#   PH_DONE      the handler queued the whole response itself: stop the request's phases;
#   PH_RELOCATE  (rewrite phase) the URI changed: search the location again (rewrite.pyx);
#   a status     (>= 100) answer with edge's page for that status and stop.
# A Python exception inside a handler gives that request a 500 and an error-log line;
# it never reaches the event loop, so a worker never dies of a handler's bug.
# A location with no handlers in a phase pays one integer test for it.



cdef class PhaseHandler:
    """A rewrite- or access-phase handler."""
    cdef readonly str name

    cdef int run(self, Client c) except -1:
        return PH_CONTINUE


cdef class HeaderFilter:
    """Appends header lines ("Name: value\\r\\n") to the response head being written."""
    cdef readonly str name

    cdef int filter(self, Client c, Buf *out) except -1:
        return 0


cdef class LogHandler:
    """Runs once when a request ends (access logs)."""
    cdef readonly str name

    cdef int log(self, Client c) except -1:
        return 0

    def attach(self):
        """In the worker, before serving: open files, find shared-memory slots."""
        pass


cdef class PhasePlan:
    """The handlers of one location (or of a server, for requests no location took)."""
    cdef readonly list rewrite
    cdef readonly list access
    cdef readonly list header_filter
    cdef readonly list log
    cdef int nrewrite, naccess, nheader_filter, nlog
    # the metrics series of requests ending here; code series are cached per status
    cdef readonly list route_labels         # [server, route]
    cdef int64_t route_series
    cdef int code_cache_status[8]
    cdef int64_t code_cache_series[8]
    cdef int ncode_cache
    cdef bint keep_head                     # log formats read the request head at the end
    cdef bint keep_response_head            # log formats read $sent_http_*

    def __cinit__(self):
        self.rewrite = []
        self.access = []
        self.header_filter = []
        self.log = []
        self.route_labels = ["", ""]
        self.route_series = -1
        self.ncode_cache = 0

    def add(self, str phase, handler):
        """Append a handler to a phase (config time)."""
        if phase == "rewrite" and isinstance(handler, PhaseHandler):
            self.rewrite.append(handler)
        elif phase == "access" and isinstance(handler, PhaseHandler):
            self.access.append(handler)
        elif phase == "header_filter" and isinstance(handler, HeaderFilter):
            self.header_filter.append(handler)
        elif phase == "log" and isinstance(handler, LogHandler):
            self.log.append(handler)
            if isinstance(handler, AccessLog):
                # what the record will read when the request is over
                for t in (handler.fmt, handler.condition):
                    if t is not None:
                        self.keep_head = self.keep_head or t.uses_head
                        self.keep_response_head = self.keep_response_head or t.uses_sent_http
        else:
            raise ValueError("%r cannot run in the %s phase" % (handler, phase))
        self.nrewrite = len(self.rewrite)
        self.naccess = len(self.access)
        self.nheader_filter = len(self.header_filter)
        self.nlog = len(self.log)

    def set_route(self, str server, str route):
        self.route_labels = [server, route]

    def attach(self):
        """In the worker: resolve the metrics series of this plan in the shared zone."""
        self.route_series = series_for(SK_ROUTE, self.route_labels)
        self.ncode_cache = 0
        for h in self.rewrite + self.access + self.header_filter + self.log:
            attach = getattr(h, "attach", None)
            if attach is not None:
                attach()

    cdef int64_t code_series(self, int status) noexcept:
        cdef int i
        cdef int64_t s
        cdef bytes key
        for i in range(self.ncode_cache):
            if self.code_cache_status[i] == status:
                return self.code_cache_series[i]
        # first time this plan ends a request with this status, in this worker
        try:
            key = labels_bytes(self.route_labels)
        except Exception:
            return -1
        s = zone_series(&g_zone, SK_CODE, status, key, len(key))
        if self.ncode_cache < 8:
            self.code_cache_status[self.ncode_cache] = status
            self.code_cache_series[self.ncode_cache] = s
            self.ncode_cache += 1
        return s

    def __repr__(self):
        return "PhasePlan(rewrite=%r, access=%r, header_filter=%r, log=%r)" % (
            self.rewrite, self.access, self.header_filter, self.log)


cdef PhasePlan EMPTY_PHASES = PhasePlan()


cdef int run_handlers(list handlers, Client c) noexcept:
    """Run a rewrite or access phase: PH_CONTINUE, PH_DONE or a status."""
    cdef PhaseHandler h
    cdef int r
    for h in handlers:
        try:
            r = h.run(c)
        except Exception as e:
            handler_failed(h.name, e)
            return 500
        if r != PH_CONTINUE:
            return r
    return PH_CONTINUE


cdef void run_header_filters(list filters, Client c, Buf *out) noexcept:
    cdef HeaderFilter f
    for f in filters:
        try:
            f.filter(c, out)
        except Exception as e:
            handler_failed(f.name, e)


cdef void run_log_handlers(list handlers, Client c) noexcept:
    cdef LogHandler h
    for h in handlers:
        try:
            h.log(c)
        except Exception as e:
            handler_failed(h.name, e)


cdef void handler_failed(str name, object e) noexcept:
    if g_log_fn is None:
        return
    try:
        g_log_fn("error", "%s handler failed: %r" % (name, e))
    except Exception:
        pass


def keep_request_head(Location loc):
    """A module found, at compile time, that something reads the request head after a
    buffered body may have gone through rb (a hash key of a group chosen per request, a
    proxy_ssl_name with variables): the location keeps a copy of the head, as log formats
    that read it do."""
    loc.phases.keep_head = True
