/*
 * Unit tests: migration connections (vmm/migration/channel.c, channel-stream.c, tls.c) over
 * real sockets with real TLS.  The certificates are made at start by contrib/ferry-certs
 * (certtool) in a temporary directory that is removed at the end.
 *
 * Layout of that directory:
 *   ca1/, ca2/   two CAs
 *   good/        host-b (SANs host-b, 127.0.0.1, ::1) by ca1
 *   named/       host-b (SAN host-b only) by ca1
 *   expired/     host-b, 127.0.0.1, valid from 30 days ago to yesterday, by ca1
 *   other/       host-b, 127.0.0.1 by ca2 (trusts ca2)
 *   mixed/       host-b, 127.0.0.1 by ca2, but trusts ca1
 *   swapped/     good/'s files, with the client certificate and key as the server's
 */
#include "migration/channel.h"
#include "migration/stream.h"
#include "migration/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MiB (1024 * 1024)

static char *tmp_root; /* removed at the end */

/* ---- helpers ---------------------------------------------------------------------------- */

static void remove_tree(const char *path)
{
    if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
        GDir *dir = g_dir_open(path, 0, NULL);
        const char *name;
        while (dir && (name = g_dir_read_name(dir))) {
            g_autofree char *child = g_build_filename(path, name, NULL);
            remove_tree(child);
        }
        if (dir)
            g_dir_close(dir);
        g_rmdir(path);
    } else {
        g_unlink(path);
    }
}

static char *cert_dir(const char *name)
{
    return g_build_filename(tmp_root, name, NULL);
}

/* Runs contrib/ferry-certs with @args (NULL-terminated) and fails the test if it fails. */
static void ferry_certs(const char *first, ...)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(argv, g_build_filename(FERRY_SOURCE_DIR, "contrib", "ferry-certs", NULL));
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *))
        g_ptr_array_add(argv, g_strdup(a));
    va_end(ap);
    g_ptr_array_add(argv, NULL);
    g_autofree char *out = NULL, *err = NULL;
    int status = 0;
    g_autoptr(GError) error = NULL;
    gboolean ok = g_spawn_sync(NULL, (char **) argv->pdata, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out,
                               &err, &status, &error);
    g_assert_no_error(error);
    if (!ok || !g_spawn_check_wait_status(status, NULL))
        g_error("ferry-certs failed: %s", err);
}

static void copy_file(const char *from_dir, const char *from, const char *to_dir, const char *to)
{
    g_autofree char *src = g_build_filename(from_dir, from, NULL);
    g_autofree char *dst = g_build_filename(to_dir, to, NULL);
    g_autofree char *data = NULL;
    gsize len;
    g_assert_true(g_file_get_contents(src, &data, &len, NULL));
    g_assert_true(g_file_set_contents(dst, data, (gssize) len, NULL));
}

static void make_certs(void)
{
    g_autofree char *ca1 = cert_dir("ca1"), *ca2 = cert_dir("ca2");
    g_autofree char *good = cert_dir("good"), *named = cert_dir("named");
    g_autofree char *expired = cert_dir("expired"), *other = cert_dir("other");
    g_autofree char *mixed = cert_dir("mixed");
    ferry_certs(ca1, "--ca", NULL);
    ferry_certs(ca2, "--ca", NULL);
    ferry_certs(good, "--host", "host-b", "--ip", "127.0.0.1", "--ip", "::1", "--ca-dir", ca1,
                NULL);
    ferry_certs(named, "--host", "host-b", "--ca-dir", ca1, NULL);
    ferry_certs(expired, "--host", "host-b", "--ip", "127.0.0.1", "--ca-dir", ca1, "--expired",
                NULL);
    ferry_certs(other, "--host", "host-b", "--ip", "127.0.0.1", "--ca-dir", ca2, NULL);
    ferry_certs(mixed, "--host", "host-b", "--ip", "127.0.0.1", "--ca-dir", ca2, NULL);
    copy_file(ca1, "ca-cert.pem", mixed, "ca-cert.pem");
    g_autofree char *swapped = cert_dir("swapped");
    g_assert_cmpint(g_mkdir(swapped, 0700), ==, 0);
    static const char *swap[][2] = {
        {"ca-cert.pem", "ca-cert.pem"},       {"client-cert.pem", "client-cert.pem"},
        {"client-key.pem", "client-key.pem"}, {"client-cert.pem", "server-cert.pem"},
        {"client-key.pem", "server-key.pem"},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(swap); i++)
        copy_file(good, swap[i][0], swapped, swap[i][1]);
}

static void assert_error_contains(const GError *error, GQuark domain, int code, const char *text)
{
    g_assert_nonnull(error);
    g_test_message("error: %s", error->message);
    if (!strstr(error->message, text))
        g_error("error \"%s\" does not contain \"%s\"", error->message, text);
    g_assert_error(error, domain, code);
}

/* A listener on @text (port 0 = any) for the destination, and the URI to reach it. */
typedef struct {
    FerryMigrationListener *listener;
    FerryMigrationUri uri; /* where the source connects */
} Listening;

static void listening_start(Listening *L, const char *text, const char *dir)
{
    g_autoptr(GError) error = NULL;
    FerryMigrationUri uri;
    g_assert_true(ferry_migration_uri_parse(text, &uri, &error));
    g_autofree char *d = dir ? cert_dir(dir) : NULL;
    FerryTlsOptions tls = {.dir = d};
    L->listener = ferry_migration_listen(&uri, &tls, &error);
    g_assert_no_error(error);
    L->uri = uri;
    if (uri.transport == FERRY_MIGRATION_TRANSPORT_TCP ||
        uri.transport == FERRY_MIGRATION_TRANSPORT_TLS) {
        g_assert_cmpuint(ferry_migration_listener_port(L->listener), >, 0);
        L->uri.port = ferry_migration_listener_port(L->listener);
    }
}

static void listening_stop(Listening *L)
{
    ferry_migration_listener_free(L->listener);
    ferry_migration_uri_clear(&L->uri);
}

