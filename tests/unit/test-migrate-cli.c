/*
 * Unit tests: `ferry-vmm migrate` (vmm/migrate_cli.c).  The progress line is checked
 * in-process; the command runs as the built ferry-vmm (FERRY_VMM, set by meson) against a fake
 * control server in a thread: a real unix socket speaking newline-delimited JSON-RPC 2.0 as
 * docs/control-api.md describes, with canned answers and status sequences.  Every answer is
 * preceded by noise the client must skip: a state-changed notification and an answer to an id
 * it never used.
 */
#include "migrate_cli.h"

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>

#define ST(fields) "{\"role\":\"source\",\"mode\":\"live\"," fields "}"
#define RAM(t, s, r) "\"ram\":{\"total\":" #t ",\"transferred\":" #s ",\"remaining\":" #r \
                     ",\"dirty-rate\":1200000,\"bandwidth\":432013312}"

static const char active0[] = ST("\"status\":\"active\",\"iteration\":0," RAM(1073741824,
                                 536870912, 0) ",\"throttle-percent\":0");
static const char active2[] = ST("\"status\":\"active\",\"iteration\":2," RAM(1073741824,
                                 1342177280, 268435456) ",\"throttle-percent\":20");
static const char completing[] = ST("\"status\":\"completing\",\"iteration\":3,"
                                    RAM(1073741824, 1400000000, 4096));
static const char completed[] = ST("\"status\":\"completed\",\"iteration\":3,\"elapsed-ms\":"
                                   "2500," RAM(1073741824, 1468006400, 0) ",\"downtime-ms\":38,"
                                   "\"switchover-ms\":31");
static const char failed[] = ST("\"status\":\"failed\",\"iteration\":1,\"error\":\"the "
                                "destination has 512 MiB of RAM, this VM 1024 MiB\"");
static const char cancelled[] = ST("\"status\":\"cancelled\",\"iteration\":1");

/* ---- the fake control server ---------------------------------------------------------- */

typedef struct {
    /* the script */
    const char *const *statuses; /* answers to successive query-migrate (the last repeats) */
    guint n_statuses;
    const char *final;      /* pushed as a notification after the last of them, then answered */
    const char *send_error; /* migrate-send fails with this message */
    int signal;             /* sent to the client at its first query-migrate, 0 none */
    /* what happened */
    char *dir, *path;
    GSocketListener *listener;
    GThread *thread;
    GString *methods;    /* "method,method,..." as received */
    char *set_params;    /* params of migrate-set-parameters, JSON */
    char *send_params;   /* params of migrate-send, JSON */
} Fake;

