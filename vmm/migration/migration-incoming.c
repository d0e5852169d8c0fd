/*
 * The destination side of a migration (migration.h): accept the source's connections, write
 * RAM as it arrives, collect the state sections, and only when every connection's END
 * checksum is verified apply the state, take the disk images over, say "ready" and run.
 * Any error before that is told to the source (STATUS FAILED) and ends this process: the
 * guest never ran here and the source resumes it.
 */
#include "migration/migration-internal.h"

#include "migration/postcopy.h"
#include "snapshot.h"
#include "util/log.h"
#include "util/state.h"

#include <string.h>

#define PAGE FERRY_PAGE_SIZE
/* The source opens its other connections right after the first. */
#define ACCEPT_TIMEOUT_MS 30000

typedef struct Incoming Incoming;

typedef struct {
    Incoming *in;
    unsigned index;
    GIOStream *conn;
    FerryStreamReader *r;
    GThread *thread;
    GError *error;
} InChannel;

struct Incoming {
    FerryMigration *m;
    FerryVm *vm;
    FerryIncomingJob *job;
    FerryVmIdentity *identity;
    FerryStreamRange ram[FERRY_MAX_RAM_REGIONS];
    unsigned n_ram;
    unsigned n;
    uint64_t session;
    InChannel ch[FERRY_MIGRATION_MAX_CONNECTIONS];
    FerryStreamWriter *rp; /* the return path, on connection 0 */
    GHashTable *sections;  /* id → GBytes, the last copy of each */
    /* pages written with data so far (a page resent as zero must then be cleared) */
    uint64_t *received[FERRY_MAX_RAM_REGIONS];
    gboolean resumed;

    /* post-copy */
    gboolean postcopy_round; /* a ROUND with POSTCOPY arrived */
    gboolean checkpoint;     /* connection 0 stopped at the verified CHECKPOINT */
    uint64_t *stale[FERRY_MAX_RAM_REGIONS]; /* DISCARDed pages: their copies here are old */
    FerryPostcopy *pc;
    GMutex rp_lock;          /* the return path, once the fault thread writes requests too */
    gboolean committed;      /* READY went out: the guest belongs here */
};

static const FerryMemRegion *region_of(FerryGuestMemory *mem, uint64_t gpa, unsigned *index)
{
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        const FerryMemRegion *r = &mem->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size) {
            *index = i;
            return r;
        }
    }
    return NULL;
}

/* Writes the pages of a RAM_BATCH (the reader checked they are inside RAM). */
static gboolean apply_ram(Incoming *in, const FerryStreamRecord *rec, GError **error)
{
    FerryStreamPageIter it;
    ferry_stream_page_iter_init(&it, rec);
    uint64_t gpa;
    const uint8_t *data;
    while (ferry_stream_page_iter_next(&it, &gpa, &data)) {
        unsigned ri;
        const FerryMemRegion *r = region_of(in->vm->mem, gpa, &ri);
        if (!r) {
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_RANGE,
                        "page at 0x%" G_GINT64_MODIFIER "x is outside guest RAM", gpa);
            return FALSE;
        }
        uint64_t page = (gpa - r->gpa) / PAGE;
        if (in->pc) {
            if (!ferry_postcopy_place(in->pc, gpa, data, error))
                return FALSE;
            continue;
        }
        uint64_t *word = &in->received[ri][page / 64];
        uint64_t bit = 1ull << (page % 64);
        /* Each connection owns whole chunks, so no two threads share a bitmap word. */
        if (data) {
            memcpy(r->hva + page * PAGE, data, PAGE);
            *word |= bit;
        } else if (*word & bit) {
            memset(r->hva + page * PAGE, 0, PAGE);
            *word &= ~bit;
        }
        /* a zero page never written here is still a hole of the fresh memfd: leave it */
    }
    return TRUE;
}

