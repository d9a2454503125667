"""The error log, shared by the master and the workers.

Lines look like nginx's::

    2026/11/26 05:40:00 [notice] 1234#0: start worker process 1235

Every line is written with a single ``os.write`` on a descriptor opened with
``O_APPEND``, so lines written by many processes into the same file never interleave
(the kernel appends each write whole). Nothing is buffered in user space: a worker that
dies right after logging has still logged.

The state is per process: the master opens the log from the config, and a forked
worker inherits the open descriptor, so it can call ``error()`` with no setup.
Levels, least to most severe: debug, info, notice, warn, error, crit, alert, emerg;
``error_log FILE LEVEL`` keeps LEVEL and everything more severe.
"""

import os
import sys
import time

LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")
_SEVERITY = {name: rank for rank, name in enumerate(LEVELS)}

STDERR = "stderr"

# Per-process state. Before open_error_log() is called, log notices and worse to
# stderr so that nothing said during startup is lost.
_target = STDERR
_fd = 2
_threshold = _SEVERITY["notice"]
_pid = os.getpid()


def _refresh_pid():
    global _pid
    _pid = os.getpid()


# getpid() is a system call; cache it and refresh it in every forked child.
os.register_at_fork(after_in_child=_refresh_pid)


def severity(level):
    """The rank of ``level`` (higher is more severe); ValueError if it is not a level."""
    try:
        return _SEVERITY[level]
    except KeyError:
        raise ValueError(f'invalid log level "{level}"') from None


def _open(path):
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def open_error_log(target, level="error"):
    """Send this process's log to ``target`` (a path, or ``"stderr"``) at ``level``.

    Raises OSError if the file cannot be opened; the previous log is then kept.
    """
    global _target, _fd, _threshold
    threshold = severity(level)
    fd = 2 if target == STDERR else _open(target)
    old_fd = _fd
    _target, _fd, _threshold = target, fd, threshold
    if old_fd != 2 and old_fd != fd:
        os.close(old_fd)


def reopen():
    """Reopen the log file (after logrotate moved it away); USR1 does this.

    The new file is dup2()ed onto the old descriptor number, so the descriptor that
    anyone captured (a child forked later, a redirected stderr) follows the new file.
    Raises OSError if the file cannot be opened; the old one is kept then.
    """
    if _target == STDERR:
        return
    fd = _open(_target)
    try:
        os.dup2(fd, _fd)
    finally:
        os.close(fd)


def close():
    """Go back to logging on stderr (used at exit and in tests)."""
    global _target, _fd
    if _fd != 2:
        os.close(_fd)
    _target, _fd = STDERR, 2


def target():
    """The current log target: a path or ``"stderr"``."""
    return _target


def enabled(level):
    """True if a message at ``level`` would be written (skip building costly ones)."""
    return _SEVERITY[level] >= _threshold


def format_line(level, msg, when=None):
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(when))
    # nginx writes pid#tid; edge processes are single-threaded, so tid is 0.
    return f"{stamp} [{level}] {_pid}#0: {msg}\n"


def error(level, msg):
    """Write ``msg`` at ``level`` to the error log, as one whole line."""
    if _SEVERITY[level] < _threshold:
        return
    _write_all(_fd, format_line(level, msg).encode("utf-8", "backslashreplace"))


def console(level, msg):
    """Print ``edge: [level] msg`` on stderr: the form the command line speaks in."""
    sys.stderr.flush()  # keep order with anything Python has buffered for stderr
    _write_all(2, f"edge: [{level}] {msg}\n".encode("utf-8", "backslashreplace"))


def report(level, msg):
    """Say ``msg`` both on the console and in the error log, without printing it
    twice when the error log is stderr. For startup and fatal errors, which the
    operator must see where they ran the command."""
    console(level, msg)
    if _target != STDERR:
        error(level, msg)


def _write_all(fd, data):
    # A regular file takes an O_APPEND write whole; a pipe or a tty may take part of
    # it. Finish the line rather than lose its tail, and never raise out of logging.
    try:
        while data:
            written = os.write(fd, data)
            data = data[written:]
    except OSError:
        pass
