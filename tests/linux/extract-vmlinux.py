#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Extract the uncompressed vmlinux (an ELF) from a bzImage.

A bzImage carries the kernel proper as a compressed payload that its
decompressor stub unpacks at boot (Documentation/arch/x86/boot.rst,
"payload_offset"/"payload_length" in the setup header, boot protocol >= 2.08).
Debian's kernel uses xz.  The extracted vmlinux keeps its ELF notes; with
CONFIG_PVH=y (Debian: yes) it has the XEN_ELFNOTE_PHYS32_ENTRY note and can be
booted through the PVH entry point, which skips the decompressor.  That
matters where guest kernel code is emulated (software PVM): xz-decompressing
~30 MB at a few million instructions per second takes many minutes.

Usage: extract-vmlinux.py BZIMAGE OUTPUT
"""

import lzma
import os
import struct
import sys
import zlib


def payload(bz):
    """Return the compressed payload bytes of bzImage contents BZ."""
    if bz[0x202:0x206] != b'HdrS':
        sys.exit('extract-vmlinux: not a bzImage (no HdrS signature)')
    version = struct.unpack_from('<H', bz, 0x206)[0]
    if version < 0x208:
        sys.exit('extract-vmlinux: boot protocol %#x has no payload fields'
                 % version)
    setup_sects = bz[0x1f1] or 4
    offset, length = struct.unpack_from('<II', bz, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return bz[start:start + length]


def decompress(data):
    if data.startswith(b'\xfd7zXZ\x00'):
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        return d.decompress(data)
    if data.startswith(b'\x1f\x8b'):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return d.decompress(data)
    if data.startswith(b'\x5d\x00\x00'):
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    sys.exit('extract-vmlinux: unsupported payload compression (magic %s); '
             'only xz, gzip and lzma are handled' % data[:6].hex())


def main():
    if len(sys.argv) != 3:
        sys.exit('usage: extract-vmlinux.py BZIMAGE OUTPUT')
    with open(sys.argv[1], 'rb') as f:
        bz = f.read()
    elf = decompress(payload(bz))
    if elf[:4] != b'\x7fELF':
        sys.exit('extract-vmlinux: payload did not decompress to an ELF')
    tmp = sys.argv[2] + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(elf)
    os.replace(tmp, sys.argv[2])


if __name__ == '__main__':
    main()
