"""Start and stop real `edge` processes for the integration tests.

    with EdgeProcess(tmp_path, '''
        http { server { listen 127.0.0.1:@PORT@; location / { return 200 "hi"; } } }
    ''') as e:
        get(e.port, "/")

Config templates use `@NAME@` tokens (nginx's `{` and `$` stay untouched):
  - `@PORT@`, `@PORT1@`, `@PORT2@` ... are replaced by free ports chosen here; when edge
    fails to start because an address is in use, new ports are chosen and it is retried;
  - any other `@NAME@` comes from the `subst` mapping (e.g. `@UP@` -> "127.0.0.1:40001").
Unless the template sets them, `pid`, `error_log` (level info, into the test's directory)
and `worker_processes 1` are added at the top.

The launcher waits until every `listen` address of the rendered config accepts a TCP
connection (10 s), and fails with the config, stderr and error log if not. It stops the
master with QUIT (then TERM, then SIGKILL to the whole process group), and checks that
the master exited and that no process of its group is left.

In TLS mode (EDGE_TEST_TLS=1, or the "tls" transport of the suites conftest.py runs both
ways; `tls=True` for one process) every `listen` of the config gets `ssl`, the `http`
block gets the test certificate (support/tls.py default_files(): ECDSA P-256 for
localhost, signed by the test CA) on its own first line, so line numbers do not move, and
the listen addresses are registered so that support.client.Conn speaks TLS to them.

EDGE_TEST_IMPL=nginx runs the same configs under nginx instead (adding `events {}`,
`daemon off` and temp paths inside the test directory): a way to check that a test's
expectations are nginx's. Tests of edge-only behaviour are marked `edge_only`.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .ports import free_port

REPO = Path(__file__).resolve().parents[2]
IMPL = os.environ.get("EDGE_TEST_IMPL", "edge")
NGINX = os.environ.get("EDGE_TEST_NGINX", "/usr/sbin/nginx")

_live: set["EdgeProcess"] = set()


def _kill_all_live():
    for e in list(_live):
        e.kill_group()


atexit.register(_kill_all_live)


class EdgeError(AssertionError):
    pass


def proc_stat(pid: int):
    """(state, ppid, pgrp) of a process from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("latin-1")
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data.rsplit(")", 1)[1].split()
    return rest[0], int(rest[1]), int(rest[2])


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def all_pids():
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def is_control_process(pid: int) -> bool:
    """True for edge's control process (it sets /proc/PID/comm to "edge-control")."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip() == b"edge-control"
    except OSError:
        return False


def children_of(pid: int, control: bool = False) -> list[int]:
    """Live (non-zombie) children of `pid`, by a scan of /proc (no psutil). The tests
    count workers with this, so the master's control process is left out unless
    `control` is true."""
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st and st[1] == pid and st[0] not in ("Z", "X") and (control or not is_control_process(p)):
            out.append(p)
    return sorted(out)


def control_of(pid: int) -> list[int]:
    """The control process(es) of the master `pid` (normally one; none while it is
    being respawned)."""
    return [p for p in children_of(pid, control=True) if is_control_process(p)]


def group_members(pgid: int) -> list[int]:
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st and st[2] == pgid and st[0] not in ("Z", "X"):
            out.append(p)
    return sorted(out)


_LISTEN_RE = re.compile(r"(?:^|[;{])\s*listen\s+([^\s;]+)", re.M)
_TOKEN_RE = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def listen_addrs(conf_text: str) -> list[tuple[str, int]]:
    """The (host, port) pairs a config listens on, as a client would connect to them."""
    out = []
    text = re.sub(r"#[^\n]*", "", conf_text)
    for m in _LISTEN_RE.finditer(text):
        a = m.group(1)
        if a.startswith("["):
            host, port = a[1:].split("]:", 1)
        elif ":" in a:
            host, port = a.rsplit(":", 1)
        else:
            host, port = "127.0.0.1", a
        if host in ("*", "0.0.0.0", ""):
            host = "127.0.0.1"
        if host == "::":
            host = "::1"
        if (host, int(port)) not in out:
            out.append((host, int(port)))
    return out


def listening_inodes(port: int, pid: int | None = None) -> set[int]:
    """Inodes of the sockets in LISTEN state on `port` (any address), from /proc/net
    (or from /proc/PID/net: the tables of that process's network namespace)."""
    out = set()
    base = f"/proc/{pid}/net" if pid is not None else "/proc/net"
    for table in (f"{base}/tcp", f"{base}/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                out.add(int(fields[9]))
    return out


def socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def _has_main_directive(text: str, name: str) -> bool:
    return re.search(rf"^\s*{name}\s", re.sub(r"#[^\n]*", "", text), re.M) is not None


_HTTP_OPEN_RE = re.compile(r"(^\s*http\s*\{)", re.M)
_LISTEN_DIRECTIVE_RE = re.compile(r"((?:^|[;{])\s*listen\s+)([^;]*);", re.M)


def add_tls(conf_text: str) -> str:
    """The config with `ssl` on every listen and the default test certificate in the
    http block (on the `http {` line itself: line numbers stay)."""
    from .tls import default_files
    files, cert = default_files()

    def listen(m):
        params = m.group(2)
        return m.group(0) if re.search(r"(^|\s)ssl(\s|$)", params) else f"{m.group(1)}{params} ssl;"
    text = _LISTEN_DIRECTIVE_RE.sub(listen, conf_text)
    return _HTTP_OPEN_RE.sub(lambda m: f"{m.group(1)} ssl_certificate {cert.cert}; "
                                       f"ssl_certificate_key {cert.key};", text, count=1)


class EdgeProcess:
    def __init__(self, workdir, config: str, subst: dict | None = None, *, start_timeout: float = 10.0,
                 stop_timeout: float = 15.0, defaults: bool = True, impl: str | None = None,
                 netns: str | None = None, tls: bool | None = None):
        from . import tls as tls_support
        self.workdir = Path(workdir)
        # every listen over TLS (see the module docstring); fixed when the process is made
        self.tls = tls_support.tls_mode() if tls is None else tls
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.template = config
        self.subst = {k: str(v) for k, v in (subst or {}).items()}
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.defaults = defaults
        self.impl = impl or IMPL
        # run inside this network namespace (`ip netns exec`, which execs in place, so
        # the pid is still the master's); readiness is then judged by the LISTEN socket
        # in the namespace's tables alone, as a client here cannot connect to it
        self.netns = netns
        self.conf_path = self.workdir / "edge.conf"
        self.pid_path = self.workdir / "edge.pid"
        self.error_log_path = self.workdir / "error.log"
        self.stdout_path = self.workdir / "edge.stdout"
        self.stderr_path = self.workdir / "edge.stderr"
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.problems: list[str] = []
        self.seen_workers: set[int] = set()
        self.conf_text = ""

    # -- config ----------------------------------------------------------------------

    def _alloc_ports(self):
        self.ports = {}
        for name in sorted(set(_TOKEN_RE.findall(self.template))):
            if re.fullmatch(r"PORT\d*", name) and name not in self.subst:
                self.ports[name] = free_port()

    def render(self) -> str:
        values = {**self.subst, **{k: str(v) for k, v in self.ports.items()}}

        def rep(m):
            if m.group(1) not in values:
                raise KeyError(f"config token @{m.group(1)}@ has no value")
            return values[m.group(1)]

        body = _TOKEN_RE.sub(rep, self.template)
        if self.tls:
            body = add_tls(body)
        head = []
        if self.defaults:
            if not _has_main_directive(body, "pid"):
                head.append(f"pid {self.pid_path};")
            if not _has_main_directive(body, "error_log"):
                head.append(f"error_log {self.error_log_path} info;")
            if not _has_main_directive(body, "worker_processes"):
                head.append("worker_processes 1;")
        if self.impl == "nginx":
            # nginx's own default is "nobody"; root unless the config names its user
            head.append("daemon off;" if _has_main_directive(body, "user") else "daemon off; user root;")
            if not _has_main_directive(body, "events"):
                head.append("events { worker_connections 1024; }")
            tmp = self.workdir / "nginx-tmp"
            tmp.mkdir(exist_ok=True)
            # nginx's default access log (logs/access.log under the prefix) does not exist
            # here: off, unless the config sets one in http before its first server
            first_server = re.search(r"^\s*server\s*\{", body, re.M)
            own_log = _has_main_directive(body[:first_server.start()] if first_server else body, "access_log")
            extra = ("" if own_log else "access_log off; ") + (
                f"client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; "
                f"fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;")
            body = re.sub(r"(^\s*http\s*\{)", lambda m: m.group(1) + " " + extra, body, count=1, flags=re.M)
        # The added lines go on one line, so line numbers in the template stay right + 1.
        return (" ".join(head) + "\n" + body) if head else body

    @property
    def port(self) -> int:
        if "PORT" in self.ports:
            return self.ports["PORT"]
        addrs = listen_addrs(self.conf_text)
        return addrs[0][1]

    def line_of(self, needle: str) -> int:
        """1-based line number of the first line of the rendered config containing needle."""
        for i, line in enumerate(self.conf_text.splitlines(), 1):
            if needle in line:
                return i
        raise KeyError(needle)

    # -- process -----------------------------------------------------------------------

    def command(self) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        if self.impl == "nginx":
            return prefix + [NGINX, "-p", str(self.workdir), "-e", str(self.error_log_path),
                             "-c", str(self.conf_path)]
        return prefix + [sys.executable, "-m", "edge", "-c", str(self.conf_path)]

    def spawn(self):
        """Write the config and start the process; does not wait for readiness."""
        self.conf_text = self.render()
        self.conf_path.write_text(self.conf_text)
        self.returncode = None
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _live.add(self)
        if self.tls:
            from .tls import default_files, register_tls_ports
            register_tls_ports(listen_addrs(self.conf_text), sni="localhost", ca=default_files()[0].ca_pem)
        return self

    def start(self):
        last = None
        for attempt in range(4):
            self._alloc_ports()
            self.spawn()
            try:
                self.wait_ready()
                return self
            except EdgeError as e:
                last = e
                self.kill_group()
                if self.ports and re.search(r"in use|EADDRINUSE|errno 98", self.output(), re.I):
                    continue  # someone took a port between our probe and edge's bind
                raise
        raise last

    def wait_ready(self):
        """Wait until every listen port has a listening socket that belongs to this
        process (not some other program on a recycled port) and accepts a connection."""
        addrs = listen_addrs(self.conf_text)
        deadline = time.monotonic() + self.start_timeout
        pending = list(addrs)
        while pending:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise EdgeError(f"{self.impl} exited with {self.proc.returncode} before listening"
                                f" on {pending}\n{self.report()}")
            host, port = pending[0]
            ours = socket_inodes(self.pid)
            for w in children_of(self.pid):
                ours |= socket_inodes(w)
            if self.netns and listening_inodes(port, self.pid) & ours:
                pending.pop(0)
                continue
            if not self.netns and listening_inodes(port) & ours:
                try:
                    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                    with socket.socket(fam, socket.SOCK_STREAM) as s:
                        s.settimeout(0.5)
                        s.connect((host, port))
                    pending.pop(0)
                    continue
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise EdgeError(f"{self.impl} did not listen on {pending} within {self.start_timeout}s"
                                f"\n{self.report()}")
            time.sleep(0.02)
        self.wait_workers_up(deadline)

    def wait_workers_up(self, deadline):
        """edge only: a port that accepts is not yet a node that is ready (the backlog
        accepts too). When the master's state file exists, wait until every worker of
        the generation is up, as `edge -s upgrade` does."""
        if self.impl != "edge":
            return
        state_file = Path(str(self.pid_path) + ".state")
        from edge._core.reactor import SharedState
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return
            try:
                st = SharedState.open(str(state_file))
                try:
                    if st.master_pid == self.pid and st.workers_expected and \
                            st.workers_up >= st.workers_expected:
                        return
                finally:
                    st.close()
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        pids = children_of(self.pid)
        self.seen_workers.update(pids)
        return pids

    def wait_workers(self, n: int, timeout: float = 5.0, exclude=()) -> list[int]:
        """Poll until exactly `n` live workers exist (none of them in `exclude`)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.worker_pids() if p not in exclude]
            if len(pids) == n and len(self.worker_pids()) == n:
                return pids
            if time.monotonic() > deadline:
                raise EdgeError(f"wanted {n} workers, have {self.worker_pids()} (excluding {list(exclude)})"
                                f"\n{self.report()}")
            time.sleep(0.01)

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGQUIT, timeout: float | None = None) -> int:
        """Stop the master with `sig`, escalating; records what went wrong in .problems."""
        if self.proc is None:
            return 0
        timeout = self.stop_timeout if timeout is None else timeout
        if self.running():
            self.worker_pids()
            self.send_signal(sig)
            if self.wait_exit(timeout) is None:
                self.problems.append(f"master did not exit within {timeout}s of {signal.Signals(sig).name}")
                self.send_signal(signal.SIGTERM)
                if self.wait_exit(5) is None:
                    self.problems.append("master did not exit within 5s of SIGTERM; SIGKILLed")
                    self.kill_group()
            elif self.returncode != 0:
                self.problems.append(f"master exited with {self.returncode} after {signal.Signals(sig).name}")
        self.check_no_leftovers()
        return self.returncode

    def check_no_leftovers(self, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while True:
            left = group_members(self.pid) + self._live_seen_workers()
            if not left:
                break
            if time.monotonic() > deadline:
                self.problems.append(f"processes left after the master exited: {sorted(set(left))}")
                self.kill_group()
                break
            time.sleep(0.02)
        _live.discard(self)
        self._unregister_tls()

    def _live_seen_workers(self) -> list[int]:
        """Workers seen earlier that still run, in the master's process group or orphaned
        to init (a recycled pid of some unrelated process is not counted)."""
        out = []
        for p in self.seen_workers:
            st = proc_stat(p)
            if st and st[0] not in ("Z", "X") and (st[2] == self.pid or st[1] == self.pid):
                out.append(p)
        return out

    def _unregister_tls(self):
        if self.tls and self.conf_text:
            from .tls import unregister_tls_ports
            unregister_tls_ports(listen_addrs(self.conf_text))

    def kill_group(self):
        if self.proc is None:
            return
        for p in group_members(self.pid) + self._live_seen_workers():
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.returncode = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        _live.discard(self)
        self._unregister_tls()

    # -- diagnostics -------------------------------------------------------------------

    @property
    def error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        try:
            out = self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            out = ""
        return out + self.stderr

    def report(self) -> str:
        numbered = "\n".join(f"{i:4} {l}" for i, l in enumerate(self.conf_text.splitlines(), 1))
        return (f"--- config {self.conf_path}\n{numbered}\n--- stdout+stderr\n{self.output()[-6000:]}"
                f"\n--- error log\n{self.error_log[-6000:]}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self.problems and exc[0] is None:
            raise EdgeError("; ".join(self.problems) + "\n" + self.report())
