/* Unit tests: size parsing and ferry-vmm argument errors (vmm/config.c, vmm/chardev.c). */
#include "vm_config.h"

#include <string.h>

static void test_sizes(void)
{
    static const struct {
        const char *text;
        uint64_t bytes;
    } good[] = {
        {"0", 0},          {"4096", 4096},           {"1K", 1024},
        {"1k", 1024},      {"512M", 512ULL << 20},   {"6G", 6ULL << 30},
        {"2T", 2ULL << 40}, {"256MiB", 256ULL << 20}, {"1GB", 1ULL << 30},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
        uint64_t v = 1;
        g_autoptr(GError) error = NULL;
        g_assert_true(ferry_parse_size(good[i].text, &v, &error));
        g_assert_no_error(error);
        g_assert_cmpuint(v, ==, good[i].bytes);
    }
    static const char *bad[] = {"", "M", "-1", "12Q", "1.5G", "1GG", "1 G", "0x100",
                                "99999999999999999999", "17179869184G", "1Gibibyte"};
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        uint64_t v = 7;
        g_autoptr(GError) error = NULL;
        g_assert_false(ferry_parse_size(bad[i], &v, &error));
        g_assert_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE);
        g_assert_cmpuint(v, ==, 7);
        g_assert_nonnull(strstr(error->message, bad[i]) || strstr(error->message, "too large")
                             ? error->message
                             : NULL);
    }
}

static void test_cpus(void)
{
    unsigned n;
    g_assert_true(ferry_parse_cpus("4", &n, NULL));
    g_assert_cmpuint(n, ==, 4);
    static const char *bad[] = {"0", "-1", "", "x", "4097", "2.0"};
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GError) error = NULL;
        g_assert_false(ferry_parse_cpus(bad[i], &n, &error));
        g_assert_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE);
    }
}

/* Parses a NULL-terminated argument list; returns the error (or NULL) and fills @cfg. */
static GError *parse(FerryVmConfig *cfg, const char *const *args)
{
    g_autoptr(GPtrArray) v = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(v, g_strdup("ferry-vmm"));
    for (; *args; args++)
        g_ptr_array_add(v, g_strdup(*args));
    g_ptr_array_add(v, NULL);
    int argc = (int) v->len - 1;
    char **argv = g_memdup2(v->pdata, v->len * sizeof(char *));
    char **orig = argv;
    GError *error = NULL;
    gboolean help;
    ferry_vm_config_init(cfg);
    ferry_vm_config_parse_args(cfg, &argc, &argv, &help, &error);
    g_free(orig);
    return error;
}

static void test_args_good(void)
{
    FerryVmConfig cfg;
    const char *args[] = {"--kernel", "/k", "--memory", "6G", "--cpus", "4", "--cmdline",
                          "console=ttyS0 quiet", "--serial", "socket=/tmp/s", "--on-reboot",
                          "exit", "--name", "vm1", NULL};
    GError *error = parse(&cfg, args);
    g_assert_no_error(error);
    g_assert_cmpstr(cfg.kernel, ==, "/k");
    g_assert_cmpuint(cfg.memory, ==, 6ULL << 30);
    g_assert_cmpuint(cfg.cpus, ==, 4);
    g_assert_cmpstr(cfg.cmdline, ==, "console=ttyS0 quiet");
    g_assert_cmpint(cfg.serial.kind, ==, FERRY_CHARDEV_SOCKET);
    g_assert_cmpstr(cfg.serial.path, ==, "/tmp/s");
    g_assert_cmpint(cfg.on_reboot, ==, FERRY_ON_REBOOT_EXIT);
    g_assert_cmpstr(cfg.name, ==, "vm1");
    ferry_vm_config_clear(&cfg);

    /* Defaults */
    const char *min[] = {"--kernel=/k", NULL};
    error = parse(&cfg, min);
    g_assert_no_error(error);
    g_assert_cmpuint(cfg.memory, ==, 512ULL << 20);
    g_assert_cmpuint(cfg.cpus, ==, 1);
    g_assert_cmpint(cfg.serial.kind, ==, FERRY_CHARDEV_STDIO);
    ferry_vm_config_clear(&cfg);
}

static void test_args_bad(void)
{
    static const struct {
        const char *args[6];
        const char *message;
    } cases[] = {
        {{"--memory", "1G", NULL}, "--kernel is required"},
        {{"--kernel", "/k", "--cpus", "0", NULL}, "'0' is not a vCPU count"},
        {{"--kernel", "/k", "--memory", "12Q", NULL}, "'12Q' is not a size"},
        {{"--kernel", "/k", "--memory", "1M", NULL}, "too small"},
        {{"--kernel", "/k", "--memory", "1000", NULL}, "too small"},
        {{"--kernel", "/k", "--memory", "17000001", NULL}, "multiple of 4K"},
        {{"--kernel", "/k", "--serial", "tcp:1", NULL}, "not a console back end"},
        {{"--kernel", "/k", "--on-reboot", "panic", NULL}, "--on-reboot takes"},
        {{"--kernel", "/k", "--frobnicate", NULL}, "--frobnicate"},
        {{"--kernel", "/k", "stray", NULL}, "unexpected argument 'stray'"},
        {{"--kernel", "", NULL}, "--kernel needs a value"},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        FerryVmConfig cfg;
        g_autoptr(GError) error = parse(&cfg, cases[i].args);
        g_assert_nonnull(error);
        if (!strstr(error->message, cases[i].message))
            g_error("case %zu: '%s' lacks '%s'", i, error->message, cases[i].message);
        ferry_vm_config_clear(&cfg);
    }
}

