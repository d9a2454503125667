"""The prefork master: listen sockets, workers, signals, reload, binary upgrade.

The master never serves a request. It loads the config (a ``Cycle``), binds the listen
sockets, writes the pid file, creates the shared state block, forks the workers and
then runs an asyncio (uvloop) loop that reacts to signals, to worker deaths and to the
workers' control messages. The control plane (admin API, metrics, log shipping) does
not run here but in the control process (below), so nothing slow can delay a respawn,
a reload or a signal.

Sockets. For each ``listen`` the master binds one ``SO_REUSEPORT`` socket per worker
(``Listeners``); worker *i* of any generation gets socket *i* of each listen, so the
kernel spreads connections over the workers. The master keeps its copy of every socket
the current generation uses for as long as that listen is configured: when a worker
dies, the connections queued on its socket wait there for the respawned worker instead
of being reset.

Generations. A ``Generation`` is a set of workers and the config (cycle) they run, with
one ``Slot`` per worker index (the live pid, its control socket, and the crash history
used for respawn back-off). Reload (HUP) loads and validates the new config; a failure
leaves everything as it was, logs the error with its file:line and marks the node not
ready ("config failed"). If the listeners (and worker count, and error log) are
unchanged, the config is sent down each worker's control socket and swapped in place:
same pids, no connection touched. Otherwise a new generation starts on the same sockets
(binding only the new addresses), and once it serves the old one is retired: QUIT to
its workers, which finish their in-flight requests, and KILL for any still alive after
``worker_shutdown_timeout`` plus a margin. Reloads run one at a time; HUPs that arrive
meanwhile fold into one more reload, so a burst ends on the last config.

Binary upgrade (USR2), as nginx does it: the pid file becomes ``<pid>.oldbin``, and a
forked child execs edge again (``new_binary_argv``: a stable entry point such as
``/usr/bin/edge``, never the running interpreter alone) with the listening sockets
inherited (their descriptors are listed in ``EDGE_INHERITED_SOCKETS``). The new master adopts them and
its workers accept alongside ours. WINCH then stops our workers (not respawned), QUIT
ends this master. Rollback: HUP brings our workers back, and when the new master exits
(QUIT or TERM to it, or a failed start) we take the pid file back.

Readiness. The shared block (``SharedState``) carries what the data plane's
``health ready`` answers from: the generation in force, workers expected and up,
``config_failed`` and the drain flag (written by ``edge drain``). It lives in the file
``<pid file>.state``. systemd hears READY/RELOADING/STOPPING/MAINPID (``edge.sd_notify``).

The control process (edge.control.process) is one more child, forked and supervised
like a worker but not counted as one: its own control channel and pidfd, respawned
with the same back-off, QUIT on a graceful stop and TERM on a fast one, told of every
successful reload (a failure there never fails the reload), USR1 passed on. It runs
the control plane (admin listener, /metrics, log shipping) on its own event loop, so
nothing slow ever runs in the master. On a binary upgrade the new master starts its
own; WINCH stops ours with our workers, and a rollback starts it again. If it dies,
serving goes on: the workers never talk to it.

Worker deaths are watched with a pidfd per worker in the event loop rather than SIGCHLD:
uvloop reserves SIGCHLD for its own subprocess support, and waiting on our own pids
(never ``waitpid(-1)``) cannot steal the exit status of a subprocess that the control
plane starts.
"""

import asyncio
import collections
import ctypes
import dataclasses
import gc
import glob
import os
import resource
import signal
import socket
import sys
import tempfile
import time
import traceback

from edge import log, sd_notify
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

# A worker has this long to answer an in-place reload before it is replaced.
RELOAD_ACK_TIMEOUT = 5.0
# How long a reload that starts new workers waits for them before retiring the old.
NEW_GENERATION_UP_TIMEOUT = 5.0
# How often the master looks at the shared block for a new worker's first signs of life.
UP_POLL_INTERVAL = 0.01

# The state block holds per-worker slots for this many workers (edge/_core/shm.pyx).
SHM_MAX_WORKERS = 256

# Binary upgrade: the environment a new master is exec'd with.
#   EDGE_INHERITED_SOCKETS="127.0.0.1:8080=5,6;[::1]:8080=7,8"  listen key = fds, per worker
#   EDGE_UPGRADE_FROM=<old master pid>
#   EDGE_DRAINING=1      the old master was draining: the new one starts draining
INHERIT_ENV = "EDGE_INHERITED_SOCKETS"
UPGRADE_FROM_ENV = "EDGE_UPGRADE_FROM"
DRAINING_ENV = "EDGE_DRAINING"

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


# The program a binary upgrade execs, when set: wins over the `edge_binary` directive.
BINARY_ENV = "EDGE_BINARY"


def new_binary_argv(exec_argv, exec_args, cycle):
    """The command line a binary upgrade execs (argv[0] is what is exec'd).

    Never simply ``sys.executable``: a release installed in its own venv behind a stable
    path (``/usr/bin/edge`` -> ``/opt/edge/current/bin/edge``) would start the old
    release's interpreter and code again. In order: ``EDGE_BINARY`` from the master's
    environment, the ``edge_binary`` directive (each exec'd with edge's own arguments),
    else ``exec_argv`` as the command line worked it out (``edge.cli.exec_argv``: the
    invoked script when it lies outside the running venv), else ``python -m edge``.
    """
    binary = os.environ.get(BINARY_ENV)
    if binary and not os.path.isabs(binary):
        log.error("alert", f'{BINARY_ENV}="{binary}" ignored: not an absolute path')
        binary = None
    binary = binary or getattr(cycle, "edge_binary", None)
    if binary:
        return [binary] + list(exec_args if exec_args is not None else ["-c", cycle.path])
    return list(exec_argv or [sys.executable, "-m", "edge", "-c", cycle.path])


def state_path_for(pid_path):
    """The shared state file that goes with a pid file (``edge drain`` finds it so)."""
    return f"{pid_path}.state"


# The control process names itself so (prctl PR_SET_NAME, /proc/PID/comm), whether or
# not setproctitle is installed: `edge status`, `edge -s upgrade` and the tests tell it
# from the workers by this name.
CONTROL_COMM = "edge-control"


def is_control_process(pid):
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip() == CONTROL_COMM.encode()
    except OSError:
        return False


def worker_pids(master_pid):
    """The pids of the worker processes of ``master_pid``, from /proc (for ``edge
    status``): its children but the control process."""
    return [pid for pid in child_pids(master_pid) if not is_control_process(pid)]


def control_pids(master_pid):
    """The control process of ``master_pid`` (a list: empty while it is respawned)."""
    return [pid for pid in child_pids(master_pid) if is_control_process(pid)]


def child_pids(master_pid):
    """The pids of the children of ``master_pid``, from /proc."""
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

    def adopt(self, inherited):
        """Take over sockets inherited from an old master: ``{key: [socket, ...]}``."""
        for key, socks in inherited.items():
            self.sockets[key] = list(socks)

    def describe(self):
        """The ``EDGE_INHERITED_SOCKETS`` value for a new master: ``key=fd,fd;...``."""
        return ";".join(f"{key}=" + ",".join(str(s.fileno()) for s in socks)
                        for key, socks in self.sockets.items() if socks)

    def for_worker(self, cycle, index):
        """The sockets worker ``index`` of ``cycle`` serves: ``{key: [socket, ...]}``.
        Socket j goes to worker j mod worker_processes, so after a reload that lowered
        the worker count the extra sockets (kept: closing one would reset what is queued
        on it) are still served."""
        n = cycle.worker_processes
        return {spec.key: [sock for j, sock in enumerate(self.sockets[spec.key]) if j % n == index]
                for spec in cycle.listens}

    def counts(self):
        return {key: len(socks) for key, socks in self.sockets.items()}

    def trim(self, counts):
        """Undo a provide() whose reload failed: close what it bound beyond ``counts``."""
        for key in list(self.sockets):
            keep = counts.get(key, 0)
            for sock in self.sockets[key][keep:]:
                sock.close()
            if keep:
                del self.sockets[key][keep:]
            else:
                del self.sockets[key]
                self.backlogs.pop(key, None)

    def drop_unused(self, cycle):
        """Close sockets for addresses ``cycle`` does not listen on (inherited ones the
        new config dropped); an address it keeps keeps all its sockets."""
        wanted = {spec.key for spec in cycle.listens}
        for key in list(self.sockets):
            if key not in wanted:
                for sock in self.sockets.pop(key):
                    sock.close()
                self.backlogs.pop(key, None)

    def prune(self, cycle):
        """Close the master's copies of the sockets of addresses ``cycle`` no longer
        listens on.

        Called once a generation is retired (its workers got QUIT). A retiring worker
        holds its own descriptor, so the socket lives exactly as long as that worker
        still needs it; closing the master's copy at once also takes the socket out of
        the kernel's SO_REUSEPORT group as soon as the last worker closes it, so no new
        connection is queued where nobody will accept it. An address that stays keeps
        every socket, also beyond worker_processes after a decrease: a serving listen
        socket is never closed (its queue would be reset); ``for_worker`` shares the
        extra ones out.
        """
        self.drop_unused(cycle)

    def close_all(self):
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets.clear()
        self.backlogs.clear()

    def close_all_but(self, keep):
        """In a new worker: close every inherited listening socket but its own
        (``keep``: lists of sockets)."""
        keep_ids = {id(sock) for socks in keep for sock in socks}
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




