"""Retries on the next peer: nginx's `proxy_next_upstream`, `proxy_next_upstream_tries`
and `proxy_next_upstream_timeout`. The compiled half is edge/_core/retries.pyx."""

from edge._core.reactor import NEXT_UPSTREAM_DEFAULT, NEXT_UPSTREAM_FLAGS
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)


def _next_upstream(node):
    mask = 0
    for word in node.args:
        if word == "off":
            continue
        flag = NEXT_UPSTREAM_FLAGS.get(word)
        if flag is None:
            raise ConfigError(f'invalid value "{word}" in "{node.name}" directive', node.file, node.line)
        mask |= flag
    # "off" wins over anything written with it, as in nginx
    return 0 if "off" in node.args else mask


DIRECTIVES = [
    Directive("proxy_next_upstream", HSL, (1, None), parse=_next_upstream,
              default=NEXT_UPSTREAM_DEFAULT,
              syntax="proxy_next_upstream error | timeout | invalid_header | http_500 | http_502 | "
                     "http_503 | http_504 | http_403 | http_404 | http_429 | non_idempotent | off ...;",
              doc="When a try goes to the next peer, as in nginx: `error` (connect or I/O "
                  "error before the response head), `timeout` (connect, send or read timeout "
                  "before the response head), `invalid_header`, and the listed response "
                  "statuses. A request that reached a peer is sent again only if its method is "
                  "idempotent (not POST, LOCK, PATCH) or `non_idempotent` is listed; a body that "
                  "was streamed (`proxy_request_buffering off`) is never sent again. Default: "
                  "`error timeout`."),
    Directive("proxy_next_upstream_tries", HSL, (1, 1), parse=types.number, default=0,
              doc="The most tries of one request, the first included; 0: no limit but the "
                  "number of peers."),
    Directive("proxy_next_upstream_timeout", HSL, (1, 1), parse=types.time, default=0.0,
              doc="How long after its first try a request may still go to the next peer; 0: "
                  "no limit."),
]


def compile_location(conf, location, runtime):
    location.next_upstream = conf.get("proxy_next_upstream")
    location.next_upstream_tries = conf.get("proxy_next_upstream_tries")
    location.next_upstream_timeout_ms = int(conf.get("proxy_next_upstream_timeout") * 1000)