static void test_devices_good(void)
{
    FerryVmConfig cfg;
    const char *args[] = {"--kernel", "/k", "--disk", "path=/a.img,serial=S1",
                          "--disk", "path=/b.img,readonly=on,slot=9", "--net",
                          "tap=ft0,mac=52:54:00:aa:bb:0c,mtu=9000", "--net", "fd=7,slot=4",
                          "--rng", "--virtio-console", "pty", NULL};
    GError *error = parse(&cfg, args);
    g_assert_no_error(error);
    g_assert_cmpuint(cfg.disks->len, ==, 2);
    FerryDiskSpec *d0 = &g_array_index(cfg.disks, FerryDiskSpec, 0);
    FerryDiskSpec *d1 = &g_array_index(cfg.disks, FerryDiskSpec, 1);
    g_assert_cmpstr(d0->path, ==, "/a.img");
    g_assert_cmpstr(d0->serial, ==, "S1");
    g_assert_false(d0->readonly);
    g_assert_cmpint(d0->slot, ==, FERRY_PCI_SLOT_AUTO);
    g_assert_true(d1->readonly);
    g_assert_cmpint(d1->slot, ==, 9);
    g_assert_cmpuint(cfg.nets->len, ==, 2);
    FerryNetSpec *n0 = &g_array_index(cfg.nets, FerryNetSpec, 0);
    FerryNetSpec *n1 = &g_array_index(cfg.nets, FerryNetSpec, 1);
    g_assert_cmpstr(n0->tap, ==, "ft0");
    g_assert_cmpint(n0->fd, ==, -1);
    g_assert_true(n0->has_mac);
    g_assert_cmphex(n0->mac[5], ==, 0x0c);
    g_assert_cmpuint(n0->mtu, ==, 9000);
    g_assert_null(n1->tap);
    g_assert_cmpint(n1->fd, ==, 7);
    g_assert_cmpint(n1->slot, ==, 4);
    g_assert_true(cfg.rng);
    g_assert_true(cfg.has_virtio_console);
    g_assert_cmpint(cfg.virtio_console.kind, ==, FERRY_CHARDEV_PTY);
    ferry_vm_config_clear(&cfg);
}

static void test_devices_bad(void)
{
    static const struct {
        const char *args[4];
        const char *message;
    } cases[] = {
        {{"--disk", "readonly=on", NULL}, "has no path=FILE"},
        {{"--disk", "path=/a,cache=none", NULL}, "unknown or empty key 'cache'"},
        {{"--disk", "path=/a,readonly=maybe", NULL}, "readonly takes on or off"},
        {{"--disk", "path=/a,serial=123456789012345678901", NULL}, "longer than 20"},
        {{"--disk", "path=/a,slot=32", NULL}, "slot takes a PCI slot number"},
        {{"--disk", "path=", NULL}, "unknown or empty key 'path'"},
        {{"--net", "mac=52:54:00:00:00:01", NULL}, "names no TAP device"},
        {{"--net", "tap=a,fd=3", NULL}, "both tap= and fd="},
        {{"--net", "tap=ft0,mac=01:00:00:00:00:01", NULL}, "multicast"},
        {{"--net", "tap=ft0,mac=52:54:00:zz:00:01", NULL}, "not a MAC address"},
        {{"--net", "tap=ft0,mtu=10", NULL}, "mtu takes"},
        {{"--net", "tap=0123456789abcdef", NULL}, "not a valid interface name"},
        {{"--net", "tap=a/b", NULL}, "not a valid interface name"},
        {{"--rng=slot=0", NULL}, "slot takes"},
        {{"--virtio-console", "stdio", NULL}, "needs the serial console elsewhere"},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        const char *args[8] = {"--kernel", "/k"};
        for (int j = 0; cases[i].args[j]; j++)
            args[2 + j] = cases[i].args[j];
        FerryVmConfig cfg;
        g_autoptr(GError) error = parse(&cfg, args);
        g_assert_nonnull(error);
        if (!strstr(error->message, cases[i].message))
            g_error("case %zu: '%s' lacks '%s'", i, error->message, cases[i].message);
        ferry_vm_config_clear(&cfg);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/config/sizes", test_sizes);
    g_test_add_func("/config/cpus", test_cpus);
    g_test_add_func("/config/args-good", test_args_good);
    g_test_add_func("/config/args-bad", test_args_bad);
    g_test_add_func("/config/devices-good", test_devices_good);
    g_test_add_func("/config/devices-bad", test_devices_bad);
    return g_test_run();
}
