#include "migrate_cli.h"

#include "vm.h"
#include "vm_config.h"

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define POLL_INTERVAL_MS 250  /* query-migrate period */
#define ANSWER_TIMEOUT_S 30   /* a request unanswered this long is an error */
#define MAX_LINE         (4 * 1024 * 1024) /* bytes of one line from the server */
#define BAR_WIDTH        20 /* characters, as many as in the strings that draw it */
#define MIB              (1024.0 * 1024.0)

/* ---- reading the status objects (docs/control-api.md, "query-migrate") ------------------ */

static JsonNode *member(JsonObject *o, const char *name, GType type)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;
    return n && json_node_get_value_type(n) == type ? n : NULL;
}

static JsonObject *member_object(JsonObject *o, const char *name)
{
    JsonNode *n = member(o, name, JSON_TYPE_OBJECT);
    return n ? json_node_get_object(n) : NULL;
}

/* An integer member (all figures are integers); 0 when missing. */
static gint64 member_int(JsonObject *o, const char *name)
{
    JsonNode *n = member(o, name, G_TYPE_INT64);
    return n ? json_node_get_int(n) : 0;
}

static const char *member_string(JsonObject *o, const char *name)
{
    JsonNode *n = member(o, name, G_TYPE_STRING);
    return n ? json_node_get_string(n) : NULL;
}

static const char *status_of(JsonObject *status)
{
    return member_string(status, "status") ?: "unknown";
}

static gboolean is_final(JsonObject *status)
{
    const char *s = status_of(status);
    return g_str_equal(s, "completed") || g_str_equal(s, "failed") ||
           g_str_equal(s, "cancelled");
}

/* "850 pages/s", "12.5 kpages/s", "1.2 Mpages/s" */
static char *pages_rate(gint64 pages)
{
    if (pages < 1000)
        return g_strdup_printf("%" G_GINT64_FORMAT " pages/s", pages);
    if (pages < 1000000)
        return g_strdup_printf("%.1f kpages/s", pages / 1e3);
    return g_strdup_printf("%.1f Mpages/s", pages / 1e6);
}

char *ferry_migrate_progress_line(JsonObject *status, gboolean bar)
{
    JsonObject *ram = member_object(status, "ram");
    gint64 total = member_int(ram, "total"), sent = member_int(ram, "transferred");
    gint64 remaining = member_int(ram, "remaining"), round = member_int(status, "iteration");
    const char *state = status_of(status);

    double done = 0;
    if (total > 0)
        done = round == 0 ? (double) sent / total : (double) (total - remaining) / total;
    done = CLAMP(done, 0.0, 1.0);

    GString *line = g_string_new(NULL);
    int filled = (int) (done * BAR_WIDTH);
    if (bar)
        g_string_append_printf(line, "[%.*s%.*s]  ", filled, "####################",
                               BAR_WIDTH - filled, "....................");
    else
        g_string_append_printf(line, "%s  ", state);
    g_autofree char *dirty = pages_rate(member_int(ram, "dirty-rate"));
    g_string_append_printf(line,
                           "%3d%%  %.0f/%.0f MiB  %.0f MiB/s  round %" G_GINT64_FORMAT
                           "  dirty %s  throttle %" G_GINT64_FORMAT "%%",
                           (int) (done * 100), sent / MIB, total / MIB,
                           member_int(ram, "bandwidth") / MIB, round, dirty,
                           member_int(status, "throttle-percent"));
    if (g_str_has_prefix(state, "postcopy"))
        g_string_append_printf(line, "  postcopy requests %" G_GINT64_FORMAT,
                               member_int(status, "postcopy-requests"));
    if (bar && !g_str_equal(state, "active"))
        g_string_append_printf(line, "  (%s)", state);
    return g_string_free(line, FALSE);
}

/* ---- the control socket client -------------------------------------------------------- */

/*
 * Requests are small and written blocking; answers and notifications are read by a socket
 * source on the command's own main context.  call() waits for one answer, found by its id;
 * query-migrate goes out without waiting, one at a time, and its answer updates the status as
 * a `migration` notification does, whichever arrives last being the newest.
 */

