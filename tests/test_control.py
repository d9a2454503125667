"""The control process and the admin listener (issue 7 items 1 and 2, /metrics rendering):
real edge processes, real sockets, real HTTP clients, prometheus_client's own parser."""

import http.client
import json
import os
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import alive, free_port, get
from support.edge import control_of, proc_stat, socket_inodes
from support.load import Load, check_clean
from test_reload import rewrite, run_edge, set_version, start, wait_generation
from test_upgrade import pid_in, serves, stop_master, usr2

pytestmark = pytest.mark.edge_only

CONF = """
worker_processes 2;
worker_shutdown_timeout 5s;
http {
    keepalive_requests 1000000;
    admin_listen 127.0.0.1:@PORT2@;
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "v@V@"; }
    }
}
"""


# --------------------------------------------------------------------------- helpers


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=5.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def admin(where, path="/status", method="GET", headers=None):
    """(status, headers dict with lower-case names, body) from the admin listener at
    `where`: a TCP port on 127.0.0.1 or a unix socket path."""
    conn = (UnixHTTPConnection(where) if isinstance(where, str)
            else http.client.HTTPConnection("127.0.0.1", where, timeout=5))
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def wait_for(predicate, timeout=10.0, what="condition", e=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            "\n" + e.report() if e is not None else "")
        time.sleep(0.02)


def try_status(where, headers=None):
    try:
        code, _, body = admin(where, "/status", headers=headers)
    except OSError:
        return None
    return json.loads(body) if code == 200 else None


def wait_status(where, predicate=lambda s: True, e=None, timeout=10.0):
    return wait_for(lambda: (lambda s: s if s is not None and predicate(s) else None)(try_status(where)),
                    timeout, "the admin listener's /status", e)


