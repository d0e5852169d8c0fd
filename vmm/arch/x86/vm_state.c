#include "arch/x86/vm_state.h"
#include "arch/x86/state_records.h"
#include "arch/x86/vcpu_state.h"

#include <errno.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

/* Record types of the VM blob (docs/machine-state.md). */
enum {
    REC_PIC_MASTER = 1,
    REC_PIC_SLAVE = 2,
    REC_IOAPIC = 3,
    REC_PIT2 = 4,
    REC_CLOCK = 5,
};

#define CHIP_SIZE  sizeof(((struct kvm_irqchip *) 0)->chip) /* the 512-byte union */
#define CLOCK_SIZE 28u                                      /* u64 + u32 + u64 + u64 */

enum { I_PIC_MASTER, I_PIC_SLAVE, I_IOAPIC, I_PIT2, I_CLOCK, N_RECORDS };

static const FerryX86RecordSpec vm_records[N_RECORDS] = {
    [I_PIC_MASTER] = {REC_PIC_MASTER, "PIC_MASTER", CHIP_SIZE, CHIP_SIZE, TRUE},
    [I_PIC_SLAVE] = {REC_PIC_SLAVE, "PIC_SLAVE", CHIP_SIZE, CHIP_SIZE, TRUE},
    [I_IOAPIC] = {REC_IOAPIC, "IOAPIC", CHIP_SIZE, CHIP_SIZE, TRUE},
    [I_PIT2] = {REC_PIT2, "PIT2", sizeof(struct kvm_pit_state2), sizeof(struct kvm_pit_state2),
                TRUE},
    [I_CLOCK] = {REC_CLOCK, "CLOCK", CLOCK_SIZE, CLOCK_SIZE, TRUE},
};

/* KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE, _IOAPIC in record order. */
static const uint32_t chip_ids[3] = {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
                                     KVM_IRQCHIP_IOAPIC};

static gboolean ioctl_error(GError **error, const char *what)
{
    int e = errno;
    g_set_error(error, FERRY_X86_STATE_ERROR, FERRY_X86_STATE_ERROR_IOCTL, "%s failed: %s", what,
                g_strerror(e));
    return FALSE;
}

static uint64_t realtime_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * G_GUINT64_CONSTANT(1000000000) + (uint64_t) ts.tv_nsec;
}

gboolean ferry_x86_vm_read_clock(int vm_fd, FerryX86Clock *clock, GError **error)
{
    struct kvm_clock_data d;
    memset(&d, 0, sizeof(d));
    if (ioctl(vm_fd, KVM_GET_CLOCK, &d) < 0)
        return ioctl_error(error, "KVM_GET_CLOCK");
    uint64_t now = realtime_now_ns();
    clock->clock_ns = d.clock;
    clock->kvm_flags = d.flags;
    clock->realtime_ns = (d.flags & KVM_CLOCK_REALTIME) ? d.realtime : now;
    clock->host_tsc = (d.flags & KVM_CLOCK_HOST_TSC) ? d.host_tsc : 0;
    return TRUE;
}

gboolean ferry_x86_vm_restore_clock(int vm_fd, const FerryX86Clock *clock,
                                    gboolean advance_by_realtime, GError **error)
{
    struct kvm_clock_data d;
    memset(&d, 0, sizeof(d));
    d.clock = clock->clock_ns;
    if (advance_by_realtime) {
        int caps = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ADJUST_CLOCK);
        if (caps > 0 && (caps & KVM_CLOCK_REALTIME)) {
            /* KVM adds its CLOCK_REALTIME minus this when positive (api.rst KVM_SET_CLOCK). */
            d.flags = KVM_CLOCK_REALTIME;
            d.realtime = clock->realtime_ns;
        } else {
            uint64_t now = realtime_now_ns();
            if (now > clock->realtime_ns)
                d.clock += now - clock->realtime_ns;
        }
    }
    if (ioctl(vm_fd, KVM_SET_CLOCK, &d) < 0)
        return ioctl_error(error, "KVM_SET_CLOCK");
    return TRUE;
}

