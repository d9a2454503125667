"""Upstream groups: weighted round robin, passive health checks, keep-alive pools.

Per worker: peers are picked by smooth weighted round robin, skipped after max_fails
failures within fail_timeout, and idle connections are pooled for reuse."""

from edge._core.reactor import Upstream
from edge.config import HTTP, UPSTREAM, ConfigError, Directive, types


def _server(node):
    address = node.args[0]
    if address.startswith("unix:"):
        raise ConfigError(f'unix sockets are not supported in upstream "{address}"')
    host, port = split_host_port(address, default_port=80)
    weight, max_fails, fail_timeout = 1, 1, 10.0
    for option in node.args[1:]:
        name, _, value = option.partition("=")
        if name == "weight" and value.isdigit() and int(value) > 0:
            weight = int(value)
        elif name == "max_fails" and value.isdigit():
            max_fails = int(value)
        elif name == "fail_timeout":
            fail_timeout = types.parse_time(value)
        else:
            raise ConfigError(f'invalid parameter "{option}"')
    return (host, port, weight, max_fails, fail_timeout)


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
    Directive("server", (UPSTREAM,), (1, 4), parse=_server, multi=True,
              syntax="server address[:port] [weight=N] [max_fails=N] [fail_timeout=time];",
              doc="A member of the group. After `max_fails` failures within `fail_timeout` "
                  "the server is skipped for `fail_timeout`."),
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
        for (host, port, weight, max_fails, fail_timeout), node in zip(servers, conf.node("server")):
            try:
                group.add_peer(host, port, weight, max_fails, fail_timeout)
            except ValueError as e:
                raise ConfigError(str(e), node.file, node.line)
        runtime.upstreams[name] = group
        runtime.plan.add_upstream(group)
