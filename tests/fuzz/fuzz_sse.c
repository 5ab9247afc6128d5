/* libFuzzer driver for llm/llm_sse.c and the provider decoders. The input is parsed three ways:
 * in one feed, byte by byte, and in pieces whose sizes come from the input itself; all three must
 * yield the same events and the same final status. Small caps in a second round drive the limit
 * paths the same way. Every event of the whole-feed pass also goes through both providers'
 * decoders, which must accept or refuse it without crashing. */
#include "llm/llm_provider.h"

#include <stdlib.h>
#include <string.h>

#include "core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    core_str_t out;
    bool decode;
    llm_decoder_t st[2];
} rec_t;

static void decode(rec_t *r, const char *event, size_t elen, const char *d, size_t dlen) {
    const llm_provider_ops_t *ops[2] = {&llm_provider_anthropic, &llm_provider_openai};
    for (int i = 0; i < 2; i++) {
        llm_chunk_t c;
        int rc = ops[i]->decode(&r->st[i], event, elen, d, dlen, &c);
        if (rc != 0 && (rc != CORE_EPROTO || !(c.flags & LLM_DEC_ERROR)))
            abort();
        if ((c.flags & LLM_DEC_TEXT) && (c.text_len == 0 || c.text[c.text_len] != '\0'))
            abort();
        if ((c.flags & LLM_DEC_ERROR) && c.error.cls == LLM_ERR_NONE)
            abort();
    }
}

static int on_event(void *ud, const char *event, size_t elen, const char *d, size_t dlen) {
    rec_t *r = ud;
    core_str_t *out = &r->out;
    if (r->decode)
        decode(r, event, elen, d, dlen);
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
    rec_t r = {.out = *out, .decode = mode == 0};
    llm_decoder_init(&r.st[0]);
    llm_decoder_init(&r.st[1]);
    llm_sse_t *p = llm_sse_new(cap_line, cap_event, on_event, &r);
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
    llm_decoder_free(&r.st[0]);
    llm_decoder_free(&r.st[1]);
    *out = r.out;
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