gboolean ferry_x86_vm_save_state(int vm_fd, FerryStateWriter *w, GError **error)
{
    static const uint8_t chip_types[3] = {REC_PIC_MASTER, REC_PIC_SLAVE, REC_IOAPIC};
    gsize mark = ferry_x86_records_begin(w, FERRY_X86_VM_STATE_VERSION);

    for (unsigned i = 0; i < 3; i++) {
        struct kvm_irqchip chip;
        memset(&chip, 0, sizeof(chip));
        chip.chip_id = chip_ids[i];
        if (ioctl(vm_fd, KVM_GET_IRQCHIP, &chip) < 0)
            return ioctl_error(error, "KVM_GET_IRQCHIP");
        ferry_x86_record_put(w, chip_types[i], &chip.chip, CHIP_SIZE);
    }

    struct kvm_pit_state2 pit;
    memset(&pit, 0, sizeof(pit));
    if (ioctl(vm_fd, KVM_GET_PIT2, &pit) < 0)
        return ioctl_error(error, "KVM_GET_PIT2");
    ferry_x86_record_put(w, REC_PIT2, &pit, sizeof(pit));

    FerryX86Clock c;
    if (!ferry_x86_vm_read_clock(vm_fd, &c, error))
        return FALSE;
    g_autoptr(GByteArray) payload = g_byte_array_new();
    FerryStateWriter pw = {.buf = payload};
    ferry_state_put_u64(&pw, c.clock_ns);
    ferry_state_put_u32(&pw, c.kvm_flags);
    ferry_state_put_u64(&pw, c.realtime_ns);
    ferry_state_put_u64(&pw, c.host_tsc);
    ferry_x86_record_put(w, REC_CLOCK, payload->data, payload->len);

    ferry_x86_records_end(w, mark);
    return TRUE;
}

gboolean ferry_x86_vm_load_state(int vm_fd, FerryStateReader *r, FerryX86Clock *clock,
                                 GError **error)
{
    FerryX86Record rec[N_RECORDS];
    uint8_t version;
    if (!ferry_x86_records_parse(r, FERRY_X86_VM_STATE_VERSION, vm_records, N_RECORDS, rec,
                                 &version, error))
        return FALSE;

    struct kvm_irqchip chips[3];
    for (unsigned i = 0; i < 3; i++) {
        memset(&chips[i], 0, sizeof(chips[i]));
        chips[i].chip_id = chip_ids[i];
        memcpy(&chips[i].chip, rec[I_PIC_MASTER + i].data, CHIP_SIZE);
    }
    struct kvm_pit_state2 pit;
    memcpy(&pit, rec[I_PIT2].data, sizeof(pit));
    for (unsigned i = 0; i < 3; i++) {
        const struct kvm_pit_channel_state *ch = &pit.channels[i];
        /* KVM marks a never-programmed channel with mode 0xff. */
        if ((ch->mode > 5 && ch->mode != 0xff) || ch->count > 0x10000) {
            g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                        "%s: PIT channel %u has mode %u and count %u (modes 0 to 5, 255 for "
                        "unprogrammed, and counts up to 65536 exist)",
                        r->what, i, ch->mode, ch->count);
            return FALSE;
        }
    }
    const uint8_t *c = rec[I_CLOCK].data;
    FerryX86Clock saved = {
        .clock_ns = ferry_le_load64(c),
        .kvm_flags = ferry_le_load32(c + 8),
        .realtime_ns = ferry_le_load64(c + 12),
        .host_tsc = ferry_le_load64(c + 20),
    };

    for (unsigned i = 0; i < 3; i++)
        if (ioctl(vm_fd, KVM_SET_IRQCHIP, &chips[i]) < 0)
            return ioctl_error(error, "KVM_SET_IRQCHIP");
    if (ioctl(vm_fd, KVM_SET_PIT2, &pit) < 0)
        return ioctl_error(error, "KVM_SET_PIT2");
    *clock = saved;
    return TRUE;
}
