# SPDX-License-Identifier: GPL-2.0-or-later
"""System tests: the ACPI power button (suite `system`).

ferry-vmm presses the power button of its Generic Event Device on SIGUSR1
(docs/devices.md).  The test guest finds the GED in the DSDT, takes its
interrupt, reads the event register, prints FERRY-GUEST-POWERBUTTON and
powers off through the ACPI sleep registers (docs/test-guest.md), so
ferry-vmm exits with status 0.
"""

import signal

import ferrytest

# Seconds from the press to the VMM's exit: the guest's interrupt handler, a
# line on the console and the power-off write, all at guest CPL0.
PRESS_TIMEOUT = 10


def test_power_button(spawn_vmm, guest_kernel):
    vm = spawn_vmm(guest_kernel, memory='256M', cpus=2)
    vm.wait_ready()
    vm.proc.send_signal(signal.SIGUSR1)
    vm.wait_for(r'^FERRY-GUEST-POWERBUTTON$', PRESS_TIMEOUT)
    status = vm.wait_exit(PRESS_TIMEOUT)
    assert status == 0, vm.diagnostics('power button: %s'
                                       % ferrytest.describe_status(status))
    assert not vm.find_all(r'FERRY-POWEROFF-FAILED'), \
        vm.diagnostics('the guest could not power off')
    vm.check_no_failures()


def test_power_button_twice(spawn_vmm, guest_kernel):
    """A second press while the first is handled changes nothing: one line,
    one clean power-off."""
    vm = spawn_vmm(guest_kernel, memory='256M')
    vm.wait_ready()
    vm.proc.send_signal(signal.SIGUSR1)
    vm.proc.send_signal(signal.SIGUSR1)
    status = vm.wait_exit(PRESS_TIMEOUT)
    assert status == 0, vm.diagnostics('power button: %s'
                                       % ferrytest.describe_status(status))
    assert len(vm.find_all(r'^FERRY-GUEST-POWERBUTTON$')) == 1, \
        vm.diagnostics('expected exactly one FERRY-GUEST-POWERBUTTON')
    vm.check_no_failures()
