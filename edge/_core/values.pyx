# Variables and templates ("complex values" in nginx): a directive value such as
# `proxy_set_header X-Client $remote_addr:$remote_port` is compiled once into literal and
# variable segments, then evaluated per request straight into an output buffer.

cdef enum VarId:
    VAR_HOST = 1
    VAR_HTTP_HOST
    VAR_REMOTE_ADDR
    VAR_REMOTE_PORT
    VAR_PROXY_ADD_XFF
    VAR_SCHEME
    VAR_REQUEST_URI
    VAR_URI
    VAR_ARGS
    VAR_IS_ARGS
    VAR_REQUEST_METHOD
    VAR_SERVER_PORT
    VAR_SERVER_ADDR
    VAR_SERVER_NAME
    VAR_SERVER_PROTOCOL
    VAR_PROXY_HOST
    VAR_HTTP                # $http_<name>: a request header
    VAR_CAPTURE             # $1 .. $9 from a regex location
    VAR_CONTENT_LENGTH
    VAR_CONTENT_TYPE
    VAR_PROXY_PROTOCOL_ADDR
    VAR_PROXY_PROTOCOL_PORT
    VAR_REALIP_REMOTE_ADDR
    VAR_REALIP_REMOTE_PORT
    VAR_DOCUMENT_ROOT       # root or alias of the location (static.pyx)
    VAR_REQUEST_FILENAME    # the file path of the URI (static.pyx)
    VAR_USER                # set / map / split_clients (rewrite.pyx)
    # request and response facts, mostly for access logs (nginx's meanings)
    VAR_REMOTE_USER
    VAR_TIME_LOCAL
    VAR_TIME_ISO8601
    VAR_MSEC
    VAR_REQUEST
    VAR_ARG                 # $arg_<name>: a query argument
    VAR_COOKIE              # $cookie_<name>
    VAR_SENT_HTTP           # $sent_http_<name>: a response header as sent
    VAR_STATUS
    VAR_BODY_BYTES_SENT
    VAR_BYTES_SENT
    VAR_REQUEST_LENGTH
    VAR_REQUEST_TIME
    VAR_UPSTREAM_ADDR
    VAR_UPSTREAM_STATUS
    VAR_UPSTREAM_CONNECT_TIME
    VAR_UPSTREAM_HEADER_TIME
    VAR_UPSTREAM_RESPONSE_TIME
    VAR_CONNECTION
    VAR_CONNECTION_REQUESTS
    VAR_PID
    VAR_REQUEST_ID
    VAR_ROUTE
    VAR_CONSUMER            # authentication (auth.pyx)
    VAR_CONSUMER_CUSTOM_ID
    VAR_CONSUMER_GROUPS
    VAR_CREDENTIAL_IDENTIFIER
    VAR_CONSUMER_ANONYMOUS
    # TLS (tls.pyx); after the consumer ids, which append_fact tells apart by range
    VAR_SSL_PROTOCOL
    VAR_SSL_CIPHER
    VAR_SSL_SERVER_NAME
    VAR_SSL_SESSION_REUSED
    VAR_SSL_CLIENT_VERIFY
    VAR_SSL_CLIENT_S_DN
    VAR_SSL_CLIENT_FINGERPRINT
    VAR_HTTPS

