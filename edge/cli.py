"""The ``edge`` command line, shaped after nginx's.

    edge                       run the master in the foreground
    edge -t / -T               test the config (and dump every file read)
    edge -s stop|quit|reload|reopen
                               signal the running master named by the config's pid file
    edge -s upgrade            binary upgrade: USR2, wait for the new master, WINCH and
                               QUIT to the old one, reporting each step
    edge status                is the master running, its workers, readiness
    edge drain / undrain       flip the drain flag: readiness answers 503, traffic flows
    edge logs query "SQL"      SQL over the JSON access logs (DuckDB); edge/logs.py
    edge logs tail             follow the JSON access log, formatted
    edge consumers hash-password
                               hash a password for the consumers file (stdin or a
                               prompt); edge/modules/consumers.py
    edge admin status|routes|upstreams|consumers|history [--json]
    edge admin set-peer UPSTREAM ADDR [--weight N] [--down|--up] [--drain]
    edge admin apply FILE | rollback GEN;  edge config rollback GEN
                               the running edge over its admin API (edge/admin_cli.py)

Messages go to stderr in nginx's form (``edge: [emerg] ...``); only ``-T``'s dump,
``status`` and ``-s upgrade``'s closing ``OLD -> NEW`` versions line write to stdout. Exit status: 0 on success, 1 on any error; ``status`` exits
3 when edge is not running (the LSB convention that init scripts expect).
"""

import argparse
import os
import signal
import sys
import time

# The directory `edge` was started in, before -p moved us: a binary upgrade execs the
# same command line from there, so relative arguments keep their meaning.
START_CWD = os.getcwd()

DEFAULT_CONF = os.path.join("conf", "edge.conf")  # relative to the cwd, or -p PREFIX
SYSTEM_CONF = "/etc/edge/edge.conf"

SIGNALS = {
    "stop": signal.SIGTERM,    # fast stop
    "quit": signal.SIGQUIT,    # graceful stop
    "reload": signal.SIGHUP,   # load the config again
    "reopen": signal.SIGUSR1,  # reopen the log files
    "upgrade": signal.SIGUSR2,  # binary upgrade (the whole sequence, see upgrade())
}

# `edge -s upgrade`: how long each step may take.
UPGRADE_START_TIMEOUT = 30.0   # the new master is up and its workers serve
UPGRADE_NOTICE_TIMEOUT = 5.0   # the old master has reacted to USR2 at all
UPGRADE_MARGIN = 5.0           # on top of worker_shutdown_timeout for WINCH and QUIT

EXIT_NOT_RUNNING = 3


