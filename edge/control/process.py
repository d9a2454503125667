"""The control process: one per master, forked and supervised like a worker.

It runs the control plane on uvloop: the services of edge.control.services (the admin
listener first, then the log shipper when present). It talks to the workers only
through shared memory, and to the master over its control channel (the socketpair
framing of edge.worker: a 4-byte length and a pickle). Messages:

    master -> control  {"op": "reload", "generation": N, "path": str, "parsed": ParsedConfig}
    master -> control  {"op": "reload-result", "id": I, "ok": bool, "generation": N,
                        "error": str | None, "file": str | None, "line": int | None,
                        ["unavailable": True]}     the answer to a "reload" request
                                                   (unavailable: stopping, or upgrading)
    control -> master  {"op": "up", "generation": N, "pid": P}        services started
                       {"op": "reloaded", "generation": N, "ok": bool, "error": str | None}
                       {"op": "reload", "id": I}   the admin API asks for a reload (HUP)

A "reload-result" goes through the same queue as the "reload" messages, so when the
admin API hears that generation N is in force, this process already runs N too.

A reload compiles the master's ParsedConfig (the text the master tested) and hands the
new cycle to every service; a service that fails is logged and keeps its old settings.

Signals (asyncio handlers): QUIT = graceful stop (stop the services in order within
the configured worker_shutdown_timeout: the admin listener closes first, the others
flush), TERM and INT = fast stop (the services get FAST_STOP seconds), USR1 = reopen
the error log. The master's HUP, WINCH and USR2 are ignored here. The kernel sends TERM
when the master dies (PR_SET_PDEATHSIG, set by the master at fork).

If this process dies the data plane does not notice: the workers never wait on it.
"""

import asyncio
import inspect
import os
import signal
import time
import traceback

from edge import cycle as cycle_module
from edge import log
from edge.control import services as service_registry

FAST_STOP = 1.0
GRACEFUL_STOP_DEFAULT = 10.0
HANDLED_SIGNALS = (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGWINCH, signal.SIGUSR2)


