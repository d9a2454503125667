"""Access logs: `log_format`, `access_log`, with nginx's meaning and inheritance.

A record is formatted in C from the compiled format when a request ends, however it
ended (edge/_core/access_log.pyx). File targets are written by the worker (one write per
record, or through `buffer=`); remote targets (syslog, http, redis, kafka) go into the
worker's ring in shared memory and the control process ships them.
"""

import os
import re

from edge._core.reactor import AccessLog, Template, log_file
from edge.config import HTTP, LOCATION, SERVER, ConfigError, Directive, types

# nginx's predefined format
COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')

# edge's JSON format: one object per line, numbers where a value is always a number, so
# `edge logs query` can compute with them. Field names are documented in docs/logs.md.
JSON = ('{"time":"$time_iso8601","msec":$msec,"request_id":"$request_id",'
        '"remote_addr":"$remote_addr","remote_user":"$remote_user","host":"$host",'
        '"server_name":"$server_name","route":"$route","request_method":"$request_method",'
        '"request_uri":"$request_uri","uri":"$uri","args":"$args",'
        '"server_protocol":"$server_protocol","status":$status,'
        '"request_length":$request_length,"bytes_sent":$bytes_sent,'
        '"body_bytes_sent":$body_bytes_sent,"request_time":$request_time,'
        '"upstream_addr":"$upstream_addr","upstream_status":"$upstream_status",'
        '"upstream_connect_time":"$upstream_connect_time",'
        '"upstream_header_time":"$upstream_header_time",'
        '"upstream_response_time":"$upstream_response_time",'
        '"http_referer":"$http_referer","http_user_agent":"$http_user_agent",'
        '"http_x_forwarded_for":"$http_x_forwarded_for","connection":$connection,'
        '"connection_requests":$connection_requests,"pid":$pid}')

BUILTIN = {"combined": ("default", COMBINED), "json": ("json", JSON)}

REMOTE_PREFIXES = ("syslog:", "http://", "https://", "redis://", "kafka://")
# Anything else that reads as a URL (`udp://...`, `HTTP://...`, `tcp://...`) is refused
# rather than taken for a relative file path, which is what it would otherwise be.
_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _template(text):
    try:
        return Template.compile(text)
    except ValueError as e:
        raise ConfigError(str(e))


def _log_format(node):
    args = list(node.args)
    name = args.pop(0)
    escape = "default"
    if args and args[0].startswith("escape="):
        escape = args.pop(0)[7:]
        if escape not in ("default", "json", "none"):
            raise ConfigError(f'unknown log format escaping "{escape}"')
    if not args:
        raise ConfigError('invalid number of arguments in "log_format" directive')
    text = "".join(args)
    return (name, escape, text, _template(text))


def _access_log(node):
    args = node.args
    if args[0] == "off":
        if len(args) > 1:
            raise ConfigError('invalid parameter "%s"' % args[1])
        return None
    target = args[0]
    fmt = args[1] if len(args) > 1 else "combined"
    remote = target.startswith(REMOTE_PREFIXES)
    if not remote and _URL_LIKE.match(target):
        scheme = target[:target.index("://") + 3]
        raise ConfigError(f'unknown access log target scheme "{scheme}" in "{target}": remote '
                          f'targets are syslog:, http://, redis:// and kafka:// (lower case)')
    params = {}
    sink_params = {}     # for a remote target: its sink's parameters, as written
    for arg in args[2:]:
        key, eq, value = arg.partition("=")
        if not eq:
            if arg == "gzip":
                raise ConfigError('"gzip" in "access_log" is not supported; compress rotated files instead')
            raise ConfigError(f'invalid parameter "{arg}"')
        if key == "if":
            params["if"] = _template(value)
        elif remote and key in ("queue", "batch", "flush", "timeout"):
            # A sink's own tuning (docs/logging-sinks.md); the sink parser checks the
            # values, so `flush=` means the same on every line naming the sink.
            sink_params[key] = value
        elif key == "buffer":
            params["buffer"] = types.parse_size(value)
        elif key == "flush":
            params["flush"] = types.parse_time(value)
        elif key in ("queue", "batch", "timeout"):
            raise ConfigError(f'"{key}" applies to remote log targets, not to the file "{target}"')
        else:
            raise ConfigError(f'invalid parameter "{arg}"')
    if remote and "buffer" in params:
        raise ConfigError(f'"buffer" applies to files, not to "{target}"')
    spec = _sink_spec(target, sink_params) if remote else None
    return {"target": target, "format": fmt, "params": params, "remote": remote, "sink": spec}


