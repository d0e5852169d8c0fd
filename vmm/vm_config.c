#include "vm_config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ferry_vm_config_init(FerryVmConfig *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->name = g_strdup("ferry");
    cfg->cmdline = g_strdup("");
    cfg->memory = 512ULL << 20;
    cfg->cpus = 1;
    cfg->serial.kind = FERRY_CHARDEV_STDIO;
    cfg->on_reboot = FERRY_ON_REBOOT_RESET;
    cfg->disks = g_array_new(FALSE, TRUE, sizeof(FerryDiskSpec));
    g_array_set_clear_func(cfg->disks, (GDestroyNotify) ferry_disk_spec_clear);
    cfg->nets = g_array_new(FALSE, TRUE, sizeof(FerryNetSpec));
    g_array_set_clear_func(cfg->nets, (GDestroyNotify) ferry_net_spec_clear);
    cfg->rng_slot = FERRY_PCI_SLOT_AUTO;
}

void ferry_vm_config_clear(FerryVmConfig *cfg)
{
    g_free(cfg->name);
    g_free(cfg->kernel);
    g_free(cfg->initrd);
    g_free(cfg->cmdline);
    g_free(cfg->control_socket);
    g_free(cfg->restore);
    g_free(cfg->incoming);
    g_free(cfg->tls_dir);
    ferry_chardev_spec_clear(&cfg->serial);
    ferry_chardev_spec_clear(&cfg->virtio_console);
    if (cfg->disks)
        g_array_unref(cfg->disks);
    if (cfg->nets)
        g_array_unref(cfg->nets);
    memset(cfg, 0, sizeof(*cfg));
}

gboolean ferry_parse_size(const char *text, uint64_t *bytes, GError **error)
{
    const char *p = text;
    while (g_ascii_isspace(*p))
        p++;
    if (!g_ascii_isdigit(*p))
        goto bad;
    errno = 0;
    char *end;
    guint64 n = g_ascii_strtoull(p, &end, 10);
    if (errno == ERANGE)
        goto too_big;
    unsigned shift = 0;
    switch (g_ascii_toupper(*end)) {
    case '\0':
        break;
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case 'T':
        shift = 40;
        break;
    default:
        goto bad;
    }
    if (shift) {
        end++;
        /* Accept "K", "KB", "KiB" alike; all mean 1024. */
        if (g_ascii_strcasecmp(end, "") != 0 && g_ascii_strcasecmp(end, "B") != 0 &&
            g_ascii_strcasecmp(end, "iB") != 0)
            goto bad;
    }
    if (shift && n > (G_MAXUINT64 >> shift))
        goto too_big;
    *bytes = n << shift;
    return TRUE;

bad:
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "'%s' is not a size: use a number of bytes with an optional K, M, G or T "
                "suffix (for example 512M or 4G)",
                text);
    return FALSE;
too_big:
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "size '%s' is too large", text);
    return FALSE;
}

gboolean ferry_parse_cpus(const char *text, unsigned *cpus, GError **error)
{
    guint64 n;
    if (!g_ascii_string_to_unsigned(text, 10, 1, 4096, &n, NULL)) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "'%s' is not a vCPU count: give a number from 1 to 4096", text);
        return FALSE;
    }
    *cpus = (unsigned) n;
    return TRUE;
}

/* ---- --disk / --net --------------------------------------------------------------- */

