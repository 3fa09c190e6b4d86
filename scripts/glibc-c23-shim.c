/*
 * glibc 2.38+ names for the C23 versions of the strto and scanf families, for linking objects
 * compiled against glibc >= 2.38 headers (with _GNU_SOURCE, as g++ always defines it) on a
 * build machine whose glibc is older: scripts/build-cuda.sh links this file into `yap` only when
 * it takes ggml-cuda objects compiled elsewhere (CUDA_OBJECTS, scripts/cuda-objcache.sh) that
 * call these names and the local glibc lacks them (Debian 12 has 2.36; the H100 image has 2.39).
 *
 * Each forwards to the C17 function. The one difference: C23 also reads a "0b"/"0B" prefix
 * (base 0 or 2) and scanf's %b; ggml calls them to read decimal numbers from environment
 * variables and /proc files, where both give the same result.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

long __isoc23_strtol(const char *s, char **end, int base) { return strtol(s, end, base); }
unsigned long __isoc23_strtoul(const char *s, char **end, int base) { return strtoul(s, end, base); }
long long __isoc23_strtoll(const char *s, char **end, int base) { return strtoll(s, end, base); }
unsigned long long __isoc23_strtoull(const char *s, char **end, int base) { return strtoull(s, end, base); }
intmax_t __isoc23_strtoimax(const char *s, char **end, int base) { return strtoimax(s, end, base); }
uintmax_t __isoc23_strtoumax(const char *s, char **end, int base) { return strtoumax(s, end, base); }

int __isoc23_vsscanf(const char *s, const char *fmt, va_list ap) { return vsscanf(s, fmt, ap); }
int __isoc23_vfscanf(FILE *f, const char *fmt, va_list ap) { return vfscanf(f, fmt, ap); }
int __isoc23_vscanf(const char *fmt, va_list ap) { return vscanf(fmt, ap); }

int __isoc23_sscanf(const char *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = vsscanf(s, fmt, ap);
    va_end(ap);
    return r;
}

int __isoc23_fscanf(FILE *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = vfscanf(f, fmt, ap);
    va_end(ap);
    return r;
}

int __isoc23_scanf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = vscanf(fmt, ap);
    va_end(ap);
    return r;
}
