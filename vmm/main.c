/*
 * ferry-vmm: one KVM virtual machine per process.
 * Usage: ferry-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--memory SIZE] [--cpus N]
 *                  [--serial stdio|pty|off|file=PATH|socket=PATH] [--control-socket PATH]
 *                  [--name NAME] [--on-reboot reset|exit] [--disk ...] [--net ...]
 *                  [--rng] [--virtio-console SPEC]
 * Signals: SIGTERM/SIGINT/SIGHUP stop the VM; SIGUSR1 presses the ACPI power button.
 * Exit status: 0 guest powered off / stopped on request, 1 error, 2 bad arguments.
 * `ferry-vmm migrate ...` is the migration command instead (vmm/migrate_cli.h).
 */
#include "migrate_cli.h"
#include "migration/postcopy.h"
#include "vm_config.h"
#include "util/log.h"
#include "vm.h"

#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>

/* SIGTERM/SIGINT/SIGHUP stop the VM cleanly; one arriving before the VM runs is kept. */
typedef struct {
    FerryVm *vm;
    gboolean stop_requested;
} StopSignals;

static gboolean on_stop_signal(gpointer data)
{
    StopSignals *s = data;
    s->stop_requested = TRUE;
    if (s->vm)
        ferry_vm_request_stop(s->vm);
    return G_SOURCE_CONTINUE;
}

/* SIGUSR1 presses the power button (the guest then shuts down cleanly, if it listens). */
static gboolean on_power_button_signal(gpointer data)
{
    StopSignals *s = data;
    if (s->vm)
        ferry_vm_press_power_button(s->vm);
    else
        ferry_log("SIGUSR1 before the VM was running; power button not pressed");
    return G_SOURCE_CONTINUE;
}

static int run(FerryVmConfig *cfg, int *argc, char ***argv)
{
    g_autoptr(GError) error = NULL;
    gboolean help_shown;

    if (!ferry_vm_config_parse_args(cfg, argc, argv, &help_shown, &error)) {
        if (help_shown)
            return FERRY_EXIT_OK;
        fprintf(stderr, "ferry-vmm: %s\nTry 'ferry-vmm --help' for the options.\n",
                error->message);
        return FERRY_EXIT_USAGE;
    }
    StopSignals stop = {0};
    guint sources[] = {
        g_unix_signal_add(SIGTERM, on_stop_signal, &stop),
        g_unix_signal_add(SIGINT, on_stop_signal, &stop),
        g_unix_signal_add(SIGHUP, on_stop_signal, &stop),
        g_unix_signal_add(SIGUSR1, on_power_button_signal, &stop),
    };
    int status = FERRY_EXIT_ERROR;
    g_autoptr(FerryVm) vm = ferry_vm_new(cfg, &error);
    if (!vm) {
        ferry_log("cannot start VM '%s': %s", cfg->name, error->message);
    } else {
        /* Deliver a signal that came in while the VM was being built. */
        while (g_main_context_iteration(NULL, FALSE))
            ;
        stop.vm = vm;
        status = stop.stop_requested ? FERRY_EXIT_OK : ferry_vm_run(vm);
    }
    for (gsize i = 0; i < G_N_ELEMENTS(sources); i++)
        g_source_remove(sources[i]);
    return status;
}

int main(int argc, char **argv)
{
    FerryVmConfig cfg;
    g_set_prgname("ferry-vmm");
    ferry_postcopy_reserve_fd(); /* before any KVM descriptor: see postcopy.h */
    if (argc > 1 && g_str_equal(argv[1], "migrate"))
        return ferry_migrate_cli_main(argc - 1, argv + 1);
    ferry_vm_config_init(&cfg);
    int status = run(&cfg, &argc, &argv);
    ferry_vm_config_clear(&cfg);
    return status;
}