/* A connect in its own thread (a TLS handshake needs both sides at once). */
typedef struct {
    FerryMigrationUri uri;
    char *dir, *hostname;
    GCancellable *cancellable;
    GIOStream *conn;
    GError *error;
    GThread *thread;
} Connecting;

static gpointer connect_thread(gpointer data)
{
    Connecting *C = data;
    FerryTlsOptions tls = {.dir = C->dir, .hostname = C->hostname};
    C->conn = ferry_migration_connect(&C->uri, &tls, C->cancellable, &C->error);
    return NULL;
}

/* Connects to @L->uri, with @transport instead of the listener's when >= 0. */
static Connecting *connect_start(const Listening *L, int transport, const char *dir,
                                 const char *hostname)
{
    Connecting *C = g_new0(Connecting, 1);
    C->uri = L->uri;
    C->uri.host = g_strdup(L->uri.host);
    C->uri.path = g_strdup(L->uri.path);
    if (transport >= 0)
        C->uri.transport = transport;
    C->dir = dir ? cert_dir(dir) : NULL;
    C->hostname = g_strdup(hostname);
    C->cancellable = g_cancellable_new();
    C->thread = g_thread_new("connect", connect_thread, C);
    return C;
}

/* Joins the connect thread; returns its connection (owned) and error (owned). */
static GIOStream *connect_finish(Connecting *C, GError **error)
{
    g_thread_join(C->thread);
    GIOStream *conn = C->conn;
    if (error)
        *error = C->error;
    else
        g_clear_error(&C->error);
    ferry_migration_uri_clear(&C->uri);
    g_object_unref(C->cancellable);
    g_free(C->dir);
    g_free(C->hostname);
    g_free(C);
    return conn;
}

/* Accepts while a source connects with @src_dir / @hostname; both must succeed. */
static void open_pair(Listening *L, const char *src_dir, const char *hostname, GIOStream **dst,
                      GIOStream **src)
{
    Connecting *C = connect_start(L, -1, src_dir, hostname);
    g_autoptr(GError) error = NULL;
    *dst = ferry_migration_listener_accept(L->listener, NULL, &error);
    g_autoptr(GError) cerr = NULL;
    *src = connect_finish(C, &cerr);
    g_assert_no_error(error);
    g_assert_no_error(cerr);
    g_assert_nonnull(*dst);
    g_assert_nonnull(*src);
}

/* Accepts while a source connects; both errors returned (either side may succeed). */
static void open_pair_failing(Listening *L, int transport, const char *src_dir,
                              const char *hostname, GError **dst_error, GError **src_error)
{
    Connecting *C = connect_start(L, transport, src_dir, hostname);
    GIOStream *dst = ferry_migration_listener_accept(L->listener, NULL, dst_error);
    GIOStream *src = connect_finish(C, src_error);
    g_clear_object(&dst);
    g_clear_object(&src);
}

/* ---- byte pumps: one thread writes a pattern, another reads and checks it ---------------- */

static uint8_t pattern_byte(uint64_t seed, uint64_t i)
{
    uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ull ^ seed;
    x ^= x >> 29;
    return (uint8_t) (x * 0xbf58476d1ce4e5b9ull >> 56);
}

typedef struct {
    GIOStream *conn;
    uint64_t seed;
    size_t bytes;
    GError *error;
    size_t done;
    gboolean mismatch;
} Pump;

static gpointer pump_write(gpointer data)
{
    Pump *p = data;
    GOutputStream *out = g_io_stream_get_output_stream(p->conn);
    g_autofree uint8_t *buf = g_malloc(MiB + 13);
    while (p->done < p->bytes) {
        /* Vary the write size: 1 MiB + 13, then small, so records straddle writes. */
        size_t n = MIN(p->bytes - p->done, (p->done / MiB) % 2 ? 4093 : MiB + 13);
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern_byte(p->seed, p->done + i);
        if (!g_output_stream_write_all(out, buf, n, NULL, NULL, &p->error))
            return NULL;
        p->done += n;
    }
    g_output_stream_close(out, NULL, &p->error); /* half-close: the peer reads EOF */
    return NULL;
}

static gpointer pump_read(gpointer data)
{
    Pump *p = data;
    GInputStream *in = g_io_stream_get_input_stream(p->conn);
    g_autofree uint8_t *buf = g_malloc(256 * 1024);
    for (;;) {
        gssize n = g_input_stream_read(in, buf, 256 * 1024, NULL, &p->error);
        if (n <= 0)
            return NULL;
        for (gssize i = 0; i < n; i++)
            if (buf[i] != pattern_byte(p->seed, p->done + (size_t) i))
                p->mismatch = TRUE;
        p->done += (size_t) n;
    }
}

/* Sends @bytes each way at once (four threads) and checks everything arrived intact. */
static void round_trip(GIOStream *a, GIOStream *b, size_t bytes)
{
    Pump w_ab = {.conn = a, .seed = 1, .bytes = bytes}, r_ab = {.conn = b, .seed = 1};
    Pump w_ba = {.conn = b, .seed = 2, .bytes = bytes}, r_ba = {.conn = a, .seed = 2};
    GThread *t[4] = {
        g_thread_new("w-ab", pump_write, &w_ab),
        g_thread_new("r-ab", pump_read, &r_ab),
        g_thread_new("w-ba", pump_write, &w_ba),
        g_thread_new("r-ba", pump_read, &r_ba),
    };
    for (int i = 0; i < 4; i++)
        g_thread_join(t[i]);
    Pump *all[] = {&w_ab, &r_ab, &w_ba, &r_ba};
    for (int i = 0; i < 4; i++) {
        g_assert_no_error(all[i]->error);
        g_assert_false(all[i]->mismatch);
        g_assert_cmpuint(all[i]->done, ==, bytes);
    }
}

static void close_both(GIOStream *a, GIOStream *b)
{
    g_autoptr(GError) error = NULL;
    g_assert_true(g_io_stream_close(a, NULL, &error));
    g_assert_no_error(error);
    g_assert_true(g_io_stream_close(b, NULL, &error));
    g_assert_no_error(error);
    g_object_unref(a);
    g_object_unref(b);
}

