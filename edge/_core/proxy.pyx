# The proxy: upstream connections, the request head sent upstream, streaming both ways.
#
# An UpConn belongs to one client request at a time. Request body bytes go from the
# client's rb straight into writev on the upstream socket (a window into rb); response
# bytes go from the UpConn's rb into writev on the client socket. Chunked bodies are decoded
# in place and re-chunked, so what we send is always framed by us: a smuggled second
# request inside a body can never reach the upstream as its own request.

DEF UP_HEAD_MAX = 65536

cdef enum UpState:
    US_CONNECTING = 0
    US_ACTIVE = 1
    US_IDLE = 2
    US_CLOSED = 3
    US_HANDSHAKE = 4        # connected; the TLS handshake runs (upstream_tls.pyx)

cdef enum RespKind:
    RESP_NONE = 0
    RESP_LENGTH = 1
    RESP_CHUNKED = 2
    RESP_CLOSE = 3          # delimited by the upstream closing the connection
    RESP_TUNNEL = 4         # after 101 Switching Protocols: raw bytes both ways

cdef enum Failure:
    FAIL_CONNECT = 1
    FAIL_TIMEOUT = 2
    FAIL_IO = 3
    FAIL_BAD_RESPONSE = 4
    FAIL_HEAD_TOO_BIG = 5       # the response head outgrew proxy_buffer_size
    FAIL_TLS = 6                # the TLS handshake or the certificate checks failed


