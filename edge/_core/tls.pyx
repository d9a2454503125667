# TLS: OpenSSL driven straight from the reactor, as nginx drives it.
#
# An SSL object reads and writes the non-blocking socket itself (a socket BIO); a call that
# cannot go on says WANT_READ or WANT_WRITE, and the connection waits for that event. The
# functions here keep the contracts of the plain ones in buffers.pyx (read_into,
# write_queued, send_file_range), so client.pyx and proxy.pyx switch on `ssl != NULL` at
# those few points and nowhere else.
#
# Contexts (TlsContext) are built by the Python modules (edge/modules/ssl.py for servers,
# edge/modules/proxy_ssl.py for upstreams) from certificate bytes that the master read, so
# every process of a generation builds the same thing from the same text. A connection keeps
# a reference to its context (SSL_new counts one), so an in-place reload never pulls a
# certificate from under a live connection.

include "includes/openssl.pxi"

DEF TLS_RECORD = 16384          # the most plaintext one TLS record carries
DEF TLS_COALESCE = 16384        # output pieces smaller than one record are sent as one

# what a server context asks of the client certificate (ssl_verify_client)
cdef enum VerifyClient:
    VERIFY_OFF = 0
    VERIFY_ON = 1
    VERIFY_OPTIONAL = 2
    VERIFY_OPTIONAL_NO_CA = 3

# tls_handshake() results
cdef enum HandshakeResult:
    HS_DONE = 1
    HS_WANT_READ = 0
    HS_WANT_WRITE = 2
    HS_FAILED = -1

cdef bint g_ktls_logged = False


def openssl_error_text(str prefix=""):
    """Drain OpenSSL's error queue into one line (the reasons, innermost last)."""
    cdef unsigned long e
    cdef char buf[256]
    reasons = []
    while True:
        e = ERR_get_error()
        if e == 0:
            break
        ERR_error_string_n(e, buf, sizeof(buf))
        reasons.append(buf.decode("latin-1"))
    text = "; ".join(reasons) if reasons else "unknown OpenSSL error"
    return prefix + text if prefix else text


cdef int password_from_list(char *buf, int size, int rwflag, void *userdata) noexcept:
    """pem_password_cb: the one password being tried (TlsContext.add_certificate tries
    each line of ssl_password_file in turn, as nginx does)."""
    cdef bytes pw
    if userdata == NULL:
        return 0
    pw = <bytes>userdata
    if len(pw) > size:
        return 0
    memcpy(buf, <const char *>pw, len(pw))
    return len(pw)


cdef BIO *bio_of(bytes data) except NULL:
    cdef BIO *bio = BIO_new_mem_buf(<const char *>data, len(data))
    if bio == NULL:
        raise MemoryError()
    return bio


cdef list read_certificates(bytes pem):
    """Every certificate in a PEM text, as X509 pointers held in Python ints (the caller
    frees them). Raises ValueError when there is none."""
    cdef BIO *bio = bio_of(pem)
    cdef X509 *x
    cdef list out = []
    try:
        while True:
            x = PEM_read_bio_X509(bio, NULL, NULL, NULL)
            if x == NULL:
                break
            out.append(<size_t>x)
    finally:
        BIO_free(bio)
    ERR_clear_error()       # the end of the text reads as "no start line"
    if not out:
        raise ValueError("no certificate found (PEM \"BEGIN CERTIFICATE\" expected)")
    return out


cdef void free_certificates(list certs) noexcept:
    cdef size_t p
    for p in certs:
        X509_free(<X509 *>p)


