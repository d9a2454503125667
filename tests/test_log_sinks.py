"""Log shipping from the control process to remote sinks (issue 7, item 6).

Every sink talks to a real server on a real socket: UDP and TCP syslog servers and an
HTTP collector (tests/support/collectors.py) running in the test's event loop, a real
redis-server (tests/support/redis.py), and a Kafka broker when $EDGE_TEST_KAFKA names
one. The Shipper is driven by `Rings`, a stand-in for the shared-memory log rings with
their `drain()` method (the real rings are tested end to end with edge processes).
"""

import asyncio
import os
import re
import socket
import sys
import time
from collections import deque
from types import SimpleNamespace

import pytest
import uvloop

from edge import log
from edge.control.shipping import Shipper
from edge.control.sinks import SinkSpec, parse_target
from edge.control.sinks.queue import DropQueue
from support.collectors import HttpCollector, TcpSyslogServer, UdpSyslogServer
from support.ports import closed_port
from support.redis import RedisServer, redis_server_path

HOSTNAME = socket.gethostname().lower()


def run(coro, timeout=15.0):
    """Run ``coro`` on a fresh uvloop (as the control process does), bounded in time."""
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


class Rings:
    """What the workers would have written into the shared-memory log rings."""

    def __init__(self):
        self.records = deque()

    def write(self, target, record):
        self.records.append((target, record))

    def drain(self, max_records=1000):
        out = []
        while self.records and len(out) < max_records:
            out.append(self.records.popleft())
        return out


def cycle(*specs):
    return SimpleNamespace(log_sinks={spec.target: spec for spec in specs})


def record(n):
    return b'{"seq":%d,"status":200,"uri":"/v1/x"}' % n


def seq_of(line):
    return int(re.search(rb'"seq":(\d+)', line).group(1))


async def until(predicate, timeout=5.0, step=0.01):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(step)


@pytest.fixture
def error_log(tmp_path):
    path = tmp_path / "error.log"
    log.open_error_log(str(path), "info")
    yield path
    log.open_error_log(log.STDERR, "notice")


def queue_full_drops(path, target):
    """The counts of the 'records dropped ... (queue full)' lines for ``target``."""
    pattern = re.compile(rf"\[warn\] \d+#0: (\d+) access log records dropped for sink {re.escape(target)} \(queue full\)")
    return [int(m.group(1)) for m in pattern.finditer(path.read_text())]


# -- parse_target ------------------------------------------------------------------

def test_parse_syslog_defaults_are_nginx():
    spec = parse_target("syslog:server=10.0.0.5", {})
    assert (spec.kind, spec.host, spec.port, spec.proto) == ("syslog", "10.0.0.5", 514, "udp")
    assert (spec.facility, spec.severity, spec.pri, spec.hostname) == (23, 6, 190, True)
    assert (spec.queue, spec.target) == (10000, "syslog:server=10.0.0.5")


def test_parse_syslog_every_parameter():
    spec = parse_target("syslog:server=[::1]:5514,facility=local0,severity=warn,tag=api_gw,nohostname,proto=tcp",
                        {"queue": "64", "batch": 8, "timeout": "500ms"})
    assert (spec.host, spec.port, spec.facility, spec.severity, spec.pri) == ("::1", 5514, 16, 4, 132)
    assert (spec.tag, spec.hostname, spec.proto) == ("api_gw", False, "tcp")
    assert (spec.queue, spec.batch, spec.timeout) == (64, 8, 0.5)
    assert parse_target("syslog:server=unix:/dev/log", {}).path == "/dev/log"


def test_parse_urls():
    http = parse_target("http://collector.local:9000/ingest?src=edge", {"batch": "100", "flush": "250ms"})
    assert (http.kind, http.host, http.port, http.path, http.batch, http.flush) == (
        "http", "collector.local", 9000, "/ingest?src=edge", 100, 0.25)
    assert parse_target("http://h", {}).path == "/" and parse_target("http://h", {}).flush == 1.0
    redis = parse_target("redis://127.0.0.1:6380/access?maxlen=5000", {})
    assert (redis.kind, redis.port, redis.stream, redis.maxlen) == ("redis", 6380, "access", 5000)
    assert parse_target("redis://r/s", {}).maxlen == 100000 and parse_target("redis://r/s", {}).port == 6379
    kafka = parse_target("kafka://broker:9093/edge.access", {})
    assert (kafka.kind, kafka.host, kafka.port, kafka.topic) == ("kafka", "broker", 9093, "edge.access")


