/*
 * Unit tests: x86 vCPU and VM state blobs (vmm/arch/x86/vcpu_state.c, vm_state.c) against a
 * real KVM.  Skipped when /dev/kvm is absent.
 */
#include "arch/x86/layout.h"
#include "arch/x86/state_records.h"
#include "arch/x86/vcpu_setup.h"
#include "arch/x86/vcpu_state.h"
#include "arch/x86/vm_state.h"
#include "kvm.h"

#include <errno.h>
#include <glib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define RAM_SIZE (1u << 20)

typedef struct {
    FerryKvm *kvm;
    int vcpu_fd;
    struct kvm_run *run;
    void *ram;
} TestVm;

static void test_vm_free(TestVm *t)
{
    if (!t)
        return;
    if (t->run)
        munmap(t->run, t->kvm->vcpu_mmap_size);
    if (t->vcpu_fd >= 0)
        close(t->vcpu_fd);
    ferry_kvm_free(t->kvm); /* before the RAM it maps */
    if (t->ram)
        munmap(t->ram, RAM_SIZE);
    g_free(t);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestVm, test_vm_free)

/* A VM with 1 MiB of RAM at 0 and one vCPU set up as ferry does; NULL (skipped) without KVM. */
static TestVm *test_vm_new(void)
{
    if (access("/dev/kvm", F_OK) != 0) {
        g_test_skip("/dev/kvm is absent");
        return NULL;
    }
    g_autoptr(GError) err = NULL;
    g_autoptr(TestVm) t = g_new0(TestVm, 1);
    t->vcpu_fd = -1;
    t->kvm = ferry_kvm_open("/dev/kvm", &err);
    g_assert_no_error(err);
    g_assert_true(ferry_kvm_create_vm(t->kvm, FERRY_KVM_TSS, FERRY_KVM_IDENTITY_MAP, &err));
    t->ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g_assert_true(t->ram != MAP_FAILED);
    struct kvm_userspace_memory_region region = {.slot = 0,
                                                 .guest_phys_addr = 0,
                                                 .memory_size = RAM_SIZE,
                                                 .userspace_addr = (uint64_t) (uintptr_t) t->ram};
    g_assert_cmpint(ioctl(t->kvm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region), ==, 0);
    t->vcpu_fd = ioctl(t->kvm->vm_fd, KVM_CREATE_VCPU, 0UL);
    g_assert_cmpint(t->vcpu_fd, >=, 0);
    t->run = mmap(NULL, t->kvm->vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, t->vcpu_fd, 0);
    g_assert_true(t->run != MAP_FAILED);
    g_assert_true(ferry_x86_vcpu_set_cpuid(t->kvm, t->vcpu_fd, 0, 1, &err));
    g_assert_true(ferry_x86_vcpu_set_msrs(t->kvm, t->vcpu_fd, &err));
    g_assert_true(ferry_x86_vcpu_set_lint(t->vcpu_fd, &err));
    g_assert_no_error(err);
    return g_steal_pointer(&t);
}

static gboolean set_msr(int fd, uint32_t index, uint64_t value)
{
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e;
    } m = {.h.nmsrs = 1, .e = {.index = index, .data = value}};
    return ioctl(fd, KVM_SET_MSRS, &m) == 1;
}

static gboolean get_msr(int fd, uint32_t index, uint64_t *value)
{
    struct {
        struct kvm_msrs h;
        struct kvm_msr_entry e;
    } m = {.h.nmsrs = 1, .e = {.index = index}};
    if (ioctl(fd, KVM_GET_MSRS, &m) != 1)
        return FALSE;
    *value = m.e.data;
    return TRUE;
}

static uint32_t lapic_reg(const struct kvm_lapic_state *l, unsigned off)
{
    uint32_t v;
    memcpy(&v, l->regs + off, 4);
    return v;
}

static void set_lapic_reg(struct kvm_lapic_state *l, unsigned off, uint32_t v)
{
    memcpy(l->regs + off, &v, 4);
}

/* MSRs every KVM must take back (value, whether it must be in KVM's list). */
static const struct {
    uint32_t index;
    uint64_t value;
} core_msrs[] = {
    {0x174, 0x10},                    /* SYSENTER_CS */
    {0x175, 0xffff880000001000},      /* SYSENTER_ESP */
    {0x176, 0xffffffff81000000},      /* SYSENTER_EIP */
    {0xc0000081, 0x0023001000000000}, /* STAR */
    {0xc0000082, 0xffffffff81a00000}, /* LSTAR */
    {0xc0000083, 0xffffffff81a00100}, /* CSTAR */
    {0xc0000084, 0x47700},            /* SFMASK */
    {0xc0000102, 0xffff888012340000}, /* KERNEL_GS_BASE */
    {0x277, 0x0007010600070106},      /* PAT */
    {0x4b564d01, 0x2001},             /* kvmclock system time at 0x2000, enabled */
    {0x4b564d00, 0x3000},             /* kvmclock wall clock at 0x3000 */
    {0x10, 0x100000000000},           /* TSC */
};

