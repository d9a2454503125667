"""Directive declarations and the generic value setters.

A setter takes the ``Node`` of a directive and returns the value to store. It raises
``ConfigError`` on a bad value; ``build`` fills in the node's file:line. The setters read
``node.args[0]`` (``strings`` reads them all), so declare them with ``nargs=(1, 1)``.

The plain parsers ``parse_size``, ``parse_time`` and ``parse_rate`` take a string (for
parts of arguments such as ``fail_timeout=10s``) and raise ``ConfigError`` (a
``ValueError``) without a location; inside a ``parse`` callback just let it propagate.
"""

import re
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Directive:
    """One row of a module's directive table.

    - ``contexts``: the contexts it may appear in (``("http", "server")``).
    - ``nargs``: ``(min, max)`` argument count, ``max=None`` for unbounded.
    - ``parse(node) -> value``: the stored value; if None the value is the single
      argument for ``nargs == (1, 1)``, ``True`` for ``(0, 0)``, else the list of args.
    - ``default``: what ``Conf.get`` returns when no enclosing block sets it (already
      in stored form, e.g. ``60.0`` for a time).
    - ``block``: the context its ``{...}`` opens, or None for a simple directive.
    - ``multi``: may repeat in one block; the stored value is the list of values.
    - ``raw``: the directive takes a ``{...}`` whose lines are not directives (``map``,
      ``split_clients``): ``parse`` reads them from ``node.block``.
    - ``syntax``: optional human syntax for the docs, e.g.
      ``"listen address[:port] [reuseport];"``; derived from ``nargs`` when empty.
    - ``inner_note``: for a block directive, said after the error of a known directive
      that is not allowed inside its block (why, and where the docs are).
    - ``noop``: for an nginx directive edge accepts but that changes nothing in edge
      (tuning of nginx's own internals): why, in a few words. ``build`` checks and
      stores it as any directive and records one warning per occurrence naming
      file:line and this reason (``Conf.warnings`` of the root), which ``edge -t``
      prints and the master logs at ``warn``.
    """

    name: str
    contexts: tuple
    nargs: tuple
    parse: object = None
    default: object = None
    doc: str = ""
    block: str = None
    multi: bool = False
    syntax: str = ""
    raw: bool = False
    inner_note: str = ""
    noop: str = ""

    def __post_init__(self):
        # Accept a single context name or a list, store a tuple.
        contexts = self.contexts
        if isinstance(contexts, str):
            contexts = (contexts,)
        object.__setattr__(self, "contexts", tuple(contexts))
        lo, hi = self.nargs
        if lo < 0 or (hi is not None and hi < lo):
            raise ValueError(f"directive {self.name!r}: bad nargs {self.nargs!r}")
        object.__setattr__(self, "nargs", (lo, hi))

    def value(self, node):
        """The stored value for ``node`` (one occurrence)."""
        if self.parse is not None:
            return self.parse(node)
        if self.nargs == (1, 1):
            return node.args[0]
        if self.nargs == (0, 0):
            return True
        return list(node.args)


@dataclass(frozen=True)
class Refused:
    """An nginx directive that edge knows and does not do, where accepting it would
    change behaviour: ``build`` refuses it with an error naming the directive, its
    file:line, ``reason`` and the docs page (docs/nginx.md lists these rows).

    - ``name``: the directive, or a prefix ending in ``*`` (``perl_*``) for a family.
    - ``reason``: why edge does not do it.
    - ``instead``: the edge alternative, if any (for the docs page).
    """

    name: str
    reason: str
    instead: str = ""

    def matches(self, name):
        if self.name.endswith("*"):
            return name.startswith(self.name[:-1])
        return name == self.name


NGINX_DOCS = "docs/nginx.md"


# -- plain parsers ------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_SIZE_RE = re.compile(r"([0-9]+)([kKmMgG]?)")

# nginx time units, largest first; each may appear once, in this order.
_TIME_UNITS = [("y", 365 * 86400), ("M", 30 * 86400), ("w", 7 * 86400), ("d", 86400),
               ("h", 3600), ("m", 60), ("s", 1), ("ms", 0.001)]
