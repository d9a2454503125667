"""Static files beside the proxy routes, as nginx serves them: `root`, `alias`, `index`,
`try_files` (with `@named` locations), `types`, `charset`, `expires`, `etag`,
`if_modified_since`, ranges, `sendfile`, `tcp_nopush`. The compiled half is
edge/_core/static.pyx; the page is docs/static.md."""

import os

from edge._core.reactor import ExpiresFilter, StaticConf, Template
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)

# nginx's built-in types when no `types` block is in force
DEFAULT_TYPES = {"html": "text/html", "gif": "image/gif", "jpg": "image/jpeg"}
DEFAULT_CHARSET_TYPES = ("text/html", "text/xml", "text/plain", "text/vnd.wap.wml",
                         "application/javascript", "application/rss+xml")
MAX_EXPIRES = 315360000         # `expires max`: ten years, nginx's max-age


def _template(text):
    try:
        return Template.compile(text)
    except ValueError as e:
        raise ConfigError(str(e))


def _types(node):
    """`types { type ext ...; }`: extension (lowercased, as nginx) -> type."""
    table = {}
    for entry in node.block:
        if entry.block is not None or not entry.args:
            raise ConfigError("invalid number of arguments in types", entry.file, entry.line)
        for ext in entry.args:
            table[ext.lower()] = entry.name
    return table


def _index(node):
    for name in node.args:
        if not name:
            raise ConfigError('index "" in "index" directive is invalid')
    for name in node.args[:-1]:
        if name.startswith("/"):
            raise ConfigError(f'only the last index in "index" directive should be absolute')
    return [_template(n) for n in node.args]


def _try_files(node):
    args = node.args
    *files, last = args
    if last.startswith("="):
        code = last[1:]
        if not code.isdigit() or not 100 <= int(code) <= 999:
            raise ConfigError(f'invalid code "{code}"')
        fallback = ("code", int(code))
    elif last.startswith("@"):
        fallback = ("named", last)
    else:
        fallback = ("uri", _template(last))
    return ([_template(f) for f in files], fallback)


def _expires(node):
    """nginx's expires: (kind, seconds). kind: off, epoch, max, time, modified."""
    args = node.args
    modified = False
    if len(args) == 2:
        if args[0] != "modified":
            raise ConfigError(f'invalid value "{args[0]}"')
        modified = True
        value = args[1]
    else:
        value = args[0]
    if not modified:
        if value == "off":
            return ("off", 0)
        if value == "epoch":
            return ("epoch", 0)
        if value == "max":
            return ("max", MAX_EXPIRES)
    if value.startswith("@"):
        raise ConfigError('"expires @time" (a time of day) is not supported by edge; '
                          'see docs/static.md')
    sign = 1
    if value.startswith("-"):
        sign, value = -1, value[1:]
    elif value.startswith("+"):
        value = value[1:]
    try:
        seconds = int(types.parse_time(value))
    except ConfigError:
        raise ConfigError(f'invalid value "{node.args[-1]}"')
    return ("modified" if modified else "time", sign * seconds)


def _refused(why):
    def parse(node):
        raise ConfigError(f'"{node.name}" is not supported by edge: {why} (docs/static.md)')
    return parse


def _autoindex(node):
    if types.flag(node):
        raise ConfigError('"autoindex on" is not supported by edge: directory listings are '
                          'not served (docs/static.md)')
    return False


def _charset(node):
    value = node.args[0]
    return None if value.lower() == "off" else value


def _disable_symlinks(node):
    """`disable_symlinks off | on | if_not_owner [from=part]` -> (mode, from template)."""
    args = node.args
    modes = {"off": 0, "on": 1, "if_not_owner": 2}
    if args[0] not in modes:
        raise ConfigError(f'invalid value "{args[0]}"')
    mode = modes[args[0]]
    part = None
    if len(args) == 2:
        if not args[1].startswith("from="):
            raise ConfigError(f'invalid parameter "{args[1]}"')
        if mode == 0:
            raise ConfigError('"from=" cannot be used with "off" parameter')
        part = _template(args[1][5:])
    return (mode, part)


def _path(node):
    value = node.args[0]
    if "\0" in value:
        raise ConfigError(f'invalid value in "{node.name}" directive')
    return value


