"""A tiny UDP DNS responder on loopback for the `resolve` tests.

    with DNSServer({"api.test": ["127.0.0.1"]}, ttl=1) as dns:
        ... resolver 127.0.0.1:{dns.port} ...
        dns.set("api.test", ["127.0.0.2"])     # what the next query gets

A questions get the dict's IPv4 addresses, AAAA questions its IPv6 ones (both NOERROR,
possibly empty); a name not in the dict gets NXDOMAIN. Every question is counted in
`queries` (name, type). Nothing else of DNS is spoken.
"""

import socket
import struct
import threading

TYPE_A = 1
TYPE_AAAA = 28


def _read_qname(data, pos):
    labels = []
    while True:
        n = data[pos]
        if n == 0:
            return ".".join(labels), pos + 1
        labels.append(data[pos + 1:pos + 1 + n].decode("ascii"))
        pos += 1 + n


class DNSServer:
    def __init__(self, records=None, ttl=1, host="127.0.0.1"):
        self.records = {k.lower(): list(v) for k, v in (records or {}).items()}
        self.ttl = ttl
        self.queries = []
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="dns-server")

    @property
    def addr(self):
        return f"{self.host}:{self.port}"

    def set(self, name, addresses):
        with self._lock:
            self.records[name.lower()] = list(addresses)

    def remove(self, name):
        with self._lock:
            self.records.pop(name.lower(), None)

    def count(self, name):
        with self._lock:
            return sum(1 for n, _ in self.queries if n == name.lower())

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _loop(self):
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data)
            except (IndexError, struct.error, UnicodeDecodeError):
                continue
            if reply is not None:
                self.sock.sendto(reply, addr)

    def _answer(self, data):
        qid, flags, qd = struct.unpack(">HHH", data[:6])
        if qd != 1 or flags & 0x8000:
            return None
        name, pos = _read_qname(data, 12)
        qtype, qclass = struct.unpack(">HH", data[pos:pos + 4])
        question = data[12:pos + 4]
        with self._lock:
            self.queries.append((name.lower(), qtype))
            found = self.records.get(name.lower().rstrip("."))
            ttl = self.ttl
        answers = []
        if found is not None:
            for ip in found:
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                if (qtype == TYPE_A) != (family == socket.AF_INET) or qtype not in (TYPE_A, TYPE_AAAA):
                    continue
                rdata = socket.inet_pton(family, ip)
                # the owner name as a pointer to the question's name (offset 12)
                answers.append(struct.pack(">HHHIH", 0xC00C, qtype, 1, ttl, len(rdata)) + rdata)
        rcode = 0 if found is not None else 3
        head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
        return head + question + b"".join(answers)
