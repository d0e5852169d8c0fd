/*
 * The source side of a migration (migration.h): connect, pre-copy rounds, stop-and-copy,
 * wait for the destination's "ready".  docs/migration-protocol.md "Live migration" describes
 * the records; docs/control-api.md "Migration" the guarantees.
 *
 * Correctness of pre-copy rests on one order, per chunk of RAM: take the chunk's dirty bits
 * (which re-protects those pages in KVM and clears the VMM-side bits) BEFORE reading the
 * pages.  A write that lands after the take is in the next round's log; a write before it is
 * in the copy being sent.  The final round runs with every vCPU parked and every device
 * paused, so its log is complete.
 */
#include "migration/migration-internal.h"

#include "migration/dirty.h"
#include "snapshot.h"
#include "util/log.h"
#include "util/state.h"
#include "vcpu_throttle.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define PAGE FERRY_PAGE_SIZE
#define RP_HEADER_TIMEOUT_US (30 * G_TIME_SPAN_SECOND)
#define RESUMED_WAIT_US      (5 * G_TIME_SPAN_SECOND)
/* A pause this short is not worth another round (ms). */
#define SHORT_PAUSE_MS 5
/* Rounds after the pause fits the limit are bounded anyway. */
#define MAX_EXTRA_ROUNDS 30
/* Rounds shorter than this in bytes do not update the bandwidth estimate. */
#define BANDWIDTH_MIN_SAMPLE (4u << 20)
/* Stream bytes of the switch-over besides RAM, per vCPU and per device (an estimate). */
#define STATE_BYTES_PER_VCPU   (24u << 10)
#define STATE_BYTES_PER_DEVICE (4u << 10)

typedef struct Source Source;

/* One data connection and the thread that fills it in a round. */
typedef struct {
    Source *s;
    unsigned index;
    GIOStream *conn;
    FerryStreamWriter *w;
    GThread *thread;
    GError *error;          /* of the last round */
    gboolean send_all_data; /* round 0 / warm: every page that holds data */
    gboolean end;           /* write END after the round (final) */
    FerryStreamStats stats; /* the writer's counters, copied under Source.figures_lock */
} Channel;

struct Source {
    FerryMigration *m;
    FerryVm *vm;
    FerrySourceJob *job;
    FerryMigrationParams params; /* refreshed every round */
    FerryVmIdentity *identity;
    unsigned n;
    Channel ch[FERRY_MIGRATION_MAX_CONNECTIONS];
    FerryDirtyLog *log;
    uint64_t session;

    GMutex figures_lock; /* Channel.stats, closed_stats */
    FerryStreamStats closed_stats; /* of connections replaced by a post-copy recovery */

    /* rate limiting over all connections */
    GMutex rl_lock;
    gint64 rl_next_us;

    /* the return path (destination → source), read by its own thread */
    GThread *rp_thread;
    GMutex rp_lock;
    GCond rp_cond;
    gboolean rp_header;  /* the destination's CONFIG matched */
    gboolean rp_ready, rp_failed, rp_done;
    gint64 rp_header_us, rp_ready_us, rp_resumed_us;
    char *rp_error;

    /* switch-over */
    gboolean vm_stopped; /* this migration paused the VM */
    gboolean was_paused; /* ...which had been paused by the user before */
    gboolean end_sent;   /* every byte of the stream is out: the destination may own the VM */
    gint64 pause_us;
    gint64 rtt_us;

    /* post-copy: pages the destination still needs, and the pages it asked for (rp_lock) */
    uint64_t *needed[FERRY_MAX_RAM_REGIONS];
    uint64_t needed_count;
    GArray *requests; /* FerryStreamRange, filled by the return-path thread */
};

/* ---- the return path ---- */

static gpointer return_path_thread(gpointer data)
{
    Source *s = data;
    GInputStream *in = g_io_stream_get_input_stream(s->ch[0].conn);
    FerryStreamRange ram[FERRY_MAX_RAM_REGIONS];
    unsigned n_ram = ferry_vm_ram_ranges(s->vm, ram);
    g_autoptr(FerryStreamReader) r =
        ferry_stream_reader_new(in, FERRY_STREAM_FLAG_RETURN_PATH,
                                ferry_vm_identity_config(s->identity), ram, n_ram, NULL);
    g_autoptr(GError) error = NULL;
    gboolean ok = ferry_stream_reader_read_header(r, &error);
    g_mutex_lock(&s->rp_lock);
    if (ok) {
        s->rp_header = TRUE;
        s->rp_header_us = g_get_monotonic_time();
    } else if (g_error_matches(error, FERRY_STREAM_ERROR, FERRY_STREAM_ERROR_CONFIG_MISMATCH)) {
        s->rp_error = g_strdup_printf("the destination VM is configured differently (\"in the "
                                      "stream\" is the destination, \"here\" this VM): %s",
                                      error->message);
    } else {
        s->rp_error = g_strdup_printf("the destination did not answer as a ferry-vmm "
                                      "migration destination: %s",
                                      error->message);
    }
    g_cond_broadcast(&s->rp_cond);
    g_mutex_unlock(&s->rp_lock);

    while (ok) {
        FerryStreamRecord rec;
        g_clear_error(&error);
        ok = ferry_stream_reader_next(r, &rec, &error);
        g_mutex_lock(&s->rp_lock);
        if (!ok) {
            if (!s->rp_error)
                s->rp_error = g_strdup_printf("connection to the destination lost: %s",
                                              error->message);
        } else if (rec.type == FERRY_STREAM_RECORD_STATUS) {
            switch (rec.status.code) {
            case FERRY_STREAM_STATUS_READY:
                s->rp_ready = TRUE;
                s->rp_ready_us = g_get_monotonic_time();
                break;
            case FERRY_STREAM_STATUS_RESUMED:
                s->rp_resumed_us = g_get_monotonic_time();
                break;
            case FERRY_STREAM_STATUS_FAILED:
                s->rp_failed = TRUE;
                g_free(s->rp_error);
                s->rp_error = g_strdup_printf("the destination failed: %s", rec.status.message);
                /* stop sending at once: the data threads fail and report this reason */
                for (unsigned i = 0; i < s->n; i++)
                    if (s->ch[i].conn)
                        ferry_migration_channel_abort(s->ch[i].conn);
                break;
            }
        } else if (rec.type == FERRY_STREAM_RECORD_PAGE_REQUEST) {
            g_array_append_vals(s->requests, rec.page_request.ranges, rec.page_request.n);
            uint64_t pages = 0;
            for (unsigned i = 0; i < rec.page_request.n; i++)
                pages += rec.page_request.ranges[i].bytes / PAGE;
            g_mutex_lock(&s->m->lock);
            s->m->info.postcopy_requests += pages;
            g_mutex_unlock(&s->m->lock);
        } else if (rec.type == FERRY_STREAM_RECORD_END) {
            ok = FALSE;
        }
        g_cond_broadcast(&s->rp_cond);
        g_mutex_unlock(&s->rp_lock);
    }
    g_mutex_lock(&s->rp_lock);
    s->rp_done = TRUE;
    g_cond_broadcast(&s->rp_cond);
    g_mutex_unlock(&s->rp_lock);
    return NULL;
}

