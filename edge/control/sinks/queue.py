"""The bounded record queue in front of each sink.

The producer (the Shipper's pump, draining the workers' rings) must never wait on a
sink, and the control process's memory must not grow whatever the sink does (down,
refusing, stalled, slow). So the queue has a fixed bound and, when full, drops its
*oldest* record to make room: during an outage the freshest records are the ones
worth shipping when the sink comes back, and the gap is counted, never silent.

Single event loop, single thread: no locks. ``put`` is synchronous and O(1).
"""

import asyncio
from collections import deque


class DropQueue:
    def __init__(self, bound):
        self._items = deque()
        self._bound = bound
        self.dropped = 0          # records pushed out by newer ones (queue full)
        self._want = 1            # wake the consumer once this many records wait
        self._ready = asyncio.Event()
        self._closing = False

    def __len__(self):
        return len(self._items)

    @property
    def bound(self):
        return self._bound

    @property
    def closed(self):
        return self._closing

    def resize(self, bound):
        """Change the bound (a reload changed ``queue=``); shrinking drops the oldest."""
        self._bound = bound
        while len(self._items) > bound:
            self._items.popleft()
            self.dropped += 1

    def put(self, record):
        """Append ``record``; if the queue is full the oldest record is dropped."""
        items = self._items
        if len(items) >= self._bound:
            items.popleft()
            self.dropped += 1
        items.append(record)
        if len(items) >= self._want:
            self._ready.set()

    def close(self):
        """Stop lingering: ``get_batch`` returns what there is at once from now on."""
        self._closing = True
        self._ready.set()

    def take(self, n):
        """Pop up to ``n`` records at once, oldest first, without waiting."""
        items = self._items
        return [items.popleft() for _ in range(min(n, len(items)))]

    async def get_batch(self, n, linger):
        """Wait for at least one record, then up to ``linger`` seconds for ``n`` of
        them; pop and return up to ``n``, oldest first. Returns [] only once the queue
        is closed and empty."""
        while not self._items:
            if self._closing:
                return []
            self._want = 1
            self._ready.clear()
            await self._ready.wait()
        if linger > 0 and len(self._items) < n and not self._closing:
            self._want = n
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), linger)
            except asyncio.TimeoutError:
                pass
            finally:
                self._want = 1
        return self.take(n)
