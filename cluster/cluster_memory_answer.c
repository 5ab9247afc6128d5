/* cluster: the in-memory broker's answers. An operation's answer is a copy of what it hands out,
 * queued; an idle handle runs the queue from the loop, so no caller is called back before its
 * call returned. */
#include "cluster/cluster_memory_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- answers run from the loop ---- */

answer_t *clu__mem_answer_new(ans_kind_t kind, void *cb, void *ud) {
    answer_t *a = core_calloc(1, sizeof *a);
    a->kind = kind;
    a->cb = cb;
    a->ud = ud;
    return a;
}

/* Copies n bytes into the answer's blob and returns their offset there; pointers are set once
 * the blob stops growing (answer_fix). */
uintptr_t clu__mem_answer_copy(answer_t *a, const char *p, size_t n) {
    uintptr_t off = a->blob.len;
    core_str_append(&a->blob, p ? p : "", n);
    core_str_append(&a->blob, "", 1); /* NUL: ids are used as C strings */
    return off;
}

static const char *answer_ptr(const answer_t *a, const char *off) {
    return a->blob.ptr + (uintptr_t)off;
}

static void answer_fix(answer_t *a) {
    for (size_t i = 0; i < a->n && a->pubs; i++) {
        a->pubs[i].data = answer_ptr(a, a->pubs[i].data);
        if (a->pubs[i].info)
            a->pubs[i].info = answer_ptr(a, a->pubs[i].info);
    }
    for (size_t i = 0; i < a->n && a->presence; i++) {
        a->presence[i].client = answer_ptr(a, a->presence[i].client);
        a->presence[i].user = answer_ptr(a, a->presence[i].user);
        a->presence[i].info = answer_ptr(a, a->presence[i].info);
    }
    if (a->kind == ANS_NODES && a->n) {
        a->node.id = answer_ptr(a, a->node.id);
        a->node.info = answer_ptr(a, a->node.info);
    }
}

static void answer_run(answer_t *a) {
    switch (a->kind) {
    case ANS_PUBLISH:
        ((clu_publish_cb)a->cb)(a->status, a->top, a->epoch, a->ud);
        break;
    case ANS_HISTORY:
        ((clu_history_cb)a->cb)(a->status, a->pubs, a->n, a->top, a->epoch, a->ud);
        break;
    case ANS_PRESENCE:
        ((clu_presence_cb)a->cb)(a->status, a->presence, a->n, a->ud);
        break;
    case ANS_PRESENCE_STATS:
        ((clu_presence_stats_cb)a->cb)(a->status, a->clients, a->users, a->ud);
        break;
    case ANS_NODES:
        ((clu_nodes_cb)a->cb)(a->status, a->n ? &a->node : NULL, a->n, a->ud);
        break;
    case ANS_SEM:
        ((clu_sem_cb)a->cb)(a->status, a->flag, a->ud);
        break;
    case ANS_COUNTER:
        ((clu_counter_cb)a->cb)(a->status, a->flag, a->value, a->ud);
        break;
    case ANS_DEADLINES:
        ((clu_deadlines_cb)a->cb)(a->status, a->values, a->n, a->ud);
        break;
    }
    free(a->values);
    free(a->pubs);
    free(a->presence);
    core_str_free(&a->blob);
    free(a);
}

/* Runs the answers queued so far; answers their callbacks queue wait for the next turn. */
void clu__mem_answers_drain(mem_broker_t *mb) {
    answer_t *a = mb->queue;
    mb->queue = mb->queue_tail = NULL;
    while (a) {
        answer_t *next = a->next;
        answer_run(a);
        a = next;
    }
}

static void on_answers(uv_idle_t *h) {
    mem_broker_t *mb = h->data;
    clu__mem_answers_drain(mb);
    if (!mb->queue)
        uv_idle_stop(&mb->answers);
}

void clu__mem_answer_queue(mem_broker_t *mb, answer_t *a) {
    answer_fix(a);
    if (mb->queue_tail)
        mb->queue_tail->next = a;
    else
        mb->queue = a;
    mb->queue_tail = a;
    if (!uv_is_active((uv_handle_t *)&mb->answers))
        uv_idle_start(&mb->answers, on_answers);
}
