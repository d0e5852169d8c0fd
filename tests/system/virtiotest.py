# SPDX-License-Identifier: GPL-2.0-or-later
"""Helpers for the virtio-blk/virtio-net system tests and benchmarks.

Used by test_disk.py, test_net.py, tests/bench/disk and tests/bench/net.
Standard library only.  The guest's lines are described in docs/test-guest.md,
"Virtio devices".

  blk_kv(match) / net_kv(match)    key=value dict of a FERRY-BLK-*/NET-* line
  Netns                            a network namespace with a unique name
  net_tools_missing()              why the network tests cannot run, or None
  qemu_argv(...)                   QEMU -M pc with virtio-blk-pci / virtio-net-pci
  cpu_times(pid)                   (process CPU s, vCPU threads' CPU s)
  CpuMarks                         host CPU time of a process at chosen lines
"""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid

import ferrytest

HERE = os.path.dirname(os.path.abspath(__file__))
UDPSTREAM = os.path.join(HERE, 'udpstream.py')
HOSTCHECK_BLK = os.path.join(HERE, 'hostcheck_blk.py')

# Not anchored: under QEMU -M pc the first guest line follows the firmware's
# output on the same line.
BLK_READY_RE = r'FERRY-BLK-READY (?P<kv>.*)$'
BLK_DONE_RE = r'FERRY-BLK-DONE (?P<kv>.*)$'
BLK_IOERR_RE = r'FERRY-BLK-IOERR (?P<kv>.*)$'
NET_READY_RE = r'FERRY-NET-READY (?P<kv>.*)$'
NET_STATS_RE = r'FERRY-NET-STATS (?P<kv>.*)$'

# Guest lines that mean the exerciser cannot run: fail a wait at once instead
# of timing out.
DEVICE_FAIL_PATTERNS = (
    r'ferry-guest: no usable virtio-(blk|net) device',
    r'ferry-guest: virtio-(blk|net): (queue|no memory)',
    r'ferry-guest: ferry\.(blk|net)',
)
FAIL_PATTERNS = ferrytest.DEFAULT_FAIL_PATTERNS + DEVICE_FAIL_PATTERNS

# -arch-capabilities: QEMU 7.2 fails to start on hosts (like PVM) whose KVM
# does not allow setting MSR_IA32_ARCH_CAPABILITIES.
QEMU_CPU = 'host,-arch-capabilities'

MIB = 1 << 20
SECTOR = 512


def kv(match):
    """The key=value words of a matched line (group 'kv'); values that parse
    as integers (decimal or 0x) become ints."""
    out = {}
    for k, v in ferrytest.parse_kv(match.group('kv')).items():
        try:
            out[k] = int(v, 0)
        except ValueError:
            out[k] = v
    out['line'] = match.string
    return out


def wait_kv(gp, pattern, timeout=ferrytest.BOOT_TIMEOUT, since=None):
    """GuestProcess.wait_for(PATTERN) and return kv() of the match."""
    return kv(gp.wait_for(pattern, timeout, since=since))


def make_image(path, mib):
    """A fresh sparse raw image of MIB MiB (zeros)."""
    with open(path, 'wb') as f:
        f.truncate(mib * MIB)
    return path


# -- host CPU time ------------------------------------------------------------

_TICK = os.sysconf('SC_CLK_TCK')
VCPU_THREAD_RE = re.compile(r'^(vcpu\d+|CPU \d+/KVM)$')


def _stat_times(path):
    """(comm, utime + stime in s) from a /proc/.../stat file."""
    with open(path) as f:
        s = f.read()
    comm = s[s.index('(') + 1:s.rindex(')')]
    rest = s[s.rindex(')') + 2:].split()
    # Fields 14 and 15 (utime, stime) are rest[11] and rest[12].
    return comm, (int(rest[11]) + int(rest[12])) / _TICK


def cpu_times(pid):
    """(whole process CPU s, CPU s of its vCPU threads), utime + stime.

    vCPU threads are ferry-vmm's "vcpuN" and QEMU's "CPU N/KVM".  The process
    figure includes threads that have exited.  Raises OSError once the
    process is gone."""
    _, total = _stat_times('/proc/%d/stat' % pid)
    vcpu = 0.0
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except OSError:
        tids = []
    for tid in tids:
        try:
            comm, t = _stat_times('/proc/%d/task/%s/stat' % (pid, tid))
        except (OSError, ValueError):
            continue
        if VCPU_THREAD_RE.match(comm):
            vcpu += t
    return total, vcpu


