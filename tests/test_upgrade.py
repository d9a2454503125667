"""Graceful binary upgrade (USR2 / `edge -s upgrade`), nginx's semantics, under load:
the whole sequence five times, both rollback paths, and a new binary that fails."""

import os
import signal
import time

import pytest

from support import alive, get
from support.edge import children_of
from support.load import Load, check_clean
from test_reload import run_edge, state

pytestmark = pytest.mark.edge_only

CONF = """
worker_processes 2;
worker_shutdown_timeout 5s;
http {
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "ok"; }
        location = /ready { health ready; }
    }
}
"""

# The graceful stop of the old workers (WINCH, or QUIT to a master) goes through the
# worker's begin_quit, which can drop a connection it accepted but has not read yet (EOF
# or RST to the client): see /tmp/edge-requests-for-lead.txt item 1. Until that is fixed,
# a failure inside a graceful-stop window makes the test xfail (visibly, with the
# count); a failure anywhere else fails it.


def pid_in(path):
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def serves(e, pid):
    """The master `pid` has written the state block and all its workers are up."""
    try:
        st = state(e)
    except (OSError, ValueError):
        return False
    try:
        return st.master_pid == pid and st.generation > 0 and 0 < st.workers_expected <= st.workers_up
    finally:
        st.close()


def workers_of(master, exclude=()):
    return [p for p in children_of(master) if p not in exclude]


def stop_master(pid, timeout=15):
    """Stop a master that is not our child (exec'd by an upgrade): QUIT, wait."""
    if pid is None or not alive(pid):
        return
    os.kill(pid, signal.SIGQUIT)
    wait_for(lambda: not alive(pid), timeout, f"master {pid} to exit")


def usr2(e, old):
    """USR2 to `old`; returns the new master's pid once it serves."""
    oldbin = e.pid_path.with_name(e.pid_path.name + ".oldbin")
    os.kill(old, signal.SIGUSR2)
    wait_for(lambda: pid_in(e.pid_path) not in (None, old), 20, "the new master's pid file")
    new = pid_in(e.pid_path)
    assert pid_in(oldbin) == old, "the old pid file becomes <pid>.oldbin"
    wait_for(lambda: serves(e, new), 20, f"new master {new} to serve")
    assert alive(old), "the old master keeps running until QUIT"
    return new


def assert_clean(stats, graceful_windows=()):
    check_clean(stats, graceful_windows,
                "reactor begin_quit, /tmp/edge-requests-for-lead.txt item 1")


@pytest.mark.timeout(150)
def test_five_upgrades_under_load(edge):
    e = edge(CONF)
    e.wait_workers(2)
    masters = [e.pid]
    windows = []
    try:
        with Load(e.port, check=lambda body: body == b"ok") as load:
            assert load.wait_ok(50), load.stats.summary()
            for i in range(5):
                old = masters[-1]
                began = time.monotonic()
                r = run_edge("-s", "upgrade", "-c", e.conf_path, timeout=60)
                windows.append((began, time.monotonic() + 0.5))
                assert r.returncode == 0, r.stderr + "\n" + e.report()
                new = pid_in(e.pid_path)
                assert new != old and alive(new)
                masters.append(new)
                # Each step is reported.
                for step in (f"sending USR2 to master {old}", f"new master {new} started",
                             f"new master {new} serves", f"sending WINCH to old master {old}",
                             "old worker processes have exited",
                             f"sending QUIT to old master {old}", f"done, master {new} serves"):
                    assert step in r.stderr, r.stderr
                assert not alive(old)
                assert not e.pid_path.with_name(e.pid_path.name + ".oldbin").exists()
                assert len(workers_of(new)) == 2
                assert load.wait_ok(50), load.stats.summary()
        assert load.stats.ok > 500
        assert e.wait_exit(1) == 0, "the first master exits 0 after QUIT"
        # Inherited, not rebound: the same listening sockets all along.
        assert e.error_log.count(f"using inherited sockets: 127.0.0.1:{e.port} (2)") == 5
        assert get(e.port, "/").status == 200
        assert_clean(load.stats, windows)
    finally:
        stop_master(pid_in(e.pid_path))
    assert not e.pid_path.exists()


