# Request routing: server by listen address and Host, then location by nginx's rules.
#
# Location precedence (nginx's):
#   1. `location = /x` exact matches win at once;
#   2. otherwise the longest matching prefix is remembered; if it is `^~`, stop there;
#   3. otherwise the regex locations (`~` case-sensitive, `~*` case-insensitive) are tried in
#      config order and the first match wins;
#   4. otherwise the remembered longest prefix is used.
# Prefixes live in a byte trie compiled at config time, so the lookup is one pass over the
# path. Regexes are POSIX extended regexes (glibc), with the common PCRE escapes \d \D
# translated at config time; anything else PCRE-only is refused with a clear error.

cdef enum ContentKind:
    CONTENT_NONE = 0        # no content handler: 404, as nginx without a root
    CONTENT_RETURN = 1
    CONTENT_PROXY = 2
    CONTENT_HEALTH = 3      # liveness / readiness answered by the data plane itself
    CONTENT_STATIC = 4      # files from root / alias (static.pyx)

cdef enum LocationKind:
    LOC_PREFIX = 0
    LOC_EXACT = 1
    LOC_CARET = 2           # ^~ prefix: stops the regex search
    LOC_REGEX = 3
    LOC_REGEX_ICASE = 4

DEF MAX_CAPTURES = 10


cdef struct TrieNode:
    int first_child         # index of the first child in the node array, children contiguous
    int nchildren
    unsigned char byte
    int prefix_loc          # index into Server.locations or -1
    int exact_loc


