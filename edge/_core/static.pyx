# Static files, as nginx's static, index and try_files modules serve them beside the proxy
# routes (edge/modules/static.py holds the directives; docs/static.md the rules).
#
# A request that reaches a CONTENT_STATIC location:
#   try_files   each name is mapped to a path and tested (a name ending in "/" must be a
#               directory, any other a non-directory); the first that exists becomes the
#               URI; else the last argument: =code, @named location, or a URI (internal
#               redirect: the location is searched again).
#   index       a URI ending in "/" tries the index files and redirects internally to the
#               first that exists; none: 403 for a directory (autoindex is off), else 404.
#   file        open(2) (symlinks followed, as nginx's default), fstat; a directory is a 301
#               to the URI with a "/"; the head (types, charset, Last-Modified, ETag,
#               expires, conditionals, ranges) goes in wb, the body is sent from the file
#               by the response spool (buffering.pyx) as the socket takes it: sendfile(2)
#               on plain connections, bounded pread+write (or kTLS) otherwise.
#
# Path safety: the URI is normalized before routing (uri.pyx: percent-decoded, no "." or
# ".." segments, an encoded NUL refused). The file path is root + URI, or alias + what
# follows the location prefix; a path holding a ".." segment or a NUL, or an alias path
# that would leave the alias directory (`location /img { alias /data/img; }` and
# "/img../x"), is a 404.

cdef extern from "<sys/stat.h>" nogil:
    ctypedef struct edge_stat_t "struct stat":
        unsigned int st_mode
        int64_t st_size
        time_t st_mtime
        unsigned int st_uid
    int edge_fstat "fstat"(int fd, edge_stat_t *st)
    int edge_stat "stat"(const char *path, edge_stat_t *st)
    int edge_fstatat "fstatat"(int dirfd, const char *path, edge_stat_t *st, int flags)
    bint S_ISDIR(unsigned int m)
    bint S_ISREG(unsigned int m)

cdef extern from "<fcntl.h>" nogil:
    enum:
        O_RDONLY
        O_NONBLOCK
        O_NOFOLLOW
        O_DIRECTORY
        AT_SYMLINK_NOFOLLOW
    int openat(int dirfd, const char *path, int flags, ...)

cdef extern from "<errno.h>" nogil:
    enum:
        ENOENT
        ENOTDIR
        ENAMETOOLONG
        EACCES
        ELOOP
        EMLINK

cdef extern from *:
    """
    #include <errno.h>
    static void edge_set_errno(int e) { errno = e; }
    """
    void edge_set_errno(int e) nogil


cdef enum SymlinksMode:
    SYM_OFF = 0
    SYM_ON = 1
    SYM_IF_NOT_OWNER = 2

cdef enum ExpiresKind:
    EXP_OFF = 0
    EXP_EPOCH = 1
    EXP_MAX = 2
    EXP_TIME = 3
    EXP_MODIFIED = 4

cdef enum ImsMode:
    IMS_OFF = 0
    IMS_EXACT = 1
    IMS_BEFORE = 2

DEF MAX_RANGES = 256            # more ranges than this: the whole file (200), never a 416

cdef uint64_t g_boundary = 0    # multipart/byteranges boundaries, as nginx numbers them


cdef class StaticConf:
    """One static location's settings, compiled by edge/modules/static.py."""
    cdef Template path          # root, or alias
    cdef bint alias
    cdef bint alias_regex       # in a regex location, the alias is the whole path
    cdef bint alias_slash       # the alias ends in "/"
    cdef bytes prefix           # the location's prefix (alias replaces it)
    cdef public list index      # Templates
    cdef public dict types      # lowercase extension -> type
    cdef public bytes default_type
    cdef public object charset  # bytes or None
    cdef public bint charset_all
    cdef public set charset_types
    cdef public bint sendfile
    cdef public bint tcp_nopush
    cdef public bint etag
    cdef public bint log_not_found
    cdef public int ims
    cdef int expires_kind
    cdef int64_t expires_s
    cdef public list try_files  # Templates, or None
    cdef public int try_code
    cdef public Template try_uri
    cdef public Location try_named
    cdef public int symlinks            # disable_symlinks: SYM_OFF, SYM_ON, SYM_IF_NOT_OWNER
    cdef public Template symlinks_from  # from=part, or None

    def set_path(self, Template path, bint alias, bint regex, bytes prefix):
        self.path = path
        self.alias = alias
        self.alias_regex = regex
        self.alias_slash = path.source.endswith("/")
        self.prefix = prefix

    def set_expires(self, int kind, int64_t seconds):
        self.expires_kind = kind
        self.expires_s = seconds


# ---- helpers -------------------------------------------------------------------------------

cdef edge_header *find_header(Client c, const char *lower, size_t n) noexcept:
    cdef size_t i
    for i in range(c.nheaders):
        if name_is(c.headers[i].name, c.headers[i].name_len, lower, n):
            return &c.headers[i]
    return NULL


cdef int append_http_date(Buf *out, int64_t t) noexcept:
    cdef tm parts
    cdef char text[64]
    cdef size_t n
    cdef time_t tt = <time_t>t
    gmtime_r(&tt, &parts)
    n = strftime(text, 64, "%a, %d %b %Y %H:%M:%S GMT", &parts)
    return buf_append(out, text, n)


