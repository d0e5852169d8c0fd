/*
 * The migration engine's shared part: parameters, status, figures, notifications, and the
 * start/cancel entry points of the control API (migration.h).
 */
#include "migration/migration-internal.h"

#include "control.h"
#include "migration/postcopy.h"
#include "util/log.h"
#include "vcpu_throttle.h"

#include <string.h>
#include <unistd.h>

static const char *const status_names[] = {
    [FERRY_MIGRATION_NONE] = "none",
    [FERRY_MIGRATION_SETUP] = "setup",
    [FERRY_MIGRATION_ACTIVE] = "active",
    [FERRY_MIGRATION_COMPLETING] = "completing",
    [FERRY_MIGRATION_POSTCOPY_ACTIVE] = "postcopy-active",
    [FERRY_MIGRATION_POSTCOPY_PAUSED] = "postcopy-paused",
    [FERRY_MIGRATION_COMPLETED] = "completed",
    [FERRY_MIGRATION_FAILED] = "failed",
    [FERRY_MIGRATION_CANCELLED] = "cancelled",
};

const char *ferry_migration_status_name(FerryMigrationStatus s)
{
    return s < G_N_ELEMENTS(status_names) ? status_names[s] : "unknown";
}

static gboolean status_running(FerryMigrationStatus s)
{
    return s != FERRY_MIGRATION_NONE && s != FERRY_MIGRATION_COMPLETED &&
           s != FERRY_MIGRATION_FAILED && s != FERRY_MIGRATION_CANCELLED;
}

FerryMigration *ferry_migration_new(FerryVm *vm, const char *tls_dir)
{
    FerryMigration *m = g_new0(FerryMigration, 1);
    m->vm = vm;
    m->tls_dir = g_strdup(tls_dir);
    g_mutex_init(&m->lock);
    g_cond_init(&m->recover_cond);
    m->params = (FerryMigrationParams){
        .downtime_limit = 300,
        .auto_converge_initial = 20,
        .auto_converge_increment = 10,
        .timeout_action = FERRY_MIGRATION_TIMEOUT_CANCEL,
        .connections = 1,
    };
    m->info.downtime_ms = m->info.switchover_ms = m->info.setup_ms = -1;
    m->channels = g_ptr_array_new();
    return m;
}

void ferry_migration_free(FerryMigration *m)
{
    if (!m)
        return;
    if (m->thread) {
        g_atomic_int_set(&m->closing, 1);
        g_cancellable_cancel(m->cancel);
        g_mutex_lock(&m->lock);
        g_cond_broadcast(&m->recover_cond);
        g_mutex_unlock(&m->lock);
        g_mutex_lock(&m->lock);
        for (guint i = 0; i < m->channels->len; i++)
            ferry_migration_channel_abort(g_ptr_array_index(m->channels, i));
        g_mutex_unlock(&m->lock);
        g_thread_join(m->thread);
    }
    /*
     * Userfaultfd goes before the VM's KVM descriptors close: KVM's async page-fault
     * workers waiting on a missing page would otherwise block the VM's destruction forever.
     */
    ferry_postcopy_free(m->kept_postcopy);
    g_clear_object(&m->cancel);
    g_ptr_array_unref(m->channels);
    ferry_migration_params_clear(&m->params);
    g_free(m->error);
    g_free(m->abort_reason);
    g_free(m->recover_uri);
    if (m->recover_listener)
        ferry_migration_listener_free(m->recover_listener);
    g_cond_clear(&m->recover_cond);
    g_free(m->tls_dir);
    g_mutex_clear(&m->lock);
    g_free(m);
}

/* ---- parameters ---- */

void ferry_migration_params_clear(FerryMigrationParams *p)
{
    g_clear_pointer(&p->tls_hostname, g_free);
}

void ferry_migration_get_params(FerryMigration *m, FerryMigrationParams *out)
{
    g_mutex_lock(&m->lock);
    *out = m->params;
    out->tls_hostname = g_strdup(m->params.tls_hostname);
    g_mutex_unlock(&m->lock);
}

static gboolean bad_param(GError **error, const char *name, const char *why)
{
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "migration parameter '%s' %s",
                name, why);
    return FALSE;
}

