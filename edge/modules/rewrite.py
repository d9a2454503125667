"""nginx's rewrite module: `rewrite`, `set`, `if` and `break`, run with `return` in order.

`rewrite REGEX REPLACEMENT [flag];`, `set $var VALUE;`, `if (condition) { ... }` and
`break;` at server and location level, run with `return` in config order as one script
(edge/_core/rewrite.pyx). Inside `if` only return, rewrite, set and break are declared;
the config refuses anything else there, saying why.

A server's run before the location is searched (nginx's server rewrite phase); a
location's in its rewrite phase. A URI changed in a location without `break` makes the
location be searched again (at most 10 times, then 500)."""

from edge._core.reactor import (BreakOp, IfOp, Location, Regex, ReturnOp, RewriteOp,
                                RewriteScript, SetOp, Template, _user_variable)
from edge.config import LOCATION, SERVER, ConfigError, Directive

FLAGS = {"last": 1, "break": 2, "redirect": 3, "permanent": 4}
SCRIPT = ("rewrite", "set", "return", "if", "break")

# the block `if` opens; only the rewrite-module directives are declared in it
IF = "if"
IF_NOTE = ('inside "if" edge runs only return, rewrite, set and break, the directives '
           'nginx documents as safe there ("if is evil"); see docs/traffic.md, "if"')

COND_VAR, COND_EQ, COND_RX, COND_FILE = 0, 1, 2, 3
FILE_TESTS = {"-f", "-d", "-e", "-x", "!-f", "!-d", "!-e", "!-x"}


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


def _variable(text):
    """The left side of a condition: one variable, as nginx requires."""
    return _template(text)


def _if(node):
    """nginx's condition syntax: "(" and ")" may be words of their own or stuck to the
    first and last words."""
    parts = list(node.args)
    if not parts[0].startswith("("):
        raise ConfigError(f'invalid condition "{parts[0]}"')
    parts[0] = parts[0][1:]
    if not parts[0]:
        parts.pop(0)
    if not parts or not parts[-1].endswith(")"):
        raise ConfigError(f'invalid condition "{parts[-1] if parts else node.args[-1]}"')
    parts[-1] = parts[-1][:-1]
    if not parts[-1] and len(parts) > 1:
        parts.pop()
    first = parts[0]
    if len(first) > 1 and first.startswith("$"):
        if len(parts) not in (1, 3):
            raise ConfigError(f'invalid condition "{first}"')
        subject = _variable(first)
        if len(parts) == 1:
            return (COND_VAR, subject, None, None, False, "")
        op, right = parts[1], parts[2]
        if op in ("=", "!="):
            return (COND_EQ, subject, _template(right), None, op == "!=", "")
        if op in ("~", "~*", "!~", "!~*"):
            try:
                rx = Regex(right, op.endswith("*"))
            except ValueError as e:
                raise ConfigError(str(e))
            return (COND_RX, subject, None, rx, op.startswith("!"), "")
        raise ConfigError(f'unexpected "{op}" in condition')
    if first in FILE_TESTS:
        if len(parts) != 2:
            raise ConfigError(f'invalid condition "{first}"')
        return (COND_FILE, _template(parts[1]), None, None, first.startswith("!"), first[-1])
    raise ConfigError(f'invalid condition "{first}"')


DIRECTIVES = [
    Directive("rewrite", (SERVER, LOCATION, IF), (2, 3), parse=_rewrite, multi=True,
              syntax="rewrite regex replacement [last | break | redirect | permanent];",
              doc="If the URI matches `regex` (POSIX extended, `\\d` allowed), replace it with "
                  "`replacement` ($1..$9 and variables allowed). `last` searches the location "
                  "again with the new URI, `break` stops the rewrites here, `redirect` (302) and "
                  "`permanent` (301) answer with a redirect, as does a replacement starting "
                  "with http://, https:// or $scheme. New arguments in the replacement come "
                  "before the original ones; a final `?` drops the original ones. Runs with "
                  "`set` and `return` in config order; 10 location searches at most, then 500."),
    Directive("set", (SERVER, LOCATION, IF), (2, 2), parse=_set, multi=True,
              syntax="set $variable value;",
              doc="Give a variable a value (variables allowed) for the request, in the rewrite "
                  "phase, in config order with `rewrite` and `return`."),
    Directive("break", (SERVER, LOCATION, IF), (0, 0), multi=True, syntax="break;",
              doc="Stop the rewrite directives of this block here (a URI changed before it "
                  "stays in this location, as with `rewrite ... break`)."),
    Directive("if", (SERVER, LOCATION), (1, None), parse=_if, block=IF, multi=True,
              inner_note=IF_NOTE,
              syntax="if (condition) { ... }",
              doc="Run the `return`, `rewrite`, `set` and `break` inside when the condition "
                  "holds, in config order with the block's other rewrite directives. "
                  "Conditions: `$var` (false when empty or \"0\"), `$var = value`, "
                  "`$var != value`, `$var ~ regex` (`~*` ignoring case, `!~`, `!~*`; $1..$9 "
                  "set for what follows), `-f`, `-d`, `-e`, `-x` and `!-f`, `!-d`, `!-e`, "
                  "`!-x` on a path (one stat(2)). Any other directive inside, and `if` inside "
                  "`if`, is a config error."),
]


def has_script(conf):
    """Does this block hold rewrite directives (then `return` runs among them)?"""
    return any(conf.local(name) is not None for name in ("rewrite", "set", "if", "break"))


def _ops(conf, ops):
    """The script ops of one block, in config order; an `if` is followed by its block's."""
    for name, value in conf.sequence:
        if name == "rewrite":
            ops.append(value)
        elif name == "set":
            ops.append(SetOp(_user_variable(value[0]), value[1]))
        elif name == "break":
            ops.append(BreakOp())
        elif name == "if":
            block = next(b for b in conf.blocks("if") if b.value is value)
            op = IfOp(*value)
            ops.append(op)
            start = len(ops)
            _ops(block, ops)
            op.skip = len(ops) - start
        elif name == "return":
            status, body, url = value
            spec = Location("", b"/", conf.file, conf.line or 0)
            spec.set_return(status, body, url)
            spec.absolute_redirect = conf.get("absolute_redirect")
            spec.default_type = conf.get("default_type").encode("latin-1")
            ops.append(ReturnOp(spec))
    return ops


def _script(conf, server_level):
    return RewriteScript(_ops(conf, []), server_level)


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
