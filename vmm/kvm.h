/*
 * The KVM layer: /dev/kvm, capability checks, and the VM file descriptor.
 *
 * Source of the API: the kernel's Documentation/virt/kvm/api.rst (KVM_API_VERSION 12).
 */
#pragma once

#include <glib.h>
#include <linux/kvm.h>
#include <stdint.h>

#define FERRY_KVM_ERROR (ferry_kvm_error_quark())
GQuark ferry_kvm_error_quark(void);

typedef enum {
    FERRY_KVM_ERROR_NO_DEVICE,     /* /dev/kvm missing */
    FERRY_KVM_ERROR_PERMISSION,    /* /dev/kvm not accessible */
    FERRY_KVM_ERROR_API_VERSION,   /* KVM_GET_API_VERSION != 12 */
    FERRY_KVM_ERROR_CAPABILITY,    /* a capability Ferry relies on is missing */
    FERRY_KVM_ERROR_IOCTL,         /* an ioctl failed */
    FERRY_KVM_ERROR_LIMIT,         /* a request beyond KVM's limits */
} FerryKvmError;

typedef struct {
    int kvm_fd;               /* /dev/kvm, owned */
    int vm_fd;                /* the VM, owned; -1 until ferry_kvm_create_vm() */
    size_t vcpu_mmap_size;    /* bytes of struct kvm_run + data pages per vCPU */
    unsigned max_vcpus;       /* KVM_CAP_MAX_VCPUS (or NR_VCPUS) */
    unsigned nr_memslots;     /* KVM_CAP_NR_MEMSLOTS */
    struct kvm_cpuid2 *supported_cpuid; /* KVM_GET_SUPPORTED_CPUID, owned (g_free) */
    struct kvm_msr_list *msr_index_list; /* KVM_GET_MSR_INDEX_LIST, owned (g_free) */
} FerryKvm;

/*
 * Opens @path (normally "/dev/kvm"), checks the API version and every capability Ferry
 * relies on, and reads the supported CPUID and MSR lists.  Errors name the cause and the
 * fix (module not loaded, permissions, nested virtualization off, capability missing).
 * Returns a new FerryKvm (free with ferry_kvm_free) or NULL.
 */
FerryKvm *ferry_kvm_open(const char *path, GError **error);

/*
 * Creates the VM: KVM_CREATE_VM, the in-kernel irqchip (PIC + IOAPIC + LAPICs), the in-kernel
 * PIT (KVM_CREATE_PIT2), the TSS and identity-map pages for VMX real mode at @tss_gpa (3
 * pages) and @identity_map_gpa (1 page).
 */
gboolean ferry_kvm_create_vm(FerryKvm *kvm, uint64_t tss_gpa, uint64_t identity_map_gpa,
                             GError **error);

/* Returns the value of KVM_CHECK_EXTENSION for @cap on the VM fd if any, else /dev/kvm. */
int ferry_kvm_check_extension(const FerryKvm *kvm, long cap);

/* TRUE if @msr is in KVM's MSR index list. */
gboolean ferry_kvm_has_msr(const FerryKvm *kvm, uint32_t msr);

void ferry_kvm_free(FerryKvm *kvm);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryKvm, ferry_kvm_free)