/* DISCARD: these pages changed on the source after their copy here was sent. */
static void mark_stale(Incoming *in, const FerryStreamRange *ranges, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        for (uint64_t gpa = ranges[i].gpa; gpa < ranges[i].gpa + ranges[i].bytes; gpa += PAGE) {
            unsigned ri;
            const FerryMemRegion *r = region_of(in->vm->mem, gpa, &ri);
            if (!r)
                continue; /* the reader checked the ranges against RAM */
            uint64_t page = (gpa - r->gpa) / PAGE;
            in->stale[ri][page / 64] |= 1ull << (page % 64);
        }
    }
}

static void add_figures(Incoming *in)
{
    FerryStreamStats total = {0};
    for (unsigned i = 0; i < in->n; i++) {
        if (!in->ch[i].r)
            continue;
        FerryStreamStats st;
        ferry_stream_reader_get_stats(in->ch[i].r, &st);
        total.bytes += st.bytes;
        total.data_pages += st.data_pages;
        total.zero_pages += st.zero_pages;
    }
    g_mutex_lock(&in->m->lock);
    in->m->info.transferred = total.bytes;
    in->m->info.data_pages = total.data_pages;
    in->m->info.zero_pages = total.zero_pages;
    g_mutex_unlock(&in->m->lock);
}

/* Reads connection @c to its END.  Connection 0 also collects the sections. */
static gboolean channel_receive(InChannel *c, GError **error)
{
    Incoming *in = c->in;
    for (uint64_t n = 0;; n++) {
        FerryStreamRecord rec;
        if (!ferry_stream_reader_next(c->r, &rec, error))
            return FALSE;
        switch (rec.type) {
        case FERRY_STREAM_RECORD_END:
            return TRUE;
        case FERRY_STREAM_RECORD_RAM_BATCH:
            if (!apply_ram(in, &rec, error))
                return FALSE;
            break;
        case FERRY_STREAM_RECORD_ROUND:
            if (rec.round.flags & FERRY_STREAM_ROUND_POSTCOPY)
                in->postcopy_round = TRUE;
            if (c->index == 0) {
                g_mutex_lock(&in->m->lock);
                in->m->info.iteration = rec.round.round + 1;
                g_mutex_unlock(&in->m->lock);
                if (rec.round.flags & FERRY_STREAM_ROUND_FINAL)
                    ferry_migration_set_status(in->m, FERRY_MIGRATION_COMPLETING, NULL);
            }
            break;
        case FERRY_STREAM_RECORD_SECTION:
            if (c->index != 0 || g_str_has_prefix(rec.section.id, FERRY_MIGRATION_SECTION_PREFIX)) {
                g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                            "unexpected section '%s' on connection %u", rec.section.id,
                            c->index);
                return FALSE;
            }
            g_hash_table_replace(in->sections, g_strdup(rec.section.id),
                                 g_bytes_new(rec.section.data, rec.section.len));
            break;
        case FERRY_STREAM_RECORD_DISCARD:
            if (c->index != 0 || !in->postcopy_round || in->pc) {
                g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                            "a DISCARD record at byte %" G_GUINT64_FORMAT
                            " outside the post-copy switch",
                            rec.offset);
                return FALSE;
            }
            mark_stale(in, rec.discard.ranges, rec.discard.n);
            break;
        case FERRY_STREAM_RECORD_CHECKPOINT:
            if (c->index != 0 || !in->postcopy_round || in->pc) {
                g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                            "a CHECKPOINT record at byte %" G_GUINT64_FORMAT
                            " outside the post-copy switch",
                            rec.offset);
                return FALSE;
            }
            in->checkpoint = TRUE;
            return TRUE;
        default:
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_UNKNOWN_RECORD,
                        "record type %u at byte %" G_GUINT64_FORMAT
                        " does not belong in a migration",
                        rec.type, rec.offset);
            return FALSE;
        }
        if (c->index == 0 && n % 64 == 0)
            add_figures(in);
    }
}

static gpointer channel_thread(gpointer data)
{
    InChannel *c = data;
    channel_receive(c, &c->error);
    return NULL;
}

