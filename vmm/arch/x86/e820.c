#include "arch/x86/e820.h"

#include "arch/x86/layout.h"

unsigned ferry_e820_build(uint64_t low_end, uint64_t high_size, FerryE820Entry *out)
{
    unsigned n = 0;
    out[n++] = (FerryE820Entry){0, FERRY_EBDA_START, FERRY_E820_RAM};
    out[n++] = (FerryE820Entry){FERRY_ACPI_START, FERRY_ACPI_END - FERRY_ACPI_START,
                                FERRY_E820_ACPI};
    out[n++] = (FerryE820Entry){FERRY_HIMEM_START, low_end - FERRY_HIMEM_START, FERRY_E820_RAM};
    if (high_size)
        out[n++] = (FerryE820Entry){FERRY_HIGH_RAM_START, high_size, FERRY_E820_RAM};
    return n;
}
