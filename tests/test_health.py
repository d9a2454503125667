"""`health live` / `health ready`, and `edge drain` / `edge undrain`, against real edge.

Liveness is 200 whenever a worker's loop runs; a stopped (hung) worker answers nothing,
so a check with a short timeout fails. Readiness is 503 with a JSON reason while the
node is draining, while its last reload failed to apply ("config failed"), while a
worker is missing ("starting"), and while the worker stops ("stopping"). Draining
changes readiness only: every other location keeps serving. All of it is edge's own
(nginx has no such handler), so the module is `edge_only`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import Conn, build_request, curl, get

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.edge_only

CONF = """
worker_processes @WORKERS@;
http {
    upstream backend { server @UP@; keepalive 4; }
    server {
        listen 127.0.0.1:@PORT@;
        location = /healthz { health live; }
        location = /readyz { health ready; }
        location /api/ { proxy_pass http://backend; }
        location / { return 200 "hello\\n"; }
    }
}
"""


def run_edge(*args, timeout=30):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def drain(e, on=True):
    p = run_edge("drain" if on else "undrain", "-c", e.conf_path)
    assert p.returncode == 0, p.stderr
    return p


def health(port, path="/readyz", method="GET", timeout=5.0):
    with Conn(port, timeout=timeout) as c:
        r = c.request(method, path)
    return r


def assert_health(r, status, reason):
    assert r.status == status, r
    assert r.header("Content-Type") == "application/json", r
    assert r.header("Cache-Control") == "no-store", r
    assert int(r.header("Content-Length")) == len(r.body)
    assert json.loads(r.body) == {"status": reason}, r.body


@pytest.fixture
def node(edge, upstream):
    return edge(CONF, UP=upstream, WORKERS=2)


@pytest.fixture
def node1(edge, upstream):
    return edge(CONF, UP=upstream, WORKERS=1)


def test_live_and_ready(node):
    assert_health(health(node.port, "/healthz"), 200, "ok")
    assert_health(health(node.port, "/readyz"), 200, "ok")
    r = health(node.port, "/readyz", method="HEAD")
    assert r.status == 200 and r.body == b""
    # keep-alive: several checks on one connection
    with Conn(node.port) as c:
        for path in ("/healthz", "/readyz", "/healthz"):
            assert_health(c.request("GET", path), 200, "ok")
        assert c.is_open(0.1)


def test_health_by_curl(node):
    r = curl(f"http://127.0.0.1:{node.port}/readyz", timeout=2)
    assert (r.returncode, r.status, r.body) == (0, 200, b'{"status":"ok"}\n')


def test_health_ignores_the_request_body(node):
    with Conn(node.port) as c:
        r = c.request("POST", "/readyz", body=b"x" * 10000)
        assert_health(r, 200, "ok")
        assert_health(c.request("GET", "/healthz"), 200, "ok")   # the body was not taken as a request


def test_drain_changes_readiness_only(node, upstream):
    with Conn(node.port) as kept:          # a keep-alive connection from before the drain
        assert_health(kept.request("GET", "/readyz"), 200, "ok")
        p = drain(node)
        assert "draining" in p.stderr
        # every worker reads the flag from shared memory: many new connections all see it
        for _ in range(20):
            assert_health(health(node.port), 503, "draining")
        assert_health(kept.request("GET", "/readyz"), 503, "draining")
        assert kept.is_open(0.1), "a 503 readiness answer closed the connection"
        # traffic keeps flowing
        assert_health(health(node.port, "/healthz"), 200, "ok")
        for _ in range(10):
            assert get(node.port, "/").status == 200
            r = get(node.port, "/api/echo")
            assert r.status == 200 and r.header("X-Upstream") == "up"
        assert kept.request("GET", "/").status == 200
        st = run_edge("status", "-c", node.conf_path)
        assert st.returncode == 0 and "draining: yes" in st.stdout, st.stdout + st.stderr
        drain(node, False)
        for _ in range(20):
            assert_health(health(node.port), 200, "ok")
        assert_health(kept.request("GET", "/readyz"), 200, "ok")
    st = run_edge("status", "-c", node.conf_path)
    assert "draining: no" in st.stdout, st.stdout


def test_drain_is_idempotent(node):
    drain(node)
    drain(node)
    assert_health(health(node.port), 503, "draining")
    drain(node, False)
    drain(node, False)
    assert_health(health(node.port), 200, "ok")


def test_drain_without_a_running_edge_fails(edge, tmp_path):
    e = edge.create(CONF, UP="127.0.0.1:9", WORKERS=1, PORT=1)
    e.conf_path.write_text(e.render())
    p = run_edge("drain", "-c", e.conf_path)
    assert p.returncode != 0
    assert "edge: [" in p.stderr and "running" in p.stderr, p.stderr
    p = run_edge("undrain", "-c", e.conf_path)
    assert p.returncode != 0


def test_drain_survives_workers_respawning(node):
    drain(node)
    old = node.wait_workers(2)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    node.wait_workers(2, exclude=old)
    deadline = time.monotonic() + 5
    while True:     # new workers read the same flag
        r = health(node.port)
        if r.status == 503 and json.loads(r.body)["status"] == "draining":
            break
        assert json.loads(r.body)["status"] in ("starting", "draining"), r
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(10):
        assert_health(health(node.port), 503, "draining")


def test_drain_survives_a_restart(edge, upstream, tmp_path):
    """The documented keepalived flow is drain, wait, stop, maintain, start, undrain:
    a node that starts again after maintenance stays out of service (readiness 503
    "draining") until the operator runs `edge undrain`. Serving starts at once."""
    e = edge(CONF, UP=upstream, WORKERS=1)
    drain(e)
    assert_health(health(e.port), 503, "draining")
    assert e.stop() == 0
    e.start()
    assert get(e.port, "/").status == 200
    assert_health(health(e.port, "/healthz"), 200, "ok")
    assert_health(health(e.port), 503, "draining")
    drain(e, False)
    assert_health(health(e.port), 200, "ok")


def test_failed_reload_makes_readiness_fail(node):
    good = node.conf_path.read_text()
    node.conf_path.write_text(good.replace("location / {", "location / { no_such_directive on;", 1))
    node.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while health(node.port).status == 200:
        assert time.monotonic() < deadline, "readiness still 200 after a reload that failed"
        time.sleep(0.05)
    for _ in range(10):
        assert_health(health(node.port), 503, "config failed")
    assert_health(health(node.port, "/healthz"), 200, "ok")
    # the previous configuration keeps serving
    assert get(node.port, "/").body == b"hello\n"
    assert get(node.port, "/api/echo").status == 200
    # draining is reported first; undraining shows the config failure again
    drain(node)
    assert_health(health(node.port), 503, "draining")
    drain(node, False)
    assert_health(health(node.port), 503, "config failed")
    # a reload that works clears it
    node.conf_path.write_text(good.replace('"hello\\n"', '"hello again\\n"'))
    node.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while get(node.port, "/").body != b"hello again\n":
        assert time.monotonic() < deadline, "the fixed config was not applied"
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while health(node.port).status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(10):
        assert_health(health(node.port), 200, "ok")


def test_missing_worker_makes_readiness_fail(node):
    """A worker that keeps crashing is respawned after a back-off; meanwhile the other
    worker answers readiness with 503 "starting". Connections that land on the dead
    worker's socket wait for its successor, so several are tried at once."""
    survivor = node.wait_workers(2)[0]
    for _ in range(7):     # more than the crash limit within the crash window
        victim = [p for p in node.wait_workers(2, timeout=10) if p != survivor][0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 0.5
        while victim in node.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.005)
    time.sleep(0.1)
    assert node.worker_pids() == [survivor], "the crashed worker was respawned at once (no back-off?)"
    socks = []
    for _ in range(16):
        s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        s.sendall(build_request("GET", "/readyz"))
        socks.append(s)
    answered = []
    deadline = time.monotonic() + 0.4
    for s in socks:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        answered.append(data)
    for s in socks:
        s.close()
    assert answered, "no readiness answer from the surviving worker"
    for data in answered:
        assert data.startswith(b"HTTP/1.1 503 ") and data.endswith(b'{"status":"starting"}\n'), data
    # once the slot's worker is back, readiness recovers
    node.wait_workers(2, timeout=20)
    deadline = time.monotonic() + 10
    while health(node.port).status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_readiness_not_ok_before_all_workers_are_up(edge, upstream):
    """From the first moment the port accepts, readiness never says ok while fewer
    than worker_processes workers exist."""
    e = edge.create(CONF, UP=upstream, WORKERS=4)
    e._alloc_ports()
    e.spawn()
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", e.port), timeout=0.05) as s:
                s.settimeout(0.05)
                s.sendall(build_request("GET", "/readyz"))
                data = s.recv(65536)
        except OSError:
            continue
        workers = len(e.worker_pids())
        status = data.split(b" ", 2)[1]
        seen.append(status)
        if status == b"200":
            # the report (error log, process tree) says why, should this ever fail again
            # (it did once, in a full-suite run on a loaded 2-core machine)
            assert workers == 4, f"ready with {workers} of 4 workers\n{e.report()}"
            break
        assert data.endswith(b'{"status":"starting"}\n'), data
    assert seen and seen[-1] == b"200", seen[-10:]
    e.wait_ready()


def test_stopping_worker_answers_503(node1, upstream):
    """During a graceful stop, a request whose head was arriving when QUIT came is still
    answered (the worker stays up for the slow request on another connection), and
    readiness on it says "stopping", with Connection: close."""
    with Conn(node1.port) as busy, Conn(node1.port) as c:
        busy.send(build_request("GET", "/api/slow/1.5"))
        c.send(b"GET /readyz HTTP/1.1\r\n")
        time.sleep(0.3)              # the slow request is in flight, the head half sent
        node1.send_signal(signal.SIGQUIT)
        time.sleep(0.2)
        c.send(b"Host: localhost\r\n\r\n")
        r = c.read_response()
        assert_health(r, 503, "stopping")
        assert "close" in r.connection_tokens()
        assert c.wait_closed(2)
        r = busy.read_response()
        assert r.status == 200 and r.body == b"slow ok\n"
    assert node1.wait_exit(15) == 0


def test_hung_worker_fails_liveness(node1):
    """SIGSTOP the only worker: the kernel still accepts, nothing answers, a check with
    a short timeout fails; SIGCONT and it answers again."""
    (worker,) = node1.wait_workers(1)
    os.kill(worker, signal.SIGSTOP)
    try:
        for path in ("/healthz", "/readyz"):
            t0 = time.monotonic()
            r = curl(f"http://127.0.0.1:{node1.port}{path}", timeout=1)
            assert r.returncode == 28 and r.status == 0, r     # curl: operation timed out
            assert time.monotonic() - t0 < 3
    finally:
        os.kill(worker, signal.SIGCONT)
    assert_health(health(node1.port, "/healthz"), 200, "ok")
    assert_health(health(node1.port, "/readyz"), 200, "ok")


PP_CONF = """
http {
    server {
        listen 127.0.0.1:@PORT@ proxy_protocol;
        set_real_ip_from 127.0.0.1;
        location = /readyz { health ready; }
    }
}
"""


def test_readiness_behind_proxy_protocol(edge):
    """An L4 balancer's own health check arrives as a PROXY v2 LOCAL connection."""
    e = edge(PP_CONF)
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    with Conn(e.port) as c:
        c.send(local + build_request("GET", "/readyz"))
        assert_health(c.read_response(), 200, "ok")
    with Conn(e.port) as c:
        c.send(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n" + build_request("GET", "/readyz"))
        assert_health(c.read_response(), 200, "ok")
    drain(e)
    with Conn(e.port) as c:
        c.send(local + build_request("GET", "/readyz"))
        assert_health(c.read_response(), 503, "draining")


@pytest.mark.parametrize("text,message", [
    ("location /h { health maybe; }", 'invalid value "maybe"'),
    ("location /h { health; }", 'invalid number of arguments in "health"'),
    ("health live;", '"health" directive is not allowed here'),
])
def test_health_config_errors(edge, text, message):
    e = edge.create(f"http {{ server {{ listen 127.0.0.1:@PORT@;\n {text}\n }} }}", PORT=1)
    e.spawn()
    assert e.wait_exit(10) == 1
    assert message in e.output() and f"{e.conf_path}:{e.line_of(text)}" in e.output(), e.output()
