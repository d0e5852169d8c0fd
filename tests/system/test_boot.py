# SPDX-License-Identifier: GPL-2.0-or-later
"""System tests: boot Ferry's test guest with ferry-vmm (suite `system`).

Every test runs twice, through the PVH ELF entry and through the Linux boot
protocol (bzImage).  The guest's console protocol is described in
docs/test-guest.md.
"""

import os
import re
import time

import pytest

import ferrytest
from ferrytest import BOOT_TIMEOUT, GuestError, scaled

GIB = 1 << 30


def assert_heartbeats(vm, count, cpus=None):
    """Read COUNT heartbeats; check counters advance and the CPU count.

    FERRY-CORRUPTION/FERRY-GUEST-PANIC lines fail the wait itself."""
    beats = [vm.wait_heartbeat() for _ in range(count)]
    for prev, cur in zip(beats, beats[1:]):
        assert cur['n'] > prev['n'], (prev['line'], cur['line'])
        assert cur['uptime_ms'] > prev['uptime_ms'], (prev['line'],
                                                      cur['line'])
    if cpus is not None:
        for b in beats:
            assert b['cpus'] == cpus, b['line']
    return beats


@pytest.mark.parametrize('cpus,memory,mem_mib', [(1, '256M', 256),
                                                 (4, '1G', 1024)])
def test_ready(spawn_vmm, guest_kernel, guest_entry, cpus, memory, mem_mib):
    vm = spawn_vmm(guest_kernel, cpus=cpus, memory=memory)
    ready = vm.wait_ready()
    assert ready['cpus'] == cpus, ready['line']
    assert ready['entry'] == guest_entry, ready['line']
    # The guest reports the RAM it was given by the e820 map; firmware and
    # reserved areas below 1 MiB may be missing, never more than a few MiB.
    assert mem_mib - 16 <= ready['mem_mib'] <= mem_mib, ready['line']
    vm.check_no_failures()
    assert vm.stop() == 0, vm.diagnostics('SIGTERM did not give status 0')


def test_smp_dirty(spawn_vmm, guest_kernel):
    vm = spawn_vmm(guest_kernel, cpus=4, memory='1G',
                   cmdline='ferry.dirty=64 ferry.rate=0')
    ready = vm.wait_ready()
    assert ready['cpus'] == 4, ready['line']
    ws = vm.wait_workset()
    assert ws['size'] == 64 << 20, ws['line']
    beats = assert_heartbeats(vm, 3, cpus=4)
    assert beats[-1]['dirtied_mib'] > 0, beats[-1]['line']
    assert beats[-1]['verified_mib'] > 0, beats[-1]['line']
    vm.check_no_failures()
    assert vm.stop() == 0, vm.diagnostics('SIGTERM did not give status 0')


def test_above_4g(spawn_vmm, guest_kernel):
    """6 GiB guest: RAM above 4 GiB is mapped and the working set (taken
    from the highest addresses) lives there."""
    vm = spawn_vmm(guest_kernel, cpus=2, memory='6G',
                   cmdline='ferry.dirty=512')
    ready = vm.wait_ready()
    # 6144 MiB minus what the PCI hole / reserved ranges cost.
    assert 6000 < ready['mem_mib'] <= 6144, ready['line']
    ws = vm.wait_workset()
    assert ws['base'] >= 4 * GIB, ws['line']
    assert ws['size'] == 512 << 20, ws['line']
    assert ws['base'] + ws['size'] <= 4 * GIB + 6 * GIB, ws['line']
    beats = assert_heartbeats(vm, 3)
    assert beats[-1]['verified_mib'] > 0, beats[-1]['line']
    vm.check_no_failures()
    assert vm.stop() == 0, vm.diagnostics('SIGTERM did not give status 0')


def test_poweroff(spawn_vmm, guest_kernel):
    vm = spawn_vmm(guest_kernel, cmdline='ferry.poweroff=0', memory='256M')
    vm.wait_ready()
    status = vm.wait_exit(BOOT_TIMEOUT)
    assert status == 0, vm.diagnostics('guest power-off: %s'
                                       % ferrytest.describe_status(status))
    vm.check_no_failures()


def test_reboot_reset(spawn_vmm, guest_kernel):
    """ferry.reboot: the default --on-reboot reset boots the guest again."""
    vm = spawn_vmm(guest_kernel, cmdline='ferry.reboot=200', memory='256M',
                   cpus=2)
    vm.wait_ready()
    second = vm.wait_ready()
    assert second['cpus'] == 2, second['line']
    assert vm.running(), vm.diagnostics('exited on reboot with reset')
    status = vm.stop()
    assert status == 0, vm.diagnostics('SIGTERM: %s'
                                       % ferrytest.describe_status(status))


def test_reboot_exit(spawn_vmm, guest_kernel):
    vm = spawn_vmm(guest_kernel, cmdline='ferry.reboot=0', memory='256M',
                   extra=['--on-reboot', 'exit'])
    vm.wait_ready()
    status = vm.wait_exit(BOOT_TIMEOUT)
    assert status == 0, vm.diagnostics('--on-reboot exit: %s'
                                       % ferrytest.describe_status(status))
    assert len(vm.find_all(ferrytest.READY_RE)) == 1, \
        vm.diagnostics('booted again despite --on-reboot exit')


def test_echo_stdio(spawn_vmm, guest_kernel):
    vm = spawn_vmm(guest_kernel, memory='256M')
    vm.wait_ready()
    for text in ('hello ferry', 'second line 12345 !@#'):
        vm.send(text)
        vm.wait_for('^FERRY-ECHO: %s$' % re.escape(text), 30)
    assert vm.stop() == 0


def test_serial_socket(spawn_vmm, guest_kernel, tmp_path):
    path = str(tmp_path / 'serial.sock')
    vm = spawn_vmm(guest_kernel, memory='256M', serial='socket=' + path)
    sock = ferrytest.SocketConsole(path, vm.console)
    try:
        # Output made before we connected may or may not be kept, so do not
        # insist on READY here: type until the guest echoes.
        deadline = time.monotonic() + scaled(BOOT_TIMEOUT)
        n = 0
        while True:
            n += 1
            token = 'socket ping %d' % n
            sock.send(token)
            try:
                vm.wait_for('^FERRY-ECHO: %s$' % re.escape(token), 3)
                break
            except GuestError:
                if time.monotonic() > deadline or not vm.running():
                    raise
        # Once it answers, it answers every line.
        sock.send('after ready')
        vm.wait_for('^FERRY-ECHO: after ready$', 30)
        vm.check_no_failures()
    finally:
        sock.close()
    assert vm.stop() == 0


def test_serial_file(spawn_vmm, guest_kernel, tmp_path):
    path = tmp_path / 'console.log'
    vm = spawn_vmm(guest_kernel, memory='256M', serial='file=%s' % path)
    deadline = time.monotonic() + scaled(BOOT_TIMEOUT)
    text = ''
    while time.monotonic() < deadline and vm.running():
        if path.exists():
            text = path.read_text(errors='replace')
            if re.search(ferrytest.READY_RE, text, re.M):
                break
        time.sleep(0.2)
    assert re.search(ferrytest.READY_RE, text, re.M), \
        vm.diagnostics('no READY in %s; it holds:\n%s' % (path, text[-3000:]))
    assert vm.stop() == 0
    # Nothing of the guest console goes to stdout with file=.
    assert not vm.find_all('FERRY-GUEST-READY')
    assert os.path.getsize(path) > 0
