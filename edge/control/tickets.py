"""Rotation of the shared TLS session ticket keys (edge/modules/ssl_session.py).

The master makes the key zone (`<state>.ssl.tickets`) with one random key and writes into
it how often to rotate (the longest ssl_session_timeout of the servers that use it) and
how long a key that stopped encrypting must still decrypt (the same: the longest a ticket
it encrypted may live). This service makes a new current key when a rotation is due; the
workers read the keys from the zone at each ticket they encrypt or decrypt, so they all
switch together. A new control process (respawn, reload) goes on from the zone's own
clock: rotations are neither skipped nor doubled.

Servers with ssl_session_ticket_key files use those keys instead; nothing rotates them.
"""

import asyncio

from edge import log

POLL = 1.0          # the longest this service sleeps before looking at the zone again


class TicketRotation:
    """The control-process service (edge/control/services.py)."""

    def __init__(self, cycle):
        self.cycle = cycle
        self.task = None
        self.zone = None
        self.rotations = 0

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._loop(), name="edge-ticket-keys")

    async def reload(self, cycle):
        self.cycle = cycle

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self.zone is not None:
            self.zone.close()
            self.zone = None

    def _uses_shared_keys(self):
        state = getattr(self.cycle.runtime, "ssl_sessions", None) if self.cycle is not None else None
        return bool(state and state["shared_tickets"])

    def _open(self):
        """The key zone, (re)opened when the master made a new one."""
        import os
        from edge._core.reactor import TicketKeyZone, ticket_keys_path
        path = ticket_keys_path()
        if path is None or not os.path.exists(path):
            return None
        inode = os.stat(path).st_ino
        if self.zone is not None and getattr(self, "inode", None) == inode:
            return self.zone
        if self.zone is not None:
            self.zone.close()
        self.zone = TicketKeyZone.open(path)
        self.inode = inode
        return self.zone

    def step(self):
        """Rotate when due; the seconds until the next look."""
        if not self._uses_shared_keys():
            return POLL
        zone = self._open()
        if zone is None:
            return POLL
        due = zone.due()
        if due <= 0:
            zone.rotate()
            self.rotations += 1
            log.error("info", f"TLS session ticket keys rotated (every {zone.interval}s; "
                              f"{len(zone.names())} keys decrypt)")
            due = zone.due()
        return min(POLL, max(0.05, due))

    def ssl_session_metrics(self):
        """For /metrics: the counters of the shared session caches of the config in force,
        and the ticket keys; None when the config has neither."""
        from edge._core.reactor import SessionCacheZone, session_cache_path
        state = getattr(self.cycle.runtime, "ssl_sessions", None) if self.cycle is not None else None
        if not state:
            return None
        caches = {}
        for name in state["zones"]:
            path = session_cache_path(name)
            if path is None:
                continue
            try:
                zone = SessionCacheZone.open(path)
            except (OSError, ValueError):
                continue
            try:
                caches[name] = zone.stats()
            finally:
                zone.close()
        out = {"caches": caches, "ticket_keys": None, "ticket_rotations": 0}
        if state["shared_tickets"]:
            zone = self._open()
            if zone is not None:
                out["ticket_keys"] = len(zone.names())
                out["ticket_rotations"] = zone.rotations
        if not caches and out["ticket_keys"] is None:
            return None
        return out

    async def _loop(self):
        while True:
            try:
                delay = self.step()
            except Exception as e:   # never let the task die: try again later
                log.error("alert", f"control process: ticket key rotation failed: {e!r}")
                delay = POLL
            await asyncio.sleep(delay)
