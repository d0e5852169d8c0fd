# SPDX-License-Identifier: GPL-2.0-or-later
"""The control API (docs/control-api.md) driving a running test guest."""

import json
import os
import shutil
import socket
import time

import ferrytest
import virtiotest
from test_net import GUEST_IP, host_tap, netns, ping  # noqa: F401 (netns is a fixture)


class Client:
    """A JSON-RPC 2.0 client on ferry-vmm's control socket."""

    def __init__(self, path, timeout=30):
        deadline = time.monotonic() + ferrytest.scaled(timeout)
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(ferrytest.scaled(timeout))
        self.file = self.sock.makefile('rwb')
        self.notifications = []
        self.next_id = 1

    def send_raw(self, data):
        self.file.write(data)
        self.file.flush()

    def read(self):
        line = self.file.readline()
        assert line, 'control connection closed'
        return json.loads(line)

    def call(self, method, **params):
        rid = self.next_id
        self.next_id += 1
        req = {'jsonrpc': '2.0', 'method': method, 'id': rid}
        if params:
            req['params'] = params
        self.send_raw(json.dumps(req).encode() + b'\n')
        while True:
            msg = self.read()
            if 'id' not in msg:
                self.notifications.append(msg)
                continue
            assert msg['id'] == rid, msg
            return msg

    def close(self):
        self.file.close()
        self.sock.close()


def start_guest(spawn_vmm, tmp_path, cmdline, extra=(), kernel=None, **kw):
    path = str(tmp_path / 'ctl.sock')
    vm = spawn_vmm(kernel or ferrytest.guest_elf_path(), cmdline=cmdline, memory='256M',
                   extra=['--control-socket', path] + list(extra), **kw)
    vm.fail_patterns = list(virtiotest.FAIL_PATTERNS)
    vm.wait_ready()
    return vm, Client(path)


def read_to_end(client):
    """The client's notifications so far plus every message until the
    server closes the connection."""
    msgs = list(client.notifications)
    while True:
        line = client.file.readline()
        if not line:
            return msgs
        msgs.append(json.loads(line))


def states(msgs):
    return [m['params'] for m in msgs if m.get('method') == 'state-changed']


def test_query_pause_resume(spawn_vmm, tmp_path):
    vm, c = start_guest(spawn_vmm, tmp_path, 'ferry.quiet ferry.dirty=32 ferry.rate=16')
    st = c.call('query-status')['result']
    assert st == {'status': 'running', 'name': 'ferry', 'vcpus': 1, 'memory': 256 << 20}
    vm.wait_heartbeat()

    assert c.call('pause') == {'jsonrpc': '2.0', 'result': None, 'id': 2}
    assert c.notifications[-1]['params'] == {'status': 'paused'}
    assert c.call('query-status')['result']['status'] == 'paused'
    mark = len(vm.console.snapshot())
    time.sleep(3)
    paused_lines = vm.console.snapshot()[mark:]
    assert not [l for l in paused_lines if 'FERRY-HEARTBEAT' in l], paused_lines

    c.call('resume')
    assert c.notifications[-1]['params'] == {'status': 'running'}
    # The first heartbeat after the pause shows it as a gap of about 3 s in the workload.
    m = vm.wait_for(ferrytest.HEARTBEAT_RE, since=mark)
    hb = ferrytest.parse_kv(m.group('kv'))
    assert int(hb['gap_us']) >= 2_500_000, m.string
    vm.wait_heartbeat()
    vm.check_no_failures()
    c.close()