static void put(GOutputStream *out, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void put(GOutputStream *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autoptr(GError) error = NULL;
    g_output_stream_write_all(out, line, strlen(line), NULL, NULL, &error);
    g_assert_no_error(error);
}

static char *params_json(JsonObject *req)
{
    JsonNode *p = json_object_get_member(req, "params");
    return p ? json_to_string(p, FALSE) : g_strdup("none");
}

static gpointer serve(gpointer data)
{
    Fake *f = data;
    g_autoptr(GError) error = NULL;
    g_autoptr(GSocketConnection) conn = g_socket_listener_accept(f->listener, NULL, NULL, &error);
    g_assert_no_error(error);
    g_autoptr(GCredentials) cred =
        g_socket_get_credentials(g_socket_connection_get_socket(conn), &error);
    g_assert_no_error(error);
    g_autoptr(GDataInputStream) in =
        g_data_input_stream_new(g_io_stream_get_input_stream(G_IO_STREAM(conn)));
    GOutputStream *out = g_io_stream_get_output_stream(G_IO_STREAM(conn));
    guint polls = 0;
    gboolean cancel = FALSE;
    char *line;
    while ((line = g_data_input_stream_read_line(in, NULL, NULL, NULL))) {
        g_autoptr(JsonParser) parser = json_parser_new();
        g_assert_true(json_parser_load_from_data(parser, line, -1, NULL));
        g_free(line);
        JsonObject *req = json_node_get_object(json_parser_get_root(parser));
        g_assert_cmpstr(json_object_get_string_member(req, "jsonrpc"), ==, "2.0");
        const char *method = json_object_get_string_member(req, "method");
        gint64 id = json_object_get_int_member(req, "id");
        g_string_append_printf(f->methods, "%s%s", f->methods->len ? "," : "", method);
        put(out, "{\"jsonrpc\":\"2.0\",\"method\":\"state-changed\",\"params\":"
                 "{\"status\":\"running\"}}\n{\"jsonrpc\":\"2.0\",\"result\":"
                 "{\"status\":\"failed\"},\"id\":999}\n");
        const char *result = "null";
        if (g_str_equal(method, "migrate-set-parameters")) {
            f->set_params = params_json(req);
        } else if (g_str_equal(method, "migrate-send")) {
            f->send_params = params_json(req);
            if (f->send_error) {
                put(out, "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32000,\"message\":\"%s\"},"
                         "\"id\":%" G_GINT64_FORMAT "}\n", f->send_error, id);
                continue;
            }
        } else if (g_str_equal(method, "query-migrate")) {
            if (f->signal && polls == 0)
                kill(g_credentials_get_unix_pid(cred, NULL), f->signal);
            result = cancel                     ? cancelled
                     : polls >= f->n_statuses && f->final ? f->final
                                                : f->statuses[MIN(polls, f->n_statuses - 1)];
            polls++;
        } else if (g_str_equal(method, "migrate-cancel")) {
            cancel = TRUE;
        }
        put(out, "{\"jsonrpc\":\"2.0\",\"result\":%s,\"id\":%" G_GINT64_FORMAT "}\n", result,
            id);
        if (g_str_equal(method, "query-migrate") && polls == f->n_statuses && f->final)
            put(out, "{\"jsonrpc\":\"2.0\",\"method\":\"migration\",\"params\":%s}\n",
                f->final);
        if (g_str_equal(method, "quit"))
            break; /* ferry-vmm exits */
    }
    return NULL;
}

static void fake_start(Fake *f)
{
    g_autoptr(GError) error = NULL;
    f->dir = g_dir_make_tmp("ferry-migrate-cli-XXXXXX", &error);
    g_assert_no_error(error);
    f->path = g_build_filename(f->dir, "control.sock", NULL);
    f->listener = g_socket_listener_new();
    g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(f->path);
    g_socket_listener_add_address(f->listener, addr, G_SOCKET_TYPE_STREAM,
                                  G_SOCKET_PROTOCOL_DEFAULT, NULL, NULL, &error);
    g_assert_no_error(error);
    f->methods = g_string_new(NULL);
    f->thread = g_thread_new("fake-control", serve, f);
}

/* Waits for the server to see the client go, then cleans up (the record stays). */
static void fake_finish(Fake *f)
{
    g_thread_join(f->thread);
    g_socket_listener_close(f->listener);
    g_object_unref(f->listener);
    g_unlink(f->path);
    g_rmdir(f->dir);
}

static void fake_free(Fake *f)
{
    g_free(f->dir);
    g_free(f->path);
    g_string_free(f->methods, TRUE);
    g_free(f->set_params);
    g_free(f->send_params);
}

/* Runs `ferry-vmm migrate ARGS...`; returns its exit status, its stdout and stderr. */
static int run_cli(const char *const *args, char **out, char **err)
{
    const char *vmm = g_getenv("FERRY_VMM");
    g_assert_nonnull(vmm);
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_ptr_array_add(argv, (char *) vmm);
    g_ptr_array_add(argv, "migrate");
    for (; *args; args++)
        g_ptr_array_add(argv, (char *) *args);
    g_ptr_array_add(argv, NULL);
    g_autoptr(GError) error = NULL;
    g_autoptr(GSubprocess) p = g_subprocess_newv(
        (const char *const *) argv->pdata,
        G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE, &error);
    g_assert_no_error(error);
    g_subprocess_communicate_utf8(p, NULL, NULL, out, err, &error);
    g_assert_no_error(error);
    g_test_message("stdout: %s\nstderr: %s", *out, *err);
    g_assert_true(g_subprocess_get_if_exited(p));
    return g_subprocess_get_exit_status(p);
}

/* ---- tests --------------------------------------------------------------------------------- */

static char *progress(const char *json, gboolean bar)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    g_assert_true(json_parser_load_from_data(parser, json, -1, NULL));
    return ferry_migrate_progress_line(json_node_get_object(json_parser_get_root(parser)), bar);
}

