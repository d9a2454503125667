"""The control process's limit sync (edge/control/limit_sync.py) against a REAL
redis-server (tests/support/redis.py): the Lua script's contract, the sync of count and
req zones between several nodes, the failure policy and the recovery, a stalled Redis.

The zones here are the pure-Python stand-in of tests/support/standin_zone.py (the
workers' part is `zone.admit()`); tests/test_limits_cluster.py runs the same with real
edge processes and the compiled zones.
"""

import asyncio
import time

import pytest
import redis as redis_sync

from edge.config import ConfigError, build, parse_string
from edge.control import limit_sync
from edge.control.limit_sync import NODE_PREFIX, NODES_KEY, SCRIPT, SCRIPT_SHA, LimitSync
from edge.modules import redis as redis_module
from edge.modules.redis import RedisSettings
from support.redis import RedisServer, redis_server_path
from support.standin_zone import StandInCycle, StandInZone

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")

KEY = 0x1234_5678_9ABC_DEF0


@pytest.fixture
def server():
    s = RedisServer(args=["--enable-debug-command", "local"]).start()
    yield s
    s.kill()


def settings_for(server, timeout=0.5):
    return RedisSettings(host="127.0.0.1", port=server.port, timeout=timeout)


def run(coro, timeout=30):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def node(server, zones, name, interval=0.05, policy="local", timeout=0.5):
    registry = {f"/standin/{z.name}": z for z in zones}
    cycle = StandInCycle(settings_for(server, timeout), zones, interval, policy)
    return LimitSync(None, cycle, open_zone=registry.__getitem__, node=name)


def now_ms():
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- the script


def test_script_contract(server):
    r = redis_sync.Redis(port=server.port)
    assert r.script_load(SCRIPT) == SCRIPT_SHA

    def call(node_id, counters, ttl=1000):
        keys = [NODES_KEY, NODE_PREFIX + node_id] + [k for k, *_ in counters]
        args = [node_id, ttl, NODE_PREFIX]
        for _k, kind, value, t in counters:
            args += [kind, value, t]
        return r.evalsha(SCRIPT_SHA, len(keys), *keys, *args)

    c, q = "edge:{limits}:c", "edge:{limits}:q"
    # req ("r"): a delta adds and returns the total; a zero delta only reads
    assert call("a", [(q, "r", 5, 60000), ("edge:{limits}:y", "r", 0, 60000)]) == [5, 0, 1]
    assert not r.exists("edge:{limits}:y")
    assert 0 < r.pttl(q) <= 60000
    assert call("b", [(q, "r", 3, 60000)]) == [8, 2]
    assert call("a", [(q, "r", 0, 60000)]) == [8, 2]
    # count ("c"): each node's absolute count in its own field, the sum returned
    assert call("a", [(c, "c", 4, 60000)]) == [4, 2]
    assert call("b", [(c, "c", 2, 60000)]) == [6, 2]
    assert call("a", [(c, "c", 4, 60000)]) == [6, 2]      # pushed twice: no change
    assert call("a", [(c, "c", 3, 60000)]) == [6, 2]      # a field is never lowered
    assert call("a", [(c, "c", 0, 60000)]) == [6, 2]      # a poll
    assert r.hgetall(c) == {b"a": b"4", b"b": b"2"}
    assert 0 < r.pttl(c) <= 60000
    r.delete(c)                                            # Redis lost it: the next push
    assert call("a", [(c, "c", 4, 60000)]) == [4, 2]      # puts a's part back
    # heartbeats carry a TTL; a node whose heartbeat is gone is dropped from the set
    assert 0 < r.pttl(NODE_PREFIX + "a") <= 1000
    r.delete(NODE_PREFIX + "b")
    assert call("a", []) == [1]
    assert r.smembers(NODES_KEY) == {b"a"}
    # a heartbeat that expires by itself counts the same
    call("c", [], ttl=100)
    assert call("a", [])[-1] == 2
    time.sleep(0.25)
    assert call("a", [])[-1] == 1


def test_noscript_is_reloaded(server):
    zone = StandInZone("q", limit=100)
    sync = node(server, [zone], "n1")

    async def go():
        await sync.sync_once()
        redis_sync.Redis(port=server.port).script_flush()
        zone.admit(KEY, now_ms())
        await sync.sync_once()
        await sync.stop()
    run(go())
    assert sync.failures == 0 and sync.roundtrips == 3      # two rounds and the push at stop
    keys = redis_sync.Redis(port=server.port).keys("edge:{limits}:count:q:*")
    assert len(keys) == 1


