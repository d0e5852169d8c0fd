# SPDX-License-Identifier: GPL-2.0-or-later
"""System tests: live migration between two ferry-vmm processes (docs/control-api.md,
"Migration"; docs/migration-protocol.md).

Every migration is a source ferry-vmm running the test guest and a destination started
with the same options plus `--incoming defer`; the test asks the destination to listen
(`migrate-receive`, port 0), gives the answered URI to the source (`migrate-send`) and
polls `query-migrate` on the source until the migration ends.  Certificates are made once
per module with contrib/ferry-certs (real x509, certtool) into a temporary directory.

Each test prints the figures it sees: total and set-up time, downtime and switch-over,
bytes sent, rounds, and the largest pause the guest measured around the switch
(the destination's first heartbeats' gap_us).

Suite `system` runs the quick cases (the workload case needs root, ip(8) and /dev/net/tun
like test_net.py and is skipped otherwise); `slow` runs ping-pong, 6 GiB, convergence, the
link cut and post-copy started by the timeout.
"""

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import ferrytest
import hostcheck_blk
import virtiotest
from test_control import Client
from test_net import GUEST_IP, HOST_IP, guest, netns, ping  # noqa: F401 (fixtures)
from test_snapshot import (BLK_MIB, Workload, assert_net_clean, assert_no_ioerr, blk_done,
                           net_stats, quit_vm, start, wait_until)
from virtiotest import MIB, SECTOR

CERTS = os.path.join(ferrytest.REPO_ROOT, 'contrib', 'ferry-certs')
FINAL = ('completed', 'failed', 'cancelled')
# Status order of one migration (docs/control-api.md, query-migrate).
ORDER = ('none', 'setup', 'active', 'completing', 'postcopy-active', 'postcopy-paused',
         'completed', 'failed', 'cancelled')
QUICK = 'ferry.quiet ferry.dirty=32'
LOOPBACK = 'tls:127.0.0.1:0'
# Addresses of the two namespaces of the link-cut case.
VETH_A, VETH_B = '10.78.0.1', '10.78.0.2'
# Seconds a successful migration of a small guest may take at most (scaled).
MIGRATE_TIMEOUT = 180

# A complete heartbeat line (the last line a paused source printed may be cut short:
# the guest's UART output goes on at the destination).
HB_FULL_RE = (r'^FERRY-HEARTBEAT n=(?P<n>\d+) uptime_ms=(?P<uptime_ms>\d+) '
              r'dirtied_mib=(?P<dirtied_mib>\d+) verified_mib=(?P<verified_mib>\d+) '
              r'gap_us=(?P<gap_us>\d+) max_gap_us=(?P<max_gap_us>\d+) cpus=(?P<cpus>\d+)$')


# -- certificates ---------------------------------------------------------------------

def ferry_certs(*args):
    virtiotest.run([CERTS] + [str(a) for a in args], timeout=120)


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
    """TLS directories for --tls-dir: 'good' (this host, trusted by every 'good' peer),
    'other' (a certificate from another CA), 'expired' (the good CA, expired)."""
    if not os.path.isfile(CERTS):
        pytest.fail('%s not found' % CERTS, pytrace=False)
    d = tmp_path_factory.mktemp('certs')
    out = {}
    ferry_certs(d / 'ca', '--ca')
    ferry_certs(d / 'other-ca', '--ca')
    ips = ['--ip', '127.0.0.1', '--ip', VETH_A, '--ip', VETH_B]
    ferry_certs(d / 'good', '--host', 'localhost', *ips, '--ca-dir', d / 'ca')
    ferry_certs(d / 'other', '--host', 'localhost', *ips, '--ca-dir', d / 'other-ca')
    ferry_certs(d / 'expired', '--host', 'localhost', *ips, '--ca-dir', d / 'ca', '--expired')
    for k in ('good', 'other', 'expired'):
        out[k] = str(d / k)
    return out


# -- processes ------------------------------------------------------------------------

class Side:
    """One ferry-vmm of a migration: its Vmm and a control Client."""

    def __init__(self, vm, sock):
        self.vm, self.sock = vm, sock
        self.c = Client(str(sock))

    def call(self, method, **params):
        return self.c.call(method, **params)

    def result(self, method, **params):
        r = self.c.call(method, **params)
        assert 'result' in r, self.vm.diagnostics('%s %s: %s' % (method, params, r))
        return r['result']

    def status(self):
        return self.result('query-status')['status']

    def notes(self):
        """params of every `migration` notification received so far."""
        return [m['params'] for m in self.c.notifications if m.get('method') == 'migration']


class Rig:
    """Source and destinations of one guest; every process is started through spawn_vmm
    (stopped and logged at teardown)."""

    def __init__(self, spawn_vmm, guest, tmp_path, tls_dir, cmdline=QUICK, memory='256M',
                 cpus=2, opts=()):
        self.spawn_vmm, self.guest, self.dir = spawn_vmm, guest, tmp_path
        self.tls_dir, self.cmdline, self.memory, self.cpus = tls_dir, cmdline, memory, cpus
        self.opts = list(opts)
        self.n = 0
        self.sides = []

    def _start(self, extra, ns, memory, tls_dir, opts):
        self.n += 1
        sock = self.dir / ('ctl.%d.sock' % self.n)
        vm = start(self.spawn_vmm, self.guest, self.cmdline,
                   list(self.opts if opts is None else opts)
                   + ['--control-socket', sock, '--tls-dir', tls_dir or self.tls_dir] + extra,
                   ns=ns, memory=memory or self.memory, cpus=self.cpus)
        # fail at once (with its stderr) if ferry-vmm exits instead of listening
        wait_until('the control socket %s' % sock, lambda: os.path.exists(sock), 30, [vm])
        side = Side(vm, sock)
        self.sides.append(side)
        return side

    def source(self, ns=None, opts=None):
        """A running guest with heartbeats and the verifier going."""
        src = self._start([], ns, None, None, opts)
        src.vm.wait_ready()
        src.vm.wait_heartbeat()
        return src

    def destination(self, ns=None, memory=None, tls_dir=None, opts=None, incoming='defer'):
        return self._start(['--incoming', incoming], ns, memory, tls_dir, opts)


