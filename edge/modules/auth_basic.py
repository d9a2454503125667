"""nginx's `auth_basic` and `auth_basic_user_file`: HTTP Basic authentication against an
htpasswd file, in the access phase (after allow/deny, before the consumers' methods).

It runs on the machinery of `basic_auth` (edge/_core/auth.pyx: an AuthChain with one
BasicAuth): a verified Authorization value is cached per worker, so a bcrypt check is paid
once per credential, not per request. The file is stat(2)ed at each request and read again
only when it changed, so an edit takes effect at the next request without a reload, as
with nginx (which reads it at every request). Hashes are checked with passlib (the libpass
package): bcrypt ($2y$, $2a$, $2b$), $apr1$, $1$, $5$, $6$, {SHA}, {SSHA}, DES crypt and
{PLAIN}, the formats nginx's ngx_crypt and the system crypt() read. docs/auth.md,
"auth_basic"."""

import hmac
import os

from edge._core.reactor import AuthChain, BasicAuth, Htpasswd
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive

HSL = (HTTP, SERVER, LOCATION)

_context = None


def _crypt_context():
    global _context
    if _context is None:
        from passlib.context import CryptContext
        _context = CryptContext(schemes=["bcrypt", "apr_md5_crypt", "md5_crypt", "sha256_crypt",
                                         "sha512_crypt", "ldap_salted_sha1", "ldap_sha1",
                                         "des_crypt"])
    return _context


def verify(password_hash, password):
    """Does `password` (bytes) match one htpasswd line's hash (bytes)? ValueError for a hash
    no scheme reads (refused then, with an error-log line)."""
    if password_hash.startswith(b"{PLAIN}"):
        return hmac.compare_digest(password_hash[7:], password)
    ctx = _crypt_context()
    try:
        text = password_hash.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not an ASCII hash") from None
    if not text or ctx.identify(text) is None:
        raise ValueError("unknown hash format")
    if text.startswith("$2"):
        password = password[:72]    # what bcrypt reads (crypt() ignores the rest too)
    try:
        return ctx.verify(password, text)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None


def load(path):
    """The users of an htpasswd file, read as nginx reads it: `user:hash[:anything]` lines;
    a line starting with "#" or CR, or without ":", is skipped (nginx skips it silently);
    the hash ends at ":", CR or the end of the line; the first line of a user wins."""
    with open(path, "rb") as f:
        data = f.read()
    users = {}
    for line in data.split(b"\n"):
        if not line or line[:1] in (b"#", b"\r"):
            continue
        user, sep, rest = line.partition(b":")
        if not sep:
            continue
        h = rest.split(b":", 1)[0].split(b"\r", 1)[0]
        users.setdefault(user, h)
    return users


def _realm(node):
    realm = node.args[0]
    if realm == "off":
        return False
    if "$" in realm:
        raise ConfigError('variables in the "auth_basic" realm are not supported by edge')
    return realm


def _user_file(node):
    path = node.args[0]
    if "$" in path:
        raise ConfigError('variables in "auth_basic_user_file" are not supported by edge')
    return path


DIRECTIVES = [
    Directive("auth_basic", HSL, (1, 1), parse=_realm, syntax="auth_basic realm | off;",
              doc="HTTP Basic authentication against `auth_basic_user_file`, as nginx: 401 with "
                  "`WWW-Authenticate: Basic realm=\"realm\"` without valid credentials; `off` "
                  "turns it off where an enclosing block turned it on. A verified credential is "
                  "cached per worker (until the file changes)."),
    Directive("auth_basic_user_file", HSL, (1, 1), parse=_user_file,
              syntax="auth_basic_user_file file;",
              doc="The htpasswd file (`user:hash` lines: bcrypt, $apr1$, $1$, $5$, $6$, {SHA}, "
                  "{SSHA}, crypt, {PLAIN}). A relative path is taken from the main config "
                  "file's directory. Checked with one stat(2) per request and read again when it "
                  "changed; missing at a request: 403, unreadable: 500, as nginx."),
]


def _root_dir(conf):
    while conf.parent is not None:
        conf = conf.parent
    return os.path.dirname(os.path.abspath(conf.file)) if conf.file else os.getcwd()


def compile_location(conf, location, runtime):
    realm = conf.get("auth_basic")
    if not realm:
        return
    path = conf.get("auth_basic_user_file")
    if path is None:
        node = conf.nodes_in_force("auth_basic")[0]
        # nginx would not authenticate at all: refused rather than left open
        raise ConfigError('"auth_basic" without "auth_basic_user_file" would let every request '
                          'through: set the file, or "auth_basic off"', node.file, node.line)
    full = os.path.join(_root_dir(conf), path)
    files = getattr(runtime, "htpasswd_files", None)
    if files is None:
        files = runtime.htpasswd_files = {}
    ht = files.get(full)
    if ht is None:
        ht = files[full] = Htpasswd(os.fsencode(full), load, verify)
    location.phases.add("access", AuthChain([BasicAuth(realm, htpasswd=ht)], None, html=True))