cdef int64_t days_from_civil(int64_t y, int64_t m, int64_t d) noexcept:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef int month_of(const char *p) noexcept:
    cdef const char *names = "JanFebMarAprMayJunJulAugSepOctNovDec"
    cdef int i
    for i in range(12):
        if p[0] == names[i * 3] and p[1] == names[i * 3 + 1] and p[2] == names[i * 3 + 2]:
            return i + 1
    return 0


cdef int read_num(const char *p, size_t n, size_t *i, int digits) noexcept:
    """`digits` decimal digits at p[*i]; -1 when they are not there."""
    cdef int v = 0
    cdef int k
    if i[0] + <size_t>digits > n:
        return -1
    for k in range(digits):
        if p[i[0]] < 48 or p[i[0]] > 57:
            return -1
        v = v * 10 + (p[i[0]] - 48)
        i[0] += 1
    return v


cdef int64_t parse_http_date(const char *p, size_t n) noexcept:
    """An HTTP date (RFC 1123, RFC 850 or asctime, as nginx reads them) as epoch seconds,
    or -1."""
    cdef size_t i = 0
    cdef int day, month, hh, mm, ss
    cdef int year = 0
    cdef bint asctime = False
    while i < n and p[i] != 32 and p[i] != 44:
        i += 1
    if i < n and p[i] == 44:
        i += 1
    else:
        asctime = True
    while i < n and p[i] == 32:
        i += 1
    if asctime:
        if i + 3 > n:
            return -1
        month = month_of(p + i)
        i += 3
        while i < n and p[i] == 32:
            i += 1
        if i + 2 <= n and p[i + 1] >= 48 and p[i + 1] <= 57:
            day = read_num(p, n, &i, 2)
        else:
            day = read_num(p, n, &i, 1)
        if i >= n or p[i] != 32:
            return -1
        i += 1
    else:
        day = read_num(p, n, &i, 2)
        if day < 0 or i >= n or (p[i] != 32 and p[i] != 45):
            return -1
        i += 1
        if i + 3 > n:
            return -1
        month = month_of(p + i)
        i += 3
        if i >= n or (p[i] != 32 and p[i] != 45):
            return -1
        i += 1
        if i + 4 <= n and p[i + 2] >= 48 and p[i + 2] <= 57:
            year = read_num(p, n, &i, 4)
        else:
            year = read_num(p, n, &i, 2)
            if year >= 0:
                year += 1900 if year >= 70 else 2000
        if year < 0 or i >= n or p[i] != 32:
            return -1
        i += 1
    hh = read_num(p, n, &i, 2)
    if hh < 0 or i >= n or p[i] != 58:
        return -1
    i += 1
    mm = read_num(p, n, &i, 2)
    if mm < 0 or i >= n or p[i] != 58:
        return -1
    i += 1
    ss = read_num(p, n, &i, 2)
    if ss < 0:
        return -1
    if asctime:
        if i >= n or p[i] != 32:
            return -1
        i += 1
        year = read_num(p, n, &i, 4)
        if year < 0:
            return -1
    if month == 0 or day < 1 or day > 31 or hh > 23 or mm > 59 or ss > 59 or year < 1970:
        return -1
    return days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss


cdef bint has_dotdot_segment(const char *p, size_t n) noexcept:
    cdef size_t i = 0
    while i + 1 < n:
        if p[i] == 46 and p[i + 1] == 46 and (i == 0 or p[i - 1] == 47) \
                and (i + 2 == n or p[i + 2] == 47):
            return True
        i += 1
    return False


cdef int map_path(Client c, StaticConf sc, const char *uri, size_t n, Buf *out) noexcept:
    """The file path of `uri` (NUL terminated in out). -1 when it must not be served: it
    would leave the root or alias, or holds a NUL."""
    cdef size_t plen
    buf_reset(out)
    eval_template(sc.path, c, out)
    if sc.alias and not sc.alias_regex:
        plen = len(sc.prefix)
        if n >= plen and memcmp(uri, <const char *>sc.prefix, plen) == 0:
            uri += plen
            n -= plen
        else:
            return -1
        # the alias directory, then nothing or "/...": never a sibling of it
        while buf_len(out) > 1 and out.data[out.end - 1] == 47:
            out.end -= 1
        if n and uri[0] != 47:
            if not sc.alias_slash:
                return -1
            buf_append_str(out, "/")
        buf_append(out, uri, n)
    elif not sc.alias:
        buf_append(out, uri, n)
    if buf_len(out) == 0 or memchr(out.data + out.start, 0, buf_len(out)) != NULL:
        return -1
    if has_dotdot_segment(out.data + out.start, buf_len(out)):
        return -1
    buf_append(out, "\0", 1)
    out.end -= 1
    return 0


cdef bint append_path_variable(int v, Client c, Buf *out) noexcept:
    """$document_root (the root or alias in force, evaluated) and $request_filename (the
    file path the URI maps to, as map_path makes it), as nginx has them in every
    location; not found where no root applies or the URI would leave an alias."""
    cdef StaticConf sc
    cdef Buf tmp
    cdef bint found
    if c.loc is None or c.loc.static is None:
        return False
    sc = <StaticConf>c.loc.static
    if sc.path is None:
        return False
    if v == VAR_DOCUMENT_ROOT:
        eval_template(sc.path, c, out)
        return True
    memset(&tmp, 0, sizeof(Buf))
    found = map_path(c, sc, c.uri.data, buf_len(&c.uri), &tmp) == 0
    if found:
        buf_append(out, tmp.data + tmp.start, buf_len(&tmp))
    buf_free(&tmp)
    return found


