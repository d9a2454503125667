# TLS to upstreams: `proxy_pass https://...` and the proxy_ssl_* directives
# (edge/modules/proxy_ssl.py builds an UpstreamTls per distinct set of them).
#
# An UpConn to an https upstream carries an SSL object (UpConn.ssl). After the TCP
# connect completes the connection enters US_HANDSHAKE: upstream_tls_start makes the SSL
# object (SNI, the peer's last session), upstream_tls_handshake drives it on the UpConn's
# own epoll events, bounded by the connect timer still running (proxy_connect_timeout
# covers connect and handshake together, as in nginx). Then the UpConn is US_ACTIVE and
# its reads and writes go through tls.pyx's tls_read_into / tls_write_queued /
# tls_send_file_range; a plain UpConn pays one pointer test at those points.
#
# Verification follows nginx: the handshake itself never fails on the certificate; once
# it is done, with proxy_ssl_verify on, the chain's verdict (SSL_get_verify_result) and the
# name (proxy_ssl_name, else the upstream's host without its port) are checked, and a
# failure is an upstream error (502, proxy_next_upstream `error`, max_fails).
#
# Sessions (proxy_ssl_session_reuse on): OpenSSL hands every new session (a TLS 1.3 ticket
# arrives after the handshake) to upstream_new_session, which keeps the latest one per
# (group, peer, name); the next connection to that peer offers it (SSL_set_session).

cdef str g_up_tls_error = None      # why the last start or handshake failed (for the log)

DEF SESSIONS_MAX = 4096     # kept sessions per UpstreamTls: a proxy_ssl_name taken from the
                            # request could otherwise grow the table without bound


cdef class SessionSlot:
    """The last session one peer gave us (owned reference), or NULL."""
    cdef SSL_SESSION *sess

    def __dealloc__(self):
        if self.sess != NULL:
            SSL_SESSION_free(self.sess)
            self.sess = NULL


cdef class UpstreamTls:
    """TLS settings of proxied locations: a client context and the per-connection choices.
    Locations with the same settings share one, so they share pooled connections and
    sessions."""
    cdef readonly TlsContext context
    cdef readonly bint verify
    cdef readonly bint server_name
    cdef Template name              # proxy_ssl_name, or None: the upstream's host
    cdef readonly bint session_reuse
    cdef dict sessions              # (Upstream, peer, name) -> SessionSlot

    def __init__(self, TlsContext context, bint verify, bint server_name, Template name,
                 bint session_reuse):
        self.context = context
        self.verify = verify
        self.server_name = server_name
        self.name = name
        self.session_reuse = session_reuse
        self.sessions = {}
        # the handshake goes on whatever the certificate; the verdict is checked after it
        SSL_CTX_set_verify(context.ctx, SSL_VERIFY_NONE, NULL)
        if session_reuse:
            SSL_CTX_set_session_cache_mode(context.ctx, SSL_SESS_CACHE_CLIENT
                                           | SSL_SESS_CACHE_NO_INTERNAL)
            SSL_CTX_sess_set_new_cb(context.ctx, <new_session_cb_t>upstream_new_session)

cdef int upstream_new_session(SSL *ssl, SSL_SESSION *sess) noexcept:
    """OpenSSL made or received a session on an upstream connection: keep it as its peer's
    latest. Returning 1 keeps the reference OpenSSL passed."""
    cdef void *owner = SSL_get_ex_data(ssl, 0)
    cdef UpConn up
    cdef SessionSlot slot
    if owner == NULL:
        return 0
    up = <UpConn>owner
    if up.tls_slot is None:
        return 0
    slot = <SessionSlot>up.tls_slot
    if slot.sess != NULL:
        SSL_SESSION_free(slot.sess)
    slot.sess = sess
    return 1


cdef bint name_is_ip(bytes name):
    cdef unsigned char addr[16]
    if name.startswith(b"["):
        return True
    return inet_pton(AF_INET, name, addr) == 1 or inet_pton(AF_INET6, name, addr) == 1


cdef bytes ssl_name_of(bytes name):
    """The name without a port, as nginx strips it from $proxy_host or $http_host."""
    cdef Py_ssize_t start = 0, colon, close
    if name.startswith(b"["):
        close = name.find(b"]")
        if close > 0:
            start = close
    colon = name.find(b":", start)
    if colon >= 0:
        return name[:colon]
    return name


