"""Authentication and ACLs: key_auth, basic_auth, jwt_auth (chained, with
auth_anonymous), acl, and the consumer's identity sent upstream. The consumers and their
credentials come from the consumers file (modules/consumers.py); the compiled half is
edge/_core/auth.pyx. docs/auth.md has the behaviour table.

The methods of a location run in the order they are written; the first that identifies
the caller wins. They run in the access phase before the limits, so a limit can be
keyed on `$consumer`.
"""

import time

from edge._core.reactor import (Acl, AuthChain, AuthRegistry, BasicAuth, ConsumerRef, JwtAuth,
                                KeyAuth, Template)
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

HSL = (HTTP, SERVER, LOCATION)
MAX_TOKEN = 16 * 1024           # a larger "JWT" is refused before any parsing

IDENTITY_HEADERS = [
    (b"X-Consumer-Username", "$consumer"),
    (b"X-Consumer-Custom-ID", "$consumer_custom_id"),
    (b"X-Consumer-Groups", "$consumer_groups"),
    (b"X-Credential-Identifier", "$credential_identifier"),
    (b"X-Anonymous-Consumer", "$consumer_anonymous"),
]


def _optional(node):
    if node.args and node.args != ["optional"]:
        raise ConfigError(f'invalid parameter "{node.args[0]}"')
    return "optional" if node.args else "required"


def _realm(node):
    return node.args[0] if node.args else "edge"


def _acl(node):
    action = node.args[0]
    if action not in ("allow", "deny") or len(node.args) < 2:
        raise ConfigError('"acl" takes "allow" or "deny" and groups')
    return (action, tuple(node.args[1:]))


def _claims(node):
    for claim in node.args:
        if claim not in ("exp", "nbf"):
            raise ConfigError(f'unknown claim "{claim}" (exp, nbf)')
    return tuple(node.args)


DIRECTIVES = [
    Directive("key_auth", HSL, (0, 0), syntax="key_auth;",
              doc="Identify the caller by an API key: a header, else a query argument, named by "
                  "key_auth_names; checked against the consumers' key_auth credentials."),
    Directive("key_auth_names", HSL, (1, None), parse=types.strings, default=["apikey"],
              syntax="key_auth_names name ...;",
              doc="Header and query argument names that carry the API key (default apikey)."),
    Directive("basic_auth", HSL, (0, 1), parse=_realm, syntax="basic_auth [realm];",
              doc="Identify the caller by HTTP Basic credentials (RFC 7617) against the "
                  "consumers' password hashes; a verified credential is cached per worker."),
    Directive("jwt_auth", HSL, (0, 1), parse=_optional, syntax="jwt_auth [optional];",
              doc="Identify the caller by a JWT (header, then query, then cookie), verified with "
                  "the credential its key claim names, the algorithm pinned; `optional` lets "
                  "requests without a token pass unidentified."),
    Directive("jwt_auth_header", HSL, (1, 1), default="Authorization",
              doc="The header that carries `Bearer TOKEN` (empty string: none)."),
    Directive("jwt_auth_query", HSL, (1, 1), default="jwt",
              doc="The query argument that carries the token (empty string: none)."),
    Directive("jwt_auth_cookie", HSL, (1, 1), default="jwt",
              doc="The cookie that carries the token (empty string: none)."),
    Directive("jwt_key_claim", HSL, (1, 1), default="iss",
              doc="The claim that names the consumer's JWT credential (its `key`)."),
    Directive("jwt_claims_to_verify", HSL, (1, 2), parse=_claims, default=("exp", "nbf"),
              syntax="jwt_claims_to_verify exp | nbf ...;",
              doc="Registered claims checked when present (default both)."),
    Directive("jwt_leeway", HSL, (1, 1), parse=types.time, default=0.0,
              doc="Clock skew allowed when checking exp and nbf."),
    Directive("jwt_maximum_expiration", HSL, (1, 1), parse=types.time, default=0.0,
              doc="Refuse tokens whose exp is further than this in the future (0: no limit); "
                  "such tokens must carry exp."),
    Directive("jwt_cache_size", HSL, (1, 1), parse=types.number, default=10000,
              doc="Verified tokens each worker keeps (LRU) until their expiry."),
    Directive("auth_hide_credentials", HSL, (1, 1), parse=types.flag, default=False,
              doc="Do not pass the credential (Authorization, key header or argument, token "
                  "argument) upstream."),
    Directive("auth_anonymous", HSL, (1, 1), syntax="auth_anonymous username;",
              doc="The consumer a request becomes when no method identifies it (instead of 401)."),
    Directive("acl", HSL, (2, None), parse=_acl, multi=True, syntax="acl allow | deny group ...;",
              doc="Only consumers in the allowed groups (and in none of the denied): 403 else, "
                  "401 without a consumer."),
]


