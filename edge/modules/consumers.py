"""Consumers: who may call, and with which credentials (`consumers PATH;` in `http`).

Consumers are data, not config: a YAML file (docs/auth.md) that the config names, read
and validated when the config is loaded, so `edge -t` checks it and a reload reads it
again; an error in it fails the load like an error in the config, and names the file,
the consumer, the field and the `consumers` directive's file:line. The result is a
`ConsumerSet` on `runtime.consumers` / `cycle.consumers`, which the auth module
(key_auth, basic_auth, jwt_auth, acl) compiles into its handlers.

The file's bytes (and those of every `jwks_file`) are kept in the ParsedConfig's
`data_files`, so the workers and the control process, which compile the master's
ParsedConfig, build exactly the consumers the master tested, even if the files on disk
have changed since.

Also here, with the standard library only: `hash_password` / `verify_password` (scrypt
and PBKDF2-HMAC-SHA256, self-describing strings) and `edge consumers hash-password`
(`main`). Nothing here imports the compiled extension.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import sys
from dataclasses import dataclass, field

from edge.config import HTTP, ConfigError, Directive

# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Consumer:
    username: str
    custom_id: str | None
    groups: tuple          # tuple[str, ...], in file order, without repeats


@dataclass(frozen=True)
class JwtCredential:
    """One `credentials.jwt` entry. `algorithm` is the only algorithm a token verified
    with this credential may use. HS*: `secret` (bytes, base64-decoded already when the
    file said `secret_base64: true`). Others: `public_key` is the PEM of the public key
    (written in the file, or exported from the JWK), `jwks` the JWK (a dict, as in the
    file) when it came from a `jwks_file`, else None. `verify_key` is what
    `jwt.decode(token, credential.verify_key, algorithms=[credential.algorithm])`
    takes: the secret bytes, or the loaded `cryptography` public key (no PEM parsing per
    request). `id` is the credential identifier (X-Credential-Identifier): the file's
    `id`, else the `key`."""

    key: str
    algorithm: str
    secret: bytes | None
    public_key: str | None
    jwks: dict | None
    id: str
    verify_key: object = field(default=None, compare=False, repr=False)


@dataclass
class ConsumerSet:
    """Every consumer of the file and the lookup tables of their credentials."""

    path: str = ""
    consumers: list = field(default_factory=list)      # list[Consumer], in file order
    by_username: dict = field(default_factory=dict)    # username -> Consumer
    by_key: dict = field(default_factory=dict)         # key_auth key -> (Consumer, credential id)
    # basic username -> (Consumer, password_hash, credential id)
    by_basic_user: dict = field(default_factory=dict)
    by_jwt_key: dict = field(default_factory=dict)     # jwt key -> (Consumer, JwtCredential)

    def __len__(self):
        return len(self.consumers)


HS_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
                         "PS256", "PS384", "PS512", "EdDSA")
ALGORITHMS = HS_ALGORITHMS + ASYMMETRIC_ALGORITHMS

# RFC 9110 tchar: what a group may be made of (X-Consumer-Groups is a comma list).
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Names that go into headers and logs: visible ASCII, inner spaces allowed.
_NAME_RE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
# Secrets sent by clients (API keys): visible ASCII, no spaces.
_KEY_RE = re.compile(r"[\x21-\x7e]+")

# --------------------------------------------------------------------------- passwords

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
PBKDF2_ITERATIONS = 600_000
SALT_BYTES = 16
HASH_BYTES = 32

# What a hash in the file may ask for. The floors are the parameters hash_password
# writes (OWASP's current advice), so a weak hash is refused rather than served; the
# ceilings bound what one verification may cost a worker.
SCRYPT_N_RANGE = (2 ** 14, 2 ** 20)
SCRYPT_R_RANGE = (8, 32)
SCRYPT_P_RANGE = (1, 16)
PBKDF2_RANGE = (PBKDF2_ITERATIONS, 10_000_000)
SALT_RANGE = (8, 64)
HASH_RANGE = (16, 64)

SCHEMES = ("scrypt", "pbkdf2")


def _b64(data):
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text):
    if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", text):
        raise ValueError("not base64")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _int(text, name, lo, hi):
    if not text.isdigit() or text.startswith("0"):
        raise ValueError(f"{name} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise ValueError(f"{name} {value} is outside {lo}..{hi}")
    return value


def parse_password_hash(password_hash):
    """``(scheme, params, salt, digest)`` for a hash string, or ValueError saying what
    is wrong (never quoting the hash). Formats:
    ``scrypt$N$r$p$SALT$HASH`` and ``pbkdf2_sha256$ITERATIONS$SALT$HASH``, SALT and
    HASH in standard base64 (padding optional)."""
    if not isinstance(password_hash, str):
        raise ValueError("must be a string")
    parts = password_hash.split("$")
    scheme = parts[0]
    if scheme == "scrypt":
        if len(parts) != 6:
            raise ValueError("a scrypt hash is scrypt$N$r$p$salt$hash")
        n = _int(parts[1], "N", *SCRYPT_N_RANGE)
        if n & (n - 1):
            raise ValueError("N must be a power of 2")
        params = (n, _int(parts[2], "r", *SCRYPT_R_RANGE), _int(parts[3], "p", *SCRYPT_P_RANGE))
        salt_text, hash_text = parts[4], parts[5]
    elif scheme == "pbkdf2_sha256":
        if len(parts) != 4:
            raise ValueError("a pbkdf2_sha256 hash is pbkdf2_sha256$iterations$salt$hash")
        params = (_int(parts[1], "iterations", *PBKDF2_RANGE),)
        salt_text, hash_text = parts[2], parts[3]
    else:
        raise ValueError('unknown scheme (the hash must start with "scrypt$" or '
                         '"pbkdf2_sha256$")')
    try:
        salt = _unb64(salt_text)
    except (ValueError, binascii.Error):
        raise ValueError("the salt is not base64") from None
    try:
        digest = _unb64(hash_text)
    except (ValueError, binascii.Error):
        raise ValueError("the hash is not base64") from None
    if not SALT_RANGE[0] <= len(salt) <= SALT_RANGE[1]:
        raise ValueError(f"the salt must be {SALT_RANGE[0]} to {SALT_RANGE[1]} bytes")
    if not HASH_RANGE[0] <= len(digest) <= HASH_RANGE[1]:
        raise ValueError(f"the hash must be {HASH_RANGE[0]} to {HASH_RANGE[1]} bytes")
    return scheme, params, salt, digest


def _derive(scheme, params, salt, password, length):
    if scheme == "scrypt":
        n, r, p = params
        return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length,
                              maxmem=128 * r * (n + p + 2) + (1 << 20))
    return hashlib.pbkdf2_hmac("sha256", password, salt, params[0], length)


def hash_password(password, scheme="scrypt"):
    """A new hash of ``password`` (str, UTF-8, or bytes) with a random salt:
    ``scrypt$16384$8$1$SALT$HASH`` or ``pbkdf2_sha256$600000$SALT$HASH``."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    salt = os.urandom(SALT_BYTES)
    if scheme == "scrypt":
        params = (SCRYPT_N, SCRYPT_R, SCRYPT_P)
        digest = _derive("scrypt", params, salt, password, HASH_BYTES)
        return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"
    if scheme in ("pbkdf2", "pbkdf2_sha256"):
        digest = _derive("pbkdf2_sha256", (PBKDF2_ITERATIONS,), salt, password, HASH_BYTES)
        return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(digest)}"
    raise ValueError(f'unknown password hash scheme "{scheme}" (scrypt or pbkdf2)')


