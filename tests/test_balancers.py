"""Load balancing (issue 11): the balancers, backup and down servers, passive health.

Every test runs real upstream servers (tests/support/upstream.py, which name themselves
in `X-Upstream`) behind a real edge with one worker, and counts where the requests went:

- round robin and random spread 10,000 requests by the weights, within 3 percentage
  points of each server's share (random's draws are > 6 sigma inside that);
- hash KEY consistent: a key always lands on the same server; when one of N servers is
  marked `down` (or removed from the config) only the keys it had move, and they are at
  most 1.2/N of all keys; the plain hash moves only the removed server's keys too; both
  read the key from the variables a user would hash on ($cookie_, $arg_, $http_, $uri,
  $request_uri, $remote_addr), also after a buffered request body went through the
  buffer the request head was read into; edge's hashes put keys where nginx's do;
- least_conn and ewma send most requests to the fast server when the other is slow;
- backup servers serve only when every primary is down or dead; `down` servers never;
- passive_fail_status: a 503 counts toward max_fails, so the server is skipped for
  fail_timeout (once, when proxy_next_upstream also retries it), and the transitions
  are logged;
- config errors name the file and the line.

nginx is the oracle: `EDGE_TEST_IMPL=nginx python3 -m pytest tests/test_balancers.py`
runs the tests of the directives nginx 1.22 has (round robin, least_conn, hash, random,
backup, down) under nginx; ewma, passive_fail_status and edge's log lines are edge_only.
"""

import shutil
import threading
import time
from collections import Counter

import pytest

from support import IMPL, Conn, EdgeProcess, Upstream, closed_port
from support.edge import NGINX

# edge keeps HTTP/1.1 connections to its upstreams; nginx needs telling (nginx only)
NGINX_KEEPALIVE = 'proxy_http_version 1.1; proxy_set_header Connection "";' if IMPL == "nginx" else ""


class Peer(Upstream):
    """An upstream that can be made slow (every response waits `delay` seconds) or
    broken (every response is `status`)."""

    def __init__(self, name):
        super().__init__(name)
        self.delay = 0.0
        self.status = None
        self.served = 0

    def respond(self, sock, req, keep):
        with self._lock:
            self.served += 1
        if self.delay:
            self._stop.wait(self.delay)
        if self.status is not None:
            body = b"broken\n"
            sock.sendall(b"HTTP/1.1 %d Broken\r\nX-Upstream: %s\r\nContent-Length: %d\r\n\r\n%s"
                         % (self.status, self.name.encode(), len(body), body))
            return keep
        return super().respond(sock, req, keep)


@pytest.fixture
def peers():
    made = []

    def make(n):
        for i in range(n):
            made.append(Peer(f"p{len(made)}").start())
        return made[-n:]

    yield make
    for p in made:
        p.stop()
    errors = [f"{p.name}: {e}" for p in made for e in p.errors]
    assert not errors, "upstream saw bad input:\n" + "\n".join(errors)


def group(servers, directives="", keepalive=True):
    """An `upstream g { ... }` block; servers: [(peer or address, "params")]."""
    lines = [f"        {directives}"] if directives else []
    for s, params in servers:
        addr = s.addr if hasattr(s, "addr") else s
        lines.append(f"        server {addr} {params};")
    if keepalive:
        lines.append("        keepalive 16;")
    return "    upstream g {\n" + "\n".join(lines) + "\n    }\n"


def start(edge, upstream_block, location_extra=""):
    return edge("http {\n" + upstream_block + """
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://g; %s %s }
    }
}
""" % (NGINX_KEEPALIVE, location_extra))


def spread(port, n, target="/echo", headers=()):
    """Send n requests on one keep-alive connection; Counter of X-Upstream."""
    seen = Counter()
    c = Conn(port, timeout=20)
    try:
        for i in range(n):
            r = c.request("GET", target, headers=headers)
            assert r.status == 200, f"request {i}: {r!r}"
            seen[r.header("X-Upstream")] += 1
            if r.header("Connection") == "close":
                c.close()
                c = Conn(port, timeout=20)
    finally:
        c.close()
    return seen


