"""TLS termination, the server-side table: certificates chosen by SNI (nginx's server_name
ranking) and by the client's capabilities (RSA or ECDSA), protocol and cipher limits,
ALPN, mTLS and its variables, the $ssl_* variables, redirects and HSTS over TLS,
X-Forwarded-Proto upstream, bad certificates refused by the config test, a
passphrase-protected key, and certificates reloaded with HUP under load.

nginx is the oracle: `EDGE_TEST_IMPL=nginx python3 -m pytest tests/test_tls.py`.
Certificates are made here with trustme (support/tls.py); handshakes are checked with
Python's ssl and with `openssl s_client`.
"""

import json
import signal
import subprocess
import sys
import threading

import pytest
from support import IMPL, get
from support.edge import NGINX, REPO
from support.tls import (
    PeerCert,
    TlsConn,
    TlsFiles,
    client_context,
    https_get,
    https_request,
    nginx_compat,
    s_client,
    served_cert,
)
from support.waiting import wait_for

NGINX_XFP = "proxy_set_header X-Forwarded-Proto $scheme;" if IMPL == "nginx" else ""


class _NginxCompat:
    """The edge fixture, with support.tls.nginx_compat applied to every config."""

    def __init__(self, factory):
        self.factory = factory

    def __call__(self, template, **subst):
        return self.factory(nginx_compat(template), **subst)

    def create(self, template, **subst):
        return self.factory.create(nginx_compat(template), **subst)


@pytest.fixture
def edge(edge):
    return _NginxCompat(edge)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return TlsFiles(tmp_path_factory.mktemp("tls-files"))


@pytest.fixture(scope="module")
def certs(files):
    """The server certificates of the module, by label."""
    out = {}
    for label, names, key in [
        ("default", ("default.test",), "ecdsa"),
        ("exact", ("www.x.test",), "ecdsa"),
        ("leading", ("*.x.test",), "ecdsa"),
        ("trailing", ("www.x.org",), "ecdsa"),
        ("regex", ("r1.y.test",), "ecdsa"),
        ("a-ec", ("a.test",), "ecdsa"),
        ("a-rsa", ("a.test",), "rsa"),
    ]:
        out[label] = files.server(*names, key=key, label=label)
    return out


def cert_lines(c) -> str:
    return f"ssl_certificate {c.cert}; ssl_certificate_key {c.key};"


def one_server(cert, body='return 200 "ok";', extra=""):
    return f"""
http {{
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        server_name a.test;
        {cert_lines(cert)}
        {extra}
        location / {{ {body} }}
    }}
}}
"""


# -- SNI ----------------------------------------------------------------------------------

SNI_CONF = """
http {{
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        server_name www.x.test;
        {exact}
        location / {{ return 200 "exact $ssl_server_name"; }}
    }}
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        server_name *.x.test;
        {leading}
        location / {{ return 200 "leading $ssl_server_name"; }}
    }}
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        server_name www.x.*;
        {trailing}
        location / {{ return 200 "trailing $ssl_server_name"; }}
    }}
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        server_name ~^r\\d+\\.(x|y)\\.test$;
        {regex}
        location / {{ return 200 "regex $ssl_server_name"; }}
    }}
    # the default server is the last one: not merely "the first server of the port"
    server {{
        listen 127.0.0.1:@PORT@ ssl default_server;
        server_name default.test;
        {default}
        location / {{ return 200 "default $ssl_server_name"; }}
    }}
}}
"""

# (SNI sent, certificate expected, server answering a request with Host = the SNI)
SNI_CASES = [
    ("www.x.test", "exact"),        # exact beats *.x.test, www.x.* and the regex
    ("foo.x.test", "leading"),      # leading wildcard
    ("r1.x.test", "leading"),       # a leading wildcard beats a regex that matches too
    ("www.x.org", "trailing"),      # trailing wildcard
    ("r7.y.test", "regex"),         # only the regex matches
    ("nomatch.test", "default"),    # no server_name matches: the default server
    (None, "default"),              # no SNI at all
]


@pytest.fixture
def sni_edge(edge, certs):
    return edge(SNI_CONF.format(**{k: cert_lines(certs[k]) for k in
                                   ("exact", "leading", "trailing", "regex", "default")}))


