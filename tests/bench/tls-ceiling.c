/*
 * How fast can a migration connection go on this machine?  Loopback throughput of
 *
 *   1. plain TCP (send/recv),
 *   2. gnutls alone (the ceiling): the channel's priority string and certificates, one
 *      thread calling gnutls_record_send with 1 MiB buffers, another gnutls_record_recv;
 *      once plainly and once corked (gnutls_record_cork/uncork around each 1 MiB),
 *   3. the migration channel (vmm/migration/channel.c) over tcp: and tls:, used the way the
 *      state stream uses it: g_output_stream_write_all of 1 MiB, reads of 256 KiB.
 *
 *   bench-tls-ceiling [--bytes N[K|M|G]] [--runs N]     (defaults 2G, 3)
 *
 * Prints, for the median of --runs runs, MB/s (10^6 bytes per second, from the first byte
 * sent to the last received) and CPU seconds per GiB (sender + receiver, user + system),
 * the negotiated protocol and cipher, and the channel's share of the gnutls ceiling (the
 * faster gnutls variant).  The
 * certificates are made by contrib/ferry-certs in a temporary directory.  Both ends run in
 * this process: sender and receiver each need a CPU, so on a busy 2-CPU host the figures
 * vary by ±20 % between runs.
 */
#include "migration/channel.h"
#include "migration/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK     (1024 * 1024)
#define READ_SIZE (256 * 1024)

static char *bytes_arg;
static guint64 total = 2ull << 30;
static int runs = 3;
static char *cert_dir;

static const GOptionEntry entries[] = {
    {"bytes", 0, 0, G_OPTION_ARG_STRING, &bytes_arg, "bytes to send per case (default 2G)",
     "N[K|M|G]"},
    {"runs", 0, 0, G_OPTION_ARG_INT, &runs, "runs per case, the median is shown (default 3)", "N"},
    G_OPTION_ENTRY_NULL,
};

static gboolean parse_bytes(const char *s, guint64 *out)
{
    char *end;
    guint64 v = g_ascii_strtoull(s, &end, 10);
    if (end == s)
        return FALSE;
    switch (g_ascii_toupper(*end)) {
    case 'K':
        v <<= 10, end++;
        break;
    case 'M':
        v <<= 20, end++;
        break;
    case 'G':
        v <<= 30, end++;
        break;
    default:
        break;
    }
    *out = v;
    return *end == '\0' && v > 0;
}

static double seconds_since(gint64 start)
{
    return (double) (g_get_monotonic_time() - start) / 1e6;
}

/* CPU seconds (user + system, all threads) this process has used so far. */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* One case's figures: wall seconds and CPU seconds of sender + receiver. */
typedef struct {
    double wall, cpu;
} Result;

static void print_result(const char *name, Result r, const char *extra)
{
    g_print("%-26s %7.0f MB/s %6.2f CPU s/GiB   %s\n", name, (double) total / 1e6 / r.wall,
            r.cpu / ((double) total / (1 << 30)), extra);
}

/* A connected TCP pair over loopback. */
static void tcp_pair(int *a, int *b)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    if (l < 0 || bind(l, (struct sockaddr *) &sin, sizeof(sin)) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *) &sin, &len) < 0)
        g_error("loopback listener: %s", g_strerror(errno));
    *a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(*a, (struct sockaddr *) &sin, sizeof(sin)) < 0)
        g_error("connect: %s", g_strerror(errno));
    *b = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (*b < 0)
        g_error("accept: %s", g_strerror(errno));
    close(l);
}

/* ---- 1. plain TCP ------------------------------------------------------------------------ */

static gpointer tcp_send_thread(gpointer data)
{
    int fd = GPOINTER_TO_INT(data);
    g_autofree uint8_t *buf = g_malloc0(CHUNK);
    for (guint64 done = 0; done < total;) {
        size_t n = (size_t) MIN(total - done, CHUNK);
        for (size_t off = 0; off < n;) {
            ssize_t k = send(fd, buf + off, n - off, MSG_NOSIGNAL);
            if (k < 0 && errno != EINTR)
                g_error("send: %s", g_strerror(errno));
            off += k > 0 ? (size_t) k : 0;
        }
        done += n;
    }
    return NULL;
}

