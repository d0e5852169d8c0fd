/*
 * A VM's configuration as ferry-vmm's command line gives it, and the parsers for its values.
 * ferryd builds the same command line from domain XML (xml/), so these parsers are the one
 * place where sizes and console specs are read.
 */
#pragma once

#include "chardev.h"

#include <glib.h>
#include <stdint.h>

#define FERRY_MIN_MEMORY (16ULL << 20) /* bytes: boot structures, a kernel and its heap */

typedef enum {
    FERRY_ON_REBOOT_RESET, /* a guest reboot resets the machine (default) */
    FERRY_ON_REBOOT_EXIT,  /* a guest reboot ends ferry-vmm with status 0 */
} FerryOnReboot;

typedef struct {
    char *name;           /* VM name for messages, owned; default "ferry" */
    char *kernel;         /* path, owned */
    char *initrd;         /* path or NULL, owned */
    char *cmdline;        /* kernel command line, owned, may be "" */
    uint64_t memory;      /* bytes, multiple of 4 KiB */
    unsigned cpus;        /* >= 1 */
    FerryChardevSpec serial;
    char *control_socket; /* path or NULL, owned */
    FerryOnReboot on_reboot;
} FerryVmConfig;

void ferry_vm_config_init(FerryVmConfig *cfg);
void ferry_vm_config_clear(FerryVmConfig *cfg);

/*
 * Parses a size: a decimal number of bytes, optionally followed by K, M, G or T (binary
 * multiples: 1K = 1024 bytes; "KiB"/"MB"-style suffixes are accepted as the same).  Rejects
 * negative numbers, garbage, and values that overflow 64 bits, with a G_OPTION_ERROR_BAD_VALUE
 * that quotes the text.
 */
gboolean ferry_parse_size(const char *text, uint64_t *bytes, GError **error);

/* Parses a positive vCPU count (1 .. 4096). */
gboolean ferry_parse_cpus(const char *text, unsigned *cpus, GError **error);

/*
 * Parses ferry-vmm's argv into @cfg.  Errors are G_OPTION_ERROR (the caller prints them
 * with a usage hint and exits with status 2).  --help prints and returns FALSE with
 * *@help_shown set.
 */
gboolean ferry_vm_config_parse_args(FerryVmConfig *cfg, int *argc, char ***argv,
                                    gboolean *help_shown, GError **error);
