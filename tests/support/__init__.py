"""Test support for edge's integration tests: free ports, a real upstream HTTP/1.1
server (and a blackhole), real clients, and the edge process launcher."""

from .client import Conn, CurlResult, Response, build_request, chunked_encode, curl, get, request
from .edge import IMPL, EdgeError, EdgeProcess, alive, children_of
from .ports import closed_port, free_port
from .upstream import Blackhole, Request, Slammer, Tarpit, Upstream, body_pattern, sha256

__all__ = [
    "Blackhole", "Conn", "CurlResult", "EdgeError", "EdgeProcess", "IMPL", "Request", "Response", "Slammer", "Tarpit",
    "Upstream", "alive", "body_pattern", "build_request", "children_of", "chunked_encode", "closed_port", "curl",
    "free_port", "get", "request", "sha256",
]