def test_bad_requests(spawn_vmm, tmp_path):
    vm, c = start_guest(spawn_vmm, tmp_path, 'ferry.quiet ferry.heartbeat')
    c.send_raw(b'this is not json\n')
    assert c.read()['error']['code'] == -32700
    c.send_raw(b'[1, 2, 3]\n')
    assert c.read()['error']['code'] == -32600
    c.send_raw(b'{"jsonrpc": "2.0", "id": 7}\n')
    r = c.read()
    assert r['error']['code'] == -32600 and r['id'] == 7
    c.send_raw(b'{"jsonrpc": "2.0", "method": "pause", "params": [1], "id": 8}\n')
    assert c.read()['error']['code'] == -32602
    c.send_raw(b'{"jsonrpc": "2.0", "method": "stats", "params": "x", "id": 9}\n')
    assert c.read()['error']['code'] == -32602
    c.send_raw(b'{"jsonrpc": "2.0", "method": 5, "id": 10}\n')
    assert c.read()['error']['code'] == -32600
    c.send_raw(b'{"jsonrpc": "2.0", "method": "stats", "id": 11\n')  # cut short
    assert c.read()['error']['code'] == -32700
    assert c.call('no-such-method')['error']['code'] == -32601
    assert c.call('query-status')['result']['status'] == 'running'

    # An oversized request closes only that connection.
    other = Client(str(tmp_path / 'ctl.sock'))
    try:
        c.sock.sendall(b'{"x": "' + b'a' * (2 << 20))
    except BrokenPipeError:
        pass  # the server stopped reading after 1 MiB, as it should
    err = c.read()
    assert err['error']['code'] == -32600 and '1 MiB' in err['error']['message']
    try:
        assert c.file.readline() == b''  # closed by the server
    except ConnectionResetError:
        pass  # closed with our unread bytes in its buffer: the kernel says "reset"
    assert other.call('query-status')['result']['status'] == 'running'
    vm.wait_heartbeat()
    assert vm.running()
    other.close()
    c.close()


def test_reset_and_quit(spawn_vmm, tmp_path):
    vm, c = start_guest(spawn_vmm, tmp_path, 'ferry.quiet')
    watcher = Client(str(tmp_path / 'ctl.sock'))
    watcher.call('query-status')  # registered with the server before the reset
    mark = len(vm.console.snapshot())
    c.call('reset')
    vm.wait_for(ferrytest.READY_RE, since=mark)
    assert c.call('quit')['result'] is None
    assert vm.wait_exit(30) == 0
    # Every client saw the reset and the final shutdown notification.
    msgs = watcher.notifications
    while True:
        line = watcher.file.readline()
        if not line:
            break
        msgs.append(json.loads(line))
    states = [m['params'] for m in msgs if m.get('method') == 'state-changed']
    assert {'status': 'reset'} in states, states
    assert states[-1] == {'status': 'shutdown', 'reason': 'stopped'}, states
    assert not os.path.exists(str(tmp_path / 'ctl.sock'))
    watcher.close()
    c.close()


def test_query_config(spawn_vmm, tmp_path):
    """query-config gives back the command line, with the slots the devices
    really got; several clients get the same answers."""
    ro = virtiotest.make_image(tmp_path / 'ro.img', 4)
    rw = virtiotest.make_image(tmp_path / 'rw.img', 8)
    cmdline = 'ferry.quiet ferry.heartbeat'
    vm, c = start_guest(spawn_vmm, tmp_path, cmdline, cpus=2, extra=[
        '--name', 'cfgvm', '--on-reboot', 'exit', '--rng',
        '--disk', virtiotest.disk_spec(rw, serial='SER-1', slot=7),
        '--disk', virtiotest.disk_spec(ro, readonly=True)])
    other = Client(str(tmp_path / 'ctl.sock'))
    cfg = c.call('query-config')['result']
    assert other.call('query-config')['result'] == cfg
    assert cfg == {
        'name': 'cfgvm',
        'kernel': ferrytest.guest_elf_path(),
        'initrd': None,
        'cmdline': cmdline,
        'memory': 256 << 20,
        'vcpus': 2,
        'serial': 'stdio',
        'control_socket': str(tmp_path / 'ctl.sock'),
        'on_reboot': 'exit',
        'disks': [
            {'id': 'disk0', 'path': str(rw), 'readonly': False, 'serial': 'SER-1',
             'slot': 7, 'capacity': 8 << 20},
            # the first free slot, as given out in command-line order
            {'id': 'disk1', 'path': str(ro), 'readonly': True, 'serial': None,
             'slot': 1, 'capacity': 4 << 20},
        ],
        'nets': [],
        'rng': {'id': 'rng0', 'slot': 2},
        'virtio_console': None,
    }, cfg
    # The stats list the same devices, and a request from one client does not
    # disturb the other's.
    st = other.call('stats')['result']
    assert [d['id'] for d in st['disks']] == ['disk0', 'disk1'] and st['nets'] == []
    assert [v['index'] for v in st['vcpus']] == [0, 1]
    assert c.call('query-status')['result']['name'] == 'cfgvm'
    vm.check_no_failures()
    other.close()
    c.close()


