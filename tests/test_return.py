"""`return` and the HTTP/1.1 connection handling around it, against a real edge process.

Expectations are nginx's; run with EDGE_TEST_IMPL=nginx to check them against nginx.
"""

import email.utils
import http.client
import re
import socket
import time

import pytest

from support import Conn, body_pattern, build_request, chunked_encode, curl, get

CONF = """
http {
    server {
        listen 127.0.0.1:@PORT@;
        location = /hello { return 200 "hello world"; }
        location = /nl { return 200 "line\\n"; }
        location = /forbidden { return 403 "forbidden\\n"; }
        location = /nocontent { return 204; }
        location = /r301 { return 301 http://example.com/target?q=1; }
        location = /r302 { return 302 http://example.com/target?q=1; }
        location = /r303 { return 303 http://example.com/target?q=1; }
        location = /r307 { return 307 http://example.com/target?q=1; }
        location = /r308 { return 308 http://example.com/target?q=1; }
        location = /url { return http://example.com/only-url; }
        location = /urls { return https://example.com/secure; }
        location = /relative { return 301 /new/place; }
        location = /s404 { return 404; }
        location = /s403 { return 403; }
        location = /s500 { return 500; }
        location = /s503 { return 503; }
        location / { return 200 "root"; }
    }
}
"""


@pytest.fixture
def srv(edge):
    return edge(CONF)


def _assert_length_consistent(r):
    cl = r.header("Content-Length")
    assert cl is not None, f"no Content-Length in {r!r}"
    assert int(cl) == len(r.body)


def test_return_200_text_via_http_client(srv):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request("GET", "/hello")
    r = c.getresponse()
    body = r.read()
    assert r.status == 200
    assert r.version == 11
    assert body == b"hello world"
    assert r.getheader("Content-Length") == "11"
    assert r.getheader("Content-Type").split(";")[0].strip() == "text/plain"
    assert r.getheader("Transfer-Encoding") is None
    date = r.getheader("Date")
    assert date is not None and re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date), date
    assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 5
    # the same connection serves a second request (keep-alive is the HTTP/1.1 default)
    c.request("GET", "/nl")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, b"line\n")
    c.close()


def test_return_text_with_other_status(srv):
    r = get(srv.port, "/forbidden")
    assert r.status == 403
    assert r.body == b"forbidden\n"
    _assert_length_consistent(r)


def test_default_type(edge):
    e = edge("""
http {
    default_type application/json;
    server { listen 127.0.0.1:@PORT@; location / { return 200 '{"ok":true}'; } }
}
""")
    r = get(e.port, "/")
    assert r.status == 200
    assert r.header("Content-Type").split(";")[0].strip() == "application/json"
    assert r.body == b'{"ok":true}'
    _assert_length_consistent(r)


@pytest.mark.parametrize("code", [404, 403, 500, 503])
def test_return_bare_error_code(srv, code):
    with Conn(srv.port) as c:
        r = c.request("GET", f"/s{code}")
        assert r.status == code
        _assert_length_consistent(r)
        if code == 500:
            return  # nginx closes after a 500 (and 400/413/414/501); keeping it open is fine too
        # other error responses made by `return` keep the connection usable
        r2 = c.request("GET", "/hello")
        assert (r2.status, r2.body) == (200, b"hello world")


def test_return_204_has_no_body(srv):
    with Conn(srv.port) as c:
        c.send(build_request("GET", "/nocontent") + build_request("GET", "/hello"))
        r = c.read_response()
        assert r.status == 204
        assert r.header("Transfer-Encoding") is None
        assert r.header("Content-Length") in (None, "0")
        r2 = c.read_response()  # would be garbled if the 204 carried body bytes
        assert (r2.status, r2.body) == (200, b"hello world")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_return_redirect_sets_location(srv, code):
    r = get(srv.port, f"/r{code}")
    assert r.status == code
    assert r.header("Location") == "http://example.com/target?q=1"
    _assert_length_consistent(r)


def test_return_url_alone_is_302(srv):
    r = get(srv.port, "/url")
    assert r.status == 302
    assert r.header("Location") == "http://example.com/only-url"
    r = get(srv.port, "/urls")
    assert r.status == 302
    assert r.header("Location") == "https://example.com/secure"


def test_return_relative_redirect(srv):
    r = get(srv.port, "/relative", host="localhost")
    assert r.status == 301
    loc = r.header("Location")
    # nginx (absolute_redirect on) makes it absolute from the Host; a relative
    # Location is valid HTTP too.
    assert loc == "/new/place" or re.fullmatch(rf"http://localhost(:{srv.port})?/new/place", loc), loc


