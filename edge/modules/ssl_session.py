"""TLS session resumption across workers (session cache in shared memory, tickets).

nginx's directives: ssl_session_cache (OpenSSL's cache in each worker, or a cache in
shared memory that every worker reads), ssl_session_timeout, ssl_session_tickets and
ssl_session_ticket_key.

The compiled half is edge/_core/tls_sessions.pyx. This module runs after `ssl`, which
builds each server's TlsContext (server.tls); it puts the resumption settings on that
context. Sessions cross workers two ways:

- tickets (on by default): the keys live in a small shared-memory zone made by the master
  and rotated by the control process (edge/control/tickets.py), or come from
  ssl_session_ticket_key files (fixed, never rotated, as in nginx);
- `ssl_session_cache shared:NAME:SIZE`: a zone of sessions keyed by session id
  (TLS 1.2 session ids, and TLS 1.3 resumption when tickets are off).

The zones are files next to the state file (`<state>.ssl.cache.NAME`,
`<state>.ssl.tickets`), made by the master before it forks (prepare) and removed when no
config uses them any more (remove_unused). docs/tls.md, "Session resumption".
"""

import os
from dataclasses import dataclass

from edge.config import HTTP, SERVER, ConfigError, Directive, types
from edge.modules import remove_zone_files

HS = (HTTP, SERVER)
MIN_SHARED = 32 * 1024      # nginx: 8 pages
DEFAULT_TIMEOUT = 300.0
# Test-only: rotate the shared ticket keys every N seconds rather than every
# ssl_session_timeout (read by the master when it prepares the zone).
ROTATE_ENV = "EDGE_TEST_TICKET_ROTATE"


@dataclass(frozen=True)
class SessionCache:
    mode: str               # "off", "none" or "cache"
    builtin: int            # -1: no builtin cache; 0: OpenSSL's default size; N sessions
    shared: tuple           # (name, size) or None

    def __str__(self):
        if self.mode != "cache":
            return self.mode
        words = []
        if self.builtin >= 0:
            words.append("builtin" if self.builtin == 0 else f"builtin:{self.builtin}")
        if self.shared:
            words.append(f"shared:{self.shared[0]}:{self.shared[1]}")
        return " ".join(words)


def _cache(node):
    mode, builtin, shared = None, -1, None
    for arg in node.args:
        if arg in ("off", "none"):
            mode = arg
        elif arg == "builtin":
            builtin = 0
        elif arg.startswith("builtin:") and arg[8:].isdigit():
            builtin = int(arg[8:])
        elif arg.startswith("shared:"):
            name, colon, size = arg[7:].partition(":")
            if not name or not colon:
                raise ConfigError(f'invalid session cache "{arg}"')
            try:
                size = types.parse_size(size)
            except ConfigError:
                raise ConfigError(f'invalid session cache "{arg}"')
            if size < MIN_SHARED:
                raise ConfigError(f'session cache "{arg}" is too small')
            shared = (name, size)
        else:
            raise ConfigError(f'invalid session cache "{arg}"')
    if mode is not None and len(node.args) > 1:
        raise ConfigError(f'invalid session cache "{node.args[1] if node.args[0] == mode else node.args[0]}"')
    if mode is not None:
        return SessionCache(mode, -1, None)
    return SessionCache("cache", builtin, shared)


DIRECTIVES = [
    Directive("ssl_session_cache", HS, (1, 2), parse=_cache, default=SessionCache("none", -1, None),
              syntax="ssl_session_cache off | none | [builtin[:size]] [shared:name:size];",
              doc="Server-side session cache. `shared:NAME:SIZE`: in shared memory, one for "
                  "every worker (about 4,000 sessions per MiB, the oldest evicted first); "
                  "`builtin[:N]`: OpenSSL's cache in each worker, which does not cross "
                  "workers; `none`: sessions may be offered but none is kept; `off`: no "
                  "session reuse by id."),
    Directive("ssl_session_timeout", HS, (1, 1), parse=types.time, default=DEFAULT_TIMEOUT,
              doc="How long a session (cached or in a ticket) may be resumed; also the "
                  "rotation period of the shared ticket keys."),
    Directive("ssl_session_tickets", HS, (1, 1), parse=types.flag, default=True,
              doc="Resumption by session tickets (RFC 5077, TLS 1.3 PSK tickets), with keys "
                  "shared by every worker and rotated by the control process."),
    Directive("ssl_session_ticket_key", HS, (1, 1), multi=True, syntax="ssl_session_ticket_key file;",
              doc="A file of 48 or 80 random bytes (nginx's layout) to encrypt and decrypt "
                  "tickets with: the first file encrypts, all decrypt. Keys from files never "
                  "rotate; they let tickets survive a restart and cross nodes."),
]


