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
    cdef bytes name
    cdef UpstreamTls t = up.tls
    try:
        if t.name is not None and up.client is not None:
            name = template_bytes(t.name, up.client)
        else:
            name = up.ups.host_header
        name = ssl_name_of(name)
        up.tls_name = name
        up.read_wants_write = False
        if t.session_reuse:
            up.tls_slot = session_slot(t, up.ups, up.peer, name)
        up.ssl = tls_client_new(t, up.fd, <void *>up, name, up.tls_slot)
        return 0 if up.ssl != NULL else -1
    except Exception as e:
        g_up_tls_error = "cannot start SSL to upstream (%s) while SSL handshaking to upstream" % e
        return -1


cdef int upstream_tls_handshake(UpConn up) noexcept:
    """One step of the handshake, then nginx's checks. 1 done, 0 waiting for the socket,
    -1 failed (g_up_tls_error set)."""
    return tls_client_handshake(up.ssl, up.tls, up.tls_name)


cdef SessionSlot session_slot(UpstreamTls t, Upstream ups, int peer, bytes name):
    """Where the sessions of (group, peer, name) are kept."""
    cdef SessionSlot slot
    key = (ups, peer, name)
    slot = t.sessions.get(key)
    if slot is None:
        if len(t.sessions) >= SESSIONS_MAX:
            del t.sessions[next(iter(t.sessions))]      # the oldest entry
        slot = SessionSlot()
        t.sessions[key] = slot
    return slot


cdef SSL *tls_client_new(UpstreamTls t, int fd, void *owner, bytes name,
                         object slot) except? NULL:
    """An SSL object for a connected upstream socket: SNI (proxy_ssl_server_name) and the
    peer's last session (`slot`, a SessionSlot or None). `owner` is the UpConn (its new
    sessions are kept), or NULL (a mirror copy: it may resume a session, it keeps none).
    NULL with g_up_tls_error set on failure."""
    global g_up_tls_error
    cdef SSL *ssl = tls_new(t.context, fd, False, owner)
    if ssl == NULL:
        g_up_tls_error = "cannot create an SSL connection while SSL handshaking to upstream"
        return NULL
    if t.server_name and name and not name_is_ip(name):
        # RFC 6066: no literal addresses in SNI
        if SSL_set_tlsext_host_name(ssl, name) != 1:
            ERR_clear_error()
            tls_free(&ssl, False)
            g_up_tls_error = 'SSL_set_tlsext_host_name("%s") failed' % name.decode("latin-1")
            return NULL
    if slot is not None and (<SessionSlot>slot).sess != NULL:
        SSL_set_session(ssl, (<SessionSlot>slot).sess)
    return ssl


cdef int tls_client_handshake(SSL *ssl, UpstreamTls t, bytes name) noexcept:
    """One step of a client handshake, then nginx's checks. 1 done, 0 waiting for the
    socket, -1 failed (g_up_tls_error set)."""
    global g_up_tls_error
    try:
        return tls_client_handshake_checked(ssl, t, name)
    except Exception as e:
        g_up_tls_error = "SSL handshake to upstream failed (%s)" % e
        return -1


cdef int tls_client_handshake_checked(SSL *ssl, UpstreamTls t, bytes name) except -2:
    global g_up_tls_error
    cdef int r = tls_handshake(ssl)
    cdef long rc
    cdef X509 *cert
    cdef bytes bare
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
    if t.verify:
        rc = SSL_get_verify_result(ssl)
        if rc != X509_V_OK:
            g_up_tls_error = "upstream SSL certificate verify error: (%d:%s) while SSL handshaking to upstream" \
                % (rc, X509_verify_cert_error_string(rc).decode("latin-1", "replace"))
            return -1
        cert = SSL_get0_peer_certificate(ssl)
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


cdef bytes mirror_tls_name(UpstreamTls t, Upstream ups):
    """The name a mirror copy's connection verifies and sends: a copy has no request to
    evaluate variables against, so proxy_ssl_name is a literal there (checked at load)."""
    if t.name is not None:
        return ssl_name_of(t.name.literal)
    return ssl_name_of(ups.host_header)


def upstream_tls_name_is_literal(UpstreamTls t):
    return t.name is None or t.name.is_literal