cdef int sni_callback(SSL *ssl, int *alert, void *arg) noexcept:
    """The client named a server: switch the connection to that server's certificates and
    client-certificate settings (nginx's ranking of server_name; the listen's default
    server when nothing matches, which keeps the context the connection started with)."""
    cdef const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    cdef void *owner = SSL_get_ex_data(ssl, 0)
    cdef Client c
    cdef Server s
    cdef char lower[256]            # HOST_MAX + 1 (client.pyx)
    cdef size_t n, lower_len
    cdef SSL_CTX *target
    if name == NULL or owner == NULL:
        return SSL_TLSEXT_ERR_NOACK
    c = <Client>owner
    n = strlen(name)
    if n == 0 or n > 255:
        return SSL_TLSEXT_ERR_NOACK
    # $ssl_server_name is the name as sent; the server is chosen by the name as nginx
    # validates a host (lowercased, no port, one trailing dot dropped). An invalid name
    # counts as no name: the default server's certificate
    memcpy(c.sni, name, n + 1)
    c.sni_len = n
    if host_normalize(name, n, lower, &lower_len) < 0 or lower_len == 0:
        return SSL_TLSEXT_ERR_OK
    n = lower_len
    if c.binding is None:
        return SSL_TLSEXT_ERR_OK
    s = c.binding.find_server(lower, n)
    if s is None or s.tls is None:
        return SSL_TLSEXT_ERR_OK
    target = (<TlsContext>s.tls).ctx
    if target != SSL_get_SSL_CTX(ssl):
        SSL_set_SSL_CTX(ssl, target)
        # SSL_set_SSL_CTX moves the certificates only; the verification settings and
        # options of the chosen server apply too (as nginx copies them)
        SSL_set_verify(ssl, SSL_CTX_get_verify_mode(target), SSL_CTX_get_verify_callback(target))
        SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(target))
        SSL_clear_options(ssl, SSL_get_options(ssl) & ~SSL_CTX_get_options(target))
        SSL_set_options(ssl, SSL_CTX_get_options(target))
    return SSL_TLSEXT_ERR_OK


cdef const unsigned char *ALPN_HTTP11 = b"\x08http/1.1"


cdef int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                     const unsigned char *inp, unsigned int inlen, void *arg) noexcept:
    """ALPN: http/1.1 when the client offers it. A client that offers only other protocols
    fails the handshake (no_application_protocol), as nginx 1.21.4 and later answer."""
    cdef unsigned char *chosen = NULL
    cdef unsigned char chosen_len = 0
    if SSL_select_next_proto(&chosen, &chosen_len, ALPN_HTTP11, 9, inp, inlen) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_ALERT_FATAL
    out[0] = chosen
    outlen[0] = chosen_len
    return SSL_TLSEXT_ERR_OK


cdef int accept_any_certificate(int preverify_ok, X509_STORE_CTX *store) noexcept:
    """The handshake goes on whatever the client certificate's verdict; the request then
    gets nginx's 400 ("No required SSL certificate was sent", "The SSL certificate error")
    from the verification result, which also feeds $ssl_client_verify."""
    return 1


