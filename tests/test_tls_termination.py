"""TLS termination details that the nginx-parity table (tests/test_tls.py) does not cover:
the PROXY protocol header before the handshake, worker_connections on a TLS port, the
kTLS report, certificates swapped by an in-place reload while a connection stays open,
and load-time refusals. Real edge processes, real TLS clients (Python's ssl module and
curl); certificates from trustme."""

import os
import signal
import socket
import ssl
import subprocess
import time

import pytest
import trustme

from support.waiting import wait_for

pytestmark = pytest.mark.edge_only


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    for name, kind in (("one", trustme.KeyType.ECDSA), ("two", trustme.KeyType.ECDSA)):
        cert = ca.issue_cert("a.test", key_type=kind)
        cert.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
    other = ca.issue_cert("other.test")
    other.private_key_pem.write_to_path(str(d / "other.key"))
    return d


def client_context(pki):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    return ctx


def tls_get(port, pki, path="/", name="a.test", prefix=b""):
    """One HTTPS request on a new connection; `prefix` is sent in clear first (a PROXY
    header). Returns (status line, body, peer certificate in DER)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    if prefix:
        raw.sendall(prefix)
    with client_context(pki).wrap_socket(raw, server_hostname=name) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        der = s.getpeercert(binary_form=True)
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body, der


def der_of(path):
    pem = open(path, "rb").read()
    start = pem.index(b"-----BEGIN CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(pem[start:].decode())


def test_proxy_protocol_header_comes_before_the_handshake(edge, pki):
    e = edge(f"""
        http {{
            server {{
                listen 127.0.0.1:@PORT@ ssl proxy_protocol;
                server_name a.test;
                ssl_certificate {pki}/one.pem;
                ssl_certificate_key {pki}/one.key;
                location / {{ return 200 "$proxy_protocol_addr $scheme $ssl_server_name"; }}
            }}
        }}""")
    status, body, _ = tls_get(e.port, pki, prefix=b"PROXY TCP4 192.0.2.7 192.0.2.1 5555 443\r\n")
    assert status == b"HTTP/1.1 200 OK"
    assert body == b"192.0.2.7 https a.test"
    # v2, binary
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + (12).to_bytes(2, "big")
          + socket.inet_aton("198.51.100.9") + socket.inet_aton("198.51.100.1")
          + (4000).to_bytes(2, "big") + (443).to_bytes(2, "big"))
    status, body, _ = tls_get(e.port, pki, prefix=v2)
    assert body == b"198.51.100.9 https a.test"
    # no header: the TLS ClientHello is not a PROXY header, the connection is closed
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_get(e.port, pki)


def test_worker_connections_close_tls_clients_without_a_plain_answer(edge, pki):
    e = edge(f"""
        worker_processes 1;
        events {{ worker_connections 4; }}
        http {{
            server {{
                listen 127.0.0.1:@PORT@ ssl;
                ssl_certificate {pki}/one.pem;
                ssl_certificate_key {pki}/one.key;
                location / {{ return 200 "ok"; }}
            }}
        }}""")
    held = [socket.create_connection(("127.0.0.1", e.port)) for _ in range(6)]
    try:
        time.sleep(0.3)
        # connections beyond the limit are closed at once and get no plain-text 503
        # (a TLS client could not read it)
        closed = 0
        for s in held:
            s.settimeout(0.5)
            try:
                data = s.recv(100)
            except socket.timeout:
                continue
            assert b"HTTP/1.1 503" not in data
            closed += 1
        assert closed >= 2
    finally:
        for s in held:
            s.close()
    wait_for(lambda: tls_get(e.port, pki)[0] == b"HTTP/1.1 200 OK", 10, "the worker to serve again")


def test_ktls_asked_for_is_reported_once(edge, pki):
    e = edge(f"""
        worker_processes 1;
        http {{
            server {{
                listen 127.0.0.1:@PORT@ ssl;
                ssl_certificate {pki}/one.pem;
                ssl_certificate_key {pki}/one.key;
                ssl_conf_command Options KTLS;
                location / {{ return 200 "ok"; }}
            }}
        }}""")
    for _ in range(3):
        assert tls_get(e.port, pki)[1] == b"ok"
    with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
        kernel_has_tls = "tls" in f.read().split()
    expected = "kTLS in use" if kernel_has_tls else "kTLS asked for but not in use"
    log = wait_for(lambda: expected in e.error_log and e.error_log, 5, "the kTLS report")
    assert log.count("kTLS") == 1


def test_in_place_reload_swaps_certificates_and_keeps_open_connections(edge, pki, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes((pki / "one.pem").read_bytes())
    key.write_bytes((pki / "one.key").read_bytes())
    e = edge(f"""
        http {{
            server {{
                listen 127.0.0.1:@PORT@ ssl;
                server_name a.test;
                ssl_certificate {cert};
                ssl_certificate_key {key};
                location / {{ return 200 "ok"; }}
            }}
        }}""")
    assert tls_get(e.port, pki)[2] == der_of(pki / "one.pem")
    # a keep-alive connection opened before the reload
    raw = socket.create_connection(("127.0.0.1", e.port), timeout=5)
    kept = client_context(pki).wrap_socket(raw, server_hostname="a.test")
    kept.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")

    cert.write_bytes((pki / "two.pem").read_bytes())
    key.write_bytes((pki / "two.key").read_bytes())
    e.send_signal(signal.SIGHUP)
    wait_for(lambda: tls_get(e.port, pki)[2] == der_of(pki / "two.pem"), 10, "the new certificate")
    # the old connection goes on, on its old session
    kept.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    assert kept.getpeercert(binary_form=True) == der_of(pki / "one.pem")
    kept.close()

    # a key that does not match: the reload fails with file:line, the new cert stays
    key.write_bytes((pki / "other.key").read_bytes())
    e.send_signal(signal.SIGHUP)
    wait_for(lambda: "do not match" in e.error_log, 10, "the failed reload in the error log")
    assert tls_get(e.port, pki)[2] == der_of(pki / "two.pem")


@pytest.mark.parametrize("case,expect", [
    ("listen_without_certificate", 'no "ssl_certificate" is defined'),
    ("mismatched_key", "do not match"),
    ("missing_file", "cannot load"),
    ("not_pem", "no certificate found"),
    ("bad_protocol", 'invalid value "TLSv9"'),
    ("bad_conf_command", 'unknown ssl_conf_command "Bogus"'),
    ("mixed_listens", '"ssl" must be set on every listen'),
])
def test_bad_tls_config_names_file_and_line(pki, tmp_path, case, expect):
    lines = {
        "listen_without_certificate": "listen 127.0.0.1:1 ssl;",
        "mismatched_key": f"listen 127.0.0.1:1 ssl; ssl_certificate {pki}/one.pem; ssl_certificate_key {pki}/other.key;",
        "missing_file": f"listen 127.0.0.1:1 ssl; ssl_certificate {pki}/nope.pem; ssl_certificate_key {pki}/one.key;",
        "not_pem": f"listen 127.0.0.1:1 ssl; ssl_certificate {pki}/one.key; ssl_certificate_key {pki}/one.key;",
        "bad_protocol": f"listen 127.0.0.1:1 ssl; ssl_certificate {pki}/one.pem; ssl_certificate_key {pki}/one.key; ssl_protocols TLSv9;",
        "bad_conf_command": f"listen 127.0.0.1:1 ssl; ssl_certificate {pki}/one.pem; ssl_certificate_key {pki}/one.key; ssl_conf_command Bogus x;",
        "mixed_listens": f"listen 127.0.0.1:1 ssl; ssl_certificate {pki}/one.pem; ssl_certificate_key {pki}/one.key; }} server {{ listen 127.0.0.1:1;",
    }[case]
    conf = tmp_path / "edge.conf"
    conf.write_text("http {\n    server {\n        " + lines.replace("; ", ";\n        ") + "\n    }\n}\n")
    r = subprocess.run(["python3", "-m", "edge", "-t", "-c", str(conf)], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 1, r.stdout + r.stderr
    assert expect in r.stderr, r.stderr
    assert f"{conf}:" in r.stderr