/* ---- URIs ------------------------------------------------------------------------------- */

static void test_uri_good(void)
{
    static const struct {
        const char *text, *canonical;
        FerryMigrationTransport transport;
        const char *host;
        guint port;
        const char *path;
        int fd;
    } cases[] = {
        {"tcp:host-a:4444", NULL, FERRY_MIGRATION_TRANSPORT_TCP, "host-a", 4444, NULL, -1},
        {"tls:10.0.0.2:49152", NULL, FERRY_MIGRATION_TRANSPORT_TLS, "10.0.0.2", 49152, NULL, -1},
        {"tls:[::1]:4444", NULL, FERRY_MIGRATION_TRANSPORT_TLS, "::1", 4444, NULL, -1},
        {"tcp:[fe80::1:2]:0", NULL, FERRY_MIGRATION_TRANSPORT_TCP, "fe80::1:2", 0, NULL, -1},
        {"tcp:a.example.org:65535", NULL, FERRY_MIGRATION_TRANSPORT_TCP, "a.example.org", 65535,
         NULL, -1},
        {"tcp:0.0.0.0:007", "tcp:0.0.0.0:7", FERRY_MIGRATION_TRANSPORT_TCP, "0.0.0.0", 7, NULL, -1},
        {"unix:/run/ferry/mig.sock", NULL, FERRY_MIGRATION_TRANSPORT_UNIX, NULL, 0,
         "/run/ferry/mig.sock", -1},
        {"unix:rel:ative", NULL, FERRY_MIGRATION_TRANSPORT_UNIX, NULL, 0, "rel:ative", -1},
        {"fd:0", NULL, FERRY_MIGRATION_TRANSPORT_FD, NULL, 0, NULL, 0},
        {"fd:17", NULL, FERRY_MIGRATION_TRANSPORT_FD, NULL, 0, NULL, 17},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        FerryMigrationUri uri;
        g_autoptr(GError) error = NULL;
        g_assert_true(ferry_migration_uri_parse(cases[i].text, &uri, &error));
        g_assert_no_error(error);
        g_assert_cmpint(uri.transport, ==, cases[i].transport);
        g_assert_cmpstr(uri.host, ==, cases[i].host);
        g_assert_cmpuint(uri.port, ==, cases[i].port);
        g_assert_cmpstr(uri.path, ==, cases[i].path);
        g_assert_cmpint(uri.fd, ==, cases[i].fd);
        g_autofree char *back = ferry_migration_uri_to_string(&uri);
        g_assert_cmpstr(back, ==, cases[i].canonical ? cases[i].canonical : cases[i].text);
        ferry_migration_uri_clear(&uri);
        g_assert_null(uri.host);
        g_assert_cmpint(uri.fd, ==, -1);
    }
}

static void test_uri_bad(void)
{
    static const struct {
        const char *text, *message;
    } cases[] = {
        {"", "expected tcp:HOST:PORT"},
        {"host-a:4444", "unknown transport 'host-a'"},
        {"http://x:80", "unknown transport 'http'"},
        {"tcp:host-a", "the port is missing"},
        {"tcp::4444", "the host is missing"},
        {"tcp:host-a:", "the port '' is not a number"},
        {"tcp:host-a:http", "the port 'http' is not a number 0..65535"},
        {"tcp:host-a:65536", "the port '65536'"},
        {"tcp:host-a:-1", "the port '-1'"},
        {"tls:::1:4444", "an IPv6 address must be in brackets"},
        {"tls:[::1:4444", "lacks its closing ']'"},
        {"tls:[::1]4444", "the port is missing after '[::1]'"},
        {"tls:[host-a]:4444", "'host-a' is not an IPv6 address"},
        {"tcp:ho st:1", "'ho st' is not a host name"},
        {"tcp:a..b:1", "'a..b' is not a host name"},
        {"unix:", "the socket path is missing"},
        {"fd:", "'' is not a file descriptor number"},
        {"fd:-1", "'-1' is not a file descriptor number"},
        {"fd:3x", "'3x' is not a file descriptor number"},
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
        FerryMigrationUri uri;
        g_autoptr(GError) error = NULL;
        g_assert_false(ferry_migration_uri_parse(cases[i].text, &uri, &error));
        g_autofree char *prefix = g_strdup_printf("migration URI '%s': ", cases[i].text);
        g_assert_true(g_str_has_prefix(error->message, prefix));
        assert_error_contains(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, cases[i].message);
        ferry_migration_uri_clear(&uri);
    }
    g_autofree char *long_path = g_strdup_printf("unix:/%0200d", 0);
    FerryMigrationUri uri;
    g_autoptr(GError) error = NULL;
    g_assert_false(ferry_migration_uri_parse(long_path, &uri, &error));
    assert_error_contains(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                          "the socket path is 201 bytes long; at most 107 fit");
}

/* ---- plain transports --------------------------------------------------------------------- */

static void test_tcp_round_trip(void)
{
    Listening L;
    listening_start(&L, "tcp:127.0.0.1:0", NULL);
    GIOStream *dst, *src;
    open_pair(&L, NULL, NULL, &dst, &src);
    g_assert_null(ferry_migration_channel_security(dst));
    round_trip(src, dst, 5 * MiB + 7);
    close_both(src, dst);
    listening_stop(&L);
}

static void test_tcp_refused(void)
{
    /* A port nobody listens on: bind one, then free it. */
    Listening L;
    listening_start(&L, "tcp:127.0.0.1:0", NULL);
    g_autofree char *text = ferry_migration_uri_to_string(&L.uri);
    ferry_migration_listener_free(L.listener);
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_migration_connect(&L.uri, NULL, NULL, &error));
    g_autofree char *expect = g_strdup_printf("cannot connect to %s (127.0.0.1): Connection "
                                              "refused (is the destination listening?)",
                                              text);
    assert_error_contains(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED, expect);
    ferry_migration_uri_clear(&L.uri);
}

