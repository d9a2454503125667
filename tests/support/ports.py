"""Free TCP port allocation for tests.

A port is found by binding port 0 and closing the socket. That leaves a small race
(someone else may take the port before edge binds it), which the edge launcher
handles by retrying with new ports when edge reports that an address is in use.
Ports handed out in this process are remembered so two callers never get the same one.
"""

import socket
import threading

_lock = threading.Lock()
_given: set[int] = set()


def free_port(host: str = "127.0.0.1", also_check: tuple[str, ...] = ("127.0.0.2",)) -> int:
    """Return a TCP port that is free on `host` (and on each address of `also_check`)."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port in _given:
            continue
        if not all(_is_free(h, port) for h in also_check):
            continue
        with _lock:
            if port in _given:
                continue
            _given.add(port)
        return port
    raise RuntimeError("could not find a free port")


def _is_free(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connect gets ECONNREFUSED)."""
    return free_port()
