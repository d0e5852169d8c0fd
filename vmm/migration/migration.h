/*
 * The live-migration engine of one VM (docs/control-api.md "Migration",
 * docs/migration-protocol.md "Live migration").
 *
 * A FerryMigration belongs to a FerryVm and holds the parameters, the status and the figures
 * of its migrations, one at a time, in either role:
 * - source (migration-source.c): ferry_migration_send() starts a thread that connects, sends
 *   pre-copy rounds of dirty RAM until the estimated pause fits the downtime limit (or in
 *   warm mode pauses first), then stops the VM, sends the rest with the device and vCPU
 *   state, and waits for the destination's "ready".  Until then any failure resumes the VM
 *   here, untouched.  With post-copy it switches early and serves the destination's page
 *   requests while pushing the rest.
 * - destination (migration-incoming.c): ferry_migration_receive() listens, accepts the
 *   connections, writes RAM as it arrives, and applies the state only after the END
 *   checksum of every connection was verified; then it sends "ready" and resumes the guest.
 *
 * The control methods and ferry_migration_* functions run on the main thread; the engine's
 * threads reach the VM through ferry_vm_* calls that are safe for them (documented there)
 * and through the main context.
 */
#pragma once

#include "vm.h"

#include <glib.h>
#include <json-glib/json-glib.h>

typedef enum {
    FERRY_MIGRATION_NONE,
    FERRY_MIGRATION_SETUP,
    FERRY_MIGRATION_ACTIVE,
    FERRY_MIGRATION_COMPLETING,
    FERRY_MIGRATION_POSTCOPY_ACTIVE,
    FERRY_MIGRATION_POSTCOPY_PAUSED,
    FERRY_MIGRATION_COMPLETED,
    FERRY_MIGRATION_FAILED,
    FERRY_MIGRATION_CANCELLED,
} FerryMigrationStatus;

typedef enum {
    FERRY_MIGRATION_MODE_LIVE,
    FERRY_MIGRATION_MODE_WARM,
} FerryMigrationMode;

typedef enum {
    FERRY_MIGRATION_TIMEOUT_CANCEL,
    FERRY_MIGRATION_TIMEOUT_POSTCOPY,
} FerryMigrationTimeoutAction;

/* The tunables of docs/control-api.md "Parameters"; units in the names' comments. */
typedef struct {
    uint64_t max_bandwidth;   /* bytes/s, 0 = unlimited */
    unsigned downtime_limit;  /* ms, >= 1 */
    gboolean auto_converge;
    unsigned auto_converge_initial;   /* %, 1..99 */
    unsigned auto_converge_increment; /* %, 1..99 */
    gboolean postcopy;        /* switching to post-copy is allowed */
    unsigned timeout;         /* s, 0 = none */
    FerryMigrationTimeoutAction timeout_action;
    unsigned connections;     /* 1 .. host CPUs */
    char *tls_hostname;       /* owned, NULL = the URI's host */
} FerryMigrationParams;

#define FERRY_MIGRATION_MAX_CONNECTIONS 64

typedef struct FerryMigration FerryMigration;

/* Creates the engine of @vm with default parameters; @tls_dir (nullable) as --tls-dir. */
FerryMigration *ferry_migration_new(FerryVm *vm, const char *tls_dir);

/* Stops any migration (cancelling it, joining its threads) and frees @m.  NULL-safe. */
void ferry_migration_free(FerryMigration *m);

/*
 * Applies the parameter members of @params (the JSON of migrate-set-parameters; unknown
 * members other than "uri" and "mode" are refused).  All-or-nothing: on error
 * (G_IO_ERROR_INVALID_ARGUMENT naming the member) nothing changes.
 */
gboolean ferry_migration_set_params(FerryMigration *m, JsonObject *params, GError **error);

/* Source: starts migrating to @uri in @mode.  Fails if a migration runs or the VM is down. */
gboolean ferry_migration_send(FerryMigration *m, const char *uri, FerryMigrationMode mode,
                              GError **error);

/*
 * Destination: listens on @uri and receives a migration; the VM must have been built for
 * it (--incoming) and not have run.  Returns the URI actually bound (port 0 replaced) in
 * @bound (owned, nullable).  When the whole state is applied, the engine calls
 * ferry_vm_finish_incoming() on the main thread.
 */
gboolean ferry_migration_receive(FerryMigration *m, const char *uri, char **bound,
                                 GError **error);

/* Cancels the running migration (source before the switch-over, or destination). */
gboolean ferry_migration_cancel(FerryMigration *m, GError **error);

/*
 * Makes the running migration fail with @reason (e.g. the guest rebooted), as a cancel does
 * but reported as failed.  Main thread.
 */
void ferry_migration_abort(FerryMigration *m, const char *reason);

/* Asks a running live migration to switch to post-copy (needs the postcopy parameter). */
gboolean ferry_migration_start_postcopy(FerryMigration *m, GError **error);

/* The query-migrate object (docs/control-api.md), owned by the caller. */
JsonObject *ferry_migration_query(FerryMigration *m);

/*
 * Post-copy recovery after the connection broke (status postcopy-paused): on the
 * destination, listens on @uri for the source's new connection (the bound URI in @bound,
 * nullable); on the source, connects to @uri.  Then the missing pages flow again.
 */
gboolean ferry_migration_recover(FerryMigration *m, const char *uri, char **bound,
                                 GError **error);

FerryMigrationStatus ferry_migration_status(FerryMigration *m);

/* TRUE while a migration owns the VM's run state (the VM must not be resumed or reset). */
gboolean ferry_migration_busy(FerryMigration *m);

const char *ferry_migration_status_name(FerryMigrationStatus s);