/* Sets the loopback interface of this network namespace up or down. */
static void set_lo(gboolean up)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr = {0};
    g_strlcpy(ifr.ifr_name, "lo", sizeof(ifr.ifr_name));
    g_assert_cmpint(ioctl(fd, SIOCGIFFLAGS, &ifr), ==, 0);
    ifr.ifr_flags = (short) (up ? ifr.ifr_flags | IFF_UP : ifr.ifr_flags & ~IFF_UP);
    g_assert_cmpint(ioctl(fd, SIOCSIFFLAGS, &ifr), ==, 0);
    close(fd);
}

typedef struct {
    GIOStream *conn;
    GError *error;
} Endless;

static gpointer endless_write(gpointer data)
{
    Endless *e = data;
    g_autofree uint8_t *buf = g_malloc0(MiB);
    while (g_output_stream_write_all(g_io_stream_get_output_stream(e->conn), buf, MiB, NULL, NULL,
                                     &e->error))
        ;
    return NULL;
}

static gpointer endless_read(gpointer data)
{
    Endless *e = data;
    g_autofree uint8_t *buf = g_malloc(256 * 1024);
    while (g_input_stream_read(g_io_stream_get_input_stream(e->conn), buf, 256 * 1024, NULL,
                               &e->error) > 0)
        ;
    return NULL;
}

/*
 * The link goes down under a connection (in a network namespace of its own): the blocked
 * writer (unacknowledged data: TCP_USER_TIMEOUT) and the blocked reader (keepalive) both
 * fail, after about 10 s, instead of hanging.  Needs root.
 */
static void test_tcp_link_down(void)
{
    if (!g_test_subprocess()) {
        if (geteuid() != 0) {
            g_test_skip("needs root for a network namespace");
            return;
        }
        g_test_trap_subprocess(NULL, 120 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_DEFAULT);
        g_test_trap_assert_passed();
        return;
    }
    g_assert_cmpint(unshare(CLONE_NEWNET), ==, 0);
    set_lo(TRUE);
    Listening L;
    listening_start(&L, "tcp:127.0.0.1:0", NULL);
    GIOStream *dst, *src;
    open_pair(&L, NULL, NULL, &dst, &src);
    Endless w = {src}, r = {dst};
    GThread *tw = g_thread_new("writer", endless_write, &w);
    GThread *tr = g_thread_new("reader", endless_read, &r);
    set_lo(FALSE);
    g_thread_join(tw);
    g_thread_join(tr);
    g_autofree char *expect = g_strdup_printf("connection to 127.0.0.1:%u lost: Connection timed "
                                              "out (no answer from the destination for 10 s",
                                              L.uri.port);
    assert_error_contains(w.error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT, expect);
    assert_error_contains(r.error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                          "lost: Connection timed out (no answer from the source");
    g_clear_error(&w.error);
    g_clear_error(&r.error);
    g_object_unref(src);
    g_object_unref(dst);
    listening_stop(&L);
}

static void test_unix_round_trip(void)
{
    g_autofree char *dir = g_dir_make_tmp("ferry-unix-XXXXXX", NULL);
    g_autofree char *text = g_strdup_printf("unix:%s/mig.sock", dir);
    Listening L;
    listening_start(&L, text, NULL);
    GIOStream *dst, *src;
    open_pair(&L, NULL, NULL, &dst, &src);
    round_trip(src, dst, 3 * MiB + 1);
    close_both(src, dst);

    /* A second listener on the same path is refused while the first one lives. */
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_migration_listen(&L.uri, NULL, &error));
    assert_error_contains(error, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE, "cannot listen on unix:");
    listening_stop(&L);
    g_autofree char *sock = g_build_filename(dir, "mig.sock", NULL);
    g_assert_false(g_file_test(sock, G_FILE_TEST_EXISTS)); /* removed by the listener */
    remove_tree(dir);
}

static void test_fd_handover(void)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
    g_autofree char *dst_text = g_strdup_printf("fd:%d", sv[0]);
    g_autofree char *src_text = g_strdup_printf("fd:%d", sv[1]);
    FerryMigrationUri dst_uri, src_uri;
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_migration_uri_parse(dst_text, &dst_uri, &error));
    g_assert_true(ferry_migration_uri_parse(src_text, &src_uri, &error));

    FerryMigrationListener *l = ferry_migration_listen(&dst_uri, NULL, &error);
    g_assert_no_error(error);
    GIOStream *dst = ferry_migration_listener_accept(l, NULL, &error);
    g_assert_no_error(error);
    g_assert_null(ferry_migration_listener_accept(l, NULL, &error));
    assert_error_contains(error, G_IO_ERROR, G_IO_ERROR_CLOSED, "was already accepted");
    g_clear_error(&error);
    ferry_migration_listener_free(l);

    GIOStream *src = ferry_migration_connect(&src_uri, NULL, NULL, &error);
    g_assert_no_error(error);
    round_trip(src, dst, 2 * MiB + 3);
    close_both(src, dst);
    /* Both descriptors were the connections': they are closed now. */
    g_assert_cmpint(fcntl(sv[0], F_GETFD), ==, -1);
    g_assert_cmpint(fcntl(sv[1], F_GETFD), ==, -1);

    /* Not a socket: refused, and the descriptor stays the caller's. */
    int p[2];
    g_assert_cmpint(pipe(p), ==, 0);
    FerryMigrationUri pipe_uri = {.transport = FERRY_MIGRATION_TRANSPORT_FD, .fd = p[0]};
    g_assert_null(ferry_migration_connect(&pipe_uri, NULL, NULL, &error));
    g_autofree char *expect = g_strdup_printf("fd:%d is not usable: not a socket", p[0]);
    assert_error_contains(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, expect);
    g_assert_cmpint(fcntl(p[0], F_GETFD), >=, 0);
    close(p[0]);
    close(p[1]);
    ferry_migration_uri_clear(&dst_uri);
    ferry_migration_uri_clear(&src_uri);
}

/* ---- TLS ---------------------------------------------------------------------------------- */