cdef class UpConn(Handle):
    cdef Buf rb
    cdef Buf wb
    cdef const char *win
    cdef size_t win_len
    cdef const char *suf
    cdef size_t suf_len
    cdef bint readable
    cdef bint writable
    cdef bint wrote             # a write made progress since the send timer was armed
    cdef bint peer_closed       # RDHUP seen: the upstream closed its side
    cdef int state
    cdef int64_t idle_since     # g_now when it went back to the pool (trim_upstream_pools)
    cdef int64_t serial         # creation order in this worker (trim_upstream_pools)
    cdef Upstream ups
    cdef int peer
    cdef Client client
    cdef bint reused
    cdef int64_t nrequests
    cdef bint head_done
    cdef bint head_pending      # buffered bytes may hold the next response head
    cdef bint got_bytes
    cdef bint resp_done
    cdef bint upstream_keepalive
    cdef int resp_kind
    cdef int64_t resp_left
    cdef edge_chunked_decoder dec
    cdef bint chunk_to_client   # re-frame the body as chunked for an HTTP/1.1 client
    cdef int status
    # this try's times, for $upstream_*_time and the upstream histogram
    cdef int64_t try_start_us
    cdef int64_t connected_us   # -1 until connected
    cdef int64_t header_us      # -1 until the response head arrived
    # a buffered request body in a temp file goes out with sendfile (buffering.pyx)
    cdef int file_fd            # the client's body file, or -1
    cdef int64_t file_off
    cdef int64_t file_end
    cdef bint buffering         # this response may be read ahead of a slow client
    cdef bint counted           # this try counts in its peer's conns (least_conn)
    cdef bint request_sent      # bytes of this try's request reached the socket
    # TLS to the upstream (upstream_tls.pyx): NULL / None for a plain connection
    cdef SSL *ssl
    cdef UpstreamTls tls        # the settings it was made with (pooled per settings)
    cdef object tls_slot        # SessionSlot: where its peer's sessions are kept
    cdef bytes tls_name         # the name verified (proxy_ssl_name)
    cdef bint read_wants_write  # a TLS read waits for writability

    # ---- life cycle -------------------------------------------------------------------

    cdef inline void end_try(self) noexcept:
        """The try no longer occupies its peer (least_conn, random two, ewma)."""
        if self.counted:
            self.counted = False
            self.ups.peers[self.peer].conns -= 1

    cdef void close(self):
        if self.state == US_CLOSED:
            return
        self.end_try()
        timer_stop(self)
        if self.state == US_IDLE:
            try:
                self.ups.idle.remove(self)
            except ValueError:
                pass
        g_loop.unregister(self)
        if self.ssl != NULL:
            tls_free(&self.ssl, True)       # close_notify when the session is healthy
        close(self.fd)
        self.fd = -1
        self.state = US_CLOSED
        self.client = None
        self.file_fd = -1
        buf_free(&self.rb)
        buf_free(&self.wb)

    cdef void start_request(self, Client c):
        """Queue c's request head and start (or continue) talking to the upstream."""
        self.client = c
        self.head_done = False
        self.head_pending = False
        self.got_bytes = False
        self.resp_done = False
        self.win_len = 0
        self.suf_len = 0
        buf_reset(&self.rb)
        buf_reset(&self.wb)
        buf_append(&self.wb, c.pbuf.data + c.pbuf.start, buf_len(&c.pbuf))
        self.file_fd = -1
        self.buffering = False
        self.request_sent = False
        self.wrote = False
        if c.body_buffered and c.loc.pass_request_body:
            # the whole body is here: from rb after the head, or from its temp file
            if c.body_fd >= 0:
                self.file_fd = c.body_fd
                self.file_off = 0
                self.file_end = c.body_size
            elif c.body_size:
                self.win = c.body_mem
                self.win_len = <size_t>c.body_size
        self.nrequests += 1
        self.try_start_us = g_now_us
        self.header_us = -1
        # a pooled connection is connected already: nginx reports 0 for it
        self.connected_us = -1 if self.state == US_CONNECTING else g_now_us
        if self.state == US_CONNECTING:
            timer_arm(self, c.loc.t_connect, g_now)
            return
        self.state = US_ACTIVE
        self.drive()

    # ---- events -------------------------------------------------------------------------

    cdef void on_events(self, uint32_t events):
        cdef int err = 0
        cdef socklen_t elen = sizeof(int)
        if self.state == US_IDLE:
            # an idle pooled connection spoke or closed: it cannot be reused (a bare
            # writability edge changes nothing)
            if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                self.close()
            return
        if self.state == US_CLOSED:
            return
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable = True
        if events & (EPOLLRDHUP | EPOLLHUP):
            self.peer_closed = True
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
            self.writable = True
            if self.ssl != NULL and self.read_wants_write:
                self.read_wants_write = False
                self.readable = True
        if self.state == US_CONNECTING:
            if not (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)):
                return
            getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
            if err != 0 or (events & EPOLLERR):
                self.fail(FAIL_CONNECT)
                return
            if self.tls is not None:
                if upstream_tls_start(self) < 0:
                    self.fail(FAIL_TLS)
                    return
                self.state = US_HANDSHAKE
            else:
                self.state = US_ACTIVE
                self.connected_us = g_now_us
                if not self.ups.any_fail_status:
                    self.ups.peer_ok(self.peer)     # else once the response status is known
        if self.state == US_HANDSHAKE:
            if not self.tls_handshake_step():
                return
        self.drive()

    cdef bint tls_handshake_step(self):
        """Drive the upstream TLS handshake; True once it is done and checked."""
        cdef int r = upstream_tls_handshake(self)
        if r == 0:
            return False
        if r < 0:
            self.fail(FAIL_TLS)
            return False
        self.state = US_ACTIVE
        self.connected_us = g_now_us        # $upstream_connect_time includes the handshake
        # bytes that came with the handshake's last flight wait in the socket: read on
        self.readable = True
        self.writable = True
        if not self.ups.any_fail_status:
            self.ups.peer_ok(self.peer)
        return True

    cdef void on_timeout(self):
        if self.state == US_ACTIVE and self.resp_kind == RESP_TUNNEL and self.head_done \
                and self.client is not None:
            self.client.close()     # proxy_tunnel_timeout: the tunnel was idle
            return
        if self.state == US_IDLE:
            self.close()
        else:
            self.fail(FAIL_TIMEOUT)     # connect, send or read timeout

    cdef void drive(self):
        """Move bytes: request body to the upstream, response to the client."""
        cdef int r
        cdef Client c = self.client
        if c is None or self.state != US_ACTIVE:
            return
        r = self.pump_request()
        if r < 0:
            return          # fail() or the client was closed
        self.pump_response()

    # ---- request ----------------------------------------------------------------------------

    cdef inline bint request_pending(self) noexcept:
        return buf_len(&self.wb) or self.win_len or self.suf_len or \
            (self.file_fd >= 0 and self.file_off < self.file_end)

    cdef void arm_wait_timer(self, Client c) noexcept:
        """Waiting on the upstream: proxy_send_timeout while our writes are blocked,
        else proxy_read_timeout."""
        if self.request_pending():
            if self.tlist is not c.loc.t_send:
                timer_arm(self, c.loc.t_send, g_now)
        else:
            timer_arm(self, c.loc.t_read, g_now)

    cdef int flush(self) noexcept:
        """Write queued request bytes. 1: all sent; 0: socket full; -1: error."""
        cdef int r
        if not self.writable and self.request_pending():
            return 0
        if self.ssl != NULL:
            r = tls_write_queued(self.ssl, &self.wb, &self.win, &self.win_len,
                                 &self.suf, &self.suf_len, &self.wrote)
            if r == 1 and self.file_fd >= 0 and self.file_off < self.file_end:
                r = tls_send_file_range(self.ssl, self.file_fd, &self.file_off, self.file_end,
                                        &self.wrote)
        else:
            r = write_queued(self.fd, &self.wb, &self.win, &self.win_len,
                             &self.suf, &self.suf_len, &self.wrote)
            if r == 1 and self.file_fd >= 0 and self.file_off < self.file_end:
                r = send_file_range(self.fd, self.file_fd, &self.file_off, self.file_end, &self.wrote)
        if self.wrote:
            self.request_sent = True
        if r == 0:
            self.writable = False
        return r

    cdef int pump_request(self):
        """Send the head and stream the request body. 1: all sent; 0: waiting; -1: the
        exchange ended (failed or aborted)."""
        cdef Client c = self.client
        cdef int r, rd
        cdef size_t avail, n, sz
        cdef ssize_t ret
        while True:
            r = self.flush()
            if r < 0:
                self.fail(FAIL_IO)
                return -1
            if r == 0:
                # proxy_send_timeout runs between two successful writes
                if self.wrote or self.tlist is not c.loc.t_send:
                    timer_arm(self, c.loc.t_send, g_now)
                self.wrote = False
                return 0
            if c.body_done:
                if not self.head_done and self.tlist is not c.loc.t_read:
                    timer_arm(self, c.loc.t_read, g_now)
                return 1
            avail = buf_len(&c.rb)
            if avail == 0:
                if c.body_kind == BODY_TUNNEL:
                    if not c.readable:
                        return 0    # the tunnel's idle timer runs on this UpConn
                    rd = c.read_more(READ_CHUNK * 4)
                    if rd == RD_AGAIN:
                        return 0
                    if rd != RD_DATA:
                        c.close()   # one side of the tunnel ended: close both
                        return -1
                    timer_arm(self, c.loc.t_tunnel, g_now)
                    continue
                if c.output_pending():
                    return 0        # the 100 Continue still goes out first
                if not c.readable:
                    timer_arm(c, c.loc.t_body, g_now)
                    return 0
                rd = c.read_more(READ_CHUNK * 4)
                if rd == RD_AGAIN:
                    timer_arm(c, c.loc.t_body, g_now)
                    return 0
                if rd != RD_DATA:
                    c.close()       # the client went away mid-body
                    return -1
                timer_stop(c)
                continue
            if c.body_kind == BODY_TUNNEL:
                self.win = c.rb.data + c.rb.start
                self.win_len = avail
                c.rb.start += avail
                continue
            c.body_started = True
            if c.body_kind == BODY_LENGTH:
                n = avail if <int64_t>avail < c.body_left else <size_t>c.body_left
                self.win = c.rb.data + c.rb.start
                self.win_len = n
                c.rb.start += n
                c.body_left -= n
                c.body_raw += n
                if c.body_left == 0:
                    c.body_done = True
                continue
            # chunked: decode in place, send what was decoded as one chunk of ours
            sz = avail
            ret = edge_decode_chunked(&c.body_dec, c.rb.data + c.rb.start, &sz)
            if ret == -1:
                c.send_error(400)
                return -1
            c.body_raw += <int64_t>(avail - <size_t>ret) if ret >= 0 else <int64_t>avail
            c.body_received += sz
            if c.loc.client_max_body_size and c.body_received > c.loc.client_max_body_size:
                c.send_error(413)
                return -1
            if sz:
                buf_append_hex(&self.wb, sz)
                buf_append_str(&self.wb, "\r\n")
                self.win = c.rb.data + c.rb.start
                self.win_len = sz
                self.suf = "\r\n"
                self.suf_len = 2
            if ret >= 0:
                c.body_done = True
                c.rb.end = c.rb.start + sz + <size_t>ret
                if sz:
                    self.suf = "\r\n0\r\n\r\n"
                    self.suf_len = 7
                else:
                    buf_append_str(&self.wb, "0\r\n\r\n")
            else:
                c.rb.end = c.rb.start + sz
            c.rb.start += sz

    # ---- response ---------------------------------------------------------------------------

    cdef int read_some(self) noexcept:
        # a response head must fit in UP_HEAD_MAX; body bytes are read only once the
        # previous ones were sent, so the same bound holds for them
        cdef int r
        if self.ssl != NULL:
            r = tls_read_into(self.ssl, &self.rb, UP_HEAD_MAX, UP_HEAD_MAX, &self.readable,
                              &self.read_wants_write)
        else:
            r = read_into(self.fd, &self.rb, UP_HEAD_MAX, UP_HEAD_MAX, &self.readable,
                          self.peer_closed)
        if r == RD_DATA:
            self.got_bytes = True
        return r

    cdef void pump_response(self):
        cdef Client c = self.client
        cdef int rd, r
        cdef size_t avail, n, sz
        cdef ssize_t ret
        while c is not None and self.client is c:
            if spool_pending(c):
                # a slow client: what we produce joins the spool; read on while it has room
                if c.output_pending() and spool_take_pending(c) < 0:
                    c.close()
                    return
                r = spool_drain(c)
                if r < 0:
                    c.close()
                    return
                if r == 0 and not self.resp_done and spool_full(c.spool):
                    timer_stop(self)    # read-ahead is full: wait for the client
                    return
            elif c.output_pending():
                r = c.flush()
                if r < 0:
                    c.close()
                    return
                if r == 0:
                    if self.buffering:
                        # proxy_buffering: keep reading the upstream ahead of the client
                        if spool_take_pending(c) < 0:
                            c.close()
                            return
                        continue
                    if self.resp_kind != RESP_TUNNEL or not self.head_done:
                        timer_stop(self)    # the client is slow: stop reading, no read timeout
                    return
            if self.resp_done:
                self.finish()
                return
            if (not self.head_done and not self.head_pending) or buf_len(&self.rb) == 0:
                if self.resp_kind == RESP_TUNNEL and self.head_done:
                    if not self.readable:
                        return
                    rd = self.read_some()
                    if rd == RD_AGAIN:
                        return
                    if rd != RD_DATA:
                        c.close()   # the upstream ended the tunnel: close both
                        return
                    timer_arm(self, c.loc.t_tunnel, g_now)
                    continue
                if not self.readable:
                    self.arm_wait_timer(c)
                    return
                rd = self.read_some()
                if rd == RD_AGAIN:
                    self.arm_wait_timer(c)
                    return
                if rd == RD_EOF:
                    if self.head_done and self.resp_kind == RESP_CLOSE:
                        self.upstream_keepalive = False
                        self.resp_done = True
                        if self.chunk_to_client:
                            buf_append_str(&c.wb, "0\r\n\r\n")
                        elif c.gz is not None:
                            c.win_len = 0
                            if gzip_window(c, True, False) < 0:
                                c.close()
                                return
                        continue
                    self.fail(FAIL_IO)
                    return
                if rd != RD_DATA:
                    self.fail((FAIL_HEAD_TOO_BIG if not self.head_done else FAIL_BAD_RESPONSE)
                              if rd == RD_FULL else FAIL_IO)
                    return
            if not self.head_done:
                r = self.parse_head()
                self.head_pending = r == 2     # an interim response was skipped: parse on
                if r == 0 or r == 2:
                    continue
                if r == -4:
                    self.next_after_status()
                    return
                if r == -5:
                    self.intercepted()
                    return
                if r < 0:
                    self.fail(FAIL_HEAD_TOO_BIG if r == -3 else FAIL_BAD_RESPONSE)
                    return
                if self.resp_kind == RESP_TUNNEL:
                    if self.pump_request() < 0:
                        return      # bytes the client sent right after its upgrade request
                    continue
                if self.resp_done or buf_len(&self.rb) == 0:
                    continue
                # body bytes came with the head: queue them too, so the head and the
                # start of the body leave in one writev
            avail = buf_len(&self.rb)
            if avail == 0:
                continue
            if self.resp_kind == RESP_LENGTH:
                n = avail if <int64_t>avail < self.resp_left else <size_t>self.resp_left
                c.win = self.rb.data + self.rb.start
                c.win_len = n
                self.rb.start += n
                self.resp_left -= n
                if self.resp_left == 0:
                    self.resp_done = True
                    if buf_len(&self.rb):
                        self.upstream_keepalive = False     # bytes past the end: odd peer
            elif self.resp_kind == RESP_CHUNKED:
                sz = avail
                ret = edge_decode_chunked(&self.dec, self.rb.data + self.rb.start, &sz)
                if ret == -1:
                    # the head is out already: all we can do is cut the connection
                    self.upstream_keepalive = False
                    c.keepalive = False
                    c.close()
                    return
                if sz:
                    if self.chunk_to_client:
                        buf_append_hex(&c.wb, sz)
                        buf_append_str(&c.wb, "\r\n")
                        c.suf = "\r\n"
                        c.suf_len = 2
                    c.win = self.rb.data + self.rb.start
                    c.win_len = sz
                if ret >= 0:
                    self.resp_done = True
                    if ret > 0:
                        self.upstream_keepalive = False
                    self.rb.end = self.rb.start + sz
                    if self.chunk_to_client:
                        if sz:
                            c.suf = "\r\n0\r\n\r\n"
                            c.suf_len = 7
                        else:
                            buf_append_str(&c.wb, "0\r\n\r\n")
                else:
                    self.rb.end = self.rb.start + sz
                self.rb.start += sz
            elif self.resp_kind == RESP_TUNNEL:
                c.win = self.rb.data + self.rb.start
                c.win_len = avail
                self.rb.start += avail
            else:   # RESP_CLOSE
                if self.chunk_to_client:
                    buf_append_hex(&c.wb, avail)
                    buf_append_str(&c.wb, "\r\n")
                    c.suf = "\r\n"
                    c.suf_len = 2
                c.win = self.rb.data + self.rb.start
                c.win_len = avail
                self.rb.start += avail
            if c.gz is not None and gzip_window(c, self.resp_done, not self.buffering) < 0:
                self.upstream_keepalive = False
                c.close()
                return
            c.response_started = True

    cdef int parse_head(self):
        """Parse the response head and queue the client's head. 1 done, 0 need more or
        skipped an interim 1xx, -1 invalid."""
        cdef Client c = self.client
        cdef edge_header hs[MAX_HEADERS]
        cdef size_t nh = MAX_HEADERS
        cdef int minor, status
        cdef const char *msg
        cdef size_t msg_len
        cdef int ret
        cdef size_t i
        cdef edge_header *h
        cdef int64_t content_length = -1
        cdef int64_t v
        cdef bint chunked = False
        cdef bint has_te = False
        cdef int conn_index = -1
        cdef bint no_body
        cdef bint sse = False
        cdef int retry
        cdef bint cache_headers, charset
        cdef size_t head_max = <size_t>c.loc.proxy_buffer_size
        cdef bint buffering = c.loc.proxy_buffering
        cdef int gz = 0
        ret = edge_parse_response(self.rb.data + self.rb.start, buf_len(&self.rb), &minor,
                                  &status, &msg, &msg_len, hs, &nh, 0)
        if ret == -2:
            # the head must fit in proxy_buffer_size, as in nginx
            return -3 if buf_len(&self.rb) >= head_max else 0
        if ret < 0:
            return -1
        if <size_t>ret > head_max:
            return -3
        if status < 100 or status > 999:
            return -1
        if status == 101:
            if not c.upgrade:
                return -1       # an upgrade we did not ask for
            return self.start_tunnel(hs, nh, msg, msg_len, ret)
        if status < 200:
            self.rb.start += <size_t>ret        # 100 / 102 / 103: interim, skip it
            return 2
        self.status = status
        self.upstream_keepalive = minor == 1
        if self.ups.any_fail_status:
            # passive_fail_status: this answer counts as a failure of the peer, or as
            # the success that a connect alone is not
            if self.ups.fails_on_status(status):
                if g_log_info:
                    try:
                        g_log_fn("info", "upstream returned %d, a failure by passive_fail_status, "
                                 "upstream: %s (%s)" % (status, self.ups.name, self.ups.peer_names[self.peer]))
                    except Exception:
                        pass
                self.ups.peer_failed(self.peer, g_now)
            else:
                self.ups.peer_ok(self.peer)
        for i in range(nh):
            h = &hs[i]
            if name_is(h.name, h.name_len, "content-length", 14):
                v = edge_parse_content_length(h.value, h.value_len)
                if v < 0 or (content_length >= 0 and v != content_length):
                    return -1
                content_length = v
            elif name_is(h.name, h.name_len, "transfer-encoding", 17):
                has_te = True
                chunked = token_listed(h.value, h.value_len, "chunked", 7)
            elif name_is(h.name, h.name_len, "connection", 10):
                conn_index = <int>i
                if token_listed(h.value, h.value_len, "close", 5):
                    self.upstream_keepalive = False
                elif token_listed(h.value, h.value_len, "keep-alive", 10):
                    self.upstream_keepalive = True
            elif name_is(h.name, h.name_len, "x-accel-buffering", 17) \
                    and not c.loc.ignore_accel_buffering:
                # the upstream decides for this response, as nginx lets it
                if h.value_len == 2 and strncasecmp(h.value, "no", 2) == 0:
                    buffering = False
                elif h.value_len == 3 and strncasecmp(h.value, "yes", 3) == 0:
                    buffering = True
            elif name_is(h.name, h.name_len, "content-type", 12) and h.value_len >= 17 \
                    and strncasecmp(h.value, "text/event-stream", 17) == 0:
                sse = True      # server-sent events are never held back
        if has_te and content_length >= 0:
            return -1       # both framings: a response-splitting attempt (RFC 9112 6.3)
        retry = status_condition(status)
        if retry and (c.loc.next_upstream & retry) and next_upstream_allowed(c, retry, True):
            return -4       # proxy_next_upstream http_NNN: another peer answers instead
        no_body = c.is_head or status == 204 or status == 304
        if no_body:
            self.resp_kind = RESP_NONE
        elif has_te:
            if not chunked:
                return -1
            self.resp_kind = RESP_CHUNKED
            memset(&self.dec, 0, sizeof(edge_chunked_decoder))
        elif content_length >= 0:
            self.resp_kind = RESP_LENGTH
            self.resp_left = content_length
        else:
            self.resp_kind = RESP_CLOSE
            self.upstream_keepalive = False
        self.buffering = buffering and not sse
        if c.loc.error_pages is not None and intercepts(c, status):
            return self.intercept(ret)      # proxy_intercept_errors (error_page.pyx)
        if c.loc.gzip is not None:          # after interception: no zlib state for a page
            c.gz = None
            gz = gzip_proxy_head(c, <GzipConf>c.loc.gzip, status, hs, nh,
                                 content_length if not has_te else -1)
        self.chunk_to_client = (self.resp_kind == RESP_CHUNKED or self.resp_kind == RESP_CLOSE) \
            and c.minor == 1 and gz != GZ_ON     # gzip.pyx frames what it compresses
        if (self.resp_kind == RESP_CHUNKED or self.resp_kind == RESP_CLOSE) and c.minor == 0:
            c.keepalive = False     # an HTTP/1.0 client learns the end from the close

        # the client's head
        self.header_us = g_now_us
        cache_headers = c.loc.proxy_expires and expires_status(status)
        charset = c.loc.proxy_charset is not None and status != 301 and status != 302
        c.begin_head(status)
        buf_append_str(&c.wb, "HTTP/1.1 ")
        buf_append_uint(&c.wb, <uint64_t>status)
        buf_append_str(&c.wb, " ")
        buf_append(&c.wb, msg, msg_len)
        if c.loc.response_drop == RESPONSE_DROP:
            buf_append_str(&c.wb, "\r\n")
            buf_append_bytes(&c.wb, g_server_line)
            c.append_date()
        else:
            buf_append_str(&c.wb, "\r\n")
            if not c.loc.pass_server:
                buf_append_bytes(&c.wb, g_server_line)
            if not c.loc.pass_date:
                c.append_date()
        for i in range(nh):
            h = &hs[i]
            if name_in_list(h.name, h.name_len, c.loc.response_drop):
                continue
            if c.loc.response_strip is not None and name_in_list(h.name, h.name_len, c.loc.response_strip):
                continue
            if name_is(h.name, h.name_len, "x-accel-buffering", 17):
                continue        # meant for us, not for the client (nginx hides it too)
            if conn_index >= 0 and token_listed(hs[conn_index].value, hs[conn_index].value_len,
                                                h.name, h.name_len):
                continue
            if c.loc.redirects is not None and (name_is(h.name, h.name_len, "location", 8)
                                                or name_is(h.name, h.name_len, "refresh", 7)):
                append_redirected(c, <Redirects>c.loc.redirects, h, &c.wb)
                continue
            if cache_headers:
                # `expires` replaces them (static.pyx ExpiresFilter adds its own)
                if name_is(h.name, h.name_len, "expires", 7) or \
                        name_is(h.name, h.name_len, "cache-control", 13):
                    continue
                if name_is(h.name, h.name_len, "last-modified", 13):
                    c.resp_mtime = parse_http_date(h.value, h.value_len)
            if charset and name_is(h.name, h.name_len, "content-type", 12):
                append_content_type_charset(c, h, &c.wb)
                continue
            if gz == GZ_ON and gzip_head_line(c, h):
                continue
            buf_append(&c.wb, h.name, h.name_len)
            buf_append_str(&c.wb, ": ")
            buf_append(&c.wb, h.value, h.value_len)
            buf_append_str(&c.wb, "\r\n")
        if gz:
            gzip_head_end(c, <GzipConf>c.loc.gzip, gz)
        if gz == GZ_ON:
            pass    # chunked (HTTP/1.1) or close-delimited: gzip_head_end said which
        elif self.resp_kind == RESP_LENGTH or (no_body and content_length >= 0 and status != 204):
            buf_append_str(&c.wb, "Content-Length: ")
            buf_append_uint(&c.wb, <uint64_t>content_length)
            buf_append_str(&c.wb, "\r\n")
        elif self.chunk_to_client:
            buf_append_str(&c.wb, "Transfer-Encoding: chunked\r\n")
        c.append_connection()
        self.rb.start += <size_t>ret
        self.head_done = True
        c.response_started = True
        if self.resp_kind == RESP_NONE or (self.resp_kind == RESP_LENGTH and self.resp_left == 0):
            self.resp_done = True
            if c.gz is not None:
                c.win_len = 0
                if gzip_window(c, True, False) < 0:
                    return -1
        return 1

    cdef int start_tunnel(self, edge_header *hs, size_t nh, const char *msg, size_t msg_len,
                          int head_len):
        """101 Switching Protocols: pass the head on (with its Upgrade header), then both
        connections become one byte tunnel with its own idle timeout."""
        cdef Client c = self.client
        cdef size_t i
        cdef edge_header *h
        self.header_us = g_now_us
        c.begin_head(101)
        buf_append_str(&c.wb, "HTTP/1.1 101 ")
        buf_append(&c.wb, msg, msg_len)
        buf_append_str(&c.wb, "\r\n")
        buf_append_bytes(&c.wb, g_server_line)
        c.append_date()
        for i in range(nh):
            h = &hs[i]
            if name_is(h.name, h.name_len, "connection", 10) or name_is(h.name, h.name_len, "keep-alive", 10) \
                    or name_is(h.name, h.name_len, "server", 6) or name_is(h.name, h.name_len, "date", 4) \
                    or name_is(h.name, h.name_len, "transfer-encoding", 17) \
                    or name_is(h.name, h.name_len, "content-length", 14):
                continue
            buf_append(&c.wb, h.name, h.name_len)
            buf_append_str(&c.wb, ": ")
            buf_append(&c.wb, h.value, h.value_len)
            buf_append_str(&c.wb, "\r\n")
        c.end_head("Connection: upgrade\r\n\r\n")
        self.rb.start += <size_t>head_len
        self.head_done = True
        self.status = 101
        self.resp_kind = RESP_TUNNEL
        self.buffering = False
        self.upstream_keepalive = False
        self.chunk_to_client = False
        c.response_started = True
        c.keepalive = False
        c.body_kind = BODY_TUNNEL
        c.body_done = False
        timer_stop(c)
        timer_arm(self, c.loc.t_tunnel, g_now)
        return 1

    cdef void next_after_status(self):
        """The response has a status proxy_next_upstream lists and another peer may
        answer: drop this response with its connection, and try the next peer."""
        cdef Client c = self.client
        if self.status != 403 and self.status != 404 and not self.ups.fails_on_status(self.status):
            # nginx: never for 403 and 404; a passive_fail_status was counted already
            self.ups.peer_failed(self.peer, g_now)
        self.record_try(c, self.status)
        self.client = None
        self.close()
        c.up = None
        c.connect_next_peer()

    cdef int intercept(self, int head_len):
        """proxy_intercept_errors: this response is replaced by an error page. Its head is
        dropped, and so is its body when it is already here whole (the connection can
        then be pooled); otherwise the connection is closed. -5 for pump_response."""
        cdef size_t avail
        self.header_us = g_now_us
        self.rb.start += <size_t>head_len
        avail = buf_len(&self.rb)
        if self.resp_kind == RESP_LENGTH and <int64_t>avail >= self.resp_left:
            self.rb.start += <size_t>self.resp_left
            self.resp_left = 0
        elif self.resp_kind != RESP_NONE:
            self.upstream_keepalive = False
        if buf_len(&self.rb):
            self.upstream_keepalive = False
        self.head_done = True
        self.resp_done = True
        return -5

    cdef void intercepted(self):
        """The intercepted response is dropped: free this connection, then the client
        runs the error page (or the built-in page, when an error page ran already)."""
        cdef Client c = self.client
        cdef int status = self.status
        self.client = None
        timer_stop(self)
        self.record_try(c, status)
        self.end_try()
        self.recycle(c)
        c.up = None
        c.state = CS_HEAD
        c.finish_without_body(status)
        if c.state == CS_HEAD or c.state == CS_DISCARD:
            c.serve_heads()

    cdef void finish(self):
        """The response is complete and sent: pool or close this connection, then let the
        client go on with its next request."""
        cdef Client c = self.client
        self.client = None
        timer_stop(self)
        self.record_try(c, self.status)
        self.end_try()
        self.recycle(c)
        if spool_pending(c):
            # the upstream is free; the client reads the rest from the spool and
            # Client.drive ends the request once it is sent
            c.up = None
            return
        c.proxy_finished()

    cdef void recycle(self, Client c):
        """A response is over on this connection: back to its group's pool when it can
        carry another request, else closed. A pool this takes over `keepalive` is trimmed
        later (trim_upstream_pools)."""
        cdef Upstream ups = self.ups
        if (ups.keepalive > 0 and self.upstream_keepalive and c.body_done
                and buf_len(&self.rb) == 0 and self.nrequests < ups.keepalive_requests
                and not g_loop.quitting
                and (self.ssl == NULL or not SSL_has_pending(self.ssl))):
            self.state = US_IDLE
            # an idle pooled connection holds no buffers: they go back to the pool and
            # upstream_connection takes them again when it is reused
            buf_free(&self.rb)
            buf_free(&self.wb)
            self.win_len = 0
            self.suf_len = 0
            self.file_fd = -1
            ups.idle.append(self)
            self.idle_since = g_now
            timer_arm(self, ups.t_idle, g_now)
            if len(ups.idle) > ups.keepalive and not ups.over_keepalive:
                ups.over_keepalive = True
                g_pools_over.append(ups)
        else:
            self.close()

    cdef void record_try(self, Client c, int status) noexcept:
        if self.ups.method == LB_EWMA:
            # the time to the response head; a try without one (failed, timed out,
            # abandoned) took at least this long, so it may raise the average only
            if self.header_us >= 0:
                ewma_observe(self.ups, self.peer, self.header_us - self.try_start_us, False)
            else:
                ewma_observe(self.ups, self.peer, g_now_us - self.try_start_us, True)
        c.record_try(self.peer, status,
                     self.connected_us - self.try_start_us if self.connected_us >= 0 else -1,
                     self.header_us - self.try_start_us if self.header_us >= 0 else -1,
                     g_now_us - self.try_start_us)

    cdef void log_failure(self, int why):
        cdef str what
        if g_log_fn is None:
            return
        if why == FAIL_CONNECT:
            what = "connect() failed while connecting to upstream"
        elif why == FAIL_TLS:
            what = g_up_tls_error or "SSL handshake to upstream failed"
        elif why == FAIL_TIMEOUT:
            what = ("upstream timed out while connecting to upstream" if self.state == US_CONNECTING
                    else "upstream timed out while SSL handshaking to upstream"
                    if self.state == US_HANDSHAKE
                    else "upstream timed out while reading response header from upstream"
                    if not self.head_done else "upstream timed out while reading upstream")
        elif why == FAIL_BAD_RESPONSE:
            what = "upstream sent invalid response"
        elif why == FAIL_HEAD_TOO_BIG:
            what = "upstream sent too big header while reading response header from upstream"
        else:
            what = ("upstream prematurely closed connection while reading response header"
                    if not self.head_done else "upstream prematurely closed connection")
        try:
            g_log_fn("error", "%s, upstream: %s (%s)" % (what, self.ups.name, self.ups.peer_names[self.peer]))
        except Exception:
            pass

    cdef void fail(self, int why):
        """The upstream failed this request. Before any response byte: retry or answer
        502/504. After the head went out: cut the client connection."""
        cdef Client c = self.client
        cdef bint retry_same_peer = False
        cdef int status
        if c is None:
            self.close()
            return
        # a pooled connection that the upstream closed just before we reused it is not
        # the peer's fault: replay once on a fresh connection (idempotence is guaranteed
        # because nothing of the response arrived and no body was streamed)
        retry_same_peer = self.reused and not self.got_bytes and why == FAIL_IO
        if not retry_same_peer and not (why == FAIL_TIMEOUT and self.head_done):
            self.log_failure(why)
            self.ups.peer_failed(self.peer, g_now)      # counts toward max_fails
        status = 504 if why == FAIL_TIMEOUT else 502
        cdef bint was_connecting = self.state == US_CONNECTING or self.state == US_HANDSHAKE
        cdef bint request_sent = self.request_sent
        if self.ssl != NULL:
            tls_free(&self.ssl, False)      # a failed connection gets no close_notify
        if not retry_same_peer:
            self.record_try(c, status if not self.head_done else self.status)
        self.client = None
        self.close()
        c.up = None
        if c.response_started:
            c.close()
            return
        if retry_same_peer and c.body_replayable():
            c.tries -= 1
            c.tried_peers &= ~((<uint64_t>1) << self.peer) if self.peer < 64 else c.tried_peers
            c.connect_next_peer()
            return
        c.retry_or_fail(status, NU_TIMEOUT if why == FAIL_TIMEOUT else
                        NU_INVALID_HEADER if why == FAIL_BAD_RESPONSE or why == FAIL_HEAD_TOO_BIG
                        else NU_ERROR, request_sent and not was_connecting)