def verify_password(password_hash, password):
    """True if ``password`` (bytes; str is taken as UTF-8) matches ``password_hash``.
    The comparison takes constant time (hmac.compare_digest); a malformed hash is False.
    The cost is the hash's: some 50 ms for scrypt N=2**14, more for PBKDF2 600,000."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    try:
        scheme, params, salt, digest = parse_password_hash(password_hash)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(scheme, params, salt, password, len(digest)), digest)


# --------------------------------------------------------------------------- the directive

DIRECTIVES = [
    Directive("consumers", (HTTP,), (1, 1), syntax="consumers path;",
              doc="The consumers file (YAML: usernames, groups and their key_auth, basic_auth "
                  "and jwt credentials; docs/auth.md), read and validated with the config. "
                  "A relative path is taken from the working directory."),
]


def compile_http(http, runtime):
    path = http.local("consumers")
    if path is None:
        runtime.consumers = None
        return
    node = http.node("consumers")
    data_files = getattr(runtime, "data_files", None)
    if data_files is None:
        data_files = {}
    runtime.consumers = load_file(path, data_files, node.file, node.line)


def load_file(path, data_files=None, conf_file=None, conf_line=None):
    """The ConsumerSet of the file at ``path`` (relative to the working directory).
    ``data_files`` (path -> bytes) is read first and filled with what is read from disk.
    Raises ConfigError located at ``conf_file``:``conf_line``."""
    data_files = {} if data_files is None else data_files
    path = os.path.abspath(path)
    loader = _Loader(path, data_files, conf_file, conf_line)
    return loader.load()


# --------------------------------------------------------------------------- loading


class _Invalid(Exception):
    """An error in the file: ``where`` (consumer) and ``field`` are filled in on the
    way up."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.message = message
        self.field = field