cdef class TlsContext:
    """One SSL_CTX: a server's certificates and settings (server side), or what a proxied
    location presents and checks (client side)."""
    cdef SSL_CTX *ctx
    cdef readonly bint server_side
    cdef readonly int verify_client         # VerifyClient (server side)
    cdef readonly list warnings             # e.g. an expired certificate: logged, not fatal
    cdef readonly list key_types            # "RSA", "EC" ... of the certificates loaded
    cdef readonly bint ktls_asked           # ssl_conf_command Options KTLS

    def __cinit__(self, bint server_side=True):
        self.ctx = SSL_CTX_new(TLS_server_method() if server_side else TLS_client_method())
        if self.ctx == NULL:
            raise MemoryError(openssl_error_text())
        self.server_side = server_side
        self.verify_client = VERIFY_OFF
        self.warnings = []
        self.key_types = []
        SSL_CTX_set_options(self.ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_SINGLE_DH_USE
                            | SSL_OP_SINGLE_ECDH_USE | SSL_OP_IGNORE_UNEXPECTED_EOF)
        # partial writes and a moving buffer: output is written from wb, whose data may be
        # reallocated and extended between a WANT_WRITE and the retry
        SSL_CTX_set_mode(self.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                         | SSL_MODE_RELEASE_BUFFERS)
        SSL_CTX_set_min_proto_version(self.ctx, TLS1_2_VERSION)
        if server_side:
            SSL_CTX_set_tlsext_servername_callback(self.ctx, <servername_cb_t>sni_callback)
            SSL_CTX_set_alpn_select_cb(self.ctx, <alpn_select_cb_t>alpn_select, NULL)
            # without a shared cache (ssl_session_cache), no server-side session cache at
            # all: a session that only one worker knows would resume by chance
            SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_OFF)
            SSL_CTX_set_session_id_context(self.ctx, <const unsigned char *>"edge", 4)

    def __dealloc__(self):
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)
            self.ctx = NULL

    def set_protocols(self, list names):
        """ssl_protocols / proxy_ssl_protocols: exactly the versions named."""
        versions = {"TLSv1": TLS1_VERSION, "TLSv1.1": TLS1_1_VERSION,
                    "TLSv1.2": TLS1_2_VERSION, "TLSv1.3": TLS1_3_VERSION}
        flags = {"TLSv1": SSL_OP_NO_TLSv1, "TLSv1.1": SSL_OP_NO_TLSv1_1,
                 "TLSv1.2": SSL_OP_NO_TLSv1_2, "TLSv1.3": SSL_OP_NO_TLSv1_3}
        chosen = [versions[n] for n in names]
        SSL_CTX_set_min_proto_version(self.ctx, min(chosen))
        SSL_CTX_set_max_proto_version(self.ctx, max(chosen))
        off = 0
        for name, flag in flags.items():
            if name not in names:
                off |= flag
        SSL_CTX_clear_options(self.ctx, SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1 | SSL_OP_NO_TLSv1_2
                              | SSL_OP_NO_TLSv1_3)
        if off:
            SSL_CTX_set_options(self.ctx, off)

    def set_ciphers(self, bytes ciphers):
        """ssl_ciphers: the TLS 1.2 and older cipher list (TLS 1.3 suites are set with
        ssl_conf_command Ciphersuites, as in nginx)."""
        if SSL_CTX_set_cipher_list(self.ctx, ciphers) != 1:
            raise ValueError(openssl_error_text('invalid cipher list "%s": ' % ciphers.decode()))

    def prefer_server_ciphers(self, bint on):
        if on:
            SSL_CTX_set_options(self.ctx, SSL_OP_CIPHER_SERVER_PREFERENCE)
        else:
            SSL_CTX_clear_options(self.ctx, SSL_OP_CIPHER_SERVER_PREFERENCE)

    def set_curves(self, bytes curves):
        """ssl_ecdh_curve: `auto` keeps OpenSSL's list; otherwise a colon-separated list."""
        if curves == b"auto":
            return
        if SSL_CTX_set1_groups_list(self.ctx, curves) != 1:
            raise ValueError(openssl_error_text('invalid curve list "%s": ' % curves.decode()))

    def set_dhparam(self, bytes pem):
        cdef BIO *bio = bio_of(pem)
        cdef EVP_PKEY *params = PEM_read_bio_Parameters(bio, NULL)
        BIO_free(bio)
        if params == NULL:
            raise ValueError(openssl_error_text("cannot read DH parameters: "))
        if SSL_CTX_set0_tmp_dh_pkey(self.ctx, params) != 1:
            EVP_PKEY_free(params)
            raise ValueError(openssl_error_text("cannot use DH parameters: "))

    def add_certificate(self, bytes cert_pem, bytes key_pem, list passwords=None):
        """A certificate chain (the leaf first) and its key. Several may be added when their
        key types differ (RSA and ECDSA): the handshake then picks the one the client's
        signature algorithms allow. Raises ValueError naming what is wrong; an expired
        certificate only adds to self.warnings."""
        cdef list certs = read_certificates(cert_pem)
        cdef X509 *leaf = <X509 *><size_t>certs[0]
        cdef EVP_PKEY *key = NULL
        cdef BIO *bio
        cdef bytes pw
        cdef size_t p
        try:
            candidates = passwords if passwords else [None]
            for pw in candidates:
                bio = bio_of(key_pem)
                key = PEM_read_bio_PrivateKey(bio, NULL, <pem_password_cb>password_from_list,
                                              <void *>pw if pw is not None else NULL)
                BIO_free(bio)
                if key != NULL:
                    break
            if key == NULL:
                raise ValueError(openssl_error_text(
                    "cannot load certificate key%s: " % (" (wrong or missing password?)"
                                                          if passwords is not None else "")))
            ERR_clear_error()
            if X509_check_private_key(leaf, key) != 1:
                ERR_clear_error()
                raise ValueError("the certificate and the key do not match "
                                 "(key values mismatch)")
            if SSL_CTX_use_certificate(self.ctx, leaf) != 1:
                raise ValueError(openssl_error_text("cannot use the certificate: "))
            # the chain belongs to the certificate just set (OpenSSL keeps one per key type)
            SSL_CTX_clear_chain_certs(self.ctx)
            for p in certs[1:]:
                if SSL_CTX_add1_chain_cert(self.ctx, <X509 *>p) != 1:
                    raise ValueError(openssl_error_text("cannot add a chain certificate: "))
            if SSL_CTX_use_PrivateKey(self.ctx, key) != 1:
                raise ValueError(openssl_error_text("cannot use the certificate key: "))
            kind = EVP_PKEY_get_base_id(key)
            self.key_types.append("RSA" if kind == EVP_PKEY_RSA else
                                  "EC" if kind == EVP_PKEY_EC else str(kind))
            if X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0:
                self.warnings.append("the certificate has expired")
            elif X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0:
                self.warnings.append("the certificate is not yet valid")
        finally:
            if key != NULL:
                EVP_PKEY_free(key)
            free_certificates(certs)
            ERR_clear_error()

    def trust(self, bytes pem, bint advertise=False):
        """Add CA certificates to the verification store; with `advertise`, also to the
        list of acceptable CAs the server sends (ssl_client_certificate)."""
        cdef list certs = read_certificates(pem)
        cdef X509_STORE *store = SSL_CTX_get_cert_store_typed(self.ctx)
        cdef size_t p
        try:
            for p in certs:
                X509_STORE_add_cert(store, <X509 *>p)
                if advertise:
                    SSL_CTX_add_client_CA(self.ctx, <X509 *>p)
        finally:
            free_certificates(certs)
            ERR_clear_error()

    def set_verify_client(self, int mode, int depth):
        """ssl_verify_client on|optional|optional_no_ca, ssl_verify_depth."""
        self.verify_client = mode
        if mode == VERIFY_OFF:
            SSL_CTX_set_verify(self.ctx, SSL_VERIFY_NONE, NULL)
        else:
            SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, <SSL_verify_cb>accept_any_certificate)
        SSL_CTX_set_verify_depth(self.ctx, depth)

    def set_verify_peer(self, bint on, int depth):
        """proxy_ssl_verify: an upstream whose certificate does not verify fails the
        handshake."""
        SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER if on else SSL_VERIFY_NONE, NULL)
        SSL_CTX_set_verify_depth(self.ctx, depth)

    def conf_command(self, bytes name, bytes value):
        """ssl_conf_command: handed to OpenSSL's SSL_CONF_cmd, as nginx does."""
        cdef SSL_CONF_CTX *cctx = SSL_CONF_CTX_new()
        cdef int r
        if cctx == NULL:
            raise MemoryError()
        SSL_CONF_CTX_set_flags(cctx, SSL_CONF_FLAG_FILE | SSL_CONF_FLAG_CERTIFICATE
                               | (SSL_CONF_FLAG_SERVER if self.server_side else SSL_CONF_FLAG_CLIENT))
        SSL_CONF_CTX_set_ssl_ctx(cctx, self.ctx)
        r = SSL_CONF_cmd(cctx, name, value)
        if r > 0:
            r = SSL_CONF_CTX_finish(cctx)
        SSL_CONF_CTX_free(cctx)
        if r <= 0:
            if r == -2:
                ERR_clear_error()
                raise ValueError('unknown ssl_conf_command "%s"' % name.decode())
            raise ValueError(openssl_error_text('ssl_conf_command "%s" "%s" failed: '
                                                % (name.decode(), value.decode())))
        if name.lower() == b"options" and b"ktls" in value.lower():
            self.ktls_asked = not value.lower().startswith(b"-")

    def set_session_timeout(self, long seconds):
        SSL_CTX_set_timeout(self.ctx, seconds)

    def has_certificate(self):
        return SSL_CTX_get0_certificate(self.ctx) != NULL