def families(where, headers=None):
    code, hdrs, body = admin(where, "/metrics", headers=headers)
    assert code == 200, body
    assert hdrs["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(fams, family, sample, **labels):
    for s in fams[family].samples:
        if s.name == sample and s.labels == labels:
            return s.value
    return None


def metric(where, family, sample, **labels):
    return value(families(where), family, sample, **labels)


def one_control(e):
    return wait_for(lambda: (lambda c: c[0] if len(c) == 1 else None)(control_of(e.pid)),
                    10, "one control process", e)


def listening_socket_inodes():
    """Inodes of every listening TCP and unix socket on the machine."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    out.add(int(fields[9]))
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if int(fields[3], 16) & 0x10000:        # __SO_ACCEPTCON: listening
                out.add(int(fields[6]))
    return out


# --------------------------------------------------------------------------- the process


def test_control_process_is_a_child_of_the_master_and_owns_only_the_admin_socket(edge):
    e = start(edge, CONF)
    admin_port = e.ports["PORT2"]
    workers = e.wait_workers(2)
    ctl = one_control(e)
    assert ctl not in workers
    assert proc_stat(ctl)[1] == e.pid, "a child of the master"
    with open(f"/proc/{ctl}/comm") as f:
        assert f.read().strip() == "edge-control"
    try:
        import setproctitle  # noqa: F401
        with open(f"/proc/{ctl}/cmdline", "rb") as f:
            assert b"edge: control process" in f.read()
    except ImportError:
        pass   # without setproctitle only comm carries the name
    # a worker's first heartbeat comes with its loop's first wake-up (within 1 s)
    st = wait_status(admin_port, lambda s: all(w["heartbeat_age_ms"] is not None
                                               for w in s["workers"]), e)
    assert st["control_pid"] == ctl
    assert st["master_pid"] == e.pid
    assert st["generation"] == 1 and st["ready"] is True and st["draining"] is False
    assert st["version"]
    assert st["uptime_seconds"] >= 0
    assert sorted(w["pid"] for w in st["workers"]) == sorted(workers)
    assert [w["index"] for w in st["workers"]] == [0, 1]
    assert all(w["generation"] == 1 and w["heartbeat_age_ms"] >= 0 for w in st["workers"])
    # It holds exactly one listening socket, the admin one: none of the data plane's
    # (the master prunes those on reload; a copy here would keep them alive).
    listening = socket_inodes(ctl) & listening_socket_inodes()
    assert len(listening) == 1
    # `edge status` tells it from the workers.
    r = run_edge("status", "-c", e.conf_path)
    assert f"control process {ctl}" in r.stdout and f"worker process {ctl}" not in r.stdout


def test_without_admin_listen_no_admin_socket_is_opened(edge):
    e = edge("""
        http { server { listen 127.0.0.1:@PORT@; location / { return 200 "ok"; } } }
    """)
    ctl = one_control(e)
    # its services have started once it says so to the master
    wait_for(lambda: f"control process {ctl} runs generation 1" in e.error_log, 10,
             "the control process to start its services", e)
    assert socket_inodes(ctl) & listening_socket_inodes() == set()
    assert get(e.port, "/").status == 200


@pytest.mark.timeout(90)
def test_kill_9_under_load_fails_no_request_and_the_control_process_comes_back(edge):
    e = start(edge, CONF)
    admin_port = e.ports["PORT2"]
    workers = e.wait_workers(2)
    ctl = one_control(e)
    wait_status(admin_port, lambda s: s["control_pid"] == ctl, e)
    with Load(e.port, keepalive=2, oneshot=1, pause=0.001, check=lambda b: b == b"v0") as load:
        assert load.wait_ok(50), load.stats.summary()
        os.kill(ctl, signal.SIGKILL)
        new = wait_for(lambda: [c for c in control_of(e.pid) if c != ctl], 10,
                       "a new control process", e)[0]
        st = wait_status(admin_port, lambda s: s["control_pid"] == new, e)
        assert load.wait_ok(100), load.stats.summary()
    check_clean(load.stats)
    assert load.stats.ok > 150
    assert not alive(ctl)
    assert sorted(e.worker_pids()) == sorted(workers), "the workers never noticed"
    assert st["generation"] == 1
    assert f"control process {ctl} exited on signal 9 (SIGKILL)" in e.error_log
    assert metric(admin_port, "edge_worker_restarts", "edge_worker_restarts_total") == 0


def test_quit_stops_the_control_process_and_the_master_exits_cleanly(edge):
    e = start(edge, CONF)
    ctl = one_control(e)
    wait_status(e.ports["PORT2"], e=e)
    assert e.stop(signal.SIGQUIT) == 0
    assert e.problems == []
    assert not alive(ctl)
    assert f"control process {ctl} exited with code 0" in e.error_log


def test_term_stops_the_control_process_too(edge):
    e = start(edge, CONF)
    ctl = one_control(e)
    wait_status(e.ports["PORT2"], e=e)
    assert e.stop(signal.SIGTERM) == 0
    assert e.problems == []
    assert not alive(ctl)


# --------------------------------------------------------------------------- reloads


@pytest.mark.timeout(90)
def test_reloads_in_place_and_with_new_listeners_and_a_bad_one_are_counted(edge):
    e = start(edge, CONF)
    admin_port = e.ports["PORT2"]
    ctl = one_control(e)
    wait_status(admin_port, e=e)
    fams = families(admin_port)
    assert value(fams, "edge_config_reloads", "edge_config_reloads_total", result="ok") == 0
    assert value(fams, "edge_config_reloads", "edge_config_reloads_total", result="failed") == 0
    assert value(fams, "edge_config_generation", "edge_config_generation") == 1

    # in place
    set_version(e, 1)
    e.send_signal(signal.SIGHUP)
    wait_generation(e, 2)
    wait_status(admin_port, lambda s: s["generation"] == 2, e)
    wait_for(lambda: metric(admin_port, "edge_config_reloads", "edge_config_reloads_total",
                            result="ok") == 1, 5, "reloads ok == 1", e)
    assert metric(admin_port, "edge_config_generation", "edge_config_generation") == 2
    assert get(e.port, "/").body == b"v1"

    # new listeners: new workers
    before = set(e.worker_pids())
    extra = free_port()
    rewrite(e, e.conf_path.read_text().replace(
        f"listen 127.0.0.1:{e.port};", f"listen 127.0.0.1:{e.port}; listen 127.0.0.1:{extra};"))
    e.send_signal(signal.SIGHUP)
    wait_generation(e, 3)
    st = wait_status(admin_port, lambda s: s["generation"] == 3
                     and not {w["pid"] for w in s["workers"]} & before, e)
    assert all(w["generation"] == 3 for w in st["workers"])
    wait_for(lambda: metric(admin_port, "edge_config_reloads", "edge_config_reloads_total",
                            result="ok") == 2, 5, "reloads ok == 2", e)
    assert get(extra, "/").body == b"v1"

    # a config that does not load: counted failed, generation unchanged
    good = e.conf_path.read_text()
    rewrite(e, good.replace("keepalive_requests", "keepalive_requestz"))
    e.send_signal(signal.SIGHUP)
    wait_for(lambda: metric(admin_port, "edge_config_reloads", "edge_config_reloads_total",
                            result="failed") == 1, 10, "reloads failed == 1", e)
    fams = families(admin_port)
    assert value(fams, "edge_config_reloads", "edge_config_reloads_total", result="ok") == 2
    assert value(fams, "edge_config_generation", "edge_config_generation") == 3
    st = try_status(admin_port)
    assert st["generation"] == 3 and st["ready"] is False and st["ready_reason"] == "config failed"
    # the control process lived through all of it, told of each good reload
    assert control_of(e.pid) == [ctl]
    assert st["control_pid"] == ctl


def test_a_worker_killed_counts_one_restart(edge):
    e = start(edge, CONF)
    admin_port = e.ports["PORT2"]
    workers = e.wait_workers(2)
    wait_status(admin_port, e=e)
    assert metric(admin_port, "edge_worker_restarts", "edge_worker_restarts_total") == 0
    os.kill(workers[0], signal.SIGKILL)
    e.wait_workers(2, exclude=[workers[0]])
    wait_for(lambda: metric(admin_port, "edge_worker_restarts", "edge_worker_restarts_total") == 1,
             5, "worker restarts == 1", e)
    st = wait_status(admin_port, lambda s: workers[0] not in [w["pid"] for w in s["workers"]], e)
    assert sorted(w["pid"] for w in st["workers"]) == sorted(e.worker_pids())


def test_reload_that_moves_admin_listen_rebinds_and_a_failed_bind_keeps_the_old(edge):
    e = start(edge, CONF)
    old_port = e.ports["PORT2"]
    wait_status(old_port, e=e)
    new_port = free_port()
    rewrite(e, e.conf_path.read_text().replace(f"127.0.0.1:{old_port}", f"127.0.0.1:{new_port}"))
    e.send_signal(signal.SIGHUP)
    wait_status(new_port, lambda s: s["generation"] == 2, e)
    with pytest.raises(OSError):
        admin(old_port)

    # an address some other program holds (no SO_REUSEPORT: edge's bind fails)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    try:
        rewrite(e, e.conf_path.read_text().replace(f"127.0.0.1:{new_port}", f"127.0.0.1:{taken}"))
        e.send_signal(signal.SIGHUP)
        wait_generation(e, 3)
        wait_for(lambda: f"admin_listen 127.0.0.1:{taken}: bind() failed" in e.error_log, 5,
                 "the bind failure in the error log", e)
        assert f"the admin listener stays on 127.0.0.1:{new_port}" in e.error_log
        st = wait_status(new_port, lambda s: s["generation"] == 3, e)
        assert st["ready"] is True, "the reload itself succeeded"
        assert metric(new_port, "edge_config_reloads", "edge_config_reloads_total", result="ok") == 2
    finally:
        blocker.close()


# --------------------------------------------------------------------------- /metrics


def test_metrics_parse_with_prometheus_client_and_declare_every_family(edge):
    e = start(edge, CONF)
    admin_port = e.ports["PORT2"]
    wait_status(admin_port, e=e)
    fams = families(admin_port)
    # prometheus_client names a counter family without its _total suffix
    expected = {
        "edge_http_requests": "counter",
        "edge_http_request_duration_seconds": "histogram",
        "edge_upstream_response_duration_seconds": "histogram",
        "edge_http_received_bytes": "counter",
        "edge_http_sent_bytes": "counter",
        "edge_connections": "gauge",
        "edge_upstream_peer_failures": "counter",
        "edge_upstream_peer_up": "gauge",
        "edge_config_generation": "gauge",
        "edge_config_reloads": "counter",
        "edge_worker_restarts": "counter",
        "edge_log_records_dropped": "counter",
    }
    assert {name: fams[name].type for name in expected if name in fams} == expected
    assert value(fams, "edge_config_generation", "edge_config_generation") == 1
    assert value(fams, "edge_worker_restarts", "edge_worker_restarts_total") == 0
    code, hdrs, body = admin(admin_port, "/metrics", method="HEAD")
    assert code == 200 and body == b"" and int(hdrs["content-length"]) > 0


def test_metrics_render_sums_series_and_escapes_labels():
    """The renderer over a snapshot shaped as the zones give it (the zones are built
    on another branch): duplicate label sets are summed, hostile label values escaped."""
    from edge.control import metrics
    buckets = [1] * 5 + [2] * 7
    snapshot = {
        "http": [
            {"server": "api", "route": "/v1/", "codes": {200: 10, 404: 2},
             "duration_buckets": buckets, "duration_sum": 1.5, "duration_count": 12,
             "received_bytes": 100, "sent_bytes": 1000},
            {"server": "api", "route": "/v1/", "codes": {200: 5},
             "duration_buckets": buckets, "duration_sum": 0.5, "duration_count": 12,
             "received_bytes": 1, "sent_bytes": 2},
            {"server": 'we"ird\\\nname', "route": "~ ^/v\\d/", "codes": {502: 1},
             "duration_buckets": [0] * 11 + [1], "duration_sum": 20.0, "duration_count": 1,
             "received_bytes": 0, "sent_bytes": 0},
        ],
        "upstreams": [{"upstream": "api", "buckets": [3] * 12, "sum": 0.25, "count": 3}],
        "peers": [{"upstream": "api", "peer": "127.0.0.1:8080", "failures": 2, "up": True},
                  {"upstream": "api", "peer": "127.0.0.1:8080", "failures": 1, "up": False}],
        "connections": {"active": 3, "reading": 0, "writing": 1, "idle": 2},
        "sinks": {"http://127.0.0.1:9000/ingest": {"ring_dropped": 4}},
    }
    text = metrics.render(snapshot, {"generation": 7, "reloads_ok": 3, "reloads_failed": 1,
                                     "worker_restarts": 2},
                          {"http://127.0.0.1:9000/ingest": 5, "redis://127.0.0.1:6379/s": 1})
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    req = "edge_http_requests_total"
    assert value(fams, "edge_http_requests", req, server="api", route="/v1/", code="200") == 15
    assert value(fams, "edge_http_requests", req, server="api", route="/v1/", code="404") == 2
    assert value(fams, "edge_http_requests", req, server='we"ird\\\nname', route="~ ^/v\\d/",
                 code="502") == 1
    assert len([s for s in fams["edge_http_requests"].samples]) == 3, "one series per label set"
    h = "edge_http_request_duration_seconds"
    assert value(fams, h, h + "_bucket", server="api", route="/v1/", le="0.005") == 2
    assert value(fams, h, h + "_bucket", server="api", route="/v1/", le="+Inf") == 4
    assert value(fams, h, h + "_count", server="api", route="/v1/") == 24
    assert value(fams, h, h + "_sum", server="api", route="/v1/") == 2.0
    assert value(fams, "edge_http_received_bytes", "edge_http_received_bytes_total",
                 server="api", route="/v1/") == 101
    u = "edge_upstream_response_duration_seconds"
    assert value(fams, u, u + "_bucket", upstream="api", le="10.0") == 3
    assert value(fams, "edge_upstream_peer_failures", "edge_upstream_peer_failures_total",
                 upstream="api", peer="127.0.0.1:8080") == 3
    assert value(fams, "edge_upstream_peer_up", "edge_upstream_peer_up",
                 upstream="api", peer="127.0.0.1:8080") == 0
    assert value(fams, "edge_connections", "edge_connections", state="writing") == 1
    assert value(fams, "edge_log_records_dropped", "edge_log_records_dropped_total",
                 sink="http://127.0.0.1:9000/ingest") == 9
    assert value(fams, "edge_log_records_dropped", "edge_log_records_dropped_total",
                 sink="redis://127.0.0.1:6379/s") == 1
    assert value(fams, "edge_config_reloads", "edge_config_reloads_total", result="failed") == 1
    assert value(fams, "edge_config_generation", "edge_config_generation") == 7


# --------------------------------------------------------------------------- admin HTTP


def test_admin_token_is_required_when_set(edge):
    e = start(edge, CONF.replace("admin_listen 127.0.0.1:@PORT2@;",
                                 "admin_listen 0.0.0.0:@PORT2@; admin_token s3cret-T0ken;"))
    port = e.ports["PORT2"]
    wait_for(lambda: try_status(port, {"Authorization": "Bearer s3cret-T0ken"}), 10,
             "the admin listener", e)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-T0ke"},
                    {"Authorization": "Basic s3cret-T0ken"}):
        for path in ("/status", "/metrics", "/nope"):
            code, hdrs, body = admin(port, path, headers=headers)
            assert code == 401, (headers, path)
            assert json.loads(body) == {"error": "unauthorized"}
            assert hdrs["www-authenticate"].startswith("Bearer")
    ok = {"Authorization": "Bearer s3cret-T0ken"}
    assert admin(port, "/status", headers=ok)[0] == 200
    assert admin(port, "/metrics", headers=ok)[0] == 200
    assert admin(port, "/nope", headers=ok)[0] == 404


def test_a_non_loopback_admin_listen_without_token_is_a_config_error(tmp_path):
    conf = tmp_path / "edge.conf"
    conf.write_text("worker_processes 1;\nhttp {\n    server { listen 127.0.0.1:8080; }\n"
                    "    admin_listen 0.0.0.0:9180;\n}\n")
    r = run_edge("-t", "-c", conf)
    assert r.returncode == 1
    assert f"{conf}:4" in r.stderr and "admin_token" in r.stderr, r.stderr
    for ok in ("127.0.0.1:9180", "[::1]:9180", "localhost:9180", f"unix:{tmp_path}/a.sock"):
        conf.write_text(f"http {{ admin_listen {ok}; }}\n")
        r = run_edge("-t", "-c", conf)
        assert r.returncode == 0, (ok, r.stderr)
    conf.write_text("http { admin_listen 0.0.0.0:9180; admin_token t; }\n")
    assert run_edge("-t", "-c", conf).returncode == 0
    for bad in ("9180", "127.0.0.1:0", "unix:relative.sock", "[::1]"):
        conf.write_text(f"http {{ admin_listen {bad}; }}\n")
        r = run_edge("-t", "-c", conf)
        assert r.returncode == 1 and f"{conf}:1" in r.stderr, (bad, r.stderr)


def test_unix_socket_admin_listen(edge, tmp_path):
    path = str(tmp_path / "admin.sock")
    e = start(edge, CONF.replace("127.0.0.1:@PORT2@", f"unix:{path}"))
    ctl = one_control(e)
    st = wait_status(path, e=e)
    assert st["control_pid"] == ctl
    assert families(path)["edge_config_generation"].samples[0].value == 1
    # a respawned control process takes the path over from its dead predecessor
    os.kill(ctl, signal.SIGKILL)
    wait_status(path, lambda s: s["control_pid"] != ctl, e)
    e.stop()
    assert not os.path.exists(path), "the socket file goes with the control process"


def raw(port, data, read_all=True, eof=False):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if eof:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
            if not read_all:
                return out


def test_admin_http_is_strict_and_survives_garbage(edge):
    e = start(edge, CONF)
    port = e.ports["PORT2"]
    wait_status(port, e=e)
    code, hdrs, body = admin(port, "/nope")
    assert code == 404 and json.loads(body) == {"error": "not found"}
    code, hdrs, body = admin(port, "/status", method="POST")
    assert code == 405 and hdrs["allow"] == "GET, HEAD"
    code, hdrs, body = admin(port, "/status", method="HEAD")
    assert code == 200 and body == b"" and int(hdrs["content-length"]) > 0
    assert admin(port, "/status?x=1")[0] == 200

    cases = [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\n\r\n", 400),                      # no Host
        (b"GET /status HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /status HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /status HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 10000 + b"\r\n\r\n", 431),
        (b"GET status HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /status\r\n\r\n", 400),
    ]
    for data, status in cases:
        out = raw(port, data)
        assert out.startswith(b"HTTP/1.1 %d " % status), (data[:60], out[:100])
        assert b"Connection: close" in out
    # half a request, then EOF: answered 400, nothing left hanging
    assert raw(port, b"GET /sta", eof=True).startswith(b"HTTP/1.1 400 ")

    # keep-alive and pipelining: two answers on one connection, in order
    two = (b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = raw(port, two)
    assert out.count(b"HTTP/1.1 ") == 2
    assert out.index(b"HTTP/1.1 200 ") < out.index(b"HTTP/1.1 404 ")
    # HTTP/1.0 closes unless asked to keep alive
    assert b"Connection: close" in raw(port, b"GET /status HTTP/1.0\r\n\r\n")
    # still serving
    assert wait_status(port, e=e)["generation"] == 1
    assert "admin listener:" not in e.error_log, "no handler error logged"


# --------------------------------------------------------------------------- upgrade


@pytest.mark.timeout(90)
def test_binary_upgrade_hands_the_admin_listener_to_the_new_control_process(edge):
    e = start(edge, CONF)
    port = e.ports["PORT2"]
    old = e.pid
    old_ctl = one_control(e)
    wait_status(port, e=e)
    new = None
    try:
        new = usr2(e, old)
        new_ctl = wait_for(lambda: control_of(new), 10, "the new master's control process", e)[0]
        assert control_of(old) == [old_ctl], "both run during the hand-over"
        os.kill(old, signal.SIGWINCH)
        wait_for(lambda: not alive(old_ctl), 15, "the old control process to stop", e)
        assert control_of(old) == []
        st = wait_status(port, lambda s: s["master_pid"] == new, e)
        assert st["control_pid"] == new_ctl
        os.kill(old, signal.SIGQUIT)
        wait_for(lambda: not alive(old), 15, "the old master to exit", e)
        assert e.wait_exit(5) == 0
        assert control_of(new) == [new_ctl], "exactly one control process"
        for _ in range(5):   # every connection now reaches the new one
            assert try_status(port)["control_pid"] == new_ctl
    finally:
        stop_master(new)


@pytest.mark.timeout(90)
def test_upgrade_rollback_brings_the_old_control_process_back(edge):
    e = start(edge, CONF)
    port = e.ports["PORT2"]
    old = e.pid
    old_ctl = one_control(e)
    new = None
    try:
        new = usr2(e, old)
        wait_for(lambda: control_of(new), 10, "the new master's control process", e)
        os.kill(old, signal.SIGWINCH)
        wait_for(lambda: not alive(old_ctl), 15, "the old control process to stop", e)
        os.kill(old, signal.SIGHUP)      # roll back: workers and control process again
        back = wait_for(lambda: control_of(old), 10, "the old master's control process", e)[0]
        assert back != old_ctl
        os.kill(new, signal.SIGQUIT)
        wait_for(lambda: not alive(new), 15, "the new master to exit", e)
        wait_for(lambda: serves(e, old), 5, "the old master to serve")
        st = wait_status(port, lambda s: s["master_pid"] == old, e)
        assert st["control_pid"] == back
        assert control_of(old) == [back]
        assert pid_in(e.pid_path) == old
    finally:
        stop_master(new)


def test_usr1_reaches_the_control_process(edge):
    """After logrotate's rename and USR1, the control process writes to the new file
    (it holds its own descriptor, inherited at fork)."""
    e = start(edge, CONF)
    old_port = e.ports["PORT2"]
    ctl = one_control(e)
    wait_status(old_port, e=e)
    rotated = e.error_log_path.with_name("error.log.1")
    os.rename(e.error_log_path, rotated)
    e.send_signal(signal.SIGUSR1)
    wait_for(lambda: e.error_log_path.exists(), 5, "the master to reopen the log", e)
    # reopen is asynchronous in the control process: move admin_listen until the
    # control process's line lands in the new file (each try is one more reload)
    port = old_port
    for _ in range(20):
        new_port = free_port()
        rewrite(e, e.conf_path.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{new_port}"))
        port = new_port
        e.send_signal(signal.SIGHUP)
        wait_status(port, e=e)
        if f"{ctl}#0: admin listener on 127.0.0.1:{port}" in e.error_log:
            break
    assert f"{ctl}#0: admin listener on 127.0.0.1:{port}" in e.error_log, e.report()
    assert f"{ctl}#0: admin listener on 127.0.0.1:{old_port}" in rotated.read_text()
