"""Upstream groups: weighted round robin, passive and active health checks, names
re-resolved from DNS, keep-alive pools.

Per worker: peers are picked by smooth weighted round robin, skipped after max_fails
failures within fail_timeout, and idle connections are pooled for reuse. The control
process runs the active checks (`health_check`) and re-resolves `server NAME resolve`
names (edge/control/upstreams.py); the workers read both from shared memory."""

import socket
from dataclasses import dataclass

from edge._core.reactor import Upstream
from edge.config import HTTP, UPSTREAM, ConfigError, Directive, types


@dataclass(frozen=True)
class HealthCheck:
    """`health_check` of one upstream. statuses: the codes that pass an http check, as
    ((low, high), ...) ranges; empty means nginx plus's default, any 2xx or 3xx."""
    type: str = "http"
    uri: str = "/"
    host: str = None            # None: the upstream's name (as $proxy_host)
    port: int = 0               # 0: each peer's own port
    interval: float = 5.0
    timeout: float = 5.0
    fails: int = 1
    passes: int = 1
    statuses: tuple = ()

    def status_ok(self, code):
        if not self.statuses:
            return 200 <= code < 400
        return any(low <= code <= high for low, high in self.statuses)


@dataclass(frozen=True)
class ResolverSettings:
    """`resolver` (+ `resolver_timeout`) in force for an upstream group."""
    addresses: tuple            # ((family, ip, port), ...)
    valid: float = None         # None: the answers' TTLs
    ipv6: bool = True
    timeout: float = 30.0


def _server(node):
    address = node.args[0]
    if address.startswith("unix:"):
        raise ConfigError(f'unix sockets are not supported in upstream "{address}"')
    host, port = split_host_port(address, default_port=80)
    weight, max_fails, fail_timeout, resolve = 1, 1, 10.0, False
    for option in node.args[1:]:
        name, _, value = option.partition("=")
        if name == "weight" and value.isdigit() and int(value) > 0:
            weight = int(value)
        elif name == "max_fails" and value.isdigit():
            max_fails = int(value)
        elif name == "fail_timeout":
            fail_timeout = types.parse_time(value)
        elif option == "resolve":
            resolve = True
        else:
            raise ConfigError(f'invalid parameter "{option}"')
    return (host, port, weight, max_fails, fail_timeout, resolve)


def _status_list(text):
    ranges = []
    for item in text.split(","):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ConfigError(f'invalid status "{item}"')
        low, high = int(low), int(high) if dash else int(low)
        if not 100 <= low <= high <= 599:
            raise ConfigError(f'invalid status "{item}"')
        ranges.append((low, high))
    return tuple(ranges)


def _positive_time(name, value):
    t = types.parse_time(value)
    if t <= 0:
        raise ConfigError(f'invalid {name} "{value}"')
    return t


def _health_check(node):
    opts = {}
    for option in node.args:
        name, eq, value = option.partition("=")
        if not eq:
            raise ConfigError(f'invalid parameter "{option}"')
        if name == "type" and value in ("http", "tcp"):
            opts["type"] = value
        elif name == "uri" and value.startswith("/"):
            opts["uri"] = value
        elif name == "host" and value:
            opts["host"] = value
        elif name == "port" and value.isdigit() and 0 < int(value) < 65536:
            opts["port"] = int(value)
        elif name in ("interval", "timeout"):
            opts[name] = _positive_time(name, value)
        elif name in ("fails", "passes") and value.isdigit() and int(value) > 0:
            opts[name] = int(value)
        elif name == "status":
            opts["statuses"] = _status_list(value)
        else:
            raise ConfigError(f'invalid parameter "{option}"')
    if opts.get("type") == "tcp" and ({"uri", "host", "statuses"} & set(opts)):
        raise ConfigError('"uri", "host" and "status" need type=http')
    return HealthCheck(**opts)


def _resolver(node):
    addresses, valid, ipv6 = [], None, True
    for arg in node.args:
        if arg.startswith("valid="):
            valid = _positive_time("valid", arg[6:])
        elif arg.startswith("ipv6="):
            if arg[5:] not in ("on", "off"):
                raise ConfigError(f'invalid parameter "{arg}"')
            ipv6 = arg[5:] == "on"
        elif "=" in arg:
            raise ConfigError(f'invalid parameter "{arg}"')
        else:
            host, port = split_host_port(arg, default_port=53)
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except socket.gaierror:
                raise ConfigError(f'host not found in resolver "{arg}"')
            for family, _, _, _, sockaddr in infos:
                entry = (family, sockaddr[0], sockaddr[1])
                if entry not in addresses:
                    addresses.append(entry)
    if not addresses:
        raise ConfigError("no name servers defined in resolver")
    return (tuple(addresses), valid, ipv6)


