"""The admin listener: where the control process serves `/status` and `/metrics`.

`admin_listen` takes a TCP address (`127.0.0.1:9180`, `[::1]:9180`, `localhost:9180`)
or a unix socket (`unix:/run/edge/admin.sock`). The admin listener is not a data-plane
`listen`: the workers never see it; the control process binds it (edge/control/admin.py).

An address outside the loopback range exposes the node's internals to the network, so
it is refused unless a token is set too (`admin_token`, or better `admin_token_file`, whose
file the master reads with the config, like the consumers file, so the token never
appears in the config text that `edge -T` and `GET /config` show); every request must
then carry `Authorization: Bearer TOKEN`. A unix socket is guarded by its file
permissions.

`admin_allow CIDR ...;` (repeatable) names the TCP peers the admin listener answers;
any other peer gets 403 before its request is read further. Without it every peer that
can connect may try (a loopback listener only hears this host; a token guards the
others). It does not apply to a unix socket (no peer address). docs/admin.md.
"""

import ipaddress
import os
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
    allow: tuple | None = None      # ip_network objects, or None: every peer
    token_file: str | None = None   # where the token came from, for messages
    history: int = 20               # admin_history: generations of managed files kept

    def allows(self, host):
        """Whether a TCP peer at `host` (a text address) may use the listener."""
        if self.allow is None:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.allow)


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


def _valid_token(token):
    # The token travels in a header: visible ASCII, no whitespace or control characters.
    return bool(token) and all(0x21 <= ord(c) < 0x7F for c in token)


def _token(node):
    token = node.args[0]
    if not _valid_token(token):
        raise ConfigError('invalid token in the "admin_token" directive')
    return token


def _allow(node):
    nets = []
    for arg in node.args:
        if arg == "all":
            nets += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            nets.append(ipaddress.ip_network(arg, strict=False))
        except ValueError:
            raise ConfigError(f'invalid address or CIDR "{arg}" in the "admin_allow" directive')
    return nets


def _read_token_file(node, runtime):
    """The token of `admin_token_file`: the file's bytes are read by the master (and kept
    in ParsedConfig.data_files, so every process of a generation uses the same token),
    stripped of surrounding whitespace."""
    path = node.args[0]
    if not os.path.isabs(path):
        path = os.path.join(getattr(runtime, "conf_dir", "") or os.getcwd(), path)
    data = runtime.data_files.get(path)
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read(4097)
        except OSError as e:
            raise ConfigError(f'cannot read "{node.args[0]}" of the "admin_token_file" '
                              f'directive: {e.strerror}', node.file, node.line) from None
        runtime.data_files[path] = data
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if len(data) > 4096 or not _valid_token(token):
        raise ConfigError(f'"{node.args[0]}" of the "admin_token_file" directive must hold '
                          f'one token of visible ASCII characters', node.file, node.line)
    return path, token


def _history(node):
    text = node.args[0]
    if not text.isdigit() or not 0 < int(text) <= 10000:
        raise ConfigError(f'invalid value "{text}" in the "admin_history" directive '
                          f'(a number of generations, 1 to 10000)')
    return int(text)


DIRECTIVES = [
    Directive("admin_listen", (HTTP,), (1, 1), parse=_admin_listen,
              syntax="admin_listen address:port | unix:path;",
              doc="Where the control process serves the admin API (docs/admin.md), "
                  "`/status` and `/metrics`. A loopback address or a unix socket; any "
                  "other address needs `admin_token` or `admin_token_file`. Without it no "
                  "admin socket is opened."),
    Directive("admin_token", (HTTP,), (1, 1), parse=_token,
              syntax="admin_token token;",
              doc="A secret every admin request must present as `Authorization: Bearer "
                  "token` (else 401). Required when `admin_listen` is not a loopback "
                  "address or a unix socket. Prefer `admin_token_file`: this one shows in "
                  "`edge -T` and `GET /config`."),
    Directive("admin_token_file", (HTTP,), (1, 1),
              syntax="admin_token_file path;",
              doc="As `admin_token`, the token read from a file (surrounding whitespace "
                  "removed) when the config is loaded; a reload reads it again. Relative "
                  "to the config's directory."),
    Directive("admin_allow", (HTTP,), (1, None), parse=_allow, multi=True,
              syntax="admin_allow address | CIDR | all ...;",
              doc="The TCP peers (IPv4 and IPv6 addresses or CIDRs) the admin listener "
                  "answers; others get 403. Repeatable. Default: every peer (a "
                  "non-loopback listener needs a token). Not applied to a unix socket."),
    Directive("admin_history", (HTTP,), (1, 1), parse=_history, default=20,
              syntax="admin_history number;",
              doc="How many generations of the files the admin API manages "
                  "(`conf.d/_admin/`, the consumers file) are kept for `GET /config/history` "
                  "and rollback (docs/admin.md#history-and-rollback)."),
]


def compile_http(http, runtime):
    address = http.local("admin_listen")
    token = http.local("admin_token")
    token_file = None
    file_node = http.node("admin_token_file")
    if file_node is not None:
        if token is not None:
            raise ConfigError('"admin_token" and "admin_token_file" are exclusive: set one',
                              file_node.file, file_node.line)
        token_file, token = _read_token_file(file_node, runtime)
    allow = http.local("admin_allow")
    if allow is not None:
        allow = tuple(net for nets in allow for net in nets)
    if address is not None and token is None and not address.loopback:
        node = http.node("admin_listen")
        raise ConfigError(f'"admin_listen {address.key}" is not a loopback address; '
                          f'set "admin_token" or "admin_token_file" to expose it',
                          node.file, node.line)
    history = http.get("admin_history")
    runtime.admin = (AdminSettings(address, token, allow, token_file, history or 20)
                     if address is not None else None)
