# SPDX-License-Identifier: GPL-2.0-or-later
"""System tests: ferry-vmm's virtio-net device (--net) on TAP devices, driven
by the test guest's network exerciser (docs/test-guest.md, "Virtio devices")
and tests/system/udpstream.py on the host side.

Every test that boots a guest makes its own network namespace (unique name,
deleted at teardown) and runs ferry-vmm and the host tools inside it with
`ip netns exec`, so nothing touches the host's interfaces.  They need root,
ip(8) and /dev/net/tun, and are skipped otherwise.  Addresses: host side
10.77.0.1/24, guests 10.77.0.2 and 10.77.0.3.

All of them run in suite `system` (together about 30 s).
"""

import os
import time

import pytest

import ferrytest
import virtiotest
from test_errors import RUNTIME_ERROR, USAGE_ERROR, check_refused
from virtiotest import NET_READY_RE, NET_STATS_RE

HOST_IP = '10.77.0.1'
GUEST_IP = '10.77.0.2'
GUEST2_IP = '10.77.0.3'
GUEST_PORT = 5201          # the guest checks the stream arriving here
HOST_PORT = 5301           # the host receives the guest's stream here
# Mbit/s of the host's stream to the guest: one the guest keeps up with
# (QEMU on the PVM host: no loss at 500, 6 % at 800).
HOST_TX_RATE = 400
# Chunk of the host's stream: one udpstream.py run, a new stream id each.
HOST_TX_CHUNK_MIB = 64


@pytest.fixture
def netns(request):
    """A fresh network namespace; deleted at teardown even if the test fails."""
    why = virtiotest.net_tools_missing()
    if why:
        pytest.skip(why)
    ns = virtiotest.Netns('ferrynet')
    request.addfinalizer(ns.delete)
    return ns


@pytest.fixture
def guest():
    path = ferrytest.guest_elf_path()
    if not os.path.isfile(path):
        pytest.fail('test guest not found at %s' % path, pytrace=False)
    return path


def boot(spawn_vmm, ns, guest, nets, cmdline):
    """ferry-vmm inside namespace NS with NETS (dicts for virtiotest.net_spec)."""
    extra = []
    for n in nets:
        extra += ['--net', virtiotest.net_spec(**n)]
    vm = spawn_vmm(guest, start=False, cmdline='ferry.quiet ' + cmdline, memory='256M',
                   extra=extra)
    vm.argv = ns.exec_argv(vm.argv)
    vm.fail_patterns = list(virtiotest.FAIL_PATTERNS)
    vm.start()
    return vm


def wait_net_ready(vm):
    """FERRY-NET-READY comes before FERRY-GUEST-READY: search from the start."""
    return virtiotest.wait_kv(vm, NET_READY_RE, since=0)


def last_stats(vm):
    hits = vm.find_all(NET_STATS_RE)
    return virtiotest.kv(hits[-1]) if hits else None


def assert_stats_clean(vm):
    """No FERRY-NET-STATS line reports corrupt datagrams."""
    for m in vm.find_all(NET_STATS_RE):
        s = virtiotest.kv(m)
        assert s['corrupt'] == 0, vm.diagnostics('guest received corrupt datagrams: '
                                                 + s['line'])


def wait_stats(vm, key, mib, timeout):
    """Wait until a FERRY-NET-STATS line has KEY >= MIB; return it."""
    deadline = time.monotonic() + ferrytest.scaled(timeout)
    while True:
        s = virtiotest.wait_kv(vm, NET_STATS_RE, max(deadline - time.monotonic(), 1))
        assert s['corrupt'] == 0, vm.diagnostics('corrupt datagrams: ' + s['line'])
        if s[key] >= mib:
            return s
        if time.monotonic() > deadline:
            raise ferrytest.GuestError(vm.diagnostics('%s stayed below %d MiB: %s'
                                                      % (key, mib, s['line'])))


def ping(ns, vm, ip, count=5):
    r = ns.run(virtiotest.udpstream_argv('ping', '--to', ip, '--count', count),
               check=False)
    p = virtiotest.parse_udpstream(r.stdout, virtiotest.UDPSTREAM_PING_RE)
    assert p and p['received'] == count, vm.diagnostics(
        'ping %s: %s%s' % (ip, r.stdout, r.stderr))


def host_tap(ns, name='ftap0'):
    """A TAP made by the test (ip tuntap), addressed and up."""
    ns.add_tap(name)
    ns.address(name, HOST_IP + '/24')
    return name


