"""The admin API (issue 13, part 1): access (token, token file, admin_allow), the reads
(/status, /config, /routes, /upstreams, /consumers, /zones), the actions (/reload,
/drain, /undrain) and `edge admin`, against a running edge with real upstreams."""

import base64
import json
import os
import subprocess
import sys
import threading

import pytest

from support import Upstream, get
from support.edge import REPO
from test_control import admin, try_status, wait_for, wait_status
from test_reload import run_edge, wait_generation

pytestmark = pytest.mark.edge_only      # edge's own admin API

TOKEN = "adm1n-T0ken_for.tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

CONF = """
worker_processes 2;
http {
    admin_listen 127.0.0.1:@PORT2@;
    consumers @CONSUMERS@;
    limit_req_zone $remote_addr zone=perip:1m rate=1000r/s;
    upstream api {
        server @UP1@ weight=3 max_fails=2 fail_timeout=30s;
        server @UP2@ backup;
        server 127.0.0.1:9 down;
    }
    upstream dead { server @CLOSED@ max_fails=1 fail_timeout=60s; }
    server {
        listen 127.0.0.1:@PORT@;
        server_name api.test;
        location = /readyz { health ready; }
        location /v1/ {
            route_name v1;
            limit_req zone=perip burst=10;
            key_auth;
            proxy_pass http://api;
            location /v1/inner/ { proxy_pass http://api; }
        }
        location /plain/ { proxy_pass http://api; }
        location /dead/ { proxy_pass http://dead; }
        location / { return 200 "v@V@"; }
    }
}
"""

# Every secret of the consumers file: none may appear in any answer of the API.
HS_SECRET = "alice-hs-secret-of-at-least-32-bytes!"
B64_RAW = b"bob's raw secret bytes, base64 in the file"
SECRETS = ["alice-key-1-SECRET", "alice-key-2-SECRET", "bob-key-SECRET", HS_SECRET,
           base64.b64encode(B64_RAW).decode(), B64_RAW.decode()]


def consumers_file(tmp_path):
    from edge.modules.consumers import hash_password
    password_hash = hash_password("alice's password")
    SECRETS.append(password_hash)
    SECRETS.append(password_hash.split("$")[-1])      # the derived key alone
    SECRETS.append(password_hash.split("$")[-2])      # the salt
    SECRETS.append("alice's password")
    import yaml
    doc = {"consumers": [
        {"username": "alice", "custom_id": "1001", "groups": ["admin", "beta"],
         "credentials": {
             "key_auth": [{"key": "alice-key-1-SECRET"},
                          {"key": "alice-key-2-SECRET", "id": "alice-k2"}],
             "basic_auth": [{"username": "alice", "password_hash": password_hash}],
             "jwt": [{"key": "alice-iss", "algorithm": "HS256", "secret": HS_SECRET}]}},
        {"username": "bob", "groups": ["beta"],
         "credentials": {"key_auth": [{"key": "bob-key-SECRET"}],
                         "jwt": [{"key": "bob-b64", "algorithm": "HS512",
                                  "secret": base64.b64encode(B64_RAW).decode(),
                                  "secret_base64": True}]}},
        {"username": "carol"},
    ]}
    path = tmp_path / "consumers.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def ups(upstream_factory):
    return upstream_factory("one"), upstream_factory("two")


def start(edge, tmp_path, ups, conf=CONF, v=0, headers=None):
    from support import closed_port
    e = edge(conf.replace("@V@", str(v)), UP1=ups[0], UP2=ups[1],
             CONSUMERS=str(consumers_file(tmp_path)), CLOSED=f"127.0.0.1:{closed_port()}")
    e.admin_port = e.ports["PORT2"]
    wait_for(lambda: (lambda s: s is not None and s["ready"])(try_status(e.admin_port, headers)),
             10, "the admin listener", e)
    return e


def api(e, path, method="GET", headers=None, status=200):
    code, hdrs, body = admin(e.admin_port, path, method, headers)
    assert code == status, (path, code, body)
    if hdrs.get("content-type", "").startswith("application/json"):
        return json.loads(body), hdrs
    return body.decode(), hdrs


# --------------------------------------------------------------------------- reads