def stats(client):
    return client.call('stats')['result']


def test_stats_grow(spawn_vmm, tmp_path):
    """vCPU and VMM CPU time grow while the guest works and the vCPU times
    stand still while it is paused; the disk counters grow with the disk
    exerciser; resident guest RAM covers the workload's working set."""
    img = virtiotest.make_image(tmp_path / 'disk.img', 8)
    vm, c = start_guest(
        spawn_vmm, tmp_path,
        'ferry.quiet ferry.dirty=32 ferry.rate=16 ferry.blk=loop ferry.blk.mib=4',
        cpus=2, extra=['--disk', virtiotest.disk_spec(img)])
    vm.wait_for(virtiotest.BLK_DONE_RE, 60)
    vm.wait_heartbeat()
    a = stats(c)
    time.sleep(2)
    b = stats(c)
    assert b['time_ns'] - a['time_ns'] >= 2e9 * 0.9
    for va, vb in zip(a['vcpus'], b['vcpus']):
        assert vb['cpu_time_ns'] > va['cpu_time_ns'] > 0, (a, b)
    for key in ('user_time_ns', 'system_time_ns'):
        assert b['vmm'][key] >= a['vmm'][key], (a, b)
    assert sum(b['vmm'].values()) > sum(a['vmm'].values()), (a, b)
    # The vCPU threads' time is part of the process's.
    assert sum(b['vmm'].values()) >= sum(v['cpu_time_ns'] for v in b['vcpus']) * 0.95, b
    mem = b['memory']
    assert mem['configured_bytes'] == 256 << 20
    assert 32 << 20 <= mem['resident_bytes'] <= mem['configured_bytes'], mem
    da, db = a['disks'][0], b['disks'][0]
    assert da['id'] == 'disk0' and da['errors'] == 0 and db['errors'] == 0, (da, db)
    for key in ('read_requests', 'write_requests', 'read_bytes', 'write_bytes'):
        assert db[key] > da[key], (key, da, db)
    assert db['flush_requests'] >= da['flush_requests']
    # The exerciser's requests are 1 MiB at most, in whole sectors.
    assert db['write_bytes'] <= db['write_requests'] * (1 << 20), db
    assert db['read_bytes'] % 512 == 0 and db['write_bytes'] % 512 == 0, db

    c.call('pause')
    p1 = stats(c)
    time.sleep(1)
    p2 = stats(c)
    for v1, v2 in zip(p1['vcpus'], p2['vcpus']):
        # a parked thread uses no CPU (allow a few ms for the wakeup path)
        assert v2['cpu_time_ns'] - v1['cpu_time_ns'] < 20_000_000, (p1, p2)
    assert p2['disks'][0]['write_requests'] == p1['disks'][0]['write_requests']
    c.call('resume')
    vm.wait_heartbeat()
    vm.check_no_failures()
    c.close()