# --------------------------------------------------------------------------- count zones


def offered_load(syncs, zones, limit, per_node_rate, duration, interval):
    """Each node offers `per_node_rate` requests per second of one key for `duration`
    seconds while its sync runs every `interval`; returns the total admitted."""
    async def go():
        for s in syncs:
            s.start()
        start = time.monotonic()
        sent = 0
        step = 0.005
        while time.monotonic() - start < duration:
            due = int((time.monotonic() - start) * per_node_rate)
            t = now_ms()
            while sent < due:
                for z in zones:
                    z.admit(KEY, t)
                sent += 1
            await asyncio.sleep(step)
        # the live count while all run (a node that stops leaves the set, and a later
        # node's last round may already count one less)
        offered_load.live_nodes = [s.live_nodes for s in syncs]
        for s in syncs:
            await s.stop()
    run(go(), timeout=duration + 20)
    return sum(z.counts["admitted"] for z in zones)


def test_three_nodes_share_a_count_limit(server):
    limit, rate, duration, interval = 500, 250, 3.0, 0.02
    zones = [StandInZone("api", limit=limit, window_ms=60000) for _ in range(3)]
    syncs = [node(server, [z], f"n{i}", interval) for i, z in enumerate(zones)]
    left = 60 - time.time() % 60         # the whole run inside one window
    if left < duration + 2:
        time.sleep(left + 0.2)
    admitted = offered_load(syncs, zones, limit, rate, duration, interval)
    error = (admitted - limit) / limit
    print(f"\nstand-in zones, 3 nodes, limit {limit}, offered {3 * rate}/s for {duration}s, "
          f"interval {interval * 1000:.0f}ms: admitted {admitted}, error {error:+.1%}")
    # the bound: about nodes x per-node rate x interval = 3 x 250 x 0.02 = 15 (3%)
    assert -0.01 <= error <= 0.05, admitted
    assert offered_load.live_nodes == [3, 3, 3]
    assert all(z.mode == "cluster" for z in zones)
    # Redis holds the cluster's count for the key's window, and it is what was admitted
    window = now_ms() // 60000
    r = redis_sync.Redis(port=server.port)
    stored = sum(int(v) for k in r.keys(f"edge:{{limits}}:count:api:60000:{KEY:016x}:*")
                 for v in r.hvals(k))
    assert stored == admitted


def test_keys_without_local_traffic_still_learn_the_others(server):
    """A key this node admitted once stays polled: the other nodes' later admissions
    reach it although it admits nothing more."""
    a, b = StandInZone("api", limit=100), StandInZone("api", limit=100)
    sa, sb = node(server, [a], "a"), node(server, [b], "b")

    async def go():
        t = now_ms()
        b.admit(KEY, t)
        await sb.sync_once()
        for _ in range(40):
            a.admit(KEY, t)
        await sa.sync_once()
        await sb.sync_once()        # b: no local admission since; it polls the key
        await sa.stop()
        await sb.stop()
    run(go())
    window = now_ms() // 60000
    assert b.others[(KEY, window)] == 40
    assert a.others[(KEY, window)] == 1


def test_sliding_window_gets_the_previous_window(server):
    a, b = (StandInZone("sl", limit=100, window_ms=60000, sliding=True) for _ in range(2))
    clock = {"ms": 60000 * 1000 + 59000}
    registry = {}

    def make(zone, name):
        cycle = StandInCycle(settings_for(server), [zone], 0.05)
        return LimitSync(None, cycle, open_zone={"/standin/sl": zone}.__getitem__,
                         node=name, clock=lambda: clock["ms"])
    sa, sb = make(a, "a"), make(b, "b")

    async def go():
        for _ in range(30):
            a.admit(KEY, clock["ms"])
        b.admit(KEY, clock["ms"])
        await sa.sync_once()
        await sb.sync_once()
        clock["ms"] += 2000          # the next window: b polls the previous one too
        await sb.sync_once()
        await sa.stop()
        await sb.stop()
    run(go())
    prev = clock["ms"] // 60000 - 1
    assert b.others[(KEY, prev)] == 30
    assert b.others[(KEY, prev + 1)] == 0


# --------------------------------------------------------------------------- req zones