/* Cancels the accept below after ACCEPT_TIMEOUT_MS (a source that died half-way). */
static gboolean accept_timeout(gpointer data)
{
    g_cancellable_cancel(data);
    return G_SOURCE_REMOVE;
}

/* Accepts connection @index and reads its header and first (setup or channel) section. */
static gboolean open_channel(Incoming *in, unsigned index, GCancellable *cancel, GError **error)
{
    InChannel *c = &in->ch[index];
    c->in = in;
    c->index = index;
    c->conn = ferry_migration_listener_accept(in->job->listener, cancel, error);
    if (!c->conn)
        return FALSE;
    ferry_migration_track_channel(in->m, c->conn);
    if (index == 0) {
        /* the migration starts now, not when the destination began to listen */
        g_mutex_lock(&in->m->lock);
        in->m->info.start_us = g_get_monotonic_time();
        g_mutex_unlock(&in->m->lock);
        /* our configuration goes out first, so a mismatch is seen on both sides at once */
        in->rp = ferry_stream_writer_new(g_io_stream_get_output_stream(c->conn),
                                         FERRY_STREAM_FLAG_RETURN_PATH, NULL);
        if (!ferry_stream_writer_put_header(in->rp, ferry_vm_identity_config(in->identity),
                                            error) ||
            !ferry_stream_writer_flush(in->rp, error))
            return FALSE;
    }
    c->r = ferry_stream_reader_new(g_io_stream_get_input_stream(c->conn), 0,
                                   ferry_vm_identity_config(in->identity), in->ram, in->n_ram,
                                   NULL);
    if (!ferry_stream_reader_read_header(c->r, error))
        return FALSE;
    FerryStreamRecord rec;
    const char *want = index == 0 ? FERRY_MIGRATION_SECTION_SETUP : FERRY_MIGRATION_SECTION_CHANNEL;
    if (!ferry_stream_reader_next(c->r, &rec, error))
        return FALSE;
    if (rec.type != FERRY_STREAM_RECORD_SECTION || !g_str_equal(rec.section.id, want) ||
        rec.section.version != FERRY_MIGRATION_SETUP_VERSION) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "connection %u does not start with a %s section (version %u); is the "
                    "source a ferry-vmm of the same version?",
                    index, want, FERRY_MIGRATION_SETUP_VERSION);
        return FALSE;
    }
    FerryStateReader sr;
    ferry_state_reader_init(&sr, rec.section.data, rec.section.len, want);
    uint64_t session;
    uint32_t value, mode;
    if (!ferry_state_get_u64(&sr, &session, error) || !ferry_state_get_u32(&sr, &value, error) ||
        !ferry_state_get_u32(&sr, &mode, error) || !ferry_state_reader_finish(&sr, error))
        return FALSE;
    if (index == 0) {
        if (value < 1 || value > FERRY_MIGRATION_MAX_CONNECTIONS || mode > FERRY_MIGRATION_MODE_WARM) {
            g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                        "the source asks for %u connections in mode %u; at most %d are allowed",
                        value, mode, FERRY_MIGRATION_MAX_CONNECTIONS);
            return FALSE;
        }
        in->session = session;
        in->n = value;
        g_mutex_lock(&in->m->lock);
        in->m->mode = (FerryMigrationMode) mode;
        g_mutex_unlock(&in->m->lock);
    } else if (session != in->session || value != index) {
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "connection %u belongs to another migration (session or index mismatch)",
                    index);
        return FALSE;
    }
    return TRUE;
}

