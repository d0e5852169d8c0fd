#include "arch/x86/vcpu_state.h"
#include "arch/x86/state_records.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

/* clang-format off */
G_DEFINE_QUARK(ferry-x86-state-error-quark, ferry_x86_state_error)
/* clang-format on */

/* Record types of the vCPU blob (docs/machine-state.md). */
enum {
    REC_REGS = 1,
    REC_SREGS = 2,
    REC_SREGS2 = 3,
    REC_FPU = 4,
    REC_XSAVE = 5,
    REC_XCRS = 6,
    REC_MSRS = 7,
    REC_LAPIC = 8,
    REC_EVENTS = 9,
    REC_MP_STATE = 10,
    REC_DEBUGREGS = 11,
    REC_TSC_KHZ = 12,
};

#define MAX_MSRS       4096u
#define MSR_ENTRY_SIZE 12u           /* u32 index, u64 value */
#define MAX_XSAVE      (256u * 1024) /* far above any XSAVE area size CPUID 0xD reports */

/* Indexed by position; the order below is also the order records are written in. */
enum {
    I_REGS,
    I_SREGS,
    I_SREGS2,
    I_FPU,
    I_XSAVE,
    I_XCRS,
    I_MSRS,
    I_LAPIC,
    I_EVENTS,
    I_MP_STATE,
    I_DEBUGREGS,
    I_TSC_KHZ,
    N_RECORDS
};

static const FerryX86RecordSpec vcpu_records[N_RECORDS] = {
    [I_REGS] = {REC_REGS, "REGS", sizeof(struct kvm_regs), sizeof(struct kvm_regs), TRUE},
    [I_SREGS] = {REC_SREGS, "SREGS", sizeof(struct kvm_sregs), sizeof(struct kvm_sregs), FALSE},
    [I_SREGS2] = {REC_SREGS2, "SREGS2", sizeof(struct kvm_sregs2), sizeof(struct kvm_sregs2),
                  FALSE},
    [I_FPU] = {REC_FPU, "FPU", sizeof(struct kvm_fpu), sizeof(struct kvm_fpu), FALSE},
    [I_XSAVE] = {REC_XSAVE, "XSAVE", sizeof(struct kvm_xsave), MAX_XSAVE, FALSE},
    [I_XCRS] = {REC_XCRS, "XCRS", sizeof(struct kvm_xcrs), sizeof(struct kvm_xcrs), FALSE},
    [I_MSRS] = {REC_MSRS, "MSRS", 4, 4 + MAX_MSRS *MSR_ENTRY_SIZE, TRUE},
    [I_LAPIC] = {REC_LAPIC, "LAPIC", sizeof(struct kvm_lapic_state), sizeof(struct kvm_lapic_state),
                 TRUE},
    [I_EVENTS] = {REC_EVENTS, "VCPU_EVENTS", sizeof(struct kvm_vcpu_events),
                  sizeof(struct kvm_vcpu_events), TRUE},
    [I_MP_STATE] = {REC_MP_STATE, "MP_STATE", 4, 4, TRUE},
    [I_DEBUGREGS] = {REC_DEBUGREGS, "DEBUGREGS", sizeof(struct kvm_debugregs),
                     sizeof(struct kvm_debugregs), FALSE},
    [I_TSC_KHZ] = {REC_TSC_KHZ, "TSC_KHZ", 4, 4, FALSE},
};

/* MSRs whose restore order matters (see ferry_x86_vcpu_load_state). */
#define MSR_IA32_TSC_DEADLINE 0x6e0
#define MSR_KVM_ASYNC_PF_INT  0x4b564d06 /* before MSR_KVM_ASYNC_PF_EN, 0x4b564d02 */

/*
 * MSRs saved in addition to KVM's index list, which leaves them out although KVM emulates
 * them: the MTRRs (SDM vol. 3A 12.11; KVM emulates 8 variable ranges).  Saved when
 * KVM_GET_MSRS can read them.
 */
static const uint32_t extra_msrs[] = {
    0x2ff,               /* IA32_MTRR_DEF_TYPE */
    0x250, 0x258, 0x259, /* fixed-range MTRRs */
    0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, /* variable ranges 0-3 */
    0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f, /* variable ranges 4-7 */
};

static gboolean is_extra_msr(uint32_t index)
{
    for (gsize i = 0; i < G_N_ELEMENTS(extra_msrs); i++)
        if (extra_msrs[i] == index)
            return TRUE;
    return FALSE;
}

