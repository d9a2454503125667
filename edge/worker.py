"""Worker process bootstrap: inherit the listening sockets and the compiled plan, run the
compiled event loop until told to stop, then exit."""

import os
import signal

from edge import log
from edge._core.reactor import Loop


def run(cycle, sockets, index):
    """Never returns. `sockets`: listen key -> this worker's SO_REUSEPORT socket."""
    code = 0
    try:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        plan = cycle.build_runtime()
        fds = {key: sock.fileno() for key, sock in sockets.items()}
        # keep the socket objects alive: their fds belong to the loop now
        run.sockets = sockets
        loop = Loop(plan, fds, on_reopen=log.reopen, log=log.error)
        loop.run()
    except BaseException as e:   # a worker must report why it died, then exit
        try:
            log.error("alert", f"worker {index} exiting on error: {e!r}")
        except Exception:
            pass
        code = 2
    finally:
        os._exit(code)
