/*
 * Guest RAM: one memfd holding all of it, mapped once into the VMM, and the table of
 * regions (memslots) that every user — devices, dirty tracking, migration — goes through to
 * translate a guest-physical address (GPA) into a host virtual address (HVA).
 *
 * The memory is ordinary shared memory (swappable, never locked).  The memfd is named
 * "ferry-guest-ram" so it shows as such in /proc/PID/maps and smaps.
 *
 * Layout (layout.h): RAM up to 3 GiB at GPA 0, the rest at 4 GiB.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

#define FERRY_MEMORY_ERROR (ferry_memory_error_quark())
GQuark ferry_memory_error_quark(void);

typedef enum {
    FERRY_MEMORY_ERROR_SIZE,    /* a size the host or KVM cannot give */
    FERRY_MEMORY_ERROR_SYSTEM,  /* memfd/mmap/ioctl failure */
    FERRY_MEMORY_ERROR_RANGE,   /* a GPA range outside guest RAM */
} FerryMemoryError;

#define FERRY_MAX_RAM_REGIONS 4

#define FERRY_PAGE_SIZE 4096ULL

typedef struct {
    uint64_t gpa;       /* first guest-physical byte */
    uint64_t size;      /* bytes, page-aligned */
    uint8_t *hva;       /* where it is mapped in the VMM */
    uint64_t fd_offset; /* offset of the region in the memfd */
    uint32_t slot;      /* KVM memslot number */
    /*
     * Pages the VMM itself wrote (one bit per 4 KiB page, bit i of word i / 64), set
     * atomically from any thread.  KVM's dirty log does not see these writes; the migration
     * engine merges the two.
     */
    uint64_t *vmm_dirty;
} FerryMemRegion;

typedef struct {
    int memfd;          /* owned */
    uint8_t *base;      /* mapping of the whole memfd */
    uint64_t total;     /* bytes of RAM */
    unsigned nr_regions;
    FerryMemRegion regions[FERRY_MAX_RAM_REGIONS];
} FerryGuestMemory;

/*
 * Creates @ram_bytes (a multiple of 4 KiB, > 0) of guest RAM laid out as in layout.h.
 * Fails with FERRY_MEMORY_ERROR_SIZE if the host's RAM plus swap is smaller than
 * @ram_bytes (no guest could use it; ferry does not overcommit beyond the host), or if the
 * memfd or mapping cannot be made.
 */
FerryGuestMemory *ferry_guest_memory_new(uint64_t ram_bytes, GError **error);

/* Registers every region as a KVM memslot on @vm_fd. */
gboolean ferry_guest_memory_register(FerryGuestMemory *mem, int vm_fd, GError **error);

/*
 * Returns the HVA of [@gpa, @gpa + @len) if the range lies wholly inside one RAM region,
 * else NULL.  The pointer stays valid for the life of @mem.
 */
void *ferry_guest_memory_hva(const FerryGuestMemory *mem, uint64_t gpa, uint64_t len);

/*
 * Copies into/out of guest RAM; the range may span regions but must be all RAM.  Every
 * write the VMM makes into guest memory goes through ferry_guest_memory_write() (the
 * migration engine's dirty tracking relies on it).  Errors: FERRY_MEMORY_ERROR_RANGE.
 */
gboolean ferry_guest_memory_write(FerryGuestMemory *mem, uint64_t gpa, const void *buf,
                                  uint64_t len, GError **error);
gboolean ferry_guest_memory_read(const FerryGuestMemory *mem, uint64_t gpa, void *buf,
                                 uint64_t len, GError **error);

/*
 * Marks the pages of [@gpa, @gpa + @len) dirty in the VMM-side bitmap (any thread).  For
 * device writes that bypass ferry_guest_memory_write() (buffers filled in place through
 * an HVA, e.g. block reads); parts outside RAM are ignored.
 */
void ferry_guest_memory_mark_dirty(FerryGuestMemory *mem, uint64_t gpa, uint64_t len);

/*
 * Copies the VMM-side dirty bits of region @index into @out (region size / 4 KiB bits,
 * rounded up to whole uint64_t words) and clears them, atomically per word.
 */
void ferry_guest_memory_take_vmm_dirty(FerryGuestMemory *mem, unsigned index, uint64_t *out);

/* Returns all of guest RAM to zero and its pages to the host (machine reset). */
void ferry_guest_memory_discard(FerryGuestMemory *mem);

/* Low RAM end (exclusive) and high RAM size, as laid out. */
uint64_t ferry_guest_memory_low_end(const FerryGuestMemory *mem);

void ferry_guest_memory_free(FerryGuestMemory *mem);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryGuestMemory, ferry_guest_memory_free)