def parse_inherited(value):
    """Sockets named by ``EDGE_INHERITED_SOCKETS``: ``{key: [socket, ...]}``.

    Anything that is not a listening TCP socket is skipped with a warning, so a mangled
    variable makes the new master bind afresh rather than serve on a stray descriptor.
    """
    inherited = {}
    for part in filter(None, value.split(";")):
        key, sep, fds = part.rpartition("=")
        if not sep or not key:
            log.error("warn", f"{INHERIT_ENV}: ignoring {part!r}")
            continue
        socks = []
        for text in fds.split(","):
            try:
                fd = int(text)
                sock = socket.socket(fileno=fd)
            except (ValueError, OSError) as e:
                log.error("warn", f"{INHERIT_ENV}: ignoring {key}={text} ({e})")
                continue
            if (sock.type != socket.SOCK_STREAM
                    or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                log.error("warn", f"{INHERIT_ENV}: fd {fd} is not a listening socket")
                sock.detach()
                continue
            sock.set_inheritable(False)  # we exec nothing else that should get it
            sock.setblocking(False)
            socks.append(sock)
        if socks:
            inherited[key] = socks
    return inherited


# --------------------------------------------------------------------------- workers


class Slot:
    """Worker index ``index`` of a generation: its live process, its crash record."""

    def __init__(self, index):
        self.index = index
        self.pid = None
        self.pidfd = None
        self.control = None                 # the master's end of the worker's socketpair
        self.reader = None                  # FrameReader for what the worker sends
        self.ack = None                     # (generation, future) while a reload waits
        self.up = False                     # the worker serves (counted in workers_up)
        self.up_timer = None
        self.spawn_ms = 0                   # CLOCK_MONOTONIC ms of the fork
        self.prev_shm_generation = 0        # worker_generation[index] before the fork
        self.started = 0.0                  # monotonic time of the last fork
        self.deaths = collections.deque()   # monotonic times of recent unexpected exits
        self.backoff = 0.0                  # current respawn delay when crash-looping
        self.respawn_timer = None

    def cancel_respawn(self):
        if self.respawn_timer is not None:
            self.respawn_timer.cancel()
            self.respawn_timer = None


class ControlSlot(Slot):
    """The control process: a slot with no generation, and an ordered outgoing queue
    for its channel (reload messages must not block the master nor interleave)."""

    def __init__(self):
        super().__init__(-1)
        self.outbuf = bytearray()
        self.writing = False        # a writer callback waits for the channel to drain
        self.expected_exit = False  # we sent it QUIT/TERM: its exit is no crash
        self.kill_timer = None
        self.handoff = None         # datagram socketpair end: admin listeners to hand over
        self.admin_key = None       # the admin listener it was given (with `user`)


class Generation:
    """A set of workers and the config they run.

    ``number`` is the config generation the workers serve. An in-place reload keeps
    the Generation (same workers, same pids) and changes its ``cycle`` and ``number``;
    a reload that changes the listeners starts a new Generation and retires the old.
    """

    def __init__(self, number, cycle, slots=None):
        self.number = number
        self.cycle = cycle
        self.slots = slots if slots is not None else [Slot(i) for i in range(cycle.worker_processes)]
        self.retiring = False   # got QUIT: its workers are not respawned
        self.kill_timer = None

    def pids(self):
        return [slot.pid for slot in self.slots if slot.pid is not None]

    def all_up(self):
        return all(slot.up for slot in self.slots)


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


def read_channel(sock, reader, who, on_message, on_closed):
    """Read what a child sent on its control socket (non-blocking) and hand each whole
    message to ``on_message``; ``on_closed`` when the child closed its end or sent
    something unreadable."""
    if sock is None:
        return
    while True:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            on_closed()
            return
        try:
            messages = reader.feed(data)
        except Exception as e:
            log.error("alert", f"{who} sent an unreadable control message: {e!r}")
            on_closed()
            return
        for message in messages:
            on_message(message)


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def same_listeners(old, new):
    """True if ``new`` can be swapped into ``old``'s running workers in place: the same
    listen addresses with the same options, the same number of workers (socket *i*
    stays with worker *i*), and the same error log (a worker keeps the log descriptor
    it inherited at fork)."""
    return (old.worker_processes == new.worker_processes
            and {s.key: s for s in old.listens} == {s.key: s for s in new.listens}
            and old.error_log == new.error_log
            # user, rlimits, affinity: set at fork (daemon matters only at start)
            and dataclasses.replace(old.process, daemon=False)
            == dataclasses.replace(new.process, daemon=False))


# ----------------------------------------------------------------- user and limits

def check_user(cycle):
    """``user`` needs a root master (to bind, open and then drop); refuse otherwise."""
    user = cycle.process.user
    if user is not None and os.geteuid() != 0:
        raise StartupError(f'the "user {user[0]}" directive needs the master to run as '
                           f'root (it runs as uid {os.geteuid()})')


def user_paths(cycle, state_path=None):
    """The files and directories the workers and the control process open by name
    after they dropped to ``user``: the error log and the access logs (reopened on
    USR1), the state file and the zone files next to it (mapped by name at reload),
    the temp directories. The master hands them to the user (as nginx chowns its log
    files and temp paths)."""
    files, dirs = [], []
    target = cycle.error_log[0]
    if target != "stderr":
        files.append(os.path.abspath(target))
    stack = list(cycle.parsed.nodes)
    while stack:
        node = stack.pop()
        if node.block:
            stack.extend(node.block)
        if node.name == "access_log" and node.args and node.args[0] != "off":
            from edge.modules.access_log import REMOTE_PREFIXES
            if not node.args[0].startswith(REMOTE_PREFIXES):
                files.append(os.path.abspath(node.args[0]))
        elif node.name in ("client_body_temp_path", "proxy_temp_path") and node.args:
            dirs.append(os.path.abspath(node.args[0]))
    if state_path:
        files.extend(glob.glob(glob.escape(state_path) + "*"))
    return files, dirs


def give_to_user(cycle, state_path=None):
    """chown what ``user_paths`` names to the configured user (no-op without ``user``).
    Files are created first (as the workers would), so a reopen finds them owned."""
    user = cycle.process.user
    if user is None or os.geteuid() != 0:
        return
    _name, _group, uid, gid = user
    files, dirs = user_paths(cycle, state_path)
    for path in files:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
        except OSError as e:
            log.error("alert", f'chown() "{path}" to "{user[0]}" failed {os_error_text(e)}')
    for path in dirs:
        try:
            os.chown(path, uid, gid)
        except OSError as e:
            log.error("alert", f'chown() "{path}" to "{user[0]}" failed {os_error_text(e)}')


def daemonize(keep_stderr):
    """``daemon on``: fork, start a new session in the child and point stdin and stdout
    (and stderr, unless the error log is stderr) at /dev/null. The parent waits until
    the child reports it started (``daemon_ready``: the pid file is written, the zones
    are made), then exits 0, or 1 if the child ended first, so that an init script or
    systemd's Type=forking finds the pid file as soon as the command returns. Returns
    the child's end of that pipe."""
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid != 0:
        os.close(wfd)
        try:
            started = os.read(rfd, 1) == b"1"
        except OSError:
            started = False
        os._exit(0 if started else 1)
    os.close(rfd)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if not keep_stderr:
        os.dup2(null, 2)
    if null > 2:
        os.close(null)
    return wfd


def daemon_ready(fd):
    """In the background master: tell the waiting parent that it started."""
    if fd is None:
        return
    try:
        os.write(fd, b"1")
    except OSError:
        pass
    os.close(fd)


def configure_child(settings, index=None):
    """In a freshly forked worker (``index``) or the control process (None): nice value,
    rlimits and CPU affinity (workers), then drop to ``user`` (both), as nginx's
    ngx_worker_process_init: setgid, initgroups, setuid, in that order (once the uid
    is dropped nothing else may change). As nginx, a limit, priority or affinity that
    the kernel refuses is logged and the worker serves anyway; a failed user change
    raises OSError, which ends the child (serving as root instead is no option)."""
    if index is not None:
        from edge.modules import core
        steps = []
        if settings.priority:
            steps.append((f"setpriority({settings.priority})",
                          lambda: os.setpriority(os.PRIO_PROCESS, 0, settings.priority)))
        if settings.rlimit_nofile is not None:
            n = settings.rlimit_nofile
            steps.append((f"setrlimit(RLIMIT_NOFILE, {n})",
                          lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))))
        if settings.rlimit_core is not None:
            m = settings.rlimit_core
            steps.append((f"setrlimit(RLIMIT_CORE, {m})",
                          lambda: resource.setrlimit(resource.RLIMIT_CORE, (m, m))))
        cpus = core.cpu_set(settings.affinity, index, sorted(os.sched_getaffinity(0)))
        if cpus:
            steps.append((f"sched_setaffinity({sorted(cpus)})",
                          lambda: os.sched_setaffinity(0, cpus)))
        for what, step in steps:
            try:
                step()
            except (OSError, ValueError) as e:
                log.error("alert", f"{what} failed ({e})")
    if settings.user is not None and os.geteuid() == 0:
        name, _group, uid, gid = settings.user
        os.setgid(gid)
        os.initgroups(name, gid)
        os.setuid(uid)


