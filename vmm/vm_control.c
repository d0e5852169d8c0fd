#include "vm_control.h"

#include "snapshot.h"

#include "devices/device.h"
#include "migration/migration.h"
#include "virtio/blk.h"
#include "virtio/net.h"
#include "virtio/pci.h"
#include "vm.h"

#include <errno.h>
#include <gio/gio.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#define NS_PER_SEC  1000000000LL
#define NS_PER_USEC 1000LL

/* Pages of guest RAM looked at per mincore() call: bounds the vector to 64 KiB. */
#define MINCORE_CHUNK_PAGES 65536ULL

static JsonNode *take_object(JsonObject *o)
{
    JsonNode *n = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    return n;
}

static void set_string_or_null(JsonObject *o, const char *name, const char *value)
{
    if (value)
        json_object_set_string_member(o, name, value);
    else
        json_object_set_null_member(o, name);
}

/* The virtio-pci function named @id ("disk0"), or NULL. */
static FerryVirtioPci *find_virtio(FerryVm *vm, const char *id)
{
    for (guint i = 0; i < vm->devices->len; i++) {
        FerryDevice *dev = g_ptr_array_index(vm->devices, i);
        FerryVirtioPci *vp = ferry_virtio_pci_from_device(dev);
        if (vp && g_strcmp0(dev->id, id) == 0)
            return vp;
    }
    return NULL;
}

/* A console back end as the command line spells it ("stdio", "file=PATH"). */
static char *chardev_spec_text(const FerryChardevSpec *spec)
{
    switch (spec->kind) {
    case FERRY_CHARDEV_OFF:
        return g_strdup("off");
    case FERRY_CHARDEV_STDIO:
        return g_strdup("stdio");
    case FERRY_CHARDEV_PTY:
        return g_strdup("pty");
    case FERRY_CHARDEV_FILE:
        return g_strdup_printf("file=%s", spec->path);
    case FERRY_CHARDEV_SOCKET:
        return g_strdup_printf("socket=%s", spec->path);
    }
    return g_strdup("unknown");
}

/* query-status: {"status": "running"|"paused", "name": str, "vcpus": n, "memory": bytes} */
static JsonNode *query_status(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "status", ferry_vm_status(vm));
    json_object_set_string_member(o, "name", vm->cfg->name);
    json_object_set_int_member(o, "vcpus", vm->nr_vcpus);
    json_object_set_int_member(o, "memory", (gint64) vm->cfg->memory);
    return take_object(o);
}

/* ---- query-config ------------------------------------------------------------------ */

static JsonArray *config_disks(FerryVm *vm)
{
    JsonArray *a = json_array_new();
    for (guint i = 0; i < vm->cfg->disks->len; i++) {
        const FerryDiskSpec *d = &g_array_index(vm->cfg->disks, FerryDiskSpec, i);
        g_autofree char *id = g_strdup_printf("disk%u", i);
        FerryVirtioPci *vp = find_virtio(vm, id);
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "id", id);
        json_object_set_string_member(o, "path", d->path);
        json_object_set_boolean_member(o, "readonly", d->readonly);
        set_string_or_null(o, "serial", d->serial && d->serial[0] ? d->serial : NULL);
        if (vp) {
            FerryVirtioDev *vdev = ferry_virtio_pci_vdev(vp);
            json_object_set_int_member(o, "slot", ferry_virtio_pci_slot(vp));
            json_object_set_int_member(o, "capacity",
                                       (gint64) (ferry_virtio_blk_capacity(vdev) * 512));
        }
        json_array_add_object_element(a, o);
    }
    return a;
}

/* The MAC and MTU the device shows the driver (struct virtio_net_config, section 5.1.4). */
static void net_config_fields(FerryVirtioDev *vdev, uint8_t mac[6], unsigned *mtu)
{
    uint8_t cfg[FERRY_VIRTIO_NET_CONFIG_SIZE];
    g_mutex_lock(&vdev->lock);
    for (uint32_t off = 0; off < sizeof(cfg); off++)
        vdev->ops->read_config(vdev, off, &cfg[off], 1);
    g_mutex_unlock(&vdev->lock);
    memcpy(mac, cfg, 6);
    *mtu = (unsigned) cfg[10] | (unsigned) cfg[11] << 8;
}

