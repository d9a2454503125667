"""Upstream groups seen from the control process: active health checks (`health_check`)
and names re-resolved from DNS (`server NAME resolve`). docs/traffic.md, "Health checks"
and "DNS".

Everything it finds goes to shared memory, where the workers read it without a syscall:

- a peer's verdict is the health word of its (upstream, peer) series (zones.pyx):
  0 not checked yet, odd up, even down, one more on each transition. The words outlive
  reloads and respawns of this process: a check task starts from the word it finds.
- the addresses of a `resolve` server go to its resolve slot (zones.pyx,
  publish_addresses); the workers copy them into the group's peer slots on their next pick.

One task per group runs the checks (each round checks every peer at once, at most
CONCURRENCY checks in flight over all groups), one task per `resolve` server re-resolves
its name. A reload keeps the tasks whose settings did not change, so their counts of
consecutive passes and failures go on.
"""

import asyncio
import socket
import time

from edge import log
from edge.control import dns

CONCURRENCY = 64            # health checks in flight at once, over all groups
RESOLVE_MIN_INTERVAL = 1.0  # seconds: a TTL of 0 does not make us ask in a loop
RESOLVE_RETRY = 1.0         # seconds before asking again after a failure (doubling to 30)
RESPONSE_HEAD_MAX = 8192


def peer_name(family, ip, port):
    return f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"


class PeerState:
    __slots__ = ("word", "fails", "passes", "reason", "checked_at", "checks")

    def __init__(self, word):
        self.word = word            # what we last wrote (or found) in shared memory
        self.fails = 0              # consecutive failed checks
        self.passes = 0             # consecutive passed checks
        self.reason = None          # why the last check failed
        self.checked_at = None      # wall clock of the last completed check
        self.checks = 0

    @property
    def verdict(self):
        if self.word == 0:
            return "unchecked"
        return "up" if self.word & 1 else "down"


async def check_peer(spec, group_name, family, ip, port):
    """One check: None when it passes, else why it failed (for the log)."""
    port = spec.port or port
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(ip, port, family=family), spec.timeout)
    except asyncio.TimeoutError:
        return "connect timed out"
    except ConnectionRefusedError:
        return "connect refused"
    except OSError as e:
        return f"connect failed: {e.strerror or e}"
    try:
        if spec.type == "tcp":
            return None
        host = spec.host or group_name
        request = (f"GET {spec.uri} HTTP/1.1\r\nHost: {host}\r\n"
                   "User-Agent: edge-health-check\r\nConnection: close\r\n\r\n")
        writer.write(request.encode("latin-1"))
        try:
            line = await asyncio.wait_for(reader.readline(), spec.timeout)
        except asyncio.TimeoutError:
            return "timed out waiting for the response"
        except (OSError, ValueError) as e:
            return f"read failed: {e}"
        if not line:
            return "connection closed before a response"
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() \
                or len(parts[1]) != 3:
            return "invalid response"
        code = int(parts[1])
        if not spec.status_ok(code):
            return f"status {code}"
        return None
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except Exception:
            pass


