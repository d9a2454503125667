"""Reload under load: in place, with new workers, with a bad config, in a storm; and a
worker killed under load. Real edge processes, real clients (support/load.py)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import Conn, alive, get
from support.load import Load, check_clean

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.edge_only  # the shared state block, in-place swap: edge's own

CONF = """
worker_processes 2;
worker_shutdown_timeout 5s;
http {
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "v@V@"; }
        location = /ready { health ready; }
    }
}
"""


def run_edge(*args, timeout=30):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def state(e):
    from edge._core.reactor import SharedState
    return SharedState.open(str(e.pid_path) + ".state")


def wait_generation(e, number, timeout=10.0):
    """Wait until the master reports `number` as the generation in force, with every
    worker up (the end of a reload)."""
    st = state(e)
    try:
        deadline = time.monotonic() + timeout
        while not (st.generation == number and st.workers_up == st.workers_expected):
            assert time.monotonic() < deadline, (
                f"generation {st.generation} (want {number}), workers "
                f"{st.workers_up}/{st.workers_expected}\n{e.report()}")
            time.sleep(0.005)
    finally:
        st.close()


def rewrite(e, text):
    """Replace the running config atomically (a reader never sees half a file)."""
    tmp = e.conf_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, e.conf_path)


def start(edge, template=CONF, v=0, **kw):
    e = edge(template.replace("@V@", str(v)), **kw)
    e.version = v
    return e


def set_version(e, v):
    text = e.conf_path.read_text()
    new = text.replace(f'return 200 "v{e.version}"', f'return 200 "v{v}"')
    assert new != text
    rewrite(e, new)
    e.version = v


@pytest.mark.timeout(120)
def test_100_reloads_in_place_under_load(edge):
    e = start(edge)
    workers = e.wait_workers(2)
    wait_generation(e, 1)
    t0 = time.monotonic()
    with Load(e.port, check=lambda body: body.startswith(b"v"), keepalive=2, oneshot=2) as load:
        assert load.wait_ok(50), load.stats.summary()
        for k in range(1, 101):
            set_version(e, k)
            e.send_signal(signal.SIGHUP)
            wait_generation(e, k + 1)
            if k % 10 == 0:
                time.sleep(0.05)  # let the clients run on this generation a little
        assert load.wait_ok(50), load.stats.summary()
    stats = load.stats
    took = time.monotonic() - t0
    assert stats.failures == [] and stats.resets == 0, stats.summary()
    # Reloaded in place: the connections were never closed by the server at all.
    assert stats.stale == 0, stats.summary()
    assert stats.ok > 500, stats.summary()
    assert e.worker_pids() == workers, "an in-place reload must keep the worker pids"
    assert get(e.port, "/").body == b"v100"
    assert took < 60, f"100 reloads took {took:.1f}s"
    assert e.error_log.count("reloaded in place") == 100


@pytest.mark.timeout(60)
def test_keepalive_connection_takes_the_new_generation_at_its_next_request(edge, upstream):
    conf = """
