"""`edge -s upgrade` across releases installed side by side (issue 16's defect), without
packages: two venvs in a temporary directory laid out as the .deb lays them out,

    releases/1.0/   a venv: edge 1.0, bin/edge written as pip writes it (shebang = the
    releases/2.0/   venv's own python3)
    current -> releases/1.0
    bin/edge -> current/bin/edge      (the stable path, /usr/bin/edge in the package)

The new master must run the release `current` leads to when the upgrade execs it,
never the old master's interpreter again (`sys.executable`); rollback (nginx's: flip
`current` back, HUP the old master, QUIT the new one) must run the old release again.
What runs is read twice: the version the master wrote in its state block (`edge
status`) and the interpreter in /proc/PID/cmdline (the release's own venv python).

The venvs share the test interpreter's site-packages (the dependencies); each holds its
own copy of the built `edge` package with its version patched, so the test costs a copy
of the tree, not a build. The packaged path (.deb in a Debian root) is
tests/test_packages.py.
"""

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from support import alive, get
from support.ports import free_port

pytestmark = [pytest.mark.edge_only, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[1]

CONF = """
worker_processes 1;
worker_shutdown_timeout 2s;
pid {dir}/edge.pid;
error_log {dir}/error.log info;
{extra}
http {{
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def make_release(root, version):
    """A venv at root/releases/VERSION holding edge VERSION, as a pip install would."""
    venv = root / "releases" / version
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    shutil.copytree(REPO / "edge", purelib / "edge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html", "*.pyx"))
    init = purelib / "edge" / "__init__.py"
    text = init.read_text()
    init.write_text(text.replace('__version__ = "', f'__version__ = "{version}"  # was "', 1))
    script = venv / "bin" / "edge"
    script.write_text(f"#!{venv}/bin/python3\n"
                      "import sys\nfrom edge.cli import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)
    return venv


def flip(root, version):
    """Point `current` at a release: a temporary symlink renamed over it (atomic)."""
    tmp = root / "current.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(f"releases/{version}", tmp)
    os.replace(tmp, root / "current")


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "opt"
    for version in ("1.0", "2.0"):
        make_release(root, version)
    flip(root, "1.0")
    (root / "bin").mkdir()
    stable = root / "bin" / "edge"
    os.symlink(root / "current" / "bin" / "edge", stable)
    return root, stable


def env_without_tree(**extra):
    """The environment of a packaged edge: nothing points at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGE_BINARY")}
    env.update(extra)
    return env


class Running:
    """An edge master started from `program`, stopped at the end whatever it became."""

    def __init__(self, tmp_path, program, env=None, extra=""):
        self.dir = tmp_path
        self.port = free_port()
        self.conf = tmp_path / "edge.conf"
        self.conf.write_text(CONF.format(dir=tmp_path, port=self.port, extra=extra))
        self.pid_path = tmp_path / "edge.pid"
        self.env = env or env_without_tree()
        self.proc = subprocess.Popen([str(program), "-c", str(self.conf)], env=self.env,
                                     cwd=tmp_path, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.wait(lambda: self.serving() is not None, "edge to serve")

    def edge(self, program, *args):
        return subprocess.run([str(program), *args, "-c", str(self.conf)], env=self.env,
                              cwd=self.dir, capture_output=True, text=True, timeout=60)

    def master(self):
        try:
            return int(self.pid_path.read_text())
        except (OSError, ValueError):
            return None

    def serving(self):
        """The master in the pid file, once it serves with every worker up."""
        from edge._core.reactor import SharedState
        pid = self.master()
        try:
            st = SharedState.open(f"{self.pid_path}.state")
        except (OSError, ValueError):
            return None
        try:
            if pid and st.master_pid == pid and 0 < st.workers_expected <= st.workers_up:
                return pid
            return None
        finally:
            st.close()

    def wait(self, predicate, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                log = (self.dir / "error.log")
                raise AssertionError(f"timed out waiting for {what}\n"
                                     + (log.read_text() if log.exists() else ""))
            time.sleep(0.02)

    def stop(self):
        pids = {self.master(), self.proc.pid}
        oldbin = self.pid_path.with_name("edge.pid.oldbin")
        if oldbin.exists():
            pids.add(int(oldbin.read_text()))
        for pid in filter(None, pids):
            try:
                os.kill(pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while any(pid and alive(pid) for pid in pids) and time.monotonic() < deadline:
            if self.proc.poll() is None:
                time.sleep(0.05)
            else:
                time.sleep(0.05)
        for pid in filter(None, pids):
            if alive(pid):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        self.proc.wait(timeout=5)


def cmdline(pid):
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def children(pid):
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.fixture
def running(tmp_path):
    started = []

    def start(program, **kw):
        r = Running(tmp_path, program, **kw)
        started.append(r)
        return r
    yield start
    for r in started:
        r.stop()


def test_upgrade_through_the_stable_path_runs_the_new_release(layout, running):
    root, stable = layout
    e = running(stable)
    first = e.serving()
    assert "version 1.0" in e.edge(stable, "status").stdout
    assert cmdline(first) == str(root / "releases/1.0/bin/python3")

    flip(root, "2.0")
    up = e.edge(stable, "-s", "upgrade")
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "1.0 -> 2.0"
    assert "same version" not in up.stderr
    new = e.serving()
    assert new != first and not alive(first)
    assert "version 2.0" in e.edge(stable, "status").stdout
    # the new master and its worker run release 2.0's interpreter
    assert cmdline(new) == str(root / "releases/2.0/bin/python3")
    assert {cmdline(w) for w in children(new)} == {str(root / "releases/2.0/bin/python3")}
    assert get(e.port, "/").status == 200

    # Back after a finished upgrade: flip `current` back, upgrade again.
    flip(root, "1.0")
    down = e.edge(stable, "-s", "upgrade")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "2.0 -> 1.0"
    assert cmdline(e.serving()) == str(root / "releases/1.0/bin/python3")
    assert "version 1.0" in e.edge(stable, "status").stdout


def test_rollback_flips_current_back_and_hups_the_old_master(layout, running):
    """nginx's rollback, mid-upgrade: USR2 started 2.0, WINCH stopped 1.0's workers;
    flip `current` back, HUP the old master (its workers come back, release 1.0), QUIT
    the new one. An upgrade afterwards stays on 1.0 and says so."""
    root, stable = layout
    e = running(stable)
    old = e.serving()
    flip(root, "2.0")
    os.kill(old, signal.SIGUSR2)
    e.wait(lambda: e.serving() not in (None, old), "the new master")
    new = e.serving()
    assert cmdline(new) == str(root / "releases/2.0/bin/python3")
    status = e.edge(stable, "status").stdout
    assert "version 2.0" in status and "old master" in status and "(version 1.0)" in status
    os.kill(old, signal.SIGWINCH)
    e.wait(lambda: not [p for p in children(old) if p != new], "the old workers to exit")

    flip(root, "1.0")
    os.kill(old, signal.SIGHUP)
    e.wait(lambda: [p for p in children(old) if p != new], "the old workers to come back")
    os.kill(new, signal.SIGQUIT)
    e.wait(lambda: not alive(new) and e.serving() == old, "the old master to take over")
    assert {cmdline(w) for w in children(old)} == {str(root / "releases/1.0/bin/python3")}
    assert "version 1.0" in e.edge(stable, "status").stdout
    assert get(e.port, "/").status == 200

    again = e.edge(stable, "-s", "upgrade")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "1.0 -> 1.0"
    assert "[warn] upgrade: the new master runs the same version 1.0" in again.stderr


@pytest.mark.parametrize("how", ["EDGE_BINARY", "edge_binary", "neither"])
def test_a_master_started_from_its_release_path(layout, running, how):
    """Started as releases/1.0/bin/edge (inside its venv), the master is pinned to that
    release unless EDGE_BINARY or the edge_binary directive names the stable path."""
    root, stable = layout
    pinned = root / "releases/1.0/bin/edge"
    env = env_without_tree(**({"EDGE_BINARY": str(stable)} if how == "EDGE_BINARY" else {}))
    extra = f"edge_binary {stable};" if how == "edge_binary" else ""
    e = running(pinned, env=env, extra=extra)
    flip(root, "2.0")
    up = e.edge(pinned, "-s", "upgrade")
    assert up.returncode == 0, up.stderr
    if how == "neither":
        assert up.stdout.strip() == "1.0 -> 1.0"
        assert "same version" in up.stderr
        assert cmdline(e.serving()) == str(root / "releases/1.0/bin/python3")
    else:
        assert up.stdout.strip() == "1.0 -> 2.0"
        assert cmdline(e.serving()) == str(root / "releases/2.0/bin/python3")