# name -> id; `$http_*` and `$1`..`$9` are handled by prefix.
VARIABLES = {
    "host": VAR_HOST,
    "request_host": VAR_HTTP_HOST,
    "remote_addr": VAR_REMOTE_ADDR,
    "remote_port": VAR_REMOTE_PORT,
    "proxy_add_x_forwarded_for": VAR_PROXY_ADD_XFF,
    "scheme": VAR_SCHEME,
    "request_uri": VAR_REQUEST_URI,
    "uri": VAR_URI,
    "document_uri": VAR_URI,
    "args": VAR_ARGS,
    "query_string": VAR_ARGS,
    "is_args": VAR_IS_ARGS,
    "request_method": VAR_REQUEST_METHOD,
    "server_port": VAR_SERVER_PORT,
    "server_addr": VAR_SERVER_ADDR,
    "server_name": VAR_SERVER_NAME,
    "server_protocol": VAR_SERVER_PROTOCOL,
    "proxy_host": VAR_PROXY_HOST,
    "content_length": VAR_CONTENT_LENGTH,
    "content_type": VAR_CONTENT_TYPE,
    "proxy_protocol_addr": VAR_PROXY_PROTOCOL_ADDR,
    "proxy_protocol_port": VAR_PROXY_PROTOCOL_PORT,
    "realip_remote_addr": VAR_REALIP_REMOTE_ADDR,
    "realip_remote_port": VAR_REALIP_REMOTE_PORT,
    "document_root": VAR_DOCUMENT_ROOT,
    "request_filename": VAR_REQUEST_FILENAME,
    "remote_user": VAR_REMOTE_USER,
    "time_local": VAR_TIME_LOCAL,
    "time_iso8601": VAR_TIME_ISO8601,
    "msec": VAR_MSEC,
    "request": VAR_REQUEST,
    "status": VAR_STATUS,
    "body_bytes_sent": VAR_BODY_BYTES_SENT,
    "bytes_sent": VAR_BYTES_SENT,
    "request_length": VAR_REQUEST_LENGTH,
    "request_time": VAR_REQUEST_TIME,
    "upstream_addr": VAR_UPSTREAM_ADDR,
    "upstream_status": VAR_UPSTREAM_STATUS,
    "upstream_connect_time": VAR_UPSTREAM_CONNECT_TIME,
    "upstream_header_time": VAR_UPSTREAM_HEADER_TIME,
    "upstream_response_time": VAR_UPSTREAM_RESPONSE_TIME,
    "connection": VAR_CONNECTION,
    "connection_requests": VAR_CONNECTION_REQUESTS,
    "pid": VAR_PID,
    "request_id": VAR_REQUEST_ID,
    "route": VAR_ROUTE,
    "consumer": VAR_CONSUMER,
    "consumer_custom_id": VAR_CONSUMER_CUSTOM_ID,
    "consumer_groups": VAR_CONSUMER_GROUPS,
    "credential_identifier": VAR_CREDENTIAL_IDENTIFIER,
    "consumer_anonymous": VAR_CONSUMER_ANONYMOUS,
    "ssl_protocol": VAR_SSL_PROTOCOL,
    "ssl_cipher": VAR_SSL_CIPHER,
    "ssl_server_name": VAR_SSL_SERVER_NAME,
    "ssl_session_reused": VAR_SSL_SESSION_REUSED,
    "ssl_client_verify": VAR_SSL_CLIENT_VERIFY,
    "ssl_client_s_dn": VAR_SSL_CLIENT_S_DN,
    "ssl_client_fingerprint": VAR_SSL_CLIENT_FINGERPRINT,
    "https": VAR_HTTPS,
}

# Variables whose value is known only once the response is done; they read the request
# head at the end of the request, or the response head edge wrote.
HEAD_VARIABLES = {VAR_HTTP, VAR_HTTP_HOST, VAR_PROXY_ADD_XFF, VAR_REQUEST_URI, VAR_ARGS,
                  VAR_IS_ARGS, VAR_REQUEST_METHOD, VAR_CONTENT_LENGTH, VAR_CONTENT_TYPE,
                  VAR_REMOTE_USER, VAR_REQUEST, VAR_ARG, VAR_COOKIE}


cdef struct Segment:
    int var                 # 0 for a literal
    const char *text        # the literal, or the header name for VAR_HTTP
    size_t len
    int index               # capture number for VAR_CAPTURE
    void *obj               # the UserVar of VAR_USER (kept alive by Template.keep)


