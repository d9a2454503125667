"""`edge logs query` and `edge logs tail` over generated JSON access logs.

Every test runs the real command (`python -m edge logs ...`) in a subprocess. The logs
are written here with known content: a current file, a rotated `.1`, a gzipped `.2.gz`,
malformed lines; the answers are computed here independently of DuckDB. The tail tests
start the follower, append, rotate and truncate the file, and read what it prints
(every read has a deadline).
"""

import csv
import gzip
import io
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.edge_only  # edge's own command line

ROUTES = ["/v1/", "/v2/", "= /health"]
STATUSES = [200, 200, 200, 404, 502]
START = datetime(2026, 12, 1, 17, 0, 0, tzinfo=timezone.utc)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_logs(*args, cwd=None, timeout=60):
    """Run `python -m edge logs ARGS` to completion; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "edge", "logs", *map(str, args)],
                          cwd=cwd or REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def record(i, route="/v1/", status=200, request_time=0.003, bytes_sent=300, **extra):
    """One record of the built-in json format (the fields of the issue 7 spec)."""
    when = START + timedelta(seconds=i)
    upstream = status != 404
    r = {
        "time": when.isoformat(), "msec": round(when.timestamp(), 3),
        "request_id": f"{i:032x}", "remote_addr": "127.0.0.1", "remote_user": "",
        "host": "api.example.com", "server_name": "api.example.com", "route": route,
        "request_method": "GET", "request_uri": f"/x/{i}?a=1", "uri": f"/x/{i}",
        "args": "a=1", "server_protocol": "HTTP/1.1", "status": status,
        "request_length": 80, "bytes_sent": bytes_sent,
        "body_bytes_sent": max(bytes_sent - 150, 0), "request_time": request_time,
        "upstream_addr": "127.0.0.1:8081" if upstream else "",
        "upstream_status": str(status) if upstream else "",
        "upstream_connect_time": "0.001" if upstream else "",
        "upstream_header_time": "0.002" if upstream else "",
        "upstream_response_time": "0.003" if upstream else "",
        "http_referer": "", "http_user_agent": "curl/8.0", "http_x_forwarded_for": "",
        "connection": i, "connection_requests": 1, "pid": 4242,
    }
    r.update(extra)
    return r


def line(r):
    return json.dumps(r, separators=(",", ":")) + "\n"


def quantile_cont(values, q):
    """DuckDB's quantile_cont: linear interpolation between the closest ranks."""
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


class Logs:
    """120 known records over access.log.2.gz (oldest), access.log.1 and access.log,
    plus two malformed lines and one record with odd values (empty status, a
    request_time that is not a number)."""

    def __init__(self, directory, name="access.log"):
        rng = random.Random(7)
        self.records = [record(i, route=rng.choice(ROUTES), status=rng.choice(STATUSES),
                               request_time=round(rng.uniform(0.001, 2.0), 3),
                               bytes_sent=rng.randint(100, 5000))
                        for i in range(120)]
        self.path = Path(directory) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(f"{self.path}.2.gz", "wt") as f:
            f.writelines(map(line, self.records[:40]))
        with open(f"{self.path}.1", "w") as f:
            f.writelines(map(line, self.records[40:80]))
            f.write(line({"route": "/odd/", "status": "", "request_time": "n/a",
                          "bytes_sent": 10}))
        with open(self.path, "w") as f:
            f.writelines(map(line, self.records[80:100]))
            f.write("this is not json\n")
            f.writelines(map(line, self.records[100:]))
            f.write('{"route": "/v1/", "status": 200, "request_ti\n')  # cut short


@pytest.fixture
def logs(tmp_path):
    return Logs(tmp_path / "logs")


def query_csv(sql, *args):
    r = run_logs("query", sql, "--format", "csv", *args)
    assert r.returncode == 0, r.stderr
    return list(csv.reader(io.StringIO(r.stdout))), r


# --------------------------------------------------------------------------- query


