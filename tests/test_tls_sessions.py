"""TLS session resumption across workers: ssl_session_cache shared:NAME:SIZE, tickets
with keys shared by every worker (rotated by the control process), ssl_session_ticket_key
files, ssl_session_timeout (docs/tls.md, "Session resumption").

Real processes and sockets: edge with `worker_processes 2` and a client made with
Python's ssl module, which resumes by passing `session=`. The location answers
`$pid $ssl_session_reused`, so each response says which worker served it and whether the
handshake resumed. SO_REUSEPORT spreads new connections over the workers by their
source port, so a bounded loop of connections sees both workers.

nginx is the oracle: `EDGE_TEST_IMPL=nginx python3 -m pytest tests/test_tls_sessions.py`
runs the same configs under nginx 1.22 (the tests that look into edge's zones, and the
rotation of the shared keys, which nginx 1.22 does not have, are marked edge_only).
"""

import os
import socket
import ssl
import subprocess
import time

import pytest
import trustme

from support import IMPL
from support.edge import REPO

CONNECT_TRIES = 200


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def certs(ca, tmp_path):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path = tmp_path / "server.pem"
    key_path = tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return {"CERT": str(cert_path), "KEY": str(key_path)}


def client_context(ca, version=None):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def fetch(port, ctx, session=None, name="localhost"):
    """One request on a new TLS connection: (worker pid, reused, the session to resume
    with next). The whole response is read, so a TLS 1.3 ticket sent after the handshake
    has arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name, session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % name.encode())
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ssl.SSLZeroReturnError:
                    break
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), data
            pid, flag = body.decode().split()
            assert flag == ("r" if s.session_reused else "."), (flag, s.session_reused)
            return int(pid), s.session_reused, s.session


CONF = """
worker_processes 2;
http {
    %s
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name localhost;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        ssl_protocols TLSv1.2 TLSv1.3;      # nginx 1.22's default lacks TLSv1.3
        location / { return 200 "$pid $ssl_session_reused"; }
    }
}
"""


def resume_across_workers(port, ctx):
    """Connect until a session made on one worker resumed on the other, and both workers
    resumed a session. Each connection resumes the newest session we hold (TLS 1.3
    sessions may be good for one use)."""
    pid, reused, session = fetch(port, ctx)
    assert not reused
    origin = pid
    reused_on = set()
    crossed = False
    for _ in range(CONNECT_TRIES):
        pid, reused, new_session = fetch(port, ctx, session)
        assert reused, f"a session made by worker {origin} did not resume on worker {pid}"
        reused_on.add(pid)
        crossed = crossed or pid != origin
        if crossed and len(reused_on) == 2:
            return
        session, origin = new_session, pid
    pytest.fail(f"after {CONNECT_TRIES} connections: resumed on {reused_on}, crossed={crossed}")


VERSIONS = [pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
            pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cache", ["shared:SSL:1m", "builtin:1000 shared:SSL:1m"])
def test_shared_cache_resumes_across_workers(edge, ca, certs, version, cache):
    e = edge(CONF % f"ssl_session_cache {cache}; ssl_session_tickets off;", **certs)
    resume_across_workers(e.port, client_context(ca, version))


@pytest.mark.parametrize("version", VERSIONS)
def test_tickets_resume_across_workers(edge, ca, certs, version):
    e = edge(CONF % "ssl_session_cache off; ssl_session_tickets on;", **certs)
    resume_across_workers(e.port, client_context(ca, version))


@pytest.mark.parametrize("version", VERSIONS)
def test_no_cache_and_no_tickets_never_resume(edge, ca, certs, version):
    """The control for the two above: with neither, a session offered is never taken."""
    e = edge(CONF % "ssl_session_cache off; ssl_session_tickets off;", **certs)
    ctx = client_context(ca, version)
    _, reused, session = fetch(e.port, ctx)
    for _ in range(6):
        _, reused, _ = fetch(e.port, ctx, session)
        assert not reused


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("how", ["cache", "tickets"])
def test_resumption_across_workers_after_a_reload(edge, ca, certs, version, how):
    """After an in-place reload each worker builds its own contexts: sessions still cross
    workers because the cache and the ticket keys are in shared memory (OpenSSL's own
    ticket keys are made per context, so they would differ from worker to worker)."""
    e = edge(CONF % SETTINGS[how], **certs)
    rewrite_config(e, e.template + "\n# reloaded\n")
    reload_and_wait(e)
    resume_across_workers(e.port, client_context(ca, version))


@pytest.mark.edge_only
@pytest.mark.parametrize("version", VERSIONS)
def test_tickets_survive_a_reload(edge, ca, certs, version):
    """The shared ticket keys outlive a reload (nginx 1.22 makes new ones)."""
    e = edge(CONF % "ssl_session_cache off;", **certs)
    ctx = client_context(ca, version)
    _, _, session = fetch(e.port, ctx)
    rewrite_config(e, e.template + "\n# reloaded\n")
    reload_and_wait(e)
    _, reused, _ = fetch(e.port, ctx, session)
    assert reused


SNI_CONF = """
worker_processes 1;
http {
    ssl_protocols TLSv1.2 TLSv1.3;
    %s
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name localhost;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        location / { return 200 "$pid $ssl_session_reused"; }
    }
    server {
        listen 127.0.0.1:@PORT@ ssl;
        server_name other.test;
        ssl_certificate @CERT2@;
        ssl_certificate_key @KEY2@;
        location / { return 200 "$pid $ssl_session_reused"; }
    }
}
"""


def other_cert(ca, tmp_path):
    other = ca.issue_cert("other.test")
    other.cert_chain_pems[0].write_to_path(str(tmp_path / "other.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    return {"CERT2": str(tmp_path / "other.pem"), "KEY2": str(tmp_path / "other.key")}


SETTINGS = {"cache": "ssl_session_cache shared:SSL:1m; ssl_session_tickets off;",
            "tickets": "ssl_session_cache off;"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("how", ["cache", "tickets"])
def test_servers_chosen_by_sni_resume(edge, ca, certs, tmp_path, version, how):
    """Every server of a listen resumes its sessions, the default one and those SNI
    picks. As in nginx, OpenSSL ties a session to the context the connection started
    with (the listen's default server), so a session offered under another name of the
    same listen resumes too; the request is then checked as any other (client
    certificate rules included)."""
    e = edge(SNI_CONF % SETTINGS[how], **other_cert(ca, tmp_path), **certs)
    ctx = client_context(ca, version)
    ctx.check_hostname = False      # a session is offered to the other name on purpose
    for name in ("localhost", "other.test"):
        _, _, session = fetch(e.port, ctx, name=name)
        _, reused, _ = fetch(e.port, ctx, session, name=name)
        assert reused, name
    _, _, session = fetch(e.port, ctx, name="other.test")
    _, reused, _ = fetch(e.port, ctx, session, name="localhost")
    assert reused


TWO_LISTENS = SNI_CONF.replace("listen 127.0.0.1:@PORT@ ssl;\n        server_name other.test;",
                               "listen 127.0.0.1:@PORT2@ ssl;\n        server_name other.test;")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("how", ["cache", "tickets"])
def test_sessions_do_not_cross_to_a_server_with_other_certificates(edge, ca, certs, tmp_path,
                                                                   version, how):
    """A session made with one server does not resume on a listen whose server has other
    certificates, though the cache zone and the ticket keys are shared: the session id
    context is made of the server's certificates (and client CAs), as nginx makes it."""
    e = edge(TWO_LISTENS % SETTINGS[how], **other_cert(ca, tmp_path), **certs)
    port2 = e.ports["PORT2"]
    ctx = client_context(ca, version)
    ctx.check_hostname = False
    _, _, session = fetch(e.port, ctx)
    assert fetch(e.port, ctx, session)[1] is True
    _, _, session = fetch(e.port, ctx)
    assert fetch(port2, ctx, session, name="other.test")[1] is False
    _, _, session = fetch(port2, ctx, name="other.test")
    assert fetch(port2, ctx, session, name="other.test")[1] is True


@pytest.mark.parametrize("version", VERSIONS)
def test_the_default_servers_cache_serves_every_server_of_a_listen(edge, ca, certs, tmp_path, version):
    """OpenSSL looks a session up before SNI has chosen the server and stores it after;
    as nginx, edge uses the listen's default server's cache for both, so a server with a
    cache of its own still resumes (through the default server's)."""
    conf = SNI_CONF.replace("server_name other.test;", "server_name other.test;\n        "
                            "ssl_session_cache shared:OTHER:1m;")
    e = edge(conf % "ssl_session_cache shared:SSL:1m; ssl_session_tickets off;",
             **other_cert(ca, tmp_path), **certs)
    ctx = client_context(ca, version)
    _, _, session = fetch(e.port, ctx, name="other.test")
    assert fetch(e.port, ctx, session, name="other.test")[1] is True


@pytest.mark.parametrize("version", VERSIONS)
def test_the_default_servers_tickets_setting_governs_its_listen(edge, ca, certs, tmp_path, version):
    """OpenSSL reads a ticket before SNI has chosen the server: with tickets off on the
    listen's default server, a server SNI picks gets no ticket resumption even with
    tickets on (nginx behaves alike); with the setting moved, it does."""
    conf = SNI_CONF.replace("server_name localhost;", "server_name localhost;\n        "
                            "ssl_session_tickets %s;")
    ctx = client_context(ca, version)
    e = edge(conf % ("ssl_session_cache off;", "off"), **other_cert(ca, tmp_path), **certs)
    _, _, session = fetch(e.port, ctx, name="other.test")
    assert fetch(e.port, ctx, session, name="other.test")[1] is False
    e = restart(e, edge, conf % ("ssl_session_cache off;", "on"), **other_cert(ca, tmp_path), **certs)
    _, _, session = fetch(e.port, ctx, name="other.test")
    assert fetch(e.port, ctx, session, name="other.test")[1] is True


def test_builtin_cache_is_per_worker(edge, ca, certs):
    """`builtin` is OpenSSL's cache inside each worker (nginx warns of the same): a
    session id resumes on the worker that made it and on no other."""
    e = edge(CONF % "ssl_session_cache builtin:1000; ssl_session_tickets off;", **certs)
    ctx = client_context(ca, ssl.TLSVersion.TLSv1_2)
    origin, _, session = fetch(e.port, ctx)
    seen = {True: set(), False: set()}
    for _ in range(CONNECT_TRIES):
        pid, reused, _ = fetch(e.port, ctx, session)
        seen[reused].add(pid)
        if seen[True] and seen[False]:
            break
    assert seen[True] == {origin}
    assert seen[False] and origin not in seen[False]


def test_session_timeout_ends_resumption(edge, ca, certs):
    e = edge(CONF % "ssl_session_cache shared:SSL:1m; ssl_session_tickets off; ssl_session_timeout 1s;",
             **certs)
    ctx = client_context(ca, ssl.TLSVersion.TLSv1_2)
    _, _, session = fetch(e.port, ctx)
    _, reused, _ = fetch(e.port, ctx, session)
    assert reused
    time.sleep(2.2)
    _, reused, _ = fetch(e.port, ctx, session)
    assert not reused


def test_full_shared_cache_evicts_the_oldest(edge, ca, certs):
    """A zone at its minimum size (32k) holds some tens of sessions: after hundreds of
    new sessions the first one is gone and the last one still resumes."""
    e = edge(CONF.replace("worker_processes 2;", "worker_processes 1;")
             % "ssl_session_cache shared:SMALL:32k; ssl_session_tickets off;", **certs)
    ctx = client_context(ca, ssl.TLSVersion.TLSv1_2)
    _, _, first = fetch(e.port, ctx)
    _, reused, _ = fetch(e.port, ctx, first)
    assert reused
    last = None
    for _ in range(400):
        _, _, last = fetch(e.port, ctx)
    _, reused_first, _ = fetch(e.port, ctx, first)
    _, reused_last, _ = fetch(e.port, ctx, last)
    assert (reused_first, reused_last) == (False, True)
    if IMPL == "edge":
        from edge._core.reactor import SessionCacheZone
        zone = SessionCacheZone.open(f"{e.pid_path}.state.ssl.cache.SMALL")
        stats = zone.stats()
        zone.close()
        assert stats["stored"] >= 402 and stats["evicted"] >= 250 and stats["hits"] >= 2, stats


# ---- ticket key files --------------------------------------------------------------------

def key_file(tmp_path, name, size):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return str(path)


KEYS_CONF = CONF % "ssl_session_cache off; %s"


def restart(e, edge, template, **subst):
    e.stop()
    return edge(template, **subst)


@pytest.mark.parametrize("size", [48, 80])
@pytest.mark.parametrize("version", VERSIONS)
def test_ticket_key_file_survives_a_restart(edge, ca, certs, tmp_path, size, version):
    key = key_file(tmp_path, "ticket.key", size)
    conf = KEYS_CONF % "ssl_session_ticket_key @K1@;"
    e = edge(conf, K1=key, **certs)
    ctx = client_context(ca, version)
    _, _, session = fetch(e.port, ctx)
    e = restart(e, edge, conf, K1=key, **certs)
    _, reused, _ = fetch(e.port, ctx, session)
    assert reused


def test_random_ticket_keys_do_not_survive_a_restart(edge, ca, certs):
    """The control for the test above: without key files, a new start has new keys."""
    conf = KEYS_CONF % ""
    e = edge(conf, **certs)
    ctx = client_context(ca, ssl.TLSVersion.TLSv1_2)
    _, _, session = fetch(e.port, ctx)
    _, reused, _ = fetch(e.port, ctx, session)
    assert reused
    e = restart(e, edge, conf, **certs)
    _, reused, _ = fetch(e.port, ctx, session)
    assert not reused


@pytest.mark.parametrize("version", VERSIONS)
def test_ticket_key_files_first_encrypts_all_decrypt(edge, ca, certs, tmp_path, version):
    """Key rollover as nginx documents it: a ticket made with the old key still resumes
    when the old key is listed second, and no more once it is gone; the new first key
    encrypts the tickets given out meanwhile."""
    old = key_file(tmp_path, "old.key", 80)
    new = key_file(tmp_path, "new.key", 48)
    ctx = client_context(ca, version)
    e = edge(KEYS_CONF % "ssl_session_ticket_key @OLD@;", OLD=old, **certs)
    _, _, old_session = fetch(e.port, ctx)

    conf = KEYS_CONF % "ssl_session_ticket_key @NEW@; ssl_session_ticket_key @OLD@;"
    e = restart(e, edge, conf, NEW=new, OLD=old, **certs)
    _, reused, renewed = fetch(e.port, ctx, old_session)
    assert reused
    _, _, new_session = fetch(e.port, ctx)

    e = restart(e, edge, KEYS_CONF % "ssl_session_ticket_key @NEW@;", NEW=new, **certs)
    assert fetch(e.port, ctx, old_session)[1] is False
    assert fetch(e.port, ctx, new_session)[1] is True
    assert fetch(e.port, ctx, renewed)[1] is True


def config_test(edge, template, **subst):
    """`edge -t` (`nginx -t`) on a config: (exit status, output)."""
    e = edge.create(template, **subst)
    e._alloc_ports()
    e.conf_text = e.render()
    e.conf_path.write_text(e.conf_text)
    r = subprocess.run(e.command() + ["-t"], capture_output=True, text=True, timeout=30,
                       cwd=str(REPO))
    return r.returncode, r.stdout + r.stderr, e


@pytest.mark.parametrize("size", [0, 47, 64, 81])
def test_ticket_key_file_of_a_wrong_size_fails_the_config_test(edge, certs, tmp_path, size):
    key = key_file(tmp_path, "bad.key", size)
    code, out, e = config_test(edge, KEYS_CONF % "\n        ssl_session_ticket_key @K1@;\n",
                               K1=key, **certs)
    assert code != 0
    assert "must be 48 or 80 bytes" in out, out
    # nginx names the end of the http block (it checks the file when it merges the
    # server's settings); edge names the directive
    line = e.line_of("ssl_session_ticket_key") if IMPL == "edge" else ""
    assert f"{e.conf_path}:{line}" in out, out


@pytest.mark.parametrize("value, message", [
    ("shared:SSL:1k", "is too small"),
    ("shared:SSL", "invalid session cache"),
    ("bogus", "invalid session cache"),
    ("builtin:x", "invalid session cache"),
])
def test_bad_session_cache_fails_the_config_test(edge, certs, value, message):
    code, out, e = config_test(edge, CONF % f"\n    ssl_session_cache {value};\n", **certs)
    assert code != 0
    assert message in out, out
    assert f"{e.conf_path}:{e.line_of('ssl_session_cache')}" in out, out


def test_one_zone_name_with_two_sizes_fails_the_config_test(edge, certs):
    conf = CONF.replace("server_name localhost;", "server_name localhost;\n        "
                        "ssl_session_cache shared:SSL:2m;")
    code, out, e = config_test(edge, conf % "ssl_session_cache shared:SSL:1m;", **certs)
    assert code != 0
    assert 'shared memory zone "SSL"' in out, out


# ---- edge's shared ticket keys and zones -------------------------------------------------

def ticket_zone(e):
    from edge._core.reactor import TicketKeyZone
    return TicketKeyZone.open(f"{e.pid_path}.state.ssl.tickets")


@pytest.mark.edge_only
@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", VERSIONS)
def test_rotated_ticket_keys_still_decrypt_during_the_grace_period(edge, ca, certs, monkeypatch, version):
    """The control process rotates the shared keys (here every 2 seconds, through the
    test-only EDGE_TEST_TICKET_ROTATE); a ticket made before two rotations still resumes,
    on either worker (the 8 keys kept cover 14 seconds here)."""
    monkeypatch.setenv("EDGE_TEST_TICKET_ROTATE", "2")
    e = edge(CONF % "ssl_session_cache off;", **certs)
    ctx = client_context(ca, version)
    zone = ticket_zone(e)
    try:
        _, _, session = fetch(e.port, ctx)
        first_key = zone.names()[0]
        deadline = time.monotonic() + 20
        while first_key not in zone.names()[2:] and time.monotonic() < deadline:
            time.sleep(0.1)
        names = zone.names()
        assert first_key in names[2:], (first_key, names)
        assert zone.interval == 2 and zone.grace == 300
        pids = set()
        for _ in range(CONNECT_TRIES):
            pid, reused, _ = fetch(e.port, ctx, session)
            assert reused
            pids.add(pid)
            if len(pids) == 2:
                break
        assert len(pids) == 2
    finally:
        zone.close()


@pytest.mark.edge_only
def test_shared_ticket_keys_are_dropped_after_the_grace_period(tmp_path):
    from edge._core.reactor import TicketKeyZone, prepare_ticket_keys
    path = str(tmp_path / "tickets")
    assert prepare_ticket_keys(path, 60, 300) is False
    assert prepare_ticket_keys(path, 60, 300) is True      # kept (a reload)
    zone = TicketKeyZone.open(path)
    try:
        first = zone.names()
        now = zone.rotated_at
        zone.rotate(now + 60)
        zone.rotate(now + 120)
        names = zone.names()
        assert len(names) == 3 and names[2] == first[0]
        zone.rotate(now + 120 + 300)     # the keys retired at +60 and +120 are past their grace
        names = zone.names()
        assert len(names) == 2 and first[0] not in names
        assert zone.rotations == 3
    finally:
        zone.close()


@pytest.mark.edge_only
def test_session_cache_zone_under_concurrent_processes(tmp_path):
    """Four processes store and look up sessions in one zone at once: every lookup that
    hits returns the bytes stored under that id, and the zone stays usable."""
    from edge._core.reactor import SessionCacheZone, prepare_session_cache
    path = str(tmp_path / "cache")
    prepare_session_cache(path, 256 * 1024)
    expire = int(time.time()) + 300
    pids = []
    for n in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                z = SessionCacheZone.open(path)
                bad = 0
                for i in range(3000):
                    sid = b"%d-%d" % (n, i)
                    z.store(sid, sid * (1 + i % 40), expire)
                    probe = b"%d-%d" % ((n + 1) % 4, i // 2)
                    got = z.lookup(probe)
                    if got is not None and got != probe * (1 + (i // 2) % 40):
                        bad += 1
                code = 0 if bad == 0 else 3
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitpid(p, 0)[1] for p in pids]
    assert codes == [0, 0, 0, 0]
    z = SessionCacheZone.open(path)
    try:
        stats = z.stats()
        # a store is skipped only when the lock stayed busy (a holder descheduled), and
        # then it is counted, never waited for
        assert stats["stored"] + stats["busy"] >= 12000 and stats["takeovers"] == 0, stats
        assert z.store(b"after", b"x" * 100, expire) and z.lookup(b"after") == b"x" * 100
    finally:
        z.close()


@pytest.mark.edge_only
def test_lock_held_by_a_dead_process_is_taken_over(tmp_path):
    from edge._core.reactor import SessionCacheZone, prepare_session_cache
    path = str(tmp_path / "cache")
    prepare_session_cache(path, 64 * 1024)
    z = SessionCacheZone.open(path)
    try:
        expire = int(time.time()) + 300
        assert z.store(b"a", b"1" * 50, expire)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        z.hold_lock(pid)                       # it died holding the lock
        assert z.store(b"b", b"2" * 50, expire)
        assert z.stats()["takeovers"] == 1
        assert z.lookup(b"b") == b"2" * 50
        z.hold_lock(os.getppid())              # a live holder: give up, do not wait
        assert not z.store(b"c", b"3" * 50, expire)
        assert z.stats()["busy"] == 1
        z.hold_lock(0)
        assert z.lookup(b"b") == b"2" * 50
    finally:
        z.close()


@pytest.mark.edge_only
def test_shared_cache_survives_a_reload_and_is_made_anew_when_resized(edge, ca, certs):
    conf = CONF % "ssl_session_cache shared:SSL:%s; ssl_session_tickets off;"
    e = edge(conf % "1m", **certs)
    ctx = client_context(ca, ssl.TLSVersion.TLSv1_2)
    _, _, session = fetch(e.port, ctx)
    rewrite_config(e, conf % "1m" + "\n# reloaded\n")
    reload_and_wait(e)
    _, reused, _ = fetch(e.port, ctx, session)
    assert reused
    rewrite_config(e, conf % "2m")
    reload_and_wait(e)
    _, reused, _ = fetch(e.port, ctx, session)
    assert not reused
    _, _, session = fetch(e.port, ctx)
    _, reused, _ = fetch(e.port, ctx, session)
    assert reused


def rewrite_config(e, template):
    e.template = template
    e.conf_text = e.render()
    e.conf_path.write_text(e.conf_text)


def reload_and_wait(e):
    """HUP, then wait until the new configuration serves (edge logs it; nginx's old
    workers are gone once new ones took over)."""
    import signal
    from support.edge import children_of
    marker = "is in force" if IMPL == "edge" else "reconfiguring"
    before = e.error_log.count(marker)
    old = set(children_of(e.pid)) if IMPL != "edge" else set()
    e.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while e.error_log.count(marker) <= before or (old and old & set(children_of(e.pid))):
        assert time.monotonic() < deadline, e.report()
        time.sleep(0.05)


@pytest.mark.edge_only
def test_metrics_count_session_cache_hits_and_ticket_keys(edge, ca, certs):
    import urllib.request
    conf = CONF.replace("http {", "http {\n    admin_listen 127.0.0.1:@PORT2@;")
    e = edge(conf % "ssl_session_cache shared:SSL:1m;", **certs)
    ctx = client_context(ca, ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_TICKET         # resume by session id: through the cache
    _, _, session = fetch(e.port, ctx)
    assert fetch(e.port, ctx, session)[1] is True
    deadline = time.monotonic() + 10
    while True:     # the control process may still be starting its listener
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{e.ports['PORT2']}/metrics", timeout=5) as r:
                text = r.read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert int(samples['edge_ssl_session_cache_events_total{zone="SSL",event="stored"}']) >= 1
    assert int(samples['edge_ssl_session_cache_events_total{zone="SSL",event="hit"}']) >= 1
    assert int(samples['edge_ssl_session_cache_bytes{zone="SSL"}']) > 0
    assert int(samples["edge_ssl_session_ticket_keys"]) == 1
    assert "edge_ssl_session_ticket_key_rotations_total" in samples


@pytest.mark.edge_only
@pytest.mark.parametrize("version", VERSIONS)
def test_handshakes_go_on_without_ticket_keys(edge, ca, certs, version):
    """If the workers cannot reach the ticket keys (here the zone file is gone before the
    first handshake), handshakes complete without tickets, and the error log says why."""
    e = edge(CONF.replace("worker_processes 2;", "worker_processes 1;") % "ssl_session_cache off;", **certs)
    os.unlink(f"{e.pid_path}.state.ssl.tickets")
    ctx = client_context(ca, version)
    _, reused, session = fetch(e.port, ctx)
    assert not session.has_ticket
    assert fetch(e.port, ctx, session)[1] is False
    assert "cannot map the shared ticket keys" in e.error_log


@pytest.mark.edge_only
@pytest.mark.timeout(90)
def test_sessions_survive_a_binary_upgrade(edge, ca, certs):
    """`edge -s upgrade`: the new master finds the ticket keys and the session cache of
    the old one (the same files, same name and size) and keeps them."""
    from test_reload import run_edge
    from test_upgrade import pid_in, stop_master
    e = edge(CONF % "ssl_session_cache shared:SSL:1m;", **certs)
    by_ticket = client_context(ca, ssl.TLSVersion.TLSv1_3)
    by_id = client_context(ca, ssl.TLSVersion.TLSv1_2)
    by_id.options |= ssl.OP_NO_TICKET
    _, _, ticket_session = fetch(e.port, by_ticket)
    _, _, id_session = fetch(e.port, by_id)
    old = e.pid
    try:
        r = run_edge("-s", "upgrade", "-c", e.conf_path, timeout=60)
        assert r.returncode == 0, r.stderr + "\n" + e.report()
        assert pid_in(e.pid_path) != old
        assert fetch(e.port, by_ticket, ticket_session)[1] is True
        assert fetch(e.port, by_id, id_session)[1] is True
    finally:
        stop_master(pid_in(e.pid_path))
    import glob
    assert glob.glob(f"{e.pid_path}.state.ssl.*") == [], "the last master removes its zones"


@pytest.mark.edge_only
def test_a_reload_keeps_the_ticket_keys_and_takes_the_new_timeout(edge, ca, certs):
    """The rotation period and the grace of retired keys follow ssl_session_timeout (the
    longest of the servers using the shared keys) from the config in force."""
    conf = CONF % "ssl_session_cache off; ssl_session_timeout %s;"
    e = edge(conf % "10m", **certs)
    zone = ticket_zone(e)
    try:
        assert (zone.interval, zone.grace) == (600, 600)
        names = zone.names()
        rewrite_config(e, (conf % "1h").replace("server_name localhost;", "server_name localhost;\n"
                                                  "        ssl_session_timeout 2h;"))
        reload_and_wait(e)
        assert (zone.interval, zone.grace) == (7200, 7200)
        assert zone.names() == names
    finally:
        zone.close()
