#include "snapshot.h"

#include "arch/x86/vcpu_state.h"
#include "arch/x86/vm_state.h"
#include "devices/device.h"
#include "pci/pci.h"
#include "util/log.h"
#include "virtio/pci.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define SECTION_MACHINE "machine"
#define SECTION_PCI     "pci"
#define SECTION_VERSION 1 /* the blobs carry their own versions; this is the container's */

/* ---- the configuration a stream belongs to ----------------------------------------- */

/* Summary items beyond memory, layout and vcpus: one per device, the rest merged. */
#define IDENTITY_DEVICE_ITEMS (FERRY_STREAM_MAX_CONFIG_ITEMS - 3)

/*
 * The summary names every device on its own ("device disk0" = "virtio-blk, slot 3"), so a
 * mismatch reads "device disk0: virtio-blk, slot 3 in the stream, absent here" rather than
 * two long lists to compare; the digest covers the same text.
 */
struct FerryVmIdentity {
    char *memory, *layout, *vcpus;
    GPtrArray *strings; /* device keys and values, owned */
    FerryStreamConfigItem items[FERRY_STREAM_MAX_CONFIG_ITEMS];
    FerryStreamConfig config;
};
typedef FerryVmIdentity StreamIdentity;

/* "serial" for plain devices; "virtio-blk, slot 3" for a virtio-pci function. */
static char *device_description(FerryDevice *d)
{
    FerryVirtioPci *vp = ferry_virtio_pci_from_device(d);
    if (!vp)
        return g_strdup(d->ops->kind);
    return g_strdup_printf("%s, slot %u", ferry_virtio_pci_vdev(vp)->ops->kind,
                           ferry_virtio_pci_slot(vp));
}

static void identity_init(StreamIdentity *id, FerryVm *vm)
{
    GString *layout = g_string_new(NULL);
    for (unsigned i = 0; i < vm->mem->nr_regions; i++)
        g_string_append_printf(layout, "%s0x%" G_GINT64_MODIFIER "x+0x%" G_GINT64_MODIFIER "x",
                               i ? "," : "", vm->mem->regions[i].gpa, vm->mem->regions[i].size);
    id->memory = g_strdup_printf("%" G_GUINT64_FORMAT " MiB", vm->mem->total >> 20);
    id->layout = g_string_free(layout, FALSE);
    id->vcpus = g_strdup_printf("%u", vm->nr_vcpus);
    id->items[0] = (FerryStreamConfigItem){"memory", id->memory};
    id->items[1] = (FerryStreamConfigItem){"ram layout", id->layout};
    id->items[2] = (FerryStreamConfigItem){"vcpus", id->vcpus};
    unsigned n = 3;

    GString *canonical = g_string_new(NULL);
    g_string_append_printf(canonical, "ferry-vm/2\nmemory=%s\nlayout=%s\nvcpus=%s\n", id->memory,
                           id->layout, id->vcpus);
    id->strings = g_ptr_array_new_with_free_func(g_free);
    GString *rest = NULL; /* devices beyond the summary's capacity, in one item */
    for (guint i = 0; i < vm->devices->len; i++) {
        FerryDevice *d = g_ptr_array_index(vm->devices, i);
        char *what = device_description(d);
        g_string_append_printf(canonical, "device %s=%s\n", d->id, what);
        if (i + 1 < IDENTITY_DEVICE_ITEMS || vm->devices->len == IDENTITY_DEVICE_ITEMS) {
            char *key = g_strdup_printf("device %s", d->id);
            g_ptr_array_add(id->strings, key);
            g_ptr_array_add(id->strings, what);
            id->items[n++] = (FerryStreamConfigItem){key, what};
            continue;
        }
        if (!rest)
            rest = g_string_new(NULL);
        else
            g_string_append(rest, "; ");
        g_string_append_printf(rest, "%s: %s", d->id, what);
        g_free(what);
    }
    if (rest) {
        /* the digest still covers every device */
        if (rest->len > FERRY_STREAM_MAX_CONFIG_VALUE)
            g_string_truncate(rest, FERRY_STREAM_MAX_CONFIG_VALUE);
        char *what = g_string_free(rest, FALSE);
        g_ptr_array_add(id->strings, what);
        id->items[n++] = (FerryStreamConfigItem){"more devices", what};
    }
    ferry_stream_config_digest(canonical->str, id->config.digest);
    g_string_free(canonical, TRUE);
    id->config.items = id->items;
    id->config.n_items = n;
}

