"""``edge admin ...``: the admin API from the command line (docs/admin.md).

    edge admin [-c FILE] status|routes|upstreams|consumers|history [--json]
    edge admin [-c FILE] set-peer UPSTREAM ADDR [--weight N] [--down|--up] [--drain]
    edge admin [-c FILE] apply FILE          (PUT /config: YAML or JSON)
    edge admin [-c FILE] rollback GEN        (also: edge config rollback GEN)

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
WRITE_TIMEOUT = 75.0        # a write waits for its reload (the API gives up at 60 s)

COMMANDS = {
    "status": "/status",
    "routes": "/routes",
    "upstreams": "/upstreams",
    "consumers": "/consumers",
    "history": "/config/history",
}
WRITES = ("set-peer", "apply", "rollback")


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


def request(settings, method, path, timeout=TIMEOUT, body=None, content_type=None):
    """(status, parsed JSON or text) of one request to the admin listener."""
    conn = connection(settings, timeout)
    headers = {"Accept": "application/json"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
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


def show_history(doc):
    import time
    rows = [[h["generation"] if not h.get("current") else f"{h['generation']} *",
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["time"])), h["what"],
             len(h["files"])] for h in doc["history"]]
    return table(rows, ["GENERATION", "SAVED", "MADE BY", "FILES"]) + \
        f"\n(* in force; the last {doc['keep']} generations are kept)"


SHOW = {"status": show_status, "routes": show_routes, "upstreams": show_upstreams,
        "consumers": show_consumers, "history": show_history}


def _write_request(args):
    """(method, path, body bytes or None, content type) of a write command; ValueError
    for a bad command line."""
    from urllib.parse import quote
    if args.what == "set-peer":
        if len(args.rest) != 2:
            raise ValueError("set-peer UPSTREAM ADDR [--weight N] [--down|--up] [--drain]")
        doc = {}
        if args.weight is not None:
            doc["weight"] = args.weight
        if args.down:
            doc["down"] = True
        if args.up:
            doc["down"] = False
            doc["drain"] = False
        if args.drain:
            doc["drain"] = True
        upstream, addr = args.rest
        return ("PUT", f"/upstreams/{quote(upstream, safe='')}/peers/{quote(addr, safe='')}",
                json.dumps(doc).encode(), "application/json")
    if args.what == "apply":
        if len(args.rest) != 1:
            raise ValueError("apply FILE (YAML or JSON: upstreams, routes, consumers)")
        with open(args.rest[0], "rb") as f:
            data = f.read()
        ctype = "application/json" if args.rest[0].endswith(".json") else "application/yaml"
        return "PUT", "/config", data, ctype
    if len(args.rest) != 1 or not args.rest[0].isdigit():
        raise ValueError("rollback GEN (a generation of `edge admin history`)")
    return "POST", f"/config/rollback?to={args.rest[0]}", None, None


def _say_written(doc):
    if doc.get("rolled_back"):
        return f"rolled back to the files of generation {doc['restored']}: generation {doc['generation']} in force"
    return f"applied: generation {doc['generation']} in force"


def main(argv):
    parser = argparse.ArgumentParser(prog="edge admin",
                                     description="The admin API of the running edge.")
    parser.add_argument("what", choices=list(COMMANDS) + list(WRITES))
    parser.add_argument("rest", nargs="*", help="set-peer UPSTREAM ADDR, apply FILE, rollback GEN")
    parser.add_argument("-c", dest="conf", metavar="FILE", help="configuration file")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    parser.add_argument("--weight", type=int, help="set-peer: the peer's weight")
    updown = parser.add_mutually_exclusive_group()
    updown.add_argument("--down", action="store_true", help="set-peer: mark the peer down")
    updown.add_argument("--up", action="store_true", help="set-peer: bring it back (not down, "
                                                          "not drained)")
    parser.add_argument("--drain", action="store_true",
                        help="set-peer: no new requests, the ones in flight finish")
    args = parser.parse_args(argv)
    if args.drain and args.up:
        parser.error("--drain and --up are contradictory")
    write = None
    if args.what in WRITES:
        try:
            write = _write_request(args)
        except ValueError as e:
            parser.error(str(e))
        except OSError as e:
            _say("error", f"{args.rest[0]}: {e.strerror}")
            return 1
    elif args.rest:
        parser.error(f"{args.what} takes no argument")
    from edge import cli
    conf = cli.config_path(args.conf)
    cycle = cli._load(conf)
    if cycle is None:
        return 1
    if cycle.admin is None:
        _say("error", f'no "admin_listen" in {conf}')
        return 1
    try:
        if write is not None:
            method, path, body, ctype = write
            status, doc = request(cycle.admin, method, path, WRITE_TIMEOUT, body, ctype)
        else:
            status, doc = request(cycle.admin, "GET", COMMANDS[args.what])
    except OSError as e:
        _say("error", f"admin API at {cycle.admin.address.key}: {e}")
        return 1
    if status not in (200, 201) or not isinstance(doc, dict):
        message = doc.get("error") if isinstance(doc, dict) else doc
        if isinstance(doc, dict) and doc.get("field"):
            message = f"{message} (field: {doc['field']})"
        _say("error", f"admin API at {cycle.admin.address.key}: {status} {message}")
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    elif write is not None:
        print(_say_written(doc))
    else:
        print(SHOW[args.what](doc))
    return 0
