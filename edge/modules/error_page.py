"""`error_page`, `recursive_error_pages` and `proxy_intercept_errors`, with nginx's
semantics: the errors edge answers itself (and, with `proxy_intercept_errors on`, the
upstream's) are answered by an internal redirect to a URI, a named location, or a
redirect to a URL. The compiled half is edge/_core/error_page.pyx; the page is
docs/errors.md."""

from edge._core.reactor import ErrorPages, ErrorTarget, Template, keep_request_head
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types
from edge.modules.static import _named, _server_of

HSL = (HTTP, SERVER, LOCATION)

EP_URI, EP_NAMED, EP_URL = 1, 2, 3
CONTENT_PROXY = 2


def _error_page(node):
    """`error_page code ... [=[response]] uri;` -> (codes, overwrite, kind, target)."""
    args = node.args
    n = len(args)
    overwrite = -1
    last_code = n - 1
    if args[n - 2].startswith("="):
        if n - 2 == 0:
            raise ConfigError(f'invalid value "{args[n - 2]}"')
        value = args[n - 2][1:]
        if value:
            if not value.isdigit():
                raise ConfigError(f'invalid value "{args[n - 2]}"')
            overwrite = int(value)
        else:
            overwrite = 0
        last_code = n - 2
        if last_code < 1:
            raise ConfigError(f'invalid number of arguments in "error_page" directive')
    codes = []
    for text in args[:last_code]:
        if not text.isdigit() or int(text) == 499:
            raise ConfigError(f'invalid value "{text}"')
        code = int(text)
        if not 300 <= code <= 599:
            raise ConfigError(f'value "{text}" must be between 300 and 599')
        codes.append(code)
    target = args[n - 1]
    try:
        template = Template.compile(target)
    except ValueError as e:
        raise ConfigError(str(e))
    if target.startswith("@"):
        if not template.is_literal:
            raise ConfigError(f'a named location in "error_page" cannot have variables: "{target}"')
        kind = EP_NAMED
    elif template.is_literal and not target.startswith("/"):
        kind = EP_URL
    else:
        kind = EP_URI       # decided by the value's first byte when it has variables
    return (codes, overwrite, kind, template)


DIRECTIVES = [
    Directive("error_page", HSL, (2, None), parse=_error_page, multi=True,
              syntax="error_page code ... [=[response]] uri | @name | URL;",
              doc="Answer the listed errors (300-599) with `uri` (an internal redirect: GET, "
                  "HEAD stays HEAD), the named location `@name`, or a redirect to `URL` "
                  "(302, or the `=301|302|303|307|308` given). The page goes out with the "
                  "error's status, `=code`'s, or with `=` alone the page's own. A level "
                  "with its own `error_page` replaces every inherited one, as in nginx."),
    Directive("recursive_error_pages", HSL, (1, 1), parse=types.flag, default=False,
              doc="Let an error while serving an error page be answered by an error page "
                  "again (off: the built-in page of that second error)."),
    Directive("proxy_intercept_errors", HSL, (1, 1), parse=types.flag, default=False,
              doc="Upstream responses with a status >= 300 that has an `error_page` are "
                  "answered by that page instead; the upstream's body is dropped (its "
                  "connection is kept when the body was already read whole, else closed)."),
]


def _pages(conf, runtime):
    """The ErrorPages in force at `conf` (nginx inherits the whole list from the nearest
    level that has one), or None."""
    entries = conf.get("error_page")
    if not entries:
        return None
    server_conf = _server_of(conf)
    pages = {}
    pending = _pending(runtime)
    for codes, overwrite, kind, template in entries:
        for code in codes:
            if code in pages:
                continue        # nginx takes the first page listed for a code
            over = overwrite
            if over == -1 and code in (494, 495, 496, 497):
                over = 400      # nginx: these internal codes go out as 400
            target = ErrorTarget(kind, over, template)
            if kind == EP_NAMED:
                pending.append((target, (id(server_conf), template.source)))
            pages[code] = target
    return ErrorPages(pages, conf.get("recursive_error_pages"), conf.get("proxy_intercept_errors"))


def _pending(runtime):
    pending = getattr(runtime, "error_page_pending", None)
    if pending is None:
        pending = runtime.error_page_pending = []
    return pending


def compile_server(conf, server, runtime):
    server.error_pages = _pages(conf, runtime)


def compile_location(conf, location, runtime):
    pages = _pages(conf, runtime)
    location.error_pages = pages
    if pages is not None and location.content == CONTENT_PROXY:
        # an error page may run after the body went through rb: keep the head
        keep_request_head(location)


def compile_done(runtime):
    named = _named(runtime)
    for target, key in _pending(runtime):
        target.named = named.get(key)     # None: a 500 at run time, as nginx
    runtime.error_page_pending = []
