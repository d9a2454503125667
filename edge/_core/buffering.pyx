# Buffering, as nginx does it by default (proxy_request_buffering, proxy_buffering).
#
# Request side: the whole body is read and checked before a peer is picked, so an
# upstream never sees a partial or invalid request, a slow upload never holds an
# upstream connection, and the body can be sent again to the next peer. The body collects,
# decoded, in the client's rb right after rb.start (chunked bodies are decoded in place);
# past client_body_buffer_size it moves to a temp file. It goes upstream with a
# Content-Length: from rb with writev, or from the file with sendfile.
#
# Response side: while the client keeps up, bytes go from the upstream's buffer straight
# to the client (proxy.pyx, no copy). When the client's socket is full, a ResponseSpool
# takes what is queued and the upstream is read on into memory, then into a temp file, so
# the upstream connection is freed as soon as the upstream has answered. The spool is a
# FIFO: the temp file's unsent range comes first, then the memory buffer; the memory goes
# to the end of the file as a whole, so the order never changes. A file is only appended
# to; once it is all sent, it is closed and the next spill opens another.
#
# Temp files never have a name: O_TMPFILE, or a name unlinked at once where the file
# system lacks it. A crash leaves nothing behind.

from libc.errno cimport EOPNOTSUPP, EISDIR

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_CORK

DEF COPY_CHUNK = 32768          # sendfile off: one read of a static file (nginx's output_buffers)
DEF BODY_SPILL_UNIT = 65536     # body bytes gathered in memory per write to the temp file
DEF SENDFILE_CHUNK = 1048576    # the most one sendfile() moves, so one transfer cannot
                                # hold the loop (nginx's sendfile_max_chunk)


cdef int open_temp_file(bytes directory) noexcept:
    """An anonymous read-write file in `directory`, or -1 (errno set)."""
    cdef char path[4200]
    cdef int fd = open(directory, O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600)
    if fd >= 0 or (errno != EOPNOTSUPP and errno != EISDIR):
        return fd
    if len(directory) > 4000:
        return -1
    snprintf(path, sizeof(path), "%s/edge-XXXXXX", <const char *>directory)
    fd = mkostemp(path, O_CLOEXEC)
    if fd >= 0:
        unlink(path)
    return fd


cdef int write_all_at(int fd, const char *p, size_t n, int64_t offset) noexcept:
    """Write all of p at `offset` (a regular file: a short write means retry)."""
    cdef ssize_t w
    while n:
        w = pwrite(fd, p, n, <off_t>offset)
        if w < 0:
            if errno == EINTR:
                continue
            return -1
        p += w
        n -= <size_t>w
        offset += w
    return 0


cdef int send_file_range(int sock, int fd, int64_t *offset, int64_t end, bint *wrote) noexcept:
    """sendfile [offset, end) to a non-blocking socket. 1 all sent, 0 the socket is full,
    -1 error. *offset moves on with what was sent."""
    cdef off_t off = <off_t>offset[0]
    cdef ssize_t r
    cdef int64_t left
    while off < end:
        left = end - off
        r = sendfile(sock, fd, &off, <size_t>(left if left < SENDFILE_CHUNK else SENDFILE_CHUNK))
        if r > 0:
            wrote[0] = True
            continue
        if r == 0:
            offset[0] = off
            return -1       # the file is shorter than we wrote: cannot happen unless truncated
        if errno == EINTR:
            continue
        offset[0] = off
        return 0 if errno == EAGAIN else -1
    offset[0] = off
    return 1