cdef int upstream_tls_start(UpConn up) noexcept:
    """The TCP connect is done: make the SSL object. -1 (g_up_tls_error set) on failure."""
    global g_up_tls_error
    try:
        return up_tls_start_checked(up)
    except Exception as e:
        g_up_tls_error = "cannot start SSL to upstream (%s) while SSL handshaking to upstream" % e
        return -1


cdef int up_tls_start_checked(UpConn up) except -1:
    global g_up_tls_error
    cdef UpstreamTls t = up.tls
    cdef bytes name
    cdef SessionSlot slot
    up.ssl = tls_new(t.context, up.fd, False, <void *>up)
    if up.ssl == NULL:
        g_up_tls_error = "cannot create an SSL connection while SSL handshaking to upstream"
        return -1
    up.read_wants_write = False
    if t.name is not None and up.client is not None:
        name = template_bytes(t.name, up.client)
    else:
        name = up.ups.host_header
    name = ssl_name_of(name)
    up.tls_name = name
    if t.server_name and name and not name_is_ip(name):
        # RFC 6066: no literal addresses in SNI
        if SSL_set_tlsext_host_name(up.ssl, name) != 1:
            ERR_clear_error()
            g_up_tls_error = 'SSL_set_tlsext_host_name("%s") failed' % name.decode("latin-1")
            return -1
    if t.session_reuse:
        key = (up.ups, up.peer, name)
        slot = t.sessions.get(key)
        if slot is None:
            if len(t.sessions) >= SESSIONS_MAX:
                del t.sessions[next(iter(t.sessions))]      # the oldest entry
            slot = SessionSlot()
            t.sessions[key] = slot
        up.tls_slot = slot
        if slot.sess != NULL:
            SSL_set_session(up.ssl, slot.sess)
    return 0


cdef int upstream_tls_handshake(UpConn up) noexcept:
    """One step of the handshake, then nginx's checks. 1 done, 0 waiting for the socket,
    -1 failed (g_up_tls_error set)."""
    global g_up_tls_error
    try:
        return up_tls_handshake_checked(up)
    except Exception as e:
        g_up_tls_error = "SSL handshake to upstream failed (%s)" % e
        return -1


cdef int up_tls_handshake_checked(UpConn up) except -2:
    global g_up_tls_error
    cdef int r = tls_handshake(up.ssl)
    cdef long rc
    cdef X509 *cert
    cdef bytes name, bare
    cdef int err = errno
    if r == HS_WANT_READ or r == HS_WANT_WRITE:
        return 0
    if r == HS_FAILED:
        if ERR_peek_error() != 0:
            g_up_tls_error = "SSL_do_handshake() failed (SSL: %s) while SSL handshaking to upstream" \
                % openssl_error_text()
        elif err != 0:
            g_up_tls_error = "SSL_do_handshake() failed (%d: %s) while SSL handshaking to upstream" \
                % (err, __import__("os").strerror(err))
        else:
            g_up_tls_error = "peer closed connection in SSL handshake while SSL handshaking to upstream"
        return -1
    if up.tls.verify:
        rc = SSL_get_verify_result(up.ssl)
        if rc != X509_V_OK:
            g_up_tls_error = "upstream SSL certificate verify error: (%d:%s) while SSL handshaking to upstream" \
                % (rc, X509_verify_cert_error_string(rc).decode("latin-1", "replace"))
            return -1
        name = up.tls_name
        cert = SSL_get0_peer_certificate(up.ssl)
        ok = False
        if cert != NULL and name:
            if name_is_ip(name):
                bare = name[1:-1] if name.startswith(b"[") and name.endswith(b"]") else name
                ok = X509_check_ip_asc(cert, bare, 0) == 1
            else:
                ok = X509_check_host(cert, name, len(name), 0, NULL) == 1
        ERR_clear_error()
        if not ok:
            g_up_tls_error = 'upstream SSL certificate does not match "%s" while SSL handshaking to upstream' \
                % (name or b"").decode("latin-1", "replace")
            return -1
    return 1


def upstream_tls_keeps_head(Location loc):
    """proxy_ssl_name reads the request head when a connection is made, which may be after
    a buffered body went through rb: keep the head apart (as log formats do)."""
    loc.phases.keep_head = True
