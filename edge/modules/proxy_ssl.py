"""TLS to upstreams: `proxy_pass https://...` and nginx's `proxy_ssl_*` directives.

A location whose proxy_pass is https gets an UpstreamTls (edge/_core/upstream_tls.pyx): a
client TLS context built from the settings in force there, plus the per-connection
choices (SNI, the name verified, session reuse). Locations with the same settings share
one, and with it their pooled connections and kept sessions.

Certificate, key and password files are read once by the master into the ParsedConfig's
`data_files` (path -> bytes); every process compiling that ParsedConfig builds from those
bytes and never opens the files itself. A file that cannot be read or parsed fails the
config (edge -t, reload) with the directive's file:line.
"""

import os

from edge._core.reactor import (
    Template,
    TlsContext,
    UpstreamTls,
    keep_request_head,
)
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)

PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def _protocols(node):
    for name in node.args:
        if name not in PROTOCOLS:
            raise ConfigError(f'invalid value "{name}" in "{node.name}" directive, it must be '
                              'one of ' + ", ".join(f'"{p}"' for p in PROTOCOLS))
    return list(dict.fromkeys(node.args))


def _depth(node):
    text = node.args[0]
    if not text.isdigit():
        raise ConfigError(f'invalid value "{text}" in "{node.name}" directive')
    return int(text)


def _file(node):
    path = node.args[0]
    if "$" in path:
        raise ConfigError(f'variables in "{node.name}" are not supported')
    return path


def _name(node):
    try:
        return Template.compile(node.args[0])
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _conf_command(node):
    return (node.args[0], node.args[1])


DIRECTIVES = [
    Directive("proxy_ssl_verify", HSL, (1, 1), parse=types.flag, default=False,
              doc="Verify the https upstream's certificate: its chain against "
                  "`proxy_ssl_trusted_certificate` and its name against `proxy_ssl_name`. "
                  "A failure is an upstream error (502, `proxy_next_upstream error`, max_fails)."),
    Directive("proxy_ssl_trusted_certificate", HSL, (1, 1), parse=_file,
              syntax="proxy_ssl_trusted_certificate file;",
              doc="PEM file of the CA certificates that verify https upstreams (required by "
                  "`proxy_ssl_verify on`). Relative paths are relative to the main config "
                  "file's directory."),
    Directive("proxy_ssl_verify_depth", HSL, (1, 1), parse=_depth, default=1,
              syntax="proxy_ssl_verify_depth number;",
              doc="The longest certificate chain accepted when verifying an https upstream."),
    Directive("proxy_ssl_server_name", HSL, (1, 1), parse=types.flag, default=False,
              doc="Send the name (`proxy_ssl_name`) as SNI in the TLS handshake with the "
                  "upstream. Off by default, as in nginx: no SNI is sent."),
    Directive("proxy_ssl_name", HSL, (1, 1), parse=_name,
              syntax="proxy_ssl_name name;",
              doc="The name sent as SNI and verified in the upstream's certificate (variables "
                  "allowed; a port is stripped). Default: the host of `proxy_pass` "
                  "($proxy_host without its port)."),
    Directive("proxy_ssl_protocols", HSL, (1, None), parse=_protocols,
              default=["TLSv1.2", "TLSv1.3"],
              syntax="proxy_ssl_protocols [TLSv1] [TLSv1.1] [TLSv1.2] [TLSv1.3];",
              doc="The TLS versions offered to https upstreams."),
    Directive("proxy_ssl_ciphers", HSL, (1, 1), default="DEFAULT",
              syntax="proxy_ssl_ciphers ciphers;",
              doc="OpenSSL cipher list for TLS 1.2 and older to https upstreams (TLS 1.3 "
                  "suites: `proxy_ssl_conf_command Ciphersuites ...`)."),
    Directive("proxy_ssl_certificate", HSL, (1, 1), parse=_file,
              syntax="proxy_ssl_certificate file;",
              doc="PEM client certificate (and chain) presented to https upstreams that ask "
                  "for one."),
    Directive("proxy_ssl_certificate_key", HSL, (1, 1), parse=_file,
              syntax="proxy_ssl_certificate_key file;",
              doc="PEM key of `proxy_ssl_certificate`."),
    Directive("proxy_ssl_password_file", HSL, (1, 1), parse=_file,
              syntax="proxy_ssl_password_file file;",
              doc="Passphrases for `proxy_ssl_certificate_key`, one a line, tried in turn."),
    Directive("proxy_ssl_session_reuse", HSL, (1, 1), parse=types.flag, default=True,
              doc="Resume TLS sessions with upstreams: each peer's latest session is offered "
                  "on the next new connection to it (an abbreviated handshake)."),
    Directive("proxy_ssl_conf_command", HSL, (2, 2), parse=_conf_command, multi=True,
              syntax="proxy_ssl_conf_command name value;",
              doc="An OpenSSL configuration command (SSL_CONF_cmd) for the upstream TLS "
                  "context, e.g. `Ciphersuites TLS_AES_128_GCM_SHA256`. Several may be given; "
                  "inherited only by blocks that set none."),
]


