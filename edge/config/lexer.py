"""Split nginx-style configuration text into tokens.

A token is ``(kind, value, line)`` where ``kind`` is one of:

- ``WORD``: a directive name or argument, quotes removed and escapes applied;
- ``";"``, ``"{"``, ``"}"``: the punctuation;
- ``EOF``: always the last token, with the line the text ends on.

The rules follow nginx's reader:

- Words are separated by whitespace; ``;`` and ``{`` also end a word, ``}`` does not
  (``a}`` is one word), so ``}`` only closes a block at the start of a token.
- ``#`` starts a comment to the end of the line only at the start of a token
  (``a#b`` is one word, and so is ``"#"``).
- A word may be single- or double-quoted; a quoted word may be empty and may span lines.
  A closing quote must be followed by whitespace, ``;``, ``{`` or ``)`` (``"a"b`` is an
  error; ``"a")`` is the word ``a`` and the word ``)``, for ``if`` conditions).
- ``$name`` and ``${name}`` are plain text; the ``{`` right after ``$`` does not open a
  block.
- A backslash escapes the next character, quoted or not: ``\\"`` ``\\'`` ``\\\\`` give the
  character, ``\\n`` ``\\t`` ``\\r`` give the control character, and any other
  ``\\x`` is kept as both characters (so regexes like ``\\.`` survive), as nginx does.
  Outside quotes an escaped character never ends the word (``a\\ b`` is one word).
"""

from .errors import ConfigError

WORD = "word"
EOF = "eof"

_SPACE = " \t\r\n"
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def _escape(text, i, out):
    """Apply the backslash at text[i]; append the result to out; return the next index."""
    if i + 1 >= len(text):  # a lone backslash at the very end is kept as is
        out.append("\\")
        return i + 1
    nxt = text[i + 1]
    out.append(_ESCAPES.get(nxt, "\\" + nxt))
    return i + 2


def tokenize(text, file=None):
    """Return the list of tokens of ``text``; ``file`` is only used in errors."""
    tokens = []
    i, n, line = 0, len(text), 1

    while i < n:
        ch = text[i]

        if ch == "\n":
            line += 1
            i += 1
        elif ch in _SPACE:
            i += 1
        elif ch in ";{}":
            tokens.append((ch, ch, line))
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1

        elif ch in "\"'":
            start_line, out = line, []
            i += 1
            while True:
                if i >= n:
                    # nginx reports an unterminated quote as a premature end of file.
                    raise ConfigError('unexpected end of file, expecting ";" or "}"',
                                      file, line)
                c = text[i]
                if c == ch:
                    i += 1
                    break
                if c == "\\":
                    if text[i + 1:i + 2] == "\n":
                        line += 1
                    i = _escape(text, i, out)
                    continue
                if c == "\n":
                    line += 1
                out.append(c)
                i += 1
            tokens.append((WORD, "".join(out), start_line))
            # Like nginx, a quoted word must be separated from what follows, except by
            # ")", which starts the next word (`if ($a ~ "x")`).
            if i < n and text[i] not in _SPACE and text[i] not in ";{)":
                raise ConfigError(f'unexpected "{text[i]}"', file, line)

        else:
            start_line, out = line, []
            while i < n:
                c = text[i]
                if c in _SPACE or c in ";{":
                    break
                if c == "\\":
                    if text[i + 1:i + 2] == "\n":
                        line += 1
                    i = _escape(text, i, out)
                elif c == "$" and text[i + 1:i + 2] == "{":
                    out.append("${")  # ${var}: this "{" is part of the word
                    i += 2
                else:
                    out.append(c)
                    i += 1
            tokens.append((WORD, "".join(out), start_line))

    tokens.append((EOF, "", line))
    return tokens
