"""IP rules: nginx's `allow` and `deny` (ngx_http_access_module), with its semantics.

`allow address | CIDR | unix: | all;` and `deny ...;` in http, server and location, any
number, in any order. The rules of a level are tried in the order written; the first one
that matches the client address decides (deny: 403 and an error-log line "access
forbidden by rule"); when none matches, the request goes on. A level with any `allow` or
`deny` of its own does not inherit the rules of the levels around it; a level with none
takes those of the nearest level that has some. The client address is `$remote_addr`'s:
after the PROXY protocol and realip (`set_real_ip_from` with `real_ip_header`).
"""

import ipaddress
import itertools

from edge._core.reactor import IPRules
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive

HSL = (HTTP, SERVER, LOCATION)

# allow and deny are two directives whose relative order matters: every rule gets a
# sequence number when it is parsed (files are parsed in order, includes expanded in
# place), and a level's rules are sorted by it
_seq = itertools.count()


def _rule(deny):
    name = "deny" if deny else "allow"

    def parse(node):
        text = node.args[0]
        if text == "all":
            return (next(_seq), deny, "all", text)
        if text == "unix:":
            return (next(_seq), deny, "unix", text)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(f'invalid parameter "{text}" in "{name}" directive')
        return (next(_seq), deny, "net", str(net) if "/" in text else text)
    return parse


DIRECTIVES = [
    Directive("allow", HSL, (1, 1), parse=_rule(False), multi=True,
              syntax="allow address | CIDR | unix: | all;",
              doc="Let clients from this address or network in (the first allow/deny rule "
                  "that matches the client address decides; nginx's access module)."),
    Directive("deny", HSL, (1, 1), parse=_rule(True), multi=True,
              syntax="deny address | CIDR | unix: | all;",
              doc="Refuse clients from this address or network with 403 (the first "
                  "allow/deny rule that matches decides)."),
]


def rules_of(conf):
    """The rules in force at a level: its own, else the nearest enclosing level's (a level
    with any allow or deny of its own inherits none), in the order written."""
    level = conf
    while level is not None:
        own = (level.local("allow") or []) + (level.local("deny") or [])
        if own:
            return [(deny, kind, text) for _, deny, kind, text in sorted(own)]
        level = level.parent
    return []


def compile_location(conf, location, runtime):
    rules = rules_of(conf)
    if rules:
        location.phases.add("access", IPRules(rules))
