"""The prefork master: listen sockets, workers, signals, reload.

The master never serves a request. It loads the config (a ``Cycle``), binds the listen
sockets, writes the pid file, forks the workers and then runs an asyncio (uvloop) loop
that reacts to signals and to worker deaths. That loop is also where the control plane
(admin API, metrics, Redis sync) will run, as tasks next to the reload task.

Sockets. For each ``listen`` the master binds one ``SO_REUSEPORT`` socket per worker
(``Listeners``); worker *i* of any generation gets socket *i* of each listen, so the
kernel spreads connections over the workers. The master keeps its copy of every socket
the current generation uses for as long as that listen is configured: when a worker
dies, the connections queued on its socket wait there for the respawned worker instead
of being reset.

Generations. Each config that was loaded successfully is a ``Generation``: the cycle
and one ``Slot`` per worker index (the live pid, and the crash history used for respawn
back-off). Reload (HUP) loads the new cycle, starts a new generation on the same
sockets (binding only the new addresses), then retires the old one: QUIT to its workers,
which finish their in-flight requests, and KILL for any still alive after
``worker_shutdown_timeout`` plus a margin. A failed load leaves everything as it was.

Worker deaths are watched with a pidfd per worker in the event loop rather than SIGCHLD:
uvloop reserves SIGCHLD for its own subprocess support, and waiting on our own pids
(never ``waitpid(-1)``) cannot steal the exit status of a subprocess that the control
plane starts.
"""

import asyncio
import collections
import ctypes
import gc
import os
import resource
import signal
import socket
import sys
import time
import traceback

from edge import log
from edge.config import ConfigError

try:  # optional: nicer `ps` output; edge does not depend on it
    from setproctitle import setproctitle as _setproctitle
except ImportError:
    _setproctitle = None

# Respawn policy. A dead worker is replaced after RESPAWN_DELAY; the short pause lets a
# stop signal that killed the workers and the master at once (Ctrl-C in a terminal,
# systemd's TERM to the whole cgroup) reach the master first, so it does not respawn.
RESPAWN_DELAY = 0.05
# A slot whose worker died more than CRASH_LIMIT times within CRASH_WINDOW seconds is
# crash-looping: it waits BACKOFF_FIRST seconds, doubling on every further quick death
# up to BACKOFF_MAX. A worker that stays up for CRASH_WINDOW clears the slot's record.
CRASH_WINDOW = 10.0
CRASH_LIMIT = 5
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0

# Graceful stops (QUIT, or the old generation on reload) end with KILL after
# worker_shutdown_timeout + SHUTDOWN_MARGIN; the margin covers the worker's own timer.
SHUTDOWN_MARGIN = 3.0
# Fast stop (TERM/INT): workers get TERM, and KILL after this many seconds.
FAST_STOP_GRACE = 1.5
# After KILL, give up waiting for the exit after this long (a process stuck in the
# kernel) rather than hang the shutdown.
KILL_REAP_WAIT = 5.0
# Without pidfd support (Linux < 5.3), poll the workers' pids this often.
REAP_POLL_INTERVAL = 0.2

MASTER_SIGNALS = (
    signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
    signal.SIGUSR1, signal.SIGWINCH, signal.SIGUSR2,
)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StartupError(Exception):
    """A fatal error before serving; printed as ``edge: [emerg] <text>``."""


def os_error_text(err):
    """nginx's way to show an OSError: ``(98: Address already in use)``."""
    return f"({err.errno}: {err.strerror})"


# --------------------------------------------------------------------------- pid file


class PidFileError(Exception):
    """The pid file is missing, unreadable or names no running edge."""


def write_pid_file(path, pid):
    """Write ``pid`` to ``path`` atomically: a reader sees the old file or the new one,
    never a half-written one."""
    tmp = f"{path}.{pid}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StartupError(f'open() "{path}" failed {os_error_text(e)}') from None


def remove_pid_file(path, pid):
    """Remove ``path`` if it still holds ``pid`` (a newer master may own it now)."""
    try:
        with open(path) as f:
            if f.read().strip() != str(pid):
                return
        os.unlink(path)
    except OSError:
        pass