typedef struct {
    GMainContext *ctx;
    GSocketConnection *conn;
    GString *in;           /* received bytes not yet forming a whole line */
    gboolean closed;       /* end of file or read error: nothing more will come */
    char *read_error;      /* why, for a read error (NULL at end of file) */
    gint64 next_id;        /* last request id used */
    gint64 want_id;        /* the answer call() waits for */
    JsonObject *answer;    /* that answer (the whole response object), owned */
    gint64 poll_id;        /* the query-migrate in flight, 0 if none */
    gint64 poll_sent;      /* when it was sent, g_get_monotonic_time() */
    char *poll_error;      /* error answer to a query-migrate */
    JsonObject *status;    /* latest migration status seen, owned; NULL before any */
    unsigned signals;      /* SIGINT/SIGTERM received */
    unsigned signals_seen; /* ... and acted on */
} Client;

static void set_status(Client *cl, JsonObject *status)
{
    if (!status || (cl->status && is_final(cl->status)))
        return; /* the final status stays */
    g_clear_pointer(&cl->status, json_object_unref);
    cl->status = json_object_ref(status);
}

/* One line from the server: a notification, or the answer to one of our requests. */
static void handle_line(Client *cl, const char *line, gsize len)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    if (!json_parser_load_from_data(parser, line, (gssize) len, NULL) ||
        !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(parser)))
        return; /* not for us to judge; ferry-vmm sends only objects */
    JsonObject *msg = json_node_get_object(json_parser_get_root(parser));
    const char *method = member_string(msg, "method");
    if (method) {
        if (g_str_equal(method, "migration"))
            set_status(cl, member_object(msg, "params"));
        return; /* state-changed and other notifications are not needed here */
    }
    gint64 id = member(msg, "id", G_TYPE_INT64) ? member_int(msg, "id") : 0; /* ours: >= 1 */
    if (id && id == cl->poll_id) {
        cl->poll_id = 0;
        JsonObject *err = member_object(msg, "error");
        if (err && !cl->poll_error)
            cl->poll_error = g_strdup_printf("query-migrate failed: %s",
                                             member_string(err, "message") ?: "no message");
        set_status(cl, member_object(msg, "result"));
    } else if (id && id == cl->want_id && !cl->answer) {
        cl->answer = json_object_ref(msg);
    }
}

