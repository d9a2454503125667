"""Log shipping: the control process's service that drains the workers' log rings and
ships each record to its remote sink (docs/logging-sinks.md).

The workers write records for remote sinks into per-worker rings in shared memory and
never wait on a sink. This service's pump calls ``zones.drain(max_records)`` every
~20 ms (once a second while no remote sink is configured, until a reload brings one),
at once again while it returns full batches, and puts each record into the
bounded queue of its sink (``edge/control/sinks/queue.py``). Each sink's own task
ships from its queue. Nothing here blocks the event loop: ``drain`` is a copy out of
shared memory and ``submit`` is an append.

Records pass through three bounded places: the worker's ring (drops counted in
``zones.snapshot()["sinks"]``), the sink's queue, and the one batch a sink holds while
sending. ``dropped()`` reports what this process lost, per sink. The pump also writes the
rings' drops to the error log, at most once a second (the workers cannot: they never
make a syscall for a remote record).

The service contract of the control process's registry:
``start()`` (from the running loop), ``await reload(cycle)``, ``await stop()``.
"""

import asyncio
import time
from collections import deque

from edge import log

from .sinks import make_sink

PUMP_INTERVAL = 0.02      # seconds between drains when the rings were emptied
MAX_RECORDS = 1000        # records per drain call
REMOVED_FLUSH = 1.0       # seconds a sink removed by a reload gets to flush
STOP_FLUSH = 2.0          # seconds all sinks together get to flush at stop
STOP_DRAIN_ROUNDS = 100   # drain calls at most at stop (bounded even if workers keep writing)
RING_REPORT_INTERVAL = 1.0  # seconds between looks at the rings' drop counters
IDLE_INTERVAL = 1.0       # seconds between drains while no remote sink is configured
# On a reload the master switches the workers first and tells this process afterwards,
# so records for a new sink come out of the rings before its sink exists here. They
# wait for that reload, bounded in time and number; then they are dropped and counted.
HOLD_TIME = 5.0           # seconds records for a sink not known here wait for a reload
HOLD_MAX = 10000          # records held per such sink at most (the oldest go first)


def _sink_specs(cycle):
    # cycle.log_sinks: {target text: SinkSpec}. A cycle without it has no remote sinks.
    return dict(getattr(cycle, "log_sinks", None) or {})