def test_keepalive_many_sequential_requests(srv):
    with Conn(srv.port) as c:
        for i in range(20):
            r = c.request("GET", "/hello" if i % 2 else f"/other/{i}")
            assert r.status == 200
            assert r.body == (b"hello world" if i % 2 else b"root")
            assert "close" not in r.connection_tokens()
        assert c.is_open(0.3)


def test_pipelined_requests_answered_in_order(srv):
    reqs = [("GET", "/hello"), ("HEAD", "/hello"), ("GET", "/forbidden"), ("GET", "/r301"),
            ("GET", "/nocontent"), ("POST", "/nl"), ("GET", "/x")]
    data = b"".join(build_request(m, t, body=b"payload" if m == "POST" else None) for m, t in reqs)
    with Conn(srv.port) as c:
        c.send(data)
        got = [c.read_response(m) for m, _ in reqs]
        assert [r.status for r in got] == [200, 200, 403, 301, 204, 200, 200]
        assert got[0].body == b"hello world"
        assert got[1].body == b"" and got[1].header("Content-Length") == "11"
        assert got[2].body == b"forbidden\n"
        assert got[3].header("Location") == "http://example.com/target?q=1"
        assert got[5].body == b"line\n"
        assert got[6].body == b"root"
        assert c.is_open(0.3)


def test_request_fed_byte_by_byte(srv):
    data = build_request("GET", "/hello", headers=[("X-Long", "v" * 300)])
    with Conn(srv.port) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            c.send(data[i:i + 1])
            if i % 40 == 0:
                time.sleep(0.001)
        r = c.read_response()
        assert (r.status, r.body) == (200, b"hello world")


def test_request_body_discarded_keeps_framing(srv):
    """A body sent to a `return` location is read and dropped; the next request parses."""
    with Conn(srv.port) as c:
        c.send(build_request("POST", "/hello", body=body_pattern(200_000)) + build_request("GET", "/nl"))
        r1 = c.read_response()
        r2 = c.read_response()
        assert (r1.status, r1.body) == (200, b"hello world")
        assert (r2.status, r2.body) == (200, b"line\n")
        c.send(build_request("POST", "/hello", headers=[("Transfer-Encoding", "chunked")])
               + chunked_encode(body_pattern(100_000)) + build_request("GET", "/forbidden"))
        r3 = c.read_response()
        r4 = c.read_response()
        assert (r3.status, r3.body) == (200, b"hello world")
        assert (r4.status, r4.body) == (403, b"forbidden\n")


def test_http10_without_keepalive_is_closed(srv):
    with Conn(srv.port) as c:
        r = c.request("GET", "/hello", host=None, version="HTTP/1.0")
        assert (r.status, r.body) == (200, b"hello world")
        assert c.wait_closed(5), "server kept an HTTP/1.0 connection without keep-alive open"


def test_http10_keepalive_requested(srv):
    with Conn(srv.port) as c:
        r = c.request("GET", "/hello", version="HTTP/1.0", headers=[("Connection", "keep-alive")])
        assert (r.status, r.body) == (200, b"hello world")
        assert "keep-alive" in r.connection_tokens()
        r = c.request("GET", "/nl", version="HTTP/1.0", headers=[("Connection", "keep-alive")])
        assert (r.status, r.body) == (200, b"line\n")


def test_connection_close_from_client(srv):
    with Conn(srv.port) as c:
        r = c.request("GET", "/hello", headers=[("Connection", "close")])
        assert (r.status, r.body) == (200, b"hello world")
        assert "close" in r.connection_tokens()
        assert c.wait_closed(5)


def test_connection_close_without_unread_input_closes_at_once(srv):
    """A `Connection: close` request read whole, nothing after it: the server closes its
    socket with the response, without a lingering close (nginx's `lingering_close on`
    lingers only when unread input may remain). Bytes the client sends afterwards meet a
    closed socket, which answers them with a reset; a lingering server would read and
    drop them instead."""
    with Conn(srv.port) as c:
        r = c.request("GET", "/hello", headers=[("Connection", "close")])
        assert (r.status, r.body) == (200, b"hello world")
        assert c.wait_closed(5)
        reset = False
        for _ in range(20):         # bounded: a lingering server never resets
            try:
                c.sock.send(b"x")
                time.sleep(0.05)
                if c.sock.recv(16) == b"":
                    continue
            except (ConnectionResetError, BrokenPipeError):
                reset = True
                break
        assert reset, "the server kept reading after its Connection: close response"


