"""limit_req / limit_count / limit_conn through real edge processes (node scope):
admitted counts under concurrency, delays at the configured rate, concurrency slots
released however a request ends, zones across reloads, a full zone, statuses, dry run,
headers, logs and metrics, config errors."""

import glob
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from edge._core.reactor import LimitZone
from support.client import Conn, get
from support.waiting import wait_for

pytestmark = pytest.mark.edge_only


def hammer(port, path, seconds, clients=16, host="localhost"):
    """Keep-alive clients sending `path` for `seconds`; returns {status: count}."""
    counts = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run():
        local = {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            try:
                conn.request("GET", path, headers={"Host": host})
                r = conn.getresponse()
                r.read()
                local[r.status] = local.get(r.status, 0) + 1
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()
        with lock:
            for k, v in local.items():
                counts[k] = counts.get(k, 0) + v

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def zone_file(e, name):
    return str(e.pid_path) + ".state.limit." + name


@pytest.mark.timeout(60)
def test_node_scope_admits_rate_times_duration_plus_burst(edge):
    e = edge("""
        worker_processes 2;
        http {
            limit_req_zone $server_name zone=one:1m rate=50r/s;
            server {
                listen 127.0.0.1:@PORT@;
                server_name rated;
                location / { limit_req zone=one burst=10 nodelay; return 200 "ok"; }
            }
        }""")
    assert len(e.worker_pids()) == 2
    counts = hammer(e.port, "/", 4.0, clients=16)
    admitted = counts.get(200, 0)
    expected = 50 * 4 + 10
    print(f"admitted {admitted}, expected {expected}, rejected {counts.get(429, 0)}")
    assert counts.get(429, 0) > 1000          # the clients did offer far more
    assert abs(admitted - expected) <= 0.02 * expected + 1, (admitted, expected)
    assert set(counts) <= {200, 429}


@pytest.mark.timeout(30)
def test_delayed_requests_leave_at_the_rate(edge):
    e = edge("""
        http {
            limit_req_zone $remote_addr zone=slow:1m rate=10r/s;
            server {
                listen 127.0.0.1:@PORT@;
                location / { limit_req zone=slow burst=8; return 200 "ok"; }
            }
        }""")
    done = []
    start = time.monotonic()

    def one():
        r = get(e.port, "/")
        done.append((time.monotonic() - start, r.status))

    threads = [threading.Thread(target=one) for _ in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = sorted(t for t, status in done if status == 200)
    assert len(times) == 9
    # 1 at once, then one every 100 ms: the last leaves about 0.8 s after the first
    span = times[-1] - times[0]
    assert 0.6 <= span <= 2.0, times
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(1 for g in gaps if g >= 0.05) >= 6, gaps     # spread out, not at once
    assert "delaying requests" in e.error_log


def test_status_headers_retry_after_and_log(edge):
    e = edge("""
        http {
            limit_count_zone $arg_user zone=quota:64k count=2 window=60s;
            limit_req_zone $arg_user zone=rate:64k rate=1r/s;
            server {
                listen 127.0.0.1:@PORT@;
                location /legacy { limit_count zone=quota; return 200 "ok"; }
                location /ietf { limit_headers ietf; limit_count zone=quota; return 200 "ok"; }
                location /off { limit_headers off; limit_req zone=rate; limit_req_status 503;
                                limit_req_log_level warn; return 200 "ok"; }
                location /nokey { limit_count zone=quota; return 200 "free"; }
            }
        }""")
    r = get(e.port, "/legacy?user=a")
    assert r.status == 200
    assert (r.header("X-RateLimit-Limit"), r.header("X-RateLimit-Remaining")) == ("2", "1")
    assert 0 < int(r.header("X-RateLimit-Reset")) <= 60 and r.header("Retry-After") is None
    r = get(e.port, "/ietf?user=a")
    assert r.status == 200
    assert r.header("RateLimit-Policy") == '"quota";q=2;w=60'
    assert re.fullmatch(r'"quota";r=0;t=\d+', r.header("RateLimit"))
    assert r.header("X-RateLimit-Limit") is None
    r = get(e.port, "/legacy?user=a")
    assert r.status == 429
    assert r.header("X-RateLimit-Remaining") == "0"
    assert 0 < int(r.header("Retry-After")) <= 60
    # an empty key is not limited
    assert all(get(e.port, "/nokey").status == 200 for _ in range(5))
    # another status, no rate headers, but Retry-After still
    assert get(e.port, "/off?user=b").status == 200
    r = get(e.port, "/off?user=b")
    assert r.status == 503 and r.header("X-RateLimit-Limit") is None
    assert r.header("Retry-After") == "1"
    log = e.error_log
    assert re.search(r'\[error\] .*limiting requests by count zone "quota", client: 127\.0\.0\.1', log)
    assert re.search(r'\[warn\] .*limiting requests, excess: \d\.\d{3} by zone "rate"', log)


def test_dry_run_serves_counts_and_logs(edge):
    e = edge("""
        http {
            admin_listen 127.0.0.1:@PORT2@;
            limit_count_zone $remote_addr zone=q:64k count=2 window=60s;
            server {
                listen 127.0.0.1:@PORT@;
                location / { limit_count zone=q; limit_count_dry_run on; return 200 "ok"; }
            }
        }""")
    assert [get(e.port, "/").status for _ in range(5)] == [200] * 5
    assert "limiting (dry run) requests by count zone" in e.error_log
    text = scrape(e.ports["PORT2"])
    assert 'edge_limit_requests_total{zone="q",decision="passed"} 2' in text
    assert 'edge_limit_requests_total{zone="q",decision="dry_run"} 3' in text


def scrape(port):
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.timeout(60)
def test_conn_slot_released_however_the_request_ends(edge, upstream, blackhole):
    from websockets.sync.client import connect
    from websockets.sync.server import serve

    server = serve(lambda ws: [ws.send(m) for m in ws], "127.0.0.1", 0, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    e = edge("""
        http {
            limit_conn_zone $server_name zone=one:64k;
            limit_conn one 1;
            server {
                listen 127.0.0.1:@PORT@;
                server_name conn;
                location /up/ { proxy_pass http://@UP@/; }
                location /dead/ { proxy_pass http://127.0.0.1:1/; }
                location /hole/ { proxy_read_timeout 1s; proxy_pass http://@HOLE@/; }
                location /ws { proxy_pass http://@WS@; }
            }
        }""", UP=upstream, HOLE=blackhole, WS=f"127.0.0.1:{server.socket.getsockname()[1]}")
    try:
        def free():
            return get(e.port, "/up/x").status == 200

        # one at a time: a second request while the first is in flight is refused
        s = socket.create_connection(("127.0.0.1", e.port))
        s.sendall(b"GET /up/slow/1 HTTP/1.1\r\nHost: conn\r\n\r\n")
        time.sleep(0.3)
        assert get(e.port, "/up/x").status == 429
        s.recv(65536)
        s.close()
        time.sleep(0.1)
        assert free()
        # client abort while the upstream works
        s = socket.create_connection(("127.0.0.1", e.port))
        s.sendall(b"GET /up/slow/1 HTTP/1.1\r\nHost: conn\r\n\r\n")
        time.sleep(0.2)
        s.close()
        time.sleep(0.2)
        assert free()
        # upstream error and upstream timeout
        assert get(e.port, "/dead/").status == 502 and free()
        assert get(e.port, "/hole/").status == 504 and free()
        # a WebSocket tunnel holds the slot until it closes
        with connect(f"ws://127.0.0.1:{e.port}/ws", compression=None) as ws:
            ws.send("hi")
            assert ws.recv() == "hi"
            assert get(e.port, "/up/x").status == 429
        time.sleep(0.2)
        assert free()
        z = LimitZone.open(zone_file(e, "one"))
        # the slot of free()'s own request is given back when the worker finishes the
        # request, which can be just after the client has read the response
        wait_for(lambda: z.peek(b"conn")["a"] == 0, 5, "the last request's slot to be freed")
        z.close()
    finally:
        server.shutdown()


@pytest.mark.timeout(60)
def test_reload_keeps_zones_unless_resized(edge):
    template = """
        http {
            limit_count_zone $remote_addr zone=q:@SIZE@ count=3 window=60s;
            server {
                listen 127.0.0.1:@PORT@;
                location / { limit_count zone=q; return 200 "@TAG@"; }
            }
        }"""
    e = edge(template, SIZE="64k", TAG="one")
    assert [get(e.port, "/").status for _ in range(3)] == [200] * 3
    pids = e.worker_pids()

    def reload(size, tag, generation):
        e.conf_path.write_text(re.sub(r"zone=q:\S+", f"zone=q:{size}", e.conf_text)
                               .replace('"one"', f'"{tag}"').replace('"two"', f'"{tag}"'))
        e.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while f"generation {generation} is in force" not in e.error_log:
            assert time.monotonic() < deadline
            time.sleep(0.05)

    reload("64k", "two", 2)                 # same name and size: the counts stay
    r = get(e.port, "/")
    assert r.status == 429 and e.worker_pids() == pids
    reload("128k", "three", 3)              # resized: a new, empty zone
    r = get(e.port, "/")
    assert r.status == 200 and r.body == b"three"


@pytest.mark.timeout(60)
def test_full_zone_evicts_and_the_worker_goes_on(edge):
    e = edge("""
        http {
            limit_req_zone $arg_k zone=tiny:32k rate=1r/m;
            server {
                listen 127.0.0.1:@PORT@;
                location / { limit_req zone=tiny; return 200 "ok"; }
            }
        }""")
    pids = e.worker_pids()
    with Conn(e.port) as c:
        statuses = [c.request("GET", f"/?k=key{i}").status for i in range(900)]
    assert statuses == [200] * 900           # every new key got an entry, by eviction
    z = LimitZone.open(zone_file(e, "tiny"))
    st = z.stats()
    z.close()
    assert st["evicted"] >= 900 - st["capacity"] and st["entries"] <= st["capacity"]
    assert get(e.port, "/?k=key899").status == 429      # the newest keys were kept
    assert e.worker_pids() == pids


@pytest.mark.parametrize("directive, message", [
    ("limit_req zone=nope;", 'zone "nope" is unknown'),
    ("limit_count zone=rate;", 'zone "rate" is a limit_req_zone'),
    ("limit_req zone=rate burst=x;", 'invalid parameter "burst=x"'),
    ("limit_req zone=rate nodelay delay=2;", 'mutually exclusive'),
    ("limit_req_status 200;", 'value must be between 400 and 599'),
    ("limit_conn conn 0;", 'invalid number of connections'),
])
def test_config_errors_name_file_and_line(tmp_path, directive, message):
    conf = tmp_path / "edge.conf"
    conf.write_text("http {\n"
                    "    limit_req_zone $remote_addr zone=rate:64k rate=5r/s;\n"
                    "    limit_conn_zone $remote_addr zone=conn:64k;\n"
                    "    server { listen 127.0.0.1:1;\n"
                    "        location / { " + directive + " }\n"
                    "    }\n}\n")
    r = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], capture_output=True,
                       text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 1
    assert message in r.stderr and f"{conf}:5" in r.stderr, r.stderr


@pytest.mark.parametrize("zone_line, message", [
    ("limit_req_zone $remote_addr zone=a:64k rate=0r/s;", 'invalid rate "0r/s"'),
    ("limit_req_zone $remote_addr zone=a:1k rate=1r/s;", 'zone "a" is too small'),
    ("limit_count_zone $remote_addr zone=a:64k count=5;", '"window" must be set'),
    ("limit_count_zone $remote_addr zone=a:64k count=5 window=1m type=odd;", 'invalid type "odd"'),
    ("limit_req_zone $nosuch zone=a:64k rate=1r/s;", 'unknown "nosuch" variable'),
    ("limit_conn_zone $remote_addr zone=a:64k scope=cluster;", 'invalid parameter'),
])
def test_zone_errors(tmp_path, zone_line, message):
    conf = tmp_path / "edge.conf"
    conf.write_text("http {\n    " + zone_line + "\n    server { listen 127.0.0.1:1; }\n}\n")
    r = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], capture_output=True,
                       text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 1
    assert message in r.stderr and f"{conf}:2" in r.stderr, r.stderr


def test_zone_files_go_with_the_master(edge):
    e = edge("""
        http {
            limit_req_zone $remote_addr zone=gone:64k rate=5r/s;
            server { listen 127.0.0.1:@PORT@; location / { limit_req zone=gone; return 200 "ok"; } }
        }""")
    path = zone_file(e, "gone")
    assert os.path.exists(path)
    e.stop()
    assert not glob.glob(str(e.pid_path) + ".state.limit.*")


def test_a_rejected_request_uses_up_none_of_the_other_limits(edge):
    e = edge("""
        http {
            limit_count_zone $server_name zone=wide:64k count=100 window=60s;
            limit_req_zone $server_name zone=rate:64k rate=1r/m;
            limit_count_zone $server_name zone=narrow:64k count=1 window=60s;
            server {
                listen 127.0.0.1:@PORT@;
                server_name multi;
                location / {
                    limit_count zone=wide; limit_req zone=rate burst=5 nodelay;
                    limit_count zone=narrow; limit_headers ietf;
                    return 200 "ok";
                }
            }
        }""")
    r = get(e.port, "/", host="multi")
    assert r.status == 200
    # the most restrictive limit is the one described
    assert r.header("RateLimit-Policy") == '"narrow";q=1;w=60'
    assert [get(e.port, "/", host="multi").status for _ in range(4)] == [429] * 4
    wide = LimitZone.open(zone_file(e, "wide"))
    rate = LimitZone.open(zone_file(e, "rate"))
    try:
        assert wide.peek(b"multi")["own"] == 1         # the four rejections were given back
        # the rate zone was charged once: its theoretical arrival time is one emission
        # interval (60 s at 1r/m) ahead, not five
        ahead = rate.peek(b"multi")["a"] - time.monotonic() * 1e9
        assert 55e9 < ahead <= 60e9, ahead
    finally:
        wide.close()
        rate.close()


def test_ietf_headers_of_a_rate_and_dry_run_delays_nothing(edge):
    e = edge("""
        http {
            limit_req_zone $remote_addr zone=perip:64k rate=30r/m;
            server {
                listen 127.0.0.1:@PORT@;
                limit_headers ietf;
                location /dry { limit_req zone=perip burst=1; limit_req_dry_run on; return 200 "dry"; }
            }
        }""")
    start = time.monotonic()
    statuses = [get(e.port, "/dry").status for _ in range(4)]
    assert statuses == [200] * 4 and time.monotonic() - start < 1.0   # no delay, no rejection
    r = get(e.port, "/dry")
    assert r.header("RateLimit-Policy") == '"perip";q=30;w=60;edge-burst=1'
    assert re.fullmatch(r'"perip";r=0;t=\d+', r.header("RateLimit"))
