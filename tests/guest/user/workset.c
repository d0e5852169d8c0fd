/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The dirty/verify workload (ferry.dirty=<MiB>, ferry.rate=<MiB/s>).
 *
 * The working set is taken from the highest RAM addresses downward (so in a
 * 6 GiB guest it lies above 4 GiB); a u32 generation per page lives in a separate
 * array at the lowest free RAM. Page i of the set is written with words
 *   w[k] = mix(gpa + 8k, key(gen[i]))
 * which ties every word to its address and to the page's generation: a page that
 * lost a write (stale generation), moved (other address) or was zeroed never
 * verifies. Generation 0 means "never written" and is not verified.
 *
 * Each CPU owns an equal contiguous slice of pages. Its loop reads the clock
 * (recording the gap since the previous read), writes pages -- first one full
 * pass at full speed to populate its slice, then at its share of ferry.rate
 * (or flat out when the rate is 0) -- and verifies VERIFY_BATCH pages cyclically
 * on every pass, so verification runs much faster than writing.
 */
#include "lib/string.h"
#include "lib/x86.h"
#include "user/stats.h"
#include "user/ulib.h"

#define PAGE            4096ull
#define WS_MAX_RANGES   16
#define WRITE_BATCH     4           /* pages per pass when the rate is unlimited */
#define FILL_BATCH      32          /* pages per pass while populating */
#define RATE_BATCH_MAX  64          /* pages per pass at most when paced */
#define VERIFY_BATCH    16          /* pages verified per pass */
#define BURST_NS        (100 * NS_PER_MS)   /* pacing credit kept at most */
#define MAX_REPORTS     8           /* FERRY-CORRUPTION lines per boot */

struct ws_range {
    u64 base;
    u64 pages;
    u64 first;                      /* index of the range's first page */
};

static struct ws_range ranges[WS_MAX_RANGES];
static u32 nranges;
static u64 total_pages;
static u32 *gen;
static u32 populated;
static u32 reports;

static inline u64 key(u32 g)
{
    return (u64)g * 0xd6e8feb86659fd93ull + 0x632be59bd9b4e019ull;
}

static inline u64 mix(u64 addr, u64 k)
{
    u64 x = (addr ^ k) * 0x9e3779b97f4a7c15ull;
    return x ^ (x >> 29);
}

static inline u64 page_gpa(u64 idx)
{
    for (u32 r = 0; r < nranges; r++) {
        if (idx < ranges[r].first + ranges[r].pages)
            return ranges[r].base + (idx - ranges[r].first) * PAGE;
    }
    return 0;
}

u32 workset_populated_cpus(void)
{
    return atomic_load(&populated);
}

struct span {
    u64 lo, hi;
};

bool workset_prepare(void)
{
    const struct boot_info *bi = &g_shared.boot;
    struct span free[E820_MAX];
    u32 nfree = 0;
    u64 total_free = 0;

    if (!g_opt.dirty_mib)
        return false;
    for (u32 i = 0; i < bi->e820_count; i++) {      /* ascending */
        const struct e820_entry *e = &bi->e820[i];
        if (e->type != E820_RAM)
            continue;
        u64 lo = ALIGN_UP(MAX(e->addr, g_shared.free_base), PAGE);
        u64 hi = ALIGN_DOWN(e->addr + e->size, PAGE);
        if (hi > lo) {
            free[nfree++] = (struct span){ lo, hi };
            total_free += hi - lo;
        }
    }

    u64 want = g_opt.dirty_mib * (MiB / PAGE);
    /* room for the pages plus their generation array (4 bytes per page) */
    u64 fit = total_free > 2 * PAGE ? (total_free - 2 * PAGE) / (PAGE + 4) : 0;
    u64 pages = MIN(want, fit);
    u64 gen_bytes = ALIGN_UP(pages * 4, PAGE);

    /* generation array: lowest free span that holds it */
    gen = NULL;
    for (u32 i = 0; i < nfree && !gen; i++) {
        if (free[i].hi - free[i].lo >= gen_bytes) {
            gen = (u32 *)free[i].lo;
            free[i].lo += gen_bytes;
        }
    }
    if (!gen || !pages) {
        uprintf("ferry-guest: no memory for ferry.dirty=%llu\n", g_opt.dirty_mib);
        g_opt.dirty_mib = 0;
        return false;
    }

    /* working set: from the top down */
    struct ws_range tmp[WS_MAX_RANGES];
    u32 n = 0;
    u64 left = pages;
    for (u32 i = nfree; i-- > 0 && left && n < WS_MAX_RANGES;) {
        u64 avail = (free[i].hi - free[i].lo) / PAGE;
        u64 take = MIN(avail, left);
        if (!take)
            continue;
        tmp[n++] = (struct ws_range){ free[i].hi - take * PAGE, take, 0 };
        left -= take;
    }
    pages -= left;
    if (pages < want)
        uprintf("ferry-guest: ferry.dirty=%llu clamped to %llu MiB (free RAM)\n",
                g_opt.dirty_mib, pages * PAGE / MiB);

    nranges = n;
    total_pages = 0;
    for (u32 i = 0; i < n; i++) {                   /* ascending order */
        ranges[i] = tmp[n - 1 - i];
        ranges[i].first = total_pages;
        total_pages += ranges[i].pages;
    }
    memset(gen, 0, total_pages * 4);
    for (u32 i = 0; i < nranges; i++)
        uprintf("FERRY-WORKSET base=0x%llx size=0x%llx cpus=%u\n",
                ranges[i].base, ranges[i].pages * PAGE, g_shared.ncpus);
    return true;
}