static JsonArray *config_nets(FerryVm *vm)
{
    JsonArray *a = json_array_new();
    for (guint i = 0; i < vm->cfg->nets->len; i++) {
        const FerryNetSpec *n = &g_array_index(vm->cfg->nets, FerryNetSpec, i);
        g_autofree char *id = g_strdup_printf("net%u", i);
        FerryVirtioPci *vp = find_virtio(vm, id);
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "id", id);
        if (n->fd >= 0)
            json_object_set_int_member(o, "fd", n->fd);
        else
            json_object_set_null_member(o, "fd");
        if (vp) {
            FerryVirtioDev *vdev = ferry_virtio_pci_vdev(vp);
            uint8_t mac[6];
            unsigned mtu;
            net_config_fields(vdev, mac, &mtu);
            g_autofree char *mac_text = g_strdup_printf("%02x:%02x:%02x:%02x:%02x:%02x", mac[0],
                                                        mac[1], mac[2], mac[3], mac[4], mac[5]);
            json_object_set_string_member(o, "ifname", ferry_virtio_net_ifname(vdev));
            json_object_set_string_member(o, "mac", mac_text);
            json_object_set_int_member(o, "mtu", mtu);
            json_object_set_int_member(o, "slot", ferry_virtio_pci_slot(vp));
        } else {
            set_string_or_null(o, "ifname", n->tap);
        }
        json_array_add_object_element(a, o);
    }
    return a;
}

/*
 * Sets @member of @o to {"id": @id, "slot": n} for the virtio function @id and returns that
 * object (borrowed), or sets JSON null and returns NULL if there is no such function.
 */
static JsonObject *set_simple_device(FerryVm *vm, JsonObject *o, const char *member, const char *id)
{
    FerryVirtioPci *vp = find_virtio(vm, id);
    if (!vp) {
        json_object_set_null_member(o, member);
        return NULL;
    }
    JsonObject *d = json_object_new();
    json_object_set_string_member(d, "id", id);
    json_object_set_int_member(d, "slot", ferry_virtio_pci_slot(vp));
    json_object_set_object_member(o, member, d);
    return d;
}

/* query-config: the configuration ferry-vmm was started with (docs/control-api.md). */
static JsonNode *query_config(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    const FerryVmConfig *cfg = vm->cfg;
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "name", cfg->name);
    json_object_set_string_member(o, "kernel", cfg->kernel);
    set_string_or_null(o, "initrd", cfg->initrd);
    json_object_set_string_member(o, "cmdline", cfg->cmdline ? cfg->cmdline : "");
    json_object_set_int_member(o, "memory", (gint64) cfg->memory);
    json_object_set_int_member(o, "vcpus", vm->nr_vcpus);
    g_autofree char *serial = chardev_spec_text(&cfg->serial);
    json_object_set_string_member(o, "serial", serial);
    set_string_or_null(o, "control_socket", cfg->control_socket);
    json_object_set_string_member(o, "on_reboot",
                                  cfg->on_reboot == FERRY_ON_REBOOT_EXIT ? "exit" : "reset");
    json_object_set_array_member(o, "disks", config_disks(vm));
    json_object_set_array_member(o, "nets", config_nets(vm));
    set_simple_device(vm, o, "rng", "rng0");
    JsonObject *vcon = set_simple_device(vm, o, "virtio_console", "vcon0");
    if (vcon) {
        g_autofree char *backend = chardev_spec_text(&cfg->virtio_console);
        json_object_set_string_member(vcon, "backend", backend);
    }
    return take_object(o);
}

/* ---- stats ------------------------------------------------------------------------- */

static gint64 timespec_ns(const struct timespec *ts)
{
    return (gint64) ts->tv_sec * NS_PER_SEC + ts->tv_nsec;
}

static gint64 timeval_ns(const struct timeval *tv)
{
    return (gint64) tv->tv_sec * NS_PER_SEC + (gint64) tv->tv_usec * NS_PER_USEC;
}

/* CPU time of @vcpu's thread in ns, or -1 if the thread is not running (not started, ended). */
static gint64 vcpu_cpu_time_ns(FerryVcpu *vcpu)
{
    if (!g_atomic_int_get(&vcpu->tid_valid))
        return -1;
    clockid_t clock;
    struct timespec ts;
    if (pthread_getcpuclockid(vcpu->tid, &clock) != 0 || clock_gettime(clock, &ts) < 0)
        return -1;
    return timespec_ns(&ts);
}