def beats(vm):
    """Complete heartbeat lines of VM as dicts of ints."""
    return [{k: int(v) for k, v in m.groupdict().items()} for m in vm.find_all(HB_FULL_RE)]


def receive(dst, uri=LOOPBACK):
    """migrate-receive on DST; returns the URI it listens on."""
    bound = dst.result('migrate-receive', uri=uri)['uri']
    head = uri.rpartition(':')[0]          # scheme and host: only the port changes
    assert bound.startswith(head + ':') and not bound.endswith(':0'), (uri, bound)
    return bound


def send(src, uri, **params):
    """migrate-send; PARAMS with '_' for '-' (max_bandwidth=...)."""
    args = {k.replace('_', '-'): v for k, v in params.items()}
    r = src.call('migrate-send', uri=uri, **args)
    assert 'result' in r and r['result'] is None, src.vm.diagnostics('migrate-send: %s' % r)


def wait_end(src, timeout=MIGRATE_TIMEOUT, procs=None, until=FINAL):
    """Polls query-migrate on SRC until its status is in UNTIL; returns (last answer,
    every answer).  PROCS (default: the source) must stay running and clean."""
    polls = []

    def poll():
        q = src.result('query-migrate')
        polls.append(q)
        return q if q['status'] in until else None

    q = wait_until('migration status %s' % '/'.join(until), poll, timeout,
                   procs if procs is not None else [src.vm])
    return q, polls


def wait_transferred(src, nbytes, procs=None):
    """Waits until a running migration has sent NBYTES; fails if it ended before."""
    def poll():
        q = src.result('query-migrate')
        assert q['status'] not in FINAL, src.vm.diagnostics('migration ended early: %s' % q)
        return q if q['status'] == 'active' and q['ram']['transferred'] >= nbytes else None

    return wait_until('%d bytes sent' % nbytes, poll, 120,
                      procs if procs is not None else [src.vm])


def switch_gap_ms(dst):
    """The largest pause the guest saw around the switch: gap_us of the destination's
    first two heartbeats, in ms."""
    b = beats(dst.vm)[:2]
    return max(h['gap_us'] for h in b) / 1000 if b else None


def report(label, q, dst=None):
    ram = q.get('ram') or {}
    gap = switch_gap_ms(dst) if dst is not None else None
    print('%s: %s, mode %s, total %s ms (setup %s ms), downtime %s ms, switchover %s ms, '
          '%.1f MiB transferred (%s data pages, %s zero pages, bandwidth %.1f MiB/s), '
          '%s rounds, throttle %s %%, guest max heartbeat gap around the switch %s ms%s'
          % (label, q['status'], q.get('mode'), q.get('elapsed-ms'), q.get('setup-ms'),
             q.get('downtime-ms'), q.get('switchover-ms'), ram.get('transferred', 0) / MIB,
             ram.get('data-pages'), ram.get('zero-pages'), (ram.get('bandwidth') or 0) / MIB,
             q.get('iteration'), q.get('throttle-percent'),
             '-' if gap is None else '%.1f' % gap,
             ('; error: %s' % q['error']) if q.get('error') else ''))


def check_order(statuses, what):
    """STATUSES (of notifications) never go back in ORDER."""
    ranks = [ORDER.index(s) for s in statuses]
    assert ranks == sorted(ranks), '%s: statuses out of order: %s' % (what, statuses)


def dedup(xs):
    out = []
    for x in xs:
        if not out or out[-1] != x:
            out.append(x)
    return out


def assert_completed(src, dst, q, label):
    """A completed migration: figures present, source paused, the guest goes on at the
    destination with its heartbeat counter and clock continuing; no corruption."""
    assert q['status'] == 'completed', src.vm.diagnostics('%s: %s' % (label, q))
    for k in ('downtime-ms', 'switchover-ms', 'elapsed-ms'):
        assert isinstance(q.get(k), int) and q[k] >= 0, (k, q)
    assert src.status() == 'paused', q
    last = beats(src.vm)[-1]
    wait_until('two heartbeats at the destination',
               lambda: len([h for h in beats(dst.vm) if h['n'] > last['n']]) >= 2,
               60, [dst.vm])
    d = beats(dst.vm)
    assert d[0]['n'] > last['n'], dst.vm.diagnostics('heartbeat n=%d at the destination after '
                                                     'n=%d at the source'
                                                     % (d[0]['n'], last['n']))
    assert d[-1]['verified_mib'] > last['verified_mib'], (last, d[-1])
    assert not dst.vm.find_all(r'FERRY-GUEST-READY'), dst.vm.diagnostics('the guest rebooted')
    assert dst.status() == 'running'
    for v in (src.vm, dst.vm):
        v.check_no_failures()
    report(label, q, dst)