def build_parser():
    parser = argparse.ArgumentParser(
        prog="edge",
        description="edge: an API gateway and edge server with an nginx-style config.",
        epilog=f"Without -c, the config is {DEFAULT_CONF} if it exists, else {SYSTEM_CONF}. "
               "The access logs: edge logs query \"SQL\" and edge logs tail "
               "(edge logs -h). Password hashes for the consumers file: "
               "edge consumers hash-password. The admin API: edge admin "
               "status|routes|upstreams|consumers|history [--json], set-peer, apply FILE, "
               "rollback GEN (docs/admin.md).",
    )
    parser.add_argument("command", nargs="?", choices=["status", "drain", "undrain"],
                        help="status: show whether the master in the pid file runs, its "
                             "workers and readiness; drain/undrain: set or clear the drain "
                             "flag (readiness answers 503 while draining; traffic flows)")
    parser.add_argument("-c", dest="conf", metavar="FILE", help="configuration file")
    parser.add_argument("-p", dest="prefix", metavar="PREFIX",
                        help="prefix directory: relative paths (and the default "
                             "config) are taken from here")
    parser.add_argument("-t", dest="test", action="store_true",
                        help="test the configuration and exit")
    parser.add_argument("-T", dest="dump", action="store_true",
                        help="test the configuration, dump it to stdout and exit")
    parser.add_argument("-q", dest="quiet", action="store_true",
                        help="with -t: print errors only")
    parser.add_argument("-s", dest="signal", choices=list(SIGNALS), metavar="SIGNAL",
                        help="send a signal to the master: " + ", ".join(SIGNALS))
    parser.add_argument("-v", dest="version", action="store_true",
                        help="show the version and exit")
    parser.add_argument("-V", dest="version_long", action="store_true",
                        help="show the version and build details and exit")
    return parser


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["logs"]:
        # Its own parser (query/tail and their options); it needs no compiled code.
        from edge import logs
        return logs.main(argv[1:])
    if argv[:1] == ["admin"] or (argv[:1] == ["-c"] and argv[2:3] == ["admin"]):
        # edge [-c FILE] admin status|routes|upstreams|consumers: over the admin API
        from edge import admin_cli
        i = argv.index("admin")
        return admin_cli.main(argv[:i] + argv[i + 1:])
    if argv[:2] == ["config", "rollback"] or (argv[:1] == ["-c"] and argv[2:4] == ["config", "rollback"]):
        # edge [-c FILE] config rollback GEN: POST /config/rollback over the admin API
        from edge import admin_cli
        i = argv.index("config")
        return admin_cli.main(argv[:i] + argv[i + 1:])
    if argv[:1] == ["consumers"]:
        # hash-password: the standard library only, no compiled code.
        from edge.modules import consumers
        return consumers.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    testing = args.test or args.dump
    if sum(map(bool, (testing, args.signal, args.command))) > 1:
        parser.error("choose one of -t/-T, -s and status/drain/undrain")

    if args.version or args.version_long:
        return show_version(long=args.version_long)

    if args.prefix:
        try:
            os.chdir(args.prefix)
        except OSError as e:
            _say("emerg", f'chdir() to "{args.prefix}" failed ({e.errno}: {e.strerror})')
            return 1
    conf = config_path(args.conf)

    if testing:
        return test_config(conf, dump=args.dump, quiet=args.quiet)
    if args.signal == "upgrade":
        return upgrade(conf)
    if args.signal:
        return send_signal(conf, args.signal)
    if args.command == "status":
        try:
            return status(conf)
        except BrokenPipeError:
            # `edge status | head`: the reader left. Point stdout at /dev/null so the
            # interpreter's final flush does not raise again, and exit as `cat` would.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
    if args.command in ("drain", "undrain"):
        return set_draining(conf, args.command == "drain")

    from edge import master
    return master.run(conf, exec_argv=_exec_argv(conf), exec_cwd=START_CWD,
                      exec_args=list(argv))


def _exec_argv(conf):
    """The command line a binary upgrade execs (``edge.master.new_binary_argv`` lets
    ``EDGE_BINARY`` and ``edge_binary`` win over it).

    - started as the ``edge`` script from a path outside the venv (or prefix) that runs
      it, such as ``/usr/bin/edge`` -> ``/opt/edge/current/bin/edge``: that path itself,
      exec'd directly, so its shebang picks the interpreter of the release the path
      leads to *then* (the new release after ``current`` was flipped);
    - started as a script inside the running venv (``/opt/edge/releases/0.1.0/bin/edge``):
      this interpreter and that script again (the same release: the path pins it);
    - ``python -m edge``: this command line, as the interpreter got it.
    """
    args = sys.argv[1:]
    main_module = sys.modules.get("__main__")
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if getattr(main_module, "__spec__", None) is None and script not in ("", "-c") \
            and os.path.exists(script):
        path = os.path.abspath(script)      # symlinks kept: they are the stable part
        if not _inside(path, sys.prefix) and os.access(path, os.X_OK):
            return [path] + args
        return [sys.executable, path] + args
    argv = list(getattr(sys, "orig_argv", None) or [])
    if len(argv) < 2:
        return [sys.executable, "-m", "edge", "-c", conf]
    argv[0] = sys.executable
    return argv


def _inside(path, prefix):
    prefix = os.path.abspath(prefix)
    return path == prefix or path.startswith(prefix.rstrip(os.sep) + os.sep)


def config_path(given):
    """The absolute path of the config: -c, else conf/edge.conf here, else /etc."""
    if given:
        return os.path.abspath(given)
    if os.path.exists(DEFAULT_CONF):
        return os.path.abspath(DEFAULT_CONF)
    return SYSTEM_CONF


def _say(level, msg):
    print(f"edge: [{level}] {msg}", file=sys.stderr)


