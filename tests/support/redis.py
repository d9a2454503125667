"""A real redis-server for tests, on a free port, with no persistence.

    server = RedisServer().start()   # waits until it answers PING
    server.kill()                    # SIGKILL, on purpose (outage tests)
    server.start()                   # again, on the same port, empty
    server.stop()

Nothing is faked: tests that need Redis talk to this process over TCP. A test that
cannot find ``redis-server`` is skipped by the fixture that uses this class.
"""

import shutil
import socket
import subprocess
import time

from .ports import free_port


def redis_server_path():
    return shutil.which("redis-server")


class RedisServer:
    def __init__(self, port=None, args=()):
        self.port = port or free_port()
        self.args = list(args)      # more redis-server options ("--enable-debug-command", "local")
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout=10.0):
        # --save '' and --appendonly no: nothing is written to disk, and a restarted
        # server comes back empty.
        self.proc = subprocess.Popen(
            [redis_server_path(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--loglevel", "warning", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}")

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def redis_sentinel_path():
    return shutil.which("redis-sentinel")


class RedisSentinel:
    """A real redis-sentinel watching `master_name` at 127.0.0.1:master_port, on a free
    port, its config file (sentinels rewrite it) in `workdir`. Quick to decide: a
    master is down after 1 s without an answer."""

    def __init__(self, workdir, master_name, master_port, quorum=2, port=None):
        self.workdir = workdir
        self.name = master_name
        self.master_port = master_port
        self.quorum = quorum
        self.port = port or free_port()
        self.proc = None

    def start(self, timeout=10.0):
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 5000\n"
            f"sentinel parallel-syncs {self.name} 1\n")
        self.proc = subprocess.Popen([redis_sentinel_path(), str(conf), "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"redis-sentinel exited with {self.proc.returncode}: {err}")
            if RedisServer.ping(self):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-sentinel did not answer PING on port {self.port}")

    def command(self, *args):
        import redis
        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def current_master_port(self):
        host, port = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(port)

    def knows_replica(self, port):
        for info in self.command("SENTINEL", "REPLICAS", self.name):
            if not isinstance(info, dict):      # raw pairs (another client version)
                info = dict(zip(info[::2], info[1::2]))
            info = {_text(k): v if isinstance(v, (set, list)) else _text(v)
                    for k, v in info.items()}
            flags = info.get("flags", "")
            flags = flags if isinstance(flags, (set, list)) else flags.split(",")
            if int(info.get("port", 0)) == port and "disconnected" not in flags \
                    and "s_down" not in flags:
                return True
        return False

    def failover(self):
        """SENTINEL FAILOVER: promote a replica now, without asking the others."""
        return self.command("SENTINEL", "FAILOVER", self.name)

    def kill(self):
        RedisServer.kill(self)