class CpuMarks:
    """Samples cpu_times() of a GuestProcess whenever a console line matching
    PATTERN arrives (in the console reader thread, so the sample is taken
    within microseconds of the line).  Install before gp.start().

    marks: list of (line, monotonic time, process CPU s, vCPU CPU s)."""

    def __init__(self, gp, pattern):
        self.gp = gp
        self.rx = re.compile(pattern)
        self.marks = []
        self.lock = threading.Lock()
        orig = gp.console.feed_line

        def feed(line):
            if self.rx.search(line) and gp.proc is not None:
                try:
                    total, vcpu = cpu_times(gp.proc.pid)
                except (OSError, ValueError):
                    total = vcpu = None
                with self.lock:
                    self.marks.append((line, time.monotonic(), total, vcpu))
            orig(line)

        gp.console.feed_line = feed

    def find(self, pattern, after=None):
        """The first mark whose line matches PATTERN (after mark AFTER)."""
        rx = re.compile(pattern)
        with self.lock:
            marks = list(self.marks)
        start = marks.index(after) + 1 if after is not None else 0
        for m in marks[start:]:
            if rx.search(m[0]):
                return m
        return None

    def all(self, pattern):
        rx = re.compile(pattern)
        with self.lock:
            return [m for m in self.marks if rx.search(m[0])]


# -- network namespaces ---------------------------------------------------------

def net_tools_missing():
    """Why network tests cannot run here (a string), or None."""
    if os.geteuid() != 0:
        return 'needs root (network namespaces and TAP devices)'
    if not shutil.which('ip'):
        return 'needs ip(8) (iproute2)'
    if not os.path.exists('/dev/net/tun'):
        return 'needs /dev/net/tun'
    return None


def run(argv, timeout=30, check=True):
    """subprocess.run with text output; raises AssertionError with the output
    on failure when CHECK."""
    r = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, errors='replace',
                       timeout=ferrytest.scaled(timeout))
    if check and r.returncode != 0:
        raise AssertionError('%s: status %d\n%s%s' % (' '.join(r.args), r.returncode,
                                                      r.stdout, r.stderr))
    return r


class Netns:
    """A network namespace with a unique name (PREFIX-<pid>-<random>), lo up.

    delete() removes it (and with it the TAPs and bridges inside, once the
    processes using them have exited); it never fails."""

    def __init__(self, prefix='ferry'):
        self.name = '%s-%d-%s' % (prefix, os.getpid(), uuid.uuid4().hex[:6])
        run(['ip', 'netns', 'add', self.name])
        try:
            self.ip('link', 'set', 'lo', 'up')
        except Exception:
            self.delete()
            raise

    def ip(self, *args, check=True):
        return run(['ip', '-n', self.name] + list(args), check=check)

    def exec_argv(self, argv):
        """ARGV run inside the namespace.  `ip netns exec` execs ARGV in its own
        process, so the pid is ARGV's."""
        return ['ip', 'netns', 'exec', self.name] + [str(a) for a in argv]

    def run(self, argv, timeout=60, check=True):
        return run(self.exec_argv(argv), timeout=timeout, check=check)

    def popen(self, argv, **kw):
        return subprocess.Popen(self.exec_argv(argv), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors='replace', **kw)

    def link_exists(self, ifname):
        return self.ip('link', 'show', 'dev', ifname, check=False).returncode == 0

    def wait_link(self, ifname, timeout=ferrytest.BOOT_TIMEOUT, proc=None):
        """Wait for interface IFNAME to appear; PROC (a GuestProcess) ending
        first fails the wait."""
        deadline = time.monotonic() + ferrytest.scaled(timeout)
        while not self.link_exists(ifname):
            if proc is not None and not proc.running():
                raise ferrytest.GuestError(proc.diagnostics(
                    'exited before creating interface %s' % ifname))
            if time.monotonic() > deadline:
                raise ferrytest.GuestError(
                    'interface %s did not appear in namespace %s within %.0f s'
                    % (ifname, self.name, ferrytest.scaled(timeout)))
            time.sleep(0.05)

    def add_tap(self, ifname):
        self.ip('tuntap', 'add', 'mode', 'tap', 'name', ifname)

    def add_bridge(self, ifname):
        self.ip('link', 'add', 'name', ifname, 'type', 'bridge')
        self.ip('link', 'set', ifname, 'up')

    def enslave(self, ifname, bridge):
        self.ip('link', 'set', ifname, 'master', bridge)

    def address(self, ifname, cidr):
        """Assign CIDR and bring IFNAME up."""
        self.ip('addr', 'add', cidr, 'dev', ifname)
        self.ip('link', 'set', ifname, 'up')

    def up(self, ifname):
        self.ip('link', 'set', ifname, 'up')

    def delete(self):
        subprocess.run(['ip', 'netns', 'delete', self.name], stdin=subprocess.DEVNULL,
                       capture_output=True)


def udpstream_argv(*args):
    return ['/usr/bin/python3', UDPSTREAM] + [str(a) for a in args]


