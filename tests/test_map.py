"""map, split_clients and proxy_pass http://$var, against a real edge process and real
upstreams. Expectations are nginx's: run with EDGE_TEST_IMPL=nginx to check them against
nginx (split_clients must put each key on the side nginx puts it).
"""

import json
import time

import pytest

from support import Conn, Upstream, get

CONF = r"""
http {
    upstream stable { server @UPA@; }
    upstream canary { server @UPB@; }

    map $http_x_canary $pool { default $split_pool; "1" canary; "0" stable; }
    split_clients "${remote_addr}${http_x_user}" $split_pool { 20% canary; * stable; }

    map $host $hname {
        hostnames;
        default none;
        example.com exact;
        *.example.com wild;
        a.b.example.com deeper-exact;
        .example.org dotted;
        www.example.* tail;
    }
    map $uri $mapped {
        default def;
        /exact/Key exact-key;
        ~^/m/(\d+)/([a-z]+)$ "num-$1-$2";
        ~*^/ci/ABC ci;
        ~^/m/ second-regex;
    }
    map $arg_k $fromvar { default "d-$uri"; a "A:$arg_z"; }
    map $arg_k $nodefault { a x; }
    map $http_x_inc $included { include @MAPFILE@; default no; }
    map $arg_v $vol { volatile; default "v$arg_v"; }
    split_clients "${arg_id}" $side { 10% canary; 0.5% tiny; 39.5% mid; * stable; }
    split_clients "${arg_id}" $partial { 50% half; }

    server {
        listen 127.0.0.1:@PORT@;
        location /pool/ { proxy_pass http://$pool; }
        location /pooluri/ { proxy_pass http://$pool/fixed/path?a=1; }
        location /bad/ { set $p nope; proxy_pass http://$p; }
        location = /h { return 200 "$hname"; }
        location /m/ { return 200 "$mapped"; }
        location /ci/ { return 200 "$mapped"; }
        location /exact/ { return 200 "$mapped"; }
        location = /v { return 200 "[$fromvar][$nodefault]"; }
        location = /inc { return 200 "$included"; }
        location = /vol { return 200 "$vol"; }
        location = /split { return 200 "$side|$partial"; }
        location = /set { set $pool stable; set $x "[$pool]"; return 200 "$x"; }
        location /log/ { add_header X-Pool $pool; proxy_pass http://$pool; }
    }
}
"""


@pytest.fixture(scope="module")
def ups():
    a = Upstream("stable").start()
    b = Upstream("canary").start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory, ups):
    from support import EdgeProcess
    d = tmp_path_factory.mktemp("map")
    mapfile = d / "extra.map"
    mapfile.write_text("from-file yes;\n~^re-(.*)$ re-$1;\n")
    e = EdgeProcess(d, CONF, {"UPA": ups[0].addr, "UPB": ups[1].addr, "MAPFILE": str(mapfile)}).start()
    yield e
    e.stop()
    assert not e.problems, e.problems


@pytest.mark.parametrize("host,expected", [
    ("example.com", "exact"),
    ("EXAMPLE.com", "exact"),               # host names compare case-insensitively
    ("example.com.", "exact"),              # a trailing dot is ignored with hostnames
    ("x.example.com", "wild"),
    ("a.b.example.com", "deeper-exact"),    # an exact name beats a wildcard
    ("z.b.example.com", "wild"),
    ("example.org", "dotted"),              # ".example.org" also matches the bare name
    ("q.example.org", "dotted"),
    ("www.example.net", "tail"),
    ("other.net", "none"),
])
def test_map_hostnames(srv, host, expected):
    assert get(srv.port, "/h", host=host).body.decode() == expected


@pytest.mark.parametrize("target,expected", [
    ("/m/12/abc", "num-12-abc"),            # regex captures in the value
    ("/m/x", "second-regex"),               # regexes in order
    ("/ci/abc", "ci"),                      # ~* is case-insensitive
    ("/exact/Key", "exact-key"),
    ("/exact/key", "exact-key"),            # exact keys are case-insensitive (nginx hashes them lowercase)
    ("/exact/other", "def"),
])
def test_map_keys(srv, target, expected):
    assert get(srv.port, target).body.decode() == expected