cdef class Location:
    """One `location` block, compiled. Modules fill it through the set_* methods."""
    cdef readonly int kind
    cdef readonly bytes pattern
    cdef readonly str file
    cdef readonly int line
    cdef public LocationLevel children     # nested locations, or None
    cdef regex_t regex
    cdef bint has_regex
    cdef readonly int ncaptures

    # content
    cdef public int content
    cdef public int return_status
    cdef public Template return_body
    cdef public Template return_location
    cdef public bint absolute_redirect
    cdef public bint port_in_redirect   # an absolute redirect names a non-default port
    cdef bytes return_head          # prebuilt status line + fixed headers
    cdef public bytes default_type

    # proxy
    cdef public Upstream upstream
    cdef public object proxy_uri     # bytes or None: the URI part of proxy_pass
    cdef public list proxy_headers   # [(name bytes, Template)] sent to the upstream
    cdef bytes proxy_strip           # lowercased names, \0 separated, removed from the client's headers
    cdef public int64_t proxy_connect_timeout_ms
    cdef public int64_t proxy_read_timeout_ms
    cdef public int64_t proxy_send_timeout_ms
    cdef TimerList t_connect, t_read, t_send, t_tunnel
    cdef public bytes upgrade_protocols     # lowercase names, NUL separated; empty: none
    cdef public int64_t proxy_tunnel_timeout_ms
    cdef public UpstreamTls upstream_tls    # proxy_pass https:// (upstream_tls.pyx), or None

    # buffering (buffering.pyx): request bodies read whole before a peer is picked,
    # responses read ahead of a slow client into memory, then a temp file
    cdef public bint request_buffering
    # mirroring (mirror.pyx): MirrorTarget list, or None
    cdef public list mirrors
    cdef public bint mirror_request_body
    # retries (retries.pyx): proxy_next_upstream's conditions, and its limits
    cdef public int next_upstream
    cdef public int64_t next_upstream_tries         # 0: no limit
    cdef public int64_t next_upstream_timeout_ms    # 0: no limit
    cdef public int64_t client_body_buffer_size
    cdef public bytes client_body_temp_path
    cdef public bint proxy_buffering
    cdef public bint ignore_client_abort    # proxy_ignore_client_abort
    cdef public int64_t proxy_buffer_size       # the largest upstream response head
    cdef public int64_t proxy_buffers_total     # memory per response the client has not taken
    cdef public int64_t proxy_busy_buffers_size # the most sent to the client per write from a spool
    cdef public int64_t proxy_max_temp_file_size
    cdef public bytes proxy_temp_path

    # client-side limits and timeouts that may differ per location
    cdef public int64_t keepalive_timeout_ms
    cdef public int64_t keepalive_requests
    cdef public int keepalive_disable      # keepalive_disable: 1 msie6, 2 safari (client.pyx)
    cdef public int64_t client_body_timeout_ms
    cdef public int64_t send_timeout_ms
    cdef public int64_t client_max_body_size
    cdef public RealIP realip
    cdef TimerList t_keepalive, t_body, t_send_client

    # the phase plan: handlers besides the content, and the metrics series
    cdef public PhasePlan phases
    cdef public bytes route_b        # $route: route_name, or the match text
    cdef public bytes hide_args      # query arguments not passed upstream (NUL separated), or None
    cdef public bytes response_strip # lowercase names NUL separated (and a final NUL)
                                     # dropped from upstream responses, or None
    # rewrites and headers (rewrite.pyx, modules/rewrite.py, modules/proxy.py)
    cdef public object dynamic       # DynamicUpstream: proxy_pass http://$var, or None
    cdef public bytes proxy_method   # proxy_method, or None
    cdef public bint proxy_http10    # proxy_http_version 1.0: HTTP/1.0 upstream, no keep-alive
    cdef public bint own_connection  # proxy_set_header Connection: the config's value, not edge's
    cdef public bint own_upgrade     # proxy_set_header Upgrade: likewise
    cdef public bint pass_request_headers   # proxy_pass_request_headers (default on)
    cdef public bint pass_request_body      # proxy_pass_request_body (default on)
    cdef public bint ignore_accel_buffering # proxy_ignore_headers X-Accel-Buffering
    cdef public object redirects     # Redirects (proxy_redirect), or None
    cdef public bint pass_server     # proxy_pass_header Server / Date: the upstream's go through
    cdef public bint pass_date
    # charset and expires on proxied responses (modules/static.py, proxy.pyx)
    cdef public object proxy_charset        # bytes, or None: charset off
    cdef public object proxy_charset_types  # set of lowercase types, or None for "*"
    cdef public bint proxy_expires          # an upstream's Expires / Cache-Control are replaced
    cdef bytes response_drop_b
    cdef const char *response_drop  # upstream response headers never copied
    cdef public object static        # StaticConf (static.pyx) for CONTENT_STATIC, or None
    cdef public object error_pages   # ErrorPages (error_page.pyx) in force here, or None
    cdef public GzipConf gzip        # gzip / gzip_static in force (gzip.pyx), or None

    def __cinit__(self):
        self.has_regex = False

    def __init__(self, str kind, bytes pattern, str file="", int line=0):
        kinds = {"": LOC_PREFIX, "=": LOC_EXACT, "^~": LOC_CARET, "~": LOC_REGEX, "~*": LOC_REGEX_ICASE}
        if kind not in kinds:
            raise ValueError('invalid location modifier "%s"' % kind)
        self.kind = kinds[kind]
        self.pattern = pattern
        self.file = file
        self.line = line
        self.content = CONTENT_NONE
        self.absolute_redirect = True
        self.port_in_redirect = True
        self.default_type = b"text/plain"
        self.proxy_headers = []
        self.proxy_uri = None
        self.keepalive_timeout_ms = 75000
        self.keepalive_requests = 1000
        self.client_body_timeout_ms = 60000
        self.send_timeout_ms = 60000
        self.client_max_body_size = 1024 * 1024
        self.proxy_connect_timeout_ms = 60000
        self.proxy_read_timeout_ms = 60000
        self.proxy_send_timeout_ms = 60000
        self.proxy_tunnel_timeout_ms = 3600000
        self.upgrade_protocols = b"websocket\0\0"
        self.request_buffering = True
        self.pass_request_headers = True
        self.pass_request_body = True
        self.mirror_request_body = True
        self.next_upstream = 3          # error timeout
        self.client_body_buffer_size = 8192
        self.proxy_buffering = True
        self.proxy_buffer_size = 4096
        self.proxy_buffers_total = 8 * 4096
        self.proxy_busy_buffers_size = 8192
        self.proxy_max_temp_file_size = 1024 * 1024 * 1024
        self.client_body_temp_path = b"/tmp"
        self.proxy_temp_path = b"/tmp"
        self.phases = PhasePlan()
        self.route_b = self.match_text().encode("latin-1")
        if self.kind in (LOC_REGEX, LOC_REGEX_ICASE):
            self._compile_regex()

    def __dealloc__(self):
        if self.has_regex:
            regfree(&self.regex)

    cdef _compile_regex(self):
        cdef bytes translated = translate_regex(self.pattern)
        cdef int flags = REG_EXTENDED
        cdef char err[256]
        cdef int rc
        if self.kind == LOC_REGEX_ICASE:
            flags |= REG_ICASE
        rc = regcomp(&self.regex, translated, flags)
        if rc != 0:
            regerror(rc, &self.regex, err, sizeof(err))
            raise ValueError('invalid regex "%s": %s' % (self.pattern.decode("latin-1"),
                                                       err.decode("latin-1")))
        self.has_regex = True
        self.ncaptures = <int>self.regex.re_nsub

    def set_return(self, int status, Template body=None, Template location=None):
        self.content = CONTENT_RETURN
        self.return_status = status
        self.return_body = body
        self.return_location = location

    def add_nested(self, Location loc):
        if self.children is None:
            self.children = LocationLevel()
        self.children.add(loc)

    def set_static(self, static):
        """Serve files (root / alias, index, try_files: static.pyx)."""
        self.content = CONTENT_STATIC
        self.static = static

    def set_health(self, bint readiness):
        """`health live` answers 200 while this worker's loop runs; `health ready` answers
        503 while the node drains, its config failed to apply, or workers are missing."""
        self.content = CONTENT_HEALTH
        self.return_status = 1 if readiness else 0

    def set_proxy(self, Upstream upstream, uri, list headers, list strip_names):
        """headers: [(b"Name", Template)], the full list sent after the client's own
        (empty values are skipped at run time, as nginx does); strip_names: lowercase header
        names never copied from the client."""
        self.content = CONTENT_PROXY
        self.upstream = upstream
        if upstream is not None and upstream.hash_key is not None and upstream.hash_key.uses_head:
            # the balancer reads the request head when it picks a peer, which may be
            # after the body went through rb (request buffering, retries)
            self.phases.keep_head = True
        self.proxy_uri = uri
        self.proxy_headers = headers
        self.proxy_strip = b"".join(n.lower() + b"\0" for n in strip_names)
        # nginx sends a proxy_set_header Connection/Upgrade in place of its own (the
        # WebSocket recipe `Upgrade $http_upgrade; Connection $connection_upgrade;`, or
        # `Connection ""` for keep-alive); edge then leaves its own out too
        names = {n.lower() for n, _ in headers}
        self.own_connection = b"connection" in names
        self.own_upgrade = b"upgrade" in names

    def strip_proxy_header(self, bytes name):
        """Never pass the client's `name` headers upstream (auth_hide_credentials)."""
        self.proxy_strip = (self.proxy_strip or b"") + name.lower() + b"\0"

    def add_proxy_header(self, bytes name, Template value):
        """Send `name: value` upstream instead of the client's own `name` headers."""
        self.proxy_headers = self.proxy_headers + [(name, value)]
        self.proxy_strip = (self.proxy_strip or b"") + name.lower() + b"\0"

    cdef void prepare(self):
        """Called once the plan is complete: prebuilt heads and timer classes."""
        cdef bytes reason
        if self.content == CONTENT_RETURN:
            reason = status_reason(self.return_status)
            self.return_head = b"HTTP/1.1 %d %s\r\n%s" % (self.return_status, reason, g_server_line)
        if self.pass_server or self.pass_date:
            self.response_drop_b = b"connection\0keep-alive\0proxy-connection\0te\0trailer\0" \
                b"transfer-encoding\0upgrade\0content-length\0" + \
                (b"" if self.pass_server else b"server\0") + (b"" if self.pass_date else b"date\0") + b"\0"
            self.response_drop = <const char *>self.response_drop_b
        else:
            self.response_drop = RESPONSE_DROP
        self.t_keepalive = timer_list(self.keepalive_timeout_ms)
        self.t_body = timer_list(self.client_body_timeout_ms)
        self.t_send_client = timer_list(self.send_timeout_ms)
        self.t_connect = timer_list(self.proxy_connect_timeout_ms)
        self.t_read = timer_list(self.proxy_read_timeout_ms)
        self.t_send = timer_list(self.proxy_send_timeout_ms)
        self.t_tunnel = timer_list(self.proxy_tunnel_timeout_ms)

    cdef bint upgrade_allowed(self, const char *value, size_t n) noexcept:
        """Is the protocol named by an Upgrade header value allowed here? The first
        protocol counts; a version suffix ("websocket/13") is ignored."""
        cdef size_t i = 0
        while i < n and value[i] != 44 and value[i] != 47 and value[i] != 32:
            i += 1
        return i > 0 and name_in_list(value, i, <const char *>self.upgrade_protocols)

    def match_text(self):
        """How the location reads in the config: "/api/", "= /health", "~ ^/v\\d/"."""
        modifier = {0: "", 1: "=", 2: "^~", 3: "~", 4: "~*"}[self.kind]
        path = self.pattern.decode("latin-1")
        return "%s %s" % (modifier, path) if modifier else path

    def attach(self):
        """In the worker: metrics series and log files of this location and those
        nested in it."""
        self.phases.attach()
        if self.mirrors is not None:
            for target in self.mirrors:
                target.attach()
        if self.children is not None:
            for loc in self.children.locations:
                loc.attach()

    def __repr__(self):
        return "Location(%s %r)" % ({0: "", 1: "=", 2: "^~", 3: "~", 4: "~*"}[self.kind],
                                    self.pattern)


