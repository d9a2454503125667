# cython: language_level=3
# edge's data plane: one epoll loop per worker process.
#
# This file is the single translation unit of the compiled hot path (as uvloop's loop.pyx):
# it includes the other .pyx files so that every call between them is a direct C call.
# Order matters only for readability; Cython resolves the cdef classes module-wide.

# phase handler results (phases.pyx), used by client.pyx before phases.pyx is read
DEF PH_CONTINUE = 0
DEF PH_DONE = 1
DEF PH_RELOCATE = 2     # rewrite.pyx: the URI changed, search the location again
# gzip decisions (gzip.pyx), used by proxy.pyx and static.pyx before gzip.pyx is read
DEF GZ_NONE = 0
DEF GZ_VARY = 1         # not compressed, but Vary: Accept-Encoding (gzip_vary)
DEF GZ_ON = 2
DEF PRE_GZ = 1          # gzip_static serves the precompressed "file.gz"
DEF PRE_VARY = 2        # ... with Vary: Accept-Encoding (gzip_static on, gzip_vary on)
DEF PRE_BR = 4          # ... the twin is brotli_static's "file.br"

include "includes/system.pxi"
include "buffers.pyx"
include "timers.pyx"
include "status.pyx"
include "shm.pyx"
include "zones.pyx"
include "values.pyx"
include "upstream.pyx"
include "balancer.pyx"
include "realip.pyx"
include "router.pyx"
include "tls.pyx"
include "tls_sessions.pyx"
include "uri.pyx"
include "proxy_protocol.pyx"
include "client.pyx"
include "idle.pyx"
include "phases.pyx"
include "access_log.pyx"
include "limiter.pyx"
include "ip_rules.pyx"
include "cors.pyx"
include "auth.pyx"
include "proxy.pyx"
include "upstream_tls.pyx"
include "buffering.pyx"
include "retries.pyx"
include "mirror.pyx"
include "rewrite.pyx"
include "static.pyx"
include "error_page.pyx"
include "gzip.pyx"

DEF MAX_EVENTS = 512
DEF FREE_CLIENTS_MAX = 4096

cdef enum HandleKind:
    K_LISTEN = 1
    K_CLIENT = 2
    K_UPSTREAM = 3
    K_SIGNAL = 4
    K_CONTROL = 5
    K_MIRROR = 6        # a mirror copy's connection (mirror.pyx)
    K_IDLE = 7          # an idle client connection at rest (idle.pyx)

# One loop per process; the globals keep the hot path free of attribute lookups.
cdef Loop g_loop = None
cdef int64_t g_now = 0                  # monotonic milliseconds, refreshed once per wake-up
cdef int64_t g_now_us = 0               # the same instant in microseconds (request times)
cdef int64_t g_real_ms = 0              # wall clock, epoch milliseconds ($msec)
cdef time_t g_date_second = 0
cdef char g_date[64]                    # "Date: ...\r\n", rebuilt once a second
cdef size_t g_date_len = 0


cdef void update_time() noexcept:
    global g_now, g_now_us, g_real_ms, g_date_second, g_date_len
    cdef timespec ts
    cdef tm t
    clock_gettime(CLOCK_MONOTONIC, &ts)
    g_now_us = <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000
    g_now = g_now_us // 1000
    clock_gettime(CLOCK_REALTIME, &ts)
    g_real_ms = <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000
    if ts.tv_sec != g_date_second:
        g_date_second = ts.tv_sec
        gmtime_r(&ts.tv_sec, &t)
        g_date_len = strftime(g_date, 64, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &t)
        update_log_times(ts.tv_sec)


cdef const char *WORKER_FULL_RESPONSE = (
    "HTTP/1.1 503 Service Temporarily Unavailable\r\nServer: edge\r\n"
    "Content-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
    "too many connections")


cdef class Listener(Handle):
    cdef ListenBinding binding
    cdef readonly str key
    cdef bint pending           # connections may be waiting (edge-triggered: remember it)

    cdef void on_events(self, uint32_t events):
        self.pending = True
        g_loop.accept_from(self)


cdef class ControlHandle(Handle):
    """The worker's end of the master's control socket: reload messages arrive here."""
    cdef void on_events(self, uint32_t events):
        if g_loop.on_control is not None:
            try:
                g_loop.on_control()
            except Exception as e:
                g_loop.log_error("control message failed: %r" % (e,))


cdef class SignalHandle(Handle):
    cdef void on_events(self, uint32_t events):
        cdef signalfd_siginfo info
        while read(self.fd, &info, sizeof(info)) == sizeof(info):
            g_loop.on_signal(info.ssi_signo)