static gboolean ioctl_error(GError **error, const char *what)
{
    int e = errno;
    g_set_error(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_IOCTL, "%s failed: %s", what,
                g_strerror(e));
    return FALSE;
}

static gboolean has_cap(const FerryKvm *kvm, long cap)
{
    return ferry_kvm_check_extension(kvm, cap) > 0;
}

/* Bytes KVM_GET_XSAVE2 writes and KVM_SET_XSAVE reads on this KVM; 0 without KVM_CAP_XSAVE. */
static size_t xsave_size(const FerryKvm *kvm)
{
    int size2 = ferry_kvm_check_extension(kvm, KVM_CAP_XSAVE2);
    if (size2 > (int) sizeof(struct kvm_xsave))
        return (size_t) size2;
    return has_cap(kvm, KVM_CAP_XSAVE) ? sizeof(struct kvm_xsave) : 0;
}

gboolean ferry_x86_vcpu_complete_pending_io(int vcpu_fd, struct kvm_run *run, GError **error)
{
    run->immediate_exit = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int r;
    do {
        r = ioctl(vcpu_fd, KVM_RUN, 0);
    } while (r < 0 && errno == EAGAIN);
    int e = errno;
    run->immediate_exit = 0;
    if (r < 0 && e == EINTR)
        return TRUE;
    if (r < 0) {
        errno = e;
        return ioctl_error(error, "KVM_RUN to complete pending I/O");
    }
    g_set_error(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_EXIT_PENDING,
                "completing pending I/O made a new exit (reason %u); handle it and retry",
                run->exit_reason);
    return FALSE;
}

/*
 * Reads @n MSRs into a new kvm_msrs holding only those KVM_GET_MSRS could read.  KVM_GET_MSRS
 * returns how many entries it read, stopping at the first it cannot read (api.rst
 * KVM_GET_MSRS), so an unreadable MSR costs one more ioctl and is skipped.
 */
static struct kvm_msrs *read_msrs(int vcpu_fd, const uint32_t *indices, guint n, GError **error)
{
    g_autofree struct kvm_msrs *out =
        g_malloc0(sizeof(*out) + MAX(n, 1) * sizeof(struct kvm_msr_entry));
    g_autofree struct kvm_msrs *req =
        g_malloc0(sizeof(*req) + MAX(n, 1) * sizeof(struct kvm_msr_entry));
    guint pos = 0;
    while (pos < n) {
        req->nmsrs = n - pos;
        for (guint i = 0; i < req->nmsrs; i++)
            req->entries[i] = (struct kvm_msr_entry){.index = indices[pos + i]};
        int r = ioctl(vcpu_fd, KVM_GET_MSRS, req);
        if (r < 0)
            return ioctl_error(error, "KVM_GET_MSRS"), NULL;
        for (int i = 0; i < r; i++)
            out->entries[out->nmsrs++] = req->entries[i];
        pos += (guint) r + 1; /* entry pos + r (if any) is unreadable: skip it */
    }
    return g_steal_pointer(&out);
}

static gboolean save_msrs(const FerryKvm *kvm, int vcpu_fd, FerryStateWriter *w, GError **error)
{
    g_autoptr(GArray) idx = g_array_new(FALSE, FALSE, sizeof(uint32_t));
    const struct kvm_msr_list *list = kvm->msr_index_list;
    for (uint32_t i = 0; i < list->nmsrs; i++)
        g_array_append_val(idx, list->indices[i]);
    for (gsize i = 0; i < G_N_ELEMENTS(extra_msrs); i++)
        if (!ferry_kvm_has_msr(kvm, extra_msrs[i]))
            g_array_append_val(idx, extra_msrs[i]);
    if (idx->len > MAX_MSRS) {
        g_set_error(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_UNSUPPORTED,
                    "KVM lists %u MSRs; the vCPU state holds at most %u", idx->len, MAX_MSRS);
        return FALSE;
    }
    g_autofree struct kvm_msrs *m =
        read_msrs(vcpu_fd, (const uint32_t *) idx->data, idx->len, error);
    if (!m)
        return FALSE;

    g_autoptr(GByteArray) payload = g_byte_array_new();
    FerryStateWriter pw = {.buf = payload};
    ferry_state_put_u32(&pw, m->nmsrs);
    for (uint32_t i = 0; i < m->nmsrs; i++) {
        ferry_state_put_u32(&pw, m->entries[i].index);
        ferry_state_put_u64(&pw, m->entries[i].data);
    }
    ferry_x86_record_put(w, REC_MSRS, payload->data, payload->len);
    return TRUE;
}

