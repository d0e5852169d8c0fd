/*
 * Auto-converge throttling (vcpu_throttle.h).
 *
 * Each throttled VM has one Throttle: its thread and percentage.  They live in a table of
 * this module keyed by the FerryVm, so FerryVm itself needs no field; ferry_vm_free() calls
 * ferry_vcpu_throttle_cleanup() to end the thread before the vCPUs go.
 *
 * Why a sleep cannot delay a pause or stop: every such request first closes the run gate and
 * then kicks (vm.c: the gate flag is set before ferry_vcpu_kick(), which sets immediate_exit
 * before it sends the signal).  The vCPU blocks the kick signal, then looks at the gate flag
 * and immediate_exit, then sleeps in ppoll() with the signal unblocked again.  A kick before
 * the block left one of the two flags set, so the sleep is skipped; a kick after it stays
 * pending until ppoll() unblocks it, which then returns EINTR at once.
 */
#include "vcpu_throttle.h"

#include "util/log.h"
#include "vm.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <time.h>

typedef struct {
    FerryVm *vm;
    GThread *thread;
    GMutex lock;
    GCond cond;
    unsigned percent; /* under lock */
    gboolean quit;    /* under lock */
} Throttle;

static GMutex table_lock;
static GHashTable *table; /* FerryVm * → Throttle *; under table_lock */

uint64_t ferry_vcpu_throttle_sleep_ns(unsigned percent)
{
    percent = MIN(percent, FERRY_VCPU_THROTTLE_MAX);
    return (uint64_t) FERRY_VCPU_THROTTLE_TIMESLICE_NS * percent / (100 - percent);
}

uint64_t ferry_vcpu_throttle_period_ns(unsigned percent)
{
    return FERRY_VCPU_THROTTLE_TIMESLICE_NS + ferry_vcpu_throttle_sleep_ns(percent);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

void ferry_vcpu_throttle_point(FerryVcpu *v)
{
    uint64_t ns = __atomic_exchange_n(&v->throttle_request_ns, 0, __ATOMIC_SEQ_CST);
    if (!ns)
        return;

    sigset_t kick, unblocked;
    sigemptyset(&kick);
    sigaddset(&kick, FERRY_VCPU_KICK_SIGNAL);
    pthread_sigmask(SIG_BLOCK, &kick, &unblocked);
    sigdelset(&unblocked, FERRY_VCPU_KICK_SIGNAL);

    if (!__atomic_load_n(&v->run->immediate_exit, __ATOMIC_SEQ_CST) &&
        !g_atomic_int_get(&v->vm->gate_closed)) {
        g_atomic_int_set(&v->throttle_sleeping, 1);
        __atomic_fetch_add(&v->throttle_sleeps, 1, __ATOMIC_RELAXED);
        uint64_t start = now_ns(), deadline = start + ns, now = start;
        while (now < deadline) {
            struct timespec ts = {.tv_sec = (time_t) ((deadline - now) / 1000000000u),
                                  .tv_nsec = (long) ((deadline - now) % 1000000000u)};
            int r = ppoll(NULL, 0, &ts, &unblocked);
            now = now_ns();
            if (r < 0) {
                if (errno == EINTR)
                    __atomic_fetch_add(&v->throttle_cut_short, 1, __ATOMIC_RELAXED);
                break;
            }
        }
        __atomic_fetch_add(&v->throttle_slept_ns, now - start, __ATOMIC_RELAXED);
        g_atomic_int_set(&v->throttle_sleeping, 0);
    }
    pthread_sigmask(SIG_UNBLOCK, &kick, NULL);
}

/* Asks every vCPU of @vm for a sleep of @ns (0 withdraws a request) and kicks it. */
static void request_all(FerryVm *vm, uint64_t ns)
{
    for (unsigned i = 0; i < vm->nr_vcpus; i++) {
        __atomic_store_n(&vm->vcpus[i]->throttle_request_ns, ns, __ATOMIC_SEQ_CST);
        ferry_vcpu_kick(vm->vcpus[i]);
    }
}

static gpointer throttle_thread(gpointer data)
{
    Throttle *t = data;
    g_mutex_lock(&t->lock);
    while (!t->quit) {
        unsigned percent = t->percent;
        g_mutex_unlock(&t->lock);
        request_all(t->vm, ferry_vcpu_throttle_sleep_ns(percent));
        g_mutex_lock(&t->lock);
        gint64 deadline =
            g_get_monotonic_time() + (gint64) (ferry_vcpu_throttle_period_ns(percent) / 1000);
        /* A new percentage ticks at once, so that it takes effect without waiting. */
        while (!t->quit && t->percent == percent)
            if (!g_cond_wait_until(&t->cond, &t->lock, deadline))
                break;
    }
    g_mutex_unlock(&t->lock);
    return NULL;
}

/* Ends @t's thread and any sleep it asked for; table_lock held, @t out of the table. */
static void throttle_free(Throttle *t)
{
    g_mutex_lock(&t->lock);
    t->quit = TRUE;
    g_cond_broadcast(&t->cond);
    g_mutex_unlock(&t->lock);
    g_thread_join(t->thread);
    request_all(t->vm, 0);
    g_mutex_clear(&t->lock);
    g_cond_clear(&t->cond);
    g_free(t);
}

void ferry_vcpu_throttle_set(FerryVm *vm, unsigned percent)
{
    percent = MIN(percent, FERRY_VCPU_THROTTLE_MAX);
    g_mutex_lock(&table_lock);
    if (!table)
        table = g_hash_table_new(NULL, NULL);
    Throttle *t = g_hash_table_lookup(table, vm);
    if (percent == 0) {
        if (t) {
            g_hash_table_remove(table, vm);
            throttle_free(t);
        }
    } else if (t) {
        /* The thread ticks at once: its kicks end sleeps sized for the old percentage. */
        g_mutex_lock(&t->lock);
        t->percent = percent;
        g_cond_broadcast(&t->cond);
        g_mutex_unlock(&t->lock);
    } else {
        t = g_new0(Throttle, 1);
        t->vm = vm;
        t->percent = percent;
        g_mutex_init(&t->lock);
        g_cond_init(&t->cond);
        g_autoptr(GError) error = NULL;
        t->thread = g_thread_try_new("vcpu-throttle", throttle_thread, t, &error);
        if (!t->thread) {
            ferry_log("cannot start the vCPU throttle thread: %s; vCPUs are not throttled",
                      error->message);
            g_mutex_clear(&t->lock);
            g_cond_clear(&t->cond);
            g_free(t);
        } else {
            g_hash_table_insert(table, vm, t);
        }
    }
    g_mutex_unlock(&table_lock);
}

unsigned ferry_vcpu_throttle_get(FerryVm *vm)
{
    unsigned percent = 0;
    g_mutex_lock(&table_lock);
    Throttle *t = table ? g_hash_table_lookup(table, vm) : NULL;
    if (t) {
        g_mutex_lock(&t->lock);
        percent = t->percent;
        g_mutex_unlock(&t->lock);
    }
    g_mutex_unlock(&table_lock);
    return percent;
}

void ferry_vcpu_throttle_cleanup(FerryVm *vm)
{
    ferry_vcpu_throttle_set(vm, 0);
}