class Shipper:
    def __init__(self, zones, cycle, *, interval=PUMP_INTERVAL, max_records=MAX_RECORDS):
        self._zones = zones
        self._cycle = cycle
        self._interval = interval
        self._max_records = max_records
        self._sinks = {}          # target -> Sink
        self._unknown = {}        # target -> records for a target no sink has
        self._gone = {}           # target -> records dropped by sinks removed by a reload
        self._retiring = set()    # removed sinks still flushing (their drops still count)
        self._removed = set()     # targets a reload removed (and none re-added): not waited for
        self._held = {}           # target -> (records, monotonic time of the first) awaiting a reload
        self._pump_task = None
        self._wake = None         # asyncio.Event: a reload ends the pump's idle wait
        self._ring_reported = None    # target -> ring drops already logged; None: not looked yet
        self._ring_checked = float("-inf")
        # drops counted by earlier control processes of this master (kept in the zone)
        control_drops = getattr(zones, "control_drops", None)
        self._carried = dict(control_drops()) if control_drops is not None else {}

    # -- service -------------------------------------------------------------------

    def start(self):
        """Create and start the sinks of the cycle and the pump (needs a running loop)."""
        for target, spec in _sink_specs(self._cycle).items():
            self._add(target, spec)
        self._wake = asyncio.Event()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name="log shipping pump")

    async def reload(self, cycle):
        """Switch to the sinks of ``cycle``. A sink whose target is unchanged keeps its
        queue and its connection (a changed queue/batch/flush/timeout applies in place);
        new ones start; removed ones get REMOVED_FLUSH seconds to flush, then stop."""
        new = _sink_specs(cycle)
        # The master tells us once every worker runs the new generation: what the rings
        # hold for a sink being removed was written before, and goes to that sink while
        # it still runs. (Records for the new sinks wait in _held meanwhile.)
        self._drain_all()
        self._cycle = cycle
        removed = []
        for target in list(self._sinks):
            sink = self._sinks[target]
            spec = new.get(target)
            if spec is None:
                removed.append(self._sinks.pop(target))
                self._removed.add(target)
            elif spec != sink.spec:
                # Everything but the tuning is derived from the target text, so an
                # unchanged target is the same endpoint: keep the connection.
                sink.retune(spec)
        for target, spec in new.items():
            if target not in self._sinks:
                sink = self._add(target, spec)
                self._removed.discard(target)
                # Keep dropped() monotonic, and warn again if it goes unknown again.
                if target in self._unknown:
                    self._gone[target] = self._gone.get(target, 0) + self._unknown.pop(target)
                # What the workers wrote for it before this reload reached us, in order,
                # ahead of anything drained from now on.
                held = self._held.pop(target, None)
                if held is not None:
                    for record in held[0]:
                        sink.submit(record)
        if self._wake is not None:
            self._wake.set()      # new sinks: the pump leaves its idle pace now
        if removed:
            self._retiring.update(removed)
            await asyncio.gather(*(sink.stop(REMOVED_FLUSH) for sink in removed))
            for sink in removed:
                self._retiring.discard(sink)
                self._gone[sink.target] = self._gone.get(sink.target, 0) + sink.dropped()

    async def stop(self):
        """Stop pumping, drain the rings a last time, give every sink up to STOP_FLUSH
        seconds (together) to deliver what it holds, then close them."""
        if self._pump_task is not None:
            self._pump_task.cancel()
            try:
                await self._pump_task
            except asyncio.CancelledError:
                pass
            self._pump_task = None
        self._drain_all()
        self._expire_held(force=True)
        sinks = list(self._sinks.values())
        await asyncio.gather(*(sink.stop(STOP_FLUSH) for sink in sinks))
        self._keep_drop_counts()

    # -- reading -------------------------------------------------------------------

    def dropped(self):
        """{target: records lost in the control process}: pushed out of a full queue,
        refused by the sink (HTTP 4xx, error replies), still held when a stop ran out
        of time, or drained for a target that has no sink. Monotonic, for
        ``edge_log_records_dropped_total{sink}`` (which adds the rings' own drops)."""
        out = dict(self._gone)
        for target, n in self._carried.items():
            out[target] = out.get(target, 0) + n
        for target, n in self._unknown.items():
            out[target] = out.get(target, 0) + n
        for sink in (*self._sinks.values(), *self._retiring):
            out[sink.target] = out.get(sink.target, 0) + sink.dropped()
        return out

    def stats(self):
        """{target: {queued, in_flight, sent, dropped_queue_full, rejected, abandoned}}."""
        return {target: sink.stats() for target, sink in self._sinks.items()}

    def sinks(self):
        """{target: Sink} of the running sinks (for status pages and tests)."""
        return dict(self._sinks)

    # -- inside --------------------------------------------------------------------

    def _add(self, target, spec):
        sink = make_sink(spec)
        self._sinks[target] = sink
        sink.start()
        return sink

    def _drain_all(self):
        """Empty the rings now (bounded, even if the workers keep writing)."""
        for _ in range(STOP_DRAIN_ROUNDS):
            if self._drain_once() < self._max_records:
                break

    def _drain_once(self):
        records = self._zones.drain(self._max_records)
        sinks = self._sinks
        for target, record in records:
            sink = sinks.get(target)
            if sink is not None:
                sink.submit(record)
            elif target in self._removed:
                retiring = self._retiring_sink(target)
                if retiring is not None:
                    # A request that finished on the old plan: its sink still flushes.
                    retiring.submit(record)
                    continue
                # An old worker's late record for a sink a reload removed.
                self._drop_unknown(target)
            else:
                self._hold(target, record)
        return len(records)

    def _retiring_sink(self, target):
        for sink in self._retiring:
            if sink.target == target:
                return sink
        return None

    def _hold(self, target, record):
        """Keep a record for a sink not configured here (yet): the reload that brings
        it is on its way (the workers switched first)."""
        held = self._held.get(target)
        if held is None:
            held = self._held[target] = (deque(), time.monotonic())
        records = held[0]
        if len(records) >= HOLD_MAX:
            records.popleft()
            self._drop_unknown(target)
        records.append(record)

    def _expire_held(self, force=False):
        """Drop (counted) the records that waited HOLD_TIME for a reload in vain."""
        now = time.monotonic()
        for target, (records, since) in list(self._held.items()):
            if force or now - since >= HOLD_TIME:
                del self._held[target]
                self._drop_unknown(target, len(records))

    def _drop_unknown(self, target, n=1):
        # Records for a sink that is not (or no longer) configured here: a reload
        # removed it and an old worker wrote late, or no reload brought it in time.
        count = self._unknown.get(target, 0)
        if count == 0:
            log.error("warn", f"access log records for unknown sink {target} dropped")
        self._unknown[target] = count + n

    def _report_ring_drops(self):
        """Log the records the workers dropped from their full rings since the last
        look, per sink, at most once a second. The counters live in shared memory
        (``zones.snapshot()["sinks"]``), summed over the workers; a scan costs well
        under a millisecond, hence the interval rather than a look per pump round."""
        now = time.monotonic()
        if now - self._ring_checked < RING_REPORT_INTERVAL:
            return
        self._ring_checked = now
        self._keep_drop_counts()
        snapshot = getattr(self._zones, "snapshot", None)
        if snapshot is None:
            return
        try:
            counts = {target: info.get("ring_dropped", 0)
                      for target, info in snapshot().get("sinks", {}).items()}
        except Exception as e:  # reporting must never stop shipping
            log.error("alert", f"log shipping: reading the rings' drop counters failed: {e!r}")
            return
        first = self._ring_reported is None
        reported = self._ring_reported or {}
        for target, count in counts.items():
            new = count - reported.get(target, 0)
            if new <= 0:
                continue
            # The counters outlive this process: on its first look they hold every ring
            # drop since the master started, including those made while no control
            # process was draining (say, before a respawn), which nobody logged yet.
            when = " before this control process started" if first else ""
            log.error("warn", f"{new} access log records dropped for sink {target} "
                              f"(ring full{when})")
        self._ring_reported = counts

    def _keep_drop_counts(self):
        """Copy this process's drop counts into the zone once a second, so that a
        respawned control process (and /metrics) goes on from them; what a killed
        process lost in its last second is not counted."""
        store = getattr(self._zones, "store_control_drops", None)
        if store is not None:
            try:
                store(self.dropped())
            except Exception as e:
                log.error("alert", f"log shipping: keeping the drop counts failed: {e!r}")

    async def _pump(self):
        while True:
            try:
                full = self._drain_once() >= self._max_records
            except Exception as e:  # a bad record must not end shipping for good
                log.error("alert", f"log shipping: draining the log rings failed: {e!r}")
                full = False
            for sink in self._sinks.values():
                sink.report_drops()
                sink.keep_running()
            self._report_ring_drops()
            if self._held:
                self._expire_held()
            # Rings still full: go again at once, but let the sinks' tasks run first.
            if full or self._sinks or self._retiring or self._held:
                await asyncio.sleep(0 if full else self._interval)
                continue
            # No remote sink: the workers write no records for one, so the rings are
            # looked at once a second rather than 50 times (the wake-ups cost CPU on the
            # workers' cores); a reload that brings a sink ends the wait.
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_INTERVAL)
            except asyncio.TimeoutError:
                pass