static void test_tls_round_trip(void)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "good");
    GIOStream *dst, *src;
    open_pair(&L, "good", NULL, &dst, &src);
    const char *sec = ferry_migration_channel_security(src);
    g_assert_nonnull(sec);
    g_assert_cmpstr(sec, ==, ferry_migration_channel_security(dst));
    g_test_message("negotiated: %s", sec);
    round_trip(src, dst, 6 * MiB + 5);
    close_both(src, dst);
    listening_stop(&L);
}

static void test_tls_ipv6(void)
{
    FerryMigrationUri uri;
    g_assert_true(ferry_migration_uri_parse("tls:[::1]:0", &uri, NULL));
    g_autofree char *good = cert_dir("good");
    FerryTlsOptions tls = {.dir = good};
    g_autoptr(GError) error = NULL;
    FerryMigrationListener *l = ferry_migration_listen(&uri, &tls, &error);
    ferry_migration_uri_clear(&uri);
    if (!l) {
        g_test_skip(error->message);
        return;
    }
    ferry_migration_listener_free(l);
    Listening L;
    listening_start(&L, "tls:[::1]:0", "good");
    GIOStream *dst, *src;
    open_pair(&L, "good", NULL, &dst, &src);
    round_trip(src, dst, MiB);
    close_both(src, dst);
    listening_stop(&L);
}

/* The state stream writer and reader, unchanged, over TLS: forward and return path at once. */
typedef struct {
    GIOStream *conn;
    gboolean forward;
    GError *error;
    unsigned records;
} StreamSide;

static const FerryStreamConfigItem stream_items[] = {{"memory", "8 MiB"}};

static void stream_config(FerryStreamConfig *c)
{
    ferry_stream_config_digest("test-channel", c->digest);
    c->items = stream_items;
    c->n_items = G_N_ELEMENTS(stream_items);
}

static gpointer stream_write(gpointer data)
{
    StreamSide *s = data;
    FerryStreamConfig config;
    stream_config(&config);
    g_autoptr(FerryStreamWriter) w =
        ferry_stream_writer_new(g_io_stream_get_output_stream(s->conn),
                                s->forward ? 0 : FERRY_STREAM_FLAG_RETURN_PATH, NULL);
    gboolean ok = ferry_stream_writer_put_header(w, &config, &s->error);
    if (s->forward) {
        g_autofree uint8_t *ram = g_malloc(8 * MiB);
        for (size_t i = 0; i < 8 * MiB; i++)
            ram[i] = (uint8_t) (i % 251 + (i / 4096) % 3);
        for (unsigned b = 0; ok && b < 2; b++)
            ok = ferry_stream_writer_put_ram_batch(w, b * 4 * MiB, 1024, ram + b * 4 * MiB, NULL,
                                                   &s->error);
    } else {
        FerryStreamRange r = {4096, 8192};
        for (unsigned i = 0; ok && i < 100; i++)
            ok = ferry_stream_writer_put_page_request(w, &r, 1, &s->error);
    }
    if (ok)
        ferry_stream_writer_put_end(w, &s->error);
    return NULL;
}

static gpointer stream_read(gpointer data)
{
    StreamSide *s = data;
    FerryStreamConfig config;
    stream_config(&config);
    FerryStreamRange ram = {0, 8 * MiB};
    g_autoptr(FerryStreamReader) r = ferry_stream_reader_new(
        g_io_stream_get_input_stream(s->conn), s->forward ? 0 : FERRY_STREAM_FLAG_RETURN_PATH,
        &config, &ram, 1, NULL);
    if (!ferry_stream_reader_read_header(r, &s->error))
        return NULL;
    FerryStreamRecord rec;
    do {
        if (!ferry_stream_reader_next(r, &rec, &s->error))
            return NULL;
        s->records++;
    } while (rec.type != FERRY_STREAM_RECORD_END);
    return NULL;
}

static void test_tls_state_stream(void)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "good");
    GIOStream *dst, *src;
    open_pair(&L, "good", NULL, &dst, &src);
    StreamSide fw_w = {src, TRUE}, fw_r = {dst, TRUE}, rp_w = {dst, FALSE}, rp_r = {src, FALSE};
    GThread *t[4] = {
        g_thread_new("fw-w", stream_write, &fw_w),
        g_thread_new("fw-r", stream_read, &fw_r),
        g_thread_new("rp-w", stream_write, &rp_w),
        g_thread_new("rp-r", stream_read, &rp_r),
    };
    for (int i = 0; i < 4; i++)
        g_thread_join(t[i]);
    g_assert_no_error(fw_w.error);
    g_assert_no_error(fw_r.error);
    g_assert_no_error(rp_w.error);
    g_assert_no_error(rp_r.error);
    g_assert_cmpuint(fw_r.records, ==, 3);   /* 2 RAM batches, END */
    g_assert_cmpuint(rp_r.records, ==, 101); /* 100 page requests, END */
    close_both(src, dst);
    listening_stop(&L);
}

static void test_tls_missing_files(void)
{
    g_autofree char *ca1 = cert_dir("ca1");
    FerryMigrationUri uri;
    g_assert_true(ferry_migration_uri_parse("tls:127.0.0.1:0", &uri, NULL));
    FerryTlsOptions tls = {.dir = ca1};
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_migration_listen(&uri, &tls, &error));
    g_autofree char *expect = g_strdup_printf("%s/server-cert.pem is missing", ca1);
    assert_error_contains(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_FILES, expect);
    g_clear_error(&error);

    uri.port = 9; /* nothing is contacted: the files are checked first */
    g_assert_null(ferry_migration_connect(&uri, &tls, NULL, &error));
    g_autofree char *expect2 = g_strdup_printf("%s/client-cert.pem is missing", ca1);
    assert_error_contains(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_FILES, expect2);
    g_clear_error(&error);

    /* A key that belongs to another certificate. */
    g_autofree char *dir = g_dir_make_tmp("ferry-certs-XXXXXX", NULL);
    const char *files[][2] = {
        {"good", "ca-cert.pem"}, {"good", "client-cert.pem"}, {"other", "client-key.pem"}};
    for (unsigned i = 0; i < G_N_ELEMENTS(files); i++) {
        g_autofree char *from = cert_dir(files[i][0]);
        copy_file(from, files[i][1], dir, files[i][1]);
    }
    tls.dir = dir;
    g_assert_null(ferry_migration_connect(&uri, &tls, NULL, &error));
    g_autofree char *expect3 = g_strdup_printf("cannot use the certificate %s/client-cert.pem "
                                               "with the key %s/client-key.pem",
                                               dir, dir);
    assert_error_contains(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_FILES, expect3);
    remove_tree(dir);
    ferry_migration_uri_clear(&uri);
}

