# error_page, recursive_error_pages and proxy_intercept_errors (modules/error_page.py),
# with nginx 1.22's semantics (ngx_http_special_response.c, ngx_http_upstream.c).
#
# Theory of operation
# - An error edge answers itself goes through Client.special_response(status) (the
#   built-in pages of finish_without_body, send_error after routing, a bare `return 4xx`
#   or a `return` redirect). Before the built-in page is written, the error pages of the
#   request's location (or of its server, when no location took it) are looked up here.
# - A location with no error_page has `error_pages = None`: the lookup is one attribute
#   test on the error path, and the paths that do not fail (a proxied 200, a file) pay
#   one integer test in end_head for err_status.
# - A matching page is, as in nginx:
#     /uri     an internal redirect: the method becomes GET (HEAD stays HEAD), the
#              location is searched again and its rewrite, access and content phases run;
#     @name    the named location's phases, with the method and URI unchanged;
#     URL      a redirect: 302, or the `=code` given when it is 301/302/303/307/308.
#   The response that follows carries the error's status (err_status), or the `=code`
#   given, or with `=` alone the target's own status: end_head rewrites the status line
#   of whatever head is written next (a file, a proxied response, a `return` text).
# - recursive_error_pages off (the default): once a page was chosen, a later error of
#   the same request gets the plain built-in page of its own status.
# - proxy_intercept_errors on: an upstream response with a status >= 300 that has an
#   error_page is dropped before its head reaches the client (its upstream connection
#   is kept when the whole body is already read, else closed), and the page is served.
# - The request body is not sent to an error page's upstream: a body still arriving is
#   discarded and the connection closes after the page (nginx reads and discards it).

DEF EP_URI = 1
DEF EP_NAMED = 2
DEF EP_URL = 3


cdef class ErrorTarget:
    """One `error_page` target: the URI, @name or URL, and the =code (-1: none, 0: `=`)."""
    cdef public int kind
    cdef public int overwrite
    cdef public Template value
    cdef public Location named

    def __init__(self, int kind, int overwrite, Template value):
        self.kind = kind
        self.overwrite = overwrite
        self.value = value
        self.named = None


cdef class ErrorPages:
    """The error pages in force in one location (or server): status -> ErrorTarget."""
    cdef public dict pages
    cdef public bint recursive
    cdef public bint intercept

    def __init__(self, dict pages, bint recursive, bint intercept):
        self.pages = pages
        self.recursive = recursive
        self.intercept = intercept

    def __repr__(self):
        return "ErrorPages(%r, recursive=%r, intercept=%r)" % (
            sorted(self.pages), self.recursive, self.intercept)


cdef inline ErrorPages error_pages_of(Client c):
    if c.loc is not None:
        return <ErrorPages>c.loc.error_pages
    if c.routed and c.server is not None:
        return <ErrorPages>c.server.error_pages
    return None


cdef bint intercepts(Client c, int status) noexcept:
    """proxy_intercept_errors: is this upstream status answered by an error page?"""
    cdef ErrorPages ep = <ErrorPages>c.loc.error_pages
    if ep is None or not ep.intercept or status < 300:
        return False
    try:
        return status in ep.pages
    except Exception:
        return False


cdef void patch_status_line(Client c) noexcept:
    """The head being written gets err_status in its status line (and in $status)."""
    cdef char *head = c.wb.data + c.wb.start + c.head_begin
    cdef size_t n = buf_len(&c.wb) - c.head_begin
    cdef const char *eol = <const char *>memchr(head, 10, n)
    cdef bytes rest
    cdef int status = c.err_status
    if eol == NULL:
        return
    try:
        rest = head[eol + 1 - head:n]
    except Exception:
        return
    c.wb.end = c.wb.start + c.head_begin
    buf_append_str(&c.wb, "HTTP/1.1 ")
    buf_append_uint(&c.wb, <uint64_t>status)
    buf_append_str(&c.wb, " ")
    buf_append_bytes(&c.wb, status_reason(status))
    buf_append_str(&c.wb, "\r\n")
    buf_append(&c.wb, <const char *>rest, len(rest))
    c.status = status


cdef void keep_head_for_page(Client c) noexcept:
    """The page's location may read the request head after a body went through rb (as
    handle_request keeps it for such locations): copy it out of rb unless it was. It is
    in rb right before rb.start, or at rb.start when the error came before it was
    consumed (the TLS checks); then it is consumed now."""
    cdef const char *base = c.rb.data + c.rb.start
    cdef const char *m = c.method
    if c.hb.data != NULL and m >= <const char *>c.hb.data + c.hb.start \
            and m < <const char *>c.hb.data + c.hb.end:
        return
    if c.rb.data == NULL:
        return
    if m >= base and m < base + c.head_len:
        c.keep_request_head(c.head_len)
        c.rb.start += c.head_len
    elif c.rb.start >= c.head_len and m >= base - c.head_len and m < base:
        c.rb.start -= c.head_len
        c.keep_request_head(c.head_len)
        c.rb.start += c.head_len


cdef void drop_request_body(Client c) noexcept:
    """An error page is about to run: the request body is not passed on. One that is
    still arriving is discarded while the page is served, and the connection closes."""
    cdef int r
    if c.body_kind == BODY_NONE or c.body_kind == BODY_TUNNEL:
        return
    if not c.body_done and not c.body_started:
        r = c.skip_request_body()
        if r != 1:
            c.keepalive = False
            c.discarding = r == 0
    elif not c.body_done:
        c.keepalive = False
        c.discarding = True
    c.body_kind = BODY_NONE
    c.body_done = True
    if c.body_buffered or c.body_fd >= 0:
        release_request_body(c)


