"""One configuration generation (nginx's cycle).

`load(path)` parses the files, lets each module compile its directives, and returns a
`Cycle` holding the process settings the master needs and the compiled `Plan` the workers
run. It opens no socket. A failure raises `ConfigError` naming file:line, so a caller that
already serves keeps its running generation.
"""

import os
import socket
from dataclasses import dataclass

from edge._core.reactor import Location, Plan
from edge.config import ConfigError, build, parse_file
from edge.modules import (access_log, admin, auth, auth_basic, brotli, buffering, consumers, core,
                          cors, error_page, gzip,
                          health, http_core, headers, ip_rules, limits, metrics, mirror, nginx_compat, proxy,
                          proxy_ssl, realip, redis,
                          request_id, retries, return_, rewrite, ssl, ssl_session, static, upstream,
                          variables)

# The single list of features. A new module is a file in edge/modules/ added here.
# Within a phase, handlers run in this order: the access phase runs the IP rules, then
# the CORS preflight (a preflight carries no credentials), then authentication, then the
# limits (so a limit can be keyed on $consumer).
MODULES = [core, http_core, ssl, ssl_session, variables, realip, upstream, proxy, proxy_ssl, buffering,
           retries, mirror, return_,
           health, static, error_page, gzip, brotli, metrics, access_log, request_id, rewrite, headers, ip_rules, cors, auth_basic,
           consumers, auth, limits, admin, redis, nginx_compat]


@dataclass(frozen=True)
class ListenSpec:
    key: str
    host: str
    port: int
    family: int
    backlog: int
    reuseport: bool
    proxy_protocol: bool
    ssl: bool = False


class Runtime:
    """What modules build into while compiling: the plan and named objects."""

    def __init__(self):
        self.plan = Plan()
        self.upstreams = {}             # upstream block name -> Upstream
        self.address_upstreams = {}     # "host:port" used directly in proxy_pass -> Upstream
        self.log_sinks = {}             # remote access_log target -> its SinkSpec
        self.access_log_ring_size = 1024 * 1024
        self.limit_zones = {}           # zone name -> LimitZoneSpec (modules/limits.py)
        self.admin = None               # AdminSettings (modules/admin.py): the control process's
        self.redis = None               # RedisSettings (modules/redis.py): cluster-scope limits
        self.limit_sync_interval = redis.DEFAULT_SYNC_INTERVAL
        self.limit_redis_failure = "local"
        self.consumers = None           # ConsumerSet (modules/consumers.py) or None
        self.data_files = {}            # path -> bytes: ParsedConfig.data_files (see there)
        self.server_name = b"edge"      # server_tokens (modules/http_core.py), set by compile


class Cycle:
    def __init__(self, path, parsed, root, runtime, listens):
        self.path = path
        self.parsed = parsed
        self.files = parsed.files
        self.root = root
        self.runtime = runtime
        self.plan = runtime.plan
        self.listens = listens
        self.worker_processes = core.worker_count(root)
        self.process = core.process_settings(root)    # user, rlimits, priority, affinity
        self.pid_path = root.get("pid")
        self.edge_binary = root.get("edge_binary")   # what a binary upgrade execs
        self.error_log = root.get("error_log")
        self.worker_shutdown_timeout = root.get("worker_shutdown_timeout")
        self.log_sinks = runtime.log_sinks              # for the control process's shipper
        self.access_log_ring_size = runtime.access_log_ring_size
        self.limit_zones = runtime.limit_zones
        self.admin = runtime.admin      # None, or where the control process serves /status
        # for the control process's limit sync (edge/control/limit_sync.py)
        self.redis = runtime.redis
        self.limit_sync_interval = runtime.limit_sync_interval
        self.limit_redis_failure = runtime.limit_redis_failure
        self.consumers = runtime.consumers  # ConsumerSet or None (no `consumers` directive)
        # ConfigWarning per documented no-op directive met (edge -t prints them, the
        # master logs them at warn on start and reload)
        self.warnings = list(root.warnings)

    def prepare_zones(self):
        """In the master, before this config is served: make or keep the files of its
        limit zones (see modules/limits.py), and its TLS session caches and ticket keys
        (modules/ssl_session.py). Returns {limit zone name: state kept}."""
        kept = limits.prepare(self.limit_zones)
        ssl_session.prepare(self.runtime)
        return kept

    def build_runtime(self):
        """The compiled data plane. Built (and validated) at load time in the master, so
        the workers inherit it through fork."""
        return self.plan


def all_directives():
    return [d for module in MODULES for d in module.DIRECTIVES]


def all_refused():
    """The nginx directives edge refuses with a reason (``types.Refused`` rows)."""
    return [r for module in MODULES for r in getattr(module, "REFUSED", ())]


def load(path):
    return from_parsed(path, parse_file(path))