static Result bench_tcp(void)
{
    int a, b;
    tcp_pair(&a, &b);
    g_autofree uint8_t *buf = g_malloc(CHUNK);
    gint64 start = g_get_monotonic_time();
    double cpu = cpu_seconds();
    GThread *t = g_thread_new("send", tcp_send_thread, GINT_TO_POINTER(a));
    for (guint64 got = 0; got < total;) {
        ssize_t k = recv(b, buf, CHUNK, 0);
        if (k <= 0)
            g_error("recv: %s", k < 0 ? g_strerror(errno) : "end of stream");
        got += (guint64) k;
    }
    Result res = {seconds_since(start), cpu_seconds() - cpu};
    g_thread_join(t);
    close(a);
    close(b);
    return res;
}

/* ---- 2. gnutls alone --------------------------------------------------------------------- */

typedef struct {
    gnutls_session_t s;
    gnutls_certificate_credentials_t cred;
    int fd;
    gboolean cork;
} Raw;

static void raw_init(Raw *r, int fd, gboolean server)
{
    const char *role = server ? "server" : "client";
    g_autofree char *ca = g_build_filename(cert_dir, "ca-cert.pem", NULL);
    g_autofree char *cert = g_strdup_printf("%s/%s-cert.pem", cert_dir, role);
    g_autofree char *key = g_strdup_printf("%s/%s-key.pem", cert_dir, role);
    r->fd = fd;
    if (gnutls_certificate_allocate_credentials(&r->cred) < 0 ||
        gnutls_certificate_set_x509_trust_file(r->cred, ca, GNUTLS_X509_FMT_PEM) <= 0 ||
        gnutls_certificate_set_x509_key_file(r->cred, cert, key, GNUTLS_X509_FMT_PEM) < 0 ||
        gnutls_init(&r->s, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_SIGNAL) < 0 ||
        gnutls_priority_set_direct(r->s, FERRY_TLS_PRIORITY, NULL) < 0 ||
        gnutls_credentials_set(r->s, GNUTLS_CRD_CERTIFICATE, r->cred) < 0)
        g_error("gnutls setup failed");
    if (server)
        gnutls_certificate_server_set_request(r->s, GNUTLS_CERT_REQUIRE);
    gnutls_transport_set_int(r->s, fd);
}

static gpointer raw_handshake_thread(gpointer data)
{
    Raw *r = data;
    int ret;
    do
        ret = gnutls_handshake(r->s);
    while (ret < 0 && !gnutls_error_is_fatal(ret));
    if (ret < 0)
        g_error("handshake: %s", gnutls_strerror(ret));
    return NULL;
}

static gpointer raw_send_thread(gpointer data)
{
    Raw *r = data;
    g_autofree uint8_t *buf = g_malloc0(CHUNK);
    for (guint64 done = 0; done < total;) {
        size_t n = (size_t) MIN(total - done, CHUNK);
        if (r->cork)
            gnutls_record_cork(r->s);
        for (size_t off = 0; off < n;) {
            ssize_t k = gnutls_record_send(r->s, buf + off, n - off);
            if (k < 0 && gnutls_error_is_fatal((int) k))
                g_error("gnutls_record_send: %s", gnutls_strerror((int) k));
            off += k > 0 ? (size_t) k : 0;
        }
        if (r->cork) {
            int k;
            do
                k = gnutls_record_uncork(r->s, GNUTLS_RECORD_WAIT);
            while (k < 0 && !gnutls_error_is_fatal(k));
            if (k < 0)
                g_error("gnutls_record_uncork: %s", gnutls_strerror(k));
        }
        done += n;
    }
    return NULL;
}