/*
 * Bytes of guest RAM present in host memory (mincore, which for a shared mapping reports the
 * memfd's pages in the page cache, mapped or not), or -1 if mincore fails.
 */
static gint64 guest_ram_resident(const FerryGuestMemory *mem)
{
    uint64_t pages = mem->total / FERRY_PAGE_SIZE;
    g_autofree unsigned char *vec = g_malloc(MIN(pages, MINCORE_CHUNK_PAGES));
    uint64_t resident = 0;
    for (uint64_t first = 0; first < pages; first += MINCORE_CHUNK_PAGES) {
        uint64_t n = MIN(pages - first, MINCORE_CHUNK_PAGES);
        if (mincore(mem->base + first * FERRY_PAGE_SIZE, n * FERRY_PAGE_SIZE, vec) < 0)
            return -1;
        for (uint64_t i = 0; i < n; i++)
            resident += vec[i] & 1;
    }
    return (gint64) (resident * FERRY_PAGE_SIZE);
}

static void set_int_or_null(JsonObject *o, const char *name, gint64 value)
{
    if (value >= 0)
        json_object_set_int_member(o, name, value);
    else
        json_object_set_null_member(o, name);
}

static JsonArray *stats_vcpus(FerryVm *vm)
{
    JsonArray *a = json_array_new();
    for (unsigned i = 0; i < vm->nr_vcpus; i++) {
        JsonObject *o = json_object_new();
        json_object_set_int_member(o, "index", i);
        set_int_or_null(o, "cpu_time_ns", vcpu_cpu_time_ns(vm->vcpus[i]));
        json_array_add_object_element(a, o);
    }
    return a;
}

static JsonArray *stats_disks(FerryVm *vm)
{
    JsonArray *a = json_array_new();
    for (guint i = 0; i < vm->cfg->disks->len; i++) {
        g_autofree char *id = g_strdup_printf("disk%u", i);
        FerryVirtioPci *vp = find_virtio(vm, id);
        if (!vp)
            continue;
        FerryVirtioBlkStats st;
        ferry_virtio_blk_get_stats(ferry_virtio_pci_vdev(vp), &st);
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "id", id);
        json_object_set_int_member(o, "read_requests", (gint64) st.read_requests);
        json_object_set_int_member(o, "write_requests", (gint64) st.write_requests);
        json_object_set_int_member(o, "flush_requests", (gint64) st.flush_requests);
        json_object_set_int_member(o, "read_bytes", (gint64) st.read_bytes);
        json_object_set_int_member(o, "write_bytes", (gint64) st.write_bytes);
        json_object_set_int_member(o, "errors", (gint64) st.errors);
        json_array_add_object_element(a, o);
    }
    return a;
}

/* One counter of a network interface from sysfs, or -1 if it cannot be read. */
static gint64 netdev_counter(const char *ifname, const char *counter)
{
    g_autofree char *path = g_strdup_printf("/sys/class/net/%s/statistics/%s", ifname, counter);
    g_autofree char *text = NULL;
    guint64 v;
    if (!g_file_get_contents(path, &text, NULL, NULL) ||
        !g_ascii_string_to_unsigned(g_strstrip(text), 10, 0, G_MAXINT64, &v, NULL))
        return -1;
    return (gint64) v;
}

/*
 * The host kernel's counters of TAP @ifname, from the host's side (its rx is what the guest
 * sent), or NULL if the interface is not visible in this network namespace.
 */
static JsonObject *tap_counters(const char *ifname)
{
    static const char *const names[] = {"rx_bytes", "rx_packets", "rx_dropped",
                                        "tx_bytes", "tx_packets", "tx_dropped"};
    JsonObject *o = json_object_new();
    for (unsigned i = 0; i < G_N_ELEMENTS(names); i++) {
        gint64 v = netdev_counter(ifname, names[i]);
        if (v < 0) {
            json_object_unref(o);
            return NULL;
        }
        json_object_set_int_member(o, names[i], v);
    }
    return o;
}

