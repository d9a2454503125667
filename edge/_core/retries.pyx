# Retries: when a failed try goes to the next peer (nginx's proxy_next_upstream,
# proxy_next_upstream_tries, proxy_next_upstream_timeout).
#
# A try fails with a condition (a connection error, a timeout, an invalid head, or a
# response status the location lists). The request goes to the next peer only when the
# location lists that condition, the limits on tries and time allow it, a peer is left,
# its body can be sent again (buffered, or not one byte of it streamed yet), and, for a
# request that already reached a peer, its method is idempotent or `non_idempotent` is
# listed. Otherwise the client gets 502/504, or the failed response itself for a status.

cdef enum NextUpstream:
    NU_ERROR = 1 << 0
    NU_TIMEOUT = 1 << 1
    NU_INVALID_HEADER = 1 << 2
    NU_HTTP_500 = 1 << 3
    NU_HTTP_502 = 1 << 4
    NU_HTTP_503 = 1 << 5
    NU_HTTP_504 = 1 << 6
    NU_HTTP_403 = 1 << 7
    NU_HTTP_404 = 1 << 8
    NU_HTTP_429 = 1 << 9
    NU_NON_IDEMPOTENT = 1 << 10

# the directive's words, for edge/modules/retries.py (one table for both halves)
NEXT_UPSTREAM_FLAGS = {
    "error": NU_ERROR, "timeout": NU_TIMEOUT, "invalid_header": NU_INVALID_HEADER,
    "http_500": NU_HTTP_500, "http_502": NU_HTTP_502, "http_503": NU_HTTP_503,
    "http_504": NU_HTTP_504, "http_403": NU_HTTP_403, "http_404": NU_HTTP_404,
    "http_429": NU_HTTP_429, "non_idempotent": NU_NON_IDEMPOTENT,
}
NEXT_UPSTREAM_DEFAULT = NU_ERROR | NU_TIMEOUT     # nginx's default


cdef inline int status_condition(int status) noexcept:
    """The proxy_next_upstream flag a response status stands for (0: none)."""
    if status == 500:
        return NU_HTTP_500
    if status == 502:
        return NU_HTTP_502
    if status == 503:
        return NU_HTTP_503
    if status == 504:
        return NU_HTTP_504
    if status == 403:
        return NU_HTTP_403
    if status == 404:
        return NU_HTTP_404
    if status == 429:
        return NU_HTTP_429
    return 0


cdef inline bint method_idempotent(Client c) noexcept:
    """nginx's rule: POST, LOCK and PATCH are the methods not replayed by default."""
    if c.method_len == 4:
        return memcmp(c.method, "POST", 4) != 0 and memcmp(c.method, "LOCK", 4) != 0
    if c.method_len == 5:
        return memcmp(c.method, "PATCH", 5) != 0
    return True


cdef bint next_upstream_allowed(Client c, int condition, bint request_sent) noexcept:
    """May this request go to another peer after a try that failed with `condition`?"""
    cdef Location loc = c.loc
    if not (loc.next_upstream & condition):
        return False
    if loc.next_upstream_tries and c.tries >= loc.next_upstream_tries:
        return False
    if loc.next_upstream_timeout_ms and \
            g_now_us - c.first_try_us >= loc.next_upstream_timeout_ms * 1000:
        return False
    if c.tries >= c.ups.npresent:
        return False        # every peer had its try (empty `resolve` slots are no peers)
    if not c.body_replayable():
        return False        # streamed body bytes are gone
    if request_sent and not (loc.next_upstream & NU_NON_IDEMPOTENT) and not c.idempotent:
        return False
    return True