cdef void append_content_type_charset(Client c, edge_header *h, Buf *out) noexcept:
    """nginx's charset filter on a proxied Content-Type: `; charset=X` is added when the
    value names no charset and is (whole, case-insensitively) one of charset_types."""
    cdef const char *p = h.value
    cdef size_t n = h.value_len
    cdef size_t i = 0
    cdef size_t j
    cdef bint add = True
    cdef bytes name
    while i < n:
        if p[i] == 59:
            j = i + 1
            while j < n and p[j] == 32:
                j += 1
            if j + 8 <= n and strncasecmp(p + j, "charset=", 8) == 0:
                add = False
                break
        i += 1
    if add and c.loc.proxy_charset_types is not None:
        try:
            add = p[:n].lower() in c.loc.proxy_charset_types
        except Exception:
            add = False
    buf_append_str(out, "Content-Type: ")
    buf_append(out, p, n)
    if add:
        name = <bytes>c.loc.proxy_charset
        buf_append_str(out, "; charset=")
        buf_append(out, <const char *>name, len(name))
    buf_append_str(out, "\r\n")


# Upstream groups whose pool holds more idle connections than `keepalive`
cdef list g_pools_over = []
cdef int64_t g_upconn_serial = 0     # UpConn.serial of the last one made

cdef struct RestedConn:
    int64_t serial
    PyObject *conn          # borrowed: ups.idle holds the reference