/* An integer member in [@min, @max]. */
static gboolean get_uint(JsonObject *o, const char *name, uint64_t min, uint64_t max,
                         uint64_t *out, GError **error)
{
    JsonNode *n = json_object_get_member(o, name);
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
        return bad_param(error, name, "must be an integer");
    gint64 v = json_node_get_int(n);
    if (v < 0 || (uint64_t) v < min || (uint64_t) v > max) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "migration parameter '%s' is %" G_GINT64_FORMAT "; it must be %" G_GUINT64_FORMAT
                    "..%" G_GUINT64_FORMAT,
                    name, v, min, max);
        return FALSE;
    }
    *out = (uint64_t) v;
    return TRUE;
}

static gboolean get_bool(JsonObject *o, const char *name, gboolean *out, GError **error)
{
    JsonNode *n = json_object_get_member(o, name);
    if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_BOOLEAN)
        return bad_param(error, name, "must be true or false");
    *out = json_node_get_boolean(n);
    return TRUE;
}

gboolean ferry_migration_set_params(FerryMigration *m, JsonObject *params, GError **error)
{
    if (!params)
        return TRUE;
    g_mutex_lock(&m->lock);
    FerryMigrationParams p = m->params;
    g_mutex_unlock(&m->lock);
    char *hostname = NULL;
    gboolean hostname_set = FALSE;
    unsigned max_conns = MIN((unsigned) g_get_num_processors(), FERRY_MIGRATION_MAX_CONNECTIONS);

    g_autoptr(GList) members = json_object_get_members(params);
    for (GList *l = members; l; l = l->next) {
        const char *name = l->data;
        uint64_t v;
        gboolean ok = TRUE;
        if (g_str_equal(name, "uri") || g_str_equal(name, "mode")) {
            continue; /* migrate-send's own members */
        } else if (g_str_equal(name, "max-bandwidth")) {
            ok = get_uint(params, name, 0, G_MAXINT64, &v, error);
            p.max_bandwidth = v;
        } else if (g_str_equal(name, "downtime-limit")) {
            ok = get_uint(params, name, 1, 3600000, &v, error);
            p.downtime_limit = (unsigned) v;
        } else if (g_str_equal(name, "auto-converge")) {
            ok = get_bool(params, name, &p.auto_converge, error);
        } else if (g_str_equal(name, "auto-converge-initial")) {
            ok = get_uint(params, name, 1, 99, &v, error);
            p.auto_converge_initial = (unsigned) v;
        } else if (g_str_equal(name, "auto-converge-increment")) {
            ok = get_uint(params, name, 1, 99, &v, error);
            p.auto_converge_increment = (unsigned) v;
        } else if (g_str_equal(name, "postcopy")) {
            ok = get_bool(params, name, &p.postcopy, error);
        } else if (g_str_equal(name, "timeout")) {
            ok = get_uint(params, name, 0, 7 * 24 * 3600, &v, error);
            p.timeout = (unsigned) v;
        } else if (g_str_equal(name, "timeout-action")) {
            const char *a = json_object_get_string_member_with_default(params, name, "");
            if (g_str_equal(a, "cancel"))
                p.timeout_action = FERRY_MIGRATION_TIMEOUT_CANCEL;
            else if (g_str_equal(a, "postcopy"))
                p.timeout_action = FERRY_MIGRATION_TIMEOUT_POSTCOPY;
            else
                ok = bad_param(error, name, "must be \"cancel\" or \"postcopy\"");
        } else if (g_str_equal(name, "connections")) {
            ok = get_uint(params, name, 1, max_conns, &v, error);
            p.connections = (unsigned) v;
        } else if (g_str_equal(name, "tls-hostname")) {
            JsonNode *n = json_object_get_member(params, name);
            if (JSON_NODE_HOLDS_NULL(n)) {
                hostname_set = TRUE;
            } else if (JSON_NODE_HOLDS_VALUE(n) &&
                       json_node_get_value_type(n) == G_TYPE_STRING &&
                       *json_node_get_string(n)) {
                hostname = (char *) json_node_get_string(n);
                hostname_set = TRUE;
            } else {
                ok = bad_param(error, name, "must be a host name or null");
            }
        } else {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "unknown migration parameter '%s' (see docs/control-api.md)", name);
            ok = FALSE;
        }
        if (!ok)
            return FALSE;
    }
    if (p.timeout_action == FERRY_MIGRATION_TIMEOUT_POSTCOPY && !p.postcopy)
        return bad_param(error, "timeout-action",
                         "is \"postcopy\" but post-copy is not allowed: set \"postcopy\": true");
    g_mutex_lock(&m->lock);
    if (hostname_set) {
        g_free(m->params.tls_hostname);
        p.tls_hostname = g_strdup(hostname);
    }
    m->params = p;
    g_mutex_unlock(&m->lock);
    return TRUE;
}

