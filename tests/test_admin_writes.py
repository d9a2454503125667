"""The admin API's writes, history and rollback (issue 13, part 2): every write against
a running edge, traffic under load across live peer changes, bad writes that change
nothing, If-Match, rollback, a burst of writes, and the CLI."""

import json
import os
import subprocess
import sys
import threading

import pytest

from support import get
from support.edge import REPO
from support.load import Load
from test_control import try_status, wait_for

pytestmark = pytest.mark.edge_only      # edge's own admin API

CONF = """
worker_processes 2;
http {
    admin_listen 127.0.0.1:@PORT2@;
    admin_history 5;
    consumers @CONSUMERS@;
    include conf.d/_admin/*.conf;
    upstream fixed { server @UP3@; }
    server {
        listen 127.0.0.1:@PORT@;
        server_name api.test;
        include conf.d/_admin/routes/api.test/*.conf;
        location /fixed/ { route_name fixed; proxy_pass http://fixed; }
        location /pool/ { route_name pool-route; proxy_pass http://pool; }
        location /keyed/ { key_auth; return 200 "consumer=$consumer"; }
        location / { return 200 "root"; }
    }
    server {
        listen 127.0.0.1:@PORT3@;
        location / { return 200 "other"; }
    }
}
"""

POOL = "upstream pool {{\n    server {a};\n}}\n"


class Edge:
    """A running edge with its admin port, config dir and a request helper."""

    def __init__(self, e):
        self.e = e
        self.port = e.port
        self.admin_port = e.ports["PORT2"]
        self.dir = e.conf_path.parent

    def call(self, method, path, body=None, headers=None, ctype="application/json"):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=70)
        h = dict(headers or {})
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            h.setdefault("Content-Type", ctype if not isinstance(body, str) or
                         ctype != "application/json" else "text/plain")
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            raw = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = raw.decode()
        return r.status, hdrs, doc

    def ok(self, method, path, body=None, status=(200, 201), **kw):
        code, hdrs, doc = self.call(method, path, body, **kw)
        assert code in (status if isinstance(status, tuple) else (status,)), (method, path, code, doc)
        return doc, hdrs

    def files(self):
        """{relative path: text} of the managed files and the consumers file."""
        out = {}
        base = self.dir / "conf.d" / "_admin"
        for root, _dirs, names in os.walk(base):
            for name in names:
                p = os.path.join(root, name)
                out[os.path.relpath(p, self.dir)] = open(p).read()
        out["consumers.yaml"] = (self.dir / "consumers.yaml").read_text()
        return out

    def body(self, path, port=None):
        r = get(port or self.port, path)
        return r.status, r.body


def start(edge, ups, conf=CONF, headers=None):
    e = edge.create(conf, UP1=ups[0], UP2=ups[1], UP3=ups[2], CONSUMERS="")
    d = e.conf_path.parent
    e.subst["CONSUMERS"] = str(d / "consumers.yaml")
    (d / "conf.d" / "_admin" / "routes" / "api.test").mkdir(parents=True)
    (d / "conf.d" / "_admin" / "upstream.pool.conf").write_text(POOL.format(a=ups[0].addr))
    (d / "consumers.yaml").write_text("consumers:\n- username: alice\n  credentials:\n"
                                      "    key_auth:\n    - key: alice-key-SECRET\n")
    e.start()
    x = Edge(e)
    wait_for(lambda: (lambda s: s is not None and s["ready"])(try_status(x.admin_port, headers)),
             10, "the admin listener", e)
    return x


@pytest.fixture
def ups(upstream_factory):
    return upstream_factory("one"), upstream_factory("two"), upstream_factory("three")


def servers_seen(x, n=40, path="/pool/x"):
    seen = set()
    for _ in range(n):
        r = get(x.port, path)
        assert r.status == 200, (r.status, r.body)
        seen.add(json.loads(r.body)["server"])
    return seen


# --------------------------------------------------------------------------- peers