static gboolean accept_all(Incoming *in, GError **error)
{
    if (!open_channel(in, 0, in->m->cancel, error))
        return FALSE;
    ferry_migration_set_status(in->m, FERRY_MIGRATION_ACTIVE, NULL);
    if (in->n == 1)
        return TRUE;
    /* the other connections must come soon: a timer cancels a source that vanished */
    g_autoptr(GCancellable) cancel = g_cancellable_new();
    gulong link = g_cancellable_connect(in->m->cancel, G_CALLBACK(g_cancellable_cancel),
                                        g_object_ref(cancel), g_object_unref);
    guint timer = g_timeout_add_full(G_PRIORITY_DEFAULT, ACCEPT_TIMEOUT_MS, accept_timeout,
                                     g_object_ref(cancel), g_object_unref);
    gboolean ok = TRUE;
    unsigned opened = 1;
    for (; opened < in->n && ok; opened++)
        ok = open_channel(in, opened, cancel, error);
    g_source_remove(timer);
    g_cancellable_disconnect(in->m->cancel, link);
    if (!ok && g_cancellable_is_cancelled(cancel) && !g_cancellable_is_cancelled(in->m->cancel))
        g_prefix_error(error, "the source opened only %u of %u connections in %d s: ",
                       opened - 1, in->n, ACCEPT_TIMEOUT_MS / 1000);
    return ok;
}

static gboolean receive_all(Incoming *in, GError **error)
{
    for (unsigned i = 1; i < in->n; i++)
        in->ch[i].thread = g_thread_new("migration-in-data", channel_thread, &in->ch[i]);
    gboolean ok = channel_receive(&in->ch[0], error);
    if (!ok)
        for (unsigned i = 1; i < in->n; i++)
            ferry_migration_channel_abort(in->ch[i].conn);
    for (unsigned i = 1; i < in->n; i++) {
        g_thread_join(in->ch[i].thread);
        in->ch[i].thread = NULL;
        if (in->ch[i].error && ok) {
            g_propagate_prefixed_error(error, g_steal_pointer(&in->ch[i].error),
                                       "connection %u: ", i);
            ok = FALSE;
        }
    }
    add_figures(in);
    return ok;
}

static gboolean apply_on_main(gpointer data, GError **error)
{
    Incoming *in = data;
    return ferry_vm_lock_images(in->vm, error) &&
           ferry_vm_apply_state_sections(in->vm, in->sections, error);
}

static gboolean start_on_main(gpointer data, GError **error)
{
    Incoming *in = data;
    in->resumed = ferry_vm_finish_incoming(in->vm);
    return TRUE;
}

static void tell_source_failed(Incoming *in, const char *message)
{
    if (!in->rp)
        return;
    g_autoptr(GError) e = NULL;
    if (ferry_stream_writer_put_status(in->rp, FERRY_STREAM_STATUS_FAILED, message, &e))
        ferry_stream_writer_put_end(in->rp, &e);
}

static void close_all(Incoming *in)
{
    if (in->rp)
        ferry_stream_writer_free(in->rp);
    in->rp = NULL;
    for (unsigned i = 0; i < FERRY_MIGRATION_MAX_CONNECTIONS; i++) {
        InChannel *c = &in->ch[i];
        if (c->r)
            ferry_stream_reader_free(c->r);
        if (c->conn) {
            ferry_migration_untrack_channel(in->m, c->conn);
            g_io_stream_close(c->conn, NULL, NULL);
            g_object_unref(c->conn);
        }
        g_clear_error(&c->error);
        memset(c, 0, sizeof(*c));
    }
}

/* ---- post-copy ---- */

/* Fault thread: asks the source for pages the guest (or a device) touched while missing. */
static void request_pages(void *opaque, const uint64_t *gpas, unsigned n)
{
    Incoming *in = opaque;
    FerryStreamRange ranges[64];
    n = MIN(n, G_N_ELEMENTS(ranges));
    for (unsigned i = 0; i < n; i++)
        ranges[i] = (FerryStreamRange){gpas[i], PAGE};
    g_mutex_lock(&in->rp_lock);
    /* a failure means the connection broke: the receiver sees it and recovery asks again */
    if (in->rp && ferry_stream_writer_put_page_request(in->rp, ranges, n, NULL))
        ferry_stream_writer_flush(in->rp, NULL);
    g_mutex_unlock(&in->rp_lock);
    g_mutex_lock(&in->m->lock);
    in->m->info.postcopy_requests += n;
    g_mutex_unlock(&in->m->lock);
}

