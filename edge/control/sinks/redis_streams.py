"""The Redis Streams sink: ``redis://HOST:PORT/STREAM[?maxlen=N]``.

Each record becomes one stream entry with a single field ``line``::

    XADD STREAM MAXLEN ~ N * line RECORD

and a batch is one pipeline (no MULTI: one round trip, no transaction). ``MAXLEN ~``
lets Redis trim in whole macro nodes, so the stream holds at least N entries and
somewhat more, at a fraction of the cost of an exact trim.

redis-py's own retries are turned off: a connection error or a timeout goes back to
the sink's back-off, which retries the whole batch on a fresh connection (redis-py
reconnects by itself on the next command). An error reply for an entry (the key holds
another type, say) drops that record, counted and logged.
"""

import asyncio

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff

from .base import Sink


class RedisStreamSink(Sink):
    RETRY_ERRORS = Sink.RETRY_ERRORS + (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

    def __init__(self, spec):
        super().__init__(spec)
        self._client = None

    def _connect(self):
        spec = self.spec
        return aioredis.Redis(
            host=spec.host, port=spec.port,
            socket_connect_timeout=spec.timeout, socket_timeout=spec.timeout,
            retry=RedisRetry(NoBackoff(), 0),
            client_name="edge-log-shipper")

    async def _send(self, batch):
        if self._client is None:
            self._client = self._connect()
        spec = self.spec
        pipe = self._client.pipeline(transaction=False)
        for record in batch:
            pipe.xadd(spec.stream, {"line": record}, maxlen=spec.maxlen, approximate=True)
        # socket_timeout bounds each read; this bounds the whole exchange as well.
        results = await asyncio.wait_for(pipe.execute(raise_on_error=False), spec.timeout * 2)
        for result in results:
            if isinstance(result, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
                raise result
        return sum(1 for result in results if isinstance(result, Exception))

    async def _close(self):
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