static JsonArray *stats_nets(FerryVm *vm)
{
    JsonArray *a = json_array_new();
    for (guint i = 0; i < vm->cfg->nets->len; i++) {
        g_autofree char *id = g_strdup_printf("net%u", i);
        FerryVirtioPci *vp = find_virtio(vm, id);
        if (!vp)
            continue;
        FerryVirtioDev *vdev = ferry_virtio_pci_vdev(vp);
        FerryVirtioNetStats st;
        ferry_virtio_net_get_stats(vdev, &st);
        const char *ifname = ferry_virtio_net_ifname(vdev);
        JsonObject *o = json_object_new();
        json_object_set_string_member(o, "id", id);
        json_object_set_string_member(o, "ifname", ifname);
        json_object_set_int_member(o, "rx_packets", (gint64) st.rx_frames);
        json_object_set_int_member(o, "rx_dropped", (gint64) st.rx_dropped);
        json_object_set_int_member(o, "tx_packets", (gint64) st.tx_frames);
        json_object_set_int_member(o, "tx_dropped", (gint64) st.tx_dropped);
        JsonObject *tap = tap_counters(ifname);
        if (tap)
            json_object_set_object_member(o, "tap", tap);
        else
            json_object_set_null_member(o, "tap");
        json_array_add_object_element(a, o);
    }
    return a;
}

/* stats: CPU, memory, disk and network counters (docs/control-api.md). */
static JsonNode *stats(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    JsonObject *o = json_object_new();
    json_object_set_int_member(o, "time_ns", timespec_ns(&now));
    json_object_set_array_member(o, "vcpus", stats_vcpus(vm));

    JsonObject *mem = json_object_new();
    json_object_set_int_member(mem, "configured_bytes", (gint64) vm->cfg->memory);
    set_int_or_null(mem, "resident_bytes", guest_ram_resident(vm->mem));
    json_object_set_object_member(o, "memory", mem);

    json_object_set_array_member(o, "disks", stats_disks(vm));
    json_object_set_array_member(o, "nets", stats_nets(vm));

    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0) {
        json_object_unref(o);
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                    "cannot read ferry-vmm's CPU time: getrusage: %s", g_strerror(errno));
        return NULL;
    }
    JsonObject *vmm = json_object_new();
    json_object_set_int_member(vmm, "user_time_ns", timeval_ns(&ru.ru_utime));
    json_object_set_int_member(vmm, "system_time_ns", timeval_ns(&ru.ru_stime));
    json_object_set_object_member(o, "vmm", vmm);
    return take_object(o);
}

/* ---- life cycle -------------------------------------------------------------------- */

static JsonNode *pause_vm(void *opaque, JsonObject *params, GError **error)
{
    ferry_vm_pause(opaque);
    return NULL;
}

/* Refuses what would disturb a running migration (e.g. "reset"). */
static gboolean migration_allows(FerryVm *vm, const char *what, GError **error)
{
    if (vm->incoming) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "cannot %s: the VM is waiting for its incoming migration", what);
        return FALSE;
    }
    if (ferry_migration_busy(vm->migration)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "cannot %s while a migration is %s; cancel it first (migrate-cancel)", what,
                    ferry_migration_status_name(ferry_migration_status(vm->migration)));
        return FALSE;
    }
    return TRUE;
}

static JsonNode *resume_vm(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    if (!migration_allows(vm, "resume", error))
        return NULL;
    /* after a migration the disk images belong to the destination until taken back */
    if (vm->user_paused && !ferry_vm_lock_images(vm, error))
        return NULL;
    ferry_vm_resume(vm);
    return NULL;
}

static JsonNode *powerdown_vm(void *opaque, JsonObject *params, GError **error)
{
    ferry_vm_press_power_button(opaque);
    return NULL;
}

static JsonNode *reset_vm(void *opaque, JsonObject *params, GError **error)
{
    if (!migration_allows(opaque, "reset", error))
        return NULL;
    ferry_vm_request_reset(opaque);
    return NULL;
}

static JsonNode *quit_vm(void *opaque, JsonObject *params, GError **error)
{
    ferry_vm_request_stop(opaque);
    return NULL;
}

/*
 * save {"path": str}: pauses the VM (it stays paused, as after `pause`) and writes its whole
 * state to @path (docs/migration-protocol.md).  Result: {"bytes": n, "ram_pages": n,
 * "zero_pages": n, "ms": n}.
 */