def test_ping_created_tap(spawn_vmm, netns, guest):
    """ferry-vmm creates the TAP (it does not exist yet); the test addresses
    it; the guest answers ARP (with mac=) and all pings."""
    mac = '52:54:00:a7:00:02'
    vm = boot(spawn_vmm, netns, guest, [{'tap': 'fnew0', 'mac': mac, 'mtu': 1500}],
              'ferry.net.ip=%s/24' % GUEST_IP)
    netns.wait_link('fnew0', proc=vm)
    netns.address('fnew0', HOST_IP + '/24')
    ready = wait_net_ready(vm)
    assert ready['mac'] == mac and ready['ip'] == GUEST_IP + '/24', ready['line']
    ping(netns, vm, GUEST_IP)
    neigh = netns.ip('neigh', 'show', GUEST_IP).stdout
    assert mac in neigh.lower(), 'ARP entry for the guest: %r' % neigh
    vm.check_no_failures()
    status = vm.stop()
    assert status == 0, vm.diagnostics('SIGTERM: %s' % ferrytest.describe_status(status))


def test_ping_existing_tap(spawn_vmm, netns, guest):
    """A TAP made beforehand with ip tuntap is used as it is; without mac=
    the device still has a unicast MAC."""
    tap = host_tap(netns)
    vm = boot(spawn_vmm, netns, guest, [{'tap': tap}], 'ferry.net.ip=%s/24' % GUEST_IP)
    ready = wait_net_ready(vm)
    first = int(ready['mac'].split(':')[0], 16)
    assert first & 1 == 0 and ready['mac'] != '00:00:00:00:00:00', ready['line']
    ping(netns, vm, GUEST_IP, count=10)
    vm.check_no_failures()
    status = vm.stop()
    assert status == 0, vm.diagnostics('SIGTERM: %s' % ferrytest.describe_status(status))
    assert netns.link_exists(tap), 'the existing TAP was removed'


def stream_guest_to_host(spawn_vmm, ns, guest, mib):
    """The guest streams flat out; udpstream.py must receive MIB MiB of good
    datagrams (losses in the host's socket are allowed, corruption is not)."""
    tap = host_tap(ns)
    recv = ns.popen(virtiotest.udpstream_argv(
        'recv', '--bind', '%s:%d' % (HOST_IP, HOST_PORT), '--mib', mib,
        '--timeout', ferrytest.scaled(240), '--idle', 20))
    try:
        vm = boot(spawn_vmm, ns, guest, [{'tap': tap}],
                  'ferry.net.ip=%s/24 ferry.net.peer=%s:%d' % (GUEST_IP, HOST_IP, HOST_PORT))
        wait_net_ready(vm)
        out, err = recv.communicate(timeout=ferrytest.scaled(300))
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    r = virtiotest.parse_udpstream(out, virtiotest.UDPSTREAM_RX_RE)
    assert r is not None, vm.diagnostics('udpstream recv: %s%s' % (out, err))
    assert r['corrupt'] == 0, vm.diagnostics('host received corrupt datagrams: ' + out)
    assert r['rx_mib'] >= mib, vm.diagnostics('host received too little: ' + r['line'])
    s = wait_stats(vm, 'tx_mib', mib, 30)
    assert_stats_clean(vm)
    vm.check_no_failures()
    assert vm.stop() == 0
    return r, s


def stream_host_to_guest(spawn_vmm, ns, guest, mib):
    """The host streams at HOST_TX_RATE Mbit/s in chunks until the guest has
    received MIB MiB of good datagrams; no chunk may arrive corrupt."""
    tap = host_tap(ns)
    vm = boot(spawn_vmm, ns, guest, [{'tap': tap}], 'ferry.net.ip=%s/24' % GUEST_IP)
    wait_net_ready(vm)
    ping(ns, vm, GUEST_IP, count=2)       # ARP done, the guest is polling
    sent = 0
    while True:
        ns.run(virtiotest.udpstream_argv('send', '--to', '%s:%d' % (GUEST_IP, GUEST_PORT),
                                         '--mib', HOST_TX_CHUNK_MIB, '--rate', HOST_TX_RATE),
               timeout=300)
        sent += HOST_TX_CHUNK_MIB
        time.sleep(1.5)       # one more FERRY-NET-STATS line (one per second)
        s = last_stats(vm)
        assert s is not None, vm.diagnostics('no FERRY-NET-STATS line')
        if s['rx_mib'] >= mib:
            break
        assert sent < 3 * mib, vm.diagnostics('sent %d MiB, the guest got %d MiB: %s'
                                              % (sent, s['rx_mib'], s['line']))
    assert_stats_clean(vm)
    vm.check_no_failures()
    assert vm.stop() == 0
    return s


