# SPDX-License-Identifier: GPL-2.0-or-later
"""System tests: faults that strike during the final round of a migration (stop-and-copy:
status `completing` on the source, the VM paused there; docs/control-api.md, "Migration").

Until the destination has said `ready`, a failure or `migrate-cancel` must leave the VM
running on the source as before, its disk image locked again.  Each case makes the final
round last seconds, waits until it is under way (status `completing`, data flowing, the
source paused), strikes, and then checks: the source's migration ends failed (or
cancelled) with an error saying what happened and not "in doubt", the VM runs again at the
source (status running, new heartbeats with more memory verified, no FERRY-CORRUPTION),
the disk image is locked by the source again (a second ferry-vmm opening it read-write is
refused with "in use"), the destination gives up without ever running the guest, and a
retry to a fresh destination completes; the disk pattern on the image is then intact.

Two ways to make the final round long:
  warm  `"mode": "warm"` at 8 MiB/s: the single round is the final round (32+ MiB, ~4 s);
        suite `system`.
  live  the guest dirties 256 MiB at 256 MiB/s (ferry.dirty=256 ferry.rate=256), sent at
        64 MiB/s with downtime-limit 5000 ms: pre-copy goes to its final round once the
        expected pause (~4 s, the whole working set) fits; the test catches it by polling
        query-migrate for `completing`; suite `slow`.

Faults: (a) SIGKILL of the destination, (b) the connection cut (a TCP proxy resets both
sides), (c) one bit flipped by the proxy inside the final round, (d) migrate-cancel,
(e) the destination cannot lock its disk image at the switch (another process holds it).

The guest runs the memory verifier and the disk exerciser (ferry.blk=loop) on a shared raw
image; the retry destination opens the same image.
"""

import fcntl
import os
import re
import signal
import struct

import pytest

import ferrytest
import hostcheck_blk
import virtiotest
from test_migrate import (CONVERGE, FINAL, FlipProxy, Rig, assert_completed,  # noqa: F401
                          assert_still_running, assert_uptime_monotonic, certs, dedup,
                          dest_exit, guest, quit_side, receive, report, send, wait_end)
from test_snapshot import blk_done, wait_until
from virtiotest import MIB, SECTOR

BLK = 'ferry.blk=loop ferry.blk.mib=4'
BLK_MIB = 4
IMG_MIB = 16
WARM_BW = 8 * MIB
LIVE_BW = 64 * MIB
LIVE_DOWNTIME_MS = 5000
# Bytes the final round has sent before the fault strikes.
INTO_FINAL = 4 * MIB
# What the source says when the connection broke after its last byte: must not happen here.
IN_DOUBT = r'may be running'

MODES = [pytest.param('warm', id='warm'),
         pytest.param('live', id='live', marks=pytest.mark.slow)]


# -- helpers ---------------------------------------------------------------------------

