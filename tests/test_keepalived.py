"""keepalived in front of edge: the shipped check script, the shipped keepalived.conf,
and a failover between two real edge nodes in network namespaces.

The failover test builds, with `ip netns`, three namespaces on a private subnet that
exists only inside them (10.213.0.0/24; nothing is sent anywhere else):

    client ns: bridge 10.213.0.1 ── veth ── node a: eth0 10.213.0.2, edge :80, keepalived
                                  └─ veth ── node b: eth0 10.213.0.3, edge :80, keepalived

Each node runs edge (`return 200 "node=a"` on /, `health ready` on /readyz) and a real
keepalived on systemd/keepalived/keepalived.conf (the shipped example, with this
subnet's addresses, the repository's edge-check and `interval 1` substituted), which
moves the VIP 10.213.0.100 between them. A client in the client namespace sends one
request per new connection to the VIP, all along. What is asserted:

- every request gets 200 from one of the nodes: no HTTP error, no broken response. A
  request may take more than one TCP attempt: an attempt that fails to connect or gets
  no response byte is retried on a new connection every 0.2 s for up to 15 s (what an
  HTTP client may do for an idempotent request; the timeline of retries is printed);
- while both edges run (drain, undrain), no attempt is refused: only the VIP moves;
- `edge drain` on the master (a) moves the VIP to b within interval x fall + 3 s, and
  requests started after the move are served by b; edge on a is then stopped and
  started again (the documented maintenance flow): it comes back drained, its check
  fails and the VIP stays on b; `edge undrain` brings it back to a
  (preemption, the example's default) within rise x interval + master_down_interval
  + 2 s;
- stopping edge on a (no drain first: an unplanned stop) moves the VIP to b within
  interval x fall + 3 s; refused attempts happen only between the stop and the move;
  starting edge on a again brings the VIP back.

It skips, saying why, when the machine does not allow network namespaces (`ip netns
add` fails: no root, no CAP_SYS_ADMIN, a container without them) or keepalived is not
installed (scripts/test installs it from Debian).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from support import Conn

REPO = Path(__file__).resolve().parents[1]
KDIR = REPO / "systemd" / "keepalived"
CHECK = KDIR / "edge-check"
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
IP = shutil.which("ip") or "/usr/sbin/ip"

pytestmark = pytest.mark.edge_only

NODE_CONF = """
worker_processes 2;
http {
    server {
        listen 0.0.0.0:@PORT@;
        location = /readyz { health ready; }
        location = /healthz { health live; }
        location / { return 200 "node=@NODE@\\n"; }
    }
}
"""

LOCAL_CONF = """
worker_processes 1;
http {
    server {
        listen 127.0.0.1:@PORT@;
        location = /readyz { health ready; }
        location / { return 200 "ok\\n"; }
    }
}
"""


def run_edge(*args, timeout=30):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check(url, timeout=None):
    args = [str(CHECK), url] + ([str(timeout)] if timeout is not None else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_CHECK_")}
    return subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)


# -- the check script, against a local edge --------------------------------------------

def test_edge_check_is_executable_posix_sh():
    assert os.access(CHECK, os.X_OK), f"{CHECK} is not executable"
    assert CHECK.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(CHECK)]).returncode == 0


def test_edge_check_follows_readiness(edge):
    e = edge(LOCAL_CONF)
    url = f"http://127.0.0.1:{e.port}/readyz"
    p = check(url)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    # draining: 503, curl --fail exits 22
    assert run_edge("drain", "-c", e.conf_path).returncode == 0
    p = check(url)
    assert p.returncode == 22, (p.returncode, p.stderr)
    assert get_ok(e.port), "draining stopped the traffic"
    assert run_edge("undrain", "-c", e.conf_path).returncode == 0
    assert check(url).returncode == 0
    # a hung data plane: no answer within the timeout (28)
    (worker,) = e.wait_workers(1)
    os.kill(worker, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        p = check(url, 0.5)
        took = time.monotonic() - t0
    finally:
        os.kill(worker, signal.SIGCONT)
    assert p.returncode == 28, (p.returncode, p.stderr)
    assert took < 2.5, took
    assert check(url).returncode == 0
    # edge stopped: connection refused (7)
    e.stop()
    p = check(url)
    assert p.returncode == 7, (p.returncode, p.stderr)


def test_edge_check_environment_defaults(edge):
    e = edge(LOCAL_CONF)
    env = {**os.environ, "EDGE_CHECK_URL": f"http://127.0.0.1:{e.port}/readyz", "EDGE_CHECK_TIMEOUT": "2"}
    assert subprocess.run([str(CHECK)], env=env, timeout=30).returncode == 0
    env["EDGE_CHECK_URL"] = f"http://127.0.0.1:{e.port}/nothing-here-is-ready"   # 200 from `location /`
    assert subprocess.run([str(CHECK)], env=env, timeout=30).returncode == 0
    env["EDGE_CHECK_URL"] = f"http://127.0.0.1:{e.port}/readyz"
    assert run_edge("drain", "-c", e.conf_path).returncode == 0
    assert subprocess.run([str(CHECK)], env=env, timeout=30, capture_output=True).returncode == 22


def get_ok(port):
    with Conn(port) as c:
        return c.request("GET", "/").status == 200


# -- the shipped keepalived.conf -------------------------------------------------------

def render_example(ips=("192.0.2.11", "192.0.2.12"), vip="192.0.2.100", iface="eth0", interval=None,
                   script=str(CHECK)):
    """The shipped example with this test's values; every substitution must apply, so a
    change in the example that this test no longer matches fails loudly."""
    text = (KDIR / "keepalived.conf").read_text()
    subs = [("/usr/local/lib/edge/edge-check", script), ("192.0.2.11", ips[0]), ("192.0.2.12", ips[1]),
            ("192.0.2.100/24 dev eth0", f"{vip}/24 dev {iface}"), ("interface eth0", f"interface {iface}")]
    if interval is not None:
        subs.append(("    interval 2 ", f"    interval {interval} "))
    for old, new in subs:
        assert old in text, f"{old!r} not found in the shipped keepalived.conf"
        text = text.replace(old, new)
    return text


@pytest.mark.skipif(not os.path.exists(KEEPALIVED), reason="keepalived is not installed")
@pytest.mark.parametrize("node", ["edge1", "edge2"])
def test_example_config_is_valid(tmp_path, node):
    conf = tmp_path / "keepalived.conf"
    conf.write_text(render_example())
    p = subprocess.run([KEEPALIVED, "-t", "-f", str(conf), "-i", node], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Disabling track script" not in p.stdout + p.stderr
    dump = subprocess.run([KEEPALIVED, "-t", "-d", "-f", str(conf), "-i", node], capture_output=True,
                          text=True, timeout=30)
    assert dump.returncode == 0


def test_example_readme_documents_the_drain_flow():
    text = (KDIR / "README.md").read_text()
    steps = ["edge drain", "interval", "fall", "systemctl stop edge", "systemctl start edge", "edge undrain"]
    pos = [text.find(s) for s in steps]
    assert all(p >= 0 for p in pos), dict(zip(steps, pos))
    assert pos[0] < pos[3] < pos[4] < pos[5], "the drain flow is out of order"


# -- failover in network namespaces ----------------------------------------------------

SUBNET = "10.213.0"
VIP = f"{SUBNET}.100"
INTERVAL, FALL, RISE = 1, 2, 2
ADVERT = 1
MOVE_LIMIT = INTERVAL * FALL + 3.0       # interval x fall, plus the takeover and a margin
# preemption: rise checks, then BACKUP waits master_down_interval (3 x advert_int + skew)
# before it takes the VIP from a lower priority master
BACK_LIMIT = INTERVAL * RISE + 3 * ADVERT + 1 + 2.0

CLIENT = r'''
import errno, json, os, socket, sys, time
vip, port, out, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
REQ = b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"

def name(e):
    return errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__

def attempt():
    s = socket.socket()
    s.settimeout(2.0)
    try:
        s.connect((vip, port))
    except OSError as e:
        s.close()
        return "connect", name(e), b""
    data = b""
    try:
        s.settimeout(3.0)
        s.sendall(REQ)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        return ("broken" if data else "noresponse"), name(e), data
    finally:
        s.close()
    return ("response" if data else "noresponse"), "eof", data

with open(out, "a", buffering=1) as f:
    while not os.path.exists(stop):
        t0 = time.time()
        errors = []
        while True:
            kind, why, data = attempt()
            if kind in ("connect", "noresponse") and time.time() - t0 < 15:
                errors.append(f"{kind}:{why}@{time.time():.3f}")
                time.sleep(0.2)     # retry, on a new connection, until 15 s have passed
                continue
            break
        rec = {"t0": t0, "t1": time.time(), "errors": errors, "kind": kind, "status": None, "body": ""}
        if kind in ("response", "broken"):
            head, _, body = data.partition(b"\r\n\r\n")
            try:
                rec["status"] = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                pass
            rec["body"] = body.decode("latin-1")
        f.write(json.dumps(rec) + "\n")
        time.sleep(0.02)
'''


def _sh(*args, check_rc=True):
    p = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=30)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: exit {p.returncode}: {p.stderr.strip()}")
    return p


class Lab:
    """Three namespaces, a bridge and two veth pairs; cleaned up by close()."""

    def __init__(self, tmp_path):
        tag = f"{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
        self.ns = {"c": f"edgeka{tag}c", "a": f"edgeka{tag}a", "b": f"edgeka{tag}b"}
        self.ip = {"c": f"{SUBNET}.1", "a": f"{SUBNET}.2", "b": f"{SUBNET}.3"}
        self.tmp = tmp_path
        self.created = []
        self.procs = []

    def build(self):
        for key in ("c", "a", "b"):
            _sh(IP, "netns", "add", self.ns[key])
            self.created.append(self.ns[key])
            _sh(IP, "-n", self.ns[key], "link", "set", "lo", "up")
        c = self.ns["c"]
        _sh(IP, "-n", c, "link", "add", "br0", "type", "bridge")
        _sh(IP, "-n", c, "link", "set", "br0", "up")
        _sh(IP, "-n", c, "addr", "add", f"{self.ip['c']}/24", "dev", "br0")
        for key in ("a", "b"):
            # created directly inside the namespaces: nothing appears in the root one
            _sh(IP, "link", "add", f"v{key}", "netns", c, "type", "veth", "peer", "name", "eth0",
                "netns", self.ns[key])
            _sh(IP, "-n", c, "link", "set", f"v{key}", "master", "br0")
            _sh(IP, "-n", c, "link", "set", f"v{key}", "up")
            _sh(IP, "-n", self.ns[key], "addr", "add", f"{self.ip[key]}/24", "dev", "eth0")
            _sh(IP, "-n", self.ns[key], "link", "set", "eth0", "up")

    def popen(self, key, args, name):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen([IP, "netns", "exec", self.ns[key], *map(str, args)], stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((p, name, log))
        return p

    def run(self, key, args):
        return subprocess.run([IP, "netns", "exec", self.ns[key], *map(str, args)], capture_output=True,
                              text=True, timeout=30)

    def has_vip(self, key):
        out = _sh(IP, "-n", self.ns[key], "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return f" {VIP}/" in out

    def owner(self):
        a, b = self.has_vip("a"), self.has_vip("b")
        return "both" if a and b else "a" if a else "b" if b else None

    def wait_owner(self, key, timeout):
        deadline = time.time() + timeout
        while True:
            o = self.owner()
            if o == key:
                return time.time()
            if time.time() > deadline:
                raise AssertionError(f"VIP {VIP} not on node {key} within {timeout:g}s (owner: {o})\n"
                                     + self.logs())
            time.sleep(0.05)

    def stop_proc(self, p, name):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)    # keepalived's children share its group
        except ProcessLookupError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def logs(self):
        out = []
        for path in sorted(self.tmp.glob("keepalived-*.log")):
            out.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def close(self):
        for p, name, log in reversed(self.procs):
            self.stop_proc(p, name)
            log.close()
        for ns in reversed(self.created):
            # the namespace's processes are gone, so this frees its links too
            _sh(IP, "netns", "del", ns, check_rc=False)


def _netns_unavailable():
    if not os.path.exists(IP):
        return "iproute2 (`ip`) is not installed"
    name = f"edgekaprobe{os.getpid()}"
    p = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        return f"network namespaces are not allowed here: `ip netns add` failed: {p.stderr.strip()}"
    try:
        p = subprocess.run([IP, "-n", name, "link", "add", "x0", "type", "veth", "peer", "name", "x1"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            return f"veth pairs cannot be created in a network namespace: {p.stderr.strip()}"
        p = subprocess.run([IP, "-n", name, "link", "add", "br0", "type", "bridge"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            return f"bridges cannot be created in a network namespace: {p.stderr.strip()}"
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=30)
    return None


@pytest.fixture
def lab(tmp_path, edge):
    if not os.path.exists(KEEPALIVED):
        pytest.skip("keepalived is not installed (scripts/test installs it from Debian)")
    why = _netns_unavailable()
    if why:
        pytest.skip(why)
    lab = Lab(tmp_path)
    try:
        lab.build()
        lab.edges = {}
        for key in ("a", "b"):
            lab.edges[key] = edge.create(NODE_CONF, PORT=80, NODE=key, netns=lab.ns[key])
        yield lab
    finally:
        for e in getattr(lab, "edges", {}).values():
            if e.running():
                e.stop()
        lab.close()


def start_keepalived(lab, key):
    conf = lab.tmp / f"keepalived-{key}.conf"
    conf.write_text(render_example(ips=(lab.ip["a"], lab.ip["b"]), vip=VIP, interval=INTERVAL))
    node = {"a": "edge1", "b": "edge2"}[key]
    pid = lab.tmp / f"keepalived-{key}"
    return lab.popen(key, [KEEPALIVED, "-n", "-l", "-D", "-G", "-P", "-f", conf, "-i", node,
                           "-p", f"{pid}.pid", "-r", f"{pid}-vrrp.pid", "-c", f"{pid}-check.pid"],
                     f"keepalived-{key}")


def read_records(path):
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        if line.endswith("}"):
            recs.append(json.loads(line))
    return recs


@pytest.mark.timeout(120)
def test_failover_between_two_nodes(lab):
    ea = lab.edges["a"].start()
    lab.edges["b"].start()
    start_keepalived(lab, "a")
    start_keepalived(lab, "b")
    lab.wait_owner("a", 15)

    out = lab.tmp / "client.jsonl"
    stop = lab.tmp / "client.stop"
    client = lab.popen("c", [sys.executable, "-c", CLIENT, VIP, 80, out, stop], "client")
    events = {}
    try:
        time.sleep(1.0)
        assert read_records(out), "the client in the client namespace got nothing"

        # 1. the documented maintenance flow: drain, wait interval x fall, stop, start
        #    (still drained: the VIP stays on b), undrain (a takes it back)
        events["drain"] = time.time()
        assert run_edge("drain", "-c", ea.conf_path).returncode == 0
        events["moved_b1"] = lab.wait_owner("b", MOVE_LIMIT)
        time.sleep(1.0)
        assert lab.owner() == "b"
        assert ea.stop() == 0, ea.problems
        ea.start()
        events["restarted"] = time.time()
        p = lab.run("a", [CHECK, "http://127.0.0.1/readyz"])
        assert p.returncode == 22, f"a restarted drained node is ready: {p.returncode} {p.stderr}"
        time.sleep(INTERVAL * RISE + 1.0)       # long enough for a passing check to rise
        assert lab.owner() == "b", "a restarted drained node took the VIP back"

        # 2. undrain: a takes it back (preemption) once its check rises
        events["undrain"] = time.time()
        assert run_edge("undrain", "-c", ea.conf_path).returncode == 0
        events["moved_a1"] = lab.wait_owner("a", BACK_LIMIT)
        time.sleep(1.5)
        assert lab.owner() == "a"

        # 3. stop edge on a without draining first
        events["stop"] = time.time()
        assert ea.stop() == 0, ea.problems
        events["moved_b2"] = lab.wait_owner("b", MOVE_LIMIT)
        time.sleep(1.5)
        assert lab.owner() == "b"

        # 4. start it again: back to a
        events["start"] = time.time()
        ea.start()
        events["moved_a2"] = lab.wait_owner("a", BACK_LIMIT)
        time.sleep(1.0)
        assert lab.owner() == "a"
    finally:
        stop.touch()
        try:
            client.wait(10)
        except subprocess.TimeoutExpired:
            pass
    recs = read_records(out)
    report = _timeline(recs, events)

    # every request got a 200 from one of the nodes
    bad = [r for r in recs if r["status"] != 200 or r["body"] not in ("node=a\n", "node=b\n")]
    assert not bad, f"failed requests: {bad[:5]}\n{report}"

    def served(t_from, t_to):
        return {r["body"].strip() for r in recs if t_from <= r["t0"] and r["t1"] <= t_to}

    # who served between the moves (1 s after each move, to the next event)
    assert served(recs[0]["t0"], events["drain"]) == {"node=a"}, report
    assert served(events["moved_b1"] + 1.0, events["undrain"]) == {"node=b"}, report
    assert served(events["moved_a1"] + 1.0, events["stop"]) == {"node=a"}, report
    assert served(events["moved_b2"] + 1.0, events["start"]) == {"node=b"}, report
    assert served(events["moved_a2"] + 1.0, recs[-1]["t1"]) <= {"node=a"}, report

    # traffic really flowed in every phase
    marks = [recs[0]["t0"], events["drain"], events["restarted"], events["undrain"], events["stop"],
             events["start"], recs[-1]["t1"]]
    for lo, hi in zip(marks, marks[1:]):
        n = sum(1 for r in recs if lo <= r["t0"] < hi)
        assert n >= 5, f"only {n} requests between {lo:.3f} and {hi:.3f}\n{report}"

    # while both edges run, no attempt is refused: only the VIP moves
    def errors_between(lo, hi, kind=None):
        out = []
        for r in recs:
            for e in r["errors"]:
                t = float(e.rsplit("@", 1)[1])
                if lo <= t <= hi and (kind is None or kind in e):
                    out.append(e)
        return out

    refused_planned = errors_between(recs[0]["t0"], events["stop"], "ECONNREFUSED")
    assert not refused_planned, f"refused while draining/undraining: {refused_planned}\n{report}"
    # when edge stops unannounced, refusals stop once the VIP has moved
    late = errors_between(events["moved_b2"] + 1.0, events["start"])
    assert not late, f"connection errors after the VIP moved to b: {late}\n{report}"
    print(report)


def _timeline(recs, events):
    lines = ["events: " + ", ".join(f"{k}={v:.3f}" for k, v in events.items())]
    retried = [r for r in recs if r["errors"]]
    lines.append(f"requests: {len(recs)}, retried: {len(retried)}, "
                 f"max latency: {max((r['t1'] - r['t0'] for r in recs), default=0):.3f}s")
    for r in retried[:20]:
        errs = r["errors"]
        shown = errs if len(errs) <= 4 else errs[:2] + [f"... {len(errs) - 3} more ..."] + errs[-1:]
        lines.append(f"  {r['t0']:.3f} -> {r['t1']:.3f} {r['status']} {r['body'].strip()} {shown}")
    return "\n".join(lines)
