# Authentication and ACLs in the access phase: key_auth, basic_auth, jwt_auth, chained
# with auth_anonymous, then acl. docs/auth.md has the behaviour table.
#
# The consumers come from the consumers file (edge/modules/consumers.py), compiled into
# an AuthRegistry of dicts keyed by the credential's bytes, so identifying a caller costs
# one dict lookup. The two credentials that need cryptography are cached per worker:
# a verified JWT (keyed by the token's bytes, until its expiry) and a verified Basic
# password (keyed by the header value), so a repeated credential never runs Python code.

DEF AUTH_IDENTIFIED = 0
DEF AUTH_NONE = 1           # no credential of this kind in the request
DEF AUTH_INVALID = 2        # a credential, but a wrong one
DEF AUTH_ERROR = 3          # the method cannot check it now: answer its `status`


cdef class ConsumerRef:
    """A consumer as the data plane uses it: the header values it sends upstream."""
    cdef readonly bytes username
    cdef readonly bytes custom_id        # b"" when none
    cdef readonly bytes groups           # "admin, beta", for X-Consumer-Groups
    cdef readonly frozenset group_set
    cdef readonly bint anonymous

    def as_anonymous(self):
        """The same consumer, marked as the anonymous caller of a route."""
        return ConsumerRef(self.username.decode("utf-8"), self.custom_id.decode("utf-8") or None,
                           sorted(self.group_set), True)

    def __init__(self, str username, custom_id, groups, bint anonymous=False):
        self.username = username.encode("utf-8")
        self.custom_id = (custom_id or "").encode("utf-8")
        self.groups = ", ".join(groups).encode("utf-8")
        self.group_set = frozenset(groups)
        self.anonymous = anonymous

    def __repr__(self):
        return "ConsumerRef(%r)" % self.username


cdef class AuthRegistry:
    """The consumers' credentials, looked up by their bytes (built at config time)."""
    cdef readonly dict keys          # key_auth key -> (ConsumerRef, credential id bytes)
    cdef readonly dict basic         # username bytes -> (ConsumerRef, password hash, credential id)
    cdef readonly dict consumers     # username str -> ConsumerRef
    cdef readonly object jwt_lookup  # key claim -> (ConsumerRef, JwtCredential): Python side
    cdef readonly object verify_password
    cdef readonly str dummy_hash         # checked for unknown Basic users (same timing)

    def __init__(self, dict keys, dict basic, dict consumers, jwt_lookup, verify_password,
                 str dummy_hash=""):
        self.keys = keys
        self.basic = basic
        self.consumers = consumers
        self.jwt_lookup = jwt_lookup
        self.verify_password = verify_password
        self.dummy_hash = dummy_hash


cdef class AuthResult:
    """What a failed authentication answers: 401, a challenge, a JSON message."""
    cdef readonly bytes challenge
    cdef readonly bytes message


cdef inline bint header_lookup(Client c, const char *name, size_t n, const char **value,
                               size_t *vlen, int *count) noexcept:
    """The first request header called `name` (and how many there are)."""
    cdef size_t i
    cdef edge_header *h
    cdef bint found = False
    count[0] = 0
    for i in range(c.nheaders):
        h = &c.headers[i]
        if name_is(h.name, h.name_len, name, n):
            if not found:
                value[0] = h.value
                vlen[0] = h.value_len
                found = True
            count[0] += 1
    return found


cdef class AuthMethod:
    """One of key_auth, basic_auth, jwt_auth in a location's chain."""
    cdef readonly str name
    cdef bytes challenge_missing
    cdef bytes challenge_invalid
    cdef int status                 # with AUTH_ERROR: 403 or 500

    cdef int identify(self, Client c, AuthRegistry reg) except -1:
        return AUTH_NONE


cdef class KeyAuth(AuthMethod):
    """key_auth: the key in a header, else in a query argument (key_auth_names)."""
    cdef list names                 # [bytes], header names and argument names alike

    def __init__(self, list names):
        self.name = "key_auth"
        self.names = [n.encode("latin-1") for n in names]
        self.challenge_missing = b'Key realm="edge"'
        self.challenge_invalid = b'Key realm="edge"'

    cdef int identify(self, Client c, AuthRegistry reg) except -1:
        cdef const char *v
        cdef size_t vlen
        cdef int count
        cdef bytes name
        cdef object found
        for name in self.names:
            if header_lookup(c, name, len(name), &v, &vlen, &count):
                if count > 1:
                    c.auth_message = b"several API keys in the request"
                    return AUTH_INVALID
                return self.check(c, reg, v[:vlen])
        for name in self.names:
            buf_reset(&g_auth_value)
            if append_query_arg(c, name, len(name), &g_auth_value):
                return self.check(c, reg, g_auth_value.data[:buf_len(&g_auth_value)])
        return AUTH_NONE

    cdef int check(self, Client c, AuthRegistry reg, bytes key) except -1:
        found = reg.keys.get(key)
        if found is None:
            c.auth_message = b"invalid API key"
            return AUTH_INVALID
        c.consumer = found[0]
        c.credential_id = found[1]
        return AUTH_IDENTIFIED


