"""The real client address behind trusted proxies and load balancers (nginx realip).

From a trusted address (`set_real_ip_from`), `real_ip_header` names the client:
`X-Real-IP`, `X-Forwarded-For` (the last address; with `real_ip_recursive on` the last
untrusted one) or `proxy_protocol` (the PROXY header's source). `$remote_addr`, logs and
the X-Forwarded-For edge sends upstream then use that address; `$realip_remote_addr`
keeps the TCP peer. On a `listen ... proxy_protocol` address, `set_real_ip_from` also says
who may send PROXY headers: a connection from elsewhere is closed."""

import ipaddress

from edge._core.reactor import RealIP
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types


def _cidr(node):
    text = node.args[0]
    if text == "unix:":
        raise ConfigError('"unix:" is not supported in "set_real_ip_from"')
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ConfigError(f'invalid address "{text}" in "set_real_ip_from"')


def _header(node):
    value = node.args[0]
    if not value or any(c in value for c in " :\t"):
        raise ConfigError(f'invalid header name "{value}"')
    return value


HSL = (HTTP, SERVER, LOCATION)

DIRECTIVES = [
    Directive("set_real_ip_from", HSL, (1, 1), parse=_cidr, multi=True,
              syntax="set_real_ip_from address | CIDR;",
              doc="A trusted address or range whose requests may name the real client."),
    Directive("real_ip_header", HSL, (1, 1), parse=_header, default="X-Real-IP",
              syntax="real_ip_header field | X-Real-IP | X-Forwarded-For | proxy_protocol;",
              doc="Where the real client address is read from."),
    Directive("real_ip_recursive", HSL, (1, 1), parse=types.flag, default=False,
              doc="With X-Forwarded-For: skip trusted addresses from the right and use the "
                  "first untrusted one, instead of the last address."),
]


def compile_location(conf, location, runtime):
    cidrs = conf.get("set_real_ip_from")
    if cidrs:
        location.realip = RealIP(list(cidrs), conf.get("real_ip_header"),
                                 conf.get("real_ip_recursive"))


def trusted_proxies(server_conf):
    """For a proxy_protocol listener: who may send PROXY headers (None: anyone)."""
    cidrs = server_conf.get("set_real_ip_from")
    return RealIP(list(cidrs), "proxy_protocol", False) if cidrs else None
