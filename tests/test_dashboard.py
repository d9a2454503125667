"""The dashboard (issue 13, item 8) in a real headless browser: Debian's chromium driven
by chromedriver through selenium, against a running edge with real upstreams.

The page is loaded from the admin listener, asks for the admin token, and must then show
the routes and peers of the running config, move its request counter while a bounded
load loop runs, show latency, limiter rejections and the node's state, and log no
console error (read from the browser's log). Its drain button must drain a peer
(PUT /upstreams/NAME/peers/ADDR {"drain": true}, then traffic avoids it) and its restore
button bring it back. A screenshot of each run is saved under the test's tmp dir.

Chromium runs with a fresh profile and the flags that keep it off the network (the
test machine has none: without them it tries to reach Google's services)."""

import json
import shutil
import threading
import time

import pytest

from support import Upstream, get  # noqa: F401 (the fixtures' servers)
from test_admin_api import AUTH, TOKEN
from test_control import admin, try_status, wait_for

pytestmark = pytest.mark.edge_only      # edge's own admin listener

CONF = """
worker_processes 2;
http {
    admin_listen 127.0.0.1:@PORT2@;
    admin_token_file @TOKENFILE@;
    limit_req_zone $remote_addr zone=slow:1m rate=1r/s;
    include conf.d/_admin/*.conf;
    server {
        listen 127.0.0.1:@PORT@;
        server_name dash.test;
        location /api/ { route_name api; proxy_pass http://pool; }
        location /limited/ { route_name limited; limit_req zone=slow; return 200 "ok"; }
        location /missing/ { return 404; }
        location / { return 200 "home"; }
    }
}
"""

# in the admin API's managed files, so that its writes (the drain button) may change it
POOL = "upstream pool {{\n    server {a};\n    server {b};\n}}\n"

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1100"]


def _tool(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(scripts/test installs it)")
    from selenium.webdriver.chrome.service import Service
    chromium = _tool("chromium", "chromium-browser")
    driver_path = _tool("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test "
                    "installs them)")
    # selenium's own driver manager must neither download anything nor report usage
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def start(edge, tmp_path, ups):
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    e = edge.create(CONF, TOKENFILE=str(token_file))
    managed = e.conf_path.parent / "conf.d" / "_admin"
    managed.mkdir(parents=True)
    (managed / "upstream.pool.conf").write_text(POOL.format(a=ups[0].addr, b=ups[1].addr))
    e.start()
    e.admin_port = e.ports["PORT2"]
    e.ups = ups
    wait_for(lambda: (lambda s: s is not None and s["ready"])(try_status(e.admin_port, AUTH)),
             10, "the admin listener", e)
    return e


def api(e, path):
    code, _, body = admin(e.admin_port, path, headers=AUTH)
    assert code == 200, (path, code, body)
    return json.loads(body)


class Load:
    """A bounded load loop in a thread: GETs over the routes until stopped (or a cap)."""

    TARGETS = ("/api/a", "/limited/x", "/missing/y", "/")
    CAP = 20000

    def __init__(self, port):
        self.port = port
        self.stop_event = threading.Event()
        self.statuses = {}
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for i in range(self.CAP):
            if self.stop_event.is_set():
                return
            target = self.TARGETS[i % len(self.TARGETS)]
            try:
                status = get(self.port, target, host="dash.test", timeout=5).status
            except OSError as err:
                self.errors.append(f"{target}: {err!r}")
                status = None
            self.statuses.setdefault(target, []).append(status)
            time.sleep(0.002)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(15)
        assert not self.thread.is_alive()


def open_dashboard(driver, e):
    """Load the page, give it the token, and wait for its first full refresh."""
    from selenium.webdriver.common.by import By
    driver.get(f"http://127.0.0.1:{e.admin_port}/")
    wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), 10, "the token form", e)
    assert not driver.find_element(By.ID, "main").is_displayed()
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "connect").click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#peers tr[data-peer]")
             and driver.find_elements(By.CSS_SELECTOR, "#route-charts [data-route]"),
             15, "the page's first refresh", e)
    # the token is kept for the session only, and the form is gone
    assert driver.execute_script("return sessionStorage.getItem('edge-admin-token')") == TOKEN
    assert not driver.find_element(By.ID, "login").is_displayed()


def console_errors(driver):
    return [entry for entry in driver.get_log("browser")
            if entry["level"] in ("SEVERE", "ERROR") or "Content Security Policy" in entry["message"]]


def screenshot(driver, tmp_path, name):
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "the screenshot was not written"
    assert path.stat().st_size > 1000
    print(f"dashboard screenshot: {path}")
    return path


def redrawn(read, tries=20):
    """Run `read` (a lookup and a read of page elements) again when the page redrew those
    elements in between (it replaces its tables and charts every second). An element
    that is still missing after that raises NoSuchElementException."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    for _ in range(tries - 1):
        try:
            return read()
        except (NoSuchElementException, StaleElementReferenceException):
            time.sleep(0.05)
    return read()


def once_shown(read):
    """For wait_for: `read`'s value, or False while the elements are not on the page."""
    from selenium.common.exceptions import NoSuchElementException
    try:
        return redrawn(read)
    except NoSuchElementException:
        return False


