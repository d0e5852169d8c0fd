#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Wrap the Ferry test guest payload into a Linux bzImage.

Usage: mkbzimage.py SETUP.bin PAYLOAD.bin OUTPUT

SETUP.bin is the real-mode part (boot/setup16.S): boot sector, setup header at
0x1f1 and the 16-bit setup code. PAYLOAD.bin is the raw protected-mode image
linked at 0x100000 (objcopy -O binary of ferry-guest.elf); at offset 0x1e0 it
carries "FERRYWRP", init_size, kernel_info_offset and its own length.

The output is SETUP padded to whole 512-byte sectors followed by PAYLOAD, with
setup_sects, syssize, init_size and kernel_info_offset filled in as described in
Linux Documentation/arch/x86/boot.rst ("The Real-Mode Kernel Header").
"""

import struct
import sys

SECTOR = 512
ZP_OFFSET = 0x1000          # boot_params offset used by setup16.S


def fail(msg):
    sys.stderr.write("mkbzimage: %s\n" % msg)
    sys.exit(1)


def main(argv):
    if len(argv) != 4:
        fail("usage: mkbzimage.py SETUP.bin PAYLOAD.bin OUTPUT")
    setup = bytearray(open(argv[1], "rb").read())
    payload = bytearray(open(argv[2], "rb").read())

    if len(setup) < 0x26c or setup[0x202:0x206] != b"HdrS" or setup[0x1fe:0x200] != b"\x55\xaa":
        fail("%s has no setup header" % argv[1])
    if len(setup) > ZP_OFFSET:
        fail("setup code (%d bytes) overlaps its boot_params at 0x%x" % (len(setup), ZP_OFFSET))
    if payload[0x1e0:0x1e8] != b"FERRYWRP":
        fail("%s lacks the FERRYWRP block at 0x1e0" % argv[2])
    init_size, kinfo_off, data_len = struct.unpack_from("<III", payload, 0x1e8)
    if data_len != len(payload):
        fail("payload is %d bytes, the image says %d" % (len(payload), data_len))
    if payload[kinfo_off:kinfo_off + 4] != b"LToP":
        fail("kernel_info not found at payload offset 0x%x" % kinfo_off)

    setup_sects = max((len(setup) + SECTOR - 1) // SECTOR - 1, 1)
    setup += bytes((setup_sects + 1) * SECTOR - len(setup))
    payload += bytes(-len(payload) % 16)

    setup[0x1f1] = setup_sects
    struct.pack_into("<I", setup, 0x1f4, len(payload) // 16)        # syssize
    struct.pack_into("<I", setup, 0x260, max(init_size, len(payload)))  # init_size
    struct.pack_into("<I", setup, 0x268, kinfo_off)                 # kernel_info_offset

    with open(argv[3], "wb") as f:
        f.write(setup)
        f.write(payload)


if __name__ == "__main__":
    main(sys.argv)
