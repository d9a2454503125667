"""The consumers file (`consumers PATH;`), password hashes and `edge consumers
hash-password`: loading into the ConsumerSet, every validation error naming the file,
the consumer, the field and the config's file:line (through `edge -t`), a reload with a
broken file (the old config keeps serving), JWKS files and algorithm pinning.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support import get

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.modules import consumers as C  # noqa: E402

pytestmark = pytest.mark.edge_only  # edge's own consumers file


def run_edge(*args, input=None, timeout=30):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "edge", *map(str, args)], cwd=REPO, env=env,
                          input=input, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- keys


@pytest.fixture(scope="module")
def keys():
    """PEM public keys (and their private halves) of each family, made once."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    def pem(private):
        return private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    return {"rsa": pem(rsa_key), "p256": pem(p256), "p384": pem(p384), "ed25519": pem(ed),
            "rsa_private": rsa_key, "p256_private": p256,
            "rsa_private_pem": rsa_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode()}


def jwk_of(private, **extra):
    """The public JWK (a dict) of a cryptography private key."""
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm
    from cryptography.hazmat.primitives.asymmetric import rsa

    algo = RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = json.loads(algo.to_jwk(private.public_key()))
    jwk.update(extra)
    return jwk


def write(path, text):
    path = Path(path)
    path.write_text(textwrap.dedent(text) if isinstance(text, str) else text)
    return path


def yaml_dump(doc):
    import yaml
    return yaml.safe_dump(doc, sort_keys=False)


PASSWORD_HASH = C.hash_password("alice's password")
HS_SECRET = b"alice-hs-secret-of-at-least-32-bytes"


def good_doc(keys, jwks_path=None):
    jwt_creds = [{"key": "alice-iss", "algorithm": "HS256", "secret": HS_SECRET.decode()},
                 {"key": "alice-rsa", "algorithm": "RS256", "public_key": keys["rsa"]}]
    if jwks_path:
        jwt_creds.append({"key": "alice-jwks", "jwks_file": str(jwks_path)})
    return {"consumers": [
        {"username": "alice", "custom_id": "1001", "groups": ["admin", "beta"],
         "credentials": {
             "key_auth": [{"key": "alice-key-1"}, {"key": "alice-key-2", "id": "alice-k2"}],
             "basic_auth": [{"username": "alice", "password_hash": PASSWORD_HASH}],
             "jwt": jwt_creds}},
        {"username": "bob", "groups": ["beta"],
         "credentials": {"key_auth": [{"key": "bob-key"}],
                         "jwt": [{"key": "bob-es", "algorithm": "ES256",
                                  "public_key": keys["p256"]},
                                 {"key": "bob-b64", "algorithm": "HS512",
                                  "secret": "c2VjcmV0IGJ5dGVz", "secret_base64": True}]}},
        {"username": "carol"},
    ]}


def conf_text(consumers_path, port=8080, body="ok", extra=""):
    return f"""worker_processes 1;
http {{
    consumers {consumers_path};
{extra}    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


def load(tmp_path, doc):
    """The ConsumerSet of `doc` (a dict, or YAML text) through the module's loader."""
    path = tmp_path / "consumers.yaml"
    write(path, doc if isinstance(doc, str) else yaml_dump(doc))
    return C.load_file(str(path), {}, "/etc/edge/edge.conf", 3)


# --------------------------------------------------------------------------- loading