DIRECTIVES = [
    Directive("root", HSL, (1, 1), parse=_path, syntax="root path;",
              doc="Serve files from `path` + the request URI (variables allowed; a relative "
                  "path is taken from the config file's directory). Used in a location "
                  "without `proxy_pass`, `return` or `health`."),
    Directive("alias", (LOCATION,), (1, 1), parse=_path, syntax="alias path;",
              doc="Serve the location's URIs from `path`, replacing the location prefix (in a "
                  "regex location, `path` is the whole file path, with captures). A URI that "
                  "would leave `path` (the classic `location /img { alias /data/img; }` "
                  "pitfall: `/img../x`) is a 404."),
    Directive("index", HSL, (1, None), parse=_index, default=None,
              syntax="index file ...;",
              doc="Files tried, in order, for a URI ending in `/`; the first that exists is "
                  "served by an internal redirect to it (default `index.html`). The last may "
                  "be an absolute URI."),
    Directive("try_files", (LOCATION,), (2, None), parse=_try_files,
              syntax="try_files file ... uri | =code | @name;",
              doc="Serve the first of `file ...` that exists (a name ending in `/` is a "
                  "directory); otherwise redirect internally to `uri`, to the named "
                  "location `@name`, or answer `=code`."),
    Directive("autoindex", HSL, (1, 1), parse=_autoindex, default=False,
              syntax="autoindex off;",
              doc="Only `off` (a directory without an index file is 403); `on` is refused."),
    Directive("types", HSL, (0, 0), parse=_types, raw=True, multi=True, syntax="types { type ext ...; }",
              doc="Content types by file extension (case-insensitive), e.g. `include "
                  "/etc/nginx/mime.types;`. A block that sets `types` replaces the "
                  "inherited table, as in nginx; the default knows html, gif and jpg."),
    Directive("charset", HSL, (1, 1), parse=_charset, default=None,
              syntax="charset name | off;",
              doc="Add `; charset=name` to the Content-Type of static files, `return` texts "
                  "and proxied responses (one that names no charset) whose type is in "
                  "`charset_types`, except on 301/302. No conversion between charsets."),
    Directive("charset_types", HSL, (1, None), parse=types.strings,
              default=list(DEFAULT_CHARSET_TYPES), syntax="charset_types type ...;",
              doc="The types that `charset` applies to (`*` for all); text/html always."),
    Directive("source_charset", HSL, (1, 1),
              parse=_refused("edge does not convert between charsets"),
              doc="Refused: edge does not convert between charsets."),
    Directive("override_charset", HSL, (1, 1),
              parse=_refused("edge does not convert between charsets"),
              doc="Refused: edge does not convert between charsets."),
    Directive("charset_map", (HTTP,), (2, 2), raw=True,
              parse=_refused("edge does not convert between charsets"),
              syntax="charset_map from to { ... }",
              doc="Refused: edge does not convert between charsets."),
    Directive("sendfile", HSL, (1, 1), parse=types.flag, default=False,
              doc="Send static files with sendfile(2) on plain connections (TLS reads and "
                  "encrypts, or uses kTLS); off reads and writes in 32 KiB steps."),
    Directive("tcp_nopush", HSL, (1, 1), parse=types.flag, default=False,
              doc="With `sendfile on`, hold partial frames (TCP_CORK) while a static "
                  "response's head and file go out, as nginx does."),
    Directive("expires", HSL, (1, 2), parse=_expires, default=("off", 0),
              syntax="expires [modified] time | epoch | max | off;",
              doc="Expires and Cache-Control on 200/201/204/206/301/302/303/304/307/308 "
                  "responses (static files, proxied responses, whose own are replaced, and "
                  "`return`): `time` from now (negative: `Cache-Control: no-cache`), "
                  "`modified time` from the file's or response's Last-Modified, `epoch`, `max`."),
    Directive("disable_symlinks", HSL, (1, 2), parse=_disable_symlinks, default=(0, None),
              syntax="disable_symlinks off | on | if_not_owner [from=part];",
              doc="Refuse (403) a static file whose path has a symbolic link in it (`on`), or "
                  "one not owned by its target's owner (`if_not_owner`); the path is walked "
                  "with openat(2) and O_NOFOLLOW. `from=part` (variables allowed, e.g. "
                  "`$document_root`) leaves the components up to `part` unchecked."),
    Directive("etag", HSL, (1, 1), parse=types.flag, default=True,
              doc="Send nginx's ETag (`\"mtime-size\"` in hex) with static files and honour "
                  "If-None-Match / If-Match / If-Range with it."),
    Directive("log_not_found", HSL, (1, 1), parse=types.flag, default=True,
              doc="Log a static file that is not there (open() failed: ENOENT, ENOTDIR) in "
                  "the error log; `off` logs none. edge logs ENOENT at `info` (nginx: `error`)."),
    Directive("if_modified_since", HSL, (1, 1), parse=types.enum("off", "exact", "before"),
              default="exact",
              doc="How If-Modified-Since is compared with a file's mtime: `exact` (equal), "
                  "`before` (the file is not newer), `off` (ignored)."),
]


def _server_of(conf):
    while conf is not None and conf.context != SERVER:
        conf = conf.parent
    return conf


def _named(runtime):
    named = getattr(runtime, "named_locations", None)
    if named is None:
        named = runtime.named_locations = {}
        runtime.named_pending = []
    return named


