# SPDX-License-Identifier: GPL-2.0-or-later
"""System tests: ferry-vmm's virtio-blk device (--disk), driven by the test
guest's disk exerciser (docs/test-guest.md, "Virtio devices").

Suite `system` runs the tests not marked slow (`-m 'not slow'`), suite `slow`
the others.  Each test makes its own raw images in pytest's tmp_path.  The
data written by the guest is checked twice: by the guest reading it back
(FERRY-CORRUPTION fails any wait) and on the host with hostcheck_blk.py.
"""

import hashlib
import os
import re

import pytest

import ferrytest
import hostcheck_blk
import virtiotest
from test_errors import RUNTIME_ERROR, USAGE_ERROR, check_refused
from virtiotest import BLK_DONE_RE, BLK_IOERR_RE, BLK_READY_RE, MIB, SECTOR

# ms after READY until the guest powers itself off in the tests that check
# the power-off exit (the pass must end before: QEMU writes 64 MiB in 50 ms).
POWEROFF_MS = 4000
# Seconds for one exerciser pass.
PASS_TIMEOUT = 120


@pytest.fixture
def guest():
    path = ferrytest.guest_elf_path()
    if not os.path.isfile(path):
        pytest.fail('test guest not found at %s' % path, pytrace=False)
    return path


def boot(spawn_vmm, guest, disks, cmdline, memory='256M', quiet=True):
    """Start ferry-vmm with DISKS (dicts for virtiotest.disk_spec) and the
    guest command line CMDLINE; device failures fail every wait."""
    extra = []
    for d in disks:
        extra += ['--disk', virtiotest.disk_spec(**d)]
    vm = spawn_vmm(guest, cmdline=('ferry.quiet ' if quiet else '') + cmdline,
                   memory=memory, extra=extra)
    vm.fail_patterns = list(virtiotest.FAIL_PATTERNS)
    return vm


def wait_blk_ready(vm):
    """FERRY-BLK-READY comes before FERRY-GUEST-READY: search from the start."""
    return virtiotest.wait_kv(vm, BLK_READY_RE, since=0)


def wait_done(vm, mode):
    d = virtiotest.wait_kv(vm, BLK_DONE_RE, PASS_TIMEOUT)
    assert d['mode'] == mode, d['line']
    return d


def ioerrs(vm):
    return [virtiotest.kv(m) for m in vm.find_all(BLK_IOERR_RE)]


def assert_no_ioerr(vm):
    errs = ioerrs(vm)
    assert not errs, vm.diagnostics('I/O errors: %s' % errs[0]['line'])


def stop_ok(vm):
    status = vm.stop()
    assert status == 0, vm.diagnostics('SIGTERM: %s' % ferrytest.describe_status(status))