class ControlProcess:
    def __init__(self, cycle, channel, shared, zones, generation):
        # the framing lives with the worker's side of the channel; imported here so
        # that the control package does not import the data plane at module load
        import edge.worker
        self.framing = edge.worker
        self.cycle = cycle
        self.channel = channel
        self.reader = edge.worker.FrameReader()
        self.ctx = service_registry.Context(shared, zones, generation)
        self.ctx.cycle = cycle
        self.loop = None
        self.stop_mode = None
        self.stopped = None
        self.reloads = asyncio.Queue()
        self.reload_requests = {}       # id -> future of the admin API's reload requests
        self.next_request = 0
        self.ctx.request_reload = self.request_reload

    async def main(self):
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self._on_loop_error)
        self.stopped = self.loop.create_future()
        for sig in IGNORED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for sig in HANDLED_SIGNALS:
            self.loop.add_signal_handler(sig, self._on_signal, sig)
        # The master forks us with its signals blocked, so none lands on a default
        # handler before the ones above are in place. All of them are unblocked: a
        # blocked mask would be inherited by any program a service runs.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS + IGNORED_SIGNALS)
        if self.channel is not None:
            self.channel.setblocking(False)
            self.loop.add_reader(self.channel.fileno(), self._on_channel)

        self.ctx.services = service_registry.build(self.ctx, self.cycle)
        for service in list(self.ctx.services):
            try:
                result = service.start()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.error("alert", f"control process: {type(service).__name__} failed to "
                                   "start: " + traceback.format_exc().rstrip())
        self.send({"op": "up", "generation": self.ctx.generation, "pid": os.getpid()})
        reloader = asyncio.create_task(self._reload_loop(), name="edge-control-reload")
        try:
            mode = await self.stopped
        finally:
            reloader.cancel()
        await self._stop_services(mode)
        return 0

    # -- signals -----------------------------------------------------------------------

    def _on_signal(self, signum):
        if signum == signal.SIGUSR1:
            try:
                log.reopen()
            except OSError as e:
                log.error("alert", f"control process: reopen of the error log failed: {e}")
            return
        self.request_stop("graceful" if signum == signal.SIGQUIT else "fast")

    def request_stop(self, mode):
        if not self.stopped.done():
            self.stopped.set_result(mode)
        elif mode == "fast":
            self.stop_mode = "fast"   # a TERM during a graceful stop cuts it short

    async def _stop_services(self, mode):
        self.stop_mode = mode
        timeout = self.cycle.worker_shutdown_timeout
        limit = FAST_STOP if mode == "fast" else (
            GRACEFUL_STOP_DEFAULT if timeout is None else timeout)
        deadline = time.monotonic() + limit
        for service in self.ctx.services:
            left = deadline - time.monotonic()
            if self.stop_mode == "fast":
                left = min(left, FAST_STOP)
            try:
                await asyncio.wait_for(service.stop(), max(left, 0.001))
            except asyncio.TimeoutError:
                log.error("warn", f"control process: {type(service).__name__} did not stop "
                                  f"within {limit:g}s")
            except Exception:
                log.error("alert", f"control process: {type(service).__name__}.stop() "
                                   "failed: " + traceback.format_exc().rstrip())

    # -- the master's channel ------------------------------------------------------------

    def _on_channel(self):
        while True:
            try:
                data = self.channel.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                # The master is gone (PDEATHSIG is on its way) or closed our channel.
                self.loop.remove_reader(self.channel.fileno())
                self.request_stop("fast")
                return
            for message in self.reader.feed(data):
                if message.get("op") in ("reload", "reload-result"):
                    self.reloads.put_nowait(message)
                else:
                    log.error("warn", f"control process: unknown control message "
                                      f"{message.get('op')!r}")

    async def _reload_loop(self):
        """Reloads one at a time, in the order the master sent them."""
        while True:
            message = await self.reloads.get()
            if message.get("op") == "reload-result":
                future = self.reload_requests.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            generation = message["generation"]
            try:
                new = cycle_module.from_parsed(message["path"], message["parsed"])
            except Exception as e:   # the master validated it: report, keep running
                log.error("alert", f"control process: generation {generation} does not "
                                   f"compile here: {e}")
                self.send({"op": "reloaded", "generation": generation, "ok": False,
                           "error": str(e)})
                continue
            errors = []
            for service in self.ctx.services:
                try:
                    await service.reload(new)
                except Exception as e:
                    errors.append(f"{type(service).__name__}: {e!r}")
                    log.error("alert", f"control process: {type(service).__name__} failed "
                                       f"to reload: " + traceback.format_exc().rstrip())
            self.cycle = new
            self.ctx.cycle = new
            self.ctx.generation = generation
            self.send({"op": "reloaded", "generation": generation, "ok": not errors,
                       "error": "; ".join(errors) or None})

    async def request_reload(self, timeout):
        """Ask the master for an ordinary reload and wait for its outcome: the
        "reload-result" message ({"ok", "generation", "error"}). RuntimeError when there
        is no master to ask; asyncio.TimeoutError after `timeout` seconds."""
        if self.channel is None:
            raise RuntimeError("no master to ask")
        self.next_request += 1
        request_id = self.next_request
        future = self.loop.create_future()
        self.reload_requests[request_id] = future
        try:
            if not self.send({"op": "reload", "id": request_id}):
                raise RuntimeError("the master's channel is closed")
            return await asyncio.wait_for(future, timeout)
        finally:
            self.reload_requests.pop(request_id, None)

    def send(self, message):
        """A message to the master. Small, and the master reads its channels at once;
        a blocking write with a time limit keeps the order of messages simple."""
        if self.channel is None:
            return False
        data = self.framing.encode(message)
        try:
            self.channel.settimeout(2.0)
            self.channel.sendall(data)
        except OSError:
            return False   # the master is gone or stuck; it will hear of us another way
        finally:
            self.channel.setblocking(False)
        return True

    def _on_loop_error(self, loop, context):
        exc = context.get("exception")
        detail = "".join(traceback.format_exception(exc)) if exc else ""
        log.error("alert", f"control process: {context.get('message', 'unexpected error')} "
                           f"{detail}".strip())


def preload():
    """Import what the control process runs (before it drops privileges: see
    services.preload)."""
    import uvloop  # noqa: F401
    service_registry.preload()


def run(cycle, channel_sock, shared, zones, generation):
    """Never returns. Runs the control process in the forked child: `cycle` is the
    master's current Cycle, `channel_sock` this end of the master's socketpair (or
    None), `shared` the master's SharedState, `zones` the shared-memory zones (or None),
    `generation` the configuration generation the cycle is."""
    code = 0
    try:
        import uvloop
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        process = ControlProcess(cycle, channel_sock, shared, zones, generation)
        code = loop.run_until_complete(process.main())
    except BaseException as e:   # report why, then exit: the master respawns us
        try:
            log.error("alert", f"control process exiting on error: {e!r}\n"
                               + traceback.format_exc().rstrip())
        except Exception:
            pass
        code = 2
    finally:
        os._exit(code)