/* Puts distinctive values in every part of the vCPU and VM state of @t. */
static void make_distinctive(TestVm *t)
{
    int fd = t->vcpu_fd;
    struct kvm_regs regs;
    g_assert_cmpint(ioctl(fd, KVM_GET_REGS, &regs), ==, 0);
    __u64 *r = &regs.rax;
    for (unsigned i = 0; i < 16; i++)
        r[i] = 0x1111111111111111ULL * (i + 1) + i;
    regs.rip = 0x1234;
    regs.rflags = 0x246;
    g_assert_cmpint(ioctl(fd, KVM_SET_REGS, &regs), ==, 0);

    struct kvm_sregs sregs;
    g_assert_cmpint(ioctl(fd, KVM_GET_SREGS, &sregs), ==, 0);
    sregs.gdt.base = 0x5000;
    sregs.gdt.limit = 0x7f;
    sregs.idt.base = 0x6000;
    sregs.idt.limit = 0x7ff;
    sregs.cr2 = 0xdead000;
    sregs.fs.base = 0x7000;
    sregs.gs.base = 0x8000;
    g_assert_cmpint(ioctl(fd, KVM_SET_SREGS, &sregs), ==, 0);

    static struct kvm_xsave xs;
    g_assert_cmpint(ioctl(fd, KVM_GET_XSAVE, &xs), ==, 0);
    uint8_t *x = (uint8_t *) xs.region;
    uint16_t fcw = 0x037a;
    memcpy(x, &fcw, 2);
    uint32_t mxcsr = 0x7f80;
    memcpy(x + 24, &mxcsr, 4);
    memset(x + 160, 0xa5, 16); /* XMM0 */
    memset(x + 176, 0x3c, 16); /* XMM1 */
    x[512] |= 0x3;             /* XSTATE_BV: x87 and SSE */
    g_assert_cmpint(ioctl(fd, KVM_SET_XSAVE, &xs), ==, 0);

    for (gsize i = 0; i < G_N_ELEMENTS(core_msrs); i++) {
        if (!set_msr(fd, core_msrs[i].index, core_msrs[i].value))
            g_error("KVM refused MSR 0x%x", core_msrs[i].index);
    }
    if (ferry_kvm_has_msr(t->kvm, 0x3b))
        g_assert_true(set_msr(fd, 0x3b, 0x5000)); /* TSC_ADJUST */
    set_msr(fd, 0x2ff, 0xc06);                    /* MTRR default type, if emulated */

    struct kvm_lapic_state lapic;
    g_assert_cmpint(ioctl(fd, KVM_GET_LAPIC, &lapic), ==, 0);
    set_lapic_reg(&lapic, 0x80, 0x20);       /* TPR */
    set_lapic_reg(&lapic, 0xd0, 0x01000000); /* LDR */
    set_lapic_reg(&lapic, 0xe0, 0xffffffff); /* DFR flat */
    set_lapic_reg(&lapic, 0xf0, 0x1ff);      /* SVR: enabled, vector 0xff */
    set_lapic_reg(&lapic, 0x320, 0x100ef);   /* LVT timer masked */
    set_lapic_reg(&lapic, 0x370, 0x100fe);   /* LVT error masked */
    set_lapic_reg(&lapic, 0x3e0, 0xb);       /* divide by 1 */
    g_assert_cmpint(ioctl(fd, KVM_SET_LAPIC, &lapic), ==, 0);

    struct kvm_vcpu_events ev;
    g_assert_cmpint(ioctl(fd, KVM_GET_VCPU_EVENTS, &ev), ==, 0);
    ev.nmi.masked = 1;
    ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING;
    g_assert_cmpint(ioctl(fd, KVM_SET_VCPU_EVENTS, &ev), ==, 0);

    struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_HALTED};
    g_assert_cmpint(ioctl(fd, KVM_SET_MP_STATE, &mp), ==, 0);

    if (ferry_kvm_check_extension(t->kvm, KVM_CAP_DEBUGREGS)) {
        struct kvm_debugregs dr;
        memset(&dr, 0, sizeof(dr));
        dr.db[0] = 0x1000;
        dr.db[1] = 0x2000;
        dr.db[2] = 0x3000;
        dr.db[3] = 0x4000;
        dr.dr6 = 0xffff0ff0;
        dr.dr7 = 0x405;
        g_assert_cmpint(ioctl(fd, KVM_SET_DEBUGREGS, &dr), ==, 0);
    }

    int vm = t->kvm->vm_fd;
    struct kvm_irqchip chip = {.chip_id = KVM_IRQCHIP_IOAPIC};
    g_assert_cmpint(ioctl(vm, KVM_GET_IRQCHIP, &chip), ==, 0);
    chip.chip.ioapic.redirtbl[5].bits = 0x10035;
    chip.chip.ioapic.redirtbl[10].bits = 0x0100000000010041ULL;
    g_assert_cmpint(ioctl(vm, KVM_SET_IRQCHIP, &chip), ==, 0);
    struct kvm_irqchip pic = {.chip_id = KVM_IRQCHIP_PIC_MASTER};
    g_assert_cmpint(ioctl(vm, KVM_GET_IRQCHIP, &pic), ==, 0);
    pic.chip.pic.imr = 0xa5;
    pic.chip.pic.irq_base = 0x20;
    g_assert_cmpint(ioctl(vm, KVM_SET_IRQCHIP, &pic), ==, 0);
    struct kvm_irqchip pic2 = {.chip_id = KVM_IRQCHIP_PIC_SLAVE};
    g_assert_cmpint(ioctl(vm, KVM_GET_IRQCHIP, &pic2), ==, 0);
    pic2.chip.pic.imr = 0x5a;
    pic2.chip.pic.irq_base = 0x28;
    g_assert_cmpint(ioctl(vm, KVM_SET_IRQCHIP, &pic2), ==, 0);
    struct kvm_pit_state2 pit;
    g_assert_cmpint(ioctl(vm, KVM_GET_PIT2, &pit), ==, 0);
    pit.channels[2].count = 0x1234;
    pit.channels[2].mode = 2;
    pit.channels[2].rw_mode = 3;
    g_assert_cmpint(ioctl(vm, KVM_SET_PIT2, &pit), ==, 0);
    struct kvm_clock_data clock = {.clock = 1000ULL * 1000000000ULL};
    g_assert_cmpint(ioctl(vm, KVM_SET_CLOCK, &clock), ==, 0);
}

