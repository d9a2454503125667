"""Cluster scope for limits: where the control process finds Redis, how often it syncs,
and what the workers do while Redis cannot be reached (docs/limits-cluster.md).

    redis 127.0.0.1:6379 [password=secret] [db=0] [timeout=1s];
    redis unix:/run/redis/redis.sock [password=..] [db=N] [timeout=TIME];
    redis_sentinel mymaster 10.0.0.1:26379 10.0.0.2:26379 10.0.0.3:26379
                   [password=..] [db=N] [timeout=TIME] [sentinel_password=..];
    limit_sync_interval 100ms;
    limit_redis_failure local | allow | deny;

Only the control process talks to Redis (edge/control/limit_sync.py); the workers decide
from shared memory and never wait on it. `redis` and `redis_sentinel` are two ways to
name the same thing, so a config has at most one of them. A zone declared with
`scope=cluster` needs one of them.
"""

import ipaddress
from dataclasses import dataclass

from edge.config import HTTP, ConfigError, Directive, types

DEFAULT_PORT = 6379
DEFAULT_TIMEOUT = 1.0
DEFAULT_SYNC_INTERVAL = 0.1
FAILURE_POLICIES = ("local", "allow", "deny")
ZONE_DIRECTIVES = ("limit_req_zone", "limit_count_zone", "limit_conn_zone")


@dataclass(frozen=True)
class RedisSettings:
    """One Redis (host/port or unix_path) or a Sentinel-watched master (sentinel_name
    and sentinels). `timeout` bounds every round trip of the sync, in seconds."""
    host: str | None = None
    port: int | None = None
    unix_path: str | None = None
    password: str | None = None
    db: int = 0
    timeout: float = DEFAULT_TIMEOUT
    sentinel_name: str | None = None
    sentinels: tuple = ()           # ((host, port), ...)
    sentinel_password: str | None = None

    def describe(self):
        """Where it points, without secrets (for log lines)."""
        if self.sentinel_name:
            hosts = " ".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {self.sentinel_name} ({hosts})"
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"{self.host}:{self.port}"