/* The destination's error so far, as a GError (FALSE), or TRUE if all is well. */
static gboolean return_path_ok(Source *s, GError **error)
{
    g_mutex_lock(&s->rp_lock);
    gboolean bad = s->rp_failed || (s->rp_done && !s->rp_ready) || (s->rp_error && !s->rp_ready);
    if (bad)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s",
                    s->rp_error ? s->rp_error : "the destination closed the connection");
    g_mutex_unlock(&s->rp_lock);
    return !bad;
}

/* ---- sending RAM ---- */

static gboolean cancelled(Source *s, GError **error)
{
    if (!g_cancellable_is_cancelled(s->m->cancel))
        return FALSE;
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "the migration was cancelled");
    return TRUE;
}

/* Waits until @bytes more may be sent under max-bandwidth (all connections together). */
static gboolean rate_limit(Source *s, uint64_t bytes, GError **error)
{
    g_mutex_lock(&s->m->lock);
    uint64_t bw = s->m->params.max_bandwidth;
    g_mutex_unlock(&s->m->lock);
    if (!bw)
        return TRUE;
    g_mutex_lock(&s->rl_lock);
    gint64 now = g_get_monotonic_time();
    /* a connection idle for a while gets no more than 50 ms of credit */
    if (s->rl_next_us < now - 50 * G_TIME_SPAN_MILLISECOND)
        s->rl_next_us = now - 50 * G_TIME_SPAN_MILLISECOND;
    s->rl_next_us += (gint64) (bytes * G_USEC_PER_SEC / bw);
    gint64 until = s->rl_next_us;
    g_mutex_unlock(&s->rl_lock);
    while ((now = g_get_monotonic_time()) < until) {
        if (cancelled(s, error))
            return FALSE;
        g_usleep(MIN(until - now, 20 * G_TIME_SPAN_MILLISECOND));
    }
    return TRUE;
}

/* Sets in @bits the pages of [@first, @first + @npages) of region @r that hold data (not
 * memfd holes, which are zero and were never touched). */
