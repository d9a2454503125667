"""`/metrics`: the Prometheus text format 0.0.4, rendered on each scrape.

Everything comes from shared memory, read without locks: `zones.snapshot()` (the
per-worker metric slots summed by the lead's Zones, see /work/issue7-spec.md) and the
master's counters in the state block. Nothing is kept here between scrapes, so a
respawned control process reports the same totals as the one before it.

Labels come only from the config (server names, routes, upstreams, peers, log sinks,
status codes the data plane can send), never from request data: a scrape lists as
many series as the config declares, whatever the traffic.

Several snapshot entries may carry the same labels (two servers with the same first
name, a route text repeated in two servers of one name); their values are summed, so
each series appears once, as the format requires.
"""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The lead's Zones.BUCKETS; used when a snapshot comes without its class (zones None).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONNECTION_STATES = ("active", "reading", "writing", "idle")


def escape_label(value):
    """A label value as the text format wants it: backslash, double quote and line
    feed escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def format_le(bound):
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Family:
    """One metric family: its HELP and TYPE lines and its samples, in insertion order."""

    def __init__(self, name, kind, help_text):
        self.name = name
        self.kind = kind
        self.help = help_text
        self.lines = []

    def sample(self, value, labels=(), suffix=""):
        text = self.name + suffix
        if labels:
            text += "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"
        self.lines.append(f"{text} {format_value(value)}")

    def histogram(self, labels, buckets, bounds, total, count):
        """`buckets`: cumulative counts, one per bound and one for +Inf."""
        for bound, value in zip(list(bounds) + [float("inf")], buckets):
            self.sample(value, tuple(labels) + (("le", format_le(bound)),), "_bucket")
        self.sample(total, labels, "_sum")
        self.sample(count, labels, "_count")

    def render(self):
        head = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        return "\n".join(head + self.lines)


def _add(into, key, value):
    into[key] = into.get(key, 0) + value


def _add_histogram(into, key, buckets, total, count):
    have = into.get(key)
    if have is None:
        into[key] = [list(buckets), total, count]
        return
    have[0] = [a + b for a, b in zip(have[0], buckets)]
    have[1] += total
    have[2] += count


def render(snapshot, counters, drops=None, buckets=DEFAULT_BUCKETS, limit_sync=None,
           peers=None, ssl_sessions=None):
    """The exposition text.

    - `snapshot`: `zones.snapshot()` or None (no zones: only the master's families have
      samples; the others are declared with none);
    - `counters`: {"generation", "reloads_ok", "reloads_failed", "worker_restarts"};
    - `drops`: {sink text: records dropped from the control process's own queues};
    - `limit_sync`: LimitSync.metrics() ({"roundtrips", "failures", "up", "live_nodes"})
      or None (no cluster-scope zone: the families are left out);
    - `peers`: {(upstream, peer): health word} of the peers the config has now (the
      upstream service's peers_in_force()), or None. When given, the peer families list
      exactly these (the zone also remembers peers of older configs and older DNS
      answers), and a peer the health check holds down (an even nonzero word) is 0.
    - `ssl_sessions`: TicketRotation.ssl_session_metrics() ({"caches": {zone: stats},
      "ticket_keys": n, "ticket_rotations": n}) or None (no TLS session resumption
      zones: the families are left out).
    """
    snapshot = snapshot or {}
    families = []

    def family(name, kind, help_text):
        f = Family(name, kind, help_text)
        families.append(f)
        return f

    requests = family("edge_http_requests_total", "counter",
                      "HTTP requests answered, by server, route and status code.")
    duration = family("edge_http_request_duration_seconds", "histogram",
                      "Time from the first byte of a request to the last byte of its response.")
    received = family("edge_http_received_bytes_total", "counter",
                      "Bytes received from clients (request heads and bodies).")
    sent = family("edge_http_sent_bytes_total", "counter",
                  "Bytes sent to clients (response heads and bodies).")
    upstream = family("edge_upstream_response_duration_seconds", "histogram",
                      "Time an upstream took to send its whole response, by upstream.")
    connections = family("edge_connections", "gauge",
                         "Client connections now open, by state (active is the total).")
    at_rest = family("edge_connections_at_rest", "gauge",
                     "Idle client connections parked in their small form (part of idle).")
    pool_free = family("edge_buffer_pool_free_bytes", "gauge",
                       "Bytes of free buffers the workers keep for the next requests.")
    failures = family("edge_upstream_peer_failures_total", "counter",
                      "Failed attempts to talk to an upstream peer.")
    peer_up = family("edge_upstream_peer_up", "gauge",
                     "1 if the upstream peer is considered up, else 0.")
    generation = family("edge_config_generation", "gauge",
                        "The configuration generation in force.")
    reloads = family("edge_config_reloads_total", "counter",
                     "Configuration reloads, by result (ok or failed).")
    restarts = family("edge_worker_restarts_total", "counter",
                      "Worker processes restarted after an unexpected exit.")
    limited = family("edge_limit_requests_total", "counter",
                     "Decisions of limit_req, limit_count and limit_conn, by zone and decision "
                     "(passed, delayed, rejected, dry_run; passed_local and rejected_local: "
                     "made under limit_redis_failure while Redis was unreachable).")
    dropped = family("edge_log_records_dropped_total", "counter",
                     "Log records dropped because a ring or a sink queue was full, by sink.")

    by_code, hist, rx, tx = {}, {}, {}, {}
    for entry in snapshot.get("http", ()):
        key = (("server", entry["server"]), ("route", entry["route"]))
        for code, count in entry.get("codes", {}).items():
            _add(by_code, key + (("code", str(code)),), count)
        _add_histogram(hist, key, entry["duration_buckets"], entry["duration_sum"],
                       entry["duration_count"])
        _add(rx, key, entry.get("received_bytes", 0))
        _add(tx, key, entry.get("sent_bytes", 0))
    for key, value in by_code.items():
        requests.sample(value, key)
    for key, (b, total, count) in hist.items():
        duration.histogram(key, b, buckets, total, count)
    for key, value in rx.items():
        received.sample(value, key)
    for key, value in tx.items():
        sent.sample(value, key)

    up_hist = {}
    for entry in snapshot.get("upstreams", ()):
        _add_histogram(up_hist, (("upstream", entry["upstream"]),), entry["buckets"],
                       entry["sum"], entry["count"])
    for key, (b, total, count) in up_hist.items():
        upstream.histogram(key, b, buckets, total, count)

    state = snapshot.get("connections")
    if state is not None:
        for name in CONNECTION_STATES:
            connections.sample(state.get(name, 0), (("state", name),))
        at_rest.sample(state.get("at_rest", 0), ())
        pool_free.sample(state.get("pool_free_bytes", 0), ())

    peer_fail, peer_state = {}, {}
    for entry in snapshot.get("peers", ()):
        key = (("upstream", entry["upstream"]), ("peer", entry["peer"]))
        _add(peer_fail, key, entry.get("failures", 0))
        # the same peer listed twice is up only if every entry says so
        peer_state[key] = peer_state.get(key, True) and bool(entry.get("up"))
    if peers is not None:
        in_force = {(("upstream", u), ("peer", p)): word for (u, p), word in peers.items()}
        peer_fail = {key: peer_fail.get(key, 0) for key in in_force}
        peer_state = {key: peer_state.get(key, True) and not (word and word % 2 == 0)
                      for key, word in in_force.items()}
    for key, value in peer_fail.items():
        failures.sample(value, key)
    for key, value in peer_state.items():
        peer_up.sample(1 if value else 0, key)

    generation.sample(counters.get("generation", 0))
    reloads.sample(counters.get("reloads_ok", 0), (("result", "ok"),))
    reloads.sample(counters.get("reloads_failed", 0), (("result", "failed"),))
    restarts.sample(counters.get("worker_restarts", 0))

    decisions = {}
    for entry in snapshot.get("limits", []):
        _add(decisions, (entry["zone"], entry["decision"]), entry["count"])
    for (zone, decision), count in sorted(decisions.items()):
        limited.sample(count, (("zone", zone), ("decision", decision)))

    mirrored = family("edge_mirror_requests_total", "counter",
                      "Mirror copies by mirror URI and result: sent (answered), failed (no "
                      "peer, refused, reset, timed out) and dropped (the worker's queue was full).")
    copies = {}
    for entry in snapshot.get("mirrors", []):
        _add(copies, (entry["mirror"], entry["result"]), entry["count"])
    for (mirror, result), count in sorted(copies.items()):
        mirrored.sample(count, (("mirror", mirror), ("result", result)))

    sinks = {}
    for sink, info in snapshot.get("sinks", {}).items():
        _add(sinks, sink, info.get("ring_dropped", 0))
    for sink, count in (drops or {}).items():
        _add(sinks, sink, count)
    for sink, count in sinks.items():
        dropped.sample(count, (("sink", sink),))

    if limit_sync is not None:
        family("edge_limit_sync_roundtrips_total", "counter",
               "Round trips to Redis that synced cluster-scope limit zones."
               ).sample(limit_sync.get("roundtrips", 0))
        family("edge_limit_sync_failures_total", "counter",
               "Sync rounds with Redis that failed or timed out."
               ).sample(limit_sync.get("failures", 0))
        family("edge_limit_redis_up", "gauge",
               "1 if the last sync with Redis succeeded (cluster mode), else 0."
               ).sample(limit_sync.get("up", 0))
        family("edge_limit_cluster_nodes", "gauge",
               "Live edge nodes counted from the heartbeats in Redis."
               ).sample(limit_sync.get("live_nodes", 1))

    if ssl_sessions is not None:
        caches = ssl_sessions.get("caches") or {}
        if caches:
            events = family("edge_ssl_session_cache_events_total", "counter",
                            "Shared TLS session cache operations, by zone and outcome (stored, "
                            "hit, miss, evicted, expired, removed, too_big, busy).")
            used = family("edge_ssl_session_cache_bytes", "gauge",
                          "Bytes of the shared TLS session cache's ring holding sessions.")
            for zone in sorted(caches):
                stats = caches[zone]
                for event, key in (("stored", "stored"), ("hit", "hits"), ("miss", "misses"),
                                   ("evicted", "evicted"), ("expired", "expired"),
                                   ("removed", "removed"), ("too_big", "too_big"), ("busy", "busy")):
                    events.sample(stats.get(key, 0), (("zone", zone), ("event", event)))
                used.sample(stats.get("bytes_used", 0), (("zone", zone),))
        if ssl_sessions.get("ticket_keys") is not None:
            family("edge_ssl_session_ticket_keys", "gauge",
                   "Shared TLS session ticket keys that decrypt (the first also encrypts)."
                   ).sample(ssl_sessions["ticket_keys"])
            family("edge_ssl_session_ticket_key_rotations_total", "counter",
                   "Rotations of the shared TLS session ticket keys since the keys were made."
                   ).sample(ssl_sessions.get("ticket_rotations", 0))
    return "\n".join(f.render() for f in families) + "\n"
