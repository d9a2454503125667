"""The release artifacts (issue 16): the .deb installed in a clean Debian 12 root, the
linters on the .deb and the .rpm. Slow (minutes): marked `slow` and `packages`.

What it does, once per session (the expensive parts are session fixtures):
- builds edge_0.1.0, edge_0.2.0 and edge_0.3.0 .debs from this tree with `make deb`
  (EDGE_VERSION stamps each; EDGE_REUSE_INPLACE=1 reuses the extensions scripts/test
  built in place instead of compiling them again);
- makes a minimal Debian 12 root with `mmdebstrap` (bookworm, minbase + python3), and
  runs everything of the package in it with chroot, with the host's /proc and /dev bound
  in and the host's network (so the load and the checks run from here).

What the chroot does not cover: systemd does not run there, so the packages' scripts
take their no-systemd path: the test starts edge with `edge-release start` (what the
scripts fall back to: the `edge` user, detached), and `systemctl enable/start/restart`,
the unit's hardening and `Type=notify` are not exercised. The .rpm is built and linted
but not installed (that needs a RHEL-compatible builder; docs/install.md).

Needs root (mmdebstrap's root mode, chroot, bind mounts): skipped otherwise.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import get
from support.edge import alive
from support.load import Load, check_clean
from support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.packages, pytest.mark.edge_only]

REPO = Path(__file__).resolve().parents[1]
MIRROR = os.environ.get("EDGE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")

if os.geteuid() != 0:
    pytest.skip("the package tests need root (mmdebstrap root mode, chroot, mounts)",
                allow_module_level=True)


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"{missing} missing: ./scripts/test installs them"


def build(kind, version=None, lint=True):
    env = dict(os.environ, EDGE_REUSE_INPLACE="1", EDGE_LINT="1" if lint else "0")
    if version:
        env["EDGE_VERSION"] = version
    r = subprocess.run(["make", "-s", kind], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"make {kind} ({version}) failed:\n{r.stdout}\n{r.stderr[-6000:]}"
    return r


@pytest.fixture(scope="session")
def debs():
    need("nfpm", "lintian", "dpkg-shlibdeps")
    out = {}
    for version in ("0.1.0", "0.2.0", "0.3.0"):
        r = build("deb", version, lint=version == "0.1.0")   # one lintian run is enough
        out[version] = (REPO / "dist" / f"edge_{version}_amd64.deb", r.stderr)
    return out


@pytest.fixture(scope="session")
def mmdebstrap(tmp_path_factory):
    """mmdebstrap started in the background (it mostly waits on the mirror), so that it
    runs while the packages build."""
    need("mmdebstrap")
    root = tmp_path_factory.mktemp("debian12") / "root"
    proc = subprocess.Popen(["mmdebstrap", "--quiet", "--variant=minbase",
                             "--include=python3,ca-certificates,libbrotli1", "bookworm", str(root), MIRROR],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield root, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def debian_root(mmdebstrap):
    """A clean Debian 12 root (minbase + python3), made once per session. mmdebstrap
    leaves it without apt lists, so the .deb's Depends that minbase and python3 do not
    bring (libbrotli1) are included up front; test_deb_depends checks the field."""
    root, proc = mmdebstrap
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return root


class Chroot:
    def __init__(self, root):
        self.root = root
        self.mounts = []
        for sub in ("proc", "dev"):
            target = root / sub
            subprocess.run(["mount", "--bind", f"/{sub}", str(target)], check=True)
            self.mounts.append(target)

    def run(self, script, check=True, timeout=300):
        r = subprocess.run(["chroot", str(self.root), "sh", "-c", script],
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                                "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"},
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"{script}\n{r.stdout}\n{r.stderr}"
        return r

    def edge(self, args, check=True):
        """An edge command in the root, as the service user (as edge-release runs them)."""
        return self.run(f"runuser -u edge -- edge {args}", check=check)

    def path(self, p):
        return self.root / p.lstrip("/")

    def master(self, name="edge.pid"):
        try:
            return int(self.path(f"/run/edge/{name}").read_text())
        except (OSError, ValueError):
            return None

    def processes(self):
        """Processes whose root is this chroot (edge's, started by this test)."""
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.readlink(f"/proc/{name}/root") == str(self.root):
                        found.append(int(name))
                except OSError:
                    pass
        return found

    def close(self):
        for pid in filter(None, (self.master(), self.master("edge.pid.oldbin"))):
            try:
                os.kill(pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def chroot(debian_root):
    c = Chroot(debian_root)
    yield c
    c.close()


def wrk(port):
    """wrk, one connection per request (Connection: close): with keep-alive, wrk counts
    the idle keep-alive close race (a graceful stop closing an idle connection as the
    client reuses it, retried by real clients; support/load.py) as a read error, and
    this is to count requests that fail. Runs until SIGINT, then prints its totals."""
    return subprocess.Popen(["wrk", "-t2", "-c16", "-d300s", "-H", "Connection: close",
                             f"http://127.0.0.1:{port}/"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_totals(proc):
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    return int(m.group(1)), out


def test_deb_install_upgrade_under_load_refused_upgrade_remove(mmdebstrap, debs, chroot):
    c = chroot
    for version, (deb, _) in debs.items():
        shutil.copy(deb, c.path(f"/tmp/{deb.name}"))

    # -- install 0.1.0 -------------------------------------------------------------------
    r = c.run("apt-get install -y -q /tmp/edge_0.1.0_amd64.deb")
    assert "/opt/edge/current: none -> releases/0.1.0" in r.stderr + r.stdout
    assert os.readlink(c.path("/opt/edge/current")) == "releases/0.1.0"
    assert os.readlink(c.path("/usr/bin/edge")) == "/opt/edge/current/bin/edge"
    release = c.path("/opt/edge/releases/0.1.0")
    # a venv of the target's system python3, byte-compiled at build time
    assert os.readlink(release / "bin/python3") == "/usr/bin/python3"
    assert "home = /usr/bin" in (release / "pyvenv.cfg").read_text()
    assert list((release / "lib/python3.11/site-packages/edge/__pycache__").glob("cli.cpython-311.pyc"))
    assert "edge==0.1.0" in (release / "requirements.txt").read_text()
    assert c.path("/etc/edge/edge.conf").exists()
    assert c.run("getent passwd edge").stdout.startswith("edge:")
    assert c.run("stat -c %U /var/log/edge").stdout.strip() == "edge"

    # -- start it as the scripts do without systemd; serve on a free port -----------------
    port = free_port()
    conf = c.path("/etc/edge/edge.conf")
    conf.write_text(conf.read_text().replace("listen 8080 default_server;",
                                             f"listen 127.0.0.1:{port} default_server;")
                    .replace("worker_processes auto;", "worker_processes 2;"))
    c.run("/opt/edge/current/share/edge/edge-release start")
    first = c.master()
    assert first and alive(first)
    assert "version 0.1.0" in c.edge("status").stdout
    assert get(port, "/").status == 200

    # Older releases left by earlier upgrades: after the next one, the newest 3 stay
    # (by version: 0.0.10 is newer than 0.0.9).
    for old in ("0.0.9", "0.0.10"):
        c.path(f"/opt/edge/releases/{old}/bin").mkdir(parents=True)

    # -- 0.2.0 under load -------------------------------------------------------------------
    load = wrk(port)
    try:
        with Load(port, check=lambda body: body.startswith(b"edge is running")) as ka:
            assert ka.wait_ok(50), ka.stats.summary()
            r = c.run("apt-get install -y -q /tmp/edge_0.2.0_amd64.deb", check=False)
            assert ka.wait_ok(50), ka.stats.summary()
    finally:
        requests, report = wrk_totals(load)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "0.1.0 -> 0.2.0" in out and "upgrade: done" in out, out
    assert requests > 100, report
    assert "Socket errors" not in report and "Non-2xx" not in report, report
    check_clean(ka.stats)
    second = c.master()
    assert second != first and not alive(first)
    assert "version 0.2.0" in c.edge("status").stdout
    assert os.readlink(c.path("/opt/edge/current")) == "releases/0.2.0"
    assert c.path("/opt/edge/releases/0.1.0/bin/edge").exists(), "the old release is kept"
    assert sorted(os.listdir(c.path("/opt/edge/releases"))) == ["0.0.10", "0.1.0", "0.2.0"]

    # -- 0.3.0 whose config test fails: refused, nothing changes ----------------------------
    good = conf.read_text()
    conf.write_text("no_such_directive on;\n" + good)
    r = c.run("apt-get install -y -q /tmp/edge_0.3.0_amd64.deb", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "configuration test of release 0.3.0 failed" in out, out
    assert 'unknown directive "no_such_directive"' in out, out
    assert os.readlink(c.path("/opt/edge/current")) == "releases/0.2.0"
    assert not c.path("/opt/edge/releases/0.3.0").exists()
    assert c.master() == second and alive(second)
    assert "version 0.2.0" in c.edge("status").stdout
    assert get(port, "/").status == 200
    conf.write_text(good)

    # -- remove keeps /etc/edge; purge removes it -------------------------------------------
    c.run("apt-get remove -y -q edge")
    assert not alive(second), "remove stops edge"
    assert c.path("/etc/edge/edge.conf").read_text() == good
    assert not c.path("/opt/edge").exists() and not os.path.lexists(c.path("/usr/bin/edge"))
    c.run("apt-get purge -y -q edge")
    assert not c.path("/etc/edge").exists()


def test_deb_lintian_reports_no_errors(debs):
    deb, build_log = debs["0.1.0"]
    assert "lintian: no errors" in build_log
    r = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and not re.search(r"^E: ", r.stdout, re.M), r.stdout


def test_deb_depends(debs):
    deb, _ = debs["0.1.0"]
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                            text=True, check=True).stdout
    for dep in ("python3 (>= 3.11)", "python3 (<< 3.12)", "libssl3", "libc6", "zlib1g",
                "libbrotli1"):
        assert dep in fields, fields


def test_rpm_rpmlint_reports_no_errors():
    need("nfpm", "rpmlint")
    r = build("rpm")
    assert "rpmlint: no errors" in r.stderr, r.stderr[-4000:]
    assert re.search(r"\b0 errors\b", r.stderr), r.stderr[-4000:]
    rpm = REPO / "dist" / "edge-0.1.0-1.x86_64.rpm"
    info = subprocess.run(["rpm", "-qp", "--requires", str(rpm)], capture_output=True,
                          text=True, check=True).stdout
    assert "python3.11" in info and "openssl-libs" in info, info
    assert "libz.so.1()(64bit)" in info and "libbrotlienc.so.1()(64bit)" in info, info


@pytest.fixture(scope="session")
def tarball():
    build("tarball")
    return REPO / "dist" / "edge-0.1.0-venv-linux-x86_64.tar.gz"


def test_wheel_is_manylinux_and_tarball_is_relocated(tarball, tmp_path):
    need("auditwheel")
    r = build("wheel")
    wheels = list((REPO / "dist").glob("edge-0.1.0-cp311-cp311-manylinux_*_x86_64.whl"))
    assert wheels, r.stderr
    show = subprocess.run(["auditwheel", "show", str(wheels[0])], capture_output=True,
                          text=True, timeout=120)
    assert "manylinux_" in show.stdout, show.stdout
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(tmp_path)], check=True)
    release = tmp_path / "0.1.0"
    shebang = (release / "bin/edge").read_text().splitlines()[0]
    assert shebang == "#!/opt/edge/releases/0.1.0/bin/python", shebang
    assert (release / "share/edge/edge-release").exists()
    # no path of the build machine left in it
    leftover = subprocess.run(["grep", "-rlI", str(REPO), str(release)], capture_output=True, text=True)
    assert leftover.stdout == "", leftover.stdout


def test_venv_tarball_air_gapped_install(tarball, debian_root, chroot):
    """docs/install.md's air-gapped procedure, as written there, in the Debian root
    (after the package test purged edge, or fresh): nothing downloaded in the root."""
    c = chroot
    shutil.copy(tarball, c.path(f"/tmp/{tarball.name}"))
    doc = (REPO / "docs" / "install.md").read_text()
    script = doc.split("### Air-gapped machines", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    assert "edge-release activate" in script
    # systemd does not run in the root: edge-release starts edge instead
    script = script.replace("systemctl enable --now edge", "/opt/edge/current/share/edge/edge-release start")
    port = free_port()
    script = ("cd /tmp\nset -e\n" + script.replace(
        "[ -e /etc/edge/edge.conf ] || cp /opt/edge/releases/$V/share/edge/edge.conf /etc/edge/",
        "[ -e /etc/edge/edge.conf ] || cp /opt/edge/releases/$V/share/edge/edge.conf /etc/edge/\n"
        f"sed -i 's/listen 8080 default_server;/listen 127.0.0.1:{port} default_server;/' /etc/edge/edge.conf")
        .replace("V=0.2.0", "V=0.1.0").replace("/lib/systemd/system/", "/tmp/"))
    c.run(script)
    assert os.readlink(c.path("/opt/edge/current")) == "releases/0.1.0"
    assert os.readlink(c.path("/usr/bin/edge")) == "/opt/edge/current/bin/edge"
    assert "version 0.1.0" in c.edge("status").stdout
    assert get(port, "/").status == 200
    c.run("/opt/edge/current/share/edge/edge-release stop")
    assert c.edge("status", check=False).returncode == 3
    c.run("rm -rf /opt/edge /usr/bin/edge /etc/edge")
