# SPDX-License-Identifier: GPL-2.0-or-later
"""Helpers for Ferry's system tests: find the binaries, run a guest, read its
console, wait for lines, stop it.

Used by the pytest files in this directory (through conftest.py), by
tests/bench/boot and by tests/linux.  Standard library only.

Binaries come from the environment that meson sets for `meson test`:

  FERRY_VMM            ferry-vmm
  FERRY_GUEST_ELF      the test guest as PVH ELF
  FERRY_GUEST_BZIMAGE  the test guest as bzImage
  FERRY_BUILD_DIR      the build directory (logs, caches)

For manual runs (`python3 -m pytest tests/system`) they default to the
matching paths under <repo>/build.

Timeouts are in seconds.  They are generous on purpose: on hosts where
/dev/kvm is a software hypervisor (PVM) guest kernel code is emulated, and a
boot can take several seconds.  FERRY_TEST_TIMEOUT_SCALE multiplies all of
them (e.g. 3 for a sanitizer build on a slow machine).
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Seconds to reach FERRY-GUEST-READY from process start.
BOOT_TIMEOUT = 60
# Seconds between two heartbeats at most (the guest prints one per second).
HEARTBEAT_TIMEOUT = 30
# Seconds for ferry-vmm to exit after SIGTERM before we use SIGKILL.
STOP_TIMEOUT = 15
# Console lines quoted in an error message.
TAIL_LINES = 40

# Lines that fail a wait immediately, whatever is being waited for.
DEFAULT_FAIL_PATTERNS = (r'FERRY-GUEST-PANIC', r'FERRY-CORRUPTION')

# Not anchored: under QEMU -M pc the line follows firmware output without a
# newline ("Booting from ROM..FERRY-GUEST-READY ...").
READY_RE = (r'FERRY-GUEST-READY uptime_ms=(?P<uptime_ms>\d+) '
            r'cpus=(?P<cpus>\d+) mem_mib=(?P<mem_mib>\d+) '
            r'entry=(?P<entry>\w+)')
HEARTBEAT_RE = r'^FERRY-HEARTBEAT (?P<kv>.*)$'
WORKSET_RE = (r'^FERRY-WORKSET base=(?P<base>0x[0-9a-fA-F]+) '
              r'size=(?P<size>0x[0-9a-fA-F]+) cpus=(?P<cpus>\d+)')


def timeout_scale():
    try:
        return max(float(os.environ.get('FERRY_TEST_TIMEOUT_SCALE', '1')),
                   0.1)
    except ValueError:
        return 1.0


def scaled(seconds):
    return seconds * timeout_scale()


def build_dir():
    return os.environ.get('FERRY_BUILD_DIR') or os.path.join(REPO_ROOT,
                                                              'build')


def _path(env, *default):
    p = os.environ.get(env)
    if p:
        return p
    return os.path.join(build_dir(), *default)


def vmm_path():
    return _path('FERRY_VMM', 'vmm', 'ferry-vmm')


def guest_elf_path():
    return _path('FERRY_GUEST_ELF', 'tests', 'guest', 'ferry-guest.elf')


def guest_bzimage_path():
    return _path('FERRY_GUEST_BZIMAGE', 'tests', 'guest',
                 'ferry-guest.bzImage')


def guest_path(entry):
    """Test guest image for ENTRY 'pvh' or 'bzimage'."""
    return {'pvh': guest_elf_path, 'bzimage': guest_bzimage_path}[entry]()


def kvm_usable():
    """Return None if /dev/kvm can be opened read-write, else the reason."""
    try:
        fd = os.open('/dev/kvm', os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return '/dev/kvm: %s' % e.strerror
    os.close(fd)
    return None


def parse_kv(text):
    """'a=1 b=0x10 c=x' -> {'a': '1', 'b': '0x10', 'c': 'x'}."""
    return dict(w.split('=', 1) for w in text.split() if '=' in w)


def describe_status(status):
    if status is None:
        return 'still running'
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = 'signal %d' % -status
        return 'killed by %s' % name
    return 'exit status %d' % status


class GuestError(AssertionError):
    """A wait on a guest failed; the message carries the console tail."""


class Console:
    """Collects the lines a guest prints, from any number of byte streams.

    Lines are stored with their arrival time (time.monotonic()) so callers
    can measure when something appeared.  Carriage returns are dropped.
    """

    def __init__(self):
        self.cond = threading.Condition()
        self.lines = []          # list of str
        self.times = []          # monotonic arrival time per line
        self.open_sources = 0
        self.threads = []

    def feed_line(self, line):
        with self.cond:
            self.lines.append(line)
            self.times.append(time.monotonic())
            self.cond.notify_all()

    def _reader(self, read_chunk, on_eof=None):
        buf = b''
        try:
            while True:
                try:
                    chunk = read_chunk()
                except (OSError, ValueError):
                    chunk = b''
                if not chunk:
                    break
                buf += chunk
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    self.feed_line(line.decode('utf-8', 'replace')
                                   .replace('\r', ''))
            if buf:
                self.feed_line(buf.decode('utf-8', 'replace')
                               .replace('\r', ''))
        finally:
            if on_eof:
                on_eof()
            with self.cond:
                self.open_sources -= 1
                self.cond.notify_all()

    def attach(self, read_chunk, name='console', on_eof=None):
        """Read from READ_CHUNK() (returns bytes, b'' on EOF) in a thread."""
        with self.cond:
            self.open_sources += 1
        t = threading.Thread(target=self._reader, args=(read_chunk, on_eof),
                             name=name, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    def snapshot(self):
        with self.cond:
            return list(self.lines)


class GuestProcess:
    """A process whose stdout is a guest console (ferry-vmm or QEMU).

    stdin, stdout and stderr are pipes.  stdout is read line by line into
    self.console; stderr is collected into self.stderr_lines.

    wait_for() consumes lines: each call searches from just after the line
    the previous successful wait_for() matched, so two calls with the same
    pattern find two different lines.
    """

    def __init__(self, argv, name='guest', env=None, log_path=None):
        self.argv = [str(a) for a in argv]
        self.name = name
        self.env = env
        self.log_path = log_path
        self.proc = None
        self.console = Console()
        self.stderr_lines = []
        self.stderr_done = threading.Event()
        self.pos = 0
        self.start_time = None
        self.fail_patterns = list(DEFAULT_FAIL_PATTERNS)
        self.extra_writers = []

    # -- life cycle -------------------------------------------------------

    def start(self):
        self.start_time = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=self.env,
                                     close_fds=True)
        out = self.proc.stdout
        self.console.attach(lambda: os.read(out.fileno(), 65536),
                            name=self.name + '-stdout')
        err = self.proc.stderr
        t = threading.Thread(target=self._stderr_reader, args=(err,),
                             name=self.name + '-stderr', daemon=True)
        t.start()
        return self

    def _stderr_reader(self, err):
        try:
            for raw in iter(err.readline, b''):
                self.stderr_lines.append(
                    raw.decode('utf-8', 'replace').rstrip('\r\n'))
        except (OSError, ValueError):
            pass
        finally:
            self.stderr_done.set()
            with self.console.cond:
                self.console.cond.notify_all()

    @property
    def pid(self):
        return self.proc.pid

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, line):
        """Type LINE plus a newline on the guest's serial input."""
        data = (line + '\n').encode()
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_exit(self, timeout):
        """Wait for the process to end; return its status (negative: signal).

        Raises GuestError (with the console tail) if it is still running after
        TIMEOUT seconds; the process is left running for the caller's cleanup.
        """
        try:
            status = self.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            raise GuestError(self.diagnostics(
                'still running %.0f s after waiting for it to exit'
                % scaled(timeout))) from None
        self._drain()
        return status

    def _drain(self, timeout=5):
        for t in self.console.threads:
            t.join(timeout)
        self.stderr_done.wait(timeout)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL after TIMEOUT s.  Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain()
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        """Stop the process if needed and release pipes; write the log."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.stop()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except (OSError, BrokenPipeError):
                pass
        self.write_log()

    def write_log(self):
        if not self.log_path:
            return
        try:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, 'w') as f:
                f.write('# argv: %s\n' % ' '.join(self.argv))
                f.write('# %s\n' % describe_status(self.returncode))
                for t, line in zip(self.console.times, self.console.lines):
                    f.write('%9.3f %s\n' % (t - self.start_time, line))
                f.write('# stderr:\n')
                for line in self.stderr_lines:
                    f.write(line + '\n')
        except OSError:
            pass

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- console ----------------------------------------------------------

    def diagnostics(self, what):
        lines = self.console.snapshot()
        tail = lines[-TAIL_LINES:]
        elapsed = (time.monotonic() - self.start_time) if self.start_time \
            else 0
        msg = ['%s: %s' % (self.name, what),
               'command: %s' % ' '.join(self.argv),
               'process: %s after %.1f s' % (describe_status(self.returncode),
                                             elapsed),
               '--- last %d of %d console lines ---' % (len(tail),
                                                         len(lines))]
        msg += tail
        msg.append('--- stderr (%d lines) ---' % len(self.stderr_lines))
        msg += self.stderr_lines[-TAIL_LINES:]
        if self.log_path:
            msg.append('--- full log: %s ---' % self.log_path)
        return '\n'.join(msg)

    def wait_for(self, pattern, timeout=BOOT_TIMEOUT, since=None,
                 fail_patterns=None):
        """Wait for a console line matching regex PATTERN (re.search).

        Searches from the current position (or line index SINCE) and returns
        the re.Match; the next wait_for starts after the matched line.
        Raises GuestError after TIMEOUT seconds (scaled), when the console
        closes (the process exited) or when a line matches one of the fail
        patterns (default: FERRY-GUEST-PANIC, FERRY-CORRUPTION).
        """
        rx = re.compile(pattern)
        fails = [re.compile(p) for p in (self.fail_patterns
                                         if fail_patterns is None
                                         else fail_patterns)]
        deadline = time.monotonic() + scaled(timeout)
        i = self.pos if since is None else since
        c = self.console
        with c.cond:
            while True:
                while i < len(c.lines):
                    line = c.lines[i]
                    for f in fails:
                        if f.search(line):
                            raise GuestError(self.diagnostics(
                                'failure line while waiting for /%s/: %s'
                                % (pattern, line)))
                    m = rx.search(line)
                    i += 1
                    if m:
                        self.pos = i
                        self.last_match_time = c.times[i - 1]
                        return m
                if c.open_sources == 0 and self.stderr_done.is_set():
                    # Every source hit EOF: nothing more will come.
                    if self.proc is not None:
                        try:
                            self.proc.wait(timeout=2)
                        except subprocess.TimeoutExpired:
                            pass
                    raise GuestError(self.diagnostics(
                        'console closed while waiting for /%s/' % pattern))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestError(self.diagnostics(
                        'timed out after %.0f s waiting for /%s/'
                        % (scaled(timeout), pattern)))
                c.cond.wait(min(left, 1.0))

    def find_all(self, pattern, since=0):
        """All matches of PATTERN in the console lines seen so far."""
        rx = re.compile(pattern)
        out = []
        for line in self.console.snapshot()[since:]:
            m = rx.search(line)
            if m:
                out.append(m)
        return out

    def check_no_failures(self):
        """Raise GuestError if any line so far matches a fail pattern."""
        for p in self.fail_patterns:
            hits = self.find_all(p)
            if hits:
                raise GuestError(self.diagnostics(
                    'failure line on the console: %s' % hits[0].string))

    # -- test guest protocol ----------------------------------------------

    def wait_ready(self, timeout=BOOT_TIMEOUT):
        """Wait for FERRY-GUEST-READY; returns a dict with ints for
        uptime_ms, cpus, mem_mib and the string entry."""
        m = self.wait_for(READY_RE, timeout)
        d = m.groupdict()
        return {'uptime_ms': int(d['uptime_ms']), 'cpus': int(d['cpus']),
                'mem_mib': int(d['mem_mib']), 'entry': d['entry'],
                'line': m.string}

    def wait_heartbeat(self, timeout=HEARTBEAT_TIMEOUT):
        """Wait for the next FERRY-HEARTBEAT; return its key=value dict
        (values as int where they parse as such)."""
        m = self.wait_for(HEARTBEAT_RE, timeout)
        d = {}
        for k, v in parse_kv(m.group('kv')).items():
            try:
                d[k] = int(v, 0)
            except ValueError:
                d[k] = v
        d['line'] = m.string
        return d

    def wait_workset(self, timeout=BOOT_TIMEOUT):
        """Wait for FERRY-WORKSET, searching from the first console line
        (the guest prints it before READY)."""
        m = self.wait_for(WORKSET_RE, timeout, since=0)
        return {'base': int(m.group('base'), 16),
                'size': int(m.group('size'), 16),
                'cpus': int(m.group('cpus')), 'line': m.string}


class Vmm(GuestProcess):
    """ferry-vmm with a kernel, serial console on stdio unless told.

    Vmm(kernel, cmdline='ferry.quiet', memory='256M', cpus=1,
        serial=None, extra=['--on-reboot', 'exit'])
    Only the options given are passed, so ferry-vmm's defaults apply
    otherwise.  Call start() (or use it as a context manager).
    """

    def __init__(self, kernel, cmdline=None, memory=None, cpus=None,
                 serial=None, initrd=None, extra=(), vmm=None, name=None,
                 log_path=None, env=None):
        argv = [vmm or vmm_path(), '--kernel', kernel]
        if initrd is not None:
            argv += ['--initrd', initrd]
        if cmdline is not None:
            argv += ['--cmdline', cmdline]
        if memory is not None:
            argv += ['--memory', str(memory)]
        if cpus is not None:
            argv += ['--cpus', str(cpus)]
        if serial is not None:
            argv += ['--serial', serial]
        argv += list(extra)
        super().__init__(argv, name=name or 'ferry-vmm', env=env,
                         log_path=log_path)


class SocketConsole:
    """Client of `ferry-vmm --serial socket=PATH`, feeding a Console."""

    def __init__(self, path, console, timeout=BOOT_TIMEOUT):
        deadline = time.monotonic() + scaled(timeout)
        last = None
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError as e:
                s.close()
                last = e
            if time.monotonic() > deadline:
                raise GuestError('cannot connect to serial socket %s: %s'
                                 % (path, last))
            time.sleep(0.05)
        self.sock = s
        console.attach(lambda: s.recv(65536), name='serial-socket')

    def send(self, line):
        self.sock.sendall((line + '\n').encode())

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def run_vmm(args, timeout=30, vmm=None):
    """Run ferry-vmm ARGS to completion (for error cases).

    Returns subprocess.CompletedProcess with text stdout/stderr; raises
    GuestError if it has not exited after TIMEOUT seconds (then it is
    killed)."""
    argv = [vmm or vmm_path()] + [str(a) for a in args]
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True,
                              errors='replace', timeout=scaled(timeout))
    except subprocess.TimeoutExpired as e:
        raise GuestError('%s did not exit within %.0f s\nstdout: %s\n'
                         'stderr: %s' % (' '.join(argv), scaled(timeout),
                                         e.stdout, e.stderr)) from None
