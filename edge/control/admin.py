"""The admin listener: a small, strict HTTP/1.1 server on asyncio streams.

It serves operators and scrapers, not the public, so it takes the narrow path through
HTTP/1.1 and refuses anything else with a clear status and a closed connection:

- a request head is at most MAX_HEAD bytes (431 beyond), and must arrive within
  READ_TIMEOUT; an idle keep-alive connection is closed after the same time;
- request line `METHOD SP /target SP HTTP/1.x`; header names are tokens, no space
  before the colon, no obsolete line folding, no control bytes in values: else 400;
  HTTP/1.1 requires exactly one Host; HTTP/2+ is 505;
- a body only with Content-Length (at most MAX_BODY, else 413); Transfer-Encoding is
  501, as the endpoints take no streamed body;
- keep-alive as HTTP/1.1 says (HTTP/1.0 with `Connection: keep-alive`); pipelined
  requests are answered in order; HEAD is GET without the body;
- unknown path 404, known path with another method 405 with `Allow`;
- with `admin_allow`, a TCP peer outside its networks gets 403 to every request (its
  head is read, so that it hears why, and the connection is closed);
- with a token (`admin_token` or `admin_token_file`), every request (known path or not,
  so that nothing is learnt without it) needs `Authorization: Bearer TOKEN`, compared in
  constant time: else 401;
- at most MAX_CONNECTIONS at once; more are closed at accept.

The endpoints are edge/control/api.py's route table (plus /metrics, here). Error bodies
are JSON: `{"error": "..."}`, with `"field"` when one part of the request is at fault.

The socket is bound with SO_REUSEADDR and SO_REUSEPORT, so that during a binary upgrade
the old and the new master's control processes can hold the same address. A unix
socket path is taken over (unlinked and bound again) by the newest control process,
and removed at stop only if it is still the one this process bound.
"""

import asyncio
import dataclasses
import errno
import hmac
import inspect
import os
import re
import socket
import stat
from email.utils import formatdate
from http import HTTPStatus

from edge import log
from edge.control import api, dashboard, metrics
from edge.control.api import Response, json_response  # noqa: F401 (re-exported)

MAX_HEAD = 8192
MAX_BODY = 1 << 20
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 128
BACKLOG = 128

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f-\xff#]")


class HTTPError(Exception):
    """A request the server refuses; the connection is closed after the answer."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.path, _, self.query = target.partition("?")
        self.params = {}                # path parameters of the matched route
        self.args = {}                  # query arguments, {name: last value}
        self.peer = None                # the TCP peer's address text, None on a unix socket
        self.version = version          # (1, 0) or (1, 1)
        self.headers = headers          # [(lower-case name, value)]
        self.body = b""

    def header(self, name):
        values = [v for k, v in self.headers if k == name]
        return values[0] if values else None

    def tokens(self, name):
        return {t.strip().lower() for k, v in self.headers if k == name for t in v.split(",")}

    @property
    def keep_alive(self):
        connection = self.tokens("connection")
        if self.version >= (1, 1):
            return "close" not in connection
        return "keep-alive" in connection


def error_response(status, message, headers=()):
    return api.api_error(status, message, None, headers)


def parse_head(head):
    """A Request from the bytes of a head (ending with CRLF CRLF); HTTPError if bad."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HTTPError(400, "bad request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HTTPError(400, "bad method")
    m = _VERSION.fullmatch(version)
    if m is None:
        raise HTTPError(400, "bad HTTP version")
    if m.group(1) != b"1":
        raise HTTPError(505, "HTTP version not supported")
    if not target.startswith(b"/") or _BAD_TARGET.search(target):
        raise HTTPError(400, "bad request target")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HTTPError(400, "bad header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HTTPError(400, "bad header value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    request = Request(method.decode("ascii"), target.decode("ascii"),
                      (1, int(m.group(2))), headers)
    hosts = [v for k, v in headers if k == "host"]
    if len(hosts) > 1 or (request.version >= (1, 1) and not hosts):
        raise HTTPError(400, "exactly one Host header is required")
    if any(k == "transfer-encoding" for k, _ in headers):
        raise HTTPError(501, "Transfer-Encoding is not supported")
    return request


def content_length(request):
    values = {v for k, v in request.headers if k == "content-length"}
    if not values:
        return 0
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise HTTPError(400, "bad Content-Length")
    length = int(next(iter(values)))
    if length > MAX_BODY:
        raise HTTPError(413, "request body too large")
    return length


def encode(response, head_only=False, keep_alive=True, version=(1, 1)):
    reason = HTTPStatus(response.status).phrase
    lines = [f"HTTP/1.1 {response.status} {reason}",
             f"Date: {formatdate(usegmt=True)}",
             "Server: edge",
             f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}",
             "Cache-Control: no-store"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if not keep_alive:
        lines.append("Connection: close")
    elif version < (1, 1):
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def authorized(request, token):
    if token is None:
        return True
    value = request.header("authorization") or ""
    scheme, _, given = value.partition(" ")
    # compare_digest: the time taken must not tell how much of a guess was right
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("latin-1"), token.encode("latin-1"))