/* The destination's certificate is by a CA the source does not trust. */
static void test_tls_wrong_ca(void)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "other");
    g_autoptr(GError) dst_error = NULL, src_error = NULL;
    open_pair_failing(&L, -1, "good", NULL, &dst_error, &src_error);
    g_autofree char *ca = g_build_filename(tmp_root, "good", "ca-cert.pem", NULL);
    g_autofree char *expect = g_strdup_printf("the destination's certificate is not signed by "
                                              "the CA in %s",
                                              ca);
    assert_error_contains(src_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_UNTRUSTED, expect);
    assert_error_contains(dst_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_REFUSED,
                          "the source refused the TLS session with alert");
    g_assert_nonnull(strstr(dst_error->message, "it does not trust this host's certificate"));
    listening_stop(&L);
}

/*
 * The source's certificate is by a CA the destination does not trust.  With TLS 1.3 the
 * source's handshake completes before the destination has checked its certificate, so the
 * source learns of the refusal when it next reads or writes.
 */
static void check_source_untrusted(gboolean by_write)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "good");
    Connecting *C = connect_start(&L, -1, "mixed", NULL);
    g_autoptr(GError) dst_error = NULL, src_error = NULL;
    g_assert_null(ferry_migration_listener_accept(L.listener, NULL, &dst_error));
    GIOStream *src = connect_finish(C, &src_error);
    g_autofree char *ca = g_build_filename(tmp_root, "good", "ca-cert.pem", NULL);
    g_autofree char *expect = g_strdup_printf("the source's certificate is not signed by the "
                                              "CA in %s",
                                              ca);
    assert_error_contains(dst_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_UNTRUSTED, expect);
    if (src && by_write) {
        /* Writes go out until the reset; then the alert that came before it explains it. */
        g_autofree uint8_t *buf = g_malloc0(64 * 1024);
        while (g_output_stream_write_all(g_io_stream_get_output_stream(src), buf, 64 * 1024, NULL,
                                         NULL, &src_error))
            ;
    } else if (src) {
        uint8_t byte;
        g_assert_cmpint(
            g_input_stream_read(g_io_stream_get_input_stream(src), &byte, 1, NULL, &src_error), ==,
            -1);
    }
    g_clear_object(&src);
    assert_error_contains(src_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_REFUSED,
                          "it does not trust this host's certificate");
    listening_stop(&L);
}

static void test_tls_source_untrusted(void)
{
    check_source_untrusted(FALSE);
    check_source_untrusted(TRUE);
}

static void test_tls_expired(void)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "expired");
    g_autoptr(GError) dst_error = NULL, src_error = NULL;
    open_pair_failing(&L, -1, "good", NULL, &dst_error, &src_error);

    /* The date the message must give: the certificate's own notAfter. */
    g_autofree char *path = g_build_filename(tmp_root, "expired", "server-cert.pem", NULL);
    g_autofree char *pem = NULL;
    gsize len;
    g_assert_true(g_file_get_contents(path, &pem, &len, NULL));
    gnutls_x509_crt_t crt;
    gnutls_datum_t d = {(unsigned char *) pem, (unsigned) len};
    g_assert_cmpint(gnutls_x509_crt_init(&crt), ==, 0);
    g_assert_cmpint(gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_PEM), ==, 0);
    g_autoptr(GDateTime) end =
        g_date_time_new_from_unix_utc(gnutls_x509_crt_get_expiration_time(crt));
    gnutls_x509_crt_deinit(crt);
    g_autofree char *date = g_date_time_format(end, "%Y-%m-%d");
    g_autofree char *expect = g_strdup_printf("the destination's certificate expired on %s", date);
    assert_error_contains(src_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_EXPIRED, expect);
    assert_error_contains(dst_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_REFUSED,
                          "it says this host's certificate has expired");
    listening_stop(&L);
}

static void test_tls_hostname(void)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "named"); /* host-b, no IP address */
    g_autoptr(GError) dst_error = NULL, src_error = NULL;
    open_pair_failing(&L, -1, "good", "host-a", &dst_error, &src_error);
    assert_error_contains(src_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_NAME,
                          "the destination's certificate is for 'host-b', not 'host-a' (set "
                          "tls-hostname if that is intended)");
    assert_error_contains(dst_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_REFUSED,
                          "it refused this host's certificate");
    g_clear_error(&dst_error);
    g_clear_error(&src_error);

    /* Without tls-hostname the URI's IP literal must be an IP SAN. */
    open_pair_failing(&L, -1, "good", NULL, &dst_error, &src_error);
    assert_error_contains(src_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_NAME,
                          "is for 'host-b', not '127.0.0.1'");
    g_clear_error(&dst_error);
    g_clear_error(&src_error);

    /* The explicit name the certificate carries is accepted. */
    GIOStream *dst, *src;
    open_pair(&L, "good", "host-b", &dst, &src);
    round_trip(src, dst, 64 * 1024);
    close_both(src, dst);
    listening_stop(&L);
}

/* A destination presenting its client certificate as its server certificate. */
static void test_tls_wrong_purpose(void)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "swapped");
    g_autoptr(GError) dst_error = NULL, src_error = NULL;
    open_pair_failing(&L, -1, "good", NULL, &dst_error, &src_error);
    assert_error_contains(src_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_PURPOSE,
                          "the destination's certificate is not meant for a TLS server (its "
                          "extended key usage lacks serverAuth");
    assert_error_contains(dst_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_REFUSED,
                          "with alert 'Certificate is not supported'");
    listening_stop(&L);
}

