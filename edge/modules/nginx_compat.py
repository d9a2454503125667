"""nginx directives that tune nginx's own internals: accepted, with a warning.

An operator's nginx.conf carries directives that size nginx's hash tables or choose its
event method. They change nothing a client can see, and edge has no such knob, so they
are declared here as documented no-ops (``Directive(noop=...)``): ``edge -t`` and every
start or reload warn once per occurrence, naming file:line and the reason.

``REFUSED`` lists the nginx directives that would change behaviour and that edge does
not do: each is an error naming the directive, its file:line and docs/nginx.md (where
the generated table gives the reason and the edge alternative). A directive nginx does
not have either stays an ``unknown directive`` error.
"""

from edge.config import EVENTS, HTTP, LOCATION, MAIN, SERVER, ConfigError, Directive, Refused, types

HSL = (HTTP, SERVER, LOCATION)

_HASH = "nginx's hash table sizing; edge's tables size themselves"


def _use(node):
    method = node.args[0]
    if method != "epoll":
        raise ConfigError(f'"use {method}" is not supported: edge runs on epoll only '
                          f'(see docs/nginx.md)')
    return method


def _open_file_cache(node):
    args = node.args
    if args == ["off"]:
        return None
    if not args[0].startswith("max=") or (len(args) == 2 and not args[1].startswith("inactive=")):
        raise ConfigError(f'invalid "open_file_cache" parameter "{" ".join(args)}"')
    return tuple(args)


def _server_name_in_redirect(node):
    if types.flag(node):
        raise ConfigError('"server_name_in_redirect on" is not supported: edge makes '
                          'redirects absolute with the request\'s Host (see docs/nginx.md)')
    return False