static void data_pages(FerryGuestMemory *mem, const FerryMemRegion *r, uint64_t first,
                       uint64_t npages, uint64_t *bits)
{
    off_t start = (off_t) (r->fd_offset + first * PAGE);
    off_t end = start + (off_t) (npages * PAGE);
    off_t pos = start;
    memset(bits, 0, (npages + 63) / 64 * 8);
    while (pos < end) {
        off_t data = lseek(mem->memfd, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            return;
        if (data < 0)
            data = pos; /* no SEEK_DATA: everything */
        if (data >= end)
            return;
        off_t hole = lseek(mem->memfd, data, SEEK_HOLE);
        if (hole < 0 || hole > end)
            hole = end;
        for (uint64_t p = (uint64_t) (data - start) / PAGE; p < (uint64_t) (hole - start + PAGE - 1) / PAGE;
             p++)
            bits[p / 64] |= 1ull << (p % 64);
        pos = hole;
    }
}

static void update_transfer_figures(Source *s);

/* Sends this channel's chunks for one round (dirty pages, or all data in round 0). */
static gboolean channel_send_round(Channel *c, GError **error)
{
    Source *s = c->s;
    FerryGuestMemory *mem = s->vm->mem;
    uint64_t bits[FERRY_MIGRATION_CHUNK_PAGES / 64];
    uint64_t chunk_index = 0;
    for (unsigned ri = 0; ri < mem->nr_regions; ri++) {
        const FerryMemRegion *r = &mem->regions[ri];
        uint64_t pages = r->size / PAGE;
        for (uint64_t first = 0; first < pages; first += FERRY_MIGRATION_CHUNK_PAGES, chunk_index++) {
            if (chunk_index % s->n != c->index)
                continue;
            uint64_t npages = MIN((uint64_t) FERRY_MIGRATION_CHUNK_PAGES, pages - first);
            uint64_t count = 0;
            if (s->log && !ferry_dirty_log_take_chunk(s->log, ri, first, npages, bits, &count,
                                                      error))
                return FALSE;
            if (c->send_all_data)
                data_pages(mem, r, first, npages, bits);
            else if (count == 0)
                continue;
            for (uint64_t off = 0; off < npages; off += FERRY_STREAM_MAX_BATCH_PAGES) {
                unsigned n = (unsigned) MIN((uint64_t) FERRY_STREAM_MAX_BATCH_PAGES, npages - off);
                FerryStreamStats before, after;
                ferry_stream_writer_get_stats(c->w, &before);
                if (!ferry_stream_writer_put_ram_batch(c->w, r->gpa + (first + off) * PAGE, n,
                                                       r->hva + (first + off) * PAGE,
                                                       bits + off / 64, error))
                    return FALSE;
                ferry_stream_writer_get_stats(c->w, &after);
                g_mutex_lock(&s->figures_lock);
                c->stats = after;
                g_mutex_unlock(&s->figures_lock);
                if (!rate_limit(s, after.bytes - before.bytes, error))
                    return FALSE;
            }
            if (c->index == 0 && chunk_index % 16 == 0)
                update_transfer_figures(s);
            if (cancelled(s, error))
                return FALSE;
        }
    }
    gboolean ok = c->end && c->index != 0 ? ferry_stream_writer_put_end(c->w, error)
                                          : ferry_stream_writer_flush(c->w, error);
    g_mutex_lock(&s->figures_lock);
    ferry_stream_writer_get_stats(c->w, &c->stats);
    g_mutex_unlock(&s->figures_lock);
    return ok;
}

static gpointer channel_thread(gpointer data)
{
    Channel *c = data;
    channel_send_round(c, &c->error);
    return NULL;
}

/* Adds the connections' counters into the migration's figures (any data thread). */
static void update_transfer_figures(Source *s)
{
    g_mutex_lock(&s->figures_lock);
    FerryStreamStats total = s->closed_stats;
    for (unsigned i = 0; i < s->n; i++) {
        const FerryStreamStats *st = &s->ch[i].stats;
        total.bytes += st->bytes;
        total.data_pages += st->data_pages;
        total.zero_pages += st->zero_pages;
    }
    g_mutex_unlock(&s->figures_lock);
    g_mutex_lock(&s->m->lock);
    s->m->info.transferred = total.bytes;
    s->m->info.data_pages = total.data_pages;
    s->m->info.zero_pages = total.zero_pages;
    g_mutex_unlock(&s->m->lock);
}

/* One round on every connection at once: ROUND record, the chunks, flush (and END). */
static gboolean send_round(Source *s, uint32_t round, uint32_t flags, gboolean all_data,
                           gboolean end, GError **error)
{
    for (unsigned i = 0; i < s->n; i++) {
        Channel *c = &s->ch[i];
        c->send_all_data = all_data;
        c->end = end;
        g_clear_error(&c->error);
        if (!ferry_stream_writer_put_round(c->w, round, flags, error))
            return FALSE;
    }
    for (unsigned i = 1; i < s->n; i++)
        s->ch[i].thread = g_thread_new("migration-data", channel_thread, &s->ch[i]);
    gboolean ok = channel_send_round(&s->ch[0], error);
    for (unsigned i = 1; i < s->n; i++) {
        g_thread_join(s->ch[i].thread);
        s->ch[i].thread = NULL;
        if (s->ch[i].error && ok) {
            g_propagate_prefixed_error(error, g_steal_pointer(&s->ch[i].error),
                                       "connection %u: ", i);
            ok = FALSE;
        }
    }
    update_transfer_figures(s);
    return ok;
}

/* ---- connecting ---- */

static GIOStream *dial(Source *s, GError **error)
{
    FerryTlsOptions tls = {.dir = s->m->tls_dir, .hostname = s->params.tls_hostname};
    GIOStream *conn = ferry_migration_connect(&s->job->uri, &tls, s->m->cancel, error);
    if (conn)
        ferry_migration_track_channel(s->m, conn);
    return conn;
}

static gboolean open_channel(Source *s, unsigned index, GError **error)
{
    Channel *c = &s->ch[index];
    c->s = s;
    c->index = index;
    c->conn = dial(s, error);
    if (!c->conn)
        return FALSE;
    c->w = ferry_stream_writer_new(g_io_stream_get_output_stream(c->conn), 0, s->m->cancel);
    if (!ferry_stream_writer_put_header(c->w, ferry_vm_identity_config(s->identity), error))
        return FALSE;
    /* connection 0 announces the session; the others say which connection they are */
    g_autoptr(GByteArray) blob = g_byte_array_new();
    FerryStateWriter sw = {blob};
    ferry_state_put_u64(&sw, s->session);
    ferry_state_put_u32(&sw, index == 0 ? s->n : index);
    ferry_state_put_u32(&sw, index == 0 ? (uint32_t) s->job->mode : 0);
    return ferry_stream_writer_put_section(c->w,
                                           index == 0 ? FERRY_MIGRATION_SECTION_SETUP
                                                      : FERRY_MIGRATION_SECTION_CHANNEL,
                                           FERRY_MIGRATION_SETUP_VERSION, blob->data, blob->len,
                                           error) &&
           ferry_stream_writer_flush(c->w, error);
}

/* Waits for the destination's return-path header (its configuration matched ours). */
static gboolean wait_destination_header(Source *s, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + RP_HEADER_TIMEOUT_US;
    g_mutex_lock(&s->rp_lock);
    while (!s->rp_header && !s->rp_error && !s->rp_done) {
        if (g_cancellable_is_cancelled(s->m->cancel) ||
            !g_cond_wait_until(&s->rp_cond, &s->rp_lock, MIN(deadline, g_get_monotonic_time() +
                                                                            50 * G_TIME_SPAN_MILLISECOND)))
            if (g_get_monotonic_time() >= deadline || g_cancellable_is_cancelled(s->m->cancel))
                break;
    }
    gboolean ok = s->rp_header;
    if (!ok && s->rp_error)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s", s->rp_error);
    else if (!ok && g_cancellable_is_cancelled(s->m->cancel))
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "the migration was cancelled");
    else if (!ok)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                    "the destination accepted the connection but sent nothing for %d s; is "
                    "it a ferry-vmm started with --incoming?",
                    (int) (RP_HEADER_TIMEOUT_US / G_USEC_PER_SEC));
    g_mutex_unlock(&s->rp_lock);
    return ok;
}