static gboolean put_status_locked(Incoming *in, FerryStreamStatus code, GError **error)
{
    g_mutex_lock(&in->rp_lock);
    gboolean ok = ferry_stream_writer_put_status(in->rp, code, NULL, error) &&
                  ferry_stream_writer_flush(in->rp, error);
    g_mutex_unlock(&in->rp_lock);
    return ok;
}

/* Registers RAM with userfaultfd: every page not DISCARDed holds its final contents. */
static gboolean postcopy_begin(Incoming *in, GError **error)
{
    FerryGuestMemory *mem = in->vm->mem;
    uint64_t *present[FERRY_MAX_RAM_REGIONS] = {0};
    for (unsigned i = 0; i < mem->nr_regions; i++) {
        uint64_t words = (mem->regions[i].size / PAGE + 63) / 64;
        present[i] = g_new(uint64_t, words);
        for (uint64_t w = 0; w < words; w++)
            present[i][w] = ~in->stale[i][w];
    }
    in->pc = ferry_postcopy_start(mem, present, request_pages, in, error);
    for (unsigned i = 0; i < mem->nr_regions; i++)
        g_free(present[i]);
    return in->pc != NULL;
}

static gpointer receiver_thread(gpointer data)
{
    InChannel *c = data;
    g_clear_error(&c->error);
    channel_receive(c, &c->error);
    return NULL;
}

/* A new connection after a post-copy break: check it, then ask for every missing page. */
static gboolean postcopy_accept_again(Incoming *in, FerryMigrationListener *l, GError **error)
{
    InChannel *c = &in->ch[0];
    g_mutex_lock(&in->rp_lock);
    if (in->rp)
        ferry_stream_writer_free(in->rp);
    in->rp = NULL;
    g_mutex_unlock(&in->rp_lock);
    if (c->r)
        ferry_stream_reader_free(c->r);
    c->r = NULL;
    if (c->conn) {
        ferry_migration_untrack_channel(in->m, c->conn);
        g_clear_object(&c->conn);
    }
    c->conn = ferry_migration_listener_accept(l, in->m->cancel, error);
    if (!c->conn)
        return FALSE;
    ferry_migration_track_channel(in->m, c->conn);
    FerryStreamWriter *rp = ferry_stream_writer_new(g_io_stream_get_output_stream(c->conn),
                                                    FERRY_STREAM_FLAG_RETURN_PATH, NULL);
    if (!ferry_stream_writer_put_header(rp, ferry_vm_identity_config(in->identity), error) ||
        !ferry_stream_writer_flush(rp, error)) {
        ferry_stream_writer_free(rp);
        return FALSE;
    }
    c->r = ferry_stream_reader_new(g_io_stream_get_input_stream(c->conn), 0,
                                   ferry_vm_identity_config(in->identity), in->ram, in->n_ram,
                                   NULL);
    FerryStreamRecord rec;
    if (!ferry_stream_reader_read_header(c->r, error) || !ferry_stream_reader_next(c->r, &rec, error)) {
        ferry_stream_writer_free(rp);
        return FALSE;
    }
    uint64_t session = 0;
    if (rec.type == FERRY_STREAM_RECORD_SECTION &&
        g_str_equal(rec.section.id, FERRY_MIGRATION_SECTION_RECOVER) && rec.section.len >= 8)
        session = ferry_le_load64(rec.section.data);
    if (session != in->session) {
        ferry_stream_writer_free(rp);
        g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                    "the new connection is not the recovery of this migration");
        return FALSE;
    }
    g_autoptr(GArray) missing = g_array_new(FALSE, FALSE, sizeof(FerryStreamRange));
    ferry_postcopy_missing_ranges(in->pc, missing);
    gboolean ok = TRUE;
    for (guint i = 0; ok && i < missing->len; i += FERRY_STREAM_MAX_PAGE_REQUESTS)
        ok = ferry_stream_writer_put_page_request(
            rp, &g_array_index(missing, FerryStreamRange, i),
            MIN(missing->len - i, FERRY_STREAM_MAX_PAGE_REQUESTS), error);
    ok = ok && ferry_stream_writer_flush(rp, error);
    g_mutex_lock(&in->rp_lock);
    in->rp = rp;
    g_mutex_unlock(&in->rp_lock);
    if (ok)
        ferry_postcopy_rerequest_waiting(in->pc);
    return ok;
}

