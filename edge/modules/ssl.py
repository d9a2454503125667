"""TLS termination with nginx's ssl_* directives: certificates per server (RSA and ECDSA
together), SNI with nginx's server_name ranking, protocols, ciphers, client certificates.

Each server with certificates gets its own TlsContext (edge/_core/tls.pyx), built from
bytes the master read (ParsedConfig.data_files), so every process of a generation, and a
worker reloading in place, builds exactly what `edge -t` checked. A certificate or key that
cannot be used fails the load with the file:line of the directive that names it; the
running generation keeps serving. The compiled half is edge/_core/tls.pyx."""

import os

from edge._core.reactor import TlsContext
from edge.config import HTTP, SERVER, ConfigError, Directive, types
from edge import log

HS = (HTTP, SERVER)
PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
VERIFY_CLIENT = {"off": 0, "on": 1, "optional": 2, "optional_no_ca": 3}


def _protocols(node):
    for name in node.args:
        if name not in PROTOCOLS:
            raise ConfigError(f'invalid value "{name}" in "{node.name}" directive', node.file, node.line)
    return list(node.args)


def _verify_client(node):
    value = node.args[0]
    if value not in VERIFY_CLIENT:
        raise ConfigError(f'invalid value "{value}" in "{node.name}" directive, it must be '
                          '"on", "off", "optional" or "optional_no_ca"', node.file, node.line)
    return VERIFY_CLIENT[value]


def _depth(node):
    value = types.number(node)
    if value < 0:
        raise ConfigError(f'invalid value "{node.args[0]}" in "{node.name}" directive', node.file, node.line)
    return value


DIRECTIVES = [
    Directive("ssl_certificate", HS, (1, 1), multi=True,
              doc="A PEM file with the server's certificate, then its chain. May be given twice "
                  "(an RSA and an ECDSA certificate): the handshake picks the one the client "
                  "supports. Each needs its `ssl_certificate_key`, in the same order."),
    Directive("ssl_certificate_key", HS, (1, 1), multi=True,
              doc="The PEM private key of the `ssl_certificate` in the same position; it may "
                  "be encrypted (`ssl_password_file`)."),
    Directive("ssl_password_file", HS, (1, 1),
              doc="A file of passphrases, one per line, tried in turn on encrypted keys."),
    Directive("ssl_protocols", HS, (1, 4), parse=_protocols, default=["TLSv1.2", "TLSv1.3"],
              syntax="ssl_protocols [TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3];",
              doc="The TLS versions accepted."),
    Directive("ssl_ciphers", HS, (1, 1), default="HIGH:!aNULL:!MD5",
              doc="OpenSSL's cipher list for TLS 1.2 and older (TLS 1.3 suites: "
                  "`ssl_conf_command Ciphersuites ...`)."),
    Directive("ssl_prefer_server_ciphers", HS, (1, 1), parse=types.flag, default=False,
              doc="on: the server's cipher order wins over the client's."),
    Directive("ssl_ecdh_curve", HS, (1, 1), default="auto",
              doc="The key-exchange groups, colon-separated (`X25519:prime256v1`); `auto` "
                  "keeps OpenSSL's list."),
    Directive("ssl_dhparam", HS, (1, 1),
              doc="A PEM file of DH parameters for DHE ciphers (TLS 1.2)."),
    Directive("ssl_conf_command", HS, (2, 2), multi=True,
              syntax="ssl_conf_command name value;",
              doc="Any OpenSSL configuration command (SSL_CONF_cmd), applied last, e.g. "
                  "`ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;` or "
                  "`ssl_conf_command Options KTLS;` (kernel TLS where the kernel has it)."),
    Directive("ssl_client_certificate", HS, (1, 1),
              doc="CA certificates (PEM) that client certificates are verified against, and "
                  "whose names are sent to the client as acceptable."),
    Directive("ssl_trusted_certificate", HS, (1, 1),
              doc="More CA certificates to verify client certificates against, not sent to "
                  "the client."),
    Directive("ssl_verify_client", HS, (1, 1), parse=_verify_client, default=0,
              syntax="ssl_verify_client on | off | optional | optional_no_ca;",
              doc="Ask for a client certificate. on: a request without a valid one gets 400; "
                  "optional: one that is sent must be valid; optional_no_ca: one that is sent "
                  "need not chain to a trusted CA. The verdict is `$ssl_client_verify`."),
    Directive("ssl_verify_depth", HS, (1, 1), parse=_depth, default=1,
              doc="The longest client certificate chain verified."),
    Directive("ssl_handshake_timeout", HS, (1, 1), parse=types.time, default=60.0,
              doc="How long a client may take to finish the TLS handshake; then the "
                  "connection is closed."),
]


