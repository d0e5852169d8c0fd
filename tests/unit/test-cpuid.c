/* Unit tests: per-vCPU CPUID (vmm/arch/x86/cpuid.c). */
#include "arch/x86/cpuid.h"

#include <glib.h>

static struct kvm_cpuid2 *fake_supported(void)
{
    struct kvm_cpuid2 *c = g_malloc0(sizeof(*c) + 16 * sizeof(struct kvm_cpuid_entry2));
    struct kvm_cpuid_entry2 *e = c->entries;
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 0, .eax = 0x1f};
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 1, .ebx = 0x12340800,
                                             .ecx = 0x00000001, .edx = 1u << 28};
    /* leaf 4: L1d (level 1) and L3 (level 3), host says 8 cores share L3 */
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 4, .index = 0, .flags = 1,
                                             .eax = (1 << 5) | 1 | (7u << 26)};
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 4, .index = 3, .flags = 1,
                                             .eax = (3 << 5) | 3 | (7u << 26) | (15u << 14)};
    /* host topology leaves that must be replaced */
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 0xb, .index = 0, .flags = 1,
                                             .eax = 1, .ebx = 2, .ecx = 0x100, .edx = 99};
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 0xb, .index = 1, .flags = 1,
                                             .eax = 5, .ebx = 32, .ecx = 0x201, .edx = 99};
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 0x1f, .index = 0, .flags = 1};
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 0x40000000, .ebx = 0x4b4d564b};
    e[c->nent++] = (struct kvm_cpuid_entry2){.function = 0x80000008, .eax = 0x3030,
                                             .ecx = 0x7007};
    return c;
}

static void test_apic_ids(void)
{
    g_autofree struct kvm_cpuid2 *sup = fake_supported();
    for (unsigned i = 0; i < 4; i++) {
        g_autofree struct kvm_cpuid2 *c = ferry_x86_cpuid_for_vcpu(sup, i, 4);
        struct kvm_cpuid_entry2 *l1 = ferry_x86_cpuid_find(c, 1, 0);
        g_assert_nonnull(l1);
        g_assert_cmpuint(l1->ebx >> 24, ==, i);
        g_assert_cmpuint((l1->ebx >> 16) & 0xff, ==, 4);
        g_assert_cmpuint(l1->ebx & 0xffff, ==, 0x0800); /* CLFLUSH size etc. kept */
        g_assert_true(l1->ecx & (1u << 31));           /* hypervisor */
        g_assert_true(l1->ecx & 1);                    /* host features kept */
        g_assert_true(l1->edx & (1u << 28));           /* HTT with > 1 logical CPU */

        for (uint32_t sub = 0; sub < 3; sub++) {
            struct kvm_cpuid_entry2 *t = ferry_x86_cpuid_find(c, 0xb, sub);
            g_assert_nonnull(t);
            g_assert_cmpuint(t->edx, ==, i);
            g_assert_cmpuint(t->ecx & 0xff, ==, sub);
        }
        struct kvm_cpuid_entry2 *smt = ferry_x86_cpuid_find(c, 0xb, 0);
        g_assert_cmpuint((smt->ecx >> 8) & 0xff, ==, 1);
        g_assert_cmpuint(smt->ebx, ==, 1);
        struct kvm_cpuid_entry2 *core = ferry_x86_cpuid_find(c, 0xb, 1);
        g_assert_cmpuint((core->ecx >> 8) & 0xff, ==, 2);
        g_assert_cmpuint(core->ebx, ==, 4);
        g_assert_cmpuint(core->eax, ==, 2); /* log2(4) */
        struct kvm_cpuid_entry2 *end = ferry_x86_cpuid_find(c, 0xb, 2);
        g_assert_cmpuint((end->ecx >> 8) & 0xff, ==, 0);
        g_assert_nonnull(ferry_x86_cpuid_find(c, 0x1f, 1));
    }
}

static void test_cache_and_amd_leaves(void)
{
    g_autofree struct kvm_cpuid2 *sup = fake_supported();
    g_autofree struct kvm_cpuid2 *c = ferry_x86_cpuid_for_vcpu(sup, 2, 3);
    struct kvm_cpuid_entry2 *l1d = ferry_x86_cpuid_find(c, 4, 0);
    struct kvm_cpuid_entry2 *l3 = ferry_x86_cpuid_find(c, 4, 3);
    g_assert_cmpuint(l1d->eax >> 26, ==, 2);           /* 3 cores - 1 */
    g_assert_cmpuint((l1d->eax >> 14) & 0xfff, ==, 0); /* L1 per core */
    g_assert_cmpuint((l3->eax >> 14) & 0xfff, ==, 2);  /* L3 shared by 3 */
    g_assert_cmpuint(l3->eax & 0x3fff, ==, (3 << 5) | 3);
    struct kvm_cpuid_entry2 *amd = ferry_x86_cpuid_find(c, 0x80000008, 0);
    g_assert_cmpuint(amd->ecx & 0xff, ==, 2);
    g_assert_cmpuint((amd->ecx >> 12) & 0xf, ==, 2);
    g_assert_cmpuint(amd->eax, ==, 0x3030);
    g_assert_nonnull(ferry_x86_cpuid_find(c, 0x40000000, 0));
    /* The input table is untouched. */
    g_assert_cmpuint(ferry_x86_cpuid_find(sup, 0xb, 0)->edx, ==, 99);
}

static void test_single_vcpu(void)
{
    g_autofree struct kvm_cpuid2 *sup = fake_supported();
    g_autofree struct kvm_cpuid2 *c = ferry_x86_cpuid_for_vcpu(sup, 0, 1);
    struct kvm_cpuid_entry2 *l1 = ferry_x86_cpuid_find(c, 1, 0);
    g_assert_false(l1->edx & (1u << 28));
    g_assert_cmpuint(ferry_x86_cpuid_find(c, 0xb, 1)->eax, ==, 0);
    g_assert_null(ferry_x86_cpuid_find(c, 0x12345, 0));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/cpuid/apic-ids", test_apic_ids);
    g_test_add_func("/cpuid/cache-and-amd", test_cache_and_amd_leaves);
    g_test_add_func("/cpuid/single-vcpu", test_single_vcpu);
    return g_test_run();
}