DIRECTIVES = [
    Directive("server_names_hash_bucket_size", (HTTP,), (1, 1), parse=types.size, noop=_HASH),
    Directive("server_names_hash_max_size", (HTTP,), (1, 1), parse=types.size, noop=_HASH),
    Directive("types_hash_bucket_size", HSL, (1, 1), parse=types.size, noop=_HASH),
    Directive("types_hash_max_size", HSL, (1, 1), parse=types.size, noop=_HASH),
    Directive("variables_hash_bucket_size", (HTTP,), (1, 1), parse=types.size, noop=_HASH),
    Directive("variables_hash_max_size", (HTTP,), (1, 1), parse=types.size, noop=_HASH),
    Directive("map_hash_bucket_size", (HTTP,), (1, 1), parse=types.size, noop=_HASH),
    Directive("map_hash_max_size", (HTTP,), (1, 1), parse=types.size, noop=_HASH),
    Directive("proxy_headers_hash_bucket_size", HSL, (1, 1), parse=types.size, noop=_HASH),
    Directive("proxy_headers_hash_max_size", HSL, (1, 1), parse=types.size, noop=_HASH),
    Directive("use", (EVENTS,), (1, 1), parse=_use, syntax="use epoll;",
              noop="epoll is the one event method edge has, and it always uses it"),
    Directive("multi_accept", (EVENTS,), (1, 1), parse=types.flag,
              noop="edge's accept loop always takes every pending connection (as "
                   "`multi_accept on`)"),
    Directive("accept_mutex", (EVENTS,), (1, 1), parse=types.flag,
              noop="each edge worker accepts on its own SO_REUSEPORT socket, so there is "
                   "no shared socket to take turns on"),
    Directive("accept_mutex_delay", (EVENTS,), (1, 1), parse=types.time,
              noop="edge has no accept mutex (one SO_REUSEPORT socket per worker)"),
    Directive("timer_resolution", (MAIN,), (1, 1), parse=types.time,
              noop="edge's workers read the clock once per loop turn and cache the "
                   "Date header once a second"),
    Directive("pcre_jit", (MAIN,), (1, 1), parse=types.flag,
              noop="edge compiles its regular expressions with its own engine"),
    # File and I/O tuning: how nginx opens, buffers and reads files and logs. edge
    # opens each static file per request and sends it with sendfile(2) or bounded reads
    # as the socket takes it (docs/static.md), and writes its logs through its own
    # buffers: clients get the same bytes either way.
    Directive("open_file_cache", HSL, (1, 2), parse=_open_file_cache,
              syntax="open_file_cache off | max=N [inactive=time];",
              noop="nginx's cache of open file descriptors; edge opens the file per request"),
    Directive("open_file_cache_valid", HSL, (1, 1), parse=types.time,
              noop="edge has no open file cache to revalidate"),
    Directive("open_file_cache_min_uses", HSL, (1, 1), parse=types.number,
              noop="edge has no open file cache"),
    Directive("open_file_cache_errors", HSL, (1, 1), parse=types.flag,
              noop="edge has no open file cache: an error is found again on each request"),
    Directive("open_log_file_cache", HSL, (1, 4), parse=types.strings,
              syntax="open_log_file_cache max=N [inactive=time] [min_uses=N] [valid=time] | off;",
              noop="nginx's cache of log files opened by a path with variables; edge opens "
                   "its log files once"),
    Directive("output_buffers", HSL, (2, 2), parse=types.strings, syntax="output_buffers number size;",
              noop="nginx's buffers for reading files; edge sends files with sendfile(2) or "
                   "its own 32 KiB reads"),
    Directive("postpone_output", HSL, (1, 1), parse=types.size,
              noop="edge writes a response head and body with one writev where it can"),
    Directive("sendfile_max_chunk", HSL, (1, 1), parse=types.size,
              noop="edge's sendfile(2) calls move at most 1 MiB each (its own fixed "
                   "sendfile_max_chunk), so one fast client cannot hold the worker"),
    Directive("aio", HSL, (1, 1), parse=types.string, syntax="aio on | off | threads[=pool];",
              noop="edge reads files with sendfile(2) or short non-blocking reads"),
    Directive("aio_write", HSL, (1, 1), parse=types.flag,
              noop="edge writes its temp files itself"),
    Directive("directio", HSL, (1, 1), parse=types.string, syntax="directio size | off;",
              noop="edge reads through the page cache"),
    Directive("directio_alignment", HSL, (1, 1), parse=types.size,
              noop="edge does no direct I/O"),
    Directive("read_ahead", HSL, (1, 1), parse=types.size,
              noop="the kernel's read-ahead applies as it is"),
    Directive("ssl_buffer_size", (HTTP, SERVER), (1, 1), parse=types.size,
              noop="edge sizes its TLS records itself (as the socket takes the data)"),
    Directive("reset_timedout_connection", HSL, (1, 1), parse=types.flag,
              noop="edge closes a timed-out connection at once and frees its memory either "
                   "way; only the TCP teardown (FIN rather than RST) differs"),
    Directive("proxy_socket_keepalive", HSL, (1, 1), parse=types.flag,
              noop="TCP keep-alive probes on upstream sockets: edge leaves the kernel's "
                   "defaults"),
    Directive("server_name_in_redirect", HSL, (1, 1), parse=_server_name_in_redirect,
              syntax="server_name_in_redirect off;",
              doc="`off` (nginx's default, and edge's only way): a redirect made absolute "
                  "uses the request's Host; `on` is refused."),
    # Conditions on a cache that edge does not have (proxy_cache itself is refused): in
    # nginx too they do nothing without one, and Node/Express guides put
    # `proxy_cache_bypass $http_upgrade;` in nearly every proxy block.
    Directive("proxy_cache_bypass", HSL, (1, None), parse=types.strings,
              noop="it only chooses when to skip a response cache, and edge has none "
                   "(proxy_cache is refused), so every response already bypasses one"),
    Directive("proxy_no_cache", HSL, (1, None), parse=types.strings,
              noop="it only chooses when not to store in a response cache, and edge has "
                   "none (proxy_cache is refused)"),
]

_CACHE = ("edge has no response cache", "a cache in front of edge (or varnish), or "
          "Cache-Control from the upstream")

_STAPLING = ("edge does not staple OCSP responses to its certificates",
             "remove it: clients check revocation themselves (OCSP, CRLite)")