static void identity_clear(StreamIdentity *id)
{
    g_free(id->memory);
    g_free(id->layout);
    g_free(id->vcpus);
    g_ptr_array_unref(id->strings);
}

FerryVmIdentity *ferry_vm_identity_new(FerryVm *vm)
{
    FerryVmIdentity *id = g_new0(FerryVmIdentity, 1);
    identity_init(id, vm);
    return id;
}

const FerryStreamConfig *ferry_vm_identity_config(const FerryVmIdentity *id)
{
    return &id->config;
}

void ferry_vm_identity_free(FerryVmIdentity *id)
{
    if (!id)
        return;
    identity_clear(id);
    g_free(id);
}

unsigned ferry_vm_ram_ranges(FerryVm *vm, FerryStreamRange ram[FERRY_MAX_RAM_REGIONS])
{
    for (unsigned i = 0; i < vm->mem->nr_regions; i++)
        ram[i] = (FerryStreamRange){vm->mem->regions[i].gpa, vm->mem->regions[i].size};
    return vm->mem->nr_regions;
}

/* ---- saving ------------------------------------------------------------------------ */

/* Sends the pages of region @r that hold data: memfd holes (never touched) are skipped. */
static gboolean save_region(FerryStreamWriter *w, FerryGuestMemory *mem, const FerryMemRegion *r,
                            GError **error)
{
    const uint64_t batch = FERRY_STREAM_MAX_BATCH_PAGES * FERRY_PAGE_SIZE;
    off_t end = (off_t) (r->fd_offset + r->size);
    off_t pos = (off_t) r->fd_offset;
    while (pos < end) {
        off_t data = lseek(mem->memfd, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            break; /* only a hole is left */
        if (data < 0) {
            data = pos; /* no SEEK_DATA: send everything, zero pages as flags */
        }
        if (data >= end)
            break;
        off_t hole = lseek(mem->memfd, data, SEEK_HOLE);
        if (hole < 0 || hole > end)
            hole = end;
        data &= ~(off_t) (FERRY_PAGE_SIZE - 1);
        for (off_t p = data; p < hole; p += (off_t) batch) {
            uint64_t bytes = MIN((uint64_t) (hole - p), batch);
            unsigned npages = (unsigned) ((bytes + FERRY_PAGE_SIZE - 1) / FERRY_PAGE_SIZE);
            uint64_t off = (uint64_t) p - r->fd_offset;
            if (!ferry_stream_writer_put_ram_batch(w, r->gpa + off, npages, r->hva + off, NULL,
                                                   error))
                return FALSE;
        }
        pos = hole;
    }
    return TRUE;
}

static gboolean put_blob(FerryStreamWriter *w, const char *id, GByteArray *blob, GError **error)
{
    if (blob->len > FERRY_STREAM_MAX_SECTION_DATA) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_OVERSIZED,
                    "the state of %s is %u bytes, more than a section holds", id, blob->len);
        return FALSE;
    }
    return ferry_stream_writer_put_section(w, id, SECTION_VERSION, blob->data, blob->len, error);
}

gboolean ferry_vm_put_state_sections(FerryVm *vm, FerryStreamWriter *w, GError **error)
{
    /* Registers must be consistent: finish what a parked vCPU was in the middle of. */
    for (unsigned i = 0; i < vm->nr_vcpus; i++)
        if (!ferry_vcpu_settle(vm->vcpus[i], error))
            return FALSE;

    g_autoptr(GByteArray) blob = g_byte_array_new();
    FerryStateWriter sw = {blob};
    ferry_pci_host_save(vm->pci, &sw);
    if (!put_blob(w, SECTION_PCI, blob, error))
        return FALSE;
    for (guint i = 0; i < vm->devices->len; i++) {
        FerryDevice *d = g_ptr_array_index(vm->devices, i);
        g_autoptr(GBytes) state = ferry_device_save(d);
        g_autofree char *name = g_strdup_printf("dev/%s", d->id);
        gsize len;
        const void *data = g_bytes_get_data(state, &len);
        if (!ferry_stream_writer_put_section(w, name, d->ops->state_version, data, len, error))
            return FALSE;
    }
    for (unsigned i = 0; i < vm->nr_vcpus; i++) {
        g_byte_array_set_size(blob, 0);
        if (!ferry_x86_vcpu_save_state(vm->kvm, vm->vcpus[i]->fd, &sw, error))
            return FALSE;
        g_autofree char *name = g_strdup_printf("vcpu/%u", i);
        if (!put_blob(w, name, blob, error))
            return FALSE;
    }
    /* kvmclock is read last: the instant the saved machine stands at */
    g_byte_array_set_size(blob, 0);
    return ferry_x86_vm_save_state(vm->kvm->vm_fd, &sw, error) &&
           put_blob(w, SECTION_MACHINE, blob, error);
}