_TIME_ORDER = {u: i for i, (u, _) in enumerate(_TIME_UNITS)}
_TIME_FACTOR = dict(_TIME_UNITS)
# "ms" must be tried before "m"; a trailing number without unit means seconds.
_TIME_PART_RE = re.compile(r"\s*([0-9]+)(ms|[yMwdhms]?)\s*")

_RATE_RE = re.compile(r"([0-9]+)r/([sm])")


def parse_size(text):
    """``512`` ``16k`` ``16K`` ``10m`` ``1g`` → bytes (int)."""
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ConfigError(f'invalid size "{text}"')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_time(text):
    """nginx time: ``30`` ``30s`` ``500ms`` ``1m30s`` ``1h`` ``1d`` ``1w`` ``1M`` ``1y``
    → seconds (float). Units go from largest to smallest, each at most once; a number
    without a unit is seconds and may only come last."""
    total, pos, last = 0.0, 0, -1
    if not text.strip():
        raise ConfigError(f'invalid time "{text}"')
    while pos < len(text):
        m = _TIME_PART_RE.match(text, pos)
        if not m:
            raise ConfigError(f'invalid time "{text}"')
        number, unit = int(m.group(1)), m.group(2) or "s"
        order = _TIME_ORDER[unit]
        bare = not m.group(2)
        # Units strictly descending ("1m30" is 90s, "30s5" and "1s1m" are errors).
        if order <= last or (bare and m.end() != len(text)):
            raise ConfigError(f'invalid time "{text}"')
        total += number * _TIME_FACTOR[unit]
        last, pos = order, m.end()
    return total


def parse_rate(text):
    """``100r/s`` ``10r/m`` → requests per second (float)."""
    m = _RATE_RE.fullmatch(text)
    if not m:
        raise ConfigError(f'invalid rate "{text}"')
    n = int(m.group(1))
    return float(n) if m.group(2) == "s" else n / 60.0


# -- setters (node -> value) --------------------------------------------------------

def flag(node):
    """``on`` | ``off`` → bool (case-insensitive, as nginx)."""
    v = node.args[0]
    if v.lower() == "on":
        return True
    if v.lower() == "off":
        return False
    raise ConfigError(f'invalid value "{v}" in "{node.name}" directive, '
                      f'it must be "on" or "off"', node.file, node.line)


def size(node):
    """A size in bytes: ``512``, ``16k``, ``10m``, ``1g``."""
    try:
        return parse_size(node.args[0])
    except ConfigError:
        raise ConfigError(f'"{node.name}" directive invalid value',
                          node.file, node.line) from None


def time(node):
    """A duration in seconds (float): ``30s``, ``500ms``, ``1m30s`` …"""
    try:
        return parse_time(node.args[0])
    except ConfigError:
        raise ConfigError(f'"{node.name}" directive invalid value',
                          node.file, node.line) from None


def rate(node):
    """A request rate in requests per second (float): ``100r/s``, ``10r/m``."""
    try:
        return parse_rate(node.args[0])
    except ConfigError:
        raise ConfigError(f'"{node.name}" directive invalid value',
                          node.file, node.line) from None


def number(node):
    """A non-negative integer."""
    v = node.args[0]
    if not (v.isascii() and v.isdigit()):
        raise ConfigError(f'"{node.name}" directive invalid number', node.file, node.line)
    return int(v)


def number_between(low, high):
    """A setter for an integer from ``low`` to ``high``, inclusive."""
    def parse_number_between(node):
        v = number(node)
        if not low <= v <= high:
            raise ConfigError(f'"{node.name}" must be between {low} and {high} (got {v})',
                              node.file, node.line)
        return v
    return parse_number_between


def string(node):
    """The single argument."""
    return node.args[0]


def strings(node):
    """All the arguments, as a list."""
    return list(node.args)


def enum(*choices):
    """A setter accepting one of ``choices`` (case-insensitive) and returning it as
    declared. The setter has a ``choices`` attribute (used by the docs)."""
    by_lower = {c.lower(): c for c in choices}
    expected = ", ".join(f'"{c}"' for c in choices)

    def parse_enum(node):
        v = node.args[0]
        try:
            return by_lower[v.lower()]
        except KeyError:
            raise ConfigError(f'invalid value "{v}" in "{node.name}" directive, '
                              f'it must be one of {expected}', node.file, node.line) \
                from None

    parse_enum.choices = tuple(choices)
    return parse_enum