def translate_regex(bytes pattern):
    """PCRE spellings that POSIX ERE lacks, mapped to equivalents; refuse the rest."""
    cdef list out = []
    cdef int i = 0
    cdef int n = len(pattern)
    s = pattern.decode("latin-1")
    while i < n:
        ch = s[i]
        if ch == "\\" and i + 1 < n:
            nxt = s[i + 1]
            if nxt == "d":
                out.append("[0-9]")
            elif nxt == "D":
                out.append("[^0-9]")
            elif nxt in "wWsSbB.\\/^$|()[]{}*+?-":
                out.append(ch + nxt)
            else:
                raise ValueError('regex "%s": the escape \\%s is not supported' % (s, nxt))
            i += 2
            continue
        if ch == "(" and i + 1 < n and s[i + 1] == "?":
            raise ValueError('regex "%s": (?...) groups are not supported' % s)
        if ch in "*+?}" and i + 1 < n and s[i + 1] == "?":
            raise ValueError('regex "%s": lazy quantifiers are not supported' % s)
        out.append(ch)
        i += 1
    return "".join(out).encode("latin-1")


# server_name ranks (nginx): exact > leading wildcard > trailing wildcard > regex
DEF NAME_SCORE_EXACT = 4000000
DEF NAME_SCORE_LEADING = 3000000
DEF NAME_SCORE_TRAILING = 2000000
DEF NAME_SCORE_REGEX = 1000000