def read_pid_file(path):
    """The pid stored in ``path``; PidFileError with an nginx-style message if none."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise PidFileError(f'open() "{path}" failed {os_error_text(e)}') from None
    text = text.strip()
    if not text.isdigit() or int(text) <= 0:
        raise PidFileError(f'invalid PID number "{text}" in "{path}"')
    return int(text)


def is_edge_process(pid):
    """True if ``pid`` is alive and looks like edge.

    A pid file left behind by a crash may name a pid that the kernel has since given to
    an unrelated process; signalling that one would be a nasty surprise. The master and
    its workers always have "edge" in their command line (``python -m edge``, the
    ``edge`` script, or the process title).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        return False                # no such process
    except PermissionError:
        return True                 # someone else's (hidepid): cannot tell, trust the file
    # An empty command line is a kernel thread or a zombie: not a master to signal.
    return b"edge" in cmdline


def running_master_pid(path):
    """The pid of the edge master named by the pid file at ``path``.

    Raises PidFileError if the file is missing or invalid, or names a process that is
    not running or is not edge (a stale pid file).
    """
    pid = read_pid_file(path)
    if not is_edge_process(pid):
        raise PidFileError(
            f'no edge process with pid {pid} (stale pid file "{path}"?)')
    return pid


def worker_pids(master_pid):
    """The pids of the children of ``master_pid``, from /proc (for ``edge status``)."""
    children = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command, which is in parentheses and may hold spaces.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == master_pid:
            children.append(int(name))
    return sorted(children)


# --------------------------------------------------------------------------- sockets