def test_req_zone_gets_the_others_increments(server):
    a = StandInZone("rq", kind="req", limit=10, window_ms=1000)
    b = StandInZone("rq", kind="req", limit=10, window_ms=1000)
    sa, sb = node(server, [a], "a"), node(server, [b], "b")

    async def go():
        t = now_ms()
        a.admit(KEY, t)
        b.admit(KEY, t)
        await sa.sync_once()
        await sb.sync_once()     # first look: history, nothing added
        for _ in range(7):
            a.admit(KEY, t)
        for _ in range(2):
            b.admit(KEY, t)
        await sa.sync_once()     # a: b's 1 since its first look
        await sb.sync_once()     # b: a's 7
        await sa.sync_once()     # a: b's 2
        await sa.stop()
        await sb.stop()
    run(go())
    assert b.added == {KEY: 7}
    assert a.added == {KEY: 3}


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("policy", ["local", "deny"])
def test_redis_down_applies_the_policy_then_recovers(server, policy, capfd):
    zones = [StandInZone("api", limit=90) for _ in range(3)]
    syncs = [node(server, [z], f"n{i}", policy=policy, timeout=0.2) for i, z in enumerate(zones)]

    async def go():
        for _ in range(2):      # the first round of the first node sees 1 live node
            for s in syncs:
                await s.sync_once()
        assert all(z.modes[-1] == ("cluster", 3) for z in zones)
        t = now_ms()
        for _ in range(20):
            zones[0].admit(KEY, t)
        server.kill()
        for s in syncs:
            await s.sync_once()
        assert all(z.mode == policy and z.live_nodes == 3 for z in zones)
        # local: 90 / 3 live nodes = 30 per node from its own counts
        got = sum(zones[1].admit(KEY, t) for _ in range(50))
        assert got == (30 if policy == "local" else 0)
        assert zones[1].counts["local_decisions"] == 50
        server.start()
        deadline = time.monotonic() + 5
        while not all(s._up for s in syncs):
            assert time.monotonic() < deadline, [s.last_error for s in syncs]
            for s in syncs:
                await s.sync_once()
            await asyncio.sleep(0.05)
        assert all(z.mode == "cluster" for z in zones)
        # what the nodes admitted while Redis was away was pushed on the recovery
        for s in syncs:
            await s.sync_once()
        for s in syncs:
            await s.stop()
    run(go())
    err = capfd.readouterr().err
    assert "unreachable" in err and f"limit_redis_failure {policy}" in err, err
    assert "answers again" in err
    assert err.count("unreachable") == 3      # once per node, not once per retry
    window = now_ms() // 60000
    local = 30 if policy == "local" else 0
    r = redis_sync.Redis(port=server.port)
    stored = r.hgetall(f"edge:{{limits}}:count:api:60000:{KEY:016x}:{window}")
    assert sum(int(v) for v in stored.values()) == 20 + local
    assert zones[0].others[(KEY, window)] == local
    if local:
        assert zones[1].others[(KEY, window)] == 20


def test_a_stalled_redis_never_blocks_the_loop(server):
    """DEBUG SLEEP from a second client: the round trip times out, the policy applies,
    and the event loop (the admin API shares it) keeps its rhythm meanwhile."""
    zone = StandInZone("api", limit=100)
    sync = node(server, [zone], "n1", interval=0.05, timeout=0.3)

    async def go():
        sync.start()
        await asyncio.sleep(0.3)
        assert sync._up
        staller = redis_sync.Redis(port=server.port)
        loop = asyncio.get_running_loop()
        stall = loop.run_in_executor(None, lambda: staller.execute_command("DEBUG", "SLEEP", "1.5"))
        late = 0.0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.2:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            late = max(late, time.monotonic() - before - 0.01)
        assert zone.mode == "local"
        await stall
        deadline = time.monotonic() + 3
        while not sync._up:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await sync.stop()
        return late
    late = run(go())
    assert late < 0.05, late
    assert zone.mode == "cluster"
    assert sync.failures >= 1


def test_stop_leaves_the_node_set(server):
    zones = [StandInZone("api", limit=100) for _ in range(2)]
    syncs = [node(server, [z], f"n{i}") for i, z in enumerate(zones)]

    async def go():
        for s in syncs:
            await s.sync_once()
        await syncs[0].stop()
        await syncs[1].sync_once()
        await syncs[1].stop()
    run(go())
    assert syncs[1].live_nodes == 1
    assert not redis_sync.Redis(port=server.port).exists(NODE_PREFIX + "n0")


