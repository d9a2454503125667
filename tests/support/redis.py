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