def _sink_spec(target, params):
    """Validated by the shipping code (edge.control.sinks), which knows each protocol."""
    try:
        from edge.control.sinks import parse_target
    except ImportError:
        raise ConfigError(f'remote access log targets are not available: "{target}"')
    try:
        return parse_target(target, params)
    except ValueError as e:
        raise ConfigError(str(e))


DIRECTIVES = [
    Directive("log_format", (HTTP,), (2, None), parse=_log_format, multi=True,
              syntax="log_format name [escape=default|json|none] string ...;",
              doc="A named access log format; the strings are joined. Built in: `combined` "
                  "(nginx's) and `json` (edge's, one JSON object per line, fields in "
                  "docs/logs.md). `escape=json` escapes for JSON strings and keeps records "
                  "valid JSON whatever the client sent."),
    Directive("access_log", (HTTP, SERVER, LOCATION), (1, None), parse=_access_log, multi=True,
              syntax="access_log path [format [buffer=size] [flush=time] [if=condition]] | "
                     "target [format [queue=N] [batch=N] [flush=time] [timeout=time] [if=condition]] | off;",
              doc="Where request records go: a file (one write per record, or buffered with "
                  "`buffer=`, written at least every `flush=` (1s)), or a remote target "
                  "shipped by the control process (`syslog:server=...`, `http://`, "
                  "`redis://`, `kafka://`, see docs/logs.md). Several per level; a level "
                  "with its own `access_log` does not inherit its parent's, as in nginx. "
                  "`if=$var` skips the record when the value is empty or \"0\". Off unless "
                  "configured."),
    Directive("access_log_ring_size", (HTTP,), (1, 1), parse=types.size, default=1024 * 1024,
              doc="Bytes of shared memory each worker has for records bound to remote "
                  "targets; when the control process falls behind, the oldest records are "
                  "dropped and counted. Read at start: a reload does not resize it."),
]


def _formats(http):
    formats = {name: (escape, text, _template(text)) for name, (escape, text) in BUILTIN.items()}
    for (name, escape, text, template), node in zip(http.local("log_format") or [],
                                                    http.node("log_format") or []):
        if name in formats:
            raise ConfigError(f'duplicate "log_format" name "{name}"', node.file, node.line)
        formats[name] = (escape, text, template)
    return formats


def compile_http(http, runtime):
    runtime.log_formats = _formats(http)
    runtime.log_sinks = {}
    runtime.access_log_ring_size = http.get("access_log_ring_size")


def compile_server(conf, server, runtime):
    _attach_logs(conf, server.phases, runtime)


def compile_location(conf, location, runtime):
    _attach_logs(conf, location.phases, runtime)


def _attach_logs(conf, phases, runtime):
    specs = conf.get("access_log") or []
    nodes = conf.nodes_in_force("access_log")
    if None in specs and len(specs) > 1:
        node = nodes[specs.index(None)] if nodes else conf
        raise ConfigError('"access_log off" cannot be combined with other access logs',
                          node.file, node.line)
    formats = getattr(runtime, "log_formats", None) or _formats_builtin()
    for spec, node in zip(specs, nodes or [conf] * len(specs)):
        if spec is None:
            continue
        fmt = formats.get(spec["format"])
        if fmt is None:
            raise ConfigError(f'unknown log format "{spec["format"]}"', node.file, node.line)
        escape, _text, template = fmt
        params = spec["params"]
        if spec["remote"]:
            runtime.log_sinks.setdefault(spec["target"], spec["sink"])
            handler = AccessLog(template, escape, sink=spec["target"], condition=params.get("if"))
        else:
            path = _path(spec["target"], node)
            buffer_size = params.get("buffer", 64 * 1024 if "flush" in params else 0)
            handler = AccessLog(template, escape,
                                file=log_file(path, buffer_size, params.get("flush", 1.0)),
                                condition=params.get("if"))
        phases.add("log", handler)


def _formats_builtin():
    return {name: (escape, text, _template(text)) for name, (escape, text) in BUILTIN.items()}


def _path(target, node):
    """Relative paths are relative to the working directory (`edge -p PREFIX`), as the
    pid file's and the error log's are, so `edge logs` finds them the same way."""
    if "$" in target:
        raise ConfigError(f'variables in access_log paths are not supported: "{target}"',
                          node.file, node.line)
    path = os.path.abspath(target)
    # nginx -t opens the log files: a path that cannot be written fails the config here,
    # with its file:line, and a reload keeps the running config
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.close(fd)
    except OSError as e:
        raise ConfigError(f'open() "{path}" failed ({e.errno}: {e.strerror})', node.file, node.line)
    return path