def test_counts_per_route_and_status_span_current_rotated_and_gzipped_files(logs):
    rows, r = query_csv("SELECT route, status, count(*) AS n FROM logs "
                        "WHERE route <> '/odd/' GROUP BY ALL ORDER BY ALL",
                        "--logs", f"{logs.path}*")
    expected = Counter((x["route"], x["status"]) for x in logs.records)
    assert rows[0] == ["route", "status", "n"]
    assert {(route, int(status)): int(n) for route, status, n in rows[1:]} == expected
    assert len(rows) - 1 == len(expected)
    # The two malformed lines are skipped, and said to be.
    assert "edge: [warn] skipped 2 malformed lines" in r.stderr


def test_every_file_is_read_and_odd_values_load_as_null(logs):
    rows, _ = query_csv("SELECT file, count(*), count(status), count(request_time) "
                        "FROM logs GROUP BY file ORDER BY file", "--logs", f"{logs.path}*")
    assert rows[1:] == [
        [str(logs.path), "40", "40", "40"],
        [f"{logs.path}.1", "41", "40", "40"],      # the odd record: NULL status and time
        [f"{logs.path}.2.gz", "40", "40", "40"],
    ]
    rows, _ = query_csv("SELECT route, status, request_time, bytes_sent FROM logs "
                        "WHERE route = '/odd/'", "--logs", f"{logs.path}*")
    assert rows[1:] == [["/odd/", "", "", "10"]]


def test_p99_of_request_time_per_route(logs):
    rows, _ = query_csv("SELECT route, quantile_cont(request_time, 0.99) AS p99 FROM logs "
                        "WHERE route <> '/odd/' GROUP BY route ORDER BY route",
                        "--logs", f"{logs.path}*")
    times = defaultdict(list)
    for x in logs.records:
        times[x["route"]].append(x["request_time"])
    assert [row[0] for row in rows[1:]] == sorted(times)
    for route, p99 in rows[1:]:
        assert float(p99) == pytest.approx(quantile_cont(times[route], 0.99), rel=1e-12)


def test_the_example_from_the_issue(logs):
    r = run_logs("query", "SELECT route, status, count(*), quantile_cont(request_time, 0.99) "
                 "FROM logs GROUP BY ALL", "--logs", f"{logs.path}*")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].split() == ["route", "status", "count_star()",
                              "quantile_cont(request_time,", "0.99)"]
    groups = len(Counter((x["route"], x["status"]) for x in logs.records)) + 1  # + /odd/
    assert out[-1] == f"({groups} rows)"
    assert len(out) == groups + 3  # header, rule, rows, count


def test_sums_of_bytes_and_types_of_columns(logs):
    rows, _ = query_csv("SELECT status, sum(bytes_sent) AS bytes, sum(body_bytes_sent) AS body "
                        "FROM logs WHERE status IS NOT NULL GROUP BY status ORDER BY status",
                        "--logs", f"{logs.path}*")
    sent, body = Counter(), Counter()
    for x in logs.records:
        sent[x["status"]] += x["bytes_sent"]
        body[x["status"]] += x["body_bytes_sent"]
    assert rows[1:] == [[str(s), str(sent[s]), str(body[s])] for s in sorted(sent)]

    rows, _ = query_csv("SELECT typeof(time), typeof(status), typeof(request_time), "
                        "typeof(bytes_sent), typeof(upstream_status), min(time), max(time) "
                        "FROM logs GROUP BY ALL", "--logs", f"{logs.path}*")
    assert rows[1][:5] == ["TIMESTAMP WITH TIME ZONE", "INTEGER", "DOUBLE", "BIGINT",
                           "VARCHAR"]
    assert rows[1][5:] == [START.isoformat(), (START + timedelta(seconds=119)).isoformat()]