def test_a_valid_file_loads_into_the_consumer_set(tmp_path, keys):
    jwks = write(tmp_path / "alice.jwks.json",
                 json.dumps({"keys": [jwk_of(keys["rsa_private"], kid="alice-jwks", alg="RS384")]}))
    cs = load(tmp_path, good_doc(keys, jwks))
    assert [c.username for c in cs.consumers] == ["alice", "bob", "carol"]
    alice, bob, carol = cs.consumers
    assert alice == C.Consumer("alice", "1001", ("admin", "beta"))
    assert carol == C.Consumer("carol", None, ())
    assert cs.by_username == {"alice": alice, "bob": bob, "carol": carol}
    assert cs.by_key == {"alice-key-1": (alice, "alice/key_auth/0"),
                         "alice-key-2": (alice, "alice-k2"),
                         "bob-key": (bob, "bob/key_auth/0")}
    assert cs.by_basic_user == {"alice": (alice, PASSWORD_HASH, "alice")}
    assert C.verify_password(cs.by_basic_user["alice"][1], b"alice's password")

    assert set(cs.by_jwt_key) == {"alice-iss", "alice-rsa", "alice-jwks", "bob-es", "bob-b64"}
    owner, hs = cs.by_jwt_key["alice-iss"]
    assert owner is alice
    assert (hs.key, hs.algorithm, hs.secret, hs.public_key, hs.jwks, hs.id) == \
        ("alice-iss", "HS256", HS_SECRET, None, None, "alice-iss")
    _, rs = cs.by_jwt_key["alice-rsa"]
    assert rs.algorithm == "RS256" and rs.secret is None and rs.public_key == keys["rsa"]
    assert cs.by_jwt_key["bob-b64"][1].secret == b"secret bytes"
    assert cs.by_jwt_key["bob-es"][1].algorithm == "ES256"
    # from the JWKS: the algorithm from the JWK's "alg", the PEM exported from it
    _, fromset = cs.by_jwt_key["alice-jwks"]
    assert fromset.algorithm == "RS384" and fromset.jwks["kid"] == "alice-jwks"
    assert fromset.public_key.strip() == keys["rsa"].strip()


def test_the_credentials_verify_tokens_with_pyjwt(tmp_path, keys):
    """What the auth module does with a credential: verify_key and algorithm straight
    into jwt.decode."""
    import jwt

    cs = load(tmp_path, good_doc(keys))
    _, hs = cs.by_jwt_key["alice-iss"]
    token = jwt.encode({"iss": "alice-iss"}, HS_SECRET, algorithm="HS256")
    assert jwt.decode(token, hs.verify_key, algorithms=[hs.algorithm])["iss"] == "alice-iss"
    _, rs = cs.by_jwt_key["alice-rsa"]
    token = jwt.encode({"iss": "alice-rsa"}, keys["rsa_private"], algorithm="RS256")
    assert jwt.decode(token, rs.verify_key, algorithms=[rs.algorithm])["iss"] == "alice-rsa"
    # the classic confusion: HS256 signed with the RSA public key as the secret
    forged = jwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda key: key  # pyjwt refuses a PEM secret
    bad = forged.encode(b'{"iss":"alice-rsa"}', keys["rsa"].encode(), algorithm="HS256")
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(bad, rs.verify_key, algorithms=[rs.algorithm])


def test_no_consumers_directive_is_none_and_an_empty_list_is_an_empty_set(tmp_path):
    from edge import cycle

    conf = write(tmp_path / "a.conf", conf_text("x").replace("    consumers x;\n", ""))
    assert cycle.load(str(conf)).consumers is None
    write(tmp_path / "consumers.yaml", "consumers: []\n")
    conf = write(tmp_path / "b.conf", conf_text(tmp_path / "consumers.yaml"))
    cs = cycle.load(str(conf)).consumers
    assert isinstance(cs, C.ConsumerSet) and cs.consumers == [] and cs.by_key == {}


def test_a_relative_path_is_taken_from_the_working_directory(tmp_path, keys, monkeypatch):
    from edge import cycle

    write(tmp_path / "consumers.yaml", yaml_dump(good_doc(keys)))
    (tmp_path / "sub").mkdir()
    conf = write(tmp_path / "sub" / "edge.conf", conf_text("consumers.yaml"))  # not sub/
    monkeypatch.chdir(tmp_path)
    cs = cycle.load(str(conf)).consumers
    assert len(cs) == 3 and cs.path == str(tmp_path / "consumers.yaml")


def test_every_process_of_a_generation_compiles_the_data_the_master_read(tmp_path, keys):
    """A worker compiles the master's ParsedConfig: it must not read the file again."""
    import pickle

    from edge import cycle

    cons = write(tmp_path / "consumers.yaml", yaml_dump(good_doc(keys)))
    conf = write(tmp_path / "edge.conf", conf_text(cons))
    master = cycle.load(str(conf))
    cons.write_text("consumers: [{username: mallory}]\n")
    parsed = pickle.loads(pickle.dumps(master.parsed))     # as sent to a worker
    worker = cycle.from_parsed(str(conf), parsed)
    assert [c.username for c in worker.consumers.consumers] == ["alice", "bob", "carol"]
    # a fresh load (a reload) reads the file again
    assert [c.username for c in cycle.load(str(conf)).consumers.consumers] == ["mallory"]