def test_map_values_with_variables_and_no_default(srv):
    assert get(srv.port, "/v?k=a&z=9").body.decode() == "[A:9][x]"
    assert get(srv.port, "/v?k=b").body.decode() == "[d-/v][]"


def test_map_include_and_volatile(srv):
    assert get(srv.port, "/inc", headers=[("X-Inc", "from-file")]).body.decode() == "yes"
    assert get(srv.port, "/inc", headers=[("X-Inc", "re-abc")]).body.decode() == "re-abc"
    assert get(srv.port, "/inc").body.decode() == "no"
    assert get(srv.port, "/vol?v=3").body.decode() == "v3"


def test_set_overrides_a_map_variable(srv):
    assert get(srv.port, "/set", headers=[("X-Canary", "1")]).body.decode() == "[stable]"


def test_header_rule_wins_over_split(srv, ups):
    stable, canary = ups
    for i in range(20):
        r = get(srv.port, "/pool/x", headers=[("X-Canary", "1"), ("X-User", f"u{i}")])
        assert json.loads(r.body)["server"] == "canary"
        r = get(srv.port, "/pool/x", headers=[("X-Canary", "0"), ("X-User", f"u{i}")])
        assert json.loads(r.body)["server"] == "stable"


def test_proxy_pass_variable_picks_group(srv, ups):
    r = get(srv.port, "/pool/a?q=1", headers=[("X-Canary", "1")])
    assert json.loads(r.body)["server"] == "canary"
    assert json.loads(r.body)["target"] == "/pool/a?q=1"
    # with a URI part and variables, that URI is sent as it is (nginx)
    r = get(srv.port, "/pooluri/a?q=1", headers=[("X-Canary", "0")])
    assert json.loads(r.body)["server"] == "stable"
    assert json.loads(r.body)["target"] == "/fixed/path?a=1"


def test_proxy_pass_variable_unknown_group(srv):
    r = get(srv.port, "/bad/x")
    assert r.status == 502
    deadline = time.monotonic() + 5
    while "no resolver defined to resolve nope" not in srv.error_log_path.read_text():
        assert time.monotonic() < deadline, "no resolver line in the error log"
        time.sleep(0.05)


def test_split_by_user_sticks(srv, ups):
    """Without the header, the split decides; the same user always lands on the same side."""
    sides = {}
    with Conn(srv.port) as c:
        for rnd in range(2):
            for i in range(40):
                r = c.request("GET", "/log/x", headers=[("X-User", f"user{i}")])
                side = json.loads(r.body)["server"]
                assert r.header("X-Pool") == side
                assert sides.setdefault(i, side) == side
    assert set(sides.values()) == {"stable", "canary"}


def murmur2(data: bytes) -> int:
    """nginx's ngx_murmur_hash2, the model the split is checked against."""
    m = 0x5bd1e995
    n = len(data)
    h = n & 0xffffffff
    i = 0
    while n >= 4:
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xffffffff
        k ^= k >> 24
        k = (k * m) & 0xffffffff
        h = (h * m) & 0xffffffff
        h ^= k
        i += 4
        n -= 4
    if n == 3:
        h ^= data[i + 2] << 16
    if n >= 2:
        h ^= data[i + 1] << 8
    if n >= 1:
        h ^= data[i]
        h = (h * m) & 0xffffffff
    h ^= h >> 13
    h = (h * m) & 0xffffffff
    h ^= h >> 15
    return h


def model_side(key: str, parts):
    """nginx's split: cumulative shares of 2^32 - 1, `*` (0) takes the rest."""
    h = murmur2(key.encode())
    last = 0
    total = 0
    for share, value in parts:
        total = total + share if share else 10000
        if total == 10000:
            share = 0
        if share:
            last += share * 0xffffffff // 10000
            if h < last:
                return value
        else:
            return value
    return ""


SIDE = [(1000, "canary"), (50, "tiny"), (3950, "mid"), (0, "stable")]
PARTIAL = [(5000, "half")]


