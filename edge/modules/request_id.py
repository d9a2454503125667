"""Request IDs: `$request_id` (32 hex digits, as nginx's) and `request_id_header`.

With `request_id_header X-Request-Id;` an incoming value of that header is kept when it
is a sane token (1..128 of letters, digits, `-_.:+/=`), else edge makes one; either way it
becomes `$request_id`, is sent upstream in that header and back to the client in the
response (replacing an upstream's own value of it). Other tracing headers, such as W3C
`traceparent`, pass through untouched.
"""

from edge._core.reactor import RequestIdFromHeader, RequestIdResponseHeader, Template
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive


def _header_name(node):
    name = node.args[0]
    if name == "off":
        return None
    if not name or any(c in name for c in ' :\t\r\n"(),/;<=>?@[\\]{}') or not name.isascii():
        raise ConfigError(f'invalid header name "{name}"')
    return name


DIRECTIVES = [
    Directive("request_id_header", (HTTP, SERVER, LOCATION), (1, 1), parse=_header_name,
              syntax="request_id_header name | off;",
              doc="Keep a sane incoming request ID from this header (else make one), use it as "
                  "`$request_id`, send it upstream and back to the client in this header."),
]


def compile_location(conf, location, runtime):
    name = conf.get("request_id_header")
    if not name:
        return
    header = name.encode("latin-1")
    location.phases.add("rewrite", RequestIdFromHeader(header))
    location.phases.add("header_filter", RequestIdResponseHeader(header))
    existing = (location.response_strip or b"").rstrip(b"\0")     # other modules' names
    location.response_strip = (existing + b"\0" if existing else b"") + header.lower() + b"\0"
    if location.upstream is not None:
        location.add_proxy_header(header, Template.compile("$request_id"))
