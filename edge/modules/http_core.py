"""Servers, listen addresses, names, locations, client limits and timeouts."""

import socket

from edge._core.reactor import Location, Server, set_server_tokens
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types


class Listen:
    """One parsed `listen` directive."""

    def __init__(self, host, port, family, default_server, reuseport, backlog, proxy_protocol,
                 ssl=False):
        self.host = host
        self.port = port
        self.family = family
        self.default_server = default_server
        self.reuseport = reuseport
        self.backlog = backlog
        self.proxy_protocol = proxy_protocol
        self.ssl = ssl

    @property
    def key(self):
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"


def _port(text):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f'invalid port in "{text}" of the "listen" directive')
    return int(text)


def _listen(node):
    address = node.args[0]
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = _port(rest[1:]) if rest.startswith(":") else 80
        family = socket.AF_INET6
    elif ":" in address:
        host, _, port_text = address.rpartition(":")
        port = _port(port_text)
        family = socket.AF_INET
    elif address.isdigit():
        host, port, family = "0.0.0.0", _port(address), socket.AF_INET
    else:
        host, port, family = address, 80, socket.AF_INET
    if host in ("*", ""):
        host = "0.0.0.0"
    if family == socket.AF_INET:
        try:
            socket.inet_pton(socket.AF_INET, host)
        except OSError:
            try:
                host = socket.gethostbyname(host)
            except OSError:
                raise ConfigError(f'host not found in "{address}" of the "listen" directive')
    default_server = reuseport = proxy_protocol = ssl = False
    backlog = 511
    for option in node.args[1:]:
        if option in ("default_server", "default"):
            default_server = True
        elif option == "reuseport":
            reuseport = True
        elif option == "proxy_protocol":
            proxy_protocol = True
        elif option == "ssl":
            ssl = True
        elif option.startswith("backlog=") and option[8:].isdigit():
            backlog = int(option[8:])
        else:
            raise ConfigError(f'invalid parameter "{option}"')
    return Listen(host, port, family, default_server, reuseport, backlog, proxy_protocol, ssl)


def _location(node):
    if len(node.args) == 2:
        modifier, uri = node.args
        if modifier not in ("=", "~", "~*", "^~"):
            raise ConfigError(f'invalid location modifier "{modifier}"')
    else:
        modifier, uri = "", node.args[0]
        # nginx also accepts the modifier glued to the URI: "=/x", "~*\.jpg$"
        for m in ("^~", "~*", "=", "~"):
            if uri.startswith(m) and len(uri) > len(m):
                modifier, uri = m, uri[len(m):]
                break
    return (modifier, uri)


def _large_buffers(node):
    if len(node.args) != 2:
        raise ConfigError('invalid number of arguments in "large_client_header_buffers" directive')
    number = node.args[0]
    if not number.isdigit() or int(number) < 1:
        raise ConfigError(f'invalid value "{number}"')
    return (int(number), types.parse_size(node.args[1]))


HSL = (HTTP, SERVER, LOCATION)


def _max_headers(node):
    value = types.number(node)
    if not 1 <= value <= 128:
        raise ConfigError('"max_request_headers" must be between 1 and 128')
    return value

def _keepalive_disable(node):
    """nginx's bitmask: none | msie6 | safari (1 | 2)."""
    mask = 0
    for value in node.args:
        if value == "none":
            pass            # nginx: a bit of its own that no check reads
        elif value == "msie6":
            mask |= 1
        elif value == "safari":
            mask |= 2
        else:
            raise ConfigError(f'invalid value "{value}"')
    return mask