@pytest.mark.parametrize("sni,expected", SNI_CASES)
def test_sni_selects_the_certificate_by_server_name_ranking(sni_edge, files, sni, expected):
    r = https_get(sni_edge.port, "/", sni=sni, host=sni or "nomatch.test", ca=files.ca_pem)
    assert r.cert.label == expected, f"SNI {sni!r}: served {r.cert.label!r}, wanted {expected!r}"
    # the request itself, with Host = the SNI name, is served by that server
    assert r.status == 200 and r.text == f"{expected} {sni or ''}", r.text


@pytest.mark.parametrize("sni,expected", [
    ("WWW.X.Test", "exact"),        # names compare without case ...
    ("www.x.test.", "exact"),       # ... and without a trailing dot
    ("FOO.X.TEST.", "leading"),
    ("www.x.test..", "default"),    # not a valid host name: no server is chosen by it
    ("a..x.test", "default"),
    ("www.x.test:443", "exact"),     # a port is dropped too (the host validation of Host headers)
])
def test_sni_name_normalisation(sni_edge, files, sni, expected):
    """As nginx (ngx_http_validate_host on the SNI name): lower case, one trailing dot
    dropped; an invalid name selects nothing, so the default server's certificate.
    $ssl_server_name is the name as the client sent it."""
    s = s_client(sni_edge.port, servername=sni, ca=files.ca_pem,
                 request=b"GET / HTTP/1.1\r\nHost: nomatch.test\r\nConnection: close\r\n\r\n")
    assert s.ok, s.output
    assert s.cert.label == expected, f"SNI {sni!r}: served {s.cert.label!r}, wanted {expected!r}"
    assert s.body == f"default {sni}".encode(), s.body


def test_sni_picks_the_certificate_host_picks_the_server(sni_edge, files):
    """The handshake's name chooses the certificate; the Host header still chooses the
    server of each request, as in nginx (no 421 for a mismatch)."""
    r = https_get(sni_edge.port, "/", sni="www.x.test", host="foo.x.test", ca=files.ca_pem)
    assert r.cert.label == "exact"
    assert r.status == 200 and r.text == "leading www.x.test", r.text


# -- RSA and ECDSA ------------------------------------------------------------------------

@pytest.fixture
def dual_edge(edge, certs):
    return edge(one_server(certs["a-rsa"], 'return 200 "$ssl_cipher";',
                           extra=cert_lines(certs["a-ec"])))


@pytest.mark.parametrize("sigalgs,key", [
    ("ECDSA+SHA256", "ecdsa"),
    ("RSA-PSS+SHA256:RSA+SHA256", "rsa"),       # RSA+SHA256: the RSA CA's signature on the leaf
    ("ECDSA+SHA256:RSA-PSS+SHA256:RSA+SHA256", "ecdsa"),
    ("RSA-PSS+SHA256:RSA+SHA256:ECDSA+SHA256", "rsa"),
])
def test_tls13_certificate_type_by_client_signature_algorithms(dual_edge, files, sigalgs, key):
    s = s_client(dual_edge.port, servername="a.test", tls="1.3", sigalgs=sigalgs, ca=files.ca_pem)
    assert s.ok and s.protocol == "TLSv1.3", s.output
    assert s.cert.key_type == key, f"-sigalgs {sigalgs}: served a {s.cert.key_type} certificate"
    assert s.verify == "0 (ok)", s.output


