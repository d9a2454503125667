"""Process-wide settings: workers, pid file, error log, shutdown, user and limits."""

import grp
import os
import pwd
from dataclasses import dataclass

from edge.config import EVENTS, HTTP, MAIN, ConfigError, Directive, types


def _worker_processes(node):
    value = node.args[0]
    if value == "auto":
        return "auto"
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f'invalid value "{value}" in "worker_processes" directive')
    return int(value)


LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


def _error_log(node):
    level = node.args[1] if len(node.args) > 1 else "error"
    if level not in LEVELS:
        raise ConfigError(f'invalid log level "{level}"')
    return (node.args[0], level)


def _user(node):
    """``user USER [GROUP]``: resolved at load (nginx: the group defaults to the user's
    name). Returns (user, group, uid, gid)."""
    name = node.args[0]
    group = node.args[1] if len(node.args) > 1 else name
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ConfigError(f'getpwnam("{name}") failed') from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f'getgrnam("{group}") failed') from None
    return (name, group, uid, gid)


def _rlimit(node):
    v = node.args[0]
    if not (v.isascii() and v.isdigit()):
        raise ConfigError(f'invalid value "{v}" in "{node.name}" directive')
    return int(v)


def _priority(node):
    v = node.args[0]
    try:
        n = int(v)
    except ValueError:
        n = None
    if n is None or not -20 <= n <= 20 or not v.lstrip("+-").isdigit():
        raise ConfigError(f'invalid number "{v}" in "worker_priority" directive')
    return n


def _affinity(node):
    """``auto [MASK]`` or one binary mask per worker (the last one repeats, as nginx):
    ("auto", mask or None) or ("masks", [int, ...])."""
    args = node.args
    if args[0] == "auto":
        if len(args) > 2:
            raise ConfigError('invalid number of arguments in "worker_cpu_affinity" directive')
        mask = _mask(args[1]) if len(args) == 2 else None
        return ("auto", mask)
    return ("masks", [_mask(a) for a in args])


def _mask(text):
    if not text or any(c not in "01" for c in text) or len(text) > 64:
        raise ConfigError(f'invalid character "{text}" in "worker_cpu_affinity"')
    value = int(text, 2)
    if value == 0:
        raise ConfigError('"worker_cpu_affinity" mask selects no CPU')
    return value


def _master_process(node):
    if types.flag(node) is False:
        raise ConfigError('"master_process off" is not supported: edge always runs a '
                          'master with its workers and control process (see docs/nginx.md)')
    return True


def _edge_binary(node):
    path = node.args[0]
    if not path.startswith("/"):
        raise ConfigError(f'"edge_binary" must be an absolute path, not "{path}"',
                          node.file, node.line)
    return path


