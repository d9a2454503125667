"""TLS for the integration tests: certificates made with trustme, and TLS clients.

    files = TlsFiles(tmp_path)                       # a trusted CA and an untrusted one
    rsa = files.server("a.test", "*.a.test", key="rsa", label="a-rsa")
    ec = files.server("a.test", key="ecdsa", label="a-ec")
    conf = f"ssl_certificate {rsa.cert}; ssl_certificate_key {rsa.key};"
    r = https_get(port, "/", sni="a.test", ca=files.ca_pem)
    r.status, r.body, r.protocol, r.cipher, r.alpn, r.cert.label, r.cert.key_type
    s = s_client(port, servername="a.test", tls="1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256")
    s.ok, s.protocol, s.cipher, s.subject, s.cert.label

Certificates (`TlsFiles`):
- `ca` is the CA the servers and the clients trust (ECDSA P-256, trustme's default);
  `other_ca` is a second CA nobody trusts (for refused client certificates).
- `server(*names, key="ecdsa"|"rsa", label=..., not_after=..., password=...)` issues
  a leaf for the DNS names and writes `<label>.crt` (the leaf; no chain: the CA signs
  leaves directly) and `<label>.key` (PKCS#8, encrypted when `password` is given).
  Every certificate carries its label as its subject's organizational unit, so a
  client can tell which one it was served (`PeerCert.label`).
- `client(cn, untrusted=False, via_intermediate=0)` issues a client certificate from the
  trusted CA (or the untrusted one; or below N intermediate CAs, the file then holding
  the chain); trustme marks every leaf for both serverAuth and clientAuth.
- `rsa_ca`: a CA with an RSA key, for the RSA leaves (so that a client that accepts only
  RSA signatures can verify the whole chain of an RSA certificate); both CAs are in
  `ca_pem`, the bundle the clients trust.

Clients:
- `https_request` / `https_get`: one request on a new TLS connection with
  http.client over an `ssl.SSLContext` (SNI, ALPN, protocol bounds, ciphers, a client
  certificate, a session to resume); returns the response and what was negotiated.
- `TlsConn`: support.client.Conn over TLS (the same strict response reader).
- `s_client`: `openssl s_client` with protocol, cipher, ciphersuites, sigalgs, groups,
  -servername, -sess_out/-sess_in, -cert/-key, -alpn; parses what was negotiated.
"""

from __future__ import annotations

import datetime
import http.client
import os
import re
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

OPENSSL = os.environ.get("EDGE_TEST_OPENSSL", "openssl")
IMPL = os.environ.get("EDGE_TEST_IMPL", "edge")


def nginx_compat(conf: str) -> str:
    """nginx 1.22's ssl_protocols default lacks TLSv1.3 (edge's default, and nginx's since
    1.23.4, is TLSv1.2 TLSv1.3): under EDGE_TEST_IMPL=nginx the http block gets that
    explicitly (a server's own ssl_protocols still wins)."""
    if IMPL != "nginx":
        return conf
    return re.sub(r"(^\s*http\s*\{)", lambda m: m.group(1) + " ssl_protocols TLSv1.2 TLSv1.3;", conf, count=1,
                  flags=re.M)


def _trustme():
    """trustme, imported when certificates are first made (conftest imports this module
    for every test run)."""
    import trustme
    return trustme


# -- certificates -------------------------------------------------------------------------

@dataclass
class CertFiles:
    label: str
    cert: Path          # PEM: the leaf certificate
    key: Path           # PEM: its private key (PKCS#8; encrypted when password is set)
    names: tuple
    key_type: str       # "ecdsa" or "rsa"
    pem: bytes
    password: str | None = None

    @property
    def x509(self) -> x509.Certificate:
        """The leaf (the first certificate of the file)."""
        return x509.load_pem_x509_certificate(self.pem)

    @property
    def fingerprint(self) -> str:
        """SHA-1 of the DER, lower-case hex without colons: nginx's $ssl_client_fingerprint."""
        return self.x509.fingerprint(hashes.SHA1()).hex()

    @property
    def subject_dn(self) -> str:
        """The subject as RFC 2253 / 4514 text: nginx's $ssl_client_s_dn."""
        return self.x509.subject.rfc4514_string()

    @property
    def serial(self) -> int:
        return self.x509.serial_number


