# nginx's rewrite module and its variables: `set`, `map`, `split_clients`, `rewrite`
# (with `return` when they share a block), `add_header`, and the per-request upstream
# group of `proxy_pass http://$var`.
#
# User variables: every `set $x`, `map ... $x` and `split_clients ... $x` declares $x for
# the whole config (as nginx does), before the directives are parsed, so any template may
# name it (values.pyx, g_user_vars). A request keeps the values in Client.uvals (None
# until a user variable is first read). A `map` or `split_clients` variable is evaluated
# when first read and cached for the request (unless `volatile`).
#
# Rewrite scripts: the rewrite-module directives of one block (rewrite, set, return) in
# config order, one PhaseHandler. A server's runs before location matching (nginx's
# server rewrite phase); a location's runs in its rewrite phase and answers PH_RELOCATE
# when the URI changed without `break` (nginx's post-rewrite phase: the location is
# searched again, at most 10 times, then 500).
#
# `if (condition) { ... }` is part of the script, as nginx compiles it: an IfOp followed
# by the ops of its block, which it skips when the condition is false. Only rewrite, set,
# return and break may be inside (the config refuses the rest), so a true condition
# changes nothing else about the request: nginx would switch to the if's implicit
# location, which with these directives alone inherits everything from the enclosing
# one. Regexes are compiled at config time; the file tests are one stat(2).

DEF OP_REWRITE = 1
DEF OP_SET = 2
DEF OP_RETURN = 3
DEF OP_IF = 4
DEF OP_BREAK = 5

DEF COND_VAR = 0            # `if ($v)`: true unless empty or "0"
DEF COND_EQ = 1             # = and != (negate)
DEF COND_RX = 2             # ~ ~* !~ !~*
DEF COND_FILE = 3           # -f -d -e -x and their !

DEF FLAG_NONE = 0
DEF FLAG_LAST = 1
DEF FLAG_BREAK = 2
DEF FLAG_REDIRECT = 3
DEF FLAG_PERMANENT = 4


cdef class VarTable:
    """The user variables of one generation: how many slots a request needs."""
    cdef public int n


cdef class VarSource:
    cdef object value(self, Client c):
        return None


cdef class UserVar:
    cdef readonly str name
    cdef readonly int index
    cdef readonly VarTable table
    cdef public VarSource source     # map / split_clients, or None (set only)
    cdef public bint volatile
    cdef bint busy                   # guards a map that reads itself

    def __init__(self, str name, int index, VarTable table):
        self.name = name
        self.index = index
        self.table = table

    def __repr__(self):
        return "UserVar($%s)" % self.name


def declare_user_variables(names):
    """Start a generation's variable table with these names; returns {name: UserVar}."""
    global g_user_vars
    cdef VarTable table = VarTable()
    found = {}
    for name in names:
        if name not in found:
            found[name] = UserVar(name, len(found), table)
    table.n = len(found)
    g_user_vars = found
    return found


cdef inline list request_values(UserVar v, Client c):
    if c.uvals is None or len(c.uvals) < v.table.n:
        c.uvals = [None] * v.table.n
    return c.uvals


cdef object user_value(UserVar v, Client c):
    """The variable's value for this request (bytes), or None when it has none."""
    cdef list vals = request_values(v, c)
    cdef object x = vals[v.index]
    if x is not None:
        return x if x is not False else None
    if v.source is None or v.busy:
        return None
    v.busy = True
    try:
        x = v.source.value(c)
    finally:
        v.busy = False
    if not v.volatile:
        vals[v.index] = x if x is not None else False
    return x


cdef bint append_user(Segment *s, Client c, Buf *out) noexcept:
    cdef object x
    try:
        x = user_value(<UserVar>s.obj, c)
    except Exception as e:
        handler_failed("variable", e)
        return False
    if x is None:
        return False
    buf_append(out, <const char *>(<bytes>x), len(<bytes>x))
    return True