# --------------------------------------------------------------------------- errors

# (consumers document or YAML text, consumer as named in the error, field, words of the
# message). `K` is replaced by the fixture's keys when the entry is a callable.
ALICE = {"username": "alice"}


def _with(creds, **fields):
    return {"consumers": [{"username": "alice", **fields, "credentials": creds}]}


ERROR_CASES = [
    ("duplicate username",
     lambda k: {"consumers": [ALICE, {"username": "alice"}]},
     'consumer "alice"', "username", "duplicate username"),
    ("missing username",
     lambda k: {"consumers": [ALICE, {"groups": ["x"]}]},
     "consumers[1]", "username", "missing"),
    ("duplicate key across consumers",
     lambda k: {"consumers": [{"username": "alice", "credentials": {"key_auth": [{"key": "k1"}]}},
                              {"username": "bob", "credentials": {"key_auth": [{"key": "k1"}]}}]},
     'consumer "bob"', "credentials.key_auth[0].key", 'already used by consumer "alice"'),
    ("duplicate key in one consumer",
     lambda k: _with({"key_auth": [{"key": "k1"}, {"key": "k1"}]}),
     'consumer "alice"', "credentials.key_auth[1].key", "already used by this consumer"),
    ("duplicate basic username",
     lambda k: {"consumers": [
         {"username": "alice", "credentials": {"basic_auth": [
             {"username": "u", "password_hash": PASSWORD_HASH}]}},
         {"username": "bob", "credentials": {"basic_auth": [
             {"username": "u", "password_hash": PASSWORD_HASH}]}}]},
     'consumer "bob"', "credentials.basic_auth[0].username", "duplicate basic_auth username"),
    ("duplicate jwt key",
     lambda k: {"consumers": [
         {"username": "alice", "credentials": {"jwt": [
             {"key": "iss1", "algorithm": "HS256", "secret": "s"}]}},
         {"username": "bob", "credentials": {"jwt": [
             {"key": "iss1", "algorithm": "HS256", "secret": "t"}]}}]},
     'consumer "bob"', "credentials.jwt[0].key", "duplicate jwt key"),
    ("group not a token",
     lambda k: {"consumers": [{"username": "alice", "groups": ["ok", "not a token"]}]},
     'consumer "alice"', "groups[1]", "token"),
    ("custom_id not a string",
     lambda k: {"consumers": [{"username": "alice", "custom_id": 1001}]},
     'consumer "alice"', "custom_id", "must be a string"),
    ("plain password",
     lambda k: _with({"basic_auth": [{"username": "alice", "password": "hunter2"}]}),
     'consumer "alice"', "credentials.basic_auth[0].password", "edge consumers hash-password"),
    ("malformed hash",
     lambda k: _with({"basic_auth": [{"username": "alice", "password_hash": "scrypt$16384$8$1$xx"}]}),
     'consumer "alice"', "credentials.basic_auth[0].password_hash", "invalid password hash"),
    ("weak pbkdf2",
     lambda k: _with({"basic_auth": [{"username": "alice", "password_hash":
                                      "pbkdf2_sha256$1000$c2FsdHNhbHQ$" + "A" * 43}]}),
     'consumer "alice"', "credentials.basic_auth[0].password_hash", "iterations 1000"),
    ("alg none",
     lambda k: _with({"jwt": [{"key": "i0", "algorithm": "HS256", "secret": "s"},
                              {"key": "i1", "algorithm": "none", "secret": "s"}]}),
     'consumer "alice"', "credentials.jwt[1].algorithm", 'unsupported algorithm "none"'),
    ("HS with a public key",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "HS256", "public_key": k["rsa"]}]}),
     'consumer "alice"', "credentials.jwt[0].public_key", "algorithm confusion"),
    ("RS with a secret",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "RS256", "secret": "s"}]}),
     'consumer "alice"', "credentials.jwt[0].secret", "algorithm confusion"),
    ("HS with a PEM as the secret",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "HS256", "secret": k["rsa"]}]}),
     'consumer "alice"', "credentials.jwt[0].secret", "algorithm confusion"),
    ("ES256 with an RSA key",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "ES256", "public_key": k["rsa"]}]}),
     'consumer "alice"', "credentials.jwt[0].public_key", "needs an EC public key"),
    ("ES256 with a P-384 key",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "ES256", "public_key": k["p384"]}]}),
     'consumer "alice"', "credentials.jwt[0].public_key", "secp256r1"),
    ("EdDSA with an EC key",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "EdDSA", "public_key": k["p256"]}]}),
     'consumer "alice"', "credentials.jwt[0].public_key", "Ed25519"),
    ("a private key",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "RS256",
                               "public_key": k["rsa_private_pem"]}]}),
     'consumer "alice"', "credentials.jwt[0].public_key", "private key"),
    ("garbage PEM",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "RS256", "public_key":
                               "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}]}),
     'consumer "alice"', "credentials.jwt[0].public_key", "not a valid PEM public key"),
    ("no key material",
     lambda k: _with({"jwt": [{"key": "i", "algorithm": "RS256"}]}),
     'consumer "alice"', "credentials.jwt[0]", "needs a secret"),
    ("unknown field",
     lambda k: _with({"key_auth": [{"key": "k", "kee": "x"}]}),
     'consumer "alice"', "credentials.key_auth[0].kee", "unknown field"),
    ("unknown credential type",
     lambda k: _with({"hmac_auth": [{"key": "k"}]}),
     'consumer "alice"', "credentials.hmac_auth", "unknown field"),
]


