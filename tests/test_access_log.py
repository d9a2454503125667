"""Access logs: nginx's log_format / access_log, edge's json format, every request logged
however it ended, escaping of hostile input, buffering, reopen, inheritance, request IDs.

Tests that do not carry `edge_only` run unchanged under nginx 1.22
(`EDGE_TEST_IMPL=nginx pytest tests/test_access_log.py`): nginx is the oracle for the
combined format, escaping, inheritance and `if=`.
"""

import json
import os
import re
import signal
import socket
import threading
import time
from datetime import datetime

import pytest

from support import IMPL
from support.client import Conn, get, request

TIME_LOCAL = re.compile(r"^\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}$")


def wait_lines(path, n, timeout=5.0):
    """The file's lines once it has at least n (logs are written as requests end)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def records(path, n, timeout=5.0):
    lines = wait_lines(path, n, timeout)
    return [json.loads(line) for line in lines]


def raw_exchange(port, data, read=True, timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass        # a reset after the response: what was read is the answer
        return out


# ---- the combined format, nginx as the oracle ------------------------------------------------

def test_combined_format_byte_exact(edge, tmp_path):
    log = tmp_path / "access.log"
    e = edge("""
        http {
            server {
                listen 127.0.0.1:@PORT@;
                access_log @LOG@;
                location = /hello { return 200 "hello\\n"; }
                location / { return 404 "nope\\n"; }
            }
        }""", LOG=log)
    r = get(e.port, "/hello?x=1&y", headers=[("Referer", "http://ref.example/a b"),
                                             ("User-Agent", 'agent "quoted" \\ back'),
                                             ("Authorization", "Basic dXNlcjpwYXNz")])
    assert r.status == 200
    r = get(e.port, "/missing", headers=[("User-Agent", "ua/1.0")])
    assert r.status == 404
    lines = wait_lines(log, 2)
    assert len(lines) == 2, lines
    first = lines[0].decode()
    m = re.fullmatch(r'127\.0\.0\.1 - user \[([^\]]+)\] (.*)', first)
    assert m, first
    assert TIME_LOCAL.match(m.group(1)), m.group(1)
    logged = datetime.strptime(m.group(1), "%d/%b/%Y:%H:%M:%S %z").timestamp()
    assert abs(logged - time.time()) < 30
    # nginx's escaping for the default format: " and \ become \x22 and \x5C
    assert m.group(2) == ('"GET /hello?x=1&y HTTP/1.1" 200 6 "http://ref.example/a b" '
                          '"agent \\x22quoted\\x22 \\x5C back"')
    second = lines[1].decode()
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /missing HTTP/1\.1" 404 5 "-" "ua/1\.0"',
                        second), second


def test_log_format_escape_default_and_none(edge, tmp_path):
    log = tmp_path / "a.log"
    raw = tmp_path / "b.log"
    e = edge("""
        http {
            log_format plain '$request_method|$http_x_v|$args|$http_x_missing';
            log_format raw escape=none '$http_x_v';
            server {
                listen 127.0.0.1:@PORT@;
                access_log @LOG@ plain;
                access_log @RAW@ raw;
                location / { return 200 "ok"; }
            }
        }""", LOG=log, RAW=raw)
    get(e.port, "/p", headers=[("X-V", 'a"b\\c\té\xff'.encode("latin-1").decode("latin-1"))])
    line = wait_lines(log, 1)[0]
    # no args: "-" (not found), as nginx; HTAB and bytes >= 0x7f are escaped
    assert line == b'GET|a\\x22b\\x5Cc\\x09\\xE9\\xFF|-|-'
    assert wait_lines(raw, 1)[0] == b'a"b\\c\t\xe9\xff'


def test_inheritance_and_off(edge, tmp_path):
    outer = tmp_path / "outer.log"
    inner = tmp_path / "inner.log"
    e = edge("""
        http {
            server {
                listen 127.0.0.1:@PORT@;
                access_log @OUTER@;
                location /own/ { access_log @INNER@; return 200 "own"; }
                location /quiet/ { access_log off; return 200 "quiet"; }
                location / { return 200 "inherited"; }
            }
        }""", OUTER=outer, INNER=inner)
    for path in ("/own/x", "/quiet/x", "/x"):
        assert get(e.port, path).status == 200
    time.sleep(0.3)
    outer_lines = wait_lines(outer, 1)
    inner_lines = wait_lines(inner, 1)
    # a level with its own access_log does not inherit: /own/ only in inner, /quiet/ nowhere
    assert [l.split(b'"')[1] for l in outer_lines] == [b"GET /x HTTP/1.1"]
    assert [l.split(b'"')[1] for l in inner_lines] == [b"GET /own/x HTTP/1.1"]


def test_if_condition(edge, tmp_path):
    log = tmp_path / "a.log"
    e = edge("""
        http {
            server {
                listen 127.0.0.1:@PORT@;
                access_log @LOG@ combined if=$arg_log;
                location / { return 200 "ok"; }
            }
        }""", LOG=log)
    for target in ("/a?log=1", "/b?log=0", "/c", "/d?log=", "/e?log=yes"):
        assert get(e.port, target).status == 200
    lines = wait_lines(log, 2)
    time.sleep(0.2)
    lines = wait_lines(log, 2)
    assert [l.split(b'"')[1] for l in lines] == [b"GET /a?log=1 HTTP/1.1", b"GET /e?log=yes HTTP/1.1"]


# ---- edge's json format ------------------------------------------------------------------------

@pytest.mark.edge_only
def test_json_format_fields(edge, upstream, tmp_path):
    log = tmp_path / "access.json"
    e = edge("""
        http {
            access_log @LOG@ json;
            upstream api { server @UP@; keepalive 4; }
            server {
                listen 127.0.0.1:@PORT@;
                server_name api.example.com;
                location /v1/ { route_name v1; proxy_pass http://api; }
                location = /health { return 200 "ok\\n"; }
            }
        }""", UP=upstream, LOG=log)
    with Conn(e.port) as c:
        r = c.request("POST", "/v1/items?page=2", host="api.example.com",
                      headers=[("User-Agent", "t/1"), ("Referer", "http://r/")], body=b"0123456789")
        assert r.status == 200
        r2 = c.request("GET", "/health", host="api.example.com")
        assert r2.status == 200
    lines = wait_lines(log, 2)
    recs = [json.loads(line) for line in lines]
    assert len(recs) == 2
    a, b = recs
    worker = e.worker_pids()[0]
    # the /health line byte for byte: only the clock, the ID and the connection vary
    exact = (r'\{"time":"[0-9T:+-]{25}","msec":\d{10}\.\d{3},"request_id":"[0-9a-f]{32}",'
             r'"remote_addr":"127\.0\.0\.1","remote_user":"","host":"api\.example\.com",'
             r'"server_name":"api\.example\.com","route":"= /health","request_method":"GET",'
             r'"request_uri":"/health","uri":"/health","args":"","server_protocol":"HTTP/1\.1",'
             r'"status":200,"request_length":%d,"bytes_sent":%d,"body_bytes_sent":3,'
             r'"request_time":\d+\.\d{3},"upstream_addr":"","upstream_status":"",'
             r'"upstream_connect_time":"","upstream_header_time":"","upstream_response_time":"",'
             r'"http_referer":"","http_user_agent":"","http_x_forwarded_for":"",'
             r'"connection":\d+,"connection_requests":2,"pid":%d\}'
             % (len(b"GET /health HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
                len(r2.raw_head) + len(r2.body), worker))
    assert re.fullmatch(exact.encode(), lines[1]), lines[1]
    assert a["remote_addr"] == "127.0.0.1" and a["remote_user"] == ""
    assert a["host"] == "api.example.com" and a["server_name"] == "api.example.com"
    assert a["route"] == "v1" and b["route"] == "= /health"
    assert a["request_method"] == "POST" and a["request_uri"] == "/v1/items?page=2"
    assert a["uri"] == "/v1/items" and a["args"] == "page=2"
    assert a["server_protocol"] == "HTTP/1.1"
    assert a["status"] == 200 and b["status"] == 200
    assert a["body_bytes_sent"] == len(r.body)
    assert a["bytes_sent"] == len(r.raw_head) + len(r.body)
    assert b["bytes_sent"] == len(r2.raw_head) + len(r2.body) and b["body_bytes_sent"] == 3
    head_len = len(b"POST /v1/items?page=2 HTTP/1.1\r\n")
    assert a["request_length"] > head_len + 10      # the head and the 10-byte body
    assert isinstance(a["request_time"], float) and 0 <= a["request_time"] < 5
    assert a["upstream_addr"] == upstream.addr and a["upstream_status"] == "200"
    for key in ("upstream_connect_time", "upstream_header_time", "upstream_response_time"):
        assert re.fullmatch(r"\d+\.\d{3}", a[key]), (key, a[key])
    assert b["upstream_addr"] == "" and b["upstream_status"] == ""
    assert a["http_user_agent"] == "t/1" and a["http_referer"] == "http://r/"
    assert a["connection"] == b["connection"] and a["connection"] > 0
    assert (a["connection_requests"], b["connection_requests"]) == (1, 2)
    assert a["pid"] == worker and b["pid"] == worker
    assert re.fullmatch(r"[0-9a-f]{32}", a["request_id"]) and a["request_id"] != b["request_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", a["time"])
    assert abs(a["msec"] - time.time()) < 30


@pytest.mark.edge_only
def test_custom_format_with_every_variable(edge, upstream, tmp_path):
    """Every variable the issue names, tab-separated, over a proxied request whose
    response edge has to describe ($sent_http_*, $upstream_*)."""
    log = tmp_path / "all.log"
    names = ["remote_addr", "remote_user", "time_local", "time_iso8601", "msec", "request",
             "request_method", "request_uri", "uri", "args", "arg_page", "status",
             "body_bytes_sent", "bytes_sent", "request_length", "request_time", "upstream_addr",
             "upstream_status", "upstream_connect_time", "upstream_header_time",
             "upstream_response_time", "http_x_custom", "sent_http_content_type",
             "sent_http_x_request_id", "cookie_session", "host", "server_name", "server_port",
             "scheme", "connection", "connection_requests", "pid", "request_id", "route"]
    fmt = "\\t".join("$" + n for n in names)
    e = edge("""
        http {
            log_format every '@FMT@';
            upstream api { server @UP@; }
            server {
                listen 127.0.0.1:@PORT@;
                server_name every.test;
                request_id_header X-Request-Id;
                access_log @LOG@ every;
                location /api/ { proxy_pass http://api/; }
            }
        }""", UP=upstream, FMT=fmt, LOG=log)
    r = get(e.port, "/api/things?page=3&x=1", host="every.test",
            headers=[("X-Custom", "c1"), ("Cookie", "a=1; session=s3cr3t; b=2"),
                     ("Authorization", "Basic Ym9iOmh1bnRlcjI="),
                     ("X-Request-Id", "7f1c-req.42")])
    assert r.status == 200
    line = wait_lines(log, 1)[0].decode()
    values = dict(zip(names, line.split("\t")))
    assert len(line.split("\t")) == len(names), line
    expected = {
        "remote_addr": "127.0.0.1", "remote_user": "bob",
        "request": "GET /api/things?page=3&x=1 HTTP/1.1", "request_method": "GET",
        "request_uri": "/api/things?page=3&x=1", "uri": "/api/things", "args": "page=3&x=1",
        "arg_page": "3", "status": "200", "body_bytes_sent": str(len(r.body)),
        "bytes_sent": str(len(r.raw_head) + len(r.body)), "upstream_addr": upstream.addr,
        "upstream_status": "200", "http_x_custom": "c1",
        "sent_http_content_type": r.header("Content-Type"),
        "sent_http_x_request_id": "7f1c-req.42", "cookie_session": "s3cr3t",
        "host": "every.test", "server_name": "every.test", "server_port": str(e.port),
        "scheme": "http", "connection": values["connection"], "connection_requests": "1",
        "pid": str(e.worker_pids()[0]), "request_id": "7f1c-req.42", "route": "/api/",
    }
    for key, want in expected.items():
        assert values[key] == want, (key, values[key], want)
    assert TIME_LOCAL.match(values["time_local"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", values["time_iso8601"])
    assert re.fullmatch(r"\d{10}\.\d{3}", values["msec"])
    for key in ("request_time", "upstream_connect_time", "upstream_header_time",
                "upstream_response_time"):
        assert re.fullmatch(r"\d+\.\d{3}", values[key]), (key, values[key])
    assert int(values["request_length"]) > len("GET /api/things?page=3&x=1 HTTP/1.1\r\n")
    assert int(values["connection"]) >= 1


@pytest.mark.edge_only
def test_json_escaping_of_hostile_input(edge, tmp_path):
    log = tmp_path / "esc.json"
    e = edge("""
        http {
            log_format esc escape=json '{"evil":"$http_x_evil","request":"$request","status":$status}';
            server {
                listen 127.0.0.1:@PORT@;
                access_log @LOG@ esc;
                location / { return 200 "ok"; }
            }
        }""", LOG=log)
    evil = b'q"uote \\back\tslash \xc3\xa9 bad:\xff\xc3( \xed\xa0\x80 end'
    raw = (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Evil: " + evil + b"\r\nConnection: close\r\n\r\n")
    assert raw_exchange(e.port, raw).startswith(b"HTTP/1.1 200")
    # a request line with control bytes: 400, and its raw line is logged
    assert raw_exchange(e.port, b"GET /\x01\x7f\x1b[31m HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    lines = wait_lines(log, 2)
    assert len(lines) == 2
    first = json.loads(lines[0])          # valid JSON, whatever the bytes were
    # valid UTF-8 stays as it is; invalid bytes become \u00XX (their latin-1 reading)
    assert first["evil"] == 'q"uote \\back\tslash é bad:\u00ff\u00c3( \u00ed\u00a0\u0080 end'
    assert first["status"] == 200 and first["request"] == "GET /x HTTP/1.1"
    second = json.loads(lines[1])
    assert second["status"] == 400
    assert second["request"] == "GET /\x01\x7f\x1b[31m HTTP/1.1"
    assert second["evil"] == ""
    assert b"\\u0001" in lines[1] and b"\\u001b" in lines[1]


# ---- every request gets a record ----------------------------------------------------------------

@pytest.mark.edge_only
@pytest.mark.timeout(60)
def test_every_ending_is_logged(edge, upstream, blackhole, tmp_path):
    """Rejections, upstream failures and client aborts: one record each, with nginx's
    status for it."""
    log = tmp_path / "all.json"
    e = edge("""
        events { worker_connections 8; }
        http {
            access_log @LOG@ json;
            client_header_timeout 1s;
            client_max_body_size 10;
            large_client_header_buffers 4 1k;
            max_request_headers 10;
            server {
                listen 127.0.0.1:@PORT@;
                location /ok { return 200 "ok"; }
                location /dead/ { proxy_pass http://127.0.0.1:1; }
                location /hole/ { proxy_read_timeout 1s; proxy_pass http://@HOLE@; }
                location /slow/ { proxy_pass http://@UP@; }
            }
        }""", LOG=log, HOLE=blackhole, UP=upstream)
    port = e.port
    expected = []

    assert raw_exchange(port, b"NOT A REQUEST\r\n\r\n").startswith(b"HTTP/1.1 400")
    expected.append(400)
    assert raw_exchange(port, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 505")
    expected.append(505)
    assert raw_exchange(port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 414")
    expected.append(414)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(20))
    assert raw_exchange(port, b"GET /ok HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
    expected.append(431)
    assert raw_exchange(port, b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n").startswith(b"HTTP/1.1 413")
    expected.append(413)
    assert raw_exchange(port, b"GET /ok HTTP/1.1\r\nHost: a\r\n").startswith(b"HTTP/1.1 408")   # stalls
    expected.append(408)
    assert get(port, "/dead/").status == 502
    expected.append(502)
    assert get(port, "/hole/").status == 504
    expected.append(504)
    # the client gives up while the upstream works: 499
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /slow/slow/2 HTTP/1.1\r\nHost: a\r\n\r\n")
        upstream.wait_requests(1)
    expected.append(499)
    assert get(port, "/ok").status == 200
    expected.append(200)
    assert len(records(log, len(expected))) == len(expected)     # every connection closed
    # worker_connections full (each connection busy in its next request head, so none
    # can be reused): the refused connection is logged too
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        for s in held:
            s.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
            s.recv(1000)
            s.sendall(b"GET /ok HTTP/1.1\r\n")
        time.sleep(0.2)
        refused = raw_exchange(port, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 503"), refused
        expected += [200] * 8 + [503]
        recs = records(log, len(expected), timeout=10)
    finally:
        for s in held:
            s.close()
    statuses = [r["status"] for r in recs]
    assert sorted(statuses) == sorted(expected), f"{statuses} != {expected}"
    by_status = {r["status"]: r for r in recs}
    assert by_status[499]["upstream_addr"] == upstream.addr
    assert by_status[502]["upstream_status"] == "502"
    assert by_status[504]["upstream_status"] == "504"
    assert by_status[503]["remote_addr"] == "127.0.0.1"


# ---- buffering, reopen, reload ---------------------------------------------------------------------

def test_buffered_log_is_written_on_flush_and_at_exit(edge, tmp_path):
    log = tmp_path / "buf.log"
    e = edge("""
        http {
            server {
                listen 127.0.0.1:@PORT@;
                access_log @LOG@ combined buffer=32k flush=1s;
                location / { return 200 "ok"; }
            }
        }""", LOG=log)
    get(e.port, "/one")
    # held in the worker's buffer at first, then written by the flush timer
    assert wait_lines(log, 1, timeout=0.1) == []
    assert len(wait_lines(log, 1, timeout=5)) == 1
    get(e.port, "/two")
    e.stop()        # a graceful stop writes what is buffered
    assert len(wait_lines(log, 2, timeout=1)) == 2


def test_reopen_after_rotation(edge, tmp_path):
    log = tmp_path / "r.log"
    e = edge("""
        http {
            server {
                listen 127.0.0.1:@PORT@;
                access_log @LOG@;
                location / { return 200 "ok"; }
            }
        }""", LOG=log)
    get(e.port, "/before")
    assert len(wait_lines(log, 1)) == 1
    os.rename(log, str(log) + ".1")
    get(e.port, "/renamed")      # still goes to the renamed file
    e.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    get(e.port, "/after")
    assert [l.split(b'"')[1] for l in wait_lines(str(log) + ".1", 2)] == [
        b"GET /before HTTP/1.1", b"GET /renamed HTTP/1.1"]
    assert [l.split(b'"')[1] for l in wait_lines(log, 1)] == [b"GET /after HTTP/1.1"]


@pytest.mark.edge_only
def test_in_place_reload_switches_log_file(edge, tmp_path):
    first = tmp_path / "first.log"
    second = tmp_path / "second.log"
    template = """
        http {
            server {
                listen 127.0.0.1:@PORT@;
                access_log @LOG@;
                location / { return 200 "ok"; }
            }
        }"""
    e = edge(template, LOG=first)
    pids = e.worker_pids()
    get(e.port, "/a")
    e.conf_path.write_text(e.conf_text.replace(str(first), str(second)))
    e.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "generation 2 is in force" not in e.error_log and time.monotonic() < deadline:
        time.sleep(0.05)
    get(e.port, "/b")
    assert e.worker_pids() == pids
    assert len(wait_lines(first, 1)) == 1 and len(wait_lines(second, 1)) == 1


# ---- config errors ----------------------------------------------------------------------------------

@pytest.mark.edge_only
@pytest.mark.parametrize("directive, message", [
    ("access_log @DIR@/a.log nosuchformat;", 'unknown log format "nosuchformat"'),
    ("access_log @DIR@/missing/dir/a.log;", 'open() "@DIR@/missing/dir/a.log" failed (2: No such file or directory)'),
    ("access_log off @DIR@/a.log;", 'invalid parameter'),
    ("access_log @DIR@/a.log combined buffer=1q;", 'invalid'),
    ("access_log @DIR@/a.log combined gzip;", 'not supported'),
    ("log_format x escape=xml '$status';", 'unknown log format escaping "xml"'),
    ("log_format combined '$status';", 'duplicate "log_format" name "combined"'),
    ("log_format x '$no_such_variable';", 'unknown "no_such_variable" variable'),
    ("request_id_header 'Bad Name';", 'invalid header name'),
])
def test_config_errors_name_file_and_line(tmp_path, directive, message):
    import subprocess
    import sys
    directive = directive.replace("@DIR@", str(tmp_path))
    message = message.replace("@DIR@", str(tmp_path))
    conf = tmp_path / "edge.conf"
    conf.write_text("http {\n    " + directive + "\n    server { listen 127.0.0.1:1; }\n}\n")
    r = subprocess.run([sys.executable, "-m", "edge", "-t", "-c", str(conf)],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 1
    assert message in r.stderr, r.stderr
    assert f"{conf}:2" in r.stderr, r.stderr


# ---- request IDs ---------------------------------------------------------------------------------------

@pytest.mark.edge_only
def test_request_id_header(edge, upstream_factory, tmp_path):
    up = upstream_factory("up")
    e = edge("""
        http {
            request_id_header X-Request-Id;
            upstream api { server @UP@; }
            server {
                listen 127.0.0.1:@PORT@;
                location / { proxy_pass http://api; }
                location = /direct { return 200 "$request_id"; }
            }
        }""", UP=up)
    # a sane incoming ID is kept, sent upstream once and back to the client
    r = get(e.port, "/a", headers=[("X-Request-Id", "3fa85f64-5717-4562-b3fc-2c963f66afa6")])
    assert r.header("X-Request-Id") == "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert up.last().header_all("X-Request-Id") == ["3fa85f64-5717-4562-b3fc-2c963f66afa6"]
    # none: edge makes one (32 hex), the same upstream and back
    r = get(e.port, "/b")
    rid = r.header("X-Request-Id")
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert up.last().header_all("X-Request-Id") == [rid]
    # not a sane token: replaced
    r = get(e.port, "/c", headers=[("X-Request-Id", "bad value; drop table")])
    rid = r.header("X-Request-Id")
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert up.last().header_all("X-Request-Id") == [rid]
    # the same ID in a response edge makes itself
    r = get(e.port, "/direct", headers=[("X-Request-Id", "abc.123")])
    assert r.body == b"abc.123" and r.header("X-Request-Id") == "abc.123"
    # W3C trace context passes through untouched
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    get(e.port, "/d", headers=[("traceparent", tp), ("tracestate", "rojo=00f067aa0ba902b7")])
    assert up.last().header("traceparent") == tp
    assert up.last().header("tracestate") == "rojo=00f067aa0ba902b7"


@pytest.mark.edge_only
def test_request_id_is_unique_per_request(edge):
    e = edge("""
        http { server { listen 127.0.0.1:@PORT@; location / { return 200 "$request_id"; } } }""")
    with Conn(e.port) as c:
        ids = {c.request("GET", "/").body for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(rb"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.edge_only
def test_logs_query_over_what_edge_wrote(edge, upstream, tmp_path):
    """`edge logs query` answers from the JSON log a running edge wrote, found through
    the config, rotated and gzipped parts included."""
    import gzip
    import subprocess
    import sys
    log = tmp_path / "access.json"
    e = edge("""
        http {
            access_log @LOG@ json;
            server {
                listen 127.0.0.1:@PORT@;
                location /api/ { route_name api; proxy_pass http://@UP@; }
                location = /ping { return 200 "pong"; }
            }
        }""", UP=upstream, LOG=log)
    with Conn(e.port) as c:
        for _ in range(7):
            assert c.request("GET", "/api/x").status == 200
        for _ in range(4):
            assert c.request("GET", "/ping").status == 200
        for _ in range(3):
            assert c.request("GET", "/missing").status == 404
    assert len(wait_lines(log, 14)) == 14
    # rotate: the first lines go to a gzipped file, edge goes on in a new one
    os.rename(log, str(log) + ".1")
    e.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    with open(str(log) + ".1", "rb") as src, gzip.open(str(log) + ".2.gz", "wb") as dst:
        dst.write(src.read())
    os.unlink(str(log) + ".1")
    assert get(e.port, "/api/y").status == 200
    assert len(wait_lines(log, 1)) == 1
    r = subprocess.run([sys.executable, "-m", "edge", "logs", "query",
                        "SELECT route, status, count(*) AS n FROM logs GROUP BY ALL ORDER BY ALL",
                        "--format", "json", "-c", str(e.conf_path)],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"route": "", "status": 404, "n": 3},
                                    {"route": "= /ping", "status": 200, "n": 4},
                                    {"route": "api", "status": 200, "n": 8}]


@pytest.mark.edge_only
def test_websocket_tunnel_is_logged_when_it_ends(edge, tmp_path):
    """A 101 tunnel gets its record when it closes, with the upstream's 101 and the bytes
    that went through it."""
    from websockets.sync.client import connect
    from websockets.sync.server import serve

    def echo(ws):
        for msg in ws:
            ws.send(msg)

    server = serve(echo, "127.0.0.1", 0, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        log = tmp_path / "ws.json"
        e = edge("""
            http {
                access_log @LOG@ json;
                server {
                    listen 127.0.0.1:@PORT@;
                    location /ws { proxy_pass http://@WS@; }
                }
            }""", LOG=log, WS=f"127.0.0.1:{server.socket.getsockname()[1]}")
        with connect(f"ws://127.0.0.1:{e.port}/ws", compression=None) as ws:
            ws.send("x" * 5000)
            assert ws.recv() == "x" * 5000
            assert wait_lines(log, 1, timeout=0.3) == []    # still open: no record yet
        rec = records(log, 1)[0]
        assert rec["status"] == 101 and rec["upstream_status"] == "101"
        assert rec["body_bytes_sent"] >= 5000
    finally:
        server.shutdown()
