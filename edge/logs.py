"""``edge logs query`` and ``edge logs tail``: the JSON access logs, read back.

    edge logs query "SQL" [--logs GLOB ...] [--format table|csv|json] [-c FILE]
    edge logs tail [--route R] [--status 5xx|404|4xx,5xx] [--logs PATH ...] [-n N] [-c FILE]

``query`` runs DuckDB over every file the globs match (rotated and gzipped ones
included) as a view named ``logs`` with one typed column per field of the built-in
``json`` format (``FIELDS``). ``tail`` follows the live files as ``tail -F`` does and
prints each matching record on one line.

Without ``--logs`` both read the config (``-c``, chosen as the other commands choose it)
for its ``access_log`` directives whose format is ``json`` or a ``log_format`` declared
``escape=json``; files, not remote sinks. ``query`` adds each file's rotated siblings
(``PATH.1``, ``PATH.2.gz``, ``PATH-20261201``); ``tail`` follows the live ``PATH``.

Nothing here imports the compiled reactor: the logs can be read on a machine, or with a
checkout, where edge does not run. See docs/logs.md.
"""

import argparse
import csv
import datetime
import decimal
import glob
import json
import math
import os
import re
import signal
import sys
import time

from edge.cli import _say, config_path

# The columns of ``logs`` and their DuckDB types, from the built-in ``json`` format. A
# custom escape=json format that uses these names gets the same columns; fields under
# other names are not read. The types are explicit, so a value that does not fit (an
# empty ``status``, a quoted number) becomes NULL or is cast instead of failing the file,
# and an odd first line cannot make DuckDB guess a type that later lines break.
FIELDS = (
    ("time", "TIMESTAMPTZ"),  # shown in UTC
    ("msec", "DOUBLE"),
    ("request_id", "VARCHAR"),
    ("remote_addr", "VARCHAR"),
    ("remote_user", "VARCHAR"),
    ("host", "VARCHAR"),
    ("server_name", "VARCHAR"),
    ("route", "VARCHAR"),
    ("request_method", "VARCHAR"),
    ("request_uri", "VARCHAR"),
    ("uri", "VARCHAR"),
    ("args", "VARCHAR"),
    ("server_protocol", "VARCHAR"),
    ("status", "INTEGER"),
    ("request_length", "BIGINT"),
    ("bytes_sent", "BIGINT"),
    ("body_bytes_sent", "BIGINT"),
    ("request_time", "DOUBLE"),
    # Strings, as nginx's: "" without an upstream, comma lists when several peers
    # were tried ("502, 200").
    ("upstream_addr", "VARCHAR"),
    ("upstream_status", "VARCHAR"),
    ("upstream_connect_time", "VARCHAR"),
    ("upstream_header_time", "VARCHAR"),
    ("upstream_response_time", "VARCHAR"),
    ("http_referer", "VARCHAR"),
    ("http_user_agent", "VARCHAR"),
    ("http_x_forwarded_for", "VARCHAR"),
    ("connection", "BIGINT"),
    ("connection_requests", "BIGINT"),
    ("pid", "INTEGER"),
)

# access_log targets that are sinks, not files.
REMOTE_PREFIXES = ("syslog:", "http://", "https://", "redis://", "kafka://")

# Rotated siblings that DuckDB cannot decompress; reading them would only make every
# line "malformed". DuckDB reads plain files, .gz and .zst.
UNREADABLE_SUFFIXES = (".bz2", ".xz", ".lz4", ".lzma", ".zip", ".Z", ".7z")

TAIL_POLL = 0.2       # seconds between looks at the followed files
TAIL_GRACE = 10.0     # keep reading a rotated-away file this long after it last grew
TAIL_BLOCK = 65536    # bytes read at a time when looking back for the last N lines


class LogsError(Exception):
    """A user-facing error: printed as ``edge: [error] ...``, exit status 1."""


