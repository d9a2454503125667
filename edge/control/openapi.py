"""The OpenAPI 3.1 document of the admin API, served at GET /openapi.json.

Written by hand, next to the route table (edge/control/api.py); tests/test_admin_openapi.py
checks that every route served is documented and every documented operation is served,
and runs schemathesis against a live edge with this document.
"""

import edge


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description):
    return _json(_ref("Error"), description)


_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NUM = {"type": "number"}
_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}
_ETAG = {"ETag": {"description": 'The configuration generation the answer describes, quoted: "7".',
                  "schema": _STR}}


def _read(summary, schema, description, *, params=(), not_found=False, extra=None):
    responses = {"200": dict(_json(schema, description), headers=_ETAG),
                 "401": _error("No token or a wrong one (when a token is set)."),
                 "403": _error("The peer is outside admin_allow.")}
    if not_found:
        responses["404"] = _error("No such object; `field` names the parameter.")
    if extra:
        responses.update(extra)
    op = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = list(params)
    return op


def _name_param(what):
    return {"name": "name", "in": "path", "required": True, "description": f"The {what}'s name.",
            "schema": {"type": "string", "minLength": 1}}


_PHASES = {"type": "object", "required": ["rewrite", "access", "header_filter", "log"],
           "properties": {p: {"type": "array", "items": _STR}
                          for p in ("rewrite", "access", "header_filter", "log")}}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": _STR,
                       "field": {"type": "string",
                                 "description": "The part of the request at fault."},
                       "generation": _NULLABLE_INT, "file": _NULLABLE_STR, "line": _NULLABLE_INT},
    },
    "Worker": {
        "type": "object", "required": ["index", "pid", "generation", "heartbeat_age_ms"],
        "properties": {"index": _INT, "pid": _NULLABLE_INT, "generation": _INT,
                       "heartbeat_age_ms": _NULLABLE_INT},
    },
    "Status": {
        "type": "object",
        "required": ["version", "generation", "master_pid", "control_pid", "draining", "ready",
                     "ready_reason", "workers", "uptime_seconds", "upstreams"],
        "properties": {
            "version": _STR, "generation": _INT, "control_generation": _INT,
            "master_pid": _INT, "control_pid": _INT, "draining": _BOOL, "ready": _BOOL,
            "ready_reason": _NULLABLE_STR, "config_failed": _BOOL,
            "workers_expected": _INT, "workers_up": _INT,
            "workers": {"type": "array", "items": _ref("Worker")},
            "uptime_seconds": {"type": ["number", "null"]},
            "upstreams": {"type": "object"},
        },
    },
    "Config": {
        "type": "object", "required": ["generation", "path", "files", "text"],
        "properties": {
            "generation": _INT, "path": _STR, "text": _STR,
            "files": {"type": "array", "items": {
                "type": "object", "required": ["path", "text"],
                "properties": {"path": _STR, "text": _STR}}},
        },
    },
    "Directive": {
        "type": "object", "required": ["name", "args", "file", "line"],
        "properties": {"name": _STR, "args": {"type": "array", "items": _STR},
                       "file": _NULLABLE_STR, "line": _NULLABLE_INT,
                       "block": {"type": "array", "items": {"$ref": "#/components/schemas/Directive"}}},
    },
    "ConfigTree": {
        "type": "object", "required": ["generation", "path", "directives"],
        "properties": {"generation": _INT, "path": _STR,
                       "directives": {"type": "array", "items": _ref("Directive")}},
    },
    "Route": {
        "type": "object",
        "required": ["server", "server_names", "listen", "location", "route", "parent", "file",
                     "line", "content", "upstream", "dynamic_upstream", "phases", "directives"],
        "properties": {
            "server": _STR, "server_names": {"type": "array", "items": _STR},
            "listen": {"type": "array", "items": _STR},
            "location": _STR, "route": _STR, "parent": _NULLABLE_STR,
            "file": _STR, "line": _INT,
            "content": {"type": ["string", "null"], "enum": ["return", "proxy_pass", "health", None]},
            "upstream": _NULLABLE_STR, "dynamic_upstream": _BOOL,
            "phases": _PHASES, "directives": {"type": "array", "items": _STR},
        },
    },
    "Routes": {
        "type": "object", "required": ["generation", "routes"],
        "properties": {"generation": _INT, "routes": {"type": "array", "items": _ref("Route")}},
    },
    "Peer": {
        "type": "object",
        "required": ["peer", "server", "weight", "max_fails", "fail_timeout", "backup", "down",
                     "health", "failures", "active", "state"],
        "properties": {
            "peer": _STR, "server": _STR, "resolve": _STR, "weight": _INT, "max_fails": _INT,
            "fail_timeout": _NUM, "backup": _BOOL, "down": _BOOL,
            "health": {"enum": ["unchecked", "up", "down"]},
            "failures": _INT, "active": _INT,
            "state": {"enum": ["up", "down", "unhealthy", "unavailable"]},
            "check": {"type": "object"},
        },
    },
    "Upstream": {
        "type": "object", "required": ["name", "method", "keepalive", "peers"],
        "properties": {"name": _STR, "method": _STR, "keepalive": _INT,
                       "peers": {"type": "array", "items": _ref("Peer")},
                       "health_check": {"type": "object"},
                       "resolve": {"type": "array", "items": {"type": "object"}}},
    },
    "Upstreams": {
        "type": "object", "required": ["generation", "upstreams"],
        "properties": {"generation": _INT,
                       "upstreams": {"type": "array", "items": _ref("Upstream")}},
    },
    "Credential": {
        "type": "object", "required": ["type", "id"], "additionalProperties": False,
        "description": "A credential's kind and identifier; never a key, password hash, "
                       "secret or key material.",
        "properties": {"type": {"enum": ["key_auth", "basic_auth", "jwt"]}, "id": _STR,
                       "username": _STR, "key": _STR, "algorithm": _STR},
    },
    "Consumer": {
        "type": "object", "required": ["username", "custom_id", "groups", "credentials"],
        "additionalProperties": False,
        "properties": {"username": _STR, "custom_id": _NULLABLE_STR,
                       "groups": {"type": "array", "items": _STR},
                       "credentials": {"type": "array", "items": _ref("Credential")}},
    },
    "Consumers": {
        "type": "object", "required": ["generation", "file", "consumers"],
        "properties": {"generation": _INT, "file": _NULLABLE_STR,
                       "consumers": {"type": "array", "items": _ref("Consumer")}},
    },
    "Zone": {
        "type": "object", "required": ["name", "type", "size"],
        "properties": {"name": _STR, "type": _STR, "size": _INT,
                       "used": {"type": "number", "minimum": 0},
                       "entries": _INT, "capacity": _INT, "decisions": {"type": "object"}},
    },
    "Zones": {
        "type": "object", "required": ["generation", "zones"],
        "properties": {"generation": _INT, "zones": {"type": "array", "items": _ref("Zone")}},
    },
    "Reloaded": {
        "type": "object", "required": ["reloaded", "generation", "previous_generation"],
        "properties": {"reloaded": {"const": True}, "generation": _INT,
                       "previous_generation": _INT},
    },
    "Draining": {
        "type": "object", "required": ["draining", "ready", "ready_reason"],
        "properties": {"draining": _BOOL, "ready": _BOOL, "ready_reason": _NULLABLE_STR},
    },
}

