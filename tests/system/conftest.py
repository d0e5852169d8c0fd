# SPDX-License-Identifier: GPL-2.0-or-later
"""pytest fixtures for Ferry's system tests.

  spawn_vmm(kernel, **kw)  start a ferrytest.Vmm; it is stopped (SIGTERM,
                           then SIGKILL) and its console log written to
                           <build>/tests/system/logs/<test>.log at teardown
  guest_entry              'pvh' or 'bzimage' (tests using it run for both)
  guest_kernel             the test guest image for guest_entry
"""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferrytest  # noqa: E402


def pytest_configure(config):
    # meson runs files with slow tests twice: suite 'system' with -m 'not slow',
    # suite 'slow' with -m slow (tests/system/meson.build).
    config.addinivalue_line('markers', 'slow: long case, run in the slow suite only')


# Text that means a sanitizer (-Dsanitize=true builds) found a bug.
SANITIZER_MARKS = ('AddressSanitizer', 'LeakSanitizer',
                   'UndefinedBehaviorSanitizer', 'runtime error:')


def _require_file(path, what):
    if not os.path.isfile(path):
        pytest.fail('%s not found at %s (build it with ninja, or set the '
                    'environment variable as meson test does)' % (what, path),
                    pytrace=False)


@pytest.fixture(scope='session')
def vmm_binary():
    path = ferrytest.vmm_path()
    _require_file(path, 'ferry-vmm')
    return path


@pytest.fixture(scope='session')
def kvm():
    why = ferrytest.kvm_usable()
    if why:
        pytest.skip(why)


@pytest.fixture(params=['pvh', 'bzimage'])
def guest_entry(request):
    return request.param


@pytest.fixture
def guest_kernel(guest_entry):
    path = ferrytest.guest_path(guest_entry)
    _require_file(path, 'test guest (%s)' % guest_entry)
    return path


def _log_path(request, n):
    name = re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)
    suffix = '' if n == 0 else '.%d' % n
    return os.path.join(ferrytest.build_dir(), 'tests', 'system', 'logs',
                        name + suffix + '.log')


@pytest.fixture
def spawn_vmm(request, vmm_binary, kvm):
    """Factory: spawn_vmm(kernel, cmdline=..., memory=..., cpus=...,
    serial=..., extra=[...], start=True) -> started ferrytest.Vmm."""
    started = []

    def factory(kernel, start=True, **kw):
        kw.setdefault('vmm', vmm_binary)
        kw.setdefault('log_path', _log_path(request, len(started)))
        v = ferrytest.Vmm(kernel, **kw)
        started.append(v)
        if start:
            v.start()
        return v

    yield factory
    reports = []
    for v in started:
        v.close()
        print('%s: %s, %d console lines, log %s'
              % (' '.join(v.argv), ferrytest.describe_status(v.returncode),
                 len(v.console.lines), v.log_path))
        text = '\n'.join(v.stderr_lines)
        if any(s in text for s in SANITIZER_MARKS):
            reports.append('%s\n%s' % (' '.join(v.argv), text[-4000:]))
    if reports:
        pytest.fail('sanitizer report on ferry-vmm stderr:\n'
                    + '\n'.join(reports), pytrace=False)