cdef struct ServerName:
    const char *name        # lowercase; for wildcards the part without the '*'
    size_t len
    int kind                # 0 exact, 1 "*.suffix" / ".suffix", 2 "prefix.*"


cdef enum MatchResult:
    MATCH_NONE = 0      # nothing at this level (nginx: NGX_DECLINED)
    MATCH_PREFIX = 1    # a prefix location (nginx: NGX_AGAIN)
    MATCH_FINAL = 2     # an exact or a regex location: stop (nginx: NGX_OK)


cdef class LocationMatch:
    """Where LocationLevel.match leaves its answer; one per Server, reused."""
    cdef Location found


cdef class LocationLevel:
    """The locations of one level: a server's, or those nested in a location. Prefixes
    live in a byte trie compiled at config time; regexes are tried in config order."""
    cdef readonly list locations
    cdef list regex_locations
    cdef TrieNode *trie
    cdef int ntrie

    def __cinit__(self):
        self.locations = []
        self.regex_locations = []
        self.trie = NULL
        self.ntrie = 0

    def __dealloc__(self):
        if self.trie != NULL:
            free(self.trie)

    def add(self, Location loc):
        for other in self.locations:
            if (<Location>other).kind == loc.kind and (<Location>other).pattern == loc.pattern \
                    and loc.kind not in (LOC_REGEX, LOC_REGEX_ICASE):
                raise ValueError('duplicate location "%s"' % loc.pattern.decode("latin-1"))
            if loc.kind in (LOC_PREFIX, LOC_CARET) and (<Location>other).kind in (LOC_PREFIX, LOC_CARET) \
                    and (<Location>other).pattern == loc.pattern:
                raise ValueError('duplicate location "%s"' % loc.pattern.decode("latin-1"))
        self.locations.append(loc)
        if loc.kind in (LOC_REGEX, LOC_REGEX_ICASE):
            self.regex_locations.append(loc)

    cdef void finalize(self):
        self._compile_trie()
        for loc in self.locations:
            (<Location>loc).prepare()
            if (<Location>loc).children is not None:
                (<Location>loc).children.finalize()

    cdef _compile_trie(self):
        # Build a dict trie in Python, then flatten it breadth-first into one C array with
        # each node's children contiguous and sorted, so lookup needs no allocation.
        root = {"children": {}, "prefix": -1, "exact": -1}
        for idx, loc in enumerate(self.locations):
            l = <Location>loc
            if l.kind in (LOC_REGEX, LOC_REGEX_ICASE):
                continue
            node = root
            for byte in l.pattern:
                node = node["children"].setdefault(byte, {"children": {}, "prefix": -1, "exact": -1})
            if l.kind == LOC_EXACT:
                node["exact"] = idx
            else:
                node["prefix"] = idx
        order = [(root, 0)]
        k = 0
        while k < len(order):
            node = order[k][0]
            for byte in sorted(node["children"]):
                order.append((node["children"][byte], byte))
            k += 1
        self.ntrie = len(order)
        self.trie = <TrieNode *>malloc(sizeof(TrieNode) * self.ntrie)
        position = {id(node): i for i, (node, _) in enumerate(order)}
        for i, (node, byte) in enumerate(order):
            self.trie[i].byte = byte
            self.trie[i].prefix_loc = node["prefix"]
            self.trie[i].exact_loc = node["exact"]
            self.trie[i].nchildren = len(node["children"])
            if node["children"]:
                first = min(position[id(c)] for c in node["children"].values())
                self.trie[i].first_child = first
            else:
                self.trie[i].first_child = 0

    cdef int match(self, const char *uri, size_t n, regmatch_t *caps, LocationMatch m):
        """nginx's ngx_http_core_find_location for this level: the longest prefix (and
        then its nested level), unless an exact location matches; then this level's
        regexes, unless the prefix was ^~ or something final was found below."""
        cdef int node = 0
        cdef int longest = -1
        cdef size_t i
        cdef int lo, hi, mid
        cdef unsigned char ch
        cdef TrieNode *t
        cdef Location loc
        cdef int rc = MATCH_NONE
        cdef bint noregex = False
        cdef bint exact = False
        if self.ntrie:
            longest = self.trie[0].prefix_loc
            for i in range(n):
                t = &self.trie[node]
                ch = <unsigned char>uri[i]
                lo = t.first_child
                hi = lo + t.nchildren - 1
                node = -1
                while lo <= hi:
                    mid = (lo + hi) >> 1
                    if self.trie[mid].byte == ch:
                        node = mid
                        break
                    if self.trie[mid].byte < ch:
                        lo = mid + 1
                    else:
                        hi = mid - 1
                if node < 0:
                    break
                if self.trie[node].prefix_loc >= 0:
                    longest = self.trie[node].prefix_loc
            else:
                if self.trie[node].exact_loc >= 0:
                    m.found = <Location>self.locations[self.trie[node].exact_loc]
                    return MATCH_FINAL
        if longest >= 0:
            loc = <Location>self.locations[longest]
            m.found = loc
            rc = MATCH_PREFIX
            noregex = loc.kind == LOC_CARET
            if loc.children is not None:
                rc = loc.children.match(uri, n, caps, m)
                if rc == MATCH_FINAL:
                    return MATCH_FINAL
                rc = MATCH_PREFIX
        if not noregex:
            for r in self.regex_locations:
                if regexec(&(<Location>r).regex, uri, MAX_CAPTURES, caps, 0) == 0:
                    m.found = <Location>r
                    if (<Location>r).children is not None:
                        (<Location>r).children.match(uri, n, caps, m)
                    return MATCH_FINAL
        return rc


