"""Request rate (limit_req), request counts per window (limit_count) and concurrent
requests (limit_conn), with nginx's directives where nginx has them. The compiled half is
edge/_core/limiter.pyx; the algorithms and their bounds are in docs/limits.md.

A zone is declared once in `http` (`*_zone KEY zone=NAME:SIZE ...`) and used by
`limit_req` / `limit_count` / `limit_conn` in http, server or location; a level with any
of those directives does not inherit its parent's (nginx's rule). The limits of a
location run in the access phase, in the order written; the rate-limit headers run as a
header filter.
"""

import re
from dataclasses import dataclass

from edge._core.reactor import (Limit, LimitHeaders, Template, forget_zone, limit_zone_path,
                                prepare_zone_file, zone_capacity)
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types
from edge import log
from edge.modules import remove_zone_files

HSL = (HTTP, SERVER, LOCATION)
MIN_ZONE = 32 * 1024
ENTRY_BYTES = 128


@dataclass(frozen=True)
class LimitZoneSpec:
    name: str
    kind: str           # "req", "count", "conn"
    size: int
    scope: str          # "node" or "cluster"
    key: str
    limit: float        # req: requests per second; count and conn: N
    window_ms: int      # count
    sliding: bool
    quota: tuple        # (q, w): the limit as N requests per w seconds, for headers
    file: str
    line: int

    @property
    def path(self):
        """Where the zone's file is, in a process the master prepared (else None)."""
        return limit_zone_path(self.name)


def _key(text):
    try:
        return Template.compile(text)
    except ValueError as e:
        raise ConfigError(str(e))


def _zone_arg(value):
    name, colon, size = value.partition(":")
    if not name or not colon:
        raise ConfigError(f'invalid zone size "{value}"')
    size = types.parse_size(size)
    if size < MIN_ZONE:
        raise ConfigError(f'zone "{name}" is too small (at least {MIN_ZONE // 1024}k)')
    return name, size