static gboolean setup(Source *s, GError **error)
{
    s->session = g_random_int() | ((uint64_t) g_random_int() << 32);
    s->n = s->params.connections;
    if (!open_channel(s, 0, error))
        return FALSE;
    gint64 sent = g_get_monotonic_time();
    s->rp_thread = g_thread_new("migration-rp", return_path_thread, s);
    if (!wait_destination_header(s, error))
        return FALSE;
    s->rtt_us = MAX(s->rp_header_us - sent, 0);
    for (unsigned i = 1; i < s->n; i++)
        if (!open_channel(s, i, error))
            return FALSE;
    return TRUE;
}

/* ---- the VM, through the main thread ---- */

static gboolean stop_vm_on_main(gpointer data, GError **error)
{
    Source *s = data;
    if (!ferry_vm_stop_for_migration(s->vm, &s->was_paused, error))
        return FALSE;
    s->vm_stopped = TRUE;
    return TRUE;
}

static gboolean restart_vm_on_main(gpointer data, GError **error)
{
    Source *s = data;
    ferry_vm_continue_after_migration(s->vm, s->was_paused);
    return TRUE;
}

/* ---- rounds and the switch-over ---- */

/*
 * The next auto-converge step: at least one increment (or the initial step), and at once
 * as much as the figures call for — the unthrottled dirty rate is the observed one divided
 * by the share of time the vCPUs still run, and the guest should dirty at most half of what
 * gets through.  Percent, at most 99.
 */
static unsigned next_throttle(const FerryMigrationParams *p, unsigned current,
                              uint64_t dirty_bytes_per_s, uint64_t bandwidth)
{
    unsigned step = current ? MIN(99u, current + p->auto_converge_increment)
                            : p->auto_converge_initial;
    double unthrottled = (double) dirty_bytes_per_s / (1.0 - current / 100.0);
    double needed = unthrottled > 0 ? 100.0 * (1.0 - (double) bandwidth / 2 / unthrottled) : 0;
    unsigned want = needed > 99 ? 99 : needed < 0 ? 0 : (unsigned) needed;
    return MAX(step, want);
}

/* Estimated pause in ms if the switch-over started now with @pending dirty pages. */
static uint64_t expected_downtime_ms(Source *s, uint64_t pending, uint64_t bandwidth)
{
    uint64_t state = (uint64_t) s->vm->nr_vcpus * STATE_BYTES_PER_VCPU +
                     (uint64_t) s->vm->devices->len * STATE_BYTES_PER_DEVICE;
    uint64_t bytes = pending * PAGE + state;
    uint64_t ms = bandwidth ? bytes * 1000 / bandwidth : 0;
    /* the final ROUND out, "ready" back, and "resumed": about two round trips */
    return ms + (uint64_t) (2 * s->rtt_us / 1000) + 1;
}

static void refresh_params(Source *s)
{
    ferry_migration_params_clear(&s->params);
    ferry_migration_get_params(s->m, &s->params);
}

static void set_figures(Source *s, unsigned iteration, uint64_t remaining, uint64_t dirty_rate,
                        uint64_t bandwidth, uint64_t expected, unsigned throttle)
{
    g_mutex_lock(&s->m->lock);
    s->m->info.iteration = iteration;
    s->m->info.remaining = remaining;
    s->m->info.dirty_rate = dirty_rate;
    s->m->info.bandwidth = bandwidth;
    s->m->info.expected_downtime_ms = expected;
    s->m->info.throttle = throttle;
    g_mutex_unlock(&s->m->lock);
}

/*
 * Pre-copy: round 0 sends every page holding data, later rounds what was dirtied since;
 * returns when the estimated pause fits the downtime limit.  Fails on timeout (action
 * cancel), cancellation, or a connection or destination error.
 */
static gboolean precopy(Source *s, uint32_t *next_round, gboolean *to_postcopy, GError **error)
{
    *to_postcopy = FALSE;
    uint64_t pending = 0, bandwidth = 0, dirty_rate = 0, prev_pending = 0; /* 0: no round yet */
    unsigned throttle = 0, strikes = 0;
    gint64 last_sync = g_get_monotonic_time();
    if (!ferry_dirty_log_sync(s->log, &pending, error))
        return FALSE;
    for (uint32_t round = 0;; round++) {
        refresh_params(s);
        gint64 t0 = g_get_monotonic_time();
        uint64_t bytes0 = s->m->info.transferred;
        if (!send_round(s, round, 0, round == 0, FALSE, error) || !return_path_ok(s, error))
            return FALSE;
        gint64 t1 = g_get_monotonic_time();
        uint64_t sent = s->m->info.transferred - bytes0;
        if (sent >= BANDWIDTH_MIN_SAMPLE || !bandwidth)
            bandwidth = sent * G_USEC_PER_SEC / (uint64_t) MAX(t1 - t0, 1);

        if (!ferry_dirty_log_sync(s->log, &pending, error))
            return FALSE;
        gint64 now = g_get_monotonic_time();
        dirty_rate = pending * G_USEC_PER_SEC / (uint64_t) MAX(now - last_sync, 1);
        last_sync = now;
        uint64_t expected = expected_downtime_ms(s, pending, bandwidth);

        /* auto-converge: the guest dirties more than half of what goes out, twice in a row */
        if (s->params.auto_converge && round > 0) {
            if (dirty_rate * PAGE > bandwidth / 2 && ++strikes >= 2) {
                throttle = next_throttle(&s->params, throttle, dirty_rate * PAGE, bandwidth);
                ferry_vcpu_throttle_set(s->vm, throttle);
                strikes = 0;
            }
        }
        set_figures(s, round + 1, pending * PAGE, dirty_rate, bandwidth, expected, throttle);
        ferry_migration_notify(s->m);
        *next_round = round + 1;
        /*
         * Switch over once the pause fits the limit and another round would not shorten
         * it much: while rounds still shrink the dirty set by a quarter or more, one more
         * costs little time and buys a shorter pause.
         */
        gboolean fits = expected <= s->params.downtime_limit;
        gboolean shrinking = (prev_pending == 0 || pending * 4 < prev_pending * 3) &&
                             expected > SHORT_PAUSE_MS &&
                             round < MAX_EXTRA_ROUNDS;
        if (pending == 0 || (fits && !shrinking))
            return TRUE;
        prev_pending = pending;
        g_mutex_lock(&s->m->lock);
        gboolean asked = s->m->postcopy_requested;
        g_mutex_unlock(&s->m->lock);
        gint64 elapsed_s = (now - s->m->info.start_us) / G_USEC_PER_SEC;
        gboolean timed_out = s->params.timeout && elapsed_s >= (gint64) s->params.timeout;
        if (s->params.postcopy &&
            (asked || (timed_out && s->params.timeout_action == FERRY_MIGRATION_TIMEOUT_POSTCOPY))) {
            *to_postcopy = TRUE;
            return TRUE;
        }
        if (timed_out) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                        "the migration did not converge in %u s: the guest dirties %" G_GUINT64_FORMAT
                        " MiB/s and %" G_GUINT64_FORMAT " MiB/s get through, so the pause would be "
                        "%" G_GUINT64_FORMAT " ms against a limit of %u ms; raise max-bandwidth "
                        "or downtime-limit, or allow auto-converge or post-copy",
                        s->params.timeout, (guint64) (dirty_rate * PAGE >> 20), (guint64) (bandwidth >> 20), (guint64) expected,
                        s->params.downtime_limit);
            return FALSE;
        }
        if (cancelled(s, error))
            return FALSE;
    }
}

