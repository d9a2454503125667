# C declarations of the OpenSSL 3 API that the TLS code (tls.pyx, tls_sessions.pyx and the
# upstream side in proxy.pyx) calls directly: no Python call per record. Several of these
# are macros in the headers (SSL_CTX_set_mode, SSL_set_tlsext_host_name ...); Cython emits
# the call text as written, so they are declared here as the functions they behave as.

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL

# callback types, for casting our callbacks (they run inside OpenSSL calls that the worker
# makes holding the GIL, so they may touch Python objects)
ctypedef int (*pem_password_cb)(char *buf, int size, int rwflag, void *userdata) noexcept nogil
ctypedef int (*servername_cb_t)(SSL *, int *, void *) noexcept nogil
ctypedef int (*alpn_select_cb_t)(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                 const unsigned char *inp, unsigned int inlen, void *arg) noexcept nogil

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL_METHOD
    ctypedef struct SSL_SESSION
    ctypedef struct SSL_CIPHER
    ctypedef struct SSL_CONF_CTX
    ctypedef struct X509
    ctypedef struct X509_NAME
    ctypedef struct X509_STORE_CTX
    ctypedef struct X509_VERIFY_PARAM
    ctypedef struct EVP_PKEY
    ctypedef struct EVP_MD
    ctypedef struct EVP_CIPHER
    ctypedef struct EVP_CIPHER_CTX
    ctypedef struct EVP_MAC
    ctypedef struct EVP_MAC_CTX
    ctypedef struct BIO
    ctypedef struct BIO_METHOD
    ctypedef struct OSSL_PARAM:
        pass
    ctypedef struct DH
    ctypedef struct ENGINE

    ctypedef int (*SSL_verify_cb)(int preverify_ok, X509_STORE_CTX *x509_ctx)

    const SSL_METHOD *TLS_server_method()
    const SSL_METHOD *TLS_client_method()
    const SSL_METHOD *TLS_method()

    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_up_ref(SSL_CTX *ctx)
    unsigned long SSL_CTX_set_options(SSL_CTX *ctx, unsigned long op)
    unsigned long SSL_CTX_clear_options(SSL_CTX *ctx, unsigned long op)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *s)
    int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *s)
    int SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *s)
    int SSL_CTX_use_certificate(SSL_CTX *ctx, X509 *x)
    int SSL_CTX_add0_chain_cert(SSL_CTX *ctx, X509 *x)
    int SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *x)
    int SSL_CTX_clear_chain_certs(SSL_CTX *ctx)
    int SSL_CTX_use_PrivateKey(SSL_CTX *ctx, EVP_PKEY *pkey)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    int SSL_CTX_set_current_cert(SSL_CTX *ctx, long op)
    X509 *SSL_CTX_get0_certificate(const SSL_CTX *ctx)
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *CAfile, const char *CApath)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, SSL_verify_cb verify_callback)
    void SSL_CTX_set_verify_depth(SSL_CTX *ctx, int depth)
    void SSL_CTX_set_client_CA_list(SSL_CTX *ctx, void *name_list)
    void *SSL_load_client_CA_file(const char *file)
    void *SSL_CTX_get_cert_store(const SSL_CTX *ctx)
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid_ctx,
                                       unsigned int sid_ctx_len)
    long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode)
    long SSL_CTX_set_timeout(SSL_CTX *ctx, long t)
    long SSL_CTX_sess_set_cache_size(SSL_CTX *ctx, long t)
    int SSL_CTX_set_num_tickets(SSL_CTX *ctx, size_t num_tickets)
    void SSL_CTX_set_alpn_select_cb(SSL_CTX *ctx, alpn_select_cb_t cb, void *arg)
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx, servername_cb_t cb)
    long SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg)
    long SSL_CTX_set_tmp_dh(SSL_CTX *ctx, DH *dh)
    int SSL_CTX_set0_tmp_dh_pkey(SSL_CTX *ctx, EVP_PKEY *dhpkey)
    long SSL_CTX_set_dh_auto(SSL_CTX *ctx, long onoff)
    void SSL_CTX_set_default_passwd_cb(SSL_CTX *ctx, pem_password_cb cb)
    void SSL_CTX_set_default_passwd_cb_userdata(SSL_CTX *ctx, void *u)
    int SSL_CTX_set_ex_data(SSL_CTX *ctx, int idx, void *data)
    void *SSL_CTX_get_ex_data(const SSL_CTX *ctx, int idx)
    void SSL_CTX_sess_set_new_cb(SSL_CTX *ctx, int (*new_session_cb)(SSL *, SSL_SESSION *) noexcept)
    void SSL_CTX_sess_set_remove_cb(SSL_CTX *ctx, void (*remove_session_cb)(SSL_CTX *ctx, SSL_SESSION *) noexcept)
    void SSL_CTX_sess_set_get_cb(SSL_CTX *ctx, SSL_SESSION *(*get_session_cb)(SSL *, const unsigned char *, int, int *) noexcept)
    int SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX *ctx,
        int (*fp)(SSL *s, unsigned char key_name[16], unsigned char *iv,
                  EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc) noexcept)
    X509_VERIFY_PARAM *SSL_CTX_get0_param(SSL_CTX *ctx)

    SSL_CONF_CTX *SSL_CONF_CTX_new()
    void SSL_CONF_CTX_free(SSL_CONF_CTX *cctx)
    unsigned int SSL_CONF_CTX_set_flags(SSL_CONF_CTX *cctx, unsigned int flags)
    void SSL_CONF_CTX_set_ssl_ctx(SSL_CONF_CTX *cctx, SSL_CTX *ctx)
    int SSL_CONF_cmd(SSL_CONF_CTX *cctx, const char *cmd, const char *value)
    int SSL_CONF_CTX_finish(SSL_CONF_CTX *cctx)

    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    void SSL_set_accept_state(SSL *ssl)
    void SSL_set_connect_state(SSL *ssl)
    int SSL_do_handshake(SSL *ssl)
    int SSL_read(SSL *ssl, void *buf, int num)
    int SSL_write(SSL *ssl, const void *buf, int num)
    int SSL_peek(SSL *ssl, void *buf, int num)
    int SSL_pending(const SSL *ssl)
    int SSL_has_pending(const SSL *s)
    int SSL_shutdown(SSL *ssl)
    void SSL_set_quiet_shutdown(SSL *ssl, int mode)
    void SSL_set_shutdown(SSL *ssl, int mode)
    int SSL_get_error(const SSL *ssl, int ret)
    int SSL_is_init_finished(const SSL *s)
    int SSL_in_init(const SSL *s)
    SSL_CTX *SSL_set_SSL_CTX(SSL *ssl, SSL_CTX *ctx)
    SSL_CTX *SSL_get_SSL_CTX(const SSL *ssl)
    unsigned long SSL_set_options(SSL *ssl, unsigned long op)
    unsigned long SSL_CTX_get_options(const SSL_CTX *ctx)
    unsigned long SSL_get_options(const SSL *s)
    unsigned long SSL_clear_options(SSL *s, unsigned long op)
    void SSL_set_verify(SSL *s, int mode, SSL_verify_cb verify_callback)
    void SSL_set_verify_depth(SSL *s, int depth)
    int SSL_CTX_get_verify_mode(const SSL_CTX *ctx)
    int SSL_CTX_get_verify_depth(const SSL_CTX *ctx)
    SSL_verify_cb SSL_CTX_get_verify_callback(const SSL_CTX *ctx)
    long SSL_get_verify_result(const SSL *ssl)
    int SSL_set_ex_data(SSL *ssl, int idx, void *data)
    void *SSL_get_ex_data(const SSL *ssl, int idx)
    int SSL_get_ex_data_X509_STORE_CTX_idx()
    long SSL_set_tlsext_host_name(SSL *s, const char *name)
    const char *SSL_get_servername(const SSL *s, const int type)
    int SSL_set1_host(SSL *s, const char *hostname)
    void SSL_set_hostflags(SSL *s, unsigned int flags)
    int SSL_set_session(SSL *ssl, SSL_SESSION *session)
    SSL_SESSION *SSL_get1_session(SSL *ssl)
    SSL_SESSION *SSL_get_session(const SSL *ssl)
    int SSL_session_reused(const SSL *ssl)
    int SSL_SESSION_is_resumable(const SSL_SESSION *s)
    void SSL_SESSION_free(SSL_SESSION *session)
    const unsigned char *SSL_SESSION_get_id(const SSL_SESSION *s, unsigned int *len)
    long SSL_SESSION_get_time(const SSL_SESSION *s)
    long SSL_SESSION_get_timeout(const SSL_SESSION *s)
    int i2d_SSL_SESSION(SSL_SESSION *inp, unsigned char **pp)
    SSL_SESSION *d2i_SSL_SESSION(SSL_SESSION **a, const unsigned char **pp, long length)
    const char *SSL_get_version(const SSL *ssl)
    int SSL_version(const SSL *ssl)
    const SSL_CIPHER *SSL_get_current_cipher(const SSL *ssl)
    const char *SSL_CIPHER_get_name(const SSL_CIPHER *cipher)
    X509 *SSL_get_peer_certificate(const SSL *ssl)
    X509 *SSL_get1_peer_certificate(const SSL *ssl)
    X509 *SSL_get0_peer_certificate(const SSL *ssl)
    X509 *SSL_get_certificate(const SSL *ssl)
    void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len)
    int SSL_set_alpn_protos(SSL *ssl, const unsigned char *protos, unsigned int protos_len)
    int SSL_select_next_proto(unsigned char **out, unsigned char *outlen,
                              const unsigned char *server, unsigned int server_len,
                              const unsigned char *client, unsigned int client_len)
    long SSL_set_mode(SSL *ssl, long mode)
    int SSL_use_certificate(SSL *ssl, X509 *x)
    int SSL_use_PrivateKey(SSL *ssl, EVP_PKEY *pkey)
    ssize_t SSL_sendfile(SSL *s, int fd, long offset, size_t size, int flags)
    BIO *SSL_get_wbio(const SSL *s)
    BIO *SSL_get_rbio(const SSL *s)
    int SSL_get_ex_new_index(long argl, void *argp, void *new_func, void *dup_func, void *free_func)
    int SSL_CTX_get_ex_new_index(long argl, void *argp, void *new_func, void *dup_func, void *free_func)
    int SSL_get_fd(const SSL *ssl)
    int SSL_client_hello_get0_ext(SSL *s, unsigned int type, const unsigned char **out, size_t *outlen)
    void SSL_CTX_set_client_hello_cb(SSL_CTX *c, int (*cb)(SSL *s, int *al, void *arg) noexcept, void *arg)

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_WANT_X509_LOOKUP
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_ERROR_WANT_CONNECT
        SSL_ERROR_WANT_ACCEPT
        SSL_ERROR_WANT_CLIENT_HELLO_CB

        SSL_OP_NO_SSLv3
        SSL_OP_NO_TLSv1
        SSL_OP_NO_TLSv1_1
        SSL_OP_NO_TLSv1_2
        SSL_OP_NO_TLSv1_3
        SSL_OP_NO_COMPRESSION
        SSL_OP_NO_RENEGOTIATION
        SSL_OP_NO_TICKET
        SSL_OP_CIPHER_SERVER_PREFERENCE
        SSL_OP_SINGLE_DH_USE
        SSL_OP_SINGLE_ECDH_USE
        SSL_OP_ENABLE_KTLS
        SSL_OP_IGNORE_UNEXPECTED_EOF
        SSL_OP_ALL

        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_MODE_RELEASE_BUFFERS
        SSL_MODE_AUTO_RETRY
        SSL_MODE_NO_AUTO_CHAIN

        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        SSL_VERIFY_CLIENT_ONCE

        SSL_SESS_CACHE_OFF
        SSL_SESS_CACHE_SERVER
        SSL_SESS_CACHE_CLIENT
        SSL_SESS_CACHE_NO_INTERNAL
        SSL_SESS_CACHE_NO_INTERNAL_STORE
        SSL_SESS_CACHE_NO_INTERNAL_LOOKUP
        SSL_SESS_CACHE_NO_AUTO_CLEAR

        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_NOACK
        SSL_TLSEXT_ERR_ALERT_FATAL
        SSL_TLSEXT_ERR_ALERT_WARNING
        TLSEXT_NAMETYPE_host_name

        SSL_CONF_FLAG_FILE
        SSL_CONF_FLAG_SERVER
        SSL_CONF_FLAG_CLIENT
        SSL_CONF_FLAG_CERTIFICATE
        SSL_CONF_FLAG_SHOW_ERRORS

        SSL_SENT_SHUTDOWN
        SSL_RECEIVED_SHUTDOWN

        SSL_CERT_SET_FIRST
        SSL_CERT_SET_NEXT

        TLS1_VERSION
        TLS1_1_VERSION
        TLS1_2_VERSION
        TLS1_3_VERSION

        SSL_R_WRONG_VERSION_NUMBER
        SSL_R_HTTP_REQUEST

        SSL_AD_INTERNAL_ERROR
        SSL_CLIENT_HELLO_SUCCESS
        SSL_CLIENT_HELLO_ERROR

        SSL_MAX_SSL_SESSION_ID_LENGTH
        SSL_MAX_SID_CTX_LENGTH

