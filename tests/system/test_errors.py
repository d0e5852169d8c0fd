# SPDX-License-Identifier: GPL-2.0-or-later
"""System tests: ferry-vmm refuses bad input cleanly (suite `system`).

Each case runs ferry-vmm to completion and checks:
  - the exit status: 2 for a bad command line, 1 for a runtime error
    (unusable kernel file, memory that cannot be had);
  - a message on stderr, on a line starting with 'ferry-vmm: ', that names
    the problem (the path, the option, the value);
  - no crash: not killed by a signal, no sanitizer report;
  - it ends within seconds (run_vmm raises after 30 s).
"""

import os
import re
import shutil

import pytest

import ferrytest

USAGE_ERROR = 2
RUNTIME_ERROR = 1


def check_refused(res, statuses, keywords, max_lines=10):
    """Common checks; KEYWORDS are regexes (case-insensitive) that must all
    occur on one 'ferry-vmm: ' line of stderr."""
    desc = ('status %s\n--- stderr ---\n%s--- stdout ---\n%s'
            % (res.returncode, res.stderr, res.stdout[-2000:]))
    assert res.returncode >= 0, 'killed by a signal: ' + desc
    assert res.returncode in statuses, \
        'expected exit status %s: %s' % (statuses, desc)
    for bad in ('AddressSanitizer', 'LeakSanitizer', 'runtime error:',
                'Segmentation fault', 'core dumped', 'CRITICAL', 'assertion'):
        assert bad not in res.stderr, 'crash/sanitizer report: ' + desc
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert lines, 'nothing on stderr: ' + desc
    assert len(lines) <= max_lines, 'message too long: ' + desc
    msgs = [l for l in lines if l.startswith('ferry-vmm: ')]
    assert msgs, "no line starting with 'ferry-vmm: ': " + desc
    for m in msgs:
        if all(re.search(k, m, re.I) for k in keywords):
            return m
    pytest.fail('no ferry-vmm: line names %s: %s' % (keywords, desc))


@pytest.fixture
def vmm(vmm_binary):
    return vmm_binary


@pytest.fixture(scope='module')
def any_kernel():
    """A real kernel for cases where the kernel is not the problem."""
    for p in (ferrytest.guest_elf_path(), ferrytest.guest_bzimage_path()):
        if os.path.isfile(p):
            return p
    pytest.fail('no test guest built (%s)' % ferrytest.guest_elf_path(),
                pytrace=False)


def test_missing_kernel(vmm, tmp_path):
    path = str(tmp_path / 'no-such-kernel')
    res = ferrytest.run_vmm(['--kernel', path], vmm=vmm)
    # Whether a missing file is found while parsing or while loading is
    # the VMM's choice; either way it must name the file.
    check_refused(res, (RUNTIME_ERROR, USAGE_ERROR),
                  [re.escape(path)])


def test_not_a_kernel(vmm, tmp_path):
    path = str(tmp_path / 'hostname')
    shutil.copyfile('/etc/hostname', path)
    res = ferrytest.run_vmm(['--kernel', path], vmm=vmm)
    check_refused(res, (RUNTIME_ERROR,), [re.escape(path)])


def test_empty_kernel(vmm, tmp_path):
    path = tmp_path / 'empty'
    path.write_bytes(b'')
    res = ferrytest.run_vmm(['--kernel', str(path)], vmm=vmm)
    check_refused(res, (RUNTIME_ERROR,), [re.escape(str(path))])


def test_truncated_elf(vmm, tmp_path, any_kernel):
    """The first 200 bytes of a real kernel: headers that point past EOF."""
    path = tmp_path / 'truncated'
    with open(any_kernel, 'rb') as f:
        path.write_bytes(f.read(200))
    res = ferrytest.run_vmm(['--kernel', str(path)], vmm=vmm)
    check_refused(res, (RUNTIME_ERROR,), [re.escape(str(path))])


def test_memory_too_large(vmm, kvm, any_kernel):
    res = ferrytest.run_vmm(['--kernel', any_kernel, '--memory', '64T'],
                            vmm=vmm, timeout=60)
    check_refused(res, (RUNTIME_ERROR, USAGE_ERROR), ['memory'])
    assert 'FERRY-GUEST-READY' not in res.stdout


def test_cpus_zero(vmm, any_kernel):
    res = ferrytest.run_vmm(['--kernel', any_kernel, '--cpus', '0'], vmm=vmm)
    check_refused(res, (USAGE_ERROR,), ['cpu'])


def test_cpus_not_a_number(vmm, any_kernel):
    res = ferrytest.run_vmm(['--kernel', any_kernel, '--cpus', 'two'],
                            vmm=vmm)
    check_refused(res, (USAGE_ERROR,), ['cpu'])


def test_unknown_option(vmm, any_kernel):
    res = ferrytest.run_vmm(['--kernel', any_kernel, '--frobnicate'],
                            vmm=vmm)
    check_refused(res, (USAGE_ERROR,), ['frobnicate'])


def test_malformed_size(vmm, any_kernel):
    res = ferrytest.run_vmm(['--kernel', any_kernel, '--memory', '12Q'],
                            vmm=vmm)
    check_refused(res, (USAGE_ERROR,), ['memory|12Q'])


def test_no_kernel_option(vmm):
    res = ferrytest.run_vmm([], vmm=vmm)
    check_refused(res, (USAGE_ERROR,), ['kernel'])


def test_bad_serial(vmm, any_kernel):
    res = ferrytest.run_vmm(['--kernel', any_kernel, '--serial', 'carrier'],
                            vmm=vmm)
    check_refused(res, (USAGE_ERROR,), ['serial|carrier'])


def test_help():
    res = ferrytest.run_vmm(['--help'])
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith('Usage:\n  ferry-vmm [OPTION'), res.stdout[:200]
    for opt in ('--kernel', '--initrd', '--cmdline', '--memory', '--cpus', '--serial',
                '--control-socket', '--name', '--on-reboot'):
        assert opt in res.stdout, opt
