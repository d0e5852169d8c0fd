# SPDX-License-Identifier: GPL-2.0-or-later
"""virtio-rng (--rng) and virtio-console (--virtio-console) with the test guest's
exercisers (docs/test-guest.md, "Virtio devices": ferry.rng, ferry.vcon)."""

import socket
import time

import ferrytest
from test_control import Client

RNG_DONE_RE = r'FERRY-RNG-DONE (?P<kv>.*)$'
VCON_READY_RE = r'FERRY-VCON-READY (?P<kv>.*)$'
FAILS = ferrytest.DEFAULT_FAIL_PATTERNS + (
    r'FERRY-RNG-ERROR', r'FERRY-VCON-ERROR', r'ferry-guest: virtio-(rng|console):')


def ints(match):
    return {k: int(v, 0) for k, v in ferrytest.parse_kv(match.group('kv')).items()}


class Port:
    """Client of `--virtio-console socket=PATH`: the guest's port 0."""

    def __init__(self, path, timeout=30):
        deadline = time.monotonic() + ferrytest.scaled(timeout)
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b''

    def send(self, data):
        self.sock.sendall(data)

    def read_lines(self, count, timeout=30):
        """Reads until COUNT complete lines arrived; returns them (without
        newlines) and keeps any rest.  Fails with what came so far on timeout."""
        deadline = time.monotonic() + ferrytest.scaled(timeout)
        while self.buf.count(b'\n') < count:
            left = deadline - time.monotonic()
            assert left > 0, 'port: %d of %d lines after %.0f s: %r' % (
                self.buf.count(b'\n'), count, ferrytest.scaled(timeout), self.buf[-400:])
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            assert chunk, 'port: connection closed after %r' % self.buf[-400:]
            self.buf += chunk
        lines = self.buf.split(b'\n')
        self.buf = b'\n'.join(lines[count:])
        return [l.decode('ascii', 'replace') for l in lines[:count]]

    def read_echoes(self, count, timeout=30):
        """Like read_lines, without the HELLO lines the guest may still have
        sent before our first input reached it."""
        out = []
        while len(out) < count:
            out += [l for l in self.read_lines(1, timeout) if l != 'FERRY-VCON-HELLO']
        return out

    def expect_quiet(self, seconds):
        """Asserts that nothing arrives for SECONDS."""
        self.sock.settimeout(seconds)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return
        assert not chunk and not self.buf, 'port: unexpected %r' % (self.buf + chunk)

    def close(self):
        self.sock.close()


def test_rng_reads(spawn_vmm, guest_kernel):
    vm = spawn_vmm(guest_kernel, cmdline='ferry.quiet ferry.rng=65536', memory='256M',
                   extra=['--rng'])
    vm.fail_patterns = list(FAILS)
    vm.wait_ready()
    d = ints(vm.wait_for(RNG_DONE_RE))
    assert d['bytes'] == 65536, d
    # 524288 bits: one standard deviation of the share of ones is 0.7 permille.
    assert 490 <= d['ones_permille'] <= 510, d
    assert d['distinct_bytes'] == 256, d
    vm.check_no_failures()


def test_rng_large(spawn_vmm, guest_kernel):
    """8 MiB in 4 KiB requests: every byte arrives and the statistics tighten."""
    vm = spawn_vmm(guest_kernel, cmdline='ferry.quiet ferry.rng=8388608', memory='256M',
                   extra=['--rng'])
    vm.fail_patterns = list(FAILS)
    d = ints(vm.wait_for(RNG_DONE_RE))
    assert d['bytes'] == 8388608 and d['distinct_bytes'] == 256, d
    assert 498 <= d['ones_permille'] <= 502, d


def test_rng_absent(spawn_vmm, guest_kernel):
    vm = spawn_vmm(guest_kernel, cmdline='ferry.quiet ferry.rng=4096', memory='256M')
    vm.wait_for(r'FERRY-RNG-ERROR no device')
    vm.wait_ready()


def start_console(spawn_vmm, kernel, tmp_path, extra=()):
    path = str(tmp_path / 'vcon.sock')
    vm = spawn_vmm(kernel, cmdline='ferry.quiet ferry.vcon', memory='256M',
                   extra=['--virtio-console', 'socket=' + path] + list(extra))
    vm.fail_patterns = list(FAILS)
    port = Port(path)
    d = ints(vm.wait_for(VCON_READY_RE))
    assert d['cols'] == 80 and d['rows'] == 25, d
    # F_SIZE and EMERG_WRITE offered, never MULTIPORT (bit 1).
    assert d['features'] & 0b101 == 0b101 and not d['features'] & 0b10, d
    vm.wait_ready()
    # Repeated once a second until the guest hears from us: the socket client
    # may have been accepted after the first one was written.
    assert port.read_lines(1) == ['FERRY-VCON-HELLO']
    return vm, port


def test_console_hello_and_echo(spawn_vmm, guest_kernel, tmp_path):
    vm, port = start_console(spawn_vmm, guest_kernel, tmp_path)
    port.send(b'hello world\r\n')
    assert port.read_echoes(1) == ['FERRY-VCON-ECHO hello world']
    port.send(b'lf only\ncr only\rlast\r\n')
    assert port.read_echoes(3) == ['FERRY-VCON-ECHO lf only', 'FERRY-VCON-ECHO cr only',
                                  'FERRY-VCON-ECHO last']
    vm.check_no_failures()
    port.close()


def test_console_bulk_input_not_dropped(spawn_vmm, guest_kernel, tmp_path):
    """About 60 KiB at once: far more than the guest's 16 receive buffers of 256
    bytes, so the device must hold input back until buffers are posted again."""
    vm, port = start_console(spawn_vmm, guest_kernel, tmp_path)
    lines = ['bulk %05d %s' % (i, chr(ord('a') + i % 26) * 180) for i in range(300)]
    port.send(''.join(l + '\n' for l in lines).encode())
    assert port.read_echoes(len(lines), timeout=60) == ['FERRY-VCON-ECHO ' + l for l in lines]
    vm.check_no_failures()
    port.close()


def test_console_input_while_paused(spawn_vmm, tmp_path):
    """Input sent while the VM is paused is neither lost nor delivered before
    resume."""
    ctl = str(tmp_path / 'ctl.sock')
    vm, port = start_console(spawn_vmm, ferrytest.guest_elf_path(), tmp_path,
                             extra=['--control-socket', ctl])
    c = Client(ctl)
    port.send(b'before\n')            # from now on the guest sends no HELLO
    assert port.read_echoes(1) == ['FERRY-VCON-ECHO before']
    assert 'error' not in c.call('pause')
    lines = ['paused %03d %s' % (i, 'z' * 90) for i in range(100)]
    port.send(''.join(l + '\n' for l in lines).encode())
    port.expect_quiet(1.5)
    assert 'error' not in c.call('resume')
    assert port.read_echoes(len(lines), timeout=60) == ['FERRY-VCON-ECHO ' + l for l in lines]
    port.send(b'after\n')
    assert port.read_echoes(1) == ['FERRY-VCON-ECHO after']
    vm.check_no_failures()
    c.close()
    port.close()


def test_console_reconnect(spawn_vmm, guest_kernel, tmp_path):
    """A new socket client replaces the old one; input keeps flowing."""
    vm, port = start_console(spawn_vmm, guest_kernel, tmp_path)
    port.close()
    port = Port(str(tmp_path / 'vcon.sock'))
    port.send(b'second client\n')
    assert port.read_echoes(1) == ['FERRY-VCON-ECHO second client']
    vm.check_no_failures()
    port.close()
