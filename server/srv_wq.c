/* server: the per-connection write queue. */
#include "server/server.h"

#include <stdlib.h>
#include <string.h>

void srv_wq_init(srv_wq_t *q, uint32_t max_msgs, size_t max_bytes) {
    memset(q, 0, sizeof *q);
    q->max_msgs = max_msgs ? max_msgs : 1;
    q->max_bytes = max_bytes;
}

int srv_wq_push(srv_wq_t *q, core_buf_t *b) {
    if (q->count >= q->max_msgs || q->bytes + b->len > q->max_bytes)
        return CORE_ELIMIT;
    if (q->count == q->cap) {
        uint32_t cap = q->cap ? q->cap * 2 : 4;
        if (cap > q->max_msgs)
            cap = q->max_msgs;
        core_buf_t **ring = core_malloc(cap * sizeof *ring);
        for (uint32_t i = 0; i < q->count; i++)
            ring[i] = q->ring[(q->head + i) % q->cap];
        free(q->ring);
        q->ring = ring;
        q->cap = cap;
        q->head = 0;
    }
    q->ring[(q->head + q->count) % q->cap] = core_buf_ref(b);
    q->count++;
    q->bytes += b->len;
    return 0;
}

bool srv_wq_empty(const srv_wq_t *q) {
    return q->count == 0;
}

static size_t newline_size(size_t len, bool first) {
    return len + (first ? 0 : 1);
}

static void newline_append(core_str_t *frame, const char *msg, size_t len, bool first) {
    if (!first)
        core_str_append(frame, "\n", 1);
    core_str_append(frame, msg, len);
}

size_t srv_wq_fill(srv_wq_t *q, core_str_t *out, size_t head, size_t max_frame, uint32_t *nmsgs,
                   uint64_t *oldest_us) {
    static const srv_join_t newline = {newline_size, newline_append};
    return srv_wq_fill_join(q, &newline, out, head, max_frame, nmsgs, oldest_us);
}

size_t srv_wq_fill_join(srv_wq_t *q, const srv_join_t *join, core_str_t *out, size_t head,
                        size_t max_frame, uint32_t *nmsgs, uint64_t *oldest_us) {
    *nmsgs = 0;
    if (q->count == 0)
        return 0;
    out->len = 0;
    core_str_reserve(out, head);
    out->len = head;
    *oldest_us = q->ring[q->head]->born_us;
    while (q->count > 0) {
        core_buf_t *b = q->ring[q->head];
        size_t add = join->size(b->len, *nmsgs == 0);
        if (*nmsgs > 0 && out->len - head + add > max_frame)
            break;
        join->append(out, b->data, b->len, *nmsgs == 0);
        q->head = (q->head + 1) % q->cap;
        q->count--;
        q->bytes -= b->len;
        (*nmsgs)++;
        core_buf_unref(b);
    }
    /* An idle connection gives its ring back: tens of thousands of them add up. */
    if (q->count == 0 && q->cap > 64) {
        free(q->ring);
        q->ring = NULL;
        q->cap = q->head = 0;
    }
    return out->len - head;
}

void srv_wq_clear(srv_wq_t *q) {
    for (uint32_t i = 0; i < q->count; i++)
        core_buf_unref(q->ring[(q->head + i) % q->cap]);
    free(q->ring);
    q->ring = NULL;
    q->cap = q->head = q->count = 0;
    q->bytes = 0;
}