/* Waits for "ready" (TRUE) or the destination's failure. */
static gboolean wait_ready(Source *s, GError **error)
{
    g_mutex_lock(&s->rp_lock);
    while (!s->rp_ready && !s->rp_failed && !s->rp_done && !s->rp_error)
        g_cond_wait(&s->rp_cond, &s->rp_lock);
    gboolean ok = s->rp_ready;
    if (!ok)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s",
                    s->rp_error ? s->rp_error : "the destination closed the connection");
    g_mutex_unlock(&s->rp_lock);
    return ok;
}

/* Stop-and-copy: pause, last dirty pages, device and vCPU state, END, then "ready". */
static gboolean switch_over(Source *s, uint32_t round, GError **error)
{
    s->pause_us = g_get_monotonic_time();
    if (!ferry_migration_call_main(s->m, stop_vm_on_main, s, error))
        return FALSE;
    ferry_migration_set_status(s->m, FERRY_MIGRATION_COMPLETING, NULL);
    gboolean all = s->log == NULL; /* warm: one round with everything */
    if (s->log && !ferry_dirty_log_sync(s->log, NULL, error))
        return FALSE;
    if (!send_round(s, round, FERRY_STREAM_ROUND_FINAL, all, TRUE, error))
        return FALSE;
    if (!ferry_vm_put_state_sections(s->vm, s->ch[0].w, error) ||
        !ferry_stream_writer_put_end(s->ch[0].w, error))
        return FALSE;
    s->end_sent = TRUE;
    g_mutex_lock(&s->figures_lock);
    ferry_stream_writer_get_stats(s->ch[0].w, &s->ch[0].stats);
    g_mutex_unlock(&s->figures_lock);
    update_transfer_figures(s);
    return wait_ready(s, error);
}

/* ---- post-copy ---- */

static void update_postcopy_figures(Source *s)
{
    g_mutex_lock(&s->figures_lock);
    ferry_stream_writer_get_stats(s->ch[0].w, &s->ch[0].stats);
    g_mutex_unlock(&s->figures_lock);
    update_transfer_figures(s);
    g_mutex_lock(&s->m->lock);
    s->m->info.remaining = s->needed_count * PAGE;
    g_mutex_unlock(&s->m->lock);
}

/* Appends the runs of set bits of @bits (@npages pages from @gpa) to @out as ranges. */
static void bitmap_ranges(const uint64_t *bits, uint64_t npages, uint64_t gpa, GArray *out)
{
    uint64_t p = 0;
    while (p < npages) {
        if (!(bits[p / 64] & (1ull << (p % 64)))) {
            p++;
            continue;
        }
        uint64_t start = p;
        while (p < npages && (bits[p / 64] & (1ull << (p % 64))))
            p++;
        FerryStreamRange r = {gpa + start * PAGE, (p - start) * PAGE};
        g_array_append_val(out, r);
    }
}

/*
 * The post-copy switch: pause, take the last dirty pages as the "needed" set, tell the
 * destination to drop its stale copies of them (DISCARD), send the machine state and a
 * CHECKPOINT; the destination then runs the guest and faults the needed pages in.  The
 * other connections end here.
 */
static gboolean postcopy_switch(Source *s, uint32_t round, GError **error)
{
    s->pause_us = g_get_monotonic_time();
    if (!ferry_migration_call_main(s->m, stop_vm_on_main, s, error))
        return FALSE;
    ferry_vcpu_throttle_set(s->vm, 0);
    if (!ferry_dirty_log_sync(s->log, NULL, error))
        return FALSE;
    FerryGuestMemory *mem = s->vm->mem;
    g_autoptr(GArray) discard = g_array_new(FALSE, FALSE, sizeof(FerryStreamRange));
    for (unsigned ri = 0; ri < mem->nr_regions; ri++) {
        const FerryMemRegion *r = &mem->regions[ri];
        uint64_t pages = r->size / PAGE;
        s->needed[ri] = g_new0(uint64_t, (pages + 63) / 64);
        for (uint64_t first = 0; first < pages; first += FERRY_MIGRATION_CHUNK_PAGES) {
            uint64_t npages = MIN((uint64_t) FERRY_MIGRATION_CHUNK_PAGES, pages - first);
            uint64_t count = 0;
            if (!ferry_dirty_log_take_chunk(s->log, ri, first, npages, s->needed[ri] + first / 64,
                                            &count, error))
                return FALSE;
            s->needed_count += count;
        }
        bitmap_ranges(s->needed[ri], pages, r->gpa, discard);
    }
    /* from here the guest's memory only changes on the destination */
    ferry_dirty_log_stop(s->log);
    s->log = NULL;
    for (unsigned i = 0; i < s->n; i++) {
        if (!ferry_stream_writer_put_round(s->ch[i].w, round, FERRY_STREAM_ROUND_POSTCOPY, error))
            return FALSE;
        if (i > 0 && !ferry_stream_writer_put_end(s->ch[i].w, error))
            return FALSE;
    }
    FerryStreamWriter *w = s->ch[0].w;
    for (guint i = 0; i < discard->len; i += FERRY_STREAM_MAX_PAGE_REQUESTS)
        if (!ferry_stream_writer_put_discard(w, &g_array_index(discard, FerryStreamRange, i),
                                             MIN(discard->len - i, FERRY_STREAM_MAX_PAGE_REQUESTS),
                                             error))
            return FALSE;
    if (!ferry_vm_put_state_sections(s->vm, w, error) ||
        !ferry_stream_writer_put_checkpoint(w, error))
        return FALSE;
    s->end_sent = TRUE; /* the whole machine state is out: the destination may run it */
    g_mutex_lock(&s->m->lock);
    s->m->info.remaining = s->needed_count * PAGE;
    g_mutex_unlock(&s->m->lock);
    ferry_migration_set_status(s->m, FERRY_MIGRATION_POSTCOPY_ACTIVE, NULL);
    return TRUE;
}

