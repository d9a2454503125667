"""The dashboard: `GET /` on the admin listener, and `GET /stats`, the numbers it plots.

The page (edge/control/static/dashboard.html) is one hand-written file: HTML, CSS and
JavaScript, no build step, nothing fetched but the admin API of the node that served
it. It polls `/status`, `/routes`, `/upstreams`, `/zones` and `/stats`, keeps a short
history in the browser, and draws it with SVG. docs/admin.md#dashboard describes the
panels.

`GET /` is the one request answered without the admin token (admin_allow still
applies): the page is the same for everyone and holds no data; it asks the operator
for the token and sends it with every API call. Its Content-Security-Policy allows only
its own inline script and style (by hash) and connections to this origin, so the page
can fetch nothing from the network even if a bug tried.

`/stats` is computed on each request from the shared-memory metric slots, like
/metrics (edge/control/metrics.py): nothing is kept between requests. Counters are
totals since the zones were created; a client gets rates by differencing two answers
(`time` is when the snapshot was taken). Latency percentiles are estimated from the
histogram buckets the way Prometheus' histogram_quantile does: linearly within the
bucket that holds the rank; a rank in the +Inf bucket answers the highest finite bound.
"""

import base64
import hashlib
import os
import re
import time

from edge.control.api import Response, json_response
from edge.control.metrics import DEFAULT_BUCKETS   # the lead's Zones.BUCKETS (seconds)

PAGE_PATH = os.path.join(os.path.dirname(__file__), "static", "dashboard.html")

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


# --------------------------------------------------------------------------- the page


def _csp_hash(text):
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


class Page:
    """The page's bytes and the Content-Security-Policy that allows exactly its inline
    script and style. Read once per process (the file ships with the package)."""

    _cached = None

    def __init__(self, text):
        scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
        styles = re.findall(r"<style>(.*?)</style>", text, re.S)
        self.text = text
        self.csp = "; ".join([
            "default-src 'none'",
            "script-src " + " ".join(_csp_hash(s) for s in scripts),
            "style-src " + " ".join(_csp_hash(s) for s in styles),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ])

    @classmethod
    def get(cls):
        if cls._cached is None:
            with open(PAGE_PATH, encoding="utf-8") as f:
                cls._cached = cls(f.read())
        return cls._cached

    def render(self, token_required):
        # The one thing that varies: whether to ask for the token before the first call
        # (so that the page never makes a request it knows will be refused).
        flag = "required" if token_required else "none"
        return self.text.replace('content="@TOKEN@"', f'content="{flag}"', 1).encode("utf-8")


def get_page(server, request):
    settings = server.settings
    page = Page.get()
    body = page.render(settings is not None and settings.token is not None)
    return Response(200, body, "text/html; charset=utf-8",
                    [("Content-Security-Policy", page.csp),
                     ("X-Content-Type-Options", "nosniff"),
                     ("Referrer-Policy", "no-referrer"),
                     ("X-Frame-Options", "DENY")])


def public(request):
    """True for the request answered without the token: the page itself."""
    return request.method in ("GET", "HEAD") and request.path == "/"


# --------------------------------------------------------------------------- /stats