static void write_page(u64 idx)
{
    u32 g = gen[idx] + 1;
    if (!g)
        g = 1;
    u64 gpa = page_gpa(idx);
    u64 *p = (u64 *)gpa;
    u64 k = key(g);
    for (u64 i = 0; i < PAGE / 8; i++)
        p[i] = mix(gpa + i * 8, k);
    gen[idx] = g;
}

/* Returns true if the page had been written (and was verified). */
static bool verify_page(unsigned cpu, u64 idx)
{
    u32 g = gen[idx];
    if (!g)
        return false;
    u64 gpa = page_gpa(idx);
    const volatile u64 *p = (const volatile u64 *)gpa;
    u64 k = key(g);
    for (u64 i = 0; i < PAGE / 8; i++) {
        u64 found = p[i];
        u64 expected = mix(gpa + i * 8, k);
        if (found != expected) {
            if (atomic_inc(&reports) <= MAX_REPORTS)
                uprintf("FERRY-CORRUPTION cpu=%u gpa=0x%llx expected=0x%016llx found=0x%016llx "
                        "gen=%u\n", cpu, gpa + i * 8, expected, found, g);
            break;
        }
    }
    return true;
}

void workset_run(unsigned cpu)
{
    struct ucpu_stats *s = &g_ustats[cpu];
    u32 ncpus = g_shared.ncpus;
    u64 first = total_pages * cpu / ncpus;
    u64 count = total_pages * (cpu + 1) / ncpus - first;
    u64 rate = g_opt.rate_mib * MiB / ncpus;        /* bytes/s for this CPU */
    const u64 page_cost = PAGE * NS_PER_S;          /* credit units: bytes * ns/s */
    u64 credit = 0, wpos = 0, vpos = 0;
    bool filled = false;

    if (rate > 64 * GiB)
        rate = 64 * GiB;                            /* keeps credit math in 64 bits */
    if (!count) {
        filled = true;
        atomic_inc(&populated);
    }

    u64 last = unow(cpu), credit_t = last;
    for (;;) {
        u64 now = unow(cpu);
        stats_tick(s, &last, now);

        u64 nw = 0;
        if (!count) {
            nw = 0;
        } else if (!filled) {
            nw = FILL_BATCH;
        } else if (!g_opt.rate_mib) {
            nw = WRITE_BATCH;
        } else {
            u64 dt = now > credit_t ? MIN(now - credit_t, BURST_NS) : 0;
            credit_t = now;
            credit = MIN(credit + dt * rate, BURST_NS * rate + page_cost);
            nw = MIN(credit / page_cost, (u64)RATE_BATCH_MAX);
            credit -= nw * page_cost;
        }
        for (u64 k = 0; k < nw; k++) {
            write_page(first + wpos);
            if (++wpos == count) {
                wpos = 0;
                if (!filled) {
                    filled = true;
                    atomic_inc(&populated);
                    credit_t = unow(cpu);
                    break;
                }
            }
        }
        if (nw)
            WRITE_ONCE(s->dirtied_bytes, s->dirtied_bytes + nw * PAGE);

        u64 verified = 0;
        for (u32 k = 0; k < VERIFY_BATCH && count; k++) {
            verified += verify_page(cpu, first + vpos);
            if (++vpos == count)
                vpos = 0;
        }
        if (verified)
            WRITE_ONCE(s->verified_bytes, s->verified_bytes + verified * PAGE);

        /* The time CPU 0 spends printing counts as a gap like any other: a VM pause that
         * falls inside a print must show (it would hide a migration's downtime). */
        if (cpu == 0)
            monitor_poll(now);
    }
}