def host_check(path, seed=1, gens=(1, 1), mib=None):
    sectors = None if mib is None else mib * MIB // SECTOR
    return hostcheck_blk.check_image(str(path), seed=seed, gens=gens, sectors=sectors)


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def write_pattern(path, mib, seed=1, gen=1):
    """Write the guest's disk pattern for the first MIB MiB on the host."""
    with open(path, 'r+b') as f:
        for s in range(mib * MIB // SECTOR):
            f.write(hostcheck_blk.sector_bytes(seed, gen, s))


def test_write_then_verify(spawn_vmm, guest, tmp_path):
    """64 MiB written in 1 MiB requests, the guest powers off (exit 0); a
    second boot reads it all back; the host finds every sector right."""
    img = virtiotest.make_image(tmp_path / 'disk.img', 64)
    vm = boot(spawn_vmm, guest, [{'path': img}],
              'ferry.blk=write ferry.poweroff=%d' % ferrytest.scaled(POWEROFF_MS))
    ready = wait_blk_ready(vm)
    assert ready['capacity_sectors'] == 64 * MIB // SECTOR, ready['line']
    assert ready['ro'] == 0, ready['line']
    vm.wait_ready()
    done = wait_done(vm, 'write')
    assert done['mib'] == 64, done['line']
    assert done['irqs'] > 0, vm.diagnostics('no MSI-X interrupt during the pass')
    status = vm.wait_exit(ferrytest.BOOT_TIMEOUT + POWEROFF_MS / 1000)
    assert status == 0, vm.diagnostics('guest power-off: %s'
                                       % ferrytest.describe_status(status))
    assert_no_ioerr(vm)
    vm.check_no_failures()

    vm2 = boot(spawn_vmm, guest, [{'path': img}], 'ferry.blk=verify')
    wait_blk_ready(vm2)
    done = wait_done(vm2, 'verify')
    assert done['mib'] == 64, done['line']
    assert_no_ioerr(vm2)
    vm2.check_no_failures()
    stop_ok(vm2)

    r = host_check(img)
    assert r['bad'] == 0 and r['ok'] == 64 * MIB // SECTOR, r


def test_random_4k(spawn_vmm, guest, tmp_path):
    """4 KiB requests at random offsets, qd 32: written, then replayed and
    verified in a second boot; on the host every written sector is right and
    the rest is still zero."""
    mib = 16
    img = virtiotest.make_image(tmp_path / 'disk.img', mib)
    opts = 'ferry.blk.random=4 ferry.blk.qd=32 ferry.blk.seed=7 ferry.blk.gen=3'
    vm = boot(spawn_vmm, guest, [{'path': img}], 'ferry.blk=write ' + opts)
    wait_blk_ready(vm)
    done = wait_done(vm, 'write')
    assert done['mib'] == mib, done['line']
    assert_no_ioerr(vm)
    stop_ok(vm)

    vm2 = boot(spawn_vmm, guest, [{'path': img}], 'ferry.blk=verify ' + opts)
    wait_blk_ready(vm2)
    done = wait_done(vm2, 'verify')
    assert done['mib'] == mib, done['line']
    assert_no_ioerr(vm2)
    vm2.check_no_failures()
    stop_ok(vm2)

    r = host_check(img, seed=7, gens=(3, 3))
    # A random pass covers about 1 - 1/e of the 4 KiB blocks.
    assert r['bad'] == r['zero'], r
    assert r['ok'] % 8 == 0 and r['ok'] > r['checked'] // 2, r


def test_loop(spawn_vmm, guest, tmp_path):
    """ferry.blk=loop on 8 MiB of a larger disk: several write+verify passes
    with a new generation each; only the first 8 MiB are touched."""
    img = virtiotest.make_image(tmp_path / 'disk.img', 32)
    vm = boot(spawn_vmm, guest, [{'path': img}],
              'ferry.blk=loop ferry.blk.mib=8 ferry.blk.req=256 ferry.blk.qd=8')
    wait_blk_ready(vm)
    for _ in range(3):
        assert wait_done(vm, 'write')['mib'] == 8
        assert wait_done(vm, 'verify')['mib'] == 8
    assert_no_ioerr(vm)
    stop_ok(vm)
    vm.check_no_failures()
    r = host_check(img, gens=(1, 1000), mib=8)
    assert r['bad'] == 0 and r['ok'] == 8 * MIB // SECTOR, r
    assert min(r['gens']) >= 3, r
    with open(img, 'rb') as f:
        f.seek(8 * MIB)
        assert f.read().count(0) == 24 * MIB, 'data written beyond ferry.blk.mib'


def test_readonly(spawn_vmm, guest, tmp_path):
    """readonly=on: the device says RO, reads work, every write fails with a
    status (not a hang, not a crash), the file is unchanged."""
    mib = 4
    img = virtiotest.make_image(tmp_path / 'ro.img', 8)
    write_pattern(img, mib)
    before = sha256(img)

    vm = boot(spawn_vmm, guest, [{'path': img, 'readonly': True}],
              'ferry.blk=write ferry.blk.mib=%d' % mib)
    ready = wait_blk_ready(vm)
    assert ready['ro'] == 1, ready['line']
    done = wait_done(vm, 'write')
    assert done['mib'] == 0, done['line']
    errs = ioerrs(vm)
    assert errs, vm.diagnostics('no FERRY-BLK-IOERR for writes to a read-only disk')
    for e in errs:
        assert e['op'] in ('write', 'flush'), e['line']
        assert e['status'] != 0, e['line']
    assert any(e['op'] == 'write' for e in errs), errs
    # Still running and responsive after the errors.
    vm.send('still there')
    vm.wait_for('^FERRY-ECHO: still there$', 30)
    stop_ok(vm)
    assert sha256(img) == before, 'read-only image changed'

    # Reads work on a read-only disk.
    vm2 = boot(spawn_vmm, guest, [{'path': img, 'readonly': True}],
               'ferry.blk=verify ferry.blk.mib=%d' % mib)
    assert wait_blk_ready(vm2)['ro'] == 1
    assert wait_done(vm2, 'verify')['mib'] == mib
    assert_no_ioerr(vm2)
    vm2.check_no_failures()
    stop_ok(vm2)
    assert sha256(img) == before, 'read-only image changed'


def test_two_disks(spawn_vmm, guest, tmp_path):
    """Two disks: ferry.blk.dev=1 picks the second in PCI order; serial= is
    what GET_ID returns (20 bytes, the maximum, are returned whole); only the
    chosen image is written."""
    a = virtiotest.make_image(tmp_path / 'a.img', 8)
    write_pattern(a, 1, seed=5)
    a_hash = sha256(a)
    b = virtiotest.make_image(tmp_path / 'b.img', 16)
    disks = [{'path': a, 'serial': 'alpha'}, {'path': b, 'serial': 'B2345678901234567890'}]
    vm = boot(spawn_vmm, guest, disks, 'ferry.blk=write ferry.blk.dev=1')
    ready = wait_blk_ready(vm)
    assert ready['capacity_sectors'] == 16 * MIB // SECTOR, ready['line']
    assert ready['serial'] == 'B2345678901234567890', ready['line']
    assert wait_done(vm, 'write')['mib'] == 16
    assert_no_ioerr(vm)
    stop_ok(vm)

    vm2 = boot(spawn_vmm, guest, disks,
               'ferry.blk=verify ferry.blk.dev=0 ferry.blk.mib=1 ferry.blk.seed=5')
    ready = wait_blk_ready(vm2)
    assert ready['capacity_sectors'] == 8 * MIB // SECTOR, ready['line']
    assert ready['serial'] == 'alpha', ready['line']
    assert wait_done(vm2, 'verify')['mib'] == 1
    assert_no_ioerr(vm2)
    vm2.check_no_failures()
    stop_ok(vm2)

    r = host_check(b)
    assert r['bad'] == 0 and r['ok'] == 16 * MIB // SECTOR, r
    assert sha256(a) == a_hash, 'the other disk was written'


def test_slots(spawn_vmm, guest, tmp_path):
    """slot=N places the disk at that PCI slot: the lower slot comes first
    in the guest's PCI order whatever the command-line order."""
    a = virtiotest.make_image(tmp_path / 'a.img', 4)
    b = virtiotest.make_image(tmp_path / 'b.img', 8)
    write_pattern(b, 1)
    disks = [{'path': a, 'serial': 'slot9', 'slot': 9},
             {'path': b, 'serial': 'slot5', 'slot': 5}]
    vm = boot(spawn_vmm, guest, disks, 'ferry.blk=verify ferry.blk.mib=1', quiet=False)
    ready = wait_blk_ready(vm)
    assert ready['serial'] == 'slot5', ready['line']
    assert wait_done(vm, 'verify')['mib'] == 1
    vm.check_no_failures()
    vm.wait_for(r'ferry-guest: virtio-blk 00:05\.0 ', 10, since=0)
    pci = [m.string for m in vm.find_all(r'ferry-guest: pci 00:(05|09)\.0 ')]
    assert len(pci) == 2 and all('virtio-blk' in p for p in pci), \
        vm.diagnostics('virtio-blk not at slots 5 and 9')
    stop_ok(vm)


@pytest.mark.slow
def test_large_sequential(spawn_vmm, guest, tmp_path):
    """256 MiB with 4 MiB requests (split by SIZE_MAX/SEG_MAX if offered),
    written and verified twice in a loop; host check."""
    img = virtiotest.make_image(tmp_path / 'big.img', 256)
    vm = boot(spawn_vmm, guest, [{'path': img}],
              'ferry.blk=loop ferry.blk.req=4096 ferry.blk.qd=16', memory='512M')
    wait_blk_ready(vm)
    for _ in range(2):
        assert wait_done(vm, 'write')['mib'] == 256
        assert wait_done(vm, 'verify')['mib'] == 256
    assert_no_ioerr(vm)
    stop_ok(vm)
    r = host_check(img, gens=(1, 1000))
    assert r['bad'] == 0 and r['ok'] == 256 * MIB // SECTOR, r


# -- bad input ------------------------------------------------------------------

def test_missing_image(vmm_binary, guest, tmp_path):
    path = str(tmp_path / 'no-such.img')
    res = ferrytest.run_vmm(['--kernel', guest, '--disk', 'path=' + path], vmm=vmm_binary)
    check_refused(res, (RUNTIME_ERROR, USAGE_ERROR), [re.escape(path)])
    assert 'FERRY-GUEST-READY' not in res.stdout


def test_directory_as_image(vmm_binary, kvm, guest, tmp_path):
    path = str(tmp_path)
    res = ferrytest.run_vmm(['--kernel', guest, '--disk', 'path=' + path], vmm=vmm_binary)
    check_refused(res, (RUNTIME_ERROR, USAGE_ERROR), [re.escape(path)])
    assert 'FERRY-GUEST-READY' not in res.stdout


@pytest.mark.parametrize('spec,keyword', [
    ('readonly=on', 'path'),
    ('', 'disk|path'),
    ('path=', 'path'),
    ('path=IMG,colour=red', 'colour'),
    ('path=IMG,readonly=maybe', 'readonly|maybe'),
    ('path=IMG,serial=123456789012345678901', 'serial'),
    ('path=IMG,slot=0', 'slot'),
    ('path=IMG,slot=32', 'slot'),
    ('path=IMG,slot=x', 'slot'),
])
def test_malformed_disk(vmm_binary, guest, tmp_path, spec, keyword):
    img = virtiotest.make_image(tmp_path / 'ok.img', 1)
    res = ferrytest.run_vmm(['--kernel', guest, '--disk', spec.replace('IMG', str(img))],
                            vmm=vmm_binary)
    check_refused(res, (USAGE_ERROR,), [keyword])
    assert 'FERRY-GUEST-READY' not in res.stdout
