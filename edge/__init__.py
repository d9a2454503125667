"""edge: an API gateway and edge server with an nginx-style config and a compiled hot path."""

__version__ = "0.1.0"