def assert_uptime_monotonic(sides):
    ups = [h['uptime_ms'] for s in sides for h in beats(s.vm)]
    bad = [(a, b) for a, b in zip(ups, ups[1:]) if b <= a]
    assert not bad, 'the guest clock went backwards: %s in %s' % (bad[:5], ups)


def assert_still_running(src, what):
    """After a failed or cancelled migration the source runs on: status running, two new
    heartbeats with more memory verified, no corruption."""
    st = src.status()
    assert st == 'running', src.vm.diagnostics('%s: source status %s' % (what, st))
    b = beats(src.vm)
    last = b[-1] if b else {'n': 0, 'verified_mib': 0}
    wait_until('new heartbeats at the source after ' + what,
               lambda: [h for h in beats(src.vm) if h['n'] >= last['n'] + 2
                        and h['verified_mib'] > last['verified_mib']], 60, [src.vm])
    src.vm.check_no_failures()


def assert_failed(q, pattern, src):
    assert q['status'] == 'failed', src.vm.diagnostics('expected failed: %s' % q)
    err = q.get('error') or ''
    assert re.search(pattern, err, re.I), src.vm.diagnostics(
        'the error %r does not match /%s/' % (err, pattern))
    print('source error: %s' % err)
    return err


def dest_exit(dst, status=1, pattern=None, timeout=60):
    """Waits for DST to exit with STATUS; PATTERN must occur on its stderr."""
    got = dst.vm.wait_exit(timeout)
    text = '\n'.join(dst.vm.stderr_lines)
    assert got == status, dst.vm.diagnostics('destination: %s, expected exit status %d'
                                             % (ferrytest.describe_status(got), status))
    if pattern:
        assert re.search(pattern, text, re.I), dst.vm.diagnostics(
            'destination stderr does not match /%s/' % pattern)
    assert not dst.vm.find_all(ferrytest.HEARTBEAT_RE), dst.vm.diagnostics(
        'the guest ran at the failed destination')
    print('destination: %s; stderr: %s' % (ferrytest.describe_status(got), text.strip()))
    return text


def quit_side(side):
    quit_vm(side.c, side.vm)


# -- 1. a plain migration over TLS -----------------------------------------------------

def test_migrate_tls_loopback(spawn_vmm, guest, tmp_path, certs):
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    dst = rig.destination()
    uri = receive(dst)
    t0 = time.monotonic()
    send(src, uri)
    q, polls = wait_end(src)
    wall = time.monotonic() - t0
    assert_completed(src, dst, q, 'tls loopback')
    print('wall time from migrate-send to completed seen: %.2f s, %d polls' % (wall, len(polls)))
    assert q['role'] == 'source' and q['mode'] == 'live', q
    assert q['ram']['total'] == 256 * MIB, q
    assert q['ram']['transferred'] > 32 * MIB, q
    assert q['iteration'] >= 1, q
    # Notifications: the same object as query-migrate, every status in order.  The last
    # one may follow the answer that showed the status.
    wait_until('the completed notification',
               lambda: any(n['status'] == 'completed' for n in src.notes()), 10, [src.vm])
    notes = src.notes()
    statuses = dedup([n['status'] for n in notes])
    assert statuses == ['setup', 'active', 'completing', 'completed'], statuses
    assert notes[-1]['status'] == 'completed' and 'downtime-ms' in notes[-1], notes[-1]
    # The destination's view.
    qd = dst.result('query-migrate')
    print('destination: %s' % {k: qd.get(k) for k in ('status', 'role', 'elapsed-ms')})
    assert qd['status'] == 'completed' and qd['role'] == 'destination', qd
    check_order([n['status'] for n in dst.notes()], 'destination notifications')
    quit_side(src)
    dst.vm.wait_heartbeat()
    quit_side(dst)
    for s in (src, dst):
        s.vm.check_no_failures()
    assert_uptime_monotonic([src, dst])


# -- 2. verifier + disk + network ------------------------------------------------------

GUEST_MAC = '52:54:00:a7:05:02'