def where(port, keys, header="X-Key", target="/echo"):
    """{key: server} for each key sent in `header`."""
    out = {}
    c = Conn(port, timeout=20)
    try:
        for k in keys:
            r = c.request("GET", target, headers=[(header, k)])
            assert r.status == 200, f"key {k}: {r!r}"
            out[k] = r.header("X-Upstream")
            if r.header("Connection") == "close":      # keepalive_requests
                c.close()
                c = Conn(port, timeout=20)
    finally:
        c.close()
    return out


def assert_shares(seen, weights, n, tolerance=0.03):
    total = sum(weights.values())
    assert sum(seen.values()) == n
    for name, w in weights.items():
        share = seen.get(name, 0) / n
        assert abs(share - w / total) <= tolerance, \
            f"{name}: {share:.3f} of the requests, weight share {w / total:.3f} ({dict(seen)})"


# -- spreading by weight -----------------------------------------------------------------

@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["", "random;"], ids=["round_robin", "random"])
def test_ten_thousand_requests_spread_by_the_weights(edge, peers, method):
    a, b, c = peers(3)
    e = start(edge, group([(a, "weight=5"), (b, "weight=3"), (c, "weight=2")], method))
    seen = spread(e.port, 10_000)
    assert_shares(seen, {"p0": 5, "p1": 3, "p2": 2}, 10_000)
    if not method:
        # smooth weighted round robin is exact over every 10 picks
        assert seen == {"p0": 5000, "p1": 3000, "p2": 2000}


@pytest.mark.parametrize("method", ["least_conn;", "random two;", "random two least_conn;"])
def test_idle_least_conn_and_random_two_use_every_peer(edge, peers, method):
    """With nothing in progress every server ties: least_conn breaks ties by weighted
    round robin (exact); random two keeps the second of its two draws (nginx's rule)."""
    a, b = peers(2)
    e = start(edge, group([(a, "weight=3"), (b, "")], method))
    seen = spread(e.port, 400)
    if method == "least_conn;":
        assert seen == {"p0": 300, "p1": 100}, seen
    else:
        assert seen["p0"] > 0 and seen["p1"] > 0, seen


# -- hashing -----------------------------------------------------------------------------

KEYS = [f"user-{i}" for i in range(2000)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["down", "removed"])
def test_consistent_hash_moves_only_the_leaving_peers_keys(edge, peers, how):
    n = 4
    ps = peers(n)
    directive = "hash $http_x_key consistent;"
    e = start(edge, group([(p, "") for p in ps], directive))
    before = where(e.port, KEYS)
    again = where(e.port, KEYS[:300])
    assert again == {k: before[k] for k in KEYS[:300]}, "a key moved between two requests"
    counts = Counter(before.values())
    assert len(counts) == n, f"the ring left a server out: {counts}"
    gone = "p1"
    if how == "down":
        servers = [(p, "down" if p.name == gone else "") for p in ps]
    else:
        servers = [(p, "") for p in ps if p.name != gone]
    e2 = start(edge, group(servers, directive))
    after = where(e2.port, KEYS)
    moved = [k for k in KEYS if after[k] != before[k]]
    assert all(before[k] == gone for k in moved), "a key of a server that stayed moved"
    assert all(after[k] != gone for k in KEYS)
    assert len(moved) == counts[gone] > 0
    assert len(moved) <= 1.2 * len(KEYS) / n, f"{len(moved)} of {len(KEYS)} keys moved ({counts})"


@pytest.mark.timeout(120)
def test_consistent_hash_key_of_a_dead_peer_moves_to_the_next_point(edge, peers):
    """A peer that stops answering: its keys go to the next server on the ring (each
    key to one server, the same every time), the others stay."""
    ps = peers(3)
    dead = closed_port()
    directive = "hash $http_x_key consistent;"
    e = start(edge, group([(p, "") for p in ps] + [(f"127.0.0.1:{dead}", "max_fails=1 fail_timeout=30s")],
                          directive))
    keys = KEYS[:600]
    first = where(e.port, keys)
    second = where(e.port, keys)
    assert first == second, "keys of the dead server must move the same way every time"
    assert set(first.values()) == {"p0", "p1", "p2"}
    # the same config without the dead server puts the other keys where they were
    e2 = start(edge, group([(p, "") for p in ps], directive))
    assert where(e2.port, keys) == first


