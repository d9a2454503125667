"""The limiter's algorithms against their formulas, through the same C code the workers
run (LimitZone.check takes the clock as an argument): GCRA for limit_req, fixed and
sliding windows for limit_count, concurrency for limit_conn; eviction when a zone is full;
zone files kept or made anew."""

import pytest

from edge._core.reactor import LimitZone, prepare_zone_file, zone_capacity

S = 1_000_000   # µs


def zone(tmp_path, kind, limit, size=64 * 1024, window_ms=0, sliding=False, name="z"):
    path = str(tmp_path / f"state.limit.{name}")
    prepare_zone_file(path, kind, size, False, limit, window_ms, sliding)
    return LimitZone.open(path)


# ---- limit_req: GCRA ------------------------------------------------------------------------

def test_gcra_burst_then_rate(tmp_path):
    z = zone(tmp_path, "req", 10)                  # T = 100 ms
    t0 = 1000 * S
    got = [z.check(b"k", t0, 0, burst=3) for _ in range(5)]
    assert [g[0] for g in got] == [True, True, True, True, False]    # 1 + burst at once
    assert [g[2] for g in got[:4]] == [3, 2, 1, 0]                     # remaining
    # the bucket refills one request per emission interval
    assert z.check(b"k", t0 + 100_000 - 1, 0, burst=3)[0] is False
    assert z.check(b"k", t0 + 100_000, 0, burst=3)[0] is True
    assert z.check(b"k", t0 + 100_000, 0, burst=3)[0] is False


def test_gcra_boundary_is_inclusive(tmp_path):
    """Admitted while TAT - now <= burst × T, to the microsecond."""
    z = zone(tmp_path, "req", 4)                   # T = 250 ms
    t0 = 50 * S
    assert z.check(b"k", t0, 0, burst=1)[0]        # TAT = t0 + T
    assert z.check(b"k", t0, 0, burst=1)[0]        # wait T == tau: admitted, TAT = t0 + 2T
    assert not z.check(b"k", t0 + 249_999, 0, burst=1)[0]     # wait T + 1 µs > tau
    assert z.check(b"k", t0 + 250_000, 0, burst=1)[0]


def test_gcra_zero_burst_and_per_minute_rates(tmp_path):
    z = zone(tmp_path, "req", 30 / 60.0)           # 30r/m: T = 2 s
    t0 = 10 * S
    assert z.check(b"k", t0, 0)[0]
    assert not z.check(b"k", t0 + 1_999_999, 0)[0]
    assert z.check(b"k", t0 + 2 * S, 0)[0]


def test_gcra_delay_without_nodelay(tmp_path):
    """Without nodelay, excess requests wait their turn: the k-th waits (k - 1) × T."""
    z = zone(tmp_path, "req", 10)
    t0 = 5 * S
    got = [z.check(b"k", t0, 0, burst=3, nodelay=False) for _ in range(5)]
    assert [g[0] for g in got] == [True, True, True, True, False]
    assert [g[1] for g in got[:4]] == [0, 100_000, 200_000, 300_000]


def test_gcra_delay_threshold(tmp_path):
    """delay=N: the first N excess requests pass at once, the rest wait."""
    z = zone(tmp_path, "req", 10)
    t0 = 5 * S
    got = [z.check(b"k", t0, 0, burst=4, nodelay=False, delay_n=2) for _ in range(6)]
    assert [g[0] for g in got] == [True] * 5 + [False]
    assert [g[1] for g in got[:5]] == [0, 0, 0, 100_000, 200_000]


def test_gcra_clock_steps(tmp_path):
    """A long pause refills the bucket (no credit beyond the burst); a clock that goes back
    never grants extra requests."""
    z = zone(tmp_path, "req", 10)
    t0 = 100 * S
    for _ in range(3):
        assert z.check(b"k", t0, 0, burst=2)[0]
    assert not z.check(b"k", t0, 0, burst=2)[0]
    later = t0 + 3600 * S
    assert [z.check(b"k", later, 0, burst=2)[0] for _ in range(4)] == [True, True, True, False]
    assert not z.check(b"k", later - 10 * S, 0, burst=2)[0]


def test_keys_are_independent(tmp_path):
    z = zone(tmp_path, "req", 1)
    assert z.check(b"a", S, 0)[0] and not z.check(b"a", S, 0)[0]
    assert z.check(b"b", S, 0)[0]


# ---- limit_count: windows -------------------------------------------------------------------------

def test_fixed_window(tmp_path):
    z = zone(tmp_path, "count", 3, window_ms=10_000)
    base = 1_700_000_000_000 - 1_700_000_000_000 % 10_000   # a window start
    got = [z.check(b"k", 0, base + 4000) for _ in range(4)]
    assert [g[0] for g in got] == [True, True, True, False]
    assert [g[2] for g in got[:3]] == [2, 1, 0]
    assert got[0][3] == 6                                      # seconds to the window's end
    assert not z.check(b"k", 0, base + 9999)[0]
    assert [z.check(b"k", 0, base + 10_000)[0] for _ in range(4)] == [True, True, True, False]


