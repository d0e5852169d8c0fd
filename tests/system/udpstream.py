#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Host side of the test guest's UDP stream (docs/test-guest.md, "UDP stream").

Datagram payload, little-endian:
    0   u32 magic 0x46455259
    4   u32 stream id
    8   u64 sequence number (from 0)
    16  u32 length of the whole payload (>= 24)
    20  u32 CRC-32 (IEEE 802.3, as zlib.crc32) of bytes 0..19 followed by bytes 24..end
    24  payload byte j = (j + 13 * seq) mod 256

Library: build(stream, seq, size) -> bytes; check(data) -> (reason or None, stream, seq);
class Counter (received / lost / reorder / corrupt accounting as in the guest).

CLI:
    udpstream.py send --to IP:PORT [--bind IP:PORT] --mib N [--rate MBIT] [--size N]
    udpstream.py recv --bind IP:PORT [--mib N] [--timeout S] [--idle S]
    udpstream.py ping --to IP [--count N]     ICMP echo through a raw socket (root)
    udpstream.py both --to IP:PORT --bind IP:PORT --mib N [--rx-mib N] ...
        sends N MiB to the guest while receiving the guest's stream (at least
        --rx-mib MiB, default N) on the bound socket.
Prints one "UDPSTREAM ..." line per direction. Exit status 1 on corruption or
if less than the requested amount was received before the timeout.
"""

import argparse
import os
import socket
import struct
import sys
import threading
import time
import zlib

MAGIC = 0x46455259
HDR = 24
_BASE = bytes(range(256)) * 8


def build(stream, seq, size):
    start = (HDR + 13 * seq) % 256
    data = _BASE[start:start + size - HDR]
    head = struct.pack('<IIQI', MAGIC, stream, seq, size)
    crc = zlib.crc32(data, zlib.crc32(head))
    return head + struct.pack('<I', crc) + data


def check(d):
    """Returns (reason, stream, seq); reason None if the datagram is good."""
    if len(d) < HDR:
        return 'short', 0, 0
    magic, stream, seq, length, crc = struct.unpack_from('<IIQII', d)
    if magic != MAGIC:
        return 'magic', stream, seq
    if length != len(d):
        return 'length', stream, seq
    if zlib.crc32(d[HDR:], zlib.crc32(d[:20])) != crc:
        return 'crc', stream, seq
    start = (HDR + 13 * seq) % 256
    if d[HDR:] != _BASE[start:start + len(d) - HDR]:
        return 'data', stream, seq
    return None, stream, seq


class Counter:
    def __init__(self):
        self.rx = self.rx_bytes = self.lost = self.reorder = self.corrupt = 0
        self.stream = None
        self.expect = 0

    def add(self, d, report=None):
        reason, stream, seq = check(d)
        if reason:
            self.corrupt += 1
            if report and self.corrupt <= 8:
                report(f'CORRUPTION net seq={seq} stream=0x{stream:x} reason={reason}')
            return
        self.rx += 1
        self.rx_bytes += len(d)
        if stream != self.stream:
            self.stream, self.expect = stream, seq + 1
        elif seq == self.expect:
            self.expect += 1
        elif seq > self.expect:
            self.lost += seq - self.expect
            self.expect = seq + 1
        else:
            self.reorder += 1

    def line(self, what):
        return (f'UDPSTREAM {what} rx={self.rx} rx_mib={self.rx_bytes / 2**20:.1f} '
                f'lost={self.lost} corrupt={self.corrupt} reorder={self.reorder}')


def addr(s):
    host, _, port = s.rpartition(':')
    return host, int(port)


def send(sock, to, mib, rate_mbit, size, stream, out=sys.stdout):
    total = (mib * 2**20 + size - 1) // size
    t0 = time.monotonic()
    bps = rate_mbit * 1e6 / 8 if rate_mbit else 0
    seq = 0
    while seq < total:
        if bps:
            due = t0 + seq * size / bps
            now = time.monotonic()
            if due > now + 0.001:
                time.sleep(due - now)
        try:
            sock.sendto(build(stream, seq, size), to)
        except (BlockingIOError, OSError):
            time.sleep(0.0005)          # ENOBUFS / queue full: retry the same datagram
            continue
        seq += 1
    dt = time.monotonic() - t0
    print(f'UDPSTREAM tx tx={total} tx_mib={total * size / 2**20:.1f} s={dt:.2f} '
          f'mbit={total * size * 8 / dt / 1e6:.1f} stream=0x{stream:x}', file=out, flush=True)
    return total


def receive(sock, counter, want_bytes, timeout, idle, stop=None):
    t0 = time.monotonic()
    last = t0
    sock.settimeout(0.2)
    while True:
        now = time.monotonic()
        if want_bytes and counter.rx_bytes >= want_bytes:
            break
        if now - t0 > timeout or (counter.rx and now - last > idle):
            break
        if stop is not None and stop.is_set() and not want_bytes:
            break
        try:
            d = sock.recv(65536)
        except socket.timeout:
            continue
        last = time.monotonic()
        counter.add(d, report=lambda s: print(s, flush=True))
    return time.monotonic() - t0


def _inet_csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def ping(host, count=5, timeout=1.0, out=sys.stdout):
    """ICMP echo (RFC 792) with a raw socket; returns the number of replies."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(timeout)
    ident = os.getpid() & 0xffff
    got = 0
    for seq in range(count):
        payload = struct.pack('<d', time.monotonic()) + bytes(range(48))
        hdr = struct.pack('!BBHHH', 8, 0, 0, ident, seq)
        pkt = struct.pack('!BBHHH', 8, 0, _inet_csum(hdr + payload), ident, seq) + payload
        t0 = time.monotonic()
        s.sendto(pkt, (host, 0))
        while True:
            try:
                d, src = s.recvfrom(2048)
            except socket.timeout:
                print(f'PING seq={seq} timeout', file=out, flush=True)
                break
            ihl = (d[0] & 15) * 4
            icmp = d[ihl:]
            if src[0] == host and icmp[0] == 0 and struct.unpack('!H', icmp[4:6])[0] == ident \
                    and struct.unpack('!H', icmp[6:8])[0] == seq:
                ok = icmp[8:] == payload and _inet_csum(icmp) == 0
                print(f'PING seq={seq} rtt_ms={(time.monotonic() - t0) * 1000:.2f} '
                      f'{"ok" if ok else "bad-reply"}', file=out, flush=True)
                got += ok
                break
        time.sleep(0.1)
    return got