# ---- per connection ---------------------------------------------------------------------

cdef SSL *tls_new(TlsContext context, int fd, bint server_side, void *owner) noexcept:
    """An SSL object for a connected socket; NULL when OpenSSL cannot make one."""
    cdef SSL *ssl = SSL_new(context.ctx)
    if ssl == NULL:
        ERR_clear_error()
        return NULL
    if SSL_set_fd(ssl, fd) != 1:
        SSL_free(ssl)
        ERR_clear_error()
        return NULL
    if server_side:
        SSL_set_accept_state(ssl)
    else:
        SSL_set_connect_state(ssl)
    SSL_set_ex_data(ssl, 0, owner)
    return ssl


cdef int tls_handshake(SSL *ssl) noexcept:
    """One step of the handshake: HS_DONE, HS_WANT_READ, HS_WANT_WRITE or HS_FAILED."""
    cdef int r = SSL_do_handshake(ssl)
    cdef int err
    if r == 1:
        return HS_DONE
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_READ:
        return HS_WANT_READ
    if err == SSL_ERROR_WANT_WRITE:
        return HS_WANT_WRITE
    return HS_FAILED


cdef void tls_free(SSL **pssl, bint send_close_notify) noexcept:
    """End a connection's TLS: send close_notify when the session is healthy (one
    non-blocking try; a full socket just loses it, as nginx gives up too), then free."""
    cdef SSL *ssl = pssl[0]
    if ssl == NULL:
        return
    pssl[0] = NULL
    SSL_set_ex_data(ssl, 0, NULL)
    if send_close_notify and SSL_is_init_finished(ssl):
        SSL_shutdown(ssl)
    else:
        SSL_set_quiet_shutdown(ssl, 1)
    SSL_free(ssl)
    ERR_clear_error()