/* Sends the pages of [@gpa, +@npages) that are still needed (all of them if @force). */
static gboolean send_pages(Source *s, uint64_t gpa, uint64_t npages, gboolean force,
                           GError **error)
{
    FerryGuestMemory *mem = s->vm->mem;
    while (npages) {
        unsigned ri = 0;
        const FerryMemRegion *r = NULL;
        for (; ri < mem->nr_regions; ri++)
            if (gpa >= mem->regions[ri].gpa && gpa - mem->regions[ri].gpa < mem->regions[ri].size) {
                r = &mem->regions[ri];
                break;
            }
        if (!r)
            return TRUE; /* the reader checked requests against RAM: cannot happen */
        uint64_t first = (gpa - r->gpa) / PAGE;
        unsigned n = (unsigned) MIN(npages, MIN((uint64_t) FERRY_STREAM_MAX_BATCH_PAGES,
                                                r->size / PAGE - first));
        uint64_t sel[FERRY_STREAM_MAX_BATCH_PAGES / 64] = {0};
        uint64_t count = 0;
        for (unsigned i = 0; i < n; i++) {
            uint64_t p = first + i;
            uint64_t *word = &s->needed[ri][p / 64], bit = 1ull << (p % 64);
            if (!(*word & bit) && !force)
                continue;
            if (*word & bit) {
                *word &= ~bit;
                s->needed_count--;
            }
            sel[i / 64] |= 1ull << (i % 64);
            count++;
        }
        if (count && !ferry_stream_writer_put_ram_batch(s->ch[0].w, r->gpa + first * PAGE, n,
                                                        r->hva + first * PAGE, sel, error))
            return FALSE;
        gpa += (uint64_t) n * PAGE;
        npages -= n;
    }
    return TRUE;
}

/* Background pages per batch in post-copy: small, so a request never waits long behind. */
#define POSTCOPY_PUSH_PAGES 128

/*
 * Post-copy: serve the destination's requests first, push the rest in the background,
 * END when every needed page went out, then wait for the destination to finish.  Returns
 * FALSE with the connection error when it breaks (the caller decides: before READY the
 * migration fails and the VM resumes here; after it, post-copy pauses for recovery).
 */
static gboolean postcopy_push(Source *s, GError **error)
{
    FerryGuestMemory *mem = s->vm->mem;
    unsigned ri = 0;
    uint64_t cursor = 0; /* next page of region ri to look at */
    gboolean end_written = FALSE;
    g_autoptr(GArray) todo = g_array_new(FALSE, FALSE, sizeof(FerryStreamRange));
    for (;;) {
        if (cancelled(s, error))
            return FALSE;
        g_mutex_lock(&s->rp_lock);
        if (end_written && !s->requests->len && !s->rp_done)
            g_cond_wait_until(&s->rp_cond, &s->rp_lock,
                              g_get_monotonic_time() + 50 * G_TIME_SPAN_MILLISECOND);
        gboolean broken = s->rp_failed || s->rp_error;
        gboolean done = s->rp_done;
        g_array_append_vals(todo, s->requests->data, s->requests->len);
        g_array_set_size(s->requests, 0);
        if (broken)
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s", s->rp_error);
        g_mutex_unlock(&s->rp_lock);
        if (broken)
            return FALSE;
        if (done)
            return TRUE; /* the destination has every page: its END arrived */
        if (todo->len && !end_written) {
            for (guint i = 0; i < todo->len; i++) {
                FerryStreamRange *r = &g_array_index(todo, FerryStreamRange, i);
                /* resent even if pushed already: it may still be in flight */
                if (!send_pages(s, r->gpa, r->bytes / PAGE, TRUE, error))
                    return FALSE;
            }
            if (!ferry_stream_writer_flush(s->ch[0].w, error))
                return FALSE;
            update_postcopy_figures(s);
        }
        g_array_set_size(todo, 0);
        if (end_written)
            continue;
        if (!s->needed_count) {
            if (!ferry_stream_writer_put_end(s->ch[0].w, error))
                return FALSE;
            end_written = TRUE;
            update_postcopy_figures(s);
            continue;
        }
        /* one background batch from the cursor on */
        while (ri < mem->nr_regions && cursor >= mem->regions[ri].size / PAGE) {
            ri++;
            cursor = 0;
        }
        if (ri == mem->nr_regions) {
            ri = 0; /* wrap: pages a request skipped over may still be needed */
            continue;
        }
        const FerryMemRegion *r = &mem->regions[ri];
        if (!(s->needed[ri][cursor / 64] >> (cursor % 64))) {
            cursor = (cursor / 64 + 1) * 64; /* nothing needed in the rest of this word */
            continue;
        }
        uint64_t n = MIN((uint64_t) POSTCOPY_PUSH_PAGES, r->size / PAGE - cursor);
        uint64_t before = s->needed_count;
        if (!send_pages(s, r->gpa + cursor * PAGE, n, FALSE, error) ||
            !rate_limit(s, (before - s->needed_count) * PAGE, error))
            return FALSE;
        cursor += n;
        if (cursor % 4096 == 0)
            update_postcopy_figures(s);
    }
}