@pytest.mark.parametrize("text, params, message", [
    ("syslog:server=x:", {}, 'invalid syslog server "x:"'),
    ("syslog:server=h:70000", {}, 'invalid syslog server "h:70000"'),
    ("syslog:facility=local0", {}, "no syslog server specified"),
    ("syslog:server=h,facility=local9", {}, 'unknown syslog facility "local9"'),
    ("syslog:server=h,severity=fatal", {}, 'unknown syslog severity "fatal"'),
    ("syslog:server=h,tag=a-b", {}, 'syslog "tag" only allows alphanumeric characters and underscore'),
    ("syslog:server=h,tag=" + "a" * 33, {}, 'syslog "tag" length exceeds 32'),
    ("syslog:server=h,proto=sctp", {}, 'unknown syslog proto "sctp", must be "udp" or "tcp"'),
    ("syslog:server=h,bogus", {}, 'unknown syslog parameter "bogus"'),
    ("syslog:server=h,server=g", {}, 'duplicate syslog "server"'),
    ("http://h:0/", {}, 'invalid port in "http://h:0/"'),
    ("http://:80/x", {}, 'invalid http sink "http://:80/x"'),
    ("https://h/x", {}, 'https is not supported in access log sink "https://h/x", use http://'),
    ("http://user:pw@h/x", {}, 'credentials are not supported in "http://user:pw@h/x"'),
    ("redis://h:6379", {}, 'no stream in redis sink "redis://h:6379"'),
    ("redis://h/s?maxlen=0", {}, 'invalid parameter "maxlen=0" in redis sink "redis://h/s?maxlen=0"'),
    ("kafka://h/bad topic", {}, 'invalid topic in kafka sink "kafka://h/bad topic"'),
    ("http://h/", {"queue": "0"}, 'invalid queue "0"'),
    ("http://h/", {"batch": "x"}, 'invalid batch "x"'),
    ("http://h/", {"flush": "soon"}, 'invalid time "soon"'),
    ("http://h/", {"gzip": "on"}, 'invalid parameter "gzip=on" for access log sink'),
])
def test_parse_errors_are_nginx_style(text, params, message):
    with pytest.raises(ValueError) as e:
        parse_target(text, params)
    assert str(e.value) == message


def test_parse_kafka_says_when_aiokafka_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiokafka", None)  # what a failed import looks like
    with pytest.raises(ValueError, match=r"needs the aiokafka package, which is not installed: "
                                         r"pip install 'edge\[kafka\]'"):
        parse_target("kafka://broker:9092/logs", {})


def test_spec_is_frozen_and_comparable():
    a = parse_target("http://h:1/x", {"queue": "5"})
    assert a == parse_target("http://h:1/x", {"queue": 5}) and a != parse_target("http://h:1/x", {})
    with pytest.raises(Exception):
        a.queue = 6
    assert isinstance(a, SinkSpec)


# -- the queue ---------------------------------------------------------------------

def test_queue_drops_oldest_and_counts():
    async def main():
        q = DropQueue(3)
        for n in range(10):
            q.put(n)
            assert len(q) <= 3
        assert (q.dropped, await q.get_batch(10, 0)) == (7, [7, 8, 9])
        for n in range(5):
            q.put(n)
        q.resize(2)
        assert (q.dropped, q.take(5)) == (10, [3, 4])
        q.close()
        assert await q.get_batch(10, 1.0) == []
    run(main())


# -- syslog ------------------------------------------------------------------------

RFC3164 = re.compile(rb"<(\d+)>([A-Z][a-z]{2}) ([ 1-3][0-9]) (\d\d):(\d\d):(\d\d) (?:(\S+) )?(\w+): (.*)", re.S)