static GByteArray *save_vcpu(TestVm *t)
{
    g_autoptr(GError) err = NULL;
    GByteArray *b = g_byte_array_new();
    FerryStateWriter w = {.buf = b};
    g_assert_true(ferry_x86_vcpu_save_state(t->kvm, t->vcpu_fd, &w, &err));
    g_assert_no_error(err);
    return b;
}

static GByteArray *save_vm(TestVm *t)
{
    g_autoptr(GError) err = NULL;
    GByteArray *b = g_byte_array_new();
    FerryStateWriter w = {.buf = b};
    g_assert_true(ferry_x86_vm_save_state(t->kvm->vm_fd, &w, &err));
    g_assert_no_error(err);
    return b;
}

/* All MSRs of a vCPU blob, index → value, decoded independently of the loader. */
static GHashTable *blob_msrs(const GByteArray *blob)
{
    GHashTable *h = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    size_t pos = 5;
    while (pos < blob->len) {
        uint8_t type = blob->data[pos];
        uint32_t len = ferry_le_load32(blob->data + pos + 1);
        const uint8_t *p = blob->data + pos + 5;
        if (type == 7) {
            uint32_t n = ferry_le_load32(p);
            for (uint32_t i = 0; i < n; i++) {
                uint64_t *v = g_new(uint64_t, 1);
                *v = ferry_le_load64(p + 4 + 12 * i + 4);
                g_hash_table_insert(h, GUINT_TO_POINTER(ferry_le_load32(p + 4 + 12 * i)), v);
            }
        }
        pos += 5 + len;
    }
    return h;
}

