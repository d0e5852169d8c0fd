# SPDX-License-Identifier: GPL-2.0-or-later
"""System tests: pause/resume, `save` (control API) and `ferry-vmm --restore`
(docs/control-api.md, docs/migration-protocol.md).

The round trip runs the test guest's memory verifier on 2 vCPUs together with
the disk exerciser (ferry.blk=loop on a raw image) and a UDP stream in both
directions on a TAP in a network namespace; it needs root, ip(8) and
/dev/net/tun like test_net.py and is skipped otherwise.  Every restore is a
new ferry-vmm process started from the previous one's save file.

Suite `system` runs the tests not marked slow; the 5-round trip is in `slow`.
"""

import os
import re
import time

import pytest

import ferrytest
import hostcheck_blk
import virtiotest
from test_control import Client
from test_errors import RUNTIME_ERROR, check_refused
from test_net import GUEST_IP, HOST_IP, host_tap, netns, ping  # noqa: F401 (fixture)
from virtiotest import BLK_DONE_RE, BLK_IOERR_RE, MIB, NET_STATS_RE, SECTOR

GUEST_PORT = 5201          # the guest checks the host's stream arriving here
HOST_PORT = 5311           # the host receives the guest's stream here
STREAM_MBIT = 40           # each direction; low enough for a busy 2-CPU host
BLK_MIB = 8                # disk area the exerciser loops over

# Receives the guest's UDP stream inside the namespace and prints the
# udpstream.Counter line twice a second, so the test sees it progress (and
# udpstream's CORRUPTION lines at once).  argv: bind address.
RECEIVER = r'''
import socket, sys, time
sys.path.insert(0, %r)
import udpstream
s = udpstream.make_socket(sys.argv[1])
s.settimeout(0.1)
c = udpstream.Counter()
last = 0.0
while True:
    try:
        c.add(s.recv(65536), report=lambda line: print(line, flush=True))
    except socket.timeout:
        pass
    if time.monotonic() - last >= 0.5:
        last = time.monotonic()
        print(c.line('rx'), flush=True)
''' % os.path.dirname(os.path.abspath(__file__))
RX_LINE_RE = (r'^UDPSTREAM rx rx=(?P<rx>\d+) rx_mib=(?P<rx_mib>[\d.]+) lost=(?P<lost>\d+) '
              r'corrupt=(?P<corrupt>\d+) reorder=(?P<reorder>\d+)')


@pytest.fixture
def guest():
    path = ferrytest.guest_elf_path()
    if not os.path.isfile(path):
        pytest.fail('test guest not found at %s' % path, pytrace=False)
    return path


def heartbeats(vm):
    """(n, uptime_ms, verified_mib, cpus) of every complete heartbeat line VM printed."""
    return [(int(d['n']), int(d['uptime_ms']), int(d['verified_mib']), int(d['cpus']))
            for d in (ferrytest.parse_kv(m.group('kv'))
                      for m in vm.find_all(ferrytest.HEARTBEAT_RE))]


def start(spawn_vmm, guest, cmdline, opts, ns=None, restore=None, memory='256M', cpus=2):
    """ferry-vmm with OPTS (inside namespace NS if given), from RESTORE if given."""
    extra = list(opts) + (['--restore', str(restore)] if restore else [])
    vm = spawn_vmm(guest, start=False, cmdline=cmdline, memory=memory, cpus=cpus,
                   extra=extra)
    if ns is not None:
        vm.argv = ns.exec_argv(vm.argv)
    vm.fail_patterns = list(virtiotest.FAIL_PATTERNS)
    vm.start()
    return vm


def save(client, path):
    """save PATH; checks the result against the file and returns it."""
    r = client.call('save', path=str(path))
    assert 'result' in r, r
    res = r['result']
    assert set(res) == {'bytes', 'ram_pages', 'zero_pages', 'ms'}, res
    assert res['bytes'] == os.path.getsize(path), (res, os.path.getsize(path))
    assert client.call('query-status')['result']['status'] == 'paused'
    return res


def quit_vm(client, vm):
    assert client.call('quit')['result'] is None
    client.close()
    status = vm.wait_exit(ferrytest.STOP_TIMEOUT)
    assert status == 0, vm.diagnostics('quit: ' + ferrytest.describe_status(status))


def assert_no_ioerr(vm):
    errs = vm.find_all(BLK_IOERR_RE)
    assert not errs, vm.diagnostics('I/O error: ' + errs[0].string)


