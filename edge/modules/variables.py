"""User variables: `map` and `split_clients` (http level), and the declaration of every
variable `set`, `map` or `split_clients` names, which nginx makes for the whole config.

Both are evaluated when a request first reads the variable, then kept for the request
(`volatile` in a map: evaluated at each read). See edge/_core/rewrite.pyx."""

from decimal import Decimal, InvalidOperation

from edge._core.reactor import MapDef, Regex, SplitDef, Template, declare_user_variables
from edge.config import HTTP, ConfigError, Directive

# the directives that declare a variable, and the index of its "$name" argument
DECLARING = {"set": 0, "map": 1, "split_clients": 1}


def declare(nodes):
    """Before the directives are parsed: declare every user variable of the config, so
    any template (parsed with its directive) may name it."""
    names = []

    def walk(nodes):
        for node in nodes:
            index = DECLARING.get(node.name)
            if index is not None and len(node.args) > index and node.args[index].startswith("$"):
                names.append(node.args[index][1:])
            if node.block is not None and node.name not in ("map", "split_clients"):
                walk(node.block)

    walk(nodes)
    return declare_user_variables(names)


def _template(text):
    try:
        return Template.compile(text)
    except ValueError as e:
        raise ConfigError(str(e))


def _variable_name(arg):
    if not arg.startswith("$") or len(arg) < 2:
        raise ConfigError(f'invalid variable name "{arg}"')
    return arg[1:]


def _map(node):
    source = _template(node.args[0])
    name = _variable_name(node.args[1])
    entries = [n for n in node.block]
    hostnames = any(n.name == "hostnames" and not n.args for n in entries)
    volatile = False
    exact, leading, trailing, regexes = {}, [], [], []
    default = None
    for entry in entries:
        if entry.block is not None:
            raise ConfigError('unexpected "{"', entry.file, entry.line)
        key, args = entry.name, entry.args
        if key in ("hostnames", "volatile") and not args:
            volatile = volatile or key == "volatile"
            continue
        if len(args) != 1:
            raise ConfigError("invalid number of the map parameters", entry.file, entry.line)
        try:
            value = Template.compile(args[0])
        except ValueError as e:
            raise ConfigError(str(e), entry.file, entry.line)
        if key == "default":
            if default is not None:
                raise ConfigError('duplicate default map parameter', entry.file, entry.line)
            default = value
            continue
        if key.startswith("~"):
            icase = key.startswith("~*")
            try:
                regexes.append((Regex(key[2:] if icase else key[1:], icase), value))
            except ValueError as e:
                raise ConfigError(str(e), entry.file, entry.line)
            continue
        if key.startswith("\\"):
            key = key[1:]
        low = key.lower()
        if hostnames and low.startswith("*."):
            leading.append((low[1:].encode("latin-1"), False, value))
        elif hostnames and low.startswith(".") and len(low) > 1:
            leading.append((low.encode("latin-1"), True, value))
        elif hostnames and low.endswith(".*"):
            trailing.append((low[:-1].encode("latin-1"), value))
        else:
            b = low.encode("latin-1")
            if b in exact:
                raise ConfigError(f'conflicting parameter "{key}"', entry.file, entry.line)
            exact[b] = value
    return (name, MapDef(source, hostnames, exact, leading, trailing, regexes, default), volatile)


def _percent(text):
    """"10%" / "0.5%" in hundredths of a percent (nginx allows two decimals)."""
    if not text.endswith("%"):
        raise ValueError
    d = Decimal(text[:-1])
    n = d * 100
    if n != n.to_integral_value() or n <= 0:
        raise ValueError
    return int(n)


def _split_clients(node):
    key = _template(node.args[0])
    name = _variable_name(node.args[1])
    parts = []
    for entry in node.block:
        if entry.block is not None or len(entry.args) != 1:
            raise ConfigError("invalid number of arguments in split_clients", entry.file, entry.line)
        if entry.name == "*":
            share = 0
        else:
            try:
                share = _percent(entry.name)
            except (ValueError, InvalidOperation):
                raise ConfigError(f'invalid percent value "{entry.name}"', entry.file, entry.line)
        parts.append((share, entry.args[0].encode("latin-1")))
    try:
        return (name, SplitDef(key, parts))
    except ValueError as e:
        raise ConfigError(str(e))


DIRECTIVES = [
    Directive("map", (HTTP,), (2, 2), parse=_map, multi=True, raw=True,
              syntax="map string $variable { ... }",
              doc="Define `$variable` from `string` (variables allowed): exact keys "
                  "(case-insensitive), `hostnames` (then `*.example.com`, `.example.com`, "
                  "`www.example.*` keys), regexes `~` / `~*` (POSIX extended, `\\d` allowed; "
                  "their captures usable in the value) in order, `default` (empty when "
                  "absent), `include file;`, `volatile`. Values may hold variables. "
                  "Evaluated when first read, once per request."),
    Directive("split_clients", (HTTP,), (2, 2), parse=_split_clients, multi=True, raw=True,
              syntax="split_clients string $variable { ... }",
              doc="A/B split: `$variable` takes the value of the first share "
                  "(`10% canary;`, two decimals at most, `*` for the rest) that the "
                  "MurmurHash2 of `string` falls into, exactly as nginx computes it, so a "
                  "key lands on the same side as with nginx. Shares may total 100% at most."),
]


def compile_http(http, runtime):
    from edge._core.reactor import _user_variable
    for name, source, volatile in http.local("map") or []:
        uv = _user_variable(name)
        uv.source = source
        uv.volatile = volatile
    for name, source in http.local("split_clients") or []:
        _user_variable(name).source = source