def test_table_format_is_aligned_with_a_row_count(logs):
    r = run_logs("query", "SELECT status, count(*) AS n, 'x' || status AS label FROM logs "
                 "WHERE status IS NOT NULL GROUP BY status ORDER BY status",
                 "--logs", f"{logs.path}*")
    assert r.returncode == 0, r.stderr
    n = Counter(x["status"] for x in logs.records)
    assert r.stdout == (
        "status   n  label\n"
        "------  --  -----\n"
        f"   200  {n[200]:2}  x200\n"
        f"   404  {n[404]:2}  x404\n"
        f"   502  {n[502]:2}  x502\n"
        "(3 rows)\n")
    r = run_logs("query", "SELECT NULL AS nothing, 1 AS one", "--logs", logs.path)
    assert r.stdout == "nothing  one\n-------  ---\nNULL       1\n(1 row)\n"


def test_json_format_is_an_array_of_objects(logs):
    r = run_logs("query", "SELECT route, count(*) AS n, max(request_time) AS slowest, "
                 "min(time) AS first FROM logs WHERE route <> '/odd/' "
                 "GROUP BY route ORDER BY route", "--format", "json",
                 "--logs", f"{logs.path}*")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    expected = []
    for route in sorted(ROUTES):
        mine = [x for x in logs.records if x["route"] == route]
        expected.append({"route": route, "n": len(mine),
                         "slowest": max(x["request_time"] for x in mine),
                         "first": min(x["time"] for x in mine)})
    assert got == expected
    empty = run_logs("query", "SELECT * FROM logs WHERE false", "--format", "json",
                     "--logs", logs.path)
    assert json.loads(empty.stdout) == []


def test_logs_globs_are_taken_as_given(logs, tmp_path):
    # The current file alone: 40 records, one malformed line plus the cut one.
    rows, r = query_csv("SELECT count(*) FROM logs", "--logs", logs.path)
    assert rows[1] == ["40"]
    # Two globs, in one --logs or in two.
    for args in (["--logs", logs.path, f"{logs.path}.2.gz"],
                 ["--logs", logs.path, "--logs", f"{logs.path}.2.gz"]):
        rows, _ = query_csv("SELECT count(*) FROM logs", *args)
        assert rows[1] == ["80"]
    # A recursive glob reaches files in subdirectories.
    other = Logs(tmp_path / "logs" / "node2")
    rows, _ = query_csv("SELECT count(*) FROM logs", "--logs", f"{tmp_path}/**/access.log")
    assert rows[1] == ["80"]
    assert other.path.exists()


def test_no_file_matched_is_an_error_naming_the_globs(tmp_path):
    r = run_logs("query", "SELECT 1", "--logs", f"{tmp_path}/none*.log", "--logs",
                 f"{tmp_path}/nope.log")
    assert r.returncode == 1
    assert r.stderr == (f"edge: [error] no log files matched {tmp_path}/none*.log, "
                        f"{tmp_path}/nope.log\n")
    assert r.stdout == ""


def test_sql_errors_are_reported_without_a_traceback(logs):
    for sql in ("SELEC 1", "SELECT no_such_column FROM logs", "SELECT * FROM nowhere"):
        r = run_logs("query", sql, "--logs", logs.path)
        assert r.returncode == 1, sql
        assert r.stderr.startswith("edge: [error] "), r.stderr
        assert "Traceback" not in r.stderr
        assert r.stdout == ""
    r = run_logs("query", "--logs", logs.path)
    assert r.returncode == 1
    assert "edge: [error] no SQL given" in r.stderr


CONFIG = """
worker_processes 1;
pid @DIR@/edge.pid;
http {
    log_format custom escape=json '{"route":"$route","status":$status,'
                                  '"request_time":$request_time,"bytes_sent":$bytes_sent}';
    log_format plain '$remote_addr $status';
    access_log @DIR@/logs/access.log json;
    server {
        listen 127.0.0.1:8080;
        access_log @DIR@/logs/custom.log custom buffer=32k flush=1s;
        access_log @DIR@/logs/combined.log;
        access_log @DIR@/logs/plain.log plain;
        access_log syslog:server=127.0.0.1:514,tag=edge json;
        access_log http://127.0.0.1:9/ingest json queue=100;
        access_log redis://127.0.0.1:6379/logs json;
        location /v2/ {
            access_log off;
        }
        location /v3/ {
            access_log @DIR@/logs/v3-$host.log json;
        }
    }
}
"""