/* Connects again after a post-copy connection loss (migrate-recover) and restarts the
 * return path; the destination then asks for every page it still lacks. */
static gboolean postcopy_reconnect(Source *s, const char *uri, GError **error)
{
    Channel *c = &s->ch[0];
    /* what is left of the broken connection (nothing after a failed earlier attempt) */
    if (c->conn)
        ferry_migration_channel_abort(c->conn);
    if (s->rp_thread)
        g_thread_join(s->rp_thread);
    s->rp_thread = NULL;
    if (c->w) {
        g_mutex_lock(&s->figures_lock);
        ferry_stream_writer_get_stats(c->w, &c->stats);
        s->closed_stats.bytes += c->stats.bytes;
        s->closed_stats.data_pages += c->stats.data_pages;
        s->closed_stats.zero_pages += c->stats.zero_pages;
        memset(&c->stats, 0, sizeof(c->stats));
        g_mutex_unlock(&s->figures_lock);
        ferry_stream_writer_free(c->w);
        c->w = NULL;
    }
    if (c->conn) {
        ferry_migration_untrack_channel(s->m, c->conn);
        g_clear_object(&c->conn);
    }
    g_mutex_lock(&s->rp_lock);
    s->rp_header = s->rp_done = FALSE;
    g_clear_pointer(&s->rp_error, g_free);
    g_array_set_size(s->requests, 0);
    g_mutex_unlock(&s->rp_lock);

    ferry_migration_uri_clear(&s->job->uri);
    if (!ferry_migration_uri_parse(uri, &s->job->uri, error))
        return FALSE;
    c->conn = dial(s, error);
    if (!c->conn)
        return FALSE;
    c->w = ferry_stream_writer_new(g_io_stream_get_output_stream(c->conn), 0, s->m->cancel);
    g_autoptr(GByteArray) blob = g_byte_array_new();
    FerryStateWriter sw = {blob};
    ferry_state_put_u64(&sw, s->session);
    ferry_state_put_u32(&sw, 0);
    ferry_state_put_u32(&sw, 0);
    if (!ferry_stream_writer_put_header(c->w, ferry_vm_identity_config(s->identity), error) ||
        !ferry_stream_writer_put_section(c->w, FERRY_MIGRATION_SECTION_RECOVER,
                                         FERRY_MIGRATION_SETUP_VERSION, blob->data, blob->len,
                                         error) ||
        !ferry_stream_writer_flush(c->w, error))
        return FALSE;
    s->rp_thread = g_thread_new("migration-rp", return_path_thread, s);
    return wait_destination_header(s, error);
}

/*
 * Post-copy from the switch to the end.  Before the destination's READY a failure is an
 * ordinary one (the VM resumes here); after it a broken connection pauses post-copy until
 * migrate-recover gives a new URI.
 */
static gboolean postcopy(Source *s, uint32_t round, GError **error)
{
    if (!postcopy_switch(s, round, error))
        return FALSE;
    for (;;) {
        g_autoptr(GError) e = NULL;
        if (postcopy_push(s, &e))
            return TRUE;
        g_mutex_lock(&s->rp_lock);
        gboolean committed = s->rp_ready && !s->rp_failed;
        g_mutex_unlock(&s->rp_lock);
        if (!committed || g_atomic_int_get(&s->m->closing)) {
            g_propagate_error(error, g_steal_pointer(&e));
            return FALSE;
        }
        g_autofree char *why = g_strdup_printf(
            "%s; the guest runs on the destination and waits for its missing pages: give both "
            "sides a new connection with migrate-recover",
            e->message);
        g_mutex_lock(&s->m->lock);
        g_clear_pointer(&s->m->recover_uri, g_free);
        g_mutex_unlock(&s->m->lock);
        ferry_migration_set_status(s->m, FERRY_MIGRATION_POSTCOPY_PAUSED, why);
        for (;;) {
            g_mutex_lock(&s->m->lock);
            while (!s->m->recover_uri && !g_atomic_int_get(&s->m->closing))
                g_cond_wait(&s->m->recover_cond, &s->m->lock);
            g_autofree char *uri = g_steal_pointer(&s->m->recover_uri);
            g_mutex_unlock(&s->m->lock);
            if (!uri) {
                g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "ferry-vmm is shutting down");
                return FALSE;
            }
            g_autoptr(GError) re = NULL;
            if (postcopy_reconnect(s, uri, &re))
                break;
            g_autofree char *msg = g_strdup_printf("recovery on %s failed: %s; try "
                                                   "migrate-recover again",
                                                   uri, re->message);
            ferry_migration_set_status(s->m, FERRY_MIGRATION_POSTCOPY_PAUSED, msg);
        }
        ferry_migration_set_status(s->m, FERRY_MIGRATION_POSTCOPY_ACTIVE, NULL);
    }
}

static void close_channels(Source *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        Channel *c = &s->ch[i];
        if (c->w)
            ferry_stream_writer_free(c->w);
        if (c->conn) {
            ferry_migration_untrack_channel(s->m, c->conn);
            ferry_migration_channel_abort(c->conn);
            g_object_unref(c->conn);
        }
        memset(c, 0, sizeof(*c));
    }
}