def _load(conf):
    """The cycle for ``conf``, or None after printing the error (file:line)."""
    import edge.cycle
    from edge.config import ConfigError
    try:
        return edge.cycle.load(conf)
    except ConfigError as e:
        _say("emerg", str(e))
        return None


class _PidOnly:
    """What the commands that only need the pid file know of a config that does not
    build (the ``pid`` directive, found in the parsed tree)."""

    def __init__(self, pid_path, worker_shutdown_timeout=None):
        self.pid_path = pid_path
        self.worker_shutdown_timeout = worker_shutdown_timeout


def _load_for_pid(conf):
    """Like _load, but a config that parses and fails only later (an unknown
    directive, a bad value) still yields its ``pid`` path, after a warning: stopping,
    draining or inspecting a running edge must not depend on the file on disk being
    valid (it is the running one that matters)."""
    cycle = _load(conf)
    if cycle is not None:
        return cycle
    from edge.config import ConfigError, parse_file
    try:
        parsed = parse_file(conf)
    except (ConfigError, OSError):
        return None
    for node in parsed.nodes:
        if node.name == "pid" and len(node.args) == 1:
            _say("warn", f"using the pid file {node.args[0]} of the invalid configuration")
            return _PidOnly(node.args[0])
    return None


def test_config(conf, dump=False, quiet=False):
    """``-t``/``-T``: load the config as the master would, without binding anything."""
    cycle = _load(conf)
    if cycle is None:
        print(f"edge: configuration file {conf} test failed", file=sys.stderr)
        return 1
    for warning in cycle.warnings:
        _say("warn", str(warning))
    if not quiet:
        print(f"edge: the configuration file {conf} syntax is ok", file=sys.stderr)
        print(f"edge: configuration file {conf} test is successful", file=sys.stderr)
    if dump:
        from edge.control.api import dump_text   # GET /config prints the same text
        sys.stdout.write(dump_text(cycle.files))
        sys.stdout.flush()
    return 0


def _master_pid(conf, cycle):
    """The running master's pid from the config's pid file, or None after an error."""
    from edge.master import PidFileError, running_master_pid
    if not cycle.pid_path:
        _say("error", f'no pid file is set in {conf} (the "pid" directive)')
        return None
    try:
        return running_master_pid(cycle.pid_path)
    except PidFileError as e:
        _say("error", f"{e}; is edge running?")
        return None


def send_signal(conf, name):
    """``-s NAME``: signal the master of ``conf``.

    The config is loaded first, for its pid file; for ``reload`` that load is also
    the test: a config that does not load is reported here and the running master is
    left alone, still serving the previous one.
    """
    if name == "reload":
        cycle = _load(conf)
        if cycle is None:
            print(f"edge: configuration file {conf} test failed, not reloading",
                  file=sys.stderr)
            return 1
    else:
        cycle = _load_for_pid(conf)
        if cycle is None:
            return 1
    pid = _master_pid(conf, cycle)
    if pid is None:
        return 1
    sig = SIGNALS[name]
    try:
        os.kill(pid, sig)
    except OSError as e:
        _say("alert", f"kill({pid}, {int(sig)}) failed ({e.errno}: {e.strerror})")
        return 1
    return 0


def status(conf):
    """``status``: report the master named by the pid file and its workers."""
    from edge.master import PidFileError, control_pids, running_master_pid, worker_pids
    cycle = _load_for_pid(conf)
    if cycle is None:
        return 1
    if not cycle.pid_path:
        _say("error", f'no pid file is set in {conf} (the "pid" directive)')
        return 1
    try:
        pid = running_master_pid(cycle.pid_path)
    except PidFileError as e:
        print(f"edge is not running: {e}")
        return EXIT_NOT_RUNNING
    workers = worker_pids(pid)
    state = _open_state(cycle.pid_path, quiet=True)
    running = (state.version if state is not None and state.master_pid == pid else "") or "unknown"
    print(f"edge master process {pid} is running (pid file {cycle.pid_path})")
    print(f"  version {running}")
    for worker in workers:
        print(f"  worker process {worker}")
    if not workers:
        print("  no worker processes")
    for control in control_pids(pid):
        print(f"  control process {control}")
    if state is not None:
        ready, reason = state.ready()
        print(f"  generation {state.generation}, workers {state.workers_up}/"
              f"{state.workers_expected} up")
        print(f"  draining: {'yes' if state.draining else 'no'}")
        print(f"  config failed: {'yes' if state.config_failed else 'no'}")
        print(f"  ready: {'yes' if ready else 'no (' + reason + ')'}")
        state.close()
    oldbin = f"{cycle.pid_path}.oldbin"
    if os.path.exists(oldbin):
        old = _open_state(oldbin, quiet=True)
        old_version = (old.version if old is not None else "") or "unknown"
        if old is not None:
            old.close()
        print(f"  binary upgrade under way: old master in {oldbin} (version {old_version})")
    return 0