def assert_net_clean(vm):
    for m in vm.find_all(NET_STATS_RE):
        assert virtiotest.kv(m)['corrupt'] == 0, vm.diagnostics('corrupt datagrams: '
                                                                + m.string)


def wait_until(what, cond, timeout, procs):
    """Poll COND() until true; PROCS (GuestProcesses) must stay running and
    clean meanwhile."""
    deadline = time.monotonic() + ferrytest.scaled(timeout)
    while True:
        v = cond()
        if v:
            return v
        for p in procs:
            p.check_no_failures()
            if not p.running():
                raise ferrytest.GuestError(p.diagnostics('exited while waiting for ' + what))
        if time.monotonic() > deadline:
            raise ferrytest.GuestError(procs[0].diagnostics('timed out waiting for ' + what))
        time.sleep(0.1)


def last_kv(proc, pattern, conv=int):
    hits = proc.find_all(pattern)
    if not hits:
        return None
    return {k: conv(v) for k, v in hits[-1].groupdict().items() if v is not None}


def net_stats(vm):
    hits = vm.find_all(NET_STATS_RE)
    return virtiotest.kv(hits[-1]) if hits else None


def blk_done(vm, mode):
    # .get: a VM stopped mid-line leaves a cut last line ('FERRY-BLK-DONE mo')
    return sum(1 for m in vm.find_all(BLK_DONE_RE)
               if ferrytest.parse_kv(m.group('kv')).get('mode') == mode)


# -- pause / resume --------------------------------------------------------------

def test_pause_resume(spawn_vmm, guest, tmp_path):
    """2 vCPUs verifying memory: no heartbeat during a 2 s pause, heartbeats
    again after resume with the pause visible as a gap, no corruption."""
    sock = tmp_path / 'ctl.sock'
    vm = start(spawn_vmm, guest, 'ferry.quiet ferry.dirty=32', ['--control-socket', sock])
    vm.wait_ready()
    c = Client(str(sock))
    vm.wait_heartbeat()
    for _ in range(2):
        assert c.call('pause')['result'] is None
        assert c.call('query-status')['result']['status'] == 'paused'
        mark = len(vm.console.snapshot())
        time.sleep(2)
        during = [l for l in vm.console.snapshot()[mark:] if 'FERRY-HEARTBEAT' in l]
        assert not during, vm.diagnostics('heartbeat while paused: %s' % during)
        assert c.call('resume')['result'] is None
        assert c.call('query-status')['result']['status'] == 'running'
        hb = vm.wait_heartbeat()
        assert hb['gap_us'] >= 1_500_000, hb['line']
        hb = vm.wait_heartbeat()
        assert hb['cpus'] == 2, hb['line']
    states = [m['params']['status'] for m in c.notifications
              if m.get('method') == 'state-changed']
    assert states == ['paused', 'running'] * 2, states
    vm.check_no_failures()
    quit_vm(c, vm)


# -- save / restore round trip ------------------------------------------------