gboolean ferry_x86_vcpu_save_state(const FerryKvm *kvm, int vcpu_fd, FerryStateWriter *w,
                                   GError **error)
{
    gsize mark = ferry_x86_records_begin(w, FERRY_X86_VCPU_STATE_VERSION);

    struct kvm_regs regs;
    if (ioctl(vcpu_fd, KVM_GET_REGS, &regs) < 0)
        return ioctl_error(error, "KVM_GET_REGS");
    ferry_x86_record_put(w, REC_REGS, &regs, sizeof(regs));

    if (has_cap(kvm, KVM_CAP_SREGS2)) {
        struct kvm_sregs2 s2;
        if (ioctl(vcpu_fd, KVM_GET_SREGS2, &s2) < 0)
            return ioctl_error(error, "KVM_GET_SREGS2");
        ferry_x86_record_put(w, REC_SREGS2, &s2, sizeof(s2));
    } else {
        struct kvm_sregs s;
        if (ioctl(vcpu_fd, KVM_GET_SREGS, &s) < 0)
            return ioctl_error(error, "KVM_GET_SREGS");
        ferry_x86_record_put(w, REC_SREGS, &s, sizeof(s));
    }

    size_t xsize = xsave_size(kvm);
    if (xsize > MAX_XSAVE) {
        g_set_error(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_UNSUPPORTED,
                    "KVM's XSAVE area has %zu bytes; the vCPU state holds at most %u", xsize,
                    MAX_XSAVE);
        return FALSE;
    }
    if (xsize > 0) {
        g_autofree struct kvm_xsave *xs = g_malloc0(xsize);
        gboolean v2 = xsize > sizeof(struct kvm_xsave) || has_cap(kvm, KVM_CAP_XSAVE2);
        if (ioctl(vcpu_fd, v2 ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, xs) < 0)
            return ioctl_error(error, v2 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE");
        ferry_x86_record_put(w, REC_XSAVE, xs, (uint32_t) xsize);
    } else {
        struct kvm_fpu fpu;
        if (ioctl(vcpu_fd, KVM_GET_FPU, &fpu) < 0)
            return ioctl_error(error, "KVM_GET_FPU");
        ferry_x86_record_put(w, REC_FPU, &fpu, sizeof(fpu));
    }

    if (has_cap(kvm, KVM_CAP_XCRS)) {
        struct kvm_xcrs xcrs;
        memset(&xcrs, 0, sizeof(xcrs));
        if (ioctl(vcpu_fd, KVM_GET_XCRS, &xcrs) < 0)
            return ioctl_error(error, "KVM_GET_XCRS");
        ferry_x86_record_put(w, REC_XCRS, &xcrs, sizeof(xcrs));
    }

    if (!save_msrs(kvm, vcpu_fd, w, error))
        return FALSE;

    struct kvm_lapic_state lapic;
    if (ioctl(vcpu_fd, KVM_GET_LAPIC, &lapic) < 0)
        return ioctl_error(error, "KVM_GET_LAPIC");
    ferry_x86_record_put(w, REC_LAPIC, &lapic, sizeof(lapic));

    struct kvm_vcpu_events ev;
    memset(&ev, 0, sizeof(ev));
    if (ioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, &ev) < 0)
        return ioctl_error(error, "KVM_GET_VCPU_EVENTS");
    ferry_x86_record_put(w, REC_EVENTS, &ev, sizeof(ev));

    struct kvm_mp_state mp;
    if (ioctl(vcpu_fd, KVM_GET_MP_STATE, &mp) < 0)
        return ioctl_error(error, "KVM_GET_MP_STATE");
    uint8_t mp_le[4];
    ferry_le_store32(mp_le, mp.mp_state);
    ferry_x86_record_put(w, REC_MP_STATE, mp_le, sizeof(mp_le));

    if (has_cap(kvm, KVM_CAP_DEBUGREGS)) {
        struct kvm_debugregs dr;
        memset(&dr, 0, sizeof(dr));
        if (ioctl(vcpu_fd, KVM_GET_DEBUGREGS, &dr) < 0)
            return ioctl_error(error, "KVM_GET_DEBUGREGS");
        ferry_x86_record_put(w, REC_DEBUGREGS, &dr, sizeof(dr));
    }

    if (has_cap(kvm, KVM_CAP_GET_TSC_KHZ)) {
        int khz = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
        if (khz <= 0)
            return ioctl_error(error, "KVM_GET_TSC_KHZ");
        uint8_t khz_le[4];
        ferry_le_store32(khz_le, (uint32_t) khz);
        ferry_x86_record_put(w, REC_TSC_KHZ, khz_le, sizeof(khz_le));
    }

    ferry_x86_records_end(w, mark);
    return TRUE;
}