static void test_roundtrip(void)
{
    g_autoptr(TestVm) a = test_vm_new();
    if (!a)
        return;
    g_autoptr(TestVm) b = test_vm_new();
    g_autoptr(GError) err = NULL;
    make_distinctive(a);

    g_autoptr(GByteArray) vm_blob = save_vm(a);
    g_autoptr(GByteArray) vcpu_blob = save_vcpu(a);
    g_test_message("vCPU blob %u bytes, VM blob %u bytes", vcpu_blob->len, vm_blob->len);

    /* Reference values read back from A after the save. */
    struct kvm_regs ra, rb;
    struct kvm_sregs sa, sb;
    struct kvm_lapic_state la, lb;
    struct kvm_vcpu_events ea, eb;
    struct kvm_mp_state ma, mb;
    static struct kvm_xsave xa, xb;
    g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_REGS, &ra), ==, 0);
    g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_SREGS, &sa), ==, 0);
    g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_LAPIC, &la), ==, 0);
    g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_VCPU_EVENTS, &ea), ==, 0);
    g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_MP_STATE, &ma), ==, 0);
    g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_XSAVE, &xa), ==, 0);

    g_usleep(200 * 1000);

    FerryStateReader r;
    FerryX86Clock clock;
    ferry_state_reader_init(&r, vm_blob->data, vm_blob->len, "VM state");
    gboolean ok = ferry_x86_vm_load_state(b->kvm->vm_fd, &r, &clock, &err);
    g_assert_no_error(err);
    g_assert_true(ok);
    g_assert_true(ferry_state_reader_finish(&r, &err));
    ferry_state_reader_init(&r, vcpu_blob->data, vcpu_blob->len, "vCPU 0 state");
    ok = ferry_x86_vcpu_load_state(b->kvm, b->vcpu_fd, &r, &err);
    g_assert_no_error(err);
    g_assert_true(ok);
    g_assert_true(ferry_state_reader_finish(&r, &err));
    g_assert_true(ferry_x86_vm_restore_clock(b->kvm->vm_fd, &clock, TRUE, &err));
    g_assert_no_error(err);

    g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_REGS, &rb), ==, 0);
    g_assert_cmpmem(&ra, sizeof(ra), &rb, sizeof(rb));
    g_assert_cmpuint(rb.rip, ==, 0x1234);
    g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_SREGS, &sb), ==, 0);
    g_assert_cmpmem(&sa, sizeof(sa), &sb, sizeof(sb));
    g_assert_cmpuint(sb.cr2, ==, 0xdead000);
    g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_LAPIC, &lb), ==, 0);
    g_assert_cmpmem(&la, sizeof(la), &lb, sizeof(lb));
    g_assert_cmpuint(lapic_reg(&lb, 0xf0), ==, 0x1ff);
    g_assert_cmpuint(lapic_reg(&lb, 0x80), ==, 0x20);
    g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_VCPU_EVENTS, &eb), ==, 0);
    g_assert_cmpmem(&ea, sizeof(ea), &eb, sizeof(eb));
    g_assert_cmpuint(eb.nmi.masked, ==, 1);
    g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_MP_STATE, &mb), ==, 0);
    g_assert_cmpuint(mb.mp_state, ==, ma.mp_state);
    g_assert_cmpuint(mb.mp_state, ==, KVM_MP_STATE_HALTED);
    g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_XSAVE, &xb), ==, 0);
    g_assert_cmpmem(&xa, sizeof(xa), &xb, sizeof(xb));
    g_assert_cmpuint(((uint8_t *) xb.region)[160], ==, 0xa5);

    if (ferry_kvm_check_extension(a->kvm, KVM_CAP_DEBUGREGS)) {
        struct kvm_debugregs da, db;
        g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_DEBUGREGS, &da), ==, 0);
        g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_DEBUGREGS, &db), ==, 0);
        g_assert_cmpmem(&da, sizeof(da), &db, sizeof(db));
        g_assert_cmpuint(db.db[2], ==, 0x3000);
        g_assert_cmpuint(db.dr7 & 0xff, ==, 0x05);
    }
    if (ferry_kvm_check_extension(a->kvm, KVM_CAP_XCRS)) {
        struct kvm_xcrs xca, xcb;
        memset(&xca, 0, sizeof(xca));
        memset(&xcb, 0, sizeof(xcb));
        g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_XCRS, &xca), ==, 0);
        g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_XCRS, &xcb), ==, 0);
        g_assert_cmpmem(&xca, sizeof(xca), &xcb, sizeof(xcb));
    }
    g_assert_cmpint(ioctl(a->vcpu_fd, KVM_GET_TSC_KHZ, 0), ==,
                    ioctl(b->vcpu_fd, KVM_GET_TSC_KHZ, 0));

    /* Every saved MSR reads back the same on B, the TSC having moved on a little. */
    g_autoptr(GHashTable) saved = blob_msrs(vcpu_blob);
    g_assert_cmpuint(g_hash_table_size(saved), >=, G_N_ELEMENTS(core_msrs));
    GHashTableIter it;
    gpointer key, val;
    g_hash_table_iter_init(&it, saved);
    while (g_hash_table_iter_next(&it, &key, &val)) {
        uint32_t index = GPOINTER_TO_UINT(key);
        uint64_t now = 0;
        g_assert_true(get_msr(b->vcpu_fd, index, &now));
        if (index == 0x10) {
            uint64_t khz = (uint64_t) ioctl(b->vcpu_fd, KVM_GET_TSC_KHZ, 0);
            /* Restored to the saved count, which then runs on (200 ms and the test). */
            g_test_message("TSC: saved 0x%" G_GINT64_MODIFIER "x, restored 0x%" G_GINT64_MODIFIER
                           "x",
                           *(uint64_t *) val, now);
            g_assert_cmpuint(now, >=, *(uint64_t *) val);
            g_assert_cmpuint(now - *(uint64_t *) val, <, khz * 1000 * 30);
        } else if (now != *(uint64_t *) val) {
            g_error("MSR 0x%x: saved 0x%" G_GINT64_MODIFIER "x, restored 0x%" G_GINT64_MODIFIER "x",
                    index, *(uint64_t *) val, now);
        }
    }
    for (gsize i = 0; i < G_N_ELEMENTS(core_msrs); i++) {
        g_assert_true(g_hash_table_contains(saved, GUINT_TO_POINTER(core_msrs[i].index)));
        if (core_msrs[i].index != 0x10)
            g_assert_cmpuint(
                *(uint64_t *) g_hash_table_lookup(saved, GUINT_TO_POINTER(core_msrs[i].index)), ==,
                core_msrs[i].value);
    }
    g_test_message("%u MSRs saved", g_hash_table_size(saved));

    /* VM-wide devices. */
    int va = a->kvm->vm_fd, vb = b->kvm->vm_fd;
    for (uint32_t id = 0; id < 3; id++) {
        struct kvm_irqchip ca = {.chip_id = id}, cb = {.chip_id = id};
        g_assert_cmpint(ioctl(va, KVM_GET_IRQCHIP, &ca), ==, 0);
        g_assert_cmpint(ioctl(vb, KVM_GET_IRQCHIP, &cb), ==, 0);
        g_assert_cmpmem(&ca, sizeof(ca), &cb, sizeof(cb));
    }
    struct kvm_irqchip io = {.chip_id = KVM_IRQCHIP_IOAPIC};
    g_assert_cmpint(ioctl(vb, KVM_GET_IRQCHIP, &io), ==, 0);
    g_assert_cmpuint(io.chip.ioapic.redirtbl[10].bits, ==, 0x0100000000010041ULL);
    struct kvm_irqchip pic = {.chip_id = KVM_IRQCHIP_PIC_SLAVE};
    g_assert_cmpint(ioctl(vb, KVM_GET_IRQCHIP, &pic), ==, 0);
    g_assert_cmpuint(pic.chip.pic.imr, ==, 0x5a);
    struct kvm_pit_state2 pa, pb;
    g_assert_cmpint(ioctl(va, KVM_GET_PIT2, &pa), ==, 0);
    g_assert_cmpint(ioctl(vb, KVM_GET_PIT2, &pb), ==, 0);
    g_assert_cmpuint(pb.channels[2].count, ==, 0x1234);
    g_assert_cmpuint(pb.channels[2].mode, ==, 2);
    g_assert_cmpuint(pb.flags, ==, pa.flags);

    /* kvmclock moved on by at least the 200 ms between save and restore, not much more. */
    struct kvm_clock_data cb;
    memset(&cb, 0, sizeof(cb));
    g_assert_cmpint(ioctl(vb, KVM_GET_CLOCK, &cb), ==, 0);
    g_assert_cmpuint(clock.clock_ns, >=, 1000ULL * 1000000000ULL);
    g_assert_cmpuint(cb.clock, >=, clock.clock_ns + 200 * 1000000ULL);
    g_assert_cmpuint(cb.clock, <, clock.clock_ns + 20ULL * 1000000000ULL);

    /* Without advancing, the clock resumes from the saved value. */
    g_assert_true(ferry_x86_vm_restore_clock(vb, &clock, FALSE, &err));
    g_assert_cmpint(ioctl(vb, KVM_GET_CLOCK, &cb), ==, 0);
    g_assert_cmpuint(cb.clock, >=, clock.clock_ns);
    g_assert_cmpuint(cb.clock, <, clock.clock_ns + 150 * 1000000ULL);

    /* A saved clock from the future (skewed host) never moves the clock backwards. */
    FerryX86Clock future = clock;
    future.realtime_ns += 3600ULL * 1000000000ULL;
    g_assert_true(ferry_x86_vm_restore_clock(vb, &future, TRUE, &err));
    g_assert_cmpint(ioctl(vb, KVM_GET_CLOCK, &cb), ==, 0);
    g_assert_cmpuint(cb.clock, >=, clock.clock_ns);
    g_assert_cmpuint(cb.clock, <, clock.clock_ns + 150 * 1000000ULL);
}