/* A TLS client with no certificate, straight from gnutls. */
typedef struct {
    guint16 port;
    char *ca;
    int handshake, recv;
    gnutls_alert_description_t alert;
} BareClient;

static gpointer bare_client_thread(gpointer data)
{
    BareClient *b = data;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons(b->port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    g_assert_cmpint(connect(fd, (struct sockaddr *) &sin, sizeof(sin)), ==, 0);
    gnutls_certificate_credentials_t cred;
    gnutls_session_t s;
    g_assert_cmpint(gnutls_certificate_allocate_credentials(&cred), ==, 0);
    g_assert_cmpint(gnutls_certificate_set_x509_trust_file(cred, b->ca, GNUTLS_X509_FMT_PEM), >, 0);
    g_assert_cmpint(gnutls_init(&s, GNUTLS_CLIENT), ==, 0);
    g_assert_cmpint(gnutls_set_default_priority(s), ==, 0);
    g_assert_cmpint(gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred), ==, 0);
    gnutls_transport_set_int(s, fd);
    do
        b->handshake = gnutls_handshake(s);
    while (b->handshake < 0 && !gnutls_error_is_fatal(b->handshake));
    if (b->handshake == 0) {
        char buf[64];
        do
            b->recv = (int) gnutls_record_recv(s, buf, sizeof(buf));
        while (b->recv == GNUTLS_E_AGAIN || b->recv == GNUTLS_E_INTERRUPTED);
    }
    b->alert = gnutls_alert_get(s);
    gnutls_deinit(s);
    gnutls_certificate_free_credentials(cred);
    close(fd);
    return NULL;
}

static void test_tls_no_client_certificate(void)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "good");
    BareClient b = {.port = L.uri.port,
                    .ca = g_build_filename(tmp_root, "good", "ca-cert.pem", NULL)};
    GThread *t = g_thread_new("bare", bare_client_thread, &b);
    g_autoptr(GError) error = NULL;
    g_assert_null(ferry_migration_listener_accept(L.listener, NULL, &error));
    g_thread_join(t);
    assert_error_contains(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_NO_CERTIFICATE,
                          "the source presented no client certificate");
    g_assert_true(g_str_has_prefix(error->message, "connection from 127.0.0.1:"));
    /* The client was told with an alert, during its handshake (TLS 1.2) or after (1.3). */
    g_assert_true(b.handshake == GNUTLS_E_FATAL_ALERT_RECEIVED ||
                  b.recv == GNUTLS_E_FATAL_ALERT_RECEIVED);
    g_assert_cmpint(b.alert, ==, GNUTLS_A_CERTIFICATE_REQUIRED);
    g_free(b.ca);
    listening_stop(&L);
}

/* A tls: source and a plain tcp: destination. */
static void test_tls_client_plain_listener(void)
{
    Listening L;
    listening_start(&L, "tcp:127.0.0.1:0", NULL);
    Connecting *C = connect_start(&L, FERRY_MIGRATION_TRANSPORT_TLS, "good", NULL);
    g_autoptr(GError) error = NULL;
    GIOStream *dst = ferry_migration_listener_accept(L.listener, NULL, &error);
    g_assert_no_error(error);
    uint8_t buf[64];
    g_assert_cmpint(
        g_input_stream_read(g_io_stream_get_input_stream(dst), buf, sizeof(buf), NULL, &error), ==,
        -1);
    assert_error_contains(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_MISMATCH,
                          "the source speaks TLS; use tls: on both sides");
    g_object_unref(dst); /* closes: the source's handshake ends */

    g_autoptr(GError) src_error = NULL;
    g_assert_null(connect_finish(C, &src_error));
    g_autofree char *expect = g_strdup_printf("the peer at 127.0.0.1:%u did not answer the TLS "
                                              "handshake (is it listening for plain tcp:?)",
                                              L.uri.port);
    assert_error_contains(src_error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_HANDSHAKE, expect);
    listening_stop(&L);
}

/* A plain tcp: source and a tls: destination. */
static void test_plain_client_tls_listener(void)
{
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "good");
    FerryMigrationUri uri = L.uri;
    uri.transport = FERRY_MIGRATION_TRANSPORT_TCP;
    g_autoptr(GError) error = NULL;
    GIOStream *src = ferry_migration_connect(&uri, NULL, NULL, &error);
    g_assert_no_error(error);
    /* What a source sends first: a state stream's preamble. */
    FerryStreamConfig config;
    stream_config(&config);
    g_autoptr(FerryStreamWriter) w =
        ferry_stream_writer_new(g_io_stream_get_output_stream(src), 0, NULL);
    g_assert_true(ferry_stream_writer_put_header(w, &config, &error));
    g_assert_true(ferry_stream_writer_flush(w, &error));

    g_assert_null(ferry_migration_listener_accept(L.listener, NULL, &error));
    assert_error_contains(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_MISMATCH,
                          "does not speak TLS (its first byte is 0x89, not a TLS handshake); "
                          "use tls: on both sides");
    g_clear_error(&error);

    /* The source reads the destination's alert where it expects the return path. */
    g_autoptr(FerryStreamReader) r = ferry_stream_reader_new(
        g_io_stream_get_input_stream(src), FERRY_STREAM_FLAG_RETURN_PATH, &config, NULL, 0, NULL);
    g_assert_false(ferry_stream_reader_read_header(r, &error));
    g_autofree char *expect = g_strdup_printf("connection to 127.0.0.1:%u: the destination "
                                              "speaks TLS; use tls: on both sides",
                                              L.uri.port);
    assert_error_contains(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_MISMATCH, expect);
    g_clear_error(&error);
    g_object_unref(src);

    /* A source that only writes finds out when a write fails. */
    src = ferry_migration_connect(&uri, NULL, NULL, &error);
    g_assert_no_error(error);
    GOutputStream *out = g_io_stream_get_output_stream(src);
    g_autofree uint8_t *buf = g_malloc0(64 * 1024);
    buf[0] = 0x89;
    g_assert_true(g_output_stream_write_all(out, buf, 16, NULL, NULL, &error));
    g_assert_null(ferry_migration_listener_accept(L.listener, NULL, NULL));
    while (g_output_stream_write_all(out, buf, 64 * 1024, NULL, NULL, &error))
        ;
    assert_error_contains(error, FERRY_TLS_ERROR, FERRY_TLS_ERROR_MISMATCH, expect);
    g_object_unref(src);
    listening_stop(&L);
}