@pytest.mark.timeout(90)
def test_rollback_with_hup_to_the_old_master_and_quit_to_the_new(edge):
    e = edge(CONF)
    e.wait_workers(2)
    old = e.pid
    new = None
    try:
        with Load(e.port, check=lambda body: body == b"ok") as load:
            assert load.wait_ok(50)
            new = usr2(e, old)
            began = time.monotonic()
            os.kill(old, signal.SIGWINCH)
            wait_for(lambda: not workers_of(old, exclude=[new]), 15, "old workers to exit")
            windows = [(began, time.monotonic() + 0.5)]
            assert load.wait_ok(50)
            # Roll back: the old master starts workers again (same config, no reload) ...
            os.kill(old, signal.SIGHUP)
            wait_for(lambda: len(workers_of(old, exclude=[new])) == 2, 5, "old workers back")
            # ... and the new master leaves gracefully.
            began = time.monotonic()
            os.kill(new, signal.SIGQUIT)
            wait_for(lambda: not alive(new), 15, "the new master to exit")
            windows.append((began, time.monotonic() + 0.5))
            oldbin = e.pid_path.with_name(e.pid_path.name + ".oldbin")
            wait_for(lambda: pid_in(e.pid_path) == old and not oldbin.exists(), 5,
                     "the old pid file back, and no .oldbin")
            wait_for(lambda: serves(e, old), 5, "the old master's state file back")
            assert load.wait_ok(50)
        assert e.running()
        assert get(e.port, "/").status == 200
        assert_clean(load.stats, windows)
    finally:
        stop_master(new)


@pytest.mark.timeout(90)
def test_rollback_with_term_to_the_new_master(edge):
    e = edge(CONF)
    e.wait_workers(2)
    old = e.pid
    new = None
    try:
        with Load(e.port, check=lambda body: body == b"ok") as load:
            assert load.wait_ok(50)
            new = usr2(e, old)
            began = time.monotonic()
            os.kill(old, signal.SIGWINCH)
            wait_for(lambda: not workers_of(old, exclude=[new]), 15, "old workers to exit")
            winch = (began, time.monotonic() + 0.5)
            assert load.wait_ok(50)
            termed_at = time.monotonic()
            os.kill(new, signal.SIGTERM)
            # The old master notices its new binary is gone and starts workers itself.
            wait_for(lambda: not alive(new), 10, "the new master to exit")
            wait_for(lambda: len(workers_of(old)) == 2, 5, "old workers back")
            back_at = time.monotonic()
            wait_for(lambda: pid_in(e.pid_path) == old, 5, "the old pid file back")
            assert load.wait_ok(100)
        stats = load.stats
        # TERM is a fast stop: the new workers drop what they had in flight (at most one
        # request per client thread), and nothing fails after that. Connections that
        # arrive while no worker runs wait in the backlog: the old master kept the sockets.
        late = [f for f in stats.failures if f.when > back_at + 0.5]
        assert late == [], stats.summary()
        early = [f for f in stats.failures if f.when < termed_at]
        assert len(stats.failures) - len(early) <= 4, stats.summary()
        assert get(e.port, "/").status == 200
        assert e.running()
        stats.failures = early
        assert_clean(stats, [winch])
    finally:
        stop_master(new)


@pytest.mark.timeout(60)
def test_a_new_binary_that_fails_leaves_the_old_master_serving(edge):
    e = edge(CONF)
    e.wait_workers(2)
    old = e.pid
    good = e.conf_path.read_text()
    with Load(e.port, check=lambda body: body == b"ok") as load:
        assert load.wait_ok(50)
        # The new master cannot load this config; USR2 sent directly (the CLI would
        # have refused to signal).
        e.conf_path.write_text(good.replace("worker_processes 2;", "worker_processes 2;\nbogus;"))
        r = run_edge("-s", "upgrade", "-c", e.conf_path)
        assert r.returncode == 1 and "test failed, not upgrading" in r.stderr, r.stderr
        pid_before = e.pid_path.stat().st_ino
        os.kill(old, signal.SIGUSR2)
        wait_for(lambda: "new binary process" in e.error_log and "exited with code 1" in e.error_log,
                 20, "the new binary to fail")
        wait_for(lambda: pid_in(e.pid_path) == old and e.pid_path.stat().st_ino != pid_before,
                 5, "the old pid file back")
        assert not e.pid_path.with_name(e.pid_path.name + ".oldbin").exists()
        # The new master said why, with file:line, on the stderr it inherited.
        assert f"unknown directive \"bogus\" in {e.conf_path}:" in e.stderr, e.stderr
        assert load.wait_ok(50)

        # A new binary that passes the config test but fails at start (its error log
        # cannot be opened): `edge -s upgrade` reports it and exits 1.
        e.conf_path.write_text(good.replace(f"error_log {e.error_log_path} info;",
                                            "error_log /proc/no/such.log;"))
        r = run_edge("-s", "upgrade", "-c", e.conf_path)
        assert r.returncode == 1, r.stderr
        assert "the new binary failed to start" in r.stderr, r.stderr
        assert pid_in(e.pid_path) == old
        assert load.wait_ok(50)
    e.conf_path.write_text(good)
    assert_clean(load.stats)
    assert len(workers_of(old)) == 2
    assert serves(e, old)
    assert e.running()