class Workload:
    """One guest with the memory verifier, the disk loop and the UDP streams,
    saved and restored in new processes."""

    def __init__(self, spawn_vmm, ns, guest, tmp_path, tap=None):
        """TAP: an existing interface in NS to use instead of a new host_tap()."""
        self.spawn_vmm, self.ns, self.guest, self.dir = spawn_vmm, ns, guest, tmp_path
        self.sock = tmp_path / 'ctl.sock'
        self.img = virtiotest.make_image(tmp_path / 'disk.img', 16)
        self.tap = tap or host_tap(ns)
        self.cmdline = ('ferry.quiet ferry.dirty=32 '
                        'ferry.blk=loop ferry.blk.mib=%d ferry.blk.req=256 ferry.blk.qd=8 '
                        'ferry.net.ip=%s/24 ferry.net.peer=%s:%d ferry.net.rate=%d'
                        % (BLK_MIB, GUEST_IP, HOST_IP, HOST_PORT, STREAM_MBIT))
        self.opts = ['--disk', 'path=%s' % self.img, '--net', 'tap=%s' % self.tap,
                     '--control-socket', self.sock]
        self.vms = []
        self.rx = None
        self.tx = None

    def start_vm(self, restore=None):
        vm = start(self.spawn_vmm, self.guest, self.cmdline, self.opts, self.ns, restore)
        self.vms.append(vm)
        return vm

    def start_streams(self, log_path):
        self.rx = ferrytest.GuestProcess(
            self.ns.exec_argv(['/usr/bin/python3', '-u', '-c', RECEIVER,
                               '%s:%d' % (HOST_IP, HOST_PORT)]),
            name='udp-receiver', log_path=log_path)
        self.rx.fail_patterns = [r'CORRUPTION']
        self.rx.start()
        # One sender for the whole test: one stream id, its sequence runs on
        # across every save and restore.
        self.tx = self.ns.popen(virtiotest.udpstream_argv(
            'send', '--to', '%s:%d' % (GUEST_IP, GUEST_PORT), '--mib', 1 << 20,
            '--rate', STREAM_MBIT))

    def host_rx(self):
        d = last_kv(self.rx, RX_LINE_RE, float)
        return d or {'rx': 0, 'corrupt': 0}

    def progress(self, vm, before, timeout=90):
        """Wait until VM shows two heartbeats past BEFORE (a state()), the
        second with more memory verified and both vCPUs busy; guest NET-STATS
        beyond BEFORE's (tx and rx); the host receiving more datagrams; and a
        disk verify pass completed in this process."""
        procs = [vm, self.rx]
        wait_until('two heartbeats with both vCPUs verifying',
                   lambda: [h for h in heartbeats(vm)[1:] if h[1] > before['uptime']
                            and h[2] > before['verified'] and h[3] == 2], timeout, procs)
        net_after = before['net']
        wait_until('the guest sending and receiving',
                   lambda: (net_stats(vm) or {}).get('tx', -1) > net_after[0]
                   and net_stats(vm)['rx'] > net_after[1], timeout, procs)
        wait_until('the host receiving', lambda: self.host_rx()['rx'] > before['host_rx'],
                   timeout, procs)
        wait_until('a disk verify pass', lambda: blk_done(vm, 'verify') > 0, timeout, procs)

    def state(self, vm):
        """Counters to compare with after the next restore."""
        hb = heartbeats(vm)
        s = net_stats(vm)
        return {'uptime': hb[-1][1] if hb else 0, 'n': hb[-1][0] if hb else 0,
                'verified': hb[-1][2] if hb else 0,
                'net': (s['tx'], s['rx']) if s else (0, 0),
                'host_rx': self.host_rx()['rx']}

    def close(self):
        for p in (self.tx,):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if self.rx is not None:
            self.rx.kill()
            self.rx.close()