@pytest.mark.timeout(120)
def test_plain_hash_keys_stick_and_only_the_down_peers_keys_move(edge, peers):
    ps = peers(3)
    directive = "hash $http_x_key;"
    e = start(edge, group([(p, "") for p in ps], directive))
    keys = KEYS[:900]
    before = where(e.port, keys)
    assert where(e.port, keys[:200]) == {k: before[k] for k in keys[:200]}
    counts = Counter(before.values())
    assert len(counts) == 3, counts
    e2 = start(edge, group([(p, "down" if p.name == "p2" else "") for p in ps], directive))
    after = where(e2.port, keys)
    moved = [k for k in keys if after[k] != before[k]]
    assert all(before[k] == "p2" for k in moved)
    assert len(moved) == counts["p2"]
    assert "p2" not in after.values()


# (key template, how a request carries value v)
KEY_SOURCES = [
    ("$cookie_sid", lambda v: ("/echo", [("Cookie", f"a=1; sid={v}; b=2")])),
    ("$arg_user", lambda v: (f"/echo?x=1&user={v}", [])),
    ("$http_x_user", lambda v: ("/echo", [("X-User", v)])),
    ("$uri", lambda v: (f"/echo/{v}", [])),
    ("$request_uri", lambda v: (f"/echo?{v}", [])),
    ("tenant-$arg_t:$http_x_user", lambda v: (f"/echo?t={v}", [("X-User", "same")])),
]


@pytest.mark.parametrize("consistent", ["", " consistent"], ids=["hash", "consistent"])
@pytest.mark.parametrize("key,carry", KEY_SOURCES, ids=[k for k, _ in KEY_SOURCES])
def test_hash_keys_from_variables(edge, peers, key, carry, consistent):
    ps = peers(3)
    e = start(edge, group([(p, "") for p in ps], f"hash {key}{consistent};"))
    values = [f"v{i}" for i in range(60)]
    placed = {}
    with Conn(e.port, timeout=20) as c:
        for rnd in range(2):
            for v in values:
                target, headers = carry(v)
                r = c.request("GET", target, headers=headers)
                assert r.status == 200, r
                got = r.header("X-Upstream")
                assert placed.setdefault(v, got) == got, f"value {v} moved from {placed[v]} to {got}"
    assert len(set(placed.values())) == 3, f"60 keys all on {set(placed.values())}"


def test_remote_addr_hash_sticks(edge, peers):
    ps = peers(3)
    e = start(edge, group([(p, "") for p in ps], "hash $remote_addr consistent;"))
    seen = spread(e.port, 50)
    assert len(seen) == 1, f"one client address, one server: {seen}"


def test_hash_key_read_after_a_buffered_body(edge, peers):
    """The key's header is read when the peer is picked, after the body (buffered whole
    first) went through the buffer that held the request head."""
    ps = peers(3)
    e = start(edge, group([(p, "") for p in ps], "hash $http_x_key consistent;"))
    keys = KEYS[:40]
    by_get = where(e.port, keys)
    body = b"x" * 300_000
    with Conn(e.port, timeout=20) as c:
        for k in keys:
            r = c.request("POST", "/echo", headers=[("X-Key", k)], body=body)
            assert r.status == 200, r
            assert r.json()["body_len"] == len(body)
            assert r.header("X-Upstream") == by_get[k], f"key {k}"