# --------------------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="edge logs",
        description="Query and follow edge's JSON access logs.",
        epilog="Without --logs, the files come from the config's access_log directives "
               "in the json format (or a log_format with escape=json).")
    sub = parser.add_subparsers(dest="action", metavar="query|tail", required=True)

    def common(p):
        p.add_argument("-c", dest="conf", metavar="FILE",
                       help="configuration file naming the logs (default: as for edge)")
        p.add_argument("-p", dest="prefix", metavar="PREFIX",
                       help="prefix directory: relative paths are taken from here")

    q = sub.add_parser("query", help="run SQL over the logs (a table named logs)",
                       description="Run DuckDB SQL over the JSON access logs, a table "
                                   "named logs. Put the SQL before --logs.")
    q.add_argument("sql", nargs="?", metavar="SQL", help='e.g. "SELECT status, count(*) '
                                                       'FROM logs GROUP BY ALL"')
    q.add_argument("--logs", action="extend", nargs="+", metavar="GLOB",
                   help="files to read (globs, as given; include rotated files with "
                        "access.log*); default: the config's JSON access logs and their "
                        "rotated siblings")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output: an aligned table (default), CSV, or a JSON array")
    common(q)

    t = sub.add_parser("tail", help="follow the live log, formatted",
                       description="Follow the JSON access log as tail -F does, one "
                                   "formatted line per matching record.")
    t.add_argument("--route", action="append", metavar="R",
                   help="only this route (the location's route_name or match text); "
                        "may repeat")
    t.add_argument("--status", type=status_filter, metavar="5xx|404|4xx,5xx",
                   help="only these status codes or classes")
    t.add_argument("--logs", action="extend", nargs="+", metavar="PATH",
                   help="files to follow; default: the config's JSON access logs")
    t.add_argument("-n", dest="lines", type=int, default=10, metavar="N",
                   help="start with the last N matching records (default 10)")
    common(t)
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    if args.prefix:
        try:
            os.chdir(args.prefix)
        except OSError as e:
            _say("error", f'chdir() to "{args.prefix}" failed ({e.errno}: {e.strerror})')
            return 1
    try:
        if args.action == "query":
            return query(args)
        return tail(args)
    except LogsError as e:
        _say("error", str(e))
        return 1


# --------------------------------------------------------------------------- the config


def json_access_logs(nodes):
    """The file paths of the ``access_log`` directives in ``nodes`` (a parsed config
    tree) that write JSON: the built-in ``json`` format or a ``log_format`` declared
    with ``escape=json``. In the order written, without repeats; remote sinks and
    ``off`` left out. A path with variables (``/var/log/$host.log``) becomes a glob."""
    formats = {"json": "json", "combined": "default"}  # name -> escape
    directives = []

    def walk(block):
        for node in block:
            if node.name == "log_format" and node.args:
                escape = "default"
                for arg in node.args[1:2]:
                    if arg.startswith("escape="):
                        escape = arg[len("escape="):]
                formats[node.args[0]] = escape
            elif node.name == "access_log" and node.args:
                directives.append(node)
            if node.block:
                walk(node.block)

    walk(nodes)
    paths = []
    for node in directives:  # after the walk: a log_format may follow its first use
        target = node.args[0]
        fmt = node.args[1] if len(node.args) > 1 else "combined"
        if target == "off" or target.startswith(REMOTE_PREFIXES):
            continue
        if formats.get(fmt) != "json":
            continue
        path = re.sub(r"\$(\{\w+\}|\w+)", "*", target)
        if path not in paths:
            paths.append(path)
    return paths


def config_logs(conf):
    """The JSON access-log paths named by the config file ``conf``."""
    from edge.config import ConfigError, parse_file
    try:
        parsed = parse_file(conf)
    except ConfigError as e:
        raise LogsError(f"no --logs given and the config cannot be read: {e}") from None
    paths = json_access_logs(parsed.nodes)
    if not paths:
        raise LogsError(f"no --logs given and {conf} has no access_log in a JSON format "
                        "(json, or a log_format with escape=json)")
    return paths


def rotated_globs(path):
    """``path`` and its rotated siblings: PATH followed by ``.`` or ``-`` and anything
    (``.1``, ``.2.gz``, ``-20261201``), as logrotate names them."""
    base = path if _has_magic(path) else glob.escape(path)
    return [base, base + ".*", base + "-*"]


def _has_magic(path):
    return any(c in path for c in "*?[")


def expand(globs):
    """The files matched by ``globs``: sorted, without repeats, regular files only."""
    files = []
    for pattern in globs:
        for name in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
            if os.path.isfile(name) and name not in files:
                files.append(name)
    return files


