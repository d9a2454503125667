"""Remote access-log sinks: the targets an ``access_log`` line may name, parsed at
config time into a ``SinkSpec``, and the sinks that ship records to them from the
control process (see ``edge/control/shipping.py`` and docs/logging-sinks.md).

Targets (nginx's syntax where nginx has one)::

    syslog:server=HOST[:PORT][,facility=F][,severity=S][,tag=T][,nohostname][,proto=udp|tcp]
    syslog:server=unix:/dev/log[,...]
    http://HOST[:PORT]/PATH
    redis://HOST[:PORT]/STREAM[?maxlen=N]
    kafka://HOST[:PORT]/TOPIC

and the ``name=value`` parameters of the ``access_log`` line that concern the sink:
``queue=N`` (records held by the control process), ``batch=N`` (records per send),
``flush=TIME`` (longest wait for a batch to fill) and ``timeout=TIME`` (for each network
step: connect, write, read).

``parse_target`` only validates and normalizes: it opens no socket and imports no
client library, so ``edge -t`` stays fast and works on a host that cannot reach the
sinks. Errors are ``ConfigError`` (a ``ValueError``) without file:line; the caller's
directive setter adds it.
"""

import importlib.util
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from edge.config import ConfigError
from edge.config.types import parse_time

__all__ = ["SinkSpec", "parse_target", "make_sink", "is_remote", "FACILITIES", "SEVERITIES"]

# RFC 5424 §6.2.1, in nginx's spelling and order (ngx_syslog.c).
FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "intern", "lpr", "news", "uucp", "clock",
    "authpriv", "ftp", "ntp", "audit", "alert", "cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)
SEVERITIES = ("emerg", "alert", "crit", "error", "warn", "notice", "info", "debug")

DEFAULT_QUEUE = 10000
DEFAULT_BATCH = 500
DEFAULT_TIMEOUT = 5.0
# HTTP collectors prefer fewer, larger requests, so an http batch waits up to a second
# to fill; the other sinks send whatever is there (redis pipelines it, aiokafka has its
# own linger, syslog is one message per record anyway).
DEFAULT_FLUSH = {"http": 1.0}
DEFAULT_PORTS = {"syslog": 514, "http": 80, "redis": 6379, "kafka": 9092}
DEFAULT_MAXLEN = 100000

_PREFIXES = ("syslog:", "http://", "https://", "redis://", "kafka://")
_TAG_RE = re.compile(r"[A-Za-z0-9_]{1,32}")
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True)
class SinkSpec:
    """One remote sink, as the config names it. Immutable and comparable. Every
    field but the tuning (``queue``, ``batch``, ``flush``, ``timeout``) derives from
    the target text, so the Shipper keeps a running sink across a reload when its
    target text is unchanged, and applies changed tuning in place."""

    kind: str                 # "syslog" | "http" | "redis" | "kafka"
    target: str               # the target text as written: the key of the log rings and the metrics label
    host: str = ""            # "" for a unix socket
    port: int = 0
    path: str = ""            # http: path with query; syslog: the unix socket path
    stream: str = ""          # redis
    maxlen: int = DEFAULT_MAXLEN  # redis: XADD MAXLEN ~ N
    topic: str = ""           # kafka
    facility: int = 23        # syslog: local7
    severity: int = 6         # syslog: info
    tag: str = "edge"         # syslog: RFC 3164 TAG / RFC 5424 APP-NAME
    hostname: bool = True     # syslog: False with "nohostname"
    proto: str = "udp"        # syslog: "udp" (RFC 3164) or "tcp" (RFC 5424, octet counting)
    queue: int = DEFAULT_QUEUE
    batch: int = DEFAULT_BATCH
    flush: float = 0.0        # seconds a batch may wait to fill up to `batch`
    timeout: float = DEFAULT_TIMEOUT

    @property
    def pri(self):
        """The syslog PRI value: facility * 8 + severity."""
        return self.facility * 8 + self.severity


def is_remote(text):
    """True if an ``access_log`` argument names a remote sink rather than a file."""
    return text.startswith(_PREFIXES)


def parse_target(text, params=None):
    """Validate the access_log target ``text`` with its sink ``params`` (``{"queue":
    "5000", "batch": "100"}``; values may be str or int) and return its SinkSpec.

    Raises ConfigError (a ValueError) with an nginx-style message and no file:line.
    """
    if text.startswith("syslog:"):
        fields = _parse_syslog(text)
    elif text.startswith("http://"):
        fields = _parse_http(text)
    elif text.startswith("https://"):
        raise ConfigError(f'https is not supported in access log sink "{text}", use http://')
    elif text.startswith("redis://"):
        fields = _parse_redis(text)
    elif text.startswith("kafka://"):
        fields = _parse_kafka(text)
    else:
        raise ConfigError(f'unknown access log sink "{text}"')
    fields.update(_parse_params(fields["kind"], params or {}))
    return SinkSpec(target=text, **fields)