def from_parsed(path, parsed):
    """Compile an already parsed config. A worker reloading in place gets the master's
    ParsedConfig (not the files, which may have changed since the master tested them), so
    every process of a generation runs exactly the same text."""
    variables.declare(parsed.nodes)     # before any template is parsed
    root = build(parsed, all_directives(), all_refused())
    runtime = Runtime()
    runtime.conf_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    data_files = getattr(parsed, "data_files", None)
    if data_files is None:          # a ParsedConfig pickled before data_files existed
        data_files = parsed.data_files = {}
    runtime.data_files = data_files
    core.compile_main(root, runtime)
    https = root.blocks("http")
    runtime.server_name = http_core.server_name_shown(https[0] if https else None)
    listens = {}
    if https:
        _compile_http(https[0], runtime, listens)
    runtime.plan.finalize()
    for module in MODULES:
        hook = getattr(module, "compile_done", None)
        if hook is not None:
            hook(runtime)
    return Cycle(path, parsed, root, runtime, list(listens.values()))


def _compile_http(http, runtime, listens):
    for module in MODULES:
        hook = getattr(module, "compile_http", None)
        if hook is not None:
            hook(http, runtime)
    for server_conf in http.blocks("server"):
        server = http_core.new_server(server_conf)
        for module in MODULES:
            hook = getattr(module, "compile_server", None)
            if hook is not None:
                hook(server_conf, server, runtime)
        _compile_locations(server_conf, server, runtime)
        for listen, node in _listens_of(server_conf):
            spec = ListenSpec(listen.key, listen.host, listen.port, listen.family,
                              listen.backlog, listen.reuseport, listen.proxy_protocol, listen.ssl)
            known = listens.get(spec.key)
            if known is not None and known.proxy_protocol != spec.proxy_protocol:
                raise ConfigError(f'conflicting parameters for "{spec.key}"', node.file, node.line)
            if known is not None and known.ssl != spec.ssl:
                # nginx makes the whole address TLS when one of its listens says ssl; edge
                # asks for the same word on each, so that no server is served TLS by surprise
                raise ConfigError(f'"ssl" must be set on every listen of "{spec.key}" or on none',
                                  node.file, node.line)
            listens.setdefault(spec.key, spec)
            binding = runtime.plan.binding(spec.key)
            fresh = not binding.servers
            try:
                binding.add_server(server, listen.default_server)
            except ValueError as e:
                raise ConfigError(str(e), node.file, node.line)
            binding.proxy_protocol = spec.proxy_protocol
            binding.ssl = spec.ssl
            if fresh or listen.default_server:     # proxy_protocol must be set first
                http_core.configure_binding(binding, server_conf)


def _listens_of(server_conf):
    values = server_conf.local("listen")
    if not values:
        # nginx's default: *:80 (8000 when not root); edge keeps 80 and documents it
        default = http_core.Listen("0.0.0.0", 80, socket.AF_INET, False, False, 511, False)
        return [(default, server_conf)]
    return list(zip(values, server_conf.node("listen")))


def _compile_locations(server_conf, server, runtime):
    location_confs = server_conf.blocks("location")
    if server_conf.local("return") is not None and not rewrite.has_script(server_conf):
        # a server-level return runs before location matching: it answers everything
        location_confs = []
        implicit = Location("", b"/", server_conf.file, server_conf.line)
        _apply_location_hooks(server_conf, implicit, runtime)
        server.add_location(implicit)
    for conf in location_confs:
        location = _compile_location(conf, runtime)
        try:
            server.add_location(location)
        except ValueError as e:
            raise ConfigError(str(e), conf.file, conf.line)


def _compile_location(conf, runtime):
    """A location and, recursively, those nested in it (nginx's rules: a nested prefix
    lies inside its parent's prefix; an exact location has no nested ones)."""
    location = http_core.new_location(conf)
    _apply_location_hooks(conf, location, runtime)
    for child_conf in conf.blocks("location"):
        modifier, uri = child_conf.value
        if location.kind == 1:
            raise ConfigError(f'location "{uri}" cannot be inside the exact location '
                              f'"{conf.value[1]}"', child_conf.file, child_conf.line)
        if modifier in ("", "=", "^~") and location.kind in (0, 2) and not uri.startswith(conf.value[1]):
            raise ConfigError(f'location "{uri}" is outside location "{conf.value[1]}"',
                              child_conf.file, child_conf.line)
        child = _compile_location(child_conf, runtime)
        try:
            location.add_nested(child)
        except ValueError as e:
            raise ConfigError(str(e), child_conf.file, child_conf.line)
    return location


def _apply_location_hooks(conf, location, runtime):
    for module in MODULES:
        hook = getattr(module, "compile_location", None)
        if hook is not None:
            hook(conf, location, runtime)
