"""Request and response buffering for proxied locations, with nginx's directives.

On by default both ways, as in nginx: the request body is read whole and checked before a
peer is picked, and the response is read ahead of a slow client (memory, then a temp
file) so the upstream connection is freed as soon as the upstream has answered. The
compiled half is edge/_core/buffering.pyx; docs/http.md says when to turn each off."""

import os
import tempfile

from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)

# nginx's defaults on x86-64 Linux, whose memory page is 4 KiB
CLIENT_BODY_BUFFER_SIZE = 8192          # two pages
PROXY_BUFFER_SIZE = 4096                # one page
PROXY_BUFFERS = (8, 4096)
PROXY_MAX_TEMP_FILE_SIZE = 1024 * 1024 * 1024


def _buffers(node):
    number, size = node.args
    if not (number.isascii() and number.isdigit()) or int(number) == 0:
        raise ConfigError(f'invalid value "{number}" in "{node.name}" directive', node.file, node.line)
    try:
        size_bytes = types.parse_size(size)
    except ConfigError:
        raise ConfigError(f'invalid value "{size}" in "{node.name}" directive', node.file, node.line) from None
    if size_bytes == 0:
        raise ConfigError(f'invalid value "{size}" in "{node.name}" directive', node.file, node.line)
    return (int(number), size_bytes)


def _temp_path(node):
    """DIR [level1 [level2 [level3]]]: the levels are accepted for nginx configs and
    have no use here, since temp files never have a name."""
    for level in node.args[1:]:
        if level not in ("1", "2"):
            raise ConfigError(f'invalid value "{level}" in "{node.name}" directive', node.file, node.line)
    return node.args[0]


def _positive_size(node):
    value = types.size(node)
    if value == 0:
        raise ConfigError(f'"{node.name}" directive invalid value', node.file, node.line)
    return value


DIRECTIVES = [
    Directive("proxy_request_buffering", HSL, (1, 1), parse=types.flag, default=True,
              doc="on: the whole request body is read and checked before a peer is picked "
                  "(memory up to `client_body_buffer_size`, then a temp file) and goes upstream "
                  "with a Content-Length; an invalid body never reaches the upstream and a "
                  "failed peer can be retried with the body. off: the body streams as it arrives."),
    Directive("client_body_buffer_size", HSL, (1, 1), parse=_positive_size,
              default=CLIENT_BODY_BUFFER_SIZE,
              doc="Request bodies up to this size stay in memory; larger ones go to a temp file "
                  "in `client_body_temp_path`."),
    Directive("client_body_temp_path", HSL, (1, 4), parse=_temp_path, default=None,
              syntax="client_body_temp_path path [level1 [level2 [level3]]];",
              doc="Where request bodies larger than `client_body_buffer_size` are kept while "
                  "they are read (default: the system temp directory, $TMPDIR or /tmp). The "
                  "files have no name (O_TMPFILE, or unlinked at once): nothing is left behind, "
                  "even after a crash. The levels are accepted for nginx configs and unused."),
    Directive("proxy_buffering", HSL, (1, 1), parse=types.flag, default=True,
              doc="on: when the client reads slower than the upstream sends, the response is "
                  "read ahead into memory (`proxy_buffers`) and then a temp file, and the "
                  "upstream connection is freed once the upstream has answered. off: edge "
                  "stops reading the upstream while the client is slow. An upstream's "
                  "`X-Accel-Buffering: no|yes` decides for its response; `text/event-stream` "
                  "is never read ahead."),
    Directive("proxy_buffer_size", HSL, (1, 1), parse=_positive_size, default=PROXY_BUFFER_SIZE,
              doc="The largest upstream response head; a bigger one is a 502 (\"upstream sent "
                  "too big header\"), as in nginx."),
    Directive("proxy_buffers", HSL, (2, 2), parse=_buffers, default=PROXY_BUFFERS,
              syntax="proxy_buffers number size;",
              doc="number × size: the most memory one response's read-ahead holds when no temp "
                  "file can take more (`proxy_max_temp_file_size 0`, or the file is full)."),
    Directive("proxy_busy_buffers_size", HSL, (1, 1), parse=_positive_size, default=None,
              doc="With a temp file in use, the read-ahead kept in memory for the client; the "
                  "rest goes to the file. Default, as nginx: twice the larger of "
                  "`proxy_buffer_size` and one of `proxy_buffers` (8k with their defaults). "
                  "At least that larger size, and at most all `proxy_buffers` but one, as "
                  "nginx checks."),
    Directive("proxy_max_temp_file_size", HSL, (1, 1), parse=types.size,
              default=PROXY_MAX_TEMP_FILE_SIZE,
              doc="The largest temp file of one response's read-ahead; beyond it edge reads "
                  "the upstream only as fast as the client takes. 0: no temp file."),
    Directive("proxy_temp_path", HSL, (1, 4), parse=_temp_path, default=None,
              syntax="proxy_temp_path path [level1 [level2 [level3]]];",
              doc="Where response read-ahead beyond memory is kept (default: the system temp "
                  "directory). Files have no name, as for `client_body_temp_path`."),
]