@pytest.mark.parametrize("cipher,key", [
    ("ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa"),
    ("ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
])
def test_tls12_certificate_type_by_client_ciphers(dual_edge, files, cipher, key):
    s = s_client(dual_edge.port, servername="a.test", tls="1.2", cipher=cipher, ca=files.ca_pem)
    assert s.ok and s.protocol == "TLSv1.2" and s.cipher == cipher, s.output
    assert s.cert.key_type == key
    # and from Python: the request is answered on that cipher
    r = https_get(dual_edge.port, "/", sni="a.test", ca=files.ca_pem, max_version="1.2", ciphers=cipher)
    assert r.cert.key_type == key and r.cipher == cipher and r.text == cipher


# -- protocols and ciphers ------------------------------------------------------------------

@pytest.mark.parametrize("protocols,accepted", [
    ("TLSv1.2", ["1.2"]),
    ("TLSv1.3", ["1.3"]),
    ("TLSv1.2 TLSv1.3", ["1.2", "1.3"]),
    pytest.param(None, ["1.2", "1.3"], marks=pytest.mark.edge_only),  # the default (nginx 1.22: no TLSv1.3)
])
def test_ssl_protocols(edge, certs, files, protocols, accepted):
    extra = f"ssl_protocols {protocols};" if protocols else ""
    e = edge(one_server(certs["a-ec"], 'return 200 "$ssl_protocol";', extra=extra))
    for v in ("1.2", "1.3"):
        s = s_client(e.port, servername="a.test", tls=v, ca=files.ca_pem)
        if v in accepted:
            assert s.ok and s.protocol == f"TLSv{v}", s.output
            assert s.body == f"TLSv{v}".encode(), s.response
        else:
            assert not s.ok, f"TLSv{v} accepted with ssl_protocols {protocols}: {s.output}"
    # a refused handshake leaves the server serving
    assert https_get(e.port, "/", sni="a.test", ca=files.ca_pem).status == 200


def test_ssl_ciphers_limit_tls12(edge, certs, files):
    e = edge(one_server(certs["a-ec"], 'return 200 "$ssl_cipher";',
                        extra="ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256;"))
    s = s_client(e.port, servername="a.test", tls="1.2", cipher="ECDHE-ECDSA-AES256-GCM-SHA384")
    assert not s.ok, s.output
    s = s_client(e.port, servername="a.test", tls="1.2",
                 cipher="ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert s.ok and s.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256", s.output
    assert s.body == b"ECDHE-ECDSA-AES128-GCM-SHA256", s.response


@pytest.mark.parametrize("prefer,expected", [
    ("on", "ECDHE-ECDSA-AES256-GCM-SHA384"),     # the server's order
    ("off", "ECDHE-ECDSA-AES128-GCM-SHA256"),    # the client's order
])
def test_ssl_prefer_server_ciphers(edge, certs, files, prefer, expected):
    e = edge(one_server(certs["a-ec"], extra="ssl_ciphers ECDHE-ECDSA-AES256-GCM-SHA384:"
                                             f"ECDHE-ECDSA-AES128-GCM-SHA256; ssl_prefer_server_ciphers {prefer};"))
    s = s_client(e.port, servername="a.test", tls="1.2",
                 cipher="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
    assert s.ok and s.cipher == expected, s.output


def test_ssl_conf_command_ciphersuites_tls13(edge, certs, files):
    e = edge(one_server(certs["a-ec"], 'return 200 "$ssl_cipher";',
                        extra="ssl_conf_command Ciphersuites TLS_CHACHA20_POLY1305_SHA256;"))
    s = s_client(e.port, servername="a.test", tls="1.3")
    assert s.ok and s.cipher == "TLS_CHACHA20_POLY1305_SHA256", s.output
    assert s.body == b"TLS_CHACHA20_POLY1305_SHA256", s.response
    s = s_client(e.port, servername="a.test", tls="1.3", ciphersuites="TLS_AES_128_GCM_SHA256")
    assert not s.ok, s.output


def test_ssl_ecdh_curve(edge, certs, files):
    e = edge(one_server(certs["a-ec"], extra="ssl_ecdh_curve secp384r1;"))
    s = s_client(e.port, servername="a.test", tls="1.3", groups="X25519:secp384r1")
    assert s.ok and "Server Temp Key: ECDH, secp384r1" in s.output, s.output
    s = s_client(e.port, servername="a.test", tls="1.3", groups="X25519")
    assert not s.ok, s.output


@pytest.mark.parametrize("dhparam", [True, False])
def test_ssl_dhparam(edge, certs, files, dhparam):
    """DHE key exchange (TLS 1.2) only with ssl_dhparam: without it a client offering
    only DHE ciphers gets no handshake, as in nginx."""
    extra = "ssl_ciphers DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256;"
    if dhparam:
        extra += f" ssl_dhparam {files.dhparam()};"
    e = edge(one_server(certs["a-rsa"], 'return 200 "$ssl_cipher";', extra=extra))
    s = s_client(e.port, servername="a.test", tls="1.2", cipher="DHE-RSA-AES128-GCM-SHA256")
    if dhparam:
        assert s.ok and s.cipher == "DHE-RSA-AES128-GCM-SHA256", s.output
        assert "Server Temp Key: DH, 2048 bits" in s.output, s.output
        assert s.body == b"DHE-RSA-AES128-GCM-SHA256"
    else:
        assert not s.ok, s.output
    s = s_client(e.port, servername="a.test", tls="1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256")
    assert s.ok, s.output


# -- ALPN -----------------------------------------------------------------------------------

@pytest.mark.parametrize("offered,selected", [
    (["h2", "http/1.1"], "http/1.1"),
    (["http/1.1"], "http/1.1"),
    (["http/1.0", "http/1.1"], "http/1.1"),
    (None, None),
])
def test_alpn_selects_http11(edge, certs, files, offered, selected):
    e = edge(one_server(certs["a-ec"]))
    r = https_get(e.port, "/", sni="a.test", ca=files.ca_pem, alpn=offered)
    assert r.status == 200 and r.alpn == selected, (offered, r.alpn)


def test_alpn_without_a_common_protocol_fails_the_handshake(edge, certs, files):
    """nginx refuses a client that offers ALPN protocols but none it speaks
    (no_application_protocol alert)."""
    e = edge(one_server(certs["a-ec"]))
    s = s_client(e.port, servername="a.test", alpn=["h2"])
    assert not s.ok, s.output
    assert "no application protocol" in s.output, s.output
    assert https_get(e.port, "/", sni="a.test", ca=files.ca_pem).status == 200


# -- variables ------------------------------------------------------------------------------

VARS = '"$ssl_protocol|$ssl_cipher|$ssl_server_name|$scheme|$https|$ssl_session_reused"'


def test_ssl_variables(edge, certs, files):
    e = edge(f"""
http {{
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        listen 127.0.0.1:@PORT2@;
        server_name a.test;
        {cert_lines(certs["a-ec"])}
        location / {{ return 200 {VARS}; }}
    }}
}}
""")
    for v, cipher in (("1.3", "TLS_AES_256_GCM_SHA384"), ("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")):
        r = https_get(e.port, "/", sni="a.test", ca=files.ca_pem, min_version=v, max_version=v)
        assert r.protocol == f"TLSv{v}" and r.cipher == cipher, (r.protocol, r.cipher)
        assert r.text == f"TLSv{v}|{cipher}|a.test|https|on|.", r.text
    r = https_get(e.port, "/", ca=files.ca_pem, host="a.test")   # no SNI
    assert r.text == "TLSv1.3|TLS_AES_256_GCM_SHA384||https|on|.", r.text
    # the plain listener of the same server
    r = get(e.ports["PORT2"], "/", host="a.test")
    assert r.status == 200 and r.text == "|||http||", r.text


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_ssl_session_reused(edge, certs, files, tmp_path, tls):
    """One worker, the default session settings (tickets): a session saved by one
    handshake resumes on the next, and $ssl_session_reused says so ("r", else ".")."""
    e = edge(one_server(certs["a-ec"], 'return 200 "$ssl_session_reused";'))
    sess = tmp_path / "session.pem"
    s1 = s_client(e.port, servername="a.test", tls=tls, sess_out=sess)
    assert s1.ok and not s1.reused and s1.body == b".", s1.output
    s2 = s_client(e.port, servername="a.test", tls=tls, sess_in=sess)
    assert s2.ok and s2.reused and s2.body == b"r", s2.output
    ctx = client_context(files.ca_pem, min_version=tls, max_version=tls)
    r1 = https_get(e.port, "/", sni="a.test", ctx=ctx)
    r2 = https_get(e.port, "/", sni="a.test", ctx=ctx, session=r1.session)
    assert (r1.session_reused, r1.body, r2.session_reused, r2.body) == (False, b".", True, b"r")


# -- mTLS -----------------------------------------------------------------------------------

MTLS_BODY = 'return 200 "$ssl_client_verify|$ssl_client_s_dn|$ssl_client_fingerprint";'


@pytest.fixture(scope="module")
def clients(files):
    return {"trusted": files.client("alice"), "untrusted": files.client("mallory", untrusted=True),
            "tricky": files.client('Doe, "J" <x>+y;z=\\ #1 ', label="tricky"),
            "utf8": files.client("Zoë Ångström", label="utf8")}


@pytest.fixture
def mtls_edge(edge, certs, files):
    servers = "".join(f"""
    server {{
        listen 127.0.0.1:@PORT{i}@ ssl;
        {cert_lines(certs["a-ec"])}
        ssl_client_certificate {files.client_ca_pem};
        ssl_verify_client {mode};
        location / {{ {MTLS_BODY} }}
    }}""" for i, mode in enumerate(("on", "optional", "optional_no_ca")))
    return edge("http {" + servers + "\n}\n")


def expect_400_page(r, text):
    assert r.status == 400, r
    assert f"<title>400 {text}</title>" in r.text and f"<center>{text}</center>" in r.text, r.text


@pytest.mark.parametrize("mode,port", [("on", 0), ("optional", 1), ("optional_no_ca", 2)])
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_mtls_trusted_certificate(mtls_edge, files, clients, mode, port, tls):
    c = clients["trusted"]
    r = https_get(mtls_edge.ports[f"PORT{port}"], "/", sni="a.test", ca=files.ca_pem, cert=c,
                  min_version=tls, max_version=tls)
    assert r.status == 200 and r.text == f"SUCCESS|{c.subject_dn}|{c.fingerprint}", r.text


# what nginx returns in $ssl_client_s_dn (OpenSSL's RFC 2253 printing: special characters
# escaped with a backslash, bytes above 0x7f as \XX of their UTF-8)
DN_CASES = {
    "tricky": 'CN=Doe\\, \\"J\\" \\<x\\>\\+y\\;z=\\\\ #1\\ ,OU=tricky,O=edge tests',
    "utf8": "CN=Zo\\C3\\AB \\C3\\85ngstr\\C3\\B6m,OU=utf8,O=edge tests",
}


@pytest.mark.parametrize("who", list(DN_CASES))
def test_mtls_subject_dn_escaping(mtls_edge, files, clients, who):
    c = clients[who]
    r = https_get(mtls_edge.ports["PORT0"], "/", sni="a.test", ca=files.ca_pem, cert=c)
    assert r.status == 200, r
    verify, dn, fp = r.text.split("|")
    assert (verify, fp) == ("SUCCESS", c.fingerprint)
    assert dn == DN_CASES[who], dn


@pytest.mark.parametrize("mode,port", [("on", 0), ("optional", 1), ("optional_no_ca", 2)])
def test_mtls_without_a_certificate(mtls_edge, files, mode, port):
    r = https_get(mtls_edge.ports[f"PORT{port}"], "/", sni="a.test", ca=files.ca_pem)
    if mode == "on":
        expect_400_page(r, "No required SSL certificate was sent")
        assert r.header("Connection") == "close"
    else:
        assert r.status == 200 and r.text == "NONE||", r.text


@pytest.mark.parametrize("mode,port", [("on", 0), ("optional", 1), ("optional_no_ca", 2)])
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_mtls_untrusted_certificate(mtls_edge, files, clients, mode, port, tls):
    c = clients["untrusted"]
    r = https_get(mtls_edge.ports[f"PORT{port}"], "/", sni="a.test", ca=files.ca_pem, cert=c,
                  min_version=tls, max_version=tls)
    if mode == "optional_no_ca":
        # accepted, and the failure is visible to the configuration
        assert r.status == 200, r
        assert r.text == f"FAILED:unable to verify the first certificate|{c.subject_dn}|{c.fingerprint}", r.text
    else:
        expect_400_page(r, "The SSL certificate error")


@pytest.mark.parametrize("intermediates,depth,ok", [
    (1, None, True),    # the default depth (1) accepts one intermediate CA
    (2, None, False),
    (2, 1, False),
    (2, 2, True),
    (1, 0, False),
])
def test_ssl_verify_depth(edge, certs, files, intermediates, depth, ok):
    """Client certificates issued below intermediate CAs (the client sends them, the
    server trusts only the root)."""
    c = files.client(f"deep{intermediates}", via_intermediate=intermediates)
    e = edge(one_server(certs["a-ec"], MTLS_BODY,
                        extra=f"ssl_client_certificate {files.client_ca_pem}; ssl_verify_client on;"
                              + (f" ssl_verify_depth {depth};" if depth is not None else "")))
    r = https_get(e.port, "/", sni="a.test", ca=files.ca_pem, cert=c)
    if ok:
        assert r.status == 200 and r.text == f"SUCCESS|{c.subject_dn}|{c.fingerprint}", r.text
    else:
        expect_400_page(r, "The SSL certificate error")


# -- redirects, HSTS, X-Forwarded-Proto ---------------------------------------------------------

def test_redirect_to_https_and_hsts(edge, certs, files):
    e = edge(f"""
http {{
    server {{
        listen 127.0.0.1:@PORT@;
        server_name a.test;
        return 301 https://$host$request_uri;
    }}
    server {{
        listen 127.0.0.1:@PORT2@ ssl;
        server_name a.test;
        {cert_lines(certs["a-ec"])}
        add_header Strict-Transport-Security "max-age=63072000; includeSubDomains" always;
        location = /old {{ return 301 $scheme://$host/new; }}
        location = /new {{ return 200 "new"; }}
    }}
}}
""")
    r = get(e.port, "/p/q?x=1&y=%41", host="a.test")
    assert r.status == 301 and r.header("Location") == "https://a.test/p/q?x=1&y=%41", r
    assert not r.has("Strict-Transport-Security"), "HSTS on a plain listener"
    port = e.ports["PORT2"]
    r = https_get(port, "/old", sni="a.test", ca=files.ca_pem)
    assert r.status == 301 and r.header("Location") == "https://a.test/new"
    hsts = "max-age=63072000; includeSubDomains"
    assert r.header("Strict-Transport-Security") == hsts
    r = https_get(port, "/new", sni="a.test", ca=files.ca_pem)
    assert r.status == 200 and r.header("Strict-Transport-Security") == hsts
    r = https_get(port, "/missing", sni="a.test", ca=files.ca_pem)
    assert r.status == 404 and r.header("Strict-Transport-Security") == hsts    # `always`


def test_x_forwarded_proto_https_upstream(edge, certs, files, upstream):
    e = edge(f"""
http {{
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        listen 127.0.0.1:@PORT2@;
        server_name a.test;
        {cert_lines(certs["a-ec"])}
        location / {{ {NGINX_XFP} proxy_pass http://@UP@; }}
    }}
}}
""", UP=upstream)
    r = https_request(e.port, "POST", "/echo?tls", sni="a.test", ca=files.ca_pem, body=b"x" * 3000)
    assert r.status == 200, r
    assert json.loads(r.body)["body_len"] == 3000
    r = get(e.ports["PORT2"], "/echo?plain", host="a.test")
    assert r.status == 200
    by_target = {q.target: q for q in upstream.requests}
    assert by_target["/echo?tls"].header_all("X-Forwarded-Proto") == ["https"]
    assert by_target["/echo?plain"].header_all("X-Forwarded-Proto") == ["http"]


# -- bad certificates and keys ------------------------------------------------------------------

def config_test(e):
    """`edge -t` (or `nginx -t`) on the edge's rendered config, without starting it."""
    e.conf_text = e.render()
    e.conf_path.write_text(e.conf_text)
    if e.impl == "nginx":
        cmd = [NGINX, "-t", "-p", str(e.workdir), "-e", str(e.error_log_path), "-c", str(e.conf_path)]
    else:
        cmd = [sys.executable, "-m", "edge", "-t", "-c", str(e.conf_path)]
    return subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def bad(files, certs):
    """name -> (certificate path, key path, the directive whose line is named)."""
    ec, rsa = certs["a-ec"], certs["a-rsa"]
    garbage = files.file("garbage.pem", b"this is not PEM\n" * 4)
    return {
        # (certificate, key, the directive of the bad file)
        "missing_cert": (files.dir / "nonexistent.crt", ec.key, "ssl_certificate "),
        "missing_key": (ec.cert, files.dir / "nonexistent.key", "ssl_certificate_key "),
        "cert_not_pem": (garbage, ec.key, "ssl_certificate "),
        "key_not_pem": (ec.cert, garbage, "ssl_certificate_key "),
        "key_is_a_cert": (ec.cert, ec.cert, "ssl_certificate_key "),
        # an ECDSA certificate with an RSA key: nginx 1.22 accepts it (OpenSSL files the key
        # in the RSA slot) and fails handshakes; edge refuses it
        "mismatched_pair": (ec.cert, rsa.key, None),   # either line of the pair
        "mismatched_same_type": (ec.cert, certs["default"].key, None),
    }


def config_test_with(edge, cert, key):
    """`edge -t` (or `nginx -t`) on a server with this certificate and key."""
    e = edge.create(f"""
http {{
    server {{
        listen 127.0.0.1:@PORT@ ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "ok"; }}
    }}
}}
""")
    e._alloc_ports()
    return e, config_test(e)


BAD_CASES = ["missing_cert", "missing_key", "cert_not_pem", "key_not_pem", "key_is_a_cert", "mismatched_pair",
             "mismatched_same_type"]


@pytest.mark.parametrize("case", [c if c != "mismatched_pair" else pytest.param(c, marks=pytest.mark.edge_only)
                                  for c in BAD_CASES])
def test_bad_certificate_or_key_fails_the_config_test(edge, bad, case):
    cert, key, _ = bad[case]
    e, r = config_test_with(edge, cert, key)
    assert r.returncode == 1, f"{case}: config test exited {r.returncode}\n{r.stdout}{r.stderr}"
    assert "[emerg]" in r.stderr, r.stderr


@pytest.mark.edge_only   # nginx names the file but not the config line
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_certificate_or_key_names_file_and_line(edge, bad, case):
    cert, key, directive = bad[case]
    e, r = config_test_with(edge, cert, key)
    assert r.returncode == 1
    # the line of either directive of the pair (edge names the ssl_certificate line, with
    # both files), and the file that is bad
    lines = [e.line_of("ssl_certificate "), e.line_of("ssl_certificate_key ")]
    assert any(f"{e.conf_path}:{n}" in r.stderr for n in lines), f"{case}: no file:line {lines}:\n{r.stderr}"
    named = cert if directive == "ssl_certificate " else key if directive else None
    if named is not None:
        assert f'"{named}"' in r.stderr, r.stderr
    # and the server does not start on it
    with pytest.raises(AssertionError):
        e.start()


def test_expired_certificate_is_served(edge, files):
    old = files.expired("a.test", label="expired")
    e = edge(one_server(old))
    assert served_cert(e.port, sni="a.test").label == "expired"
    with pytest.raises(Exception, match="expired"):
        https_get(e.port, "/", sni="a.test", ca=files.ca_pem)     # a verifying client refuses it
    r = https_get(e.port, "/", sni="a.test", verify=False)
    assert r.status == 200 and r.text == "ok"


@pytest.mark.edge_only   # nginx loads an expired certificate without a word
def test_expired_certificate_is_a_warning(edge, files):
    old = files.expired("a.test", label="expired2")
    e = edge.create(one_server(old))
    e._alloc_ports()
    r = config_test(e)
    assert r.returncode == 0, r.stderr
    assert "[warn]" in r.stderr and "expire" in r.stderr and str(old.cert) in r.stderr, r.stderr
    e.start()   # starts, and says so at start-up (on stderr, before the error log is open)
    assert "[warn]" in e.output() + e.error_log and str(old.cert) in e.output() + e.error_log


def test_ssl_password_file(edge, files):
    c = files.server("a.test", label="locked", password="s3cret pass")
    pw = files.file("passwords", b"wrong-one\ns3cret pass\n")
    e = edge(one_server(c, extra=f"ssl_password_file {pw};"))
    r = https_get(e.port, "/", sni="a.test", ca=files.ca_pem)
    assert r.status == 200 and r.cert.label == "locked"


def test_ssl_password_file_without_the_password_fails(edge, files):
    c = files.server("a.test", label="locked2", password="right")
    pw = files.file("passwords-wrong", b"wrong-one\nwrong-two\n")
    e = edge.create(one_server(c, extra=f"ssl_password_file {pw};"))
    e._alloc_ports()
    r = config_test(e)
    assert r.returncode == 1 and "[emerg]" in r.stderr, r.stderr
    e = edge.create(one_server(c))    # no password file at all: nginx would prompt; fails
    e._alloc_ports()
    r = config_test(e)
    assert r.returncode == 1 and "[emerg]" in r.stderr, r.stderr


# -- reload ----------------------------------------------------------------------------------

class TlsLoad:
    """Requests on new TLS connections, from a thread, until stopped (a bounded loop:
    at most `max_requests`). Records each response's certificate label and failures."""

    def __init__(self, port, files, max_requests=20000):
        self.port, self.files, self.max = port, files, max_requests
        self.ok, self.failures, self.labels = 0, [], []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        ctx = client_context(self.files.ca_pem)
        for _ in range(self.max):
            if self.stop_ev.is_set():
                return
            try:
                r = https_get(self.port, "/", sni="a.test", ctx=ctx, timeout=10)
                if r.status == 200 and r.text == "ok":
                    self.ok += 1
                    self.labels.append(r.cert.label)
                else:
                    self.failures.append(f"{r.status} {r.text[:100]}")
            except Exception as ex:  # noqa: BLE001 - every failure is recorded
                self.failures.append(repr(ex))

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.t.join(30)
        assert not self.t.is_alive()

    def wait_ok(self, n, timeout=20):
        start = self.ok
        wait_for(lambda: self.ok >= start + n or self.failures, timeout, f"{n} more requests")


def replace_cert(files, target, new):
    """Overwrite target's certificate and key files with new's (same paths)."""
    target.cert.write_bytes(new.cert.read_bytes())
    target.key.write_bytes(new.key.read_bytes())


@pytest.mark.timeout(90)
def test_certificate_reload_under_load(edge, files):
    live = files.server("a.test", label="gen1")
    e = edge(one_server(live, extra="keepalive_timeout 0;"))
    with TlsLoad(e.port, files) as load:
        load.wait_ok(50)
        for gen in (2, 3):
            replace_cert(files, live, files.server("a.test", label=f"gen{gen}"))
            e.send_signal(signal.SIGHUP)
            wait_for(lambda g=gen: served_cert(e.port, sni="a.test").label == f"gen{g}", 15, f"gen{gen} served")
            load.wait_ok(50)
            assert load.labels[-1] == f"gen{gen}"
    assert load.failures == [], load.failures[:10]
    assert load.ok >= 150
    assert {"gen1", "gen2", "gen3"} <= set(load.labels)


@pytest.mark.timeout(90)
def test_bad_certificate_on_reload_keeps_the_old_one(edge, files):
    live = files.server("a.test", label="good1")
    e = edge(one_server(live, extra="keepalive_timeout 0;"))
    good_pem = live.cert.read_bytes()
    with TlsLoad(e.port, files) as load:
        load.wait_ok(30)
        live.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        e.send_signal(signal.SIGHUP)
        # the refusal names the certificate file (nginx: "cannot load certificate ...")
        wait_for(lambda: str(live.cert) in e.error_log, 15, "the reload's error")
        assert "[emerg]" in e.error_log
        load.wait_ok(30)
        assert served_cert(e.port, sni="a.test").label == "good1"
        # a fixed certificate reloads again
        replace_cert(files, live, files.server("a.test", label="good2"))
        e.send_signal(signal.SIGHUP)
        wait_for(lambda: served_cert(e.port, sni="a.test").label == "good2", 15, "good2 served")
        load.wait_ok(30)
    assert load.failures == [], load.failures[:10]
    assert set(load.labels) == {"good1", "good2"}
    assert good_pem != live.cert.read_bytes()


@pytest.mark.edge_only   # nginx's old workers close idle keep-alive connections at a reload
def test_keepalive_tls_connection_survives_a_certificate_reload(edge, files):
    """edge reloads in place: a TLS keep-alive connection made before the reload goes on
    (on the certificate it started with) while new handshakes get the new one."""
    live = files.server("a.test", label="ka1")
    e = edge(one_server(live))
    with TlsConn(e.port, sni="a.test", ca=files.ca_pem) as c:
        assert c.request("GET", "/", host="a.test").body == b"ok"
        replace_cert(files, live, files.server("a.test", label="ka2"))
        e.send_signal(signal.SIGHUP)
        wait_for(lambda: served_cert(e.port, sni="a.test").label == "ka2", 15, "ka2 served")
        for _ in range(3):
            r = c.request("GET", "/", host="a.test")
            assert r.status == 200 and r.body == b"ok"
        assert PeerCert.from_der(c.sock.getpeercert(binary_form=True)).label == "ka1"


@pytest.mark.edge_only   # nginx's reload error does not name the config line
def test_bad_certificate_on_reload_names_file_and_line(edge, files):
    live = files.server("a.test", label="good3")
    e = edge(one_server(live))
    line = e.line_of("ssl_certificate ")
    live.cert.write_bytes(b"not a certificate\n")
    e.send_signal(signal.SIGHUP)
    wait_for(lambda: f"{e.conf_path}:{line}" in e.error_log, 15, "file:line in the error log")
    assert served_cert(e.port, sni="a.test").label == "good3"


# -- the TLS mode of the test support (EDGE_TEST_TLS, the "tls" transport) ----------------------

def test_tls_mode_puts_every_listen_over_tls(edge):
    """What the smuggling and framing suites rely on in their `tls` run: every listen
    gets `ssl` and the test certificate, line numbers stay, and support.client.Conn
    speaks TLS to those ports (and only to those)."""
    from support import Conn
    from support import tls as tls_support
    template = """http {
    server {
        listen 127.0.0.1:@PORT@;
        listen 127.0.0.1:@PORT2@;
        location / { return 200 "$scheme $https"; }
    }
}
"""
    prev = tls_support.set_tls_mode(True)
    try:
        e = edge(template)
    finally:
        tls_support.set_tls_mode(prev)
    assert e.line_of('return 200 "$scheme') == 6    # the template's line 5, after the added head line
    for port in (e.port, e.ports["PORT2"]):
        with Conn(port) as c:
            assert c.tls
            r = c.request("GET", "/")
            assert r.status == 200 and r.body == b"https on"
        with Conn(port, tls=client_context(verify=False)) as c:
            assert c.tls and c.request("GET", "/").body == b"https on"
    # not in TLS mode: a plain process, and a plain Conn
    e2 = edge(template)
    with Conn(e2.port) as c:
        assert not c.tls and c.request("GET", "/").body == b"http "