class TlsFiles:
    """A trusted CA (ECDSA) and a trusted RSA CA, an untrusted CA, and the leaves issued
    from them, written under `directory`."""

    def __init__(self, directory):
        trustme = _trustme()
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="edge tests", organization_unit_name="test CA")
        self.rsa_ca = trustme.CA(organization_name="edge tests", organization_unit_name="test RSA CA",
                                 key_type=trustme.KeyType.RSA)
        self.other_ca = trustme.CA(organization_name="somebody else", organization_unit_name="untrusted CA")
        self.ca_pem = self.dir / "ca.pem"               # both trusted CAs
        self.ca_pem.write_bytes(self.ca.cert_pem.bytes() + self.rsa_ca.cert_pem.bytes())
        self.client_ca_pem = self.dir / "client-ca.pem"  # the ECDSA CA alone (for ssl_client_certificate)
        self.client_ca_pem.write_bytes(self.ca.cert_pem.bytes())
        self.other_ca_pem = self.dir / "other-ca.pem"
        self.other_ca_pem.write_bytes(self.other_ca.cert_pem.bytes())
        self._count = 0

    def _write(self, label, leaf, names, key_type, password=None, chain=False) -> CertFiles:
        cert_pem = b"".join(p.bytes() for p in (leaf.cert_chain_pems if chain else leaf.cert_chain_pems[:1]))
        key_pem = leaf.private_key_pem.bytes()
        if password is not None:
            k = serialization.load_pem_private_key(key_pem, None)
            key_pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(password.encode()))
        cert, key = self.dir / f"{label}.crt", self.dir / f"{label}.key"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        os.chmod(key, 0o600)
        return CertFiles(label, cert, key, tuple(names), key_type, cert_pem, password)

    def server(self, *names, key="ecdsa", label=None, not_before=None, not_after=None,
               password=None) -> CertFiles:
        """A server certificate for the DNS names (the first is also the CN). An RSA leaf
        is issued by the RSA CA, an ECDSA one by the ECDSA CA."""
        self._count += 1
        label = label or f"server{self._count}-{key}"
        ca = self.rsa_ca if key == "rsa" else self.ca
        key_type = {"ecdsa": _trustme().KeyType.ECDSA, "rsa": _trustme().KeyType.RSA}[key]
        leaf = ca.issue_cert(*names, common_name=names[0], organization_name="edge tests",
                             organization_unit_name=label, key_type=key_type,
                             not_before=not_before, not_after=not_after)
        return self._write(label, leaf, names, key, password)

    def expired(self, *names, key="ecdsa", label=None) -> CertFiles:
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        return self.server(*names, key=key, label=label or f"expired-{key}",
                           not_before=now - datetime.timedelta(days=30),
                           not_after=now - datetime.timedelta(days=1))

    def dhparam(self, name="ffdhe2048.pem") -> Path:
        """DH parameters (RFC 7919's ffdhe2048 group, from `openssl genpkey -genparam`)."""
        p = self.dir / name
        subprocess.run([OPENSSL, "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048",
                        "-out", str(p)], check=True, capture_output=True)
        return p

    def client(self, cn, untrusted=False, via_intermediate=False, label=None) -> CertFiles:
        """A client certificate with CN `cn` from the trusted CA (or the untrusted one).
        via_intermediate=N: issued below N intermediate CAs under that CA; the certificate
        file then holds the leaf and the intermediates."""
        self._count += 1
        label = label or f"client{self._count}"
        ca = self.other_ca if untrusted else self.ca
        for _ in range(int(via_intermediate)):
            ca = ca.create_child_ca()
        leaf = ca.issue_cert(f"{label}@clients.test", common_name=cn, organization_name="edge tests",
                             organization_unit_name=label)
        return self._write(label, leaf, (cn,), "ecdsa", chain=bool(via_intermediate))

    def file(self, name, data: bytes) -> Path:
        p = self.dir / name
        p.write_bytes(data)
        return p