cdef bytes template_bytes(Template t, Client c):
    cdef Buf b
    if t.is_literal:
        return t.literal
    memset(&b, 0, sizeof(Buf))
    buf_init(&b, 128)
    try:
        eval_template(t, c, &b)
        return b.data[b.start:b.end]
    finally:
        buf_free(&b)


cdef class Regex:
    """A compiled POSIX ERE with nginx's common PCRE escapes (router.pyx)."""
    cdef regex_t rx
    cdef bint ok
    cdef readonly int nsub
    cdef readonly str source

    def __init__(self, str source, bint icase=False):
        cdef int flags = REG_EXTENDED
        cdef char err[256]
        cdef int rc
        self.source = source
        if icase:
            flags |= REG_ICASE
        rc = regcomp(&self.rx, translate_regex(source.encode("latin-1")), flags)
        if rc != 0:
            regerror(rc, &self.rx, err, sizeof(err))
            raise ValueError('invalid regex "%s": %s' % (source, err.decode("latin-1")))
        self.ok = True
        self.nsub = <int>self.rx.re_nsub

    def __dealloc__(self):
        if self.ok:
            regfree(&self.rx)


cdef bytes eval_with_captures(Template t, Client c, const char *subject, regmatch_t *m, int n):
    """Evaluate t with $1..$9 read from a regex match other than the location's."""
    cdef regmatch_t saved[MAX_CAPTURES]
    cdef const char *saved_base = c.cap_base
    cdef int saved_n = c.cap_n
    cdef bytes r
    memcpy(saved, c.caps, sizeof(regmatch_t) * MAX_CAPTURES)
    memcpy(c.caps, m, sizeof(regmatch_t) * MAX_CAPTURES)
    c.cap_base = subject
    c.cap_n = n
    try:
        r = template_bytes(t, c)
    finally:
        memcpy(c.caps, saved, sizeof(regmatch_t) * MAX_CAPTURES)
        c.cap_base = saved_base
        c.cap_n = saved_n
    return r


# ---- map -------------------------------------------------------------------------------

cdef class MapDef(VarSource):
    """`map SOURCE $var { key value; ... }`: exact keys (case-insensitive, as nginx
    hashes them), with `hostnames` the wildcard names, then the regexes in order, then
    `default`."""
    cdef Template source
    cdef bint hostnames
    cdef dict exact                 # lowercase key -> Template
    cdef list leading               # [(suffix ".example.com", also_bare, Template)]
    cdef list trailing              # [(prefix "www.", Template)]
    cdef list regexes               # [(Regex, Template)]
    cdef Template default

    def __init__(self, Template source, bint hostnames, dict exact, list leading,
                 list trailing, list regexes, Template default):
        self.source = source
        self.hostnames = hostnames
        self.exact = exact
        self.leading = leading
        self.trailing = trailing
        self.regexes = regexes
        self.default = default

    cdef object value(self, Client c):
        cdef bytes key = template_bytes(self.source, c)
        cdef bytes low
        cdef Template t = None
        cdef Regex rx
        cdef regmatch_t m[MAX_CAPTURES]
        cdef int best = -1
        if self.hostnames and key.endswith(b"."):
            key = key[:len(key) - 1]
        low = key.lower()
        t = self.exact.get(low)
        if t is None and self.hostnames:
            for suffix, bare, tv in self.leading:
                if (len(low) > len(suffix) and low.endswith(suffix)) or \
                        (bare and low == suffix[1:]):
                    if len(suffix) > best:
                        best = len(suffix)
                        t = tv
            if t is None:
                for prefix, tv in self.trailing:
                    if len(low) > len(prefix) and low.startswith(prefix) and len(prefix) > best:
                        best = len(prefix)
                        t = tv
        if t is None and len(key):
            for rx, tv in self.regexes:
                if regexec(&rx.rx, key, MAX_CAPTURES, m, 0) == 0:
                    if tv.max_capture:
                        return eval_with_captures(tv, c, key, m, rx.nsub)
                    return template_bytes(tv, c)
        if t is None:
            t = self.default
        if t is None:
            return b""
        return template_bytes(t, c)