def _ticket_keys(conf, runtime):
    """The bytes of the ssl_session_ticket_key files in force, checked (read by the master,
    relative to the main config file's directory, as ssl_certificate)."""
    from edge.modules.ssl import _read
    nodes = conf.nodes_in_force("ssl_session_ticket_key")
    if len(nodes) > 8:
        raise ConfigError("at most 8 ssl_session_ticket_key files", nodes[8].file, nodes[8].line)
    out = []
    for node in nodes:
        data = _read(node, runtime)
        if len(data) not in (48, 80):
            raise ConfigError(f'"{node.args[0]}" must be 48 or 80 bytes', node.file, node.line)
        out.append(data)
    return out


def _state(runtime):
    state = getattr(runtime, "ssl_sessions", None)
    if state is None:
        state = runtime.ssl_sessions = {"zones": {}, "shared_tickets": False, "grace": 0.0}
    return state


def _declare_zone(runtime, cache, conf):
    if cache.shared is None:
        return
    name, size = cache.shared
    zones = _state(runtime)["zones"]
    node = (conf.nodes_in_force("ssl_session_cache") or [None])[0]
    known = zones.get(name)
    if known is not None and known[0] != size:
        raise ConfigError(f'the size {size} of shared memory zone "{name}" conflicts with '
                          f'already declared size {known[0]}',
                          node.file if node else None, node.line if node else None)
    zones.setdefault(name, (size, node.file if node else None, node.line if node else None))


def compile_http(http, runtime):
    _state(runtime)
    _declare_zone(runtime, http.get("ssl_session_cache"), http)
    _ticket_keys(http, runtime)     # a bad key file fails the config wherever it is


def compile_server(conf, server, runtime):
    from edge._core.reactor import install_session_resumption
    cache = conf.get("ssl_session_cache")
    _declare_zone(runtime, cache, conf)
    keys = _ticket_keys(conf, runtime)
    tls = getattr(server, "tls", None)
    if tls is None:
        return
    timeout = conf.get("ssl_session_timeout")
    tickets = conf.get("ssl_session_tickets")
    try:
        install_session_resumption(tls, cache.mode, cache.builtin,
                                   cache.shared[0] if cache.shared else None,
                                   max(1, int(timeout)), tickets, keys)
    except ValueError as e:
        nodes = conf.nodes_in_force("ssl_session_cache") or conf.nodes_in_force("ssl_session_tickets")
        raise ConfigError(str(e), nodes[0].file if nodes else server.file,
                          nodes[0].line if nodes else server.line)
    if tickets and not keys:
        state = _state(runtime)
        state["shared_tickets"] = True
        state["grace"] = max(state["grace"], float(timeout))


# ---- the zones, in the master ------------------------------------------------------------

def prepare(runtime):
    """In the master, before this config is served (and before any worker compiles it):
    make or keep the shared session caches and the ticket key zone it uses."""
    from edge._core.reactor import (prepare_session_cache, prepare_ticket_keys,
                                    session_cache_path, ticket_keys_path)
    state = getattr(runtime, "ssl_sessions", None)
    if state is None:
        return
    for name, (size, _file, _line) in state["zones"].items():
        path = session_cache_path(name)
        if path is not None:
            prepare_session_cache(path, size)
    path = ticket_keys_path()
    if state["shared_tickets"] and path is not None:
        grace = max(1, int(state["grace"]))
        interval = grace
        override = os.environ.get(ROTATE_ENV)
        if override and override.isdigit() and int(override) > 0:
            interval = int(override)
        prepare_ticket_keys(path, interval, grace)


def remove_unused(runtime, prefix=None):
    """Delete the session cache files no config uses any more (their users keep their
    mapping); with runtime None, every file of ours (the master is exiting)."""
    if prefix is None:
        from edge._core.reactor import ssl_zone_prefix
        prefix = ssl_zone_prefix()
    if not prefix:
        return
    state = getattr(runtime, "ssl_sessions", None) if runtime is not None else None
    keep = set()
    if state is not None:
        keep = {"cache." + name for name in state["zones"]} | {"tickets"}
    remove_zone_files(prefix, keep)