# --------------------------------------------------------------------------- query


def query(args):
    if not args.sql:
        raise LogsError("no SQL given (put the SQL before --logs, or quote the globs)")
    if args.logs:
        globs = args.logs
        files = expand(globs)
    else:
        globs = [g for path in config_logs(config_path(args.conf))
                 for g in rotated_globs(path)]
        files = []
        for name in expand(globs):
            if name.endswith(UNREADABLE_SUFFIXES):
                _say("warn", f'skipping "{name}": DuckDB reads plain, .gz and .zst files')
            else:
                files.append(name)
    if not files:
        raise LogsError("no log files matched " + ", ".join(globs))

    try:
        import duckdb
    except ImportError:
        raise LogsError("edge logs query needs DuckDB: pip install duckdb") from None

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        define_views(con, files)
        try:
            result = con.execute(args.sql)
        except duckdb.Error as e:
            raise LogsError(str(e)) from None
        try:
            write_result(result, args.format, sys.stdout)
        except BrokenPipeError:
            _quiet_stdout()
            return 0
        except duckdb.Error as e:  # raised while fetching, e.g. a failing cast
            raise LogsError(str(e)) from None
        sys.stdout.flush()
        skipped = con.execute("SELECT count(*) FROM _lines WHERE _empty").fetchone()[0]
        if skipped:
            _say("warn", f"skipped {skipped} malformed line{'s' if skipped != 1 else ''}")
    finally:
        con.close()
    return 0


def define_views(con, files):
    """Create the views ``_lines`` (every line read, ``_empty`` when it carried no
    known field) and ``logs`` (the records, plus the ``file`` each came from).

    ``ignore_errors`` makes a malformed line a row of NULLs instead of an error for the
    whole query; such rows are what ``_empty`` marks. A JSON object with none of the
    known fields is counted with them: it would be a row of NULLs in ``logs``.
    DuckDB decompresses by the file name's extension, per file.
    """
    columns = "{" + ", ".join(f"{_sql_str(name)}: {_sql_str(kind)}"
                              for name, kind in FIELDS) + "}"
    file_list = "[" + ", ".join(_sql_str(f) for f in files) + "]"
    empty = " AND ".join(f'"{name}" IS NULL' for name, _ in FIELDS)
    con.execute(f"""
        CREATE TEMP VIEW _lines AS
        SELECT *, ({empty}) AS _empty
        FROM read_json({file_list}, format = 'newline_delimited', columns = {columns},
                       ignore_errors = true, filename = true)""")
    names = ", ".join(f'"{name}"' for name, _ in FIELDS)
    con.execute(f"""
        CREATE TEMP VIEW logs AS
        SELECT {names}, filename AS file FROM _lines WHERE NOT _empty""")


def _sql_str(text):
    return "'" + text.replace("'", "''") + "'"


def write_result(result, fmt, out):
    """Print a DuckDB result as an aligned table, CSV or a JSON array."""
    if result.description is None:  # a statement without a result (SET, CREATE ...)
        return
    names = [d[0] for d in result.description]
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        while rows := result.fetchmany(1000):
            writer.writerows([_csv_cell(v) for v in row] for row in rows)
    elif fmt == "json":
        out.write("[")
        first = True
        while rows := result.fetchmany(1000):
            for row in rows:
                record = {name: _json_value(v) for name, v in zip(names, row)}
                out.write(("\n" if first else ",\n")
                          + json.dumps(record, ensure_ascii=False, allow_nan=False))
                first = False
        out.write("\n]\n" if not first else "]\n")
    else:
        write_table(names, result.fetchall(), out)


def write_table(names, rows, out):
    """Header, a rule, the rows (numbers right-aligned), and a row count."""
    cells = [[_text(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float, decimal.Decimal)) or row[i] is None
                   for row in rows) and any(row[i] is not None for row in rows)
               for i in range(len(names))]
    header = [_printable(n) for n in names]
    widths = [max([len(header[i])] + [len(c[i]) for c in cells]) for i in range(len(names))]

    def line(values):
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip() + "\n"

    out.write(line(header))
    out.write(line(["-" * w for w in widths]))
    for row in cells:
        out.write(line(row))
    out.write(f"({len(rows)} row{'' if len(rows) == 1 else 's'})\n")