def _read(node, runtime, index=0):
    """The file a directive names, read once by the master (ParsedConfig.data_files). A
    relative path is taken from the main config file's directory (nginx's conf prefix)."""
    path = node.args[index]
    if not os.path.isabs(path):
        path = os.path.join(getattr(runtime, "conf_dir", "") or os.getcwd(), path)
    data = runtime.data_files.get(path)
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError(f'cannot load "{node.args[index]}" of "{node.name}" directive: '
                              f'{e.strerror}', node.file, node.line) from None
        runtime.data_files[path] = data
    return data


def _one(conf, name):
    """The node behind an inherited single directive, for file:line."""
    nodes = conf.nodes_in_force(name)
    return nodes[0] if nodes else None


def has_certificates(server_conf):
    return bool(server_conf.get("ssl_certificate"))


def compile_server(server_conf, server, runtime):
    listens = server_conf.local("listen") or []
    ssl_listens = [n for v, n in zip(listens, server_conf.node("listen") or []) if v.ssl]
    if not has_certificates(server_conf):
        if ssl_listens:
            node = ssl_listens[0]
            raise ConfigError(f'no "ssl_certificate" is defined for the "listen ... ssl" directive',
                              node.file, node.line)
        return
    server.tls = build_context(server_conf, runtime)


def build_context(conf, runtime):
    ctx = TlsContext(True)
    cert_nodes = conf.nodes_in_force("ssl_certificate")
    key_nodes = conf.nodes_in_force("ssl_certificate_key") or []
    if len(key_nodes) < len(cert_nodes):
        node = cert_nodes[len(key_nodes)]
        raise ConfigError(f'no "ssl_certificate_key" is defined for certificate "{node.args[0]}"',
                          node.file, node.line)
    passwords = None
    if conf.get("ssl_password_file") is not None:
        node = _one(conf, "ssl_password_file")
        text = _read(node, runtime)
        passwords = [line.rstrip(b"\r") for line in text.split(b"\n") if line.rstrip(b"\r")]
        if not passwords:
            raise ConfigError(f'no passwords in "{node.args[0]}"', node.file, node.line)
    for cert_node, key_node in zip(cert_nodes, key_nodes):
        cert = _read(cert_node, runtime)
        key = _read(key_node, runtime)
        try:
            ctx.add_certificate(cert, key, passwords)
        except ValueError as e:
            raise ConfigError(f'cannot load certificate "{cert_node.args[0]}" with key '
                              f'"{key_node.args[0]}": {e}', cert_node.file, cert_node.line) from None
    for warning in ctx.warnings:
        node = cert_nodes[0]
        log.error("warn", f'{warning}: "{node.args[0]}" in {node.file}:{node.line}')
    _apply(ctx, conf, "ssl_protocols", lambda v: ctx.set_protocols(v))
    _apply(ctx, conf, "ssl_ciphers", lambda v: ctx.set_ciphers(v.encode()))
    ctx.prefer_server_ciphers(conf.get("ssl_prefer_server_ciphers"))
    _apply(ctx, conf, "ssl_ecdh_curve", lambda v: ctx.set_curves(v.encode()))
    if conf.get("ssl_dhparam") is not None:
        node = _one(conf, "ssl_dhparam")
        _apply(ctx, conf, "ssl_dhparam", lambda v: ctx.set_dhparam(_read(node, runtime)))
    verify = conf.get("ssl_verify_client")
    for name, advertise in (("ssl_client_certificate", True), ("ssl_trusted_certificate", False)):
        if conf.get(name) is not None:
            node = _one(conf, name)
            _apply(ctx, conf, name, lambda v: ctx.trust(_read(node, runtime), advertise))
    if verify and conf.get("ssl_client_certificate") is None and conf.get("ssl_trusted_certificate") is None \
            and verify != VERIFY_CLIENT["optional_no_ca"]:
        node = _one(conf, "ssl_verify_client")
        raise ConfigError('no ssl_client_certificate or ssl_trusted_certificate for '
                          'ssl_verify_client', node.file, node.line)
    ctx.set_verify_client(verify, conf.get("ssl_verify_depth"))
    for node in conf.nodes_in_force("ssl_conf_command") or []:
        name, value = node.args
        try:
            ctx.conf_command(name.encode(), value.encode())
        except ValueError as e:
            raise ConfigError(str(e), node.file, node.line) from None
    return ctx


def _apply(ctx, conf, name, setter):
    """Run a TlsContext setter with the directive's value; OpenSSL's refusal becomes a
    ConfigError at the directive (or the server block, for a default value)."""
    value = conf.get(name)
    try:
        setter(value)
    except ValueError as e:
        node = _one(conf, name) or conf
        raise ConfigError(f'"{name}" failed: {e}', node.file, node.line) from None


def configure_binding(binding, server_conf):
    """Per listen address, from its default server, as nginx's handshake settings are."""
    binding.ssl_handshake_timeout_ms = int(server_conf.get("ssl_handshake_timeout") * 1000)