cdef inline bint method_is(Client c, const char *m, size_t n) noexcept:
    return c.method_len == n and memcmp(c.method, m, n) == 0


cdef void set_uri(Client c, const char *p, size_t n, bint split_args):
    """The request's URI becomes p[0:n]; with split_args, a "?" starts new arguments (an
    internal redirect's URI, not a file name that was found)."""
    cdef const char *q
    cdef Buf t
    memset(&t, 0, sizeof(Buf))
    buf_init(&t, n + 1)
    buf_append(&t, p, n)        # p may point into c.uri
    p = t.data + t.start
    q = <const char *>memchr(p, 63, n) if split_args else NULL
    if q != NULL:
        buf_reset(&c.argbuf)
        buf_append(&c.argbuf, q + 1, n - <size_t>(q + 1 - p))
        c.has_args = buf_len(&c.argbuf) > 0
        c.args = c.argbuf.data + c.argbuf.start
        c.args_len = buf_len(&c.argbuf)
        n = <size_t>(q - p)
    buf_reset(&c.uri)
    buf_append(&c.uri, p, n)
    buf_append(&c.uri, "\0", 1)
    c.uri.end -= 1
    buf_free(&t)


cdef void enter_location(Client c, Location loc):
    """An internal redirect (index, try_files) reached `loc`: its rewrite and access phases
    run when it is another location than the one that redirected, then its content."""
    if loc is None:
        c.loc = None
        c.finish_without_body(404)
        return
    if loc is not c.loc:
        if loc.phases.keep_head and loc.content == CONTENT_PROXY and not \
                (c.loc.phases.keep_head and c.loc.content == CONTENT_PROXY):
            # as handle_request does: a log format reads the head after the body used rb
            c.rb.start -= c.head_len
            c.keep_request_head(c.head_len)
            c.rb.start += c.head_len
        run_location(c, loc)        # a new location: its rewrite and access phases first
        return
    c.run_content()


cdef void run_location(Client c, Location loc):
    """`loc` takes the request from the start: its rewrite phase, then access and content
    (an internal redirect: index, try_files, error_page)."""
    cdef int r
    c.loc = loc
    if loc.phases.nrewrite:
        r = run_handlers(loc.phases.rewrite, c)
        if r == PH_RELOCATE:
            r = c.relocate(0)
        if r != PH_CONTINUE:
            if r != PH_DONE:
                c.finish_without_body(r)
            return
    c.access_then_content()


cdef void internal_redirect(Client c, const char *p, size_t n, bint split_args=True):
    if c.uri_changes <= 0:
        if g_log_fn is not None:
            g_log_fn("error", "rewrite or internal redirection cycle while internally redirecting to \"%s\""
                     % p[:n].decode("latin-1"))
        c.finish_without_body(500)
        return
    c.uri_changes -= 1
    set_uri(c, p, n, split_args)
    c.rewritten = True          # a proxy location reached this way sends the new URI
    c.cap_base = NULL
    enter_location(c, c.server.find_location(c.uri.data, buf_len(&c.uri), c.caps))


cdef int open_errno_status(int err) noexcept:
    if err == ENOENT or err == ENOTDIR or err == ENAMETOOLONG:
        return 404
    if err == EACCES or err == ELOOP or err == EMLINK:
        return 403      # ELOOP: a symbolic link that disable_symlinks refuses (nginx)
    return 500


cdef int open_component(int at, const char *name, int flags, int mode) noexcept:
    """One path component under the directory `at`, as disable_symlinks allows it: not a
    link at all (on), or a link owned by its target's owner (if_not_owner). -1 with
    errno ELOOP for a refused link."""
    cdef int fd
    cdef edge_stat_t link_st, st
    cdef int err
    if mode == SYM_ON:
        return openat(at, name, flags | O_NOFOLLOW)
    fd = openat(at, name, flags)
    if fd < 0:
        return -1
    if edge_fstatat(at, name, &link_st, AT_SYMLINK_NOFOLLOW) != 0 or edge_fstat(fd, &st) != 0:
        err = errno
        close(fd)
        edge_set_errno(err)
        return -1
    if link_st.st_uid != st.st_uid:
        close(fd)
        edge_set_errno(ELOOP)
        return -1
    return fd