cdef int tls_read_into(SSL *ssl, Buf *b, size_t limit, size_t chunk, bint *readable,
                       bint *read_wants_write) noexcept:
    """read_into() over TLS: one SSL_read into b. RD_* results. Unlike a plain socket, a
    short read does not mean the socket is drained (a read returns one record at most), so
    only WANT_READ clears *readable. WANT_WRITE (the session must send before it can read
    on) also clears it and sets *read_wants_write: the next writable event reads again."""
    cdef int r, err
    cdef size_t room
    cdef int full = read_room(b, limit, chunk, &room)
    if full != RD_DATA:
        return full
    r = SSL_read(ssl, b.data + b.end, <int>room)
    if r > 0:
        b.end += r
        return RD_DATA
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_READ:
        readable[0] = False
        return RD_AGAIN
    if err == SSL_ERROR_WANT_WRITE:
        readable[0] = False
        read_wants_write[0] = True
        return RD_AGAIN
    readable[0] = False
    ERR_clear_error()
    if err == SSL_ERROR_ZERO_RETURN:
        return RD_EOF       # close_notify
    if err == SSL_ERROR_SYSCALL and (errno == 0 or errno == ECONNRESET):
        return RD_EOF if errno == 0 else RD_ERROR
    return RD_ERROR


cdef ssize_t tls_write_some(SSL *ssl, const char *p, size_t n) noexcept:
    """write() over TLS for one buffer: bytes written, 0 when the socket is full, -1 on
    error."""
    cdef int r, err
    if n == 0:
        return 0
    r = SSL_write(ssl, p, <int>(n if n < 0x40000000 else 0x40000000))
    if r > 0:
        return r
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_WRITE or err == SSL_ERROR_WANT_READ:
        return 0
    ERR_clear_error()
    return -1


cdef inline int gather(Buf *wb, const char **p, size_t *n, size_t most) noexcept:
    """Move up to `most` bytes from the front of a piece (*p, *n) to the end of wb."""
    if most > n[0]:
        most = n[0]
    if buf_append(wb, p[0], most) < 0:
        return -1
    p[0] += most
    n[0] -= most
    return 0