cdef class Server:
    """One `server` block: names and its locations."""
    cdef readonly list names
    cdef list keep
    cdef ServerName *cnames
    cdef int ncnames
    cdef regex_t *name_regexes
    cdef int nregexes
    cdef readonly LocationLevel level
    cdef LocationMatch matched
    cdef readonly bytes first_name
    cdef readonly str file
    cdef readonly int line
    cdef public PhasePlan phases     # for requests that no location took (404) or no server parsed
    cdef public PhaseHandler script  # the server-level rewrite directives (rewrite.pyx), or None
    cdef public object tls           # its TlsContext (tls.pyx) when it has certificates, or None
    cdef public object error_pages   # ErrorPages for requests no location took, or None

    def __init__(self, list names, str file="", int line=0):
        # regex names keep their case (they match case-insensitively); others fold
        self.names = [n if n.startswith("~") else n.lower() for n in names]
        self.level = LocationLevel()
        self.matched = LocationMatch()
        self.file = file
        self.line = line
        self.first_name = (self.names[0].encode("latin-1") if self.names else b"")
        self.phases = PhasePlan()
        self._compile_names()       # a bad regex fails here, while file:line is known

    def __dealloc__(self):
        cdef int k
        if self.cnames != NULL:
            free(self.cnames)
        if self.name_regexes != NULL:
            for k in range(self.nregexes):
                regfree(&self.name_regexes[k])
            free(self.name_regexes)

    @property
    def locations(self):
        return self.level.locations

    def add_location(self, Location loc):
        self.level.add(loc)

    def finalize(self):
        self.level.finalize()

    cdef _compile_names(self):
        self.keep = []
        self.ncnames = len(self.names)
        self.cnames = <ServerName *>malloc(sizeof(ServerName) * (self.ncnames or 1))
        regex_names = [name for name in self.names if name.startswith("~")]
        self.nregexes = len(regex_names)
        self.name_regexes = <regex_t *>malloc(sizeof(regex_t) * (self.nregexes or 1))
        for i, name in enumerate(self.names):
            kind = 0
            if name.startswith("~"):
                k = regex_names.index(name)
                rc = regcomp(&self.name_regexes[k], translate_regex(name[1:].encode("latin-1")),
                             REG_EXTENDED | REG_NOSUB | REG_ICASE)
                if rc != 0:
                    self.nregexes = k       # free only what compiled
                    raise ValueError('invalid server_name regex "%s"' % name[1:])
                self.keep.append(b"")
                self.cnames[i].name = NULL
                self.cnames[i].len = k
                self.cnames[i].kind = 4
                continue
            if name.startswith("*."):
                text, kind = name[1:], 1        # ".example.com"
            elif name.startswith("."):
                text, kind = name, 1            # also matches example.com itself
            elif name.endswith(".*"):
                text, kind = name[:len(name) - 1], 2       # "www."
            else:
                text = name
            b = text.encode("latin-1")
            self.keep.append(b)
            self.cnames[i].name = <const char *>(<bytes>b)
            self.cnames[i].len = len(b)
            self.cnames[i].kind = kind
            if name.startswith(".") and not name.startswith("*."):
                self.cnames[i].kind = 3

    cdef int match_name(self, const char *host, size_t n) noexcept:
        """How well this server's names match `host` (lowercase, no port, NUL
        terminated), ranked as nginx ranks them: an exact name, then the longest
        "*.example.com" / ".example.com", then the longest "www.example.*", then the first
        regex. Returns NAME_SCORE_* + the matched length, or 0."""
        cdef int i
        cdef int best = 0
        cdef int score
        cdef ServerName *sn
        for i in range(self.ncnames):
            sn = &self.cnames[i]
            score = 0
            if sn.kind == 0:
                if sn.len == n and memcmp(sn.name, host, n) == 0:
                    return NAME_SCORE_EXACT
            elif sn.kind == 1 or sn.kind == 3:
                # ".example.com": any subdomain; kind 3 ("." form) also the bare domain
                if n > sn.len and memcmp(sn.name, host + n - sn.len, sn.len) == 0:
                    score = NAME_SCORE_LEADING + <int>sn.len
                elif sn.kind == 3 and n == sn.len - 1 and memcmp(sn.name + 1, host, n) == 0:
                    score = NAME_SCORE_LEADING + <int>sn.len
            elif sn.kind == 2:
                if n > sn.len and memcmp(sn.name, host, sn.len) == 0:
                    score = NAME_SCORE_TRAILING + <int>sn.len
            elif sn.kind == 4:
                if regexec(&self.name_regexes[sn.len], host, 0, NULL, 0) == 0:
                    score = NAME_SCORE_REGEX
            if score > best:
                best = score
        return best

    cdef Location find_location(self, const char *uri, size_t n, regmatch_t *caps):
        """The location for a normalized, NUL-terminated path, or None."""
        cdef Location found
        self.matched.found = None
        self.level.match(uri, n, caps, self.matched)
        found = self.matched.found
        self.matched.found = None
        return found

    def lookup(self, str path):
        """Python entry for tests and `edge -T`: the location a path selects."""
        cdef bytes b = path.encode("latin-1")
        cdef regmatch_t caps[MAX_CAPTURES]
        return self.find_location(b, len(b), caps)

    def __repr__(self):
        return "Server(%r)" % (self.names,)