static gboolean bad_value(GError **error, const char *option, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static gboolean bad_value(GError **error, const char *option, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s: %s", option, msg);
    return FALSE;
}

static gboolean parse_on_off(const char *option, const char *key, const char *value,
                             gboolean *out, GError **error)
{
    if (value && (g_str_equal(value, "on") || g_str_equal(value, "yes") ||
                  g_str_equal(value, "true") || g_str_equal(value, "1"))) {
        *out = TRUE;
        return TRUE;
    }
    if (value && (g_str_equal(value, "off") || g_str_equal(value, "no") ||
                  g_str_equal(value, "false") || g_str_equal(value, "0"))) {
        *out = FALSE;
        return TRUE;
    }
    return bad_value(error, option, "%s takes on or off, not '%s'", key, value ? value : "");
}

static gboolean parse_slot(const char *option, const char *value, int *slot, GError **error)
{
    guint64 n;
    if (!value || !g_ascii_string_to_unsigned(value, 10, 1, FERRY_PCI_MAX_SLOT, &n, NULL))
        return bad_value(error, option, "slot takes a PCI slot number from 1 to %d, not '%s'",
                         FERRY_PCI_MAX_SLOT, value ? value : "");
    *slot = (int) n;
    return TRUE;
}

void ferry_disk_spec_clear(FerryDiskSpec *spec)
{
    g_free(spec->path);
    g_free(spec->serial);
    memset(spec, 0, sizeof(*spec));
}

gboolean ferry_disk_spec_parse(const char *text, FerryDiskSpec *spec, GError **error)
{
    const char *opt = "--disk";
    g_auto(GStrv) pairs = g_strsplit(text, ",", -1); /* "k=v,k=v" */
    FerryDiskSpec s = {.slot = FERRY_PCI_SLOT_AUTO};
    for (char **p = pairs; *p; p++) {
        char *eq = strchr(*p, '=');
        const char *value = eq ? eq + 1 : NULL;
        if (eq)
            *eq = '\0';
        const char *key = *p;
        if (g_str_equal(key, "path") && value && *value) {
            g_free(s.path);
            s.path = g_strdup(value);
        } else if (g_str_equal(key, "readonly")) {
            if (!parse_on_off(opt, key, value, &s.readonly, error))
                goto fail;
        } else if (g_str_equal(key, "serial") && value) {
            if (strlen(value) > FERRY_DISK_SERIAL_MAX) {
                bad_value(error, opt, "serial '%s' is longer than %d bytes", value,
                          FERRY_DISK_SERIAL_MAX);
                goto fail;
            }
            g_free(s.serial);
            s.serial = g_strdup(value);
        } else if (g_str_equal(key, "slot")) {
            if (!parse_slot(opt, value, &s.slot, error))
                goto fail;
        } else {
            bad_value(error, opt,
                      "unknown or empty key '%s' in '%s'; use path=FILE[,readonly=on]"
                      "[,serial=S][,slot=N]",
                      key, text);
            goto fail;
        }
    }
    if (!s.path) {
        bad_value(error, opt, "'%s' has no path=FILE", text);
        goto fail;
    }
    *spec = s;
    return TRUE;
fail:
    ferry_disk_spec_clear(&s);
    return FALSE;
}

gboolean ferry_parse_mac(const char *text, uint8_t mac[6], GError **error)
{
    unsigned b[6];
    char tail;
    if (strlen(text) != 17 ||
        sscanf(text, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
               &tail) != 6) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "'%s' is not a MAC address like 52:54:00:12:34:56", text);
        return FALSE;
    }
    for (int i = 0; i < 17; i++) {
        if (i % 3 == 2 ? text[i] != ':' : !g_ascii_isxdigit(text[i])) {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                        "'%s' is not a MAC address like 52:54:00:12:34:56", text);
            return FALSE;
        }
    }
    if (b[0] & 1) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "'%s' is a multicast MAC address; a NIC needs a unicast one", text);
        return FALSE;
    }
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t) b[i];
    return TRUE;
}

void ferry_net_spec_clear(FerryNetSpec *spec)
{
    g_free(spec->tap);
    memset(spec, 0, sizeof(*spec));
    spec->fd = -1;
}

