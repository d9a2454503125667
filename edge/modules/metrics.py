"""Prometheus metrics: always on, counted by the workers in shared memory.

Every location is a `route` label: its `route_name`, or its match text as written in the
config (`/api/`, `= /health`, `~ ^/v\\d/`). The `server` label is the server's first
`server_name`, or its first listen address when it has none. Requests that no location
took count under route "" of their server. Labels come from the config only: any number
of distinct request paths adds no series. The control process serves the sums at
`admin_listen`'s /metrics (docs/operations.md).
"""

from edge.config import LOCATION, ConfigError, Directive


def _route_name(node):
    name = node.args[0]
    if not name or any(ord(c) < 0x20 for c in name):
        raise ConfigError(f'invalid route name "{name}"')
    return name


DIRECTIVES = [
    Directive("route_name", (LOCATION,), (1, 1), parse=_route_name,
              syntax="route_name name;",
              doc="The `route` label of this location in metrics and `$route` in logs "
                  "(default: the location's match text, e.g. `= /health`)."),
]


def server_label(server_conf):
    """The `server` label of a server block."""
    for names in server_conf.local("server_name") or []:
        for name in names:
            if name:
                return name
    listens = server_conf.local("listen")
    if listens:
        return listens[0].key
    return "0.0.0.0:80"


def _server_conf(conf):
    while conf is not None and conf.context != "server":
        conf = conf.parent
    return conf


def compile_server(conf, server, runtime):
    server.phases.set_route(server_label(conf), "")


def compile_location(conf, location, runtime):
    server_conf = _server_conf(conf)
    route = conf.local("route_name") if conf.context == "location" else None
    if route is None:
        route = location.match_text() if conf.context == "location" else ""
    location.route_b = route.encode("utf-8")
    location.phases.set_route(server_label(server_conf) if server_conf is not None else "", route)
