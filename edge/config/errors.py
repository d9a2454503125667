"""The one exception of the config language."""


class ConfigError(ValueError):
    """A configuration error, optionally located at file:line.

    ``str(err)`` is ``'<message> in <file>:<line>'`` (nginx's form); the CLI adds the
    ``edge: [emerg] `` prefix.  It subclasses ``ValueError`` so that the plain parsing
    helpers (``types.parse_size`` …) can be used with ``except ValueError`` too, and so
    that ``build`` can fill in file:line when a setter raised it without them.
    """

    def __init__(self, message, file=None, line=None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self):
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.message} in {self.file}"
        return f"{self.message} in {self.file}:{self.line}"

    def locate(self, file, line):
        """Fill in file:line if the error has none yet; return self (for ``raise``)."""
        if self.file is None:
            self.file, self.line = file, line
        return self
