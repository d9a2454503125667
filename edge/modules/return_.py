"""Direct responses and redirects (`return code [text | URL]`, `return URL`)."""

from edge._core.reactor import Template
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

REDIRECTS = (301, 302, 303, 307, 308)


def _template(text):
    try:
        return Template.compile(text)
    except ValueError as e:
        raise ConfigError(str(e))


def _return(node):
    args = node.args
    first = args[0]
    if not first.isdigit():
        # `return URL;` is a 302, and only an absolute URL or a variable may stand alone
        if len(args) != 1 or not first.startswith(("http://", "https://", "$scheme")):
            raise ConfigError(f'invalid return code "{first}"')
        return (302, None, _template(first))
    status = int(first)
    if not 100 <= status <= 999 or status in (101,):
        raise ConfigError(f'invalid return code "{first}"')
    if len(args) == 1:
        return (status, None, None)
    if status in REDIRECTS:
        return (status, None, _template(args[1]))
    return (status, _template(args[1]), None)


DIRECTIVES = [
    Directive("return", (SERVER, LOCATION, "if"), (1, 2), parse=_return,
              syntax="return code [text]; return code URL; return URL;",
              doc="Stop processing and answer: `code text` sends the text (variables "
                  "allowed) with `default_type`; 301/302/303/307/308 with a URL redirect; "
                  "a bare URL is a 302."),
    Directive("absolute_redirect", (HTTP, SERVER, LOCATION), (1, 1), parse=types.flag,
              default=True,
              doc="Make a redirect to a path absolute (`http://host[:port]/path`) from the "
                  "request's Host and the listen port, as nginx does; `off` sends the path."),
    Directive("port_in_redirect", (HTTP, SERVER, LOCATION), (1, 1), parse=types.flag,
              default=True,
              doc="Whether a redirect made absolute names the listen port when it is not "
                  "the scheme's default (as nginx); `off` leaves it out (behind a load "
                  "balancer that listens on 80/443 for edge's other port)."),
]


def compile_location(conf, location, runtime):
    # every location: its static directory redirects and proxy_redirect use it too
    location.port_in_redirect = conf.get("port_in_redirect")
    value = conf.local("return")
    if value is None and conf.parent is not None and \
            not any(conf.parent.local(n) is not None for n in ("rewrite", "set", "if", "break")):
        value = conf.parent.local("return")     # server-level return applies to every location
    if value is None:
        return
    status, body, url = value
    location.set_return(status, body, url)
    location.absolute_redirect = conf.get("absolute_redirect")

