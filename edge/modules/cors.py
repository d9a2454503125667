"""CORS: preflights answered at the edge, the CORS headers on every response.

The Fetch standard's CORS protocol, as the cors plugins of APISIX and Kong do it.

A location where `cors_allow_origins` is in force (set there or inherited, nginx-style,
and not `off`):
- answers a preflight (OPTIONS with Origin and Access-Control-Request-Method) itself with
  204, never proxied: Access-Control-Allow-Origin (the request's origin, or `*` when `*` is
  allowed without credentials), -Allow-Credentials, -Allow-Methods, -Allow-Headers,
  -Max-Age and Vary. An origin that is not allowed gets a 204 with none of them (Vary
  only): the browser then blocks the actual request.
- adds Access-Control-Allow-Origin, -Allow-Credentials, -Expose-Headers and `Vary: Origin`
  to every other response when the Origin is allowed (errors included), replacing any the
  upstream sent.

Phases: the origin is decided in the rewrite phase; the preflight is answered in the
access phase after the IP rules and before authentication and limits (a preflight
carries no credentials); the headers are a header filter. See edge/_core/cors.pyx.
"""

import re

from edge._core.reactor import CorsHeaders, CorsOrigin, CorsPolicy, CorsPreflight
from edge._core.reactor import DEFAULT_CORS_METHODS
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]+$")

# the upstream's own copies of what edge sets on actual responses are dropped
STRIP = (b"access-control-allow-origin", b"access-control-allow-credentials",
         b"access-control-expose-headers")


def _origins(node):
    out = []
    args = node.args
    if args == ["off"]:
        return ["off"]
    for a in args:
        if a == "off":
            raise ConfigError('"off" must be the only parameter of "cors_allow_origins"')
        if a == "*" or a == "null":
            out.append(a)
        elif a.startswith("~"):
            if len(a) == 1:
                raise ConfigError('empty regex in "cors_allow_origins"')
            out.append(a)
        elif _ORIGIN.match(a):
            out.append(a)
        else:
            raise ConfigError(f'invalid origin "{a}" in "cors_allow_origins" '
                              f'(scheme://host[:port], "*", "null" or "~regex" expected)')
    return out


def _tokens(what, star_ok=True):
    def parse(node):
        if star_ok and node.args == ["*"]:
            return "*"                      # echo what the preflight asks for
        values = [a.rstrip(",") for a in node.args]
        for a in values:
            if not _TOKEN.match(a) or a == "*":
                raise ConfigError(f'invalid {what} "{a}"')
        return values
    return parse


def _expose(node):
    values = [a.rstrip(",") for a in node.args]
    for a in values:
        if not _TOKEN.match(a):
            raise ConfigError(f'invalid header name "{a}"')
    return values


def _max_age(node):
    seconds = types.time(node)
    return int(seconds)


DIRECTIVES = [
    Directive("cors_allow_origins", HSL, (1, None), parse=_origins, multi=True,
              syntax="cors_allow_origins origin ... | * | ~regex | off;",
              doc="Enable CORS for these origins: exact (`https://app.example.com:8443`, "
                  "compared case-insensitively), `*` (any), `~regex` (POSIX ERE, "
                  "case-insensitive, unanchored: write `^...$`), `null`; `off` disables an "
                  "inherited setting."),
    Directive("cors_allow_methods", HSL, (1, None), parse=_tokens("method"),
              default=DEFAULT_CORS_METHODS.split(", "),
              syntax="cors_allow_methods method ... | *;",
              doc="Access-Control-Allow-Methods of preflight responses; `*` echoes the "
                  "preflight's Access-Control-Request-Method."),
    Directive("cors_allow_headers", HSL, (1, None), parse=_tokens("header name"), default="*",
              syntax="cors_allow_headers name ... | *;",
              doc="Access-Control-Allow-Headers of preflight responses; `*` (the default) "
                  "echoes the preflight's Access-Control-Request-Headers."),
    Directive("cors_expose_headers", HSL, (1, None), parse=_expose, default=None,
              syntax="cors_expose_headers name ...;",
              doc="Access-Control-Expose-Headers of actual responses: response headers "
                  "scripts may read beyond the CORS-safelisted ones."),
    Directive("cors_allow_credentials", HSL, (1, 1), parse=types.flag, default=False,
              doc="Send Access-Control-Allow-Credentials: true (cookies and HTTP "
                  "authentication); refused together with `cors_allow_origins *`."),
    Directive("cors_max_age", HSL, (1, 1), parse=_max_age, default=None,
              syntax="cors_max_age time;",
              doc="Access-Control-Max-Age of preflight responses: how long a browser may "
                  "cache the preflight's answer (not sent by default)."),
]


def _where(conf, name):
    """The node that set `name` for this level (the last one for multi), or None."""
    nodes = conf.nodes_in_force(name)
    return nodes[-1] if nodes else None


def compile_location(conf, location, runtime):
    lists = conf.get("cors_allow_origins")
    if not lists:
        return
    origins = [o for values in lists for o in values]
    if origins == ["off"]:
        return
    credentials = conf.get("cors_allow_credentials")
    expose = conf.get("cors_expose_headers") or []
    if credentials and ("*" in origins or "*" in expose):
        node = _where(conf, "cors_allow_credentials")
        what = ("cors_allow_origins", "*") if "*" in origins else ("cors_expose_headers", "*")
        other = _where(conf, what[0])
        raise ConfigError(f'"cors_allow_credentials on" cannot be used with "{what[0]} *" '
                          f'(set in {other.file}:{other.line}): browsers refuse a wildcard '
                          f'with credentials', node.file, node.line)
    methods = _list(conf.get("cors_allow_methods"))
    headers = _list(conf.get("cors_allow_headers"))
    key = (tuple(origins), methods, headers, tuple(expose), credentials, conf.get("cors_max_age"))
    cache = runtime.__dict__.setdefault("cors_policies", {})
    handlers = cache.get(key)
    if handlers is None:
        try:
            policy = CorsPolicy(origins, None if methods is None else list(methods),
                                None if headers is None else list(headers), list(expose),
                                credentials, conf.get("cors_max_age"))
        except ValueError as e:
            node = _where(conf, "cors_allow_origins")
            for n in conf.nodes_in_force("cors_allow_origins"):
                if any(a.startswith("~") and a[1:] in str(e) for a in n.args):
                    node = n
                    break
            raise ConfigError(f'{e} in "cors_allow_origins"', node.file, node.line)
        handlers = cache[key] = (CorsOrigin(policy), CorsPreflight(policy), CorsHeaders(policy))
    location.phases.add("rewrite", handlers[0])
    location.phases.add("access", handlers[1])
    location.phases.add("header_filter", handlers[2])
    strip = location.response_strip
    base = strip[:-1] if strip else b""
    location.response_strip = base + b"".join(s + b"\0" for s in STRIP) + b"\0"


def _list(value):
    """A configured list as a tuple; `*` (echo the preflight's request) as None."""
    return None if value == "*" else tuple(value)