cdef bint run_error_page(Client c, int status):
    """nginx's special response: an error page for `status` when one applies (True, the
    page is under way), else False (the caller writes the built-in page)."""
    cdef ErrorPages ep = error_pages_of(c)
    cdef ErrorTarget t
    cdef Buf v
    c.err_status = 0
    if ep is None or c.error_paged or c.uri_changes <= 0:
        return False
    if not ep.recursive:
        c.error_paged = True
    t = ep.pages.get(status)
    if t is None:
        return False
    # nginx's keep-alive rule for these errors holds for their pages too
    if status == 400 or status == 413 or status == 414 or status == 500 or status == 501:
        c.keepalive = False
    c.err_status = t.overwrite if t.overwrite >= 0 else status
    if t.kind == EP_NAMED:
        keep_head_for_page(c)
        drop_request_body(c)
        if not start_internal(c):
            return True
        if t.named is None:
            # an http-level page naming a location this server lacks (nginx: a 500)
            if g_log_fn is not None:
                g_log_fn("error", "could not find named location \"%s\"" % t.value.source)
            c.err_status = 0
            c.finish_without_body(500)
            return True
        enter_error_location(c, t.named)
        return True
    memset(&v, 0, sizeof(Buf))
    buf_init(&v, 256)
    try:
        eval_template(t.value, c, &v)
        if buf_len(&v) == 0 or v.data[v.start] != 47:
            # not a URI: a redirect to the URL (nginx decides on the value's first byte)
            redirect_page(c, t.overwrite, v.data + v.start, buf_len(&v))
            return True
        keep_head_for_page(c)
        drop_request_body(c)
        if not start_internal(c):
            return True
        if not c.is_head:
            c.method = "GET"
            c.method_len = 3
        c.has_args = False          # the page's own arguments, or none (nginx)
        c.args = NULL
        c.args_len = 0
        set_uri(c, v.data + v.start, buf_len(&v), True)
    finally:
        buf_free(&v)
    c.rewritten = True
    c.rw_break = False
    c.cap_base = NULL
    enter_error_location(c, c.server.find_location(c.uri.data, buf_len(&c.uri), c.caps))
    return True


cdef bint start_internal(Client c):
    """An internal redirect to an error page begins: False when the request redirected
    too often already (it is answered with a 500)."""
    c.state = CS_HEAD
    c.tried_peers = 0           # a proxied page is a new upstream request
    c.tries = 0
    c.mirror_heads = None
    c.upgrade = False
    c.uri_changes -= 1
    if c.uri_changes == 0:
        if g_log_fn is not None:
            g_log_fn("error", "rewrite or internal redirection cycle while redirecting to error page")
        c.err_status = 0
        c.finish_without_body(500)
        return False
    return True


cdef bint run_unrouted_error_page(Client c, int status):
    """A request refused before a server was chosen (a head that does not parse, too
    large, a bad Host...): as nginx, the default server's error_page for the status,
    with what is known of the request (the parsed head, if it parsed; else none). The
    bytes not read yet are dropped and the connection closes after the page."""
    cdef Server srv = c.binding.default
    cdef ErrorPages ep = <ErrorPages>srv.error_pages
    if ep.pages.get(status) is None:
        return False
    if c.parsed:
        if c.rb.data != NULL and c.head_len and c.method >= <const char *>c.rb.data + c.rb.start \
                and c.method < <const char *>c.rb.data + c.rb.start + c.head_len:
            c.keep_request_head(c.head_len)
    else:
        c.keep_raw_line()
        buf_reset(&c.hb)
        if buf_append(&c.hb, c.raw_line, c.raw_line_len) == 0:
            c.raw_line = c.hb.data + c.hb.start     # the log's $request, out of rb
        c.nheaders = 0
        c.method = "GET"
        c.method_len = 3
        c.is_head = False
        c.has_args = False
        c.args = NULL
        c.args_len = 0
        c.minor = 0                 # unknown: a response delimited by the close
        c.connection_header = -1
        c.upgrade_index = -1
        c.abs_host = NULL
        c.head_len = 0
    c.rb.start = c.rb.end
    c.discarding = True             # what the client still sends is read and dropped
    c.body_kind = BODY_NONE
    c.body_done = True
    c.keepalive = False
    c.server = srv
    c.routed = True
    c.loc = None
    return run_error_page(c, status)


cdef void enter_error_location(Client c, Location loc):
    """The page's location runs all its phases (rewrite, access, content), as nginx runs
    an internal redirect from the start."""
    if loc is None:
        c.loc = None
        c.finish_without_body(404)
        return
    run_location(c, loc)            # static.pyx


cdef void redirect_page(Client c, int overwrite, const char *url, size_t n):
    """error_page CODE URL: a redirect with nginx's page for its status."""
    cdef int status = overwrite
    cdef bytes body
    if status != 301 and status != 302 and status != 303 and status != 307 and status != 308:
        status = 302
    c.err_status = 0
    body = error_body(status)
    c.start_discard()
    c.begin_head(status)
    buf_append_bytes(&c.wb, error_head(status))
    c.append_date()
    buf_append_str(&c.wb, "Location: ")
    buf_append(&c.wb, url, n)
    buf_append_str(&c.wb, "\r\n")
    c.append_connection()
    if not c.is_head:
        buf_append_bytes(&c.wb, body)
    c.response_done()