_DENIED = {"401": _error("No token or a wrong one (when a token is set)."),
           "403": _error("The peer is outside admin_allow.")}

PATHS = {
    "/status": {"get": _read("The node: version, uptime, generation, workers, readiness.",
                             _ref("Status"), "The node's state.")},
    "/config": {"get": _read(
        "The configuration in force: files as `edge -T` prints them, or the parsed tree.",
        {"oneOf": [_ref("Config"), _ref("ConfigTree")]},
        "format=json (default): the files and the `-T` text; format=tree: the directives.",
        params=[{"name": "format", "in": "query", "required": False,
                 "description": "json (default), text (text/plain, exactly `edge -T`'s output) "
                                "or tree.",
                 "schema": {"type": "string", "enum": ["json", "text", "tree"]}}],
        extra={"400": _error("An unknown format; `field` is \"format\".")})},
    "/routes": {"get": _read("Every location of every server, with its phases.",
                             _ref("Routes"), "The routes, in config order.")},
    "/upstreams": {"get": _read("Upstream groups and their peers' state.", _ref("Upstreams"),
                                "The upstream groups.")},
    "/upstreams/{name}": {"get": _read("One upstream group.", _ref("Upstream"), "The group.",
                                       params=[_name_param("upstream")], not_found=True)},
    "/consumers": {"get": _read("Consumers with their groups and credential ids (no secrets).",
                                _ref("Consumers"), "The consumers.")},
    "/consumers/{name}": {"get": _read("One consumer (no secrets).", _ref("Consumer"),
                                       "The consumer.", params=[_name_param("consumer")],
                                       not_found=True)},
    "/zones": {"get": _read("Shared-memory zones (metrics, limits) with their use.",
                            _ref("Zones"), "The zones.")},
    "/reload": {"post": {
        "summary": "Reload the configuration from its files (as `edge -s reload`).",
        "responses": dict({
            "200": dict(_json(_ref("Reloaded"), "The new generation is in force."), headers=_ETAG),
            "422": _error("The files do not load; the previous generation keeps serving. "
                          "`file` and `line` say where."),
            "503": _error("No master to ask, or it is stopping or handing over to a new "
                          "binary."),
            "504": _error("The master did not answer in time.")}, **_DENIED)}},
    "/drain": {"post": {
        "summary": "Drain: readiness answers 503, requests are still served (`edge drain`).",
        "responses": dict({"200": _json(_ref("Draining"), "Draining.")}, **_DENIED)}},
    "/undrain": {"post": {
        "summary": "Stop draining (`edge undrain`).",
        "responses": dict({"200": _json(_ref("Draining"), "Not draining.")}, **_DENIED)}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics (text exposition format).",
        "responses": dict({"200": {"description": "The metrics.",
                                   "content": {"text/plain": {"schema": _STR}}}}, **_DENIED)}},
    "/openapi.json": {"get": {
        "summary": "This document.",
        "responses": dict({"200": _json({"type": "object"}, "The OpenAPI document.")},
                          **_DENIED)}},
}