def test_stats_net(spawn_vmm, netns, tmp_path):
    """query-config names the NIC's real TAP, MAC, MTU and slot; the device
    and TAP counters count the host's pings."""
    tap = host_tap(netns)
    mac = '52:54:00:c7:00:05'
    path = str(tmp_path / 'ctl.sock')
    vm = spawn_vmm(ferrytest.guest_elf_path(), start=False, memory='256M',
                   cmdline='ferry.quiet ferry.net.ip=%s/24' % GUEST_IP,
                   extra=['--control-socket', path,
                          '--net', virtiotest.net_spec(tap, mac=mac, slot=4)])
    vm.argv = netns.exec_argv(vm.argv)
    vm.fail_patterns = list(virtiotest.FAIL_PATTERNS)
    vm.start()
    vm.wait_ready()
    c = Client(path)
    nets = c.call('query-config')['result']['nets']
    assert nets == [{'id': 'net0', 'fd': None, 'ifname': tap, 'mac': mac, 'mtu': 1500,
                     'slot': 4}], nets
    a = stats(c)['nets'][0]
    ping(netns, vm, GUEST_IP, count=10)
    b = stats(c)['nets'][0]
    assert b['id'] == 'net0' and b['ifname'] == tap
    assert b['rx_packets'] - a['rx_packets'] >= 10, (a, b)  # the echo requests
    assert b['tx_packets'] - a['tx_packets'] >= 10, (a, b)  # the replies
    assert b['rx_dropped'] == 0 and b['tx_dropped'] == 0, b
    # The TAP's counters, from the host's side: it sent the requests and
    # received the replies, each UDP datagram plus headers.
    assert b['tap']['tx_packets'] - a['tap']['tx_packets'] >= 10, (a, b)
    assert b['tap']['rx_packets'] - a['tap']['rx_packets'] >= 10, (a, b)
    assert b['tap']['rx_bytes'] - a['tap']['rx_bytes'] >= 10 * 42, (a, b)
    assert b['tap']['tx_bytes'] - a['tap']['tx_bytes'] >= 10 * 42, (a, b)
    vm.check_no_failures()
    c.close()
    assert vm.stop() == 0


def test_powerdown(spawn_vmm, tmp_path):
    """powerdown presses the ACPI power button: pressed while paused, the
    test guest sees it once resumed, powers off, every client hears
    shutdown/poweroff and ferry-vmm exits with 0."""
    vm, c = start_guest(spawn_vmm, tmp_path, 'ferry.quiet ferry.heartbeat', cpus=2)
    watcher = Client(str(tmp_path / 'ctl.sock'))
    watcher.call('query-status')
    c.call('pause')
    assert c.call('powerdown') == {'jsonrpc': '2.0', 'result': None, 'id': 2}
    time.sleep(1)
    assert vm.running() and not vm.find_all(r'FERRY-GUEST-POWERBUTTON'), \
        vm.diagnostics('the paused guest handled the button')
    c.call('resume')
    vm.wait_for(r'^FERRY-GUEST-POWERBUTTON$', 30)
    assert vm.wait_exit(30) == 0
    for client in (c, watcher):
        assert states(read_to_end(client)) == [
            {'status': 'paused'}, {'status': 'running'},
            {'status': 'shutdown', 'reason': 'poweroff'}]
    vm.check_no_failures()
    watcher.close()
    c.close()


def test_crashed(spawn_vmm, tmp_path):
    """A machine reset that cannot reload the kernel (its file is gone) is
    fatal: clients hear shutdown/crashed and ferry-vmm exits with 1."""
    kernel = tmp_path / 'guest.elf'
    shutil.copy(ferrytest.guest_elf_path(), kernel)
    vm, c = start_guest(spawn_vmm, tmp_path, 'ferry.quiet ferry.heartbeat', kernel=str(kernel))
    os.unlink(kernel)
    assert c.call('reset')['result'] is None
    assert vm.wait_exit(30) == 1
    assert states(read_to_end(c)) == [{'status': 'shutdown', 'reason': 'crashed'}]
    assert any('machine reset failed' in l and 'guest.elf' in l for l in vm.stderr_lines), \
        vm.stderr_lines
    c.close()