cdef int by_serial(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<RestedConn *>a).serial
    cdef int64_t y = (<RestedConn *>b).serial
    return (x > y) - (x < y)


cdef enum:
    POOL_OVER_GRACE_MS = 1000      # how long a connection above `keepalive` may wait idle


cdef int trim_upstream_pools() noexcept:
    """Once a second (Loop.shrink_pools): a pool over its `keepalive` bound closes, of
    its connections that have been idle for POOL_OVER_GRACE_MS, the most recently made
    ones (the highest UpConn.serial). Returns how many it closed.

    Why the newest and not the least recently used: every connection that rested a
    second is as good as another, but their objects are not. A burst's UpConns fill fresh
    pymalloc arenas, and one survivor keeps its whole 1 MiB arena resident; keeping the
    oldest objects lets the burst's arenas empty and go back (test_rss_comes_back_after_a_burst).

    nginx closes the least recently used connection the moment a returning one would
    make the cache exceed `keepalive`. When the requests in flight to a group hover above
    that bound (50 clients and `keepalive 32` in perf/bench), that closes a connection
    that the next request must open again: measured, 0.22 new upstream connections per
    request. Kept idle for a second, the connections that came back from a burst serve
    the next one instead, and a pool that is not needed shrinks back to `keepalive` within
    about two seconds. The connections open to the upstream never exceed the peak of
    requests in flight, as with nginx."""
    cdef Upstream ups
    cdef UpConn up
    cdef list still_over = []
    cdef Py_ssize_t excess, nrested, i
    cdef RestedConn *rested
    cdef int closed = 0
    for ups in g_pools_over:
        excess = len(ups.idle) - ups.keepalive
        rested = <RestedConn *>malloc(sizeof(RestedConn) * len(ups.idle))
        if rested == NULL:
            still_over.append(ups)      # over_keepalive stays set: try again next second
            continue
        nrested = 0
        for up in ups.idle:
            if g_now - up.idle_since >= POOL_OVER_GRACE_MS:
                rested[nrested].serial = up.serial
                rested[nrested].conn = <PyObject *>up
                nrested += 1
        if excess > nrested:
            excess = nrested
        # the newest objects go: see above
        qsort(rested, nrested, sizeof(RestedConn), by_serial)
        for i in range(nrested - excess, nrested):
            up = <UpConn>rested[i].conn     # a reference of our own: close() drops the pool's
            up.close()
            closed += 1
        free(rested)
        ups.over_keepalive = len(ups.idle) > ups.keepalive
        if ups.over_keepalive:
            still_over.append(ups)
    g_pools_over[:] = still_over
    return closed


