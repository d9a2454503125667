"""The master/worker process model of a real edge: workers, respawn, signals, config errors."""

import os
import re
import signal
import socket
import threading
import time

import pytest

from support import Conn, alive, get

SIMPLE = """
worker_processes 2;
http {
    server { listen 127.0.0.1:@PORT@; location / { return 200 "ok"; } }
}
"""


def _serves(port, n=20):
    for i in range(n):
        r = get(port, f"/{i}", timeout=5)
        assert (r.status, r.body) == (200, b"ok"), r


def test_worker_processes_2(edge):
    e = edge(SIMPLE)
    workers = e.wait_workers(2)
    assert e.pid not in workers
    time.sleep(0.5)  # not a timing check: the same two workers are still there, none crash-looping
    assert e.worker_pids() == workers
    _serves(e.port)


def test_worker_processes_1(edge):
    e = edge(SIMPLE.replace("worker_processes 2;", "worker_processes 1;"))
    e.wait_workers(1)
    _serves(e.port, 5)


def test_pid_file(edge):
    e = edge(SIMPLE)
    assert e.pid_path.read_text().strip() == str(e.pid)
    assert e.stop() == 0
    assert not e.pid_path.exists(), "the pid file is removed when the master exits"


def _wait_new_worker(e, old: set, gone: set, limit=1.0):
    t0 = time.monotonic()
    while True:
        now = set(e.worker_pids())
        new = now - old
        if new and len(now) == len(old) and not (now & gone):
            return time.monotonic() - t0, now
        if time.monotonic() - t0 > limit:
            return None, now
        time.sleep(0.005)


def test_killed_worker_is_respawned(edge):
    e = edge(SIMPLE)
    workers = set(e.wait_workers(2))
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    took, now = _wait_new_worker(e, workers, {victim})
    assert took is not None, f"no new worker within 1.0 s of kill -9 {victim}: workers now {sorted(now)}\n{e.report()}"
    assert not alive(victim)
    _serves(e.port)
    assert set(e.worker_pids()) == now, "the respawned set is stable"