cdef extern from "<openssl/x509.h>" nogil:
    ctypedef struct X509_STORE
    void X509_free(X509 *a)
    int X509_up_ref(X509 *a)
    X509_NAME *X509_get_subject_name(const X509 *x)
    X509_NAME *X509_get_issuer_name(const X509 *x)
    int X509_digest(const X509 *data, const EVP_MD *type, unsigned char *md, unsigned int *len)
    int X509_NAME_print_ex(BIO *out, const X509_NAME *nm, int indent, unsigned long flags)
    char *X509_NAME_oneline(const X509_NAME *a, char *buf, int size)
    int X509_cmp_current_time(const void *asn1_time)
    const void *X509_get0_notAfter(const X509 *x)
    const void *X509_get0_notBefore(const X509 *x)
    EVP_PKEY *X509_get0_pubkey(const X509 *x)
    int X509_check_private_key(const X509 *x, const EVP_PKEY *k)
    int X509_STORE_CTX_get_error(X509_STORE_CTX *ctx)
    int X509_STORE_CTX_get_error_depth(X509_STORE_CTX *ctx)
    void X509_STORE_CTX_set_error(X509_STORE_CTX *ctx, int s)
    void *X509_STORE_CTX_get_ex_data(const X509_STORE_CTX *ctx, int idx)
    const char *X509_verify_cert_error_string(long n)
    int X509_VERIFY_PARAM_set1_host(X509_VERIFY_PARAM *param, const char *name, size_t namelen)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *param, const char *ipasc)
    enum:
        X509_V_OK
        X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        X509_V_ERR_CERT_UNTRUSTED
        XN_FLAG_RFC2253

