"""Log shipping end to end (issue 7, item 6): real edge processes (2 workers and the
control process) write access-log records into the shared-memory rings, the control
process ships them, and real servers receive them: the UDP and TCP syslog servers and
the HTTP collector of tests/support/collectors.py, and a real redis-server.

The collectors are asyncio servers; here they run on an event loop in a thread of its
own (`Collectors`), since the test's thread drives edge with blocking clients.
tests/test_log_sinks.py tests each sink in detail against a stand-in for the rings.
"""

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import threading
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import alive, get
from support.collectors import HttpCollector, TcpSyslogServer, UdpSyslogServer
from support.edge import control_of
from support.redis import RedisServer, redis_server_path
from test_reload import rewrite, run_edge, wait_generation

pytestmark = pytest.mark.edge_only

HOSTNAME = socket.gethostname().lower()

# Predictable records: every field is known to the test before the request is made.
PLAIN = "log_format plain '$request_method $request_uri $status $body_bytes_sent \"$http_user_agent\" $request_id';"


# --------------------------------------------------------------------------- helpers


class Collectors:
    """An event loop in a thread, where the collectors live. `run(coro)` runs a
    coroutine there and returns its result; `read(fn)` calls fn there (so the test reads
    a collector's lists between two of its callbacks, never during one)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="collectors", daemon=True)
        self.thread.start()
        self.servers = []

    def run(self, coro, timeout=10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def read(self, fn):
        async def call():
            return fn()
        return self.run(call())

    def start(self, cls):
        async def make():
            return await cls().start()
        server = self.run(make())
        self.servers.append(server)
        return server

    def close(self):
        async def shutdown():
            for server in self.servers:
                try:
                    result = server.stop()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    pass
            # Handlers still parked (a stalled HTTP answer) end with the loop, quietly.
            asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        try:
            self.run(shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def collectors():
    c = Collectors()
    yield c
    c.close()


def wait_for(predicate, timeout, what, e=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            "\n" + e.report() if e is not None else "")
        time.sleep(0.05)


def rid():
    return uuid.uuid4().hex


def ask(port, target, request_id=None, agent="shipper-test/1"):
    headers = [("User-Agent", agent)]
    if request_id:
        headers.append(("X-Request-Id", request_id))
    r = get(port, target, headers=headers)
    assert r.status == 200, (target, r.status, r.body)
    return r


def http_records(collectors, collector):
    """Every JSON record the HTTP collector answered 2xx for, parsed."""
    return [json.loads(line) for line in collectors.read(collector.lines)]


def dropped_metric(admin_port, target):
    """edge_log_records_dropped_total{sink=target} from /metrics (None: no sample)."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, body
    finally:
        conn.close()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "edge_log_records_dropped_total" and s.labels == {"sink": target}:
                return s.value
    return None


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def one_control(e):
    return wait_for(lambda: (lambda c: c[0] if len(c) == 1 else None)(control_of(e.pid)),
                    10, "one control process", e)


def control_ready(e, pid):
    """The control process `pid` has started its services (the shipper among them)."""
    return wait_for(lambda: f"control process {pid} runs generation" in e.error_log, 10,
                    f"control process {pid} to start its services", e)


def config_test(tmp_path, body):
    conf = tmp_path / "edge.conf"
    conf.write_text("http {\n    server {\n        listen 127.0.0.1:1;\n        " + body
                    + "\n    }\n}\n")
    return conf, run_edge("-t", "-c", conf)


class Traffic:
    """Client threads on keep-alive connections, each request to its own URI
    (/load/THREAD/SEQ), recording when it started, how long it took and whether it
    got its 200. Bounded by `max_seconds` whatever happens to the test."""

    def __init__(self, port, threads=3, pause=0.002, agent="traffic/1", max_seconds=40.0):
        self.port = port
        self.headers = {"User-Agent": agent}
        self.pause = pause
        self.deadline = time.monotonic() + max_seconds
        self.samples = []        # (start, seconds, uri) of each request that got its 200
        self.failures = []       # (uri, error)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(n,), daemon=True)
                         for n in range(threads)]

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(15)
        assert not any(t.is_alive() for t in self._threads), "a client thread hung"

    def count(self):
        with self._lock:
            return len(self.samples) + len(self.failures)

    def latencies(self, t0, t1):
        with self._lock:
            return sorted(d for start, d, _ in self.samples if t0 <= start < t1)

    def uris(self, t0, t1):
        """The URIs of the requests started in [t0, t1)."""
        with self._lock:
            return {uri for start, _, uri in self.samples if t0 <= start < t1}

    def _loop(self, n):
        conn = None
        seq = 0
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            uri = f"/load/{n}/{seq}"
            seq += 1
            start = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", uri, headers=self.headers)
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or body != b"ok":
                    raise AssertionError(f"{r.status} {body[:80]!r}")
                with self._lock:
                    self.samples.append((start, time.monotonic() - start, uri))
            except Exception as err:  # every error is a failed request
                with self._lock:
                    self.failures.append((uri, repr(err)))
                if conn is not None:
                    conn.close()
                conn = None
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()