def _is_ip(host):
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def split_host_port(address, default_port):
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
    else:
        host, port_text = address, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f'invalid port in "{address}"')
    return host, int(port_text)


DIRECTIVES = [
    Directive("upstream", (HTTP,), (1, 1), multi=True, block=UPSTREAM, syntax="upstream name { ... }",
              doc="A named group of servers that `proxy_pass http://name` balances across."),
    Directive("server", (UPSTREAM,), (1, 5), parse=_server, multi=True,
              syntax="server address[:port] [weight=N] [max_fails=N] [fail_timeout=time] [resolve];",
              doc="A member of the group. After `max_fails` failures within `fail_timeout` "
                  "the server is skipped for `fail_timeout`. With `resolve`, the name is "
                  "re-resolved in the background by the control process through `resolver` "
                  "(its TTL, or `valid=`), and the group follows its addresses without a "
                  "reload; a name that resolves to nothing leaves the server unavailable."),
    Directive("health_check", (UPSTREAM,), (0, 9), parse=_health_check,
              syntax="health_check [type=http|tcp] [uri=path] [host=name] [port=N] "
                     "[interval=time] [timeout=time] [fails=N] [passes=N] [status=list];",
              doc="Active health checks of every server of the group, from the control "
                  "process: every `interval` (5s) an http `GET uri` (`/`, Host `host`, by "
                  "default the group's name) that passes on a 2xx or 3xx status, or on one of "
                  "`status=` (`200,204,300-399`), or a bare TCP connect (`type=tcp`), each "
                  "within `timeout` (5s). `fails` (1) failures in a row mark a server down, "
                  "`passes` (1) successes up again. A server counts as up until its first "
                  "check completes."),
    Directive("resolver", (HTTP, UPSTREAM), (1, None), parse=_resolver,
              syntax="resolver address ... [valid=time] [ipv6=on|off];",
              doc="Name servers (`address[:port]`, port 53 by default) for `server ... "
                  "resolve`. Answers are kept for their TTL, or for `valid=` when set; "
                  "`ipv6=off` asks for A records only (both A and AAAA by default)."),
    Directive("resolver_timeout", (HTTP, UPSTREAM), (1, 1), parse=types.time, default=30.0,
              doc="How long one resolution may take across all name servers (default 30s)."),
    Directive("keepalive", (UPSTREAM,), (1, 1), parse=types.number,
              doc="The most idle connections to this group each worker keeps open for reuse."),
    Directive("keepalive_timeout", (UPSTREAM,), (1, 1), parse=types.time,
              doc="How long an idle upstream connection is kept (default 60s)."),
    Directive("keepalive_requests", (UPSTREAM,), (1, 1), parse=types.number,
              doc="The most requests sent over one upstream connection (default 1000)."),
]


def compile_http(http, runtime):
    for conf in http.blocks("upstream"):
        name = conf.args[0]
        if name in runtime.upstreams:
            raise ConfigError(f'duplicate upstream "{name}"', conf.file, conf.line)
        servers = conf.local("server")
        if not servers:
            raise ConfigError(f'no servers are inside upstream "{name}"', conf.file, conf.line)
        group = Upstream(name, conf.local("keepalive") or 0)
        # these names also exist at http level for clients: read this block only
        if conf.local("keepalive_timeout") is not None:
            group.keepalive_timeout_ms = int(conf.local("keepalive_timeout") * 1000)
        if conf.local("keepalive_requests") is not None:
            group.keepalive_requests = conf.local("keepalive_requests")
        resolver = conf.get("resolver")
        if resolver is not None:
            group.resolver = ResolverSettings(resolver[0], resolver[1], resolver[2],
                                              conf.get("resolver_timeout"))
        group.health_check = conf.local("health_check")
        for (host, port, weight, max_fails, fail_timeout, resolve), node in zip(servers, conf.node("server")):
            if resolve and not _is_ip(host):
                if resolver is None:
                    raise ConfigError(f'no resolver defined to resolve {host}', node.file, node.line)
                group.add_resolve(host, port, weight, max_fails, fail_timeout)
                continue
            try:
                group.add_peer(host, port, weight, max_fails, fail_timeout)
            except ValueError as e:
                raise ConfigError(str(e), node.file, node.line)
        runtime.upstreams[name] = group
        runtime.plan.add_upstream(group)
