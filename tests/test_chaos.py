"""A worker never dies on input: mutated requests (bit flips, insertions, deletions,
spliced fragments of valid requests, PROXY and upgrade heads), sent in small pieces and
half-closed at random, for a few seconds. The worker must keep its pid, print no Python
exception (a cdef handler swallowing one would leave a connection in a broken state), log
no alert, and still answer a plain request afterwards."""

import random
import socket
import time

from support.client import get

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p/ HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n0123456789",
    b"GET /p/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET http://b/p/abs?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n",
]

CONF = """
http {
    upstream u { server 127.0.0.1:@PORT2@; keepalive 8; }
    server {
        listen 127.0.0.1:@PORT@;
        client_header_timeout 2s; client_body_timeout 2s;
        location / { return 200 "ok"; }
        location /p/ { proxy_pass http://u; proxy_read_timeout 2s; }
    }
    server { listen 127.0.0.1:@PORT2@; location / { return 200 "up $request_uri"; } }
}
"""


def mutate(rng, data):
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        i = rng.randint(0, max(0, len(b) - 1))
        if op < 0.3 and b:
            b[i] = rng.randint(0, 255)
        elif op < 0.5:
            b[i:i] = bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 5)))
        elif op < 0.7 and b:
            del b[i:i + rng.randint(1, 5)]
        else:
            b[i:i] = rng.choice(SEEDS)
    return bytes(b)


def test_mutated_input_never_kills_a_worker(edge):
    e = edge(CONF)
    workers = e.wait_workers(1)
    rng = random.Random(20261126)
    sent = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", e.port), timeout=0.5)
        except OSError:
            continue
        try:
            data = b"".join(mutate(rng, rng.choice(SEEDS)) for _ in range(rng.randint(1, 3)))
            step = rng.randint(1, 64)
            for k in range(0, len(data), step):
                s.sendall(data[k:k + step])
            if rng.random() < 0.5:
                s.shutdown(socket.SHUT_WR)
            s.recv(65536)
        except OSError:
            pass
        finally:
            s.close()
        sent += 1
    assert sent > 100, "the chaos loop sent almost nothing: the test proves nothing"
    assert e.worker_pids() == workers, "a worker died on input"
    r = get(e.port, "/")
    assert (r.status, r.body) == (200, b"ok")
    output = e.output() + e.error_log
    for marker in ("Traceback", "Exception ignored", "[alert]", "[crit]", "[emerg]"):
        assert marker not in output, f"{marker} in edge's output after chaos:\n{output[-3000:]}"
