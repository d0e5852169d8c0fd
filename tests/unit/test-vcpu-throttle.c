/*
 * Unit tests: auto-converge throttling (vmm/vcpu_throttle.c).  The sleep-time arithmetic, then
 * a real vCPU thread (vcpu.c's run loop, vm.c's run gate) running an endless guest loop in a
 * VM assembled here without devices: it must sleep when throttled, and a pause or a throttle
 * change must end a sleep at once.  The parts using KVM are skipped without /dev/kvm.  No
 * assertion depends on timing; the measured share of time slept is printed.
 */
#include "vcpu_throttle.h"
#include "vm.h"

#include "arch/x86/layout.h"

#include <glib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define MS 1000000ULL

static void test_arithmetic(void)
{
    g_assert_cmpuint(ferry_vcpu_throttle_sleep_ns(0), ==, 0);
    g_assert_cmpuint(ferry_vcpu_throttle_period_ns(0), ==, 10 * MS);
    g_assert_cmpuint(ferry_vcpu_throttle_sleep_ns(20), ==, 2500000);
    g_assert_cmpuint(ferry_vcpu_throttle_sleep_ns(50), ==, 10 * MS);
    g_assert_cmpuint(ferry_vcpu_throttle_period_ns(50), ==, 20 * MS);
    g_assert_cmpuint(ferry_vcpu_throttle_sleep_ns(75), ==, 30 * MS);
    g_assert_cmpuint(ferry_vcpu_throttle_sleep_ns(90), ==, 90 * MS);
    g_assert_cmpuint(ferry_vcpu_throttle_sleep_ns(99), ==, 990 * MS);
    g_assert_cmpuint(ferry_vcpu_throttle_sleep_ns(100), ==, 990 * MS); /* clamped */
    g_assert_cmpuint(ferry_vcpu_throttle_sleep_ns(1000), ==, 990 * MS);
    /* The share asleep is percent / 100 (to a nanosecond of rounding). */
    for (unsigned p = 0; p <= 99; p++) {
        uint64_t sleep = ferry_vcpu_throttle_sleep_ns(p), period = ferry_vcpu_throttle_period_ns(p);
        g_assert_cmpuint(period, ==, 10 * MS + sleep);
        int64_t diff = (int64_t) (sleep * 100) - (int64_t) (p * period);
        g_assert_cmpint(diff, <=, 0);
        g_assert_cmpint(diff, >, -100);
        if (p)
            g_assert_cmpuint(sleep, >, ferry_vcpu_throttle_sleep_ns(p - 1));
    }
}

/* A VM with 16 MiB of RAM and one running vCPU looping on `jmp $` in real mode; NULL = skip. */
static FerryVm *vm_new(void)
{
    if (access("/dev/kvm", F_OK) != 0) {
        g_test_skip("/dev/kvm is absent");
        return NULL;
    }
    g_autoptr(GError) err = NULL;
    FerryVm *vm = g_new0(FerryVm, 1);
    g_mutex_init(&vm->lock);
    g_cond_init(&vm->cond);
    vm->devices = g_ptr_array_new();
    vm->kvm = ferry_kvm_open("/dev/kvm", &err);
    g_assert_no_error(err);
    g_assert_true(ferry_kvm_create_vm(vm->kvm, FERRY_KVM_TSS, FERRY_KVM_IDENTITY_MAP, &err));
    vm->mem = ferry_guest_memory_new(16 * FERRY_MIB, &err);
    g_assert_no_error(err);
    g_assert_true(ferry_guest_memory_register(vm->mem, vm->kvm->vm_fd, &err));
    static const uint8_t loop[] = {0xeb, 0xfe}; /* jmp $ */
    g_assert_true(ferry_guest_memory_write(vm->mem, 0x1000, loop, sizeof(loop), &err));

    vm->nr_vcpus = 1;
    vm->vcpus = g_new0(FerryVcpu *, 1);
    FerryVcpu *v = ferry_vcpu_new(vm, vm->kvm, 0, 1, &err);
    g_assert_no_error(err);
    vm->vcpus[0] = v;
    struct kvm_sregs s;
    g_assert_cmpint(ioctl(v->fd, KVM_GET_SREGS, &s), ==, 0);
    s.cs.selector = 0;
    s.cs.base = 0;
    g_assert_cmpint(ioctl(v->fd, KVM_SET_SREGS, &s), ==, 0);
    struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2};
    g_assert_cmpint(ioctl(v->fd, KVM_SET_REGS, &regs), ==, 0);

    ferry_vcpu_install_kick_handler();
    vm->nr_running = 1;
    g_assert_true(ferry_vcpu_start(v, &err));
    return vm;
}