cdef int tls_write_queued(SSL *ssl, Buf *wb, const char **win, size_t *win_len,
                          const char **suf, size_t *suf_len, bint *wrote) noexcept:
    """write_queued() over TLS: the same pieces in the same order, as TLS records. Small
    pieces are first gathered into wb so that a response head and its body leave in one
    record and one system call (the plain path gets that from writev)."""
    cdef const char *p
    cdef size_t n, take
    cdef ssize_t got
    while True:
        if wb.end > wb.start and wb.end - wb.start < TLS_COALESCE and (win_len[0] or suf_len[0]):
            take = TLS_COALESCE - (wb.end - wb.start)
            if win_len[0]:
                if gather(wb, win, win_len, take) < 0:
                    return -1
            elif gather(wb, suf, suf_len, take) < 0:
                return -1
            continue
        if wb.end > wb.start:
            p = wb.data + wb.start
            n = wb.end - wb.start
        elif win_len[0]:
            p = win[0]
            n = win_len[0]
        elif suf_len[0]:
            p = suf[0]
            n = suf_len[0]
        else:
            buf_reset(wb)
            return 1
        got = tls_write_some(ssl, p, n)
        if got <= 0:
            return <int>got
        wrote[0] = True
        n = <size_t>got
        if wb.end > wb.start:
            wb.start += n
            if wb.start == wb.end:
                buf_reset(wb)
        elif win_len[0]:
            win[0] += n
            win_len[0] -= n
        else:
            suf[0] += n
            suf_len[0] -= n


cdef int tls_send_file_range(SSL *ssl, int fd, int64_t *offset, int64_t end, bint *wrote) noexcept:
    """send_file_range() over TLS. With kTLS the kernel encrypts and SSL_sendfile sends the
    pages; otherwise the file is read a record at a time and written as TLS records. A retry
    after WANT_WRITE reads the same bytes again from the same offset."""
    cdef char chunk[TLS_RECORD]
    cdef ssize_t got
    cdef int err
    cdef int64_t left
    if BIO_get_ktls_send(SSL_get_wbio(ssl)):
        while offset[0] < end:
            left = end - offset[0]
            got = SSL_sendfile(ssl, fd, offset[0], <size_t>(left if left < 1048576 else 1048576), 0)
            if got <= 0:
                err = SSL_get_error(ssl, <int>got)
                if err == SSL_ERROR_WANT_WRITE:
                    return 0
                ERR_clear_error()
                return -1
            offset[0] += got
            wrote[0] = True
        return 1
    while offset[0] < end:
        left = end - offset[0]
        got = pread(fd, chunk, <size_t>(left if left < TLS_RECORD else TLS_RECORD), offset[0])
        if got <= 0:
            if got < 0 and errno == EINTR:
                continue
            return -1
        got = tls_write_some(ssl, chunk, <size_t>got)
        if got <= 0:
            return <int>got
        offset[0] += got
        wrote[0] = True
    return 1


cdef bint tls_uses_ktls(SSL *ssl) noexcept:
    return BIO_get_ktls_send(SSL_get_wbio(ssl)) > 0


def ktls_available():
    """True when the kernel offers the "tls" upper-layer protocol (kTLS)."""
    import builtins     # `open` is the C call here (system.pxi)
    try:
        with builtins.open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
            return "tls" in f.read().split()
    except OSError:
        return False


def openssl_version():
    return OpenSSL_version(0).decode()


# ---- the client side of a TLS listener (client.pyx calls these) --------------------------

cdef int pp_peek(int fd, Buf *b, size_t limit) noexcept:
    """What the socket holds, looked at without taking it (MSG_PEEK), into b from its
    start. RD_DATA, RD_AGAIN, RD_EOF or RD_ERROR."""
    cdef ssize_t r
    buf_reset(b)
    if b.cap < limit and buf_reserve(b, limit) < 0:
        return RD_ERROR
    while True:
        r = recv(fd, b.data, limit, MSG_PEEK)
        if r > 0:
            b.end = <size_t>r
            return RD_DATA
        if r == 0:
            return RD_EOF
        if errno == EINTR:
            continue
        return RD_AGAIN if errno == EAGAIN else RD_ERROR