def _where(conf, *names):
    for name in names:
        nodes = conf.nodes_in_force(name)
        if nodes:
            return nodes[0].file, nodes[0].line
    node = conf.node("proxy_pass")
    return node.file, node.line


def _read(conf, name, runtime):
    """The bytes of the file a directive names, through data_files. A relative path is
    taken from the main config file's directory (nginx's conf prefix)."""
    path = conf.get(name)
    full = path if os.path.isabs(path) else \
        os.path.join(getattr(runtime, "conf_dir", "") or os.getcwd(), path)
    data_files = runtime.data_files
    data = data_files.get(full)
    if data is None:
        try:
            with open(full, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError(f'cannot read "{path}" of "{name}" ({e.strerror})',
                              *_where(conf, name)) from None
        data_files[full] = data
    return data


def compile_location(conf, location, runtime):
    value = conf.local("proxy_pass")
    if value is None or value[2] != "https":
        return
    verify = conf.get("proxy_ssl_verify")
    trusted_path = conf.get("proxy_ssl_trusted_certificate")
    if verify and trusted_path is None:
        raise ConfigError('no "proxy_ssl_trusted_certificate" for "proxy_ssl_verify"',
                          *_where(conf, "proxy_ssl_verify"))
    # read only for verification, as nginx does
    trusted = [_read(conf, "proxy_ssl_trusted_certificate", runtime)] if verify else []
    cert_path = conf.get("proxy_ssl_certificate")
    key_path = conf.get("proxy_ssl_certificate_key")
    cert_key = None
    if cert_path is not None:
        if key_path is None:
            raise ConfigError(f'no "proxy_ssl_certificate_key" is defined for certificate '
                              f'"{cert_path}"', *_where(conf, "proxy_ssl_certificate"))
        cert_key = (_read(conf, "proxy_ssl_certificate", runtime),
                    _read(conf, "proxy_ssl_certificate_key", runtime))
    passwords = None
    if cert_key is not None and conf.get("proxy_ssl_password_file") is not None:
        text = _read(conf, "proxy_ssl_password_file", runtime)
        passwords = [line.rstrip(b"\r") for line in text.split(b"\n") if line.rstrip(b"\r")]
        if not passwords:
            raise ConfigError(f'empty password file "{conf.get("proxy_ssl_password_file")}"',
                              *_where(conf, "proxy_ssl_password_file"))
    protocols = conf.get("proxy_ssl_protocols")
    ciphers = conf.get("proxy_ssl_ciphers")
    depth = conf.get("proxy_ssl_verify_depth")
    commands = conf.get("proxy_ssl_conf_command") or []
    server_name = conf.get("proxy_ssl_server_name")
    name_nodes = conf.nodes_in_force("proxy_ssl_name")
    name_text = name_nodes[0].args[0] if name_nodes else None
    reuse = conf.get("proxy_ssl_session_reuse")

    cache = getattr(runtime, "upstream_tls", None)
    if cache is None:
        cache = runtime.upstream_tls = {}
    key = (tuple(protocols), ciphers, tuple(trusted), depth, cert_key, tuple(passwords or ()),
           tuple(commands), verify, server_name, name_text, reuse)
    tls = cache.get(key)
    if tls is None:
        context = _context(conf, protocols, ciphers, trusted, depth, cert_key, passwords, commands)
        tls = UpstreamTls(context, verify, server_name, conf.get("proxy_ssl_name"), reuse)
        cache[key] = tls
    location.upstream_tls = tls
    name = conf.get("proxy_ssl_name")
    if name is not None and name.uses_head:
        keep_request_head(location)


def _context(conf, protocols, ciphers, trusted, depth, cert_key, passwords, commands):
    """The client TlsContext; an OpenSSL complaint names the directive behind it."""
    context = TlsContext(False)
    try:
        step = "proxy_ssl_protocols"
        context.set_protocols(list(protocols))
        step = "proxy_ssl_ciphers"
        context.set_ciphers(ciphers.encode("latin-1"))
        step = "proxy_ssl_verify_depth"
        context.set_verify_peer(False, depth)       # the verdict is checked after the handshake
        for pem in trusted:
            step = "proxy_ssl_trusted_certificate"
            context.trust(pem)
        if cert_key is not None:
            step = "proxy_ssl_certificate"
            context.add_certificate(cert_key[0], cert_key[1], passwords)
        step = "proxy_ssl_conf_command"
        for name, value in commands:
            context.conf_command(name.encode("latin-1"), value.encode("latin-1"))
    except ValueError as e:
        path = conf.get(step)
        what = f' "{path}"' if isinstance(path, str) and step in _FILES else ""
        raise ConfigError(f'"{step}"{what}: {e}', *_where(conf, step)) from None
    return context


_FILES = ("proxy_ssl_trusted_certificate", "proxy_ssl_certificate")