cdef extern from "<openssl/pem.h>" nogil:
    X509 *PEM_read_bio_X509(BIO *bp, X509 **x, pem_password_cb cb, void *u)
    X509 *PEM_read_bio_X509_AUX(BIO *bp, X509 **x, pem_password_cb cb, void *u)
    EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, pem_password_cb cb, void *u)
    EVP_PKEY *PEM_read_bio_Parameters(BIO *bp, EVP_PKEY **x)

cdef extern from "<openssl/bio.h>" nogil:
    BIO *BIO_new_mem_buf(const void *buf, int len)
    BIO *BIO_new(const BIO_METHOD *type)
    const BIO_METHOD *BIO_s_mem()
    int BIO_free(BIO *a)
    long BIO_get_mem_data(BIO *b, char **pp)

cdef extern from "<openssl/evp.h>" nogil:
    void EVP_PKEY_free(EVP_PKEY *pkey)
    int EVP_PKEY_get_id(const EVP_PKEY *pkey)
    int EVP_PKEY_get_base_id(const EVP_PKEY *pkey)
    const EVP_MD *EVP_sha1()
    const EVP_MD *EVP_sha256()
    const EVP_CIPHER *EVP_aes_256_cbc()
    const EVP_CIPHER *EVP_aes_128_cbc()
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_CIPHER_get_iv_length(const EVP_CIPHER *cipher)
    int EVP_MAC_CTX_set_params(EVP_MAC_CTX *ctx, const OSSL_PARAM params[])
    int EVP_MAC_init(EVP_MAC_CTX *ctx, const unsigned char *key, size_t keylen, const OSSL_PARAM params[])
    enum:
        EVP_PKEY_RSA
        EVP_PKEY_EC
        EVP_PKEY_ED25519
        EVP_MAX_MD_SIZE