DIRECTIVES = [
    Directive("server", (HTTP,), (0, 0), multi=True, block=SERVER, syntax="server { ... }",
              doc="A virtual server: its listen addresses, names and locations."),
    Directive("listen", (SERVER,), (1, 6), parse=_listen, multi=True,
              syntax="listen address[:port] | port [default_server] [ssl] [reuseport] [backlog=N] [proxy_protocol];",
              doc="An address and port to accept connections on. `default_server` makes this "
                  "server answer requests whose Host matches no server_name on that address. "
                  "Every listen is SO_REUSEPORT with one socket per worker."),
    Directive("server_name", (SERVER,), (1, None), parse=types.strings, multi=True,
              syntax="server_name name ...;",
              doc="Host names this server answers: exact, `*.example.com`, `.example.com` "
                  "(the domain and its subdomains), `www.example.*`, or `~regex` (POSIX "
                  "extended, case-insensitive). nginx's order: exact, longest leading "
                  "wildcard, longest trailing wildcard, first regex, then the default server."),
    Directive("location", (SERVER, LOCATION), (1, 2), parse=_location, multi=True, block=LOCATION,
              syntax="location [= | ^~ | ~ | ~*] uri { ... }",
              doc="Settings for matching request paths, chosen with nginx's precedence: exact, "
                  "then the longest prefix (`^~` stops there), then regexes in order, then the "
                  "longest prefix. Locations may nest, as in nginx: a nested prefix must lie "
                  "inside its parent's, and nothing nests in an exact location."),
    Directive("client_header_timeout", HSL[:2], (1, 1), parse=types.time, default=60.0,
              doc="How long a client may take to send a request head; then 408."),
    Directive("proxy_protocol_timeout", HSL[:2], (1, 1), parse=types.time, default=30.0,
              doc="How long a connection on a `proxy_protocol` listener may take to send "
                  "its PROXY header before it is closed."),
    Directive("client_body_timeout", HSL, (1, 1), parse=types.time, default=60.0,
              doc="The longest pause between two reads of a request body; then 408."),
    Directive("keepalive_timeout", HSL, (1, 1), parse=types.time, default=75.0,
              doc="How long an idle keep-alive client connection stays open."),
    Directive("keepalive_requests", HSL, (1, 1), parse=types.number, default=1000,
              doc="The most requests served on one client connection."),
    Directive("keepalive_disable", HSL, (1, 2), parse=_keepalive_disable, default=1,
              syntax="keepalive_disable none | msie6 | safari ...;",
              doc="Close the connection after the response for these browsers, as nginx "
                  "tells them by User-Agent: `msie6` (MSIE 4-6 without SV1; POST "
                  "requests only; the default), `safari` (Safari on macOS)."),
    Directive("send_timeout", HSL, (1, 1), parse=types.time, default=60.0,
              doc="The longest pause between two writes to a client; then the connection closes."),
    Directive("client_header_buffer_size", HSL[:2], (1, 1), parse=types.size, default=1024,
              doc="The buffer a new request head is read into, as nginx: a head that does not "
                  "fit moves to a larger buffer, by large_client_header_buffers' size "
                  "(docs/connections.md)."),
    Directive("large_client_header_buffers", HSL[:2], (2, 2), parse=_large_buffers,
              default=(4, 8192), syntax="large_client_header_buffers number size;",
              doc="Limits for request heads: the request line must fit in `size` (else 414) "
                  "and the whole head in `number` × `size` (else 431)."),
    Directive("max_request_headers", HSL[:2], (1, 1), parse=_max_headers, default=100,
              doc="The most header lines a request may have (at most 128); more is 431."),
    Directive("client_max_body_size", HSL, (1, 1), parse=types.size, default=1024 * 1024,
              doc="The largest request body accepted (413 beyond it); 0 disables the check."),
    Directive("default_type", HSL, (1, 1), default="text/plain",
              doc="Content-Type of responses made by `return` with a body, and of static "
                  "files whose extension `types` does not know."),
    Directive("tcp_nodelay", (HTTP, SERVER), (1, 1), parse=types.flag, default=True,
              doc="TCP_NODELAY on client connections (on by default, as nginx), set where "
                  "nginx sets it: when a connection goes keep-alive, a proxied response "
                  "starts or a TLS handshake begins. Taken from the default server of each "
                  "listen address (not per location, unlike nginx)."),
    Directive("server_tokens", (HTTP,), (1, 1), parse=types.enum("on", "off", "build"),
              default="on", syntax="server_tokens on | off | build;",
              doc="The `Server` field of the responses edge makes (and the foot of its "
                  "error pages): `edge/VERSION` with `on` (the default, as nginx's), "
                  "`edge` with `off`. `build` is `on` (edge has no build name). Set in the "
                  "http block only (nginx also takes it per server and location). A "
                  "proxied response carries edge's Server unless `proxy_pass_header "
                  "Server`."),
]


def server_name_shown(http):
    """What `server_tokens` makes edge show: b"edge" or b"edge/VERSION"."""
    import edge
    if http is None or http.get("server_tokens") == "off":
        return b"edge"
    return b"edge/" + edge.__version__.encode()


def compile_http(http, runtime):
    # before any location is prepared: prebuilt `return` heads carry the Server field
    runtime.server_name = server_name_shown(http)
    set_server_tokens(runtime.server_name)


def compile_location(conf, location, runtime):
    location.keepalive_disable = conf.get("keepalive_disable")
    location.keepalive_timeout_ms = int(conf.get("keepalive_timeout") * 1000)
    location.keepalive_requests = conf.get("keepalive_requests")
    location.client_body_timeout_ms = int(conf.get("client_body_timeout") * 1000)
    location.send_timeout_ms = int(conf.get("send_timeout") * 1000)
    location.client_max_body_size = conf.get("client_max_body_size")
    location.default_type = conf.get("default_type").encode("latin-1")


def configure_binding(binding, server_conf):
    """Head limits come from the default server of each address, as in nginx."""
    binding.client_header_timeout_ms = int(server_conf.get("client_header_timeout") * 1000)
    binding.client_header_buffer_size = server_conf.get("client_header_buffer_size")
    number, size = server_conf.get("large_client_header_buffers")
    binding.large_header_buffers = number
    binding.large_header_buffer_size = size
    binding.max_headers = server_conf.get("max_request_headers")
    binding.proxy_protocol_timeout_ms = int(server_conf.get("proxy_protocol_timeout") * 1000)
    binding.tcp_nodelay = server_conf.get("tcp_nodelay")
    from edge.modules import ssl
    ssl.configure_binding(binding, server_conf)
    if binding.proxy_protocol:
        from edge.modules import realip
        binding.pp_trusted = realip.trusted_proxies(server_conf)


def new_location(conf):
    modifier, uri = conf.value
    try:
        return Location(modifier, uri.encode("latin-1"), conf.file, conf.line)
    except ValueError as e:
        raise ConfigError(str(e), conf.file, conf.line)


def new_server(conf):
    names = [n for values in (conf.local("server_name") or []) for n in values]
    try:
        return Server(names or [""], conf.file, conf.line)
    except ValueError as e:
        node = conf.node("server_name")
        node = node[0] if node else conf
        raise ConfigError(str(e), node.file, node.line)
