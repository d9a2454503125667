"""Proxying: `proxy_pass`, header forwarding rules and upstream timeouts.

Bodies stream both ways; edge re-frames them itself."""

from edge._core.reactor import DynamicUpstream, Redirects, Template, Upstream, keep_request_head
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types
from edge.modules.upstream import split_host_port

# What the upstream gets unless proxy_set_header says otherwise. Unlike nginx (which
# sends `Host: $proxy_host`), edge passes the client's Host through, as APISIX's
# pass_host=pass and Kong's preserve_host do: that is what an API gateway's backends
# expect. `proxy_set_header Host $proxy_host;` gives nginx's behaviour.
DEFAULT_HEADERS = [
    ("Host", "$request_host"),
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ("X-Real-IP", "$remote_addr"),
    ("X-Forwarded-Proto", "$scheme"),
]


def _proxy_pass(node):
    url = node.args[0]
    if url.startswith("https://"):
        scheme = "https"        # TLS to the upstream: edge/modules/proxy_ssl.py
    elif url.startswith("http://"):
        scheme = "http"
    else:
        raise ConfigError(f'invalid URL prefix in "{url}"')
    rest = url[len(scheme) + 3:]
    if rest.endswith("$request_uri"):
        # nginx's idiom for "the original request URI, whatever the location": what edge
        # sends anyway when proxy_pass has no URI part
        rest = rest[:-len("$request_uri")]
        if "/" in rest:
            raise ConfigError(f'a URI part cannot come before $request_uri in "{url}"')
    slash = rest.find("/")
    authority, uri = (rest, None) if slash < 0 else (rest[:slash], rest[slash:])
    if not authority:
        raise ConfigError(f'no host in "{url}"')
    return (authority, uri, scheme)


def _set_header(node):
    name, value = node.args
    if not name or any(c in name for c in ' :\t\r\n'):
        raise ConfigError(f'invalid header name "{name}"')
    try:
        return (name, Template.compile(value))
    except ValueError as e:
        raise ConfigError(str(e))


HSL = (HTTP, SERVER, LOCATION)


def _upgrade(node):
    if node.args == ["off"]:
        return []
    # "name/version" (RFC 9110 7.8) is allowed; edge matches on the name
    names = [a.lower().partition("/")[0] for a in node.args]
    for name in names:
        if not name or any(c in name for c in "\0 ,"):
            raise ConfigError(f'invalid upgrade protocol "{name}"')
    return names

def _redirect(node):
    args = node.args
    if len(args) == 1:
        if args[0] not in ("default", "off"):
            raise ConfigError(f'invalid parameter "{args[0]}"')
        return args[0]
    frm, to = args
    if frm.startswith("~"):
        raise ConfigError('regular expressions in "proxy_redirect" are not supported')
    if "$" in frm:
        raise ConfigError('variables in the "proxy_redirect" pattern are not supported')
    try:
        return (frm.encode("latin-1"), Template.compile(to))
    except ValueError as e:
        raise ConfigError(str(e))


def _header_name(node):
    name = node.args[0]
    if not name or any(c in name for c in ' :\t\r\n'):
        raise ConfigError(f'invalid header name "{name}"')
    return name.lower()


def _method(node):
    m = node.args[0]
    if not m or not all(c.isalnum() or c in "-_" for c in m):
        raise ConfigError(f'invalid method "{m}"')
    return m


IGNORABLE = ("X-Accel-Redirect", "X-Accel-Expires", "X-Accel-Limit-Rate", "X-Accel-Buffering",
             "X-Accel-Charset", "Expires", "Cache-Control", "Set-Cookie", "Vary")


def _ignore_headers(node):
    known = {name.lower(): name for name in IGNORABLE}
    out = []
    for arg in node.args:
        if arg.lower() not in known:
            raise ConfigError(f'invalid value "{arg}" in "proxy_ignore_headers" directive')
        out.append(known[arg.lower()])
    return out