def test_status_names_workers_heartbeats_generation_and_readiness(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    pids = sorted(e.wait_workers(2))
    st, hdrs = api(e, "/status")
    assert hdrs["etag"] == '"1"'
    assert st["generation"] == 1 and st["control_generation"] == 1
    assert st["master_pid"] == e.pid
    assert st["ready"] is True and st["draining"] is False and st["config_failed"] is False
    assert st["version"] and st["uptime_seconds"] >= 0
    assert sorted(w["pid"] for w in st["workers"]) == pids
    st = wait_status(e.admin_port, lambda s: all(w["heartbeat_age_ms"] is not None
                                                 for w in s["workers"]), e)
    assert all(0 <= w["heartbeat_age_ms"] < 5000 for w in st["workers"])
    assert st["workers_up"] == st["workers_expected"] == 2


def test_routes_list_every_location_with_its_phases(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    doc, hdrs = api(e, "/routes")
    assert doc["generation"] == 1 and hdrs["etag"] == '"1"'
    by_location = {r["location"]: r for r in doc["routes"]}
    assert list(by_location) == ["= /readyz", "/v1/", "/v1/inner/", "/plain/", "/dead/", "/"]
    v1 = by_location["/v1/"]
    assert v1["route"] == "v1" and v1["server"] == "api.test"
    assert v1["server_names"] == ["api.test"]
    assert v1["listen"] == [f"127.0.0.1:{e.port}"]
    assert v1["content"] == "proxy_pass" and v1["upstream"] == "api"
    assert v1["phases"]["access"] == ["AuthChain", "Limit"]
    assert v1["directives"] == ["route_name", "limit_req", "key_auth", "proxy_pass"]
    assert v1["file"] == str(e.conf_path) and v1["line"] == e.line_of("location /v1/ {")
    assert by_location["/v1/inner/"]["parent"] == "/v1/"
    assert by_location["= /readyz"]["content"] == "health"
    assert by_location["/"]["content"] == "return" and by_location["/"]["upstream"] is None
    assert by_location["/plain/"]["phases"] == {"rewrite": [], "access": [],
                                                "header_filter": [], "log": []}


def test_upstreams_show_weight_state_health_failures_and_active_connections(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    one, two = ups
    doc, _ = api(e, "/upstreams")
    names = [u["name"] for u in doc["upstreams"]]
    assert names[:2] == ["api", "dead"]
    group, _ = api(e, "/upstreams/api")
    assert group["method"] == "round_robin"
    peers = {p["peer"]: p for p in group["peers"]}
    assert peers[one.addr]["weight"] == 3 and peers[one.addr]["max_fails"] == 2
    assert peers[one.addr]["fail_timeout"] == 30.0
    assert peers[one.addr]["state"] == "up" and peers[one.addr]["health"] == "unchecked"
    assert peers[two.addr]["backup"] is True
    assert peers["127.0.0.1:9"]["down"] is True and peers["127.0.0.1:9"]["state"] == "down"

    # a failed peer: its failures count, and it is out until fail_timeout
    assert get(e.port, "/dead/x").status == 502
    dead = wait_for(lambda: (lambda d: d if d["peers"][0]["failures"] >= 1 else None)(
        api(e, "/upstreams/dead")[0]), 10, "the failure in /upstreams/dead", e)
    assert dead["peers"][0]["state"] == "unavailable"

    # a request held by the upstream is an active connection of its peer
    gate = one.gate("held")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", get(e.port, "/plain/gated/held/10",
                                                                   timeout=30)))
    t.start()
    try:
        peer = wait_for(lambda: (lambda p: p if p["active"] == 1 else None)(
            {p["peer"]: p for p in api(e, "/upstreams/api")[0]["peers"]}[one.addr]),
            10, "one active connection to the first peer", e)
        assert peer["state"] == "up"
    finally:
        gate.set()
        t.join(30)
    assert result["r"].status == 200
    wait_for(lambda: {p["peer"]: p for p in api(e, "/upstreams/api")[0]["peers"]}[one.addr]["active"] == 0,
             10, "no active connection once answered", e)

    err, _ = api(e, "/upstreams/nope", status=404)
    assert err == {"error": 'no upstream "nope"', "field": "name"}


