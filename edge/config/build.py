"""Validate a parsed tree against the directive tables and build ``Conf`` blocks."""

from .errors import ConfigError

MAIN = "main"


class Registry:
    """The directive tables, keyed by (name, context)."""

    def __init__(self, directives):
        self.by_key = {}
        self.by_name = {}
        for d in directives:
            for ctx in d.contexts:
                if (d.name, ctx) in self.by_key:
                    raise ValueError(f"directive {d.name!r} declared twice for {ctx!r}")
                self.by_key[d.name, ctx] = d
            self.by_name.setdefault(d.name, []).append(d)

    def declarations(self, name):
        try:
            return self.by_name[name]
        except KeyError:
            # A programming error (a typo in a module), not a config error.
            raise KeyError(f"no directive {name!r} is declared") from None

    def default(self, name, conf):
        """The default of ``name`` as seen from ``conf``: the declaration for the
        context of ``conf`` or, failing that, of its nearest enclosing block."""
        decls = self.declarations(name)
        c = conf
        while c is not None:
            d = self.by_key.get((name, c.context))
            if d is not None:
                return d.default
            c = c.parent
        return decls[0].default


class Conf:
    """The settings of one block (``main``, ``http``, one ``server`` …).

    ``value`` is the stored value of the directive that opened the block (its ``parse``
    result, else its args as for any directive); None for the root.
    """

    def __init__(self, context, name, args, file, line, parent, registry, value=None):
        self.context = context
        self.name = name
        self.args = args
        self.file = file
        self.line = line
        self.parent = parent
        self.value = value
        self.children = []
        self._registry = registry
        self._values = {}  # name -> value (a list of values for multi), in order set
        self._nodes = {}   # name -> Node (a list of Nodes for multi)
        self.sequence = []  # (name, value) of every directive of this block, in config order

    def __repr__(self):
        args = " ".join(self.args)
        return f"<Conf {self.context} {args!r} at {self.file}:{self.line}>"

    def local(self, name):
        """The value set in this very block, or None."""
        self._registry.declarations(name)  # KeyError on an undeclared name
        return self._values.get(name)

    def get(self, name):
        """nginx inheritance: the value set in this block, else in the nearest
        enclosing block that sets it, else the directive's default."""
        self._registry.declarations(name)
        c = self
        while c is not None:
            if name in c._values:
                return c._values[name]
            c = c.parent
        return self._registry.default(name, self)

    def is_set(self, name):
        """True if ``name`` is set in this very block."""
        return name in self._values

    def node(self, name):
        """The Node that set ``name`` here (a list of Nodes for multi), or None."""
        return self._nodes.get(name)

    def nodes_in_force(self, name):
        """The Nodes behind ``get(name)``: those of this block, else of the nearest
        enclosing block that sets it (a list, empty when only the default applies), for
        file:line in the errors a module finds later."""
        c = self
        while c is not None:
            if name in c._nodes:
                node = c._nodes[name]
                return node if isinstance(node, list) else [node]
            c = c.parent
        return []

    def directives_set(self):
        """The names set in this block, in the order first set."""
        return list(self._values)

    def blocks(self, name=None):
        """The child blocks opened by directive ``name`` (all children if None)."""
        return [c for c in self.children if name is None or c.name == name]


def build(parsed, directives):
    """Validate ``parsed`` (a ParsedConfig) against ``directives``; return the root Conf."""
    registry = Registry(directives)
    main_file = parsed.files[0][0] if parsed.files else None
    root = Conf(MAIN, None, [], main_file, None, None, registry)
    _fill(root, parsed.nodes, registry)
    return root


def _fill(conf, nodes, registry):
    for node in nodes:
        d = _lookup(node, conf, registry)

        if (d.block is not None or d.raw) and node.block is None:
            raise ConfigError(f'directive "{node.name}" has no opening "{{"',
                              node.file, node.line)
        if d.block is None and not d.raw and node.block is not None:
            raise ConfigError('unexpected "{"', node.file, node.line)

        lo, hi = d.nargs
        if len(node.args) < lo or (hi is not None and len(node.args) > hi):
            raise ConfigError(f'invalid number of arguments in "{node.name}" directive',
                              node.file, node.line)

        if not d.multi and node.name in conf._values:
            raise ConfigError(f'"{node.name}" directive is duplicate',
                              node.file, node.line)

        try:
            value = d.value(node)
        except ConfigError as e:
            raise e.locate(node.file, node.line)

        conf.sequence.append((node.name, value))
        if d.multi:
            conf._values.setdefault(node.name, []).append(value)
            conf._nodes.setdefault(node.name, []).append(node)
        else:
            conf._values[node.name] = value
            conf._nodes[node.name] = node

        if d.block is not None:
            child = Conf(d.block, node.name, list(node.args), node.file, node.line,
                         conf, registry, value)
            conf.children.append(child)
            _fill(child, node.block, registry)


def _lookup(node, conf, registry):
    """The declaration of ``node`` for the block ``conf``, or the nginx error."""
    d = registry.by_key.get((node.name, conf.context))
    if d is not None:
        return d
    if node.name in registry.by_name:
        opener = registry.by_key.get((conf.name, conf.parent.context)) \
            if conf.parent is not None else None
        note = f": {opener.inner_note}" if opener is not None and opener.inner_note else ""
        raise ConfigError(f'"{node.name}" directive is not allowed here{note}',
                          node.file, node.line)
    raise ConfigError(f'unknown directive "{node.name}"', node.file, node.line)