def p99(values):
    assert values, "no request in that window"
    return values[min(len(values) - 1, int(len(values) * 0.99))]


# --------------------------------------------------------------------------- syslog


RFC3164 = re.compile(rb"<(\d+)>([A-Z][a-z]{2}) ([ 1-3]\d) (\d\d:\d\d:\d\d) (\S+) (\w+): (.*)", re.S)
RFC5424 = re.compile(rb"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) (\S+) (\d+) - - (.*)", re.S)


def test_syslog_udp_and_tcp_carry_the_exact_records(collectors, edge):
    udp = collectors.start(UdpSyslogServer)
    tcp = collectors.start(TcpSyslogServer)
    e = edge("""
        worker_processes 2;
        http {
            @PLAIN@
            request_id_header X-Request-Id;
            server {
                listen 127.0.0.1:@PORT@;
                access_log syslog:server=127.0.0.1:@UDP@,facility=local0,severity=notice,tag=gw plain;
                access_log syslog:server=127.0.0.1:@TCP@,proto=tcp,tag=plain plain;
                access_log syslog:server=127.0.0.1:@TCP@,proto=tcp,tag=js,nohostname,facility=daemon json;
                location /s/ { return 200 "hello"; }
            }
        }""", PLAIN=PLAIN, UDP=udp.port, TCP=tcp.port)
    workers = e.wait_workers(2)
    ctl = one_control(e)
    before = time.time()
    sent = {f"/s/{n}?q={n}": rid() for n in range(4)}
    for uri, request_id in sent.items():
        ask(e.port, uri, request_id)
    expected = {f'GET {uri} 200 5 "shipper-test/1" {request_id}'.encode()
                for uri, request_id in sent.items()}

    datagrams = collectors.run(udp.wait_for(4))
    messages = collectors.run(tcp.wait_for(8))
    after = time.time()
    time.sleep(0.3)                      # anything extra (a duplicate) would show up now
    datagrams = collectors.read(lambda: list(udp.datagrams))
    messages = collectors.read(lambda: list(tcp.messages))
    assert collectors.read(lambda: list(tcp.errors)) == []
    assert len(datagrams) == 4 and len(messages) == 8, (datagrams, messages)

    # UDP: nginx's RFC 3164 line, local0.notice = 16 * 8 + 5
    stamps = {time.strftime("%b %e %H:%M:%S", time.localtime(t)).encode()
              for t in range(int(before), int(after) + 2)}
    got = set()
    for d in datagrams:
        m = RFC3164.fullmatch(d)
        assert m, d
        assert (m.group(1), m.group(5), m.group(6)) == (b"133", HOSTNAME.encode(), b"gw"), d
        assert b"%s %s %s" % (m.group(2), m.group(3), m.group(4)) in stamps, d
        got.add(m.group(7))
    assert got == expected

    # TCP: RFC 5424, octet-counted; PROCID is the control process's pid
    plain, js = set(), []
    for message in messages:
        m = RFC5424.fullmatch(message)
        assert m, message
        assert int(m.group(5)) == ctl, message
        if m.group(4) == b"plain":
            assert (m.group(1), m.group(3)) == (b"190", HOSTNAME.encode()), message
            plain.add(m.group(6))
        else:
            assert (m.group(1), m.group(3), m.group(4)) == (b"30", b"-", b"js"), message  # daemon.info
            js.append(json.loads(m.group(6)))
    assert plain == expected
    assert {r["request_uri"]: r["request_id"] for r in js} == sent
    for r in js:
        assert (r["status"], r["body_bytes_sent"], r["request_method"], r["uri"]) == (
            200, 5, "GET", r["request_uri"].split("?")[0])
        assert r["http_user_agent"] == "shipper-test/1" and r["pid"] in workers


# --------------------------------------------------------------------------- redis


