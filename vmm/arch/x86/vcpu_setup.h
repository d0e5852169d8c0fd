/*
 * Architectural start state of x86 vCPUs: CPUID, MSRs, the LAPIC's local interrupt pins, and
 * the registers that enter a kernel through the boot protocols in boot.h.
 * Sources: Intel SDM vol. 3A ch. 9 ("Processor Management and Initialization"), boot.rst,
 * Xen's pvh.pandoc.
 */
#pragma once

#include "arch/x86/boot.h"
#include "kvm.h"

#include <glib.h>

/* Installs the per-vCPU CPUID table (ferry_x86_cpuid_for_vcpu). */
gboolean ferry_x86_vcpu_set_cpuid(const FerryKvm *kvm, int vcpu_fd, unsigned index,
                                  unsigned nr_vcpus, GError **error);

/*
 * Writes the power-on values of the MSRs a kernel expects Ferry to set (SYSENTER/SYSCALL
 * MSRs zeroed, MISC_ENABLE fast strings, MTRR default type write-back, kvmclock and other
 * paravirtual registrations cleared), skipping MSRs
 * absent from KVM's index list.
 */
gboolean ferry_x86_vcpu_set_msrs(const FerryKvm *kvm, int vcpu_fd, GError **error);

/* Programs LINT0 as ExtINT and LINT1 as NMI (virtual-wire mode, MP spec 3.6.2.2). */
gboolean ferry_x86_vcpu_set_lint(int vcpu_fd, GError **error);

/*
 * Sets the boot vCPU's registers for @setup: 64-bit long mode with the identity map for a
 * bzImage, 32-bit protected mode without paging for PVH.  Expects the tables written by
 * ferry_x86_write_boot_tables().
 */
gboolean ferry_x86_vcpu_set_boot_regs(int vcpu_fd, const FerryBootSetup *setup, GError **error);
