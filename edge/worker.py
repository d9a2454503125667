"""Worker process bootstrap: inherit the listening sockets and the compiled plan, run the
compiled event loop until told to stop, then exit.

Control channel. The master may give each worker one end of a socketpair. Messages are
framed as a 4-byte big-endian length and a pickled dict; they come only from our own
master, which forked us. master -> worker:
    {"op": "reload", "generation": N, "path": str, "parsed": ParsedConfig}
worker -> master:
    {"op": "reloaded", "generation": N, "ok": bool, "error": str | None}
A reload compiles the master's ParsedConfig here and swaps the plan in place: new
requests use it; in-flight ones finish on their own generation.
"""

import os
import pickle
import signal
import struct

from edge import cycle as cycle_module
from edge import log
from edge._core.reactor import Loop, set_server_tokens

HEADER = struct.Struct(">I")


def encode(message):
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Accumulates bytes and yields whole messages."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data):
        self.buffer += data
        messages = []
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + size:
                break
            payload = bytes(self.buffer[HEADER.size:HEADER.size + size])
            del self.buffer[:HEADER.size + size]
            messages.append(pickle.loads(payload))
        return messages


class Control:
    """The worker side of the control socket."""

    def __init__(self, sock, index):
        self.sock = sock
        self.sock.setblocking(False)
        self.index = index
        self.reader = FrameReader()
        self.loop = None
        self.keep = []          # plans stay alive while connections may still use them

    def on_readable(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not data:
                return          # the master is gone; PDEATHSIG stops us
            for message in self.reader.feed(data):
                self.handle(message)

    def handle(self, message):
        if message.get("op") != "reload":
            log.error("warn", f"worker {self.index}: unknown control message {message.get('op')!r}")
            return
        generation = message["generation"]
        try:
            new = cycle_module.from_parsed(message["path"], message["parsed"])
            plan = new.build_runtime()
            plan.attach()       # series in the shared zone, log files
            self.loop.swap_plan(plan)
            self.loop.set_worker_generation(generation)
            reply = {"op": "reloaded", "generation": generation, "ok": True, "error": None}
        except Exception as e:  # the master validated this config: report, keep serving
            reply = {"op": "reloaded", "generation": generation, "ok": False, "error": str(e)}
            log.error("alert", f"worker {self.index}: reload to generation {generation} failed: {e}")
        self.send(reply)

    def send(self, message):
        data = encode(message)
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        except OSError:
            pass
        finally:
            self.sock.setblocking(False)


def run(cycle, sockets, index, control=None, shared=None, generation=0, zones=None):
    """Never returns. `sockets`: listen key -> this worker's SO_REUSEPORT socket, or a
    list of them (after a reload that lowered the worker count);
    `control`: this worker's end of the master's socketpair (or None); `shared`: the
    master's SharedState (or None)."""
    code = 0
    try:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        plan = cycle.build_runtime()
        # server_tokens of this generation (the master's last compile may be another's)
        set_server_tokens(getattr(cycle.runtime, "server_name", b"edge"))
        fds = {key: [sock.fileno() for sock in (socks if isinstance(socks, list) else [socks])]
               for key, socks in sockets.items()}
        run.sockets = sockets   # keep the socket objects alive: their fds belong to the loop
        if shared is not None:
            shared.use_in_worker()
        if zones is not None:
            zones.use_in_worker(index)
        plan.attach()
        channel = Control(control, index) if control is not None else None
        loop = Loop(plan, fds, on_reopen=log.reopen, log=log.error,
                    control_fd=control.fileno() if control is not None else -1,
                    on_control=channel.on_readable if channel is not None else None,
                    worker_index=index, log_enabled=log.enabled)
        loop.set_worker_generation(generation)
        if channel is not None:
            channel.loop = loop
            # tell the master at once, rather than at the first heartbeat, that this
            # worker serves its generation (readiness counts workers up)
            channel.send({"op": "up", "generation": generation})
        loop.run()
    except BaseException as e:   # a worker must report why it died, then exit
        try:
            log.error("alert", f"worker {index} exiting on error: {e!r}")
        except Exception:
            pass
        code = 2
    finally:
        os._exit(code)
