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

#define FERRY_PCI_SLOT_AUTO (-1)
#define FERRY_PCI_MAX_SLOT  31 /* slot 0 is the host bridge */
#define FERRY_DISK_SERIAL_MAX 20 /* bytes: virtio-blk GET_ID (virtio 1.2 section 5.2.6) */

/* --disk path=FILE[,readonly=on][,serial=S][,slot=N] */
typedef struct {
    char *path;        /* raw image, owned */
    gboolean readonly;
    char *serial;      /* at most FERRY_DISK_SERIAL_MAX bytes, or NULL; owned */
    int slot;          /* PCI slot 1..31, or FERRY_PCI_SLOT_AUTO */
} FerryDiskSpec;

/* --net tap=NAME|fd=N[,mac=MAC][,mtu=N][,slot=N] */
typedef struct {
    char *tap;         /* TAP interface name (created if missing), or NULL with fd; owned */
    int fd;            /* an open TAP file descriptor handed over, or -1 */
    gboolean has_mac;
    uint8_t mac[6];
    unsigned mtu;      /* bytes, 68..65535; 0 = the TAP device's (1500 by default) */
    int slot;
} FerryNetSpec;

typedef struct {
    char *name;           /* VM name for messages, owned; default "ferry" */
    char *kernel;         /* path, owned */
    char *initrd;         /* path or NULL, owned */
    char *cmdline;        /* kernel command line, owned, may be "" */
    uint64_t memory;      /* bytes, multiple of 4 KiB */
    unsigned cpus;        /* >= 1 */
    FerryChardevSpec serial;
    char *control_socket; /* path or NULL, owned */
    char *restore;        /* --restore: a saved state stream to start from, or NULL; owned */
    char *incoming;       /* --incoming: migration URI to receive on, "defer", or NULL; owned */
    char *tls_dir;        /* --tls-dir: migration certificates, NULL = /etc/pki/ferry; owned */
    gboolean paused;      /* --paused: vCPUs stay stopped after start/restore/incoming */
    FerryOnReboot on_reboot;
    GArray *disks;        /* FerryDiskSpec, in command-line order */
    GArray *nets;         /* FerryNetSpec, in command-line order */
    gboolean rng;         /* --rng: a virtio-rng device */
    int rng_slot;
    gboolean has_virtio_console; /* --virtio-console SPEC */
    FerryChardevSpec virtio_console;
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

/*
 * Parse the values of --disk and --net (comma-separated key=value lists; see the structs).
 * Errors are G_OPTION_ERROR_BAD_VALUE naming the option, the key and what is accepted.
 * On success the spec's strings are owned by the caller (free with the *_clear function).
 */
gboolean ferry_disk_spec_parse(const char *text, FerryDiskSpec *spec, GError **error);
void ferry_disk_spec_clear(FerryDiskSpec *spec);
gboolean ferry_net_spec_parse(const char *text, FerryNetSpec *spec, GError **error);
void ferry_net_spec_clear(FerryNetSpec *spec);
/* Parses "52:54:00:12:34:56" (unicast required). */
gboolean ferry_parse_mac(const char *text, uint8_t mac[6], GError **error);

/* Parses a positive vCPU count (1 .. 4096). */
gboolean ferry_parse_cpus(const char *text, unsigned *cpus, GError **error);

/*
 * Parses ferry-vmm's argv into @cfg.  Errors are G_OPTION_ERROR (the caller prints them
 * with a usage hint and exits with status 2).  --help prints and returns FALSE with
 * *@help_shown set.
 */
gboolean ferry_vm_config_parse_args(FerryVmConfig *cfg, int *argc, char ***argv,
                                    gboolean *help_shown, GError **error);