static Result bench_gnutls(gboolean cork, char **desc)
{
    int a, b;
    tcp_pair(&a, &b);
    Raw client = {0}, server = {0};
    raw_init(&client, a, FALSE);
    raw_init(&server, b, TRUE);
    client.cork = cork;
    GThread *h = g_thread_new("handshake", raw_handshake_thread, &client);
    raw_handshake_thread(&server);
    g_thread_join(h);
    if (desc)
        *desc = gnutls_session_get_desc(server.s);

    g_autofree uint8_t *buf = g_malloc(CHUNK);
    gint64 start = g_get_monotonic_time();
    double cpu = cpu_seconds();
    GThread *t = g_thread_new("send", raw_send_thread, &client);
    for (guint64 got = 0; got < total;) {
        ssize_t k = gnutls_record_recv(server.s, buf, CHUNK);
        if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED)
            continue;
        if (k <= 0)
            g_error("gnutls_record_recv: %s", k < 0 ? gnutls_strerror((int) k) : "end");
        got += (guint64) k;
    }
    Result res = {seconds_since(start), cpu_seconds() - cpu};
    g_thread_join(t);
    Raw *all[] = {&client, &server};
    for (int i = 0; i < 2; i++) {
        gnutls_deinit(all[i]->s);
        gnutls_certificate_free_credentials(all[i]->cred);
        close(all[i]->fd);
    }
    return res;
}

/* ---- 3. the migration channel ------------------------------------------------------------ */

typedef struct {
    FerryMigrationUri uri;
    GIOStream *conn;
} Source;

static gpointer channel_connect_thread(gpointer data)
{
    Source *src = data;
    FerryTlsOptions tls = {.dir = cert_dir};
    g_autoptr(GError) error = NULL;
    src->conn = ferry_migration_connect(&src->uri, &tls, NULL, &error);
    if (!src->conn)
        g_error("%s", error->message);
    return NULL;
}

static gpointer channel_send_thread(gpointer data)
{
    GOutputStream *out = g_io_stream_get_output_stream(data);
    g_autofree uint8_t *buf = g_malloc0(CHUNK);
    g_autoptr(GError) error = NULL;
    for (guint64 done = 0; done < total;) {
        size_t n = (size_t) MIN(total - done, CHUNK);
        if (!g_output_stream_write_all(out, buf, n, NULL, NULL, &error))
            g_error("%s", error->message);
        done += n;
    }
    return NULL;
}

static Result bench_channel(const char *text, char **security)
{
    FerryMigrationUri uri;
    g_autoptr(GError) error = NULL;
    if (!ferry_migration_uri_parse(text, &uri, &error))
        g_error("%s", error->message);
    FerryTlsOptions tls = {.dir = cert_dir};
    FerryMigrationListener *l = ferry_migration_listen(&uri, &tls, &error);
    if (!l)
        g_error("%s", error->message);
    Source src = {.uri = uri};
    src.uri.port = ferry_migration_listener_port(l);
    GThread *c = g_thread_new("connect", channel_connect_thread, &src);
    GIOStream *dst = ferry_migration_listener_accept(l, NULL, &error);
    if (!dst)
        g_error("%s", error->message);
    g_thread_join(c);
    const char *sec = ferry_migration_channel_security(dst);
    if (security)
        *security = g_strdup(sec ? sec : "plain");

    GInputStream *in = g_io_stream_get_input_stream(dst);
    g_autofree uint8_t *buf = g_malloc(READ_SIZE);
    gint64 start = g_get_monotonic_time();
    double cpu = cpu_seconds();
    GThread *t = g_thread_new("send", channel_send_thread, src.conn);
    for (guint64 got = 0; got < total;) {
        gssize k = g_input_stream_read(in, buf, READ_SIZE, NULL, &error);
        if (k <= 0)
            g_error("read: %s", k < 0 ? error->message : "end of stream");
        got += (guint64) k;
    }
    Result res = {seconds_since(start), cpu_seconds() - cpu};
    g_thread_join(t);
    g_io_stream_close(src.conn, NULL, NULL);
    g_io_stream_close(dst, NULL, NULL);
    g_object_unref(src.conn);
    g_object_unref(dst);
    ferry_migration_listener_free(l);
    ferry_migration_uri_clear(&uri);
    return res;
}

/* ---- cases ------------------------------------------------------------------------------ */

typedef enum { CASE_TCP, CASE_GNUTLS, CASE_GNUTLS_CORK, CASE_CHANNEL_TCP, CASE_CHANNEL_TLS } Case;

static Result run_case(Case c, char **desc)
{
    switch (c) {
    case CASE_TCP:
        return bench_tcp();
    case CASE_GNUTLS:
        return bench_gnutls(FALSE, desc);
    case CASE_GNUTLS_CORK:
        return bench_gnutls(TRUE, desc);
    case CASE_CHANNEL_TCP:
        return bench_channel("tcp:127.0.0.1:0", desc);
    case CASE_CHANNEL_TLS:
        return bench_channel("tls:127.0.0.1:0", desc);
    }
    g_assert_not_reached();
}