def _check_3164_stamp(m, before, after):
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    stamps = {time.strftime("%m %d %H:%M:%S", time.localtime(t)) for t in range(int(before), int(after) + 2)}
    mon, day = months.index(m.group(2).decode()) + 1, int(m.group(3))
    assert f"{mon:02d} {day:02d} {m.group(4).decode()}:{m.group(5).decode()}:{m.group(6).decode()}" in stamps


def test_syslog_udp_rfc3164_as_nginx():
    async def main():
        server = await UdpSyslogServer().start()
        plain = parse_target(f"syslog:server=127.0.0.1:{server.port}", {})
        tuned = parse_target(f"syslog:server=127.0.0.1:{server.port},facility=local0,severity=warn,tag=gw,nohostname", {})
        rings = Rings()
        shipper = Shipper(rings, cycle(plain, tuned))
        before = time.time()
        shipper.start()
        rings.write(plain.target, record(1))
        await server.wait_for(1)
        rings.write(tuned.target, record(2))
        await server.wait_for(2)
        after = time.time()
        await shipper.stop()
        server.stop()
        return server.datagrams, before, after

    (first, second), before, after = run(main())
    m = RFC3164.fullmatch(first)
    assert m, first
    assert (m.group(1), m.group(7), m.group(8), m.group(9)) == (b"190", HOSTNAME.encode(), b"edge", record(1))
    assert first.startswith(b"<190>") and b": " + record(1) == first[-len(record(1)) - 2:]
    _check_3164_stamp(m, before, after)
    m = RFC3164.fullmatch(second)
    assert m and (m.group(1), m.group(7), m.group(8), m.group(9)) == (b"132", None, b"gw", record(2)), second
    # nohostname: exactly one space between the time and the tag
    assert re.fullmatch(rb"<132>[A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d gw: " + re.escape(record(2)), second)