/* A parsed blob, checked against the target KVM, ready to apply. */
typedef struct {
    struct kvm_regs regs;
    gboolean use_sregs2;
    struct kvm_sregs sregs;
    struct kvm_sregs2 sregs2;
    struct kvm_xsave *xsave; /* target's XSAVE size, zero-padded; NULL: use fpu */
    struct kvm_fpu fpu;
    gboolean has_xcrs;
    struct kvm_xcrs xcrs;
    struct kvm_msrs *msrs_early; /* before the rest */
    struct kvm_msrs *msrs;       /* after XCRS */
    struct kvm_msrs *msrs_late;  /* after the LAPIC */
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct kvm_mp_state mp;
    gboolean has_debugregs;
    struct kvm_debugregs debugregs;
    uint32_t tsc_khz; /* 0: not saved */
} VcpuLoad;

static void vcpu_load_clear(VcpuLoad *l)
{
    g_free(l->xsave);
    g_free(l->msrs_early);
    g_free(l->msrs);
    g_free(l->msrs_late);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(VcpuLoad, vcpu_load_clear)

static gboolean unsupported(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static gboolean unsupported(GError **error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_UNSUPPORTED, msg);
    return FALSE;
}

static gboolean invalid(GError **error, const char *what, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean invalid(GError **error, const char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID, "%s: %s", what, msg);
    return FALSE;
}

static struct kvm_msrs *msrs_new(guint n)
{
    return g_malloc0(sizeof(struct kvm_msrs) + MAX(n, 1) * sizeof(struct kvm_msr_entry));
}

/* Decodes the MSR record and checks every MSR against the target KVM. */
static gboolean prepare_msrs(const FerryKvm *kvm, int vcpu_fd, const FerryX86Record *rec,
                             const char *what, VcpuLoad *l, GError **error)
{
    uint32_t n = ferry_le_load32(rec->data);
    if (n > MAX_MSRS || rec->len != 4 + n * MSR_ENTRY_SIZE)
        return invalid(error, what, "the MSRS record has %u bytes for %u MSRs", rec->len, n);

    l->msrs_early = msrs_new(n);
    l->msrs = msrs_new(n);
    l->msrs_late = msrs_new(n);
    g_autoptr(GHashTable) seen = g_hash_table_new(g_direct_hash, g_direct_equal);
    g_autoptr(GArray) probe = g_array_new(FALSE, FALSE, sizeof(uint32_t));
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p = rec->data + 4 + i * MSR_ENTRY_SIZE;
        struct kvm_msr_entry e = {.index = ferry_le_load32(p), .data = ferry_le_load64(p + 4)};
        if (!g_hash_table_add(seen, GUINT_TO_POINTER(e.index)))
            return invalid(error, what, "MSR 0x%x appears twice", e.index);
        if (!ferry_kvm_has_msr(kvm, e.index)) {
            if (!is_extra_msr(e.index))
                return unsupported(error,
                                   "the saved vCPU has MSR 0x%x, which this host's KVM does not "
                                   "know (absent from KVM_GET_MSR_INDEX_LIST); restore on a host "
                                   "with the same or a newer kernel",
                                   e.index);
            g_array_append_val(probe, e.index);
        }
        struct kvm_msrs *dst = e.index == MSR_KVM_ASYNC_PF_INT    ? l->msrs_early
                               : e.index == MSR_IA32_TSC_DEADLINE ? l->msrs_late
                                                                  : l->msrs;
        dst->entries[dst->nmsrs++] = e;
    }

    /* MSRs outside the index list: this KVM must at least read them. */
    if (probe->len > 0) {
        g_autofree struct kvm_msrs *got =
            read_msrs(vcpu_fd, (const uint32_t *) probe->data, probe->len, error);
        if (!got)
            return FALSE;
        for (guint i = 0; i < probe->len; i++) {
            uint32_t index = g_array_index(probe, uint32_t, i);
            gboolean ok = FALSE;
            for (uint32_t j = 0; j < got->nmsrs && !ok; j++)
                ok = got->entries[j].index == index;
            if (!ok)
                return unsupported(error,
                                   "the saved vCPU has MSR 0x%x, which this host's KVM cannot "
                                   "access",
                                   index);
        }
    }
    return TRUE;
}