# --------------------------------------------------------------------------- writes

_WRITE_ERRORS = dict({
    "400": _error("The write does not validate (as `edge -t` would find): `field` names the "
                  "part of the request, `file` and `line` the place in the candidate files. "
                  "Nothing was written."),
    "404": _error("No such object."),
    "409": _error("The object is not managed by the API (defined in another file), is in "
                  "use, or the configuration lacks the include of the managed files."),
    "412": _error("If-Match names another generation, or a write is being applied: read "
                  "again."),
    "415": _error("A Content-Type the endpoint does not take."),
    "422": _error("Written, but the reload failed: the previous generation keeps serving."),
    "503": _error("Written, but the master cannot be asked for a reload now."),
    "504": _error("Written, but the master did not answer in time.")}, **_DENIED)

_IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
             "description": 'The generation (ETag) the write was prepared against: "7". '
                            "Another one: 412.",
             "schema": {"type": "string"}}


def _written(schema_props, summary, created=False, request=None, params=(), text=False,
             yaml=False):
    doc = {"type": "object", "required": ["generation"],
           "properties": dict({"generation": _INT}, **schema_props)}
    responses = {"200": dict(_json(doc, "Done: the new generation is in force."),
                             headers=_ETAG)}
    if created:
        responses["201"] = dict(_json(doc, "Created: the new generation is in force."),
                                headers=_ETAG)
    responses.update(_WRITE_ERRORS)
    op = {"summary": summary, "responses": responses,
          "parameters": list(params) + [_IF_MATCH]}
    if request is not None:
        content = {"application/json": {"schema": request}}
        if text:
            content["text/plain"] = {"schema": {"type": "string"}}
        if yaml:
            content["application/yaml"] = {"schema": request}
        op["requestBody"] = {"required": False, "content": content}
    return op


_ADDR_PARAM = {"name": "addr", "in": "path", "required": True,
               "description": "The peer's address as its `server` line names it (host:port).",
               "schema": {"type": "string", "minLength": 1}}

_PEER_SETTINGS = {
    "weight": {"type": "integer", "minimum": 1, "maximum": 1000000},
    "max_fails": {"type": "integer", "minimum": 0, "maximum": 1000000},
    "fail_timeout": {"type": ["number", "string"]},
    "backup": _BOOL,
    "down": {"type": "boolean", "description": "Out of the group (nginx `down`)."},
    "drain": {"type": "boolean",
              "description": "No new requests from the reload on; requests in flight finish. "
                             "Written as `down`."},
}