cdef int copy_file_range_to(int sock, int fd, int64_t *offset, int64_t end, bint *wrote) noexcept:
    """send_file_range() without sendfile (`sendfile off`): one bounded pread, then write,
    until the socket is full. A short write reads the rest again from the file."""
    cdef char chunk[COPY_CHUNK]
    cdef ssize_t got, w
    cdef int64_t left
    while offset[0] < end:
        left = end - offset[0]
        got = pread(fd, chunk, <size_t>(left if left < COPY_CHUNK else COPY_CHUNK), offset[0])
        if got <= 0:
            if got < 0 and errno == EINTR:
                continue
            return -1
        w = write(sock, chunk, <size_t>got)
        if w > 0:
            offset[0] += w
            wrote[0] = True
            continue
        if w < 0 and errno == EINTR:
            continue
        return 0 if w < 0 and errno == EAGAIN else -1
    return 1


cdef void log_temp_failure(Client c, const char *what, bytes directory) noexcept:
    cdef int err = errno
    if g_log_fn is None:
        return
    try:
        import os
        g_log_fn("crit", "%s in \"%s\" failed (%d: %s), client: %s" % (
            what.decode(), directory.decode("latin-1", "replace"), err,
            os.strerror(err), c.remote[:c.remote_len].decode("latin-1")))
    except Exception:
        pass


# ---- request bodies -------------------------------------------------------------------------

cdef void start_buffered_body(Client c):
    """proxy_request_buffering on: read the whole body (CS_BODY) before any peer."""
    c.state = CS_BODY
    c.body_held = 0
    c.body_size = 0
    read_buffered_body(c)


cdef void read_buffered_body(Client c):
    """CS_BODY: take in what arrived, validate it, and read on until the body is whole."""
    cdef Location loc = c.loc
    cdef size_t raw, n, sz
    cdef ssize_t ret
    cdef int rd
    cdef char *p
    while True:
        if c.output_pending() and c.flush() < 0:    # the 100 Continue
            c.close()
            return
        raw = c.rb.end - c.rb.start - c.body_held
        if raw:
            p = c.rb.data + c.rb.start + c.body_held
            if c.body_kind == BODY_LENGTH:
                n = raw if <int64_t>raw < c.body_left else <size_t>c.body_left
                c.body_held += n
                c.body_left -= n
                c.body_raw += n
                c.body_received += n
                c.body_done = c.body_left == 0
            else:
                sz = raw
                ret = edge_decode_chunked(&c.body_dec, p, &sz)
                if ret == -1:
                    c.send_error(400, "client sent invalid chunked body")
                    return
                c.body_raw += <int64_t>(raw - <size_t>ret) if ret >= 0 else <int64_t>raw
                c.body_held += sz
                c.body_received += sz
                # the decoder moved what follows the body (a pipelined request) next to it
                c.rb.end = c.rb.start + c.body_held + (<size_t>ret if ret >= 0 else 0)
                c.body_done = ret >= 0
                if loc.client_max_body_size and c.body_received > loc.client_max_body_size:
                    c.send_error(413, "client intended to send too large chunked body")
                    return
        if c.body_fd >= 0 or <int64_t>c.body_held > loc.client_body_buffer_size:
            if (c.body_held >= BODY_SPILL_UNIT or c.body_fd < 0 or c.body_done) and c.body_held:
                if spill_body(c) < 0:
                    return
        if c.body_done:
            body_complete(c)
            return
        if not c.readable:
            timer_arm(c, loc.t_body, g_now)
            return
        rd = c.read_more(buf_len(&c.rb) + READ_CHUNK * 4)
        if rd == RD_AGAIN:
            timer_arm(c, loc.t_body, g_now)
            return
        if rd != RD_DATA:
            # the client left before its body was whole: the upstream never heard of it
            if g_log_info:
                log_connection("info", c, "client prematurely closed connection while reading client request body", 0)
            c.close()
            return


cdef int spill_body(Client c) noexcept:
    """Move the body bytes held in rb to the end of the temp file (opened on first use)."""
    if c.body_fd < 0:
        c.body_fd = open_temp_file(c.loc.client_body_temp_path)
        if c.body_fd < 0:
            log_temp_failure(c, "open() of a client body temp file", c.loc.client_body_temp_path)
            c.send_error(500)
            return -1
        c.body_size = 0
    if write_all_at(c.body_fd, c.rb.data + c.rb.start, c.body_held, c.body_size) < 0:
        log_temp_failure(c, "write() to a client body temp file", c.loc.client_body_temp_path)
        c.send_error(500)
        return -1
    c.body_size += c.body_held
    c.rb.start += c.body_held
    c.body_held = 0
    return 0