def test_default_logs_are_the_configs_json_access_logs(tmp_path):
    logs = Logs(tmp_path / "logs")
    d = tmp_path / "logs"
    # Files that must not be read: other formats, and names that only look rotated.
    (d / "combined.log").write_text(line(record(1, route="/combined/")))
    (d / "plain.log").write_text(line(record(1, route="/plain/")))
    (d / "access.logs").write_text(line(record(1, route="/not-a-sibling/")))
    (d / "custom.log").write_text(line({"route": "/custom/", "status": 201,
                                        "request_time": 0.5, "bytes_sent": 7}))
    (d / "custom.log-20261130").write_text(line({"route": "/custom/", "status": 202,
                                                 "request_time": 0.25, "bytes_sent": 8}))
    (d / "v3-api.example.com.log").write_text(line(record(1, route="/v3/")))
    conf = tmp_path / "edge.conf"
    conf.write_text(CONFIG.replace("@DIR@", str(tmp_path)))

    rows, r = query_csv("SELECT file, route, count(*) FROM logs GROUP BY ALL ORDER BY ALL",
                        "-c", conf)
    files = Counter()
    for file, route, n in rows[1:]:
        files[os.path.basename(file)] += int(n)
    assert files == {"access.log": 40, "access.log.1": 41, "access.log.2.gz": 40,
                     "custom.log": 1, "custom.log-20261130": 1,
                     "v3-api.example.com.log": 1}
    routes = {route for _, route, _ in rows[1:]}
    assert "/combined/" not in routes and "/plain/" not in routes
    assert "/not-a-sibling/" not in routes
    rows, _ = query_csv("SELECT status, request_time, bytes_sent FROM logs "
                        "WHERE route = '/custom/' ORDER BY status", "-c", conf)
    assert rows[1:] == [["201", "0.5", "7"], ["202", "0.25", "8"]]
    assert logs.path.exists()


def test_default_config_is_found_as_the_other_commands_find_it(tmp_path):
    # conf/edge.conf in the working directory, with a path relative to it.
    Logs(tmp_path / "var")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "edge.conf").write_text(
        "http { access_log var/access.log json; }\n")
    r = run_logs("query", "SELECT count(*) AS n FROM logs", "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "n\n121\n"
    # -p moves there first, as for the other commands.
    r = run_logs("query", "SELECT count(*) AS n FROM logs",
                 "--format", "csv", "-p", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "n\n121\n"


def test_config_errors(tmp_path):
    conf = tmp_path / "edge.conf"
    conf.write_text(f"http {{ access_log {tmp_path}/access.log; "
                    f"access_log {tmp_path}/a.log combined; }}\n")
    r = run_logs("query", "SELECT 1", "-c", conf)
    assert r.returncode == 1
    assert r.stderr == (f"edge: [error] no --logs given and {conf} has no access_log in a "
                        "JSON format (json, or a log_format with escape=json)\n")
    r = run_logs("query", "SELECT 1", "-c", tmp_path / "missing.conf")
    assert r.returncode == 1
    assert r.stderr.startswith("edge: [error] no --logs given and the config cannot be read")
    assert "missing.conf" in r.stderr
    # A JSON log named by the config that does not exist yet: no file matched.
    conf.write_text(f"http {{ access_log {tmp_path}/new.log json; }}\n")
    r = run_logs("query", "SELECT 1", "-c", conf)
    assert r.returncode == 1
    assert f"edge: [error] no log files matched {tmp_path}/new.log" in r.stderr


# --------------------------------------------------------------------------- tail


class Tail:
    """A running `edge logs tail`, its stdout read line by line with deadlines."""

    def __init__(self, *args, cwd=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "logs", "tail", *map(str, args)],
            cwd=cwd or REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.lines = queue.Queue()
        self.errors = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.errors.append),
                         daemon=True).start()

    @staticmethod
    def _pump(stream, put):
        for text in stream:
            put(text.rstrip("\n"))

    def take(self, n, timeout=10):
        got = []
        for _ in range(n):
            try:
                got.append(self.lines.get(timeout=timeout))
            except queue.Empty:
                raise AssertionError(f"waited {timeout}s for line {len(got) + 1} of {n}; "
                                     f"got {got}; stderr {self.errors}") from None
        return got

    def wait_stderr(self, needle, timeout=10):
        deadline = time.monotonic() + timeout
        while not any(needle in e for e in self.errors):
            assert time.monotonic() < deadline, f"no {needle!r} on stderr: {self.errors}"
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def tails():
    started = []

    def start(*args, **kw):
        t = Tail(*args, **kw)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop(signal.SIGKILL)