def _error_conf(tmp_path, keys, doc):
    cons = tmp_path / "consumers.yaml"
    cons.write_text(doc if isinstance(doc, str) else yaml_dump(doc))
    conf = write(tmp_path / "edge.conf", conf_text(cons))
    return cons, conf, 3      # `consumers` is on line 3 of conf_text


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_an_error_names_file_consumer_field_and_directive(tmp_path, keys, case):
    """In process, case by case (cycle.load gives the text `edge -t` prints)."""
    from edge import cycle
    from edge.config import ConfigError

    _, make, who, field, words = case
    cons, conf, line = _error_conf(tmp_path, keys, make(keys))
    with pytest.raises(ConfigError) as e:
        cycle.load(str(conf))
    text = str(e.value)
    assert text.startswith(f"consumers file {cons}: {who}: {field}: "), text
    assert words in text, text
    assert text.endswith(f" in {conf}:{line}"), text
    # never a secret in an error
    for secret in ("hunter2", "alice-hs-secret", "BEGIN"):
        assert secret not in text


def test_edge_t_prints_each_error_with_its_location(tmp_path, keys):
    """`edge -t` on a few of the cases, in one subprocess each (the compiled import costs
    most of the time)."""
    picked = [c for c in ERROR_CASES if c[0] in ("alg none", "duplicate key across consumers",
                                                  "plain password", "missing username")]
    for name, make, who, field, words in picked:
        d = tmp_path / name.replace(" ", "_")
        d.mkdir()
        cons, conf, line = _error_conf(d, keys, make(keys))
        r = run_edge("-t", "-c", conf)
        assert r.returncode == 1, (name, r.stderr)
        assert f"edge: [emerg] consumers file {cons}: {who}: {field}: " in r.stderr, r.stderr
        assert f" in {conf}:{line}\n" in r.stderr, r.stderr
        assert words in r.stderr
        assert f"edge: configuration file {conf} test failed" in r.stderr
        assert "Traceback" not in r.stderr


def test_edge_t_example_from_the_brief(tmp_path, keys):
    doc = _with({"jwt": [{"key": "i0", "algorithm": "HS256", "secret": "s"},
                         {"key": "i1", "algorithm": "none", "secret": "s"}]})
    cons, conf, line = _error_conf(tmp_path, keys, doc)
    r = run_edge("-t", "-c", conf)
    assert (f'edge: [emerg] consumers file {cons}: consumer "alice": credentials.jwt[1].algorithm: '
            f'unsupported algorithm "none" in {conf}:{line}\n') in r.stderr


