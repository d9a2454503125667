"""Cluster-scope limits: the control process's service that syncs this node's limit zones
with the other nodes' through Redis (docs/limits-cluster.md).

The workers decide from shared memory only. Every ``limit_sync_interval`` this service

1. takes this node's new admissions out of each cluster-scope zone (``zone.collect()``);
2. sends them, with the keys it polls, to Redis in ONE round trip per batch: one
   ``EVALSHA`` of SCRIPT below, which adds each delta to its counter, returns the new
   totals, refreshes this node's heartbeat and counts the live nodes, atomically;
3. feeds the totals back into the zones: ``set_others(hash, window, total - own)`` for
   count zones, ``add_others(hash, n)`` for req zones (n: what the other nodes added
   since the last look), and ``set_mode("cluster", live_nodes)``.

A round trip that fails or takes longer than the ``timeout`` of ``redis`` switches every
cluster zone to the ``limit_redis_failure`` policy (``set_mode(policy, live)``, logged
once); the service retries with back-off and switches back on the first success (logged).
Count-zone admissions made meanwhile are kept and pushed on recovery, while their window
still matters; req-zone ones are dropped (a rate limiter only cares about the recent
past). No reload and no restart is involved.

Redis keys (all under one hash tag, so that a batch is legal on Redis Cluster):

    edge:{limits}:count:<zone>:<window ms>:<key hash hex>:<window index>
                                        count zones: a hash {node id: its count}
    edge:{limits}:req:<zone>:<key hash hex>
                                        req zones: a counter of admissions
    edge:{limits}:node:<node id>        heartbeat, TTL HEARTBEAT_INTERVALS sync intervals
    edge:{limits}:nodes                 the set of node ids (dead ones pruned by the script)

The node id is ``hostname:master pid:random``.
"""

import asyncio
import hashlib
import os
import secrets
import socket
import time
from collections import OrderedDict

from edge import log

TAG = "edge:{limits}:"
NODES_KEY = TAG + "nodes"
NODE_PREFIX = TAG + "node:"
BATCH_MAX = 1000          # counters per EVALSHA (one round trip each)
ACTIVE_MAX = 10000        # keys polled per zone at most (the least recently active go)
REQ_ACTIVE_MS = 2000      # a req key is polled this long after its last local admission (at least)
HEARTBEAT_MIN = 1.0       # seconds: the heartbeat's TTL is at least this
HEARTBEAT_INTERVALS = 5   # ... and at least this many sync intervals
REQ_TTL_MS = 60000        # a req counter lives this long after its last increment (at least)
BACKOFF_MAX = 1.0         # seconds between retries while Redis is unreachable, at most
IDLE_WAIT = 1.0           # seconds between looks while there is nothing to sync
STOP_TIMEOUT = 0.5        # seconds the last push at stop may take
REOPEN_INTERVAL = 1.0     # seconds between attempts to map a zone that failed to open

