"""Upstream groups: load balancing, passive health checks, keep-alive pools.

Per worker: peers are picked by smooth weighted round robin (the default), `least_conn`,
`hash KEY [consistent]`, `random [two [least_conn]]` or `ewma`; `backup` peers serve only
when no primary is available and `down` peers never; a peer is skipped after max_fails
failures within fail_timeout (connection errors, timeouts, and the statuses listed by
`passive_fail_status`); idle connections are pooled for reuse."""

from edge._core.reactor import Template, Upstream
from edge.config import HTTP, UPSTREAM, ConfigError, Directive, types

# the balancing directives, and whether each allows `backup` servers (nginx refuses them
# with hash and random)
BALANCERS = {"least_conn": True, "hash": False, "random": False, "ewma": True}


def _server(node):
    address = node.args[0]
    if address.startswith("unix:"):
        raise ConfigError(f'unix sockets are not supported in upstream "{address}"')
    host, port = split_host_port(address, default_port=80)
    weight, max_fails, fail_timeout, backup, down = 1, 1, 10.0, False, False
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
        else:
            raise ConfigError(f'invalid parameter "{option}"')
    return (host, port, weight, max_fails, fail_timeout, backup, down)


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
                     "[backup] [down];",
              doc="A member of the group. After `max_fails` failures within `fail_timeout` "
                  "the server is skipped for `fail_timeout`. A `backup` server is used only "
                  "when no primary is available (not with `hash` or `random`); a `down` "
                  "server is never used."),
    Directive("least_conn", (UPSTREAM,), (0, 0),
              doc="Send each request to the server with the fewest requests in progress "
                  "(relative to its weight; counted per worker); ties go by weighted round robin."),
    Directive("hash", (UPSTREAM,), (1, 2), parse=_hash, syntax="hash key [consistent];",
              doc="Send requests with the same key (a value with variables, e.g. "
                  "`$remote_addr`, `$cookie_session`) to the same server. `consistent` uses "
                  "a ketama ring: when a server leaves, only its keys move. nginx's hashes, "
                  "so keys land where nginx puts them."),
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
    Directive("keepalive", (UPSTREAM,), (1, 1), parse=types.number,
              doc="The most idle connections to this group each worker keeps open for reuse."),
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
        for (host, port, weight, max_fails, fail_timeout, backup, down), node in \
                zip(servers, conf.node("server")):
            try:
                group.add_peer(host, port, weight, max_fails, fail_timeout, backup, down,
                               node.args[0])
            except ValueError as e:
                raise ConfigError(str(e), node.file, node.line)
        group.set_balancer(method, key)
        group.set_passive_fail_status(conf.local("passive_fail_status") or [])
        runtime.upstreams[name] = group
        runtime.plan.add_upstream(group)