# --------------------------------------------------------------------------- sockets


def bind(address):
    """A listening, non-blocking socket for an AdminAddress; OSError if it fails.
    Returns (socket, inode of the unix socket file or None)."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        if address.family == socket.AF_UNIX:
            try:
                st = os.lstat(address.path)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode):
                    raise OSError(17, f"{address.path} exists and is not a socket")
                # A stale socket of a dead control process, or the old master's during
                # an upgrade: the newest control process takes the path.
                os.unlink(address.path)
            sock.bind(address.path)
            inode = os.stat(address.path).st_ino
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if address.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address.host, address.port))
            inode = None
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, inode


# With `user`, the master binds the admin listener (as root: a port below 1024, a socket
# in a root-owned directory) and hands it over: at fork (``handed_over``), and on a reload
# that changes the address, over the handoff socket (one datagram per listener: its key,
# the descriptor as SCM_RIGHTS). address key -> socket.
_HANDED = {}
_HANDOFF = None


def handed_over(sockets, handoff):
    """In the control process, before it drops privileges: the listeners the master
    bound for it, and the socket later ones arrive on (or None)."""
    global _HANDOFF
    _HANDED.update(sockets)
    _HANDOFF = handoff
    if handoff is not None:
        handoff.setblocking(False)


def _receive_handed():
    while _HANDOFF is not None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(_HANDOFF, 1024, 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.error("alert", f"admin listener: reading the master's handoff failed: {e}")
            return
        if not fds:
            if not data:
                return
            continue
        key = data.decode("utf-8", "replace")
        for fd in fds[1:]:
            os.close(fd)
        old = _HANDED.pop(key, None)
        if old is not None:
            old.close()
        _HANDED[key] = socket.socket(fileno=fds[0])


def take_handed(address):
    """The socket the master bound for ``address``, or None (then the control process
    binds it itself)."""
    _receive_handed()
    sock = _HANDED.pop(address.key, None)
    for key in list(_HANDED):           # a listener of an earlier address: not needed
        _HANDED.pop(key).close()
    if sock is not None:
        sock.setblocking(False)
    return sock


class _Listener:
    """One bound admin address and its asyncio server."""

    def __init__(self, address, sock, inode, server):
        self.address = address
        self.sock = sock
        self.inode = inode
        self.server = server

    def close(self):
        self.server.close()
        if self.inode is not None:
            try:
                if os.stat(self.address.path).st_ino == self.inode:
                    os.unlink(self.address.path)
            except OSError:
                pass


class _Connection:
    def __init__(self, writer):
        self.writer = writer
        self.busy = False
        self.task = asyncio.current_task()
        self.peer = None


class AdminServer:
    """The admin listener as a control-process service (see edge.control.services)."""

    def __init__(self, ctx, cycle):
        self.ctx = ctx
        self.settings = cycle.admin
        self.listener = None
        self.connections = set()
        self.closing = False
        self.api = api.AdminAPI(ctx, cycle)
        self.routes = (self.api.routes + [api.Route("GET", "/metrics", self.get_metrics)]
                       + dashboard.routes(self))

    # -- service ---------------------------------------------------------------------

    async def start(self):
        if self.settings is not None:
            await self._listen(self.settings.address)

    async def reload(self, cycle):
        self.api.cycle = cycle
        new = cycle.admin
        old = self.settings
        if new is None:
            self.settings = None
            self._close_listener()
            return
        if self.listener is None or self.listener.address != new.address:
            if await self._listen(new.address):
                self.settings = new
                return
            if self.listener is not None and old is not None:
                # The old address keeps serving; the new token applies at once (it
                # may have been changed because the old one leaked).
                self.settings = dataclasses.replace(new, address=old.address)
                return
        self.settings = new

    async def stop(self):
        """Close the listener, answer what is being answered, close idle
        connections."""
        self.closing = True
        self._close_listener()
        for conn in list(self.connections):
            if not conn.busy:
                conn.task.cancel()
        while any(conn.busy for conn in self.connections):
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.task.cancel()

    # -- sockets -----------------------------------------------------------------------

    async def _listen(self, address):
        """Bind `address` and serve it, replacing the current listener; False (and the
        reason in the error log) if the bind fails."""
        sock, inode = take_handed(address), None     # the master's socket is not unlinked here
        try:
            if sock is None:
                sock, inode = bind(address)
        except OSError as e:
            keep = f", the admin listener stays on {self.listener.address.key}" if self.listener else ""
            hint = ""
            if e.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
                hint = (f" (the control process runs as uid {os.geteuid()}, from the `user` "
                        "directive; the master, which binds the listener for it, could not "
                        "either: see its message; docs/admin.md)")
            log.error("emerg", f"admin_listen {address.key}: bind() failed "
                               f"({e.errno}: {e.strerror}){keep}{hint}")
            return False
        try:
            if address.family == socket.AF_UNIX:
                server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_HEAD)
            else:
                server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)
        except OSError as e:
            sock.close()
            log.error("emerg", f"admin_listen {address.key}: {e}")
            return False
        self._close_listener()
        self.listener = _Listener(address, sock, inode, server)
        log.error("notice", f"admin listener on {address.key}")
        return True

    def _close_listener(self):
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    # -- connections -------------------------------------------------------------------

    async def _serve(self, reader, writer):
        if self.closing or len(self.connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        conn = _Connection(writer)
        self.connections.add(conn)
        peer = writer.get_extra_info("peername")
        conn.peer = peer[0] if isinstance(peer, tuple) and peer else None
        try:
            await self._requests(conn, reader, writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.TimeoutError):
            pass
        except Exception as e:  # a bug here costs one connection, never the server
            log.error("alert", f"admin listener: {e!r}")
        finally:
            self.connections.discard(conn)
            writer.close()

    async def _requests(self, conn, reader, writer):
        while not self.closing:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except asyncio.IncompleteReadError as e:
                if e.partial.strip():
                    await self._send(writer, error_response(400, "incomplete request"), False)
                return
            except asyncio.LimitOverrunError:
                await self._send(writer, error_response(431, "request head too large"), False)
                return
            except asyncio.TimeoutError:
                return   # slow or idle: close without a word, as for a keep-alive timeout
            conn.busy = True
            settings = self.settings
            if conn.peer is not None and settings is not None and not settings.allows(conn.peer):
                # admin_allow: whatever the request, 403 and the connection closed
                await self._send(writer, error_response(403, "forbidden"), False)
                return
            head = head.lstrip(b"\r\n")   # RFC 9112 2.2: ignore empty lines before a request
            try:
                request = parse_head(head)
                request.peer = conn.peer
                length = content_length(request)
                if length:
                    request.body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
            except HTTPError as e:
                await self._send(writer, error_response(e.status, e.message), False)
                return
            response = await self.respond(request)
            keep = request.keep_alive and not self.closing
            await self._send(writer, response, keep, request.method == "HEAD", request.version)
            conn.busy = False
            if not keep:
                return

    async def _send(self, writer, response, keep_alive, head_only=False, version=(1, 1)):
        writer.write(encode(response, head_only, keep_alive, version))
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)

    # -- routes ------------------------------------------------------------------------

    async def respond(self, request):
        settings = self.settings
        token = settings.token if settings is not None else None
        if not authorized(request, token) and not dashboard.public(request):
            return error_response(401, "unauthorized", [("WWW-Authenticate", 'Bearer realm="edge"')])
        route, found = api.find(self.routes, request)
        if route is None:
            if not found:
                return error_response(404, "not found")
            return error_response(405, "method not allowed", [("Allow", ", ".join(sorted(found)))])
        request.params = found
        args = api.parse_args(request.query)
        if args is None:
            return api.api_error(400, "the query string is not valid UTF-8 form data", "query")
        request.args = args
        try:
            response = route.handler(request)
            if inspect.isawaitable(response):
                response = await response
            return response
        except Exception as e:
            log.error("alert", f"admin listener: {request.method} {request.path} failed: {e!r}")
            return error_response(500, "internal error")

    def _peers_in_force(self):
        service = self.ctx.upstreams() if hasattr(self.ctx, "upstreams") else None
        if service is None:
            return None
        try:
            return service.peers_in_force()
        except Exception as e:  # a scrape must not fail on it
            log.error("error", f"control process: upstream peers for /metrics failed: {e!r}")
            return None

    def get_metrics(self, request):
        ctx = self.ctx
        zones = ctx.zones
        shared = ctx.shared
        text = metrics.render(
            zones.snapshot() if zones is not None else None,
            {"generation": shared.generation, "reloads_ok": shared.reloads_ok,
             "reloads_failed": shared.reloads_failed,
             "worker_restarts": shared.worker_restarts},
            ctx.dropped(),
            getattr(zones, "BUCKETS", metrics.DEFAULT_BUCKETS),
            ctx.limit_sync(),
            self._peers_in_force(),
            self._ssl_sessions())
        return Response(200, text.encode("utf-8"), metrics.CONTENT_TYPE)

    def _ssl_sessions(self):
        for service in self.ctx.services:
            collect = getattr(service, "ssl_session_metrics", None)
            if collect is None:
                continue
            try:
                return collect()
            except Exception as e:  # a scrape must not fail on it
                log.error("error", f"control process: TLS session metrics failed: {e!r}")
        return None