cdef Buf g_auth_value
cdef bint g_auth_ready = False


cdef class Htpasswd:
    """An auth_basic_user_file. nginx reads the file at every request; edge stats it at
    every request (one stat(2)) and reads it again only when it changed (mtime, ctime,
    size, inode), so an edit takes effect at the next request, as with nginx, without
    reading the file each time. `load` (Python) parses it; `verify` checks a password
    against one line's hash (passlib), raising ValueError for a hash it cannot read."""
    cdef readonly bytes path
    cdef object load                # (path) -> {user bytes: hash bytes}, OSError
    cdef readonly object verify     # (hash bytes, password bytes) -> bool
    cdef readonly dict users        # user bytes -> (None, hash, b"")
    cdef readonly bytes dummy       # checked for an unknown user (same timing)
    cdef readonly int generation    # one more at every (re)load
    cdef int64_t stamp[6]

    def __init__(self, bytes path, load, verify):
        self.path = path
        self.load = load
        self.verify = verify
        self.users = None
        self.generation = 0

    cdef int refresh(self) except -1:
        """0 when the users are current, else the errno of the file."""
        cdef struct_stat st
        cdef int i
        cdef int64_t now[6]
        if posix_stat(<const char *>self.path, &st) != 0:
            i = errno
            self.users = None
            if g_log_fn is not None:
                g_log_fn("error" if i == ENOENT else "crit", 'open() "%s" failed (%d)'
                         % (self.path.decode("latin-1"), i))
            return i
        now[0] = st.st_mtim.tv_sec
        now[1] = st.st_mtim.tv_nsec
        now[2] = st.st_ctim.tv_sec
        now[3] = st.st_ctim.tv_nsec
        now[4] = st.st_size
        now[5] = st.st_ino
        if self.users is not None and memcmp(now, self.stamp, sizeof(now)) == 0:
            return 0
        try:
            found = self.load(self.path)
        except OSError as e:
            self.users = None
            if g_log_fn is not None:
                g_log_fn("crit", 'open() "%s" failed (%s)' % (self.path.decode("latin-1"), e))
            return e.errno or EIO
        self.users = {user: (None, h, b"") for user, h in found.items()}
        self.dummy = next(iter(found.values())) if found else b""
        memcpy(self.stamp, now, sizeof(now))
        self.generation += 1
        return 0


cdef class BasicAuth(AuthMethod):
    """basic_auth [REALM]: RFC 7617 credentials against the consumers' password hashes;
    with an Htpasswd, nginx's auth_basic against that file. A verified header value is
    cached (bounded), so the hash runs once per credential (for an htpasswd file, until
    the file changes)."""
    cdef dict verified              # header value bytes -> (ConsumerRef, credential id)
    cdef int cache_max
    cdef Htpasswd htpasswd          # auth_basic_user_file, or None (the consumers)
    cdef int seen_generation

    def __init__(self, str realm, int cache_max=10000, Htpasswd htpasswd=None):
        self.name = "basic_auth"
        if htpasswd is None:
            self.challenge_missing = ('Basic realm="%s", charset="UTF-8"' % realm).encode("utf-8")
        else:
            self.challenge_missing = ('Basic realm="%s"' % realm).encode("utf-8")
        self.challenge_invalid = self.challenge_missing
        self.verified = {}
        self.cache_max = cache_max
        self.htpasswd = htpasswd

    cdef int identify(self, Client c, AuthRegistry reg) except -1:
        cdef const char *v
        cdef size_t vlen
        cdef int count
        cdef int err
        if not header_lookup(c, "authorization", 13, &v, &vlen, &count):
            return AUTH_NONE
        if vlen < 6 or strncasecmp(v, "basic ", 6) != 0:
            return AUTH_NONE                # another scheme: not ours
        if count > 1:
            c.auth_message = b"several credentials in the request"
            return AUTH_INVALID
        users = reg.basic if reg is not None else None
        verify = reg.verify_password if reg is not None else None
        dummy = reg.dummy_hash if reg is not None else None
        if self.htpasswd is not None:
            err = self.htpasswd.refresh()
            if err:
                self.status = 403 if err == ENOENT else 500     # nginx's answers
                return AUTH_ERROR
            if self.htpasswd.generation != self.seen_generation:
                self.verified.clear()       # the file changed: verify again
                self.seen_generation = self.htpasswd.generation
            users = self.htpasswd.users
            verify = self.htpasswd.verify
            dummy = self.htpasswd.dummy
        header = v[:vlen]
        hit = self.verified.get(header)
        if hit is not None:
            if hit[0] is not None:
                c.consumer = hit[0]
                c.credential_id = hit[1]
            return AUTH_IDENTIFIED
        import base64
        import binascii
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            c.auth_message = b"invalid Basic credentials"
            return AUTH_INVALID
        entry = users.get(user) if sep else None
        try:
            if entry is None:
                # an unknown user costs a hash too: the timing does not tell who exists
                if dummy:
                    try:
                        verify(dummy, password)
                    except ValueError:
                        pass
            if entry is None or not verify(entry[1], password):
                c.auth_message = b"invalid username or password"
                return AUTH_INVALID
        except ValueError as e:
            # a hash no scheme reads matches no password (nginx's crypt() fails the same way)
            if g_log_fn is not None:
                g_log_fn("error", 'auth_basic: the hash of user "%s" in "%s" cannot be read (%s)'
                         % (user.decode("latin-1"), self.htpasswd.path.decode("latin-1")
                            if self.htpasswd is not None else "", e))
            c.auth_message = b"invalid username or password"
            return AUTH_INVALID
        if len(self.verified) >= self.cache_max:
            del self.verified[next(iter(self.verified))]
        self.verified[header] = (entry[0], entry[2])
        if self.htpasswd is not None and g_log_fn is not None:
            g_log_fn("debug", 'auth_basic: verified the password of user "%s" in "%s"'
                     % (user.decode("latin-1"), self.htpasswd.path.decode("latin-1")))
        if entry[0] is not None:
            c.consumer = entry[0]
            c.credential_id = entry[2]
        return AUTH_IDENTIFIED