cdef extern from "<openssl/params.h>" nogil:
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char *key, char *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()

cdef extern from "<openssl/rand.h>" nogil:
    int RAND_bytes(unsigned char *buf, int num)

cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_error()
    unsigned long ERR_peek_last_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)
    const char *ERR_reason_error_string(unsigned long e)
    int ERR_GET_REASON(unsigned long e)
    int ERR_GET_LIB(unsigned long e)

cdef extern from "<openssl/crypto.h>" nogil:
    int CRYPTO_memcmp(const void *a, const void *b, size_t len)
    void OPENSSL_free(void *addr)
    const char *OpenSSL_version(int t)

cdef extern from "<openssl/x509_vfy.h>" nogil:
    int X509_STORE_add_cert(X509_STORE *store, X509 *x)

cdef extern from "<openssl/ssl.h>" nogil:
    X509_STORE *SSL_CTX_get_cert_store_typed "SSL_CTX_get_cert_store"(const SSL_CTX *ctx)
    int SSL_CTX_add_client_CA(SSL_CTX *ctx, X509 *cacert)
    long BIO_get_ktls_send(BIO *b)
    long BIO_get_ktls_recv(BIO *b)
    enum:
        OPENSSL_NPN_NEGOTIATED
        OPENSSL_NPN_NO_OVERLAP