cdef int pp_consume(int fd, int n) noexcept:
    """Take exactly n bytes that pp_peek saw (they are in the socket already)."""
    cdef char scratch[512]
    cdef ssize_t r
    cdef int want
    while n > 0:
        want = n if n < 512 else 512
        r = recv(fd, scratch, want, 0)
        if r <= 0:
            if r < 0 and errno == EINTR:
                continue
            return -1
        n -= <int>r
    return 0


cdef void client_tls_begin(Client c) noexcept:
    """A connection on a TLS listener waits for its handshake (ssl_handshake_timeout).
    TCP_NODELAY from here, as nginx sets it when a handshake begins (handshake flights
    are small writes in a row)."""
    c.set_nodelay()
    c.state = CS_HANDSHAKE
    timer_arm(c, c.binding.t_handshake, g_now)


cdef void client_tls_step(Client c):
    """CS_HANDSHAKE. The first byte tells a TLS record (0x16) or an SSLv2-style hello (high
    bit set) from plain HTTP, as nginx tells them; plain HTTP is read as a request and
    answered with nginx's 400. Then the handshake runs until it is done."""
    cdef unsigned char first
    cdef ssize_t r
    cdef int hs
    cdef Server default
    if c.ssl == NULL:
        while True:
            r = recv(c.fd, &first, 1, MSG_PEEK)
            if r >= 0 or errno != EINTR:
                break
        if r < 0:
            if errno == EAGAIN:
                c.readable = False
                return
            c.close()
            return
        if r == 0:
            c.close()
            return
        if not (first & 0x80 or first == 0x16):
            c.plain_on_tls = True
            c.state = CS_HEAD
            timer_arm(c, c.binding.t_header, g_now)
            c.serve_heads()
            return
        default = c.binding.default
        if default is None or default.tls is None:
            c.close()
            return
        c.ssl = tls_new(<TlsContext>default.tls, c.fd, True, <void *>c)
        if c.ssl == NULL:
            c.close()
            return
    hs = tls_handshake(c.ssl)
    if hs == HS_DONE:
        if not g_ktls_logged and (<TlsContext>c.binding.default.tls).ktls_asked:
            report_ktls(c.ssl)
        c.state = CS_HEAD
        timer_arm(c, c.binding.t_header, g_now)
        c.readable = True
        c.serve_heads()
    elif hs == HS_FAILED:
        if g_log_info:
            if ERR_peek_error() == 0:
                log_connection("info", c, "peer closed connection in SSL handshake", 0)
            else:
                log_connection("info", c, openssl_error_text("SSL_do_handshake() failed: ").encode(), 0)
        ERR_clear_error()
        c.close()
    elif hs == HS_WANT_READ:
        c.readable = False


cdef void report_ktls(SSL *ssl):
    """Once per worker, when `ssl_conf_command Options KTLS` asked for kernel TLS: say
    whether the kernel took the record layer (docs/tls.md)."""
    global g_ktls_logged
    g_ktls_logged = True
    if g_loop is None:
        return
    if tls_uses_ktls(ssl):
        g_loop.log_notice("kTLS in use: the kernel encrypts what this worker sends")
    else:
        g_loop.log_notice("kTLS asked for but not in use (no \"tls\" upper-layer protocol in "
                          "this kernel, or a cipher it cannot offload): records are encrypted "
                          "in user space")


cdef bint verify_error_optional(long code) noexcept:
    """Verification failures that `ssl_verify_client optional_no_ca` lets through: the
    certificate is fine but its issuer is not trusted here (nginx's list)."""
    return (code == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
            or code == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
            or code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
            or code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
            or code == X509_V_ERR_CERT_UNTRUSTED
            or code == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE)