def test_split_clients_same_side_as_nginx_and_shares(srv):
    n = 10000
    counts = {}
    mismatches = []
    c = None
    for i in range(n):
        if i % 500 == 0:        # keepalive_requests (1000) ends a connection
            if c is not None:
                c.close()
            c = Conn(srv.port)
        key = f"client-{i}"
        got = c.request("GET", f"/split?id={key}").body.decode()
        if True:
            want = f"{model_side(key, SIDE)}|{model_side(key, PARTIAL)}"
            if got != want and len(mismatches) < 5:
                mismatches.append((key, got, want))
            side = got.split("|")[0]
            counts[side] = counts.get(side, 0) + 1
    c.close()
    assert not mismatches, mismatches
    for share, value in SIDE:
        expected = (share or 10000 - sum(s for s, _ in SIDE)) / 10000
        assert abs(counts.get(value, 0) / n - expected) <= 0.03, (value, counts)


BAD_CONFIGS = [
    ('split_clients $remote_addr $s { 60% a; 50% b; }', "percent total is greater than 100%", 1),
    ('split_clients $remote_addr $s { 0.555% a; }', 'invalid percent value "0.555%"', 1),
    ('map $uri $m { ~(?i)x y; }', "(?...) groups are not supported", 1),
    ('map $uri $m { a b c; }', "invalid number of the map parameters", 1),
    ('server { listen 127.0.0.1:1; location / { return 200 "$nope"; } }', 'unknown "nope" variable', 1),
    ('server { listen 127.0.0.1:1; location / { rewrite ^ /x bogus; } }', 'invalid parameter "bogus"', 1),
    ('server { listen 127.0.0.1:1; location / { set $p a;\nproxy_pass http://$p;\nproxy_redirect default; } }',
     '"proxy_redirect default" cannot be used with "proxy_pass" directive with variables', 3),
]


@pytest.mark.edge_only
@pytest.mark.parametrize("body,message,line", BAD_CONFIGS, ids=[m for _, m, _ in BAD_CONFIGS])
def test_config_errors_name_file_and_line(body, message, line):
    from edge.config import ConfigError, parse_string
    from edge.cycle import from_parsed
    text = "http {\n" + body + "\n}\n"
    with pytest.raises(ConfigError) as info:
        from_parsed("/x/edge.conf", parse_string(text, "/x/edge.conf"))
    assert message in str(info.value)
    assert str(info.value).endswith(f"/x/edge.conf:{line + 1}"), str(info.value)


@pytest.mark.edge_only
def test_murmur_matches_the_model():
    from edge._core.reactor import murmur2 as compiled
    for key in [b"", b"a", b"ab", b"abc", b"abcd", b"abcde", b"127.0.0.1", b"client-12345"]:
        assert compiled(key) == murmur2(key)


BLUE_GREEN = r"""
http {
    upstream blue { server @UPA@; }
    upstream green { server @UPB@; }
    map $host $live { hostnames; default blue; preview.example.com green; }
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://$live; }
    }
}
"""


def test_blue_green_switch_by_reload(edge, upstream_factory):
    import signal
    blue, green = upstream_factory("blue"), upstream_factory("green")
    e = edge(BLUE_GREEN, UPA=blue, UPB=green)

    def side(host="example.com"):
        return json.loads(get(e.port, "/x", host=host).body)["server"]

    assert side() == "blue"
    assert side("preview.example.com") == "green"
    e.conf_path.write_text(e.conf_text.replace("default blue;", "default green;"))
    e.send_signal(signal.SIGHUP)
    # the new generation takes over (nginx's old workers may still take a connection or
    # two while they stop): wait for 20 requests in a row on green
    deadline = time.monotonic() + 10
    streak = 0
    while streak < 20:
        assert time.monotonic() < deadline, "the switch did not apply"
        streak = streak + 1 if side() == "green" else 0
    assert side("preview.example.com") == "green"


LOGGED = r"""
http {
    map $http_x_canary $pool { default stable; "1" canary; }
    log_format pools '$pool|$who|$uri';
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            access_log @LOG@ pools;
            set $who "u-$arg_u";
            return 200 "ok";
        }
    }
}
"""


def test_user_variables_in_the_access_log(edge, tmp_path):
    log = tmp_path / "pools.log"
    e = edge(LOGGED, LOG=str(log))
    get(e.port, "/a?u=1", headers=[("X-Canary", "1")])
    get(e.port, "/b?u=2")
    deadline = time.monotonic() + 5
    while len(log.read_text().splitlines() if log.exists() else []) < 2:
        assert time.monotonic() < deadline, "the access log has no 2 lines"
        time.sleep(0.05)
    assert log.read_text().splitlines() == ["canary|u-1|/a", "stable|u-2|/b"]
