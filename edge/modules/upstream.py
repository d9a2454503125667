"""Upstream groups: load balancing, passive and active health checks, names re-resolved
from DNS, keep-alive pools.

Per worker: peers are picked by smooth weighted round robin (the default), `least_conn`,
`hash KEY [consistent]`, `ip_hash`, `random [two [least_conn]]` or `ewma`; `backup` peers serve only
when no primary is available and `down` peers never; a peer is skipped after max_fails
failures within fail_timeout (connection errors, timeouts, and the statuses listed by
`passive_fail_status`); idle connections are pooled for reuse. The control process runs
the active checks (`health_check`) and re-resolves `server NAME resolve` names
(edge/control/upstreams.py); the workers read both from shared memory."""

import socket
from dataclasses import dataclass

from edge._core.reactor import Template, Upstream
from edge.config import HTTP, UPSTREAM, ConfigError, Directive, types

# the balancing directives, and whether each allows `backup` servers (nginx refuses them
# with hash and random)
BALANCERS = {"least_conn": True, "hash": False, "random": False, "ewma": True,
             "ip_hash": False}


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
    weight, max_fails, fail_timeout, backup, down, resolve = 1, 1, 10.0, False, False, False
    for option in node.args[1:]:
        name, _, value = option.partition("=")
        if name == "weight" and value.isdigit() and int(value) > 0:
            weight = int(value)
        elif name == "max_fails" and value.isdigit():
            max_fails = int(value)
        elif name == "fail_timeout":
            try:
                fail_timeout = types.parse_time(value)
            except ConfigError:
                raise ConfigError(f'invalid parameter "{option}"') from None
        elif option == "backup":
            backup = True
        elif option == "down":
            down = True
        elif option == "resolve":
            resolve = True
        else:
            raise ConfigError(f'invalid parameter "{option}"')
    return (host, port, weight, max_fails, fail_timeout, backup, down, resolve)


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


def _hash(node):
    try:
        key = Template.compile(node.args[0])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if len(node.args) == 2 and node.args[1] != "consistent":
        raise ConfigError(f'invalid parameter "{node.args[1]}"')
    return ("hash_consistent" if len(node.args) == 2 else "hash", key)


def _random(node):
    if node.args and node.args[0] != "two":
        raise ConfigError(f'invalid parameter "{node.args[0]}"')
    if len(node.args) == 2 and node.args[1] != "least_conn":
        raise ConfigError(f'invalid parameter "{node.args[1]}"')
    return "random_two" if node.args else "random"


def _statuses(node):
    codes = []
    for arg in node.args:
        if not (arg.isdigit() and len(arg) == 3 and 200 <= int(arg) <= 599):
            raise ConfigError(f'invalid value "{arg}"')
        codes.append(int(arg))
    return codes


