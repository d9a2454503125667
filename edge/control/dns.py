"""A small asyncio DNS client for `server NAME resolve` (docs/traffic.md, "DNS").

It asks the configured name servers directly over UDP (RFC 1035), A and, unless
`ipv6=off`, AAAA, and returns the addresses with the smallest TTL of the answer. It does
no caching, no search domains and no /etc/hosts: the name in the config is asked as
written (a trailing dot is allowed). A reply must come from the server asked, carry the
query's random id and echo its question; anything else is ignored and the wait goes on.
A truncated reply (TC) is used as far as it goes: at most RESOLVE_MAX (16) addresses
are kept per name anyway.
"""

import asyncio
import secrets
import socket
import struct
import time

TYPE_A = 1
TYPE_AAAA = 28
TYPE_CNAME = 5
CLASS_IN = 1
RCODE_NXDOMAIN = 3
ATTEMPT_TIMEOUT = 1.0     # seconds one server gets before the next one is asked
NEGATIVE_TTL = 5          # seconds a "no such name" or an empty answer is kept without valid=


class DNSError(Exception):
    """The name could not be resolved now (timeout, SERVFAIL, REFUSED, a bad reply):
    the caller keeps the addresses it had."""


def encode_name(name):
    out = bytearray()
    name = name.rstrip(".")
    for label in name.split(".") if name else []:
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise DNSError(f'invalid name "{name}"')
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def build_query(qid, name, qtype):
    """A recursive (RD) query for one name and type."""
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + \
        struct.pack(">HH", qtype, CLASS_IN)


def _skip_name(data, pos):
    """The position after the (possibly compressed) name at pos."""
    while True:
        if pos >= len(data):
            raise DNSError("truncated name")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def _read_name(data, pos):
    labels, jumps = [], 0
    while True:
        if pos >= len(data):
            raise DNSError("truncated name")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data) or jumps > 32:
                raise DNSError("bad compression pointer")
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            jumps += 1
            continue
        if length == 0:
            return ".".join(labels)
        labels.append(data[pos + 1:pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length


def parse_response(data, qid, name, qtype):
    """(rcode, [(family, address text)], smallest TTL or None) of a reply to our query;
    None when the reply is not one (wrong id, not a response, another question)."""
    if len(data) < 12:
        return None
    rid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", data[:12])
    if rid != qid or not flags & 0x8000 or qd != 1:
        return None
    pos = 12
    try:
        qname = _read_name(data, pos)
        pos = _skip_name(data, pos)
        rtype, rclass = struct.unpack(">HH", data[pos:pos + 4])
    except (DNSError, struct.error):
        return None
    if qname.lower().rstrip(".") != name.lower().rstrip(".") or rtype != qtype:
        return None
    pos += 4
    rcode = flags & 0x000F
    addrs, ttl = [], None
    for _ in range(an):
        try:
            pos = _skip_name(data, pos)
            atype, aclass, attl, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        except struct.error:
            break           # truncated: keep what was read
        pos += 10
        rdata = data[pos:pos + rdlen]
        pos += rdlen
        if len(rdata) != rdlen or aclass != CLASS_IN:
            continue
        if atype == TYPE_A == qtype and rdlen == 4:
            addrs.append((socket.AF_INET, socket.inet_ntop(socket.AF_INET, rdata)))
        elif atype == TYPE_AAAA == qtype and rdlen == 16:
            addrs.append((socket.AF_INET6, socket.inet_ntop(socket.AF_INET6, rdata)))
        else:
            continue        # CNAME records of the chain: their targets' records follow
        ttl = attl if ttl is None else min(ttl, attl)
    return rcode, addrs, ttl


class _Reply(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))

    def error_received(self, exc):
        self.queue.put_nowait((None, exc))


async def query(name, qtype, servers, timeout):
    """Ask the servers (tuples (family, ip, port)) in turn, ATTEMPT_TIMEOUT each, until
    one answers or `timeout` seconds passed. Returns (addrs, ttl); raises DNSError."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    attempt = 0
    last_error = "timed out"
    while time.monotonic() < deadline:
        family, ip, port = servers[attempt % len(servers)]
        attempt += 1
        qid = secrets.randbelow(65536)
        packet = build_query(qid, name, qtype)
        transport, proto = await loop.create_datagram_endpoint(
            _Reply, family=family, remote_addr=(ip, port))
        try:
            transport.sendto(packet)
            wait_until = min(deadline, time.monotonic() + ATTEMPT_TIMEOUT)
            while True:
                left = wait_until - time.monotonic()
                if left <= 0:
                    break
                try:
                    data, addr = await asyncio.wait_for(proto.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if data is None:            # ICMP unreachable and the like
                    last_error = f"{ip}: {addr}"
                    break
                if addr[0] != ip or addr[1] != port:
                    continue
                parsed = parse_response(data, qid, name, qtype)
                if parsed is None:
                    continue
                rcode, addrs, ttl = parsed
                if rcode == RCODE_NXDOMAIN:
                    return [], None
                if rcode != 0:
                    last_error = f"{ip} answered rcode {rcode}"
                    break
                return addrs, ttl
        finally:
            transport.close()
    raise DNSError(last_error)


async def resolve(name, servers, ipv6=True, timeout=30.0):
    """All the addresses of `name` (A, then AAAA with ipv6) and the smallest TTL among
    them (None when there is none)."""
    kinds = [TYPE_A, TYPE_AAAA] if ipv6 else [TYPE_A]
    results = await asyncio.gather(*(query(name, t, servers, timeout) for t in kinds))
    addrs, ttl = [], None
    for found, found_ttl in results:
        addrs.extend(found)
        if found_ttl is not None:
            ttl = found_ttl if ttl is None else min(ttl, found_ttl)
    return addrs, ttl
