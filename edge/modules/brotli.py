"""Brotli response compression, with ngx_brotli's directives (github.com/google/ngx_brotli;
docs/gzip.md, "Brotli").

`brotli on` compresses the responses gzip would (status 200, 403 or 404, no
Content-Encoding yet, proxied or static) whose type is in `brotli_types` (text/html
always) and whose Content-Length (when known) is at least `brotli_min_length`, for
clients whose Accept-Encoding takes `br` (q=0 refuses). With gzip on as well, a client
that takes br gets br and any other gets gzip's decision, as ngx_brotli's filter runs
before nginx's gzip. It shares gzip's compiled half (edge/_core/gzip.pyx): the same
request reading, head rules, framing, streaming and release, with libbrotlienc's
streaming encoder as the coder of the response. `brotli_static` serves a precompressed
`FILE.br` beside a static file, tried before gzip_static's `FILE.gz`.
"""

from edge._core.reactor import GzipConf
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)


def _window(node):
    size = types.size(node)
    bits = {1 << b: b for b in range(10, 25)}.get(size)
    if bits is None:
        raise ConfigError('"brotli_window" must be a power of two between 1k and 16m')
    return bits


DIRECTIVES = [
    Directive("brotli", HSL, (1, 1), parse=types.flag, default=False,
              doc="Compress responses (proxied and static) with Brotli for clients that "
                  "accept `br`, under the conditions of the other brotli_* directives; with "
                  "gzip on too, other clients get gzip: docs/gzip.md."),
    Directive("brotli_types", HSL, (1, None), parse=types.strings, default=["text/html"],
              syntax="brotli_types mime-type ... | *;",
              doc="The response types Brotli compresses besides text/html (always); `*` for "
                  "any. Compared with the Content-Type before its parameters, "
                  "case-insensitively."),
    Directive("brotli_min_length", HSL, (1, 1), parse=types.size, default=20,
              syntax="brotli_min_length length;",
              doc="Compress only responses whose Content-Length is at least this; a response "
                  "of unknown length is compressed whatever its size."),
    Directive("brotli_comp_level", HSL, (1, 1), parse=types.number_between(0, 11), default=6,
              syntax="brotli_comp_level 0..11;",
              doc="Brotli's quality: 0 fastest, 11 smallest (and much slower)."),
    Directive("brotli_window", HSL, (1, 1), parse=_window, default=19,
              syntax="brotli_window 1k | 2k | ... | 16m;",
              doc="Brotli's window (lgwin), default 512k; smaller for a known short body. The "
                  "encoder's memory grows with it (several MiB at 4m), held only while a "
                  "response is being compressed."),
    Directive("brotli_static", HSL, (1, 1), parse=types.enum("on", "off", "always"),
              default="off", syntax="brotli_static on | off | always;",
              doc="Static files: serve the precompressed `FILE.br` next to a file, when it "
                  "exists, to clients that take br (`on`) or to all (`always`), with "
                  "`Content-Encoding: br` and the .br file's length, ETag and ranges; tried "
                  "before gzip_static. Independent of `brotli on`."),
]


def compile_location(conf, location, runtime):
    static = {"off": 0, "on": 1, "always": 2}[conf.get("brotli_static")]
    if not conf.get("brotli") and not static:
        return
    g = location.gzip
    if g is None:
        g = GzipConf()      # gzip off: brotli's fields only (enable and static stay off)
    g.br_enable = bool(conf.get("brotli"))
    g.br_static = static
    g.set_br_types(list(conf.get("brotli_types")))
    g.br_min_length = conf.get("brotli_min_length")
    g.br_level = conf.get("brotli_comp_level")
    g.br_lgwin = conf.get("brotli_window")
    location.gzip = g