def text_of(driver, css):
    from selenium.webdriver.common.by import By
    return redrawn(lambda: [el.text for el in driver.find_elements(By.CSS_SELECTOR, css)])


# --------------------------------------------------------------------------- the page


def test_the_page_is_served_without_the_token_with_a_strict_content_security_policy(edge, tmp_path, upstream_factory):
    e = start(edge, tmp_path, (upstream_factory("one"), upstream_factory("two")))
    code, hdrs, body = admin(e.admin_port, "/")
    assert code == 200 and hdrs["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert '<meta name="edge-token" content="required">' in page
    csp = hdrs["content-security-policy"]
    for rule in ("default-src 'none'", "connect-src 'self'", "script-src 'sha256-",
                 "style-src 'sha256-", "frame-ancestors 'none'"):
        assert rule in csp, (rule, csp)
    # nothing on the page may come from elsewhere
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "src=" not in page
    # only the page: everything else still needs the token
    for path in ("/stats", "/status", "/index.html", "/dashboard.html"):
        assert admin(e.admin_port, path)[0] == 401, path
    assert admin(e.admin_port, "/", "POST")[0] == 401
    code, hdrs, body = admin(e.admin_port, "/", "HEAD")
    assert code == 200 and body == b""


def test_stats_counts_requests_by_class_and_estimates_percentiles(edge, tmp_path, upstream_factory):
    e = start(edge, tmp_path, (upstream_factory("one"), upstream_factory("two")))
    for target, n in (("/api/a", 6), ("/missing/y", 3), ("/", 2)):
        for _ in range(n):
            get(e.port, target, host="dash.test")
    want = {"api": {"2xx": 6}, "/missing/": {"4xx": 3}, "/": {"2xx": 2}}

    def counted():
        stats = api(e, "/stats")
        got = {r["route"]: {c: n for c, n in r["classes"].items() if n} for r in stats["routes"]}
        return stats if all(got.get(k) == v for k, v in want.items()) else None
    stats = wait_for(counted, 10, "the requests in /stats", e)
    assert stats["generation"] == 1 and stats["buckets"] == sorted(stats["buckets"])
    api_route = next(r for r in stats["routes"] if r["route"] == "api")
    assert api_route["server"] == "dash.test" and api_route["requests"] == 6
    assert api_route["codes"] == {"200": 6}
    latency = api_route["latency"]
    assert latency["count"] == 6 and latency["mean"] > 0
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= stats["buckets"][-1]
    assert len(api_route["duration_buckets"]) == len(stats["buckets"]) + 1
    assert [z["zone"] for z in stats["limits"]] == ["slow"]
    assert [u["upstream"] for u in stats["upstreams"]] == ["pool"]
    assert stats["upstreams"][0]["latency"]["count"] == 6


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile():
    from edge.control.dashboard import quantile
    bounds = [0.01, 0.1, 1.0]
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert quantile(0.5, bounds, [10, 10, 10, 10]) == pytest.approx(0.005)
    assert quantile(0.5, bounds, [0, 10, 10, 10]) == pytest.approx(0.055)
    assert quantile(0.99, bounds, [0, 0, 0, 4]) == 1.0          # in +Inf: the last bound
    assert quantile(0.75, bounds, [2, 2, 4, 4]) == pytest.approx(0.55)


def test_the_dashboard_in_a_headless_browser_shows_the_running_node(edge, tmp_path, upstream_factory, browser):
    from selenium.webdriver.common.by import By
    e = start(edge, tmp_path, (upstream_factory("one"), upstream_factory("two")))
    open_dashboard(browser, e)

    # the routes and the peers of the running config
    routes = {r["route"] for r in api(e, "/routes")["routes"]}
    assert routes == {"api", "limited", "/missing/", "/"}
    charts = {el.get_attribute("data-route")
              for el in browser.find_elements(By.CSS_SELECTOR, "#route-charts [data-route]")}
    assert charts == routes
    peers = {(u["name"], p["peer"]) for u in api(e, "/upstreams")["upstreams"] for p in u["peers"]}
    assert peers == {("pool", up.addr) for up in e.ups}
    shown = {(el.get_attribute("data-upstream"), el.get_attribute("data-peer"))
             for el in browser.find_elements(By.CSS_SELECTOR, "#peers tr[data-peer]")}
    assert shown == peers
    assert set(text_of(browser, "#peers button.drain")) == {"drain"}

    # the node: generation, readiness, workers
    assert browser.find_element(By.ID, "generation").text == "1"
    assert browser.find_element(By.ID, "readiness").text == "ready"
    assert browser.find_element(By.ID, "draining").text == ""
    pids = {str(pid) for pid in e.wait_workers(2)}
    wait_for(lambda: {row.split()[1] for row in text_of(browser, "#workers tr")} == pids,
             10, "the workers' pids on the page", e)

    # the counter moves while traffic runs
    def total():
        return int(browser.find_element(By.ID, "total-requests").text)
    before = total()
    with Load(e.port) as load:
        first = wait_for(lambda: (lambda n: n if n > before else None)(total()), 15,
                         "the request counter to move", e)
        wait_for(lambda: total() > first, 15, "the request counter to move again", e)
        # rates per class on the route charts, latency, and the limiter's rejections
        wait_for(lambda: any(t != "2xx 0.00/s" for t in
                             text_of(browser, '[data-route="api"] [data-class="2xx"]')),
                 10, "a 2xx rate on the api route", e)
        wait_for(lambda: any(t != "4xx 0.00/s" for t in
                             text_of(browser, '[data-route="/missing/"] [data-class="4xx"]')),
                 10, "a 4xx rate on the /missing/ route", e)
        assert browser.find_elements(By.CSS_SELECTOR, '[data-route="api"] svg polyline')
        wait_for(lambda: once_shown(lambda: browser.find_element(By.ID, "limits-panel").is_displayed()
                 and int(browser.find_element(By.CSS_SELECTOR, '#limits tr[data-zone="slow"] '
                                                               'td:nth-child(4)').text) > 0),
                 10, "the limiter's rejections", e)
        cells = redrawn(lambda: [td.text for td in browser.find_element(
            By.CSS_SELECTOR, '#latency tr[data-route="api"]').find_elements(By.TAG_NAME, "td")])
        assert cells[0] == "api" and cells[4] != "-" and float(cells[4]) > 0, cells
        screenshot(browser, tmp_path, "dashboard.png")
    assert not load.errors, load.errors[:5]
    assert set(load.statuses["/api/a"]) == {200}
    assert set(load.statuses["/missing/y"]) == {404}
    assert total() <= sum(len(v) for v in load.statuses.values()) + 16

    # draining the node shows in the header
    assert admin(e.admin_port, "/drain", "POST", AUTH)[0] == 200
    wait_for(lambda: browser.find_element(By.ID, "draining").text == "draining", 10,
             "the draining flag on the page", e)
    assert browser.find_element(By.ID, "readiness").text.startswith("not ready")
    assert admin(e.admin_port, "/undrain", "POST", AUTH)[0] == 200
    wait_for(lambda: browser.find_element(By.ID, "readiness").text == "ready", 10, "ready", e)

    errors = console_errors(browser)
    assert not errors, errors


def test_a_wrong_token_brings_the_form_back(edge, tmp_path, upstream_factory, browser):
    from selenium.webdriver.common.by import By
    e = start(edge, tmp_path, (upstream_factory("one"), upstream_factory("two")))
    browser.get(f"http://127.0.0.1:{e.admin_port}/")
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(), 10, "the token form", e)
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "connect").click()
    wait_for(lambda: "refused" in browser.find_element(By.ID, "login-error").text, 10,
             "the refusal", e)
    assert browser.find_element(By.ID, "login").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('edge-admin-token')") is None
    # the only console errors are the refused calls themselves
    errors = console_errors(browser)
    assert errors and all("401" in entry["message"] for entry in errors), errors