# ---- split_clients -----------------------------------------------------------------------

cdef uint32_t murmur_hash2(const unsigned char *data, size_t n) noexcept nogil:
    """nginx's ngx_murmur_hash2 (MurmurHash2, seed 0 xor length)."""
    cdef uint32_t h = <uint32_t>n
    cdef uint32_t k
    while n >= 4:
        k = data[0] | (<uint32_t>data[1] << 8) | (<uint32_t>data[2] << 16) | (<uint32_t>data[3] << 24)
        k *= 0x5bd1e995u
        k ^= k >> 24
        k *= 0x5bd1e995u
        h *= 0x5bd1e995u
        h ^= k
        data += 4
        n -= 4
    if n == 3:
        h ^= <uint32_t>data[2] << 16
    if n >= 2:
        h ^= <uint32_t>data[1] << 8
    if n >= 1:
        h ^= data[0]
        h *= 0x5bd1e995u
    h ^= h >> 13
    h *= 0x5bd1e995u
    h ^= h >> 15
    return h


def murmur2(bytes data):
    """For tests: nginx's MurmurHash2 of data."""
    return murmur_hash2(<const unsigned char *>data, len(data))


cdef class SplitDef(VarSource):
    """`split_clients KEY $var { 10% a; * b; }`: the MurmurHash2 of the key against the
    cumulative shares of 2^32, as nginx computes them."""
    cdef Template key
    cdef list bounds        # uint32 upper bounds, 0 for `*`
    cdef list values        # bytes

    def __init__(self, Template key, list parts):
        """parts: [(hundredths of a percent or 0 for "*", bytes value)]."""
        cdef uint64_t last = 0
        self.key = key
        self.bounds = []
        self.values = []
        total = 0
        for share, value in parts:
            total = total + share if share else 10000
            if total > 10000:
                raise ValueError("percent total is greater than 100%")
            if total == 10000:
                share = 0
            if share:
                last += <uint64_t>share * <uint64_t>0xffffffff // 10000
                self.bounds.append(<uint32_t>last)
            else:
                self.bounds.append(0)
            self.values.append(value)

    cdef object value(self, Client c):
        cdef bytes key = template_bytes(self.key, c)
        cdef uint32_t h = murmur_hash2(<const unsigned char *>key, len(key))
        cdef int i
        cdef uint32_t b
        for i in range(len(self.bounds)):
            b = self.bounds[i]
            if h < b or b == 0:
                return self.values[i]
        return b""


# ---- rewrite scripts ------------------------------------------------------------------

cdef class ScriptOp:
    cdef int kind


cdef class RewriteOp(ScriptOp):
    cdef Regex rx
    cdef Template repl          # the replacement up to its "?"
    cdef Template args          # after it, or None
    cdef int flag
    cdef bint to_url            # the replacement is a URL: a redirect whatever the flag
    cdef bint add_args          # the original arguments are kept (no final "?")

    def __init__(self, Regex rx, Template repl, Template args, int flag, bint to_url, bint add_args):
        self.kind = OP_REWRITE
        self.rx = rx
        self.repl = repl
        self.args = args
        self.flag = flag
        self.to_url = to_url
        self.add_args = add_args


cdef class SetOp(ScriptOp):
    cdef UserVar var
    cdef Template value

    def __init__(self, UserVar var, Template value):
        self.kind = OP_SET
        self.var = var
        self.value = value


cdef class ReturnOp(ScriptOp):
    cdef Location spec          # a Location holding only the return settings

    def __init__(self, Location spec):
        self.kind = OP_RETURN
        self.spec = spec
        spec.prepare()


cdef class BreakOp(ScriptOp):
    def __init__(self):
        self.kind = OP_BREAK