def round_trip(spawn_vmm, ns, guest, tmp_path, rounds):
    w = Workload(spawn_vmm, ns, guest, tmp_path)
    try:
        w.start_streams(os.path.join(ferrytest.build_dir(), 'tests', 'system', 'logs',
                                     'round_trip_%d-udp-receiver.log' % rounds))
        vm = w.start_vm()
        virtiotest.wait_kv(vm, virtiotest.BLK_READY_RE, since=0)
        virtiotest.wait_kv(vm, virtiotest.NET_READY_RE, since=0)
        vm.wait_ready()
        ping(ns, vm, GUEST_IP, count=2)
        w.progress(vm, w.state(vm))
        saves = []
        for i in range(rounds):
            before = w.state(vm)
            c = Client(str(w.sock))
            path = tmp_path / ('state.%d' % i)
            res = save(c, path)
            saves.append(res)
            print('round %d: saved %d bytes (%d data pages, %d zero pages) in %d ms'
                  % (i + 1, res['bytes'], res['ram_pages'], res['zero_pages'], res['ms']))
            quit_vm(c, vm)
            assert_no_ioerr(vm)
            assert_net_clean(vm)
            if i > 0:
                os.unlink(tmp_path / ('state.%d' % (i - 1)))   # each restore uses the last
            t0 = time.monotonic()
            vm = w.start_vm(restore=path)
            w.progress(vm, before)
            hb = heartbeats(vm)
            # The guest continues: no new boot, the heartbeat counter goes on.
            assert not vm.find_all(r'FERRY-GUEST-READY'), vm.diagnostics('the guest rebooted')
            assert hb[0][0] > before['n'], vm.diagnostics('heartbeat n %d after %d'
                                                          % (hb[0][0], before['n']))
            print('round %d: restored, first heartbeat after %.2f s: n=%d uptime_ms=%d '
                  '(last before save: n=%d uptime_ms=%d)'
                  % (i + 1, time.monotonic() - t0, hb[0][0], hb[0][1], before['n'],
                     before['uptime']))
        c = Client(str(w.sock))
        quit_vm(c, vm)
        for v in w.vms:
            v.check_no_failures()
            assert_no_ioerr(v)
            assert_net_clean(v)
        # The guest clock never went backwards: every heartbeat of every process,
        # in order, has a larger uptime than the one before.
        uptimes = [h[1] for v in w.vms for h in heartbeats(v)]
        assert all(b > a for a, b in zip(uptimes, uptimes[1:])), uptimes
        ns_vm = w.vms[-1]
        s = net_stats(ns_vm)
        assert s['rx'] > 0 and s['tx'] > 0, s['line']
        w.rx.check_no_failures()
        rx = w.host_rx()
        assert rx['corrupt'] == 0, rx
        print('guest NET-STATS at the end: %s; host: %s' % (s['line'], w.rx.find_all(
            RX_LINE_RE)[-1].string))
    finally:
        w.close()
    # Disk: every sector of the area holds the pattern of one of the passes.
    writes = sum(blk_done(v, 'write') for v in w.vms)
    r = hostcheck_blk.check_image(str(w.img), gens=(1, writes + 2),
                                  sectors=BLK_MIB * MIB // SECTOR)
    assert r['bad'] == 0 and r['ok'] == BLK_MIB * MIB // SECTOR, r
    print('disk: %d write passes, generations on disk %s' % (writes, sorted(r['gens'])))
    return saves


def test_round_trip(spawn_vmm, netns, guest, tmp_path):
    """Save, quit, restore in a new process, once, with every workload running."""
    round_trip(spawn_vmm, netns, guest, tmp_path, 1)


@pytest.mark.slow
def test_round_trip_5(spawn_vmm, netns, guest, tmp_path):
    """Five save/restore round trips on one guest, each from the previous save."""
    round_trip(spawn_vmm, netns, guest, tmp_path, 5)


# -- refused restores ------------------------------------------------------------

@pytest.fixture(scope='module')
def saved(tmp_path_factory, vmm_binary, kvm):
    """A saved VM (256 MiB, 1 vCPU, one disk): (state file, disk image, kernel)."""
    d = tmp_path_factory.mktemp('saved')
    kernel = ferrytest.guest_elf_path()
    img = virtiotest.make_image(d / 'disk.img', 4)
    sock = d / 'ctl.sock'
    vm = ferrytest.Vmm(kernel, cmdline='ferry.quiet ferry.dirty=16', memory='256M',
                       extra=['--disk', 'path=%s' % img, '--control-socket', sock],
                       vmm=vmm_binary)
    with vm:
        vm.wait_ready()
        vm.wait_heartbeat()
        c = Client(str(sock))
        save(c, d / 'state')
        quit_vm(c, vm)
    return d / 'state', img, kernel


def restore_refused(vmm_binary, kernel, state, args, keywords):
    res = ferrytest.run_vmm(['--kernel', kernel, '--cmdline', 'ferry.quiet ferry.dirty=16',
                             '--restore', state] + args, vmm=vmm_binary)
    msg = check_refused(res, (RUNTIME_ERROR,), keywords)
    assert 'FERRY-' not in res.stdout, 'the guest ran:\n' + res.stdout[-2000:]
    return msg


def test_restore_other_memory(vmm_binary, saved):
    state, img, kernel = saved
    msg = restore_refused(vmm_binary, kernel, state,
                          ['--memory', '512M', '--disk', 'path=%s' % img],
                          [r'memory', r'256 MiB', r'512 MiB'])
    print(msg)


def test_restore_missing_disk(vmm_binary, saved):
    state, img, kernel = saved
    msg = restore_refused(vmm_binary, kernel, state, ['--memory', '256M'],
                          [r'device disk0', r'virtio-blk', r'absent'])
    print(msg)


def test_restore_other_cpus(vmm_binary, saved):
    state, img, kernel = saved
    restore_refused(vmm_binary, kernel, state,
                    ['--memory', '256M', '--cpus', '2', '--disk', 'path=%s' % img],
                    [r'vcpus'])


def test_restore_missing_file(vmm_binary, kvm, tmp_path):
    state = tmp_path / 'no-such-state'
    restore_refused(vmm_binary, ferrytest.guest_elf_path(), state, [],
                    [re.escape(str(state))])


def damaged(saved, tmp_path, edit):
    state, img, kernel = saved
    data = bytearray(state.read_bytes())
    out = tmp_path / 'damaged'
    out.write_bytes(edit(data))
    return out, img, kernel


@pytest.mark.parametrize('where', ['preamble', 'header', 'ram', 'last section', 'end'])
def test_restore_truncated(vmm_binary, saved, tmp_path, where):
    size = saved[0].stat().st_size
    cut = {'preamble': 10, 'header': 16 + 7, 'ram': size // 2, 'last section': size - 100,
           'end': size - 1}[where]
    state, img, kernel = damaged(saved, tmp_path, lambda d: d[:cut])
    msg = restore_refused(vmm_binary, kernel, state, ['--memory', '256M',
                                                      '--disk', 'path=%s' % img],
                          [r'truncated|ends|short|incomplete'])
    print('cut at %d of %d: %s' % (cut, size, msg))


@pytest.mark.parametrize('where', ['magic', 'config', 'ram', 'last section', 'end crc'])
def test_restore_bit_flipped(vmm_binary, saved, tmp_path, where):
    size = saved[0].stat().st_size
    pos = {'magic': 1, 'config': 16 + 16 + 5, 'ram': size // 2, 'last section': size - 100,
           'end crc': size - 7}[where]

    def flip(d):
        d[pos] ^= 0x10
        return d

    state, img, kernel = damaged(saved, tmp_path, flip)
    msg = restore_refused(vmm_binary, kernel, state, ['--memory', '256M',
                                                      '--disk', 'path=%s' % img],
                          [r'checksum|crc|magic|corrupt'])
    print('bit flipped at %d of %d: %s' % (pos, size, msg))


def test_save_unwritable(spawn_vmm, guest, tmp_path):
    """save to a path that cannot be written: a JSON-RPC error naming it; the
    VM stays paused and resumes fine."""
    sock = tmp_path / 'ctl.sock'
    vm = start(spawn_vmm, guest, 'ferry.quiet ferry.dirty=16', ['--control-socket', sock],
               cpus=1)
    vm.wait_ready()
    vm.wait_heartbeat()
    c = Client(str(sock))
    for bad in (tmp_path / 'no-such-dir' / 'state', tmp_path):
        r = c.call('save', path=str(bad))
        assert 'error' in r and r['error']['code'] == -32000, r
        assert str(bad) in r['error']['message'], r
        print('save %s: %s' % (bad, r['error']['message']))
        assert c.call('query-status')['result']['status'] == 'paused'
    assert os.listdir(tmp_path) == ['ctl.sock'], os.listdir(tmp_path)
    assert c.call('save', path='')['error']['code'] in (-32602, -32000)
    mark = len(vm.console.snapshot())
    assert c.call('resume')['result'] is None
    vm.wait_for(ferrytest.HEARTBEAT_RE, since=mark)
    vm.wait_heartbeat()
    vm.check_no_failures()
    quit_vm(c, vm)


# -- size --------------------------------------------------------------------------

def test_save_size_1g(spawn_vmm, guest, tmp_path):
    """A 1 GiB guest that touched little memory saves to far less than 1 GiB
    (zero pages and never-touched memory cost no data), and restores."""
    sock = tmp_path / 'ctl.sock'
    vm = start(spawn_vmm, guest, 'ferry.quiet ferry.dirty=16', ['--control-socket', sock],
               memory='1G', cpus=1)
    vm.wait_ready()
    hb = vm.wait_heartbeat()
    c = Client(str(sock))
    path = tmp_path / 'state'
    res = save(c, path)
    print('1 GiB guest, ferry.dirty=16: %.1f MiB saved (%d data pages, %d zero pages) in %d ms'
          % (res['bytes'] / MIB, res['ram_pages'], res['zero_pages'], res['ms']))
    assert res['bytes'] < 200 * MIB, res
    assert res['ram_pages'] >= 16 * MIB // 4096, res
    quit_vm(c, vm)
    vm2 = start(spawn_vmm, guest, 'ferry.quiet ferry.dirty=16', ['--control-socket', sock],
                memory='1G', cpus=1, restore=path)
    hb2 = vm2.wait_heartbeat()
    assert hb2['uptime_ms'] > hb['uptime_ms'], (hb, hb2)
    vm2.wait_heartbeat()
    vm2.check_no_failures()
    quit_vm(Client(str(sock)), vm2)