/*
 * From the verified CHECKPOINT on: missing pages fault in through userfaultfd while the
 * receiver places what arrives.  Before READY went out a failure is ordinary (the guest
 * never ran here); after it a broken connection pauses post-copy until migrate-recover.
 */
static gboolean run_postcopy(Incoming *in, GError **error)
{
    InChannel *c = &in->ch[0];
    if (!postcopy_begin(in, error))
        return FALSE;
    c->thread = g_thread_new("migration-in-pc", receiver_thread, c);
    if (!ferry_migration_call_main(in->m, apply_on_main, in, error) ||
        !put_status_locked(in, FERRY_STREAM_STATUS_READY, error)) {
        ferry_migration_channel_abort(c->conn);
        g_thread_join(c->thread);
        c->thread = NULL;
        return FALSE;
    }
    /* committed: the guest is ours now */
    in->committed = TRUE;
    ferry_migration_call_main(in->m, start_on_main, in, NULL);
    if (in->resumed)
        put_status_locked(in, FERRY_STREAM_STATUS_RESUMED, NULL);
    ferry_migration_set_status(in->m, FERRY_MIGRATION_POSTCOPY_ACTIVE, NULL);
    for (;;) {
        g_thread_join(c->thread);
        c->thread = NULL;
        add_figures(in);
        if (!c->error) {
            if (!ferry_postcopy_complete(in->pc)) {
                g_set_error(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_INVALID,
                            "the source ended the migration with %" G_GUINT64_FORMAT
                            " pages still missing",
                            ferry_postcopy_missing(in->pc));
                return FALSE;
            }
            return TRUE;
        }
        g_autofree char *why = g_strdup_printf(
            "connection to the source lost in post-copy (%s); the guest waits for its "
            "missing pages: give both sides a new connection with migrate-recover",
            c->error->message);
        ferry_migration_set_status(in->m, FERRY_MIGRATION_POSTCOPY_PAUSED, why);
        for (;;) {
            g_mutex_lock(&in->m->lock);
            while (!in->m->recover_listener && !g_atomic_int_get(&in->m->closing))
                g_cond_wait(&in->m->recover_cond, &in->m->lock);
            FerryMigrationListener *l = g_steal_pointer(&in->m->recover_listener);
            g_mutex_unlock(&in->m->lock);
            if (!l) {
                g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "ferry-vmm is shutting down");
                return FALSE;
            }
            g_autoptr(GError) e = NULL;
            gboolean ok = postcopy_accept_again(in, l, &e);
            ferry_migration_listener_free(l);
            if (ok)
                break;
            g_autofree char *msg = g_strdup_printf("recovery failed: %s; try migrate-recover "
                                                   "again",
                                                   e->message);
            ferry_migration_set_status(in->m, FERRY_MIGRATION_POSTCOPY_PAUSED, msg);
        }
        ferry_migration_set_status(in->m, FERRY_MIGRATION_POSTCOPY_ACTIVE, NULL);
        c->thread = g_thread_new("migration-in-pc", receiver_thread, c);
    }
}