/* ---- cancellation -------------------------------------------------------------------------- */

typedef struct {
    GIOStream *conn;
    GCancellable *cancellable;
    gssize result;
    GError *error;
} BlockedRead;

static gpointer blocked_read(gpointer data)
{
    BlockedRead *b = data;
    uint8_t buf[4096];
    b->result = g_input_stream_read(g_io_stream_get_input_stream(b->conn), buf, sizeof(buf),
                                    b->cancellable, &b->error);
    return NULL;
}

/* A reader with nothing to read is unblocked by abort (tcp and tls) or its cancellable. */
static void check_abort(const char *listen, const char *dir)
{
    Listening L;
    listening_start(&L, listen, dir);
    GIOStream *dst, *src;
    open_pair(&L, dir, NULL, &dst, &src);

    BlockedRead b = {.conn = dst};
    GThread *t = g_thread_new("reader", blocked_read, &b);
    ferry_migration_channel_abort(dst);
    g_thread_join(t);
    g_assert_cmpint(b.result, ==, -1);
    assert_error_contains(b.error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "was cancelled");
    g_clear_error(&b.error);
    /* The source's reader sees the connection end. */
    BlockedRead s = {.conn = src};
    blocked_read(&s);
    g_assert_cmpint(s.result, <=, 0);
    g_clear_error(&s.error);
    close_both(src, dst);

    open_pair(&L, dir, NULL, &dst, &src);
    BlockedRead c = {.conn = src, .cancellable = g_cancellable_new()};
    t = g_thread_new("reader", blocked_read, &c);
    g_cancellable_cancel(c.cancellable);
    g_thread_join(t);
    assert_error_contains(c.error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "was cancelled");
    g_clear_error(&c.error);
    g_object_unref(c.cancellable);
    g_object_unref(src);
    g_object_unref(dst);
    listening_stop(&L);
}

static void test_abort_tcp(void)
{
    check_abort("tcp:127.0.0.1:0", NULL);
}

static void test_abort_tls(void)
{
    check_abort("tls:127.0.0.1:0", "good");
}

typedef struct {
    FerryMigrationListener *l;
    GCancellable *cancellable;
    GIOStream *conn;
    GError *error;
} BlockedAccept;

static gpointer blocked_accept(gpointer data)
{
    BlockedAccept *b = data;
    b->conn = ferry_migration_listener_accept(b->l, b->cancellable, &b->error);
    return NULL;
}

static void test_cancel_accept_and_connect(void)
{
    /* accept with no source */
    Listening L;
    listening_start(&L, "tls:127.0.0.1:0", "good");
    BlockedAccept b = {.l = L.listener, .cancellable = g_cancellable_new()};
    GThread *t = g_thread_new("accept", blocked_accept, &b);
    g_cancellable_cancel(b.cancellable);
    g_thread_join(t);
    g_assert_null(b.conn);
    g_assert_error(b.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
    g_clear_error(&b.error);
    g_object_unref(b.cancellable);
    listening_stop(&L);

    /* a TLS handshake with a destination that never answers (nobody accepts) */
    listening_start(&L, "tcp:127.0.0.1:0", NULL);
    Connecting *C = connect_start(&L, FERRY_MIGRATION_TRANSPORT_TLS, "good", NULL);
    g_cancellable_cancel(C->cancellable);
    g_autoptr(GError) error = NULL;
    g_assert_null(connect_finish(C, &error));
    g_assert_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
    listening_stop(&L);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    tmp_root = g_dir_make_tmp("ferry-channel-XXXXXX", NULL);
    g_assert_nonnull(tmp_root);
    make_certs();

    g_test_add_func("/channel/uri/good", test_uri_good);
    g_test_add_func("/channel/uri/bad", test_uri_bad);
    g_test_add_func("/channel/tcp/round-trip", test_tcp_round_trip);
    g_test_add_func("/channel/tcp/refused", test_tcp_refused);
    g_test_add_func("/channel/tcp/link-down", test_tcp_link_down);
    g_test_add_func("/channel/unix/round-trip", test_unix_round_trip);
    g_test_add_func("/channel/fd/handover", test_fd_handover);
    g_test_add_func("/channel/tls/round-trip", test_tls_round_trip);
    g_test_add_func("/channel/tls/ipv6", test_tls_ipv6);
    g_test_add_func("/channel/tls/state-stream", test_tls_state_stream);
    g_test_add_func("/channel/tls/missing-files", test_tls_missing_files);
    g_test_add_func("/channel/tls/wrong-ca", test_tls_wrong_ca);
    g_test_add_func("/channel/tls/source-untrusted", test_tls_source_untrusted);
    g_test_add_func("/channel/tls/expired", test_tls_expired);
    g_test_add_func("/channel/tls/hostname", test_tls_hostname);
    g_test_add_func("/channel/tls/wrong-purpose", test_tls_wrong_purpose);
    g_test_add_func("/channel/tls/no-client-certificate", test_tls_no_client_certificate);
    g_test_add_func("/channel/tls/client-to-plain-listener", test_tls_client_plain_listener);
    g_test_add_func("/channel/tls/plain-client-to-listener", test_plain_client_tls_listener);
    g_test_add_func("/channel/abort/tcp", test_abort_tcp);
    g_test_add_func("/channel/abort/tls", test_abort_tls);
    g_test_add_func("/channel/cancel/accept-and-connect", test_cancel_accept_and_connect);

    int ret = g_test_run();
    remove_tree(tmp_root);
    g_free(tmp_root);
    return ret;
}