# The contract (docs/limits-cluster.md, "The Lua script"):
#   KEYS[1]      the set of node ids
#   KEYS[2]      this node's heartbeat key
#   KEYS[3..]    counters
#   ARGV[1]      this node's id          ARGV[2]  heartbeat TTL (ms)
#   ARGV[3]      the heartbeat key prefix (prefix .. node id is a node's heartbeat key)
#   ARGV[3i+1], ARGV[3i+2], ARGV[3i+3]  for counter i (KEYS[i+2]): its kind, a value and
#                a TTL (ms), set when the counter is written.
#     kind "c" (a count window): a hash {node id: what that node admitted in the
#                window}; value = this node's count (absolute): its field is raised to
#                it (never lowered), so a push is idempotent and a Redis that lost the
#                key gets it back on the next push. Returns the sum of the fields.
#     kind "r" (a req key): a plain counter; value = this node's admissions since its
#                last push, added (INCRBY). Returns the counter.
#                A value of 0 only reads (and creates nothing).
# Returns {total_1, ..., total_n, live_nodes}; live_nodes is the number of node ids
# whose heartbeat key exists (this node's included); ids without one leave the set.
SCRIPT = """
local n = #KEYS - 2
local me = ARGV[1]
local out = {}
for i = 1, n do
  local key = KEYS[i + 2]
  local kind = ARGV[3 * i + 1]
  local value = tonumber(ARGV[3 * i + 2])
  if kind == 'c' then
    if value > 0 then
      local mine = tonumber(redis.call('HGET', key, me) or '0') or 0
      if value > mine then
        redis.call('HSET', key, me, value)
      end
      redis.call('PEXPIRE', key, ARGV[3 * i + 3])
    end
    local total = 0
    for _, v in ipairs(redis.call('HVALS', key)) do
      total = total + (tonumber(v) or 0)
    end
    out[i] = total
  elseif value > 0 then
    out[i] = redis.call('INCRBY', key, value)
    redis.call('PEXPIRE', key, ARGV[3 * i + 3])
  else
    out[i] = tonumber(redis.call('GET', key) or '0') or 0
  end
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[1], me)
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
local live = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[3] .. member) == 1 then
    live = live + 1
  else
    redis.call('SREM', KEYS[1], member)
  end
end
out[n + 1] = live
return out
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def node_id():
    """hostname:master pid:random (the control process's parent is the master)."""
    return f"{socket.gethostname()}:{os.getppid()}:{secrets.token_hex(4)}"


def _open_zone(path):
    from edge._core.reactor import LimitZone
    return LimitZone.open(path)


def make_client(settings):
    """A redis.asyncio client for RedisSettings: no retries of its own (the sync loop
    retries) and every socket operation bounded by the timeout."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    common = dict(password=settings.password, db=settings.db,
                  socket_timeout=settings.timeout, socket_connect_timeout=settings.timeout,
                  retry=Retry(NoBackoff(), 0), health_check_interval=0)
    if settings.sentinel_name:
        from redis.asyncio.sentinel import Sentinel
        sentinel_kwargs = dict(socket_timeout=settings.timeout,
                               socket_connect_timeout=settings.timeout,
                               retry=Retry(NoBackoff(), 0))
        if settings.sentinel_password:
            sentinel_kwargs["password"] = settings.sentinel_password
        sentinel = Sentinel(list(settings.sentinels), sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(settings.sentinel_name, **common)
    if settings.unix_path:
        return aioredis.Redis(unix_socket_path=settings.unix_path, **common)
    return aioredis.Redis(host=settings.host, port=settings.port, **common)


def _cluster_specs(cycle):
    zones = getattr(cycle, "limit_zones", None) or {}
    return {name: spec for name, spec in zones.items()
            if getattr(spec, "scope", "node") == "cluster" and spec.kind in ("count", "req")}


def _identity(spec):
    """What makes the master keep a zone's file across a reload (and what our own
    bookkeeping for it depends on)."""
    return (spec.path, spec.kind, spec.size, spec.window_ms, bool(getattr(spec, "sliding", False)))


class _Zone:
    """One cluster-scope zone, as this node syncs it."""

    def __init__(self, spec, zone):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.zone = zone
        self.window_ms = max(int(spec.window_ms or 1000), 1)
        self.sliding = bool(getattr(spec, "sliding", False))
        self.active = OrderedDict()   # key hash -> wall ms of its last local admission
        self.own = {}                 # count: (hash, window) -> what this node admitted
        self.pending = {}             # req: hash -> admissions not pushed yet
        self.seen = {}                # req: hash -> the counter's value at the last look
        self.applied = None           # (mode, live) last given to set_mode
        self.failed_open_at = None
        if self.kind == "count":
            self.keep_ms = 2 * self.window_ms
            self.ttl_ms = 2 * self.window_ms + max(self.window_ms // 10, 5000)
            self.prefix = f"{TAG}count:{self.name}:{self.window_ms}:"
        else:
            self.keep_ms = max(2 * self.window_ms, REQ_ACTIVE_MS)
            self.ttl_ms = max(2 * self.window_ms, REQ_TTL_MS)
            self.prefix = f"{TAG}req:{self.name}:"

    def key(self, h, window):
        if self.kind == "count":
            return f"{self.prefix}{h:016x}:{window}"
        return f"{self.prefix}{h:016x}"

    def set_mode(self, mode, live):
        if self.zone is None or self.applied == (mode, live):
            return
        self.zone.set_mode(mode, live)
        self.applied = (mode, live)

    def collect(self, now_ms):
        """Take the new admissions out of shared memory."""
        if self.zone is None:
            return
        active = self.active
        count = self.kind == "count"
        for h, window, delta in self.zone.collect():
            if delta <= 0:
                continue
            if count:
                k = (h, window)
                self.own[k] = self.own.get(k, 0) + delta
            else:
                self.pending[h] = self.pending.get(h, 0) + delta
            if h in active:
                active.move_to_end(h)
            active[h] = now_ms
        self._forget(now_ms)

    def _forget(self, now_ms):
        """Keys idle for keep_ms stop being polled; the oldest go beyond ACTIVE_MAX."""
        active = self.active
        while active:
            h, last = next(iter(active.items()))
            if now_ms - last < self.keep_ms and len(active) <= ACTIVE_MAX:
                break
            del active[h]
            self.seen.pop(h, None)
            self.pending.pop(h, None)
        if self.kind == "count" and self.own:
            oldest = now_ms // self.window_ms - 1
            for k in [k for k in self.own if k[1] < oldest or k[0] not in active]:
                del self.own[k]

    def outage(self):
        """A round without Redis: a count zone's admissions stay in `own` and reach Redis
        with the next push (while their window matters); a req zone's are dropped (a
        rate limiter only cares about the recent past)."""
        self.pending.clear()

    def entries(self, now_ms):
        """[(hash, window, redis key, kind, value, ttl ms)] for a round: every recently
        active key (its own count, or its pending admissions; 0: a poll)."""
        out = []
        if self.zone is None:
            return out
        if self.kind == "count":
            own = self.own
            current = now_ms // self.window_ms
            windows = (current - 1, current) if self.sliding else (current,)
            done = set()
            for h in self.active:
                for w in windows:
                    k = (h, w)
                    done.add(k)
                    out.append((h, w, self.key(h, w), "c", own.get(k, 0), self.ttl_ms))
            for k, n in own.items():
                if k not in done and k[1] >= current - 1:
                    out.append((k[0], k[1], self.key(*k), "c", n, self.ttl_ms))
        else:
            pending = self.pending
            for h in self.active:
                out.append((h, 0, self.key(h, 0), "r", pending.get(h, 0), self.ttl_ms))
        return out

    def apply(self, entry, total):
        """A counter's total from Redis, for an entry this round sent."""
        h, window, _key, _kind, value, _ttl = entry
        if self.kind == "count":
            # own may have grown since the round was built (no: collect and push never
            # interleave), so total - value is what the other nodes admitted
            self.zone.set_others(h, window, max(total - value, 0))
            return
        if value:
            left = self.pending.get(h, 0) - value
            if left > 0:
                self.pending[h] = left
            else:
                self.pending.pop(h, None)
        last = self.seen.get(h)
        self.seen[h] = total
        if last is None or total < last:
            # First look at this key (what the others did before is history), or its
            # counter expired or Redis restarted: count from here.
            return
        others = total - last - value
        if others > 0:
            self.zone.add_others(h, others)