def test_stream_256(spawn_vmm, netns, guest):
    """At least 256 MiB each way without a corrupt datagram (about 17 s with
    ferry-vmm on the PVM development host)."""
    stream_guest_to_host(spawn_vmm, netns, guest, 256)
    netns.ip('link', 'del', 'ftap0')
    stream_host_to_guest(spawn_vmm, netns, guest, 256)


def test_bridge_two_vms(spawn_vmm, netns, guest):
    """Two VMs on a Linux bridge stream to each other at the same time; each
    receives its share intact.  VM A's TAP is made by the test, VM B's by
    ferry-vmm (and then enslaved)."""
    mib = 32
    netns.add_bridge('fbr0')
    netns.address('fbr0', HOST_IP + '/24')
    netns.add_tap('fta0')
    netns.enslave('fta0', 'fbr0')
    netns.up('fta0')
    a = boot(spawn_vmm, netns, guest, [{'tap': 'fta0', 'mac': '52:54:00:a7:00:0a'}],
             'ferry.net.ip=%s/24 ferry.net.peer=%s:%d ferry.net.rate=200'
             % (GUEST_IP, GUEST2_IP, GUEST_PORT))
    b = boot(spawn_vmm, netns, guest, [{'tap': 'ftb0', 'mac': '52:54:00:a7:00:0b'}],
             'ferry.net.ip=%s/24 ferry.net.peer=%s:%d ferry.net.rate=200'
             % (GUEST2_IP, GUEST_IP, GUEST_PORT))
    netns.wait_link('ftb0', proc=b)
    netns.enslave('ftb0', 'fbr0')
    netns.up('ftb0')
    wait_net_ready(a)
    wait_net_ready(b)
    ping(netns, a, GUEST_IP, count=3)
    ping(netns, b, GUEST2_IP, count=3)
    wait_stats(a, 'rx_mib', mib, 180)
    wait_stats(b, 'rx_mib', mib, 180)
    for vm in (a, b):
        assert_stats_clean(vm)
        vm.check_no_failures()
        assert vm.stop() == 0


# -- bad input ------------------------------------------------------------------

def test_tap_not_creatable(vmm_binary, kvm, netns, guest):
    """"lo" exists and is not a TAP: a clear runtime error naming it."""
    res = virtiotest.run(netns.exec_argv([vmm_binary, '--kernel', guest, '--net', 'tap=lo']),
                         timeout=30, check=False)
    check_refused(res, (RUNTIME_ERROR,), [r'\blo\b'])
    assert 'FERRY-GUEST-READY' not in res.stdout


def test_fd_not_open(vmm_binary, kvm, guest):
    res = ferrytest.run_vmm(['--kernel', guest, '--net', 'fd=97'], vmm=vmm_binary)
    check_refused(res, (RUNTIME_ERROR, USAGE_ERROR), ['fd|97'])
    assert 'FERRY-GUEST-READY' not in res.stdout


@pytest.mark.parametrize('spec,keyword', [
    ('mac=52:54:00:00:00:01', 'tap|fd'),
    ('', 'net|tap'),
    ('tap=', 'tap'),
    ('tap=x0,fd=3', 'tap|fd'),
    ('tap=x0,mac=zz:54:00:00:00:01', 'mac'),
    ('tap=x0,mac=52:54:00:00:01', 'mac'),
    ('tap=x0,mac=01:00:5e:00:00:01', 'mac|multicast|unicast'),
    ('tap=x0,mtu=10', 'mtu'),
    ('tap=x0,mtu=70000', 'mtu'),
    ('tap=x0,speed=fast', 'speed'),
    ('fd=-1', 'fd'),
])
def test_malformed_net(vmm_binary, guest, spec, keyword):
    res = ferrytest.run_vmm(['--kernel', guest, '--net', spec], vmm=vmm_binary)
    check_refused(res, (USAGE_ERROR,), [keyword])
    assert 'FERRY-GUEST-READY' not in res.stdout