cdef UpConn upstream_connection(Upstream ups, int peer, Client c):
    """An idle pooled connection to `peer`, or a new non-blocking connect."""
    global g_upconn_serial
    cdef UpConn up
    cdef int i
    cdef int fd
    cdef int one = 1
    cdef Peer *p = &ups.peers[peer]
    cdef UpstreamTls tls = c.loc.upstream_tls
    for i in range(len(ups.idle) - 1, -1, -1):
        up = <UpConn>ups.idle[i]
        if up.peer == peer and up.tls is tls:
            del ups.idle[i]
            timer_stop(up)
            up.state = US_ACTIVE
            up.reused = True
            up.readable = False
            up.writable = True
            up.peer_closed = False
            if up.rb.data == NULL:
                buf_init(&up.rb, UP_HEAD_MAX)     # what its first read_some() would grow it to
                buf_init(&up.wb, 2048)
            up.counted = True
            p.conns += 1
            return up
    fd = socket(p.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        return None
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int))
    up = UpConn.__new__(UpConn)
    g_upconn_serial += 1
    up.serial = g_upconn_serial
    up.fd = fd
    up.kind = K_UPSTREAM
    up.ups = ups
    up.peer = peer
    up.reused = False
    up.nrequests = 0
    up.readable = False
    up.writable = False
    up.peer_closed = False
    up.file_fd = -1
    up.tls = tls
    # read_some() reads up to UP_HEAD_MAX at once, so a READ_CHUNK buffer was grown (a
    # realloc and a copy) on the first read of every new connection: take that size now
    buf_init(&up.rb, UP_HEAD_MAX)
    buf_init(&up.wb, 2048)
    if connect(fd, <sockaddr *>&p.addr, p.addrlen) < 0 and errno != EINPROGRESS:
        close(fd)
        up.fd = -1
        up.state = US_CLOSED
        return None
    up.state = US_CONNECTING
    up.counted = True
    p.conns += 1
    g_loop.register(up)
    return up


