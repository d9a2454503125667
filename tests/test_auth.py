"""Authentication through real edge processes in front of a recording upstream: the JWT
behaviour table case by case, attacks on JWT, key-auth and basic-auth (with and without
auth_hide_credentials), ACLs, anonymous chaining, identity headers, forged identity
headers, the verified-token cache."""

import base64
import json
import re
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.modules.consumers import hash_password
from support.client import Conn, get

pytestmark = pytest.mark.edge_only

SECRET = "s3cr3t-hs256-secret-of-enough-length"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUB = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def consumers_file(tmp_path):
    doc = {"consumers": [
        {"username": "alice", "custom_id": "1001", "groups": ["admin", "beta"],
         "credentials": {
             "key_auth": [{"key": "alice-key-1"}],
             "basic_auth": [{"username": "alice", "password_hash": hash_password("wonderland")}],
             "jwt": [{"key": "alice-iss", "algorithm": "HS256", "secret": SECRET},
                     {"key": "alice-rsa", "algorithm": "RS256", "public_key": RSA_PUB}]}},
        {"username": "bob", "groups": ["users"],
         "credentials": {"key_auth": [{"key": "bob-key"}]}},
        {"username": "guest", "groups": []},
    ]}
    import yaml
    path = tmp_path / "consumers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


CONFIG = """
    error_log @DIR@/auth-error.log debug;
    http {
        consumers @CONSUMERS@;
        server {
            listen 127.0.0.1:@PORT@;
            location /jwt/ { jwt_auth; proxy_pass http://@UP@; }
            location /jwt-optional/ { jwt_auth optional; proxy_pass http://@UP@; }
            location /key/ { key_auth; proxy_pass http://@UP@; }
            location /key-hidden/ { key_auth; auth_hide_credentials on; proxy_pass http://@UP@; }
            location /basic/ { basic_auth "staff only"; proxy_pass http://@UP@; }
            location /basic-hidden/ { basic_auth; auth_hide_credentials on; proxy_pass http://@UP@; }
            location /admin/ { key_auth; acl allow admin; proxy_pass http://@UP@; }
            location /not-beta/ { key_auth; acl deny beta; proxy_pass http://@UP@; }
            location /chain/ { jwt_auth; key_auth; auth_anonymous guest; proxy_pass http://@UP@; }
            location /acl-only/ { acl allow admin; proxy_pass http://@UP@; }
            location /open/ { proxy_pass http://@UP@; }
        }
    }"""


@pytest.fixture
def gw(edge, upstream, tmp_path):
    e = edge(CONFIG, UP=upstream, CONSUMERS=consumers_file(tmp_path), DIR=tmp_path)
    e.debug_log = tmp_path / "auth-error.log"
    return e, upstream


def hs(claims, secret=SECRET, headers=None, alg="HS256"):
    return jwt.encode(claims, secret, algorithm=alg, headers=headers)


def bearer(token):
    return [("Authorization", f"Bearer {token}")]


def seen(upstream):
    return len(upstream.requests)


def check_refused(e, upstream, target, headers=(), status=401, challenge=None):
    before = seen(upstream)
    r = get(e.port, target, headers=list(headers))
    assert r.status == status, (target, r.status, r.body)
    if status in (401, 403):
        assert r.header("Content-Type") == "application/json"
        assert "message" in json.loads(r.body)
    if challenge is not None:
        assert r.header("WWW-Authenticate") == challenge
    time.sleep(0.05)
    assert seen(upstream) == before, "a refused request reached the upstream"
    return r


# ---- the JWT table ------------------------------------------------------------------------

def test_no_jwt(gw):
    e, up = gw
    check_refused(e, up, "/jwt/x", challenge="Bearer")
    r = get(e.port, "/jwt-optional/x")          # Istio's behaviour: passes, unidentified
    assert r.status == 200 and up.last().header("X-Consumer-Username") is None


@pytest.mark.parametrize("claims", [{"sub": "x"}, {"iss": "nobody"}, {"iss": ""}])
def test_missing_or_unknown_key_claim(gw, claims):
    e, up = gw
    check_refused(e, up, "/jwt/x", bearer(hs(claims)), challenge='Bearer error="invalid_token"')


def test_invalid_signature(gw):
    e, up = gw
    check_refused(e, up, "/jwt/x", bearer(hs({"iss": "alice-iss"}, secret="wrong-secret-of-some-length")),
                  challenge='Bearer error="invalid_token"')


