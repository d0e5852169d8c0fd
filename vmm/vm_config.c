#include "vm_config.h"

#include <errno.h>
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
}

void ferry_vm_config_clear(FerryVmConfig *cfg)
{
    g_free(cfg->name);
    g_free(cfg->kernel);
    g_free(cfg->initrd);
    g_free(cfg->cmdline);
    g_free(cfg->control_socket);
    ferry_chardev_spec_clear(&cfg->serial);
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
    if (!cfg->kernel) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--kernel is required");
        return FALSE;
    }
    return TRUE;
}