static void finish_success(Source *s)
{
    /* the destination owns the VM; give it a moment to say it resumed, for the downtime */
    gint64 deadline = g_get_monotonic_time() + RESUMED_WAIT_US;
    g_mutex_lock(&s->rp_lock);
    while (!s->rp_resumed_us && !s->rp_done)
        if (!g_cond_wait_until(&s->rp_cond, &s->rp_lock, deadline))
            break;
    g_mutex_lock(&s->m->lock);
    s->m->info.switchover_ms = (s->rp_ready_us - s->pause_us) / 1000;
    if (s->rp_resumed_us)
        s->m->info.downtime_ms = (s->rp_resumed_us - s->pause_us) / 1000;
    s->m->info.remaining = 0;
    g_mutex_unlock(&s->m->lock);
    g_mutex_unlock(&s->rp_lock);
    ferry_log("migration completed: %" G_GUINT64_FORMAT " bytes in %u rounds, paused %" G_GINT64_FORMAT
              " ms",
              s->m->info.transferred, s->m->info.iteration,
              s->m->info.downtime_ms >= 0 ? s->m->info.downtime_ms : s->m->info.switchover_ms);
    ferry_migration_set_status(s->m, FERRY_MIGRATION_COMPLETED, NULL);
}

/*
 * The reason to report: the destination's own account when it has one (a broken pipe here is
 * only the consequence of its failure), the abort reason, or @error.
 */
static char *failure_reason(Source *s, GError *error)
{
    g_mutex_lock(&s->m->lock);
    char *reason = g_strdup(s->m->abort_reason);
    g_mutex_unlock(&s->m->lock);
    if (reason)
        return reason;
    if (!g_cancellable_is_cancelled(s->m->cancel) && s->rp_thread) {
        /* give the destination's FAILED record a moment to arrive */
        gint64 deadline = g_get_monotonic_time() + G_TIME_SPAN_SECOND;
        g_mutex_lock(&s->rp_lock);
        while (!s->rp_failed && !s->rp_done)
            if (!g_cond_wait_until(&s->rp_cond, &s->rp_lock, deadline))
                break;
        if (s->rp_failed)
            reason = g_strdup(s->rp_error);
        g_mutex_unlock(&s->rp_lock);
    }
    return reason ? reason : g_strdup(error->message);
}

static void finish_failure(Source *s, GError *error)
{
    g_mutex_lock(&s->m->lock);
    gboolean aborted = s->m->abort_reason != NULL;
    g_mutex_unlock(&s->m->lock);
    gboolean was_cancelled = g_cancellable_is_cancelled(s->m->cancel) && !aborted &&
                             !g_atomic_int_get(&s->m->closing);
    g_autofree char *reason = failure_reason(s, error);
    g_mutex_lock(&s->rp_lock);
    gboolean in_doubt = s->end_sent && !s->rp_failed;
    g_mutex_unlock(&s->rp_lock);
    /* unblock the return-path thread and the destination */
    for (unsigned i = 0; i < s->n; i++)
        if (s->ch[i].conn)
            ferry_migration_channel_abort(s->ch[i].conn);
    g_autofree char *message = NULL;
    if (in_doubt) {
        message = g_strdup_printf(
            "%s; the whole state had been sent, so the destination may be running the guest: "
            "it stays paused here. Check the destination, then resume or quit this VM",
            reason);
    } else {
        message = g_strdup_printf("%s; the VM %s here", reason,
                                  s->was_paused ? "stays paused" : "keeps running");
        if (s->vm_stopped) {
            g_autoptr(GError) e = NULL;
            ferry_migration_call_main(s->m, restart_vm_on_main, s, &e);
        }
    }
    ferry_migration_set_status(s->m, was_cancelled ? FERRY_MIGRATION_CANCELLED
                                                   : FERRY_MIGRATION_FAILED,
                               message);
}

gpointer ferry_migration_source_thread(gpointer data)
{
    FerrySourceJob *job = data;
    Source *s = g_new0(Source, 1);
    s->m = job->m;
    s->vm = job->m->vm;
    s->job = job;
    g_mutex_init(&s->rl_lock);
    g_mutex_init(&s->figures_lock);
    g_mutex_init(&s->rp_lock);
    g_cond_init(&s->rp_cond);
    s->requests = g_array_new(FALSE, FALSE, sizeof(FerryStreamRange));
    ferry_migration_get_params(s->m, &s->params);
    s->identity = ferry_vm_identity_new(s->vm);

    g_autoptr(GError) error = NULL;
    uint32_t round = 0;
    gboolean to_postcopy = FALSE;
    gboolean ok = setup(s, &error);
    if (ok) {
        g_mutex_lock(&s->m->lock);
        s->m->info.setup_ms = (g_get_monotonic_time() - s->m->info.start_us) / 1000;
        g_mutex_unlock(&s->m->lock);
        ferry_migration_set_status(s->m, FERRY_MIGRATION_ACTIVE, NULL);
        if (job->mode == FERRY_MIGRATION_MODE_LIVE) {
            s->log = ferry_dirty_log_start(s->vm->mem, s->vm->kvm->vm_fd, &error);
            ok = s->log && precopy(s, &round, &to_postcopy, &error);
        }
    }
    if (ok && to_postcopy)
        ok = postcopy(s, round, &error);
    else
        ok = ok && switch_over(s, round, &error);
    ferry_vcpu_throttle_set(s->vm, 0);
    if (ok)
        finish_success(s);
    else
        finish_failure(s, error);

    ferry_dirty_log_stop(s->log);
    for (unsigned i = 0; i < s->n; i++)
        if (s->ch[i].conn)
            ferry_migration_channel_abort(s->ch[i].conn);
    if (s->rp_thread)
        g_thread_join(s->rp_thread);
    close_channels(s);
    ferry_vm_identity_free(s->identity);
    ferry_migration_params_clear(&s->params);
    g_free(s->rp_error);
    g_array_unref(s->requests);
    for (unsigned i = 0; i < FERRY_MAX_RAM_REGIONS; i++)
        g_free(s->needed[i]);
    g_mutex_clear(&s->rl_lock);
    g_mutex_clear(&s->figures_lock);
    g_mutex_clear(&s->rp_lock);
    g_cond_clear(&s->rp_cond);
    g_free(s);
    ferry_migration_uri_clear(&job->uri);
    g_free(job);
    return NULL;
}