/* `in al, 0x10; hlt` in real mode: the IN must be completed before the state is saved. */
static void test_complete_pending_io(void)
{
    g_autoptr(TestVm) t = test_vm_new();
    if (!t)
        return;
    g_autoptr(GError) err = NULL;
    static const uint8_t code[] = {0xe4, 0x10, 0xf4};
    memcpy((uint8_t *) t->ram + 0x1000, code, sizeof(code));
    struct kvm_sregs s;
    g_assert_cmpint(ioctl(t->vcpu_fd, KVM_GET_SREGS, &s), ==, 0);
    s.cs.selector = 0;
    s.cs.base = 0;
    g_assert_cmpint(ioctl(t->vcpu_fd, KVM_SET_SREGS, &s), ==, 0);
    struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2, .rax = 0xffff};
    g_assert_cmpint(ioctl(t->vcpu_fd, KVM_SET_REGS, &regs), ==, 0);

    int rc;
    do {
        rc = ioctl(t->vcpu_fd, KVM_RUN, 0);
    } while (rc < 0 && (errno == EINTR || errno == EAGAIN));
    g_assert_cmpint(rc, ==, 0);
    g_assert_cmpuint(t->run->exit_reason, ==, KVM_EXIT_IO);
    g_assert_cmpuint(t->run->io.direction, ==, KVM_EXIT_IO_IN);
    g_assert_cmpuint(t->run->io.port, ==, 0x10);
    ((uint8_t *) t->run)[t->run->io.data_offset] = 0x5a;

    g_assert_true(ferry_x86_vcpu_complete_pending_io(t->vcpu_fd, t->run, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(t->run->immediate_exit, ==, 0);
    g_assert_cmpint(ioctl(t->vcpu_fd, KVM_GET_REGS, &regs), ==, 0);
    g_assert_cmpuint(regs.rip, ==, 0x1002);
    g_assert_cmpuint(regs.rax, ==, 0xff5a);

    /* Nothing pending any more: a second call returns at once, the hlt not run. */
    g_assert_true(ferry_x86_vcpu_complete_pending_io(t->vcpu_fd, t->run, &err));
    g_assert_cmpint(ioctl(t->vcpu_fd, KVM_GET_REGS, &regs), ==, 0);
    g_assert_cmpuint(regs.rip, ==, 0x1002);

    /* And the completed state is what a save carries. */
    g_autoptr(GByteArray) blob = save_vcpu(t);
    g_autoptr(TestVm) b = test_vm_new();
    FerryStateReader r;
    ferry_state_reader_init(&r, blob->data, blob->len, "vCPU 0 state");
    g_assert_true(ferry_x86_vcpu_load_state(b->kvm, b->vcpu_fd, &r, &err));
    g_assert_no_error(err);
    g_assert_cmpint(ioctl(b->vcpu_fd, KVM_GET_REGS, &regs), ==, 0);
    g_assert_cmpuint(regs.rip, ==, 0x1002);
    g_assert_cmpuint(regs.rax, ==, 0xff5a);
}

/* Offsets of the record headers of a blob (version, body length, then records). */
static GArray *record_offsets(const GByteArray *blob)
{
    GArray *o = g_array_new(FALSE, FALSE, sizeof(size_t));
    size_t pos = 5;
    while (pos < blob->len) {
        g_array_append_val(o, pos);
        pos += 5 + ferry_le_load32(blob->data + pos + 1);
    }
    g_assert_cmpuint(pos, ==, blob->len);
    return o;
}

typedef gboolean (*LoadFn)(TestVm *t, FerryStateReader *r, GError **error);

static gboolean load_vcpu(TestVm *t, FerryStateReader *r, GError **error)
{
    return ferry_x86_vcpu_load_state(t->kvm, t->vcpu_fd, r, error);
}

static gboolean load_vm(TestVm *t, FerryStateReader *r, GError **error)
{
    FerryX86Clock c;
    return ferry_x86_vm_load_state(t->kvm->vm_fd, r, &c, error);
}

/* @data must be rejected with a FERRY_STATE_ERROR and leave the target untouched. */
static void expect_rejected(TestVm *t, LoadFn load, const uint8_t *data, size_t len,
                            const char *must_contain)
{
    g_autoptr(GError) err = NULL;
    FerryStateReader r;
    ferry_state_reader_init(&r, data, len, "test blob");
    g_assert_false(load(t, &r, &err));
    g_assert_nonnull(err);
    if (must_contain && !strstr(err->message, must_contain))
        g_error("error \"%s\" does not mention \"%s\"", err->message, must_contain);
    struct kvm_regs regs;
    g_assert_cmpint(ioctl(t->vcpu_fd, KVM_GET_REGS, &regs), ==, 0);
    g_assert_cmpuint(regs.rip, ==, 0x4321);
    struct kvm_irqchip pic = {.chip_id = KVM_IRQCHIP_PIC_MASTER};
    g_assert_cmpint(ioctl(t->kvm->vm_fd, KVM_GET_IRQCHIP, &pic), ==, 0);
    g_assert_cmpuint(pic.chip.pic.imr, ==, 0x77);
}

static void mark_target(TestVm *t)
{
    struct kvm_regs regs = {.rip = 0x4321, .rflags = 0x2};
    g_assert_cmpint(ioctl(t->vcpu_fd, KVM_SET_REGS, &regs), ==, 0);
    struct kvm_irqchip pic = {.chip_id = KVM_IRQCHIP_PIC_MASTER};
    g_assert_cmpint(ioctl(t->kvm->vm_fd, KVM_GET_IRQCHIP, &pic), ==, 0);
    pic.chip.pic.imr = 0x77;
    g_assert_cmpint(ioctl(t->kvm->vm_fd, KVM_SET_IRQCHIP, &pic), ==, 0);
}

static void check_corruption(TestVm *target, LoadFn load, const GByteArray *blob)
{
    /* Truncated at every length. */
    for (size_t len = 0; len < blob->len; len++)
        expect_rejected(target, load, blob->data, len, NULL);

    g_autofree uint8_t *copy = g_memdup2(blob->data, blob->len);
    /* Unknown versions. */
    static const uint8_t versions[] = {0, 2, 0x81, 0xff};
    for (gsize i = 0; i < G_N_ELEMENTS(versions); i++) {
        copy[0] = versions[i];
        expect_rejected(target, load, copy, blob->len, "version");
    }
    copy[0] = blob->data[0];

    /* Every bit of the body length and of each record's type and length. */
    g_autoptr(GArray) offs = record_offsets(blob);
    g_autoptr(GArray) fields = g_array_new(FALSE, FALSE, sizeof(size_t));
    for (size_t b = 1; b < 5; b++)
        g_array_append_val(fields, b);
    for (guint i = 0; i < offs->len; i++)
        for (size_t b = 0; b < 5; b++) {
            size_t at = g_array_index(offs, size_t, i) + b;
            g_array_append_val(fields, at);
        }
    for (guint i = 0; i < fields->len; i++) {
        size_t at = g_array_index(fields, size_t, i);
        for (unsigned bit = 0; bit < 8; bit++) {
            copy[at] ^= (uint8_t) (1u << bit);
            expect_rejected(target, load, copy, blob->len, NULL);
            copy[at] ^= (uint8_t) (1u << bit);
        }
    }

    /* Oversized lengths: the body and each record claiming 4 GiB. */
    for (guint i = 0; i <= offs->len; i++) {
        size_t at = i == 0 ? 1 : g_array_index(offs, size_t, i - 1) + 1;
        memset(copy + at, 0xff, 4);
        expect_rejected(target, load, copy, blob->len, NULL);
        memcpy(copy + at, blob->data + at, 4);
    }
    g_assert_cmpmem(copy, blob->len, blob->data, blob->len);
}

/* Re-encodes @blob with record @type's payload replaced (NULL: dropped). */
static GByteArray *rewrite(const GByteArray *blob, uint8_t type, const void *payload, uint32_t len)
{
    GByteArray *out = g_byte_array_new();
    FerryStateWriter w = {.buf = out};
    gsize mark = ferry_x86_records_begin(&w, blob->data[0]);
    g_autoptr(GArray) offs = record_offsets(blob);
    for (guint i = 0; i < offs->len; i++) {
        size_t at = g_array_index(offs, size_t, i);
        uint8_t t = blob->data[at];
        if (t == type) {
            if (payload)
                ferry_x86_record_put(&w, t, payload, len);
        } else {
            ferry_x86_record_put(&w, t, blob->data + at + 5, ferry_le_load32(blob->data + at + 1));
        }
    }
    ferry_x86_records_end(&w, mark);
    return out;
}

/*
 * Gives @source distinctive state and @target a recognisable one, saves @source with @save and
 * runs check_corruption() of that blob against @target; returns the blob.
 */
static GByteArray *save_and_check_corruption(TestVm *source, TestVm *target,
                                             GByteArray *(*save)(TestVm *t), LoadFn load)
{
    make_distinctive(source);
    mark_target(target);
    GByteArray *blob = save(source);
    check_corruption(target, load, blob);
    return blob;
}

/* An MSRS payload of SYSENTER_CS = 0x10 and MSR @index = @value. */
static GByteArray *two_msrs(uint32_t index, uint64_t value)
{
    GByteArray *msrs = g_byte_array_new();
    FerryStateWriter w = {.buf = msrs};
    ferry_state_put_u32(&w, 2);
    ferry_state_put_u32(&w, 0x174);
    ferry_state_put_u64(&w, 0x10);
    ferry_state_put_u32(&w, index);
    ferry_state_put_u64(&w, value);
    return msrs;
}

static void test_vcpu_corrupt(void)
{
    g_autoptr(TestVm) a = test_vm_new();
    if (!a)
        return;
    g_autoptr(TestVm) b = test_vm_new();
    g_autoptr(GByteArray) blob = save_and_check_corruption(a, b, save_vcpu, load_vcpu);

    /* An MSR this KVM does not know is named. */
    g_autoptr(GByteArray) msrs = two_msrs(0xdeadbeef, 1);
    g_autoptr(GByteArray) unknown = rewrite(blob, 7, msrs->data, msrs->len);
    expect_rejected(b, load_vcpu, unknown->data, unknown->len, "MSR 0xdeadbeef");

    /* A repeated MSR, an MSR count beyond the record, a huge count. */
    g_autoptr(GByteArray) twice = two_msrs(0x174, 0x10);
    g_autoptr(GByteArray) dup = rewrite(blob, 7, twice->data, twice->len);
    expect_rejected(b, load_vcpu, dup->data, dup->len, "twice");
    twice->data[0] = 3;
    g_autoptr(GByteArray) overcount = rewrite(blob, 7, twice->data, twice->len);
    expect_rejected(b, load_vcpu, overcount->data, overcount->len, "MSRS");
    memset(twice->data, 0xff, 4);
    g_autoptr(GByteArray) huge = rewrite(blob, 7, twice->data, twice->len);
    expect_rejected(b, load_vcpu, huge->data, huge->len, "MSRS");

    /* Missing required records, an MP state that is not x86's. */
    g_autoptr(GByteArray) no_lapic = rewrite(blob, 8, NULL, 0);
    expect_rejected(b, load_vcpu, no_lapic->data, no_lapic->len, "LAPIC");
    g_autoptr(GByteArray) no_regs = rewrite(blob, 1, NULL, 0);
    expect_rejected(b, load_vcpu, no_regs->data, no_regs->len, "REGS");
    uint8_t mp[4] = {7, 0, 0, 0};
    g_autoptr(GByteArray) bad_mp = rewrite(blob, 10, mp, 4);
    expect_rejected(b, load_vcpu, bad_mp->data, bad_mp->len, "MP state");
    /* An unknown record type. */
    g_autoptr(GByteArray) extra = rewrite(blob, 0, NULL, 0);
    FerryStateWriter ew = {.buf = extra};
    ferry_x86_record_put(&ew, 0x42, "x", 1);
    ferry_le_store32(extra->data + 1, ferry_le_load32(extra->data + 1) + 6);
    expect_rejected(b, load_vcpu, extra->data, extra->len, "unknown type");

    /* The untouched blob still loads (the rewrites above are what made them fail). */
    g_autoptr(GByteArray) same = rewrite(blob, 0, NULL, 0);
    g_assert_cmpmem(same->data, same->len, blob->data, blob->len);
    g_autoptr(GError) err = NULL;
    FerryStateReader r;
    ferry_state_reader_init(&r, blob->data, blob->len, "vCPU 0 state");
    g_assert_true(ferry_x86_vcpu_load_state(b->kvm, b->vcpu_fd, &r, &err));
    g_assert_no_error(err);
}

static void test_vm_corrupt(void)
{
    g_autoptr(TestVm) a = test_vm_new();
    if (!a)
        return;
    g_autoptr(TestVm) b = test_vm_new();
    g_autoptr(GByteArray) blob = save_and_check_corruption(a, b, save_vm, load_vm);

    struct kvm_pit_state2 pit;
    g_assert_cmpint(ioctl(a->kvm->vm_fd, KVM_GET_PIT2, &pit), ==, 0);
    pit.channels[1].mode = 9;
    g_autoptr(GByteArray) bad_pit = rewrite(blob, 4, &pit, sizeof(pit));
    expect_rejected(b, load_vm, bad_pit->data, bad_pit->len, "PIT channel 1");
    g_autoptr(GByteArray) no_clock = rewrite(blob, 5, NULL, 0);
    expect_rejected(b, load_vm, no_clock->data, no_clock->len, "CLOCK");
}

static void test_capabilities(void)
{
    if (access("/dev/kvm", F_OK) != 0) {
        g_test_skip("/dev/kvm is absent");
        return;
    }
    g_autoptr(GError) err = NULL;
    g_autoptr(FerryKvm) kvm = ferry_kvm_open("/dev/kvm", &err);
    g_assert_no_error(err);
    static const struct {
        long cap;
        const char *name;
    } caps[] = {
        {KVM_CAP_SREGS2, "SREGS2"},
        {KVM_CAP_XSAVE, "XSAVE"},
        {KVM_CAP_XSAVE2, "XSAVE2"},
        {KVM_CAP_XCRS, "XCRS"},
        {KVM_CAP_DEBUGREGS, "DEBUGREGS"},
        {KVM_CAP_GET_TSC_KHZ, "GET_TSC_KHZ"},
        {KVM_CAP_TSC_CONTROL, "TSC_CONTROL"},
        {KVM_CAP_ADJUST_CLOCK, "ADJUST_CLOCK"},
        {KVM_CAP_EXCEPTION_PAYLOAD, "EXCEPTION_PAYLOAD"},
        {KVM_CAP_X86_SMM, "X86_SMM"},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(caps); i++)
        g_test_message("KVM_CAP_%s = %d", caps[i].name,
                       ferry_kvm_check_extension(kvm, caps[i].cap));
    g_test_message("%u MSRs in KVM's index list", kvm->msr_index_list->nmsrs);
    g_assert_cmpuint(kvm->msr_index_list->nmsrs, >, 0);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/cpu-state/capabilities", test_capabilities);
    g_test_add_func("/cpu-state/roundtrip", test_roundtrip);
    g_test_add_func("/cpu-state/complete-pending-io", test_complete_pending_io);
    g_test_add_func("/cpu-state/vcpu-corrupt", test_vcpu_corrupt);
    g_test_add_func("/cpu-state/vm-corrupt", test_vm_corrupt);
    return g_test_run();
}