cdef int build_upstream_head(Client c, Location loc, Buf *out) except -1:
    """The request line and headers sent upstream, into out."""
    cdef size_t i, mark, value_start
    cdef edge_header *h
    cdef edge_header *conn = &c.headers[c.connection_header] if c.connection_header >= 0 else NULL
    cdef const char *strip = loc.proxy_strip
    cdef bytes name
    cdef Template tpl
    cdef size_t prefix_len
    buf_reset(out)
    if loc.proxy_method is None:
        buf_append(out, c.method, c.method_len)
    else:
        buf_append_bytes(out, <bytes>loc.proxy_method)
    buf_append_str(out, " ")
    if c.rewritten or (loc.dynamic is not None and loc.proxy_uri is not None):
        append_changed_uri(c, loc, out)
    elif loc.proxy_uri is None and (loc.hide_args is None or not c.has_args):
        buf_append(out, c.target, c.target_len)
    elif loc.proxy_uri is None:
        buf_append(out, c.target, <size_t>(c.args - c.target))     # the path and "?"
        out.end -= 1
        append_args(out, c, loc.hide_args)
    else:
        # proxy_pass with a URI: the matched location prefix is replaced by it (nginx)
        buf_append_bytes(out, <bytes>loc.proxy_uri)
        prefix_len = len(loc.pattern)
        if loc.kind == LOC_EXACT or prefix_len > buf_len(&c.uri):
            prefix_len = buf_len(&c.uri)
        append_escaped_path(out, c.uri.data + prefix_len, buf_len(&c.uri) - prefix_len)
        if c.has_args:
            append_args(out, c, loc.hide_args)
    buf_append_str(out, " HTTP/1.0\r\n" if loc.proxy_http10 else " HTTP/1.1\r\n")
    for i in range(c.nheaders if loc.pass_request_headers else 0):
        h = &c.headers[i]
        if name_in_list(h.name, h.name_len, HOP_BY_HOP):
            continue
        if memchr(h.name, 95, h.name_len) != NULL:
            # "Transfer_Encoding" means Transfer-Encoding to CGI-style backends: drop
            # names with underscores, as nginx does by default
            continue
        if name_in_list(h.name, h.name_len, strip):
            continue
        if conn != NULL and token_listed(conn.value, conn.value_len, h.name, h.name_len):
            continue
        buf_append(out, h.name, h.name_len)
        buf_append_str(out, ": ")
        buf_append(out, h.value, h.value_len)
        buf_append_str(out, "\r\n")
    for name, tpl in loc.proxy_headers:
        mark = out.end
        buf_append_bytes(out, name)
        buf_append_str(out, ": ")
        value_start = out.end
        eval_template(tpl, c, out)
        if out.end == value_start:
            if len(name) == 4 and name.lower() == b"host":
                # HTTP/1.1 needs a Host: fall back to the upstream's name
                buf_append_bytes(out, c.ups.host_header)
            else:
                out.end = mark      # an empty value removes the header, as in nginx
                continue
        buf_append_str(out, "\r\n")
    return 0