cdef void body_complete(Client c):
    """The body is whole and valid: frame the upstream head with its length, then go."""
    timer_stop(c)
    c.body_buffered = True
    if c.body_fd < 0:
        # it stays in rb, which is not read again before the response is done
        c.body_mem = c.rb.data + c.rb.start
        c.body_size = <int64_t>c.body_held
        c.rb.start += c.body_held
    c.body_held = 0
    finish_upstream_head(c, c.loc, &c.pbuf)
    if c.mirror_heads is not None:
        send_mirrors(c)
    c.state = CS_PROXY
    c.connect_next_peer()


cdef void release_request_body(Client c) noexcept:
    if c.body_fd >= 0:
        close(c.body_fd)
        c.body_fd = -1
    c.body_buffered = False
    c.body_mem = NULL
    c.body_size = 0
    c.body_held = 0


# ---- responses ------------------------------------------------------------------------------

cdef class ResponseSpool:
    """What a slow client has not taken yet of one response: file[read:write), then mem."""
    cdef Buf mem
    cdef int fd
    cdef int64_t file_read
    cdef int64_t file_write
    cdef bint active            # holds output: the client's next bytes come from here
    cdef int64_t mem_max        # memory before the rest goes to the temp file
    cdef int64_t mem_hard_max   # memory when the temp file cannot take more: then pause
    cdef int64_t file_max
    cdef bytes temp_path
    # a static file (static.pyx): fd is the file itself, kept until the response ends;
    # segments are the further (start, end, bytes after) of a multipart/byteranges body
    cdef bint keep_fd
    cdef bint plain_copy        # sendfile off: pread + write
    cdef bint corked            # TCP_CORK set for this response (tcp_nopush)
    cdef bint gzip_file         # the file goes out compressed (gzip.pyx), a piece at a time
    cdef list segments

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        buf_free(&self.mem)


cdef ResponseSpool spool_for(Client c):
    cdef ResponseSpool s = c.spool
    cdef Location loc = c.loc
    if s is None:
        s = ResponseSpool.__new__(ResponseSpool)
        c.spool = s
    if s.mem.data == NULL:
        buf_init(&s.mem, 16384)
    s.file_max = loc.proxy_max_temp_file_size
    # with a temp file, memory holds proxy_busy_buffers_size and the rest goes to disk;
    # without one (or once it is full), read-ahead stops at proxy_buffers
    s.mem_max = loc.proxy_busy_buffers_size if s.file_max > 0 else loc.proxy_buffers_total
    s.mem_hard_max = loc.proxy_buffers_total
    s.temp_path = loc.proxy_temp_path
    return s


cdef int spool_take_pending(Client c) noexcept:
    """Move the client's queued output (head, window into the upstream's buffer, suffix)
    into the spool, so the upstream's buffer can be read into again. -1 on a temp file
    failure."""
    cdef ResponseSpool s = spool_for(c)
    s.active = True
    if buf_len(&c.wb) and spool_append(c, s, c.wb.data + c.wb.start, buf_len(&c.wb)) < 0:
        return -1
    buf_reset(&c.wb)
    if c.win_len and spool_append(c, s, c.win, c.win_len) < 0:
        return -1
    c.win_len = 0
    if c.suf_len and spool_append(c, s, c.suf, c.suf_len) < 0:
        return -1
    c.suf_len = 0
    return 0