worker_processes 1;
http {
    keepalive_requests 1000000;
    upstream up { server @UP@; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://up; proxy_set_header X-Gen "v0"; proxy_read_timeout 30s; }
    }
}
"""
    e = start(edge, conf, UP=upstream)
    (worker,) = e.wait_workers(1)
    wait_generation(e, 1)
    with Conn(e.port, timeout=20) as keep, Conn(e.port, timeout=20) as slow:
        r = keep.request("GET", "/echo")
        assert r.json()["headers"].count(["X-Gen", "v0"]) == 1, r.json()
        slow.send_request("GET", "/slow/1.5")
        upstream.wait_requests(2, timeout=10)

        rewrite(e, e.conf_path.read_text().replace('"v0"', '"v1"'))
        e.send_signal(signal.SIGHUP)
        wait_generation(e, 2)

        # The request in flight when the reload happened finishes normally.
        r = slow.read_response()
        assert (r.status, r.body) == (200, b"slow ok\n")
        # The same keep-alive connection, next request: the new generation.
        r = keep.request("GET", "/echo")
        assert r.json()["headers"].count(["X-Gen", "v1"]) == 1, r.json()
    assert e.worker_pids() == [worker]


NEW_LISTEN = """
worker_processes 2;
worker_shutdown_timeout 5s;
http {
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "v@V@"; }
    }
    server {
        listen 127.0.0.1:@PORT2@;
        location / { return 200 "second"; }
    }
}
"""


@pytest.mark.timeout(120)
def test_reloads_that_change_the_listeners_under_load(edge):
    """A listen added and removed, and the worker count raised: new workers start on
    the same sockets, the old ones drain. No request fails."""
    e = start(edge, NEW_LISTEN)
    port2 = e.ports["PORT2"]
    with_second = e.conf_path.read_text()
    second_block = with_second[with_second.index("    server {\n        listen 127.0.0.1:" + str(port2)):
                               with_second.rindex("}")]
    without_second = with_second.replace(second_block, "")
    e.wait_workers(2)
    wait_generation(e, 1)
    gen = 1
    windows = []  # the old workers stop gracefully in these
    with Load(e.port, check=lambda body: body == b"v0") as load:
        assert load.wait_ok(50), load.stats.summary()
        for i in range(6):
            before = set(e.worker_pids())
            began = time.monotonic()
            rewrite(e, without_second if i % 2 == 0 else with_second)
            e.send_signal(signal.SIGHUP)
            gen += 1
            wait_generation(e, gen)
            assert not (set(e.wait_workers(2, exclude=before, timeout=10)) & before)
            windows.append((began, time.monotonic() + 0.5))
            with socket.socket() as s:
                reachable = s.connect_ex(("127.0.0.1", port2)) == 0
            assert reachable == (i % 2 == 1), f"port {port2} after reload {i}"
            assert load.wait_ok(20), load.stats.summary()
        # More workers: a third socket joins the group.
        began = time.monotonic()
        rewrite(e, e.conf_path.read_text().replace("worker_processes 2;", "worker_processes 3;"))
        e.send_signal(signal.SIGHUP)
        wait_generation(e, gen + 1)
        e.wait_workers(3, timeout=10)
        windows.append((began, time.monotonic() + 0.5))
        assert load.wait_ok(50), load.stats.summary()
        # Fewer workers: no socket closes (what is queued on it would be reset); the
        # third socket is served by worker 0 of the new generation.
        began = time.monotonic()
        rewrite(e, e.conf_path.read_text().replace("worker_processes 3;", "worker_processes 1;"))
        e.send_signal(signal.SIGHUP)
        wait_generation(e, gen + 2)
        e.wait_workers(1, timeout=10)
        windows.append((began, time.monotonic() + 0.5))
        assert load.wait_ok(100), load.stats.summary()
        # every one of the three sockets still gets connections, and they are served
        for _ in range(60):
            with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 200"), "a connection on a kept socket"
    check_clean(load.stats, windows, "reactor begin_quit, /tmp/edge-requests-for-lead.txt item 1")


@pytest.mark.timeout(60)
def test_bad_config_on_reload_keeps_the_old_one_and_marks_not_ready(edge):
    e = start(edge)
    workers = e.wait_workers(2)
    wait_generation(e, 1)
    good = e.conf_path.read_text()
    bad = good.replace('location / {', 'location / {\n            proxy_pas http://x;', 1)
    line = next(n for n, text in enumerate(bad.splitlines(), 1) if "proxy_pas " in text)

    with Load(e.port, check=lambda body: body == b"v0") as load:
        assert load.wait_ok(20)
        rewrite(e, bad)
        r = run_edge("-s", "reload", "-c", e.conf_path)
        assert r.returncode == 1
        assert f'unknown directive "proxy_pas" in {e.conf_path}:{line}' in r.stderr
        # The master itself, told by HUP, refuses it too, and says where.
        e.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while f"{e.conf_path}:{line}" not in e.error_log:
            assert time.monotonic() < deadline, e.report()
            time.sleep(0.01)
        assert "[emerg]" in e.error_log
        r = get(e.port, "/ready")
        assert r.status == 503 and b"config failed" in r.body, r
        assert load.wait_ok(20)
    assert load.stats.failures == [], load.stats.summary()
    assert e.worker_pids() == workers
    assert get(e.port, "/").body == b"v0"

    # Fixed: the next reload applies, and the node is ready again.
    rewrite(e, good.replace('"v0"', '"v1"'))
    e.send_signal(signal.SIGHUP)
    wait_generation(e, 2)
    assert get(e.port, "/").body == b"v1"
    assert get(e.port, "/ready").status == 200


@pytest.mark.timeout(60)
def test_a_storm_of_hups_ends_on_the_last_config(edge):
    e = start(edge)
    e.wait_workers(2)
    wait_generation(e, 1)
    t0 = time.monotonic()
    for k in range(1, 51):
        set_version(e, k)
        e.send_signal(signal.SIGHUP)
        time.sleep(0.015)  # 50 HUPs within about a second
    assert time.monotonic() - t0 < 2.0
    deadline = time.monotonic() + 15
    while get(e.port, "/").body != b"v50":
        assert time.monotonic() < deadline, e.report()
        time.sleep(0.02)
    time.sleep(0.3)
    st = state(e)
    try:
        settled = st.generation
        assert st.workers_up == st.workers_expected == 2
    finally:
        st.close()
    # Serialized and folded: fewer reloads than signals, never two at once, the last
    # one read the last file.
    assert 2 <= settled <= 51
    assert e.error_log.count("received, reconfiguring") >= 1
    assert get(e.port, "/").body == b"v50"
    assert alive(e.pid)


def test_config_test_binds_nothing(edge, tmp_path):
    """`edge -t` on the config of a running edge succeeds: it opens no socket (a
    SO_REUSEPORT one would join the group and take a share of the connections)."""
    e = start(edge)
    e.wait_workers(2)
    from support.edge import listening_inodes
    before = listening_inodes(e.port)
    r = run_edge("-t", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert listening_inodes(e.port) == before
    # And with the port held by a plain (not SO_REUSEPORT) socket: still fine.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        conf = tmp_path / "other.conf"
        conf.write_text(e.conf_path.read_text().replace(str(e.port), str(holder.getsockname()[1])))
        r = run_edge("-t", "-c", conf)
        assert r.returncode == 0, r.stderr
    finally:
        holder.close()


def _owner_of(local_port, server_port, pids):
    """Which of `pids` holds the server side of the connection from `local_port`."""
    from support.edge import socket_inodes
    with open("/proc/net/tcp") as f:
        rows = f.read().splitlines()[1:]
    inode = None
    for row in rows:
        fields = row.split()
        lport = int(fields[1].rsplit(":", 1)[1], 16)
        rport = int(fields[2].rsplit(":", 1)[1], 16)
        if lport == server_port and rport == local_port:
            inode = int(fields[9])
    if inode is None:
        return None
    for pid in pids:
        if inode in socket_inodes(pid):
            return pid
    return None


@pytest.mark.timeout(60)
def test_kill_9_a_worker_under_load(edge):
    """Only the killed worker's connections fail; it is back within a second."""
    e = start(edge)
    workers = e.wait_workers(2)
    wait_generation(e, 1)
    with Load(e.port, check=lambda body: body == b"v0", keepalive=6, oneshot=2) as load:
        assert load.wait_ok(100)
        ports = load.keepalive_ports()
        owners = {p: _owner_of(p, e.port, workers) for p in ports}
        victim = workers[0]
        victim_ports = {p for p, pid in owners.items() if pid == victim}
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = killed_at + 1.0
        while True:
            now = e.worker_pids()
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, f"no respawn within 1 s: {now}\n{e.report()}"
            time.sleep(0.005)
        respawned_in = time.monotonic() - killed_at
        assert load.wait_ok(100)
    stats = load.stats
    assert respawned_in < 1.0
    # Every keep-alive connection that broke was the victim's.
    broken = [f.local_port for f in stats.failures if f.kind == "keepalive"]
    broken += [p for p, _ in stats.stale_events]
    assert set(broken) <= victim_ports, (victim_ports, owners, stats.summary())
    assert len(broken) <= len(victim_ports)
    # A one-shot client loses a request only if the victim had accepted its connection
    # when it died: at most one per one-shot thread, at the moment of the kill. New
    # connections that land on the dead worker's socket wait in its backlog (the master
    # keeps the socket) and are served by its successor.
    oneshot = [f for f in stats.failures if f.kind == "oneshot"]
    assert len(oneshot) <= 2, stats.summary()
    assert all(killed_at <= f.when <= killed_at + respawned_in + 0.5 for f in oneshot), \
        stats.summary()