cdef class JwtAuth(AuthMethod):
    """jwt_auth: a JWT from the header, the query or the cookie; verified with pyjwt
    against the credential its key claim names, the algorithm pinned. Verified tokens
    are cached per worker (LRU, jwt_cache_size) until their expiry."""
    cdef bytes header               # lowercase header name; the scheme is Bearer
    cdef bytes query
    cdef bytes cookie
    cdef object verify              # (token bytes) -> (ConsumerRef, credential id, exp ms or 0)
    cdef dict cache                 # token -> (ConsumerRef, credential id, exp ms)
    cdef int cache_max
    cdef readonly int64_t verifications

    def __init__(self, str header, str query, str cookie, verify, int cache_max):
        self.name = "jwt_auth"
        self.header = header.lower().encode("latin-1")
        self.query = query.encode("latin-1")
        self.cookie = cookie.encode("latin-1")
        self.verify = verify
        self.cache = {}
        self.cache_max = cache_max
        self.challenge_missing = b"Bearer"
        self.challenge_invalid = b'Bearer error="invalid_token"'

    cdef int identify(self, Client c, AuthRegistry reg) except -1:
        cdef const char *v
        cdef size_t vlen
        cdef int count
        cdef int sources = 0
        cdef bytes token = None
        if self.header and header_lookup(c, self.header, len(self.header), &v, &vlen, &count):
            if vlen > 7 and strncasecmp(v, "bearer ", 7) == 0:
                token = v[7:vlen].strip()
                sources += count
        if self.query:
            buf_reset(&g_auth_value)
            if append_query_arg(c, self.query, len(self.query), &g_auth_value):
                sources += 1
                if token is None:
                    token = g_auth_value.data[:buf_len(&g_auth_value)]
        if self.cookie:
            buf_reset(&g_auth_value)
            if append_cookie(c, self.cookie, len(self.cookie), &g_auth_value):
                sources += 1
                if token is None:
                    token = g_auth_value.data[:buf_len(&g_auth_value)]
        if token is None:
            return AUTH_NONE
        if sources > 1:
            c.auth_message = b"several tokens in the request"
            return AUTH_INVALID
        hit = self.cache.get(token)
        if hit is not None and isinstance(hit, bytes):
            c.auth_message = hit            # refused before: refused again, no Python
            return AUTH_INVALID
        if hit is not None:
            if hit[2] and hit[2] <= g_real_ms:
                del self.cache[token]
                c.auth_message = b"token expired"
                return AUTH_INVALID
            del self.cache[token]       # most recently used last
            self.cache[token] = hit
            c.consumer = hit[0]
            c.credential_id = hit[1]
            return AUTH_IDENTIFIED
        self.verifications += 1
        result = self.verify(token)
        if isinstance(result, bytes):
            c.auth_message = result
            # a token refused for good is remembered too, so replaying it costs no Python;
            # one not valid yet (nbf) may become valid, and is not
            if g_log_fn is not None:
                g_log_fn("debug", "jwt_auth: refused a new token: %s" % result.decode("latin-1"))
            if result != b"token not yet valid":
                if len(self.cache) >= self.cache_max:
                    del self.cache[next(iter(self.cache))]
                self.cache[token] = result
            return AUTH_INVALID
        if len(self.cache) >= self.cache_max:
            del self.cache[next(iter(self.cache))]
        self.cache[token] = result
        if g_log_fn is not None:
            g_log_fn("debug", "jwt_auth: verified a new token of consumer %s"
                     % (<ConsumerRef>result[0]).username.decode("utf-8", "replace"))
        c.consumer = result[0]
        c.credential_id = result[1]
        return AUTH_IDENTIFIED