def test_hash_key_read_after_a_buffered_body_with_a_variable_group(edge, peers):
    """The same with `proxy_pass http://$var`: the group is chosen per request, and the
    location keeps the head because one of the groups hashes on it (this config once
    made `edge -t` fail with a traceback)."""
    ps = peers(3)
    e = edge("http {\n" + group([(p, "") for p in ps], "hash $http_x_key consistent;") + """
        map $uri $dest { default g; }
        server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://$dest; } }
    }""")
    body = b"x" * 300_000
    with Conn(e.port, timeout=20) as c:
        seen = {}
        for k in KEYS[:20]:
            for _ in range(2):
                r = c.request("POST", "/echo", headers=[("X-Key", k)], body=body)
                assert r.status == 200, r
                assert r.json()["body_len"] == len(body)
                assert seen.setdefault(k, r.header("X-Upstream")) == r.header("X-Upstream"), k


@pytest.mark.edge_only      # needs both programs at once
@pytest.mark.skipif(shutil.which(NGINX) is None and not __import__("os").path.exists(NGINX),
                    reason="nginx is not installed")
@pytest.mark.parametrize("consistent", ["", " consistent"], ids=["hash", "consistent"])
def test_keys_land_where_nginx_puts_them(tmp_path, peers, consistent):
    """edge uses nginx's hashes and ring: a group moved from nginx keeps its key ->
    server mapping (caches behind a hash stay warm)."""
    ps = peers(4)
    conf = "http {\n" + group([(p, "weight=2" if p.name == "p1" else "") for p in ps],
                              f"hash $http_x_key{consistent};") + """
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://g; %s } }
}
"""
    got = {}
    for impl, extra in (("edge", ""), ("nginx", 'proxy_http_version 1.1; proxy_set_header Connection "";')):
        e = EdgeProcess(tmp_path / impl, conf % extra, impl=impl)
        with e:
            got[impl] = where(e.port, KEYS[:500])
    assert len(set(got["edge"].values())) == 4
    assert got["edge"] == got["nginx"]


# -- least_conn and ewma: the fast peer wins ----------------------------------------------------

