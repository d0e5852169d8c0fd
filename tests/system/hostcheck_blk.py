#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Host-side check of the test guest's disk pattern (docs/test-guest.md, "Disk pattern").

Sector s (512 bytes) written with (seed, generation g) holds 64 little-endian
u64 words:
    w[0] = s
    w[1] = (seed mod 2^32) << 32 | (g mod 2^32)
    w[k] = mix(64 s + k, key(seed, g))      k = 2..63
    key(seed, g) = seed * 0x9e3779b97f4a7c15 + g * 0xd6e8feb86659fd93 + 0x632be59bd9b4e019
    mix(a, K)    = x ^ (x >> 29),  x = (a ^ K) * 0x9e3779b97f4a7c15        (all mod 2^64)

Library use:
    sector_bytes(seed, gen, sector) -> bytes
    check_image(path, seed, gens, first_sector, sectors) -> dict of counts

CLI:
    hostcheck_blk.py IMAGE [--seed N] [--gen G | --gen LO-HI] [--mib N] [--offset-sectors N]
Exit status 0 if every checked sector matches, 1 otherwise.
With a generation range (after ferry.blk=loop) each sector may hold any generation
in the range (read from w[1]).
"""

import argparse
import struct
import sys

M64 = (1 << 64) - 1
SECTOR = 512


def key(seed, gen):
    return (seed * 0x9E3779B97F4A7C15 + gen * 0xD6E8FEB86659FD93 + 0x632BE59BD9B4E019) & M64


def mix(a, k):
    x = ((a ^ k) * 0x9E3779B97F4A7C15) & M64
    return x ^ (x >> 29)


def sector_words(seed, gen, sector):
    k = key(seed, gen)
    a = sector * 64
    words = [sector & M64, ((seed & 0xFFFFFFFF) << 32) | (gen & 0xFFFFFFFF)]
    words.extend(mix(a + i, k) for i in range(2, 64))
    return words


def sector_bytes(seed, gen, sector):
    return struct.pack('<64Q', *sector_words(seed, gen, sector))


def check_image(path, seed=1, gens=(1, 1), first_sector=0, sectors=None, max_reports=8,
                out=sys.stdout):
    """Checks `sectors` sectors from `first_sector` (default: to the end of the file).
    gens = (lo, hi): accepted generation range. Returns a dict of counts."""
    lo, hi = gens
    res = {'checked': 0, 'ok': 0, 'zero': 0, 'bad': 0, 'gens': {}}
    zero = bytes(SECTOR)
    with open(path, 'rb') as f:
        f.seek(first_sector * SECTOR)
        s = first_sector
        end = None if sectors is None else first_sector + sectors
        while end is None or s < end:
            n = 2048 if end is None else min(2048, end - s)
            buf = f.read(n * SECTOR)
            if not buf:
                break
            for i in range(len(buf) // SECTOR):
                data = buf[i * SECTOR:(i + 1) * SECTOR]
                sec = s + i
                res['checked'] += 1
                w1 = struct.unpack_from('<Q', data, 8)[0]
                g = w1 & 0xFFFFFFFF
                if not (lo <= g <= hi) or (w1 >> 32) != (seed & 0xFFFFFFFF):
                    g = lo
                if data == sector_bytes(seed, g, sec):
                    res['ok'] += 1
                    res['gens'][g] = res['gens'].get(g, 0) + 1
                    continue
                if data == zero:
                    res['zero'] += 1
                res['bad'] += 1
                if res['bad'] <= max_reports:
                    exp = sector_words(seed, g, sec)
                    got = struct.unpack('<64Q', data)
                    k = next(j for j in range(64) if exp[j] != got[j])
                    print(f'CORRUPTION sector={sec} word={k} expected=0x{exp[k]:016x} '
                          f'found=0x{got[k]:016x} found_sector={got[0]} '
                          f'found_gen={got[1] & 0xFFFFFFFF}', file=out)
            s += len(buf) // SECTOR
            if len(buf) < n * SECTOR:
                break
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('image')
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--gen', default='1', help='G or LO-HI')
    ap.add_argument('--mib', type=int, default=0, help='MiB to check (default: all)')
    ap.add_argument('--offset-sectors', type=int, default=0)
    a = ap.parse_args(argv)
    lo, _, hi = a.gen.partition('-')
    gens = (int(lo), int(hi or lo))
    sectors = a.mib * 2048 if a.mib else None
    r = check_image(a.image, a.seed, gens, a.offset_sectors, sectors)
    gl = ' '.join(f'{g}:{n}' for g, n in sorted(r['gens'].items()))
    print(f"checked={r['checked']} ok={r['ok']} bad={r['bad']} zero={r['zero']} gens={gl}")
    return 0 if r['bad'] == 0 and r['checked'] > 0 else 1


if __name__ == '__main__':
    sys.exit(main())
