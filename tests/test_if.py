"""`if (condition) { ... }` in server and location: each condition, the regex captures,
the file tests against real files and directories, and the order of if with rewrite,
set, return and break. Against a real edge process; EDGE_TEST_IMPL=nginx runs the same
table against nginx 1.22. Plus the configs edge refuses (other directives inside if,
if inside if), with file:line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import Upstream, get

REPO = Path(__file__).resolve().parent.parent

FILE_OPS = ["-f", "!-f", "-d", "!-d", "-e", "!-e", "-x", "!-x"]


def _file_locations():
    lines = []
    for i, op in enumerate(FILE_OPS):
        lines.append('        location /t%d/ { if (%s "@DIR@/$arg_p") { return 200 "yes"; } '
                     'return 200 "no"; }' % (i, op))
    return "\n".join(lines)


CONF = r"""
http {
    server {
        listen 127.0.0.1:@PORT@;
        if ($http_x_stop = "server") { return 403 "stopped-in-server"; }
        if ($arg_srvrw) {
            rewrite ^/srvrw/(.*)$ /echo/$1;
        }
        if ($arg_srvset) { set $sv "from-server"; }

        location /echo/ { return 200 "echo:$uri:$args"; }
        location /sv/ { return 200 "sv:$sv"; }
        location /var/ { if ($arg_a) { return 200 "a-true"; } return 200 "a-false"; }
        location /paren/ { if ( $arg_a ) { return 200 "spaced"; } return 200 "no"; }
        location /eq/ {
            if ($arg_a = "xy") { return 200 "eq"; }
            if ($arg_a != xy) { return 200 "ne"; }
        }
        location /eqvar/ { if ($arg_a = "$arg_b") { return 200 "same"; } return 200 "differ"; }
        location /eqempty/ { if ($arg_a = "") { return 200 "empty"; } return 200 "set"; }
        location /rx/ {
            if ($uri ~ ^/rx/([a-z]+)/([0-9]+)$) { return 200 "m:$1:$2"; }
            return 200 "nomatch";
        }
        location /rxi/ { if ($http_x_agent ~* curl) { return 200 "ci"; } return 200 "no"; }
        location /rxcase/ { if ($http_x_agent ~ curl) { return 200 "cs"; } return 200 "no"; }
        location /nrx/ { if ($uri !~ \.php$) { return 200 "not-php"; } return 200 "php"; }
        location /nrxi/ { if ($uri !~* \.php$) { return 200 "not-php"; } return 200 "php"; }
        location /capset/ {
            if ($arg_p ~ ^([a-z]+)-([a-z]+)$) { set $pair "$2+$1"; }
            return 200 "p:$pair:$1";
        }
        location /caprw/ {
            if ($arg_p ~ ^([a-z]+)$) { rewrite ^/caprw/(.*)$ /echo/$1/got last; }
            return 200 "stay";
        }
        location /rl/ {
            if ($arg_go) { rewrite ^/rl/(.*)$ /echo/$1 last; }
            return 200 "stay:$uri";
        }
        location /order/ {
            set $v "one";
            if ($arg_a) { set $v "two"; }
            if ($v = "two") { return 200 "second-if-saw:$v"; }
            return 200 "v:$v";
        }
        location /brk/ {
            set $a "before";
            if ($arg_stop) { break; }
            set $a "after";
            proxy_set_header X-A $a;
            proxy_pass http://@UP@;
        }
        location /ifbrk/ {
            if ($arg_go) { rewrite ^/ifbrk/(.*)$ /changed/$1 break; }
            proxy_pass http://@UP@;
        }
        location /keepcap/ {
            if ($arg_a ~ ^([a-z]+)$) { }
            if ($arg_b ~ ^(zzz)$) { }
            return 200 "k:$1";
        }
        location /keepcap2/ {
            if ($arg_a ~ ^([a-z]+)$) { }
            if ($arg_b ~ zzz) { }
            return 200 "k:$1";
        }
        location /quoted/ { if ($arg_a = "a b") { return 200 "never"; } if ($arg_a = "q") { return 200 "quoted"; } return 200 "no"; }
@FILES@
    }
}
"""

CASES = [
    # (target, headers, status, body)
    ("/var/?a=1", (), 200, "a-true"),
    ("/var/?a=0", (), 200, "a-false"),
    ("/var/?a=00", (), 200, "a-true"),
    ("/var/", (), 200, "a-false"),
    ("/var/?a=", (), 200, "a-false"),
    ("/paren/?a=1", (), 200, "spaced"),
    ("/paren/", (), 200, "no"),
    ("/eq/?a=xy", (), 200, "eq"),
    ("/eq/?a=XY", (), 200, "ne"),
    ("/eqvar/?a=k&b=k", (), 200, "same"),
    ("/eqvar/?a=k&b=j", (), 200, "differ"),
    ("/eqempty/", (), 200, "empty"),
    ("/eqempty/?a=1", (), 200, "set"),
    ("/rx/abc/42", (), 200, "m:abc:42"),
    ("/rx/abc/x", (), 200, "nomatch"),
    ("/rxi/", (("X-Agent", "CURL/8"),), 200, "ci"),
    ("/rxi/", (("X-Agent", "wget"),), 200, "no"),
    ("/rxcase/", (("X-Agent", "CURL/8"),), 200, "no"),
    ("/rxcase/", (("X-Agent", "curl/8"),), 200, "cs"),
    ("/nrx/a.php", (), 200, "php"),
    ("/nrx/a.PHP", (), 200, "not-php"),
    ("/nrx/a.html", (), 200, "not-php"),
    ("/nrxi/a.PHP", (), 200, "php"),
    ("/capset/?p=ab-cd", (), 200, "p:cd+ab:ab"),
    ("/capset/?p=nomatch", (), 200, "p::"),
    ("/caprw/x?p=abc", (), 200, "echo:/echo/x/got:p=abc"),
    ("/caprw/x?p=1", (), 200, "stay"),
    ("/rl/x?go=1", (), 200, "echo:/echo/x:go=1"),
    ("/rl/x", (), 200, "stay:/rl/x"),
    ("/order/?a=1", (), 200, "second-if-saw:two"),
    ("/order/", (), 200, "v:one"),
    ("/quoted/?a=q", (), 200, "quoted"),
    ("/keepcap/?a=abc&b=x", (), 200, "k:"),         # a regex that failed: no $1
    ("/keepcap/?a=abc&b=zzz", (), 200, "k:zzz"),
    ("/keepcap2/?a=abc&b=x", (), 200, "k:"),        # ... with or without groups
    ("/keepcap2/?a=abc&b=zzz", (), 200, "k:"),      # a match without groups: none
    ("/srvrw/x?srvrw=1", (), 200, "echo:/echo/x:srvrw=1"),
    ("/echo/x", (("X-Stop", "server"),), 403, "stopped-in-server"),
    ("/echo/x", (("X-Stop", "no"),), 200, "echo:/echo/x:"),
    ("/sv/?srvset=1", (), 200, "sv:from-server"),
    ("/sv/", (), 200, "sv:"),
]

# the file tests: (path under the directory, [expected for each of FILE_OPS])
FILES = [
    ("file.txt", ["yes", "no", "no", "yes", "yes", "no", "no", "yes"]),
    ("sub", ["no", "yes", "yes", "no", "yes", "no", "yes", "no"]),
    ("run.sh", ["yes", "no", "no", "yes", "yes", "no", "yes", "no"]),
    ("missing", ["no", "yes", "no", "yes", "no", "yes", "no", "yes"]),
    ("file.txt/below", ["no", "yes", "no", "yes", "no", "yes", "no", "yes"]),
    ("link-to-sub", ["no", "yes", "yes", "no", "yes", "no", "yes", "no"]),
    ("dangling", ["no", "yes", "no", "yes", "no", "yes", "no", "yes"]),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("iffiles")
    (d / "file.txt").write_text("x")
    (d / "sub").mkdir()
    (d / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(d / "run.sh", 0o755)
    os.chmod(d / "file.txt", 0o644)
    os.symlink(d / "sub", d / "link-to-sub")
    os.symlink(d / "nowhere", d / "dangling")
    return d


@pytest.fixture(scope="module")
def up():
    u = Upstream("up").start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory, files, up):
    from support import EdgeProcess
    conf = CONF.replace("@FILES@", _file_locations())
    e = EdgeProcess(tmp_path_factory.mktemp("if"), conf,
                    {"DIR": str(files), "UP": up.addr}).start()
    yield e
    e.stop()
    assert not e.problems, e.problems


@pytest.mark.parametrize("target,headers,status,body", CASES,
                         ids=["%s%s" % (c[0], "+" + c[1][0][1] if c[1] else "") for c in CASES])
def test_if_table(srv, target, headers, status, body):
    r = get(srv.port, target, headers=headers)
    assert (r.status, r.body.decode()) == (status, body)


@pytest.mark.parametrize("path,expected", FILES, ids=[f[0] for f in FILES])
def test_if_file_tests(srv, path, expected):
    got = [get(srv.port, "/t%d/?p=%s" % (i, path)).body.decode() for i in range(len(FILE_OPS))]
    assert dict(zip(FILE_OPS, got)) == dict(zip(FILE_OPS, expected))


def test_if_break_keeps_the_values_before_it(srv, up):
    r = get(srv.port, "/brk/x?stop=1")
    assert r.status == 200
    seen = json.loads(r.body)
    assert ["X-A", "before"] in [list(h) for h in seen["headers"]]
    r = get(srv.port, "/brk/x")
    assert ["X-A", "after"] in [list(h) for h in json.loads(r.body)["headers"]]


def test_if_rewrite_break_goes_upstream(srv, up):
    r = get(srv.port, "/ifbrk/x?go=1")
    assert json.loads(r.body)["target"] == "/changed/x?go=1"
    r = get(srv.port, "/ifbrk/x")
    assert json.loads(r.body)["target"] == "/ifbrk/x"


# ---- configs edge refuses ------------------------------------------------------------

def _edge_t(tmp_path, body):
    conf = tmp_path / "edge.conf"
    conf.write_text("http {\n    server {\n        listen 127.0.0.1:8080;\n" + body + "\n    }\n}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=30)
    return r, conf


REFUSED = [
    # (config body; the if opens on line 4, the offending line is given), message parts
    ('        location / {\n            if ($arg_a) { proxy_pass http://127.0.0.1:9; }\n        }',
     5, ['"proxy_pass" directive is not allowed here', 'inside "if"', "docs/traffic.md"]),
    ('        location / {\n            if ($arg_a) {\n                add_header X-A 1;\n'
     '            }\n        }', 6, ['"add_header" directive is not allowed here', '"if is evil"']),
    ('        if ($arg_a) {\n            if ($arg_b) { return 200; }\n        }', 5,
     ['"if" directive is not allowed here', 'inside "if"']),
    ('        location / {\n            if ($arg_a) { proxy_set_header X-A 1; }\n        }', 5,
     ['"proxy_set_header" directive is not allowed here']),
    ('        if ($arg_a == b) { return 200; }', 4, ['unexpected "==" in condition']),
    ('        if (-q /tmp) { return 200; }', 4, ['invalid condition "-q"']),
    ('        if $arg_a { return 200; }', 4, ['invalid condition "$arg_a"']),
    ('        if ($arg_a ~ "(") { return 200; }', 4, ['invalid regex']),
    ('        if ($arg_a = b c) { return 200; }', 4, ['invalid condition']),
]


@pytest.mark.edge_only
@pytest.mark.parametrize("body,line,parts", REFUSED, ids=range(len(REFUSED)))
def test_if_refused(tmp_path, body, line, parts):
    r, conf = _edge_t(tmp_path, body)
    assert r.returncode != 0
    out = r.stderr + r.stdout
    for part in parts:
        assert part in out, out
    assert f"{conf}:{line}" in out, out


@pytest.mark.edge_only
def test_if_accepted_with_each_safe_directive(tmp_path):
    r, _ = _edge_t(tmp_path, '        location / {\n            if ($arg_a) {\n'
                             '                set $x 1; rewrite ^ /b break; break;\n'
                             '                return 204;\n            }\n        }')
    assert r.returncode == 0, r.stderr