def _host_port(text, directive, default_port=None):
    """`host:port`, `[v6]:port`, or (with a default port) a bare host."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f'invalid address "{text}" in the "{directive}" directive')
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ConfigError(f'invalid IPv6 address in "{text}" of the "{directive}" directive')
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and not rest.startswith(":"):
            raise ConfigError(f'invalid address "{text}" in the "{directive}" directive')
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, None
    if not host:
        raise ConfigError(f'invalid address "{text}" in the "{directive}" directive')
    if port_text is None:
        if default_port is None:
            raise ConfigError(f'"{text}" needs a port in the "{directive}" directive')
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigError(f'invalid port in "{text}" of the "{directive}" directive')
    return host, int(port_text)


def _options(args, directive, allowed):
    out = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or key not in allowed:
            raise ConfigError(f'invalid parameter "{arg}" in the "{directive}" directive')
        if key in out:
            raise ConfigError(f'duplicate parameter "{key}" in the "{directive}" directive')
        if key == "db":
            if not (value.isascii() and value.isdigit()):
                raise ConfigError(f'invalid "db" value "{value}" in the "{directive}" directive')
            out["db"] = int(value)
        elif key == "timeout":
            timeout = types.parse_time(value)
            if timeout <= 0:
                raise ConfigError(f'"timeout" must be more than 0 in the "{directive}" directive')
            out["timeout"] = timeout
        else:   # password, sentinel_password
            if not value:
                raise ConfigError(f'empty "{key}" in the "{directive}" directive')
            out[key] = value
    return out


def _redis(node):
    address, rest = node.args[0], node.args[1:]
    options = _options(rest, "redis", ("password", "db", "timeout"))
    if address.startswith("unix:"):
        path = address[5:]
        if not path.startswith("/"):
            raise ConfigError(f'the unix socket path in "{address}" must be absolute')
        return RedisSettings(unix_path=path, **options)
    if "=" in address:
        raise ConfigError('the "redis" directive needs an address first')
    host, port = _host_port(address, "redis", DEFAULT_PORT)
    return RedisSettings(host=host, port=port, **options)


def _redis_sentinel(node):
    name, rest = node.args[0], node.args[1:]
    if "=" in name or ":" in name:
        raise ConfigError(f'"{name}" is not a master name: "redis_sentinel" takes the '
                          f'name the sentinels monitor first, then their addresses')
    sentinels, options = [], []
    for arg in rest:
        if "=" in arg:
            options.append(arg)
        elif options:
            raise ConfigError(f'the sentinel address "{arg}" must come before the parameters '
                              f'in the "redis_sentinel" directive')
        else:
            sentinels.append(_host_port(arg, "redis_sentinel", 26379))
    if not sentinels:
        raise ConfigError('the "redis_sentinel" directive needs at least one sentinel address')
    opts = _options(options, "redis_sentinel",
                    ("password", "db", "timeout", "sentinel_password"))
    return RedisSettings(sentinel_name=name, sentinels=tuple(sentinels), **opts)


def _interval(node):
    value = types.time(node)
    if not 0.001 <= value <= 60:
        raise ConfigError('"limit_sync_interval" must be between 1ms and 60s',
                          node.file, node.line)
    return value


DIRECTIVES = [
    Directive("redis", (HTTP,), (1, 4), parse=_redis,
              syntax="redis host[:port] | unix:path [password=secret] [db=N] [timeout=time];",
              doc="The Redis the control process syncs cluster-scope limit zones with "
                  "(port 6379 by default). `timeout` (1s) bounds each sync round trip; "
                  "past it the `limit_redis_failure` policy applies until Redis answers "
                  "again. Requests never wait on Redis."),
    Directive("redis_sentinel", (HTTP,), (2, None), parse=_redis_sentinel,
              syntax="redis_sentinel master_name host:port ... [password=secret] [db=N] "
                     "[timeout=time] [sentinel_password=secret];",
              doc="Redis through Sentinel, for high availability: the name of the master "
                  "the sentinels monitor, then one or more sentinel addresses (port 26379 "
                  "by default). `password`, `db` and `timeout` are the master's, as for "
                  "`redis`; `sentinel_password` is the sentinels' own. A failover is "
                  "followed without a reload. Not together with `redis`."),
    Directive("limit_sync_interval", (HTTP,), (1, 1), parse=_interval,
              default=DEFAULT_SYNC_INTERVAL,
              doc="How often the control process pushes this node's consumption of "
                  "cluster-scope limit zones to Redis and pulls the others' (100ms). The "
                  "over-admission of a cluster limit is about nodes x rate x interval."),
    Directive("limit_redis_failure", (HTTP,), (1, 1), parse=types.enum(*FAILURE_POLICIES),
              default="local",
              doc="What cluster-scope limits do while Redis is unreachable: `local` "
                  "enforces each limit divided by the last known number of live nodes, "
                  "`allow` admits everything, `deny` rejects everything. Decisions made "
                  "so are counted; recovery is automatic."),
]


def _zone_node(http, name):
    """The directive that declared zone `name` (for file:line), or None."""
    for directive in ZONE_DIRECTIVES:
        for node in http.node(directive) or []:
            for arg in node.args:
                if arg.startswith("zone=") and arg[5:].partition(":")[0] == name:
                    return node
    return None


def compile_http(http, runtime):
    plain = http.local("redis")
    sentinel = http.local("redis_sentinel")
    if plain is not None and sentinel is not None:
        node = http.node("redis_sentinel")
        raise ConfigError('"redis_sentinel" and "redis" name the same thing: use one',
                          node.file, node.line)
    runtime.redis = plain if plain is not None else sentinel
    runtime.limit_sync_interval = http.get("limit_sync_interval")
    runtime.limit_redis_failure = http.get("limit_redis_failure")
    zones = getattr(runtime, "limit_zones", None)
    if runtime.redis is None and zones:
        for name, spec in zones.items():
            if getattr(spec, "scope", "node") != "cluster":
                continue
            if getattr(spec, "file", None):
                where = (spec.file, spec.line)
            else:
                node = _zone_node(http, name) or http
                where = (node.file, node.line)
            raise ConfigError(f'zone "{name}" has scope=cluster but no "redis" or '
                              f'"redis_sentinel" is configured', *where)
