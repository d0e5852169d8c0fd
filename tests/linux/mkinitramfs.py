#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Build the tiny initramfs used to boot Debian's stock kernel under test.

The archive is a gzip-compressed cpio in the "newc" format (the format the
kernel unpacks into its rootfs, see the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst).  It holds:

  /bin/busybox   the statically linked busybox from Debian's busybox-static
  /bin/sh        symlink to busybox
  /dev/console   character device 5:1, so the kernel can open the console
                 for /init before devtmpfs is mounted
  /proc /sys /dev /tmp
  /init          shell script: mounts proc/sys/dev, prints a
                 FERRY-GUEST-READY line with the uptime, CPU count and
                 MemTotal, then `poweroff -f`

The archive is written by this script itself (no cpio/fakeroot needed, device
nodes need no privileges), with fixed owners and mtimes, so the output is
reproducible.

Usage: mkinitramfs.py --output PATH [--busybox PATH]
"""

import argparse
import gzip
import io
import os
import stat
import subprocess
import sys

# Printed lines (one per line, machine-readable):
#   FERRY-GUEST-READY uptime_ms=<ms> cpus=<online CPUs> mem_mib=<MemTotal MiB> entry=linux
#   FERRY-LINUX uptime="<raw /proc/uptime>" memtotal_kb=<kB> kernel=<uname -r>
INIT_SCRIPT = r'''#!/bin/busybox sh
# /init of Ferry's Linux test initramfs (tests/linux/mkinitramfs.py)
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
read up idle < /proc/uptime
sec=${up%.*}
frac=${up#*.}
uptime_ms=$(( sec * 1000 + ${frac#0} * 10 ))
cpus=$(grep -c '^processor' /proc/cpuinfo)
memkb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
echo "FERRY-GUEST-READY uptime_ms=$uptime_ms cpus=$cpus mem_mib=$((memkb / 1024)) entry=linux"
echo "FERRY-LINUX uptime=\"$up $idle\" memtotal_kb=$memkb kernel=$(uname -r)"
for w in $(cat /proc/cmdline); do
    case "$w" in
        ferry.shell) exec sh ;;
    esac
done
poweroff -f
# poweroff -f returns only if the machine has no way to power off
echo "FERRY-LINUX poweroff failed"
while :; do sleep 3600; done
'''


def find_static_busybox():
    """Return the path of Debian's busybox-static binary."""
    candidates = []
    try:
        out = subprocess.run(['dpkg', '-L', 'busybox-static'], check=True,
                             text=True, capture_output=True).stdout
        candidates += [l for l in out.splitlines()
                       if l.endswith('/bin/busybox')]
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates += ['/bin/busybox', '/usr/bin/busybox']
    for c in candidates:
        if os.path.isfile(c) and is_static_elf(c):
            return c
    sys.exit('mkinitramfs: no statically linked busybox found '
             '(install Debian package busybox-static)')


def is_static_elf(path):
    """True if PATH is an ELF without a PT_INTERP program header."""
    with open(path, 'rb') as f:
        hdr = f.read(64)
        if hdr[:4] != b'\x7fELF' or hdr[4] != 2:   # 64-bit only
            return False
        phoff = int.from_bytes(hdr[32:40], 'little')
        phentsize = int.from_bytes(hdr[54:56], 'little')
        phnum = int.from_bytes(hdr[56:58], 'little')
        f.seek(phoff)
        for _ in range(phnum):
            ph = f.read(phentsize)
            if int.from_bytes(ph[0:4], 'little') == 3:   # PT_INTERP
                return False
    return True


class NewcWriter:
    """Minimal writer for the SVR4 "newc" cpio format (magic 070701)."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 300000

    def _pad4(self):
        self.buf.write(b'\0' * (-self.buf.tell() % 4))

    def add(self, name, mode, data=b'', rdev=(0, 0), nlink=1):
        self.ino += 1
        name_b = name.encode() + b'\0'
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(name_b), 0]
        self.buf.write(b'070701' + b''.join(b'%08X' % v for v in fields))
        self.buf.write(name_b)
        self._pad4()
        self.buf.write(data)
        self._pad4()

    def dir(self, name, perm=0o755):
        self.add(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self.add(name, stat.S_IFREG | perm, data)

    def symlink(self, name, target):
        self.add(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self.add(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self):
        self.add('TRAILER!!!', 0)
        # Pad the archive to a 512-byte multiple like GNU cpio does.
        self.buf.write(b'\0' * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def build(busybox):
    w = NewcWriter()
    for d in ('bin', 'dev', 'proc', 'sys', 'tmp', 'root', 'etc'):
        w.dir(d)
    w.chardev('dev/console', 5, 1)
    w.chardev('dev/null', 1, 3, 0o666)
    with open(busybox, 'rb') as f:
        w.file('bin/busybox', f.read(), 0o755)
    w.symlink('bin/sh', 'busybox')
    w.file('init', INIT_SCRIPT.encode(), 0o755)
    return w.finish()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--output', required=True, help='initramfs (.cpio.gz)')
    ap.add_argument('--busybox', help='static busybox to include '
                    '(default: from Debian busybox-static)')
    args = ap.parse_args()
    busybox = args.busybox or find_static_busybox()
    if not is_static_elf(busybox):
        sys.exit('mkinitramfs: %s is not a static 64-bit ELF' % busybox)
    data = build(busybox)
    tmp = args.output + '.tmp'
    with open(tmp, 'wb') as raw:
        with gzip.GzipFile(fileobj=raw, mode='wb', mtime=0,
                           compresslevel=9) as gz:
            gz.write(data)
    os.replace(tmp, args.output)


if __name__ == '__main__':
    main()