def uri_of(text):
    return text.split()[3]


def append(path, *records):
    with open(path, "a") as f:
        f.writelines(r if isinstance(r, str) else line(r) for r in records)


def test_tail_prints_the_last_n_records_then_follows(tmp_path, tails):
    path = tmp_path / "access.log"
    append(path, *[record(i) for i in range(5)], "garbage\n")
    t = tails("--logs", path, "-n", "3")
    assert [uri_of(x) for x in t.take(3)] == ["/x/2?a=1", "/x/3?a=1", "/x/4?a=1"]
    append(path, record(5, route="= /health", status=502, request_time=1.5),
           "not json either\n", record(6, status=404))
    first, second = t.take(2)
    assert first == ("2026-12-01T17:00:05+00:00 502 GET /x/5?a=1 "
                     'route="= /health" 1.500s 127.0.0.1 up=127.0.0.1:8081')
    assert second == "2026-12-01T17:00:06+00:00 404 GET /x/6?a=1 route=/v1/ 0.003s 127.0.0.1"
    # A line written in two parts is printed once, whole.
    text = line(record(7))
    append(path, text[:50])
    append(path, text[50:])
    assert [uri_of(x) for x in t.take(1)] == ["/x/7?a=1"]
    assert t.stop() == 0
    assert t.lines.empty()


def test_tail_line_format(tmp_path, tails):
    path = tmp_path / "access.log"
    append(path, record(0, route="/v1/", request_time=0.003, request_uri="/v1/x",
                        time="2026-12-01T17:58:04+00:00"))
    t = tails("--logs", path)
    assert t.take(1) == ["2026-12-01T17:58:04+00:00 200 GET /v1/x route=/v1/ 0.003s "
                         "127.0.0.1 up=127.0.0.1:8081"]
    # Several peers tried: nginx's lists, one word each; the upstream's status too.
    append(path, record(2, status=200, upstream_addr="127.0.0.1:8081, 127.0.0.1:8082",
                        upstream_status="502, 200", time="2026-12-01T17:58:05+00:00",
                        request_uri="/v1/y", request_time=1.25))
    assert t.take(1) == ["2026-12-01T17:58:05+00:00 200 GET /v1/y route=/v1/ 1.250s "
                         "127.0.0.1 up=127.0.0.1:8081,127.0.0.1:8082 up_status=502,200"]
    # Client-controlled text cannot reach the terminal as control characters.
    append(path, record(1, request_uri="/\x1b[31mred"))
    assert uri_of(t.take(1)[0]) == "/\\x1b[31mred"


