"""Turn tokens into a tree of ``Node``s and expand ``include``.

The parser knows the grammar (``name args... ;`` or ``name args... { ... }``) and one
directive, ``include``, which it replaces by the nodes of the files it names, wherever
it appears. Everything else is the business of ``build`` and of the modules' tables.
"""

import glob
import os
from dataclasses import dataclass, field

from .errors import ConfigError
from .lexer import WORD, tokenize

# An include chain longer than this is almost certainly a file including itself.
MAX_INCLUDE_DEPTH = 32


@dataclass
class Node:
    """One directive as written: ``name args... ;`` or ``name args... { block }``."""

    name: str
    args: list
    block: list = None  # list[Node] for a block directive, None for a simple one
    file: str = None
    line: int = None


@dataclass
class ParsedConfig:
    """The parsed main file with includes expanded.

    ``files`` is every file read, in the order read, with its text (for ``edge -T``).
    A file included twice is listed once, as nginx's ``-T`` does.

    ``data_files`` holds the data files modules read while compiling (path -> bytes,
    e.g. the consumers file): filled by the first compilation (the master's), then used
    by every process that compiles this ParsedConfig, so a whole generation runs the
    data the master tested. Not dumped by ``-T`` (it holds secrets).
    """

    nodes: list
    files: list
    data_files: dict = field(default_factory=dict)


def parse_file(path, overlay=None):
    """Read and parse the main configuration file at ``path``.

    ``overlay`` ({absolute path: text, or None for a file that is gone}) replaces files
    on disk for this parse only: the admin API tests a candidate set of files exactly as
    ``edge -t`` would test them once written (an overlaid file is matched by ``include``
    globs as if it existed, a None one as if it did not)."""
    parser = _Parser(path, overlay)
    return parser.parse_main(parser.read(path, None, None), path)


def parse_string(text, path="<string>"):
    """Parse ``text`` as if it were the main file ``path`` (includes are relative to
    the directory of ``path``; ``path`` is used in errors and in ``files``)."""
    return _Parser(path).parse_main(text, path)


def _read(path, file, line):
    """Return the text of ``path``; ``file``:``line`` is the include that named it."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f'open() "{path}" failed ({e.strerror})', file, line) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f'"{path}" is not valid UTF-8 (byte {e.start})', file, line) \
            from None


class _Parser:
    def __init__(self, main_path, overlay=None):
        # nginx resolves includes against the conf dir; ours is the main file's dir.
        self.base = os.path.dirname(main_path)
        self.files = []
        self.seen = set()
        self.overlay = {os.path.abspath(k): v for k, v in (overlay or {}).items()}

    def read(self, path, file, line):
        if self.overlay:
            text = self.overlay.get(os.path.abspath(path), False)
            if text is None:
                raise ConfigError(f'open() "{path}" failed (No such file or directory)',
                                  file, line)
            if text is not False:
                return text
        return _read(path, file, line)

    def _glob(self, full):
        paths = glob.glob(full)
        if self.overlay:
            import fnmatch
            want = os.path.abspath(full).split(os.sep)
            found = {os.path.abspath(p): p for p in paths}
            for p in self.overlay:
                got = p.split(os.sep)
                if len(got) == len(want) and all(
                        fnmatch.fnmatchcase(g, w) and not (g.startswith(".") and not w.startswith("."))
                        for g, w in zip(got, want)):
                    found.setdefault(p, p)
            paths = [shown for p, shown in found.items() if self.overlay.get(p, False) is not None]
        return sorted(paths)

    def parse_main(self, text, path):
        nodes = self._parse_text(text, path, depth=0)
        return ParsedConfig(nodes, self.files)

    def _parse_text(self, text, path, depth):
        if path not in self.seen:
            self.seen.add(path)
            self.files.append((path, text))
        tokens = tokenize(text, path)
        nodes, _ = self._parse_block(tokens, 0, path, depth, in_block=False)
        return nodes

    def _parse_block(self, tokens, i, path, depth, in_block):
        """Parse nodes from tokens[i] up to the matching "}" (or EOF at top level).

        Returns (nodes, index after the closing "}").
        """
        nodes = []
        words = []  # (value, line) of the directive being read
        while True:
            kind, value, line = tokens[i]
            i += 1
            if kind == WORD:
                words.append((value, line))
                continue

            if kind == ";" or kind == "{":
                if not words:
                    raise ConfigError(f'unexpected "{kind}"', path, line)
                node = Node(words[0][0], [w for w, _ in words[1:]], None, path, words[0][1])
                words = []
                if kind == "{":
                    if node.name == "include":
                        raise ConfigError('unexpected "{"', path, line)
                    node.block, i = self._parse_block(tokens, i, path, depth, True)
                    nodes.append(node)
                elif node.name == "include":
                    nodes.extend(self._include(node, depth))
                else:
                    nodes.append(node)

            elif kind == "}":
                if words or not in_block:
                    raise ConfigError('unexpected "}"', path, line)
                return nodes, i

            else:  # EOF
                if words:
                    raise ConfigError('unexpected end of file, expecting ";" or "}"',
                                      path, line)
                if in_block:
                    raise ConfigError('unexpected end of file, expecting "}"', path, line)
                return nodes, i

    def _include(self, node, depth):
        """Return the nodes of the files named by ``include PATTERN;``."""
        if len(node.args) != 1:
            raise ConfigError('invalid number of arguments in "include" directive',
                              node.file, node.line)
        if depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError(f"include nesting is deeper than {MAX_INCLUDE_DEPTH} levels",
                              node.file, node.line)
        pattern = node.args[0]
        if any(c in pattern for c in "*?["):
            # Escape the base dir so a "[" in it is not taken for a glob.
            full = os.path.join(glob.escape(self.base), pattern)
            paths = self._glob(full)  # matching nothing is fine
        else:
            paths = [os.path.join(self.base, pattern)]

        nodes = []
        for p in paths:
            text = self.read(p, node.file, node.line)
            nodes.extend(self._parse_text(text, p, depth + 1))
        return nodes