def _parse_params(kind, params):
    out = {"flush": DEFAULT_FLUSH.get(kind, 0.0)}
    for name, value in params.items():
        # "if=" is the access_log line's own condition, checked by the worker, and
        # "buffer=" belongs to file logs; neither is the sink's business.
        if name in ("if", "buffer"):
            continue
        text = str(value)
        if name in ("queue", "batch"):
            if not text.isdigit() or int(text) < 1:
                raise ConfigError(f'invalid {name} "{text}"')
            out[name] = int(text)
        elif name in ("flush", "timeout"):
            seconds = parse_time(text)
            if name == "timeout" and seconds <= 0:
                raise ConfigError(f'invalid timeout "{text}"')
            out[name] = seconds
        else:
            raise ConfigError(f'invalid parameter "{name}={text}" for access log sink')
    return out


def _split_host_port(address, default_port):
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` -> (host, port); None if bad."""
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
        if rest and not port_text:
            return None
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
        if not port_text:
            return None
    else:
        host, port_text = address, ""
    if not host or any(c in host for c in " /,=@"):
        return None
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _parse_syslog(text):
    fields = {"kind": "syslog"}
    seen = set()
    body = text[len("syslog:"):]
    for param in body.split(","):
        name, eq, value = param.partition("=")
        if name in seen:
            raise ConfigError(f'duplicate syslog "{name}"')
        seen.add(name)
        if name == "server" and eq:
            if value.startswith("unix:"):
                if not value[5:].startswith("/"):
                    raise ConfigError(f'invalid syslog server "{value}"')
                fields["path"] = value[5:]
                continue
            address = _split_host_port(value, DEFAULT_PORTS["syslog"])
            if address is None:
                raise ConfigError(f'invalid syslog server "{value}"')
            fields["host"], fields["port"] = address
        elif name == "facility" and eq:
            if value not in FACILITIES:
                raise ConfigError(f'unknown syslog facility "{value}"')
            fields["facility"] = FACILITIES.index(value)
        elif name == "severity" and eq:
            if value not in SEVERITIES:
                raise ConfigError(f'unknown syslog severity "{value}"')
            fields["severity"] = SEVERITIES.index(value)
        elif name == "tag" and eq:
            if len(value) > 32:
                raise ConfigError('syslog "tag" length exceeds 32')
            if not _TAG_RE.fullmatch(value):
                raise ConfigError('syslog "tag" only allows alphanumeric characters and underscore')
            fields["tag"] = value
        elif name == "nohostname" and not eq:
            fields["hostname"] = False
        elif name == "proto" and eq:
            if value not in ("udp", "tcp"):
                raise ConfigError(f'unknown syslog proto "{value}", must be "udp" or "tcp"')
            fields["proto"] = value
        else:
            raise ConfigError(f'unknown syslog parameter "{param}"')
    if "server" not in seen:
        raise ConfigError("no syslog server specified")
    return fields


def _split_url(text, kind):
    """scheme://host[:port]/rest?query -> (host, port, path, query) or ConfigError."""
    try:
        parts = urlsplit(text)
        port = parts.port
        if port == 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f'invalid port in "{text}"') from None
    if parts.username is not None or parts.password is not None:
        # The target text is a metrics label and appears in the error log: a
        # password written into it would leak there.
        raise ConfigError(f'credentials are not supported in "{text}"')
    if not parts.hostname or parts.fragment:
        raise ConfigError(f'invalid {kind} sink "{text}"')
    host = parts.hostname
    return host, DEFAULT_PORTS[kind] if port is None else port, parts.path, parts.query


def _parse_http(text):
    host, port, path, query = _split_url(text, "http")
    path = (path or "/") + (f"?{query}" if query else "")
    if any(c.isspace() or ord(c) < 0x20 for c in path):
        raise ConfigError(f'invalid http sink "{text}"')
    return {"kind": "http", "host": host, "port": port, "path": path}


def _parse_redis(text):
    host, port, path, query = _split_url(text, "redis")
    stream = path[1:]
    if not stream:
        raise ConfigError(f'no stream in redis sink "{text}"')
    maxlen = DEFAULT_MAXLEN
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "maxlen" and value.isdigit() and int(value) > 0:
            maxlen = int(value)
        else:
            raise ConfigError(f'invalid parameter "{name}={value}" in redis sink "{text}"')
    return {"kind": "redis", "host": host, "port": port, "stream": stream, "maxlen": maxlen}


def _parse_kafka(text):
    host, port, path, query = _split_url(text, "kafka")
    topic = path[1:]
    if query or not _TOPIC_RE.fullmatch(topic) or topic in (".", ".."):
        raise ConfigError(f'invalid topic in kafka sink "{text}"')
    if not kafka_available():
        raise ConfigError(f'kafka sink "{text}" needs the aiokafka package, which is not installed: '
                          "pip install 'edge[kafka]'")
    return {"kind": "kafka", "host": host, "port": port, "topic": topic}


def kafka_available():
    """True if aiokafka can be imported (found, not imported: it is slow to import)."""
    try:
        return importlib.util.find_spec("aiokafka") is not None
    except ValueError:  # sys.modules["aiokafka"] is None: explicitly blocked
        return False


def make_sink(spec):
    """A new, not yet started sink for ``spec``. The client libraries are imported
    here, in the control process, and only for the kinds in use."""
    if spec.kind == "syslog":
        from .syslog import SyslogSink as cls
    elif spec.kind == "http":
        from .http import HttpSink as cls
    elif spec.kind == "redis":
        from .redis_streams import RedisStreamSink as cls
    elif spec.kind == "kafka":
        from .kafka import KafkaSink as cls
    else:
        raise ValueError(f"unknown sink kind {spec.kind!r}")
    return cls(spec)
