"""systemd's notification protocol (sd_notify), without libsystemd.

systemd passes the path of an ``AF_UNIX`` datagram socket in ``NOTIFY_SOCKET``; the
service sends newline-separated ``KEY=VALUE`` assignments to it, one datagram per
notification. A path that starts with ``@`` names a socket in the abstract namespace
(the ``@`` stands for the leading NUL byte). When the variable is unset (not running
under systemd, or ``Type=`` is not notify) every call here does nothing.

edge sends:

- ``READY=1`` once the listeners are bound and the workers are up;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a reload starts, then ``READY=1`` once
  the new generation serves (or the reload failed and the old one still does);
- ``STOPPING=1`` when a stop begins;
- ``MAINPID=<pid>`` (with ``READY=1``) from a new master after a binary upgrade, once it
  has written the pid file, and from the old master again after a rollback.

The variable is left in the environment on purpose: a new master exec'd by a binary
upgrade must reach the same socket. Workers never notify.
"""

import os
import socket
import time

ENV = "NOTIFY_SOCKET"


def monotonic_usec():
    """CLOCK_MONOTONIC in microseconds: the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _address(value):
    if value.startswith("@"):
        return "\0" + value[1:]     # abstract namespace
    return value


class Notifier:
    """Sends notifications to ``NOTIFY_SOCKET`` (or to ``address`` when given)."""

    def __init__(self, address=None):
        if address is None:
            address = os.environ.get(ENV) or None
        # Only AF_UNIX paths and abstract names are supported; systemd also allows
        # "vsock:" addresses, for VMs talking to their host, which edge has no use for.
        if address is not None and not (address.startswith("/") or address.startswith("@")):
            address = None
        self.address = _address(address) if address else None
        self.sent = []              # what was sent, for logs and tests in-process
        self._failed = False        # a failure was logged already

    @property
    def enabled(self):
        return self.address is not None

    def notify(self, **fields):
        """Send one datagram, e.g. ``notify(READY=1, STATUS="serving")``.

        Returns True if it was sent. A failure is not an error for the caller: the
        service keeps serving whether or not systemd heard about it.
        """
        if self.address is None:
            return False
        message = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            # Never blocking: the kernel queues only net.unix.max_dgram_qlen datagrams
            # (10 by default) on a socket nobody reads, and a blocking send would stop
            # the master's loop, and its reloads and respawns with it. A full or missing
            # socket drops the message, logged once.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                               | socket.SOCK_NONBLOCK) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                try:
                    from edge import log
                    log.error("warn", f"sd_notify to {self.address!r} failed ({e.strerror or e}); "
                                      "this and later notifications that fail are dropped")
                except Exception:
                    pass
            return False
        self.sent.append(message)
        return True

    def ready(self, status=None):
        fields = {"READY": 1}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def reloading(self):
        # systemd (>= 253) wants MONOTONIC_USEC with RELOADING=1, to tell this reload
        # from a stale one; older versions ignore the field.
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self):
        return self.notify(STOPPING=1)

    def mainpid(self, pid, status=None):
        fields = {"MAINPID": pid, "READY": 1}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def status(self, text):
        return self.notify(STATUS=text)
