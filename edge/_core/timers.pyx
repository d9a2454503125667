# Timers: one FIFO list per distinct timeout duration ("timeout class"). Every handle in a
# list was armed with the same duration, so appending at the tail keeps the list sorted by
# deadline: arming, re-arming and firing are O(1) and need no heap. The loop sleeps until
# the earliest head.

cdef class Handle:
    """Anything registered with epoll: listener, client, upstream connection, signalfd."""
    cdef int fd
    cdef int kind
    cdef TimerList tlist
    cdef Handle tprev
    cdef Handle tnext
    cdef int64_t deadline

    cdef void on_events(self, uint32_t events):
        pass

    cdef void on_timeout(self):
        pass


cdef class TimerList:
    cdef readonly int64_t duration_ms
    cdef Handle head
    cdef Handle tail


cdef dict _timer_lists = {}
cdef list _all_timer_lists = []


cdef TimerList timer_list(int64_t duration_ms):
    """The shared list for one duration; created on first use (config time)."""
    cdef TimerList t = _timer_lists.get(duration_ms)
    if t is None:
        t = TimerList()
        t.duration_ms = duration_ms
        _timer_lists[duration_ms] = t
        _all_timer_lists.append(t)
    return t


cdef inline void timer_unlink(Handle h) noexcept:
    cdef TimerList t = h.tlist
    if t is None:
        return
    if h.tprev is not None:
        h.tprev.tnext = h.tnext
    else:
        t.head = h.tnext
    if h.tnext is not None:
        h.tnext.tprev = h.tprev
    else:
        t.tail = h.tprev
    h.tprev = None
    h.tnext = None
    h.tlist = None


cdef inline void timer_arm(Handle h, TimerList t, int64_t now) noexcept:
    """(Re)start h's timer in class t. Re-arming in the same millisecond is skipped."""
    cdef int64_t deadline = now + t.duration_ms
    if h.tlist is t:
        if h.deadline == deadline:
            return
        if h.tnext is None:         # already last: just move the deadline
            h.deadline = deadline
            return
    timer_unlink(h)
    h.deadline = deadline
    h.tlist = t
    h.tprev = t.tail
    h.tnext = None
    if t.tail is not None:
        t.tail.tnext = h
    else:
        t.head = h
    t.tail = h


cdef inline void timer_stop(Handle h) noexcept:
    timer_unlink(h)


cdef int64_t timers_next_ms(int64_t now) noexcept:
    """Milliseconds until the earliest deadline, or -1 when no timer is armed."""
    cdef int64_t best = -1
    cdef int64_t d
    cdef TimerList t
    for t in _all_timer_lists:
        if t.head is not None:
            d = t.head.deadline - now
            if d < 0:
                d = 0
            if best < 0 or d < best:
                best = d
    return best


cdef void timers_fire(int64_t now):
    cdef TimerList t
    cdef Handle h
    for t in _all_timer_lists:
        while t.head is not None and t.head.deadline <= now:
            h = t.head
            timer_unlink(h)
            h.on_timeout()


cdef TimerList sorted_timer_list():
    """A list whose handles have deadlines of their own (request delays): kept in
    deadline order by timer_arm_at."""
    cdef TimerList t = TimerList()
    t.duration_ms = -1
    _all_timer_lists.append(t)
    return t


cdef void timer_arm_at(Handle h, TimerList t, int64_t deadline) noexcept:
    """Arm h for `deadline` in a sorted list, searching from the tail: the delays of one
    key grow with each request, so the place is nearly always at the end."""
    cdef Handle after
    timer_unlink(h)
    h.deadline = deadline
    h.tlist = t
    after = t.tail
    while after is not None and after.deadline > deadline:
        after = after.tprev
    h.tprev = after
    if after is None:
        h.tnext = t.head
        t.head = h
    else:
        h.tnext = after.tnext
        after.tnext = h
    if h.tnext is not None:
        h.tnext.tprev = h
    else:
        t.tail = h
