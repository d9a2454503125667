"""The admin API's endpoints: what the admin listener (edge/control/admin.py) serves.

The HTTP side (framing, limits, the token, admin_allow) is admin.py's; this file is the
route table and the handlers. docs/admin.md describes every endpoint; openapi.py is the
OpenAPI 3.1 document, and tests/test_admin_openapi.py checks that the two agree.

Rules for a handler:

- it is `handler(api, request) -> Response` or `async def` of the same; path parameters
  are in `request.params` (percent-decoded), the query in `request.args` ({name: last
  value});
- it answers JSON; an error is `api_error(status, message, field)`, where `field`
  names what was wrong (a path parameter, a query argument, later a body field);
- it never blocks the event loop: everything it reads is in memory (the cycle this
  process compiled from the master's ParsedConfig, shared memory), except the limit
  zones' small mapped files; a reload is asked of the master over its channel and
  awaited;
- reads answer with `ETag: "GEN"`, GEN the configuration generation they describe
  (the one this process runs), for the writes' If-Match to come.
"""

import asyncio
import json
import os
import socket
from urllib.parse import parse_qsl, unquote

from edge import log

RELOAD_TIMEOUT = 60.0       # seconds POST /reload waits for the master's answer

# --------------------------------------------------------------------------- responses


class Response:
    def __init__(self, status, body=b"", content_type="application/json", headers=()):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = list(headers)


def json_response(status, document, headers=()):
    body = (json.dumps(document, indent=None, separators=(",", ":")) + "\n").encode()
    return Response(status, body, "application/json", headers)


def api_error(status, message, field=None, headers=(), **extra):
    """The one shape of an error: {"error": message[, "field": where]}."""
    document = {"error": message}
    if field is not None:
        document["field"] = field
    document.update(extra)
    return json_response(status, document, headers)


# --------------------------------------------------------------------------- routes


class Route:
    """One method on one path pattern: `/upstreams/{name}` matches one segment."""

    def __init__(self, method, pattern, handler):
        self.method = method
        self.pattern = pattern
        self.handler = handler
        self.parts = pattern.split("/")[1:]

    def match(self, path):
        """{param: value} when `path` matches, else None."""
        parts = path.split("/")[1:]
        if len(parts) != len(self.parts):
            return None
        params = {}
        for want, got in zip(self.parts, parts):
            if want.startswith("{"):
                value = unquote(got, errors="strict") if got else ""
                if not value:
                    return None
                params[want[1:-1]] = value
            elif want != got:
                return None
        return params


def find(routes, request):
    """(route, params) for the request; else (None, allowed methods: a set, empty
    when no route has this path)."""
    allowed = set()
    for route in routes:
        try:
            params = route.match(request.path)
        except UnicodeDecodeError:
            params = None
        if params is None:
            continue
        if route.method == request.method or (request.method == "HEAD" and route.method == "GET"):
            return route, params
        allowed.add(route.method)
    if "GET" in allowed:
        allowed.add("HEAD")
    return None, allowed


