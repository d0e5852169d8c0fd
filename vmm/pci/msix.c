#include "pci/msix.h"

#include "util/log.h"

#include <string.h>

#define MSIX_CTRL_ENABLE        0x8000
#define MSIX_CTRL_FUNCTION_MASK 0x4000
#define MSIX_ENTRY_CTRL_MASKED  0x1

gboolean ferry_msix_init(FerryMsix *m, FerryPciDevice *pci, FerryIrqRouting *routing,
                         unsigned nr_vectors, unsigned bar, uint32_t table_offset,
                         uint32_t pba_offset, GError **error)
{
    g_assert(nr_vectors >= 1 && nr_vectors <= FERRY_MSIX_MAX_VECTORS);
    memset(m, 0, sizeof(*m));
    g_mutex_init(&m->lock);
    m->pci = pci;
    m->routing = routing;
    m->nr_vectors = nr_vectors;
    m->table_offset = table_offset;
    m->pba_offset = pba_offset;
    for (unsigned i = 0; i < nr_vectors; i++) {
        m->gsi[i] = ferry_irq_routing_add_msi(routing, error);
        if (m->gsi[i] < 0)
            return FALSE;
    }
    /* Capability (section 6.8.2.1): control, table offset/BIR, PBA offset/BIR. */
    uint8_t body[12] = {0}, wmask[12] = {0};
    uint16_t ctrl = (uint16_t) (nr_vectors - 1);
    body[2] = ctrl & 0xff;
    body[3] = ctrl >> 8;
    uint32_t t = table_offset | bar, p = pba_offset | bar;
    for (int i = 0; i < 4; i++) {
        body[4 + i] = (t >> (8 * i)) & 0xff;
        body[8 + i] = (p >> (8 * i)) & 0xff;
    }
    wmask[3] = (MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK) >> 8;
    m->cap = ferry_pci_device_add_cap(pci, PCI_CAP_ID_MSIX, body, wmask, sizeof(body));
    ferry_msix_reset(m);
    return TRUE;
}

static gboolean vector_masked(const FerryMsix *m, unsigned v)
{
    return m->function_masked || (m->entries[v].ctrl & MSIX_ENTRY_CTRL_MASKED);
}

/* Lock held: programs the route of an unmasked vector and delivers what is pending. */
static void sync_vector(FerryMsix *m, unsigned v)
{
    if (!m->enabled || vector_masked(m, v))
        return;
    const FerryMsixEntry *e = &m->entries[v];
    g_autoptr(GError) error = NULL;
    if (!ferry_irq_routing_set_msi(m->routing, m->gsi[v],
                                   (uint64_t) e->addr_hi << 32 | e->addr_lo, e->data, &error)) {
        ferry_log("%s: MSI-X vector %u: %s", m->pci->name, v, error->message);
        return;
    }
    if (m->pending & (1ULL << v)) {
        m->pending &= ~(1ULL << v);
        ferry_irq_routing_fire(m->routing, m->gsi[v]);
    }
}

gboolean ferry_msix_bar_access(FerryMsix *m, uint64_t offset, uint8_t *data, uint32_t len,
                               gboolean is_write)
{
    uint64_t table_len = (uint64_t) m->nr_vectors * FERRY_MSIX_ENTRY_SIZE;
    uint64_t pba_len = ((m->nr_vectors + 63) / 64) * 8;
    if (offset >= m->table_offset && offset + len <= m->table_offset + table_len) {
        uint64_t rel = offset - m->table_offset;
        unsigned v = (unsigned) (rel / FERRY_MSIX_ENTRY_SIZE);
        unsigned field = (unsigned) (rel % FERRY_MSIX_ENTRY_SIZE);
        if ((len != 4 && len != 8) || field % 4 || field + len > FERRY_MSIX_ENTRY_SIZE) {
            /* Section 6.8.2: table accesses are DWORD or QWORD aligned ones. */
            if (!is_write)
                memset(data, 0xff, len);
            return TRUE;
        }
        g_mutex_lock(&m->lock);
        uint8_t *raw = (uint8_t *) &m->entries[v];
        if (is_write) {
            gboolean was_masked = vector_masked(m, v);
            FerryMsixEntry before = m->entries[v];
            memcpy(raw + field, data, len); /* host and table are both little-endian */
            m->entries[v].ctrl &= MSIX_ENTRY_CTRL_MASKED;
            gboolean changed = memcmp(&before, &m->entries[v], sizeof(before)) != 0;
            if (changed && (was_masked || !vector_masked(m, v)))
                sync_vector(m, v);
        } else {
            memcpy(data, raw + field, len);
        }
        g_mutex_unlock(&m->lock);
        return TRUE;
    }
    if (offset >= m->pba_offset && offset + len <= m->pba_offset + pba_len) {
        if (!is_write) {
            g_mutex_lock(&m->lock);
            uint64_t pba = m->pending;
            g_mutex_unlock(&m->lock);
            unsigned rel = (unsigned) (offset - m->pba_offset);
            for (uint32_t i = 0; i < len; i++)
                data[i] = rel + i < 8 ? (pba >> (8 * (rel + i))) & 0xff : 0;
        }
        return TRUE;
    }
    return FALSE;
}

