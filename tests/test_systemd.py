"""systemd integration: the sd_notify datagrams edge sends (captured on a test
NOTIFY_SOCKET, path and abstract namespace), the unit file, and the NOFILE limit."""

import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from support import alive, get
from test_upgrade import pid_in, serves, stop_master, wait_for, workers_of

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "edge.service"

pytestmark = pytest.mark.edge_only

CONF = """
worker_processes 2;
worker_shutdown_timeout 5s;
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "ok"; }
    }
}
"""


class NotifySocket:
    """A datagram socket standing in for systemd: collects what edge sends, and at the
    moment each message arrives records a probe of the world (is the port serving, what
    does the pid file say)."""

    def __init__(self, address, probe=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.env_value = address if isinstance(address, str) and not address.startswith("\0") \
            else "@" + address[1:]
        self.messages = []          # [(fields dict, probe result, time)]
        self.probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            seen = self.probe(fields) if self.probe else None
            self.messages.append((fields, seen, time.monotonic()))

    def wait(self, predicate, timeout=15.0, after=-1):
        """The index of the first message (after index `after`) that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (fields, _, _) in enumerate(list(self.messages)):
                if i > after and predicate(fields):
                    return i
            assert time.monotonic() < deadline, f"no such notification in {self.kinds()}"
            time.sleep(0.01)

    def kinds(self):
        return [sorted(k for k in f if k != "STATUS") for f, _, _ in self.messages]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    made = []

    def make(abstract=False, probe=None):
        address = f"\0edge-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify")
        n = NotifySocket(address, probe)
        monkeypatch.setenv("NOTIFY_SOCKET", n.env_value)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()


def _serving(port):
    try:
        return get(port, "/", timeout=2).status == 200
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_ready_reloading_stopping_in_order(edge, notify):
    box = {}
    n = notify(probe=lambda f: (_serving(box["port"]) if "READY" in f and "port" in box else None))
    e = edge.create(CONF)
    e._alloc_ports()
    box["port"] = e.ports["PORT"]
    e.spawn()
    e.wait_ready()
    n.wait(lambda f: f.get("READY") == "1")
    fields, serving, _ = n.messages[0]
    assert fields.get("READY") == "1", n.kinds()
    assert serving is True, "READY=1 came before the port served"
    assert len(e.worker_pids()) == 2

    # A reload: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, now), then READY=1.
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    e.send_signal(signal.SIGHUP)
    i = n.wait(lambda f: f.get("RELOADING") == "1")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    usec = int(n.messages[i][0]["MONOTONIC_USEC"])
    assert before <= usec <= after
    j = n.wait(lambda f: f.get("READY") == "1", after=i)
    assert n.kinds()[i + 1:j] == [], "READY=1 is the next message after RELOADING=1"
    assert n.messages[j][1] is True, "READY=1 after reload while not serving"

    # A failed reload also ends in READY=1 (the old generation serves), saying so.
    e.conf_path.write_text(e.conf_path.read_text().replace("return 200", "retrun 200"))
    count = len(n.messages)
    e.send_signal(signal.SIGHUP)
    wait_for(lambda: len(n.messages) >= count + 2, 10, "RELOADING and READY after a bad reload")
    (r1, _, _), (r2, _, _) = n.messages[count:count + 2]
    assert r1.get("RELOADING") == "1" and r2.get("READY") == "1", n.kinds()
    assert "failed" in r2.get("STATUS", ""), r2

    # Stop: STOPPING=1, and it is the last word.
    e.send_signal(signal.SIGQUIT)
    assert e.wait_exit(15) == 0
    time.sleep(0.2)
    assert n.messages[-1][0] == {"STOPPING": "1"}, n.kinds()
    assert sum("STOPPING" in f for f, _, _ in n.messages) == 1
    assert not any("MAINPID" in f for f, _, _ in n.messages)


@pytest.mark.timeout(30)
def test_abstract_namespace_notify_socket(edge, notify):
    n = notify(abstract=True)
    e = edge(CONF)
    n.wait(lambda f: f.get("READY") == "1")
    e.send_signal(signal.SIGTERM)
    assert e.wait_exit(10) == 0
    n.wait(lambda f: f.get("STOPPING") == "1", timeout=5)


@pytest.mark.timeout(90)
def test_mainpid_after_upgrade_with_the_pid_file_written_first(edge, notify):
    box = {}
    n = notify(probe=lambda f: pid_in(box["pid_path"]) if "MAINPID" in f else None)
    e = edge.create(CONF)
    box["pid_path"] = e.pid_path
    e.start()
    old = e.pid
    new = None
    try:
        n.wait(lambda f: f.get("READY") == "1")
        os.kill(old, signal.SIGUSR2)
        i = n.wait(lambda f: "MAINPID" in f)
        fields, pid_file_then, _ = n.messages[i]
        new = int(fields["MAINPID"])
        assert new != old and alive(new)
        assert fields.get("READY") == "1"
        assert pid_file_then == new, "MAINPID= was sent before the pid file named the new master"
        wait_for(lambda: serves(e, new), 10, "the new master's workers")

        # The old master retires: it must not say STOPPING=1 (the service goes on).
        os.kill(old, signal.SIGWINCH)
        wait_for(lambda: not workers_of(old, exclude=[new]), 15, "old workers to exit")
        os.kill(old, signal.SIGQUIT)
        assert e.wait_exit(15) == 0
        time.sleep(0.2)
        assert not any("STOPPING" in f for f, _, _ in n.messages), n.kinds()
        assert get(e.port, "/").status == 200

        # The new master's stop is the service's stop.
        stop_master(new)
        n.wait(lambda f: f.get("STOPPING") == "1", timeout=5)
    finally:
        stop_master(new)


@pytest.mark.timeout(60)
def test_mainpid_goes_back_to_the_old_master_on_rollback(edge, notify):
    n = notify()
    e = edge(CONF)
    old = e.pid
    new = None
    try:
        n.wait(lambda f: f.get("READY") == "1")
        os.kill(old, signal.SIGUSR2)
        i = n.wait(lambda f: "MAINPID" in f)
        new = int(n.messages[i][0]["MAINPID"])
        wait_for(lambda: serves(e, new), 10, "the new master's workers")
        os.kill(new, signal.SIGTERM)
        wait_for(lambda: not alive(new), 10, "the new master to exit")
        j = n.wait(lambda f: f.get("MAINPID") == str(old))
        assert j > i
        # The new master's fast stop during a rollback is not the service stopping.
        assert not any("STOPPING" in f for f, _, _ in n.messages), n.kinds()
        wait_for(lambda: pid_in(e.pid_path) == old, 5, "the pid file back")
        assert get(e.port, "/").status == 200
    finally:
        stop_master(new)


@pytest.mark.timeout(30)
def test_master_raises_its_soft_nofile_limit_to_the_hard_limit(edge):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"hard NOFILE limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        e = edge(CONF)           # inherits soft=256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with open(f"/proc/{e.pid}/limits") as f:
        line = next(l for l in f if l.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)], line
    worker = e.wait_workers(2)[0]
    with open(f"/proc/{worker}/limits") as f:
        line = next(l for l in f if l.startswith("Max open files"))
    assert line.split()[3] == str(hard), "workers inherit the raised limit"


# --------------------------------------------------------------------------- the unit


def unit_settings():
    settings = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key), []).append(value)
    return settings


def test_unit_file_has_what_the_service_needs():
    s = unit_settings()

    def one(key):
        assert ("Service", key) in s, f"{key}= missing from {UNIT}"
        return s[("Service", key)][-1]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "all"           # MAINPID= comes from the new master
    assert " -t" in one("ExecStartPre")
    assert " -s reload" in one("ExecReload")
    assert one("KillMode") == "mixed"
    assert int(one("LimitNOFILE")) >= 65536
    assert "CAP_NET_BIND_SERVICE" in one("AmbientCapabilities")
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("PrivateTmp") == "yes"
    writable = one("ReadWritePaths").split()
    assert "/run/edge" in writable and "/var/log/edge" in writable
    assert "AF_UNIX" in one("RestrictAddressFamilies")  # sd_notify and the control sockets
    assert ("Install", "WantedBy") in s


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    # The unit names /usr/bin/edge; verify checks that executables exist, so point it
    # at one that does, and keep everything else as written.
    text = UNIT.read_text().replace("/usr/bin/edge", "/bin/true")
    unit = tmp_path / "edge.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    problems = [l for l in (r.stdout + r.stderr).splitlines()
                if "edge.service" in l and "network-online" not in l]
    assert r.returncode == 0 and problems == [], r.stdout + r.stderr


@pytest.mark.timeout(90)
def test_a_notify_socket_nobody_reads_never_stops_the_master(edge, tmp_path, monkeypatch):
    """The kernel queues only a few datagrams (net.unix.max_dgram_qlen) on a socket that
    is never read: the master's notifications are dropped then, and it goes on reloading
    and respawning workers."""
    path = str(tmp_path / "deaf-notify")
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(path)             # bound, never read
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        e = edge(CONF)
        for generation in range(2, 22):     # 20 reloads: 40 notifications, far past the queue
            e.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while f"configuration generation {generation} is in force" not in e.error_log:
                assert time.monotonic() < deadline, f"reload {generation} did not finish"
                time.sleep(0.02)
        victim = e.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        e.wait_workers(2, exclude=[victim])
        assert _serving(e.port)
        assert e.error_log.count("sd_notify to") == 1       # logged once
    finally:
        deaf.close()