def _node_of(conf, *names):
    """file, line of the first of `names` in force for this block (for errors)."""
    for name in names:
        nodes = conf.nodes_in_force(name)
        if nodes:
            return nodes[0].file, nodes[0].line
    return conf.file, conf.line


def _temp_dir(conf, name):
    path = conf.get(name) or tempfile.gettempdir()
    # made at load as nginx does; a path that cannot hold files fails the config, not a
    # request
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(f'{name} "{path}" cannot be created ({e.strerror})', *_node_of(conf, name)) from None
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f'{name} "{path}" is not a writable directory', *_node_of(conf, name))
    return os.path.abspath(path).encode()


def _check_proxy_buffers(conf):
    """nginx's checks (ngx_http_proxy_merge_loc_conf), with its wording."""
    buffer_size = conf.get("proxy_buffer_size")
    number, size = conf.get("proxy_buffers")
    largest = max(buffer_size, size)
    busy = conf.get("proxy_busy_buffers_size") or 2 * largest
    max_temp = conf.get("proxy_max_temp_file_size")
    where = _node_of(conf, "proxy_busy_buffers_size", "proxy_buffers", "proxy_buffer_size")
    if number < 2:
        raise ConfigError('there must be at least 2 "proxy_buffers"', *_node_of(conf, "proxy_buffers"))
    if busy < largest:
        raise ConfigError('"proxy_busy_buffers_size" must be equal to or greater than the maximum '
                          'of the value of "proxy_buffer_size" and one of the "proxy_buffers"', *where)
    if busy > (number - 1) * size:
        raise ConfigError('"proxy_busy_buffers_size" must be less than the size of all '
                          '"proxy_buffers" minus one buffer', *where)
    if max_temp and max_temp < largest:
        raise ConfigError('"proxy_max_temp_file_size" must be equal to zero to disable temporary '
                          'files usage or must be equal to or greater than the maximum of the '
                          'value of "proxy_buffer_size" and one of the "proxy_buffers"',
                          *_node_of(conf, "proxy_max_temp_file_size", "proxy_buffers"))
    return buffer_size, number * size, busy, max_temp


def compile_location(conf, location, runtime):
    location.request_buffering = conf.get("proxy_request_buffering")
    location.client_body_buffer_size = conf.get("client_body_buffer_size")
    location.proxy_buffering = conf.get("proxy_buffering")
    (location.proxy_buffer_size, location.proxy_buffers_total,
     location.proxy_busy_buffers_size, location.proxy_max_temp_file_size) = _check_proxy_buffers(conf)
    if conf.local("proxy_pass") is not None:
        # only a proxied location ever opens a temp file
        location.client_body_temp_path = _temp_dir(conf, "client_body_temp_path")
        location.proxy_temp_path = _temp_dir(conf, "proxy_temp_path")