class _Registry:
    """The AuthRegistry of one config, and the ConsumerRef of each consumer."""

    def __init__(self, consumers):
        from edge.modules.consumers import hash_password, verify_password
        self.refs = {c.username: ConsumerRef(c.username, c.custom_id, c.groups)
                     for c in consumers.consumers}
        keys = {key.encode("utf-8"): (self.refs[c.username], cred_id.encode("utf-8"))
                for key, (c, cred_id) in consumers.by_key.items()}
        basic = {user.encode("utf-8"): (self.refs[c.username], phash, cred_id.encode("utf-8"))
                 for user, (c, phash, cred_id) in consumers.by_basic_user.items()}
        self.consumers = consumers
        # the hash an unknown Basic user is checked against, made only when Basic users exist
        dummy = hash_password(b"edge-unknown-user") if basic else ""
        self.registry = AuthRegistry(keys, basic, self.refs, consumers.by_jwt_key, verify_password,
                                     dummy)


def compile_http(http, runtime):
    consumers = getattr(runtime, "consumers", None)
    runtime.auth = _Registry(consumers) if consumers is not None else None


def compile_location(conf, location, runtime):
    reg = getattr(runtime, "auth", None)
    methods = []
    for name in ("jwt_auth", "key_auth", "basic_auth"):
        value = conf.get(name)
        if value is None:
            continue
        node = _node(conf, name)
        if reg is None:
            raise ConfigError(f'"{name}" needs a "consumers" file', node.file, node.line)
        methods.append((node.line if node is not None else 0, name, value))
    acls = conf.get("acl") or []
    if acls and reg is None:
        node = _node(conf, "acl")
        raise ConfigError('"acl" needs a "consumers" file', node.file, node.line)
    if reg is not None and location.upstream is not None:
        # the identity goes upstream; a client's own copies never do, whatever their case
        for header, variable in IDENTITY_HEADERS:
            location.add_proxy_header(header, Template.compile(variable))
    if not methods:
        if acls:
            location.phases.add("access", _acl_handler(acls))
        return
    methods.sort()
    handlers = [_method(conf, name, value, reg) for _line, name, value in methods]
    anonymous = None
    who = conf.get("auth_anonymous")
    if who is not None:
        anonymous = reg.refs.get(who)
        if anonymous is None:
            node = _node(conf, "auth_anonymous")
            raise ConfigError(f'auth_anonymous: no consumer "{who}"', node.file, node.line)
        anonymous = anonymous.as_anonymous()
    optional = conf.get("jwt_auth") == "optional"
    location.phases.add("access", AuthChain(handlers, reg.registry, anonymous, optional))
    if acls:
        location.phases.add("access", _acl_handler(acls))
    if conf.get("auth_hide_credentials"):
        _hide(conf, location, [name for _l, name, _v in methods])


def _node(conf, name):
    nodes = conf.nodes_in_force(name)
    return nodes[0] if nodes else None