static void test_progress_line(void)
{
    /* round 0: transferred / total */
    g_autofree char *a = progress(active0, TRUE);
    g_assert_cmpstr(a, ==, "[##########..........]   50%  512/1024 MiB  412 MiB/s  round 0  "
                           "dirty 1.2 Mpages/s  throttle 0%");
    /* later rounds: (total - remaining) / total, although more than total was sent */
    g_autofree char *b = progress(active2, FALSE);
    g_assert_cmpstr(b, ==, "active   75%  1280/1024 MiB  412 MiB/s  round 2  dirty 1.2 "
                           "Mpages/s  throttle 20%");
    g_autofree char *c = progress(completing, TRUE);
    g_assert_true(g_str_has_suffix(c, "(completing)"));
    g_assert_nonnull(strstr(c, "  99%  "));
    /* clamped; missing members are 0; post-copy shows the page requests */
    g_autofree char *d = progress("{\"status\":\"active\",\"ram\":{\"total\":100,"
                                  "\"transferred\":500,\"dirty-rate\":850}}", FALSE);
    g_assert_cmpstr(d, ==, "active  100%  0/0 MiB  0 MiB/s  round 0  dirty 850 pages/s  "
                           "throttle 0%");
    g_autofree char *e = progress("{\"status\":\"postcopy-active\",\"iteration\":4,"
                                  "\"postcopy-requests\":17,\"ram\":{\"total\":0}}", TRUE);
    g_assert_nonnull(strstr(e, "]    0%  "));
    g_assert_nonnull(strstr(e, "postcopy requests 17  (postcopy-active)"));
    g_autofree char *f = progress("{}", FALSE);
    g_assert_true(g_str_has_prefix(f, "unknown    0%"));
}

static void test_bad_arguments(void)
{
    static const char *const cases[][5] = {
        {"tcp:h:1", NULL},                                         /* no --control-socket */
        {"--control-socket", "/x", NULL},                          /* no URI */
        {"--control-socket", "/x", "tcp:h:1", "tcp:h:2", NULL},    /* two URIs */
        {"--control-socket", "/x", "--mode=cold", "tcp:h:1", NULL},
        {"--control-socket", "/x", "--max-bandwidth=12Q", "tcp:h:1", NULL},
        {"--control-socket", "/x", "--connections=0", "tcp:h:1", NULL},
        {"--control-socket", "/x", "--downtime-limit=-5", "tcp:h:1", NULL},
        {"--control-socket", "/x", "--timeout-action=retry", "tcp:h:1", NULL},
        {"--control-socket", "/x", "--no-such-option", "tcp:h:1", NULL},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *out = NULL, *err = NULL;
        g_assert_cmpint(run_cli(cases[i], &out, &err), ==, 2);
        g_assert_true(g_str_has_prefix(err, "ferry-vmm migrate: "));
        g_assert_nonnull(strstr(err, "Try 'ferry-vmm migrate --help'"));
    }
    g_autofree char *out = NULL, *err = NULL;
    g_assert_cmpint(run_cli((const char *const[]){"--help", NULL}, &out, &err), ==, 0);
    g_assert_nonnull(strstr(out, "--keep-source"));
}

static void test_no_socket(void)
{
    g_autofree char *out = NULL, *err = NULL;
    const char *const args[] = {"--control-socket", "/nonexistent/ferry.sock", "tcp:h:1", NULL};
    g_assert_cmpint(run_cli(args, &out, &err), ==, 1);
    g_assert_nonnull(strstr(err, "cannot connect to the control socket /nonexistent/ferry.sock"));
    g_assert_nonnull(strstr(err, "(is ferry-vmm running with --control-socket "
                                 "/nonexistent/ferry.sock?)"));
}

static void test_completed(void)
{
    const char *const seq[] = {active0, active2, completing};
    Fake f = {.statuses = seq, .n_statuses = 3, .final = completed};
    fake_start(&f);
    g_autofree char *out = NULL, *err = NULL;
    const char *const args[] = {"--control-socket", f.path, "--mode", "warm", "--max-bandwidth",
                                "100M", "--downtime-limit", "50", "--auto-converge",
                                "--connections", "2", "--tls-hostname", "dst.example",
                                "tls:10.0.0.2:4444", NULL};
    int status = run_cli(args, &out, &err);
    fake_finish(&f);
    g_assert_cmpint(status, ==, 0);
    g_assert_true(g_str_has_prefix(f.methods->str, "migrate-set-parameters,migrate-send,"
                                                   "query-migrate,query-migrate,query-migrate,"));
    g_assert_true(g_str_has_suffix(f.methods->str, ",quit"));
    g_assert_cmpstr(f.set_params, ==, "{\"max-bandwidth\":104857600,\"downtime-limit\":50,"
                                      "\"connections\":2,\"tls-hostname\":\"dst.example\","
                                      "\"auto-converge\":true}");
    g_assert_cmpstr(f.send_params, ==, "{\"uri\":\"tls:10.0.0.2:4444\",\"mode\":\"warm\"}");
    /* not a terminal: a plain line per second, the first one at once */
    g_assert_true(g_str_has_prefix(err, "active   50%  512/1024 MiB"));
    g_assert_null(strstr(err, "\r"));
    g_assert_nonnull(strstr(out, "Migration completed in 2.50 s"));
    g_assert_nonnull(strstr(out, "downtime     38 ms"));
    g_assert_nonnull(strstr(out, "1400.0 MiB"));
    g_assert_nonnull(strstr(out, "560.0 MiB/s"));
    g_assert_nonnull(strstr(out, "rounds       3"));
    g_assert_nonnull(strstr(out, "source       stopped"));
    fake_free(&f);
}