# ---- TLS to upstreams (upstream_tls.pyx) --------------------------------------------------
ctypedef int (*new_session_cb_t)(SSL *ssl, SSL_SESSION *sess) noexcept nogil

cdef extern from "<openssl/x509v3.h>" nogil:
    int X509_check_host(X509 *x, const char *chk, size_t chklen, unsigned int flags, char **peername)
    int X509_check_ip_asc(X509 *x, const char *ipasc, unsigned int flags)

# ---- session resumption (tls_sessions.pyx) ------------------------------------------------
cdef extern from "<openssl/ssl.h>" nogil:
    long SSL_CTX_get_timeout(const SSL_CTX *ctx)
    void *SSL_CTX_get_client_CA_list(const SSL_CTX *ctx)
    const unsigned char *SSL_SESSION_get0_id_context(const SSL_SESSION *s, unsigned int *len)

cdef extern from "<openssl/x509.h>" nogil:
    int X509_NAME_digest(const X509_NAME *data, const EVP_MD *type, unsigned char *md,
                         unsigned int *len)

cdef extern from "<openssl/stack.h>" nogil:
    int OPENSSL_sk_num(const void *st)
    void *OPENSSL_sk_value(const void *st, int i)

cdef extern from "<openssl/params.h>" nogil:
    OSSL_PARAM OSSL_PARAM_construct_octet_string(const char *key, void *buf, size_t bsize)

cdef extern from "<openssl/crypto.h>" nogil:
    void OPENSSL_cleanse(void *ptr, size_t len)
