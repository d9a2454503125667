"""The `edge` command line: -t, -T, -s, status, -v, and the master's start-up errors.

Every test runs the real command (`python -m edge`) in a subprocess; the -s tests
signal a real running master started by the `edge` fixture.
"""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import alive, free_port, get

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.edge_only  # edge's own command line; nginx's differs in detail

SERVER = """
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "ok"; }
    }
}
"""


def run_edge(*args, cwd=None, timeout=30):
    """Run `python -m edge ARGS` to completion; returns the CompletedProcess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], cwd=cwd or REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def write_conf(directory, text, name="edge.conf"):
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def good_conf(tmp_path, port=None, extra=""):
    """A valid config (no process is started with it unless a test does so)."""
    port = port or free_port()
    return write_conf(tmp_path, f"""worker_processes 1;
pid {tmp_path}/edge.pid;
error_log {tmp_path}/error.log info;
{extra}
http {{
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
    }}
}}
""")


def line_of(path, needle):
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if needle in line:
            return number
    raise KeyError(needle)


# --------------------------------------------------------------------------- -t / -T


def test_t_accepts_a_good_config(tmp_path):
    conf = good_conf(tmp_path)
    r = run_edge("-t", "-c", conf)
    assert r.returncode == 0, r.stderr
    assert f"edge: the configuration file {conf} syntax is ok" in r.stderr
    assert f"edge: configuration file {conf} test is successful" in r.stderr
    assert r.stdout == ""
    # -t binds nothing and starts nothing: no pid file, no error log written.
    assert not (tmp_path / "edge.pid").exists()


def test_t_rejects_a_bad_config_naming_file_and_line(tmp_path):
    conf = write_conf(tmp_path, """worker_processes 1;
