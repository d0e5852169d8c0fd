/*
 * Micro-benchmark of the machine-state stream codec (vmm/migration/stream.c).
 *
 *   bench-stream [--size MIB] [--zero-percent P] [--zstd LEVEL] [--file PATH]
 *
 * Fills SIZE MiB (default 1024) of "guest RAM" with P % zero pages (default 50) and random
 * pages, writes it as 1024-page RAM batches to PATH (default /dev/shm/ferry-bench-stream,
 * a tmpfs file; /dev/null measures the writer alone), then reads it back and copies every
 * data page into a second buffer.  Prints MiB/s of guest RAM for both directions, the stream
 * size, and the CRC-32C throughput.  No /dev/kvm needed.
 */
#include "migration/crc32c.h"
#include "migration/stream.h"

#include <fcntl.h>
#include <gio/gunixinputstream.h>
#include <gio/gunixoutputstream.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE FERRY_STREAM_PAGE_SIZE
#define MiB  (1024.0 * 1024.0)

static int size_mib = 1024;
static int zero_percent = 50;
static int zstd_level;
static char *path;

static const GOptionEntry entries[] = {
    {"size", 0, 0, G_OPTION_ARG_INT, &size_mib, "guest RAM in MiB (default 1024)", "MIB"},
    {"zero-percent", 0, 0, G_OPTION_ARG_INT, &zero_percent, "share of zero pages (50)", "P"},
    {"zstd", 0, 0, G_OPTION_ARG_INT, &zstd_level, "compress batches at this level (0 = off)",
     "LEVEL"},
    {"file", 0, 0, G_OPTION_ARG_FILENAME, &path, "output file", "PATH"},
    G_OPTION_ENTRY_NULL,
};

static uint8_t *map_ram(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        g_error("cannot map %zu bytes", bytes);
    return p;
}