class LimitSync:
    """The service: ``start()``, ``await reload(cycle)``, ``await stop()``, and
    ``metrics()`` for /metrics."""

    def __init__(self, zones, cycle, *, open_zone=None, node=None, clock=None):
        self._shm = zones                 # the metrics zones (unused: limit zones are files)
        self._open_zone = open_zone or _open_zone
        self.node_id = node or node_id()
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._cycle = cycle
        self._settings = getattr(cycle, "redis", None)
        self._interval = float(getattr(cycle, "limit_sync_interval", 0.1) or 0.1)
        self._policy = getattr(cycle, "limit_redis_failure", "local") or "local"
        self._zones = {}                  # name -> _Zone
        self._client = None
        self._task = None
        self._wake = None                 # asyncio.Event: a reload ends an idle wait
        self._up = None                   # None: no round trip yet; True / False
        self._down_since = None
        self._next_try = 0.0
        self._backoff = 0.0
        self.live_nodes = 1
        self.roundtrips = 0
        self.failures = 0
        self.last_error = None
        self._sync_zones(cycle)

    # -- service -------------------------------------------------------------------

    def start(self):
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="limit sync")

    async def reload(self, cycle):
        settings = getattr(cycle, "redis", None)
        if settings != self._settings:
            await self._close_client()
            self._settings = settings
            self._up, self._down_since, self._next_try, self._backoff = None, None, 0.0, 0.0
        self._interval = float(getattr(cycle, "limit_sync_interval", 0.1) or 0.1)
        self._policy = getattr(cycle, "limit_redis_failure", "local") or "local"
        self._cycle = cycle
        self._sync_zones(cycle)
        if self._wake is not None:
            self._wake.set()              # zones or redis may have come: leave an idle wait
        if self._up is False:
            for z in self._zones.values():
                z.set_mode(self._policy, self.live_nodes)

    async def stop(self):
        """Stop syncing; push what is pending and leave the node set, within
        STOP_TIMEOUT (a node that cannot just ages out with its heartbeat's TTL)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._zones and self._settings is not None and self._up is not False:
            try:
                await asyncio.wait_for(self._final(), min(STOP_TIMEOUT, self._settings.timeout))
            except Exception:
                pass
        await self._close_client()

    def metrics(self):
        """{"roundtrips", "failures", "up" (1, 0), "live_nodes", "zones"} for /metrics,
        or None when no zone is synced."""
        if not self._zones or self._settings is None:
            return None
        return {"roundtrips": self.roundtrips, "failures": self.failures,
                "up": 1 if self._up else 0, "live_nodes": self.live_nodes,
                "zones": len(self._zones)}

    # -- the loop ------------------------------------------------------------------

    async def _loop(self):
        while True:
            started = time.monotonic()
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:   # a bug here must not end the sync for good
                log.error("alert", f"limit sync: round failed: {e!r}")
            if not self._zones or self._settings is None:
                # nothing to sync: no wake-up ten times a second on the workers' cores;
                # a reload that brings zones or redis ends the wait
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_WAIT)
                except asyncio.TimeoutError:
                    pass
                continue
            # a fixed rhythm: a slow round trip does not push the next one further away
            await asyncio.sleep(max(0.0, started + self._interval - time.monotonic()))

    async def sync_once(self):
        """One round: collect, and (unless backing off) one round trip per batch."""
        if not self._zones or self._settings is None:
            return
        now_ms = self._clock()
        for z in self._zones.values():
            if z.zone is None:
                self._reopen(z)
            z.collect(now_ms)
        if self._up is False and time.monotonic() < self._next_try:
            for z in self._zones.values():
                z.outage()
            return
        entries = [(z, e) for z in self._zones.values() for e in z.entries(now_ms)]
        try:
            live = await self._push(entries)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed(e, now_ms)
            return
        self._succeeded(live)

    async def _push(self, entries):
        """The round trips of one round; returns the live node count. Applies each
        batch's totals as it comes (a later batch failing loses nothing applied)."""
        timeout = self._settings.timeout
        live = None
        for start in range(0, max(len(entries), 1), BATCH_MAX):
            batch = entries[start:start + BATCH_MAX]
            # A batch that fails leaves the req deltas pending (only apply() takes
            # them): pushed again, at least once (a reply lost after the script ran
            # counts them twice, erring on the side of admitting less). Count pushes
            # are absolute, so pushing one twice changes nothing.
            result = await asyncio.wait_for(self._eval(batch), timeout)
            self.roundtrips += 1
            for (z, e), total in zip(batch, result):
                z.apply(e, int(total))
            live = max(int(result[-1]), 1)
        return live

    async def _eval(self, batch):
        client = self._client
        if client is None:
            client = self._client = make_client(self._settings)
        hb_ttl = int(1000 * max(HEARTBEAT_MIN, HEARTBEAT_INTERVALS * self._interval))
        keys = [NODES_KEY, NODE_PREFIX + self.node_id]
        args = [self.node_id, hb_ttl, NODE_PREFIX]
        for _z, (_h, _w, key, kind, value, ttl) in batch:
            keys.append(key)
            args += (kind, value, ttl)
        from redis.exceptions import NoScriptError
        try:
            return await client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except NoScriptError:
            # A new or restarted server, or a replica just promoted: load it, once.
            await client.script_load(SCRIPT)
            return await client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)

    def _failed(self, error, now_ms):
        self.failures += 1
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self.last_error = text
        self._backoff = min(max(self._backoff * 2, self._interval), BACKOFF_MAX)
        self._next_try = time.monotonic() + self._backoff
        # a connection in an unknown state (a reply may still come) is not reused
        client, self._client = self._client, None
        if client is not None:
            asyncio.get_running_loop().create_task(self._close(client))
        for z in self._zones.values():
            z.set_mode(self._policy, self.live_nodes)
            z.outage()
        if self._up is not False:
            self._down_since = time.monotonic()
            what = {"local": f"each limit divided by {self.live_nodes} live node(s)",
                    "allow": "admitting all", "deny": "rejecting all"}[self._policy]
            log.error("error", f"limit sync: redis {self._settings.describe()} unreachable "
                               f"({text}); limit_redis_failure {self._policy}: {what} "
                               f"until it answers")
        self._up = False

    def _succeeded(self, live):
        self.live_nodes = live
        if self._up is False:
            down = time.monotonic() - (self._down_since or time.monotonic())
            log.error("notice", f"limit sync: redis {self._settings.describe()} answers "
                                f"again after {down:.1f}s; cluster limits resumed with "
                                f"{live} live node(s)")
        self._up = True
        self._backoff = 0.0
        self._down_since = None
        for z in self._zones.values():
            z.set_mode("cluster", live)

    async def _final(self):
        now_ms = self._clock()
        for z in self._zones.values():
            z.collect(now_ms)
        entries = [(z, e) for z in self._zones.values() for e in z.entries(now_ms)
                   if e[4] > 0]    # what was admitted since the last push (polls left out)
        if entries:
            await self._push(entries)
        client = self._client
        if client is not None:
            await client.delete(NODE_PREFIX + self.node_id)
            await client.srem(NODES_KEY, self.node_id)

    # -- zones ---------------------------------------------------------------------

    def _sync_zones(self, cycle):
        """Map the cluster-scope zones of `cycle`; a zone whose file the master kept
        keeps its bookkeeping, one made anew starts afresh."""
        specs = _cluster_specs(cycle)
        old = self._zones
        new = {}
        for name, spec in specs.items():
            z = old.get(name)
            if z is not None and _identity(z.spec) == _identity(spec) and z.zone is not None:
                z.spec = spec
            else:
                z = _Zone(spec, None)
                self._reopen(z)
                if self._up:
                    z.set_mode("cluster", self.live_nodes)
            new[name] = z
        self._zones = new

    def _reopen(self, z):
        now = time.monotonic()
        if z.failed_open_at is not None and now - z.failed_open_at < REOPEN_INTERVAL:
            return
        try:
            z.zone = self._open_zone(z.spec.path)
            z.failed_open_at = None
            z.applied = None
        except Exception as e:
            if z.failed_open_at is None:
                log.error("alert", f"limit sync: cannot map zone \"{z.name}\" "
                                   f"({z.spec.path}): {e!r}")
            z.failed_open_at = now
            return
        # A respawned control process goes on from the live count the zone remembers.
        try:
            live = int(z.zone.stats().get("live_nodes") or 0)
        except Exception:
            live = 0
        if live > 1 and self._up is None:
            self.live_nodes = max(self.live_nodes, live)

    async def _close_client(self):
        client, self._client = self._client, None
        if client is not None:
            await self._close(client)

    @staticmethod
    async def _close(client):
        try:
            await asyncio.wait_for(client.aclose(), 1.0)
        except BaseException:
            pass