static int by_wall(const void *a, const void *b)
{
    const Result *x = a, *y = b;
    return (x->wall > y->wall) - (x->wall < y->wall);
}

/* The median of --runs runs by wall time; @desc (nullable) from the first run. */
static Result measure(Case c, char **desc)
{
    g_autofree Result *r = g_new(Result, runs);
    for (int i = 0; i < runs; i++)
        r[i] = run_case(c, i == 0 ? desc : NULL);
    qsort(r, (size_t) runs, sizeof(*r), by_wall);
    return r[runs / 2];
}

/* ---- main -------------------------------------------------------------------------------- */

static void make_certs(void)
{
    g_autofree char *script = g_build_filename(FERRY_SOURCE_DIR, "contrib", "ferry-certs", NULL);
    const char *steps[][8] = {
        {script, cert_dir, "--ca", NULL},
        {script, cert_dir, "--host", "localhost", "--ip", "127.0.0.1", NULL},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(steps); i++) {
        g_autofree char *err = NULL;
        int status;
        if (!g_spawn_sync(NULL, (char **) steps[i], NULL, G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL,
                          NULL, &err, &status, NULL) ||
            !g_spawn_check_wait_status(status, NULL))
            g_error("%s failed: %s", script, err ? err : "");
    }
}

static void remove_certs(void)
{
    static const char *files[] = {"ca-cert.pem",    "ca-key.pem",      "server-cert.pem",
                                  "server-key.pem", "client-cert.pem", "client-key.pem"};
    for (unsigned i = 0; i < G_N_ELEMENTS(files); i++) {
        g_autofree char *p = g_build_filename(cert_dir, files[i], NULL);
        g_unlink(p);
    }
    g_rmdir(cert_dir);
}

int main(int argc, char **argv)
{
    g_autoptr(GOptionContext) ctx = g_option_context_new("- loopback TCP / TLS throughput");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_autoptr(GError) error = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
        g_printerr("%s\n", error->message);
        return 2;
    }
    if (runs < 1) {
        g_printerr("--runs must be at least 1\n");
        return 2;
    }
    if (bytes_arg && !parse_bytes(bytes_arg, &total)) {
        g_printerr("--bytes: '%s' is not a byte count such as 512M or 2G\n", bytes_arg);
        return 2;
    }
    cert_dir = g_dir_make_tmp("ferry-tls-bench-XXXXXX", &error);
    if (!cert_dir)
        g_error("%s", error->message);
    make_certs();

    g_print("loopback, %" G_GUINT64_FORMAT " MiB per case, 1 MiB writes, priority %s, "
            "median of %d runs\n",
            total >> 20, FERRY_TLS_PRIORITY, runs);
    Result tcp = measure(CASE_TCP, NULL);
    print_result("plain TCP", tcp, "");
    g_autofree char *desc = NULL;
    Result tls = measure(CASE_GNUTLS, &desc);
    print_result("gnutls record_send", tls, desc);
    Result corked = measure(CASE_GNUTLS_CORK, NULL);
    print_result("gnutls corked per 1 MiB", corked, "");
    Result ceiling = tls.wall <= corked.wall ? tls : corked;

    Result ch_tcp = measure(CASE_CHANNEL_TCP, NULL);
    g_autofree char *share_tcp =
        g_strdup_printf("%.0f %% of plain TCP", 100 * tcp.wall / ch_tcp.wall);
    print_result("channel tcp:", ch_tcp, share_tcp);
    g_autofree char *sec = NULL;
    Result ch_tls = measure(CASE_CHANNEL_TLS, &sec);
    g_autofree char *share_tls =
        g_strdup_printf("%.0f %% of the gnutls ceiling, CPU per GiB %.0f %% of it (%s)",
                        100 * ceiling.wall / ch_tls.wall, 100 * ch_tls.cpu / ceiling.cpu, sec);
    print_result("channel tls:", ch_tls, share_tls);

    remove_certs();
    g_free(cert_dir);
    return 0;
}
