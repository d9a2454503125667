"""Response compression, as nginx's ngx_http_gzip_module (docs/gzip.md).

`gzip on` in http, server or location compresses proxied responses and static files
whose status is 200, 403 or 404, whose type is in `gzip_types` (text/html always),
whose Content-Length (when known) is at least `gzip_min_length`, that carry no
Content-Encoding yet, for clients whose Accept-Encoding takes gzip (nginx's parsing:
`q=0` refuses) over at least `gzip_http_version`, unless `gzip_disable` matches the
User-Agent or, for requests through a proxy (Via), `gzip_proxied` says no. Every
directive is inherited nginx's way. The compiled half is edge/_core/gzip.pyx: streaming
deflate with zlib's C API, per upstream read or per bounded piece of a static file.
"""

from edge._core.reactor import GzipConf, Regex
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)

# nginx's NGX_HTTP_GZIP_PROXIED_* bits (gzip.pyx tests the same values)
PROXIED = {"off": 0x0002, "expired": 0x0004, "no-cache": 0x0008, "no-store": 0x0010,
           "private": 0x0020, "no_last_modified": 0x0040, "no_etag": 0x0080,
           "auth": 0x0100, "any": 0x0200}


def _proxied(node):
    bits = 0
    for a in node.args:
        if a not in PROXIED:
            raise ConfigError(f'invalid value "{a}" in "gzip_proxied" directive')
        bits |= PROXIED[a]
    return bits


def _disable(node):
    out = []
    for a in node.args:
        if a == "msie6":
            out.append("msie6")
            continue
        try:
            out.append(Regex(a, True))      # nginx: case-insensitive
        except ValueError as e:
            raise ConfigError(f'{e} in "gzip_disable"')
    return out


def _buffers(node):
    try:
        n = int(node.args[0])
        size = types.parse_size(node.args[1])
    except (ValueError, TypeError):
        raise ConfigError(f'invalid value "{" ".join(node.args)}" in "gzip_buffers" directive')
    if n <= 0 or not size:
        raise ConfigError(f'invalid value "{" ".join(node.args)}" in "gzip_buffers" directive')
    return (n, size)


def _window(node):
    size = types.size(node)
    bits = {512: 9, 1024: 10, 2048: 11, 4096: 12, 8192: 13, 16384: 14, 32768: 15}.get(size)
    if bits is None:
        raise ConfigError('"gzip_window" must be 512, 1k, 2k, 4k, 8k, 16k or 32k')
    return bits


def _hash(node):
    size = types.size(node)
    level = {512: 1, 1024: 2, 2048: 3, 4096: 4, 8192: 5, 16384: 6, 32768: 7,
             65536: 8, 131072: 9}.get(size)
    if level is None:
        raise ConfigError('"gzip_hash" must be a power of two between 512 and 128k')
    return level


DIRECTIVES = [
    Directive("gzip", HSL, (1, 1), parse=types.flag, default=False,
              doc="Compress responses (proxied and static) with gzip, under the conditions "
                  "of the other gzip_* directives: docs/gzip.md."),
    Directive("gzip_types", HSL, (1, None), parse=types.strings, default=["text/html"],
              syntax="gzip_types mime-type ... | *;",
              doc="The response types compressed besides text/html (always); `*` for any. "
                  "Compared with the Content-Type before its parameters, case-insensitively."),
    Directive("gzip_min_length", HSL, (1, 1), parse=types.size, default=20,
              syntax="gzip_min_length length;",
              doc="Compress only responses whose Content-Length is at least this; a response "
                  "of unknown length (chunked, close-delimited) is compressed whatever its size."),
    Directive("gzip_comp_level", HSL, (1, 1), parse=types.number_between(1, 9), default=1,
              syntax="gzip_comp_level 1..9;",
              doc="zlib's compression level: 1 fastest, 9 smallest."),
    Directive("gzip_proxied", HSL, (1, None), parse=_proxied, default=PROXIED["off"],
              syntax="gzip_proxied off | expired | no-cache | no-store | private | "
                     "no_last_modified | no_etag | auth | any ...;",
              doc="For requests that came through a proxy (a Via header): `off` never "
                  "compresses, `any` always, the others when the response (or, for `auth`, "
                  "the request) has that property, with nginx's rules."),
    Directive("gzip_vary", HSL, (1, 1), parse=types.flag, default=False,
              doc="Add `Vary: Accept-Encoding` to every response gzip could have compressed "
                  "(whether or not this client accepts gzip)."),
    Directive("gzip_disable", HSL, (1, None), parse=_disable, multi=True,
              syntax="gzip_disable regex ... | msie6;",
              doc="No compression for requests whose User-Agent matches one of these "
                  "regular expressions (POSIX ERE, case-insensitive); `msie6`: MSIE 4 to 6 "
                  "(not 6 with SV1), as nginx detects them."),
    Directive("gzip_http_version", HSL, (1, 1), parse=types.enum("1.0", "1.1"), default="1.1",
              syntax="gzip_http_version 1.0 | 1.1;",
              doc="The lowest request HTTP version that gets compressed responses. Compressed "
                  "responses to HTTP/1.0 clients end with the connection's close."),
    Directive("gzip_buffers", HSL, (2, 2), parse=_buffers, default=(32, 4096),
              syntax="gzip_buffers number size;",
              noop="edge compresses each upstream read or static-file piece into one output "
                   "buffer that grows to fit it; nginx's buffer count and size do not apply",
              doc="Accepted for nginx configs; no effect in edge: each upstream read or 32 KiB "
                  "piece of a static file is compressed into one buffer sized to fit, sent "
                  "before the next is read (docs/gzip.md)."),
    Directive("gzip_static", HSL, (1, 1), parse=types.enum("on", "off", "always"), default="off",
              syntax="gzip_static on | off | always;",
              doc="Static files: serve the precompressed `FILE.gz` next to a file, when it "
                  "exists, to clients that take gzip (`on`) or to all (`always`), with "
                  "`Content-Encoding: gzip` and the .gz file's length, ETag and ranges."),
    Directive("gzip_window", HSL, (1, 1), parse=_window, default=15,
              syntax="gzip_window 512 | 1k | ... | 32k;",
              doc="zlib's window size (windowBits); smaller for a known short body, as nginx."),
    Directive("gzip_hash", HSL, (1, 1), parse=_hash, default=8,
              syntax="gzip_hash 512 | 1k | ... | 128k;",
              doc="zlib's memLevel, given as nginx gives it (the hash memory)."),
]


def compile_location(conf, location, runtime):
    static = {"off": 0, "on": 1, "always": 2}[conf.get("gzip_static")]
    if not conf.get("gzip") and not static:
        return
    g = GzipConf()
    g.enable = bool(conf.get("gzip"))
    g.static = static
    g.set_types(list(conf.get("gzip_types")))
    g.min_length = conf.get("gzip_min_length")
    g.level = conf.get("gzip_comp_level")
    g.proxied = conf.get("gzip_proxied")
    g.vary = bool(conf.get("gzip_vary"))
    g.http_minor = 0 if conf.get("gzip_http_version") == "1.0" else 1
    g.wbits = conf.get("gzip_window")
    g.memlevel = conf.get("gzip_hash")
    disable = [d for values in (conf.get("gzip_disable") or []) for d in values]
    g.msie6 = "msie6" in disable
    g.disable = [d for d in disable if d != "msie6"]
    location.gzip = g