def parse_args(query):
    try:
        return dict(parse_qsl(query, keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        return None


# --------------------------------------------------------------------------- the API


class AdminAPI:
    """The endpoints, over the control process's context (edge.control.services)."""

    def __init__(self, ctx, cycle):
        self.ctx = ctx
        self.cycle = cycle
        r = Route
        self.routes = [
            r("GET", "/status", self.get_status),
            r("GET", "/config", self.get_config),
            r("GET", "/routes", self.get_routes),
            r("GET", "/upstreams", self.get_upstreams),
            r("GET", "/upstreams/{name}", self.get_upstream),
            r("GET", "/consumers", self.get_consumers),
            r("GET", "/consumers/{name}", self.get_consumer),
            r("GET", "/zones", self.get_zones),
            r("POST", "/reload", self.post_reload),
            r("POST", "/drain", self.post_drain),
            r("POST", "/undrain", self.post_undrain),
            r("GET", "/openapi.json", self.get_openapi),
        ]
        from edge.control.writes import WriteAPI
        self.writes = WriteAPI(self)
        self.routes += self.writes.routes()

    @property
    def generation(self):
        """The configuration generation this process runs (what reads describe)."""
        return self.ctx.generation

    def etag(self):
        return [("ETag", f'"{self.generation}"')]

    def ok(self, document):
        return json_response(200, document, self.etag())

    # -- /status -----------------------------------------------------------------------

    def get_status(self, request):
        from edge.control import status
        return self.ok(status.document(self.ctx))

    # -- /config -----------------------------------------------------------------------

    def get_config(self, request):
        fmt = request.args.get("format", "json")
        cycle = self.cycle
        if fmt == "text":
            return Response(200, dump_text(cycle.files).encode("utf-8"),
                            "text/plain; charset=utf-8", self.etag())
        if fmt == "tree":
            return self.ok({"generation": self.generation, "path": cycle.path,
                            "directives": [_node_tree(n) for n in cycle.parsed.nodes]})
        if fmt == "json":
            return self.ok({"generation": self.generation, "path": cycle.path,
                            "files": [{"path": p, "text": t} for p, t in cycle.files],
                            "text": dump_text(cycle.files)})
        return api_error(400, 'must be "json", "text" or "tree"', "format")

    # -- /routes -----------------------------------------------------------------------

    def get_routes(self, request):
        return self.ok({"generation": self.generation, "routes": routes_of(self.cycle)})

    # -- /upstreams --------------------------------------------------------------------

    def _upstreams(self):
        zones = self.ctx.zones
        snapshot = {}
        if zones is not None:
            for p in zones.snapshot()["peers"]:
                snapshot[(p["upstream"], p["peer"])] = p
        service = self.ctx.upstreams()
        checks = {}
        if service is not None:
            try:
                checks = service.status()
            except Exception as e:   # the check details are extra: answer without them
                log.error("error", f"admin API: upstream check status failed: {e!r}")
        return [_upstream_doc(g, zones, snapshot, checks.get(g.name, {}))
                for g in self.cycle.plan.upstreams]

    def get_upstreams(self, request):
        return self.ok({"generation": self.generation, "upstreams": self._upstreams()})

    def get_upstream(self, request):
        name = request.params["name"]
        for doc in self._upstreams():
            if doc["name"] == name:
                return self.ok(doc)
        return api_error(404, f'no upstream "{name}"', "name")

    # -- /consumers --------------------------------------------------------------------

    def get_consumers(self, request):
        consumers = self.cycle.consumers
        return self.ok({"generation": self.generation,
                        "file": consumers.path if consumers is not None else None,
                        "consumers": consumers_of(consumers)})

    def get_consumer(self, request):
        name = request.params["name"]
        for doc in consumers_of(self.cycle.consumers):
            if doc["username"] == name:
                return self.ok(doc)
        return api_error(404, f'no consumer "{name}"', "name")

    # -- /zones ------------------------------------------------------------------------

    def get_zones(self, request):
        return self.ok({"generation": self.generation, "zones": zones_of(self.cycle, self.ctx.zones)})

    # -- actions -----------------------------------------------------------------------

    async def post_reload(self, request):
        """An ordinary reload (as HUP), answered once the master has finished it."""
        before = self.ctx.shared.generation
        try:
            result = await self.ctx.request_reload(RELOAD_TIMEOUT)
        except RuntimeError as e:
            return api_error(503, f"cannot ask the master for a reload: {e}")
        except asyncio.TimeoutError:
            return api_error(504, f"the master did not answer within {RELOAD_TIMEOUT:g}s")
        if result.get("ok"):
            return json_response(200, {"reloaded": True, "generation": result["generation"],
                                       "previous_generation": before},
                                 [("ETag", f'"{result["generation"]}"')])
        if result.get("unavailable"):     # stopping, or handing over to a new binary
            return api_error(503, result.get("error") or "the master cannot reload now")
        extra = {"generation": result.get("generation")}
        if result.get("file"):
            extra["file"] = result["file"]
            extra["line"] = result.get("line")
        return api_error(422, result.get("error") or "the reload failed", None, **extra)

    def _set_draining(self, on):
        shared = self.ctx.shared
        shared.draining = on
        # During a binary upgrade, `edge drain` sets both masters' blocks; so does this.
        pid_path = self.cycle.pid_path
        if pid_path:
            from edge.master import state_path_for
            other = state_path_for(f"{pid_path}.oldbin")
            if os.path.exists(other):
                try:
                    from edge._core.reactor import SharedState
                    old = SharedState.open(other)
                except (OSError, ValueError):
                    old = None
                if old is not None and old.master_pid != shared.master_pid:
                    old.draining = on
                if old is not None:
                    old.close()
        ready, reason = shared.ready()
        log.error("notice", "admin API: " + ("draining: readiness answers 503, requests are "
                                             "still served" if on else "no longer draining"))
        return json_response(200, {"draining": bool(shared.draining), "ready": ready,
                                   "ready_reason": reason})

    def post_drain(self, request):
        return self._set_draining(True)

    def post_undrain(self, request):
        return self._set_draining(False)

    # -- the document ------------------------------------------------------------------

    def get_openapi(self, request):
        from edge.control import openapi
        return json_response(200, openapi.DOCUMENT)


# --------------------------------------------------------------------------- documents


def dump_text(files):
    """The files of a config as `edge -T` prints them (edge/cli.py uses this too)."""
    out = []
    for path, text in files:
        out.append(f"# configuration file {path}:\n")
        out.append(text)
        out.append("\n" if text.endswith("\n") else "\n\n")
    return "".join(out)


def _node_tree(node):
    doc = {"name": node.name, "args": list(node.args), "file": node.file, "line": node.line}
    if node.block is not None:
        doc["block"] = [_node_tree(n) if hasattr(n, "name") else {"text": str(n)}
                        for n in node.block]
    return doc


_CONTENT = {0: None, 1: "return", 2: "proxy_pass", 3: "health"}


def _location_nodes(nodes, out):
    """(file, line) -> Node of every location block, to list its directives."""
    for node in nodes:
        if node.block is None:
            continue
        if node.name == "location":
            out[(node.file, node.line)] = node
        _location_nodes([n for n in node.block if hasattr(n, "name")], out)
    return out


def _phases(plan):
    return {phase: [type(h).__name__ for h in getattr(plan, phase)]
            for phase in ("rewrite", "access", "header_filter", "log")}


def routes_of(cycle):
    """Every location of every server, flat, in config order; nested locations name
    their parent."""
    by_place = _location_nodes(cycle.parsed.nodes, {})
    servers = []
    listens = {}
    for key, binding in cycle.plan.bindings.items():
        for server in binding.servers:
            if all(server is not s for s in servers):
                servers.append(server)
            listens.setdefault(id(server), []).append(key)
    servers.sort(key=lambda s: (s.file or "", s.line))
    routes = []

    def walk(server, label, locations, parent):
        for loc in locations:
            node = by_place.get((loc.file, loc.line))
            directives = ([n.name for n in node.block if hasattr(n, "name") and n.name != "location"]
                          if node is not None else [])
            upstream = loc.upstream.name if loc.upstream is not None else None
            routes.append({
                "server": label, "server_names": list(server.names),
                "listen": listens.get(id(server), []),
                "location": loc.match_text(), "route": loc.route_b.decode("utf-8", "replace"),
                "parent": parent, "file": loc.file, "line": loc.line,
                "content": _CONTENT.get(loc.content),
                "upstream": upstream, "dynamic_upstream": loc.dynamic is not None,
                "phases": _phases(loc.phases), "directives": directives})
            if loc.children is not None:
                walk(server, label, loc.children.locations, loc.match_text())

    for server in servers:
        label = server.phases.route_labels[0]
        walk(server, label, server.locations, None)
    return routes


def _health_word(word):
    if not word:
        return "unchecked"
    return "up" if word & 1 else "down"


def _peer_name(family, ip, port):
    return f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"


def _upstream_doc(group, zones, snapshot, checks):
    checked = {p["peer"]: p for p in checks.get("peers", [])}
    peers = []
    for info in group.peers_info():
        names = [info["peer"]]
        resolve = info.pop("resolve", None)
        if resolve is not None:
            host, port = resolve
            found = zones.resolved_addresses(group.name, host, port) if zones is not None else None
            names = [_peer_name(f, ip, port) for f, ip in found or ()]
            info["resolve"] = f"{host}:{port}"
        for name in names:
            entry = dict(info, peer=name)
            seen = snapshot.get((group.name, name), {})
            word = zones.peer_health(group.name, name) if zones is not None else 0
            entry["health"] = _health_word(word)
            entry["failures"] = seen.get("failures", 0)
            entry["active"] = seen.get("active", 0)
            if info["down"]:
                state = "down"
            elif entry["health"] == "down":
                state = "unhealthy"
            elif seen and not seen.get("up", True):
                state = "unavailable"     # max_fails reached: out until fail_timeout
            else:
                state = "up"
            entry["state"] = state
            check = checked.get(name)
            if check is not None and "checks" in check:
                entry["check"] = {k: check.get(k) for k in ("checks", "consecutive_fails",
                                                             "consecutive_passes", "last_error",
                                                             "last_check")}
            peers.append(entry)
    doc = {"name": group.name, "method": group.method_name, "keepalive": group.keepalive,
           "peers": peers}
    if "health_check" in checks:
        doc["health_check"] = checks["health_check"]
    if "resolve" in checks:
        doc["resolve"] = checks["resolve"]
    return doc


def consumers_of(consumers):
    """Consumers with the type and id of each credential: never a key, a password
    hash, a secret or a key's material."""
    if consumers is None:
        return []
    creds = {c.username: [] for c in consumers.consumers}
    for _key, (consumer, ident) in consumers.by_key.items():
        creds[consumer.username].append({"type": "key_auth", "id": ident})
    for user, (consumer, _hash, ident) in consumers.by_basic_user.items():
        creds[consumer.username].append({"type": "basic_auth", "id": ident, "username": user})
    for key, (consumer, cred) in consumers.by_jwt_key.items():
        creds[consumer.username].append({"type": "jwt", "id": cred.id, "key": key,
                                         "algorithm": cred.algorithm})
    return [{"username": c.username, "custom_id": c.custom_id, "groups": list(c.groups),
             "credentials": creds[c.username]} for c in consumers.consumers]


def zones_of(cycle, zones):
    out = []
    decisions = {}
    if zones is not None:
        snap = zones.snapshot()
        for item in snap["limits"]:
            decisions.setdefault(item["zone"], {})[item["decision"]] = item["count"]
        out.append({"name": "metrics", "type": "metrics", "size": zones.size,
                    "series": zones.series_used, "series_capacity": zones.series_cap,
                    "series_overflow": zones.series_overflow,
                    "workers_capacity": zones.workers_cap, "log_ring_size": zones.ring_size,
                    "used": round(zones.series_used / zones.series_cap, 4) if zones.series_cap else 0})
    for spec in cycle.limit_zones.values():
        doc = {"name": spec.name, "type": f"limit_{spec.kind}", "size": spec.size,
               "scope": spec.scope, "key": spec.key, "limit": spec.limit,
               "file": spec.file, "line": spec.line,
               "decisions": decisions.get(spec.name, {})}
        if spec.kind == "count":
            doc["window_ms"] = spec.window_ms
        path = spec.path
        if path is not None:
            try:
                from edge._core.reactor import LimitZone
                z = LimitZone.open(path)
            except (OSError, ValueError) as e:
                doc["error"] = str(e)
            else:
                try:
                    stats = z.stats()
                finally:
                    z.close()
                if spec.scope != "cluster":     # the sync's words mean nothing here
                    stats.pop("mode", None)
                    stats.pop("live_nodes", None)
                doc.update(stats)
                doc["used"] = round(stats["entries"] / stats["capacity"], 4) if stats["capacity"] else 0
        out.append(doc)
    return out