gboolean ferry_net_spec_parse(const char *text, FerryNetSpec *spec, GError **error)
{
    const char *opt = "--net";
    g_auto(GStrv) pairs = g_strsplit(text, ",", -1); /* "k=v,k=v" */
    FerryNetSpec s = {.fd = -1, .slot = FERRY_PCI_SLOT_AUTO};
    for (char **p = pairs; *p; p++) {
        char *eq = strchr(*p, '=');
        const char *value = eq ? eq + 1 : NULL;
        if (eq)
            *eq = '\0';
        const char *key = *p;
        guint64 n;
        if (g_str_equal(key, "tap") && value && *value) {
            /* IFNAMSIZ is 16 including the terminating NUL */
            if (strlen(value) > 15 || strchr(value, '/') || g_str_equal(value, ".") ||
                g_str_equal(value, "..")) {
                bad_value(error, opt, "'%s' is not a valid interface name (at most 15 "
                          "characters, no '/')", value);
                goto fail;
            }
            g_free(s.tap);
            s.tap = g_strdup(value);
        } else if (g_str_equal(key, "fd") && value) {
            if (!g_ascii_string_to_unsigned(value, 10, 0, G_MAXINT, &n, NULL)) {
                bad_value(error, opt, "fd takes a file descriptor number, not '%s'", value);
                goto fail;
            }
            s.fd = (int) n;
        } else if (g_str_equal(key, "mac") && value) {
            g_autoptr(GError) e = NULL;
            if (!ferry_parse_mac(value, s.mac, &e)) {
                bad_value(error, opt, "%s", e->message);
                goto fail;
            }
            s.has_mac = TRUE;
        } else if (g_str_equal(key, "mtu") && value) {
            if (!g_ascii_string_to_unsigned(value, 10, 68, 65535, &n, NULL)) {
                bad_value(error, opt, "mtu takes a number of bytes from 68 to 65535, not '%s'",
                          value);
                goto fail;
            }
            s.mtu = (unsigned) n;
        } else if (g_str_equal(key, "slot")) {
            if (!parse_slot(opt, value, &s.slot, error))
                goto fail;
        } else {
            bad_value(error, opt,
                      "unknown or empty key '%s' in '%s'; use tap=NAME|fd=N[,mac=MAC]"
                      "[,mtu=N][,slot=N]",
                      key, text);
            goto fail;
        }
    }
    if (!s.tap && s.fd < 0) {
        bad_value(error, opt, "'%s' names no TAP device: give tap=NAME or fd=N", text);
        goto fail;
    }
    if (s.tap && s.fd >= 0) {
        bad_value(error, opt, "'%s' gives both tap= and fd=; use one", text);
        goto fail;
    }
    *spec = s;
    return TRUE;
fail:
    ferry_net_spec_clear(&s);
    return FALSE;
}

/* GOptionArgFunc callbacks: the group's user data is the FerryVmConfig. */
static gboolean opt_memory(const char *name, const char *value, gpointer data, GError **error)
{
    FerryVmConfig *cfg = data;
    uint64_t bytes;
    if (!ferry_parse_size(value, &bytes, error))
        return FALSE;
    if (bytes < FERRY_MIN_MEMORY) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--memory %s is too small: a guest needs at least 16M", value);
        return FALSE;
    }
    if (bytes % 4096) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--memory %s is not a multiple of 4K", value);
        return FALSE;
    }
    cfg->memory = bytes;
    return TRUE;
}

static gboolean opt_cpus(const char *name, const char *value, gpointer data, GError **error)
{
    FerryVmConfig *cfg = data;
    return ferry_parse_cpus(value, &cfg->cpus, error);
}

static gboolean opt_serial(const char *name, const char *value, gpointer data, GError **error)
{
    FerryVmConfig *cfg = data;
    FerryChardevSpec spec;
    if (!ferry_chardev_parse(value, &spec, error))
        return FALSE;
    ferry_chardev_spec_clear(&cfg->serial);
    cfg->serial = spec;
    return TRUE;
}

static gboolean opt_on_reboot(const char *name, const char *value, gpointer data, GError **error)
{
    FerryVmConfig *cfg = data;
    if (g_str_equal(value, "reset") || g_str_equal(value, "restart")) {
        cfg->on_reboot = FERRY_ON_REBOOT_RESET;
    } else if (g_str_equal(value, "exit") || g_str_equal(value, "destroy")) {
        cfg->on_reboot = FERRY_ON_REBOOT_EXIT;
    } else {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--on-reboot takes 'reset' or 'exit', not '%s'", value);
        return FALSE;
    }
    return TRUE;
}

