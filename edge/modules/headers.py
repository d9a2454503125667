"""`add_header NAME VALUE [always];`: response headers, with nginx's rules.

A block that sets any `add_header` does not inherit those of the enclosing blocks.
Without `always` the header goes only on 200, 201, 204, 206, 301, 302, 303, 304, 307 and
308 responses; with it, on every response edge writes (its own error pages included).
An empty value adds nothing."""

from edge._core.reactor import AddHeaders, Template
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive


def _add_header(node):
    name, value = node.args[0], node.args[1]
    if not name or any(c in name for c in ' :\t\r\n'):
        raise ConfigError(f'invalid header name "{name}"')
    always = False
    if len(node.args) == 3:
        if node.args[2] != "always":
            raise ConfigError(f'invalid parameter "{node.args[2]}"')
        always = True
    try:
        return (name, Template.compile(value), always)
    except ValueError as e:
        raise ConfigError(str(e))


DIRECTIVES = [
    Directive("add_header", (HTTP, SERVER, LOCATION), (2, 3), parse=_add_header, multi=True,
              syntax="add_header name value [always];",
              doc="Add a response header (variables allowed; an empty value adds none) to "
                  "200, 201, 204, 206, 301, 302, 303, 304, 307 and 308 responses, or to every "
                  "response with `always`. Inherited only by blocks that set no add_header "
                  "themselves, as in nginx."),
]


def compile_location(conf, location, runtime):
    headers = conf.get("add_header")
    if headers:
        location.phases.add("header_filter", AddHeaders(list(headers)))


def compile_server(conf, server, runtime):
    """For what the server answers itself: its rewrite-phase `return` and redirects, and
    requests that no location takes (404)."""
    headers = conf.get("add_header")
    if headers:
        server.phases.add("header_filter", AddHeaders(list(headers)))