def test_consumers_show_groups_and_credential_ids_but_never_a_secret(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    texts = []
    doc, hdrs = api(e, "/consumers")
    texts.append(json.dumps(doc))
    assert doc["file"].endswith("consumers.yaml")
    assert [c["username"] for c in doc["consumers"]] == ["alice", "bob", "carol"]
    alice, _ = api(e, "/consumers/alice")
    texts.append(json.dumps(alice))
    assert alice["custom_id"] == "1001" and alice["groups"] == ["admin", "beta"]
    assert alice["credentials"] == [
        {"type": "key_auth", "id": "alice/key_auth/0"},
        {"type": "key_auth", "id": "alice-k2"},
        {"type": "basic_auth", "id": "alice", "username": "alice"},
        {"type": "jwt", "id": "alice-iss", "key": "alice-iss", "algorithm": "HS256"}]
    for name in ("bob", "carol"):
        texts.append(json.dumps(api(e, f"/consumers/{name}")[0]))
    assert api(e, "/consumers/carol")[0]["credentials"] == []
    # the whole API, config included, never shows a secret of the consumers file
    for path in ("/status", "/routes", "/config", "/config?format=tree", "/zones", "/upstreams"):
        texts.append(admin(e.admin_port, path)[2].decode())
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret!r} in {text[:200]}"
    err, _ = api(e, "/consumers/nobody", status=404)
    assert err["field"] == "name"