static gboolean opt_disk(const char *name, const char *value, gpointer data, GError **error)
{
    FerryVmConfig *cfg = data;
    FerryDiskSpec spec;
    if (!ferry_disk_spec_parse(value, &spec, error))
        return FALSE;
    g_array_append_val(cfg->disks, spec);
    return TRUE;
}

static gboolean opt_net(const char *name, const char *value, gpointer data, GError **error)
{
    FerryVmConfig *cfg = data;
    FerryNetSpec spec;
    if (!ferry_net_spec_parse(value, &spec, error))
        return FALSE;
    g_array_append_val(cfg->nets, spec);
    return TRUE;
}

static gboolean opt_rng(const char *name, const char *value, gpointer data, GError **error)
{
    FerryVmConfig *cfg = data;
    cfg->rng = TRUE;
    if (value && !parse_slot("--rng", g_str_has_prefix(value, "slot=") ? value + 5 : value,
                             &cfg->rng_slot, error))
        return FALSE;
    return TRUE;
}

static gboolean opt_virtio_console(const char *name, const char *value, gpointer data,
                                   GError **error)
{
    FerryVmConfig *cfg = data;
    FerryChardevSpec spec;
    if (!ferry_chardev_parse(value, &spec, error))
        return FALSE;
    ferry_chardev_spec_clear(&cfg->virtio_console);
    cfg->virtio_console = spec;
    cfg->has_virtio_console = TRUE;
    return TRUE;
}

/* String options are stored straight into the config (GLib frees the old value on repeat). */
static gboolean opt_string(const char *name, const char *value, gpointer data, GError **error)
{
    FerryVmConfig *cfg = data;
    char **slot = NULL;
    if (g_str_equal(name, "--kernel"))
        slot = &cfg->kernel;
    else if (g_str_equal(name, "--initrd"))
        slot = &cfg->initrd;
    else if (g_str_equal(name, "--cmdline"))
        slot = &cfg->cmdline;
    else if (g_str_equal(name, "--control-socket"))
        slot = &cfg->control_socket;
    else if (g_str_equal(name, "--name"))
        slot = &cfg->name;
    else if (g_str_equal(name, "--restore"))
        slot = &cfg->restore;
    else if (g_str_equal(name, "--incoming"))
        slot = &cfg->incoming;
    else if (g_str_equal(name, "--tls-dir"))
        slot = &cfg->tls_dir;
    g_assert(slot);
    if (value[0] == '\0' && slot != &cfg->cmdline) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "%s needs a value", name);
        return FALSE;
    }
    g_free(*slot);
    *slot = g_strdup(value);
    return TRUE;
}