/* Adapts the vCPU events to what the target KVM accepts (api.rst KVM_SET_VCPU_EVENTS). */
static gboolean prepare_events(const FerryKvm *kvm, struct kvm_vcpu_events *ev, GError **error)
{
    /* KVM_GET_VCPU_EVENTS fills the pending NMI and the interrupt shadow (and flags them);
     * KVM_SET_VCPU_EVENTS skips unflagged fields, so restore them regardless.  It reports the
     * SIPI vector as 0 ("never valid" to user space), so that one is never set from a blob:
     * KVM_VCPUEVENT_VALID_SIPI_VECTOR would overwrite a latched vector with 0. */
    ev->flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW;
    ev->flags &= ~KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    if ((ev->flags & KVM_VCPUEVENT_VALID_SMM) && !has_cap(kvm, KVM_CAP_X86_SMM)) {
        if (ev->smi.smm || ev->smi.pending || ev->smi.smm_inside_nmi || ev->smi.latched_init)
            return unsupported(error, "the saved vCPU is in or entering System Management "
                                      "Mode, and this host's KVM lacks KVM_CAP_X86_SMM");
        ev->flags &= ~KVM_VCPUEVENT_VALID_SMM;
    }
    /* Without a pending exception the payload fields carry nothing (KVM ignores them). */
    if ((ev->flags & KVM_VCPUEVENT_VALID_PAYLOAD) && !ev->exception.pending) {
        ev->flags &= ~KVM_VCPUEVENT_VALID_PAYLOAD;
        ev->exception_has_payload = 0;
        ev->exception_payload = 0;
    }
    if ((ev->flags & KVM_VCPUEVENT_VALID_PAYLOAD) && !has_cap(kvm, KVM_CAP_EXCEPTION_PAYLOAD))
        return unsupported(error, "the saved vCPU has a pending exception with a payload, and "
                                  "this host's KVM lacks KVM_CAP_EXCEPTION_PAYLOAD");
    if ((ev->flags & KVM_VCPUEVENT_VALID_TRIPLE_FAULT) && !ev->triple_fault.pending)
        ev->flags &= ~KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
    if ((ev->flags & KVM_VCPUEVENT_VALID_TRIPLE_FAULT) &&
        !has_cap(kvm, KVM_CAP_X86_TRIPLE_FAULT_EVENT))
        return unsupported(error, "the saved vCPU has a pending triple fault, and this host's "
                                  "KVM lacks KVM_CAP_X86_TRIPLE_FAULT_EVENT");
    return TRUE;
}

