"""Real log collectors for the log-shipping tests, on asyncio, in the test's own loop:
a UDP syslog server, a TCP syslog server (RFC 6587 octet counting) and an HTTP
collector that receives POSTed batches. Each listens on a real socket on 127.0.0.1 and
keeps exactly what it received.

They can go down and come back on the same port (``stop()`` closes the listener and
aborts every open connection, as a crashed server would), and the HTTP collector can
answer with any status, stall (accept, read the request and never answer), or close a
keep-alive connection right after answering without saying so (an idle timeout).
"""

import asyncio
import re


class UdpSyslogServer:
    def __init__(self):
        self.datagrams = []       # bytes, one per datagram
        self.port = None
        self._transport = None
        self._arrived = asyncio.Event()

    async def start(self, port=0):
        loop = asyncio.get_running_loop()
        server = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                server.datagrams.append(data)
                server._arrived.set()

        self._transport, _ = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", port))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    async def wait_for(self, count, timeout=5.0):
        """Wait until ``count`` datagrams arrived; return them."""
        async with asyncio.timeout(timeout):
            while len(self.datagrams) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.datagrams

    def stop(self):
        self._transport.close()


class _StreamServer:
    """A TCP server that can be stopped with its connections and restarted on its port."""

    def __init__(self):
        self.port = None
        self.connections = 0      # accepted so far
        self._server = None
        self._writers = set()
        self._changed = asyncio.Event()

    async def start(self, port=None):
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port or self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader, writer):
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def handle(self, reader, writer):
        raise NotImplementedError

    def _notify(self):
        self._changed.set()

    async def _wait(self, predicate, timeout):
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def stop(self):
        """Go down: close the listener and abort every connection (RST)."""
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()


class TcpSyslogServer(_StreamServer):
    """Reads RFC 6587 octet-counted frames: ``LEN SP MSG``."""

    def __init__(self):
        super().__init__()
        self.messages = []        # the MSG part of each frame
        self.errors = []          # framing errors seen

    async def handle(self, reader, writer):
        while True:
            try:
                length = await reader.readuntil(b" ")
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    self.errors.append(f"torn frame length {e.partial!r}")
                return
            if not re.fullmatch(rb"[1-9][0-9]* ", length):
                self.errors.append(f"bad frame length {length!r}")
                return
            self.messages.append(await reader.readexactly(int(length)))
            self._notify()

    async def wait_for(self, count, timeout=5.0):
        await self._wait(lambda: len(self.messages) >= count, timeout)
        return self.messages


class HttpCollector(_StreamServer):
    """Receives POSTed batches. ``mode`` decides the answer: an int is the status to
    send (200 by default), "stall" reads the request and never answers."""

    def __init__(self):
        super().__init__()
        self.mode = 200
        self.close_after_answer = False   # close kept-alive connections right after answering, unannounced
        self.batches = []         # (connection number, headers dict, body) of answered 2xx requests
        self.requests = 0         # every request read, whatever the answer

    async def handle(self, reader, writer):
        conn = self.connections
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
            self.requests += 1
            mode = self.mode
            if mode == "stall":
                await asyncio.Event().wait()   # until the connection is aborted
            headers.update({":method": method, ":target": target, ":version": version})
            if 200 <= mode < 300:
                self.batches.append((conn, headers, body))
            reason = b"OK" if mode == 200 else b"Status"
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Length: 3\r\n\r\nok\n" % (mode, reason))
            await writer.drain()
            self._notify()
            if self.close_after_answer:
                return

    def lines(self):
        return [line for _, _, body in self.batches for line in body.split(b"\n")[:-1]]

    async def wait_until(self, predicate, timeout=5.0):
        await self._wait(predicate, timeout)