static gboolean on_readable(GSocket *socket, GIOCondition cond, gpointer data)
{
    Client *cl = data;
    char buf[16384];
    for (;;) {
        g_autoptr(GError) error = NULL;
        gssize n = g_socket_receive_with_blocking(socket, buf, sizeof buf, FALSE, NULL, &error);
        if (n < 0 && g_error_matches(error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            return G_SOURCE_CONTINUE;
        if (n <= 0) {
            cl->closed = TRUE;
            cl->read_error = n < 0 ? g_strdup(error->message) : NULL;
            return G_SOURCE_REMOVE;
        }
        g_string_append_len(cl->in, buf, n);
        char *nl;
        while ((nl = memchr(cl->in->str, '\n', cl->in->len))) {
            gsize len = (gsize) (nl - cl->in->str);
            handle_line(cl, cl->in->str, len);
            g_string_erase(cl->in, 0, (gssize) len + 1);
        }
        if (cl->in->len > MAX_LINE) { /* not ferry-vmm's doing: give up */
            cl->closed = TRUE, cl->read_error = g_strdup("a line longer than 4 MiB came");
            return G_SOURCE_REMOVE;
        }
    }
}

static gboolean on_signal(gpointer data)
{
    ((Client *) data)->signals++;
    return G_SOURCE_CONTINUE;
}

static gboolean on_deadline(gpointer data)
{
    *(gboolean *) data = TRUE;
    return G_SOURCE_REMOVE;
}

/* Runs the client's main context until @done says so or @deadline (monotonic µs) passes. */
static void wait_for(Client *cl, gint64 deadline, gboolean (*done)(Client *))
{
    gboolean expired = FALSE;
    gint64 ms = MAX(0, (deadline - g_get_monotonic_time() + 999) / 1000);
    GSource *timer = g_timeout_source_new((guint) MIN(ms, G_MAXUINT));
    g_source_set_callback(timer, on_deadline, &expired, NULL);
    g_source_attach(timer, cl->ctx);
    while (!expired && !done(cl))
        g_main_context_iteration(cl->ctx, TRUE);
    g_source_destroy(timer);
    g_source_unref(timer);
}

/* Sends one request (@params: owned, nullable); returns its id, 0 on error. */
static gint64 send_request(Client *cl, const char *method, JsonObject *params, GError **error)
{
    g_autoptr(JsonObject) req = json_object_new();
    json_object_set_string_member(req, "jsonrpc", "2.0");
    json_object_set_string_member(req, "method", method);
    if (params)
        json_object_set_object_member(req, "params", params);
    gint64 id = ++cl->next_id;
    json_object_set_int_member(req, "id", id);
    g_autoptr(JsonNode) node = json_node_init_object(json_node_alloc(), req);
    g_autofree char *text = json_to_string(node, FALSE);
    g_autofree char *line = g_strconcat(text, "\n", NULL);
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(cl->conn));
    if (!g_output_stream_write_all(out, line, strlen(line), NULL, NULL, error)) {
        g_prefix_error(error, "cannot send %s to the control socket: ", method);
        return 0;
    }
    return id;
}

static gboolean answer_or_closed(Client *cl)
{
    return cl->answer || cl->closed;
}

/* Sends a request and waits (at most ANSWER_TIMEOUT_S) for its answer; the result is ignored. */
static gboolean call(Client *cl, const char *method, JsonObject *params, GError **error)
{
    cl->want_id = send_request(cl, method, params, error);
    if (!cl->want_id)
        return FALSE;
    wait_for(cl, g_get_monotonic_time() + ANSWER_TIMEOUT_S * G_USEC_PER_SEC, answer_or_closed);
    g_autoptr(JsonObject) answer = g_steal_pointer(&cl->answer);
    cl->want_id = 0;
    JsonObject *err = member_object(answer, "error");
    if (!answer && cl->closed)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED,
                    "the control socket closed before %s was answered (%s)", method,
                    cl->read_error ?: "did ferry-vmm exit?");
    else if (!answer)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                    "ferry-vmm did not answer %s within %d s", method, ANSWER_TIMEOUT_S);
    else if (err)
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s",
                    member_string(err, "message") ?: "error without a message");
    return answer && !err;
}

/* ---- the command ------------------------------------------------------------------------- */

typedef struct {
    char *socket, *mode;
    gboolean auto_converge, postcopy, keep_source, quiet;
    gboolean bar;       /* progress bar on a terminal (stderr is one, and no --quiet) */
    const char *uri;
    JsonObject *params; /* migrate-set-parameters: only what the command line gave */
} Options;

static gboolean bad(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* Sets a bad-argument error; returns FALSE. */
static gboolean bad(GError **error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, message);
    return FALSE;
}

/* An option that is a migration parameter of the same name: checked, put into params. */
static gboolean opt_param(const char *option, const char *text, gpointer data, GError **error)
{
    JsonObject *params = ((Options *) data)->params;
    const char *name = option + 2; /* "--max-bandwidth" */
    guint64 v, min = g_str_equal(name, "connections"), max = min ? 1024 : G_MAXINT32;
    if (g_str_equal(name, "tls-hostname")) {
        json_object_set_string_member(params, name, text);
        return TRUE;
    }
    if (g_str_equal(name, "timeout-action")) {
        if (!g_str_equal(text, "cancel") && !g_str_equal(text, "postcopy"))
            return bad(error, "--timeout-action '%s' is not valid: give cancel or postcopy",
                       text);
        json_object_set_string_member(params, name, text);
        return TRUE;
    }
    if (g_str_equal(name, "max-bandwidth")) {
        if (!ferry_parse_size(text, &v, error)) {
            g_prefix_error(error, "--max-bandwidth: ");
            return FALSE;
        }
        if (v > G_MAXINT64)
            return bad(error, "--max-bandwidth %s is too large", text);
    } else if (!g_ascii_string_to_unsigned(text, 10, min, max, &v, NULL)) {
        return bad(error, "--%s '%s' is not valid: give a whole number from %" G_GUINT64_FORMAT
                   " to %" G_GUINT64_FORMAT, name, text, min, max);
    }
    json_object_set_int_member(params, name, (gint64) v);
    return TRUE;
}

