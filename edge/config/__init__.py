"""edge's configuration language: nginx syntax, knowing no feature.

Modules declare their directives (``Directive``) and the context names; this package
reads files (``parse_file``), expands ``include``, checks the tree against the
declarations and builds ``Conf`` blocks (``build``). See docs/internals.md §1.
"""

from . import types
from .build import Conf, ConfigWarning, build
from .errors import ConfigError
from .parser import Node, ParsedConfig, parse_file, parse_string
from .types import Directive, Refused

# Context names. A block directive's ``block`` names the context its "{...}" opens.
MAIN = "main"
EVENTS = "events"
HTTP = "http"
SERVER = "server"
LOCATION = "location"
UPSTREAM = "upstream"

__all__ = [
    "parse_file", "parse_string", "build", "ConfigError", "Directive", "Node", "Conf",
    "ParsedConfig", "types", "Refused", "ConfigWarning", "MAIN", "EVENTS", "HTTP", "SERVER", "LOCATION", "UPSTREAM",
]