def _text(value):
    """A value for the table: NULL spelled out, no control characters."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return _printable(value)
    return _printable(_csv_cell(value))


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(_json_value(value), ensure_ascii=False)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _json_value(value):
    """A DuckDB value as JSON can hold it (NaN and infinities become null)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return _json_value(float(value))
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return _csv_cell(value)


# What a terminal must not receive raw: values come from clients (URIs, user agents).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text):
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _quiet_stdout():
    """After EPIPE (``edge logs ... | head``): stop Python complaining at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


# --------------------------------------------------------------------------- tail


def status_filter(text):
    """``5xx``, ``404``, ``4xx,5xx`` -> a predicate on a status code."""
    tests = []
    for item in text.split(","):
        item = item.strip().lower()
        if re.fullmatch(r"[1-5]xx", item):
            tests.append(range(int(item[0]) * 100, int(item[0]) * 100 + 100))
        elif re.fullmatch(r"[1-5]\d\d", item):
            tests.append((int(item),))
        else:
            raise argparse.ArgumentTypeError(
                f'"{item}" is not a status code or class (404, 5xx, 4xx,5xx)')
    return lambda status: any(status in t for t in tests)


class Matcher:
    """Parses a log line and says whether it passes the filters."""

    def __init__(self, routes=None, status=None):
        self.routes = set(routes) if routes else None
        self.status = status

    def __call__(self, line):
        """The record of ``line`` (bytes) if it is one and matches, else None."""
        try:
            record = json.loads(line)
        except ValueError:  # malformed, or a partial line left by a crash: skip it
            return None
        if not isinstance(record, dict):
            return None
        if self.routes is not None and record.get("route") not in self.routes:
            return None
        if self.status is not None:
            try:
                code = int(record.get("status"))
            except (TypeError, ValueError):
                return None
            if not self.status(code):
                return None
        return record


def format_record(r):
    """One line: time status method uri route= request_time client up=upstream."""
    def field(name):
        value = r.get(name)
        return "-" if value is None or value == "" else str(value)

    try:
        took = f"{float(r.get('request_time')):.3f}s"
    except (TypeError, ValueError):
        took = "-"
    route = field("route")
    if any(c.isspace() for c in route) or '"' in route:
        route = json.dumps(route)
    parts = [field("time"), field("status"), field("request_method"),
             field("request_uri") if r.get("request_uri") else field("uri"),
             f"route={route}", took, field("remote_addr")]
    if r.get("upstream_addr"):
        # nginx's lists ("a:81, a:82") without their spaces: one word per field.
        parts.append("up=" + str(r["upstream_addr"]).replace(", ", ","))
        upstream_status = str(r.get("upstream_status") or "")
        if upstream_status and upstream_status != str(r.get("status")):
            parts.append("up_status=" + upstream_status.replace(", ", ","))
    return _printable(" ".join(parts))


def last_matching(f, count, match):
    """The last ``count`` matching records of the open binary file ``f``, read
    backwards from its end, and the offset just after the last complete line (a line
    being written is left for the follower to read whole)."""
    end = f.seek(0, os.SEEK_END)
    pos = end
    carry = b""          # the start of a line cut by the block boundary
    complete_end = None  # offset after the file's last newline, once seen
    found = []
    while pos > 0 and len(found) < count:
        step = min(TAIL_BLOCK, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step) + carry
        lines = chunk.split(b"\n")
        if complete_end is None:
            if len(lines) == 1:  # no newline yet: all of it is a line being written
                carry = chunk
                continue
            complete_end = end - len(lines[-1])
            lines.pop()
        carry = lines.pop(0) if pos > 0 else b""
        for line in reversed(lines):
            record = match(line)
            if record is not None:
                found.append(record)
                if len(found) == count:
                    break
    if complete_end is None:
        complete_end = 0
    found.reverse()
    return found, complete_end


class Follower:
    """One path followed as ``tail -F`` follows it: when the file is replaced (renamed
    away and created again) the new one is read from its start, and the old one is
    still drained for TAIL_GRACE seconds, since a writer keeps writing to it until it
    reopens its logs; when it is truncated (copytruncate), reading starts over."""

    MARK = 64  # bytes before the read position that must not change (see _rewritten)

    def __init__(self, path):
        self.path = path
        self.f = None
        self.partial = b""
        self.mark = b""    # the MARK bytes before self.f's position
        self.retired = []  # [file, partial, time it last grew]

    def start(self, count, match):
        """Open the file (if it exists) and return its last ``count`` matching records."""
        try:
            self.f = open(self.path, "rb")
        except OSError:
            return []
        if count <= 0:
            self.f.seek(0, os.SEEK_END)
            self._remember()
            return []
        found, offset = last_matching(self.f, count, match)
        self.f.seek(offset)
        self._remember()
        return found

    def poll(self):
        """The complete lines written since the last call."""
        lines = []
        now = time.monotonic()
        for entry in list(self.retired):
            got, entry[1] = _read_lines(entry[0], entry[1])
            lines += got
            if got:
                entry[2] = now
            elif now - entry[2] > TAIL_GRACE:
                entry[0].close()
                self.retired.remove(entry)
        if self.f is not None:
            if self._rewritten():
                _say("notice", f'"{self.path}" was truncated; reading from its start')
                self.f.seek(0)
                self.partial = b""
            lines += self._read()
        try:
            st = os.stat(self.path)
        except OSError:
            return lines  # rotated away and not created again yet: wait for it
        if self.f is None:
            self._open_new()
        else:
            own = os.fstat(self.f.fileno())
            if (own.st_dev, own.st_ino) != (st.st_dev, st.st_ino):
                _say("notice", f'"{self.path}" has been replaced; following the new file')
                self.retired.append([self.f, self.partial, now])
                self._open_new()
        if self.f is not None:
            lines += self._read()
        return lines

    def _read(self):
        got, self.partial = _read_lines(self.f, self.partial)
        if got or self.partial:
            self._remember()
        return got

    def _remember(self):
        pos = self.f.tell()
        size = min(self.MARK, pos)
        self.mark = os.pread(self.f.fileno(), size, pos - size)

    def _rewritten(self):
        """Was the file truncated since we read it? A smaller size says so, but not
        when it was written past our position again before we looked (copytruncate,
        then a burst of records): then the bytes before our position have changed."""
        pos = self.f.tell()
        return os.pread(self.f.fileno(), len(self.mark), pos - len(self.mark)) != self.mark

    def _open_new(self):
        try:
            self.f = open(self.path, "rb")
        except OSError:
            self.f = None
        self.partial = b""
        self.mark = b""

    def close(self):
        for entry in self.retired:
            entry[0].close()
        if self.f is not None:
            self.f.close()


def _read_lines(f, partial):
    data = f.read()
    if not data:
        return [], partial
    lines = (partial + data).split(b"\n")
    return lines[:-1], lines[-1]


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop()


def tail(args):
    paths = args.logs or config_logs(config_path(args.conf))
    # A config path with variables is a glob: follow the files it matches now.
    paths = [p for path in paths for p in (expand([path]) if _has_magic(path) else [path])]
    if not paths:
        raise LogsError("no log file to follow")
    match = Matcher(args.route, args.status)
    # SIGTERM ends the command as Ctrl-C does: quietly, with status 0.
    signal.signal(signal.SIGTERM, _stop)
    followers = [Follower(path) for path in paths]
    missing = [p for p in paths if not os.path.exists(p)]
    for path in missing:
        _say("notice", f'"{path}" does not exist yet; waiting for it')
    try:
        first = []
        for follower in followers:
            first += follower.start(args.lines, match)
        if len(followers) > 1:  # interleave the files by time; keep the last N
            first.sort(key=_when)
            first = first[len(first) - args.lines:] if args.lines > 0 else []
        _print(first)
        while True:
            time.sleep(TAIL_POLL)
            for follower in followers:
                records = [r for r in map(match, follower.poll()) if r is not None]
                _print(records)
    except (KeyboardInterrupt, _Stop):
        return 0
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    finally:
        for follower in followers:
            follower.close()


def _when(record):
    try:
        return float(record.get("msec"))
    except (TypeError, ValueError):
        return 0.0


def _print(records):
    if records:
        sys.stdout.write("".join(format_record(r) + "\n" for r in records))
        sys.stdout.flush()