static JsonObject *params_json(const FerryMigrationParams *p)
{
    JsonObject *o = json_object_new();
    json_object_set_int_member(o, "max-bandwidth", (gint64) p->max_bandwidth);
    json_object_set_int_member(o, "downtime-limit", p->downtime_limit);
    json_object_set_boolean_member(o, "auto-converge", p->auto_converge);
    json_object_set_int_member(o, "auto-converge-initial", p->auto_converge_initial);
    json_object_set_int_member(o, "auto-converge-increment", p->auto_converge_increment);
    json_object_set_boolean_member(o, "postcopy", p->postcopy);
    json_object_set_int_member(o, "timeout", p->timeout);
    json_object_set_string_member(o, "timeout-action",
                                  p->timeout_action == FERRY_MIGRATION_TIMEOUT_POSTCOPY
                                      ? "postcopy"
                                      : "cancel");
    json_object_set_int_member(o, "connections", p->connections);
    if (p->tls_hostname)
        json_object_set_string_member(o, "tls-hostname", p->tls_hostname);
    else
        json_object_set_null_member(o, "tls-hostname");
    return o;
}

/* ---- status and figures ---- */

static JsonObject *query_locked(FerryMigration *m)
{
    const FerryMigrationInfo *i = &m->info;
    JsonObject *o = json_object_new();
    json_object_set_string_member(o, "status", ferry_migration_status_name(m->status));
    if (m->status != FERRY_MIGRATION_NONE) {
        json_object_set_string_member(o, "role", m->is_source ? "source" : "destination");
        json_object_set_string_member(o, "mode",
                                      m->mode == FERRY_MIGRATION_MODE_WARM ? "warm" : "live");
        gint64 end = i->end_us ? i->end_us : g_get_monotonic_time();
        json_object_set_int_member(o, "elapsed-ms", i->start_us ? (end - i->start_us) / 1000 : 0);
        if (i->setup_ms >= 0)
            json_object_set_int_member(o, "setup-ms", i->setup_ms);
        json_object_set_int_member(o, "iteration", i->iteration);
        JsonObject *ram = json_object_new();
        json_object_set_int_member(ram, "total", (gint64) m->vm->mem->total);
        json_object_set_int_member(ram, "transferred", (gint64) i->transferred);
        json_object_set_int_member(ram, "remaining", (gint64) i->remaining);
        json_object_set_int_member(ram, "data-pages", (gint64) i->data_pages);
        json_object_set_int_member(ram, "zero-pages", (gint64) i->zero_pages);
        json_object_set_int_member(ram, "dirty-rate", (gint64) i->dirty_rate);
        json_object_set_int_member(ram, "bandwidth", (gint64) i->bandwidth);
        json_object_set_object_member(o, "ram", ram);
        json_object_set_int_member(o, "expected-downtime-ms", (gint64) i->expected_downtime_ms);
        json_object_set_int_member(o, "throttle-percent", i->throttle);
        json_object_set_int_member(o, "postcopy-requests", (gint64) i->postcopy_requests);
        if (i->downtime_ms >= 0)
            json_object_set_int_member(o, "downtime-ms", i->downtime_ms);
        if (i->switchover_ms >= 0)
            json_object_set_int_member(o, "switchover-ms", i->switchover_ms);
        if (m->error)
            json_object_set_string_member(o, "error", m->error);
    }
    json_object_set_object_member(o, "parameters", params_json(&m->params));
    return o;
}

JsonObject *ferry_migration_query(FerryMigration *m)
{
    g_mutex_lock(&m->lock);
    JsonObject *o = query_locked(m);
    g_mutex_unlock(&m->lock);
    return o;
}