static gboolean prepare(const FerryKvm *kvm, int vcpu_fd, FerryStateReader *r, VcpuLoad *l,
                        GError **error)
{
    FerryX86Record rec[N_RECORDS];
    uint8_t version;
    if (!ferry_x86_records_parse(r, FERRY_X86_VCPU_STATE_VERSION, vcpu_records, N_RECORDS, rec,
                                 &version, error))
        return FALSE;
    const char *what = r->what;

    if (rec[I_SREGS].present == rec[I_SREGS2].present)
        return invalid(error, what, "needs exactly one of the SREGS and SREGS2 records");
    if (rec[I_XSAVE].present == rec[I_FPU].present)
        return invalid(error, what, "needs exactly one of the XSAVE and FPU records");

    memcpy(&l->regs, rec[I_REGS].data, sizeof(l->regs));

    if (rec[I_SREGS2].present) {
        memcpy(&l->sregs2, rec[I_SREGS2].data, sizeof(l->sregs2));
        if (l->sregs2.flags & ~(uint64_t) KVM_SREGS2_FLAGS_PDPTRS_VALID)
            return invalid(error, what, "SREGS2 has unknown flags 0x%llx",
                           (unsigned long long) l->sregs2.flags);
        l->use_sregs2 = has_cap(kvm, KVM_CAP_SREGS2);
        if (!l->use_sregs2) {
            /* Same registers without the PDPTRs, which KVM then reloads from guest memory
             * (they only matter for PAE paging outside long mode). */
            const struct kvm_sregs2 *s = &l->sregs2;
            l->sregs = (struct kvm_sregs){
                .cs = s->cs,
                .ds = s->ds,
                .es = s->es,
                .fs = s->fs,
                .gs = s->gs,
                .ss = s->ss,
                .tr = s->tr,
                .ldt = s->ldt,
                .gdt = s->gdt,
                .idt = s->idt,
                .cr0 = s->cr0,
                .cr2 = s->cr2,
                .cr3 = s->cr3,
                .cr4 = s->cr4,
                .cr8 = s->cr8,
                .efer = s->efer,
                .apic_base = s->apic_base,
            };
        }
    } else {
        memcpy(&l->sregs, rec[I_SREGS].data, sizeof(l->sregs));
    }

    if (rec[I_XSAVE].present) {
        uint32_t len = rec[I_XSAVE].len;
        if (len % 4 != 0)
            return invalid(error, what, "XSAVE has %u bytes, not a multiple of 4", len);
        size_t target = xsave_size(kvm);
        if (target == 0)
            return unsupported(error, "the saved vCPU has XSAVE state, and this host's KVM "
                                      "lacks KVM_CAP_XSAVE");
        if (len > target)
            return unsupported(error,
                               "the saved vCPU's XSAVE area has %u bytes, this host's KVM "
                               "holds %zu (a dynamically enabled feature such as AMX?)",
                               len, target);
        l->xsave = g_malloc0(target);
        memcpy(l->xsave, rec[I_XSAVE].data, len);
    } else {
        memcpy(&l->fpu, rec[I_FPU].data, sizeof(l->fpu));
    }

    if (rec[I_XCRS].present) {
        memcpy(&l->xcrs, rec[I_XCRS].data, sizeof(l->xcrs));
        if (l->xcrs.nr_xcrs > KVM_MAX_XCRS)
            return invalid(error, what, "XCRS claims %u registers, at most %u", l->xcrs.nr_xcrs,
                           KVM_MAX_XCRS);
        l->has_xcrs = l->xcrs.nr_xcrs > 0;
        if (l->has_xcrs && !has_cap(kvm, KVM_CAP_XCRS))
            return unsupported(error, "the saved vCPU has extended control registers, and this "
                                      "host's KVM lacks KVM_CAP_XCRS");
    }

    if (!prepare_msrs(kvm, vcpu_fd, &rec[I_MSRS], what, l, error))
        return FALSE;

    memcpy(&l->lapic, rec[I_LAPIC].data, sizeof(l->lapic));

    memcpy(&l->events, rec[I_EVENTS].data, sizeof(l->events));
    if (!prepare_events(kvm, &l->events, error))
        return FALSE;

    l->mp.mp_state = ferry_le_load32(rec[I_MP_STATE].data);
    if (l->mp.mp_state > KVM_MP_STATE_SIPI_RECEIVED && l->mp.mp_state != KVM_MP_STATE_AP_RESET_HOLD)
        return invalid(error, what, "MP state %u is not an x86 state", l->mp.mp_state);

    if (rec[I_DEBUGREGS].present) {
        memcpy(&l->debugregs, rec[I_DEBUGREGS].data, sizeof(l->debugregs));
        l->has_debugregs = TRUE;
        if (!has_cap(kvm, KVM_CAP_DEBUGREGS))
            return unsupported(error, "the saved vCPU has debug registers, and this host's KVM "
                                      "lacks KVM_CAP_DEBUGREGS");
    }

    if (rec[I_TSC_KHZ].present) {
        l->tsc_khz = ferry_le_load32(rec[I_TSC_KHZ].data);
        if (l->tsc_khz == 0)
            return invalid(error, what, "the TSC frequency is 0 kHz");
        if (!has_cap(kvm, KVM_CAP_GET_TSC_KHZ))
            return unsupported(error,
                               "this host's KVM cannot report the TSC frequency "
                               "(KVM_CAP_GET_TSC_KHZ) to check it against the saved %u kHz",
                               l->tsc_khz);
    }
    return TRUE;
}