cdef class IfOp(ScriptOp):
    """`if (condition)`: the next `skip` ops are its block, skipped when it is false."""
    cdef int cond
    cdef Template subject       # the variable; the path of a file test
    cdef Template value         # the right side of = and !=
    cdef Regex rx
    cdef bint negate            # != !~ !~* and the !- file tests
    cdef int fileop             # 'f' 'd' 'e' 'x'
    cdef public int skip

    def __init__(self, int cond, Template subject, Template value, Regex rx, bint negate,
                 str fileop):
        self.kind = OP_IF
        self.cond = cond
        self.subject = subject
        self.value = value
        self.rx = rx
        self.negate = negate
        self.fileop = ord(fileop) if fileop else 0
        self.skip = 0

    cdef bint test(self, Client c) except -1:
        cdef bytes v = template_bytes(self.subject, c)
        cdef regmatch_t m[MAX_CAPTURES]
        cdef struct_stat st
        cdef bint r
        cdef int err
        if self.cond == COND_VAR:
            return len(v) > 0 and v != b"0"
        if self.cond == COND_EQ:
            r = v == template_bytes(self.value, c)
        elif self.cond == COND_RX:
            r = regexec(&self.rx.rx, v, MAX_CAPTURES, m, 0) == 0
            if r:
                # $1..$9 from here on come from this match (of a copy of the value)
                buf_reset(&c.capsrc)
                buf_append(&c.capsrc, <const char *>v, len(v) + 1)
                memcpy(c.caps, m, sizeof(regmatch_t) * MAX_CAPTURES)
                c.cap_base = c.capsrc.data
                c.cap_n = self.rx.nsub
            else:
                c.cap_n = 0         # nginx: a regex that failed leaves $1..$9 empty
        else:
            err = ENOENT
            if len(v) and memchr(<const char *>v, 0, len(v)) == NULL:
                err = 0 if posix_stat(<const char *>v, &st) == 0 else errno
            if err:
                if err != ENOENT and err != ENOTDIR and err != ENAMETOOLONG and \
                        g_log_fn is not None:
                    import os
                    g_log_fn("crit", 'stat() "%s" failed (%d: %s)'
                             % (v.decode("latin-1"), err, os.strerror(err)))
                r = False
            elif self.fileop == 102:        # f
                r = S_ISREG(st.st_mode)
            elif self.fileop == 100:        # d
                r = S_ISDIR(st.st_mode)
            elif self.fileop == 101:        # e: what nginx counts: a file or a directory
                r = S_ISREG(st.st_mode) or S_ISDIR(st.st_mode)
            else:                           # x: the owner's execute bit, as nginx
                r = (st.st_mode & S_IXUSR) == S_IXUSR
        return r != self.negate


cdef class RewriteScript(PhaseHandler):
    cdef list ops
    cdef bint server_level

    def __init__(self, list ops, bint server_level):
        self.name = "rewrite"
        self.ops = ops
        self.server_level = server_level

    cdef int run(self, Client c) except -1:
        cdef ScriptOp op
        cdef bint changed = False
        cdef int r
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t n = len(self.ops)
        while i < n:
            op = <ScriptOp>self.ops[i]
            i += 1
            if op.kind == OP_IF:
                if not (<IfOp>op).test(c):
                    i += (<IfOp>op).skip
            elif op.kind == OP_BREAK:
                # nginx's break: the script ends, and a changed URI stays in this location
                if changed and not self.server_level:
                    c.rw_break = True
                return PH_CONTINUE
            elif op.kind == OP_SET:
                request_values((<SetOp>op).var, c)[(<SetOp>op).var.index] = \
                    template_bytes((<SetOp>op).value, c)
            elif op.kind == OP_RETURN:
                c.respond_return((<ReturnOp>op).spec)
                return PH_DONE
            else:
                r = apply_rewrite(<RewriteOp>op, c)
                if r == 0:
                    continue
                if r == 2:
                    return PH_DONE
                changed = True
                if (<RewriteOp>op).flag == FLAG_LAST:
                    break
                if (<RewriteOp>op).flag == FLAG_BREAK:
                    if not self.server_level:
                        c.rw_break = True
                    return PH_CONTINUE
        if changed and not self.server_level:
            return PH_RELOCATE
        return PH_CONTINUE