def test_redis_stream_has_one_entry_per_request(edge):
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed")
    import redis
    server = RedisServer().start()
    try:
        e = edge("""
            worker_processes 2;
            http {
                server {
                    listen 127.0.0.1:@PORT@;
                    access_log redis://127.0.0.1:@REDIS@/edge:access?maxlen=1000 json;
                    location / { return 200 "ok"; }
                }
            }""", REDIS=server.port)
        client = redis.Redis(port=server.port, socket_timeout=5)
        uris = [f"/r/{n}" for n in range(20)]
        for uri in uris:
            ask(e.port, uri)
        wait_for(lambda: client.xlen("edge:access") >= 20, 10, "20 stream entries", e)
        time.sleep(0.3)
        entries = client.xrange("edge:access")
        assert len(entries) == 20, entries
        assert all(set(fields) == {b"line"} for _, fields in entries)
        records = [json.loads(fields[b"line"]) for _, fields in entries]
        assert sorted(r["request_uri"] for r in records) == sorted(uris)
        assert {r["status"] for r in records} == {200}
        assert len({r["request_id"] for r in records}) == 20
    finally:
        server.stop()


# --------------------------------------------------------------------------- http


def test_http_collector_gets_ndjson_batches_and_if_applies(collectors, edge):
    collector = collectors.start(HttpCollector)
    e = edge("""
        worker_processes 2;
        http {
            server {
                listen 127.0.0.1:@PORT@;
                access_log http://127.0.0.1:@HTTP@/ingest?src=edge json batch=10 flush=200ms if=$arg_ship;
                location / { return 200 "ok"; }
            }
        }""", HTTP=collector.port)
    # Not shipped (if= is empty or "0"), made first: had they been queued they would
    # precede the shipped ones, which are all waited for below.
    for n in range(5):
        ask(e.port, f"/quiet/{n}?ship=0")
        ask(e.port, f"/quiet/{n}")
    shipped = [f"/loud/{n}?ship=1" for n in range(25)]
    for uri in shipped:
        ask(e.port, uri)
    wait_for(lambda: len(collectors.read(collector.lines)) >= 25, 10, "25 records", e)
    time.sleep(0.4)   # > flush: a stray record would have been sent by now

    batches = collectors.read(lambda: list(collector.batches))
    records = http_records(collectors, collector)
    assert sorted(r["request_uri"] for r in records) == sorted(shipped)
    assert len(batches) >= 3            # 25 records, at most 10 per batch
    for _, headers, body in batches:
        assert (headers[":method"], headers[":target"], headers[":version"]) == (
            "POST", "/ingest?src=edge", "HTTP/1.1")
        assert headers["content-type"] == "application/x-ndjson"
        assert int(headers["content-length"]) == len(body)
        assert body.endswith(b"\n") and b"\n\n" not in body
        assert 1 <= len(body.split(b"\n")[:-1]) <= 10
    assert collectors.read(lambda: collector.requests) == len(batches)


# --------------------------------------------------------------------------- outage


