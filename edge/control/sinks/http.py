"""The HTTP sink: batches of JSON lines POSTed to a collector.

Each request carries one batch, one record per line, every line ending with "\\n"
(``Content-Type: application/x-ndjson``, ``Content-Length``). A batch goes out when it
holds ``batch=N`` records or when its oldest record has waited ``flush=TIME``
(default 1 s).

The client is edge's own small HTTP/1.1 client on asyncio streams: one keep-alive
connection, one request at a time, and a timeout (``timeout=TIME``, default 5 s) on
each step (connect, write, read the response), so a collector that accepts and never
answers costs one timeout per attempt, never memory. Outcomes:

- 2xx: delivered.
- 408, 429, 5xx, connection refused or reset, a timeout, a malformed response: sent
  again after a back-off (exponential, 0.1 s doubling to 5 s, jittered).
- any other status (4xx, 3xx: redirects are not followed): the collector refused the
  batch for good; it is dropped, counted and logged.

A keep-alive connection the collector closed while idle is noticed before writing (or
on the first read) and the request is retried once at once on a new connection.
Delivery is therefore at least once: a collector that took a batch but whose answer was
lost may see it again.
"""

import asyncio

from .base import Rejected, Retry, Sink, close_writer

MAX_HEAD = 64 * 1024          # a response head larger than this is malformed
MAX_DRAINED_BODY = 1 << 20    # read (and discard) a response body up to this; else close


class HttpSink(Sink):
    def __init__(self, spec):
        super().__init__(spec)
        self._reader = self._writer = None
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        host_header = host if spec.port == 80 else f"{host}:{spec.port}"
        self._head_template = (
            f"POST {spec.path} HTTP/1.1\r\n"
            f"Host: {host_header}\r\n"
            "User-Agent: edge\r\n"
            "Content-Type: application/x-ndjson\r\n"
            "Content-Length: %d\r\n"
            "\r\n"
        ).encode("ascii")

    async def _send(self, batch):
        body = b"\n".join(batch) + b"\n"
        request = (self._head_template % len(body)) + body
        if self._writer is not None and (self._reader.at_eof() or self._writer.is_closing()):
            await self._close()
        reused = self._writer is not None
        try:
            status, keep_alive = await self._exchange(request)
        except _StaleConnection:
            if not reused:
                raise Retry("connection closed before the response") from None
            await self._close()
            status, keep_alive = await self._exchange(request)
        if not keep_alive:
            await self._close()
        if 200 <= status < 300:
            return 0
        if status in (408, 429) or status >= 500:
            raise Retry(f"HTTP {status}")
        raise Rejected(f"HTTP {status}", len(batch))

    async def _exchange(self, request):
        timeout = self.spec.timeout
        if self._writer is None:
            opening = asyncio.open_connection(self.spec.host, self.spec.port, limit=MAX_HEAD)
            self._reader, self._writer = await asyncio.wait_for(opening, timeout)
        try:
            self._writer.write(request)
            await asyncio.wait_for(self._writer.drain(), timeout)
        except ConnectionResetError:
            raise _StaleConnection() from None
        status, keep_alive, framing = await asyncio.wait_for(self._read_head(), timeout)
        if framing is not None:
            # The answer is known: a body we cannot read in full only costs the
            # connection, never a resend of a delivered batch.
            try:
                await asyncio.wait_for(_skip_body(self._reader, framing), timeout)
            except (Retry, EOFError, OSError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                keep_alive = False
        return status, keep_alive

    async def _read_head(self):
        """Read up to the final (non-1xx) response head. Returns (status, keep_alive,
        framing): framing is "chunked", a Content-Length, or None for no body to read
        (keep_alive is False when the body could only end at close)."""
        reader = self._reader
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise _StaleConnection() from None
                raise Retry("connection closed in the response head") from None
            except ConnectionResetError:
                raise _StaleConnection() from None
            except asyncio.LimitOverrunError:
                raise Retry("response head too large") from None
            status, version, headers = _parse_head(head)
            if status >= 200:
                break
            # 1xx (100 Continue, 103 Early Hints): informational, the answer follows.
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if status in (204, 304):
            return status, keep_alive, None
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower() != "chunked":
                return status, False, None
            return status, keep_alive, "chunked"
        length = headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_DRAINED_BODY:
            return status, False, None  # ends at close, unusable, or not worth reading
        return status, keep_alive, int(length)

    async def _close(self):
        writer, self._reader, self._writer = self._writer, None, None
        await close_writer(writer)


class _StaleConnection(Retry):
    """The connection died before any byte of the response: on a reused keep-alive
    connection that is the collector's idle close, worth one immediate retry."""


def _parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not (
            len(parts[1]) == 3 and parts[1].isdigit()):
        raise Retry(f"malformed status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise Retry("malformed response header")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[0], headers


async def _skip_body(reader, framing):
    if framing != "chunked":
        await reader.readexactly(framing)
        return
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise Retry("malformed chunked response") from None
        if size == 0:
            break
        total += size
        if total > MAX_DRAINED_BODY:
            raise Retry("response body too large")
        await reader.readexactly(size + 2)
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
