"""Fixtures for edge's integration tests (real processes, real sockets, no mocks).

    def test_x(edge, upstream):
        e = edge('''http { server { listen 127.0.0.1:@PORT@;
                                    location / { proxy_pass http://@UP@; } } }''', UP=upstream)
        r = get(e.port, "/echo")

- `edge(template, **subst)` starts edge on the rendered config (see support/edge.py)
  and returns the EdgeProcess; a value that is an Upstream/Blackhole is replaced by its
  "host:port"; `netns="NAME"` runs it inside that network namespace. `edge.create(...)` returns one that is not started yet. Every edge is
  stopped with QUIT at the end of the test; a master that does not exit, exits non-zero,
  or leaves processes behind fails the test at teardown.
- `upstream`, `upstream_factory(name)`, `blackhole`, `slammer`, `tarpit`: servers from
  support/upstream.py on free ports, stopped at the end. An upstream that saw a
  malformed request fails the test at teardown (unless the test sets
  `upstream.allow_errors = True`, for requests that are cut on purpose).
- Tests that use these fixtures get a hard time limit (SIGALRM, 60 s by default,
  `@pytest.mark.timeout(N)` to change), so no hang outlives its test.
"""

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import IMPL, Blackhole, EdgeError, EdgeProcess, Slammer, Upstream  # noqa: E402
from support.upstream import Tarpit  # noqa: E402

_OUR_FIXTURES = {"edge", "upstream", "upstream_factory", "blackhole", "slammer", "tarpit"}


def pytest_configure(config):
    config.addinivalue_line("markers", "edge_only: edge's documented choice where it differs from nginx;"
                                       " skipped when EDGE_TEST_IMPL=nginx")
    config.addinivalue_line("markers", "timeout(seconds): hard time limit of one integration test")
    config.addinivalue_line("markers", "fuzz: a short atheris run of the parser fuzz target")


def pytest_collection_modifyitems(config, items):
    if IMPL != "nginx":
        return
    skip = pytest.mark.skip(reason="edge-only behaviour (EDGE_TEST_IMPL=nginx)")
    for item in items:
        if item.get_closest_marker("edge_only"):
            item.add_marker(skip)


class _Timeout(BaseException):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if not (_OUR_FIXTURES & set(getattr(item, "fixturenames", ()))):
        yield
        return
    m = item.get_closest_marker("timeout")
    seconds = int(m.args[0]) if m else 60

    def on_alarm(signum, frame):
        raise _Timeout(f"test exceeded its {seconds}s limit")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class _EdgeFactory:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs: list[EdgeProcess] = []

    def create(self, template: str, **subst) -> EdgeProcess:
        values = {k: (v.addr if hasattr(v, "addr") else v) for k, v in subst.items()}
        kw = {}
        for opt in ("start_timeout", "stop_timeout", "defaults", "netns"):
            if opt in values:
                kw[opt] = values.pop(opt)
        e = EdgeProcess(self.tmp_path / f"edge{len(self.procs)}", template, values, **kw)
        self.procs.append(e)
        return e

    def __call__(self, template: str, **subst) -> EdgeProcess:
        return self.create(template, **subst).start()

    def finish(self):
        problems = []
        for e in self.procs:
            if e.proc is None:
                continue
            try:
                e.stop()
            finally:
                e.kill_group()
            if e.problems:
                problems.append(f"{e.conf_path}: " + "; ".join(e.problems) + "\n" + e.report())
        if problems:
            raise EdgeError("\n\n".join(problems))


@pytest.fixture
def edge(tmp_path):
    f = _EdgeFactory(tmp_path)
    try:
        yield f
    finally:
        f.finish()


@pytest.fixture
def upstream_factory():
    servers = []

    def make(name="up"):
        s = Upstream(name).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()
    errors = [f"{s.name}: {e}" for s in servers if not s.allow_errors for e in s.errors]
    if errors:
        raise AssertionError("upstream saw bad input:\n" + "\n".join(errors))


@pytest.fixture
def upstream(upstream_factory):
    return upstream_factory("up")


@pytest.fixture
def blackhole():
    s = Blackhole("blackhole").start()
    yield s
    s.stop()


@pytest.fixture
def slammer():
    s = Slammer("slammer").start()
    yield s
    s.stop()


@pytest.fixture
def tarpit():
    s = Tarpit().start()
    yield s
    s.stop()