def test_syslog_unix_datagram(tmp_path):
    path = str(tmp_path / "log.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(5)
    spec = parse_target(f"syslog:server=unix:{path},tag=local", {})

    async def main():
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        rings.write(spec.target, record(7))
        await until(lambda: shipper.stats()[spec.target]["sent"] == 1)
        await shipper.stop()

    run(main())
    data = listener.recv(65536)
    listener.close()
    assert re.fullmatch(rb"<190>[A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d " + re.escape(HOSTNAME.encode())
                        + rb" local: " + re.escape(record(7)), data), data


RFC5424 = re.compile(rb"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) (\S+) (\d+) - - (.*)", re.S)


def test_syslog_tcp_rfc5424_octet_counting():
    # A record with a newline and UTF-8: octet counting frames it whole.
    odd = '{"seq":2,"ua":"a\nb é"}'.encode()

    async def main():
        server = await TcpSyslogServer().start()
        spec = parse_target(f"syslog:server=127.0.0.1:{server.port},proto=tcp,facility=auth,severity=err"
                            .replace("err", "error"), {})
        plain = parse_target(f"syslog:server=127.0.0.1:{server.port},proto=tcp,nohostname,tag=t2", {})
        rings = Rings()
        shipper = Shipper(rings, cycle(spec, plain))
        shipper.start()
        before = time.time()
        rings.write(spec.target, record(1))
        rings.write(spec.target, odd)
        await server.wait_for(2)
        rings.write(plain.target, record(3))
        await server.wait_for(3)
        after = time.time()
        await shipper.stop()
        await server.stop()
        return server, before, after

    server, before, after = run(main())
    assert server.errors == []
    first, second, third = server.messages
    m = RFC5424.fullmatch(first)
    assert m, first
    # auth (4) * 8 + error (3)
    assert (m.group(1), m.group(3), m.group(4), m.group(5), m.group(6)) == (
        b"35", HOSTNAME.encode(), b"edge", str(os.getpid()).encode(), record(1))
    stamp = time.mktime(time.strptime(m.group(2)[:19].decode(), "%Y-%m-%dT%H:%M:%S")) - time.timezone
    if time.daylight and time.localtime().tm_isdst:
        stamp += time.timezone - time.altzone
    assert int(before) - 1 <= stamp <= after + 1
    assert RFC5424.fullmatch(second).group(6) == odd
    m = RFC5424.fullmatch(third)
    assert (m.group(1), m.group(3), m.group(4), m.group(6)) == (b"190", b"-", b"t2", record(3))


def test_syslog_tcp_reconnects_after_server_restart():
    async def main():
        server = await TcpSyslogServer().start()
        spec = parse_target(f"syslog:server=127.0.0.1:{server.port},proto=tcp", {"timeout": "1s"})
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        rings.write(spec.target, record(1))
        await server.wait_for(1)
        await server.stop()                     # down: connection reset, port closed
        for n in range(2, 6):
            rings.write(spec.target, record(n))
            await asyncio.sleep(0.1)
        await server.start()                    # back on the same port
        rings.write(spec.target, record(6))
        await until(lambda: any(m.endswith(record(6)) for m in server.messages), timeout=8)
        await shipper.stop()
        await server.stop()
        return server, shipper

    server, shipper = run(main())
    assert server.connections >= 2 and server.errors == []
    # Records written while it was down were held (5 < queue) and delivered after it came back.
    seqs = {seq_of(m) for m in server.messages}
    assert {2, 3, 4, 5, 6} <= seqs
    assert sum(shipper.dropped().values()) == 0


# -- HTTP --------------------------------------------------------------------------

def test_http_batches_of_json_lines_on_one_connection():
    async def main():
        collector = await HttpCollector().start()
        spec = parse_target(f"http://127.0.0.1:{collector.port}/ingest?src=edge", {"batch": "10"})
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        for n in range(25):
            rings.write(spec.target, record(n))
        # Two full batches go at once; the last 5 records wait for flush (1 s).
        await collector.wait_until(lambda: len(collector.lines()) == 25)
        for n in range(25, 30):
            rings.write(spec.target, record(n))
        await collector.wait_until(lambda: len(collector.lines()) == 30)
        await shipper.stop()
        await collector.stop()
        return collector

    collector = run(main())
    assert [len(body.split(b"\n")) - 1 for _, _, body in collector.batches] == [10, 10, 5, 5]
    assert collector.lines() == [record(n) for n in range(30)]
    for conn, headers, body in collector.batches:
        assert (headers[":method"], headers[":target"], headers[":version"]) == ("POST", "/ingest?src=edge", "HTTP/1.1")
        assert headers["content-type"] == "application/x-ndjson"
        assert int(headers["content-length"]) == len(body) and body.endswith(b"\n")
        assert headers["host"] == f"127.0.0.1:{collector.port}"
    assert {conn for conn, _, _ in collector.batches} == {1}, "keep-alive: one connection"


def test_http_4xx_drops_the_batch_and_5xx_retries(error_log):
    async def main():
        collector = await HttpCollector().start()
        spec = parse_target(f"http://127.0.0.1:{collector.port}/", {"batch": "5", "flush": "10ms"})
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        collector.mode = 400
        for n in range(5):
            rings.write(spec.target, record(n))
        await until(lambda: shipper.dropped()[spec.target] == 5)
        collector.mode = 503
        for n in range(5, 10):
            rings.write(spec.target, record(n))
        await until(lambda: collector.requests >= 4)   # 1 refused, then 503 and two retries
        collector.mode = 200
        await collector.wait_until(lambda: len(collector.lines()) == 5)
        await shipper.stop()
        await collector.stop()
        return collector, shipper

    collector, shipper = run(main())
    assert collector.lines() == [record(n) for n in range(5, 10)]
    assert shipper.dropped()[next(iter(shipper.dropped()))] == 5
    text = error_log.read_text()
    assert re.search(r"\[error\] .*5 access log records dropped for sink http://127\.0\.0\.1:\d+/ \(HTTP 400\)", text)
    assert re.search(r"\[error\] .*access log sink http://127\.0\.0\.1:\d+/ failed: HTTP 503, retrying in", text)


def test_http_collector_closing_idle_connections_costs_no_retry(error_log):
    async def main():
        collector = await HttpCollector().start()
        collector.close_after_answer = True
        spec = parse_target(f"http://127.0.0.1:{collector.port}/", {"batch": "2", "flush": "10ms"})
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        for n in range(6):
            rings.write(spec.target, record(n))
            await collector.wait_until(lambda: len(collector.lines()) == n + 1)
        await shipper.stop()
        await collector.stop()
        return collector, shipper

    collector, shipper = run(main())
    assert collector.lines() == [record(n) for n in range(6)]
    assert collector.connections == collector.requests == 6, "a new connection for each request"
    assert "failed" not in error_log.read_text() and sum(shipper.dropped().values()) == 0


def test_http_collector_down_then_stalled_stays_bounded_and_resumes(error_log):
    """The collector is down, then stalled (accepts, never answers), while records keep
    coming: the queue never exceeds its bound, the oldest records are dropped and
    counted (and logged at most once a second), nothing is lost silently, and when the
    collector is back shipping resumes with the newest records."""
    bound, batch = 200, 50

    async def main():
        collector = await HttpCollector().start()
        spec = parse_target(f"http://127.0.0.1:{collector.port}/bulk",
                            {"queue": bound, "batch": batch, "flush": "50ms", "timeout": "500ms"})
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        sink = shipper.sinks()[spec.target]
        produced, peak = 0, 0

        async def produce(seconds):
            nonlocal produced, peak
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for _ in range(20):                       # ~2000 records/s
                    rings.write(spec.target, record(produced))
                    produced += 1
                await asyncio.sleep(0.01)
                peak = max(peak, len(sink.queue))
                assert len(sink.queue) <= bound and sink.stats()["in_flight"] <= batch

        started = time.monotonic()
        await produce(0.5)
        assert collector.lines(), "ships while the collector is up"
        await collector.stop()                      # down: connection refused
        await produce(1.5)
        collector.mode = "stall"
        await collector.start()                     # stalled: accepts, reads, never answers
        await produce(1.5)
        stalled = collector.requests
        collector.mode = 200                        # back
        await produce(1.0)
        last = produced - 1
        await collector.wait_until(lambda: any(seq_of(x) == last for x in collector.lines()), timeout=8)
        elapsed = time.monotonic() - started
        await shipper.stop()
        await collector.stop()
        return collector, shipper, spec, produced, peak, stalled, elapsed

    collector, shipper, spec, produced, peak, stalled, elapsed = run(main(), timeout=20)
    received = [seq_of(x) for x in collector.lines()]
    unique = set(received)
    dropped = shipper.dropped()[spec.target]
    assert peak == bound, "the queue filled up during the outage, and no further"
    assert stalled >= 1, "the stalled collector was reached and timed out"
    assert dropped > 0 and dropped == shipper.stats()[spec.target]["dropped_queue_full"]
    # Nothing lost silently: every record was delivered or counted as dropped.
    assert len(unique) + dropped == produced
    # Drop-oldest: the newest records survived the outage, the lost ones are older.
    missing = set(range(produced)) - unique
    assert max(missing) < produced - bound
    assert set(range(produced - bound, produced)) <= unique
    # Drops were logged, at most once a second, and the lines add up to the count.
    lines = queue_full_drops(error_log, spec.target)
    assert 1 <= len(lines) <= elapsed + 2 and sum(lines) == dropped


# -- the Shipper --------------------------------------------------------------------

def test_shipper_reload_keeps_unchanged_sinks_and_stops_removed_ones(error_log):
    async def main():
        collector = await HttpCollector().start()
        udp_old = await UdpSyslogServer().start()
        udp_new = await UdpSyslogServer().start()
        http = parse_target(f"http://127.0.0.1:{collector.port}/", {"flush": "10ms"})
        old = parse_target(f"syslog:server=127.0.0.1:{udp_old.port}", {})
        new = parse_target(f"syslog:server=127.0.0.1:{udp_new.port}", {})
        rings = Rings()
        shipper = Shipper(rings, cycle(http, old))
        shipper.start()
        kept = shipper.sinks()[http.target]
        rings.write(http.target, record(1))
        rings.write(old.target, record(2))
        await collector.wait_until(lambda: len(collector.lines()) == 1)
        await udp_old.wait_for(1)
        connections = collector.connections

        http_retuned = parse_target(http.target, {"flush": "10ms", "queue": "77"})
        await shipper.reload(cycle(http_retuned, new))
        assert shipper.sinks()[http.target] is kept and kept.queue.bound == 77
        assert old.target not in shipper.sinks()
        rings.write(http.target, record(3))
        rings.write(new.target, record(4))
        rings.write(old.target, record(5))              # an old worker's late record
        await collector.wait_until(lambda: len(collector.lines()) == 2)
        await udp_new.wait_for(1)
        await until(lambda: shipper.dropped().get(old.target) == 1)
        await shipper.stop()
        await collector.stop()
        return collector, connections, udp_old, udp_new, shipper, old

    collector, connections, udp_old, udp_new, shipper, old = run(main())
    assert collector.lines() == [record(1), record(3)]
    assert collector.connections == connections == 1, "the kept sink kept its connection"
    assert len(udp_old.datagrams) == 1 and udp_new.datagrams[0].endswith(record(4))
    assert "access log records for unknown sink " + old.target + " dropped" in error_log.read_text()


def test_shipper_stop_drains_the_rings_and_flushes():
    async def main():
        collector = await HttpCollector().start()
        spec = parse_target(f"http://127.0.0.1:{collector.port}/", {})   # flush 1s: stop must not wait for it
        rings = Rings()
        shipper = Shipper(rings, cycle(spec), max_records=100)
        shipper.start()
        for n in range(1234):       # more than one drain call at stop
            rings.write(spec.target, record(n))
        await shipper.stop()
        await collector.stop()
        return collector, shipper, rings

    collector, shipper, rings = run(main())
    assert not rings.records
    assert collector.lines() == [record(n) for n in range(1234)]
    assert sum(shipper.dropped().values()) == 0


def test_shipper_stop_is_bounded_when_the_sink_is_down():
    spec = parse_target(f"http://127.0.0.1:{closed_port()}/", {"timeout": "1s"})

    async def main():
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        for n in range(100):
            rings.write(spec.target, record(n))
        await asyncio.sleep(0.2)
        await shipper.stop()        # the test's own time limit fails it if this hangs
        return shipper

    shipper = run(main(), timeout=8)
    assert shipper.dropped() == {spec.target: 100}
    assert shipper.stats()[spec.target]["abandoned"] == 100


def test_shipper_without_log_sinks_counts_unknown_targets(error_log):
    async def main():
        rings = Rings()
        shipper = Shipper(rings, SimpleNamespace())     # a cycle from before log_sinks existed
        shipper.start()
        for _ in range(3):
            rings.write("http://gone:1/", record(0))
        await until(lambda: not rings.records)
        await shipper.stop()
        return shipper

    assert run(main()).dropped() == {"http://gone:1/": 3}
    assert error_log.read_text().count("unknown sink http://gone:1/") == 1


def test_shipper_without_sinks_idles_then_ships_after_a_reload():
    """No remote sink: the workers write no records for one, so the pump looks at the
    rings once a second, not every 20 ms (wake-ups of the control process cost CPU on
    the workers' cores). A reload that brings a sink starts shipping."""
    class CountingRings(Rings):
        calls = 0

        def drain(self, max_records=1000):
            self.calls += 1
            return super().drain(max_records)

    async def main():
        collector = await HttpCollector().start()
        rings = CountingRings()
        shipper = Shipper(rings, cycle())
        shipper.start()
        await asyncio.sleep(1.2)
        idle_calls = rings.calls
        spec = parse_target(f"http://127.0.0.1:{collector.port}/", {"flush": "10ms"})
        await shipper.reload(cycle(spec))
        rings.write(spec.target, record(1))
        await collector.wait_until(lambda: len(collector.lines()) == 1)
        await shipper.stop()
        await collector.stop()
        return idle_calls, collector

    idle_calls, collector = run(main())
    assert idle_calls <= 3, f"{idle_calls} drains in 1.2 s without a sink (a 20 ms pace makes ~60)"
    assert collector.lines() == [record(1)]


# -- Redis Streams -----------------------------------------------------------------

needs_redis = pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_redis():
    """A redis-server of this test alone, which it may kill."""
    server = RedisServer().start()
    yield server
    server.kill()


def xrange_lines(port, stream):
    import redis
    with redis.Redis(port=port) as client:
        return [fields[b"line"] for _, fields in client.xrange(stream)]


@needs_redis
def test_redis_stream_xadd_read_back(redis_server):
    spec = parse_target(f"{redis_server.url}/edge:access", {"batch": "50"})
    small = parse_target(f"{redis_server.url}/edge:small?maxlen=10", {})

    async def main():
        rings = Rings()
        shipper = Shipper(rings, cycle(spec, small))
        shipper.start()
        for n in range(120):
            rings.write(spec.target, record(n))
        for n in range(1000):
            rings.write(small.target, record(n))
        await until(lambda: shipper.stats()[spec.target]["sent"] == 120
                    and shipper.stats()[small.target]["sent"] == 1000)
        await shipper.stop()

    run(main())
    assert xrange_lines(redis_server.port, "edge:access") == [record(n) for n in range(120)]
    # MAXLEN ~ 10: trimmed in whole nodes, so at least 10 entries are kept, the newest.
    kept = xrange_lines(redis_server.port, "edge:small")
    assert 10 <= len(kept) < 1000 and kept[-1] == record(999)


@needs_redis
def test_redis_killed_then_restarted_resumes(own_redis):
    spec = parse_target(f"{own_redis.url}/s", {"timeout": "1s", "queue": "100", "batch": "10"})

    async def main():
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        rings.write(spec.target, record(0))
        await until(lambda: shipper.stats()[spec.target]["sent"] == 1)
        await asyncio.to_thread(own_redis.kill)
        for n in range(1, 301):                 # 300 records for a queue of 100
            rings.write(spec.target, record(n))
            if n % 50 == 0:
                await asyncio.sleep(0.1)
        await asyncio.to_thread(own_redis.start)  # empty again: no persistence
        rings.write(spec.target, record(301))
        await until(lambda: record(301) in xrange_lines(own_redis.port, "s"), timeout=8, step=0.1)
        await shipper.stop()
        return shipper

    shipper = run(main(), timeout=20)
    lines = xrange_lines(own_redis.port, "s")
    dropped = shipper.dropped()[spec.target]
    # 300 records met a queue of 100 and one batch of 10 in hand.
    assert dropped >= 300 - 100 - 10 and lines[-1] == record(301)
    # What reached the new server plus what was dropped is everything sent after the kill
    # (a batch in hand when redis died may be resent, hence the set).
    assert len({seq_of(x) for x in lines}) + dropped == 301


# -- Kafka (needs a broker) --------------------------------------------------------

KAFKA = os.environ.get("EDGE_TEST_KAFKA")


@pytest.mark.skipif(not KAFKA, reason="no Kafka broker: set EDGE_TEST_KAFKA=host:port to run")
def test_kafka_topic_read_back():
    aiokafka = pytest.importorskip("aiokafka")
    topic = f"edge-test-{os.getpid()}-{int(time.time())}"
    spec = parse_target(f"kafka://{KAFKA}/{topic}", {})

    async def main():
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        for n in range(20):
            rings.write(spec.target, record(n))
        await until(lambda: shipper.stats()[spec.target]["sent"] == 20, timeout=10)
        await shipper.stop()
        consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest")
        await consumer.start()
        try:
            got = []
            async with asyncio.timeout(10):
                while len(got) < 20:
                    got.append((await consumer.getone()).value)
        finally:
            await consumer.stop()
        return got

    assert sorted(run(main(), timeout=20), key=seq_of) == [record(n) for n in range(20)]


def test_kafka_unreachable_broker_retries_and_stop_is_bounded(error_log):
    pytest.importorskip("aiokafka")
    spec = parse_target(f"kafka://127.0.0.1:{closed_port()}/logs", {"timeout": "1s", "queue": "10"})

    async def main():
        rings = Rings()
        shipper = Shipper(rings, cycle(spec))
        shipper.start()
        for n in range(30):
            rings.write(spec.target, record(n))
        await until(lambda: not rings.records)
        await asyncio.sleep(0.5)
        await shipper.stop()
        return shipper

    shipper = run(main(), timeout=10)
    # 20 pushed out of the queue of 10, the other 10 still held when stop ran out of time.
    assert shipper.dropped() == {spec.target: 30}
    assert shipper.stats()[spec.target]["dropped_queue_full"] == 20
    assert re.search(r"access log sink kafka://127\.0\.0\.1:\d+/logs failed: .*retrying in", error_log.read_text())