FerryMigrationStatus ferry_migration_status(FerryMigration *m)
{
    g_mutex_lock(&m->lock);
    FerryMigrationStatus s = m->status;
    g_mutex_unlock(&m->lock);
    return s;
}

gboolean ferry_migration_busy(FerryMigration *m)
{
    return status_running(ferry_migration_status(m));
}

typedef struct {
    FerryVm *vm;
    JsonObject *params;
} Notification;

static gboolean notify_on_main(gpointer data)
{
    Notification *n = data;
    if (n->vm->control)
        ferry_control_notify(n->vm->control, "migration",
                             json_node_init_object(json_node_alloc(), n->params));
    json_object_unref(n->params);
    g_free(n);
    return G_SOURCE_REMOVE;
}

void ferry_migration_notify(FerryMigration *m)
{
    Notification *n = g_new0(Notification, 1);
    n->vm = m->vm;
    n->params = ferry_migration_query(m);
    g_main_context_invoke(NULL, notify_on_main, n);
}

void ferry_migration_set_status(FerryMigration *m, FerryMigrationStatus status,
                                const char *error)
{
    g_mutex_lock(&m->lock);
    m->status = status;
    if (error) {
        g_free(m->error);
        m->error = g_strdup(error);
    } else if (status == FERRY_MIGRATION_COMPLETED || status == FERRY_MIGRATION_ACTIVE ||
               status == FERRY_MIGRATION_POSTCOPY_ACTIVE) {
        g_clear_pointer(&m->error, g_free); /* a recovered post-copy is no longer failing */
    }
    if (!status_running(status) && !m->info.end_us)
        m->info.end_us = g_get_monotonic_time();
    g_mutex_unlock(&m->lock);
    if (error)
        ferry_log("migration %s: %s", ferry_migration_status_name(status), error);
    ferry_migration_notify(m);
}

void ferry_migration_track_channel(FerryMigration *m, GIOStream *s)
{
    g_mutex_lock(&m->lock);
    g_ptr_array_add(m->channels, s);
    gboolean cancelled = g_cancellable_is_cancelled(m->cancel);
    g_mutex_unlock(&m->lock);
    if (cancelled)
        ferry_migration_channel_abort(s);
}

void ferry_migration_untrack_channel(FerryMigration *m, GIOStream *s)
{
    g_mutex_lock(&m->lock);
    g_ptr_array_remove_fast(m->channels, s);
    g_mutex_unlock(&m->lock);
}

/* ---- running code on the main thread ---- */

typedef struct {
    gint refs;
    GMutex lock;
    GCond cond;
    gboolean done, abandoned, ok;
    gboolean (*fn)(gpointer, GError **);
    gpointer data;
    GError *error;
} MainCall;

static void main_call_unref(MainCall *c)
{
    if (!g_atomic_int_dec_and_test(&c->refs))
        return;
    g_clear_error(&c->error);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->cond);
    g_free(c);
}

static gboolean main_call_run(gpointer data)
{
    MainCall *c = data;
    g_mutex_lock(&c->lock);
    gboolean abandoned = c->abandoned;
    g_mutex_unlock(&c->lock);
    gboolean ok = FALSE;
    GError *error = NULL;
    if (!abandoned)
        ok = c->fn(c->data, &error);
    g_mutex_lock(&c->lock);
    c->ok = ok;
    c->error = error;
    c->done = TRUE;
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
    main_call_unref(c);
    return G_SOURCE_REMOVE;
}

gboolean ferry_migration_call_main(FerryMigration *m, gboolean (*fn)(gpointer, GError **),
                                   gpointer data, GError **error)
{
    MainCall *c = g_new0(MainCall, 1);
    c->refs = 2;
    g_mutex_init(&c->lock);
    g_cond_init(&c->cond);
    c->fn = fn;
    c->data = data;
    g_main_context_invoke(NULL, main_call_run, c);
    g_mutex_lock(&c->lock);
    while (!c->done) {
        if (g_atomic_int_get(&m->closing)) {
            /* the main thread is waiting for this thread (ferry_migration_free) */
            c->abandoned = TRUE;
            break;
        }
        g_cond_wait_until(&c->cond, &c->lock, g_get_monotonic_time() + 20 * G_TIME_SPAN_MILLISECOND);
    }
    gboolean ok = c->done && c->ok;
    if (c->done && !c->ok && c->error)
        g_propagate_error(error, g_steal_pointer(&c->error));
    else if (!c->done)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "ferry-vmm is shutting down");
    g_mutex_unlock(&c->lock);
    main_call_unref(c);
    return ok;
}