def test_tail_follows_rotation_and_truncation(tmp_path, tails):
    path = tmp_path / "access.log"
    append(path, record(0))
    t = tails("--logs", path)
    assert [uri_of(x) for x in t.take(1)] == ["/x/0?a=1"]

    # logrotate's default: rename, then a new file; the writer keeps writing to the
    # old one until it reopens its logs.
    path.rename(tmp_path / "access.log.1")
    append(path, record(1))
    assert [uri_of(x) for x in t.take(1)] == ["/x/1?a=1"]
    # A late write to the old file, before the writer reopens; some polls later, so
    # the follower has already moved to the new file.
    time.sleep(1.0)
    append(tmp_path / "access.log.1", record(2))
    append(path, record(3))
    assert sorted(uri_of(x) for x in t.take(2)) == ["/x/2?a=1", "/x/3?a=1"]

    # A second rotation, with the file missing for a while.
    path.rename(tmp_path / "access.log.2")
    append(tmp_path / "access.log.2", record(4))
    assert [uri_of(x) for x in t.take(1)] == ["/x/4?a=1"]
    append(path, record(5))
    assert [uri_of(x) for x in t.take(1)] == ["/x/5?a=1"]

    # copytruncate: the same file, emptied, then written from its start.
    with open(path, "r+") as f:
        f.truncate(0)
    append(path, record(6))
    assert [uri_of(x) for x in t.take(1)] == ["/x/6?a=1"]
    assert t.stop(signal.SIGINT) == 0  # Ctrl-C ends it quietly too
    assert not any("Traceback" in e for e in t.errors), t.errors


def test_tail_filters_by_route_and_status_class(tmp_path, tails):
    path = tmp_path / "access.log"
    history = [record(0, route="/v2/", status=503), record(1, route="/v1/", status=502),
               record(2, route="/v2/", status=200), record(3, route="/v2/", status=504),
               record(4, route="/v2/", status=404)]
    append(path, *history)
    t = tails("--logs", path, "--route", "/v2/", "--status", "5xx", "-n", "10")
    assert [uri_of(x) for x in t.take(2)] == ["/x/0?a=1", "/x/3?a=1"]
    # Records that do not match, then one that does: it is the next line printed.
    append(path, record(5, route="/v1/", status=500), record(6, route="/v2/", status=201),
           {"route": "/v2/", "status": "oops"}, record(7, route="/v2/", status=500))
    assert [uri_of(x) for x in t.take(1)] == ["/x/7?a=1"]

    t2 = tails("--logs", path, "--status", "404,5xx", "-n", "4")
    assert [uri_of(x) for x in t2.take(4)] == ["/x/3?a=1", "/x/4?a=1", "/x/5?a=1",
                                               "/x/7?a=1"]
    append(path, record(8, status=200), record(9, route="/v3/", status=404))
    assert [uri_of(x) for x in t2.take(1)] == ["/x/9?a=1"]
    assert t.stop() == 0 and t2.stop() == 0


def test_tail_waits_for_a_file_that_does_not_exist_yet(tmp_path, tails):
    path = tmp_path / "later.log"
    t = tails("--logs", path)
    t.wait_stderr("does not exist yet; waiting for it")
    append(path, record(0))
    assert [uri_of(x) for x in t.take(1)] == ["/x/0?a=1"]


def test_tail_follows_the_configs_json_log(tmp_path, tails):
    (tmp_path / "access.log").write_text(line(record(0)))
    (tmp_path / "combined.log").write_text(line(record(1)))
    conf = tmp_path / "edge.conf"
    conf.write_text(f"http {{ access_log {tmp_path}/access.log json; "
                    f"access_log {tmp_path}/combined.log combined; }}\n")
    t = tails("-c", conf)
    assert [uri_of(x) for x in t.take(1)] == ["/x/0?a=1"]
    append(tmp_path / "combined.log", record(2))
    append(tmp_path / "access.log", record(3))
    assert [uri_of(x) for x in t.take(1)] == ["/x/3?a=1"]


def test_tail_rejects_a_bad_status_filter(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge", "logs", "tail", "--status", "6xx",
                        "--logs", tmp_path / "a.log"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert '"6xx" is not a status code or class' in r.stderr


def test_the_logs_commands_do_not_need_the_compiled_reactor():
    # `edge logs` must work where the extension is not built (a laptop, a log host).
    code = ("import sys; import edge.cli, edge.logs; "
            "print(sorted(m for m in sys.modules if m.startswith('edge._core')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[]\n"
