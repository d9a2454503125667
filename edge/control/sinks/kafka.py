"""The Kafka sink: ``kafka://HOST:PORT/TOPIC`` through aiokafka (the optional extra
``pip install 'edge[kafka]'``; parse_target refuses the target without it).

Each record is one message value (no key: the default partitioner spreads them). A
batch is handed to the producer, which packs it into Kafka record batches, and the
sink waits for every message's acknowledgement (``acks=1``). A failed send or
acknowledgement, or a broker that cannot be reached, stops the producer and the whole
batch is sent again after the back-off (at least once, as the other sinks). A record
larger than the broker allows is dropped, counted and logged.
"""

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from .base import Sink

# aiokafka reports every failed connection through the logging module, which in the
# control process would end on stderr, once per attempt. The sink already says what
# matters in edge's error log, rate-limited.
_aiokafka_log = logging.getLogger("aiokafka")
_aiokafka_log.addHandler(logging.NullHandler())
_aiokafka_log.propagate = False


class KafkaSink(Sink):
    RETRY_ERRORS = Sink.RETRY_ERRORS + (KafkaError,)

    def __init__(self, spec):
        super().__init__(spec)
        self._producer = None

    async def _start_producer(self):
        spec = self.spec
        producer = AIOKafkaProducer(
            bootstrap_servers=f"{spec.host}:{spec.port}", client_id="edge",
            acks=1, request_timeout_ms=int(spec.timeout * 1000), linger_ms=5)
        try:
            await asyncio.wait_for(producer.start(), spec.timeout)
        except BaseException:
            await asyncio.wait_for(producer.stop(), 1.0)
            raise
        self._producer = producer

    async def _send(self, batch):
        if self._producer is None:
            await self._start_producer()
        return await asyncio.wait_for(self._send_all(batch), self.spec.timeout * 2)

    async def _send_all(self, batch):
        topic = self.spec.topic
        acks, refused = [], 0
        for record in batch:
            try:
                acks.append(await self._producer.send(topic, value=record))
            except MessageSizeTooLargeError:
                refused += 1
        for ack in acks:
            await ack
        return refused

    async def _close(self):
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