def _open_state(pid_path, quiet=False):
    """The running master's shared state block (``<pid file>.state``), or None."""
    from edge.master import state_path_for
    path = state_path_for(pid_path)
    try:
        from edge._core.reactor import SharedState
        return SharedState.open(path)
    except (OSError, ValueError) as e:
        if not quiet:
            _say("error", f'cannot open the state file "{path}": {e}')
        return None


def set_draining(conf, on):
    """``drain`` / ``undrain``: set or clear the drain flag in the shared block.

    Only readiness changes (``health ready`` answers 503 while draining); requests keep
    being served, so keepalived or the load balancer can move traffic away first.
    During a binary upgrade both masters' blocks are set.
    """
    cycle = _load_for_pid(conf)
    if cycle is None:
        return 1
    pid = _master_pid(conf, cycle)
    if pid is None:
        return 1
    state = _open_state(cycle.pid_path)
    if state is None:
        return 1
    state.draining = on
    state.close()
    from edge.master import state_path_for
    other = state_path_for(f"{cycle.pid_path}.oldbin")
    if os.path.exists(other):
        old = _open_state(f"{cycle.pid_path}.oldbin", quiet=True)
        if old is not None:
            old.draining = on
            old.close()
    if on:
        _say("notice", f"edge (master {pid}) is draining: readiness answers 503, "
                       "requests are still served")
    else:
        _say("notice", f"edge (master {pid}) is no longer draining")
    return 0


def upgrade(conf):
    """``-s upgrade``: the whole binary upgrade, as an operator would run it by hand.

    1. test the config (a new master that cannot load it would fail anyway);
    2. USR2 to the master; wait until the new master has written the pid file and its
       workers serve (its state block says so);
    3. WINCH to the old master; wait until its workers have finished;
    4. QUIT to the old master; wait until it has exited.
    If the new master fails to start, the old one renames its pid file back and keeps
    serving; this reports it and exits 1.
    """
    cycle = _load(conf)
    if cycle is None:
        print(f"edge: configuration file {conf} test failed, not upgrading", file=sys.stderr)
        return 1
    old = _master_pid(conf, cycle)
    if old is None:
        return 1
    from edge.master import is_edge_process, read_pid_file, PidFileError, worker_pids
    pid_path = cycle.pid_path
    oldbin = f"{pid_path}.oldbin"
    before = _stat_key(pid_path)
    limit = (cycle.worker_shutdown_timeout or 0) + UPGRADE_MARGIN
    old_version = _master_version(pid_path, old)

    _say("notice", f"upgrade: sending USR2 to master {old}")
    if not _kill(old, signal.SIGUSR2):
        return 1

    # Step 2: the new master. The pid file changes twice: renamed to .oldbin by the old
    # master, then written by the new one; or, if the new binary fails, written back by
    # the old master (a new file, so its identity differs from `before`).
    start = time.monotonic()
    new = None
    while True:
        elapsed = time.monotonic() - start
        try:
            current = read_pid_file(pid_path)
        except PidFileError:
            current = None
        if current is not None and current != old and is_edge_process(current):
            new = current
            break
        if (current == old and _stat_key(pid_path) != before
                and not os.path.exists(oldbin)):
            _say("error", f"upgrade: the new binary failed to start; master {old} keeps "
                          "serving (see the error log)")
            return 1
        if current == old and _stat_key(pid_path) == before and elapsed > UPGRADE_NOTICE_TIMEOUT:
            _say("error", f"upgrade: master {old} did not start a new binary "
                          "(see the error log)")
            return 1
        if not _alive(old):
            _say("error", f"upgrade: master {old} exited")
            return 1
        if elapsed > UPGRADE_START_TIMEOUT:
            _say("error", f"upgrade: no new master after {UPGRADE_START_TIMEOUT:g}s")
            return 1
        time.sleep(0.02)
    _say("notice", f"upgrade: new master {new} started, old pid file is {oldbin}")

    if not _wait(lambda: _serves(pid_path, new), UPGRADE_START_TIMEOUT):
        if not _alive(new):
            _say("error", f"upgrade: the new master {new} exited; master {old} keeps serving")
        else:
            _say("error", f"upgrade: the workers of the new master {new} are not all up "
                          f"after {UPGRADE_START_TIMEOUT:g}s; the old master {old} still runs "
                          f"(QUIT {new} to roll back, or WINCH and QUIT {old} to go on)")
        return 1
    new_version = _master_version(pid_path, new)
    _say("notice", f"upgrade: new master {new} serves: {old_version} -> {new_version}")
    if new_version == old_version:
        _say("warn", f"upgrade: the new master runs the same version {new_version}: was the "
                     "new release installed, and does the master exec it (the edge script "
                     "from a stable path, EDGE_BINARY or edge_binary; docs/install.md)?")

    # Step 3: the old workers finish what they have and exit; the new ones serve.
    _say("notice", f"upgrade: sending WINCH to old master {old}")
    if not _kill(old, signal.SIGWINCH):
        return 1
    # The new master is a child of the old one too (it forked it); it does not count.
    def old_workers():
        return [pid for pid in worker_pids(old) if pid != new and _alive(pid)]
    if not _wait(lambda: not old_workers(), limit):
        _say("error", f"upgrade: old worker processes {old_workers()} still run after "
                      f"{limit:g}s")
        return 1
    _say("notice", "upgrade: old worker processes have exited")

    # Step 4: retire the old master.
    _say("notice", f"upgrade: sending QUIT to old master {old}")
    if not _kill(old, signal.SIGQUIT):
        return 1
    if not _wait(lambda: _exited(old), limit):
        _say("error", f"upgrade: old master {old} still runs after {limit:g}s")
        return 1
    _say("notice", f"upgrade: done, master {new} serves")
    print(f"{old_version} -> {new_version}")
    return 0