def test_metrics_text(server):
    from edge.control.metrics import render
    text = render(None, {}, None, limit_sync={"roundtrips": 5, "failures": 2, "up": 1,
                                              "live_nodes": 3})
    assert "edge_limit_sync_failures_total 2" in text
    assert "edge_limit_redis_up 1" in text
    assert "edge_limit_cluster_nodes 3" in text
    assert "edge_limit_redis_up" not in render(None, {}, None)


# --------------------------------------------------------------------------- directives


def compile_text(text):
    """The http-level hooks of the limits and redis modules over `text` (an http
    block's body), as edge.cycle runs them."""
    from edge.cycle import Runtime, all_directives
    from edge.modules import limits
    root = build(parse_string("http {\n" + text + "\n}\n", "/etc/edge/t.conf"), all_directives())
    http = root.blocks("http")[0]
    runtime = Runtime()
    limits.compile_http(http, runtime)
    redis_module.compile_http(http, runtime)
    return runtime


def test_nothing_to_sync_idles():
    """Without cluster-scope zones the loop does not wake ten times a second (each
    wake-up of the control process costs CPU on the workers' cores)."""
    rounds = []

    async def main():
        sync = LimitSync(None, StandInCycle(None, [], 0.1, "local"), open_zone={}.__getitem__, node="idle")

        async def counted():
            rounds.append(time.monotonic())
        sync.sync_once = counted
        sync.start()
        await asyncio.sleep(1.2)
        await sync.stop()
    run(main())
    assert 1 <= len(rounds) <= 3, f"{len(rounds)} rounds in 1.2 s with nothing to sync (every 0.1 s makes 12)"


def test_directives():
    r = compile_text("redis 10.0.0.5 password=s db=3 timeout=250ms;")
    assert r.redis == RedisSettings(host="10.0.0.5", port=6379, password="s", db=3, timeout=0.25)
    assert r.limit_sync_interval == 0.1 and r.limit_redis_failure == "local"
    r = compile_text("redis unix:/run/redis.sock; limit_sync_interval 20ms; limit_redis_failure allow;")
    assert r.redis.unix_path == "/run/redis.sock" and r.limit_sync_interval == 0.02
    assert r.limit_redis_failure == "allow"
    r = compile_text("redis_sentinel mymaster 127.0.0.1:26379 [::1]:26380 host3 password=p db=1 "
                     "sentinel_password=q;")
    assert r.redis.sentinel_name == "mymaster" and r.redis.sentinel_password == "q"
    assert r.redis.sentinels == (("127.0.0.1", 26379), ("::1", 26380), ("host3", 26379))
    assert r.redis.timeout == 1.0 and r.redis.db == 1


@pytest.mark.parametrize("text, message", [
    ("redis 127.0.0.1:99999;", "invalid port"),
    ("redis 127.0.0.1 db=x;", 'invalid "db"'),
    ("redis 127.0.0.1 timeout=0;", "must be more than 0"),
    ("redis 127.0.0.1 colour=blue;", 'invalid parameter "colour=blue"'),
    ("redis unix:relative.sock;", "must be absolute"),
    ("redis_sentinel 127.0.0.1:26379 127.0.0.1:26380;", "is not a master name"),
    ("redis_sentinel m password=x 127.0.0.1:26379;", "must come before"),
    ("redis_sentinel m db=1;", "at least one sentinel"),
    ("redis 127.0.0.1;\nredis_sentinel m 127.0.0.1:26379;", "use one"),
    ("limit_sync_interval 0;", "between 1ms and 60s"),
    ("limit_redis_failure maybe;", 'it must be one of "local", "allow", "deny"'),
])
def test_directive_errors(text, message):
    with pytest.raises(ConfigError) as info:
        compile_text(text)
    assert message in str(info.value)
    assert "/etc/edge/t.conf:" in str(info.value)


def test_a_cluster_zone_needs_redis():
    with pytest.raises(ConfigError) as info:
        compile_text("limit_count_zone $remote_addr zone=local:64k count=5 window=1m;\n"
                     "limit_count_zone $remote_addr zone=api:64k count=5 window=1m scope=cluster;")
    assert 'zone "api" has scope=cluster but no "redis"' in str(info.value)
    assert str(info.value).endswith("/etc/edge/t.conf:3")
    compile_text("redis 127.0.0.1;\nlimit_count_zone $remote_addr zone=api:64k count=5 window=1m "
                 "scope=cluster;")
    compile_text("limit_req_zone $remote_addr zone=x:64k rate=5r/s;")