cdef bint client_tls_refuses(Client c):
    """After routing, as nginx's ngx_http_process_request: plain HTTP on a TLS port gets
    400 "The plain HTTP request was sent to HTTPS port"; the server's ssl_verify_client
    gets 400 "The SSL certificate error" or "No required SSL certificate was sent"."""
    cdef TlsContext tls
    cdef long code
    if c.plain_on_tls:
        c.send_error(497, "client sent plain HTTP request to HTTPS port")
        return True
    if c.ssl == NULL or c.server is None or c.server.tls is None:
        return False
    tls = <TlsContext>c.server.tls
    if tls.verify_client == VERIFY_OFF:
        return False
    code = SSL_get_verify_result(c.ssl)
    if code != X509_V_OK and not (tls.verify_client == VERIFY_OPTIONAL_NO_CA
                                  and verify_error_optional(code)):
        c.send_error(495, ("client SSL certificate verify error: (%d:%s)"
                           % (code, X509_verify_cert_error_string(code).decode())).encode())
        return True
    if tls.verify_client == VERIFY_ON and SSL_get0_peer_certificate(c.ssl) == NULL:
        c.send_error(496, "client sent no required SSL certificate")
        return True
    return False


cdef ssize_t tls_read_discard(SSL *ssl, char *buf, size_t n) noexcept:
    """read() for a lingering close over TLS: >0 bytes, -1 with errno EAGAIN when the
    session waits for the socket, 0 at the end or on any error."""
    cdef int r = SSL_read(ssl, buf, <int>n)
    cdef int err
    if r > 0:
        return r
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
        (&errno)[0] = EAGAIN
        return -1
    ERR_clear_error()
    return 0


# ---- $ssl_* variables ---------------------------------------------------------------------

cdef bint append_tls_variable(int v, Client c, Buf *out) noexcept:
    """$ssl_protocol, $ssl_cipher, $ssl_server_name, $ssl_session_reused,
    $ssl_client_verify, $ssl_client_s_dn, $ssl_client_fingerprint, $https: nginx's
    values. False (not found) on a plain connection, as nginx."""
    cdef const char *p
    cdef X509 *cert
    cdef long code
    cdef unsigned char md[64]
    cdef unsigned int mdlen = 0
    cdef unsigned int i
    cdef BIO *bio
    cdef char *data
    cdef long n
    cdef SSL *ssl = c.ssl
    if v == VAR_HTTPS:
        if ssl != NULL:
            buf_append_str(out, "on")
        return True
    if ssl == NULL:
        return False
    if v == VAR_SSL_PROTOCOL:
        buf_append_str(out, SSL_get_version(ssl))
    elif v == VAR_SSL_CIPHER:
        p = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl))
        if p == NULL:
            return False
        buf_append_str(out, p)
    elif v == VAR_SSL_SERVER_NAME:
        if c.sni_len == 0:
            return False
        buf_append(out, c.sni, c.sni_len)
    elif v == VAR_SSL_SESSION_REUSED:
        buf_append_str(out, "r" if SSL_session_reused(ssl) else ".")
    elif v == VAR_SSL_CLIENT_VERIFY:
        cert = SSL_get0_peer_certificate(ssl)
        if cert == NULL:
            buf_append_str(out, "NONE")
        else:
            code = SSL_get_verify_result(ssl)
            if code == X509_V_OK:
                buf_append_str(out, "SUCCESS")
            else:
                buf_append_str(out, "FAILED:")
                buf_append_str(out, X509_verify_cert_error_string(code))
    elif v == VAR_SSL_CLIENT_S_DN:
        cert = SSL_get0_peer_certificate(ssl)
        if cert == NULL:
            return False
        bio = BIO_new(BIO_s_mem())
        if bio == NULL:
            return False
        X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253)
        n = BIO_get_mem_data(bio, &data)
        if n > 0:
            buf_append(out, data, <size_t>n)
        BIO_free(bio)
    elif v == VAR_SSL_CLIENT_FINGERPRINT:
        cert = SSL_get0_peer_certificate(ssl)
        if cert == NULL or X509_digest(cert, EVP_sha1(), md, &mdlen) != 1:
            return False
        for i in range(mdlen):
            buf_append(out, &HEX_LOWER[md[i] >> 4], 1)
            buf_append(out, &HEX_LOWER[md[i] & 15], 1)
    else:
        return False
    return True