_DIRECTIVES = {"type": "array", "description": 'Directives: "name args", ["name", "arg"], or '
                                               '{"name", "args", "block"}.',
               "items": {"oneOf": [{"type": "string"},
                                   {"type": "array", "items": _STR, "minItems": 1},
                                   {"type": "object", "required": ["name"],
                                    "properties": {"name": _STR,
                                                   "args": {"type": "array", "items": _STR},
                                                   "block": {"type": "array"}}}]}}

SCHEMAS.update({
    "PeerSettings": {"type": "object", "additionalProperties": False,
                     "properties": _PEER_SETTINGS},
    "UpstreamSpec": {
        "type": "object", "additionalProperties": False, "required": ["peers"],
        "properties": {
            "name": _STR,
            "method": {"type": "string", "description": "least_conn, ip_hash, hash KEY "
                                                         "[consistent], random [two], ewma"},
            "keepalive": {"type": "integer", "minimum": 1, "maximum": 1000000},
            "peers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["address"],
                "properties": dict({"address": {"type": "string", "minLength": 1},
                                    "resolve": _BOOL}, **_PEER_SETTINGS)}},
            "directives": _DIRECTIVES}},
    "RouteSpec": {
        "type": "object", "additionalProperties": False, "required": ["location"],
        "properties": {"name": _STR, "server": {"type": "string", "description":
                                                "The server's label (first server_name, else "
                                                "first listen); or ?server="},
                       "location": {"type": "string", "minLength": 1,
                                    "description": '"/v2/", "= /exact", "~ ^/re"'},
                       "directives": _DIRECTIVES}},
    "ConsumerSpec": {
        "type": "object", "additionalProperties": False,
        "description": "As an entry of the consumers file (docs/auth.md); a basic_auth "
                       "`password` is stored hashed. Secrets are never answered.",
        "properties": {"username": _STR, "custom_id": _STR,
                       "groups": {"type": "array", "items": _STR},
                       "credentials": {"type": "object", "additionalProperties": False,
                                       "properties": {"key_auth": {"type": "array"},
                                                      "basic_auth": {"type": "array"},
                                                      "jwt": {"type": "array"}}}}},
    "DeclarativeConfig": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "upstreams": {"type": ["object", "array"],
                          "description": "{name: UpstreamSpec | nginx text} or [UpstreamSpec "
                                         "with name]"},
            "routes": {"type": ["object", "array"],
                       "description": "{name: RouteSpec with server} or [RouteSpec with name "
                                      "and server]; {server, text} for nginx text"},
            "consumers": {"type": ["object", "array"],
                          "description": "[ConsumerSpec with username]: the whole file"}}},
    "HistoryEntry": {
        "type": "object", "required": ["generation", "time", "what", "files", "current"],
        "properties": {"generation": _INT, "time": _NUM, "what": _STR, "consumers": _BOOL,
                       "files": {"type": "array", "items": _STR}, "current": _BOOL}},
    "History": {
        "type": "object", "required": ["generation", "keep", "history"],
        "properties": {"generation": _INT, "keep": _INT,
                       "history": {"type": "array", "items": _ref("HistoryEntry")}}},
})

_UPSTREAM_ANSWER = {"upstream": {"oneOf": [_ref("Upstream"), {"type": "null"}]}}

PATHS["/upstreams/{name}"]["put"] = _written(
    _UPSTREAM_ANSWER, "Create or replace a managed upstream (conf.d/_admin/upstream.NAME.conf), "
                      "as JSON or as nginx text.",
    created=True, request=_ref("UpstreamSpec"), params=[_name_param("upstream")], text=True)
PATHS["/upstreams/{name}"]["delete"] = _written(
    {"deleted": _STR}, "Delete a managed upstream (409 while a route uses it).",
    params=[_name_param("upstream")])