cdef int open_file(Client c, StaticConf sc, Buf *path, int flags) noexcept:
    """open(2) of a mapped path, NUL terminated in `path`. With disable_symlinks on or
    if_not_owner, the path is walked one component at a time with openat(2), from "/" or
    from the end of from=part, so no component may be a refused symbolic link (nginx's
    walk; the file is then the one checked, with no window between check and open)."""
    cdef const char *p = path.data + path.start
    cdef size_t n = buf_len(path)
    cdef size_t start = 0
    cdef size_t i, j
    cdef int at, fd, err
    cdef int mode = sc.symlinks
    cdef char name[4096]
    cdef Buf from_buf
    if mode == SYM_OFF or n == 0 or p[0] != 47:
        return open(p, flags, 0)
    if sc.symlinks_from is not None:
        memset(&from_buf, 0, sizeof(Buf))
        eval_template(sc.symlinks_from, c, &from_buf)
        j = buf_len(&from_buf)
        if j and j <= n and memcmp(p, from_buf.data + from_buf.start, j) == 0:
            if j == n:
                mode = SYM_OFF
            elif p[j] == 47:
                start = j
            elif p[j - 1] == 47:
                start = j - 1
        buf_free(&from_buf)
        if mode == SYM_OFF:
            return open(p, flags, 0)
    if start == 0:
        at = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
    else:
        if start >= 4096:
            edge_set_errno(ENAMETOOLONG)
            return -1
        memcpy(name, p, start)
        name[start] = 0
        at = open(name, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
    if at < 0:
        return -1
    i = start
    while True:
        while i < n and p[i] == 47:
            i += 1
        j = i
        while j < n and p[j] != 47:
            j += 1
        if j - i >= 4096:
            close(at)
            edge_set_errno(ENAMETOOLONG)
            return -1
        memcpy(name, p + i, j - i)
        name[j - i] = 0
        if j >= n:
            fd = open_component(at, name, flags, mode)
            err = errno
            close(at)
            edge_set_errno(err)
            return fd
        fd = open_component(at, name, O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC, mode)
        err = errno
        close(at)
        if fd < 0:
            edge_set_errno(err)
            return -1
        at = fd
        i = j


cdef int stat_file(Client c, StaticConf sc, Buf *path, edge_stat_t *st) noexcept:
    """stat(2) of a mapped path, through the disable_symlinks walk when it is on."""
    cdef int fd, err
    if sc.symlinks == SYM_OFF:
        return edge_stat(path.data + path.start, st)
    fd = open_file(c, sc, path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    if fd < 0:
        return -1
    if edge_fstat(fd, st) != 0:
        err = errno
        close(fd)
        edge_set_errno(err)
        return -1
    close(fd)
    return 0


cdef void log_static_error(Client c, StaticConf sc, const char *what, Buf *path, int err):
    if g_log_fn is None or (err == ENOENT and not g_log_info):
        return
    if not sc.log_not_found and open_errno_status(err) == 404:
        return          # `log_not_found off`: a missing file is not worth a line
    try:
        import os
        g_log_fn("error" if err != ENOENT else "info", "%s \"%s\" failed (%d: %s)" % (
            what.decode(), path.data[path.start:path.end].decode("latin-1", "replace"),
            err, os.strerror(err)))
    except Exception:
        pass


# ---- the content handler ----------------------------------------------------------------

cdef void serve_static(Client c, StaticConf sc):
    cdef Buf name
    cdef Buf path
    cdef Template t
    cdef edge_stat_t st
    cdef bint want_dir, found = False
    memset(&name, 0, sizeof(Buf))
    memset(&path, 0, sizeof(Buf))
    if sc.try_files is not None:
        buf_init(&name, 256)
        buf_init(&path, 256)
        try:
            for t in sc.try_files:
                buf_reset(&name)
                eval_template(t, c, &name)
                if buf_len(&name) == 0:
                    continue
                # a name written with a final "/" must be a directory; the URI it gives
                # has no "/" (so a directory named without one is then redirected)
                want_dir = t.source.endswith("/")
                if want_dir and buf_len(&name) > 1 and name.data[name.end - 1] == 47:
                    name.end -= 1
                if map_path(c, sc, name.data + name.start, buf_len(&name), &path) < 0:
                    continue
                if stat_file(c, sc, &path, &st) != 0:
                    continue
                if S_ISDIR(st.st_mode) != want_dir:
                    continue
                found = True
                set_uri(c, name.data + name.start, buf_len(&name), False)
                break
            if not found:
                if sc.try_code:
                    c.finish_without_body(sc.try_code)
                    return
                if sc.try_named is not None:
                    if c.uri_changes <= 0:
                        c.finish_without_body(500)
                        return
                    c.uri_changes -= 1
                    enter_location(c, sc.try_named)
                    return
                buf_reset(&name)
                eval_template(sc.try_uri, c, &name)
                internal_redirect(c, name.data + name.start, buf_len(&name))
                return
        finally:
            buf_free(&name)
            buf_free(&path)
    serve_uri(c, sc)


cdef void serve_uri(Client c, StaticConf sc):
    cdef Buf path
    cdef edge_stat_t st
    cdef int fd, err
    cdef size_t n = buf_len(&c.uri)
    cdef bint get_head = method_is(c, "GET", 3) or c.is_head
    cdef bint post = method_is(c, "POST", 4)
    cdef int pre = 0
    if not get_head and not post:
        c.finish_without_body(405)
        return
    if n and c.uri.data[n - 1] == 47:
        serve_index(c, sc)
        return
    buf_init(&path, 256)
    try:
        if map_path(c, sc, c.uri.data, n, &path) < 0:
            c.finish_without_body(404)
            return
        if get_head and c.loc is not None and c.loc.gzip is not None and \
                (c.loc.gzip.static or c.loc.gzip.br_static):
            # brotli_static, gzip_static (gzip.pyx): a precompressed twin "path.br", "path.gz"
            pre = gzip_static_open(c, <GzipConf>c.loc.gzip, sc, &path, &fd, &st)
            if pre & PRE_GZ:
                send_file(c, sc, fd, &st, pre)
                return
        fd = open_file(c, sc, &path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        if fd < 0:
            err = errno
            log_static_error(c, sc, "open()", &path, err)
            c.finish_without_body(open_errno_status(err))
            return
        if edge_fstat(fd, &st) != 0:
            err = errno
            close(fd)
            log_static_error(c, sc, "fstat()", &path, err)
            c.finish_without_body(500)
            return
        if S_ISDIR(st.st_mode):
            close(fd)
            redirect_to_directory(c, sc)
            return
        if not S_ISREG(st.st_mode):
            close(fd)
            c.finish_without_body(404)
            return
        if post:
            close(fd)
            c.finish_without_body(405)
            return
        send_file(c, sc, fd, &st, pre)
    finally:
        buf_free(&path)


cdef void serve_index(Client c, StaticConf sc):
    cdef Buf name
    cdef Buf path
    cdef Template t
    cdef edge_stat_t st
    cdef int err, status = 0
    buf_init(&name, 256)
    buf_init(&path, 256)
    try:
        for t in sc.index:
            buf_reset(&name)
            eval_template(t, c, &name)
            if buf_len(&name) and name.data[name.start] == 47:
                internal_redirect(c, name.data + name.start, buf_len(&name))
                return
            buf_reset(&path)
            buf_append(&path, c.uri.data, buf_len(&c.uri))
            buf_append(&path, name.data + name.start, buf_len(&name))
            buf_reset(&name)
            buf_append(&name, path.data + path.start, buf_len(&path))
            if map_path(c, sc, name.data + name.start, buf_len(&name), &path) < 0:
                continue
            if stat_file(c, sc, &path, &st) == 0:
                internal_redirect(c, name.data + name.start, buf_len(&name), False)
                return
            err = errno
            if err == ENOENT:
                continue
            log_static_error(c, sc, "stat()", &path, err)
            status = 403 if err == EACCES or err == ELOOP or err == EMLINK else 404 if err == ENOTDIR else 500
            break
        if status == 0:
            # no index file: a directory is forbidden (autoindex off), anything else absent
            if map_path(c, sc, c.uri.data, buf_len(&c.uri), &path) < 0 or \
                    stat_file(c, sc, &path, &st) != 0:
                status = 404
            elif S_ISDIR(st.st_mode):
                if g_log_fn is not None:
                    g_log_fn("error", "directory index of \"%s\" is forbidden"
                             % path.data[path.start:path.end].decode("latin-1", "replace"))
                status = 403
            else:
                status = 404
        c.finish_without_body(status)
    finally:
        buf_free(&name)
        buf_free(&path)


cdef void append_expires(Client c, StaticConf sc, int64_t mtime) noexcept:
    append_expires_to(&c.wb, sc.expires_kind, sc.expires_s, mtime)


cdef void append_expires_to(Buf *out, int kind, int64_t secs, int64_t mtime) noexcept:
    """nginx's Expires and Cache-Control for `expires`; mtime -1 (a response without
    Last-Modified) counts `modified` from now, as nginx does."""
    cdef int64_t now = g_date_second
    cdef int64_t at, max_age
    if kind == EXP_OFF:
        return
    if kind == EXP_EPOCH:
        buf_append_str(out, "Expires: Thu, 01 Jan 1970 00:00:01 GMT\r\nCache-Control: no-cache\r\n")
        return
    if kind == EXP_MAX:
        buf_append_str(out, "Expires: Thu, 31 Dec 2037 23:55:55 GMT\r\nCache-Control: max-age=315360000\r\n")
        return
    buf_append_str(out, "Expires: ")
    if secs == 0:
        append_http_date(out, now)
        buf_append_str(out, "\r\nCache-Control: max-age=0\r\n")
        return
    at = (mtime if kind == EXP_MODIFIED and mtime >= 0 else now) + secs
    max_age = at - now
    append_http_date(out, at)
    if secs < 0 or max_age < 0:
        buf_append_str(out, "\r\nCache-Control: no-cache\r\n")
    else:
        buf_append_str(out, "\r\nCache-Control: max-age=")
        buf_append_uint(out, <uint64_t>max_age)
        buf_append_str(out, "\r\n")


cdef inline bint expires_status(int status) noexcept:
    """The statuses nginx's headers filter adds Expires (and add_header) to."""
    return (status == 200 or status == 201 or status == 204 or status == 206 or
            status == 301 or status == 302 or status == 303 or status == 304 or
            status == 307 or status == 308)


cdef class ExpiresFilter(HeaderFilter):
    """`expires` on the responses of a location that serves no files (proxy_pass,
    return): Expires and Cache-Control on nginx's statuses. A proxied response's own
    Expires and Cache-Control are dropped then (proxy.pyx), and `modified` counts from
    its Last-Modified."""
    cdef int kind
    cdef int64_t secs

    def __init__(self, int kind, int64_t secs):
        self.name = "expires"
        self.kind = kind
        self.secs = secs

    cdef int filter(self, Client c, Buf *out) except -1:
        if expires_status(c.status):
            append_expires_to(out, self.kind, self.secs, c.resp_mtime)
        return 0


cdef void redirect_to_directory(Client c, StaticConf sc):
    """A directory named without its "/": 301 to the URI with it (and the arguments)."""
    cdef bytes body = error_body(301)
    c.err_status = 0            # nginx's special response: the redirect keeps its 301
    c.start_discard()
    c.begin_head(301)
    buf_append_str(&c.wb, "HTTP/1.1 301 Moved Permanently\r\nServer: edge\r\n")
    c.append_date()
    buf_append_str(&c.wb, "Content-Type: text/html\r\nContent-Length: ")
    buf_append_uint(&c.wb, len(body))
    buf_append_str(&c.wb, "\r\nLocation: ")
    if c.loc.absolute_redirect:
        buf_append_str(&c.wb, "https://" if c.ssl != NULL else "http://")
        if c.host_len:
            buf_append(&c.wb, c.host, c.host_len)
        else:
            buf_append(&c.wb, c.binding.server_addr, len(c.binding.server_addr))
        if c.binding.server_port != (b"443" if c.ssl != NULL else b"80") and c.loc.port_in_redirect:
            buf_append_str(&c.wb, ":")
            buf_append(&c.wb, c.binding.server_port, len(c.binding.server_port))
    buf_append(&c.wb, c.uri.data, buf_len(&c.uri))
    buf_append_str(&c.wb, "/")
    if c.has_args and c.args_len:
        buf_append_str(&c.wb, "?")
        buf_append(&c.wb, c.args, c.args_len)
    buf_append_str(&c.wb, "\r\n")
    append_expires(c, sc, 0)
    c.append_connection()
    if not c.is_head:
        buf_append_bytes(&c.wb, body)
    c.response_done()


cdef bytes content_type_of(Client c, StaticConf sc):
    """The type by the URI's extension (lowercased, as nginx), else default_type; with
    `; charset=...` when charset applies to it."""
    cdef const char *u = c.uri.data
    cdef size_t n = buf_len(&c.uri)
    cdef size_t i = n
    cdef char ext[32]
    cdef size_t k, elen
    cdef bytes ctype = None
    while i > 0 and u[i - 1] != 47 and u[i - 1] != 46:
        i -= 1
    if i > 0 and u[i - 1] == 46:
        elen = n - i
        if 0 < elen < 32:
            for k in range(elen):
                ext[k] = u[i + k] + 32 if 65 <= u[i + k] <= 90 else u[i + k]
            ctype = sc.types.get(ext[:elen])
    if ctype is None:
        ctype = sc.default_type
    if sc.charset is not None and (sc.charset_all or ctype.lower() in sc.charset_types):
        ctype = ctype + b"; charset=" + <bytes>sc.charset
    return ctype


cdef bint etag_listed(const char *v, size_t n, const char *etag, size_t elen, bint weak) noexcept:
    """Does the list `v` (If-None-Match / If-Match) name our etag? `*` matches; with
    `weak`, W/ prefixes are ignored (RFC 9110 weak comparison)."""
    cdef size_t i = 0
    cdef size_t start
    while i < n and (v[i] == 32 or v[i] == 9):
        i += 1
    if n - i == 1 and v[i] == 42:
        return True
    if elen == 0:
        return False
    while i < n:
        while i < n and (v[i] == 32 or v[i] == 9 or v[i] == 44):
            i += 1
        if weak and i + 2 <= n and v[i] == 87 and v[i + 1] == 47:
            i += 2
        start = i
        while i < n and v[i] != 44 and v[i] != 32 and v[i] != 9:
            i += 1
        if i - start == elen and memcmp(v + start, etag, elen) == 0:
            return True
    return False


cdef int parse_ranges(const char *v, size_t n, int64_t size, int64_t *starts,
                      int64_t *ends, int *count) noexcept:
    """nginx's reading of `Range: bytes=...` against a file of `size` bytes: 0 the ranges
    ([start, end) each), 416 when none is satisfiable or the header is malformed, 200 to
    send the whole file (too many ranges, or more bytes than the file)."""
    cdef size_t i = 6
    cdef int64_t start, end, total = 0
    cdef bint suffix, goto_found
    cdef int64_t cutoff = 0x7fffffffffffffff // 10
    count[0] = 0
    while True:
        start = 0
        end = 0
        suffix = False
        while i < n and v[i] == 32:
            i += 1
        if i < n and v[i] != 45:
            if v[i] < 48 or v[i] > 57:
                return 416
            while i < n and 48 <= v[i] <= 57:
                if start >= cutoff:
                    return 416
                start = start * 10 + (v[i] - 48)
                i += 1
            while i < n and v[i] == 32:
                i += 1
            if i >= n or v[i] != 45:
                return 416
            i += 1
            while i < n and v[i] == 32:
                i += 1
            if i >= n or v[i] == 44:
                end = size
                goto_found = True
            else:
                goto_found = False
        else:
            if i >= n:
                return 416
            suffix = True
            i += 1
            goto_found = False
        if not goto_found:
            if i >= n or v[i] < 48 or v[i] > 57:
                return 416
            while i < n and 48 <= v[i] <= 57:
                if end >= cutoff:
                    return 416
                end = end * 10 + (v[i] - 48)
                i += 1
            while i < n and v[i] == 32:
                i += 1
            if i < n and v[i] != 44:
                return 416
            if suffix:
                start = size - end if end < size else 0
                end = size - 1
            if end >= size:
                end = size
            else:
                end += 1
        if start < end:
            if count[0] == MAX_RANGES:
                return 200
            starts[count[0]] = start
            ends[count[0]] = end
            count[0] += 1
            total += end - start
        elif start == 0:
            return 200
        if i >= n:
            break
        i += 1      # ","
    if count[0] == 0:
        return 416
    if total > size:
        return 200
    return 0


cdef void send_file(Client c, StaticConf sc, int fd, edge_stat_t *st, int pre):
    """pre: gzip_static's PRE_GZ (fd is the precompressed twin: Content-Encoding: gzip,
    or br with PRE_BR) and PRE_VARY (Vary: Accept-Encoding with gzip_vary), or 0."""
    global g_boundary
    cdef int64_t size = st.st_size
    cdef int64_t mtime = st.st_mtime
    cdef char etag[64]
    cdef size_t elen = 0
    cdef edge_header *h
    cdef edge_header *range_h = NULL
    cdef int64_t t
    cdef bint not_modified
    cdef int64_t starts[MAX_RANGES]
    cdef int64_t ends[MAX_RANGES]
    cdef int nranges = 0
    cdef int r, k
    cdef bytes ctype = content_type_of(c, sc)
    cdef bytes boundary = None
    cdef list parts = None
    cdef bytes part_head
    cdef int64_t length = 0
    cdef ResponseSpool s
    cdef int one = 1
    cdef bint plain
    cdef int gz = GZ_NONE
    cdef GzipConf g = c.loc.gzip if c.loc is not None else None
    cdef edge_header known[2]
    if sc.etag:
        elen = <size_t>snprintf(etag, 64, "\"%llx-%llx\"", <unsigned long long>mtime,
                                <unsigned long long>size)
    if c.err_status == 200:
        c.err_status = 0        # error_page ... =200: the file's own response, as usual
    # an error page (error_page.pyx) goes out with the error's status: nginx's
    # not_modified, range and expires filters leave such a response alone
    plain = c.err_status == 0
    # conditionals (nginx's not_modified filter)
    h = find_header(c, "if-unmodified-since", 19) if plain else NULL
    if h != NULL:
        t = parse_http_date(h.value, h.value_len)
        if t < 0 or mtime > t:
            close(fd)
            c.finish_without_body(412)
            return
    h = find_header(c, "if-match", 8) if plain else NULL
    if h != NULL and not etag_listed(h.value, h.value_len, etag, elen, False):
        close(fd)
        c.finish_without_body(412)
        return
    h = find_header(c, "if-modified-since", 17) if plain else NULL
    range_h = find_header(c, "if-none-match", 13) if plain else NULL
    if h != NULL or range_h != NULL:
        not_modified = True
        if h != NULL:
            if sc.ims == IMS_OFF:
                not_modified = False
            else:
                t = parse_http_date(h.value, h.value_len)
                if t < 0 or (sc.ims == IMS_EXACT and t != mtime) or (sc.ims == IMS_BEFORE and t < mtime):
                    not_modified = False
        if not_modified and range_h != NULL:
            if not etag_listed(range_h.value, range_h.value_len, etag, elen, True):
                not_modified = False
        if not_modified:
            close(fd)
            c.start_discard()
            c.begin_head(304)
            buf_append_str(&c.wb, "HTTP/1.1 304 Not Modified\r\nServer: edge\r\n")
            c.append_date()
            buf_append_str(&c.wb, "Last-Modified: ")
            append_http_date(&c.wb, mtime)
            buf_append_str(&c.wb, "\r\n")
            if elen:
                buf_append_str(&c.wb, "ETag: ")
                buf_append(&c.wb, etag, elen)
                buf_append_str(&c.wb, "\r\n")
            append_expires(c, sc, mtime)
            c.append_connection()
            c.response_done()
            return
    if g is not None and (g.enable or g.br_enable) and not (pre & PRE_GZ):
        # gzip (gzip.pyx), decided before ranges as nginx's filters run: a compressed
        # response has no length, so no range applies to it
        c.gz = None
        c.gz_req = gzip_request(c, g)
        known[0].name = "last-modified"
        known[0].name_len = 13
        known[1].name = "etag"
        known[1].name_len = 4
        gz = gzip_decide(c, g, 200, False, size, ctype, len(ctype), known, 2 if elen else 1)
        if gz == GZ_ON and not c.is_head:
            c.gz = gzip_start(c, g, size)
            if c.gz is None:
                gz = GZ_VARY
    # ranges (nginx's range filter): If-Range must name this file's etag or mtime
    range_h = find_header(c, "range", 5) if plain and gz != GZ_ON else NULL
    if range_h != NULL and range_h.value_len >= 7 and strncasecmp(range_h.value, "bytes=", 6) == 0:
        h = find_header(c, "if-range", 8)
        if h != NULL:
            if h.value_len >= 2 and h.value[h.value_len - 1] == 34:
                if not (elen and h.value_len == elen and memcmp(h.value, etag, elen) == 0):
                    range_h = NULL
            elif parse_http_date(h.value, h.value_len) != mtime:
                range_h = NULL
    else:
        range_h = NULL
    if range_h != NULL:
        r = parse_ranges(range_h.value, range_h.value_len, size, starts, ends, &nranges)
        if r == 416:
            close(fd)
            c.start_discard()
            c.begin_head(416)
            buf_append_bytes(&c.wb, error_head(416))
            c.append_date()
            buf_append_str(&c.wb, "Content-Range: bytes */")
            buf_append_uint(&c.wb, <uint64_t>size)
            buf_append_str(&c.wb, "\r\n")
            c.append_connection()
            if not c.is_head:
                buf_append_bytes(&c.wb, error_body(416))
            c.response_done()
            return
        if r == 200:
            nranges = 0
    c.start_discard()
    if nranges == 0:
        c.begin_head(200)
        buf_append_str(&c.wb, "HTTP/1.1 200 OK\r\nServer: edge\r\n")
        length = size
    else:
        c.begin_head(206)
        buf_append_str(&c.wb, "HTTP/1.1 206 Partial Content\r\nServer: edge\r\n")
    c.append_date()
    if nranges > 1:
        g_boundary += 1
        boundary = b"%010d" % g_boundary
        parts = []
        length = 0
        for k in range(nranges):
            part_head = b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n" % (
                boundary, ctype, starts[k], ends[k] - 1, size)
            parts.append(part_head)
            length += len(part_head) + ends[k] - starts[k]
        parts.append(b"\r\n--%s--\r\n" % boundary)
        length += len(parts[nranges])
        buf_append_str(&c.wb, "Content-Type: multipart/byteranges; boundary=")
        buf_append_bytes(&c.wb, boundary)
    else:
        buf_append_str(&c.wb, "Content-Type: ")
        buf_append_bytes(&c.wb, ctype)
    if nranges == 1:
        length = ends[0] - starts[0]
    if gz == GZ_ON:
        buf_append_str(&c.wb, "\r\n")
    else:
        buf_append_str(&c.wb, "\r\nContent-Length: ")
        buf_append_uint(&c.wb, <uint64_t>length)
        buf_append_str(&c.wb, "\r\n")
    if nranges == 1:
        buf_append_str(&c.wb, "Content-Range: bytes ")
        buf_append_uint(&c.wb, <uint64_t>starts[0])
        buf_append_str(&c.wb, "-")
        buf_append_uint(&c.wb, <uint64_t>(ends[0] - 1))
        buf_append_str(&c.wb, "/")
        buf_append_uint(&c.wb, <uint64_t>size)
        buf_append_str(&c.wb, "\r\n")
    buf_append_str(&c.wb, "Last-Modified: ")
    append_http_date(&c.wb, mtime)
    buf_append_str(&c.wb, "\r\n")
    if elen:
        buf_append_str(&c.wb, "ETag: W/" if gz == GZ_ON else "ETag: ")
        buf_append(&c.wb, etag, elen)
        buf_append_str(&c.wb, "\r\n")
    if plain:
        append_expires(c, sc, mtime)
    if nranges == 0 and plain and gz != GZ_ON:
        buf_append_str(&c.wb, "Accept-Ranges: bytes\r\n")
    if gz:
        gzip_head_end(c, g, gz)
    elif (pre & PRE_VARY) and g.vary:
        buf_append_str(&c.wb, "Vary: Accept-Encoding\r\n")
    if pre & PRE_BR:
        buf_append_str(&c.wb, "Content-Encoding: br\r\n")
    elif pre & PRE_GZ:
        buf_append_str(&c.wb, "Content-Encoding: gzip\r\n")
    c.append_connection()
    if c.is_head or (length == 0 and gz != GZ_ON):
        close(fd)
        c.response_done()
        return
    # the body: sent from the file as the socket takes it (buffering.pyx's spool)
    s = ResponseSpool.__new__(ResponseSpool)
    s.fd = fd
    s.keep_fd = True
    s.plain_copy = not sc.sendfile
    s.gzip_file = gz == GZ_ON       # read, compressed and sent a piece at a time
    s.active = True
    if nranges == 0:
        s.file_read = 0
        s.file_write = size
    else:
        s.file_read = starts[0]
        s.file_write = ends[0]
        if nranges > 1:
            buf_append_bytes(&c.wb, parts[0])
            buf_init(&s.mem, 256)
            buf_append_bytes(&s.mem, parts[1])
            s.segments = [(starts[k], ends[k], parts[k + 1]) for k in range(1, nranges)]
    if c.spool is not None:
        release_spool(c)
    c.spool = s
    if sc.sendfile and sc.tcp_nopush and c.ssl == NULL and gz != GZ_ON:
        if setsockopt(c.fd, IPPROTO_TCP, TCP_CORK, &one, sizeof(int)) == 0:
            s.corked = True
    c.state = CS_PROXY
    c.response_started = True
    c.up = None
    timer_stop(c)
    if not c.writable:
        c.wait_writable(False)
        return
    if c.output_pending():
        r = c.flush()
        if r < 0:
            c.close()
            return
        if r == 0:
            return
    r = spool_drain(c)
    if r < 0:
        c.close()
        return
    if r == 0:
        return
    # all sent at once: end the request here, so that a pipelined one is read by the
    # serve_heads loop that called us (not by a nested one)
    c.response_sent()