cdef class Loop:
    """The worker's event loop. Loop(plan, {listen key: fd or [fd, ...]}).run() returns when the worker
    should exit: after a graceful drain (QUIT) or at once (TERM/INT)."""
    cdef int epfd
    cdef list handles               # fd -> Handle
    cdef list free_clients          # Client objects without a connection, and without buffers
    cdef Py_ssize_t free_low        # the fewest free Clients since the last shrink
    cdef list listeners
    cdef Plan plan
    cdef int nclients
    cdef int max_clients
    cdef bint full_logged
    cdef bint reuse_logged
    cdef bint quitting
    cdef bint stopping
    cdef int64_t quit_deadline
    cdef object on_reopen
    cdef object on_control
    cdef object log
    cdef Client spare_client        # logs connections refused at accept
    cdef int worker_index
    cdef int64_t next_gauges_ms     # when the connection gauges are next published

    def __init__(self, Plan plan, dict listen_fds, on_reopen=None, log=None,
                 int control_fd=-1, on_control=None, int worker_index=0, log_enabled=None):
        global g_loop
        cdef Listener lst
        cdef SignalHandle sig
        cdef sigset_t mask
        cdef ControlHandle ctl
        self.plan = plan
        self.on_reopen = on_reopen
        self.on_control = on_control
        self.worker_index = worker_index
        self.log = log
        seed_worker()
        self.handles = [None] * 4096
        self.free_clients = []
        self.free_low = 0
        self.listeners = []
        self.nclients = 0
        self.max_clients = plan.worker_connections
        self.quitting = False
        self.stopping = False
        global g_log_fn, g_log_info
        g_log_fn = log
        g_log_info = log_enabled is not None and bool(log_enabled("info"))
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        g_loop = self
        update_time()
        for key, fds in listen_fds.items():
            for fd in (fds if isinstance(fds, list) else [fds]):
                lst = Listener()
                lst.fd = fd
                lst.kind = K_LISTEN
                lst.key = key
                lst.binding = plan.bindings[key]
                self.listeners.append(lst)
                self.register(lst)
        # signals arrive through a signalfd so they are just another event
        sigemptyset(&mask)
        for signo in (SIGQUIT, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH):
            sigaddset(&mask, signo)
        sigprocmask(SIG_BLOCK, &mask, NULL)
        sig = SignalHandle()
        sig.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)
        sig.kind = K_SIGNAL
        if sig.fd < 0:
            raise OSError(errno, "signalfd failed")
        self.register(sig)
        if control_fd >= 0:
            ctl = ControlHandle()
            ctl.fd = control_fd
            ctl.kind = K_CONTROL
            self.register(ctl)

    def swap_plan(self, Plan plan):
        """Serve a new config generation in place (reload with unchanged listeners):
        new requests use it, in-flight requests finish on the one they started with."""
        cdef Listener lst
        cdef Plan old = self.plan
        cdef UpConn up
        missing = [lst.key for lst in self.listeners if lst.key not in plan.bindings]
        if missing:
            raise ValueError("the new plan has no binding for %s" % ", ".join(missing))
        for lst in self.listeners:
            lst.binding = plan.bindings[lst.key]
        self.plan = plan
        self.max_clients = plan.worker_connections
        # idle pooled connections belong to the old groups: nobody will reuse them
        for group in old.upstreams:
            for up in list((<Upstream>group).idle):
                up.close()

    cdef int register(self, Handle h) except -1:
        cdef epoll_event ev
        ev.events = EPOLLIN | EPOLLET
        if h.kind == K_UPSTREAM or h.kind == K_MIRROR:
            ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        elif h.kind == K_CLIENT:
            # plain: reading only until a write blocks (Client.arm_write_event); TLS
            # handshakes and reads may need to write at any time
            if (<Client>h).listener.binding.ssl:
                ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
                (<Client>h).out_armed = True
            else:
                ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET
                (<Client>h).out_armed = False
        ev.data.u64 = 0
        ev.data.fd = h.fd
        while h.fd >= len(self.handles):
            self.handles.extend([None] * len(self.handles))
        self.handles[h.fd] = h
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, h.fd, &ev) < 0:
            self.handles[h.fd] = None
            raise OSError(errno, "epoll_ctl failed")
        return 0

    cdef void unregister(self, Handle h) noexcept:
        # close() removes the fd from the epoll set; no epoll_ctl needed
        if h.fd >= 0 and h.fd < len(self.handles):
            self.handles[h.fd] = None

    cdef void accept_from(self, Listener lst):
        cdef sockaddr_storage sa
        cdef socklen_t salen
        cdef int fd
        cdef Client c
        while lst.pending and not self.quitting:
            salen = sizeof(sa)
            fd = accept4(lst.fd, <sockaddr *>&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno == EINTR or errno == ECONNABORTED:
                    continue
                if errno != EAGAIN:
                    self.log_error("accept4() failed (%d)" % errno)
                lst.pending = False
                return
            if self.nclients >= self.max_clients and self.reuse_connections() > 0:
                pass        # idle connections were closed to make room, as nginx does
            if self.nclients >= self.max_clients:
                # worker_connections reached: refuse cleanly rather than leave the client
                # hanging in the listen queue (a best-effort write; the socket is new). A
                # TLS client could not read a plain answer: it is closed, as nginx does.
                if lst.binding.ssl:
                    close(fd)
                    log_refused(lst, &sa, 503, 0)
                else:
                    write(fd, WORKER_FULL_RESPONSE, strlen(WORKER_FULL_RESPONSE))
                    close(fd)
                    log_refused(lst, &sa, 503, strlen(WORKER_FULL_RESPONSE))
                if not self.full_logged:
                    self.full_logged = True
                    self.log_error("%d worker_connections are not enough" % self.max_clients)
                continue
            c = self.new_client()
            self.nclients += 1
            if c.setup(fd, lst, &sa) < 0:
                self.register(c)
                c.close()
                continue
            self.register(c)

    cdef int reuse_connections(self):
        """worker_connections are all taken: close the oldest connections that hold a slot
        without doing anything (nginx's "reusable" connections: idle keep-alive ones, and
        new ones that have not sent a byte, a TLS hello included), so that a new client is
        served rather than refused. Like nginx, at most max(1, min(32, reusable / 8)) at a
        time. The timer lists are in deadline order, so their heads are the oldest."""
        cdef TimerList t
        cdef Handle h, nxt
        cdef Client c
        cdef list victims = []
        cdef int budget = 4 * self.max_clients + 64      # bounded walk
        cdef int reusable = 0
        cdef int n
        for t in _all_timer_lists:
            h = t.head
            while h is not None and budget > 0:
                budget -= 1
                if h.kind == K_IDLE or (h.kind == K_CLIENT and (<Client>h).reusable()):
                    reusable += 1
                    if len(victims) < 32:
                        victims.append(h)
                h = h.tnext
        if reusable == 0:
            return 0
        n = reusable // 8
        if n > 32:
            n = 32
        if n < 1:
            n = 1
        if not self.reuse_logged:
            self.reuse_logged = True
            self.log_at("warn", "%d worker_connections are not enough, reusing connections"
                        % self.max_clients)
        for h in victims[:n]:
            if h.kind == K_IDLE:
                (<IdleConn>h).close()
                continue
            c = <Client>h
            if c.fd >= 0:
                c.close()
        return n

    cdef inline Client new_client(self):
        """A Client object for a connection: from the free list, or a new one."""
        cdef Py_ssize_t n = len(self.free_clients)
        if n:
            if n - 1 < self.free_low:
                self.free_low = n - 1
            return <Client>self.free_clients.pop()
        self.free_low = 0
        return Client.__new__(Client)

    cdef inline void recycle_client(self, Client c):
        """A Client object whose connection ended or went to rest (its buffers are back in
        the pool): kept for the next connection, up to a bound."""
        if len(self.free_clients) < FREE_CLIENTS_MAX:
            self.free_clients.append(c)

    cdef void client_closed(self, Client c):
        self.nclients -= 1
        c.release_buffers()
        buf_free(&c.wb)
        self.recycle_client(c)

    cdef void shrink_pools(self):
        """Once a second: park idle connections (idle.pyx), then let the free Clients and
        the buffer pool follow the load down. Three quarters of what stayed unused for the
        whole last second (the low mark) is freed, so a burst's leftovers go within seconds
        and a steady load keeps what it uses."""
        cdef Py_ssize_t n, drop
        cdef size_t freed = 0
        park_idle_clients()
        if g_pools_over:
            freed = <size_t>trim_upstream_pools() * <size_t>UpConn.__basicsize__
        n = len(self.free_clients)
        drop = self.free_low - self.free_low // 4
        if drop > n:
            drop = n
        if drop > 0:
            del self.free_clients[n - drop:]
        self.free_low = len(self.free_clients)
        freed += pool_shrink() + <size_t>drop * <size_t>Client.__basicsize__
        pool_trim_if_due(freed)

    cdef void on_signal(self, uint32_t signo):
        if signo == SIGQUIT:
            self.begin_quit()
        elif signo == SIGTERM or signo == SIGINT:
            self.stopping = True
        elif signo == SIGUSR1:
            for err in reopen_logs():
                self.log_error(err)
            if self.on_reopen is not None:
                self.on_reopen()

    cdef void begin_quit(self):
        """Graceful stop: no new connections; idle keep-alive connections close now, busy
        ones after their current response."""
        cdef Listener lst
        cdef Handle h
        cdef Client c
        if self.quitting:
            return
        self.quitting = True
        self.quit_deadline = g_now + self.plan.shutdown_timeout_ms
        for lst in self.listeners:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, lst.fd, NULL)
            self.handles[lst.fd] = None
            close(lst.fd)     # the master keeps its copy: queued connections are not lost
        self.listeners = []
        for h in list(self.handles):
            if h is not None and h.kind == K_CLIENT:
                c = <Client>h
                # only idle keep-alive connections close now. A connection that has not
                # sent its first request yet, or whose next request already sits in the
                # kernel buffer, is served once more (with Connection: close).
                if c.state == CS_HEAD and c.requests > 0 and buf_len(&c.rb) == 0 \
                        and not c.output_pending() and not c.input_waiting():
                    c.close()
            elif h is not None and h.kind == K_IDLE:
                # the same rule at rest: a connection whose next request is in the kernel
                # buffer stays, and its event resumes it
                if (<IdleConn>h).requests > 0 and not (<IdleConn>h).input_waiting():
                    (<IdleConn>h).close()
            elif h is not None and h.kind == K_UPSTREAM and (<UpConn>h).state == US_IDLE:
                (<UpConn>h).close()

    cdef void log_error(self, str msg):
        self.log_at("error", msg)

    cdef void log_notice(self, str msg):
        self.log_at("notice", msg)

    cdef void log_at(self, str level, str msg):
        if self.log is not None:
            try:
                self.log(level, msg)
            except Exception:
                pass

    def run(self):
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i
        cdef int64_t timeout
        cdef Handle h
        cdef list handles
        cdef Py_ssize_t fd
        while True:
            timeout = timers_next_ms(g_now)
            if self.quitting:
                if timeout < 0 or timeout > self.quit_deadline - g_now:
                    timeout = max(0, self.quit_deadline - g_now)
            if timeout > 1000 or timeout < 0:
                timeout = 1000      # wake at least once a second (date cache, quit checks)
            n = epoll_wait(self.epfd, events, MAX_EVENTS, <int>timeout)
            update_time()
            if g_shared != NULL and self.worker_index < SHM_MAX_WORKERS:
                g_shared.heartbeat_ms[self.worker_index] = g_now
            if g_now >= self.next_gauges_ms:
                self.next_gauges_ms = g_now + 1000
                self.publish_gauges()
                self.shrink_pools()
            if g_buffered_files:
                flush_due_logs()
            if n < 0:
                if errno == EINTR:
                    continue
                raise OSError(errno, "epoll_wait failed")
            handles = self.handles
            for i in range(n):
                fd = events[i].data.fd
                h = <Handle>handles[fd]     # a C-level list access: no int object made
                if h is not None:
                    h.on_events(events[i].events)
            timers_fire(g_now)
            if self.stopping:
                self.before_exit()
                return "stop"
            if self.quitting and (self.nclients == 0 or g_now >= self.quit_deadline):
                self.before_exit()
                return "quit"

    cdef void before_exit(self):
        """The worker is leaving: requests still open are logged (as nginx does when it
        closes them), and buffered log lines are written."""
        cdef Handle h
        for h in list(self.handles):
            if h is not None and h.kind == K_CLIENT:
                (<Client>h).close()
            elif h is not None and h.kind == K_IDLE:
                (<IdleConn>h).close()
        flush_logs()
        self.publish_gauges()

    cdef void publish_gauges(self):
        """edge_connections{state}: counted once a second from the client states
        (nginx's active / reading / writing / waiting)."""
        cdef Handle h
        cdef Client c
        cdef int64_t reading = 0, writing = 0, idle = 0, at_rest = 0
        cdef WorkerBlock *w
        if g_worker < 0:
            return
        for h in self.handles:
            if h is None:
                continue
            if h.kind == K_IDLE:
                idle += 1
                at_rest += 1
                continue
            if h.kind != K_CLIENT:
                continue
            c = <Client>h
            if c.state == CS_HEAD or c.state == CS_PP_HEADER:
                if c.logged and buf_len(&c.rb) == 0:
                    idle += 1
                else:
                    reading += 1
            else:
                writing += 1
        w = &g_zone.workers[g_worker]
        for u in self.plan.upstreams:
            (<Upstream>u).publish_conns()
        w.active = self.nclients
        w.reading = reading
        w.writing = writing
        w.idle = idle
        w.at_rest = at_rest
        w.pool_free_bytes = <int64_t>pool_free_bytes()

    def set_worker_generation(self, int64_t generation):
        if g_shared != NULL and self.worker_index < SHM_MAX_WORKERS:
            g_shared.worker_generation[self.worker_index] = generation