cdef class ListenBinding:
    """The servers on one listen address:port, in config order, and its default."""
    cdef readonly str key
    cdef readonly list servers
    cdef readonly Server default
    cdef public bint proxy_protocol
    cdef public bytes server_port
    cdef public bytes server_addr
    # request-head limits come from the default server, as in nginx
    cdef public int64_t client_header_timeout_ms
    cdef public size_t client_header_buffer_size
    cdef public size_t large_header_buffer_size
    cdef public int large_header_buffers
    cdef public size_t max_headers
    cdef public RealIP pp_trusted           # PROXY headers accepted only from these
    cdef public int64_t proxy_protocol_timeout_ms
    cdef public bint ssl                    # `listen ... ssl`: every connection starts with TLS
    cdef public bint tcp_nodelay            # tcp_nodelay of the default server (default on)
    cdef public int64_t ssl_handshake_timeout_ms
    cdef TimerList t_header, t_pp, t_handshake

    def __init__(self, str key):
        self.key = key
        self.servers = []
        self.default = None
        self.client_header_timeout_ms = 60000
        self.client_header_buffer_size = 1024
        self.large_header_buffer_size = 8192
        self.large_header_buffers = 4
        self.max_headers = 100
        self.pp_trusted = None
        self.proxy_protocol_timeout_ms = 30000
        self.ssl = False
        self.tcp_nodelay = True
        self.ssl_handshake_timeout_ms = 60000
        host, _, port = key.rpartition(":")
        self.server_port = port.encode()
        self.server_addr = host.strip("[]").encode()

    def add_server(self, Server server, bint default=False):
        if default:
            if self.default is not None and self.default in self.servers and self._explicit_default:
                raise ValueError("a duplicate default server for %s" % self.key)
            self.default = server
            self._explicit_default = True
        elif self.default is None:
            self.default = server
        self.servers.append(server)

    cdef bint _explicit_default

    def finalize(self):
        self.t_header = timer_list(self.client_header_timeout_ms)
        self.t_pp = timer_list(self.proxy_protocol_timeout_ms)
        self.t_handshake = timer_list(self.ssl_handshake_timeout_ms)

    cdef Server find_server(self, const char *host, size_t n):
        """nginx's order: exact name, longest leading wildcard, longest trailing
        wildcard, first regex (config order breaks ties), else the default server."""
        cdef Server s
        cdef Server best = None
        cdef int score
        cdef int best_score = 0
        if n:
            for s in self.servers:
                score = s.match_name(host, n)
                if score == NAME_SCORE_EXACT:
                    return s
                if score > best_score:
                    best_score = score
                    best = s
        return best if best is not None else self.default

    def lookup(self, str host):
        cdef bytes b = host.lower().encode("latin-1")
        return self.find_server(b, len(b))


