"""A pure-Python stand-in for the compiled LimitZone (edge._core.reactor.LimitZone), with
the methods the control process's limit sync calls (see /work/issue8-spec.md). Test
code only: it lets tests/test_limit_sync.py drive LimitSync against a real redis-server
without worker processes. `admit()` plays the workers' part.

Count zones: fixed windows (own + others < limit) or sliding ones (the previous
window's total weighted by the part of it still inside the sliding window). Req zones
record what add_others() was given. Modes: cluster, local (limit / live nodes, own
counts only), allow, deny.
"""


class StandInZone:
    def __init__(self, name, kind="count", limit=100, window_ms=60000, sliding=False,
                 scope="cluster", clock=None):
        self.name = name
        self.kind = kind
        self.scope = scope
        self.limit = limit
        self.window_ms = window_ms
        self.sliding = sliding
        self.clock = clock
        self.own = {}          # (hash, window) -> admitted here
        self.others = {}       # (hash, window) -> the others' count (count zones)
        self.added = {}        # hash -> sum of add_others (req zones)
        self.delta = {}        # (hash, window) -> admitted since the last collect
        self.mode = "cluster"
        self.live_nodes = 1
        self.modes = []        # every set_mode call, in order
        self.counts = {"admitted": 0, "rejected": 0, "local_decisions": 0}

    @classmethod
    def open_from(cls, registry):
        """An `open_zone(path)` for LimitSync over {path: StandInZone}."""
        return registry.__getitem__

    # -- the workers' part ---------------------------------------------------------

    def admit(self, h, now_ms, weight=1):
        w = now_ms // self.window_ms if self.kind == "count" else 0
        mode = self.mode
        if mode == "allow":
            ok = True
        elif mode == "deny":
            ok = False
        elif mode == "local":
            ok = self.own.get((h, w), 0) < self.limit / max(self.live_nodes, 1)
        else:
            used = self.own.get((h, w), 0) + self.others.get((h, w), 0)
            if self.sliding:
                prev = self.own.get((h, w - 1), 0) + self.others.get((h, w - 1), 0)
                inside = 1.0 - (now_ms % self.window_ms) / self.window_ms
                used += prev * inside
            ok = used < self.limit
        if mode != "cluster":
            self.counts["local_decisions"] += 1
        if ok:
            self.own[(h, w)] = self.own.get((h, w), 0) + weight
            self.delta[(h, w)] = self.delta.get((h, w), 0) + weight
            self.counts["admitted"] += 1
        else:
            self.counts["rejected"] += 1
        return ok

    # -- the control process's API -------------------------------------------------

    def collect(self):
        out = [(h, w, d) for (h, w), d in self.delta.items()]
        self.delta = {}
        return out

    def set_others(self, h, window, count):
        self.others[(h, window)] = count

    def add_others(self, h, n):
        self.added[h] = self.added.get(h, 0) + n

    def set_mode(self, mode, live_nodes):
        assert mode in ("cluster", "local", "allow", "deny"), mode
        assert live_nodes >= 1
        self.mode = mode
        self.live_nodes = live_nodes
        self.modes.append((mode, live_nodes))

    def stats(self):
        return dict(self.counts, entries=len(self.own), capacity=1 << 20, evicted=0,
                    delayed=0, mode=self.mode, live_nodes=self.live_nodes)


class Spec:
    """What cycle.limit_zones holds (LimitZoneSpec's fields)."""

    def __init__(self, zone, path, size=1 << 20):
        self.name = zone.name
        self.kind = zone.kind
        self.size = size
        self.scope = zone.scope
        self.path = path
        self.limit = zone.limit
        self.window_ms = zone.window_ms
        self.sliding = zone.sliding


class StandInCycle:
    """The attributes of a Cycle that LimitSync reads."""

    def __init__(self, settings, zones, interval=0.1, policy="local"):
        self.redis = settings
        self.limit_sync_interval = interval
        self.limit_redis_failure = policy
        self.limit_zones = {z.name: Spec(z, f"/standin/{z.name}") for z in zones}
