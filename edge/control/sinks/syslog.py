"""The syslog sink.

UDP (the default, nginx's format): one datagram per record, RFC 3164::

    <PRI>Mmm dd hh:mm:ss HOSTNAME TAG: MSG

with local time, the day padded with a space ("Dec  1"), and no HOSTNAME with
``nohostname``. A datagram is sent or lost: there is no retry, but a send the kernel
refused (ECONNREFUSED after an ICMP port unreachable, EMSGSIZE) is counted as dropped.

TCP (``proto=tcp``, edge's addition): RFC 5424 messages framed by octet counting
(RFC 6587 §3.4.1), so a record may hold any byte, newlines included::

    LEN <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - MSG

TIMESTAMP is UTC with milliseconds (``2026-12-01T17:58:04.123Z``), HOSTNAME ``-`` with
``nohostname``, APP-NAME the tag, PROCID the control process's pid. A batch is written
in one go; on a write error or timeout the connection is dropped and the batch is sent
again on a new one after a back-off (so a server may see a record twice, never a torn
frame on the same connection).

The timestamp is the shipping time; the record carries its own request time.
"""

import asyncio
import os
import socket
import time

from .base import Sink, close_writer

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _hostname():
    # nginx lowercases the host name it puts in syslog headers; so does edge.
    return socket.gethostname().lower() or "localhost"


def rfc3164_header(spec, when, hostname):
    """``<PRI>Mmm dd hh:mm:ss HOSTNAME TAG: `` as bytes (local time)."""
    t = time.localtime(when)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    host = f" {hostname}" if spec.hostname else ""
    return f"<{spec.pri}>{stamp}{host} {spec.tag}: ".encode("ascii", "replace")


def rfc5424_header(spec, when, hostname, pid):
    """``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - `` as bytes (UTC, ms)."""
    t = time.gmtime(when)
    ms = int(when * 1000) % 1000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z"
    host = hostname if spec.hostname else "-"
    return f"<{spec.pri}>1 {stamp} {host} {spec.tag} {pid} - - ".encode("ascii", "replace")


def octet_frame(message):
    """RFC 6587 octet counting: the byte length, a space, the message."""
    return b"%d %s" % (len(message), message)


class SyslogSink(Sink):
    def __init__(self, spec):
        super().__init__(spec)
        self._hostname = _hostname()
        self._sock = None                  # UDP
        self._reader = self._writer = None  # TCP

    # -- UDP ---------------------------------------------------------------------

    async def _udp_socket(self):
        spec = self.spec
        if spec.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            address = spec.path
        else:
            loop = asyncio.get_running_loop()
            infos = await asyncio.wait_for(
                loop.getaddrinfo(spec.host, spec.port, type=socket.SOCK_DGRAM), spec.timeout)
            family, type_, proto, _, address = infos[0]
            sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            # Connected: the kernel reports ICMP errors to us and send() needs no address.
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    async def _send_udp(self, batch):
        if self._sock is None:
            self._sock = await self._udp_socket()
        sock = self._sock
        header = rfc3164_header(self.spec, time.time(), self._hostname)
        lost = 0
        for record in batch:
            try:
                sock.send(header + record)
            except BlockingIOError:
                await self._writable(sock)
                try:
                    sock.send(header + record)
                except OSError:
                    lost += 1
            except OSError:
                # ECONNREFUSED reports an earlier datagram that hit a closed port, and
                # EMSGSIZE a record too big for a datagram: this one was not sent.
                lost += 1
        return lost

    async def _writable(self, sock):
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, self.spec.timeout)
        finally:
            loop.remove_writer(sock.fileno())

    # -- TCP ---------------------------------------------------------------------

    async def _connect_tcp(self):
        spec = self.spec
        if spec.path:
            opening = asyncio.open_unix_connection(spec.path)
        else:
            opening = asyncio.open_connection(spec.host, spec.port)
        self._reader, self._writer = await asyncio.wait_for(opening, spec.timeout)

    async def _send_tcp(self, batch):
        # A server that closed its end is seen as EOF on our reader: reconnect before
        # writing into a connection whose data would be lost.
        if self._writer is not None and (self._reader.at_eof() or self._writer.is_closing()):
            await self._close()
        if self._writer is None:
            await self._connect_tcp()
        header = rfc5424_header(self.spec, time.time(), self._hostname, os.getpid())
        self._writer.write(b"".join(octet_frame(header + record) for record in batch))
        await asyncio.wait_for(self._writer.drain(), self.spec.timeout)

    # -- Sink --------------------------------------------------------------------

    async def _send(self, batch):
        if self.spec.proto == "tcp":
            return await self._send_tcp(batch)
        return await self._send_udp(batch)

    async def _close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        writer, self._reader, self._writer = self._writer, None, None
        await close_writer(writer)
