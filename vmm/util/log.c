#include "util/log.h"

#include <stdio.h>

void ferry_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "ferry-vmm: %s\n", msg);
}
