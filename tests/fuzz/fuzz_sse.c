/* libFuzzer driver for llm/llm_sse.c. The input is parsed three ways: in one feed, byte by byte,
 * and in pieces whose sizes come from the input itself; all three must yield the same events and
 * the same final status. Small caps in a second round drive the limit paths the same way. */
#include "llm/llm_sse.h"

#include <stdlib.h>
#include <string.h>

#include "core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int on_event(void *ud, const char *event, size_t elen, const char *d, size_t dlen) {
    core_str_t *out = ud;
    if (event[elen] != '\0' || d[dlen] != '\0' || memchr(d, '\r', dlen) != NULL ||
        memchr(event, '\n', elen) != NULL || memchr(event, '\r', elen) != NULL)
        abort();
    core_str_appendf(out, "[%zu:", elen);
    core_str_append(out, event, elen);
    core_str_appendf(out, "|%zu:", dlen);
    core_str_append(out, d, dlen);
    core_str_append(out, "]", 1);
    return 0;
}

/* mode 0: whole; 1: byte by byte; 2: piece sizes taken from the input's own bytes. */
static int run(const char *in, size_t len, size_t cap_line, size_t cap_event, int mode,
               core_str_t *out, bool *idle) {
    llm_sse_t *p = llm_sse_new(cap_line, cap_event, on_event, out);
    int rc = 0;
    if (mode == 0) {
        rc = llm_sse_feed(p, in, len);
    } else {
        size_t i = 0, k = 0;
        while (i < len && rc == 0) {
            size_t step = mode == 1 ? 1 : (size_t)((unsigned char)in[k++ % len] % 7) + 1;
            if (step > len - i)
                step = len - i;
            /* An empty feed between pieces must change nothing. */
            if (mode == 2 && llm_sse_feed(p, in + i, 0) != 0)
                abort();
            rc = llm_sse_feed(p, in + i, step);
            i += step;
        }
    }
    *idle = llm_sse_idle(p);
    llm_sse_free(p);
    return rc;
}

static void check(const char *in, size_t len, size_t cap_line, size_t cap_event) {
    core_str_t ref = {0};
    bool ref_idle;
    int ref_rc = run(in, len, cap_line, cap_event, 0, &ref, &ref_idle);
    if (ref_rc != 0 && ref_rc != CORE_ELIMIT)
        abort();
    for (int mode = 1; mode <= 2; mode++) {
        core_str_t got = {0};
        bool idle;
        int rc = run(in, len, cap_line, cap_event, mode, &got, &idle);
        if (rc != ref_rc || got.len != ref.len || (got.len && memcmp(got.ptr, ref.ptr, got.len)) ||
            (rc == 0 && idle != ref_idle))
            abort();
        core_str_free(&got);
    }
    core_str_free(&ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    check(copy, size, 0, 0);
    check(copy, size, 24, 40);
    free(copy);
    return 0;
}