def test_sliding_window_weighting(tmp_path):
    """used = current + previous × (1 - elapsed / window); admitted while used + 1 <= N."""
    z = zone(tmp_path, "count", 10, window_ms=10_000, sliding=True)
    base = 1_700_000_000_000 - 1_700_000_000_000 % 10_000
    assert all(z.check(b"k", 0, base + 1000)[0] for _ in range(10))   # 10 in the first window
    # 2.5 s into the next window, the previous 10 weigh 7.5: two more fit (8.5, 9.5)
    t = base + 10_000 + 2500
    assert [z.check(b"k", 0, t)[0] for _ in range(3)] == [True, True, False]
    # at 7.5 s, the previous weighs 2.5, and 2 are in the current window: 4.5 used, 5 more
    t = base + 10_000 + 7500
    assert [z.check(b"k", 0, t)[0] for _ in range(6)] == [True] * 5 + [False]
    # two windows later the old counts are gone
    assert [z.check(b"k", 0, base + 30_000)[0] for _ in range(11)] == [True] * 10 + [False]


def test_fixed_window_ignores_previous(tmp_path):
    z = zone(tmp_path, "count", 2, window_ms=1000)
    assert z.check(b"k", 0, 10_999)[0] and z.check(b"k", 0, 10_999)[0]
    assert [z.check(b"k", 0, 11_000)[0] for _ in range(3)] == [True, True, False]


# ---- limit_conn ------------------------------------------------------------------------------------

def test_conn_acquire_release(tmp_path):
    z = zone(tmp_path, "conn", 0)
    assert z.check(b"k", 0, 0, conn_limit=2)[:3] == (True, 0, 1)
    assert z.check(b"k", 0, 0, conn_limit=2)[:3] == (True, 0, 0)
    assert z.check(b"k", 0, 0, conn_limit=2)[0] is False
    z.release(b"k")
    assert z.check(b"k", 0, 0, conn_limit=2)[0] is True
    for _ in range(5):
        z.release(b"k")                    # never below zero
    assert z.peek(b"k")["a"] == 0


# ---- zones: capacity, eviction, files --------------------------------------------------------------

def test_capacity_is_128_bytes_a_key():
    assert zone_capacity(1024 * 1024) == (1024 * 1024 - 4096) // 128
    assert zone_capacity(10 * 1024 * 1024) >= 81_000


def test_full_zone_evicts_expired_first_then_lru(tmp_path):
    z = zone(tmp_path, "req", 1, size=32 * 1024)     # 224 entries
    cap = z.stats()["capacity"]
    now = 10_000 * S
    # every key used once at `now`: their TAT is now + 1 s (not expired until then)
    for i in range(cap * 3):
        assert z.check(b"key%d" % i, now, i)[0]
    st = z.stats()
    assert st["entries"] <= cap and st["evicted"] > 0 and st["full"] == 0
    # the newest keys are still limited: their entries were kept (LRU evicts the oldest)
    assert not z.check(b"key%d" % (cap * 3 - 1), now, cap * 3)[0]
    # once TAT has passed, old entries are expired and go first, whatever their age
    later = now + 5 * S
    assert z.check(b"fresh", later, cap * 4)[0]
    assert z.stats()["full"] == 0


def test_busy_concurrency_entries_are_never_evicted(tmp_path):
    z = zone(tmp_path, "conn", 0, size=32 * 1024)
    admitted = [z.check(b"busy%d" % i, 0, 0, conn_limit=1)[0] for i in range(2000)]
    st = z.stats()
    # some keys found every entry of their probe window busy: refused, counted, never evicted
    assert st["full"] > 0 and admitted.count(True) <= st["capacity"]
    assert st["evicted"] == 0
    kept = [i for i, ok in enumerate(admitted) if ok]
    assert all(z.peek(b"busy%d" % i)["a"] == 1 for i in kept)


def test_zone_file_kept_when_kind_and_size_match(tmp_path):
    path = str(tmp_path / "s.limit.q")
    assert prepare_zone_file(path, "count", 64 * 1024, False, 3, 60_000, False) is False
    z = LimitZone.open(path)
    z.check(b"k", 0, 1000)
    z.close()
    # same name, kind and size (another limit): the state stays
    assert prepare_zone_file(path, "count", 64 * 1024, False, 5, 60_000, False) is True
    z = LimitZone.open(path)
    assert z.peek(b"k")["own"] == 1 and z.limit == 5
    z.close()
    # resized: a new, empty zone
    assert prepare_zone_file(path, "count", 128 * 1024, False, 5, 60_000, False) is False
    z = LimitZone.open(path)
    assert z.peek(b"k") is None
    z.close()


def test_not_a_zone_is_refused(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\0" * 65536)
    with pytest.raises(ValueError):
        LimitZone.open(str(path))