cdef int apply_rewrite(RewriteOp op, Client c) except -1:
    """0 no match; 1 the URI (and maybe the arguments) changed; 2 a redirect was sent."""
    cdef Buf t
    cdef size_t n
    cdef bytes target
    cdef regmatch_t m[MAX_CAPTURES]
    if regexec(&op.rx.rx, c.uri.data, MAX_CAPTURES, m, 0) != 0:
        c.cap_base = c.uri.data     # nginx: a regex that did not match leaves no captures
        c.cap_n = 0
        return 0
    memcpy(c.caps, m, sizeof(regmatch_t) * MAX_CAPTURES)
    c.cap_base = c.uri.data
    c.cap_n = op.rx.nsub
    memset(&t, 0, sizeof(Buf))
    buf_init(&t, 256)
    try:
        eval_template(op.repl, c, &t)
        n = buf_len(&t)             # the path part
        if op.args is not None:
            buf_append_str(&t, "?")
            eval_template(op.args, c, &t)
        if op.to_url or op.flag == FLAG_REDIRECT or op.flag == FLAG_PERMANENT:
            if op.add_args and c.has_args and c.args_len:
                buf_append_str(&t, "&" if op.args is not None else "?")
                buf_append(&t, c.args, c.args_len)
            target = t.data[t.start:t.end]
            send_redirect(c, 301 if op.flag == FLAG_PERMANENT else 302, target)
            return 2
        # the old URI stays the subject of $1..$9 (nginx keeps the match's captures)
        buf_reset(&c.capsrc)
        buf_append(&c.capsrc, c.uri.data, buf_len(&c.uri) + 1)
        c.cap_base = c.capsrc.data
        if op.args is not None:
            # new arguments, then the original ones unless the replacement ended in "?"
            if op.add_args and c.has_args and c.args_len:
                buf_append_str(&t, "&")
                buf_append(&t, c.args, c.args_len)     # may point into argbuf: copy first
            buf_reset(&c.argbuf)
            buf_append(&c.argbuf, t.data + t.start + n + 1, buf_len(&t) - n - 1)
            c.has_args = buf_len(&c.argbuf) > 0
            c.args = c.argbuf.data + c.argbuf.start
            c.args_len = buf_len(&c.argbuf)
        elif not op.add_args:
            c.has_args = False
            c.args_len = 0
        buf_reset(&c.uri)
        buf_append(&c.uri, t.data + t.start, n)
        buf_append(&c.uri, "\0", 1)
        c.uri.end -= 1
        c.rewritten = True
        return 1
    finally:
        buf_free(&t)


cdef void send_redirect(Client c, int status, bytes target):
    """A rewrite's redirect: nginx's page for the status, Location made absolute like
    `return`'s (absolute_redirect)."""
    cdef Location loc = c.loc
    cdef Buf line
    cdef bytes location
    buf_init(&line, 256)
    try:
        buf_append_str(&line, "Location: ")
        if target[:1] == b"/" and (loc is None or loc.absolute_redirect):
            c.append_absolute_prefix_to(&line)
        buf_append_bytes(&line, target)
        buf_append_str(&line, "\r\n")
        location = line.data[line.start:line.end]
    finally:
        buf_free(&line)
    c.respond_simple(status, location, error_body(status), b"text/html")


# ---- add_header --------------------------------------------------------------------------