cdef void append_changed_uri(Client c, Location loc, Buf *out) noexcept:
    """The request URI after a rewrite, or for a proxy_pass with variables (nginx's
    rules): with variables and a URI part, that URI as it is; otherwise the URI part (unless
    a `break` rewrite changed the URI) + the rest of the changed path, escaped, + the
    arguments."""
    cdef size_t prefix_len = 0
    if loc.dynamic is not None and loc.proxy_uri is not None:
        buf_append_bytes(out, <bytes>loc.proxy_uri)
        return
    if loc.proxy_uri is not None and not c.rw_break:
        buf_append_bytes(out, <bytes>loc.proxy_uri)
        prefix_len = len(loc.pattern)
        if loc.kind == LOC_EXACT or prefix_len > buf_len(&c.uri):
            prefix_len = buf_len(&c.uri)
    append_escaped_path(out, c.uri.data + prefix_len, buf_len(&c.uri) - prefix_len)
    if c.has_args:
        append_args(out, c, loc.hide_args)


cdef void finish_upstream_head(Client c, Location loc, Buf *out) noexcept:
    """The body's framing and the Connection field end the head. Apart from
    build_upstream_head because a buffered chunked body's length is known only once the
    body is read, while the fields it copies point into rb, which that read may move."""
    if not loc.pass_request_body:
        pass        # proxy_pass_request_body off: no body, so no length either
    elif c.body_buffered:
        # a body read whole goes with its length, as nginx sends it (never chunked)
        buf_append_str(out, "Content-Length: ")
        buf_append_uint(out, <uint64_t>c.body_size)
        buf_append_str(out, "\r\n")
    elif c.body_kind == BODY_LENGTH:
        buf_append_str(out, "Content-Length: ")
        buf_append_uint(out, <uint64_t>c.body_left)
        buf_append_str(out, "\r\n")
    elif c.body_kind == BODY_CHUNKED:
        buf_append_str(out, "Transfer-Encoding: chunked\r\n")
    # A location that sets Connection (or Upgrade) itself sent it with the other
    # proxy_set_header fields, empty meaning none, as nginx does: edge adds neither.
    if loc.proxy_http10:
        if not loc.own_connection:
            buf_append_str(out, "Connection: close\r\n")     # HTTP/1.0: no keep-alive, no upgrade
    elif c.upgrade:
        if not loc.own_upgrade:
            buf_append_str(out, "Upgrade: ")
            buf_append(out, c.headers[c.upgrade_index].value, c.headers[c.upgrade_index].value_len)
            buf_append_str(out, "\r\n")
        if not loc.own_connection:
            buf_append_str(out, "Connection: upgrade\r\n")
    elif not loc.own_connection:
        if c.ups.keepalive > 0:
            buf_append_str(out, "Connection: keep-alive\r\n")
        else:
            buf_append_str(out, "Connection: close\r\n")
    buf_append_str(out, "\r\n")