def load(port, total, threads=8, target="/echo"):
    """`total` requests from `threads` concurrent keep-alive clients; Counter of servers."""
    seen = Counter()
    lock = threading.Lock()
    left = [total]
    errors = []

    def client():
        try:
            with Conn(port, timeout=20) as c:
                while True:
                    with lock:
                        if left[0] == 0:
                            return
                        left[0] -= 1
                    r = c.request("GET", target)
                    assert r.status == 200, r
                    with lock:
                        seen[r.header("X-Upstream")] += 1
        except Exception as e:       # reported by the test thread
            errors.append(e)

    ts = [threading.Thread(target=client) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    assert sum(seen.values()) == total
    return seen


@pytest.mark.timeout(120)
def test_least_conn_prefers_the_fast_peer(edge, peers):
    fast, slow = peers(2)
    e = start(edge, group([(fast, ""), (slow, "")], "least_conn;"))
    even = load(e.port, 200)
    assert even["p0"] > 0 and even["p1"] > 0, even
    slow.delay = 0.3
    seen = load(e.port, 300)
    # round robin would give the slow peer half; least_conn gives it a request only
    # when it has none in progress and the fast one ties
    assert seen["p1"] <= 0.1 * 300, seen


@pytest.mark.edge_only      # ewma is APISIX's balancer, not nginx's
@pytest.mark.timeout(120)
def test_ewma_prefers_the_fast_peer(edge, peers):
    fast, slow = peers(2)
    e = start(edge, group([(fast, ""), (slow, "")], "ewma;"))
    even = spread(e.port, 200)
    assert even["p0"] > 0 and even["p1"] > 0, even
    slow.delay = 0.2
    seen = spread(e.port, 300)      # one at a time: the latency alone decides
    assert seen["p1"] <= 0.05 * 300, seen
    concurrent = load(e.port, 300)
    assert concurrent["p1"] <= 0.1 * 300, concurrent


@pytest.mark.edge_only
@pytest.mark.timeout(120)
def test_ewma_skips_a_dead_peer_and_uses_backup_last(edge, peers):
    a, b = peers(2)
    dead = closed_port()
    e = start(edge, group([(a, ""), (f"127.0.0.1:{dead}", "max_fails=1 fail_timeout=30s"), (b, "backup")],
                          "ewma;"))
    seen = spread(e.port, 100)
    assert seen == {"p0": 100}, seen


# -- backup and down ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["", "least_conn;"], ids=["round_robin", "least_conn"])
def test_backup_serves_only_when_every_primary_is_down(edge, peers, method):
    p1, p2, bk = peers(3)
    e = start(edge, group([(p1, ""), (p2, ""), (bk, "backup")], method))
    seen = spread(e.port, 60)
    assert seen == {"p0": 30, "p1": 30}, seen
    # one primary down: the other takes everything, the backup still nothing
    e2 = start(edge, group([(p1, "down"), (p2, ""), (bk, "backup")], method))
    assert spread(e2.port, 40) == {"p1": 40}
    # every primary down or dead: the backup
    dead = closed_port()
    e3 = start(edge, group([(p1, "down"), (f"127.0.0.1:{dead}", "max_fails=1 fail_timeout=30s"),
                            (bk, "backup")], method))
    assert spread(e3.port, 40) == {"p2": 40}


def test_down_peer_is_never_used(edge, peers):
    a, b = peers(2)
    e = start(edge, group([(a, "down"), (b, "")]))
    assert spread(e.port, 50) == {"p1": 50}
    assert a.served == 0


def test_down_peer_is_not_used_even_when_the_rest_is_dead(edge, peers):
    (a,) = peers(1)
    dead = closed_port()
    e = start(edge, group([(f"127.0.0.1:{dead}", ""), (a, "down")]))
    with Conn(e.port, timeout=10) as c:
        for i in range(5):
            r = c.request("GET", "/echo")
            assert r.status == 502, r
            if r.header("Connection") == "close":
                break
    assert a.served == 0


# -- passive health -------------------------------------------------------------------------------

@pytest.mark.edge_only      # passive_fail_status is edge's (nginx counts statuses only for retries)
@pytest.mark.parametrize("max_fails", [1, 3])
def test_passive_fail_status_counts_toward_max_fails(edge, peers, max_fails):
    bad, good = peers(2)
    bad.status = 503
    e = start(edge, group([(bad, f"max_fails={max_fails} fail_timeout=30s"), (good, "")],
                          "passive_fail_status 500 502 503 504;"))
    statuses = Counter()
    with Conn(e.port, timeout=10) as c:
        for i in range(60):
            r = c.request("GET", "/echo")
            statuses[r.status] += 1
    # the 503s go to the client (this is not a retry), and stop after max_fails
    assert statuses[503] == max_fails == bad.served, (statuses, bad.served)
    assert statuses[200] == 60 - max_fails
    log = e.error_log
    assert "upstream server temporarily disabled" in log, log
    assert f"({bad.addr})" in log


@pytest.mark.edge_only
def test_without_passive_fail_status_a_503_is_an_answer(edge, peers):
    bad, good = peers(2)
    bad.status = 503
    e = start(edge, group([(bad, "max_fails=1 fail_timeout=30s"), (good, "")]))
    seen = spread_statuses(e.port, 40)
    assert seen[503] == 20 and bad.served == 20, seen


def spread_statuses(port, n):
    out = Counter()
    with Conn(port, timeout=10) as c:
        for _ in range(n):
            out[c.request("GET", "/echo").status] += 1
    return out


@pytest.mark.edge_only      # nginx logs the disabling only, without the upstream's name
@pytest.mark.timeout(60)
def test_peer_state_transitions_are_logged(edge, peers):
    bad, good = peers(2)
    bad.status = 502
    e = start(edge, group([(bad, "max_fails=1 fail_timeout=1s"), (good, "")],
                          "passive_fail_status 502;"))
    spread_statuses(e.port, 4)
    assert "[warn]" in e.error_log and "upstream server temporarily disabled for 1s" in e.error_log
    bad.status = None
    time.sleep(1.2)
    deadline = time.monotonic() + 10
    while "upstream server is available again" not in e.error_log and time.monotonic() < deadline:
        spread_statuses(e.port, 4)
        time.sleep(0.1)
    assert "[notice]" in e.error_log and \
        f"upstream server is available again, upstream: g ({bad.addr})" in e.error_log, e.error_log


# -- config errors ----------------------------------------------------------------------------------

CONFIG_ERRORS = [
    # (upstream block body, message, needle for the line; nginx too?)
    ("hash $remote_addr;\n server 127.0.0.1:1 backup;", 'balancing method does not support parameter "backup"',
     "backup", True),
    ("random two;\n server 127.0.0.1:1 backup;", 'balancing method does not support parameter "backup"',
     "backup", True),
    ("random one;", 'invalid parameter "one"', "random", True),
    ("random two least_time;", 'invalid parameter "least_time"', "random", True),
    ("hash $remote_addr sometimes;", 'invalid parameter "sometimes"', "hash", True),
    ("ip_hash;\n server 127.0.0.1:1 backup;", 'balancing method does not support parameter "backup"',
     "backup", True),
    ("ip_hash on;", 'invalid number of arguments in "ip_hash" directive', "ip_hash", True),
    ("hash;", 'invalid number of arguments in "hash" directive', "hash", True),
    ("least_conn now;", 'invalid number of arguments in "least_conn" directive', "least_conn", True),
    ("hash $no_such_variable;", 'unknown "no_such_variable" variable', "hash", True),
    ("server 127.0.0.1:1 weight=0;", 'invalid parameter "weight=0"', "weight=0", True),
    ("server 127.0.0.1:1 sometimes;", 'invalid parameter "sometimes"', "sometimes", True),
    ("server 127.0.0.1:1 fail_timeout=x;", 'invalid parameter "fail_timeout=x"', "fail_timeout", True),
    # nginx only warns and keeps the last method; edge refuses the ambiguity
    ("hash $remote_addr;\n least_conn;", "load balancing method redefined", "least_conn", False),
    ("ewma x;", 'invalid number of arguments in "ewma" directive', "ewma", False),
    ("passive_fail_status 5xx;", 'invalid value "5xx"', "passive_fail_status", False),
]


@pytest.mark.parametrize("body,message,needle,nginx", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors_name_file_and_line(tmp_path, body, message, needle, nginx):
    if IMPL == "nginx" and not nginx:
        pytest.skip("edge's own directive or choice")
    e = EdgeProcess(tmp_path, """http {
    upstream g {
        %s
        server 127.0.0.1:9;
    }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://g; } }
}
""" % body, {"PORT": closed_port()})
    e.spawn()
    try:
        assert e.wait_exit(10) == 1, e.report()
        out = e.output() + e.error_log
        assert message in out, out
        if IMPL == "nginx" and "variable" in message:
            return      # nginx finds unknown variables after parsing and names no line
        assert f"{e.conf_path}:{e.line_of(needle)}" in out, out
    finally:
        e.kill_group()


@pytest.mark.parametrize("body", [
    "server 127.0.0.1:1 backup;\n hash $remote_addr;",       # nginx accepts a backup before hash
    "least_conn;\n server 127.0.0.1:1 backup;",
    "server 127.0.0.1:1 down backup weight=2 max_fails=0 fail_timeout=1m;",
    "random two least_conn;",
    "hash $remote_addr consistent;",
])
def test_configs_nginx_accepts_start(edge, body):
    e = edge("""http {
    upstream g {
        %s
        server 127.0.0.1:9;
    }
    server { listen 127.0.0.1:@PORT@; location / { proxy_pass http://g; } }
}
""" % body)
    assert e.running()


@pytest.mark.edge_only      # consumers are edge's (Kong's model)
def test_hash_on_the_consumer(edge, peers, tmp_path):
    """`hash $consumer consistent`: each authenticated consumer sticks to one server."""
    import yaml
    users = [f"user{i}" for i in range(40)]
    path = tmp_path / "consumers.yaml"
    path.write_text(yaml.safe_dump({"consumers": [
        {"username": u, "credentials": {"key_auth": [{"key": f"{u}-key"}]}} for u in users]}))
    ps = peers(3)
    e = edge("http {\n    consumers @CONSUMERS@;\n" + group([(p, "") for p in ps], "hash $consumer consistent;") + """
    server { listen 127.0.0.1:@PORT@; location / { key_auth; proxy_pass http://g; } }
}
""", CONSUMERS=path)
    placed = {}
    with Conn(e.port, timeout=20) as c:
        for rnd in range(3):
            for u in users:
                r = c.request("GET", "/echo", headers=[("apikey", f"{u}-key")])
                assert r.status == 200, r
                got = r.header("X-Upstream")
                assert placed.setdefault(u, got) == got, f"consumer {u} moved"
    assert len(set(placed.values())) == 3, placed


@pytest.mark.edge_only      # passive_fail_status is edge's
def test_a_status_also_retried_counts_once(edge, peers):
    """503 both in passive_fail_status and in proxy_next_upstream: the client gets the
    other server's answer, and the failure counts once toward max_fails."""
    bad, good = peers(2)
    bad.status = 503
    e = start(edge, group([(bad, "max_fails=2 fail_timeout=30s"), (good, "")], "passive_fail_status 503;"),
              "proxy_next_upstream error timeout http_503;")
    assert spread_statuses(e.port, 30) == {200: 30}
    assert bad.served == 2, bad.served


# -- ip_hash ----------------------------------------------------------------------------

def ip_hash_model(address, weights, unavailable=()):
    """nginx's ip_hash (ngx_http_upstream_ip_hash_module.c), written from its rules: the
    index of the server a client address goes to, or None for the round robin fallback."""
    import ipaddress
    ip = ipaddress.ip_address(address)
    octets = ip.packed[:3] if ip.version == 4 else ip.packed
    h, total = 89, sum(weights)
    for _ in range(21):
        for b in octets:
            h = (h * 113 + b) % 6271
        w, i = h % total, 0
        while w >= weights[i]:
            w -= weights[i]
            i += 1
        if i not in unavailable:
            return i
    return None


def from_address(port, source):
    """GET /echo from the client address `source` (any 127.x.y.z is ours on loopback)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(source, 0))
    try:
        conn.request("GET", "/echo")
        r = conn.getresponse()
        r.read()
        assert r.status == 200, (source, r.status)
        return r.getheader("X-Upstream")
    finally:
        conn.close()


IP_HASH_CLIENTS = [f"127.0.{x}.1" for x in range(40)]


@pytest.mark.parametrize("params", [("weight=1", "weight=2", "weight=1"), ("", "down", "")],
                         ids=["weights", "down"])
def test_ip_hash_puts_clients_where_nginx_does(edge, peers, params):
    ps = peers(3)
    e = start(edge, group(list(zip(ps, params)), "ip_hash;"))
    weights = [int(p.split("=")[1]) if p.startswith("weight=") else 1 for p in params]
    unavailable = {i for i, p in enumerate(params) if p == "down"}
    got = {src: from_address(e.port, src) for src in IP_HASH_CLIENTS}
    want = {src: ps[ip_hash_model(src, weights, unavailable)].name for src in IP_HASH_CLIENTS}
    assert got == want
    # spread over every available server, none to a down one
    assert set(got.values()) == {ps[i].name for i in range(3) if i not in unavailable}
    # sticky: the last octet of an IPv4 address does not count, and it stays so
    for x in (0, 7, 23):
        for last in (2, 200):
            assert from_address(e.port, f"127.0.{x}.{last}") == got[f"127.0.{x}.1"]


def test_ip_hash_moves_on_from_a_dead_server(edge, peers):
    """A server that refuses connections: its clients go where nginx's rehash puts
    them (proxy_next_upstream error), the others stay."""
    ps = peers(3)
    dead = closed_port()
    servers = [(ps[0], ""), (f"127.0.0.1:{dead}", ""), (ps[2], "")]
    e = start(edge, group(servers, "ip_hash;", keepalive=False))
    for src in IP_HASH_CLIENTS:
        first = ip_hash_model(src, [1, 1, 1])
        want = ip_hash_model(src, [1, 1, 1], {1})
        got = from_address(e.port, src)
        if first != 1:
            assert got == ps[first].name, src
        else:
            assert got in (ps[0].name, ps[2].name), src
            if want is not None:
                assert got == ps[want].name, src
