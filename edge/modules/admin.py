"""The admin listener: where the control process serves `/status` and `/metrics`.

`admin_listen` takes a TCP address (`127.0.0.1:9180`, `[::1]:9180`, `localhost:9180`)
or a unix socket (`unix:/run/edge/admin.sock`). The admin listener is not a data-plane
`listen`: the workers never see it; the control process binds it (edge/control/admin.py).

An address outside the loopback range exposes the node's internals to the network, so
it is refused unless `admin_token` is set too; every request must then carry
`Authorization: Bearer TOKEN`. A unix socket is guarded by its file permissions.
"""

import ipaddress
import socket
from dataclasses import dataclass

from edge.config import HTTP, ConfigError, Directive


@dataclass(frozen=True)
class AdminAddress:
    """Where the admin listener binds. `key` is what the operator wrote, normalised
    (a reload that keeps the key keeps the socket)."""
    key: str
    family: int
    host: str = ""      # TCP: the resolved address
    port: int = 0
    path: str = ""      # unix: the socket file

    @property
    def loopback(self):
        return self.family == socket.AF_UNIX or ipaddress.ip_address(self.host).is_loopback


@dataclass(frozen=True)
class AdminSettings:
    address: AdminAddress
    token: str | None


def _port(text, address):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f'invalid port in "{address}" of the "admin_listen" directive')
    return int(text)


def _admin_listen(node):
    address = node.args[0]
    if address.startswith("unix:"):
        path = address[5:]
        if not path.startswith("/"):
            raise ConfigError(f'the unix socket path in "{address}" must be absolute')
        return AdminAddress(address, socket.AF_UNIX, path=path)
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f'"{address}" needs a port in the "admin_listen" directive')
        port = _port(rest[1:], address)
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ConfigError(f'invalid IPv6 address in "{address}" of the "admin_listen" directive')
        return AdminAddress(f"[{host}]:{port}", socket.AF_INET6, host, port)
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        # A bare port would have to mean every address (as `listen` does) or loopback;
        # either guess surprises someone, so the address is required.
        raise ConfigError(f'"{address}" needs an address and a port in the '
                          f'"admin_listen" directive (e.g. 127.0.0.1:9180)')
    port = _port(port_text, address)
    if host == "*":
        host = "0.0.0.0"
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        try:
            host = socket.gethostbyname(host)   # "localhost", as nginx resolves at load
        except OSError:
            raise ConfigError(f'host not found in "{address}" of the "admin_listen" directive')
    return AdminAddress(f"{host}:{port}", socket.AF_INET, host, port)


def _token(node):
    token = node.args[0]
    # The token travels in a header: no whitespace or control characters.
    if not token or any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in token):
        raise ConfigError('invalid token in the "admin_token" directive')
    return token


DIRECTIVES = [
    Directive("admin_listen", (HTTP,), (1, 1), parse=_admin_listen,
              syntax="admin_listen address:port | unix:path;",
              doc="Where the control process serves the admin endpoints (`/status`, "
                  "`/metrics`). A loopback address or a unix socket; any other address "
                  "needs `admin_token`. Without it no admin socket is opened."),
    Directive("admin_token", (HTTP,), (1, 1), parse=_token,
              syntax="admin_token token;",
              doc="A secret every admin request must present as `Authorization: Bearer "
                  "token` (else 401). Required when `admin_listen` is not a loopback "
                  "address or a unix socket."),
]


def compile_http(http, runtime):
    address = http.local("admin_listen")
    token = http.local("admin_token")
    if address is not None and token is None and not address.loopback:
        node = http.node("admin_listen")
        raise ConfigError(f'"admin_listen {address.key}" is not a loopback address; '
                          f'set "admin_token" to expose it', node.file, node.line)
    runtime.admin = AdminSettings(address, token) if address is not None else None