def test_keepalive_requests_limit(edge):
    e = edge("""
http {
    keepalive_requests 3;
    server { listen 127.0.0.1:@PORT@; location / { return 200 "ok"; } }
}
""")
    with Conn(e.port) as c:
        for i in range(2):
            r = c.request("GET", "/")
            assert r.status == 200 and "close" not in r.connection_tokens()
        r = c.request("GET", "/")
        assert r.status == 200
        assert "close" in r.connection_tokens(), "the last request allowed by keepalive_requests says close"
        assert c.wait_closed(5)


def test_keepalive_timeout_closes_idle_connection(edge):
    e = edge("""
http {
    keepalive_timeout 1s;
    server { listen 127.0.0.1:@PORT@; location / { return 200 "ok"; } }
}
""")
    with Conn(e.port) as c:
        assert c.request("GET", "/").status == 200
        assert c.wait_closed(6), "idle keep-alive connection not closed after keepalive_timeout 1s"


def test_client_header_timeout(edge):
    e = edge("""
http {
    client_header_timeout 1s;
    server { listen 127.0.0.1:@PORT@; location / { return 200 "ok"; } }
}
""")
    with Conn(e.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        c.sock.settimeout(6)
        data = b""
        try:
            while True:
                chunk = c.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail("connection with an incomplete head not closed after client_header_timeout 1s")
        # nginx closes without an answer; a 408 before the close is acceptable too
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data


def test_curl_and_connection_reuse(srv):
    r = curl(f"http://127.0.0.1:{srv.port}/hello")
    assert r.returncode == 0, r.stderr
    assert (r.status, r.body) == (200, b"hello world")
    # two URLs in one curl run share the connection when the server keeps it alive
    import subprocess
    p = subprocess.run(["/usr/bin/curl", "-sS", "-v", "--max-time", "10", f"http://127.0.0.1:{srv.port}/hello",
                        f"http://127.0.0.1:{srv.port}/nl"], capture_output=True, timeout=20)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"hello worldline\n"
    assert re.search(rb"Re-using existing connection|Reusing existing", p.stderr), p.stderr.decode()


def test_http11_without_host_is_400(srv):
    with Conn(srv.port) as c:
        r = c.request("GET", "/hello", host=None)
        assert r.status == 400


def test_garbage_request_line_is_400_and_closed(srv):
    with Conn(srv.port) as c:
        c.send(b"THIS IS NOT HTTP\r\n\r\n")
        r = c.read_response()
        assert r.status == 400
        assert c.wait_closed(5)


def test_header_buffers(srv):
    """client_header_buffer_size 1k (default) grows into large_client_header_buffers 4 8k."""
    r = get(srv.port, "/a" + "b" * 7000)
    assert (r.status, r.body) == (200, b"root"), "a 7 KB URI fits in one 8k large buffer"
    r = get(srv.port, "/x", headers=[(f"X-H{i}", "v" * 4000) for i in range(6)])
    assert r.status == 200, "24 KB of headers in lines under 8k each fit in 4 x 8k"
    with Conn(srv.port) as c:
        r = c.request("GET", "/a" + "b" * 9000)
        assert r.status == 414, "a request line over 8k is 414"
        assert c.wait_closed(5)


@pytest.mark.edge_only
def test_header_line_over_large_buffer_is_431(srv):
    with Conn(srv.port) as c:
        r = c.request("GET", "/x", headers=[("X-Big", "v" * 9000)])
        # nginx answers 400 here; edge's documented rule (README) is 431 (RFC 6585)
        assert r.status == 431, "a header line over 8k is 431"
        assert c.wait_closed(5)


def test_many_connections_at_once(srv):
    conns = [Conn(srv.port) for _ in range(100)]
    try:
        for c in conns:
            c.send_request("GET", "/hello")
        for c in conns:
            r = c.read_response()
            assert (r.status, r.body) == (200, b"hello world")
    finally:
        for c in conns:
            c.close()


def test_absolute_redirect_directive(edge):
    """nginx's absolute_redirect: on by default (Host + listen port), off keeps the path."""
    e = edge("""http { server { listen 127.0.0.1:@PORT@;
        location = /on { return 302 /there; }
        location = /off { absolute_redirect off; return 302 /there; }
        location = /abs { return 302 https://elsewhere.example/x; } } }""")
    r = get(e.port, "/on", host="Example.ORG")
    assert r.header("Location") == f"http://example.org:{e.port}/there"
    assert get(e.port, "/off").header("Location") == "/there"
    assert get(e.port, "/abs").header("Location") == "https://elsewhere.example/x"
