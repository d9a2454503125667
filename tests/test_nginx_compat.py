"""nginx.conf compatibility: documented no-ops (one warning per occurrence with
file:line), refused nginx directives (an error naming docs/nginx.md), and the process
directives (user, worker_rlimit_nofile, worker_priority, worker_cpu_affinity).

Real `edge` processes: `edge -t` in a subprocess, and started masters whose workers and
control process are read in /proc.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support import Conn, Upstream, get
from support.edge import EdgeProcess, children_of, control_of

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.edge_only  # warnings, edge's errors and docs page: edge's own

TEST_USER = "edge-test"


def edge_t(conf):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)


def warn_lines(text):
    return [line for line in text.splitlines() if "does nothing in edge" in line]


# -- no-ops ---------------------------------------------------------------------------

NOOPS_MAIN = """\
worker_processes 1;
timer_resolution 100ms;
events {
    use epoll;
    multi_accept on;
    accept_mutex off;
}
http {
    server_names_hash_bucket_size 64;
    server_names_hash_max_size 1024;
    types_hash_max_size 2048;
    include extra.conf;
    server {
        listen 127.0.0.1:@PORT@;
        proxy_headers_hash_max_size 1024;
        location / { types_hash_bucket_size 64; return 200 "ok"; }
    }
}
"""

NOOPS_EXTRA = """\
variables_hash_max_size 2048;
variables_hash_bucket_size 128;
"""

# (directive, file, 1-based line) for every no-op occurrence in NOOPS_MAIN/NOOPS_EXTRA
EXPECTED = [("timer_resolution", "edge.conf", 2), ("use", "edge.conf", 4),
            ("multi_accept", "edge.conf", 5), ("accept_mutex", "edge.conf", 6),
            ("server_names_hash_bucket_size", "edge.conf", 9),
            ("server_names_hash_max_size", "edge.conf", 10),
            ("types_hash_max_size", "edge.conf", 11),
            ("variables_hash_max_size", "extra.conf", 1),
            ("variables_hash_bucket_size", "extra.conf", 2),
            ("proxy_headers_hash_max_size", "edge.conf", 15),
            ("types_hash_bucket_size", "edge.conf", 16)]


def check_warnings(lines, directory, times=1, shift=0):
    """Each expected no-op warned exactly ``times`` times, naming file:line and why
    (``shift``: lines the test harness put before the main file's text)."""
    assert len(lines) == len(EXPECTED) * times, "\n".join(lines)
    for name, file, line in EXPECTED:
        if file == "edge.conf":
            line += shift
        where = f" in {directory / file}:{line}"
        mine = [x for x in lines if f'"{name}" directive does nothing in edge: ' in x]
        assert len(mine) == times, (name, lines)
        assert all(x.endswith(where) for x in mine), (name, where, mine)
        assert all("[warn]" in x for x in mine)
        reason = mine[0].split("does nothing in edge: ", 1)[1][:-len(where)]
        assert len(reason) > 10, mine


def test_noop_warnings_edge_t(tmp_path):
    (tmp_path / "extra.conf").write_text(NOOPS_EXTRA)
    conf = tmp_path / "edge.conf"
    conf.write_text(NOOPS_MAIN.replace("@PORT@", "18999"))
    r = edge_t(conf)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stderr
    check_warnings(warn_lines(r.stderr), tmp_path)
    assert all(x.startswith("edge: [warn] ") for x in warn_lines(r.stderr))


def test_noop_warnings_at_start_and_reload(tmp_path, edge):
    e = edge.create(NOOPS_MAIN)
    e.workdir.joinpath("extra.conf").write_text(NOOPS_EXTRA)
    e.start()
    assert get(e.port, "/").status == 200
    shift = e.conf_text.count("\n") - NOOPS_MAIN.count("\n")   # the harness's head line
    # the error log is a file: the start warns there (and on the console it ran from)
    check_warnings(warn_lines(e.error_log), e.workdir, shift=shift)
    check_warnings(warn_lines(e.stderr), e.workdir, shift=shift)
    e.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "generation 2 is in force" not in e.error_log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "generation 2 is in force" in e.error_log
    check_warnings(warn_lines(e.error_log), e.workdir, times=2, shift=shift)


# -- refused --------------------------------------------------------------------------

@pytest.mark.parametrize("line, name", [
    ("ssi on;", "ssi"),
    ("sub_filter a b;", "sub_filter"),
    ("proxy_cache_path /tmp/c keys_zone=c:1m;", "proxy_cache_path"),
    ("proxy_cache c;", "proxy_cache"),
    ("perl_modules /x;", "perl_modules"),
    ("js_import x.js;", "js_import"),
    ("fastcgi_pass 127.0.0.1:9000;", "fastcgi_pass"),
    ("limit_rate 10k;", "limit_rate"),
    ("ssl_stapling on;", "ssl_stapling"),
    ("ssl_stapling_verify on;", "ssl_stapling_verify"),
])
def test_refused_directive_names_docs(tmp_path, line, name):
    conf = tmp_path / "edge.conf"
    conf.write_text("events { }\nhttp {\n    server {\n        " + line + "\n    }\n}\n")
    r = edge_t(conf)
    assert r.returncode == 1
    err = [x for x in r.stderr.splitlines() if "[emerg]" in x]
    assert len(err) == 1, r.stderr
    assert f'nginx directive "{name}" is not supported by edge: ' in err[0]
    assert "docs/nginx.md" in err[0]
    assert err[0].endswith(f" in {conf}:4")
    # the docs page it points to has the row (or the family's row)
    page = (REPO / "docs" / "nginx.md").read_text()
    rows = re.findall(r"^\| `([a-z_0-9*]+)` \|", page, re.M)
    assert name in rows or any(r.endswith("*") and name.startswith(r[:-1]) for r in rows), name


def test_cache_conditions_without_a_cache_are_noops(tmp_path):
    """proxy_cache_bypass / proxy_no_cache (the Node guides' `proxy_cache_bypass
    $http_upgrade;`) only qualify a cache: edge has none, so they warn; the cache itself
    stays refused."""
    conf = tmp_path / "edge.conf"
    body = ("events { }\nhttp {\n    server {\n        listen 127.0.0.1:1;\n        location / {\n"
            "            proxy_cache_bypass $http_upgrade $arg_nocache;\n"
            "            proxy_no_cache $cookie_session;\n"
            "            proxy_pass http://127.0.0.1:2;\n        }\n    }\n}\n")
    conf.write_text(body)
    r = edge_t(conf)
    assert r.returncode == 0, r.stderr
    lines = warn_lines(r.stderr)
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith('edge: [warn] "proxy_cache_bypass" directive does nothing in edge: ')
    assert lines[0].endswith(f" in {conf}:6")
    assert lines[1].startswith('edge: [warn] "proxy_no_cache" directive does nothing in edge: ')
    assert lines[1].endswith(f" in {conf}:7")
    conf.write_text(body.replace("proxy_no_cache $cookie_session;", "proxy_cache c;"))
    r = edge_t(conf)
    assert r.returncode == 1
    assert f'nginx directive "proxy_cache" is not supported by edge' in r.stderr
    assert r.stderr.count("\n") >= 1 and f"{conf}:7" in r.stderr


TUNING = ["open_file_cache max=1000 inactive=20s;", "open_file_cache_valid 30s;",
          "open_file_cache_min_uses 2;", "open_file_cache_errors on;",
          "open_log_file_cache max=1000 inactive=20s valid=1m min_uses=2;",
          "output_buffers 1 32k;", "postpone_output 1460;", "sendfile_max_chunk 512k;",
          "aio threads;", "aio_write on;", "directio 4m;", "directio_alignment 512;",
          "read_ahead 0;", "reset_timedout_connection on;", "proxy_socket_keepalive on;"]


def test_file_and_io_tuning_are_noops(tmp_path):
    """The file, I/O and socket tuning of performance guides: each warns once with its
    file:line; server_name_in_redirect off (nginx's default, edge's way) is silent."""
    conf = tmp_path / "edge.conf"
    lines = ["events { }", "http {", "    ssl_buffer_size 4k;", "    server {",
             "        listen 127.0.0.1:1;", "        server_name_in_redirect off;",
             "        location / {"]
    first = len(lines) + 1
    lines += ["            " + d for d in TUNING]
    lines += ["            proxy_pass http://127.0.0.1:2;", "        }", "    }", "}"]
    conf.write_text("\n".join(lines) + "\n")
    r = edge_t(conf)
    assert r.returncode == 0, r.stderr
    got = warn_lines(r.stderr)
    assert len(got) == len(TUNING) + 1, r.stderr
    assert got[0].startswith('edge: [warn] "ssl_buffer_size" directive does nothing') and \
        got[0].endswith(f"{conf}:3")
    for i, d in enumerate(TUNING):
        name = d.split()[0]
        assert got[i + 1].startswith(f'edge: [warn] "{name}" directive does nothing in edge: ')
        assert got[i + 1].endswith(f" in {conf}:{first + i}"), got[i + 1]


def test_server_name_in_redirect_on_refused(tmp_path):
    conf = tmp_path / "edge.conf"
    conf.write_text("events { }\nhttp {\n    server_name_in_redirect on;\n}\n")
    r = edge_t(conf)
    assert r.returncode == 1
    assert f'"server_name_in_redirect on" is not supported' in r.stderr and f"{conf}:3" in r.stderr


def test_unknown_directive_stays_unknown(tmp_path):
    conf = tmp_path / "edge.conf"
    conf.write_text("events { }\nhttp {\n    frobnicate on;\n}\n")
    r = edge_t(conf)
    assert r.returncode == 1
    assert f'[emerg] unknown directive "frobnicate" in {conf}:3' in r.stderr
    assert "nginx.md" not in r.stderr


@pytest.mark.parametrize("text, message", [
    ("events { use kqueue; }\n", '"use kqueue" is not supported: edge runs on epoll only'),
    ("master_process off;\n", '"master_process off" is not supported'),
    ("user no-such-user-here;\n", 'getpwnam("no-such-user-here") failed'),
    ("user root no-such-group-here;\n", 'getgrnam("no-such-group-here") failed'),
    ("worker_priority 30;\n", 'invalid number "30" in "worker_priority" directive'),
    ("worker_cpu_affinity 0102;\n", 'invalid character "0102" in "worker_cpu_affinity"'),
    ("worker_rlimit_nofile lots;\n", 'invalid value "lots" in "worker_rlimit_nofile"'),
])
def test_process_directive_errors(tmp_path, text, message):
    conf = tmp_path / "edge.conf"
    conf.write_text("\n" + text)
    r = edge_t(conf)
    assert r.returncode == 1, r.stderr
    assert message in r.stderr
    assert f"in {conf}:2" in r.stderr


def test_master_process_on_is_accepted(tmp_path):
    conf = tmp_path / "edge.conf"
    conf.write_text("master_process on;\nevents { }\n")
    r = edge_t(conf)
    assert r.returncode == 0, r.stderr
    assert not warn_lines(r.stderr)


# -- docs -----------------------------------------------------------------------------

def test_nginx_md_is_generated():
    from edge.config.docs import nginx_names, render_nginx
    from edge.cycle import MODULES
    committed = (REPO / "docs" / "nginx.md").read_text()
    assert committed == render_nginx(MODULES, nginx_names()), \
        "docs/nginx.md is stale: run `make docs`"
    assert "| `server_names_hash_bucket_size` | no-op |" in committed
    assert "| `proxy_pass` | honoured |" in committed
    assert "| `user` | honoured |" in committed
    assert "| `ssi` |" in committed
    # edge's own directives are not nginx's and stay out of this page
    assert "| `jwt_auth` |" not in committed


def test_directives_md_is_generated():
    from edge.config.docs import render
    from edge.cycle import MODULES
    committed = (REPO / "docs" / "directives.md").read_text()
    assert committed == render(MODULES), "docs/directives.md is stale: run `make docs`"


# -- process directives ---------------------------------------------------------------

def status_of(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return fields


def nofile_of(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def nice_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


LIMITS = """
worker_processes 2;
worker_rlimit_nofile 4321;
worker_priority 7;
worker_cpu_affinity @AFFINITY@;
http {
    server { listen 127.0.0.1:@PORT@; location / { return 200 "ok"; } }
}
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("affinity", ["01 10", "auto"])
def test_worker_limits_priority_affinity(edge, affinity):
    e = edge(LIMITS, AFFINITY=affinity)
    assert get(e.port, "/").status == 200
    workers = e.wait_workers(2)
    for pid in workers:
        assert nofile_of(pid) == (4321, 4321)
        assert nice_of(pid) == 7
    cpus = sorted(os.sched_getaffinity(0))
    assert sorted(tuple(sorted(os.sched_getaffinity(pid))) for pid in workers) == \
        [(cpus[0],), (cpus[1],)]
    # the master and the control process keep their own settings
    assert nice_of(e.pid) == 0
    assert nofile_of(e.pid) != (4321, 4321)
    for pid in control_of(e.pid):
        assert nice_of(pid) == 0
        assert len(os.sched_getaffinity(pid)) == len(cpus)


def test_cpu_set_rules():
    from edge.modules.core import cpu_set
    assert cpu_set(None, 0, [0, 1]) is None
    assert [cpu_set(("masks", [0b01, 0b10]), i, [0, 1]) for i in range(3)] == [{0}, {1}, {1}]
    assert cpu_set(("masks", [0b11]), 5, [0, 1]) == {0, 1}
    assert [cpu_set(("auto", None), i, [0, 1, 2]) for i in range(4)] == [{0}, {1}, {2}, {0}]
    assert [cpu_set(("auto", 0b110), i, [0, 1, 2]) for i in range(3)] == [{1}, {2}, {1}]


@pytest.fixture
def test_user():
    """A system user for `user` (made once; left for later runs)."""
    import pwd
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", TEST_USER], check=True)
    entry = pwd.getpwnam(TEST_USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def open_dir():
    """A work directory the dropped workers can reach (pytest's tmp dirs live under a
    0700 directory of root's)."""
    path = Path(tempfile.mkdtemp(prefix="edge-user-", dir="/tmp"))
    path.chmod(0o755)
    procs = []
    yield path, procs
    for p in procs:
        if isinstance(p, Upstream):
            p.stop()
            continue
        try:
            p.stop()
        finally:
            p.kill_group()
    problems = [f"{p.conf_path}: {'; '.join(p.problems)}" for p in procs
                if getattr(p, "problems", None)]
    shutil.rmtree(path, ignore_errors=True)
    assert not problems, problems


USER = """
user edge-test;
worker_processes 2;
http {
    admin_listen 127.0.0.1:@PORT2@;
    access_log @DIR@/access.log;
    client_body_temp_path @DIR@/body;
    client_body_buffer_size 1k;
    @ZONE@
    server {
        listen 127.0.0.1:@PORT@;
        location / { @LIMIT@ return 200 "ok"; }
        location /up/ { proxy_pass http://@UP@; }
    }
}
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="user needs a root master")
def test_user_drops_workers_and_control(test_user, open_dir):
    uid, gid = test_user
    directory, procs = open_dir
    up = Upstream("up").start()
    procs.append(up)
    e = EdgeProcess(directory / "edge", USER, {"DIR": directory, "ZONE": "", "LIMIT": "",
                                               "UP": up.addr})
    procs.append(e)
    e.start()
    assert get(e.port, "/").status == 200
    # the control process serves the admin API as the user (once it answers, it has
    # dropped: it drops before it binds)
    deadline = time.monotonic() + 10
    while True:
        try:
            status = get(e.ports["PORT2"], "/status")
            break
        except OSError:
            assert time.monotonic() < deadline, e.report()
            time.sleep(0.05)
    assert status.status == 200 and status.json()["workers_up"] == 2
    workers = e.wait_workers(2)
    controls = control_of(e.pid)
    assert len(controls) == 1
    for pid in workers + controls:
        st = status_of(pid)
        assert st["Uid"] == [str(uid)] * 4, (pid, st["Uid"])
        assert st["Gid"] == [str(gid)] * 4, (pid, st["Gid"])
        assert st["Groups"] == [str(gid)], (pid, st["Groups"])
    st = status_of(e.pid)
    assert st["Uid"][0] == "0"          # the master stays root
    # a request body larger than client_body_buffer_size goes through a temp file in
    # client_body_temp_path, which the master made and handed to the user
    body = os.urandom(200_000)
    with Conn(e.port) as c:
        r = c.request("POST", "/up/echo", body=body)
    assert r.status == 200, r
    assert r.json()["body_len"] == len(body)
    assert (directory / "body").stat().st_uid == uid

    # logs: written, and reopened after a rotation by the dropped workers
    access = directory / "access.log"
    deadline = time.monotonic() + 5
    while (not access.exists() or access.stat().st_size == 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert access.stat().st_size > 0
    access.rename(directory / "access.log.1")
    e.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    for _ in range(4):
        assert get(e.port, "/rotated").status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and \
            (not access.exists() or b"/rotated" not in access.read_bytes()):
        time.sleep(0.05)
    assert b"/rotated" in access.read_bytes()
    assert access.stat().st_uid == uid
    assert "Permission denied" not in e.error_log

    # a reload in place that adds a limit zone: the workers map its file by name
    e.template = USER
    e.subst.update({"ZONE": "limit_req_zone $remote_addr zone=z:1m rate=1r/m;",
                    "LIMIT": "limit_req zone=z;"})
    e.conf_text = e.render()
    e.conf_path.write_text(e.conf_text)
    e.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "generation 2 is in force" not in e.error_log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "generation 2 is in force" in e.error_log, e.error_log
    codes = [get(e.port, "/").status for _ in range(3)]
    assert codes[0] == 200 and codes[1] != 200 and codes[2] != 200, codes   # limited
    assert set(e.wait_workers(2)) == set(workers)   # in place: the same workers
    assert "Permission denied" not in e.error_log
    assert "failed" not in e.error_log.replace("test failed", ""), e.error_log


ADMIN_USER = """
user edge-test;
worker_processes 1;
http {
    admin_listen @ADMIN@;
    include conf.d/_admin/*.conf;
    server {
        listen 127.0.0.1:@PORT@;
        location / { proxy_pass http://pool; }
    }
}
"""


def privileged_ports(n):
    """n free TCP ports below 1024 on 127.0.0.1 (bound and released here, as root)."""
    import socket
    out = []
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    pytest.skip("no free port below 1024")


def _admin_call(where, method, path, body=None):
    import http.client
    import json as _json
    from test_control import UnixHTTPConnection
    conn = (UnixHTTPConnection(where) if isinstance(where, str)
            else http.client.HTTPConnection("127.0.0.1", where, timeout=30))
    try:
        data = _json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    try:
        return r.status, _json.loads(raw)
    except ValueError:
        return r.status, raw.decode()


def _reload_to(e, admin):
    n = e.error_log.count("is in force")
    e.subst["ADMIN"] = admin
    e.conf_text = e.render()
    e.conf_path.write_text(e.conf_text)
    e.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while e.error_log.count("is in force") == n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert e.error_log.count("is in force") > n, e.error_log


@pytest.mark.skipif(os.geteuid() != 0, reason="user needs a root master")
@pytest.mark.timeout(90)
def test_user_admin_listener_privileged_port_and_unix_socket(test_user, open_dir):
    """With `user`, the master binds the admin listener (the control process, dropped to
    the user, could bind no port below 1024 and no socket in a root-owned directory)
    and hands it over: at start, and on reloads that move it."""
    from test_control import try_status, wait_for
    uid, _gid = test_user
    directory, procs = open_dir
    low1, low2 = privileged_ports(2)
    run_dir = Path(tempfile.mkdtemp(prefix="edge-admin-", dir="/run"))
    run_dir.chmod(0o755)                  # root's: the user cannot create a file there
    try:
        up = Upstream("up").start()
        procs.append(up)
        conf_dir = directory / "edge"
        (conf_dir / "conf.d" / "_admin").mkdir(parents=True)
        (conf_dir / "conf.d" / "_admin" / "upstream.pool.conf").write_text(
            f"upstream pool {{\n    server {up.addr};\n}}\n")
        e = EdgeProcess(conf_dir, ADMIN_USER, {"ADMIN": f"127.0.0.1:{low1}"})
        procs.append(e)
        e.start()
        assert get(e.port, "/x").status == 200
        status = wait_for(lambda: try_status(low1), 10, "the admin listener on a port below 1024", e)
        assert status["workers_up"] == 1
        control = control_of(e.pid)
        assert len(control) == 1 and status_of(control[0])["Uid"] == [str(uid)] * 4

        # moved to a unix socket in a root-owned directory by a reload
        sock_path = str(run_dir / "admin.sock")
        _reload_to(e, f"unix:{sock_path}")
        wait_for(lambda: try_status(sock_path), 10, "the admin listener on the unix socket", e)
        wait_for(lambda: try_status(low1) is None, 10, "the old admin listener to close", e)
        # and to another port below 1024
        _reload_to(e, f"127.0.0.1:{low2}")
        wait_for(lambda: try_status(low2), 10, "the admin listener on the second port", e)
        assert control_of(e.pid) == control           # the same control process throughout
        assert "bind() failed" not in e.error_log, e.error_log

        # a control process that is killed comes back with the listener
        os.kill(control[0], signal.SIGKILL)
        wait_for(lambda: (lambda c: c and c != control)(control_of(e.pid)), 10, "a new control process", e)
        wait_for(lambda: try_status(low2), 10, "the admin listener after the respawn", e)

        # writes: the managed directory is root's, so the user cannot write there: a
        # clear 500 naming the path and the user, and nothing changes
        managed = conf_dir / "conf.d" / "_admin" / "upstream.pool.conf"
        before = managed.read_text()
        code, doc = _admin_call(low2, "PUT", f"/upstreams/pool/peers/{up.addr}", {"weight": 3})
        assert code == 500, doc
        message = doc["error"] if isinstance(doc, dict) else doc
        assert str(conf_dir / "conf.d" / "_admin") in message and '"edge-test"' in message, doc
        assert "`user`" in message, doc
        assert managed.read_text() == before
        # once the operator gives the user that directory, the same write works
        os.chown(conf_dir / "conf.d" / "_admin", uid, -1)
        code, doc = _admin_call(low2, "PUT", f"/upstreams/pool/peers/{up.addr}", {"weight": 3})
        assert code == 200, doc
        assert f"server {up.addr} weight=3;" in managed.read_text()
        assert get(e.port, "/y").status == 200
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_user_needs_root_master(tmp_path, monkeypatch, test_user):
    from edge import master
    conf = tmp_path / "edge.conf"
    conf.write_text(f"user {TEST_USER};\nevents {{ }}\n")
    cycle = master.load_cycle(str(conf))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(master.StartupError, match=f'"user {TEST_USER}" directive needs the master '
                                                  'to run as root'):
        master.check_user(cycle)


# -- daemon ---------------------------------------------------------------------------

def run_edge(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_daemon_on_detaches_and_quits(tmp_path):
    from support import free_port
    port = free_port()
    conf = tmp_path / "edge.conf"
    pid_path = tmp_path / "edge.pid"
    conf.write_text(f"""daemon on;
worker_processes 1;
pid {pid_path};
error_log {tmp_path}/error.log info;
http {{ server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }} }}
""")
    r = run_edge("-c", conf)      # returns once the background master runs
    assert r.returncode == 0, r.stderr
    pid = int(pid_path.read_text())
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ppid, sid = int(fields[1]), int(fields[3])
        assert sid == pid                   # its own session, no terminal
        assert ppid != os.getpid()
        assert get(port, "/").status == 200
        assert len(children_of(pid)) == 1
    finally:
        q = run_edge("-c", conf, "-s", "quit")
    assert q.returncode == 0, q.stderr
    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    assert not pid_path.exists()
    assert "exit" in (tmp_path / "error.log").read_text()


def test_daemon_off_stays_in_foreground(edge):
    e = edge("daemon off;\nhttp { server { listen 127.0.0.1:@PORT@; location / { return 200 'ok'; } } }\n")
    assert get(e.port, "/").status == 200
    assert e.running()      # the process the harness started is the master
    assert int(e.pid_path.read_text()) == e.pid


def test_refused_affinity_is_logged_and_the_worker_serves(edge):
    """A mask naming a CPU the machine does not have: the kernel refuses it, the worker
    logs the alert and serves (as nginx)."""
    e = edge("worker_cpu_affinity 1000000000000000000000000000000000000000000000000000000000000000;\n"
             "http { server { listen 127.0.0.1:@PORT@; location / { return 200 'ok'; } } }\n")
    assert get(e.port, "/").status == 200
    deadline = time.monotonic() + 5
    while "sched_setaffinity([63]) failed" not in e.error_log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sched_setaffinity([63]) failed" in e.error_log
    assert "[alert]" in e.error_log
