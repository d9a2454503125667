# Shared state between the master, the workers and the `edge` command: a small
# file-backed mmap. The master creates it before forking; workers inherit the mapping;
# `edge drain` opens the same file to flip the drain flag. Plain aligned 64-bit words:
# each has one writer (the master, the CLI, or one worker for its own heartbeat), and
# readers tolerate a value one update old, so no locks are needed.

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
    void *MAP_FAILED

DEF SHM_MAGIC = 0x65646765_73746174     # "edgestat"
DEF SHM_MAX_WORKERS = 256

cdef struct SharedBlock:
    uint64_t magic
    int64_t draining            # written by `edge drain` / `edge undrain`
    int64_t config_failed       # the last reload failed to apply (master)
    int64_t generation          # config generation the master serves (master)
    int64_t workers_expected    # master
    int64_t workers_up          # master: workers alive and serving the current generation
    int64_t master_pid
    int64_t reloads_ok          # master: reloads that applied (Prometheus counter)
    int64_t reloads_failed      # master: reloads refused or failed
    int64_t worker_restarts     # master: workers respawned after an unexpected exit
    int64_t control_pid         # master: the live control process, 0 while there is none
    int64_t started_ms          # master: wall-clock ms when it started (uptime)
    char version[32]            # master: its edge version, NUL-terminated (was reserved,
                                # zeros: a master older than the field reads as "")
    int64_t heartbeat_ms[SHM_MAX_WORKERS]    # worker i: last loop iteration (monotonic ms)
    int64_t worker_generation[SHM_MAX_WORKERS]
    int64_t worker_pid[SHM_MAX_WORKERS]      # master: worker i's pid, 0 when it has none


cdef SharedBlock *g_shared = NULL


cdef class SharedState:
    """The shared block. SharedState.create(path) in the master, .open(path) elsewhere."""
    cdef SharedBlock *block
    cdef readonly str path

    @staticmethod
    def create(str path):
        """A fresh block for a starting master. The drain flag survives from a previous
        run: the maintenance flow is drain, stop, maintain, start, undrain, and the node
        must not turn ready on its own in between."""
        import os
        cdef SharedState st = SharedState.__new__(SharedState)
        cdef int64_t draining = 0
        cdef SharedState old
        try:
            old = SharedState.open(path)
            draining = old.block.draining
            old.close()
        except (OSError, ValueError):
            pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, sizeof(SharedBlock))
            st._map(fd)
        finally:
            os.close(fd)
        memset(st.block, 0, sizeof(SharedBlock))
        st.block.draining = draining
        st.block.magic = SHM_MAGIC
        st.block.master_pid = os.getpid()
        import time
        st.block.started_ms = int(time.time() * 1000)
        st.path = path
        return st

    @staticmethod
    def open(str path):
        import os
        cdef SharedState st = SharedState.__new__(SharedState)
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < <long>sizeof(SharedBlock):
                raise ValueError("%s is not an edge state file" % path)
            st._map(fd)
        finally:
            os.close(fd)
        if st.block.magic != SHM_MAGIC:
            raise ValueError("%s is not an edge state file" % path)
        st.path = path
        return st

    cdef _map(self, int fd):
        cdef void *p = mmap(NULL, sizeof(SharedBlock), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, "mmap failed")
        self.block = <SharedBlock *>p

    def use_in_worker(self):
        """Make this the block the reactor reads (health, heartbeats)."""
        global g_shared
        g_shared = self.block

    def close(self):
        global g_shared
        if self.block != NULL:
            if g_shared == self.block:
                g_shared = NULL
            munmap(self.block, sizeof(SharedBlock))
            self.block = NULL

    property draining:
        def __get__(self): return bool(self.block.draining)
        def __set__(self, value): self.block.draining = 1 if value else 0

    property config_failed:
        def __get__(self): return bool(self.block.config_failed)
        def __set__(self, value): self.block.config_failed = 1 if value else 0

    property generation:
        def __get__(self): return self.block.generation
        def __set__(self, int64_t value): self.block.generation = value

    property workers_expected:
        def __get__(self): return self.block.workers_expected
        def __set__(self, int64_t value): self.block.workers_expected = value

    property workers_up:
        def __get__(self): return self.block.workers_up
        def __set__(self, int64_t value): self.block.workers_up = value

    property master_pid:
        def __get__(self): return self.block.master_pid

    property started_ms:
        def __get__(self): return self.block.started_ms

    property version:
        """The master's edge version (``edge status``, ``edge -s upgrade``)."""
        def __get__(self):
            cdef bytes raw = (<char *>self.block.version)[:sizeof(self.block.version)]
            return raw.split(b"\0", 1)[0].decode("ascii", "replace")
        def __set__(self, str value):
            cdef bytes raw = value.encode("ascii", "replace")[:sizeof(self.block.version) - 1]
            memset(self.block.version, 0, sizeof(self.block.version))
            memcpy(self.block.version, <char *>raw, len(raw))

    # Master counters, exported by the control process's /metrics.
    property reloads_ok:
        def __get__(self): return self.block.reloads_ok
        def __set__(self, int64_t value): self.block.reloads_ok = value

    property reloads_failed:
        def __get__(self): return self.block.reloads_failed
        def __set__(self, int64_t value): self.block.reloads_failed = value

    property worker_restarts:
        def __get__(self): return self.block.worker_restarts
        def __set__(self, int64_t value): self.block.worker_restarts = value

    property control_pid:
        def __get__(self): return self.block.control_pid
        def __set__(self, int64_t value): self.block.control_pid = value

    def worker_pid(self, int index):
        """The pid of worker `index` (0: none), written by the master at fork."""
        if not 0 <= index < SHM_MAX_WORKERS:
            raise IndexError(index)
        return self.block.worker_pid[index]

    def set_worker_pid(self, int index, int64_t pid):
        if not 0 <= index < SHM_MAX_WORKERS:
            raise IndexError(index)
        self.block.worker_pid[index] = pid

    def heartbeat(self, int index):
        """Monotonic ms of worker `index`'s last loop iteration (0: never)."""
        if not 0 <= index < SHM_MAX_WORKERS:
            raise IndexError(index)
        return self.block.heartbeat_ms[index]

    def worker_generation(self, int index):
        if not 0 <= index < SHM_MAX_WORKERS:
            raise IndexError(index)
        return self.block.worker_generation[index]

    def ready(self):
        """Readiness as the data plane answers it: (ok, reason)."""
        return readiness(self.block)


cdef tuple readiness(SharedBlock *b):
    if b == NULL:
        return (True, "ok")
    if b.draining:
        return (False, "draining")
    if b.config_failed:
        return (False, "config failed")
    if b.workers_up < b.workers_expected:
        return (False, "starting")
    return (True, "ok")


cdef inline int readiness_code(SharedBlock *b) noexcept nogil:
    """0 ready, 1 draining, 2 config failed, 3 workers not all up."""
    if b == NULL:
        return 0
    if b.draining:
        return 1
    if b.config_failed:
        return 2
    if b.workers_up < b.workers_expected:
        return 3
    return 0