cdef class AddHeaders(HeaderFilter):
    """`add_header NAME VALUE [always];`: without `always`, only on 200, 201, 204, 206,
    301, 302, 303, 304, 307 and 308 (nginx's list); an empty value adds nothing."""
    cdef list headers       # [(bytes "Name: ", Template, always)]

    def __init__(self, list headers):
        self.name = "add_header"
        self.headers = [(name.encode("latin-1") + b": ", value, always)
                        for name, value, always in headers]

    cdef int filter(self, Client c, Buf *out) except -1:
        cdef int s = c.status
        cdef bint ok = s == 200 or s == 201 or s == 204 or s == 206 or s == 301 or s == 302 \
            or s == 303 or s == 304 or s == 307 or s == 308
        cdef size_t mark, value_start
        cdef Template t
        for name, t, always in self.headers:
            if not ok and not always:
                continue
            mark = out.end
            buf_append_bytes(out, <bytes>name)
            value_start = out.end
            eval_template(t, c, out)
            if out.end == value_start:
                out.end = mark
                continue
            buf_append_str(out, "\r\n")
        return 0


# ---- proxy_pass http://$var -------------------------------------------------------------

cdef class DynamicUpstream:
    """The group named by a variable proxy_pass: the configured groups, by name."""
    cdef Template name
    cdef dict groups        # bytes name -> Upstream

    def __init__(self, Template name, dict groups):
        self.name = name
        self.groups = groups


cdef Upstream resolve_upstream(Client c, DynamicUpstream d):
    cdef bytes name = template_bytes(d.name, c)
    cdef object u = d.groups.get(name)
    if u is None and g_log_fn is not None:
        try:
            g_log_fn("error", "no resolver defined to resolve %s, client: %s, server: %s, request: \"%s %s HTTP/1.%d\""
                     % (name.decode("latin-1"), c.remote[:c.remote_len].decode("latin-1"),
                        c.server.first_name.decode("latin-1") if c.server is not None else "",
                        c.method[:c.method_len].decode("latin-1"),
                        c.raw_target[:c.raw_target_len].decode("latin-1"), c.minor))
        except Exception:
            pass
    return <Upstream>u if u is not None else None


# ---- proxy_redirect ------------------------------------------------------------------------

cdef class Redirects:
    """`proxy_redirect`: [(from bytes, to Template)]; the first prefix that matches the
    Location (or Refresh's url=) is replaced, case-sensitively, as nginx does."""
    cdef list rules

    def __init__(self, list rules):
        self.rules = rules

    cdef bint rewrite(self, Client c, const char *v, size_t n, Buf *out, bint absolute):
        """Append the rewritten value and True, or False (nothing appended)."""
        cdef bytes frm, path
        cdef Template to
        cdef size_t mark
        for frm, to in self.rules:
            if n >= <size_t>len(frm) and memcmp(v, <const char *>frm, len(frm)) == 0:
                mark = out.end
                eval_template(to, c, out)
                if absolute and out.end > mark and out.data[mark] == 47 and c.loc.absolute_redirect:
                    # a path replacement becomes absolute, as nginx's header filter does
                    path = out.data[mark:out.end]
                    out.end = mark
                    c.append_absolute_prefix_to(out)
                    buf_append_bytes(out, path)
                buf_append(out, v + len(frm), n - len(frm))
                return True
        return False


cdef void append_redirected(Client c, Redirects r, edge_header *h, Buf *out):
    """Location / Refresh header lines through proxy_redirect."""
    cdef const char *v = h.value
    cdef size_t n = h.value_len
    cdef size_t i = 0
    buf_append(out, h.name, h.name_len)
    buf_append_str(out, ": ")
    if name_is(h.name, h.name_len, "refresh", 7):
        # "5; url=http://..." : only the URL part
        while i + 4 <= n and strncasecmp(v + i, "url=", 4) != 0:
            i += 1
        if i + 4 > n:
            buf_append(out, v, n)
        else:
            buf_append(out, v, i + 4)
            if not r.rewrite(c, v + i + 4, n - i - 4, out, False):
                buf_append(out, v + i + 4, n - i - 4)
    elif not r.rewrite(c, v, n, out, True):
        buf_append(out, v, n)
    buf_append_str(out, "\r\n")


def _user_variable(str name):
    """The UserVar of this generation named `name` (config time)."""
    return g_user_vars[name]
