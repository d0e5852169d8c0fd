#include "arch/x86/cpuid.h"

#include <glib.h>
#include <string.h>

#define CPUID_1_ECX_HYPERVISOR (1u << 31)
#define CPUID_1_EDX_HTT        (1u << 28)

/* x2APIC topology level types (SDM, leaf 0xB ECX[15:8]). */
#define TOPO_LEVEL_SMT  1
#define TOPO_LEVEL_CORE 2

struct kvm_cpuid_entry2 *ferry_x86_cpuid_find(struct kvm_cpuid2 *cpuid, uint32_t function,
                                              uint32_t index)
{
    for (uint32_t i = 0; i < cpuid->nent; i++) {
        struct kvm_cpuid_entry2 *e = &cpuid->entries[i];
        if (e->function != function)
            continue;
        if ((e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) && e->index != index)
            continue;
        return e;
    }
    return NULL;
}

/* Bits needed to hold IDs 0..n-1 (ceil(log2(n))). */
static unsigned order_of(unsigned n)
{
    unsigned bits = 0;
    while ((1u << bits) < n)
        bits++;
    return bits;
}

/* Fills the three sub-leaves of an extended topology leaf (0xB or 0x1F). */
static void set_topology_leaf(struct kvm_cpuid_entry2 *e, uint32_t function, uint32_t sub,
                              unsigned apic_id, unsigned nr_vcpus)
{
    memset(e, 0, sizeof(*e));
    e->function = function;
    e->index = sub;
    e->flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    e->edx = apic_id;
    switch (sub) {
    case 0: /* SMT: one thread per core */
        e->eax = 0;
        e->ebx = 1;
        e->ecx = (TOPO_LEVEL_SMT << 8) | sub;
        break;
    case 1: /* cores: all vCPUs in one package */
        e->eax = order_of(nr_vcpus);
        e->ebx = nr_vcpus;
        e->ecx = (TOPO_LEVEL_CORE << 8) | sub;
        break;
    default: /* end of the list */
        e->ecx = sub;
        break;
    }
}

struct kvm_cpuid2 *ferry_x86_cpuid_for_vcpu(const struct kvm_cpuid2 *supported, unsigned index,
                                            unsigned nr_vcpus)
{
    /* Room for the supported entries plus our own topology sub-leaves. */
    uint32_t cap = supported->nent + 8;
    struct kvm_cpuid2 *c = g_malloc0(sizeof(*c) + cap * sizeof(struct kvm_cpuid_entry2));
    gboolean has_0b = FALSE, has_1f = FALSE;

    for (uint32_t i = 0; i < supported->nent; i++) {
        const struct kvm_cpuid_entry2 *s = &supported->entries[i];
        if (s->function == 0xb) {
            has_0b = TRUE;
            continue;
        }
        if (s->function == 0x1f) {
            has_1f = TRUE;
            continue;
        }
        c->entries[c->nent++] = *s;
    }
    for (uint32_t sub = 0; sub < 3; sub++) {
        if (has_0b)
            set_topology_leaf(&c->entries[c->nent++], 0xb, sub, index, nr_vcpus);
        if (has_1f)
            set_topology_leaf(&c->entries[c->nent++], 0x1f, sub, index, nr_vcpus);
    }

    unsigned logical = MIN(nr_vcpus, 255u);
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        switch (e->function) {
        case 1:
            e->ebx = (e->ebx & 0x0000ffffu) | (logical << 16) | ((index & 0xffu) << 24);
            e->ecx |= CPUID_1_ECX_HYPERVISOR;
            if (nr_vcpus > 1)
                e->edx |= CPUID_1_EDX_HTT;
            else
                e->edx &= ~CPUID_1_EDX_HTT;
            break;
        case 4: {
            /* EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
             * Caches of level 3 and up are shared by the package, the rest per core. */
            unsigned level = (e->eax >> 5) & 7;
            unsigned sharing = level >= 3 ? nr_vcpus : 1;
            e->eax &= 0x00003fffu;
            e->eax |= ((MIN(nr_vcpus, 64u) - 1) << 26) | ((MIN(sharing, 4096u) - 1) << 14);
            break;
        }
        case 0x80000008:
            /* ECX[15:12]: APIC ID bits for cores; ECX[7:0]: cores - 1 (AMD). */
            e->ecx = (e->ecx & ~0xf0ffu) | (order_of(nr_vcpus) << 12) | ((logical - 1) & 0xff);
            break;
        case 0x8000001e:
            /* AMD extended APIC ID, compute unit = core, one node. */
            e->eax = index;
            e->ebx = index & 0xff;
            e->ecx = 0;
            break;
        default:
            break;
        }
    }
    return c;
}