def test_all_workers_killed_are_respawned(edge):
    e = edge(SIMPLE)
    workers = set(e.wait_workers(2))
    for w in workers:
        os.kill(w, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while True:
        now = set(e.worker_pids())
        if len(now) == 2 and not (now & workers):
            break
        assert time.monotonic() < deadline, f"workers {sorted(workers)} killed; 1 s later: {sorted(now)}"
        time.sleep(0.005)
    _serves(e.port)


def test_connections_queued_on_dead_worker_socket_are_served(edge):
    """The master keeps every listen socket: connections that reach the socket of a
    killed worker wait in its backlog and are served by the respawned worker."""
    e = edge(SIMPLE)
    workers = set(e.wait_workers(2))
    for w in workers:
        os.kill(w, signal.SIGKILL)
    results = []

    def one(i):
        try:
            results.append(get(e.port, f"/{i}", timeout=10).status)
        except Exception as ex:  # noqa: BLE001
            results.append(repr(ex))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results == [200] * 20


PROXY_SLOW = """
worker_processes 2;
worker_shutdown_timeout 20s;
http {
    upstream backend { server @UP@; keepalive 16; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://backend; proxy_read_timeout 60s; }
    }
}
"""


@pytest.mark.timeout(60)
def test_quit_finishes_inflight_request_then_exits_0(edge, upstream):
    e = edge(PROXY_SLOW, UP=upstream)
    e.wait_workers(2)
    with Conn(e.port, timeout=30) as c:
        c.send_request("GET", "/slow/2")
        upstream.wait_requests(1, timeout=10)
        e.send_signal(signal.SIGQUIT)
        r = c.read_response()
        assert (r.status, r.body) == (200, b"slow ok\n"), "the in-flight request completes after QUIT"
        rc = e.wait_exit(25)
    assert rc is not None, f"master still running 25 s after QUIT\n{e.report()}"
    assert rc == 0, f"master exit code after QUIT: {rc}\n{e.report()}"
    e.check_no_leftovers()
    assert not e.problems


@pytest.mark.timeout(60)
def test_quit_closes_idle_keepalive_connections(edge):
    e = edge(SIMPLE.replace("worker_processes 2;", "worker_processes 2;\nworker_shutdown_timeout 30s;"))
    e.wait_workers(2)
    conns = [Conn(e.port) for _ in range(4)]
    try:
        for c in conns:
            assert c.request("GET", "/").status == 200
        e.send_signal(signal.SIGQUIT)
        for c in conns:
            assert c.wait_closed(10), "an idle keep-alive connection stays open after QUIT"
        rc = e.wait_exit(10)
        assert rc == 0, f"master after QUIT with only idle connections: {rc} (worker_shutdown_timeout is 30s)"
    finally:
        for c in conns:
            c.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_fast_stop(edge, upstream, sig):
    e = edge(PROXY_SLOW, UP=upstream)
    workers = e.wait_workers(2)
    with Conn(e.port, timeout=30) as c:
        c.send_request("GET", "/slow/30")
        upstream.wait_requests(1, timeout=10)
        e.send_signal(sig)
        rc = e.wait_exit(5)
        assert rc is not None, f"master still running 5 s after {sig.name} with a 30 s request in flight"
        assert rc == 0, f"exit code after {sig.name}: {rc}"
    e.check_no_leftovers()
    assert not e.problems
    assert not any(alive(w) for w in workers)


BAD_CONFIGS = [
    ("unknown_directive", """
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            proxy_pas http://127.0.0.1:1;
        }
    }
}
""", "proxy_pas", r'unknown directive "proxy_pas"'),
    ("not_allowed_here", """
http {
    return 200 "x";
    server { listen 127.0.0.1:@PORT@; }
}
""", "return 200", r'"return" directive is not allowed here'),
    ("bad_arg_count", """
http {
    server {
        listen;
    }
}
""", "listen;", r'invalid number of arguments in "listen" directive'),
    ("bad_number", """
worker_processes lots;
http {
    server { listen 127.0.0.1:@PORT@; location / { return 200; } }
}
""", "worker_processes lots", r"invalid value"),
    ("bad_time", """
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://127.0.0.1:1; proxy_read_timeout 5parsecs; }
    }
}
""", "5parsecs", r"invalid value"),
    ("unknown_upstream_name", """
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://nosuchupstream; }
    }
}
""", "nosuchupstream", r"nosuchupstream"),
    ("unexpected_close", """
http {
    server { listen 127.0.0.1:@PORT@; }
}
}
""", None, r'unexpected "}"'),
    ("unclosed_block", """
http {
    server {
        listen 127.0.0.1:@PORT@;
""", None, r"unexpected end of file"),
]


@pytest.mark.parametrize("name,conf,needle,message", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_exits_1_with_file_and_line(edge, name, conf, needle, message):
    e = edge.create(conf)
    e._alloc_ports()
    e.spawn()
    rc = e.wait_exit(15)
    assert rc is not None, f"edge kept running with a bad config\n{e.report()}"
    assert rc == 1, f"exit code {rc}\n{e.report()}"
    err = e.stderr
    assert "[emerg]" in err, f"no [emerg] message on stderr: {err!r}"
    assert re.search(message, err), f"expected /{message}/ in stderr: {err!r}"
    if needle is not None:
        where = f"{e.conf_path}:{e.line_of(needle)}"
        assert where in err, f"expected {where} in stderr: {err!r}"
    else:
        assert re.search(re.escape(str(e.conf_path)) + r":\d+", err), f"no file:line in stderr: {err!r}"
    e.check_no_leftovers()
    assert not e.problems
    port = e.ports.get("PORT")
    if port:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "a failed start left a port listening"