gboolean ferry_vm_config_parse_args(FerryVmConfig *cfg, int *argc, char ***argv,
                                    gboolean *help_shown, GError **error)
{
    const GOptionEntry entries[] = {
        {"kernel", 0, 0, G_OPTION_ARG_CALLBACK, opt_string,
         "Kernel to boot: a bzImage or an ELF with a PVH entry note", "PATH"},
        {"initrd", 0, 0, G_OPTION_ARG_CALLBACK, opt_string, "Initial ramdisk", "PATH"},
        {"cmdline", 0, 0, G_OPTION_ARG_CALLBACK, opt_string, "Kernel command line", "STR"},
        {"memory", 0, 0, G_OPTION_ARG_CALLBACK, opt_memory,
         "Guest RAM, e.g. 512M or 6G (default 512M)", "SIZE"},
        {"cpus", 0, 0, G_OPTION_ARG_CALLBACK, opt_cpus, "Number of vCPUs (default 1)", "N"},
        {"serial", 0, 0, G_OPTION_ARG_CALLBACK, opt_serial,
         "Serial console: stdio, pty, off, file=PATH or socket=PATH (default stdio)", "SPEC"},
        {"disk", 0, 0, G_OPTION_ARG_CALLBACK, opt_disk,
         "A virtio-blk disk on a raw image (repeatable)",
         "path=FILE[,readonly=on][,serial=S][,slot=N]"},
        {"net", 0, 0, G_OPTION_ARG_CALLBACK, opt_net,
         "A virtio-net NIC on a TAP device, created if missing (repeatable)",
         "tap=NAME|fd=N[,mac=MAC][,mtu=N][,slot=N]"},
        {"rng", 0, G_OPTION_FLAG_OPTIONAL_ARG, G_OPTION_ARG_CALLBACK, opt_rng,
         "A virtio-rng device fed by getrandom()", "[slot=N]"},
        {"virtio-console", 0, 0, G_OPTION_ARG_CALLBACK, opt_virtio_console,
         "A virtio-console port (hvc0): stdio, pty, off, file=PATH or socket=PATH", "SPEC"},
        {"restore", 0, 0, G_OPTION_ARG_CALLBACK, opt_string,
         "Continue a VM saved by the control API's save; give the options it ran with",
         "FILE"},
        {"incoming", 0, 0, G_OPTION_ARG_CALLBACK, opt_string,
         "Wait for a live migration on URI (tcp:HOST:PORT, tls:HOST:PORT, unix:PATH, fd:N), "
         "or 'defer' to be told by the control API's migrate-receive; give the options the "
         "source runs with",
         "URI|defer"},
        {"tls-dir", 0, 0, G_OPTION_ARG_CALLBACK, opt_string,
         "Certificates for tls: migrations: ca-cert.pem, server-cert.pem, server-key.pem, "
         "client-cert.pem, client-key.pem (default /etc/pki/ferry)",
         "DIR"},
        {"paused", 0, 0, G_OPTION_ARG_NONE, &cfg->paused,
         "Leave the vCPUs stopped once the guest is loaded (resume with the control API)",
         NULL},
        {"control-socket", 0, 0, G_OPTION_ARG_CALLBACK, opt_string,
         "Unix socket for the JSON-RPC control API", "PATH"},
        {"name", 0, 0, G_OPTION_ARG_CALLBACK, opt_string, "VM name used in messages", "NAME"},
        {"on-reboot", 0, 0, G_OPTION_ARG_CALLBACK, opt_on_reboot,
         "What a guest reboot does: reset (default) or exit", "reset|exit"},
        {NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- run one KVM virtual machine");
    GOptionGroup *group = g_option_group_new("ferry-vmm", "ferry-vmm options", "Show options",
                                             cfg, NULL);
    g_option_group_add_entries(group, entries);
    g_option_context_set_main_group(ctx, group);
    g_option_context_set_summary(
        ctx, "Boots a Linux bzImage or a PVH ELF kernel in a KVM virtual machine.\n"
             "Exit status: 0 when the guest powers off or ferry-vmm is told to stop, 1 on "
             "errors,\n2 on bad arguments.");
    g_option_context_set_help_enabled(ctx, FALSE);

    *help_shown = FALSE;
    for (int i = 1; i < *argc; i++) {
        if (g_str_equal((*argv)[i], "--help") || g_str_equal((*argv)[i], "-h")) {
            g_autofree char *help = g_option_context_get_help(ctx, TRUE, NULL);
            fputs(help, stdout);
            *help_shown = TRUE;
            return FALSE;
        }
        if (g_str_equal((*argv)[i], "--"))
            break;
    }
    if (!g_option_context_parse(ctx, argc, argv, error))
        return FALSE;
    if (*argc > 1) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "unexpected argument '%s'", (*argv)[1]);
        return FALSE;
    }
    if (cfg->has_virtio_console && cfg->virtio_console.kind == FERRY_CHARDEV_STDIO &&
        cfg->serial.kind == FERRY_CHARDEV_STDIO) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--virtio-console stdio needs the serial console elsewhere: add --serial "
                    "off, pty, file=PATH or socket=PATH");
        return FALSE;
    }
    if (cfg->incoming && cfg->restore) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--incoming and --restore both give the guest's state; use one");
        return FALSE;
    }
    if (cfg->incoming && g_str_equal(cfg->incoming, "defer") && !cfg->control_socket) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--incoming defer waits for migrate-receive on the control socket: add "
                    "--control-socket PATH");
        return FALSE;
    }
    if (!cfg->kernel) {
        /* also with --restore: a reboot of the restored guest boots the kernel again */
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--kernel is required");
        return FALSE;
    }
    return TRUE;
}
