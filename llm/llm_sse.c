/* Incremental text/event-stream parser; the contract is in llm_sse.h. */
#include "llm/llm_sse.h"

#include <stdlib.h>
#include <string.h>

#include "core/core.h"

struct llm_sse {
    size_t max_line;
    size_t max_event;
    llm_sse_event_cb cb;
    void *ud;
    core_str_t line;  /* the current line while it spans several feeds */
    core_str_t event; /* event name of the event being built */
    core_str_t data;  /* data lines joined with "\n" */
    bool has_data;    /* at least one data field: "data" alone still dispatches "" */
    bool has_fields;  /* some field was seen since the last blank line */
    bool cr_pending;  /* the last feed ended in "\r": a "\n" starting the next one is its pair */
    bool at_start;    /* no line completed yet: the first line may begin with a BOM */
    int err;          /* sticky result once parsing stopped */
};

/* Empties a buffer, keeping its storage and its NUL terminator. */
static void clear(core_str_t *s) {
    s->len = 0;
    if (s->ptr)
        s->ptr[0] = '\0';
}

llm_sse_t *llm_sse_new(size_t max_line, size_t max_event, llm_sse_event_cb cb, void *ud) {
    llm_sse_t *p = core_calloc(1, sizeof *p);
    p->max_line = max_line ? max_line : LLM_SSE_DEFAULT_MAX_LINE;
    p->max_event = max_event ? max_event : LLM_SSE_DEFAULT_MAX_EVENT;
    p->cb = cb;
    p->ud = ud;
    p->at_start = true;
    return p;
}

void llm_sse_free(llm_sse_t *p) {
    if (!p)
        return;
    core_str_free(&p->line);
    core_str_free(&p->event);
    core_str_free(&p->data);
    free(p);
}

void llm_sse_reset(llm_sse_t *p) {
    clear(&p->line);
    clear(&p->event);
    clear(&p->data);
    p->has_data = p->has_fields = p->cr_pending = false;
    p->at_start = true;
    p->err = 0;
}

bool llm_sse_idle(const llm_sse_t *p) {
    return p->line.len == 0 && !p->has_fields;
}

static const char *cstr(const core_str_t *s) {
    return s->ptr ? s->ptr : "";
}

static bool same(const char *a, size_t n, const char *lit) {
    return n == strlen(lit) && memcmp(a, lit, n) == 0;
}

static int process_line(llm_sse_t *p, const char *line, size_t n) {
    if (p->at_start) {
        p->at_start = false;
        if (n >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
            line += 3;
            n -= 3;
        }
    }
    if (n == 0) {
        int rc = 0;
        if (p->has_data)
            rc = p->cb(p->ud, cstr(&p->event), p->event.len, cstr(&p->data), p->data.len);
        clear(&p->event);
        clear(&p->data);
        p->has_data = p->has_fields = false;
        return rc;
    }
    if (line[0] == ':')
        return 0;
    const char *colon = memchr(line, ':', n);
    size_t flen = colon ? (size_t)(colon - line) : n;
    const char *value = colon ? colon + 1 : line + n;
    size_t vlen = (size_t)(line + n - value);
    if (vlen > 0 && value[0] == ' ') {
        value++;
        vlen--;
    }
    if (same(line, flen, "data")) {
        size_t add = vlen + (p->has_data ? 1 : 0);
        if (p->event.len + p->data.len + add > p->max_event)
            return CORE_ELIMIT;
        if (p->has_data)
            core_str_append(&p->data, "\n", 1);
        core_str_append(&p->data, value, vlen);
        p->has_data = p->has_fields = true;
    } else if (same(line, flen, "event")) {
        if (p->data.len + vlen > p->max_event)
            return CORE_ELIMIT;
        clear(&p->event);
        core_str_append(&p->event, value, vlen);
        p->has_fields = true;
    } else {
        /* "id", "retry" and unknown fields carry nothing the chat needs. They still make the
         * event pending, so the end of the stream before its blank line counts as a cut. */
        p->has_fields = true;
    }
    return 0;
}

int llm_sse_feed(llm_sse_t *p, const char *buf, size_t len) {
    if (p->err)
        return p->err;
    size_t i = 0;
    if (p->cr_pending && len > 0) {
        p->cr_pending = false;
        if (buf[0] == '\n')
            i = 1;
    }
    while (i < len) {
        const char *s = buf + i;
        size_t n = len - i, j = 0;
        while (j < n && s[j] != '\n' && s[j] != '\r')
            j++;
        if (j == n) {
            if (p->line.len + n > p->max_line)
                return p->err = CORE_ELIMIT;
            core_str_append(&p->line, s, n);
            break;
        }
        const char *line = s;
        size_t line_len = j;
        if (p->line.len + j > p->max_line)
            return p->err = CORE_ELIMIT;
        if (p->line.len > 0) {
            core_str_append(&p->line, s, j);
            line = p->line.ptr;
            line_len = p->line.len;
        }
        i += j + 1;
        if (s[j] == '\r') {
            if (i < len) {
                if (buf[i] == '\n')
                    i++;
            } else {
                p->cr_pending = true;
            }
        }
        int rc = process_line(p, line, line_len);
        clear(&p->line);
        if (rc != 0)
            return p->err = rc;
    }
    return 0;
}