static gboolean set_msrs(int vcpu_fd, struct kvm_msrs *m, GError **error)
{
    if (m->nmsrs == 0)
        return TRUE;
    int r = ioctl(vcpu_fd, KVM_SET_MSRS, m);
    if (r < 0)
        return ioctl_error(error, "KVM_SET_MSRS");
    if ((uint32_t) r < m->nmsrs) {
        g_set_error(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_UNSUPPORTED,
                    "KVM refused the saved value 0x%llx of MSR 0x%x",
                    (unsigned long long) m->entries[r].data, m->entries[r].index);
        return FALSE;
    }
    return TRUE;
}

static gboolean set_tsc_khz(const FerryKvm *kvm, int vcpu_fd, uint32_t khz, GError **error)
{
    int cur = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
    if (cur <= 0)
        return ioctl_error(error, "KVM_GET_TSC_KHZ");
    if ((uint32_t) cur == khz)
        return TRUE;
    if (ioctl(vcpu_fd, KVM_SET_TSC_KHZ, (unsigned long) khz) < 0) {
        int e = errno;
        g_set_error(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_UNSUPPORTED,
                    "the saved vCPU's TSC runs at %u kHz, this host's at %d kHz, and "
                    "KVM_SET_TSC_KHZ failed: %s (%s); restore on a host with the same TSC "
                    "frequency or with TSC scaling",
                    khz, cur, g_strerror(e),
                    has_cap(kvm, KVM_CAP_TSC_CONTROL) ? "KVM_CAP_TSC_CONTROL present"
                                                      : "KVM_CAP_TSC_CONTROL absent");
        return FALSE;
    }
    return TRUE;
}

gboolean ferry_x86_vcpu_load_state(const FerryKvm *kvm, int vcpu_fd, FerryStateReader *r,
                                   GError **error)
{
    g_auto(VcpuLoad) l = {0};
    if (!prepare(kvm, vcpu_fd, r, &l, error))
        return FALSE;

    /* The order and its reasons are in docs/machine-state.md. */
    if (l.tsc_khz && !set_tsc_khz(kvm, vcpu_fd, l.tsc_khz, error))
        return FALSE;
    if (l.use_sregs2) {
        if (ioctl(vcpu_fd, KVM_SET_SREGS2, &l.sregs2) < 0)
            return ioctl_error(error, "KVM_SET_SREGS2");
    } else if (ioctl(vcpu_fd, KVM_SET_SREGS, &l.sregs) < 0) {
        return ioctl_error(error, "KVM_SET_SREGS");
    }
    if (ioctl(vcpu_fd, KVM_SET_REGS, &l.regs) < 0)
        return ioctl_error(error, "KVM_SET_REGS");
    if (l.xsave) {
        if (ioctl(vcpu_fd, KVM_SET_XSAVE, l.xsave) < 0)
            return ioctl_error(error, "KVM_SET_XSAVE");
    } else if (ioctl(vcpu_fd, KVM_SET_FPU, &l.fpu) < 0) {
        return ioctl_error(error, "KVM_SET_FPU");
    }
    if (l.has_xcrs && ioctl(vcpu_fd, KVM_SET_XCRS, &l.xcrs) < 0)
        return ioctl_error(error, "KVM_SET_XCRS");
    if (!set_msrs(vcpu_fd, l.msrs_early, error) || !set_msrs(vcpu_fd, l.msrs, error))
        return FALSE;
    if (ioctl(vcpu_fd, KVM_SET_MP_STATE, &l.mp) < 0)
        return ioctl_error(error, "KVM_SET_MP_STATE");
    if (ioctl(vcpu_fd, KVM_SET_LAPIC, &l.lapic) < 0)
        return ioctl_error(error, "KVM_SET_LAPIC");
    if (!set_msrs(vcpu_fd, l.msrs_late, error))
        return FALSE;
    if (ioctl(vcpu_fd, KVM_SET_VCPU_EVENTS, &l.events) < 0) {
        int e = errno;
        g_set_error(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_IOCTL,
                    "KVM_SET_VCPU_EVENTS failed: %s (event flags 0x%x; a pending exception "
                    "payload or triple fault needs KVM_CAP_EXCEPTION_PAYLOAD or "
                    "KVM_CAP_X86_TRIPLE_FAULT_EVENT enabled on the VM as on the source)",
                    g_strerror(e), l.events.flags);
        return FALSE;
    }
    if (l.has_debugregs && ioctl(vcpu_fd, KVM_SET_DEBUGREGS, &l.debugregs) < 0)
        return ioctl_error(error, "KVM_SET_DEBUGREGS");
    return TRUE;
}