http {
    server {
        listen 127.0.0.1:8080;
        proxy_pas http://127.0.0.1:9;
    }
}
""")
    r = run_edge("-t", "-c", conf)
    assert r.returncode == 1
    assert f'edge: [emerg] unknown directive "proxy_pas" in {conf}:5' in r.stderr
    assert f"edge: configuration file {conf} test failed" in r.stderr
    assert "test is successful" not in r.stderr
    assert "Traceback" not in r.stderr


def test_t_names_the_included_file_that_is_wrong(tmp_path):
    conf = write_conf(tmp_path, "worker_processes 1;\nhttp {\n    include sites/*.conf;\n}\n")
    write_conf(tmp_path, "server {\n    listen 127.0.0.1:8080;\n}\n", "sites/a.conf")
    bad = write_conf(tmp_path,
                     "server {\n    listen 127.0.0.1:8081;\n\n    bogus_directive on;\n}\n",
                     "sites/b.conf")
    r = run_edge("-t", "-c", conf)
    assert r.returncode == 1
    assert f'edge: [emerg] unknown directive "bogus_directive" in {bad}:4' in r.stderr
    assert f"edge: configuration file {conf} test failed" in r.stderr


def test_t_reports_a_missing_config_file(tmp_path):
    missing = tmp_path / "nope.conf"
    r = run_edge("-t", "-c", missing)
    assert r.returncode == 1
    assert "edge: [emerg]" in r.stderr and str(missing) in r.stderr
    assert f"edge: configuration file {missing} test failed" in r.stderr


def test_T_dumps_every_file_read(tmp_path):
    main_text = ("worker_processes 1;\n"
                 "http {\n"
                 "    include sites/*.conf;\n"
                 "}\n")
    conf = write_conf(tmp_path, main_text)
    a_text = "server {\n    listen 127.0.0.1:8080;  # site a\n}\n"
    b_text = "server {\n    listen 127.0.0.1:8081;  # site b\n}\n"
    a = write_conf(tmp_path, a_text, "sites/a.conf")
    b = write_conf(tmp_path, b_text, "sites/b.conf")

    r = run_edge("-T", "-c", conf)
    assert r.returncode == 0, r.stderr
    assert f"edge: configuration file {conf} test is successful" in r.stderr
    out = r.stdout
    # Each file: its header line, then its text verbatim; in the order read.
    positions = []
    for path, text in ((conf, main_text), (a, a_text), (b, b_text)):
        block = f"# configuration file {path}:\n{text}"
        assert block in out, f"{path} missing from the dump:\n{out}"
        positions.append(out.index(block))
    assert positions == sorted(positions)
    assert out.count("# configuration file ") == 3


def test_T_dumps_nothing_for_a_bad_config(tmp_path):
    conf = write_conf(tmp_path, "worker_processes 1;\nno_such_thing;\n")
    r = run_edge("-T", "-c", conf)
    assert r.returncode == 1
    assert r.stdout == ""
    assert f'unknown directive "no_such_thing" in {conf}:2' in r.stderr


def test_default_config_is_conf_edge_conf_in_the_cwd(tmp_path):
    conf = good_conf(tmp_path / "conf")
    r = run_edge("-t", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"edge: configuration file {conf} test is successful" in r.stderr


def test_prefix_sets_where_the_default_config_is(tmp_path):
    conf = good_conf(tmp_path / "conf")
    r = run_edge("-p", tmp_path, "-t")
    assert r.returncode == 0, r.stderr
    assert f"edge: configuration file {conf} test is successful" in r.stderr


def test_t_and_s_together_are_refused(tmp_path):
    r = run_edge("-t", "-s", "reload", "-c", good_conf(tmp_path))
    assert r.returncode == 2  # argparse's usage error
    assert "choose one of -t/-T, -s and status" in r.stderr


def test_version(tmp_path):
    r = run_edge("-v")
    assert r.returncode == 0
    assert r.stderr.startswith("edge version: edge/")


# --------------------------------------------------------------------------- -s without a master


def test_s_with_a_missing_pid_file_fails_clearly(tmp_path):
    conf = good_conf(tmp_path)
    for name in ("stop", "quit", "reload", "reopen"):
        r = run_edge("-s", name, "-c", conf)
        assert r.returncode == 1, (name, r.stderr)
        assert f'open() "{tmp_path}/edge.pid" failed (2: No such file or directory)' in r.stderr
        assert "Traceback" not in r.stderr


def test_s_with_an_invalid_pid_file_fails_clearly(tmp_path):
    conf = good_conf(tmp_path)
    (tmp_path / "edge.pid").write_text("not-a-pid\n")
    r = run_edge("-s", "reload", "-c", conf)
    assert r.returncode == 1
    assert f'invalid PID number "not-a-pid" in "{tmp_path}/edge.pid"' in r.stderr


def test_s_with_a_stale_pid_file_fails_clearly(tmp_path):
    conf = good_conf(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "edge.pid").write_text(f"{gone.pid}\n")
    r = run_edge("-s", "stop", "-c", conf)
    assert r.returncode == 1
    assert f"no edge process with pid {gone.pid}" in r.stderr


def test_s_never_signals_a_process_that_is_not_edge(tmp_path):
    # A stale pid file whose pid now belongs to some other program.
    conf = good_conf(tmp_path)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "edge.pid").write_text(f"{bystander.pid}\n")
        r = run_edge("-s", "stop", "-c", conf)
        assert r.returncode == 1
        assert f"no edge process with pid {bystander.pid}" in r.stderr
        time.sleep(0.2)
        assert bystander.poll() is None, "the bystander was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_s_without_a_pid_directive_fails_clearly(tmp_path):
    conf = write_conf(tmp_path, "worker_processes 1;\n" + SERVER.replace("@PORT@", "8080"))
    r = run_edge("-s", "reload", "-c", conf)
    # Either the cycle has a default pid path (then there is no master there), or none:
    # both must be a clear error, not a traceback.
    assert r.returncode == 1
    assert ('edge: [error] no pid file is set' in r.stderr
            or re.search(r'edge: \[error\] open\(\) "[^"]+" failed', r.stderr)), r.stderr
    assert "Traceback" not in r.stderr


def test_status_when_not_running(tmp_path):
    r = run_edge("status", "-c", good_conf(tmp_path))
    assert r.returncode == 3
    assert "edge is not running" in r.stdout


# --------------------------------------------------------------------------- -s with a master


def test_s_reload_with_a_bad_config_fails_and_leaves_the_master_alone(edge):
    e = edge(SERVER)
    (old_worker,) = e.wait_workers(1)
    good_text = e.conf_path.read_text()
    e.conf_path.write_text(good_text.replace('return 200 "ok";', 'retrun 200 "ok";'))

    r = run_edge("-s", "reload", "-c", e.conf_path)
    assert r.returncode == 1
    line = line_of(e.conf_path, "retrun")
    assert f'edge: [emerg] unknown directive "retrun" in {e.conf_path}:{line}' in r.stderr
    time.sleep(0.5)
    assert "SIGHUP" not in e.error_log, "the master was signalled"
    assert e.worker_pids() == [old_worker]
    assert get(e.port, "/").status == 200

    # Control: with the config fixed, the same command does reload (in place: the
    # listeners are unchanged, so the same worker switches to the new generation).
    e.conf_path.write_text(good_text.replace('return 200 "ok";', 'return 200 "new";'))
    r = run_edge("-s", "reload", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while get(e.port, "/").body != b"new":
        assert time.monotonic() < deadline, e.report()
        time.sleep(0.02)
    assert "SIGHUP" in e.error_log
    assert e.worker_pids() == [old_worker]


@pytest.mark.parametrize("command, signame", [("quit", "SIGQUIT"), ("stop", "SIGTERM")])
def test_s_quit_and_stop_end_the_master(edge, command, signame):
    e = edge(SERVER)
    e.wait_workers(1)
    assert e.pid_path.read_text().strip() == str(e.pid)
    r = run_edge("-s", command, "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert e.wait_exit(15) == 0
    assert signame in e.error_log
    assert not e.pid_path.exists(), "the pid file was left behind"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", e.port), timeout=1).close()


def test_s_reopen_reopens_the_error_log(edge):
    e = edge(SERVER)
    e.wait_workers(1)
    rotated = e.error_log_path.with_name("error.log.1")
    e.error_log_path.rename(rotated)
    r = run_edge("-s", "reopen", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5
    while not e.error_log_path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert e.error_log_path.exists(), "the error log was not reopened"
    assert "SIGUSR1" in rotated.read_text()
    # What the master logs next goes to the new file, not the rotated one.
    run_edge("-s", "reload", "-c", e.conf_path)
    deadline = time.monotonic() + 5
    while "SIGHUP" not in e.error_log and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "SIGHUP" in e.error_log
    assert "SIGHUP" not in rotated.read_text()


def test_status_lists_the_master_and_its_workers(edge):
    e = edge(SERVER.replace("http", "worker_processes 2;\nhttp", 1))
    workers = e.wait_workers(2)
    r = run_edge("status", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert f"edge master process {e.pid} is running" in r.stdout
    for pid in workers:
        assert f"worker process {pid}" in r.stdout



def test_status_into_a_closed_pipe_exits_quietly(edge):
    # `edge status | head -1`: the reader may be gone before edge writes. A closed pipe
    # gets the shell's 141 and no traceback, not a BrokenPipeError dump.
    e = edge(SERVER)
    e.wait_workers(1)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "edge", "status", "-c", e.conf_path],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert r.returncode == 141
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


# --------------------------------------------------------------------------- starting


def test_master_with_a_bad_config_exits_1(tmp_path):
    conf = write_conf(tmp_path, f"pid {tmp_path}/edge.pid;\nworker_processes 1;\nbogus;\n")
    r = run_edge("-c", conf)
    assert r.returncode == 1
    assert f'edge: [emerg] unknown directive "bogus" in {conf}:3' in r.stderr
    assert not (tmp_path / "edge.pid").exists()


def test_master_reports_a_port_in_use_and_exits_1(tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        conf = good_conf(tmp_path, port=port)
        r = run_edge("-c", conf, timeout=15)
    finally:
        holder.close()
    assert r.returncode == 1
    assert (f"edge: [emerg] bind() to 127.0.0.1:{port} failed (98: Address already in use)"
            in r.stderr)
    assert not (tmp_path / "edge.pid").exists()


def test_a_second_master_on_the_same_pid_file_is_refused(edge):
    e = edge(SERVER)
    e.wait_workers(1)
    r = run_edge("-c", e.conf_path, timeout=15)
    assert r.returncode == 1
    assert f"edge is already running with pid {e.pid}" in r.stderr
    # The first one is untouched and still owns its pid file.
    assert alive(e.pid)
    assert e.pid_path.read_text().strip() == str(e.pid)
    assert get(e.port, "/").status == 200


# --------------------------------------------------------------------------- drain / readiness

READY_SERVER = """
worker_processes 2;
http {
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "ok"; }
        location = /ready { health ready; }
        location = /live { health live; }
    }
}
"""


def test_drain_and_undrain_change_readiness_only(edge):
    e = edge(READY_SERVER)
    e.wait_workers(2)
    deadline = time.monotonic() + 5
    while get(e.port, "/ready").status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    r = run_edge("drain", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert "is draining" in r.stderr
    for _ in range(10):  # every worker sees it: the flag is in shared memory
        resp = get(e.port, "/ready")
        assert resp.status == 503 and b"draining" in resp.body, resp
        assert get(e.port, "/").status == 200, "traffic keeps flowing while draining"
        assert get(e.port, "/live").status == 200
    r = run_edge("status", "-c", e.conf_path)
    assert "draining: yes" in r.stdout and "ready: no (draining)" in r.stdout, r.stdout

    # The flag survives a reload (it belongs to the node, not to a config).
    run_edge("-s", "reload", "-c", e.conf_path)
    deadline = time.monotonic() + 5
    while "generation 2," not in run_edge("status", "-c", e.conf_path).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert get(e.port, "/ready").status == 503

    r = run_edge("undrain", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert get(e.port, "/ready").status == 200
    r = run_edge("status", "-c", e.conf_path)
    assert "draining: no" in r.stdout and "ready: yes" in r.stdout, r.stdout
    assert "workers 2/2 up" in r.stdout, r.stdout


def test_drain_without_a_master_fails_clearly(tmp_path):
    for command in ("drain", "undrain"):
        r = run_edge(command, "-c", good_conf(tmp_path))
        assert r.returncode == 1
        assert "is edge running?" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_s_upgrade_without_a_master_fails_clearly(tmp_path):
    r = run_edge("-s", "upgrade", "-c", good_conf(tmp_path))
    assert r.returncode == 1
    assert f'open() "{tmp_path}/edge.pid" failed' in r.stderr
    assert "Traceback" not in r.stderr


def test_quit_works_even_when_the_config_on_disk_is_broken(edge):
    e = edge(SERVER)
    e.wait_workers(1)
    e.conf_path.write_text(e.conf_path.read_text().replace('return 200 "ok";', 'retrun 200;'))
    r = run_edge("-s", "quit", "-c", e.conf_path)
    assert r.returncode == 0, r.stderr
    assert "using the pid file" in r.stderr
    assert e.wait_exit(15) == 0
