"""The admin API's writes, history and rollback (docs/admin.md#writes).

The config files stay the source of truth. A write never changes the running config
directly: it changes the files the API manages, and asks for the in-place reload that
`edge -s reload` does. The managed files, relative to the main config's directory:

    conf.d/_admin/upstream.NAME.conf          one `upstream NAME {...}` block each,
                                              included by `include conf.d/_admin/*.conf;`
                                              in `http`
    conf.d/_admin/routes/SERVER/ROUTE.conf    one `location` block each, included by
                                              `include conf.d/_admin/routes/SERVER/*.conf;`
                                              in the server whose label is SERVER
    the consumers file                        the file named by `consumers` (YAML)

and conf.d/_admin.history/GEN/ keeps the managed files of the last `admin_history`
generations.

Every write goes through the same steps (`Writer.apply`):

1. If-Match: a stale generation, or one that does not account for a write already made
   and not yet loaded, is 412;
2. the candidate files are tested exactly as `edge -t` tests a config: the main file is
   parsed with the candidate files laid over the files on disk (parser `overlay`, the
   consumers file through ParsedConfig.data_files) and the whole config is compiled;
   an error is 400 naming the field and the file:line. Nothing is written then;
3. the files are written atomically (a temporary file in the same directory, fsync,
   rename, fsync of the directory);
4. a reload is asked of the master; writes arriving while one is in flight wait for it
   and share the next one (`Folder`): never more than one in flight, a burst of writes
   costs about two reloads;
5. the answer carries the new generation (and `ETag`).

Steps 1-3 run without yielding to the event loop, so writes are serialized; the lock
is there for the step that does yield (waiting for a reload before a rollback).
"""

import asyncio
import json
import os
import re
import shutil
import time

from edge import log

RELOAD_TIMEOUT = 60.0
ADMIN_DIR = os.path.join("conf.d", "_admin")
HISTORY_DIR = os.path.join("conf.d", "_admin.history")
CONSUMERS_COPY = "consumers.yaml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_ARG = 4096


class WriteError(Exception):
    """A refused write: status, message, the field at fault, and more fields."""

    def __init__(self, status, message, field=None, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.extra = extra


def check_name(value, field, what):
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise WriteError(400, f"{what} must be 1 to 128 letters, digits, '.', '_' or '-', "
                              f"starting with a letter or digit", field)
    return value


def server_dir(label):
    """The directory name of a server's managed routes: its label with every character
    outside [A-Za-z0-9._-] replaced by "_" ("127.0.0.1:8080" -> "127.0.0.1_8080")."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", label) or "_"


# --------------------------------------------------------------------------- text


def quote(arg):
    """An argument as the lexer reads it back: bare when it can be, else double-quoted
    (a backslash doubled, a quote escaped)."""
    if arg and not re.search(r"[\s;{}\"'#\\]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(nodes, indent=0, lines=None, fields=None, out=None):
    """nginx text of Nodes (name, args, block); `lines` collects {line: field} for the
    field of each node (fields: a list parallel to nodes, or None)."""
    out = [] if out is None else out
    pad = "    " * indent
    for i, node in enumerate(nodes):
        if lines is not None and fields is not None:
            lines[len(out) + 1] = fields[i]
        words = " ".join([node.name] + [quote(a) for a in node.args])
        if node.block is None:
            out.append(f"{pad}{words};")
        else:
            out.append(f"{pad}{words} {{")
            sub = [f"{fields[i]}.block[{j}]" for j in range(len(node.block))] if fields else None
            render(node.block, indent + 1, lines, sub, out)
            out.append(f"{pad}}}")
    return out


def to_text(nodes, lines=None, fields=None):
    return "\n".join(render(nodes, 0, lines, fields)) + "\n"


def nodes_of_json(items, field):
    """Nodes from JSON directives: each a string ("proxy_pass http://api"), a list
    (["proxy_pass", "http://api"]) or {"name", "args", "block"} (GET /config?format=tree)."""
    from edge.config import Node, parse_string, ConfigError
    if not isinstance(items, list):
        raise WriteError(400, "must be a list of directives", field)
    nodes = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if isinstance(item, str):
            try:
                parsed = parse_string(item if item.rstrip().endswith((";", "}")) else item + ";",
                                      "<body>").nodes
            except ConfigError as e:
                raise WriteError(400, e.message if hasattr(e, "message") else str(e), where)
            if len(parsed) != 1:
                raise WriteError(400, "must be one directive", where)
            if any(n.name == "include" for n in parsed):
                raise WriteError(400, '"include" is not allowed here', where)
            nodes.append(parsed[0])
        elif isinstance(item, list):
            if not item or not all(isinstance(a, str) and len(a) <= _MAX_ARG for a in item):
                raise WriteError(400, "must be a non-empty list of strings", where)
            nodes.append(Node(item[0], list(item[1:])))
        elif isinstance(item, dict):
            name, args = item.get("name"), item.get("args", [])
            if not isinstance(name, str) or not isinstance(args, list) or \
                    not all(isinstance(a, str) for a in args):
                raise WriteError(400, 'must have "name" (a string) and "args" (strings)', where)
            block = item.get("block")
            nodes.append(Node(name, list(args),
                              nodes_of_json(block, f"{where}.block") if block is not None else None))
        else:
            raise WriteError(400, "must be a string, a list of strings or an object", where)
        node = nodes[-1]
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", node.name):
            raise WriteError(400, f'"{node.name[:64]}" is not a directive name', where)
        if node.name == "include":
            raise WriteError(400, '"include" is not allowed here', where)
    return nodes


def parse_body_text(text, field="body"):
    from edge.config import parse_string, ConfigError
    try:
        nodes = parse_string(text, "<body>").nodes
    except ConfigError as e:
        raise WriteError(400, f"{getattr(e, 'message', str(e))} (line {getattr(e, 'line', None)} "
                              f"of the body)", field)

    def no_include(ns):
        for n in ns:
            if n.name == "include":
                raise WriteError(400, '"include" is not allowed in a managed file', field)
            if n.block is not None:
                no_include([m for m in n.block if hasattr(m, "name")])
    no_include(nodes)
    return nodes


def body_of(request):
    """("json", value) or ("text", str) by Content-Type; 400/415 otherwise."""
    ctype = (request.header("content-type") or "").split(";")[0].strip().lower()
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise WriteError(400, "the body is not UTF-8", "body")
    if ctype in ("application/json", ""):
        try:
            value = json.loads(text) if text.strip() else None
            if value is None and text.strip():
                raise WriteError(400, "must be a JSON object, not null", "body")
            return "json", value
        except ValueError as e:
            if ctype == "":
                return "text", text
            raise WriteError(400, f"invalid JSON: {e}", "body")
    if ctype in ("text/plain", "text/x-nginx-conf"):
        return "text", text
    if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
        import yaml
        try:
            return "json", yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise WriteError(400, f"invalid YAML: {str(e)[:300]}", "body")
    raise WriteError(415, f'unsupported Content-Type "{ctype[:64]}" (application/json, '
                          f'text/plain for nginx text, application/yaml)', "content-type")


# --------------------------------------------------------------------------- files


def _as_user():
    """A note for errors of a control process that runs as another user than root."""
    if os.geteuid() == 0:
        return ""
    try:
        import pwd
        name = pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        name = str(os.geteuid())
    return (f' (the control process runs as "{name}", from the `user` directive: that user '
            f'needs write access there, see docs/admin.md)')


def check_writable(path):
    """Refuse a write before any file changes when ``path`` cannot be written (created
    or replaced by rename: its directory, or the nearest one that exists, must be
    writable), with a message that says which path and why: a 500 naming it."""
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    if not os.access(directory, os.W_OK | os.X_OK):
        raise WriteError(500, f'cannot write "{path}": directory "{directory}" is not '
                              f'writable{_as_user()}', None)


def write_atomic(path, data):
    """temp file in the same directory, fsync, rename over, fsync the directory."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(directory)


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(path))


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reloads