def test_zones_show_the_limit_zone_and_its_use(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    for _ in range(3):
        assert get(e.port, "/v1/x", headers=[("apikey", "alice-key-1-SECRET")]).status == 200
    doc, _ = api(e, "/zones")
    zones = {z["name"]: z for z in doc["zones"]}
    perip = zones["perip"]
    assert perip["type"] == "limit_req" and perip["size"] == 1024 * 1024
    assert perip["key"] == "$remote_addr" and perip["line"] == e.line_of("limit_req_zone")
    assert perip["entries"] == 1 and perip["capacity"] > 1000
    assert perip["admitted"] >= 3 and 0 < perip["used"] < 1
    assert zones["metrics"]["series"] > 0
    assert zones["metrics"]["series"] <= zones["metrics"]["series_capacity"]


def test_config_is_what_edge_T_prints_and_the_tree_has_file_and_line(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    inc = tmp_path / "extra.conf"
    inc.write_text("# included\nmap $host $m { default 1; }\n")
    text = e.conf_path.read_text().replace("http {", f"http {{\n    include {inc};", 1)
    e.conf_path.write_text(text)
    api(e, "/reload", "POST")
    dump = run_edge("-T", "-c", e.conf_path)
    assert dump.returncode == 0, dump.stderr
    served, hdrs = api(e, "/config?format=text")
    assert hdrs["content-type"].startswith("text/plain")
    assert served == dump.stdout
    doc, _ = api(e, "/config")
    assert doc["text"] == dump.stdout and doc["generation"] == 2
    assert [f["path"] for f in doc["files"]] == [str(e.conf_path), str(inc)]
    tree, _ = api(e, "/config?format=tree")
    http = next(d for d in tree["directives"] if d["name"] == "http")
    assert http["file"] == str(e.conf_path)
    mapped = next(d for d in http["block"] if d["name"] == "map")
    assert mapped["file"] == str(inc) and mapped["line"] == 2
    assert mapped["args"] == ["$host", "$m"]
    server = next(d for d in http["block"] if d["name"] == "server")
    loc = next(d for d in server["block"] if d["name"] == "location" and d["args"] == ["/v1/"])
    assert loc["line"] == e.line_of("location /v1/ {") + 1     # one include line above
    err, _ = api(e, "/config?format=yaml", status=400)
    assert err["field"] == "format"


# --------------------------------------------------------------------------- actions


def test_post_reload_picks_up_a_changed_file_and_reports_a_broken_one(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    assert get(e.port, "/").body == b"v0"
    e.conf_path.write_text(e.conf_path.read_text().replace('"v0"', '"v1"'))
    doc, hdrs = api(e, "/reload", "POST")
    assert doc == {"reloaded": True, "generation": 2, "previous_generation": 1}
    assert hdrs["etag"] == '"2"'
    assert get(e.port, "/").body == b"v1"          # in force when the answer comes
    assert api(e, "/status")[0]["control_generation"] == 2
    assert '"v1"' in api(e, "/config")[0]["text"]

    good = e.conf_path.read_text()
    e.conf_path.write_text(good.replace('return 200 "v1";', 'return 200 "v2"; bogus_directive;'))
    err, _ = api(e, "/reload", "POST", status=422)
    line = e.line_of('location / { return 200')
    assert err["file"] == str(e.conf_path) and err["line"] == line
    assert f"{e.conf_path}:{line}" in err["error"] and "bogus_directive" in err["error"]
    assert err["generation"] == 2
    assert get(e.port, "/").body == b"v1"          # the old generation keeps serving
    assert api(e, "/status")[0]["config_failed"] is True

    e.conf_path.write_text(good.replace('"v1"', '"v3"'))
    assert api(e, "/reload", "POST")[0]["generation"] == 3
    assert get(e.port, "/").body == b"v3"
    assert api(e, "/status")[0]["ready"] is True
    err, hdrs = api(e, "/reload", status=405)
    assert hdrs["allow"] == "POST"


def test_concurrent_reload_requests_fold_and_each_sees_a_reload_after_it(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    e.conf_path.write_text(e.conf_path.read_text().replace('"v0"', '"v1"'))
    answers = []

    def post():
        answers.append(api(e, "/reload", "POST")[0])
    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 6 and all(a["reloaded"] for a in answers)
    generations = [a["generation"] for a in answers]
    assert min(generations) >= 2
    # folded: never more reloads than requests, and the last one is the one in force
    st = api(e, "/status")[0]
    assert st["generation"] == max(generations) <= 1 + len(answers)
    assert get(e.port, "/").body == b"v1"
    wait_generation(e, st["generation"])


def test_drain_and_undrain_change_readiness_not_traffic(edge, tmp_path, ups):
    e = start(edge, tmp_path, ups)
    assert get(e.port, "/readyz").status == 200
    doc, _ = api(e, "/drain", "POST")
    assert doc == {"draining": True, "ready": False, "ready_reason": "draining"}
    assert get(e.port, "/readyz").status == 503
    assert get(e.port, "/").status == 200
    assert api(e, "/status")[0]["draining"] is True
    doc, _ = api(e, "/undrain", "POST")
    assert doc["draining"] is False and doc["ready"] is True
    assert get(e.port, "/readyz").status == 200


# --------------------------------------------------------------------------- access


ACCESS = """
http {
    admin_listen 0.0.0.0:@PORT2@;
    admin_token_file @TOKENFILE@;
    @ALLOW@
    server { listen 127.0.0.1:@PORT@; location / { return 200 "ok"; } }
}
"""


def test_token_file_and_admin_allow_refuse_what_they_must(edge, tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text(f"\n  {TOKEN}\n")
    e = edge(ACCESS.replace("@ALLOW@", "admin_allow 10.0.0.0/8 127.0.0.0/8 fd00::/8;"),
             TOKENFILE=str(token_file))
    port = e.ports["PORT2"]
    wait_for(lambda: try_status(port, AUTH), 10, "the admin listener", e)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
                    {"Authorization": f"Basic {TOKEN}"}):
        for path in ("/status", "/consumers", "/config", "/nope"):
            code, _, body = admin(port, path, headers=headers)
            assert code == 401 and json.loads(body) == {"error": "unauthorized"}, (headers, path)
        code, _, _ = admin(port, "/drain", "POST", headers)
        assert code == 401
    assert admin(port, "/status", headers=AUTH)[0] == 200
    assert admin(port, "/status", headers=AUTH)[0] == 200
    # the token file is not in the config text the API shows
    config = admin(port, "/config", headers=AUTH)[2].decode()
    assert TOKEN not in config and "admin_token_file" in config

    # a peer outside admin_allow: 403, even with the token
    e.conf_path.write_text(e.conf_path.read_text().replace(
        "admin_allow 10.0.0.0/8 127.0.0.0/8 fd00::/8;", "admin_allow 10.0.0.0/8 ::1;"))
    code, _, body = admin(port, "/reload", "POST", AUTH)
    assert code == 200, body
    for headers in ({}, AUTH):
        code, _, body = admin(port, "/status", headers=headers)
        assert code == 403 and json.loads(body) == {"error": "forbidden"}

    # a changed token file is read again on reload (sent by `edge -s reload` here,
    # since the admin API no longer answers this peer)
    e.conf_path.write_text(e.conf_path.read_text().replace("admin_allow 10.0.0.0/8 ::1;",
                                                           "admin_allow all;"))
    token_file.write_text("n3w-token\n")
    assert run_edge("-s", "reload", "-c", e.conf_path).returncode == 0
    wait_for(lambda: try_status(port, {"Authorization": "Bearer n3w-token"}), 10, "the new token", e)
    assert admin(port, "/status", headers=AUTH)[0] == 401


def v6_admin(port, path="/status", headers=None):
    import http.client
    conn = http.client.HTTPConnection("::1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_admin_allow_matches_ipv6_peers_and_refuses_garbage_from_outside_with_403(edge, tmp_path):
    import socket
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    e = edge(ACCESS.replace("0.0.0.0:@PORT2@", "[::]:@PORT2@")
             .replace("@ALLOW@", "admin_allow ::1/128;"), TOKENFILE=str(token_file))
    port = e.ports["PORT2"]

    def status():
        try:
            return v6_admin(port, headers=AUTH)[0] == 200
        except OSError:
            return False
    wait_for(status, 10, "the admin listener on [::]", e)
    assert v6_admin(port, headers={})[0] == 401           # allowed peer, no token
    e.conf_path.write_text(e.conf_path.read_text().replace("admin_allow ::1/128;",
                                                           "admin_allow 2001:db8::/32 127.0.0.1;"))
    assert v6_admin(port, "/reload", AUTH)[0] == 405       # still allowed: GET on a POST
    import http.client
    conn = http.client.HTTPConnection("::1", port, timeout=5)
    conn.request("POST", "/reload", headers=AUTH)
    assert conn.getresponse().status == 200
    conn.close()
    code, body = v6_admin(port, headers=AUTH)
    assert code == 403 and json.loads(body) == {"error": "forbidden"}
    # even a request that is not HTTP gets its 403, then the connection closes
    with socket.create_connection(("::1", port), timeout=5) as s:
        s.sendall(b"garbage\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 403 ") and b"Connection: close" in data


def test_access_config_errors_name_file_and_line(tmp_path):
    conf = tmp_path / "edge.conf"

    def check(text, needle, line):
        conf.write_text(text)
        r = run_edge("-t", "-c", conf)
        assert r.returncode == 1, text
        assert f"{conf}:{line}" in r.stderr and needle in r.stderr, r.stderr

    check("worker_processes 1;\nhttp {\n    admin_listen 0.0.0.0:9180;\n"
          "    admin_allow 127.0.0.1;\n}\n", "admin_token_file", 3)
    check("http {\n  admin_listen [::]:9180;\n}\n", "not a loopback address", 2)
    check("http {\n  admin_listen 127.0.0.1:9180;\n  admin_token_file /nonexistent/t;\n}\n",
          "admin_token_file", 3)
    (tmp_path / "empty.token").write_text("\n")
    check(f"http {{\n  admin_token_file {tmp_path}/empty.token;\n  admin_listen 0.0.0.0:1;\n}}\n",
          "must hold one token", 2)
    (tmp_path / "t").write_text("tok")
    check(f"http {{\n  admin_token x;\n  admin_token_file {tmp_path}/t;\n}}\n", "exclusive", 3)
    check("http {\n  admin_listen 127.0.0.1:9180;\n  admin_allow 10.0.0.0/33;\n}\n",
          "admin_allow", 3)
    # good ones: a relative token file (from the config's directory), v4 and v6 CIDRs
    conf.write_text("http {\n  admin_listen 0.0.0.0:9180;\n  admin_token_file t;\n"
                    "  admin_allow 192.168.0.0/16 10.1.2.3 2001:db8::/32;\n  admin_allow ::1;\n}\n")
    r = run_edge("-t", "-c", conf)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- the CLI


def run_admin(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)


def test_edge_admin_prints_tables_and_json_with_the_token_of_the_config(edge, tmp_path, ups):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    e = start(edge, tmp_path, ups, CONF.replace(
        "admin_listen 127.0.0.1:@PORT2@;",
        f"admin_listen 127.0.0.1:@PORT2@; admin_token_file {token_file};"), headers=AUTH)
    r = run_admin("admin", "status", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert "generation 1" in r.stdout and "ready: yes" in r.stdout
    for pid in e.worker_pids():
        assert f" {pid} " in r.stdout
    r = run_admin("-c", e.conf_path, "admin", "routes")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if " v1 " in ln)
    assert "/v1/" in line and "proxy_pass api" in line and "AuthChain,Limit" in line
    r = run_admin("admin", "upstreams", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ups[0].addr in ln)
    assert line.split()[:4] == ["api", ups[0].addr, "3", "up"]
    r = run_admin("admin", "consumers", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert "key_auth:alice-k2" in r.stdout and "SECRET" not in r.stdout
    r = run_admin("admin", "consumers", "--json", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert [c["username"] for c in json.loads(r.stdout)["consumers"]] == ["alice", "bob", "carol"]
    # a wrong token in the config: the API's refusal is reported, exit 1
    token_file.write_text("wrong")
    r = run_admin("admin", "status", "-c", e.conf_path)
    assert r.returncode == 1 and "401 unauthorized" in r.stderr, r.stderr