class Case:
    """A source with a disk (image IMG, exercised by the guest) and the migration options
    of MODE: 'warm' (256 MiB guest dirtying 32 MiB) or 'live' (512 MiB, dirtying 256 MiB
    at 256 MiB/s)."""

    def __init__(self, spawn_vmm, guest, tmp_path, certs, mode):
        self.mode, self.guest, self.dir = mode, guest, tmp_path
        self.img = str(virtiotest.make_image(tmp_path / 'disk.img', IMG_MIB))
        if mode == 'warm':
            cmdline, memory = 'ferry.quiet ferry.dirty=32 ' + BLK, '256M'
        else:
            cmdline, memory = CONVERGE + ' ' + BLK, '512M'
        self.rig = Rig(spawn_vmm, guest, tmp_path, certs['good'], cmdline=cmdline,
                       memory=memory, opts=self.disk(self.img))
        self.src = self.rig.source()

    @staticmethod
    def disk(path):
        return ['--disk', 'path=%s' % path]

    def send(self, uri):
        """migrate-send of the slow migration whose final round the test strikes."""
        if self.mode == 'warm':
            send(self.src, uri, mode='warm', max_bandwidth=WARM_BW)
        else:
            send(self.src, uri, mode='live', max_bandwidth=LIVE_BW,
                 downtime_limit=LIVE_DOWNTIME_MS, auto_converge=False, postcopy=False)

    def final_round(self, procs):
        """Waits until the source's final round is under way: status completing, INTO_FINAL
        bytes sent since it was first seen, the VM paused.  Returns that query-migrate."""
        src, seen = self.src, {}

        def poll():
            q = src.result('query-migrate')
            assert q['status'] in ('setup', 'active', 'completing'), src.vm.diagnostics(
                'the migration ended or left pre-copy before its final round was under '
                'way: %s' % q)
            if q['status'] != 'completing':
                return None
            seen.setdefault('first', q['ram']['transferred'])
            return q if q['ram']['transferred'] >= seen['first'] + INTO_FINAL else None

        q = wait_until('the final round under way', poll, 180, procs)
        st = src.status()
        assert st == 'paused', src.vm.diagnostics('the source is %s in its final round' % st)
        print('final round under way: %s mode, round %d, %.1f MiB sent (%.1f MiB in the '
              'final round), %.1f MiB remaining, source %s'
              % (q['mode'], q['iteration'], q['ram']['transferred'] / MIB,
                 (q['ram']['transferred'] - seen['first']) / MIB,
                 q['ram']['remaining'] / MIB, st))
        assert q['mode'] == self.mode, q
        if self.mode == 'live':
            assert q['iteration'] >= 1, q
        return q

    def recovered(self, q, status, pattern, what):
        """The source's migration ended STATUS with an error matching PATTERN after going
        through its final round; the VM runs again there with the image locked."""
        src = self.src
        report(what, q)
        assert q['status'] == status, src.vm.diagnostics('%s: expected %s: %s'
                                                         % (what, status, q))
        err = q.get('error') or ''
        print('source error: %s' % err)
        assert re.search(pattern, err, re.I), src.vm.diagnostics(
            '%s: the error %r does not match /%s/' % (what, err, pattern))
        assert not re.search(IN_DOUBT, err), src.vm.diagnostics(
            '%s: the source thinks the fault came after its last byte: %s' % (what, err))
        assert re.search(r'keeps running here', err), err
        statuses = dedup([n['status'] for n in src.notes()])
        print('source statuses: %s' % statuses)
        assert statuses[-2:] == ['completing', status], statuses
        assert_still_running(src, what)
        assert_locked(self.guest, self.img, what)

    def retry(self, what):
        """A live migration at full speed to a fresh destination completes; every process
        is quit; the image holds the guest's disk pattern, nothing else."""
        src = self.src
        dst = self.rig.destination()
        send(src, receive(dst), mode='live', max_bandwidth=0)
        q, _ = wait_end(src, timeout=300)
        assert_completed(src, dst, q, 'retry after ' + what)
        # The destination took the image over.
        assert_locked(self.guest, self.img, 'the retry')
        quit_side(src)
        dst.vm.wait_heartbeat()
        quit_side(dst)
        assert_uptime_monotonic([src, dst])
        writes = sum(blk_done(s.vm, 'write') for s in (src, dst))
        verifies = sum(blk_done(s.vm, 'verify') for s in (src, dst))
        r = hostcheck_blk.check_image(self.img, gens=(1, writes + 2),
                                      sectors=BLK_MIB * MIB // SECTOR)
        print('disk: %d write and %d verify passes; image %s' % (writes, verifies, r))
        assert r['bad'] == 0, r
        if writes:
            assert r['ok'] == BLK_MIB * MIB // SECTOR, r


def assert_locked(guest, img, what):
    """A second ferry-vmm opening IMG read-write is refused: the image is in use."""
    r = ferrytest.run_vmm(['--kernel', guest, '--memory', '64M', '--disk', 'path=%s' % img])
    assert r.returncode != 0 and re.search(r'in use', r.stderr), (
        'after %s, a second ferry-vmm on %s: exit %s, stderr %s'
        % (what, img, r.returncode, r.stderr))


def hold_lock(path):
    """An open file description of PATH holding a write lock (F_OFD_SETLK, the lock
    ferry-vmm takes; fcntl(2)); close it to release."""
    fd = os.open(path, os.O_RDWR)
    # struct flock on Linux x86-64: short l_type, short l_whence, off_t l_start, off_t l_len,
    # pid_t l_pid (0 for OFD locks), padding.
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, os.SEEK_SET,
                                                   0, 0, 0))
    return fd


# -- the cases -------------------------------------------------------------------------

