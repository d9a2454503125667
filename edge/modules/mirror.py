"""Mirroring: `mirror URI;`, `mirror_request_body`, `mirror_sample` and `internal`, in
nginx's syntax. The location that `URI` selects proxies the copies to its own upstream.
The main request never waits for a copy (edge/_core/mirror.pyx); docs/traffic.md."""

from edge._core.reactor import InternalOnly, MirrorTarget, upstream_tls_name_is_literal
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)


def _mirror(node):
    uri = node.args[0]
    if uri != "off" and not uri.startswith("/"):
        raise ConfigError(f'invalid mirror URI "{uri}": it must start with "/"', node.file, node.line)
    return uri


def _sample(node):
    """A share of requests: 0.25 or 25%."""
    text = node.args[0]
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f'invalid value "{text}" in "{node.name}" directive, it must be a '
                          'share between 0 and 1 (or 0% to 100%)', node.file, node.line)
    return value


DIRECTIVES = [
    Directive("mirror", HSL, (1, 1), parse=_mirror, multi=True,
              syntax="mirror uri | off;",
              doc="Send a copy of each request to the location that `uri` selects in the same "
                  "server, which proxies it to its own upstream (usually an `internal` "
                  "location with `proxy_pass`). Several may be given. The main request never "
                  "waits for a copy: copies go through a bounded queue per worker, dropped and "
                  "counted (`edge_mirror_requests_total`) when it is full. Inherited, as in "
                  "nginx; `off` cancels the inherited ones."),
    Directive("mirror_request_body", HSL, (1, 1), parse=types.flag, default=True,
              doc="Copy the request body too. The body is then read whole before the request "
                  "is proxied, even with `proxy_request_buffering off`."),
    Directive("mirror_sample", HSL, (1, 1), parse=_sample, default=1.0,
              doc="The share of requests copied: `0.1` or `10%` (edge only)."),
    Directive("internal", (LOCATION,), (0, 0), parse=lambda node: True,
              doc="The location serves mirror copies and internal redirects only (error_page, "
                  "try_files, index, rewrite): a client's request that selects it directly gets "
                  "404, as in nginx."),
]


def compile_server(conf, server, runtime):
    runtime.mirror_server = server


def compile_location(conf, location, runtime):
    if conf.local("internal"):
        location.phases.add("access", InternalOnly())
    uris = conf.get("mirror") or []
    if not uris or "off" in uris:
        return
    nodes = conf.nodes_in_force("mirror")
    pending = getattr(runtime, "mirror_pending", None)
    if pending is None:
        pending = runtime.mirror_pending = []
    pending.append((runtime.mirror_server, location, uris, nodes, conf.get("mirror_sample"),
                    conf.get("mirror_request_body")))


def compile_done(runtime):
    """Once every server's locations are matched by their tries: find each mirror's
    location, which must proxy."""
    for server, location, uris, nodes, sample, with_body in getattr(runtime, "mirror_pending", []):
        targets = []
        for uri, node in zip(uris, nodes):
            target = server.lookup(uri)
            if target is None or target.upstream is None:
                raise ConfigError(f'mirror "{uri}" selects no location with "proxy_pass" '
                                  'in this server', node.file, node.line)
            if target.upstream_tls is not None and not upstream_tls_name_is_literal(target.upstream_tls):
                # a copy is sent after its request is gone: nothing to evaluate them with
                raise ConfigError(f'mirror "{uri}" selects a location whose "proxy_ssl_name" has '
                                  'variables, which mirror copies cannot use', node.file, node.line)
            targets.append(MirrorTarget(target, uri.encode("latin-1"), sample))
        location.mirrors = targets
        location.mirror_request_body = with_body
    runtime.mirror_pending = []
