"""Process-wide settings: workers, pid file, error log, shutdown."""

import os

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


DIRECTIVES = [
    Directive("worker_processes", (MAIN,), (1, 1), parse=_worker_processes, default="auto",
              syntax="worker_processes number | auto;",
              doc="How many worker processes serve traffic; `auto` is one per CPU core."),
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


def worker_count(main):
    value = main.get("worker_processes")
    return (os.cpu_count() or 1) if value == "auto" else value


def compile_main(main, runtime):
    events = main.blocks("events")
    runtime.plan.worker_connections = events[0].get("worker_connections") if events else 1024
    runtime.plan.shutdown_timeout_ms = int(main.get("worker_shutdown_timeout") * 1000)
