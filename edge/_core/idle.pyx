# Idle client connections at rest: what a keep-alive connection keeps between requests.
#
# A Client is large (the parsed head's field table, the request's state: about 7 KiB) and
# most connections in front of browsers and mobile clients sit idle between requests. An
# idle connection holds no buffers (Client.go_idle gives them back to the pool at once), and
# once a second `park_idle_clients` swaps each idle Client for an IdleConn of about 200
# bytes, which keeps only what the connection needs to go on: its socket, listener, peer
# and PROXY protocol addresses, TLS session and counters. The Client object goes back to the
# Loop's free list. When bytes arrive, the IdleConn takes a Client from that list and hands
# it the connection, in the IdleConn's place in the fd table and in its timer list, so the
# keep-alive timeout runs on unchanged. Busy keep-alive connections are rarely idle at the
# moment of a sweep, so they keep their Client; a connection idle for a second is parked.

DEF SWEEP_BUDGET_PER_CLIENT = 4     # the sweep walks at most this many handles per slot


cdef class IdleConn(Handle):
    cdef Listener listener
    cdef ListenBinding binding
    cdef SSL *ssl
    cdef bytes sni                  # the TLS server name the client sent, or None
    cdef int64_t requests
    cdef int64_t conn_serial
    cdef int64_t out_written
    cdef unsigned char peer_addr[16]
    cdef unsigned char pp_addr[16]
    cdef uint16_t peer_port
    cdef uint16_t pp_port
    cdef uint8_t peer_family
    cdef uint8_t pp_family
    cdef bint has_pp
    cdef bint peer_closed
    cdef bint nodelay               # TCP_NODELAY is already set on the socket
    cdef bint out_armed             # registered for EPOLLOUT

    cdef void on_events(self, uint32_t events):
        cdef Client c = resume_client(self)
        if c is not None:
            c.on_events(events)

    cdef bint input_waiting(self) noexcept:
        cdef char probe
        return recv(self.fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT) > 0

    cdef void on_timeout(self):
        self.close()        # the keep-alive (or first request) timeout: nothing to log

    cdef void close(self):
        if self.fd < 0:
            return
        timer_stop(self)
        g_loop.unregister(self)
        if self.ssl != NULL:
            tls_free(&self.ssl, True)
        close(self.fd)
        self.fd = -1
        self.listener = None
        self.binding = None
        g_loop.nclients -= 1


cdef bint client_parkable(Client c) noexcept:
    """Idle between requests (or before the first): no request, no bytes held or queued,
    nothing waiting inside TLS, no body or upstream attached."""
    if c.state != CS_HEAD or not c.logged or c.fd < 0:
        return False
    if c.readable:
        return False        # bytes may wait that no new edge-triggered event would announce
    if buf_len(&c.rb) or c.output_pending() or c.up is not None or c.spool is not None:
        return False
    if c.body_fd >= 0 or c.body_buffered or c.discarding:
        return False
    if c.ssl != NULL and (c.tls_read_wants_write or c.plain_on_tls or SSL_pending(c.ssl) > 0):
        return False
    return True


cdef void timer_take_place(Handle old, Handle new) noexcept:
    """`new` takes `old`'s place in its timer list, with the same deadline."""
    new.tlist = old.tlist
    new.deadline = old.deadline
    new.tprev = old.tprev
    new.tnext = old.tnext
    if old.tlist is not None:
        if old.tprev is not None:
            old.tprev.tnext = new
        else:
            old.tlist.head = new
        if old.tnext is not None:
            old.tnext.tprev = new
        else:
            old.tlist.tail = new
    old.tlist = None
    old.tprev = None
    old.tnext = None


cdef IdleConn park_client(Client c):
    """Swap an idle Client for an IdleConn; the Client goes back to the free list."""
    cdef IdleConn i = IdleConn.__new__(IdleConn)
    i.fd = c.fd
    i.kind = K_IDLE
    i.listener = c.listener
    i.binding = c.binding
    i.ssl = c.ssl
    if c.ssl != NULL:
        SSL_set_ex_data(c.ssl, 0, NULL)     # no callback runs while nothing reads
    i.sni = c.sni[:c.sni_len] if c.sni_len else None
    i.requests = c.requests
    i.conn_serial = c.conn_serial
    i.out_written = c.out_written
    memcpy(i.peer_addr, c.peer_addr, 16)
    i.peer_port = c.peer_port
    i.peer_family = <uint8_t>c.peer_family
    i.has_pp = c.has_pp
    if c.has_pp:
        memcpy(i.pp_addr, c.pp_addr, 16)
        i.pp_port = c.pp_port_num
        i.pp_family = <uint8_t>c.pp_family
    i.peer_closed = c.peer_closed
    i.nodelay = c.nodelay
    i.out_armed = c.out_armed
    timer_take_place(c, i)
    g_loop.handles[c.fd] = i
    c.ssl = NULL
    c.fd = -1
    c.state = CS_FREE
    c.release_buffers()
    c.listener = None
    c.binding = None
    c.loc = None
    c.server = None
    g_loop.recycle_client(c)
    return i


cdef Client resume_client(IdleConn i):
    """Bytes arrived (or the socket closed): a Client takes the connection back."""
    cdef Client c = g_loop.new_client()
    c.begin_connection(i.fd, i.listener)
    c.binding = i.binding
    c.requests = i.requests
    c.conn_serial = i.conn_serial
    c.out_written = i.out_written
    c.peer_closed = i.peer_closed
    c.nodelay = i.nodelay
    c.out_armed = i.out_armed
    c.peer_family = i.peer_family
    memcpy(c.peer_addr, i.peer_addr, 16)
    c.peer_port = i.peer_port
    c.set_address(c.peer_family, c.peer_addr, c.peer_port, c.conn_remote,
                  &c.conn_remote_len, c.conn_port, &c.conn_port_len)
    c.restore_remote()
    if i.has_pp:
        c.has_pp = True
        c.pp_family = i.pp_family
        memcpy(c.pp_addr, i.pp_addr, 16)
        c.pp_port_num = i.pp_port
        c.set_address(c.pp_family, c.pp_addr, c.pp_port_num, c.pp_text, &c.pp_text_len,
                      c.pp_port, &c.pp_port_len)
    if i.ssl != NULL:
        c.ssl = i.ssl
        SSL_set_ex_data(c.ssl, 0, <void *>c)
        if i.sni is not None:
            memcpy(c.sni, <const char *>i.sni, len(i.sni))
            c.sni_len = len(i.sni)
            c.sni[c.sni_len] = 0
    c.reset_request()
    timer_take_place(i, c)
    g_loop.handles[i.fd] = c
    i.ssl = NULL
    i.fd = -1
    i.listener = None
    i.binding = None
    i.sni = None
    return c


cdef int park_idle_clients():
    """The once-a-second sweep: park every idle Client. Idle connections always have a
    timer (client_header_timeout or keepalive_timeout), so the timer lists reach them all;
    the walk is bounded like reuse_connections'. Returns how many were parked."""
    cdef TimerList t
    cdef Handle h, nxt
    cdef int budget = SWEEP_BUDGET_PER_CLIENT * g_loop.max_clients + 64
    cdef int parked = 0
    for t in _all_timer_lists:
        h = t.head
        while h is not None and budget > 0:
            budget -= 1
            nxt = h.tnext
            if h.kind == K_CLIENT and client_parkable(<Client>h):
                park_client(<Client>h)
                parked += 1
            h = nxt
    return parked