def bind_listen_socket(spec, port=None):
    """One non-blocking listening socket for ``spec`` (SO_REUSEADDR + SO_REUSEPORT)."""
    port = spec.port if port is None else port
    sock = socket.socket(spec.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if spec.family == socket.AF_INET6:
            # [::]:80 must not also take 0.0.0.0:80; a separate listen does that.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((spec.host, port))
        sock.listen(spec.backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise StartupError(f"bind() to {spec.key} failed {os_error_text(e)}") from None
    return sock


class Listeners:
    """The master's listening sockets: ``key -> [socket for worker 0, 1, ...]``."""

    def __init__(self):
        self.sockets = {}
        self.backlogs = {}

    def provide(self, cycle):
        """Make sure each listen of ``cycle`` has one socket per worker.

        Existing sockets are reused; only what is missing is bound. On a bind error the
        sockets bound by this call are closed again and StartupError is raised.
        """
        bound = []
        try:
            for spec in cycle.listens:
                have = self.sockets.get(spec.key, [])
                port = None
                if have and spec.port == 0:
                    port = have[0].getsockname()[1]
                new = []
                while len(have) + len(new) < cycle.worker_processes:
                    sock = bind_listen_socket(spec, port)
                    new.append(sock)
                    bound.append(sock)
                    # "listen :0" (tests): all the per-worker sockets share the one
                    # port the kernel chose for the first.
                    port = sock.getsockname()[1]
                self.sockets[spec.key] = have + new
        except StartupError:
            for sock in bound:
                self._forget(sock)
            raise
        for spec in cycle.listens:
            if self.backlogs.get(spec.key, spec.backlog) != spec.backlog:
                for sock in self.sockets[spec.key]:
                    sock.listen(spec.backlog)  # listen() again just resizes the queue
            self.backlogs[spec.key] = spec.backlog

    def for_worker(self, cycle, index):
        """The sockets worker ``index`` of ``cycle`` serves: ``{key: socket}``."""
        return {spec.key: self.sockets[spec.key][index] for spec in cycle.listens}

    def prune(self, cycle):
        """Close the master's copies of the sockets ``cycle`` does not use.

        Called once a generation is retired (its workers got QUIT). A retiring worker
        holds its own descriptor, so the socket lives exactly as long as that worker
        still needs it; closing the master's copy at once also takes the socket out of
        the kernel's SO_REUSEPORT group as soon as the last worker closes it, so no new
        connection is queued where nobody will accept it.
        """
        wanted = {spec.key: cycle.worker_processes for spec in cycle.listens}
        for key in list(self.sockets):
            keep = wanted.get(key, 0)
            for sock in self.sockets[key][keep:]:
                sock.close()
            if keep:
                del self.sockets[key][keep:]
            else:
                del self.sockets[key]
                self.backlogs.pop(key, None)

    def close_all(self):
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets.clear()
        self.backlogs.clear()

    def close_all_but(self, keep):
        """In a new worker: close every inherited listening socket but its own."""
        keep_ids = {id(sock) for sock in keep}
        for socks in self.sockets.values():
            for sock in socks:
                if id(sock) not in keep_ids:
                    sock.close()

    def _forget(self, sock):
        for key, socks in list(self.sockets.items()):
            if sock in socks:
                socks.remove(sock)
                if not socks:
                    del self.sockets[key]
        sock.close()


# --------------------------------------------------------------------------- workers


class Slot:
    """Worker index ``index`` of a generation: its live process, its crash record."""

    def __init__(self, index):
        self.index = index
        self.pid = None
        self.pidfd = None
        self.started = 0.0                  # monotonic time of the last fork
        self.deaths = collections.deque()   # monotonic times of recent unexpected exits
        self.backoff = 0.0                  # current respawn delay when crash-looping
        self.respawn_timer = None

    def cancel_respawn(self):
        if self.respawn_timer is not None:
            self.respawn_timer.cancel()
            self.respawn_timer = None


class Generation:
    """One loaded config and the workers running it."""

    def __init__(self, number, cycle):
        self.number = number
        self.cycle = cycle
        self.slots = [Slot(i) for i in range(cycle.worker_processes)]
        self.retiring = False   # got QUIT on reload: its workers are not respawned
        self.kill_timer = None

    def pids(self):
        return [slot.pid for slot in self.slots if slot.pid is not None]


def describe_exit(status):
    """``with code 1`` / ``on signal 9 (SIGKILL)``, as nginx words worker exits."""
    if status is None:
        return "(exit status lost)"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"on signal {sig} ({name}){core}"
    return f"with code {os.waitstatus_to_exitcode(status)}"


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


class Master:
    """The running master: generations of workers, signal handling, reload."""

    def __init__(self, cycle, listeners, worker_module):
        self.cycle = cycle                # the config now in force
        self.listeners = listeners
        self.worker_module = worker_module
        self.pid = os.getpid()
        self.pid_path = cycle.pid_path
        self.generations = []             # the current one last; older ones retiring
        self.current = None
        self.by_pid = {}                  # pid -> (generation, slot)
        self.stopping = None              # None, "graceful" or "fast"
        self.loop = None
        self._generation_counter = 0
        self._reload_wanted = None
        self._done = None
        self._stop_timer = None
        self._poll_timer = None
        self._prctl = _libc_prctl()

    # ----------------------------------------------------------------- main loop

    async def main(self):
        """Run until stopped; returns when every worker has exited."""
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self._on_loop_error)
        self._done = self.loop.create_future()
        self._reload_wanted = asyncio.Event()
        for sig in MASTER_SIGNALS:
            self.loop.add_signal_handler(sig, self._on_signal, sig)
        # run() blocked these while it bound sockets and wrote the pid file; one that
        # arrived meanwhile is delivered now, to the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)

        self.current = self._start_generation(self.cycle)
        # The control plane (admin API, metrics, Redis sync) will be more tasks here.
        tasks = [asyncio.create_task(self._reload_loop(), name="edge-reload")]
        try:
            await self._done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sig in MASTER_SIGNALS:
                self.loop.remove_signal_handler(sig)

    def _on_loop_error(self, loop, context):
        # A bug in a callback must not take the master down; say it loudly instead.
        exc = context.get("exception")
        detail = "".join(traceback.format_exception(exc)) if exc else ""
        log.error("alert", f"{context.get('message', 'unexpected error')} {detail}".strip())

    def _on_signal(self, signum):
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if self.stopping:
                log.error("notice", f"signal {signum} ({name}) received while stopping, ignored")
                return
            log.error("notice", f"signal {signum} ({name}) received, reconfiguring")
            self._reload_wanted.set()
        elif signum == signal.SIGQUIT:
            log.error("notice", f"signal {signum} ({name}) received, shutting down gracefully")
            self.stop("graceful")
        elif signum in (signal.SIGTERM, signal.SIGINT):
            log.error("notice", f"signal {signum} ({name}) received, exiting")
            self.stop("fast")
        elif signum == signal.SIGUSR1:
            log.error("notice", f"signal {signum} ({name}) received, reopening logs")
            self.reopen_logs()
        else:
            # WINCH, USR2: the binary upgrade, not built yet. Note for that work: a
            # terminal sends WINCH to its foreground group on every resize, so (as
            # nginx does) WINCH may only mean "stop the workers" when not on a tty.
            log.error("notice", f"signal {signum} ({name}) received, ignored "
                                "(binary upgrade is not supported yet)")

    # ----------------------------------------------------------------- workers

    def _start_generation(self, cycle):
        self._generation_counter += 1
        gen = Generation(self._generation_counter, cycle)
        self.generations.append(gen)
        log.error("notice", "start worker processes")
        for slot in gen.slots:
            self._spawn(gen, slot)
        return gen

    def _spawn(self, gen, slot):
        """Fork the worker for ``slot``; the child never returns from here."""
        sys.stdout.flush()
        sys.stderr.flush()
        # Block the master's signals across fork(): a signal landing in the child
        # before it has reset its handlers would otherwise run the master's handler
        # there, and write to the master's signal wake-up socket.
        saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        # Move the master's objects out of the collector's reach, so the workers'
        # collections do not write to (and so copy) the pages they share with it.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as e:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            log.error("alert", f"fork() failed {os_error_text(e)}")
            self._schedule_respawn(gen, slot)
            return
        if pid == 0:
            self._become_worker(gen, slot.index, saved_mask)  # does not return
        gc.unfreeze()
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)

        slot.pid = pid
        slot.started = time.monotonic()
        self.by_pid[pid] = (gen, slot)
        self._watch(slot)
        log.error("notice", f"start worker process {pid}")

    def _become_worker(self, gen, index, saved_mask):
        """In the forked child: become worker ``index`` of ``gen``. Never returns."""
        code = 2
        try:
            # Detach from the master's event loop and signal handling.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Master-only signals: a stray one (a HUP to the process group) must not
            # kill a worker.
            for sig in (signal.SIGHUP, signal.SIGWINCH, signal.SIGUSR2):
                signal.signal(sig, signal.SIG_IGN)
            # The master forwards USR1 after reopening its own logs. The worker may
            # install its own handler; this default keeps edge.log's file current.
            signal.signal(signal.SIGUSR1, _reopen_log_on_signal)
            asyncio.events._set_running_loop(None)
            asyncio.set_event_loop(None)

            own = self.listeners.for_worker(gen.cycle, index)
            self.listeners.close_all_but(own.values())
            for other in self.by_pid.values():
                if other[1].pidfd is not None:
                    os.close(other[1].pidfd)
            self._die_with_master()
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            set_process_title("edge: worker process")

            self.worker_module.run(gen.cycle, own, index)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            log.error("alert", "worker process failed: " + traceback.format_exc().rstrip())
        finally:
            os._exit(code)

    def _die_with_master(self):
        """Ask the kernel to TERM this worker if the master dies (even by SIGKILL), so
        no orphaned worker keeps serving a stale config or holding the ports."""
        if self._prctl is None:
            return
        self._prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != self.pid:  # the master died before prctl() took effect
            os._exit(1)

    def _watch(self, slot):
        """Get told when ``slot``'s worker exits: its pidfd turns readable."""
        try:
            slot.pidfd = os.pidfd_open(slot.pid)
        except (OSError, AttributeError):
            slot.pidfd = None
            if self._poll_timer is None:
                self._poll_timer = self.loop.call_later(REAP_POLL_INTERVAL, self._poll)
            return
        self.loop.add_reader(slot.pidfd, self._reap)

    def _poll(self):
        self._poll_timer = None
        self._reap()
        if self.by_pid:
            self._poll_timer = self.loop.call_later(REAP_POLL_INTERVAL, self._poll)

    def _reap(self):
        """Collect every worker that has exited (waitpid WNOHANG on our own pids)."""
        for pid in list(self.by_pid):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, None  # reaped elsewhere; it is gone all the same
            if done:
                self._on_worker_exit(pid, status)

    def _on_worker_exit(self, pid, status):
        gen, slot = self.by_pid.pop(pid)
        if slot.pidfd is not None:
            self.loop.remove_reader(slot.pidfd)
            os.close(slot.pidfd)
            slot.pidfd = None
        slot.pid = None

        expected = gen.retiring or self.stopping is not None
        clean = status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        level = "notice" if clean else "alert"
        log.error(level, f"worker process {pid} exited {describe_exit(status)}")

        if not expected:
            self._schedule_respawn(gen, slot)
        elif gen.retiring and not gen.pids():
            self._generation_done(gen)
        if self.stopping and not self.by_pid:
            self._finish_stop()

    def _schedule_respawn(self, gen, slot):
        now = time.monotonic()
        if slot.started and now - slot.started >= CRASH_WINDOW:
            slot.deaths.clear()  # it had been running fine: not a crash loop
            slot.backoff = 0.0
        slot.deaths.append(now)
        while now - slot.deaths[0] > CRASH_WINDOW:
            slot.deaths.popleft()

        delay = RESPAWN_DELAY
        if slot.backoff or len(slot.deaths) > CRASH_LIMIT:
            slot.backoff = min(BACKOFF_MAX, slot.backoff * 2 or BACKOFF_FIRST)
            delay = slot.backoff
            log.error("alert", f"worker process #{slot.index} exited {len(slot.deaths)} "
                               f"times in {CRASH_WINDOW:g}s, respawning it in {delay:g}s")
        slot.respawn_timer = self.loop.call_later(delay, self._respawn, gen, slot)

    def _respawn(self, gen, slot):
        slot.respawn_timer = None
        if self.stopping or gen.retiring or slot.pid is not None:
            return
        self._spawn(gen, slot)

    def _signal_workers(self, pids, sig):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # exited; the reaper will hear of it

    # ----------------------------------------------------------------- reload

    async def _reload_loop(self):
        """Apply reload requests one at a time. HUPs that arrive during a reload are
        folded into one more reload, so a burst always ends on the latest config."""
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            if self.stopping:
                return
            try:
                self.reload()
            except Exception:
                # A bug here must not end the task: later HUPs would then do nothing.
                log.error("alert", "reload failed: " + traceback.format_exc().rstrip())

    def reload(self):
        """Load the config again and switch to it; on any failure keep the old one."""
        try:
            cycle = load_cycle(self.cycle.path)
        except ConfigError as e:
            log.error("emerg", str(e))
            return False
        except Exception:
            log.error("alert", "reload failed: " + traceback.format_exc().rstrip())
            return False

        try:
            self.listeners.provide(cycle)
            if cycle.pid_path and cycle.pid_path != self.pid_path:
                write_pid_file(cycle.pid_path, self.pid)
        except StartupError as e:
            log.error("emerg", str(e))
            self.listeners.prune(self.cycle)  # drop what was bound for the new cycle
            return False

        if cycle.error_log != self.cycle.error_log:
            try:
                log.open_error_log(*cycle.error_log)
            except OSError as e:
                # The log is not worth refusing the new config for; keep the old one.
                log.error("alert", f'open() "{cycle.error_log[0]}" failed '
                                   f'{os_error_text(e)}, still logging to "{log.target()}"')
        if self.pid_path and self.pid_path != cycle.pid_path:
            remove_pid_file(self.pid_path, self.pid)
        self.pid_path = cycle.pid_path

        old = self.current
        self.cycle = cycle
        self.current = self._start_generation(cycle)
        self.retire(old)
        self.listeners.prune(cycle)
        log.error("notice", f"configuration generation {self.current.number} is in force")
        return True

    def retire(self, gen):
        """Stop ``gen`` gracefully: QUIT now, KILL after its shutdown timeout."""
        gen.retiring = True
        for slot in gen.slots:
            slot.cancel_respawn()
        pids = gen.pids()
        if not pids:
            self._generation_done(gen)
            return
        self._signal_workers(pids, signal.SIGQUIT)
        timeout = gen.cycle.worker_shutdown_timeout
        if timeout is not None:
            gen.kill_timer = self.loop.call_later(
                timeout + SHUTDOWN_MARGIN, self._kill_generation, gen)

    def _kill_generation(self, gen):
        gen.kill_timer = None
        for pid in gen.pids():
            log.error("alert", f"worker process {pid} is still running after "
                               f"worker_shutdown_timeout, killing it")
        self._signal_workers(gen.pids(), signal.SIGKILL)

    def _generation_done(self, gen):
        if gen.kill_timer is not None:
            gen.kill_timer.cancel()
            gen.kill_timer = None
        if gen in self.generations:
            self.generations.remove(gen)
        log.error("notice", f"configuration generation {gen.number} has exited")

    # ----------------------------------------------------------------- logs

    def reopen_logs(self):
        try:
            log.reopen()
        except OSError as e:
            log.error("alert", f'reopen of "{log.target()}" failed {os_error_text(e)}')
        self._signal_workers(list(self.by_pid), signal.SIGUSR1)

    # ----------------------------------------------------------------- stop

    def stop(self, mode):
        """Stop everything: ``"graceful"`` (QUIT) or ``"fast"`` (TERM, INT).

        A fast stop may overtake a graceful one that is under way, not the reverse.
        """
        if self.stopping == "fast" or self.stopping == mode:
            return
        self.stopping = mode
        self._reload_wanted.set()  # let the reload task see the stop and end
        for gen in self.generations:
            for slot in gen.slots:
                slot.cancel_respawn()
            if gen.kill_timer is not None:
                gen.kill_timer.cancel()
                gen.kill_timer = None
        if self._stop_timer is not None:
            self._stop_timer.cancel()

        if mode == "graceful":
            pids = [pid for gen in self.generations if not gen.retiring for pid in gen.pids()]
            self._signal_workers(pids, signal.SIGQUIT)
            timeouts = [gen.cycle.worker_shutdown_timeout for gen in self.generations]
            limit = None if None in timeouts else max(timeouts, default=0) + SHUTDOWN_MARGIN
        else:
            self._signal_workers(list(self.by_pid), signal.SIGTERM)
            limit = FAST_STOP_GRACE
        # The workers hold their own copies; see Listeners.prune for why the master
        # lets go of its copies now rather than when the last worker has gone.
        self.listeners.close_all()

        if not self.by_pid:
            self._finish_stop()
        elif limit is not None:
            self._stop_timer = self.loop.call_later(limit, self._kill_all)

    def _kill_all(self):
        for pid in self.by_pid:
            log.error("alert", f"worker process {pid} did not exit in time, killing it")
        self._signal_workers(list(self.by_pid), signal.SIGKILL)
        self._stop_timer = self.loop.call_later(KILL_REAP_WAIT, self._give_up_waiting)

    def _give_up_waiting(self):
        log.error("alert", "worker processes " + ", ".join(map(str, self.by_pid))
                  + " do not exit even after SIGKILL, exiting without them")
        self._finish_stop()

    def _finish_stop(self):
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        if not self._done.done():
            self._done.set_result(None)


