"""nginx's auth_basic / auth_basic_user_file: an htpasswd file with one user of each hash
kind (made with passlib, and with `openssl passwd` and a {SHA} computed here), the realm,
`off` in a nested location, $remote_user, the file's odd lines, a file edited while
serving, a missing file. Against a real edge process; EDGE_TEST_IMPL=nginx runs the same
table against nginx 1.22."""

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import Upstream, get
from support.edge import IMPL

REPO = Path(__file__).resolve().parent.parent
PW = "s3cret pass"


def _openssl(*args):
    return subprocess.run(["openssl", "passwd", *args, PW], capture_output=True, text=True,
                          check=True).stdout.strip()


def _lines():
    from passlib.hash import apr_md5_crypt, bcrypt, sha256_crypt, sha512_crypt
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(PW.encode()).digest()).decode()
    return [
        "# a comment line",
        "bcrypt2y:" + bcrypt.using(ident="2y", rounds=5).hash(PW),
        "bcrypt2a:" + bcrypt.using(ident="2a", rounds=5).hash(PW),
        "bcrypt2b:" + bcrypt.using(ident="2b", rounds=5).hash(PW),
        "apr1:" + apr_md5_crypt.hash(PW),
        "apr1ssl:" + _openssl("-apr1"),
        "md5ssl:" + _openssl("-1"),
        "sha1:" + sha,
        "sha256:" + sha256_crypt.using(rounds=5000).hash(PW),
        "sha512:" + sha512_crypt.using(rounds=5000).hash(PW),
        "sha512ssl:" + _openssl("-6"),
        "plain:{PLAIN}" + PW,
        "",
        "nocolon",
        "dup:{PLAIN}first",
        "dup:{PLAIN}second",
        "extra:{PLAIN}" + PW + ":a comment field",
        "crlf:{PLAIN}" + PW + "\r",
        "editme:{PLAIN}before",
        "badhash:!locked",
        "deshash:notahash",
    ]


USERS = ["bcrypt2y", "bcrypt2a", "bcrypt2b", "apr1", "apr1ssl", "md5ssl", "sha1", "sha256",
         "sha512", "sha512ssl", "plain", "extra", "crlf"]

CONF = r"""
http {
    server {
        listen 127.0.0.1:@PORT@;
        auth_basic "Server Realm";
        auth_basic_user_file @FILE@;
        location / {
            proxy_set_header X-User $remote_user;
            proxy_pass http://@UP@;
        }
        location /open/ {
            auth_basic off;
            proxy_pass http://@UP@;
            location /open/closed/ {
                auth_basic "Inner";
                proxy_pass http://@UP@;
            }
        }
        location /realm2/ { auth_basic "Other realm"; proxy_pass http://@UP@; }
        location /ret/ { return 200 "ret:$remote_user"; }
        location /missing/ { auth_basic_user_file @DIR@/no-such-file; proxy_pass http://@UP@; }
    }
}
"""


def basic(user, password):
    raw = ("%s:%s" % (user, password)).encode()
    return (("Authorization", "Basic " + base64.b64encode(raw).decode()),)


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory):
    d = tmp_path_factory.mktemp("htpasswd")
    f = d / "users"
    f.write_text("\n".join(_lines()) + "\n")
    return f


@pytest.fixture(scope="module")
def up():
    u = Upstream("up").start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory, htpasswd, up):
    from support import EdgeProcess
    e = EdgeProcess(tmp_path_factory.mktemp("authbasic"), CONF,
                    {"FILE": str(htpasswd), "DIR": str(htpasswd.parent), "UP": up.addr}).start()
    yield e
    e.stop()
    assert not e.problems, e.problems


def _user_upstream_saw(r):
    return dict((k.lower(), v) for k, v in json.loads(r.body)["headers"]).get("x-user")


@pytest.mark.parametrize("user", USERS)
def test_each_hash_kind(srv, user):
    r = get(srv.port, "/x", headers=basic(user, PW))
    assert r.status == 200, (r.status, r.body[:200])
    assert _user_upstream_saw(r) == user
    r = get(srv.port, "/x", headers=basic(user, PW + "x"))
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Basic realm="Server Realm"'


def test_a_verified_credential_is_asked_again(srv):
    # the second time comes from the worker's cache in edge: the same answer
    for _ in range(3):
        assert get(srv.port, "/x", headers=basic("bcrypt2y", PW)).status == 200
        assert get(srv.port, "/x", headers=basic("bcrypt2y", "wrong")).status == 401


REFUSED = [
    ("no header", ()),
    ("unknown user", basic("nobody", PW)),
    ("line without a colon", basic("nocolon", "")),
    ("the comment line", basic("# a comment line", "")),
    ("not base64", (("Authorization", "Basic !!!notbase64"),)),
    ("no colon in the credentials", (("Authorization", "Basic " + base64.b64encode(b"plain").decode()),)),
    ("another scheme", (("Authorization", "Bearer abc"),)),
    ("empty", (("Authorization", ""),)),
    ("second line of a user", basic("dup", "second")),
]