def test_peer_writes_add_weight_drain_down_up_remove_under_load_fail_no_request(edge, ups):
    x = start(edge, ups)
    assert servers_seen(x) == {"one"}
    with Load(x.port, path="/pool/x", check=lambda b: b.startswith(b"{"),
              keepalive=2, oneshot=2) as load:
        assert load.wait_ok(20)
        # add a peer
        doc, hdrs = x.ok("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {"weight": 3})
        assert doc["generation"] == 2 and hdrs["etag"] == '"2"'
        peers = {p["peer"]: p for p in doc["upstream"]["peers"]}
        assert peers[ups[1].addr]["weight"] == 3 and peers[ups[0].addr]["weight"] == 1
        assert servers_seen(x) == {"one", "two"}
        assert load.wait_ok(20)
        # drain the first: no new requests reach it
        doc, _ = x.ok("PUT", f"/upstreams/pool/peers/{ups[0].addr}", {"drain": True})
        assert doc["drain"] is True
        assert {p["peer"]: p["state"] for p in doc["upstream"]["peers"]}[ups[0].addr] == "down"
        assert servers_seen(x) == {"two"}
        assert load.wait_ok(20)
        # back up, weight changed
        x.ok("PUT", f"/upstreams/pool/peers/{ups[0].addr}", {"down": False, "weight": 2})
        assert servers_seen(x) == {"one", "two"}
        # down the second, then remove it
        x.ok("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {"down": True})
        assert servers_seen(x) == {"one"}
        doc, _ = x.ok("DELETE", f"/upstreams/pool/peers/{ups[1].addr}")
        assert [p["peer"] for p in doc["upstream"]["peers"]] == [ups[0].addr]
        assert load.wait_ok(20)
    assert load.stats.failures == [], load.stats.summary()
    text = x.files()["conf.d/_admin/upstream.pool.conf"]
    assert text == f"upstream pool {{\n    server {ups[0].addr} weight=2;\n}}\n"
    # edge -T shows the managed file
    out = subprocess.run([sys.executable, "-m", "edge", "-T", "-c", str(x.e.conf_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert f"server {ups[0].addr} weight=2;" in out.stdout, out.stderr


def test_drain_lets_the_request_in_flight_finish_and_sends_no_new_one(edge, ups):
    x = start(edge, ups)
    x.ok("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {})
    x.ok("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {"down": True})
    assert servers_seen(x, 5) == {"one"}
    slow = {}

    def request():
        r = get(x.port, "/pool/gated/drain/1000", timeout=20)
        slow.update(status=r.status, length=len(r.body), server=r.header("X-Upstream"))

    t = threading.Thread(target=request)
    t.start()
    wait_for(lambda: any(r.path.endswith("/gated/drain/1000") for r in ups[0].requests), 10,
             "the gated request at one", x.e)
    x.ok("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {"down": False})
    doc, _ = x.ok("PUT", f"/upstreams/pool/peers/{ups[0].addr}", {"drain": True})
    assert servers_seen(x, 10) == {"two"}
    # the request is still in flight (its upstream waits for the gate), across both
    # reloads; then it finishes
    assert t.is_alive() and not slow
    ups[0].gate("drain").set()
    t.join(20)
    assert slow == {"status": 200, "length": 2000, "server": "one"}
    peer = [p for p in x.ok("GET", "/upstreams/pool")[0]["peers"] if p["peer"] == ups[0].addr][0]
    assert peer["state"] == "down" and peer["down"] is True
    assert "down" in x.files()["conf.d/_admin/upstream.pool.conf"].split(ups[0].addr)[1].split(";")[0]


def test_peer_of_an_upstream_defined_in_the_main_file_is_409_and_unknown_404(edge, ups):
    x = start(edge, ups)
    code, _, doc = x.call("PUT", f"/upstreams/fixed/peers/{ups[0].addr}", {"weight": 2})
    assert code == 409 and doc["field"] == "name" and "edge.conf:" in doc["error"], doc
    code, _, doc = x.call("PUT", f"/upstreams/nope/peers/{ups[0].addr}", {"weight": 2})
    assert code == 404 and doc["field"] == "name"
    code, _, doc = x.call("DELETE", "/upstreams/pool/peers/127.0.0.1:1")
    assert code == 404 and doc["field"] == "addr"


# --------------------------------------------------------------------------- bad writes


BAD = [
    ("PUT", "/upstreams/pool/peers/{a}", {"weight": "heavy"}, "weight"),
    ("PUT", "/upstreams/pool/peers/{a}", {"weight": 0}, "weight"),
    ("PUT", "/upstreams/pool/peers/{a}", {"colour": "red"}, "colour"),
    ("PUT", "/upstreams/pool/peers/{a}", {"down": False, "drain": True}, "drain"),
    ("PUT", "/upstreams/pool/peers/nohost:99999", {}, "addr"),
    ("DELETE", "/upstreams/pool/peers/{a}", None, "addr"),          # the last peer
    ("PUT", "/upstreams/newpool", {"peers": [{"address": "{a}", "weight": -1}]}, "peers[0].weight"),
    ("PUT", "/upstreams/newpool", {"peers": []}, "peers"),
    ("PUT", "/upstreams/newpool", {"peers": [{"address": "{a}"}], "method": "fastest"}, "method"),
    ("PUT", "/upstreams/newpool", {"peers": [{"address": "{a}"}],
                                   "directives": ["keepalive lots"]}, "directives[0]"),
    ("PUT", "/routes/r1", {"server": "api.test", "location": "/r1/",
                           "directives": ["proxy_pass http://pool", "proxy_pas x"]},
     "directives[1]"),
    ("PUT", "/routes/r1", {"server": "api.test", "location": "/r1/",
                           "directives": ["proxy_pass http://nosuchupstream"]}, "directives[0]"),
    ("PUT", "/routes/r1", {"server": "nosuch", "location": "/r1/", "directives": []}, "server"),
    ("PUT", "/routes/r1", {"location": "/r1/", "directives": []}, "server"),
    ("PUT", "/routes/bad%20name", {"server": "api.test", "location": "/r1/"}, "name"),
    ("PUT", "/consumers/bob", {"credentials": {"key_auth": [{"key": "alice-key-SECRET"}]}},
     "credentials.key_auth[0].key"),
    ("PUT", "/consumers/bob", {"groups": "admins"}, "groups"),
    ("PUT", "/config", {"upstreams": {"u": {"peers": [{"address": "{a}", "weight": "x"}]}}},
     "upstreams.u.peers[0].weight"),
    ("PUT", "/config", {"routes": [{"name": "r", "server": "api.test", "location": "/r/",
                                    "directives": ["return 200 ok", "nope 1"]}]},
     "routes[0].directives[1]"),
    ("PUT", "/config", {"things": []}, "things"),
]


def test_bad_writes_are_400_naming_the_field_and_change_nothing(edge, ups):
    x = start(edge, ups)
    before = x.files()
    for method, path, body, field in BAD:
        path = path.replace("{a}", ups[0].addr)
        if isinstance(body, dict):
            body = json.loads(json.dumps(body).replace("{a}", ups[0].addr))
        code, _, doc = x.call(method, path, body)
        assert code == 400, (method, path, body, code, doc)
        assert doc["field"] == field, (method, path, doc)
        assert x.files() == before, (method, path)
        assert "alice-key-SECRET" not in json.dumps(doc)
    # a config error names the file and line of the candidate
    code, _, doc = x.call("PUT", "/routes/r1", {"server": "api.test", "location": "/r1/",
                                                 "directives": ["return 200 a", "proxy_pas x"]})
    assert doc["file"].endswith("conf.d/_admin/routes/api.test/r1.conf") and doc["line"] == 4, doc
    assert "unknown directive" in doc["error"] and "r1.conf:4" in doc["error"]
    # nginx text with an error: the field is the body, the line is the file's
    code, _, doc = x.call("PUT", "/upstreams/pool", "upstream pool {\n server 127.0.0.1:1 wight=2;\n}\n")
    assert code == 400 and doc["field"].startswith("body"), doc
    assert x.files() == before
    st = try_status(x.admin_port)
    assert st["generation"] == 1 and st["ready"]
    assert servers_seen(x, 5) == {"one"}


def test_stale_if_match_is_412_and_a_current_one_passes(edge, ups):
    x = start(edge, ups)
    _, hdrs = x.ok("GET", "/upstreams")
    assert hdrs["etag"] == '"1"'
    doc, hdrs = x.ok("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {},
                     headers={"If-Match": '"1"'})
    assert hdrs["etag"] == '"2"'
    before = x.files()
    code, hdrs, doc = x.call("PUT", f"/upstreams/pool/peers/{ups[2].addr}", {},
                             headers={"If-Match": '"1"'})
    assert code == 412 and doc["field"] == "if-match" and hdrs["etag"] == '"2"', doc
    assert x.files() == before
    x.ok("DELETE", f"/upstreams/pool/peers/{ups[1].addr}", headers={"If-Match": '"2"'})


def test_writes_need_the_token_like_every_request(edge, ups):
    x = start(edge, ups, CONF.replace("admin_history 5;", "admin_history 5; admin_token s3cret-T;"),
              {"Authorization": "Bearer s3cret-T"})
    before = x.files()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for method, path, body in (("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {}),
                                   ("DELETE", "/consumers/alice", None),
                                   ("PUT", "/config", {}),
                                   ("POST", "/config/rollback?to=1", None)):
            code, _, doc = x.call(method, path, body, headers=headers)
            assert code == 401 and doc == {"error": "unauthorized"}, (method, path, code, doc)
    assert x.files() == before
    doc, _ = x.ok("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {},
                  headers={"Authorization": "Bearer s3cret-T"})
    assert doc["generation"] == 2


# --------------------------------------------------------------------------- upstreams


def test_put_and_delete_upstream_as_json_and_nginx_text(edge, ups):
    x = start(edge, ups)
    doc, _ = x.ok("PUT", "/upstreams/second", {"method": "least_conn", "keepalive": 4,
                                                "peers": [{"address": ups[1].addr, "weight": 2},
                                                          {"address": ups[2].addr, "backup": True}]},
                  status=201)
    assert doc["upstream"]["method"] == "least_conn" and doc["upstream"]["keepalive"] == 4
    assert x.files()["conf.d/_admin/upstream.second.conf"] == (
        f"upstream second {{\n    least_conn;\n    server {ups[1].addr} weight=2;\n"
        f"    server {ups[2].addr} backup;\n    keepalive 4;\n}}\n")
    text = f"upstream pool {{\n    server {ups[2].addr};  # now three\n}}\n"
    doc, _ = x.ok("PUT", "/upstreams/pool", text, status=200)
    assert servers_seen(x) == {"three"}
    # a route uses pool: 409 naming it
    code, _, doc = x.call("DELETE", "/upstreams/pool")
    assert code == 409 and "pool-route" in doc["error"] and doc["routes"] == ["pool-route"], doc
    code, _, doc = x.call("DELETE", "/upstreams/fixed")
    assert code == 409 and "edge.conf" in doc["error"]
    x.ok("DELETE", "/upstreams/second")
    assert "conf.d/_admin/upstream.second.conf" not in x.files()
    code, _, _ = x.call("GET", "/upstreams/second")
    assert code == 404


def test_without_the_include_upstream_writes_are_409_with_the_line_to_add(edge, ups):
    x = start(edge, ups, CONF.replace("include conf.d/_admin/*.conf;",
                                      "include conf.d/_admin/upstream.pool.conf;"))
    code, _, doc = x.call("PUT", "/upstreams/second", {"peers": [{"address": ups[1].addr}]})
    assert code == 409 and "include conf.d/_admin/*.conf;" in doc["error"], doc
    assert "conf.d/_admin/upstream.second.conf" not in x.files()


# --------------------------------------------------------------------------- routes


def test_put_and_delete_routes_as_json_and_text_in_a_named_server(edge, ups):
    x = start(edge, ups)
    assert x.body("/v2/a") == (200, b"root")
    doc, _ = x.ok("PUT", "/routes/v2", {"server": "api.test", "location": "/v2/",
                                        "directives": ["proxy_pass http://pool",
                                                       ["add_header", "X-Route", "v 2"]]},
                  status=201)
    assert doc["route"]["route"] == "v2" and doc["route"]["upstream"] == "pool"
    r = get(x.port, "/v2/a")
    assert r.status == 200 and json.loads(r.body)["server"] == "one"
    assert r.header("X-Route") == "v 2"
    # replace as nginx text with ?server=
    doc, _ = x.ok("PUT", "/routes/v2?server=api.test",
                  'location = /v2/exact {\n    return 200 "exact";\n}\n', status=200)
    assert doc["route"]["location"] == "= /v2/exact"
    assert x.body("/v2/exact") == (200, b"exact") and x.body("/v2/a") == (200, b"root")
    assert x.files()["conf.d/_admin/routes/api.test/v2.conf"] == (
        'location = /v2/exact {\n    route_name v2;\n    return 200 exact;\n}\n')
    # a route defined in the main file is not the API's
    code, _, doc = x.call("PUT", "/routes/fixed", {"server": "api.test", "location": "/f/"})
    assert code == 409 and "edge.conf:" in doc["error"]
    # a server without the routes include: 409 with the include to add
    code, _, doc = x.call("PUT", "/routes/o1", {"server": f"127.0.0.1:{x.e.ports['PORT3']}",
                                                "location": "/o/", "directives": ["return 204"]})
    assert code == 409 and "include conf.d/_admin/routes/127.0.0.1_" in doc["error"], doc
    x.ok("DELETE", "/routes/v2")
    assert x.body("/v2/exact") == (200, b"root")
    code, _, doc = x.call("DELETE", "/routes/v2")
    assert code == 404


# --------------------------------------------------------------------------- consumers


def test_put_and_delete_consumers_hash_passwords_and_never_echo_secrets(edge, ups):
    x = start(edge, ups)
    assert get(x.port, "/keyed/", headers=[("apikey", "bob-key-SECRET")]).status == 401
    doc, _ = x.ok("PUT", "/consumers/bob",
                  {"groups": ["beta"],
                   "credentials": {"key_auth": [{"key": "bob-key-SECRET"}],
                                   "basic_auth": [{"username": "bob", "password": "bob-PASSWORD"}]}},
                  status=201)
    text = json.dumps(doc)
    assert "SECRET" not in text and "PASSWORD" not in text and "scrypt" not in text, text
    assert doc["consumer"]["groups"] == ["beta"]
    assert {c["type"] for c in doc["consumer"]["credentials"]} == {"key_auth", "basic_auth"}
    r = get(x.port, "/keyed/", headers=[("apikey", "bob-key-SECRET")])
    assert (r.status, r.body) == (200, b"consumer=bob")
    stored = x.files()["consumers.yaml"]
    assert "bob-PASSWORD" not in stored and "password_hash: scrypt$" in stored.replace("'", "")
    # the stored hash verifies the password given
    from edge.modules.consumers import verify_password
    import yaml
    entry = [c for c in yaml.safe_load(stored)["consumers"] if c["username"] == "bob"][0]
    assert verify_password(entry["credentials"]["basic_auth"][0]["password_hash"], "bob-PASSWORD")
    doc, _ = x.ok("GET", "/consumers")
    assert "SECRET" not in json.dumps(doc)
    x.ok("DELETE", "/consumers/bob")
    assert get(x.port, "/keyed/", headers=[("apikey", "bob-key-SECRET")]).status == 401
    assert x.call("DELETE", "/consumers/bob")[0] == 404


# --------------------------------------------------------------------------- /config


def test_put_config_applies_a_whole_set_atomically(edge, ups):
    x = start(edge, ups)
    import yaml
    declarative = {
        "upstreams": {"pool": {"peers": [{"address": ups[1].addr}]},
                      "extra": {"peers": [{"address": ups[2].addr}]}},
        "routes": [{"name": "ex", "server": "api.test", "location": "/ex/",
                    "directives": ["proxy_pass http://extra"]},
                   {"name": "tx", "server": "api.test",
                    "text": "location /tx/ { return 200 tx; }"}],
        "consumers": [{"username": "carol", "credentials": {"key_auth": [{"key": "carol-k"}]}}],
    }
    doc, _ = x.ok("PUT", "/config", yaml.safe_dump(declarative), ctype="application/yaml")
    assert doc["generation"] == 2 and doc["routes"] == ["ex", "tx"]
    assert servers_seen(x, 5) == {"two"} and servers_seen(x, 5, "/ex/") == {"three"}
    assert x.body("/tx/") == (200, b"tx")
    assert get(x.port, "/keyed/", headers=[("apikey", "carol-k")]).status == 200
    assert get(x.port, "/keyed/", headers=[("apikey", "alice-key-SECRET")]).status == 401
    before = x.files()
    # one bad part: nothing of the set is applied
    declarative["routes"][1]["text"] = "location /tx/ { return 200 tx2; }"
    declarative["upstreams"]["extra"]["peers"][0]["weight"] = 0
    code, _, doc = x.call("PUT", "/config", declarative)
    assert code == 400 and doc["field"] == "upstreams.extra.peers[0].weight", doc
    assert x.files() == before and x.body("/tx/") == (200, b"tx")
    # the empty set removes every managed route and upstream (pool is still used: 400)
    code, _, doc = x.call("PUT", "/config", {"routes": []})
    assert code == 400 and "pool" in doc["error"], doc


@pytest.mark.timeout(180)
def test_repeated_config_loads_do_not_grow_memory(edge, ups):
    """Kong #6547: every /config load leaked. Here 60 loads of alternating declarative
    sets (each one an in-place reload of every worker) must leave the workers' and the
    control process's resident memory where 20 loads left it, give or take allocator
    noise."""
    from support.edge import control_of
    x = start(edge, ups)

    def rss_kib(pid):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def load(i):
        peers = [{"address": ups[i % 2].addr}, {"address": ups[2].addr, "weight": 1 + i % 3}]
        doc, _ = x.ok("PUT", "/config", {
            "upstreams": {"pool": {"peers": peers}},
            "routes": [{"name": "r%d" % k, "server": "api.test", "text":
                        "location /r%d/ { return 200 \"%d\"; }" % (k, i)} for k in range(20)]})
        return doc["generation"]

    def footprint():
        pids = x.e.worker_pids() + control_of(x.e.pid)
        return sum(rss_kib(p) for p in pids), len(pids)

    for i in range(20):
        load(i)
    assert x.body("/r3/") == (200, b"19")
    base, n = footprint()
    for i in range(20, 80):
        load(i)
    assert x.body("/r3/") == (200, b"79")
    after, m = footprint()
    print(f"resident memory of {n} processes: {base} KiB after 20 loads, {after} KiB after 80")
    assert m == n
    # 60 more generations; a leak of even 100 KiB per load per process would show as
    # several MiB here
    assert after - base < 4096 * n, f"resident memory grew from {base} KiB to {after} KiB over 60 loads"


# --------------------------------------------------------------------------- history


def test_history_and_rollback_restore_behaviour_and_files(edge, ups):
    x = start(edge, ups)
    x.ok("PUT", f"/upstreams/pool/peers/{ups[1].addr}", {})
    files2 = x.files()
    x.ok("PUT", "/routes/hx", {"server": "api.test", "location": "/hx/",
                               "directives": ["return 200 hx"]})
    files3 = x.files()
    x.ok("PUT", "/consumers/dave", {"credentials": {"key_auth": [{"key": "dave-k"}]}})
    x.ok("DELETE", f"/upstreams/pool/peers/{ups[0].addr}")
    assert servers_seen(x, 10) == {"two"}
    doc, _ = x.ok("GET", "/config/history")
    gens = [h["generation"] for h in doc["history"]]
    assert gens == [1, 2, 3, 4, 5] and doc["keep"] == 5 and doc["history"][-1]["current"]
    assert doc["history"][0]["what"] == "before the admin API's writes"
    doc, _ = x.ok("POST", "/config/rollback?to=3")
    assert doc["generation"] == 6 and doc["restored"] == 3
    assert x.files() == files3
    assert servers_seen(x, 20) == {"one", "two"} and x.body("/hx/") == (200, b"hx")
    assert get(x.port, "/keyed/", headers=[("apikey", "dave-k")]).status == 401
    # with the CLI, to generation 2 (generation 1 has left the history: admin_history 5)
    out = subprocess.run([sys.executable, "-m", "edge", "-c", str(x.e.conf_path), "config",
                          "rollback", "2"], cwd=REPO, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert x.files() == files2 and x.body("/hx/") == (200, b"root")
    assert servers_seen(x, 20) == {"one", "two"}
    doc, _ = x.ok("GET", "/config/history")
    assert [h["generation"] for h in doc["history"]] == [3, 4, 5, 6, 7]    # admin_history 5
    code, _, doc = x.call("POST", "/config/rollback?to=1")
    assert code == 404 and doc["field"] == "to"
    code, _, doc = x.call("POST", "/config/rollback?to=x")
    assert code == 400 and doc["field"] == "to"


# --------------------------------------------------------------------------- burst


@pytest.mark.timeout(120)
def test_a_burst_of_200_writes_under_load_folds_reloads_and_ends_at_the_last(edge, ups):
    x = start(edge, ups)
    weights = list(range(1, 201))
    results = []
    lock = threading.Lock()

    def writer(chunk):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", x.admin_port, timeout=70)
        for w in chunk:
            conn.request("PUT", f"/upstreams/pool/peers/{ups[0].addr}",
                         body=json.dumps({"weight": w}),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            with lock:
                results.append((r.status, w, json.loads(body)))
        conn.close()

    with Load(x.port, path="/pool/x", check=lambda b: b.startswith(b"{"),
              keepalive=2, oneshot=2) as load:
        assert load.wait_ok(20)
        # 8 clients, each writing its weights in order; the last write of all is 200
        chunks = [weights[i::8] for i in range(8)]
        threads = [threading.Thread(target=writer, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        assert load.wait_ok(20)
    assert load.stats.failures == [], load.stats.summary()
    assert len(results) == 200 and all(code == 200 for code, _, _ in results), \
        [r for r in results if r[0] != 200][:3]
    final_gen = try_status(x.admin_port)["generation"]
    print("burst: 200 writes ->", final_gen - 1, "reloads")
    assert final_gen - 1 <= 100, "the reloads were folded (8 writers: up to 8 writes a reload)"
    doc, _ = x.ok("GET", "/upstreams/pool")
    # the final state is the last write the server applied (the one answered last
    # with the highest generation)
    written = x.files()["conf.d/_admin/upstream.pool.conf"]
    weight = int(written.split("weight=")[1].split(";")[0])
    assert doc["peers"][0]["weight"] == weight
    applied_last = [w for code, w, d in results if d["generation"] == final_gen]
    assert weight in applied_last


# --------------------------------------------------------------------------- the CLI


def test_cli_set_peer_apply_history_rollback(edge, ups, tmp_path):
    x = start(edge, ups)

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "edge", "-c", str(x.e.conf_path), "admin",
                            *args], cwd=REPO, capture_output=True, text=True, timeout=90)
        return r.returncode, r.stdout + r.stderr

    code, out = cli("set-peer", "pool", ups[1].addr, "--weight", "4")
    assert code == 0 and "generation 2" in out, out
    assert servers_seen(x) == {"one", "two"}
    code, out = cli("set-peer", "pool", ups[0].addr, "--drain")
    assert code == 0, out
    assert servers_seen(x) == {"two"}
    code, out = cli("set-peer", "pool", ups[0].addr, "--up")
    assert code == 0
    code, out = cli("set-peer", "pool", ups[0].addr, "--weight", "0")
    assert code == 1 and "weight" in out, out
    f = tmp_path / "set.yaml"
    f.write_text(f"upstreams:\n  pool:\n    peers:\n    - address: {ups[2].addr}\n")
    code, out = cli("apply", str(f))
    assert code == 0 and "generation 5" in out, out
    assert servers_seen(x, 10) == {"three"}
    code, out = cli("history")
    assert code == 0 and "GENERATION" in out and "PUT /config" in out, out
    code, out = cli("rollback", "2")
    assert code == 0 and "generation 6" in out, out
    assert servers_seen(x) == {"one", "two"}