def _reopen_log_on_signal(signum, frame):
    try:
        log.reopen()
    except OSError:
        pass


def set_process_title(title):
    if _setproctitle is not None:
        _setproctitle(title)


def raise_nofile_limit():
    """Raise the soft limit on open files to the hard limit: every connection is a
    descriptor, and workers inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if hard == resource.RLIM_INFINITY:
        # The kernel refuses an infinite soft limit for files; its ceiling is nr_open.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = int(f.read())
        except (OSError, ValueError):
            want = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.error("warn", f"setrlimit(RLIMIT_NOFILE, {want}) failed: {e}")


def load_cycle(path):
    """``edge.cycle.load``, imported on first use so that this module stays light for
    the command line (pid file helpers, version)."""
    import edge.cycle
    return edge.cycle.load(path)


def check_not_running(pid_path):
    """Refuse to start a second master on the same pid file: with SO_REUSEPORT the two
    would silently share the ports."""
    if not pid_path:
        return
    try:
        pid = running_master_pid(pid_path)
    except PidFileError:
        return  # no pid file, or a stale one: nobody is running
    if pid != os.getpid():
        raise StartupError(f'edge is already running with pid {pid} '
                           f'(pid file "{pid_path}")')


def run(config_path):
    """Run the master in the foreground for the config at ``config_path``.

    Returns the process exit status: 0 after a stop, 1 if it could not start.
    """
    try:
        cycle = load_cycle(config_path)
    except ConfigError as e:
        log.console("emerg", str(e))
        return 1

    target, level = cycle.error_log
    try:
        log.open_error_log(target, level)
    except OSError as e:
        log.console("emerg", f'open() "{target}" failed {os_error_text(e)}')
        return 1

    # Imported here, not at the top: `edge -t` and `edge -s` need neither.
    import uvloop
    import edge.worker

    # From here on a stop signal must not kill the master half-way (leaving a pid file
    # behind): hold the signals until the event loop's handlers are installed.
    signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
    raise_nofile_limit()
    listeners = Listeners()
    pid = os.getpid()
    pid_written = None
    try:
        check_not_running(cycle.pid_path)
        listeners.provide(cycle)
        if cycle.pid_path:
            write_pid_file(cycle.pid_path, pid)
            pid_written = cycle.pid_path
    except StartupError as e:
        log.report("emerg", str(e))
        listeners.close_all()
        return 1

    set_process_title("edge: master process " + " ".join(sys.argv))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.error("notice", f"edge/{version()} master process {pid} starting")
    log.error("notice", f"getrlimit(RLIMIT_NOFILE): {soft}:{hard}")

    master = Master(cycle, listeners, edge.worker)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(master.main())
    finally:
        listeners.close_all()
        for path in {pid_written, master.pid_path} - {None}:
            remove_pid_file(path, pid)
        asyncio.set_event_loop(None)
        loop.close()
        log.error("notice", "exit")
    return 0


def version():
    """edge's version: the package's ``__version__``, else the installed metadata."""
    import edge
    v = getattr(edge, "__version__", None)
    if v:
        return v
    try:
        from importlib.metadata import version as dist_version
        return dist_version("edge")
    except Exception:
        return "unknown"