DIRECTIVES = [
    Directive("proxy_pass", (LOCATION,), (1, 1), parse=_proxy_pass,
              syntax="proxy_pass http[s]://upstream_name[/uri] | http[s]://host[:port][/uri];",
              doc="Send requests to an upstream group or an address. With a URI part, the "
                  "matched location prefix is replaced by it; without one the request URI "
                  "passes unchanged. `https://` speaks TLS to the upstream (default port "
                  "443 for an address; see the proxy_ssl_* directives and docs/tls.md)."),
    Directive("proxy_redirect", HSL, (1, 2), parse=_redirect, multi=True,
              syntax="proxy_redirect default | off | redirect replacement;",
              doc="Rewrite the Location and Refresh headers of upstream responses: the first "
                  "`redirect` prefix (case-sensitive) found is replaced by `replacement` "
                  "(variables allowed; a path is made absolute as nginx does). `default` (the "
                  "default with a literal proxy_pass) maps the proxy_pass URL to the "
                  "location's prefix. Regex patterns are not supported."),
    Directive("proxy_hide_header", HSL, (1, 1), parse=_header_name, multi=True,
              syntax="proxy_hide_header field;",
              doc="Do not pass this upstream response header to the client. Inherited only "
                  "by blocks that set none themselves."),
    Directive("proxy_pass_header", HSL, (1, 1), parse=_header_name, multi=True,
              syntax="proxy_pass_header field;",
              doc="Pass a header edge hides by default: `Server` or `Date` (the upstream's "
                  "is sent instead of edge's own)."),
    Directive("proxy_http_version", HSL, (1, 1), parse=types.enum("1.0", "1.1"), default="1.1",
              doc="The HTTP version spoken to the upstream. edge's default is 1.1, with "
                  "keep-alive to `upstream` groups that set `keepalive` (nginx's default is "
                  "1.0). `1.0`: the request line says HTTP/1.0 with `Connection: close`, "
                  "nothing is kept alive or upgraded, a chunked request body is read whole "
                  "and sent with its length, and a response without a length is read to "
                  "the close. See docs/http.md."),
    Directive("proxy_pass_request_headers", HSL, (1, 1), parse=types.flag, default=True,
              doc="`off`: none of the client's header fields go upstream; the fields of "
                  "`proxy_set_header` (and edge's defaults: Host, X-Forwarded-For, "
                  "X-Real-IP, X-Forwarded-Proto) still do, as in nginx."),
    Directive("proxy_pass_request_body", HSL, (1, 1), parse=types.flag, default=True,
              doc="`off`: the client's body is read (and limited by "
                  "client_max_body_size) but not sent upstream; the upstream request "
                  "carries no body and no Content-Length or Transfer-Encoding (nginx "
                  "keeps the client's Content-Length unless `proxy_set_header "
                  "Content-Length \"\"`, which leaves the upstream waiting for a body)."),
    Directive("proxy_ignore_client_abort", HSL, (1, 1), parse=types.flag, default=False,
              doc="off, as nginx: a client that closes its side of the connection while its "
                  "request is proxied (its request read whole) ends the request at once: the "
                  "upstream connection is closed, not pooled, and the request is logged with "
                  "499 when no response head had gone out (with the upstream's status and the "
                  "bytes sent when one had). on: the request runs to its end, and the response "
                  "is sent for as long as the client's socket takes it (a client that only "
                  "half-closed gets it all). Upgraded connections (WebSocket) are not concerned "
                  "(docs/http.md)."),
    Directive("proxy_ignore_headers", HSL, (1, None), parse=_ignore_headers,
              syntax="proxy_ignore_headers field ...;",
              doc="Upstream response fields not to act on. Of nginx's list, edge acts only "
                  "on X-Accel-Buffering (turning proxy_buffering off or on for the "
                  "response), so naming it makes edge ignore it; the others (X-Accel-"
                  "Redirect, X-Accel-Expires, X-Accel-Limit-Rate, X-Accel-Charset, Expires, "
                  "Cache-Control, Set-Cookie, Vary) are accepted and change nothing, since "
                  "edge does not act on them anyway (it has no cache)."),
    Directive("proxy_method", HSL, (1, 1), parse=_method,
              syntax="proxy_method method;",
              doc="The method of the request sent upstream, instead of the client's."),
    Directive("proxy_set_header", HSL, (2, 2), parse=_set_header, multi=True,
              syntax="proxy_set_header field value;",
              doc="Set a request header sent upstream (variables allowed; an empty value "
                  "removes it). Defaults: Host $request_host (the client's Host, or an absolute-form target's host), X-Forwarded-For "
                  "$proxy_add_x_forwarded_for, X-Real-IP $remote_addr, X-Forwarded-Proto $scheme. "
                  "Inherited only when the block sets none itself, as in nginx."),
    Directive("proxy_upgrade", HSL, (1, None), parse=_upgrade, default=["websocket"],
              syntax="proxy_upgrade off | protocol ...;",
              doc="Connection upgrades passed to the upstream (`Upgrade:` protocols, "
                  "case-insensitive). After the upstream's 101 the connection is a byte "
                  "tunnel. `off` strips Upgrade and serves the request as a normal one."),
    Directive("proxy_tunnel_timeout", HSL, (1, 1), parse=types.time, default=3600.0,
              doc="How long an upgraded connection (WebSocket) may stay idle in both "
                  "directions before it is closed."),
    Directive("proxy_connect_timeout", HSL, (1, 1), parse=types.time, default=60.0,
              doc="How long connecting to an upstream may take before the next one is tried (504 when none is left)."),
    Directive("proxy_read_timeout", HSL, (1, 1), parse=types.time, default=60.0,
              doc="The longest wait between two reads from the upstream; 504 before the response head."),
    Directive("proxy_send_timeout", HSL, (1, 1), parse=types.time, default=60.0,
              doc="The longest wait between two writes to the upstream; then 504."),
]