def test_the_drain_button_drains_a_peer_and_restore_brings_it_back(edge, tmp_path, upstream_factory, browser):
    from selenium.webdriver.common.by import By
    one, two = upstream_factory("one"), upstream_factory("two")
    e = start(edge, tmp_path, (one, two))
    open_dashboard(browser, e)

    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def button(peer):
        return browser.find_element(By.CSS_SELECTOR, f'#peers tr[data-peer="{peer}"] button.drain')

    # the page redraws the peers table every second: an element found just before a redraw
    # is gone when it is read or clicked, so both are retried on a fresh lookup
    def label(peer):
        try:
            return button(peer).text
        except (NoSuchElementException, StaleElementReferenceException):
            return None

    def press(peer):
        try:
            button(peer).click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    def spread(n=20):
        """n requests to the pool: how many each upstream received."""
        a, b = len(one.requests), len(two.requests)
        for _ in range(n):
            assert get(e.port, "/api/x", host="dash.test").status == 200
        return len(one.requests) - a, len(two.requests) - b

    got = spread()
    assert got[0] > 0 and got[1] > 0, got           # round robin over both
    wait_for(lambda: label(one.addr) == "drain", 5, "the drain button", e)
    wait_for(lambda: press(one.addr), 5, "a click on the drain button", e)
    wait_for(lambda: label(one.addr) == "restore", 15, "the peer shown as drained", e)
    peer = next(p for u in api(e, "/upstreams")["upstreams"] for p in u["peers"]
                if p["peer"] == one.addr)
    # out of rotation (a drain may be written to the file as `down`)
    assert peer.get("drain") is True or peer["down"] or peer["state"] == "draining", peer
    assert spread() == (0, 20)
    screenshot(browser, tmp_path, "dashboard-drained.png")
    wait_for(lambda: press(one.addr), 5, "a click on the restore button", e)
    wait_for(lambda: label(one.addr) == "drain", 15, "the peer shown as restored", e)
    got = spread()
    assert got[0] > 0 and got[1] > 0, got
    errors = console_errors(browser)
    assert not errors, errors