static uint64_t get(uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

/* Waits (no time limit: the test's timeout is the limit) until the vCPU sleeps. */
static void wait_sleeping(FerryVcpu *v)
{
    while (!g_atomic_int_get(&v->throttle_sleeping))
        g_usleep(200);
}

static void wait_awake(FerryVcpu *v)
{
    while (g_atomic_int_get(&v->throttle_sleeping))
        g_usleep(200);
}

static void test_sleeps(void)
{
    FerryVm *vm = vm_new();
    if (!vm)
        return;
    FerryVcpu *v = vm->vcpus[0];
    g_assert_cmpuint(ferry_vcpu_throttle_get(vm), ==, 0);
    g_usleep(20 * 1000);
    g_assert_cmpuint(get(&v->throttle_sleeps), ==, 0); /* not throttled: never sleeps */

    for (unsigned percent = 20; percent <= 80; percent += 30) {
        ferry_vcpu_throttle_set(vm, percent);
        g_assert_cmpuint(ferry_vcpu_throttle_get(vm), ==, percent);
        uint64_t sleeps0 = get(&v->throttle_sleeps), slept0 = get(&v->throttle_slept_ns);
        gint64 t0 = g_get_monotonic_time();
        while (get(&v->throttle_sleeps) < sleeps0 + 20)
            g_usleep(1000);
        gint64 t1 = g_get_monotonic_time();
        double share = (double) (get(&v->throttle_slept_ns) - slept0) / 1000.0 / (double) (t1 - t0);
        g_test_message("throttle %u%%: asleep %.0f%% of %.0f ms (20 sleeps)", percent, share * 100,
                       (double) (t1 - t0) / 1000);
    }
    ferry_vcpu_throttle_set(vm, 500);
    g_assert_cmpuint(ferry_vcpu_throttle_get(vm), ==, 99);

    /* ferry_vm_free ends the throttle thread before the vCPUs (ASan sees it otherwise). */
    ferry_vm_free(vm);
}

/* A pause, a lower percentage and throttling off each end a sleep in progress. */
static void test_sleep_cut_short(void)
{
    FerryVm *vm = vm_new();
    if (!vm)
        return;
    FerryVcpu *v = vm->vcpus[0];

    ferry_vcpu_throttle_set(vm, 99); /* 990 ms sleeps */
    wait_sleeping(v);
    uint64_t cut = get(&v->throttle_cut_short);
    gint64 t0 = g_get_monotonic_time();
    ferry_vm_pause(vm);
    g_test_message("pause during a 990 ms sleep took %.2f ms",
                   (double) (g_get_monotonic_time() - t0) / 1000);
    g_assert_false(g_atomic_int_get(&v->throttle_sleeping));
    g_assert_cmpuint(get(&v->throttle_cut_short), ==, cut + 1);
    /* Parked: ticks go on but the vCPU does not sleep at the gate's expense. */
    uint64_t sleeps = get(&v->throttle_sleeps);
    g_usleep(30 * 1000);
    g_assert_cmpuint(get(&v->throttle_sleeps), ==, sleeps);
    ferry_vm_resume(vm);

    wait_sleeping(v);
    cut = get(&v->throttle_cut_short);
    ferry_vcpu_throttle_set(vm, 10);
    wait_awake(v);
    g_assert_cmpuint(get(&v->throttle_cut_short), ==, cut + 1);

    ferry_vcpu_throttle_set(vm, 99);
    wait_sleeping(v);
    cut = get(&v->throttle_cut_short);
    t0 = g_get_monotonic_time();
    ferry_vcpu_throttle_set(vm, 0);
    wait_awake(v);
    g_test_message("throttle off during a 990 ms sleep: awake after %.2f ms",
                   (double) (g_get_monotonic_time() - t0) / 1000);
    g_assert_cmpuint(get(&v->throttle_cut_short), ==, cut + 1);
    g_assert_cmpuint(ferry_vcpu_throttle_get(vm), ==, 0);
    g_assert_cmpuint(get(&v->throttle_request_ns), ==, 0); /* nothing left asked for */

    /* Stopping the VM while it sleeps. */
    ferry_vcpu_throttle_set(vm, 99);
    wait_sleeping(v);
    ferry_vm_free(vm);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/vcpu-throttle/arithmetic", test_arithmetic);
    g_test_add_func("/vcpu-throttle/sleeps", test_sleeps);
    g_test_add_func("/vcpu-throttle/sleep-cut-short", test_sleep_cut_short);
    return g_test_run();
}
