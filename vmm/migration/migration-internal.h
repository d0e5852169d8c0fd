/*
 * Shared between the migration engine's files (migration.c, migration-source.c,
 * migration-incoming.c); not for the rest of the VMM.
 */
#pragma once

#include "migration/migration.h"
#include "migration/channel.h"
#include "migration/stream.h"

#include <gio/gio.h>

/* Pages handed to one connection at a time: chunk c of the RAM goes on connection c % n. */
#define FERRY_MIGRATION_CHUNK_PAGES 2048u /* 8 MiB */

/* SECTION ids the engine uses for itself (not machine state). */
#define FERRY_MIGRATION_SECTION_SETUP   "migration/setup"   /* first record on connection 0 */
#define FERRY_MIGRATION_SECTION_CHANNEL "migration/channel" /* first record on the others */
#define FERRY_MIGRATION_SECTION_RECOVER "migration/recover" /* first on a post-copy recovery */
#define FERRY_MIGRATION_SECTION_PREFIX  "migration/"
#define FERRY_MIGRATION_SETUP_VERSION   1

/* Figures of the current or last migration (docs/control-api.md "query-migrate"). */
typedef struct {
    gint64 start_us;         /* g_get_monotonic_time() at migrate-send / first connection */
    gint64 end_us;           /* when it ended, 0 while running */
    gint64 setup_ms;         /* -1 until known */
    unsigned iteration;
    uint64_t transferred;    /* stream bytes, all connections */
    uint64_t remaining;      /* bytes */
    uint64_t data_pages, zero_pages;
    uint64_t dirty_rate;     /* pages/s */
    uint64_t bandwidth;      /* bytes/s */
    uint64_t expected_downtime_ms;
    unsigned throttle;       /* % */
    uint64_t postcopy_requests;
    gint64 downtime_ms;      /* -1 until known */
    gint64 switchover_ms;    /* -1 until known */
} FerryMigrationInfo;

struct FerryMigration {
    FerryVm *vm;
    char *tls_dir;                 /* owned, nullable */

    GMutex lock;                   /* guards everything below */
    FerryMigrationParams params;
    FerryMigrationStatus status;
    gboolean is_source;
    FerryMigrationMode mode;
    FerryMigrationInfo info;
    char *error;                   /* why it failed, owned */

    GThread *thread;               /* the source's or destination's main engine thread */
    GCancellable *cancel;          /* cancels the running migration */
    GPtrArray *channels;           /* GIOStream *, open connections, aborted on cancel */
    gboolean postcopy_requested;
    char *abort_reason;            /* set by ferry_migration_abort(), owned */
    /* post-copy recovery (migrate-recover), handed to the engine thread; m->recover_cond */
    GCond recover_cond;
    char *recover_uri;                        /* source: where to connect again */
    FerryMigrationListener *recover_listener; /* destination: where the source comes back */
    struct FerryPostcopy *kept_postcopy; /* an unfinished post-copy the guest still needs */
    gint closing;                  /* atomic: ferry_migration_free is waiting for the thread */
};

/* ---- migration.c ---- */

/* Sets the status (and, for a failure, the error) and tells control clients. Any thread. */
void ferry_migration_set_status(FerryMigration *m, FerryMigrationStatus status,
                                const char *error);

/* Sends a `migration` notification with the current figures (any thread). */
void ferry_migration_notify(FerryMigration *m);

/* Registers/unregisters an open connection so that cancel can abort it (any thread). */
void ferry_migration_track_channel(FerryMigration *m, GIOStream *s);
void ferry_migration_untrack_channel(FerryMigration *m, GIOStream *s);

/* A copy of the parameters (tls_hostname duplicated); free with ..._params_clear. */
void ferry_migration_get_params(FerryMigration *m, FerryMigrationParams *out);
void ferry_migration_params_clear(FerryMigrationParams *p);

/*
 * Runs @fn(@data) on the main thread and waits for it (engine threads only).  Returns FALSE
 * without running it if ferry-vmm shuts down first (then @fn never runs).
 */
gboolean ferry_migration_call_main(FerryMigration *m, gboolean (*fn)(gpointer data, GError **),
                                   gpointer data, GError **error);

/* ---- migration-source.c / migration-incoming.c ---- */

gpointer ferry_migration_source_thread(gpointer data);
gpointer ferry_migration_incoming_thread(gpointer data);

/* State handed to the destination thread (owned by it). */
typedef struct {
    FerryMigration *m;
    FerryMigrationListener *listener;
} FerryIncomingJob;

/* State handed to the source thread (owned by it). */
typedef struct {
    FerryMigration *m;
    FerryMigrationUri uri;
    FerryMigrationMode mode;
} FerrySourceJob;