@pytest.mark.parametrize("text, words", [
    ("consumers: [\n  {username: alice\n", "invalid YAML at line"),
    ("consumers:\n  - username: alice\n    username: bob\n", 'duplicate field "username"'),
    ("- alice\n", 'one field, "consumers"'),
    ("consumers: {alice: 1}\n", '"consumers" must be a list'),
    ("", 'one field, "consumers"'),
])
def test_file_level_errors(tmp_path, text, words):
    from edge.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert str(e.value).startswith(f"consumers file {tmp_path / 'consumers.yaml'}: ")
    assert words in str(e.value)
    assert str(e.value).endswith(" in /etc/edge/edge.conf:3")


def test_a_missing_file(tmp_path):
    from edge.config import ConfigError

    with pytest.raises(ConfigError) as e:
        C.load_file(str(tmp_path / "nope.yaml"), {}, "/etc/edge/edge.conf", 7)
    assert "cannot be read (No such file or directory) in /etc/edge/edge.conf:7" in str(e.value)


# --------------------------------------------------------------------------- JWKS


def _jwks_doc(path, **cred):
    return _with({"jwt": [{"key": "alice-jwks", "jwks_file": str(path), **cred}]})


def test_jwks_the_key_is_chosen_by_kid_else_the_only_key(tmp_path, keys):
    many = write(tmp_path / "many.json", json.dumps({"keys": [
        jwk_of(keys["p256_private"], kid="other", alg="ES256"),
        jwk_of(keys["rsa_private"], kid="alice-jwks", use="sig")]}))
    cs = load(tmp_path, _jwks_doc(many, algorithm="RS256"))
    cred = cs.by_jwt_key["alice-jwks"][1]
    assert cred.jwks["kid"] == "alice-jwks" and cred.algorithm == "RS256"
    assert cred.public_key.strip() == keys["rsa"].strip()

    one = write(tmp_path / "one.json", json.dumps({"keys": [jwk_of(keys["p256_private"])]}))
    cred = load(tmp_path, _jwks_doc(one, algorithm="ES256")).by_jwt_key["alice-jwks"][1]
    assert cred.algorithm == "ES256" and cred.public_key.strip() == keys["p256"].strip()