@pytest.mark.timeout(75)
def test_http_sink_down_then_stalled_under_load(collectors, edge):
    collector = collectors.start(HttpCollector)
    e = edge("""
        worker_processes 2;
        http {
            keepalive_requests 1000000;
            access_log_ring_size 64k;
            admin_listen 127.0.0.1:@PORT2@;
            server {
                listen 127.0.0.1:@PORT@;
                access_log http://127.0.0.1:@HTTP@/ingest json queue=300 batch=100 flush=50ms timeout=1s;
                location / { return 200 "ok"; }
            }
        }""", HTTP=collector.port)
    target = f"http://127.0.0.1:{collector.port}/ingest"
    admin_port = e.ports["PORT2"]
    workers = e.wait_workers(2)
    ctl = one_control(e)
    control_ready(e, ctl)
    assert dropped_metric(admin_port, target) == 0

    rss = []
    # Big records (a 4 KB User-Agent), so that a queue that did not hold its bound would
    # grow the control process by far more than the limit asserted below.
    traffic = Traffic(e.port, agent="a" * 4000).start()
    try:
        time.sleep(1.5)                                     # the collector is up
        t_down = time.monotonic()
        rss.append(rss_bytes(ctl))
        collectors.run(collector.stop())                    # down: connection refused
        phase_end = t_down + 5
        while time.monotonic() < phase_end:
            time.sleep(0.5)
            rss.append(rss_bytes(ctl))
        collector.mode = "stall"                            # accepts, reads, never answers
        collectors.run(collector.start())
        phase_end = time.monotonic() + 5
        while time.monotonic() < phase_end:
            time.sleep(0.5)
            rss.append(rss_bytes(ctl))
        t_back = time.monotonic()
        stalled = collectors.read(lambda: collector.requests)
        collectors.run(collector.stop())                    # drops the stalled connections
        collector.mode = 200
        collectors.run(collector.start())                   # back
        time.sleep(1.0)
    finally:
        traffic.stop()
    rss.append(rss_bytes(ctl))

    # Serving did not notice.
    assert traffic.failures == [], traffic.failures[:10]
    assert sorted(e.worker_pids()) == sorted(workers) and control_of(e.pid) == [ctl]
    base = traffic.latencies(0, t_down)
    during = traffic.latencies(t_down, t_back)
    assert len(base) > 50 and len(during) > 200, (len(base), len(during))
    assert p99(during) <= max(10 * p99(base), p99(base) + 0.05), (p99(base), p99(during))
    # The stalled collector was sent batches (which it never answered).
    assert stalled >= 1
    # The control process's memory stayed bounded (queue=300 records of ~5 KB).
    assert max(rss) - rss[0] < 20 * 2**20, [r // 2**20 for r in rss]

    # Shipping resumed: records of requests made now arrive (the sink's back-off is at
    # most 5 s).
    after = {f"/after/{n}": rid() for n in range(5)}
    for uri in after:
        ask(e.port, uri, after[uri])
    wait_for(lambda: {r["request_uri"] for r in http_records(collectors, collector)} >= set(after),
             12, "the records of the requests made after the outage", e)

    # Every request is accounted for: delivered, or counted as dropped.
    total = traffic.count() + len(after)

    def settled():
        received = {r["request_id"] for r in http_records(collectors, collector)}
        dropped = dropped_metric(admin_port, target)
        return (len(received), dropped) if len(received) + dropped >= total else None

    received, dropped = wait_for(settled, 10, "received + dropped to account for every request", e)
    assert dropped > 0
    assert received + dropped == total, (received, dropped, total)

    # The error log says so, once a second at most per reason, and the counts it gives
    # add up to the metric.
    pattern = re.compile(r"^(\S+ \S+) \[warn\] \d+#0: (\d+) access log records dropped for sink "
                         + re.escape(target) + r" \((queue full|ring full)\)$", re.M)

    def reported():
        lines = pattern.findall(e.error_log)
        return lines if sum(int(n) for _, n, _ in lines) >= dropped else None

    lines = wait_for(reported, 5, "the error log to report every drop", e)
    assert sum(int(n) for _, n, _ in lines) == dropped, (lines, dropped)
    seconds = [(when, why) for when, _, why in lines]
    assert len(seconds) == len(set(seconds)), lines
    assert "is shipping again" in e.error_log


# --------------------------------------------------------------------------- control process killed


@pytest.mark.timeout(60)
def test_control_process_killed_while_shipping(collectors, edge):
    collector = collectors.start(HttpCollector)
    e = edge("""
        worker_processes 2;
        http {
            keepalive_requests 1000000;
            server {
                listen 127.0.0.1:@PORT@;
                access_log http://127.0.0.1:@HTTP@/ingest json flush=50ms;
                location / { return 200 "ok"; }
            }
        }""", HTTP=collector.port)
    workers = e.wait_workers(2)
    ctl = one_control(e)
    control_ready(e, ctl)
    traffic = Traffic(e.port, threads=2, pause=0.005).start()
    try:
        wait_for(lambda: len(collectors.read(collector.lines)) >= 50, 10, "records flowing", e)
        os.kill(ctl, signal.SIGKILL)
        wait_for(lambda: not alive(ctl), 5, "the control process to die", e)
        # Nobody drains the rings now (or the new process does): these records wait in
        # the ring, not lost.
        meanwhile = {f"/meanwhile/{n}": rid() for n in range(5)}
        for uri in meanwhile:
            ask(e.port, uri, meanwhile[uri])
        new = wait_for(lambda: [c for c in control_of(e.pid) if c != ctl], 10,
                       "a new control process", e)[0]
        control_ready(e, new)
        after = {f"/after/{n}": rid() for n in range(5)}
        for uri in after:
            ask(e.port, uri, after[uri])
        time.sleep(0.5)
    finally:
        traffic.stop()
    assert traffic.failures == [], traffic.failures[:10]
    assert sorted(e.worker_pids()) == sorted(workers), "the workers never noticed"
    assert f"control process {ctl} exited on signal 9 (SIGKILL)" in e.error_log
    wait_for(lambda: {r["request_uri"] for r in http_records(collectors, collector)}
             >= set(meanwhile) | set(after), 10, "the records made while and after it was down", e)


# --------------------------------------------------------------------------- reload


@pytest.mark.timeout(60)
def test_reload_that_changes_the_target_ships_to_the_new_collector(collectors, edge):
    first = collectors.start(HttpCollector)
    second = collectors.start(HttpCollector)
    conf = """
        worker_processes 2;
        http {
            keepalive_requests 1000000;
            server {
                listen 127.0.0.1:@PORT@;
                access_log http://127.0.0.1:@HTTP@/ingest json flush=50ms;
                location / { return 200 "ok"; }
            }
        }"""
    e = edge(conf, HTTP=first.port)
    control_ready(e, one_control(e))
    # Traffic goes on across the reload: the workers switch first, the control process
    # hears of the new config from the master a moment later, and what the workers
    # write meanwhile must not be lost.
    traffic = Traffic(e.port, threads=2, pause=0.002).start()
    try:
        wait_for(lambda: len(collectors.read(first.lines)) >= 20, 10, "records at the first collector", e)
        t_hup = time.monotonic()
        rewrite(e, e.conf_text.replace(f":{first.port}/", f":{second.port}/"))
        e.send_signal(signal.SIGHUP)
        wait_generation(e, 2)
        t_new = time.monotonic()
        wait_for(lambda: len(collectors.read(second.lines)) >= 20, 10, "records at the second collector", e)
    finally:
        traffic.stop()
    after = [f"/after/{n}" for n in range(5)]
    for uri in after:
        ask(e.port, uri)
    total = traffic.count() + len(after)
    assert traffic.failures == [], traffic.failures[:10]

    def everything():
        a = [r["request_uri"] for r in http_records(collectors, first)]
        b = [r["request_uri"] for r in http_records(collectors, second)]
        return (a, b) if len(set(a) | set(b)) >= total else None

    a, b = wait_for(everything, 10, "a record of every request at one collector or the other", e)
    assert len(a) + len(b) == len(set(a) | set(b)) == total, "each record once"
    assert set(after) <= set(b)
    # Requests started before the HUP went to the first collector, those started once
    # the new generation was in force to the second.
    assert traffic.uris(0, t_hup) <= set(a)
    assert traffic.uris(t_new, float("inf")) <= set(b)
    assert "unknown sink" not in e.error_log, e.error_log[-2000:]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("directive, message", [
    ("access_log syslog:server=;", 'invalid syslog server ""'),
    ("access_log syslog:server=127.0.0.1,proto=sctp;", 'unknown syslog proto "sctp"'),
    ("access_log https://collector.example/ingest json;", 'https is not supported'),
    ("access_log http://127.0.0.1:0/ingest json;", 'invalid port'),
    ("access_log redis://127.0.0.1:6379 json;", 'no stream in redis sink'),
    ("access_log http://127.0.0.1:9/ingest json queue=0;", 'invalid queue "0"'),
    ("access_log http://127.0.0.1:9/ingest json buffer=64k;", '"buffer" applies to files'),
    ("access_log http://127.0.0.1:9/ingest json flush=soon;", 'invalid time "soon"'),
    ("access_log /tmp/edge-shipping-test.log combined queue=5;", '"queue" applies to remote log targets'),
    ("access_log udp://127.0.0.1:514 json;", 'unknown access log target scheme "udp://"'),
    ("access_log HTTP://127.0.0.1:9/ingest json;", 'unknown access log target scheme "HTTP://"'),
])
def test_bad_remote_targets_fail_edge_t_with_file_and_line(tmp_path, directive, message):
    conf, r = config_test(tmp_path, directive)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert f"{conf}:4" in r.stderr, r.stderr
    assert not (tmp_path / "udp:").exists() and not (tmp_path / "HTTP:").exists()


def test_every_documented_sink_parameter_passes_edge_t(tmp_path):
    # The example of docs/logging-sinks.md, less kafka (an optional extra).
    conf, r = config_test(tmp_path, """
        access_log syslog:server=10.0.0.9,facility=local7,tag=edge combined;
        access_log syslog:server=10.0.0.9:6514,proto=tcp json;
        access_log http://collector.internal:9000/ingest json batch=500 flush=1s queue=20000 timeout=2s;
        access_log redis://127.0.0.1:6379/edge:access?maxlen=1000000 json if=$arg_log;""")
    assert r.returncode == 0, r.stderr