void ferry_msix_config_written(FerryMsix *m)
{
    uint16_t ctrl = ferry_pci_get_word(m->pci, m->cap + 2);
    g_mutex_lock(&m->lock);
    m->enabled = (ctrl & MSIX_CTRL_ENABLE) != 0;
    m->function_masked = (ctrl & MSIX_CTRL_FUNCTION_MASK) != 0;
    for (unsigned v = 0; v < m->nr_vectors; v++)
        sync_vector(m, v);
    g_mutex_unlock(&m->lock);
}

void ferry_msix_notify(FerryMsix *m, unsigned vector)
{
    if (vector >= m->nr_vectors)
        return;
    g_mutex_lock(&m->lock);
    if (!m->enabled) {
        g_mutex_unlock(&m->lock);
        return;
    }
    if (vector_masked(m, vector)) {
        m->pending |= 1ULL << vector;
        g_mutex_unlock(&m->lock);
        return;
    }
    int gsi = m->gsi[vector];
    g_mutex_unlock(&m->lock);
    ferry_irq_routing_fire(m->routing, gsi);
}

void ferry_msix_reset(FerryMsix *m)
{
    g_mutex_lock(&m->lock);
    m->enabled = FALSE;
    m->function_masked = FALSE;
    m->pending = 0;
    for (unsigned v = 0; v < m->nr_vectors; v++)
        m->entries[v] = (FerryMsixEntry){.ctrl = MSIX_ENTRY_CTRL_MASKED};
    g_mutex_unlock(&m->lock);
}

void ferry_msix_save(FerryMsix *m, FerryStateWriter *w)
{
    g_mutex_lock(&m->lock);
    ferry_state_put_u8(w, (uint8_t) m->nr_vectors);
    for (unsigned v = 0; v < m->nr_vectors; v++) {
        ferry_state_put_u32(w, m->entries[v].addr_lo);
        ferry_state_put_u32(w, m->entries[v].addr_hi);
        ferry_state_put_u32(w, m->entries[v].data);
        ferry_state_put_u32(w, m->entries[v].ctrl);
    }
    ferry_state_put_u64(w, m->pending);
    g_mutex_unlock(&m->lock);
}

gboolean ferry_msix_read_state(const FerryMsix *m, FerryStateReader *r, FerryMsixState *state,
                               GError **error)
{
    uint8_t n;
    if (!ferry_state_get_u8(r, &n, error))
        return FALSE;
    if (n != m->nr_vectors) {
        g_set_error(error, FERRY_STATE_ERROR, FERRY_STATE_ERROR_INVALID,
                    "%s: %u MSI-X vectors in the saved state, %u here", m->pci->name, n,
                    m->nr_vectors);
        return FALSE;
    }
    memset(state, 0, sizeof(*state));
    for (unsigned v = 0; v < n; v++) {
        FerryMsixEntry *e = &state->entries[v];
        if (!ferry_state_get_u32(r, &e->addr_lo, error) ||
            !ferry_state_get_u32(r, &e->addr_hi, error) ||
            !ferry_state_get_u32(r, &e->data, error) || !ferry_state_get_u32(r, &e->ctrl, error))
            return FALSE;
        e->ctrl &= MSIX_ENTRY_CTRL_MASKED;
    }
    if (!ferry_state_get_u64(r, &state->pending, error))
        return FALSE;
    state->pending &= n == 64 ? ~0ULL : (1ULL << n) - 1;
    return TRUE;
}

void ferry_msix_set_state(FerryMsix *m, const FerryMsixState *state)
{
    g_mutex_lock(&m->lock);
    memcpy(m->entries, state->entries, m->nr_vectors * sizeof(state->entries[0]));
    m->pending = state->pending;
    g_mutex_unlock(&m->lock);
    /* enable/function mask come from configuration space, loaded by the PCI host */
    ferry_msix_config_written(m);
}

void ferry_msix_clear(FerryMsix *m)
{
    g_mutex_clear(&m->lock);
}