# -- what a client was served ---------------------------------------------------------------

@dataclass
class PeerCert:
    subject: str
    issuer: str
    label: str          # the subject's OU (TlsFiles puts the label there)
    cn: str
    names: list
    key_type: str       # "ecdsa" or "rsa"
    serial: int

    @classmethod
    def from_der(cls, der: bytes) -> "PeerCert":
        return cls.from_x509(x509.load_der_x509_certificate(der))

    @classmethod
    def from_pem(cls, pem: bytes) -> "PeerCert":
        return cls.from_x509(x509.load_pem_x509_certificate(pem))

    @classmethod
    def from_x509(cls, c: x509.Certificate) -> "PeerCert":
        def attr(oid):
            v = c.subject.get_attributes_for_oid(oid)
            return v[0].value if v else ""
        try:
            names = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        pk = c.public_key()
        kt = "ecdsa" if isinstance(pk, ec.EllipticCurvePublicKey) else "rsa" if isinstance(pk, rsa.RSAPublicKey) \
            else type(pk).__name__
        return cls(c.subject.rfc4514_string(), c.issuer.rfc4514_string(), attr(NameOID.ORGANIZATIONAL_UNIT_NAME),
                   attr(NameOID.COMMON_NAME), names, kt, c.serial_number)


# -- Python clients -------------------------------------------------------------------------

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(ca=None, *, verify=True, min_version=None, max_version=None, ciphers=None, alpn=None,
                   cert: CertFiles | None = None, sigalgs=None) -> ssl.SSLContext:
    """An SSLContext for a test client. `ca`: the PEM file to trust (verify=False: trust
    anything). Host names are not checked here: tests look at the certificate served."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if verify and ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if min_version:
        ctx.minimum_version = _VERSIONS[min_version]
    if max_version:
        ctx.maximum_version = _VERSIONS[max_version]
    if ciphers:
        ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key), password=cert.password)
    if sigalgs:
        raise ValueError("Python's ssl cannot restrict signature algorithms: use s_client(sigalgs=...)")
    return ctx


def tls_connect(port, *, host="127.0.0.1", sni=None, ctx=None, session=None, timeout=10.0,
                **ctx_kw) -> ssl.SSLSocket:
    """A TCP connection with a completed TLS handshake (raises ssl.SSLError when refused)."""
    ctx = ctx or client_context(**ctx_kw)
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except BaseException:
        raw.close()
        raise


@dataclass
class HttpsResponse:
    status: int
    reason: str
    headers: list
    body: bytes
    protocol: str           # "TLSv1.3"
    cipher: str             # OpenSSL's name: "TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"
    alpn: str | None
    cert: PeerCert
    session: ssl.SSLSession | None
    session_reused: bool

    def header(self, name):
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(vals) <= 1, f"{name} appears {len(vals)} times"
        return vals[0] if vals else None

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


def https_request(port, method="GET", target="/", host=None, *, headers=(), body=None, sni=None,
                  ctx=None, session=None, addr="127.0.0.1", timeout=10.0, **ctx_kw) -> HttpsResponse:
    """One request on a new TLS connection (http.client over our own SSLSocket, so SNI,
    the Host header and the address are independent). `host` defaults to `sni` or
    "localhost". To resume, pass `session` (an earlier response's) with the same `ctx`
    it was made with (Python's ssl insists)."""
    s = tls_connect(port, host=addr, sni=sni, ctx=ctx, session=session, timeout=timeout, **ctx_kw)
    try:
        # what was negotiated, before http.client closes the socket
        nego = (s.version(), s.cipher()[0], s.selected_alpn_protocol(),
                PeerCert.from_der(s.getpeercert(binary_form=True)))
        conn = http.client.HTTPConnection(addr, port, timeout=timeout)
        conn.sock = s
        conn.close = lambda: None     # the socket is closed below, after the session is read
        hdrs = {"Host": host or sni or "localhost", "Connection": "close", **dict(headers)}
        conn.request(method, target, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        # a TLS 1.3 session (ticket) arrives after the handshake, with the response
        return HttpsResponse(r.status, r.reason, list(r.getheaders()), data, *nego, s.session, s.session_reused)
    finally:
        s.close()


def https_get(port, target="/", **kw) -> HttpsResponse:
    return https_request(port, "GET", target, **kw)


def served_cert(port, sni=None, **ctx_kw) -> PeerCert:
    """The certificate a new handshake is given (no request sent)."""
    ctx_kw.setdefault("verify", False)
    with tls_connect(port, sni=sni, **ctx_kw) as s:
        return PeerCert.from_der(s.getpeercert(binary_form=True))


# -- a Conn over TLS ------------------------------------------------------------------------

# Ports of servers started in TLS mode (EDGE_TEST_TLS / the "tls" transport), with the
# context to reach them: support.client.Conn wraps its socket when it connects to one.
TLS_PORTS: dict[tuple[str, int], dict] = {}


def register_tls_ports(addrs, sni="localhost", ca=None):
    for a in addrs:
        TLS_PORTS[a] = {"sni": sni, "ca": ca}


def unregister_tls_ports(addrs):
    for a in addrs:
        TLS_PORTS.pop(a, None)


def wrap_client_socket(sock: socket.socket, host: str, port: int, sni=None, ctx=None):
    """Wrap a connected socket when (host, port) is a registered TLS port (or when sni/ctx
    is given); else return it as is."""
    info = TLS_PORTS.get((host, port))
    if info is None and sni is None and ctx is None:
        return sock
    info = info or {}
    ctx = ctx or client_context(info.get("ca"), verify=info.get("ca") is not None)
    return ctx.wrap_socket(sock, server_hostname=sni or info.get("sni"))


def TlsConn(port, host="127.0.0.1", timeout=10.0, sni="localhost", ctx=None, **ctx_kw):
    """support.client.Conn over TLS (handshake done in the constructor)."""
    from .client import Conn
    return Conn(port, host, timeout, tls=ctx or client_context(**ctx_kw), sni=sni)


# -- openssl s_client -----------------------------------------------------------------------

@dataclass
class SClient:
    returncode: int
    ok: bool                # a handshake completed
    protocol: str | None    # "TLSv1.3"
    cipher: str | None      # "TLS_AES_256_GCM_SHA384"
    reused: bool
    alpn: str | None
    subject: str | None     # as s_client prints it: "O = edge tests, OU = a-ec, CN = a.test"
    peer_sig_type: str | None   # "ECDSA", "RSA-PSS", "RSA"
    verify: str | None      # "0 (ok)"
    cert: PeerCert | None
    response: bytes         # the HTTP response the server sent (head and body)
    body: bytes             # its body (by Content-Length)
    output: str = field(repr=False, default="")


def s_client(port, *, host="127.0.0.1", servername=None, tls=None, cipher=None, ciphersuites=None,
             sigalgs=None, groups=None, alpn=None, cert: CertFiles | None = None, ca=None, sess_out=None,
             sess_in=None, request: bytes | None = None, timeout=15.0, extra=()) -> SClient:
    """Run `openssl s_client` once. By default sends `GET / HTTP/1.1` with
    `Connection: close` (Host: servername or localhost) and reads until the server
    closes, so TLS 1.3 session tickets arrive before -sess_out is written."""
    cmd = [OPENSSL, "s_client", "-connect", f"{host}:{port}", "-ign_eof"]
    cmd += ["-servername", servername] if servername else ["-noservername"]
    if tls:
        cmd.append({"1.2": "-tls1_2", "1.3": "-tls1_3"}[tls])
    if cipher:
        cmd += ["-cipher", cipher]
    if ciphersuites:
        cmd += ["-ciphersuites", ciphersuites]
    if sigalgs:
        cmd += ["-sigalgs", sigalgs]
    if groups:
        cmd += ["-groups", groups]
    if alpn:
        cmd += ["-alpn", ",".join(alpn)]
    if cert is not None:
        cmd += ["-cert", str(cert.cert), "-key", str(cert.key)]
        if cert.password:
            cmd += ["-pass", f"pass:{cert.password}"]
    if ca:
        cmd += ["-CAfile", str(ca)]
    if sess_out:
        cmd += ["-sess_out", str(sess_out)]
    if sess_in:
        cmd += ["-sess_in", str(sess_in)]
    cmd += list(extra)
    if request is None:
        request = (f"GET / HTTP/1.1\r\nHost: {servername or 'localhost'}\r\nConnection: close\r\n\r\n").encode()
    p = subprocess.run(cmd, input=request, capture_output=True, timeout=timeout)
    out = p.stdout.decode("latin-1")
    err = p.stderr.decode("latin-1")

    def find(rx, text=out):
        m = re.search(rx, text, re.M)
        return m.group(1).strip() if m else None

    m = re.search(r"^(New|Reused), (TLSv[\d.]+|SSLv3|\(NONE\)), Cipher is (\S+)", out, re.M)
    ok = bool(m) and m.group(3) != "(NONE)"
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    # the HTTP response, cut out of s_client's chatter by its Content-Length
    resp_bytes = body = b""
    resp_start = p.stdout.find(b"HTTP/1.")
    if resp_start >= 0 and ok:
        head, _, rest = p.stdout[resp_start:].partition(b"\r\n\r\n")
        cl = re.search(rb"^content-length:\s*(\d+)", head, re.M | re.I)
        body = rest[:int(cl.group(1))] if cl else b""
        resp_bytes = head + b"\r\n\r\n" + body
    return SClient(
        returncode=p.returncode, ok=ok,
        protocol=find(r"^\s*Protocol\s*:\s*(\S+)") if ok else None,
        cipher=m.group(3) if ok else None,
        reused=bool(m) and m.group(1) == "Reused",
        alpn=find(r"^ALPN protocol: (\S+)"),
        subject=find(r"^subject=(.*)$"),
        peer_sig_type=find(r"^Peer signature type: (\S+)"),
        verify=find(r"Verify return code: (.*)$"),
        cert=PeerCert.from_pem(pem.group(0).encode()) if pem else None,
        response=resp_bytes, body=body,
        output=out + "\n--- stderr\n" + err)



# -- TLS mode: the suites that run over TLS too ------------------------------------------------

_MODE = os.environ.get("EDGE_TEST_TLS", "") == "1"
_DEFAULT = None


def tls_mode() -> bool:
    """True when new EdgeProcesses put every listen over TLS (EDGE_TEST_TLS=1, or the
    "tls" transport fixture of conftest.py)."""
    return _MODE


def set_tls_mode(on: bool) -> bool:
    global _MODE
    prev, _MODE = _MODE, bool(on)
    return prev


def default_files():
    """(TlsFiles, CertFiles): the certificates of TLS mode, made once per test process
    in a temporary directory (removed at exit): an ECDSA P-256 certificate for
    localhost (and *.test), from the test CA."""
    global _DEFAULT
    if _DEFAULT is None:
        import atexit
        import shutil
        import tempfile
        d = tempfile.mkdtemp(prefix="edge-tls-")
        atexit.register(shutil.rmtree, d, True)
        files = TlsFiles(d)
        _DEFAULT = (files, files.server("localhost", "*.test", "x", label="tls-mode"))
    return _DEFAULT
