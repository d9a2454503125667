"""What every sink shares: its queue, its delivery task, retry with back-off, the
counters, and the rate-limited error log.

A sink's task takes a batch from the queue and hands it to ``_send`` until it is
delivered. ``_send`` raises ``Retry`` (or OSError, TimeoutError, the client library's
connection errors, listed in ``RETRY_ERRORS``) for a failure worth retrying: the
connection is closed, the task sleeps (exponential back-off with jitter, capped) and
sends the same batch again. It raises ``Rejected`` when the sink refused the records
for good (an HTTP 4xx, a redis error reply): they are dropped, counted and logged.

Memory: the queue holds at most ``spec.queue`` records and the task at most one batch
of ``spec.batch`` records in hand; nothing else accumulates, whatever the sink does.
"""

import asyncio
import random
import time

from edge import log

from .queue import DropQueue

BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
LOG_INTERVAL = 1.0    # at most one error-log line per sink and reason per second


class Retry(Exception):
    """A failure worth retrying the same batch for (sink down, 5xx, timeout)."""


class Rejected(Exception):
    """The sink refused these records for good; ``count`` of them are dropped."""

    def __init__(self, reason, count):
        super().__init__(reason)
        self.reason = reason
        self.count = count


class Sink:
    RETRY_ERRORS = (Retry, OSError, asyncio.TimeoutError, EOFError)

    def __init__(self, spec):
        self.spec = spec
        self.queue = DropQueue(spec.queue)
        self.sent = 0           # records delivered
        self.rejected = 0       # records the sink refused (4xx, error replies, too big)
        self.abandoned = 0      # records still held when a stop ran out of time
        self._task = None
        self._in_hand = 0       # size of the batch being delivered
        self._queue_logged = 0  # queue drops already reported in the error log
        self._last_log = {}     # reason -> monotonic time of the last line
        self._suppressed = {}   # reason -> lines skipped since

    @property
    def target(self):
        return self.spec.target

    def dropped(self):
        """Every record lost in this process for this sink, whatever the reason."""
        return self.queue.dropped + self.rejected + self.abandoned

    def stats(self):
        return {"queued": len(self.queue), "in_flight": self._in_hand, "sent": self.sent,
                "dropped_queue_full": self.queue.dropped, "rejected": self.rejected,
                "abandoned": self.abandoned}

    def retune(self, spec):
        """Take a new spec for the same endpoint (reload changed queue/batch/...)."""
        self.spec = spec
        self.queue.resize(spec.queue)

    def submit(self, record):
        self.queue.put(record)

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink {self.target}")

    def keep_running(self):
        """Restart the task if a bug ended it: shipping must not stop for good while
        the queue silently fills (the Shipper's pump calls this)."""
        task = self._task
        if task is None or not task.done() or self.queue.closed:
            return
        error = None if task.cancelled() else task.exception()
        self._log("crit", "crashed", f"access log sink {self.target} stopped ({error!r}), restarting it")
        self.abandoned += self._in_hand
        self._in_hand = 0
        self.start()

    async def stop(self, timeout):
        """Deliver what is queued for at most ``timeout`` seconds, then close. Records
        still held after that are counted as abandoned (and so as dropped)."""
        self.queue.close()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
            elif not self._task.cancelled() and self._task.exception() is not None:
                self._log("crit", "crashed", f"access log sink {self.target} failed: "
                                             f"{self._task.exception()!r}")
        self.abandoned += self._in_hand + len(self.queue)
        self._in_hand = 0
        self.queue.take(len(self.queue))
        try:
            await asyncio.wait_for(self._close(), 1.0)
        except (Exception, asyncio.TimeoutError):
            pass
        self.report_drops(force=True)

    def report_drops(self, force=False):
        """Log queue drops since the last report, at most once a second (the Shipper
        calls this from its pump)."""
        new = self.queue.dropped - self._queue_logged
        if new <= 0:
            return
        now = time.monotonic()
        if not force and now - self._last_log.get("queue", float("-inf")) < LOG_INTERVAL:
            return
        self._last_log["queue"] = now
        self._queue_logged = self.queue.dropped
        log.error("warn", f"{new} access log records dropped for sink {self.target} (queue full)")

    def _log(self, level, reason, msg):
        """Log ``msg`` unless a line for the same reason went out less than a second ago."""
        now = time.monotonic()
        if now - self._last_log.get(reason, float("-inf")) < LOG_INTERVAL:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last_log[reason] = now
        skipped = self._suppressed.pop(reason, 0)
        if skipped:
            msg += f" ({skipped} similar messages suppressed)"
        log.error(level, msg)

    async def _run(self):
        while True:
            batch = await self.queue.get_batch(self.spec.batch, self.spec.flush)
            if not batch:
                return  # closed and empty
            self._in_hand = len(batch)
            await self._deliver(batch)
            self._in_hand = 0

    async def _deliver(self, batch):
        delay = BACKOFF_FIRST
        failing = False
        while True:
            try:
                refused = await self._send(batch) or 0
            except Rejected as e:
                self.rejected += e.count
                self._log("error", "rejected", f"{e.count} access log records dropped for sink "
                                               f"{self.target} ({e.reason})")
                return
            except self.RETRY_ERRORS as e:
                failing = True
                await self._close_quietly()
                # Full jitter on the upper half: many nodes that lost the same
                # collector do not come back to it in lockstep.
                wait = delay * (0.5 + random.random() / 2)
                self._log("error", "retry", f"access log sink {self.target} failed: "
                                            f"{_describe(e)}, retrying in {wait:.1f}s")
                await asyncio.sleep(wait)
                delay = min(delay * 2, BACKOFF_CAP)
                continue
            self.sent += len(batch) - refused
            if refused:
                self.rejected += refused
                self._log("error", "rejected", f"{refused} access log records dropped for sink "
                                               f"{self.target} (refused by the sink)")
            if failing:
                self._log("notice", "recovered", f"access log sink {self.target} is shipping again")
            return

    async def _close_quietly(self):
        try:
            await asyncio.wait_for(self._close(), 1.0)
        except (Exception, asyncio.TimeoutError):
            pass

    # -- for the subclasses ------------------------------------------------------

    async def _send(self, batch):
        """Deliver ``batch`` (a list of record bytes). Return how many of its records
        the sink refused one by one (0 or None for none); raise Rejected if it refused
        the whole batch, or one of RETRY_ERRORS to have it sent again."""
        raise NotImplementedError

    async def _close(self):
        """Drop the connection (a retry reconnects)."""


async def close_writer(writer):
    """Close a stream, waiting a moment for it: a peer that never reads must not hold up
    a reconnect or a stop."""
    if writer is None:
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError):
        pass


def _describe(error):
    text = str(error)
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    name = type(error).__name__
    if isinstance(error, Retry) and text:
        return text  # our own words: "HTTP 503", "connection closed before the response"
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"