cdef void append_args(Buf *out, Client c, bytes hide) noexcept:
    """"?" and the query string, without the arguments named in `hide` (credentials
    that auth_hide_credentials keeps from the upstream); nothing when none is left."""
    cdef const char *p = c.args
    cdef const char *end = c.args + c.args_len
    cdef const char *amp
    cdef const char *eq
    cdef size_t mark = out.end
    cdef bint first = True
    if hide is None:
        buf_append_str(out, "?")
        buf_append(out, c.args, c.args_len)
        return
    while p <= end:
        amp = <const char *>memchr(p, 38, <size_t>(end - p)) if p < end else NULL
        if amp == NULL:
            amp = end
        eq = <const char *>memchr(p, 61, <size_t>(amp - p)) if amp > p else NULL
        if not name_in_list(p, <size_t>((eq if eq != NULL else amp) - p), hide) and amp > p:
            buf_append_str(out, "?" if first else "&")
            buf_append(out, p, <size_t>(amp - p))
            first = False
        p = amp + 1


cdef void eval_template(Template t, Client c, Buf *out) noexcept:
    cdef int k
    cdef Segment *s
    for k in range(t.nsegs):
        s = &t.segs[k]
        if s.var == 0:
            buf_append(out, s.text, s.len)
        else:
            append_variable(s, c, out)


cdef bint append_variable(Segment *s, Client c, Buf *out) noexcept:
    """Append a variable's value; False when it has none for this request (the access
    log writes "-" then, as nginx does for a variable that is not found)."""
    cdef size_t i
    cdef bint first = True
    cdef edge_header *h
    cdef int v = s.var
    if v >= VAR_REMOTE_USER:
        return append_fact(s, c, out)
    if v == VAR_HOST:
        if c.host_len:
            buf_append(out, c.host, c.host_len)
        elif c.server is not None:
            buf_append(out, c.server.first_name, len(c.server.first_name))
    elif v == VAR_HTTP_HOST:
        # the host as the client named it: an absolute-form target's authority wins
        # over the Host header (RFC 9112 3.2.2)
        if c.abs_host != NULL:
            buf_append(out, c.abs_host, c.abs_host_len)
        else:
            for i in range(c.nheaders):
                h = &c.headers[i]
                if name_is(h.name, h.name_len, "host", 4):
                    buf_append(out, h.value, h.value_len)
                    break
    elif v == VAR_REMOTE_ADDR:
        buf_append(out, c.remote, c.remote_len)
    elif v == VAR_REMOTE_PORT:
        buf_append(out, c.remote_port, c.remote_port_len)
    elif v == VAR_PROXY_ADD_XFF:
        for i in range(c.nheaders):
            h = &c.headers[i]
            if name_is(h.name, h.name_len, "x-forwarded-for", 15) and h.value_len:
                buf_append(out, h.value, h.value_len)
                buf_append_str(out, ", ")
        buf_append(out, c.remote, c.remote_len)
    elif v == VAR_SCHEME:
        buf_append_str(out, "https" if c.ssl != NULL else "http")
    elif v == VAR_REQUEST_URI:
        if not c.parsed:
            return False
        buf_append(out, c.target, c.target_len)
    elif v == VAR_URI:
        if buf_len(&c.uri) == 0:
            return False
        buf_append(out, c.uri.data, buf_len(&c.uri))
    elif v == VAR_ARGS:
        if not c.has_args:
            return False
        buf_append(out, c.args, c.args_len)
    elif v == VAR_IS_ARGS:
        if c.has_args:
            buf_append_str(out, "?")
    elif v == VAR_REQUEST_METHOD:
        if not c.parsed:
            return False
        buf_append(out, c.method, c.method_len)
    elif v == VAR_SERVER_PORT:
        buf_append(out, c.binding.server_port, len(c.binding.server_port))
    elif v == VAR_SERVER_ADDR:
        buf_append(out, c.binding.server_addr, len(c.binding.server_addr))
    elif v == VAR_SERVER_NAME:
        if c.server is not None:
            buf_append(out, c.server.first_name, len(c.server.first_name))
    elif v == VAR_SERVER_PROTOCOL:
        if not c.parsed:
            return False
        buf_append(out, "HTTP/1.1" if c.minor == 1 else "HTTP/1.0", 8)
    elif v == VAR_PROXY_HOST:
        if c.ups is not None:
            buf_append(out, c.ups.host_header, len(c.ups.host_header))
    elif v == VAR_HTTP or v == VAR_CONTENT_LENGTH or v == VAR_CONTENT_TYPE:
        for i in range(c.nheaders):
            h = &c.headers[i]
            if (v == VAR_HTTP and name_is(h.name, h.name_len, s.text, s.len)) or \
               (v == VAR_CONTENT_LENGTH and name_is(h.name, h.name_len, "content-length", 14)) or \
               (v == VAR_CONTENT_TYPE and name_is(h.name, h.name_len, "content-type", 12)):
                if not first:
                    buf_append_str(out, ", ")
                buf_append(out, h.value, h.value_len)
                first = False
        return not first
    elif v == VAR_PROXY_PROTOCOL_ADDR:
        if not c.has_pp:
            return False
        buf_append(out, c.pp_text, c.pp_text_len)
    elif v == VAR_PROXY_PROTOCOL_PORT:
        if not c.has_pp:
            return False
        buf_append(out, c.pp_port, c.pp_port_len)
    elif v == VAR_REALIP_REMOTE_ADDR:
        buf_append(out, c.conn_remote, c.conn_remote_len)
    elif v == VAR_REALIP_REMOTE_PORT:
        buf_append(out, c.conn_port, c.conn_port_len)
    elif v == VAR_USER:
        return append_user(s, c, out)
    elif v == VAR_DOCUMENT_ROOT or v == VAR_REQUEST_FILENAME:
        return append_path_variable(v, c, out)
    elif v == VAR_CAPTURE:
        if c.cap_base != NULL:
            if s.index <= c.cap_n and c.caps[s.index].rm_so >= 0:
                buf_append(out, c.cap_base + c.caps[s.index].rm_so,
                           <size_t>(c.caps[s.index].rm_eo - c.caps[s.index].rm_so))
        elif c.loc is not None and c.loc.has_regex and s.index <= c.loc.ncaptures \
                and c.caps[s.index].rm_so >= 0:
            buf_append(out, c.uri.data + c.caps[s.index].rm_so,
                       <size_t>(c.caps[s.index].rm_eo - c.caps[s.index].rm_so))
    return True