cdef class AuthChain(PhaseHandler):
    """The authentication methods of a location, in order: the first that identifies
    the caller wins; else the anonymous consumer when auth_anonymous is set, else 401."""
    cdef list methods
    cdef AuthRegistry registry
    cdef ConsumerRef anonymous
    cdef bint optional              # jwt_auth optional: no credential at all passes
    cdef bint html                  # nginx's auth_basic: its HTML 401 page
    cdef readonly int64_t failures

    def __init__(self, list methods, AuthRegistry registry, ConsumerRef anonymous=None,
                 bint optional=False, bint html=False):
        global g_auth_ready
        self.name = "auth"
        self.methods = methods
        self.registry = registry
        self.anonymous = anonymous
        self.optional = optional
        self.html = html
        if not g_auth_ready:
            buf_init(&g_auth_value, 256)
            g_auth_ready = True

    cdef int run(self, Client c) except -1:
        cdef AuthMethod m
        cdef AuthMethod failed = None
        cdef int r
        for m in self.methods:
            r = m.identify(c, self.registry)
            if r == AUTH_IDENTIFIED:
                return PH_CONTINUE
            if r == AUTH_ERROR:
                self.failures += 1
                return m.status
            if r == AUTH_INVALID and failed is None:
                failed = m
        if failed is None and self.anonymous is not None:
            # no credential at all: the anonymous consumer (a wrong one stays a 401)
            c.consumer = self.anonymous
            c.credential_id = None
            return PH_CONTINUE
        if failed is None and self.optional:
            return PH_CONTINUE
        self.failures += 1
        m = failed if failed is not None else <AuthMethod>self.methods[0]
        message = c.auth_message if failed is not None else b"authentication required"
        if self.html:
            c.respond_simple(401, b"WWW-Authenticate: " + m.challenge_missing + b"\r\n",
                             error_body(401), b"text/html")
            return PH_DONE
        c.respond_simple(401, b"WWW-Authenticate: " + (m.challenge_invalid if failed is not None
                                                       else m.challenge_missing) + b"\r\n",
                         b'{"message":"' + message + b'"}\n', b"application/json")
        return PH_DONE


cdef class Acl(PhaseHandler):
    """acl allow|deny GROUP ...: 401 without a consumer, 403 outside the allowed groups
    or inside a denied one."""
    cdef frozenset allow
    cdef frozenset deny

    def __init__(self, allow, deny):
        self.name = "acl"
        self.allow = frozenset(allow)
        self.deny = frozenset(deny)

    cdef int run(self, Client c) except -1:
        cdef ConsumerRef who = c.consumer
        if who is None:
            c.respond_simple(401, b"", b'{"message":"authentication required"}\n', b"application/json")
            return PH_DONE
        if (self.deny and not self.deny.isdisjoint(who.group_set)) or \
                (self.allow and self.allow.isdisjoint(who.group_set)):
            c.respond_simple(403, b"", b'{"message":"You cannot consume this service"}\n',
                             b"application/json")
            return PH_DONE
        return PH_CONTINUE


cdef bint append_consumer_variable(Segment *s, Client c, Buf *out) noexcept:
    """$consumer, $consumer_custom_id, $consumer_groups, $credential_identifier,
    $consumer_anonymous ("true" for the auth_anonymous consumer)."""
    cdef ConsumerRef who = c.consumer
    cdef bytes v
    if who is None:
        return False
    if s.var == VAR_CONSUMER_ANONYMOUS:
        if not who.anonymous:
            return False
        buf_append_str(out, "true")
        return True
    if s.var == VAR_CONSUMER:
        v = who.username
    elif s.var == VAR_CONSUMER_CUSTOM_ID:
        v = who.custom_id
    elif s.var == VAR_CONSUMER_GROUPS:
        v = who.groups
    else:
        v = c.credential_id if c.credential_id is not None else b""
    if not v:
        return False
    buf_append(out, <const char *>v, len(v))
    return True