static gboolean run(GError **error)
{
    size_t bytes = (size_t) size_mib << 20, npages = bytes / PAGE;
    uint8_t *src = map_ram(bytes), *dst = map_ram(bytes);
    g_autoptr(GRand) rand = g_rand_new_with_seed(1);
    FerryStreamConfig config = {0};
    FerryStreamRange layout = {0, bytes};
    static const FerryStreamConfigItem items[] = {{"memory", "bench"}};

    /*
     * Fault every page in first, as a running guest's RAM would be, then write random data
     * pages (text-like when compressing, so zstd has something to do).
     */
    memset(src, 0, bytes);
    for (size_t i = 0; i < npages; i++) {
        if ((int) g_rand_int_range(rand, 0, 100) < zero_percent)
            continue;
        uint32_t *w = (uint32_t *) (src + i * PAGE);
        for (size_t j = 0; j < PAGE / 4; j++)
            w[j] = zstd_level ? 0x20202020u + (g_rand_int(rand) & 0x0f0f0f0fu) : g_rand_int(rand);
    }
    memset(dst, 0, bytes); /* fault the destination in, as restored RAM would be */
    ferry_stream_config_digest("bench", config.digest);
    config.items = items;
    config.n_items = 1;

    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "%s: %s", path,
                    g_strerror(errno));
        return FALSE;
    }
    g_autoptr(GOutputStream) out = g_unix_output_stream_new(fd, TRUE);
    g_autoptr(FerryStreamWriter) w = ferry_stream_writer_new(out, 0, NULL);
    if (!ferry_stream_writer_set_compression(w, zstd_level, error))
        return FALSE;

    gint64 t0 = g_get_monotonic_time();
    if (!ferry_stream_writer_put_header(w, &config, error) ||
        !ferry_stream_writer_put_round(w, 0, FERRY_STREAM_ROUND_FINAL, error))
        return FALSE;
    for (size_t i = 0; i < npages; i += FERRY_STREAM_MAX_BATCH_PAGES) {
        unsigned n = (unsigned) MIN((size_t) FERRY_STREAM_MAX_BATCH_PAGES, npages - i);
        if (!ferry_stream_writer_put_ram_batch(w, i * PAGE, n, src + i * PAGE, NULL, error))
            return FALSE;
    }
    if (!ferry_stream_writer_put_end(w, error) || !g_output_stream_close(out, NULL, error))
        return FALSE;
    gint64 t1 = g_get_monotonic_time();
    FerryStreamStats ws;
    ferry_stream_writer_get_stats(w, &ws);

    double wsec = (t1 - t0) / 1e6;
    g_print("write: %.0f MiB of guest RAM (%d%% zero pages%s) in %.3f s = %.0f MiB/s; "
            "stream %.1f MiB (%" G_GUINT64_FORMAT " data pages, %" G_GUINT64_FORMAT
            " zero pages, %" G_GUINT64_FORMAT " compressed batches) to %s\n",
            bytes / MiB, zero_percent, zstd_level ? ", zstd" : "", wsec, bytes / MiB / wsec,
            ws.bytes / MiB, ws.data_pages, ws.zero_pages, ws.compressed_batches, path);

    if (strcmp(path, "/dev/null") != 0) {
        int rfd = open(path, O_RDONLY);
        if (rfd < 0) {
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "%s: %s", path,
                        g_strerror(errno));
            return FALSE;
        }
        g_autoptr(GInputStream) in = g_unix_input_stream_new(rfd, TRUE);
        g_autoptr(FerryStreamReader) r = ferry_stream_reader_new(in, 0, &config, &layout, 1, NULL);
        FerryStreamRecord rec;

        t0 = g_get_monotonic_time();
        if (!ferry_stream_reader_read_header(r, error))
            return FALSE;
        do {
            if (!ferry_stream_reader_next(r, &rec, error))
                return FALSE;
            if (rec.type == FERRY_STREAM_RECORD_RAM_BATCH) {
                FerryStreamPageIter it;
                uint64_t gpa;
                const uint8_t *data;
                ferry_stream_page_iter_init(&it, &rec);
                while (ferry_stream_page_iter_next(&it, &gpa, &data)) {
                    if (data)
                        memcpy(dst + gpa, data, PAGE);
                }
            }
        } while (rec.type != FERRY_STREAM_RECORD_END);
        t1 = g_get_monotonic_time();
        double rsec = (t1 - t0) / 1e6;
        g_print("read:  %.0f MiB of guest RAM in %.3f s = %.0f MiB/s (verify, copy into RAM)\n",
                bytes / MiB, rsec, bytes / MiB / rsec);
        if (memcmp(src, dst, bytes) != 0) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "read back different RAM");
            return FALSE;
        }
        unlink(path);
    }

    /* CRC-32C alone, over the source RAM (hot after the run). */
    size_t crc_bytes = MIN(bytes, (size_t) 256 << 20);
    t0 = g_get_monotonic_time();
    volatile uint32_t crc = ferry_crc32c(0, src, crc_bytes);
    t1 = g_get_monotonic_time();
    volatile uint32_t crc_sw = ferry_crc32c_sw(0, src, crc_bytes);
    gint64 t2 = g_get_monotonic_time();
    g_print("crc32c: %.0f MiB/s (SSE4.2 when present), %.0f MiB/s (table)%s\n",
            crc_bytes / MiB / ((t1 - t0) / 1e6), crc_bytes / MiB / ((t2 - t1) / 1e6),
            crc == crc_sw ? "" : " MISMATCH");
    munmap(src, bytes);
    munmap(dst, bytes);
    return crc == crc_sw;
}

int main(int argc, char **argv)
{
    g_autoptr(GOptionContext) ctx = g_option_context_new("- state stream codec benchmark");
    g_autoptr(GError) error = NULL;

    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
        g_printerr("%s\n", error->message);
        return 2;
    }
    if (size_mib <= 0 || zero_percent < 0 || zero_percent > 100) {
        g_printerr("--size must be > 0 and --zero-percent 0..100\n");
        return 2;
    }
    if (!path)
        path = g_strdup("/dev/shm/ferry-bench-stream");
    if (!run(&error)) {
        g_printerr("bench-stream: %s\n", error ? error->message : "CRC implementations differ");
        return 1;
    }
    return 0;
}