gpointer ferry_migration_incoming_thread(gpointer data)
{
    FerryIncomingJob *job = data;
    Incoming *in = g_new0(Incoming, 1);
    in->m = job->m;
    in->vm = job->m->vm;
    in->job = job;
    in->identity = ferry_vm_identity_new(in->vm);
    in->n_ram = ferry_vm_ram_ranges(in->vm, in->ram);
    in->sections =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify) g_bytes_unref);
    for (unsigned i = 0; i < in->vm->mem->nr_regions; i++) {
        uint64_t words = (in->vm->mem->regions[i].size / PAGE + 63) / 64;
        in->received[i] = g_new0(uint64_t, words);
        in->stale[i] = g_new0(uint64_t, words);
    }
    g_mutex_init(&in->rp_lock);

    g_autoptr(GError) error = NULL;
    gboolean ok = accept_all(in, &error);
    if (ok) {
        g_mutex_lock(&in->m->lock);
        in->m->info.setup_ms = (g_get_monotonic_time() - in->m->info.start_us) / 1000;
        g_mutex_unlock(&in->m->lock);
    }
    ok = ok && receive_all(in, &error);
    if (ok && in->checkpoint) {
        ok = run_postcopy(in, &error);
        if (ok) {
            g_mutex_lock(&in->rp_lock);
            ferry_stream_writer_put_end(in->rp, NULL);
            g_mutex_unlock(&in->rp_lock);
            ferry_migration_set_status(in->m, FERRY_MIGRATION_COMPLETED, NULL);
        }
    } else if (ok && ferry_migration_call_main(in->m, apply_on_main, in, &error)) {
        /* from here the guest is ours: the source stays paused for good */
        in->committed = TRUE;
        g_autoptr(GError) e = NULL;
        if (!ferry_stream_writer_put_status(in->rp, FERRY_STREAM_STATUS_READY, NULL, &e) ||
            !ferry_stream_writer_flush(in->rp, &e))
            ferry_log("could not tell the source the migration is complete (%s); the guest "
                      "runs here and the source stays paused",
                      e->message);
        ferry_migration_call_main(in->m, start_on_main, in, NULL);
        if (in->resumed && !e)
            ferry_stream_writer_put_status(in->rp, FERRY_STREAM_STATUS_RESUMED, NULL, NULL);
        if (!e)
            ferry_stream_writer_put_end(in->rp, NULL);
        ferry_migration_set_status(in->m, FERRY_MIGRATION_COMPLETED, NULL);
    } else {
        ok = FALSE;
    }
    if (!ok && in->committed) {
        /* post-copy after READY: the guest runs here whatever happens */
        ferry_migration_set_status(in->m, FERRY_MIGRATION_FAILED, error->message);
    } else if (!ok) {
        g_autofree char *message = g_strdup_printf("incoming migration failed: %s",
                                                   error->message);
        g_mutex_lock(&in->rp_lock);
        tell_source_failed(in, error->message);
        g_mutex_unlock(&in->rp_lock);
        ferry_migration_set_status(in->m,
                                   g_cancellable_is_cancelled(in->m->cancel)
                                       ? FERRY_MIGRATION_CANCELLED
                                       : FERRY_MIGRATION_FAILED,
                                   message);
        if (!g_atomic_int_get(&in->m->closing))
            ferry_vm_abandon_incoming(in->vm, message);
    }
    if (in->committed && in->pc && !ferry_postcopy_complete(in->pc) &&
        !g_atomic_int_get(&in->m->closing)) {
        /* freeing now would hand the running guest zero pages: keep it until ferry-vmm
         * ends (ferry_migration_free, before the VM's KVM descriptors close) */
        g_mutex_lock(&in->m->lock);
        in->m->kept_postcopy = g_steal_pointer(&in->pc);
        g_mutex_unlock(&in->m->lock);
    }
    ferry_postcopy_free(in->pc);
    close_all(in);
    ferry_migration_listener_free(job->listener);
    g_hash_table_unref(in->sections);
    for (unsigned i = 0; i < FERRY_MAX_RAM_REGIONS; i++) {
        g_free(in->received[i]);
        g_free(in->stale[i]);
    }
    g_mutex_clear(&in->rp_lock);
    ferry_vm_identity_free(in->identity);
    g_free(in);
    g_free(job);
    return NULL;
}