@pytest.mark.parametrize("setup, cred, field, words", [
    # several keys, none with the credential's kid
    (lambda k: {"keys": [jwk_of(k["rsa_private"], kid="a"), jwk_of(k["p256_private"], kid="b")]},
     {"algorithm": "RS256"}, "jwks_file", 'none with kid "alice-jwks"'),
    # no algorithm anywhere
    (lambda k: {"keys": [jwk_of(k["rsa_private"])]}, {}, "algorithm", 'the JWK has no "alg"'),
    # the JWK's alg differs from the credential's
    (lambda k: {"keys": [jwk_of(k["rsa_private"], alg="RS512")]}, {"algorithm": "RS256"},
     "algorithm", 'the JWK is for "RS512"'),
    # an HS credential cannot take a JWKS
    (lambda k: {"keys": [jwk_of(k["rsa_private"])]}, {"algorithm": "HS256"},
     "jwks_file", "algorithm confusion"),
    # a symmetric key in the set
    (lambda k: {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "alice-jwks"}]},
     {"algorithm": "RS256"}, "jwks_file", "private or symmetric"),
    # the key's type does not fit the algorithm
    (lambda k: {"keys": [jwk_of(k["rsa_private"])]}, {"algorithm": "ES256"},
     "jwks_file", "not a valid ES256 key"),
    # not a set
    (lambda k: {"kty": "RSA"}, {"algorithm": "RS256"}, "jwks_file", "not a JSON Web Key Set"),
    (lambda k: "{not json", {"algorithm": "RS256"}, "jwks_file", "is not JSON"),
])
def test_jwks_errors(tmp_path, keys, setup, cred, field, words):
    from edge.config import ConfigError

    content = setup(keys)
    jwks = write(tmp_path / "set.json", content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as e:
        load(tmp_path, _jwks_doc(jwks, **cred))
    assert f'consumer "alice": credentials.jwt[0].{field}: ' in str(e.value), str(e.value)
    assert words in str(e.value), str(e.value)


def test_a_missing_jwks_file(tmp_path):
    from edge.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load(tmp_path, _jwks_doc(tmp_path / "gone.json", algorithm="RS256"))
    assert "credentials.jwt[0].jwks_file: " in str(e.value)
    assert "cannot be read (No such file or directory)" in str(e.value)


# --------------------------------------------------------------------------- passwords


@pytest.mark.parametrize("scheme, prefix", [("scrypt", "scrypt$16384$8$1$"),
                                            ("pbkdf2", "pbkdf2_sha256$600000$")])
def test_hash_and_verify(scheme, prefix):
    h = C.hash_password("correct horse", scheme)
    assert h.startswith(prefix)
    assert C.hash_password("correct horse", scheme) != h       # a fresh salt each time
    assert C.verify_password(h, b"correct horse")
    assert not C.verify_password(h, b"correct hors")
    assert not C.verify_password(h, b"")
    C.parse_password_hash(h)
    # a tampered hash: one character of the digest, or of the salt, or a parameter
    parts = h.split("$")
    digest = parts[-1]
    tampered = "$".join(parts[:-1] + [("B" if digest[0] != "B" else "C") + digest[1:]])
    assert not C.verify_password(tampered, b"correct horse")
    salt = parts[-2]
    tampered = "$".join(parts[:-2] + [("B" if salt[0] != "B" else "C") + salt[1:], digest])
    assert not C.verify_password(tampered, b"correct horse")
    assert not C.verify_password(h.replace("$600000$", "$600001$").replace("$8$1$", "$9$1$"),
                                 b"correct horse")
    assert not C.verify_password("garbage", b"correct horse")


def test_hash_password_from_the_cli_round_trips():
    r = run_edge("consumers", "hash-password", input="pa55 word\n")
    assert r.returncode == 0, r.stderr
    h = r.stdout.strip()
    assert h.startswith("scrypt$") and C.verify_password(h, b"pa55 word")
    r = run_edge("consumers", "hash-password", "--scheme", "pbkdf2", input="pa55 word")
    assert r.returncode == 0, r.stderr
    h = r.stdout.strip()
    assert h.startswith("pbkdf2_sha256$600000$") and C.verify_password(h, b"pa55 word")
    assert not C.verify_password(h, b"pa55 word\n")
    r = run_edge("consumers", "hash-password", input="")
    assert r.returncode == 1 and "empty password" in r.stderr


def test_hash_password_does_not_import_the_compiled_extension():
    code = ("import sys; from edge import cli; sys.stdin = open('/dev/null');"
            "import io; sys.stdin = io.TextIOWrapper(io.BytesIO(b'x\\n'));"
            "cli.main(['consumers', 'hash-password', '--scheme', 'pbkdf2']);"
            "assert not [m for m in sys.modules if m.startswith('edge._core')], 'compiled'")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pbkdf2_sha256$")


# --------------------------------------------------------------------------- reload


def _wait_log(e, needle, timeout=10.0):
    deadline = time.monotonic() + timeout
    while needle not in e.error_log:
        assert time.monotonic() < deadline, e.report()
        time.sleep(0.02)


def _wait_body(port, body, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        r = get(port, "/")
        if r.body == body:
            return r
        assert time.monotonic() < deadline, r
        time.sleep(0.02)


@pytest.mark.timeout(60)
def test_a_broken_consumers_file_fails_the_reload_and_the_old_config_serves(edge, tmp_path, keys):
    cons = tmp_path / "consumers.yaml"
    cons.write_text(yaml_dump(good_doc(keys)))
    template = """
http {
    consumers @CONS@;
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "v@V@"; }
    }
}
"""
    e = edge(template.replace("@V@", "0"), CONS=cons)
    assert get(e.port, "/").body == b"v0"
    line = e.line_of("consumers ")

    # a new config (v1) with a broken consumers file: refused, v0 keeps serving
    good = cons.read_text()
    cons.write_text(yaml_dump(_with({"jwt": [{"key": "i", "algorithm": "none", "secret": "s"}]})))
    e.conf_path.write_text(e.conf_path.read_text().replace('"v0"', '"v1"'))
    e.send_signal(signal.SIGHUP)
    _wait_log(e, f'consumers file {cons}: consumer "alice": credentials.jwt[0].algorithm: '
                 f'unsupported algorithm "none" in {e.conf_path}:{line}')
    assert "the previous configuration keeps serving" in e.error_log
    for _ in range(5):
        assert get(e.port, "/").body == b"v0"

    # fixed: the next reload applies
    cons.write_text(good)
    e.send_signal(signal.SIGHUP)
    _wait_body(e.port, b"v1")
