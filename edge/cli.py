"""The ``edge`` command line, shaped after nginx's.

    edge                       run the master in the foreground
    edge -t / -T               test the config (and dump every file read)
    edge -s stop|quit|reload|reopen
                               signal the running master named by the config's pid file
    edge status                is the master running, and which workers does it have

Messages go to stderr in nginx's form (``edge: [emerg] ...``); only ``-T``'s dump and
``status`` write to stdout. Exit status: 0 on success, 1 on any error; ``status`` exits
3 when edge is not running (the LSB convention that init scripts expect).
"""

import argparse
import os
import signal
import sys

DEFAULT_CONF = os.path.join("conf", "edge.conf")  # relative to the cwd, or -p PREFIX
SYSTEM_CONF = "/etc/edge/edge.conf"

SIGNALS = {
    "stop": signal.SIGTERM,    # fast stop
    "quit": signal.SIGQUIT,    # graceful stop
    "reload": signal.SIGHUP,   # load the config again
    "reopen": signal.SIGUSR1,  # reopen the log files
}

EXIT_NOT_RUNNING = 3


def build_parser():
    parser = argparse.ArgumentParser(
        prog="edge",
        description="edge: an API gateway and edge server with an nginx-style config.",
        epilog=f"Without -c, the config is {DEFAULT_CONF} if it exists, else {SYSTEM_CONF}.",
    )
    parser.add_argument("command", nargs="?", choices=["status"],
                        help="status: show whether the master in the pid file runs, "
                             "and its workers")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    testing = args.test or args.dump
    if sum(map(bool, (testing, args.signal, args.command))) > 1:
        parser.error("choose one of -t/-T, -s and status")

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
    if args.signal:
        return send_signal(conf, args.signal)
    if args.command == "status":
        return status(conf)

    from edge import master
    return master.run(conf)


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


def test_config(conf, dump=False, quiet=False):
    """``-t``/``-T``: load the config as the master would, without binding anything."""
    cycle = _load(conf)
    if cycle is None:
        print(f"edge: configuration file {conf} test failed", file=sys.stderr)
        return 1
    if not quiet:
        print(f"edge: the configuration file {conf} syntax is ok", file=sys.stderr)
        print(f"edge: configuration file {conf} test is successful", file=sys.stderr)
    if dump:
        out = sys.stdout
        for path, text in cycle.files:
            out.write(f"# configuration file {path}:\n")
            out.write(text)
            out.write("\n" if text.endswith("\n") else "\n\n")
        out.flush()
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
    cycle = _load(conf)
    if cycle is None:
        if name == "reload":
            print(f"edge: configuration file {conf} test failed, not reloading",
                  file=sys.stderr)
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
    from edge.master import PidFileError, running_master_pid, worker_pids
    cycle = _load(conf)
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
    print(f"edge master process {pid} is running (pid file {cycle.pid_path})")
    for worker in workers:
        print(f"  worker process {worker}")
    if not workers:
        print("  no worker processes")
    return 0


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
