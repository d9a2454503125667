"""``edge admin ...``: the admin API from the command line (docs/admin.md).

    edge admin [-c FILE] status|routes|upstreams|consumers [--json]

The address (``admin_listen``) and the token (``admin_token`` / ``admin_token_file``)
come from the config, loaded as ``edge -t`` would. The answer is printed as a table, or
as the API's JSON with ``--json``. Exit status: 0, or 1 on any error (the API's error
text is printed).
"""

import argparse
import http.client
import json
import socket
import sys

TIMEOUT = 10.0

COMMANDS = {
    "status": "/status",
    "routes": "/routes",
    "upstreams": "/upstreams",
    "consumers": "/consumers",
}


def _say(level, msg):
    print(f"edge: [{level}] {msg}", file=sys.stderr)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def connection(settings, timeout=TIMEOUT):
    address = settings.address
    if address.family == socket.AF_UNIX:
        return _UnixConnection(address.path, timeout)
    host = address.host
    if host in ("0.0.0.0", "::"):       # listening on every address: ask loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return http.client.HTTPConnection(host, address.port, timeout=timeout)


def request(settings, method, path, timeout=TIMEOUT):
    """(status, parsed JSON or text) of one request to the admin listener."""
    conn = connection(settings, timeout)
    headers = {"Accept": "application/json"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, body.decode("utf-8", "replace")


def table(rows, columns):
    """Rows (lists of str) under column titles, padded."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(title)] + [len(row[i]) for row in rows]) for i, title in enumerate(columns)]
    lines = ["  ".join(t.ljust(w) for t, w in zip(columns, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def show_status(doc):
    out = [f"edge {doc['version']}, generation {doc['generation']}, "
           f"up {doc.get('uptime_seconds')}s, master {doc['master_pid']}, "
           f"control {doc['control_pid']}",
           f"ready: {'yes' if doc['ready'] else 'no (' + (doc.get('ready_reason') or '') + ')'}, "
           f"draining: {'yes' if doc['draining'] else 'no'}",
           ""]
    rows = [[w["index"], w["pid"] if w["pid"] is not None else "-", w["generation"],
             "-" if w["heartbeat_age_ms"] is None else f"{w['heartbeat_age_ms']}ms"]
            for w in doc["workers"]]
    out.append(table(rows, ["WORKER", "PID", "GENERATION", "HEARTBEAT AGE"]))
    return "\n".join(out)


def show_routes(doc):
    rows = []
    for r in doc["routes"]:
        phases = ",".join(h for p in ("rewrite", "access", "header_filter") for h in r["phases"][p])
        content = r["content"] or "-"
        if r["upstream"]:
            content += f" {r['upstream']}"
        rows.append([r["server"], r["location"], r["route"], content, phases or "-",
                     f"{r['file']}:{r['line']}"])
    return table(rows, ["SERVER", "LOCATION", "ROUTE", "CONTENT", "HANDLERS", "DEFINED AT"])


def show_upstreams(doc):
    rows = []
    for u in doc["upstreams"]:
        for p in u["peers"]:
            flags = ",".join(f for f in ("backup",) if p.get(f)) or "-"
            rows.append([u["name"], p["peer"], p["weight"], p["state"], p["health"],
                         p["failures"], p["active"], flags])
    return table(rows, ["UPSTREAM", "PEER", "WEIGHT", "STATE", "HEALTH", "FAILURES", "ACTIVE",
                        "FLAGS"])


def show_consumers(doc):
    rows = []
    for c in doc["consumers"]:
        creds = ", ".join(f"{k['type']}:{k['id']}" for k in c["credentials"]) or "-"
        rows.append([c["username"], c["custom_id"] or "-", ",".join(c["groups"]) or "-", creds])
    return table(rows, ["CONSUMER", "CUSTOM ID", "GROUPS", "CREDENTIALS"])


SHOW = {"status": show_status, "routes": show_routes, "upstreams": show_upstreams,
        "consumers": show_consumers}


def main(argv):
    parser = argparse.ArgumentParser(prog="edge admin",
                                     description="The admin API of the running edge.")
    parser.add_argument("what", choices=list(COMMANDS))
    parser.add_argument("-c", dest="conf", metavar="FILE", help="configuration file")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    args = parser.parse_args(argv)
    from edge import cli
    conf = cli.config_path(args.conf)
    cycle = cli._load(conf)
    if cycle is None:
        return 1
    if cycle.admin is None:
        _say("error", f'no "admin_listen" in {conf}')
        return 1
    try:
        status, doc = request(cycle.admin, "GET", COMMANDS[args.what])
    except OSError as e:
        _say("error", f"admin API at {cycle.admin.address.key}: {e}")
        return 1
    if status != 200 or not isinstance(doc, dict):
        message = doc.get("error") if isinstance(doc, dict) else doc
        _say("error", f"admin API at {cycle.admin.address.key}: {status} {message}")
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(SHOW[args.what](doc))
    return 0
