# SPDX-License-Identifier: GPL-2.0-or-later
"""The control API (docs/control-api.md) driving a running test guest."""

import json
import os
import socket
import time

import ferrytest


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


def start_guest(spawn_vmm, tmp_path, cmdline):
    path = str(tmp_path / 'ctl.sock')
    vm = spawn_vmm(ferrytest.guest_elf_path(), cmdline=cmdline, memory='256M',
                   extra=['--control-socket', path])
    vm.wait_ready()
    return vm, Client(path)


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
