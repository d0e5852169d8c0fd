/*
 * The CPUID each vCPU sees: KVM_GET_SUPPORTED_CPUID, with the per-vCPU APIC ID, a topology of
 * @nr_vcpus single-threaded cores in one package, and the hypervisor bit.
 * Sources: Intel SDM vol. 2A "CPUID" (leaves 1, 4, 0xB, 0x1F), AMD APM vol. 3 appendix E
 * (leaves 0x80000008, 0x8000001E), the kernel's Documentation/virt/kvm/x86/cpuid.rst.
 */
#pragma once

#include <linux/kvm.h>
#include <stdint.h>

/*
 * Returns a new CPUID table (g_free) for vCPU @index (APIC ID = @index) of @nr_vcpus,
 * derived from @supported, which is not modified.
 */
struct kvm_cpuid2 *ferry_x86_cpuid_for_vcpu(const struct kvm_cpuid2 *supported, unsigned index,
                                            unsigned nr_vcpus);

/* Returns the entry for @function/@index in @cpuid, or NULL. */
struct kvm_cpuid_entry2 *ferry_x86_cpuid_find(struct kvm_cpuid2 *cpuid, uint32_t function,
                                              uint32_t index);