static void test_keep_source_quiet(void)
{
    const char *const seq[] = {active0};
    Fake f = {.statuses = seq, .n_statuses = 1, .final = completed};
    fake_start(&f);
    g_autofree char *out = NULL, *err = NULL;
    const char *const args[] = {"--control-socket", f.path, "--keep-source", "--quiet",
                                "unix:/run/dst.sock", NULL};
    int status = run_cli(args, &out, &err);
    fake_finish(&f);
    g_assert_cmpint(status, ==, 0);
    /* nothing to set: no migrate-set-parameters; no quit */
    g_assert_true(g_str_has_prefix(f.methods->str, "migrate-send,query-migrate"));
    g_assert_null(strstr(f.methods->str, "quit"));
    g_assert_cmpstr(f.send_params, ==, "{\"uri\":\"unix:/run/dst.sock\",\"mode\":\"live\"}");
    g_assert_cmpstr(err, ==, "");
    g_assert_nonnull(strstr(out, "source       kept, paused (--keep-source)"));
    fake_free(&f);
}

static void test_failed(void)
{
    const char *const seq[] = {active0, active0};
    Fake f = {.statuses = seq, .n_statuses = 2, .final = failed};
    fake_start(&f);
    g_autofree char *out = NULL, *err = NULL;
    const char *const args[] = {"--control-socket", f.path, "--postcopy", "tcp:h:1", NULL};
    int status = run_cli(args, &out, &err);
    fake_finish(&f);
    g_assert_cmpint(status, ==, 1);
    g_assert_nonnull(strstr(err, "ferry-vmm migrate: migration failed: the destination has 512 "
                                 "MiB of RAM, this VM 1024 MiB\n"));
    g_assert_cmpstr(f.set_params, ==, "{\"postcopy\":true}");
    g_assert_null(strstr(f.methods->str, "quit"));
    g_assert_cmpstr(out, ==, "");
    fake_free(&f);
}

static void test_send_error(void)
{
    Fake f = {.send_error = "cannot connect to 10.9.9.9:4444: Connection refused"};
    fake_start(&f);
    g_autofree char *out = NULL, *err = NULL;
    const char *const args[] = {"--control-socket", f.path, "tcp:10.9.9.9:4444", NULL};
    int status = run_cli(args, &out, &err);
    fake_finish(&f);
    g_assert_cmpint(status, ==, 1);
    g_assert_cmpstr(err, ==, "ferry-vmm migrate: cannot connect to 10.9.9.9:4444: Connection "
                             "refused\n");
    g_assert_cmpstr(f.methods->str, ==, "migrate-send");
    fake_free(&f);
}

static void test_interrupt(gconstpointer data)
{
    const char *const seq[] = {active0}; /* forever, until migrate-cancel */
    Fake f = {.statuses = seq, .n_statuses = 1, .signal = GPOINTER_TO_INT(data)};
    fake_start(&f);
    g_autofree char *out = NULL, *err = NULL;
    const char *const args[] = {"--control-socket", f.path, "tcp:h:1", NULL};
    int status = run_cli(args, &out, &err);
    fake_finish(&f);
    g_assert_cmpint(status, ==, 1);
    g_assert_nonnull(strstr(f.methods->str, ",migrate-cancel,query-migrate"));
    g_assert_null(strstr(f.methods->str, "quit"));
    g_assert_nonnull(strstr(err, "cancelling; the VM keeps running on the source"));
    g_assert_true(g_str_has_suffix(err, "ferry-vmm migrate: migration cancelled\n"));
    fake_free(&f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/migrate-cli/progress-line", test_progress_line);
    g_test_add_func("/migrate-cli/bad-arguments", test_bad_arguments);
    g_test_add_func("/migrate-cli/no-socket", test_no_socket);
    g_test_add_func("/migrate-cli/completed", test_completed);
    g_test_add_func("/migrate-cli/keep-source-quiet", test_keep_source_quiet);
    g_test_add_func("/migrate-cli/failed", test_failed);
    g_test_add_func("/migrate-cli/send-error", test_send_error);
    g_test_add_data_func("/migrate-cli/sigint", GINT_TO_POINTER(SIGINT), test_interrupt);
    g_test_add_data_func("/migrate-cli/sigterm", GINT_TO_POINTER(SIGTERM), test_interrupt);
    return g_test_run();
}