def compile_location(conf, location, runtime):
    value = conf.local("proxy_pass")
    if value is None:
        return
    node = conf.node("proxy_pass")
    authority, uri, scheme = value
    https = scheme == "https"
    if uri is not None and location.kind >= 3:
        raise ConfigError('"proxy_pass" cannot have URI part in location given by regular '
                          'expression', node.file, node.line)
    attr = "group_names_https" if https else "group_names"
    names = getattr(runtime, attr, None)
    if names is None:
        # every group a `proxy_pass http://$var` may name: upstream blocks and addresses
        # (the addresses of one scheme: their default ports differ)
        names = {n.encode("latin-1"): g for n, g in runtime.upstreams.items()}
        setattr(runtime, attr, names)
    dynamic = None
    group = None
    if "$" in authority:
        try:
            dynamic = DynamicUpstream(Template.compile(authority), names)
        except ValueError as e:
            raise ConfigError(str(e), node.file, node.line)
    else:
        group = runtime.upstreams.get(authority)
    key = "https://" + authority if https else authority
    if group is None and dynamic is None:
        group = runtime.address_upstreams.get(key)
    if group is None and dynamic is None:
        try:
            host, port = split_host_port(authority, default_port=443 if https else 80)
            # $proxy_host: for https the host alone when the port is the default, as nginx
            name = authority[:-4] if https and port == 443 and authority.endswith(":443") \
                else authority
            group = Upstream(name, 0)
            group.add_peer(host, port, 1, 1, 10.0)
        except (ValueError, ConfigError) as e:
            raise ConfigError(str(e), node.file, node.line)
        runtime.address_upstreams[key] = group
        runtime.plan.add_upstream(group)
        names.setdefault(authority.encode("latin-1"), group)

    own = conf.get("proxy_set_header") or []
    own_names = {name.lower() for name, _ in own}
    headers = [(name.encode("latin-1"), Template.compile(value))
               for name, value in DEFAULT_HEADERS if name.lower() not in own_names]
    headers += [(name.encode("latin-1"), template) for name, template in own]
    strip = [name for name, _ in headers]
    location.set_proxy(group, uri.encode("latin-1") if uri is not None else None, headers, strip)
    location.dynamic = dynamic
    if dynamic is not None and any(g.hash_key_uses_head for g in runtime.upstreams.values()):
        # the group is chosen per request; one of them hashes on the request head, which
        # its pick reads after the body went through rb
        keep_request_head(location)
    method = conf.get("proxy_method")
    location.proxy_method = method.encode("latin-1") if method else None
    location.proxy_http10 = conf.get("proxy_http_version") == "1.0"
    location.pass_request_headers = conf.get("proxy_pass_request_headers")
    location.pass_request_body = conf.get("proxy_pass_request_body")
    location.ignore_client_abort = conf.get("proxy_ignore_client_abort")
    location.ignore_accel_buffering = "X-Accel-Buffering" in (conf.get("proxy_ignore_headers") or ())
    _response_headers(conf, location, authority, uri, dynamic is not None, scheme)
    location.proxy_connect_timeout_ms = int(conf.get("proxy_connect_timeout") * 1000)
    location.proxy_read_timeout_ms = int(conf.get("proxy_read_timeout") * 1000)
    location.proxy_send_timeout_ms = int(conf.get("proxy_send_timeout") * 1000)
    location.proxy_tunnel_timeout_ms = int(conf.get("proxy_tunnel_timeout") * 1000)
    location.upgrade_protocols = b"".join(p.encode("latin-1") + b"\0" for p in conf.get("proxy_upgrade")) + b"\0"


def _response_headers(conf, location, authority, uri, dynamic, scheme="http"):
    """proxy_redirect, proxy_hide_header, proxy_pass_header."""
    rules = conf.get("proxy_redirect")
    if rules is None and not dynamic:
        rules = ["default"]
    compiled = []
    for rule in rules or []:
        if rule == "off":
            compiled = []
            break
        if rule == "default":
            if dynamic:
                node = conf.node("proxy_redirect")[0]
                raise ConfigError('"proxy_redirect default" cannot be used with "proxy_pass" '
                                  'directive with variables', node.file, node.line)
            url = scheme + "://" + authority
            if uri:
                compiled.append(((url + uri).encode("latin-1"),
                                 Template.compile(location.pattern.decode("latin-1"))))
            else:
                compiled.append(((url + "/").encode("latin-1"), Template.compile("/")))
        else:
            compiled.append(rule)
    location.redirects = Redirects(compiled) if compiled else None
    hide = conf.get("proxy_hide_header") or []
    if hide:
        existing = (location.response_strip or b"").rstrip(b"\0")
        location.response_strip = (existing + b"\0" if existing else b"") + \
            b"".join(h.encode("latin-1") + b"\0" for h in hide) + b"\0"
    passed = conf.get("proxy_pass_header") or []
    location.pass_server = "server" in passed
    location.pass_date = "date" in passed