static JsonNode *save_vm(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    const char *path = params && json_object_has_member(params, "path")
                           ? json_object_get_string_member_with_default(params, "path", NULL)
                           : NULL;
    if (!path || !*path) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "save needs {\"path\": FILE}");
        return NULL;
    }
    if (g_str_equal(ferry_vm_status(vm), "shutdown")) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "the VM has shut down; there is nothing to save");
        return NULL;
    }
    if (!migration_allows(vm, "save", error))
        return NULL;
    ferry_vm_pause(vm);
    gint64 start = g_get_monotonic_time();
    FerryStreamStats st;
    g_autoptr(GError) e = NULL;
    if (!ferry_vm_save_to_file(vm, path, &st, &e)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s", e->message);
        return NULL;
    }
    JsonObject *o = json_object_new();
    json_object_set_int_member(o, "bytes", (gint64) st.bytes);
    json_object_set_int_member(o, "ram_pages", (gint64) st.data_pages);
    json_object_set_int_member(o, "zero_pages", (gint64) st.zero_pages);
    json_object_set_int_member(o, "ms", (g_get_monotonic_time() - start) / 1000);
    JsonNode *n = json_node_init_object(json_node_alloc(), o);
    json_object_unref(o);
    return n;
}

/* ---- migration (docs/control-api.md "Migration") ---- */

static const char *string_param(JsonObject *params, const char *name)
{
    if (!params || !json_object_has_member(params, name))
        return NULL;
    JsonNode *n = json_object_get_member(params, name);
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
        return NULL;
    return json_node_get_string(n);
}

static JsonNode *migrate_send(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    const char *uri = string_param(params, "uri");
    const char *mode = string_param(params, "mode");
    if (!uri || !*uri) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "migrate-send needs {\"uri\": \"tls:HOST:PORT\" (or tcp:, unix:, fd:)}");
        return NULL;
    }
    FerryMigrationMode m = FERRY_MIGRATION_MODE_LIVE;
    if (mode && g_str_equal(mode, "warm"))
        m = FERRY_MIGRATION_MODE_WARM;
    else if (mode && !g_str_equal(mode, "live")) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "migration mode '%s' is unknown: use \"live\" or \"warm\"", mode);
        return NULL;
    }
    if (!ferry_migration_set_params(vm->migration, params, error) ||
        !ferry_migration_send(vm->migration, uri, m, error))
        return NULL;
    return NULL;
}

static JsonNode *migrate_receive(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    const char *uri = string_param(params, "uri");
    if (!uri || !*uri) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "migrate-receive needs {\"uri\": \"tls:HOST:PORT\" (or tcp:, unix:, fd:)}");
        return NULL;
    }
    g_autofree char *bound = NULL;
    if (!ferry_migration_receive(vm->migration, uri, &bound, error))
        return NULL;
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "uri", bound);
    return take_object(o);
}

static JsonNode *migrate_set_parameters(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    if (params && (json_object_has_member(params, "uri") || json_object_has_member(params, "mode"))) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "\"uri\" and \"mode\" are arguments of migrate-send, not parameters");
        return NULL;
    }
    ferry_migration_set_params(vm->migration, params, error);
    return NULL;
}

static JsonNode *query_migrate(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    return take_object(ferry_migration_query(vm->migration));
}

static JsonNode *migrate_cancel(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    ferry_migration_cancel(vm->migration, error);
    return NULL;
}

static JsonNode *migrate_start_postcopy(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    ferry_migration_start_postcopy(vm->migration, error);
    return NULL;
}

static JsonNode *migrate_recover(void *opaque, JsonObject *params, GError **error)
{
    FerryVm *vm = opaque;
    const char *uri = string_param(params, "uri");
    if (!uri || !*uri) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "migrate-recover needs {\"uri\": \"tls:HOST:PORT\" (or tcp:, unix:, fd:)}");
        return NULL;
    }
    g_autofree char *bound = NULL;
    if (!ferry_migration_recover(vm->migration, uri, &bound, error))
        return NULL;
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "uri", bound);
    return take_object(o);
}

const FerryControlMethod ferry_vm_control_methods[] = {
    {"migrate-recover", migrate_recover},
    {"migrate-send", migrate_send},
    {"migrate-receive", migrate_receive},
    {"migrate-set-parameters", migrate_set_parameters},
    {"query-migrate", query_migrate},
    {"migrate-cancel", migrate_cancel},
    {"migrate-start-postcopy", migrate_start_postcopy},
    {"query-status", query_status},
    {"query-config", query_config},
    {"stats", stats},
    {"pause", pause_vm},
    {"resume", resume_vm},
    {"powerdown", powerdown_vm},
    {"save", save_vm},
    {"reset", reset_vm},
    {"quit", quit_vm},
    {NULL, NULL},
};