static gboolean parse_args(Options *o, int argc, char **argv, gboolean *help, GError **error)
{
    const GOptionEntry entries[] = {
        {"control-socket", 0, 0, G_OPTION_ARG_FILENAME, &o->socket,
         "The source ferry-vmm's control socket (required)", "PATH"},
        {"mode", 0, 0, G_OPTION_ARG_STRING, &o->mode, "live (default) or warm", "live|warm"},
        {"max-bandwidth", 0, 0, G_OPTION_ARG_CALLBACK, opt_param,
         "Bytes per second, with K, M or G (binary); 0 = unlimited", "BYTES"},
        {"downtime-limit", 0, 0, G_OPTION_ARG_CALLBACK, opt_param,
         "Longest acceptable pause (default 300)", "MS"},
        {"auto-converge", 0, 0, G_OPTION_ARG_NONE, &o->auto_converge,
         "Throttle the vCPUs if the guest dirties memory too fast", NULL},
        {"postcopy", 0, 0, G_OPTION_ARG_NONE, &o->postcopy,
         "Allow switching to post-copy (migrate-start-postcopy or the timeout)", NULL},
        {"timeout", 0, 0, G_OPTION_ARG_CALLBACK, opt_param,
         "Seconds without converging before --timeout-action (0 = none)", "S"},
        {"timeout-action", 0, 0, G_OPTION_ARG_CALLBACK, opt_param,
         "cancel (default) or postcopy", "cancel|postcopy"},
        {"connections", 0, 0, G_OPTION_ARG_CALLBACK, opt_param,
         "Parallel data connections (default 1)", "N"},
        {"tls-hostname", 0, 0, G_OPTION_ARG_CALLBACK, opt_param,
         "Name the destination's certificate must carry (tls: URIs)", "NAME"},
        {"keep-source", 0, 0, G_OPTION_ARG_NONE, &o->keep_source,
         "Leave the source ferry-vmm paused instead of telling it to quit", NULL},
        {"quiet", 0, 0, G_OPTION_ARG_NONE, &o->quiet, "No progress: the summary and errors only",
         NULL},
        {NULL},
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("URI - migrate a running VM");
    GOptionGroup *group = g_option_group_new("migrate", "", "", o, NULL);
    g_option_group_add_entries(group, entries);
    g_option_context_set_main_group(ctx, group);
    g_option_context_set_summary(
        ctx, "Moves the VM of the ferry-vmm behind --control-socket to a destination\n"
             "ferry-vmm started with --incoming; URI is tcp:HOST:PORT, tls:HOST:PORT,\n"
             "unix:PATH or fd:N. Exit status: 0 completed, 1 failed or cancelled, 2 bad "
             "arguments.");
    g_option_context_set_help_enabled(ctx, FALSE);
    for (int i = 1; i < argc && !g_str_equal(argv[i], "--"); i++) {
        if (g_str_equal(argv[i], "--help") || g_str_equal(argv[i], "-h")) {
            g_autofree char *text = g_option_context_get_help(ctx, TRUE, NULL);
            fputs(text, stdout);
            *help = TRUE;
            return FALSE;
        }
    }
    o->params = json_object_new();
    if (!g_option_context_parse(ctx, &argc, &argv, error))
        return FALSE;
    if (argc < 2)
        return bad(error, "the destination URI is missing (for example tcp:HOST:PORT)");
    if (argc > 2)
        return bad(error, "unexpected argument '%s' after the URI", argv[2]);
    o->uri = argv[1];
    if (!o->socket)
        return bad(error, "--control-socket is required: the source ferry-vmm's control socket");
    if (o->mode && !g_str_equal(o->mode, "live") && !g_str_equal(o->mode, "warm"))
        return bad(error, "--mode '%s' is not valid: give live or warm", o->mode);
    if (o->auto_converge)
        json_object_set_boolean_member(o->params, "auto-converge", TRUE);
    if (o->postcopy)
        json_object_set_boolean_member(o->params, "postcopy", TRUE);
    o->bar = !o->quiet && isatty(STDERR_FILENO);
    return TRUE;
}

static int report(const Options *o, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* Prints "ferry-vmm migrate: MESSAGE" over the progress bar; returns FERRY_EXIT_ERROR. */
static int report(const Options *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "%sferry-vmm migrate: %s\n", o->bar ? "\r\033[K" : "", message);
    return FERRY_EXIT_ERROR;
}

static void show_progress(Client *cl, const Options *o, gint64 *last_line)
{
    gint64 now = g_get_monotonic_time();
    if (o->quiet || !cl->status || (!o->bar && *last_line && now - *last_line < G_USEC_PER_SEC))
        return; /* without a bar, a line a second */
    *last_line = now;
    g_autofree char *line = ferry_migrate_progress_line(cl->status, o->bar);
    fprintf(stderr, o->bar ? "\r%s\033[K" : "%s\n", line);
}

static gboolean progress_wait_done(Client *cl)
{
    return cl->closed || cl->poll_error || cl->signals != cl->signals_seen ||
           (cl->status && is_final(cl->status));
}

static void print_summary(JsonObject *st)
{
    JsonObject *ram = member_object(st, "ram");
    gint64 ms = member_int(st, "elapsed-ms"), bytes = member_int(ram, "transferred");
    printf("Migration completed in %.2f s\n", ms / 1000.0);
    if (member(st, "downtime-ms", G_TYPE_INT64))
        printf("  downtime     %" G_GINT64_FORMAT " ms\n", member_int(st, "downtime-ms"));
    else if (member(st, "switchover-ms", G_TYPE_INT64))
        printf("  switch-over  %" G_GINT64_FORMAT " ms (the destination stays paused)\n",
               member_int(st, "switchover-ms"));
    printf("  transferred  %.1f MiB (%" G_GINT64_FORMAT " data pages, %" G_GINT64_FORMAT
           " zero pages)\n", bytes / MIB, member_int(ram, "data-pages"),
           member_int(ram, "zero-pages"));
    if (ms > 0)
        printf("  throughput   %.1f MiB/s on average\n", bytes / MIB / (ms / 1000.0));
    printf("  rounds       %" G_GINT64_FORMAT "\n", member_int(st, "iteration"));
    if (member_int(st, "postcopy-requests"))
        printf("  post-copy    %" G_GINT64_FORMAT " page requests\n",
               member_int(st, "postcopy-requests"));
}

/* Follows the started migration to its end; returns the exit status. */
static int follow(Client *cl, const Options *o)
{
    g_autoptr(GError) error = NULL;
    gboolean cancel_sent = FALSE;
    gint64 last_line = 0;
    while (!cl->status || !is_final(cl->status)) {
        if (cl->closed)
            return report(o, "the control socket closed during the migration (%s)",
                        cl->read_error ?: "did the source ferry-vmm exit?");
        if (cl->poll_error)
            return report(o, "%s", cl->poll_error);
        if (cl->signals != cl->signals_seen && cancel_sent)
            return report(o, "interrupted again: not waiting for the cancellation to end");
        cl->signals_seen = cl->signals;
        if (cl->signals && !cancel_sent) {
            report(o, "cancelling; the VM keeps running on the source");
            cancel_sent = TRUE;
            /* a refusal (past the point of no return) is followed by the final status */
            if (!call(cl, "migrate-cancel", NULL, &error))
                report(o, "migrate-cancel: %s", error->message);
            g_clear_error(&error);
        }
        gint64 now = g_get_monotonic_time();
        if (!cl->poll_id) {
            cl->poll_id = send_request(cl, "query-migrate", NULL, &error);
            cl->poll_sent = now;
            if (!cl->poll_id)
                return report(o, "%s", error->message);
        } else if (now - cl->poll_sent > ANSWER_TIMEOUT_S * G_USEC_PER_SEC) {
            return report(o, "ferry-vmm has not answered query-migrate for %d s; the migration "
                        "may still be running", ANSWER_TIMEOUT_S);
        }
        show_progress(cl, o, &last_line);
        wait_for(cl, now + POLL_INTERVAL_MS * 1000, progress_wait_done);
    }
    if (o->bar)
        fputs("\r\033[K", stderr);
    const char *final = status_of(cl->status), *why = member_string(cl->status, "error");
    if (!g_str_equal(final, "completed"))
        return report(o, "migration %s%s%s", final, why ? ": " : "", why ?: "");
    print_summary(cl->status);
    if (o->keep_source) {
        printf("  source       kept, paused (--keep-source)\n");
        return FERRY_EXIT_OK;
    }
    if (!call(cl, "quit", NULL, &error) && !cl->closed)
        return report(o, "the migration completed but the source did not quit: %s",
                    error->message);
    printf("  source       stopped\n");
    return FERRY_EXIT_OK;
}

static int run(Client *cl, Options *o)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(GSocketClient) client = g_socket_client_new();
    g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(o->socket);
    cl->conn = g_socket_client_connect(client, G_SOCKET_CONNECTABLE(addr), NULL, &error);
    if (!cl->conn)
        return report(o, "cannot connect to the control socket %s: %s (is ferry-vmm running with "
                    "--control-socket %s?)", o->socket, error->message, o->socket);
    GSource *in = g_socket_create_source(g_socket_connection_get_socket(cl->conn),
                                         G_IO_IN | G_IO_HUP | G_IO_ERR, NULL);
    g_source_set_callback(in, G_SOURCE_FUNC(on_readable), cl, NULL);
    g_source_attach(in, cl->ctx);
    g_source_unref(in); /* destroyed with the context */

    if (json_object_get_size(o->params) &&
        !call(cl, "migrate-set-parameters", json_object_ref(o->params), &error))
        return report(o, "%s", error->message);
    if (cl->signals)
        return report(o, "interrupted before the migration started");
    JsonObject *params = json_object_new();
    json_object_set_string_member(params, "uri", o->uri);
    json_object_set_string_member(params, "mode", o->mode ?: "live");
    g_clear_pointer(&cl->status, json_object_unref); /* only this migration's news */
    if (!call(cl, "migrate-send", params, &error))
        return report(o, "%s", error->message);
    return follow(cl, o);
}