def _zone_directive(kind):
    def parse(node):
        key = node.args[0]
        _key(key)
        opts = {}
        for arg in node.args[1:]:
            name, eq, value = arg.partition("=")
            if not eq or name in opts:
                raise ConfigError(f'invalid parameter "{arg}"')
            opts[name] = value
        allowed = {"req": {"zone", "rate", "scope"}, "conn": {"zone"},
                   "count": {"zone", "count", "window", "type", "scope"}}[kind]
        for name in opts:
            if name not in allowed:
                raise ConfigError(f'invalid parameter "{name}={opts[name]}"')
        if "zone" not in opts:
            raise ConfigError('"zone" must be set')
        zone, size = _zone_arg(opts["zone"])
        scope = opts.get("scope", "node")
        if scope not in ("node", "cluster"):
            raise ConfigError(f'invalid scope "{scope}"')
        limit, window_ms, sliding, quota = 0.0, 0, False, (0, 1)
        if kind == "req":
            m = re.fullmatch(r"(\d+)r/([sm])", opts.get("rate", ""))
            if not m or int(m.group(1)) == 0:
                raise ConfigError(f'invalid rate "{opts.get("rate", "")}"')
            limit = int(m.group(1)) / (60.0 if m.group(2) == "m" else 1.0)
            quota = (int(m.group(1)), 60 if m.group(2) == "m" else 1)
        elif kind == "count":
            count = opts.get("count", "")
            if not count.isdigit() or int(count) == 0:
                raise ConfigError(f'invalid count "{count}"')
            limit = int(count)
            window_ms = int(types.parse_time(opts.get("window", "")) * 1000) if "window" in opts else 0
            if window_ms < 1000:
                raise ConfigError('"window" must be set, at least 1s')
            kind_type = opts.get("type", "fixed")
            if kind_type not in ("fixed", "sliding"):
                raise ConfigError(f'invalid type "{kind_type}"')
            sliding = kind_type == "sliding"
            quota = (int(count), (window_ms + 999) // 1000)
        elif scope == "cluster":
            raise ConfigError("limit_conn_zone has no cluster scope")
        return LimitZoneSpec(zone, kind, size, scope, key, limit, window_ms, sliding, quota,
                             node.file, node.line)
    return parse


def _use(kind):
    def parse(node):
        args = list(node.args)
        zone = args.pop(0)
        if zone.startswith("zone="):
            zone = zone[5:]
        if not zone:
            raise ConfigError('invalid zone name')
        opts = {"zone": zone, "burst": 0, "nodelay": False, "delay": 0, "number": 0}
        if kind == "conn":
            if len(args) != 1 or not args[0].isdigit() or int(args[0]) == 0:
                raise ConfigError(f'invalid number of connections "{" ".join(args)}"')
            opts["number"] = int(args[0])
            return opts
        for arg in args:
            name, eq, value = arg.partition("=")
            if kind == "req" and arg == "nodelay":
                opts["nodelay"] = True
            elif kind == "req" and name in ("burst", "delay") and eq and value.isdigit():
                opts[name] = int(value)
            else:
                raise ConfigError(f'invalid parameter "{arg}"')
        if opts["nodelay"] and opts["delay"]:
            raise ConfigError('"delay" and "nodelay" are mutually exclusive')
        return opts
    return parse


def _status(node):
    value = node.args[0]
    if not value.isdigit() or not 400 <= int(value) <= 599:
        raise ConfigError(f'value must be between 400 and 599')
    return int(value)


LEVELS = types.enum("info", "notice", "warn", "error")


def _decision_directives(kind, what, nginx_default):
    """limit_<kind>_status, _dry_run and _log_level: the same three for each kind."""
    return [
        Directive(f"limit_{kind}_status", HSL, (1, 1), parse=_status, default=429,
                  doc=f"Status of requests rejected by limit_{kind}{nginx_default}."),
        Directive(f"limit_{kind}_dry_run", HSL, (1, 1), parse=types.flag, default=False,
                  doc=f"Count and log what limit_{kind} would reject, and serve it."),
        Directive(f"limit_{kind}_log_level", HSL, (1, 1), parse=LEVELS, default="error",
                  syntax=f"limit_{kind}_log_level info | notice | warn | error;",
                  doc=f"Error-log level of {what}."),
    ]


DIRECTIVES = [
    Directive("limit_req_zone", (HTTP,), (3, 4), parse=_zone_directive("req"), multi=True,
              syntax="limit_req_zone key zone=name:size rate=rate [scope=node|cluster];",
              doc="A request-rate zone (GCRA): `rate` is Nr/s or Nr/m; 8,192 keys per MiB. "
                  "`scope=cluster` shares the limit across nodes through `redis`."),
    Directive("limit_req", HSL, (1, 3), parse=_use("req"), multi=True,
              syntax="limit_req zone=name [burst=number] [nodelay | delay=number];",
              doc="Limit the request rate by a zone. Requests beyond the rate up to `burst` are "
                  "delayed to the rate (`nodelay`: served at once; `delay=N`: the first N "
                  "served at once); more are rejected with limit_req_status."),
    *_decision_directives("req", "rejections; delays log one level lower (nginx)",
                          " (nginx's default is 503)"),
    Directive("limit_count_zone", (HTTP,), (2, 6), parse=_zone_directive("count"), multi=True,
              syntax="limit_count_zone key zone=name:size count=N window=time [type=fixed|sliding] "
                     "[scope=node|cluster];",
              doc="A quota zone: N requests per window, fixed windows or sliding (the previous "
                  "window weighted by its part still inside); 8,192 keys per MiB."),
    Directive("limit_count", HSL, (1, 1), parse=_use("count"), multi=True,
              syntax="limit_count zone=name;",
              doc="Limit the number of requests per window by a zone; beyond it, limit_count_status."),
    *_decision_directives("count", "limit_count rejections", ""),
    Directive("limit_conn_zone", (HTTP,), (2, 3), parse=_zone_directive("conn"), multi=True,
              syntax="limit_conn_zone key zone=name:size;",
              doc="A concurrency zone: requests in flight per key; 8,192 keys per MiB."),
    Directive("limit_conn", HSL, (2, 2), parse=_use("conn"), multi=True,
              syntax="limit_conn zone number;",
              doc="Limit requests in flight per key (released when the request ends, however "
                  "it ends); beyond it, limit_conn_status. `zone=name` is accepted too."),
    *_decision_directives("conn", "limit_conn rejections", " (nginx's default is 503)"),
    Directive("limit_headers", HSL, (1, 1), parse=types.enum("off", "legacy", "ietf"),
              default="legacy", syntax="limit_headers off | legacy | ietf;",
              doc="Rate-limit headers on responses of limited locations: X-RateLimit-Limit, "
                  "-Remaining, -Reset (legacy), or the IETF RateLimit and RateLimit-Policy "
                  "fields. Retry-After is sent with every rejection either way."),
]


def compile_http(http, runtime):
    zones = {}
    for directive in ("limit_req_zone", "limit_count_zone", "limit_conn_zone"):
        for spec in http.local(directive) or []:
            if spec.name in zones:
                raise ConfigError(f'zone "{spec.name}" is already declared', spec.file, spec.line)
            zones[spec.name] = spec
    runtime.limit_zones = zones


def compile_location(conf, location, runtime):
    zones = getattr(runtime, "limit_zones", {})
    handlers = []
    for kind in ("req", "count", "conn"):
        uses = conf.get(f"limit_{kind}") or []
        nodes = conf.nodes_in_force(f"limit_{kind}")
        for use, node in zip(uses, nodes):
            spec = zones.get(use["zone"])
            if spec is None or spec.kind != kind:
                raise ConfigError(f'zone "{use["zone"]}" is unknown' if spec is None else
                                  f'zone "{use["zone"]}" is a limit_{spec.kind}_zone',
                                  node.file, node.line)
            handlers.append(Limit(
                kind, spec.name, _key(spec.key), burst=use["burst"], nodelay=use["nodelay"],
                delay_n=use["delay"], conn_limit=use["number"],
                status=conf.get(f"limit_{kind}_status"), dry_run=conf.get(f"limit_{kind}_dry_run"),
                log_level=conf.get(f"limit_{kind}_log_level"), log_enabled=log.enabled,
                quota=spec.quota[0], quota_window=spec.quota[1]))
    for handler in handlers:
        location.phases.add("access", handler)
    if handlers:
        location.phases.add("header_filter", LimitHeaders(conf.get("limit_headers")))


def prepare(zones):
    """In the master, for a config about to be served: make or keep each zone's file.
    A zone keeps its state when its name, kind and size are unchanged."""
    kept = {}
    for spec in zones.values():
        path = spec.path
        if path is None:
            continue
        kept[spec.name] = prepare_zone_file(path, spec.kind, spec.size, spec.scope == "cluster",
                                            spec.limit, spec.window_ms, spec.sliding)
        if not kept[spec.name]:
            forget_zone(path)
    return kept


def remove_unused(zones, prefix=None):
    """Delete the files of zones no longer configured (their users keep their mapping)."""
    prefix = prefix if prefix is not None else limit_zone_path("")
    if not prefix:
        return
    remove_zone_files(prefix, zones)