/* ---- starting and stopping ---- */

/* Resets the figures and takes the migration slot; FALSE if one runs. */
static gboolean begin(FerryMigration *m, gboolean is_source, FerryMigrationMode mode,
                      GError **error)
{
    g_mutex_lock(&m->lock);
    if (status_running(m->status)) {
        g_mutex_unlock(&m->lock);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY,
                    "a migration is already %s; wait for it or cancel it (migrate-cancel)",
                    ferry_migration_status_name(m->status));
        return FALSE;
    }
    m->is_source = is_source;
    m->mode = mode;
    memset(&m->info, 0, sizeof(m->info));
    m->info.downtime_ms = m->info.switchover_ms = m->info.setup_ms = -1;
    m->info.start_us = g_get_monotonic_time();
    g_clear_pointer(&m->error, g_free);
    g_clear_pointer(&m->abort_reason, g_free);
    m->postcopy_requested = FALSE;
    m->status = FERRY_MIGRATION_SETUP;
    g_clear_object(&m->cancel);
    m->cancel = g_cancellable_new();
    GThread *old = g_steal_pointer(&m->thread);
    g_mutex_unlock(&m->lock);
    if (old)
        g_thread_join(old); /* it has ended: its status was final */
    return TRUE;
}

gboolean ferry_migration_send(FerryMigration *m, const char *uri, FerryMigrationMode mode,
                              GError **error)
{
    FerrySourceJob *job = g_new0(FerrySourceJob, 1);
    if (!ferry_migration_uri_parse(uri, &job->uri, error)) {
        g_free(job);
        return FALSE;
    }
    if (g_str_equal(ferry_vm_status(m->vm), "shutdown") || m->vm->incoming) {
        ferry_migration_uri_clear(&job->uri);
        g_free(job);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "the VM is not running here (%s); there is nothing to migrate",
                    m->vm->incoming ? "it is waiting for an incoming migration" : "shut down");
        return FALSE;
    }
    if (job->uri.transport == FERRY_MIGRATION_TRANSPORT_FD && m->params.connections > 1) {
        ferry_migration_uri_clear(&job->uri);
        g_free(job);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "an fd: URI is a single connection; set \"connections\" to 1");
        return FALSE;
    }
    if (!begin(m, TRUE, mode, error)) {
        ferry_migration_uri_clear(&job->uri);
        g_free(job);
        return FALSE;
    }
    job->m = m;
    job->mode = mode;
    ferry_migration_notify(m);
    m->thread = g_thread_new("migration", ferry_migration_source_thread, job);
    return TRUE;
}

/*
 * Listens on @u (destination side); the URI actually bound (port 0 replaced) goes to
 * @bound (nullable).
 */
static FerryMigrationListener *listen_on(FerryMigration *m, FerryMigrationUri *u, char **bound,
                                         GError **error)
{
    FerryTlsOptions tls = {.dir = m->tls_dir};
    FerryMigrationListener *l = ferry_migration_listen(u, &tls, error);
    if (!l)
        return NULL;
    if ((u->transport == FERRY_MIGRATION_TRANSPORT_TCP ||
         u->transport == FERRY_MIGRATION_TRANSPORT_TLS) &&
        u->port == 0)
        u->port = ferry_migration_listener_port(l);
    if (bound)
        *bound = ferry_migration_uri_to_string(u);
    return l;
}

gboolean ferry_migration_receive(FerryMigration *m, const char *uri, char **bound,
                                 GError **error)
{
    if (!m->vm->incoming) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "this VM was not started with --incoming; it cannot receive a migration");
        return FALSE;
    }
    g_mutex_lock(&m->lock);
    FerryMigrationStatus st = m->status;
    g_mutex_unlock(&m->lock);
    if (st != FERRY_MIGRATION_NONE) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY,
                    "this VM already received or is receiving a migration (status %s)",
                    ferry_migration_status_name(st));
        return FALSE;
    }
    FerryMigrationUri u = {0};
    if (!ferry_migration_uri_parse(uri, &u, error))
        return FALSE;
    FerryMigrationListener *l = listen_on(m, &u, bound, error);
    ferry_migration_uri_clear(&u);
    if (!l)
        return FALSE;
    if (!begin(m, FALSE, FERRY_MIGRATION_MODE_LIVE, error)) {
        ferry_migration_listener_free(l);
        return FALSE;
    }
    FerryIncomingJob *job = g_new0(FerryIncomingJob, 1);
    job->m = m;
    job->listener = l;
    m->thread = g_thread_new("migration-in", ferry_migration_incoming_thread, job);
    return TRUE;
}