def make_socket(bind):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (getattr(socket, 'SO_RCVBUFFORCE', None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, 32 << 20)
            break
        except OSError:
            pass
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if bind:
        s.bind(addr(bind))
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description='Ferry test guest UDP stream peer')
    ap.add_argument('mode', choices=['send', 'recv', 'both', 'ping'])
    ap.add_argument('--to')
    ap.add_argument('--bind')
    ap.add_argument('--mib', type=int, default=64)
    ap.add_argument('--rx-mib', type=int, default=None)
    ap.add_argument('--rate', type=float, default=0, help='Mbit/s of payload, 0 = flat out')
    ap.add_argument('--size', type=int, default=1400)
    ap.add_argument('--stream', type=lambda x: int(x, 0), default=None)
    ap.add_argument('--count', type=int, default=5)
    ap.add_argument('--timeout', type=float, default=120)
    ap.add_argument('--idle', type=float, default=5, help='stop receiving after this idle time')
    a = ap.parse_args(argv)
    if a.mode == 'ping':
        n = ping(a.to.rpartition(':')[0] or a.to if ':' in a.to else a.to, a.count)
        print(f'UDPSTREAM ping sent={a.count} received={n}')
        return 0 if n == a.count else 1
    stream = a.stream if a.stream is not None else (0x48000000 | (os.getpid() & 0xffffff))
    sock = make_socket(a.bind)
    ok = True
    if a.mode == 'send':
        send(sock, addr(a.to), a.mib, a.rate, a.size, stream)
    elif a.mode == 'recv':
        c = Counter()
        dt = receive(sock, c, a.mib * 2**20, a.timeout, a.idle)
        print(c.line('rx') + f' s={dt:.2f} mbit={c.rx_bytes * 8 / max(dt, 1e-9) / 1e6:.1f}')
        ok = c.corrupt == 0 and c.rx_bytes >= a.mib * 2**20
    else:
        c = Counter()
        want = (a.rx_mib if a.rx_mib is not None else a.mib) * 2**20
        res = {}
        th = threading.Thread(target=lambda: res.update(
            dt=receive(sock, c, want, a.timeout, a.idle)))
        th.start()
        send(sock, addr(a.to), a.mib, a.rate, a.size, stream)
        th.join()
        dt = res.get('dt', 1)
        print(c.line('rx') + f' s={dt:.2f} mbit={c.rx_bytes * 8 / max(dt, 1e-9) / 1e6:.1f}')
        ok = c.corrupt == 0 and c.rx_bytes >= want
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
