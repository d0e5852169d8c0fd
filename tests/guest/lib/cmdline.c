/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "lib/cmdline.h"
#include "lib/string.h"

/* Returns the value of the last `key[=value]` word: pointer after '=' (or to the
 * word's end if there is no '='), or NULL if the key is absent. */
static const char *find(const char *s, const char *key)
{
    size_t klen = strlen(key);
    const char *found = NULL;

    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == '\n')
            s++;
        if (!*s)
            break;
        const char *w = s;
        while (*s && *s != ' ' && *s != '\t' && *s != '\n')
            s++;
        if ((size_t)(s - w) >= klen && strncmp(w, key, klen) == 0 &&
            (w[klen] == '=' || w + klen == s))
            found = w[klen] == '=' ? w + klen + 1 : w + klen;
    }
    return found;
}

bool cmdline_has(const char *cmdline, const char *key)
{
    return find(cmdline, key) != NULL;
}

bool cmdline_is(const char *cmdline, const char *key, const char *value)
{
    const char *v = find(cmdline, key);
    size_t n = strlen(value);

    return v && strncmp(v, value, n) == 0 && (v[n] == 0 || v[n] == ' ' || v[n] == '\t' ||
                                               v[n] == '\n');
}

u64 cmdline_u64(const char *cmdline, const char *key, u64 dflt)
{
    const char *v = find(cmdline, key);
    unsigned base = 10;
    u64 n = 0;

    if (!v || *v < '0' || *v > '9')
        return dflt;
    if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
        base = 16;
        v += 2;
    }
    for (;; v++) {
        unsigned d;
        if (*v >= '0' && *v <= '9')
            d = *v - '0';
        else if (base == 16 && *v >= 'a' && *v <= 'f')
            d = *v - 'a' + 10;
        else if (base == 16 && *v >= 'A' && *v <= 'F')
            d = *v - 'A' + 10;
        else
            break;
        n = n * base + d;
    }
    if (*v && *v != ' ' && *v != '\t' && *v != '\n')
        return dflt;
    return n;
}

bool cmdline_str(const char *cmdline, const char *key, char *buf, size_t size)
{
    const char *v = find(cmdline, key);
    size_t n = 0;

    if (!v)
        return false;
    while (v[n] && v[n] != ' ' && v[n] != '\t' && v[n] != '\n' && n + 1 < size) {
        buf[n] = v[n];
        n++;
    }
    buf[n] = 0;
    return true;
}