@pytest.mark.parametrize('mode', MODES)
def test_final_dest_killed(spawn_vmm, guest, tmp_path, certs, mode):
    """(a) SIGKILL of the destination in the final round."""
    c = Case(spawn_vmm, guest, tmp_path, certs, mode)
    dst = c.rig.destination()
    c.send(receive(dst))
    c.final_round([c.src.vm, dst.vm])
    dst.vm.proc.send_signal(signal.SIGKILL)
    q, _ = wait_end(c.src, timeout=120)
    c.recovered(q, 'failed', r'connection|closed|reset|broken pipe', 'the destination killed')
    c.retry('the destination killed')


@pytest.mark.parametrize('mode', MODES)
def test_final_connection_cut(spawn_vmm, guest, tmp_path, certs, mode):
    """(b) Plain tcp: through a proxy that resets both sides in the final round."""
    c = Case(spawn_vmm, guest, tmp_path, certs, mode)
    dst = c.rig.destination()
    bound = receive(dst, 'tcp:127.0.0.1:0')
    proxy = FlipProxy(('127.0.0.1', int(bound.rsplit(':', 1)[1])), None)
    try:
        c.send('tcp:127.0.0.1:%d' % proxy.port)
        c.final_round([c.src.vm, dst.vm])
        print('cut after %.1f MiB through the proxy' % (proxy.forwarded / MIB))
        proxy.cut()
    finally:
        proxy.close()
    q, _ = wait_end(c.src, timeout=120)
    c.recovered(q, 'failed', r'connection|closed|reset|broken pipe', 'the connection cut')
    dest_exit(dst, pattern=r'connection|closed|reset')
    c.retry('the connection cut')


@pytest.mark.parametrize('mode', MODES)
def test_final_stream_corrupted(spawn_vmm, guest, tmp_path, certs, mode):
    """(c) Plain tcp: through a proxy that flips one bit 1 MiB past the point where the
    source was seen in its final round: the destination refuses the stream (checksum)
    and says so on the return path; the source reports that reason."""
    c = Case(spawn_vmm, guest, tmp_path, certs, mode)
    dst = c.rig.destination()
    bound = receive(dst, 'tcp:127.0.0.1:0')
    proxy = FlipProxy(('127.0.0.1', int(bound.rsplit(':', 1)[1])), None)
    try:
        c.send('tcp:127.0.0.1:%d' % proxy.port)
        c.final_round([c.src.vm, dst.vm])
        with proxy.lock:
            proxy.at = proxy.forwarded + MIB
            at = proxy.at
        q, _ = wait_end(c.src, timeout=120)
        print('proxy: flip armed at byte %d, flipped %s, forwarded %d bytes'
              % (at, proxy.flipped, proxy.forwarded))
        assert proxy.flipped == at, 'the final round ended before the flip'
    finally:
        proxy.close()
    c.recovered(q, 'failed', r'checksum|crc', 'the corrupted stream')
    dest_exit(dst, pattern=r'checksum|crc')
    c.retry('the corrupted stream')


@pytest.mark.parametrize('mode', MODES)
def test_final_cancel(spawn_vmm, guest, tmp_path, certs, mode):
    """(d) migrate-cancel in the final round: cancelled, the VM runs on."""
    c = Case(spawn_vmm, guest, tmp_path, certs, mode)
    dst = c.rig.destination()
    c.send(receive(dst))
    c.final_round([c.src.vm, dst.vm])
    assert c.src.result('migrate-cancel') is None
    q, _ = wait_end(c.src, timeout=60)
    c.recovered(q, 'cancelled', r'cancel', 'migrate-cancel')
    dest_exit(dst)
    c.retry('migrate-cancel')


@pytest.mark.parametrize('mode', MODES)
def test_final_dest_image_locked(spawn_vmm, guest, tmp_path, certs, mode):
    """(e) The destination's image (a copy at another path, as on another host) is locked
    by another process after the destination started: the destination receives the whole
    state, cannot take the image over at the switch and says why; the source reports that
    reason (the image in use) and resumes."""
    c = Case(spawn_vmm, guest, tmp_path, certs, mode)
    other = str(virtiotest.make_image(tmp_path / 'dest.img', IMG_MIB))
    dst = c.rig.destination(opts=Case.disk(other))
    fd = hold_lock(other)
    try:
        c.send(receive(dst))
        c.final_round([c.src.vm, dst.vm])
        q, _ = wait_end(c.src, timeout=300)
    finally:
        os.close(fd)
    c.recovered(q, 'failed', r'in use', 'the destination image locked')
    assert other in q['error'], q['error']
    dest_exit(dst, pattern=r'in use')
    c.retry('the destination image locked')