REFUSED = [
    Refused("ssl_stapling", *_STAPLING),
    Refused("ssl_stapling_verify", *_STAPLING),
    Refused("ssl_stapling_file", *_STAPLING),
    Refused("ssl_stapling_responder", *_STAPLING),
    Refused("proxy_cache", *_CACHE),
    Refused("proxy_cache_*", *_CACHE),
    Refused("proxy_store", "edge does not write upstream responses to disk"),
    Refused("proxy_store_access", "edge does not write upstream responses to disk"),
    Refused("fastcgi_*", "edge proxies HTTP only (no FastCGI)",
            "run the application behind an HTTP server (php-fpm behind a small HTTP "
            "front, gunicorn, uvicorn) and use proxy_pass"),
    Refused("uwsgi_*", "edge proxies HTTP only (no uwsgi protocol)",
            "uwsgi's `http-socket` and proxy_pass"),
    Refused("scgi_*", "edge proxies HTTP only (no SCGI)", "proxy_pass to an HTTP listener"),
    Refused("memcached_*", "edge does not talk to memcached", ""),
    Refused("grpc_*", "edge does not proxy gRPC (HTTP/2 upstreams)", ""),
    Refused("ssi", "edge does not parse server-side includes in responses", ""),
    Refused("ssi_*", "edge does not parse server-side includes in responses", ""),
    Refused("sub_filter", "edge does not rewrite response bodies", ""),
    Refused("sub_filter_*", "edge does not rewrite response bodies", ""),
    Refused("addition_types", "edge does not rewrite response bodies", ""),
    Refused("add_before_body", "edge does not rewrite response bodies", ""),
    Refused("add_after_body", "edge does not rewrite response bodies", ""),
    Refused("xslt_*", "edge does not transform response bodies", ""),
    Refused("image_filter", "edge does not transform images", ""),
    Refused("image_filter_*", "edge does not transform images", ""),
    Refused("perl", "edge embeds no Perl", "a Python plugin"),
    Refused("perl_*", "edge embeds no Perl", "a Python plugin"),
    Refused("js_*", "edge embeds no JavaScript (njs)", "a Python plugin"),
    Refused("load_module", "edge loads no nginx dynamic modules",
            "the features edge has are built in; see docs/directives.md"),
    Refused("stream", "edge proxies HTTP only (no TCP/UDP stream proxying)", ""),
    Refused("mail", "edge does not proxy mail protocols", ""),
    Refused("auth_request", "edge makes no authentication subrequests",
            "jwt_auth, key_auth or basic_auth (docs/auth.md)"),
    Refused("auth_request_set", "edge makes no authentication subrequests",
            "jwt_auth, key_auth or basic_auth (docs/auth.md)"),
    Refused("limit_rate", "edge does not throttle response bandwidth",
            "limit_req / limit_conn limit requests and connections (docs/limits.md)"),
    Refused("limit_rate_after", "edge does not throttle response bandwidth",
            "limit_req / limit_conn (docs/limits.md)"),
    Refused("secure_link", "edge does not check signed links",
            "jwt_auth with a token in the query (jwt_auth_query)"),
    Refused("secure_link_*", "edge does not check signed links",
            "jwt_auth with a token in the query (jwt_auth_query)"),
    Refused("dav_methods", "edge does not implement WebDAV", ""),
    Refused("dav_access", "edge does not implement WebDAV", ""),
    Refused("create_full_put_path", "edge does not implement WebDAV", ""),
    Refused("geo", "edge has no geo variable (address ranges to values)",
            "allow/deny, acl, or map on $remote_addr"),
    Refused("geoip_*", "edge has no GeoIP lookup", ""),
    Refused("userid", "edge does not issue tracking cookies", "request_id_header"),
    Refused("userid_*", "edge does not issue tracking cookies", "request_id_header"),
    Refused("stub_status", "edge's status lives in the admin API",
            "GET /status and /metrics on admin_listen (docs/admin.md)"),
    Refused("empty_gif", "edge has no built-in GIF", "return 204;"),
    Refused("mp4", "edge does not seek in media files", ""),
    Refused("flv", "edge does not seek in media files", ""),
    Refused("slice", "edge makes no range subrequests", ""),
    Refused("proxy_cookie_domain", "edge does not rewrite the Set-Cookie fields of responses",
            "set the domain in the application"),
    Refused("proxy_cookie_path", "edge does not rewrite the Set-Cookie fields of responses",
            "set the path in the application"),
    Refused("proxy_cookie_flags", "edge does not rewrite the Set-Cookie fields of responses",
            "set the flags in the application"),
    Refused("proxy_bind", "edge connects to upstreams from the address the system picks", ""),
    Refused("proxy_set_body", "edge sends the client's body upstream as it came", ""),
    Refused("proxy_limit_rate", "edge does not throttle upstream bandwidth", ""),
    Refused("add_trailer", "edge sends no trailers", ""),
]