class Folder:
    """Reloads for writes: at most one in flight; every caller arriving while one runs
    waits for the next, which they all share."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.inflight = None
        self.next = None
        self.count = 0          # reloads asked (for tests and logs)

    async def reload(self):
        if self.next is None:
            self.next = asyncio.get_running_loop().create_future()
            asyncio.ensure_future(self._run(self.next))
        return await asyncio.shield(self.next)

    async def _run(self, future):
        while self.inflight is not None:
            try:
                await asyncio.shield(self.inflight)
            except Exception:
                pass
        self.next = None
        self.inflight = future
        self.count += 1
        try:
            result = await self.ctx.request_reload(RELOAD_TIMEOUT)
        except BaseException as e:      # RuntimeError, TimeoutError: every waiter hears it
            if not future.done():
                future.set_exception(e)
                future.exception()      # retrieved: no "never retrieved" warning
        else:
            if not future.done():
                future.set_result(result)
        finally:
            self.inflight = None


# --------------------------------------------------------------------------- the writer


class Writer:
    """The managed files of one config, their history, and the write steps."""

    def __init__(self, ctx, api):
        self.ctx = ctx
        self.api = api
        self.lock = asyncio.Lock()
        self.folder = Folder(ctx)
        self.epoch = 0              # writes made (bumped by each one)
        self.loaded_epoch = 0       # the writes the generation in force includes

    # -- where ---------------------------------------------------------------------

    @property
    def cycle(self):
        return self.api.cycle

    @property
    def conf_path(self):
        return os.path.abspath(self.cycle.path)

    @property
    def conf_dir(self):
        return os.path.dirname(self.conf_path)

    @property
    def admin_dir(self):
        return os.path.join(self.conf_dir, ADMIN_DIR)

    @property
    def history_dir(self):
        return os.path.join(self.conf_dir, HISTORY_DIR)

    @property
    def consumers_path(self):
        consumers = self.cycle.consumers
        return os.path.abspath(consumers.path) if consumers is not None else None

    def upstream_path(self, name):
        return os.path.join(self.admin_dir, f"upstream.{name}.conf")

    def route_path(self, server, name):
        return os.path.join(self.admin_dir, "routes", server_dir(server), f"{name}.conf")

    def history_size(self):
        admin = self.cycle.admin
        return getattr(admin, "history", 20) if admin is not None else 20

    def managed_files(self):
        """{absolute path: bytes} of the managed files on disk now."""
        files = {}
        if os.path.isdir(self.admin_dir):
            for root, dirs, names in os.walk(self.admin_dir):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if name.endswith(".conf") and not name.startswith("."):
                        path = os.path.join(root, name)
                        with open(path, "rb") as f:
                            files[path] = f.read()
        path = self.consumers_path
        if path is not None and os.path.exists(path):
            with open(path, "rb") as f:
                files[path] = f.read()
        return files

    # -- concurrency ---------------------------------------------------------------

    def check_if_match(self, request):
        value = request.header("if-match")
        if value is None:
            return
        tags = [t.strip() for t in value.split(",")]
        if "*" in tags:
            return
        current = f'"{self.api.generation}"'
        weak = [t[2:] if t.startswith("W/") else t for t in tags]
        if current not in weak:
            raise WriteError(412, f"the configuration is at generation {self.api.generation}, "
                                  f"not {value}", "if-match", generation=self.api.generation)
        if self.epoch != self.loaded_epoch:
            raise WriteError(412, "another write is being applied; read again and retry",
                             "if-match", generation=self.api.generation)

    # -- testing -------------------------------------------------------------------

    def test(self, changes, field_of=None):
        """Compile the whole config with `changes` ({path: bytes | None}) laid over the
        files; the candidate Cycle, or WriteError(400) naming the field and file:line."""
        import edge.cycle
        from edge.config import ConfigError, parse_file
        overlay = {}
        data = {}
        consumers = self.consumers_path
        for path, content in changes.items():
            if path == consumers:
                data[path] = content
            else:
                overlay[path] = content.decode("utf-8") if content is not None else None
        try:
            parsed = parse_file(self.conf_path, overlay)
            for path, content in data.items():
                parsed.data_files[path] = content
            return edge.cycle.from_parsed(self.conf_path, parsed)
        except ConfigError as e:
            message = getattr(e, "message", None) or str(e)
            file, line = getattr(e, "file", None), getattr(e, "line", None)
            field = None
            if field_of is not None:
                field = field_of(file, line, message)
            where = f" in {file}:{line}" if file else ""
            raise WriteError(400, f"{message}{where}", field or "body", file=file, line=line)
        except (ValueError, TypeError, OverflowError, UnicodeError, RecursionError) as e:
            # `edge -t` would stop on it too; a ConfigError should have said where
            log.error("error", f"admin API: the candidate configuration failed to load with "
                               f"{e!r} (a ConfigError was expected)")
            raise WriteError(400, f"the configuration does not load: {str(e)[:300]}", "body")

    # -- applying ------------------------------------------------------------------

    async def apply(self, request, changes, what, field_of=None, check=None):
        """Steps 1-5 (module docstring). `check(cycle)` may refuse the candidate
        (WriteError). Returns (generation, candidate cycle) once the reload is done."""
        async with self.lock:
            candidate = self.test(changes, field_of)
            if check is not None:
                check(candidate)
            self.check_if_match(request)
            for path in changes:
                check_writable(path)
            self.snapshot_base()
            try:
                for path, content in changes.items():
                    if content is None:
                        remove(path)
                    else:
                        write_atomic(path, content)
            except OSError as e:
                raise WriteError(500, f'writing "{getattr(e, "filename", None) or path}" failed: '
                                      f'{e.strerror or e}{_as_user()}', None) from None
            self.epoch += 1
            epoch = self.epoch
        log.error("notice", f"admin API: {what}: files written, reloading")
        return await self.reload(epoch, what), candidate

    async def reload(self, epoch, what):
        try:
            result = await self.folder.reload()
        except RuntimeError as e:
            raise WriteError(503, f"written, but the master cannot be asked for a reload: {e}")
        except asyncio.TimeoutError:
            raise WriteError(504, f"written, but the master did not answer within "
                                  f"{RELOAD_TIMEOUT:g}s")
        finally:
            # Whatever the outcome, no later reload answers for this write: it is no
            # longer pending (else every If-Match would be 412 from now on).
            self.loaded_epoch = max(self.loaded_epoch, epoch)
        if not result.get("ok"):
            if result.get("unavailable"):
                raise WriteError(503, "written, but " + (result.get("error") or
                                                         "the master cannot reload now"))
            raise WriteError(422, "written, but the reload failed: " +
                             (result.get("error") or "?"), None,
                             generation=result.get("generation"), file=result.get("file"),
                             line=result.get("line"))
        generation = result["generation"]
        # The files the master read: known exactly only if no write came after this
        # reload was asked (else the next reload's snapshot covers them).
        if self.loaded_epoch == self.epoch:
            try:
                self.save_history(generation, what)
            except OSError as e:
                log.error("error", f"admin API: history of generation {generation}: {e}")
        return generation

    # -- history -------------------------------------------------------------------

    def snapshot_base(self):
        """Before the first write of a generation with no history yet: keep the files
        it was loaded from (unless a write is already pending)."""
        if self.epoch != self.loaded_epoch:
            return
        generation = self.api.generation
        if os.path.isdir(os.path.join(self.history_dir, str(generation))):
            return
        try:
            self.save_history(generation, "before the admin API's writes")
        except OSError as e:
            log.error("error", f"admin API: history of generation {generation}: {e}")

    def save_history(self, generation, what):
        files = self.managed_files()
        target = os.path.join(self.history_dir, str(generation))
        tmp = os.path.join(self.history_dir, f".{generation}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        names = []
        for path, content in files.items():
            if path == self.consumers_path:
                rel = CONSUMERS_COPY
            else:
                rel = os.path.join("_admin", os.path.relpath(path, self.admin_dir))
            names.append(rel)
            dest = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(content)
        meta = {"generation": generation, "time": time.time(), "what": what,
                "files": sorted(names), "consumers": CONSUMERS_COPY in names}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
        fsync_dir(self.history_dir)
        self.prune()

    def generations(self):
        try:
            names = os.listdir(self.history_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def prune(self):
        kept = self.generations()
        for gen in kept[:-self.history_size()]:
            shutil.rmtree(os.path.join(self.history_dir, str(gen)), ignore_errors=True)

    def history(self):
        out = []
        for gen in self.generations():
            try:
                with open(os.path.join(self.history_dir, str(gen), "meta.json")) as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                continue
            meta["current"] = gen == self.api.generation
            out.append(meta)
        return out

    def restore_changes(self, generation):
        """{path: bytes | None}: what makes the managed files those of `generation`."""
        base = os.path.join(self.history_dir, str(generation))
        try:
            with open(os.path.join(base, "meta.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            raise WriteError(404, f"generation {generation} is not in the history", "to")
        changes = {path: None for path in self.managed_files() if path != self.consumers_path}
        for rel in meta.get("files", []):
            try:
                with open(os.path.join(base, rel), "rb") as f:
                    content = f.read()
            except OSError as e:
                raise WriteError(409, f"generation {generation} of the history is incomplete: "
                                      f"{rel}: {e.strerror}", "to")
            if rel == CONSUMERS_COPY:
                if self.consumers_path is None:
                    continue    # the config no longer names a consumers file
                changes[self.consumers_path] = content
            else:
                changes[os.path.join(self.admin_dir, os.path.relpath(rel, "_admin"))] = content
        return changes


# --------------------------------------------------------------------------- endpoints

_PEER_FIELDS = {"weight", "down", "drain", "max_fails", "fail_timeout", "backup"}


def _int_field(doc, key, field, lo, hi):
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WriteError(400, f"must be an integer from {lo} to {hi}", field)
    return value


def _bool_field(doc, key, field):
    value = doc.get(key)
    if value is not None and not isinstance(value, bool):
        raise WriteError(400, "must be true or false", field)
    return value


def _object(value, field, allowed):
    if not isinstance(value, dict):
        raise WriteError(400, "must be a JSON object", field)
    for key in value:
        if key not in allowed:
            raise WriteError(400, f"unknown field (expected {', '.join(sorted(allowed))})",
                             f"{field}.{key}" if field != "body" else str(key)[:64])
    return value


def _str_field(doc, key, field, required=False):
    value = doc.get(key)
    if value is None:
        if required:
            raise WriteError(400, "missing", field)
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_ARG:
        raise WriteError(400, "must be a non-empty string", field)
    return value


def _apply_peer_settings(server, doc, field):
    """Change a `server` Node's parameters from a peer document (weight, max_fails,
    fail_timeout, backup, down, drain)."""
    weight = _int_field(doc, "weight", f"{field}weight", 1, 1000000)
    max_fails = _int_field(doc, "max_fails", f"{field}max_fails", 0, 1000000)
    fail_timeout = doc.get("fail_timeout")
    if fail_timeout is not None and (isinstance(fail_timeout, bool) or
                                     not isinstance(fail_timeout, (int, float, str))):
        raise WriteError(400, 'must be seconds (a number) or a time ("30s")',
                         f"{field}fail_timeout")
    down = _bool_field(doc, "down", f"{field}down")
    drain = _bool_field(doc, "drain", f"{field}drain")
    backup = _bool_field(doc, "backup", f"{field}backup")
    if drain and down is False:
        raise WriteError(400, 'a drained peer takes no new requests: "drain": true with '
                              '"down": false is a contradiction', f"{field}drain")
    args = server.args[1:]

    def setting(name, value):
        nonlocal args
        args = [a for a in args if not a.startswith(name + "=")]
        if value is not None:
            args.append(f"{name}={value}")

    def flag(name, on):
        nonlocal args
        if on is None:
            return
        args = [a for a in args if a != name]
        if on:
            args.append(name)

    setting("weight", weight)
    setting("max_fails", max_fails)
    if fail_timeout is not None:
        setting("fail_timeout", f"{fail_timeout:g}s" if not isinstance(fail_timeout, str)
                else fail_timeout)
    flag("backup", backup)
    # drain: no new requests from the reload on, requests in flight finish (the in-place
    # reload never cuts them): in the file, that is `down`. `down: false` (or
    # `drain: false` without `down`) brings the peer back.
    if drain or down:
        flag("down", True)
    elif down is False or drain is False:
        flag("down", False)
    server.args = [server.args[0]] + args


def _find_upstream_node(cycle, name):
    for node in cycle.parsed.nodes:
        if node.name == "http" and node.block is not None:
            for sub in node.block:
                if getattr(sub, "name", None) == "upstream" and sub.args[:1] == [name]:
                    return sub
    return None


def _server_labels(cycle):
    labels = []
    for binding in cycle.plan.bindings.values():
        for server in binding.servers:
            label = server.phases.route_labels[0]
            if label not in labels:
                labels.append(label)
    return labels


def _location_args(text, field):
    if not isinstance(text, str) or not text.strip():
        raise WriteError(400, 'must be a location match ("/v2/", "= /exact", "~ ^/re")', field)
    words = text.split(None, 1)
    if words[0] in ("=", "~", "~*", "^~") and len(words) == 2:
        return [words[0], words[1].strip()]
    return [text.strip()]


class WriteAPI:
    """The write endpoints; AdminAPI adds them to its route table."""

    def __init__(self, api):
        self.api = api
        self.writer = Writer(api.ctx, api)

    def routes(self):
        from edge.control.api import Route as r
        return [
            r("PUT", "/upstreams/{name}", self.put_upstream),
            r("DELETE", "/upstreams/{name}", self.delete_upstream),
            r("PUT", "/upstreams/{name}/peers/{addr}", self.put_peer),
            r("DELETE", "/upstreams/{name}/peers/{addr}", self.delete_peer),
            r("PUT", "/routes/{name}", self.put_route),
            r("DELETE", "/routes/{name}", self.delete_route),
            r("PUT", "/consumers/{name}", self.put_consumer),
            r("DELETE", "/consumers/{name}", self.delete_consumer),
            r("PUT", "/config", self.put_config),
            r("GET", "/config/history", self.get_history),
            r("POST", "/config/rollback", self.post_rollback),
        ]

    # -- plumbing ------------------------------------------------------------------

    def answer(self, status, document, generation=None):
        from edge.control.api import json_response
        generation = self.api.generation if generation is None else generation
        document = dict({"generation": generation}, **document)
        return json_response(status, document, [("ETag", f'"{generation}"')])

    async def run(self, request, body):
        """Run `body()` (a coroutine function); WriteError -> its error answer."""
        from edge.control.api import api_error
        try:
            return await body()
        except WriteError as e:
            headers = [("ETag", f'"{self.api.generation}"')] if e.status == 412 else ()
            return api_error(e.status, e.message, e.field, headers, **e.extra)

    def _field_of(self, path, lines):
        def field_of(file, line, message):
            if file is not None and os.path.abspath(file) == path and line in lines:
                return lines[line]
            return None
        return field_of

    # -- upstreams -----------------------------------------------------------------

    def _managed_upstream(self, name, field="name"):
        """(path, the managed upstream's Node) or WriteError 404 / 409."""
        check_name(name, field, "an upstream name")
        path = self.writer.upstream_path(name)
        node = _find_upstream_node(self.api.cycle, name)
        if os.path.exists(path):
            from edge.config import ConfigError, parse_string
            try:
                with open(path, encoding="utf-8") as f:
                    nodes = parse_string(f.read(), path).nodes
            except (OSError, UnicodeDecodeError, ConfigError) as e:
                raise WriteError(409, f"the managed file {path} does not load ({e}): fix it "
                                      f"or PUT /upstreams/{name} whole", field)
            for n in nodes:
                if n.name == "upstream" and n.args[:1] == [name]:
                    return path, n
            raise WriteError(409, f"{path} does not hold upstream \"{name}\"", field)
        if node is not None:
            raise WriteError(409, f'upstream "{name}" is defined in {node.file}:{node.line}, '
                                  f'not by the admin API: change it in that file, or move '
                                  f'the block to {ADMIN_DIR}/upstream.{name}.conf', field)
        raise WriteError(404, f'no upstream "{name}"', field)

    def _upstream_answer(self, name):
        for doc in self.api._upstreams():
            if doc["name"] == name:
                return doc
        return None

    def _include_check(self, path, what):
        def check(candidate):
            if not any(os.path.abspath(p) == path for p, _ in candidate.files):
                raise WriteError(409, f'the configuration does not include {path}: add '
                                      f'"include {ADMIN_DIR}/*.conf;" to the http block of '
                                      f'{self.writer.conf_path} to manage {what} by the API',
                                 "name")
        return check

    async def put_peer(self, request):
        async def body():
            name, addr = request.params["name"], request.params["addr"]
            path, node = self._managed_upstream(name)
            kind, doc = body_of(request)
            if kind != "json":
                raise WriteError(415, "a peer is a JSON object", "content-type")
            doc = _object({} if doc is None else doc, "body", _PEER_FIELDS)
            if not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]{1,300}", addr):
                raise WriteError(400, "must be host:port", "addr")
            servers = [n for n in node.block if getattr(n, "name", None) == "server"]
            found = [n for n in servers if n.args[:1] == [addr]]
            from edge.config import Node
            created = not found
            server = found[0] if found else Node("server", [addr])
            if created:
                node.block.append(server)
            _apply_peer_settings(server, doc, "")
            lines = {}
            text = to_text([node], lines, ["name"])
            peer_line = next((ln for ln, f in lines.items()
                              if f == f"name.block[{node.block.index(server)}]"), None)

            def field_of(file, line, message):
                if file is not None and os.path.abspath(file) == path:
                    if line == peer_line:
                        for key in doc:
                            if key in message:
                                return key
                        return "addr"
                    return "name"
                return None
            gen, _ = await self.writer.apply(
                request, {path: text.encode()}, f"PUT /upstreams/{name}/peers/{addr}", field_of)
            return self.answer(201 if created else 200,
                               {"upstream": self._upstream_answer(name),
                                "peer": addr, "drain": bool(doc.get("drain"))}, gen)
        return await self.run(request, body)

    async def delete_peer(self, request):
        async def body():
            name, addr = request.params["name"], request.params["addr"]
            path, node = self._managed_upstream(name)
            before = len(node.block)
            node.block = [n for n in node.block
                          if not (getattr(n, "name", None) == "server" and n.args[:1] == [addr])]
            if len(node.block) == before:
                raise WriteError(404, f'upstream "{name}" has no peer "{addr}"', "addr")
            text = to_text([node])
            gen, _ = await self.writer.apply(
                request, {path: text.encode()}, f"DELETE /upstreams/{name}/peers/{addr}",
                lambda f, ln, m: "addr")
            return self.answer(200, {"upstream": self._upstream_answer(name), "deleted": addr},
                               gen)
        return await self.run(request, body)

    def upstream_nodes(self, name, kind, doc, field):
        """The `upstream NAME {...}` Node of a PUT body, and {line: field}."""
        from edge.config import Node
        if kind == "text":
            nodes = parse_body_text(doc, field)
            if len(nodes) != 1 or nodes[0].name != "upstream" or nodes[0].block is None:
                raise WriteError(400, "must be one upstream NAME { ... } block", field)
            if nodes[0].args != [name]:
                raise WriteError(400, f'the block is "upstream {" ".join(nodes[0].args)[:64]}", '
                                      f'the path names "{name}"', "name")
            node = nodes[0]
            fields = ["name"]
            return node, fields
        doc = _object(doc, field, {"name", "peers", "method", "keepalive", "directives"})
        pre = f"{field}." if field != "body" else ""
        if doc.get("name") not in (None, name):
            raise WriteError(400, f'the body names "{str(doc["name"])[:64]}", the path "{name}"',
                             f"{pre}name")
        block, fields = [], []
        method = doc.get("method")
        if method is not None:
            if not isinstance(method, str) or not method.strip():
                raise WriteError(400, "must be a balancing method (least_conn, ip_hash, "
                                      "hash KEY [consistent], random [two], round_robin)",
                                 f"{pre}method")
            words = method.split()
            if words != ["round_robin"]:
                block.append(Node(words[0], words[1:]))
                fields.append(f"{pre}method")
        peers = doc.get("peers")
        if not isinstance(peers, list) or not peers:
            raise WriteError(400, "must be a non-empty list of peers", f"{pre}peers")
        for i, peer in enumerate(peers):
            where = f"{pre}peers[{i}]"
            peer = _object(peer, where, _PEER_FIELDS | {"address", "resolve"})
            address = _str_field(peer, "address", f"{where}.address", required=True)
            server = Node("server", [address])
            _apply_peer_settings(server, peer, f"{where}.")
            if _bool_field(peer, "resolve", f"{where}.resolve"):
                server.args.append("resolve")
            block.append(server)
            fields.append(where)
        keepalive = _int_field(doc, "keepalive", f"{pre}keepalive", 1, 1000000)
        if keepalive is not None:
            block.append(Node("keepalive", [str(keepalive)]))
            fields.append(f"{pre}keepalive")
        if doc.get("directives") is not None:
            extra = nodes_of_json(doc["directives"], f"{pre}directives")
            block += extra
            fields += [f"{pre}directives[{i}]" for i in range(len(extra))]
        node = Node("upstream", [name], block)
        return node, [fields]

    def _upstream_change(self, name, kind, doc, field, lines):
        node, fields = self.upstream_nodes(name, kind, doc, field)
        path = self.writer.upstream_path(name)
        if isinstance(fields[0], list):       # JSON: a field per server line
            text_lines = {}
            text = to_text([node], text_lines, ["name"])
            for ln, f in text_lines.items():
                m = re.fullmatch(r"name\.block\[(\d+)\](.*)", f)
                lines[(path, ln)] = fields[0][int(m.group(1))] if m else (
                    f"{field}.name" if field != "body" else "name")
        else:
            text_lines = {}
            text = to_text([node], text_lines, ["name"])
            for ln, f in text_lines.items():
                m = re.fullmatch(r"name\.block\[(\d+)\](.*)", f)
                lines[(path, ln)] = (f"{field}: {node.block[int(m.group(1))].name}" if m
                                     else field)
        return path, text

    async def put_upstream(self, request):
        async def body():
            name = check_name(request.params["name"], "name", "an upstream name")
            path = self.writer.upstream_path(name)
            existing = _find_upstream_node(self.api.cycle, name)
            if existing is not None and os.path.abspath(existing.file) != path:
                raise WriteError(409, f'upstream "{name}" is defined in {existing.file}:'
                                      f'{existing.line}, not by the admin API', "name")
            kind, doc = body_of(request)
            lines = {}
            path, text = self._upstream_change(name, kind, doc, "body", lines)
            created = not os.path.exists(path)
            gen, _ = await self.writer.apply(
                request, {path: text.encode()}, f"PUT /upstreams/{name}",
                lambda f, ln, m: lines.get((os.path.abspath(f or ""), ln)),
                self._include_check(path, "upstreams"))
            return self.answer(201 if created else 200,
                               {"upstream": self._upstream_answer(name)}, gen)
        return await self.run(request, body)

    def _users_of(self, cycle, name):
        from edge.control.api import routes_of
        return [r for r in routes_of(cycle) if r["upstream"] == name]

    async def delete_upstream(self, request):
        async def body():
            name = request.params["name"]
            path, _node = self._managed_upstream(name)
            users = self._users_of(self.api.cycle, name)
            if users:
                r = users[0]
                raise WriteError(409, f'upstream "{name}" is used by route "{r["route"]}" '
                                      f'(server {r["server"]}, {r["file"]}:{r["line"]})'
                                      + (f" and {len(users) - 1} more" if len(users) > 1 else ""),
                                 "name", routes=[u["route"] for u in users])
            gen, _ = await self.writer.apply(request, {path: None}, f"DELETE /upstreams/{name}",
                                             lambda f, ln, m: "name")
            return self.answer(200, {"deleted": name}, gen)
        return await self.run(request, body)

    # -- routes --------------------------------------------------------------------

    def _managed_route_paths(self, name):
        base = os.path.join(self.writer.admin_dir, "routes")
        found = []
        if os.path.isdir(base):
            for d in sorted(os.listdir(base)):
                p = os.path.join(base, d, f"{name}.conf")
                if os.path.exists(p):
                    found.append(p)
        return found

    def _route_of(self, cycle, name):
        from edge.control.api import routes_of
        return [r for r in routes_of(cycle) if r["route"] == name]

    def route_change(self, name, kind, doc, server, field, lines):
        """(path, text) of a managed route file from a body."""
        from edge.config import Node
        pre = f"{field}." if field != "body" else ""
        if kind == "text":
            nodes = parse_body_text(doc, field)
            if len(nodes) != 1 or nodes[0].name != "location" or nodes[0].block is None:
                raise WriteError(400, "must be one location ... { ... } block", field)
            loc = nodes[0]
            fields = [f"{field}: {n.name}" if hasattr(n, "name") else field for n in loc.block]
        else:
            doc = _object(doc, field, {"name", "server", "location", "directives"})
            if doc.get("name") not in (None, name):
                raise WriteError(400, f'the body names "{str(doc["name"])[:64]}", the path '
                                      f'"{name}"', f"{pre}name")
            args = _location_args(doc.get("location"), f"{pre}location")
            block = nodes_of_json(doc.get("directives", []), f"{pre}directives")
            loc = Node("location", args, block)
            fields = [f"{pre}directives[{i}]" for i in range(len(block))]
        if server is None:
            raise WriteError(400, 'name the server (?server=LABEL or "server" in the body): '
                                  'its first server_name, else its first listen address',
                             "server")
        labels = _server_labels(self.api.cycle)
        if server not in labels:
            raise WriteError(400, f'no server "{server[:128]}" (servers: {", ".join(labels)})',
                             "server")
        names = [n for n in loc.block if getattr(n, "name", None) == "route_name"]
        for n in names:
            if n.args != [name]:
                raise WriteError(400, f'route_name is "{" ".join(n.args)[:64]}", the path '
                                      f'names "{name}"', "route_name")
        if not names:
            loc.block.insert(0, Node("route_name", [name]))
            fields.insert(0, "name")
        path = self.writer.route_path(server, name)
        text_lines = {}
        text = to_text([loc], text_lines, [f"{pre}location"])
        for ln, f in text_lines.items():
            m = re.fullmatch(r".*?\.block\[(\d+)\].*", f)
            lines[(path, ln)] = fields[int(m.group(1))] if m else f"{pre}location"
        return path, text

    def _route_check(self, name, path, server):
        def check(candidate):
            found = [r for r in self._route_of(candidate, name)
                     if os.path.abspath(r["file"]) == path]
            include = os.path.join(ADMIN_DIR, "routes", server_dir(server), "*.conf")
            if not found or found[0]["server"] != server:
                raise WriteError(409, f'server "{server}" does not include its managed routes: '
                                      f'add "include {include};" to its server block',
                                 "server")
            others = [r for r in self._route_of(candidate, name)
                      if os.path.abspath(r["file"]) != path]
            if others:
                r = others[0]
                raise WriteError(409, f'route "{name}" is also defined in {r["file"]}:'
                                      f'{r["line"]} (server {r["server"]}), not by the admin API',
                                 "name")
        return check

    async def put_route(self, request):
        async def body():
            name = check_name(request.params["name"], "name", "a route name")
            kind, doc = body_of(request)
            server = request.args.get("server")
            if kind == "json" and isinstance(doc, dict) and doc.get("server") is not None:
                if not isinstance(doc["server"], str):
                    raise WriteError(400, "must be a server label", "server")
                if server is not None and server != doc["server"]:
                    raise WriteError(400, "?server= and the body's server differ", "server")
                server = doc["server"]
            for r in self._route_of(self.api.cycle, name):
                if not os.path.abspath(r["file"]).startswith(self.writer.admin_dir + os.sep):
                    raise WriteError(409, f'route "{name}" is defined in {r["file"]}:{r["line"]}'
                                          f', not by the admin API', "name")
            lines = {}
            path, text = self.route_change(name, kind, doc, server, "body", lines)
            changes = {p: None for p in self._managed_route_paths(name) if p != path}
            created = not os.path.exists(path)
            changes[path] = text.encode()
            gen, _ = await self.writer.apply(
                request, changes, f"PUT /routes/{name}",
                lambda f, ln, m: lines.get((os.path.abspath(f or ""), ln)),
                self._route_check(name, path, server))
            found = self._route_of(self.api.cycle, name)
            return self.answer(201 if created else 200,
                               {"route": found[0] if found else None}, gen)
        return await self.run(request, body)

    async def delete_route(self, request):
        async def body():
            name = check_name(request.params["name"], "name", "a route name")
            paths = self._managed_route_paths(name)
            if not paths:
                for r in self._route_of(self.api.cycle, name):
                    raise WriteError(409, f'route "{name}" is defined in {r["file"]}:{r["line"]}'
                                          f', not by the admin API', "name")
                raise WriteError(404, f'no route "{name}" managed by the admin API', "name")
            gen, _ = await self.writer.apply(request, {p: None for p in paths},
                                             f"DELETE /routes/{name}", lambda f, ln, m: "name")
            return self.answer(200, {"deleted": name}, gen)
        return await self.run(request, body)

    # -- consumers -----------------------------------------------------------------

    def _consumers_doc(self):
        path = self.writer.consumers_path
        if path is None:
            raise WriteError(409, 'the configuration names no consumers file: add '
                                  '"consumers PATH;" to its http block', "name")
        import yaml
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f.read())
        except FileNotFoundError:
            doc = None
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise WriteError(409, f"the consumers file {path} cannot be read: "
                                  f"{str(e)[:200]}", "name")
        if doc is None:
            doc = {"consumers": []}
        if not isinstance(doc, dict) or not isinstance(doc.get("consumers") or [], list):
            raise WriteError(409, f"the consumers file {path} is not a consumers list", "name")
        doc["consumers"] = doc.get("consumers") or []
        return path, doc

    @staticmethod
    def consumer_entry(name, body, field):
        """The file's entry for a consumer from a request body: a Basic `password` is
        hashed (scrypt, as `edge consumers hash-password` does), never stored."""
        pre = f"{field}." if field != "body" else ""
        body = _object({} if body is None else body, field,
                       {"username", "custom_id", "groups", "credentials"})
        for key in ("username", "custom_id"):
            if key in body and not isinstance(body[key], str):
                raise WriteError(400, "must be a string", f"{pre}{key}")
        if "groups" in body and not isinstance(body["groups"], list):
            raise WriteError(400, "must be a list of group names", f"{pre}groups")
        if body.get("username") not in (None, name):
            raise WriteError(400, "the body names another username than the path",
                             f"{pre}username")
        entry = {"username": name}
        for key in ("custom_id", "groups"):
            if body.get(key) is not None:
                entry[key] = body[key]
        creds = body.get("credentials")
        if creds is not None:
            if not isinstance(creds, dict):
                raise WriteError(400, "must be a mapping (key_auth, basic_auth, jwt)",
                                 f"{pre}credentials")
            creds = json.loads(json.dumps(creds))     # a copy to change
            basics = creds.get("basic_auth")
            if isinstance(basics, dict):
                basics = creds["basic_auth"] = [basics]
            for i, item in enumerate(basics if isinstance(basics, list) else []):
                if isinstance(item, dict) and "password" in item:
                    password = item.pop("password")
                    where = f"{pre}credentials.basic_auth[{i}].password"
                    if "password_hash" in item:
                        raise WriteError(400, "give password or password_hash, not both", where)
                    if not isinstance(password, str) or not password:
                        raise WriteError(400, "must be a non-empty string", where)
                    from edge.modules.consumers import hash_password
                    item["password_hash"] = hash_password(password)
            entry["credentials"] = creds
        return entry

    def _consumer_field_of(self, pre=""):
        def field_of(file, line, message):
            m = re.search(r'consumer "[^"]*": ([A-Za-z_][\w.\[\]]*): ', message)
            if m:
                return pre + m.group(1)
            m = re.search(r"consumers\[(\d+)\]: ([A-Za-z_][\w.\[\]]*): ", message)
            return pre + m.group(2) if m else (pre.rstrip(".") or "body")
        return field_of

    @staticmethod
    def dump_consumers(doc):
        import yaml
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode("utf-8")

    async def put_consumer(self, request):
        async def body():
            name = request.params["name"]
            if len(name) > 256 or any(ord(c) < 0x21 or ord(c) > 0x7e for c in name.strip()):
                raise WriteError(400, "must be visible ASCII characters", "name")
            path, doc = self._consumers_doc()
            kind, value = body_of(request)
            if kind != "json":
                raise WriteError(415, "a consumer is a JSON object", "content-type")
            entry = self.consumer_entry(name, value, "body")
            entries = doc["consumers"]
            index = next((i for i, c in enumerate(entries)
                          if isinstance(c, dict) and c.get("username") == name), None)
            created = index is None
            if created:
                entries.append(entry)
            else:
                entries[index] = entry
            gen, _ = await self.writer.apply(request, {path: self.dump_consumers(doc)},
                                             f"PUT /consumers/{name}", self._consumer_field_of())
            from edge.control.api import consumers_of
            found = [c for c in consumers_of(self.api.cycle.consumers) if c["username"] == name]
            return self.answer(201 if created else 200,
                               {"consumer": found[0] if found else None}, gen)
        return await self.run(request, body)

    async def delete_consumer(self, request):
        async def body():
            name = request.params["name"]
            path, doc = self._consumers_doc()
            entries = doc["consumers"]
            kept = [c for c in entries if not (isinstance(c, dict) and c.get("username") == name)]
            if len(kept) == len(entries):
                raise WriteError(404, f'no consumer "{name[:128]}"', "name")
            doc["consumers"] = kept
            gen, _ = await self.writer.apply(request, {path: self.dump_consumers(doc)},
                                             f"DELETE /consumers/{name}",
                                             self._consumer_field_of())
            return self.answer(200, {"deleted": name}, gen)
        return await self.run(request, body)

    # -- the whole set -------------------------------------------------------------

    @staticmethod
    def _named(value, field):
        """[(name, spec, field)] from a list of {"name": ...} or a {name: spec} map."""
        if isinstance(value, dict):
            return [(k, v, f"{field}.{k}") for k, v in value.items()]
        if isinstance(value, list):
            out = []
            for i, item in enumerate(value):
                key = "username" if field == "consumers" else "name"
                if not isinstance(item, dict) or not isinstance(item.get(key), str):
                    raise WriteError(400, f'must be an object with "{key}"', f"{field}[{i}]")
                out.append((item[key], item, f"{field}[{i}]"))
            return out
        raise WriteError(400, "must be a list or a mapping by name", field)

    async def put_config(self, request):
        async def body():
            kind, doc = body_of(request)
            if kind != "json":
                raise WriteError(415, "the declarative config is JSON or YAML", "content-type")
            doc = _object(doc, "body", {"upstreams", "routes", "consumers"})
            writer = self.writer
            lines = {}
            changes = {p: None for p in writer.managed_files() if p != writer.consumers_path}
            checks = []
            seen = set()
            for name, spec, field in self._named(doc.get("upstreams", []), "upstreams"):
                check_name(name, field, "an upstream name")
                if name in seen:
                    raise WriteError(400, f'upstream "{name}" twice', field)
                seen.add(name)
                existing = _find_upstream_node(self.api.cycle, name)
                if existing is not None and os.path.abspath(existing.file) != \
                        writer.upstream_path(name):
                    raise WriteError(409, f'upstream "{name}" is defined in {existing.file}:'
                                          f'{existing.line}, not by the admin API', field)
                if isinstance(spec, dict) and isinstance(spec.get("text"), str):
                    path, text = self._upstream_change(name, "text", spec["text"], field, lines)
                elif isinstance(spec, str):
                    path, text = self._upstream_change(name, "text", spec, field, lines)
                else:
                    path, text = self._upstream_change(name, "json", spec, field, lines)
                changes[path] = text.encode()
                checks.append(self._include_check(path, "upstreams"))
            seen = set()
            for name, spec, field in self._named(doc.get("routes", []), "routes"):
                check_name(name, field, "a route name")
                if name in seen:
                    raise WriteError(400, f'route "{name}" twice', field)
                seen.add(name)
                if not isinstance(spec, dict):
                    raise WriteError(400, 'must be an object ({"server", "location", '
                                          '"directives"} or {"server", "text"})', field)
                server = spec.get("server")
                if not isinstance(server, str):
                    raise WriteError(400, "must be a server label", f"{field}.server")
                for r in self._route_of(self.api.cycle, name):
                    if not os.path.abspath(r["file"]).startswith(writer.admin_dir + os.sep):
                        raise WriteError(409, f'route "{name}" is defined in {r["file"]}:'
                                              f'{r["line"]}, not by the admin API', field)
                if isinstance(spec.get("text"), str):
                    path, text = self.route_change(name, "text", spec["text"], server,
                                                   f"{field}.text", lines)
                else:
                    spec = {k: v for k, v in spec.items() if k != "server"}
                    path, text = self.route_change(name, "json", spec, server, field, lines)
                changes[path] = text.encode()
                checks.append(self._route_check(name, path, server))
            if "consumers" in doc:
                path = writer.consumers_path
                if path is None:
                    raise WriteError(409, 'the configuration names no consumers file: add '
                                          '"consumers PATH;" to its http block', "consumers")
                entries = []
                for name, spec, field in self._named(doc["consumers"], "consumers"):
                    if isinstance(spec, dict) and "username" in spec:
                        spec = {k: v for k, v in spec.items()}
                    entries.append(self.consumer_entry(name, spec, field))
                changes[path] = self.dump_consumers({"consumers": entries})

            def field_of(file, line, message):
                found = lines.get((os.path.abspath(file or ""), line))
                if found:
                    return found
                if writer.consumers_path and "consumers file" in message:
                    return self._consumer_field_of("consumers.")(file, line, message)
                return None

            def check(candidate):
                for c in checks:
                    c(candidate)
            gen, _ = await writer.apply(request, changes, "PUT /config", field_of, check)
            return self.answer(200, {"applied": True,
                                     "upstreams": sorted(n for n, *_ in
                                                         self._named(doc.get("upstreams", []),
                                                                     "upstreams")),
                                     "routes": sorted(n for n, *_ in
                                                      self._named(doc.get("routes", []), "routes"))},
                               gen)
        return await self.run(request, body)

    # -- history -------------------------------------------------------------------

    def get_history(self, request):
        return self.answer(200, {"keep": self.writer.history_size(),
                                 "history": self.writer.history()})

    async def post_rollback(self, request):
        async def body():
            to = request.args.get("to")
            if to is None or not to.isdigit():
                raise WriteError(400, "must be a generation (GET /config/history)", "to")
            changes = self.writer.restore_changes(int(to))
            gen, _ = await self.writer.apply(request, changes, f"rollback to generation {to}",
                                             lambda f, ln, m: "to")
            return self.answer(200, {"rolled_back": True, "restored": int(to),
                                     "files": sorted(p for p, c in changes.items()
                                                     if c is not None)}, gen)
        return await self.run(request, body)
