#include "arch/x86/vcpu_setup.h"
#include "arch/x86/cpuid.h"

#include <errno.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/ioctl.h>

#define X86_CR0_PE 0x1ULL
#define X86_CR0_ET 0x10ULL
#define X86_CR0_PG 0x80000000ULL
#define X86_CR4_PAE 0x20ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL

#define MSR_IA32_SYSENTER_CS  0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176
#define MSR_IA32_MISC_ENABLE  0x1a0
#define MSR_MTRR_DEF_TYPE     0x2ff
#define MSR_STAR              0xc0000081
#define MSR_LSTAR             0xc0000082
#define MSR_CSTAR             0xc0000083
#define MSR_SYSCALL_MASK      0xc0000084
#define MSR_KERNEL_GS_BASE    0xc0000102

/* KVM paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst) that register guest memory: a
 * reset must clear them or KVM keeps writing into the old guest's pages. */
#define MSR_KVM_SYSTEM_TIME     0x12
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define MSR_KVM_ASYNC_PF_EN     0x4b564d02
#define MSR_KVM_STEAL_TIME      0x4b564d03
#define MSR_KVM_PV_EOI_EN       0x4b564d04
#define MSR_KVM_POLL_CONTROL    0x4b564d05

#define MISC_ENABLE_FAST_STRING 0x1ULL
#define MTRR_ENABLE_WB          ((1ULL << 11) | 6) /* MTRRs on, default type write-back */

/* LAPIC register offsets and LVT delivery modes (SDM vol. 3A, 11.5.1). */
#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360
#define APIC_MODE_NMI    0x4
#define APIC_MODE_EXTINT 0x7

static gboolean ioctl_error(GError **error, const char *what)
{
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "%s failed: %s", what,
                g_strerror(errno));
    return FALSE;
}

gboolean ferry_x86_vcpu_set_cpuid(const FerryKvm *kvm, int vcpu_fd, unsigned index,
                                  unsigned nr_vcpus, GError **error)
{
    g_autofree struct kvm_cpuid2 *c =
        ferry_x86_cpuid_for_vcpu(kvm->supported_cpuid, index, nr_vcpus);
    if (ioctl(vcpu_fd, KVM_SET_CPUID2, c) < 0)
        return ioctl_error(error, "KVM_SET_CPUID2");
    return TRUE;
}

gboolean ferry_x86_vcpu_set_msrs(const FerryKvm *kvm, int vcpu_fd, GError **error)
{
    static const struct {
        uint32_t index;
        uint64_t value;
    } initial[] = {
        {MSR_IA32_SYSENTER_CS, 0}, {MSR_IA32_SYSENTER_ESP, 0}, {MSR_IA32_SYSENTER_EIP, 0},
        {MSR_STAR, 0},           {MSR_LSTAR, 0},           {MSR_CSTAR, 0},
        {MSR_SYSCALL_MASK, 0},   {MSR_KERNEL_GS_BASE, 0},
        {MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING},
        {MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB},
        {MSR_KVM_SYSTEM_TIME, 0}, {MSR_KVM_SYSTEM_TIME_NEW, 0}, {MSR_KVM_ASYNC_PF_EN, 0},
        {MSR_KVM_STEAL_TIME, 0},  {MSR_KVM_PV_EOI_EN, 0},
        {MSR_KVM_POLL_CONTROL, 1}, /* msr.rst: 1 (host polling allowed) at reset */
    };
    g_autofree struct kvm_msrs *msrs =
        g_malloc0(sizeof(*msrs) + G_N_ELEMENTS(initial) * sizeof(struct kvm_msr_entry));
    for (gsize i = 0; i < G_N_ELEMENTS(initial); i++) {
        if (!ferry_kvm_has_msr(kvm, initial[i].index))
            continue;
        msrs->entries[msrs->nmsrs].index = initial[i].index;
        msrs->entries[msrs->nmsrs].data = initial[i].value;
        msrs->nmsrs++;
    }
    int r = ioctl(vcpu_fd, KVM_SET_MSRS, msrs);
    if (r < 0)
        return ioctl_error(error, "KVM_SET_MSRS");
    if ((uint32_t) r != msrs->nmsrs) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "KVM refused MSR 0x%x at start-up", msrs->entries[r].index);
        return FALSE;
    }
    return TRUE;
}

static void set_lvt_mode(struct kvm_lapic_state *lapic, unsigned reg, uint32_t mode)
{
    uint32_t v;
    memcpy(&v, lapic->regs + reg, 4);
    v = (v & ~0x700u) | (mode << 8);
    memcpy(lapic->regs + reg, &v, 4);
}

gboolean ferry_x86_vcpu_set_lint(int vcpu_fd, GError **error)
{
    struct kvm_lapic_state lapic;
    if (ioctl(vcpu_fd, KVM_GET_LAPIC, &lapic) < 0)
        return ioctl_error(error, "KVM_GET_LAPIC");
    set_lvt_mode(&lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_lvt_mode(&lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
    if (ioctl(vcpu_fd, KVM_SET_LAPIC, &lapic) < 0)
        return ioctl_error(error, "KVM_SET_LAPIC");
    return TRUE;
}

static struct kvm_segment flat_segment(uint16_t selector, uint8_t type, gboolean code64)
{
    return (struct kvm_segment){
        .base = 0,
        .limit = 0xffffffff,
        .selector = selector,
        .type = type,
        .present = 1,
        .dpl = 0,
        .db = code64 ? 0 : 1,
        .s = 1,
        .l = code64 ? 1 : 0,
        .g = 1,
    };
}

gboolean ferry_x86_vcpu_set_boot_regs(int vcpu_fd, const FerryBootSetup *setup, GError **error)
{
    struct kvm_sregs sregs;
    if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
        return ioctl_error(error, "KVM_GET_SREGS");

    gboolean long_mode = setup->format == FERRY_KERNEL_BZIMAGE;
    struct kvm_segment data = flat_segment(FERRY_SEL_DATA, 0x3, FALSE);
    sregs.cs = long_mode ? flat_segment(FERRY_SEL_CODE64, 0xb, TRUE)
                         : flat_segment(FERRY_SEL_CODE32, 0xb, FALSE);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.tr = (struct kvm_segment){
        .base = 0, .limit = 0x67, .selector = FERRY_SEL_TSS, .type = 0xb, .present = 1};
    sregs.ldt = (struct kvm_segment){.unusable = 1, .type = 0x2, .present = 0};
    sregs.gdt.base = FERRY_BOOT_GDT;
    sregs.gdt.limit = 6 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs.cr3 = 0;
    if (long_mode) {
        sregs.cr3 = FERRY_BOOT_PML4;
        sregs.cr4 = X86_CR4_PAE;
        sregs.cr0 |= X86_CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
    }
    if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
        return ioctl_error(error, "KVM_SET_SREGS");

    struct kvm_regs regs = {.rflags = 0x2, .rip = setup->entry, .rsp = FERRY_BOOT_STACK};
    if (long_mode)
        regs.rsi = setup->boot_info;
    else
        regs.rbx = setup->boot_info;
    if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0)
        return ioctl_error(error, "KVM_SET_REGS");

    struct kvm_fpu fpu = {.fcw = 0x37f, .mxcsr = 0x1f80};
    if (ioctl(vcpu_fd, KVM_SET_FPU, &fpu) < 0)
        return ioctl_error(error, "KVM_SET_FPU");
    return TRUE;
}