UDPSTREAM_RX_RE = (r'UDPSTREAM rx rx=(?P<rx>\d+) rx_mib=(?P<rx_mib>[\d.]+) '
                   r'lost=(?P<lost>\d+) corrupt=(?P<corrupt>\d+) '
                   r'reorder=(?P<reorder>\d+) s=(?P<s>[\d.]+) mbit=(?P<mbit>[\d.]+)')
UDPSTREAM_PING_RE = r'UDPSTREAM ping sent=(?P<sent>\d+) received=(?P<received>\d+)'


def parse_udpstream(text, pattern):
    """The last line of TEXT matching PATTERN as a dict of numbers, or None."""
    found = None
    for line in text.splitlines():
        m = re.search(pattern, line)
        if m:
            found = {k: float(v) if '.' in v else int(v) for k, v in m.groupdict().items()}
            found['line'] = line
    return found


# -- QEMU ---------------------------------------------------------------------

def qemu_argv(kernel, cmdline, memory_mib=256, cpus=1, disks=(), nets=(),
              qemu='qemu-system-x86_64', cache='writeback'):
    """QEMU -M pc (PCI config mechanism #1, like ferry-vmm) with modern-only
    virtio-blk-pci / virtio-net-pci devices.

    DISKS: dicts with 'path' and optional 'readonly', 'serial'.
    NETS: dicts with 'tap' (an existing TAP name) and optional 'mac'.
    CACHE: QEMU's cache mode for the disks ('writeback' = host page cache,
    'none' = O_DIRECT)."""
    argv = [qemu, '-enable-kvm', '-cpu', QEMU_CPU, '-M', 'pc', '-m', str(memory_mib),
            '-smp', str(cpus), '-nographic', '-nodefaults', '-serial', 'stdio',
            '-no-reboot', '-name', 'ferry-test,debug-threads=on',   # "CPU n/KVM" threads
            '-kernel', kernel, '-append', cmdline]
    for i, d in enumerate(disks):
        drive = 'file=%s,format=raw,if=none,id=d%d,cache=%s' % (d['path'], i, cache)
        if d.get('readonly'):
            drive += ',readonly=on'
        dev = 'virtio-blk-pci,drive=d%d,disable-legacy=on' % i
        if d.get('serial'):
            dev += ',serial=%s' % d['serial']
        argv += ['-drive', drive, '-device', dev]
    for i, n in enumerate(nets):
        argv += ['-netdev', 'tap,id=n%d,ifname=%s,script=no,downscript=no' % (i, n['tap'])]
        dev = 'virtio-net-pci,netdev=n%d,disable-legacy=on' % i
        if n.get('mac'):
            dev += ',mac=%s' % n['mac']
        argv += ['-device', dev]
    return argv


def ferry_argv(vmm, kernel, cmdline, memory_mib=256, cpus=1, disks=(), nets=()):
    """ferry-vmm with the same devices as qemu_argv() (DISKS/NETS the same
    dicts; nets may also carry 'mtu' and 'slot', disks 'slot')."""
    argv = [vmm, '--kernel', kernel, '--cmdline', cmdline, '--memory', '%dM' % memory_mib,
            '--cpus', str(cpus), '--serial', 'stdio']
    for d in disks:
        argv += ['--disk', disk_spec(**d)]
    for n in nets:
        argv += ['--net', net_spec(**n)]
    return argv


def disk_spec(path, readonly=False, serial=None, slot=None):
    s = 'path=%s' % path
    if readonly:
        s += ',readonly=on'
    if serial is not None:
        s += ',serial=%s' % serial
    if slot is not None:
        s += ',slot=%d' % slot
    return s


def net_spec(tap, mac=None, mtu=None, slot=None):
    s = 'tap=%s' % tap
    if mac:
        s += ',mac=%s' % mac
    if mtu:
        s += ',mtu=%d' % mtu
    if slot is not None:
        s += ',slot=%d' % slot
    return s


# -- benchmark tables -----------------------------------------------------------

def ratio(a, b):
    if a is None or b is None or not b:
        return '-'
    return '%.2f' % (a / b)


def fmt(v, digits=1):
    return '-' if v is None else '%.*f' % (digits, v)


def print_table(rows, out=None):
    """ROWS: (test, metric, ferry value, QEMU value, digits); prints the
    values and ferry/QEMU ratios in aligned columns."""
    out = out or sys.stdout
    head = ('test', 'metric', 'ferry-vmm', 'QEMU', 'ferry/QEMU')
    lines = [head] + [(t, m, fmt(f, d), fmt(q, d), ratio(f, q)) for t, m, f, q, d in rows]
    w = [max(len(r[i]) for r in lines) for i in range(5)]
    prev = None
    for r in lines:
        t = r[0] if r[0] != prev else ''
        prev = r[0]
        print('%-*s  %-*s  %*s  %*s  %*s' % (w[0], t, w[1], r[1], w[2], r[2], w[3], r[3],
                                             w[4], r[4]), file=out)
