#include "kvm.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

G_DEFINE_QUARK(ferry-kvm-error-quark, ferry_kvm_error)

/* Capabilities Ferry cannot run without, with what each is for. */
static const struct {
    long cap;
    const char *name;
    const char *why;
} required_caps[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest RAM"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "in-kernel PIC, IOAPIC and LAPIC"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2", "in-kernel PIT"},
    {KVM_CAP_PIT_STATE2, "KVM_CAP_PIT_STATE2", "PIT state save/restore"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "real-mode support on VMX"},
    {KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR", "real-mode support on VMX"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "CPUID configuration"},
    {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE", "SMP start-up and vCPU state"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "stopping vCPUs without polling"},
    {KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK", "kvmclock"},
    {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "virtio notifications"},
    {KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "device interrupts"},
    {KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS", "vCPU state save/restore"},
    {KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS", "vCPU state save/restore"},
    {KVM_CAP_XSAVE, "KVM_CAP_XSAVE", "FPU state save/restore"},
    {KVM_CAP_XCRS, "KVM_CAP_XCRS", "FPU state save/restore"},
};

static gboolean set_ioctl_error(GError **error, const char *what)
{
    int e = errno;
    g_set_error(error, FERRY_KVM_ERROR, FERRY_KVM_ERROR_IOCTL, "%s failed: %s", what,
                g_strerror(e));
    return FALSE;
}

static gboolean open_device(FerryKvm *kvm, const char *path, GError **error)
{
    kvm->kvm_fd = open(path, O_RDWR | O_CLOEXEC);
    if (kvm->kvm_fd >= 0)
        return TRUE;
    int e = errno;
    if (e == ENOENT || e == ENXIO || e == ENODEV) {
        g_set_error(error, FERRY_KVM_ERROR, FERRY_KVM_ERROR_NO_DEVICE,
                    "%s does not exist: load the KVM module (modprobe kvm_intel or kvm_amd), "
                    "enable virtualization (VT-x/AMD-V) in the firmware, or, inside a VM, "
                    "enable nested virtualization on its host",
                    path);
    } else if (e == EACCES || e == EPERM) {
        g_set_error(error, FERRY_KVM_ERROR, FERRY_KVM_ERROR_PERMISSION,
                    "cannot open %s: %s; run as root or add the user to the group owning %s "
                    "(usually 'kvm')",
                    path, g_strerror(e), path);
    } else {
        g_set_error(error, FERRY_KVM_ERROR, FERRY_KVM_ERROR_NO_DEVICE, "cannot open %s: %s",
                    path, g_strerror(e));
    }
    return FALSE;
}

static gboolean read_cpuid(FerryKvm *kvm, GError **error)
{
    for (unsigned n = 128; n <= 4096; n *= 2) {
        struct kvm_cpuid2 *c = g_malloc0(sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));
        c->nent = n;
        if (ioctl(kvm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            kvm->supported_cpuid = c;
            return TRUE;
        }
        int e = errno;
        g_free(c);
        if (e != E2BIG) {
            errno = e;
            return set_ioctl_error(error, "KVM_GET_SUPPORTED_CPUID");
        }
    }
    g_set_error(error, FERRY_KVM_ERROR, FERRY_KVM_ERROR_IOCTL,
                "KVM_GET_SUPPORTED_CPUID returned more than 4096 entries");
    return FALSE;
}

static gboolean read_msr_list(FerryKvm *kvm, GError **error)
{
    struct kvm_msr_list probe = {.nmsrs = 0};
    if (ioctl(kvm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
        return set_ioctl_error(error, "KVM_GET_MSR_INDEX_LIST");
    struct kvm_msr_list *l = g_malloc0(sizeof(*l) + probe.nmsrs * sizeof(uint32_t));
    l->nmsrs = probe.nmsrs;
    if (ioctl(kvm->kvm_fd, KVM_GET_MSR_INDEX_LIST, l) < 0) {
        g_free(l);
        return set_ioctl_error(error, "KVM_GET_MSR_INDEX_LIST");
    }
    kvm->msr_index_list = l;
    return TRUE;
}

FerryKvm *ferry_kvm_open(const char *path, GError **error)
{
    g_autoptr(FerryKvm) kvm = g_new0(FerryKvm, 1);
    kvm->kvm_fd = -1;
    kvm->vm_fd = -1;

    if (!open_device(kvm, path, error))
        return NULL;

    int version = ioctl(kvm->kvm_fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) {
        g_set_error(error, FERRY_KVM_ERROR, FERRY_KVM_ERROR_API_VERSION,
                    "%s speaks KVM API version %d; Ferry needs version %d", path, version,
                    KVM_API_VERSION);
        return NULL;
    }

    for (gsize i = 0; i < G_N_ELEMENTS(required_caps); i++) {
        if (ioctl(kvm->kvm_fd, KVM_CHECK_EXTENSION, required_caps[i].cap) <= 0) {
            g_set_error(error, FERRY_KVM_ERROR, FERRY_KVM_ERROR_CAPABILITY,
                        "this KVM lacks %s (needed for %s); a newer host kernel is required",
                        required_caps[i].name, required_caps[i].why);
            return NULL;
        }
    }

    int mmap_size = ioctl(kvm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size <= 0) {
        set_ioctl_error(error, "KVM_GET_VCPU_MMAP_SIZE");
        return NULL;
    }
    kvm->vcpu_mmap_size = (size_t) mmap_size;

    int max = ioctl(kvm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS);
    if (max <= 0)
        max = ioctl(kvm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS);
    kvm->max_vcpus = max > 0 ? (unsigned) max : 4;
    int slots = ioctl(kvm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
    kvm->nr_memslots = slots > 0 ? (unsigned) slots : 32;

    if (!read_cpuid(kvm, error) || !read_msr_list(kvm, error))
        return NULL;
    return g_steal_pointer(&kvm);
}

gboolean ferry_kvm_create_vm(FerryKvm *kvm, uint64_t tss_gpa, uint64_t identity_map_gpa,
                             GError **error)
{
    g_return_val_if_fail(kvm->vm_fd < 0, FALSE);

    int fd;
    do {
        fd = ioctl(kvm->kvm_fd, KVM_CREATE_VM, 0);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return set_ioctl_error(error, "KVM_CREATE_VM");
    kvm->vm_fd = fd;

    /* The identity map and TSS only matter on VMX without unrestricted guest, but KVM wants
     * them placed before any vCPU exists. */
    uint64_t idmap = identity_map_gpa;
    if (ioctl(fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0)
        return set_ioctl_error(error, "KVM_SET_IDENTITY_MAP_ADDR");
    if (ioctl(fd, KVM_SET_TSS_ADDR, (unsigned long) tss_gpa) < 0)
        return set_ioctl_error(error, "KVM_SET_TSS_ADDR");
    if (ioctl(fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return set_ioctl_error(error, "KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(fd, KVM_CREATE_PIT2, &pit) < 0)
        return set_ioctl_error(error, "KVM_CREATE_PIT2");
    return TRUE;
}

int ferry_kvm_check_extension(const FerryKvm *kvm, long cap)
{
    int fd = kvm->vm_fd >= 0 ? kvm->vm_fd : kvm->kvm_fd;
    int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
}

gboolean ferry_kvm_has_msr(const FerryKvm *kvm, uint32_t msr)
{
    for (uint32_t i = 0; i < kvm->msr_index_list->nmsrs; i++)
        if (kvm->msr_index_list->indices[i] == msr)
            return TRUE;
    return FALSE;
}

void ferry_kvm_free(FerryKvm *kvm)
{
    if (!kvm)
        return;
    if (kvm->vm_fd >= 0)
        close(kvm->vm_fd);
    if (kvm->kvm_fd >= 0)
        close(kvm->kvm_fd);
    g_free(kvm->supported_cpuid);
    g_free(kvm->msr_index_list);
    g_free(kvm);
}