@pytest.mark.parametrize("why,headers", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_with_401(srv, why, headers):
    r = get(srv.port, "/x", headers=headers)
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Basic realm="Server Realm"'
    assert r.header("Content-Type") == "text/html" and b"<h1>401 " in r.body   # the HTML page


@pytest.mark.parametrize("user", ["badhash", "deshash"])
def test_a_hash_nothing_reads(srv, user):
    assert get(srv.port, "/x", headers=basic(user, PW)).status == 401


def test_first_line_of_a_user_wins(srv):
    assert get(srv.port, "/x", headers=basic("dup", "first")).status == 200


def test_realm_off_and_nested(srv):
    r = get(srv.port, "/open/x")
    assert r.status == 200
    r = get(srv.port, "/open/closed/x")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Basic realm="Inner"'
    assert get(srv.port, "/open/closed/x", headers=basic("plain", PW)).status == 200
    r = get(srv.port, "/realm2/x")
    assert r.header("WWW-Authenticate") == 'Basic realm="Other realm"'


def test_return_and_remote_user(srv):
    r = get(srv.port, "/ret/x", headers=basic("plain", PW))
    assert (r.status, r.body) == (200, b"ret:plain")
    r = get(srv.port, "/ret/x", headers=basic("someone", "anything"))
    if IMPL == "nginx":
        # nginx answers `return` in its rewrite phase, before the access phase
        assert (r.status, r.body) == (200, b"ret:someone")
    else:
        # edge answers a lone `return` as the content, after the access checks (docs/auth.md)
        assert r.status == 401


def test_missing_file(srv):
    assert get(srv.port, "/missing/x").status == 401          # no credentials: 401 first
    assert get(srv.port, "/missing/x", headers=basic("plain", PW)).status == 403


def test_an_edited_file_is_read_again(srv, htpasswd):
    assert get(srv.port, "/x", headers=basic("editme", "before")).status == 200
    text = htpasswd.read_text().replace("editme:{PLAIN}before", "editme:{PLAIN}after!")
    tmp = htpasswd.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, htpasswd)       # as htpasswd(1) and editors do: a new inode
    assert get(srv.port, "/x", headers=basic("editme", "before")).status == 401
    assert get(srv.port, "/x", headers=basic("editme", "after!")).status == 200
    with open(htpasswd, "a") as f:  # in place
        f.write("added:{PLAIN}new\n")
    assert get(srv.port, "/x", headers=basic("added", "new")).status == 200


# ---- configs -------------------------------------------------------------------------------

def _edge_t(tmp_path, body):
    conf = tmp_path / "edge.conf"
    conf.write_text("http {\n    server {\n        listen 127.0.0.1:8080;\n" + body + "\n    }\n}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=30), conf


@pytest.mark.edge_only
def test_auth_basic_without_a_file_is_refused(tmp_path):
    r, conf = _edge_t(tmp_path, '        location / {\n            auth_basic "x";\n'
                                '            return 200;\n        }')
    assert r.returncode != 0
    assert '"auth_basic" without "auth_basic_user_file"' in r.stderr
    assert f"{conf}:5" in r.stderr


@pytest.mark.edge_only
def test_variables_in_realm_refused(tmp_path):
    r, conf = _edge_t(tmp_path, '        auth_basic "$host";\n        auth_basic_user_file u;')
    assert r.returncode != 0
    assert "not supported" in r.stderr and f"{conf}:4" in r.stderr


@pytest.mark.edge_only
def test_relative_user_file_is_from_the_config_directory(tmp_path, up):
    from support import EdgeProcess
    (tmp_path / "conf").mkdir()
    e = EdgeProcess(tmp_path / "conf", r"""
http {
    server {
        listen 127.0.0.1:@PORT@;
        auth_basic "r";
        auth_basic_user_file users.htpasswd;
        location / { proxy_pass http://@UP@; }
    }
}
""", {"UP": up.addr})
    e.conf_path.parent.mkdir(parents=True, exist_ok=True)
    (e.conf_path.parent / "users.htpasswd").write_text("rel:{PLAIN}pw\n")
    e.start()
    try:
        assert get(e.port, "/x", headers=basic("rel", "pw")).status == 200
        assert get(e.port, "/x", headers=basic("rel", "no")).status == 401
    finally:
        e.stop()


@pytest.mark.edge_only
def test_a_password_is_hashed_once_per_credential_and_file(tmp_path, up):
    from passlib.hash import bcrypt
    from support import Conn, EdgeProcess
    users = tmp_path / "users"
    users.write_text("alice:" + bcrypt.using(rounds=5).hash(PW) + "\n")
    log = tmp_path / "error.log"
    e = EdgeProcess(tmp_path / "run", r"""
error_log @LOG@ debug;
worker_processes 1;
http {
    server {
        listen 127.0.0.1:@PORT@;
        auth_basic "r";
        auth_basic_user_file @FILE@;
        location / { proxy_pass http://@UP@; }
    }
}
""", {"UP": up.addr, "FILE": str(users), "LOG": str(log)}).start()
    try:
        with Conn(e.port) as c:
            for _ in range(50):
                assert c.request("GET", "/x", headers=basic("alice", PW)).status == 200
        assert log.read_text().count("auth_basic: verified the password") == 1
        # the file changed: the cache is emptied, the password is hashed again once
        users.write_text(users.read_text() + "bob:{PLAIN}x\n")
        for _ in range(5):
            assert get(e.port, "/x", headers=basic("alice", PW)).status == 200
        assert log.read_text().count("auth_basic: verified the password") == 2
    finally:
        e.stop()