def _duplicate_checking_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:
                dup = False
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate field "{key}"', key_node.start_mark)
            try:
                seen.add(key)
            except TypeError:
                pass
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def _read(path, data_files):
    data = data_files.get(path)
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
        data_files[path] = data
    return data


class _Loader:
    def __init__(self, path, data_files, conf_file, conf_line):
        self.path = path
        self.data_files = data_files
        self.conf_file = conf_file
        self.conf_line = conf_line

    def fail(self, message):
        raise ConfigError(f"consumers file {self.path}: {message}", self.conf_file, self.conf_line)

    def load(self):
        import yaml

        try:
            data = _read(self.path, self.data_files)
        except OSError as e:
            self.fail(f"cannot be read ({e.strerror})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("is not UTF-8")
        try:
            doc = yaml.load(text, Loader=_duplicate_checking_loader())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = getattr(e, "problem", None) or str(e)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            self.fail(f"invalid YAML{where}: {problem}")
        if not isinstance(doc, dict) or set(doc) != {"consumers"}:
            self.fail('must be a mapping with one field, "consumers", a list of consumers')
        entries = doc["consumers"]
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            self.fail('"consumers" must be a list')
        result = ConsumerSet(path=self.path)
        owners = {"key": {}, "basic": {}, "jwt": {}}
        for index, entry in enumerate(entries):
            name = None
            if isinstance(entry, dict) and isinstance(entry.get("username"), str):
                name = entry["username"]
            where = f'consumer "{name}"' if name else f"consumers[{index}]"
            try:
                self.consumer(entry, result, owners)
            except _Invalid as e:
                self.fail(f"{where}: {e.field}: {e.message}" if e.field else f"{where}: {e.message}")
        return result

    # -- one consumer --------------------------------------------------------------

    def consumer(self, entry, result, owners):
        if not isinstance(entry, dict):
            raise _Invalid("must be a mapping (username, custom_id, groups, credentials)")
        _only(entry, ("username", "custom_id", "groups", "credentials"), "")
        username = entry.get("username")
        if username is None:
            raise _Invalid("missing", "username")
        _name(username, "username")
        if username in result.by_username:
            raise _Invalid("duplicate username", "username")
        custom_id = entry.get("custom_id")
        if custom_id is not None:
            if isinstance(custom_id, (int, float)) and not isinstance(custom_id, bool):
                raise _Invalid(f'must be a string (quote it: "{custom_id}")', "custom_id")
            _name(custom_id, "custom_id")
        groups = entry.get("groups")
        if groups is None:
            groups = []
        if not isinstance(groups, list):
            raise _Invalid("must be a list of group names", "groups")
        seen = []
        for i, group in enumerate(groups):
            if not isinstance(group, str) or not _TOKEN_RE.fullmatch(group):
                raise _Invalid("a group is a token (letters, digits and !#$%&'*+-.^_`|~; "
                               "no spaces or commas)", f"groups[{i}]")
            if group not in seen:
                seen.append(group)
        consumer = Consumer(username, custom_id, tuple(seen))

        credentials = entry.get("credentials")
        if credentials is None:
            credentials = {}
        if not isinstance(credentials, dict):
            raise _Invalid("must be a mapping (key_auth, basic_auth, jwt)", "credentials")
        _only(credentials, ("key_auth", "basic_auth", "jwt"), "credentials")
        lists = {}
        for kind in ("key_auth", "basic_auth", "jwt"):
            items = credentials.get(kind)
            if items is None:
                items = []
            if isinstance(items, dict):
                items = [items]
            if not isinstance(items, list):
                raise _Invalid("must be a list", f"credentials.{kind}")
            lists[kind] = items

        keys, basics, jwts = [], [], []
        for i, item in enumerate(lists["key_auth"]):
            keys.append(self.key_auth(item, f"credentials.key_auth[{i}]", username, i, owners))
        for i, item in enumerate(lists["basic_auth"]):
            basics.append(self.basic_auth(item, f"credentials.basic_auth[{i}]", username, owners))
        for i, item in enumerate(lists["jwt"]):
            jwts.append(self.jwt(item, f"credentials.jwt[{i}]", username, owners))

        # All checked: record the consumer and its credentials.
        result.consumers.append(consumer)
        result.by_username[username] = consumer
        for key, ident in keys:
            result.by_key[key] = (consumer, ident)
        for user, password_hash, ident in basics:
            result.by_basic_user[user] = (consumer, password_hash, ident)
        for cred in jwts:
            result.by_jwt_key[cred.key] = (consumer, cred)

    # -- credentials ---------------------------------------------------------------

    def key_auth(self, item, where, username, index, owners):
        if not isinstance(item, dict):
            raise _Invalid("must be a mapping ({key: ...})", where)
        _only(item, ("key", "id"), where)
        key = item.get("key")
        if key is None:
            raise _Invalid("missing", f"{where}.key")
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise _Invalid("must be a string of visible ASCII characters, without spaces",
                           f"{where}.key")
        _unique(owners["key"], key, f"{where}.key", "key", username)
        ident = _ident(item, where) or f"{username}/key_auth/{index}"
        return key, ident

    def basic_auth(self, item, where, username, owners):
        if not isinstance(item, dict):
            raise _Invalid("must be a mapping ({username: ..., password_hash: ...})", where)
        if "password" in item:
            raise _Invalid("plain passwords are refused: store a hash made by "
                           "`edge consumers hash-password` in password_hash", f"{where}.password")
        _only(item, ("username", "password_hash", "id"), where)
        user = item.get("username")
        if user is None:
            raise _Invalid("missing", f"{where}.username")
        _name(user, f"{where}.username")
        if ":" in user:
            raise _Invalid('must not contain ":" (RFC 7617)', f"{where}.username")
        _unique(owners["basic"], user, f"{where}.username", "basic_auth username", username)
        password_hash = item.get("password_hash")
        if password_hash is None:
            raise _Invalid("missing (make one with `edge consumers hash-password`)",
                           f"{where}.password_hash")
        try:
            parse_password_hash(password_hash)
        except ValueError as e:
            raise _Invalid(f"invalid password hash: {e}", f"{where}.password_hash") from None
        return user, password_hash, _ident(item, where) or user

    def jwt(self, item, where, username, owners):
        if not isinstance(item, dict):
            raise _Invalid("must be a mapping ({key, algorithm, secret | public_key | "
                           "jwks_file})", where)
        _only(item, ("key", "algorithm", "secret", "secret_base64", "public_key", "jwks_file",
                     "id"), where)
        key = item.get("key")
        if key is None:
            raise _Invalid("missing (the value of the token's key claim, `iss` by default)",
                           f"{where}.key")
        _name(key, f"{where}.key")
        _unique(owners["jwt"], key, f"{where}.key", "jwt key", username)
        ident = _ident(item, where) or key

        algorithm = item.get("algorithm")
        if algorithm is not None:
            if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
                # The supported ones are listed in docs/auth.md and `edge consumers -h`.
                raise _Invalid(f'unsupported algorithm "{algorithm}"', f"{where}.algorithm")
        sources = [name for name in ("secret", "public_key", "jwks_file") if name in item]
        if "secret_base64" in item and not isinstance(item["secret_base64"], bool):
            raise _Invalid("must be true or false", f"{where}.secret_base64")
        if item.get("secret_base64") and "secret" not in item:
            raise _Invalid("applies to a secret only", f"{where}.secret_base64")
        if len(sources) > 1:
            raise _Invalid(f'{" and ".join(sources)} are exclusive: give one', where)
        if not sources:
            raise _Invalid("needs a secret (HS256/384/512), or a public_key or jwks_file "
                           "(the other algorithms)", where)
        source = sources[0]

        if source == "secret":
            if algorithm is None:
                raise _Invalid("missing (HS256, HS384 or HS512 for a secret)",
                               f"{where}.algorithm")
            if algorithm not in HS_ALGORITHMS:
                raise _Invalid(f"{algorithm} takes a public_key or a jwks_file, not a secret "
                               f"(algorithm confusion)", f"{where}.secret")
            secret = _secret(item, where)
            return JwtCredential(key, algorithm, secret, None, None, ident, verify_key=secret)

        if algorithm in HS_ALGORITHMS:
            raise _Invalid(f"{algorithm} takes a secret, not a {source} (algorithm confusion)",
                           f"{where}.{source}")
        if source == "public_key":
            if algorithm is None:
                raise _Invalid("missing (the algorithm of a public_key must be given)",
                               f"{where}.algorithm")
            pem = item["public_key"]
            public = _load_pem(pem, f"{where}.public_key")
            _check_key_type(public, algorithm, f"{where}.public_key")
            return JwtCredential(key, algorithm, None, pem, None, ident, verify_key=public)

        jwk, public, algorithm = self.jwks(item["jwks_file"], key, algorithm, where)
        return JwtCredential(key, algorithm, None, _pem_of(public), jwk, ident, verify_key=public)

    def jwks(self, jwks_path, key, algorithm, where):
        """The JWK of ``jwks_file`` for the credential ``key``: the key whose ``kid`` is
        ``key``, else the set's only key."""
        from jwt import PyJWK, PyJWKSet
        from jwt.exceptions import PyJWTError

        field_ = f"{where}.jwks_file"
        if not isinstance(jwks_path, str) or not jwks_path:
            raise _Invalid("must be a path", field_)
        path = os.path.abspath(jwks_path)
        try:
            data = _read(path, self.data_files)
        except OSError as e:
            raise _Invalid(f"{path} cannot be read ({e.strerror})", field_) from None
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise _Invalid(f"{path} is not JSON ({e})", field_) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
            raise _Invalid(f'{path} is not a JSON Web Key Set (an object with a "keys" list)',
                           field_)
        entries = doc["keys"]
        if not all(isinstance(e, dict) for e in entries):
            raise _Invalid(f'{path}: every entry of "keys" must be an object', field_)
        try:
            PyJWKSet.from_dict(doc)
        except PyJWTError as e:
            raise _Invalid(f"{path} is not a usable JSON Web Key Set "
                           f"({_short(e)})", field_) from None
        matching = [i for i, e in enumerate(entries) if e.get("kid") == key]
        if len(matching) > 1:
            raise _Invalid(f'{path} has {len(matching)} keys with kid "{key}"', field_)
        if matching:
            index = matching[0]
        elif len(entries) == 1:
            index = 0
        else:
            raise _Invalid(f'{path} has {len(entries)} keys and none with kid "{key}" (the '
                           f'credential\'s key chooses the JWK by its kid)', field_)
        jwk = entries[index]
        what = f"{path}: keys[{index}]"
        if "d" in jwk or jwk.get("kty") == "oct":
            raise _Invalid(f"{what} is a private or symmetric key; a jwks_file holds public "
                           f"keys (an HS credential takes a secret)", field_)
        if jwk.get("use") not in (None, "sig"):
            raise _Invalid(f'{what} has "use": "{jwk.get("use")}", not "sig"', field_)
        jwk_alg = jwk.get("alg")
        if jwk_alg is not None and algorithm is not None and jwk_alg != algorithm:
            raise _Invalid(f'the JWK is for "{jwk_alg}", the credential says "{algorithm}"',
                           f"{where}.algorithm")
        if algorithm is None:
            if jwk_alg is None:
                raise _Invalid('missing (the JWK has no "alg" either)', f"{where}.algorithm")
            if jwk_alg not in ALGORITHMS:
                raise _Invalid(f'unsupported algorithm "{jwk_alg}" (the JWK\'s "alg")',
                               f"{where}.algorithm")
            algorithm = jwk_alg
        if algorithm in HS_ALGORITHMS:
            raise _Invalid(f"{algorithm} takes a secret, not a jwks_file (algorithm confusion)",
                           field_)
        try:
            public = PyJWK(jwk, algorithm).key
        except PyJWTError as e:
            raise _Invalid(f"{what} is not a valid {algorithm} key ({_short(e)})", field_) from None
        _check_key_type(public, algorithm, field_)
        return jwk, public, algorithm


# --------------------------------------------------------------------------- checks


def _only(mapping, allowed, where):
    for name in mapping:
        if name not in allowed:
            field_ = f"{where}.{name}" if where else str(name)
            raise _Invalid(f'unknown field (expected {", ".join(allowed)})', field_)


def _name(value, field_):
    if not isinstance(value, str):
        raise _Invalid("must be a string", field_)
    if not _NAME_RE.fullmatch(value):
        raise _Invalid("must be visible ASCII characters (inner spaces allowed), not empty",
                       field_)


def _ident(item, where):
    ident = item.get("id")
    if ident is None:
        return None
    _name(ident, f"{where}.id")
    return ident


def _unique(owners, value, field_, what, username):
    """Record that ``username`` uses ``value``; an error if a consumer (this one or
    another) already does."""
    owner = owners.get(value)
    if owner is not None:
        # The value itself is not quoted: it may be a secret (an API key).
        by = "this consumer" if owner == username else f'consumer "{owner}"'
        raise _Invalid(f'duplicate {what}, already used by {by}', field_)
    owners[value] = username


def _secret(item, where):
    secret = item["secret"]
    if not isinstance(secret, str) or not secret:
        raise _Invalid("must be a non-empty string", f"{where}.secret")
    if item.get("secret_base64"):
        try:
            raw = base64.b64decode(secret.replace("-", "+").replace("_", "/")
                                   + "=" * (-len(secret) % 4), validate=True)
        except (ValueError, binascii.Error):
            raise _Invalid("is not base64 (secret_base64 is true)", f"{where}.secret") from None
        if not raw:
            raise _Invalid("is empty once decoded", f"{where}.secret")
        return raw
    if "-----BEGIN" in secret or secret.startswith("ssh-"):
        raise _Invalid("looks like a key, not an HMAC secret (algorithm confusion)",
                       f"{where}.secret")
    return secret.encode("utf-8")


def _load_pem(pem, field_):
    from cryptography.hazmat.primitives import serialization

    if not isinstance(pem, str) or "-----BEGIN" not in pem:
        raise _Invalid("must be a PEM public key (-----BEGIN PUBLIC KEY-----)", field_)
    if "PRIVATE KEY" in pem:
        raise _Invalid("is a private key; give the public key", field_)
    try:
        return serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise _Invalid(f"is not a valid PEM public key ({_short(e)})", field_) from None
    except Exception as e:       # cryptography's UnsupportedAlgorithm and the like
        raise _Invalid(f"is not a supported PEM public key ({_short(e)})", field_) from None


def _check_key_type(public, algorithm, field_):
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    family = algorithm[:2]
    if family in ("RS", "PS"):
        if not isinstance(public, rsa.RSAPublicKey):
            raise _Invalid(f"{algorithm} needs an RSA public key, this is {_kind(public)}", field_)
    elif family == "ES":
        curve = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}[algorithm]
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise _Invalid(f"{algorithm} needs an EC public key on {curve}, this is "
                           f"{_kind(public)}", field_)
        if public.curve.name != curve:
            raise _Invalid(f"{algorithm} needs the curve {curve}, this key is on "
                           f"{public.curve.name}", field_)
    elif algorithm == "EdDSA":
        if not isinstance(public, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            raise _Invalid(f"EdDSA needs an Ed25519 or Ed448 public key, this is "
                           f"{_kind(public)}", field_)


def _kind(public):
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(public, rsa.RSAPublicKey):
        return "an RSA key"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"an EC key on {public.curve.name}"
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    if isinstance(public, ed448.Ed448PublicKey):
        return "an Ed448 key"
    return f"a {type(public).__name__}"


def _pem_of(public):
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _short(error):
    """An exception's message, cut before any quoted key material (pyjwt puts the whole
    JWK in some of its messages)."""
    text = str(error).split(": {")[0]
    return text[:200]


# --------------------------------------------------------------------------- the command


def main(argv):
    """``edge consumers hash-password [--scheme scrypt|pbkdf2]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="edge consumers",
        description="Tools for the consumers file (docs/auth.md). JWT algorithms a "
                    "credential may pin: " + ", ".join(ALGORITHMS) + ".")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    hp = sub.add_parser(
        "hash-password",
        help="hash a password for basic_auth's password_hash",
        description="Read a password from stdin (the first line, without its line end), or "
                    "ask for it twice on a terminal, and print its hash for a basic_auth "
                    "credential's password_hash.")
    hp.add_argument("--scheme", choices=SCHEMES, default="scrypt",
                    help="scrypt (N=2**14, r=8, p=1; the default) or pbkdf2 "
                         "(PBKDF2-HMAC-SHA256, 600,000 iterations)")
    args = parser.parse_args(argv)

    if sys.stdin is not None and sys.stdin.isatty():
        import getpass
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 1
        if password != again:
            _say("error", "the passwords differ")
            return 1
    else:
        data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        line = data.split(b"\n", 1)[0]
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            password = line.decode("utf-8")
        except UnicodeDecodeError:
            _say("error", "the password is not UTF-8")
            return 1
    if not password:
        _say("error", "empty password")
        return 1
    print(hash_password(password, args.scheme))
    return 0


def _say(level, msg):
    print(f"edge: [{level}] {msg}", file=sys.stderr)