def test_migrate_workload(spawn_vmm, netns, guest, tmp_path, certs):
    """Memory verifier, disk loop on a shared image and UDP streams both ways.  The
    namespace has a bridge carrying the host's address with one TAP per VMM; the
    migration goes over tls: on the namespace's loopback."""
    netns.add_bridge('fbr0')
    netns.address('fbr0', HOST_IP + '/24')
    for t in ('ftap0', 'ftap1'):
        netns.add_tap(t)
        netns.enslave(t, 'fbr0')
        netns.up(t)
    w = Workload(spawn_vmm, netns, guest, tmp_path, tap='ftap0')
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'], cmdline=w.cmdline)

    def opts(tap):
        return ['--disk', 'path=%s' % w.img, '--net', 'tap=%s,mac=%s' % (tap, GUEST_MAC)]

    try:
        w.start_streams(os.path.join(ferrytest.build_dir(), 'tests', 'system', 'logs',
                                     'migrate_workload-udp-receiver.log'))
        src = rig.source(ns=netns, opts=opts('ftap0'))
        virtiotest.wait_kv(src.vm, virtiotest.BLK_READY_RE, since=0)
        virtiotest.wait_kv(src.vm, virtiotest.NET_READY_RE, since=0)
        ping(netns, src.vm, GUEST_IP, count=2)
        w.progress(src.vm, w.state(src.vm))
        before = w.state(src.vm)
        dst = rig.destination(ns=netns, opts=opts('ftap1'))
        send(src, receive(dst))
        q, _ = wait_end(src, procs=[src.vm, w.rx])
        assert_completed(src, dst, q, 'workload')
        # Everything goes on at the destination: heartbeats, disk passes, NET-STATS
        # counters and the host receiving the guest's stream.
        w.progress(dst.vm, before)
        src_net = net_stats(src.vm)
        mid = w.host_rx()
        w.progress(dst.vm, w.state(dst.vm))
        quit_side(src)
        quit_side(dst)
        for v in (src.vm, dst.vm):
            v.check_no_failures()
            assert_no_ioerr(v)
            assert_net_clean(v)
        assert_uptime_monotonic([src, dst])
        s = net_stats(dst.vm)
        assert s['tx'] > src_net['tx'] and s['rx'] > src_net['rx'], (src_net, s)
        w.rx.check_no_failures()
        rx = w.host_rx()
        assert rx['corrupt'] == 0, rx
        assert rx['rx'] > mid['rx'], (mid, rx)
        print('guest NET-STATS: last at the source %s; at the end %s' % (src_net['line'],
                                                                          s['line']))
        print('datagrams lost around the switch: guest received lost=%d (source had %d); '
              'host received lost=%d of %d' % (s['lost'], src_net['lost'], rx['lost'],
                                               rx['rx'] + rx['lost']))
        print('disk passes: source write %d verify %d, destination write %d verify %d'
              % (blk_done(src.vm, 'write'), blk_done(src.vm, 'verify'),
                 blk_done(dst.vm, 'write'), blk_done(dst.vm, 'verify')))
    finally:
        w.close()
    writes = sum(blk_done(s.vm, 'write') for s in (src, dst))
    r = hostcheck_blk.check_image(str(w.img), gens=(1, writes + 2),
                                  sectors=BLK_MIB * MIB // SECTOR)
    assert r['bad'] == 0 and r['ok'] == BLK_MIB * MIB // SECTOR, r
    print('disk: %d write passes, generations on disk %s' % (writes, sorted(r['gens'])))


# -- 3. ping-pong ------------------------------------------------------------------------

@pytest.mark.slow
def test_migrate_ping_pong(spawn_vmm, guest, tmp_path, certs):
    """10 migrations of one guest, each to a new process; every old source is quit."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    chain = [src]
    for hop in range(10):
        dst = rig.destination()
        send(src, receive(dst))
        q, _ = wait_end(src)
        assert_completed(src, dst, q, 'hop %d' % (hop + 1))
        quit_side(src)
        chain.append(dst)
        src = dst
    src.vm.wait_heartbeat()
    quit_side(src)
    for s in chain:
        s.vm.check_no_failures()
    assert_uptime_monotonic(chain)
    ns = [h['n'] for s in chain for h in beats(s.vm)]
    assert ns == sorted(ns) and len(set(ns)) == len(ns), ns


# -- 4. 6 GiB, working set above 4 GiB ---------------------------------------------------

def mem_available():
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_migrate_6g(spawn_vmm, guest, tmp_path, certs):
    if mem_available() < 14 << 30:
        pytest.skip('needs 14 GiB of MemAvailable (two 6 GiB guests), have %.1f GiB'
                    % (mem_available() / (1 << 30)))
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'],
              cmdline='ferry.quiet ferry.dirty=5000 ferry.rate=100', memory='6G', cpus=4)
    src = rig.source()
    ranges = src.vm.find_all(ferrytest.WORKSET_RE)
    top = max(int(m.group('base'), 16) + int(m.group('size'), 16) for m in ranges)
    assert top > 4 << 30, [m.string for m in ranges]
    # The first pass over the working set is done: all of it holds data.
    wait_until('the working set populated',
               lambda: [h for h in beats(src.vm) if h['dirtied_mib'] >= 5000], 600, [src.vm])
    dst = rig.destination()
    send(src, receive(dst), auto_converge=True)
    q, _ = wait_end(src, timeout=1200)
    assert_completed(src, dst, q, '6 GiB')
    assert q['ram']['transferred'] > 4900 * MIB, q
    quit_side(src)
    dst.vm.wait_heartbeat()
    dst.vm.wait_heartbeat()
    quit_side(dst)
    for s in (src, dst):
        s.vm.check_no_failures()
    assert_uptime_monotonic([src, dst])


# -- 5. convergence ----------------------------------------------------------------------

CONVERGE = 'ferry.quiet ferry.dirty=256 ferry.rate=256'
BW_64M = 64 * MIB


@pytest.mark.slow
def test_migrate_auto_converge(spawn_vmm, guest, tmp_path, certs):
    """The guest dirties 256 MiB/s, the link carries 64 MiB/s: auto-converge throttles the
    vCPUs until it fits."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'], cmdline=CONVERGE, memory='512M')
    src = rig.source()
    dst = rig.destination()
    send(src, receive(dst), max_bandwidth=BW_64M, auto_converge=True)
    q, polls = wait_end(src, timeout=900)
    assert_completed(src, dst, q, 'auto-converge')
    throttle = [n.get('throttle-percent', 0) for n in src.notes()]
    print('throttle-percent over the rounds: %s' % dedup(throttle))
    assert max(throttle) > 0, src.notes()[-3:]
    quit_side(src)
    dst.vm.wait_heartbeat()
    quit_side(dst)
    for s in (src, dst):
        s.vm.check_no_failures()
    assert_uptime_monotonic([src, dst])


@pytest.mark.slow
def test_migrate_no_convergence_timeout(spawn_vmm, guest, tmp_path, certs):
    """Same load without auto-converge or post-copy, timeout 8 s: the migration fails
    saying it did not converge; the VM runs on at the source; the destination exits 1."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'], cmdline=CONVERGE, memory='512M')
    src = rig.source()
    dst = rig.destination()
    t0 = time.monotonic()
    send(src, receive(dst), max_bandwidth=BW_64M, auto_converge=False, postcopy=False,
         timeout=8)
    q, _ = wait_end(src, timeout=300)
    print('ended after %.1f s' % (time.monotonic() - t0))
    report('no convergence', q)
    assert_failed(q, r'converg', src)
    assert_still_running(src, 'the timeout')
    dest_exit(dst)
    quit_side(src)


# -- 6. faults ---------------------------------------------------------------------------

def test_migrate_dest_killed(spawn_vmm, guest, tmp_path, certs):
    """(a) SIGKILL of the destination during pre-copy: the source fails naming the
    connection and runs on; a retry to a new destination succeeds."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    dst = rig.destination()
    send(src, receive(dst), max_bandwidth=8 * MIB)
    wait_transferred(src, 4 * MIB)
    dst.vm.proc.send_signal(signal.SIGKILL)
    q, _ = wait_end(src, timeout=120)
    report('destination killed', q)
    assert_failed(q, r'connection', src)
    assert_still_running(src, 'the failed migration')
    dst2 = rig.destination()
    send(src, receive(dst2), max_bandwidth=0)
    q, _ = wait_end(src)
    assert_completed(src, dst2, q, 'retry')
    quit_side(src)
    quit_side(dst2)
    assert_uptime_monotonic([src, dst2])


@pytest.mark.parametrize('which,pattern', [('other', r'\bCA\b|certificate'),
                                           ('expired', r'expired')], ids=['other-ca', 'expired'])
def test_migrate_bad_certificates(spawn_vmm, guest, tmp_path, certs, which, pattern):
    """(b) The destination's certificates come from another CA, or expired: refused at
    the TLS handshake with a message saying so; the source runs on."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    dst = rig.destination(tls_dir=certs[which])
    send(src, receive(dst))
    q, _ = wait_end(src, timeout=120)
    report('destination certificates: %s' % which, q)
    assert_failed(q, pattern, src)
    assert_still_running(src, 'the refused handshake')
    try:
        status = dst.vm.proc.wait(ferrytest.scaled(30))
    except subprocess.TimeoutExpired:
        status = None
    print('destination after the refused handshake: %s; stderr: %s'
          % (ferrytest.describe_status(status), ' | '.join(dst.vm.stderr_lines)))
    assert not dst.vm.find_all(ferrytest.HEARTBEAT_RE)
    quit_side(src)


def test_migrate_hostname_mismatch(spawn_vmm, guest, tmp_path, certs):
    """(c) tls-hostname names another host than the destination's certificate."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    dst = rig.destination()
    send(src, receive(dst), tls_hostname='other.example')
    q, _ = wait_end(src, timeout=120)
    report('tls-hostname other.example', q)
    assert_failed(q, r'other\.example', src)
    assert_still_running(src, 'the refused handshake')
    quit_side(src)


def test_migrate_config_mismatch(spawn_vmm, guest, tmp_path, certs):
    """(d) The destination has 512 MiB, the source 256: the source's error names memory;
    the destination exits 1."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    dst = rig.destination(memory='512M')
    send(src, receive(dst))
    q, _ = wait_end(src, timeout=120)
    report('memory mismatch', q)
    err = assert_failed(q, r'memory', src)
    assert re.search(r'256 MiB', err) and re.search(r'512 MiB', err), err
    assert_still_running(src, 'the refused configuration')
    dest_exit(dst, pattern=r'memory')
    quit_side(src)


def record_types(data):
    """Types of the records in DATA, a state stream (docs/migration-protocol.md)."""
    types, pos = [], 16
    while pos + 16 <= len(data):
        t, _, length = struct.unpack_from('<HHI', data, pos)
        types.append(t)
        pos += 16 + length
    return types


class FlipProxy:
    """A TCP proxy on 127.0.0.1 to UPSTREAM (host, port) that flips one bit of byte AT of
    everything it forwards towards UPSTREAM (over all connections, in order; AT None: no
    flip).  cut() breaks every connection at once, as a failed link or middlebox would.

    It ends a connection as the upstream end would: what upstream sends back is relayed
    first; when upstream stops taking data the client's socket is closed while the
    client is still sending (so the client gets a reset, as from a process that exited)."""

    def __init__(self, upstream, at):
        self.upstream, self.at = upstream, at
        self.forwarded = 0
        self.returned = bytearray()    # what upstream sent back to the client
        self.flipped = None
        self.lock = threading.Lock()
        self.socks = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name='flip-proxy').start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(a,), daemon=True).start()

    def _connection(self, a):
        try:
            b = socket.create_connection(self.upstream)
        except OSError:
            a.close()
            return
        self.socks += [a, b]
        back = threading.Thread(target=self._backward, args=(b, a), daemon=True)
        back.start()
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    b.shutdown(socket.SHUT_WR)
                    break
                with self.lock:
                    start = self.forwarded
                    self.forwarded += len(data)
                    if (self.flipped is None and self.at is not None
                            and start <= self.at < self.forwarded):
                        data = bytearray(data)
                        data[self.at - start] ^= 0x10
                        self.flipped = self.at
                b.sendall(data)
        except OSError:
            pass
        back.join(ferrytest.scaled(10))
        a.close()
        b.close()

    def _backward(self, b, a):
        try:
            while True:
                data = b.recv(65536)
                if not data:
                    break
                a.sendall(data)
                with self.lock:
                    self.returned += data
            a.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self):
        """Resets every connection both ways (RST to both ends) and takes no new ones."""
        for s in [self.lsock] + self.socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                s.shutdown(socket.SHUT_RDWR)     # wakes the relay threads blocked in recv
            except OSError:
                pass
        self.close()

    def close(self):
        for s in [self.lsock] + self.socks:
            try:
                s.close()
            except OSError:
                pass


def test_migrate_stream_corrupted(spawn_vmm, guest, tmp_path, certs):
    """(e) Plain tcp: through a proxy that flips one bit after 4 MiB: the destination
    refuses the stream with a checksum error and exits 1; the source fails and runs on."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    dst = rig.destination()
    bound = receive(dst, 'tcp:127.0.0.1:0')
    port = int(bound.rsplit(':', 1)[1])
    proxy = FlipProxy(('127.0.0.1', port), 4 * MIB + 12345)
    try:
        send(src, 'tcp:127.0.0.1:%d' % proxy.port)
        q, _ = wait_end(src, timeout=120)
        report('corrupted stream', q)
        print('proxy: forwarded %d bytes, flipped byte %s, returned %d bytes: records %s'
              % (proxy.forwarded, proxy.flipped, len(proxy.returned),
                 record_types(bytes(proxy.returned))))
        assert proxy.flipped is not None, 'the stream was shorter than 4 MiB'
        assert q['status'] == 'failed', q
        dest_exit(dst, pattern=r'checksum|crc')
        assert_still_running(src, 'the corrupted stream')
        # The destination said why on the return path (a STATUS record): the source's
        # error must say so too, not only that the connection broke.
        assert_failed(q, r'checksum|crc', src)
    finally:
        proxy.close()
    quit_side(src)


def test_migrate_cancel(spawn_vmm, guest, tmp_path, certs):
    """(f) migrate-cancel during a slow pre-copy: cancelled, the VM runs on, the
    destination gives up."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    dst = rig.destination()
    send(src, receive(dst), max_bandwidth=8 * MIB)
    wait_transferred(src, 2 * MIB)
    assert src.result('migrate-cancel') is None
    q, _ = wait_end(src, timeout=60)
    report('cancel', q)
    assert q['status'] == 'cancelled', q
    statuses = dedup([n['status'] for n in src.notes()])
    assert statuses[-1] == 'cancelled', statuses
    check_order(statuses, 'source notifications')
    assert_still_running(src, 'migrate-cancel')
    dest_exit(dst)
    quit_side(src)


@pytest.mark.slow
def test_migrate_link_cut(spawn_vmm, guest, tmp_path, certs, request):
    """(g) Source in namespace A, destination in B, tls: over a veth pair; the link goes
    down during pre-copy: the source fails on its own and runs on; with the link up again
    a retry to a new destination succeeds."""
    why = virtiotest.net_tools_missing()
    if why:
        pytest.skip(why)
    a = virtiotest.Netns('ferrymiga')
    request.addfinalizer(a.delete)
    b = virtiotest.Netns('ferrymigb')
    request.addfinalizer(b.delete)
    a.ip('link', 'add', 'fva', 'type', 'veth', 'peer', 'name', 'fvb')
    a.ip('link', 'set', 'fvb', 'netns', b.name)
    a.address('fva', VETH_A + '/24')
    b.address('fvb', VETH_B + '/24')
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source(ns=a)
    dst = rig.destination(ns=b)
    send(src, receive(dst, 'tls:%s:0' % VETH_B), max_bandwidth=4 * MIB)
    wait_transferred(src, 2 * MIB)
    a.ip('link', 'set', 'fva', 'down')
    t0 = time.monotonic()
    q, _ = wait_end(src, timeout=300)
    print('the source noticed the cut after %.1f s' % (time.monotonic() - t0))
    report('link cut', q)
    assert_failed(q, r'connection|timed out|time', src)
    assert_still_running(src, 'the link cut')
    a.ip('link', 'set', 'fva', 'up')
    try:
        status = dst.vm.proc.wait(ferrytest.scaled(120))
    except subprocess.TimeoutExpired:
        status = None
    print('first destination: %s' % ferrytest.describe_status(status))
    dst2 = rig.destination(ns=b)
    send(src, receive(dst2, 'tls:%s:0' % VETH_B), max_bandwidth=0)
    q, _ = wait_end(src)
    assert_completed(src, dst2, q, 'retry after the link cut')
    quit_side(src)
    quit_side(dst2)
    assert_uptime_monotonic([src, dst2])


def test_migrate_warm(spawn_vmm, guest, tmp_path, certs):
    """(h) Warm mode: the VM is paused for the whole transfer (no heartbeat at the source
    once paused; the guest sees the transfer as one gap) and completes."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    dst = rig.destination()
    send(src, receive(dst), mode='warm', max_bandwidth=8 * MIB)
    wait_until('the source paused', lambda: src.status() == 'paused', 30, [src.vm])
    mark = len(src.vm.console.snapshot())
    q, polls = wait_end(src)
    late = [l for l in src.vm.console.snapshot()[mark:] if 'FERRY-HEARTBEAT' in l]
    assert not late, src.vm.diagnostics('heartbeats while paused for warm migration: %s'
                                        % late)
    assert q['mode'] == 'warm', q
    assert_completed(src, dst, q, 'warm')
    gap = beats(dst.vm)[0]['gap_us']
    secs = q['ram']['transferred'] / (8 * MIB)
    print('transfer %.1f MiB at most 8 MiB/s: >= %.1f s; guest gap %.2f s'
          % (q['ram']['transferred'] / MIB, secs, gap / 1e6))
    assert secs >= 2 and gap >= 1_000_000, (secs, gap)
    quit_side(src)
    quit_side(dst)
    assert_uptime_monotonic([src, dst])


# -- 7. post-copy --------------------------------------------------------------------------

BW_16M = 16 * MIB


def wait_status(side, statuses, what, timeout=60, procs=None):
    """Polls query-migrate on SIDE until its status is one of STATUSES; returns the answer.
    Fails at once if the migration ends in another final status."""
    def poll():
        q = side.result('query-migrate')
        assert q['status'] in statuses or q['status'] not in FINAL, side.vm.diagnostics(
            'waiting for %s (%s), the migration ended: %s' % ('/'.join(statuses), what, q))
        return q if q['status'] in statuses else None

    return wait_until('%s: status %s' % (what, '/'.join(statuses)), poll, timeout,
                      procs if procs is not None else [side.vm])


def start_postcopy(src, dst):
    """Once pre-copy has finished round 0 (status active, iteration >= 1), asks for post-copy
    and waits until the source is in it.  Returns the pre-copy answer it acted on."""
    def precopy_round_1():
        q = src.result('query-migrate')
        assert q['status'] not in FINAL + ('postcopy-active',), src.vm.diagnostics(
            'the migration left pre-copy before migrate-start-postcopy: %s' % q)
        return q if q['status'] == 'active' and q['iteration'] >= 1 else None

    q = wait_until('pre-copy round 1', precopy_round_1, 120, [src.vm, dst.vm])
    assert src.result('migrate-start-postcopy') is None
    wait_status(src, ('postcopy-active',), 'after migrate-start-postcopy', 120,
                [src.vm, dst.vm])
    return q


def postcopy_requests(src, q):
    """The largest postcopy-requests of Q and of the source's notifications."""
    return max([q.get('postcopy-requests', 0)]
               + [n.get('postcopy-requests', 0) for n in src.notes()])


def assert_postcopy_completed(src, dst, q, label):
    """A migration that went through post-copy completed on both sides; the guest goes on at
    the destination (assert_completed) after faulting pages in."""
    statuses = dedup([n['status'] for n in src.notes()])
    assert 'postcopy-active' in statuses, statuses
    assert 'completing' not in statuses, statuses     # no stop-and-copy: post-copy finished
    assert_completed(src, dst, q, label)
    reqs = postcopy_requests(src, q)
    qd = dst.result('query-migrate')
    print('%s: source statuses %s; postcopy-requests %d (source), %s (destination); '
          'destination %s after %s ms'
          % (label, statuses, reqs, qd.get('postcopy-requests'), qd['status'],
             qd.get('elapsed-ms')))
    assert qd['status'] == 'completed' and qd['role'] == 'destination', qd
    assert reqs > 0, src.vm.diagnostics('post-copy completed without a page request: %s' % q)
    return statuses


def test_migrate_postcopy(spawn_vmm, guest, tmp_path, certs):
    """1 GiB guest dirtying 256 MiB/s over a 64 MiB/s link (pre-copy alone never ends):
    migrate-start-postcopy after round 0; the guest runs on at the destination while the
    pages it lacks come on request; no corruption on either side."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'], cmdline=CONVERGE, memory='1G')
    src = rig.source()
    dst = rig.destination()
    t0 = time.monotonic()
    send(src, receive(dst), max_bandwidth=BW_64M, postcopy=True)
    pre = start_postcopy(src, dst)
    t1 = time.monotonic()
    q, _ = wait_end(src, procs=[src.vm, dst.vm])
    print('migrate-start-postcopy after %.1f s (round %d, %.1f MiB sent); post-copy to '
          'completed seen %.1f s'
          % (t1 - t0, pre['iteration'], pre['ram']['transferred'] / MIB, time.monotonic() - t1))
    assert_postcopy_completed(src, dst, q, 'post-copy')
    check_order([n['status'] for n in src.notes()], 'source notifications')
    check_order([n['status'] for n in dst.notes()], 'destination notifications')
    quit_side(src)
    dst.vm.wait_heartbeat()
    quit_side(dst)
    for s in (src, dst):
        s.vm.check_no_failures()
    assert_uptime_monotonic([src, dst])


@pytest.mark.slow
def test_migrate_postcopy_timeout(spawn_vmm, guest, tmp_path, certs):
    """The no-convergence load with postcopy true and timeout-action postcopy: after 8 s
    the migration switches to post-copy by itself and completes."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'], cmdline=CONVERGE, memory='512M')
    src = rig.source()
    dst = rig.destination()
    t0 = time.monotonic()
    send(src, receive(dst), max_bandwidth=BW_64M, auto_converge=False, postcopy=True,
         timeout=8, timeout_action='postcopy')
    q, _ = wait_end(src, timeout=300, procs=[src.vm, dst.vm])
    print('ended after %.1f s' % (time.monotonic() - t0))
    assert_postcopy_completed(src, dst, q, 'post-copy on timeout')
    assert q['parameters']['timeout-action'] == 'postcopy', q['parameters']
    quit_side(src)
    dst.vm.wait_heartbeat()
    quit_side(dst)
    for s in (src, dst):
        s.vm.check_no_failures()
    assert_uptime_monotonic([src, dst])


def test_migrate_postcopy_recover(spawn_vmm, guest, tmp_path, certs):
    """Plain tcp: through a proxy; in post-copy (slowed to 16 MiB/s) the proxy resets the
    connection: both sides go to postcopy-paused, the source's error says to use
    migrate-recover; recovery over a new direct tls: connection completes the migration."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'], cmdline=CONVERGE, memory='1G')
    src = rig.source()
    dst = rig.destination()
    bound = receive(dst, 'tcp:127.0.0.1:0')
    proxy = FlipProxy(('127.0.0.1', int(bound.rsplit(':', 1)[1])), None)
    try:
        send(src, 'tcp:127.0.0.1:%d' % proxy.port, max_bandwidth=BW_64M, postcopy=True)
        start_postcopy(src, dst)
        src.result('migrate-set-parameters', **{'max-bandwidth': BW_16M})
        q0 = src.result('query-migrate')

        def postcopy_traffic():
            q = src.result('query-migrate')
            assert q['status'] == 'postcopy-active', src.vm.diagnostics(
                'post-copy ended before the cut: %s' % q)
            return q['ram']['transferred'] >= q0['ram']['transferred'] + 2 * MIB

        # Some post-copy traffic through the proxy, then the cut.
        wait_until('2 MiB sent in post-copy', postcopy_traffic, 60, [src.vm, dst.vm])
        wait_status(dst, ('postcopy-active',), 'destination in post-copy', 30, [dst.vm])
        before = proxy.forwarded
        proxy.cut()
        t0 = time.monotonic()
    finally:
        proxy.close()
    qs = wait_status(src, ('postcopy-paused',), 'source after the cut', 15, [src.vm, dst.vm])
    qd = wait_status(dst, ('postcopy-paused',), 'destination after the cut', 15,
                     [src.vm, dst.vm])
    print('cut after %.1f MiB through the proxy; both sides postcopy-paused after %.1f s; '
          'source error: %s; destination error: %s'
          % (before / MIB, time.monotonic() - t0, qs.get('error'), qd.get('error')))
    assert re.search(r'migrate-recover', qs.get('error') or ''), qs
    assert src.status() == 'paused', qs
    # A recovery to where nobody listens fails and leaves post-copy paused.
    with socket.socket() as free:
        free.bind(('127.0.0.1', 0))
        nobody = 'tls:127.0.0.1:%d' % free.getsockname()[1]
    src.result('migrate-recover', uri=nobody)
    qs = wait_until('the failed recovery reported',
                    lambda: (lambda q: q if 'recovery on' in (q.get('error') or '') else None)(
                        src.result('query-migrate')), 30, [src.vm, dst.vm])
    print('recovery to %s: %s: %s' % (nobody, qs['status'], qs['error']))
    assert qs['status'] == 'postcopy-paused' and nobody in qs['error'], qs
    # Recovery: the destination listens first, the source connects there.
    again = dst.result('migrate-recover', uri=LOOPBACK)['uri']
    assert again.startswith('tls:127.0.0.1:') and not again.endswith(':0'), again
    src.result('migrate-set-parameters', **{'max-bandwidth': 0})
    assert 'uri' in src.result('migrate-recover', uri=again)
    q, _ = wait_end(src, procs=[src.vm, dst.vm])
    statuses = assert_postcopy_completed(src, dst, q, 'post-copy recovered')
    assert statuses[-3:] == ['postcopy-paused', 'postcopy-active', 'completed'], statuses
    dstat = dedup([n['status'] for n in dst.notes()])
    print('destination statuses: %s' % dstat)
    assert 'postcopy-paused' in dstat, dstat
    quit_side(src)
    dst.vm.wait_heartbeat()
    quit_side(dst)
    for s in (src, dst):
        s.vm.check_no_failures()
    assert_uptime_monotonic([src, dst])


def test_migrate_postcopy_not_allowed(spawn_vmm, guest, tmp_path, certs):
    """migrate-start-postcopy without a migration, and during one without postcopy true:
    JSON-RPC errors naming post-copy; the pre-copy goes on and completes."""
    rig = Rig(spawn_vmm, guest, tmp_path, certs['good'])
    src = rig.source()
    r = src.call('migrate-start-postcopy')
    print('migrate-start-postcopy with no migration: %s' % r)
    assert 'error' in r and re.search(r'post-copy|postcopy', r['error']['message']), r
    r = src.call('migrate-recover', uri=LOOPBACK)
    print('migrate-recover with no migration: %s' % r)
    assert 'error' in r and re.search(r'postcopy-paused', r['error']['message']), r
    dst = rig.destination()
    send(src, receive(dst), max_bandwidth=8 * MIB, postcopy=False)
    wait_transferred(src, 2 * MIB, procs=[src.vm, dst.vm])
    r = src.call('migrate-start-postcopy')
    print('migrate-start-postcopy with postcopy false: %s' % r)
    assert 'error' in r, r
    assert re.search(r'"postcopy"', r['error']['message']), r
    q = src.result('query-migrate')
    assert q['status'] == 'active', q
    src.result('migrate-set-parameters', **{'max-bandwidth': 0})
    q, _ = wait_end(src, procs=[src.vm, dst.vm])
    wait_until('the completed notification',
               lambda: any(n['status'] == 'completed' for n in src.notes()), 10, [src.vm])
    statuses = dedup([n['status'] for n in src.notes()])
    assert statuses == ['setup', 'active', 'completing', 'completed'], statuses
    assert q['postcopy-requests'] == 0, q
    assert_completed(src, dst, q, 'pre-copy after the refused migrate-start-postcopy')
    quit_side(src)
    quit_side(dst)
    assert_uptime_monotonic([src, dst])