cdef int spool_append(Client c, ResponseSpool s, const char *p, size_t n) noexcept:
    cdef size_t held
    if buf_append(&s.mem, p, n) < 0:
        return -1
    held = buf_len(&s.mem)
    if <int64_t>held <= s.mem_max or s.file_max <= 0 or s.file_write + <int64_t>held > s.file_max:
        return 0
    if s.fd < 0:
        s.fd = open_temp_file(s.temp_path)
        if s.fd < 0:
            log_temp_failure(c, "open() of a proxy temp file", s.temp_path)
            return -1
    if write_all_at(s.fd, s.mem.data + s.mem.start, held, s.file_write) < 0:
        log_temp_failure(c, "write() to a proxy temp file", s.temp_path)
        return -1
    s.file_write += held
    buf_reset(&s.mem)
    return 0


cdef inline bint spool_full(ResponseSpool s) noexcept:
    """Read-ahead must wait for the client: memory is at its cap and the file cannot
    take it."""
    return <int64_t>buf_len(&s.mem) >= s.mem_hard_max or (
        <int64_t>buf_len(&s.mem) > s.mem_max and
        (s.file_max <= 0 or s.file_write + <int64_t>buf_len(&s.mem) > s.file_max))


cdef inline bint spool_pending(Client c) noexcept:
    return c.spool is not None and c.spool.active


cdef int spool_drain(Client c) noexcept:
    """Send the spool to the client. 1 it is empty (and no longer active), 0 the socket is
    full, -1 error."""
    cdef ResponseSpool s = c.spool
    cdef bint wrote = False
    cdef int64_t before
    cdef ssize_t w
    cdef int r
    cdef int zero = 0
    cdef bytes after
    if not c.writable:
        return 0
    while True:
        if s.gzip_file:
            # compressed: the next piece of the file once the last one is sent
            if buf_len(&s.mem) == 0 and not c.gz.finished:
                if gzip_file_piece(c, s) < 0:
                    return -1
                continue
        elif s.file_read < s.file_write:
            before = s.file_read
            if c.ssl != NULL:
                r = tls_send_file_range(c.ssl, s.fd, &s.file_read, s.file_write, &wrote)
            elif s.plain_copy:
                r = copy_file_range_to(c.fd, s.fd, &s.file_read, s.file_write, &wrote)
            else:
                r = send_file_range(c.fd, s.fd, &s.file_read, s.file_write, &wrote)
            c.out_written += s.file_read - before
            if r < 0:
                return -1
            if r == 0:
                break
            if s.keep_fd:
                continue
            # drained: the next spill goes to a new file. Never write over this one:
            # sendfile leaves references to its pages in the socket's queue, so bytes
            # not yet on the wire would change with them
            close(s.fd)
            s.fd = -1
            s.file_read = 0
            s.file_write = 0
            continue
        if buf_len(&s.mem) == 0:
            if s.segments:
                s.file_read, s.file_write, after = s.segments.pop(0)
                buf_reset(&s.mem)
                buf_append_bytes(&s.mem, after)
                continue
            buf_reset(&s.mem)
            if s.corked:
                s.corked = False
                setsockopt(c.fd, IPPROTO_TCP, TCP_CORK, &zero, sizeof(int))
            s.active = False
            c.output_caught_up()
            return 1
        if c.ssl != NULL:
            w = tls_write_some(c.ssl, s.mem.data + s.mem.start, buf_len(&s.mem))
            if w == 0:
                break
        else:
            w = write(c.fd, s.mem.data + s.mem.start, buf_len(&s.mem))
        if w > 0:
            s.mem.start += <size_t>w
            c.out_written += w
            wrote = True
            continue
        if w < 0 and errno == EINTR:
            continue
        if w < 0 and errno == EAGAIN:
            break
        return -1
    c.writable = False
    c.wait_writable(wrote)
    return 0


cdef void release_spool(Client c) noexcept:
    """Free the spool's memory and temp file: an idle connection keeps neither."""
    cdef ResponseSpool s = c.spool
    if s is None:
        return
    c.spool = None      # __dealloc__ closes the file and frees the memory