gboolean ferry_migration_cancel(FerryMigration *m, GError **error)
{
    g_mutex_lock(&m->lock);
    FerryMigrationStatus st = m->status;
    if (!status_running(st)) {
        g_mutex_unlock(&m->lock);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "no migration is running (status %s)",
                    ferry_migration_status_name(st));
        return FALSE;
    }
    if (st == FERRY_MIGRATION_POSTCOPY_ACTIVE || st == FERRY_MIGRATION_POSTCOPY_PAUSED) {
        g_mutex_unlock(&m->lock);
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "the migration is in post-copy: the guest already runs on the destination "
                    "and cannot come back; recover the connection (migrate-recover) instead");
        return FALSE;
    }
    g_cancellable_cancel(m->cancel);
    for (guint i = 0; i < m->channels->len; i++)
        ferry_migration_channel_abort(g_ptr_array_index(m->channels, i));
    g_mutex_unlock(&m->lock);
    return TRUE;
}

gboolean ferry_migration_recover(FerryMigration *m, const char *uri, char **bound,
                                 GError **error)
{
    if (ferry_migration_status(m) != FERRY_MIGRATION_POSTCOPY_PAUSED) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "migrate-recover resumes a post-copy migration whose connection broke "
                    "(status postcopy-paused); the status is %s",
                    ferry_migration_status_name(ferry_migration_status(m)));
        return FALSE;
    }
    FerryMigrationUri u = {0};
    if (!ferry_migration_uri_parse(uri, &u, error))
        return FALSE;
    FerryMigrationListener *l = NULL;
    if (!m->is_source && !(l = listen_on(m, &u, bound, error))) {
        ferry_migration_uri_clear(&u);
        return FALSE;
    }
    if (m->is_source && bound)
        *bound = ferry_migration_uri_to_string(&u);
    ferry_migration_uri_clear(&u);
    g_mutex_lock(&m->lock);
    if (m->is_source) {
        g_free(m->recover_uri);
        m->recover_uri = g_strdup(uri);
    } else {
        if (m->recover_listener)
            ferry_migration_listener_free(m->recover_listener);
        m->recover_listener = l;
    }
    g_cond_broadcast(&m->recover_cond);
    g_mutex_unlock(&m->lock);
    return TRUE;
}

void ferry_migration_abort(FerryMigration *m, const char *reason)
{
    g_mutex_lock(&m->lock);
    if (status_running(m->status) && m->status != FERRY_MIGRATION_POSTCOPY_ACTIVE &&
        m->status != FERRY_MIGRATION_POSTCOPY_PAUSED) {
        g_free(m->abort_reason);
        m->abort_reason = g_strdup(reason);
        g_cancellable_cancel(m->cancel);
        for (guint i = 0; i < m->channels->len; i++)
            ferry_migration_channel_abort(g_ptr_array_index(m->channels, i));
    }
    g_mutex_unlock(&m->lock);
}

gboolean ferry_migration_start_postcopy(FerryMigration *m, GError **error)
{
    g_mutex_lock(&m->lock);
    gboolean ok = m->is_source && (m->status == FERRY_MIGRATION_ACTIVE ||
                                   m->status == FERRY_MIGRATION_SETUP);
    gboolean allowed = m->params.postcopy;
    if (ok && allowed)
        m->postcopy_requested = TRUE;
    g_mutex_unlock(&m->lock);
    if (!ok) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "no live migration is in pre-copy here; post-copy starts from one");
        return FALSE;
    }
    if (!allowed) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                    "post-copy is not allowed: set the migration parameter \"postcopy\" to "
                    "true before migrate-send");
        return FALSE;
    }
    return TRUE;
}