def compile_location(conf, location, runtime):
    named = _named(runtime)
    modifier, uri = conf.value if conf.context == LOCATION else ("", "/")
    if uri.startswith("@"):
        if modifier:
            raise ConfigError(f'named location "{uri}" cannot have a modifier', conf.file, conf.line)
        if conf.parent is None or conf.parent.context != SERVER:
            raise ConfigError(f'named location "{uri}" can be on the server level only',
                              conf.file, conf.line)
        key = (id(_server_of(conf)), uri)
        if key in named:
            raise ConfigError(f'duplicate location "{uri}"', conf.file, conf.line)
        named[key] = location
    try_files = conf.local("try_files") if conf.context == LOCATION else None
    root = conf.get("root")
    alias = conf.local("alias")
    if location.content != 0:
        # proxy_pass, return or health answer here; static settings are not used
        if alias is not None:
            node = conf.node("alias")
            raise ConfigError('"alias" cannot be used with proxy_pass, return or health here',
                              node.file, node.line)
        charset = conf.get("charset")
        if location.content == 1 and charset:
            # `return` with a text: its default_type gets the charset, as nginx's filter does
            ctypes = set(t.lower() for t in conf.get("charset_types")) | {"text/html"}
            dtype = conf.get("default_type")
            if "*" in ctypes or dtype.lower() in ctypes:
                location.default_type = (dtype + "; charset=" + charset).encode("latin-1")
        location.static = _root_only(conf, runtime, root)
        kind, seconds = conf.get("expires")
        if kind != "off" and location.content in (1, 2):
            # nginx's headers filter: every response of the location with a status it
            # lists (a proxied one's own Expires / Cache-Control are replaced)
            location.phases.add("header_filter", ExpiresFilter(
                ("off", "epoch", "max", "time", "modified").index(kind), seconds))
            location.proxy_expires = location.content == 2
        if location.content == 2 and charset:
            ctypes = set(t.lower() for t in conf.get("charset_types")) | {"text/html"}
            location.proxy_charset = charset.encode("latin-1")
            location.proxy_charset_types = (None if "*" in ctypes else
                                            {t.encode("latin-1") for t in ctypes})
        return
    if try_files is None and root is None and alias is None:
        location.static = _root_only(conf, runtime, root)
        return
    if alias is not None and conf.local("root") is not None:
        node = conf.node("alias")
        raise ConfigError('"alias" directive is duplicate, "root" directive was specified '
                          'earlier', node.file, node.line)
    sc = StaticConf()
    base = getattr(runtime, "conf_dir", os.getcwd())
    if alias is not None:
        path = alias if alias.startswith(("/", "$")) else os.path.join(base, alias)
        sc.set_path(_template(path), True, modifier in ("~", "~*"),
                    uri.encode("latin-1"))
    else:
        if root is None:
            root = "html"
        path = root if root.startswith(("/", "$")) else os.path.join(base, root)
        if len(path) > 1:
            path = path.rstrip("/")
        sc.set_path(_template(path), False, False, b"")
    index = conf.get("index")
    sc.index = index if index is not None else [_template("index.html")]
    table = None
    c = conf
    while c is not None:
        if c.is_set("types"):
            table = {}
            for t in c.local("types"):
                table.update(t)
            break
        c = c.parent
    if table is None:
        table = dict(DEFAULT_TYPES)
    sc.types = {k.encode("latin-1"): v.encode("latin-1") for k, v in table.items()}
    sc.default_type = conf.get("default_type").encode("latin-1")
    charset = conf.get("charset")
    sc.charset = charset.encode("latin-1") if charset else None
    ctypes = set(t.lower() for t in conf.get("charset_types"))
    ctypes.add("text/html")
    sc.charset_all = "*" in ctypes
    sc.charset_types = {t.encode("latin-1") for t in ctypes}
    sc.sendfile = conf.get("sendfile")
    sc.tcp_nopush = conf.get("tcp_nopush")
    kind, seconds = conf.get("expires")
    sc.set_expires(("off", "epoch", "max", "time", "modified").index(kind), seconds)
    sc.etag = conf.get("etag")
    sc.symlinks, sc.symlinks_from = conf.get("disable_symlinks")
    sc.log_not_found = conf.get("log_not_found")
    sc.ims = ("off", "exact", "before").index(conf.get("if_modified_since"))
    if try_files is not None:
        files, (fkind, fvalue) = try_files
        sc.try_files = files
        if fkind == "code":
            sc.try_code = fvalue
        elif fkind == "uri":
            sc.try_uri = fvalue
        else:
            runtime.named_pending.append((sc, (id(_server_of(conf)), fvalue), conf))
    location.set_static(sc)


def _root_only(conf, runtime, root):
    """A location that serves no files still has nginx's root, for $document_root and
    $request_filename (root `html` under the config directory when none is set)."""
    sc = StaticConf()
    base = getattr(runtime, "conf_dir", os.getcwd())
    if root is None:
        root = "html"
    path = root if root.startswith(("/", "$")) else os.path.join(base, root)
    if len(path) > 1:
        path = path.rstrip("/")
    sc.set_path(_template(path), False, False, b"")
    return sc


def compile_done(runtime):
    named = _named(runtime)
    for sc, key, conf in runtime.named_pending:
        target = named.get(key)
        if target is None:
            node = conf.node("try_files")
            raise ConfigError(f'no location "{key[1]}" in this server for "try_files"',
                              node.file, node.line)
        sc.try_named = target
    runtime.named_pending = []