DIRECTIVES = [
    Directive("user", (MAIN,), (1, 2), parse=_user, syntax="user user [group];",
              doc="Workers and the control process run as this user and group (the group "
                  "defaults to the user's name); the master stays root to bind ports and "
                  "open files. The master must run as root. See docs/operations.md."),
    Directive("worker_rlimit_nofile", (MAIN,), (1, 1), parse=_rlimit,
              syntax="worker_rlimit_nofile number;",
              doc="RLIMIT_NOFILE (soft and hard) of the workers. Without it the workers "
                  "inherit the master's limit, raised to its hard limit at start."),
    Directive("worker_rlimit_core", (MAIN,), (1, 1), parse=types.size,
              syntax="worker_rlimit_core size;",
              doc="RLIMIT_CORE (the largest core file) of the workers."),
    Directive("worker_priority", (MAIN,), (1, 1), parse=_priority, default=0,
              syntax="worker_priority number;",
              doc="The nice value of the workers, -20 (most favoured) to 20."),
    Directive("worker_cpu_affinity", (MAIN,), (1, None), parse=_affinity,
              syntax="worker_cpu_affinity cpumask ...; worker_cpu_affinity auto [cpumask];",
              doc="Bind worker N to the CPUs of the Nth mask (binary, rightmost digit is "
                  "CPU 0; the last mask serves the workers beyond the list), or with "
                  "`auto` each worker to one CPU in turn among those of the mask (all "
                  "CPUs by default)."),
    Directive("daemon", (MAIN,), (1, 1), parse=types.flag, default=False,
              syntax="daemon on | off;",
              doc="`on`: the master forks into the background once its sockets are bound "
                  "(the command returns; the pid file names the background master), for "
                  "init scripts that expect it. edge's default is `off` (nginx's is "
                  "`on`): it runs in the foreground, as systemd's Type=notify wants."),
    Directive("master_process", (MAIN,), (1, 1), parse=_master_process, default=True,
              syntax="master_process on;",
              doc="Only `on`: edge always runs a master; `off` (nginx's development mode) "
                  "is refused."),
    Directive("worker_processes", (MAIN,), (1, 1), parse=_worker_processes, default="auto",
              syntax="worker_processes number | auto;",
              doc="How many worker processes serve traffic; `auto` is one per CPU core."),
    Directive("edge_binary", (MAIN,), (1, 1), parse=_edge_binary, default=None,
              syntax="edge_binary path;",
              doc="The program a binary upgrade (`edge -s upgrade`, USR2) execs for the new "
                  "master, with the same arguments: a stable path such as `/usr/bin/edge`, "
                  "which follows `/opt/edge/current` to the newest release. The "
                  "`EDGE_BINARY` environment variable of the master wins over it. Without "
                  "either, the `edge` script the master was started as, when it lies "
                  "outside the release it runs (docs/install.md)."),
    Directive("pid", (MAIN,), (1, 1), default=None, syntax="pid file;",
              doc="Where the master writes its process id (used by `edge -s`)."),
    Directive("error_log", (MAIN,), (1, 2), parse=_error_log, default=("stderr", "error"),
              syntax="error_log file | stderr [level];",
              doc="Where errors go and the least severe level logged "
                  "(debug, info, notice, warn, error, crit, alert, emerg)."),
    Directive("worker_shutdown_timeout", (MAIN,), (1, 1), parse=types.time, default=10.0,
              doc="How long a gracefully stopping worker may finish in-flight requests."),
    Directive("events", (MAIN,), (0, 0), block=EVENTS, syntax="events { ... }",
              doc="Connection processing settings."),
    Directive("worker_connections", (EVENTS,), (1, 1), parse=types.number, default=1024,
              doc="The most client connections one worker holds at once; beyond it new "
                  "connections wait in the listen queue."),
    Directive("http", (MAIN,), (0, 0), block=HTTP, syntax="http { ... }",
              doc="The HTTP server settings."),
]


@dataclass(frozen=True)
class ProcessSettings:
    """What the master applies to each child after fork (see master.configure_child)."""
    user: tuple = None           # (user, group, uid, gid) or None
    rlimit_nofile: int = None
    rlimit_core: int = None
    priority: int = 0
    affinity: tuple = None       # ("auto", mask|None) or ("masks", [mask, ...]) or None
    daemon: bool = False         # fork into the background at start (master only)


def process_settings(main):
    return ProcessSettings(main.get("user"), main.get("worker_rlimit_nofile"),
                           main.get("worker_rlimit_core"), main.get("worker_priority"),
                           main.get("worker_cpu_affinity"), main.get("daemon"))


def cpu_set(affinity, index, cpus):
    """The CPUs worker ``index`` is bound to, or None. ``cpus``: the CPUs this process may
    run on (sorted)."""
    if affinity is None:
        return None
    kind, arg = affinity
    if kind == "auto":
        allowed = [c for c in cpus if arg is None or (arg >> c) & 1]
        if not allowed:
            return None
        return {allowed[index % len(allowed)]}
    mask = arg[min(index, len(arg) - 1)]
    return {c for c in range(64) if (mask >> c) & 1}


def worker_count(main):
    value = main.get("worker_processes")
    return (os.cpu_count() or 1) if value == "auto" else value


def compile_main(main, runtime):
    events = main.blocks("events")
    runtime.plan.worker_connections = events[0].get("worker_connections") if events else 1024
    runtime.plan.shutdown_timeout_ms = int(main.get("worker_shutdown_timeout") * 1000)
