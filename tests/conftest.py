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
- `transport` (autouse, module scope): "plain" or "tls". The suites in TLS_SUITES run
  both ways (each test id gets `[plain]` or `[tls]`); in "tls" every edge they start
  listens with `ssl` and the test certificate, and support.client.Conn speaks TLS to it
  (see support/edge.py and support/tls.py). EDGE_TEST_TLS=1 runs every module over TLS
  only, EDGE_TEST_TLS=0 every module plain only. A module-scoped server fixture of such
  a suite takes `transport` as an argument, so that it is made again for each.
- Tests that use these fixtures get a hard time limit (SIGALRM, 60 s by default,
  `@pytest.mark.timeout(N)` to change), so no hang outlives its test.
"""

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import IMPL, Blackhole, EdgeError, EdgeProcess, Slammer, Upstream  # noqa: E402
from support import tls as tls_support  # noqa: E402
from support.upstream import Tarpit  # noqa: E402

# the smuggling and framing suites: run over plain TCP and over TLS
TLS_SUITES = {"test_smuggling", "test_framing", "test_parser_framing"}
_TLS_ENV = os.environ.get("EDGE_TEST_TLS", "")

_OUR_FIXTURES = {"edge", "upstream", "upstream_factory", "blackhole", "slammer", "tarpit"}


def pytest_configure(config):
    config.addinivalue_line("markers", "edge_only: edge's documented choice where it differs from nginx;"
                                       " skipped when EDGE_TEST_IMPL=nginx")
    config.addinivalue_line("markers", "timeout(seconds): hard time limit of one integration test")
    config.addinivalue_line("markers", "fuzz: a short atheris run of the parser fuzz target")
    config.addinivalue_line("markers", "slow: minutes, not seconds (pytest -m 'not slow' leaves them out)")
    config.addinivalue_line("markers", "packages: builds the .deb/.rpm and installs them in a Debian 12 "
                                       "root made with mmdebstrap (tests/test_packages.py)")


def pytest_generate_tests(metafunc):
    if "transport" in metafunc.fixturenames and metafunc.module.__name__.rsplit(".", 1)[-1] in TLS_SUITES:
        modes = {"1": ["tls"], "0": ["plain"]}.get(_TLS_ENV, ["plain", "tls"])
        metafunc.parametrize("transport", modes, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def transport(request):
    mode = getattr(request, "param", None) or ("tls" if _TLS_ENV == "1" else "plain")
    prev = tls_support.set_tls_mode(mode == "tls")
    try:
        yield mode
    finally:
        tls_support.set_tls_mode(prev)


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