gboolean ferry_vm_save_state(FerryVm *vm, GOutputStream *out, FerryStreamStats *stats,
                             GError **error)
{
    StreamIdentity id;
    identity_init(&id, vm);
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    gboolean ok = ferry_stream_writer_put_header(w, &id.config, error);
    identity_clear(&id);
    if (!ok || !ferry_stream_writer_put_round(w, 0, FERRY_STREAM_ROUND_FINAL, error))
        return FALSE;
    for (unsigned i = 0; i < vm->mem->nr_regions; i++)
        if (!save_region(w, vm->mem, &vm->mem->regions[i], error))
            return FALSE;
    if (!ferry_vm_put_state_sections(vm, w, error) || !ferry_stream_writer_put_end(w, error))
        return FALSE;
    if (stats)
        ferry_stream_writer_get_stats(w, stats);
    return TRUE;
}

gboolean ferry_vm_save_to_file(FerryVm *vm, const char *path, FerryStreamStats *stats,
                               GError **error)
{
    g_autoptr(GFile) file = g_file_new_for_path(path);
    /* g_file_replace writes a temporary file and renames it on a successful close */
    g_autoptr(GFileOutputStream) out =
        g_file_replace(file, NULL, FALSE, G_FILE_CREATE_PRIVATE, NULL, error);
    if (!out) {
        g_prefix_error(error, "cannot save to '%s': ", path);
        return FALSE;
    }
    if (!ferry_vm_save_state(vm, G_OUTPUT_STREAM(out), stats, error)) {
        g_autoptr(GCancellable) cancel = g_cancellable_new();
        g_cancellable_cancel(cancel); /* closing cancelled keeps the old file, drops the new */
        g_output_stream_close(G_OUTPUT_STREAM(out), cancel, NULL);
        g_prefix_error(error, "saving to '%s' failed: ", path);
        return FALSE;
    }
    if (!g_output_stream_close(G_OUTPUT_STREAM(out), NULL, error)) {
        g_prefix_error(error, "cannot finish '%s': ", path);
        return FALSE;
    }
    return TRUE;
}

/* ---- loading ----------------------------------------------------------------------- */

static gboolean load_ram_batch(FerryVm *vm, const FerryStreamRecord *rec, GError **error)
{
    FerryStreamPageIter it;
    ferry_stream_page_iter_init(&it, rec);
    uint64_t gpa;
    const uint8_t *data;
    while (ferry_stream_page_iter_next(&it, &gpa, &data)) {
        uint8_t *hva = ferry_guest_memory_hva(vm->mem, gpa, FERRY_PAGE_SIZE);
        if (!hva) {
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_RANGE,
                        "page at 0x%" G_GINT64_MODIFIER "x is outside guest RAM", gpa);
            return FALSE;
        }
        /*
         * Zero pages are skipped: the VM is fresh and its RAM all zero, so they stay holes
         * (a 4 GiB guest that used 300 MiB restores into 300 MiB).  Incoming migration,
         * where a page can be resent as zero, must clear them instead.
         */
        if (data)
            memcpy(hva, data, FERRY_PAGE_SIZE);
    }
    return TRUE;
}

static GBytes *take_section(GHashTable *sections, const char *id, GError **error)
{
    GBytes *b = g_hash_table_lookup(sections, id);
    if (!b) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "the stream has no state for %s", id);
        return NULL;
    }
    return b;
}