def _master_version(pid_path, pid):
    """The version the master ``pid`` wrote in its state block, or "unknown"."""
    state = _open_state(pid_path, quiet=True)
    if state is None:
        return "unknown"
    try:
        return (state.version if state.master_pid == pid else "") or "unknown"
    finally:
        state.close()


def _stat_key(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _alive(pid):
    from edge.master import is_edge_process
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    if stat[stat.rfind(b")") + 2:].split()[:1] in ([b"Z"], [b"X"]):
        return False  # exited, not reaped yet
    return is_edge_process(pid)


def _exited(pid):
    """True once ``pid`` has finished exiting (gone, or a zombie), or is no longer edge.
    Not _alive(): while a process exits its command line reads empty (its memory is
    released first) some time before it becomes a zombie, and "done" must mean gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        return True
    except PermissionError:
        return False
    if stat[stat.rfind(b")") + 2:].split()[:1] in ([b"Z"], [b"X"]):
        return True
    return bool(cmdline) and b"edge" not in cmdline     # the pid was given to another


def _serves(pid_path, pid):
    state = _open_state(pid_path, quiet=True)
    if state is None:
        return False
    try:
        return (state.master_pid == pid and state.generation > 0
                and state.workers_expected > 0
                and state.workers_up >= state.workers_expected)
    finally:
        state.close()


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError as e:
        _say("alert", f"kill({pid}, {int(sig)}) failed ({e.errno}: {e.strerror})")
        return False
    return True


def show_version(long=False):
    from edge.master import version  # light: master defers its heavy imports
    print(f"edge version: edge/{version()}", file=sys.stderr)
    if long:
        print(f"python: {sys.version.split()[0]} ({sys.executable})", file=sys.stderr)
        try:
            import uvloop
            print(f"uvloop: {uvloop.__version__}", file=sys.stderr)
        except ImportError:
            print("uvloop: not installed", file=sys.stderr)
        print(f"default config: {DEFAULT_CONF} if present, else {SYSTEM_CONF}",
              file=sys.stderr)
    return 0