class Upstreams:
    """The control-process service (edge/control/services.py)."""

    def __init__(self, zones, cycle):
        self.zones = zones
        self.cycle = cycle
        self.sem = None
        self.health_tasks = {}      # group name -> (key, task)
        self.resolve_tasks = {}     # (group, host, port) -> (key, task)
        self.peers = {}             # (group, peer name) -> PeerState
        self.resolved = {}          # (group, host, port) -> {"addresses", "error", "expires"}

    # -- the service interface ---------------------------------------------------------

    def start(self):
        self.sem = asyncio.Semaphore(CONCURRENCY)
        self._apply(self.cycle)

    async def reload(self, cycle):
        self._apply(cycle)
        self.cycle = cycle

    async def stop(self):
        tasks = [t for _, t in self.health_tasks.values()] + \
                [t for _, t in self.resolve_tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.health_tasks.clear()
        self.resolve_tasks.clear()

    # -- configuration -----------------------------------------------------------------

    @staticmethod
    def groups(cycle):
        return list(cycle.plan.upstreams) if cycle is not None else []

    def _apply(self, cycle):
        if self.zones is None:
            return
        groups = {g.name: g for g in self.groups(cycle)}
        wanted_resolve = {}
        wanted_health = {}
        for name, g in groups.items():
            for host, port in g.resolve_names:
                wanted_resolve[(name, host, port)] = g.resolver
            if g.health_check is not None:
                wanted_health[name] = (g.health_check, tuple(g.static_peers),
                                       tuple(g.resolve_names))
        for key in list(self.resolve_tasks):
            have_key, task = self.resolve_tasks[key]
            if wanted_resolve.get(key, object()) != have_key:
                task.cancel()
                del self.resolve_tasks[key]
                self.resolved.pop(key, None)
        for key, settings in wanted_resolve.items():
            if key not in self.resolve_tasks:
                task = asyncio.get_running_loop().create_task(
                    self._resolve_loop(key, settings), name=f"edge-resolve-{key[0]}-{key[1]}")
                self.resolve_tasks[key] = (settings, task)
        for name in list(self.health_tasks):
            have_key, task = self.health_tasks[name]
            if wanted_health.get(name) != have_key:
                task.cancel()
                del self.health_tasks[name]
                if name not in wanted_health:
                    self._forget(name, set())
        for name, key in wanted_health.items():
            if name not in self.health_tasks:
                task = asyncio.get_running_loop().create_task(
                    self._health_loop(name, key[0], key[1], key[2]), name=f"edge-health-{name}")
                self.health_tasks[name] = (key, task)
        # groups without checks: their words say "not checked" (a check removed by a
        # reload must not leave a peer down for ever)
        for name, g in groups.items():
            if name not in wanted_health:
                for family, ip, port in g.static_peers:
                    if self.zones.peer_health(name, peer_name(family, ip, port)):
                        self.zones.set_peer_health(name, peer_name(family, ip, port), 0)
                for host, port in g.resolve_names:
                    for family, ip in self.zones.resolved_addresses(name, host, port) or ():
                        if self.zones.peer_health(name, peer_name(family, ip, port)):
                            self.zones.set_peer_health(name, peer_name(family, ip, port), 0)

    def _forget(self, group, keep):
        """Peers of `group` no longer checked: their words back to "not checked"."""
        for key in [k for k in self.peers if k[0] == group and k[1] not in keep]:
            del self.peers[key]
            self.zones.set_peer_health(key[0], key[1], 0)

    def current_peers(self, group):
        """[(family, ip, port)] of a group now: its static peers and what its `resolve`
        servers resolve to."""
        out = list(group.static_peers)
        for host, port in group.resolve_names:
            for family, ip in self.zones.resolved_addresses(group.name, host, port) or ():
                out.append((family, ip, port))
        return out

    # -- health checks -----------------------------------------------------------------

    async def _health_loop(self, name, spec, static_peers, resolve_names):
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            targets = list(static_peers)
            for host, port in resolve_names:
                for family, ip in self.zones.resolved_addresses(name, host, port) or ():
                    targets.append((family, ip, port))
            names = {peer_name(*t): t for t in targets}
            self._forget(name, set(names))
            await asyncio.gather(*(self._check(name, spec, pname, t)
                                   for pname, t in names.items()))
            await asyncio.sleep(max(0.0, started + spec.interval - loop.time()))

    async def _check(self, group, spec, pname, target):
        state = self.peers.get((group, pname))
        if state is None:
            state = self.peers[(group, pname)] = PeerState(self.zones.peer_health(group, pname))
        async with self.sem:
            try:
                reason = await check_peer(spec, group, *target)
            except Exception as e:       # a check must never kill the loop
                reason = f"check failed: {e!r}"
        if self.peers.get((group, pname)) is not state:
            return                       # forgotten meanwhile (reload, DNS change)
        state.checks += 1
        state.checked_at = time.time()
        state.reason = reason
        if reason is None:
            state.passes += 1
            state.fails = 0
            if state.word == 0 or (not state.word & 1 and state.passes >= spec.passes):
                self._set(group, pname, state, True, None)
        else:
            state.fails += 1
            state.passes = 0
            if (state.word == 0 or state.word & 1) and state.fails >= spec.fails:
                self._set(group, pname, state, False, reason)

    def _set(self, group, pname, state, up, reason):
        word = state.word + 1 if state.word else (1 if up else 2)
        state.word = word
        self.zones.set_peer_health(group, pname, word)
        if up:
            log.error("notice", f'upstream "{group}" peer {pname} is up (health check)')
        else:
            log.error("warn", f'upstream "{group}" peer {pname} is down (health check: {reason})')

    # -- DNS ---------------------------------------------------------------------------

    async def _resolve_loop(self, key, settings):
        group, host, port = key
        info = self.resolved.setdefault(key, {"addresses": None, "error": None,
                                              "resolved_at": None, "next_at": None})
        retry = RESOLVE_RETRY
        while True:
            try:
                addrs, ttl = await dns.resolve(host, list(settings.addresses), settings.ipv6,
                                               settings.timeout)
            except (dns.DNSError, OSError) as e:
                info["error"] = str(e) or type(e).__name__
                log.error("error", f'upstream "{group}": could not resolve {host} ({info["error"]}); '
                                   "keeping its last addresses")
                info["next_at"] = time.time() + retry
                await asyncio.sleep(retry)
                retry = min(retry * 2, 30.0)
                continue
            retry = RESOLVE_RETRY
            info["error"] = None
            info["resolved_at"] = time.time()
            # at most 16 kept, in the order of the answer, duplicates dropped
            unique = []
            for a in addrs:
                if a not in unique:
                    unique.append(a)
            old = self.zones.resolved_addresses(group, host, port)
            if old is None or sorted(old) != sorted(unique[:16]):
                self.zones.publish_addresses(group, host, port, unique)
                shown = ", ".join(peer_name(f, ip, port) for f, ip in unique[:16]) or "nothing"
                log.error("notice", f'upstream "{group}": {host}:{port} resolves to {shown}')
            info["addresses"] = [peer_name(f, ip, port) for f, ip in unique[:16]]
            if settings.valid is not None:
                delay = settings.valid
            elif ttl is not None:
                delay = ttl
            else:
                delay = dns.NEGATIVE_TTL
            delay = max(delay, RESOLVE_MIN_INTERVAL)
            info["next_at"] = time.time() + delay
            await asyncio.sleep(delay)

    # -- what /status and /metrics show ----------------------------------------------

    def peers_in_force(self):
        """{(group, peer name): health word} for every peer the config has now (static
        peers and the addresses resolved now)."""
        out = {}
        if self.zones is None:
            return out
        for g in self.groups(self.cycle):
            for family, ip, port in self.current_peers(g):
                pname = peer_name(family, ip, port)
                out[(g.name, pname)] = self.zones.peer_health(g.name, pname)
        return out

    def status(self):
        """The `upstreams` part of /status."""
        out = {}
        if self.zones is None:
            return out
        for g in self.groups(self.cycle):
            peers = []
            for family, ip, port in self.current_peers(g):
                pname = peer_name(family, ip, port)
                word = self.zones.peer_health(g.name, pname)
                entry = {"peer": pname,
                         "health": "unchecked" if word == 0 else ("up" if word & 1 else "down")}
                state = self.peers.get((g.name, pname))
                if g.health_check is not None and state is not None:
                    entry["checks"] = state.checks
                    entry["consecutive_fails"] = state.fails
                    entry["consecutive_passes"] = state.passes
                    entry["last_error"] = state.reason
                    entry["last_check"] = round(state.checked_at, 3) if state.checked_at else None
                peers.append(entry)
            doc = {"peers": peers}
            if g.health_check is not None:
                hc = g.health_check
                doc["health_check"] = {"type": hc.type, "uri": hc.uri, "interval": hc.interval,
                                       "timeout": hc.timeout, "fails": hc.fails,
                                       "passes": hc.passes}
            if g.resolve_names:
                doc["resolve"] = []
                for host, port in g.resolve_names:
                    info = self.resolved.get((g.name, host, port), {})
                    addrs = self.zones.resolved_addresses(g.name, host, port)
                    doc["resolve"].append({
                        "name": f"{host}:{port}",
                        "addresses": None if addrs is None else [peer_name(f, ip, port) for f, ip in addrs],
                        "error": info.get("error"),
                        "resolved_at": info.get("resolved_at"),
                        "next_at": info.get("next_at")})
            out[g.name] = doc
        return out