PATHS["/upstreams/{name}/peers/{addr}"] = {
    "put": _written(dict(_UPSTREAM_ANSWER, peer=_STR, drain=_BOOL),
                    "Add a peer to a managed upstream or change its weight, down, drain.",
                    created=True, request=_ref("PeerSettings"),
                    params=[_name_param("upstream"), _ADDR_PARAM]),
    "delete": _written(dict(_UPSTREAM_ANSWER, deleted=_STR),
                       "Remove a peer from a managed upstream.",
                       params=[_name_param("upstream"), _ADDR_PARAM])}
_SERVER_PARAM = {"name": "server", "in": "query", "required": False,
                 "description": "The server the route goes in (its label).",
                 "schema": {"type": "string"}}
PATHS["/routes/{name}"] = {
    "put": _written({"route": {"oneOf": [_ref("Route"), {"type": "null"}]}},
                    "Create or replace a managed route: a location (JSON or nginx text) in a "
                    "named server.", created=True, request=_ref("RouteSpec"),
                    params=[_name_param("route"), _SERVER_PARAM], text=True),
    "delete": _written({"deleted": _STR}, "Delete a managed route.",
                       params=[_name_param("route")])}
PATHS["/consumers/{name}"]["put"] = _written(
    {"consumer": {"oneOf": [_ref("Consumer"), {"type": "null"}]}},
    "Create or replace a consumer in the consumers file (no secret is answered).",
    created=True, request=_ref("ConsumerSpec"), params=[_name_param("consumer")])
PATHS["/consumers/{name}"]["delete"] = _written(
    {"deleted": _STR}, "Delete a consumer from the consumers file.",
    params=[_name_param("consumer")])
PATHS["/config"]["put"] = _written(
    {"applied": _BOOL, "upstreams": {"type": "array", "items": _STR},
     "routes": {"type": "array", "items": _STR}},
    "Replace every managed upstream and route (and the consumers, when given) at once: "
    "all or nothing.", request=_ref("DeclarativeConfig"), yaml=True)
PATHS["/config/history"] = {"get": _read(
    "The generations whose managed files are kept (admin_history).", _ref("History"),
    "The history.")}
PATHS["/config/rollback"] = {"post": _written(
    {"rolled_back": _BOOL, "restored": _INT, "files": {"type": "array", "items": _STR}},
    "Restore the managed files of a generation of the history, through a reload.",
    params=[{"name": "to", "in": "query", "required": True, "description": "The generation.",
             "schema": {"type": "integer", "minimum": 0}}])}

# the dashboard's page and its numbers (edge/control/dashboard.py)
from edge.control.dashboard import OPENAPI_PATHS, OPENAPI_SCHEMAS  # noqa: E402
SCHEMAS.update(OPENAPI_SCHEMAS)
PATHS.update(OPENAPI_PATHS)

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "edge admin API", "version": edge.__version__,
             "description": "Served by the control process on `admin_listen` (docs/admin.md)."},
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "admin_token / admin_token_file"}},
    },
    "security": [{"bearer": []}, {}],
    "paths": PATHS,
}

# format=text answers the `edge -T` text itself
PATHS["/config"]["get"]["responses"]["200"]["content"]["text/plain"] = {"schema": _STR}

# the names a list returns lead to the one-object reads (schemathesis follows them)
PATHS["/upstreams"]["get"]["responses"]["200"]["links"] = {
    "GetUpstream": {"operationId": "getUpstream",
                    "parameters": {"name": "$response.body#/upstreams/0/name"}}}
PATHS["/consumers"]["get"]["responses"]["200"]["links"] = {
    "GetConsumer": {"operationId": "getConsumer",
                    "parameters": {"name": "$response.body#/consumers/0/username"}}}
for _path, _item in PATHS.items():
    for _method, _op in _item.items():
        _op["operationId"] = _method + "".join(
            part.strip("{}").replace(".", "_").capitalize() for part in _path.split("/") if part)
PATHS["/upstreams/{name}"]["get"]["operationId"] = "getUpstream"
PATHS["/upstreams/{name}/peers/{addr}"]["put"]["operationId"] = "putPeer"
PATHS["/upstreams/{name}/peers/{addr}"]["delete"]["operationId"] = "deletePeer"
PATHS["/consumers/{name}"]["get"]["operationId"] = "getConsumer"
PATHS["/openapi.json"]["get"]["operationId"] = "getOpenapi"
PATHS["/"]["get"]["operationId"] = "getDashboard"