def monotonic_ms():
    # The reactor stamps heartbeats with CLOCK_MONOTONIC in ms; time.monotonic() is the
    # same clock on Linux.
    return int(time.monotonic() * 1000)


class NewBinary:
    """The new master a binary upgrade exec'd (a child of this, the old master)."""

    def __init__(self, pid):
        self.pid = pid
        self.pidfd = None


class Master:
    """The running master: generations of workers, signal handling, reload, upgrade."""

    def __init__(self, cycle, listeners, worker_module, shared=None, notifier=None,
                 state_path=None, exec_argv=None, exec_cwd=None, upgrade_from=None, exec_args=None,
                 control_module=None):
        self.cycle = cycle                # the config now in force
        self.listeners = listeners
        self.worker_module = worker_module
        self.control_module = control_module  # edge.control.process, or None: no control process
        self.control = ControlSlot()      # the control process's pid, channel, crash record
        self.control_wanted = True        # False after WINCH and while stopping
        # The shared-memory zones (metric slots, log rings), created before the first
        # fork so that workers and the control process inherit them; None until built.
        self.zones = None
        self.shared = shared              # SharedState: readiness, drain flag, heartbeats
        self.notifier = notifier or sd_notify.Notifier(address="")
        self.pid = os.getpid()
        self.pid_path = cycle.pid_path    # the configured pid file
        self.pid_file = cycle.pid_path    # where our pid is now (".oldbin" after USR2)
        self.state_path = state_path      # where the shared state file is now
        self.exec_argv = exec_argv        # how to exec a new binary (USR2)
        self.exec_cwd = exec_cwd
        self.exec_args = exec_args        # edge's own arguments, for EDGE_BINARY/edge_binary
        self.upgrade_from = upgrade_from  # pid of the old master, when exec'd by USR2
        self.new_binary = None            # NewBinary while an upgrade is under way
        self.noaccepting = False          # WINCH: the old master's workers were stopped
        self.generations = []             # the current one last; older ones retiring
        self.current = None               # the generation new workers are forked for
        self.serving = None               # the generation readiness is reported for
        self.by_pid = {}                  # pid -> (generation, slot)
        self.stopping = None              # None, "graceful" or "fast"
        self.loop = None
        self.reloads = 0                  # completed reload attempts
        self.published = 0                # the generation readiness reports as in force
        self._generation_counter = 0
        self._reload_wanted = None
        self._reload_waiters = []         # ids of the control process's reload requests
        # With `user`, the admin listener is bound here, as root, and handed to the
        # control process (which runs as the user and could bind no port below 1024
        # nor a socket in a root-owned directory): admin address key -> socket.
        self.admin_socks = {}
        self.last_reload_error = None     # why the last reload failed (file:line), or None
        self.last_reload_error_at = (None, None)   # its (file, line) when a ConfigError
        self._done = None
        self._stop_timer = None
        self._poll_timer = None
        self._prctl = _libc_prctl()
        self.zones = None                 # Zones: metrics and log rings, shared with the workers

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

        self.current = self.serving = self._start_generation(self.cycle)
        self.published = self.current.number
        self._publish()  # a worker may have been seen up before `serving` was set
        # The control plane runs in its own process, never here (see the docstring).
        self._start_control()
        tasks = [asyncio.create_task(self._reload_loop(), name="edge-reload"),
                 asyncio.create_task(self._announce_ready(), name="edge-ready")]
        try:
            await self._done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sig in MASTER_SIGNALS:
                self.loop.remove_signal_handler(sig)
            if self.new_binary is not None and self.new_binary.pidfd is not None:
                self.loop.remove_reader(self.new_binary.pidfd)
                os.close(self.new_binary.pidfd)
            self._close_control_channel()

    async def _announce_ready(self):
        """READY=1 once the listeners are bound (run() did that) and every worker of the
        first generation serves. After a binary upgrade, MAINPID= comes with it: the pid
        file was written before the workers were forked."""
        gen = self.current
        while not gen.all_up():
            await asyncio.sleep(UP_POLL_INTERVAL)
            if self.stopping:
                return
        log.error("notice", f"configuration generation {gen.number} is in force, "
                            f"{len(gen.slots)} worker processes serve")
        if self.upgrade_from:
            self.notifier.mainpid(self.pid, status=f"serving (upgraded from {self.upgrade_from})")
        else:
            self.notifier.ready(status="serving")

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
            elif self.noaccepting:
                # nginx's rollback step: after WINCH, HUP brings the workers back with
                # the config this master already has, without reading the files.
                log.error("notice", f"signal {signum} ({name}) received, "
                                    "restarting worker processes (upgrade rollback)")
                self.restart_workers()
            else:
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
        elif signum == signal.SIGUSR2:
            log.error("notice", f"signal {signum} ({name}) received, changing binary")
            self.upgrade()
        elif signum == signal.SIGWINCH:
            # A terminal sends WINCH to its foreground process group on every resize.
            # nginx honours WINCH only when daemonized; edge runs in the foreground, so
            # it honours WINCH only while a new binary runs (the upgrade step it is for).
            if self.new_binary is None:
                log.error("notice", f"signal {signum} ({name}) received, ignored "
                                    "(no new binary is running)")
                return
            log.error("notice", f"signal {signum} ({name}) received, "
                                "gracefully shutting down worker processes")
            self.stop_workers()

    # ----------------------------------------------------------------- workers

    def _start_generation(self, cycle, number=None):
        if number is None:
            self._generation_counter += 1
            number = self._generation_counter
        gen = Generation(number, cycle)
        self.generations.append(gen)
        log.error("notice", f"start worker processes (configuration generation {number})")
        for slot in gen.slots:
            self._spawn(gen, slot)
        return gen

    def _spawn(self, gen, slot):
        """Fork the worker for ``slot``; the child never returns from here."""
        sys.stdout.flush()
        sys.stderr.flush()
        # The control channel: reload messages go down it, acks come back. Created
        # before fork so that each side has its end from the first instant.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.shared is not None and slot.index < SHM_MAX_WORKERS:
            slot.prev_shm_generation = self.shared.worker_generation(slot.index)
        # Block the master's signals across fork(): a signal landing in the child
        # before it has reset its handlers would otherwise run the master's handler
        # there, and write to the master's signal wake-up socket.
        saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        # Move the master's objects out of the collector's reach, so the workers'
        # collections do not write to (and so copy) the pages they share with it.
        gc.freeze()
        spawn_ms = monotonic_ms()
        try:
            pid = os.fork()
        except OSError as e:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            ours.close()
            theirs.close()
            log.error("alert", f"fork() failed {os_error_text(e)}")
            self._schedule_respawn(gen, slot)
            return
        if pid == 0:
            ours.close()
            self._become_worker(gen, slot.index, saved_mask, theirs)  # does not return
        gc.unfreeze()
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
        theirs.close()

        slot.pid = pid
        slot.started = time.monotonic()
        slot.spawn_ms = spawn_ms
        slot.up = False
        if self.shared is not None and slot.index < SHM_MAX_WORKERS:
            self.shared.set_worker_pid(slot.index, pid)   # for /status
        ours.setblocking(False)
        slot.control = ours
        slot.reader = self.worker_module.FrameReader()
        self.loop.add_reader(ours.fileno(), self._on_control, slot)
        self.by_pid[pid] = (gen, slot)
        self._watch(slot)
        self._poll_up(gen, slot, pid)
        log.error("notice", f"start worker process {pid}")

    def _become_worker(self, gen, index, saved_mask, control):
        """In the forked child: become worker ``index`` of ``gen``. Never returns."""
        code = 2
        try:
            self._leave_master_loop()
            own = self.listeners.for_worker(gen.cycle, index)
            self.listeners.close_all_but(own.values())
            self._close_master_bookkeeping()
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            set_process_title("edge: worker process")
            configure_child(gen.cycle.process, index)
            self._die_with_master()     # after the uid change, which clears the setting

            self.worker_module.run(gen.cycle, own, index, control=control,
                                   shared=self.shared, generation=gen.number, zones=self.zones)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            log.error("alert", "worker process failed: " + traceback.format_exc().rstrip())
        finally:
            os._exit(code)

    def _leave_master_loop(self):
        """In a forked child: detach from the master's event loop and signal handling.
        Master-only signals are ignored (a stray HUP to the process group must not kill
        a child); USR1, forwarded by the master after reopening its own logs, keeps
        edge.log's file current until the child installs its own handler."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGHUP, signal.SIGWINCH, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, _reopen_log_on_signal)
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop(None)

    def _close_master_bookkeeping(self, keep_admin=None):
        """In a forked child: nothing of the master's bookkeeping belongs here (the
        other children's pidfds and control sockets, the new binary's pidfd, the admin
        listeners but the one ``keep_admin`` names)."""
        for _gen, other in self.by_pid.values():
            if other.pidfd is not None:
                os.close(other.pidfd)
            if other.control is not None:
                other.control.close()
        self._close_control_fds_in_child()
        if self.new_binary is not None and self.new_binary.pidfd is not None:
            os.close(self.new_binary.pidfd)
        for key in list(self.admin_socks):
            if key != keep_admin:
                self.admin_socks.pop(key).close()

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
        if self.by_pid or self.control.pid is not None:
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
        if self.control.pid is not None and self.control.pidfd is None:
            self._reap_control()      # no pidfd: the poll timer covers it too

    def _on_worker_exit(self, pid, status):
        gen, slot = self.by_pid.pop(pid)
        if slot.pidfd is not None:
            self.loop.remove_reader(slot.pidfd)
            os.close(slot.pidfd)
            slot.pidfd = None
        self._close_control(slot)
        if slot.up_timer is not None:
            slot.up_timer.cancel()
            slot.up_timer = None
        if slot.ack is not None and not slot.ack[1].done():
            slot.ack[1].set_result((False, "the worker exited"))
        slot.ack = None
        slot.pid = None
        slot.up = False
        if (self.shared is not None and slot.index < SHM_MAX_WORKERS
                and self.shared.worker_pid(slot.index) == pid):
            self.shared.set_worker_pid(slot.index, 0)
        self._publish()

        expected = gen.retiring or self.stopping is not None
        clean = status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        level = "notice" if clean else "alert"
        log.error(level, f"worker process {pid} exited {describe_exit(status)}")

        if not expected:
            if self.shared is not None:
                self.shared.worker_restarts += 1     # edge_worker_restarts_total
            self._schedule_respawn(gen, slot)
        elif gen.retiring and not gen.pids():
            self._generation_done(gen)
        if self.stopping and not self._children_left():
            self._finish_stop()

    def _close_control(self, slot):
        if slot.control is not None:
            self.loop.remove_reader(slot.control.fileno())
            slot.control.close()
            slot.control = None

    def _schedule_respawn(self, gen, slot):
        delay = self._respawn_delay(slot, f"worker process #{slot.index}")
        slot.respawn_timer = self.loop.call_later(delay, self._respawn, gen, slot)

    def _respawn_delay(self, slot, what):
        """How long to wait before replacing ``slot``'s dead process: RESPAWN_DELAY,
        or a doubling back-off when it is crash-looping. Records the death."""
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
            log.error("alert", f"{what} exited {len(slot.deaths)} "
                               f"times in {CRASH_WINDOW:g}s, respawning it in {delay:g}s")
        return delay

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

    # ----------------------------------------------------------------- worker state

    def _on_control(self, slot):
        """The worker sent something on its control socket (a reload ack)."""
        read_channel(slot.control, slot.reader, f"worker process {slot.pid}",
                     lambda message: self._on_worker_message(slot, message),
                     lambda: self._close_control(slot))  # exiting: its pidfd reports the exit

    def _on_worker_message(self, slot, message):
        op = message.get("op")
        if op == "reloaded":
            if slot.ack is not None and slot.ack[0] == message.get("generation"):
                fut = slot.ack[1]
                if not fut.done():
                    fut.set_result((bool(message.get("ok")), message.get("error")))
        elif op == "up":
            # A worker that says it serves (if the worker module sends this).
            entry = self.by_pid.get(slot.pid)
            if entry is not None and message.get("generation") == entry[0].number:
                self._mark_up(slot)
        else:
            log.error("warn", f"worker process {slot.pid}: unknown control message {op!r}")

    def _poll_up(self, gen, slot, pid):
        """Notice when a freshly forked worker serves: it writes its generation into
        the shared block once its loop is set up, and a heartbeat every iteration.

        If the slot's previous worker already left the same generation there, the
        first heartbeat after the fork is what tells (an idle loop beats once a
        second)."""
        slot.up_timer = None
        if slot.pid != pid or slot.up:
            return
        i = slot.index
        if self.shared is None or i >= SHM_MAX_WORKERS:
            self._mark_up(slot)  # nothing to watch: trust the fork
            return
        if self.shared.worker_generation(i) == gen.number and (
                slot.prev_shm_generation != gen.number
                or self.shared.heartbeat(i) >= slot.spawn_ms):
            self._mark_up(slot)
            return
        slot.up_timer = self.loop.call_later(UP_POLL_INTERVAL, self._poll_up, gen, slot, pid)

    def _mark_up(self, slot):
        if slot.up_timer is not None:
            slot.up_timer.cancel()
            slot.up_timer = None
        if not slot.up:
            slot.up = True
            self._publish()

    def _publish(self):
        """Write what readiness is computed from into the shared block: the
        generation in force, how many workers it should have and how many serve."""
        if self.shared is None:
            return
        gen = self.serving
        if gen is None or gen.retiring:
            self.shared.workers_expected = 0
            self.shared.workers_up = 0
            return
        # Not gen.number: an in-place reload changes that before the workers have
        # all switched; `published` moves only once the reload is complete.
        self.shared.generation = self.published
        self.shared.workers_expected = len(gen.slots)
        self.shared.workers_up = sum(1 for s in gen.slots if s.up and s.pid is not None)

    async def _wait_up(self, gen, timeout):
        """Wait until every worker of ``gen`` serves; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not gen.all_up():
            if self.stopping or time.monotonic() > deadline:
                return False
            await asyncio.sleep(UP_POLL_INTERVAL)
        return True

    # ----------------------------------------------------------------- reload

    async def _reload_loop(self):
        """Apply reload requests one at a time. HUPs that arrive during a reload are
        folded into one more reload, so a burst always ends on the latest config."""
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            # The admin API's requests made before this reload starts are answered by
            # it; those made while it runs wait for the next one (their files may have
            # changed after this one read them).
            waiters, self._reload_waiters = self._reload_waiters, []
            if self.stopping:
                return
            self.notifier.reloading()
            self.last_reload_error = None
            self.last_reload_error_at = (None, None)
            try:
                ok = await self.reload()
            except Exception as e:
                # A bug here must not end the task: later HUPs would then do nothing.
                log.error("alert", "reload failed: " + traceback.format_exc().rstrip())
                self.last_reload_error = f"reload failed: {e!r}"
                ok = False
            for request_id in waiters:
                self._control_send({"op": "reload-result", "id": request_id, "ok": ok,
                                    "generation": self.published,
                                    "error": None if ok else self.last_reload_error,
                                    "file": self.last_reload_error_at[0],
                                    "line": self.last_reload_error_at[1]})
            self.reloads += 1
            if self.shared is not None:             # edge_config_reloads_total{result}
                if ok:
                    self.shared.reloads_ok += 1
                else:
                    self.shared.reloads_failed += 1
            if self.stopping:
                return
            # systemd leaves the "reloading" state on READY=1, whatever the outcome:
            # after a failure the old generation is what serves.
            self.notifier.ready(status=f"serving configuration generation {self.serving.number}"
                                + ("" if ok else " (the last reload failed)"))

    def _reload_failed(self):
        # Readiness answers 503 ("config failed") until a reload succeeds: the node
        # serves a config older than the one on disk, and keepalived should know.
        if self.shared is not None:
            self.shared.config_failed = True

    async def reload(self):
        """Load the config again and switch to it; on any failure keep the old one."""
        try:
            cycle = load_cycle(self.cycle.path)
            for warning in cycle.warnings:
                log.error("warn", str(warning))
            cycle.prepare_zones()      # before any worker compiles it: they map the zones
            give_to_user(cycle, self.state_path)
        except ConfigError as e:
            log.error("emerg", f"{e}; the previous configuration keeps serving")
            self.last_reload_error = str(e)
            self.last_reload_error_at = (getattr(e, "file", None), getattr(e, "line", None))
            self._reload_failed()
            return False
        except Exception as e:
            log.error("alert", "reload failed: " + traceback.format_exc().rstrip())
            self.last_reload_error = f"reload failed: {e!r}"
            self._reload_failed()
            return False

        in_place = same_listeners(self.cycle, cycle)
        before = self.listeners.counts()
        try:
            if not in_place:
                self.listeners.provide(cycle)
            self._switch_pid_file(cycle.pid_path)
        except StartupError as e:
            log.error("emerg", f"{e}; the previous configuration keeps serving")
            self.last_reload_error = str(e)
            self.listeners.trim(before)  # drop what was bound for the new cycle
            self._reload_failed()
            return False

        if cycle.error_log != self.cycle.error_log:
            try:
                log.open_error_log(*cycle.error_log)
            except OSError as e:
                # The log is not worth refusing the new config for; keep the old one.
                log.error("alert", f'open() "{cycle.error_log[0]}" failed '
                                   f'{os_error_text(e)}, still logging to "{log.target()}"')

        self._generation_counter += 1
        number = self._generation_counter
        self.cycle = cycle
        if in_place:
            await self._reload_in_place(cycle, number)
        else:
            await self._reload_new_workers(cycle, number)
        if self.shared is not None:
            self.shared.config_failed = False
        self.published = number
        self._publish()
        from edge.modules import limits, ssl_session
        limits.remove_unused(cycle.limit_zones)
        ssl_session.remove_unused(cycle.runtime)
        log.error("notice", f"configuration generation {number} is in force"
                            + (" (workers reloaded in place)" if in_place else ""))
        self._hand_admin_to_control(cycle)
        # Told, not awaited: a slow or dead control process must not hold up a reload.
        self._control_send({"op": "reload", "generation": number, "path": cycle.path,
                            "parsed": cycle.parsed})
        return True

    async def _reload_in_place(self, cycle, number):
        """Send the tested config to the running workers; each compiles it and swaps
        it in (same pid, connections kept, in-flight requests finish on their plan).
        A worker that fails or does not answer is replaced by a fresh one."""
        gen = self.current
        gen.cycle = cycle        # a worker forked from now on (respawn) runs the new one
        gen.number = number
        message = self.worker_module.encode({
            "op": "reload", "generation": number, "path": cycle.path, "parsed": cycle.parsed})
        deadline = time.monotonic() + RELOAD_ACK_TIMEOUT
        waiting = []
        for slot in gen.slots:
            if slot.pid is None or slot.control is None:
                continue  # a respawn is pending: it will start on the new config
            fut = self.loop.create_future()
            slot.ack = (number, fut)
            waiting.append((slot, slot.pid, fut))
            if not await self._send(slot.control, message, deadline):
                if not fut.done():
                    fut.set_result((False, "the reload message could not be sent"))
        for slot, pid, fut in waiting:
            left = deadline - time.monotonic()
            try:
                ok, error = await asyncio.wait_for(asyncio.shield(fut), max(left, 0.001))
            except asyncio.TimeoutError:
                ok, error = False, f"no answer within {RELOAD_ACK_TIMEOUT:g}s"
            slot.ack = None
            if ok:
                self._mark_up(slot)  # it serves generation `number` now
                continue
            if self.stopping:
                continue
            if slot.pid == pid:
                log.error("alert", f"worker process {pid} did not switch to generation "
                                   f"{number} ({error}), replacing it")
                self._replace_worker(gen, slot)
            # else it exited meanwhile; its respawn runs the new config
        # A replaced worker's successor must serve before READY=1 goes out.
        await self._wait_up(gen, RELOAD_ACK_TIMEOUT)

    async def _send(self, sock, data, deadline):
        """Write ``data`` to a non-blocking control socket without blocking the loop."""
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view):]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return False
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    def _replace_worker(self, gen, slot):
        """Start a fresh worker for ``slot`` of ``gen`` and retire the one it has."""
        old = Slot(slot.index)
        for name in ("pid", "pidfd", "control", "reader", "started", "spawn_ms"):
            setattr(old, name, getattr(slot, name))
        ghost = Generation(gen.number, gen.cycle, slots=[old])
        self.by_pid[old.pid] = (ghost, old)
        if old.control is not None:      # its acks would now be for the ghost slot
            self.loop.remove_reader(old.control.fileno())
            self.loop.add_reader(old.control.fileno(), self._on_control, old)
        slot.pid = slot.pidfd = slot.control = slot.reader = None
        slot.up = False
        self.generations.append(ghost)
        self.retire(ghost)
        self._spawn(gen, slot)

    async def _reload_new_workers(self, cycle, number):
        """The listeners changed: start a generation of new workers on the sockets
        (the new addresses were bound by the caller), and once it serves, QUIT the
        old workers, which stop accepting and finish what they have."""
        old = self.current
        self.current = self._start_generation(cycle, number)
        if not await self._wait_up(self.current, NEW_GENERATION_UP_TIMEOUT):
            if self.stopping:
                return
            log.error("warn", f"configuration generation {number}: not every new worker "
                              f"serves after {NEW_GENERATION_UP_TIMEOUT:g}s; "
                              "retiring the old ones anyway")
        self.serving = self.current
        self.retire(old)
        self.listeners.prune(cycle)

    def _switch_pid_file(self, new_path):
        """Follow a changed ``pid`` directive: write the new pid file, remove the old
        one, and move the shared state file next to the new one. Raises StartupError."""
        if new_path == self.pid_path:
            return
        if self.new_binary is not None or self.upgrade_from_alive():
            return  # during an upgrade the pid files belong to the upgrade
        if new_path:
            write_pid_file(new_path, self.pid)
        if self.pid_file:
            remove_pid_file(self.pid_file, self.pid)
        self.pid_path = self.pid_file = new_path
        if new_path and self.state_path:
            try:
                os.rename(self.state_path, state_path_for(new_path))
                self.state_path = state_path_for(new_path)
            except OSError as e:
                log.error("alert", f'rename() "{self.state_path}" failed {os_error_text(e)}')

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
            log.error("notice", f"worker processes of configuration generation "
                                f"{gen.number} have exited")

    # ----------------------------------------------------------------- binary upgrade

    def upgrade_from_alive(self):
        """True while the old master that exec'd this one still runs (and is our
        parent): this master is then the new binary of an upgrade under way."""
        return bool(self.upgrade_from) and os.getppid() == self.upgrade_from

    def upgrade(self):
        """USR2: exec a new master that inherits the listening sockets (nginx's
        binary upgrade). This master keeps serving until WINCH/QUIT; if the new one
        fails to start, it renames the pid file back and carries on."""
        if self.stopping:
            log.error("notice", "binary upgrade ignored: stopping")
            return
        if self.new_binary is not None:
            log.error("alert", f"binary upgrade ignored: the new binary {self.new_binary.pid} "
                               "still runs; stop either it or this master first")
            return
        if self.upgrade_from_alive():
            log.error("alert", f"binary upgrade ignored: this master is itself a new binary "
                               f"and the old master {self.upgrade_from} still runs")
            return
        if self.noaccepting:
            log.error("alert", "binary upgrade ignored: the worker processes are stopped")
            return

        oldbin = f"{self.pid_path}.oldbin" if self.pid_path else None
        if oldbin:
            try:
                os.rename(self.pid_path, oldbin)
            except OSError as e:
                log.error("alert", f'rename() "{self.pid_path}" to "{oldbin}" failed '
                                   f'{os_error_text(e)}, binary upgrade cancelled')
                return
            self.pid_file = oldbin
        # The new master creates its own state file where ours is: move ours aside, so
        # that `edge drain` during the upgrade can still find both.
        if oldbin and self.state_path == state_path_for(self.pid_path):
            try:
                os.rename(self.state_path, state_path_for(oldbin))
                self.state_path = state_path_for(oldbin)
            except OSError as e:
                log.error("alert", f'rename() "{self.state_path}" failed {os_error_text(e)}')

        env = dict(os.environ)
        env[INHERIT_ENV] = self.listeners.describe()
        env[UPGRADE_FROM_ENV] = str(self.pid)
        if self.shared is not None and self.shared.draining:
            env[DRAINING_ENV] = "1"
        else:
            env.pop(DRAINING_ENV, None)
        argv = new_binary_argv(self.exec_argv, self.exec_args, self.cycle)
        fds = [sock.fileno() for socks in self.listeners.sockets.values() for sock in socks]

        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across fork and exec on purpose: the new master starts with them
        # blocked and unblocks them once its handlers are in place (as run() does), so
        # a signal that arrives in between is not lost nor run by our handlers here.
        saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            log.error("alert", f"fork() failed {os_error_text(e)}, binary upgrade cancelled")
            self._upgrade_ended()
            return
        if pid == 0:
            code = 127
            try:
                for fd in fds:
                    os.set_inheritable(fd, True)  # clears FD_CLOEXEC: they survive exec
                if self.exec_cwd:
                    os.chdir(self.exec_cwd)
                os.execve(argv[0] if os.path.isabs(argv[0]) else sys.executable, argv, env)
            except BaseException as e:
                try:
                    log.error("alert", f"execve() of the new binary failed: {e!r}")
                except BaseException:
                    pass
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
        self.new_binary = NewBinary(pid)
        try:
            self.new_binary.pidfd = os.pidfd_open(pid)
            self.loop.add_reader(self.new_binary.pidfd, self._reap_new_binary)
        except (OSError, AttributeError):
            self.loop.call_later(REAP_POLL_INTERVAL, self._poll_new_binary)
        log.error("notice", f"start new binary process {pid}: {' '.join(argv)}")

    def _poll_new_binary(self):
        if self.new_binary is None:
            return
        if not self._reap_new_binary():
            self.loop.call_later(REAP_POLL_INTERVAL, self._poll_new_binary)

    def _reap_new_binary(self):
        nb = self.new_binary
        if nb is None:
            return True
        try:
            done, status = os.waitpid(nb.pid, os.WNOHANG)
        except ChildProcessError:
            done, status = nb.pid, None
        if not done:
            return False
        if nb.pidfd is not None:
            self.loop.remove_reader(nb.pidfd)
            os.close(nb.pidfd)
        self.new_binary = None
        log.error("notice" if status == 0 else "alert",
                  f"new binary process {nb.pid} exited {describe_exit(status)}")
        self._upgrade_ended()
        return True

    def _upgrade_ended(self):
        """The new binary is gone (it failed, or was stopped for a rollback): take
        back the pid file, and bring the workers back if WINCH had stopped them."""
        if self.stopping:
            return  # we are leaving too; our .oldbin pid file is removed at exit
        if self.pid_path and self.pid_file != self.pid_path:
            try:
                write_pid_file(self.pid_path, self.pid)
                remove_pid_file(self.pid_file, self.pid)
                self.pid_file = self.pid_path
            except StartupError as e:
                log.error("alert", str(e))
        if self.pid_path and self.state_path == state_path_for(f"{self.pid_path}.oldbin"):
            try:
                os.rename(self.state_path, state_path_for(self.pid_path))
                self.state_path = state_path_for(self.pid_path)
            except OSError as e:
                log.error("alert", f'rename() "{self.state_path}" failed {os_error_text(e)}')
        if self.noaccepting:
            self.restart_workers()
        # This master is the service's main process again.
        self.notifier.mainpid(self.pid, status="serving (binary upgrade rolled back)")
        log.error("notice", "binary upgrade ended, this master serves")

    def stop_workers(self):
        """WINCH: stop the workers gracefully and do not respawn them (the new
        binary's workers serve on the same sockets meanwhile)."""
        if self.noaccepting:
            return
        self.noaccepting = True
        self.retire(self.current)
        # The new master's control process serves the admin listener from now on.
        self._stop_control(signal.SIGQUIT, self.cycle.worker_shutdown_timeout)
        self._publish()

    def restart_workers(self):
        """Start workers again after WINCH, with the config this master has."""
        self.noaccepting = False
        self.current = self.serving = self._start_generation(self.cycle, self.current.number)
        self._publish()
        self._start_control()

    # ----------------------------------------------------------------- control process

    def _children_left(self):
        return bool(self.by_pid) or self.control.pid is not None

    def _binds_admin(self, cycle):
        """Whether this master binds the admin listener for the control process: with
        `user` (the control process drops to it) and a root master."""
        return cycle.admin is not None and cycle.process.user is not None and os.geteuid() == 0

    def _bind_admin(self, cycle):
        """With `user`: the admin listener of ``cycle``, bound here once (kept across
        reloads that keep its address, and across respawns of the control process);
        those of earlier configs are closed here (the control process closes its own
        copy when it moves). Returns its key, or None (no admin listener, no `user`,
        or the bind failed: logged, and the control process tries and logs in turn)."""
        if not self._binds_admin(cycle):
            for key in list(self.admin_socks):
                self.admin_socks.pop(key).close()
            return None
        address = cycle.admin.address
        if address.key not in self.admin_socks:
            from edge.control import admin as admin_control
            try:
                self.admin_socks[address.key] = admin_control.bind(address)[0]
            except OSError as e:
                log.error("emerg", f"admin_listen {address.key}: bind() failed "
                                   f"({e.errno}: {e.strerror})")
        for key in [k for k in self.admin_socks if k != address.key]:
            self.admin_socks.pop(key).close()
        return address.key if address.key in self.admin_socks else None

    def _hand_admin_to_control(self, cycle):
        """A reload: with `user`, bind the new admin address (if it changed) and send
        the socket to the running control process (SCM_RIGHTS over its handoff
        socket) before the reload message, so that its admin service finds it there."""
        key = self._bind_admin(cycle)
        c = self.control
        if key is None or key == c.admin_key or c.handoff is None or c.pid is None:
            return
        try:
            socket.send_fds(c.handoff, [key.encode("utf-8")], [self.admin_socks[key].fileno()])
            c.admin_key = key
        except OSError as e:
            log.error("alert", f"admin_listen {key}: handing the socket to the control "
                               f"process failed {os_error_text(e)}")

    def _start_control(self):
        """Run the control process (again): at start, and on an upgrade rollback. If the
        previous one is still finishing, its exit starts the new one."""
        if self.control_module is None or self.stopping:
            return
        self.control_wanted = True
        c = self.control
        if c.pid is None and c.respawn_timer is None:
            self._spawn_control()

    def _spawn_control(self):
        c = self.control
        c.respawn_timer = None
        if self.stopping or not self.control_wanted or c.pid is not None:
            return
        gen = self.current
        cycle, number = (gen.cycle, gen.number) if gen is not None else (self.cycle, self.published)
        admin_key = self._bind_admin(cycle)
        handoff = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) \
            if self._binds_admin(cycle) else (None, None)
        sys.stdout.flush()
        sys.stderr.flush()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        gc.freeze()
        # The child carries its name from its first instant (comm is inherited at
        # fork): nothing that lists the master's children ever mistakes it for a
        # worker. The master is single-threaded, so no worker is forked meanwhile.
        own_comm = get_comm()
        set_comm(CONTROL_COMM)
        try:
            pid = os.fork()
        except OSError as e:
            set_comm(own_comm)
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            ours.close()
            theirs.close()
            for s in handoff:
                if s is not None:
                    s.close()
            log.error("alert", f"fork() of the control process failed {os_error_text(e)}")
            c.respawn_timer = self.loop.call_later(
                self._respawn_delay(c, "the control process"), self._spawn_control)
            return
        if pid == 0:
            ours.close()
            if handoff[0] is not None:
                handoff[0].close()
            self._become_control(cycle, number, theirs, admin_key, handoff[1])  # does not return
        set_comm(own_comm)
        gc.unfreeze()
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
        theirs.close()
        if handoff[1] is not None:
            handoff[1].close()
            handoff[0].setblocking(False)
        c.handoff = handoff[0]
        c.admin_key = admin_key

        c.pid = pid
        c.started = time.monotonic()
        c.expected_exit = False
        ours.setblocking(False)
        c.control = ours
        c.reader = self.worker_module.FrameReader()
        c.outbuf.clear()
        self.loop.add_reader(ours.fileno(), self._on_control_readable)
        try:
            c.pidfd = os.pidfd_open(pid)
            self.loop.add_reader(c.pidfd, self._reap_control)
        except (OSError, AttributeError):
            c.pidfd = None
            if self._poll_timer is None:
                self._poll_timer = self.loop.call_later(REAP_POLL_INTERVAL, self._poll)
        if self.shared is not None:
            self.shared.control_pid = pid
        log.error("notice", f"start control process {pid}")

    def _become_control(self, cycle, number, channel, admin_key=None, handoff=None):
        """In the forked child: become the control process. Never returns. The master's
        signals stay blocked until the control process's handlers are installed.
        ``admin_key``: the admin listener the master bound for it (with `user`), and
        ``handoff`` the socket later ones come on (see _hand_admin_to_control)."""
        code = 2
        try:
            self._leave_master_loop()
            # It serves no data-plane socket: holding one would keep an address the
            # master prunes alive in the SO_REUSEPORT group with nobody accepting.
            self.listeners.close_all()
            if admin_key is not None or handoff is not None:
                from edge.control import admin as admin_control
                admin_control.handed_over(
                    {admin_key: self.admin_socks[admin_key]} if admin_key is not None else {}, handoff)
            self._close_master_bookkeeping(keep_admin=admin_key)
            if cycle.process.user is not None:
                self.control_module.preload()   # while the code is surely readable
            configure_child(cycle.process)      # the user only
            self._die_with_master()             # after the uid change, which clears it
            set_process_title("edge: control process")
            set_comm(CONTROL_COMM)     # setproctitle may have changed it
            self.control_module.run(cycle, channel, self.shared, self.zones, number)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            log.error("alert", "control process failed: " + traceback.format_exc().rstrip())
        finally:
            os._exit(code)

    def _close_control_fds_in_child(self):
        c = self.control
        if c.pidfd is not None:
            os.close(c.pidfd)
        if c.control is not None:
            c.control.close()
        if c.handoff is not None:
            c.handoff.close()

    def _reap_control(self):
        c = self.control
        if c.pid is None:
            return
        try:
            done, status = os.waitpid(c.pid, os.WNOHANG)
        except ChildProcessError:
            done, status = c.pid, None
        if done:
            self._on_control_exit(status)

    def _on_control_exit(self, status):
        c = self.control
        pid = c.pid
        if c.pidfd is not None:
            self.loop.remove_reader(c.pidfd)
            os.close(c.pidfd)
            c.pidfd = None
        self._close_control_channel()
        if c.kill_timer is not None:
            c.kill_timer.cancel()
            c.kill_timer = None
        c.pid = None
        if self.shared is not None:
            self.shared.control_pid = 0
        expected = c.expected_exit or self.stopping is not None
        c.expected_exit = False
        clean = status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        log.error("notice" if clean and expected else "alert",
                  f"control process {pid} exited {describe_exit(status)}")
        if self.stopping:
            if not self._children_left():
                self._finish_stop()
            return
        if not self.control_wanted:
            return
        # Stopped on purpose and wanted again (a quick upgrade rollback): no crash.
        delay = RESPAWN_DELAY if expected else self._respawn_delay(c, "the control process")
        c.respawn_timer = self.loop.call_later(delay, self._spawn_control)

    def _stop_control(self, sig, timeout):
        """Stop the control process and do not respawn it: QUIT lets it finish (KILL
        after ``timeout`` + SHUTDOWN_MARGIN, or the master's own stop timer when
        ``timeout`` is None), TERM asks it to exit now."""
        self.control_wanted = False
        c = self.control
        c.cancel_respawn()
        if c.pid is None:
            return
        c.expected_exit = True
        self._signal_workers([c.pid], sig)
        if timeout is not None and c.kill_timer is None:
            c.kill_timer = self.loop.call_later(timeout + SHUTDOWN_MARGIN, self._kill_control)

    def _kill_control(self):
        c = self.control
        c.kill_timer = None
        if c.pid is not None:
            log.error("alert", f"control process {c.pid} did not exit in time, killing it")
            self._signal_workers([c.pid], signal.SIGKILL)

    def _on_control_readable(self):
        c = self.control
        read_channel(c.control, c.reader, f"control process {c.pid}", self._on_control_message,
                     self._close_control_channel)   # exiting: the pidfd tells when

    def _on_control_message(self, message):
        c = self.control
        op = message.get("op")
        if op == "up":
            log.error("info", f"control process {c.pid} runs generation "
                              f"{message.get('generation')}")
        elif op == "reload":
            # The admin API's POST /reload: an ordinary reload (folded with HUPs into
            # the reload task), answered with "reload-result" once it is done.
            if self.stopping or self.noaccepting:
                self._control_send({"op": "reload-result", "id": message.get("id"), "ok": False,
                                    "unavailable": True,
                                    "generation": self.published, "file": None, "line": None,
                                    "error": "the master is stopping" if self.stopping else
                                             "the master's workers were stopped (binary upgrade)"})
                return
            self._reload_waiters.append(message.get("id"))
            self._reload_wanted.set()
        elif op == "reloaded":
            if not message.get("ok"):
                # The workers serve the new config; only the control plane lags.
                log.error("alert", f"control process {c.pid}: generation "
                                   f"{message.get('generation')} applied with errors: "
                                   f"{message.get('error')}")
        else:
            log.error("warn", f"control process {c.pid}: unknown control message {op!r}")

    def _control_send(self, message):
        """Queue ``message`` for the control process, in order, without blocking. If it
        is not running, it is dropped: a respawned control process starts from the
        config in force."""
        c = self.control
        if c.control is None:
            return
        c.outbuf += self.worker_module.encode(message)
        self._control_flush()

    def _control_flush(self):
        c = self.control
        sock = c.control
        while sock is not None and c.outbuf:
            try:
                sent = sock.send(c.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                c.outbuf.clear()
                break
            del c.outbuf[:sent]
        want = sock is not None and bool(c.outbuf)
        if want and not c.writing:
            self.loop.add_writer(sock.fileno(), self._control_flush)
        elif not want and c.writing:
            self.loop.remove_writer(sock.fileno())
        c.writing = want

    def _close_control_channel(self):
        c = self.control
        if c.handoff is not None:
            c.handoff.close()
            c.handoff = None
        if c.control is None:
            return
        if c.writing:
            self.loop.remove_writer(c.control.fileno())
            c.writing = False
        self.loop.remove_reader(c.control.fileno())
        c.control.close()
        c.control = None
        c.outbuf.clear()

    # ----------------------------------------------------------------- logs

    def reopen_logs(self):
        try:
            log.reopen()
        except OSError as e:
            log.error("alert", f'reopen of "{log.target()}" failed {os_error_text(e)}')
        give_to_user(self.cycle, self.state_path)   # the files the children reopen
        self._signal_workers(list(self.by_pid), signal.SIGUSR1)
        if self.control.pid is not None:
            self._signal_workers([self.control.pid], signal.SIGUSR1)

    # ----------------------------------------------------------------- stop

    def handed_over(self):
        """True if another master is, or is about to be, the service's main process:
        we are the old master of an upgrade, or a new binary whose old master lives
        (a rollback). Such a master must not tell systemd STOPPING=1."""
        return self.new_binary is not None or self.upgrade_from_alive()

    def stop(self, mode):
        """Stop everything: ``"graceful"`` (QUIT) or ``"fast"`` (TERM, INT).

        A fast stop may overtake a graceful one that is under way, not the reverse.
        """
        if self.stopping == "fast" or self.stopping == mode:
            return
        if self.stopping is None and not self.handed_over():
            self.notifier.stopping()
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
            self._stop_control(signal.SIGQUIT, None)
            timeouts = [gen.cycle.worker_shutdown_timeout for gen in self.generations]
            limit = None if None in timeouts else max(timeouts, default=0) + SHUTDOWN_MARGIN
        else:
            self._signal_workers(list(self.by_pid), signal.SIGTERM)
            self._stop_control(signal.SIGTERM, None)
            limit = FAST_STOP_GRACE
        # The workers hold their own copies; see Listeners.prune for why the master
        # lets go of its copies now rather than when the last worker has gone. (After
        # a binary upgrade the new master holds the same sockets: they stay open.)
        self.listeners.close_all()

        if not self._children_left():
            self._finish_stop()
        elif limit is not None:
            self._stop_timer = self.loop.call_later(limit, self._kill_all)

    def _kill_all(self):
        for pid in self.by_pid:
            log.error("alert", f"worker process {pid} did not exit in time, killing it")
        self._signal_workers(list(self.by_pid), signal.SIGKILL)
        if self.control.pid is not None:
            log.error("alert", f"control process {self.control.pid} did not exit in time, "
                               "killing it")
            self._signal_workers([self.control.pid], signal.SIGKILL)
        self._stop_timer = self.loop.call_later(KILL_REAP_WAIT, self._give_up_waiting)

    def _give_up_waiting(self):
        left = list(self.by_pid) + ([self.control.pid] if self.control.pid else [])
        log.error("alert", "processes " + ", ".join(map(str, left))
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


PR_SET_NAME = 15  # <linux/prctl.h>


def get_comm():
    try:
        with open("/proc/thread-self/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return "edge"


def set_comm(name):
    """Set /proc/self/comm (at most 15 bytes): what `ps -o comm`, `top` and
    ``is_control_process`` show, with or without setproctitle."""
    prctl = _libc_prctl()
    if prctl is not None:
        prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


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


def previous_draining(state_path):
    """The drain flag in the state file a previous master left at ``state_path``."""
    from edge._core.reactor import SharedState
    try:
        old = SharedState.open(state_path)
    except (OSError, ValueError):
        return False
    try:
        return old.draining
    finally:
        old.close()


def run(config_path, exec_argv=None, exec_cwd=None, exec_args=None):
    """Run the master in the foreground for the config at ``config_path``.

    ``exec_argv`` / ``exec_cwd``: the command line (and the directory it ran in) that a
    binary upgrade execs again; ``exec_args``: edge's own arguments in it, which follow
    ``EDGE_BINARY`` or ``edge_binary`` when one is set (see ``new_binary_argv``). Returns the process exit status: 0 after a stop, 1 if
    it could not start.
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
    for warning in cycle.warnings:
        log.report("warn", str(warning))

    # Imported here, not at the top: `edge -t` and `edge -s` need neither.
    import uvloop
    import edge.control.process
    import edge.worker
    from edge._core.reactor import SharedState

    # From here on a stop signal must not kill the master half-way (leaving a pid file
    # behind): hold the signals until the event loop's handlers are installed. (A new
    # binary arrives with them blocked already: see Master.upgrade.)
    signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
    raise_nofile_limit()
    # Read once and forget: a worker or a later upgrade must not see stale values.
    inherited = os.environ.pop(INHERIT_ENV, None)
    upgrade_from = os.environ.pop(UPGRADE_FROM_ENV, "")
    upgrade_from = int(upgrade_from) if upgrade_from.isdigit() else None
    draining = os.environ.pop(DRAINING_ENV, None) == "1"

    listeners = Listeners()
    ready_fd = None     # daemon on: the pipe to the waiting parent (see daemonize)
    pid = os.getpid()
    pid_written = None
    shared = None
    try:
        check_user(cycle)
        check_not_running(cycle.pid_path)
        if inherited:
            adopted = parse_inherited(inherited)
            listeners.adopt(adopted)
            listeners.drop_unused(cycle)
            log.error("notice", "using inherited sockets: " + ", ".join(
                f"{key} ({len(socks)})" for key, socks in listeners.sockets.items()))
        listeners.provide(cycle)
        if cycle.process.daemon and not inherited:
            # as nginx: after binding (errors reach the console), before the pid file
            # (which names the background master); a new binary stays where it is
            ready_fd = daemonize(cycle.error_log[0] == "stderr")
            pid = os.getpid()
        if cycle.pid_path:
            write_pid_file(cycle.pid_path, pid)
            pid_written = cycle.pid_path
        # Created after the pid check: truncating the state file of a master that
        # runs would zero the block its workers answer readiness from.
        state_path = (state_path_for(cycle.pid_path) if cycle.pid_path
                      else os.path.join(tempfile.gettempdir(), f"edge-{pid}.state"))
        # The drain flag outlives the master: drain, stop, maintain, start, undrain,
        # and the node does not turn ready on its own in between. It comes from the
        # state file a previous run left, or, in a binary upgrade, from the old master.
        draining = draining or previous_draining(state_path)
        try:
            try:
                os.unlink(state_path)   # a fresh block (read what we keep just above)
            except FileNotFoundError:
                pass
            shared = SharedState.create(state_path)
        except OSError as e:
            raise StartupError(f'open() "{state_path}" failed {os_error_text(e)}') from None
        shared.draining = draining
        shared.version = version()   # what `edge status` and `edge -s upgrade` report
        # Before the first fork: the first worker may answer `health ready` before the
        # master has counted anyone, and 0 of 0 would read as ready.
        shared.workers_expected = cycle.worker_processes
        shared.workers_up = 0
    except StartupError as e:
        log.report("emerg", str(e))
        listeners.close_all()
        if pid_written:
            remove_pid_file(pid_written, pid)
        return 1

    set_process_title("edge: master process " + " ".join(sys.argv))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.error("notice", f"edge/{version()} master process {pid} starting"
                        + (f" (binary upgrade from {upgrade_from})" if upgrade_from else ""))
    log.error("notice", f"getrlimit(RLIMIT_NOFILE): {soft}:{hard}")

    master = Master(cycle, listeners, edge.worker, shared=shared,
                    notifier=sd_notify.Notifier(), state_path=state_path,
                    exec_argv=exec_argv, exec_cwd=exec_cwd, upgrade_from=upgrade_from,
                    exec_args=exec_args,
                    control_module=edge.control.process)
    master.zones = create_zones(cycle)
    # limit zones are files next to the state file: workers map them by name, so a zone a
    # reload adds reaches workers that were forked before it
    from edge._core.reactor import set_limit_zone_prefix, set_ssl_zone_prefix
    set_limit_zone_prefix(state_path + ".limit.")
    # TLS session caches and ticket keys (modules/ssl_session.py), the same way
    set_ssl_zone_prefix(state_path + ".ssl.")
    try:
        cycle.prepare_zones()
        give_to_user(cycle, state_path)
    except OSError as e:
        log.report("emerg", f"limit zones next to \"{state_path}\" could not be made {os_error_text(e)}")
        listeners.close_all()
        if pid_written:
            remove_pid_file(pid_written, pid)
        shared.close()
        return 1
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        daemon_ready(ready_fd)      # before any fork: no child may hold the pipe
        ready_fd = None
        loop.run_until_complete(master.main())
    finally:
        listeners.close_all()
        for path in {pid_written, master.pid_file} - {None}:
            remove_pid_file(path, pid)
        # The state file next to the pid file stays: it carries the drain flag to the
        # next start. An old master's (".oldbin.state", the flag went to the new
        # master) and a pid-less one (named after our pid) are of no further use.
        if not (master.state_path or "").endswith(".oldbin.state"):
            # our limit zones end with us; after a binary upgrade they are the new master's
            from edge.modules import limits, ssl_session
            limits.remove_unused({}, state_path + ".limit.")
            ssl_session.remove_unused(None, state_path + ".ssl.")
        if master.state_path and (master.state_path.endswith(".oldbin.state")
                                  or not master.pid_path):
            try:
                os.unlink(master.state_path)
            except OSError:
                pass
        else:
            shared.workers_expected = 0     # nobody serves from this block any more
            shared.workers_up = 0
        shared.close()
        asyncio.set_event_loop(None)
        loop.close()
        log.error("notice", "exit")
    return 0


def create_zones(cycle):
    """The shared zones for metrics and log rings, sized once at start: room for twice
    the workers this start needs (a reload may add some), and the configured ring."""
    from edge._core.reactor import Zones
    workers = min(SHM_MAX_WORKERS, max(16, 2 * max(cycle.worker_processes, os.cpu_count() or 1)))
    return Zones.create(series_cap=16384, workers_cap=workers,
                        ring_size=cycle.access_log_ring_size)


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
