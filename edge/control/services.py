"""What runs in the control process: a list of services, started from the cycle.

A service is an object with

    start()               -> None, or an awaitable (bind sockets, start tasks)
    async reload(cycle)   a new configuration generation is in force
    async stop()          finish: close listeners, flush queues (bounded by the caller)

and optionally `dropped() -> {sink text: count}` (log records it dropped, for
/metrics), `metrics() -> dict | None` (the limit sync's counters, for /metrics), and
`peers_in_force()` / `status()` (the upstream service: peer state for /metrics, /status). Each entry of SERVICES is a factory `factory(ctx, cycle) -> service | None`
(None: nothing to run in this build). They start in list order and stop in list order,
so the admin listener closes first and later services may still flush.

A service must never block the event loop: the admin listener shares it.
"""

import importlib.util
import os
import time

from edge import log


class Context:
    """What every service may read: the shared state block (master counters,
    heartbeats), the shared-memory zones (None until the lead's zones exist), the
    generation last applied here, and the other services."""

    def __init__(self, shared, zones, generation):
        self.shared = shared
        self.zones = zones
        self.generation = generation
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.services = []
        self.cycle = None           # the Cycle in force here (set by the process)

    async def request_reload(self, timeout):
        """Ask the master for a reload (replaced by the control process's own when it
        has a channel to the master)."""
        raise RuntimeError("no master to ask")

    def dropped(self):
        """Log records the services dropped, summed by sink."""
        total = {}
        for service in self.services:
            counts = getattr(service, "dropped", None)
            if counts is None:
                continue
            try:
                for sink, n in counts().items():
                    total[sink] = total.get(sink, 0) + n
            except Exception as e:  # a metrics scrape must not fail on one service
                log.error("error", f"control process: {type(service).__name__}.dropped() "
                                   f"failed: {e!r}")
        return total

    def upstreams(self):
        """The service that checks and resolves upstream peers, or None."""
        for service in self.services:
            if hasattr(service, "peers_in_force"):
                return service
        return None

    def limit_sync(self):
        """The limit sync's counters (LimitSync.metrics()), or None."""
        for service in self.services:
            metrics = getattr(service, "metrics", None)
            if metrics is None:
                continue
            try:
                return metrics()
            except Exception as e:  # a metrics scrape must not fail on one service
                log.error("error", f"control process: {type(service).__name__}.metrics() "
                                   f"failed: {e!r}")
        return None


def _upstreams(ctx, cycle):
    # Active health checks and `server NAME resolve` (edge/control/upstreams.py). Both
    # write to the shared zones; without them there is nothing to do.
    if ctx.zones is None:
        return None
    from edge.control.upstreams import Upstreams
    return Upstreams(ctx.zones, cycle)


def _admin(ctx, cycle):
    from edge.control.admin import AdminServer
    return AdminServer(ctx, cycle)


def _shipper(ctx, cycle):
    # The log shipper (access_log to syslog/http/redis/kafka sinks) lives in
    # edge/control/shipping.py, built on its own branch. Until it is merged, this build
    # runs without it. find_spec rather than `except ImportError`, so that a shipper
    # that exists but fails to import is reported, not silently skipped.
    if importlib.util.find_spec("edge.control.shipping") is None:
        return None
    from edge.control.shipping import Shipper
    return Shipper(ctx.zones, cycle)


def _limit_sync(ctx, cycle):
    # Cluster-scope limit zones synced through Redis (docs/limits-cluster.md). It idles
    # while the cycle has no such zone or no Redis, so a reload may bring them in.
    from edge.control.limit_sync import LimitSync
    return LimitSync(ctx.zones, cycle)


def _tickets(ctx, cycle):
    # Rotation of the shared TLS session ticket keys (edge/control/tickets.py). It idles
    # while no server uses them, so a reload may bring them in.
    from edge.control.tickets import TicketRotation
    return TicketRotation(cycle)


# The registry. A new control-plane task is one factory added here.
SERVICES = [_admin, _shipper, _limit_sync, _upstreams, _tickets]

# The modules the factories import, for preload().
MODULES = ["edge.control.admin", "edge.control.shipping", "edge.control.limit_sync",
           "edge.control.upstreams", "edge.control.tickets"]


def preload():
    """Import the services' modules now. The control process does this before it
    drops to the ``user`` of the config: after that, a Python installation the user
    cannot read (one under /root) would fail the imports."""
    import importlib
    for name in MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def build(ctx, cycle):
    """The services of this build, in start order. A factory that fails is logged and
    left out: one broken service must not keep the others from running."""
    services = []
    for factory in SERVICES:
        try:
            service = factory(ctx, cycle)
        except Exception as e:
            log.error("alert", f"control process: {factory.__name__.strip('_')} failed to "
                               f"start: {e!r}")
            continue
        if service is not None:
            services.append(service)
    return services
