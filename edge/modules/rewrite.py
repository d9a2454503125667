"""nginx's rewrite module: `rewrite REGEX REPLACEMENT [flag];` and `set $var VALUE;`, at
server and location level, run with `return` in config order (edge/_core/rewrite.pyx).

A server's run before the location is searched (nginx's server rewrite phase); a
location's in its rewrite phase. A URI changed in a location without `break` makes the
location be searched again (at most 10 times, then 500)."""

from edge._core.reactor import (Location, Regex, RewriteOp, RewriteScript, ReturnOp, SetOp,
                                Template, _user_variable)
from edge.config import LOCATION, SERVER, ConfigError, Directive

FLAGS = {"last": 1, "break": 2, "redirect": 3, "permanent": 4}
SCRIPT = ("rewrite", "set", "return")


def _template(text):
    try:
        return Template.compile(text)
    except ValueError as e:
        raise ConfigError(str(e))


def _rewrite(node):
    pattern, replacement = node.args[0], node.args[1]
    flag = 0
    if len(node.args) == 3:
        if node.args[2] not in FLAGS:
            raise ConfigError(f'invalid parameter "{node.args[2]}"')
        flag = FLAGS[node.args[2]]
    try:
        rx = Regex(pattern)
    except ValueError as e:
        raise ConfigError(str(e))
    to_url = replacement.startswith(("http://", "https://", "$scheme"))
    add_args = True
    if replacement.endswith("?"):
        replacement = replacement[:-1]
        add_args = False
    # the arguments start at the replacement's own "?", never at one a capture brings
    path, q, args = replacement.partition("?")
    return RewriteOp(rx, _template(path), _template(args) if q else None, flag, to_url, add_args)


def _set(node):
    if not node.args[0].startswith("$") or len(node.args[0]) < 2:
        raise ConfigError(f'invalid variable name "{node.args[0]}"')
    return (node.args[0][1:], _template(node.args[1]))


DIRECTIVES = [
    Directive("rewrite", (SERVER, LOCATION), (2, 3), parse=_rewrite, multi=True,
              syntax="rewrite regex replacement [last | break | redirect | permanent];",
              doc="If the URI matches `regex` (POSIX extended, `\\d` allowed), replace it with "
                  "`replacement` ($1..$9 and variables allowed). `last` searches the location "
                  "again with the new URI, `break` stops the rewrites here, `redirect` (302) and "
                  "`permanent` (301) answer with a redirect, as does a replacement starting "
                  "with http://, https:// or $scheme. New arguments in the replacement come "
                  "before the original ones; a final `?` drops the original ones. Runs with "
                  "`set` and `return` in config order; 10 location searches at most, then 500."),
    Directive("set", (SERVER, LOCATION), (2, 2), parse=_set, multi=True,
              syntax="set $variable value;",
              doc="Give a variable a value (variables allowed) for the request, in the rewrite "
                  "phase, in config order with `rewrite` and `return`."),
]


def has_script(conf):
    """Does this block hold rewrite directives (then `return` runs among them)?"""
    return conf.local("rewrite") is not None or conf.local("set") is not None


def _script(conf, server_level):
    ops = []
    for name, value in conf.sequence:
        if name == "rewrite":
            ops.append(value)
        elif name == "set":
            ops.append(SetOp(_user_variable(value[0]), value[1]))
        elif name == "return":
            status, body, url = value
            spec = Location("", b"/", conf.file, conf.line or 0)
            spec.set_return(status, body, url)
            spec.absolute_redirect = conf.get("absolute_redirect")
            spec.default_type = conf.get("default_type").encode("latin-1")
            ops.append(ReturnOp(spec))
    return RewriteScript(ops, server_level)


def compile_server(conf, server, runtime):
    if has_script(conf):
        server.script = _script(conf, True)


def compile_location(conf, location, runtime):
    if not has_script(conf):
        return
    location.phases.add("rewrite", _script(conf, False))
    if conf.local("return") is not None:
        # the return runs in the script: without it, the content is the proxy or nothing
        location.content = 2 if conf.local("proxy_pass") is not None else 0