def test_valid_signature_reaches_upstream_with_identity(gw):
    e, up = gw
    token = hs({"iss": "alice-iss", "exp": int(time.time()) + 600})
    r = get(e.port, "/jwt/x", headers=bearer(token))
    assert r.status == 200
    req = up.last()
    assert req.header("X-Consumer-Username") == "alice"
    assert req.header("X-Consumer-Custom-ID") == "1001"
    assert req.header("X-Consumer-Groups") == "admin, beta"
    assert req.header("X-Credential-Identifier")
    # from the query and the cookie too
    assert get(e.port, f"/jwt/x?jwt={token}").status == 200
    assert get(e.port, "/jwt/x", headers=[("Cookie", f"a=1; jwt={token}")]).status == 200
    # RS256 with its public key
    rs = jwt.encode({"iss": "alice-rsa"}, RSA_KEY, algorithm="RS256")
    assert get(e.port, "/jwt/x", headers=bearer(rs)).status == 200


@pytest.mark.parametrize("claims", [
    {"iss": "alice-iss", "exp": 1000},                              # expired long ago
    {"iss": "alice-iss", "nbf": 4102444800},                        # not before 2100
])
def test_invalid_registered_claim(gw, claims):
    e, up = gw
    check_refused(e, up, "/jwt/x", bearer(hs(claims)), challenge='Bearer error="invalid_token"')


def test_several_tokens(gw):
    e, up = gw
    token = hs({"iss": "alice-iss"})
    check_refused(e, up, f"/jwt/x?jwt={token}", bearer(token))
    check_refused(e, up, "/jwt/x", bearer(token) + bearer(token))


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "....", base64.b64encode(b"{}").decode()])
def test_not_a_jwt(gw, token):
    e, up = gw
    check_refused(e, up, "/jwt/x", bearer(token), challenge='Bearer error="invalid_token"')


# ---- attacks ------------------------------------------------------------------------------------

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_alg_none(gw):
    e, up = gw
    token = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(b'{"iss":"alice-iss"}') + "."
    check_refused(e, up, "/jwt/x", bearer(token))


def test_hs256_signed_with_the_rsa_public_key(gw):
    """Algorithm confusion: an RS256 credential must never accept an HS256 token keyed
    with its public key."""
    e, up = gw
    import hmac
    import hashlib
    head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(b'{"iss":"alice-rsa"}')
    sig = hmac.new(RSA_PUB.encode(), head.encode(), hashlib.sha256).digest()
    check_refused(e, up, "/jwt/x", bearer(head + "." + b64(sig)))


def test_tampered_payload_and_empty_signature(gw):
    e, up = gw
    good = hs({"iss": "alice-iss", "role": "user"})
    h, p, s = good.split(".")
    tampered = h + "." + b64(b'{"iss":"alice-iss","role":"admin"}') + "." + s
    check_refused(e, up, "/jwt/x", bearer(tampered))
    check_refused(e, up, "/jwt/x", bearer(h + "." + p + "."))


def test_huge_token_and_json_bomb_header(gw):
    e, up = gw
    big = hs({"iss": "alice-iss", "pad": "x" * 100_000})
    check_refused(e, up, "/jwt/x", bearer(big), status=431)     # refused with the head
    bomb = b64(b'{"alg":"HS256","x":' + b"[" * 2000 + b"]" * 2000 + b"}") + "." + b64(b'{"iss":"alice-iss"}') + ".c2ln"
    check_refused(e, up, "/jwt/x", bearer(bomb))
    assert get(e.port, "/jwt/x", headers=bearer(hs({"iss": "alice-iss"}))).status == 200


# ---- the verified-token cache ---------------------------------------------------------------------

def test_a_token_is_verified_once_and_its_expiry_still_holds(gw):
    e, up = gw
    token = hs({"iss": "alice-iss", "exp": int(time.time()) + 600})
    for _ in range(10):         # under keepalive_requests per connection
        with Conn(e.port) as c:
            for _ in range(1000):
                assert c.request("GET", "/jwt/x", headers=bearer(token)).status == 200
    verified = e.debug_log.read_text().count("jwt_auth: verified a new token")
    assert verified == 1, verified
    # a cached token past its exp is refused, without a new verification
    short = hs({"iss": "alice-iss", "exp": int(time.time()) + 2})
    assert get(e.port, "/jwt/x", headers=bearer(short)).status == 200
    time.sleep(2.2)
    check_refused(e, up, "/jwt/x", bearer(short))
    assert e.debug_log.read_text().count("jwt_auth: verified a new token") == 2


