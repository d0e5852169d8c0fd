/*
 * ferry-vmm: one KVM virtual machine per process.
 * Usage: ferry-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--memory SIZE] [--cpus N]
 *                  [--serial stdio|pty|off|file=PATH|socket=PATH] [--control-socket PATH]
 *                  [--name NAME] [--on-reboot reset|exit]
 * Exit status: 0 guest powered off / stopped on request, 1 error, 2 bad arguments.
 */
#include "vm_config.h"
#include "util/log.h"
#include "vm.h"

#include <stdio.h>

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
    g_autoptr(FerryVm) vm = ferry_vm_new(cfg, &error);
    if (!vm) {
        ferry_log("cannot start VM '%s': %s", cfg->name, error->message);
        return FERRY_EXIT_ERROR;
    }
    return ferry_vm_run(vm);
}

int main(int argc, char **argv)
{
    FerryVmConfig cfg;
    ferry_vm_config_init(&cfg);
    int status = run(&cfg, &argc, &argv);
    ferry_vm_config_clear(&cfg);
    return status;
}