int ferry_migrate_cli_main(int argc, char **argv)
{
    Options o = {0};
    g_autoptr(GError) error = NULL;
    gboolean help = FALSE;
    g_set_prgname("ferry-vmm migrate"); /* for --help's usage line */
    if (!parse_args(&o, argc, argv, &help, &error)) {
        g_free(o.socket), g_free(o.mode);
        g_clear_pointer(&o.params, json_object_unref);
        if (help)
            return FERRY_EXIT_OK;
        fprintf(stderr, "ferry-vmm migrate: %s\nTry 'ferry-vmm migrate --help' for the "
                        "options.\n", error->message);
        return FERRY_EXIT_USAGE;
    }
    Client cl = {.ctx = g_main_context_new(), .in = g_string_new(NULL)};
    g_main_context_push_thread_default(cl.ctx);
    const int signals[] = {SIGINT, SIGTERM};
    for (gsize i = 0; i < G_N_ELEMENTS(signals); i++) {
        GSource *s = g_unix_signal_source_new(signals[i]);
        g_source_set_callback(s, on_signal, &cl, NULL);
        g_source_attach(s, cl.ctx);
        g_source_unref(s);
    }
    int status = run(&cl, &o);
    fflush(stdout);

    g_main_context_pop_thread_default(cl.ctx);
    g_clear_object(&cl.conn);
    g_main_context_unref(cl.ctx); /* destroys the socket and signal sources */
    g_string_free(cl.in, TRUE);
    g_clear_pointer(&cl.answer, json_object_unref);
    g_clear_pointer(&cl.status, json_object_unref);
    g_free(cl.read_error);
    g_free(cl.poll_error);
    g_free(o.socket), g_free(o.mode), json_object_unref(o.params);
    return status;
}