cdef class Plan:
    """A whole compiled configuration generation, as the workers run it."""
    cdef readonly dict bindings      # listen key -> ListenBinding
    cdef readonly list upstreams
    cdef public int worker_connections
    cdef public int64_t shutdown_timeout_ms

    def __init__(self):
        self.bindings = {}
        self.upstreams = []
        self.worker_connections = 1024
        self.shutdown_timeout_ms = 10000

    def binding(self, str key):
        b = self.bindings.get(key)
        if b is None:
            b = self.bindings[key] = ListenBinding(key)
        return b

    def add_upstream(self, Upstream u):
        self.upstreams.append(u)

    def attach(self):
        """In the worker, before it serves this plan: resolve the metrics series in
        the shared zone (Zones.use_in_worker) and open the access log files."""
        seen = set()
        for b in self.bindings.values():
            for s in (<ListenBinding>b).servers:
                if id(s) in seen:
                    continue
                seen.add(id(s))
                (<Server>s).phases.attach()
                for loc in (<Server>s).locations:
                    loc.attach()
        for u in self.upstreams:
            (<Upstream>u).attach()

    def finalize(self):
        seen = set()
        for b in self.bindings.values():
            (<ListenBinding>b).finalize()
            for s in (<ListenBinding>b).servers:
                if id(s) not in seen:
                    seen.add(id(s))
                    s.finalize()
        for u in self.upstreams:
            (<Upstream>u).finalize()