@pytest.mark.timeout(60)
def test_reload_that_moves_the_pid_file(edge):
    """A changed `pid` directive: the new pid file is written, the old one removed,
    and the state file (drain flag, readiness) moves along; still in place."""
    e = start(edge)
    workers = e.wait_workers(2)
    wait_generation(e, 1)
    moved = e.pid_path.with_name("moved.pid")
    rewrite(e, e.conf_path.read_text().replace(f"pid {e.pid_path};", f"pid {moved};"))
    e.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not moved.exists():
        assert time.monotonic() < deadline, e.report()
        time.sleep(0.01)
    assert moved.read_text().strip() == str(e.pid)
    assert not e.pid_path.exists()
    assert not Path(str(e.pid_path) + ".state").exists()
    r = run_edge("drain", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert get(e.port, "/ready").status == 503
    assert e.worker_pids() == workers
    e.pid_path = moved   # for the fixture's teardown and the checks below
    r = run_edge("status", "-c", e.conf_path)
    assert "generation 2," in r.stdout and "draining: yes" in r.stdout, r.stdout
    assert e.stop() == 0
    assert not moved.exists()
    # The state file stays after the stop, with the drain flag for the next start.
    from edge._core.reactor import SharedState
    st = SharedState.open(str(moved) + ".state")
    try:
        assert st.draining and st.workers_expected == 0
    finally:
        st.close()


@pytest.mark.timeout(60)
def test_a_worker_that_does_not_answer_a_reload_is_replaced(edge):
    """A stopped (hung) worker cannot switch in place: after the ack timeout it is
    replaced by a fresh worker on the new generation, and the other keeps its pid."""
    conf = CONF.replace("worker_shutdown_timeout 5s;", "worker_shutdown_timeout 1s;")
    e = start(edge, conf)
    hung, healthy = e.wait_workers(2)
    wait_generation(e, 1)
    os.kill(hung, signal.SIGSTOP)
    try:
        set_version(e, 1)
        t0 = time.monotonic()
        e.send_signal(signal.SIGHUP)
        wait_generation(e, 2, timeout=20)
        took = time.monotonic() - t0
        pids = e.worker_pids()
        assert healthy in pids
        fresh = [p for p in pids if p not in (hung, healthy)]
        assert len(fresh) == 1, pids
        assert 4.0 <= took < 10, f"replaced after {took:.1f}s (ack timeout 5 s)"
        assert f"worker process {hung} did not switch to generation 2" in e.error_log
        # The hung one is retired: KILLed after worker_shutdown_timeout + margin.
        deadline = time.monotonic() + 10
        while alive(hung):
            assert time.monotonic() < deadline, e.report()
            time.sleep(0.05)
        for _ in range(10):
            assert get(e.port, "/").body == b"v1"
    finally:
        try:
            os.kill(hung, signal.SIGCONT)
        except ProcessLookupError:
            pass