# ---- key-auth, basic-auth, hide --------------------------------------------------------------------

def test_key_auth(gw):
    e, up = gw
    check_refused(e, up, "/key/x", challenge='Key realm="edge"')
    check_refused(e, up, "/key/x", [("apikey", "wrong")])
    r = get(e.port, "/key/x", headers=[("apikey", "bob-key")])
    assert r.status == 200 and up.last().header("X-Consumer-Username") == "bob"
    assert up.last().header("apikey") == "bob-key"            # not hidden here
    assert get(e.port, "/key/x?apikey=alice-key-1&a=1").status == 200
    assert up.last().target.endswith("?apikey=alice-key-1&a=1")


def test_key_auth_hidden(gw):
    e, up = gw
    assert get(e.port, "/key-hidden/x", headers=[("APIKEY", "bob-key")]).status == 200
    assert up.last().header("apikey") is None
    assert get(e.port, "/key-hidden/x?a=1&apikey=bob-key&b=2").status == 200
    assert up.last().target.endswith("/key-hidden/x?a=1&b=2")
    assert get(e.port, "/key-hidden/y?apikey=bob-key").status == 200
    assert up.last().target.endswith("/key-hidden/y")


def basic(user, password):
    return [("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())]


def test_basic_auth(gw):
    e, up = gw
    check_refused(e, up, "/basic/x", challenge='Basic realm="staff only", charset="UTF-8"')
    check_refused(e, up, "/basic/x", basic("alice", "wrong"))
    check_refused(e, up, "/basic/x", basic("nobody", "wonderland"))
    check_refused(e, up, "/basic/x", [("Authorization", "Basic !!!notbase64")])
    r = get(e.port, "/basic/x", headers=basic("alice", "wonderland"))
    assert r.status == 200 and up.last().header("Authorization") is not None
    assert up.last().header("X-Consumer-Username") == "alice"
    assert get(e.port, "/basic-hidden/x", headers=basic("alice", "wonderland")).status == 200
    assert up.last().header("Authorization") is None


# ---- ACL, chaining, identity headers -----------------------------------------------------------------

def test_acl(gw):
    e, up = gw
    assert get(e.port, "/admin/x", headers=[("apikey", "alice-key-1")]).status == 200
    check_refused(e, up, "/admin/x", [("apikey", "bob-key")], status=403)
    check_refused(e, up, "/not-beta/x", [("apikey", "alice-key-1")], status=403)
    assert get(e.port, "/not-beta/x", headers=[("apikey", "bob-key")]).status == 200
    check_refused(e, up, "/acl-only/x", status=401)


def test_chain_first_method_wins_else_anonymous(gw):
    e, up = gw
    token = hs({"iss": "alice-iss"})
    assert get(e.port, "/chain/x", headers=bearer(token) + [("apikey", "bob-key")]).status == 200
    assert up.last().header("X-Consumer-Username") == "alice"
    assert get(e.port, "/chain/x", headers=[("apikey", "bob-key")]).status == 200
    assert up.last().header("X-Consumer-Username") == "bob"
    assert up.last().header("X-Anonymous-Consumer") is None
    assert get(e.port, "/chain/x").status == 200
    assert up.last().header("X-Consumer-Username") == "guest"
    assert up.last().header("X-Anonymous-Consumer") == "true"
    # a wrong credential is refused, not taken for an anonymous caller
    check_refused(e, up, "/chain/x", [("apikey", "wrong")])


def test_forged_identity_headers_are_removed(gw):
    e, up = gw
    forged = [("x-consumer-username", "root"), ("X-CONSUMER-GROUPS", "admin"),
              ("X-Consumer-Custom-Id", "0"), ("x-credential-identifier", "forged")]
    assert get(e.port, "/key/x", headers=forged + [("apikey", "bob-key")]).status == 200
    req = up.last()
    assert req.header_all("X-Consumer-Username") == ["bob"]
    assert req.header_all("X-Consumer-Groups") == ["users"]
    assert req.header_all("X-Consumer-Custom-ID") == []
    assert req.header_all("X-Credential-Identifier") != ["forged"]
    # on a route without authentication too
    assert get(e.port, "/open/x", headers=forged).status == 200
    assert all(up.last().header(n) is None for n, _ in forged)


def test_consumer_variable_in_logs_and_limits(edge, upstream, tmp_path):
    log = tmp_path / "a.log"
    e = edge("""
        http {
            consumers @CONSUMERS@;
            log_format who '$consumer|$consumer_groups';
            limit_count_zone $consumer zone=per_consumer:64k count=2 window=60s;
            server {
                listen 127.0.0.1:@PORT@;
                access_log @LOG@ who;
                location / { key_auth; limit_count zone=per_consumer; proxy_pass http://@UP@; }
            }
        }""", UP=upstream, CONSUMERS=consumers_file(tmp_path), LOG=log)
    statuses = [get(e.port, "/", headers=[("apikey", "bob-key")]).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert get(e.port, "/", headers=[("apikey", "alice-key-1")]).status == 200
    deadline = time.time() + 5
    while len(log.read_text().splitlines()) < 4 and time.time() < deadline:
        time.sleep(0.05)
    assert log.read_text().splitlines() == ["bob|users"] * 3 + ["alice|admin, beta"]


def test_a_refused_token_is_not_verified_again(gw):
    e, up = gw
    bad = hs({"iss": "alice-iss"}, secret="another-secret-of-some-length")
    with Conn(e.port) as c:
        for _ in range(200):
            assert c.request("GET", "/jwt/x", headers=bearer(bad)).status == 401
    assert e.debug_log.read_text().count("jwt_auth: refused a new token: invalid signature") == 1
    # not valid yet: checked again each time (it may become valid)
    early = hs({"iss": "alice-iss", "nbf": int(time.time()) + 3600})
    for _ in range(3):
        check_refused(e, up, "/jwt/x", bearer(early))
    assert e.debug_log.read_text().count("refused a new token: token not yet valid") == 3


@pytest.mark.parametrize("alg", ["RS384", "PS256", "PS512", "ES256", "ES384", "ES512", "EdDSA", "HS512"])
def test_every_algorithm_family(edge, upstream, tmp_path, alg):
    """HS, RS, ES, PS and EdDSA, each pinned: the right key passes, a token signed with
    another algorithm of the same key type is refused."""
    import yaml
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    if alg.startswith("HS"):
        private, public = "another-secret-of-a-decent-length-0123456789", None
        cred = {"key": "k", "algorithm": alg, "secret": private}
    else:
        if alg.startswith(("RS", "PS")):
            private = RSA_KEY
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
            private = ec.generate_private_key(curve)
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        cred = {"key": "k", "algorithm": alg, "public_key": public}
    path = tmp_path / "consumers.yaml"
    path.write_text(yaml.safe_dump({"consumers": [{"username": "u", "credentials": {"jwt": [cred]}}]}))
    e = edge("""
        http {
            consumers @CONSUMERS@;
            server {
                listen 127.0.0.1:@PORT@;
                location / { jwt_auth; jwt_maximum_expiration 1h; proxy_pass http://@UP@; }
            }
        }""", UP=upstream, CONSUMERS=path)
    now = int(time.time())
    good = jwt.encode({"iss": "k", "exp": now + 600}, private, algorithm=alg)
    assert get(e.port, "/", headers=bearer(good)).status == 200
    assert up_user(upstream) == "u"
    # exp too far in the future, or missing, under jwt_maximum_expiration
    far = jwt.encode({"iss": "k", "exp": now + 7200}, private, algorithm=alg)
    assert get(e.port, "/", headers=bearer(far)).status == 401
    assert get(e.port, "/", headers=bearer(jwt.encode({"iss": "k"}, private, algorithm=alg))).status == 401
    other = {"HS512": "HS256", "RS384": "RS256", "PS256": "RS256", "PS512": "PS256", "ES256": "ES384",
             "ES384": "ES256", "ES512": "ES384", "EdDSA": "HS256"}[alg]
    if other.startswith("HS"):
        wrong = jwt.encode({"iss": "k", "exp": now + 600}, "some-hmac-secret-of-a-decent-length", algorithm=other)
    elif other.startswith("ES") and not alg.startswith("ES"):
        wrong = None
    else:
        try:
            wrong = jwt.encode({"iss": "k", "exp": now + 600}, private, algorithm=other)
        except Exception:
            wrong = None
    if wrong is not None:
        assert get(e.port, "/", headers=bearer(wrong)).status == 401


def up_user(upstream):
    return upstream.last().header("X-Consumer-Username")