DIRECTIVES = [
    Directive("upstream", (HTTP,), (1, 1), multi=True, block=UPSTREAM, syntax="upstream name { ... }",
              doc="A named group of servers that `proxy_pass http://name` balances across."),
    Directive("server", (UPSTREAM,), (1, None), parse=_server, multi=True,
              syntax="server address[:port] [weight=N] [max_fails=N] [fail_timeout=time] "
                     "[backup] [down] [resolve];",
              doc="A member of the group. After `max_fails` failures within `fail_timeout` "
                  "the server is skipped for `fail_timeout`. A `backup` server is used only "
                  "when no primary is available (not with `hash` or `random`); a `down` "
                  "server is never used. With `resolve`, the name is re-resolved in the "
                  "background by the control process through `resolver` (its TTL, or "
                  "`valid=`), and the group follows its addresses without a reload; a name "
                  "that resolves to nothing leaves the server unavailable."),
    Directive("least_conn", (UPSTREAM,), (0, 0),
              doc="Send each request to the server with the fewest requests in progress "
                  "(relative to its weight; counted per worker); ties go by weighted round robin."),
    Directive("hash", (UPSTREAM,), (1, 2), parse=_hash, syntax="hash key [consistent];",
              doc="Send requests with the same key (a value with variables, e.g. "
                  "`$remote_addr`, `$cookie_session`) to the same server. `consistent` uses "
                  "a ketama ring: when a server leaves, only its keys move. nginx's hashes, "
                  "so keys land where nginx puts them."),
    Directive("ip_hash", (UPSTREAM,), (0, 0),
              doc="Send requests from the same client address to the same server: nginx's "
                  "ip_hash (the first three octets of an IPv4 address, the whole IPv6 "
                  "address; `$remote_addr` after realip), so a client lands where nginx "
                  "would put it. When that server is unavailable the hash moves on, as "
                  "nginx's does. No `backup` servers (as nginx). See docs/traffic.md."),
    Directive("random", (UPSTREAM,), (0, 2), parse=_random, syntax="random [two [least_conn]];",
              doc="Send each request to a server drawn at random by weight; with `two`, "
                  "draw two and take the one with fewer requests in progress."),
    Directive("ewma", (UPSTREAM,), (0, 0),
              doc="Peak-EWMA balancing (APISIX's `ewma`): prefer the server with the lowest "
                  "recent latency to the response head times its requests in progress, "
                  "comparing two servers drawn at random."),
    Directive("passive_fail_status", (UPSTREAM,), (1, None), parse=_statuses,
              syntax="passive_fail_status code ...;",
              doc="Response statuses that count as a failure of the server toward "
                  "`max_fails`, besides connection errors and timeouts (default: none, "
                  "as nginx). The response still goes to the client."),
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
              doc="The idle connections to this group each worker keeps open for reuse. Connections "
                  "above this number that came back from a burst are closed once they have been idle "
                  "for a second (nginx closes them at once; docs/traffic.md)."),
    Directive("keepalive_timeout", (UPSTREAM,), (1, 1), parse=types.time,
              doc="How long an idle upstream connection is kept (default 60s)."),
    Directive("keepalive_requests", (UPSTREAM,), (1, 1), parse=types.number,
              doc="The most requests sent over one upstream connection (default 1000)."),
]


def _balancer(conf, block_node):
    """The group's balancing method and key, checking the directives in config order:
    one method per group, and no `backup` server after a method that refuses them (the
    order nginx checks in: a `backup` before `hash` or `random` is accepted, and then
    serves only when round robin is the fallback)."""
    method, key, chosen = "round_robin", None, None
    for node in block_node.block:
        if node.name in BALANCERS:
            if chosen is not None:
                raise ConfigError("load balancing method redefined", node.file, node.line)
            chosen = node.name
            value = conf.local(node.name)
            if node.name == "hash":
                method, key = value
            elif node.name == "random":
                method = value
            else:
                method = node.name
        elif node.name == "server" and "backup" in node.args[1:] and chosen is not None \
                and not BALANCERS[chosen]:
            raise ConfigError('balancing method does not support parameter "backup"',
                              node.file, node.line)
    return method, key


def compile_http(http, runtime):
    for conf, block_node in zip(http.blocks("upstream"), http.node("upstream") or []):
        name = conf.args[0]
        if name in runtime.upstreams:
            raise ConfigError(f'duplicate upstream "{name}"', conf.file, conf.line)
        servers = conf.local("server")
        if not servers:
            raise ConfigError(f'no servers are inside upstream "{name}"', conf.file, conf.line)
        method, key = _balancer(conf, block_node)
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
        for (host, port, weight, max_fails, fail_timeout, backup, down, resolve), node in \
                zip(servers, conf.node("server")):
            if resolve and not _is_ip(host):
                if resolver is None:
                    raise ConfigError(f'no resolver defined to resolve {host}', node.file, node.line)
                group.add_resolve(host, port, weight, max_fails, fail_timeout, backup, down,
                                  node.args[0])
                continue
            try:
                group.add_peer(host, port, weight, max_fails, fail_timeout, backup, down,
                               node.args[0])
            except ValueError as e:
                raise ConfigError(str(e), node.file, node.line)
        group.set_balancer(method, key)
        group.set_passive_fail_status(conf.local("passive_fail_status") or [])
        runtime.upstreams[name] = group
        runtime.plan.add_upstream(group)