cdef class Template:
    """A compiled directive value. Build with Template.compile("text $var ${var}x")."""
    cdef Segment *segs
    cdef int nsegs
    cdef list keep          # bytes objects the segments point into
    cdef readonly str source
    cdef readonly bint is_literal
    cdef readonly bytes literal
    cdef readonly int max_capture
    cdef readonly bint uses_head            # reads the request head (see HEAD_VARIABLES)
    cdef readonly bint uses_sent_http       # reads the response head

    def __dealloc__(self):
        if self.segs != NULL:
            free(self.segs)

    @staticmethod
    def compile(str source):
        """Parse `$name` / `${name}` references. Unknown variables raise ValueError."""
        cdef Template t = Template.__new__(Template)
        parts = []          # (var, text bytes, index[, UserVar])
        literal = []
        i = 0
        n = len(source)
        while i < n:
            ch = source[i]
            if ch != "$" or i + 1 >= n:
                literal.append(ch)
                i += 1
                continue
            if source[i + 1] == "{":
                j = source.find("}", i + 2)
                if j < 0:
                    raise ValueError('the closing bracket in "%s" variable is missing' % source[i + 2:])
                name = source[i + 2:j]
                i = j + 1
            else:
                j = i + 1
                if source[j].isdigit():
                    j += 1
                else:
                    while j < n and (source[j].isalnum() or source[j] == "_"):
                        j += 1
                name = source[i + 1:j]
                if not name:
                    literal.append("$")
                    i += 1
                    continue
                i = j
            if literal:
                parts.append((0, "".join(literal).encode("latin-1"), 0))
                literal = []
            parts.append(_variable_segment(name))
        if literal:
            parts.append((0, "".join(literal).encode("latin-1"), 0))
        t.source = source
        t.keep = []
        t.nsegs = len(parts)
        t.segs = <Segment *>malloc(sizeof(Segment) * (t.nsegs or 1))
        if t.segs == NULL:
            raise MemoryError()
        t.max_capture = 0
        for k, part in enumerate(parts):
            var, text, index = part[0], part[1], part[2]
            t.keep.append(text)
            t.segs[k].obj = NULL
            if var == VAR_USER:
                t.keep.append(part[3])
                t.segs[k].obj = <void *>part[3]
                t.uses_head = True      # its value may read anything of the request
            t.segs[k].var = var
            t.segs[k].text = <const char *>(<bytes>text)
            t.segs[k].len = len(text)
            t.segs[k].index = index
            if var == VAR_CAPTURE and index > t.max_capture:
                t.max_capture = index
            if var in HEAD_VARIABLES:
                t.uses_head = True
            if var == VAR_SENT_HTTP:
                t.uses_sent_http = True
        t.is_literal = all(p[0] == 0 for p in parts)
        t.literal = b"".join(p[1] for p in parts) if t.is_literal else None
        return t

    def __repr__(self):
        return "Template(%r)" % self.source


# The variables a config declares (set, map, split_clients), name -> UserVar; replaced
# before each generation is parsed (rewrite.pyx: declare_user_variables).
cdef dict g_user_vars = {}


def _variable_segment(str name):
    if name.isdigit():
        if not 1 <= int(name) <= 9:
            raise ValueError('unknown "%s" variable' % name)
        return (VAR_CAPTURE, b"", int(name))
    uv = g_user_vars.get(name)
    if uv is not None and name not in VARIABLES:
        return (VAR_USER, b"", 0, uv)
    if name.startswith("http_") and len(name) > 5:
        # $http_x_forwarded_for names the X-Forwarded-For header.
        return (VAR_HTTP, name[5:].replace("_", "-").encode("latin-1"), 0)
    for prefix, var in (("arg_", VAR_ARG), ("cookie_", VAR_COOKIE)):
        if name.startswith(prefix) and len(name) > len(prefix):
            return (var, name[len(prefix):].encode("latin-1"), 0)
    if name.startswith("sent_http_") and len(name) > 10:
        return (VAR_SENT_HTTP, name[10:].replace("_", "-").encode("latin-1"), 0)
    if name in VARIABLES:
        return (VARIABLES[name], b"", 0)
    raise ValueError('unknown "%s" variable' % name)