def quantile(q, bounds, cumulative):
    """The q-quantile (0..1) of a histogram: `cumulative` has one count per bound and a
    last one for +Inf (the total). None when it holds no observation."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for bound, count in zip(bounds, cumulative):
        if count >= rank:
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return float(bounds[-1]) if bounds else None


def _latency(bounds, buckets, total, count):
    doc = {"count": count, "sum": round(total, 6),
           "mean": round(total / count, 6) if count else None}
    for name, q in QUANTILES:
        value = quantile(q, bounds, buckets)
        doc[name] = round(value, 6) if value is not None else None
    return doc


def _sum_into(have, buckets):
    return [a + b for a, b in zip(have, buckets)] if have else list(buckets)


def stats_document(ctx, cycle, now=None):
    zones = ctx.zones
    snapshot = zones.snapshot() if zones is not None else {}
    taken = time.time() if now is None else now
    bounds = list(getattr(zones, "BUCKETS", DEFAULT_BUCKETS))

    routes, order = {}, []
    for entry in snapshot.get("http", ()):
        key = (entry["server"], entry["route"])
        doc = routes.get(key)
        if doc is None:
            doc = routes[key] = {"server": key[0], "route": key[1], "requests": 0,
                                 "classes": dict.fromkeys(CLASSES, 0), "codes": {},
                                 "received_bytes": 0, "sent_bytes": 0,
                                 "duration_buckets": [], "duration_sum": 0.0,
                                 "duration_count": 0}
            order.append(key)
        for code, count in entry.get("codes", {}).items():
            code = int(code)
            doc["codes"][str(code)] = doc["codes"].get(str(code), 0) + count
            doc["requests"] += count
            cls = f"{code // 100}xx"
            if cls in doc["classes"]:
                doc["classes"][cls] += count
        doc["received_bytes"] += entry.get("received_bytes", 0)
        doc["sent_bytes"] += entry.get("sent_bytes", 0)
        doc["duration_buckets"] = _sum_into(doc["duration_buckets"], entry["duration_buckets"])
        doc["duration_sum"] += entry["duration_sum"]
        doc["duration_count"] += entry["duration_count"]
    route_docs = []
    for key in order:
        doc = routes[key]
        doc["latency"] = _latency(bounds, doc["duration_buckets"], doc["duration_sum"],
                                  doc["duration_count"])
        doc["duration_sum"] = round(doc["duration_sum"], 6)
        route_docs.append(doc)

    ups, up_order = {}, []
    for entry in snapshot.get("upstreams", ()):
        name = entry["upstream"]
        doc = ups.get(name)
        if doc is None:
            doc = ups[name] = {"upstream": name, "buckets": [], "sum": 0.0, "count": 0}
            up_order.append(name)
        doc["buckets"] = _sum_into(doc["buckets"], entry["buckets"])
        doc["sum"] += entry["sum"]
        doc["count"] += entry["count"]
    upstream_docs = [{"upstream": n, "latency": _latency(bounds, ups[n]["buckets"], ups[n]["sum"],
                                                         ups[n]["count"])} for n in up_order]

    # every limit zone of the config, with the decisions counted so far (none yet: zeros)
    decisions = {}
    for entry in snapshot.get("limits", ()):
        zone = decisions.setdefault(entry["zone"], {})
        zone[entry["decision"]] = zone.get(entry["decision"], 0) + entry["count"]
    limit_docs = []
    for spec in cycle.limit_zones.values():
        counts = decisions.get(spec.name, {})
        limit_docs.append({"zone": spec.name, "type": f"limit_{spec.kind}",
                           "rejected": counts.get("rejected", 0) + counts.get("rejected_local", 0),
                           "decisions": counts})

    shared = ctx.shared
    return {"generation": ctx.generation,
            "config_generation": shared.generation if shared is not None else ctx.generation,
            "time": round(taken, 3), "buckets": bounds,
            "connections": snapshot.get("connections"),
            "routes": route_docs, "upstreams": upstream_docs, "limits": limit_docs}


def get_stats(server, request):
    doc = stats_document(server.ctx, server.api.cycle)
    return json_response(200, doc, server.api.etag())


def routes(server):
    """The routes the admin listener adds for the dashboard (edge/control/admin.py)."""
    from edge.control.api import Route
    return [Route("GET", "/", lambda request: get_page(server, request)),
            Route("GET", "/stats", lambda request: get_stats(server, request))]


# --------------------------------------------------------------------------- OpenAPI

_INT = {"type": "integer"}
_STR = {"type": "string"}
_SECONDS = {"type": ["number", "null"], "description": "Seconds; null without observations."}
_DENIED = {"401": {"description": "No token or a wrong one (when a token is set).",
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
           "403": {"description": "The peer is outside admin_allow.",
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}

OPENAPI_SCHEMAS = {
    "Latency": {
        "type": "object", "required": ["count", "sum", "mean", "p50", "p90", "p99"],
        "description": "Since the zones were created; quantiles estimated from the histogram "
                       "buckets (linear within a bucket).",
        "properties": {"count": _INT, "sum": {"type": "number"}, "mean": _SECONDS,
                       "p50": _SECONDS, "p90": _SECONDS, "p99": _SECONDS},
    },
    "RouteStats": {
        "type": "object",
        "required": ["server", "route", "requests", "classes", "codes", "latency",
                     "duration_buckets", "duration_sum", "duration_count"],
        "properties": {
            "server": _STR, "route": _STR, "requests": _INT,
            "classes": {"type": "object", "properties": {c: _INT for c in CLASSES}},
            "codes": {"type": "object", "additionalProperties": _INT},
            "received_bytes": _INT, "sent_bytes": _INT,
            "latency": {"$ref": "#/components/schemas/Latency"},
            "duration_buckets": {"type": "array", "items": _INT,
                                 "description": "Cumulative counts, one per bound of `buckets` "
                                                "and a last one for +Inf."},
            "duration_sum": {"type": "number"}, "duration_count": _INT,
        },
    },
    "Stats": {
        "type": "object",
        "required": ["generation", "time", "buckets", "routes", "upstreams", "limits"],
        "properties": {
            "generation": _INT, "config_generation": _INT,
            "time": {"type": "number", "description": "Unix time of the snapshot."},
            "buckets": {"type": "array", "items": {"type": "number"}},
            "connections": {"type": ["object", "null"]},
            "routes": {"type": "array", "items": {"$ref": "#/components/schemas/RouteStats"}},
            "upstreams": {"type": "array", "items": {
                "type": "object", "required": ["upstream", "latency"],
                "properties": {"upstream": _STR,
                               "latency": {"$ref": "#/components/schemas/Latency"}}}},
            "limits": {"type": "array", "items": {
                "type": "object", "required": ["zone", "type", "rejected", "decisions"],
                "properties": {"zone": _STR, "type": _STR, "rejected": _INT,
                               "decisions": {"type": "object", "additionalProperties": _INT}}}},
        },
    },
}

OPENAPI_PATHS = {
    "/": {"get": {
        "summary": "The dashboard: one static page that reads this API (no token needed "
                   "to load it; it asks for one).",
        "responses": dict(_DENIED, **{
            "200": {"description": "The page.", "content": {"text/html": {"schema": _STR}}},
            "401": {"description": "Not sent: the page is served without the token."}})}},
    "/stats": {"get": {
        "summary": "Per-route request counts by status class and latency percentiles, "
                   "upstream latency, limiter decisions: the dashboard's numbers.",
        "responses": dict({"200": {
            "description": "Totals since the metric zones were created.",
            "headers": {"ETag": {"description": "The configuration generation, quoted.",
                                 "schema": _STR}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Stats"}}}}},
            **_DENIED)}},
}