def _acl_handler(acls):
    allow = [g for action, groups in acls if action == "allow" for g in groups]
    deny = [g for action, groups in acls if action == "deny" for g in groups]
    return Acl(allow, deny)


def _method(conf, name, value, reg):
    if name == "key_auth":
        return KeyAuth(list(conf.get("key_auth_names")))
    if name == "basic_auth":
        return BasicAuth(value)
    return JwtAuth(conf.get("jwt_auth_header"), conf.get("jwt_auth_query"),
                   conf.get("jwt_auth_cookie"), _jwt_verifier(conf, reg),
                   max(1, conf.get("jwt_cache_size")))


def _hide(conf, location, methods):
    names, args = [], []
    if "key_auth" in methods:
        names += conf.get("key_auth_names")
        args += conf.get("key_auth_names")
    if "basic_auth" in methods:
        names.append("Authorization")
    if "jwt_auth" in methods:
        if conf.get("jwt_auth_header"):
            names.append(conf.get("jwt_auth_header"))
        if conf.get("jwt_auth_query"):
            args.append(conf.get("jwt_auth_query"))
    for name in dict.fromkeys(n.lower() for n in names):
        location.strip_proxy_header(name.encode("latin-1"))
    if args:
        location.hide_args = b"".join(a.encode("latin-1") + b"\0" for a in dict.fromkeys(args))


def _jwt_verifier(conf, reg):
    """The Python side of jwt_auth, called only for a token the worker has not verified
    yet: returns (ConsumerRef, credential id, exp in ms or 0), or the refusal message."""
    import jwt

    key_claim = conf.get("jwt_key_claim")
    claims = conf.get("jwt_claims_to_verify")
    leeway = conf.get("jwt_leeway")
    max_exp = conf.get("jwt_maximum_expiration")
    by_key = reg.consumers.by_jwt_key
    refs = reg.refs

    def verify(token):
        if len(token) > MAX_TOKEN:
            return b"token too large"
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.InvalidTokenError, ValueError, RecursionError):
            return b"not a valid JWT"
        if not isinstance(unverified, dict):
            return b"not a valid JWT"
        key = unverified.get(key_claim)
        entry = by_key.get(key) if isinstance(key, str) else None
        if entry is None:
            return ("missing or unknown %s claim" % key_claim).encode()
        consumer, cred = entry
        if header.get("alg") != cred.algorithm:
            return b"token algorithm does not match the credential"
        try:
            verify_key = _credential_key(jwt, cred, header)
            payload = jwt.decode(token, verify_key, algorithms=[cred.algorithm], leeway=leeway,
                                 options={"verify_exp": "exp" in claims,
                                          "verify_nbf": "nbf" in claims,
                                          "verify_aud": False, "verify_iss": False,
                                          "verify_iat": False})
        except jwt.ExpiredSignatureError:
            return b"token expired"
        except jwt.ImmatureSignatureError:
            return b"token not yet valid"
        except jwt.InvalidSignatureError:
            return b"invalid signature"
        except (jwt.InvalidTokenError, ValueError, TypeError, RecursionError):
            return b"invalid token"
        exp = payload.get("exp")
        if max_exp:
            if not isinstance(exp, (int, float)) or exp - time.time() > max_exp:
                return b"token expiration too far in the future"
        exp_ms = int(exp * 1000) if isinstance(exp, (int, float)) and "exp" in claims else 0
        return (refs[consumer.username], cred.id.encode("utf-8"), exp_ms)

    return verify


def _credential_key(jwt, cred, header):
    if cred.algorithm.startswith("HS"):
        return cred.secret
    if cred.public_key:
        return cred.public_key
    keys = jwt.PyJWKSet.from_dict(cred.jwks).keys
    kid = header.get("kid")
    for k in keys:
        if kid is not None and k.key_id == kid:
            return k.key
    if len(keys) == 1:
        return keys[0].key
    raise jwt.InvalidTokenError("no key of the set matches the token's kid")