gboolean ferry_vm_apply_state_sections(FerryVm *vm, GHashTable *sections, GError **error)
{
    if (g_hash_table_size(sections) != 2 + vm->devices->len + vm->nr_vcpus) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "the stream holds %u state sections; this VM needs %u",
                    g_hash_table_size(sections), 2 + vm->devices->len + vm->nr_vcpus);
        return FALSE;
    }
    GBytes *b = take_section(sections, SECTION_PCI, error);
    if (!b)
        return FALSE;
    gsize len;
    const uint8_t *data = g_bytes_get_data(b, &len);
    FerryStateReader r;
    ferry_state_reader_init(&r, data, len, "PCI state");
    if (!ferry_pci_host_load(vm->pci, &r, error) || !ferry_state_reader_finish(&r, error))
        return FALSE;
    for (guint i = 0; i < vm->devices->len; i++) {
        FerryDevice *d = g_ptr_array_index(vm->devices, i);
        g_autofree char *name = g_strdup_printf("dev/%s", d->id);
        if (!(b = take_section(sections, name, error)) || !ferry_device_load(d, b, error))
            return FALSE;
    }
    b = take_section(sections, SECTION_MACHINE, error);
    if (!b)
        return FALSE;
    data = g_bytes_get_data(b, &len);
    ferry_state_reader_init(&r, data, len, "machine state");
    FerryX86Clock clock;
    if (!ferry_x86_vm_load_state(vm->kvm->vm_fd, &r, &clock, error) ||
        !ferry_state_reader_finish(&r, error))
        return FALSE;
    for (unsigned i = 0; i < vm->nr_vcpus; i++) {
        g_autofree char *name = g_strdup_printf("vcpu/%u", i);
        if (!(b = take_section(sections, name, error)))
            return FALSE;
        data = g_bytes_get_data(b, &len);
        ferry_state_reader_init(&r, data, len, name);
        if (!ferry_x86_vcpu_load_state(vm->kvm, vm->vcpus[i]->fd, &r, error) ||
            !ferry_state_reader_finish(&r, error))
            return FALSE;
    }
    /* Last, right before the vCPUs run: the guest clock moves on by the time elapsed. */
    return ferry_x86_vm_restore_clock(vm->kvm->vm_fd, &clock, TRUE, error);
}

gboolean ferry_vm_load_state(FerryVm *vm, GInputStream *in, GError **error)
{
    StreamIdentity id;
    identity_init(&id, vm);
    FerryStreamRange ram[FERRY_MAX_RAM_REGIONS];
    for (unsigned i = 0; i < vm->mem->nr_regions; i++)
        ram[i] = (FerryStreamRange){vm->mem->regions[i].gpa, vm->mem->regions[i].size};
    g_autoptr(FerryStreamReader) r =
        ferry_stream_reader_new(in, 0, &id.config, ram, vm->mem->nr_regions, NULL);
    gboolean ok = ferry_stream_reader_read_header(r, error);
    identity_clear(&id);
    if (!ok)
        return FALSE;

    g_autoptr(GHashTable) sections =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify) g_bytes_unref);
    FerryStreamRecord rec;
    for (;;) {
        if (!ferry_stream_reader_next(r, &rec, error))
            return FALSE;
        switch (rec.type) {
        case FERRY_STREAM_RECORD_END:
            return ferry_vm_apply_state_sections(vm, sections, error);
        case FERRY_STREAM_RECORD_RAM_BATCH:
            if (!load_ram_batch(vm, &rec, error))
                return FALSE;
            break;
        case FERRY_STREAM_RECORD_SECTION:
            /* later rounds may resend a section: the last one wins */
            g_hash_table_replace(sections, g_strdup(rec.section.id),
                                 g_bytes_new(rec.section.data, rec.section.len));
            break;
        case FERRY_STREAM_RECORD_ROUND:
            break;
        default:
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_UNKNOWN_RECORD,
                        "record type %u at offset %" G_GUINT64_FORMAT
                        " does not belong in a saved VM",
                        rec.type, rec.offset);
            return FALSE;
        }
    }
}

gboolean ferry_vm_restore_from_file(FerryVm *vm, const char *path, GError **error)
{
    g_autoptr(GFile) file = g_file_new_for_path(path);
    g_autoptr(GFileInputStream) in = g_file_read(file, NULL, error);
    if (!in) {
        g_prefix_error(error, "cannot restore from '%s': ", path);
        return FALSE;
    }
    if (!ferry_vm_load_state(vm, G_INPUT_STREAM(in), error)) {
        g_prefix_error(error, "cannot restore from '%s': ", path);
        return FALSE;
    }
    return TRUE;
}
